//! The OpenAI Images API as its clients send it: `POST /v1/images/generations`,
//! `POST /v1/images/edits` (multipart: image-to-image, and inpainting where the mask is
//! transparent), `GET /v1/models`; images answered as `b64_json` or as a `url` this server
//! serves for as long as it keeps the job. `negative_prompt`, `seed`, `steps`, `guidance` and
//! `sampler` are extensions; OpenAI's own options without an effect here (`quality`, `style`,
//! `user`, ...) are accepted and ignored.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Multipart, Path, State as Shared};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use image::ImageFormat;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{body_bytes, parse_json, ApiError, Style};
use crate::images::{self, base64};
use crate::jobs::Snapshot;
use crate::request::{self, size};
use crate::{ServeOptions, State};
use ldm_runtime::Generate;

pub fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/v1/images/generations", post(generations))
        .route("/v1/images/edits", post(edits))
        .route("/v1/images/files/{job}/{file}", get(file))
        .route("/v1/models", get(models))
}

#[derive(Deserialize)]
struct Generations {
    prompt: String,
    model: Option<String>,
    #[serde(default, deserialize_with = "crate::request::whole")]
    n: Option<usize>,
    size: Option<String>,
    response_format: Option<String>,
    output_format: Option<String>,
    negative_prompt: Option<String>,
    #[serde(default, deserialize_with = "crate::request::whole")]
    seed: Option<u64>,
    #[serde(default, deserialize_with = "crate::request::whole")]
    steps: Option<usize>,
    guidance: Option<f64>,
    sampler: Option<String>,
}

/// How the images go back.
pub struct Output {
    url: bool,
    format: ImageFormat,
}

fn output(response_format: Option<&str>, output_format: Option<&str>) -> Result<Output, ApiError> {
    let url = match response_format.unwrap_or("url") {
        "url" => true,
        "b64_json" => false,
        other => {
            return Err(ApiError::field(
                "response_format",
                format!("response_format '{other}' is not url or b64_json"),
            ))
        }
    };
    let format = match output_format.unwrap_or("png") {
        "png" => ImageFormat::Png,
        "jpeg" | "jpg" => ImageFormat::Jpeg,
        other => {
            return Err(ApiError::field(
                "output_format",
                format!("output_format '{other}' is not png or jpeg"),
            ))
        }
    };
    Ok(Output { url, format })
}

/// An images/generations body as the model it names, the runtime's request and how the
/// images go back.
pub fn generations_request(
    bytes: &[u8],
    options: &ServeOptions,
) -> Result<(Option<String>, Generate, Output), ApiError> {
    let body: Generations = parse_json(bytes)?;
    let out = output(
        body.response_format.as_deref(),
        body.output_format.as_deref(),
    )?;
    let (width, height) = size(body.size.as_deref().unwrap_or("auto"))?.unzip();
    let negative = body.negative_prompt.unwrap_or_default();
    let ask = Generate {
        width,
        height,
        steps: body.steps,
        guidance: body.guidance,
        sampler: request::sampler(body.sampler.as_deref())?,
        ..request::generate(
            &body.prompt,
            body.n.unwrap_or(1),
            options.max_images,
            &negative,
            body.seed,
        )?
    };
    Ok((body.model, ask, out))
}

async fn generations(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let run = async {
        let (model, ask, out) = generations_request(&body_bytes(body)?, &state.options)?;
        respond(&state, &headers, model.as_deref(), ask, out).await
    };
    run.await.map_err(|e| e.styled(Style::OpenAi))
}

