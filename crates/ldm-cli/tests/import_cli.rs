//! `ldm import` of tiny random Stable Diffusion pipelines that diffusers and transformers
//! themselves wrote (tests/reference/tiny_sd.py, nothing downloaded): every graph of the
//! bundle, on tract and on ONNX Runtime, gives what diffusers / transformers compute on the
//! same inputs within 1e-4, and the imported tokenizer gives transformers' CLIP ids exactly.
#![cfg(feature = "train")]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{ldm, output};
use ldm_core::manifest::GraphRole;
use ldm_runtime::{Backend, Bundle, Tensor};

fn python() -> String {
    std::env::var("LDM_PYTHON").expect("LDM_PYTHON (set in .cargo/config.toml)")
}

/// The reference pipeline of `variant` (sd1, sd2) written into `dir`.
fn reference(dir: &Path, variant: &str) -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/reference/tiny_sd.py");
    let out = dir.join(variant);
    let status = std::process::Command::new(python())
        .args([script, out.to_str().unwrap(), "--variant", variant])
        .env("HF_HUB_OFFLINE", "1")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "tiny_sd.py failed for {variant}");
    out
}

/// The float tensors (and int64 ids, as f32) of the reference outputs.
fn reference_tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::I64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
                other => panic!("{name}: {other:?}"),
            };
            (name, (view.shape().to_vec(), values))
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
        assert_eq!(out[0].shape(), expected.0.as_slice(), "{what} on {backend:?}");
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

/// Imports `source` and checks every graph and the tokenizer against the reference.
fn check_import(reference_dir: &Path, source: &Path, extra: &[&str], out: &Path) {
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
    let r = reference_tensors(&reference_dir.join("reference.safetensors"));

    let (shape, ids) = &r["text_ids"];
    let ids = Tensor::i64(shape, ids.iter().map(|&v| v as i64).collect()).unwrap();
    compare(&bundle, GraphRole::TextEncoder, &[("input_ids", ids)], &r["text_context"], "text encoder");
    compare(
        &bundle,
        GraphRole::Unet,
        &[
            ("sample", f32_input(&r, "unet_sample")),
            ("timestep", f32_input(&r, "unet_timestep")),
            ("context", f32_input(&r, "unet_context")),
        ],
        &r["unet_eps"],
        "UNet",
    );
    compare(&bundle, GraphRole::Encoder, &[("image", f32_input(&r, "vae_image"))], &r["vae_moments"], "encoder");
    compare(&bundle, GraphRole::Decoder, &[("latent", f32_input(&r, "vae_latent"))], &r["vae_decoded"], "decoder");

    let tokens: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reference_dir.join("tokens.json")).unwrap()).unwrap();
    let tokenizer = bundle.tokenizer.as_ref().unwrap();
    let captions = tokens["captions"].as_array().unwrap();
    for (caption, ids) in captions.iter().zip(tokens["ids"].as_array().unwrap()) {
        let caption = caption.as_str().unwrap();
        let want: Vec<i64> = ids.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let got = tokenizer.encode(caption, 77).unwrap().ids;
        assert_eq!(got, want, "tokens of {caption:?}");
    }
    assert!(captions.len() >= 200);
}

#[test]
fn imports_diffusers_pipelines_that_match_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    for variant in ["sd1", "sd2"] {
        let reference_dir = reference(dir.path(), variant);
        // The pipeline's own tokenizer.json, and one built from vocab.json + merges.txt.
        check_import(
            &reference_dir,
            &reference_dir.join("pipeline"),
            &[],
            &dir.path().join(format!("{variant}-folder")),
        );
        let vocabulary = reference_dir.join("tokenizer");
        let special = reference_dir.join("pipeline/tokenizer/tokenizer_config.json");
        std::fs::copy(special, vocabulary.join("tokenizer_config.json")).unwrap();
        check_import(
            &reference_dir,
            &reference_dir.join("pipeline"),
            &["--tokenizer", vocabulary.to_str().unwrap()],
            &dir.path().join(format!("{variant}-vocabulary")),
        );
    }
}
