//! Training on the procedural scenes: semantic-map models (whole and on random crops) and
//! layout models, and the data each refuses.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Trains `cfg` for 3 steps on 40 tiny scenes (its first stage for 2), checks the run, and
/// returns it with the error of the same training on the shapes data, whose rows have no
/// scene columns.
fn train_on_scenes_then_on_shapes(tmp: &Path, cfg: &ModelConfig) -> (PathBuf, String) {
    let scenes = ldm_data::scenes::ScenesConfig {
        count: 40,
        size: 16,
        seed: 2,
        max_objects: 3,
    };
    ldm_data::scenes::prepare(&tmp.join("scenes"), &scenes, |_, _| {}).unwrap();
    let data = tmp.join("scenes/train");
    let ae = tmp.join("ae");
    autoencoder(cfg, &data, &ae, ae_options(2), 2, false).unwrap();
    let ldm = tmp.join("ldm");
    diffusion(
        cfg,
        (&data, &ae, None),
        &ldm,
        diffusion_options(3),
        3,
        false,
    )
    .unwrap();
    assert!(logged(&ldm, 1).iter().all(|v| v.is_finite()));
    assert!(ldm.join("samples/step-00000003.png").is_file());
    let shapes = shapes_data(tmp);
    let err = diffusion(
        cfg,
        (&shapes, &ae, None),
        &tmp.join("shapes-run"),
        diffusion_options(3),
        3,
        false,
    )
    .unwrap_err()
    .to_string();
    (ldm, err)
}

#[test]
fn a_semantic_map_model_trains_on_the_scenes_and_refuses_data_without_maps() {
    let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config("[conditioning]\nkind = \"concat\"\ntask = \"semantic_map\"\nclasses = 5");
    assert_eq!(cfg.unet_in_channels(), 3 + 5);
    let (_, err) = train_on_scenes_then_on_shapes(tmp.path(), &cfg);
    // Images without maps are refused by the column's name before any step.
    assert!(err.contains("semantic_map"), "{err}");
}

