//! The `ldm data` commands as a user runs them.

mod common;

/// Runs `ldm args...`: whether it succeeded, and what it printed.
fn ldm(args: &[&str]) -> (bool, String) {
    common::output(common::ldm().args(args))
}

#[test]
fn help_lists_the_data_commands() {
    let (ok, text) = ldm(&["data", "--help"]);
    assert!(ok, "{text}");
    for command in ["emoji", "shapes", "check"] {
        assert!(text.contains(command), "{text}");
    }
}

#[test]
fn shapes_then_check() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("shapes");
    let out_arg = out.to_str().unwrap();
    let (ok, text) = ldm(&[
        "data", "shapes", "--out", out_arg, "--count", "30", "--size", "32", "--seed", "1",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("wrote 30 pairs"), "{text}");
    let (ok, text) = ldm(&["data", "check", out.join("train").to_str().unwrap()]);
    assert!(ok && text.contains("all decode"), "{text}");
    let (ok, text) = ldm(&["data", "check", out_arg]);
    assert!(
        !ok && text.contains("has no metadata.jsonl (it holds train and validation: pass"),
        "{text}"
    );
}

#[test]
fn bad_options_fail_with_a_message_not_a_panic() {
    let (ok, text) = ldm(&["data", "shapes", "--out", "/nonexistent/x", "--count", "0"]);
    assert!(!ok && text.contains("invalid count: 0"), "{text}");
    let (ok, text) = ldm(&["data", "shapes", "--out", "x", "--count", "ten"]);
    assert!(!ok && text.contains("invalid value 'ten'"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn model_info_counts_and_tokenizer_trains_on_captions() {
    let models = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/tiny-text.toml");
    let (ok, text) = ldm(&["model", "info", models]);
    assert!(ok, "{text}");
    assert!(text.contains("unet                     69,059"), "{text}");
    let (ok, text) = ldm(&["model", "info", "no-such.toml"]);
    assert!(
        !ok && text.contains("error: no-such.toml: cannot read the configuration"),
        "{text}"
    );

    // A reader that has gone (`ldm model info ... | head -1`): no panic, no message.
    let mut child = common::ldm()
        .args(["model", "info", models])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let closed = child.wait_with_output().unwrap();
    assert!(
        closed.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );

    let tmp = tempfile::tempdir().unwrap();
    let train = common::shapes_data(tmp.path(), 40, 16);
    let out = tmp.path().join("tokenizer.json");
    let (ok, text) = ldm(&[
        "tokenizer",
        "train",
        "--data",
        train.to_str().unwrap(),
        "--vocab-size",
        "64",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok && out.is_file(), "{text}");
    assert!(text.contains("the longest caption is"), "{text}");
}
