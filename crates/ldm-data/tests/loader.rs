//! Reading image folders: validation of rows and files, seeded batches, transforms.

use std::path::Path;

use image::{Rgb, RgbImage, Rgba, RgbaImage};
use ldm_data::{ImageFolder, Loader, LoaderConfig};

/// A folder of `n` 8x6 images with a left-to-right ramp, so flips and crops are visible.
fn folder(dir: &Path, rows: &[&str], n: usize) {
    for i in 0..n {
        let image = RgbImage::from_fn(8, 6, |x, _| Rgb([x as u8 * 30, i as u8 * 10, 255]));
        image.save(dir.join(format!("{i}.png"))).unwrap();
    }
    std::fs::write(dir.join("metadata.jsonl"), rows.join("\n")).unwrap();
}

fn rows(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"file_name": "{i}.png", "text": "image {i}", "label": "{}"}}"#,
                ["b", "a"][i % 2]
            )
        })
        .collect()
}

fn config(batch_size: usize) -> LoaderConfig {
    LoaderConfig {
        size: 6,
        batch_size,
        flip: false,
        shuffle: true,
        seed: 42,
    }
}

#[test]
fn every_epoch_visits_each_row_once_and_batches_are_a_function_of_the_step() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = rows(10);
    folder(
        tmp.path(),
        &rows.iter().map(String::as_str).collect::<Vec<_>>(),
        10,
    );
    let loader = Loader::new(ImageFolder::open(tmp.path()).unwrap(), config(3)).unwrap();
    assert_eq!(loader.batches_per_epoch(), 3);
    let epoch = |e: u64| -> Vec<usize> {
        (e * 3..e * 3 + 3)
            .flat_map(|s| loader.batch(s).unwrap().rows)
            .collect()
    };
    let (first, second) = (epoch(0), epoch(1));
    for order in [&first, &second] {
        let mut sorted = order.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            9,
            "9 distinct rows per epoch (the last incomplete batch is dropped)"
        );
    }
    assert_ne!(first, second, "epochs are reshuffled");
    // A fresh loader (a resumed run) sees the same batch at the same step.
    let again = Loader::new(ImageFolder::open(tmp.path()).unwrap(), config(3)).unwrap();
    assert_eq!(again.batch(4).unwrap(), loader.batch(4).unwrap());
    let other_seed = Loader::new(
        ImageFolder::open(tmp.path()).unwrap(),
        LoaderConfig {
            seed: 43,
            ..config(3)
        },
    )
    .unwrap();
    assert_ne!(
        other_seed.batch(0).unwrap().rows,
        loader.batch(0).unwrap().rows
    );
}

#[test]
fn batches_are_nchw_in_minus_one_to_one_centre_cropped_with_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = rows(2);
    folder(
        tmp.path(),
        &rows.iter().map(String::as_str).collect::<Vec<_>>(),
        2,
    );
    let folder = ImageFolder::open(tmp.path()).unwrap();
    assert_eq!(folder.labels(), ["a", "b"]);
    let loader = Loader::new(
        folder,
        LoaderConfig {
            shuffle: false,
            ..config(2)
        },
    )
    .unwrap();
    let batch = loader.batch(0).unwrap();
    assert_eq!(batch.shape, [2, 3, 6, 6]);
    assert_eq!(batch.images.len(), 2 * 3 * 36);
    assert!(batch.images.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert_eq!(batch.texts, ["image 0", "image 1"]);
    assert_eq!(batch.labels, [Some(1), Some(0)]);
    // Blue is 255 everywhere: +1 in channel 2.
    assert!(batch.images[2 * 36..3 * 36].iter().all(|&v| v == 1.0));
    // The 8-wide ramp is centre-cropped to 6: red of column 0 is source column 1 (30).
    assert!((batch.images[0] - (30.0 / 127.5 - 1.0)).abs() < 1e-6);
}

