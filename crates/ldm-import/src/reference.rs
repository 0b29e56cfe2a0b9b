//! Single files in the reference layout (`.safetensors`, `.ckpt`): one state dict with the
//! UNet under `model.diffusion_model.`, its EMA copy under `model_ema.` (names without dots),
//! the first stage under `first_stage_model.` and the text encoder under `cond_stage_model.`
//! (`transformer.text_model.*` for CLIP ViT-L/14 in Stable Diffusion 1.x, `model.*` for
//! OpenCLIP ViT-H/14 in 2.x). The networks of `ldm-nn` use the reference names, so the UNet and
//! the first stage only lose their prefix; OpenCLIP's names are mapped onto CLIP's.
//!
//! The architecture comes from a model configuration the user gives, or from the tensors'
//! shapes where they decide it; where they do not (attention heads), from the Stable
//! Diffusion family the context width identifies, else an error asks for a configuration.

use std::collections::BTreeMap;
use std::path::Path;

use ldm_core::manifest::{GraphRole, LinearSchedule};
use ldm_nn::{
    Activation, AutoencoderConfig, ConcatKind, Conditioning, FirstStage, ModelConfig,
    TextEncoderKind, UnetConfig,
};

use crate::files::read_tensors;
use crate::{
    clip_tokenizer, paper, EmaChoice, ImportError, ImportOptions, Imported, RawTensor, Weights,
};

const UNET: &str = "model.diffusion_model.";
const EMA: &str = "model_ema.";
const FIRST_STAGE: &str = "first_stage_model.";
const CLIP: &str = "cond_stage_model.transformer.text_model.";
const OPEN_CLIP: &str = "cond_stage_model.model.";
/// Any other conditioning stage: the paper's text transformer, the class embedder.
const COND_STAGE: &str = "cond_stage_model.";
/// Stable Diffusion's latent scale factor (its configurations' `scale_factor`).
pub const SD_SCALE_FACTOR: f64 = 0.18215;
/// Default guidance scales of imported releases: the reference text-to-image scripts' 7.5 (as
/// Stable Diffusion's), and 3.0 for class-conditional models with a trained null class (the
/// reference's ImageNet sampling); models without an unconditional input sample unguided.
pub const SD_GUIDANCE: f64 = 7.5;
const CLASS_GUIDANCE: f64 = 3.0;
/// Stable Diffusion's training resolution (1.x and 2.x-base).
const SD_RESOLUTION: usize = 512;

/// Buffers of the reference `LatentDiffusion` (its noise schedule and EMA bookkeeping) and of
/// the text encoders, which no graph holds.
fn is_buffer(key: &str) -> bool {
    const ROOT: [&str; 14] = [
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "logvar",
        "scale_factor",
    ];
    ROOT.contains(&key)
        || key == "model_ema.decay"
        || key == "model_ema.num_updates"
        || key.ends_with("embeddings.position_ids")
        || key.starts_with("cond_stage_model.model.visual.")
        || key == "cond_stage_model.model.text_projection"
        || key == "cond_stage_model.model.logit_scale"
        || key.starts_with("first_stage_model.loss.")
}

