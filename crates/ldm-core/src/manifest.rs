//! The bundle contract: `manifest.json` of an exported bundle (`export/<name>/`).
//!
//! It pins everything a runtime needs besides the graphs themselves: which graph plays which
//! role, the name, dtype and shape of every graph input and output, the latent space (channels,
//! downsampling factor, scale factor) and the noise schedule. Parsing is strict: an unknown
//! field, a missing field or a newer format is refused with a message that names it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::NoiseSchedule;

/// The format this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
/// A manifest is a few kilobytes; a class model's names make it longer, not this long.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Bounds of the numbers that size work and memory: far above any model served here, far
/// below what would exhaust a machine before the request plan's estimate is consulted.
const MAX_SIDE: usize = 4096;
const MAX_CHANNELS: usize = 1024;
const MAX_TOKENS: usize = 4096;
const MAX_VOCABULARY: usize = 1 << 22;
const MAX_CLASSES: usize = 1 << 20;
const MAX_TIMESTEPS: usize = 100_000;

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
}

impl LinearSchedule {
    pub fn noise_schedule(&self) -> Result<NoiseSchedule, crate::ScheduleError> {
        NoiseSchedule::linear(self.timesteps, self.beta_start, self.beta_end)
    }
}

impl Default for LinearSchedule {
    /// T = 1000 and the 0.0015..0.0195 range of the paper's LDM configurations.
    fn default() -> Self {
        Self {
            timesteps: 1000,
            beta_start: 0.0015,
            beta_end: 0.0195,
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
}

impl GraphRole {
    pub fn as_str(self) -> &'static str {
        match self {
            GraphRole::Encoder => "encoder",
            GraphRole::Decoder => "decoder",
            GraphRole::Unet => "unet",
            GraphRole::TextEncoder => "text_encoder",
            GraphRole::ClassEmbedder => "class_embedder",
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

    /// The consistency a runtime relies on beyond field types.
    fn validate(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!("format {} is not {MANIFEST_FORMAT}", self.format));
        }
        let factor = self.downsampling_factor;
        if !factor.is_power_of_two() || factor > 64 {
            return Err(format!(
                "downsampling_factor {factor} is not a power of two up to 64"
            ));
        }
        if self.resolution == 0 || !self.resolution.is_multiple_of(factor) {
            return Err(format!(
                "resolution {} is not a multiple of downsampling_factor {factor}",
                self.resolution
            ));
        }
        if self.size_multiple == 0 || !self.size_multiple.is_multiple_of(factor) {
            return Err(format!(
                "size_multiple {} is not a multiple of downsampling_factor {factor}",
                self.size_multiple
            ));
        }
        if !(self.latent_scale_factor.is_finite() && self.latent_scale_factor > 0.0) {
            return Err(format!(
                "latent_scale_factor {} is not a positive number",
                self.latent_scale_factor
            ));
        }
        self.schedule.noise_schedule().map_err(|e| e.to_string())?;
        let mut required = vec![GraphRole::Unet];
        if self.first_stage != FirstStage::Identity {
            required.extend([GraphRole::Encoder, GraphRole::Decoder]);
        }
        match &self.conditioning {
            BundleConditioning::Text { .. } => required.push(GraphRole::TextEncoder),
            BundleConditioning::Class {
                classes,
                class_names,
            } => {
                required.push(GraphRole::ClassEmbedder);
                if !class_names.is_empty() && class_names.len() != *classes {
                    return Err(format!(
                        "{} class_names for {classes} classes",
                        class_names.len()
                    ));
                }
            }
            BundleConditioning::None | BundleConditioning::Concat { .. } => {}
        }
        for role in required {
            if !self.graphs.contains_key(&role) {
                return Err(format!("no `{}` graph", role.as_str()));
            }
        }
        for (role, graph) in &self.graphs {
            // Plain relative file names only: a manifest must not point outside its bundle.
            if !crate::confined::is_plain_relative(&graph.file) || graph.file.contains('/') {
                return Err(format!(
                    "graph `{}` file {:?} is not a plain file name",
                    role.as_str(),
                    graph.file
                ));
            }
        }
        if let BundleConditioning::Text { tokenizer, .. } = &self.conditioning {
            if !crate::confined::is_plain_relative(tokenizer) || tokenizer.contains('/') {
                return Err(format!(
                    "conditioning.tokenizer {tokenizer:?} is not a plain file name"
                ));
            }
        }
        self.check_bounds()?;
        self.check_dimensions()
    }

    /// Every number that sizes work or memory, within bounds.
    fn check_bounds(&self) -> Result<(), String> {
        let mut bounded = vec![
            ("resolution", self.resolution, MAX_SIDE),
            ("size_multiple", self.size_multiple, MAX_SIDE),
            ("image_channels", self.image_channels, MAX_CHANNELS),
            ("latent_channels", self.latent_channels, MAX_CHANNELS),
            ("defaults.steps", self.defaults.steps, MAX_TIMESTEPS),
        ];
        let Schedule::Linear(linear) = &self.schedule;
        bounded.push(("schedule.timesteps", linear.timesteps, MAX_TIMESTEPS));
        match &self.conditioning {
            BundleConditioning::Text {
                max_length,
                vocab_size,
                ..
            } => {
                bounded.push(("conditioning.max_length", *max_length, MAX_TOKENS));
                bounded.push(("conditioning.vocab_size", *vocab_size, MAX_VOCABULARY));
            }
            BundleConditioning::Class { classes, .. } => {
                bounded.push(("conditioning.classes", *classes, MAX_CLASSES));
            }
            BundleConditioning::Concat { channels, .. } => {
                bounded.push(("conditioning.channels", *channels, MAX_CHANNELS));
            }
            BundleConditioning::None => {}
        }
        for (field, value, max) in bounded {
            if !(1..=max).contains(&value) {
                return Err(format!("{field} = {value} is not within 1..={max}"));
            }
        }
        if self.defaults.steps > linear.timesteps {
            return Err(format!(
                "defaults.steps = {} is above schedule.timesteps = {}",
                self.defaults.steps, linear.timesteps
            ));
        }
        if !self.defaults.guidance.is_finite() || !(0.0..=1.0).contains(&self.defaults.eta) {
            return Err(format!(
                "defaults.guidance = {} must be a number and defaults.eta = {} within 0..1",
                self.defaults.guidance, self.defaults.eta
            ));
        }
        for spec in self.graphs.values() {
            for tensor in spec.inputs.iter().chain(&spec.outputs) {
                for dim in &tensor.shape {
                    if let DimSpec::Fixed(n) = dim {
                        if !(1..=MAX_SIDE.max(MAX_VOCABULARY)).contains(n) {
                            return Err(format!(
                                "graph input/output '{}' has a dimension of {n}",
                                tensor.name
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every dimension the manifest states at its top level against the graphs' inputs and
    /// outputs that carry it, so that a disagreement names the manifest field, not an engine's
    /// node.
    fn check_dimensions(&self) -> Result<(), String> {
        let c = self.latent_channels;
        let mut expected: Vec<(GraphRole, &str, usize, usize, &str)> = vec![
            (GraphRole::Unet, "sample", 1, c, "latent_channels"),
            (GraphRole::Unet, "eps", 1, c, "latent_channels"),
        ];
        if self.first_stage != FirstStage::Identity {
            let moments = match self.first_stage {
                FirstStage::Kl => ("moments", 2 * c),
                _ => ("latent", c),
            };
            expected.extend([
                (
                    GraphRole::Encoder,
                    "image",
                    1,
                    self.image_channels,
                    "image_channels",
                ),
                (
                    GraphRole::Encoder,
                    moments.0,
                    1,
                    moments.1,
                    "latent_channels",
                ),
                (GraphRole::Decoder, "latent", 1, c, "latent_channels"),
                (
                    GraphRole::Decoder,
                    "image",
                    1,
                    self.image_channels,
                    "image_channels",
                ),
            ]);
        }
        match &self.conditioning {
            BundleConditioning::Text { max_length, .. } => expected.extend([
                (
                    GraphRole::TextEncoder,
                    "input_ids",
                    1,
                    *max_length,
                    "conditioning.max_length",
                ),
                (
                    GraphRole::TextEncoder,
                    "context",
                    1,
                    *max_length,
                    "conditioning.max_length",
                ),
                (
                    GraphRole::Unet,
                    "context",
                    1,
                    *max_length,
                    "conditioning.max_length",
                ),
            ]),
            BundleConditioning::Class { .. } => expected.push((
                GraphRole::Unet,
                "context",
                1,
                1,
                "a class model's context length",
            )),
            BundleConditioning::Concat { channels, .. } => expected.push((
                GraphRole::Unet,
                "concat",
                1,
                *channels,
                "conditioning.channels",
            )),
            BundleConditioning::None => {}
        }
        for (role, name, axis, value, field) in expected {
            let spec = self.graphs.get(&role).expect("required graphs are present");
            let tensor = spec
                .inputs
                .iter()
                .chain(&spec.outputs)
                .find(|t| t.name == name)
                .ok_or_else(|| {
                    format!(
                        "the `{}` graph has no input or output '{name}'",
                        role.as_str()
                    )
                })?;
            match tensor.shape.get(axis) {
                Some(DimSpec::Fixed(n)) if *n == value => {}
                other => {
                    return Err(format!(
                        "{field} = {value} but the `{}` graph's '{name}' has {} along axis {axis}",
                        role.as_str(),
                        other.map_or("no dimension".into(), |d| match d {
                            DimSpec::Fixed(n) => n.to_string(),
                            DimSpec::Symbol(s) => format!("'{s}'"),
                        })
                    ))
                }
            }
        }
        // The context width the conditioner produces is the one the UNet reads.
        if let Some(conditioner) = [GraphRole::TextEncoder, GraphRole::ClassEmbedder]
            .into_iter()
            .find_map(|r| self.graphs.get(&r).map(|g| (r, g)))
        {
            let width = |spec: &GraphSpec| {
                spec.inputs
                    .iter()
                    .chain(&spec.outputs)
                    .find(|t| t.name == "context")
                    .and_then(|t| t.shape.get(2).cloned())
            };
            let unet = self.graphs.get(&GraphRole::Unet).expect("required");
            if width(conditioner.1) != width(unet) {
                return Err(format!(
                    "the `{}` graph's context width {:?} is not the `unet` graph's {:?}",
                    conditioner.0.as_str(),
                    width(conditioner.1),
                    width(unet)
                ));
            }
        }
        Ok(())
    }

    pub fn graph(&self, role: GraphRole) -> Option<&GraphSpec> {
        self.graphs.get(&role)
    }

    /// Side of the latent for images of `pixels` side.
    pub fn latent_size(&self, pixels: usize) -> usize {
        pixels / self.downsampling_factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "format": 1,
            "name": "tiny",
            "precision": "f32",
            "resolution": 16,
            "size_multiple": 4,
            "image_channels": 3,
            "first_stage": "identity",
            "latent_channels": 3,
            "downsampling_factor": 1,
            "latent_scale_factor": 1.0,
            "conditioning": {"kind": "none"},
            "schedule": {"kind": "linear", "timesteps": 100, "beta_start": 0.0015, "beta_end": 0.0195},
            "defaults": {"sampler": "ddim", "steps": 10, "guidance": 1.0, "eta": 0.0},
            "graphs": {"unet": {
                "file": "unet.onnx",
                "inputs": [{"name": "sample", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}],
                "outputs": [{"name": "eps", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}]
            }}
        })
    }

    /// Refuses the minimal manifest edited by `edit` with a message containing `expect`.
    fn refuse(edit: &dyn Fn(&mut serde_json::Value), expect: &str) {
        let mut v = minimal();
        edit(&mut v);
        let err = Manifest::parse(&v.to_string()).unwrap_err().to_string();
        assert!(err.contains(expect), "{err} (expected {expect})");
    }

    #[test]
    fn a_minimal_manifest_round_trips() {
        let m = Manifest::parse(&minimal().to_string()).unwrap();
        assert_eq!(
            m.graphs[&GraphRole::Unet].inputs[0].shape[1],
            DimSpec::Fixed(3)
        );
        let again = Manifest::parse(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(m, again);
    }

    #[test]
    fn newer_missing_unknown_and_inconsistent_are_refused() {
        refuse(&|v| v["format"] = 2.into(), "bundle format 2 is newer");
        refuse(
            &|v| {
                v.as_object_mut().unwrap().remove("latent_scale_factor");
            },
            "missing field `latent_scale_factor`",
        );
        refuse(&|v| v["colour"] = "red".into(), "unknown field `colour`");
        refuse(
            &|v| v["schedule"]["offset"] = 1.into(),
            "unknown field `offset`",
        );
        refuse(
            &|v| v["schedule"]["kind"] = "cosine".into(),
            "unknown variant `cosine`",
        );
        refuse(&|v| v["first_stage"] = "kl".into(), "no `encoder` graph");
        refuse(
            &|v| v["downsampling_factor"] = 3.into(),
            "not a power of two",
        );
        refuse(
            &|v| v["latent_scale_factor"] = (-1.0).into(),
            "not a positive number",
        );
        refuse(
            &|v| v["graphs"]["unet"]["file"] = "../unet.onnx".into(),
            "not a plain file name",
        );
        for file in ["/etc/passwd", "sub/unet.onnx", "", "..", "a\\b"] {
            refuse(
                &|v| v["graphs"]["unet"]["file"] = file.into(),
                "not a plain file name",
            );
        }
    }

    #[test]
    fn numbers_that_size_work_are_bounded_and_dimensions_agree_with_the_graphs() {
        // A top-level number that disagrees with the graph names the field.
        refuse(
            &|v| v["latent_channels"] = 7.into(),
            "latent_channels = 7 but the `unet` graph's 'sample' has 3 along axis 1",
        );
        refuse(
            &|v| v["graphs"]["unet"]["outputs"][0]["shape"][1] = 4.into(),
            "latent_channels = 3 but the `unet` graph's 'eps' has 4",
        );
        refuse(
            &|v| v["graphs"]["unet"]["inputs"][0]["shape"][1] = "channels".into(),
            "has 'channels' along axis 1",
        );
        for (field, value) in [
            ("resolution", 1u64 << 40),
            ("size_multiple", 1 << 30),
            ("latent_channels", 1 << 40),
            ("image_channels", 0),
        ] {
            refuse(&|v| v[field] = value.into(), field);
        }
        refuse(
            &|v| v["schedule"]["timesteps"] = (1u64 << 40).into(),
            "1099511627776 timesteps (expected 2 to 100000)",
        );
        refuse(
            &|v| v["defaults"]["steps"] = 1000.into(),
            "defaults.steps = 1000 is above",
        );
        refuse(&|v| v["defaults"]["eta"] = 5.into(), "defaults.eta = 5");
        refuse(
            &|v| v["graphs"]["unet"]["inputs"][0]["shape"][2] = (1u64 << 40).into(),
            "has a dimension of",
        );
        fn text<'a>(
            edit: &'a dyn Fn(&mut serde_json::Value),
        ) -> impl Fn(&mut serde_json::Value) + 'a {
            move |v: &mut serde_json::Value| {
                v["conditioning"] = serde_json::json!({
                    "kind": "text", "tokenizer": "tokenizer.json", "max_length": 8, "vocab_size": 100
                });
                v["graphs"]["text_encoder"] = serde_json::json!({
                    "file": "text_encoder.onnx",
                    "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", 8]}],
                    "outputs": [{"name": "context", "dtype": "float32", "shape": ["batch", 8, 32]}]
                });
                v["graphs"]["unet"]["inputs"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!(
                        {"name": "context", "dtype": "float32", "shape": ["batch", 8, 32]}
                    ));
                edit(v);
            }
        }
        let mut v = minimal();
        text(&|_| {})(&mut v);
        Manifest::parse(&v.to_string()).unwrap();
        refuse(
            &text(&|v| v["conditioning"]["tokenizer"] = "../../home/tokenizer.json".into()),
            "conditioning.tokenizer \"../../home/tokenizer.json\" is not a plain file name",
        );
        refuse(
            &text(&|v| v["conditioning"]["max_length"] = 9.into()),
            "conditioning.max_length = 9 but the `text_encoder` graph's 'input_ids' has 8",
        );
        refuse(
            &text(&|v| v["conditioning"]["max_length"] = (1u64 << 40).into()),
            "conditioning.max_length",
        );
        refuse(
            &text(&|v| v["conditioning"]["vocab_size"] = (1u64 << 40).into()),
            "conditioning.vocab_size",
        );
        refuse(
            &text(&|v| v["graphs"]["unet"]["inputs"][1]["shape"][2] = 64.into()),
            "context width",
        );
    }
}
