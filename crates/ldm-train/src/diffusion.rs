//! `ldm train diffusion`: the latent diffusion model of paper 3.2/3.3 on a frozen first stage.
//! Latents are cached once and scaled by 1/std of the first batch (paper G); the UNet learns
//! the epsilon objective at t uniform in 0..T, jointly with its conditioning encoder (Eq. 3),
//! with AdamW, warm-up, gradient clipping, an EMA of the weights, and conditioning dropout so
//! classifier-free guidance works.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use ldm_core::{NoiseSchedule, TextTokenizer};
use ldm_data::{Batch, ImageFolder, Loader, LoaderConfig};
use ldm_nn::{ConcatTask, Conditioning, ModelConfig, Regularizer};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::checkpoint;
use crate::denoiser::{encoder_name, expected_params, split_named, token_ids, Condition, Denoiser};
use crate::ema::Ema;
use crate::first_stage::{encode_mode, images_tensor, load_autoencoder, non_finite, shallow};
use crate::latents::LatentCache;
use crate::optim::{scheduled_lr, AdamConfig, AdamW, LrDecay};
use crate::preview::Preview;
use crate::release;
use crate::run::{self, Cadence, RunLog, Start};
use crate::{TchOps, TrainError};

/// Hyper-parameters of a diffusion run (saved with every checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffusionOptions {
    pub steps: u64,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Steps of linear learning-rate warm-up.
    pub warmup: u64,
    /// What the learning rate does after warm-up (runs saved before it existed: constant).
    #[serde(default)]
    pub lr_decay: LrDecay,
    pub weight_decay: f64,
    /// Global gradient-norm bound.
    pub grad_clip: f64,
    pub ema_decay: f64,
    /// Probability that a caption is replaced by "" or a label by the null class, so the
    /// model also learns the unconditional prediction that guidance needs.
    pub condition_dropout: f64,
    pub seed: u64,
    /// Guidance scale and DDIM steps of the periodic sample grids.
    pub sample_guidance: f64,
    pub sample_steps: usize,
    /// Fine-tuning: the run whose latest UNet and conditioning encoder this run starts from
    /// (fresh optimiser and average, step 0; a text model keeps that run's tokenizer).
    #[serde(default)]
    pub init_from: Option<PathBuf>,
}

