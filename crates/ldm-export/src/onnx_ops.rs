//! The ONNX interpretation of the networks: every op appends nodes to a graph being built and
//! parameters become initializers under their checkpoint names.
//!
//! Only standard opset-17 operators are emitted (the portable profile): GroupNorm is lowered
//! through InstanceNormalization, SiLU is Sigmoid·Mul, GELU its Erf form, attention MatMul +
//! Softmax (with [`SlicedAttention`], self-attention over positions a `Scan` over chunks of
//! queries), upsampling Resize(nearest), downsampling AveragePool. Shapes stay symbolic: reshapes copy (0) or infer (-1)
//! the dimensions they do not fix, so one graph serves every batch and spatial size.
//!
//! In f16-weights precision the initializers are float16 and each is cast to float32 once
//! (engines fold the cast at load), so the file is half the size and the arithmetic float32.
//! In f16 precision the weights are stored as float16 and the arithmetic follows them: a value
//! stays f32 (graph inputs, the timestep embedding's sin/cos) until it meets an f16 weight,
//! and normalisation and softmax compute their statistics in f32, where f16 would overflow or
//! lose the small variances.

use std::collections::HashMap;

use ldm_core::manifest::{DType, Precision, SlicedAttention, TensorSpec};
use ldm_nn::ops::{linear_by_matmul, scaled_dot_product, Result};
use ldm_nn::quant::ActivationRanges;
use ldm_nn::{Dim, Init, Keys, NnError, Ops};
use tract_onnx::pb;

use crate::proto::{self, Attr};

mod attention;
mod int8;
mod position;

/// The opset every graph imports.
pub const OPSET: i64 = 17;
/// ONNX IR version 8 (ONNX 1.10+), the one opset 17 models use.
const IR_VERSION: i64 = 8;

/// A named value of the graph being built.
#[derive(Debug, Clone)]
pub struct Value {
    name: String,
    rank: usize,
    dtype: DType,
}

impl Value {
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One trained parameter: its shape and f32 values.
#[derive(Debug, Clone)]
pub struct Weight {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub struct OnnxOps<'w> {
    weights: &'w HashMap<String, Weight>,
    precision: Precision,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    params: HashMap<String, Value>,
    next_id: usize,
    sliced_attention: Option<SlicedAttention>,
    /// Layers with a calibrated input range run in int8 (`int8.rs`).
    int8: Option<&'w ActivationRanges>,
}

fn shape_error(op: &'static str, message: String) -> NnError {
    NnError::Shape { op, message }
}

impl<'w> OnnxOps<'w> {
    pub fn new(weights: &'w HashMap<String, Weight>, precision: Precision) -> Self {
        Self {
            weights,
            precision,
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            params: HashMap::new(),
            next_id: 0,
            sliced_attention: None,
            int8: None,
        }
    }

    /// Every convolution and linear layer whose weight `ranges` calibrated runs in int8.
    pub fn with_int8(mut self, ranges: &'w ActivationRanges) -> Self {
        self.int8 = Some(ranges);
        self
    }

    /// Self-attention over positions attends in chunks of queries above `sliced.above` of
    /// them; without this it always attends whole.
    pub fn with_sliced_attention(mut self, sliced: SlicedAttention) -> Self {
        self.sliced_attention = Some(sliced);
        self
    }

    /// Declares a graph input.
    pub fn input(&mut self, spec: &TensorSpec) -> Value {
        self.inputs.push(proto::value_info(spec));
        Value {
            name: spec.name.clone(),
            rank: spec.shape.len(),
            dtype: spec.dtype,
        }
    }

    /// The finished model; each `(value, spec)` becomes a graph output named and typed as the
    /// spec says (f16 values are cast back to f32 outputs).
    pub fn finish(mut self, graph_name: &str, outputs: &[(Value, TensorSpec)]) -> pb::ModelProto {
        for (value, spec) in outputs {
            let node = if value.dtype == spec.dtype {
                proto::node(
                    "Identity",
                    spec.name.clone(),
                    &[&value.name],
                    &[&spec.name],
                    vec![],
                )
            } else {
                let to = proto::data_type(spec.dtype) as i64;
                proto::node(
                    "Cast",
                    spec.name.clone(),
                    &[&value.name],
                    &[&spec.name],
                    vec![("to", Attr::Int(to))],
                )
            };
            self.nodes.push(node);
        }
        let mut graph = pb::GraphProto {
            name: graph_name.into(),
            node: self.nodes,
            initializer: self.initializers,
            input: self.inputs,
            output: outputs
                .iter()
                .map(|(_, spec)| proto::value_info(spec))
                .collect(),
            ..Default::default()
        };
        if self.int8.is_some() {
            int8::prune(&mut graph);
        }
        pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "ldm".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(graph),
            ..Default::default()
        }
    }

