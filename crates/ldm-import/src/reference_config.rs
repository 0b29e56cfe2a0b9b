//! The reference implementation's YAML configurations (its `configs/latent-diffusion/*.yaml`,
//! and the `config.yaml` beside each released checkpoint) as this project's model
//! configuration: the `target`/`params` tree of `model` (`LatentDiffusion`), its
//! `unet_config` (`UNetModel`), `first_stage_config` (`AutoencoderKL`, `VQModelInterface`) and
//! `cond_stage_config` (unconditional, `ClassEmbedder`, `BERTEmbedder`, the identity of
//! super-resolution, the first stage of inpainting).
//!
//! Every option that changes what the networks compute is read; one this project cannot
//! express is refused with its name. Training-only options (learning rates, loss weights,
//! monitors, data) are ignored.

use std::path::Path;

use ldm_core::manifest::LinearSchedule;
use ldm_core::Prediction;
use ldm_nn::{
    Activation, AutoencoderConfig, ConcatKind, Conditioning, FirstStage, ModelConfig,
    TextEncoderKind, UnetConfig,
};
use serde_yaml_ng::Value;

use crate::ImportError;

/// Configurations are a few kilobytes; a larger file is not one.
const MAX_BYTES: u64 = 1 << 20;
/// The paper's text transformer is x-transformers' encoder with its default heads: 8 of 64
/// channels, whatever the width.
const BERT_HEADS: usize = 8;
const BERT_HEAD_CHANNELS: usize = 64;
const IMAGENET_CLASSES: usize = 1000;
/// Image channels of the low-resolution input a super-resolution model concatenates.
const IMAGE_CHANNELS: usize = 3;

/// A reference configuration as this project's.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceConfig {
    pub config: ModelConfig,
    /// `scale_factor` (1.0 when absent, as in the reference).
    pub scale_factor: f64,
    /// Whether the checkpoint's `scale_factor` buffer holds the scale (`scale_by_std`).
    pub scale_in_checkpoint: bool,
}

