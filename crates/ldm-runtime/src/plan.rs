//! The request plan: a [`Generate`] request resolved against the bundle's defaults, validated
//! once, with every size worked out and the memory it will need estimated, before any graph
//! runs. Every front end (the CLI, eval, a server, bindings) plans through
//! [`crate::Pipeline::plan`], so they all refuse the same requests with the same messages.

use ldm_core::guided::MAX_GUIDANCE;
use ldm_core::layout_plan::is_caption;
use ldm_core::manifest::{BundleConditioning, ConcatKind, FirstStage, SlicedAttention};
use ldm_core::{ConditionError, Manifest, NoiseSchedule, SamplerKind, SamplingSetup};

use crate::image_tasks::check_binary;
use crate::tiled::Tiling;
use crate::{Bundle, Generate, Image, RequestError, RuntimeError};

/// Largest image side a request may ask for, in pixels.
pub const MAX_SIDE: usize = 4096;
/// Images one request may ask for (the CLI's `--batch` is a u16); the memory budget usually
/// refuses far fewer.
pub const MAX_IMAGES: usize = u16::MAX as usize;
/// Memory a pipeline lets one request use unless told otherwise
/// ([`crate::Pipeline::set_memory_budget`]).
pub const DEFAULT_MEMORY_BUDGET: u64 = 16_000_000_000;

/// What a request does with its input image, if any.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// From noise (text-, class-conditional or unconditional).
    Generate,
    /// SDEdit (Meng et al. 2022): the image noised to `first_step` and sampled from there; with
    /// a mask, the kept region is blended back after every step.
    ImageToImage {
        strength: f64,
        first_step: usize,
        masked: bool,
    },
    /// An inpainting bundle: the masked image and the mask are the UNet's extra channels.
    Inpainting,
    /// A super-resolution bundle: the low-resolution image is the UNet's extra channels.
    SuperResolution,
    /// A semantic-map bundle: the map's class shares are the UNet's extra channels.
    SemanticMap,
}

/// What planning needs of a bundle, without its graphs: cheap to clone, so that requests can
/// be checked where the pipeline is not (a server's request handlers), with the pipeline's
/// own words.
#[derive(Debug, Clone)]
pub struct Planner {
    pub(crate) manifest: Manifest,
    pub(crate) schedule: NoiseSchedule,
    pub(crate) weight_bytes: u64,
    pub(crate) memory_budget: u64,
    /// The process and engine without weights or activations ([`TRACT_ENGINE_BYTES`],
    /// [`ORT_ENGINE_BYTES`]).
    pub(crate) engine_bytes: u64,
    /// Rows the engine runs at once, if it runs them in turns (tract: one per thread).
    pub(crate) rows_at_once: Option<u64>,
    /// The engine's live activations against the model's ([`ORT_ACTIVATION_FACTOR`]).
    pub(crate) activation_factor: u64,
}

impl Planner {
    /// The planner of `bundle`'s requests, within [`DEFAULT_MEMORY_BUDGET`].
    pub fn new(bundle: &Bundle) -> Result<Planner, RuntimeError> {
        let manifest = bundle.manifest.clone();
        let schedule = manifest
            .schedule
            .noise_schedule()
            .map_err(|e| RuntimeError::Bundle {
                path: bundle.dir().join(ldm_core::manifest::MANIFEST_FILE),
                message: format!("schedule: {e}"),
            })?;
        let weight_bytes = loaded_weight_bytes(bundle.graph_bytes(), &manifest);
        Ok(Planner {
            manifest,
            schedule,
            weight_bytes,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            engine_bytes: ORT_ENGINE_BYTES,
            rows_at_once: None,
            activation_factor: ORT_ACTIVATION_FACTOR,
        })
    }

    /// Estimates for `backend` on `threads` threads (by default, ONNX Runtime's, the larger).
    pub fn for_engine(&mut self, backend: crate::Backend, threads: usize) {
        if backend == crate::Backend::Tract {
            // tract runs a call's rows in turns on its threads (`TractSession::run`); ONNX
            // Runtime runs them as one batch.
            self.engine_bytes = TRACT_ENGINE_BYTES;
            self.rows_at_once = Some(threads as u64);
            self.activation_factor = 1;
        } else {
            self.engine_bytes = ORT_ENGINE_BYTES;
            self.rows_at_once = None;
            self.activation_factor = ORT_ACTIVATION_FACTOR;
        }
    }

