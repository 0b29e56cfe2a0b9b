//! `ldm serve`: bundles loaded once and kept warm, served to many clients at once through the
//! APIs they already speak: OpenAI Images ([`openai`]), the AUTOMATIC1111 web UI API
//! ([`automatic1111`]) and a native job API with server-sent progress events ([`native`]);
//! with health, readiness and Prometheus metrics ([`ops`]), an OpenAPI description and a web
//! page. Every request is planned by the runtime before it is queued, so the server refuses
//! what the CLI refuses, with the same words.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State as Shared};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use ldm_runtime::{Backend, Generate};

pub mod automatic1111;
pub mod error;
pub mod images;
pub mod in_process;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod native;
pub mod openai;
pub mod openapi;
pub mod ops;
pub mod request;
pub mod worker;

use error::{ApiError, Style};
use jobs::{CancelOnDrop, Job, JobStore, Snapshot, Status};
use metrics::Metrics;
use models::{Model, Work};

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Bundle folders; the first is the default model.
    pub bundles: Vec<PathBuf>,
    pub backend: Backend,
    pub threads: usize,
    /// Jobs that may wait per model before requests get 429.
    pub queue: usize,
    /// Required as `Authorization: Bearer KEY` on every API route when set.
    pub api_key: Option<String>,
    /// Answer cross-origin requests from any origin.
    pub cors: bool,
    pub max_body_bytes: usize,
    /// Images one request may ask for.
    pub max_images: usize,
    /// Images of concurrent requests that may share one UNet call.
    pub max_batch: usize,
    /// Largest image side a request may ask for, in pixels.
    pub max_side: usize,
    pub max_steps: usize,
    /// How long a request may take before it is cancelled and answered 504.
    pub deadline: Duration,
    /// How long finished jobs (and images served by URL) are kept.
    pub keep: Duration,
    /// How long in-flight work may run after SIGTERM before the process exits.
    pub grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            bundles: Vec::new(),
            backend: Backend::Tract,
            threads: 1,
            queue: 32,
            api_key: None,
            cors: false,
            max_body_bytes: 16 << 20,
            max_images: 8,
            max_batch: 8,
            max_side: 1024,
            max_steps: 250,
            deadline: Duration::from_secs(300),
            keep: Duration::from_secs(600),
            grace: Duration::from_secs(30),
        }
    }
}

/// What every handler shares.
pub struct State {
    pub models: Vec<Model>,
    pub jobs: JobStore,
    pub metrics: Arc<Metrics>,
    pub options: ServeOptions,
    /// The model AUTOMATIC1111 clients select through `/sdapi/v1/options`.
    pub selected: Mutex<usize>,
}

impl State {
    /// Loads every bundle and starts its worker.
    pub fn load(options: ServeOptions) -> anyhow::Result<Arc<State>> {
        anyhow::ensure!(!options.bundles.is_empty(), "give at least one --bundle");
        let metrics = Arc::new(Metrics::default());
        let mut models = Vec::new();
        for dir in &options.bundles {
            let model = Model::load(
                dir,
                options.backend,
                options.threads,
                options.queue,
                options.max_batch,
                metrics.clone(),
            )?;
            anyhow::ensure!(
                models.iter().all(|m: &Model| m.name != model.name),
                "two bundles are named '{}'; models are chosen by their folder's name",
                model.name
            );
            models.push(model);
        }
        Ok(Arc::new(State {
            models,
            jobs: JobStore::new(options.keep),
            metrics,
            selected: Mutex::new(0),
            options,
        }))
    }

    /// The model a request names, or the default one.
    pub fn model(&self, name: Option<&str>) -> Result<&Model, ApiError> {
        match name.filter(|n| !n.is_empty()) {
            None => Ok(&self.models[*self.selected.lock().expect("selection lock")]),
            Some(name) => self.models.iter().find(|m| m.name == name).ok_or_else(|| {
                let known: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
                ApiError::field(
                    "model",
                    format!(
                        "unknown model '{name}' (this server has {})",
                        known.join(", ")
                    ),
                )
            }),
        }
    }

