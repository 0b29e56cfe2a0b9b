//! `ldm._ldm`: the native half of the `ldm` Python package. It holds no logic of its own:
//! requests go to `ldm_runtime::Pipeline` (and, for the Ray Serve deployment, to the server's
//! own router through `ldm_serve::in_process`), errors come back as `ldm.LdmError` with the
//! runtime's message. Images cross as `(width, height, rgb bytes)`; `python/ldm/__init__.py`
//! turns them into PIL images or numpy arrays.

use std::path::PathBuf;
use std::sync::Mutex;

use ldm_core::semantic::ClassMap;
use ldm_runtime::{Backend, Bundle, Generate, Image, Pipeline, RuntimeError};
use ldm_serve::in_process::{HostRequest, InProcess};
use ldm_serve::ServeOptions;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

create_exception!(
    _ldm,
    LdmError,
    PyException,
    "An error of the ldm runtime: the message names the problem."
);
create_exception!(
    _ldm,
    Cancelled,
    LdmError,
    "A generation stopped by its callback."
);

/// An image as it crosses into Python (a semantic map: one class id per pixel).
type RawImage = (usize, usize, Vec<u8>);

fn error(e: impl std::fmt::Display) -> PyErr {
    LdmError::new_err(e.to_string())
}

fn runtime_error(e: RuntimeError) -> PyErr {
    match e {
        RuntimeError::Cancelled => Cancelled::new_err(e.to_string()),
        e => error(e),
    }
}

fn backend(name: &str) -> PyResult<Backend> {
    name.parse().map_err(error)
}

fn image((width, height, rgb): RawImage) -> PyResult<Image> {
    if width.checked_mul(height).and_then(|p| p.checked_mul(3)) != Some(rgb.len()) {
        return Err(error(format!(
            "an image of {width}x{height} needs {} RGB bytes; it has {}",
            width.saturating_mul(height).saturating_mul(3),
            rgb.len()
        )));
    }
    Ok(Image { width, height, rgb })
}

/// The manifest of the bundle in `dir`, as JSON, after every check `Bundle::load` makes.
#[pyfunction]
fn bundle_manifest(py: Python<'_>, dir: PathBuf) -> PyResult<String> {
    let bundle = py.detach(|| Bundle::load(&dir)).map_err(runtime_error)?;
    serde_json::to_string(&bundle.manifest).map_err(error)
}

/// A loaded bundle and its open graphs.
#[pyclass(frozen, name = "Pipeline")]
struct PyPipeline {
    pipeline: Mutex<Pipeline>,
    dir: PathBuf,
}

#[pymethods]
impl PyPipeline {
    #[staticmethod]
    #[pyo3(signature = (bundle, backend = "tract", threads = None))]
    fn load(
        py: Python<'_>,
        bundle: PathBuf,
        backend: &str,
        threads: Option<usize>,
    ) -> PyResult<PyPipeline> {
        let backend = self::backend(backend)?;
        let threads = threads.unwrap_or_else(ldm_runtime::default_threads);
        let pipeline = py
            .detach(|| Pipeline::new(Bundle::load(&bundle)?, backend, threads))
            .map_err(runtime_error)?;
        Ok(PyPipeline {
            pipeline: Mutex::new(pipeline),
            dir: bundle,
        })
    }

    /// The bundle's folder.
    #[getter]
    fn path(&self) -> PathBuf {
        self.dir.clone()
    }

    fn manifest_json(&self) -> PyResult<String> {
        let pipeline = self.pipeline.lock().map_err(error)?;
        serde_json::to_string(&pipeline.bundle().manifest).map_err(error)
    }

