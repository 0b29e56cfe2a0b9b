//! The forward noising process q(x_t | x_0) of DDPM (Ho et al. 2020), as the paper uses it
//! (3.2, Eq. 1): a variance schedule beta_1..beta_T and its products.
//!
//! Notation: alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s, and
//! x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps. Timesteps are 0-based here
//! (t = 0 is the first noising step), as in the reference implementation.
//! All schedule arithmetic is f64; values are cast to f32 only where they touch tensors.

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid noise schedule: {0}")]
pub struct ScheduleError(String);

/// What the denoiser predicts: the noise eps (the paper's parametrisation, Eq. 1), or
/// v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022; Stable Diffusion
/// 2.x's 768-v models).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prediction {
    #[default]
    Epsilon,
    V,
}

impl Prediction {
    pub fn is_epsilon(&self) -> bool {
        *self == Prediction::Epsilon
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    prediction: Prediction,
    /// alpha_bar after the last step of DDIM and PLMS: 1 (x_0 itself), or alpha_bar_0 as the
    /// reference code and diffusers' `set_alpha_to_one = false` take it.
    final_alpha_bar: f64,
}

impl NoiseSchedule {
    /// The reference implementation's "linear" schedule: sqrt(beta) evenly spaced from
    /// sqrt(beta_start) to sqrt(beta_end) over `timesteps` steps, then squared.
    pub fn linear(timesteps: usize, beta_start: f64, beta_end: f64) -> Result<Self, ScheduleError> {
        if !(2..=100_000).contains(&timesteps) {
            return Err(ScheduleError(format!(
                "{timesteps} timesteps (expected 2 to 100000)"
            )));
        }
        if !(beta_start > 0.0 && beta_start < beta_end && beta_end < 1.0) {
            return Err(ScheduleError(format!(
                "need 0 < beta_start ({beta_start}) < beta_end ({beta_end}) < 1"
            )));
        }
        let (a, b) = (beta_start.sqrt(), beta_end.sqrt());
        let last = (timesteps - 1) as f64;
        let betas: Vec<f64> = (0..timesteps)
            .map(|i| {
                let s = a + (b - a) * (i as f64 / last);
                s * s
            })
            .collect();
        Ok(Self::from_betas(betas))
    }

    fn from_betas(betas: Vec<f64>) -> Self {
        let alphas_cumprod = betas
            .iter()
            .scan(1.0, |product, beta| {
                *product *= 1.0 - beta;
                Some(*product)
            })
            .collect();
        Self {
            betas,
            alphas_cumprod,
            prediction: Prediction::Epsilon,
            final_alpha_bar: 1.0,
        }
    }

    /// This schedule with DDIM's and PLMS's last step landing on alpha_bar = 1 (`true`) or
    /// on alpha_bar_0 (`false`).
    pub fn with_set_alpha_to_one(mut self, set_alpha_to_one: bool) -> Self {
        self.final_alpha_bar = if set_alpha_to_one {
            1.0
        } else {
            self.alphas_cumprod[0]
        };
        self
    }

    /// alpha_bar at `t`, or after the last step when `t` is None.
    pub fn alpha_bar_or_final(&self, t: Option<usize>) -> f64 {
        t.map_or(self.final_alpha_bar, |t| self.alpha_bar(t))
    }

    /// This schedule for a denoiser that predicts `prediction`.
    pub fn with_prediction(mut self, prediction: Prediction) -> Self {
        self.prediction = prediction;
        self
    }

    pub fn prediction(&self) -> Prediction {
        self.prediction
    }

    /// The noise eps a denoiser's `output` at timestep `t` stands for, given its input `x_t`:
    /// the output itself, or sqrt(alpha_bar) v + sqrt(1 - alpha_bar) x_t for v-prediction. The
    /// samplers are written in eps; this is the one place other parametrisations meet them.
    pub fn eps_from_output(&self, t: usize, x_t: &[f32], output: Vec<f32>) -> Vec<f32> {
        match self.prediction {
            Prediction::Epsilon => output,
            Prediction::V => {
                let ab = self.alpha_bar(t);
                let (a, s) = (ab.sqrt() as f32, (1.0 - ab).sqrt() as f32);
                output.iter().zip(x_t).map(|(v, x)| a * v + s * x).collect()
            }
        }
    }

    pub fn timesteps(&self) -> usize {
        self.betas.len()
    }

    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// alpha_bar_t for 0-based `t`.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alphas_cumprod[t]
    }

    /// x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, elementwise.
    pub fn add_noise(&self, x0: &[f32], noise: &[f32], t: usize) -> Vec<f32> {
        let ab = self.alpha_bar(t);
        let (signal, sigma) = (ab.sqrt() as f32, (1.0 - ab).sqrt() as f32);
        x0.iter()
            .zip(noise)
            .map(|(x, e)| signal * x + sigma * e)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_schedule_spans_its_ends_and_is_monotone() {
        let s = NoiseSchedule::linear(1000, 0.0015, 0.0195).unwrap();
        assert_eq!(s.timesteps(), 1000);
        assert!((s.betas()[0] - 0.0015).abs() < 1e-15);
        assert!((s.betas()[999] - 0.0195).abs() < 1e-15);
        assert!(s.betas().windows(2).all(|w| w[0] < w[1]));
        assert!((1..1000).all(|t| s.alpha_bar(t) < s.alpha_bar(t - 1)));
        // Quadratic in between: the midpoint beta is ((sqrt(b0) + sqrt(b1)) / 2)^2, not the mean.
        let mid = ((0.0015f64.sqrt() + 0.0195f64.sqrt()) / 2.0).powi(2);
        let s3 = NoiseSchedule::linear(3, 0.0015, 0.0195).unwrap();
        assert!((s3.betas()[1] - mid).abs() < 1e-15);
    }

    #[test]
    fn final_alpha_bar_matches_the_known_value_of_the_text_to_image_schedule() {
        // beta 0.00085..0.012 over 1000 steps ends at alpha_bar = 0.004660 (sqrt 0.06826).
        let s = NoiseSchedule::linear(1000, 0.00085, 0.012).unwrap();
        assert!(
            (s.alpha_bar(999) - 0.004660).abs() < 5e-6,
            "{}",
            s.alpha_bar(999)
        );
    }

    #[test]
    fn add_noise_interpolates_signal_and_noise() {
        let s = NoiseSchedule::linear(10, 0.1, 0.5).unwrap();
        let (x0, eps) = ([1.0f32, -2.0], [0.5f32, 0.25]);
        let xt = s.add_noise(&x0, &eps, 4);
        let ab = s.alpha_bar(4);
        for i in 0..2 {
            let want = ab.sqrt() * x0[i] as f64 + (1.0 - ab).sqrt() * eps[i] as f64;
            assert!((xt[i] as f64 - want).abs() < 1e-6);
        }
    }

    #[test]
    fn bad_schedules_are_refused_by_name() {
        let err = NoiseSchedule::linear(1000, 0.02, 0.01)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "invalid noise schedule: need 0 < beta_start (0.02) < beta_end (0.01) < 1"
        );
        assert!(NoiseSchedule::linear(1, 0.001, 0.02).is_err());
        assert!(NoiseSchedule::linear(10, f64::NAN, 0.02).is_err());
    }
}
