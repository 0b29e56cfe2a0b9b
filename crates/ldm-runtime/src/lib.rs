//! Runs exported ldm bundles without Python or libtorch.
//!
//! A [`Bundle`] is an exported model folder (manifest, graphs, tokenizer); a [`Pipeline`]
//! generates images from it. Underneath, a [`Session`] runs one ONNX graph with named inputs:
//! [`TractSession`] is pure Rust (CPU) and, with the `ort` feature, [`OrtSession`] runs the
//! same file on ONNX Runtime.

mod bundle;
mod contract;
mod error;
mod image_tasks;
mod kernels;
mod layout_planner;
#[cfg(feature = "ort")]
mod onnxruntime;
mod pipeline;
pub mod plan;
mod plan_cache;
mod request;
mod run_threads;
mod session;
mod tensor;
mod tiled;
mod tract;
mod untrusted;

pub use bundle::{default_threads, Backend, Bundle};
pub use error::{RequestError, RuntimeError};
#[cfg(feature = "ort")]
pub use onnxruntime::{onnxruntime_library, OrtSession, Provider};
pub use pipeline::{Generation, Pipeline};
pub use plan::{Decode, MemoryEstimate, Plan, Planner, Task};
pub use plan_cache::PlanCache;
pub use request::{Generate, Image, Progress};
pub use session::Session;
pub use tensor::{Tensor, TensorData};
pub use tiled::Tiling;
pub use tract::{matmul_macs_per_second as tract_matmul_macs_per_second, NodeTime, TractSession};
pub use untrusted::{check_bytes, check_graph};
