//! Model configurations (`models/*.toml`), validated on load with errors naming the field.

use std::path::Path;

use ldm_core::layout::{EdgeIds, LayoutVocabulary};

use crate::conditioning::TextEncoderShape;
pub use ldm_core::manifest::{ConcatKind, FirstStage, LinearSchedule};
use ldm_core::NoiseSchedule;
use serde::{Deserialize, Serialize};

use crate::NnError;

/// A whole latent diffusion model: first stage, denoiser and conditioning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Side of the square training images, in pixels.
    pub resolution: usize,
    pub autoencoder: AutoencoderConfig,
    pub unet: UnetConfig,
    #[serde(default)]
    pub conditioning: Conditioning,
    #[serde(default)]
    pub diffusion: DiffusionConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderConfig {
    pub regularizer: FirstStage,
    /// Downsampling factor f = 2^m; must equal 2^(levels - 1).
    pub factor: usize,
    /// Latent channels c (for VQ also the codebook vector size).
    pub latent_channels: usize,
    /// Codebook entries |Z| (VQ only).
    #[serde(default)]
    pub codebook_size: Option<usize>,
    /// Channels of the first level.
    #[serde(default = "default_ae_channels")]
    pub channels: usize,
    /// Channel multiplier per level; one level per halving plus one.
    #[serde(default)]
    pub channel_mult: Vec<usize>,
    /// ResNet blocks per level.
    #[serde(default = "default_two")]
    pub res_blocks: usize,
    /// Pixel resolutions (of the feature maps) that get self-attention, besides the middle.
    #[serde(default)]
    pub attn_resolutions: Vec<usize>,
    /// Image channels.
    #[serde(default = "default_image_channels")]
    pub in_channels: usize,
    /// Groups of every group normalisation.
    #[serde(default = "default_groups")]
    pub groups: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetConfig {
    /// Channels of the first level.
    pub model_channels: usize,
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level.
    #[serde(default = "default_two")]
    pub res_blocks: usize,
    /// Downsampling rates (1, 2, 4, ...) at which a SpatialTransformer follows each block.
    #[serde(default)]
    pub attention_resolutions: Vec<usize>,
    /// Attention heads (give this or `head_channels`).
    #[serde(default)]
    pub heads: Option<usize>,
    /// Channels per attention head (give this or `heads`).
    #[serde(default)]
    pub head_channels: Option<usize>,
    /// Transformer blocks per SpatialTransformer.
    #[serde(default = "default_one")]
    pub transformer_depth: usize,
    /// SpatialTransformer projections in and out as linear layers on tokens instead of 1x1
    /// convolutions (the reference's `use_linear_in_transformer`, Stable Diffusion 2.x).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub linear_projection: bool,
    /// The timestep embedding scales and shifts each ResBlock's second normalisation
    /// (`h = norm(h) · (1 + scale) + shift`) instead of being added before it (the reference's
    /// `use_scale_shift_norm`, from Dhariwal & Nichol's ADM).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scale_shift_norm: bool,
    /// Levels change size through ResBlocks that average-pool or upsample inside, instead of
    /// a strided convolution down and a convolution after upsampling (the reference's
    /// `resblock_updown`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resblock_updown: bool,
    /// Fourier features of where each position is (its coordinates in (-1, 1) at frequencies
    /// pi · 2^k for k below this), projected by a zero-initialised 1x1 convolution into every
    /// SpatialTransformer's normalised input: the queries know their place, so cross-attention
    /// can put what the context names where it says (layouts, "at the top left"). 0 (the
    /// reference's UNet): none; at most [`MAX_POSITION_FREQUENCIES`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub position_frequencies: usize,
    #[serde(default = "default_groups")]
    pub groups: usize,
}

/// A bound on the position features' work. A frequency pi · 2^k has a period of n / 2^k
/// cells on a grid n cells wide, so where that is under two cells (2^k > n / 2) it is constant
/// or aliased there and adds nothing: on the 4x4 and 8x8 grids of small models, k < 2 and
/// k < 3 are what count.
pub const MAX_POSITION_FREQUENCIES: usize = 8;

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// What conditions the denoiser (paper 3.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Conditioning {
    /// Unconditional.
    #[default]
    None,
    /// Captions through a transformer trained jointly with the UNet (E.2.1).
    Text {
        vocab_size: usize,
        /// Token sequence length.
        #[serde(default = "default_max_length")]
        max_length: usize,
        /// Token width, also the context width of cross-attention.
        width: usize,
        depth: usize,
        heads: usize,
        /// Channels per head; `width / heads` when absent (x-transformers, which the paper's
        /// encoder follows, uses 64).
        #[serde(default)]
        head_channels: Option<usize>,
        /// Which transformer: the paper's, trained jointly (the default), or CLIP's, as
        /// Stable Diffusion uses it (imported).
        #[serde(default, skip_serializing_if = "TextEncoderKind::is_ldm")]
        encoder: TextEncoderKind,
        /// The MLP's activation (CLIP: `quick_gelu` in ViT-L/14, `gelu` in OpenCLIP ViT-H/14).
        #[serde(default, skip_serializing_if = "Activation::is_gelu")]
        activation: Activation,
        /// The MLP's hidden width; 4 x width when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mlp_width: Option<usize>,
        /// Rows of the position table; max_length when absent (CLIP may hold more).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        positions: Option<usize>,
        /// Channels concatenated to the latent besides the context (Stable Diffusion's
        /// inpainting UNets: `mask_first_inpainting`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        concat: Option<ConcatKind>,
        /// Layout-to-image (paper 4.3.1): the prompts are bounding-box layouts, tokenized
        /// by this fixed vocabulary (`ldm_core::layout`) instead of a tokenizer trained on
        /// captions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layout: Option<LayoutVocabulary>,
        /// A layout model's caption reader: the prompts are captions, which it turns into the
        /// layout the model draws (`ldm_core::layout_plan`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        planner: Option<PlannerConfig>,
    },
    /// Class labels through a learned embedding to a 1 x width context.
    Class { classes: usize, width: usize },
    /// Extra input channels concatenated to the latent (paper 4.3.2, 4.4, 4.5).
    Concat {
        task: ConcatKind,
        /// Classes of a semantic map (`task = "semantic_map"`), the background included.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classes: Option<usize>,
    },
}

