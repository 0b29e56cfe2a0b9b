//! `ldm compare`: several `ldm eval` reports side by side, as a Markdown table (compare.md)
//! and a chart (compare.png), with speeds as ratios to the first report. Written for the
//! compression trade-off study (scripts/tradeoff.sh), useful for any set of bundles.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use image::RgbImage;
use ldm_plot::grouped_bars;

use crate::eval::{FeatureScores, Report};

#[derive(Args)]
pub struct CompareArgs {
    /// Folders written by `ldm eval` (each holds eval.json); the folder name labels the column.
    #[arg(required = true, num_args = 2..)]
    reports: Vec<PathBuf>,
    /// Folder for compare.md and compare.png.
    #[arg(long)]
    out: PathBuf,
}

/// One labelled report.
struct Entry {
    label: String,
    report: Report,
}

pub fn run(a: CompareArgs) -> anyhow::Result<()> {
    let entries = a
        .reports
        .iter()
        .map(|dir| load(dir))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let table = table(&entries);
    print!("{table}");
    let md = a.out.join("compare.md");
    ldm_data::write_atomic(&md, table.as_bytes())
        .with_context(|| format!("cannot write {}", md.display()))?;
    let png = a.out.join("compare.png");
    chart(&entries)?
        .save(&png)
        .with_context(|| format!("cannot write {}", png.display()))?;
    println!("wrote {} and {}", md.display(), png.display());
    Ok(())
}

fn load(dir: &Path) -> anyhow::Result<Entry> {
    let path = dir.join("eval.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let report = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an `ldm eval` report", path.display()))?;
    let label = dir
        .file_name()
        .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
    Ok(Entry { label, report })
}

fn sampling_rate(r: &Report) -> Option<f64> {
    r.generation.as_ref().map(|g| g.samples_per_second)
}

fn training_rate(r: &Report) -> Option<f64> {
    r.training.as_ref().map(|t| t.steps_per_second)
}

/// The Markdown table: one row per report; missing figures are "–".
fn table(entries: &[Entry]) -> String {
    let cell = |v: Option<f64>, digits: usize| v.map_or("–".into(), |v| format!("{v:.digits$}"));
    let ratio = |v: Option<f64>, base: Option<f64>| match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!(" ({:.2}x)", v / b),
        _ => String::new(),
    };
    let first = &entries[0].report;
    let mut out = String::from(
        "| model | PSNR (dB) | rFID | FID | FID floor | KID | precision | recall | category acc. | samples/s | train steps/s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for Entry { label, report: r } in entries {
        let rec = r.reconstruction.as_ref();
        let generation = r.generation.as_ref();
        let scores = features(r);
        let category = generation.and_then(|g| g.category.as_ref());
        out.push_str(&format!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {}{} | {}{} |\n",
            cell(rec.map(|r| r.psnr), 2),
            cell(rec.and_then(|r| r.rfid), 1),
            cell(scores.map(|f| f.fid), 1),
            cell(scores.map(|f| f.fid_real_halves), 1),
            scores.map_or("–".into(), |f| format!("{:.3} ± {:.3}", f.kid, f.kid_std)),
            cell(scores.map(|f| f.precision), 3),
            cell(scores.map(|f| f.recall), 3),
            cell(category.map(|c| 100.0 * c.generated), 1),
            cell(sampling_rate(r), 2),
            ratio(sampling_rate(r), sampling_rate(first)),
            cell(training_rate(r), 2),
            ratio(training_rate(r), training_rate(first)),
        ));
    }
    out
}

fn features(r: &Report) -> Option<&FeatureScores> {
    r.generation.as_ref().and_then(|g| g.features.as_ref())
}

/// Two bar charts stacked: FID against the held-out floor, and sampling and training rates.
fn chart(entries: &[Entry]) -> anyhow::Result<RgbImage> {
    let labels: Vec<String> = entries.iter().map(|e| e.label.clone()).collect();
    let series = |f: &dyn Fn(&Report) -> Option<f64>| -> Vec<f64> {
        entries
            .iter()
            .map(|e| f(&e.report).unwrap_or(f64::NAN))
            .collect()
    };
    let quality = grouped_bars(
        "FID on the evaluator's features (lower is better)",
        "FID",
        &labels,
        &[
            ("FID".into(), series(&|r| features(r).map(|f| f.fid))),
            (
                "held-out halves (floor)".into(),
                series(&|r| features(r).map(|f| f.fid_real_halves)),
            ),
        ],
    )
    .map_err(anyhow::Error::msg)?;
    let speed = grouped_bars(
        "Throughput (higher is better)",
        "per second",
        &labels,
        &[
            ("sampling, images/s".into(), series(&sampling_rate)),
            ("training, steps/s".into(), series(&training_rate)),
        ],
    )
    .map_err(anyhow::Error::msg)?;
    let (width, top, bottom) = (quality.0, quality.1, speed.1);
    let mut pixels = quality.2;
    pixels.extend(speed.2);
    RgbImage::from_raw(width, top + bottom, pixels).context("chart sizes differ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(json: &str) -> Report {
        serde_json::from_str(json).unwrap()
    }

    const PIXEL_SPACE: &str = r#"{"bundle":"b1","data":"d","rows":8,"backend":"tract","evaluator":null,
        "training":{"run":"r1","steps":100,"steps_per_second":0.5},"reconstruction":null,
        "generation":{"sampler":"ddim","steps":10,"guidance":1.0,"eta":0.0,"seconds":8.0,
        "samples_per_second":1.0,"features":{"fid":50.0,"fid_real_halves":10.0,"kid":0.02,
        "kid_std":0.001,"precision":0.5,"recall":0.25},"category":null,"colour_and_shape":null}}"#;
    const LATENT: &str = r#"{"bundle":"b4","data":"d","rows":8,"backend":"tract","evaluator":null,
        "training":{"run":"r4","steps":100,"steps_per_second":2.0},
        "reconstruction":{"psnr":25.0,"ssim":0.9,"ms_ssim":0.95,"rfid":3.0},
        "generation":{"sampler":"ddim","steps":10,"guidance":1.0,"eta":0.0,"seconds":2.0,
        "samples_per_second":4.0,"features":null,"category":null,"colour_and_shape":null}}"#;

    #[test]
    fn the_table_holds_each_figure_and_speeds_relative_to_the_first() {
        let entries = vec![
            Entry {
                label: "LDM-1".into(),
                report: report(PIXEL_SPACE),
            },
            Entry {
                label: "LDM-4".into(),
                report: report(LATENT),
            },
        ];
        let table = table(&entries);
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 4);
        assert_eq!(
            rows[2],
            "| LDM-1 | – | – | 50.0 | 10.0 | 0.020 ± 0.001 | 0.500 | 0.250 | – | 1.00 (1.00x) | 0.50 (1.00x) |"
        );
        assert_eq!(
            rows[3],
            "| LDM-4 | 25.00 | 3.0 | – | – | – | – | – | – | 4.00 (4.00x) | 2.00 (4.00x) |"
        );
        let image = chart(&entries).unwrap();
        assert_eq!(image.height(), 840);
    }
}
