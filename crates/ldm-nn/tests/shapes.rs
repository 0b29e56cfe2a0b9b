//! Output shapes of every network, for every factor f and conditioning kind, walked with the
//! shape interpretation (no weights allocated); parameter names are snapshotted.

use ldm_nn::{autoencoder, conditioning, unet, ModelConfig, ShapeOps};

/// A tiny model with downsampling factor `f` and the given conditioning section.
pub fn tiny(f: usize, regularizer: &str, conditioning: &str) -> ModelConfig {
    let levels = f.trailing_zeros() as usize + 1;
    let mult: Vec<String> = (0..levels).map(|i| (1 + i % 2).to_string()).collect();
    let ae = if regularizer == "identity" {
        "regularizer = \"identity\"\nfactor = 1\nlatent_channels = 3".to_string()
    } else {
        let codebook = if regularizer == "vq" {
            "codebook_size = 7\n"
        } else {
            ""
        };
        format!(
            "regularizer = \"{regularizer}\"\nfactor = {f}\nlatent_channels = 3\n{codebook}channels = 4\nchannel_mult = [{}]\nres_blocks = 1\ngroups = 2",
            mult.join(", ")
        )
    };
    let toml = format!(
        "resolution = 64\n[autoencoder]\n{ae}\n[unet]\nmodel_channels = 4\nchannel_mult = [1, 2]\nres_blocks = 1\nattention_resolutions = [2]\nheads = 2\ngroups = 2\n{conditioning}"
    );
    ModelConfig::parse(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

const CONDITIONINGS: [&str; 4] = [
    "",
    "[conditioning]\nkind = \"text\"\nvocab_size = 11\nmax_length = 5\nwidth = 6\ndepth = 1\nheads = 2",
    "[conditioning]\nkind = \"class\"\nclasses = 9\nwidth = 6",
    "[conditioning]\nkind = \"concat\"\ntask = \"super_resolution\"",
];

#[test]
fn every_factor_maps_images_to_latents_and_back() {
    for f in [1usize, 2, 4, 8, 16, 32] {
        for regularizer in ["kl", "vq"] {
            let regularizer = if f == 1 { "identity" } else { regularizer };
            let cfg = tiny(f, regularizer, "");
            let ae = &cfg.autoencoder;
            let mut o = ShapeOps::default();
            // Non-square input, twice the training height: the networks are convolutional.
            let moments = autoencoder::encode(&mut o, ae, 64, &vec![2, 3, 128, 64]).unwrap();
            let c = if regularizer == "kl" { 6 } else { 3 };
            assert_eq!(moments, [2, c, 128 / f, 64 / f], "f={f} {regularizer}");
            let image = autoencoder::decode(&mut o, ae, 64, &vec![2, 3, 128 / f, 64 / f]).unwrap();
            assert_eq!(image, [2, 3, 128, 64], "f={f} {regularizer}");
        }
    }
}

#[test]
fn the_unet_predicts_noise_of_the_latent_shape_for_every_conditioning() {
    for conditioning in CONDITIONINGS {
        let cfg = tiny(4, "kl", conditioning);
        let io = cfg.unet_io();
        let mut o = ShapeOps::default();
        let context = match cfg.conditioning {
            ldm_nn::Conditioning::Text { .. } => {
                let shape = cfg.text_encoder_shape().unwrap();
                Some(conditioning::text_encoder(&mut o, &vec![2, 5], shape).unwrap())
            }
            ldm_nn::Conditioning::Class { classes, width } => {
                Some(conditioning::class_embedder(&mut o, &vec![2], classes, width).unwrap())
            }
            _ => None,
        };
        let x = vec![2, io.in_channels, 16, 12];
        let eps = unet::forward(&mut o, &cfg.unet, io, &x, &vec![2], context.as_ref()).unwrap();
        assert_eq!(eps, [2, 3, 16, 12], "{conditioning}");
    }
}

#[test]
fn a_context_model_without_context_is_an_error_not_a_panic() {
    let cfg = tiny(4, "kl", CONDITIONINGS[1]);
    let mut o = ShapeOps::default();
    let err = unet::forward(
        &mut o,
        &cfg.unet,
        cfg.unet_io(),
        &vec![1, 3, 16, 16],
        &vec![1],
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("needs a context"), "{err}");
    // A latent side that the UNet's levels cannot halve cleanly is refused by shape checks.
    let err = unet::forward(
        &mut o,
        &cfg.unet,
        cfg.unet_io(),
        &vec![1, 3, 15, 16],
        &vec![1],
        Some(&vec![1, 5, 6]),
    );
    assert!(err.is_err());
}

#[test]
fn parameter_names_are_stable() {
    let cfg = ModelConfig::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-text.toml"),
    )
    .unwrap();
    let r = cfg.latent_resolution();
    let mut listing = String::new();
    let mut record = |title: &str, o: ShapeOps| {
        listing.push_str(&format!("# {title}\n"));
        for (name, shape) in &o.params {
            listing.push_str(&format!("{name} {shape:?}\n"));
        }
    };
    let mut o = ShapeOps::default();
    autoencoder::encode(&mut o, &cfg.autoencoder, 16, &vec![1, 3, 16, 16]).unwrap();
    autoencoder::decode(&mut o, &cfg.autoencoder, 16, &vec![1, 3, r, r]).unwrap();
    record("autoencoder", o);
    let mut o = ShapeOps::default();
    let ctx = vec![1, 6, 12];
    unet::forward(
        &mut o,
        &cfg.unet,
        cfg.unet_io(),
        &vec![1, 3, r, r],
        &vec![1],
        Some(&ctx),
    )
    .unwrap();
    record("unet", o);
    let mut o = ShapeOps::default();
    conditioning::text_encoder(&mut o, &vec![1, 6], cfg.text_encoder_shape().unwrap()).unwrap();
    record("text encoder", o);
    insta::assert_snapshot!(listing);
}
