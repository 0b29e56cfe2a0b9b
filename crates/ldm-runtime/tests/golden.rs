//! Golden outputs of the shipped bundles (the default, emoji-text, shapes-text, scenes-semantic,
//! scenes-layout, scenes-text and the emoji class, unconditional, super-resolution and inpainting ones): a seeded generation summarised (rounded) and snapshotted per backend, so
//! a change to a sampler, a graph or the pipeline that moves the numbers fails here; and
//! tract against ONNX Runtime step by step, within tolerances.

use std::path::Path;

use ldm_core::semantic::ClassMap;
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
    let mut request = Generate::new(prompts.iter().map(|p| p.to_string()).collect())
        .sampler(sampler.parse::<SamplerKind>().unwrap());
    if let Some((width, height)) = dimensions {
        request = request.dimensions(width, height);
    }
    run_request(bundle, backend, request)
}

/// `request` (6 steps, guidance 3, eta 0, seed 42) on the shipped `bundle`: the latents after
/// every step, and the images.
fn run_request(bundle: &str, backend: Backend, request: Generate) -> (Vec<Vec<f32>>, Vec<Image>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../export")
        .join(bundle);
    let mut pipeline = Pipeline::new(Bundle::load(&dir).unwrap(), backend, 1).unwrap();
    let request = request.steps(6).guidance(3.0).eta(0.0).seed(42);
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

/// A 64x96 map: a square (class 2) in the top half, a circle (class 1) in the bottom half.
fn two_shape_map() -> ClassMap {
    let (w, h) = (64, 96);
    let ids = (0..w * h)
        .map(|i| {
            let (x, y) = ((i % w) as f32, (i / w) as f32);
            if (16.0..48.0).contains(&x) && (8.0..40.0).contains(&y) {
                2
            } else if (x - 32.0).powi(2) + (y - 70.0).powi(2) < 16.0f32.powi(2) {
                1
            } else {
                0
            }
        })
        .collect();
    ClassMap {
        width: w,
        height: h,
        ids,
    }
}

fn semantic_run(backend: Backend) -> (Vec<Vec<f32>>, Vec<Image>) {
    let mut request =
        Generate::new(vec![String::new()]).sampler("ddim".parse::<SamplerKind>().unwrap());
    request.semantic_map = Some(two_shape_map());
    run_request("scenes-semantic", backend, request)
}

#[test]
fn a_semantic_map_draws_its_shapes_where_it_puts_them_and_matches_its_snapshot() {
    let (trajectory, images) = semantic_run(Backend::Tract);
    let image = &images[0];
    assert_eq!((image.width, image.height), (64, 96));
    // The shapes stand out of the background where the map puts them: their pixels lie far
    // from the background's mean colour, and the background's own pixels near it. (An image
    // that ignored the map would score the same inside and out. Mean colours would not do:
    // a shape drawn in two colours can average to the background's grey.)
    let map = two_shape_map();
    let pixel = |i: usize| [0, 1, 2].map(|c| image.rgb[3 * i + c] as f32);
    let ids = &map.ids;
    let of_class = |class: u8| (0..ids.len()).filter(move |&i| ids[i] == class);
    let count = of_class(0).count() as f32;
    let background = of_class(0).fold([0f32; 3], |sum, i| {
        let p = pixel(i);
        [0, 1, 2].map(|c| sum[c] + p[c] / count)
    });
    let off_background = |class: u8| {
        let distances: Vec<f32> = of_class(class)
            .map(|i| (0..3).map(|c| (pixel(i)[c] - background[c]).abs()).sum())
            .collect();
        distances.iter().sum::<f32>() / distances.len() as f32
    };
    let noise = off_background(0);
    for shape in [1, 2] {
        let contrast = off_background(shape);
        assert!(
            contrast > 3.0 * noise,
            "class {shape}: {contrast:.1} off the background's colour, the background itself {noise:.1}"
        );
    }
    insta::assert_snapshot!(
        "scenes-semantic_tract_ddim_64x96",
        summary(&trajectory, &images)
    );
}

/// A red circle in the top-left box and a blue square in the bottom-right one, in the layout
/// bundle's words: class, colour, then left, top, right and bottom edges on its 16-step grid.
const TWO_BOX_LAYOUT: &str = "circle red l1 t1 r7 b7 square blue l9 t9 r15 b15";

fn layout_run(backend: Backend) -> (Vec<Vec<f32>>, Vec<Image>) {
    let request =
        Generate::new(vec![TWO_BOX_LAYOUT.into()]).sampler("ddim".parse::<SamplerKind>().unwrap());
    run_request("scenes-layout", backend, request)
}

#[test]
fn a_layout_draws_the_objects_it_names_and_matches_its_snapshot() {
    let (trajectory, images) = layout_run(Backend::Tract);
    assert_colours_in_their_quarters(&images[0]);
    insta::assert_snapshot!("scenes-layout_tract_ddim", summary(&trajectory, &images));
}

/// A red object in the top-left quarter of a 64x64 image and a blue one in the bottom-right
/// quarter: pixels whose asked channel stands well above the other two, counted inside and
/// outside that quarter.
fn assert_colours_in_their_quarters(image: &Image) {
    assert_eq!((image.width, image.height), (64, 64));
    let pixels = |asked: usize, quarter: usize| {
        let (mut inside, mut outside) = (0, 0);
        for (i, p) in image.rgb.chunks(3).enumerate() {
            let others = (0..3).filter(|&c| c != asked).map(|c| p[c]).max().unwrap();
            if p[asked] as i32 > others as i32 + 80 {
                let (x, y) = (i % 64, i / 64);
                if (x / 32, y / 32) == (quarter, quarter) {
                    inside += 1;
                } else {
                    outside += 1;
                }
            }
        }
        (inside, outside)
    };
    let (red, blue) = (pixels(0, 0), pixels(2, 1));
    assert!(
        red.0 >= 40 && red.0 >= 4 * red.1,
        "red pixels in / out of the top left: {red:?}"
    );
    assert!(
        blue.0 >= 40 && blue.0 >= 4 * blue.1,
        "blue pixels in / out of the bottom right: {blue:?}"
    );
}

/// A caption that places two objects, for the layout model with a planner.
const PLACING_CAPTION: &str =
    "a large red circle at the top left and a large blue square at the bottom right on a white background";

fn caption_run(backend: Backend) -> (Vec<Vec<f32>>, Vec<Image>) {
    let request =
        Generate::new(vec![PLACING_CAPTION.into()]).sampler("ddim".parse::<SamplerKind>().unwrap());
    run_request("scenes-text", backend, request)
}

#[test]
fn a_caption_is_drawn_where_it_places_things_and_matches_its_snapshot() {
    // The planner reads the caption as the two boxes, in the caption's order,
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../export/scenes-text");
    let mut pipeline = Pipeline::new(Bundle::load(&dir).unwrap(), Backend::Tract, 1).unwrap();
    let layout = pipeline
        .layouts(&[PLACING_CAPTION.into()])
        .unwrap()
        .remove(0);
    let layout: ldm_core::layout::Layout = serde_json::from_str(&layout).unwrap();
    let read: Vec<(&str, &str, [bool; 2])> = layout
        .objects
        .iter()
        .map(|o| {
            let centre = [(o.bbox[0] + o.bbox[2]) / 2.0, (o.bbox[1] + o.bbox[3]) / 2.0];
            (o.class.as_str(), o.colour.as_str(), centre.map(|c| c > 0.5))
        })
        .collect();
    assert_eq!(
        read,
        [
            ("circle", "red", [false, false]),
            ("square", "blue", [true, true])
        ]
    );
    // and the layout model draws them there.
    let (trajectory, images) = caption_run(Backend::Tract);
    assert_colours_in_their_quarters(&images[0]);
    insta::assert_snapshot!("scenes-text_tract_ddim", summary(&trajectory, &images));
}

/// A `side` x `side` image of `colour(x, y)`.
fn image_of(side: usize, colour: impl Fn(usize, usize) -> [u8; 3]) -> Image {
    Image {
        width: side,
        height: side,
        rgb: (0..side * side)
            .flat_map(|i| colour(i % side, i / side))
            .collect(),
    }
}

/// A red disk on white, `side` pixels square: an emoji-like picture to upscale or repaint.
fn red_disk(side: usize) -> Image {
    let centre = side as f32 / 2.0;
    image_of(side, |x, y| {
        let (x, y) = (x as f32 + 0.5 - centre, y as f32 + 0.5 - centre);
        if x * x + y * y < (0.4 * side as f32).powi(2) {
            [220, 40, 30]
        } else {
            [255, 255, 255]
        }
    })
}

fn superres_run(backend: Backend) -> (Vec<Vec<f32>>, Vec<Image>) {
    let request = Generate::new(vec![String::new()])
        .sampler("ddim".parse::<SamplerKind>().unwrap())
        .init_image(red_disk(16), 1.0);
    run_request("emoji-superres", backend, request)
}

/// Mean absolute difference per channel value between `image` shrunk by `factor` (box filter)
/// and `small`.
fn downscaled_gap(image: &Image, factor: usize, small: &Image) -> f32 {
    let mut total = 0f32;
    for y in 0..small.height {
        for x in 0..small.width {
            for c in 0..3 {
                let mut sum = 0f32;
                for dy in 0..factor {
                    for dx in 0..factor {
                        let (px, py) = (x * factor + dx, y * factor + dy);
                        sum += image.rgb[3 * (py * image.width + px) + c] as f32;
                    }
                }
                let mean = sum / (factor * factor) as f32;
                total += (mean - small.rgb[3 * (y * small.width + x) + c] as f32).abs();
            }
        }
    }
    total / (3 * small.width * small.height) as f32
}

#[test]
fn super_resolution_keeps_its_low_resolution_image_and_matches_its_snapshot() {
    let (trajectory, images) = superres_run(Backend::Tract);
    let image = &images[0];
    assert_eq!((image.width, image.height), (64, 64));
    // Shrunk back to 16x16 the output is the input (an image that ignored it would be a
    // random emoji, 60 or more off on average).
    let gap = downscaled_gap(image, 4, &red_disk(16));
    assert!(
        gap < 12.0,
        "4x downscaled, {gap:.1} off the low-resolution input"
    );
    insta::assert_snapshot!("emoji-superres_tract_ddim", summary(&trajectory, &images));
}

/// The red disk at 64x64, its centre (24x24) masked to be drawn anew.
fn inpainting_run(backend: Backend) -> (Vec<Vec<f32>>, Vec<Image>) {
    let request = Generate::new(vec![String::new()])
        .sampler("ddim".parse::<SamplerKind>().unwrap())
        .init_image(red_disk(64), 1.0)
        .mask(centre_mask(64));
    run_request("emoji-inpainting", backend, request)
}

/// White (drawn anew) over the middle 3/8 of each side (24 of 64 pixels, as
/// `examples/centre-mask.png`), black elsewhere.
fn centre_mask(side: usize) -> Image {
    let hole = (side * 5 / 16)..(side * 11 / 16);
    image_of(side, |x, y| {
        [if hole.contains(&x) && hole.contains(&y) {
            255
        } else {
            0
        }; 3]
    })
}

#[test]
fn inpainting_keeps_what_the_mask_keeps_and_matches_its_snapshot() {
    let (trajectory, images) = inpainting_run(Backend::Tract);
    let (image, original, mask) = (&images[0], red_disk(64), centre_mask(64));
    assert_eq!((image.width, image.height), (64, 64));
    // Outside the mask the picture is the input's (through the first stage's round trip).
    let kept: Vec<usize> = (0..64 * 64).filter(|&i| mask.rgb[3 * i] == 0).collect();
    let gap = kept
        .iter()
        .flat_map(|&i| (0..3).map(move |c| 3 * i + c))
        .map(|k| (image.rgb[k] as f32 - original.rgb[k] as f32).abs())
        .sum::<f32>()
        / (3 * kept.len()) as f32;
    assert!(gap < 8.0, "{gap:.1} off the input where the mask keeps it");
    insta::assert_snapshot!("emoji-inpainting_tract_ddim", summary(&trajectory, &images));
}

/// Two images of two categories from the class bundle.
fn class_run(backend: Backend) -> (Vec<Vec<f32>>, Vec<Image>) {
    let prompts = vec!["Flags".into(), "Smileys & Emotion".into()];
    let request = Generate::new(prompts).sampler("ddim".parse::<SamplerKind>().unwrap());
    run_request("emoji-class", backend, request)
}

/// Two images (seeds 42 and 43) from the unconditional bundle.
fn unconditional_run(backend: Backend) -> (Vec<Vec<f32>>, Vec<Image>) {
    let request =
        Generate::new(vec![String::new(); 2]).sampler("ddim".parse::<SamplerKind>().unwrap());
    run_request("emoji-unconditional", backend, request)
}

#[test]
fn class_and_unconditional_bundles_match_their_snapshots() {
    let runs: [(&str, Run); 2] = [
        ("emoji-class", class_run),
        ("emoji-unconditional", unconditional_run),
    ];
    for (bundle, run) in runs {
        let (trajectory, images) = run(Backend::Tract);
        // Not a blank: each image holds an emoji's worth of contrast.
        for image in &images {
            let n = image.rgb.len() as f32;
            let mean = image.rgb.iter().map(|&v| v as f32).sum::<f32>() / n;
            let var = image
                .rgb
                .iter()
                .map(|&v| (v as f32 - mean).powi(2))
                .sum::<f32>()
                / n;
            assert!(var.sqrt() > 20.0, "{bundle}: std {:.1}", var.sqrt());
        }
        insta::assert_snapshot!(
            format!("{bundle}_tract_ddim"),
            summary(&trajectory, &images)
        );
    }
}

/// A bundle's request on one backend: the latents after every step, and the images.
type Run = fn(Backend) -> (Vec<Vec<f32>>, Vec<Image>);

/// Each task's request above, on ONNX Runtime as on tract.
#[cfg(feature = "ort")]
#[test]
fn onnxruntime_follows_tract_on_every_task() {
    let runs: [(&str, Run); 7] = [
        ("scenes-semantic", semantic_run),
        ("scenes-layout", layout_run),
        ("scenes-text", caption_run),
        ("emoji-superres", superres_run),
        ("emoji-inpainting", inpainting_run),
        ("emoji-class", class_run),
        ("emoji-unconditional", unconditional_run),
    ];
    for (bundle, run) in runs {
        assert_engines_agree(bundle, &run(Backend::Tract), &run(Backend::OrtCpu));
    }
}

/// Two engines' runs of one request agree: latents within 1e-3 after every step, pixels
/// within 2/255.
#[cfg(feature = "ort")]
fn assert_engines_agree(
    what: &str,
    a: &(Vec<Vec<f32>>, Vec<Image>),
    b: &(Vec<Vec<f32>>, Vec<Image>),
) {
    assert_eq!(a.0.len(), b.0.len(), "{what}: steps");
    for (step, (x, y)) in a.0.iter().zip(&b.0).enumerate() {
        let worst = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-3,
            "{what}: step {}: latents differ by {worst}",
            step + 1
        );
    }
    for (x, y) in a.1.iter().zip(&b.1) {
        let worst = x
            .rgb
            .iter()
            .zip(&y.rgb)
            .map(|(p, q)| p.abs_diff(*q))
            .max()
            .unwrap();
        assert!(worst <= 2, "{what}: pixels differ by {worst} of 255");
    }
}

#[cfg(feature = "ort")]
#[test]
fn onnxruntime_follows_tract_step_by_step() {
    for (shipped, dimensions) in BUNDLES
        .iter()
        .flat_map(|b| [(*b, None), (*b, Some(NON_SQUARE))])
    {
        let tract = run_at(shipped, Backend::Tract, "ddim", dimensions);
        let ort = run_at(shipped, Backend::OrtCpu, "ddim", dimensions);
        assert_engines_agree(shipped.0, &tract, &ort);
        let size = dimensions.map_or(String::new(), |(w, h)| format!("_{w}x{h}"));
        insta::assert_snapshot!(
            format!("{}_ort_ddim{size}", shipped.0),
            summary(&ort.0, &ort.1)
        );
    }
}