/// A layout planner: a transformer over a caption's tokens (its own tokenizer, trained on the
/// captions) and per slot a decoder block, whose scores pick each object's class, colour and
/// box (`ldm_nn::planner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannerConfig {
    pub vocab_size: usize,
    pub max_length: usize,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
}

/// The text transformer of a text-conditioned model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TextEncoderKind {
    /// The paper's (E.2.1): unmasked pre-LayerNorm blocks over token + position embeddings,
    /// parameters `token_emb`, `pos_emb`, `layers.N.*`, `norm`.
    #[default]
    Ldm,
    /// CLIP's text transformer as `transformers` names it (`embeddings.*`,
    /// `encoder.layers.N.*`, `final_layer_norm`): causal self-attention with biased
    /// projections; its last hidden state is the context.
    Clip,
}

impl TextEncoderKind {
    fn is_ldm(&self) -> bool {
        *self == TextEncoderKind::Ldm
    }
}

/// The activation of a transformer's MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// GELU in its erf form.
    #[default]
    Gelu,
    /// x · sigmoid(1.702 x), OpenAI CLIP's approximation.
    QuickGelu,
}

impl Activation {
    fn is_gelu(&self) -> bool {
        *self == Activation::Gelu
    }
}

/// The forward process: the reference implementation's "linear" schedule (see
/// [`LinearSchedule`]), written without a `kind` in a configuration's `[diffusion]` section.
pub type DiffusionConfig = LinearSchedule;

fn default_ae_channels() -> usize {
    128
}
fn default_two() -> usize {
    2
}
fn default_one() -> usize {
    1
}
fn default_image_channels() -> usize {
    3
}
fn default_groups() -> usize {
    32
}
fn default_max_length() -> usize {
    77
}

fn check(ok: bool, field: &str, message: impl FnOnce() -> String) -> Result<(), NnError> {
    if ok {
        Ok(())
    } else {
        Err(NnError::config(field, message()))
    }
}

impl ModelConfig {
    /// The noise schedule of the `[diffusion]` section.
    pub fn noise_schedule(&self) -> Result<NoiseSchedule, NnError> {
        self.diffusion
            .noise_schedule()
            .map_err(|e| NnError::config("diffusion", e.to_string()))
    }

