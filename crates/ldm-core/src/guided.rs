//! The step-wise guided-sampling driver every engine shares: a request's latents, its noise
//! streams and its sampler's state, advanced one network call at a time. The caller owns the
//! network; each step it asks for the batch to run ([`GuidedSampling::model_input`] at
//! [`GuidedSampling::timestep`]) and hands back the prediction ([`GuidedSampling::advance`]).
//! Holding all per-request state here lets a server put requests at different steps into one
//! network call, and lets tch sampling and the runtime draw the same images.
//!
//! Guided requests run the conditional rows first and the unconditional ones after them, and
//! combine them as eps_u + guidance · (eps_c - eps_u) (classifier-free guidance, Ho & Salimans
//! 2022). Image i draws all its noise from its own stream, seeded seed + i, so an image does
//! not depend on the others in its batch.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::{NoiseSchedule, Sampler, SamplerKind};

/// Largest classifier-free guidance scale (in magnitude): practical scales are 1 to 20, and far
/// larger ones only push the latents out of the range the decoder knows.
pub const MAX_GUIDANCE: f64 = 100.0;

/// A network output of the wrong size for the batch that was asked for.
#[derive(Debug, thiserror::Error)]
#[error("the network returned {got} values for a batch that needs {expected}")]
pub struct PredictionSizeError {
    pub expected: usize,
    pub got: usize,
}

/// What a sampling run is: resolved and validated beforehand (see the runtime's request plan).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingSetup {
    /// The sampler, DDIM's eta included.
    pub sampler: SamplerKind,
    pub steps: usize,
    pub guidance: f64,
    /// Whether each call runs the unconditional rows too (a conditioner and guidance != 1).
    pub guided: bool,
    /// Image i uses seed + i.
    pub seed: u64,
    pub images: usize,
    /// [channels, height, width] of one latent.
    pub latent_shape: [usize; 3],
}

impl SamplingSetup {
    /// Rows of each network call: the images, twice when guided.
    pub fn rows(&self) -> usize {
        self.images * if self.guided { 2 } else { 1 }
    }
}

/// Image-to-image: sampling starts part-way from a known latent, noised to that step; with a
/// mask, the known region is blended back after every step.
#[derive(Debug, Clone)]
pub struct KnownLatent {
    /// One image's latent (scaled as the UNet sees it), shared by every image of the batch.
    pub latent: Vec<f32>,
    /// The step sampling starts at (0: from pure noise).
    pub first_step: usize,
    /// Latent-size mask plane, 1 where the model draws, 0 where `latent` stays.
    pub blend: Option<Vec<f32>>,
}

pub struct GuidedSampling {
    sampler: Box<dyn Sampler>,
    schedule: NoiseSchedule,
    setup: SamplingSetup,
    rngs: Vec<ChaCha8Rng>,
    /// The first draw of every stream: the initial noise, reused to noise a known latent.
    initial_noise: Vec<f32>,
    x: Vec<f32>,
    /// Index of the next step to run.
    next: usize,
    known: Option<KnownLatent>,
}

impl GuidedSampling {
    pub fn new(schedule: &NoiseSchedule, setup: SamplingSetup, known: Option<KnownLatent>) -> Self {
        let sampler = setup.sampler.build(schedule, setup.steps);
        let per_image = setup.latent_shape.iter().product();
        let mut rngs: Vec<ChaCha8Rng> = (0..setup.images)
            .map(|i| ChaCha8Rng::seed_from_u64(setup.seed.wrapping_add(i as u64)))
            .collect();
        let initial_noise = draw(&mut rngs, per_image);
        let mut sampling = Self {
            sampler,
            schedule: schedule.clone(),
            setup,
            rngs,
            x: Vec::new(),
            initial_noise,
            next: 0,
            known: None,
        };
        sampling.x = match &known {
            Some(k) => {
                sampling.next = k.first_step.min(sampling.total_steps());
                sampling.noised_known(&k.latent, sampling.next)
            }
            None => {
                let scale = sampling.sampler.init_noise_scale();
                sampling.initial_noise.iter().map(|v| v * scale).collect()
            }
        };
        sampling.known = known;
        sampling
    }

    pub fn setup(&self) -> &SamplingSetup {
        &self.setup
    }

    /// Steps of the whole schedule (image-to-image skips the first ones).
    pub fn total_steps(&self) -> usize {
        self.sampler.timesteps().len()
    }

