//! `ldm import` of tiny random Stable Diffusion pipelines that diffusers and transformers
//! themselves wrote (tests/reference/tiny_sd.py, nothing downloaded): every graph of the
//! bundle, on tract and on ONNX Runtime, gives what diffusers / transformers compute on the
//! same inputs within 1e-4, the imported tokenizer gives transformers' CLIP ids exactly, and
//! a few steps of text-to-image from the same initial noise give diffusers' image.
#![cfg(feature = "train")]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{ldm, output};
use ldm_core::manifest::GraphRole;
use ldm_core::{GuidedSampling, SamplerKind, SamplingSetup};
use ldm_runtime::{Backend, Bundle, Generate, Image, Pipeline, Tensor};

/// Runs `tests/reference/<script>` on the project's Python (offline), failing with its
/// stderr.
fn run_reference(script: &str, args: &[&std::ffi::OsStr]) {
    let python = std::env::var("LDM_PYTHON").expect("LDM_PYTHON (set in .cargo/config.toml)");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/reference")
        .join(script);
    let run = std::process::Command::new(python)
        .arg(path)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// The reference pipeline of `variant` (sd1, sd2) written into `dir`.
fn reference(dir: &Path, variant: &str) -> PathBuf {
    let out = dir.join(variant);
    run_reference(
        "tiny_sd.py",
        &[out.as_os_str(), "--variant".as_ref(), variant.as_ref()],
    );
    out
}

/// Every tensor of a safetensors file as f32 values (ids and counters too).
fn reference_tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    ldm_import::files::read_tensors(path)
        .unwrap()
        .into_iter()
        .map(|(name, t)| {
            let values = t
                .to_f32()
                .unwrap_or_else(|| panic!("{name}: {:?}", t.dtype));
            (name, (t.shape, values))
        })
        .collect()
}

fn backends() -> Vec<Backend> {
    vec![Backend::Tract, Backend::OrtCpu]
}

/// Runs `role` of `bundle` on `inputs` and compares its one output with `expected`.
fn compare(
    bundle: &Bundle,
    role: GraphRole,
    inputs: &[(&str, Tensor)],
    expected: &(Vec<usize>, Vec<f32>),
    what: &str,
) {
    for backend in backends() {
        let mut session = bundle.session(role, backend, 1).unwrap();
        let named: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
        let out = session.run(&named).unwrap();
        assert_eq!(
            out[0].shape(),
            expected.0.as_slice(),
            "{what} on {backend:?}"
        );
        let got = out[0].as_f32().unwrap();
        let scale = expected.1.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(&expected.1)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 1e-4 * scale,
            "{what} on {}: max difference {worst:.3e} (largest value {scale:.3})",
            backend.name()
        );
    }
}

fn f32_input(r: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, name: &str) -> Tensor {
    let (shape, values) = &r[name];
    Tensor::f32(shape, values.clone()).unwrap()
}

