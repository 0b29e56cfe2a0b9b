//! Sampling on tch: the guided-sampling driver every engine shares (`ldm_core::guided`: every
//! sampler, the same noise streams and guidance as the runtime) with the denoiser as its
//! network, so a release sampled here and its bundle sampled by the runtime draw the same
//! images.

use ldm_core::{GuidedSampling, NoiseSchedule, SamplingSetup};
use tch::{Device, Kind, Tensor};

use crate::denoiser::{Condition, Denoiser};
use crate::TrainError;

/// Samples the latents `setup` asks for (scaled, as the UNet sees them) with `model`,
/// conditioned by `condition` (rows as the driver's batch: the images, then their
/// unconditional twins when guided). Returns [images, c, h, w] on `device`.
pub fn sample_latents(
    model: &mut Denoiser,
    schedule: &NoiseSchedule,
    setup: SamplingSetup,
    condition: &Condition,
    device: Device,
) -> Result<Tensor, TrainError> {
    let _guard = tch::no_grad_guard();
    let [c, h, w] = setup.latent_shape.map(|d| d as i64);
    let images = setup.images as i64;
    let mut sampling = GuidedSampling::new(schedule, setup, None);
    let rows = sampling.batch() as i64;
    while !sampling.is_done() {
        let x = Tensor::from_slice(&sampling.model_input())
            .reshape([rows, c, h, w])
            .to_device(device);
        let t = Tensor::full([rows], sampling.timestep() as i64, (Kind::Int64, device));
        let eps: Vec<f32> = model
            .forward(&x, &t, condition)?
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .flatten(0, -1)
            .try_into()?;
        sampling.advance(&eps)?;
    }
    Ok(Tensor::from_slice(&sampling.into_latents())
        .reshape([images, c, h, w])
        .to_device(device))
}
