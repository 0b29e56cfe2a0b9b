//! Every op of the trait, one graph each: tch (the training interpretation) against the ONNX
//! interpretation run on tract and on ONNX Runtime, f32, atol 1e-4 + rtol 1e-3.

use std::collections::HashMap;

use ldm_core::manifest::{DType, DimSpec, Precision, SlicedAttention, TensorSpec};
use ldm_export::parity::{load_engine, ENGINES};
use ldm_export::OnnxOps;
use ldm_nn::ops::Result;
use ldm_nn::{Dim, Keys, Ops};
use ldm_runtime::{Tensor as RtTensor, TensorData};
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

/// One op under test: its inputs' shapes, and what it computes from them.
#[derive(Debug, Clone, Copy)]
enum Case {
    Conv3x3Bias,
    ConvStride2NoBias,
    Pad2d,
    MatMulBatched,
    MatMulBroadcast,
    Add,
    Sub,
    Mul,
    Scale,
    Exp,
    Sin,
    Cos,
    Erf,
    Sigmoid,
    Clamp,
    Softmax,
    GroupNorm,
    LayerNorm,
    Reshape,
    ReshapeLike,
    Permute,
    Concat,
    Narrow,
    Upsample2x,
    AvgPool2x,
    Embedding,
    Argmin,
    ToFloat,
    SumSquares,
    StraightThrough,
    Linear,
    Silu,
    Gelu,
    Attention,
    /// Self-attention over positions, at most [`TEST_SLICING`]'s `above`: whole.
    AttentionOverFewPositions,
    /// Above it: chunks of queries, the last one padded.
    AttentionOverManyPositions,
}

/// Slicing small enough for a test's tensors: chunks of 4 queries above 8.
const TEST_SLICING: SlicedAttention = SlicedAttention { above: 8, chunk: 4 };

const CASES: [Case; 36] = [
    Case::Conv3x3Bias,
    Case::ConvStride2NoBias,
    Case::Pad2d,
    Case::MatMulBatched,
    Case::MatMulBroadcast,
    Case::Add,
    Case::Sub,
    Case::Mul,
    Case::Scale,
    Case::Exp,
    Case::Sin,
    Case::Cos,
    Case::Erf,
    Case::Sigmoid,
    Case::Clamp,
    Case::Softmax,
    Case::GroupNorm,
    Case::LayerNorm,
    Case::Reshape,
    Case::ReshapeLike,
    Case::Permute,
    Case::Concat,
    Case::Narrow,
    Case::Upsample2x,
    Case::AvgPool2x,
    Case::Embedding,
    Case::Argmin,
    Case::ToFloat,
    Case::SumSquares,
    Case::StraightThrough,
    Case::Linear,
    Case::Silu,
    Case::Gelu,
    Case::Attention,
    Case::AttentionOverFewPositions,
    Case::AttentionOverManyPositions,
];

/// An input: f32 shape, or int64 shape with values below a bound.
#[derive(Clone)]
enum Input {
    F(Vec<usize>),
    I(Vec<usize>, i64),
}

use Input::{F, I};

