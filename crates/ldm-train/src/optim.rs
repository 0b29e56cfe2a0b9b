//! AdamW (Loshchilov & Hutter) over named parameters, with gradient-norm clipping.
//!
//! Written here rather than taken from `tch::nn::Optimizer` because that optimiser keeps its
//! moment buffers inside libtorch, out of reach: an exact `--resume` must save and restore them.

use std::path::Path;

use tch::{Kind, Tensor};

use crate::TrainError;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (0 for plain Adam).
    pub weight_decay: f64,
}

impl AdamConfig {
    /// PyTorch's defaults (betas 0.9, 0.999; eps 1e-8) with `weight_decay`.
    pub fn with_weight_decay(weight_decay: f64) -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }
}

pub struct AdamW {
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    steps: i64,
    config: AdamConfig,
}

impl AdamW {
    /// Optimises `params` (tensors that require grad); moments start at zero.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamConfig) -> Self {
        let m = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let v = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Self {
            params,
            m,
            v,
            steps: 0,
            config,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Scales all gradients down so their global L2 norm is at most `max_norm`; returns the
    /// norm before clipping (NaN when a gradient is not finite).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(|g| g.defined())
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let squares: Vec<Tensor> = grads.iter().map(|g| g.square().sum(Kind::Float)).collect();
        let norm = Tensor::stack(&squares, 0)
            .sum(Kind::Float)
            .sqrt()
            .double_value(&[]);
        if norm.is_finite() && norm > max_norm {
            let factor = max_norm / (norm + 1e-6);
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.f_mul_scalar_(factor);
                }
            });
        }
        norm
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let AdamConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let bias1 = 1.0 - beta1.powi(self.steps as i32);
        let bias2 = 1.0 - beta2.powi(self.steps as i32);
        tch::no_grad(|| {
            for (((_, p), m), v) in self.params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let _ = m
                    .f_mul_scalar_(beta1)
                    .and_then(|mut m| m.f_add_(&(&g * (1.0 - beta1))));
                let _ = v
                    .f_mul_scalar_(beta2)
                    .and_then(|mut v| v.f_add_(&(g.square() * (1.0 - beta2))));
                if weight_decay > 0.0 {
                    let _ = p.f_mul_scalar_(1.0 - lr * weight_decay);
                }
                let update = (&*m / bias1) / ((&*v / bias2).sqrt() + eps);
                let _ = p.f_sub_(&(update * lr));
            }
        });
    }

    /// Moments and step count as named tensors (`m.<name>`, `v.<name>`, `steps`), for the
    /// checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len() + 1);
        for (((name, _), m), v) in self.params.iter().zip(&self.m).zip(&self.v) {
            out.push((format!("m.{name}"), m.detach().copy()));
            out.push((format!("v.{name}"), v.detach().copy()));
        }
        out.push(("steps".into(), Tensor::from_slice(&[self.steps as f32])));
        out
    }

    /// Restores what [`AdamW::state`] saved; every parameter's moments must be present.
    /// Restores the state a checkpoint saved as `file`.
    pub fn load_saved(&mut self, checkpoint: &Path, file: &'static str) -> Result<(), TrainError> {
        let state = crate::checkpoint::load_weights(checkpoint, file, None)?;
        self.load_state(&state)
            .map_err(|message| TrainError::SavedState {
                checkpoint: checkpoint.to_path_buf(),
                file,
                message,
            })
    }

    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), String> {
        let find = |key: &str| state.iter().find(|(n, _)| n == key).map(|(_, t)| t);
        for (((name, p), m), v) in self.params.iter().zip(&mut self.m).zip(&mut self.v) {
            for (prefix, slot) in [("m", &mut *m), ("v", &mut *v)] {
                let key = format!("{prefix}.{name}");
                let saved = find(&key).ok_or_else(|| format!("optimizer state lacks '{key}'"))?;
                if saved.size() != p.size() {
                    return Err(format!(
                        "optimizer state '{key}' has shape {:?}",
                        saved.size()
                    ));
                }
                *slot = saved.to_device(p.device());
            }
        }
        let steps = find("steps").ok_or("optimizer state lacks 'steps'")?;
        self.steps = steps.double_value(&[0]) as i64;
        Ok(())
    }
}

