//! The periodic sample grids of diffusion training: fixed conditions (validation captions, the
//! first classes, or validation images for concatenation models) sampled with the EMA
//! weights.

use std::path::Path;

use ldm_core::NoiseSchedule;
use ldm_data::ImageFolder;
use ldm_nn::{autoencoder, ModelConfig};
use tch::{Device, Kind, Tensor};

use crate::denoiser::{split_named, token_ids, Condition, Denoiser};
use crate::diffusion::{inpainting_condition, Conditioner, DiffusionOptions};
use crate::first_stage::images_tensor;
use crate::images::save_grid;
use crate::sampling::ddim_sample;
use crate::{TchOps, TrainError};

/// The sample grids draw fresh noise at every step (eta = 1): early in training, deterministic
/// DDIM (eta = 0) drifts off the latent manifold for many seeds and decodes to noise.
const PREVIEW_ETA: f64 = 1.0;
/// Images per sample grid.
const GRID: usize = 8;

/// The fixed conditions of the periodic sample grids: validation captions, the first
/// classes, or validation images (low resolution, masked), with their unconditional twin.
pub(crate) struct Preview {
    condition: Condition,
    unconditional: Option<Condition>,
    count: usize,
    /// Sampled latents are divided by it before decoding.
    scale_factor: f64,
}

impl Preview {
    pub(crate) fn new(
        config: &ModelConfig,
        folder: &Path,
        conditioner: &Conditioner,
        first_stage: Option<&mut TchOps>,
        scale_factor: f64,
        device: Device,
    ) -> Result<Self, TrainError> {
        let folder = ImageFolder::open(folder)?;
        let count = GRID.min(folder.len());
        Ok(match conditioner {
            Conditioner::None => Self {
                condition: Condition::None,
                unconditional: None,
                count: GRID,
                scale_factor,
            },
            Conditioner::Text {
                tokenizer,
                max_length,
            } => {
                let mut prompts: Vec<String> =
                    folder.records().filter_map(|r| r.text.clone()).collect();
                prompts.dedup();
                prompts.truncate(GRID);
                let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
                let empty = vec![""; texts.len()];
                Self {
                    condition: Condition::Tokens(token_ids(
                        tokenizer,
                        &texts,
                        *max_length,
                        device,
                    )?),
                    unconditional: Some(Condition::Tokens(token_ids(
                        tokenizer,
                        &empty,
                        *max_length,
                        device,
                    )?)),
                    count: texts.len(),
                    scale_factor,
                }
            }
            Conditioner::Class { classes } => {
                let ids: Vec<i64> = (0..GRID as i64).map(|i| i % *classes as i64).collect();
                Self {
                    condition: Condition::Classes(Tensor::from_slice(&ids).to_device(device)),
                    unconditional: Some(Condition::Classes(Tensor::full(
                        [GRID as i64],
                        *classes as i64,
                        (Kind::Int64, device),
                    ))),
                    count: GRID,
                    scale_factor,
                }
            }
            Conditioner::SuperResolution | Conditioner::Inpainting => {
                let size = config.resolution as u32;
                let mut pixels = Vec::new();
                for row in 0..count {
                    pixels.extend(folder.load_chw(row, size)?);
                }
                let images =
                    images_tensor(&pixels, [count, 3, size as usize, size as usize], device);
                let extra = if matches!(conditioner, Conditioner::SuperResolution) {
                    let f = config.autoencoder.factor as i64;
                    images.avg_pool2d([f, f], [f, f], [0, 0], false, true, None::<i64>)
                } else {
                    // A centred square hole of half the image.
                    let s = config.resolution as i64;
                    let mask = Tensor::zeros([count as i64, 1, s, s], (Kind::Float, device));
                    let _ = mask
                        .narrow(2, s / 4, s / 2)
                        .narrow(3, s / 4, s / 2)
                        .fill_(1.0);
                    inpainting_condition(&images, &mask, first_stage, config, scale_factor)?
                };
                Self {
                    condition: Condition::Concat(extra),
                    unconditional: None,
                    count,
                    scale_factor,
                }
            }
        })
    }

    /// Samples the grid with the EMA weights and writes it as PNG.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn render(
        &self,
        config: &ModelConfig,
        ema: &[(String, Tensor)],
        first_stage: Option<&mut TchOps>,
        schedule: &NoiseSchedule,
        options: &DiffusionOptions,
        path: &Path,
        device: Device,
    ) -> Result<(), TrainError> {
        let (unet, encoder) = split_named(config, ema);
        let copy = |w: Vec<(String, Tensor)>| {
            w.into_iter()
                .map(|(n, t)| (n, t.detach().copy()))
                .collect::<Vec<_>>()
        };
        let mut model = Denoiser::new(config, device, Some((copy(unet), encoder.map(copy))))?;
        let (r, c) = (
            config.latent_resolution() as i64,
            config.autoencoder.latent_channels as i64,
        );
        let latents = ddim_sample(
            &mut model,
            schedule,
            [self.count as i64, c, r, r],
            &self.condition,
            self.unconditional.as_ref(),
            options.sample_guidance,
            options.sample_steps,
            PREVIEW_ETA,
            options.seed as i64,
            device,
        )?;
        let _guard = tch::no_grad_guard();
        let images = match first_stage {
            Some(ops) => autoencoder::decode(
                ops,
                &config.autoencoder,
                config.resolution,
                &(latents / self.scale_factor),
            )?,
            None => latents,
        };
        save_grid(&images, GRID, path).map_err(|e| TrainError::io(path, e))
    }
}
