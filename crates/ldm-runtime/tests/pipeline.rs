//! Generation from the shipped default bundle: seeded and reproducible, per-image seeds that do
//! not depend on the batch, the same images on tract and ONNX Runtime, and bundles or requests
//! that do not fit refused with a message that names the problem.

mod common;

use std::path::Path;

use common::{edited_bundle, mean_abs_difference, shipped_bundle};
use ldm_runtime::{Backend, Bundle, Generate, Image, Pipeline, RuntimeError};

fn generate(backend: Backend, request: &Generate) -> Result<Vec<Image>, RuntimeError> {
    let bundle = Bundle::load(&shipped_bundle())?;
    Pipeline::new(bundle, backend, 2)?.generate(request, &mut |_| true)
}

const PROMPT: &str = "a large red circle in the center on a white background";

#[test]
fn a_seed_gives_the_same_images_whatever_the_batch() {
    let request = Generate::new(vec![PROMPT.into(), PROMPT.into()])
        .steps(4)
        .seed(5);
    let pair = generate(Backend::Tract, &request).unwrap();
    assert_eq!(pair.len(), 2);
    assert_eq!(
        (pair[0].width, pair[0].height, pair[0].rgb.len()),
        (64, 64, 64 * 64 * 3)
    );
    assert_ne!(pair[0], pair[1], "image 1 has its own seed");
    let again = generate(Backend::Tract, &request).unwrap();
    assert_eq!(pair, again, "same seed, same images");
    let second = generate(
        Backend::Tract,
        &Generate::new(vec![PROMPT.into()]).steps(4).seed(6),
    )
    .unwrap();
    // Batch composition changes the engine's summation order only.
    assert!(
        mean_abs_difference(&pair[1], &second[0]) < 0.5,
        "image 1 of seed 5 is image 0 of seed 6"
    );
}

#[test]
fn the_model_draws_what_it_was_asked() {
    // A red circle on white: the middle is red, the corners white.
    let images = generate(Backend::Tract, &Generate::new(vec![PROMPT.into()]).seed(1)).unwrap();
    let px = |x: usize, y: usize| {
        let i = (y * 64 + x) * 3;
        (images[0].rgb[i], images[0].rgb[i + 1], images[0].rgb[i + 2])
    };
    let corner = px(1, 1);
    assert!(
        corner.0 > 200 && corner.1 > 200 && corner.2 > 200,
        "white corner: {corner:?}"
    );
    let red = (0..64 * 64)
        .map(|p| px(p % 64, p / 64))
        .filter(|(r, g, b)| *r > 150 && *g < 100 && *b < 100)
        .count();
    assert!(red > 100, "{red} red pixels");
}

#[cfg(feature = "ort")]
#[test]
fn tract_and_onnxruntime_make_the_same_images() {
    let request = Generate::new(vec![PROMPT.into()]).steps(4).seed(3);
    let tract = generate(Backend::Tract, &request).unwrap();
    let ort = generate(Backend::OrtCpu, &request).unwrap();
    let d = mean_abs_difference(&tract[0], &ort[0]);
    assert!(d < 0.5, "mean difference {d} of 255");
}

/// A copy of the default bundle with `edit` applied to its manifest text.
fn open_error(dir: &Path) -> String {
    let result = Bundle::load(dir).and_then(|b| Pipeline::new(b, Backend::Tract, 1));
    result.err().expect("refused").to_string()
}

