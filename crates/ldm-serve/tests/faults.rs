//! Hostile and unlucky requests: each gets a clear 4xx (or 5xx) in its API's error shape
//! while the server goes on serving the others.

mod common;

use std::time::{Duration, Instant};

use common::{announce_body, get, options, post, send, start};
use ldm_serve::ServeOptions;
use serde_json::json;

/// A 16x16 red PNG, base64.
const RED_16X16_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAF0lEQVR4nGP4z8BAEiJN9aiGUQ1DSgMAkPn/Afnh+ngAAAAASUVORK5CYII=";

#[test]
fn bad_requests_are_refused_by_name_and_the_server_keeps_serving() {
    let server = start(ServeOptions {
        max_body_bytes: 1 << 20,
        ..options()
    });
    let openai = "/v1/images/generations";
    let cases = [
        (openai, "{\"prompt\": ".to_string(), "malformed"),
        (
            openai,
            json!({"prompt": "x", "size": "100000x100000"}).to_string(),
            "width 100000",
        ),
        (
            openai,
            json!({"prompt": "x", "n": 10000}).to_string(),
            "10000 images",
        ),
        (
            openai,
            json!({"prompt": "x", "model": "dall-e-3"}).to_string(),
            "unknown model 'dall-e-3'",
        ),
        (
            openai,
            json!({"prompt": "x", "steps": 100000}).to_string(),
            "100000 steps",
        ),
        (
            openai,
            json!({"prompt": "x", "sampler": "heun"}).to_string(),
            "unknown sampler 'heun'",
        ),
        (
            openai,
            json!({"prompt": "x", "size": "big"}).to_string(),
            "size 'big'",
        ),
        (
            openai,
            json!({"prompt": "x", "response_format": "gif"}).to_string(),
            "response_format 'gif'",
        ),
        (
            openai,
            json!({"prompt": "x", "guidance": 1e9}).to_string(),
            "guidance",
        ),
        (openai, json!({"n": 1}).to_string(), "prompt"),
        (
            "/v1/jobs",
            json!({"prompt": "x", "preview_every": 4294967296u64}).to_string(),
            "a preview every 4294967296 steps",
        ),
        (
            "/sdapi/v1/txt2img",
            json!({"prompt": "x", "seed": -5}).to_string(),
            "seed -5",
        ),
        (
            "/sdapi/v1/img2img",
            json!({"prompt": "x"}).to_string(),
            "init_images",
        ),
        (
            "/sdapi/v1/img2img",
            json!({"init_images": ["!!"]}).to_string(),
            "not base64",
        ),
        (
            "/sdapi/v1/img2img",
            json!({"init_images": ["aGVsbG8="]}).to_string(),
            "not a PNG or JPEG",
        ),
        (
            "/v1/jobs",
            json!({"prompt": "x", "colour": "red"}).to_string(),
            "unknown field `colour`",
        ),
        (
            "/v1/jobs",
            json!({"prompt": "x", "strength": -1}).to_string(),
            "strength",
        ),
        // Refused before anything is allocated for them: a prompt per image, a resized input.
        (
            "/sdapi/v1/txt2img",
            json!({"prompt": "x", "batch_size": u64::MAX, "n_iter": u64::MAX}).to_string(),
            "images in one request",
        ),
        (
            "/sdapi/v1/img2img",
            json!({"init_images": [RED_16X16_PNG], "width": 100000, "height": 64}).to_string(),
            "width 100000",
        ),
    ];
    for (path, body, named) in cases {
        let a = send(&server, "POST", path, &body, None);
        assert!(
            (400..500).contains(&a.status),
            "{path} {body}: {}",
            a.status
        );
        assert!(
            a.content_type.starts_with("application/json"),
            "{path}: {}",
            a.content_type
        );
        let text = String::from_utf8_lossy(&a.body).to_string();
        assert!(
            text.contains(named),
            "{path} {body}: expected '{named}' in {text}"
        );
    }
    // The error shapes of the APIs.
    let a = post(&server, openai, json!({"prompt": "x", "n": 10000}));
    assert_eq!(a.json()["error"]["param"], "n");
    assert_eq!(a.json()["error"]["type"], "invalid_request_error");
    let a = post(&server, "/sdapi/v1/txt2img", json!({"seed": -5}));
    assert!(a.json()["detail"].is_string());
    // A body over the limit, answered before it is read whole.
    let (status, body) = announce_body(&server, openai, 2 << 20);
    assert_eq!(status, 413, "{body}");
    assert!(
        body.contains("larger than the server's 1048576 bytes"),
        "{body}"
    );
    // Still serving.
    let a = post(
        &server,
        openai,
        json!({"prompt": "a red apple", "steps": 2}),
    );
    assert_eq!(a.status, 200);
}

