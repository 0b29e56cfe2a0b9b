//! The diffusers folder layout: `model_index.json` and one folder per component, each with
//! its `config.json`. Configurations become a [`ModelConfig`]; diffusers' module names become
//! the reference names the networks of `ldm-nn` use (`down_blocks.1.resnets.0.conv1` is
//! `input_blocks.4.0.in_layers.2`). Anything the networks cannot express is refused by the
//! name of its configuration field.

use std::collections::BTreeMap;
use std::path::Path;

use ldm_core::manifest::{GraphRole, LinearSchedule};
use ldm_core::Prediction;
use ldm_nn::{
    Activation, AutoencoderConfig, ConcatKind, Conditioning, FirstStage, ModelConfig,
    TextEncoderKind, UnetConfig,
};
use serde_json::Value;

use crate::files::read_component;

mod names;
use crate::{clip_tokenizer, ImportError, ImportOptions, Imported, Weights};
pub use names::{as_reference_vae_tensor, clip_name, unet_name, vae_name};

/// A component's `config.json` is a few kilobytes.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Weight file names of diffusers' models and of transformers' text encoders, the full
/// precision files first, then the `fp16` variants some folders hold alone.
const MODEL_STEMS: [&str; 2] = ["diffusion_pytorch_model", "diffusion_pytorch_model.fp16"];
const TEXT_ENCODER_STEMS: [&str; 4] =
    ["model", "pytorch_model", "model.fp16", "pytorch_model.fp16"];
/// The pipelines whose components map onto this project's networks.
const PIPELINES: [&str; 2] = ["StableDiffusionPipeline", "StableDiffusionInpaintPipeline"];

/// A component's configuration, with errors naming the file and field.
struct Config {
    path: std::path::PathBuf,
    value: Value,
}

impl Config {
    fn load(dir: &Path, name: &str) -> Result<Config, ImportError> {
        let path = dir.join(name);
        let bytes = ldm_core::confined::read_confined(dir, name, MAX_CONFIG_BYTES)
            .map_err(|e| ImportError::io(&path, e.reason))?;
        let value = serde_json::from_slice(&bytes).map_err(|e| ImportError::io(&path, e))?;
        Ok(Config { path, value })
    }

    fn error(&self, field: &str, message: impl Into<String>) -> ImportError {
        ImportError::config(&self.path, field, message)
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.value.get(field).filter(|v| !v.is_null())
    }

    fn usize(&self, field: &str) -> Result<usize, ImportError> {
        self.get(field)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| self.error(field, "missing or not a natural number"))
    }

    fn usize_or(&self, field: &str, default: usize) -> Result<usize, ImportError> {
        match self.get(field) {
            None => Ok(default),
            Some(_) => self.usize(field),
        }
    }

    fn f64(&self, field: &str) -> Result<f64, ImportError> {
        self.get(field)
            .and_then(Value::as_f64)
            .ok_or_else(|| self.error(field, "missing or not a number"))
    }

    fn str_or<'a>(&'a self, field: &str, default: &'a str) -> Result<&'a str, ImportError> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.error(field, "not a string")),
        }
    }

    fn usizes(&self, field: &str) -> Result<Vec<usize>, ImportError> {
        self.get(field)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect())
            .ok_or_else(|| self.error(field, "missing or not a list of natural numbers"))
    }

    fn strs(&self, field: &str) -> Result<Vec<String>, ImportError> {
        self.get(field)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect())
            .ok_or_else(|| self.error(field, "missing or not a list of strings"))
    }

    /// Refuses `field` unless it is absent, null or the number `expected`.
    fn require_number(&self, field: &str, expected: f64, what: &str) -> Result<(), ImportError> {
        match self.get(field) {
            None => Ok(()),
            Some(v) if v.as_f64() == Some(expected) => Ok(()),
            Some(v) => Err(self.error(field, format!("{v} is not supported ({what})"))),
        }
    }

    /// Refuses `field` unless it is absent, null or `expected`.
    fn require(&self, field: &str, expected: Value, what: &str) -> Result<(), ImportError> {
        match self.get(field) {
            None => Ok(()),
            Some(v) if *v == expected => Ok(()),
            Some(v) => Err(self.error(field, format!("{v} is not supported ({what})"))),
        }
    }
}

