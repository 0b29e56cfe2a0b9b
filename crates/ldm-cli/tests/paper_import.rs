//! `ldm import CHECKPOINT --config REFERENCE.yaml` of tiny random models of the paper's kinds,
//! in the reference layout inside Lightning checkpoints (tests/reference/paper_ldm.py): an
//! unconditional KL model, a class-conditional VQ model, super-resolution and inpainting VQ
//! models and a BERT text-to-image model. Every graph of each bundle, on tract and on ONNX
//! Runtime, gives what diffusers computes with its own conversion of the same checkpoint
//! within 1e-4.
#![cfg(feature = "train")]

mod common;
mod reference_outputs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{ldm, output};
use ldm_core::manifest::GraphRole;
use ldm_runtime::{Bundle, Tensor};
use ldm_runtime::{Generate, Image};
use reference_outputs::{
    check_generated, check_tokens, compare, driver_noise, f32_input, reference_tensors,
    run_reference, write_tensor,
};

/// The reference outputs by name (tests/reference/paper_ldm.py's reference.safetensors).
type Reference = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// A tiny LatentDiffusion configuration in the reference's YAML.
fn config(extra: &str, unet: &str, first_stage: &str, cond_stage: &str) -> String {
    format!(
        "model:
  base_learning_rate: 2.0e-06
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.0015
    linear_end: 0.0195
    timesteps: 1000
    first_stage_key: image
    monitor: val/loss_simple_ema
{extra}
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        model_channels: 32
        num_res_blocks: 1
        channel_mult: [1, 2]
{unet}
    first_stage_config:
{first_stage}
        lossconfig: {{target: torch.nn.Identity}}
    cond_stage_config: {cond_stage}
"
    )
}

const KL: &str = "      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig: {double_z: true, z_channels: 4, resolution: 16, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}";

const VQ: &str = "      target: ldm.models.autoencoder.VQModelInterface
      params:
        embed_dim: 3
        n_embed: 64
        ddconfig: {double_z: false, z_channels: 3, resolution: 16, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [8], dropout: 0.0}";

fn unconditional() -> String {
    config(
        "    scale_factor: 0.5",
        "        in_channels: 4\n        out_channels: 4\n        attention_resolutions: [2]\n        num_head_channels: 16",
        KL,
        "__is_unconditional__",
    )
}

fn class_conditional() -> String {
    config(
        "    conditioning_key: crossattn\n    cond_stage_trainable: true\n    scale_by_std: true",
        "        in_channels: 3\n        out_channels: 3\n        attention_resolutions: [1, 2]\n        num_heads: 2\n        use_spatial_transformer: true\n        transformer_depth: 1\n        context_dim: 32",
        VQ,
        "\n      target: ldm.modules.encoders.modules.ClassEmbedder\n      params: {n_classes: 10, embed_dim: 32, key: class_label}",
    )
}

fn super_resolution() -> String {
    config(
        "    cond_stage_key: LR_image\n    concat_mode: true\n    cond_stage_trainable: false",
        "        in_channels: 6\n        out_channels: 3\n        attention_resolutions: [2, 4]\n        num_head_channels: 16",
        VQ,
        "\n      target: torch.nn.Identity",
    )
}

fn inpainting() -> String {
    config(
        "    conditioning_key: concat\n    cond_stage_key: masked_image\n    cond_stage_trainable: false",
        "        in_channels: 7\n        out_channels: 3\n        attention_resolutions: [2]\n        num_head_channels: 32",
        VQ,
        "__is_first_stage__",
    )
}

fn text_to_image() -> String {
    config(
        "    conditioning_key: crossattn\n    cond_stage_key: caption\n    scale_factor: 0.18215",
        "        in_channels: 4\n        out_channels: 4\n        attention_resolutions: [1]\n        num_heads: 2\n        use_spatial_transformer: true\n        transformer_depth: 1\n        context_dim: 64\n        legacy: False",
        KL,
        "\n      target: ldm.modules.encoders.modules.BERTEmbedder\n      params: {n_embed: 64, n_layer: 2, vocab_size: 64}",
    )
}

/// Writes `yaml` as `dir/config.yaml`, the names and shapes of the networks it describes (as
/// this project names them) as `dir/params.json`, and the reference checkpoint and outputs
/// into `dir/reference/`.
fn reference(dir: &Path, yaml: &str) -> (PathBuf, PathBuf) {
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, yaml).unwrap();
    let config = ldm_import::reference_config::read(&config_path)
        .unwrap()
        .config;
    let mut params = BTreeMap::new();
    for (role, names) in ldm_import::expected(&config).unwrap() {
        let key = match role {
            GraphRole::Unet => "unet",
            GraphRole::Encoder => "first_stage",
            _ => "conditioner",
        };
        params.insert(key, names);
    }
    let params_path = dir.join("params.json");
    std::fs::write(&params_path, serde_json::to_vec(&params).unwrap()).unwrap();
    let out = dir.join("reference");
    run_reference(
        "paper_ldm.py",
        &[
            config_path.as_os_str(),
            params_path.as_os_str(),
            out.as_os_str(),
        ],
    );
    (config_path, out)
}

