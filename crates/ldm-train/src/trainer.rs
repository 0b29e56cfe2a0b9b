//! The run lifecycle, written once for every stage: how a run starts (fresh, resumed exactly,
//! or refused), the step loop with its log, progress bar and cadences, checkpoints saved and
//! pruned, Ctrl-C, and a non-finite value stopping the run by name. A stage supplies only its
//! step, its validation and what its checkpoints hold ([`Stage`]).

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checkpoint;
use crate::optim::{AdamConfig, AdamW};
use crate::run::{self, Cadence, RunLog, Start};
use crate::tensors::{shallow, sorted_params, NamedWeights};
use crate::{TchOps, TrainError};

/// The options every stage has, for front ends to set.
pub struct CommonOptions<'a> {
    /// Steps to train to (on resume: the new total).
    pub steps: &'a mut u64,
    pub batch_size: &'a mut usize,
    /// Peak learning rate.
    pub learning_rate: &'a mut f64,
    pub seed: &'a mut u64,
}

/// A stage's hyper-parameters, saved with every checkpoint.
pub trait StageOptions: Clone + PartialEq + Debug + Serialize + DeserializeOwned {
    /// Steps the run trains to.
    fn steps(&self) -> u64;
    fn common(&mut self) -> CommonOptions<'_>;
    /// The run this one was fine-tuned from (`--init-from`), for stages that can be.
    fn init_from(&mut self) -> Option<&mut Option<PathBuf>> {
        None
    }
}

/// What a stage's checkpoints record besides weights.
pub trait StageState: Serialize + DeserializeOwned {
    type Options: StageOptions;
    type Config: PartialEq;
    fn step(&self) -> u64;
    fn options(&self) -> &Self::Options;
    fn config(&self) -> &Self::Config;
    fn data_fingerprint(&self) -> &str;
}

/// Implements [`StageOptions`] and [`StageState`] for a stage's options and state, which
/// share the field names `steps`, `batch_size`, `learning_rate` and `seed` (options) and
/// `step`, `options`, `config` and `data_fingerprint` (state); the last argument names the
/// `--init-from` field of a stage that can be fine-tuned.
macro_rules! stage_records {
    ($options:ty, $state:ty, $config:ty $(, $init_from:ident)?) => {
        impl $crate::trainer::StageOptions for $options {
            fn steps(&self) -> u64 {
                self.steps
            }
            fn common(&mut self) -> $crate::trainer::CommonOptions<'_> {
                $crate::trainer::CommonOptions {
                    steps: &mut self.steps,
                    batch_size: &mut self.batch_size,
                    learning_rate: &mut self.learning_rate,
                    seed: &mut self.seed,
                }
            }
            $(
                fn init_from(&mut self) -> Option<&mut Option<std::path::PathBuf>> {
                    Some(&mut self.$init_from)
                }
            )?
        }

        impl $crate::trainer::StageState for $state {
            type Options = $options;
            type Config = $config;
            fn step(&self) -> u64 {
                self.step
            }
            fn options(&self) -> &$options {
                &self.options
            }
            fn config(&self) -> &$config {
                &self.config
            }
            fn data_fingerprint(&self) -> &str {
                &self.data_fingerprint
            }
        }
    };
}
pub(crate) use stage_records;

/// `options` with the steps and fine-tuning source of `from`: what must match on resume.
fn with_run_of<O: StageOptions>(mut options: O, from: &O) -> O {
    *options.common().steps = from.steps();
    let mut from = from.clone();
    if let (Some(mine), Some(theirs)) = (options.init_from(), from.init_from()) {
        *mine = theirs.clone();
    }
    options
}

