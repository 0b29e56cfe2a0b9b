//! Attention fused per tile of queries: for a few queries of one head at a time, their scores
//! against every key, the softmax of those rows, and the weighted sum of the values, without
//! the whole score matrix. A paper-size UNet's self-attention over 1,024 positions and 14
//! heads makes a 59 MB score matrix per layer: written, read by the softmax, written again
//! and read by the second product, it cost more than its arithmetic (the first product ran at
//! ~12 GMAC/s, most of it spent faulting in and zeroing fresh pages). Here a tile's scores are
//! six rows of the keys' length, in a core's L1 or L2.

use super::dense::BatchedProduct;
use super::softmax::RowSoftmax;
use super::tile::ROWS;
use super::{f32_elements, f32_output, on_threads, SharedBuffer};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// `values` of `softmax` of `scores`: inputs the queries, the keys and the values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FusedAttention {
    scores: BatchedProduct,
    softmax: RowSoftmax,
    values: BatchedProduct,
}

impl FusedAttention {
    /// The fusion of `scores`, whose output only `softmax` reads, whose output only `values`
    /// reads as its broadcast operand, where their layouts line up: the scores' rows are the
    /// softmax's rows, and the second product reads them as its rows over its depth.
    fn of(scores: &BatchedProduct, softmax: &RowSoftmax, values: &BatchedProduct) -> Option<Self> {
        let (s, v) = (&scores.geometry, &values.geometry);
        // Each tile of queries reads all of its head's keys, which a `BatchedProduct` keeps
        // within a core's L2.
        let rows_line_up = scores.output_shape.last() == Some(&s.columns)
            && s.output_column == 1
            && v.batch == s.batch
            && v.rows == s.rows
            && v.depth == s.columns
            && v.activation_batch == s.output_batch
            && v.activation_row == s.output_row
            && v.activation_depth == 1;
        rows_line_up.then(|| FusedAttention {
            scores: scores.clone(),
            softmax: softmax.clone(),
            values: values.clone(),
        })
    }

    fn attend(&self, queries: &[f32], keys: &[f32], values: &[f32], output: &mut [f32]) {
        let (s, v) = (self.scores.geometry, self.values.geometry);
        let keys = self.scores.pack(keys);
        let values = self.values.pack(values);
        let row_tiles = s.rows.div_ceil(ROWS);
        let output = SharedBuffer(output.as_mut_ptr());
        on_threads(s.batch * row_tiles, |range| {
            let mut probabilities = vec![0f32; ROWS * s.columns];
            for task in range {
                let (head, first_row) = (task / row_tiles, task % row_tiles * ROWS);
                let rows = (s.rows - first_row).min(ROWS);
                let offset = head * s.activation_batch + first_row * s.activation_row;
                let out = output.at(head * v.output_batch + first_row * v.output_row);
                // SAFETY: the geometries, checked against the inputs by `eval`, keep every
                // read in them and in `probabilities`; each task writes its own head's rows.
                unsafe {
                    self.scores.rows_into(
                        queries[offset..].as_ptr(),
                        s.activation_row,
                        &keys,
                        head,
                        0..s.columns.div_ceil(self.scores.isa.panel_width()),
                        rows,
                        probabilities.as_mut_ptr(),
                        s.columns,
                    );
                    for row in probabilities.chunks_exact_mut(s.columns).take(rows) {
                        self.softmax.row(row);
                    }
                    self.values.rows_into(
                        probabilities.as_ptr(),
                        s.columns,
                        &values,
                        head,
                        0..v.columns.div_ceil(self.values.isa.panel_width()),
                        rows,
                        out,
                        v.output_row,
                    );
                }
            }
        });
    }
}

impl Op for FusedAttention {
    fn name(&self) -> StaticName {
        "FusedAttention".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let s = &self.scores.geometry;
        Ok(vec![format!(
            "{} heads, {} queries, {} keys, {} values each",
            s.batch, s.rows, s.columns, self.values.geometry.columns
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for FusedAttention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let expected = [
            &self.scores.input_shapes[self.scores.broadcast_slot],
            &self.scores.input_shapes[1 - self.scores.broadcast_slot],
            &self.values.input_shapes[1 - self.values.broadcast_slot],
        ];
        for (input, shape) in inputs.iter().zip(expected) {
            ensure!(
                input.shape() == &**shape,
                "FusedAttention expects {expected:?}, got {:?}",
                input.shape()
            );
        }
        let (queries, keys, values) = (
            f32_elements(&inputs[0])?,
            f32_elements(&inputs[1])?,
            f32_elements(&inputs[2])?,
        );
        let output = f32_output(&self.values.output_shape, |output| {
            self.attend(queries, keys, values, output)
        })?;
        Ok(tvec!(output))
    }
}

impl TypedOp for FusedAttention {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.values.output_shape)))
    }
}

