//! An exported bundle (`export/<name>/`): its manifest, its tokenizer, and sessions on its
//! graphs, each checked against the manifest before it runs anything.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use ldm_core::conditions::TextPrompts;
use ldm_core::confined::read_confined;
use ldm_core::manifest::{BundleConditioning, GraphRole};
use ldm_core::tokenizer::MAX_TOKENIZER_BYTES;
use ldm_core::{Manifest, TextTokenizer};

use crate::{PlanCache, RuntimeError, Session, TractSession};

/// The engine that runs the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Pure-Rust tract on the CPU (always available).
    Tract,
    /// ONNX Runtime's CPU provider (the `ort` feature and the onnxruntime library).
    OrtCpu,
    /// ONNX Runtime's CUDA provider (onnxruntime-gpu and an NVIDIA GPU).
    OrtCuda,
    /// ONNX Runtime's TensorRT provider, engines cached under `$LDM_TRT_CACHE` (default
    /// `~/.cache/ldm/tensorrt`).
    OrtTensorRt,
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tract" => Ok(Backend::Tract),
            "ort-cpu" => Ok(Backend::OrtCpu),
            "ort-cuda" => Ok(Backend::OrtCuda),
            "ort-trt" => Ok(Backend::OrtTensorRt),
            other => Err(format!(
                "unknown backend '{other}' (expected tract, ort-cpu, ort-cuda or ort-trt)"
            )),
        }
    }
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Tract => "tract",
            Backend::OrtCpu => "ort-cpu",
            Backend::OrtCuda => "ort-cuda",
            Backend::OrtTensorRt => "ort-trt",
        }
    }
}

pub struct Bundle {
    dir: PathBuf,
    pub manifest: Manifest,
    /// The prompt tokenizer of a text-conditioned bundle.
    pub tokenizer: Option<TextTokenizer>,
    /// The caption tokenizer of a layout bundle's planner.
    pub planner_tokenizer: Option<TextTokenizer>,
    /// Bytes of its graph files together.
    graph_bytes: u64,
}

