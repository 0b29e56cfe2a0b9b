use super::*;
use crate::kernels::test_support::{assert_close, assert_same_on_two_threads, run};
use std::str::FromStr;
use tract_ndarray::Dimension;
use tract_onnx::tract_core::axes::AxesMapping;
use tract_onnx::tract_core::ops::binary::TypedBinOp;

/// A graph of one einsum `expression` of an input of `shape` by constant weights of
/// `weights`, plus, if given, a constant bias of `bias` added after it.
fn product(
    expression: &str,
    shape: &[usize],
    weights: &[usize],
    bias: Option<&[usize]>,
) -> TractResult<TypedModel> {
    let mut model = TypedModel::default();
    let input = model.add_source("activation", f32::fact(shape))?;
    let values = tract_ndarray::ArrayD::from_shape_fn(weights, |i| {
        let i: usize = i
            .slice()
            .iter()
            .enumerate()
            .map(|(a, x)| x * (7 + a * 13))
            .sum();
        ((i * 7919) % 211) as f32 / 211.0 - 0.5
    });
    let weights = model.add_const("weights", values.into_tensor())?;
    let op = EinSum::new(AxesMapping::from_str(expression)?, f32::datum_type());
    let mut output = model.wire_node("product", op, &[input, weights])?;
    if let Some(bias) = bias {
        let values = tract_ndarray::ArrayD::from_shape_fn(bias, |i| {
            i.slice().iter().sum::<usize>() as f32 * 0.1 - 0.3
        });
        let bias = model.add_const("bias_values", values.into_tensor())?;
        let add = TypedBinOp(Box::new(Add), None);
        output = model.wire_node("bias", add, &[output[0], bias])?;
    }
    model.select_output_outlets(&output)?;
    Ok(model)
}

fn activation(shape: &[usize]) -> TValue {
    tract_ndarray::ArrayD::from_shape_fn(shape, |i| {
        let i: usize = i
            .slice()
            .iter()
            .enumerate()
            .map(|(a, x)| x * (3 + a * 5))
            .sum();
        (i % 23) as f32 / 23.0 - 0.4
    })
    .into_tvalue()
}

fn dense_ops(model: &TypedModel) -> Vec<&DenseProduct> {
    model
        .nodes()
        .iter()
        .filter_map(|n| n.op_as::<DenseProduct>())
        .collect()
}

#[test]
fn the_dense_kernels_compute_what_tracts_einsum_does() -> TractResult<()> {
    // The forms tract declutters the exported graphs' products into, with vectors along the
    // columns (contiguous, or staged and scattered) and along the rows; whole and partial
    // tiles of rows and vectors; a bias folded in per column or broadcast.
    type Case = (
        &'static str,
        Vec<usize>,
        Vec<usize>,
        Option<Vec<usize>>,
        Orientation,
    );
    let cases: Vec<Case> = vec![
        (
            "km,kn->mn",
            vec![64, 256],
            vec![64, 64],
            None,
            Orientation::Columns,
        ),
        (
            "km,kn->mn",
            vec![24, 13],
            vec![24, 80],
            Some(vec![1, 80]),
            Orientation::Columns,
        ),
        (
            "amk,kn->mn",
            vec![1, 24, 192],
            vec![192, 128],
            Some(vec![1, 128]),
            Orientation::Columns,
        ),
        (
            "km,kn->amn",
            vec![128, 16],
            vec![128, 48],
            None,
            Orientation::Columns,
        ),
        (
            "k,kn->n",
            vec![256],
            vec![256, 128],
            Some(vec![1]),
            Orientation::Columns,
        ),
        (
            "mk,kn->nm",
            vec![37, 64],
            vec![64, 32],
            Some(vec![32, 1]),
            Orientation::Columns,
        ),
        (
            "mbk,bkn->nm",
            vec![16, 2, 32],
            vec![2, 32, 64],
            None,
            Orientation::Columns,
        ),
        (
            "NIHW,OI->NOHW",
            vec![1, 64, 16, 16],
            vec![70, 64],
            Some(vec![1, 70, 1, 1]),
            Orientation::Rows,
        ),
        (
            "IHW,OI->NOHW",
            vec![40, 4, 4],
            vec![13, 40],
            None,
            Orientation::Rows,
        ),
    ];
    for isa in Isa::available() {
        for (expression, shape, weights, bias, orientation) in &cases {
            let model = product(expression, shape, weights, bias.as_deref())?;
            let expected = run(model.clone(), tvec![activation(shape)])?;
            let ours = replace_products(model, &[isa])?;
            let ops = dense_ops(&ours);
            let label = format!("{isa:?} {expression} {shape:?}");
            assert_eq!(ops.len(), 1, "{label}");
            assert_eq!(ops[0].orientation, *orientation, "{label}");
            assert_eq!(ops[0].bias.is_some(), bias.is_some(), "{label}");
            let actual = run(ours, tvec![activation(shape)])?;
            assert_close(&expected, &actual, 1e-5, &label);
        }
    }
    Ok(())
}

