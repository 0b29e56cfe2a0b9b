//! The conditioning encoders tau_theta of paper 3.3: the text transformer of E.2.1 (or CLIP's,
//! for imported Stable Diffusion models) and the class embedder.

use crate::config::{Activation, TextEncoderKind};
use crate::layers::{layer_norm, linear, merge_heads, multi_head_attention, split_heads, Path};
use crate::ops::{Dim, Init, Keys, Ops, Result};
use ldm_core::layout::{EdgeIds, WORDS_PER_OBJECT};

/// The sizes of a text encoder (from [`crate::Conditioning::Text`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextEncoderShape {
    pub vocab_size: usize,
    pub max_length: usize,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub encoder: TextEncoderKind,
    pub activation: Activation,
    pub mlp_width: usize,
    /// Rows of the position table (at least max_length; the first max_length are used).
    pub positions: usize,
    /// A box-attention layout model's edge words: each token's box follows its features.
    pub boxes: Option<EdgeIds>,
}

/// Added to attention scores a position may not see: exp() of it is 0 in f32 and f16.
const MASKED: f32 = -1e9;

/// Token ids [B, L] (int64) -> context [B, L, width], or [B, L, width + 4] with each token's
/// box (left, top, right, bottom) after its features when the shape has `boxes`.
pub fn text_encoder<O: Ops>(o: &mut O, ids: &O::T, shape: TextEncoderShape) -> Result<O::T> {
    let features = match shape.encoder {
        TextEncoderKind::Ldm => ldm_text_encoder(o, ids, shape)?,
        TextEncoderKind::Clip => clip_text_encoder(o, ids, shape)?,
    };
    match shape.boxes {
        Some(edges) => {
            let boxes = token_boxes(o, ids, shape, edges)?;
            o.concat(&[&features, &boxes], 2)
        }
        None => Ok(features),
    }
}

/// The box of every token of a layout's ids [B, L] as [B, L, 4]: each of an object's six
/// tokens carries the box its four edge words give, every other token ([CLS], [SEP],
/// padding) the whole image. Objects sit at fixed places (after [CLS], six tokens each), so
/// each edge is a lookup of the ids in that edge's places, repeated over the object's tokens.
fn token_boxes<O: Ops>(
    o: &mut O,
    ids: &O::T,
    shape: TextEncoderShape,
    edges: EdgeIds,
) -> Result<O::T> {
    let (objects, words) = (edges.max_objects, WORDS_PER_OBJECT);
    let length = shape.max_length;
    let body = o.narrow(ids, 1, 1, objects * words)?;
    let body = o.reshape(&body, &[Dim::Keep, Dim::Fixed(objects), Dim::Fixed(words)])?;
    let first = o.narrow(ids, 1, 0, 1)?;
    let last = o.narrow(ids, 1, length - 1, 1)?;
    let mut columns = Vec::with_capacity(4);
    for (edge, table) in edges.tables(shape.vocab_size).iter().enumerate() {
        // The edge words follow the class and the colour.
        let word = o.narrow(&body, 2, 2 + edge, 1)?;
        let spread = o.concat(&vec![&word; words], 2)?;
        let spread = o.reshape(&spread, &[Dim::Keep, Dim::Fixed(objects * words)])?;
        let place_ids = o.concat(&[&first, &spread, &last], 1)?;
        let table = o.constant(table, &[shape.vocab_size, 1])?;
        columns.push(o.embedding(&table, &place_ids)?);
    }
    o.concat(&columns.iter().collect::<Vec<_>>(), 2)
}

fn activation<O: Ops>(o: &mut O, x: &O::T, activation: Activation) -> Result<O::T> {
    match activation {
        Activation::Gelu => o.gelu(x),
        Activation::QuickGelu => {
            let s = o.scale(x, 1.702)?;
            let s = o.sigmoid(&s)?;
            o.mul(x, &s)
        }
    }
}

/// Token embeddings plus the first max_length rows of the position table.
fn embed<O: Ops>(
    o: &mut O,
    ids: &O::T,
    shape: TextEncoderShape,
    token: &str,
    position: &str,
) -> Result<O::T> {
    let token = o.param(token, &[shape.vocab_size, shape.width], Init::Normal(0.02))?;
    let table = o.param(
        position,
        &[shape.positions, shape.width],
        Init::Normal(0.02),
    )?;
    let x = o.embedding(&token, ids)?;
    // Sequences are always padded to the full length.
    let used = if shape.positions == shape.max_length {
        table
    } else {
        o.narrow(&table, 0, 0, shape.max_length)?
    };
    o.add(&x, &used)
}

