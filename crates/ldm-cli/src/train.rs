//! `ldm train autoencoder|diffusion`: the two training stages of the paper, on tch; and
//! `ldm train classifier`: the evaluation network of `ldm eval`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use ldm_core::guided::MAX_GUIDANCE;
use ldm_core::SamplerKind;
use ldm_export::evaluator::export_evaluator;
use ldm_nn::{ClassifierConfig, ModelConfig};
use ldm_train::classifier::{heads_from_data, train_classifier, ClassifierOptions};
use ldm_train::diffusion::{train_diffusion, DiffusionInputs, DiffusionOptions};
use ldm_train::first_stage::{train_autoencoder, AutoencoderOptions};
use ldm_train::optim::LrDecay;
use ldm_train::planner::{train_planner, PlannerOptions};
use ldm_train::run::Cadence;
use ldm_train::trainer::StageOptions;

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
    /// The evaluation network of `ldm eval` (features for FID/KID, category judge), exported
    /// to an evaluator folder when training ends.
    Classifier(ClassifierArgs),
    /// The layout planner of a layout model that takes captions: a transformer that reads a
    /// caption's objects, colours, sizes and places as the layout the model draws, trained on
    /// the captions and layouts of a scenes folder (`ldm data scenes`).
    Planner(PlannerArgs),
    /// Write a run's weights as a release (models/NAME/): a diffusion run's EMA weights and
    /// first stage, or a planner run's planner with the layout model it plans for; or a
    /// release again, with another decoder (`--decoder-from`).
    Release {
        /// Run folder of `ldm train diffusion` or `ldm train planner`, or a release.
        #[arg(long)]
        run: PathBuf,
        /// Release folder to write (replaced once the new one is complete).
        #[arg(long)]
        out: PathBuf,
        /// Ship the first stage of this autoencoder run or release instead of the run's own:
        /// a decoder fine-tuned with `ldm train autoencoder --decoder-only` from it (the
        /// encoder must be the same to the bit).
        #[arg(long)]
        decoder_from: Option<PathBuf>,
    },
}

/// What every run shares: its folder, device, step budget and cadence.
#[derive(Args)]
struct RunArgs {
    /// Run folder: checkpoints, logs, loss curve and image grids.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Steps to train to (with --resume: the new total).
    #[arg(long)]
    steps: Option<u64>,
    /// Images per optimisation step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate of AdamW.
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of the initialisation, the batch order and the noise.
    #[arg(long)]
    seed: Option<u64>,
    /// Steps between rows of log.csv.
    #[arg(long, default_value_t = 50)]
    log_every: u64,
    /// Steps between checkpoints (older ones are pruned).
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// What both stages share: configuration, data and the run.
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
    #[command(flatten)]
    run: RunArgs,
    /// Steps between validations (autoencoder) or sample grids (diffusion).
    #[arg(long, default_value_t = 1000)]
    sample_every: u64,
    /// Fine-tune: start the networks from the latest checkpoint of this run folder, or from a
    /// release (`models/NAME`; an autoencoder then gets a fresh discriminator), of the same
    /// architecture, with a fresh optimiser at step 0. A text model keeps its tokenizer.
    #[arg(long)]
    init_from: Option<PathBuf>,
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
    /// Stride-2 stages of the patch discriminator (default 3; images need at least 3 * 2^N
    /// pixels a side).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=8))]
    disc_layers: Option<u8>,
    /// Do not mirror training images.
    #[arg(long)]
    no_flip: bool,
    /// Fine-tune the decoder only (with --init-from): the encoder's latents stay as they are,
    /// so diffusion models trained on them keep working with the new decoder.
    #[arg(long, requires = "init_from")]
    decoder_only: bool,
}

