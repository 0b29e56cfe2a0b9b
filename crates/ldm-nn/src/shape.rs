//! The shape/cost interpretation: walks the networks with shapes only, checking them and
//! counting parameters and multiply-accumulates, without allocating any weight.

use std::collections::BTreeMap;

use crate::ops::{Dim, Init, Ops, Result};
use crate::NnError;

/// A tensor's shape (integer tensors are tracked as shapes too).
pub type Shape = Vec<usize>;

#[derive(Debug, Default)]
pub struct ShapeOps {
    /// Every parameter created, by name.
    pub params: BTreeMap<String, Shape>,
    /// Multiply-accumulates of convolutions and matrix products so far.
    pub macs: u64,
}

impl ShapeOps {
    pub fn parameter_count(&self) -> u64 {
        self.params
            .values()
            .map(|s| s.iter().product::<usize>() as u64)
            .sum()
    }
}

fn err(op: &'static str, message: String) -> NnError {
    NnError::Shape { op, message }
}

/// NumPy broadcasting of two shapes.
fn broadcast(op: &'static str, a: &[usize], b: &[usize]) -> Result<Shape> {
    let rank = a.len().max(b.len());
    let pad = |s: &[usize]| -> Vec<usize> {
        std::iter::repeat_n(1, rank - s.len())
            .chain(s.iter().copied())
            .collect()
    };
    let (a2, b2) = (pad(a), pad(b));
    a2.iter()
        .zip(&b2)
        .map(|(&x, &y)| match (x, y) {
            _ if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(err(op, format!("{a:?} and {b:?} do not broadcast"))),
        })
        .collect()
}

impl Ops for ShapeOps {
    type T = Shape;

    fn alias(&self, x: &Shape) -> Shape {
        x.clone()
    }

    fn param(&mut self, name: &str, shape: &[usize], _init: Init) -> Result<Shape> {
        match self.params.get(name) {
            Some(existing) if existing != shape => Err(NnError::Param {
                name: name.to_string(),
                message: format!("asked for shape {shape:?}, but it was created as {existing:?}"),
            }),
            Some(existing) => Ok(existing.clone()),
            None => {
                self.params.insert(name.to_string(), shape.to_vec());
                Ok(shape.to_vec())
            }
        }
    }

    fn constant(&mut self, values: &[f32], shape: &[usize]) -> Result<Shape> {
        if values.len() != shape.iter().product::<usize>() {
            return Err(err(
                "constant",
                format!("{} values for shape {shape:?}", values.len()),
            ));
        }
        Ok(shape.to_vec())
    }

    fn conv2d(
        &mut self,
        x: &Shape,
        w: &Shape,
        bias: Option<&Shape>,
        stride: usize,
        padding: usize,
    ) -> Result<Shape> {
        let [n, c, h, wd] = x[..] else {
            return Err(err("conv2d", format!("input {x:?} is not NCHW")));
        };
        let [o, i, kh, kw] = w[..] else {
            return Err(err(
                "conv2d",
                format!("weight {w:?} is not [out, in, kh, kw]"),
            ));
        };
        if c != i {
            return Err(err(
                "conv2d",
                format!("input has {c} channels, weight expects {i}"),
            ));
        }
        if bias.is_some_and(|b| b[..] != [o]) {
            return Err(err("conv2d", format!("bias {bias:?} for {o} outputs")));
        }
        if h + 2 * padding < kh || wd + 2 * padding < kw {
            return Err(err(
                "conv2d",
                format!("kernel {kh}x{kw} larger than input {h}x{wd}"),
            ));
        }
        let (oh, ow) = (
            (h + 2 * padding - kh) / stride + 1,
            (wd + 2 * padding - kw) / stride + 1,
        );
        self.macs += (n * o * oh * ow * i * kh * kw) as u64;
        Ok(vec![n, o, oh, ow])
    }

    fn pad2d(&mut self, x: &Shape, [l, r, t, b]: [usize; 4]) -> Result<Shape> {
        let mut s = x.clone();
        let rank = s.len();
        s[rank - 1] += l + r;
        s[rank - 2] += t + b;
        Ok(s)
    }

