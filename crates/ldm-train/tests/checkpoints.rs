//! Checkpoints: a round trip restores the same network; crashes mid-write, corrupt files and
//! mismatched configurations give clear errors and never lose the last good checkpoint.

use std::collections::BTreeMap;

use ldm_nn::{autoencoder, ModelConfig, ShapeOps};
use ldm_train::checkpoint::{self, CheckpointError};
use ldm_train::TchOps;
use tch::{Device, Kind, Tensor};

fn config(channels: usize) -> ModelConfig {
    ModelConfig::parse(&format!(
        "resolution = 8\n[autoencoder]\nregularizer = \"kl\"\nfactor = 2\nlatent_channels = 3\nchannels = {channels}\n\
         channel_mult = [1, 2]\nres_blocks = 1\ngroups = 2\n[unet]\nmodel_channels = 4\nchannel_mult = [1]\nheads = 1\ngroups = 2"
    ))
    .unwrap()
}

fn expected(cfg: &ModelConfig) -> BTreeMap<String, Vec<usize>> {
    let mut o = ShapeOps::default();
    autoencoder::encode(&mut o, &cfg.autoencoder, 8, &vec![1, 3, 8, 8]).unwrap();
    o.params
}

/// An encoder with fresh weights.
fn encoder_ops(cfg: &ModelConfig) -> TchOps {
    let mut o = TchOps::new(Device::Cpu);
    let image = Tensor::zeros([1, 3, 8, 8], (Kind::Float, Device::Cpu));
    let _ = autoencoder::encode(&mut o, &cfg.autoencoder, 8, &image).unwrap();
    o
}

fn encoder_weights(o: &TchOps) -> Vec<(String, Tensor)> {
    o.params()
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().copy()))
        .collect()
}

#[test]
fn a_checkpoint_restores_the_network_and_its_state() {
    tch::manual_seed(0);
    let cfg = config(4);
    let run = tempfile::tempdir().unwrap();
    let image = Tensor::randn([1, 3, 8, 8], (Kind::Float, Device::Cpu));
    let mut trained = TchOps::new(Device::Cpu);
    let out = autoencoder::encode(&mut trained, &cfg.autoencoder, 8, &image).unwrap();

    assert!(checkpoint::latest(run.path()).unwrap().is_none());
    checkpoint::save(
        run.path(),
        7,
        &[("encoder", encoder_weights(&trained).as_slice())],
        &serde_json::json!({"step": 7}),
    )
    .unwrap();
    let dir = checkpoint::latest(run.path()).unwrap().unwrap();
    assert!(dir.ends_with("checkpoints/step-00000007"));

    let weights = checkpoint::load_weights(&dir, "encoder", Some(&expected(&cfg))).unwrap();
    let state: serde_json::Value = checkpoint::load_state(&dir).unwrap();
    assert_eq!(state["step"], 7);
    let mut restored = TchOps::new(Device::Cpu);
    restored.load_params(weights).unwrap();
    restored.freeze();
    let again = autoencoder::encode(&mut restored, &cfg.autoencoder, 8, &image).unwrap();
    assert!(
        out.allclose(&again, 0.0, 0.0, false),
        "bit-identical after a round trip"
    );
}

#[test]
fn an_interrupted_save_leaves_the_previous_checkpoint_as_latest() {
    let cfg = config(4);
    let run = tempfile::tempdir().unwrap();
    let o = encoder_ops(&cfg);
    checkpoint::save(
        run.path(),
        1,
        &[("encoder", encoder_weights(&o).as_slice())],
        &serde_json::json!({}),
    )
    .unwrap();
    // What a kill during the next save leaves: a partial folder and an unrenamed pointer.
    let dir = run.path().join("checkpoints");
    std::fs::create_dir(dir.join(".step-00000002.partial-x")).unwrap();
    std::fs::write(
        dir.join(".step-00000002.partial-x/encoder.safetensors"),
        b"half",
    )
    .unwrap();
    std::fs::write(dir.join("latest.tmp"), b"step-000").unwrap();
    let latest = checkpoint::latest(run.path()).unwrap().unwrap();
    assert!(latest.ends_with("step-00000001"));
    assert!(checkpoint::load_weights(&latest, "encoder", Some(&expected(&cfg))).is_ok());
    // The next save goes through regardless.
    checkpoint::save(
        run.path(),
        2,
        &[("encoder", encoder_weights(&o).as_slice())],
        &serde_json::json!({}),
    )
    .unwrap();
    assert!(checkpoint::latest(run.path())
        .unwrap()
        .unwrap()
        .ends_with("step-00000002"));
}

#[test]
fn corrupt_and_mismatched_checkpoints_are_refused_by_name() {
    let cfg = config(4);
    let run = tempfile::tempdir().unwrap();
    let o = encoder_ops(&cfg);
    let dir = checkpoint::save(
        run.path(),
        3,
        &[("encoder", encoder_weights(&o).as_slice())],
        &serde_json::json!({}),
    )
    .unwrap();

    // Another width: every conv has other shapes.
    let err = checkpoint::load_weights(&dir, "encoder", Some(&expected(&config(6)))).unwrap_err();
    assert!(matches!(err, CheckpointError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("the configuration needs"), "{err}");

    let mut fewer = expected(&cfg);
    fewer.remove("encoder.conv_in.weight");
    let err = checkpoint::load_weights(&dir, "encoder", Some(&fewer))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "it holds 'encoder.conv_in.weight', which the configured networks do not have"
        ),
        "{err}"
    );

    std::fs::write(
        dir.join("encoder.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage",
    )
    .unwrap();
    let err = checkpoint::load_weights(&dir, "encoder", Some(&expected(&cfg)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("encoder.safetensors: not a readable checkpoint"),
        "{err}"
    );

    std::fs::write(run.path().join("checkpoints/latest"), b"../../etc\n").unwrap();
    let err = checkpoint::latest(run.path()).unwrap_err().to_string();
    assert!(
        err.contains("not a readable checkpoint (names '../../etc')"),
        "{err}"
    );
}
