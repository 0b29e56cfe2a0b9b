//! Generation from a bundle: prompts (or class names) to images, with any of the samplers of
//! `ldm_core::samplers` in the latent space, classifier-free guidance batched into one UNet
//! call per step, and decoding by the first stage.
//!
//! ```no_run
//! use ldm_runtime::{Backend, Bundle, Generate, Pipeline};
//!
//! let bundle = Bundle::load("export/shapes-text".as_ref())?;
//! let mut pipeline = Pipeline::new(bundle, Backend::Tract, 1)?;
//! let request = Generate::new(vec!["a large red circle in the center on a white background".into()])
//!     .steps(25)
//!     .guidance(3.0)
//!     .seed(7);
//! let images = pipeline.generate(&request, &mut |progress| {
//!     eprintln!("step {} of {}", progress.step, progress.total);
//!     true // false cancels
//! })?;
//! assert_eq!(images[0].width, 64);
//! # Ok::<(), ldm_runtime::RuntimeError>(())
//! ```

use ldm_core::manifest::{BundleConditioning, FirstStage, GraphRole};
use ldm_core::{NoiseSchedule, SamplerKind};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::{Backend, Bundle, RuntimeError, Session, Tensor};

/// What to generate. Built with [`Generate::new`] and its setters; unset values take the
/// bundle's defaults.
#[derive(Debug, Clone)]
pub struct Generate {
    /// One image per prompt: a caption (text models), a class name or id (class models),
    /// ignored by unconditional models.
    pub prompts: Vec<String>,
    /// The prompt guidance steers away from (text models; empty: the unconditional context).
    pub negative_prompt: String,
    /// The sampler (default: the bundle's); DDIM's eta is `eta`.
    pub sampler: Option<SamplerKind>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub eta: Option<f64>,
    /// Image i uses seed + i, so an image does not depend on the others in its batch.
    pub seed: u64,
    /// Square image side in pixels (a multiple of the manifest's `size_multiple`); the
    /// training resolution by default. Larger sizes sample convolutionally (paper Fig. 9).
    pub size: Option<usize>,
}

impl Generate {
    pub fn new(prompts: Vec<String>) -> Self {
        Self {
            prompts,
            negative_prompt: String::new(),
            sampler: None,
            steps: None,
            guidance: None,
            eta: None,
            seed: 0,
            size: None,
        }
    }
    pub fn sampler(mut self, sampler: SamplerKind) -> Self {
        self.sampler = Some(sampler);
        self
    }
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = Some(steps);
        self
    }
    pub fn guidance(mut self, guidance: f64) -> Self {
        self.guidance = Some(guidance);
        self
    }
    pub fn eta(mut self, eta: f64) -> Self {
        self.eta = Some(eta);
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    pub fn size(mut self, size: usize) -> Self {
        self.size = Some(size);
        self
    }
    pub fn negative_prompt(mut self, prompt: &str) -> Self {
        self.negative_prompt = prompt.into();
        self
    }
}

/// Where a generation stands after a step.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// Steps done, 1 to `total`.
    pub step: usize,
    pub total: usize,
    /// The batch's latents [N, c, h, w] after this step, in the sampler's parametrisation.
    pub latents: &'a [f32],
}

/// An 8-bit RGB image, rows top to bottom.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

pub struct Pipeline {
    bundle: Bundle,
    schedule: NoiseSchedule,
    unet: Box<dyn Session>,
    encoder: Option<Box<dyn Session>>,
    decoder: Option<Box<dyn Session>>,
}

