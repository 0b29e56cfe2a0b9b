//! The time-conditional UNet of paper 3.2/3.3 (Table 16), after the reference `UNetModel`
//! (`openaimodel.py`) with `SpatialTransformer` blocks (`attention.py`): parameter names
//! follow the reference so its layout can be compared key by key.

use crate::config::UnetConfig;
use crate::layers::{
    conv2d, conv3x3, from_tokens, group_norm, layer_norm, linear, merge_heads,
    multi_head_attention, split_heads, to_tokens, Path,
};
use crate::ops::{Dim, Keys, Ops, Result};

/// GroupNorm eps of the UNet's ResBlocks (`normalization` in the reference) and of the
/// SpatialTransformer's input norm.
const RES_EPS: f64 = 1e-5;
const TRANSFORMER_EPS: f64 = 1e-6;

/// What the UNet is built for: channels in and out, and the cross-attention context width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnetIo {
    pub in_channels: usize,
    pub out_channels: usize,
    /// None: no context (unconditional or concatenation models), plain self-attention blocks.
    pub context_dim: Option<usize>,
    /// Whether the context's last [`BOX_CHANNELS`] channels are each token's box, which
    /// cross-attention reads only from near it ([`box_bias`]).
    pub context_boxes: bool,
}

/// A token's box in a box-attention context: left, top, right, bottom, in fractions of the
/// image's sides.
pub const BOX_CHANNELS: usize = 4;

/// How fast cross-attention scores fall outside a token's box, per image side of distance:
/// one 8x8 cell (1/8) outside costs 6 in the scores (weights / 400), the next 6 more.
const BOX_SHARPNESS: f32 = 48.0;

/// Sinusoidal embedding of (float) timesteps [B] -> [B, dim]: cos then sin halves, with
/// frequencies exp(-ln(10000) · i / (dim/2)) as in the reference `timestep_embedding`.
pub fn timestep_embedding<O: Ops>(o: &mut O, t: &O::T, dim: usize) -> Result<O::T> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = o.constant(&freqs, &[1, half])?;
    let t = o.reshape(t, &[Dim::Infer, Dim::Fixed(1)])?;
    let args = o.mul(&t, &freqs)?;
    let (c, s) = (o.cos(&args)?, o.sin(&args)?);
    o.concat(&[&c, &s], 1)
}

/// Whether a ResBlock also changes the size (`resblock_updown`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Resample {
    Keep,
    /// 2x2 average pooling of the input and of the normalised features.
    Down,
    /// Nearest upsampling by 2 of the input and of the normalised features.
    Up,
}

fn resample<O: Ops>(o: &mut O, x: &O::T, how: Resample) -> Result<O::T> {
    match how {
        Resample::Keep => Ok(o.alias(x)),
        Resample::Down => o.avg_pool2x(x),
        Resample::Up => o.upsample2x(x),
    }
}

/// in_layers (norm, SiLU, [resample], conv) + emb_layers (SiLU, linear) + out_layers (norm,
/// SiLU, zero conv), with a 1x1 skip_connection when channels change. The embedding is added
/// before out_layers' norm, or with `scale_shift_norm` scales and shifts its output.
#[allow(clippy::too_many_arguments)]
fn res_block<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    emb: &O::T,
    cin: usize,
    cout: usize,
    cfg: &UnetConfig,
    how: Resample,
) -> Result<O::T> {
    let (g, emb_dim) = (cfg.groups, 4 * cfg.model_channels);
    let h = group_norm(o, &p.pp("in_layers").pp(0), x, cin, g, RES_EPS)?;
    let h = o.silu(&h)?;
    let h = resample(o, &h, how)?;
    let x = resample(o, x, how)?;
    let h = conv3x3(o, &p.pp("in_layers").pp(2), &h, cin, cout)?;
    let e = o.silu(emb)?;
    let e_out = if cfg.scale_shift_norm { 2 * cout } else { cout };
    let e = linear(o, &p.pp("emb_layers").pp(1), &e, emb_dim, e_out, true)?;
    let e = o.reshape(&e, &[Dim::Keep, Dim::Keep, Dim::Fixed(1), Dim::Fixed(1)])?;
    let out_norm = p.pp("out_layers").pp(0);
    let h = if cfg.scale_shift_norm {
        let scale = o.narrow(&e, 1, 0, cout)?;
        let shift = o.narrow(&e, 1, cout, cout)?;
        let h = group_norm(o, &out_norm, &h, cout, g, RES_EPS)?;
        let scaled = o.mul(&h, &scale)?;
        let h = o.add(&h, &scaled)?;
        o.add(&h, &shift)?
    } else {
        let h = o.add(&h, &e)?;
        group_norm(o, &out_norm, &h, cout, g, RES_EPS)?
    };
    let h = o.silu(&h)?;
    let h = conv2d(o, &p.pp("out_layers").pp(3), &h, cout, cout, 3, 1, 1, true)?;
    let skip = if cin == cout {
        x
    } else {
        conv2d(o, &p.pp("skip_connection"), &x, cin, cout, 1, 1, 0, false)?
    };
    o.add(&skip, &h)
}

