//! Errors of the runtime.

use std::path::PathBuf;

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
    #[error("{0}")]
    Request(String),
    #[error("backend '{name}' is not available: {reason}")]
    BackendUnavailable { name: String, reason: String },
    #[error("cancelled")]
    Cancelled,
    #[error("the ONNX Runtime library was not found (looked at: {searched}); run scripts/setup.sh, or set ORT_DYLIB_PATH to a libonnxruntime.so of version 1.24 or later")]
    OrtLibraryMissing { searched: String },
}
