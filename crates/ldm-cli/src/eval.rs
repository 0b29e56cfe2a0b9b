//! `ldm eval`: how good an exported bundle is, on a held-out image folder, with no libtorch.
//!
//! - Reconstruction (bundles with a first stage): PSNR, SSIM and MS-SSIM of encode-decode
//!   round trips, and rFID between originals and reconstructions.
//! - Generation (text, class and unconditional bundles): one image per held-out row, prompted
//!   with its caption or class; FID, KID and precision/recall against the held-out images;
//!   conditioning accuracy (the evaluator's first head against the row's value, and for
//!   procedural scenes the colour and shape read back from the pixels); samples per second.
//!   Procedural shapes are read back attribute by attribute (`eval_shapes`).
//! - Placement (held-out scenes): the objects read back from the generated images against
//!   the row's boxes (layout bundles) or caption (text bundles) (`eval_scenes`).
//! - Semantic maps (semantic-map bundles): each held-out map drawn at 1x and 2x and read back
//!   by the scene judge, as mean IoU (`eval_semantic`); with maps in the folder, the judge
//!   on the reconstructions too (the first stage's ceiling).
//! - Restoration (super-resolution and inpainting bundles): each held-out image degraded,
//!   restored, and scored beside bicubic upscaling or a mean-colour fill
//!   (`eval_restoration`).
//!
//! Feature-space figures need an evaluator folder (`ldm train classifier`); they are on that
//! network's features, not Inception's.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use image::{GrayImage, RgbImage};
use ldm_core::manifest::{BundleConditioning, ConcatKind, FirstStage};
use ldm_data::scene_judge::{map_mean_iou, read_scene};
use ldm_data::{ImageFolder, Record, SEMANTIC_MAP};
use ldm_eval::{fid, kid, ms_ssim, precision_recall, psnr, ssim, Evaluator, Judged};
use ldm_runtime::{Backend, Bundle, Image, Pipeline};
use serde::{Deserialize, Serialize};

use crate::eval_restoration::{self, RestorationScores};
use crate::eval_scenes::{self, PlacementScores};
use crate::eval_semantic::{self, SemanticScores};
use crate::eval_shapes;
use crate::generate::{grid, write_png, SamplingArgs, DEFAULT_BUNDLE};

#[derive(Args)]
pub struct EvalArgs {
    /// The exported bundle to evaluate.
    #[arg(long, default_value = DEFAULT_BUNDLE)]
    bundle: PathBuf,
    /// Held-out image folder (metadata.jsonl): the references, and the prompts.
    #[arg(long)]
    data: PathBuf,
    /// Evaluator folder (from `ldm train classifier`), for FID, KID, precision/recall and
    /// category accuracy; without it those are skipped.
    #[arg(long)]
    evaluator: Option<PathBuf>,
    /// Held-out rows used (spread evenly over the folder): one reconstruction and one
    /// generated image each.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(4..=10_000))]
    samples: u32,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// tract, ort-cpu, ort-cuda or ort-trt.
    #[arg(long, default_value = "tract")]
    backend: Backend,
    /// Engine threads (default: as for `ldm generate`).
    #[arg(long)]
    threads: Option<usize>,
    /// Only the reconstruction figures.
    #[arg(long)]
    no_generation: bool,
    /// The diffusion run the bundle was exported from: its steps and training throughput (the
    /// median `steps_per_second` of its log.csv) go into the report.
    #[arg(long)]
    run: Option<PathBuf>,
    /// Folder for eval.json, samples.png and reconstructions.png.
    #[arg(long)]
    out: PathBuf,
}

/// Images per pipeline call.
const BATCH: usize = 16;

/// eval.json; `ldm compare` reads it back.
#[derive(Serialize, Deserialize)]
pub struct Report {
    pub bundle: String,
    pub data: String,
    pub rows: usize,
    pub backend: String,
    pub evaluator: Option<String>,
    pub training: Option<Training>,
    pub reconstruction: Option<Reconstruction>,
    pub generation: Option<Generation>,
    /// Semantic-map bundles: maps drawn and read back.
    #[serde(default)]
    pub semantic: Option<SemanticScores>,
    /// Super-resolution and inpainting bundles: restorations against a trivial one.
    #[serde(default)]
    pub restoration: Option<RestorationScores>,
}

