//! `ldm export`: a trained model (a release folder or a diffusion run) becomes a bundle,
//! `export/<name>/` with one `.onnx` per network, `tokenizer.json` for text models and
//! `manifest.json`. The bundle is assembled in a hidden sibling folder and renamed into place
//! only when complete and, when asked, checked against tch.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ldm_core::manifest::{
    BundleConditioning, CaptionPlanner, ConcatInput, GraphRole, GraphSpec, Int8Unet, Manifest,
    Precision, SamplerDefaults, Schedule, SlicedAttention, MANIFEST_FILE, MANIFEST_FORMAT,
};
use ldm_data::{make_public_dir, write_atomic, StagingDir};
use ldm_nn::quant::ActivationRanges;
use ldm_nn::{Conditioning, ModelConfig};
use ldm_runtime::Tensor as RtTensor;
use ldm_train::release::{load_release_or_run, Release};
use ldm_train::trained::TrainedModel;
use prost::Message;
use tch::Tensor;

use crate::external::{externalize, PROTOBUF_LIMIT};
use crate::isolated::{check_in_child, Case, EngineReport};
use crate::onnx_ops::{OnnxOps, Weight};
use crate::parity::{
    compare_run, f32_values, load_engine, random_inputs, reference_ops, reference_outputs,
    rounded_to_f16, ParityRow, ENGINES,
};
use crate::ExportError;
use ldm_nn::graphs::{self, io_specs};

pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// A layout planner's caption tokenizer.
pub const PLANNER_TOKENIZER_FILE: &str = "planner_tokenizer.json";

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub precision: Precision,
    /// Compare every graph with tch on random inputs before the bundle is committed.
    pub parity: bool,
    /// Graphs whose protobuf would exceed this many bytes keep their weights in a
    /// `<graph>.onnx.data` file beside them (ONNX external data).
    pub external_data_above: usize,
    /// A program whose [`crate::isolated::SUBCOMMAND`] checks one engine (the `ldm` binary):
    /// when set, graphs with external data are checked by each engine in a child process of
    /// it, so that one engine's copy of the weights is in memory at a time beside this
    /// process's. Without it every engine runs here, one after the other.
    pub engine_program: Option<PathBuf>,
    /// How self-attention over positions bounds its memory; `None`: always whole.
    pub sliced_attention: Option<SlicedAttention>,
    /// The UNet's convolutions and linear layers in int8, with these input ranges.
    pub int8_unet: Option<Int8Calibration>,
}

/// What an int8 UNet is quantised with ([`ldm_train::TrainedModel::calibrate_unet`]).
#[derive(Debug, Clone)]
pub struct Int8Calibration {
    pub ranges: ActivationRanges,
    /// Prompts whose sampling trajectories gave the ranges.
    pub prompts: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            precision: Precision::F32,
            parity: true,
            external_data_above: PROTOBUF_LIMIT,
            engine_program: None,
            sliced_attention: Some(SlicedAttention::DEFAULT),
            int8_unet: None,
        }
    }
}

