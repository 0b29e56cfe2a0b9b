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

use ldm_core::conditions::{class_ids, text_ids};
use ldm_core::guided::repeat;
use ldm_core::manifest::{BundleConditioning, ConcatKind, FirstStage, GraphRole};
use ldm_core::{GuidedSampling, KnownLatent, SamplerKind};

use crate::image_tasks::{image_tensor, mask_at, mask_sampled, masked};
use crate::plan::{self, Plan, Task, DEFAULT_MEMORY_BUDGET};
use crate::{Backend, Bundle, RequestError, RuntimeError, Session, Tensor};

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
    /// Image width and height in pixels, each a multiple of the manifest's `size_multiple`:
    /// the input image's size when there is one (f times it for super-resolution), else the
    /// training resolution. Larger sizes sample convolutionally (paper Fig. 9).
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Image-to-image (SDEdit, Meng et al. 2022) and inpainting start from this image, of the
    /// output size; super-resolution bundles upsample it (its sides times f).
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
            width: None,
            height: None,
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
    /// A square image of `side` pixels.
    pub fn size(self, side: usize) -> Self {
        self.dimensions(side, side)
    }
    pub fn dimensions(mut self, width: usize, height: usize) -> Self {
        self.width = Some(width);
        self.height = Some(height);
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
    /// The schedule, the weights' bytes and the memory budget that requests are planned with.
    planner: plan::Planner,
    unet: Box<dyn Session>,
    /// Text encoder or class embedder.
    conditioner: Option<Box<dyn Session>>,
    /// The first stage's encoder, opened on the first request with an input image.
    image_encoder: Option<Box<dyn Session>>,
    decoder: Option<Box<dyn Session>>,
}

/// What an input image contributes to a generation, at the latent's size.
struct ImageInputs {
    known: Option<KnownLatent>,
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
            .map_err(|e| RuntimeError::Bundle {
                path: bundle.dir().join(ldm_core::manifest::MANIFEST_FILE),
                message: format!("schedule: {e}"),
            })?;
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
        let weight_bytes = plan::loaded_weight_bytes(bundle.graph_bytes(), m);
        let planner = plan::Planner {
            manifest: m.clone(),
            schedule,
            weight_bytes,
            memory_budget: DEFAULT_MEMORY_BUDGET,
        };
        Ok(Self {
            bundle,
            backend,
            threads,
            planner,
            unet,
            conditioner,
            image_encoder: None,
            decoder,
        })
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The bytes one request may be estimated to need (see [`plan::MemoryEstimate`]); larger
    /// requests are refused before anything runs.
    pub fn set_memory_budget(&mut self, bytes: u64) {
        self.planner.memory_budget = bytes;
    }

    /// Resolves `request` against the bundle's defaults and checks it, without running
    /// anything: the sizes, sampler settings, task and memory estimate it would run with.
    pub fn plan(&self, request: &Generate) -> Result<Plan, RuntimeError> {
        Ok(self.planner.plan(request)?)
    }

    /// The planning half of this pipeline, to check requests elsewhere.
    pub fn planner(&self) -> &plan::Planner {
        &self.planner
    }

