//! A trained model as shipped in the repository (`models/<name>/`): the weights sampling and
//! export need, without optimiser state or run history.
//!
//! ```text
//! model.toml                  the model configuration
//! autoencoder.safetensors     first stage (absent for f = 1)
//! unet.safetensors            EMA weights of the UNet
//! text_encoder.safetensors    EMA weights of the conditioning encoder (or class_embedder)
//! tokenizer.json              text models
//! planner.safetensors         layout models that take captions: the layout planner
//! planner_tokenizer.json      its caption tokenizer
//! release.json                latent scale factor, class names, training figures
//! ```
//!
//! Weights are stored as f16, half the bytes in the repository, and load as f32.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ldm_core::manifest::GraphRole;
use ldm_core::TextTokenizer;
use ldm_data::StagingDir;
use ldm_nn::ModelConfig;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::autoencoder::{self, AUTOENCODER};
use crate::checkpoint;
use crate::denoiser::{encoder_name, expected_params, split_named};
use crate::planner::PlannerRecord;
use crate::records::{AutoencoderOptions, AutoencoderState, DiffusionOptions, DiffusionState};
use crate::run::Start;
use crate::tensors::NamedWeights;
use crate::TrainError;
use ldm_data::write_atomic;

pub const RELEASE_FILE: &str = "release.json";
/// The caption tokenizer of a text model, in run folders and releases.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const CONFIG_FILE: &str = "model.toml";
/// Weights of a layout planner, in its run's checkpoints and in releases.
pub const PLANNER: &str = "planner";
/// A layout planner's caption tokenizer, in its run folder and in releases.
pub const PLANNER_TOKENIZER_FILE: &str = "planner_tokenizer.json";
const FORMAT: u32 = 1;

/// What a release records besides its weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseInfo {
    pub format: u32,
    /// Latents are multiplied by this before diffusion.
    pub scale_factor: f64,
    /// Class names of a class-conditional model: id i is `class_names[i]`.
    pub class_names: Vec<String>,
    pub diffusion_steps: u64,
    pub diffusion_options: DiffusionOptions,
    pub autoencoder_steps: Option<u64>,
    pub autoencoder_options: Option<AutoencoderOptions>,
    /// Validation PSNR (dB) and SSIM of the first stage at its last validation.
    pub autoencoder_validation: Option<(f64, f64)>,
    /// CRC-32 of the diffusion data's metadata.jsonl.
    pub data_fingerprint: String,
    /// Where an imported model came from (`ldm import`); absent for trained ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<ImportRecord>,
    /// How its layout planner was trained (`ldm train planner`); absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner: Option<PlannerRecord>,
}

/// The origin of an imported release.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRecord {
    /// The checkpoint it was read from, as given.
    pub source: String,
    /// Whether the UNet's weights are the checkpoint's EMA copy.
    pub ema: bool,
}

/// A model read from someone else's checkpoint, to be written as a release.
pub struct ImportedRelease {
    pub config: ModelConfig,
    pub scale_factor: f64,
    pub record: ImportRecord,
    pub unet: NamedWeights,
    pub text_encoder: Option<NamedWeights>,
    pub autoencoder: Option<NamedWeights>,
    pub tokenizer: Option<TextTokenizer>,
    /// The guidance scale it samples with by default.
    pub guidance: f64,
}

