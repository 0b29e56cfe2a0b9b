//! The reference implementation's YAML configurations read as this project's: the paper's
//! models as its presets (models/paper-*.toml) describe them, and refusals that name what
//! cannot be expressed. The YAML texts carry the numbers of the reference's
//! configs/latent-diffusion/*.yaml (and the super-resolution model's config.yaml).

use std::path::Path;

use ldm_import::reference_config::{read, ReferenceConfig};
use ldm_nn::{ConcatKind, Conditioning, ModelConfig};

fn yaml(text: &str) -> Result<ReferenceConfig, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).unwrap();
    read(&path).map_err(|e| e.to_string())
}

fn preset(name: &str) -> ModelConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(format!("{name}.toml"));
    ModelConfig::load(&path).unwrap()
}

/// A LatentDiffusion configuration from its parts (YAML blocks indented for `params`).
fn latent_diffusion(extra: &str, unet: &str, first_stage: &str, cond_stage: &str) -> String {
    format!(
        "model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.0015
    linear_end: 0.0195
    timesteps: 1000
    monitor: val/loss_simple_ema
{extra}
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
{unet}
    first_stage_config:
{first_stage}
    cond_stage_config: {cond_stage}
"
    )
}

const VQ_F4: &str = "      target: ldm.models.autoencoder.VQModelInterface
      params:
        embed_dim: 3
        n_embed: 8192
        ckpt_path: models/first_stage_models/vq-f4/model.ckpt
        ddconfig: {double_z: false, z_channels: 3, resolution: 256, in_channels: 3, out_ch: 3, ch: 128, ch_mult: [1, 2, 4], num_res_blocks: 2, attn_resolutions: [], dropout: 0.0}
        lossconfig: {target: torch.nn.Identity}";

const KL_F8: &str = "      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig: {double_z: true, z_channels: 4, resolution: 256, in_channels: 3, out_ch: 3, ch: 128, ch_mult: [1, 2, 4, 4], num_res_blocks: 2, attn_resolutions: [], dropout: 0.0}
        lossconfig: {target: torch.nn.Identity}";

fn celebahq() -> String {
    latent_diffusion(
        "    image_size: 64\n    channels: 3",
        "        image_size: 64
        in_channels: 3
        out_channels: 3
        model_channels: 224
        attention_resolutions: [8, 4, 2]
        num_res_blocks: 2
        channel_mult: [1, 2, 3, 4]
        num_head_channels: 32",
        VQ_F4,
        "__is_unconditional__",
    )
}

fn same_networks(read: &ModelConfig, preset: &ModelConfig) {
    assert_eq!(read.resolution, preset.resolution);
    assert_eq!(read.autoencoder, preset.autoencoder);
    let mut unet = read.unet.clone();
    unet.attention_resolutions.sort();
    assert_eq!(unet, preset.unet);
    assert_eq!(read.conditioning, preset.conditioning);
    let counts =
        |c: &ModelConfig| -> Vec<u64> { c.costs().unwrap().iter().map(|c| c.parameters).collect() };
    assert_eq!(counts(read), counts(preset));
}

#[test]
fn the_unconditional_celebahq_model_is_the_preset() {
    let r = yaml(&celebahq()).unwrap();
    same_networks(&r.config, &preset("paper-celebahq-ldm4"));
    assert_eq!(r.scale_factor, 1.0, "the reference's default");
    assert_eq!(r.config.diffusion.beta_start, 0.0015);
    assert_eq!(r.config.diffusion.beta_end, 0.0195);
    assert!(!r.config.diffusion.set_alpha_to_one);
}

#[test]
fn the_churches_model_keeps_scale_shift_and_resampling_resblocks() {
    let text = latent_diffusion(
        "    scale_factor: 0.22765929\n    image_size: 32\n    channels: 4\n    cond_stage_trainable: false\n    concat_mode: false",
        "        image_size: 32
        in_channels: 4
        out_channels: 4
        model_channels: 192
        attention_resolutions: [1, 2, 4, 8]
        num_res_blocks: 2
        channel_mult: [1, 2, 2, 4, 4]
        num_heads: 8
        use_scale_shift_norm: true
        resblock_updown: true",
        KL_F8,
        "__is_unconditional__",
    );
    let r = yaml(&text).unwrap();
    same_networks(&r.config, &preset("paper-lsun-churches-ldm8"));
    assert_eq!(r.scale_factor, 0.22765929);
}

fn class_conditional(n_classes: &str) -> String {
    latent_diffusion(
        "    cond_stage_trainable: true\n    conditioning_key: crossattn\n    image_size: 64\n    channels: 3",
        "        image_size: 64
        in_channels: 3
        out_channels: 3
        model_channels: 192
        attention_resolutions: [8, 4, 2]
        num_res_blocks: 2
        channel_mult: [1, 2, 3, 5]
        num_heads: 1
        use_spatial_transformer: true
        transformer_depth: 1
        context_dim: 512",
        VQ_F4,
        &format!(
            "\n      target: ldm.modules.encoders.modules.ClassEmbedder\n      params: {{{n_classes}embed_dim: 512, key: class_label}}"
        ),
    )
}

