//! What the Stable Diffusion import tests share: the reference pipelines (tests/reference/
//! tiny_sd.py, single_file.py, generate.py) and the comparisons of imported bundles with them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::{ldm, output};
use crate::reference_outputs::{
    check_generated, check_tokens, compare, driver_noise, f32_input, reference_tensors,
    run_reference,
};
use ldm_core::manifest::GraphRole;
use ldm_runtime::{Bundle, Generate, Image, Tensor};

/// The reference pipeline of `variant` (sd1, sd2) written into `dir`.
pub fn reference(dir: &Path, variant: &str) -> PathBuf {
    let out = dir.join(variant);
    run_reference(
        "tiny_sd.py",
        &[out.as_os_str(), "--variant".as_ref(), variant.as_ref()],
    );
    out
}

/// Imports `source` and checks every graph against `reference` (a reference.safetensors) and
/// the tokenizer against the `tokens.json` in `tokens_dir`; returns the release folder.
pub fn check_import(
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

    assert!(check_tokens(&bundle, &tokens_dir.join("tokens.json"), 77) >= 200);
    release
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
pub fn check_generation(
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
        let noise_file = driver_noise(bundle_dir, &request(sampler), out, sampler);
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
        check_generated(bundle_dir, &request(sampler), &theirs_file, sampler);
    }
}

/// The float values of every tensor of a safetensors file, by name.
pub fn values(path: &Path) -> BTreeMap<String, Vec<f32>> {
    reference_tensors(path)
        .into_iter()
        .map(|(k, (_, v))| (k, v))
        .collect()
}

/// Tensors as (name, shape, values).
pub type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// `source` with `edit` applied to its tensors, as a new safetensors file.
pub fn edited(source: &Path, out: &Path, edit: impl Fn(&mut Tensors)) {
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
pub fn folder_and_single_file(
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
pub fn vocabulary(reference_dir: &Path) -> PathBuf {
    let folder = reference_dir.join("tokenizer");
    std::fs::copy(
        reference_dir.join("pipeline/tokenizer/tokenizer_config.json"),
        folder.join("tokenizer_config.json"),
    )
    .unwrap();
    folder
}

/// The arguments a single file of the reference pipeline imports with: its release's
/// model.toml and tokenizer files; without `ema`, the trained UNet (what diffusers' loader
/// takes) instead of the EMA copy.
pub fn single_file_args<'a>(config: &'a Path, tokenizer: &'a Path, ema: bool) -> Vec<&'a str> {
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
    ];
    if !ema {
        args.push("--no-ema");
    }
    args
}
