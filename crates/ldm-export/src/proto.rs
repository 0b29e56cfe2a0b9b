//! Small constructors for the ONNX protobuf messages (tract-onnx's prost types, which are
//! plain structs with many fields): nodes with attributes, tensors, typed graph inputs.

use ldm_core::manifest::{DType, DimSpec, TensorSpec};
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;

/// An attribute value of a node.
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Text(&'static str),
    /// A subgraph: the branches of an `If`, the body of a `Scan`.
    Graph(pb::GraphProto),
}

pub fn node(
    op: &str,
    name: String,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<(&str, Attr)>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name,
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs.into_iter().map(|(n, a)| attribute(n, a)).collect(),
        ..Default::default()
    }
}

fn attribute(name: &str, value: Attr) -> pb::AttributeProto {
    let mut a = pb::AttributeProto {
        name: name.into(),
        ..Default::default()
    };
    match value {
        Attr::Int(i) => {
            a.r#type = AttributeType::Int as i32;
            a.i = i;
        }
        Attr::Float(f) => {
            a.r#type = AttributeType::Float as i32;
            a.f = f;
        }
        Attr::Ints(v) => {
            a.r#type = AttributeType::Ints as i32;
            a.ints = v;
        }
        Attr::Text(s) => {
            a.r#type = AttributeType::String as i32;
            a.s = s.as_bytes().to_vec();
        }
        Attr::Graph(g) => {
            a.r#type = AttributeType::Graph as i32;
            a.g = Some(g);
        }
    }
    a
}

pub fn data_type(dtype: DType) -> DataType {
    match dtype {
        DType::Float32 => DataType::Float,
        DType::Float16 => DataType::Float16,
        DType::Int64 => DataType::Int64,
    }
}

/// A tensor with its little-endian bytes inline.
pub fn tensor(name: &str, dtype: DType, dims: &[usize], raw: Vec<u8>) -> pb::TensorProto {
    typed_tensor(name, data_type(dtype), dims, raw)
}

/// A tensor of any ONNX element type (the int8 layers' u8 weights and zero points).
pub fn typed_tensor(name: &str, dtype: DataType, dims: &[usize], raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: dtype as i32,
        raw_data: raw,
        ..Default::default()
    }
}

pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect()
}

pub fn i64_bytes(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A subgraph's input or output: its element type, its shape left to the engines.
pub fn shapeless_value_info(name: &str, dtype: DType) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: data_type(dtype) as i32,
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A graph input or output with its element type and (partly symbolic) shape.
pub fn value_info(spec: &TensorSpec) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = spec
        .shape
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                DimSpec::Fixed(n) => Value::DimValue(*n as i64),
                DimSpec::Symbol(s) => Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: spec.name.clone(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: data_type(spec.dtype) as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
