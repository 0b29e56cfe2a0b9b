//! A corrupt checkpoint, weights that do not fit their configuration and an unwritable output
//! folder each stop the export with a message that names the problem, and leave no bundle,
//! whole or partial, behind.

use std::path::{Path, PathBuf};

use ldm_export::{export, ExportOptions};

/// A copy of the shipped shapes release, to damage.
fn release_copy(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes-text");
    let copy = dir.join("release");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    copy
}

fn quick() -> ExportOptions {
    ExportOptions {
        parity: false,
        ..ExportOptions::default()
    }
}

/// Nothing but the release folder (and the file planted as an obstacle) in `dir`.
fn assert_nothing_written(dir: &Path) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.retain(|n| n != "release" && n != "a-file");
    assert!(names.is_empty(), "left behind: {names:?}");
}

#[test]
fn damaged_or_mismatched_weights_and_unwritable_output_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let release = release_copy(dir.path());
    let out = dir.path().join("bundle");

    let unet = release.join("unet.safetensors");
    let good = std::fs::read(&unet).unwrap();
    std::fs::write(&unet, &good[..good.len() / 3]).unwrap();
    let err = format!("{:#}", export(&release, &out, &quick()).err().unwrap());
    assert!(err.contains("unet.safetensors"), "{err}");
    assert_nothing_written(dir.path());
    std::fs::write(&unet, &good).unwrap();

    let config = release.join("model.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("model_channels = 64", "model_channels = 32"),
    )
    .unwrap();
    let err = format!("{:#}", export(&release, &out, &quick()).err().unwrap());
    assert!(
        err.contains("unet.safetensors") && err.contains("shape"),
        "{err}"
    );
    assert_nothing_written(dir.path());
    std::fs::write(&config, text).unwrap();

    std::fs::write(dir.path().join("a-file"), "not a folder").unwrap();
    let err = format!(
        "{:#}",
        export(&release, &dir.path().join("a-file/bundle"), &quick())
            .err()
            .unwrap()
    );
    assert!(err.contains("a-file"), "{err}");
    assert_nothing_written(dir.path());

    let err = format!(
        "{:#}",
        export(&dir.path().join("nothing"), &out, &quick())
            .err()
            .unwrap()
    );
    assert!(
        err.contains("nothing") && err.contains("neither a release"),
        "{err}"
    );

    // The repaired release exports, and only the finished bundle appears.
    let exported = export(&release, &out, &quick()).unwrap();
    assert_eq!(exported.dir, out);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "staging left behind: {names:?}");
}