    /// Reads and validates a TOML configuration.
    pub fn load(path: &Path) -> Result<Self, NnError> {
        let text = std::fs::read_to_string(path).map_err(|e| NnError::ConfigFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text).map_err(|e| match e {
            NnError::ConfigFile { message, .. } => NnError::ConfigFile {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, NnError> {
        let config: ModelConfig = toml::from_str(text).map_err(|e| NnError::ConfigFile {
            path: "<text>".into(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), NnError> {
        let ae = &self.autoencoder;
        check(
            ae.factor.is_power_of_two() && ae.factor <= 32,
            "autoencoder.factor",
            || format!("{} is not a power of two from 1 to 32", ae.factor),
        )?;
        check(
            self.resolution.is_multiple_of(ae.factor) && self.resolution > 0,
            "resolution",
            || {
                format!(
                    "{} is not a multiple of autoencoder.factor = {}",
                    self.resolution, ae.factor
                )
            },
        )?;
        check((1..=4096).contains(&self.resolution), "resolution", || {
            format!("{} is outside 1..=4096", self.resolution)
        })?;
        ae.validate(self.resolution)?;
        self.unet.validate(self.latent_resolution())?;
        self.conditioning.validate()?;
        self.noise_schedule().map(|_| ())
    }

    /// Side of the latent: resolution / f.
    pub fn latent_resolution(&self) -> usize {
        self.resolution / self.autoencoder.factor
    }

    /// Channels the UNet sees: the latent plus any concatenated conditioning.
    pub fn unet_in_channels(&self) -> usize {
        let ae = &self.autoencoder;
        ae.latent_channels
            + match self.conditioning.concat_task() {
                Some(ConcatKind::SuperResolution) => ae.in_channels,
                Some(ConcatKind::Inpainting | ConcatKind::MaskFirstInpainting) => {
                    ae.latent_channels + 1
                }
                Some(ConcatKind::SemanticMap) => self.conditioning.semantic_classes().unwrap_or(0),
                None => 0,
            }
    }

    /// Width of the cross-attention context, if the model has one: the encoder's width, and
    /// with box attention each token's box after it.
    pub fn context_dim(&self) -> Option<usize> {
        let boxes = if self.box_tokens().is_some() {
            crate::unet::BOX_CHANNELS
        } else {
            0
        };
        match self.conditioning {
            Conditioning::Text { width, .. } | Conditioning::Class { width, .. } => {
                Some(width + boxes)
            }
            _ => None,
        }
    }

    /// Tokens of the cross-attention context, if the model has one.
    pub fn context_length(&self) -> Option<usize> {
        match self.conditioning {
            Conditioning::Text { max_length, .. } => Some(max_length),
            Conditioning::Class { .. } => Some(1),
            _ => None,
        }
    }

    /// The model without its layout planner: the layout model the planner plans for.
    pub fn without_planner(&self) -> ModelConfig {
        let mut config = self.clone();
        if let Conditioning::Text { planner, .. } = &mut config.conditioning {
            *planner = None;
        }
        config
    }

    /// Where a box-attention layout model's edge words are among its token ids.
    pub fn box_tokens(&self) -> Option<EdgeIds> {
        self.conditioning
            .layout()
            .filter(|layout| layout.box_attention)
            .map(LayoutVocabulary::edge_ids)
    }
}

impl AutoencoderConfig {
    fn validate(&self, resolution: usize) -> Result<(), NnError> {
        check(
            self.latent_channels > 0,
            "autoencoder.latent_channels",
            || "must be at least 1".into(),
        )?;
        if self.regularizer == FirstStage::Identity {
            check(self.factor == 1, "autoencoder.factor", || {
                format!(
                    "{} with regularizer = \"identity\" (no first stage means f = 1)",
                    self.factor
                )
            })?;
            return check(
                self.latent_channels == self.in_channels,
                "autoencoder.latent_channels",
                || {
                    format!(
                        "{} but an identity first stage keeps the {} image channels",
                        self.latent_channels, self.in_channels
                    )
                },
            );
        }
        let levels = self.channel_mult.len();
        check(
            levels >= 1 && 1 << (levels - 1) == self.factor,
            "autoencoder.channel_mult",
            || {
                format!(
                    "{levels} levels give f = 2^{} but factor = {}",
                    levels.saturating_sub(1),
                    self.factor
                )
            },
        )?;
        check(self.groups > 0, "autoencoder.groups", || {
            "must be at least 1".into()
        })?;
        for (i, m) in self.channel_mult.iter().enumerate() {
            let c = self.channels * m;
            check(
                c > 0 && c.is_multiple_of(self.groups),
                &format!("autoencoder.channel_mult[{i}]"),
                || {
                    format!(
                        "{} x {m} = {c} channels are not divisible by groups = {}",
                        self.channels, self.groups
                    )
                },
            )?;
        }
        let reached: Vec<usize> = (0..levels).map(|i| resolution >> i).collect();
        for r in &self.attn_resolutions {
            check(reached.contains(r), "autoencoder.attn_resolutions", || {
                format!("{r} is never reached (the encoder sees {reached:?})")
            })?;
        }
        match (self.regularizer, self.codebook_size) {
            (FirstStage::Vq, None | Some(0)) => Err(NnError::config(
                "autoencoder.codebook_size",
                "a VQ autoencoder needs codebook_size >= 1",
            )),
            (FirstStage::Kl, Some(_)) => Err(NnError::config(
                "autoencoder.codebook_size",
                "only a VQ autoencoder has a codebook",
            )),
            _ => Ok(()),
        }
    }
}

impl UnetConfig {
    fn validate(&self, latent_resolution: usize) -> Result<(), NnError> {
        check(
            self.position_frequencies <= MAX_POSITION_FREQUENCIES,
            "unet.position_frequencies",
            || {
                format!(
                    "{} is above {MAX_POSITION_FREQUENCIES}",
                    self.position_frequencies
                )
            },
        )?;
        let levels = self.channel_mult.len();
        check(levels >= 1, "unet.channel_mult", || {
            "needs at least one level".into()
        })?;
        check(
            latent_resolution.is_multiple_of(1 << (levels - 1)),
            "unet.channel_mult",
            || {
                format!("{levels} levels halve the {latent_resolution}-pixel latent {} times, which does not divide it", levels - 1)
            },
        )?;
        check(
            self.groups > 0 && self.model_channels > 0,
            "unet.groups",
            || "groups and model_channels must be at least 1".into(),
        )?;
        for (i, m) in self.channel_mult.iter().enumerate() {
            let c = self.model_channels * m;
            check(
                c > 0 && c.is_multiple_of(self.groups),
                &format!("unet.channel_mult[{i}]"),
                || {
                    format!(
                        "{} x {m} = {c} channels are not divisible by groups = {}",
                        self.model_channels, self.groups
                    )
                },
            )?;
            self.head_layout(c)
                .map_err(|m| NnError::config(format!("unet.channel_mult[{i}]"), m))?;
        }
        let rates: Vec<usize> = (0..levels).map(|i| 1 << i).collect();
        for r in &self.attention_resolutions {
            check(rates.contains(r), "unet.attention_resolutions", || {
                format!("{r} is never reached (downsampling rates are {rates:?})")
            })?;
        }
        check(
            self.transformer_depth >= 1,
            "unet.transformer_depth",
            || "must be at least 1".into(),
        )
    }

    /// (heads, channels per head) of attention over `channels` channels.
    pub fn head_layout(&self, channels: usize) -> Result<(usize, usize), String> {
        match (self.heads, self.head_channels) {
            (Some(h), None) if h > 0 && channels.is_multiple_of(h) => Ok((h, channels / h)),
            (None, Some(d)) if d > 0 && channels.is_multiple_of(d) => Ok((channels / d, d)),
            (Some(_), Some(_)) | (None, None) => {
                Err("set exactly one of unet.heads and unet.head_channels".into())
            }
            (h, d) => Err(format!(
                "{channels} channels do not split into {}",
                h.map(|h| format!("{h} heads"))
                    .unwrap_or_else(|| format!("heads of {} channels", d.unwrap_or(0)))
            )),
        }
    }
}

impl PlannerConfig {
    fn validate(&self) -> Result<(), NnError> {
        check(
            self.vocab_size >= 2,
            "conditioning.planner.vocab_size",
            || format!("{} is too small", self.vocab_size),
        )?;
        check(
            (1..=4096).contains(&self.max_length),
            "conditioning.planner.max_length",
            || format!("{} is outside 1..=4096", self.max_length),
        )?;
        check(self.depth >= 1, "conditioning.planner.depth", || {
            "must be at least 1".into()
        })?;
        check(
            self.heads >= 1 && self.width >= self.heads && self.width.is_multiple_of(self.heads),
            "conditioning.planner.width",
            || format!("{} does not split into {} heads", self.width, self.heads),
        )
    }

    /// Its caption transformer's sizes.
    pub fn encoder_shape(&self) -> TextEncoderShape {
        TextEncoderShape {
            vocab_size: self.vocab_size,
            max_length: self.max_length,
            width: self.width,
            depth: self.depth,
            heads: self.heads,
            head_dim: self.width / self.heads,
            encoder: TextEncoderKind::Ldm,
            activation: Activation::Gelu,
            mlp_width: 4 * self.width,
            positions: self.max_length,
            boxes: None,
        }
    }
}

/// A layout model's vocabulary, and the text sizes it fixes.
fn check_layout(
    layout: &LayoutVocabulary,
    vocab_size: usize,
    max_length: usize,
    encoder: TextEncoderKind,
) -> Result<(), NnError> {
    layout
        .validate()
        .map_err(|e| NnError::config("conditioning.layout", e.to_string()))?;
    let needed = layout.words().len() + ldm_core::tokenizer::SPECIAL_TOKENS;
    check(vocab_size >= needed, "conditioning.vocab_size", || {
        format!("{vocab_size} is below the layout vocabulary's {needed} tokens")
    })?;
    check(
        max_length == layout.max_length(),
        "conditioning.max_length",
        || {
            format!(
                "{max_length}, but a layout of up to {} objects takes {} tokens",
                layout.max_objects,
                layout.max_length()
            )
        },
    )?;
    check(
        encoder == TextEncoderKind::Ldm,
        "conditioning.encoder",
        || "layouts are encoded by the jointly trained transformer (encoder = \"ldm\")".into(),
    )
}

impl Conditioning {
    /// The box vocabulary of a layout-to-image model.
    pub fn layout(&self) -> Option<&LayoutVocabulary> {
        match self {
            Conditioning::Text { layout, .. } => layout.as_ref(),
            _ => None,
        }
    }

    /// The caption reader of a layout model that takes captions.
    pub fn planner(&self) -> Option<&PlannerConfig> {
        match self {
            Conditioning::Text { planner, .. } => planner.as_ref(),
            _ => None,
        }
    }

    /// What the UNet's `concat` input carries, if it has one.
    pub fn concat_task(&self) -> Option<ConcatKind> {
        match *self {
            Conditioning::Concat { task, .. } => Some(task),
            Conditioning::Text { concat, .. } => concat,
            Conditioning::None | Conditioning::Class { .. } => None,
        }
    }

    /// The classes of a semantic-map model's maps.
    pub fn semantic_classes(&self) -> Option<usize> {
        match *self {
            Conditioning::Concat {
                task: ConcatKind::SemanticMap,
                classes,
            } => classes,
            _ => None,
        }
    }

    fn validate(&self) -> Result<(), NnError> {
        match *self {
            Conditioning::Concat { task, classes } => {
                let semantic = task == ConcatKind::SemanticMap;
                check(
                    classes.is_some() == semantic,
                    "conditioning.classes",
                    || {
                        if semantic {
                            "a semantic map model needs its class count (the background included)"
                                .into()
                        } else {
                            format!("only semantic_map models take classes, not {task:?}")
                        }
                    },
                )?;
                check(
                    classes.is_none_or(|c| (2..=ldm_core::semantic::MAX_CLASSES).contains(&c)),
                    "conditioning.classes",
                    || {
                        format!(
                            "{classes:?} is outside 2..={}",
                            ldm_core::semantic::MAX_CLASSES
                        )
                    },
                )
            }
            Conditioning::Text {
                vocab_size,
                max_length,
                width,
                depth,
                heads,
                head_channels,
                mlp_width,
                positions,
                concat,
                ref layout,
                planner,
                encoder,
                ..
            } => {
                if let Some(layout) = layout {
                    check_layout(layout, vocab_size, max_length, encoder)?;
                }
                if let Some(planner) = planner {
                    check(layout.is_some(), "conditioning.planner", || {
                        "plans layouts, so it needs [conditioning.layout]".into()
                    })?;
                    planner.validate()?;
                }
                check(
                    concat != Some(ConcatKind::SemanticMap),
                    "conditioning.concat",
                    || {
                        "semantic maps condition concatenation models (conditioning.kind = \"concat\"), not text ones".into()
                    },
                )?;
                check(mlp_width != Some(0), "conditioning.mlp_width", || {
                    "must be at least 1".into()
                })?;
                check(
                    positions.is_none_or(|p| p >= max_length),
                    "conditioning.positions",
                    || format!("{positions:?} is fewer than max_length = {max_length}"),
                )?;
                check(vocab_size >= 2, "conditioning.vocab_size", || {
                    format!("{vocab_size} is too small")
                })?;
                check(
                    (1..=4096).contains(&max_length),
                    "conditioning.max_length",
                    || format!("{max_length} is outside 1..=4096"),
                )?;
                check(depth >= 1, "conditioning.depth", || {
                    "must be at least 1".into()
                })?;
                check(
                    head_channels != Some(0),
                    "conditioning.head_channels",
                    || "must be at least 1".into(),
                )?;
                check(
                    heads >= 1 && (head_channels.is_some() || width % heads == 0),
                    "conditioning.width",
                    || format!("{width} does not split into {heads} heads"),
                )
            }
            Conditioning::Class { classes, width } => {
                check(classes >= 1, "conditioning.classes", || {
                    "must be at least 1".into()
                })?;
                check(width >= 1, "conditioning.width", || {
                    "must be at least 1".into()
                })
            }
            Conditioning::None => Ok(()),
        }
    }
}
