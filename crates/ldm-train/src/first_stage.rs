//! `ldm train autoencoder`: the perceptual first stage of paper 3.1 / G. Reconstruction loss
//! (L1 plus 1 - SSIM as the perceptual term), KL or VQ regularisation, and the patch
//! discriminator with hinge loss and the reference's adaptive weight, from `disc_start` on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use ldm_data::{ImageFolder, Loader, LoaderConfig};
use ldm_nn::{autoencoder, ModelConfig, Regularizer, ShapeOps};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::checkpoint;
use crate::discriminator::{hinge_d_loss, PatchDiscriminator};
use crate::images::save_grid;
use crate::losses::{kl_divergence, vq_losses};
use crate::metrics::{psnr, ssim, ssim_map};
use crate::optim::{AdamConfig, AdamW};
use crate::run::{self, Cadence, RunLog, Start};
use crate::{gaussian, TchOps, TrainError};

/// Hyper-parameters of a first-stage run (saved with every checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderOptions {
    pub steps: u64,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub seed: u64,
    /// Random left-right mirroring of training images.
    pub flip: bool,
    /// Weight of the KL term (summed over latent elements, like the reconstruction term).
    pub kl_weight: f64,
    /// Weight of 1 - SSIM per pixel, next to L1.
    pub perceptual_weight: f64,
    pub codebook_weight: f64,
    /// beta of the VQ commitment term.
    pub commitment: f64,
    /// Step from which the discriminator trains and the adversarial term counts.
    pub disc_start: u64,
    pub disc_weight: f64,
    pub disc_channels: i64,
    pub disc_layers: usize,
    /// Fine-tuning: the run whose latest weights (autoencoder and discriminator) this run
    /// starts from, with a fresh optimiser at step 0.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
}

impl Default for AutoencoderOptions {
    /// The reference's KL-f4/f8 settings where they apply (kl_weight 1e-6, disc_weight 0.5,
    /// Adam betas (0.5, 0.9)), scaled to small models and CPU budgets.
    fn default() -> Self {
        Self {
            steps: 10_000,
            batch_size: 16,
            learning_rate: 2e-4,
            seed: 0,
            flip: true,
            kl_weight: 1e-6,
            perceptual_weight: 1.0,
            codebook_weight: 1.0,
            commitment: 0.25,
            disc_start: 5_000,
            disc_weight: 0.5,
            disc_channels: 32,
            disc_layers: 3,
            init_from: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoencoderState {
    pub step: u64,
    pub options: AutoencoderOptions,
    pub config: ModelConfig,
    pub data_fingerprint: String,
    /// Validation (PSNR dB, SSIM) at the last validation, if any.
    pub validation: Option<(f64, f64)>,
}

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

const LOG_COLUMNS: [&str; 5] = ["rec", "reg", "g", "d", "d_weight"];
/// Checkpoint (and release) file of the first stage's weights.
pub const AUTOENCODER: &str = "autoencoder";
const DISCRIMINATOR: &str = "discriminator";
const OPTIMIZER: &str = "optimizer";
const DISC_OPTIMIZER: &str = "disc_optimizer";
/// Validation images scored per validation; the first 16 also go into the grid.
const VALIDATION_IMAGES: usize = 256;

/// Names and shapes of the first stage's parameters, from the shape interpretation.
pub fn expected_params(config: &ModelConfig) -> Result<BTreeMap<String, Vec<usize>>, TrainError> {
    let (ae, res) = (&config.autoencoder, config.resolution);
    let mut o = ShapeOps::default();
    let moments = autoencoder::encode(&mut o, ae, res, &vec![1, ae.in_channels, res, res])?;
    let latent = vec![1, ae.latent_channels, moments[2], moments[3]];
    autoencoder::decode(&mut o, ae, res, &latent)?;
    Ok(o.params)
}

/// Parameters sorted by name: a fixed order for the optimiser and the checkpoint.
pub fn sorted_params(ops: &TchOps) -> Vec<(String, Tensor)> {
    let mut params: Vec<(String, Tensor)> = ops
        .params()
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    params
}

/// Another handle to each tensor (tch tensors are not `Clone`).
pub fn shallow(params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    params
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect()
}

pub(crate) fn detached(params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    params
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu)))
        .collect()
}

