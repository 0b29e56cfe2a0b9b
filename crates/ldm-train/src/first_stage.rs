//! `ldm train autoencoder`: the perceptual first stage of paper 3.1 / G. Reconstruction loss
//! (L1 plus 1 - SSIM as the perceptual term), KL or VQ regularisation, and the patch
//! discriminator with hinge loss and the reference's adaptive weight, from `disc_start` on.

use std::path::{Path, PathBuf};

use ldm_data::{ImageFolder, Loader, LoaderConfig};
use ldm_nn::{autoencoder, FirstStage, ModelConfig};
use tch::{nn, Device, Kind, Tensor};

use crate::autoencoder::{encode_mode, expected_params, AUTOENCODER};
use crate::checkpoint;
use crate::discriminator::{hinge_d_loss, PatchDiscriminator};
use crate::images::save_grid;
use crate::losses::{kl_divergence, vq_losses};
use crate::metrics::{psnr, ssim, ssim_map};
use crate::optim::{AdamConfig, AdamW};
pub use crate::records::{AutoencoderOptions, AutoencoderState};
use crate::release;
use crate::run::{self, Cadence, RunLog, Start};
use crate::tensors::{detached, images_tensor, shallow, sorted_params, NamedWeights};
use crate::trainer::{self, Begun, Stage, StepReport, Summary, OPTIMIZER};
use crate::{gaussian, TchOps, TrainError};

/// What a finished (or interrupted) run reports.
#[derive(Debug, Clone)]
pub struct AutoencoderSummary {
    pub step: u64,
    /// Mean losses of the last logged interval (log.csv columns).
    pub last_losses: Vec<(&'static str, f64)>,
    pub validation: Option<(f64, f64)>,
    pub checkpoint: PathBuf,
    /// True when Ctrl-C ended the run early.
    pub interrupted: bool,
}

const DISCRIMINATOR: &str = "discriminator";
const DISC_OPTIMIZER: &str = "disc_optimizer";
/// Validation images scored per validation; the first 16 also go into the grid.
const VALIDATION_IMAGES: usize = 256;

/// Trains the first stage of `config` on the image folder `data`, writing the run to `out`.
#[allow(clippy::too_many_arguments)]
pub fn train_autoencoder(
    config: &ModelConfig,
    data: &Path,
    validation: Option<&Path>,
    out: &Path,
    options: AutoencoderOptions,
    cadence: Cadence,
    device: Device,
    resume: bool,
) -> Result<AutoencoderSummary, TrainError> {
    if config.autoencoder.regularizer == FirstStage::Identity {
        return Err(TrainError::Mismatch(
            "autoencoder.regularizer = \"identity\" has no first stage to train (f = 1 runs diffusion on pixels)".into(),
        ));
    }
    let smallest = PatchDiscriminator::smallest_side(options.disc_layers);
    if options.disc_start < options.steps && config.resolution < smallest {
        return Err(TrainError::Mismatch(format!(
            "the patch discriminator's {} layers need images of at least {smallest} pixels, and this model trains at resolution = {}; use fewer discriminator layers (--disc-layers)",
            options.disc_layers, config.resolution
        )));
    }
    let begun: Begun<AutoencoderState> = trainer::begin(out, data, config, options, resume)?;
    run::write_config(out, config)?;
    let folder = ImageFolder::open(data)?;
    run::check_data(&folder, config)?;
    let validation = validation_batch(validation.unwrap_or(data), config.resolution, device)?;
    let mut stage = AutoencoderStage::new(config, folder, validation, &begun, out, device)?;
    let finished = trainer::train(&mut stage, &begun, out, cadence)?;
    Ok(AutoencoderSummary {
        step: finished.step,
        last_losses: finished.last_logged,
        validation: stage.last_validation,
        checkpoint: finished.checkpoint,
        interrupted: finished.interrupted,
    })
}

/// The first stage in training: the autoencoder, its discriminator and their optimisers.
struct AutoencoderStage<'a> {
    config: &'a ModelConfig,
    options: AutoencoderOptions,
    data_fingerprint: String,
    out: PathBuf,
    loader: Loader,
    ops: TchOps,
    params: NamedWeights,
    opt: AdamW,
    disc_vs: nn::VarStore,
    disc: PatchDiscriminator,
    disc_opt: AdamW,
    /// The decoder's last layer, where the adaptive weight compares gradients.
    last_layer: Tensor,
    validation: Tensor,
    validation_log: RunLog,
    last_validation: Option<(f64, f64)>,
    device: Device,
}

