//! What the training tests share: tiny configurations, procedural data, the two stages run
//! with test cadences, and checks on logs and weights.
#![allow(dead_code)] // each test binary uses its own part (and its imports, re-exported)

pub use std::path::{Path, PathBuf};
pub use std::sync::Mutex;

pub use ldm_data::shapes::{self, ShapesConfig};
pub use ldm_nn::ModelConfig;
pub use ldm_train::checkpoint;
pub use ldm_train::diffusion::{
    train_diffusion, DiffusionInputs, DiffusionOptions, DiffusionSummary,
};
pub use ldm_train::first_stage::{train_autoencoder, AutoencoderOptions, AutoencoderSummary};
pub use ldm_train::run::Cadence;
pub use ldm_train::TrainError;
pub use tch::{Device, Tensor};

/// Training seeds libtorch's global generator at every step: tests that train take turns, or
/// their draws interleave and runs stop being reproducible.
pub static TORCH_RNG: Mutex<()> = Mutex::new(());

pub fn config(conditioning: &str) -> ModelConfig {
    ModelConfig::parse(&config_text(conditioning)).unwrap()
}

pub fn config_text(conditioning: &str) -> String {
    format!(
        "resolution = 16\n\
         [autoencoder]\nregularizer = \"kl\"\nfactor = 2\nlatent_channels = 3\nchannels = 8\nchannel_mult = [1, 2]\nres_blocks = 1\ngroups = 4\n\
         [unet]\nmodel_channels = 8\nchannel_mult = [1, 2]\nres_blocks = 1\nattention_resolutions = [2]\nhead_channels = 4\ngroups = 4\n\
         {conditioning}\n[diffusion]\ntimesteps = 100\nbeta_start = 0.0015\nbeta_end = 0.0195"
    )
}

pub const TEXT: &str = "[conditioning]\nkind = \"text\"\nvocab_size = 256\nmax_length = 16\nwidth = 12\ndepth = 1\nheads = 3";

pub fn shapes_data(root: &Path) -> PathBuf {
    let config = ShapesConfig {
        count: 60,
        size: 16,
        seed: 3,
    };
    shapes::prepare(&root.join("shapes"), &config, |_, _| {}).unwrap();
    root.join("shapes/train")
}

pub fn cadence(every: u64) -> Cadence {
    Cadence {
        log_every: 1,
        validate_every: every,
        checkpoint_every: every,
        keep_checkpoints: 2,
        quiet: true,
    }
}

pub fn ae_options(steps: u64) -> AutoencoderOptions {
    AutoencoderOptions {
        steps,
        batch_size: 4,
        learning_rate: 1e-3,
        disc_start: 6,
        disc_channels: 8,
        disc_layers: 2,
        ..Default::default()
    }
}

pub fn diffusion_options(steps: u64) -> DiffusionOptions {
    DiffusionOptions {
        steps,
        batch_size: 8,
        learning_rate: 2e-3,
        warmup: 0,
        sample_steps: 3,
        ..Default::default()
    }
}

/// The first stage of `cfg` on `data` into `out` (validating on `data`'s sibling
/// `validation` folder), with `options`, checkpointing every `every` steps.
pub fn autoencoder(
    cfg: &ModelConfig,
    data: &Path,
    out: &Path,
    options: AutoencoderOptions,
    every: u64,
    resume: bool,
) -> Result<AutoencoderSummary, TrainError> {
    let validation = data.with_file_name("validation");
    let validation = Some(validation.as_path()).filter(|v| v.is_dir());
    train_autoencoder(
        cfg,
        data,
        validation,
        out,
        options,
        cadence(every),
        Device::Cpu,
        resume,
    )
}

/// The diffusion model of `cfg` on `data` and the first-stage run `ae` into `out`.
pub fn diffusion(
    cfg: &ModelConfig,
    (data, ae, tokenizer): (&Path, &Path, Option<&Path>),
    out: &Path,
    options: DiffusionOptions,
    every: u64,
    resume: bool,
) -> Result<DiffusionSummary, TrainError> {
    let validation = data.with_file_name("validation");
    let inputs = DiffusionInputs {
        data,
        validation: Some(&validation),
        autoencoder_run: Some(ae),
        tokenizer,
    };
    train_diffusion(
        cfg,
        inputs,
        out,
        options,
        cadence(every),
        Device::Cpu,
        resume,
    )
}

/// The `column` of log.csv, in step order.
pub fn logged(run: &Path, column: usize) -> Vec<f64> {
    std::fs::read_to_string(run.join("log.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(column).unwrap().parse().unwrap())
        .collect()
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The weights of a checkpoint or of a release (f16) as f32, by name.
pub fn weights(checkpoint: &Path, file: &str) -> Vec<(String, Tensor)> {
    let mut w = checkpoint::load_weights_as_f32(checkpoint, file, None).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

pub fn assert_identical(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after resume");
    }
}

/// Two Adam steps at learning rate 1e-4 move no weight by more than 0.01: `tuned` began at
/// `source`, not at a fresh initialisation (of another seed).
pub fn assert_started_from(tuned: &[(String, Tensor)], source: &[(String, Tensor)]) {
    assert_eq!(tuned.len(), source.len());
    for ((name, t), (_, s)) in tuned.iter().zip(source) {
        let gap = (t - s).abs().max().double_value(&[]);
        assert!(
            gap < 0.01,
            "{name} moved {gap} from the source run's weights"
        );
    }
}

/// The text model fine-tuned into the run `tuned` (latest checkpoint `checkpoint`) from
/// `source` (a run or a release) kept the source's tokenizer, and its networks began at the
/// weights in `source_weights`.
pub fn assert_text_model_tuned_from(
    tuned: &Path,
    checkpoint: &Path,
    source: &Path,
    source_weights: &Path,
) {
    assert_eq!(
        std::fs::read(tuned.join("tokenizer.json")).unwrap(),
        std::fs::read(source.join("tokenizer.json")).unwrap()
    );
    for file in ["unet", "text_encoder"] {
        assert_started_from(&weights(checkpoint, file), &weights(source_weights, file));
    }
}
