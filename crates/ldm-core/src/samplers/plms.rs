//! Pseudo linear multistep (PLMS, Liu et al. 2022), the sampler of the paper's text-to-image
//! code: the noise prediction is replaced by an Adams-Bashforth combination of the current and
//! up to three previous ones, then a deterministic DDIM step is taken with it.
//!
//! The first step is the authors' (and diffusers' PNDM with `skip_prk_steps`): a DDIM step with
//! the first prediction, a second model evaluation where it lands, and the step redone from the
//! start with the mean of the two (a Heun-like correction). So `steps` steps visit `steps + 1`
//! timesteps, the second one twice; the second evaluation does not join the history.

use super::{next, Sampler};
use crate::{ddim_step, NoiseSchedule};

pub struct Plms {
    schedule: NoiseSchedule,
    /// The timesteps of the steps, the second one repeated for the first step's correction.
    visited: Vec<usize>,
    /// Previous noise predictions, newest last (at most three).
    history: Vec<Vec<f32>>,
    /// The first step's start, kept while its correction is evaluated.
    first: Option<Vec<f32>>,
}

impl Plms {
    /// PLMS over `timesteps` (decreasing, one per step).
    pub fn new(schedule: NoiseSchedule, timesteps: Vec<usize>) -> Self {
        let mut visited = timesteps;
        if visited.len() > 1 {
            visited.insert(1, visited[1]);
        }
        Self {
            schedule,
            visited,
            history: Vec::new(),
            first: None,
        }
    }

    fn ddim(&self, x: &[f32], eps: &[f32], t: usize, t_next: Option<usize>) -> Vec<f32> {
        ddim_step(&self.schedule, x, eps, t, t_next, 0.0, None)
    }
}

impl Sampler for Plms {
    fn timesteps(&self) -> &[usize] {
        &self.visited
    }

    fn step(&mut self, i: usize, x: &[f32], eps: &[f32], _noise: Option<&[f32]>) -> Vec<f32> {
        let corrected = self.visited.len() > 1;
        if corrected && i == 0 {
            // Provisional step with the first prediction; the next call evaluates its end.
            self.history = vec![eps.to_vec()];
            self.first = Some(x.to_vec());
            return self.ddim(x, eps, self.visited[0], Some(self.visited[1]));
        }
        if let (true, 1, Some(start)) = (corrected, i, self.first.take()) {
            let first = &self.history[0];
            let mean: Vec<f32> = first.iter().zip(eps).map(|(a, b)| (a + b) / 2.0).collect();
            return self.ddim(&start, &mean, self.visited[0], Some(self.visited[1]));
        }
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
        self.ddim(x, &combined, self.visited[i], next(&self.visited, i))
    }
}
