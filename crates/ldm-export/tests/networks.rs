//! Every network of every conditioning kind, with KL, VQ and no first stage, exported from
//! tiny random models: each graph matches tch on tract and ONNX Runtime at two image sizes
//! from one file, passes `onnx.checker` and reproduces the same outputs in Python
//! onnxruntime.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use common::{
    config, config_with, random_release, CLASS, INPAINTING, LAYOUT, NONE, PLANNED_LAYOUT,
    SUPER_RESOLUTION, TEXT,
};
use ldm_core::manifest::{GraphRole, Manifest, Precision};
use ldm_export::parity::{random_inputs, reference_ops, reference_outputs};
use ldm_export::{export_release, ExportOptions, Exported};
use ldm_nn::graphs;
use ldm_nn::FirstStage;
use ldm_runtime::TensorData;
use serde_json::json;

/// Random weights come from libtorch's global generator: one model at a time.
static TORCH_RNG: Mutex<()> = Mutex::new(());

fn export_tiny(
    regularizer: FirstStage,
    conditioning: &str,
    options: &ExportOptions,
    out: &Path,
) -> Exported {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let release = random_release(&config(regularizer, conditioning), 7);
    export_release(&release, out, options).unwrap()
}

/// Parity rows for both engines, both sizes, every graph, each within atol 1e-3.
fn assert_parity(exported: &Exported, what: &str) {
    assert!(
        exported.unavailable.is_empty(),
        "{what}: {:?}",
        exported.unavailable
    );
    let graphs = exported.manifest.graphs.len();
    assert_eq!(
        exported.parity.len(),
        graphs * 2 * 2,
        "{what}: {:?}",
        exported.parity
    );
    for row in &exported.parity {
        assert!(row.max_abs <= 1e-3, "{what}: {row:?}");
    }
    let sizes: std::collections::BTreeSet<_> = exported.parity.iter().map(|r| r.pixels).collect();
    assert_eq!(sizes.len(), 2, "{what}: two sizes from one file");
}

fn python() -> String {
    std::env::var("LDM_PYTHON").expect("LDM_PYTHON (set in .cargo/config.toml)")
}

/// Writes tch reference cases for every graph of `bundle` and runs check_bundle.py on them.
fn check_with_python(bundle: &Path, regularizer: FirstStage, conditioning: &str) {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let release = random_release(&config(regularizer, conditioning), 7);
    let manifest = Manifest::load(bundle).unwrap();
    let mut cases = Vec::new();
    for role in graphs::roles(&release.config) {
        let spec = manifest.graph(role).unwrap();
        let inputs = random_inputs(role, &release.config, 2, (16, 16), 11);
        let weights = match role {
            GraphRole::Encoder | GraphRole::Decoder => release.autoencoder.as_ref().unwrap(),
            GraphRole::Unet => &release.unet,
            _ => release.encoder.as_ref().unwrap(),
        };
        let mut ops = reference_ops(weights).unwrap();
        let outputs = reference_outputs(role, &release.config, &mut ops, &inputs).unwrap();
        let tensor = |t: &ldm_runtime::Tensor| match t.data() {
            TensorData::F32(v) => json!({"dtype": "float32", "shape": t.shape(), "data": v}),
            TensorData::I64(v) => json!({"dtype": "int64", "shape": t.shape(), "data": v}),
        };
        let named: serde_json::Map<_, _> = spec
            .inputs
            .iter()
            .zip(&inputs)
            .map(|(s, t)| (s.name.clone(), tensor(t)))
            .collect();
        let outputs: Vec<_> = outputs.iter().map(tensor).collect();
        cases.push(json!({"graph": spec.file, "inputs": named, "outputs": outputs}));
    }
    let cases_path = bundle.with_extension("cases.json");
    std::fs::write(&cases_path, serde_json::to_vec(&cases).unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/check_bundle.py");
    let out = Command::new(python())
        .arg(script)
        .arg(bundle)
        .arg(&cases_path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("ok:"),
        "check_bundle.py on {}: {text}",
        bundle.display()
    );
}

/// The UNet options of the paper's unconditional LDMs (from ADM): the timestep embedding
/// scaling and shifting the second norm, and ResBlocks that average-pool and upsample.
#[test]
fn scale_shift_norm_and_resampling_resblocks_export_with_parity() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(
        FirstStage::Kl,
        NONE,
        "scale_shift_norm = true\nresblock_updown = true",
    );
    let _guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let release = random_release(&config, 11);
    let out = dir.path().join("adm");
    let exported = export_release(&release, &out, &ExportOptions::default()).unwrap();
    assert_parity(&exported, "scale-shift norm, resampling ResBlocks");
    // The embedding doubles to scale and shift; the downsampler is a ResBlock, not `op`.
    let unet: Vec<&str> = release.unet.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        unet.contains(&"input_blocks.2.0.in_layers.2.weight"),
        "{unet:?}"
    );
    assert!(!unet.iter().any(|n| n.ends_with(".op.weight")), "{unet:?}");
    let emb = &release
        .unet
        .iter()
        .find(|(n, _)| n == "input_blocks.1.0.emb_layers.1.weight")
        .unwrap()
        .1;
    assert_eq!(emb.size(), [16, 32]);
}

