//! The samplers against their equations, with a model that predicts the true noise of a known
//! Gaussian data distribution N(mu, s²): for x_t = sqrt(ab) x_0 + sqrt(1 - ab) z the optimal
//! prediction is E[z | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s² + 1 - ab).
//! Every sampler must turn standard normal noise into samples of mean mu and deviation s.

use ldm_core::{NoiseSchedule, Sampler, SamplerKind};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

const MU: f64 = 0.7;
const S: f64 = 0.5;
const DIMS: usize = 20_000;

fn schedule() -> NoiseSchedule {
    NoiseSchedule::linear(1000, 0.0015, 0.0195).unwrap()
}

fn oracle(schedule: &NoiseSchedule, x: &[f32], t: usize) -> Vec<f32> {
    let ab = schedule.alpha_bar(t);
    x.iter()
        .map(|&x| {
            ((1.0 - ab).sqrt() * (x as f64 - ab.sqrt() * MU) / (ab * S * S + 1.0 - ab)) as f32
        })
        .collect()
}

fn normals(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// The caller's loop of the samplers module documentation, with the oracle as the model.
fn sample(
    sampler: &mut dyn Sampler,
    schedule: &NoiseSchedule,
    x_t: Vec<f32>,
    seed: u64,
) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x: Vec<f32> = x_t.iter().map(|v| v * sampler.init_noise_scale()).collect();
    for i in 0..sampler.timesteps().len() {
        let t = sampler.timesteps()[i];
        let scale = sampler.input_scale(i);
        let input: Vec<f32> = x.iter().map(|v| v * scale).collect();
        let eps = oracle(schedule, &input, t);
        let noise = sampler.needs_noise().then(|| normals(&mut rng, x.len()));
        x = sampler.step(i, &x, &eps, noise.as_deref());
    }
    x
}

fn mean_std(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

const ALL: [SamplerKind; 7] = [
    SamplerKind::Ddpm,
    SamplerKind::Ddim { eta: 0.0 },
    SamplerKind::Ddim { eta: 1.0 },
    SamplerKind::Plms,
    SamplerKind::DpmSolverPP2M,
    SamplerKind::Euler,
    SamplerKind::EulerAncestral,
];

#[test]
fn every_sampler_converges_to_a_known_gaussian() {
    let s = schedule();
    let z = normals(&mut ChaCha8Rng::seed_from_u64(1), DIMS);
    for kind in ALL {
        // Ancestral samplers put the posterior mean of x_0 where its spread belongs, which
        // under-disperses on long strides (Bao et al. 2022): they get finer grids.
        let grids: &[usize] = if kind.build(&s, 1).needs_noise() {
            &[250, 500]
        } else {
            &[20, 50, 200]
        };
        let mut errors = Vec::new();
        for &steps in grids {
            let mut sampler = kind.build(&s, steps);
            // PLMS evaluates its first step twice, the second time at the next timestep.
            let calls = steps + usize::from(kind == SamplerKind::Plms);
            assert_eq!(sampler.timesteps().len(), calls);
            assert!(
                sampler.timesteps().windows(2).all(|w| w[0] >= w[1])
                    && sampler.timesteps().windows(3).all(|w| w[0] > w[2]),
                "decreasing"
            );
            let x = sample(sampler.as_mut(), &s, z.clone(), 2);
            let (mean, std) = mean_std(&x);
            assert!(
                (mean - MU).abs() < 0.01,
                "{kind:?} {steps} steps: mean {mean}"
            );
            errors.push((std / S - 1.0).abs());
        }
        assert!(
            errors.windows(2).all(|e| e[1] < e[0]),
            "{kind:?}: finer grids, smaller errors: {errors:?}"
        );
        let last = errors[errors.len() - 1];
        assert!(
            last < 0.03,
            "{kind:?}: deviation off by {:.1} % on the finest grid",
            100.0 * last
        );
    }
}

#[test]
fn ddim_without_noise_is_euler_in_sigma_space() {
    // Karras et al. 2022: deterministic DDIM is Euler's method on x / sqrt(ab) against sigma.
    let s = schedule();
    let z = normals(&mut ChaCha8Rng::seed_from_u64(6), 512);
    let ddim = sample(
        SamplerKind::Ddim { eta: 0.0 }.build(&s, 20).as_mut(),
        &s,
        z.clone(),
        0,
    );
    let euler = sample(SamplerKind::Euler.build(&s, 20).as_mut(), &s, z, 0);
    let worst = ddim
        .iter()
        .zip(&euler)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "{worst}");
}