impl Case {
    fn inputs(self) -> Vec<Input> {
        let image = || F(vec![2, 4, 6, 5]);
        match self {
            Case::Conv3x3Bias => vec![image(), F(vec![3, 4, 3, 3]), F(vec![3])],
            Case::ConvStride2NoBias => vec![image(), F(vec![3, 4, 3, 3])],
            Case::AvgPool2x => vec![F(vec![2, 4, 6, 8])],
            Case::Pad2d | Case::Upsample2x | Case::Exp | Case::Sin | Case::Cos | Case::Erf => {
                vec![image()]
            }
            Case::Sigmoid | Case::Clamp | Case::Softmax | Case::Scale | Case::Silu | Case::Gelu => {
                vec![image()]
            }
            Case::MatMulBatched => vec![F(vec![2, 3, 5, 4]), F(vec![2, 3, 4, 6])],
            Case::MatMulBroadcast => vec![F(vec![2, 5, 4]), F(vec![4, 6])],
            Case::Add | Case::Sub | Case::Mul => vec![image(), F(vec![4, 1, 1])],
            Case::GroupNorm => vec![F(vec![2, 6, 4, 3]), F(vec![6]), F(vec![6])],
            Case::LayerNorm => vec![F(vec![2, 5, 8]), F(vec![8]), F(vec![8])],
            Case::Reshape | Case::Permute | Case::Narrow | Case::SumSquares | Case::Argmin => {
                vec![image()]
            }
            Case::ReshapeLike => vec![F(vec![2, 30, 4]), image()],
            Case::Concat => vec![image(), F(vec![2, 2, 6, 5])],
            Case::Embedding => vec![F(vec![10, 7]), I(vec![2, 3], 10)],
            Case::ToFloat => vec![I(vec![5], 1000)],
            Case::StraightThrough => vec![image(), image()],
            Case::Linear => vec![F(vec![2, 5, 8]), F(vec![6, 8]), F(vec![6])],
            Case::Attention => vec![
                F(vec![2, 3, 5, 4]),
                F(vec![2, 3, 7, 4]),
                F(vec![2, 3, 7, 4]),
            ],
            Case::AttentionOverFewPositions => vec![F(vec![2, 3, 6, 4]); 3],
            Case::AttentionOverManyPositions => vec![F(vec![2, 3, 10, 4]); 3],
        }
    }

    fn apply<O: Ops>(self, o: &mut O, x: &[O::T]) -> Result<O::T> {
        match self {
            Case::Conv3x3Bias => o.conv2d(&x[0], &x[1], Some(&x[2]), 1, 1),
            Case::ConvStride2NoBias => o.conv2d(&x[0], &x[1], None, 2, 0),
            Case::Pad2d => o.pad2d(&x[0], [0, 1, 2, 1]),
            Case::MatMulBatched | Case::MatMulBroadcast => o.matmul(&x[0], &x[1]),
            Case::Add => o.add(&x[0], &x[1]),
            Case::Sub => o.sub(&x[0], &x[1]),
            Case::Mul => o.mul(&x[0], &x[1]),
            Case::Scale => o.scale(&x[0], -0.37),
            Case::Exp => o.exp(&x[0]),
            Case::Sin => o.sin(&x[0]),
            Case::Cos => o.cos(&x[0]),
            Case::Erf => o.erf(&x[0]),
            Case::Sigmoid => o.sigmoid(&x[0]),
            Case::Clamp => o.clamp(&x[0], -0.5, 0.25),
            Case::Softmax => o.softmax(&x[0]),
            Case::GroupNorm => o.group_norm(&x[0], 3, &x[1], &x[2], 1e-5),
            Case::LayerNorm => o.layer_norm(&x[0], &x[1], &x[2], 1e-5),
            Case::Reshape => o.reshape(&x[0], &[Dim::Keep, Dim::Fixed(2), Dim::Infer]),
            Case::ReshapeLike => o.reshape_like(&x[0], &x[1]),
            Case::Permute => o.permute(&x[0], &[0, 2, 3, 1]),
            Case::Concat => o.concat(&[&x[0], &x[1]], 1),
            Case::Narrow => o.narrow(&x[0], 1, 1, 2),
            Case::Upsample2x => o.upsample2x(&x[0]),
            Case::AvgPool2x => o.avg_pool2x(&x[0]),
            Case::Embedding => o.embedding(&x[0], &x[1]),
            // Integer results compared as floats: the index chosen must match exactly.
            Case::Argmin => {
                let i = o.argmin(&x[0])?;
                o.to_float(&i)
            }
            Case::ToFloat => o.to_float(&x[0]),
            Case::SumSquares => o.sum_squares(&x[0]),
            Case::StraightThrough => o.straight_through(&x[0], &x[1]),
            Case::Linear => o.linear(&x[0], &x[1], Some(&x[2])),
            Case::Silu => o.silu(&x[0]),
            Case::Gelu => o.gelu(&x[0]),
            Case::Attention => o.attention(&x[0], &x[1], &x[2], 4, Keys::Sequence),
            Case::AttentionOverFewPositions | Case::AttentionOverManyPositions => {
                o.attention(&x[0], &x[1], &x[2], 4, Keys::Positions)
            }
        }
    }
}