impl Default for DiffusionOptions {
    fn default() -> Self {
        Self {
            steps: 20_000,
            batch_size: 32,
            learning_rate: 2e-4,
            warmup: 500,
            lr_decay: LrDecay::Constant,
            weight_decay: 0.01,
            grad_clip: 1.0,
            ema_decay: 0.999,
            condition_dropout: 0.1,
            seed: 0,
            sample_guidance: 3.0,
            sample_steps: 25,
            init_from: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffusionState {
    pub step: u64,
    pub options: DiffusionOptions,
    pub config: ModelConfig,
    pub data_fingerprint: String,
    /// The first-stage checkpoint (or release) the latents come from (none for f = 1).
    pub autoencoder_checkpoint: Option<PathBuf>,
    /// Latents are multiplied by this before diffusion (1 / std of the first batch).
    pub scale_factor: f64,
    /// Class names of a class-conditional model: id i is `class_names[i]`.
    pub class_names: Vec<String>,
    pub ema_updates: u64,
}

#[derive(Debug, Clone)]
pub struct DiffusionSummary {
    pub step: u64,
    /// Mean loss of the last logged interval.
    pub last_loss: Option<f64>,
    pub scale_factor: f64,
    pub checkpoint: PathBuf,
    pub interrupted: bool,
}

/// Where a diffusion run gets its inputs.
pub struct DiffusionInputs<'a> {
    pub data: &'a Path,
    /// Folder for the sample grids' prompts or images (default: `data`).
    pub validation: Option<&'a Path>,
    /// The first-stage run (not needed for f = 1).
    pub autoencoder_run: Option<&'a Path>,
    /// An existing tokenizer.json; otherwise one is trained on the captions.
    pub tokenizer: Option<&'a Path>,
}

/// `steps_per_second` counts optimisation steps only (not previews or checkpoints): the
/// training throughput that the compression trade-off study compares.
const LOG_COLUMNS: [&str; 4] = ["loss", "grad_norm", "lr", "steps_per_second"];
const OPTIMIZER: &str = "optimizer";
const EMA: &str = "ema";
const UNET: &str = "unet";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The conditioning side of training: how a batch's captions, labels or images become the
/// denoiser's [`Condition`].
pub(crate) enum Conditioner {
    None,
    Text {
        // Boxed: the tokenizer is large next to the other variants.
        tokenizer: Box<TextTokenizer>,
        max_length: usize,
    },
    Class {
        classes: usize,
    },
    SuperResolution,
    Inpainting,
}

/// Trains the latent diffusion model of `config`, writing the run to `out`.
pub fn train_diffusion(
    config: &ModelConfig,
    inputs: DiffusionInputs,
    out: &Path,
    options: DiffusionOptions,
    cadence: Cadence,
    device: Device,
    resume: bool,
) -> Result<DiffusionSummary, TrainError> {
    // Ctrl-C from here on saves a checkpoint instead of killing the run.
    let stop = run::stop_requested();
    let schedule = config.diffusion.schedule()?;
    let mut folder = ImageFolder::open(inputs.data)?;
    folder = match config.conditioning {
        Conditioning::Text { .. } => folder.require_text()?,
        Conditioning::Class { .. } => folder.require_label()?,
        _ => folder,
    };
    run::check_data(&folder, config)?;
    let fingerprint = run::data_fingerprint(inputs.data)?;
    let start = run::start(out, resume)?;
    let resumed: Option<DiffusionState> = match &start {
        Start::Fresh => None,
        Start::Resume(checkpoint) => {
            let state: DiffusionState = checkpoint::load_state(checkpoint)?;
            let asked = DiffusionOptions {
                steps: state.options.steps,
                init_from: state.options.init_from.clone(),
                ..options.clone()
            };
            run::check_resumable(
                checkpoint,
                (&state.config, &state.data_fingerprint, &state.options),
                (config, &fingerprint, &asked),
            )?;
            Some(state)
        }
    };
    let options = match &resumed {
        Some(state) => DiffusionOptions {
            steps: options.steps,
            ..state.options.clone()
        },
        None => options,
    };
    run::write_config(out, config)?;

    // The frozen first stage and the cached latents.
    let autoencoder_checkpoint = match &resumed {
        Some(state) => state.autoencoder_checkpoint.clone(),
        None => first_stage_checkpoint(config, inputs.autoencoder_run)?,
    };
    let mut first_stage = match &autoencoder_checkpoint {
        Some(checkpoint) => Some(load_autoencoder(checkpoint, config, device)?),
        None => None,
    };
    let bar = run::progress(options.steps, 0, cadence.quiet);
    let cache = LatentCache::open(
        &folder,
        config,
        first_stage.as_mut(),
        &fingerprint,
        &autoencoder_checkpoint
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string()),
        out,
        &bar,
    )?;
    let loader = Loader::new(
        folder,
        LoaderConfig {
            size: config.resolution as u32,
            batch_size: options.batch_size,
            flip: false,
            shuffle: true,
            seed: options.seed,
        },
    )?;
    let scale_factor = match &resumed {
        Some(state) => state.scale_factor,
        None => first_batch_scale(config, &cache, &loader, options.seed)?,
    };
    let weights_from = run::weights_source(&start, options.init_from.as_deref())?;
    // A fine-tuned text encoder only understands its own token ids.
    let source_tokenizer = match (&resumed, &options.init_from) {
        (None, Some(source)) => Some(source.join(TOKENIZER_FILE)),
        _ => None,
    };
    let tokenizer = inputs.tokenizer.or(source_tokenizer.as_deref());
    let (conditioner, class_names) =
        conditioner(config, &loader, tokenizer, resumed.as_ref(), out)?;

    // The trainable networks, their optimiser and average.
    tch::manual_seed(options.seed as i64);
    let mut step = resumed.as_ref().map_or(0, |s| s.step);
    let mut model = match &weights_from {
        None => Denoiser::new(config, device, None)?,
        Some(checkpoint) => {
            let (unet_expected, encoder_expected) = expected_params(config)?;
            let unet = checkpoint::load_weights_as_f32(checkpoint, UNET, Some(&unet_expected))?;
            let encoder = match (encoder_name(config), encoder_expected) {
                (Some(name), Some(expected)) => Some(checkpoint::load_weights_as_f32(
                    checkpoint,
                    name,
                    Some(&expected),
                )?),
                _ => None,
            };
            Denoiser::new(config, device, Some((unet, encoder)))?
        }
    };
    let params = model.named_params();
    let mut opt = AdamW::new(
        shallow(&params),
        AdamConfig::with_weight_decay(options.weight_decay),
    );
    let mut ema = Ema::new(&params, options.ema_decay);
    if let (Start::Resume(checkpoint), Some(state)) = (&start, &resumed) {
        opt.load_state(&checkpoint::load_weights(checkpoint, OPTIMIZER, None)?)
            .map_err(TrainError::Run)?;
        ema.restore(
            &checkpoint::load_weights(checkpoint, EMA, None)?,
            state.ema_updates,
        )
        .map_err(TrainError::Run)?;
    }

    let preview = Preview::new(
        config,
        inputs.validation.unwrap_or(inputs.data),
        &conditioner,
        first_stage.as_mut(),
        scale_factor,
        device,
    )?;
    let sqrt_ab = alpha_bar_tensor(&schedule, false, device);
    let sqrt_1m_ab = alpha_bar_tensor(&schedule, true, device);
    let mut log = RunLog::open(out, "log.csv", &LOG_COLUMNS, step)?;
    bar.set_length(options.steps);
    bar.set_position(step);
    bar.reset_eta();
    bar.set_message("");
    let mut latest = checkpoint::latest(out)?;
    let save =
        |step: u64, opt: &AdamW, ema: &Ema, model: &Denoiser| -> Result<PathBuf, TrainError> {
            let state = DiffusionState {
                step,
                options: options.clone(),
                config: config.clone(),
                data_fingerprint: fingerprint.clone(),
                autoencoder_checkpoint: autoencoder_checkpoint.clone(),
                scale_factor,
                class_names: class_names.clone(),
                ema_updates: ema.updates(),
            };
            let cpu = |w: &[(String, Tensor)]| -> Vec<(String, Tensor)> {
                w.iter()
                    .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu)))
                    .collect()
            };
            let (unet, encoder) = split_named(config, &model.named_params());
            let (unet, encoder, ema_weights) =
                (cpu(&unet), encoder.map(|e| cpu(&e)), cpu(ema.weights()));
            let optimizer = opt.state();
            let mut files: Vec<(&str, &[(String, Tensor)])> = vec![
                (UNET, unet.as_slice()),
                (EMA, ema_weights.as_slice()),
                (OPTIMIZER, optimizer.as_slice()),
            ];
            if let (Some(name), Some(encoder)) = (encoder_name(config), encoder.as_ref()) {
                files.push((name, encoder.as_slice()));
            }
            let dir = checkpoint::save(out, step, &files, &state)?;
            checkpoint::prune(out, cadence.keep_checkpoints + 1)?;
            Ok(dir)
        };

    let (mut sum, mut norm_sum, mut counted) = (0.0, 0.0, 0u64);
    let mut step_time = std::time::Duration::ZERO;
    let mut last_loss = None;
    let mut interrupted = false;
    while step < options.steps {
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let started = std::time::Instant::now();
        let batch = loader.batch(step)?;
        tch::manual_seed(run::step_seed(options.seed, step));
        let b = batch.shape[0] as i64;
        let x0 = cache.latents(&batch.rows, device) * scale_factor;
        let t = Tensor::randint(schedule.timesteps() as i64, [b], (Kind::Int64, device));
        let noise = x0.randn_like();
        let xt = sqrt_ab.index_select(0, &t).view([-1, 1, 1, 1]) * &x0
            + sqrt_1m_ab.index_select(0, &t).view([-1, 1, 1, 1]) * &noise;
        let dropped: Vec<bool> =
            Vec::<f32>::try_from(Tensor::rand([b], (Kind::Float, Device::Cpu)))
                .expect("f32")
                .into_iter()
                .map(|u| (u as f64) < options.condition_dropout)
                .collect();
        let condition = conditioner.condition(
            &batch,
            &dropped,
            &cache,
            first_stage.as_mut(),
            config,
            scale_factor,
            device,
        )?;
        let eps = model.forward(&xt, &t, &condition)?;
        let loss = eps.mse_loss(&noise, tch::Reduction::Mean);
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            return Err(non_finite("diffusion loss", value, step, &latest));
        }
        opt.zero_grad();
        loss.backward();
        let norm = opt.clip_grad_norm(options.grad_clip);
        if !norm.is_finite() {
            return Err(non_finite("gradient norm", norm, step, &latest));
        }
        let lr = scheduled_lr(
            options.learning_rate,
            options.warmup,
            options.lr_decay,
            step,
            options.steps,
        );
        opt.step(lr);
        ema.update(&params);
        step_time += started.elapsed();
        step += 1;
        bar.set_position(step);
        (sum, norm_sum, counted) = (sum + value, norm_sum + norm, counted + 1);
        if step.is_multiple_of(cadence.log_every) || step == options.steps {
            let mean = sum / counted as f64;
            let rate = counted as f64 / step_time.as_secs_f64();
            bar.set_message(format!("loss {mean:.4}"));
            log.push(step, vec![mean, norm_sum / counted as f64, lr, rate])?;
            last_loss = Some(mean);
            (sum, norm_sum, counted) = (0.0, 0.0, 0);
            step_time = std::time::Duration::ZERO;
        }
        if step.is_multiple_of(cadence.validate_every) || step == options.steps {
            let grid = out.join("samples").join(format!("step-{step:08}.png"));
            preview.render(
                config,
                ema.weights(),
                first_stage.as_mut(),
                &schedule,
                &options,
                &grid,
                device,
            )?;
        }
        if step.is_multiple_of(cadence.checkpoint_every) {
            latest = Some(save(step, &opt, &ema, &model)?);
            log.plot(&out.join("loss.png"))?;
        }
    }
    let checkpoint = match &latest {
        Some(dir) if dir.ends_with(format!("step-{step:08}")) => dir.clone(),
        _ => save(step, &opt, &ema, &model)?,
    };
    log.plot(&out.join("loss.png"))?;
    bar.finish();
    Ok(DiffusionSummary {
        step,
        last_loss,
        scale_factor,
        checkpoint,
        interrupted,
    })
}

