//! A trained model loaded for sampling on tch, from a diffusion run (its latest checkpoint's
//! EMA weights and the first stage it was trained on) or from a release (`models/<name>/`),
//! with the samplers, noise and conditioning rules of the runtime.

use std::path::Path;

use ldm_core::guided::MAX_GUIDANCE;
use ldm_core::{NoiseSchedule, SamplerKind, SamplingSetup};
use ldm_nn::quant::ActivationRanges;
use ldm_nn::{Conditioning, ModelConfig};
use tch::{Device, Tensor};

use crate::autoencoder::decode_sampled;
use crate::conditioner::Conditioner;
use crate::denoiser::Denoiser;
use crate::planner::TchPlanner;
use crate::release::{load_release_or_run, Release};
use crate::sampling::sample_latents;
use crate::{TchOps, TrainError};

/// Trajectories sampled at once while calibrating.
const CALIBRATION_BATCH: usize = 16;

/// How to sample: as `ldm generate` takes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleOptions {
    /// The sampler, DDIM's eta included.
    pub sampler: SamplerKind,
    pub steps: usize,
    /// Classifier-free guidance scale (1: none).
    pub guidance: f64,
    /// Image i uses seed + i.
    pub seed: u64,
}

pub struct TrainedModel {
    pub config: ModelConfig,
    /// Diffusion training steps behind the weights.
    pub step: u64,
    scale_factor: f64,
    conditioner: Conditioner,
    /// A layout model's caption reader.
    planner: Option<TchPlanner>,
    denoiser: Denoiser,
    first_stage: Option<TchOps>,
    schedule: NoiseSchedule,
    device: Device,
    /// How its run sampled its previews (seed 0): what its bundle defaults to.
    pub defaults: SampleOptions,
}

impl TrainedModel {
    /// A release folder, or the latest checkpoint of a diffusion run folder.
    pub fn load(path: &Path, device: Device) -> Result<Self, TrainError> {
        Self::from_release(load_release_or_run(path)?, device)
    }

    /// A loaded release.
    pub fn from_release(release: Release, device: Device) -> Result<Self, TrainError> {
        let config = release.config;
        let denoiser = Denoiser::new(&config, device, Some((release.unet, release.encoder)))?;
        let first_stage = match release.autoencoder {
            Some(weights) => {
                let mut ops = TchOps::new(device);
                ops.load_params(weights)?;
                ops.freeze();
                Some(ops)
            }
            None => None,
        };
        if config.conditioning.concat_task().is_some() {
            return Err(TrainError::NeedsImage);
        }
        let conditioner = match &config.conditioning {
            Conditioning::None => Conditioner::None,
            Conditioning::Text {
                max_length, layout, ..
            } => Conditioner::Text {
                tokenizer: Box::new(release.tokenizer.expect("text releases load a tokenizer")),
                max_length: *max_length,
                layout: layout.clone(),
            },
            Conditioning::Class { classes, .. } => Conditioner::Class {
                classes: *classes,
                names: release.info.class_names,
            },
            Conditioning::Concat { .. } => return Err(TrainError::NeedsImage),
        };
        let planner = release
            .planner
            .map(|p| TchPlanner::new(p, device))
            .transpose()?;
        let schedule = config.noise_schedule()?;
        let run = &release.info.diffusion_options;
        let defaults = SampleOptions {
            sampler: run.sample_sampler()?,
            steps: run.sample_steps,
            guidance: run.sample_guidance,
            seed: 0,
        };
        Ok(Self {
            step: release.info.diffusion_steps,
            scale_factor: release.info.scale_factor,
            config,
            conditioner,
            planner,
            denoiser,
            first_stage,
            schedule,
            device,
            defaults,
        })
    }

    /// The input range of every convolution and linear layer of the UNet along the sampling
    /// trajectories of `prompts` (as [`TrainedModel::generate`] draws them): the calibration
    /// of an int8 export.
    pub fn calibrate_unet(
        &mut self,
        prompts: &[String],
        options: &SampleOptions,
    ) -> Result<ActivationRanges, TrainError> {
        self.denoiser.unet.observe_layer_inputs();
        let sampled = prompts
            .chunks(CALIBRATION_BATCH)
            .enumerate()
            .try_for_each(|(i, chunk)| {
                let seed = options.seed + (i * CALIBRATION_BATCH) as u64;
                let options = SampleOptions { seed, ..*options };
                self.generate(chunk, "", &options).map(drop)
            });
        let ranges = self.denoiser.unet.take_ranges().unwrap_or_default();
        sampled?;
        if let Some(layer) = ranges.non_finite() {
            return Err(TrainError::Sampling(format!(
                "calibration met a non-finite input of '{layer}'"
            )));
        }
        Ok(ranges)
    }

    /// One image per prompt (text: a caption; class: a class name or id; unconditional:
    /// ignored), [N, 3, H, W] in [-1, 1]; guidance steers away from `negative_prompt` (text
    /// models) or the null class.
    pub fn generate(
        &mut self,
        prompts: &[String],
        negative_prompt: &str,
        options: &SampleOptions,
    ) -> Result<Tensor, TrainError> {
        let timesteps = self.schedule.timesteps();
        if !(1..=timesteps).contains(&options.steps) || options.guidance.abs() > MAX_GUIDANCE {
            return Err(TrainError::Sampling(format!(
                "{} steps and guidance {}: steps must be 1 to {timesteps}, guidance within -{MAX_GUIDANCE}..={MAX_GUIDANCE}",
                options.steps, options.guidance
            )));
        }
        let guided = self.conditioner.guides() && options.guidance != 1.0;
        // A planner model's captions become the layouts it draws.
        let mut prompts = prompts.to_vec();
        prompts.push(negative_prompt.to_string());
        if let Some(planner) = &mut self.planner {
            prompts = planner.layouts(&self.config, &prompts)?;
        }
        let negative_prompt = prompts.pop().expect("the negative prompt");
        let condition =
            self.conditioner
                .prompts(&prompts, &negative_prompt, guided, self.device)?;
        let r = self.config.latent_resolution();
        let setup = SamplingSetup {
            sampler: options.sampler,
            steps: options.steps,
            guidance: options.guidance,
            guided,
            seed: options.seed,
            images: prompts.len(),
            latent_shape: [self.config.autoencoder.latent_channels, r, r],
        };
        let latents = sample_latents(
            &mut self.denoiser,
            &self.schedule,
            setup,
            &condition,
            self.device,
        )?;
        decode_sampled(
            self.first_stage.as_mut(),
            &self.config,
            &latents,
            self.scale_factor,
        )
    }
}
