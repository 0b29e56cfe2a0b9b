//! Training of ldm's networks on tch (libtorch): the first stage (autoencoder with its
//! patch discriminator) and the latent diffusion model, with crash-safe, resumable runs.

pub mod checkpoint;
pub mod classifier;
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
mod preview;
pub mod release;
pub mod run;
pub mod sampling;
mod tch_ops;
pub mod trained;

pub use device::{parse_device, DeviceError};
pub use error::TrainError;
pub use tch_ops::TchOps;
