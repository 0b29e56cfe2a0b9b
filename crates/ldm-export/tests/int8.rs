//! int8 export: a tiny text model calibrated on its own sampling trajectories exports a UNet
//! whose every convolution and linear layer is an integer product, which both engines run
//! within the int8 tolerance of tch's float UNet (the export's parity check) and which tract
//! keeps integer in its optimised plan; the graph passes the reference ONNX checker.

mod common;

use std::collections::BTreeMap;

use common::{config, random_release, TEXT};
use ldm_core::manifest::GraphRole;
use ldm_export::{calibrate_int8, export_release, ExportOptions, INT8_PARITY_TOLERANCE};
use ldm_nn::FirstStage;
use ldm_runtime::{Session, Tensor, TractSession};
use ldm_train::trained::TrainedModel;
use prost::Message;
use tract_onnx::pb;

/// Nodes of each operator in an ONNX file.
fn op_counts(path: &std::path::Path) -> BTreeMap<String, usize> {
    let model = pb::ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
    let mut counts = BTreeMap::new();
    for node in model.graph.unwrap().node {
        *counts.entry(node.op_type).or_insert(0) += 1;
    }
    counts
}

#[test]
fn an_int8_unet_runs_integer_products_within_its_tolerance_on_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(FirstStage::Kl, TEXT);
    let mut model =
        TrainedModel::from_release(random_release(&config, 5), tch::Device::Cpu).unwrap();
    let prompts: Vec<String> = ["a red circle", "a green star", "a blue square at the top"]
        .map(String::from)
        .to_vec();
    let calibration = calibrate_int8(&mut model, &prompts).unwrap();

    let float = dir.path().join("float");
    export_release(
        &random_release(&config, 5),
        &float,
        &ExportOptions {
            parity: false,
            ..ExportOptions::default()
        },
    )
    .unwrap();
    let float_ops = op_counts(&float.join("unet.onnx"));
    let layers = float_ops["Conv"] + float_ops["MatMul"];

    let int8 = dir.path().join("int8");
    let options = ExportOptions {
        int8_unet: Some(calibration.clone()),
        ..ExportOptions::default()
    };
    // The export's parity check runs the int8 UNet on tract and ONNX Runtime against tch.
    let exported = export_release(&random_release(&config, 5), &int8, &options).unwrap();
    let unet_rows: Vec<_> = exported
        .parity
        .iter()
        .filter(|r| r.role == GraphRole::Unet)
        .collect();
    assert_eq!(unet_rows.len(), 4, "two sizes on two engines");
    for row in &unet_rows {
        // Far from the float graphs' 1e-3, but visibly rounded, not exact.
        assert!(
            row.max_rel > 1e-4 && row.max_rel <= INT8_PARITY_TOLERANCE,
            "{row:?}"
        );
    }
    let manifest = exported.manifest.int8.expect("an int8 manifest");
    assert_eq!(manifest.calibration_prompts, 3);
    assert_eq!(manifest.layers, calibration.ranges.len());

    let ops = op_counts(&int8.join("unet.onnx"));
    assert_eq!(
        ops.get("Conv"),
        None,
        "every convolution is an integer one: {ops:?}"
    );
    assert_eq!(ops["ConvInteger"], float_ops["Conv"]);
    // Linear layers become integer products; attention's products of activations stay float.
    assert_eq!(
        ops["ConvInteger"] + ops["MatMulInteger"] + ops.get("MatMul").unwrap_or(&0),
        layers
    );
    assert_eq!(ops["MatMulInteger"], manifest.layers - ops["ConvInteger"]);
    assert_eq!(ops["QuantizeLinear"], manifest.layers);
    // Standard ONNX: the reference checker passes it, shapes inferred through every node.
    let checked = std::process::Command::new(
        std::env::var("LDM_PYTHON").expect("LDM_PYTHON (set in .cargo/config.toml)"),
    )
    .args([
        "-c",
        "import onnx, sys; onnx.checker.check_model(sys.argv[1], full_check=True)",
    ])
    .arg(int8.join("unet.onnx"))
    .output()
    .unwrap();
    assert!(
        checked.status.success(),
        "onnx.checker: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    // The other graphs are the float ones.
    for graph in ["decoder.onnx", "text_encoder.onnx"] {
        assert_eq!(op_counts(&int8.join(graph)), op_counts(&float.join(graph)));
    }

    // tract's optimised plan keeps the quantisation and the integer products.
    let mut session = TractSession::load(&int8.join("unet.onnx")).unwrap();
    let inputs = ldm_export::parity::random_inputs(GraphRole::Unet, &config, 1, (16, 16), 0);
    let names = session.input_names().to_vec();
    let named: Vec<(&str, &Tensor)> = names.iter().map(String::as_str).zip(&inputs).collect();
    let profile = session.profile(&named, 1).unwrap();
    assert!(
        profile.iter().any(|n| n.op.starts_with("QuantizeLinear")),
        "no quantisation in tract's plan"
    );
    let integer = profile
        .iter()
        .filter(|n| n.node.starts_with("ConvInteger") || n.node.starts_with("MatMulInteger"))
        .count();
    assert!(
        integer >= manifest.layers,
        "{integer} integer product nodes in tract's plan"
    );
}
