//! The evaluation network's export: the evaluator folder loads in `ldm_eval::Evaluator`, whose
//! tract features and predictions are tch's; a damaged folder is refused by name.

use image::RgbImage;
use ldm_eval::evaluator::{Evaluator, EVALUATOR_FILE};
use ldm_export::evaluator::export_evaluator;
use ldm_nn::classifier::{self, ClassifierConfig, Head};
use ldm_train::tensors::sorted_params;
use ldm_train::TchOps;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

fn tiny_config() -> ClassifierConfig {
    let classes = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
    ClassifierConfig {
        resolution: 16,
        channels: vec![8, 16],
        feature_dim: 12,
        heads: vec![
            Head {
                column: "label".into(),
                classes: classes(&["a", "b", "c"]),
            },
            Head {
                column: "style".into(),
                classes: classes(&["noto", "twemoji"]),
            },
        ],
    }
}

fn random_images(n: usize, side: u32, seed: u64) -> Vec<RgbImage> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| RgbImage::from_fn(side, side, |_, _| image::Rgb(rng.random())))
        .collect()
}

/// Planar [-1, 1] pixels of `images`, as the evaluator feeds its graph.
fn tensor(images: &[RgbImage]) -> Tensor {
    let side = images[0].width() as i64;
    let mut pixels = Vec::new();
    for image in images {
        ldm_data::push_chw(&mut pixels, image, false);
    }
    Tensor::from_slice(&pixels).reshape([images.len() as i64, 3, side, side])
}

/// A freshly initialised network (seed 0) and its weights rounded to f16, as exports store
/// them.
fn fresh_network(config: &ClassifierConfig) -> (TchOps, Vec<(String, Tensor)>) {
    tch::manual_seed(0);
    let mut ops = TchOps::new(Device::Cpu);
    let probe = Tensor::zeros([1, 3, 16, 16], (Kind::Float, Device::Cpu));
    let _ = classifier::forward(&mut ops, config, &probe).unwrap();
    let weights = sorted_params(&ops)
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_kind(Kind::Half).to_kind(Kind::Float)))
        .collect();
    (ops, weights)
}

#[test]
fn the_exported_evaluator_computes_what_tch_computes() {
    let config = tiny_config();
    let (mut ops, weights) = fresh_network(&config);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("evaluator");
    let exported = export_evaluator(&config, &weights, "crc32:0", 7, &[0.5, 0.9], &out).unwrap();
    assert!(exported.max_rel < 1e-3, "{}", exported.max_rel);

    let mut evaluator = Evaluator::load(&out, 1).unwrap();
    assert_eq!(evaluator.manifest.config, config);
    assert_eq!(evaluator.manifest.training_steps, 7);
    let images = random_images(40, 16, 1);
    let judged = evaluator.judge(&images).unwrap();
    assert_eq!(judged.features.len(), 40);
    assert_eq!(judged.predictions.len(), 2);

    let reference = {
        let _guard = tch::no_grad_guard();
        classifier::forward(&mut ops, &config, &tensor(&images)).unwrap()
    };
    let features: Vec<f32> = Vec::try_from(reference.features.flatten(0, -1)).unwrap();
    let got: Vec<f32> = judged.features.concat();
    let worst = features
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "features differ by {worst}");
    let predicted: Vec<i64> = Vec::try_from(reference.logits[0].argmax(-1, false)).unwrap();
    let agree = predicted
        .iter()
        .zip(&judged.predictions[0])
        .filter(|(a, b)| **a as usize == **b)
        .count();
    assert!(agree >= 38, "{agree}/40 predictions agree");

    // Images of another size are resized to the evaluator's resolution.
    assert_eq!(
        evaluator
            .judge(&random_images(2, 32, 2))
            .unwrap()
            .features
            .len(),
        2
    );
}

#[test]
fn a_damaged_evaluator_folder_is_refused_by_name() {
    let config = tiny_config();
    let (_, weights) = fresh_network(&config);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("evaluator");
    export_evaluator(&config, &weights, "crc32:0", 1, &[0.5, 0.5], &out).unwrap();

    let manifest = out.join(EVALUATOR_FILE);
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"style\"", "\"colour\"")).unwrap();
    let err = Evaluator::load(&out, 1).err().unwrap().to_string();
    assert!(
        err.contains("logits_colour") && err.contains("logits_style"),
        "{err}"
    );

    std::fs::write(&manifest, "{ not json").unwrap();
    let err = Evaluator::load(&out, 1).err().unwrap().to_string();
    assert!(err.contains(EVALUATOR_FILE), "{err}");

    let err = Evaluator::load(&dir.path().join("missing"), 1)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("an evaluator folder holds"), "{err}");
}
