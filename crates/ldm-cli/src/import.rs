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
    /// CLIP's tokenizer files (vocab.json, merges.txt), for single files.
    #[arg(long, value_name = "DIR")]
    tokenizer: Option<PathBuf>,
    /// The architecture of a single file (a model configuration), where its shapes do not
    /// decide it.
    #[arg(long, value_name = "TOML")]
    config: Option<PathBuf>,
    /// Latent scale factor of a single file (default: Stable Diffusion's 0.18215).
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
    let config = args
        .config
        .as_deref()
        .map(ldm_nn::ModelConfig::load)
        .transpose()?;
    let options = ImportOptions {
        ema: if args.no_ema {
            EmaChoice::Never
        } else {
            EmaChoice::Prefer
        },
        vae: args.vae.clone(),
        tokenizer: args.tokenizer.clone(),
        config,
        scale_factor: args.scale_factor,
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
        text_encoder: named(imported.weights.get(&GraphRole::TextEncoder))?,
        autoencoder: named(imported.weights.get(&GraphRole::Encoder))?,
        tokenizer,
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
