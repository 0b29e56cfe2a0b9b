//! The bundle contract: `manifest.json` of an exported bundle (`export/<name>/`).
//!
//! It pins everything a runtime needs besides the graphs themselves: which graph plays which
//! role, the name, dtype and shape of every graph input and output, the latent space (channels,
//! downsampling factor, scale factor) and the noise schedule. Parsing is strict: an unknown
//! field, a missing field or a newer format is refused with a message that names it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::layout::LayoutVocabulary;
use crate::{NoiseSchedule, Prediction};

mod validate;

/// The format this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
/// A manifest is a few kilobytes; a class model's names make it longer, not this long.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read the bundle manifest: {message}")]
    Read { path: String, message: String },
    #[error("{path}: bundle format {found} is newer than this build reads ({MANIFEST_FORMAT}); use a newer ldm")]
    Newer { path: String, found: u64 },
    #[error("{path}: invalid bundle manifest: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    /// Element type of the weights and of the computation inside the graphs.
    pub precision: Precision,
    /// Side of the square training images, in pixels.
    pub resolution: usize,
    /// Image sides must be multiples of this (f times the UNet's downsampling).
    pub size_multiple: usize,
    pub image_channels: usize,
    pub first_stage: FirstStage,
    pub latent_channels: usize,
    /// Downsampling factor f of the first stage (1: diffusion on pixels).
    pub downsampling_factor: usize,
    /// Latents are multiplied by this before diffusion and divided by it before decoding.
    pub latent_scale_factor: f64,
    pub conditioning: BundleConditioning,
    pub schedule: Schedule,
    pub defaults: SamplerDefaults,
    /// Graphs by role: `encoder`, `decoder`, `unet`, and `text_encoder` or `class_embedder`.
    pub graphs: BTreeMap<GraphRole, GraphSpec>,
    /// How the graphs bound self-attention over positions; absent in bundles whose graphs
    /// always attend whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliced_attention: Option<SlicedAttention>,
    /// Post-training int8 quantisation of the UNet's convolutions and linear layers; absent
    /// in float bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<Int8Unet>,
}

/// An int8 UNet: `layers` of its convolutions and linear layers run on integer kernels
/// (`ConvInteger` / `MatMulInteger`: u8 inputs with a calibrated scale, u8 weights with a scale
/// per output channel), calibrated on the sampling trajectories of `calibration_prompts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Int8Unet {
    pub layers: usize,
    pub calibration_prompts: usize,
}

/// Self-attention over a feature map's positions holds a score for every pair of positions,
/// so its memory grows with the square of the image's area. Graphs with this in their
/// manifest attend whole up to `above` queries and, above that, `chunk` queries at a time (a
/// `Scan` over the queries whose chunk a `Where` on the query count picks): the same result,
/// with scores for `chunk` queries held at once instead of all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlicedAttention {
    pub above: usize,
    pub chunk: usize,
}

impl SlicedAttention {
    /// What exports write: whole up to a 32x32 latent (1,024 positions, 4 MB of f32 scores per
    /// head), where chunks would only add steps; 256 queries at a time above it, a matrix
    /// product still large enough to run at full speed.
    pub const DEFAULT: SlicedAttention = SlicedAttention {
        above: 1024,
        chunk: 256,
    };

