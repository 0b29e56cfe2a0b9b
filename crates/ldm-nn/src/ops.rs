//! The tensor operations the networks are written against.
//!
//! Each interpretation (tch for training, the ONNX emitter for export, shapes for counting)
//! implements the primitives; composites built from them (linear, GELU, attention) have
//! default bodies that an interpretation may replace with a fused kernel.

use crate::NnError;

pub type Result<T> = std::result::Result<T, NnError>;

/// How a parameter is initialised the first time it is created.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// Uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)], PyTorch's default for conv and linear.
    FanIn(usize),
    /// Normal with this standard deviation (embeddings).
    Normal(f64),
}

/// A reshape target dimension: `Keep` copies the input's dimension at that position and
/// `Infer` takes what is left (ONNX Reshape's 0 and -1), so batch and spatial sizes can stay
/// symbolic in exported graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Keep,
    Infer,
    Fixed(usize),
}

/// What an attention's queries and keys range over. Self-attention over a feature map's
/// positions holds a score for every pair of positions, which grows with the square of the
/// image's area; attention within a fixed-length sequence (tokens) or onto one (a context)
/// holds scores bounded by that length. An interpretation may compute the first in chunks of
/// queries to bound its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    Positions,
    Sequence,
}

pub trait Ops {
    type T;

    /// Another handle to the same tensor (tch tensors are reference-counted, not `Clone`).
    fn alias(&self, x: &Self::T) -> Self::T;

    /// The parameter at hierarchical `name` (`encoder.down.0.block.1.conv1.weight`),
    /// created with `init` on first use; later calls return the same tensor.
    fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Self::T>;
    /// A constant f32 tensor (frequencies of the timestep embedding, ...).
    fn constant(&mut self, values: &[f32], shape: &[usize]) -> Result<Self::T>;

