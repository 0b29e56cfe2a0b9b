//! The DDIM update (Song et al. 2021, Eq. 12), the sampler the paper uses for its figures, as
//! a pure function over flat arrays so every engine shares it.

use crate::NoiseSchedule;

/// The reference implementation's "uniform" DDIM timesteps (`make_ddim_timesteps`): every
/// `T / steps`-th step shifted by one, in increasing order; sampling walks them backwards.
/// Exactly `steps` of them: where `steps` does not divide T the reference's range yields one
/// more, and with a stride of 1 its shift would pass T - 1, so there they stay unshifted.
pub fn ddim_timesteps(schedule: &NoiseSchedule, steps: usize) -> Vec<usize> {
    let total = schedule.timesteps();
    let steps = steps.clamp(1, total);
    let stride = total / steps;
    let shift = usize::from(stride > 1);
    (0..steps).map(|k| k * stride + shift).collect()
}

/// One DDIM update of `x` (x_t) with predicted noise `eps`, from timestep `t` to `t_prev`
/// (`None`: to x_0). `eta` = 0 is deterministic; `eta` = 1 matches DDPM's variance, and then
/// `noise` (standard normal, same length as `x`) must be given.
pub fn ddim_step(
    schedule: &NoiseSchedule,
    x: &[f32],
    eps: &[f32],
    t: usize,
    t_prev: Option<usize>,
    eta: f64,
    noise: Option<&[f32]>,
) -> Vec<f32> {
    let a_t = schedule.alpha_bar(t);
    let a_prev = schedule.alpha_bar_or_final(t_prev);
    let sigma = eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)).sqrt();
    let dir = (1.0 - a_prev - sigma * sigma).max(0.0).sqrt();
    let (sqrt_a_t, sqrt_1m_a_t, sqrt_a_prev) = (a_t.sqrt(), (1.0 - a_t).sqrt(), a_prev.sqrt());
    x.iter()
        .zip(eps)
        .enumerate()
        .map(|(i, (&x, &e))| {
            let (x, e) = (x as f64, e as f64);
            let x0 = (x - sqrt_1m_a_t * e) / sqrt_a_t;
            let z = noise.map_or(0.0, |n| n[i] as f64);
            (sqrt_a_prev * x0 + dir * e + sigma * z) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> NoiseSchedule {
        NoiseSchedule::linear(1000, 0.0015, 0.0195).unwrap()
    }

    #[test]
    fn timesteps_follow_the_reference_uniform_spacing() {
        let ts = ddim_timesteps(&schedule(), 4);
        assert_eq!(ts, [1, 251, 501, 751]);
        assert_eq!(ddim_timesteps(&schedule(), 3), [1, 334, 667]);
        let all = ddim_timesteps(&schedule(), 1000);
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_step_with_the_true_noise_lands_on_the_noised_signal() {
        // x_t built from a known x_0 and eps: an eta = 0 step with the true eps must give
        // exactly x_{t_prev} built from the same x_0 and eps.
        let s = schedule();
        let (x0, eps) = (vec![0.5f32, -1.0, 0.25], vec![0.3f32, 1.2, -0.7]);
        let xt = s.add_noise(&x0, &eps, 600);
        let prev = ddim_step(&s, &xt, &eps, 600, Some(300), 0.0, None);
        let want = s.add_noise(&x0, &eps, 300);
        for (a, b) in prev.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{prev:?} vs {want:?}");
        }
        let last = ddim_step(&s, &xt, &eps, 600, None, 0.0, None);
        for (a, b) in last.iter().zip(&x0) {
            assert!((a - b).abs() < 1e-5, "{last:?} vs {x0:?}");
        }
    }
}
