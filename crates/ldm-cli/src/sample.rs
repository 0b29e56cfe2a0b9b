//! `ldm train sample`: images from a diffusion run's EMA weights on tch, before export, with
//! the samplers, noise and conditioning of `ldm generate` (the same seed draws the same image
//! from a release and from its exported bundle); with `--judge-shapes`, how often they show
//! the colour, shape, size and position asked for.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ldm_core::SamplerKind;
use ldm_data::judge::judge;
use ldm_data::{ImageFolder, Record};
use ldm_train::images::{save_grid, to_rgb_images};
use ldm_train::trained::{SampleOptions, TrainedModel};

#[derive(Args)]
pub struct SampleArgs {
    /// Run folder of `ldm train diffusion`, or a release (models/NAME).
    #[arg(long)]
    run: PathBuf,
    /// A caption (text models) or class name or id (class models); repeat for several.
    #[arg(long = "prompt")]
    prompts: Vec<String>,
    /// What guidance steers away from (text models).
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Take the prompts from the first --count rows of this image folder instead.
    #[arg(long)]
    prompts_from: Option<PathBuf>,
    /// Images to draw: each prompt in turn, or rows of --prompts-from.
    #[arg(long, default_value_t = 8)]
    count: usize,
    /// ddpm, ddim, plms, dpm++2m, euler or euler-a.
    #[arg(long, default_value = "ddim")]
    sampler: SamplerKind,
    /// Sampling steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// DDIM's eta: 1 draws fresh noise at every step (DDPM's variance), 0 is deterministic.
    /// Early checkpoints sample cleanly only with fresh noise.
    #[arg(long, default_value_t = 1.0)]
    eta: f64,
    /// Classifier-free guidance scale (1: none).
    #[arg(long, default_value_t = 3.0)]
    guidance: f64,
    /// Seed of the first image; image i uses seed + i.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The grid PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// Images per row of the grid.
    #[arg(long, default_value_t = 8)]
    columns: usize,
    /// Read each image back with the procedural-shapes pixel judge and compare with its
    /// row's attributes (needs --prompts-from a shapes folder).
    #[arg(long)]
    judge_shapes: bool,
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Images per UNet batch: keeps memory flat for large --count.
const BATCH: usize = 32;

pub fn run(a: SampleArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=4096).contains(&a.count), "--count must be 1 to 4096");
    anyhow::ensure!((0.0..=1.0).contains(&a.eta), "--eta must be in [0, 1]");
    let rows: Vec<Record> = match &a.prompts_from {
        Some(folder) => ImageFolder::open(folder)?
            .records()
            .take(a.count)
            .cloned()
            .collect(),
        None => vec![],
    };
    let prompts: Vec<String> = if a.prompts_from.is_some() {
        rows.iter()
            .map(|r| r.text.clone().unwrap_or_default())
            .collect()
    } else if a.prompts.is_empty() {
        vec![String::new(); a.count]
    } else {
        (0..a.count)
            .map(|i| a.prompts[i % a.prompts.len()].clone())
            .collect()
    };
    anyhow::ensure!(
        !a.judge_shapes || !rows.is_empty(),
        "--judge-shapes needs --prompts-from a shapes folder"
    );

    let device = ldm_train::parse_device(&a.device)?;
    let mut model = TrainedModel::load(&a.run, device)
        .with_context(|| format!("loading {}", a.run.display()))?;
    let sampler = a.sampler.with_eta(a.eta);
    let mut images = Vec::new();
    for (i, chunk) in prompts.chunks(BATCH).enumerate() {
        let options = SampleOptions {
            sampler,
            steps: a.steps,
            guidance: a.guidance,
            seed: a.seed + (i * BATCH) as u64,
        };
        images.push(model.generate(chunk, &a.negative_prompt, &options)?);
    }
    let images = tch::Tensor::cat(&images, 0);
    save_grid(&images, a.columns, &a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "wrote {} images to {} (step {} of {})",
        prompts.len(),
        a.out.display(),
        model.step,
        a.run.display()
    );
    if a.judge_shapes {
        report_shapes(&rows, &to_rgb_images(&images));
    }
    Ok(())
}

/// Per attribute, how many images the pixel judge reads as their caption says.
fn report_shapes(rows: &[Record], images: &[image::RgbImage]) {
    let names = ["colour", "shape", "size", "position", "background"];
    let mut right = [0usize; 5];
    let mut colour_and_shape = 0;
    for (row, image) in rows.iter().zip(images) {
        let want = |key: &str| {
            row.attributes
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let Some(j) = judge(image) else { continue };
        let got = names.map(|name| j.attribute(name).unwrap_or_default());
        for (i, name) in names.iter().enumerate() {
            right[i] += (got[i] == want(name)) as usize;
        }
        colour_and_shape += (got[0] == want("colour") && got[1] == want("shape")) as usize;
    }
    let n = rows.len();
    for (name, r) in names.iter().zip(right) {
        println!(
            "{name:<18} {r:>4}/{n} ({:.0} %)",
            100.0 * r as f64 / n as f64
        );
    }
    println!(
        "{:<18} {colour_and_shape:>4}/{n} ({:.0} %)",
        "colour and shape",
        100.0 * colour_and_shape as f64 / n as f64
    );
}