/// Reads a single-file checkpoint.
pub fn import(path: &Path, options: &ImportOptions) -> Result<Imported, ImportError> {
    let all = read_tensors(path)?;
    let mut parts: BTreeMap<&str, Weights> = BTreeMap::new();
    let mut ema = Weights::new();
    let mut unknown = Vec::new();
    for (key, tensor) in &all {
        if let Some(rest) = key.strip_prefix(EMA) {
            if !is_buffer(key) {
                ema.insert(rest.to_string(), tensor.clone());
            }
            continue;
        }
        if is_buffer(key) {
            continue;
        }
        match [UNET, FIRST_STAGE, CLIP, OPEN_CLIP, COND_STAGE]
            .into_iter()
            .find(|p| key.starts_with(p))
        {
            Some(prefix) => {
                parts
                    .entry(prefix)
                    .or_default()
                    .insert(key[prefix.len()..].to_string(), tensor.clone());
            }
            None => unknown.push(key.as_str()),
        }
    }
    let shown = path.display().to_string();
    let refuse = |message: String| ImportError::Mismatch {
        what: format!("the checkpoint {shown}"),
        message,
    };
    if !unknown.is_empty() {
        return Err(refuse(format!(
            "{} tensors outside the reference layout: {}",
            unknown.len(),
            unknown
                .iter()
                .take(8)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut unet = parts.remove(UNET).ok_or_else(|| {
        refuse(format!(
            "no UNet ({UNET}*): not a latent diffusion checkpoint in the reference layout"
        ))
    })?;
    let first_stage = parts.remove(FIRST_STAGE).unwrap_or_default();
    let (clip, open_clip) = match (parts.remove(CLIP), parts.remove(OPEN_CLIP)) {
        (Some(clip), None) => (Some(clip), false),
        (None, Some(open_clip)) => (Some(open_clip_to_clip(open_clip, &shown)?), true),
        (None, None) => (None, false),
        (Some(_), Some(_)) => {
            return Err(refuse(
                "it holds both a CLIP and an OpenCLIP text encoder".into(),
            ))
        }
    };
    let cond_stage = parts.remove(COND_STAGE).unwrap_or_default();
    let config = match (&options.config, &clip) {
        (Some(config), _) => {
            check_schedule(&all, config)?;
            config.clone()
        }
        (None, Some(text)) => infer_config(&unet, &first_stage, text, open_clip, &all)?,
        (None, None) => return Err(refuse(
            "no CLIP text encoder (cond_stage_model.transformer.text_model.*) to read the architecture from: pass --config with the model's reference YAML or a model configuration".into(),
        )),
    };
    config.validate()?;
    let used_ema = !ema.is_empty() && options.ema == EmaChoice::Prefer;
    if used_ema {
        unet = ema_unet(&unet, &ema, &shown)?;
    }
    if config.context_dim().is_none() {
        unet = paper::attention_blocks(unet, &config.unet)?;
    }
    let stranger = |weights: &Weights, kind: &str| {
        weights.keys().next().map(|k| {
            refuse(format!(
                "'cond_stage_model.{k}' does not belong to a model conditioned {kind}"
            ))
        })
    };
    let mut guidance = 1.0;
    let (conditioner, tokenizer_json) = match &config.conditioning {
        Conditioning::Text {
            encoder: TextEncoderKind::Clip,
            max_length,
            ..
        } => {
            if let Some(e) = stranger(&cond_stage, "on CLIP") {
                return Err(e);
            }
            let text = clip.ok_or_else(|| refuse("no CLIP text encoder (cond_stage_model.transformer.text_model.* or cond_stage_model.model.*)".into()))?;
            let dir = options.tokenizer.as_ref().ok_or_else(|| refuse("single files carry no tokenizer: pass --tokenizer with a folder holding CLIP's vocab.json and merges.txt".into()))?;
            guidance = SD_GUIDANCE;
            (
                Some(text),
                Some(clip_tokenizer::from_folder(dir, *max_length)?),
            )
        }
        Conditioning::Text { .. } => {
            if clip.is_some() {
                return Err(refuse(
                    "it holds a CLIP text encoder, the configuration the paper's transformer"
                        .into(),
                ));
            }
            let file = options.tokenizer.as_ref().ok_or_else(|| refuse("the reference's text models carry no tokenizer: pass --tokenizer with the tokenizer.json of its WordPiece vocabulary (bert-base-uncased for BERTEmbedder)".into()))?;
            guidance = SD_GUIDANCE;
            (
                Some(paper::x_transformer(cond_stage)?),
                Some(tokenizer_file(file)?),
            )
        }
        Conditioning::Class { classes, .. } => {
            let (table, null_class) = paper::class_table(cond_stage, *classes)?;
            if null_class {
                guidance = CLASS_GUIDANCE;
            }
            (Some(table), None)
        }
        Conditioning::None | Conditioning::Concat { .. } => {
            if let Some(e) = stranger(&cond_stage, "through no encoder") {
                return Err(e);
            }
            (None, None)
        }
    };
    let mut weights = BTreeMap::new();
    weights.insert(GraphRole::Unet, unet);
    weights.insert(GraphRole::Encoder, first_stage);
    if let (Some(role), Some(conditioner)) =
        (ldm_nn::graphs::conditioner_role(&config), conditioner)
    {
        weights.insert(role, conditioner);
    }
    let scale_factor = options
        .scale_factor
        .or_else(|| scalar(&all, "scale_factor"))
        .unwrap_or(SD_SCALE_FACTOR);
    Ok(Imported {
        scale_factor,
        config,
        weights,
        tokenizer_json,
        source: format!("single file {shown}"),
        ema: used_ema,
        guidance,
    })
}

/// A one-element buffer of the checkpoint (the reference's `scale_factor` when
/// `scale_by_std` computed it).
fn scalar(all: &Weights, key: &str) -> Option<f64> {
    match all.get(key)?.to_f32()?.as_slice() {
        [v] if v.is_finite() && *v > 0.0 => Some(*v as f64),
        _ => None,
    }
}

/// A user's `tokenizer.json` (the paper's text models ship none).
fn tokenizer_file(path: &Path) -> Result<String, ImportError> {
    match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(name)) if path.is_file() => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            clip_tokenizer::read_tokenizer_json(dir, name)
        }
        _ => Err(ImportError::io(
            path,
            "expected a tokenizer.json file for the paper's text models",
        )),
    }
}

/// Refuses a configuration whose schedule is not the one the checkpoint's `betas` hold.
fn check_schedule(all: &Weights, config: &ModelConfig) -> Result<(), ImportError> {
    if !all.contains_key("betas") {
        return Ok(());
    }
    let held = schedule_from_betas(all)?;
    let c = &config.diffusion;
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1e-3);
    if held.timesteps != c.timesteps
        || !close(held.beta_start, c.beta_start)
        || !close(held.beta_end, c.beta_end)
    {
        return Err(ImportError::Mismatch {
            what: "the checkpoint's betas".into(),
            message: format!(
                "they are the linear schedule of {} steps from {} to {}, the configuration says {} steps from {} to {}",
                held.timesteps, held.beta_start, held.beta_end, c.timesteps, c.beta_start, c.beta_end
            ),
        });
    }
    Ok(())
}

