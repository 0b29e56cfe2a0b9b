//! The three APIs as their clients call them, on the shipped bundle: images of the asked size
//! in each API's response shape, progress, cancellation, and the OpenAPI description.

mod common;

use std::time::{Duration, Instant};

use common::{get, options, png_size, post, send, start, unbase64};
use ldm_serve::ServeOptions;
use serde_json::json;

#[test]
fn openai_clients_get_pngs_as_b64_json_or_urls() {
    let server = start(options());
    let a = post(
        &server,
        "/v1/images/generations",
        json!({"prompt": "a red apple", "n": 2, "size": "64x64", "response_format": "b64_json",
               "steps": 3, "seed": 7, "quality": "standard", "user": "someone"}),
    );
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let data = a.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 2);
    for image in &data {
        assert_eq!(
            png_size(&unbase64(image["b64_json"].as_str().unwrap())),
            (64, 64)
        );
    }
    // The same seed makes the same image.
    let again = post(
        &server,
        "/v1/images/generations",
        json!({"prompt": "a red apple", "size": "64x64", "response_format": "b64_json", "steps": 3, "seed": 7}),
    );
    assert_eq!(again.json()["data"][0], data[0]);

    let a = post(
        &server,
        "/v1/images/generations",
        json!({"prompt": "a blue square", "steps": 2, "model": "emoji-text"}),
    );
    let url = a.json()["data"][0]["url"].as_str().unwrap().to_string();
    let path = url
        .split_once("127.0.0.1")
        .unwrap()
        .1
        .split_once('/')
        .unwrap()
        .1;
    let (status, png) = get(&server, &format!("/{path}"));
    assert_eq!((status, png_size(&png)), (200, (64, 64)));

    let a = post(
        &server,
        "/v1/images/generations",
        json!({"prompt": "a cat", "steps": 2, "response_format": "b64_json", "output_format": "jpeg"}),
    );
    let jpeg = unbase64(a.json()["data"][0]["b64_json"].as_str().unwrap());
    assert_eq!(&jpeg[..2], b"\xff\xd8", "a JPEG");

    let (status, models) = get(&server, "/v1/models");
    let models: serde_json::Value = serde_json::from_slice(&models).unwrap();
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], "emoji-text");
}

fn png_base64(width: u32, height: u32, pixel: impl Fn(u32, u32) -> [u8; 3]) -> String {
    use base64::Engine;
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb(pixel(x, y)));
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes.into_inner())
}

#[test]
fn automatic1111_clients_get_their_fields_and_endpoints() {
    let server = start(options());
    let a = post(
        &server,
        "/sdapi/v1/txt2img",
        json!({"prompt": "a green circle", "negative_prompt": "", "seed": 11, "sampler_name": "Euler a",
               "steps": 3, "cfg_scale": 3.0, "width": 64, "height": 64, "batch_size": 2, "n_iter": 1,
               "override_settings": {"sd_model_checkpoint": "emoji-text"}, "send_images": true}),
    );
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let body = a.json();
    let images = body["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(png_size(&unbase64(images[0].as_str().unwrap())), (64, 64));
    let info: serde_json::Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["all_seeds"], json!([11, 12]));
    assert_eq!(body["parameters"]["cfg_scale"], 3.0);

    // img2img and inpainting, with a data-URL image and a mask (white: drawn anew).
    let picture = format!(
        "data:image/png;base64,{}",
        png_base64(64, 64, |x, _| [x as u8 * 4, 80, 160])
    );
    let mask = png_base64(64, 64, |x, _| if x < 32 { [255; 3] } else { [0; 3] });
    for extra in [json!({}), json!({"mask": mask})] {
        let mut request = json!({"prompt": "a red apple", "init_images": [picture], "steps": 4,
                                 "denoising_strength": 0.5, "width": 64, "height": 64});
        request
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let a = post(&server, "/sdapi/v1/img2img", request);
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(
            png_size(&unbase64(a.json()["images"][0].as_str().unwrap())),
            (64, 64)
        );
    }

    let (_, samplers) = get(&server, "/sdapi/v1/samplers");
    assert!(String::from_utf8_lossy(&samplers).contains("\"Euler a\""));
    let (_, models) = get(&server, "/sdapi/v1/sd-models");
    assert!(String::from_utf8_lossy(&models).contains("\"model_name\":\"emoji-text\""));
    let (_, options) = get(&server, "/sdapi/v1/options");
    assert!(String::from_utf8_lossy(&options).contains("\"sd_model_checkpoint\":\"emoji-text\""));
    assert_eq!(
        post(
            &server,
            "/sdapi/v1/options",
            json!({"sd_model_checkpoint": "emoji-text"})
        )
        .status,
        200
    );
    let a = post(
        &server,
        "/sdapi/v1/options",
        json!({"sd_model_checkpoint": "sd-xl"}),
    );
    assert_eq!(a.status, 400);
    assert!(a.json()["detail"]
        .as_str()
        .unwrap()
        .contains("unknown model 'sd-xl'"));
    let (status, progress) = get(&server, "/sdapi/v1/progress");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&progress).contains("\"sampling_steps\""));
}