#[derive(Serialize, Deserialize)]
pub struct Training {
    pub run: String,
    pub steps: u64,
    /// Median over the logged intervals of optimisation steps per second.
    pub steps_per_second: f64,
}

#[derive(Serialize, Deserialize)]
pub struct Reconstruction {
    pub psnr: f64,
    pub ssim: f64,
    pub ms_ssim: f64,
    /// FID between originals and reconstructions (evaluator features).
    pub rfid: Option<f64>,
    /// Folders with semantic maps: the scene judge's mean IoU on the round trips against the
    /// rows' maps, the first stage's ceiling for semantic synthesis.
    #[serde(default)]
    pub map_miou: Option<f64>,
}

#[derive(Serialize, Deserialize)]
pub struct Generation {
    pub sampler: String,
    pub steps: usize,
    pub guidance: f64,
    pub eta: f64,
    pub seconds: f64,
    pub samples_per_second: f64,
    pub features: Option<FeatureScores>,
    /// The evaluator's first head: generated images judged as their row's value.
    pub category: Option<Accuracy>,
    /// The evaluator's other heads (for emoji: subcategory and style), judged the same way.
    #[serde(default)]
    pub other_heads: Vec<Accuracy>,
    /// Procedural shapes: colour and shape both read back as the caption says.
    pub colour_and_shape: Option<Accuracy>,
    /// Procedural shapes: each of colour, shape, size and position read back as the caption
    /// says, then all four at once.
    #[serde(default)]
    pub caption_attributes: Vec<Accuracy>,
    /// Held-out scenes of several objects: each placed as its boxes or caption say.
    #[serde(default)]
    pub placement: Option<PlacementScores>,
}

#[derive(Serialize, Deserialize)]
pub struct FeatureScores {
    pub fid: f64,
    /// FID between the even and odd held-out rows: the floor at half this sample size (FID
    /// is biased upwards on small sets; KID is not).
    pub fid_real_halves: f64,
    pub kid: f64,
    pub kid_std: f64,
    pub precision: f64,
    pub recall: f64,
    /// FID of the sampler's starting noise decoded as it is, with no denoising: what any
    /// generation must beat (bundles with a first stage).
    #[serde(default)]
    pub fid_decoded_noise: Option<f64>,
}

#[derive(Serialize, Deserialize)]
pub struct Accuracy {
    pub column: String,
    pub generated: f64,
    /// The same judge on the held-out images themselves: the ceiling.
    pub real: f64,
    /// Share of the most common value among the rows: what always guessing it scores.
    pub majority: f64,
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let threads = a.threads.unwrap_or_else(ldm_runtime::default_threads);
    let training = a.run.as_deref().map(training_throughput).transpose()?;
    let bundle = Bundle::load(&a.bundle)
        .with_context(|| format!("cannot open the bundle {}", a.bundle.display()))?;
    let mut evaluator = a
        .evaluator
        .as_deref()
        .map(|dir| {
            Evaluator::load(dir, threads)
                .with_context(|| format!("cannot open the evaluator {}", dir.display()))
        })
        .transpose()?;
    let folder = ImageFolder::open(&a.data)?;
    // Rows spread evenly over the folder (folders are often sorted by style or class).
    let all: Vec<&Record> = folder.records().collect();
    let count = (a.samples as usize).min(all.len());
    let picked: Vec<usize> = (0..count).map(|i| i * all.len() / count).collect();
    let rows: Vec<Record> = picked.iter().map(|&i| all[i].clone()).collect();
    let side = bundle.manifest.resolution;
    let real = picked
        .iter()
        .map(|&i| folder.load(i, side as u32))
        .collect::<Result<Vec<_>, _>>()?;
    let real_judged = evaluator.as_mut().map(|e| e.judge(&real)).transpose()?;
    let concat_task = bundle.manifest.conditioning.concat().map(|c| c.task);
    let draw_maps = concat_task == Some(ConcatKind::SemanticMap) && !a.no_generation;
    let maps = semantic_maps(&folder, &picked, side, draw_maps)?;
    let mut pipeline = Pipeline::new(bundle, a.backend, threads)?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;