/// The UNet's EMA copy under the trained weights' names (`LitEma` drops the dots of
/// `diffusion_model.<name>`); every weight must have one.
fn ema_unet(unet: &Weights, ema: &Weights, shown: &str) -> Result<Weights, ImportError> {
    let mut out = Weights::new();
    let mut missing = Vec::new();
    for name in unet.keys() {
        let key = format!("diffusion_model{}", name.replace('.', ""));
        match ema.get(&key) {
            Some(t) => {
                out.insert(name.clone(), t.clone());
            }
            None => missing.push(name.as_str()),
        }
    }
    if !missing.is_empty() {
        return Err(ImportError::Mismatch {
            what: format!("the EMA weights of {shown}"),
            message: format!(
                "{} UNet weights have no EMA copy (first: {}); import with --no-ema for the trained weights",
                missing.len(),
                missing[0]
            ),
        });
    }
    Ok(out)
}

/// A single first-stage file (reference layout, with or without `first_stage_model.`, or
/// diffusers' AutoencoderKL names) for a model of `config`. The training loss's tensors an
/// autoencoder checkpoint keeps beside the networks (`loss.*`: discriminator, LPIPS) are
/// skipped.
pub fn vae_file_weights(path: &Path, config: &ModelConfig) -> Result<Weights, ImportError> {
    let levels = config.autoencoder.channel_mult.len();
    let tensors = read_tensors(path)?;
    // diffusers names its levels `down_blocks`, `mid_block`, `up_blocks`; the reference
    // `down`, `mid`, `up`.
    let diffusers_layout = tensors.keys().any(|k| k.contains("_block"));
    let mut out = Weights::new();
    for (key, tensor) in tensors {
        if is_buffer(&key) || key.starts_with("loss.") {
            continue;
        }
        let key = key.strip_prefix(FIRST_STAGE).unwrap_or(&key).to_string();
        let name = if diffusers_layout {
            crate::diffusers::vae_name(&key, levels)
        } else {
            Some(key.clone())
        };
        let name = name.ok_or_else(|| ImportError::Mismatch {
            what: format!("the first stage {}", path.display()),
            message: format!("tensor '{key}' is in neither the reference nor the diffusers layout"),
        })?;
        let tensor = crate::diffusers::as_reference_vae_tensor(&name, tensor);
        out.insert(name, tensor);
    }
    Ok(out)
}

