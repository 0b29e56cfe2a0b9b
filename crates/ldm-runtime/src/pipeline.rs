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

use std::borrow::Cow;

use ldm_core::conditions::class_ids;
use ldm_core::guided::repeat;
use ldm_core::layout_plan::is_caption;
use ldm_core::manifest::{BundleConditioning, ConcatKind, FirstStage, GraphRole};
use ldm_core::semantic::class_shares;
use ldm_core::ConditionError;
use ldm_core::{GuidedSampling, KnownLatent};

use crate::image_tasks::{image_tensor, mask_at, mask_sampled, masked};
use crate::layout_planner::LayoutPlanner;
use crate::plan::{self, Decode, Plan, Task};
use crate::tiled::decode_tiled;
use crate::{
    Backend, Bundle, Generate, Image, Progress, RequestError, RuntimeError, Session, Tensor,
};

pub struct Pipeline {
    bundle: Bundle,
    backend: Backend,
    threads: usize,
    /// The schedule, the weights' bytes and the memory budget that requests are planned with.
    planner: plan::Planner,
    unet: Box<dyn Session>,
    /// Text encoder or class embedder.
    conditioner: Option<Box<dyn Session>>,
    /// A layout bundle's caption reader.
    layout_planner: Option<Box<dyn Session>>,
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

/// A request under way: planned, its context and input image encoded, sampled one
/// [`Pipeline::step`] at a time (alone or batched with others), then decoded by
/// [`Pipeline::finish`].
pub struct Generation {
    plan: Plan,
    sampling: GuidedSampling,
    /// The prompts' context then, when guided, the unconditional one: [rows, ...].
    context: Option<Tensor>,
    /// The UNet's `concat` input, one copy per row: [rows, k, h, w].
    concat: Option<Tensor>,
}

impl Generation {
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn is_done(&self) -> bool {
        self.sampling.is_done()
    }

    /// The steps done so far and the latents after the last one.
    pub fn progress(&self) -> Progress<'_> {
        let (step, total) = self.sampling.progress();
        Progress {
            step,
            total,
            latents: self.sampling.latents(),
        }
    }

    /// Rows this generation adds to a UNet call: its images, twice when guided.
    pub fn rows(&self) -> usize {
        self.sampling.batch()
    }

    /// Whether the two can share a UNet call: the same latent shape (samplers, steps,
    /// guidance and timesteps may differ; each row gets its own timestep).
    pub fn batches_with(&self, other: &Generation) -> bool {
        self.plan.sampling.latent_shape == other.plan.sampling.latent_shape
            && self.concat.is_some() == other.concat.is_some()
    }
}