    /// Generates one image per prompt. `progress` is called after every step with the
    /// latents so far; returning false cancels.
    pub fn generate(
        &mut self,
        request: &Generate,
        progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Vec<Image>, RuntimeError> {
        let plan = self.plan(request)?;
        let setup = &plan.sampling;
        let inputs = self.image_inputs(request, &plan)?;
        let context = self.context(request, setup.guided)?;
        let mut sampling = GuidedSampling::new(&self.planner.schedule, setup.clone(), inputs.known);
        let [c, h, w] = setup.latent_shape;
        let rows = sampling.batch();
        let concat = match &inputs.concat {
            Some(one) => {
                let k = one.len() / (h * w);
                Some(Tensor::f32(&[rows, k, h, w], repeat(one, rows))?)
            }
            None => None,
        };
        while !sampling.is_done() {
            let sample = Tensor::f32(&[rows, c, h, w], sampling.model_input())?;
            let timestep = Tensor::f32(&[rows], vec![sampling.timestep() as f32; rows])?;
            let mut inputs = vec![("sample", &sample), ("timestep", &timestep)];
            if let Some(context) = &context {
                inputs.push(("context", context));
            }
            if let Some(concat) = &concat {
                inputs.push(("concat", concat));
            }
            let eps = run_finite(self.unet.as_mut(), "unet", &inputs)?;
            sampling
                .advance(eps.as_f32().expect("checked f32"))
                .map_err(|source| RuntimeError::Prediction {
                    graph: "unet",
                    source,
                })?;
            let (step, total) = sampling.progress();
            let report = Progress {
                step,
                total,
                latents: sampling.latents(),
            };
            if !progress(report) {
                return Err(RuntimeError::Cancelled);
            }
        }
        self.decode(sampling.into_latents(), setup.images, h, w)
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

    /// The known latent or the concatenated channels the planned task brings.
    fn image_inputs(
        &mut self,
        request: &Generate,
        plan: &Plan,
    ) -> Result<ImageInputs, RuntimeError> {
        let m = &self.bundle.manifest;
        let (f, channels) = (m.downsampling_factor, m.image_channels);
        let image = || {
            request
                .init_image
                .as_ref()
                .expect("the plan checked the image")
        };
        let mask = || request.mask.as_ref().expect("the plan checked the mask");
        Ok(match plan.task {
            Task::Generate => ImageInputs {
                known: None,
                concat: None,
            },
            Task::SuperResolution => ImageInputs {
                known: None,
                concat: image_tensor(image(), channels)?
                    .as_f32()
                    .map(<[f32]>::to_vec),
            },
            Task::Inpainting => {
                let mask_first = m.conditioning.concat().map(|c| c.task)
                    == Some(ConcatKind::MaskFirstInpainting);
                let concat = if mask_first {
                    let full = mask_sampled(mask(), 1);
                    let kept = masked(&image_tensor(image(), channels)?, &full)?;
                    let mut concat = mask_sampled(mask(), f);
                    concat.extend(self.encode(&kept)?);
                    concat
                } else {
                    let (small, full) = (mask_at(mask(), f), mask_at(mask(), 1));
                    let kept = masked(&image_tensor(image(), channels)?, &full)?;
                    let mut concat = self.encode(&kept)?;
                    concat.extend_from_slice(&small);
                    concat
                };
                ImageInputs {
                    known: None,
                    concat: Some(concat),
                }
            }
            Task::ImageToImage {
                first_step, masked, ..
            } => {
                let latent = self.encode(&image_tensor(image(), channels)?)?;
                ImageInputs {
                    known: Some(KnownLatent {
                        latent,
                        first_step,
                        blend: masked.then(|| mask_at(mask(), f)),
                    }),
                    concat: None,
                }
            }
        })
    }

    /// The first stage's reconstruction of `image`: encoded (KL: the posterior's mean; VQ:
    /// quantised inside the decoder) and decoded at the same size. Pixel-space bundles return
    /// the image unchanged.
    pub fn reconstruct(&mut self, image: &Image) -> Result<Image, RuntimeError> {
        let f = self.bundle.manifest.downsampling_factor;
        let (width, height) = (image.width, image.height);
        if width == 0 || height == 0 || !width.is_multiple_of(f) || !height.is_multiple_of(f) {
            return Err(RequestError::ReconstructionSize {
                factor: f,
                width,
                height,
            }
            .into());
        }
        let pixels = (width * height) as u64;
        let needed = plan::MemoryEstimate::of(
            self.planner.weight_bytes,
            plan::activation_bytes(0, 0, 1, pixels),
        )
        .total();
        if needed > self.planner.memory_budget {
            return Err(RequestError::OverBudget {
                what: format!("reconstructing a {width}x{height} image"),
                needed,
                budget: self.planner.memory_budget,
            }
            .into());
        }
        let tensor = image_tensor(image, self.bundle.manifest.image_channels)?;
        let latent = self.encode(&tensor)?;
        Ok(self.decode(latent, 1, height / f, width / f)?.remove(0))
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
        let out = run_finite(encoder.as_mut(), "encoder", &[("image", image)])?;
        let data = out.as_f32().expect("checked f32");
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
                let ids = text_ids(
                    tokenizer,
                    &request.prompts,
                    &request.negative_prompt,
                    *max_length,
                    guided,
                )
                .map_err(RequestError::from)?;
                Tensor::i64(&[rows, *max_length], ids)?
            }
            BundleConditioning::Class {
                classes,
                class_names,
            } => {
                let ids = class_ids(&request.prompts, *classes, class_names, guided)
                    .map_err(RequestError::from)?;
                Tensor::i64(&[rows], ids)?
            }
            _ => return Ok(None),
        };
        let name = encoder.input_names()[0].clone();
        let role = match self.bundle.manifest.conditioning {
            BundleConditioning::Text { .. } => GraphRole::TextEncoder,
            _ => GraphRole::ClassEmbedder,
        };
        Ok(Some(run_finite(
            encoder.as_mut(),
            role.as_str(),
            &[(&name, &ids)],
        )?))
    }

    fn decode(
        &mut self,
        latents: Vec<f32>,
        n: usize,
        height: usize,
        width: usize,
    ) -> Result<Vec<Image>, RuntimeError> {
        let m = &self.bundle.manifest;
        let shape = [n, m.latent_channels, height, width];
        let pixels = match self.decoder.as_mut() {
            Some(decoder) => {
                let scale = m.latent_scale_factor as f32;
                let unscaled: Vec<f32> = latents.iter().map(|v| v / scale).collect();
                let latent = Tensor::f32(&shape, unscaled)?;
                run_finite(decoder.as_mut(), "decoder", &[("latent", &latent)])?
            }
            None => Tensor::f32(&shape, latents)?,
        };
        to_images(&pixels)
    }
}

/// [N, 3, H, W] in [-1, 1] to 8-bit RGB images (channels beyond three are dropped, one
/// channel is shown as grey).
/// Runs `session` and returns its first output, refused when it is not f32 or holds a NaN or
/// an infinity: every network's output is checked, so damaged weights stop the request with
/// the network's name instead of producing an image.
fn run_finite(
    session: &mut dyn Session,
    graph: &'static str,
    inputs: &[(&str, &Tensor)],
) -> Result<Tensor, RuntimeError> {
    let output = session.run(inputs)?.remove(0);
    let values = output.as_f32().ok_or_else(|| RuntimeError::NotF32 {
        graph,
        output: session.output_names()[0].clone(),
    })?;
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(RuntimeError::NonFinite {
            graph,
            bad,
            total: values.len(),
        });
    }
    Ok(output)
}

fn to_images(pixels: &Tensor) -> Result<Vec<Image>, RuntimeError> {
    let (&[n, c, h, w], Some(data)) = (pixels.shape(), pixels.as_f32()) else {
        return Err(RuntimeError::NotImages {
            graph: "decoder",
            shape: pixels.shape().to_vec(),
        });
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
