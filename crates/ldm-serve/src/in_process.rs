//! The server without a socket: the same routes, limits, validation and answers as
//! `ldm serve`, called one request at a time by a host that owns the connection (the Python
//! package's Ray Serve deployment, which sits behind Ray's own HTTP proxy).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request};
use axum::Router;
use tower::ServiceExt;

use crate::{router, ServeOptions, State};

/// A request as the host received it.
pub struct HostRequest<'a> {
    pub method: &'a str,
    /// Path and query, as sent (`/v1/images/generations?x=1`).
    pub uri: &'a str,
    pub headers: &'a [(String, String)],
    pub body: Vec<u8>,
}

/// The server's answer, whole.
pub struct HostResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Loaded bundles behind the server's router, with a runtime of its own for the router's
/// futures and the workers' channels.
pub struct InProcess {
    runtime: tokio::runtime::Runtime,
    router: Router,
    state: Arc<State>,
}

impl InProcess {
    /// Loads every bundle of `options` and warms it, as `ldm serve` does before it listens.
    pub fn load(options: ServeOptions) -> anyhow::Result<InProcess> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let state = runtime.block_on(async move { State::load(options) })?;
        Ok(InProcess {
            router: router(state.clone()),
            runtime,
            state,
        })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Answers one request, blocking the calling thread until the answer is whole. Several
    /// threads may call at once: their generations batch as a server's connections do.
    pub fn handle(&self, request: HostRequest) -> anyhow::Result<HostResponse> {
        let method = Method::from_bytes(request.method.as_bytes())
            .map_err(|_| anyhow::anyhow!("'{}' is not an HTTP method", request.method))?;
        let mut built = Request::builder().method(method).uri(request.uri);
        for (name, value) in request.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| anyhow::anyhow!("'{name}' is not a header name"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| anyhow::anyhow!("the value of header '{name}' is not valid"))?;
            built = built.header(name, value);
        }
        let built = built
            .body(Body::from(request.body))
            .map_err(|e| anyhow::anyhow!("'{}' is not a request target: {e}", request.uri))?;
        let router = self.router.clone();
        self.runtime.block_on(async move {
            let response = router.oneshot(built).await?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_string())))
                .collect();
            // Bodies are the server's own (images of at most --max-images x --max-size).
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
            Ok(HostResponse {
                status,
                headers,
                body: body.to_vec(),
            })
        })
    }
}
