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

#[test]
fn hostile_options_and_input_images_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // A small PNG whose header claims 100,000 x 100,000 pixels.
    let bomb = dir.path().join("bomb.png");
    image::RgbImage::new(8, 8).save(&bomb).unwrap();
    let mut bytes = std::fs::read(&bomb).unwrap();
    bytes[16..24].copy_from_slice(&[0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0]);
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&bomb, &bytes).unwrap();
    let out = dir.path().join("out.png");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["--threads", "100000"], "100000 threads: at most"),
        (&["--threads", "0"], "0 threads: at most"),
        (
            &["--init-image", bomb.to_str().unwrap()],
            "declares 100000x100000 pixels, above the 4096",
        ),
        (
            &[
                "--init-image",
                bomb.to_str().unwrap(),
                "--mask",
                bomb.to_str().unwrap(),
            ],
            "declares 100000x100000",
        ),
        (&["--guidance", "1e300"], "must be within -100..=100"),
        (
            &["--max-memory", "100"],
            "above the memory budget of 100 MB",
        ),
        (
            &["--width", "1000000"],
            "image width 1000000 is not a multiple of 16 up to 4096",
        ),
    ];
    for (args, expected) in cases {
        let (ok, text) = output(
            ldm()
                .current_dir(repo_root())
                .args(["generate", "x", "--steps", "1", "--out", out])
                .args(args),
        );
        assert!(!ok && text.contains(expected), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{text}");
    }
}

#[test]
fn profile_lists_where_tract_spends_its_time() {
    let (ok, text) = output(ldm().current_dir(repo_root()).args([
        "profile", "--graph", "unet", "--batch", "2", "--runs", "1", "--top", "3",
    ]));
    assert!(ok, "{text}");
    assert!(
        text.contains("unet of export/emoji-text, batch 2, 64x64 pixels")
            && text.contains("by operator:")
            && text.contains("OptMatMul"),
        "{text}"
    );
    assert!(
        text.lines().filter(|l| l.contains(" ms  ")).count() >= 3,
        "{text}"
    );
    let (ok, text) = output(
        ldm()
            .current_dir(repo_root())
            .args(["profile", "--graph", "vae"]),
    );
    assert!(!ok && text.contains("unknown graph 'vae'"), "{text}");
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
    // Graphs past the external-data threshold keep their weights beside them and are checked
    // engine by engine in child processes (`ldm parity-engine`), as a 1 B-parameter UNet is.
    let external = dir.path().join("external");
    let (ok, text) = output(ldm().args([
        "export",
        "--run",
        release.to_str().unwrap(),
        "--out",
        external.to_str().unwrap(),
        "--external-data-above",
        "200000",
    ]));
    assert!(ok, "{text}");
    assert!(external.join("unet.onnx.data").is_file(), "{text}");
    assert!(
        text.contains("unet: parity checked in child processes"),
        "{text}"
    );
    for engine in ["tract", "onnxruntime-cpu"] {
        assert!(
            text.contains(&format!("unet             {engine}")),
            "{text}"
        );
    }
    let image = dir.path().join("external.png");
    let (ok, text) = output(ldm().args([
        "generate",
        "a red circle",
        "--bundle",
        external.to_str().unwrap(),
        "--steps",
        "2",
        "--out",
        image.to_str().unwrap(),
    ]));
    assert!(ok && image.is_file(), "{text}");

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