/// Imports `reference/model.ckpt` with its YAML as a release and a bundle; returns the bundle.
fn import(dir: &Path, config: &Path, reference: &Path, extra: &[&str]) -> Bundle {
    let bundle_dir = dir.join("bundle");
    let (ok, text) = output(
        ldm()
            .arg("import")
            .arg(reference.join("model.ckpt"))
            .arg("--config")
            .arg(config)
            .arg("--out")
            .arg(dir.join("release"))
            .arg("--bundle")
            .arg(&bundle_dir)
            .args(extra),
    );
    assert!(ok, "{text}");
    assert!(text.contains("EMA UNet"), "the EMA copy by default: {text}");
    Bundle::load(&bundle_dir).unwrap()
}

/// The UNet (with `context` when the model has one) and the first stage against diffusers.
fn compare_unet_and_first_stage(bundle: &Bundle, r: &Reference, context: Option<&str>) {
    let mut inputs = vec![
        ("sample", f32_input(r, "unet_sample")),
        ("timestep", f32_input(r, "unet_timestep")),
    ];
    if let Some(name) = context {
        inputs.push(("context", f32_input(r, name)));
    }
    if r.contains_key("unet_concat") {
        inputs.push(("concat", f32_input(r, "unet_concat")));
    }
    compare(bundle, GraphRole::Unet, &inputs, &r["unet_eps"], "UNet");
    compare(
        bundle,
        GraphRole::Encoder,
        &[("image", f32_input(r, "vae_image"))],
        &r["vae_encoded"],
        "encoder",
    );
    compare(
        bundle,
        GraphRole::Decoder,
        &[("latent", f32_input(r, "vae_latent"))],
        &r["vae_decoded"],
        "decoder",
    );
}

/// Four DDIM steps of `request` against diffusers' pipeline (tests/reference/
/// paper_generate.py with `args`) from the same initial noise.
fn check_sampling(dir: &Path, reference: &Path, request: &Generate, args: &[&str]) {
    let bundle_dir = dir.join("bundle");
    let noise = driver_noise(&bundle_dir, request, dir, "ddim");
    let theirs = dir.join("diffusers.safetensors");
    let pipeline = reference.join("pipeline");
    let mut all = vec![
        pipeline.as_os_str(),
        noise.as_os_str(),
        theirs.as_os_str(),
        "--steps".as_ref(),
        "4".as_ref(),
    ];
    all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
    run_reference("paper_generate.py", &all);
    check_generated(&bundle_dir, request, &theirs, "DDIM");
}

/// `ldm generate` of two steps with `args` on `dir/bundle`: the PNG's size.
fn generate(dir: &Path, args: &[&str]) -> (u32, u32) {
    let out = dir.join("generated.png");
    let (ok, text) = output(
        ldm()
            .args(["generate", "--steps", "2", "--bundle"])
            .arg(dir.join("bundle"))
            .arg("--out")
            .arg(&out)
            .args(args),
    );
    assert!(ok, "{text}");
    image::image_dimensions(&out).unwrap()
}

fn ddim(prompt: &str) -> Generate {
    Generate::new(vec![prompt.into()])
        .sampler("ddim".parse().unwrap())
        .steps(4)
        .eta(0.0)
        .seed(5)
}

fn ids(r: &Reference, name: &str) -> Tensor {
    let (shape, values) = &r[name];
    Tensor::i64(shape, values.iter().map(|&v| v as i64).collect()).unwrap()
}

#[test]
fn imports_an_unconditional_kl_model_that_matches_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let (config, reference) = reference(dir.path(), &unconditional());
    let bundle = import(dir.path(), &config, &reference, &[]);
    assert_eq!(bundle.manifest.latent_scale_factor, 0.5, "the YAML's scale");
    let (ok, text) = output(ldm().args(["model", "info"]).arg(&config));
    assert!(ok, "{text}");
    assert!(
        text.contains("no conditioning") && text.contains("unet"),
        "{text}"
    );
    let r = reference_tensors(&reference.join("reference.safetensors"));
    compare_unet_and_first_stage(&bundle, &r, None);
}

#[test]
fn imports_a_class_conditional_vq_model_that_matches_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let (config, reference) = reference(dir.path(), &class_conditional());
    let bundle = import(dir.path(), &config, &reference, &[]);
    // scale_by_std: the scale the checkpoint's buffer holds.
    assert_eq!(bundle.manifest.latent_scale_factor, 0.75);
    let r = reference_tensors(&reference.join("reference.safetensors"));
    compare(
        &bundle,
        GraphRole::ClassEmbedder,
        &[("class_labels", ids(&r, "class_labels"))],
        &r["class_context"],
        "class embedder",
    );
    compare_unet_and_first_stage(&bundle, &r, Some("class_context"));
    // Trained without the null class: unguided.
    check_sampling(
        dir.path(),
        &reference,
        &ddim("7").guidance(1.0),
        &["--class-label", "7"],
    );
    assert_eq!(generate(dir.path(), &["--class", "7"]), (16, 16));
}