    /// NCHW convolution; weight is [out, in, k, k]; `padding` on every side.
    fn conv2d(
        &mut self,
        x: &Self::T,
        weight: &Self::T,
        bias: Option<&Self::T>,
        stride: usize,
        padding: usize,
    ) -> Result<Self::T>;
    /// Zero padding of the last two axes: (left, right, top, bottom).
    fn pad2d(&mut self, x: &Self::T, pads: [usize; 4]) -> Result<Self::T>;
    /// Batched matrix product with broadcasting over leading axes.
    fn matmul(&mut self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    fn add(&mut self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    fn sub(&mut self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    fn mul(&mut self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    fn scale(&mut self, x: &Self::T, factor: f32) -> Result<Self::T>;
    fn exp(&mut self, x: &Self::T) -> Result<Self::T>;
    fn sin(&mut self, x: &Self::T) -> Result<Self::T>;
    fn cos(&mut self, x: &Self::T) -> Result<Self::T>;
    fn erf(&mut self, x: &Self::T) -> Result<Self::T>;
    fn sigmoid(&mut self, x: &Self::T) -> Result<Self::T>;
    fn clamp(&mut self, x: &Self::T, min: f32, max: f32) -> Result<Self::T>;
    /// Softmax over the last axis.
    fn softmax(&mut self, x: &Self::T) -> Result<Self::T>;
    /// Group normalisation of NC... tensors; statistics per (sample, group).
    fn group_norm(
        &mut self,
        x: &Self::T,
        groups: usize,
        weight: &Self::T,
        bias: &Self::T,
        eps: f64,
    ) -> Result<Self::T>;
    /// Layer normalisation over the last axis.
    fn layer_norm(
        &mut self,
        x: &Self::T,
        weight: &Self::T,
        bias: &Self::T,
        eps: f64,
    ) -> Result<Self::T>;
    fn reshape(&mut self, x: &Self::T, dims: &[Dim]) -> Result<Self::T>;
    /// Reshapes `x` to the (possibly symbolic) shape of `like`.
    fn reshape_like(&mut self, x: &Self::T, like: &Self::T) -> Result<Self::T>;
    fn permute(&mut self, x: &Self::T, perm: &[usize]) -> Result<Self::T>;
    fn concat(&mut self, xs: &[&Self::T], axis: usize) -> Result<Self::T>;
    /// `len` entries of `axis` from `start`.
    fn narrow(&mut self, x: &Self::T, axis: usize, start: usize, len: usize) -> Result<Self::T>;
    /// Nearest-neighbour upsampling of the last two axes by 2.
    fn upsample2x(&mut self, x: &Self::T) -> Result<Self::T>;
    /// Average of each 2x2 window of the last two axes, stride 2 (even sides).
    fn avg_pool2x(&mut self, x: &Self::T) -> Result<Self::T>;
    /// Where each position of `like` ([..., H, W]) lies, as [1, 2, H, W] f32: x then y of the
    /// pixel centres scaled to (-1, 1), so "top left" means the same at every size.
    fn coordinate_grid(&mut self, like: &Self::T) -> Result<Self::T>;
    /// Rows of `table` ([n, d]) at integer `ids` (any shape): ids.shape + [d].
    fn embedding(&mut self, table: &Self::T, ids: &Self::T) -> Result<Self::T>;
    /// Index of the minimum along the last axis (integer tensor).
    fn argmin(&mut self, x: &Self::T) -> Result<Self::T>;
    /// Integer to f32 (timesteps arrive as int64).
    fn to_float(&mut self, x: &Self::T) -> Result<Self::T>;
    /// Sum of squares over the last axis, keeping it as size 1.
    fn sum_squares(&mut self, x: &Self::T) -> Result<Self::T>;
    /// Output identity: forwards `x` unchanged but lets the training interpretation route the
    /// gradient straight through (VQ's straight-through estimator): value of `value`, gradient
    /// of `gradient_to`.
    fn straight_through(&mut self, value: &Self::T, gradient_to: &Self::T) -> Result<Self::T>;

    // Composites, overridable.

    /// x [..., in] · weightᵀ [out, in] + bias.
    fn linear(&mut self, x: &Self::T, weight: &Self::T, bias: Option<&Self::T>) -> Result<Self::T> {
        linear_by_matmul(self, x, weight, bias)
    }

    fn silu(&mut self, x: &Self::T) -> Result<Self::T> {
        let s = self.sigmoid(x)?;
        self.mul(x, &s)
    }

    /// GELU in its erf form: x/2 · (1 + erf(x/√2)).
    fn gelu(&mut self, x: &Self::T) -> Result<Self::T> {
        let e = self.scale(x, std::f32::consts::FRAC_1_SQRT_2)?;
        let e = self.erf(&e)?;
        let one = self.constant(&[1.0], &[1])?;
        let e = self.add(&e, &one)?;
        let half = self.scale(x, 0.5)?;
        self.mul(&half, &e)
    }

    /// softmax(q·kᵀ/√d)·v over [B, heads, n, d] tensors; `keys` says whether the scores grow
    /// with the image.
    fn attention(
        &mut self,
        q: &Self::T,
        k: &Self::T,
        v: &Self::T,
        head_dim: usize,
        _keys: Keys,
    ) -> Result<Self::T> {
        let kt = self.transpose_last(k)?;
        scaled_dot_product(self, q, &kt, v, head_dim, None)
    }

    /// Swaps the last two axes of a rank-4 tensor.
    fn transpose_last(&mut self, x: &Self::T) -> Result<Self::T> {
        self.permute(x, &[0, 1, 3, 2])
    }
}

/// [`Ops::linear`] as a transpose, a matrix product and an add.
pub fn linear_by_matmul<O: Ops + ?Sized>(
    o: &mut O,
    x: &O::T,
    weight: &O::T,
    bias: Option<&O::T>,
) -> Result<O::T> {
    let wt = o.permute(weight, &[1, 0])?;
    let y = o.matmul(x, &wt)?;
    match bias {
        Some(b) => o.add(&y, b),
        None => Ok(y),
    }
}

/// softmax(q·kt/√d + bias)·v with the keys already transposed: the body of every attention.
pub fn scaled_dot_product<O: Ops + ?Sized>(
    o: &mut O,
    q: &O::T,
    kt: &O::T,
    v: &O::T,
    head_dim: usize,
    bias: Option<&O::T>,
) -> Result<O::T> {
    let scores = o.matmul(q, kt)?;
    let mut scores = o.scale(&scores, 1.0 / (head_dim as f32).sqrt())?;
    if let Some(bias) = bias {
        scores = o.add(&scores, bias)?;
    }
    let weights = o.softmax(&scores)?;
    o.matmul(&weights, v)
}
