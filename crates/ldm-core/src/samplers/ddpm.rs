//! Ancestral sampling of DDPM (Ho et al. 2020): x_{t'} drawn from the posterior
//! q(x_{t'} | x_t, x_0) with x_0 predicted from eps, on the strided timesteps t > t'.
//!
//! With a' = ab_{t'} / ab_t and b' = 1 - a', the posterior has mean
//! sqrt(ab_{t'}) b' / (1 - ab_t) · x_0 + sqrt(a') (1 - ab_{t'}) / (1 - ab_t) · x_t and variance
//! b' (1 - ab_{t'}) / (1 - ab_t) (Ho et al. Eq. 6-7, with the strided step's beta).

use super::{next, predict_x0, Sampler};
use crate::NoiseSchedule;

pub struct Ddpm {
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
}

impl Ddpm {
    pub fn new(schedule: NoiseSchedule, timesteps: Vec<usize>) -> Self {
        Self {
            schedule,
            timesteps,
        }
    }
}

impl Sampler for Ddpm {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn needs_noise(&self) -> bool {
        true
    }

    fn step(&mut self, i: usize, x: &[f32], eps: &[f32], noise: Option<&[f32]>) -> Vec<f32> {
        let ab = self.schedule.alpha_bar(self.timesteps[i]);
        let ab_prev = next(&self.timesteps, i).map_or(1.0, |p| self.schedule.alpha_bar(p));
        let alpha = ab / ab_prev;
        let beta = 1.0 - alpha;
        let x0_coef = ab_prev.sqrt() * beta / (1.0 - ab);
        let xt_coef = alpha.sqrt() * (1.0 - ab_prev) / (1.0 - ab);
        let std = (beta * (1.0 - ab_prev) / (1.0 - ab)).sqrt();
        x.iter()
            .zip(eps)
            .enumerate()
            .map(|(k, (&x, &e))| {
                let x0 = predict_x0(ab, x as f64, e as f64);
                let z = noise.map_or(0.0, |n| n[k] as f64);
                (x0_coef * x0 + xt_coef * x as f64 + std * z) as f32
            })
            .collect()
    }
}
