//! Euler's method on the probability-flow ODE in the variance-exploding view
//! (Karras et al. 2022): with y = x_t / sqrt(ab) = x_0 + sigma eps and
//! sigma = sqrt((1 - ab) / ab), dy/dsigma = eps, so y' = y + (sigma' - sigma) eps.
//!
//! The sampler carries y; the model sees y / sqrt(sigma² + 1) = x_t. It starts from
//! y = sqrt(sigma_max² + 1) z (x_T = z, as the other samplers) and ends at sigma' = 0, x_0.

use super::{next, sigma, Sampler};
use crate::NoiseSchedule;

pub struct Euler {
    timesteps: Vec<usize>,
    /// sigma at each timestep, then 0.
    sigmas: Vec<f64>,
}

impl Euler {
    pub fn new(schedule: &NoiseSchedule, timesteps: Vec<usize>) -> Self {
        let sigmas = sigmas(schedule, &timesteps);
        Self { timesteps, sigmas }
    }
}

/// sigma at each timestep, with 0 appended for the end.
pub(super) fn sigmas(schedule: &NoiseSchedule, timesteps: &[usize]) -> Vec<f64> {
    let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| sigma(schedule, t)).collect();
    sigmas.push(0.0);
    sigmas
}

impl Sampler for Euler {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn init_noise_scale(&self) -> f32 {
        (self.sigmas[0].powi(2) + 1.0).sqrt() as f32
    }

    fn input_scale(&self, i: usize) -> f32 {
        1.0 / (self.sigmas[i].powi(2) + 1.0).sqrt() as f32
    }

    fn step(&mut self, i: usize, x: &[f32], eps: &[f32], _noise: Option<&[f32]>) -> Vec<f32> {
        debug_assert_eq!(
            next(&self.timesteps, i).is_none(),
            i + 1 == self.timesteps.len()
        );
        let dt = (self.sigmas[i + 1] - self.sigmas[i]) as f32;
        x.iter().zip(eps).map(|(x, e)| x + dt * e).collect()
    }
}