#[derive(Args)]
struct DiffusionArgs {
    #[command(flatten)]
    common: Common,
    /// The first stage: a run of `ldm train autoencoder`, or a release (`models/NAME`) whose
    /// first stage is reused; not needed for f = 1.
    #[arg(long)]
    autoencoder: Option<PathBuf>,
    /// Use this tokenizer.json instead of training one on the captions.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Steps of linear learning-rate warm-up.
    #[arg(long)]
    warmup: Option<u64>,
    /// After warm-up: constant, or cosine (down to 0 at --steps; a resume that raises --steps
    /// stretches the curve).
    #[arg(long)]
    lr_decay: Option<LrDecay>,
    /// Decay of the weights' exponential moving average, which releases use.
    #[arg(long)]
    ema_decay: Option<f64>,
    /// Probability of dropping the condition (classifier-free guidance).
    #[arg(long)]
    condition_dropout: Option<f64>,
    /// Sampler of the sample grids, which the exported bundle takes as its default: ddpm,
    /// ddim, plms, dpm++2m, euler or euler-a (default ddim).
    #[arg(long)]
    sample_sampler: Option<SamplerKind>,
    /// DDIM's eta in the sample grids (default 1: fresh noise at every step).
    #[arg(long)]
    sample_eta: Option<f64>,
    /// Steps of the sample grids (default 25).
    #[arg(long)]
    sample_steps: Option<usize>,
    /// Classifier-free guidance of the sample grids (default 3).
    #[arg(long)]
    sample_guidance: Option<f64>,
    /// Random crops, the paper's way to sample above the training size: every other image of
    /// a batch is a random training-size window of the image taken at this side (semantic-map,
    /// class and unconditional models; the data's images must be at least this large).
    #[arg(long, value_name = "SIDE")]
    crop_from: Option<usize>,
    /// With --init-from: start the UNet from the source's layers that fit this configuration
    /// (another conditioning: a class embedding, concatenated channels, none), new input
    /// channels at zero, the rest and the conditioning encoder fresh; the latent scale factor
    /// is the source's, so give the source's first stage as --autoencoder.
    #[arg(long, requires = "init_from")]
    transplant: bool,
}

#[derive(Args)]
struct ClassifierArgs {
    /// Image folder with metadata.jsonl (e.g. data/emoji/train).
    #[arg(long)]
    data: PathBuf,
    /// Held-out image folder (default: the sibling `validation` folder of --data).
    #[arg(long)]
    validation: Option<PathBuf>,
    /// Metadata columns to classify, one head each; the first is the one conditioning
    /// accuracy is judged on.
    #[arg(long, value_delimiter = ',', default_value = "label,subcategory,style")]
    columns: Vec<String>,
    /// Side of the images the network sees.
    #[arg(long, default_value_t = 64)]
    resolution: usize,
    /// Evaluator folder written at the end (default: <out>/evaluator).
    #[arg(long)]
    evaluator: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, default_value_t = 500)]
    validate_every: u64,
}

#[derive(Args)]
struct PlannerArgs {
    /// The layout model's configuration with `[conditioning.planner]` added (with --resume,
    /// defaults to the run's own config.toml).
    #[command(flatten)]
    common: Common,
    /// The layout model's release (`models/NAME`) the planner plans for.
    #[arg(long)]
    model: PathBuf,
    /// Linear warm-up steps of the learning rate.
    #[arg(long)]
    warmup: Option<u64>,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    match args.command {
        TrainCommand::Classifier(a) => classifier(a),
        TrainCommand::Planner(a) => planner(a),
        TrainCommand::Autoencoder(a) => autoencoder(a),
        TrainCommand::Diffusion(a) => diffusion(a),
        TrainCommand::Sample(a) => crate::sample::run(a),
        TrainCommand::Release {
            run,
            out,
            decoder_from,
        } => {
            let dir = ldm_train::release::write_release(&run, decoder_from.as_deref(), &out)
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
        let path = match (&self.config, self.run.resume) {
            (Some(path), _) => path.clone(),
            (None, true) => self.run.out.join("config.toml"),
            (None, false) => {
                anyhow::bail!("--config is required (it may be left out only with --resume)")
            }
        };
        Ok(ModelConfig::load(&path)?)
    }

    fn validation(&self) -> Option<PathBuf> {
        self.validation
            .clone()
            .or_else(|| sibling_validation(&self.data))
    }

    fn cadence(&self) -> anyhow::Result<Cadence> {
        cadence(
            self.run.log_every,
            self.sample_every,
            self.run.checkpoint_every,
            self.run.quiet,
        )
    }

    fn device(&self) -> anyhow::Result<tch::Device> {
        Ok(ldm_train::parse_device(&self.run.device)?)
    }
}

/// Images per optimisation step: memory, not the flag, is the real bound; this one keeps a
/// typo from allocating terabytes.
const MAX_BATCH: usize = 4096;
const MAX_STEPS: u64 = 1_000_000_000;

impl RunArgs {
    /// `defaults` with the options every stage shares set where the command line gives them.
    fn options<O: StageOptions>(&self, mut defaults: O) -> anyhow::Result<O> {
        let common = defaults.common();
        *common.steps = self.steps.unwrap_or(*common.steps);
        *common.batch_size = self.batch_size.unwrap_or(*common.batch_size);
        *common.learning_rate = self.lr.unwrap_or(*common.learning_rate);
        *common.seed = self.seed.unwrap_or(*common.seed);
        check_positive("--lr", *common.learning_rate)?;
        anyhow::ensure!(
            (1..=MAX_BATCH).contains(common.batch_size),
            "--batch-size must be 1 to {MAX_BATCH}"
        );
        anyhow::ensure!(
            *common.steps <= MAX_STEPS,
            "--steps must be at most {MAX_STEPS}"
        );
        Ok(defaults)
    }

