//! Samplers: each turns the model's noise prediction into the next sample, as a pure function
//! of (model output, sample, step) over flat arrays, so every backend shares them and each can
//! be checked against its equations alone (the split diffusers' schedulers made familiar).
//!
//! Every sampler visits the same timesteps (the reference's uniform DDIM spacing, decreasing)
//! and ends on its estimate of x_0. The caller's loop, for step i:
//!
//! ```text
//! x   = init_noise_scale() · z                         (z standard normal)
//! eps = model(input_scale(i) · x, timesteps()[i])
//! x   = step(i, x, eps, noise)                        (noise: fresh z when needs_noise())
//! ```

mod ddim;
mod ddpm;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod plms;

use std::str::FromStr;

pub use ddim::Ddim;
pub use ddpm::Ddpm;
pub use dpm_solver::DpmSolverPP2M;
pub use euler::Euler;
pub use euler_ancestral::EulerAncestral;
pub use plms::Plms;

use crate::{ddim_timesteps, NoiseSchedule};

pub trait Sampler {
    /// Model timesteps (0-based), in the order they are visited.
    fn timesteps(&self) -> &[usize];
    /// Scale of the initial standard normal sample.
    fn init_noise_scale(&self) -> f32 {
        1.0
    }
    /// Factor applied to the sample before the model sees it at step `i`.
    fn input_scale(&self, _i: usize) -> f32 {
        1.0
    }
    /// A noised sample x_t at step `i`'s timestep in this sampler's parametrisation (to start
    /// part-way, as image-to-image does, or to blend a known region back).
    fn sample_from_xt(&self, i: usize, x_t: &[f32]) -> Vec<f32> {
        let scale = 1.0 / self.input_scale(i);
        x_t.iter().map(|v| v * scale).collect()
    }
    /// Whether [`Sampler::step`] needs fresh standard normal noise.
    fn needs_noise(&self) -> bool {
        false
    }
    /// The sample after step `i`, from the model's noise prediction `eps` at that step.
    fn step(&mut self, i: usize, x: &[f32], eps: &[f32], noise: Option<&[f32]>) -> Vec<f32>;
}

/// The samplers by name, as `--sampler` takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerKind {
    /// Ancestral sampling of DDPM (Ho et al. 2020) on the strided timesteps.
    Ddpm,
    /// DDIM (Song et al. 2021) with stochasticity eta.
    Ddim { eta: f64 },
    /// Pseudo linear multistep (Liu et al. 2022), as the paper's code samples text-to-image.
    Plms,
    /// DPM-Solver++ (Lu et al. 2022), second-order multistep, data prediction.
    DpmSolverPP2M,
    /// Euler's method on the probability-flow ODE in sigma space (Karras et al. 2022).
    Euler,
    /// Euler with ancestral noise.
    EulerAncestral,
}

impl SamplerKind {
    /// Names `from_str` accepts.
    pub const NAMES: &'static str = "ddpm, ddim, plms, dpm++2m, euler, euler-a";

    pub fn name(&self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Ddim { .. } => "ddim",
            SamplerKind::Plms => "plms",
            SamplerKind::DpmSolverPP2M => "dpm++2m",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler-a",
        }
    }

    /// This sampler, with DDIM's stochasticity set to `eta` (the others have none).
    pub fn with_eta(self, eta: f64) -> Self {
        match self {
            SamplerKind::Ddim { .. } => SamplerKind::Ddim { eta },
            other => other,
        }
    }

    /// The sampler over `steps` of `schedule`'s timesteps (1 ≤ steps ≤ T).
    pub fn build(self, schedule: &NoiseSchedule, steps: usize) -> Box<dyn Sampler> {
        let timesteps: Vec<usize> = ddim_timesteps(schedule, steps).into_iter().rev().collect();
        let schedule = schedule.clone();
        match self {
            SamplerKind::Ddpm => Box::new(Ddpm::new(schedule, timesteps)),
            SamplerKind::Ddim { eta } => Box::new(Ddim::new(schedule, timesteps, eta)),
            SamplerKind::Plms => Box::new(Plms::new(schedule, timesteps)),
            SamplerKind::DpmSolverPP2M => Box::new(DpmSolverPP2M::new(schedule, timesteps)),
            SamplerKind::Euler => Box::new(Euler::new(&schedule, timesteps)),
            SamplerKind::EulerAncestral => Box::new(EulerAncestral::new(&schedule, timesteps)),
        }
    }
}

impl FromStr for SamplerKind {
    type Err = String;

    /// A name; DDIM's eta is set separately (0 here).
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "ddpm" => SamplerKind::Ddpm,
            "ddim" => SamplerKind::Ddim { eta: 0.0 },
            "plms" => SamplerKind::Plms,
            "dpm++2m" | "dpmpp2m" | "dpm-solver++" => SamplerKind::DpmSolverPP2M,
            "euler" => SamplerKind::Euler,
            "euler-a" | "euler_a" | "euler-ancestral" => SamplerKind::EulerAncestral,
            other => {
                return Err(format!(
                    "unknown sampler '{other}' (expected one of {})",
                    Self::NAMES
                ))
            }
        })
    }
}

/// The timestep after step `i`, or None after the last (x_0).
fn next(timesteps: &[usize], i: usize) -> Option<usize> {
    timesteps.get(i + 1).copied()
}

/// x_0 predicted from x_t and eps: (x - sqrt(1 - ab) eps) / sqrt(ab).
fn predict_x0(ab: f64, x: f64, eps: f64) -> f64 {
    (x - (1.0 - ab).sqrt() * eps) / ab.sqrt()
}

/// sigma of the variance-exploding view, x / sqrt(ab) = x_0 + sigma eps.
fn sigma(schedule: &NoiseSchedule, t: usize) -> f64 {
    let ab = schedule.alpha_bar(t);
    ((1.0 - ab) / ab).sqrt()
}
