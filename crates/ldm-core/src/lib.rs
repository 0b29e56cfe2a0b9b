//! Engine-free pieces shared by training (tch) and the runtime (tract, ONNX Runtime).

mod ddim;
pub mod manifest;
pub mod samplers;
mod schedule;
mod tokenizer;

pub use ddim::{ddim_step, ddim_timesteps};
pub use manifest::{Manifest, ManifestError};
pub use samplers::{Sampler, SamplerKind};
pub use schedule::{NoiseSchedule, ScheduleError};
pub use tokenizer::{Encoded, TextTokenizer, TokenizerError};