/// What an export wrote and measured.
pub struct Exported {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// File sizes in bytes, by file name.
    pub files: BTreeMap<String, u64>,
    pub parity: Vec<ParityRow>,
    /// Engines that could not run a graph, with the reason.
    pub unavailable: Vec<(GraphRole, &'static str, String)>,
}

/// Largest parity error accepted, relative to the largest reference output.
pub fn parity_tolerance(precision: Precision) -> f32 {
    match precision {
        // With f16 weights the reference runs the same rounded weights (check_parity).
        Precision::F32 | Precision::F16Weights => 1e-3,
        Precision::F16 => 3e-2,
    }
}

/// Largest parity error accepted for an int8 UNet, relative to the largest reference output:
/// the rounding of every layer's input to 256 levels, on random inputs (contexts outside the
/// calibrated range are clipped to it).
pub const INT8_PARITY_TOLERANCE: f32 = 0.1;

/// The int8 calibration of `model`'s UNet: the input ranges of its layers along the sampling
/// trajectories of `prompts`, drawn on tch with the sampler settings its bundle defaults to.
pub fn calibrate_int8(
    model: &mut TrainedModel,
    prompts: &[String],
) -> Result<Int8Calibration, ExportError> {
    let defaults = model.defaults;
    Ok(Int8Calibration {
        ranges: model.calibrate_unet(prompts, &defaults)?,
        prompts: prompts.len(),
    })
}

/// Exports the model at `model` (release folder or diffusion run) to the bundle folder `out`.
pub fn export(model: &Path, out: &Path, options: &ExportOptions) -> Result<Exported, ExportError> {
    let release = load_release_or_run(model)?;
    export_release(&release, out, options)
}

pub(crate) fn weight_map(
    weights: &[(String, Tensor)],
) -> Result<HashMap<String, Weight>, ExportError> {
    weights
        .iter()
        .map(|(name, t)| {
            let (shape, data) = f32_values(t)?;
            Ok((name.clone(), Weight { shape, data }))
        })
        .collect()
}

/// The weights behind `role`'s graph.
fn weights_of(release: &Release, role: GraphRole) -> &[(String, Tensor)] {
    let weights = match role {
        GraphRole::Encoder | GraphRole::Decoder => release.autoencoder.as_deref(),
        GraphRole::Unet => Some(release.unet.as_slice()),
        GraphRole::TextEncoder | GraphRole::ClassEmbedder => release.encoder.as_deref(),
        GraphRole::Planner => release.planner.as_ref().map(|p| p.weights.as_slice()),
    };
    weights.unwrap_or_default()
}

pub fn export_release(
    release: &Release,
    out: &Path,
    options: &ExportOptions,
) -> Result<Exported, ExportError> {
    let config = &release.config;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let staging = StagingDir::new_replacing(out)?;
    let dir = staging.path().to_path_buf();
    make_public_dir(&dir).map_err(|e| ExportError::io(&dir, e))?;

    // Each network's weights as f32 once (encoder and decoder share the first stage's).
    let autoencoder = weight_map(weights_of(release, GraphRole::Encoder))?;
    let unet = weight_map(&release.unet)?;
    let conditioner = weight_map(weights_of(release, GraphRole::TextEncoder))?;
    let planner = weight_map(weights_of(release, GraphRole::Planner))?;
    let mut graph_specs = BTreeMap::new();
    for role in graphs::roles(config) {
        let weights = match role {
            GraphRole::Encoder | GraphRole::Decoder => &autoencoder,
            GraphRole::Unet => &unet,
            GraphRole::TextEncoder | GraphRole::ClassEmbedder => &conditioner,
            GraphRole::Planner => &planner,
        };
        let mut ops = OnnxOps::new(weights, options.precision);
        if let Some(sliced) = options.sliced_attention {
            ops = ops.with_sliced_attention(sliced);
        }
        if let (GraphRole::Unet, Some(int8)) = (role, &options.int8_unet) {
            ops = ops.with_int8(&int8.ranges);
        }
        let (input_specs, output_specs) = io_specs(role, config);
        let inputs: Vec<_> = input_specs.iter().map(|s| ops.input(s)).collect();
        let outputs = graphs::forward(role, config, &mut ops, &inputs)?;
        let outputs: Vec<_> = outputs
            .into_iter()
            .zip(output_specs.iter().cloned())
            .collect();
        let mut model = ops.finish(role.as_str(), &outputs);
        let file = format!("{}.onnx", role.as_str());
        if model.encoded_len() > options.external_data_above {
            let data_file = format!("{file}.data");
            let blob = externalize(&mut model, &data_file);
            write_atomic(&dir.join(&data_file), &blob).map_err(|e| ExportError::io(&dir, e))?;
        }
        write_atomic(&dir.join(&file), &model.encode_to_vec())
            .map_err(|e| ExportError::io(&dir, e))?;
        graph_specs.insert(
            role,
            GraphSpec {
                file,
                inputs: input_specs,
                outputs: output_specs,
            },
        );
    }
    // The graphs' copies of the weights are written: free them before the engines load.
    drop((autoencoder, unet, conditioner, planner));
    let conditioning = bundle_conditioning(release)?;
    let options_of_run = &release.info.diffusion_options;
    if let Some(tokenizer) = &release.tokenizer {
        tokenizer.save(&dir.join(TOKENIZER_FILE))?;
    }
    if let Some(planner) = &release.planner {
        planner.tokenizer.save(&dir.join(PLANNER_TOKENIZER_FILE))?;
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name,
        precision: options.precision,
        resolution: config.resolution,
        size_multiple: size_multiple(config),
        image_channels: config.autoencoder.in_channels,
        first_stage: config.autoencoder.regularizer,
        latent_channels: config.autoencoder.latent_channels,
        downsampling_factor: config.autoencoder.factor,
        latent_scale_factor: release.info.scale_factor,
        conditioning,
        schedule: Schedule::Linear(config.diffusion.clone()),
        // The run's sample grids: what its samples were judged by (see models/README.md).
        defaults: SamplerDefaults {
            sampler: options_of_run.sample_sampler.clone(),
            steps: options_of_run.sample_steps,
            guidance: options_of_run.sample_guidance,
            eta: options_of_run.sample_eta,
        },
        graphs: graph_specs,
        sliced_attention: options.sliced_attention,
        int8: options.int8_unet.as_ref().map(|int8| Int8Unet {
            layers: int8.ranges.len(),
            calibration_prompts: int8.prompts,
        }),
    };
    // What is written is what a runtime will read: validate the text, not the struct.
    let json = serde_json::to_string_pretty(&manifest).expect("a manifest serialises");
    Manifest::parse(&json)
        .map_err(|e| ExportError::Invalid(format!("the manifest would not load: {e}")))?;
    write_atomic(&dir.join(MANIFEST_FILE), json.as_bytes())
        .map_err(|e| ExportError::io(&dir, e))?;

    let (parity, unavailable) = if options.parity {
        check_parity(release, &dir, &manifest, options.engine_program.as_deref())?
    } else {
        (Vec::new(), Vec::new())
    };
    let files = std::fs::read_dir(&dir)
        .map_err(|e| ExportError::io(&dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            Some((
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().ok()?.len(),
            ))
        })
        .collect();
    let dir = staging.commit()?;
    Ok(Exported {
        dir,
        manifest,
        files,
        parity,
        unavailable,
    })
}

fn bundle_conditioning(release: &Release) -> Result<BundleConditioning, ExportError> {
    let concat_channels =
        release.config.unet_in_channels() - release.config.autoencoder.latent_channels;
    Ok(match release.config.conditioning {
        Conditioning::None => BundleConditioning::None,
        Conditioning::Text {
            vocab_size,
            max_length,
            ..
        } => {
            if release.tokenizer.is_none() {
                return Err(ExportError::Invalid(
                    "a text model without its tokenizer.json".into(),
                ));
            }
            BundleConditioning::Text {
                tokenizer: TOKENIZER_FILE.into(),
                max_length,
                vocab_size,
                concat: release
                    .config
                    .conditioning
                    .concat_task()
                    .map(|task| ConcatInput {
                        task,
                        channels: concat_channels,
                    }),
                layout: release.config.conditioning.layout().cloned(),
                planner: match (release.config.conditioning.planner(), &release.planner) {
                    (None, _) => None,
                    (Some(planner), Some(_)) => Some(CaptionPlanner {
                        tokenizer: PLANNER_TOKENIZER_FILE.into(),
                        max_length: planner.max_length,
                        vocab_size: planner.vocab_size,
                    }),
                    (Some(_), None) => {
                        return Err(ExportError::Invalid(
                            "a layout model with [conditioning.planner] but no planner weights"
                                .into(),
                        ))
                    }
                },
            }
        }
        Conditioning::Class { classes, .. } => BundleConditioning::Class {
            classes,
            class_names: release.info.class_names.clone(),
        },
        Conditioning::Concat { task, .. } => BundleConditioning::Concat {
            task,
            channels: concat_channels,
        },
    })
}

/// Image sides must be multiples of this: the latent side must survive every downsampling
/// of the UNet.
fn size_multiple(config: &ModelConfig) -> usize {
    config.autoencoder.factor << (config.unet.channel_mult.len() - 1)
}

/// Two image sizes every graph must handle from the same file: the training size, and a
/// wider one (non-square, to catch swapped axes).
pub fn parity_sizes(config: &ModelConfig) -> [(usize, usize); 2] {
    let step = size_multiple(config);
    let r = config.resolution;
    [(r, r), (r, r + step)]
}

type ParityReport = (Vec<ParityRow>, Vec<(GraphRole, &'static str, String)>);
/// The image size, inputs and reference outputs of each parity case of one graph.
type ParityCases = Vec<((usize, usize), Vec<RtTensor>, Vec<RtTensor>)>;

/// `engine`'s differences from the reference on every case, run in this process.
fn check_here(
    engine: &str,
    graph: &Path,
    spec: &GraphSpec,
    cases: &ParityCases,
) -> Result<EngineReport, ExportError> {
    let mut session = match load_engine(engine, graph) {
        Ok(session) => session,
        Err(reason) => return Ok(Err(reason)),
    };
    cases
        .iter()
        .map(|(_, inputs, reference)| {
            compare_run(session.as_mut(), &spec.inputs, inputs, reference)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Ok)
}

/// The cases with their inputs named, for a child process.
fn named_cases<'a>(spec: &'a GraphSpec, cases: &'a ParityCases) -> Vec<Case<'a>> {
    cases
        .iter()
        .map(|(_, inputs, reference)| Case {
            inputs: spec
                .inputs
                .iter()
                .map(|s| s.name.as_str())
                .zip(inputs)
                .collect(),
            reference,
        })
        .collect()
}

fn check_parity(
    release: &Release,
    dir: &Path,
    manifest: &Manifest,
    engine_program: Option<&Path>,
) -> Result<ParityReport, ExportError> {
    let config = &release.config;
    let (mut rows, mut unavailable) = (Vec::new(), Vec::new());
    for (&role, spec) in &manifest.graphs {
        let tolerance = match (role, manifest.int8) {
            (GraphRole::Unet, Some(_)) => INT8_PARITY_TOLERANCE,
            _ => parity_tolerance(manifest.precision),
        };
        // Both f16 precisions store rounded weights; a release's are already f16, a run's
        // are f32 and would otherwise differ by the rounding (about 5e-4).
        let rounded;
        let weights = match manifest.precision {
            Precision::F32 => weights_of(release, role),
            Precision::F16Weights | Precision::F16 => {
                rounded = rounded_to_f16(weights_of(release, role));
                &rounded[..]
            }
        };
        let mut reference_ops = reference_ops(weights)?;
        let cases: ParityCases = parity_sizes(config)
            .iter()
            .enumerate()
            .map(|(i, &pixels)| {
                let inputs = random_inputs(role, config, 2, pixels, i as u64);
                let reference = reference_outputs(role, config, &mut reference_ops, &inputs)?;
                Ok((pixels, inputs, reference))
            })
            .collect::<Result<_, ExportError>>()?;
        drop(reference_ops);
        let graph = dir.join(&spec.file);
        let isolated = engine_program.filter(|_| dir.join(format!("{}.data", spec.file)).is_file());
        for engine in ENGINES {
            let report = match isolated {
                Some(program) => {
                    let file = dir.join(format!(".parity-{}.safetensors", role.as_str()));
                    check_in_child(program, &graph, engine, &named_cases(spec, &cases), &file)?
                }
                None => check_here(engine, &graph, spec, &cases)?,
            };
            let differences = match report {
                Ok(differences) => differences,
                Err(reason) => {
                    unavailable.push((role, engine, reason));
                    continue;
                }
            };
            for ((pixels, _, _), (max_abs, max_rel)) in cases.iter().zip(differences) {
                // NaN differences fail too.
                if max_rel.is_nan() || max_rel > tolerance {
                    return Err(ExportError::Parity(format!(
                        "{} on {engine} at {}x{} differs from tch by {max_abs:.3e} ({max_rel:.3e} relative, tolerance {tolerance:.0e})",
                        role.as_str(),
                        pixels.0,
                        pixels.1
                    )));
                }
                rows.push(ParityRow {
                    role,
                    engine,
                    pixels: *pixels,
                    max_abs,
                    max_rel,
                    isolated: isolated.is_some(),
                });
            }
        }
    }
    Ok((rows, unavailable))
}