/// OpenCLIP's text transformer under CLIP's names: the fused `in_proj` split into q, k, v.
/// Stable Diffusion 2.x takes the penultimate layer's output, so the last block is dropped.
fn open_clip_to_clip(weights: Weights, shown: &str) -> Result<Weights, ImportError> {
    let blocks = weights
        .keys()
        .filter_map(|k| k.strip_prefix("transformer.resblocks."))
        .filter_map(|r| r.split_once('.').and_then(|(n, _)| n.parse::<usize>().ok()))
        .max()
        .map_or(0, |n| n + 1);
    let mut out = Weights::new();
    for (key, tensor) in weights {
        let bad = || ImportError::Mismatch {
            what: format!("the OpenCLIP text encoder of {shown}"),
            message: format!("tensor '{key}' has no counterpart in CLIP's layout"),
        };
        let name = match key.as_str() {
            "token_embedding.weight" => "embeddings.token_embedding.weight".to_string(),
            "positional_embedding" => "embeddings.position_embedding.weight".to_string(),
            k if k.starts_with("ln_final.") => format!("final_layer_norm.{}", &k[9..]),
            k => {
                let rest = k.strip_prefix("transformer.resblocks.").ok_or_else(bad)?;
                let (n, rest) = rest.split_once('.').ok_or_else(bad)?;
                let layer: usize = n.parse().map_err(|_| bad())?;
                if layer + 1 == blocks {
                    continue; // the last block: unused by the penultimate layer
                }
                let p = format!("encoder.layers.{layer}");
                if let Some(kind) = rest.strip_prefix("attn.in_proj_") {
                    for (i, part) in split_rows(&tensor, 3)
                        .map_err(|_| bad())?
                        .into_iter()
                        .enumerate()
                    {
                        let proj = ["q_proj", "k_proj", "v_proj"][i];
                        out.insert(format!("{p}.self_attn.{proj}.{kind}"), part);
                    }
                    continue;
                }
                let (module, leaf) = rest.rsplit_once('.').ok_or_else(bad)?;
                let mapped = match module {
                    "ln_1" => "layer_norm1",
                    "ln_2" => "layer_norm2",
                    "attn.out_proj" => "self_attn.out_proj",
                    "mlp.c_fc" => "mlp.fc1",
                    "mlp.c_proj" => "mlp.fc2",
                    _ => return Err(bad()),
                };
                format!("{p}.{mapped}.{leaf}")
            }
        };
        out.insert(name, tensor);
    }
    Ok(out)
}

/// `tensor` cut into `n` equal blocks of rows.
fn split_rows(tensor: &RawTensor, n: usize) -> Result<Vec<RawTensor>, ()> {
    let rows = *tensor.shape.first().ok_or(())?;
    if rows % n != 0 {
        return Err(());
    }
    let bytes = tensor.data.len() / n;
    let mut shape = tensor.shape.clone();
    shape[0] = rows / n;
    Ok(tensor
        .data
        .chunks_exact(bytes)
        .map(|chunk| RawTensor {
            dtype: tensor.dtype,
            shape: shape.clone(),
            data: chunk.to_vec(),
        })
        .collect())
}

fn shape_of<'a>(w: &'a Weights, key: &str, what: &str) -> Result<&'a [usize], ImportError> {
    w.get(key)
        .map(|t| t.shape.as_slice())
        .ok_or_else(|| ImportError::Mismatch {
            what: format!("the {what} weights"),
            message: format!(
                "'{key}' is missing, so the architecture cannot be read from the shapes"
            ),
        })
}

