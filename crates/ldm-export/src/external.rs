//! ONNX external data: a protobuf message cannot exceed 2 GiB, so the weights of a larger
//! graph move to a raw file beside it, each initializer pointing at its bytes by offset.

use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataLocation;

/// Protobuf's 2 GiB message limit, less room for the graph itself.
pub const PROTOBUF_LIMIT: usize = (2 << 30) - (64 << 20);

/// Initializers smaller than this stay inline (shape constants, biases of small layers).
const INLINE_BELOW: usize = 1024;

/// Offsets are aligned so that a runtime can map the file and read tensors in place.
const ALIGNMENT: usize = 64;

/// Moves the raw bytes of `model`'s larger initializers into the returned blob, to be written
/// as `location` (a plain file name, relative to the `.onnx` file).
pub fn externalize(model: &mut pb::ModelProto, location: &str) -> Vec<u8> {
    let mut blob = Vec::new();
    let Some(graph) = model.graph.as_mut() else {
        return blob;
    };
    for tensor in &mut graph.initializer {
        if tensor.raw_data.len() < INLINE_BELOW {
            continue;
        }
        let offset = blob.len().next_multiple_of(ALIGNMENT);
        blob.resize(offset, 0);
        let raw = std::mem::take(&mut tensor.raw_data);
        let entry = |key: &str, value: String| pb::StringStringEntryProto {
            key: key.into(),
            value,
        };
        tensor.external_data = vec![
            entry("location", location.into()),
            entry("offset", offset.to_string()),
            entry("length", raw.len().to_string()),
        ];
        tensor.data_location = Some(DataLocation::External as i32);
        blob.extend_from_slice(&raw);
    }
    blob
}
