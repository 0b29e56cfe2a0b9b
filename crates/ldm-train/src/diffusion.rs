//! `ldm train diffusion`: the latent diffusion model of paper 3.2/3.3 on a frozen first stage.
//! Latents are cached once and scaled by 1/std of the first batch (paper G); the UNet learns
//! the epsilon objective at t uniform in 0..T, jointly with its conditioning encoder (Eq. 3),
//! with AdamW, warm-up, gradient clipping, an EMA of the weights, and conditioning dropout so
//! classifier-free guidance works.

use std::path::{Path, PathBuf};

use ldm_core::layout::LayoutVocabulary;
use ldm_core::{NoiseSchedule, Prediction, TextTokenizer};
use ldm_data::{ImageFolder, Loader, LoaderConfig};
use ldm_nn::{ConcatKind, Conditioning, FirstStage, ModelConfig};
use tch::{Device, Kind, Tensor};

use crate::autoencoder::load_autoencoder;
use crate::checkpoint;
use crate::conditioner::Conditioner;
use crate::denoiser::{encoder_name, expected_params, split_named, Denoiser};
use crate::ema::Ema;
use crate::latents::{LatentCache, Window};
use crate::optim::{scheduled_lr, AdamConfig, AdamW};
use crate::preview::Preview;
pub use crate::records::{DiffusionOptions, DiffusionState};
use crate::release::{self, TOKENIZER_FILE};
use crate::run::{self, Cadence, Start};
use crate::tensors::{detached, shallow, sorted_params, NamedWeights};
use crate::trainer::{self, Begun, Stage, StepReport, Summary, OPTIMIZER};
use crate::transplant;
use crate::{TchOps, TrainError};

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

const EMA: &str = "ema";
const UNET: &str = "unet";

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
    let folder = open_folder(config, inputs.data)?;
    run::check_data(&folder, config)?;
    let begun: Begun<DiffusionState> = trainer::begin(out, inputs.data, config, options, resume)?;
    run::write_config(out, config)?;
    let mut stage = DiffusionStage::new(config, folder, &inputs, &begun, out, cadence, device)?;
    let finished = trainer::train(&mut stage, &begun, out, cadence)?;
    Ok(DiffusionSummary {
        step: finished.step,
        last_loss: finished.last_logged.first().map(|(_, loss)| *loss),
        scale_factor: stage.scale_factor,
        checkpoint: finished.checkpoint,
        interrupted: finished.interrupted,
    })
}

/// An image folder with what `config`'s conditioning needs of every row checked (captions,
/// labels, semantic maps), a layout model's captions being its rows' layouts.
pub(crate) fn open_folder(config: &ModelConfig, path: &Path) -> Result<ImageFolder, TrainError> {
    let folder = ImageFolder::open(path)?;
    Ok(match &config.conditioning {
        Conditioning::Text {
            layout: Some(vocabulary),
            ..
        } => folder.layouts_as_text(vocabulary)?,
        Conditioning::Text { .. } => folder.require_text()?,
        Conditioning::Class { .. } => folder.require_label()?,
        Conditioning::Concat {
            task: ConcatKind::SemanticMap,
            ..
        } => folder.require_semantic_maps()?,
        _ => folder,
    })
}

/// The diffusion model in training, with the frozen first stage and cached latents it learns
/// on.
struct DiffusionStage<'a> {
    config: &'a ModelConfig,
    options: DiffusionOptions,
    data_fingerprint: String,
    out: PathBuf,
    schedule: NoiseSchedule,
    /// sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) for every t.
    sqrt_alpha_bar: Tensor,
    sqrt_one_minus_alpha_bar: Tensor,
    autoencoder_checkpoint: Option<PathBuf>,
    first_stage: Option<TchOps>,
    cache: LatentCache,
    loader: Loader,
    scale_factor: f64,
    conditioner: Conditioner,
    class_names: Vec<String>,
    model: Denoiser,
    params: NamedWeights,
    opt: AdamW,
    ema: Ema,
    preview: Preview,
    device: Device,
}

