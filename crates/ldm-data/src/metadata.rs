//! `metadata.jsonl`: one JSON object per image, the image-folder convention.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::DataError;

pub const METADATA_FILE: &str = "metadata.jsonl";

/// One row of `metadata.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Image path relative to the folder.
    #[serde(default)]
    pub file_name: String,
    /// Caption, for text conditioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Class, for class conditioning; numbers are read as their decimal text.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "label_as_text"
    )]
    pub label: Option<String>,
    /// Any other columns (style, attributes of a scene, ...), kept as they are.
    #[serde(flatten)]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

impl Record {
    /// The value of a column as text: `label`, `text`, or any other attribute (strings as
    /// they are, numbers and booleans as their JSON text); None where the row has none.
    pub fn column(&self, name: &str) -> Option<String> {
        match name {
            "label" => self.label.clone(),
            "text" => self.text.clone(),
            _ => match self.attributes.get(name)? {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            },
        }
    }
}

fn label_as_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

/// Reads the rows with their 1-based line numbers, skipping blank lines.
pub(crate) fn read_metadata(path: &Path) -> Result<Vec<(usize, Record)>, DataError> {
    let file = std::fs::File::open(path).map_err(DataError::io(path))?;
    parse_metadata(BufReader::new(file), path)
}

/// The rows of `metadata.jsonl` text read from `reader` (`path` names it in errors), with
/// their 1-based line numbers, blank lines skipped.
pub fn parse_metadata(
    reader: impl BufRead,
    path: &Path,
) -> Result<Vec<(usize, Record)>, DataError> {
    let mut rows = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(DataError::io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(&line).map_err(|source| DataError::Json {
            path: path.to_path_buf(),
            line: index + 1,
            source,
        })?;
        rows.push((index + 1, record));
    }
    Ok(rows)
}

pub(crate) fn write_metadata(path: &Path, records: &[Record]) -> Result<(), DataError> {
    let mut out = Vec::new();
    for record in records {
        serde_json::to_writer(&mut out, record).expect("a Record always serialises");
        out.push(b'\n');
    }
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(&out))
        .map_err(DataError::io(path))
}
