//! Runs exported ldm graphs without Python or libtorch.
//!
//! A [`Session`] runs one ONNX graph with named inputs; [`TractSession`] is pure Rust (CPU)
//! and, with the `ort` feature, [`OrtSession`] runs the same file on ONNX Runtime.

mod error;
#[cfg(feature = "ort")]
mod onnxruntime;
mod session;
mod tensor;
mod tract;

pub use error::RuntimeError;
#[cfg(feature = "ort")]
pub use onnxruntime::{onnxruntime_library, OrtSession};
pub use session::Session;
pub use tensor::{Tensor, TensorData};
pub use tract::TractSession;
