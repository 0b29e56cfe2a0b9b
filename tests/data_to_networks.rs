//! A prepared data set feeds the networks: shapes scenes are tokenised with a tokenizer trained
//! on their captions, encoded by the tiny autoencoder and denoised by the tiny UNet on tch.

use std::path::Path;

use ldm_core::TextTokenizer;
use ldm_data::shapes::{self, ShapesConfig};
use ldm_data::{ImageFolder, Loader, LoaderConfig};
use ldm_nn::{autoencoder, conditioning, unet, ModelConfig};
use ldm_train::TchOps;
use tch::{Device, Kind, Tensor};

#[test]
fn a_shapes_batch_goes_through_tokenizer_autoencoder_and_unet() {
    let tmp = tempfile::tempdir().unwrap();
    let config =
        ModelConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-text.toml"))
            .unwrap();
    let size = config.resolution as u32;
    let (dir, _, _) = shapes::prepare(
        &tmp.path().join("shapes"),
        &ShapesConfig {
            count: 30,
            size,
            seed: 9,
        },
        |_, _| {},
    )
    .unwrap();
    let folder = ImageFolder::open(&dir.join("train"))
        .unwrap()
        .require_text()
        .unwrap();
    let text = config.text_encoder_shape().unwrap();
    let tokenizer = TextTokenizer::train(
        folder.records().filter_map(|r| r.text.clone()),
        text.vocab_size,
    )
    .unwrap();
    let loader = Loader::new(
        folder,
        LoaderConfig {
            size,
            batch_size: 4,
            flip: true,
            shuffle: true,
            seed: 1,
        },
    )
    .unwrap();
    let batch = loader.batch(0).unwrap();

    let mut ids = Vec::new();
    for caption in &batch.texts {
        ids.extend(tokenizer.encode(caption, text.max_length).unwrap().ids);
    }
    let shape: Vec<i64> = batch.shape.iter().map(|&d| d as i64).collect();
    let images = Tensor::from_slice(&batch.images).reshape(&shape);
    let ids = Tensor::from_slice(&ids).reshape([4, text.max_length as i64]);

    let mut o = TchOps::new(Device::Cpu);
    let moments =
        autoencoder::encode(&mut o, &config.autoencoder, config.resolution, &images).unwrap();
    let latent = ldm_train::gaussian::sample(&moments);
    let context = conditioning::text_encoder(&mut o, &ids, text).unwrap();
    let t = Tensor::from_slice(&[1.0f32, 10.0, 50.0, 99.0]);
    let eps = unet::forward(
        &mut o,
        &config.unet,
        config.unet_io(),
        &latent,
        &t,
        Some(&context),
    )
    .unwrap();
    assert_eq!(eps.size(), latent.size());
    assert_eq!(latent.size(), [4, 3, 8, 8]);
    assert!(bool::try_from(eps.isfinite().all()).unwrap());
    assert_eq!(eps.kind(), Kind::Float);
}