    fn fresh(&mut self, op: &str) -> String {
        self.next_id += 1;
        format!("{op}_{}", self.next_id)
    }

    /// Appends one node with a single output and returns that output.
    fn emit(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
        rank: usize,
        dtype: DType,
    ) -> Value {
        let name = self.fresh(op);
        self.nodes
            .push(proto::node(op, name.clone(), inputs, &[&name], attrs));
        Value { name, rank, dtype }
    }

    fn initializer(&mut self, prefix: &str, dtype: DType, dims: &[usize], raw: Vec<u8>) -> Value {
        let name = self.fresh(prefix);
        self.initializers
            .push(proto::tensor(&name, dtype, dims, raw));
        Value {
            name,
            rank: dims.len(),
            dtype,
        }
    }

    fn const_i64(&mut self, values: &[i64]) -> Value {
        self.initializer(
            "shape",
            DType::Int64,
            &[values.len()],
            proto::i64_bytes(values),
        )
    }

    /// A scalar of the given float type.
    fn scalar(&mut self, value: f32, dtype: DType) -> Value {
        let raw = match dtype {
            DType::Float16 => proto::f16_bytes(&[value]),
            _ => proto::f32_bytes(&[value]),
        };
        self.initializer("scalar", dtype, &[], raw)
    }

    fn cast(&mut self, x: &Value, dtype: DType) -> Value {
        if x.dtype == dtype {
            return x.clone();
        }
        let to = proto::data_type(dtype) as i64;
        self.emit(
            "Cast",
            &[&x.name],
            vec![("to", Attr::Int(to))],
            x.rank,
            dtype,
        )
    }

    /// Both operands in one float type: f16 when either is (the weights decide).
    fn unify(&mut self, a: &Value, b: &Value) -> (Value, Value) {
        if a.dtype == DType::Float16 || b.dtype == DType::Float16 {
            (self.cast(a, DType::Float16), self.cast(b, DType::Float16))
        } else {
            (a.clone(), b.clone())
        }
    }

    fn binary(&mut self, op: &str, a: &Value, b: &Value) -> Value {
        let (a, b) = self.unify(a, b);
        self.emit(op, &[&a.name, &b.name], vec![], a.rank.max(b.rank), a.dtype)
    }

    fn unary(&mut self, op: &str, x: &Value) -> Value {
        self.emit(op, &[&x.name], vec![], x.rank, x.dtype)
    }

    /// Runs `body` on `x` in f32 and returns the result in `x`'s type.
    fn in_f32(&mut self, x: &Value, body: impl FnOnce(&mut Self, &Value) -> Value) -> Value {
        let wide = self.cast(x, DType::Float32);
        let y = body(self, &wide);
        self.cast(&y, x.dtype)
    }

    /// A per-channel vector [C] shaped to broadcast over NC... of rank `rank`.
    fn channel_vector(&mut self, v: &Value, rank: usize) -> Value {
        let mut dims = vec![-1i64];
        dims.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
        let shape = self.const_i64(&dims);
        self.emit(
            "Reshape",
            &[&v.name, &shape.name],
            vec![],
            dims.len(),
            v.dtype,
        )
    }
}