/// Reads a diffusers Stable Diffusion folder.
pub fn import(dir: &Path, options: &ImportOptions) -> Result<Imported, ImportError> {
    let index = Config::load(dir, "model_index.json")?;
    let class = index.str_or("_class_name", "")?;
    if !PIPELINES.contains(&class) {
        return Err(index.error(
            "_class_name",
            format!(
                "'{class}' is not supported (supported: {})",
                PIPELINES.join(", ")
            ),
        ));
    }
    let unet = Config::load(dir, "unet/config.json")?;
    let vae = Config::load(dir, "vae/config.json")?;
    let text = Config::load(dir, "text_encoder/config.json")?;
    let scheduler = Config::load(dir, "scheduler/scheduler_config.json")?;
    let autoencoder = vae_config(&vae)?;
    let resolution = vae.usize("sample_size")?;
    let mut conditioning = text_config(&text)?;
    if let Conditioning::Text { concat, .. } = &mut conditioning {
        *concat = unet_concat(&unet)?;
    }
    let unet_config = unet_config(&unet, &conditioning)?;
    let config = ModelConfig {
        resolution,
        autoencoder,
        unet: unet_config,
        conditioning,
        diffusion: schedule(&scheduler)?,
    };
    config.validate()?;
    let scale_factor = vae.f64("scaling_factor")?;
    vae.require("shift_factor", Value::Null, "latents with a shift")?;

    let mut weights = BTreeMap::new();
    weights.insert(
        GraphRole::Unet,
        rename(read_component(&dir.join("unet"), &MODEL_STEMS)?, |k| {
            unet_name(k, &config.unet)
        })?,
    );
    weights.insert(GraphRole::Encoder, vae_weights(&dir.join("vae"), &config)?);
    weights.insert(
        GraphRole::TextEncoder,
        rename(
            read_component(&dir.join("text_encoder"), &TEXT_ENCODER_STEMS)?,
            clip_name,
        )?,
    );
    let tokenizer_dir = options.tokenizer.clone().unwrap_or(dir.join("tokenizer"));
    let max_length = match config.conditioning {
        Conditioning::Text { max_length, .. } => max_length,
        _ => unreachable!("a text model"),
    };
    let tokenizer_json = clip_tokenizer::from_folder(&tokenizer_dir, max_length)?;
    let _ = options.ema; // diffusers folders hold one copy of the UNet
    Ok(Imported {
        config,
        scale_factor,
        weights,
        tokenizer_json: Some(tokenizer_json),
        source: format!("diffusers folder {}", dir.display()),
        ema: false,
        guidance: crate::reference::SD_GUIDANCE,
    })
}

/// The first-stage weights of a diffusers `vae/` folder, renamed.
pub fn vae_weights(vae_dir: &Path, config: &ModelConfig) -> Result<Weights, ImportError> {
    let levels = config.autoencoder.channel_mult.len();
    let raw = read_component(vae_dir, &MODEL_STEMS)?;
    let mut out = Weights::new();
    for (key, tensor) in raw {
        let name = vae_name(&key, levels).ok_or_else(|| unknown(vae_dir, &key))?;
        let tensor = as_reference_vae_tensor(&name, tensor);
        out.insert(name, tensor);
    }
    Ok(out)
}

fn unknown(dir: &Path, key: &str) -> ImportError {
    ImportError::Mismatch {
        what: format!("the weights in {}", dir.display()),
        message: format!("tensor '{key}' has no counterpart in the reference layout"),
    }
}

/// Renames every tensor; tensors `name` maps to None are buffers the networks do not need
/// (refused unless known to be such).
fn rename(raw: Weights, name: impl Fn(&str) -> Option<String>) -> Result<Weights, ImportError> {
    let mut out = Weights::new();
    for (key, tensor) in raw {
        if is_buffer(&key) {
            continue;
        }
        let mapped = name(&key).ok_or_else(|| ImportError::Mismatch {
            what: "the checkpoint".into(),
            message: format!("tensor '{key}' has no counterpart in the reference layout"),
        })?;
        out.insert(mapped, tensor);
    }
    Ok(out)
}

