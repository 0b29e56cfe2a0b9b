//! tract's decluttered graphs kept on disk, so that a process starts without analysing and
//! decluttering its graphs again.
//!
//! Of the 0.8 s tract takes to plan the shipped UNet, 0.15 s is analysis (`into_typed`) and
//! 0.42 s decluttering; the rest is the optimisation for this machine's kernels, which stays
//! per process. The decluttered graph is written once in NNEF, tract's own format, and read
//! back in 0.14 s. An entry is named by the SHA-256 of the graph file's bytes, the input shapes
//! and the tract version, so a changed bundle or another size gets an entry of its own, and an
//! entry that cannot be read, or whose bytes no longer match the digest it starts with, is
//! ignored and written again. Graphs whose weights live in external data files are not cached
//! (their bytes are not the graph file's).

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::nn::GeluExact;
use tract_onnx::WithOnnx;

/// What the cache may hold on disk; past it the least recently used entries go.
pub const MAX_CACHE_BYTES: u64 = 1 << 30;
/// An entry larger than this is neither written nor read (a paper-size UNet's is about 1 GB).
const MAX_ENTRY_BYTES: u64 = 256 << 20;
const SUFFIX: &str = ".nnef.tar";
/// Changes when what an entry holds changes: the steps between parsing and decluttering, or
/// tract (the workspace pins its exact version; a test keeps the two in step).
const FORMAT: &str = "ldm-plan-1 tract-0.23.9";

/// A folder of decluttered graphs.
#[derive(Debug, Clone)]
pub struct PlanCache {
    dir: PathBuf,
}

impl PlanCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$LDM_PLAN_CACHE`, else `~/.cache/ldm/tract`; none when the variable is `off` or empty.
    pub fn from_env() -> Option<Self> {
        match std::env::var_os("LDM_PLAN_CACHE") {
            Some(value) if value == "off" || value.is_empty() => None,
            Some(dir) => Some(Self::new(dir)),
            None => {
                let home = std::env::var_os("HOME").map(PathBuf::from)?;
                Some(Self::new(home.join(".cache/ldm/tract")))
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry's file for a graph whose bytes hash to `graph` and a plan for `inputs`.
    pub fn entry(&self, graph: &[u8; 32], inputs: &[(DatumType, Vec<usize>)]) -> PathBuf {
        let mut hasher = Sha256::new();
        hasher.update(FORMAT);
        hasher.update(graph);
        for (datum, shape) in inputs {
            hasher.update(format!("{datum:?}{shape:?};"));
        }
        let name: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.dir.join(name + SUFFIX)
    }

    /// The decluttered graph of `entry`, if it is there, whole (its digest matches) and reads
    /// back. Without the digest a flipped bit among the weights would load, and draw wrong
    /// images without a word.
    pub fn load(&self, entry: &Path) -> Option<TypedModel> {
        let mut file = std::fs::File::open(entry).ok()?;
        if file.metadata().ok()?.len() > MAX_ENTRY_BYTES {
            return None;
        }
        let mut digest = [0u8; 32];
        file.read_exact(&mut digest).ok()?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).ok()?;
        if hasher.finalize().as_slice() != digest {
            return None;
        }
        file.seek(SeekFrom::Start(digest.len() as u64)).ok()?;
        let model = nnef().model_for_read(&mut BufReader::new(&file)).ok()?;
        // Marks the entry as used, for the eviction of the least recently used.
        let _ = std::fs::File::options()
            .append(true)
            .open(entry)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        Some(model)
    }

    /// Writes `model` as `entry` (whole or not at all): the SHA-256 of the NNEF archive, then the
    /// archive. Then trims the cache to [`MAX_CACHE_BYTES`].
    pub fn store(&self, entry: &Path, model: &TypedModel) -> TractResult<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)?;
        file.write_all(&[0u8; 32])?;
        let digest = {
            let mut writer = Hashing {
                inner: BufWriter::new(file.as_file_mut()),
                hasher: Sha256::new(),
            };
            nnef().write_to_tar(model, &mut writer)?;
            writer.inner.flush()?;
            writer.hasher.finalize()
        };
        if file.as_file().metadata()?.len() > MAX_ENTRY_BYTES {
            return Ok(());
        }
        file.as_file_mut().seek(SeekFrom::Start(0))?;
        file.write_all(&digest)?;
        file.persist(entry).map_err(|e| e.error)?;
        self.trim(MAX_CACHE_BYTES)?;
        Ok(())
    }

    /// Removes the least recently used entries until the rest hold at most `budget` bytes.
    pub fn trim(&self, budget: u64) -> std::io::Result<()> {
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = std::fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(SUFFIX))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        entries.sort();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        for (_, len, path) in entries {
            if total <= budget {
                break;
            }
            std::fs::remove_file(&path)?;
            total -= len;
        }
        Ok(())
    }
}

/// A writer that hashes what it passes on.
struct Hashing<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The SHA-256 of a graph file's bytes.
pub fn fingerprint(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// tract's NNEF with the operators of ONNX graphs, and a name for the exact GELU, which tract
/// 0.23.9 declutters to but has no NNEF form for.
fn nnef() -> tract_nnef::framework::Nnef {
    let mut ldm = tract_nnef::internal::Registry::new("ldm");
    ldm.register_unit_element_wise("ldm_gelu_exact", &GeluExact {});
    tract_nnef::nnef().with_onnx().with_registry(ldm)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_format_names_the_tract_version_the_workspace_pins() {
        let workspace = include_str!("../../../Cargo.toml");
        let pinned = workspace
            .lines()
            .find_map(|l| l.strip_prefix("tract-onnx = \"="))
            .and_then(|v| v.strip_suffix('"'))
            .expect("tract-onnx pinned with =");
        assert!(
            super::FORMAT.ends_with(&format!("tract-{pinned}")),
            "{}",
            super::FORMAT
        );
    }
}
