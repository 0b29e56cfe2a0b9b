//! Engine-free pieces shared by training (tch) and the runtime (tract, ONNX Runtime).

pub mod conditions;
pub mod confined;
mod ddim;
pub mod error_line;
pub mod guided;
pub mod layout;
pub mod layout_plan;
pub mod manifest;
pub mod samplers;
mod schedule;
pub mod semantic;
pub mod tokenizer;
pub mod wordpiece;

pub use conditions::ConditionError;
pub use ddim::{ddim_step, ddim_timesteps};
pub use error_line::one_line;
pub use guided::{GuidedSampling, KnownLatent, SamplingSetup};
pub use manifest::{Manifest, ManifestError};
pub use samplers::{Sampler, SamplerKind};
pub use schedule::{NoiseSchedule, Prediction, ScheduleError};
pub use tokenizer::{Encoded, TextTokenizer, TokenizerError};
