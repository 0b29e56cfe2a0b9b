//! The OpenAPI 3.1 description of every route (`GET /openapi.json`), with the limits of the
//! running server (images, steps, sizes, guidance) written into its schemas, so that what the
//! description allows the server runs, and what it forbids the server refuses.

use ldm_core::guided::MAX_GUIDANCE;
use ldm_core::SamplerKind;
use serde_json::{json, Value};

use crate::State;

/// What a request may ask of this server.
struct Limits {
    images: usize,
    steps: usize,
    /// Every side is a multiple of this (the least common multiple of the models').
    multiple: usize,
    side: usize,
}

impl Limits {
    fn of(state: &State) -> Limits {
        let multiple = state
            .models
            .iter()
            .map(|m| m.planner.manifest().size_multiple.max(1))
            .fold(1, |a, b| a / gcd(a, b) * b);
        Limits {
            images: state.options.max_images,
            steps: state.options.max_steps,
            multiple,
            side: state.options.max_side,
        }
    }

    fn side(&self) -> Value {
        json!({"type": "integer", "minimum": self.multiple, "maximum": self.side, "multipleOf": self.multiple})
    }

    /// OpenAI's `size`: "auto" or every WIDTHxHEIGHT allowed, while they are few; else the
    /// square ones.
    fn sizes(&self) -> Value {
        let sides: Vec<usize> = (1..=self.side / self.multiple)
            .map(|k| k * self.multiple)
            .collect();
        let mut sizes = vec!["auto".to_string()];
        if sides.len() * sides.len() <= 256 {
            sizes.extend(
                sides
                    .iter()
                    .flat_map(|w| sides.iter().map(move |h| format!("{w}x{h}"))),
            );
        } else {
            sizes.extend(sides.iter().map(|s| format!("{s}x{s}")));
        }
        json!({"type": "string", "enum": sizes})
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `schema` also admitting null (the field's absence, as the server reads it).
fn nullable(mut schema: Value) -> Value {
    schema["type"] = json!([schema["type"].clone(), "null"]);
    if let Some(values) = schema.get_mut("enum").and_then(Value::as_array_mut) {
        values.push(Value::Null);
    }
    schema
}

/// Every property of `object` but those in `required_values` also admitting null.
fn optional_nullable(mut object: Value, required_values: &[&str]) -> Value {
    if let Some(properties) = object["properties"].as_object_mut() {
        for (name, schema) in properties.iter_mut() {
            if !required_values.contains(&name.as_str()) {
                *schema = nullable(schema.take());
            }
        }
    }
    object
}

/// The samplers by this server's names, "" for the model's own.
fn samplers() -> Value {
    let mut names: Vec<&str> = SamplerKind::NAMES.split(", ").collect();
    names.push("");
    json!({"type": "string", "enum": names})
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"type": "object"}}}})
}

fn errors() -> Value {
    json!({
        "400": error_response("The request cannot be run as it is; the message names the field."),
        "401": error_response("The API key is missing or wrong."),
        "413": error_response("The body is larger than the server accepts."),
        "429": error_response("The model's queue is full; retry after `Retry-After` seconds."),
        "504": error_response("The request ran past the server's deadline and was cancelled."),
    })
}

/// The answers of a route that reads no body: 401 and, for routes of a job or a file, 404.
fn lookup_errors(responses: &mut Value, found: bool) {
    responses["401"] = error_response("The API key is missing or wrong.");
    if found {
        responses["404"] = error_response("No such job or file (or it has expired).");
    }
}

fn json_body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

fn ok(description: &str, schema: Value) -> Value {
    let mut responses = errors();
    responses["200"] =
        json!({"description": description, "content": {"application/json": {"schema": schema}}});
    responses
}

