//! Golden outputs of the shipped bundles (the default, emoji-text, and shapes-text): a seeded
//! generation summarised (rounded) and snapshotted per backend, so a change to a sampler, a
//! graph or the pipeline that moves the numbers fails here; and tract against ONNX Runtime
//! step by step, within tolerances.

use std::path::Path;

use ldm_core::SamplerKind;
use ldm_runtime::{Backend, Bundle, Generate, Image, Pipeline};

/// Each shipped bundle (a folder of `export/`) with the two prompts it is checked on.
const BUNDLES: [(&str, [&str; 2]); 2] = [
    (
        "emoji-text",
        ["red apple, twemoji style", "red heart, noto style"],
    ),
    (
        "shapes-text",
        [
            "a large red circle in the center on a white background",
            "a small blue square at the top left on a black background",
        ],
    ),
];

/// The latents after every step, and the images, at the training resolution.
fn run(shipped: (&str, [&str; 2]), backend: Backend, sampler: &str) -> (Vec<Vec<f32>>, Vec<Image>) {
    run_at(shipped, backend, sampler, None)
}

/// As [`run`], at `dimensions` (width, height) when given.
fn run_at(
    (bundle, prompts): (&str, [&str; 2]),
    backend: Backend,
    sampler: &str,
    dimensions: Option<(usize, usize)>,
) -> (Vec<Vec<f32>>, Vec<Image>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../export")
        .join(bundle);
    let mut pipeline = Pipeline::new(Bundle::load(&dir).unwrap(), backend, 1).unwrap();
    let mut request = Generate::new(prompts.iter().map(|p| p.to_string()).collect())
        .sampler(sampler.parse::<SamplerKind>().unwrap())
        .steps(6)
        .guidance(3.0)
        .eta(0.0)
        .seed(42);
    if let Some((width, height)) = dimensions {
        request = request.dimensions(width, height);
    }
    let mut trajectory = Vec::new();
    let images = pipeline
        .generate(&request, &mut |p| {
            trajectory.push(p.latents.to_vec());
            true
        })
        .unwrap();
    (trajectory, images)
}

/// Rounded statistics: coarse enough that another CPU's kernels (rounding in the last bits)
/// do not flip a digit, fine enough that a changed sampler or graph does.
fn summary(trajectory: &[Vec<f32>], images: &[Image]) -> String {
    let stats = |v: &[f32]| {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let (min, max) = v
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        format!("mean {mean:.2} std {std:.2} min {min:.1} max {max:.1}")
    };
    let mut out = String::new();
    for (i, latents) in trajectory.iter().enumerate() {
        out.push_str(&format!("step {}: {}\n", i + 1, stats(latents)));
    }
    for (i, image) in images.iter().enumerate() {
        let pixels: Vec<f32> = image.rgb.iter().map(|&v| v as f32).collect();
        let mean: Vec<String> = (0..3)
            .map(|c| {
                let channel: Vec<f32> = pixels.iter().skip(c).step_by(3).copied().collect();
                format!("{:.0}", channel.iter().sum::<f32>() / channel.len() as f32)
            })
            .collect();
        out.push_str(&format!(
            "image {i}: {}x{}, mean rgb [{}]\n",
            image.width,
            image.height,
            mean.join(", ")
        ));
    }
    out
}

#[test]
fn tract_generation_matches_its_snapshot() {
    for shipped in BUNDLES {
        for sampler in ["ddim", "dpm++2m"] {
            let (trajectory, images) = run(shipped, Backend::Tract, sampler);
            insta::assert_snapshot!(
                format!("{}_tract_{sampler}", shipped.0),
                summary(&trajectory, &images)
            );
        }
    }
}

/// A non-square request (64x96, the UNet sampling convolutionally beyond its square training
/// size) on every shipped bundle.
const NON_SQUARE: (usize, usize) = (64, 96);

#[test]
fn tract_non_square_generation_matches_its_snapshot() {
    for shipped in BUNDLES {
        let (trajectory, images) = run_at(shipped, Backend::Tract, "ddim", Some(NON_SQUARE));
        assert_eq!((images[0].width, images[0].height), NON_SQUARE);
        insta::assert_snapshot!(
            format!("{}_tract_ddim_64x96", shipped.0),
            summary(&trajectory, &images)
        );
    }
}

#[cfg(feature = "ort")]
#[test]
fn onnxruntime_follows_tract_step_by_step() {
    for (shipped, dimensions) in BUNDLES
        .iter()
        .flat_map(|b| [(*b, None), (*b, Some(NON_SQUARE))])
    {
        let (tract, tract_images) = run_at(shipped, Backend::Tract, "ddim", dimensions);
        let (ort, ort_images) = run_at(shipped, Backend::OrtCpu, "ddim", dimensions);
        assert_eq!(tract.len(), ort.len());
        for (step, (a, b)) in tract.iter().zip(&ort).enumerate() {
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-3,
                "{}: step {}: latents differ by {worst}",
                shipped.0,
                step + 1
            );
        }
        for (a, b) in tract_images.iter().zip(&ort_images) {
            let worst = a
                .rgb
                .iter()
                .zip(&b.rgb)
                .map(|(x, y)| x.abs_diff(*y))
                .max()
                .unwrap();
            assert!(worst <= 2, "{}: pixels differ by {worst} of 255", shipped.0);
        }
        let size = dimensions.map_or(String::new(), |(w, h)| format!("_{w}x{h}"));
        insta::assert_snapshot!(
            format!("{}_ort_ddim{size}", shipped.0),
            summary(&ort, &ort_images)
        );
    }
}