impl Bundle {
    /// How a text bundle's prompts become token ids.
    pub fn text_prompts(&self) -> Option<TextPrompts<'_>> {
        match (&self.tokenizer, &self.manifest.conditioning) {
            (
                Some(tokenizer),
                BundleConditioning::Text {
                    max_length, layout, ..
                },
            ) => Some(TextPrompts {
                tokenizer,
                layout: layout.as_ref(),
                max_length: *max_length,
            }),
            _ => None,
        }
    }

    /// Reads and validates `dir/manifest.json`, checks every graph file as untrusted input
    /// (see `untrusted.rs`) and against the manifest's inputs and outputs (`contract.rs`), and
    /// loads the tokenizer of a text model.
    pub fn load(dir: &Path) -> Result<Self, RuntimeError> {
        let manifest = Manifest::load(dir)?;
        let mut graph_bytes = 0u64;
        for spec in manifest.graphs.values() {
            let path = dir.join(&spec.file);
            if std::fs::symlink_metadata(&path).is_err() {
                return Err(RuntimeError::Bundle {
                    path,
                    message: "listed in manifest.json but missing".into(),
                });
            }
            let graph = crate::untrusted::read_checked(dir, &spec.file)?;
            graph_bytes =
                graph_bytes.saturating_add(std::fs::metadata(&path).map_or(0, |m| m.len()));
            crate::contract::check_io(&path, spec, &graph)?;
        }
        let tokenizer = match &manifest.conditioning {
            BundleConditioning::Text {
                tokenizer,
                vocab_size,
                ..
            } => Some(load_tokenizer(dir, tokenizer, *vocab_size)?),
            _ => None,
        };
        let planner_tokenizer = match manifest.conditioning.planner() {
            Some(p) => Some(load_tokenizer(dir, &p.tokenizer, p.vocab_size)?),
            None => None,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            tokenizer,
            planner_tokenizer,
            graph_bytes,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of the bundle's graph files together (their weights, as stored).
    pub fn graph_bytes(&self) -> u64 {
        self.graph_bytes
    }

    /// A session on `role`'s graph (whose inputs and outputs [`Bundle::load`] checked against
    /// the manifest).
    pub fn session(
        &self,
        role: GraphRole,
        backend: Backend,
        threads: usize,
    ) -> Result<Box<dyn Session>, RuntimeError> {
        open(&self.graph_path(role)?, backend, threads)
    }

    /// The file of `role`'s graph.
    pub fn graph_path(&self, role: GraphRole) -> Result<PathBuf, RuntimeError> {
        let spec = self
            .manifest
            .graph(role)
            .ok_or_else(|| RuntimeError::Bundle {
                path: self.dir.join(ldm_core::manifest::MANIFEST_FILE),
                message: format!("no `{}` graph", role.as_str()),
            })?;
        Ok(self.dir.join(&spec.file))
    }
}

/// Threads a pipeline runs with when its caller does not say: the machine's cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Threads a session may be asked for, per core of the machine: more only slows it down, and
/// an unbounded count exhausts the system's threads.
const MAX_THREADS_PER_CORE: usize = 4;

/// `threads` if the machine can run that many, at least 1.
pub fn check_threads(threads: usize) -> Result<usize, RuntimeError> {
    let max = default_threads() * MAX_THREADS_PER_CORE;
    if !(1..=max).contains(&threads) {
        return Err(RuntimeError::Threads {
            asked: threads,
            max,
            per_core: MAX_THREADS_PER_CORE,
        });
    }
    Ok(threads)
}

/// A tokenizer of the bundle, read under the confinement rule; its ids must index the
/// embedding of the graph it feeds (`vocab_size` rows).
fn load_tokenizer(
    dir: &Path,
    file: &str,
    vocab_size: usize,
) -> Result<TextTokenizer, RuntimeError> {
    let bytes = read_confined(dir, file, MAX_TOKENIZER_BYTES)?;
    let path = dir.join(file);
    let tokenizer = TextTokenizer::from_bytes(&bytes, &path.display().to_string())?;
    if tokenizer.max_id() >= vocab_size {
        return Err(RuntimeError::Bundle {
            path,
            message: format!(
                "token id {} is beyond the {vocab_size} embeddings its graph holds (vocab_size)",
                tokenizer.max_id()
            ),
        });
    }
    Ok(tokenizer)
}

#[cfg(feature = "ort")]
fn open(path: &Path, backend: Backend, threads: usize) -> Result<Box<dyn Session>, RuntimeError> {
    use crate::onnxruntime::Provider;
    let provider = match backend {
        Backend::Tract => return tract_session(path, threads),
        Backend::OrtCpu => Provider::Cpu,
        Backend::OrtCuda => Provider::Cuda,
        Backend::OrtTensorRt => Provider::TensorRt {
            engine_cache: tensorrt_cache(),
        },
    };
    Ok(Box::new(crate::OrtSession::load_on(
        path, threads, &provider,
    )?))
}

#[cfg(not(feature = "ort"))]
fn open(path: &Path, backend: Backend, threads: usize) -> Result<Box<dyn Session>, RuntimeError> {
    match backend {
        Backend::Tract => tract_session(path, threads),
        other => Err(RuntimeError::BackendUnavailable {
            name: other.name().into(),
            reason: "this build has no ONNX Runtime support (build with --features ort)".into(),
        }),
    }
}

/// A tract session, its decluttered graphs cached where [`PlanCache::from_env`] says.
fn tract_session(path: &Path, threads: usize) -> Result<Box<dyn Session>, RuntimeError> {
    Ok(Box::new(match PlanCache::from_env() {
        Some(cache) => TractSession::with_plan_cache(path, threads, cache)?,
        None => TractSession::with_threads(path, threads)?,
    }))
}

/// Where TensorRT engines are cached: `$LDM_TRT_CACHE`, else `~/.cache/ldm/tensorrt`.
#[cfg(feature = "ort")]
fn tensorrt_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("LDM_TRT_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache/ldm/tensorrt")
}
