//! A server on the shipped bundle, in process on a loopback port of its own, and a plain
//! HTTP client for it.
// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ldm_serve::{ServeOptions, State};

pub struct Server {
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn bundle() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../export/emoji-text")
}

/// The server's defaults, batching at most two images per UNet call, so that its warm-up
/// (one step per batch size) stays short.
pub fn options() -> ServeOptions {
    ServeOptions {
        max_batch: 2,
        ..ServeOptions::default()
    }
}

/// `options` served (the shipped bundle when they name none, and a short grace filled in),
/// once it is ready.
pub fn start(options: ServeOptions) -> Server {
    let options = ServeOptions {
        bundles: if options.bundles.is_empty() {
            vec![bundle()]
        } else {
            options.bundles.clone()
        },
        grace: Duration::from_secs(2),
        ..options
    };
    let (address, bound) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let state = State::load(options).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            address.send(listener.local_addr().unwrap()).unwrap();
            ldm_serve::serve(state, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
    });
    let base = format!(
        "http://{}",
        bound.recv_timeout(Duration::from_secs(60)).unwrap()
    );
    let server = Server {
        base,
        stop: Some(stop),
        thread: Some(thread),
    };
    let started = Instant::now();
    while get(&server, "/ready").0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not ready in a minute"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// (status, headers we look at, body) of any answer, errors included.
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> Answer {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("no answer: {e}"),
    };
    let status = response.status();
    let retry_after = response.header("retry-after").map(str::to_string);
    let content_type = response.content_type().to_string();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut body).unwrap();
    Answer {
        status,
        retry_after,
        content_type,
        body,
    }
}

pub fn request(server: &Server, method: &str, path: &str, key: Option<&str>) -> ureq::Request {
    let mut r = ureq::request(method, &format!("{}{path}", server.base));
    if let Some(key) = key {
        r = r.set("authorization", &format!("Bearer {key}"));
    }
    r
}

pub fn get(server: &Server, path: &str) -> (u16, Vec<u8>) {
    let a = answer(request(server, "GET", path, None).call());
    (a.status, a.body)
}

pub fn send(server: &Server, method: &str, path: &str, body: &str, key: Option<&str>) -> Answer {
    answer(
        request(server, method, path, key)
            .set("content-type", "application/json")
            .send_string(body),
    )
}

/// (status, body) of a request that announces a `content_length` byte body and sends none
/// of it: the answer a server gives before reading a body. A raw socket, since an HTTP
/// client would write the body first and may meet the closed connection instead.
pub fn announce_body(server: &Server, path: &str, content_length: usize) -> (u16, String) {
    use std::io::{Read, Write};
    let address = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n\
         content-length: {content_length}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_string());
    (status, body)
}

pub fn post(server: &Server, path: &str, body: serde_json::Value) -> Answer {
    send(server, "POST", path, &body.to_string(), None)
}

/// Width and height of a PNG.
pub fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    image::load_from_memory(bytes)
        .map(|i| (i.width(), i.height()))
        .unwrap()
}

pub fn unbase64(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}