async fn edits(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Result<Json<Value>, ApiError> {
    let run = async {
        let mut fields = std::collections::BTreeMap::new();
        let (mut image, mut mask) = (None, None);
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| ApiError::invalid(format!("the multipart body is malformed: {e}")))?
        {
            let name = field.name().unwrap_or_default().to_string();
            let bytes = field
                .bytes()
                .await
                .map_err(|e| ApiError::invalid(format!("field {name}: {e}")))?;
            match name.as_str() {
                "image" | "image[]" => image = Some(images::decode("image", &bytes)?),
                "mask" => mask = Some(images::decode("mask", &bytes)?),
                _ => {
                    let text = String::from_utf8(bytes.to_vec())
                        .map_err(|_| ApiError::field(&name, format!("{name} is not text")))?;
                    fields.insert(name, text);
                }
            }
        }
        let text = |k: &str| fields.get(k).map(String::as_str);
        let number = |k: &str| -> Result<Option<f64>, ApiError> {
            text(k)
                .map(|v| {
                    v.parse::<f64>()
                        .map_err(|_| ApiError::field(k, format!("{k} '{v}' is not a number")))
                })
                .transpose()
        };
        let image =
            image.ok_or_else(|| ApiError::field("image", "an image to edit is required"))?;
        let out = output(text("response_format"), text("output_format"))?;
        let (width, height) = match size(text("size").unwrap_or("auto"))? {
            Some(wh) => wh,
            None => (image.width() as usize, image.height() as usize),
        };
        let masked = mask.is_some();
        let ask = Generate {
            width: Some(width),
            height: Some(height),
            steps: number("steps")?.map(|s| s as usize),
            guidance: number("guidance")?,
            sampler: request::sampler(text("sampler"))?,
            init_image: Some(images::rgb(&images::fit(
                image,
                width,
                height,
                state.options.max_side,
            )?)),
            mask: match mask {
                Some(m) => Some(images::openai_mask(&images::fit(
                    m,
                    width,
                    height,
                    state.options.max_side,
                )?)),
                None => None,
            },
            strength: Some(number("strength")?.unwrap_or(if masked { 1.0 } else { 0.75 })),
            ..request::generate(
                text("prompt").unwrap_or_default(),
                number("n")?.map_or(1, |n| n as usize),
                state.options.max_images,
                text("negative_prompt").unwrap_or_default(),
                number("seed")?.map(|s| s as u64),
            )?
        };
        respond(&state, &headers, text("model"), ask, out).await
    };
    run.await.map_err(|e| e.styled(Style::OpenAi))
}

async fn respond(
    state: &State,
    headers: &HeaderMap,
    model: Option<&str>,
    ask: Generate,
    out: Output,
) -> Result<Json<Value>, ApiError> {
    let model = state.model(model)?;
    let job = state.start(model, ask, 0)?;
    let done: Snapshot = state.finish(job.clone()).await?;
    let data: Vec<Value> = if out.url {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        (0..done.images.len())
            .map(|i| json!({"url": format!("http://{host}/v1/images/files/{}/{i}.png", job.id)}))
            .collect()
    } else {
        done.images
            .iter()
            .map(|png| -> Result<Value, ApiError> {
                let bytes = reencode(png, out.format)?;
                Ok(json!({"b64_json": base64(&bytes)}))
            })
            .collect::<Result<_, _>>()?
    };
    Ok(Json(json!({"created": job.created, "data": data})))
}

/// A PNG result in the asked format.
fn reencode(png: &[u8], format: ImageFormat) -> Result<Vec<u8>, ApiError> {
    if format == ImageFormat::Png {
        return Ok(png.to_vec());
    }
    let image = images::rgb(&images::decode("image", png)?);
    images::encode(&image, format)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// An image of a finished job, for `url` responses.
async fn file(
    Shared(state): Shared<Arc<State>>,
    Path((job, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let gone = || {
        ApiError::not_found("no such image (images are kept for a limited time)")
            .styled(Style::OpenAi)
    };
    let index: usize = file
        .strip_suffix(".png")
        .and_then(|i| i.parse().ok())
        .ok_or_else(gone)?;
    let job = state.jobs.get(&job).ok_or_else(gone)?;
    let snapshot = job.snapshot();
    let png = snapshot.images.get(index).ok_or_else(gone)?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png.clone()).into_response())
}

async fn models(Shared(state): Shared<Arc<State>>) -> Json<Value> {
    let data: Vec<Value> = state
        .models
        .iter()
        .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": "ldm"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}
