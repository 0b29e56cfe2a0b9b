//! `ldm train autoencoder|diffusion`: the two training stages of the paper, on tch.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use ldm_nn::ModelConfig;
use ldm_train::diffusion::{train_diffusion, DiffusionInputs, DiffusionOptions};
use ldm_train::first_stage::{train_autoencoder, AutoencoderOptions};
use ldm_train::run::Cadence;

#[derive(Args)]
pub struct TrainArgs {
    #[command(subcommand)]
    command: TrainCommand,
}

#[derive(Subcommand)]
enum TrainCommand {
    /// The first stage: a KL or VQ autoencoder with a patch discriminator (paper 3.1).
    Autoencoder(AutoencoderArgs),
    /// The latent diffusion model on a trained first stage (paper 3.2, 3.3).
    Diffusion(DiffusionArgs),
    /// Draw images from a diffusion run (EMA weights) or a release, before exporting it.
    Sample(crate::sample::SampleArgs),
    /// Write a diffusion run's EMA weights and first stage as a release (models/NAME/).
    Release {
        /// Run folder of `ldm train diffusion`.
        #[arg(long)]
        run: PathBuf,
        /// Release folder to write (replaced once the new one is complete).
        #[arg(long)]
        out: PathBuf,
    },
}

/// What both stages share: configuration, data, run folder, device, cadence.
#[derive(Args)]
struct Common {
    /// Model configuration (TOML); with --resume, defaults to the run's own config.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Image folder with metadata.jsonl (e.g. data/emoji/train).
    #[arg(long)]
    data: PathBuf,
    /// Held-out image folder for validation and sample grids (default: the sibling
    /// `validation` folder of --data when there is one).
    #[arg(long)]
    validation: Option<PathBuf>,
    /// Run folder: checkpoints, logs, loss curve and image grids.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 50)]
    log_every: u64,
    /// Steps between validations (autoencoder) or sample grids (diffusion).
    #[arg(long, default_value_t = 1000)]
    sample_every: u64,
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct AutoencoderArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    kl_weight: Option<f64>,
    /// Weight of the 1 - SSIM perceptual term.
    #[arg(long)]
    perceptual_weight: Option<f64>,
    /// Step from which the patch discriminator trains.
    #[arg(long)]
    disc_start: Option<u64>,
    #[arg(long)]
    disc_weight: Option<f64>,
    /// Do not mirror training images.
    #[arg(long)]
    no_flip: bool,
}

#[derive(Args)]
struct DiffusionArgs {
    #[command(flatten)]
    common: Common,
    /// The first-stage run (from `ldm train autoencoder`); not needed for f = 1.
    #[arg(long)]
    autoencoder: Option<PathBuf>,
    /// Use this tokenizer.json instead of training one on the captions.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long)]
    warmup: Option<u64>,
    #[arg(long)]
    ema_decay: Option<f64>,
    /// Probability of dropping the condition (classifier-free guidance).
    #[arg(long)]
    condition_dropout: Option<f64>,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    match args.command {
        TrainCommand::Autoencoder(a) => autoencoder(a),
        TrainCommand::Diffusion(a) => diffusion(a),
        TrainCommand::Sample(a) => crate::sample::run(a),
        TrainCommand::Release { run, out } => {
            let dir = ldm_train::release::write_release(&run, &out)
                .with_context(|| format!("releasing {}", run.display()))?;
            println!(
                "wrote the release of {} to {}",
                run.display(),
                dir.display()
            );
            Ok(())
        }
    }
}

impl Common {
    fn config(&self) -> anyhow::Result<ModelConfig> {
        let path = match (&self.config, self.resume) {
            (Some(path), _) => path.clone(),
            (None, true) => self.out.join("config.toml"),
            (None, false) => {
                anyhow::bail!("--config is required (it may be left out only with --resume)")
            }
        };
        Ok(ModelConfig::load(&path)?)
    }

    fn validation(&self) -> Option<PathBuf> {
        self.validation.clone().or_else(|| {
            let sibling = self.data.parent()?.join("validation");
            let is_train = self.data.file_name().is_some_and(|n| n == "train");
            (is_train && sibling.join(ldm_data::METADATA_FILE).is_file()).then_some(sibling)
        })
    }

