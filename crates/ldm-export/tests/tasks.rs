//! The tasks that need exported bundles of their own kind, end to end on tiny random models:
//! super-resolution, inpainting and semantic-map models conditioned by concatenation, a class-conditional
//! model, an unconditional one in pixel space, and layout models (with box attention, with a
//! layout planner), each generated through the runtime.

mod common;

use std::sync::Mutex;

use common::{
    config, random_release, CLASS, INPAINTING, LAYOUT, NONE, PLANNED_LAYOUT, SEMANTIC_MAP,
    SUPER_RESOLUTION, TEXT,
};
use ldm_core::manifest::GraphRole;
use ldm_core::semantic::ClassMap;
use ldm_export::{export_release, ExportOptions};
use ldm_nn::FirstStage;
use ldm_runtime::{Backend, Bundle, Generate, Image, Pipeline};

static TORCH_RNG: Mutex<()> = Mutex::new(());

fn pipeline(regularizer: FirstStage, conditioning: &str, dir: &std::path::Path) -> Pipeline {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let release = random_release(&config(regularizer, conditioning), 3);
    let options = ExportOptions {
        parity: false,
        ..ExportOptions::default()
    };
    let out = dir.join("bundle");
    export_release(&release, &out, &options).unwrap();
    Pipeline::new(Bundle::load(&out).unwrap(), Backend::Tract, 1).unwrap()
}

fn grey(side: usize) -> Image {
    Image {
        width: side,
        height: side,
        rgb: (0..side * side * 3).map(|i| (i % 251) as u8).collect(),
    }
}

fn run(pipeline: &mut Pipeline, request: &Generate) -> Result<Vec<Image>, String> {
    pipeline
        .generate(request, &mut |_| true)
        .map_err(|e| e.to_string())
}

#[test]
fn concatenation_class_and_pixel_models_generate() {
    let dir = tempfile::tempdir().unwrap();
    let one = || Generate::new(vec![String::new()]).steps(3);

    // Super-resolution (f = 2): an 8x8 image becomes 16x16.
    let mut sr = pipeline(FirstStage::Kl, SUPER_RESOLUTION, &dir.path().join("sr"));
    let out = run(&mut sr, &one().size(16).init_image(grey(8), 1.0)).unwrap();
    assert_eq!((out[0].width, out[0].height), (16, 16));
    let err = run(&mut sr, &one()).unwrap_err();
    assert!(err.contains("needs an input image"), "{err}");
    let err = run(&mut sr, &one().size(16).init_image(grey(16), 1.0)).unwrap_err();
    assert!(
        err.contains("low-resolution image is 16x16; this request needs 8x8"),
        "{err}"
    );

    // Inpainting by concatenation (VQ): image and mask in, the mask channels fed.
    let mut inpaint = pipeline(FirstStage::Vq, INPAINTING, &dir.path().join("inpaint"));
    let right_half = Image {
        width: 16,
        height: 16,
        rgb: (0..16 * 16 * 3)
            .map(|i| if (i / 3) % 16 >= 8 { 255 } else { 0 })
            .collect(),
    };
    let request = one().init_image(grey(16), 1.0).mask(right_half);
    assert_eq!(run(&mut inpaint, &request).unwrap().len(), 1);
    let err = run(&mut inpaint, &one().init_image(grey(16), 1.0)).unwrap_err();
    assert!(err.contains("an input image and a mask"), "{err}");

    // Class-conditional: names or ids; an unknown one is named.
    let mut class = pipeline(FirstStage::Kl, CLASS, &dir.path().join("class"));
    let request = Generate::new(vec!["0".into(), "4".into()])
        .steps(3)
        .guidance(2.0);
    assert_eq!(run(&mut class, &request).unwrap().len(), 2);
    let err = run(&mut class, &Generate::new(vec!["cat".into()]).steps(3)).unwrap_err();
    assert!(err.contains("'cat' is neither a class name"), "{err}");

    // Pixel space (f = 1), at twice the training size.
    let mut pixels = pipeline(FirstStage::Identity, NONE, &dir.path().join("pixels"));
    let out = run(&mut pixels, &one().size(32)).unwrap();
    assert_eq!((out[0].width, out[0].height), (32, 32));
}

