//! `ldm serve` as a process: the official OpenAI Python client and webuiapi (a client of the
//! AUTOMATIC1111 API) talk to it unchanged (tests/reference/openai_client.py,
//! webui_client.py), its web page works in headless chromium (page_test.py), and SIGTERM
//! under load lets in-flight requests finish before the process exits.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn shipped_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../export/emoji-text")
}

/// `ldm serve` of the shipped bundle on a loopback port of the system's choosing, with
/// `args`; returns the process and its base URL once it serves.
fn serve(args: &[&str]) -> (Child, String) {
    serve_bundle(&shipped_bundle(), args)
}

fn serve_bundle(bundle: &Path, args: &[&str]) -> (Child, String) {
    let mut child = common::ldm()
        .args(["serve", "--port", "0", "--bundle"])
        .arg(bundle)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (found, base) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let (false, Some(rest)) = (sent, line.split_once(" on http://")) {
                let address = rest.1.split_whitespace().next().unwrap().to_string();
                found.send(format!("http://{address}")).unwrap();
                sent = true;
            }
        }
    });
    let base = base
        .recv_timeout(Duration::from_secs(120))
        .expect("the server starts");
    let started = Instant::now();
    while ureq::get(&format!("{base}/ready")).call().is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, base)
}

/// Runs `tests/reference/<script> BASE KEY OUT` against a server with an API key; returns
/// the summary it prints.
fn client(script: &str) -> serde_json::Value {
    client_of(&shipped_bundle(), script, &[])
}

/// `script` run against `ldm serve` of `bundle` (API key "test-key"), with `extra` arguments
/// after its base URL, key and output folder.
fn client_of(bundle: &Path, script: &str, extra: &[&str]) -> serde_json::Value {
    let (mut child, base) = serve_bundle(bundle, &["--api-key", "test-key"]);
    let dir = tempfile::tempdir().unwrap();
    let python = std::env::var("LDM_PYTHON").expect("LDM_PYTHON (set in .cargo/config.toml)");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/reference")
        .join(script);
    let run = Command::new(python)
        .arg(path)
        .args([base.as_str(), "test-key", dir.path().to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(&run.stdout).unwrap()
}

#[test]
fn the_official_openai_client_gets_pngs_of_the_asked_size() {
    let summary = client("openai_client.py");
    assert_eq!(
        summary["sizes"],
        serde_json::json!([[64, 64], [64, 64], [64, 64], [64, 64]])
    );
    assert_eq!(summary["models"], serde_json::json!(["emoji-text"]));
    assert!(
        summary["refused"]
            .as_str()
            .unwrap()
            .contains("width 100000"),
        "{summary}"
    );
}

#[test]
fn a_client_of_the_automatic1111_api_gets_pngs_of_the_asked_size() {
    let summary = client("webui_client.py");
    assert_eq!(
        summary["sizes"],
        serde_json::json!([[64, 64], [64, 64], [64, 64]])
    );
    assert_eq!(summary["seeds"], serde_json::json!([5, 6]));
    assert_eq!(summary["models"], serde_json::json!(["emoji-text"]));
    assert!(summary["samplers"]
        .as_array()
        .unwrap()
        .contains(&"Euler a".into()));
}

#[test]
fn the_web_page_generates_in_headless_chromium() {
    let summary = client("page_test.py");
    assert_eq!(summary["models"], serde_json::json!(["emoji-text"]));
    assert_eq!(
        summary["key_asked"].as_array().unwrap().len(),
        1,
        "{summary}"
    );
    assert_eq!(summary["image"], serde_json::json!([64, 64]));
    assert!(
        summary["status"].as_str().unwrap().contains("seed 7"),
        "{summary}"
    );
    let moving: Vec<f64> = summary["progress"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_f64())
        .filter(|v| *v > 0.0 && *v < 1.0)
        .collect();
    assert!(moving.len() >= 2, "the progress bar was seen at {summary}");
}

#[test]
fn the_web_page_sends_a_semantic_map_as_it_is() {
    // A 128x128 map (twice the training size): a square (class 2) on the background. Its
    // size reaching the model shows its bytes were sent, not a canvas's redrawing.
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("map.png");
    image::GrayImage::from_fn(128, 128, |x, y| {
        image::Luma([if (32..96).contains(&x) && (32..96).contains(&y) {
            2
        } else {
            0
        }])
    })
    .save(&map)
    .unwrap();
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../export/scenes-semantic");
    let summary = client_of(&bundle, "page_test.py", &[map.to_str().unwrap()]);
    assert_eq!(summary["models"], serde_json::json!(["scenes-semantic"]));
    assert_eq!(summary["image"], serde_json::json!([128, 128]), "{summary}");
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits() {
    let (mut child, base) = serve(&["--grace", "60"]);
    let url = format!("{base}/v1/images/generations");
    let in_flight: Vec<_> = (0..3)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                ureq::post(&url)
                    .send_json(serde_json::json!({"prompt": "a cat", "steps": 30, "seed": i, "response_format": "b64_json"}))
                    .map(|r| r.status())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for request in in_flight {
        assert_eq!(
            request.join().unwrap().unwrap(),
            200,
            "accepted work finishes"
        );
    }
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still running after its work"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(
        ureq::get(&format!("{base}/health")).call().is_err(),
        "no longer listening"
    );
}

/// schemathesis, a property-based API tester, generates requests from `/openapi.json` (valid
/// and invalid ones) and checks every answer against it: no 5xx, only the status codes,
/// content types, headers and bodies the description gives, invalid data refused. The
/// bundle served is the shipped one sampling a single step by default, so that the requests
/// that generate stay quick.
#[test]
fn the_server_answers_as_its_openapi_description_says() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("emoji-text");
    std::fs::create_dir(&bundle).unwrap();
    for entry in std::fs::read_dir(shipped_bundle()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), bundle.join(entry.file_name())).unwrap();
    }
    let manifest = bundle.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["defaults"]["steps"] = 1.into();
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let (mut child, base) = serve_bundle(
        &bundle,
        &[
            "--api-key",
            "test-key",
            "--max-steps",
            "2",
            "--max-images",
            "1",
            "--max-size",
            "128",
            "--max-batch",
            "2",
        ],
    );
    let python = std::env::var("LDM_PYTHON").expect("LDM_PYTHON (set in .cargo/config.toml)");
    let st = Path::new(&python).parent().unwrap().join("st");
    let config =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/schemathesis.toml");
    let run = Command::new(st)
        .arg("--config-file")
        .arg(config)
        .args(["run", &format!("{base}/openapi.json")])
        .args(["--header", "Authorization: Bearer test-key"])
        .args(["--max-examples", "12", "--seed", "1"])
        .args(["--phases", "examples,coverage,fuzzing", "--max-time", "150"])
        .args(["--request-timeout", "60", "--no-color"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