/// The paper's encoder: token + learned position embedding, `depth` pre-LayerNorm blocks
/// (self-attention, MLP), final LayerNorm. Unmasked, as in the paper: padding tokens are part
/// of the sequence.
pub(crate) fn ldm_text_encoder<O: Ops>(
    o: &mut O,
    ids: &O::T,
    shape: TextEncoderShape,
) -> Result<O::T> {
    let (width, heads, head_dim) = (shape.width, shape.heads, shape.head_dim);
    let mut x = embed(o, ids, shape, "token_emb.weight", "pos_emb.weight")?;
    for i in 0..shape.depth {
        let p = Path::root("layers").pp(i);
        let n = layer_norm(o, &p.pp("attn_norm"), &x, width)?;
        let a = multi_head_attention(
            o,
            &p.pp("attn"),
            &n,
            &n,
            width,
            width,
            heads,
            head_dim,
            Keys::Sequence,
            None,
        )?;
        x = o.add(&x, &a)?;
        let n = layer_norm(o, &p.pp("ff_norm"), &x, width)?;
        let h = linear(o, &p.pp("ff").pp(0), &n, width, shape.mlp_width, true)?;
        let h = activation(o, &h, shape.activation)?;
        let h = linear(o, &p.pp("ff").pp(2), &h, shape.mlp_width, width, true)?;
        x = o.add(&x, &h)?;
    }
    layer_norm(o, &Path::root("norm"), &x, width)
}

/// CLIP's text transformer (Radford et al. 2021), as `transformers`' `CLIPTextModel` computes
/// its last hidden state: causal self-attention with biased q/k/v/out projections, MLP fc1 ->
/// activation -> fc2, final LayerNorm.
fn clip_text_encoder<O: Ops>(o: &mut O, ids: &O::T, shape: TextEncoderShape) -> Result<O::T> {
    let (width, heads, head_dim, l) = (shape.width, shape.heads, shape.head_dim, shape.max_length);
    let mut x = embed(
        o,
        ids,
        shape,
        "embeddings.token_embedding.weight",
        "embeddings.position_embedding.weight",
    )?;
    let causal: Vec<f32> = (0..l * l)
        .map(|i| if i % l > i / l { MASKED } else { 0.0 })
        .collect();
    let causal = o.constant(&causal, &[1, 1, l, l])?;
    let inner = heads * head_dim;
    for i in 0..shape.depth {
        let p = Path::root("encoder").pp("layers").pp(i);
        let n = layer_norm(o, &p.pp("layer_norm1"), &x, width)?;
        let a = p.pp("self_attn");
        let project = |o: &mut O, name: &str| -> Result<O::T> {
            let t = linear(o, &a.pp(name), &n, width, inner, true)?;
            split_heads(o, &t, heads, head_dim)
        };
        let (q, k, v) = (
            project(o, "q_proj")?,
            project(o, "k_proj")?,
            project(o, "v_proj")?,
        );
        let kt = o.transpose_last(&k)?;
        let scores = o.matmul(&q, &kt)?;
        let scores = o.scale(&scores, 1.0 / (head_dim as f32).sqrt())?;
        let scores = o.add(&scores, &causal)?;
        let weights = o.softmax(&scores)?;
        let h = o.matmul(&weights, &v)?;
        let h = merge_heads(o, &h, inner)?;
        let h = linear(o, &a.pp("out_proj"), &h, inner, width, true)?;
        x = o.add(&x, &h)?;
        let n = layer_norm(o, &p.pp("layer_norm2"), &x, width)?;
        let h = linear(o, &p.pp("mlp").pp("fc1"), &n, width, shape.mlp_width, true)?;
        let h = activation(o, &h, shape.activation)?;
        let h = linear(o, &p.pp("mlp").pp("fc2"), &h, shape.mlp_width, width, true)?;
        x = o.add(&x, &h)?;
    }
    layer_norm(o, &Path::root("final_layer_norm"), &x, width)
}

/// Class ids [B] (int64) -> context [B, 1, width]. Id `classes` is the extra "no class"
/// entry that classifier-free guidance uses as its unconditional context.
pub fn class_embedder<O: Ops>(
    o: &mut O,
    labels: &O::T,
    classes: usize,
    width: usize,
) -> Result<O::T> {
    let table = o.param("embedding.weight", &[classes + 1, width], Init::Normal(1.0))?;
    let e = o.embedding(&table, labels)?;
    o.reshape(&e, &[Dim::Keep, Dim::Fixed(1), Dim::Fixed(width)])
}
