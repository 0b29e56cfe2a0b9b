//! Concurrent requests share UNet calls: `/metrics` counts batches of more than one image,
//! and a request batched with others gets the image it gets alone.

mod common;

use common::{options, post, start, unbase64};
use ldm_serve::ServeOptions;
use serde_json::json;

fn image(answer: &common::Answer) -> image::RgbImage {
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let png = unbase64(answer.json()["data"][0]["b64_json"].as_str().unwrap());
    image::load_from_memory(&png).unwrap().to_rgb8()
}

fn request(seed: u64) -> serde_json::Value {
    json!({"prompt": "a red apple", "steps": 8, "seed": seed, "response_format": "b64_json"})
}

/// Observations of `ldm_batch_size` (images per UNet call) in all, and those above one.
fn batches(server: &common::Server) -> (u64, u64) {
    let (_, text) = common::get(server, "/metrics");
    let text = String::from_utf8(text).unwrap();
    let value = |prefix: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
            .trim()
            .parse()
            .unwrap()
    };
    let all = value("ldm_batch_size_count ");
    (all, all - value("ldm_batch_size_bucket{le=\"1\"} "))
}

#[test]
fn concurrent_requests_share_unet_calls_and_get_their_own_images() {
    let server = start(ServeOptions {
        max_batch: 4,
        ..options()
    });
    let alone = image(&post(&server, "/v1/images/generations", request(7)));
    assert_eq!(batches(&server), (8, 0), "one image per call alone");
    let together: Vec<image::RgbImage> = std::thread::scope(|scope| {
        let sent: Vec<_> = (7..11)
            .map(|seed| {
                let server = &server;
                scope.spawn(move || image(&post(server, "/v1/images/generations", request(seed))))
            })
            .collect();
        sent.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let (calls, shared) = batches(&server);
    assert!(shared > 0, "{calls} UNet calls, none shared");
    assert!(
        calls < 8 + 4 * 8,
        "{calls} UNet calls for 4 requests of 8 steps"
    );
    // Batch composition changes the engine's summation order only.
    let difference: u64 = alone
        .as_raw()
        .iter()
        .zip(together[0].as_raw())
        .map(|(a, b)| a.abs_diff(*b) as u64)
        .sum();
    let mean = difference as f64 / alone.as_raw().len() as f64;
    assert!(
        mean < 0.5,
        "seed 7 batched is {mean} of 255 from seed 7 alone"
    );
    assert_ne!(together[0], together[1], "each request keeps its own seed");
}
