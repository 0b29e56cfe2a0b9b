//! Generation from a bundle: prompts (or class names) to images, with any of the samplers of
//! `ldm_core::samplers` in the latent space, classifier-free guidance batched into one UNet
//! call per step, and decoding by the first stage.
//!
//! ```no_run
//! use ldm_runtime::{Backend, Bundle, Generate, Pipeline};
//!
//! let bundle = Bundle::load("export/emoji-text".as_ref())?;
//! let mut pipeline = Pipeline::new(bundle, Backend::Tract, 1)?;
//! let request = Generate::new(vec!["red apple, twemoji style".into()])
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

use ldm_core::manifest::{BundleConditioning, ConcatKind, FirstStage, GraphRole};
use ldm_core::{NoiseSchedule, Sampler, SamplerKind};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::image_tasks::{blend, check_binary, expect_size, image_tensor, mask_at, masked, repeat};

/// Pixels of all images of one call at most: a guard against sizes that would exhaust memory
/// (the UNet's activations grow with it; 16.8 megapixels is 64 images of 512x512).
pub const MAX_PIXELS: usize = 1 << 24;
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
    /// Image-to-image (SDEdit, Meng et al. 2022) and inpainting start from this image, of the
    /// output size; super-resolution bundles upsample it (its side times f).
    pub init_image: Option<Image>,
    /// How much of the sampling image-to-image redoes: 1 starts from pure noise, 0 returns
    /// the image (default 0.75; inpainting 1).
    pub strength: Option<f64>,
    /// Inpainting: white where to draw, black where `init_image` stays. Works with any
    /// bundle (the known region is blended back after every step, Sec. 4.5 of the paper's
    /// baseline) and feeds the mask channels of inpainting bundles.
    pub mask: Option<Image>,
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
            init_image: None,
            strength: None,
            mask: None,
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
    pub fn init_image(mut self, image: Image, strength: f64) -> Self {
        self.init_image = Some(image);
        self.strength = Some(strength);
        self
    }
    pub fn mask(mut self, mask: Image) -> Self {
        self.mask = Some(mask);
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
    backend: Backend,
    threads: usize,
    schedule: NoiseSchedule,
    unet: Box<dyn Session>,
    /// Text encoder or class embedder.
    conditioner: Option<Box<dyn Session>>,
    /// The first stage's encoder, opened on the first request with an input image.
    image_encoder: Option<Box<dyn Session>>,
    decoder: Option<Box<dyn Session>>,
}

/// What an input image contributes to a generation, at the latent's size.
struct ImageInputs {
    /// The encoded image (scaled), and the step sampling starts from.
    start: Option<(Vec<f32>, usize)>,
    /// Latent-size mask (1 = generate) for blending the known region back.
    blend: Option<Vec<f32>>,
    /// The UNet's `concat` input of one image.
    concat: Option<Vec<f32>>,
}

