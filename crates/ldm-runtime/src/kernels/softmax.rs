//! Softmax over the last axis on a SIMD kernel of our own.
//!
//! tract's softmax sets up its reduction and element-wise kernels for every row: over the
//! cross-attention's rows of 24 keys that cost ~20 ns per score, 7 % of the shipped UNet's
//! time. This one keeps each row in registers for its three passes (max, exp and sum, scale)
//! and computes exp with a polynomial in SIMD (no library offers a vectorised exp for
//! `std::arch`). The last partial vector of a row goes through a one-vector buffer padded with
//! -inf, whose exp is exactly 0.

use super::{on_threads, Isa, SharedBuffer};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::math::Mul;
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};

/// Softmax tensors of at least this many elements split their rows over threads.
const SPLIT_ELEMENTS: usize = 16 * 1024;

/// Softmax over the last axis of an f32 tensor times `scale` (the attention's 1/sqrt(d),
/// folded in from the multiplication before it).
#[derive(Debug, Clone)]
pub struct RowSoftmax {
    isa: Isa,
    scale: f32,
}

impl PartialEq for RowSoftmax {
    fn eq(&self, other: &Self) -> bool {
        self.isa == other.isa && self.scale.to_bits() == other.scale.to_bits()
    }
}

impl Eq for RowSoftmax {}

impl RowSoftmax {
    fn rows(&self, data: &mut [f32], row: usize) {
        let rows = data.len() / row;
        let target = SharedBuffer(data.as_mut_ptr());
        let work = |range: std::ops::Range<usize>| {
            for index in range {
                // SAFETY: each index is one row of its own.
                self.row(unsafe { std::slice::from_raw_parts_mut(target.at(index * row), row) });
            }
        };
        if data.len() >= SPLIT_ELEMENTS {
            on_threads(rows, work);
        } else {
            work(0..rows);
        }
    }

    /// The softmax of one row, in place.
    pub(super) fn row(&self, values: &mut [f32]) {
        // SAFETY: the CPU has the instruction set the rewrite chose.
        unsafe {
            match self.isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => simd::avx512(values, self.scale),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => simd::avx2(values, self.scale),
                #[cfg(not(target_arch = "x86_64"))]
                _ => unreachable!("no softmax kernel is chosen off x86-64"),
            }
        }
    }
}

impl Op for RowSoftmax {
    fn name(&self) -> StaticName {
        "RowSoftmax".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("scale {}, {:?}", self.scale, self.isa)])
    }

    op_as_typed_op!();
}

impl EvalOp for RowSoftmax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        // In place, unless another op still holds the input.
        let mut output = args_1!(inputs).into_tensor();
        let row = *output
            .shape()
            .last()
            .context("RowSoftmax expects a tensor of rank 1+")?;
        if row > 0 {
            self.rows(output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?, row);
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for RowSoftmax {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
}

/// `model` with its f32 softmaxes over the last axis replaced, on `isa` (none: no CPU support,
/// nothing replaced).
pub(super) fn replace_softmaxes(
    mut model: TypedModel,
    isa: Option<Isa>,
) -> TractResult<TypedModel> {
    let Some(isa) = isa else {
        return Ok(model);
    };
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(softmax) = node.op_as::<Softmax>() else {
            continue;
        };
        let fact = model.outlet_fact(node.inputs[0])?;
        let last = fact.rank().checked_sub(1);
        if softmax.kind != SoftmaxKind::Softmax
            || softmax.quant_output_dt.is_some()
            || fact.datum_type != f32::datum_type()
            || last.is_none_or(|last| *softmax.axes != [last])
        {
            continue;
        }
        let (scores, scale) = scaled_input(&model, node)?.unwrap_or((node.inputs[0], 1.0));
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(&model, scores)?;
        let output = patch.wire_node(&node.name, RowSoftmax { isa, scale }, &[input])?[0];
        patch.shunt_outside(&model, OutletId::new(id, 0), output)?;
        patch.apply(&mut model)?;
    }
    Ok(model)
}

