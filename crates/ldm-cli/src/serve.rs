//! `ldm serve`: the server of `ldm-serve` with its options from the command line.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ldm_runtime::Backend;
use ldm_serve::ServeOptions;

use crate::generate::DEFAULT_BUNDLE;

#[derive(Args)]
pub struct ServeArgs {
    /// A bundle to serve (repeat for several; the first is the default model). Requests
    /// choose one by its folder's name.
    #[arg(long = "bundle", value_name = "DIR", default_value = DEFAULT_BUNDLE)]
    bundles: Vec<PathBuf>,
    /// The address to listen on (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// tract (pure Rust, CPU), or ONNX Runtime: ort-cpu, ort-cuda, ort-trt (TensorRT).
    #[arg(long, default_value = "tract")]
    backend: Backend,
    /// Threads per model (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Jobs that may wait per model; more get 429 with Retry-After.
    #[arg(long, default_value_t = 32)]
    queue: usize,
    /// Require `Authorization: Bearer KEY` on every API route (default: $LDM_API_KEY).
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Let pages of any origin call the API.
    #[arg(long)]
    cors: bool,
    /// Largest request body, in megabytes.
    #[arg(long, default_value_t = 16)]
    max_body_mb: usize,
    /// Most images one request may ask for.
    #[arg(long, default_value_t = 8)]
    max_images: usize,
    /// Most images of concurrent requests sampled in one UNet call (1: one request at a
    /// time).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    max_batch: u16,
    /// Largest image side one request may ask for, in pixels.
    #[arg(long, default_value_t = 1024)]
    max_size: usize,
    /// Most sampling steps one request may ask for.
    #[arg(long, default_value_t = 250)]
    max_steps: usize,
    /// Seconds a request may take before it is cancelled (504).
    #[arg(long, default_value_t = 300)]
    deadline: u64,
    /// Seconds in-flight requests may run on after SIGTERM.
    #[arg(long, default_value_t = 30)]
    grace: u64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let api_key = args
        .api_key
        .or_else(|| std::env::var("LDM_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let options = ServeOptions {
        threads: args.threads.unwrap_or_else(ldm_runtime::default_threads),
        bundles: args.bundles,
        backend: args.backend,
        queue: args.queue,
        api_key,
        cors: args.cors,
        max_body_bytes: args.max_body_mb << 20,
        max_images: args.max_images,
        max_batch: args.max_batch.into(),
        max_steps: args.max_steps,
        max_side: args.max_size,
        deadline: Duration::from_secs(args.deadline),
        grace: Duration::from_secs(args.grace),
        ..ServeOptions::default()
    };
    ldm_serve::run(options, SocketAddr::new(args.host, args.port))
}