    /// The manifest of the bundle the plans are for.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The bytes one request (or batch) may be estimated to need.
    pub fn memory_budget(&self) -> u64 {
        self.memory_budget
    }

    /// The estimate of one UNet call over `rows` rows of `plan`'s latent: what a batch of
    /// requests sharing the call needs (see [`crate::Pipeline::step`]).
    pub fn batch_memory(&self, rows: usize, plan: &Plan) -> MemoryEstimate {
        let latent_pixels = (plan.latent_width * plan.latent_height) as u64;
        self.footprint()
            .estimate(self.activations().unet(rows as u64, latent_pixels))
    }

    /// The activation model of the bundle's graphs.
    /// What every estimate of the bundle's requests counts.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            engine: self.engine_bytes,
            weights: self.weight_bytes,
            activations: self.activations(),
        }
    }

    pub fn activations(&self) -> Activations {
        Activations {
            rows_at_once: self.rows_at_once,
            factor: self.activation_factor,
            ..Activations::of(&self.manifest)
        }
    }

    pub fn plan(&self, request: &Generate) -> Result<Plan, RequestError> {
        plan(
            request,
            &self.manifest,
            &self.schedule,
            self.footprint(),
            self.memory_budget,
        )
    }
}

/// A request, resolved and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub width: usize,
    pub height: usize,
    pub latent_width: usize,
    pub latent_height: usize,
    /// Sampler (with DDIM's eta), steps, guidance, seed, images and latent shape.
    pub sampling: SamplingSetup,
    /// DDIM's eta as resolved (other samplers ignore it).
    pub eta: f64,
    pub task: Task,
    /// How the first stage decodes the latents: whole, or in tiles when a whole decode would
    /// not fit the budget.
    pub decode: Decode,
    pub memory: MemoryEstimate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    Whole,
    Tiled(Tiling),
}

/// Bytes a request is estimated to need at its peak: the process and its engine, the weights
/// of the graphs it opens, and the activations of the largest network call ([`Activations`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub engine: u64,
    pub weights: u64,
    pub activations: u64,
}

/// What an estimate counts besides the request: the engine's bytes, the bundle's weights and
/// the model of its activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub engine: u64,
    pub weights: u64,
    pub activations: Activations,
}

impl Footprint {
    /// The estimate of a call whose activations take `activations` bytes at its peak.
    pub fn estimate(&self, activations: u64) -> MemoryEstimate {
        MemoryEstimate {
            engine: self.engine,
            weights: self.weights,
            activations,
        }
    }
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.engine + self.weights + self.activations
    }
}

/// The activation model of a bundle's graphs: a coarse upper bound that needs only the
/// manifest. Per latent pixel of a UNet row, [`UNET_BYTES_PER_LATENT_PIXEL`]; per output pixel
/// of the decoder, [`DECODER_BYTES_PER_PIXEL`]; and per pair of positions whose attention
/// scores are held at once, [`ATTENTION_BYTES_PER_PAIR`] in the UNet and
/// [`DECODER_ATTENTION_BYTES_PER_PAIR`] in the decoder's middle block (self-attention at the
/// full latent resolution). Attending whole holds every pair, so it grows with the square of
/// the latent's area and dominates large images; a bundle exported with
/// [`SlicedAttention`] holds `chunk` queries' pairs above `above` positions, which keeps the
/// growth linear. Measured against the estimate in BENCHMARKS.md ("Peak memory against image
/// size").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activations {
    sliced: Option<SlicedAttention>,
    /// Pixel-space bundles have no decoder to run.
    has_decoder: bool,
    /// Rows (or images) whose activations are live at once; `None`: all of a call's.
    rows_at_once: Option<u64>,
    /// The engine's live bytes per byte of the model's.
    factor: u64,
}

impl Activations {
    /// The model of an engine that runs all of a call's rows at once (an upper bound).
    pub fn of(manifest: &Manifest) -> Self {
        Self {
            sliced: manifest.sliced_attention,
            has_decoder: manifest.first_stage != FirstStage::Identity,
            rows_at_once: None,
            factor: 1,
        }
    }