/// Writes an imported model as a release in `out`, weights in the element type the
/// checkpoint stored (an f32 checkpoint stays exact), replacing what was there only once the
/// new release is complete. Its sampling defaults are the reference scripts': DDIM, eta 0, 50
/// steps, at the import's guidance.
pub fn write_imported(imported: &ImportedRelease, out: &Path) -> Result<PathBuf, TrainError> {
    let config = &imported.config;
    let staging = StagingDir::new_replacing(out)?;
    let dir = staging.path();
    let exact = |name: &str, weights: &NamedWeights| -> Result<(), TrainError> {
        Tensor::write_safetensors(weights, dir.join(format!("{name}.safetensors")))?;
        Ok(())
    };
    exact("unet", &imported.unet)?;
    if let (Some(name), Some(weights)) = (encoder_name(config), &imported.text_encoder) {
        exact(name, weights)?;
    }
    if let Some(weights) = &imported.autoencoder {
        exact(AUTOENCODER, weights)?;
    }
    if let Some(tokenizer) = &imported.tokenizer {
        tokenizer.save(&dir.join(TOKENIZER_FILE))?;
    }
    let options = DiffusionOptions {
        steps: 0,
        sample_sampler: "ddim".into(),
        sample_eta: 0.0,
        sample_steps: 50,
        sample_guidance: imported.guidance,
        ..DiffusionOptions::default()
    };
    let info = ReleaseInfo {
        format: FORMAT,
        scale_factor: imported.scale_factor,
        class_names: Vec::new(),
        diffusion_steps: 0,
        diffusion_options: options,
        autoencoder_steps: None,
        autoencoder_options: None,
        autoencoder_validation: None,
        data_fingerprint: String::new(),
        imported: Some(imported.record.clone()),
        planner: None,
    };
    let toml = toml::to_string(config)?;
    write_atomic(&dir.join(CONFIG_FILE), toml.as_bytes()).map_err(|e| TrainError::io(dir, e))?;
    let json = serde_json::to_vec_pretty(&info).expect("release info serialises");
    write_atomic(&dir.join(RELEASE_FILE), &json).map_err(|e| TrainError::io(dir, e))?;
    // What was written must load as a release: names and shapes against the configuration.
    load_release(dir)?;
    Ok(staging.commit()?)
}

/// A release of `config` with freshly initialised, seeded weights: nothing learnt, for
/// measuring engines on networks of sizes not trained here (the paper's). Text models are
/// refused: their tokenizer is learnt from captions.
pub fn untrained(config: &ModelConfig, seed: u64) -> Result<ImportedRelease, TrainError> {
    if matches!(config.conditioning, ldm_nn::Conditioning::Text { .. }) {
        return Err(TrainError::Mismatch(
            "an untrained text model has no tokenizer to ship: train one on captions".into(),
        ));
    }
    tch::manual_seed(seed as i64);
    let device = tch::Device::Cpu;
    let (unet, text_encoder) = {
        let _no_grad = tch::no_grad_guard();
        let denoiser = crate::denoiser::Denoiser::new(config, device, None)?;
        split_named(config, &denoiser.named_params())
    };
    let autoencoder = match config.autoencoder.regularizer {
        ldm_nn::FirstStage::Identity => None,
        _ => {
            let _no_grad = tch::no_grad_guard();
            let mut ops = crate::TchOps::new(device);
            autoencoder::probe(&mut ops, config, device)?;
            Some(crate::tensors::sorted_params(&ops))
        }
    };
    Ok(ImportedRelease {
        config: config.clone(),
        scale_factor: 1.0,
        record: ImportRecord {
            source: format!("untrained, seed {seed}"),
            ema: false,
        },
        unet,
        text_encoder,
        autoencoder,
        tokenizer: None,
        guidance: 1.0,
    })
}

/// A loaded release, weights as f32 on the CPU.
pub struct Release {
    pub config: ModelConfig,
    pub info: ReleaseInfo,
    pub unet: NamedWeights,
    pub encoder: Option<NamedWeights>,
    pub autoencoder: Option<NamedWeights>,
    pub tokenizer: Option<TextTokenizer>,
    /// The layout planner of a layout model that takes captions.
    pub planner: Option<TrainedPlanner>,
}

/// A layout planner's weights (f32, CPU) and caption tokenizer.
pub struct TrainedPlanner {
    pub weights: NamedWeights,
    pub tokenizer: TextTokenizer,
}

fn half(weights: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    weights
        .iter()
        .map(|(n, t)| (n.clone(), t.to_kind(Kind::Half)))
        .collect()
}

fn save(dir: &Path, name: &str, weights: &[(String, Tensor)]) -> Result<(), TrainError> {
    let path = dir.join(format!("{name}.safetensors"));
    Tensor::write_safetensors(&half(weights), &path)?;
    Ok(())
}