/// The options that differ between a run's own and those asked, as `name: run's X, asked Y`.
fn differing_options<O: Serialize>(run: &O, asked: &O) -> String {
    let fields = |options: &O| match serde_json::to_value(options) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => serde_json::Map::new(),
    };
    let (run, asked) = (fields(run), fields(asked));
    run.iter()
        .filter(|(name, value)| asked.get(*name) != Some(value))
        .map(|(name, value)| {
            let other = asked.get(name).unwrap_or(&serde_json::Value::Null);
            format!("{name}: run's {value}, asked {other}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// How a run begins: where from, the options it runs with and the step it is at.
pub struct Begun<S: StageState> {
    pub start: Start,
    /// The saved state of the checkpoint a resumed run continues.
    pub resumed: Option<S>,
    /// The options in force: a resumed run keeps its own, with the steps asked now.
    pub options: S::Options,
    pub step: u64,
    /// The CRC-32 of the data's metadata.jsonl, which a resumed run must share.
    pub data_fingerprint: String,
    /// Set by Ctrl-C from here on: the loop then saves a checkpoint and returns.
    pub stop: Arc<AtomicBool>,
    /// The run folder's lock, held while this run trains.
    pub lock: std::fs::File,
}

/// The name a stage's checkpoints save its (main) optimiser's state under.
pub(crate) const OPTIMIZER: &str = "optimizer";

/// The weights and AdamW of a stage that trains one network, saved under `name`: both
/// resumed from `start`'s checkpoint, or the weights made by `probe`'s first forward.
pub(crate) fn one_network(
    ops: &mut TchOps,
    start: &Start,
    name: &str,
    weight_decay: f64,
    probe: impl FnOnce(&mut TchOps) -> Result<(), ldm_nn::NnError>,
) -> Result<(NamedWeights, AdamW), TrainError> {
    if let Start::Resume(checkpoint) = start {
        ops.load_params(checkpoint::load_weights(checkpoint, name, None)?)?;
    }
    probe(ops)?;
    ops.freeze();
    let params = sorted_params(ops);
    let mut opt = AdamW::new(
        shallow(&params),
        AdamConfig::with_weight_decay(weight_decay),
    );
    if let Start::Resume(checkpoint) = start {
        opt.load_saved(checkpoint, OPTIMIZER)?;
    }
    Ok((params, opt))
}

/// Starts the run in `out` on `data`: fresh, or (with `resume`) continuing its latest
/// checkpoint, which must have the same configuration, data and options (only the number of
/// steps may change).
pub fn begin<S: StageState>(
    out: &Path,
    data: &Path,
    config: &S::Config,
    options: S::Options,
    resume: bool,
) -> Result<Begun<S>, TrainError> {
    let stop = run::stop_requested();
    let data_fingerprint = run::data_fingerprint(data)?;
    let lock = run::lock(out)?;
    let start = run::start(out, resume)?;
    let resumed: Option<S> = match &start {
        Start::Fresh => None,
        Start::Resume(checkpoint) => {
            let state: S = checkpoint::load_state(checkpoint)?;
            let at = checkpoint.clone();
            if state.config() != config {
                return Err(TrainError::NotResumable {
                    checkpoint: at,
                    reason: "it was trained with another model configuration; resume with the run's own (config.toml)".into(),
                });
            }
            if state.data_fingerprint() != data_fingerprint {
                return Err(TrainError::NotResumable {
                    checkpoint: at,
                    reason: format!(
                        "it was trained on other data ({}; this folder is {data_fingerprint})",
                        state.data_fingerprint()
                    ),
                });
            }
            let asked = with_run_of(options.clone(), state.options());
            if asked != *state.options() {
                return Err(TrainError::NotResumable {
                    checkpoint: at,
                    reason: format!(
                        "it was started with other options ({}); pass the same ones (only --steps may change)",
                        differing_options(state.options(), &asked)
                    ),
                });
            }
            Some(state)
        }
    };
    let (options, step) = match &resumed {
        Some(state) => {
            let mut kept = state.options().clone();
            *kept.common().steps = options.steps();
            (kept, state.step())
        }
        None => (options, 0),
    };
    Ok(Begun {
        start,
        resumed,
        options,
        step,
        data_fingerprint,
        stop,
        lock,
    })
}

/// How a log column sums up the steps of one logged interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Summary {
    Mean,
    /// The interval's last value (a learning rate).
    Last,
}

/// What one optimisation step reports.
pub enum StepReport {
    /// One value per log column.
    Values(Vec<f64>),
    /// A loss or gradient norm became NaN or infinite: the run stops without saving it.
    NonFinite { what: &'static str, value: f64 },
}

/// A training stage, as the lifecycle drives it.
pub trait Stage {
    type State: Serialize;
    /// log.csv's columns, and how each sums up a logged interval.
    const COLUMNS: &'static [(&'static str, Summary)];
    /// Whether log.csv also gets `steps_per_second`: optimisation steps per second over the
    /// interval, previews and checkpoints not counted.
    const THROUGHPUT: bool = false;
    /// Optimisation step `step` (0-based).
    fn step(&mut self, step: u64) -> Result<StepReport, TrainError>;
    /// Validation or sample grids after `step` steps.
    fn validate(&mut self, step: u64) -> Result<(), TrainError>;
    /// The weight files (name, weights on the CPU) and state of a checkpoint at `step`.
    fn checkpoint(&self, step: u64) -> (Vec<(&'static str, NamedWeights)>, Self::State);
    /// Before the last checkpoint is written.
    fn finish(&mut self) -> Result<(), TrainError> {
        Ok(())
    }
}

/// How a run ended.
pub struct Finished {
    pub step: u64,
    pub checkpoint: PathBuf,
    /// Ctrl-C ended it early.
    pub interrupted: bool,
    /// The columns of the last log row, by name.
    pub last_logged: Vec<(&'static str, f64)>,
}

/// Runs `stage` in the run folder `out` from `begun.step` to the steps of `begun.options`:
/// logs, validates and checkpoints at the cadence, stops on Ctrl-C with a checkpoint, and on a
/// non-finite value without one.
pub fn train<S: Stage, St: StageState>(
    stage: &mut S,
    begun: &Begun<St>,
    out: &Path,
    cadence: Cadence,
) -> Result<Finished, TrainError> {
    let steps = begun.options.steps();
    let mut columns: Vec<&'static str> = S::COLUMNS.iter().map(|c| c.0).collect();
    if S::THROUGHPUT {
        columns.push("steps_per_second");
    }
    let mut step = begun.step;
    let mut log = RunLog::open(out, "log.csv", &columns, step)?;
    let bar = run::progress(steps, step, cadence.quiet);
    let mut latest = checkpoint::latest(out)?;
    let save = |stage: &S, step: u64| -> Result<PathBuf, TrainError> {
        let (files, state) = stage.checkpoint(step);
        let files: Vec<(&str, &[(String, tch::Tensor)])> =
            files.iter().map(|(n, w)| (*n, w.as_slice())).collect();
        let dir = checkpoint::save(out, step, &files, &state)?;
        checkpoint::prune(out, cadence.keep_checkpoints + 1)?;
        Ok(dir)
    };
    let mut interval = Interval::new(S::COLUMNS.len());
    let mut last_logged = Vec::new();
    let mut interrupted = false;
    while step < steps {
        if begun.stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let started = Instant::now();
        let values = match stage.step(step)? {
            StepReport::Values(values) => values,
            StepReport::NonFinite { what, value } => {
                return Err(TrainError::NonFinite {
                    what,
                    value,
                    step,
                    last_good: latest
                        .as_ref()
                        .map_or("none yet".into(), |p| p.display().to_string()),
                })
            }
        };
        interval.add(&values, started.elapsed());
        step += 1;
        bar.set_position(step);
        if step.is_multiple_of(cadence.log_every) || step == steps {
            let mut row = interval.summary(S::COLUMNS);
            if S::THROUGHPUT {
                row.push(interval.steps_per_second());
            }
            let shown: Vec<String> = columns
                .iter()
                .zip(&row)
                .take(2)
                .map(|(n, v)| format!("{n} {v:.4}"))
                .collect();
            bar.set_message(shown.join(" "));
            log.push(step, row.clone())?;
            last_logged = columns.iter().copied().zip(row).collect();
            interval = Interval::new(S::COLUMNS.len());
        }
        if step.is_multiple_of(cadence.validate_every) || step == steps {
            stage.validate(step)?;
        }
        if step.is_multiple_of(cadence.checkpoint_every) {
            latest = Some(save(stage, step)?);
            log.plot(&out.join("loss.png"))?;
        }
    }
    stage.finish()?;
    let checkpoint = match &latest {
        Some(dir) if dir.ends_with(format!("step-{step:08}")) => dir.clone(),
        _ => save(stage, step)?,
    };
    log.plot(&out.join("loss.png"))?;
    bar.finish();
    Ok(Finished {
        step,
        checkpoint,
        interrupted,
        last_logged,
    })
}

/// The steps of one logged interval.
struct Interval {
    sums: Vec<f64>,
    last: Vec<f64>,
    count: u64,
    time: Duration,
}

impl Interval {
    fn new(columns: usize) -> Self {
        Self {
            sums: vec![0.0; columns],
            last: vec![0.0; columns],
            count: 0,
            time: Duration::ZERO,
        }
    }

    fn add(&mut self, values: &[f64], time: Duration) {
        debug_assert_eq!(values.len(), self.sums.len());
        for (s, v) in self.sums.iter_mut().zip(values) {
            *s += v;
        }
        self.last = values.to_vec();
        self.count += 1;
        self.time += time;
    }

    fn summary(&self, columns: &[(&str, Summary)]) -> Vec<f64> {
        columns
            .iter()
            .enumerate()
            .map(|(i, (_, summary))| match summary {
                Summary::Mean => self.sums[i] / self.count as f64,
                Summary::Last => self.last[i],
            })
            .collect()
    }

    fn steps_per_second(&self) -> f64 {
        self.count as f64 / self.time.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::DiffusionOptions;

    #[test]
    fn a_refused_resume_names_the_options_that_differ() {
        let run = DiffusionOptions::default();
        let asked = DiffusionOptions {
            learning_rate: run.learning_rate * 2.0,
            warmup: run.warmup + 1,
            ..run.clone()
        };
        let said = differing_options(&run, &asked);
        assert!(said.contains("learning_rate: run's"), "{said}");
        assert!(
            said.contains(&format!(
                "warmup: run's {}, asked {}",
                run.warmup,
                run.warmup + 1
            )),
            "{said}"
        );
        assert!(!said.contains("batch_size"), "{said}");
        assert_eq!(differing_options(&run, &run), "");
    }
}