    fn matmul(&mut self, a: &Shape, b: &Shape) -> Result<Shape> {
        if a.len() < 2 || b.len() < 2 {
            return Err(err(
                "matmul",
                format!("{a:?} x {b:?}: both need rank 2 or more"),
            ));
        }
        let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
        let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
        if k != k2 {
            return Err(err(
                "matmul",
                format!("{a:?} x {b:?}: inner sizes {k} and {k2} differ"),
            ));
        }
        let mut out = broadcast("matmul", &a[..a.len() - 2], &b[..b.len() - 2])?;
        self.macs += (out.iter().product::<usize>() * m * n * k) as u64;
        out.extend([m, n]);
        Ok(out)
    }

    fn add(&mut self, a: &Shape, b: &Shape) -> Result<Shape> {
        broadcast("add", a, b)
    }
    fn sub(&mut self, a: &Shape, b: &Shape) -> Result<Shape> {
        broadcast("sub", a, b)
    }
    fn mul(&mut self, a: &Shape, b: &Shape) -> Result<Shape> {
        broadcast("mul", a, b)
    }
    fn scale(&mut self, x: &Shape, _: f32) -> Result<Shape> {
        Ok(x.clone())
    }
    fn exp(&mut self, x: &Shape) -> Result<Shape> {
        Ok(x.clone())
    }
    fn sin(&mut self, x: &Shape) -> Result<Shape> {
        Ok(x.clone())
    }
    fn cos(&mut self, x: &Shape) -> Result<Shape> {
        Ok(x.clone())
    }
    fn erf(&mut self, x: &Shape) -> Result<Shape> {
        Ok(x.clone())
    }
    fn sigmoid(&mut self, x: &Shape) -> Result<Shape> {
        Ok(x.clone())
    }
    fn clamp(&mut self, x: &Shape, _: f32, _: f32) -> Result<Shape> {
        Ok(x.clone())
    }
    fn softmax(&mut self, x: &Shape) -> Result<Shape> {
        Ok(x.clone())
    }

    fn group_norm(
        &mut self,
        x: &Shape,
        groups: usize,
        w: &Shape,
        b: &Shape,
        _: f64,
    ) -> Result<Shape> {
        let c = *x
            .get(1)
            .ok_or_else(|| err("group_norm", format!("input {x:?} has no channel axis")))?;
        if groups == 0 || c % groups != 0 {
            return Err(err(
                "group_norm",
                format!("{c} channels do not split into {groups} groups"),
            ));
        }
        if w[..] != [c] || b[..] != [c] {
            return Err(err(
                "group_norm",
                format!("weight {w:?} / bias {b:?} for {c} channels"),
            ));
        }
        Ok(x.clone())
    }

    fn layer_norm(&mut self, x: &Shape, w: &Shape, b: &Shape, _: f64) -> Result<Shape> {
        let d = *x.last().unwrap_or(&0);
        if w[..] != [d] || b[..] != [d] {
            return Err(err(
                "layer_norm",
                format!("weight {w:?} / bias {b:?} for last axis {d}"),
            ));
        }
        Ok(x.clone())
    }

    fn reshape(&mut self, x: &Shape, dims: &[Dim]) -> Result<Shape> {
        let total: usize = x.iter().product();
        let mut out = Vec::with_capacity(dims.len());
        let mut infer = None;
        for (i, d) in dims.iter().enumerate() {
            out.push(match d {
                Dim::Keep => *x
                    .get(i)
                    .ok_or_else(|| err("reshape", format!("Keep at axis {i} of {x:?}")))?,
                Dim::Fixed(n) => *n,
                Dim::Infer => {
                    infer = Some(i);
                    1
                }
            });
        }
        let known: usize = out.iter().product();
        if let Some(i) = infer {
            if known == 0 || !total.is_multiple_of(known) {
                return Err(err("reshape", format!("{x:?} cannot take shape {dims:?}")));
            }
            out[i] = total / known;
        } else if known != total {
            return Err(err("reshape", format!("{x:?} cannot take shape {dims:?}")));
        }
        Ok(out)
    }

