//! The perceptual autoencoder of paper 3.1 / G, following the reference `Encoder`/`Decoder`
//! (CompVis/latent-diffusion `ldm/modules/diffusionmodules/model.py`): ResNet blocks per level,
//! a middle block with self-attention, KL or VQ regularisation of the latent.

use crate::config::{AutoencoderConfig, FirstStage};
use crate::layers::{conv1x1, conv2d, conv3x3, from_tokens, group_norm, to_tokens, Path};
use crate::ops::{Dim, Init, Keys, Ops, Result};

/// The autoencoder's normalisations use eps = 1e-6, as in the reference.
const EPS: f64 = 1e-6;

/// norm1 -> SiLU -> conv1 -> norm2 -> SiLU -> conv2, plus a 1x1 `nin_shortcut` when the
/// channel count changes.
fn resnet_block<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    cin: usize,
    cout: usize,
    groups: usize,
) -> Result<O::T> {
    let h = group_norm(o, &p.pp("norm1"), x, cin, groups, EPS)?;
    let h = o.silu(&h)?;
    let h = conv3x3(o, &p.pp("conv1"), &h, cin, cout)?;
    let h = group_norm(o, &p.pp("norm2"), &h, cout, groups, EPS)?;
    let h = o.silu(&h)?;
    let h = conv3x3(o, &p.pp("conv2"), &h, cout, cout)?;
    let shortcut = if cin == cout {
        None
    } else {
        Some(conv1x1(o, &p.pp("nin_shortcut"), x, cin, cout)?)
    };
    o.add(shortcut.as_ref().unwrap_or(x), &h)
}

/// Single-head self-attention over all positions, with 1x1 convolutions q, k, v, proj_out.
fn attn_block<O: Ops>(o: &mut O, p: &Path, x: &O::T, c: usize, groups: usize) -> Result<O::T> {
    let h = group_norm(o, &p.pp("norm"), x, c, groups, EPS)?;
    let q = conv1x1(o, &p.pp("q"), &h, c, c)?;
    let k = conv1x1(o, &p.pp("k"), &h, c, c)?;
    let v = conv1x1(o, &p.pp("v"), &h, c, c)?;
    // [B, HW, C] with a unit head axis: [B, 1, HW, C]
    let tokens = |o: &mut O, t: &O::T| -> Result<O::T> {
        let t = to_tokens(o, t)?;
        o.reshape(&t, &[Dim::Keep, Dim::Fixed(1), Dim::Infer, Dim::Fixed(c)])
    };
    let (q, k, v) = (tokens(o, &q)?, tokens(o, &k)?, tokens(o, &v)?);
    let a = o.attention(&q, &k, &v, c, Keys::Positions)?;
    let a = o.reshape(&a, &[Dim::Keep, Dim::Infer, Dim::Fixed(c)])?;
    let a = from_tokens(o, &a, x)?;
    let a = conv1x1(o, &p.pp("proj_out"), &a, c, c)?;
    o.add(x, &a)
}

fn middle<O: Ops>(o: &mut O, p: &Path, x: &O::T, c: usize, groups: usize) -> Result<O::T> {
    let h = resnet_block(o, &p.pp("block_1"), x, c, c, groups)?;
    let h = attn_block(o, &p.pp("attn_1"), &h, c, groups)?;
    resnet_block(o, &p.pp("block_2"), &h, c, c, groups)
}

/// Image [B, 3, H, W] in [-1, 1] -> latent moments.
///
/// KL: [B, 2c, H/f, W/f], mean then log-variance (already clamped to [-30, 20]).
/// VQ: the pre-quantisation latent [B, c, H/f, W/f]. Identity: the image itself.
///
/// `resolution` is the training image side: it places attention (`attn_resolutions`).
pub fn encode<O: Ops>(
    o: &mut O,
    cfg: &AutoencoderConfig,
    resolution: usize,
    image: &O::T,
) -> Result<O::T> {
    if cfg.regularizer == FirstStage::Identity {
        return Ok(o.alias(image));
    }
    let p = Path::root("encoder");
    let (ch, g) = (cfg.channels, cfg.groups);
    let mut h = conv3x3(o, &p.pp("conv_in"), image, cfg.in_channels, ch)?;
    let mut block_in = ch;
    let levels = cfg.channel_mult.len();
    for (level, mult) in cfg.channel_mult.iter().enumerate() {
        let down = p.pp("down").pp(level);
        let block_out = ch * mult;
        for i in 0..cfg.res_blocks {
            h = resnet_block(o, &down.pp("block").pp(i), &h, block_in, block_out, g)?;
            block_in = block_out;
            if cfg.attn_resolutions.contains(&(resolution >> level)) {
                h = attn_block(o, &down.pp("attn").pp(i), &h, block_in, g)?;
            }
        }
        if level + 1 < levels {
            // The reference pads right and bottom by one, then convolves with stride 2.
            let padded = o.pad2d(&h, [0, 1, 0, 1])?;
            h = conv2d(
                o,
                &down.pp("downsample").pp("conv"),
                &padded,
                block_in,
                block_in,
                3,
                2,
                0,
                false,
            )?;
        }
    }
    h = middle(o, &p.pp("mid"), &h, block_in, g)?;
    h = group_norm(o, &p.pp("norm_out"), &h, block_in, g, EPS)?;
    h = o.silu(&h)?;
    let c = cfg.latent_channels;
    match cfg.regularizer {
        FirstStage::Kl => {
            let h = conv3x3(o, &p.pp("conv_out"), &h, block_in, 2 * c)?;
            let moments = conv1x1(o, &Path::root("quant_conv"), &h, 2 * c, 2 * c)?;
            let mean = o.narrow(&moments, 1, 0, c)?;
            let logvar = o.narrow(&moments, 1, c, c)?;
            let logvar = o.clamp(&logvar, -30.0, 20.0)?;
            o.concat(&[&mean, &logvar], 1)
        }
        FirstStage::Vq => {
            let h = conv3x3(o, &p.pp("conv_out"), &h, block_in, c)?;
            conv1x1(o, &Path::root("quant_conv"), &h, c, c)
        }
        FirstStage::Identity => unreachable!("handled above"),
    }
}