/// Whether `path` names a YAML file (the reference's configurations; this project's are TOML).
pub fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Reads `path`, refusing by name what the networks cannot express.
pub fn read(path: &Path) -> Result<ReferenceConfig, ImportError> {
    let size = std::fs::metadata(path)
        .map_err(|e| ImportError::io(path, e))?
        .len();
    if size > MAX_BYTES {
        return Err(ImportError::config(
            path,
            "(file)",
            format!("{size} bytes is no configuration (at most {MAX_BYTES})"),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| ImportError::io(path, e))?;
    let root: Value = serde_yaml_ng::from_str(&text)
        .map_err(|e| ImportError::config(path, "(file)", format!("not YAML: {e}")))?;
    let node = Node {
        value: &root,
        field: String::new(),
        path,
    };
    latent_diffusion(&node.required("model")?)
}

/// One value of the tree and where it is, for errors that name the field.
struct Node<'a> {
    value: &'a Value,
    field: String,
    path: &'a Path,
}

impl<'a> Node<'a> {
    fn child(&self, key: &str, value: &'a Value) -> Node<'a> {
        Node {
            value,
            field: if self.field.is_empty() {
                key.to_string()
            } else {
                format!("{}.{key}", self.field)
            },
            path: self.path,
        }
    }

    fn error(&self, message: impl Into<String>) -> ImportError {
        ImportError::config(self.path, &self.field, message)
    }

    fn get(&self, key: &str) -> Option<Node<'a>> {
        let value = self.value.as_mapping()?.get(key)?;
        (!value.is_null()).then(|| self.child(key, value))
    }

    fn required(&self, key: &str) -> Result<Node<'a>, ImportError> {
        self.get(key)
            .ok_or_else(|| self.child(key, &Value::Null).error("missing"))
    }

    fn target(&self) -> Result<&'a str, ImportError> {
        self.required("target")?.as_str()
    }

    /// `params` of a `target`/`params` node (absent means none).
    fn params(&self) -> Node<'a> {
        self.get("params")
            .unwrap_or_else(|| self.child("params", &NO_PARAMS))
    }

    fn as_str(&self) -> Result<&'a str, ImportError> {
        self.value
            .as_str()
            .ok_or_else(|| self.error("expected a string"))
    }

    fn as_usize(&self) -> Result<usize, ImportError> {
        self.value
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.error("expected a whole number"))
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize, ImportError> {
        self.get(key).map_or(Ok(default), |n| n.as_usize())
    }

    /// An integer option where the reference writes -1 for "not set".
    fn optional_count(&self, key: &str) -> Result<Option<usize>, ImportError> {
        match self.get(key) {
            None => Ok(None),
            Some(n) if n.value.as_i64() == Some(-1) => Ok(None),
            Some(n) => n.as_usize().map(Some),
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64, ImportError> {
        match self.get(key) {
            None => Ok(default),
            Some(n) => n
                .value
                .as_f64()
                .filter(|v| v.is_finite())
                .ok_or_else(|| n.error("expected a finite number")),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, ImportError> {
        match self.get(key) {
            None => Ok(default),
            Some(n) => n
                .value
                .as_bool()
                .ok_or_else(|| n.error("expected true or false")),
        }
    }

    fn usize_list(&self, key: &str) -> Result<Vec<usize>, ImportError> {
        let Some(n) = self.get(key) else {
            return Ok(Vec::new());
        };
        let items = n
            .value
            .as_sequence()
            .ok_or_else(|| n.error("expected a list of whole numbers"))?;
        items
            .iter()
            .enumerate()
            .map(|(i, v)| n.child(&i.to_string(), v).as_usize())
            .collect()
    }

    /// Refuses `key` unless absent or `allowed`.
    fn refuse_unless(&self, key: &str, allowed: &Value, why: &str) -> Result<(), ImportError> {
        match self.get(key) {
            Some(n) if n.value != allowed => Err(n.error(format!(
                "{} is not supported: {why}",
                serde_yaml_ng::to_string(n.value).unwrap_or_default().trim()
            ))),
            _ => Ok(()),
        }
    }
}

static NO_PARAMS: Value = Value::Null;

fn latent_diffusion(model: &Node) -> Result<ReferenceConfig, ImportError> {
    let target = model.target()?;
    if target != "ldm.models.diffusion.ddpm.LatentDiffusion" {
        return Err(model.required("target")?.error(format!(
            "`{target}` is not a latent diffusion model (ldm.models.diffusion.ddpm.LatentDiffusion)"
        )));
    }
    let p = model.params();
    p.refuse_unless(
        "beta_schedule",
        &Value::from("linear"),
        "only the reference's linear schedule is implemented",
    )?;
    let prediction = match p.get("parameterization") {
        None => Prediction::Epsilon,
        Some(n) => match n.as_str()? {
            "eps" => Prediction::Epsilon,
            "v" => Prediction::V,
            other => return Err(n.error(format!("`{other}` prediction is not supported (eps, v)"))),
        },
    };
    let diffusion = LinearSchedule {
        timesteps: p.usize_or("timesteps", 1000)?,
        beta_start: p.f64_or("linear_start", 1e-4)?,
        beta_end: p.f64_or("linear_end", 2e-2)?,
        prediction,
        // The reference DDIM and PLMS samplers end on alpha_bar_0.
        set_alpha_to_one: false,
    };
    let autoencoder = first_stage(&p.required("first_stage_config")?)?;
    let unet_node = p.required("unet_config")?;
    let conditioning = conditioning(&p, &unet_node, &autoencoder)?;
    let unet = unet(&unet_node, &conditioning, &autoencoder)?;
    let resolution = p
        .required("first_stage_config")?
        .params()
        .required("ddconfig")?
        .usize_or("resolution", 256)?;
    let config = ModelConfig {
        resolution,
        autoencoder,
        unet,
        conditioning,
        diffusion,
    };
    config.validate()?;
    Ok(ReferenceConfig {
        config,
        scale_factor: p.f64_or("scale_factor", 1.0)?,
        scale_in_checkpoint: p.bool_or("scale_by_std", false)?,
    })
}

fn first_stage(node: &Node) -> Result<AutoencoderConfig, ImportError> {
    let target = node.target()?;
    let regularizer = match target {
        "ldm.models.autoencoder.AutoencoderKL" => FirstStage::Kl,
        "ldm.models.autoencoder.VQModelInterface" | "ldm.models.autoencoder.VQModel" => {
            FirstStage::Vq
        }
        other => {
            return Err(node.required("target")?.error(format!(
                "`{other}` is not a first stage this project runs (AutoencoderKL, VQModelInterface)"
            )))
        }
    };
    let p = node.params();
    let dd = p.required("ddconfig")?;
    let z_channels = dd.required("z_channels")?.as_usize()?;
    let embed_dim = p.required("embed_dim")?.as_usize()?;
    if embed_dim != z_channels {
        return Err(p.required("embed_dim")?.error(format!(
            "{embed_dim} differs from ddconfig.z_channels {z_channels}; only equal ones are supported"
        )));
    }
    let double_z = dd.bool_or("double_z", true)?;
    if double_z != (regularizer == FirstStage::Kl) {
        return Err(dd.required("double_z")?.error(format!(
            "{double_z} does not fit a {} first stage",
            if regularizer == FirstStage::Kl {
                "KL"
            } else {
                "VQ"
            }
        )));
    }
    let in_channels = dd.usize_or("in_channels", 3)?;
    let out_ch = dd.usize_or("out_ch", 3)?;
    if out_ch != in_channels {
        return Err(dd.required("out_ch")?.error(format!(
            "{out_ch} output channels for {in_channels} input channels is not an autoencoder"
        )));
    }
    let channel_mult = dd.usize_list("ch_mult")?;
    let codebook_size = match regularizer {
        FirstStage::Vq => Some(p.required("n_embed")?.as_usize()?),
        _ => None,
    };
    Ok(AutoencoderConfig {
        regularizer,
        factor: 1 << channel_mult.len().saturating_sub(1).min(16),
        latent_channels: z_channels,
        codebook_size,
        channels: dd.required("ch")?.as_usize()?,
        channel_mult,
        res_blocks: dd.required("num_res_blocks")?.as_usize()?,
        attn_resolutions: dd.usize_list("attn_resolutions")?,
        in_channels,
        groups: 32,
    })
}

/// `conditioning_key` and `cond_stage_config` as the reference resolves them: unconditional
/// when the stage is `__is_unconditional__`, else the key, else concatenation when
/// `concat_mode` (the default) and cross-attention otherwise.
fn conditioning(
    p: &Node,
    unet: &Node,
    autoencoder: &AutoencoderConfig,
) -> Result<Conditioning, ImportError> {
    let stage = p.required("cond_stage_config")?;
    if stage.value.as_str() == Some("__is_unconditional__") {
        return Ok(Conditioning::None);
    }
    let key = match p.get("conditioning_key") {
        Some(n) => n.as_str()?.to_string(),
        None if p.bool_or("concat_mode", true)? => "concat".into(),
        None => "crossattn".into(),
    };
    let target = match stage.value.as_str() {
        Some(name) => name,
        None => stage.target()?,
    };
    let latent = autoencoder.latent_channels;
    let in_channels = unet.params().required("in_channels")?.as_usize()?;
    let unsupported = |what: &str| {
        stage.error(format!(
            "`{target}` with conditioning_key `{key}` is not supported ({what})"
        ))
    };
    match (key.as_str(), target) {
        ("crossattn", "ldm.modules.encoders.modules.ClassEmbedder") => {
            let s = stage.params();
            let rows = s.usize_or("n_classes", 1000)?;
            Ok(Conditioning::Class {
                // ImageNet's 1000 classes and the null class 1000 that the reference's guided
                // ImageNet model (cin256-v2) samples with; this project's tables hold the null
                // class after the labels too.
                classes: if rows == IMAGENET_CLASSES + 1 {
                    IMAGENET_CLASSES
                } else {
                    rows
                },
                width: s.required("embed_dim")?.as_usize()?,
            })
        }
        (
            "crossattn",
            "ldm.modules.encoders.modules.BERTEmbedder"
            | "ldm.modules.encoders.modules.TransformerEmbedder",
        ) => {
            let s = stage.params();
            let width = s.required("n_embed")?.as_usize()?;
            Ok(Conditioning::Text {
                vocab_size: s.usize_or("vocab_size", 30522)?,
                max_length: s.usize_or("max_seq_len", 77)?,
                width,
                depth: s.required("n_layer")?.as_usize()?,
                heads: BERT_HEADS,
                head_channels: Some(BERT_HEAD_CHANNELS),
                encoder: TextEncoderKind::Ldm,
                activation: Activation::Gelu,
                mlp_width: None,
                positions: None,
                concat: None,
                layout: None,
                planner: None,
            })
        }
        ("concat", "torch.nn.Identity") if in_channels == latent + IMAGE_CHANNELS => {
            Ok(Conditioning::Concat {
                task: ConcatKind::SuperResolution,
                classes: None,
            })
        }
        ("concat", "__is_first_stage__") if in_channels == 2 * latent + 1 => {
            Ok(Conditioning::Concat {
                task: ConcatKind::Inpainting,
                classes: None,
            })
        }
        ("concat", _) => Err(unsupported(&format!(
            "concatenation is read as super-resolution (torch.nn.Identity, {} UNet inputs) or inpainting (__is_first_stage__, {}); this UNet takes {in_channels}",
            latent + IMAGE_CHANNELS,
            2 * latent + 1
        ))),
        ("crossattn", _) => Err(unsupported(
            "cross-attention is read from ClassEmbedder and BERTEmbedder; Stable Diffusion's files import without --config",
        )),
        _ => Err(unsupported("the keys read are crossattn and concat")),
    }
}

fn unet(
    node: &Node,
    conditioning: &Conditioning,
    autoencoder: &AutoencoderConfig,
) -> Result<UnetConfig, ImportError> {
    let target = node.target()?;
    if target != "ldm.modules.diffusionmodules.openaimodel.UNetModel" {
        return Err(node.required("target")?.error(format!(
            "`{target}` is not the reference UNet (ldm.modules.diffusionmodules.openaimodel.UNetModel)"
        )));
    }
    let p = node.params();
    p.refuse_unless("dims", &Value::from(2), "only 2-D UNets")?;
    p.refuse_unless(
        "conv_resample",
        &Value::from(true),
        "levels always resample with a convolution",
    )?;
    p.refuse_unless(
        "use_new_attention_order",
        &Value::from(false),
        "attention reads q, k, v per head in the legacy order",
    )?;
    p.refuse_unless("num_classes", &Value::Null, "class labels condition through a ClassEmbedder's cross-attention here, not the UNet's label embedding")?;
    p.refuse_unless(
        "n_embed",
        &Value::Null,
        "codebook-id prediction is not implemented",
    )?;
    let out_channels = p.required("out_channels")?.as_usize()?;
    if out_channels != autoencoder.latent_channels {
        return Err(p.required("out_channels")?.error(format!(
            "{out_channels} differs from the first stage's {} latent channels",
            autoencoder.latent_channels
        )));
    }
    let heads = p.optional_count("num_heads")?;
    let head_channels = p.optional_count("num_head_channels")?;
    // The reference sets the heads from the channels per head when both are given.
    let heads = if head_channels.is_some() { None } else { heads };
    if let Some(up) = p.optional_count("num_heads_upsample")? {
        if Some(up) != heads {
            return Err(p
                .required("num_heads_upsample")?
                .error("heads that differ between the down and up paths are not supported"));
        }
    }
    let spatial = p.bool_or("use_spatial_transformer", false)?;
    let wants_context = matches!(
        conditioning,
        Conditioning::Text { .. } | Conditioning::Class { .. }
    );
    if spatial != wants_context {
        return Err(p.child("use_spatial_transformer", &Value::Null).error(format!(
            "{spatial} with this conditioning: cross-attention conditionings need spatial transformers, the others the plain attention block"
        )));
    }
    let width = match conditioning {
        Conditioning::Text { width, .. } | Conditioning::Class { width, .. } => Some(*width),
        _ => None,
    };
    if let Some(width) = width {
        let context = p.required("context_dim")?;
        if context.as_usize()? != width {
            return Err(context.error(format!(
                "differs from the conditioning stage's width {width}"
            )));
        }
    }
    let channel_mult = p.usize_list("channel_mult")?;
    // The reference only ever compares the rate it reaches with the list: rates beyond the
    // deepest level (the super-resolution model's 16 with 4 levels) have no effect.
    let deepest = 1usize << channel_mult.len().saturating_sub(1).min(16);
    let mut attention_resolutions = p.usize_list("attention_resolutions")?;
    attention_resolutions.retain(|&rate| rate <= deepest);
    Ok(UnetConfig {
        model_channels: p.required("model_channels")?.as_usize()?,
        channel_mult,
        res_blocks: p.required("num_res_blocks")?.as_usize()?,
        attention_resolutions,
        heads,
        head_channels,
        transformer_depth: p.usize_or("transformer_depth", 1)?,
        groups: 32,
        linear_projection: p.bool_or("use_linear_in_transformer", false)?,
        scale_shift_norm: p.bool_or("use_scale_shift_norm", false)?,
        resblock_updown: p.bool_or("resblock_updown", false)?,
        position_frequencies: 0,
    })
}