impl<'a> AutoencoderStage<'a> {
    /// Networks created by one forward pass (fresh), from `--init-from`, or from the
    /// checkpoint being resumed.
    fn new(
        config: &'a ModelConfig,
        folder: ImageFolder,
        validation: Tensor,
        begun: &Begun<AutoencoderState>,
        out: &Path,
        device: Device,
    ) -> Result<Self, TrainError> {
        let (ae, options) = (&config.autoencoder, begun.options.clone());
        let loader = Loader::new(
            folder,
            LoaderConfig {
                size: config.resolution as u32,
                batch_size: options.batch_size,
                flip: options.flip,
                shuffle: true,
                seed: options.seed,
            },
        )?;
        tch::manual_seed(options.seed as i64);
        let mut ops = TchOps::new(device);
        let disc_vs = nn::VarStore::new(device);
        let disc = PatchDiscriminator::new(
            &disc_vs.root(),
            ae.in_channels as i64,
            options.disc_channels,
            options.disc_layers,
        );
        if let Some(source) = release::weights_source(&begun.start, options.init_from.as_deref())? {
            let expected = expected_params(config)?;
            ops.load_params(checkpoint::load_weights_as_f32(
                &source,
                AUTOENCODER,
                Some(&expected),
            )?)?;
            ops.freeze();
            // A release ships no discriminator: fine-tuning one starts a fresh discriminator.
            if !release::is_release(&source) {
                load_var_store(&disc_vs, &source, DISCRIMINATOR)?;
            }
        }
        crate::autoencoder::probe(&mut ops, config, device)?;
        ops.freeze();
        let params = sorted_params(&ops);
        let adam = AdamConfig {
            beta1: 0.5,
            beta2: 0.9,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let (trained, frozen): (NamedWeights, NamedWeights) =
            shallow(&params).into_iter().partition(|(name, _)| {
                !options.decoder_only || crate::autoencoder::is_decoder_param(name)
            });
        // Frozen weights (the encoder, a codebook) get no gradient at all.
        for (_, tensor) in &frozen {
            let _ = tensor.set_requires_grad(false);
        }
        let mut opt = AdamW::new(trained, adam);
        let mut disc_opt = AdamW::new(var_store_params(&disc_vs, true), adam);
        if let Start::Resume(checkpoint) = &begun.start {
            opt.load_saved(checkpoint, OPTIMIZER)?;
            disc_opt.load_saved(checkpoint, DISC_OPTIMIZER)?;
        }
        let last_layer = ops.params()["decoder.conv_out.weight"].shallow_clone();
        Ok(Self {
            config,
            options,
            data_fingerprint: begun.data_fingerprint.clone(),
            out: out.to_path_buf(),
            loader,
            ops,
            params,
            opt,
            disc_vs,
            disc,
            disc_opt,
            last_layer,
            validation,
            validation_log: RunLog::open(out, "validation.csv", &["psnr", "ssim"], begun.step)?,
            last_validation: None,
            device,
        })
    }
}

impl Stage for AutoencoderStage<'_> {
    type State = AutoencoderState;
    const COLUMNS: &'static [(&'static str, Summary)] = &[
        ("rec", Summary::Mean),
        ("reg", Summary::Mean),
        ("g", Summary::Mean),
        ("d", Summary::Mean),
        ("d_weight", Summary::Mean),
    ];

    fn step(&mut self, step: u64) -> Result<StepReport, TrainError> {
        let (config, options) = (self.config, &self.options);
        let ae = &config.autoencoder;
        let batch = self.loader.batch(step)?;
        let x = images_tensor(&batch.images, batch.shape, self.device);
        tch::manual_seed(run::step_seed(options.seed, step));
        let moments = autoencoder::encode(&mut self.ops, ae, config.resolution, &x)?;
        let (z, reg) = match ae.regularizer {
            FirstStage::Kl => (
                gaussian::sample(&moments),
                kl_divergence(&moments) * options.kl_weight,
            ),
            _ => {
                let q = autoencoder::quantize(&mut self.ops, ae, &moments)?;
                let (codebook, commitment) = vq_losses(&moments, &q.codes, options.commitment);
                (q.latent, (codebook + commitment) * options.codebook_weight)
            }
        };
        let xrec = autoencoder::decode_quantized(&mut self.ops, ae, config.resolution, &z)?;
        let per_pixel =
            (&x - &xrec).abs() + (-ssim_map(&x, &xrec) + 1.0) * options.perceptual_weight;
        // The reference sums the KL model's reconstruction over pixels (to balance the summed
        // KL term at its 1e-6 weight) and averages the VQ model's.
        let rec = match ae.regularizer {
            FirstStage::Kl => per_pixel.sum(Kind::Float) / batch.shape[0] as f64,
            _ => per_pixel.mean(Kind::Float),
        };
        let adversarial = step >= options.disc_start;
        let (g_loss, d_weight) = if adversarial {
            let g_loss = -self.disc.forward(&xrec, true).mean(Kind::Float);
            let w = adaptive_weight(&rec, &g_loss, &self.last_layer) * options.disc_weight;
            (g_loss, w)
        } else {
            (Tensor::zeros([], (Kind::Float, self.device)), 0.0)
        };
        let loss = &rec + &reg + &g_loss * d_weight;
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            return Ok(StepReport::NonFinite {
                what: "autoencoder loss",
                value,
            });
        }
        self.opt.zero_grad();
        loss.backward();
        self.opt.step(options.learning_rate);
        let d_loss = if adversarial {
            self.disc_opt.zero_grad();
            let xrec = xrec.detach();
            let d_loss = hinge_d_loss(
                &self.disc.forward(&x, true),
                &self.disc.forward(&xrec, true),
            );
            d_loss.backward();
            self.disc_opt.step(options.learning_rate);
            d_loss.double_value(&[])
        } else {
            0.0
        };
        Ok(StepReport::Values(vec![
            rec.double_value(&[]),
            reg.double_value(&[]),
            g_loss.double_value(&[]),
            d_loss,
            d_weight,
        ]))
    }

    fn validate(&mut self, step: u64) -> Result<(), TrainError> {
        let grid = self
            .out
            .join("reconstructions")
            .join(format!("step-{step:08}.png"));
        let scores = validate(&mut self.ops, self.config, &self.validation, &grid)?;
        self.validation_log.push(step, vec![scores.0, scores.1])?;
        self.last_validation = Some(scores);
        Ok(())
    }

    fn checkpoint(&self, step: u64) -> (Vec<(&'static str, NamedWeights)>, AutoencoderState) {
        let state = AutoencoderState {
            step,
            options: self.options.clone(),
            config: self.config.clone(),
            data_fingerprint: self.data_fingerprint.clone(),
            validation: self.last_validation,
        };
        let files = vec![
            (AUTOENCODER, detached(&self.params)),
            (
                DISCRIMINATOR,
                detached(&var_store_params(&self.disc_vs, false)),
            ),
            (OPTIMIZER, self.opt.state()),
            (DISC_OPTIMIZER, self.disc_opt.state()),
        ];
        (files, state)
    }
}

