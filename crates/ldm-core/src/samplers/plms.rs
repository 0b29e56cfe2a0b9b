//! Pseudo linear multistep (PLMS, Liu et al. 2022), the sampler of the paper's text-to-image
//! code: the noise prediction is replaced by an Adams-Bashforth combination of the current and
//! up to three previous ones, then a deterministic DDIM step is taken with it.
//!
//! The authors' code spends a second model evaluation on the first step (a Heun-like
//! correction); here every step costs one evaluation and the first steps use the lower-order
//! formulas (orders 1, 2, 3, then 4).

use super::{next, Sampler};
use crate::{ddim_step, NoiseSchedule};

pub struct Plms {
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
    /// Previous noise predictions, newest last (at most three).
    history: Vec<Vec<f32>>,
}

impl Plms {
    pub fn new(schedule: NoiseSchedule, timesteps: Vec<usize>) -> Self {
        Self {
            schedule,
            timesteps,
            history: Vec::new(),
        }
    }
}

impl Sampler for Plms {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn step(&mut self, i: usize, x: &[f32], eps: &[f32], _noise: Option<&[f32]>) -> Vec<f32> {
        let h = &self.history;
        let combined: Vec<f32> = (0..eps.len())
            .map(|k| match h.len() {
                0 => eps[k],
                1 => (3.0 * eps[k] - h[0][k]) / 2.0,
                2 => (23.0 * eps[k] - 16.0 * h[1][k] + 5.0 * h[0][k]) / 12.0,
                _ => (55.0 * eps[k] - 59.0 * h[2][k] + 37.0 * h[1][k] - 9.0 * h[0][k]) / 24.0,
            })
            .collect();
        self.history.push(eps.to_vec());
        if self.history.len() > 3 {
            self.history.remove(0);
        }
        let t = self.timesteps[i];
        ddim_step(
            &self.schedule,
            x,
            &combined,
            t,
            next(&self.timesteps, i),
            0.0,
            None,
        )
    }
}
