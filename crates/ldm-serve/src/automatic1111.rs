//! The AUTOMATIC1111 web UI API as its clients send it: `POST /sdapi/v1/txt2img` and
//! `/sdapi/v1/img2img` with its field names, `GET /sdapi/v1/progress`,
//! `POST /sdapi/v1/interrupt`, and the listing and options endpoints clients call when they
//! connect. A request without `width`/`height` gets the model's own size (the web UI's 512
//! is far above what small bundles were trained at).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State as Shared;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{body_bytes, json_body, parse_json, ApiError, Style};
use crate::images::{self, base64};
use crate::jobs::Status;
use crate::request;
use crate::{ServeOptions, State};
use ldm_runtime::Generate;

/// The web UI's sampler names, and this project's.
pub const SAMPLERS: [(&str, &str); 6] = [
    ("Euler a", "euler-a"),
    ("Euler", "euler"),
    ("DDIM", "ddim"),
    ("PLMS", "plms"),
    ("DPM++ 2M", "dpm++2m"),
    ("DDPM", "ddpm"),
];

pub fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/sdapi/v1/txt2img", post(txt2img))
        .route("/sdapi/v1/img2img", post(img2img))
        .route("/sdapi/v1/progress", get(progress))
        .route("/sdapi/v1/interrupt", post(interrupt))
        .route("/sdapi/v1/sd-models", get(sd_models))
        .route("/sdapi/v1/samplers", get(samplers))
        .route("/sdapi/v1/options", get(options).post(set_options))
        .route("/sdapi/v1/sd-vae", get(empty_list))
        .route("/sdapi/v1/upscalers", get(empty_list))
        .route("/sdapi/v1/loras", get(empty_list))
        .route(
            "/sdapi/v1/scripts",
            get(|| async { Json(json!({"txt2img": [], "img2img": []})) }),
        )
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Processing {
    prompt: String,
    negative_prompt: String,
    #[serde(default, deserialize_with = "crate::request::whole")]
    seed: Option<i64>,
    sampler_name: Option<String>,
    sampler_index: Option<String>,
    #[serde(default, deserialize_with = "crate::request::whole")]
    steps: Option<usize>,
    cfg_scale: Option<f64>,
    #[serde(default, deserialize_with = "crate::request::whole")]
    width: Option<usize>,
    #[serde(default, deserialize_with = "crate::request::whole")]
    height: Option<usize>,
    #[serde(default, deserialize_with = "crate::request::whole")]
    batch_size: Option<usize>,
    #[serde(default, deserialize_with = "crate::request::whole")]
    n_iter: Option<usize>,
    override_settings: Option<serde_json::Map<String, Value>>,
    // img2img
    init_images: Vec<String>,
    mask: Option<String>,
    denoising_strength: Option<f64>,
    #[serde(default, deserialize_with = "crate::request::whole")]
    inpainting_mask_invert: Option<u8>,
    /// The web UI's second, upscaling pass, which this server does not have.
    enable_hr: bool,
}

fn sampler(name: &str) -> String {
    SAMPLERS
        .iter()
        .find(|(ui, _)| *ui == name)
        .map_or(name, |(_, ours)| ours)
        .to_string()
}

async fn txt2img(
    Shared(state): Shared<Arc<State>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    process(&state, body, false)
        .await
        .map_err(|e| e.styled(Style::Automatic1111))
}

async fn img2img(
    Shared(state): Shared<Arc<State>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    process(&state, body, true)
        .await
        .map_err(|e| e.styled(Style::Automatic1111))
}

/// A txt2img or img2img body, read as the web UI reads it.
pub struct Processed {
    raw: Value,
    p: Processing,
    seed: u64,
    images: usize,
    /// The model of `override_settings.sd_model_checkpoint`, if named.
    pub model: Option<String>,
    pub request: Generate,
}

/// `bytes` of a txt2img (or, `with_image`, img2img) body as the runtime's request;
/// `resolution` is the side of the model a name chooses (None: the selected one).
pub fn processing_request(
    bytes: &[u8],
    with_image: bool,
    options: &ServeOptions,
    resolution: &dyn Fn(Option<&str>) -> Result<usize, ApiError>,
) -> Result<Processed, ApiError> {
    let raw: Value = parse_json(bytes)?;
    let p: Processing = serde_json::from_value(raw.clone())
        .map_err(|e| ApiError::invalid(format!("the request does not fit the API: {e}")))?;
    let model = p
        .override_settings
        .as_ref()
        .and_then(|o| o.get("sd_model_checkpoint"))
        .and_then(Value::as_str)
        .map(str::to_string);
    if p.enable_hr {
        return Err(ApiError::field(
            "enable_hr",
            "the high-resolution second pass is not available here; ask for the size directly",
        ));
    }
    let seed = match p.seed {
        None | Some(-1) => crate::random_seed(),
        Some(s) if s >= 0 => s as u64,
        Some(s) => {
            return Err(ApiError::field(
                "seed",
                format!("seed {s} is negative (-1 draws one)"),
            ))
        }
    };
    let images = p
        .batch_size
        .unwrap_or(1)
        .saturating_mul(p.n_iter.unwrap_or(1));
    let name = p
        .sampler_name
        .as_deref()
        .or(p.sampler_index.as_deref())
        .map(sampler);
    let mut ask = Generate {
        width: p.width,
        height: p.height,
        steps: p.steps,
        guidance: p.cfg_scale,
        sampler: request::sampler(name.as_deref())?,
        ..request::generate(
            &p.prompt,
            images,
            options.max_images,
            &p.negative_prompt,
            Some(seed),
        )?
    };
    if with_image {
        let first = p.init_images.first().ok_or_else(|| {
            ApiError::field("init_images", "img2img needs an image in init_images")
        })?;
        let image = images::decode("init_images", &images::from_base64("init_images", first)?)?;
        let side = resolution(model.as_deref())?;
        let (w, h) = (p.width.unwrap_or(side), p.height.unwrap_or(side));
        ask.width = Some(w);
        ask.height = Some(h);
        ask.init_image = Some(images::rgb(&images::fit(image, w, h, options.max_side)?));
        if let Some(mask) = &p.mask {
            let mask = images::decode("mask", &images::from_base64("mask", mask)?)?;
            let mut mask = images::binary(&images::fit(mask, w, h, options.max_side)?);
            if p.inpainting_mask_invert == Some(1) {
                mask.rgb.iter_mut().for_each(|v| *v = 255 - *v);
            }
            ask.mask = Some(mask);
        }
        ask.strength = Some(p.denoising_strength.unwrap_or(0.75));
    }
    Ok(Processed {
        raw,
        p,
        seed,
        images,
        model,
        request: ask,
    })
}

