use super::*;
use crate::kernels::test_support::{assert_close, assert_same_on_two_threads, run};
use tract_onnx::tract_core::ops::cnn::PoolSpec;

/// A graph of one 3x3 convolution, `input_channels` to `output_channels`, over an
/// image of `shape` ([batch, channels, height, width]), with its bias constant or an input.
fn convolution(
    shape: [usize; 4],
    output_channels: usize,
    stride: usize,
    constant_bias: bool,
) -> TractResult<TypedModel> {
    let input_channels = shape[1];
    let mut model = TypedModel::default();
    let input = model.add_source("image", f32::fact(shape))?;
    let weights: Vec<f32> = (0..output_channels * input_channels * 9)
        .map(|i| ((i * 7919) % 211) as f32 / 211.0 - 0.5)
        .collect();
    let weights =
        tract_ndarray::Array4::from_shape_vec((output_channels, input_channels, 3, 3), weights)?;
    let weights = model.add_const("weights", weights.into_tensor())?;
    let bias_values = tract_ndarray::Array1::from_shape_fn(output_channels, |o| o as f32 * 0.1);
    let bias = if constant_bias {
        model.add_const("bias", bias_values.into_tensor())?
    } else {
        model.add_source("bias", f32::fact([output_channels]))?
    };
    let spec = PoolSpec::new(
        DataFormat::NCHW,
        tvec![3, 3],
        PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
        None,
        Some(tvec![stride, stride]),
        input_channels,
        output_channels,
    );
    let conv = Conv::new(spec, KernelFormat::OIHW, 1, None);
    let output = model.wire_node("conv", conv, &[input, weights, bias])?;
    model.select_output_outlets(&output)?;
    Ok(model)
}

fn inputs(shape: [usize; 4], output_channels: usize, constant_bias: bool) -> TVec<TValue> {
    let image = tract_ndarray::Array4::from_shape_fn(shape, |(n, c, y, x)| {
        ((n * 31 + c * 17 + y * 5 + x * 3) % 23) as f32 / 23.0 - 0.4
    });
    let mut values = tvec![image.into_tvalue()];
    if !constant_bias {
        let bias = tract_ndarray::Array1::from_shape_fn(output_channels, |o| 1.0 - o as f32 * 0.05);
        values.push(bias.into_tvalue());
    }
    values
}

/// `model` with the convolutions this CPU's kernels run replaced, as the runtime chooses.
fn direct(model: TypedModel) -> TractResult<TypedModel> {
    replace_convolutions(model, |width, channels| {
        strategy_for(&Isa::available(), width, channels)
    })
}

fn direct_ops(model: &TypedModel) -> usize {
    model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<DirectConv3x3>())
        .count()
}

#[test]
fn the_direct_kernels_compute_what_tracts_convolution_does() -> TractResult<()> {
    // Each strategy on each instruction set: rows of whole vectors (runs) and any rows
    // (broadcast pixels); whole and partial blocks and panels of channels, one to three runs
    // and one to six pixels per tile, a batch, a bias given at run time, input channels in two
    // passes.
    let cases: [([usize; 4], usize, bool); 11] = [
        ([1, 3, 16, 16], 32, true),
        ([1, 32, 64, 64], 32, true),
        ([2, 16, 8, 48], 40, true),
        ([1, 64, 8, 24], 12, false),
        ([1, 128, 16, 16], 128, false),
        ([1, 5, 8, 8], 3, true),
        ([1, 64, 4, 4], 16, false),
        ([2, 24, 6, 4], 8, true),
        ([1, 7, 5, 3], 70, false),
        // Weights above a pass's: 28 input channels, then 12 added on (runs); 227 or 910
        // channels, then the rest (broadcast, AVX-512 or AVX2).
        ([1, 40, 4, 16], 1004, false),
        ([1, 940, 4, 4], 20, true),
    ];
    let choices = Isa::available()
        .into_iter()
        .flat_map(|isa| [(isa, Strategy::Runs), (isa, Strategy::Broadcast)]);
    for (isa, strategy) in choices {
        for (shape, output_channels, constant_bias) in cases {
            if strategy == Strategy::Runs && !shape[3].is_multiple_of(isa.lanes()) {
                continue;
            }
            let model = convolution(shape, output_channels, 1, constant_bias)?;
            let expected = run(model.clone(), inputs(shape, output_channels, constant_bias))?;
            let direct = replace_convolutions(model, |_, _| Some((isa, strategy)))?;
            assert_eq!(direct_ops(&direct), 1, "{isa:?} {strategy:?} {shape:?}");
            let actual = run(direct, inputs(shape, output_channels, constant_bias))?;
            let label = format!("{isa:?} {strategy:?} {shape:?}");
            assert_close(&expected, &actual, 1e-5, &label);
        }
    }
    Ok(())
}

#[test]
fn large_weights_take_several_passes() {
    assert_eq!(input_channels_per_pass(1004), 28);
    assert_eq!(input_channels_per_pass(128), 227);
    assert_eq!(broadcast_channels_per_pass(64), 227);
    assert_eq!(broadcast_channels_per_pass(16), 910);
}

#[test]
fn two_threads_compute_the_same_bits_as_one() -> TractResult<()> {
    for shape in [[1, 32, 32, 32], [1, 32, 8, 8]] {
        let model = direct(convolution(shape, 64, 1, true)?)?;
        assert_same_on_two_threads(model, || inputs(shape, 64, true), &format!("{shape:?}"))?;
    }
    Ok(())
}

#[test]
fn rows_of_whole_vectors_go_in_runs_and_others_broadcast() {
    let isas = [Isa::Avx512, Isa::Avx2];
    assert_eq!(
        strategy_for(&isas, 64, 224),
        Some((Isa::Avx512, Strategy::Runs))
    );
    assert_eq!(
        strategy_for(&isas, 8, 64),
        Some((Isa::Avx512, Strategy::Broadcast))
    );
    assert_eq!(
        strategy_for(&isas, 16, 64),
        Some((Isa::Avx512, Strategy::Runs))
    );
    assert_eq!(
        strategy_for(&isas, 16, 672),
        Some((Isa::Avx512, Strategy::Broadcast))
    );
    assert_eq!(
        strategy_for(&[Isa::Avx2], 8, 32),
        Some((Isa::Avx2, Strategy::Runs))
    );
    assert_eq!(
        strategy_for(&[Isa::Avx2], 36, 64),
        Some((Isa::Avx2, Strategy::Broadcast))
    );
    assert_eq!(strategy_for(&[], 64, 64), None);
}

#[test]
fn strided_convolutions_stay_with_tract() -> TractResult<()> {
    let strided = direct(convolution([1, 8, 16, 16], 8, 2, true)?)?;
    assert_eq!(direct_ops(&strided), 0);
    Ok(())
}