/// Position features on a text model's cross-attention: the coordinate grid is worked out in
/// the graph from each feature map's size, so both sizes of the parity check (square and
/// not) match tch from one file.
#[test]
fn position_features_export_with_parity_at_every_size() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(FirstStage::Kl, TEXT, "position_frequencies = 3");
    let _guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let release = random_release(&config, 13);
    let projection = &release
        .unet
        .iter()
        .find(|(n, _)| n == "input_blocks.3.1.position.weight")
        .expect("a position projection at the attention level")
        .1;
    // sin and cos of x and y at three frequencies, into the level's 16 channels.
    assert_eq!(projection.size(), [16, 12, 1, 1]);
    let exported = export_release(
        &release,
        &dir.path().join("placed"),
        &ExportOptions::default(),
    )
    .unwrap();
    assert_parity(&exported, "position features");
}

/// Box attention: the layout transformer reads each token's box from the ids in the graph,
/// and the UNet turns the boxes into attention scores from each feature map's size.
#[test]
fn box_attention_exports_with_parity_at_every_size() {
    let dir = tempfile::tempdir().unwrap();
    let conditioning = format!("{LAYOUT}\nbox_attention = true");
    let exported = export_tiny(
        FirstStage::Kl,
        &conditioning,
        &ExportOptions::default(),
        &dir.path().join("boxes"),
    );
    let unet = &exported.manifest.graphs[&GraphRole::Unet];
    let context = unet.inputs.iter().find(|i| i.name == "context").unwrap();
    assert_eq!(
        context.shape.last(),
        Some(&ldm_core::manifest::DimSpec::Fixed(12 + 4))
    );
    assert_parity(&exported, "box attention");
}

#[test]
fn a_layout_planner_exports_with_parity_beside_its_layout_model() {
    let dir = tempfile::tempdir().unwrap();
    let exported = export_tiny(
        FirstStage::Kl,
        PLANNED_LAYOUT,
        &ExportOptions::default(),
        &dir.path().join("planned"),
    );
    let planner = &exported.manifest.graphs[&GraphRole::Planner];
    let fixed = |n| ldm_core::manifest::DimSpec::Fixed(n);
    assert_eq!(planner.inputs[0].shape[1], fixed(8));
    // Two slots of 2 classes + no object, 2 colours and 4 edges of 5 grid positions.
    assert_eq!(
        planner.outputs[0].shape[1..],
        [fixed(2), fixed(3 + 2 + 4 * 5)]
    );
    assert!(exported.files.contains_key("planner_tokenizer.json"));
    assert_parity(&exported, "layout planner");
}

#[test]
fn every_conditioning_kind_and_first_stage_exports_with_parity() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("kl-text", FirstStage::Kl, TEXT),
        ("vq-class", FirstStage::Vq, CLASS),
        ("kl-unconditional", FirstStage::Kl, NONE),
        ("kl-super-resolution", FirstStage::Kl, SUPER_RESOLUTION),
        ("vq-inpainting", FirstStage::Vq, INPAINTING),
        ("pixels-unconditional", FirstStage::Identity, NONE),
    ];
    for (name, regularizer, conditioning) in cases {
        let out = dir.path().join(name);
        let exported = export_tiny(regularizer, conditioning, &ExportOptions::default(), &out);
        assert_parity(&exported, name);
        let expected: Vec<GraphRole> = graphs::roles(&config(regularizer, conditioning));
        assert_eq!(
            exported.manifest.graphs.keys().copied().collect::<Vec<_>>(),
            {
                let mut e = expected.clone();
                e.sort();
                e
            }
        );
        for spec in exported.manifest.graphs.values() {
            assert!(out.join(&spec.file).is_file(), "{name}: {}", spec.file);
        }
        assert_eq!(
            out.join("tokenizer.json").is_file(),
            conditioning == TEXT,
            "{name}"
        );
        check_with_python(&out, regularizer, conditioning);
    }
}

#[test]
fn external_data_and_half_precision_variants_run_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let external = ExportOptions {
        external_data_above: 0,
        ..ExportOptions::default()
    };
    let out = dir.path().join("external");
    let exported = export_tiny(FirstStage::Kl, TEXT, &external, &out);
    assert_parity(&exported, "external data");
    assert!(out.join("unet.onnx.data").is_file());
    let graph_bytes = std::fs::metadata(out.join("unet.onnx")).unwrap().len();
    let data_bytes = std::fs::metadata(out.join("unet.onnx.data")).unwrap().len();
    // Tensors under 1 KB (biases, norms) stay inline.
    assert!(
        graph_bytes < data_bytes / 2,
        "the weights moved out: {graph_bytes} vs {data_bytes}"
    );
    check_with_python(&out, FirstStage::Kl, TEXT);

    for precision in [Precision::F16Weights, Precision::F16] {
        let options = ExportOptions {
            precision,
            ..ExportOptions::default()
        };
        let out = dir.path().join(format!("{precision:?}"));
        let exported = export_tiny(FirstStage::Kl, TEXT, &options, &out);
        assert_eq!(exported.manifest.precision, precision);
        if precision == Precision::F16Weights {
            // The reference runs the same f16-rounded weights, so with f32 arithmetic on both
            // sides the check sees the engines' rounding, not the weights'.
            let worst = exported
                .parity
                .iter()
                .map(|r| r.max_rel)
                .fold(0.0, f32::max);
            assert!(worst < 5e-5, "f16 weights: max relative error {worst}");
        }
        assert!(
            exported.parity.len() >= 8,
            "{precision:?}: {:?}",
            exported.parity
        );
        let unet = std::fs::metadata(out.join("unet.onnx")).unwrap().len();
        // The f32 graph and its weights, against the same graph with f16 weights.
        let f32_unet = graph_bytes + data_bytes;
        assert!(
            unet < f32_unet * 7 / 10,
            "{precision:?}: half-size weights ({unet} vs {f32_unet})"
        );
    }
}