/// Tensors checkpoints carry that are not parameters: CLIP's position ids, the pooled
/// output's projection.
fn is_buffer(key: &str) -> bool {
    key.ends_with("embeddings.position_ids") || key.starts_with("text_projection.")
}

fn vae_config(vae: &Config) -> Result<AutoencoderConfig, ImportError> {
    let blocks = vae.usizes("block_out_channels")?;
    let channels = *blocks
        .first()
        .ok_or_else(|| vae.error("block_out_channels", "empty"))?;
    let channel_mult = multiples(vae, "block_out_channels", &blocks, channels)?;
    for (field, expected) in [
        ("down_block_types", "DownEncoderBlock2D"),
        ("up_block_types", "UpDecoderBlock2D"),
    ] {
        let types = vae.strs(field)?;
        if types.len() != blocks.len() || types.iter().any(|t| t != expected) {
            return Err(vae.error(
                field,
                format!("only {expected} blocks are supported, one per level"),
            ));
        }
    }
    vae.require(
        "act_fn",
        "silu".into(),
        "the reference autoencoder uses SiLU",
    )?;
    vae.require(
        "mid_block_add_attention",
        true.into(),
        "the reference middle block has attention",
    )?;
    vae.require(
        "use_quant_conv",
        true.into(),
        "the reference has quant_conv",
    )?;
    vae.require(
        "use_post_quant_conv",
        true.into(),
        "the reference has post_quant_conv",
    )?;
    let in_channels = vae.usize_or("in_channels", 3)?;
    if vae.usize_or("out_channels", in_channels)? != in_channels {
        return Err(vae.error("out_channels", "must equal in_channels"));
    }
    Ok(AutoencoderConfig {
        regularizer: FirstStage::Kl,
        factor: 1 << (blocks.len() - 1),
        latent_channels: vae.usize("latent_channels")?,
        codebook_size: None,
        channels,
        channel_mult,
        res_blocks: vae.usize_or("layers_per_block", 1)?,
        attn_resolutions: Vec::new(),
        in_channels,
        groups: vae.usize_or("norm_num_groups", 32)?,
    })
}

/// `blocks` as multiples of `base`.
fn multiples(
    c: &Config,
    field: &str,
    blocks: &[usize],
    base: usize,
) -> Result<Vec<usize>, ImportError> {
    blocks
        .iter()
        .map(|&b| {
            (base > 0 && b % base == 0)
                .then_some(b / base)
                .ok_or_else(|| c.error(field, format!("{b} is not a multiple of {base}")))
        })
        .collect()
}

fn text_config(text: &Config) -> Result<Conditioning, ImportError> {
    let width = text.usize("hidden_size")?;
    let heads = text.usize("num_attention_heads")?;
    let activation = match text.str_or("hidden_act", "quick_gelu")? {
        "quick_gelu" => Activation::QuickGelu,
        "gelu" => Activation::Gelu,
        other => {
            return Err(text.error(
                "hidden_act",
                format!("'{other}' is not supported (quick_gelu, gelu)"),
            ))
        }
    };
    let eps = text
        .get("layer_norm_eps")
        .and_then(Value::as_f64)
        .unwrap_or(1e-5);
    if (eps - 1e-5).abs() > 1e-12 {
        return Err(text.error("layer_norm_eps", format!("{eps} (the networks use 1e-5)")));
    }
    let positions = text.usize("max_position_embeddings")?;
    Ok(Conditioning::Text {
        vocab_size: text.usize("vocab_size")?,
        // Stable Diffusion's prompts are 77 tokens, as many as CLIP has positions.
        max_length: positions.min(77),
        width,
        depth: text.usize("num_hidden_layers")?,
        heads,
        head_channels: None,
        encoder: TextEncoderKind::Clip,
        activation,
        mlp_width: Some(text.usize("intermediate_size")?),
        positions: Some(positions),
        concat: None,
        layout: None,
        planner: None,
    })
}

/// What the UNet takes besides its latent: nothing, or (1 + 2 x latent channels inputs)
/// the mask and masked-image latent of Stable Diffusion's inpainting models.
fn unet_concat(unet: &Config) -> Result<Option<ConcatKind>, ImportError> {
    let in_channels = unet.usize("in_channels")?;
    let out_channels = unet.usize("out_channels")?;
    if in_channels == out_channels {
        Ok(None)
    } else if in_channels == 2 * out_channels + 1 {
        Ok(Some(ConcatKind::MaskFirstInpainting))
    } else {
        Err(unet.error(
            "in_channels",
            format!("{in_channels} input channels for {out_channels} output channels: only {out_channels} (text-to-image) or {} (inpainting: mask and masked-image latent) are supported", 2 * out_channels + 1),
        ))
    }
}