impl<'a> DiffusionStage<'a> {
    fn new(
        config: &'a ModelConfig,
        folder: ImageFolder,
        inputs: &DiffusionInputs,
        begun: &Begun<DiffusionState>,
        out: &Path,
        cadence: Cadence,
        device: Device,
    ) -> Result<Self, TrainError> {
        let (options, resumed) = (begun.options.clone(), begun.resumed.as_ref());
        let schedule = config.noise_schedule()?;
        // The frozen first stage and the cached latents.
        let autoencoder_checkpoint = match resumed {
            Some(state) => state.autoencoder_checkpoint.clone(),
            None => first_stage_checkpoint(config, inputs.autoencoder_run)?,
        };
        let mut first_stage = match &autoencoder_checkpoint {
            Some(checkpoint) => Some(load_autoencoder(checkpoint, config, device)?),
            None => None,
        };
        if let Some(side) = options.crop_from {
            check_crop_side(config, &folder, side)?;
        }
        let encoding = run::progress(folder.len() as u64, 0, cadence.quiet);
        let cache = LatentCache::open(
            &folder,
            config,
            first_stage.as_mut(),
            &begun.data_fingerprint,
            &autoencoder_checkpoint
                .as_ref()
                .map_or("none".into(), |p| p.display().to_string()),
            options.crop_from,
            out,
            &encoding,
        )?;
        encoding.finish_and_clear();
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
        // A fine-tuned UNet keeps the latent scale it was trained with.
        let scale_factor = match (resumed, &options.init_from) {
            (Some(state), _) => state.scale_factor,
            (None, Some(source)) => release::scale_factor_of(source)?,
            (None, None) => first_batch_scale(config, &cache, &loader, options.seed)?,
        };
        // A fine-tuned text encoder only understands its own token ids (a layout model's are
        // its fixed vocabulary's, made anew, which must be the source's).
        // A transplant starts the encoder fresh, with a tokenizer of its own.
        let source_tokenizer = match (resumed, &options.init_from, config.conditioning.layout()) {
            (None, Some(_), _) if options.transplant => None,
            (None, Some(source), None) => Some(source.join(TOKENIZER_FILE)),
            (None, Some(source), Some(layout)) => {
                check_layout_source(source, layout)?;
                None
            }
            _ => None,
        };
        let tokenizer = inputs.tokenizer.or(source_tokenizer.as_deref());
        let (conditioner, class_names) = conditioner(config, &loader, tokenizer, resumed, out)?;

        // The trainable networks, their optimiser and average.
        tch::manual_seed(options.seed as i64);
        let weights_from = release::weights_source(&begun.start, options.init_from.as_deref())?;
        let fresh = matches!(begun.start, Start::Fresh);
        let model = match &weights_from {
            None => Denoiser::new(config, device, None)?,
            Some(folder) if fresh && options.transplant => {
                let model = Denoiser::new(config, device, None)?;
                let (plan, weights) = transplant::from_folder(folder, config)?;
                transplant::apply(&plan, &weights, &sorted_params(&model.unet));
                model
            }
            Some(checkpoint) => {
                let weights = trained_weights(checkpoint, config, fresh)?;
                Denoiser::new(config, device, Some(weights))?
            }
        };
        let params = model.named_params();
        let mut opt = AdamW::new(
            shallow(&params),
            AdamConfig::with_weight_decay(options.weight_decay),
        );
        let mut ema = Ema::new(&params, options.ema_decay);
        if let (Start::Resume(checkpoint), Some(state)) = (&begun.start, resumed) {
            opt.load_saved(checkpoint, OPTIMIZER)?;
            ema.restore(
                &checkpoint::load_weights(checkpoint, EMA, None)?,
                state.ema_updates,
            )
            .map_err(|message| TrainError::SavedState {
                checkpoint: checkpoint.clone(),
                file: EMA,
                message,
            })?;
        }
        let preview = Preview::new(
            config,
            inputs.validation.unwrap_or(inputs.data),
            &conditioner,
            first_stage.as_mut(),
            scale_factor,
            device,
        )?;
        Ok(Self {
            config,
            options,
            data_fingerprint: begun.data_fingerprint.clone(),
            out: out.to_path_buf(),
            sqrt_alpha_bar: alpha_bar_tensor(&schedule, false, device),
            sqrt_one_minus_alpha_bar: alpha_bar_tensor(&schedule, true, device),
            schedule,
            autoencoder_checkpoint,
            first_stage,
            cache,
            loader,
            scale_factor,
            conditioner,
            class_names,
            model,
            params,
            opt,
            ema,
            preview,
            device,
        })
    }
}