/// Where `softmax`'s input is the product of some tensor (used nowhere else) by a constant
/// positive scalar: that tensor and the scalar.
fn scaled_input(model: &TypedModel, softmax: &TypedNode) -> TractResult<Option<(OutletId, f32)>> {
    let product = model.node(softmax.inputs[0].node);
    let Some(mul) = product.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if !mul.0.is::<Mul>() || product.inputs.len() != 2 || product.outputs[0].successors.len() != 1 {
        return Ok(None);
    }
    for slot in 0..2 {
        let (factor, other) = (product.inputs[slot], product.inputs[1 - slot]);
        let Some(konst) = &model.outlet_fact(factor)?.konst else {
            continue;
        };
        let other_fact = model.outlet_fact(other)?;
        let same_shape = other_fact.shape == model.outlet_fact(softmax.inputs[0])?.shape;
        if konst.datum_type() == f32::datum_type() && konst.is_uniform() && same_shape {
            let scale = konst.cast_to_scalar::<f32>()?;
            if scale.is_finite() && scale > 0.0 {
                return Ok(Some((other, scale)));
            }
        }
    }
    Ok(None)
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// One row's softmax in place, from one macro per instruction set.
    macro_rules! row_softmax {
        ($name:ident, $feature:literal, $vector:ty, $lanes:literal, $splat:ident,
         $load:ident, $store:ident, $fma:ident, $max:ident, $add:ident, $mul:ident,
         $sub:ident, $to_int:ident, $to_float:ident, $add_int:ident, $shift:ident,
         $int_splat:ident, $as_float:ident) => {
            /// # Safety
            /// The CPU supports the feature.
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $name(row: &mut [f32], scale: f32) {
                // exp(x) for x <= 0 as 2^n * p(r), x = n ln 2 + r, |r| <= ln 2 / 2, p the
                // Taylor series to r^6 (relative error ~1e-7). x is clamped at -88, where
                // n = -127 makes 2^n's bits, and so the result, exactly 0; the clamp keeps NaN.
                #[target_feature(enable = $feature)]
                #[inline]
                unsafe fn exp(x: $vector) -> $vector {
                    let x = $max($splat(-88.0), x);
                    let n = $to_int($mul(x, $splat(std::f32::consts::LOG2_E)));
                    let nf = $to_float(n);
                    let r = $fma(nf, $splat(-0.693_145_75), x);
                    let r = $fma(nf, $splat(-1.428_606_8e-6), r);
                    let mut p = $splat(1.0 / 720.0);
                    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                        p = $fma(p, r, $splat(c));
                    }
                    let scale = $as_float($shift::<23>($add_int(n, $int_splat(127))));
                    $mul(p, scale)
                }
                #[target_feature(enable = $feature)]
                #[inline]
                unsafe fn horizontal(v: $vector, fold: fn(f32, f32) -> f32) -> f32 {
                    let mut lanes = [0f32; $lanes];
                    $store(lanes.as_mut_ptr(), v);
                    lanes.into_iter().reduce(fold).expect("a vector has lanes")
                }
                let whole = row.len() / $lanes * $lanes;
                let (body, tail) = row.split_at_mut(whole);
                let mut last = [f32::NEG_INFINITY; $lanes];
                last[..tail.len()].copy_from_slice(tail);
                let p = body.as_mut_ptr();
                let mut largest = $load(last.as_ptr());
                for at in (0..whole).step_by($lanes) {
                    largest = $max($load(p.add(at)), largest);
                }
                let largest = $splat(horizontal(largest, f32::max));
                let factor = $splat(scale);
                let mut sum = exp($mul($sub($load(last.as_ptr()), largest), factor));
                $store(last.as_mut_ptr(), sum);
                for at in (0..whole).step_by($lanes) {
                    let e = exp($mul($sub($load(p.add(at)), largest), factor));
                    $store(p.add(at), e);
                    sum = $add(sum, e);
                }
                let scale = $splat(1.0 / horizontal(sum, |a, b| a + b));
                for at in (0..whole).step_by($lanes) {
                    $store(p.add(at), $mul($load(p.add(at)), scale));
                }
                $store(last.as_mut_ptr(), $mul($load(last.as_ptr()), scale));
                tail.copy_from_slice(&last[..tail.len()]);
            }
        };
    }

    crate::kernels::for_each_isa!(row_softmax);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::{assert_close, run};

    fn softmax_model(shape: &[usize]) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let input = model.add_source("scores", f32::fact(shape))?;
        let op = Softmax::new(tvec![shape.len() - 1], None, SoftmaxKind::Softmax);
        let output = model.wire_node("softmax", op, &[input])?;
        model.select_output_outlets(&output)?;
        Ok(model)
    }

    #[test]
    fn rows_of_any_length_match_tracts_softmax() -> TractResult<()> {
        for isa in Isa::available() {
            for shape in [
                [2, 3, 24],
                [1, 4, 16],
                [1, 2, 5],
                [1, 1, 1],
                [3, 2, 257],
                [2, 64, 256],
            ] {
                let input = tract_ndarray::ArrayD::from_shape_fn(&shape[..], |i| {
                    ((i[0] * 37 + i[1] * 11 + i[2] * 7) % 41) as f32 * 0.7 - 12.0
                });
                let model = softmax_model(&shape)?;
                let expected = run(model.clone(), tvec![input.clone().into_tvalue()])?;
                let ours = replace_softmaxes(model, Some(isa))?;
                assert_eq!(
                    ours.nodes()
                        .iter()
                        .filter(|n| n.op_is::<RowSoftmax>())
                        .count(),
                    1
                );
                let actual = run(ours, tvec![input.clone().into_tvalue()])?;
                assert_close(&expected, &actual, 1e-6, &format!("{isa:?} {shape:?}"));
            }
        }
        Ok(())
    }

    #[test]
    fn a_nan_score_makes_its_row_nan() -> TractResult<()> {
        for isa in Isa::available() {
            let mut input = tract_ndarray::ArrayD::from_elem(&[2, 20][..], 0.5f32);
            input[[0, 17]] = f32::NAN;
            let ours = replace_softmaxes(softmax_model(&[2, 20])?, Some(isa))?;
            let output = run(ours, tvec![input.clone().into_tvalue()])?;
            assert!(output[..20].iter().all(|v| v.is_nan()), "{isa:?}");
            assert!(
                output[20..].iter().all(|v| (v - 0.05).abs() < 1e-6),
                "{isa:?}"
            );
        }
        Ok(())
    }
}
