//! `ldm generate` on the shipped default bundle (run from the repository root, as a user
//! would), and `ldm export` of the shipped release: what they write and how they refuse.

mod common;

use std::path::Path;

use common::{ldm, output};

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn generate_writes_a_grid_from_the_default_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("grid.png");
    let (ok, text) = output(
        ldm()
            .current_dir(repo_root())
            .args(["generate", "red heart, noto style"])
            .args([
                "--steps",
                "3",
                "--batch",
                "3",
                "--seed",
                "9",
                "--out",
                out.to_str().unwrap(),
            ]),
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("3 image(s) of 64x64 from emoji-text on tract"),
        "{text}"
    );
    let grid = image::open(&out).unwrap();
    // Three 64-pixel images in a row, 2 pixels apart.
    assert_eq!((grid.width(), grid.height()), (3 * 64 + 4 * 2, 64 + 2 * 2));

    let (ok, text) = output(
        ldm()
            .current_dir(repo_root())
            .args(["generate", "x", "--out", "x.jpg"]),
    );
    assert!(!ok && text.contains("the output is a PNG"), "{text}");
    let (ok, text) =
        output(ldm().args(["generate", "x", "--bundle", "/nowhere", "--out", "x.png"]));
    assert!(
        !ok && text.contains("/nowhere") && text.contains("ldm export"),
        "{text}"
    );
    let (ok, text) =
        output(
            ldm()
                .current_dir(repo_root())
                .args(["generate", "x", "--backend", "gpu"]),
        );
    assert!(!ok && text.contains("unknown backend 'gpu'"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

#[cfg(feature = "train")]
#[test]
fn export_prints_parity_and_writes_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shapes-text");
    let release = repo_root().join("models/shapes-text");
    let (ok, text) = output(ldm().args([
        "export",
        "--run",
        release.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--fp16-weights",
    ]));
    assert!(ok, "{text}");
    for graph in ["encoder", "decoder", "unet", "text_encoder"] {
        assert!(out.join(format!("{graph}.onnx")).is_file(), "{graph}");
        assert!(text.contains(&format!("{graph:<16} tract")), "{text}");
        assert!(
            text.contains(&format!("{graph:<16} onnxruntime-cpu")),
            "{text}"
        );
    }
    // The shipped bundle is this export, byte for byte.
    for file in ["unet.onnx", "manifest.json", "tokenizer.json"] {
        let shipped = std::fs::read(repo_root().join("export/shapes-text").join(file)).unwrap();
        assert!(
            std::fs::read(out.join(file)).unwrap() == shipped,
            "{file} differs from export/shapes-text"
        );
    }
    let (ok, text) = output(ldm().args([
        "export",
        "--run",
        "/nowhere",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(!ok && text.contains("/nowhere"), "{text}");
    assert!(
        out.join("unet.onnx").is_file(),
        "a failed export leaves the old bundle alone"
    );
}