fn unet_config(unet: &Config, conditioning: &Conditioning) -> Result<UnetConfig, ImportError> {
    let blocks = unet.usizes("block_out_channels")?;
    let model_channels = *blocks
        .first()
        .ok_or_else(|| unet.error("block_out_channels", "empty"))?;
    let channel_mult = multiples(unet, "block_out_channels", &blocks, model_channels)?;
    let down = unet.strs("down_block_types")?;
    let up = unet.strs("up_block_types")?;
    if down.len() != blocks.len() || up.len() != blocks.len() {
        return Err(unet.error("down_block_types", "one block type per level, down and up"));
    }
    let mut attention_resolutions = Vec::new();
    for (level, kind) in down.iter().enumerate() {
        let attention = match kind.as_str() {
            "CrossAttnDownBlock2D" => true,
            "DownBlock2D" => false,
            other => {
                return Err(unet.error("down_block_types", format!("'{other}' is not supported")))
            }
        };
        let mirrored = match up[blocks.len() - 1 - level].as_str() {
            "CrossAttnUpBlock2D" => true,
            "UpBlock2D" => false,
            other => {
                return Err(unet.error("up_block_types", format!("'{other}' is not supported")))
            }
        };
        if attention != mirrored {
            return Err(unet.error("up_block_types", "must mirror down_block_types"));
        }
        if attention {
            attention_resolutions.push(1 << level);
        }
    }
    unet.require(
        "mid_block_type",
        "UNetMidBlock2DCrossAttn".into(),
        "the reference middle block",
    )?;
    unet.require("act_fn", "silu".into(), "the reference UNet uses SiLU")?;
    unet.require(
        "flip_sin_to_cos",
        true.into(),
        "the reference embeds cos before sin",
    )?;
    unet.require("freq_shift", 0.into(), "the reference's frequencies")?;
    unet.require(
        "center_input_sample",
        false.into(),
        "inputs as the reference takes them",
    )?;
    unet.require(
        "only_cross_attention",
        false.into(),
        "self-attention then cross-attention",
    )?;
    unet.require("dual_cross_attention", false.into(), "one context")?;
    unet.require("conv_in_kernel", 3.into(), "3x3 convolutions")?;
    unet.require("conv_out_kernel", 3.into(), "3x3 convolutions")?;
    unet.require("attention_type", "default".into(), "plain attention")?;
    unet.require(
        "resnet_skip_time_act",
        false.into(),
        "the reference ResBlock",
    )?;
    unet.require(
        "class_embeddings_concat",
        false.into(),
        "no class embedding",
    )?;
    unet.require_number("mid_block_scale_factor", 1.0, "the reference middle block")?;
    unet.require_number("resnet_out_scale_factor", 1.0, "the reference ResBlock")?;
    unet.require_number("downsample_padding", 1.0, "the reference downsampling")?;
    unet.require_number("norm_eps", 1e-5, "the reference's GroupNorm")?;
    for field in [
        "class_embed_type",
        "addition_embed_type",
        "addition_time_embed_dim",
        "time_cond_proj_dim",
        "encoder_hid_dim",
        "encoder_hid_dim_type",
        "num_class_embeds",
        "time_embedding_dim",
        "time_embedding_act_fn",
        "timestep_post_act",
        "cross_attention_norm",
        "mid_block_only_cross_attention",
        "reverse_transformer_layers_per_block",
        "projection_class_embeddings_input_dim",
    ] {
        unet.require(field, Value::Null, "not part of Stable Diffusion 1.x/2.x")?;
    }
    unet.require(
        "time_embedding_type",
        "positional".into(),
        "sinusoidal timestep embedding",
    )?;
    let layers = unet.usize_or("layers_per_block", 2)?;
    let depth = match unet.get("transformer_layers_per_block") {
        None => 1,
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0) as usize,
        Some(_) => {
            return Err(unet.error(
                "transformer_layers_per_block",
                "one depth for every level is supported",
            ))
        }
    };
    let context = unet.usize("cross_attention_dim")?;
    let Conditioning::Text { width, .. } = conditioning else {
        unreachable!("text conditioning")
    };
    if context != *width {
        return Err(unet.error(
            "cross_attention_dim",
            format!("{context}, but the text encoder gives {width} channels"),
        ));
    }
    // diffusers' `attention_head_dim` is a head count when one number (Stable Diffusion 1.x)
    // and per-level head counts when a list (2.x); `num_attention_heads` overrides both.
    let heads_field = if unet.get("num_attention_heads").is_some() {
        "num_attention_heads"
    } else {
        "attention_head_dim"
    };
    let (heads, head_channels) = match unet.get(heads_field) {
        Some(Value::Number(n)) => (Some(n.as_u64().unwrap_or(0) as usize), None),
        Some(Value::Array(list)) => {
            let counts: Vec<usize> = list
                .iter()
                .filter_map(Value::as_u64)
                .map(|v| v as usize)
                .collect();
            let per_head: Vec<usize> = counts
                .iter()
                .zip(&blocks)
                .filter(|(&h, _)| h > 0)
                .map(|(&h, &c)| c / h)
                .collect();
            match per_head.as_slice() {
                [first, rest @ ..]
                    if counts.len() == blocks.len() && rest.iter().all(|d| d == first) =>
                {
                    (None, Some(*first))
                }
                _ => {
                    return Err(unet.error(
                        heads_field,
                        "per-level head counts must give one head width",
                    ))
                }
            }
        }
        _ => return Err(unet.error(heads_field, "missing or not a number or list")),
    };
    Ok(UnetConfig {
        model_channels,
        channel_mult,
        res_blocks: layers,
        attention_resolutions,
        heads,
        head_channels,
        transformer_depth: depth,
        groups: unet.usize_or("norm_num_groups", 32)?,
        linear_projection: unet
            .get("use_linear_projection")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        scale_shift_norm: match unet.str_or("resnet_time_scale_shift", "default")? {
            "default" => false,
            "scale_shift" => true,
            other => {
                return Err(unet.error(
                    "resnet_time_scale_shift",
                    format!("'{other}' is not supported (default, scale_shift)"),
                ))
            }
        },
        // diffusers' cross-attention blocks change size with convolutions.
        resblock_updown: false,
        position_frequencies: 0,
    })
}

