//! The OpenAPI 3.1 description of every route (`GET /openapi.json`).

use serde_json::{json, Value};

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

fn json_body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

fn ok(description: &str, schema: Value) -> Value {
    let mut responses = errors();
    responses["200"] =
        json!({"description": description, "content": {"application/json": {"schema": schema}}});
    responses
}

pub fn document() -> Value {
    let object = json!({"type": "object"});
    let generation = json!({
        "type": "object",
        "required": ["prompt"],
        "properties": {
            "prompt": {"type": "string"},
            "model": {"type": "string"},
            "n": {"type": "integer", "minimum": 1},
            "size": {"type": "string", "description": "WIDTHxHEIGHT or auto"},
            "response_format": {"type": "string", "enum": ["url", "b64_json"]},
            "output_format": {"type": "string", "enum": ["png", "jpeg"]},
            "negative_prompt": {"type": "string"},
            "seed": {"type": "integer", "minimum": 0},
            "steps": {"type": "integer", "minimum": 1},
            "guidance": {"type": "number"},
            "sampler": {"type": "string"},
        },
    });
    let images_response = json!({"type": "object", "properties": {
        "created": {"type": "integer"},
        "data": {"type": "array", "items": {"type": "object", "properties": {
            "url": {"type": "string"}, "b64_json": {"type": "string"}}}},
    }});
    let processing = json!({"type": "object", "properties": {
        "prompt": {"type": "string"}, "negative_prompt": {"type": "string"},
        "seed": {"type": "integer", "minimum": -1}, "sampler_name": {"type": "string"},
        "steps": {"type": "integer", "minimum": 1}, "cfg_scale": {"type": "number"},
        "width": {"type": "integer", "minimum": 1}, "height": {"type": "integer", "minimum": 1},
        "batch_size": {"type": "integer", "minimum": 1}, "n_iter": {"type": "integer", "minimum": 1},
        "init_images": {"type": "array", "items": {"type": "string"}},
        "mask": {"type": "string"}, "denoising_strength": {"type": "number"},
        "override_settings": {"type": "object"},
    }});
    let processed = json!({"type": "object", "properties": {
        "images": {"type": "array", "items": {"type": "string"}},
        "parameters": {"type": "object"}, "info": {"type": "string"}}});
    let job_request = json!({"type": "object", "additionalProperties": false, "properties": {
        "model": {"type": "string"}, "prompt": {"type": "string"},
        "negative_prompt": {"type": "string"}, "n": {"type": "integer", "minimum": 1},
        "width": {"type": "integer", "minimum": 1}, "height": {"type": "integer", "minimum": 1},
        "steps": {"type": "integer", "minimum": 1}, "guidance": {"type": "number"},
        "sampler": {"type": "string"}, "seed": {"type": "integer", "minimum": 0},
        "init_image": {"type": "string", "description": "base64 PNG or JPEG"},
        "mask": {"type": "string", "description": "base64 mask, white where to draw"},
        "strength": {"type": "number"}}});
    let job = json!({"type": "object", "properties": {
        "id": {"type": "string"}, "model": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
        "step": {"type": "integer"}, "total": {"type": "integer"}, "seed": {"type": "integer"},
        "error": {"type": ["string", "null"]}, "images": {"type": "array", "items": {"type": "string"}},
        "events": {"type": "string"}}});
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
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
                    "n": {"type": "string"}, "size": {"type": "string"}, "response_format": {"type": "string"},
                    "model": {"type": "string"}}}}}},
                "responses": ok("Images.", images_response)}},
            "/v1/images/files/{job}/{file}": {"get": {"summary": "An image of a finished job",
                "parameters": [{"name": "job", "in": "path", "required": true, "schema": {"type": "string"}},
                               {"name": "file", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "PNG", "content": {"image/png": {}}}, "404": error_response("Unknown or expired.")}}},
            "/v1/models": {"get": {"summary": "OpenAI: the models (bundles) served", "responses": ok("Models.", object.clone())}},
            "/sdapi/v1/txt2img": {"post": {"summary": "AUTOMATIC1111: text to image",
                "requestBody": json_body(processing.clone()), "responses": ok("Images.", processed.clone())}},
            "/sdapi/v1/img2img": {"post": {"summary": "AUTOMATIC1111: image to image and inpainting",
                "requestBody": json_body(processing), "responses": ok("Images.", processed)}},
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
                "responses": {"202": {"description": "Queued.", "content": {"application/json": {"schema": job.clone()}}}}}},
            "/v1/jobs/{id}": {
                "get": {"summary": "A job", "parameters": id.clone(), "responses": ok("The job.", job.clone())},
                "delete": {"summary": "Cancel a job", "parameters": id.clone(), "responses": ok("The job.", job)}},
            "/v1/jobs/{id}/events": {"get": {"summary": "Server-sent events: progress, then done",
                "parameters": id, "responses": {"200": {"description": "An event stream", "content": {"text/event-stream": {}}}}}},
            "/health": {"get": {"summary": "Alive", "security": [], "responses": {"200": {"description": "Alive."}}}},
            "/ready": {"get": {"summary": "Every bundle loaded and warmed", "security": [],
                "responses": {"200": {"description": "Ready."}, "503": {"description": "Warming up."}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Text exposition.", "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI."}}}},
        },
    })
}
