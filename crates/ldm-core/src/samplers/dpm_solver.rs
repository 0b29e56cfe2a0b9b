//! DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep solver of the
//! probability-flow ODE in its data-prediction form, in half-log-SNR time
//! lambda = log(alpha / sigma) with alpha = sqrt(ab), sigma = sqrt(1 - ab).
//!
//! With D the predicted x_0 and h = lambda_next - lambda_now:
//! first order   x' = (sigma' / sigma) x - alpha' (e^{-h} - 1) D
//! second order  the same with D + (D - D_prev) / (2 r), r = h_prev / h.
//! The last step, to x_0 itself (sigma' = 0), returns D.

use super::{next, predict_x0, Sampler};
use crate::NoiseSchedule;

pub struct DpmSolverPP2M {
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
    /// D and lambda of the previous step.
    previous: Option<(Vec<f64>, f64)>,
}

impl DpmSolverPP2M {
    pub fn new(schedule: NoiseSchedule, timesteps: Vec<usize>) -> Self {
        Self {
            schedule,
            timesteps,
            previous: None,
        }
    }

    fn lambda(&self, t: usize) -> f64 {
        let ab = self.schedule.alpha_bar(t);
        0.5 * (ab / (1.0 - ab)).ln()
    }
}

impl Sampler for DpmSolverPP2M {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn step(&mut self, i: usize, x: &[f32], eps: &[f32], _noise: Option<&[f32]>) -> Vec<f32> {
        let t = self.timesteps[i];
        let ab = self.schedule.alpha_bar(t);
        let data: Vec<f64> = x
            .iter()
            .zip(eps)
            .map(|(&x, &e)| predict_x0(ab, x as f64, e as f64))
            .collect();
        let Some(t_next) = next(&self.timesteps, i) else {
            return data.iter().map(|&d| d as f32).collect();
        };
        let ab_next = self.schedule.alpha_bar(t_next);
        let (sigma, sigma_next, alpha_next) =
            ((1.0 - ab).sqrt(), (1.0 - ab_next).sqrt(), ab_next.sqrt());
        let (lambda, lambda_next) = (self.lambda(t), self.lambda(t_next));
        let h = lambda_next - lambda;
        let decay = alpha_next * ((-h).exp() - 1.0);
        let out = match &self.previous {
            Some((d_prev, lambda_prev)) => {
                let r = (lambda - lambda_prev) / h;
                x.iter()
                    .zip(&data)
                    .zip(d_prev)
                    .map(|((&x, &d), &dp)| {
                        let d = d + (d - dp) / (2.0 * r);
                        (sigma_next / sigma * x as f64 - decay * d) as f32
                    })
                    .collect()
            }
            None => x
                .iter()
                .zip(&data)
                .map(|(&x, &d)| (sigma_next / sigma * x as f64 - decay * d) as f32)
                .collect(),
        };
        self.previous = Some((data, lambda));
        out
    }
}
