//! What runs record: each generative stage's hyper-parameters and the state saved with every
//! checkpoint, which a release also keeps.

use std::path::PathBuf;

use ldm_core::SamplerKind;
use ldm_nn::ModelConfig;
use serde::{Deserialize, Serialize};

use crate::optim::LrDecay;
use crate::trainer::stage_records;
use crate::TrainError;

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
    /// Train the decoder only: the encoder's latents, and every diffusion model trained on
    /// them, stay as they are (how Stable Diffusion's ft-MSE first stage was tuned).
    #[serde(default)]
    pub decoder_only: bool,
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
            decoder_only: false,
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
    /// Guidance scale and steps of the periodic sample grids.
    pub sample_guidance: f64,
    pub sample_steps: usize,
    /// Sampler of the sample grids (a `--sampler` name) and DDIM's eta; an export makes
    /// them, the steps and the guidance the bundle's defaults (runs saved before they existed:
    /// DDIM with eta 1).
    #[serde(default = "default_sample_sampler")]
    pub sample_sampler: String,
    #[serde(default = "default_sample_eta")]
    pub sample_eta: f64,
    /// Fine-tuning: the run whose latest UNet and conditioning encoder this run starts from
    /// (fresh optimiser and average, step 0; a text model keeps that run's tokenizer).
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// With `init_from`: take only the source UNet's layers that fit this configuration
    /// (`crate::transplant`); the conditioning encoder starts fresh.
    #[serde(default)]
    pub transplant: bool,
    /// Random crops (how the paper's semantic-synthesis model learns to sample above its
    /// training size): every other image of a batch is a random training-size window of the
    /// image taken at this side; the rest are whole. Semantic-map, class and unconditional
    /// models only (a caption or a box names places a window would move).
    #[serde(default)]
    pub crop_from: Option<usize>,
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
            sample_sampler: default_sample_sampler(),
            sample_eta: default_sample_eta(),
            init_from: None,
            transplant: false,
            crop_from: None,
        }
    }
}

impl DiffusionOptions {
    /// The sampler of the sample grids, DDIM's eta set.
    pub fn sample_sampler(&self) -> Result<SamplerKind, TrainError> {
        let kind = self
            .sample_sampler
            .parse::<SamplerKind>()
            .map_err(TrainError::Mismatch)?;
        Ok(kind.with_eta(self.sample_eta))
    }
}

fn default_sample_sampler() -> String {
    "ddim".into()
}

/// Fresh noise at every step: early in training, and on small models, deterministic DDIM
/// (eta = 0) drifts off the latent manifold for many seeds and decodes to noise.
fn default_sample_eta() -> f64 {
    1.0
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

stage_records!(AutoencoderOptions, AutoencoderState, ModelConfig, init_from);
stage_records!(DiffusionOptions, DiffusionState, ModelConfig, init_from);