/// A batch's images as a [B, 3, H, W] tensor on `device`.
pub fn images_tensor(images: &[f32], shape: [usize; 4], device: Device) -> Tensor {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Tensor::from_slice(images).reshape(dims).to_device(device)
}

/// The encoder's latent as the decoder takes it: the posterior's mode (KL), the
/// pre-quantisation latent (VQ; the decoder quantises).
pub fn encode_mode(
    ops: &mut TchOps,
    config: &ModelConfig,
    images: &Tensor,
) -> Result<Tensor, TrainError> {
    let moments = autoencoder::encode(ops, &config.autoencoder, config.resolution, images)?;
    Ok(match config.autoencoder.regularizer {
        Regularizer::Kl => gaussian::mode(&moments),
        _ => moments,
    })
}

/// The first stage with the weights of a run's checkpoint or of a release (f16, read as f32),
/// frozen, for encoding and decoding.
pub fn load_autoencoder(
    checkpoint: &Path,
    config: &ModelConfig,
    device: Device,
) -> Result<TchOps, TrainError> {
    let weights =
        checkpoint::load_weights_as_f32(checkpoint, AUTOENCODER, Some(&expected_params(config)?))?;
    let mut ops = TchOps::new(device);
    ops.load_params(weights)?;
    ops.freeze();
    Ok(ops)
}

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
    let ae = &config.autoencoder;
    if ae.regularizer == Regularizer::Identity {
        return Err(TrainError::Run(
            "autoencoder.regularizer = \"identity\" has no first stage to train (f = 1 runs diffusion on pixels)".into(),
        ));
    }
    // Ctrl-C from here on saves a checkpoint instead of killing the run.
    let stop = run::stop_requested();
    let fingerprint = run::data_fingerprint(data)?;
    let start = run::start(out, resume)?;
    let (mut step, options) = match &start {
        Start::Fresh => (0, options),
        Start::Resume(checkpoint) => {
            let state: AutoencoderState = checkpoint::load_state(checkpoint)?;
            let asked = AutoencoderOptions {
                steps: state.options.steps,
                init_from: state.options.init_from.clone(),
                ..options.clone()
            };
            run::check_resumable(
                checkpoint,
                (&state.config, &state.data_fingerprint, &state.options),
                (config, &fingerprint, &asked),
            )?;
            (
                state.step,
                AutoencoderOptions {
                    steps: options.steps,
                    ..state.options
                },
            )
        }
    };
    run::write_config(out, config)?;
    let size = config.resolution as u32;
    let folder = ImageFolder::open(data)?;
    run::check_data(&folder, config)?;
    let loader = Loader::new(
        folder,
        LoaderConfig {
            size,
            batch_size: options.batch_size,
            flip: options.flip,
            shuffle: true,
            seed: options.seed,
        },
    )?;
    let validation_images = validation_batch(validation.unwrap_or(data), size, device)?;

    // Networks: created by one forward pass (fresh) or from the checkpoint (resume).
    tch::manual_seed(options.seed as i64);
    let mut ops = TchOps::new(device);
    let disc_vs = nn::VarStore::new(device);
    let disc = PatchDiscriminator::new(
        &disc_vs.root(),
        ae.in_channels as i64,
        options.disc_channels,
        options.disc_layers,
    );
    let weights_from = run::weights_source(&start, options.init_from.as_deref())?;
    if let Some(source) = &weights_from {
        ops.load_params(checkpoint::load_weights_as_f32(
            source,
            AUTOENCODER,
            Some(&expected_params(config)?),
        )?)?;
        ops.freeze();
        // A release ships no discriminator: fine-tuning one starts a fresh discriminator.
        if !crate::release::is_release(source) {
            load_var_store(&disc_vs, source, DISCRIMINATOR)?;
        }
    }
    let probe = Tensor::zeros(
        [1, ae.in_channels as i64, size as i64, size as i64],
        (Kind::Float, device),
    );
    let latent = encode_mode(&mut ops, config, &probe)?;
    let _ = autoencoder::decode(&mut ops, ae, config.resolution, &latent)?;
    ops.freeze();
    let params = sorted_params(&ops);
    let adam = AdamConfig {
        beta1: 0.5,
        beta2: 0.9,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut opt = AdamW::new(shallow(&params), adam);
    let disc_params = var_store_params(&disc_vs, true);
    let mut disc_opt = AdamW::new(disc_params, adam);
    if let Start::Resume(checkpoint) = &start {
        opt.load_state(&checkpoint::load_weights(checkpoint, OPTIMIZER, None)?)
            .map_err(TrainError::Run)?;
        disc_opt
            .load_state(&checkpoint::load_weights(checkpoint, DISC_OPTIMIZER, None)?)
            .map_err(TrainError::Run)?;
    }
    let last_layer = ops.params()["decoder.conv_out.weight"].shallow_clone();

    let mut log = RunLog::open(out, "log.csv", &LOG_COLUMNS, step)?;
    let mut validation_log = RunLog::open(out, "validation.csv", &["psnr", "ssim"], step)?;
    let bar = run::progress(options.steps, step, cadence.quiet);
    let mut sums = [0.0f64; 5];
    let mut counted = 0u64;
    let mut last_losses = Vec::new();
    let mut last_validation = None;
    let mut latest = checkpoint::latest(out)?;
    let save = |step: u64,
                validation: Option<(f64, f64)>,
                opt: &AdamW,
                disc_opt: &AdamW|
     -> Result<PathBuf, TrainError> {
        let state = AutoencoderState {
            step,
            options: options.clone(),
            config: config.clone(),
            data_fingerprint: fingerprint.clone(),
            validation,
        };
        let dir = checkpoint::save(
            out,
            step,
            &[
                (AUTOENCODER, detached(&params).as_slice()),
                (
                    DISCRIMINATOR,
                    detached(&var_store_params(&disc_vs, false)).as_slice(),
                ),
                (OPTIMIZER, opt.state().as_slice()),
                (DISC_OPTIMIZER, disc_opt.state().as_slice()),
            ],
            &state,
        )?;
        checkpoint::prune(out, cadence.keep_checkpoints + 1)?;
        Ok(dir)
    };

    let mut interrupted = false;
    while step < options.steps {
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let batch = loader.batch(step)?;
        let x = images_tensor(&batch.images, batch.shape, device);
        tch::manual_seed(run::step_seed(options.seed, step));
        let moments = autoencoder::encode(&mut ops, ae, config.resolution, &x)?;
        let (z, reg) = match ae.regularizer {
            Regularizer::Kl => (
                gaussian::sample(&moments),
                kl_divergence(&moments) * options.kl_weight,
            ),
            _ => {
                let q = autoencoder::quantize(&mut ops, ae, &moments)?;
                let (codebook, commitment) = vq_losses(&moments, &q.codes, options.commitment);
                (q.latent, (codebook + commitment) * options.codebook_weight)
            }
        };
        let xrec = autoencoder::decode_quantized(&mut ops, ae, config.resolution, &z)?;
        let per_pixel =
            (&x - &xrec).abs() + (-ssim_map(&x, &xrec) + 1.0) * options.perceptual_weight;
        // The reference sums the KL model's reconstruction over pixels (to balance the summed
        // KL term at its 1e-6 weight) and averages the VQ model's.
        let rec = match ae.regularizer {
            Regularizer::Kl => per_pixel.sum(Kind::Float) / batch.shape[0] as f64,
            _ => per_pixel.mean(Kind::Float),
        };
        let adversarial = step >= options.disc_start;
        let (g_loss, d_weight) = if adversarial {
            let g_loss = -disc.forward(&xrec, true).mean(Kind::Float);
            let w = adaptive_weight(&rec, &g_loss, &last_layer) * options.disc_weight;
            (g_loss, w)
        } else {
            (Tensor::zeros([], (Kind::Float, device)), 0.0)
        };
        let loss = &rec + &reg + &g_loss * d_weight;
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            return Err(non_finite("autoencoder loss", value, step, &latest));
        }
        opt.zero_grad();
        loss.backward();
        opt.step(options.learning_rate);

        let d_loss = if adversarial {
            disc_opt.zero_grad();
            let xrec = xrec.detach();
            let d_loss = hinge_d_loss(&disc.forward(&x, true), &disc.forward(&xrec, true));
            d_loss.backward();
            disc_opt.step(options.learning_rate);
            d_loss.double_value(&[])
        } else {
            0.0
        };
        step += 1;
        bar.set_position(step);

        let values = [
            rec.double_value(&[]),
            reg.double_value(&[]),
            g_loss.double_value(&[]),
            d_loss,
            d_weight,
        ];
        for (s, v) in sums.iter_mut().zip(values) {
            *s += v;
        }
        counted += 1;
        if step % cadence.log_every == 0 || step == options.steps {
            let means: Vec<f64> = sums.iter().map(|s| s / counted as f64).collect();
            bar.set_message(format!("rec {:.4} reg {:.4}", means[0], means[1]));
            log.push(step, means.clone())?;
            last_losses = LOG_COLUMNS.iter().copied().zip(means).collect();
            (sums, counted) = ([0.0; 5], 0);
        }
        if step % cadence.validate_every == 0 || step == options.steps {
            let scores = validate(
                &mut ops,
                config,
                &validation_images,
                &out.join("reconstructions")
                    .join(format!("step-{step:08}.png")),
            )?;
            validation_log.push(step, vec![scores.0, scores.1])?;
            last_validation = Some(scores);
        }
        if step % cadence.checkpoint_every == 0 {
            latest = Some(save(step, last_validation, &opt, &disc_opt)?);
            log.plot(&out.join("loss.png"))?;
        }
    }
    let checkpoint = match &latest {
        Some(dir) if dir.ends_with(format!("step-{step:08}")) => dir.clone(),
        _ => save(step, last_validation, &opt, &disc_opt)?,
    };
    log.plot(&out.join("loss.png"))?;
    bar.finish();
    Ok(AutoencoderSummary {
        step,
        last_losses,
        validation: last_validation,
        checkpoint,
        interrupted,
    })
}

pub(crate) fn non_finite(
    what: &'static str,
    value: f64,
    step: u64,
    latest: &Option<PathBuf>,
) -> TrainError {
    TrainError::NonFinite {
        what,
        value,
        step,
        last_good: latest
            .as_ref()
            .map_or("none yet".into(), |p| p.display().to_string()),
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
fn validation_batch(folder: &Path, size: u32, device: Device) -> Result<Tensor, TrainError> {
    let folder = ImageFolder::open(folder)?;
    let count = folder.len().min(VALIDATION_IMAGES);
    let loader = Loader::new(
        folder,
        LoaderConfig {
            size,
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
            TrainError::Run(format!(
                "{}: '{name}' is not part of the {file}",
                checkpoint.display()
            ))
        })?;
        if target.size() != value.size() {
            return Err(TrainError::Run(format!(
                "{}: '{name}' of the {file} has shape {:?}, expected {:?}",
                checkpoint.display(),
                value.size(),
                target.size()
            )));
        }
        tch::no_grad(|| target.copy_(&value));
    }
    Ok(())
}