/// The latest checkpoint of the diffusion run `run_dir` (EMA weights) and its first stage,
/// as a release in memory.
pub fn release_from_run(run_dir: &Path) -> Result<Release, TrainError> {
    let checkpoint = checkpoint::latest(run_dir)?.ok_or_else(|| TrainError::NoWeights {
        path: run_dir.to_path_buf(),
        what: format!(
            "it is neither a release (no {RELEASE_FILE}) nor a run of `ldm train diffusion` (no checkpoint)"
        ),
    })?;
    let state: DiffusionState = checkpoint::load_state(&checkpoint)?;
    let config = state.config.clone();
    // The EMA file names its tensors `unet.*` and `<encoder>.*`.
    let (unet_expected, encoder_expected) = expected_params(&config)?;
    let mut expected: BTreeMap<String, Vec<usize>> = unet_expected
        .into_iter()
        .map(|(n, shape)| (format!("unet.{n}"), shape))
        .collect();
    if let (Some(name), Some(encoder)) = (encoder_name(&config), encoder_expected) {
        expected.extend(
            encoder
                .into_iter()
                .map(|(n, shape)| (format!("{name}.{n}"), shape)),
        );
    }
    let ema = checkpoint::load_weights(&checkpoint, "ema", Some(&expected))?;
    let (unet, encoder) = split_named(&config, &ema);
    let first_stage = match &state.autoencoder_checkpoint {
        Some(ae) => {
            let trained = first_stage_record(ae)?;
            let weights = checkpoint::load_weights_as_f32(
                ae,
                AUTOENCODER,
                Some(&autoencoder::expected_params(&config)?),
            )?;
            Some((trained, weights))
        }
        None => None,
    };
    let tokenizer = match config.text_encoder_shape() {
        Some(_) => Some(TextTokenizer::load(&run_dir.join(TOKENIZER_FILE))?),
        None => None,
    };
    let trained = first_stage.as_ref().map(|(t, _)| t);
    let info = ReleaseInfo {
        format: FORMAT,
        scale_factor: state.scale_factor,
        class_names: state.class_names.clone(),
        diffusion_steps: state.step,
        diffusion_options: state.options.clone(),
        autoencoder_steps: trained.map(|t| t.steps),
        autoencoder_options: trained.map(|t| t.options.clone()),
        autoencoder_validation: trained.and_then(|t| t.validation),
        data_fingerprint: state.data_fingerprint.clone(),
        imported: None,
        planner: None,
    };
    Ok(Release {
        config,
        info,
        unet,
        encoder,
        autoencoder: first_stage.map(|(_, w)| w),
        tokenizer,
        planner: None,
    })
}

/// A trained first stage's configuration and training record.
pub struct FirstStageRecord {
    /// The model configuration it was trained in (its `[autoencoder]` section and resolution
    /// are what matter).
    pub config: ModelConfig,
    pub steps: u64,
    pub options: AutoencoderOptions,
    /// Validation PSNR (dB) and SSIM at its last validation.
    pub validation: Option<(f64, f64)>,
}

/// The record of the first stage in `folder`: an autoencoder checkpoint, or a release (whose
/// first stage a diffusion run may reuse).
pub fn first_stage_record(folder: &Path) -> Result<FirstStageRecord, TrainError> {
    if is_release(folder) {
        let info = read_info(folder)?;
        if info.imported.is_some() {
            // Someone else's first stage: no training here to record.
            return Ok(FirstStageRecord {
                config: ModelConfig::load(&folder.join(CONFIG_FILE))?,
                steps: 0,
                options: AutoencoderOptions::default(),
                validation: None,
            });
        }
        let missing = || TrainError::Release {
            path: folder.join(RELEASE_FILE),
            message: "the release records no first-stage training".into(),
        };
        return Ok(FirstStageRecord {
            config: ModelConfig::load(&folder.join(CONFIG_FILE))?,
            steps: info.autoencoder_steps.ok_or_else(missing)?,
            options: info.autoencoder_options.ok_or_else(missing)?,
            validation: info.autoencoder_validation,
        });
    }
    let state: AutoencoderState = checkpoint::load_state(folder)?;
    Ok(FirstStageRecord {
        config: state.config,
        steps: state.step,
        options: state.options,
        validation: state.validation,
    })
}

/// A release folder, or the latest checkpoint of a diffusion run folder.
pub fn load_release_or_run(path: &Path) -> Result<Release, TrainError> {
    if is_release(path) {
        load_release(path)
    } else {
        release_from_run(path)
    }
}