/// The reference's adaptive weight of the adversarial term: the ratio of the gradient norms
/// of the reconstruction and adversarial losses at the decoder's last layer, clamped to
/// [0, 1e4].
fn adaptive_weight(rec: &Tensor, g_loss: &Tensor, last_layer: &Tensor) -> f64 {
    let grad = |loss: &Tensor| {
        Tensor::run_backward(&[loss], &[last_layer], true, false)[0]
            .norm()
            .double_value(&[])
    };
    let (rec_norm, g_norm) = (grad(rec), grad(g_loss));
    (rec_norm / (g_norm + 1e-4)).clamp(0.0, 1e4)
}

/// Up to [`VALIDATION_IMAGES`] images of a folder, in file order.
fn validation_batch(
    folder: &Path,
    resolution: usize,
    device: Device,
) -> Result<Tensor, TrainError> {
    let folder = ImageFolder::open(folder)?;
    let count = folder.len().min(VALIDATION_IMAGES);
    let loader = Loader::new(
        folder,
        LoaderConfig {
            size: resolution as u32,
            batch_size: count,
            flip: false,
            shuffle: false,
            seed: 0,
        },
    )?;
    let batch = loader.batch(0)?;
    Ok(images_tensor(&batch.images, batch.shape, device))
}

/// Mean PSNR and SSIM of the reconstructions (posterior mode) of `images`, and a grid of the
/// first 16: rows of originals over rows of their reconstructions.
fn validate(
    ops: &mut TchOps,
    config: &ModelConfig,
    images: &Tensor,
    grid: &Path,
) -> Result<(f64, f64), TrainError> {
    let _guard = tch::no_grad_guard();
    let mut recs = Vec::new();
    for chunk in images.split(32, 0) {
        let latent = encode_mode(ops, config, &chunk)?;
        recs.push(autoencoder::decode(
            ops,
            &config.autoencoder,
            config.resolution,
            &latent,
        )?);
    }
    let rec = Tensor::cat(&recs, 0);
    let scores = (
        psnr(images, &rec).mean(Kind::Float).double_value(&[]),
        ssim(images, &rec).mean(Kind::Float).double_value(&[]),
    );
    let shown = images.size()[0].min(16);
    let mut rows = Vec::new();
    for start in (0..shown).step_by(8) {
        let len = (shown - start).min(8);
        rows.push(images.narrow(0, start, len));
        rows.push(rec.narrow(0, start, len));
    }
    save_grid(&Tensor::cat(&rows, 0), 8, grid).map_err(|e| TrainError::io(grid, e))?;
    Ok(scores)
}

