//! Hostile bundles, one class at a time, each refused with a message that names the file or
//! field: files that leave the bundle, numbers that would size absurd work, a manifest that
//! disagrees with its graphs, tokenizers the text encoder cannot take, weights that are not
//! finite, and thread counts the machine cannot run.

mod common;

use std::path::{Path, PathBuf};

use common::{edited_bundle, shipped_bundle};

use ldm_runtime::{Backend, Bundle, Generate, Pipeline};
use prost::Message;
use tract_onnx::pb;

fn load_error(bundle: &Path) -> String {
    Bundle::load(bundle).err().expect("refused").to_string()
}

fn assert_contains(err: &str, expected: &[&str]) {
    for e in expected {
        assert!(err.contains(e), "{err} (expected {e})");
    }
}

#[test]
fn no_file_is_read_from_outside_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    for file in ["manifest.json", "tokenizer.json", "unet.onnx"] {
        std::fs::copy(shipped_bundle().join(file), outside.join(file)).unwrap();
    }
    // Each file the bundle holds, replaced by a link to a copy elsewhere.
    for file in [
        "manifest.json",
        "tokenizer.json",
        "unet.onnx",
        "decoder.onnx",
    ] {
        let bundle = edited_bundle(dir.path(), |t| t);
        std::fs::remove_file(bundle.join(file)).unwrap();
        let target = outside.join(file);
        if !target.exists() {
            std::fs::copy(shipped_bundle().join(file), &target).unwrap();
        }
        std::os::unix::fs::symlink(&target, bundle.join(file)).unwrap();
        assert_contains(&load_error(&bundle), &[file, "symbolic link"]);
    }
    // A manifest naming files elsewhere.
    for name in [
        "../outside/tokenizer.json",
        "/etc/passwd",
        "sub/tokenizer.json",
        "..",
    ] {
        let bundle = edited_bundle(dir.path(), |t| {
            t.replace("\"tokenizer.json\"", &format!("{name:?}"))
        });
        assert_contains(
            &load_error(&bundle),
            &["conditioning.tokenizer", "not a plain file name"],
        );
    }
    let bundle = edited_bundle(dir.path(), |t| {
        t.replace("\"unet.onnx\"", "\"../outside/unet.onnx\"")
    });
    assert_contains(
        &load_error(&bundle),
        &["graph `unet` file", "not a plain file name"],
    );
}

#[test]
fn numbers_that_size_work_are_bounded_and_must_agree_with_the_graphs() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &[&str]); 7] = [
        (
            "\"latent_channels\": 4",
            "\"latent_channels\": 7",
            &["latent_channels = 7 but the `unet` graph's 'sample' has 4"],
        ),
        (
            "\"latent_channels\": 4",
            "\"latent_channels\": 1099511627776",
            &["latent_channels = 1099511627776 is not within 1..=1024"],
        ),
        (
            "\"resolution\": 64",
            "\"resolution\": 1099511627776",
            &["resolution = 1099511627776"],
        ),
        (
            "\"max_length\": 16",
            "\"max_length\": 17",
            &["conditioning.max_length = 17 but the `text_encoder` graph's 'input_ids' has 16"],
        ),
        (
            "\"max_length\": 16",
            "\"max_length\": 4294967296",
            &["conditioning.max_length = 4294967296 is not within"],
        ),
        (
            "\"image_channels\": 3",
            "\"image_channels\": 1",
            &["image_channels = 1 but the `encoder` graph's 'image' has 3"],
        ),
        (
            "\"steps\": 25",
            "\"steps\": 100000000",
            &["defaults.steps = 100000000"],
        ),
    ];
    for (from, to, expected) in cases {
        let bundle = edited_bundle(dir.path(), |t| {
            assert!(t.contains(from), "{from}");
            t.replace(from, to)
        });
        assert_contains(&load_error(&bundle), expected);
    }
    // The graphs' own declared shapes are checked against the manifest's specs, too.
    let bundle = edited_bundle(dir.path(), |t| {
        t.replacen("\n            4,\n", "\n            5,\n", 1)
    });
    assert_contains(&load_error(&bundle), &["manifest.json"]);
}

