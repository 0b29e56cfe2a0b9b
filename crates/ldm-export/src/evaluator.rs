//! Export of the evaluation network (`ldm_nn::classifier`) as an evaluator folder that
//! `ldm_eval::Evaluator` loads: `classifier.onnx` (weights stored as f16) and
//! `evaluator.json`, checked against tch on tract before the folder is committed.

use std::path::{Path, PathBuf};

use ldm_core::manifest::{DType, DimSpec, Precision, TensorSpec};
use ldm_data::{make_public_dir, write_atomic, StagingDir};
use ldm_eval::evaluator::{
    logits_name, EvaluatorManifest, EVALUATOR_FILE, EVALUATOR_FORMAT, GRAPH_FILE,
};
use ldm_nn::classifier::{self, ClassifierConfig};
use ldm_runtime::{Session, Tensor as RtTensor, TractSession};
use prost::Message;
use rand::{Rng, SeedableRng};
use tch::Tensor;

use crate::bundle::{parity_tolerance, weight_map};
use crate::parity::{differences, f32_values, reference_ops, rounded_to_f16};
use crate::{ExportError, OnnxOps};

const PRECISION: Precision = Precision::F16Weights;

/// Where the evaluator went and how closely tract reproduced tch (largest relative
/// difference over the outputs).
#[derive(Debug)]
pub struct ExportedEvaluator {
    pub dir: PathBuf,
    pub max_rel: f32,
}

/// Writes the evaluator folder `out` for `config` with `weights` (trained f32; rounded to
/// f16 here, and the reference uses the rounded values too).
pub fn export_evaluator(
    config: &ClassifierConfig,
    weights: &[(String, Tensor)],
    data_fingerprint: &str,
    training_steps: u64,
    validation_accuracy: &[f64],
    out: &Path,
) -> Result<ExportedEvaluator, ExportError> {
    config.validate()?;
    let rounded = rounded_to_f16(weights);
    let staging = StagingDir::new_replacing(out)?;
    let dir = staging.path().to_path_buf();
    make_public_dir(&dir).map_err(|e| ExportError::io(&dir, e))?;

    let map = weight_map(&rounded)?;
    let mut ops = OnnxOps::new(&map, PRECISION);
    let side = DimSpec::Fixed(config.resolution);
    let input = TensorSpec::new(
        "image",
        DType::Float32,
        &[
            DimSpec::Symbol("batch".into()),
            DimSpec::Fixed(3),
            side.clone(),
            side,
        ],
    );
    let image = ops.input(&input);
    let result = classifier::forward(&mut ops, config, &image)?;
    let batch = || DimSpec::Symbol("batch".into());
    let mut outputs = vec![(
        result.features,
        TensorSpec::new(
            "features",
            DType::Float32,
            &[batch(), DimSpec::Fixed(config.feature_dim)],
        ),
    )];
    for (logits, head) in result.logits.into_iter().zip(&config.heads) {
        outputs.push((
            logits,
            TensorSpec::new(
                &logits_name(&head.column),
                DType::Float32,
                &[batch(), DimSpec::Fixed(head.classes.len())],
            ),
        ));
    }
    let model = ops.finish("classifier", &outputs);
    let graph = dir.join(GRAPH_FILE);
    write_atomic(&graph, &model.encode_to_vec()).map_err(|e| ExportError::io(&graph, e))?;
    let manifest = EvaluatorManifest {
        format: EVALUATOR_FORMAT,
        config: config.clone(),
        graph: GRAPH_FILE.into(),
        data_fingerprint: data_fingerprint.into(),
        training_steps,
        validation_accuracy: validation_accuracy.to_vec(),
    };
    let json = serde_json::to_string_pretty(&manifest).expect("the manifest serialises");
    let path = dir.join(EVALUATOR_FILE);
    write_atomic(&path, json.as_bytes()).map_err(|e| ExportError::io(&path, e))?;

    let max_rel = parity(config, &rounded, &graph)?;
    let tolerance = parity_tolerance(PRECISION);
    if max_rel > tolerance {
        return Err(ExportError::Parity(format!(
            "tract's classifier outputs differ from tch by {max_rel:.2e} (relative), above {tolerance:.0e}"
        )));
    }
    Ok(ExportedEvaluator {
        dir: staging.commit()?,
        max_rel,
    })
}

/// The largest relative difference between tch and tract over every output, on seeded
/// random images.
fn parity(
    config: &ClassifierConfig,
    weights: &[(String, Tensor)],
    graph: &Path,
) -> Result<f32, ExportError> {
    let side = config.resolution;
    let shape = [3, 3, side, side];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let pixels: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let reference = {
        let _guard = tch::no_grad_guard();
        let mut ops = reference_ops(weights)?;
        let x = Tensor::from_slice(&pixels).reshape(shape.map(|d| d as i64));
        let out = classifier::forward(&mut ops, config, &x)?;
        std::iter::once(out.features)
            .chain(out.logits)
            .map(|t| {
                let (shape, data) = f32_values(&t)?;
                Ok(RtTensor::f32(&shape, data)?)
            })
            .collect::<Result<Vec<_>, ExportError>>()?
    };
    let mut session = TractSession::load(graph)?;
    let input = RtTensor::f32(&shape, pixels)?;
    let got = session.run(&[("image", &input)])?;
    Ok(reference
        .iter()
        .zip(&got)
        .map(|(r, g)| differences(r, g).1)
        .fold(0.0, f32::max))
}