    /// The step sampling started at.
    pub fn first_step(&self) -> usize {
        self.known
            .as_ref()
            .map_or(0, |k| k.first_step.min(self.total_steps()))
    }

    pub fn is_done(&self) -> bool {
        self.next >= self.total_steps()
    }

    /// Steps done and steps to do in all, counted from where this request started.
    pub fn progress(&self) -> (usize, usize) {
        let first = self.first_step();
        (self.next - first, self.total_steps() - first)
    }

    /// Rows of the next network call: the images, twice when guided.
    pub fn batch(&self) -> usize {
        self.setup.rows()
    }

    /// The model timestep of the next call. Call only while not [`Self::is_done`].
    pub fn timestep(&self) -> usize {
        self.sampler.timesteps()[self.next]
    }

    /// The next call's `sample` input, [batch, c, h, w] flattened: the latents scaled as the
    /// sampler asks, twice when guided.
    pub fn model_input(&self) -> Vec<f32> {
        let scale = self.sampler.input_scale(self.next);
        let input: Vec<f32> = self.x.iter().map(|v| v * scale).collect();
        if self.setup.guided {
            [input.as_slice(), input.as_slice()].concat()
        } else {
            input
        }
    }

    /// Takes the network's prediction for [`Self::model_input`] and runs one sampler step.
    pub fn advance(&mut self, eps: &[f32]) -> Result<(), PredictionSizeError> {
        let expected = self.batch() * self.per_image();
        if eps.len() != expected {
            return Err(PredictionSizeError {
                expected,
                got: eps.len(),
            });
        }
        let eps: Vec<f32> = if self.setup.guided {
            let guidance = self.setup.guidance as f32;
            let (conditional, unconditional) = eps.split_at(self.x.len());
            unconditional
                .iter()
                .zip(conditional)
                .map(|(u, c)| u + guidance * (c - u))
                .collect()
        } else {
            eps.to_vec()
        };
        let i = self.next;
        let x_t: Vec<f32> = {
            let scale = self.sampler.input_scale(i);
            self.x.iter().map(|v| v * scale).collect()
        };
        let eps = self.schedule.eps_from_output(self.timestep(), &x_t, eps);
        let per_image = self.per_image();
        let noise = self
            .sampler
            .needs_noise()
            .then(|| draw(&mut self.rngs, per_image));
        self.x = self.sampler.step(i, &self.x, &eps, noise.as_deref());
        self.next += 1;
        if let Some(known) = &self.known {
            if let Some(mask) = &known.blend {
                let target = self.noised_known(&known.latent, self.next);
                blend(&mut self.x, &target, mask);
            }
        }
        Ok(())
    }

    /// The latents so far, [images, c, h, w], in the sampler's parametrisation (x_0 when done).
    pub fn latents(&self) -> &[f32] {
        &self.x
    }

    pub fn into_latents(self) -> Vec<f32> {
        self.x
    }

    fn per_image(&self) -> usize {
        self.setup.latent_shape.iter().product()
    }

    /// The known latent at step `i`, noised with the initial noise (the latent itself at the
    /// end), for every image.
    fn noised_known(&self, latent: &[f32], i: usize) -> Vec<f32> {
        let all = repeat(latent, self.setup.images);
        match self.sampler.timesteps().get(i) {
            Some(&t) => self
                .sampler
                .sample_from_xt(i, &self.schedule.add_noise(&all, &self.initial_noise, t)),
            None => all,
        }
    }
}

/// One block of standard normal values from each stream, in stream order.
fn draw(rngs: &mut [ChaCha8Rng], per_image: usize) -> Vec<f32> {
    rngs.iter_mut()
        .flat_map(|r| {
            (0..per_image)
                .map(|_| StandardNormal.sample(r))
                .collect::<Vec<f32>>()
        })
        .collect()
}

/// x where the mask is 1, `known` where it is 0 (soft in between), per channel plane.
fn blend(x: &mut [f32], known: &[f32], mask: &[f32]) {
    let plane = mask.len();
    for (i, (v, k)) in x.iter_mut().zip(known).enumerate() {
        let m = mask[i % plane];
        *v = m * *v + (1.0 - m) * k;
    }
}