/// A map of `side` x `side` pixels: a square of class `id` in the top left quarter.
fn square_map(side: usize, id: u8) -> ClassMap {
    ClassMap {
        width: side,
        height: side,
        ids: (0..side * side)
            .map(|i| {
                if i % side < side / 2 && i / side < side / 2 {
                    id
                } else {
                    0
                }
            })
            .collect(),
    }
}

#[test]
fn semantic_map_models_draw_from_their_map_at_any_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut semantic = pipeline(FirstStage::Kl, SEMANTIC_MAP, &dir.path().join("semantic"));
    let m = &semantic.bundle().manifest;
    let concat = m.conditioning.concat().unwrap();
    assert_eq!(
        (concat.task, concat.channels),
        (ldm_core::manifest::ConcatKind::SemanticMap, 5)
    );
    let with_map = |map: ClassMap| {
        let mut request = Generate::new(vec![String::new()]).steps(2);
        request.semantic_map = Some(map);
        request
    };
    // The output takes the map's size: the training size, then twice it.
    for side in [16, 32] {
        let out = run(&mut semantic, &with_map(square_map(side, 2))).unwrap();
        assert_eq!((out[0].width, out[0].height), (side, side));
    }
    // The map decides the image: another map, another image from the same seed.
    let a = run(&mut semantic, &with_map(square_map(16, 2))).unwrap();
    let b = run(&mut semantic, &with_map(square_map(16, 4))).unwrap();
    assert_ne!(a[0].rgb, b[0].rgb);
    let err = run(&mut semantic, &Generate::new(vec![String::new()]).steps(2)).unwrap_err();
    assert!(err.contains("needs a semantic map"), "{err}");
    let err = run(&mut semantic, &with_map(square_map(16, 5))).unwrap_err();
    assert!(
        err.contains("pixel (0, 0) has class id 5, but the model knows ids 0 to 4"),
        "{err}"
    );
    let err = run(&mut semantic, &with_map(square_map(16, 1)).size(32)).unwrap_err();
    assert!(
        err.contains("semantic map is 16x16; this request needs 32x32"),
        "{err}"
    );
    let err = run(&mut semantic, &with_map(square_map(15, 1))).unwrap_err();
    assert!(err.contains("15"), "{err}");
    // A bundle of another kind refuses a map rather than ignoring it.
    let mut plain = pipeline(FirstStage::Kl, NONE, &dir.path().join("plain"));
    let err = run(&mut plain, &with_map(square_map(16, 1))).unwrap_err();
    assert!(err.contains("does not take a semantic map"), "{err}");
}