/// sqrt(alpha_bar_t) (or sqrt(1 - alpha_bar_t)) for every t, as an f32 tensor.
fn alpha_bar_tensor(schedule: &NoiseSchedule, complement: bool, device: Device) -> Tensor {
    let values: Vec<f32> = (0..schedule.timesteps())
        .map(|t| {
            let ab = schedule.alpha_bar(t);
            (if complement { 1.0 - ab } else { ab }).sqrt() as f32
        })
        .collect();
    Tensor::from_slice(&values).to_device(device)
}

/// Where the frozen first stage comes from: the latest checkpoint of an autoencoder run, or a
/// release (`models/NAME`, which ships its first stage), checked against this model's.
fn first_stage_checkpoint(
    config: &ModelConfig,
    source: Option<&Path>,
) -> Result<Option<PathBuf>, TrainError> {
    if config.autoencoder.regularizer == Regularizer::Identity {
        return Ok(None);
    }
    let source = source.ok_or_else(|| {
        TrainError::Run("this model has a first stage: pass --autoencoder runs/NAME (a run of `ldm train autoencoder`, or a release)".into())
    })?;
    let folder = run::weights_folder(source)?.ok_or_else(|| {
        TrainError::Run(format!(
            "{} holds no autoencoder checkpoint; train one first with `ldm train autoencoder --out {}`",
            source.display(),
            source.display()
        ))
    })?;
    // Absolute, so the run reads its first stage from any working directory.
    let folder = std::fs::canonicalize(&folder).map_err(|e| TrainError::io(&folder, e))?;
    let trained_with = release::first_stage_record(&folder)?.config;
    if trained_with.autoencoder != config.autoencoder
        || trained_with.resolution != config.resolution
    {
        return Err(TrainError::Run(format!(
            "{} was trained with another first stage (its [autoencoder] section or resolution differs from this configuration's)",
            folder.display()
        )));
    }
    Ok(Some(folder))
}

