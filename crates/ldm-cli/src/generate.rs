//! `ldm generate`: images from an exported bundle, on tract or ONNX Runtime, no libtorch.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use ldm_core::semantic::ClassMap;
use ldm_core::tokenizer::MAX_PROMPT_BYTES;
use ldm_core::SamplerKind;
use ldm_runtime::{Backend, Bundle, Decode, Generate, Image, Pipeline};

/// The bundle `ldm generate` uses when none is named.
pub const DEFAULT_BUNDLE: &str = "export/emoji-text";

#[derive(Args)]
pub struct GenerateArgs {
    /// What to draw: a caption (text models), a class name or id (class models); ignored by
    /// unconditional models. Each kind of bundle takes its own inputs: text and class bundles
    /// the prompt, super-resolution ones --init-image (the low-resolution image), inpainting
    /// ones --init-image and --mask, semantic-map ones --semantic-map, layout ones --layout
    /// (or the layout's JSON or words as the prompt; a layout bundle with a planner takes a
    /// caption, and prints the layout it reads in it); text, class and unconditional bundles
    /// also take --init-image (image-to-image) with or without --mask.
    #[arg(default_value = "")]
    prompt: String,
    /// Class-conditional bundles: the class name or id (the same as giving it as the prompt).
    #[arg(long)]
    class: Option<String>,
    /// The PNG to write; with --batch above 1, a grid of all images.
    #[arg(long, default_value = "out.png")]
    out: PathBuf,
    /// The exported bundle folder.
    #[arg(long, default_value = DEFAULT_BUNDLE)]
    bundle: PathBuf,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// What guidance steers away from (text models).
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Square image side in pixels (default: the input image's size, else the training
    /// resolution).
    #[arg(long, conflicts_with_all = ["width", "height"])]
    size: Option<usize>,
    /// Image width in pixels (default as --size).
    #[arg(long)]
    width: Option<usize>,
    /// Image height in pixels (default as --size).
    #[arg(long)]
    height: Option<usize>,
    /// Images of the prompt to generate.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    batch: u16,
    /// Image-to-image (SDEdit) or inpainting from this PNG, of the output size; for
    /// super-resolution bundles the low-resolution image (the output is f times larger).
    #[arg(long, value_name = "PNG")]
    init_image: Option<PathBuf>,
    /// How much of the sampling image-to-image redoes, 0 to 1 (default 0.75; 1 with --mask).
    #[arg(long)]
    strength: Option<f64>,
    /// Inpainting mask PNG: white where to draw, black where --init-image stays.
    #[arg(long, value_name = "PNG", requires = "init_image")]
    mask: Option<PathBuf>,
    /// Semantic-map bundles: a PNG of class ids (grayscale, as `ldm data scenes` writes its
    /// maps) to draw; the output takes its size, so a larger map samples convolutionally.
    #[arg(long, value_name = "PNG")]
    semantic_map: Option<PathBuf>,
    /// Layout bundles: a JSON file of the boxes to draw, in drawing order:
    /// {"objects": [{"class": "circle", "colour": "red", "box": [x0, y0, x1, y1]}]}, corners
    /// in fractions of the image's width and height (0 to 1). It is the prompt.
    #[arg(long, value_name = "JSON", conflicts_with_all = ["prompt", "class"])]
    layout: Option<PathBuf>,
    /// tract (pure Rust, CPU), or ONNX Runtime: ort-cpu, ort-cuda, ort-trt (TensorRT).
    #[arg(long, default_value = "tract")]
    backend: Backend,
    /// Threads (default: the machine's cores): tract runs the rows of a batch (a guided
    /// image's two halves, several images) on threads of their own, ONNX Runtime splits
    /// every operator (see BENCHMARKS.md).
    #[arg(long)]
    threads: Option<usize>,
    /// Memory one request may use, in MB; an image whose decoding would not fit is decoded
    /// in overlapping tiles, and a request that cannot fit even so is refused.
    #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    max_memory: Option<u64>,
}

/// How images are sampled; every option defaults to the bundle's manifest.
#[derive(Args)]
pub struct SamplingArgs {
    /// ddpm, ddim, plms, dpm++2m, euler or euler-a (default: the bundle's).
    #[arg(long)]
    pub sampler: Option<SamplerKind>,
    /// Sampling steps (default: the bundle's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale; 1 turns guidance off (default: the bundle's).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// DDIM's eta: 0 deterministic, 1 with DDPM's variance (default: the bundle's).
    #[arg(long)]
    pub eta: Option<f64>,
    /// Seed of the first image; image i uses seed + i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// A request for `prompts` with these settings, its first image seeded `seed`.
    pub fn request(&self, prompts: Vec<String>, seed: u64) -> Generate {
        let mut request = Generate::new(prompts).seed(seed);
        request.sampler = self.sampler;
        request.steps = self.steps;
        request.guidance = self.guidance;
        request.eta = self.eta;
        request
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if args.out.extension().and_then(|e| e.to_str()) != Some("png") {
        bail!(
            "--out {}: the output is a PNG; name it *.png",
            args.out.display()
        );
    }
    if args.max_memory.is_some() {
        crate::allocator::return_large_blocks();
    }
    let loading = Instant::now();
    let bundle = Bundle::load(&args.bundle).with_context(|| {
        format!(
            "cannot open the bundle {} (make one with `ldm export`)",
            args.bundle.display()
        )
    })?;
    let threads = args.threads.unwrap_or_else(ldm_runtime::default_threads);
    let mut pipeline = Pipeline::new(bundle, args.backend, threads)?;
    if let Some(mb) = args.max_memory {
        pipeline.set_memory_budget(mb * 1_000_000);
    }
    eprintln!(
        "loaded {} on {} ({threads} thread(s)) in {:.1} s",
        pipeline.bundle().manifest.name,
        args.backend.name(),
        loading.elapsed().as_secs_f64()
    );
    let prompt = match (&args.layout, &args.class) {
        (Some(path), _) => read_layout(path, pipeline.bundle())?,
        (None, Some(class)) => class.clone(),
        (None, None) => args.prompt.clone(),
    };
    let mut request = args
        .sampling
        .request(vec![prompt; args.batch as usize], args.sampling.seed)
        .negative_prompt(&args.negative_prompt);
    request.width = args.width.or(args.size);
    request.height = args.height.or(args.size);
    request.strength = args.strength;
    request.init_image = args.init_image.as_deref().map(read_png).transpose()?;
    request.mask = args.mask.as_deref().map(read_png).transpose()?;
    request.semantic_map = args
        .semantic_map
        .as_deref()
        .map(read_class_map)
        .transpose()?;

    for warning in pipeline.warnings(&request)? {
        eprintln!("warning: {warning}");
    }
    if pipeline.bundle().manifest.conditioning.planner().is_some() {
        // What the planner read in the caption: a layout the user may keep and edit.
        let layout = pipeline.layouts(&request.prompts[..1])?.remove(0);
        eprintln!("layout: {layout}");
    }
    let plan = pipeline.plan(&request)?;
    let decode = match plan.decode {
        Decode::Whole => String::new(),
        Decode::Tiled(t) => format!(", decoded in tiles of {0}x{0} latent pixels", t.tile),
    };
    eprintln!(
        "planned {}x{}: estimated peak {:.0} MB{decode}",
        plan.width,
        plan.height,
        plan.memory.total() as f64 / 1e6
    );
    let bar = crate::progress::bar("sampling");
    let started = Instant::now();
    // Sampling steps alone, from the end of the first to the end of the last.
    let mut steps = (None, Instant::now(), 0);
    let images = pipeline.generate(&request, &mut |progress| {
        bar.set_length(progress.total as u64);
        bar.set_position(progress.step as u64);
        let now = Instant::now();
        steps = (steps.0.or(Some(now)), now, progress.step);
        true
    })?;
    bar.finish_and_clear();
    if let (Some(first), last, count @ 2..) = steps {
        eprintln!(
            "{:.3} s per sampling step",
            (last - first).as_secs_f64() / (count - 1) as f64
        );
    }
    write_png(&args.out, &grid(&images))?;
    let m = &pipeline.bundle().manifest;
    eprintln!(
        "{} image(s) of {}x{} from {} on {} in {:.1} s: {}",
        images.len(),
        images[0].width,
        images[0].height,
        m.name,
        args.backend.name(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

/// Images side by side in rows of up to 8, 2 pixels apart on white.
pub fn grid(images: &[Image]) -> Image {
    if images.len() == 1 {
        return images[0].clone();
    }
    let (w, h, gap) = (images[0].width, images[0].height, 2);
    let cols = images.len().min(8);
    let rows = images.len().div_ceil(cols);
    let (width, height) = (cols * w + (cols + 1) * gap, rows * h + (rows + 1) * gap);
    let mut rgb = vec![255u8; width * height * 3];
    for (i, image) in images.iter().enumerate() {
        let (x0, y0) = (gap + (i % cols) * (w + gap), gap + (i / cols) * (h + gap));
        for y in 0..h {
            let from = &image.rgb[y * w * 3..(y + 1) * w * 3];
            let at = ((y0 + y) * width + x0) * 3;
            rgb[at..at + w * 3].copy_from_slice(from);
        }
    }
    Image { width, height, rgb }
}

/// An input image or mask, refused before decoding when its header declares a side above
/// what a request may ask for.
fn read_png(path: &Path) -> anyhow::Result<Image> {
    let image = ldm_data::open_image(path, ldm_runtime::plan::MAX_SIDE as u32)
        .with_context(|| format!("cannot read the image {}", path.display()))?
        .to_rgb8();
    Ok(Image {
        width: image.width() as usize,
        height: image.height() as usize,
        rgb: image.into_raw(),
    })
}

/// A layout file's JSON, as the prompt of a layout bundle.
fn read_layout(path: &Path, bundle: &Bundle) -> anyhow::Result<String> {
    if bundle.manifest.conditioning.layout().is_none() {
        bail!(
            "--layout: {} is not a layout bundle (it was not trained on boxes)",
            bundle.manifest.name
        );
    }
    let bytes = ldm_core::confined::read_bounded(path, MAX_PROMPT_BYTES as u64)
        .with_context(|| format!("cannot read the layout {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("the layout {} is not UTF-8", path.display()))
}

/// A map of class ids: an 8-bit grayscale PNG, bounded as input images are.
fn read_class_map(path: &Path) -> anyhow::Result<ClassMap> {
    let map = ldm_data::open_image(path, ldm_runtime::plan::MAX_SIDE as u32)
        .with_context(|| format!("cannot read the semantic map {}", path.display()))?;
    if map.color() != image::ColorType::L8 {
        bail!(
            "the semantic map {} is {:?}; it must be an 8-bit grayscale PNG whose values are class ids",
            path.display(),
            map.color()
        );
    }
    let map = map.to_luma8();
    Ok(ClassMap {
        width: map.width() as usize,
        height: map.height() as usize,
        ids: map.into_raw(),
    })
}

/// A chart as `ldm_plot` draws it (width, height, RGB pixels), written as a PNG.
pub fn write_chart(path: &Path, (width, height, rgb): (u32, u32, Vec<u8>)) -> anyhow::Result<()> {
    let image = Image {
        width: width as usize,
        height: height as usize,
        rgb,
    };
    write_png(path, &image)
}

pub fn write_png(path: &Path, image: &Image) -> anyhow::Result<()> {
    ldm_data::write_png(path, image.width as u32, image.height as u32, &image.rgb)
        .with_context(|| format!("cannot write {}", path.display()))
}