#[test]
fn class_conditional_imagenet_models_are_the_preset_with_or_without_the_null_class() {
    let preset = preset("paper-imagenet-ldm4");
    // cin256-v2 counts the null class among its 1001 rows; the preset's 1000 classes add it.
    for rows in ["n_classes: 1001, ", ""] {
        let r = yaml(&class_conditional(rows)).unwrap();
        same_networks(&r.config, &preset);
    }
}

#[test]
fn the_text_to_image_model_reads_its_bert_transformer() {
    let text = latent_diffusion(
        "    linear_start: 0.00085\n    linear_end: 0.012\n    cond_stage_key: caption\n    image_size: 32\n    channels: 4\n    conditioning_key: crossattn\n    scale_factor: 0.18215",
        "        image_size: 32
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [4, 2, 1]
        num_res_blocks: 2
        channel_mult: [1, 2, 4, 4]
        num_heads: 8
        use_spatial_transformer: true
        transformer_depth: 1
        context_dim: 1280
        use_checkpoint: true
        legacy: False",
        KL_F8,
        "\n      target: ldm.modules.encoders.modules.BERTEmbedder\n      params: {n_embed: 1280, n_layer: 32}",
    )
    // YAML keeps the last of repeated keys: the text model's own schedule.
    .replacen("    linear_start: 0.0015\n    linear_end: 0.0195\n", "", 1);
    let r = yaml(&text).unwrap();
    same_networks(&r.config, &preset("paper-txt2img-ldm8"));
    assert_eq!(r.scale_factor, 0.18215);
    assert_eq!(r.config.diffusion.beta_end, 0.012);
}

fn super_resolution(in_channels: usize) -> String {
    latent_diffusion(
        "    cond_stage_key: LR_image\n    image_size: 64\n    channels: 3\n    concat_mode: true\n    cond_stage_trainable: false",
        &format!(
            "        image_size: 64
        in_channels: {in_channels}
        out_channels: 3
        model_channels: 160
        attention_resolutions: [16, 8]
        num_res_blocks: 2
        channel_mult: [1, 2, 2, 4]
        num_head_channels: 32"
        ),
        VQ_F4,
        "\n      target: torch.nn.Identity",
    )
}

#[test]
fn super_resolution_concatenates_the_low_resolution_image() {
    let r = yaml(&super_resolution(6)).unwrap();
    assert_eq!(
        r.config.conditioning,
        Conditioning::Concat {
            task: ConcatKind::SuperResolution,
            classes: None,
        }
    );
    assert_eq!(r.config.unet_io().in_channels, 6);
    let err = yaml(&super_resolution(7)).unwrap_err();
    assert!(err.contains("this UNet takes 7"), "{err}");
}

#[test]
fn what_cannot_be_expressed_is_refused_by_name() {
    let cases = [
        (
            celebahq().replace(
                "num_head_channels: 32",
                "num_head_channels: 32\n        num_classes: 1000",
            ),
            "unet_config.params.num_classes",
        ),
        (
            celebahq().replace(
                "num_head_channels: 32",
                "num_head_channels: 32\n        use_new_attention_order: true",
            ),
            "use_new_attention_order",
        ),
        (
            celebahq().replace(
                "linear_end: 0.0195",
                "linear_end: 0.0195\n    beta_schedule: cosine",
            ),
            "beta_schedule",
        ),
        (
            celebahq().replace("parameterization", "x").replace(
                "timesteps: 1000",
                "timesteps: 1000\n    parameterization: x0",
            ),
            "`x0` prediction",
        ),
        (
            celebahq().replace("ddpm.LatentDiffusion", "ddpm.DDPM"),
            "ldm.models.diffusion.ddpm.DDPM",
        ),
        (
            celebahq().replace("embed_dim: 3", "embed_dim: 4"),
            "first_stage_config.params.embed_dim",
        ),
        (
            celebahq().replace("out_channels: 3", "out_channels: 4"),
            "unet_config.params.out_channels",
        ),
        (
            celebahq().replace(
                "num_head_channels: 32",
                "num_head_channels: 32\n        use_spatial_transformer: true",
            ),
            "use_spatial_transformer",
        ),
        (
            class_conditional("").replace("context_dim: 512", "context_dim: 640"),
            "context_dim",
        ),
        (
            class_conditional("").replace("crossattn", "hybrid"),
            "conditioning_key `hybrid`",
        ),
        (
            celebahq().replace("model_channels: 224", "model_channels: -3"),
            "model_channels",
        ),
        ("[unclosed".to_string(), "not YAML"),
    ];
    for (text, named) in cases {
        let err = yaml(&text).unwrap_err();
        assert!(err.contains(named), "expected '{named}' in: {err}");
    }
}