    /// The bytes of `rows` rows of `per_row` bytes each, as the engine holds them: the rows
    /// live at once, each one beyond the first with its thread's [`ROW_THREAD_BYTES`], and
    /// each thread left without a row of its own splitting the rows' matrix products, with
    /// [`SPLIT_THREAD_SHARE`] of a row's bytes.
    fn live(&self, rows: u64, per_row: u64) -> u64 {
        let live = self.rows_at_once.map_or(rows, |n| rows.min(n));
        let threads = self.rows_at_once.map_or(0, |n| {
            let row_threads = live.saturating_sub(1).saturating_mul(ROW_THREAD_BYTES);
            let spare = n.saturating_sub(live);
            let split = per_row
                .saturating_mul(spare)
                .saturating_mul(SPLIT_THREAD_SHARE.0)
                / SPLIT_THREAD_SHARE.1;
            row_threads.saturating_add(split)
        });
        live.saturating_mul(per_row)
            .saturating_mul(self.factor)
            .saturating_add(threads)
    }

    /// Pairs of positions whose scores are held at once when `positions` attend to each other.
    fn pairs_at_once(&self, positions: u64) -> u64 {
        let queries = self
            .sliced
            .map_or(positions, |s| s.queries_at_once(positions));
        queries.saturating_mul(positions)
    }

    /// One UNet call over `rows` rows of a latent of `latent_pixels` pixels.
    pub fn unet(&self, rows: u64, latent_pixels: u64) -> u64 {
        let per_row = latent_pixels
            .saturating_mul(UNET_BYTES_PER_LATENT_PIXEL)
            .saturating_add(
                self.pairs_at_once(latent_pixels)
                    .saturating_mul(ATTENTION_BYTES_PER_PAIR),
            );
        self.live(rows, per_row)
    }

    /// One decoder call over `images` latents of `latent_pixels` pixels, each side upsampled
    /// `factor` times.
    pub fn decoder(&self, images: u64, latent_pixels: u64, factor: u64) -> u64 {
        if !self.has_decoder {
            return 0;
        }
        let per_image = latent_pixels
            .saturating_mul(factor.saturating_mul(factor))
            .saturating_mul(DECODER_BYTES_PER_PIXEL)
            .saturating_add(
                self.pairs_at_once(latent_pixels)
                    .saturating_mul(DECODER_ATTENTION_BYTES_PER_PAIR),
            );
        self.live(images, per_image)
    }
}

/// The process, tract and its optimised plans, without weights or activations (the emoji
/// bundle's peak at 64x64 on tract, 132 MB, less its 46 MB of weights, rounded up).
pub const TRACT_ENGINE_BYTES: u64 = 100_000_000;
/// The same for ONNX Runtime (250 MB at 64x64 less the weights, rounded up).
pub const ORT_ENGINE_BYTES: u64 = 220_000_000;
/// ONNX Runtime's memory arena holds about twice the live activations the model counts
/// (923 MB measured at 512x512 against 668 MB modelled at a factor of 1).
pub const ORT_ACTIVATION_FACTOR: u64 = 2;
/// What each of tract's row threads beyond the first adds: its own allocator arena, which
/// keeps what the thread freed (at 256x256, two threads peak 73 MB above one, for 50 MB of
/// modelled row activations).
pub const ROW_THREAD_BYTES: u64 = 40_000_000;
/// What a tract thread adds that splits a call's matrix products instead of running a row of
/// its own, as a fraction of the row's bytes: its packed panels of the operands (at 512x512
/// on two threads against one, the decoder peaked 195 MB higher for 369 MB of modelled
/// activations, the UNet's single row 109 MB higher for 201 MB; 0.53 and 0.54, rounded up).
pub const SPLIT_THREAD_SHARE: (u64, u64) = (3, 5);
/// Live feature maps of one UNet row per latent pixel: about 32 tensors of 64 f32 channels.
pub const UNET_BYTES_PER_LATENT_PIXEL: u64 = 32 * 64 * 4;
/// Attention scores and their softmax, f32, for two heads, per pair of latent pixels.
pub const ATTENTION_BYTES_PER_PAIR: u64 = 2 * 2 * 4;
/// Live feature maps of the decoder per output pixel: about 10 tensors of 32 f32 channels.
pub const DECODER_BYTES_PER_PIXEL: u64 = 10 * 32 * 4;
/// Attention scores and their softmax, f32, for the decoder's one head, per pair of latent
/// pixels.
pub const DECODER_ATTENTION_BYTES_PER_PAIR: u64 = 2 * 4;