    fn reshape_like(&mut self, x: &Shape, like: &Shape) -> Result<Shape> {
        if x.iter().product::<usize>() != like.iter().product::<usize>() {
            return Err(err(
                "reshape_like",
                format!("{x:?} cannot take shape {like:?}"),
            ));
        }
        Ok(like.clone())
    }

    fn permute(&mut self, x: &Shape, perm: &[usize]) -> Result<Shape> {
        let mut sorted = perm.to_vec();
        sorted.sort_unstable();
        if sorted != (0..x.len()).collect::<Vec<_>>() {
            return Err(err(
                "permute",
                format!("{perm:?} is not a permutation of {x:?}'s axes"),
            ));
        }
        Ok(perm.iter().map(|&p| x[p]).collect())
    }

    fn concat(&mut self, xs: &[&Shape], axis: usize) -> Result<Shape> {
        let first = xs
            .first()
            .ok_or_else(|| err("concat", "no inputs".into()))?;
        let mut out = (*first).clone();
        for x in &xs[1..] {
            let same_rest = x.len() == out.len()
                && x.iter()
                    .zip(&out)
                    .enumerate()
                    .all(|(i, (a, b))| i == axis || a == b);
            if !same_rest {
                return Err(err(
                    "concat",
                    format!("{first:?} and {x:?} differ off axis {axis}"),
                ));
            }
            out[axis] += x[axis];
        }
        Ok(out)
    }

    fn narrow(&mut self, x: &Shape, axis: usize, start: usize, len: usize) -> Result<Shape> {
        if start + len > x[axis] {
            return Err(err(
                "narrow",
                format!("{start}..{} of axis {axis} of {x:?}", start + len),
            ));
        }
        let mut out = x.clone();
        out[axis] = len;
        Ok(out)
    }

    fn upsample2x(&mut self, x: &Shape) -> Result<Shape> {
        let mut out = x.clone();
        let rank = out.len();
        out[rank - 1] *= 2;
        out[rank - 2] *= 2;
        Ok(out)
    }

    fn coordinate_grid(&mut self, like: &Shape) -> Result<Shape> {
        match like[..] {
            [.., h, w] => Ok(vec![1, 2, h, w]),
            _ => Err(err(
                "coordinate_grid",
                format!("{like:?} has no two spatial axes"),
            )),
        }
    }

    fn avg_pool2x(&mut self, x: &Shape) -> Result<Shape> {
        let rank = x.len();
        if rank < 2 || !x[rank - 1].is_multiple_of(2) || !x[rank - 2].is_multiple_of(2) {
            return Err(err(
                "avg_pool2x",
                format!("{x:?} has no even last two sides"),
            ));
        }
        let mut out = x.clone();
        out[rank - 1] /= 2;
        out[rank - 2] /= 2;
        Ok(out)
    }

    fn embedding(&mut self, table: &Shape, ids: &Shape) -> Result<Shape> {
        let [_, d] = table[..] else {
            return Err(err("embedding", format!("table {table:?} is not [n, d]")));
        };
        let mut out = ids.clone();
        out.push(d);
        Ok(out)
    }

    fn argmin(&mut self, x: &Shape) -> Result<Shape> {
        Ok(x[..x.len() - 1].to_vec())
    }

    fn to_float(&mut self, x: &Shape) -> Result<Shape> {
        Ok(x.clone())
    }

    fn sum_squares(&mut self, x: &Shape) -> Result<Shape> {
        let mut out = x.clone();
        *out.last_mut().expect("rank >= 1") = 1;
        Ok(out)
    }

    fn straight_through(&mut self, value: &Shape, gradient_to: &Shape) -> Result<Shape> {
        if value != gradient_to {
            return Err(err(
                "straight_through",
                format!("{value:?} vs {gradient_to:?}"),
            ));
        }
        Ok(value.clone())
    }
}
