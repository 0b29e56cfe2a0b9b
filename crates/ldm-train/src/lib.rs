//! Training of ldm's networks on tch (libtorch): the first stage (autoencoder with its
//! patch discriminator) and the latent diffusion model, with crash-safe, resumable runs.
//!
//! Each stage (`first_stage`, `diffusion`, `classifier`) supplies its step and what it saves;
//! `trainer` runs the lifecycle they share (start or resume, log, cadences, checkpoints,
//! Ctrl-C). Sampling (`sampling`, `trained`) drives the engine-free sampler loop of
//! `ldm_core::guided` with the tch networks.

pub mod autoencoder;
pub mod checkpoint;
pub mod classifier;
pub mod conditioner;
pub mod denoiser;
mod device;
pub mod diffusion;
pub mod discriminator;
pub mod ema;
mod error;
pub mod first_stage;
pub mod gaussian;
pub mod images;
pub mod latents;
pub mod losses;
pub mod metrics;
pub mod optim;
pub mod planner;
mod preview;
pub mod records;
pub mod release;
pub mod run;
pub mod sampling;
mod tch_ops;
pub mod tensors;
pub mod trained;
pub mod trainer;
pub mod transplant;

pub use device::{parse_device, DeviceError};
pub use error::TrainError;
pub use tch_ops::TchOps;
