//! The networks of latent diffusion (Rombach et al., CVPR 2022), each written once as forward
//! code over the [`Ops`] trait: the perceptual autoencoder (KL, VQ or none), the
//! time-conditional UNet with SpatialTransformer cross-attention, and the conditioning
//! encoders (text transformer, class embedder). Interpretations: tch (training, in
//! `ldm-train`), ONNX (export) and [`ShapeOps`] (shapes, parameter and MAC counts).

pub mod autoencoder;
pub mod classifier;
pub mod conditioning;
pub mod config;
mod cost;
mod error;
pub mod graphs;
pub mod layers;
pub mod ops;
pub mod planner;
pub mod quant;
pub mod shape;
pub mod unet;

pub use classifier::{ClassifierConfig, Head};
pub use config::{
    Activation, AutoencoderConfig, ConcatKind, Conditioning, DiffusionConfig, FirstStage,
    ModelConfig, PlannerConfig, TextEncoderKind, UnetConfig,
};
pub use cost::NetworkCost;
pub use error::NnError;
pub use ops::{Dim, Init, Keys, Ops};
pub use shape::ShapeOps;