    /// Checks `request` as the runtime plans it and queues it on `model`.
    /// Queues `request` on `model`, with a preview image every `preview_every` steps (0: none).
    pub fn start(
        &self,
        model: &Model,
        request: Generate,
        preview_every: usize,
    ) -> Result<Arc<Job>, ApiError> {
        for (what, side) in [("width", request.width), ("height", request.height)] {
            if let Some(side) = side {
                request::check_side(what, side, self.options.max_side)?;
            }
        }
        if let Some(steps) = request.steps.filter(|&s| s > self.options.max_steps) {
            return Err(ApiError::field(
                "steps",
                format!(
                    "{steps} steps; at most {} are allowed",
                    self.options.max_steps
                ),
            ));
        }
        model
            .planner
            .plan(&request)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let job = Arc::new(Job::new(
            JobStore::new_id(),
            model.name.clone(),
            request.seed,
            preview_every,
        ));
        model.submit(Work {
            request,
            job: job.clone(),
        })?;
        self.jobs.insert(job.clone());
        Ok(job)
    }

    /// Waits for `job` within the deadline; cancels it if the waiting request goes away.
    pub async fn finish(&self, job: Arc<Job>) -> Result<Snapshot, ApiError> {
        let guard = CancelOnDrop(job.clone());
        let mut updates = job.subscribe();
        let wait = updates.wait_for(|s| s.status.is_final());
        let outcome = tokio::time::timeout(self.options.deadline, wait).await;
        drop(guard);
        let snapshot = match outcome {
            Ok(Ok(s)) => s.clone(),
            Ok(Err(_)) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the worker stopped",
                ))
            }
            Err(_) => {
                job.cancel();
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the request took longer than the server's {} s deadline and was cancelled",
                        self.options.deadline.as_secs()
                    ),
                ));
            }
        };
        match snapshot.status {
            Status::Succeeded => Ok(snapshot),
            Status::Cancelled => Err(ApiError::new(StatusCode::CONFLICT, "the job was cancelled")),
            _ => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                snapshot.error.unwrap_or_else(|| "generation failed".into()),
            )),
        }
    }
}

/// A seed when the request gives none.
pub fn random_seed() -> u64 {
    rand::random::<u32>() as u64
}

/// What the `request` fuzz target does with its input, shared with the test suite's replay of
/// its corpus: the first byte picks an API that reads a JSON body (OpenAI images, the job API,
/// AUTOMATIC1111 txt2img or img2img), the rest is the body; it is read as that API reads it
/// and, when accepted, planned by `planner`. Must return, whatever the bytes.
pub fn fuzz_request(planner: &ldm_runtime::Planner, data: &[u8]) {
    let Some((&api, body)) = data.split_first() else {
        return;
    };
    let options = ServeOptions::default();
    let resolution = |_: Option<&str>| Ok(planner.manifest().resolution);
    let request = match api % 4 {
        0 => openai::generations_request(body, &options).map(|(_, r, _)| r),
        1 => native::job_request(body, &options).map(|j| j.request),
        k => automatic1111::processing_request(body, k == 3, &options, &resolution)
            .map(|p| p.request),
    };
    if let Ok(request) = request {
        let _ = planner.plan(&request);
    }
}

/// Every route, with authentication, limits, CORS (when asked), request ids and metrics.
pub fn router(state: Arc<State>) -> Router {
    let api = Router::new()
        .merge(openai::routes())
        .merge(automatic1111::routes())
        .merge(native::routes())
        .merge(ops::metrics_route())
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let mut app = Router::new()
        .merge(api)
        .merge(ops::open_routes())
        .layer(DefaultBodyLimit::max(state.options.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe));
    if state.options.cors {
        app = app.layer(middleware::from_fn(cors));
    }
    app.with_state(state)
}

