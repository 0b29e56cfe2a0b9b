//! Engine-free pieces shared by training (tch) and the runtime (tract, ONNX Runtime).

mod schedule;
mod tokenizer;

pub use schedule::{NoiseSchedule, ScheduleError};
pub use tokenizer::{Encoded, TextTokenizer, TokenizerError};
