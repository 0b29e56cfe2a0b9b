//! Checkpoints that survive a crash: weights (one safetensors file per network, optimiser or
//! average: `<name>.safetensors`) and a JSON state are written into
//! a temporary folder, renamed to `checkpoints/step-NNNNNNNN`, and only then named by the
//! `checkpoints/latest` pointer, itself replaced by rename. A kill at any moment leaves the
//! previous `latest` readable.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};
use tch::Tensor;

pub const STATE: &str = "state.json";
const LATEST: &str = "latest";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a readable checkpoint ({message}); resume from an earlier step-* folder or start anew")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path} does not match the configuration: {message}")]
    Mismatch { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file and flushes it to disk before returning.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut file = std::fs::File::create(path).map_err(io(path))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(io(path))
}

/// Saves the named weight sets (`files`: name, tensors) and `state` as step `step` of the run
/// in `run_dir`; returns its folder.
pub fn save<S: Serialize>(
    run_dir: &Path,
    step: u64,
    files: &[(&str, &[(String, Tensor)])],
    state: &S,
) -> Result<PathBuf, CheckpointError> {
    let dir = run_dir.join("checkpoints");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".step-{step:08}.partial-"))
        .tempdir_in(&dir)
        .map_err(io(&dir))?;
    for (name, weights) in files {
        let path = staging.path().join(format!("{name}.safetensors"));
        Tensor::write_safetensors(weights, &path).map_err(|e| CheckpointError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io(&path))?;
    }
    let json = serde_json::to_vec_pretty(state).expect("training state serialises");
    write_synced(&staging.path().join(STATE), &json)?;

    let final_dir = dir.join(format!("step-{step:08}"));
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    ldm_data::make_public_dir(staging.path()).map_err(io(staging.path()))?;
    let staged = staging.keep();
    std::fs::rename(&staged, &final_dir).map_err(io(&final_dir))?;
    let pointer = dir.join(format!("{LATEST}.tmp"));
    write_synced(&pointer, format!("step-{step:08}\n").as_bytes())?;
    std::fs::rename(&pointer, dir.join(LATEST)).map_err(io(&dir))?;
    Ok(final_dir)
}

/// The folder `checkpoints/latest` names, if the run has one.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    let pointer = run_dir.join("checkpoints").join(LATEST);
    let name = match std::fs::read_to_string(&pointer) {
        Ok(name) => name.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CheckpointError::Io {
                path: pointer,
                source: e,
            })
        }
    };
    let valid = name.starts_with("step-")
        && name[5..].chars().all(|c| c.is_ascii_digit())
        && name.len() > 5;
    if !valid {
        return Err(CheckpointError::Corrupt {
            path: pointer,
            message: format!("names '{name}'"),
        });
    }
    Ok(Some(run_dir.join("checkpoints").join(name)))
}

/// Reads the weight set `file` of a checkpoint, checking every name and shape against
/// `expected` (from the shape interpretation of the configured networks) when given.
pub fn load_weights(
    checkpoint: &Path,
    file: &str,
    expected: Option<&BTreeMap<String, Vec<usize>>>,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    read_checked(checkpoint, file, expected, false, |_| false)
}

/// [`load_weights`] for weights stored in another float type (f16 releases): converted to f32
/// before the check.
pub fn load_weights_as_f32(
    dir: &Path,
    file: &str,
    expected: Option<&BTreeMap<String, Vec<usize>>>,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    read_checked(dir, file, expected, true, |_| false)
}

/// [`load_weights_as_f32`] for the source of a fine-tune, which may lack the parameters
/// `may_lack` names: they are added as zeros (for zero-initialised additions, with which the
/// network computes what the source did).
pub fn load_fine_tune_source(
    dir: &Path,
    file: &str,
    expected: &BTreeMap<String, Vec<usize>>,
    may_lack: fn(&str) -> bool,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let mut weights = read_checked(dir, file, Some(expected), true, may_lack)?;
    let absent: Vec<(String, Tensor)> = expected
        .iter()
        .filter(|(name, _)| !weights.iter().any(|(have, _)| have == *name))
        .map(|(name, shape)| {
            let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            (
                name.clone(),
                Tensor::zeros(dims, (tch::Kind::Float, tch::Device::Cpu)),
            )
        })
        .collect();
    weights.extend(absent);
    Ok(weights)
}

fn read_checked(
    checkpoint: &Path,
    file: &str,
    expected: Option<&BTreeMap<String, Vec<usize>>>,
    to_f32: bool,
    may_lack: fn(&str) -> bool,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let weights_path = checkpoint.join(format!("{file}.safetensors"));
    if !weights_path.is_file() {
        return Err(CheckpointError::Io {
            path: weights_path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "missing"),
        });
    }
    let mut weights =
        Tensor::read_safetensors(&weights_path).map_err(|e| CheckpointError::Corrupt {
            path: weights_path.clone(),
            message: e.to_string(),
        })?;
    if to_f32 {
        for (_, t) in &mut weights {
            if t.is_floating_point() {
                *t = t.to_kind(tch::Kind::Float);
            }
        }
    }
    let Some(expected) = expected else {
        return Ok(weights);
    };
    let mismatch = |message: String| CheckpointError::Mismatch {
        path: weights_path.clone(),
        message,
    };
    for (name, tensor) in &weights {
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        match expected.get(name) {
            None => {
                return Err(mismatch(format!(
                    "it holds '{name}', which the configured networks do not have"
                )))
            }
            Some(want) if *want != shape => {
                return Err(mismatch(format!(
                    "'{name}' has shape {shape:?}, the configuration needs {want:?}"
                )))
            }
            Some(_) if tensor.kind() != tch::Kind::Float => {
                return Err(mismatch(format!(
                    "'{name}' is {:?}, expected f32",
                    tensor.kind()
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(missing) = expected
        .keys()
        .find(|k| !may_lack(k) && !weights.iter().any(|(n, _)| n == *k))
    {
        return Err(mismatch(format!("'{missing}' is missing")));
    }
    Ok(weights)
}

/// Reads a checkpoint's JSON training state.
pub fn load_state<S: DeserializeOwned>(checkpoint: &Path) -> Result<S, CheckpointError> {
    let state_path = checkpoint.join(STATE);
    let text = std::fs::read(&state_path).map_err(io(&state_path))?;
    serde_json::from_slice(&text).map_err(|e| CheckpointError::Corrupt {
        path: state_path.clone(),
        message: e.to_string(),
    })
}

/// Deletes all but the newest `keep` step folders (never the one `latest` names).
pub fn prune(run_dir: &Path, keep: usize) -> Result<(), CheckpointError> {
    let dir = run_dir.join("checkpoints");
    let current = latest(run_dir)?;
    let mut steps: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(io(&dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
        })
        .collect();
    steps.sort();
    let old = steps.len().saturating_sub(keep.max(1));
    for path in &steps[..old] {
        if Some(path) != current.as_ref() {
            std::fs::remove_dir_all(path).map_err(io(path))?;
        }
    }
    Ok(())
}
