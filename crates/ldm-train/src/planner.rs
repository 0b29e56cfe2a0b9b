//! `ldm train planner`: the layout planner of a layout model that takes captions
//! (`ldm_nn::planner`, `ldm_core::layout_plan`), trained with one cross-entropy term per slot
//! field (class or no object, colour, each box edge on the grid) against the layouts of an
//! image folder's rows (their `objects`), their captions as input. Only captions and layouts
//! are read, so a step takes milliseconds; the layout model it plans for (a release) is not
//! touched, and the planner's release is that model with the planner added.

use std::path::{Path, PathBuf};

use ldm_core::layout_plan::{self, SlotScores, FIELDS};
use ldm_core::manifest::GraphRole;
use ldm_core::TextTokenizer;
use ldm_data::scenes::LayoutScene;
use ldm_data::ImageFolder;
use ldm_nn::{graphs, ModelConfig, PlannerConfig};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use crate::checkpoint;
use crate::optim::{scheduled_lr, AdamW, LrDecay};
use crate::release::{load_release, Release, TrainedPlanner, PLANNER, PLANNER_TOKENIZER_FILE};
use crate::run::{step_seed, Cadence, RunLog, Start};
use crate::tensors::{detached, NamedWeights};
use crate::trainer::{self, stage_records, Begun, Stage, StepReport, Summary, OPTIMIZER};
use crate::{TchOps, TrainError};

/// Hyper-parameters of a planner run (saved with every checkpoint). The learning rate warms
/// up, then follows half a cosine to 0 at the last step: at a constant 1e-3 the validation
/// scores fell back from their best after a thousand steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannerOptions {
    pub steps: u64,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub seed: u64,
    /// The layout model's release the planner plans for.
    pub model: PathBuf,
}

