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
    #[error(transparent)]
    Condition(#[from] ldm_core::ConditionError),
    #[error(transparent)]
    Prediction(#[from] ldm_core::guided::PredictionSizeError),
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
    /// `--out` already holds a run and `--resume` was not given.
    #[error("{} already holds a run (latest checkpoint {}); pass --resume to continue it, or choose another --out", out.display(), checkpoint.display())]
    ExistingRun { out: PathBuf, checkpoint: PathBuf },
    /// Another process is training in `--out` now.
    #[error("{} is in use by another training process (it holds {}); wait for it or stop it", out.display(), crate::run::LOCK_FILE)]
    RunInUse { out: PathBuf },
    /// The run in `--out` cannot continue as asked.
    #[error("{}: cannot resume: {reason}", checkpoint.display())]
    NotResumable { checkpoint: PathBuf, reason: String },
    /// A folder that should hold trained weights holds none.
    #[error("{}: {what}", path.display())]
    NoWeights { path: PathBuf, what: String },
    /// The configuration does not fit the data or the other inputs of the run.
    #[error("{0}")]
    Mismatch(String),
    #[error("{}: the {file} state cannot be restored: {message}", checkpoint.display())]
    SavedState {
        checkpoint: PathBuf,
        file: &'static str,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Release { path: PathBuf, message: String },
    #[error("configuration: {0}")]
    ConfigText(#[from] toml::ser::Error),
    #[error("the first batch's latents have std {0}; the first stage is degenerate")]
    DegenerateLatents(f64),
    #[error("concatenation models sample from an input image; export the run and use the runtime")]
    NeedsImage,
    #[error("sampling: {0}")]
    Sampling(String),
    #[error("the condition given does not match the model's conditioning")]
    ConditionMismatch,
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