/// `bytes` for messages: in megabytes below a gigabyte, else in gigabytes.
pub fn memory_size(bytes: u64) -> String {
    match bytes as f64 {
        b if b < 1e9 => format!("{:.0} MB", b / 1e6),
        b => format!("{:.1} GB", b / 1e9),
    }
}

/// Resolves and checks `request` against the bundle (`manifest`, its `schedule`, and what
/// its estimates count besides the request) within `budget` bytes.
pub fn plan(
    request: &Generate,
    manifest: &Manifest,
    schedule: &NoiseSchedule,
    footprint: Footprint,
    budget: u64,
) -> Result<Plan, RequestError> {
    let m = manifest;
    let images = request.prompts.len();
    if images == 0 {
        return Err(RequestError::NoPrompts);
    }
    if images > MAX_IMAGES {
        return Err(RequestError::TooManyImages {
            asked: images,
            max: MAX_IMAGES,
        });
    }
    if let BundleConditioning::Text {
        layout: Some(layout),
        ..
    } = &m.conditioning
    {
        // A planner bundle's captions are planned into layouts when the request runs.
        let planned = m.conditioning.planner().is_some();
        for prompt in request.prompts.iter().chain([&request.negative_prompt]) {
            if !(planned && is_caption(prompt)) {
                layout.prompt(prompt).map_err(ConditionError::from)?;
            }
        }
    }
    let task = task_kind(m, request)?;
    // The output follows the input image when no size is asked (f times it for
    // super-resolution); otherwise the training resolution.
    let factor = if task == TaskKind::SuperResolution {
        m.downsampling_factor
    } else {
        1
    };
    let from_image =
        |side: fn(&Image) -> usize| request.init_image.as_ref().map(|i| side(i) * factor);
    let map = request.semantic_map.as_ref();
    let width = request
        .width
        .or_else(|| from_image(|i| i.width))
        .or(map.map(|m| m.width))
        .unwrap_or(m.resolution);
    let height = request
        .height
        .or_else(|| from_image(|i| i.height))
        .or(map.map(|m| m.height))
        .unwrap_or(m.resolution);
    for (what, side) in [("width", width), ("height", height)] {
        if side == 0 || !side.is_multiple_of(m.size_multiple) || side > MAX_SIDE {
            return Err(RequestError::Size {
                what,
                side,
                multiple: m.size_multiple,
                max: MAX_SIDE,
            });
        }
    }
    // Checked whatever the task, so that a value out of range is never silently unused.
    if let Some(strength) = request.strength.filter(|s| !(0.0..=1.0).contains(s)) {
        return Err(RequestError::Strength(strength));
    }
    let steps = request.steps.unwrap_or(m.defaults.steps);
    if !(1..=schedule.timesteps()).contains(&steps) {
        return Err(RequestError::Steps {
            steps,
            max: schedule.timesteps(),
        });
    }
    let guidance = request.guidance.unwrap_or(m.defaults.guidance);
    let eta = request.eta.unwrap_or(m.defaults.eta);
    if !(-MAX_GUIDANCE..=MAX_GUIDANCE).contains(&guidance) || !(0.0..=1.0).contains(&eta) {
        return Err(RequestError::Guidance { guidance, eta });
    }
    let sampler = match request.sampler {
        Some(kind) => kind,
        None => m
            .defaults
            .sampler
            .parse::<SamplerKind>()
            .map_err(RequestError::DefaultSampler)?,
    };
    let sampler = sampler.with_eta(eta);
    let classes = m.conditioning.concat().map_or(0, |c| c.channels);
    let task = check_images(
        request,
        task,
        (m.downsampling_factor, classes),
        (width, height),
        steps,
    )?;

    let has_conditioner = matches!(
        m.conditioning,
        BundleConditioning::Text { .. } | BundleConditioning::Class { .. }
    );
    let guided = has_conditioner && guidance != 1.0;
    let f = m.downsampling_factor;
    let (latent_width, latent_height) = (width / f, height / f);
    let sampling = SamplingSetup {
        sampler,
        steps,
        guidance,
        guided,
        seed: request.seed,
        images,
        latent_shape: [m.latent_channels, latent_height, latent_width],
    };
    let (decode, memory) = decoding(m, &sampling, footprint, budget);
    if memory.total() > budget {
        return Err(RequestError::OverBudget {
            what: format!(
                "{images} image(s) of {width}x{height} ({:.1} megapixels)",
                (images * width * height) as f64 / 1e6
            ),
            needed: memory.total(),
            budget,
        });
    }
    Ok(Plan {
        width,
        height,
        latent_width,
        latent_height,
        sampling,
        eta,
        task,
        decode,
        memory,
    })
}