/// Imports `source` and checks every graph against `reference` (a reference.safetensors) and
/// the tokenizer against the `tokens.json` in `tokens_dir`; returns the release folder.
fn check_import(
    reference: &Path,
    tokens_dir: &Path,
    source: &Path,
    extra: &[&str],
    out: &Path,
) -> PathBuf {
    let release = out.join("release");
    let bundle_dir = out.join("bundle");
    let (ok, text) = output(
        ldm()
            .arg("import")
            .arg(source)
            .args(["--out", release.to_str().unwrap()])
            .args(["--bundle", bundle_dir.to_str().unwrap()])
            .args(extra),
    );
    assert!(ok, "{text}");
    let bundle = Bundle::load(&bundle_dir).unwrap();
    let scheduler: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tokens_dir.join("pipeline/scheduler/scheduler_config.json")).unwrap(),
    )
    .unwrap();
    let ldm_core::manifest::Schedule::Linear(schedule) = &bundle.manifest.schedule;
    let v = scheduler["prediction_type"] == "v_prediction";
    assert_eq!(
        schedule.prediction == ldm_core::Prediction::V,
        v,
        "prediction type"
    );
    let r = reference_tensors(reference);

    let (shape, ids) = &r["text_ids"];
    let ids = Tensor::i64(shape, ids.iter().map(|&v| v as i64).collect()).unwrap();
    compare(
        &bundle,
        GraphRole::TextEncoder,
        &[("input_ids", ids)],
        &r["text_context"],
        "text encoder",
    );
    let mut unet_inputs = vec![
        ("sample", f32_input(&r, "unet_sample")),
        ("timestep", f32_input(&r, "unet_timestep")),
        ("context", f32_input(&r, "unet_context")),
    ];
    if r.contains_key("unet_concat") {
        unet_inputs.push(("concat", f32_input(&r, "unet_concat")));
    }
    compare(
        &bundle,
        GraphRole::Unet,
        &unet_inputs,
        &r["unet_eps"],
        "UNet",
    );
    compare(
        &bundle,
        GraphRole::Encoder,
        &[("image", f32_input(&r, "vae_image"))],
        &r["vae_moments"],
        "encoder",
    );
    compare(
        &bundle,
        GraphRole::Decoder,
        &[("latent", f32_input(&r, "vae_latent"))],
        &r["vae_decoded"],
        "decoder",
    );

    let tokens: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tokens_dir.join("tokens.json")).unwrap()).unwrap();
    let tokenizer = bundle.tokenizer.as_ref().unwrap();
    let captions = tokens["captions"].as_array().unwrap();
    for (caption, ids) in captions.iter().zip(tokens["ids"].as_array().unwrap()) {
        let caption = caption.as_str().unwrap();
        let want: Vec<i64> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let got = tokenizer.encode(caption, 77).unwrap().ids;
        assert_eq!(got, want, "tokens of {caption:?}");
    }
    assert!(captions.len() >= 200);
    release
}

#[test]
fn imports_diffusers_pipelines_that_match_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    for variant in ["sd1", "sd2"] {
        let reference_dir = reference(dir.path(), variant);
        let expected = reference_dir.join("reference.safetensors");
        // The pipeline's own tokenizer.json, and one built from vocab.json + merges.txt.
        let out = dir.path().join(format!("{variant}-folder"));
        check_import(
            &expected,
            &reference_dir,
            &reference_dir.join("pipeline"),
            &[],
            &out,
        );
        check_generation(
            &reference_dir,
            &out.join("bundle"),
            &out,
            variant == "sd2",
            None,
        );
        let vocabulary = vocabulary(&reference_dir);
        check_import(
            &expected,
            &reference_dir,
            &reference_dir.join("pipeline"),
            &["--tokenizer", vocabulary.to_str().unwrap()],
            &dir.path().join(format!("{variant}-vocabulary")),
        );
    }
}

/// Writes one f32 tensor as a safetensors file.
fn write_tensor(path: &Path, name: &str, shape: &[usize], values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &bytes)
            .unwrap();
    safetensors::tensor::serialize_to_file(vec![(name.to_string(), view)], &None, path).unwrap();
}