#[test]
fn random_crops_train_on_windows_of_larger_scenes_and_resume_exactly() {
    let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config("[conditioning]\nkind = \"concat\"\ntask = \"semantic_map\"\nclasses = 5");
    let scenes = ldm_data::scenes::ScenesConfig {
        count: 40,
        size: 32,
        seed: 2,
        max_objects: 3,
    };
    ldm_data::scenes::prepare(&tmp.path().join("scenes"), &scenes, |_, _| {}).unwrap();
    let data = tmp.path().join("scenes/train");
    let ae = tmp.path().join("ae");
    autoencoder(&cfg, &data, &ae, ae_options(2), 2, false).unwrap();
    let cropped = |steps| DiffusionOptions {
        crop_from: Some(32),
        ..diffusion_options(steps)
    };
    let inputs = (data.as_path(), ae.as_path(), None);
    let straight = tmp.path().join("straight");
    let whole = diffusion(&cfg, inputs, &straight, cropped(4), 2, false).unwrap();
    assert!(logged(&straight, 1).iter().all(|v| v.is_finite()));
    // The cache holds the 32x32 scenes' latents (KL moments, f = 2) beside the 16x16 ones.
    let cache = Tensor::read_safetensors(straight.join("latents.safetensors")).unwrap();
    let large = &cache.iter().find(|(n, _)| n == "large").unwrap().1;
    assert_eq!(large.size()[1..], [6, 16, 16]);
    // The windows are drawn from each step's seed: a resumed run repeats them.
    let split = tmp.path().join("split");
    diffusion(&cfg, inputs, &split, cropped(2), 2, false).unwrap();
    let resumed = diffusion(&cfg, inputs, &split, cropped(4), 2, true).unwrap();
    assert_identical(
        &weights(&whole.checkpoint, "unet"),
        &weights(&resumed.checkpoint, "unet"),
    );
    // Refused: a side that is no multiple of f, images smaller than the side, and a model
    // whose captions name places.
    for (cfg, side, says) in [
        (&cfg, 33, "a multiple of f = 2"),
        (&cfg, 64, "crops need images at least 64 pixels"),
        (
            &config(TEXT),
            32,
            "only semantic-map, class and unconditional",
        ),
    ] {
        let options = DiffusionOptions {
            crop_from: Some(side),
            ..diffusion_options(1)
        };
        let out = tmp.path().join(format!("refused-{side}"));
        let err = diffusion(cfg, inputs, &out, options, 1, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{err}");
    }
}

const LAYOUT: &str = "[conditioning]\nkind = \"text\"\nvocab_size = 64\nmax_length = 20\nwidth = 12\ndepth = 1\nheads = 3\n\
     [conditioning.layout]\nclasses = [\"circle\", \"square\", \"triangle\", \"star\"]\n\
     colours = [\"red\", \"orange\", \"yellow\", \"green\", \"blue\", \"purple\", \"pink\"]\nbins = 8\nmax_objects = 3";

#[test]
fn a_layout_model_trains_on_the_scenes_boxes_and_refuses_rows_without_layouts() {
    let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(LAYOUT);
    let vocabulary = cfg.conditioning.layout().unwrap().clone();
    let (ldm, err) = train_on_scenes_then_on_shapes(tmp.path(), &cfg);
    // The run's tokenizer is the vocabulary's, one id a word.
    let saved = ldm_core::TextTokenizer::load(&ldm.join("tokenizer.json")).unwrap();
    let words = vocabulary.prompt("star red l0 t0 r4 b4").unwrap();
    assert_eq!(
        saved.encode(&words, 20).unwrap().ids[..8],
        [2, 7, 8, 15, 24, 37, 46, 3]
    );
    // Rows without layouts are refused by their line.
    assert!(
        err.contains("line 1: its layout") && err.contains("objects"),
        "{err}"
    );
    // It fine-tunes from its own run: the tokenizer is the vocabulary's again.
    let tuned = tmp.path().join("tuned");
    let options = DiffusionOptions {
        init_from: Some(ldm.clone()),
        ..diffusion_options(1)
    };
    let inputs = (tmp.path().join("scenes/train"), tmp.path().join("ae"));
    diffusion(
        &cfg,
        (&inputs.0, &inputs.1, None),
        &tuned,
        options,
        1,
        false,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(tuned.join("tokenizer.json")).unwrap(),
        std::fs::read(ldm.join("tokenizer.json")).unwrap()
    );
    // Not from a run of another vocabulary, whose ids mean other words.
    let other = config(&LAYOUT.replace("\"red\", \"orange\"", "\"orange\", \"red\""));
    let options = DiffusionOptions {
        init_from: Some(ldm.clone()),
        ..diffusion_options(1)
    };
    let err = diffusion(
        &other,
        (&inputs.0, &inputs.1, None),
        &tmp.path().join("other"),
        options,
        1,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("another layout vocabulary"), "{err}");
    // A vocabulary that does not fit the text sizes is refused when the config is read.
    let err = ModelConfig::parse(&config_text(
        &LAYOUT.replace("max_length = 20", "max_length = 16"),
    ))
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(err.contains("3 objects takes 20 tokens"), "{err}");
}

#[test]
fn a_layout_planner_learns_the_captions_layouts_and_ships_with_its_layout_model() {
    use ldm_train::planner::{train_planner, PlannerOptions};
    use ldm_train::run::Cadence;
    let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let layout = config(LAYOUT);
    let (ldm, _) = train_on_scenes_then_on_shapes(tmp.path(), &layout);
    let model_dir = tmp.path().join("layout-release");
    ldm_train::release::write_release(&ldm, None, &model_dir).unwrap();
    let planned = config(&format!(
        "{LAYOUT}\n[conditioning.planner]\nvocab_size = 128\nmax_length = 40\nwidth = 16\ndepth = 1\nheads = 2"
    ));
    let scenes = tmp.path().join("scenes");
    let cadence = Cadence {
        log_every: 10,
        validate_every: 40,
        checkpoint_every: 20,
        quiet: true,
        ..Cadence::default()
    };
    let options = |steps| PlannerOptions {
        steps,
        batch_size: 16,
        warmup: 10,
        learning_rate: 3e-3,
        ..PlannerOptions::new(model_dir.clone())
    };
    let run = tmp.path().join("planner");
    let train = |steps, resume| {
        train_planner(
            &planned,
            &scenes.join("train"),
            &scenes.join("validation"),
            &run,
            options(steps),
            cadence,
            tch::Device::Cpu,
            resume,
        )
    };
    train(40, false).unwrap();
    // Resumed, it goes on from its checkpoint; the loss falls as it learns the captions.
    let done = train(120, true).unwrap();
    assert_eq!(done.step, 120);
    let loss = logged(&run, 1);
    assert_eq!(loss.len(), 12);
    assert!(loss[11] < 0.75 * loss[0], "{loss:?}");
    // The release is the layout model with the planner and its caption tokenizer.
    let release = tmp.path().join("release");
    ldm_train::release::write_release(&run, None, &release).unwrap();
    let loaded = ldm_train::release::load_release(&release).unwrap();
    assert_eq!(loaded.config, planned);
    assert!(loaded.planner.is_some());
    assert!(release.join("planner_tokenizer.json").is_file());
    // Its release.json records the planner's training beside the layout model's.
    let record = loaded.info.planner.as_ref().expect("a planner record");
    assert_eq!(
        (record.steps, record.options.model.as_path()),
        (120, model_dir.as_path())
    );
    assert!(record.validation.is_some());
    // Sampled on tch, a caption is drawn as its planned layout; the layout model alone
    // refuses it.
    let sampling = ldm_train::trained::SampleOptions {
        sampler: "ddim".parse().unwrap(),
        steps: 2,
        guidance: 3.0,
        seed: 0,
    };
    let caption = ["a large red circle at the top left".to_string()];
    let mut model = ldm_train::trained::TrainedModel::load(&release, tch::Device::Cpu).unwrap();
    let images = model.generate(&caption, "a blue star", &sampling).unwrap();
    assert_eq!(images.size(), [1, 3, 16, 16]);
    let mut layout_only =
        ldm_train::trained::TrainedModel::load(&model_dir, tch::Device::Cpu).unwrap();
    let err = layout_only
        .generate(&caption, "", &sampling)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a layout"), "{err}");
    // A planner is trained by its own command, and for the layout model of its configuration.
    let err = diffusion(
        &planned,
        (&scenes.join("train"), &tmp.path().join("ae"), None),
        &tmp.path().join("refused"),
        diffusion_options(1),
        1,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("ldm train planner"), "{err}");
    let other = config(&format!(
        "{}\n[conditioning.planner]\nvocab_size = 128\nmax_length = 40\nwidth = 16\ndepth = 1\nheads = 2",
        LAYOUT.replace("bins = 8", "bins = 4")
    ));
    let err = train_planner(
        &other,
        &scenes.join("train"),
        &scenes.join("validation"),
        &tmp.path().join("other"),
        options(1),
        cadence,
        tch::Device::Cpu,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("another configuration"), "{err}");
}
