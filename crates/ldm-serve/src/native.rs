//! The native job API: `POST /v1/jobs` queues a generation and answers its id at once;
//! `GET /v1/jobs/{id}` reports it, `DELETE` cancels it, and `GET /v1/jobs/{id}/events`
//! streams server-sent events: `progress` after every step (with `preview` images, base64
//! PNGs of the latents decoded, every `preview_every` steps when the job asked for them),
//! then one `done` with the job as `GET` reports it. Images are served at the URLs the job
//! lists.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State as Shared};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{body_bytes, parse_json, ApiError};
use crate::images;
use crate::jobs::{Job, Snapshot};
use crate::request;
use crate::{ServeOptions, State};
use ldm_runtime::Generate;

pub fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/v1/jobs", post(submit))
        .route("/v1/jobs/{id}", get(report).delete(cancel))
        .route("/v1/jobs/{id}/events", get(events))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobRequest {
    model: Option<String>,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    negative_prompt: String,
    #[serde(default, deserialize_with = "crate::request::whole")]
    n: Option<usize>,
    #[serde(default, deserialize_with = "crate::request::whole")]
    width: Option<usize>,
    #[serde(default, deserialize_with = "crate::request::whole")]
    height: Option<usize>,
    #[serde(default, deserialize_with = "crate::request::whole")]
    steps: Option<usize>,
    guidance: Option<f64>,
    sampler: Option<String>,
    #[serde(default, deserialize_with = "crate::request::whole")]
    seed: Option<u64>,
    /// Base64 PNG or JPEG: image-to-image, inpainting with `mask`, or the low-resolution
    /// image of a super-resolution model.
    init_image: Option<String>,
    /// Base64 mask: white where to draw.
    mask: Option<String>,
    strength: Option<f64>,
    /// Base64 8-bit grayscale PNG of class ids: the map a semantic-map model draws (the
    /// image takes its size).
    semantic_map: Option<String>,
    /// Steps between preview images in the event stream (absent or 0: none; at most the
    /// steps allowed).
    #[serde(default, deserialize_with = "crate::request::whole")]
    preview_every: Option<usize>,
}

/// A job body, read.
pub struct JobAsk {
    pub model: Option<String>,
    pub request: Generate,
    pub preview_every: usize,
}

/// A job body as the model it names, the runtime's request and how often to preview it.
pub fn job_request(bytes: &[u8], options: &ServeOptions) -> Result<JobAsk, ApiError> {
    let r: JobRequest = parse_json(bytes)?;
    let decode = |field: &str, text: &Option<String>| {
        text.as_deref()
            .map(|t| images::decode(field, &images::from_base64(field, t)?))
            .transpose()
    };
    let ask = Generate {
        width: r.width,
        height: r.height,
        steps: r.steps,
        guidance: r.guidance,
        sampler: request::sampler(r.sampler.as_deref())?,
        init_image: decode("init_image", &r.init_image)?.map(|i| images::rgb(&i)),
        mask: decode("mask", &r.mask)?.map(|m| images::binary(&m)),
        strength: r.strength,
        semantic_map: decode("semantic_map", &r.semantic_map)?
            .map(|m| images::class_map("semantic_map", &m))
            .transpose()?,
        ..request::generate(
            &r.prompt,
            r.n.unwrap_or(1),
            options.max_images,
            &r.negative_prompt,
            r.seed,
        )?
    };
    let preview_every = r.preview_every.unwrap_or(0);
    if preview_every > options.max_steps {
        return Err(ApiError::field(
            "preview_every",
            format!(
                "a preview every {preview_every} steps; at most {} (the steps allowed)",
                options.max_steps
            ),
        ));
    }
    Ok(JobAsk {
        model: r.model,
        request: ask,
        preview_every,
    })
}

async fn submit(
    Shared(state): Shared<Arc<State>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let ask = job_request(&body_bytes(body)?, &state.options)?;
    let model = state.model(ask.model.as_deref())?;
    let job = state.start(model, ask.request, ask.preview_every)?;
    Ok((StatusCode::ACCEPTED, Json(describe(&job, &job.snapshot()))))
}

/// A job as the API reports it.
fn describe(job: &Job, s: &Snapshot) -> Value {
    let images: Vec<String> = (0..s.images.len())
        .map(|i| format!("/v1/images/files/{}/{i}.png", job.id))
        .collect();
    json!({
        "id": job.id, "model": job.model, "created": job.created, "status": s.status,
        "step": s.step, "total": s.total, "seed": s.seed, "error": s.error, "images": images,
        "events": format!("/v1/jobs/{}/events", job.id),
    })
}

fn find(state: &State, id: &str) -> Result<Arc<Job>, ApiError> {
    state.jobs.get(id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no job '{id}' (finished jobs are kept for a limited time)"
        ))
    })
}

async fn report(
    Shared(state): Shared<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = find(&state, &id)?;
    Ok(Json(describe(&job, &job.snapshot())))
}

async fn cancel(
    Shared(state): Shared<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = find(&state, &id)?;
    job.cancel();
    Ok(Json(describe(&job, &job.snapshot())))
}

async fn events(
    Shared(state): Shared<Arc<State>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let job = find(&state, &id)?;
    let updates = job.subscribe();
    // (receiver, job, whether the first state was sent, whether the last was)
    let stream = stream::unfold(
        (updates, job, false, false),
        |(mut rx, job, started, ended)| async move {
            if ended {
                return None;
            }
            if started && rx.changed().await.is_err() {
                return None;
            }
            let s = rx.borrow_and_update().clone();
            let event = if s.status.is_final() {
                Event::default()
                    .event("done")
                    .data(describe(&job, &s).to_string())
            } else {
                let mut progress = json!({"status": s.status, "step": s.step, "total": s.total});
                if let Some(previews) = &s.preview {
                    progress["preview"] = previews.iter().map(|p| images::base64(p)).collect();
                }
                Event::default()
                    .event("progress")
                    .data(progress.to_string())
            };
            let ended = s.status.is_final();
            Some((Ok(event), (rx, job, true, ended)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
