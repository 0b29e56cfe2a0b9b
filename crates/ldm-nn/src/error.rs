//! Errors of configurations and of running the networks.

#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error("invalid configuration: {field}: {message}")]
    Config { field: String, message: String },
    #[error("{path}: cannot read the configuration: {message}")]
    ConfigFile { path: String, message: String },
    #[error("shape error in {op}: {message}")]
    Shape { op: &'static str, message: String },
    #[error("parameter '{name}': {message}")]
    Param { name: String, message: String },
    #[error("{0}")]
    Backend(String),
}

impl NnError {
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        NnError::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}