/// Four guided steps of each sampler on tract, from the driver's own initial noise, against
/// the diffusers pipeline (tests/reference/generate.py) from the same noise: the final latents
/// within 1e-4 of their largest value, the decoded images as floats in [0, 1], before
/// rounding, within 1e-3.
///
/// PLMS is compared on eps-prediction models only: for v-prediction diffusers' PNDM combines
/// the raw v outputs of several steps and turns the mix into eps at the current sample, where
/// the authors' `plms.py` (and this project) turns each output into eps at its own sample and
/// combines those.
///
/// With `inpainting` (an image and a mask, written to PNG files for diffusers) the request is
/// an inpainting one and diffusers runs its inpainting pipeline.
fn check_generation(
    reference_dir: &Path,
    bundle_dir: &Path,
    out: &Path,
    v_prediction: bool,
    inpainting: Option<(&Image, &Image)>,
) {
    let prompt = "a red apple on the top left";
    let samplers: &[&str] = if v_prediction {
        &["ddim", "euler"]
    } else {
        &["ddim", "euler", "plms"]
    };
    let request = |sampler: &str| {
        let mut request = Generate::new(vec![prompt.into()])
            .sampler(sampler.parse().unwrap())
            .steps(4)
            .guidance(3.0)
            .eta(0.0)
            .seed(5);
        if let Some((image, mask)) = inpainting {
            request.init_image = Some(image.clone());
            request.mask = Some(mask.clone());
        }
        request
    };
    let mut image_args = Vec::new();
    if let Some((image, mask)) = inpainting {
        for (name, picture) in [("image", image), ("mask", mask)] {
            let path = out.join(format!("{name}.png"));
            let (w, h) = (picture.width as u32, picture.height as u32);
            image::RgbImage::from_raw(w, h, picture.rgb.clone())
                .unwrap()
                .save(&path)
                .unwrap();
            image_args.push(format!("--{name}"));
            image_args.push(path.to_str().unwrap().to_string());
        }
    }
    for &sampler in samplers {
        // The diffusers side, from the noise the driver draws first (DDIM takes it unscaled).
        let pipeline = Pipeline::new(Bundle::load(bundle_dir).unwrap(), Backend::Tract, 1).unwrap();
        let plan = pipeline.plan(&request(sampler)).unwrap();
        let manifest = &pipeline.bundle().manifest;
        let schedule = manifest.schedule.noise_schedule().unwrap();
        let scale = manifest.latent_scale_factor as f32;
        let unscaled = SamplingSetup {
            sampler: SamplerKind::Ddim { eta: 0.0 },
            ..plan.sampling.clone()
        };
        let noise = GuidedSampling::new(&schedule, unscaled, None)
            .latents()
            .to_vec();
        let [c, h, w] = plan.sampling.latent_shape;
        let noise_file = out.join(format!("noise-{sampler}.safetensors"));
        write_tensor(&noise_file, "noise", &[1, c, h, w], &noise);
        let theirs_file = out.join(format!("diffusers-{sampler}.safetensors"));
        let pipeline_dir = reference_dir.join("pipeline");
        let args: Vec<&std::ffi::OsStr> = [
            pipeline_dir.as_os_str(),
            noise_file.as_os_str(),
            theirs_file.as_os_str(),
        ]
        .into_iter()
        .chain(
            [
                "--sampler",
                sampler,
                "--steps",
                "4",
                "--guidance",
                "3",
                "--prompt",
                prompt,
            ]
            .map(|a| a.as_ref()),
        )
        .chain(image_args.iter().map(|a| a.as_ref()))
        .collect();
        run_reference("generate.py", &args);
        let theirs = reference_tensors(&theirs_file);
        let (latents, image) = (&theirs["latents"], &theirs["image"]);
        let largest = latents.1.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let worst = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max)
        };

        for backend in backends() {
            let mut pipeline =
                Pipeline::new(Bundle::load(bundle_dir).unwrap(), backend, 1).unwrap();
            let mut last = Vec::new();
            pipeline
                .generate(&request(sampler), &mut |p| {
                    last = p.latents.to_vec();
                    true
                })
                .unwrap();
            let what = format!("{sampler} on {}", backend.name());
            let off = worst(&last, &latents.1);
            assert!(
                off <= 1e-4 * largest,
                "{what}: latents differ by up to {off:.2e} (largest {largest:.2})"
            );
            // The decoded image as floats, before the pipeline rounds it to bytes.
            let latent: Vec<f32> = last.iter().map(|v| v / scale).collect();
            let latent = Tensor::f32(&[1, c, h, w], latent).unwrap();
            let mut decoder = pipeline
                .bundle()
                .session(GraphRole::Decoder, backend, 1)
                .unwrap();
            let decoded = decoder.run(&[("latent", &latent)]).unwrap();
            assert_eq!(image.0, decoded[0].shape(), "{what}");
            let ours: Vec<f32> = decoded[0]
                .as_f32()
                .unwrap()
                .iter()
                .map(|v| ((v + 1.0) / 2.0).clamp(0.0, 1.0))
                .collect();
            let off = worst(&ours, &image.1);
            assert!(off <= 1e-3, "{what}: images differ by up to {off:.2e}");
        }
    }
}

