//! The evaluation network as shipped: `evaluator.json` (its configuration, the graph's file
//! and what it was trained on) next to `classifier.onnx`, run on tract so that `ldm eval`
//! needs no libtorch.
//!
//! | graph        | input                                        | outputs |
//! |--------------|----------------------------------------------|---------|
//! | `classifier` | `image` f32 [batch, 3, resolution, resolution] in [-1, 1] | `features` f32 [batch, feature_dim], `logits_<column>` f32 [batch, classes] per head |

use std::path::{Path, PathBuf};

use image::RgbImage;
use ldm_data::push_chw;
use ldm_nn::ClassifierConfig;
use ldm_runtime::{RuntimeError, Session, Tensor, TractSession};
use serde::{Deserialize, Serialize};

pub const EVALUATOR_FILE: &str = "evaluator.json";
pub const GRAPH_FILE: &str = "classifier.onnx";
pub const EVALUATOR_FORMAT: u32 = 1;
/// Images per graph run.
const BATCH: usize = 32;

/// `evaluator.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorManifest {
    pub format: u32,
    pub config: ClassifierConfig,
    pub graph: String,
    /// CRC-32 of the training folder's metadata.jsonl.
    pub data_fingerprint: String,
    pub training_steps: u64,
    /// Validation accuracy of each head when training ended, in head order.
    pub validation_accuracy: Vec<f64>,
}

/// The name of a head's logits output.
pub fn logits_name(column: &str) -> String {
    format!("logits_{column}")
}

/// What the network says about a set of images.
#[derive(Debug, Clone, Default)]
pub struct Judged {
    /// One feature vector per image.
    pub features: Vec<Vec<f32>>,
    /// Per head, the predicted class index of each image.
    pub predictions: Vec<Vec<usize>>,
}

pub struct Evaluator {
    pub manifest: EvaluatorManifest,
    session: TractSession,
}

#[derive(Debug, thiserror::Error)]
pub enum EvaluatorError {
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl Evaluator {
    /// Loads an evaluator folder, checking the manifest and the graph's outputs.
    pub fn load(dir: &Path, threads: usize) -> Result<Self, EvaluatorError> {
        let path = dir.join(EVALUATOR_FILE);
        let invalid = |message: String| EvaluatorError::Invalid {
            path: path.clone(),
            message,
        };
        let text =
            ldm_core::confined::read_confined(dir, EVALUATOR_FILE, 1 << 20).map_err(|e| {
                invalid(format!(
                    "{} (an evaluator folder holds {EVALUATOR_FILE} and {GRAPH_FILE})",
                    e.reason
                ))
            })?;
        let manifest: EvaluatorManifest =
            serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
        if manifest.format != EVALUATOR_FORMAT {
            return Err(invalid(format!(
                "format {} is not the supported {EVALUATOR_FORMAT}",
                manifest.format
            )));
        }
        manifest
            .config
            .validate()
            .map_err(|e| invalid(e.to_string()))?;
        ldm_runtime::check_graph(dir, &manifest.graph)?;
        let graph = dir.join(&manifest.graph);
        let session = TractSession::with_threads(&graph, threads)?;
        let mut expected = vec!["features".to_string()];
        expected.extend(manifest.config.heads.iter().map(|h| logits_name(&h.column)));
        if session.output_names() != expected.as_slice() || session.input_names() != ["image"] {
            return Err(EvaluatorError::Invalid {
                path: graph,
                message: format!(
                    "the graph maps {:?} to {:?}; the manifest describes [\"image\"] to {expected:?}",
                    session.input_names(),
                    session.output_names()
                ),
            });
        }
        Ok(Self { manifest, session })
    }

    /// The side images are judged at: others are resized to it first.
    pub fn resolution(&self) -> usize {
        self.manifest.config.resolution
    }

    /// Features and predicted classes of `images`.
    pub fn judge(&mut self, images: &[RgbImage]) -> Result<Judged, EvaluatorError> {
        let heads = self.manifest.config.heads.len();
        let mut judged = Judged {
            features: Vec::with_capacity(images.len()),
            predictions: vec![Vec::with_capacity(images.len()); heads],
        };
        let side = self.resolution();
        for chunk in images.chunks(BATCH) {
            let mut pixels = Vec::with_capacity(chunk.len() * 3 * side * side);
            for image in chunk {
                push_resized(&mut pixels, image, side as u32);
            }
            let input = Tensor::f32(&[chunk.len(), 3, side, side], pixels)?;
            let outputs = self.session.run(&[("image", &input)])?;
            let rows = |t: &Tensor| -> Vec<Vec<f32>> {
                let width = t.shape()[1];
                t.as_f32()
                    .expect("the evaluator's outputs are f32")
                    .chunks(width)
                    .map(<[f32]>::to_vec)
                    .collect()
            };
            judged.features.extend(rows(&outputs[0]));
            for (head, logits) in outputs[1..].iter().enumerate() {
                judged.predictions[head].extend(rows(logits).iter().map(|row| argmax(row)));
            }
        }
        Ok(judged)
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Appends an image as planar RGB in [-1, 1] at `side` x `side` (resized with a Catmull-Rom
/// filter when it has another size).
fn push_resized(out: &mut Vec<f32>, image: &RgbImage, side: u32) {
    if image.dimensions() == (side, side) {
        push_chw(out, image, false);
    } else {
        let resized =
            image::imageops::resize(image, side, side, image::imageops::FilterType::CatmullRom);
        push_chw(out, &resized, false);
    }
}