    /// The lines every stage prints when it stops: how far it got, then where its run is.
    fn report(&self, interrupted: bool, step: u64, figures: &str, checkpoint: &Path) {
        let ended = if interrupted { "stopped" } else { "done" };
        println!("{ended} at step {step}: {figures}");
        println!("checkpoint: {}", checkpoint.display());
        println!(
            "log: {} (loss curve: {})",
            self.out.join("log.csv").display(),
            self.out.join("loss.png").display()
        );
    }
}

/// The `validation` folder next to a `train` folder, when there is one.
fn sibling_validation(data: &Path) -> Option<PathBuf> {
    let sibling = data.parent()?.join("validation");
    let is_train = data.file_name().is_some_and(|n| n == "train");
    (is_train && sibling.join(ldm_data::METADATA_FILE).is_file()).then_some(sibling)
}

fn cadence(
    log_every: u64,
    validate_every: u64,
    checkpoint_every: u64,
    quiet: bool,
) -> anyhow::Result<Cadence> {
    for (name, value) in [
        ("--log-every", log_every),
        ("--sample-every / --validate-every", validate_every),
        ("--checkpoint-every", checkpoint_every),
    ] {
        anyhow::ensure!(value >= 1, "{name} must be at least 1");
    }
    Ok(Cadence {
        log_every,
        validate_every,
        checkpoint_every,
        keep_checkpoints: 2,
        quiet,
    })
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
    let d = c.run.options(AutoencoderOptions::default())?;
    let options = AutoencoderOptions {
        flip: !a.no_flip,
        kl_weight: a.kl_weight.unwrap_or(d.kl_weight),
        perceptual_weight: a.perceptual_weight.unwrap_or(d.perceptual_weight),
        disc_start: a.disc_start.unwrap_or(d.disc_start),
        disc_weight: a.disc_weight.unwrap_or(d.disc_weight),
        disc_layers: a.disc_layers.map_or(d.disc_layers, usize::from),
        init_from: c.init_from.clone(),
        decoder_only: a.decoder_only,
        ..d
    };
    for (name, weight) in [
        ("--kl-weight", options.kl_weight),
        ("--perceptual-weight", options.perceptual_weight),
        ("--disc-weight", options.disc_weight),
    ] {
        anyhow::ensure!(
            weight.is_finite() && weight >= 0.0,
            "{name} must be a non-negative number, not {weight}"
        );
    }
    let validation = c.validation();
    let summary = train_autoencoder(
        &config,
        &c.data,
        validation.as_deref(),
        &c.run.out,
        options,
        c.cadence()?,
        c.device()?,
        c.run.resume,
    )
    .with_context(|| format!("training the autoencoder in {}", c.run.out.display()))?;
    let losses: Vec<String> = summary
        .last_losses
        .iter()
        .map(|(n, v)| format!("{n} {v:.4}"))
        .collect();
    let validation = summary.validation.map_or(String::new(), |(psnr, ssim)| {
        format!("; validation: PSNR {psnr:.2} dB, SSIM {ssim:.4}")
    });
    let figures = format!("{}{validation}", losses.join(", "));
    c.run.report(
        summary.interrupted,
        summary.step,
        &figures,
        &summary.checkpoint,
    );
    Ok(())
}

fn diffusion(a: DiffusionArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let config = c.config()?;
    let d = c.run.options(DiffusionOptions::default())?;
    let options = DiffusionOptions {
        warmup: a.warmup.unwrap_or(d.warmup),
        lr_decay: a.lr_decay.unwrap_or(d.lr_decay),
        ema_decay: a.ema_decay.unwrap_or(d.ema_decay),
        condition_dropout: a.condition_dropout.unwrap_or(d.condition_dropout),
        sample_sampler: a
            .sample_sampler
            .map_or(d.sample_sampler.clone(), |s| s.name().into()),
        sample_eta: a.sample_eta.unwrap_or(d.sample_eta),
        sample_steps: a.sample_steps.unwrap_or(d.sample_steps),
        sample_guidance: a.sample_guidance.unwrap_or(d.sample_guidance),
        init_from: c.init_from.clone(),
        transplant: a.transplant,
        crop_from: a.crop_from,
        ..d
    };
    anyhow::ensure!(
        (0.0..1.0).contains(&options.ema_decay),
        "--ema-decay must be in [0, 1)"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&options.condition_dropout),
        "--condition-dropout must be in [0, 1]"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&options.sample_eta),
        "--sample-eta must be in [0, 1]"
    );
    anyhow::ensure!(
        (1..=config.diffusion.timesteps).contains(&options.sample_steps),
        "--sample-steps must be 1 to the schedule's {} timesteps",
        config.diffusion.timesteps
    );
    anyhow::ensure!(
        options.sample_guidance.abs() <= MAX_GUIDANCE,
        "--sample-guidance must be within -{MAX_GUIDANCE}..={MAX_GUIDANCE}"
    );
    if let (Some(source), true, false) = (&options.init_from, options.transplant, c.run.resume) {
        let (plan, _) = ldm_train::transplant::from_source(source, &config)
            .with_context(|| format!("--transplant from {}", source.display()))?;
        eprintln!("transplant from {}: {plan}", source.display());
    }
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
        &c.run.out,
        options,
        c.cadence()?,
        c.device()?,
        c.run.resume,
    )
    .with_context(|| format!("training the diffusion model in {}", c.run.out.display()))?;
    let figures = format!(
        "loss {}, latent scale factor {:.5}",
        summary.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        summary.scale_factor
    );
    c.run.report(
        summary.interrupted,
        summary.step,
        &figures,
        &summary.checkpoint,
    );
    Ok(())
}