impl Pipeline {
    /// Opens the graphs generation needs on `backend` with `threads` threads.
    pub fn new(bundle: Bundle, backend: Backend, threads: usize) -> Result<Self, RuntimeError> {
        let m = &bundle.manifest;
        let schedule = m
            .schedule
            .noise_schedule()
            .map_err(|e| RuntimeError::Request(e.to_string()))?;
        let unet = bundle.session(GraphRole::Unet, backend, threads)?;
        let conditioner = match m.conditioning {
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
            backend,
            threads,
            schedule,
            unet,
            conditioner,
            image_encoder: None,
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
        if size == 0 || !size.is_multiple_of(m.size_multiple) || size > 4096 {
            return Err(RuntimeError::Request(format!(
                "image size {size} is not a multiple of {} up to 4096",
                m.size_multiple
            )));
        }
        if n * size * size > MAX_PIXELS {
            return Err(RuntimeError::Request(format!(
                "{n} images of {size}x{size} are {:.1} megapixels, above the {:.1} of one call; lower the batch or the size",
                (n * size * size) as f64 / 1e6,
                MAX_PIXELS as f64 / 1e6
            )));
        }
        if let Some(mask) = &request.mask {
            check_binary(mask)?;
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
        let guided = self.conditioner.is_some() && guidance != 1.0;
        let context = self.context(request, guided)?;

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
        let images = self.image_inputs(request, size, steps)?;
        let mut rngs: Vec<ChaCha8Rng> = (0..n)
            .map(|i| ChaCha8Rng::seed_from_u64(request.seed.wrapping_add(i as u64)))
            .collect();
        let noise0: Vec<f32> = rngs
            .iter_mut()
            .flat_map(|r| gaussian(r, per_image))
            .collect();
        // x at step i of the known latent, noised with the initial noise.
        let noised_known = |sampler: &dyn Sampler, known: &[f32], i: usize| -> Vec<f32> {
            match sampler.timesteps().get(i) {
                Some(&t) => sampler
                    .sample_from_xt(i, &self.schedule.add_noise(&repeat(known, n), &noise0, t)),
                None => repeat(known, n),
            }
        };
        let first = images.start.as_ref().map_or(0, |(_, first)| *first);
        let mut x: Vec<f32> = match &images.start {
            Some((known, first)) => noised_known(sampler.as_ref(), known, *first),
            None => noise0
                .iter()
                .map(|v| v * sampler.init_noise_scale())
                .collect(),
        };
        let concat = match &images.concat {
            Some(one) => {
                let k = one.len() / (side * side);
                let batch = if guided { 2 * n } else { n };
                Some(Tensor::f32(&[batch, k, side, side], repeat(one, batch))?)
            }
            None => None,
        };
        let total = sampler.timesteps().len();
        for i in first..total {
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
            if let Some(concat) = &concat {
                inputs.push(("concat", concat));
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
            if let (Some(mask), Some((known, _))) = (&images.blend, &images.start) {
                blend(&mut x, &noised_known(sampler.as_ref(), known, i + 1), mask);
            }
            let report = Progress {
                step: i + 1 - first,
                total: total - first,
                latents: &x,
            };
            if !progress(report) {
                return Err(RuntimeError::Cancelled);
            }
        }
        self.decode(x, n, side)
    }

    /// Warnings about the request that do not stop it: prompts longer than the text
    /// encoder's context, which are cut to fit.
    pub fn warnings(&self, request: &Generate) -> Result<Vec<String>, RuntimeError> {
        let (Some(tokenizer), BundleConditioning::Text { max_length, .. }) =
            (&self.bundle.tokenizer, &self.bundle.manifest.conditioning)
        else {
            return Ok(Vec::new());
        };
        let mut warnings = Vec::new();
        for prompt in request.prompts.iter().chain([&request.negative_prompt]) {
            if tokenizer.encode(prompt, *max_length)?.truncated {
                warnings.push(format!(
                    "the prompt \"{prompt}\" is longer than the model's {max_length} tokens; its end is cut"
                ));
            }
        }
        Ok(warnings)
    }

    /// The input image, mask and concatenated channels a request brings, checked against the
    /// bundle's task.
    fn image_inputs(
        &mut self,
        request: &Generate,
        size: usize,
        steps: usize,
    ) -> Result<ImageInputs, RuntimeError> {
        let m = self.bundle.manifest.clone();
        let f = m.downsampling_factor;
        let none = ImageInputs {
            start: None,
            blend: None,
            concat: None,
        };
        let need = |what: &str| RuntimeError::Request(format!("this bundle's task needs {what}"));
        match (&m.conditioning, &request.init_image, &request.mask) {
            (
                BundleConditioning::Concat {
                    task: ConcatKind::SuperResolution,
                    ..
                },
                image,
                _,
            ) => {
                let image = image
                    .as_ref()
                    .ok_or_else(|| need("an input image (the low-resolution one)"))?;
                expect_size(image, "low-resolution image", size / f)?;
                let low = image_tensor(image, m.image_channels)?;
                Ok(ImageInputs {
                    concat: low.as_f32().map(<[f32]>::to_vec),
                    ..none
                })
            }
            (
                BundleConditioning::Concat {
                    task: ConcatKind::Inpainting,
                    ..
                },
                image,
                mask,
            ) => {
                let (Some(image), Some(mask)) = (image, mask) else {
                    return Err(need("an input image and a mask"));
                };
                expect_size(image, "input image", size)?;
                expect_size(mask, "mask", size)?;
                let (small, full) = (mask_at(mask, f), mask_at(mask, 1));
                let kept = masked(&image_tensor(image, m.image_channels)?, &full)?;
                let mut concat = self.encode(&kept)?;
                concat.extend_from_slice(&small);
                Ok(ImageInputs {
                    concat: Some(concat),
                    ..none
                })
            }
            (_, Some(image), mask) => {
                expect_size(image, "input image", size)?;
                let default = if mask.is_some() { 1.0 } else { 0.75 };
                let strength = request.strength.unwrap_or(default);
                if !(0.0..=1.0).contains(&strength) {
                    return Err(RuntimeError::Request(format!(
                        "strength {strength} is not within 0..1"
                    )));
                }
                let known = self.encode(&image_tensor(image, m.image_channels)?)?;
                // SDEdit: noise the image to the step `strength` of the way back, sample from there.
                let first = steps - ((steps as f64 * strength).round() as usize).min(steps);
                let blend = match mask {
                    Some(mask) => {
                        expect_size(mask, "mask", size)?;
                        Some(mask_at(mask, f))
                    }
                    None => None,
                };
                Ok(ImageInputs {
                    start: Some((known, first)),
                    blend,
                    concat: None,
                })
            }
            (_, None, Some(_)) => Err(RuntimeError::Request("a mask needs an input image".into())),
            (_, None, None) => Ok(none),
        }
    }

    /// The first stage's reconstruction of a square `image`: encoded (KL: the posterior's
    /// mean; VQ: quantised inside the decoder) and decoded at the same size. Pixel-space
    /// bundles return the image unchanged.
    pub fn reconstruct(&mut self, image: &Image) -> Result<Image, RuntimeError> {
        let m = &self.bundle.manifest;
        let f = m.downsampling_factor;
        if image.width != image.height || !image.width.is_multiple_of(f) || image.width == 0 {
            return Err(RuntimeError::Request(format!(
                "reconstruction takes square images with a side divisible by {f}, not {}x{}",
                image.width, image.height
            )));
        }
        if image.width * image.height > MAX_PIXELS {
            return Err(RuntimeError::Request(format!(
                "{}x{} is above the {MAX_PIXELS}-pixel budget",
                image.width, image.height
            )));
        }
        let pixels = image_tensor(image, m.image_channels)?;
        let latent = self.encode(&pixels)?;
        Ok(self.decode(latent, 1, image.width / f)?.remove(0))
    }

    /// One image [1, C, H, W] to its scaled latent (KL: the mean; VQ: before quantisation).
    fn encode(&mut self, image: &Tensor) -> Result<Vec<f32>, RuntimeError> {
        let m = &self.bundle.manifest;
        if m.first_stage == FirstStage::Identity {
            return Ok(image.as_f32().expect("image tensors are f32").to_vec());
        }
        if self.image_encoder.is_none() {
            self.image_encoder = Some(self.bundle.session(
                GraphRole::Encoder,
                self.backend,
                self.threads,
            )?);
        }
        let encoder = self.image_encoder.as_mut().expect("opened above");
        let out = encoder.run(&[("image", image)])?.remove(0);
        let data = out
            .as_f32()
            .ok_or_else(|| RuntimeError::Request("the encoder's output is not f32".into()))?;
        let latent = match m.first_stage {
            // Moments are mean then log-variance along the channels.
            FirstStage::Kl => &data[..m.latent_channels * out.shape()[2] * out.shape()[3]],
            _ => data,
        };
        let scale = m.latent_scale_factor as f32;
        Ok(latent.iter().map(|v| v * scale).collect())
    }

    /// The context of the batch in one encoder call: the prompts' and, when `guided`, then
    /// the unconditional one (negative prompt or null class) for each; None for models
    /// without a context.
    fn context(
        &mut self,
        request: &Generate,
        guided: bool,
    ) -> Result<Option<Tensor>, RuntimeError> {
        let Some(encoder) = self.conditioner.as_mut() else {
            return Ok(None);
        };
        let n = request.prompts.len();
        let rows = if guided { 2 * n } else { n };
        let ids = match &self.bundle.manifest.conditioning {
            BundleConditioning::Text { max_length, .. } => {
                let tokenizer = self
                    .bundle
                    .tokenizer
                    .as_ref()
                    .expect("text bundles load their tokenizer");
                let encode = |text: &str| tokenizer.encode(text, *max_length).map(|e| e.ids);
                let mut ids = Vec::with_capacity(rows * max_length);
                for prompt in &request.prompts {
                    ids.extend(encode(prompt)?);
                }
                if guided {
                    ids.extend(repeat(&encode(&request.negative_prompt)?, n));
                }
                Tensor::i64(&[rows, *max_length], ids)?
            }
            BundleConditioning::Class {
                classes,
                class_names,
            } => {
                let mut labels = request
                    .prompts
                    .iter()
                    .map(|p| class_id(p, *classes, class_names))
                    .collect::<Result<Vec<_>, _>>()?;
                if guided {
                    labels.extend(std::iter::repeat_n(*classes as i64, n));
                }
                Tensor::i64(&[rows], labels)?
            }
            _ => return Ok(None),
        };
        let name = encoder.input_names()[0].clone();
        Ok(Some(encoder.run(&[(&name, &ids)])?.remove(0)))
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
