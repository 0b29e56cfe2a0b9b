//! Tensors from files: `.safetensors` (one file, or shards listed by an `.index.json`) and
//! PyTorch zip checkpoints, told apart by their first bytes rather than their names.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::tensor::{DType, RawTensor};
use crate::torch_file::TorchFile;
use crate::{ImportError, Weights};

/// An index of shards is a few hundred kilobytes.
const MAX_INDEX_BYTES: u64 = 16 << 20;

/// Every tensor of the checkpoint file at `path`.
pub fn read_tensors(path: &Path) -> Result<Weights, ImportError> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| ImportError::io(path, e))?;
    let n = file
        .read(&mut magic)
        .map_err(|e| ImportError::io(path, e))?;
    if n == 4 && magic == *b"PK\x03\x04" {
        return TorchFile::open(path)?.state_dict();
    }
    read_safetensors(path)
}

fn read_safetensors(path: &Path) -> Result<Weights, ImportError> {
    let bytes = std::fs::read(path).map_err(|e| ImportError::io(path, e))?;
    let bad = |message: String| ImportError::Checkpoint {
        path: path.display().to_string(),
        message,
    };
    let file = SafeTensors::deserialize(&bytes).map_err(|e| {
        bad(format!(
            "neither a zip checkpoint nor a safetensors file ({e:?})"
        ))
    })?;
    let mut out = Weights::new();
    for (name, view) in file.tensors() {
        let dtype = match view.dtype() {
            Dtype::F64 => DType::F64,
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::I64 => DType::I64,
            Dtype::I32 => DType::I32,
            Dtype::I16 => DType::I16,
            Dtype::I8 => DType::I8,
            Dtype::U8 => DType::U8,
            Dtype::BOOL => DType::Bool,
            other => return Err(bad(format!("tensor '{name}' has element type {other:?}"))),
        };
        out.insert(
            name,
            RawTensor {
                dtype,
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            },
        );
    }
    Ok(out)
}

/// The weights of a diffusers component folder: `<stem>.safetensors`, its shards
/// (`<stem>.safetensors.index.json`), or `<stem>.bin`, in that order of preference.
pub fn read_component(dir: &Path, stems: &[&str]) -> Result<Weights, ImportError> {
    for stem in stems {
        for file in [format!("{stem}.safetensors"), format!("{stem}.bin")] {
            if dir.join(&file).is_file() {
                return read_tensors(&dir.join(file));
            }
        }
        let index = format!("{stem}.safetensors.index.json");
        if dir.join(&index).is_file() {
            return read_shards(dir, &index);
        }
    }
    Err(ImportError::Io {
        path: dir.display().to_string(),
        message: format!(
            "no weights: expected {} (.safetensors, sharded, or .bin)",
            stems.join(" or ")
        ),
    })
}

fn read_shards(dir: &Path, index: &str) -> Result<Weights, ImportError> {
    let shown = dir.join(index);
    let bytes = ldm_core::confined::read_confined(dir, index, MAX_INDEX_BYTES)
        .map_err(|e| ImportError::io(&shown, e.reason))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| ImportError::io(&shown, e))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ImportError::config(&shown, "weight_map", "missing or not an object"))?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| ImportError::config(&shown, tensor, "shard is not a file name"))?;
        shards.insert(file.to_string());
    }
    let mut out = Weights::new();
    for shard in shards {
        let path = ldm_core::confined::confined(dir, &shard)
            .map_err(|e| ImportError::config(&shown, "weight_map", e.reason))?;
        for (name, tensor) in read_tensors(&path)? {
            if out.insert(name.clone(), tensor).is_some() {
                return Err(ImportError::config(
                    &shown,
                    "weight_map",
                    format!("tensor '{name}' is in two shards"),
                ));
            }
        }
    }
    Ok(out)
}
