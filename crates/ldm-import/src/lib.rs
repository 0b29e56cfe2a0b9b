//! Bring your own checkpoint: Stable Diffusion models as this project's networks.
//!
//! - [`files`] reads tensors from `.safetensors` files (sharded or not) and PyTorch zip
//!   checkpoints (`.ckpt`, `.pt`, `.bin`) through a [`pickle`] reader that never runs anything.
//! - [`diffusers`] reads the diffusers folder layout (`model_index.json`, `unet/`, `vae/`,
//!   `text_encoder/`, `tokenizer/`, `scheduler/`).
//! - [`reference`] reads single files in the reference layout (`model.diffusion_model.*`,
//!   `first_stage_model.*`, `cond_stage_model.*`, EMA copies).
//!
//! Both give an [`Imported`] model: a [`ModelConfig`] the networks of `ldm-nn` are built from,
//! and weights under the names those networks use, checked name by name and shape by shape.

use std::collections::BTreeMap;
use std::path::Path;

use ldm_core::manifest::GraphRole;
use ldm_nn::ModelConfig;

pub mod clip_tokenizer;
pub mod diffusers;
pub mod files;
pub mod paper;
pub mod pickle;
pub mod reference;
pub mod reference_config;
pub mod tensor;
mod torch_file;

pub use tensor::{DType, RawTensor};

/// Tensors by name.
pub type Weights = BTreeMap<String, RawTensor>;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {message}")]
    Checkpoint { path: String, message: String },
    #[error("{path}: cannot read it: {message}")]
    Io { path: String, message: String },
    #[error("{path}: `{field}`: {message}")]
    Config {
        path: String,
        field: String,
        message: String,
    },
    #[error("{what} does not match the architecture: {message}")]
    Mismatch { what: String, message: String },
    #[error("the model configuration derived from the checkpoint is invalid: {0}")]
    Model(#[from] ldm_nn::NnError),
}

impl ImportError {
    pub(crate) fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        ImportError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }

    pub(crate) fn config(path: &Path, field: &str, message: impl Into<String>) -> Self {
        ImportError::Config {
            path: path.display().to_string(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Which copy of the UNet's weights to take from a checkpoint that holds both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmaChoice {
    /// The exponential moving average when the checkpoint has it (what the authors sample
    /// with), the trained weights otherwise.
    #[default]
    Prefer,
    /// The trained weights, even when an average is present.
    Never,
}

/// A checkpoint as this project's model: configuration, weights per graph, tokenizer and the
/// sampling conventions its scheduler pins.
pub struct Imported {
    pub config: ModelConfig,
    /// Latents are multiplied by this before diffusion (0.18215 for Stable Diffusion).
    pub scale_factor: f64,
    /// Weights of the `unet`, the first stage (`encoder`/`decoder` share one set, under
    /// `GraphRole::Encoder`) and the `text_encoder`.
    pub weights: BTreeMap<GraphRole, Weights>,
    /// `tokenizer.json` text of the model's tokenizer.
    pub tokenizer_json: Option<String>,
    /// Where the weights came from, for the release record.
    pub source: String,
    /// Whether the UNet's weights are its EMA copy.
    pub ema: bool,
    /// The guidance scale releases sample with by default (1: unguided).
    pub guidance: f64,
}

/// Names and shapes of the parameters each graph of `config` holds (the first stage's
/// encoder and decoder together).
pub fn expected(
    config: &ModelConfig,
) -> Result<BTreeMap<GraphRole, BTreeMap<String, Vec<usize>>>, ImportError> {
    let mut out = BTreeMap::new();
    for role in ldm_nn::graphs::roles(config) {
        let params = ldm_nn::graphs::expected_params(role, config)?;
        let key = if role == GraphRole::Decoder {
            GraphRole::Encoder
        } else {
            role
        };
        out.entry(key).or_insert_with(BTreeMap::new).extend(params);
    }
    Ok(out)
}

/// Refuses weights that are missing, extra or of the wrong shape for `config`, naming them.
pub fn check_weights(
    config: &ModelConfig,
    weights: &BTreeMap<GraphRole, Weights>,
) -> Result<(), ImportError> {
    for (role, params) in expected(config)? {
        let what = match role {
            GraphRole::Encoder => "first_stage",
            r => r.as_str(),
        };
        let empty = Weights::new();
        let have = weights.get(&role).unwrap_or(&empty);
        let missing: Vec<&str> = params
            .keys()
            .filter(|k| !have.contains_key(*k))
            .map(String::as_str)
            .collect();
        let extra: Vec<&str> = have
            .keys()
            .filter(|k| !params.contains_key(*k))
            .map(String::as_str)
            .collect();
        let wrong: Vec<String> = params
            .iter()
            .filter_map(|(k, shape)| {
                let t = have.get(k)?;
                (t.shape != *shape || !t.dtype.is_float())
                    .then(|| format!("{k} is {:?} {:?}, expected f32 {shape:?}", t.dtype, t.shape))
            })
            .collect();
        let list = |names: &[&str]| {
            let shown: Vec<&str> = names.iter().take(8).copied().collect();
            let more = names.len().saturating_sub(8);
            if more > 0 {
                format!("{} and {more} more", shown.join(", "))
            } else {
                shown.join(", ")
            }
        };
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!("{} missing: {}", missing.len(), list(&missing)));
        }
        if !extra.is_empty() {
            problems.push(format!("{} unexpected: {}", extra.len(), list(&extra)));
        }
        if !wrong.is_empty() {
            let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
            problems.push(format!(
                "{} of the wrong shape: {}",
                wrong.len(),
                list(&wrong)
            ));
        }
        if !problems.is_empty() {
            return Err(ImportError::Mismatch {
                what: format!("the {what} weights"),
                message: problems.join("; "),
            });
        }
    }
    Ok(())
}

/// Reads a checkpoint: a diffusers folder, or a single file in the reference layout.
pub fn import(path: &Path, options: &ImportOptions) -> Result<Imported, ImportError> {
    let mut imported = if path.is_dir() {
        diffusers::import(path, options)?
    } else {
        reference::import(path, options)?
    };
    if let Some(vae) = &options.vae {
        replace_first_stage(&mut imported, vae)?;
    }
    check_weights(&imported.config, &imported.weights)?;
    Ok(imported)
}

/// What the user chose for an import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub ema: EmaChoice,
    /// A separate first-stage file (diffusers `vae/` folder, or a single file in the
    /// reference or diffusers layout) replacing the checkpoint's own.
    pub vae: Option<std::path::PathBuf>,
    /// A folder with CLIP's `vocab.json` and `merges.txt` (and optionally
    /// `special_tokens_map.json`), for single files, which carry no tokenizer.
    pub tokenizer: Option<std::path::PathBuf>,
    /// The architecture of a single file, where its shapes do not decide it.
    pub config: Option<ModelConfig>,
    /// The latent scale factor of a single file (Stable Diffusion's 0.18215 otherwise).
    pub scale_factor: Option<f64>,
}

fn replace_first_stage(imported: &mut Imported, vae: &Path) -> Result<(), ImportError> {
    let weights = if vae.is_dir() {
        diffusers::vae_weights(vae, &imported.config)?
    } else {
        reference::vae_file_weights(vae, &imported.config)?
    };
    imported.weights.insert(GraphRole::Encoder, weights);
    imported.source = format!(
        "{} with the first stage of {}",
        imported.source,
        vae.display()
    );
    Ok(())
}
