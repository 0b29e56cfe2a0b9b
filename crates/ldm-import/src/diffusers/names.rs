//! diffusers' module names onto the reference names the networks of `ldm-nn` use.

use ldm_nn::UnetConfig;

use crate::RawTensor;

/// transformers' `CLIPTextModel` names, without the `text_model.` prefix older versions
/// write: the names the CLIP encoder of `ldm-nn` uses.
pub fn clip_name(key: &str) -> Option<String> {
    let key = key.strip_prefix("text_model.").unwrap_or(key);
    ["embeddings.", "encoder.layers.", "final_layer_norm."]
        .iter()
        .any(|p| key.starts_with(p))
        .then(|| key.to_string())
}

/// Splits `key` at its first dot after `prefix.` as (number, rest).
fn indexed<'a>(key: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('.')?;
    let (n, rest) = rest.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// diffusers' ResNet block names -> the reference UNet's.
fn unet_resnet(rest: &str) -> Option<String> {
    let (module, leaf) = rest.rsplit_once('.')?;
    let mapped = match module {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "time_emb_proj" => "emb_layers.1",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "conv_shortcut" => "skip_connection",
        _ => return None,
    };
    Some(format!("{mapped}.{leaf}"))
}

/// A diffusers UNet2DConditionModel tensor name -> the reference `UNetModel`'s.
pub fn unet_name(key: &str, cfg: &UnetConfig) -> Option<String> {
    let per_level = cfg.res_blocks + 1;
    let levels = cfg.channel_mult.len();
    let has_attention = |level: usize| cfg.attention_resolutions.contains(&(1 << level));
    let simple = [
        ("conv_in.", "input_blocks.0.0."),
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
    ];
    for (from, to) in simple {
        if let Some(leaf) = key.strip_prefix(from) {
            return Some(format!("{to}{leaf}"));
        }
    }
    if let Some((level, rest)) = indexed(key, "down_blocks") {
        if let Some((j, rest)) = indexed(rest, "resnets") {
            return Some(format!(
                "input_blocks.{}.0.{}",
                1 + per_level * level + j,
                unet_resnet(rest)?
            ));
        }
        if let Some((j, rest)) = indexed(rest, "attentions") {
            return Some(format!(
                "input_blocks.{}.1.{rest}",
                1 + per_level * level + j
            ));
        }
        if let Some(leaf) = rest.strip_prefix("downsamplers.0.conv.") {
            return Some(format!(
                "input_blocks.{}.0.op.{leaf}",
                per_level * (level + 1)
            ));
        }
        return None;
    }
    if let Some(rest) = key.strip_prefix("mid_block.") {
        if let Some((j, rest)) = indexed(rest, "resnets") {
            return Some(format!("middle_block.{}.{}", 2 * j, unet_resnet(rest)?));
        }
        return indexed(rest, "attentions")
            .filter(|(j, _)| *j == 0)
            .map(|(_, rest)| format!("middle_block.1.{rest}"));
    }
    if let Some((i, rest)) = indexed(key, "up_blocks") {
        let level = levels.checked_sub(1 + i)?;
        if let Some((j, rest)) = indexed(rest, "resnets") {
            return Some(format!(
                "output_blocks.{}.0.{}",
                per_level * i + j,
                unet_resnet(rest)?
            ));
        }
        if let Some((j, rest)) = indexed(rest, "attentions") {
            return Some(format!("output_blocks.{}.1.{rest}", per_level * i + j));
        }
        if let Some(leaf) = rest.strip_prefix("upsamplers.0.conv.") {
            let layer = if has_attention(level) { 2 } else { 1 };
            return Some(format!(
                "output_blocks.{}.{layer}.conv.{leaf}",
                per_level * i + cfg.res_blocks
            ));
        }
    }
    None
}

/// diffusers' autoencoder ResNet and attention names -> the reference's.
fn vae_module(rest: &str) -> Option<String> {
    let (module, leaf) = rest.rsplit_once('.')?;
    let mapped = match module {
        "conv_shortcut" => "nin_shortcut",
        "group_norm" => "norm",
        "to_q" | "query" => "q",
        "to_k" | "key" => "k",
        "to_v" | "value" => "v",
        "to_out.0" | "proj_attn" => "proj_out",
        m @ ("norm1" | "conv1" | "norm2" | "conv2") => m,
        _ => return None,
    };
    Some(format!("{mapped}.{leaf}"))
}

/// A diffusers AutoencoderKL tensor name -> the reference `AutoencoderKL`'s (its decoder's
/// levels are numbered from the deepest in diffusers, from the shallowest in the reference).
pub fn vae_name(key: &str, levels: usize) -> Option<String> {
    for passthrough in ["quant_conv.", "post_quant_conv."] {
        if key.starts_with(passthrough) {
            return Some(key.to_string());
        }
    }
    let (part, rest) = key.split_once('.')?;
    if part != "encoder" && part != "decoder" {
        return None;
    }
    let out = |s: String| Some(format!("{part}.{s}"));
    for (from, to) in [
        ("conv_in.", "conv_in."),
        ("conv_out.", "conv_out."),
        ("conv_norm_out.", "norm_out."),
    ] {
        if let Some(leaf) = rest.strip_prefix(from) {
            return out(format!("{to}{leaf}"));
        }
    }
    if let Some(rest) = rest.strip_prefix("mid_block.") {
        if let Some((j, rest)) = indexed(rest, "resnets") {
            return out(format!("mid.block_{}.{}", j + 1, vae_module(rest)?));
        }
        let (_, rest) = indexed(rest, "attentions").filter(|(j, _)| *j == 0)?;
        return out(format!("mid.attn_1.{}", vae_module(rest)?));
    }
    let (blocks, stage, sampler) = if part == "encoder" {
        ("down_blocks", "down", "downsamplers.0.conv.")
    } else {
        ("up_blocks", "up", "upsamplers.0.conv.")
    };
    let (i, rest) = indexed(rest, blocks)?;
    let level = if part == "encoder" {
        i
    } else {
        levels.checked_sub(1 + i)?
    };
    if let Some((j, rest)) = indexed(rest, "resnets") {
        return out(format!("{stage}.{level}.block.{j}.{}", vae_module(rest)?));
    }
    let leaf = rest.strip_prefix(sampler)?;
    let name = if part == "encoder" {
        "downsample"
    } else {
        "upsample"
    };
    out(format!("{stage}.{level}.{name}.conv.{leaf}"))
}

/// A first-stage tensor under its reference `name`, shaped as the reference holds it:
/// diffusers' middle-block attention projections are linear [c, c], the reference's 1x1
/// convolutions [c, c, 1, 1].
pub fn as_reference_vae_tensor(name: &str, mut tensor: RawTensor) -> RawTensor {
    if name.contains(".attn_1.") && name.ends_with(".weight") && tensor.shape.len() == 2 {
        tensor.shape.extend([1, 1]);
    }
    tensor
}