/// GEGLU feed-forward: net.0.proj to 2 x 4·dim, value · GELU(gate), net.2 back to dim.
fn feed_forward<O: Ops>(o: &mut O, p: &Path, x: &O::T, dim: usize) -> Result<O::T> {
    let inner = 4 * dim;
    let h = linear(o, &p.pp("net").pp(0).pp("proj"), x, dim, 2 * inner, true)?;
    let value = o.narrow(&h, 2, 0, inner)?;
    let gate = o.narrow(&h, 2, inner, inner)?;
    let gate = o.gelu(&gate)?;
    let h = o.mul(&value, &gate)?;
    linear(o, &p.pp("net").pp(2), &h, inner, dim, true)
}

/// The "ablated UNet" self-attention block of unconditional models: norm, a 1x1 qkv
/// projection, multi-head self-attention over all positions, zero-initialised proj_out.
fn attention_block<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    c: usize,
    cfg: &UnetConfig,
) -> Result<O::T> {
    let (heads, head_dim) = cfg
        .head_layout(c)
        .map_err(|m| crate::NnError::config("unet", m))?;
    let h = group_norm(o, &p.pp("norm"), x, c, cfg.groups, RES_EPS)?;
    let qkv = conv2d(o, &p.pp("qkv"), &h, c, 3 * c, 1, 1, 0, false)?;
    let tokens = to_tokens(o, &qkv)?; // [B, HW, 3c]
    let split = |o: &mut O, start: usize| -> Result<O::T> {
        let t = o.narrow(&tokens, 2, start, c)?;
        split_heads(o, &t, heads, head_dim)
    };
    let (q, k, v) = (split(o, 0)?, split(o, c)?, split(o, 2 * c)?);
    let a = o.attention(&q, &k, &v, head_dim, Keys::Positions)?;
    let a = merge_heads(o, &a, c)?;
    let a = from_tokens(o, &a, x)?;
    let a = conv2d(o, &p.pp("proj_out"), &a, c, c, 1, 1, 0, true)?;
    o.add(x, &a)
}

/// Attention after a block: a SpatialTransformer when there is a context, the plain
/// self-attention block otherwise (as the reference's unconditional configurations).
fn attention<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    context: Option<&O::T>,
    c: usize,
    cfg: &UnetConfig,
    io: UnetIo,
) -> Result<O::T> {
    match (context, io.context_dim) {
        (Some(ctx), Some(ctx_dim)) if io.context_boxes => {
            let features = ctx_dim - BOX_CHANNELS;
            let boxes = o.narrow(ctx, 2, features, BOX_CHANNELS)?;
            let ctx = o.narrow(ctx, 2, 0, features)?;
            let bias = box_bias(o, x, &boxes)?;
            spatial_transformer(o, p, x, &ctx, features, Some(&bias), c, cfg)
        }
        (Some(ctx), Some(ctx_dim)) => spatial_transformer(o, p, x, ctx, ctx_dim, None, c, cfg),
        (_, None) => attention_block(o, p, x, c, cfg),
        (None, Some(_)) => Err(crate::NnError::Shape {
            op: "spatial_transformer",
            message: "a context-conditioned UNet needs a context".into(),
        }),
    }
}

