//! Errors of data preparation and loading; each names the file at fault and, where there is
//! one, the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: not a JSON object: {source}")]
    Json {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error(
        "{path} line {line}: the row has no '{column}' (every row needs a non-empty '{column}')"
    )]
    MissingColumn {
        path: PathBuf,
        line: usize,
        column: &'static str,
    },
    #[error("{path} line {line}: '{file_name}' is listed but missing from the folder")]
    MissingImage {
        path: PathBuf,
        line: usize,
        file_name: String,
    },
    #[error("{path} line {line}: 'file_name' must be a relative path inside the folder, not '{file_name}'")]
    UnsafeFileName {
        path: PathBuf,
        line: usize,
        file_name: String,
    },
    #[error("{path} line {line}: its layout: {message}")]
    Layout {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path} line {line}: {reason}")]
    Unconfined {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(
        "{path}: the image declares {width}x{height} pixels, above the {max_side} a side may have"
    )]
    ImageTooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        max_side: u32,
    },
    #[error("{0}")]
    Confined(#[from] ldm_core::confined::Unconfined),
    #[error("{dir} has no metadata.jsonl{hint}; an image folder holds images and a metadata.jsonl with one JSON row per image: {{\"file_name\": \"a.png\", \"text\": \"a caption\"}}")]
    MissingMetadata { dir: PathBuf, hint: String },
    #[error("{path} lists no images")]
    EmptyFolder { path: PathBuf },
    #[error(
        "{path}: cannot decode the image ({source}); remove it or replace it with a valid PNG/JPEG"
    )]
    Image {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error("npm is needed to fetch '{package}' but could not be run ({source}); install Node.js and npm (apt-get install npm)")]
    NpmMissing {
        package: String,
        source: std::io::Error,
    },
    #[error("`npm pack {package}` failed; check the network access to the npm registry and the package name. npm said:\n{stderr}")]
    NpmFailed { package: String, stderr: String },
    #[error("{archive}: {message}")]
    Package { archive: PathBuf, message: String },
    #[error("{path} already exists; choose another --out or remove it first")]
    OutputExists { path: PathBuf },
    #[error("invalid {name}: {message}")]
    InvalidOption { name: &'static str, message: String },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| DataError::Io { path, source }
    }
}