/// Linear warm-up from 0 to `lr` over `warmup` steps, then constant (the reference LDM's
/// `LambdaWarmUpCosineScheduler` with no decay).
pub fn warmup_lr(lr: f64, warmup: u64, step: u64) -> f64 {
    if warmup == 0 {
        lr
    } else {
        lr * ((step + 1) as f64 / warmup as f64).min(1.0)
    }
}

/// What the learning rate does after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrDecay {
    /// Stays at the peak (the reference LDM's choice).
    #[default]
    Constant,
    /// Half a cosine from the peak down to 0 at the run's last step: a run that ends on a
    /// small learning rate settles into a minimum instead of wandering around it.
    Cosine,
}

impl std::str::FromStr for LrDecay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Self::Constant),
            "cosine" => Ok(Self::Cosine),
            _ => Err(format!(
                "unknown learning-rate decay '{s}' (constant or cosine)"
            )),
        }
    }
}

/// The learning rate of update `step` (0-based) of a `steps`-long run peaking at `lr`.
pub fn scheduled_lr(lr: f64, warmup: u64, decay: LrDecay, step: u64, steps: u64) -> f64 {
    let warmed = warmup_lr(lr, warmup, step);
    match decay {
        LrDecay::Constant => warmed,
        LrDecay::Cosine if step < warmup => warmed,
        LrDecay::Cosine => {
            let span = steps.saturating_sub(warmup).max(1) as f64;
            let progress = ((step - warmup) as f64 / span).min(1.0);
            warmed * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_minimises_a_quadratic_and_its_state_round_trips() {
        let config = AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let x = Tensor::from_slice(&[3.0f32, -2.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("x".into(), x.shallow_clone())], config);
        for _ in 0..300 {
            opt.zero_grad();
            x.square().sum(Kind::Float).backward();
            opt.step(0.05);
        }
        let left: Vec<f32> = x.detach().try_into().unwrap();
        assert!(left.iter().all(|v| v.abs() < 0.05), "{left:?}");

        let y = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        let mut restored = AdamW::new(vec![("x".into(), y)], config);
        restored.load_state(&opt.state()).unwrap();
        assert_eq!(restored.steps, 300);
        assert!(restored.m[0].allclose(&opt.m[0], 0.0, 0.0, false));
        let mut missing = AdamW::new(
            vec![("z".into(), Tensor::zeros([2], tch::kind::FLOAT_CPU))],
            config,
        );
        assert!(missing
            .load_state(&opt.state())
            .unwrap_err()
            .contains("'m.z'"));
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let config = AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let x = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("x".into(), x.shallow_clone())], config);
        (x.square().sum(Kind::Float) * 0.5).backward(); // grad = x, norm 5
        assert!((opt.clip_grad_norm(1.0) - 5.0).abs() < 1e-6);
        let g: Vec<f32> = x.grad().try_into().unwrap();
        assert!(
            ((g[0] * g[0] + g[1] * g[1]).sqrt() - 1.0).abs() < 1e-4,
            "{g:?}"
        );
        assert_eq!(warmup_lr(1e-3, 10, 0), 1e-4);
        assert_eq!(warmup_lr(1e-3, 10, 50), 1e-3);
    }

    #[test]
    fn cosine_decay_falls_from_the_peak_to_zero_after_warm_up() {
        let lr = |step| scheduled_lr(1e-3, 10, LrDecay::Cosine, step, 110);
        assert_eq!(lr(0), 1e-4, "warm-up is unchanged");
        assert_eq!(lr(10), 1e-3, "the peak right after warm-up");
        assert!((lr(60) - 5e-4).abs() < 1e-12, "half way: {}", lr(60));
        assert!(lr(109) < 1e-6 && lr(109) > 0.0, "{}", lr(109));
        assert_eq!(lr(500), 0.0, "steps past the end stay at 0");
        let falling: Vec<f64> = (10..110).map(lr).collect();
        assert!(falling.windows(2).all(|w| w[1] <= w[0]));
        assert_eq!(scheduled_lr(1e-3, 10, LrDecay::Constant, 60, 110), 1e-3);
        assert_eq!("cosine".parse(), Ok(LrDecay::Cosine));
        assert!("linear"
            .parse::<LrDecay>()
            .unwrap_err()
            .contains("constant or cosine"));
    }
}