/// Writes the latest checkpoint of the run `run_dir` as a release in `out`, replacing what was
/// there only once the new one is complete: a diffusion run's EMA weights and first stage, or
/// a layout planner's run with the layout model it plans for. `run_dir` may be a release too,
/// to ship it with another decoder.
pub fn write_release(
    run_dir: &Path,
    decoder_from: Option<&Path>,
    out: &Path,
) -> Result<PathBuf, TrainError> {
    let mut release = if is_release(run_dir) {
        load_release(run_dir)?
    } else if crate::planner::is_planner_run(run_dir)? {
        crate::planner::release_from_run(run_dir)?
    } else {
        release_from_run(run_dir)?
    };
    if let Some(source) = decoder_from {
        replace_decoder(&mut release, source)?;
    }
    write(&release, out)
}

/// Writes `release` in `out`, weights as f16, replacing what was there only once complete.
fn write(release: &Release, out: &Path) -> Result<PathBuf, TrainError> {
    let config = &release.config;
    let staging = StagingDir::new_replacing(out)?;
    let dir = staging.path();
    save(dir, "unet", &release.unet)?;
    if let (Some(name), Some(encoder)) = (encoder_name(config), &release.encoder) {
        save(dir, name, encoder)?;
    }
    if let Some(weights) = &release.autoencoder {
        save(dir, AUTOENCODER, weights)?;
    }
    if let Some(tokenizer) = &release.tokenizer {
        tokenizer.save(&dir.join(TOKENIZER_FILE))?;
    }
    if let Some(planner) = &release.planner {
        save(dir, PLANNER, &planner.weights)?;
        planner.tokenizer.save(&dir.join(PLANNER_TOKENIZER_FILE))?;
    }
    let toml = toml::to_string(config)?;
    write_atomic(&dir.join(CONFIG_FILE), toml.as_bytes()).map_err(|e| TrainError::io(dir, e))?;
    let json = serde_json::to_vec_pretty(&release.info).expect("release info serialises");
    write_atomic(&dir.join(RELEASE_FILE), &json).map_err(|e| TrainError::io(dir, e))?;
    Ok(staging.commit()?)
}

/// Gives `release` the first stage in `source` (an autoencoder run or a release), whose
/// encoder must be the release's own to the bit as a release stores it (f16): the UNet learned
/// that encoder's latents, and a `--decoder-only` fine-tune keeps them.
fn replace_decoder(release: &mut Release, source: &Path) -> Result<(), TrainError> {
    let config = &release.config;
    let own = release.autoencoder.as_ref().ok_or_else(|| {
        TrainError::Mismatch("this model has no first stage whose decoder could be replaced".into())
    })?;
    let folder = crate::diffusion::first_stage_checkpoint(config, Some(source))?
        .expect("a model with a first stage has a first-stage checkpoint");
    let expected = autoencoder::expected_params(config)?;
    let weights = checkpoint::load_weights_as_f32(&folder, AUTOENCODER, Some(&expected))?;
    let own: BTreeMap<&str, &Tensor> = own.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let changed = weights
        .iter()
        .filter(|(name, _)| !autoencoder::is_decoder_param(name))
        .find(|(name, tensor)| {
            // Compared as a release stores them (f16): a release's own encoder was rounded.
            own.get(name.as_str())
                .is_none_or(|mine| !mine.to_kind(Kind::Half).equal(&tensor.to_kind(Kind::Half)))
        });
    if let Some((name, _)) = changed {
        return Err(TrainError::Mismatch(format!(
            "{}: its encoder is not the one the UNet was trained on ({name} differs); only a decoder fine-tuned with `ldm train autoencoder --decoder-only` can replace a release's",
            folder.display()
        )));
    }
    let record = first_stage_record(&folder)?;
    release.info.autoencoder_steps = Some(record.steps);
    release.info.autoencoder_options = Some(record.options);
    release.info.autoencoder_validation = record.validation;
    release.autoencoder = Some(weights);
    Ok(())
}

/// The latent scale factor the UNet of a release or diffusion run was trained with: what a
/// run fine-tuned from it must keep.
pub fn scale_factor_of(source: &Path) -> Result<f64, TrainError> {
    if is_release(source) {
        return Ok(read_info(source)?.scale_factor);
    }
    let checkpoint = checkpoint::latest(source)?.ok_or_else(|| TrainError::NoWeights {
        path: source.to_path_buf(),
        what: "--init-from: no checkpoint there".into(),
    })?;
    let state: DiffusionState = checkpoint::load_state(&checkpoint)?;
    Ok(state.scale_factor)
}

