//! Does an exported graph compute what tch computes? Seeded random inputs go through the tch
//! interpretation of the same network (the reference) and through each engine that can load
//! the file; the report is the largest absolute and relative difference per graph and engine.

use std::path::Path;

use ldm_core::manifest::{DType, GraphRole, TensorSpec};
use ldm_nn::{Conditioning, ModelConfig};
use ldm_runtime::{Session, Tensor as RtTensor, TensorData, TractSession};
use ldm_train::TchOps;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use tch::{Kind, Tensor};

use crate::ExportError;
use ldm_nn::graphs::{self, io_specs};

/// Differences of one graph on one engine, for one input size.
#[derive(Debug, Clone)]
pub struct ParityRow {
    pub role: GraphRole,
    pub engine: &'static str,
    /// Image size in pixels (height, width) the inputs correspond to.
    pub pixels: (usize, usize),
    /// Largest |engine - tch| over all output elements.
    pub max_abs: f32,
    /// `max_abs` relative to the largest |tch| output.
    pub max_rel: f32,
    /// Whether the engine ran in a child process (graphs with external data).
    pub isolated: bool,
}

/// Random inputs for `role`'s graph, as if for images of `pixels` (height, width): images
/// uniform in [-1, 1], latents, contexts and concatenated channels standard normal,
/// timesteps spread over the schedule, ids and labels within their range.
pub fn random_inputs(
    role: GraphRole,
    config: &ModelConfig,
    batch: usize,
    pixels: (usize, usize),
    seed: u64,
) -> Vec<RtTensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let f = config.autoencoder.factor;
    let (inputs, _) = io_specs(role, config);
    inputs
        .iter()
        .map(|spec| {
            let shape = concrete_shape(spec, batch, pixels, f);
            let n: usize = shape.iter().product();
            let tensor = match (spec.name.as_str(), spec.dtype) {
                ("image", _) => RtTensor::f32(
                    &shape,
                    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect(),
                ),
                ("timestep", _) => {
                    let t = config.diffusion.timesteps as f32;
                    RtTensor::f32(
                        &shape,
                        (0..n).map(|_| rng.random_range(0.0..t).floor()).collect(),
                    )
                }
                ("input_ids", _) => {
                    let vocab = match config.conditioning {
                        Conditioning::Text { vocab_size, .. } => vocab_size as i64,
                        _ => 1,
                    };
                    RtTensor::i64(&shape, (0..n).map(|_| rng.random_range(0..vocab)).collect())
                }
                ("caption_ids", _) => {
                    let vocab = config
                        .conditioning
                        .planner()
                        .map_or(1, |p| p.vocab_size as i64);
                    RtTensor::i64(&shape, (0..n).map(|_| rng.random_range(0..vocab)).collect())
                }
                ("class_labels", _) => {
                    let classes = match config.conditioning {
                        Conditioning::Class { classes, .. } => classes as i64,
                        _ => 0,
                    };
                    RtTensor::i64(
                        &shape,
                        (0..n).map(|_| rng.random_range(0..=classes)).collect(),
                    )
                }
                (_, DType::Int64) => RtTensor::i64(&shape, vec![0; n]),
                _ => RtTensor::f32(
                    &shape,
                    (0..n).map(|_| StandardNormal.sample(&mut rng)).collect(),
                ),
            };
            tensor.expect("shape and data agree by construction")
        })
        .collect()
}

/// The spec's shape with its symbols resolved.
fn concrete_shape(spec: &TensorSpec, batch: usize, (h, w): (usize, usize), f: usize) -> Vec<usize> {
    use ldm_core::manifest::DimSpec;
    spec.shape
        .iter()
        .map(|d| match d {
            DimSpec::Fixed(n) => *n,
            DimSpec::Symbol(s) => match s.as_str() {
                "batch" => batch,
                "height" => h,
                "width" => w,
                "latent_height" => h / f,
                "latent_width" => w / f,
                other => unreachable!("graphs name no symbol {other}"),
            },
        })
        .collect()
}

pub(crate) fn to_tch(t: &RtTensor) -> Tensor {
    let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    match t.data() {
        TensorData::F32(v) => Tensor::from_slice(v).reshape(&shape),
        TensorData::I64(v) => Tensor::from_slice(v).reshape(&shape),
    }
}

/// A tch tensor's shape and values as f32.
pub fn f32_values(t: &Tensor) -> Result<(Vec<usize>, Vec<f32>), ExportError> {
    let shape = t.size().iter().map(|&d| d as usize).collect();
    let flat = t.to_kind(Kind::Float).flatten(0, -1);
    let data = Vec::<f32>::try_from(&flat).map_err(|e| ExportError::Invalid(e.to_string()))?;
    Ok((shape, data))
}