#[test]
fn bundles_and_requests_that_do_not_fit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let renamed = edited_bundle(dir.path(), |t| t.replacen("\"sample\"", "\"latents\"", 1));
    let err = open_error(&renamed);
    assert!(
        err.contains("manifest.json")
            && err.contains("the `unet` graph has no input or output 'sample'"),
        "{err}"
    );
    // An input the manifest invents is checked against the graph file.
    let invented = edited_bundle(dir.path(), |t| t.replacen("\"timestep\"", "\"time\"", 1));
    let err = open_error(&invented);
    assert!(
        err.contains("unet.onnx") && err.contains("\"time\""),
        "{err}"
    );

    // Types and shapes are checked against the graph files when the bundle loads.
    let retyped = edited_bundle(dir.path(), |t| {
        t.replacen(
            "\"name\": \"timestep\",\n          \"dtype\": \"float32\"",
            "\"name\": \"timestep\",\n          \"dtype\": \"int64\"",
            1,
        )
    });
    let err = Bundle::load(&retyped).err().unwrap().to_string();
    assert!(
        err.contains("unet.onnx") && err.contains("'timestep': element type 1 in the graph, Int64"),
        "{err}"
    );
    let resized = edited_bundle(dir.path(), |t| {
        t.replacen(
            "\n            16,\n            192",
            "\n            17,\n            192",
            1,
        )
    });
    let err = Bundle::load(&resized).err().unwrap().to_string();
    assert!(
        err.contains("conditioning.max_length = 16 but the `unet` graph's 'context' has 17"),
        "{err}"
    );
    let fixed = edited_bundle(dir.path(), |t| t.replacen("\"latent_height\"", "16", 1));
    let err = Bundle::load(&fixed).err().unwrap().to_string();
    assert!(
        err.contains("is 'latent_height' in the graph but 16 in manifest.json"),
        "{err}"
    );

    let newer = edited_bundle(dir.path(), |t| {
        t.replacen("\"format\": 1", "\"format\": 9", 1)
    });
    let err = open_error(&newer);
    assert!(err.contains("bundle format 9 is newer"), "{err}");

    let missing = edited_bundle(dir.path(), |t| t);
    std::fs::remove_file(missing.join("decoder.onnx")).unwrap();
    let err = open_error(&missing);
    assert!(
        err.contains("decoder.onnx") && err.contains("missing"),
        "{err}"
    );

    let err = open_error(&dir.path().join("nowhere"));
    assert!(
        err.contains("nowhere") && err.contains("manifest.json"),
        "{err}"
    );

    let refuse = |request: Generate, expect: &str| {
        let err = generate(Backend::Tract, &request)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(expect), "{err} (expected {expect})");
    };
    let one = || Generate::new(vec![PROMPT.into()]);
    refuse(one().size(70), "not a multiple of 16");
    refuse(one().steps(0), "0 steps");
    refuse(one().eta(2.0), "eta 2");
    refuse(one().guidance(f64::NAN), "guidance NaN");
    refuse(Generate::new(vec![]), "no prompts");
    // Over the default 16 GB budget however it decodes (its finished images alone are 26 GB).
    refuse(
        Generate::new(vec![PROMPT.into(); 2048]).size(1024),
        "megapixels",
    );
    let grey = Image {
        width: 64,
        height: 64,
        rgb: vec![128; 64 * 64 * 3],
    };
    refuse(
        one().init_image(grey.clone(), 1.0).mask(grey.clone()),
        "grey values",
    );
    refuse(
        one().mask(Image {
            rgb: vec![255; 64 * 64 * 3],
            ..grey
        }),
        "a mask needs an input image",
    );
    let bundle = Bundle::load(&shipped_bundle()).unwrap();
    let pipeline = Pipeline::new(bundle, Backend::Tract, 1).unwrap();
    let long = Generate::new(vec![["a large red circle"; 8].join(" and ")]);
    let warnings = pipeline.warnings(&long).unwrap();
    assert!(
        warnings[0].contains("longer than the model's 16 tokens"),
        "{warnings:?}"
    );
    assert!(pipeline.warnings(&one()).unwrap().is_empty());
    assert!("cuda"
        .parse::<Backend>()
        .unwrap_err()
        .contains("unknown backend 'cuda'"));
}

#[test]
fn cancelling_stops_between_steps() {
    let bundle = Bundle::load(&shipped_bundle()).unwrap();
    let mut pipeline = Pipeline::new(bundle, Backend::Tract, 1).unwrap();
    let mut seen = 0;
    let result = pipeline.generate(&Generate::new(vec![PROMPT.into()]).steps(10), &mut |p| {
        assert_eq!(p.total, 10);
        seen = p.step;
        p.step < 3
    });
    assert!(matches!(result, Err(RuntimeError::Cancelled)));
    assert_eq!(seen, 3);
}