impl PlannerOptions {
    pub fn new(model: PathBuf) -> Self {
        Self {
            steps: 2_000,
            batch_size: 64,
            learning_rate: 1e-3,
            warmup: 200,
            weight_decay: 1e-4,
            seed: 0,
            model,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannerState {
    pub step: u64,
    pub options: PlannerOptions,
    pub config: ModelConfig,
    pub data_fingerprint: String,
    /// Validation scores at the last validation.
    pub validation: Option<PlanScores>,
}

stage_records!(PlannerOptions, PlannerState, ModelConfig);

/// How well planned layouts match the held-out rows' own.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlanScores {
    /// Rows whose planned objects have the row's classes and colours, in order, and no more.
    pub objects: f64,
    /// Objects (of rows planned right) whose every planned edge is within one grid step of
    /// the row's.
    pub boxes: f64,
}

/// How a release's planner was trained, in its `release.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannerRecord {
    pub steps: u64,
    pub options: PlannerOptions,
    /// Scores on the held-out captions at the run's last validation.
    pub validation: Option<PlanScores>,
    /// CRC-32 of the captions' metadata.jsonl.
    pub data_fingerprint: String,
}

/// What a finished (or interrupted) run reports.
#[derive(Debug)]
pub struct PlannerSummary {
    pub step: u64,
    pub loss: f64,
    pub validation: PlanScores,
    pub checkpoint: PathBuf,
    pub interrupted: bool,
}

/// Target of a field the loss ignores (the colour and box of an empty slot).
const IGNORED: i64 = -100;

/// Captions and layouts of a folder, as the planner reads and is scored against them.
struct Rows {
    /// [rows, max_length] caption ids.
    ids: Tensor,
    /// [rows, max_objects, FIELDS] targets.
    targets: Tensor,
    count: usize,
}

impl Rows {
    fn load(
        folder: &Path,
        config: &ModelConfig,
        tokenizer: &TextTokenizer,
    ) -> Result<Self, TrainError> {
        let (planner, layout) = parts(config)?;
        let folder = ImageFolder::open(folder)?.require_text()?;
        let mut ids = Vec::with_capacity(folder.len() * planner.max_length);
        let mut targets = Vec::with_capacity(folder.len() * layout.max_objects * FIELDS);
        for (row, record) in folder.records().enumerate() {
            let refuse = |message: String| {
                TrainError::Mismatch(format!(
                    "row {row} of {}: {message}",
                    folder.root().display()
                ))
            };
            let scene = LayoutScene::from_record(record).map_err(refuse)?;
            let slots =
                layout_plan::targets(layout, &scene.layout()).map_err(|e| refuse(e.to_string()))?;
            let caption = record.text.as_deref().unwrap_or_default();
            ids.extend(tokenizer.encode(caption, planner.max_length)?.ids);
            targets.extend(
                slots
                    .iter()
                    .flatten()
                    .map(|t| t.map_or(IGNORED, |i| i as i64)),
            );
        }
        let count = folder.len();
        Ok(Self {
            ids: Tensor::from_slice(&ids).view([count as i64, planner.max_length as i64]),
            targets: Tensor::from_slice(&targets).view([
                count as i64,
                layout.max_objects as i64,
                FIELDS as i64,
            ]),
            count,
        })
    }
}

/// The planner's configuration and the vocabulary it plans in.
fn parts(
    config: &ModelConfig,
) -> Result<(&PlannerConfig, &ldm_core::layout::LayoutVocabulary), TrainError> {
    match (config.conditioning.planner(), config.conditioning.layout()) {
        (Some(planner), Some(layout)) => Ok((planner, layout)),
        _ => Err(TrainError::Mismatch(
            "the configuration has no [conditioning.planner] under a layout model's [conditioning.layout]".into(),
        )),
    }
}

/// Summed cross-entropy over the fields of `scores` [B, slots, width] against `targets`
/// [B, slots, FIELDS].
fn loss(scores: &Tensor, targets: &Tensor, slots: SlotScores) -> Tensor {
    let mut total = Tensor::zeros([], (Kind::Float, scores.device()));
    for (field, (start, len)) in slots.fields().into_iter().enumerate() {
        let logits = scores
            .narrow(2, start as i64, len as i64)
            .reshape([-1, len as i64]);
        let target = targets.select(2, field as i64).reshape([-1]);
        if target.ne(IGNORED).any().int64_value(&[]) != 0 {
            total +=
                logits.cross_entropy_loss::<Tensor>(&target, None, Reduction::Mean, IGNORED, 0.0);
        }
    }
    total
}

/// Planned layouts against the rows' own ([`PlanScores`]).
fn score(scores: &Tensor, targets: &Tensor, slots: SlotScores) -> PlanScores {
    let best: Vec<Tensor> = slots
        .fields()
        .iter()
        .map(|&(start, len)| scores.narrow(2, start as i64, len as i64).argmax(-1, false))
        .collect();
    let picked = Tensor::stack(&best, 2);
    let [rows, slot_count, _] = targets.size()[..] else {
        unreachable!("targets are [rows, slots, fields]")
    };
    let (mut rows_right, mut boxes_right, mut objects) = (0usize, 0usize, 0usize);
    for r in 0..rows {
        let mut right = true;
        let mut near = 0;
        let mut present = 0;
        for s in 0..slot_count {
            let at = |t: &Tensor, f: i64| t.int64_value(&[r, s, f]);
            let class = at(targets, 0);
            if at(&picked, 0) != class {
                right = false;
            }
            if class == slots.no_object() as i64 {
                continue;
            }
            present += 1;
            if at(&picked, 1) != at(targets, 1) {
                right = false;
            }
            if (2..FIELDS as i64).all(|f| (at(&picked, f) - at(targets, f)).abs() <= 1) {
                near += 1;
            }
        }
        if right {
            rows_right += 1;
            boxes_right += near;
            objects += present;
        }
    }
    PlanScores {
        objects: rows_right as f64 / rows.max(1) as f64,
        boxes: boxes_right as f64 / objects.max(1) as f64,
    }
}

/// Trains the planner of `config` (a layout model's configuration with
/// `[conditioning.planner]`) on the captions and layouts of `data`, validating on
/// `validation`, in the run folder `out`. Its caption tokenizer is trained on `data`'s
/// captions (kept in the run folder; a resumed run reads it back).
#[allow(clippy::too_many_arguments)]
pub fn train_planner(
    config: &ModelConfig,
    data: &Path,
    validation: &Path,
    out: &Path,
    options: PlannerOptions,
    cadence: Cadence,
    device: Device,
    resume: bool,
) -> Result<PlannerSummary, TrainError> {
    config.validate()?;
    let (planner, _) = parts(config)?;
    let model = load_release(&options.model)?;
    if model.config != config.without_planner() {
        return Err(TrainError::Mismatch(format!(
            "{} was trained with another configuration: the planner's must be the layout model's (its model.toml) with [conditioning.planner] added",
            options.model.display()
        )));
    }
    let begun: Begun<PlannerState> = trainer::begin(out, data, config, options, resume)?;
    crate::run::write_config(out, config)?;
    let saved = out.join(PLANNER_TOKENIZER_FILE);
    let tokenizer = match begun.start {
        Start::Resume(_) => TextTokenizer::load(&saved)?,
        Start::Fresh => {
            let folder = ImageFolder::open(data)?.require_text()?;
            let captions = folder.records().filter_map(|r| r.text.clone());
            let tokenizer = TextTokenizer::train(captions, planner.vocab_size)?;
            tokenizer.save(&saved)?;
            TextTokenizer::load(&saved)?
        }
    };
    if tokenizer.vocab_size() > planner.vocab_size {
        return Err(TrainError::Mismatch(format!(
            "the caption tokenizer has {} entries but conditioning.planner.vocab_size = {}",
            tokenizer.vocab_size(),
            planner.vocab_size
        )));
    }
    let mut stage = PlannerStage::new(config, data, validation, &tokenizer, &begun, out, device)?;
    let finished = trainer::train(&mut stage, &begun, out, cadence)?;
    let validation = match stage.scores {
        Some(v) => v,
        None => stage.scores()?,
    };
    Ok(PlannerSummary {
        step: finished.step,
        loss: finished
            .last_logged
            .first()
            .map_or(f64::NAN, |(_, loss)| *loss),
        validation,
        checkpoint: finished.checkpoint,
        interrupted: finished.interrupted,
    })
}

/// Whether `run_dir` is a planner run (its latest checkpoint holds planner weights).
pub fn is_planner_run(run_dir: &Path) -> Result<bool, TrainError> {
    Ok(checkpoint::latest(run_dir)?
        .is_some_and(|c| c.join(format!("{PLANNER}.safetensors")).is_file()))
}

/// The layout model a planner run plans for, with the run's latest planner, as a release.
pub fn release_from_run(run_dir: &Path) -> Result<Release, TrainError> {
    let checkpoint = checkpoint::latest(run_dir)?.ok_or_else(|| TrainError::NoWeights {
        path: run_dir.to_path_buf(),
        what: "no checkpoint of `ldm train planner` there".into(),
    })?;
    let state: PlannerState = checkpoint::load_state(&checkpoint)?;
    let mut release = load_release(&state.options.model)?;
    let expected = graphs::expected_params(GraphRole::Planner, &state.config)?;
    release.planner = Some(TrainedPlanner {
        weights: checkpoint::load_weights(&checkpoint, PLANNER, Some(&expected))?,
        tokenizer: TextTokenizer::load(&run_dir.join(PLANNER_TOKENIZER_FILE))?,
    });
    release.info.planner = Some(PlannerRecord {
        steps: state.step,
        options: state.options,
        validation: state.validation,
        data_fingerprint: state.data_fingerprint,
    });
    release.config = state.config;
    Ok(release)
}

/// The planner in training.
struct PlannerStage<'a> {
    config: &'a ModelConfig,
    options: PlannerOptions,
    data_fingerprint: String,
    train: Rows,
    validation: Rows,
    validation_log: RunLog,
    scores: Option<PlanScores>,
    ops: TchOps,
    params: NamedWeights,
    opt: AdamW,
    device: Device,
}