/// A tch tensor as an engine tensor: int64 stays int64, every other kind becomes f32.
pub(crate) fn from_tch(t: &Tensor) -> Result<RtTensor, ExportError> {
    if t.kind() == Kind::Int64 {
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let data = Vec::<i64>::try_from(&t.flatten(0, -1))
            .map_err(|e| ExportError::Invalid(e.to_string()))?;
        return Ok(RtTensor::i64(&shape, data)?);
    }
    let (shape, data) = f32_values(t)?;
    Ok(RtTensor::f32(&shape, data)?)
}

/// `weights` rounded to f16 and back: what a graph storing f16 weights holds, so that a parity
/// check against it measures the engines rather than the rounding.
pub fn rounded_to_f16(weights: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    weights
        .iter()
        .map(|(n, t)| (n.clone(), t.to_kind(Kind::Half).to_kind(Kind::Float)))
        .collect()
}

/// The tch interpretation holding `weights`, frozen: the reference a graph is compared with.
pub fn reference_ops(weights: &[(String, Tensor)]) -> Result<TchOps, ExportError> {
    let mut ops = TchOps::new(tch::Device::Cpu);
    ops.load_params(
        weights
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect(),
    )?;
    ops.freeze();
    Ok(ops)
}

/// The tch outputs of `role`'s network (held by `ops`) on `inputs`.
pub fn reference_outputs(
    role: GraphRole,
    config: &ModelConfig,
    ops: &mut TchOps,
    inputs: &[RtTensor],
) -> Result<Vec<RtTensor>, ExportError> {
    let _guard = tch::no_grad_guard();
    let inputs: Vec<Tensor> = inputs.iter().map(to_tch).collect();
    graphs::forward(role, config, ops, &inputs)?
        .iter()
        .map(from_tch)
        .collect()
}

/// (max |a - b|, that relative to max |reference|); NaN anywhere counts as infinitely far.
pub fn differences(reference: &RtTensor, got: &RtTensor) -> (f32, f32) {
    let (Some(r), Some(g)) = (reference.as_f32(), got.as_f32()) else {
        return (f32::INFINITY, f32::INFINITY);
    };
    if reference.shape() != got.shape() {
        return (f32::INFINITY, f32::INFINITY);
    }
    let mut max_abs = 0f32;
    let mut max_ref = 0f32;
    for (a, b) in r.iter().zip(g) {
        let d = (a - b).abs();
        max_abs = if d.is_nan() {
            f32::INFINITY
        } else {
            max_abs.max(d)
        };
        max_ref = max_ref.max(a.abs());
    }
    (max_abs, max_abs / max_ref.max(f32::MIN_POSITIVE))
}

/// The engines a parity check runs: tract, and ONNX Runtime (CPU) when its library is found.
pub const ENGINES: [&str; 2] = ["tract", "onnxruntime-cpu"];

/// `engine` (one of [`ENGINES`]) with the graph at `path` loaded, or why it could not load.
/// An engine that cannot load is reported, not hidden.
pub fn load_engine(engine: &str, path: &Path) -> Result<Box<dyn Session>, String> {
    match engine {
        "tract" => TractSession::load(path)
            .map(|s| Box::new(s) as Box<dyn Session>)
            .map_err(|e| e.to_string()),
        "onnxruntime-cpu" => ldm_runtime::OrtSession::load(path, 2)
            .map(|s| Box::new(s) as Box<dyn Session>)
            .map_err(|e| e.to_string()),
        other => Err(format!(
            "unknown engine '{other}' (engines: {})",
            ENGINES.join(", ")
        )),
    }
}

/// Runs `session` on named `inputs` and compares with `reference`.
pub fn compare_run(
    session: &mut dyn Session,
    specs: &[TensorSpec],
    inputs: &[RtTensor],
    reference: &[RtTensor],
) -> Result<(f32, f32), ExportError> {
    let named: Vec<(&str, &RtTensor)> = specs.iter().map(|s| s.name.as_str()).zip(inputs).collect();
    compare_named(session, &named, reference)
}

/// Runs `session` on `named` inputs and compares with `reference`: the largest (absolute,
/// relative) difference over the outputs.
pub fn compare_named(
    session: &mut dyn Session,
    named: &[(&str, &RtTensor)],
    reference: &[RtTensor],
) -> Result<(f32, f32), ExportError> {
    let outputs = session.run(named)?;
    Ok(reference
        .iter()
        .zip(&outputs)
        .map(|(r, g)| differences(r, g))
        .fold((0f32, 0f32), |(a, r), (a2, r2)| (a.max(a2), r.max(r2))))
}
