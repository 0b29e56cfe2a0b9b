//! `ldm export`: a trained model to an ONNX bundle, with the parity table against tch.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ldm_core::manifest::{Precision, SlicedAttention};
use ldm_export::{calibrate_int8, export, parity_tolerance, ExportOptions, INT8_PARITY_TOLERANCE};
use ldm_train::trained::TrainedModel;

#[derive(Args)]
pub struct ExportArgs {
    /// A release folder (models/<name>/) or a run of `ldm train diffusion` (its latest
    /// checkpoint and the first stage it was trained on).
    #[arg(long = "run", value_name = "DIR")]
    model: PathBuf,
    /// The bundle folder to write (replaced only once the new bundle is complete).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Weights and arithmetic in float16 (normalisation statistics and softmax in float32),
    /// for GPU providers.
    #[arg(long, conflicts_with = "fp16_weights")]
    fp16: bool,
    /// Weights stored as float16, arithmetic in float32: half the size, same results for
    /// releases (whose weights are float16 already).
    #[arg(long)]
    fp16_weights: bool,
    /// Skip the comparison with tch on random inputs.
    #[arg(long)]
    no_parity: bool,
    /// Graphs larger than this many bytes keep their weights in `<graph>.onnx.data` beside
    /// them (ONNX external data; default just under protobuf's 2 GB limit). Their parity is
    /// checked engine by engine in child processes.
    #[arg(long, value_name = "BYTES")]
    external_data_above: Option<usize>,
    /// Self-attention over positions always whole, even at sizes where its scores would not
    /// fit (by default it attends in chunks of queries above a 32x32 latent).
    #[arg(long)]
    whole_attention: bool,
    /// Quantise the UNet's convolutions and linear layers to int8 (integer kernels on every
    /// engine), calibrated on the sampling trajectories of the prompts in this file, one per
    /// line: captions, class names, or any lines for an unconditional model (one trajectory
    /// each), drawn with the model's own sampler settings.
    #[arg(long, value_name = "PROMPTS")]
    int8_unet: Option<PathBuf>,
}

/// Calibration prompts a file may hold, and its size.
const MAX_CALIBRATION_PROMPTS: usize = 1024;
const MAX_CALIBRATION_BYTES: u64 = 1 << 20;

/// The non-empty lines of a calibration prompt file.
fn calibration_prompts(path: &Path) -> anyhow::Result<Vec<String>> {
    let bytes = ldm_core::confined::read_bounded(path, MAX_CALIBRATION_BYTES)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    anyhow::ensure!(
        (1..=MAX_CALIBRATION_PROMPTS).contains(&prompts.len()),
        "{} holds {} prompts (expected 1 to {MAX_CALIBRATION_PROMPTS}, one per line)",
        path.display(),
        prompts.len()
    );
    Ok(prompts)
}

/// `ldm parity-engine GRAPH ENGINE CASES` (hidden): what `ldm export` runs in a child process
/// to check one engine on one large graph.
#[derive(Args)]
pub struct ParityEngineArgs {
    graph: PathBuf,
    engine: String,
    cases: PathBuf,
}

pub fn parity_engine(args: ParityEngineArgs) -> anyhow::Result<()> {
    println!(
        "{}",
        ldm_export::isolated::child_main(&args.graph, &args.engine, &args.cases)?
    );
    Ok(())
}

impl ExportArgs {
    /// An export of `model` to `out` in `precision`, parity checked.
    pub fn new(model: PathBuf, out: PathBuf, precision: Precision) -> Self {
        Self {
            model,
            out,
            fp16: precision == Precision::F16,
            fp16_weights: precision == Precision::F16Weights,
            no_parity: false,
            external_data_above: None,
            whole_attention: false,
            int8_unet: None,
        }
    }
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let options = ExportOptions {
        precision: match (args.fp16, args.fp16_weights) {
            (true, _) => Precision::F16,
            (false, true) => Precision::F16Weights,
            (false, false) => Precision::F32,
        },
        parity: !args.no_parity,
        external_data_above: args
            .external_data_above
            .unwrap_or(ExportOptions::default().external_data_above),
        engine_program: Some(
            std::env::current_exe().context("cannot find the ldm executable for parity checks")?,
        ),
        sliced_attention: (!args.whole_attention).then_some(SlicedAttention::DEFAULT),
        int8_unet: match &args.int8_unet {
            Some(file) => {
                let prompts = calibration_prompts(file)?;
                eprintln!(
                    "calibrating the int8 UNet on {} sampling trajectories",
                    prompts.len()
                );
                let calibrate = || {
                    let mut model = TrainedModel::load(&args.model, tch::Device::Cpu)?;
                    anyhow::Ok(calibrate_int8(&mut model, &prompts)?)
                };
                Some(
                    calibrate()
                        .with_context(|| format!("cannot calibrate {}", args.model.display()))?,
                )
            }
            None => None,
        },
    };
    eprintln!(
        "exporting {} to {}",
        args.model.display(),
        args.out.display()
    );
    let exported = export(&args.model, &args.out, &options)
        .with_context(|| format!("cannot export {}", args.model.display()))?;
    for (file, bytes) in &exported.files {
        println!("{file:<28} {:>10.2} MB", *bytes as f64 / 1e6);
    }
    if options.parity {
        println!(
            "\nparity with tch on random inputs (tolerance {:.0e} relative to the largest output{}):",
            parity_tolerance(options.precision),
            match options.int8_unet {
                Some(_) => format!(", {INT8_PARITY_TOLERANCE:.0e} for the int8 UNet"),
                None => String::new(),
            }
        );
        println!(
            "{:<16} {:<16} {:>9} {:>11} {:>11}",
            "graph", "engine", "pixels", "max abs", "relative"
        );
        for row in &exported.parity {
            let pixels = format!("{}x{}", row.pixels.0, row.pixels.1);
            println!(
                "{:<16} {:<16} {:>9} {:>11.3e} {:>11.3e}",
                row.role.as_str(),
                row.engine,
                pixels,
                row.max_abs,
                row.max_rel
            );
        }
        for (role, engine, reason) in &exported.unavailable {
            println!("{:<16} {:<16} not checked: {reason}", role.as_str(), engine);
        }
        let mut isolated: Vec<&str> = exported
            .parity
            .iter()
            .filter(|r| r.isolated)
            .map(|r| r.role.as_str())
            .collect();
        isolated.dedup();
        for role in isolated {
            println!("{role}: parity checked in child processes, one engine at a time");
        }
    }
    println!("\nwrote {}", exported.dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_prompts_are_the_non_empty_lines_of_a_bounded_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("prompts.txt");
        std::fs::write(
            &file,
            "red apple, twemoji style\n\n  grinning face, noto style  \n",
        )
        .unwrap();
        assert_eq!(
            calibration_prompts(&file).unwrap(),
            ["red apple, twemoji style", "grinning face, noto style"]
        );
        std::fs::write(&file, "\n \n").unwrap();
        let err = calibration_prompts(&file).unwrap_err().to_string();
        assert!(err.contains("holds 0 prompts (expected 1 to 1024"), "{err}");
        std::fs::write(&file, "a\n".repeat(1025)).unwrap();
        assert!(calibration_prompts(&file).is_err());
        std::fs::write(&file, [0xff, 0xfe, b'\n']).unwrap();
        let err = calibration_prompts(&file).unwrap_err().to_string();
        assert!(err.contains("is not UTF-8 text"), "{err}");
        let err = calibration_prompts(&dir.path().join("missing.txt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.txt"), "{err}");
    }
}