/// The architecture as the tensors' shapes give it.
fn infer_config(
    unet: &Weights,
    first_stage: &Weights,
    text: &Weights,
    open_clip: bool,
    all: &Weights,
) -> Result<ModelConfig, ImportError> {
    let autoencoder = infer_autoencoder(first_stage)?;
    let token = shape_of(text, "embeddings.token_embedding.weight", "text encoder")?;
    let (vocab_size, width) = (token[0], token[1]);
    let positions = shape_of(text, "embeddings.position_embedding.weight", "text encoder")?[0];
    let depth = (0..)
        .take_while(|i| text.contains_key(&format!("encoder.layers.{i}.layer_norm1.weight")))
        .count();
    let mlp_width = shape_of(text, "encoder.layers.0.mlp.fc1.weight", "text encoder")?[0];
    // CLIP ViT-L/14 (1.x) has 64-channel heads at width 768, OpenCLIP ViT-H/14 at 1024.
    let heads = width / 64;
    let conditioning = Conditioning::Text {
        vocab_size,
        max_length: positions.min(77),
        width,
        depth,
        heads,
        head_channels: None,
        encoder: TextEncoderKind::Clip,
        activation: if open_clip {
            Activation::Gelu
        } else {
            Activation::QuickGelu
        },
        mlp_width: Some(mlp_width),
        positions: Some(positions),
        concat: infer_concat(unet)?,
        layout: None,
        planner: None,
    };
    let unet_config = infer_unet(unet, width)?;
    Ok(ModelConfig {
        resolution: SD_RESOLUTION,
        autoencoder,
        unet: unet_config,
        conditioning,
        diffusion: schedule_from_betas(all)?,
    })
}

/// Nothing besides the latent, or the mask and masked-image latent of an inpainting UNet
/// (1 + 2 x latent channels inputs).
fn infer_concat(unet: &Weights) -> Result<Option<ConcatKind>, ImportError> {
    let inputs = shape_of(unet, "input_blocks.0.0.weight", "UNet")?[1];
    let outputs = shape_of(unet, "out.2.weight", "UNet")?[0];
    if inputs == outputs {
        Ok(None)
    } else if inputs == 2 * outputs + 1 {
        Ok(Some(ConcatKind::MaskFirstInpainting))
    } else {
        Err(ImportError::Mismatch {
            what: "the UNet weights".into(),
            message: format!("{inputs} input channels for {outputs} output channels: only {outputs} (text-to-image) or {} (inpainting) are supported", 2 * outputs + 1),
        })
    }
}

fn infer_unet(unet: &Weights, context: usize) -> Result<UnetConfig, ImportError> {
    let what = "UNet";
    let conv_in = shape_of(unet, "input_blocks.0.0.weight", what)?;
    let model_channels = conv_in[0];
    let inputs = (0..)
        .take_while(|i| {
            unet.keys()
                .any(|k| k.starts_with(&format!("input_blocks.{i}.")))
        })
        .count();
    let levels = 1
        + (0..inputs)
            .filter(|i| unet.contains_key(&format!("input_blocks.{i}.0.op.weight")))
            .count();
    if inputs < 1 + levels || (inputs - levels) % levels != 0 {
        return Err(ImportError::Mismatch {
            what: "the UNet weights".into(),
            message: format!("{inputs} input blocks do not make {levels} levels of equal depth"),
        });
    }
    let res_blocks = (inputs - levels) / levels;
    let per_level = res_blocks + 1;
    let mut channel_mult = Vec::new();
    let mut attention_resolutions = Vec::new();
    let mut linear_projection = false;
    let mut depth = 1;
    for level in 0..levels {
        let block = 1 + per_level * level;
        let out = shape_of(
            unet,
            &format!("input_blocks.{block}.0.out_layers.3.weight"),
            what,
        )?[0];
        channel_mult.push(out / model_channels);
        if let Some(proj) = unet.get(&format!("input_blocks.{block}.1.proj_in.weight")) {
            attention_resolutions.push(1 << level);
            linear_projection = proj.shape.len() == 2;
            depth = (0..)
                .take_while(|d| {
                    unet.contains_key(&format!(
                        "input_blocks.{block}.1.transformer_blocks.{d}.norm1.weight"
                    ))
                })
                .count();
        }
    }
    // The embedding projects to twice the block's channels when it scales and shifts.
    let scale_shift_norm = shape_of(unet, "input_blocks.1.0.emb_layers.1.weight", what)?[0]
        == 2 * channel_mult[0] * model_channels;
    let (heads, head_channels) = match context {
        768 => (Some(8), None),
        1024 => (None, Some(64)),
        other => {
            return Err(ImportError::Mismatch {
                what: "the UNet weights".into(),
                message: format!(
                    "a {other}-wide context is no Stable Diffusion family this reader knows (768: 1.x, 8 heads; 1024: 2.x, 64-channel heads), and the attention heads cannot be read from shapes: pass --config with a model configuration"
                ),
            })
        }
    };
    Ok(UnetConfig {
        model_channels,
        channel_mult,
        res_blocks,
        attention_resolutions,
        heads,
        head_channels,
        transformer_depth: depth,
        groups: 32,
        linear_projection,
        scale_shift_norm,
        resblock_updown: false,
        position_frequencies: 0,
    })
}