impl<'a> PlannerStage<'a> {
    fn new(
        config: &'a ModelConfig,
        data: &Path,
        validation: &Path,
        tokenizer: &TextTokenizer,
        begun: &Begun<PlannerState>,
        out: &Path,
        device: Device,
    ) -> Result<Self, TrainError> {
        let options = begun.options.clone();
        let train = Rows::load(data, config, tokenizer)?;
        let validation = Rows::load(validation, config, tokenizer)?;
        tch::manual_seed(options.seed as i64);
        let mut ops = TchOps::new(device);
        let (params, opt) = trainer::one_network(
            &mut ops,
            &begun.start,
            PLANNER,
            options.weight_decay,
            |ops| {
                let probe = [train.ids.narrow(0, 0, 1).to_device(device)];
                graphs::forward(GraphRole::Planner, config, ops, &probe).map(drop)
            },
        )?;
        Ok(Self {
            config,
            options,
            data_fingerprint: begun.data_fingerprint.clone(),
            train,
            validation,
            validation_log: RunLog::open(out, "validation.csv", &["objects", "boxes"], begun.step)?,
            scores: None,
            ops,
            params,
            opt,
            device,
        })
    }

    fn slots(&self) -> SlotScores {
        SlotScores::of(self.config.conditioning.layout().expect("checked by parts"))
    }

    fn plan(&mut self, ids: &Tensor) -> Result<Tensor, TrainError> {
        let out = graphs::forward(
            GraphRole::Planner,
            self.config,
            &mut self.ops,
            &[ids.to_device(self.device)],
        )?;
        Ok(out.into_iter().next().expect("one output"))
    }

