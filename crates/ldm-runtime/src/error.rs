//! Errors of the runtime.

use std::path::PathBuf;

use ldm_core::ConditionError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: {engine} cannot load the graph: {message}")]
    Load {
        engine: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{engine} failed to run the graph: {message}")]
    Run {
        engine: &'static str,
        message: String,
    },
    #[error("the graph has no input named '{name}' (inputs: {expected})")]
    UnknownInput { name: String, expected: String },
    #[error("input '{name}' is missing (inputs: {expected})")]
    MissingInput { name: String, expected: String },
    #[error("tensor of shape {shape:?} needs {expected} values, got {got}")]
    ShapeMismatch {
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("output '{name}' has element type {dtype}; only f32 and i64 are exchanged")]
    UnsupportedType { name: String, dtype: String },
    #[error(transparent)]
    Manifest(#[from] ldm_core::ManifestError),
    #[error(transparent)]
    Tokenizer(#[from] ldm_core::TokenizerError),
    /// The bundle's files do not agree with its manifest.
    #[error("{path}: {message}")]
    Bundle { path: PathBuf, message: String },
    /// A request the bundle cannot serve (wrong size, unknown class, ...).
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("the {graph} graph's output '{output}' is not float32")]
    NotF32 { graph: &'static str, output: String },
    #[error("the {graph} graph returned {bad} non-finite values (NaN or infinity) of {total}: its weights are likely damaged (re-export the bundle), or the request drives it out of range (an extreme guidance scale)")]
    NonFinite {
        graph: &'static str,
        bad: usize,
        total: usize,
    },
    #[error("{asked} threads: at most {max} ({per_core} per core of this machine)")]
    Threads {
        asked: usize,
        max: usize,
        per_core: usize,
    },
    /// [`crate::Pipeline::step`] given generations that cannot share a UNet call.
    #[error("a batch's generations must share a latent shape and none be finished")]
    MixedBatch,
    #[error("the {graph} graph: {source}")]
    Prediction {
        graph: &'static str,
        source: ldm_core::guided::PredictionSizeError,
    },
    #[error("the {graph} graph returned shape {shape:?}, not an image batch")]
    NotImages {
        graph: &'static str,
        shape: Vec<usize>,
    },
    #[error("backend '{name}' is not available: {reason}")]
    BackendUnavailable { name: String, reason: String },
    #[error("cancelled")]
    Cancelled,
    #[error("the ONNX Runtime library was not found (looked at: {searched}); run scripts/setup.sh, or set ORT_DYLIB_PATH to a libonnxruntime.so of version 1.24 or later")]
    OrtLibraryMissing { searched: String },
}

/// Why a request was refused before anything ran: each names the field or input at fault.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no prompts")]
    NoPrompts,
    #[error("{asked} images; one request may ask for at most {max}")]
    TooManyImages { asked: usize, max: usize },
    #[error("image {what} {side} is not a multiple of {multiple} up to {max}")]
    Size {
        what: &'static str,
        side: usize,
        multiple: usize,
        max: usize,
    },
    #[error("{steps} steps (expected 1 to {max})")]
    Steps { steps: usize, max: usize },
    #[error("guidance {guidance} must be within -{max}..={max} and eta {eta} within 0..=1", max = ldm_core::guided::MAX_GUIDANCE)]
    Guidance { guidance: f64, eta: f64 },
    #[error("manifest.json defaults.sampler: {0}")]
    DefaultSampler(String),
    #[error("this bundle's task needs {0}")]
    TaskNeeds(&'static str),
    #[error("a mask needs an input image")]
    MaskWithoutImage,
    #[error("this bundle does not take {0}")]
    NotTaken(&'static str),
    #[error("{0}")]
    SemanticMap(#[from] ldm_core::semantic::SemanticError),
    #[error("strength {0} is not within 0..1")]
    Strength(f64),
    #[error("the {what} is {}x{}; this request needs {}x{}", got.0, got.1, needed.0, needed.1)]
    ImageSize {
        what: &'static str,
        got: (usize, usize),
        needed: (usize, usize),
    },
    #[error("a {width}x{height} image needs {expected} bytes, got {got}")]
    ImageBytes {
        width: usize,
        height: usize,
        expected: usize,
        got: usize,
    },
    #[error("the mask has {0} grey values; paint it black (keep) and white (draw) only")]
    GreyMask(usize),
    #[error("reconstruction takes images with sides divisible by {factor}, not {width}x{height}")]
    ReconstructionSize {
        factor: usize,
        width: usize,
        height: usize,
    },
    #[error("{what} need(s) an estimated {}, above the memory budget of {}; lower the batch, the size or, on tract, the threads", crate::plan::memory_size(*needed), crate::plan::memory_size(*budget))]
    OverBudget {
        what: String,
        needed: u64,
        budget: u64,
    },
    #[error(transparent)]
    Condition(#[from] ConditionError),
}
