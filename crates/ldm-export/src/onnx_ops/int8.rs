//! int8 layers: a convolution or linear layer whose weight has a calibrated input range
//! ([`ActivationRanges`]) runs as `QuantizeLinear` of its input (u8, the calibrated scale and
//! zero point), `ConvInteger` / `MatMulInteger` against u8 weights (zero point 128, a scale per
//! output channel), then in f32 the product's rescaling and the bias. All standard ONNX (opset
//! 10 operators), run by tract's and ONNX Runtime's integer kernels; the per-channel scales are
//! a plain `Mul` after the integer product, so no engine has to support per-channel
//! quantisation inside its kernel.

use std::collections::HashSet;

use ldm_core::manifest::DType;
use ldm_nn::ops::Result;
use ldm_nn::quant::{activation_qparams, quantize_weights, WEIGHT_ZERO_POINT};
use ldm_nn::NnError;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;

use super::{OnnxOps, Value, Weight};
use crate::proto::{self, Attr};

impl<'w> OnnxOps<'w> {
    /// The parameter name and calibrated input range of `weight`, when the layer it belongs
    /// to runs in int8.
    pub(super) fn int8_layer(&self, weight: &Value) -> Option<(String, (f32, f32))> {
        let ranges = self.int8?;
        let (param, _) = self.params.iter().find(|(_, v)| v.name == weight.name)?;
        Some((param.clone(), ranges.get(param)?))
    }

    /// `ConvInteger` of `x` with the int8 copy of `param` ([out, in, k, k]).
    pub(super) fn conv2d_int8(
        &mut self,
        x: &Value,
        (param, range): (String, (f32, f32)),
        bias: Option<&Value>,
        stride: usize,
        padding: usize,
    ) -> Result<Value> {
        let (shape, data) = self.weight_of(&param);
        let (x_q, x_zero, x_scale) = self.quantize_input(x, range);
        let (w_q, w_zero, w_scales) = self.quantized_weight(&param, shape, data, None);
        let (s, p) = (stride as i64, padding as i64);
        let attrs = vec![
            ("strides", Attr::Ints(vec![s, s])),
            ("pads", Attr::Ints(vec![p; 4])),
        ];
        let product = self.integer_node("ConvInteger", &[&x_q, &w_q, &x_zero, &w_zero], attrs);
        // Per output channel, along axis 1 of [N, C, H, W].
        let scales: Vec<f32> = w_scales.iter().map(|s| s * x_scale).collect();
        let scales = self.f32_initializer(&scales, &[shape[0], 1, 1]);
        let bias = bias.map(|b| self.channel_vector(b, 4));
        Ok(self.rescaled(&product, 4, &scales, bias.as_ref()))
    }

    /// `MatMulInteger` of `x` [..., in] with the transposed int8 copy of `param` ([out, in]).
    pub(super) fn linear_int8(
        &mut self,
        x: &Value,
        (param, range): (String, (f32, f32)),
        bias: Option<&Value>,
    ) -> Result<Value> {
        let (shape, data) = self.weight_of(&param);
        let &[out, inner] = shape else {
            return Err(NnError::Shape {
                op: "linear",
                message: format!("the weight '{param}' has shape {shape:?}, not [out, in]"),
            });
        };
        let (x_q, x_zero, x_scale) = self.quantize_input(x, range);
        let (w_q, w_zero, w_scales) =
            self.quantized_weight(&param, shape, data, Some((out, inner)));
        let product = self.integer_node("MatMulInteger", &[&x_q, &w_q, &x_zero, &w_zero], vec![]);
        let scales: Vec<f32> = w_scales.iter().map(|s| s * x_scale).collect();
        let scales = self.f32_initializer(&scales, &[out]);
        Ok(self.rescaled(&product, x.rank, &scales, bias))
    }

    fn weight_of(&self, param: &str) -> (&'w [usize], &'w [f32]) {
        let weight: &'w Weight = &self.weights[param];
        (&weight.shape, &weight.data)
    }

