//! The `ldm` command: argument parsing and printing; the work lives in the library crates.

mod allocator;
mod bench;
mod bench_serve;
mod compare;
mod data;
mod eval;
mod eval_restoration;
mod eval_scenes;
mod eval_semantic;
mod eval_shapes;
#[cfg(feature = "train")]
mod export;
mod generate;
#[cfg(feature = "train")]
mod import;
mod model;
mod peak;
mod profile;
mod progress;
#[cfg(feature = "train")]
mod sample;
mod serve;
mod tokenizer;
#[cfg(feature = "train")]
mod train;

use clap::{Parser, Subcommand};

/// Latent diffusion models, from training to the edge.
#[derive(Parser)]
#[command(name = "ldm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images with an exported bundle (the shipped default: export/emoji-text).
    Generate(generate::GenerateArgs),
    /// Measure a bundle on held-out images: PSNR/SSIM/MS-SSIM, FID/KID, precision/recall,
    /// conditioning accuracy, samples/s.
    Eval(eval::EvalArgs),
    /// Latency and peak memory of a bundle's networks on every available engine, end-to-end
    /// text-to-image time, and achieved MAC/s against the machine's f32 peak.
    Bench(bench::BenchArgs),
    /// Where tract spends one graph's time, node by node in its optimised plan.
    Profile(profile::ProfileArgs),
    /// The server under load: throughput, latency and memory at 1 to 64 clients.
    BenchServe(bench_serve::BenchServeArgs),
    /// Several `ldm eval` reports side by side: a Markdown table and a chart, speeds as
    /// ratios to the first.
    Compare(compare::CompareArgs),
    /// Prepare or check training data (image folders with metadata.jsonl).
    Data(data::DataArgs),
    /// Serve bundles over HTTP: the OpenAI Images API, the AUTOMATIC1111 API, a job API
    /// with progress events, and a web page.
    Serve(serve::ServeArgs),
    /// Inspect model configurations (models/*.toml).
    Model(model::ModelArgs),
    /// Train a caption tokenizer (WordPiece) on an image folder's captions.
    Tokenizer(tokenizer::TokenizerArgs),
    /// Train the autoencoder, the latent diffusion model or the evaluation classifier (needs
    /// the `train` feature).
    #[cfg(feature = "train")]
    Train(train::TrainArgs),
    /// Export a trained model to an ONNX bundle (needs the `train` feature).
    #[cfg(feature = "train")]
    Export(export::ExportArgs),
    /// Import a Stable Diffusion checkpoint (diffusers folder, .safetensors or .ckpt) as a
    /// release, and optionally a bundle (needs the `train` feature).
    #[cfg(feature = "train")]
    Import(import::ImportArgs),
    /// One engine's parity check of one graph, run by `ldm export` in a child process.
    #[cfg(feature = "train")]
    #[command(name = "parity-engine", hide = true)]
    ParityEngine(export::ParityEngineArgs),
}

/// Errors are printed as one line with their causes (no backtrace: they are the user's to fix).
fn main() -> std::process::ExitCode {
    restore_default_sigpipe();
    allocator::one_arena();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once.
fn one_line(e: &anyhow::Error) -> String {
    ldm_core::one_line(e.as_ref())
}

/// Rust starts with SIGPIPE ignored, so the next print after `ldm ... | head` has closed the
/// pipe would panic; like other Unix tools, `ldm` ends quietly instead.
fn restore_default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: first thing in main, before any other thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchServe(args) => bench_serve::run(args),
        Command::Profile(args) => profile::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Data(args) => data::run(args),
        Command::Model(args) => model::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Tokenizer(args) => tokenizer::run(args),
        #[cfg(feature = "train")]
        Command::Train(args) => train::run(args),
        #[cfg(feature = "train")]
        Command::Export(args) => export::run(args),
        #[cfg(feature = "train")]
        Command::Import(args) => import::run(args),
        #[cfg(feature = "train")]
        Command::ParityEngine(args) => export::parity_engine(args),
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn an_error_prints_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let quoted = anyhow::anyhow!("map.png: {io}").context("cannot read the semantic map");
        assert_eq!(
            one_line(&quoted.context("generate")),
            "generate: cannot read the semantic map: map.png: No such file or directory"
        );
        let chained = anyhow::Error::new(io).context("cannot read map.png");
        assert_eq!(
            one_line(&chained),
            "cannot read map.png: No such file or directory"
        );
    }
}
