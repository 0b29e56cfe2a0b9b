//! The pieces of a run folder every stage shares: the CSV log and its loss-curve PNG, the
//! progress bar, Ctrl-C, the data fingerprint that `--resume` checks, and how a run starts
//! (see `trainer` for the lifecycle that uses them).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use indicatif::{ProgressBar, ProgressStyle};
use ldm_data::write_atomic;

use crate::TrainError;

/// Set by Ctrl-C (SIGINT/SIGTERM): the loop saves a checkpoint and returns.
pub fn stop_requested() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let handler_flag = flag.clone();
        // A second registration (a test harness, a host program) is not an error to us.
        let _ = ctrlc::set_handler(move || handler_flag.store(true, Ordering::SeqCst));
        flag
    })
    .clone()
}

/// A CRC-32 of the image folder's metadata.jsonl: a resumed run must see the same data.
pub fn data_fingerprint(folder: &Path) -> Result<String, TrainError> {
    let path = folder.join("metadata.jsonl");
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    Ok(format!("crc32:{:08x}", crc32fast::hash(&bytes)))
}

/// A CSV log in the run folder (`log.csv`, `validation.csv`): one row per logged step, columns
/// fixed at creation.
pub struct RunLog {
    path: PathBuf,
    columns: Vec<&'static str>,
    rows: Vec<(u64, Vec<f64>)>,
}

impl RunLog {
    /// Opens the run's log, keeping only rows up to `resume_step` (what a resumed run has not
    /// redone yet); a fresh run (step 0) starts empty.
    pub fn open(
        run_dir: &Path,
        file: &str,
        columns: &[&'static str],
        resume_step: u64,
    ) -> Result<Self, TrainError> {
        let path = run_dir.join(file);
        let mut rows = Vec::new();
        if resume_step > 0 {
            if let Ok(text) = std::fs::read_to_string(&path) {
                for line in text.lines().skip(1) {
                    let mut fields = line.split(',');
                    let Some(Ok(step)) = fields.next().map(str::parse::<u64>) else {
                        continue;
                    };
                    let values: Vec<f64> = fields.map(|f| f.parse().unwrap_or(f64::NAN)).collect();
                    if step <= resume_step && values.len() == columns.len() {
                        rows.push((step, values));
                    }
                }
            }
        }
        let log = Self {
            path,
            columns: columns.to_vec(),
            rows,
        };
        log.write()?;
        Ok(log)
    }

    pub fn push(&mut self, step: u64, values: Vec<f64>) -> Result<(), TrainError> {
        debug_assert_eq!(values.len(), self.columns.len());
        let line = csv_row(step, &values);
        self.rows.push((step, values));
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| TrainError::io(&self.path, e))?;
        file.write_all(line.as_bytes())
            .map_err(|e| TrainError::io(&self.path, e))
    }

    fn write(&self) -> Result<(), TrainError> {
        let mut text = format!("step,{}\n", self.columns.join(","));
        for (step, values) in &self.rows {
            text.push_str(&csv_row(*step, values));
        }
        write_atomic(&self.path, text.as_bytes()).map_err(|e| TrainError::io(&self.path, e))
    }

    /// `loss.png`: one panel per column, value against step (the numbers are in the CSV).
    pub fn plot(&self, path: &Path) -> Result<(), TrainError> {
        let (width, height, pixels) =
            ldm_plot::line_panels(&self.columns, &self.rows).map_err(TrainError::Plot)?;
        let image = image::RgbImage::from_raw(width, height, pixels)
            .expect("the chart is sized to its pixels");
        let mut bytes = Vec::new();
        image
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .map_err(|e| TrainError::io(path, std::io::Error::other(e)))?;
        write_atomic(path, &bytes).map_err(|e| TrainError::io(path, e))
    }
}

/// One log row. Values below 1e-3 (the tail of a learning-rate decay) are written in
/// scientific notation, so that six decimals do not round them to 0.
fn csv_row(step: u64, values: &[f64]) -> String {
    let fields: Vec<String> = values
        .iter()
        .map(|&v| {
            if v != 0.0 && v.abs() < 1e-3 {
                format!("{v:.6e}")
            } else {
                format!("{v:.6}")
            }
        })
        .collect();
    format!("{step},{}\n", fields.join(","))
}