    /// Scores on the whole validation folder.
    fn scores(&mut self) -> Result<PlanScores, TrainError> {
        let _guard = tch::no_grad_guard();
        let ids = self.validation.ids.shallow_clone();
        let scores = self.plan(&ids)?.to_device(Device::Cpu);
        Ok(score(&scores, &self.validation.targets, self.slots()))
    }
}

impl Stage for PlannerStage<'_> {
    type State = PlannerState;
    const COLUMNS: &'static [(&'static str, Summary)] = &[("loss", Summary::Mean)];

    fn step(&mut self, step: u64) -> Result<StepReport, TrainError> {
        // The rows of a step depend on the seed and the step alone: resuming is exact.
        tch::manual_seed(step_seed(self.options.seed, step));
        let rows = Tensor::randint(
            self.train.count as i64,
            [self.options.batch_size as i64],
            (Kind::Int64, Device::Cpu),
        );
        let ids = self.train.ids.index_select(0, &rows);
        let targets = self
            .train
            .targets
            .index_select(0, &rows)
            .to_device(self.device);
        let scores = self.plan(&ids)?;
        let loss = loss(&scores, &targets, self.slots());
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            return Ok(StepReport::NonFinite {
                what: "planner loss",
                value,
            });
        }
        self.opt.zero_grad();
        loss.backward();
        let options = &self.options;
        self.opt.step(scheduled_lr(
            options.learning_rate,
            options.warmup,
            LrDecay::Cosine,
            step,
            options.steps,
        ));
        Ok(StepReport::Values(vec![value]))
    }

    fn validate(&mut self, step: u64) -> Result<(), TrainError> {
        let scores = self.scores()?;
        self.validation_log
            .push(step, vec![scores.objects, scores.boxes])?;
        self.scores = Some(scores);
        Ok(())
    }

    fn checkpoint(&self, step: u64) -> (Vec<(&'static str, NamedWeights)>, PlannerState) {
        let state = PlannerState {
            step,
            options: self.options.clone(),
            config: self.config.clone(),
            data_fingerprint: self.data_fingerprint.clone(),
            validation: self.scores,
        };
        let files = vec![
            (PLANNER, detached(&self.params)),
            (OPTIMIZER, self.opt.state()),
        ];
        (files, state)
    }
}

/// A trained planner on tch, for sampling from a release ([`crate::trained::TrainedModel`]):
/// captions to the layouts it draws, as the runtime reads them.
pub struct TchPlanner {
    ops: TchOps,
    tokenizer: TextTokenizer,
    device: Device,
}

impl TchPlanner {
    pub fn new(planner: TrainedPlanner, device: Device) -> Result<Self, TrainError> {
        let mut ops = TchOps::new(device);
        ops.load_params(planner.weights)?;
        ops.freeze();
        Ok(Self {
            ops,
            tokenizer: planner.tokenizer,
            device,
        })
    }

    /// Each caption as the JSON of its planned layout; a layout's JSON and the empty prompt as
    /// they are (`ldm_core::layout_plan::is_caption`).
    pub fn layouts(
        &mut self,
        config: &ModelConfig,
        prompts: &[String],
    ) -> Result<Vec<String>, TrainError> {
        let (planner, layout) = parts(config)?;
        let captions: Vec<&String> = prompts
            .iter()
            .filter(|p| layout_plan::is_caption(p))
            .collect();
        if captions.is_empty() {
            return Ok(prompts.to_vec());
        }
        let mut ids = Vec::with_capacity(captions.len() * planner.max_length);
        for caption in &captions {
            ids.extend(self.tokenizer.encode(caption, planner.max_length)?.ids);
        }
        let ids = Tensor::from_slice(&ids)
            .view([captions.len() as i64, planner.max_length as i64])
            .to_device(self.device);
        let _guard = tch::no_grad_guard();
        let scores = graphs::forward(GraphRole::Planner, config, &mut self.ops, &[ids])?
            .remove(0)
            .to_device(Device::Cpu)
            .flatten(0, -1);
        let scores =
            Vec::<f32>::try_from(&scores).map_err(|e| TrainError::Sampling(e.to_string()))?;
        let mut planned = scores
            .chunks(scores.len() / captions.len())
            .map(|row| {
                layout_plan::read(layout, row)
                    .map(|l| l.to_json())
                    .map_err(|e| TrainError::Sampling(e.to_string()))
            })
            .collect::<Result<Vec<_>, TrainError>>()?
            .into_iter();
        Ok(prompts
            .iter()
            .map(|p| {
                if layout_plan::is_caption(p) {
                    planned.next().expect("one plan per caption")
                } else {
                    p.clone()
                }
            })
            .collect())
    }
}