/// 1 / std of the first training batch's latents (paper G; 1 without a first stage).
fn first_batch_scale(
    config: &ModelConfig,
    cache: &LatentCache,
    loader: &Loader,
    seed: u64,
) -> Result<f64, TrainError> {
    if config.autoencoder.regularizer == Regularizer::Identity {
        return Ok(1.0);
    }
    tch::manual_seed(seed as i64);
    let batch = loader.batch(0)?;
    let std = cache
        .latents(&batch.rows, Device::Cpu)
        .std(true)
        .double_value(&[]);
    if !(std.is_finite() && std > 0.0) {
        return Err(TrainError::Run(format!(
            "the first batch's latents have std {std}; the first stage is degenerate"
        )));
    }
    Ok(1.0 / std)
}

/// The conditioner of this model, and the class names of a class-conditional one.
fn conditioner(
    config: &ModelConfig,
    loader: &Loader,
    tokenizer: Option<&Path>,
    resumed: Option<&DiffusionState>,
    out: &Path,
) -> Result<(Conditioner, Vec<String>), TrainError> {
    Ok(match config.conditioning {
        Conditioning::None => (Conditioner::None, vec![]),
        Conditioning::Concat {
            task: ConcatTask::SuperResolution,
        } => (Conditioner::SuperResolution, vec![]),
        Conditioning::Concat {
            task: ConcatTask::Inpainting,
        } => (Conditioner::Inpainting, vec![]),
        Conditioning::Text {
            vocab_size,
            max_length,
            ..
        } => {
            let saved = out.join(TOKENIZER_FILE);
            let tokenizer = match (resumed, tokenizer) {
                (Some(_), _) => TextTokenizer::load(&saved)?,
                (None, Some(path)) => TextTokenizer::load(path)?,
                (None, None) => {
                    let captions = loader.folder().records().filter_map(|r| r.text.clone());
                    TextTokenizer::train(captions, vocab_size)?
                }
            };
            if tokenizer.vocab_size() > vocab_size {
                return Err(TrainError::Run(format!(
                    "the tokenizer has {} entries but conditioning.vocab_size = {vocab_size}; raise vocab_size or use a smaller tokenizer",
                    tokenizer.vocab_size()
                )));
            }
            // Train from the saved file, as resume and export will read it.
            tokenizer.save(&saved)?;
            let tokenizer = Box::new(TextTokenizer::load(&saved)?);
            (
                Conditioner::Text {
                    tokenizer,
                    max_length,
                },
                vec![],
            )
        }
        Conditioning::Class { classes, .. } => {
            let names = loader.folder().labels();
            if names.len() > classes {
                return Err(TrainError::Run(format!(
                    "{} holds {} distinct labels but conditioning.classes = {classes}",
                    loader.folder().root().display(),
                    names.len()
                )));
            }
            if let Some(state) = resumed.filter(|s| s.class_names != names) {
                return Err(TrainError::Run(format!(
                    "the data's labels differ from the run's ({:?})",
                    state.class_names
                )));
            }
            (Conditioner::Class { classes }, names)
        }
    })
}

