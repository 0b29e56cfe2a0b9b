//! Euler's method on the probability-flow ODE in the variance-exploding view
//! (Karras et al. 2022): with y = x_t / sqrt(ab) = x_0 + sigma eps and
//! sigma = sqrt((1 - ab) / ab), dy/dsigma = eps, so y' = y + (sigma' - sigma) eps.
//!
//! The sampler carries y; the model sees y / sqrt(sigma² + 1) = x_t. It starts from
//! y = sqrt(sigma_max² + 1) z (x_T = z, as the other samplers) and ends at sigma' = 0, x_0.

use super::{sigma, Sampler};
use crate::NoiseSchedule;

pub struct Euler {
    timesteps: Vec<usize>,
    sigmas: Sigmas,
}

impl Euler {
    pub fn new(schedule: &NoiseSchedule, timesteps: Vec<usize>) -> Self {
        let sigmas = Sigmas::new(schedule, &timesteps);
        Self { timesteps, sigmas }
    }
}

/// sigma at each timestep, then 0 for the end: the grid both Euler samplers walk.
pub(super) struct Sigmas(Vec<f64>);

impl Sigmas {
    pub(super) fn new(schedule: &NoiseSchedule, timesteps: &[usize]) -> Self {
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| sigma(schedule, t)).collect();
        sigmas.push(0.0);
        Self(sigmas)
    }

    /// (sigma at step i, sigma after it)
    pub(super) fn at(&self, i: usize) -> (f64, f64) {
        (self.0[i], self.0[i + 1])
    }

    /// x_T = z in the VP view is y = sqrt(sigma_max² + 1) z.
    pub(super) fn init_noise_scale(&self) -> f32 {
        (self.0[0].powi(2) + 1.0).sqrt() as f32
    }

    /// The model sees x_t = y / sqrt(sigma² + 1).
    pub(super) fn input_scale(&self, i: usize) -> f32 {
        1.0 / (self.0[i].powi(2) + 1.0).sqrt() as f32
    }
}

impl Sampler for Euler {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn init_noise_scale(&self) -> f32 {
        self.sigmas.init_noise_scale()
    }

    fn input_scale(&self, i: usize) -> f32 {
        self.sigmas.input_scale(i)
    }

    fn step(&mut self, i: usize, x: &[f32], eps: &[f32], _noise: Option<&[f32]>) -> Vec<f32> {
        let (sigma, sigma_next) = self.sigmas.at(i);
        let dt = (sigma_next - sigma) as f32;
        x.iter().zip(eps).map(|(x, e)| x + dt * e).collect()
    }
}
