//! The `ldm` command: argument parsing and printing; the work lives in the library crates.

mod data;
mod model;
mod progress;

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
    /// Prepare or check training data (image folders with metadata.jsonl).
    Data(data::DataArgs),
    /// Inspect model configurations (models/*.toml).
    Model(model::ModelArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Data(args) => data::run(args),
        Command::Model(args) => model::run(args),
    }
}