/// Whether `dir` holds a release (rather than a run folder).
pub fn is_release(dir: &Path) -> bool {
    dir.join(RELEASE_FILE).is_file()
}

/// The `release.json` of the release in `dir`, of a format this build reads.
fn read_info(dir: &Path) -> Result<ReleaseInfo, TrainError> {
    let info_path = dir.join(RELEASE_FILE);
    let text = std::fs::read(&info_path).map_err(|e| TrainError::io(&info_path, e))?;
    let info: ReleaseInfo = serde_json::from_slice(&text).map_err(|e| TrainError::Release {
        path: info_path.clone(),
        message: e.to_string(),
    })?;
    if info.format != FORMAT {
        return Err(TrainError::Release {
            path: info_path,
            message: format!(
                "release format {} (this build reads format {FORMAT})",
                info.format
            ),
        });
    }
    Ok(info)
}

/// Reads a release, checking every weight's name and shape against its configuration.
pub fn load_release(dir: &Path) -> Result<Release, TrainError> {
    let info = read_info(dir)?;
    let config = ModelConfig::load(&dir.join(CONFIG_FILE))?;
    let f32_weights =
        |name: &str, expected: &BTreeMap<String, Vec<usize>>| -> Result<NamedWeights, TrainError> {
            Ok(checkpoint::load_weights_as_f32(dir, name, Some(expected))?)
        };
    let (unet_expected, encoder_expected) = expected_params(&config)?;
    let unet = f32_weights("unet", &unet_expected)?;
    let encoder = match (encoder_name(&config), &encoder_expected) {
        (Some(name), Some(expected)) => Some(f32_weights(name, expected)?),
        _ => None,
    };
    let autoencoder = match config.autoencoder.regularizer {
        ldm_nn::FirstStage::Identity => None,
        _ => Some(f32_weights(
            AUTOENCODER,
            &autoencoder::expected_params(&config)?,
        )?),
    };
    let tokenizer = match config.text_encoder_shape() {
        Some(_) => Some(TextTokenizer::load(&dir.join(TOKENIZER_FILE))?),
        None => None,
    };
    let planner = match config.conditioning.planner() {
        Some(_) => Some(TrainedPlanner {
            weights: f32_weights(
                PLANNER,
                &ldm_nn::graphs::expected_params(GraphRole::Planner, &config)?,
            )?,
            tokenizer: TextTokenizer::load(&dir.join(PLANNER_TOKENIZER_FILE))?,
        }),
        None => None,
    };
    Ok(Release {
        config,
        info,
        unet,
        encoder,
        autoencoder,
        tokenizer,
        planner,
    })
}

/// The folder that holds a trained model's `<network>.safetensors`: a release (`models/NAME`)
/// as it is, its weights f16 (read them with `checkpoint::load_weights_as_f32`), or the latest
/// checkpoint of a run folder (none while it has none).
pub fn weights_folder(source: &Path) -> Result<Option<PathBuf>, TrainError> {
    if is_release(source) {
        return Ok(Some(source.to_path_buf()));
    }
    Ok(checkpoint::latest(source)?)
}

/// The folder whose `<network>.safetensors` the networks start from: the run's own checkpoint
/// when resuming; for a new run fine-tuned with `--init-from`, the [`weights_folder`] of that
/// run or release; none otherwise.
pub fn weights_source(
    start: &Start,
    init_from: Option<&Path>,
) -> Result<Option<PathBuf>, TrainError> {
    match (start, init_from) {
        (Start::Resume(checkpoint), _) => Ok(Some(checkpoint.clone())),
        (Start::Fresh, None) => Ok(None),
        (Start::Fresh, Some(source)) => weights_folder(source)?.map(Some).ok_or_else(|| {
            TrainError::NoWeights {
                path: source.to_path_buf(),
                what: "--init-from: no checkpoint there (it must be a run folder of `ldm train` or a release of `ldm train release`)".into(),
            }
        }),
    }
}