    /// Generates `n` images of `prompt` (image i with seed + i) with the GIL released; `callback(step, total)` runs
    /// after every step, and a false answer (or an exception) stops the generation.
    #[pyo3(signature = (prompt, n, negative_prompt, steps, guidance, sampler, eta, seed,
                        width, height, init_image, mask, strength, semantic_map, callback))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: String,
        n: usize,
        negative_prompt: String,
        steps: Option<usize>,
        guidance: Option<f64>,
        sampler: Option<String>,
        eta: Option<f64>,
        seed: u64,
        width: Option<usize>,
        height: Option<usize>,
        init_image: Option<RawImage>,
        mask: Option<RawImage>,
        strength: Option<f64>,
        semantic_map: Option<RawImage>,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Vec<(usize, usize, Py<PyBytes>)>> {
        let mut request = Generate::repeated(&prompt, n).map_err(error)?.seed(seed);
        request.negative_prompt = negative_prompt;
        request.steps = steps;
        request.guidance = guidance;
        request.eta = eta;
        request.sampler = sampler
            .filter(|s| !s.is_empty())
            .map(|s| s.parse())
            .transpose()
            .map_err(error)?;
        request.width = width;
        request.height = height;
        request.init_image = init_image.map(image).transpose()?;
        request.mask = mask.map(image).transpose()?;
        request.strength = strength;
        // Its length and ids are checked by the runtime, as every engine's are.
        request.semantic_map =
            semantic_map.map(|(width, height, ids)| ClassMap { width, height, ids });

        // An exception raised by the callback, re-raised once the pipeline has stopped.
        let mut raised: Option<PyErr> = None;
        let outcome = py.detach(|| {
            let mut pipeline = self
                .pipeline
                .lock()
                .map_err(|e| Failure::Python(error(e)))?;
            pipeline
                .generate(&request, &mut |progress| {
                    let Some(callback) = &callback else {
                        return true;
                    };
                    Python::attach(
                        |py| match callback.call1(py, (progress.step, progress.total)) {
                            Ok(answer) => !matches!(answer.extract::<bool>(py), Ok(false)),
                            Err(e) => {
                                raised = Some(e);
                                false
                            }
                        },
                    )
                })
                .map_err(Failure::Runtime)
        });
        let images = match outcome {
            Ok(images) => images,
            Err(_) if raised.is_some() => return Err(raised.expect("checked")),
            Err(Failure::Runtime(e)) => return Err(runtime_error(e)),
            Err(Failure::Python(e)) => return Err(e),
        };
        Ok(images
            .into_iter()
            .map(|i| (i.width, i.height, PyBytes::new(py, &i.rgb).unbind()))
            .collect())
    }
}

/// Why a generation with the GIL released failed.
enum Failure {
    Runtime(RuntimeError),
    Python(PyErr),
}

impl From<PyErr> for Failure {
    fn from(e: PyErr) -> Self {
        Failure::Python(e)
    }
}

/// `ldm serve`'s routes without a socket, for hosts that own the connection (Ray Serve).
#[pyclass(frozen, name = "Server")]
struct PyServer {
    server: InProcess,
}

#[pymethods]
impl PyServer {
    #[new]
    #[pyo3(signature = (bundles, backend = "tract", threads = None, max_batch = 8,
                        queue = 32, api_key = None, max_images = 8, max_side = 1024,
                        max_steps = 250, deadline_s = 300))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        bundles: Vec<PathBuf>,
        backend: &str,
        threads: Option<usize>,
        max_batch: usize,
        queue: usize,
        api_key: Option<String>,
        max_images: usize,
        max_side: usize,
        max_steps: usize,
        deadline_s: u64,
    ) -> PyResult<PyServer> {
        let options = ServeOptions {
            bundles,
            backend: self::backend(backend)?,
            threads: threads.unwrap_or_else(ldm_runtime::default_threads),
            max_batch,
            queue,
            api_key,
            max_images,
            max_side,
            max_steps,
            deadline: std::time::Duration::from_secs(deadline_s),
            ..ServeOptions::default()
        };
        let server = py
            .detach(|| InProcess::load(options))
            .map_err(|e| error(ldm_core::one_line(e.as_ref())))?;
        Ok(PyServer { server })
    }

    /// The names of the served models (their bundles' folder names), the default first.
    fn models(&self) -> Vec<String> {
        self.server
            .state()
            .models
            .iter()
            .map(|m| m.name.clone())
            .collect()
    }

    /// Answers one HTTP request as `ldm serve` would: `(status, headers, body)`. The GIL is
    /// released meanwhile, so concurrent calls batch their generations.
    fn handle(
        &self,
        py: Python<'_>,
        method: &str,
        uri: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> PyResult<HttpAnswer> {
        let response = py
            .detach(|| {
                self.server.handle(HostRequest {
                    method,
                    uri,
                    headers: &headers,
                    body,
                })
            })
            .map_err(|e| error(ldm_core::one_line(e.as_ref())))?;
        Ok((
            response.status,
            response.headers,
            PyBytes::new(py, &response.body).unbind(),
        ))
    }
}

/// An HTTP answer as Python receives it: status, headers and body.
type HttpAnswer = (u16, Vec<(String, String)>, Py<PyBytes>);

/// The engines this build can run (`tract` always; ONNX Runtime's with the `ort` feature).
#[pyfunction]
fn backends() -> Vec<&'static str> {
    let mut names = vec![Backend::Tract.name()];
    if cfg!(feature = "ort") {
        names.extend([
            Backend::OrtCpu.name(),
            Backend::OrtCuda.name(),
            Backend::OrtTensorRt.name(),
        ]);
    }
    names
}

#[pymodule]
fn _ldm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("LdmError", m.py().get_type::<LdmError>())?;
    m.add("Cancelled", m.py().get_type::<Cancelled>())?;
    m.add_class::<PyPipeline>()?;
    m.add_class::<PyServer>()?;
    m.add_function(wrap_pyfunction!(bundle_manifest, m)?)?;
    m.add_function(wrap_pyfunction!(backends, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
