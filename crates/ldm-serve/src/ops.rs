//! Operations: `GET /health` (the process answers), `GET /ready` (every bundle loaded and
//! warmed), `GET /metrics` (Prometheus), `GET /openapi.json`, and the web page at `/`.

use std::sync::Arc;

use axum::extract::State as Shared;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::State;

/// The page: one file, served from the binary.
const PAGE: &str = include_str!("page.html");

/// Routes open without the API key: probes, the description and the page (which asks for
/// the key itself).
pub fn open_routes() -> Router<Arc<State>> {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route(
            "/openapi.json",
            get(|Shared(state): Shared<Arc<State>>| async move {
                Json(crate::openapi::document(&state))
            }),
        )
}

pub fn metrics_route() -> Router<Arc<State>> {
    Router::new().route("/metrics", get(metrics))
}

async fn ready(Shared(state): Shared<Arc<State>>) -> (StatusCode, Json<Value>) {
    let waiting: Vec<&str> = state
        .models
        .iter()
        .filter(|m| !m.is_ready())
        .map(|m| m.name.as_str())
        .collect();
    if waiting.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "warming up", "models": waiting})),
        )
    }
}

async fn metrics(Shared(state): Shared<Arc<State>>) -> impl IntoResponse {
    let queues: Vec<(String, usize)> = state
        .models
        .iter()
        .map(|m| (m.name.clone(), m.queued()))
        .collect();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&queues),
    )
}