impl Conditioner {
    /// The condition of a training batch; `dropped[i]` replaces image i's caption or label by
    /// the unconditional one.
    #[allow(clippy::too_many_arguments)]
    fn condition(
        &self,
        batch: &Batch,
        dropped: &[bool],
        cache: &LatentCache,
        first_stage: Option<&mut TchOps>,
        config: &ModelConfig,
        scale_factor: f64,
        device: Device,
    ) -> Result<Condition, TrainError> {
        Ok(match self {
            Conditioner::None => Condition::None,
            Conditioner::Text {
                tokenizer,
                max_length,
            } => {
                let texts: Vec<&str> = batch
                    .texts
                    .iter()
                    .zip(dropped)
                    .map(|(t, &d)| if d { "" } else { t.as_str() })
                    .collect();
                Condition::Tokens(token_ids(tokenizer, &texts, *max_length, device)?)
            }
            Conditioner::Class { classes } => {
                let ids: Vec<i64> = batch
                    .labels
                    .iter()
                    .zip(dropped)
                    .map(|(l, &d)| {
                        if d {
                            *classes as i64
                        } else {
                            l.map_or(*classes as i64, |l| l as i64)
                        }
                    })
                    .collect();
                Condition::Classes(Tensor::from_slice(&ids).to_device(device))
            }
            Conditioner::SuperResolution => {
                Condition::Concat(cache.low_resolution(&batch.rows, device))
            }
            Conditioner::Inpainting => {
                let images = images_tensor(&batch.images, batch.shape, device);
                let mask = random_boxes(batch.shape[0], config.resolution, device);
                Condition::Concat(inpainting_condition(
                    &images,
                    &mask,
                    first_stage,
                    config,
                    scale_factor,
                )?)
            }
        })
    }
}