/// A progress bar over the run's steps, with rate and ETA; hidden when `quiet`.
pub fn progress(total: u64, start: u64, quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {per_sec} ETA {eta} {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.set_position(start);
    bar.reset_eta();
    bar
}

/// Writes the model configuration into the run folder (`config.toml`), so the run says what
/// it trains and `--resume` can be given the same file.
pub fn write_config(out: &Path, config: &ldm_nn::ModelConfig) -> Result<(), TrainError> {
    let path = out.join("config.toml");
    let text = toml::to_string(config)?;
    write_atomic(&path, text.as_bytes()).map_err(|e| TrainError::io(&path, e))
}

/// Checks that an image folder can feed a model: RGB images (what the loader makes) for
/// `autoencoder.in_channels`, and images at least `resolution` pixels on their shorter side
/// (smaller ones would be upscaled into blur), judged by the first image.
pub fn check_data(
    folder: &ldm_data::ImageFolder,
    config: &ldm_nn::ModelConfig,
) -> Result<(), TrainError> {
    let root = folder.root().display();
    if config.autoencoder.in_channels != 3 {
        return Err(TrainError::Mismatch(format!(
            "autoencoder.in_channels = {} but {root} is read as RGB images (3 channels)",
            config.autoencoder.in_channels
        )));
    }
    let (w, h) = folder.dimensions(0)?;
    if w.min(h) < config.resolution as u32 {
        return Err(TrainError::Mismatch(format!(
            "{root} holds {w}x{h} images but the configuration trains at resolution = {r}; use images of at least {r} pixels or lower resolution",
            r = config.resolution
        )));
    }
    Ok(())
}

/// The file in a run folder that a training process holds locked while it trains.
pub const LOCK_FILE: &str = "run.lock";

/// Locks the run folder `out` (made if missing) for this process: two processes training one
/// run would interleave their checkpoints and logs. The lock ends with the returned file,
/// and with the process however it ends.
pub fn lock(out: &Path) -> Result<std::fs::File, TrainError> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let path = out.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| TrainError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(TrainError::RunInUse {
            out: out.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(TrainError::io(&path, e)),
    }
}

/// Where a run begins: from scratch, or from the checkpoint `--resume` found.
pub enum Start {
    Fresh,
    Resume(PathBuf),
}

/// Decides how the run in `out` starts: `--resume` continues its latest checkpoint (or starts
/// fresh when there is none yet); without it, an existing run is never overwritten.
pub fn start(out: &Path, resume: bool) -> Result<Start, TrainError> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    match (crate::checkpoint::latest(out)?, resume) {
        (Some(checkpoint), true) => Ok(Start::Resume(checkpoint)),
        (None, _) => Ok(Start::Fresh),
        (Some(checkpoint), false) => Err(TrainError::ExistingRun {
            out: out.to_path_buf(),
            checkpoint,
        }),
    }
}

/// The libtorch seed of one training step: each step draws its noise from its own stream, so
/// a resumed run repeats exactly what an uninterrupted one would have drawn.
pub fn step_seed(seed: u64, step: u64) -> i64 {
    // SplitMix64 finaliser over (seed, step).
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// How often a run logs, validates or samples, and checkpoints. Not part of a run's identity:
/// it may change on resume.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cadence {
    pub log_every: u64,
    /// Validation (autoencoder) or sample grids (diffusion).
    pub validate_every: u64,
    pub checkpoint_every: u64,
    /// Step folders kept besides the latest.
    pub keep_checkpoints: usize,
    /// No progress bar (tests, logs).
    pub quiet: bool,
}

impl Default for Cadence {
    fn default() -> Self {
        Self {
            log_every: 50,
            validate_every: 1000,
            checkpoint_every: 500,
            keep_checkpoints: 2,
            quiet: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_folder_trains_in_one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let held = lock(&out).unwrap();
        let refused = lock(&out).unwrap_err();
        assert!(matches!(refused, TrainError::RunInUse { .. }), "{refused}");
        assert!(refused
            .to_string()
            .contains("in use by another training process"));
        drop(held);
        lock(&out).expect("free again once the first lock ends");
    }

    #[test]
    fn a_resumed_log_keeps_the_rows_up_to_its_step_and_plots() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RunLog::open(dir.path(), "log.csv", &["loss", "lr"], 0).unwrap();
        for step in 1..=4 {
            // The end of a cosine decay: six decimals would write 0.000000.
            let lr = if step == 1 { 1e-2 } else { 2.5e-7 };
            log.push(step, vec![1.0 / step as f64, lr]).unwrap();
        }
        log.plot(&dir.path().join("loss.png")).unwrap();
        let png = image::open(dir.path().join("loss.png")).unwrap();
        assert_eq!((png.width(), png.height()), (800, 260));

        // Resuming from step 2 forgets steps 3 and 4, which will be redone.
        let log = RunLog::open(dir.path(), "log.csv", &["loss", "lr"], 2).unwrap();
        assert_eq!(log.rows.len(), 2);
        let text = std::fs::read_to_string(dir.path().join("log.csv")).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "step,loss,lr",
                "1,1.000000,0.010000",
                "2,0.500000,2.500000e-7"
            ]
        );
        assert!(step_seed(0, 1) != step_seed(0, 2) && step_seed(0, 1) != step_seed(1, 1));
    }
}
