//! Engine-free pieces shared by training (tch) and the runtime (tract, ONNX Runtime).

mod tokenizer;

pub use tokenizer::{Encoded, TextTokenizer, TokenizerError};
