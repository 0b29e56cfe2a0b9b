//! `ldm import`: someone else's checkpoint (a diffusers folder, or a single `.safetensors` /
//! `.ckpt` file in the reference layout) as a release, and optionally straight to a bundle.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ldm_core::manifest::{GraphRole, Precision};
use ldm_core::TextTokenizer;
use ldm_import::{DType, EmaChoice, ImportOptions, RawTensor, Weights};
use ldm_train::release::{write_imported, ImportRecord, ImportedRelease};
use tch::{Kind, Tensor};

#[derive(Args)]
pub struct ImportArgs {
    /// A diffusers folder (with model_index.json) or a single checkpoint file.
    #[arg(value_name = "CHECKPOINT")]
    checkpoint: PathBuf,
    /// The release folder to write (models/<name>/).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Also export the release to this bundle folder (as `ldm export` does, parity included).
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// A first stage replacing the checkpoint's own (a diffusers vae/ folder or a single file).
    #[arg(long, value_name = "PATH")]
    vae: Option<PathBuf>,
    /// The tokenizer of a single file: a folder with CLIP's vocab.json and merges.txt, or the
    /// tokenizer.json of the paper's text models (bert-base-uncased's for BERTEmbedder).
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
    /// The architecture of a single file: the reference implementation's YAML (the paper's
    /// checkpoints' config.yaml) or a model configuration (TOML), where shapes do not decide it.
    #[arg(long, value_name = "YAML|TOML")]
    config: Option<PathBuf>,
    /// Latent scale factor of a single file (default: the reference YAML's, the checkpoint's
    /// `scale_factor` buffer, else Stable Diffusion's 0.18215).
    #[arg(long)]
    scale_factor: Option<f64>,
    /// The trained UNet weights even when the checkpoint holds an EMA copy.
    #[arg(long)]
    no_ema: bool,
    /// The bundle's weights as float16 (arithmetic in float32).
    #[arg(long, requires = "bundle")]
    fp16_weights: bool,
}

fn tensor(name: &str, t: &RawTensor) -> anyhow::Result<Tensor> {
    let kind = match t.dtype {
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::F64 => Kind::Double,
        other => anyhow::bail!("tensor '{name}' is {other:?}, not floating point"),
    };
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    let tensor = Tensor::from_data_size(&t.data, &shape, kind);
    Ok(if kind == Kind::Double {
        tensor.to_kind(Kind::Float)
    } else {
        tensor
    })
}

fn named(weights: Option<&Weights>) -> anyhow::Result<Option<Vec<(String, Tensor)>>> {
    weights
        .map(|w| {
            w.iter()
                .map(|(n, t)| Ok((n.clone(), tensor(n, t)?)))
                .collect()
        })
        .transpose()
}

pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    let (config, scale_factor) = match args.config.as_deref() {
        Some(path) if ldm_import::reference_config::is_yaml(path) => {
            let reference = ldm_import::reference_config::read(path)?;
            // A scale computed from the data (`scale_by_std`) is in the checkpoint.
            let scale = args
                .scale_factor
                .or((!reference.scale_in_checkpoint).then_some(reference.scale_factor));
            (Some(reference.config), scale)
        }
        Some(path) => (Some(ldm_nn::ModelConfig::load(path)?), args.scale_factor),
        None => (None, args.scale_factor),
    };
    let options = ImportOptions {
        ema: if args.no_ema {
            EmaChoice::Never
        } else {
            EmaChoice::Prefer
        },
        vae: args.vae.clone(),
        tokenizer: args.tokenizer.clone(),
        config,
        scale_factor,
    };
    eprintln!("reading {}", args.checkpoint.display());
    let imported = ldm_import::import(&args.checkpoint, &options)
        .with_context(|| format!("cannot import {}", args.checkpoint.display()))?;
    eprintln!("read {}", imported.source);
    let tokenizer = imported
        .tokenizer_json
        .as_deref()
        .map(|json| TextTokenizer::from_bytes(json.as_bytes(), "the imported tokenizer"))
        .transpose()?;
    let release = ImportedRelease {
        config: imported.config.clone(),
        scale_factor: imported.scale_factor,
        record: ImportRecord {
            source: imported.source.clone(),
            ema: imported.ema,
        },
        unet: named(imported.weights.get(&GraphRole::Unet))?.unwrap_or_default(),
        text_encoder: named(
            ldm_nn::graphs::conditioner_role(&imported.config)
                .and_then(|role| imported.weights.get(&role)),
        )?,
        autoencoder: named(imported.weights.get(&GraphRole::Encoder))?,
        tokenizer,
        guidance: imported.guidance,
    };
    drop(imported);
    let dir = write_imported(&release, &args.out)
        .with_context(|| format!("cannot write the release {}", args.out.display()))?;
    let params: usize = std::iter::once(&release.unet)
        .chain(release.text_encoder.iter())
        .chain(release.autoencoder.iter())
        .flat_map(|w| w.iter().map(|(_, t)| t.numel()))
        .sum();
    println!(
        "wrote {} ({:.1} M parameters{})",
        dir.display(),
        params as f64 / 1e6,
        if release.record.ema { ", EMA UNet" } else { "" }
    );
    drop(release);
    if let Some(bundle) = &args.bundle {
        crate::export::run(crate::export::ExportArgs::new(
            dir,
            bundle.clone(),
            if args.fp16_weights {
                Precision::F16Weights
            } else {
                Precision::F32
            },
        ))?;
    }
    Ok(())
}
