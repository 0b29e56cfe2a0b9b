//! Layers with parameters, as functions: each takes the parameter path it owns and creates
//! (or finds) `path.weight` / `path.bias` through [`Ops::param`].

use std::fmt::Display;

use crate::ops::{scaled_dot_product, Dim, Init, Keys, Ops, Result};

/// A hierarchical parameter path: `Path::root("encoder").pp("down").pp(0)` names
/// `encoder.down.0.*`, the same keys in checkpoints and ONNX initializers.
#[derive(Debug, Clone)]
pub struct Path(String);

impl Path {
    pub fn root(name: &str) -> Path {
        Path(name.to_string())
    }

    pub fn pp(&self, child: impl Display) -> Path {
        if self.0.is_empty() {
            Path(child.to_string())
        } else {
            Path(format!("{}.{child}", self.0))
        }
    }

    pub fn key(&self, leaf: &str) -> String {
        self.pp(leaf).0
    }
}

/// Square k x k convolution; `zero` starts the weights at 0 (residual branches' last layer,
/// as the reference UNet's `zero_module`).
#[allow(clippy::too_many_arguments)]
pub fn conv2d<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    zero: bool,
) -> Result<O::T> {
    let fan_in = cin * kernel * kernel;
    let init = if zero {
        Init::Zeros
    } else {
        Init::FanIn(fan_in)
    };
    let w = o.param(&p.key("weight"), &[cout, cin, kernel, kernel], init)?;
    let b = o.param(
        &p.key("bias"),
        &[cout],
        if zero {
            Init::Zeros
        } else {
            Init::FanIn(fan_in)
        },
    )?;
    o.conv2d(x, &w, Some(&b), stride, padding)
}

/// 3x3 convolution, stride 1, same size.
pub fn conv3x3<O: Ops>(o: &mut O, p: &Path, x: &O::T, cin: usize, cout: usize) -> Result<O::T> {
    conv2d(o, p, x, cin, cout, 3, 1, 1, false)
}

/// 1x1 convolution.
pub fn conv1x1<O: Ops>(o: &mut O, p: &Path, x: &O::T, cin: usize, cout: usize) -> Result<O::T> {
    conv2d(o, p, x, cin, cout, 1, 1, 0, false)
}

pub fn linear<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    din: usize,
    dout: usize,
    bias: bool,
) -> Result<O::T> {
    let w = o.param(&p.key("weight"), &[dout, din], Init::FanIn(din))?;
    let b = if bias {
        Some(o.param(&p.key("bias"), &[dout], Init::FanIn(din))?)
    } else {
        None
    };
    o.linear(x, &w, b.as_ref())
}

pub fn group_norm<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    channels: usize,
    groups: usize,
    eps: f64,
) -> Result<O::T> {
    let w = o.param(&p.key("weight"), &[channels], Init::Ones)?;
    let b = o.param(&p.key("bias"), &[channels], Init::Zeros)?;
    o.group_norm(x, groups, &w, &b, eps)
}

pub fn layer_norm<O: Ops>(o: &mut O, p: &Path, x: &O::T, dim: usize) -> Result<O::T> {
    let w = o.param(&p.key("weight"), &[dim], Init::Ones)?;
    let b = o.param(&p.key("bias"), &[dim], Init::Zeros)?;
    o.layer_norm(x, &w, &b, 1e-5)
}

/// [B, C, H, W] -> [B, H·W, C]: a feature map as a sequence of tokens.
pub fn to_tokens<O: Ops>(o: &mut O, x: &O::T) -> Result<O::T> {
    let flat = o.reshape(x, &[Dim::Keep, Dim::Keep, Dim::Infer])?;
    o.permute(&flat, &[0, 2, 1])
}

/// [B, H·W, C] -> [B, C, H, W], taking H and W from `like`.
pub fn from_tokens<O: Ops>(o: &mut O, tokens: &O::T, like: &O::T) -> Result<O::T> {
    let t = o.permute(tokens, &[0, 2, 1])?;
    o.reshape_like(&t, like)
}

/// Tokens [B, N, heads·d] -> [B, heads, N, d].
pub fn split_heads<O: Ops>(o: &mut O, t: &O::T, heads: usize, head_dim: usize) -> Result<O::T> {
    let t = o.reshape(
        t,
        &[
            Dim::Keep,
            Dim::Keep,
            Dim::Fixed(heads),
            Dim::Fixed(head_dim),
        ],
    )?;
    o.permute(&t, &[0, 2, 1, 3])
}

/// [B, heads, N, d] -> tokens [B, N, inner = heads·d].
pub fn merge_heads<O: Ops>(o: &mut O, t: &O::T, inner: usize) -> Result<O::T> {
    let t = o.permute(t, &[0, 2, 1, 3])?;
    o.reshape(&t, &[Dim::Keep, Dim::Keep, Dim::Fixed(inner)])
}

/// Multi-head attention of query tokens [B, N, C] onto context tokens [B, M, Cc] (`keys`: what
/// they range over): to_q / to_k / to_v (no bias), heads of `head_dim`, to_out.0 (with bias).
/// `bias` ([B, 1, N, M]) is added to every head's scores.
#[allow(clippy::too_many_arguments)]
pub fn multi_head_attention<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    context: &O::T,
    query_dim: usize,
    context_dim: usize,
    heads: usize,
    head_dim: usize,
    keys: Keys,
    bias: Option<&O::T>,
) -> Result<O::T> {
    let inner = heads * head_dim;
    let q = linear(o, &p.pp("to_q"), x, query_dim, inner, false)?;
    let k = linear(o, &p.pp("to_k"), context, context_dim, inner, false)?;
    let v = linear(o, &p.pp("to_v"), context, context_dim, inner, false)?;
    // [B, N, heads·d] -> [B, heads, N, d]
    let q = split_heads(o, &q, heads, head_dim)?;
    let k = split_heads(o, &k, heads, head_dim)?;
    let v = split_heads(o, &v, heads, head_dim)?;
    let out = match bias {
        None => o.attention(&q, &k, &v, head_dim, keys)?,
        Some(bias) => {
            let kt = o.transpose_last(&k)?;
            scaled_dot_product(o, &q, &kt, &v, head_dim, Some(bias))?
        }
    };
    let out = merge_heads(o, &out, inner)?;
    linear(o, &p.pp("to_out").pp(0), &out, inner, query_dim, true)
}