fn infer_autoencoder(w: &Weights) -> Result<AutoencoderConfig, ImportError> {
    let what = "first stage";
    let conv_in = shape_of(w, "encoder.conv_in.weight", what)?;
    let (channels, in_channels) = (conv_in[0], conv_in[1]);
    let levels = (0..)
        .take_while(|l| w.contains_key(&format!("encoder.down.{l}.block.0.conv1.weight")))
        .count();
    let res_blocks = (0..)
        .take_while(|b| w.contains_key(&format!("encoder.down.0.block.{b}.conv1.weight")))
        .count();
    let mut channel_mult = Vec::new();
    for l in 0..levels {
        let out = shape_of(w, &format!("encoder.down.{l}.block.0.conv2.weight"), what)?[0];
        channel_mult.push(out / channels);
    }
    let latent_channels = shape_of(w, "post_quant_conv.weight", what)?[0];
    if (0..levels).any(|l| w.contains_key(&format!("encoder.down.{l}.attn.0.q.weight"))) {
        return Err(ImportError::Mismatch {
            what: "the first stage weights".into(),
            message: "attention inside the levels needs the training resolution: pass --config with a model configuration".into(),
        });
    }
    Ok(AutoencoderConfig {
        regularizer: FirstStage::Kl,
        factor: 1 << levels.saturating_sub(1),
        latent_channels,
        codebook_size: None,
        channels,
        channel_mult,
        res_blocks,
        attn_resolutions: Vec::new(),
        in_channels,
        groups: 32,
    })
}

/// The schedule the checkpoint's `betas` buffer holds, when it is the reference's linear one;
/// Stable Diffusion's (0.00085 to 0.012 over 1000 steps) when the file has no buffer.
fn schedule_from_betas(all: &Weights) -> Result<LinearSchedule, ImportError> {
    let Some(betas) = all.get("betas").and_then(RawTensor::to_f32) else {
        return Ok(LinearSchedule {
            timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            prediction: Default::default(),
            set_alpha_to_one: false,
        });
    };
    let n = betas.len();
    let (start, end) = (betas[0] as f64, betas[n - 1] as f64);
    let schedule = LinearSchedule {
        timesteps: n,
        beta_start: start,
        beta_end: end,
        prediction: Default::default(),
        // The reference DDIM and PLMS samplers end on alpha_bar_0.
        set_alpha_to_one: false,
    };
    let rebuilt = schedule
        .noise_schedule()
        .map_err(|e| ImportError::Mismatch {
            what: "the checkpoint's betas".into(),
            message: e.to_string(),
        })?;
    let worst = (0..n)
        .map(|t| (rebuilt.betas()[t] - betas[t] as f64).abs())
        .fold(0.0, f64::max);
    if worst > 1e-6 {
        return Err(ImportError::Mismatch {
            what: "the checkpoint's betas".into(),
            message: format!(
                "they are not the reference's linear schedule (off by up to {worst:.2e})"
            ),
        });
    }
    Ok(schedule)
}