pub fn document(state: &State) -> Value {
    let limits = Limits::of(state);
    let object = json!({"type": "object"});
    let images = json!({"type": "integer", "minimum": 1, "maximum": limits.images});
    let steps = json!({"type": "integer", "minimum": 1, "maximum": limits.steps});
    let guidance = json!({"type": "number", "minimum": -MAX_GUIDANCE, "maximum": MAX_GUIDANCE});
    let unit = json!({"type": "number", "minimum": 0, "maximum": 1});
    let seed = json!({"type": "integer", "minimum": 0, "maximum": u64::MAX});
    let names: Vec<&str> = state
        .models
        .iter()
        .map(|m| m.name.as_str())
        .chain([""])
        .collect();
    let model = json!({"type": "string", "enum": names, "description": "a model served (\"\": the default)"});
    let a1111_samplers: Vec<&str> = crate::automatic1111::SAMPLERS
        .iter()
        .map(|(ui, _)| *ui)
        .chain([""])
        .collect();
    let generation = json!({
        "type": "object",
        "required": ["prompt"],
        "properties": {
            "prompt": {"type": "string"},
            "model": model,
            "n": images,
            "size": limits.sizes(),
            "response_format": {"type": "string", "enum": ["url", "b64_json"]},
            "output_format": {"type": "string", "enum": ["png", "jpeg"]},
            "negative_prompt": {"type": "string"},
            "seed": seed,
            "steps": steps,
            "guidance": guidance,
            "sampler": samplers(),
        },
    });
    let generation = optional_nullable(generation, &["prompt"]);
    let images_response = json!({"type": "object", "properties": {
        "created": {"type": "integer"},
        "data": {"type": "array", "items": {"type": "object", "properties": {
            "url": {"type": "string"}, "b64_json": {"type": "string"}}}},
    }});
    // batch_size x n_iter images: each within the limit here; their product is checked too.
    let processing = |with_image: bool| {
        let p = json!({"type": "object", "properties": {
            "prompt": {"type": "string"}, "negative_prompt": {"type": "string"},
            "seed": {"type": "integer", "minimum": -1, "maximum": i64::MAX},
            "sampler_name": {"type": "string", "enum": a1111_samplers},
            "steps": steps, "cfg_scale": guidance,
            "width": limits.side(), "height": limits.side(),
            "batch_size": images, "n_iter": images,
            "override_settings": {"type": "object"},
        }});
        let mut p = optional_nullable(p, &["prompt", "negative_prompt"]);
        if with_image {
            p["required"] = json!(["init_images"]);
            p["properties"]["init_images"] = json!({"type": "array", "minItems": 1,
                "items": {"type": "string", "description": "base64 PNG or JPEG"}});
            p["properties"]["mask"] = nullable(
                json!({"type": "string", "description": "base64 PNG or JPEG, white where to draw"}),
            );
            p["properties"]["denoising_strength"] = nullable(unit.clone());
        }
        p
    };
    let processed = json!({"type": "object", "properties": {
        "images": {"type": "array", "items": {"type": "string"}},
        "parameters": {"type": "object"}, "info": {"type": "string"}}});
    let job_request = json!({"type": "object", "additionalProperties": false, "properties": {
        "model": model, "prompt": {"type": "string"},
        "negative_prompt": {"type": "string"}, "n": images,
        "width": limits.side(), "height": limits.side(),
        "steps": steps, "guidance": guidance,
        "sampler": samplers(), "seed": seed,
        "init_image": {"type": "string", "description": "base64 PNG or JPEG"},
        "mask": {"type": "string", "description": "base64 mask, white where to draw"},
        "strength": unit,
        "semantic_map": {"type": "string", "description": "base64 8-bit grayscale PNG of class ids, for semantic-map models; the image takes its size"},
        "preview_every": {"type": "integer", "minimum": 0, "maximum": limits.steps,
            "description": "steps between preview images (base64 PNGs in the progress events' `preview`); 0: none"}}});
    let job_request = optional_nullable(job_request, &["prompt", "negative_prompt"]);
    let job = json!({"type": "object", "properties": {
        "id": {"type": "string"}, "model": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
        "step": {"type": "integer"}, "total": {"type": "integer"}, "seed": {"type": "integer"},
        "error": {"type": ["string", "null"]}, "images": {"type": "array", "items": {"type": "string"}},
        "events": {"type": "string"}}});
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let mut job_found = ok("The job.", job.clone());
    lookup_errors(&mut job_found, true);
    let mut queued = errors();
    queued["202"] =
        json!({"description": "Queued.", "content": {"application/json": {"schema": job.clone()}}});
    let mut file = json!({"200": {"description": "PNG", "content": {"image/png": {}}}});
    lookup_errors(&mut file, true);
    let mut stream =
        json!({"200": {"description": "An event stream", "content": {"text/event-stream": {}}}});
    lookup_errors(&mut stream, true);
    let mut metrics =
        json!({"200": {"description": "Text exposition.", "content": {"text/plain": {}}}});
    lookup_errors(&mut metrics, false);
    json!({
        "openapi": "3.1.0",
        "info": {"title": "ldm serve", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Latent diffusion bundles behind the OpenAI Images API, the AUTOMATIC1111 web UI API and a native job API."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/v1/images/generations": {"post": {"summary": "OpenAI: create images",
                "requestBody": json_body(generation), "responses": ok("Images.", images_response.clone())}},
            "/v1/images/edits": {"post": {"summary": "OpenAI: edit an image (image-to-image; inpainting where the mask is transparent)",
                "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {"type": "object",
                    "required": ["image"], "properties": {"image": {"type": "string", "format": "binary"},
                    "mask": {"type": "string", "format": "binary"}, "prompt": {"type": "string"},
                    "n": {"type": "string"}, "size": limits.sizes(), "response_format": {"type": "string", "enum": ["url", "b64_json"]},
                    "model": {"type": "string"}}}}}},
                "responses": ok("Images.", images_response)}},
            "/v1/images/files/{job}/{file}": {"get": {"summary": "An image of a finished job",
                "parameters": [{"name": "job", "in": "path", "required": true, "schema": {"type": "string"}},
                               {"name": "file", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": file}},
            "/v1/models": {"get": {"summary": "OpenAI: the models (bundles) served", "responses": ok("Models.", object.clone())}},
            "/sdapi/v1/txt2img": {"post": {"summary": "AUTOMATIC1111: text to image",
                "requestBody": json_body(processing(false)), "responses": ok("Images.", processed.clone())}},
            "/sdapi/v1/img2img": {"post": {"summary": "AUTOMATIC1111: image to image and inpainting",
                "requestBody": json_body(processing(true)), "responses": ok("Images.", processed)}},
            "/sdapi/v1/progress": {"get": {"summary": "AUTOMATIC1111: progress of the running job", "responses": ok("Progress.", object.clone())}},
            "/sdapi/v1/interrupt": {"post": {"summary": "AUTOMATIC1111: stop the running jobs", "responses": ok("Stopped.", object.clone())}},
            "/sdapi/v1/sd-models": {"get": {"summary": "AUTOMATIC1111: models", "responses": ok("Models.", json!({"type": "array"}))}},
            "/sdapi/v1/samplers": {"get": {"summary": "AUTOMATIC1111: samplers", "responses": ok("Samplers.", json!({"type": "array"}))}},
            "/sdapi/v1/options": {
                "get": {"summary": "AUTOMATIC1111: options", "responses": ok("Options.", object.clone())},
                "post": {"summary": "AUTOMATIC1111: select the model (sd_model_checkpoint)",
                         "requestBody": json_body(object.clone()), "responses": ok("Set.", json!({}))}},
            "/sdapi/v1/sd-vae": {"get": {"summary": "AUTOMATIC1111: none here", "responses": ok("Empty.", json!({"type": "array"}))}},
            "/sdapi/v1/upscalers": {"get": {"summary": "AUTOMATIC1111: none here", "responses": ok("Empty.", json!({"type": "array"}))}},
            "/sdapi/v1/loras": {"get": {"summary": "AUTOMATIC1111: none here", "responses": ok("Empty.", json!({"type": "array"}))}},
            "/v1/jobs": {"post": {"summary": "Queue a generation", "requestBody": json_body(job_request),
                "responses": queued}},
            "/v1/jobs/{id}": {
                "get": {"summary": "A job", "parameters": id.clone(), "responses": job_found.clone()},
                "delete": {"summary": "Cancel a job", "parameters": id.clone(), "responses": job_found}},
            "/v1/jobs/{id}/events": {"get": {"summary": "Server-sent events: progress, then done",
                "parameters": id, "responses": stream}},
            "/health": {"get": {"summary": "Alive", "security": [], "responses": {"200": {"description": "Alive."}}}},
            "/ready": {"get": {"summary": "Every bundle loaded and warmed", "security": [],
                "responses": {"200": {"description": "Ready."}, "503": {"description": "Warming up."}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": metrics}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI."}}}},
        },
    })
}