/// Refuses to fine-tune a layout model from one trained on another vocabulary (other classes,
/// colours or bins): the same ids would mean other words.
fn check_layout_source(source: &Path, layout: &LayoutVocabulary) -> Result<(), TrainError> {
    let words = layout.words();
    let (text, length) = (words.join(" "), words.len() + 2);
    let theirs = TextTokenizer::load(&source.join(TOKENIZER_FILE))?.encode(&text, length)?;
    let ours = TextTokenizer::from_words(&words)?.encode(&text, length)?;
    if theirs.ids != ours.ids {
        return Err(TrainError::Mismatch(format!(
            "{} was trained on another layout vocabulary than the configuration's (classes, colours or bins differ): its token ids would mean other words",
            source.display()
        )));
    }
    Ok(())
}

/// The UNet and conditioning encoder of a checkpoint or release, checked against `config`.
/// The source of a fine-tune may lack the UNet's position features (`unet.position_frequencies`
/// added to a model trained without them): they start at zero.
fn trained_weights(
    checkpoint: &Path,
    config: &ModelConfig,
    fine_tune: bool,
) -> Result<(NamedWeights, Option<NamedWeights>), TrainError> {
    let (unet_expected, encoder_expected) = expected_params(config)?;
    let may_lack = if fine_tune {
        ldm_nn::unet::is_position_param
    } else {
        |_: &str| false
    };
    let unet = checkpoint::load_fine_tune_source(checkpoint, UNET, &unet_expected, may_lack)?;
    let encoder = match (encoder_name(config), encoder_expected) {
        (Some(name), Some(expected)) => Some(checkpoint::load_weights_as_f32(
            checkpoint,
            name,
            Some(&expected),
        )?),
        _ => None,
    };
    Ok((unet, encoder))
}