impl Ops for OnnxOps<'_> {
    type T = Value;

    fn alias(&self, x: &Value) -> Value {
        x.clone()
    }

    fn param(&mut self, name: &str, shape: &[usize], _init: Init) -> Result<Value> {
        if let Some(v) = self.params.get(name) {
            return Ok(v.clone());
        }
        let weight = self.weights.get(name).ok_or_else(|| NnError::Param {
            name: name.into(),
            message: "missing from the checkpoint".into(),
        })?;
        if weight.shape != shape {
            return Err(NnError::Param {
                name: name.into(),
                message: format!(
                    "the configuration needs shape {shape:?}, the checkpoint holds {:?}",
                    weight.shape
                ),
            });
        }
        let (dtype, raw) = match self.precision {
            Precision::F32 => (DType::Float32, proto::f32_bytes(&weight.data)),
            Precision::F16 | Precision::F16Weights => {
                (DType::Float16, proto::f16_bytes(&weight.data))
            }
        };
        self.initializers
            .push(proto::tensor(name, dtype, shape, raw));
        let stored = Value {
            name: name.into(),
            rank: shape.len(),
            dtype,
        };
        let v = match self.precision {
            Precision::F16Weights => self.cast(&stored, DType::Float32),
            Precision::F32 | Precision::F16 => stored,
        };
        self.params.insert(name.into(), v.clone());
        Ok(v)
    }

    fn constant(&mut self, values: &[f32], shape: &[usize]) -> Result<Value> {
        if values.len() != shape.iter().product::<usize>() {
            return Err(shape_error(
                "constant",
                format!("{} values for shape {shape:?}", values.len()),
            ));
        }
        Ok(self.initializer("const", DType::Float32, shape, proto::f32_bytes(values)))
    }

    fn conv2d(
        &mut self,
        x: &Value,
        w: &Value,
        b: Option<&Value>,
        stride: usize,
        padding: usize,
    ) -> Result<Value> {
        if let Some(layer) = self.int8_layer(w) {
            return self.conv2d_int8(x, layer, b, stride, padding);
        }
        let x = self.cast(x, w.dtype);
        let mut inputs = vec![x.name.as_str(), w.name.as_str()];
        if let Some(b) = b {
            inputs.push(&b.name);
        }
        let (s, p) = (stride as i64, padding as i64);
        let attrs = vec![
            ("strides", Attr::Ints(vec![s, s])),
            ("pads", Attr::Ints(vec![p; 4])),
        ];
        Ok(self.emit("Conv", &inputs, attrs, 4, w.dtype))
    }

    fn pad2d(&mut self, x: &Value, [left, right, top, bottom]: [usize; 4]) -> Result<Value> {
        let r = x.rank;
        if r < 2 {
            return Err(shape_error("pad2d", format!("rank {r}")));
        }
        // ONNX pads: all begins, then all ends; the last two axes are H then W.
        let mut pads = vec![0i64; 2 * r];
        pads[r - 2] = top as i64;
        pads[r - 1] = left as i64;
        pads[2 * r - 2] = bottom as i64;
        pads[2 * r - 1] = right as i64;
        let pads = self.const_i64(&pads);
        Ok(self.emit("Pad", &[&x.name, &pads.name], vec![], r, x.dtype))
    }

    fn matmul(&mut self, a: &Value, b: &Value) -> Result<Value> {
        Ok(self.binary("MatMul", a, b))
    }
    fn linear(&mut self, x: &Value, w: &Value, b: Option<&Value>) -> Result<Value> {
        if let Some(layer) = self.int8_layer(w) {
            return self.linear_int8(x, layer, b);
        }
        linear_by_matmul(self, x, w, b)
    }
    fn add(&mut self, a: &Value, b: &Value) -> Result<Value> {
        Ok(self.binary("Add", a, b))
    }
    fn sub(&mut self, a: &Value, b: &Value) -> Result<Value> {
        Ok(self.binary("Sub", a, b))
    }
    fn mul(&mut self, a: &Value, b: &Value) -> Result<Value> {
        Ok(self.binary("Mul", a, b))
    }
    fn scale(&mut self, x: &Value, factor: f32) -> Result<Value> {
        let s = self.scalar(factor, x.dtype);
        Ok(self.binary("Mul", x, &s))
    }
    fn exp(&mut self, x: &Value) -> Result<Value> {
        Ok(self.unary("Exp", x))
    }
    fn sin(&mut self, x: &Value) -> Result<Value> {
        Ok(self.unary("Sin", x))
    }
    fn cos(&mut self, x: &Value) -> Result<Value> {
        Ok(self.unary("Cos", x))
    }
    fn erf(&mut self, x: &Value) -> Result<Value> {
        Ok(self.unary("Erf", x))
    }
    fn sigmoid(&mut self, x: &Value) -> Result<Value> {
        Ok(self.unary("Sigmoid", x))
    }

    fn clamp(&mut self, x: &Value, min: f32, max: f32) -> Result<Value> {
        let (lo, hi) = (self.scalar(min, x.dtype), self.scalar(max, x.dtype));
        Ok(self.emit(
            "Clip",
            &[&x.name, &lo.name, &hi.name],
            vec![],
            x.rank,
            x.dtype,
        ))
    }

    fn softmax(&mut self, x: &Value) -> Result<Value> {
        Ok(self.in_f32(x, |o, x| {
            o.emit(
                "Softmax",
                &[&x.name],
                vec![("axis", Attr::Int(-1))],
                x.rank,
                x.dtype,
            )
        }))
    }

    fn group_norm(
        &mut self,
        x: &Value,
        groups: usize,
        w: &Value,
        b: &Value,
        eps: f64,
    ) -> Result<Value> {
        if groups == 0 {
            return Err(shape_error("group_norm", "0 groups".into()));
        }
        // [N, C, ...] -> [N, G, rest]: InstanceNormalization then normalises each (n, g) row.
        let normalised = self.in_f32(x, |o, x| {
            let grouped_shape = o.const_i64(&[0, groups as i64, -1]);
            let grouped = o.emit(
                "Reshape",
                &[&x.name, &grouped_shape.name],
                vec![],
                3,
                x.dtype,
            );
            let ones = o.initializer(
                "ones",
                DType::Float32,
                &[groups],
                proto::f32_bytes(&vec![1.0; groups]),
            );
            let zeros = o.initializer(
                "zeros",
                DType::Float32,
                &[groups],
                proto::f32_bytes(&vec![0.0; groups]),
            );
            let attrs = vec![("epsilon", Attr::Float(eps as f32))];
            let n = o.emit(
                "InstanceNormalization",
                &[&grouped.name, &ones.name, &zeros.name],
                attrs,
                3,
                x.dtype,
            );
            let shape = o.emit("Shape", &[&x.name], vec![], 1, DType::Int64);
            o.emit("Reshape", &[&n.name, &shape.name], vec![], x.rank, x.dtype)
        });
        let w = self.channel_vector(w, x.rank);
        let b = self.channel_vector(b, x.rank);
        let scaled = self.binary("Mul", &normalised, &w);
        Ok(self.binary("Add", &scaled, &b))
    }

    fn layer_norm(&mut self, x: &Value, w: &Value, b: &Value, eps: f64) -> Result<Value> {
        let (w, b) = (self.cast(w, DType::Float32), self.cast(b, DType::Float32));
        let y = self.in_f32(x, |o, x| {
            let attrs = vec![
                ("axis", Attr::Int(-1)),
                ("epsilon", Attr::Float(eps as f32)),
            ];
            o.emit(
                "LayerNormalization",
                &[&x.name, &w.name, &b.name],
                attrs,
                x.rank,
                x.dtype,
            )
        });
        Ok(y)
    }

    fn reshape(&mut self, x: &Value, dims: &[Dim]) -> Result<Value> {
        let target: Vec<i64> = dims
            .iter()
            .map(|d| match d {
                Dim::Keep => 0,
                Dim::Infer => -1,
                Dim::Fixed(n) => *n as i64,
            })
            .collect();
        let shape = self.const_i64(&target);
        Ok(self.emit(
            "Reshape",
            &[&x.name, &shape.name],
            vec![],
            dims.len(),
            x.dtype,
        ))
    }

    fn reshape_like(&mut self, x: &Value, like: &Value) -> Result<Value> {
        let shape = self.emit("Shape", &[&like.name], vec![], 1, DType::Int64);
        Ok(self.emit(
            "Reshape",
            &[&x.name, &shape.name],
            vec![],
            like.rank,
            x.dtype,
        ))
    }

    fn permute(&mut self, x: &Value, perm: &[usize]) -> Result<Value> {
        if perm.len() != x.rank {
            return Err(shape_error(
                "permute",
                format!("{perm:?} on rank {}", x.rank),
            ));
        }
        let perm = perm.iter().map(|&p| p as i64).collect();
        Ok(self.emit(
            "Transpose",
            &[&x.name],
            vec![("perm", Attr::Ints(perm))],
            x.rank,
            x.dtype,
        ))
    }

    fn concat(&mut self, xs: &[&Value], axis: usize) -> Result<Value> {
        let first = xs
            .first()
            .ok_or_else(|| shape_error("concat", "no inputs".into()))?;
        let dtype = if xs.iter().any(|x| x.dtype == DType::Float16) {
            DType::Float16
        } else {
            first.dtype
        };
        let cast: Vec<Value> = xs.iter().map(|x| self.cast(x, dtype)).collect();
        let names: Vec<&str> = cast.iter().map(|x| x.name.as_str()).collect();
        let attrs = vec![("axis", Attr::Int(axis as i64))];
        Ok(self.emit("Concat", &names, attrs, first.rank, dtype))
    }

    fn narrow(&mut self, x: &Value, axis: usize, start: usize, len: usize) -> Result<Value> {
        let starts = self.const_i64(&[start as i64]);
        let ends = self.const_i64(&[(start + len) as i64]);
        let axes = self.const_i64(&[axis as i64]);
        let inputs = [x.name.as_str(), &starts.name, &ends.name, &axes.name];
        Ok(self.emit("Slice", &inputs, vec![], x.rank, x.dtype))
    }

    fn upsample2x(&mut self, x: &Value) -> Result<Value> {
        let mut scales = vec![1.0f32; x.rank];
        scales[x.rank - 2] = 2.0;
        scales[x.rank - 1] = 2.0;
        let scales = self.initializer(
            "scales",
            DType::Float32,
            &[x.rank],
            proto::f32_bytes(&scales),
        );
        // Integer factor, asymmetric coordinates and floor: pixel (i, j) copies (i/2, j/2),
        // exactly what nearest upsampling in PyTorch does.
        let attrs = vec![
            ("mode", Attr::Text("nearest")),
            ("coordinate_transformation_mode", Attr::Text("asymmetric")),
            ("nearest_mode", Attr::Text("floor")),
        ];
        Ok(self.emit(
            "Resize",
            &[&x.name, "", &scales.name],
            attrs,
            x.rank,
            x.dtype,
        ))
    }

    fn coordinate_grid(&mut self, like: &Value) -> Result<Value> {
        self.grid_of(like)
    }

    fn avg_pool2x(&mut self, x: &Value) -> Result<Value> {
        let attrs = vec![
            ("kernel_shape", Attr::Ints(vec![2, 2])),
            ("strides", Attr::Ints(vec![2, 2])),
        ];
        Ok(self.emit("AveragePool", &[&x.name], attrs, x.rank, x.dtype))
    }

    fn embedding(&mut self, table: &Value, ids: &Value) -> Result<Value> {
        let attrs = vec![("axis", Attr::Int(0))];
        Ok(self.emit(
            "Gather",
            &[&table.name, &ids.name],
            attrs,
            ids.rank + 1,
            table.dtype,
        ))
    }

    fn argmin(&mut self, x: &Value) -> Result<Value> {
        let attrs = vec![
            ("axis", Attr::Int(x.rank as i64 - 1)),
            ("keepdims", Attr::Int(0)),
        ];
        Ok(self.emit("ArgMin", &[&x.name], attrs, x.rank - 1, DType::Int64))
    }

    fn to_float(&mut self, x: &Value) -> Result<Value> {
        Ok(self.cast(x, DType::Float32))
    }

    fn sum_squares(&mut self, x: &Value) -> Result<Value> {
        let attrs = vec![("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))];
        Ok(self.emit("ReduceSumSquare", &[&x.name], attrs, x.rank, x.dtype))
    }

    fn straight_through(&mut self, value: &Value, _gradient_to: &Value) -> Result<Value> {
        Ok(value.clone())
    }

    /// With [`SlicedAttention`], self-attention over positions is
    /// [`OnnxOps::chunked_attention`]. (Not an `If` between whole and chunked attention:
    /// tract 0.23 names every `If` it translates "If", so a graph with two fails to load.)
    fn attention(
        &mut self,
        q: &Value,
        k: &Value,
        v: &Value,
        head_dim: usize,
        keys: Keys,
    ) -> Result<Value> {
        let kt = self.transpose_last(k)?;
        match (keys, self.sliced_attention) {
            (Keys::Positions, Some(sliced)) if q.rank == 4 => {
                self.chunked_attention(q, &kt, v, head_dim, sliced)
            }
            _ => scaled_dot_product(self, q, &kt, v, head_dim, None),
        }
    }
}