/// A VarStore's tensors by name, sorted: trainable ones only, or also buffers (BatchNorm
/// running statistics) for the checkpoint.
fn var_store_params(vs: &nn::VarStore, trainable_only: bool) -> Vec<(String, Tensor)> {
    let trainable: Vec<Tensor> = vs.trainable_variables();
    let mut params: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| !trainable_only || trainable.iter().any(|v| v.data_ptr() == t.data_ptr()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    params
}

fn load_var_store(vs: &nn::VarStore, checkpoint: &Path, file: &str) -> Result<(), TrainError> {
    let saved = checkpoint::load_weights(checkpoint, file, None)?;
    let mut variables = vs.variables();
    for (name, value) in saved {
        let target = variables.get_mut(&name).ok_or_else(|| {
            TrainError::from(checkpoint::CheckpointError::Mismatch {
                path: checkpoint.to_path_buf(),
                message: format!("'{name}' is not part of the {file}"),
            })
        })?;
        if target.size() != value.size() {
            return Err(checkpoint::CheckpointError::Mismatch {
                path: checkpoint.to_path_buf(),
                message: format!(
                    "'{name}' of the {file} has shape {:?}, expected {:?}",
                    value.size(),
                    target.size()
                ),
            }
            .into());
        }
        tch::no_grad(|| target.copy_(&value));
    }
    Ok(())
}
