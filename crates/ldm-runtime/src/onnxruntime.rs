//! ONNX Runtime through `ort`, with the shared library loaded at run time.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session as OrtInner;
use ort::value::{DynValue, Tensor as OrtTensor, ValueType};

use crate::session::in_graph_order;
use crate::{RuntimeError, Session, Tensor, TensorData};

/// Where the ONNX Runtime library is looked for, in order: `ORT_DYLIB_PATH`, then the link
/// `scripts/setup.sh` makes in the project (`.ldm/libonnxruntime.so`, from the working
/// directory upwards).
pub fn onnxruntime_library() -> Result<PathBuf, RuntimeError> {
    let mut searched = Vec::new();
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        searched.push(format!("ORT_DYLIB_PATH={}", path.display()));
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    for dir in cwd.ancestors() {
        let candidate = dir.join(".ldm").join("libonnxruntime.so");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    searched.push(format!(
        ".ldm/libonnxruntime.so in {} and its parents",
        cwd.display()
    ));
    Err(RuntimeError::OrtLibraryMissing {
        searched: searched.join("; "),
    })
}

/// Loads the library once per process; ONNX Runtime allows one environment per process.
fn environment() -> Result<&'static ort::environment::Environment, RuntimeError> {
    static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    let result = ENVIRONMENT.get_or_init(|| {
        let library = onnxruntime_library().map_err(|e| e.to_string())?;
        ort::init_from(&library)
            .map_err(|e| format!("{}: {e}", library.display()))?
            .with_name("ldm")
            .build()
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(environment) => Ok(environment),
        Err(message) => Err(RuntimeError::BackendUnavailable {
            name: "onnxruntime".into(),
            reason: message.clone(),
        }),
    }
}

pub struct OrtSession {
    session: OrtInner,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

fn run_error(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Run {
        engine: "onnxruntime",
        message: e.to_string(),
    }
}

/// The execution provider a session runs on. ONNX Runtime places nodes a GPU provider cannot
/// run on the CPU (normal for TensorRT partitions); a provider that cannot start at all is an
/// error here, never a silent fall back to the CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda,
    /// TensorRT, with built engines cached in this folder (reused across runs).
    TensorRt {
        engine_cache: PathBuf,
    },
}

impl Provider {
    /// The provider's name, whether this ONNX Runtime has it, and its registration.
    fn dispatch(&self) -> Option<(&'static str, bool, ort::ep::ExecutionProviderDispatch)> {
        use ort::ep::ExecutionProvider;
        match self {
            Provider::Cpu => None,
            Provider::Cuda => Some((
                "CUDAExecutionProvider",
                matches!(ort::ep::CUDA::is_available(), Ok(true)),
                ort::ep::CUDA::default().build(),
            )),
            Provider::TensorRt { engine_cache } => Some((
                "TensorrtExecutionProvider",
                matches!(ort::ep::TensorRT::is_available(), Ok(true)),
                ort::ep::TensorRT::default()
                    .with_engine_cache(true)
                    .with_engine_cache_path(engine_cache.display())
                    .with_timing_cache(true)
                    .with_timing_cache_path(engine_cache.display())
                    .build(),
            )),
        }
    }
}

impl OrtSession {
    /// Loads a graph on the CPU provider with `threads` intra-op threads.
    pub fn load(path: &Path, threads: usize) -> Result<Self, RuntimeError> {
        Self::load_on(path, threads, &Provider::Cpu)
    }

    /// Loads a graph on `provider`, refusing (with the reason) a provider this ONNX Runtime
    /// build or machine cannot start.
    pub fn load_on(path: &Path, threads: usize, provider: &Provider) -> Result<Self, RuntimeError> {
        let threads = crate::bundle::check_threads(threads)?;
        let environment = environment()?;
        let load_error = |e: &dyn std::fmt::Display| RuntimeError::Load {
            engine: "onnxruntime",
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut builder = OrtInner::builder(environment)
            .map_err(|e| load_error(&e))?
            .with_intra_threads(threads)
            .map_err(|e| load_error(&e))?;
        if let Some((name, available, dispatch)) = provider.dispatch() {
            let unavailable = |reason: String| RuntimeError::BackendUnavailable {
                name: name.into(),
                reason,
            };
            if let Provider::TensorRt { engine_cache } = provider {
                std::fs::create_dir_all(engine_cache).map_err(|e| {
                    unavailable(format!("engine cache {}: {e}", engine_cache.display()))
                })?;
            }
            if !available {
                return Err(unavailable(
                    "this ONNX Runtime has no such provider; on a machine with an NVIDIA GPU, scripts/setup.sh --gpu installs onnxruntime-gpu".into(),
                ));
            }
            builder = builder
                .with_execution_providers([dispatch.error_on_failure()])
                .map_err(|e| unavailable(e.to_string()))?;
        }
        let session = builder.commit_from_file(path).map_err(|e| load_error(&e))?;
        let inputs = session
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let outputs = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        Ok(Self {
            session,
            inputs,
            outputs,
        })
    }
}

impl Session for OrtSession {
    fn input_names(&self) -> &[String] {
        &self.inputs
    }

    fn output_names(&self) -> &[String] {
        &self.outputs
    }

    fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<Tensor>, RuntimeError> {
        let ordered = in_graph_order(&self.inputs, inputs)?;
        let values = ordered
            .iter()
            .zip(&self.inputs)
            .map(|(t, name)| {
                let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
                let value: DynValue = match t.data() {
                    TensorData::F32(v) => OrtTensor::from_array((shape, v.clone()))
                        .map_err(run_error)?
                        .into_dyn(),
                    TensorData::I64(v) => OrtTensor::from_array((shape, v.clone()))
                        .map_err(run_error)?
                        .into_dyn(),
                };
                Ok((name.clone(), value))
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        let outputs = self.session.run(values).map_err(run_error)?;
        self.outputs
            .iter()
            .map(|name| {
                let value = &outputs[name.as_str()];
                match value.dtype() {
                    ValueType::Tensor {
                        ty: ort::value::TensorElementType::Float32,
                        ..
                    } => {
                        let (shape, data) = value.try_extract_tensor::<f32>().map_err(run_error)?;
                        Tensor::f32(&dims(shape), data.to_vec())
                    }
                    ValueType::Tensor {
                        ty: ort::value::TensorElementType::Int64,
                        ..
                    } => {
                        let (shape, data) = value.try_extract_tensor::<i64>().map_err(run_error)?;
                        Tensor::i64(&dims(shape), data.to_vec())
                    }
                    other => Err(RuntimeError::UnsupportedType {
                        name: name.clone(),
                        dtype: format!("{other:?}"),
                    }),
                }
            })
            .collect()
    }
}

fn dims(shape: &ort::value::Shape) -> Vec<usize> {
    shape.iter().map(|&d| d as usize).collect()
}
