//! `ldm train classifier`: the evaluation network of `ldm_nn::classifier`, trained with one
//! cross-entropy term per metadata column (an emoji's category, subcategory and style), with
//! the same crash-safe, resumable runs as the generative models.

use std::path::{Path, PathBuf};

use ldm_data::{ImageFolder, Loader, LoaderConfig};
use ldm_nn::classifier::{self, ClassifierConfig, Head};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use crate::optim::{warmup_lr, AdamW};
use crate::run::{Cadence, RunLog};
use crate::tensors::{detached, images_tensor, NamedWeights};
use crate::trainer::{self, stage_records, Begun, Stage, StepReport, Summary, OPTIMIZER};
use crate::{TchOps, TrainError};

/// Hyper-parameters of a classifier run (saved with every checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierOptions {
    pub steps: u64,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for ClassifierOptions {
    fn default() -> Self {
        Self {
            steps: 3_000,
            batch_size: 64,
            learning_rate: 1e-3,
            warmup: 200,
            weight_decay: 1e-4,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifierState {
    pub step: u64,
    pub options: ClassifierOptions,
    pub config: ClassifierConfig,
    pub data_fingerprint: String,
    /// Validation accuracy of each head at the last validation.
    pub accuracy: Option<Vec<f64>>,
}

stage_records!(ClassifierOptions, ClassifierState, ClassifierConfig);

/// What a finished (or interrupted) run reports.
#[derive(Debug)]
pub struct ClassifierSummary {
    pub step: u64,
    pub loss: f64,
    /// Validation accuracy per head, in the order of the config's heads.
    pub accuracy: Vec<f64>,
    pub checkpoint: PathBuf,
    pub interrupted: bool,
    /// The trained weights, on the CPU, by name.
    pub weights: NamedWeights,
}

/// Checkpoint file of the classifier's weights.
pub const CLASSIFIER: &str = "classifier";
/// Class index of a row without a value in a head's column: ignored by the loss.
const IGNORED: i64 = -100;

/// One head per column, its classes the distinct values of the column in `folder`, sorted.
pub fn heads_from_data(folder: &ImageFolder, columns: &[String]) -> Result<Vec<Head>, TrainError> {
    columns
        .iter()
        .map(|column| {
            let mut classes: Vec<String> = folder.records().filter_map(|r| r.column(column)).collect();
            classes.sort();
            classes.dedup();
            if classes.len() < 2 {
                return Err(TrainError::Mismatch(format!(
                    "column '{column}' of {} has {} distinct values; a classifier head needs at least two",
                    folder.root().display(),
                    classes.len()
                )));
            }
            Ok(Head {
                column: column.clone(),
                classes,
            })
        })
        .collect()
}

/// The class index of every row of `folder` for every head ([`IGNORED`] where the row has no
/// value, or one the head does not know).
fn targets(folder: &ImageFolder, heads: &[Head]) -> Vec<Vec<i64>> {
    heads
        .iter()
        .map(|h| {
            folder
                .records()
                .map(|r| {
                    r.column(&h.column)
                        .and_then(|v| h.classes.binary_search(&v).ok())
                        .map_or(IGNORED, |i| i as i64)
                })
                .collect()
        })
        .collect()
}

fn loader(
    folder: ImageFolder,
    size: u32,
    batch_size: usize,
    train: bool,
    seed: u64,
) -> Result<Loader, TrainError> {
    Ok(Loader::new(
        folder,
        LoaderConfig {
            size,
            batch_size,
            flip: train,
            shuffle: train,
            seed,
        },
    )?)
}

/// Summed cross-entropy of the heads and the number of correct predictions per head.
fn loss_and_hits(logits: &[Tensor], targets: &[Tensor]) -> (Tensor, Vec<i64>) {
    let mut loss = Tensor::zeros([], (Kind::Float, logits[0].device()));
    let mut hits = Vec::new();
    for (l, t) in logits.iter().zip(targets) {
        let known = t.ne(IGNORED).sum(Kind::Int64).int64_value(&[]);
        if known > 0 {
            loss += l.cross_entropy_loss::<Tensor>(t, None, Reduction::Mean, IGNORED, 0.0);
        }
        hits.push(
            l.argmax(-1, false)
                .eq_tensor(t)
                .sum(Kind::Int64)
                .int64_value(&[]),
        );
    }
    (loss, hits)
}

fn batch_targets(targets: &[Vec<i64>], rows: &[usize], device: Device) -> Vec<Tensor> {
    targets
        .iter()
        .map(|t| {
            Tensor::from_slice(&rows.iter().map(|&r| t[r]).collect::<Vec<_>>()).to_device(device)
        })
        .collect()
}

/// Accuracy of each head over the whole of `folder`.
fn validate(
    ops: &mut TchOps,
    config: &ClassifierConfig,
    folder: &ImageFolder,
) -> Result<Vec<f64>, TrainError> {
    let _guard = tch::no_grad_guard();
    let targets = targets(folder, &config.heads);
    let known: Vec<usize> = targets
        .iter()
        .map(|t| t.iter().filter(|&&c| c != IGNORED).count())
        .collect();
    let mut hits = vec![0i64; config.heads.len()];
    let size = config.resolution as u32;
    for start in (0..folder.len()).step_by(64) {
        let rows: Vec<usize> = (start..(start + 64).min(folder.len())).collect();
        let mut images = Vec::new();
        for &r in &rows {
            images.extend(folder.load_chw(r, size)?);
        }
        let x = images_tensor(
            &images,
            [rows.len(), 3, size as usize, size as usize],
            ops.device(),
        );
        let out = classifier::forward(ops, config, &x)?;
        let (_, h) = loss_and_hits(&out.logits, &batch_targets(&targets, &rows, ops.device()));
        for (total, h) in hits.iter_mut().zip(h) {
            *total += h;
        }
    }
    Ok(hits
        .iter()
        .zip(&known)
        .map(|(&h, &k)| h as f64 / k.max(1) as f64)
        .collect())
}

/// Trains `config` (its heads from [`heads_from_data`]) on `data`, validating on `validation`.
#[allow(clippy::too_many_arguments)]
pub fn train_classifier(
    config: &ClassifierConfig,
    data: &Path,
    validation: &Path,
    out: &Path,
    options: ClassifierOptions,
    cadence: Cadence,
    device: Device,
    resume: bool,
) -> Result<ClassifierSummary, TrainError> {
    config.validate()?;
    let begun: Begun<ClassifierState> = trainer::begin(out, data, config, options, resume)?;
    let mut stage = ClassifierStage::new(config, data, validation, &begun, out, device)?;
    let finished = trainer::train(&mut stage, &begun, out, cadence)?;
    Ok(ClassifierSummary {
        step: finished.step,
        loss: finished
            .last_logged
            .first()
            .map_or(f64::NAN, |(_, loss)| *loss),
        accuracy: stage.accuracy.unwrap_or_default(),
        checkpoint: finished.checkpoint,
        interrupted: finished.interrupted,
        weights: detached(&stage.params),
    })
}

/// The classifier in training.
struct ClassifierStage<'a> {
    config: &'a ClassifierConfig,
    options: ClassifierOptions,
    data_fingerprint: String,
    loader: Loader,
    /// Every training row's class per head.
    targets: Vec<Vec<i64>>,
    validation: ImageFolder,
    validation_log: RunLog,
    accuracy: Option<Vec<f64>>,
    ops: TchOps,
    params: NamedWeights,
    opt: AdamW,
    device: Device,
}

impl<'a> ClassifierStage<'a> {
    fn new(
        config: &'a ClassifierConfig,
        data: &Path,
        validation: &Path,
        begun: &Begun<ClassifierState>,
        out: &Path,
        device: Device,
    ) -> Result<Self, TrainError> {
        let options = begun.options.clone();
        let folder = ImageFolder::open(data)?;
        let targets = targets(&folder, &config.heads);
        let size = config.resolution as u32;
        let loader = loader(folder, size, options.batch_size, true, options.seed)?;
        let validation = ImageFolder::open(validation)?;
        tch::manual_seed(options.seed as i64);
        let mut ops = TchOps::new(device);
        let (params, opt) = trainer::one_network(
            &mut ops,
            &begun.start,
            CLASSIFIER,
            options.weight_decay,
            |ops| {
                let probe = Tensor::zeros([1, 3, size as i64, size as i64], (Kind::Float, device));
                classifier::forward(ops, config, &probe).map(drop)
            },
        )?;
        Ok(Self {
            config,
            options,
            data_fingerprint: begun.data_fingerprint.clone(),
            loader,
            targets,
            validation,
            validation_log: RunLog::open(out, "validation.csv", &["accuracy"], begun.step)?,
            accuracy: None,
            ops,
            params,
            opt,
            device,
        })
    }
}

impl Stage for ClassifierStage<'_> {
    type State = ClassifierState;
    const COLUMNS: &'static [(&'static str, Summary)] =
        &[("loss", Summary::Mean), ("train_accuracy", Summary::Mean)];

    fn step(&mut self, step: u64) -> Result<StepReport, TrainError> {
        let batch = self.loader.batch(step)?;
        let x = images_tensor(&batch.images, batch.shape, self.device);
        let out = classifier::forward(&mut self.ops, self.config, &x)?;
        let (loss, hits) = loss_and_hits(
            &out.logits,
            &batch_targets(&self.targets, &batch.rows, self.device),
        );
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            return Ok(StepReport::NonFinite {
                what: "classifier loss",
                value,
            });
        }
        self.opt.zero_grad();
        loss.backward();
        let options = &self.options;
        self.opt
            .step(warmup_lr(options.learning_rate, options.warmup, step));
        let accuracy = hits[0] as f64 / options.batch_size as f64;
        Ok(StepReport::Values(vec![value, accuracy]))
    }

    fn validate(&mut self, step: u64) -> Result<(), TrainError> {
        let scores = validate(&mut self.ops, self.config, &self.validation)?;
        self.validation_log.push(step, vec![scores[0]])?;
        self.accuracy = Some(scores);
        Ok(())
    }

    /// A run that ends without a validation (interrupted early) still reports its accuracy.
    fn finish(&mut self) -> Result<(), TrainError> {
        if self.accuracy.is_none() {
            self.accuracy = Some(validate(&mut self.ops, self.config, &self.validation)?);
        }
        Ok(())
    }

    fn checkpoint(&self, step: u64) -> (Vec<(&'static str, NamedWeights)>, ClassifierState) {
        let state = ClassifierState {
            step,
            options: self.options.clone(),
            config: self.config.clone(),
            data_fingerprint: self.data_fingerprint.clone(),
            accuracy: self.accuracy.clone(),
        };
        let files = vec![
            (CLASSIFIER, detached(&self.params)),
            (OPTIMIZER, self.opt.state()),
        ];
        (files, state)
    }
}