/// `data` of one batch row (an image, a prompt's ids) repeated `n` times.
pub fn repeat<T: Copy>(data: &[T], n: usize) -> Vec<T> {
    (0..n).flat_map(|_| data.iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(guided: bool) -> SamplingSetup {
        SamplingSetup {
            sampler: SamplerKind::EulerAncestral,
            steps: 4,
            guidance: 2.0,
            guided,
            seed: 3,
            images: 2,
            latent_shape: [1, 2, 2],
        }
    }

    #[test]
    fn an_image_does_not_depend_on_its_batch_and_guidance_combines_halves() {
        let schedule = NoiseSchedule::linear(1000, 0.00085, 0.012).unwrap();
        let mut pair = GuidedSampling::new(&schedule, setup(true), None);
        let mut alone = GuidedSampling::new(
            &schedule,
            SamplingSetup {
                images: 1,
                seed: 4,
                ..setup(false)
            },
            None,
        );
        assert_eq!(pair.batch(), 4);
        while !pair.is_done() {
            assert_eq!(pair.timestep(), alone.timestep());
            let input = pair.model_input();
            assert_eq!(input[..8], input[8..]);
            // Conditional 0.3 x, unconditional 0.1 x: guided 0.1 x + 2 (0.2 x) = 0.5 x.
            let eps: Vec<f32> = input
                .iter()
                .enumerate()
                .map(|(i, v)| v * if i < 8 { 0.3 } else { 0.1 })
                .collect();
            pair.advance(&eps).unwrap();
            let one: Vec<f32> = alone.model_input().iter().map(|v| v * 0.5).collect();
            alone.advance(&one).unwrap();
            // The second image of the pair is seeded 3 + 1, as the single image.
            for (a, b) in pair.latents()[4..].iter().zip(alone.latents()) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
        assert_eq!(pair.progress(), (4, 4));
        let err = GuidedSampling::new(&schedule, setup(false), None)
            .advance(&[0.0; 3])
            .unwrap_err();
        assert_eq!((err.expected, err.got), (8, 3));
    }

    #[test]
    fn a_v_prediction_model_samples_what_the_same_eps_model_does() {
        // Oracle denoisers for one x_0, as eps and as v: every sampler ends on x_0 either way.
        let x0 = [0.5f32, -0.25, 1.0, 0.0];
        let eps_schedule = NoiseSchedule::linear(1000, 0.00085, 0.012).unwrap();
        let v_schedule = eps_schedule.clone().with_prediction(crate::Prediction::V);
        for kind in [
            SamplerKind::Ddim { eta: 0.0 },
            SamplerKind::Euler,
            SamplerKind::Plms,
        ] {
            let run = |schedule: &NoiseSchedule| {
                let setup = SamplingSetup {
                    sampler: kind,
                    images: 1,
                    ..setup(false)
                };
                let mut sampling = GuidedSampling::new(schedule, setup, None);
                while !sampling.is_done() {
                    let ab = schedule.alpha_bar(sampling.timestep());
                    let (a, s) = (ab.sqrt() as f32, (1.0 - ab).sqrt() as f32);
                    let output: Vec<f32> = sampling
                        .model_input()
                        .iter()
                        .zip(x0)
                        .map(|(x_t, x0)| {
                            let eps = (x_t - a * x0) / s;
                            match schedule.prediction() {
                                crate::Prediction::Epsilon => eps,
                                crate::Prediction::V => a * eps - s * x0,
                            }
                        })
                        .collect();
                    sampling.advance(&output).unwrap();
                }
                sampling.into_latents()
            };
            let (by_eps, by_v) = (run(&eps_schedule), run(&v_schedule));
            for ((e, v), want) in by_eps.iter().zip(&by_v).zip(x0) {
                assert!(
                    (e - want).abs() < 1e-3 && (e - v).abs() < 1e-4,
                    "{kind:?}: {e} {v} {want}"
                );
            }
        }
    }

    #[test]
    fn a_known_latent_starts_part_way_and_stays_where_the_mask_keeps_it() {
        let schedule = NoiseSchedule::linear(1000, 0.00085, 0.012).unwrap();
        let known = KnownLatent {
            latent: vec![0.5, -0.5, 0.25, 1.0],
            first_step: 1,
            blend: Some(vec![0.0, 0.0, 1.0, 1.0]),
        };
        let mut sampling = GuidedSampling::new(&schedule, setup(false), Some(known));
        assert_eq!(sampling.progress(), (0, 3));
        while !sampling.is_done() {
            let eps = vec![0.0; sampling.batch() * 4];
            sampling.advance(&eps).unwrap();
        }
        for image in sampling.latents().chunks(4) {
            assert_eq!(image[..2], [0.5, -0.5]);
        }
    }
}