    fn cadence(&self) -> anyhow::Result<Cadence> {
        for (name, value) in [
            ("--log-every", self.log_every),
            ("--sample-every", self.sample_every),
            ("--checkpoint-every", self.checkpoint_every),
        ] {
            anyhow::ensure!(value >= 1, "{name} must be at least 1");
        }
        Ok(Cadence {
            log_every: self.log_every,
            validate_every: self.sample_every,
            checkpoint_every: self.checkpoint_every,
            keep_checkpoints: 2,
            quiet: self.quiet,
        })
    }

    fn device(&self) -> anyhow::Result<tch::Device> {
        Ok(ldm_train::parse_device(&self.device)?)
    }
}

fn check_positive(name: &str, value: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        value.is_finite() && value > 0.0,
        "{name} must be a positive number, not {value}"
    );
    Ok(())
}

fn autoencoder(a: AutoencoderArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let config = c.config()?;
    let d = AutoencoderOptions::default();
    let options = AutoencoderOptions {
        steps: c.steps.unwrap_or(d.steps),
        batch_size: c.batch_size.unwrap_or(d.batch_size),
        learning_rate: c.lr.unwrap_or(d.learning_rate),
        seed: c.seed.unwrap_or(d.seed),
        flip: !a.no_flip,
        kl_weight: a.kl_weight.unwrap_or(d.kl_weight),
        perceptual_weight: a.perceptual_weight.unwrap_or(d.perceptual_weight),
        disc_start: a.disc_start.unwrap_or(d.disc_start),
        disc_weight: a.disc_weight.unwrap_or(d.disc_weight),
        ..d
    };
    check_positive("--lr", options.learning_rate)?;
    let validation = c.validation();
    let summary = train_autoencoder(
        &config,
        &c.data,
        validation.as_deref(),
        &c.out,
        options,
        c.cadence()?,
        c.device()?,
        c.resume,
    )
    .with_context(|| format!("training the autoencoder in {}", c.out.display()))?;
    let losses: Vec<String> = summary
        .last_losses
        .iter()
        .map(|(n, v)| format!("{n} {v:.4}"))
        .collect();
    println!(
        "{} at step {}: {}",
        if summary.interrupted {
            "stopped"
        } else {
            "done"
        },
        summary.step,
        losses.join(", ")
    );
    if let Some((psnr, ssim)) = summary.validation {
        println!("validation: PSNR {psnr:.2} dB, SSIM {ssim:.4}");
    }
    print_outputs(&c.out, &summary.checkpoint);
    Ok(())
}

fn diffusion(a: DiffusionArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let config = c.config()?;
    let d = DiffusionOptions::default();
    let options = DiffusionOptions {
        steps: c.steps.unwrap_or(d.steps),
        batch_size: c.batch_size.unwrap_or(d.batch_size),
        learning_rate: c.lr.unwrap_or(d.learning_rate),
        seed: c.seed.unwrap_or(d.seed),
        warmup: a.warmup.unwrap_or(d.warmup),
        ema_decay: a.ema_decay.unwrap_or(d.ema_decay),
        condition_dropout: a.condition_dropout.unwrap_or(d.condition_dropout),
        ..d
    };
    check_positive("--lr", options.learning_rate)?;
    anyhow::ensure!(
        (0.0..1.0).contains(&options.ema_decay),
        "--ema-decay must be in [0, 1)"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&options.condition_dropout),
        "--condition-dropout must be in [0, 1]"
    );
    let validation = c.validation();
    let inputs = DiffusionInputs {
        data: &c.data,
        validation: validation.as_deref(),
        autoencoder_run: a.autoencoder.as_deref(),
        tokenizer: a.tokenizer.as_deref(),
    };
    let summary = train_diffusion(
        &config,
        inputs,
        &c.out,
        options,
        c.cadence()?,
        c.device()?,
        c.resume,
    )
    .with_context(|| format!("training the diffusion model in {}", c.out.display()))?;
    println!(
        "{} at step {}: loss {}, latent scale factor {:.5}",
        if summary.interrupted {
            "stopped"
        } else {
            "done"
        },
        summary.step,
        summary.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        summary.scale_factor
    );
    print_outputs(&c.out, &summary.checkpoint);
    Ok(())
}

fn print_outputs(out: &Path, checkpoint: &Path) {
    println!("checkpoint: {}", checkpoint.display());
    println!(
        "log: {} (loss curve: {})",
        out.join("log.csv").display(),
        out.join("loss.png").display()
    );
}
