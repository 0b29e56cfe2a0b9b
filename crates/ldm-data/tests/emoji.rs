//! The emoji preparer on small package tarballs laid out like the real npm packages.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::{Rgba, RgbaImage};
use ldm_data::emoji::{self, Style, STYLES};
use ldm_data::{ImageFolder, Record};

fn png(colour: [u8; 4]) -> Vec<u8> {
    let image = RgbaImage::from_pixel(64, 64, Rgba(colour));
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

fn tgz(path: &Path, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes.as_slice())
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
    path.to_path_buf()
}

const EMOJI_JSON: &str = r#"[
  {"name": "RED APPLE", "unified": "1F34E", "image": "1f34e.png", "category": "Food & Drink", "subcategory": "food-fruit"},
  {"name": "WAVING HAND SIGN", "unified": "1F44B", "image": "1f44b.png", "category": "People & Body", "subcategory": "hand-fingers-open",
   "skin_variations": {"1F3FB": {"unified": "1F44B-1F3FB", "image": "1f44b-1f3fb.png"}}},
  {"name": "WHITE HEART", "unified": "1F90D", "image": "1f90d.png", "category": "Smileys & Emotion", "subcategory": "heart"}
]"#;

const EMOJIBASE_JSON: &str = r#"[
  {"label": "red apple", "hexcode": "1F34E", "tags": ["apple", "fruit"]},
  {"label": "waving hand", "hexcode": "1F44B", "tags": ["hand", "wave"],
   "skins": [{"label": "waving hand: light skin tone", "hexcode": "1F44B-1F3FB"}]},
  {"label": "white heart", "hexcode": "1F90D-FE0F"}
]"#;

/// Tarballs for both styles and emojibase; `broken` replaces the apple's PNG.
fn packages(dir: &Path, broken: Option<Vec<u8>>) -> (Vec<(Style, PathBuf)>, PathBuf) {
    let styles = STYLES
        .iter()
        .map(|style| {
            let image = |file: &str| format!("{}{file}", style.image_dir);
            let apple = broken.clone().unwrap_or_else(|| png([200, 0, 0, 255]));
            let files = vec![
                ("package/emoji.json", EMOJI_JSON.as_bytes().to_vec()),
                (image("1f34e.png").leak() as &str, apple),
                (image("1f44b.png").leak(), png([250, 200, 0, 255])),
                (image("1f44b-1f3fb.png").leak(), png([250, 220, 180, 255])),
                // Half-transparent black: must come out mid grey on white.
                (image("1f90d.png").leak(), png([0, 0, 0, 128])),
            ];
            (
                *style,
                tgz(&dir.join(format!("{}.tgz", style.name)), &files),
            )
        })
        .collect();
    let emojibase = tgz(
        &dir.join("emojibase.tgz"),
        &[("package/en/data.json", EMOJIBASE_JSON.as_bytes().to_vec())],
    );
    (styles, emojibase)
}

fn all_records(dir: &Path) -> Vec<Record> {
    ["train", "validation"]
        .iter()
        .flat_map(|s| {
            ImageFolder::open(&dir.join(s))
                .map(|f| f.records().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn both_styles_are_captioned_labelled_and_composited_on_white() {
    let tmp = tempfile::tempdir().unwrap();
    let (styles, emojibase) = packages(tmp.path(), None);
    let out = tmp.path().join("emoji");
    let (dir, train, validation) =
        emoji::prepare_from_archives(&out, &styles, &emojibase, |_, _| {}).unwrap();
    assert_eq!(train + validation, 8, "4 emoji (one skin tone) x 2 styles");
    let records = all_records(&dir);
    let texts: Vec<_> = records.iter().map(|r| r.text.clone().unwrap()).collect();
    for caption in [
        "red apple, twemoji style",
        "red apple, noto style",
        "waving hand, light skin tone, noto style",
        "white heart, twemoji style",
    ] {
        assert!(
            texts.iter().any(|t| t == caption),
            "{caption} missing from {texts:?}"
        );
    }
    let apple = records
        .iter()
        .find(|r| r.file_name == "twemoji_1f34e.png")
        .unwrap();
    assert_eq!(apple.label.as_deref(), Some("Food & Drink"));
    assert_eq!(
        apple.attributes["tags"],
        serde_json::json!(["apple", "fruit"])
    );
    // Skin tones inherit the base emoji's tags.
    let hand = records
        .iter()
        .find(|r| r.file_name == "noto_1f44b-1f3fb.png")
        .unwrap();
    assert_eq!(hand.attributes["tags"], serde_json::json!(["hand", "wave"]));

    let heart_dir = if dir.join("train/noto_1f90d.png").exists() {
        "train"
    } else {
        "validation"
    };
    let heart = image::open(dir.join(heart_dir).join("noto_1f90d.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(heart.get_pixel(10, 10).0, [127, 127, 127]);
    // Both styles of one emoji share a split.
    assert!(dir.join(heart_dir).join("twemoji_1f90d.png").exists());
    let licence = std::fs::read_to_string(dir.join("LICENSE.md")).unwrap();
    assert!(licence.contains("Apache License 2.0") && licence.contains("CC-BY 4.0"));
}

#[test]
fn a_corrupt_image_names_the_archive_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let (styles, emojibase) = packages(tmp.path(), Some(b"\x89PNG garbage".to_vec()));
    let out = tmp.path().join("emoji");
    let err = emoji::prepare_from_archives(&out, &styles, &emojibase, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("noto.tgz") && err.contains("1f34e.png: cannot decode"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !out.exists()
            && left
                .iter()
                .all(|n| !n.to_string_lossy().contains("partial")),
        "{left:?}"
    );
}

#[test]
fn a_wrong_archive_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut styles, emojibase) = packages(tmp.path(), None);
    styles[0].1 = emojibase.clone();
    let err = emoji::prepare_from_archives(&tmp.path().join("o"), &styles, &emojibase, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("emojibase.tgz: no package/emoji.json: is this emoji-datasource-google?"),
        "{err}"
    );
    let not_gzip = tmp.path().join("junk.tgz");
    std::fs::write(&not_gzip, b"junk").unwrap();
    let err = emoji::prepare_from_archives(&tmp.path().join("o"), &styles, &not_gzip, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("junk.tgz: not a readable .tgz"), "{err}");
}

#[test]
fn an_unknown_package_is_reported_with_what_npm_said() {
    let tmp = tempfile::tempdir().unwrap();
    let package = emoji::Package {
        name: "ldm-no-such-package-2ff1e0",
        version: "0.0.0",
    };
    let err = emoji::npm_pack(package, tmp.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`npm pack ldm-no-such-package-2ff1e0@0.0.0` failed")
            || err.contains("npm is needed"),
        "{err}"
    );
}