fn random(inputs: &[Input], seed: u64) -> Vec<RtTensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    inputs
        .iter()
        .map(|input| match input {
            F(shape) => {
                let n = shape.iter().product();
                RtTensor::f32(shape, (0..n).map(|_| rng.random_range(-2.0..2.0)).collect()).unwrap()
            }
            I(shape, bound) => {
                let n = shape.iter().product();
                RtTensor::i64(shape, (0..n).map(|_| rng.random_range(0..*bound)).collect()).unwrap()
            }
        })
        .collect()
}

fn tch_output(case: Case, inputs: &[RtTensor]) -> (Vec<usize>, Vec<f32>) {
    let mut o = ldm_train::TchOps::new(tch::Device::Cpu);
    let xs: Vec<Tensor> = inputs
        .iter()
        .map(|t| {
            let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
            match t.data() {
                TensorData::F32(v) => Tensor::from_slice(v).reshape(&shape),
                TensorData::I64(v) => Tensor::from_slice(v).reshape(&shape),
            }
        })
        .collect();
    let y = case.apply(&mut o, &xs).unwrap();
    let shape = y.size().iter().map(|&d| d as usize).collect();
    let data = Vec::<f32>::try_from(&y.to_kind(tch::Kind::Float).flatten(0, -1)).unwrap();
    (shape, data)
}

/// The op as a one-op ONNX file; every input is a graph input (weights included).
fn onnx_file(case: Case, inputs: &[RtTensor], dir: &std::path::Path) -> std::path::PathBuf {
    let weights = HashMap::new();
    let mut o = OnnxOps::new(&weights, Precision::F32).with_sliced_attention(TEST_SLICING);
    let specs: Vec<TensorSpec> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let dtype = match t.data() {
                TensorData::F32(_) => DType::Float32,
                TensorData::I64(_) => DType::Int64,
            };
            let shape: Vec<DimSpec> = t.shape().iter().map(|&d| DimSpec::Fixed(d)).collect();
            TensorSpec::new(&format!("x{i}"), dtype, &shape)
        })
        .collect();
    let xs: Vec<_> = specs.iter().map(|s| o.input(s)).collect();
    let y = case.apply(&mut o, &xs).unwrap();
    let out = TensorSpec::new("y", DType::Float32, &[]);
    let mut model = o.finish(&format!("{case:?}"), &[(y, out)]);
    // Output rank is left to the engines (the spec above is only a name and a type).
    model.graph.as_mut().unwrap().output[0]
        .r#type
        .as_mut()
        .unwrap()
        .value = Some(tract_onnx::pb::type_proto::Value::TensorType(
        tract_onnx::pb::type_proto::Tensor {
            elem_type: 1,
            shape: None,
        },
    ));
    let path = dir.join(format!("{case:?}.onnx"));
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