/// A whole decode if it fits `budget`, else the largest tiles that do (no smaller than the
/// training resolution's latent, the size the decoder was trained at), with the estimate.
fn decoding(
    m: &Manifest,
    sampling: &SamplingSetup,
    footprint: Footprint,
    budget: u64,
) -> (Decode, MemoryEstimate) {
    let [_, h, w] = sampling.latent_shape;
    let f = m.downsampling_factor as u64;
    let (rows, images) = (sampling.rows() as u64, sampling.images as u64);
    let activations = footprint.activations;
    let unet = activations.unet(rows, (h * w) as u64);
    let estimate = |decoded_images: u64, decoded_latent_pixels: u64, extra: u64| {
        let decoder = activations.decoder(decoded_images, decoded_latent_pixels, f);
        footprint.estimate(unet.max(decoder).saturating_add(extra))
    };
    // Values of the decoded images, all held at the end: as f32 (the engine's output and its
    // copy joined from rows, or the tiles' blend and its weights) and as 8-bit images.
    let decoded_values = images * 3 * (h * w) as u64 * f * f;
    let whole = estimate(images, (h * w) as u64, decoded_values * (2 * 4 + 1));
    let smallest = (m.resolution / m.downsampling_factor).max(1);
    if whole.total() <= budget || m.first_stage == FirstStage::Identity || h.max(w) <= smallest {
        return (Decode::Whole, whole);
    }
    let blended = decoded_values * (4 + 1) + (h * w) as u64 * f * f * 4;
    let mut tile = h.max(w);
    loop {
        tile = (tile / 2).max(smallest);
        let tiled = estimate(1, (tile * tile) as u64, blended);
        if tiled.total() <= budget || tile == smallest {
            return (Decode::Tiled(Tiling::new(tile)), tiled);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TaskKind {
    Generate,
    ImageToImage,
    Inpainting,
    SuperResolution,
    SemanticMap,
}

/// The task the bundle and the request's images make.
fn task_kind(m: &Manifest, request: &Generate) -> Result<TaskKind, RequestError> {
    let concat = m.conditioning.concat().map(|c| c.task);
    match (concat, &request.semantic_map) {
        (Some(ConcatKind::SemanticMap), None) => {
            return Err(RequestError::TaskNeeds("a semantic map"))
        }
        (Some(ConcatKind::SemanticMap), Some(_)) => {
            if request.init_image.is_some() || request.mask.is_some() {
                return Err(RequestError::NotTaken(
                    "an input image or a mask (it draws from its semantic map)",
                ));
            }
            return Ok(TaskKind::SemanticMap);
        }
        (_, Some(_)) => return Err(RequestError::NotTaken("a semantic map")),
        (_, None) => {}
    }
    Ok(match (concat, &request.init_image, &request.mask) {
        (Some(ConcatKind::SuperResolution), Some(_), _) => TaskKind::SuperResolution,
        (Some(ConcatKind::SuperResolution), None, _) => {
            return Err(RequestError::TaskNeeds(
                "an input image (the low-resolution one)",
            ))
        }
        (Some(task), Some(_), Some(_)) if task.is_inpainting() => TaskKind::Inpainting,
        (Some(_), _, _) => return Err(RequestError::TaskNeeds("an input image and a mask")),
        (None, Some(_), _) => TaskKind::ImageToImage,
        (None, None, Some(_)) => return Err(RequestError::MaskWithoutImage),
        (None, None, None) => TaskKind::Generate,
    })
}

/// Checks the input image and mask against the planned size, and works out where sampling
/// starts.
fn check_images(
    request: &Generate,
    task: TaskKind,
    (f, classes): (usize, usize),
    (width, height): (usize, usize),
    steps: usize,
) -> Result<Task, RequestError> {
    if let Some(mask) = &request.mask {
        check_binary(mask)?;
        expect_size(mask, "mask", width, height)?;
    }
    let image = request.init_image.as_ref();
    Ok(match task {
        TaskKind::Generate => Task::Generate,
        TaskKind::SemanticMap => {
            let map = request.semantic_map.as_ref().expect("the task has a map");
            if (map.width, map.height) != (width, height) {
                return Err(RequestError::ImageSize {
                    what: "semantic map",
                    got: (map.width, map.height),
                    needed: (width, height),
                });
            }
            map.check(classes, f)?;
            Task::SemanticMap
        }
        TaskKind::SuperResolution => {
            let image = image.expect("super-resolution has an image");
            expect_size(image, "low-resolution image", width / f, height / f)?;
            Task::SuperResolution
        }
        TaskKind::Inpainting => {
            expect_size(
                image.expect("inpainting has an image"),
                "input image",
                width,
                height,
            )?;
            Task::Inpainting
        }
        TaskKind::ImageToImage => {
            expect_size(
                image.expect("image-to-image has an image"),
                "input image",
                width,
                height,
            )?;
            let masked = request.mask.is_some();
            let strength = request.strength.unwrap_or(if masked { 1.0 } else { 0.75 });
            if !(0.0..=1.0).contains(&strength) {
                return Err(RequestError::Strength(strength));
            }
            // Noise the image to the step `strength` of the way back, sample from there.
            let first_step = steps - ((steps as f64 * strength).round() as usize).min(steps);
            Task::ImageToImage {
                strength,
                first_step,
                masked,
            }
        }
    })
}

/// The check every input image goes through: the size the task needs.
fn expect_size(
    image: &Image,
    what: &'static str,
    width: usize,
    height: usize,
) -> Result<(), RequestError> {
    if image.width != width || image.height != height {
        return Err(RequestError::ImageSize {
            what,
            got: (image.width, image.height),
            needed: (width, height),
        });
    }
    Ok(())
}

/// Bytes of a bundle's weights once loaded: its graph files, widened to f32 when stored as f16.
pub fn loaded_weight_bytes(file_bytes: u64, manifest: &Manifest) -> u64 {
    match manifest.precision {
        ldm_core::manifest::Precision::F32 => file_bytes,
        _ => file_bytes.saturating_mul(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_attention_grows_with_the_square_of_the_latent_area_and_sliced_does_not() {
        // The emoji bundle at 64x64 (16x16 latents) and 512x512 (128x128), guided batch 1.
        let whole = Activations {
            sliced: None,
            has_decoder: true,
            rows_at_once: None,
            factor: 1,
        };
        let sliced = Activations {
            sliced: Some(SlicedAttention::DEFAULT),
            ..whole
        };
        let (small, large) = (16 * 16, 128 * 128);
        assert!(whole.unet(2, small) < 10_000_000);
        assert_eq!(whole.unet(2, small), sliced.unet(2, small));
        assert!((8_000_000_000..9_500_000_000).contains(&whole.unet(2, large)));
        assert!(sliced.unet(2, large) * 20 < whole.unet(2, large));
        assert!(whole.decoder(1, large, 4) > 2 * sliced.decoder(1, large, 4));
        assert_eq!(whole.unet(u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(sliced.decoder(u64::MAX, u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn rows_run_in_turns_hold_only_their_own_activations() {
        let all = Activations {
            sliced: Some(SlicedAttention::DEFAULT),
            has_decoder: true,
            rows_at_once: None,
            factor: 1,
        };
        let one = Activations {
            rows_at_once: Some(1),
            ..all
        };
        let two = Activations {
            rows_at_once: Some(2),
            ..all
        };
        let pixels = 128 * 128;
        assert_eq!(all.unet(2, pixels), 2 * one.unet(2, pixels));
        assert_eq!(one.unet(2, pixels), one.unet(1, pixels));
        assert_eq!(all.decoder(4, pixels, 4), 4 * one.decoder(4, pixels, 4));
        assert_eq!(two.unet(4, pixels), all.unet(2, pixels) + ROW_THREAD_BYTES);
        // One row on two threads: the second splits its products.
        assert_eq!(two.decoder(1, pixels, 4), all.decoder(1, pixels, 4) * 8 / 5);
        assert_eq!(one.unet(u64::MAX, u64::MAX), u64::MAX);
    }
}