async fn process(
    state: &State,
    body: Result<Bytes, BytesRejection>,
    with_image: bool,
) -> Result<Json<Value>, ApiError> {
    let resolution = |name: Option<&str>| Ok(state.model(name)?.planner.manifest().resolution);
    let Processed {
        raw,
        p,
        seed,
        images,
        model,
        request,
    } = processing_request(&body_bytes(body)?, with_image, &state.options, &resolution)?;
    let model = state.model(model.as_deref())?;
    let job = state.start(model, request, 0)?;
    let done = state.finish(job).await?;
    let info = json!({
        "prompt": p.prompt, "negative_prompt": p.negative_prompt, "seed": seed,
        "all_seeds": (0..images as u64).map(|i| seed + i).collect::<Vec<_>>(),
        "sampler_name": p.sampler_name, "steps": done.total, "cfg_scale": p.cfg_scale,
        "sd_model_name": model.name,
    });
    Ok(Json(json!({
        "images": done.images.iter().map(|png| base64(png)).collect::<Vec<_>>(),
        "parameters": raw,
        "info": info.to_string(),
    })))
}

/// The running job's progress, as the web UI reports its own.
async fn progress(Shared(state): Shared<Arc<State>>) -> Json<Value> {
    let active = state.jobs.active();
    let running = active
        .iter()
        .map(|j| j.snapshot())
        .find(|s| s.status == Status::Running);
    let (step, total) = running.as_ref().map_or((0, 0), |s| (s.step, s.total));
    let fraction = if total > 0 {
        step as f64 / total as f64
    } else {
        0.0
    };
    Json(json!({
        "progress": fraction,
        "eta_relative": 0.0,
        "state": {"skipped": false, "interrupted": false, "job": "", "job_count": active.len(),
                  "job_timestamp": "0", "job_no": 0, "sampling_step": step, "sampling_steps": total},
        "current_image": null,
        "textinfo": null,
    }))
}

/// Stops every job that has not finished.
async fn interrupt(Shared(state): Shared<Arc<State>>) -> Json<Value> {
    for job in state.jobs.active() {
        job.cancel();
    }
    Json(json!({}))
}

async fn sd_models(Shared(state): Shared<Arc<State>>) -> Json<Value> {
    let models: Vec<Value> = state
        .models
        .iter()
        .zip(&state.options.bundles)
        .map(|(m, dir)| {
            json!({"title": m.name, "model_name": m.name, "hash": null, "sha256": null,
                   "filename": dir.display().to_string(), "config": null})
        })
        .collect();
    Json(Value::Array(models))
}

async fn samplers() -> Json<Value> {
    let list: Vec<Value> = SAMPLERS
        .iter()
        .map(|(ui, ours)| json!({"name": ui, "aliases": [ours], "options": {}}))
        .collect();
    Json(Value::Array(list))
}

async fn options(Shared(state): Shared<Arc<State>>) -> Json<Value> {
    let selected = *state.selected.lock().expect("selection lock");
    Json(json!({
        "sd_model_checkpoint": state.models[selected].name,
        "samples_format": "png",
    }))
}

/// Selects the default model (`sd_model_checkpoint`); other options are accepted and kept
/// as they are.
async fn set_options(
    Shared(state): Shared<Arc<State>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let run = || -> Result<Json<Value>, ApiError> {
        let body: Value = json_body(body)?;
        if !body.is_object() {
            return Err(ApiError::invalid("the options are a JSON object"));
        }
        if let Some(name) = body.get("sd_model_checkpoint").and_then(Value::as_str) {
            let index = state
                .models
                .iter()
                .position(|m| m.name == name)
                .ok_or_else(|| {
                    ApiError::field("sd_model_checkpoint", format!("unknown model '{name}'"))
                })?;
            *state.selected.lock().expect("selection lock") = index;
        }
        Ok(Json(Value::Null))
    };
    run().map_err(|e| e.styled(Style::Automatic1111))
}

async fn empty_list() -> Json<Value> {
    Json(json!([]))
}
