//! `ldm bench`: per-network latency and peak memory of one bundle on every engine this build
//! can run (tract and ONNX Runtime's CPU provider, each on 1 and N threads, and, with the `train`
//! feature, PyTorch eager through tch on the release's weights), end-to-end text-to-image
//! time, and the multiply-accumulates per second achieved against the machine's f32 peak
//! ([`crate::peak`]).
//!
//! Each measurement runs in a child process of its own (`ldm bench --worker`), so that peak
//! resident memory (VmHWM) belongs to one engine and one network.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use ldm_core::manifest::{DType, DimSpec, GraphRole, TensorSpec};
use ldm_nn::ModelConfig;
use ldm_runtime::{Backend, Bundle, Generate, Pipeline, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::peak::Peak;

#[derive(Args)]
pub struct BenchArgs {
    /// The exported bundle.
    #[arg(long, default_value = "export/emoji-text")]
    bundle: PathBuf,
    /// Its release (models/NAME): model.toml for MAC counts, weights for the tch column.
    #[arg(long, default_value = "models/emoji-text")]
    release: PathBuf,
    /// Timed runs per measurement (the median is reported), after --warmup untimed ones.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=100))]
    warmup: u32,
    /// N of the multi-threaded columns (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Sampling steps of the end-to-end text-to-image runs (one guided image each).
    #[arg(long, default_value_t = 25)]
    steps: usize,
    /// Folder for bench.json and bench.png.
    #[arg(long, default_value = "bench")]
    out: PathBuf,
    /// Only these measurements, comma-separated: graphs (unet, decoder, encoder,
    /// text_encoder, class_embedder) and text-to-image (default: all the bundle has). For
    /// paper-size models, where each run takes seconds.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the PyTorch eager column (libtorch on the release's weights).
    #[arg(long)]
    no_tch: bool,
    /// Internal: one measurement, described in JSON, run in a child process.
    #[arg(long, hide = true)]
    worker: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum Engine {
    Tract,
    OrtCpu,
    /// PyTorch eager (libtorch) on the release's weights.
    Tch,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum Target {
    Graph(GraphRole),
    TextToImage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Task {
    bundle: PathBuf,
    release: PathBuf,
    engine: Engine,
    threads: usize,
    target: Target,
    runs: u32,
    warmup: u32,
    steps: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measured {
    median_ms: f64,
    peak_rss_mb: f64,
    /// Cold start: from the worker's start to its first image (bundle loaded, plans
    /// optimised, one generation); text-to-image on the runtime's engines only.
    #[serde(default)]
    first_image_ms: Option<f64>,
}

#[derive(Serialize)]
struct Row {
    target: String,
    engine: String,
    threads: usize,
    median_ms: Option<f64>,
    peak_rss_mb: Option<f64>,
    /// Achieved multiply-accumulates per second, in units of 1e9.
    gmacs: Option<f64>,
    first_image_ms: Option<f64>,
    /// The same on tract in a second process, with the first one's decluttered graphs in the
    /// plan cache (`ldm_runtime::PlanCache`): every start after the first.
    first_image_cached_ms: Option<f64>,
    unavailable: Option<String>,
}

#[derive(Serialize)]
struct Report {
    bundle: String,
    threads: usize,
    /// The machine's f32 peak on 1 thread and, where N > 1, on N.
    peaks: Vec<Peak>,
    rows: Vec<Row>,
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if let Some(spec) = &a.worker {
        let task: Task = serde_json::from_str(spec).context("malformed --worker task")?;
        let measured = measure(&task, started)?;
        println!("{}", serde_json::to_string(&measured)?);
        return Ok(());
    }
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    anyhow::ensure!((1..=256).contains(&threads), "--threads must be 1 to 256");
    anyhow::ensure!((1..=1000).contains(&a.steps), "--steps must be 1 to 1000");
    let bundle = Bundle::load(&a.bundle)
        .with_context(|| format!("cannot open the bundle {}", a.bundle.display()))?;
    let config_path = a.release.join("model.toml");
    let config = ModelConfig::load(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let macs: Vec<(String, u64)> = config
        .costs()?
        .into_iter()
        .map(|c| (c.network.to_string(), c.macs))
        .collect();
    let mut peaks = vec![Peak::measure(1)];
    if threads > 1 {
        peaks.push(Peak::measure(threads));
    }
    for peak in &peaks {
        println!("f32 peak on {} threads: {}", peak.threads, peak.describe());
    }

    let mut targets: Vec<Target> = bundle
        .manifest
        .graphs
        .keys()
        .map(|&r| Target::Graph(r))
        .collect();
    if matches!(
        bundle.manifest.conditioning,
        ldm_core::manifest::BundleConditioning::Text { .. }
    ) {
        targets.push(Target::TextToImage);
    }
    if !a.only.is_empty() {
        let names: Vec<String> = targets.iter().map(|&t| target_name(t)).collect();
        if let Some(unknown) = a.only.iter().find(|o| !names.contains(o)) {
            bail!(
                "--only {unknown}: the bundle's measurements are {}",
                names.join(", ")
            );
        }
        targets.retain(|&t| a.only.contains(&target_name(t)));
    }
    // Both runtime engines on 1 and on N threads, so that they compare at the same count.
    let mut engines = vec![(Engine::Tract, 1), (Engine::OrtCpu, 1)];
    if threads > 1 {
        engines.extend([(Engine::Tract, threads), (Engine::OrtCpu, threads)]);
    }
    if !a.no_tch {
        engines.push((Engine::Tch, threads));
    }
    let mut rows = Vec::new();
    for &target in &targets {
        for &(engine, n) in &engines {
            let task = Task {
                bundle: a.bundle.clone(),
                release: a.release.clone(),
                engine,
                threads: n,
                target,
                runs: a.runs,
                warmup: a.warmup,
                steps: a.steps,
            };
            // Graphs plan without the cache (their medians do not depend on it); tract's
            // text-to-image starts twice on one cache, first empty, then holding its plans.
            let (result, first_image_cached_ms) =
                if engine == Engine::Tract && target == Target::TextToImage {
                    let plan_cache = a.out.join("plan-cache");
                    let _ = std::fs::remove_dir_all(&plan_cache);
                    let first = spawn(&task, Some(&plan_cache));
                    let again = first.is_ok().then(|| spawn(&task, Some(&plan_cache)));
                    let _ = std::fs::remove_dir_all(&plan_cache);
                    (first, again.and_then(|m| m.ok()?.first_image_ms))
                } else {
                    (spawn(&task, None), None)
                };
            let mac_count = match target {
                Target::Graph(role) => macs
                    .iter()
                    .find(|(n, _)| n == role.as_str())
                    .map(|(_, m)| *m),
                Target::TextToImage => None,
            };
            let row = Row {
                target: target_name(target),
                engine: engine_name(engine).into(),
                threads: n,
                median_ms: result.as_ref().ok().map(|m| m.median_ms),
                peak_rss_mb: result.as_ref().ok().map(|m| m.peak_rss_mb),
                gmacs: result
                    .as_ref()
                    .ok()
                    .zip(mac_count)
                    .map(|(m, macs)| macs as f64 / (m.median_ms * 1e-3) / 1e9),
                first_image_ms: result.as_ref().ok().and_then(|m| m.first_image_ms),
                first_image_cached_ms,
                unavailable: result.err().map(|e| ldm_core::one_line(e.as_ref())),
            };
            print_row(&row, &peaks);
            rows.push(row);
        }
    }
    let report = Report {
        bundle: a.bundle.display().to_string(),
        threads,
        peaks,
        rows,
    };
    print_ratios(&report);
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let json_path = a.out.join("bench.json");
    ldm_data::write_atomic(
        &json_path,
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )
    .with_context(|| format!("cannot write {}", json_path.display()))?;
    let png_path = a.out.join("bench.png");
    plot(&report, &targets, &png_path)?;
    println!("wrote {} and {}", json_path.display(), png_path.display());
    Ok(())
}

fn target_name(target: Target) -> String {
    match target {
        Target::Graph(role) => role.as_str().into(),
        Target::TextToImage => "text-to-image".into(),
    }
}

fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Tract => "tract",
        Engine::OrtCpu => "ort-cpu",
        Engine::Tch => "tch-eager",
    }
}

/// Runs one task in a child process, with tract's plan cache in `plan_cache` (or none); its
/// error is the child's last stderr line.
fn spawn(task: &Task, plan_cache: Option<&Path>) -> anyhow::Result<Measured> {
    let exe = std::env::current_exe().context("cannot find the ldm executable")?;
    let output = Command::new(exe)
        .args(["bench", "--worker", &serde_json::to_string(task)?])
        .env(
            "LDM_PLAN_CACHE",
            plan_cache.map_or("off".into(), |p| p.as_os_str().to_owned()),
        )
        .output()
        .context("cannot start a benchmark worker")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("the worker failed");
        bail!("{}", reason.trim_start_matches("error: "));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("unreadable worker output '{line}'"))
}

/// Median wall time of `run` over `runs` calls after `warmup` untimed ones.
fn median_ms(
    runs: u32,
    warmup: u32,
    mut run: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    for _ in 0..warmup {
        run()?;
    }
    let mut times = Vec::with_capacity(runs as usize);
    for _ in 0..runs {
        let started = Instant::now();
        run()?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Peak resident memory of this process, in MB (Linux; NaN elsewhere).
fn peak_rss_mb() -> f64 {
    peak_mb_of("self")
}

/// The peak resident memory (VmHWM) of process `pid` ("self": this one), in MB; NaN when
/// it cannot be read.
pub fn peak_mb_of(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One task's measurement; `started` is when the worker process began.
fn measure(task: &Task, started: Instant) -> anyhow::Result<Measured> {
    let mut first_image_ms = None;
    let median_ms = match (task.engine, task.target) {
        (Engine::Tch, target) => tch_eager::median_ms(task, target)?,
        (engine, Target::Graph(role)) => {
            let bundle = Bundle::load(&task.bundle)?;
            let inputs = graph_inputs(&bundle, role, 1, bundle.manifest.resolution)?;
            let mut session = bundle.session(role, backend(engine), task.threads)?;
            let named: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
            median_ms(task.runs, task.warmup, || {
                Ok(session.run(&named).map(drop)?)
            })?
        }
        (engine, Target::TextToImage) => {
            let mut pipeline =
                Pipeline::new(Bundle::load(&task.bundle)?, backend(engine), task.threads)?;
            let prompt = bench_prompt(&pipeline.bundle().manifest)?;
            let request = Generate::new(vec![prompt]).steps(task.steps);
            pipeline.generate(&request, &mut |_| true)?;
            first_image_ms = Some(started.elapsed().as_secs_f64() * 1e3);
            // End-to-end runs are long: a third of the runs, at least one (the first,
            // above, was the warm-up).
            median_ms(task.runs.div_ceil(3), 0, || {
                Ok(pipeline.generate(&request, &mut |_| true).map(drop)?)
            })?
        }
    };
    Ok(Measured {
        median_ms,
        peak_rss_mb: peak_rss_mb(),
        first_image_ms,
    })
}

/// The text-to-image prompt: a caption, or for a layout bundle (with a planner or not) the
/// JSON of one box of its first class and colour over the middle of the image.
fn bench_prompt(manifest: &ldm_core::manifest::Manifest) -> anyhow::Result<String> {
    let Some(vocabulary) = manifest.conditioning.layout() else {
        return Ok("red apple, twemoji style".into());
    };
    let object = ldm_core::layout::LayoutObject {
        class: vocabulary.classes[0].clone(),
        colour: vocabulary.colours[0].clone(),
        bbox: [0.25, 0.25, 0.75, 0.75],
    };
    let layout = ldm_core::layout::Layout {
        objects: vec![object],
    };
    vocabulary.text(&layout)?;
    Ok(layout.to_json())
}

fn backend(engine: Engine) -> Backend {
    match engine {
        Engine::OrtCpu => Backend::OrtCpu,
        _ => Backend::Tract,
    }
}

/// Seeded inputs of `batch` rows and images of `side` pixels (latents of side / f), as the
/// manifest describes the graph.
pub fn graph_inputs(
    bundle: &Bundle,
    role: GraphRole,
    batch: usize,
    side: usize,
) -> anyhow::Result<Vec<(String, Tensor)>> {
    let m = &bundle.manifest;
    let spec = m
        .graph(role)
        .with_context(|| format!("the bundle has no {} graph", role.as_str()))?;
    let latent = side / m.downsampling_factor;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    spec.inputs
        .iter()
        .map(|input: &TensorSpec| {
            let shape: Vec<usize> = input
                .shape
                .iter()
                .map(|d| match d {
                    DimSpec::Fixed(n) => *n,
                    DimSpec::Symbol(s) if s.starts_with("latent_") => latent,
                    DimSpec::Symbol(s) if s == "batch" => batch,
                    DimSpec::Symbol(_) => side,
                })
                .collect();
            let n = shape.iter().product();
            let tensor = match (input.dtype, input.name.as_str()) {
                (DType::Int64, _) => Tensor::i64(&shape, vec![1; n])?,
                (_, "timestep") => Tensor::f32(&shape, vec![500.0; n])?,
                _ => Tensor::f32(
                    &shape,
                    (0..n).map(|_| StandardNormal.sample(&mut rng)).collect(),
                )?,
            };
            Ok((input.name.clone(), tensor))
        })
        .collect()
}

fn print_row(r: &Row, peaks: &[Peak]) {
    let peak = peaks
        .iter()
        .find(|p| p.threads == r.threads)
        .map(|p| p.gmacs);
    match (r.median_ms, &r.unavailable) {
        (Some(ms), _) => println!(
            "{:<15} {:<10} {:>2} threads  {:>9.2} ms  {:>7.0} MB{}",
            r.target,
            r.engine,
            r.threads,
            ms,
            r.peak_rss_mb.unwrap_or(f64::NAN),
            r.gmacs.map_or(String::new(), |g| format!(
                "  {g:>6.2} GMAC/s{}",
                peak.map_or(String::new(), |p| format!(
                    " ({:.0} % of peak)",
                    100.0 * g / p
                ))
            )) + &r.first_image_ms.map_or(String::new(), |ms| format!(
                "  first image {ms:.0} ms after start"
            )) + &r.first_image_cached_ms.map_or(String::new(), |ms| format!(
                " ({ms:.0} ms with its plans cached)"
            ))
        ),
        (None, reason) => println!(
            "{:<15} {:<10} {:>2} threads  unavailable: {}",
            r.target,
            r.engine,
            r.threads,
            reason.as_deref().unwrap_or("")
        ),
    }
}

/// Each engine's speed-up over PyTorch eager (or, without it, over tract on one thread).
fn print_ratios(report: &Report) {
    println!("\nspeed-up over tch-eager (tract 1 thread where tch is unavailable):");
    let mut targets: Vec<&str> = report.rows.iter().map(|r| r.target.as_str()).collect();
    targets.dedup();
    for target in targets {
        let rows: Vec<&Row> = report.rows.iter().filter(|r| r.target == target).collect();
        let base = rows
            .iter()
            .find(|r| r.engine == "tch-eager")
            .and_then(|r| r.median_ms)
            .or_else(|| {
                rows.iter()
                    .find(|r| r.engine == "tract" && r.threads == 1)
                    .and_then(|r| r.median_ms)
            });
        let cells: Vec<String> = rows
            .iter()
            .map(|r| match (base, r.median_ms) {
                (Some(b), Some(ms)) => format!("{} x{}: {:.2}x", r.engine, r.threads, b / ms),
                _ => format!("{} x{}: -", r.engine, r.threads),
            })
            .collect();
        println!("  {target:<15} {}", cells.join("   "));
    }
}

fn plot(report: &Report, targets: &[Target], path: &Path) -> anyhow::Result<()> {
    let groups: Vec<String> = targets.iter().map(|&t| target_name(t)).collect();
    let mut series: Vec<(String, Vec<f64>)> = Vec::new();
    for row in &report.rows {
        let name = format!("{} x{}", row.engine, row.threads);
        let index = groups
            .iter()
            .position(|g| *g == row.target)
            .expect("rows are of the targets");
        let entry = match series.iter().position(|(n, _)| *n == name) {
            Some(i) => &mut series[i].1,
            None => {
                series.push((name, vec![f64::NAN; groups.len()]));
                &mut series.last_mut().expect("just pushed").1
            }
        };
        entry[index] = row.median_ms.unwrap_or(f64::NAN);
    }
    let title = format!("{}: median latency, batch 1", report.bundle);
    let chart = ldm_plot::grouped_bars(&title, "milliseconds (log)", &groups, &series)
        .map_err(anyhow::Error::msg)?;
    crate::generate::write_chart(path, chart)
}

/// PyTorch eager through tch: the same networks and weights, what a user would otherwise run.
#[cfg(feature = "train")]
mod tch_eager {
    use super::*;

    pub fn median_ms(task: &Task, target: Target) -> anyhow::Result<f64> {
        tch::set_num_threads(task.threads as i32);
        let _guard = tch::no_grad_guard();
        match target {
            Target::Graph(role) => {
                let release = ldm_train::release::load_release(&task.release)?;
                let weights = match role {
                    GraphRole::Encoder | GraphRole::Decoder => release.autoencoder.as_deref(),
                    GraphRole::Unet => Some(release.unet.as_slice()),
                    GraphRole::TextEncoder | GraphRole::ClassEmbedder => release.encoder.as_deref(),
                    GraphRole::Planner => release.planner.as_ref().map(|p| p.weights.as_slice()),
                }
                .with_context(|| {
                    format!("the release has no weights for the {} graph", role.as_str())
                })?;
                let mut ops = ldm_export::parity::reference_ops(weights)?;
                let bundle = Bundle::load(&task.bundle)?;
                let inputs: Vec<tch::Tensor> =
                    graph_inputs(&bundle, role, 1, bundle.manifest.resolution)?
                        .iter()
                        .map(|(_, t)| {
                            let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
                            match t.data() {
                                ldm_runtime::TensorData::F32(v) => {
                                    tch::Tensor::from_slice(v).reshape(&shape)
                                }
                                ldm_runtime::TensorData::I64(v) => {
                                    tch::Tensor::from_slice(v).reshape(&shape)
                                }
                            }
                        })
                        .collect();
                super::median_ms(task.runs, task.warmup, || {
                    ldm_nn::graphs::forward(role, &release.config, &mut ops, &inputs)?;
                    Ok(())
                })
            }
            Target::TextToImage => {
                let mut model =
                    ldm_train::trained::TrainedModel::load(&task.release, tch::Device::Cpu)?;
                // The request the runtime side of the benchmark runs, as its plan resolves it.
                let manifest = Bundle::load(&task.bundle)?.manifest;
                let prompt = super::bench_prompt(&manifest)?;
                let request = ldm_runtime::Generate::new(vec![prompt.clone()]).steps(task.steps);
                let schedule = manifest.schedule.noise_schedule()?;
                let plan = ldm_runtime::plan::plan(
                    &request,
                    &manifest,
                    &schedule,
                    ldm_runtime::plan::Footprint {
                        engine: 0,
                        weights: 0,
                        activations: ldm_runtime::plan::Activations::of(&manifest),
                    },
                    u64::MAX,
                )?;
                let options = ldm_train::trained::SampleOptions {
                    sampler: plan.sampling.sampler,
                    steps: plan.sampling.steps,
                    guidance: plan.sampling.guidance,
                    seed: 0,
                };
                super::median_ms(task.runs.div_ceil(3), task.warmup.min(1), || {
                    let _image = model.generate(std::slice::from_ref(&prompt), "", &options)?;
                    Ok(())
                })
            }
        }
    }
}

#[cfg(not(feature = "train"))]
mod tch_eager {
    use super::*;

    pub fn median_ms(_: &Task, _: Target) -> anyhow::Result<f64> {
        bail!("this ldm was built without the train feature (libtorch)")
    }
}
