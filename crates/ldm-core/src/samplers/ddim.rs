//! DDIM (Song et al. 2021, Eq. 12): eta = 0 is deterministic, eta = 1 has DDPM's variance.

use super::{next, Sampler};
use crate::{ddim_step, NoiseSchedule};

pub struct Ddim {
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
    eta: f64,
}

impl Ddim {
    pub fn new(schedule: NoiseSchedule, timesteps: Vec<usize>, eta: f64) -> Self {
        Self {
            schedule,
            timesteps,
            eta,
        }
    }
}

impl Sampler for Ddim {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn needs_noise(&self) -> bool {
        self.eta > 0.0
    }

    fn step(&mut self, i: usize, x: &[f32], eps: &[f32], noise: Option<&[f32]>) -> Vec<f32> {
        let t = self.timesteps[i];
        ddim_step(
            &self.schedule,
            x,
            eps,
            t,
            next(&self.timesteps, i),
            self.eta,
            noise,
        )
    }
}