#[test]
fn every_sampler_runs_through_the_pipeline() {
    use ldm_core::SamplerKind;
    let bundle = Bundle::load(&shipped_bundle()).unwrap();
    let mut pipeline = Pipeline::new(bundle, Backend::Tract, 1).unwrap();
    let mut images = Vec::new();
    for name in ["ddpm", "ddim", "plms", "dpm++2m", "euler", "euler-a"] {
        let request = Generate::new(vec![PROMPT.into()])
            .sampler(name.parse::<SamplerKind>().unwrap())
            .steps(3)
            .eta(0.0) // DDIM with the bundle's eta of 1 would be DDPM
            .seed(2);
        let mut steps = 0;
        let image = pipeline.generate(&request, &mut |_| {
            steps += 1;
            true
        });
        images.push(image.unwrap().remove(0));
        // One report per UNet call: PLMS's first step takes two.
        assert_eq!(steps, 3 + usize::from(name == "plms"), "{name}");
    }
    // Same noise: DDIM without noise is Euler and DDPM is Euler ancestral in another
    // parametrisation (Karras et al. 2022), so those pairs agree up to float rounding (a
    // pixel level or two after quantisation); all others differ.
    let gap = |i: usize, j: usize| {
        let (a, b) = (&images[i].rgb, &images[j].rgb);
        a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
    };
    let same = |i: usize, j: usize| gap(i, j) <= 2;
    assert!(same(1, 4), "DDIM and Euler differ by {}", gap(1, 4));
    assert!(
        same(0, 5),
        "DDPM and Euler ancestral differ by {}",
        gap(0, 5)
    );
    for (i, j) in [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
        (3, 4),
        (3, 5),
    ] {
        assert!(
            !same(i, j),
            "samplers {i} and {j} differ by only {}",
            gap(i, j)
        );
    }
}

/// A generated red circle, the input of the image tasks below.
fn circle() -> Image {
    generate(
        Backend::Tract,
        &Generate::new(vec![PROMPT.into()]).seed(3).steps(10),
    )
    .unwrap()
    .remove(0)
}

/// Mean absolute difference over the pixels whose column satisfies `keep`.
fn difference_where(a: &Image, b: &Image, keep: impl Fn(usize) -> bool) -> f64 {
    let (mut sum, mut count) = (0u64, 0u64);
    for (i, (x, y)) in a.rgb.iter().zip(&b.rgb).enumerate() {
        if keep((i / 3) % a.width) {
            sum += x.abs_diff(*y) as u64;
            count += 1;
        }
    }
    sum as f64 / count as f64
}

#[test]
fn image_to_image_keeps_what_strength_leaves() {
    let init = circle();
    let blue = "a large blue circle in the center on a white background";
    let mut steps_run = 0;
    let bundle = Bundle::load(&shipped_bundle()).unwrap();
    let mut pipeline = Pipeline::new(bundle, Backend::Tract, 1).unwrap();
    let request = Generate::new(vec![blue.into()])
        .steps(10)
        .init_image(init.clone(), 0.5);
    let half = pipeline
        .generate(&request, &mut |p| {
            steps_run = p.total;
            true
        })
        .unwrap();
    assert_eq!(steps_run, 5, "strength 0.5 runs half of the steps");
    // Strength 0 redoes nothing: the first stage's reconstruction of the input.
    let request = Generate::new(vec![blue.into()])
        .steps(10)
        .init_image(init.clone(), 0.0);
    let kept = pipeline.generate(&request, &mut |_| true).unwrap();
    let (same, changed) = (
        difference_where(&kept[0], &init, |_| true),
        difference_where(&half[0], &init, |_| true),
    );
    // The first stage reconstructs at about 26 dB PSNR: a few levels of 255.
    assert!(
        same < 8.0 && changed > 3.0 * same,
        "strength 0: {same}, strength 0.5: {changed}"
    );
}

#[test]
fn inpainting_keeps_the_unmasked_half() {
    let init = circle();
    // White (to draw) on the right half.
    let mask = Image {
        width: 64,
        height: 64,
        rgb: (0..64 * 64 * 3)
            .map(|i| if (i / 3) % 64 >= 32 { 255 } else { 0 })
            .collect(),
    };
    let request = Generate::new(vec![
        "a large green square in the center on a white background".into(),
    ])
    .steps(10)
    .seed(4)
    .init_image(init.clone(), 1.0)
    .mask(mask);
    let out = generate(Backend::Tract, &request).unwrap().remove(0);
    // Columns well inside the kept half (the first stage blurs across the seam).
    let kept = difference_where(&out, &init, |x| x < 24);
    let drawn = difference_where(&out, &init, |x| x >= 40);
    assert!(
        kept < 4.0 && drawn > 3.0 * kept,
        "kept half {kept}, drawn half {drawn}"
    );

    let err = generate(
        Backend::Tract,
        &Generate::new(vec![PROMPT.into()]).init_image(init, 1.5),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("strength 1.5"), "{err}");
}