    /// `x` as u8 with the scale and zero point of `range`: (quantised, zero point, scale).
    fn quantize_input(&mut self, x: &Value, (min, max): (f32, f32)) -> (String, String, f32) {
        let x = self.cast(x, DType::Float32);
        let (scale, zero_point) = activation_qparams(min, max);
        let scale_value = self.f32_initializer(&[scale], &[]);
        let zero = self.raw_initializer("zero_point", DataType::Uint8, &[], vec![zero_point]);
        let name = self.fresh("QuantizeLinear");
        self.nodes.push(proto::node(
            "QuantizeLinear",
            name.clone(),
            &[&x.name, &scale_value.name, &zero],
            &[&name],
            vec![],
        ));
        (name, zero, scale)
    }

    /// The u8 initializer of `param`'s weight (`data`, [out, ...], quantised per output
    /// channel), its zero point and the scales; a linear layer's ([out, in] given as
    /// `transpose`) laid out as [in, out] for `MatMulInteger`.
    fn quantized_weight(
        &mut self,
        param: &str,
        shape: &[usize],
        data: &[f32],
        transpose: Option<(usize, usize)>,
    ) -> (String, String, Vec<f32>) {
        let (values, scales) = quantize_weights(data, shape[0]);
        let (values, dims) = match transpose {
            Some((out, inner)) => (transposed(&values, out, inner), vec![inner, out]),
            None => (values, shape.to_vec()),
        };
        let weight = self.raw_initializer(&format!("{param}_int8"), DataType::Uint8, &dims, values);
        let zero = self.raw_initializer(
            "weight_zero_point",
            DataType::Uint8,
            &[],
            vec![WEIGHT_ZERO_POINT],
        );
        (weight, zero, scales)
    }

    /// An integer product node, its int32 output's name.
    fn integer_node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let name = self.fresh(op);
        self.nodes
            .push(proto::node(op, name.clone(), inputs, &[&name], attrs));
        name
    }

    /// The int32 `product` in f32, times `scales`, plus `bias`.
    fn rescaled(
        &mut self,
        product: &str,
        rank: usize,
        scales: &Value,
        bias: Option<&Value>,
    ) -> Value {
        let to = DataType::Float as i64;
        let wide = self.emit(
            "Cast",
            &[product],
            vec![("to", Attr::Int(to))],
            rank,
            DType::Float32,
        );
        let scaled = self.binary("Mul", &wide, scales);
        match bias {
            Some(b) => {
                let b = self.cast(b, DType::Float32);
                self.binary("Add", &scaled, &b)
            }
            None => scaled,
        }
    }

    fn f32_initializer(&mut self, values: &[f32], dims: &[usize]) -> Value {
        self.initializer("scale", DType::Float32, dims, proto::f32_bytes(values))
    }

    fn raw_initializer(
        &mut self,
        prefix: &str,
        dtype: DataType,
        dims: &[usize],
        raw: Vec<u8>,
    ) -> String {
        let name = self.fresh(prefix);
        self.initializers
            .push(proto::typed_tensor(&name, dtype, dims, raw));
        name
    }
}

/// `data` ([rows, cols], row-major) as [cols, rows].
fn transposed<T: Copy>(data: &[T], rows: usize, cols: usize) -> Vec<T> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| data[r * cols + c]))
        .collect()
}

/// Drops the nodes whose outputs nothing reads (the float weights and casts of layers that
/// int8 replaced) and the initializers no node reads.
pub(super) fn prune(graph: &mut pb::GraphProto) {
    loop {
        let read = names_read(graph);
        let before = graph.node.len();
        graph
            .node
            .retain(|n| n.output.iter().any(|o| read.contains(o.as_str())));
        if graph.node.len() == before {
            break;
        }
    }
    let read = names_read(graph);
    graph.initializer.retain(|t| read.contains(t.name.as_str()));
}

/// Every name a node (or a node of a subgraph) or a graph output reads.
fn names_read(graph: &pb::GraphProto) -> HashSet<String> {
    let mut read: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let mut stack: Vec<&pb::GraphProto> = vec![graph];
    while let Some(g) = stack.pop() {
        for node in &g.node {
            read.extend(node.input.iter().cloned());
            stack.extend(node.attribute.iter().filter_map(|a| a.g.as_ref()));
        }
        read.extend(g.output.iter().map(|o| o.name.clone()));
    }
    read
}