#[test]
fn an_api_key_guards_every_api_route() {
    let server = start(ServeOptions {
        api_key: Some("s3cret".into()),
        ..options()
    });
    let body =
        json!({"prompt": "a red apple", "steps": 2, "response_format": "b64_json"}).to_string();
    let path = "/v1/images/generations";
    let missing = send(&server, "POST", path, &body, None);
    assert_eq!(missing.status, 401);
    assert!(missing.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("needs an API key"));
    let wrong = send(&server, "POST", path, &body, Some("guess"));
    assert_eq!(wrong.status, 401);
    assert!(send(&server, "POST", "/sdapi/v1/txt2img", "{}", None).json()["detail"].is_string());
    assert_eq!(get(&server, "/metrics").0, 401);
    assert_eq!(
        send(&server, "POST", path, &body, Some("s3cret")).status,
        200
    );
    // Probes, the description and the page stay open.
    for open in ["/health", "/ready", "/openapi.json", "/"] {
        assert_eq!(get(&server, open).0, 200, "{open}");
    }
}

#[test]
fn a_full_queue_answers_429_and_a_slow_request_its_deadline() {
    let server = start(ServeOptions {
        queue: 1,
        deadline: Duration::from_secs(1),
        ..options()
    });
    // One running, one waiting: the next is refused with a time to retry after.
    let long = json!({"prompt": "a cat", "steps": 250});
    let running = post(&server, "/v1/jobs", long.clone()).json();
    let started = Instant::now();
    while job_status(&server, &running) != "running" {
        assert!(started.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(20));
    }
    let waiting = post(&server, "/v1/jobs", long.clone());
    assert_eq!(waiting.status, 202);
    let refused = post(&server, "/v1/jobs", long.clone());
    assert_eq!(refused.status, 429);
    assert_eq!(refused.retry_after.as_deref(), Some("1"));
    assert!(String::from_utf8_lossy(&refused.body).contains("queue of 'emoji-text' is full"));
    for job in [running, waiting.json()] {
        send(
            &server,
            "DELETE",
            &format!("/v1/jobs/{}", job["id"].as_str().unwrap()),
            "",
            None,
        );
        while job_status(&server, &job) != "cancelled" {
            assert!(started.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Past the deadline a request is cancelled and answered 504.
    let a = post(&server, "/v1/images/generations", long);
    assert_eq!(a.status, 504);
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("1 s deadline"));
    let (_, metrics) = get(&server, "/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("ldm_requests_total{route=\"/v1/jobs\",status=\"429\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("ldm_step_seconds_count"));
}

fn job_status(server: &common::Server, job: &serde_json::Value) -> String {
    let (_, report) = get(server, &format!("/v1/jobs/{}", job["id"].as_str().unwrap()));
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    report["status"].as_str().unwrap().to_string()
}

#[test]
fn a_client_that_disconnects_cancels_its_work() {
    let server = start(options());
    // A long request whose client gives up after 300 ms...
    let gave_up = common::request(&server, "POST", "/v1/images/generations", None)
        .timeout(Duration::from_millis(300))
        .send_string(&json!({"prompt": "a cat", "steps": 250}).to_string());
    assert!(matches!(gave_up, Err(ureq::Error::Transport(_))));
    // ...frees the worker: the next request does not wait for those 250 steps.
    let started = Instant::now();
    let a = post(
        &server,
        "/v1/images/generations",
        json!({"prompt": "a dog", "steps": 2}),
    );
    assert_eq!(a.status, 200);
    let second = started.elapsed();
    let (_, metrics) = get(&server, "/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    let steps: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ldm_step_seconds_count "))
        .unwrap()
        .parse()
        .unwrap();
    // The abandoned job ran a few steps at most, nowhere near its 250.
    assert!(
        steps < 150.0,
        "{steps} steps ran ({second:?} for the second request)"
    );
}