/// The result of vector quantisation.
pub struct Quantized<T> {
    /// The codebook vectors, carrying the encoder's gradient (straight-through estimator):
    /// what the decoder sees.
    pub latent: T,
    /// The same values with the codebook's gradient, for the codebook loss.
    pub codes: T,
    /// Chosen entry per position, [B, H, W].
    pub indices: T,
}

/// Nearest codebook entry per position of `z` [B, c, H, W] (VQ).
pub fn quantize<O: Ops>(o: &mut O, cfg: &AutoencoderConfig, z: &O::T) -> Result<Quantized<O::T>> {
    let (n, d) = (cfg.codebook_size.unwrap_or(0), cfg.latent_channels);
    let book = o.param("quantize.embedding.weight", &[n, d], Init::FanIn(n))?;
    let zt = o.permute(z, &[0, 2, 3, 1])?; // [B, H, W, d]
                                           // |z - e|² = |z|² - 2 z·e + |e|²
    let z2 = o.sum_squares(&zt)?;
    let e2 = o.sum_squares(&book)?;
    let e2 = o.reshape(&e2, &[Dim::Fixed(n)])?;
    let bt = o.permute(&book, &[1, 0])?;
    let ze = o.matmul(&zt, &bt)?;
    let ze = o.scale(&ze, -2.0)?;
    let dist = o.add(&z2, &ze)?;
    let dist = o.add(&dist, &e2)?;
    let indices = o.argmin(&dist)?;
    let zq = o.embedding(&book, &indices)?;
    let codes = o.permute(&zq, &[0, 3, 1, 2])?;
    let latent = o.straight_through(&codes, z)?;
    Ok(Quantized {
        latent,
        codes,
        indices,
    })
}

/// Latent [B, c, H/f, W/f] -> image [B, 3, H, W]. For VQ the latent is the
/// pre-quantisation one; the quantiser is the decoder's first layer (paper 3.1).
pub fn decode<O: Ops>(
    o: &mut O,
    cfg: &AutoencoderConfig,
    resolution: usize,
    latent: &O::T,
) -> Result<O::T> {
    match cfg.regularizer {
        FirstStage::Identity => Ok(o.alias(latent)),
        FirstStage::Vq => {
            let quantized = quantize(o, cfg, latent)?;
            decode_quantized(o, cfg, resolution, &quantized.latent)
        }
        FirstStage::Kl => decode_quantized(o, cfg, resolution, latent),
    }
}

/// The decoder proper, after any quantisation.
pub fn decode_quantized<O: Ops>(
    o: &mut O,
    cfg: &AutoencoderConfig,
    resolution: usize,
    z: &O::T,
) -> Result<O::T> {
    let p = Path::root("decoder");
    let (ch, g, c) = (cfg.channels, cfg.groups, cfg.latent_channels);
    let levels = cfg.channel_mult.len();
    let z = conv1x1(o, &Path::root("post_quant_conv"), z, c, c)?;
    let mut block_in = ch * cfg.channel_mult[levels - 1];
    let mut h = conv3x3(o, &p.pp("conv_in"), &z, c, block_in)?;
    h = middle(o, &p.pp("mid"), &h, block_in, g)?;
    for level in (0..levels).rev() {
        let up = p.pp("up").pp(level);
        let block_out = ch * cfg.channel_mult[level];
        for i in 0..=cfg.res_blocks {
            h = resnet_block(o, &up.pp("block").pp(i), &h, block_in, block_out, g)?;
            block_in = block_out;
            if cfg.attn_resolutions.contains(&(resolution >> level)) {
                h = attn_block(o, &up.pp("attn").pp(i), &h, block_in, g)?;
            }
        }
        if level > 0 {
            let u = o.upsample2x(&h)?;
            h = conv3x3(o, &up.pp("upsample").pp("conv"), &u, block_in, block_in)?;
        }
    }
    h = group_norm(o, &p.pp("norm_out"), &h, block_in, g, EPS)?;
    h = o.silu(&h)?;
    conv3x3(o, &p.pp("conv_out"), &h, block_in, cfg.in_channels)
}
