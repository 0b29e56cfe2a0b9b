//! `ldm data ...`: fetch and prepare the project's data sets, or check any image folder.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use ldm_data::scenes::ScenesConfig;
use ldm_data::shapes::ShapesConfig;
use ldm_data::{emoji, scenes, shapes, ImageFolder, Loader, LoaderConfig};

use crate::progress::bar;

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Noto and Twemoji emoji (about 7,500 captioned 64x64 images), fetched with npm.
    Emoji {
        /// Folder to create (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Procedural scenes: one shape of a named colour, size and position, with captions.
    Shapes {
        /// Folder to create (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Number of scenes, train and validation together.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 64)]
        size: u32,
        /// Generator seed: the same seed writes the same bytes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Procedural scenes of 1 to 4 shapes with their layouts: a semantic map beside every
    /// image, each shape's class, colour, size, cell and box in metadata.jsonl, and a caption
    /// naming every shape and where it is. Scenes holding a held-out combination of shape,
    /// colour, size and position go to validation/ only.
    Scenes {
        /// Folder to create (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Number of scenes, train and validation together.
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 64)]
        size: u32,
        /// Generator seed: the same seed writes the same bytes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Shapes per scene are drawn uniformly from 1 to this (at most 4).
        #[arg(long, default_value_t = 4)]
        max_objects: usize,
    },
    /// Check an image folder: rows, files, and that every image decodes.
    Check {
        /// Folder holding metadata.jsonl.
        dir: PathBuf,
    },
}

pub fn run(args: DataArgs) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Emoji { out } => {
            println!("fetching {} npm packages ...", emoji::STYLES.len() + 1);
            let progress = bar("compositing");
            let (dir, train, validation) = emoji::prepare(&out, |done, total| {
                progress.set_length(total as u64);
                progress.set_position(done as u64);
            })?;
            progress.finish();
            report(&dir, train, validation);
        }
        DataCommand::Shapes {
            out,
            count,
            size,
            seed,
        } => {
            let progress = bar("drawing");
            let config = ShapesConfig { count, size, seed };
            let (dir, train, validation) = shapes::prepare(&out, &config, |done, total| {
                progress.set_length(total as u64);
                progress.set_position(done as u64);
            })?;
            progress.finish();
            report(&dir, train, validation);
        }
        DataCommand::Scenes {
            out,
            count,
            size,
            seed,
            max_objects,
        } => {
            let progress = bar("drawing");
            let config = ScenesConfig {
                count,
                size,
                seed,
                max_objects,
            };
            let (dir, train, validation) = scenes::prepare(&out, &config, |done, total| {
                progress.set_length(total as u64);
                progress.set_position(done as u64);
            })?;
            progress.finish();
            report(&dir, train, validation);
        }
        DataCommand::Check { dir } => check(&dir)?,
    }
    Ok(())
}

fn report(dir: &std::path::Path, train: usize, validation: usize) {
    println!(
        "wrote {} pairs to {} ({train} in train/, {validation} in validation/)",
        train + validation,
        dir.display()
    );
}

fn check(dir: &std::path::Path) -> anyhow::Result<()> {
    let folder = ImageFolder::open(dir)?;
    let captioned = folder.records().filter(|r| r.text.is_some()).count();
    let labels = folder.labels();
    let count = folder.len();
    let loader = Loader::new(
        folder,
        LoaderConfig {
            size: 64,
            batch_size: 1,
            flip: false,
            shuffle: false,
            seed: 0,
        },
    )?;
    let progress = bar("decoding");
    progress.set_length(count as u64);
    for step in 0..count as u64 {
        loader
            .batch(step)
            .with_context(|| format!("checking {}", dir.display()))?;
        progress.inc(1);
    }
    progress.finish();
    println!(
        "{}: {count} images, all decode; {captioned} with captions; {} distinct labels",
        dir.display(),
        labels.len()
    );
    Ok(())
}
