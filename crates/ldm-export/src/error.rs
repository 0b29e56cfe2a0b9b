use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Train(#[from] ldm_train::TrainError),
    #[error(transparent)]
    Network(#[from] ldm_nn::NnError),
    #[error(transparent)]
    Data(#[from] ldm_data::DataError),
    #[error(transparent)]
    Tokenizer(#[from] ldm_core::TokenizerError),
    #[error(transparent)]
    Runtime(#[from] ldm_runtime::RuntimeError),
    /// The exported graphs do not compute what tch computes.
    #[error("parity check: {0}")]
    Parity(String),
    /// The model cannot make a valid bundle (a text model without its tokenizer, ...).
    #[error("{0}")]
    Invalid(String),
}

impl ExportError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ExportError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