/// What cross-attention adds to its scores so that each position of `x` [N, c, H, W] reads
/// the tokens whose `boxes` [B, L, 4] hold it: 0 inside a box, falling with the distance of the
/// position's centre outside it along x and along y ([`BOX_SHARPNESS`]); [B, 1, H·W, L].
/// Written for this project: the layout-guided attention of layout-to-image work (a box
/// restricting where its object's tokens are read), as a soft bias in standard operators.
pub fn box_bias<O: Ops>(o: &mut O, x: &O::T, boxes: &O::T) -> Result<O::T> {
    let grid = o.coordinate_grid(x)?;
    // Centres from (-1, 1) to fractions of the sides, one per query: [1, 1, H·W, 1].
    let half = o.constant(&[0.5], &[1])?;
    let grid = o.scale(&grid, 0.5)?;
    let grid = o.add(&grid, &half)?;
    let column = [Dim::Fixed(1), Dim::Fixed(1), Dim::Infer, Dim::Fixed(1)];
    let centre = |o: &mut O, axis: usize| -> Result<O::T> {
        let c = o.narrow(&grid, 1, axis, 1)?;
        o.reshape(&c, &column)
    };
    let (cx, cy) = (centre(o, 0)?, centre(o, 1)?);
    // Each edge as a row of keys: [B, L, 1] -> [B, 1, 1, L], the same order.
    let edge = |o: &mut O, k: usize| -> Result<O::T> {
        let e = o.narrow(boxes, 2, k, 1)?;
        o.reshape(&e, &[Dim::Keep, Dim::Fixed(1), Dim::Fixed(1), Dim::Infer])
    };
    let beyond = |o: &mut O, low: usize, high: usize, centre: &O::T| -> Result<O::T> {
        let (low, high) = (edge(o, low)?, edge(o, high)?);
        let before = o.sub(&low, centre)?;
        let before = o.clamp(&before, 0.0, 1.0)?;
        let after = o.sub(centre, &high)?;
        let after = o.clamp(&after, 0.0, 1.0)?;
        o.add(&before, &after)
    };
    let (along_x, along_y) = (beyond(o, 0, 2, &cx)?, beyond(o, 1, 3, &cy)?);
    let outside = o.add(&along_x, &along_y)?;
    o.scale(&outside, -BOX_SHARPNESS)
}

/// norm, proj_in, transformer blocks (self-attention, cross-attention with the context's
/// `bias`, feed-forward, each pre-LayerNorm and residual), proj_out (zero-initialised),
/// residual.
#[allow(clippy::too_many_arguments)]
fn spatial_transformer<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    context: &O::T,
    context_dim: usize,
    bias: Option<&O::T>,
    c: usize,
    cfg: &UnetConfig,
) -> Result<O::T> {
    let (heads, head_dim) = cfg
        .head_layout(c)
        .map_err(|m| crate::NnError::config("unet", m))?;
    let inner = heads * head_dim;
    let mut h = group_norm(o, &p.pp("norm"), x, c, cfg.groups, TRANSFORMER_EPS)?;
    if cfg.position_frequencies > 0 {
        let place = position_features(o, &p.pp(POSITION), &h, c, cfg.position_frequencies)?;
        h = o.add(&h, &place)?;
    }
    // The convolutional projection's output gives the token grid's shape back at the end.
    let (mut t, projected) = if cfg.linear_projection {
        let t = to_tokens(o, &h)?;
        (linear(o, &p.pp("proj_in"), &t, c, inner, true)?, None)
    } else {
        let h = conv2d(o, &p.pp("proj_in"), &h, c, inner, 1, 1, 0, false)?;
        (to_tokens(o, &h)?, Some(h))
    };
    for d in 0..cfg.transformer_depth {
        let b = p.pp("transformer_blocks").pp(d);
        let n = layer_norm(o, &b.pp("norm1"), &t, inner)?;
        let a = multi_head_attention(
            o,
            &b.pp("attn1"),
            &n,
            &n,
            inner,
            inner,
            heads,
            head_dim,
            Keys::Positions,
            None,
        )?;
        t = o.add(&t, &a)?;
        let n = layer_norm(o, &b.pp("norm2"), &t, inner)?;
        let a = multi_head_attention(
            o,
            &b.pp("attn2"),
            &n,
            context,
            inner,
            context_dim,
            heads,
            head_dim,
            Keys::Sequence,
            bias,
        )?;
        t = o.add(&t, &a)?;
        let n = layer_norm(o, &b.pp("norm3"), &t, inner)?;
        let f = feed_forward(o, &b.pp("ff"), &n, inner)?;
        t = o.add(&t, &f)?;
    }
    let h = match projected {
        None => {
            let t = linear(o, &p.pp("proj_out"), &t, inner, c, true)?;
            from_tokens(o, &t, x)?
        }
        Some(like) => {
            let h = from_tokens(o, &t, &like)?;
            conv2d(o, &p.pp("proj_out"), &h, inner, c, 1, 1, 0, true)?
        }
    };
    o.add(x, &h)
}

/// Whether `name` is a parameter of the position features (`unet.position_frequencies`).
pub fn is_position_param(name: &str) -> bool {
    name.split('.').any(|part| part == POSITION)
}

/// The path segment of the position features' projection.
const POSITION: &str = "position";

