use std::path::{Path, PathBuf};

use crate::checkpoint::CheckpointError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Network(#[from] ldm_nn::NnError),
    #[error(transparent)]
    Data(#[from] ldm_data::DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Tokenizer(#[from] ldm_core::TokenizerError),
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
    /// The run cannot start or continue as asked (existing run without --resume, other
    /// configuration, other data, ...).
    #[error("{0}")]
    Run(String),
    #[error("the {what} became {value} at step {step}; stopped without saving it (the last good checkpoint is {last_good}); lower --lr or check the data")]
    NonFinite {
        what: &'static str,
        value: f64,
        step: u64,
        last_good: String,
    },
    #[error("loss plot: {0}")]
    Plot(String),
}

impl TrainError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