    /// Queries whose scores are held at once when `queries` attend.
    pub fn queries_at_once(&self, queries: u64) -> u64 {
        if queries > self.above as u64 {
            queries.min(self.chunk as u64)
        } else {
            queries
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Weights and arithmetic in float32.
    F32,
    /// Weights stored as float16 (half the bytes), arithmetic in float32: engines widen the
    /// weights once at load.
    F16Weights,
    /// Weights and arithmetic in float16, statistics in float32: for GPU providers.
    F16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// How the first stage regularises its latent space (paper 3.1): a model configuration's
/// `autoencoder.regularizer` and a manifest's `first_stage`.
pub enum FirstStage {
    /// Slight KL penalty towards a standard normal: the encoder outputs mean and log-variance
    /// (`moments`); samples use the mean.
    Kl,
    /// Vector quantisation with a learned codebook: the encoder outputs the pre-quantisation
    /// latent; the decoder quantises.
    Vq,
    /// No first stage (f = 1): diffusion runs on pixels (the paper's LDM-1 baseline); the
    /// "latent" is the image.
    Identity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BundleConditioning {
    None,
    /// `tokenizer` (a `tokenizer.json` in the bundle) turns a prompt into `max_length` ids for
    /// the `text_encoder` graph; the empty prompt is the unconditional context.
    Text {
        tokenizer: String,
        max_length: usize,
        vocab_size: usize,
        /// Channels concatenated to the latent besides the context (Stable Diffusion's
        /// inpainting UNets).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        concat: Option<ConcatInput>,
        /// A layout-to-image model's box vocabulary: its prompts are layouts
        /// ([`crate::layout`]), which the tokenizer holds exactly the words of.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layout: Option<LayoutVocabulary>,
        /// A layout model that takes captions: its `planner` graph turns each caption into
        /// the layout drawn ([`crate::layout_plan`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        planner: Option<CaptionPlanner>,
    },
    /// Labels 0..classes for the `class_embedder` graph; label `classes` is "no class".
    Class {
        classes: usize,
        class_names: Vec<String>,
    },
    /// Extra UNet input `concat` with `channels` channels at the latent's size.
    Concat {
        task: ConcatKind,
        channels: usize,
    },
}

/// The prompts of a layout bundle's `planner` graph: captions, which `tokenizer` (a file in the
/// bundle) turns into `max_length` ids below `vocab_size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptionPlanner {
    pub tokenizer: String,
    pub max_length: usize,
    pub vocab_size: usize,
}

/// The UNet's `concat` input of a text model that also takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcatInput {
    pub task: ConcatKind,
    pub channels: usize,
}

impl BundleConditioning {
    /// The box vocabulary of a layout bundle.
    pub fn layout(&self) -> Option<&LayoutVocabulary> {
        match self {
            BundleConditioning::Text { layout, .. } => layout.as_ref(),
            _ => None,
        }
    }

    /// The caption reader of a layout bundle that takes captions.
    pub fn planner(&self) -> Option<&CaptionPlanner> {
        match self {
            BundleConditioning::Text { planner, .. } => planner.as_ref(),
            _ => None,
        }
    }

    /// The task and channel count of the UNet's `concat` input, if it has one.
    pub fn concat(&self) -> Option<ConcatInput> {
        match self {
            BundleConditioning::Concat { task, channels } => Some(ConcatInput {
                task: *task,
                channels: *channels,
            }),
            BundleConditioning::Text { concat, .. } => *concat,
            BundleConditioning::None | BundleConditioning::Class { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// What a concatenation-conditioned model sees next to its latent (paper 4.4, 4.5).
pub enum ConcatKind {
    /// The low-resolution image, at the latent's size (the image downsampled f times): image
    /// channels.
    SuperResolution,
    /// The encoded masked image (scaled) and the mask (1 = to fill) at the latent's size:
    /// latent channels + 1.
    Inpainting,
    /// The same inputs in the order and sampling of Stable Diffusion's inpainting UNets: the
    /// mask first, sampled at every f-th pixel and binarised at 0.5, then the encoded masked
    /// image: 1 + latent channels.
    MaskFirstInpainting,
    /// A semantic map (paper 4.3.2): one channel per class, each latent cell's share of
    /// pixels the map gives that class (`crate::semantic::class_shares`).
    SemanticMap,
}

impl ConcatKind {
    /// Whether the task fills a masked region of an input image.
    pub fn is_inpainting(&self) -> bool {
        matches!(
            self,
            ConcatKind::Inpainting | ConcatKind::MaskFirstInpainting
        )
    }
}

/// The forward process of a model: its configuration's `[diffusion]` section and its
/// manifest's `schedule`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    Linear(LinearSchedule),
}

/// The reference implementation's "linear" schedule of T steps: betas linear in sqrt
/// (sqrt(beta) evenly spaced from sqrt(beta_start) to sqrt(beta_end)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearSchedule {
    pub timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// What the denoiser predicts (eps when absent).
    #[serde(default, skip_serializing_if = "Prediction::is_epsilon")]
    pub prediction: Prediction,
    /// Whether DDIM's and PLMS's last step lands on alpha_bar = 1 (true when absent) or on
    /// alpha_bar_0 (diffusers' `set_alpha_to_one`; false in Stable Diffusion's schedulers).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub set_alpha_to_one: bool,
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

impl LinearSchedule {
    pub fn noise_schedule(&self) -> Result<NoiseSchedule, crate::ScheduleError> {
        Ok(
            NoiseSchedule::linear(self.timesteps, self.beta_start, self.beta_end)?
                .with_prediction(self.prediction)
                .with_set_alpha_to_one(self.set_alpha_to_one),
        )
    }
}

impl Default for LinearSchedule {
    /// T = 1000 and the 0.0015..0.0195 range of the paper's LDM configurations.
    fn default() -> Self {
        Self {
            timesteps: 1000,
            beta_start: 0.0015,
            beta_end: 0.0195,
            prediction: Prediction::Epsilon,
            set_alpha_to_one: true,
        }
    }
}

impl Schedule {
    pub fn noise_schedule(&self) -> Result<NoiseSchedule, crate::ScheduleError> {
        match self {
            Schedule::Linear(linear) => linear.noise_schedule(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerDefaults {
    pub sampler: String,
    pub steps: usize,
    pub guidance: f64,
    pub eta: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphRole {
    Encoder,
    Decoder,
    Unet,
    TextEncoder,
    ClassEmbedder,
    Planner,
}

impl GraphRole {
    pub fn as_str(self) -> &'static str {
        match self {
            GraphRole::Encoder => "encoder",
            GraphRole::Decoder => "decoder",
            GraphRole::Unet => "unet",
            GraphRole::TextEncoder => "text_encoder",
            GraphRole::ClassEmbedder => "class_embedder",
            GraphRole::Planner => "planner",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSpec {
    /// The `.onnx` file, relative to the bundle folder.
    pub file: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<DimSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Float32,
    Float16,
    Int64,
}

/// A fixed size, or a named symbolic one (`batch`, `height`, ...) chosen at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DimSpec {
    Fixed(usize),
    Symbol(String),
}

impl TensorSpec {
    pub fn new(name: &str, dtype: DType, shape: &[DimSpec]) -> Self {
        Self {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }
}

impl Manifest {
    /// Reads and validates `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let shown = path.display().to_string();
        let read_error = |message: String| ManifestError::Read {
            path: shown.clone(),
            message,
        };
        let bytes = crate::confined::read_confined(dir, MANIFEST_FILE, MAX_MANIFEST_BYTES)
            .map_err(|e| read_error(e.reason))?;
        let text = String::from_utf8(bytes).map_err(|e| read_error(e.to_string()))?;
        Self::parse(&text).map_err(|e| match e {
            ManifestError::Newer { found, .. } => ManifestError::Newer {
                path: shown.clone(),
                found,
            },
            ManifestError::Invalid { message, .. } | ManifestError::Read { message, .. } => {
                ManifestError::Invalid {
                    path: shown.clone(),
                    message,
                }
            }
        })
    }

    /// Parses and validates manifest text (errors carry an empty path).
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let invalid = |message: String| ManifestError::Invalid {
            path: String::new(),
            message,
        };
        // The format first: a newer bundle should say so, not fail on its new fields.
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        match value.get("format").and_then(|f| f.as_u64()) {
            Some(found) if found > MANIFEST_FORMAT as u64 => {
                return Err(ManifestError::Newer {
                    path: String::new(),
                    found,
                })
            }
            Some(_) => {}
            None => return Err(invalid("missing or non-integer field `format`".into())),
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        manifest.validate().map_err(invalid)?;
        Ok(manifest)
    }

    pub fn graph(&self, role: GraphRole) -> Option<&GraphSpec> {
        self.graphs.get(&role)
    }

    /// Side of the latent for images of `pixels` side.
    pub fn latent_size(&self, pixels: usize) -> usize {
        pixels / self.downsampling_factor
    }
}
