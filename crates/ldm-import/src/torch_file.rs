//! PyTorch's zip checkpoints (`torch.save` since 1.6: `.ckpt`, `.pt`, `.bin`): the pickle
//! `<archive>/data.pkl`, read by [`crate::pickle`], and one file per storage under
//! `<archive>/data/`.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use crate::pickle::{self, TensorRef, Value};
use crate::tensor::{DType, RawTensor};
use crate::ImportError;

/// data.pkl of a state dict is a few megabytes; Lightning's extra state does not make it this.
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// The pickled object of a zip checkpoint and the archive to read its storages from.
pub struct TorchFile {
    archive: zip::ZipArchive<std::fs::File>,
    prefix: String,
    path: String,
    pub root: Value,
}

impl TorchFile {
    pub fn open(path: &Path) -> Result<Self, ImportError> {
        let shown = path.display().to_string();
        let bad = |message: String| ImportError::Checkpoint {
            path: shown.clone(),
            message,
        };
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| {
            bad(format!(
                "not a zip checkpoint ({e}); files from torch before 1.6 (legacy format) are not read"
            ))
        })?;
        let pickle_name = archive
            .file_names()
            .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .map(str::to_string)
            .ok_or_else(|| bad("the archive has no <name>/data.pkl".into()))?;
        let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
        if let Ok(mut order) = archive.by_name(&format!("{prefix}byteorder")) {
            let mut s = String::new();
            order
                .by_ref()
                .take(16)
                .read_to_string(&mut s)
                .map_err(|e| bad(e.to_string()))?;
            if s.trim() != "little" {
                return Err(bad(format!(
                    "byte order '{}' is not little-endian",
                    s.trim()
                )));
            }
        }
        let bytes = read_entry(&mut archive, &pickle_name, MAX_PICKLE_BYTES).map_err(bad)?;
        let root = pickle::load(&bytes).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            archive,
            prefix,
            path: shown,
            root,
        })
    }

    /// The tensors of the state dict at `root` (or of `root["state_dict"]`, as Lightning saves
    /// it), with non-tensor entries skipped.
    pub fn state_dict(&mut self) -> Result<BTreeMap<String, RawTensor>, ImportError> {
        let dict = match self.root.get("state_dict") {
            Some(d @ Value::Dict(_)) => d.clone(),
            _ => self.root.clone(),
        };
        let Value::Dict(items) = dict else {
            return Err(self.error("the checkpoint holds no dict of tensors".into()));
        };
        let mut storages: HashMap<String, (DType, Vec<u8>)> = HashMap::new();
        let mut out = BTreeMap::new();
        for (key, value) in items {
            let (Value::Str(name), Value::Tensor(t)) = (key, value) else {
                continue;
            };
            let tensor = self
                .tensor(&t, &mut storages)
                .map_err(|m| self.error(format!("tensor '{name}': {m}")))?;
            out.insert(name, tensor);
        }
        if out.is_empty() {
            return Err(self.error("the checkpoint's state dict holds no tensors".into()));
        }
        Ok(out)
    }

    fn error(&self, message: String) -> ImportError {
        ImportError::Checkpoint {
            path: self.path.clone(),
            message,
        }
    }

    fn tensor(
        &mut self,
        t: &TensorRef,
        storages: &mut HashMap<String, (DType, Vec<u8>)>,
    ) -> Result<RawTensor, String> {
        let s = &t.storage;
        if !s.key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("storage key '{}' is not a plain name", s.key));
        }
        let dtype = DType::from_torch_storage(&s.storage_type)
            .ok_or_else(|| format!("storage type {} is not supported", s.storage_type))?;
        if !storages.contains_key(&s.key) {
            let name = format!("{}data/{}", self.prefix, s.key);
            let limit = s
                .numel
                .checked_mul(dtype.size() as u64)
                .ok_or("storage size overflows")?;
            let bytes = read_entry(&mut self.archive, &name, limit)?;
            if (bytes.len() as u64) < limit {
                return Err(format!(
                    "storage {} holds {} bytes, {} elements need {limit}",
                    s.key,
                    bytes.len(),
                    s.numel
                ));
            }
            storages.insert(s.key.clone(), (dtype, bytes));
        }
        let (stored, bytes) = &storages[&s.key];
        if *stored != dtype {
            return Err(format!("storage {} is read as two element types", s.key));
        }
        gather(bytes, dtype, t).map(|data| RawTensor {
            dtype,
            shape: t.shape.iter().map(|&d| d as usize).collect(),
            data,
        })
    }
}

/// The bytes of `name`, refusing an entry longer than `limit`.
fn read_entry(
    archive: &mut zip::ZipArchive<std::fs::File>,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>, String> {
    let entry = archive.by_name(name).map_err(|e| format!("{name}: {e}"))?;
    if entry.size() > limit {
        return Err(format!(
            "{name} holds {} bytes, more than the {limit} expected",
            entry.size()
        ));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(bytes)
}

/// The tensor's elements, row-major, from its view (offset, shape, stride) of `storage`.
fn gather(storage: &[u8], dtype: DType, t: &TensorRef) -> Result<Vec<u8>, String> {
    let es = dtype.size();
    let numel = t
        .shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or("tensor size overflows")?;
    let available = (storage.len() / es) as u64;
    if numel == 0 {
        return Ok(Vec::new());
    }
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |a, (&d, &s)| {
            a.checked_add((d - 1).checked_mul(s)?)
        })
        .ok_or("tensor extent overflows")?;
    if last >= available {
        return Err(format!(
            "the view reaches element {last} of a storage of {available}"
        ));
    }
    let contiguous = {
        let mut expect = 1u64;
        let mut ok = true;
        for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
            if d != 1 && s != expect {
                ok = false;
            }
            expect *= d;
        }
        ok
    };
    let start = t.offset as usize * es;
    if contiguous {
        return Ok(storage[start..start + numel as usize * es].to_vec());
    }
    let mut out = Vec::with_capacity(numel as usize * es);
    let mut index = vec![0u64; t.shape.len()];
    for _ in 0..numel {
        let at = t.offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<u64>();
        let at = at as usize * es;
        out.extend_from_slice(&storage[at..at + es]);
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            if index[axis] < t.shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    Ok(out)
}