#[test]
fn flipping_mirrors_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = rows(1);
    folder(
        tmp.path(),
        &rows.iter().map(String::as_str).collect::<Vec<_>>(),
        1,
    );
    let plain = Loader::new(ImageFolder::open(tmp.path()).unwrap(), config(1)).unwrap();
    let flipping = Loader::new(
        ImageFolder::open(tmp.path()).unwrap(),
        LoaderConfig {
            flip: true,
            ..config(1)
        },
    )
    .unwrap();
    let reference = plain.batch(0).unwrap().images;
    let mirrored: Vec<f32> = reference
        .chunks(6)
        .flat_map(|row| row.iter().rev().copied())
        .collect();
    let seen: Vec<Vec<f32>> = (0..16).map(|s| flipping.batch(s).unwrap().images).collect();
    assert!(seen.contains(&reference) && seen.contains(&mirrored));
    assert!(seen.iter().all(|b| *b == reference || *b == mirrored));
}

#[test]
fn transparency_is_composited_on_white() {
    let tmp = tempfile::tempdir().unwrap();
    RgbaImage::from_pixel(4, 4, Rgba([0, 0, 0, 0]))
        .save(tmp.path().join("clear.png"))
        .unwrap();
    std::fs::write(
        tmp.path().join("metadata.jsonl"),
        r#"{"file_name": "clear.png", "text": "nothing"}"#,
    )
    .unwrap();
    let loader = Loader::new(
        ImageFolder::open(tmp.path()).unwrap(),
        LoaderConfig {
            size: 4,
            ..config(1)
        },
    )
    .unwrap();
    assert!(loader.batch(0).unwrap().images.iter().all(|&v| v == 1.0));
}

fn error_of(dir: &Path) -> String {
    ImageFolder::open(dir).unwrap_err().to_string()
}

#[test]
fn bad_folders_are_named_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let msg = error_of(root);
    assert!(
        msg.contains("has no metadata.jsonl; an image folder holds images"),
        "{msg}"
    );

    std::fs::create_dir(root.join("train")).unwrap();
    folder(
        &root.join("train"),
        &[r#"{"file_name": "0.png", "text": "x"}"#],
        1,
    );
    let msg = error_of(root);
    assert!(
        msg.contains("(it holds train: pass ") && msg.contains("train)"),
        "{msg}"
    );

    let dir = root.join("train");
    std::fs::write(
        dir.join("metadata.jsonl"),
        "{\"file_name\": \"0.png\", \"text\": \"x\"}\n{\"text\": \"y\"}",
    )
    .unwrap();
    assert!(error_of(&dir).ends_with("metadata.jsonl line 2: the row has no 'file_name' (every row needs a non-empty 'file_name')"));

    std::fs::write(dir.join("metadata.jsonl"), "{\"file_name\": \"0.png\"\n").unwrap();
    assert!(error_of(&dir).contains("metadata.jsonl line 1: not a JSON object"));

    std::fs::write(
        dir.join("metadata.jsonl"),
        r#"{"file_name": "gone.png", "text": "x"}"#,
    )
    .unwrap();
    assert!(error_of(&dir)
        .ends_with("metadata.jsonl line 1: 'gone.png' is listed but missing from the folder"));

    std::fs::write(
        dir.join("metadata.jsonl"),
        r#"{"file_name": "../0.png", "text": "x"}"#,
    )
    .unwrap();
    assert!(error_of(&dir)
        .contains("'file_name' must be a relative path inside the folder, not '../0.png'"));

    std::fs::write(dir.join("metadata.jsonl"), "\n\n").unwrap();
    assert!(error_of(&dir).ends_with("metadata.jsonl lists no images"));

    std::fs::write(
        dir.join("metadata.jsonl"),
        "{\"file_name\": \"0.png\", \"text\": \"x\"}\n{\"file_name\": \"0.png\", \"text\": \" \"}",
    )
    .unwrap();
    let msg = ImageFolder::open(&dir)
        .unwrap()
        .require_text()
        .unwrap_err()
        .to_string();
    assert!(
        msg.ends_with(
            "metadata.jsonl line 2: the row has no 'text' (every row needs a non-empty 'text')"
        ),
        "{msg}"
    );
    let msg = ImageFolder::open(&dir)
        .unwrap()
        .require_label()
        .unwrap_err()
        .to_string();
    assert!(
        msg.ends_with("line 1: the row has no 'label' (every row needs a non-empty 'label')"),
        "{msg}"
    );
}

