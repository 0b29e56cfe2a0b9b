//! `ldm bench-serve`: the server under load. For each engine, `ldm serve` runs as a child
//! process (so its peak resident memory is its own), first one request at a time
//! (`--max-batch 1`), then batching; 1, 4, 16 and 64 concurrent clients post text-to-image
//! requests back to back. Reported per run: images per second against the one-at-a-time
//! run, p50 and p99 latency, answers by status (429 once the queue is full), the mean and
//! largest UNet batch from `/metrics`, and the server's peak memory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use ldm_runtime::Backend;
use serde::Serialize;

#[derive(Args)]
pub struct BenchServeArgs {
    /// The bundle served.
    #[arg(long, default_value = "export/emoji-text")]
    bundle: PathBuf,
    /// Engines to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "tract,ort-cpu")]
    backends: Vec<Backend>,
    /// Threads of every server (the same in all runs).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Concurrent client counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    clients: Vec<usize>,
    /// Requests each client sends, one after another.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    requests: u32,
    /// Sampling steps of every request (one guided 64x64 image each).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=250))]
    steps: u32,
    /// The server's queue: jobs that may wait before 429.
    #[arg(long, default_value_t = 32)]
    queue: usize,
    /// Images per UNet call of the batched runs.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Folder for serve.json and serve.png.
    #[arg(long, default_value = "bench-serve")]
    out: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
struct Run {
    backend: String,
    threads: usize,
    max_batch: usize,
    clients: usize,
    requests: usize,
    succeeded: usize,
    /// Answered 429 (queue full).
    refused: usize,
    /// Any other answer, or none.
    failed: usize,
    seconds: f64,
    images_per_second: f64,
    /// Against the one-at-a-time run (`--max-batch 1`, one client) on the same engine.
    speedup: f64,
    p50_ms: f64,
    p99_ms: f64,
    mean_batch: f64,
    max_batch_seen: f64,
    /// Mean time of one UNet call (one step of every request in the batch).
    mean_step_ms: f64,
    peak_mb: f64,
}

pub fn run(a: BenchServeArgs) -> anyhow::Result<()> {
    if a.clients.iter().any(|&c| c == 0 || c > 256) {
        bail!("--clients: each count between 1 and 256");
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let mut runs = Vec::new();
    for &backend in &a.backends {
        let baseline = measure(&a, backend, 1, 1)?;
        let sequential = baseline.images_per_second;
        let mut configurations = vec![(1, 16)];
        configurations.extend(a.clients.iter().map(|&c| (a.max_batch, c)));
        runs.push(Run {
            speedup: 1.0,
            ..baseline
        });
        for (max_batch, clients) in configurations {
            let mut run = measure(&a, backend, max_batch, clients)?;
            run.speedup = run.images_per_second / sequential;
            runs.push(run);
        }
    }
    println!("{}", table(&runs));
    let json_path = a.out.join("serve.json");
    ldm_data::write_atomic(&json_path, &serde_json::to_vec_pretty(&runs)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let png_path = a.out.join("serve.png");
    plot(&runs, &png_path)?;
    println!("wrote {} and {}", json_path.display(), png_path.display());
    Ok(())
}

/// One server, `clients` clients sending `a.requests` requests each.
fn measure(
    a: &BenchServeArgs,
    backend: Backend,
    max_batch: usize,
    clients: usize,
) -> anyhow::Result<Run> {
    eprintln!(
        "{} x{}, max batch {max_batch}: {clients} clients ...",
        backend.name(),
        a.threads
    );
    let server = Server::start(a, backend, max_batch)?;
    let body = serde_json::json!({
        "prompt": "red apple, twemoji style",
        "steps": a.steps,
        "response_format": "b64_json",
    })
    .to_string();
    let (answers, answered) = mpsc::channel();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for client in 0..clients {
            let (answers, body, url) = (
                answers.clone(),
                body.clone(),
                format!("{}/v1/images/generations", server.base),
            );
            scope.spawn(move || {
                // Spread the first requests over a few milliseconds, as independent clients.
                std::thread::sleep(Duration::from_millis(client as u64 % 16));
                for _ in 0..a.requests {
                    let sent = Instant::now();
                    let status = match ureq::post(&url)
                        .timeout(Duration::from_secs(600))
                        .set("content-type", "application/json")
                        .send_string(&body)
                    {
                        Ok(r) => r.status(),
                        Err(ureq::Error::Status(code, _)) => code,
                        Err(_) => 0,
                    };
                    let _ = answers.send((status, sent.elapsed().as_secs_f64() * 1e3));
                    if status == 429 {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            });
        }
    });
    drop(answers);
    let seconds = started.elapsed().as_secs_f64();
    let answers: Vec<(u16, f64)> = answered.iter().collect();
    let mut latencies: Vec<f64> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, ms)| *ms)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let (mean_batch, max_batch_seen, mean_step_ms) = server.batches()?;
    let succeeded = latencies.len();
    let refused = answers.iter().filter(|(s, _)| *s == 429).count();
    Ok(Run {
        backend: backend.name().to_string(),
        threads: a.threads,
        max_batch,
        clients,
        requests: answers.len(),
        succeeded,
        refused,
        failed: answers.len() - succeeded - refused,
        seconds,
        images_per_second: succeeded as f64 / seconds,
        speedup: f64::NAN,
        p50_ms: quantile(&latencies, 0.50),
        p99_ms: quantile(&latencies, 0.99),
        mean_batch,
        max_batch_seen,
        mean_step_ms,
        peak_mb: server.peak_mb(),
    })
}

/// The nearest-rank quantile of sorted values (NaN when there are none).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// An `ldm serve` child process on a loopback port of the system's choosing.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(a: &BenchServeArgs, backend: Backend, max_batch: usize) -> anyhow::Result<Server> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--bundle"])
            .arg(&a.bundle)
            .args(["--backend", backend.name()])
            .args(["--threads", &a.threads.to_string()])
            .args(["--queue", &a.queue.to_string()])
            .args(["--max-batch", &max_batch.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start ldm serve")?;
        let stderr = child.stderr.take().expect("piped");
        let (found, address) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((_, rest)) = line.split_once(" on http://") {
                    let _ = found.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        });
        let mut server = Server {
            child,
            base: String::new(),
        };
        let address = address
            .recv_timeout(Duration::from_secs(300))
            .context("ldm serve did not start in 5 minutes")?;
        server.base = format!("http://{address}");
        let started = Instant::now();
        while ureq::get(&format!("{}/ready", server.base)).call().is_err() {
            if started.elapsed() > Duration::from_secs(300) {
                bail!("ldm serve was not ready in 5 minutes");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    /// The mean and the largest UNet batch (images) and the mean step time (ms), from
    /// `/metrics`.
    fn batches(&self) -> anyhow::Result<(f64, f64, f64)> {
        let text = ureq::get(&format!("{}/metrics", self.base))
            .call()?
            .into_string()?;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        let (sum, count) = (value("ldm_batch_size_sum "), value("ldm_batch_size_count "));
        // The largest bucket bound with fewer observations below it than in all.
        let largest = text
            .lines()
            .filter_map(|l| l.strip_prefix("ldm_batch_size_bucket{le=\""))
            .filter_map(|l| l.split_once("\"} "))
            .filter_map(|(bound, n)| {
                Some((bound.parse::<f64>().ok()?, n.trim().parse::<f64>().ok()?))
            })
            .find(|&(_, n)| n >= count)
            .map_or(f64::NAN, |(bound, _)| bound);
        let step_ms = 1e3 * value("ldm_step_seconds_sum ") / value("ldm_step_seconds_count ");
        Ok((sum / count, largest, step_ms))
    }

    fn peak_mb(&self) -> f64 {
        crate::bench::peak_mb_of(&self.child.id().to_string())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn table(runs: &[Run]) -> String {
    let mut out = String::from(
        "| engine | max batch | clients | images/s | vs one at a time | p50 (s) | p99 (s) | 200 / 429 / other | mean batch | largest batch | step (ms) | peak memory (MB) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        out.push_str(&format!(
            "| {} x{} | {} | {} | {:.2} | {:.2}x | {:.2} | {:.2} | {} / {} / {} | {:.2} | {} | {:.0} | {:.0} |\n",
            r.backend,
            r.threads,
            r.max_batch,
            r.clients,
            r.images_per_second,
            r.speedup,
            r.p50_ms / 1e3,
            r.p99_ms / 1e3,
            r.succeeded,
            r.refused,
            r.failed,
            r.mean_batch,
            r.max_batch_seen,
            r.mean_step_ms,
            r.peak_mb
        ));
    }
    out
}

/// Throughput by client count, one bar per engine and batching.
fn plot(runs: &[Run], path: &std::path::Path) -> anyhow::Result<()> {
    let label = |clients: usize| match clients {
        1 => "1 client".to_string(),
        n => format!("{n} clients"),
    };
    let mut counts: Vec<usize> = runs.iter().map(|r| r.clients).collect();
    counts.sort_unstable();
    counts.dedup();
    let groups: Vec<String> = counts.into_iter().map(label).collect();
    let mut series: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    for r in runs {
        let group = label(r.clients);
        let name = if r.max_batch == 1 {
            format!("{} one at a time", r.backend)
        } else {
            format!("{} batched", r.backend)
        };
        match series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push((group, r.images_per_second)),
            None => series.push((name, vec![(group, r.images_per_second)])),
        }
    }
    let series: Vec<(String, Vec<f64>)> = series
        .into_iter()
        .map(|(name, values)| {
            let row = groups
                .iter()
                .map(|g| {
                    values
                        .iter()
                        .find(|(v, _)| v == g)
                        .map_or(f64::NAN, |v| v.1)
                })
                .collect();
            (name, row)
        })
        .collect();
    let chart = ldm_plot::grouped_bars(
        "ldm serve: images per second by concurrent clients",
        "images per second (log)",
        &groups,
        &series,
    )
    .map_err(anyhow::Error::msg)?;
    crate::generate::write_chart(path, chart)
}