fn planner(a: PlannerArgs) -> anyhow::Result<()> {
    let c = &a.common;
    anyhow::ensure!(
        c.init_from.is_none(),
        "--init-from is not taken by `ldm train planner` (--model names the layout model)"
    );
    let config = c.config()?;
    let validation = c
        .validation()
        .context("--validation is required when --data has no sibling validation folder")?;
    let mut options = c.run.options(PlannerOptions::new(a.model.clone()))?;
    options.warmup = a.warmup.unwrap_or(options.warmup);
    let summary = train_planner(
        &config,
        &c.data,
        &validation,
        &c.run.out,
        options,
        c.cadence()?,
        c.device()?,
        c.run.resume,
    )
    .with_context(|| format!("training the layout planner in {}", c.run.out.display()))?;
    let figures = format!(
        "loss {:.4}; validation: {:.1}% of layouts with their objects' classes and colours, {:.1}% of their boxes within a grid step",
        summary.loss,
        100.0 * summary.validation.objects,
        100.0 * summary.validation.boxes
    );
    c.run.report(
        summary.interrupted,
        summary.step,
        &figures,
        &summary.checkpoint,
    );
    Ok(())
}

fn classifier(a: ClassifierArgs) -> anyhow::Result<()> {
    let validation = a
        .validation
        .clone()
        .or_else(|| sibling_validation(&a.data))
        .context("--validation is required when --data has no sibling validation folder")?;
    let folder = ldm_data::ImageFolder::open(&a.data)?;
    let heads = heads_from_data(&folder, &a.columns)?;
    let config = ClassifierConfig::new(a.resolution, heads);
    let options = a.run.options(ClassifierOptions::default())?;
    let summary = train_classifier(
        &config,
        &a.data,
        &validation,
        &a.run.out,
        options,
        cadence(
            a.run.log_every,
            a.validate_every,
            a.run.checkpoint_every,
            a.run.quiet,
        )?,
        ldm_train::parse_device(&a.run.device)?,
        a.run.resume,
    )
    .with_context(|| format!("training the classifier in {}", a.run.out.display()))?;
    let accuracy: Vec<String> = config
        .heads
        .iter()
        .zip(&summary.accuracy)
        .map(|(h, acc)| format!("{} {:.1}%", h.column, 100.0 * acc))
        .collect();
    let figures = format!(
        "loss {:.4}; validation accuracy: {}",
        summary.loss,
        accuracy.join(", ")
    );
    a.run.report(
        summary.interrupted,
        summary.step,
        &figures,
        &summary.checkpoint,
    );
    if summary.interrupted {
        return Ok(());
    }
    let evaluator = a.evaluator.unwrap_or_else(|| a.run.out.join("evaluator"));
    let exported = export_evaluator(
        &config,
        &summary.weights,
        &ldm_train::run::data_fingerprint(&a.data)?,
        summary.step,
        &summary.accuracy,
        &evaluator,
    )
    .with_context(|| format!("exporting the evaluator to {}", evaluator.display()))?;
    println!(
        "evaluator: {} (tract matches tch within {:.1e})",
        exported.dir.display(),
        exported.max_rel
    );
    Ok(())
}
