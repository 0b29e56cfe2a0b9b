//! The procedural scenes: determinism by seed, captions that match the pixels.

use ldm_data::shapes::{self, ShapesConfig};
use ldm_data::{ImageFolder, Split};

mod common;
use common::tree_bytes;

#[test]
fn same_seed_writes_identical_bytes_and_another_seed_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let config = ShapesConfig {
        count: 60,
        size: 32,
        seed: 7,
    };
    let run = |name: &str, config: &ShapesConfig| {
        let (dir, train, validation) =
            shapes::prepare(&tmp.path().join(name), config, |_, _| {}).unwrap();
        assert_eq!(train + validation, config.count);
        tree_bytes(&dir)
    };
    let a = run("a", &config);
    let b = run("b", &config);
    assert_eq!(a, b);
    assert_eq!(a.len(), 60 + 2, "60 images and two metadata files");
    let c = run("c", &ShapesConfig { seed: 8, ..config });
    assert_ne!(a, c);
}

#[test]
fn the_shape_is_drawn_in_the_colour_and_place_the_caption_names() {
    let config = ShapesConfig {
        count: 40,
        size: 48,
        seed: 3,
    };
    for scene in shapes::scenes(&config) {
        let caption = scene.caption();
        assert!(
            caption.contains(scene.colour) && caption.contains(scene.shape),
            "{caption}"
        );
        let image = scene.render(config.size);
        let fg = shapes::COLOURS
            .iter()
            .find(|(n, _)| *n == scene.colour)
            .unwrap()
            .1;
        // The pixel at the shape's centre has its colour (every shape covers its centre).
        let (cx, cy) = (scene.centre.0 * 48.0, scene.centre.1 * 48.0);
        assert_eq!(image.get_pixel(cx as u32, cy as u32).0, fg, "{caption}");
        // A corner far from the shape keeps the background.
        let corner = (
            if scene.column == 0 { 47 } else { 0 },
            if scene.row == 0 { 47 } else { 0 },
        );
        let bg = shapes::BACKGROUNDS
            .iter()
            .find(|(n, _)| *n == scene.background)
            .unwrap()
            .1;
        assert_eq!(image.get_pixel(corner.0, corner.1).0, bg, "{caption}");
    }
}

#[test]
fn large_shapes_cover_more_pixels_than_small_ones() {
    let config = ShapesConfig {
        count: 200,
        size: 32,
        seed: 1,
    };
    let coverage = |large: bool| {
        let scenes: Vec<_> = shapes::scenes(&config)
            .filter(|s| s.large == large && s.shape == "circle")
            .collect();
        let bg_count: usize = scenes
            .iter()
            .map(|s| {
                let bg = shapes::BACKGROUNDS
                    .iter()
                    .find(|(n, _)| *n == s.background)
                    .unwrap()
                    .1;
                s.render(32).pixels().filter(|p| p.0 != bg).count()
            })
            .sum();
        bg_count as f32 / scenes.len() as f32
    };
    assert!(coverage(true) > 2.0 * coverage(false));
}

#[test]
fn prepared_folder_loads_with_captions_labels_and_a_split() {
    let tmp = tempfile::tempdir().unwrap();
    let config = ShapesConfig {
        count: 100,
        size: 16,
        seed: 0,
    };
    let (dir, train, validation) =
        shapes::prepare(&tmp.path().join("s"), &config, |_, _| {}).unwrap();
    assert!(validation > 0 && train > validation, "{train}/{validation}");
    let folder = ImageFolder::open(&dir.join("train"))
        .unwrap()
        .require_text()
        .unwrap()
        .require_label()
        .unwrap();
    assert_eq!(folder.len(), train);
    for record in folder.records() {
        assert_eq!(Split::of(&record.file_name, 10), Split::Train);
        assert!(record.attributes.contains_key("position"));
    }
}

#[test]
fn absurd_options_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let err = shapes::prepare(
        &tmp.path().join("x"),
        &ShapesConfig {
            count: 0,
            size: 64,
            seed: 0,
        },
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert_eq!(err, "invalid count: 0 (expected 1 to 10000000 scenes)");
    let err = shapes::prepare(
        &tmp.path().join("x"),
        &ShapesConfig {
            count: 5,
            size: 100_000,
            seed: 0,
        },
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert_eq!(err, "invalid size: 100000 (expected 16 to 1024 pixels)");
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn an_existing_output_is_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("taken");
    std::fs::create_dir(&out).unwrap();
    let err = shapes::prepare(
        &out,
        &ShapesConfig {
            count: 5,
            size: 16,
            seed: 0,
        },
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.ends_with("taken already exists; choose another --out or remove it first"),
        "{err}"
    );
}

#[test]
fn the_pixel_judge_reads_every_attribute_of_rendered_scenes() {
    use ldm_data::judge::judge;
    let config = ShapesConfig {
        count: 400,
        size: 64,
        seed: 11,
    };
    let mut wrong = Vec::new();
    for scene in shapes::scenes(&config) {
        let j = judge(&scene.render(64)).expect("a shape is visible");
        let read = (j.colour, j.shape, j.large, j.position, j.background);
        let truth = (
            scene.colour,
            scene.shape,
            scene.large,
            scene.position(),
            scene.background,
        );
        if read != truth {
            wrong.push(format!("{truth:?} read as {read:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of 400 misread:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // A blank image shows no shape.
    let blank = image::RgbImage::from_pixel(64, 64, image::Rgb([255, 255, 255]));
    assert!(judge(&blank).is_none());
}