impl Pipeline {
    /// Opens the graphs generation needs on `backend` with `threads` threads.
    pub fn new(bundle: Bundle, backend: Backend, threads: usize) -> Result<Self, RuntimeError> {
        let mut planner = plan::Planner::new(&bundle)?;
        planner.for_engine(backend, threads);
        let m = &bundle.manifest;
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
        let layout_planner = match m.conditioning.planner() {
            Some(_) => Some(bundle.session(GraphRole::Planner, backend, threads)?),
            None => None,
        };
        let decoder = match m.first_stage {
            FirstStage::Identity => None,
            _ => Some(bundle.session(GraphRole::Decoder, backend, threads)?),
        };
        Ok(Self {
            bundle,
            backend,
            threads,
            planner,
            unet,
            conditioner,
            layout_planner,
            image_encoder: None,
            decoder,
        })
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// What a layout bundle with a planner draws for each prompt: a caption's planned layout
    /// as JSON (a layout's JSON and the empty prompt stay as they are); other bundles' prompts
    /// unchanged.
    pub fn layouts(&mut self, prompts: &[String]) -> Result<Vec<String>, RuntimeError> {
        match self.layout_planner.as_deref_mut() {
            Some(session) => LayoutPlanner::of(&self.bundle, session).layouts(prompts),
            None => Ok(prompts.to_vec()),
        }
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
        let mut generation = self.start(request)?;
        while !generation.is_done() {
            self.step(&mut [&mut generation])?;
            if !progress(generation.progress()) {
                return Err(RuntimeError::Cancelled);
            }
        }
        self.finish(generation)
    }

    /// Plans `request` and prepares its sampling (the context encoded, any input image
    /// encoded), for [`Self::step`] to advance, alone or batched with others.
    pub fn start(&mut self, request: &Generate) -> Result<Generation, RuntimeError> {
        let plan = self.plan(request)?;
        let inputs = self.image_inputs(request, &plan)?;
        let context = self.context(request, plan.sampling.guided)?;
        let sampling =
            GuidedSampling::new(&self.planner.schedule, plan.sampling.clone(), inputs.known);
        let rows = sampling.batch();
        let concat = match inputs.concat {
            Some(one) => {
                let [_, h, w] = plan.sampling.latent_shape;
                let k = one.len() / (h * w);
                Some(Tensor::f32(&[rows, k, h, w], repeat(&one, rows))?)
            }
            None => None,
        };
        Ok(Generation {
            plan,
            sampling,
            context,
            concat,
        })
    }

    /// Runs one sampling step of every generation in `batch` in a single UNet call: their
    /// rows side by side, each with its own timestep, context and concatenated channels.
    /// All must share a latent shape ([`Generation::batches_with`]) and none be done.
    pub fn step(&mut self, batch: &mut [&mut Generation]) -> Result<(), RuntimeError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let [c, h, w] = first.plan.sampling.latent_shape;
        if !batch.iter().all(|g| first.batches_with(g) && !g.is_done()) {
            return Err(RuntimeError::MixedBatch);
        }
        let rows: usize = batch.iter().map(|g| g.sampling.batch()).sum();
        let mut sample = Vec::with_capacity(rows * c * h * w);
        let mut timestep = Vec::with_capacity(rows);
        for g in batch.iter() {
            sample.extend(g.sampling.model_input());
            timestep.extend(std::iter::repeat_n(
                g.sampling.timestep() as f32,
                g.sampling.batch(),
            ));
        }
        let sample = Tensor::f32(&[rows, c, h, w], sample)?;
        let timestep = Tensor::f32(&[rows], timestep)?;
        let context = row_input(batch, |g| g.context.as_ref())?;
        let concat = row_input(batch, |g| g.concat.as_ref())?;
        let mut inputs = vec![("sample", &sample), ("timestep", &timestep)];
        if let Some(context) = &context {
            inputs.push(("context", context.as_ref()));
        }
        if let Some(concat) = &concat {
            inputs.push(("concat", concat.as_ref()));
        }
        let eps = run_finite(self.unet.as_mut(), "unet", &inputs)?;
        let mut eps = eps.as_f32().expect("checked f32");
        for g in batch.iter_mut() {
            let (own, rest) = eps.split_at((g.sampling.batch() * c * h * w).min(eps.len()));
            g.sampling
                .advance(own)
                .map_err(|source| RuntimeError::Prediction {
                    graph: "unet",
                    source,
                })?;
            eps = rest;
        }
        Ok(())
    }

    /// Decodes a generation's latents into its images.
    pub fn finish(&mut self, generation: Generation) -> Result<Vec<Image>, RuntimeError> {
        let [_, h, w] = generation.plan.sampling.latent_shape;
        let (images, decode) = (generation.plan.sampling.images, generation.plan.decode);
        self.decode(generation.sampling.into_latents(), images, h, w, decode)
    }

    /// The images a generation under way would be if sampling stopped now: its current
    /// latents decoded (noisy early on, sharpening as the steps go).
    pub fn preview(&mut self, generation: &Generation) -> Result<Vec<Image>, RuntimeError> {
        let [_, h, w] = generation.plan.sampling.latent_shape;
        let latents = generation.sampling.latents().to_vec();
        let plan = &generation.plan;
        self.decode(latents, plan.sampling.images, h, w, plan.decode)
    }

