//! A release sampled on tch (`ldm train sample`) and its exported bundle sampled by the
//! runtime (`ldm generate`) draw the same image for the same request, with every sampler: both
//! drive the one guided-sampling loop of `ldm_core::guided` with the same noise streams and
//! conditioning rules, and the bundle's graphs compute what the tch networks compute.

use std::path::Path;

use ldm_core::SamplerKind;
use ldm_runtime::{Backend, Bundle, Generate, Pipeline};
use ldm_train::images::to_rgb_images;
use ldm_train::trained::{SampleOptions, TrainedModel};
use tch::Device;

#[test]
fn a_release_on_tch_and_its_bundle_on_tract_draw_the_same_images_with_every_sampler() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut model = TrainedModel::load(&root.join("models/emoji-text"), Device::Cpu).unwrap();
    let bundle = Bundle::load(&root.join("export/emoji-text")).unwrap();
    let mut pipeline = Pipeline::new(bundle, Backend::Tract, 1).unwrap();
    let prompts = vec![
        "red apple, twemoji style".to_string(),
        "red heart, noto style".into(),
    ];
    for (name, eta) in [
        ("ddim", 0.0),
        ("ddim", 1.0),
        ("ddpm", 0.0),
        ("plms", 0.0),
        ("dpm++2m", 0.0),
        ("euler", 0.0),
        ("euler-a", 0.0),
    ] {
        let sampler = name.parse::<SamplerKind>().unwrap().with_eta(eta);
        let options = SampleOptions {
            sampler,
            steps: 8,
            guidance: 3.0,
            seed: 11,
        };
        let tch = to_rgb_images(&model.generate(&prompts, "", &options).unwrap());
        let request = Generate::new(prompts.clone())
            .sampler(sampler)
            .eta(eta)
            .steps(options.steps)
            .guidance(options.guidance)
            .seed(options.seed);
        let runtime = pipeline.generate(&request, &mut |_| true).unwrap();
        for (i, (a, b)) in tch.iter().zip(&runtime).enumerate() {
            assert_eq!(
                (a.width() as usize, a.height() as usize),
                (b.width, b.height)
            );
            let worst = a
                .as_raw()
                .iter()
                .zip(&b.rgb)
                .map(|(x, y)| x.abs_diff(*y))
                .max()
                .unwrap();
            assert!(
                worst <= 2,
                "{name} (eta {eta}), image {i}: tch and tract differ by {worst} of 255"
            );
        }
    }
}