impl Stage for DiffusionStage<'_> {
    type State = DiffusionState;
    const COLUMNS: &'static [(&'static str, Summary)] = &[
        ("loss", Summary::Mean),
        ("grad_norm", Summary::Mean),
        ("lr", Summary::Last),
    ];
    const THROUGHPUT: bool = true;

    fn step(&mut self, step: u64) -> Result<StepReport, TrainError> {
        let (options, device) = (&self.options, self.device);
        let batch = self.loader.batch(step)?;
        tch::manual_seed(run::step_seed(options.seed, step));
        let b = batch.shape[0] as i64;
        let windows = options.crop_from.map_or_else(Vec::new, |side| {
            draw_windows(self.config, side, batch.rows.len())
        });
        let x0 = self.cache.latents(&batch.rows, &windows, device) * self.scale_factor;
        let t = Tensor::randint(self.schedule.timesteps() as i64, [b], (Kind::Int64, device));
        let noise = x0.randn_like();
        let xt = self.sqrt_alpha_bar.index_select(0, &t).view([-1, 1, 1, 1]) * &x0
            + self
                .sqrt_one_minus_alpha_bar
                .index_select(0, &t)
                .view([-1, 1, 1, 1])
                * &noise;
        let dropped: Vec<bool> =
            Vec::<f32>::try_from(Tensor::rand([b], (Kind::Float, Device::Cpu)))?
                .into_iter()
                .map(|u| (u as f64) < options.condition_dropout)
                .collect();
        let condition = self.conditioner.batch(
            &batch,
            &dropped,
            (&windows, options.crop_from),
            &self.cache,
            self.first_stage.as_mut(),
            self.config,
            self.scale_factor,
            device,
        )?;
        let prediction = self.model.forward(&xt, &t, &condition)?;
        let target = match self.schedule.prediction() {
            Prediction::Epsilon => noise,
            // v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0
            Prediction::V => {
                let at = |table: &Tensor| table.index_select(0, &t).view([-1, 1, 1, 1]);
                at(&self.sqrt_alpha_bar) * &noise - at(&self.sqrt_one_minus_alpha_bar) * &x0
            }
        };
        let loss = prediction.mse_loss(&target, tch::Reduction::Mean);
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            return Ok(StepReport::NonFinite {
                what: "diffusion loss",
                value,
            });
        }
        self.opt.zero_grad();
        loss.backward();
        let norm = self.opt.clip_grad_norm(options.grad_clip);
        if !norm.is_finite() {
            return Ok(StepReport::NonFinite {
                what: "gradient norm",
                value: norm,
            });
        }
        let lr = scheduled_lr(
            options.learning_rate,
            options.warmup,
            options.lr_decay,
            step,
            options.steps,
        );
        self.opt.step(lr);
        self.ema.update(&self.params);
        Ok(StepReport::Values(vec![value, norm, lr]))
    }

    fn validate(&mut self, step: u64) -> Result<(), TrainError> {
        let grid = self.out.join("samples").join(format!("step-{step:08}.png"));
        self.preview.render(
            self.config,
            self.ema.weights(),
            &self.conditioner,
            self.first_stage.as_mut(),
            &self.schedule,
            &self.options,
            &grid,
            self.device,
        )
    }

    fn checkpoint(&self, step: u64) -> (Vec<(&'static str, NamedWeights)>, DiffusionState) {
        let state = DiffusionState {
            step,
            options: self.options.clone(),
            config: self.config.clone(),
            data_fingerprint: self.data_fingerprint.clone(),
            autoencoder_checkpoint: self.autoencoder_checkpoint.clone(),
            scale_factor: self.scale_factor,
            class_names: self.class_names.clone(),
            ema_updates: self.ema.updates(),
        };
        let (unet, encoder) = split_named(self.config, &self.model.named_params());
        let mut files = vec![
            (UNET, detached(&unet)),
            (EMA, detached(self.ema.weights())),
            (OPTIMIZER, self.opt.state()),
        ];
        if let (Some(name), Some(encoder)) = (encoder_name(self.config), encoder) {
            files.push((name, detached(&encoder)));
        }
        (files, state)
    }
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

/// Refuses random crops where they do not apply: a model whose captions or boxes name places
/// (a window would move them) or whose condition is an image; a side that is not above the
/// training size on the latent grid; images smaller than the side (upscaled into blur).
fn check_crop_side(
    config: &ModelConfig,
    folder: &ImageFolder,
    side: usize,
) -> Result<(), TrainError> {
    let (resolution, f) = (config.resolution, config.autoencoder.factor);
    let croppable = match &config.conditioning {
        Conditioning::None | Conditioning::Class { .. } => true,
        Conditioning::Concat { task, .. } => *task == ConcatKind::SemanticMap,
        _ => false,
    };
    if !croppable {
        return Err(TrainError::Mismatch(
            "--crop-from: only semantic-map, class and unconditional models train on random crops (captions and boxes name places, and image conditions would need the same window)".into(),
        ));
    }
    if side <= resolution || !side.is_multiple_of(f) || side > MAX_CROP_SIDE {
        return Err(TrainError::Mismatch(format!(
            "--crop-from {side}: the side must be above the training resolution ({resolution}), at most {MAX_CROP_SIDE}, and a multiple of f = {f}"
        )));
    }
    let (w, h) = folder.dimensions(0)?;
    if w.min(h) < side as u32 {
        return Err(TrainError::Mismatch(format!(
            "--crop-from {side}: {} holds {w}x{h} images; crops need images at least {side} pixels a side",
            folder.root().display()
        )));
    }
    Ok(())
}

/// Largest side random crops are taken from: its latents are cached for every image.
const MAX_CROP_SIDE: usize = 1024;

/// Every other image of a batch of `count` gets a random window (in latent cells) of the
/// image taken at `side`; drawn from libtorch's generator, after the step's seed.
fn draw_windows(config: &ModelConfig, side: usize, count: usize) -> Vec<Option<Window>> {
    let f = config.autoencoder.factor;
    let places = ((side - config.resolution) / f + 1) as i64;
    let corners: Vec<i64> = Tensor::randint(places, [count as i64, 2], (Kind::Int64, Device::Cpu))
        .flatten(0, -1)
        .try_into()
        .expect("i64");
    corners
        .chunks(2)
        .enumerate()
        .map(|(i, c)| {
            (i % 2 == 1).then_some(Window {
                x: c[0] as usize,
                y: c[1] as usize,
            })
        })
        .collect()
}

/// Where the frozen first stage comes from: the latest checkpoint of an autoencoder run, or a
/// release (`models/NAME`, which ships its first stage), checked against this model's.
pub(crate) fn first_stage_checkpoint(
    config: &ModelConfig,
    source: Option<&Path>,
) -> Result<Option<PathBuf>, TrainError> {
    if config.autoencoder.regularizer == FirstStage::Identity {
        return Ok(None);
    }
    let source = source.ok_or_else(|| {
        TrainError::Mismatch("this model has a first stage: pass --autoencoder runs/NAME (a run of `ldm train autoencoder`, or a release)".into())
    })?;
    let folder = release::weights_folder(source)?.ok_or_else(|| TrainError::NoWeights {
        path: source.to_path_buf(),
        what: format!(
            "holds no autoencoder checkpoint; train one first with `ldm train autoencoder --out {}`",
            source.display()
        ),
    })?;
    // Absolute, so the run reads its first stage from any working directory.
    let folder = std::fs::canonicalize(&folder).map_err(|e| TrainError::io(&folder, e))?;
    let trained_with = release::first_stage_record(&folder)?.config;
    if trained_with.autoencoder != config.autoencoder
        || trained_with.resolution != config.resolution
    {
        return Err(TrainError::Mismatch(format!(
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
    if config.autoencoder.regularizer == FirstStage::Identity {
        return Ok(1.0);
    }
    tch::manual_seed(seed as i64);
    let batch = loader.batch(0)?;
    let std = cache
        .latents(&batch.rows, &[], Device::Cpu)
        .std(true)
        .double_value(&[]);
    if !(std.is_finite() && std > 0.0) {
        return Err(TrainError::DegenerateLatents(std));
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
    if config.conditioning.planner().is_some() {
        return Err(TrainError::Mismatch(
            "[conditioning.planner] is trained by `ldm train planner` for a trained layout model: train the layout model with a configuration without it".into(),
        ));
    }
    if config.conditioning.concat_task() == Some(ConcatKind::MaskFirstInpainting) {
        // Stable Diffusion's inpainting UNets run here but do not train: the trainer makes
        // inpainting inputs in its own order only, and never with a text context beside them.
        return Err(TrainError::Mismatch(
            "models with conditioning concat = \"mask_first_inpainting\" (Stable Diffusion's inpainting UNets) can be imported, exported and run, but not trained or fine-tuned".into(),
        ));
    }
    Ok(match config.conditioning {
        Conditioning::None => (Conditioner::None, vec![]),
        Conditioning::Concat {
            task: ConcatKind::SuperResolution,
            ..
        } => (Conditioner::SuperResolution, vec![]),
        Conditioning::Concat {
            task: ConcatKind::Inpainting | ConcatKind::MaskFirstInpainting,
            ..
        } => (Conditioner::Inpainting, vec![]),
        Conditioning::Concat {
            task: ConcatKind::SemanticMap,
            classes,
        } => (
            Conditioner::SemanticMap {
                classes: classes.expect("validated: semantic maps name their classes"),
                folder: Box::new(loader.folder().clone()),
            },
            vec![],
        ),
        Conditioning::Text {
            vocab_size,
            max_length,
            ref layout,
            ..
        } => {
            let saved = out.join(TOKENIZER_FILE);
            let tokenizer = match (resumed, tokenizer, layout) {
                (Some(_), _, _) => TextTokenizer::load(&saved)?,
                (None, Some(path), Some(_)) => {
                    return Err(TrainError::Mismatch(format!(
                        "a layout model's tokenizer is its layout vocabulary; drop --tokenizer {}",
                        path.display()
                    )))
                }
                (None, None, Some(layout)) => TextTokenizer::from_words(&layout.words())?,
                (None, Some(path), None) => TextTokenizer::load(path)?,
                (None, None, None) => {
                    let captions = loader.folder().records().filter_map(|r| r.text.clone());
                    TextTokenizer::train(captions, vocab_size)?
                }
            };
            if tokenizer.vocab_size() > vocab_size {
                return Err(TrainError::Mismatch(format!(
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
                    layout: layout.clone(),
                },
                vec![],
            )
        }
        Conditioning::Class { classes, .. } => {
            let names = loader.folder().labels();
            if names.len() > classes {
                return Err(TrainError::Mismatch(format!(
                    "{} holds {} distinct labels but conditioning.classes = {classes}",
                    loader.folder().root().display(),
                    names.len()
                )));
            }
            if let Some(state) = resumed.filter(|s| s.class_names != names) {
                return Err(TrainError::Mismatch(format!(
                    "the data's labels differ from the run's ({:?})",
                    state.class_names
                )));
            }
            (
                Conditioner::Class {
                    classes,
                    names: names.clone(),
                },
                names,
            )
        }
    })
}
