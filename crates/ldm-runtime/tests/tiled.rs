//! Tiled decoding against a whole decode with the shipped decoder, on latents sampled at
//! 128x128 (twice the training resolution): tiles of the training resolution's latent
//! (16x16), overlapping by 4.

mod common;

use common::{mean_abs_difference, shipped_bundle};
use ldm_runtime::{Backend, Bundle, Decode, Generate, Pipeline, Tiling};

#[test]
fn tiles_blend_into_the_whole_decode() {
    let mut pipeline =
        Pipeline::new(Bundle::load(&shipped_bundle()).unwrap(), Backend::Tract, 2).unwrap();
    let request = Generate::new(vec!["a red apple, twemoji style".into()])
        .size(128)
        .steps(10)
        .seed(4);
    let mut generation = pipeline.start(&request).unwrap();
    while !generation.is_done() {
        pipeline.step(&mut [&mut generation]).unwrap();
    }
    let latents = generation.progress().latents.to_vec();
    let mut decoded = |decode| {
        pipeline
            .decode(latents.clone(), 1, 32, 32, decode)
            .unwrap()
            .remove(0)
    };
    let whole = decoded(Decode::Whole);
    let tiled = decoded(Decode::Tiled(Tiling::new(16)));
    assert_eq!((tiled.width, tiled.height), (128, 128));
    let difference = mean_abs_difference(&whole, &tiled);
    eprintln!("tiled against whole: mean |difference| {difference:.2} of 255");
    assert!(difference < 3.0, "{difference}");
    // One tile covering the latent is the whole decode.
    let one = decoded(Decode::Tiled(Tiling::new(32)));
    assert_eq!(mean_abs_difference(&whole, &one), 0.0);
}