/// One random rectangle per image, 1 inside (the region to fill): sides from a quarter to
/// three quarters of the image.
fn random_boxes(count: usize, size: usize, device: Device) -> Tensor {
    let draws: Vec<f32> = Tensor::rand([count as i64, 4], (Kind::Float, Device::Cpu))
        .flatten(0, -1)
        .try_into()
        .expect("f32");
    let mut mask = vec![0f32; count * size * size];
    for (i, d) in draws.chunks(4).enumerate() {
        let (w, h) = (
            ((0.25 + 0.5 * d[0]) * size as f32) as usize,
            ((0.25 + 0.5 * d[1]) * size as f32) as usize,
        );
        let (x0, y0) = (
            (d[2] * (size - w) as f32) as usize,
            (d[3] * (size - h) as f32) as usize,
        );
        for y in y0..y0 + h {
            mask[i * size * size + y * size + x0..i * size * size + y * size + x0 + w].fill(1.0);
        }
    }
    Tensor::from_slice(&mask)
        .reshape([count as i64, 1, size as i64, size as i64])
        .to_device(device)
}

/// The inpainting model's extra channels: the encoded masked image (scaled) and the mask at
/// the latent's size (1 where the model must fill in).
pub fn inpainting_condition(
    images: &Tensor,
    mask: &Tensor,
    first_stage: Option<&mut TchOps>,
    config: &ModelConfig,
    scale_factor: f64,
) -> Result<Tensor, TrainError> {
    let _guard = tch::no_grad_guard();
    let masked = images * (1.0 - mask);
    let latent = match first_stage {
        Some(ops) => encode_mode(ops, config, &masked)? * scale_factor,
        None => masked,
    };
    let f = config.autoencoder.factor as i64;
    let small = mask.avg_pool2d([f, f], [f, f], [0, 0], false, true, None::<i64>);
    Ok(Tensor::cat(&[latent, small], 1))
}