#[test]
fn tokenizers_the_text_encoder_cannot_take_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shipped_bundle().join("tokenizer.json")).unwrap())
            .unwrap();
    let edited = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut json = original.clone();
        edit(&mut json);
        let bundle = edited_bundle(dir.path(), |t| t);
        std::fs::write(bundle.join("tokenizer.json"), json.to_string()).unwrap();
        load_error(&bundle)
    };
    // An id beyond the text encoder's embedding table.
    let err = edited(&|j| {
        j["model"]["vocab"]["zebra"] = 5000.into();
    });
    assert_contains(
        &err,
        &[
            "tokenizer.json",
            "token id 5000 is beyond the",
            "embeddings its graph holds",
        ],
    );
    // Components that run regular expressions or are unknown.
    let err = edited(&|j| {
        j["pre_tokenizer"] = serde_json::json!({
            "type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": false
        });
    });
    assert_contains(
        &err,
        &["its pre_tokenizer is a Split with the regular expression \"(a+)+$\", which is not CLIP's"],
    );
    let err = edited(&|j| {
        j["normalizer"] = serde_json::json!({"type": "Sequence", "normalizers": [
            {"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": "(a|aa)*b"}, "content": ""}
        ]})
    });
    assert_contains(
        &err,
        &["its normalizer is a Replace with the regular expression"],
    );
    let err = edited(&|j| j["model"]["type"] = "Unigram".into());
    assert_contains(&err, &["its model is of type Unigram"]);
    let err = edited(&|j| j["normalizer"] = serde_json::json!({"type": "Precompiled"}));
    assert_contains(&err, &["its normalizer is of type Precompiled"]);
    // Not JSON, or a vocabulary far beyond any model's.
    let bundle = edited_bundle(dir.path(), |t| t);
    std::fs::write(bundle.join("tokenizer.json"), b"\xff\xfe{").unwrap();
    assert_contains(&load_error(&bundle), &["tokenizer.json", "not JSON"]);
    let err = edited(&|j| {
        let vocab = j["model"]["vocab"].as_object_mut().unwrap();
        for i in 0..(1 << 20) + 1 {
            vocab.insert(format!("t{i}"), i.into());
        }
    });
    assert_contains(&err, &["vocabulary entries, above the"]);
    // A prompt far longer than any context.
    let mut pipeline =
        Pipeline::new(Bundle::load(&shipped_bundle()).unwrap(), Backend::Tract, 1).unwrap();
    let err = pipeline
        .generate(&Generate::new(vec!["a".repeat(1 << 20)]), &mut |_| true)
        .unwrap_err()
        .to_string();
    assert_contains(&err, &["the prompt is 1048576 bytes long, above the 16384"]);
}

/// The shipped bundle with every weight of `graph` replaced by `value`.
fn with_weights(dir: &Path, graph: &str, value: f32) -> PathBuf {
    let bundle = edited_bundle(dir, |t| t);
    let path = bundle.join(graph);
    let mut model = pb::ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    for tensor in &mut model.graph.as_mut().unwrap().initializer {
        let half = tensor.data_type == pb::tensor_proto::DataType::Float16 as i32;
        let float = tensor.data_type == pb::tensor_proto::DataType::Float as i32;
        if tensor.dims.len() >= 2 && (half || float) {
            let bytes: Vec<u8> = if half {
                half::f16::from_f32(value).to_le_bytes().to_vec()
            } else {
                value.to_le_bytes().to_vec()
            };
            let count = tensor.raw_data.len() / bytes.len();
            tensor.raw_data = bytes.repeat(count);
        }
    }
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    bundle
}

#[test]
fn a_network_that_outputs_nan_or_infinity_is_named_instead_of_making_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let request = Generate::new(vec!["a red circle".into()]).steps(2);
    for (graph, value, named) in [
        ("decoder.onnx", f32::NAN, "the decoder graph returned"),
        ("unet.onnx", f32::NAN, "the unet graph returned"),
        (
            "text_encoder.onnx",
            f32::INFINITY,
            "the text_encoder graph returned",
        ),
    ] {
        let bundle = with_weights(dir.path(), graph, value);
        let mut pipeline =
            Pipeline::new(Bundle::load(&bundle).unwrap(), Backend::Tract, 1).unwrap();
        let err = pipeline
            .generate(&request, &mut |_| true)
            .unwrap_err()
            .to_string();
        assert_contains(
            &err,
            &[named, "non-finite values", "weights are likely damaged"],
        );
    }
    // Guidance scales that would push a healthy network out of range are refused first.
    let pipeline =
        Pipeline::new(Bundle::load(&shipped_bundle()).unwrap(), Backend::Tract, 1).unwrap();
    for guidance in [1e38, -1e3, f64::INFINITY] {
        let err = pipeline
            .plan(&request.clone().guidance(guidance))
            .unwrap_err();
        assert_contains(&err.to_string(), &["must be within -100..=100"]);
    }
}

#[test]
fn thread_counts_are_bounded_by_the_machine() {
    for threads in [0, 100_000, usize::MAX] {
        let err = Pipeline::new(
            Bundle::load(&shipped_bundle()).unwrap(),
            Backend::Tract,
            threads,
        )
        .err()
        .expect("refused")
        .to_string();
        assert_contains(&err, &[&format!("{threads} threads: at most")]);
    }
}