    let reconstruction = if pipeline.bundle().manifest.first_stage == FirstStage::Identity {
        None
    } else {
        Some(reconstruct(
            &mut pipeline,
            &real,
            maps.as_deref(),
            evaluator.as_mut(),
            real_judged.as_ref(),
            &a.out,
        )?)
    };
    let generation = if a.no_generation {
        None
    } else {
        generate(
            &mut pipeline,
            &a,
            &rows,
            &real,
            evaluator.as_mut(),
            real_judged.as_ref(),
        )?
    };
    let restoration = match concat_task {
        Some(task) if task != ConcatKind::SemanticMap && !a.no_generation => {
            Some(eval_restoration::evaluate(
                &mut pipeline,
                task,
                &real,
                evaluator.as_mut(),
                real_judged.as_ref(),
                &a.sampling,
                &a.out,
            )?)
        }
        _ => None,
    };
    let semantic = match (&maps, draw_maps) {
        (Some(maps), true) => Some(eval_semantic::evaluate(
            &mut pipeline,
            maps,
            &real,
            &a.sampling,
            &a.out,
        )?),
        _ => None,
    };
    let report = Report {
        bundle: a.bundle.display().to_string(),
        data: a.data.display().to_string(),
        rows: rows.len(),
        backend: a.backend.name().into(),
        evaluator: a.evaluator.as_ref().map(|p| p.display().to_string()),
        training,
        reconstruction,
        generation,
        semantic,
        restoration,
    };
    print_report(&report);
    let path = a.out.join("eval.json");
    let json = serde_json::to_string_pretty(&report).expect("the report serialises");
    ldm_data::write_atomic(&path, json.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// A diffusion run's steps and median training throughput, from its log.csv.
fn training_throughput(run: &Path) -> anyhow::Result<Training> {
    let path = run.join("log.csv");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let column = header
        .iter()
        .position(|&c| c == "steps_per_second")
        .with_context(|| format!("{} has no steps_per_second column", path.display()))?;
    let (mut steps, mut rates) = (0u64, Vec::new());
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let parsed = (
            fields[0].parse::<u64>(),
            fields.get(column).map(|f| f.parse::<f64>()),
        );
        let (Ok(step), Some(Ok(rate))) = parsed else {
            anyhow::bail!("{}: unreadable row '{line}'", path.display());
        };
        steps = steps.max(step);
        if rate.is_finite() {
            rates.push(rate);
        }
    }
    anyhow::ensure!(!rates.is_empty(), "{} has no logged steps", path.display());
    rates.sort_by(f64::total_cmp);
    Ok(Training {
        run: run.display().to_string(),
        steps,
        steps_per_second: rates[rates.len() / 2],
    })
}

pub(crate) fn to_rgb(image: Image) -> RgbImage {
    RgbImage::from_raw(image.width as u32, image.height as u32, image.rgb)
        .expect("pipeline images hold width x height RGB pixels")
}

pub(crate) fn from_rgb(image: &RgbImage) -> Image {
    Image {
        width: image.width() as usize,
        height: image.height() as usize,
        rgb: image.as_raw().clone(),
    }
}

pub(crate) fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// The rows' semantic maps at `side`, where the folder has them; `required` (a semantic-map
/// bundle to draw them) refuses a folder without them.
fn semantic_maps(
    folder: &ImageFolder,
    rows: &[usize],
    side: usize,
    required: bool,
) -> anyhow::Result<Option<Vec<GrayImage>>> {
    if !required && !folder.records().all(|r| r.column(SEMANTIC_MAP).is_some()) {
        return Ok(None);
    }
    let folder = folder.clone().require_semantic_maps()?;
    let maps = rows
        .iter()
        .map(|&row| {
            let map = folder.load_semantic_map(row, side as u32)?;
            Ok(GrayImage::from_raw(side as u32, side as u32, map.ids)
                .expect("maps hold side x side ids"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Some(maps))
}

fn reconstruct(
    pipeline: &mut Pipeline,
    real: &[RgbImage],
    maps: Option<&[GrayImage]>,
    evaluator: Option<&mut Evaluator>,
    real_judged: Option<&Judged>,
    out: &Path,
) -> anyhow::Result<Reconstruction> {
    let bar = crate::progress::bar("reconstructing");
    bar.set_length(real.len() as u64);
    let mut recs = Vec::with_capacity(real.len());
    let mut scores = [Vec::new(), Vec::new(), Vec::new()];
    for image in real {
        let rec = to_rgb(pipeline.reconstruct(&from_rgb(image))?);
        for (s, metric) in scores.iter_mut().zip([psnr, ssim, ms_ssim]) {
            s.push(metric(image, &rec)?);
        }
        recs.push(rec);
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Rows of eight originals over their reconstructions.
    let shown = real.len().min(16);
    let mut pairs = Vec::new();
    for start in (0..shown).step_by(8) {
        let end = (start + 8).min(shown);
        pairs.extend(real[start..end].iter().map(from_rgb));
        pairs.extend(recs[start..end].iter().map(from_rgb));
    }
    write_png(&out.join("reconstructions.png"), &grid(&pairs))?;
    let rfid = match (evaluator, real_judged) {
        (Some(e), Some(r)) => Some(fid(&r.features, &e.judge(&recs)?.features)?),
        _ => None,
    };
    Ok(Reconstruction {
        psnr: mean(&scores[0]),
        ssim: mean(&scores[1]),
        ms_ssim: mean(&scores[2]),
        rfid,
        map_miou: maps.map(|maps| {
            let ious: Vec<f64> = maps
                .iter()
                .zip(&recs)
                .map(|(asked, rec)| map_mean_iou(asked, &read_scene(rec).map))
                .collect();
            mean(&ious)
        }),
    })
}

/// The prompt each row asks for, or None when the bundle cannot generate from rows alone.
fn prompts(
    conditioning: &BundleConditioning,
    rows: &[Record],
) -> anyhow::Result<Option<Vec<String>>> {
    let column = |name: &str| -> anyhow::Result<Vec<String>> {
        rows.iter()
            .map(|r| {
                r.column(name)
                    .with_context(|| format!("row {} has no '{name}' to prompt with", r.file_name))
            })
            .collect()
    };
    if conditioning.concat().is_some() {
        // Super-resolution and inpainting need an input image per sample: not a generation
        // benchmark.
        return Ok(None);
    }
    if conditioning.layout().is_some() && conditioning.planner().is_none() {
        // A layout bundle draws each row's boxes: its prompt is the row's layout (one with a
        // planner is prompted, and judged, by the row's caption).
        return rows
            .iter()
            .map(|r| {
                let scene = ldm_data::scenes::LayoutScene::from_record(r)
                    .map_err(|e| anyhow::anyhow!("a layout bundle prompts with layouts: {e}"))?;
                Ok(serde_json::to_string(&scene.layout())?)
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map(Some);
    }
    Ok(match conditioning {
        BundleConditioning::Text { .. } => Some(column("text")?),
        BundleConditioning::Class { .. } => Some(column("label")?),
        BundleConditioning::None => Some(vec![String::new(); rows.len()]),
        BundleConditioning::Concat { .. } => None,
    })
}

fn generate(
    pipeline: &mut Pipeline,
    a: &EvalArgs,
    rows: &[Record],
    real: &[RgbImage],
    evaluator: Option<&mut Evaluator>,
    real_judged: Option<&Judged>,
) -> anyhow::Result<Option<Generation>> {
    let m = pipeline.bundle().manifest.clone();
    let Some(prompts) = prompts(&m.conditioning, rows)? else {
        return Ok(None);
    };
    let sampling = &a.sampling;
    let request =
        |prompts: Vec<String>, seed: u64| sampling.request(prompts, seed).size(m.resolution);
    // The settings every chunk runs with, as the bundle's defaults resolve them.
    let plan = pipeline.plan(&request(
        prompts.iter().take(1).cloned().collect(),
        sampling.seed,
    ))?;
    let (sampler, steps, guidance, eta) = (
        plan.sampling.sampler,
        plan.sampling.steps,
        plan.sampling.guidance,
        plan.eta,
    );
    let bar = crate::progress::bar("generating");
    bar.set_length(prompts.len() as u64);
    let started = Instant::now();
    let mut generated = Vec::with_capacity(prompts.len());
    for (i, chunk) in prompts.chunks(BATCH).enumerate() {
        let request = request(chunk.to_vec(), sampling.seed + (i * BATCH) as u64);
        let images = pipeline.generate(&request, &mut |_| true)?;
        generated.extend(images.into_iter().map(to_rgb));
        bar.inc(chunk.len() as u64);
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let shown: Vec<Image> = generated.iter().take(64).map(from_rgb).collect();
    write_png(&a.out.join("samples.png"), &grid(&shown))?;

    let (features, mut heads) = match (evaluator, real_judged) {
        (Some(e), Some(r)) => {
            let g = e.judge(&generated)?;
            let fid_decoded_noise = if m.first_stage == FirstStage::Identity {
                None
            } else {
                let mut noise = Vec::with_capacity(prompts.len());
                for (i, chunk) in prompts.chunks(BATCH).enumerate() {
                    let request = request(chunk.to_vec(), sampling.seed + (i * BATCH) as u64);
                    let untouched = pipeline.start(&request)?;
                    noise.extend(pipeline.finish(untouched)?.into_iter().map(to_rgb));
                }
                Some(fid(&r.features, &e.judge(&noise)?.features)?)
            };
            // Subsets of half the rows (at most the usual 1,000), so that the spread over
            // subsets says something on held-out splits of a few hundred images.
            let subset = (rows.len() / 2).min(1000);
            let k = kid(&r.features, &g.features, 50, subset, 0)?;
            let (even, odd): (Vec<_>, Vec<_>) = r
                .features
                .iter()
                .cloned()
                .enumerate()
                .partition(|(i, _)| i % 2 == 0);
            let strip =
                |v: Vec<(usize, Vec<f32>)>| v.into_iter().map(|(_, f)| f).collect::<Vec<_>>();
            let pr = precision_recall(&r.features, &g.features, 3)?;
            let scores = FeatureScores {
                fid: fid(&r.features, &g.features)?,
                fid_real_halves: fid(&strip(even), &strip(odd))?,
                kid: k.mean,
                kid_std: k.std,
                precision: pr.precision,
                recall: pr.recall,
                fid_decoded_noise,
            };
            let heads = e.manifest.config.heads.iter().enumerate().map(|(h, head)| {
                let wanted: Vec<Option<usize>> = rows
                    .iter()
                    .map(|row| {
                        row.column(&head.column)
                            .and_then(|v| head.classes.binary_search(&v).ok())
                    })
                    .collect();
                let share = |predicted: &[usize]| {
                    let judged: Vec<bool> = wanted
                        .iter()
                        .zip(predicted)
                        .filter_map(|(w, p)| w.map(|w| w == *p))
                        .collect();
                    judged.iter().filter(|&&ok| ok).count() as f64 / judged.len().max(1) as f64
                };
                Accuracy {
                    column: head.column.clone(),
                    generated: share(&g.predictions[h]),
                    real: share(&r.predictions[h]),
                    majority: majority(rows.iter().map(|row| row.column(&head.column))),
                }
            });
            (Some(scores), heads.collect())
        }
        _ => (None, Vec::new()),
    };
    let category = (!heads.is_empty()).then(|| heads.remove(0));
    let (colour_and_shape, caption_attributes) = eval_shapes::score(rows, &generated, real);
    let by_boxes = m.conditioning.layout().is_some() && m.conditioning.planner().is_none();
    let placement = eval_scenes::score(rows, &generated, real, by_boxes);
    Ok(Some(Generation {
        sampler: sampler.name().into(),
        steps,
        guidance,
        eta,
        seconds,
        samples_per_second: generated.len() as f64 / seconds,
        features,
        category,
        other_heads: heads,
        colour_and_shape,
        caption_attributes,
        placement,
    }))
}

/// The share of the most common value (rows without one count against it).
pub(crate) fn majority(values: impl Iterator<Item = Option<String>>) -> f64 {
    let mut counts = std::collections::BTreeMap::new();
    let mut total = 0usize;
    for value in values {
        total += 1;
        if let Some(v) = value {
            *counts.entry(v).or_insert(0usize) += 1;
        }
    }
    counts
        .values()
        .max()
        .map_or(0.0, |&m| m as f64 / total.max(1) as f64)
}

fn print_report(r: &Report) {
    println!(
        "{} on {} ({} rows, {})",
        r.bundle, r.data, r.rows, r.backend
    );
    if let Some(t) = &r.training {
        println!(
            "  training         {} steps at {:.2} steps/s ({})",
            t.steps, t.steps_per_second, t.run
        );
    }
    if let Some(rec) = &r.reconstruction {
        println!(
            "  reconstruction   PSNR {:.2} dB   SSIM {:.4}   MS-SSIM {:.4}{}",
            rec.psnr,
            rec.ssim,
            rec.ms_ssim,
            rec.rfid
                .map_or(String::new(), |f| format!("   rFID {f:.2}"))
        );
        if let Some(miou) = rec.map_miou {
            println!("  reconstruction   semantic map mIoU {miou:.3} (the scene judge on the round trips)");
        }
    }
    if let Some(g) = &r.generation {
        println!(
            "  generation       {} {} steps, guidance {}, eta {}: {:.2} samples/s",
            g.sampler, g.steps, g.guidance, g.eta, g.samples_per_second
        );
        if let Some(f) = &g.features {
            println!(
                "  features         FID {:.2} (held-out halves: {:.2})   KID {:.4} ± {:.4}   precision {:.3}   recall {:.3}",
                f.fid, f.fid_real_halves, f.kid, f.kid_std, f.precision, f.recall
            );
            if let Some(noise) = f.fid_decoded_noise {
                println!("  features         FID {noise:.2} of the starting noise decoded without denoising");
            }
        }
        let judged = g.category.iter().chain(&g.other_heads);
        for acc in judged
            .chain(&g.colour_and_shape)
            .chain(&g.caption_attributes)
        {
            println!(
                "  {:<16} {:.1} % of generated images (the real images: {:.1} %; most common value: {:.1} %)",
                acc.column,
                100.0 * acc.generated,
                100.0 * acc.real,
                100.0 * acc.majority
            );
        }
    }
    if let Some(p) = r.generation.as_ref().and_then(|g| g.placement.as_ref()) {
        println!(
            "  placement        {:.1} % of objects right by the {} (the real images: {:.1} %; scored against another row: {:.1} %)",
            100.0 * p.generated,
            p.judged_by,
            100.0 * p.real,
            100.0 * p.other_rows
        );
        for c in &p.by_count {
            println!(
                "    {} object(s), {} rows: {:.1} % of objects right, {:.1} % of images all right (the real images: {:.1} %)",
                c.objects,
                c.rows,
                100.0 * c.generated,
                100.0 * c.images_right,
                100.0 * c.real
            );
        }
    }
    if let Some(s) = &r.restoration {
        let fid = |q: &eval_restoration::Quality| {
            q.fid.map_or(String::new(), |f| format!("   FID {f:.1}"))
        };
        let place = if s.task == "inpainting" {
            " (in the hole)"
        } else {
            ""
        };
        for (who, q) in [("the bundle", &s.model), (s.baseline.as_str(), &s.trivial)] {
            println!(
                "  {}{place}: {who:<18} PSNR {:.2} dB   SSIM {:.4}{}",
                s.task,
                q.psnr,
                q.ssim,
                fid(q)
            );
        }
    }
    if let Some(s) = &r.semantic {
        println!(
            "  semantic maps    mIoU {:.3} at the training size, {:.3} at 2x (the real images: {:.3}; the map ignored: {:.3})",
            s.miou, s.miou_2x, s.real_miou, s.ignored_map_miou
        );
    }
}