/// Refuses API requests without the server's key (when it has one).
async fn authenticate(Shared(state): Shared<Arc<State>>, request: Request, next: Next) -> Response {
    let Some(key) = &state.options.api_key else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(presented_key);
    if given
        .as_ref()
        .is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes()))
    {
        return next.run(request).await;
    }
    let message = if given.is_some() {
        "the API key is wrong"
    } else {
        "this server needs an API key: send it as `Authorization: Bearer KEY`"
    };
    ApiError::new(StatusCode::UNAUTHORIZED, message)
        .styled(Style::of_path(request.uri().path()))
        .into_response()
}

/// The key an `Authorization` header presents: a bearer token, or the password of HTTP basic
/// authentication (what the web UI's own `--api-auth` clients send).
fn presented_key(value: &str) -> Option<String> {
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.to_string());
    }
    let decoded = images::from_base64("authorization", value.strip_prefix("Basic ")?).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_string())
}

/// Compares keys in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Request id, one structured log line and the metrics of every request; errors that axum
/// itself answers (too large a body, unknown routes) in the route's JSON error shape.
async fn observe(Shared(state): Shared<Arc<State>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = format!("{:016x}", rand::random::<u64>());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut response = if announced.is_some_and(|n| n > state.options.max_body_bytes as u64) {
        // Refused from its Content-Length, before a byte of the body is read.
        StatusCode::PAYLOAD_TOO_LARGE.into_response()
    } else {
        next.run(request).await
    };
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    // Bodies over the limit are refused here or by axum wherever they are read (a chunked
    // body without a length); the answer names the limit.
    let too_large = status == StatusCode::PAYLOAD_TOO_LARGE;
    if too_large || ((status.is_client_error() || status.is_server_error()) && !is_json) {
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => format!(
                "the request body is larger than the server's {} bytes",
                state.options.max_body_bytes
            ),
            StatusCode::NOT_FOUND => format!("no route {method} {path}"),
            StatusCode::METHOD_NOT_ALLOWED => format!("{method} is not allowed on {path}"),
            s => s.canonical_reason().unwrap_or("error").to_string(),
        };
        response = ApiError::new(status, message)
            .styled(Style::of_path(&path))
            .into_response();
    }
    let seconds = started.elapsed().as_secs_f64();
    state.metrics.request(&route, status.as_u16(), seconds);
    eprintln!(
        "{}",
        serde_json::json!({"request": id, "method": method.as_str(), "path": path,
                           "status": status.as_u16(), "ms": (seconds * 1e3).round()})
    );
    response
        .headers_mut()
        .insert("x-request-id", HeaderValue::from_str(&id).expect("hex"));
    response
}

/// Answers preflights and lets any origin read responses (`--cors`).
async fn cors(request: Request, next: Next) -> Response {
    let preflight = request.method() == axum::http::Method::OPTIONS;
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    response
}

/// Serves `state` on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish for up to the grace period.
pub async fn serve(
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = state.options.grace;
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping.send(());
    });
    tokio::select! {
        served = server => served,
        _ = async {
            let _ = stopped.await;
            tokio::time::sleep(grace).await;
        } => {
            eprintln!("the grace period ended with requests still running; exiting");
            Ok(())
        }
    }
}

/// `ldm serve`: loads the bundles, listens on `addr` and serves until SIGTERM or Ctrl-C.
pub fn run(options: ServeOptions, addr: SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let state = State::load(options)?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let names: Vec<&str> = state.models.iter().map(|m| m.name.as_str()).collect();
        eprintln!(
            "serving {} on http://{} ({} on {})",
            names.join(", "),
            listener.local_addr()?,
            state.options.backend.name(),
            if state.options.threads == 1 {
                "1 thread".to_string()
            } else {
                format!("{} threads", state.options.threads)
            }
        );
        serve(state, listener, shutdown_signal()).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    eprintln!("stopping: no new requests; in-flight ones finish");
}
