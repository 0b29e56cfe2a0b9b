//! ONNX export of trained ldm models.
//!
//! [`OnnxOps`] is the ONNX interpretation of the networks written once in `ldm-nn`: running
//! a network's forward code on it builds the graph, with the checkpoint's parameter names as
//! initializer names, for the graphs `ldm_nn::graphs` describes (which graphs a model has,
//! their inputs, outputs and composition). [`export`] writes a bundle (graphs, tokenizer,
//! `manifest.json`) and [`parity`] checks the files against tch on tract and ONNX Runtime. [`evaluator`] writes the evaluation network's
//! folder for `ldm eval`.

mod bundle;
mod error;
pub mod evaluator;
mod external;
pub mod isolated;
mod onnx_ops;
pub mod parity;
mod proto;

pub use bundle::{
    calibrate_int8, export, export_release, parity_sizes, parity_tolerance, ExportOptions,
    Exported, Int8Calibration, INT8_PARITY_TOLERANCE, TOKENIZER_FILE,
};
pub use error::ExportError;
pub use onnx_ops::{OnnxOps, Value, Weight, OPSET};