/// Where each position of `x` [N, c, H, W] is, as [1, c, H, W]: sin and cos of its x and y
/// in (-1, 1) at frequencies pi · 2^k (k < `frequencies`), through a zero-initialised 1x1
/// convolution (so a fine-tuned UNet starts out computing what it did without them).
fn position_features<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    c: usize,
    frequencies: usize,
) -> Result<O::T> {
    let grid = o.coordinate_grid(x)?;
    let mut features = Vec::with_capacity(2 * frequencies);
    for k in 0..frequencies {
        let angle = o.scale(&grid, std::f32::consts::PI * (1 << k) as f32)?;
        features.push(o.sin(&angle)?);
        features.push(o.cos(&angle)?);
    }
    let features = o.concat(&features.iter().collect::<Vec<_>>(), 1)?;
    conv2d(o, p, &features, 4 * frequencies, c, 1, 1, 0, true)
}

/// Predicted noise for latent `x` [B, in, h, w] at timesteps `t` [B] (f32), attending to
/// `context` [B, M, context_dim] when given. h and w must be multiples of 2^(levels-1).
pub fn forward<O: Ops>(
    o: &mut O,
    cfg: &UnetConfig,
    io: UnetIo,
    x: &O::T,
    t: &O::T,
    context: Option<&O::T>,
) -> Result<O::T> {
    let mc = cfg.model_channels;
    let emb_dim = 4 * mc;
    let g = cfg.groups;
    let te = timestep_embedding(o, t, mc)?;
    let emb = linear(o, &Path::root("time_embed").pp(0), &te, mc, emb_dim, true)?;
    let emb = o.silu(&emb)?;
    let emb = linear(
        o,
        &Path::root("time_embed").pp(2),
        &emb,
        emb_dim,
        emb_dim,
        true,
    )?;

    let input = Path::root("input_blocks");
    let mut h = conv3x3(o, &input.pp(0).pp(0), x, io.in_channels, mc)?;
    let mut skips = vec![(o.alias(&h), mc)];
    let (mut ch, mut ds, mut block) = (mc, 1, 1);
    let levels = cfg.channel_mult.len();
    for (level, mult) in cfg.channel_mult.iter().enumerate() {
        for _ in 0..cfg.res_blocks {
            let p = input.pp(block);
            h = res_block(o, &p.pp(0), &h, &emb, ch, mult * mc, cfg, Resample::Keep)?;
            ch = mult * mc;
            if cfg.attention_resolutions.contains(&ds) {
                h = attention(o, &p.pp(1), &h, context, ch, cfg, io)?;
            }
            skips.push((o.alias(&h), ch));
            block += 1;
        }
        if level + 1 < levels {
            let p = input.pp(block).pp(0);
            h = if cfg.resblock_updown {
                res_block(o, &p, &h, &emb, ch, ch, cfg, Resample::Down)?
            } else {
                conv2d(o, &p.pp("op"), &h, ch, ch, 3, 2, 1, false)?
            };
            skips.push((o.alias(&h), ch));
            block += 1;
            ds *= 2;
        }
    }

    let mid = Path::root("middle_block");
    h = res_block(o, &mid.pp(0), &h, &emb, ch, ch, cfg, Resample::Keep)?;
    h = attention(o, &mid.pp(1), &h, context, ch, cfg, io)?;
    h = res_block(o, &mid.pp(2), &h, &emb, ch, ch, cfg, Resample::Keep)?;

    let output = Path::root("output_blocks");
    let mut block = 0;
    for (level, mult) in cfg.channel_mult.iter().enumerate().rev() {
        for i in 0..=cfg.res_blocks {
            let p = output.pp(block);
            let (skip, skip_ch) = skips.pop().expect("one skip per input block");
            let cat = o.concat(&[&h, &skip], 1)?;
            h = res_block(
                o,
                &p.pp(0),
                &cat,
                &emb,
                ch + skip_ch,
                mult * mc,
                cfg,
                Resample::Keep,
            )?;
            ch = mult * mc;
            let mut layer = 1;
            if cfg.attention_resolutions.contains(&ds) {
                h = attention(o, &p.pp(layer), &h, context, ch, cfg, io)?;
                layer += 1;
            }
            if level > 0 && i == cfg.res_blocks {
                h = if cfg.resblock_updown {
                    res_block(o, &p.pp(layer), &h, &emb, ch, ch, cfg, Resample::Up)?
                } else {
                    let u = o.upsample2x(&h)?;
                    conv3x3(o, &p.pp(layer).pp("conv"), &u, ch, ch)?
                };
                ds /= 2;
            }
            block += 1;
        }
    }
    let out = Path::root("out");
    h = group_norm(o, &out.pp(0), &h, ch, g, RES_EPS)?;
    h = o.silu(&h)?;
    conv2d(o, &out.pp(2), &h, ch, io.out_channels, 3, 1, 1, true)
}
