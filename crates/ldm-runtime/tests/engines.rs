//! Both engines run one tiny ONNX graph, written here with tract's protobuf types:
//! y = Relu(x · W + b), with x of shape [batch, 3] (batch symbolic) and W of shape [3, 2]
//! (non-square, so a transposed weight cannot pass).

use ldm_runtime::{Session, Tensor, TractSession};
use prost::Message;
use tract_onnx::pb;

const W: [f32; 6] = [1.0, -2.0, 0.5, 3.0, -1.0, 0.25];
const B: [f32; 2] = [0.1, -0.2];

fn value_info(name: &str, dims: &[Result<i64, &str>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Ok(n) => Value::DimValue(*n),
                Err(p) => Value::DimParam(p.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn initializer(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

fn tiny_graph(dir: &std::path::Path) -> std::path::PathBuf {
    tiny_graph_over(dir, "batch")
}

/// The tiny graph with `first` as the name of its symbolic first dimension.
fn tiny_graph_over(dir: &std::path::Path, first: &str) -> std::path::PathBuf {
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "ldm-runtime tests".into(),
        graph: Some(pb::GraphProto {
            name: "tiny".into(),
            node: vec![
                node("MatMul", &["x", "w"], "xw"),
                node("Add", &["xw", "b"], "z"),
                node("Relu", &["z"], "y"),
            ],
            initializer: vec![initializer("w", &[3, 2], &W), initializer("b", &[2], &B)],
            input: vec![value_info("x", &[Err(first), Ok(3)])],
            output: vec![value_info("y", &[Err(first), Ok(2)])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join("tiny.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

fn expected(x: &[f32]) -> Vec<f32> {
    x.chunks(3)
        .flat_map(|row| {
            (0..2).map(move |j| {
                let z: f32 = (0..3).map(|k| row[k] * W[k * 2 + j]).sum::<f32>() + B[j];
                z.max(0.0)
            })
        })
        .collect()
}

fn check(session: &mut dyn Session) {
    assert_eq!(session.input_names(), ["x"]);
    assert_eq!(session.output_names(), ["y"]);
    // Several batch sizes from one file: the batch dimension is symbolic.
    for batch in [1usize, 4, 5] {
        let x: Vec<f32> = (0..batch * 3).map(|i| i as f32 * 0.37 - 1.0).collect();
        let input = Tensor::f32(&[batch, 3], x.clone()).unwrap();
        let out = session.run(&[("x", &input)]).unwrap();
        assert_eq!(out[0].shape(), [batch, 2]);
        for (got, want) in out[0].as_f32().unwrap().iter().zip(expected(&x)) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
    }
    let input = Tensor::f32(&[1, 3], vec![0.0; 3]).unwrap();
    let err = session.run(&[("nope", &input)]).unwrap_err().to_string();
    assert!(err.contains("no input named 'nope'"), "{err}");
    let err = session.run(&[]).unwrap_err().to_string();
    assert!(err.contains("input 'x' is missing"), "{err}");
}

#[test]
fn tract_runs_a_tiny_graph_at_two_batch_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let mut session = TractSession::load(&tiny_graph(dir.path())).unwrap();
    check(&mut session);
}

#[test]
fn tract_spreads_the_rows_of_a_batch_over_its_threads() {
    let dir = tempfile::tempdir().unwrap();
    let mut session = TractSession::with_threads(&tiny_graph(dir.path()), 2).unwrap();
    check(&mut session);
    // A first dimension that is not the contract's `batch` runs as one batch.
    let mut session = TractSession::with_threads(&tiny_graph_over(dir.path(), "n"), 2).unwrap();
    check(&mut session);
}

/// A session holds its plans, not a second copy of the graph: a new shape reads the file
/// again, and a file gone by then is named, while the plans already made still run.
#[test]
fn tract_reads_the_graph_again_for_a_new_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_graph_over(dir.path(), "n");
    let mut session = TractSession::load(&path).unwrap();
    let run = |session: &mut TractSession, rows: usize| {
        let input = Tensor::f32(&[rows, 3], vec![0.5; rows * 3]).unwrap();
        session
            .run(&[("x", &input)])
            .map(|out| out[0].shape().to_vec())
    };
    assert_eq!(run(&mut session, 2).unwrap(), [2, 2]);
    assert_eq!(run(&mut session, 3).unwrap(), [3, 2]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(run(&mut session, 2).unwrap(), [2, 2]);
    let err = run(&mut session, 4).unwrap_err().to_string();
    assert!(
        err.contains("tiny.onnx") && err.contains("tract cannot load"),
        "{err}"
    );
}

#[test]
fn tract_names_a_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.onnx");
    std::fs::write(&path, b"not a protobuf").unwrap();
    let err = TractSession::load(&path).err().unwrap().to_string();
    assert!(
        err.contains("broken.onnx") && err.contains("tract cannot load"),
        "{err}"
    );
}

#[cfg(feature = "ort")]
#[test]
fn onnxruntime_runs_a_tiny_graph_at_two_batch_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let mut session = ldm_runtime::OrtSession::load(&tiny_graph(dir.path()), 1).unwrap();
    check(&mut session);
}