#[test]
fn a_corrupt_image_is_named_when_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("bad.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    std::fs::write(
        tmp.path().join("metadata.jsonl"),
        r#"{"file_name": "bad.png", "text": "x", "label": 3}"#,
    )
    .unwrap();
    let folder = ImageFolder::open(tmp.path()).unwrap();
    assert_eq!(folder.labels(), ["3"], "numeric labels read as text");
    let loader = Loader::new(folder, config(1)).unwrap();
    let msg = loader.batch(0).unwrap_err().to_string();
    assert!(msg.contains("bad.png: cannot decode the image"), "{msg}");
    let msg = Loader::new(ImageFolder::open(tmp.path()).unwrap(), config(2))
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("invalid batch size: 2 (the folder") && msg.contains("holds 1 images)"),
        "{msg}"
    );
}

#[test]
fn no_row_reads_a_file_outside_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    folder(&dir, &[r#"{"file_name": "0.png", "text": "x"}"#], 1);
    let outside = tmp.path().join("outside.png");
    RgbImage::new(8, 6).save(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("link.png")).unwrap();
    std::os::unix::fs::symlink(tmp.path(), dir.join("up")).unwrap();
    let row = |name: &str| {
        std::fs::write(
            dir.join("metadata.jsonl"),
            format!(r#"{{"file_name": {name:?}, "text": "x"}}"#),
        )
        .unwrap();
        error_of(&dir)
    };
    for name in [
        "../outside.png",
        "/etc/passwd",
        "./0.png",
        "a/../../outside.png",
        "a\\b.png",
    ] {
        let msg = row(name);
        assert!(
            msg.contains("must be a relative path inside the folder"),
            "{name}: {msg}"
        );
    }
    for name in ["link.png", "up/outside.png"] {
        let msg = row(name);
        assert!(
            msg.contains("line 1") && msg.contains("is a symbolic link"),
            "{name}: {msg}"
        );
    }
    // metadata.jsonl itself may not lead elsewhere.
    std::fs::write(tmp.path().join("rows.jsonl"), r#"{"file_name": "0.png"}"#).unwrap();
    std::fs::remove_file(dir.join("metadata.jsonl")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("rows.jsonl"), dir.join("metadata.jsonl")).unwrap();
    let msg = error_of(&dir);
    assert!(msg.contains("metadata.jsonl: is a symbolic link"), "{msg}");
}

#[test]
fn an_image_declaring_enormous_dimensions_is_refused_before_it_is_decoded() {
    let tmp = tempfile::tempdir().unwrap();
    // A valid 8x6 PNG whose header then claims 100,000 x 100,000 pixels (10 gigapixels).
    RgbImage::new(8, 6)
        .save(tmp.path().join("bomb.png"))
        .unwrap();
    let mut bytes = std::fs::read(tmp.path().join("bomb.png")).unwrap();
    bytes[16..24].copy_from_slice(&[0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0]);
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(tmp.path().join("bomb.png"), &bytes).unwrap();
    std::fs::write(
        tmp.path().join("metadata.jsonl"),
        r#"{"file_name": "bomb.png", "text": "x"}"#,
    )
    .unwrap();
    let loader = Loader::new(ImageFolder::open(tmp.path()).unwrap(), config(1)).unwrap();
    let msg = loader.batch(0).unwrap_err().to_string();
    assert!(
        msg.contains("bomb.png: the image declares 100000x100000 pixels, above the 8192"),
        "{msg}"
    );
}
