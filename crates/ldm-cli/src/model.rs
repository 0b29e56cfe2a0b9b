//! `ldm model info`: parameter counts and multiply-accumulates of a configuration;
//! `ldm model init`: a release of freshly initialised weights, to benchmark sizes not trained
//! here.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use ldm_nn::ModelConfig;

#[derive(Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Parameters per network and multiply-accumulates per forward (batch 1) at the
    /// configured resolution, counted without allocating any weight.
    Info {
        /// Model configuration (TOML), or the reference implementation's YAML.
        config: PathBuf,
    },
    /// A release (models/NAME layout) of the configuration with seeded random weights:
    /// nothing learnt, for `ldm export` and `ldm bench` at the paper's sizes (needs the
    /// `train` feature).
    Init {
        /// Model configuration (TOML), or the reference implementation's YAML; not text
        /// conditioned (its tokenizer would have to be learnt).
        config: PathBuf,
        /// The release folder to write (replaced only once complete).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

pub fn run(args: ModelArgs) -> anyhow::Result<()> {
    match args.command {
        ModelCommand::Info { config } => info(&config),
        ModelCommand::Init { config, out, seed } => init(&config, &out, seed),
    }
}

#[cfg(feature = "train")]
fn init(path: &Path, out: &Path, seed: u64) -> anyhow::Result<()> {
    use anyhow::Context;
    let config = load_config(path)?;
    let release = ldm_train::release::untrained(&config, seed)
        .with_context(|| format!("cannot initialise {}", path.display()))?;
    let dir = ldm_train::release::write_imported(&release, out)
        .with_context(|| format!("cannot write the release {}", out.display()))?;
    let parameters: u64 = config.costs()?.iter().map(|c| c.parameters).sum();
    println!(
        "wrote {} ({} parameters, untrained, seed {seed})",
        dir.display(),
        thousands(parameters)
    );
    Ok(())
}

#[cfg(not(feature = "train"))]
fn init(_: &Path, _: &Path, _: u64) -> anyhow::Result<()> {
    anyhow::bail!("ldm model init needs libtorch: build with --features train")
}

fn info(path: &Path) -> anyhow::Result<()> {
    let config = load_config(path)?;
    let costs = config.costs()?;
    println!(
        "{}: {}x{} images, f = {}, latent {}x{}x{}, {} conditioning",
        path.display(),
        config.resolution,
        config.resolution,
        config.autoencoder.factor,
        config.latent_resolution(),
        config.latent_resolution(),
        config.autoencoder.latent_channels,
        conditioning_name(&config)
    );
    println!(
        "{:<16} {:>14} {:>16}  output",
        "network", "parameters", "GMACs/forward"
    );
    for c in &costs {
        println!(
            "{:<16} {:>14} {:>16.3}  {:?}",
            c.network,
            thousands(c.parameters),
            c.macs as f64 / 1e9,
            c.output_shape
        );
    }
    let total: u64 = costs.iter().map(|c| c.parameters).sum();
    println!("{:<16} {:>14}", "total", thousands(total));
    Ok(())
}

/// A model configuration (TOML), or the reference implementation's YAML read as one.
pub fn load_config(path: &std::path::Path) -> anyhow::Result<ModelConfig> {
    Ok(if ldm_import::reference_config::is_yaml(path) {
        ldm_import::reference_config::read(path)?.config
    } else {
        ModelConfig::load(path)?
    })
}

fn conditioning_name(config: &ModelConfig) -> &'static str {
    match config.conditioning {
        ldm_nn::Conditioning::None => "no",
        ldm_nn::Conditioning::Text {
            concat: Some(_), ..
        } => "text and concatenation",
        ldm_nn::Conditioning::Text {
            layout: Some(_), ..
        } => "layout (boxes as tokens)",
        ldm_nn::Conditioning::Text { .. } => "text",
        ldm_nn::Conditioning::Class { .. } => "class",
        ldm_nn::Conditioning::Concat { .. } => "concatenation",
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
