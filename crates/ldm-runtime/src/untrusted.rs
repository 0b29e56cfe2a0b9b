//! A bundle is untrusted input. Before an engine reads a graph, the file and its initializers
//! are checked: the graph and its external data are read under the one confinement rule of
//! `ldm_core::confined` (plain names inside the bundle, no symbolic links), external data
//! must cover the tensor, and no tensor may declare an absurd size.

use std::path::Path;

use ldm_core::confined::{confined, read_confined, Unconfined};
use prost::Message;
use tract_onnx::pb;

use crate::RuntimeError;

/// More elements than any tensor of a model this runtime serves (16 GiB of f32).
const MAX_ELEMENTS: u64 = 1 << 32;
/// Protobuf's own limit: larger graphs keep their weights in external data.
const MAX_GRAPH_BYTES: u64 = 2 << 30;

fn refuse(path: &Path, message: String) -> RuntimeError {
    RuntimeError::Bundle {
        path: path.to_path_buf(),
        message,
    }
}

impl From<Unconfined> for RuntimeError {
    fn from(e: Unconfined) -> Self {
        refuse(&e.path, e.reason)
    }
}

/// Checks the graph file `file` of the bundle folder `dir`.
pub fn check_graph(dir: &Path, file: &str) -> Result<(), RuntimeError> {
    check_bytes(
        dir,
        &dir.join(file),
        &read_confined(dir, file, MAX_GRAPH_BYTES)?,
    )
    .map(drop)
}

/// The graph `file` of `dir`, decoded once it passed the checks of [`check_graph`].
pub(crate) fn read_checked(dir: &Path, file: &str) -> Result<pb::GraphProto, RuntimeError> {
    check_bytes(
        dir,
        &dir.join(file),
        &read_confined(dir, file, MAX_GRAPH_BYTES)?,
    )
}

/// Decodes the graph bytes read from `path` and checks its initializers.
pub fn check_bytes(dir: &Path, path: &Path, bytes: &[u8]) -> Result<pb::GraphProto, RuntimeError> {
    let model = pb::ModelProto::decode(bytes)
        .map_err(|e| refuse(path, format!("not an ONNX model: {e}")))?;
    let graph = model.graph.unwrap_or_default();
    for tensor in &graph.initializer {
        let elements = tensor
            .dims
            .iter()
            .try_fold(1u64, |n, &d| {
                u64::try_from(d).ok().and_then(|d| n.checked_mul(d))
            })
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| {
                refuse(
                    path,
                    format!(
                        "tensor '{}' declares an absurd shape {:?}",
                        tensor.name, tensor.dims
                    ),
                )
            })?;
        if tensor.external_data.is_empty() {
            continue;
        }
        let field = |key: &str| {
            tensor
                .external_data
                .iter()
                .find(|e| e.key == key)
                .map(|e| e.value.as_str())
        };
        let location = field("location").unwrap_or_default();
        let data = confined(dir, location).map_err(|e| {
            refuse(
                &e.path,
                format!("external data of tensor '{}': {}", tensor.name, e.reason),
            )
        })?;
        let data_meta =
            std::fs::metadata(&data).map_err(|e| refuse(&data, format!("external data: {e}")))?;
        let number = |key: &str| field(key).map_or(Ok(0), |v| v.parse::<u64>());
        let (offset, length) = match (number("offset"), number("length")) {
            (Ok(o), Ok(l)) => (o, l),
            _ => {
                return Err(refuse(
                    path,
                    format!("tensor '{}': unreadable offset or length", tensor.name),
                ))
            }
        };
        let end = offset.checked_add(length).filter(|&e| e <= data_meta.len());
        if end.is_none() || length > elements.saturating_mul(8) {
            return Err(refuse(
                &data,
                format!(
                    "tensor '{}' claims bytes {offset}+{length}, beyond the file or its shape",
                    tensor.name
                ),
            ));
        }
    }
    Ok(graph)
}