#[test]
fn every_op_matches_tch_on_tract_and_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (seed, case) in CASES.iter().enumerate() {
        let inputs = random(&case.inputs(), seed as u64);
        let (shape, expected) = tch_output(*case, &inputs);
        let path = onnx_file(*case, &inputs, dir.path());
        let named: Vec<(String, &RtTensor)> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("x{i}"), t))
            .collect();
        let named: Vec<(&str, &RtTensor)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        for engine in ENGINES {
            let mut session =
                load_engine(engine, &path).unwrap_or_else(|e| panic!("{case:?} on {engine}: {e}"));
            let got = session
                .run(&named)
                .unwrap_or_else(|e| panic!("{case:?} on {engine}: {e}"));
            checked += 1;
            if got[0].shape() != shape.as_slice() {
                failures.push(format!(
                    "{case:?} on {engine}: shape {:?}, tch {shape:?}",
                    got[0].shape()
                ));
                continue;
            }
            let got = got[0].as_f32().unwrap();
            let worst = expected
                .iter()
                .zip(got)
                .map(|(e, g)| (e - g).abs() - 1e-3 * e.abs())
                .fold(f32::NEG_INFINITY, f32::max);
            if worst.is_nan() || worst > 1e-4 {
                failures.push(format!(
                    "{case:?} on {engine}: off by {worst:e} beyond rtol"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        checked,
        CASES.len() * 2,
        "tract and ONNX Runtime ran every op"
    );
}

/// Self-attention over positions as the bundles hold it, the query count symbolic: with
/// [`TEST_SLICING`] and without, on both engines and at counts below, above and at a multiple
/// of the chunk; and tract's plan keeps the scores inside its loops.
#[test]
fn sliced_attention_over_symbolic_positions_is_whole_attention() {
    let dir = tempfile::tempdir().unwrap();
    let weights = HashMap::new();
    let spec = |name: &str| {
        let shape = [
            DimSpec::Fixed(1),
            DimSpec::Fixed(2),
            DimSpec::Symbol("positions".into()),
            DimSpec::Fixed(4),
        ];
        TensorSpec::new(name, DType::Float32, &shape)
    };
    let graph = |sliced: Option<SlicedAttention>, file: &str| {
        let mut o = OnnxOps::new(&weights, Precision::F32);
        if let Some(sliced) = sliced {
            o = o.with_sliced_attention(sliced);
        }
        let [q, k, v] = ["q", "k", "v"].map(|n| o.input(&spec(n)));
        // Twice, as a network attends: engines must take more than one in a graph.
        let once = o.attention(&q, &k, &v, 4, Keys::Positions).unwrap();
        let y = o.attention(&once, &k, &v, 4, Keys::Positions).unwrap();
        let model = o.finish("attention", &[(y, spec("y"))]);
        let path = dir.path().join(file);
        std::fs::write(&path, model.encode_to_vec()).unwrap();
        path
    };
    let whole = graph(None, "whole.onnx");
    let sliced = graph(Some(TEST_SLICING), "sliced.onnx");
    for positions in [6, 10, 12] {
        let inputs = random(&vec![F(vec![1, 2, positions, 4]); 3], positions as u64);
        let named = [("q", &inputs[0]), ("k", &inputs[1]), ("v", &inputs[2])];
        for engine in ENGINES {
            let run = |path: &std::path::Path| {
                let mut session = load_engine(engine, path).unwrap();
                session.run(&named).unwrap().remove(0)
            };
            let (expected, got) = (run(&whole), run(&sliced));
            assert_eq!(
                got.shape(),
                expected.shape(),
                "{engine}, {positions} positions"
            );
            let worst = expected
                .as_f32()
                .unwrap()
                .iter()
                .zip(got.as_f32().unwrap())
                .map(|(e, g)| (e - g).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-5,
                "{engine}, {positions} positions: off by {worst:e}"
            );
        }
        // Both attentions loop (once at or below `above`), and their softmaxes stay inside
        // the loops, so that the scores of one chunk are held at a time.
        let ops = |op: &str| tract_plan_nodes(&sliced, positions, op);
        assert_eq!(
            (ops("Scan"), ops("Softmax")),
            (2, 0),
            "tract's plan at {positions} positions: (Scans, Softmaxes outside them)"
        );
    }
}

/// Nodes of operator `op` in tract's optimised plan of `path` with `positions` positions.
fn tract_plan_nodes(path: &std::path::Path, positions: usize, op: &str) -> usize {
    use tract_onnx::prelude::*;
    let mut model = tract_onnx::onnx().model_for_path(path).unwrap();
    for input in 0..3 {
        let fact = InferenceFact::dt_shape(f32::datum_type(), [1, 2, positions, 4]);
        model.set_input_fact(input, fact).unwrap();
    }
    let plan = model.into_optimized().unwrap();
    plan.nodes()
        .iter()
        .filter(|n| n.op().name().contains(op))
        .count()
}