/// The forward process of a diffusers scheduler configuration.
fn schedule(scheduler: &Config) -> Result<LinearSchedule, ImportError> {
    // diffusers' "scaled_linear" is the reference's "linear": linear in sqrt(beta).
    scheduler.require(
        "beta_schedule",
        "scaled_linear".into(),
        "the reference's linear schedule",
    )?;
    scheduler.require("trained_betas", Value::Null, "explicit betas")?;
    let prediction = match scheduler.str_or("prediction_type", "epsilon")? {
        "epsilon" => Prediction::Epsilon,
        "v_prediction" => Prediction::V,
        other => {
            return Err(scheduler.error(
                "prediction_type",
                format!("'{other}' is not supported (epsilon, v_prediction)"),
            ))
        }
    };
    // The reference's DDIM spacing: every (T / steps)-th timestep, shifted by one.
    scheduler.require(
        "timestep_spacing",
        "leading".into(),
        "the reference's DDIM spacing",
    )?;
    scheduler.require_number("steps_offset", 1.0, "the reference's DDIM spacing")?;
    scheduler.require(
        "rescale_betas_zero_snr",
        false.into(),
        "the schedule as trained",
    )?;
    scheduler.require("thresholding", false.into(), "no dynamic thresholding")?;
    scheduler.require("clip_sample", false.into(), "x_0 estimates are not clipped")?;
    Ok(LinearSchedule {
        timesteps: scheduler.usize_or("num_train_timesteps", 1000)?,
        beta_start: scheduler.f64("beta_start")?,
        beta_end: scheduler.f64("beta_end")?,
        prediction,
        set_alpha_to_one: scheduler
            .get("set_alpha_to_one")
            .and_then(Value::as_bool)
            .unwrap_or(true),
    })
}
