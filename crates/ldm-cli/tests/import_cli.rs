//! `ldm import` of tiny random Stable Diffusion pipelines that diffusers and transformers
//! themselves wrote (tests/reference/tiny_sd.py, nothing downloaded): every graph of the
//! bundle, on tract and on ONNX Runtime, gives what diffusers / transformers compute on the
//! same inputs within 1e-4, the imported tokenizer gives transformers' CLIP ids exactly, and
//! a few steps of text-to-image from the same initial noise give diffusers' image.
#![cfg(feature = "train")]

mod common;
mod reference_outputs;
mod sd_reference;

use common::{ldm, output};
use ldm_core::manifest::GraphRole;
use ldm_runtime::{Bundle, Image};
use reference_outputs::{compare, f32_input, reference_tensors};
use sd_reference::{
    check_generation, check_import, edited, folder_and_single_file, reference, single_file_args,
    values, vocabulary, Tensors,
};

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
        &single_file_args(&config, &tokenizer, false),
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
        &single_file_args(&config, &tokenizer, false),
        &dir.path().join("open-clip"),
    );
}

#[test]
fn imports_single_files_as_diffusers_reads_them_and_fine_tunes_the_import() {
    let dir = tempfile::tempdir().unwrap();
    // The same names and shapes with fresh values, read back by diffusers' single-file loader.
    let (reference_dir, release, single, config, tokenizer) =
        folder_and_single_file(dir.path(), "sd1", "clip");
    let args = |ema: bool| single_file_args(&config, &tokenizer, ema);
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
