//! Training of ldm's networks on tch (libtorch).

mod device;

pub use device::{parse_device, DeviceError};
