//! Parity checks of large graphs with each engine in a child process of its own. The parent
//! holds the reference (tch) and the cases; a child loads one engine, runs the cases and
//! reports the differences, so that one engine's copy of the weights is in memory beside the
//! parent's, never two (a 1 B-parameter model's UNet alone is 3.4 GB in f32).
//!
//! The child is a program's [`SUBCOMMAND`] (the `ldm` binary's), which calls [`child_main`].

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use ldm_runtime::Tensor as RtTensor;
use serde_json::{json, Value};
use tch::Tensor;

use crate::parity::{compare_named, from_tch, load_engine, to_tch};
use crate::ExportError;

/// The subcommand of the engine program that checks one engine: `SUBCOMMAND GRAPH ENGINE
/// CASES`, printing one JSON line.
pub const SUBCOMMAND: &str = "parity-engine";

/// Inputs of one graph by name, and the reference's outputs on them.
pub struct Case<'a> {
    pub inputs: Vec<(&'a str, &'a RtTensor)>,
    pub reference: &'a [RtTensor],
}

/// What a child reports: the (max abs, max relative) difference of each case, or why the
/// engine could not load the graph.
pub type EngineReport = Result<Vec<(f32, f32)>, String>;

/// Runs `engine` on `graph` for `cases` in a child process of `program`; the cases travel
/// through `cases_file` (removed afterwards).
pub fn check_in_child(
    program: &Path,
    graph: &Path,
    engine: &str,
    cases: &[Case],
    cases_file: &Path,
) -> Result<EngineReport, ExportError> {
    write_cases(cases, cases_file)?;
    let output = Command::new(program)
        .arg(SUBCOMMAND)
        .arg(graph)
        .arg(engine)
        .arg(cases_file)
        .output();
    let _ = std::fs::remove_file(cases_file);
    let output = output.map_err(|e| ExportError::io(program, e))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Option<Value> = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok());
    let failed = || {
        ExportError::Parity(format!(
            "the {engine} check of {} in a child process failed ({}): {}",
            graph.display(),
            output.status,
            stderr.trim()
        ))
    };
    let report = match (output.status.success(), report) {
        (true, Some(report)) => report,
        _ => return Err(failed()),
    };
    if let Some(reason) = report["unavailable"].as_str() {
        return Ok(Err(reason.to_string()));
    }
    let rows = report["cases"].as_array().ok_or_else(failed)?;
    rows.iter()
        .map(|r| match (r[0].as_f64(), r[1].as_f64()) {
            (Some(a), Some(b)) => Ok((a as f32, b as f32)),
            // JSON has no infinity: a NaN or infinite difference arrives as null.
            _ => Ok((f32::INFINITY, f32::INFINITY)),
        })
        .collect::<Result<_, ExportError>>()
        .map(Ok)
}

/// The child's side: loads `engine` on `graph`, runs the cases of `cases_file` and returns
/// the JSON line to print.
pub fn child_main(graph: &Path, engine: &str, cases_file: &Path) -> Result<String, ExportError> {
    let cases = read_cases(cases_file)?;
    let mut session = match load_engine(engine, graph) {
        Ok(session) => session,
        Err(reason) => return Ok(json!({ "unavailable": reason }).to_string()),
    };
    let mut rows = Vec::new();
    for (inputs, reference) in &cases {
        let named: Vec<(&str, &RtTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let (max_abs, max_rel) = compare_named(session.as_mut(), &named, reference)?;
        rows.push(json!([finite_or_null(max_abs), finite_or_null(max_rel)]));
    }
    Ok(json!({ "cases": rows }).to_string())
}

fn finite_or_null(v: f32) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

/// Cases as one safetensors file: `in.<case>.<input name>` and `out.<case>.<output index>`.
fn write_cases(cases: &[Case], path: &Path) -> Result<(), ExportError> {
    let mut named = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        for (name, tensor) in &case.inputs {
            named.push((format!("in.{i}.{name}"), to_tch(tensor)));
        }
        for (k, tensor) in case.reference.iter().enumerate() {
            named.push((format!("out.{i}.{k}"), to_tch(tensor)));
        }
    }
    Tensor::write_safetensors(&named, path)
        .map_err(|e| ExportError::Invalid(format!("{}: {e}", path.display())))
}

/// The inputs (by name) and reference outputs of each case of a file [`write_cases`] wrote.
type Cases = Vec<(Vec<(String, RtTensor)>, Vec<RtTensor>)>;

fn read_cases(path: &Path) -> Result<Cases, ExportError> {
    let tensors = Tensor::read_safetensors(path)
        .map_err(|e| ExportError::Invalid(format!("{}: {e}", path.display())))?;
    // Per case: the named inputs, and the outputs by index.
    type Parts = (Vec<(String, RtTensor)>, BTreeMap<usize, RtTensor>);
    let mut cases: BTreeMap<usize, Parts> = BTreeMap::new();
    for (key, tensor) in tensors {
        let bad = || ExportError::Invalid(format!("{}: unexpected tensor '{key}'", path.display()));
        let mut parts = key.splitn(3, '.');
        let (Some(side), Some(case), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let case: usize = case.parse().map_err(|_| bad())?;
        let entry = cases.entry(case).or_default();
        let tensor = from_tch(&tensor)?;
        match side {
            "in" => entry.0.push((name.to_string(), tensor)),
            "out" => {
                entry.1.insert(name.parse().map_err(|_| bad())?, tensor);
            }
            _ => return Err(bad()),
        }
    }
    Ok(cases
        .into_values()
        .map(|(inputs, outputs)| (inputs, outputs.into_values().collect()))
        .collect())
}