/// The float values of every tensor of a safetensors file, by name.
fn values(path: &Path) -> BTreeMap<String, Vec<f32>> {
    reference_tensors(path)
        .into_iter()
        .map(|(k, (_, v))| (k, v))
        .collect()
}

/// Tensors as (name, shape, values).
type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// `source` with `edit` applied to its tensors, as a new safetensors file.
fn edited(source: &Path, out: &Path, edit: impl Fn(&mut Tensors)) {
    let mut tensors: Tensors = reference_tensors(source)
        .into_iter()
        .map(|(k, (shape, v))| (k, shape, v))
        .collect();
    edit(&mut tensors);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(k, shape, v)| (k, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, shape, b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                    .unwrap();
            (k.clone(), view)
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, &None, out).unwrap();
}

/// The names and shapes of `release` with fresh values as a single file in the reference
/// layout (text encoder in `layout`: clip or open_clip), read back by diffusers' single-file
/// loader into `out` (tests/reference/single_file.py).
fn single_file(release: &Path, reference_dir: &Path, out: &Path, layout: &str) -> PathBuf {
    let (pipeline, expected) = (
        reference_dir.join("pipeline"),
        reference_dir.join("reference.safetensors"),
    );
    run_reference(
        "single_file.py",
        &[
            release.as_os_str(),
            pipeline.as_os_str(),
            expected.as_os_str(),
            out.as_os_str(),
            layout.as_ref(),
        ],
    );
    out.to_path_buf()
}

/// The reference pipeline of `variant` imported from its folder (checked on the way), and
/// its release's names with fresh values as a single file with the text encoder in `layout`:
/// (reference folder, release, single-file folder, its release's model.toml, tokenizer files).
fn folder_and_single_file(
    dir: &Path,
    variant: &str,
    layout: &str,
) -> (PathBuf, PathBuf, PathBuf, PathBuf, PathBuf) {
    let reference_dir = reference(dir, variant);
    let release = check_import(
        &reference_dir.join("reference.safetensors"),
        &reference_dir,
        &reference_dir.join("pipeline"),
        &[],
        &dir.join("folder"),
    );
    let single = single_file(&release, &reference_dir, &dir.join("single"), layout);
    let config = release.join("model.toml");
    (
        reference_dir.clone(),
        release,
        single,
        config,
        vocabulary(&reference_dir),
    )
}

/// The reference's vocab.json and merges.txt, with the pipeline's tokenizer_config.json (its
/// pad token) beside them.
fn vocabulary(reference_dir: &Path) -> PathBuf {
    let folder = reference_dir.join("tokenizer");
    std::fs::copy(
        reference_dir.join("pipeline/tokenizer/tokenizer_config.json"),
        folder.join("tokenizer_config.json"),
    )
    .unwrap();
    folder
}

/// A 16 x 16 test picture, and a mask whose box (white: to fill) does not fall on the
/// latent grid, so the mask's sampling at the latent's size matters.
fn inpainting_inputs() -> (Image, Image) {
    let (w, h) = (16, 16);
    let picture = (0..w * h * 3)
        .map(|i| ((i * 37 + i / 3 * 11) % 256) as u8)
        .collect();
    let mask = (0..w * h * 3)
        .map(|i| {
            let (x, y) = ((i / 3) % w, (i / 3) / w);
            if (5..13).contains(&x) && (3..11).contains(&y) {
                255
            } else {
                0
            }
        })
        .collect();
    let image = |rgb| Image {
        width: w,
        height: h,
        rgb,
    };
    (image(picture), image(mask))
}