#[test]
fn layout_models_draw_boxes_given_as_json_or_words_and_refuse_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut layout = pipeline(FirstStage::Kl, LAYOUT, &dir.path().join("layout"));
    let vocabulary = layout
        .bundle()
        .manifest
        .conditioning
        .layout()
        .unwrap()
        .clone();
    assert_eq!((vocabulary.bins, vocabulary.max_objects), (4, 2));
    let draw = |prompt: &str| Generate::new(vec![prompt.to_string()]).steps(2);
    let json = r#"{"objects": [{"class": "star", "colour": "blue", "box": [0.25, 0, 1, 0.5]}]}"#;
    let from_json = run(&mut layout, &draw(json)).unwrap();
    let from_words = run(&mut layout, &draw("star blue l1 t0 r4 b2")).unwrap();
    assert_eq!(
        from_json[0].rgb, from_words[0].rgb,
        "the same layout, the same tokens"
    );
    let other = run(&mut layout, &draw("circle red l0 t2 r2 b4")).unwrap();
    assert_ne!(from_json[0].rgb, other[0].rgb);
    for (prompt, says) in [
        ("a blue star", "not a layout"),
        ("square red l0 t0 r2 b2", "unknown class 'square'"),
        (
            r#"{"objects": [{"class": "star", "colour": "blue", "box": [0.6, 0, 0.2, 1]}]}"#,
            "box",
        ),
        ("star blue l0 t0 r9 b2", "is not an edge r0 to r4"),
    ] {
        let err = run(&mut layout, &draw(prompt)).unwrap_err();
        assert!(err.contains(says), "{prompt}: {err}");
    }
    let err = run(&mut layout, &draw("").negative_prompt("a red thing")).unwrap_err();
    assert!(err.contains("not a layout"), "{err}");
    // With box attention each token's box travels in the context: the same prompts work, and
    // moving a box alone changes the image.
    let boxes = format!("{LAYOUT}\nbox_attention = true");
    let mut boxed = pipeline(FirstStage::Kl, &boxes, &dir.path().join("boxed"));
    let vocabulary = boxed.bundle().manifest.conditioning.layout().unwrap();
    assert!(vocabulary.box_attention);
    let placed = run(&mut boxed, &draw(json)).unwrap();
    let same = run(&mut boxed, &draw("star blue l1 t0 r4 b2")).unwrap();
    assert_eq!(placed[0].rgb, same[0].rgb);
    let moved = run(&mut boxed, &draw("star blue l0 t2 r2 b4")).unwrap();
    assert_ne!(placed[0].rgb, moved[0].rgb, "another box, another image");
    // A caption model takes a layout's words as any other caption: only layout bundles parse.
    let mut text = pipeline(FirstStage::Kl, TEXT, &dir.path().join("text"));
    assert!(text.bundle().manifest.conditioning.layout().is_none());
    run(&mut text, &draw("star blue l1 t0 r4 b2")).unwrap();
}

#[test]
fn a_planner_bundle_draws_each_caption_as_the_layout_it_plans() {
    let dir = tempfile::tempdir().unwrap();
    let mut planned = pipeline(FirstStage::Kl, PLANNED_LAYOUT, &dir.path().join("planned"));
    let manifest = planned.bundle().manifest.clone();
    assert!(manifest.graphs.contains_key(&GraphRole::Planner));
    let vocabulary = manifest.conditioning.layout().unwrap();
    let draw = |prompt: &str| Generate::new(vec![prompt.to_string()]).steps(2);
    let captions: Vec<String> = ["a red circle at the top", "a blue star and a red circle"]
        .map(String::from)
        .into();
    let layouts = planned.layouts(&captions).unwrap();
    for (caption, layout) in captions.iter().zip(&layouts) {
        // Every plan is a layout the vocabulary takes, as JSON the bundle draws as it is.
        assert!(layout.starts_with('{'), "{layout}");
        vocabulary.prompt(layout).unwrap();
        assert_eq!(
            planned.layouts(std::slice::from_ref(layout)).unwrap(),
            std::slice::from_ref(layout)
        );
        let from_caption = run(&mut planned, &draw(caption)).unwrap();
        let from_layout = run(&mut planned, &draw(layout)).unwrap();
        assert_eq!(
            from_caption[0].rgb, from_layout[0].rgb,
            "{caption}: {layout}"
        );
    }
    // The unconditional prompt stays empty; a caption as a negative prompt is planned too.
    assert_eq!(planned.layouts(&[String::new()]).unwrap(), [String::new()]);
    run(&mut planned, &draw("").negative_prompt("a red circle")).unwrap();
    let err = run(&mut planned, &draw(r#"{"objects": [{"class": "moon"}]}"#)).unwrap_err();
    assert!(err.contains("not a layout"), "{err}");
    // Without a planner, prompts are what they were.
    let mut layout = pipeline(FirstStage::Kl, LAYOUT, &dir.path().join("layout"));
    assert_eq!(layout.layouts(&captions).unwrap(), captions);
}