#[cfg(feature = "ort")]
#[test]
fn a_gpu_provider_that_cannot_start_is_reported_not_replaced() {
    for (backend, provider) in [
        (Backend::OrtCuda, "CUDAExecutionProvider"),
        (Backend::OrtTensorRt, "TensorrtExecutionProvider"),
    ] {
        let bundle = Bundle::load(&shipped_bundle()).unwrap();
        match Pipeline::new(bundle, backend, 1) {
            // A machine with onnxruntime-gpu and a GPU runs it.
            Ok(_) => {}
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains(provider) && e.contains("not available"), "{e}");
            }
        }
    }
}

/// A one-initializer ONNX file whose weight lives in external data at `location`.
fn graph_with_external_data(location: &str, dims: &[i64], length: u64) -> Vec<u8> {
    use prost::Message;
    use tract_onnx::pb;
    let entry = |key: &str, value: String| pb::StringStringEntryProto {
        key: key.into(),
        value,
    };
    let weight = pb::TensorProto {
        name: "w".into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        data_location: Some(pb::tensor_proto::DataLocation::External as i32),
        external_data: vec![
            entry("location", location.into()),
            entry("offset", "0".into()),
            entry("length", length.to_string()),
        ],
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: 8,
        graph: Some(pb::GraphProto {
            initializer: vec![weight],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn graphs_reaching_outside_the_bundle_or_absurdly_large_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = edited_bundle(dir.path(), |t| t);
    std::fs::write(dir.path().join("secret"), [0u8; 64]).unwrap();
    std::fs::write(bundle.join("weights.bin"), [0u8; 64]).unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), bundle.join("link.bin")).unwrap();
    let unet = bundle.join("unet.onnx");
    let cases = [
        (
            graph_with_external_data("../secret", &[4], 16),
            "'../secret' is not a relative path inside",
        ),
        (
            graph_with_external_data("/etc/passwd", &[4], 16),
            "'/etc/passwd' is not a relative path inside",
        ),
        (
            graph_with_external_data("sub/../../secret", &[4], 16),
            "is not a relative path inside",
        ),
        (
            graph_with_external_data("", &[4], 16),
            "is not a relative path inside",
        ),
        (
            graph_with_external_data("link.bin", &[4], 16),
            "link.bin: external data of tensor 'w': is a symbolic link",
        ),
        (
            graph_with_external_data("weights.bin", &[4], 4096),
            "beyond the file",
        ),
        (
            graph_with_external_data("weights.bin", &[1 << 20, 1 << 20], 16),
            "absurd shape",
        ),
    ];
    for (bytes, expect) in cases {
        std::fs::write(&unet, bytes).unwrap();
        let err = Bundle::load(&bundle).err().expect("refused").to_string();
        assert!(err.contains(expect), "{err} (expected {expect})");
    }
    std::fs::write(&unet, b"not protobuf at all").unwrap();
    let err = Bundle::load(&bundle).err().expect("refused").to_string();
    assert!(
        err.contains("unet.onnx") && err.contains("not an ONNX model"),
        "{err}"
    );
}

#[test]
fn reconstruction_round_trips_an_image_of_any_fitting_size_and_refuses_others() {
    let bundle = Bundle::load(&shipped_bundle()).unwrap();
    let mut pipeline = Pipeline::new(bundle, Backend::Tract, 1).unwrap();
    let original = circle();
    let rec = pipeline.reconstruct(&original).unwrap();
    assert_eq!((rec.width, rec.height), (64, 64));
    // The first stage keeps a generated scene close (mean error under 10 of 255).
    assert!(difference_where(&original, &rec, |_| true) < 10.0);
    let white = |width: usize, height: usize| Image {
        width,
        height,
        rgb: vec![255; width * height * 3],
    };
    let wide = pipeline.reconstruct(&white(64, 32)).unwrap();
    assert_eq!((wide.width, wide.height), (64, 32));
    let err = pipeline
        .reconstruct(&white(30, 30))
        .unwrap_err()
        .to_string();
    assert!(err.contains("divisible by 4"), "{err}");
    pipeline.set_memory_budget(1 << 20);
    let err = pipeline
        .reconstruct(&white(64, 64))
        .unwrap_err()
        .to_string();
    assert!(err.contains("above the memory budget of 1 MB"), "{err}");
}

#[test]
fn the_plan_resolves_defaults_sizes_and_memory_before_anything_runs() {
    use ldm_runtime::Task;
    let bundle = Bundle::load(&shipped_bundle()).unwrap();
    let mut pipeline = Pipeline::new(bundle, Backend::Tract, 1).unwrap();
    let plan = pipeline
        .plan(&Generate::new(vec![PROMPT.into(); 2]).dimensions(64, 96))
        .unwrap();
    let m = &pipeline.bundle().manifest;
    assert_eq!((plan.width, plan.height), (64, 96));
    assert_eq!((plan.latent_width, plan.latent_height), (16, 24));
    assert_eq!(plan.sampling.latent_shape, [m.latent_channels, 24, 16]);
    assert_eq!(plan.sampling.steps, m.defaults.steps);
    assert_eq!(plan.sampling.sampler.name(), m.defaults.sampler);
    assert!(plan.sampling.guided && plan.task == Task::Generate);
    assert!(plan.memory.weights > 10_000_000 && plan.memory.activations > 0);

    // An input image sets the size when none is asked; each side is checked on its own.
    let image = Image {
        width: 48,
        height: 80,
        rgb: vec![255; 48 * 80 * 3],
    };
    let plan = pipeline
        .plan(&Generate::new(vec![PROMPT.into()]).init_image(image, 0.5))
        .unwrap();
    assert_eq!((plan.width, plan.height), (48, 80));
    assert!(matches!(plan.task, Task::ImageToImage { first_step, .. } if first_step > 0));
    let refused =
        |pipeline: &Pipeline, request: Generate| pipeline.plan(&request).unwrap_err().to_string();
    let one = || Generate::new(vec![PROMPT.into()]);
    assert!(refused(&pipeline, one().dimensions(64, 70))
        .contains("image height 70 is not a multiple of 16"));
    assert!(refused(&pipeline, one().dimensions(0, 64)).contains("image width 0"));
    // The budget is checked against the estimate, not a fixed size cap.
    let big = one().size(512);
    assert!(pipeline.plan(&big).is_ok());
    pipeline.set_memory_budget(300_000_000);
    assert!(refused(&pipeline, big).contains("above the memory budget of 300 MB"));
}

#[test]
fn non_square_images_work_for_every_task_on_both_engines() {
    let request = Generate::new(vec![PROMPT.into()])
        .dimensions(64, 96)
        .steps(3)
        .seed(4);
    let tract = generate(Backend::Tract, &request).unwrap();
    assert_eq!((tract[0].width, tract[0].height), (64, 96));
    #[cfg(feature = "ort")]
    {
        let ort = generate(Backend::OrtCpu, &request).unwrap();
        let worst = tract[0]
            .rgb
            .iter()
            .zip(&ort[0].rgb)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(
            worst <= 2,
            "tract and ONNX Runtime differ by {worst} of 255"
        );
    }
    // Image-to-image and inpainting take a non-square input of the same size.
    let wide = Image {
        width: 96,
        height: 64,
        rgb: vec![255; 96 * 64 * 3],
    };
    let mut mask = wide.clone();
    mask.rgb[..48 * 64 * 3].fill(0);
    let edited = generate(
        Backend::Tract,
        &Generate::new(vec![PROMPT.into()])
            .steps(3)
            .init_image(wide.clone(), 1.0)
            .mask(mask),
    )
    .unwrap();
    assert_eq!((edited[0].width, edited[0].height), (96, 64));
    let err = generate(
        Backend::Tract,
        &Generate::new(vec![PROMPT.into()])
            .dimensions(64, 96)
            .init_image(wide, 0.5),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("the input image is 96x64; this request needs 64x96"),
        "{err}"
    );
}