impl Pipeline {
    /// Opens the graphs generation needs on `backend` (`threads`: ONNX Runtime's intra-op
    /// threads; tract runs on one).
    pub fn new(bundle: Bundle, backend: Backend, threads: usize) -> Result<Self, RuntimeError> {
        let m = &bundle.manifest;
        if let BundleConditioning::Concat { task, .. } = m.conditioning {
            return Err(RuntimeError::Request(format!(
                "this bundle is conditioned on an input image ({task:?}); the pipeline generates from prompts, class labels or nothing"
            )));
        }
        let schedule = m
            .schedule
            .noise_schedule()
            .map_err(|e| RuntimeError::Request(e.to_string()))?;
        let unet = bundle.session(GraphRole::Unet, backend, threads)?;
        let encoder = match m.conditioning {
            BundleConditioning::Text { .. } => {
                Some(bundle.session(GraphRole::TextEncoder, backend, threads)?)
            }
            BundleConditioning::Class { .. } => {
                Some(bundle.session(GraphRole::ClassEmbedder, backend, threads)?)
            }
            BundleConditioning::None | BundleConditioning::Concat { .. } => None,
        };
        let decoder = match m.first_stage {
            FirstStage::Identity => None,
            _ => Some(bundle.session(GraphRole::Decoder, backend, threads)?),
        };
        Ok(Self {
            bundle,
            schedule,
            unet,
            encoder,
            decoder,
        })
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// Generates one image per prompt. `progress` is called after every step with the
    /// latents so far; returning false cancels.
    pub fn generate(
        &mut self,
        request: &Generate,
        progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Vec<Image>, RuntimeError> {
        let m = self.bundle.manifest.clone();
        let n = request.prompts.len();
        if n == 0 {
            return Err(RuntimeError::Request("no prompts".into()));
        }
        let size = request.size.unwrap_or(m.resolution);
        if size == 0 || size % m.size_multiple != 0 || size > 4096 {
            return Err(RuntimeError::Request(format!(
                "image size {size} is not a multiple of {} up to 4096",
                m.size_multiple
            )));
        }
        let steps = request.steps.unwrap_or(m.defaults.steps);
        if !(1..=self.schedule.timesteps()).contains(&steps) {
            return Err(RuntimeError::Request(format!(
                "{steps} steps (expected 1 to {})",
                self.schedule.timesteps()
            )));
        }
        let guidance = request.guidance.unwrap_or(m.defaults.guidance);
        let eta = request.eta.unwrap_or(m.defaults.eta);
        if !guidance.is_finite() || !(0.0..=1.0).contains(&eta) {
            return Err(RuntimeError::Request(format!(
                "guidance {guidance} must be a number and eta {eta} within 0..1"
            )));
        }
        // Conditional and unconditional halves in one batch, when guidance needs both.
        let context = self.context(request)?;
        let guided = context.is_some() && guidance != 1.0;
        let context = match (context, guided) {
            (Some((cond, uncond)), true) => Some(concat_batch(&cond, &uncond)?),
            (Some((cond, _)), false) => Some(cond),
            (None, _) => None,
        };

        let sampler = match request.sampler {
            Some(kind) => kind,
            None => m.defaults.sampler.parse::<SamplerKind>().map_err(|e| {
                RuntimeError::Request(format!("manifest.json defaults.sampler: {e}"))
            })?,
        };
        let sampler = match sampler {
            SamplerKind::Ddim { .. } => SamplerKind::Ddim { eta },
            other => other,
        };
        let mut sampler = sampler.build(&self.schedule, steps);

        let (c, side) = (m.latent_channels, m.latent_size(size));
        let per_image = c * side * side;
        let mut rngs: Vec<ChaCha8Rng> = (0..n)
            .map(|i| ChaCha8Rng::seed_from_u64(request.seed.wrapping_add(i as u64)))
            .collect();
        let init = sampler.init_noise_scale();
        let mut x: Vec<f32> = rngs
            .iter_mut()
            .flat_map(|r| gaussian(r, per_image))
            .map(|v| v * init)
            .collect();
        let total = sampler.timesteps().len();
        for i in 0..total {
            let t = sampler.timesteps()[i];
            let scale = sampler.input_scale(i);
            let input: Vec<f32> = x.iter().map(|v| v * scale).collect();
            let batch = if guided { 2 * n } else { n };
            let sample_data = if guided {
                [input.clone(), input].concat()
            } else {
                input
            };
            let sample = Tensor::f32(&[batch, c, side, side], sample_data)?;
            let timestep = Tensor::f32(&[batch], vec![t as f32; batch])?;
            let mut inputs = vec![("sample", &sample), ("timestep", &timestep)];
            if let Some(context) = &context {
                inputs.push(("context", context));
            }
            let eps = self.unet.run(&inputs)?;
            let eps = eps[0]
                .as_f32()
                .ok_or_else(|| RuntimeError::Request("eps is not f32".into()))?;
            let eps: Vec<f32> = if guided {
                let (cond, uncond) = eps.split_at(n * per_image);
                uncond
                    .iter()
                    .zip(cond)
                    .map(|(u, c)| u + (guidance as f32) * (c - u))
                    .collect()
            } else {
                eps.to_vec()
            };
            let noise: Option<Vec<f32>> = sampler.needs_noise().then(|| {
                rngs.iter_mut()
                    .flat_map(|r| gaussian(r, per_image))
                    .collect()
            });
            x = sampler.step(i, &x, &eps, noise.as_deref());
            let report = Progress {
                step: i + 1,
                total,
                latents: &x,
            };
            if !progress(report) {
                return Err(RuntimeError::Cancelled);
            }
        }
        self.decode(x, n, side)
    }

    /// (conditional, unconditional) context of the batch, or None for models without one.
    fn context(&mut self, request: &Generate) -> Result<Option<(Tensor, Tensor)>, RuntimeError> {
        let Some(encoder) = self.encoder.as_mut() else {
            return Ok(None);
        };
        let n = request.prompts.len();
        let (ids, uncond_ids) = match &self.bundle.manifest.conditioning {
            BundleConditioning::Text { max_length, .. } => {
                let tokenizer = self
                    .bundle
                    .tokenizer
                    .as_ref()
                    .expect("text bundles load their tokenizer");
                let encode = |text: &str| tokenizer.encode(text, *max_length).map(|e| e.ids);
                let mut ids = Vec::new();
                for prompt in &request.prompts {
                    ids.extend(encode(prompt)?);
                }
                let negative = encode(&request.negative_prompt)?;
                let uncond: Vec<i64> = (0..n).flat_map(|_| negative.clone()).collect();
                (
                    Tensor::i64(&[n, *max_length], ids)?,
                    Tensor::i64(&[n, *max_length], uncond)?,
                )
            }
            BundleConditioning::Class {
                classes,
                class_names,
            } => {
                let labels = request
                    .prompts
                    .iter()
                    .map(|p| class_id(p, *classes, class_names))
                    .collect::<Result<Vec<_>, _>>()?;
                (
                    Tensor::i64(&[n], labels)?,
                    Tensor::i64(&[n], vec![*classes as i64; n])?,
                )
            }
            _ => return Ok(None),
        };
        let name = encoder.input_names()[0].clone();
        let cond = encoder.run(&[(&name, &ids)])?.remove(0);
        let uncond = encoder.run(&[(&name, &uncond_ids)])?.remove(0);
        Ok(Some((cond, uncond)))
    }

    fn decode(
        &mut self,
        latents: Vec<f32>,
        n: usize,
        side: usize,
    ) -> Result<Vec<Image>, RuntimeError> {
        let m = &self.bundle.manifest;
        let c = m.latent_channels;
        let pixels = match self.decoder.as_mut() {
            Some(decoder) => {
                let scale = m.latent_scale_factor as f32;
                let unscaled: Vec<f32> = latents.iter().map(|v| v / scale).collect();
                let latent = Tensor::f32(&[n, c, side, side], unscaled)?;
                decoder.run(&[("latent", &latent)])?.remove(0)
            }
            None => Tensor::f32(&[n, c, side, side], latents)?,
        };
        to_images(&pixels)
    }
}

fn class_id(prompt: &str, classes: usize, names: &[String]) -> Result<i64, RuntimeError> {
    if let Some(i) = names.iter().position(|n| n == prompt) {
        return Ok(i as i64);
    }
    match prompt.parse::<usize>() {
        Ok(id) if id < classes => Ok(id as i64),
        _ => Err(RuntimeError::Request(format!(
            "'{prompt}' is neither a class name of this bundle nor an id below {classes}"
        ))),
    }
}

fn gaussian(rng: &mut ChaCha8Rng, count: usize) -> Vec<f32> {
    (0..count).map(|_| StandardNormal.sample(rng)).collect()
}

/// Two batches of equal trailing shape, one after the other.
fn concat_batch(a: &Tensor, b: &Tensor) -> Result<Tensor, RuntimeError> {
    let (Some(x), Some(y)) = (a.as_f32(), b.as_f32()) else {
        return Err(RuntimeError::Request("contexts are not f32".into()));
    };
    let mut shape = a.shape().to_vec();
    shape[0] += b.shape()[0];
    Tensor::f32(&shape, [x, y].concat())
}

/// [N, 3, H, W] in [-1, 1] to 8-bit RGB images (channels beyond three are dropped, one
/// channel is shown as grey).
fn to_images(pixels: &Tensor) -> Result<Vec<Image>, RuntimeError> {
    let (&[n, c, h, w], Some(data)) = (pixels.shape(), pixels.as_f32()) else {
        return Err(RuntimeError::Request(format!(
            "decoded shape {:?} is not an image batch",
            pixels.shape()
        )));
    };
    let byte = |v: f32| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
    Ok((0..n)
        .map(|i| {
            let mut rgb = Vec::with_capacity(h * w * 3);
            for p in 0..h * w {
                for ch in 0..3 {
                    rgb.push(byte(data[(i * c + ch.min(c - 1)) * h * w + p]));
                }
            }
            Image {
                width: w,
                height: h,
                rgb,
            }
        })
        .collect())
}