#[test]
fn imports_inpainting_models_that_match_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let (reference_dir, release, single, config, tokenizer) =
        folder_and_single_file(dir.path(), "inpaint", "clip");
    let bundle_dir = dir.path().join("folder/bundle");
    let manifest = &Bundle::load(&bundle_dir).unwrap().manifest;
    assert_eq!(
        manifest.conditioning.concat().map(|c| (c.task, c.channels)),
        Some((ldm_core::manifest::ConcatKind::MaskFirstInpainting, 5))
    );
    let (image, mask) = inpainting_inputs();
    check_generation(
        &reference_dir,
        &bundle_dir,
        dir.path(),
        false,
        Some((&image, &mask)),
    );
    check_import(
        &single.join("reference.safetensors"),
        &reference_dir,
        &single.join("model.safetensors"),
        &[
            "--no-ema",
            "--config",
            config.to_str().unwrap(),
            "--tokenizer",
            tokenizer.to_str().unwrap(),
        ],
        &dir.path().join("single-file"),
    );
    // An inpainting model runs but does not train: the refusal names why.
    let shapes = common::shapes_data(dir.path(), 4, 16);
    let (ok, text) = output(
        ldm()
            .args(["train", "diffusion", "--config", config.to_str().unwrap()])
            .args(["--data", shapes.to_str().unwrap()])
            .args(["--out", dir.path().join("run").to_str().unwrap()])
            .args(["--init-from", release.to_str().unwrap()])
            .args(["--autoencoder", release.to_str().unwrap()])
            .args(["--steps", "2", "--batch-size", "2", "--quiet"]),
    );
    assert!(!ok && text.contains("mask_first_inpainting"), "{text}");
}

#[test]
fn imports_stable_diffusion_2_single_files_with_an_open_clip_text_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let (reference_dir, _, single, config, tokenizer) =
        folder_and_single_file(dir.path(), "sd2", "open_clip");
    check_import(
        &single.join("reference.safetensors"),
        &reference_dir,
        &single.join("model.safetensors"),
        &[
            "--no-ema",
            "--config",
            config.to_str().unwrap(),
            "--tokenizer",
            tokenizer.to_str().unwrap(),
        ],
        &dir.path().join("open-clip"),
    );
}

