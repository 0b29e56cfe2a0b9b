//! The server's counters in the Prometheus text exposition format (version 0.0.4): requests
//! by route and status, queue depth, batch sizes, step and request latencies, images made.
//! Written by hand: a few counters and fixed-bucket histograms do not need a registry.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// A histogram over fixed upper bounds (seconds, or counts).
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    request_seconds: Histogram,
    step_seconds: Histogram,
    batch_size: Histogram,
    images: u64,
}

pub struct Metrics(Mutex<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Metrics(Mutex::new(Inner {
            requests: BTreeMap::new(),
            request_seconds: Histogram::new(SECONDS),
            step_seconds: Histogram::new(SECONDS),
            batch_size: Histogram::new(BATCH),
            images: 0,
        }))
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().expect("metrics lock")
    }

    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        let mut m = self.lock();
        *m.requests.entry((route.to_string(), status)).or_default() += 1;
        m.request_seconds.observe(seconds);
    }

    /// One UNet call over `rows` images' latents.
    pub fn step(&self, seconds: f64, images: usize) {
        let mut m = self.lock();
        m.step_seconds.observe(seconds);
        m.batch_size.observe(images as f64);
    }

    pub fn images(&self, n: usize) {
        self.lock().images += n as u64;
    }

    /// The exposition, with the queue depth of each model.
    pub fn render(&self, queues: &[(String, usize)]) -> String {
        let m = self.lock();
        let mut out = String::new();
        out.push_str("# HELP ldm_requests_total HTTP requests by route and status.\n# TYPE ldm_requests_total counter\n");
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "ldm_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP ldm_queue_depth Jobs waiting per model.\n# TYPE ldm_queue_depth gauge\n",
        );
        for (model, depth) in queues {
            let _ = writeln!(out, "ldm_queue_depth{{model=\"{model}\"}} {depth}");
        }
        m.request_seconds
            .write(&mut out, "ldm_request_seconds", "Request latency.");
        m.step_seconds
            .write(&mut out, "ldm_step_seconds", "Time of one sampling step.");
        m.batch_size.write(
            &mut out,
            "ldm_batch_size",
            "Images in one UNet call's batch.",
        );
        let _ = writeln!(
            out,
            "# HELP ldm_images_total Images generated.\n# TYPE ldm_images_total counter\nldm_images_total {}",
            m.images
        );
        out
    }
}