#[test]
fn job_events_carry_previews_when_asked() {
    let server = start(options());
    let a = post(
        &server,
        "/v1/jobs",
        json!({"prompt": "a red apple", "n": 2, "steps": 30, "seed": 3, "preview_every": 1}),
    );
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    let id = a.json()["id"].as_str().unwrap().to_string();
    let (_, events) = get(&server, &format!("/v1/jobs/{id}/events"));
    let events = String::from_utf8(events).unwrap();
    let previews: Vec<serde_json::Value> = events
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str::<serde_json::Value>(data).unwrap())
        .filter(|event| event.get("preview").is_some())
        .collect();
    assert!(!previews.is_empty(), "no preview in {events}");
    for event in &previews {
        let images = event["preview"].as_array().unwrap();
        assert_eq!(images.len(), 2, "one preview per image");
        for image in images {
            assert_eq!(png_size(&unbase64(image.as_str().unwrap())), (64, 64));
        }
    }
    // Without asking, none.
    let a = post(&server, "/v1/jobs", json!({"prompt": "a cat", "steps": 3}));
    let id = a.json()["id"].as_str().unwrap().to_string();
    let (_, events) = get(&server, &format!("/v1/jobs/{id}/events"));
    assert!(!String::from_utf8(events).unwrap().contains("preview"));
}

#[test]
fn jobs_stream_their_progress_and_can_be_cancelled() {
    let server = start(options());
    let a = post(
        &server,
        "/v1/jobs",
        json!({"prompt": "a red apple", "steps": 5, "seed": 3}),
    );
    assert_eq!(a.status, 202);
    let job = a.json();
    let id = job["id"].as_str().unwrap().to_string();
    let (status, events) = get(&server, &format!("/v1/jobs/{id}/events"));
    let events = String::from_utf8(events).unwrap();
    assert_eq!(status, 200);
    assert!(
        events.contains("event: progress") && events.contains("\"total\":5"),
        "{events}"
    );
    assert!(
        events.contains("event: done") && events.contains("\"succeeded\""),
        "{events}"
    );
    let (_, report) = get(&server, &format!("/v1/jobs/{id}"));
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(
        (report["status"].as_str(), report["step"].as_u64()),
        (Some("succeeded"), Some(5))
    );
    let (status, png) = get(&server, report["images"][0].as_str().unwrap());
    assert_eq!((status, png_size(&png)), (200, (64, 64)));

    let long = post(
        &server,
        "/v1/jobs",
        json!({"prompt": "a cat", "steps": 250}),
    )
    .json();
    let id = long["id"].as_str().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        send(&server, "DELETE", &format!("/v1/jobs/{id}"), "", None).status,
        200
    );
    let started = Instant::now();
    loop {
        let (_, report) = get(&server, &format!("/v1/jobs/{id}"));
        let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
        if report["status"] == "cancelled" {
            assert!(report["step"].as_u64().unwrap() < 250);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not cancelled: {report}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&server, "/v1/jobs/unknown").0, 404);
}

/// A base64 PNG of `image`.
fn base64_png(image: image::DynamicImage) -> String {
    use base64::Engine;
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(png.into_inner())
}

#[test]
fn jobs_draw_semantic_maps_at_their_size_and_refuse_maps_that_are_not() {
    let semantic = common::bundle().with_file_name("scenes-semantic");
    let server = start(ServeOptions {
        bundles: vec![common::bundle(), semantic],
        ..options()
    });
    // A square (class 2) on the left of a 128x64 map, the rest background.
    let map = image::GrayImage::from_fn(128, 64, |x, y| {
        image::Luma([u8::from((16..48).contains(&x) && (16..48).contains(&y)) * 2])
    });
    let map = base64_png(image::DynamicImage::ImageLuma8(map));
    let job = |body: serde_json::Value| post(&server, "/v1/jobs", body);
    let a = job(json!({"model": "scenes-semantic", "semantic_map": map, "steps": 3}));
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    let id = a.json()["id"].as_str().unwrap().to_string();
    get(&server, &format!("/v1/jobs/{id}/events"));
    let (_, report) = get(&server, &format!("/v1/jobs/{id}"));
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(report["status"], "succeeded", "{report}");
    let (status, png) = get(&server, report["images"][0].as_str().unwrap());
    assert_eq!((status, png_size(&png)), (200, (128, 64)));

    let rgb = base64_png(image::DynamicImage::new_rgb8(64, 64));
    let unknown = base64_png(image::DynamicImage::ImageLuma8(
        image::GrayImage::from_pixel(64, 64, image::Luma([9])),
    ));
    for (body, named) in [
        (
            json!({"model": "scenes-semantic", "semantic_map": rgb}),
            "grayscale",
        ),
        (
            json!({"model": "scenes-semantic", "semantic_map": "%%"}),
            "base64",
        ),
        (
            json!({"model": "scenes-semantic", "semantic_map": unknown}),
            "class id 9",
        ),
        (json!({"model": "scenes-semantic"}), "semantic"),
        (
            json!({"prompt": "an apple", "semantic_map": map}),
            "semantic",
        ),
    ] {
        let answer = job(body.clone());
        let text = String::from_utf8_lossy(&answer.body);
        assert_eq!(answer.status, 400, "{body}: {text}");
        assert!(text.contains(named), "{body}: {text}");
    }
}

#[test]
fn the_openapi_document_describes_every_route_there_is() {
    let server = start(options());
    let (status, document) = get(&server, "/openapi.json");
    assert_eq!(status, 200);
    let document: serde_json::Value = serde_json::from_slice(&document).unwrap();
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() >= 20);
    for (path, methods) in paths {
        for method in methods.as_object().unwrap().keys() {
            let concrete = path
                .replace("{id}", "x")
                .replace("{job}", "x")
                .replace("{file}", "0.png");
            let a = send(&server, &method.to_uppercase(), &concrete, "{}", None);
            // Every described route exists: whatever it answers, it is not "no route".
            let text = String::from_utf8_lossy(&a.body).to_string();
            assert!(!text.contains("no route"), "{method} {path}: {text}");
            assert_ne!(a.status, 405, "{method} {path}");
        }
    }
    let (status, page) = get(&server, "/");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("/v1/jobs"));
}
