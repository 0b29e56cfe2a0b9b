//! The conditioning encoders tau_theta of paper 3.3: the text transformer of E.2.1 and the
//! class embedder.

use crate::layers::{layer_norm, linear, multi_head_attention, Path};
use crate::ops::{Dim, Init, Ops, Result};

/// The sizes of a text encoder (from [`crate::Conditioning::Text`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextEncoderShape {
    pub vocab_size: usize,
    pub max_length: usize,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Token ids [B, L] (int64) -> context [B, L, width]: token + learned position embedding,
/// `depth` pre-LayerNorm blocks (self-attention, GELU MLP of 4·width), final LayerNorm.
/// Unmasked, as in the paper: padding tokens are part of the sequence.
pub fn text_encoder<O: Ops>(o: &mut O, ids: &O::T, shape: TextEncoderShape) -> Result<O::T> {
    let TextEncoderShape {
        vocab_size,
        max_length,
        width,
        depth,
        heads,
        head_dim,
    } = shape;
    let token = o.param("token_emb.weight", &[vocab_size, width], Init::Normal(0.02))?;
    let position = o.param("pos_emb.weight", &[max_length, width], Init::Normal(0.02))?;
    let x = o.embedding(&token, ids)?;
    // All max_length positions: sequences are always padded to the full length.
    let mut x = o.add(&x, &position)?;
    for i in 0..depth {
        let p = Path::root("layers").pp(i);
        let n = layer_norm(o, &p.pp("attn_norm"), &x, width)?;
        let a = multi_head_attention(o, &p.pp("attn"), &n, &n, width, width, heads, head_dim)?;
        x = o.add(&x, &a)?;
        let n = layer_norm(o, &p.pp("ff_norm"), &x, width)?;
        let h = linear(o, &p.pp("ff").pp(0), &n, width, 4 * width, true)?;
        let h = o.gelu(&h)?;
        let h = linear(o, &p.pp("ff").pp(2), &h, 4 * width, width, true)?;
        x = o.add(&x, &h)?;
    }
    layer_norm(o, &Path::root("norm"), &x, width)
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