#[test]
fn deterministic_samplers_ignore_noise_and_repeat() {
    let s = schedule();
    let z = normals(&mut ChaCha8Rng::seed_from_u64(3), 256);
    for kind in [
        SamplerKind::Ddim { eta: 0.0 },
        SamplerKind::Plms,
        SamplerKind::DpmSolverPP2M,
        SamplerKind::Euler,
    ] {
        assert!(!kind.build(&s, 10).needs_noise(), "{kind:?}");
        let a = sample(kind.build(&s, 10).as_mut(), &s, z.clone(), 1);
        let b = sample(kind.build(&s, 10).as_mut(), &s, z.clone(), 2);
        assert_eq!(a, b, "{kind:?}");
    }
    for kind in [
        SamplerKind::Ddpm,
        SamplerKind::Ddim { eta: 1.0 },
        SamplerKind::EulerAncestral,
    ] {
        let a = sample(kind.build(&s, 10).as_mut(), &s, z.clone(), 1);
        let b = sample(kind.build(&s, 10).as_mut(), &s, z.clone(), 2);
        assert_ne!(a, b, "{kind:?} draws noise");
    }
}

#[test]
fn ddim_with_eta_zero_inverts() {
    // Each deterministic DDIM step is invertible: solving x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t)
    // eps(x_t) for x_t (fixed-point iteration), with x0 from the lower sample and that eps,
    // walks x_0 back to the very noise it came from.
    let s = schedule();
    let z = normals(&mut ChaCha8Rng::seed_from_u64(4), 512);
    let mut sampler = SamplerKind::Ddim { eta: 0.0 }.build(&s, 50);
    let timesteps = sampler.timesteps().to_vec();
    let mut x = sample(sampler.as_mut(), &s, z.clone(), 0);
    for i in (0..timesteps.len()).rev() {
        let t = timesteps[i];
        let ab_below = timesteps.get(i + 1).map_or(1.0, |&b| s.alpha_bar(b));
        let ab = s.alpha_bar(t);
        let below = x.clone();
        for _ in 0..50 {
            let eps = oracle(&s, &x, t);
            x = below
                .iter()
                .zip(&eps)
                .map(|(&xb, &e)| {
                    let x0 = (xb as f64 - (1.0 - ab_below).sqrt() * e as f64) / ab_below.sqrt();
                    (ab.sqrt() * x0 + (1.0 - ab).sqrt() * e as f64) as f32
                })
                .collect();
        }
    }
    let worst = x
        .iter()
        .zip(&z)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "inversion error {worst}");
}

#[test]
fn ddpm_is_ddim_with_eta_one() {
    // Song et al.: eta = 1 gives the DDPM posterior of the strided chain.
    let s = schedule();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (x, eps, noise) = (
        normals(&mut rng, 64),
        normals(&mut rng, 64),
        normals(&mut rng, 64),
    );
    let mut ddpm = SamplerKind::Ddpm.build(&s, 25);
    let mut ddim = SamplerKind::Ddim { eta: 1.0 }.build(&s, 25);
    for i in [0, 12, 24] {
        let a = ddpm.step(i, &x, &eps, Some(&noise));
        let b = ddim.step(i, &x, &eps, Some(&noise));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "step {i}: {worst}");
    }
}

#[test]
fn sampler_names_parse() {
    for name in ["ddpm", "ddim", "plms", "dpm++2m", "euler", "euler-a"] {
        assert_eq!(name.parse::<SamplerKind>().unwrap().name(), name);
    }
    let err = "heun".parse::<SamplerKind>().unwrap_err();
    assert!(err.contains("unknown sampler 'heun'"), "{err}");
}
