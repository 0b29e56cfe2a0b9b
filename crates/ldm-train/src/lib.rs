//! Training of ldm's networks on tch (libtorch).

pub mod checkpoint;
mod device;
pub mod gaussian;
pub mod losses;
mod tch_ops;

pub use device::{parse_device, DeviceError};
pub use tch_ops::TchOps;
