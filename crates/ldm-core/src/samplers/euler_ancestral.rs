//! Euler with ancestral noise (k-diffusion's `sample_euler_ancestral`): each step goes down to
//! sigma_down with the ODE, then adds fresh noise of sigma_up, where
//! sigma_up² = sigma'² (sigma² - sigma'²) / sigma² and sigma_down² = sigma'² - sigma_up².

use super::euler::Sigmas;
use super::Sampler;
use crate::NoiseSchedule;

pub struct EulerAncestral {
    timesteps: Vec<usize>,
    sigmas: Sigmas,
}

impl EulerAncestral {
    pub fn new(schedule: &NoiseSchedule, timesteps: Vec<usize>) -> Self {
        let sigmas = Sigmas::new(schedule, &timesteps);
        Self { timesteps, sigmas }
    }
}

impl Sampler for EulerAncestral {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn init_noise_scale(&self) -> f32 {
        self.sigmas.init_noise_scale()
    }

    fn input_scale(&self, i: usize) -> f32 {
        self.sigmas.input_scale(i)
    }

    fn needs_noise(&self) -> bool {
        true
    }

    fn step(&mut self, i: usize, x: &[f32], eps: &[f32], noise: Option<&[f32]>) -> Vec<f32> {
        let (s, s_next) = self.sigmas.at(i);
        let up = (s_next * s_next * (s * s - s_next * s_next) / (s * s))
            .max(0.0)
            .sqrt();
        let down = (s_next * s_next - up * up).max(0.0).sqrt();
        let dt = (down - s) as f32;
        x.iter()
            .zip(eps)
            .enumerate()
            .map(|(k, (x, e))| x + dt * e + up as f32 * noise.map_or(0.0, |n| n[k]))
            .collect()
    }
}