#[test]
fn two_threads_compute_the_same_bits_as_one() -> TractResult<()> {
    for (expression, shape, weights) in [
        ("km,kn->mn", vec![64, 256], vec![64, 128]),
        ("NIHW,OI->NOHW", vec![1, 32, 16, 16], vec![64, 32]),
        ("mk,kn->nm", vec![64, 64], vec![64, 64]),
    ] {
        let model = product(expression, &shape, &weights, None)?;
        let model = replace_products(model, &Isa::available())?;
        assert_same_on_two_threads(model, || tvec![activation(&shape)], expression)?;
    }
    Ok(())
}

#[test]
fn other_products_stay_with_tract() -> TractResult<()> {
    let isas = [Isa::Avx2];
    // A batch of products (the attention's), columns that fill no vector, rows split by the
    // depth in the activation.
    for (expression, shape, weights) in [
        ("bmk,bkn->bmn", vec![2, 16, 8], vec![2, 8, 16]),
        ("mk,kn->mn", vec![16, 8], vec![8, 12]),
        ("NIHW,OI->NOHW", vec![2, 8, 4, 4], vec![16, 8]),
    ] {
        let model = replace_products(product(expression, &shape, &weights, None)?, &isas)?;
        assert!(dense_ops(&model).is_empty(), "{expression}");
    }
    Ok(())
}

/// A graph of one einsum `expression` of two inputs of `shapes`.
fn product_of_two(expression: &str, shapes: [&[usize]; 2]) -> TractResult<TypedModel> {
    let mut model = TypedModel::default();
    let a = model.add_source("a", f32::fact(shapes[0]))?;
    let b = model.add_source("b", f32::fact(shapes[1]))?;
    let op = EinSum::new(AxesMapping::from_str(expression)?, f32::datum_type());
    let out = model.wire_node("product", op, &[a, b])?;
    model.select_output_outlets(&out)?;
    Ok(model)
}

#[test]
fn batched_products_compute_what_tracts_einsum_does() -> TractResult<()> {
    // The attention's forms: scores (queries by keys per head) and the weighted sum of the
    // values, in the self-attention's loop (a unit axis in front) and in the cross-attention,
    // with the count of the output's columns.
    let cases: [(&str, [&[usize]; 2], usize); 4] = [
        ("cmbk,nbk->bmn", [&[1, 37, 2, 32], &[48, 2, 32]], 48),
        ("bmk,kbn->cambn", [&[2, 37, 48], &[48, 2, 32]], 32),
        ("mbk,nbk->bmn", [&[16, 4, 32], &[24, 4, 32]], 24),
        ("bmk,kbn->mbn", [&[4, 16, 24], &[24, 4, 32]], 32),
    ];
    for isa in Isa::available() {
        for (expression, shapes, columns) in cases {
            let model = product_of_two(expression, shapes)?;
            let ours = replace_products(model.clone(), &[isa])?;
            let label = format!("{isa:?} {expression}");
            let batched = ours
                .nodes()
                .iter()
                .filter(|n| n.op_is::<BatchedProduct>())
                .count();
            // Columns that fill no vector (24 keys at 16 lanes) stay tract's.
            let whole_vectors = columns.is_multiple_of(isa.lanes());
            assert_eq!(batched, usize::from(whole_vectors), "{label}");
            let inputs = || shapes.iter().map(|s| activation(s)).collect();
            let expected = run(model, inputs())?;
            let actual = run(ours, inputs())?;
            assert_close(&expected, &actual, 1e-5, &label);
        }
    }
    Ok(())
}