    /// Warnings about the request that do not stop it: prompts longer than the text
    /// encoder's context, which are cut to fit.
    pub fn warnings(&self, request: &Generate) -> Result<Vec<String>, RuntimeError> {
        let Some(text) = self.bundle.text_prompts() else {
            return Ok(Vec::new());
        };
        let planner = self.bundle.manifest.conditioning.planner();
        let mut warnings = Vec::new();
        for prompt in request.prompts.iter().chain([&request.negative_prompt]) {
            // A planner bundle's captions are read by its planner, with a tokenizer of its own.
            let (truncated, max_length) = match (planner, &self.bundle.planner_tokenizer) {
                (Some(planner), Some(tokenizer)) if is_caption(prompt) => (
                    tokenizer
                        .encode(prompt, planner.max_length)
                        .map_err(|e| RequestError::from(ConditionError::from(e)))?
                        .truncated,
                    planner.max_length,
                ),
                _ => (
                    text.encode(prompt).map_err(RequestError::from)?.truncated,
                    text.max_length,
                ),
            };
            if truncated {
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
            Task::SemanticMap => {
                let map = request
                    .semantic_map
                    .as_ref()
                    .expect("the plan checked the map");
                let classes = m.conditioning.concat().map_or(0, |c| c.channels);
                ImageInputs {
                    known: None,
                    concat: Some(class_shares(map, classes, f).map_err(RequestError::from)?),
                }
            }
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
        let latent_pixels = (width * height / (f * f)) as u64;
        let footprint = self.planner.footprint();
        let needed = footprint
            .estimate(footprint.activations.decoder(1, latent_pixels, f as u64))
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
        Ok(self
            .decode(latent, 1, height / f, width / f, Decode::Whole)?
            .remove(0))
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
        if self.conditioner.is_none() {
            return Ok(None);
        }
        // A planner bundle's captions become the layouts it draws; other prompts stay.
        let mut prompts = request.prompts.clone();
        prompts.push(request.negative_prompt.clone());
        let mut prompts = self.layouts(&prompts)?;
        let negative = prompts.pop().expect("the negative prompt");
        let encoder = self.conditioner.as_mut().expect("checked above");
        let n = request.prompts.len();
        let rows = if guided { 2 * n } else { n };
        let ids = match &self.bundle.manifest.conditioning {
            BundleConditioning::Text { .. } => {
                let text = self
                    .bundle
                    .text_prompts()
                    .expect("text bundles load their tokenizer");
                let ids = text
                    .ids(&prompts, &negative, guided)
                    .map_err(RequestError::from)?;
                Tensor::i64(&[rows, text.max_length], ids)?
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

    /// Decodes scaled latents `[n, latent_channels, height, width]` into `n` images, whole or
    /// in tiles.
    pub fn decode(
        &mut self,
        latents: Vec<f32>,
        n: usize,
        height: usize,
        width: usize,
        decode: Decode,
    ) -> Result<Vec<Image>, RuntimeError> {
        let m = &self.bundle.manifest;
        let shape = [n, m.latent_channels, height, width];
        let pixels = match (self.decoder.as_mut(), decode) {
            (Some(decoder), decode) => {
                let scale = m.latent_scale_factor as f32;
                let unscaled: Vec<f32> = latents.iter().map(|v| v / scale).collect();
                let mut run = |latent: &Tensor| {
                    run_finite(decoder.as_mut(), "decoder", &[("latent", latent)])
                };
                match decode {
                    Decode::Whole => run(&Tensor::f32(&shape, unscaled)?)?,
                    Decode::Tiled(tiling) => {
                        decode_tiled(&unscaled, shape, m.downsampling_factor, tiling, &mut run)?
                    }
                }
            }
            (None, _) => Tensor::f32(&shape, latents)?,
        };
        to_images(&pixels)
    }
}

/// One UNet input of a batch, taken from each generation by `part` (its context, its
/// concatenated channels: f32 rows of one trailing shape): one generation's as it is, several
/// stacked along the first axis; None when the generations have none.
fn row_input<'a>(
    batch: &'a [&mut Generation],
    part: fn(&Generation) -> Option<&Tensor>,
) -> Result<Option<Cow<'a, Tensor>>, RuntimeError> {
    if let [one] = batch {
        return Ok(part(one).map(Cow::Borrowed));
    }
    let Some(tensors) = batch
        .iter()
        .map(|g| part(g))
        .collect::<Option<Vec<&Tensor>>>()
    else {
        return Ok(None);
    };
    let mut shape = tensors[0].shape().to_vec();
    shape[0] = tensors.iter().map(|t| t.shape()[0]).sum();
    let data = tensors
        .iter()
        .flat_map(|t| t.as_f32().expect("contexts and channels are f32"))
        .copied()
        .collect();
    Ok(Some(Cow::Owned(Tensor::f32(&shape, data)?)))
}

/// Runs `session` and returns its first output, refused when it is not f32 or holds a NaN or
/// an infinity: every network's output is checked, so damaged weights stop the request with
/// the network's name instead of producing an image.
pub(crate) fn run_finite(
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

/// [N, 3, H, W] in [-1, 1] to 8-bit RGB images (channels beyond three are dropped, one
/// channel is shown as grey).
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
