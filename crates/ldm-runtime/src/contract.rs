//! The manifest is a contract about each graph: before anything runs, the inputs and outputs
//! a graph file declares must be the ones manifest.json names, in order, with the same element
//! type, rank and dimensions (a fixed size where the manifest fixes one, a symbolic one where
//! it leaves the size open, so every size the runtime may ask for is one the graph accepts).

use std::path::Path;

use ldm_core::manifest::{DType, DimSpec, GraphSpec, TensorSpec};
use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dim;

use crate::RuntimeError;

/// Checks `graph` (the file at `path`) against its manifest entry.
pub fn check_io(path: &Path, spec: &GraphSpec, graph: &pb::GraphProto) -> Result<(), RuntimeError> {
    let fail = |message: String| RuntimeError::Bundle {
        path: path.to_path_buf(),
        message,
    };
    // ONNX lists initializers among the inputs in old exports; only real inputs count.
    let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|v| !initializers.contains(&v.name.as_str()))
        .collect();
    let outputs: Vec<&pb::ValueInfoProto> = graph.output.iter().collect();
    for (what, declared, actual) in [
        ("inputs", &spec.inputs, inputs),
        ("outputs", &spec.outputs, outputs),
    ] {
        let names: Vec<&str> = actual.iter().map(|v| v.name.as_str()).collect();
        let expected: Vec<&str> = declared.iter().map(|s| s.name.as_str()).collect();
        if names != expected {
            return Err(fail(format!(
                "the graph's {what} are {names:?}, manifest.json says {expected:?}"
            )));
        }
        for (tensor, value) in declared.iter().zip(actual) {
            check_tensor(tensor, value).map_err(|m| fail(format!("'{}': {m}", tensor.name)))?;
        }
    }
    Ok(())
}

/// ONNX TensorProto.DataType codes.
fn onnx_type(dtype: DType) -> i32 {
    match dtype {
        DType::Float32 => 1,
        DType::Int64 => 7,
        DType::Float16 => 10,
    }
}

fn check_tensor(spec: &TensorSpec, value: &pb::ValueInfoProto) -> Result<(), String> {
    let Some(pb::type_proto::Value::TensorType(tensor)) =
        value.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err("the graph declares no tensor type".into());
    };
    if tensor.elem_type != onnx_type(spec.dtype) {
        return Err(format!(
            "element type {} in the graph, {:?} in manifest.json",
            tensor.elem_type, spec.dtype
        ));
    }
    let dims = tensor
        .shape
        .as_ref()
        .map(|s| s.dim.as_slice())
        .unwrap_or_default();
    if dims.len() != spec.shape.len() {
        return Err(format!(
            "rank {} in the graph, {} in manifest.json",
            dims.len(),
            spec.shape.len()
        ));
    }
    for (axis, (want, got)) in spec.shape.iter().zip(dims).enumerate() {
        let fits = match (want, &got.value) {
            (DimSpec::Fixed(n), Some(Dim::DimValue(v))) => *v == *n as i64,
            (DimSpec::Symbol(_), Some(Dim::DimParam(_)) | None) => true,
            _ => false,
        };
        if !fits {
            let shown = match &got.value {
                Some(Dim::DimValue(v)) => v.to_string(),
                Some(Dim::DimParam(p)) => format!("'{p}'"),
                None => "unknown".into(),
            };
            let wanted = match want {
                DimSpec::Fixed(n) => n.to_string(),
                DimSpec::Symbol(s) => format!("'{s}' (any size)"),
            };
            return Err(format!(
                "axis {axis} is {shown} in the graph but {wanted} in manifest.json"
            ));
        }
    }
    Ok(())
}