#[test]
fn imports_single_files_as_diffusers_reads_them_and_fine_tunes_the_import() {
    let dir = tempfile::tempdir().unwrap();
    // The same names and shapes with fresh values, read back by diffusers' single-file loader.
    let (reference_dir, release, single, config, tokenizer) =
        folder_and_single_file(dir.path(), "sd1", "clip");
    let args = |ema: bool| {
        let mut a = vec![
            "--config",
            config.to_str().unwrap(),
            "--tokenizer",
            tokenizer.to_str().unwrap(),
        ];
        if !ema {
            a.push("--no-ema"); // diffusers' loader takes the trained weights
        }
        a
    };
    for file in ["model.safetensors", "model.ckpt"] {
        check_import(
            &single.join("reference.safetensors"),
            &reference_dir,
            &single.join(file),
            &args(false),
            &dir.path().join(file),
        );
    }
    // By default the EMA copy is the UNet.
    let ema_release = dir.path().join("ema");
    let (ok, text) = output(
        ldm()
            .arg("import")
            .arg(single.join("model.ckpt"))
            .args(["--out", ema_release.to_str().unwrap()])
            .args(args(true)),
    );
    assert!(ok && text.contains("EMA UNet"), "{text}");
    assert_eq!(
        values(&ema_release.join("unet.safetensors")),
        values(&single.join("ema_unet.safetensors"))
    );

    // A separate first-stage checkpoint replaces the pipeline's own.
    let with_vae = dir.path().join("with-vae");
    let (ok, text) = output(
        ldm()
            .arg("import")
            .arg(reference_dir.join("pipeline"))
            .args(["--out", with_vae.join("release").to_str().unwrap()])
            .args(["--bundle", with_vae.join("bundle").to_str().unwrap()])
            .args(["--vae", single.join("vae.ckpt").to_str().unwrap()]),
    );
    assert!(ok && text.contains("vae.ckpt"), "{text}");
    let bundle = Bundle::load(&with_vae.join("bundle")).unwrap();
    let r = reference_tensors(&single.join("vae_reference.safetensors"));
    compare(
        &bundle,
        GraphRole::Encoder,
        &[("image", f32_input(&r, "vae_image"))],
        &r["vae_moments"],
        "replaced encoder",
    );
    compare(
        &bundle,
        GraphRole::Decoder,
        &[("latent", f32_input(&r, "vae_latent"))],
        &r["vae_decoded"],
        "replaced decoder",
    );

    // The imported release fine-tunes (keeping its latent scale) and exports again.
    let shapes = common::shapes_data(dir.path(), 12, 16);
    let run = dir.path().join("fine-tuned");
    let (ok, text) = output(
        ldm()
            .args(["train", "diffusion", "--config", config.to_str().unwrap()])
            .args([
                "--data",
                shapes.to_str().unwrap(),
                "--out",
                run.to_str().unwrap(),
            ])
            .args([
                "--init-from",
                release.to_str().unwrap(),
                "--autoencoder",
                release.to_str().unwrap(),
            ])
            .args([
                "--steps",
                "4",
                "--batch-size",
                "2",
                "--checkpoint-every",
                "2",
                "--sample-every",
                "100",
                "--quiet",
            ]),
    );
    assert!(ok && text.contains("latent scale factor 0.18215"), "{text}");
    // The UNet learns; the imported CLIP text encoder stays as it was.
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let checkpoint = run.join("checkpoints").join(latest.trim());
    let as_imported = |file: &str| values(&release.join(file));
    let trained = |file: &str| values(&checkpoint.join(file));
    assert_eq!(
        trained("text_encoder.safetensors"),
        as_imported("text_encoder.safetensors")
    );
    assert_ne!(trained("unet.safetensors"), as_imported("unet.safetensors"));
    let bundle = dir.path().join("fine-tuned-bundle");
    let (ok, text) = output(ldm().args([
        "export",
        "--run",
        run.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
    ]));
    assert!(ok, "{text}");
    let image = dir.path().join("fine-tuned.png");
    let (ok, text) = output(
        ldm()
            .args([
                "generate",
                "a red circle",
                "--bundle",
                bundle.to_str().unwrap(),
            ])
            .args(["--steps", "2", "--out", image.to_str().unwrap()]),
    );
    assert!(ok && image.is_file(), "{text}");

    // Missing, unexpected and wrongly shaped tensors are named.
    let source = single.join("model.safetensors");
    type Edit = Box<dyn Fn(&mut Tensors)>;
    let cases: [(&str, Edit, &str); 3] = [
        (
            "missing",
            Box::new(|t| t.retain(|(k, _, _)| k != "model.diffusion_model.out.2.bias")),
            "missing: out.2.bias",
        ),
        (
            "extra",
            Box::new(|t| {
                t.push((
                    "first_stage_model.encoder.extra.weight".into(),
                    vec![2],
                    vec![0.0; 2],
                ))
            }),
            "unexpected: encoder.extra.weight",
        ),
        (
            "shape",
            Box::new(|t| {
                let e = t
                    .iter_mut()
                    .find(|(k, _, _)| k == "model.diffusion_model.time_embed.0.bias")
                    .unwrap();
                e.1 = vec![e.2.len() / 2, 2];
            }),
            "time_embed.0.bias is F32",
        ),
    ];
    for (name, edit, message) in cases {
        let file = dir.path().join(format!("{name}.safetensors"));
        edited(&source, &file, edit);
        let (ok, text) = output(
            ldm()
                .arg("import")
                .arg(&file)
                .args(["--out", dir.path().join(name).to_str().unwrap()])
                .args(args(false)),
        );
        assert!(!ok && text.contains(message), "{name}: {text}");
        assert!(
            !dir.path().join(name).exists(),
            "{name}: nothing is written"
        );
    }
}