#[test]
fn imports_a_super_resolution_vq_model_that_matches_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let (config, reference) = reference(dir.path(), &super_resolution());
    let bundle = import(dir.path(), &config, &reference, &[]);
    assert_eq!(
        bundle.manifest.latent_scale_factor, 1.0,
        "the reference's default"
    );
    let r = reference_tensors(&reference.join("reference.safetensors"));
    compare_unet_and_first_stage(&bundle, &r, None);
    // A low-resolution image at the latent's size, and as the pipeline takes it: [-1, 1].
    let side = 8;
    let rgb: Vec<u8> = (0..side * side * 3).map(|i| (i * 37 % 256) as u8).collect();
    let values: Vec<f32> = (0..3)
        .flat_map(|c| (0..side * side).map(move |p| (c, p)))
        .map(|(c, p)| rgb[p * 3 + c] as f32 / 127.5 - 1.0)
        .collect();
    let low_res = dir.path().join("low_res.safetensors");
    write_tensor(&low_res, "image", &[1, 3, side, side], &values);
    let mut request = ddim("");
    request.init_image = Some(Image {
        width: side,
        height: side,
        rgb,
    });
    check_sampling(
        dir.path(),
        &reference,
        &request,
        &["--low-res", low_res.to_str().unwrap()],
    );
    // From the command line: the output is f times the input's size.
    let png = dir.path().join("low_res.png");
    let image = request.init_image.as_ref().unwrap();
    image::RgbImage::from_raw(8, 8, image.rgb.clone())
        .unwrap()
        .save(&png)
        .unwrap();
    let size = generate(dir.path(), &["--init-image", png.to_str().unwrap()]);
    assert_eq!(size, (16, 16));
}

#[test]
fn imports_an_inpainting_vq_model_that_matches_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let (config, reference) = reference(dir.path(), &inpainting());
    let bundle = import(dir.path(), &config, &reference, &[]);
    let concat = bundle.manifest.conditioning.concat().unwrap();
    assert_eq!(concat.task, ldm_nn::ConcatKind::Inpainting);
    assert_eq!(concat.channels, 4, "the masked image's latent and the mask");
    let r = reference_tensors(&reference.join("reference.safetensors"));
    compare_unet_and_first_stage(&bundle, &r, None);
}

#[test]
fn imports_a_bert_text_to_image_model_that_matches_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let (config, reference) = reference(dir.path(), &text_to_image());
    let tokenizer = reference.join("tokenizer.json");
    let bundle = import(
        dir.path(),
        &config,
        &reference,
        &["--tokenizer", tokenizer.to_str().unwrap()],
    );
    let r = reference_tensors(&reference.join("reference.safetensors"));
    compare(
        &bundle,
        GraphRole::TextEncoder,
        &[("input_ids", ids(&r, "text_ids"))],
        &r["text_context"],
        "text encoder",
    );
    compare_unet_and_first_stage(&bundle, &r, Some("text_context"));
    check_tokens(&bundle, &reference.join("tokens.json"), 77);
    let prompt = "a red apple on the top left";
    check_sampling(
        dir.path(),
        &reference,
        &ddim(prompt).guidance(3.0),
        &["--prompt", prompt, "--guidance", "3"],
    );
}

#[test]
fn a_lightning_checkpoint_with_a_pickled_callable_is_refused_with_nothing_run() {
    let dir = tempfile::tempdir().unwrap();
    let (config, reference) = reference(dir.path(), &super_resolution());
    let release = dir.path().join("release");
    let (ok, text) = output(
        ldm()
            .arg("import")
            .arg(reference.join("callable.ckpt"))
            .arg("--config")
            .arg(&config)
            .arg("--out")
            .arg(&release),
    );
    assert!(!ok);
    assert!(
        text.contains("posix.system") && text.contains("nothing was run"),
        "{text}"
    );
    assert!(!reference.join("payload-ran").exists());
    assert!(!release.exists());
    // A YAML that does not fit the checkpoint names the first tensor that differs.
    let wrong = dir.path().join("wrong.yaml");
    std::fs::write(
        &wrong,
        super_resolution().replace("model_channels: 32", "model_channels: 64"),
    )
    .unwrap();
    let (ok, text) = output(
        ldm()
            .arg("import")
            .arg(reference.join("model.ckpt"))
            .args(["--config", wrong.to_str().unwrap()])
            .arg("--out")
            .arg(&release),
    );
    assert!(!ok);
    assert!(
        text.contains("of the wrong shape: input_blocks.0.0.bias"),
        "{text}"
    );
    assert!(!release.exists());
}