/// `model` with each chain of scores, softmax and weighted sum that [`FusedAttention`] can
/// run replaced by one.
pub(super) fn fuse(mut model: TypedModel) -> TractResult<TypedModel> {
    for id in model.eval_order()? {
        let Some(node) = model.nodes().get(id) else {
            continue;
        };
        let Some(values) = node.op_as::<BatchedProduct>() else {
            continue;
        };
        let probabilities = node.inputs[values.broadcast_slot];
        let softmax_node = model.node(probabilities.node);
        let Some(softmax) = softmax_node.op_as::<RowSoftmax>() else {
            continue;
        };
        let scores_outlet = softmax_node.inputs[0];
        let scores_node = model.node(scores_outlet.node);
        let Some(scores) = scores_node.op_as::<BatchedProduct>() else {
            continue;
        };
        let only_reader = |n: &TypedNode| n.outputs[0].successors.len() == 1;
        if !only_reader(softmax_node) || !only_reader(scores_node) {
            continue;
        }
        let Some(fused) = FusedAttention::of(scores, softmax, values) else {
            continue;
        };
        let inputs = [
            scores_node.inputs[scores.broadcast_slot],
            scores_node.inputs[1 - scores.broadcast_slot],
            node.inputs[1 - values.broadcast_slot],
        ];
        let mut patch = TypedModelPatch::default();
        let inputs = inputs
            .iter()
            .map(|&outlet| patch.tap_model(&model, outlet))
            .collect::<TractResult<Vec<_>>>()?;
        let output = patch.wire_node(&node.name, fused, &inputs)?[0];
        patch.shunt_outside(&model, OutletId::new(id, 0), output)?;
        patch.apply(&mut model)?;
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::{assert_close, run};
    use crate::kernels::{rewrite, Isa};
    use std::str::FromStr;
    use tract_ndarray::Dimension;
    use tract_onnx::tract_core::axes::AxesMapping;
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::einsum::EinSum;
    use tract_onnx::tract_core::ops::math::Mul;
    use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};

    /// Attention as the exported graphs' loop body declutters: scores of `queries` [1, n, h,
    /// d] by `keys` [m, h, d], scaled, softmax over the keys, weighted sum of `values`
    /// [m, h, d].
    fn attention(n: usize, m: usize, heads: usize, d: usize) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let q = model.add_source("queries", f32::fact([1, n, heads, d]))?;
        let k = model.add_source("keys", f32::fact([m, heads, d]))?;
        let v = model.add_source("values", f32::fact([m, heads, d]))?;
        let einsum = |e: &str| -> TractResult<EinSum> {
            Ok(EinSum::new(AxesMapping::from_str(e)?, f32::datum_type()))
        };
        let scores = model.wire_node("scores", einsum("cmbk,nbk->bmn")?, &[q, k])?;
        let scale = model.add_const("scale", tensor3(&[[[1.0 / (d as f32).sqrt()]]]))?;
        let mul = TypedBinOp(Box::new(Mul), None);
        let scaled = model.wire_node("scaled", mul, &[scores[0], scale])?;
        let softmax = Softmax::new(tvec![2], None, SoftmaxKind::Softmax);
        let probabilities = model.wire_node("softmax", softmax, &scaled)?;
        let out = model.wire_node("out", einsum("bmk,kbn->cambn")?, &[probabilities[0], v])?;
        model.select_output_outlets(&out)?;
        Ok(model)
    }

    fn inputs(n: usize, m: usize, heads: usize, d: usize) -> TVec<TValue> {
        let values = |shape: &[usize], seed: usize| {
            tract_ndarray::ArrayD::from_shape_fn(shape, |i| {
                let i: usize = i
                    .slice()
                    .iter()
                    .enumerate()
                    .map(|(a, x)| x * (3 + a * 7))
                    .sum();
                ((i * 31 + seed) % 29) as f32 / 29.0 - 0.5
            })
            .into_tvalue()
        };
        tvec![
            values(&[1, n, heads, d], 1),
            values(&[m, heads, d], 2),
            values(&[m, heads, d], 3)
        ]
    }

    #[test]
    fn fused_attention_computes_what_tracts_ops_do() -> TractResult<()> {
        // Whole and partial tiles of queries, one and several panels of keys.
        for (n, m, heads, d) in [(37, 48, 2, 32), (16, 16, 4, 32), (64, 160, 3, 16)] {
            let model = attention(n, m, heads, d)?;
            let expected = run(model.clone(), inputs(n, m, heads, d))?;
            for isa in Isa::available() {
                let ours = rewrite(model.clone(), &[isa])?;
                let fused = ours
                    .nodes()
                    .iter()
                    .filter(|n| n.op_is::<FusedAttention>())
                    .count();
                assert_eq!(fused, 1, "{isa:?} {n}x{m}");
                let actual = run(ours, inputs(n, m, heads, d))?;
                assert_close(&expected, &actual, 1e-5, &format!("{isa:?} {n}x{m}"));
            }
        }
        Ok(())
    }
}
