//! The periodic sample grids of diffusion training: fixed conditions (validation captions, the
//! first classes, or validation images for concatenation models) sampled with the EMA
//! weights.

use std::path::Path;

use ldm_core::{NoiseSchedule, SamplingSetup};
use ldm_nn::ModelConfig;
use tch::{Device, Kind, Tensor};

use crate::autoencoder::decode_sampled;
use crate::conditioner::{inpainting_condition, semantic_condition, Conditioner};
use crate::denoiser::{split_named, Condition, Denoiser};
use crate::diffusion::open_folder;
use crate::images::save_grid;
use crate::records::DiffusionOptions;
use crate::sampling::sample_latents;
use crate::tensors::images_tensor;
use crate::{TchOps, TrainError};

/// Images per sample grid.
const GRID: usize = 8;

/// What the grid's images are conditioned on.
enum Inputs {
    None,
    /// Validation captions, or class ids.
    Prompts(Vec<String>),
    /// Validation images (low resolution, or encoded with a hole) as extra channels.
    Concat(Tensor),
}

/// The fixed conditions of the periodic sample grids.
pub(crate) struct Preview {
    inputs: Inputs,
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
        let folder = open_folder(config, folder)?;
        let (inputs, count) = match conditioner {
            Conditioner::None => (Inputs::None, GRID),
            Conditioner::Text { .. } => {
                let mut prompts: Vec<String> =
                    folder.records().filter_map(|r| r.text.clone()).collect();
                prompts.dedup();
                prompts.truncate(GRID);
                let count = prompts.len();
                (Inputs::Prompts(prompts), count)
            }
            Conditioner::Class { classes, .. } => {
                let ids = (0..GRID).map(|i| (i % classes).to_string()).collect();
                (Inputs::Prompts(ids), GRID)
            }
            Conditioner::SemanticMap { classes, .. } => {
                let count = GRID.min(folder.len());
                let rows: Vec<usize> = (0..count).collect();
                let extra =
                    semantic_condition(&folder, &rows, (&[], None), *classes, config, device)?;
                (Inputs::Concat(extra), count)
            }
            Conditioner::SuperResolution | Conditioner::Inpainting => {
                let count = GRID.min(folder.len());
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
                (Inputs::Concat(extra), count)
            }
        };
        Ok(Self {
            inputs,
            count,
            scale_factor,
        })
    }

    /// Samples the grid with the EMA weights (the run's sampler, guidance and steps) and
    /// writes it as PNG.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn render(
        &self,
        config: &ModelConfig,
        ema: &[(String, Tensor)],
        conditioner: &Conditioner,
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
        let guided = conditioner.guides() && options.sample_guidance != 1.0;
        let condition = match &self.inputs {
            Inputs::None => Condition::None,
            Inputs::Prompts(prompts) => conditioner.prompts(prompts, "", guided, device)?,
            Inputs::Concat(extra) => Condition::Concat(extra.shallow_clone()),
        };
        let r = config.latent_resolution();
        let setup = SamplingSetup {
            sampler: options.sample_sampler()?,
            steps: options.sample_steps,
            guidance: options.sample_guidance,
            guided,
            seed: options.seed,
            images: self.count,
            latent_shape: [config.autoencoder.latent_channels, r, r],
        };
        let latents = sample_latents(&mut model, schedule, setup, &condition, device)?;
        let images = decode_sampled(first_stage, config, &latents, self.scale_factor)?;
        save_grid(&images, GRID, path).map_err(|e| TrainError::io(path, e))
    }
}
