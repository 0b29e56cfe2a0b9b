//! A bundle is untrusted input. Before an engine reads a graph, its initializers are checked:
//! external data must name a plain file inside the bundle (no `..`, no absolute path, no
//! symbolic link: the path-traversal class of CVE-2022-25882, CVE-2024-27318 and
//! CVE-2026-27489) whose bytes cover the tensor, and no tensor may declare an absurd size.

use std::path::Path;

use prost::Message;
use tract_onnx::pb;

use crate::RuntimeError;

/// More elements than any tensor of a model this runtime serves (16 GiB of f32).
const MAX_ELEMENTS: u64 = 1 << 32;

fn refuse(path: &Path, message: String) -> RuntimeError {
    RuntimeError::Bundle {
        path: path.to_path_buf(),
        message,
    }
}

/// Checks the graph file at `path`, whose bundle folder is `dir`.
pub fn check_graph(dir: &Path, path: &Path) -> Result<(), RuntimeError> {
    read_checked(dir, path).map(drop)
}

/// The graph at `path`, decoded once its initializers passed the checks of [`check_graph`].
pub(crate) fn read_checked(dir: &Path, path: &Path) -> Result<pb::GraphProto, RuntimeError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| refuse(path, e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(refuse(path, "not a plain file (a link or a folder)".into()));
    }
    let bytes = std::fs::read(path).map_err(|e| refuse(path, e.to_string()))?;
    let model = pb::ModelProto::decode(bytes.as_slice())
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
        let plain = !location.is_empty()
            && Path::new(location).components().count() == 1
            && !location.starts_with(['/', '\\', '.'])
            && !location.contains(['/', '\\']);
        if !plain {
            return Err(refuse(
                path,
                format!(
                    "tensor '{}' points its data at '{location}', outside the bundle",
                    tensor.name
                ),
            ));
        }
        let data = dir.join(location);
        let data_meta = std::fs::symlink_metadata(&data)
            .map_err(|e| refuse(&data, format!("external data of '{}': {e}", tensor.name)))?;
        if !data_meta.file_type().is_file() {
            return Err(refuse(
                &data,
                "external data must be a plain file, not a link".into(),
            ));
        }
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
