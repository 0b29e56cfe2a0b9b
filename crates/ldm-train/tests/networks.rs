//! The networks on tch: shapes agree with the shape interpretation, the VQ straight-through
//! estimator and the KL term behave, attention uses its context, and training steps learn.

use ldm_nn::{autoencoder, conditioning, unet, Conditioning, ModelConfig, Ops, ShapeOps};
use ldm_train::losses::{kl_divergence, perplexity, vq_losses};
use ldm_train::TchOps;
use tch::{nn::OptimizerConfig, Device, Kind, Tensor};

fn tiny(regularizer: &str, conditioning: &str) -> ModelConfig {
    let codebook = if regularizer == "vq" {
        "codebook_size = 7\n"
    } else {
        ""
    };
    ModelConfig::parse(&format!(
        "resolution = 16\n[autoencoder]\nregularizer = \"{regularizer}\"\nfactor = 2\nlatent_channels = 3\n{codebook}\
         channels = 4\nchannel_mult = [1, 2]\nres_blocks = 1\nattn_resolutions = [8]\ngroups = 2\n\
         [unet]\nmodel_channels = 4\nchannel_mult = [1, 2]\nres_blocks = 1\nattention_resolutions = [1, 2]\nheads = 2\ngroups = 2\n{conditioning}"
    ))
    .unwrap()
}

const TEXT: &str = "[conditioning]\nkind = \"text\"\nvocab_size = 11\nmax_length = 5\nwidth = 6\ndepth = 1\nheads = 2";
const CLASS: &str = "[conditioning]\nkind = \"class\"\nclasses = 9\nwidth = 6";
const CONCAT: &str = "[conditioning]\nkind = \"concat\"\ntask = \"super_resolution\"";

fn dims(t: &Tensor) -> Vec<usize> {
    t.size().iter().map(|&d| d as usize).collect()
}

/// Context of the model's conditioning for a batch of 2 (None without one).
fn context<O: Ops>(
    o: &mut O,
    cfg: &ModelConfig,
    ids: impl Fn(&[usize], bool) -> O::T,
) -> Option<O::T> {
    match cfg.conditioning {
        Conditioning::Text { .. } => Some(
            conditioning::text_encoder(o, &ids(&[2, 5], true), cfg.text_encoder_shape().unwrap())
                .unwrap(),
        ),
        Conditioning::Class { classes, width } => {
            Some(conditioning::class_embedder(o, &ids(&[2], true), classes, width).unwrap())
        }
        _ => None,
    }
}

#[test]
fn tch_shapes_agree_with_the_shape_interpretation() {
    tch::manual_seed(0);
    for (regularizer, cond) in [("kl", TEXT), ("vq", CLASS), ("kl", CONCAT), ("vq", "")] {
        let cfg = tiny(regularizer, cond);
        let (mut t, mut s) = (TchOps::new(Device::Cpu), ShapeOps::default());
        // Non-square and larger than the training size.
        let image = Tensor::randn([2, 3, 24, 16], (Kind::Float, Device::Cpu));
        let moments = autoencoder::encode(&mut t, &cfg.autoencoder, 16, &image).unwrap();
        assert_eq!(
            dims(&moments),
            autoencoder::encode(&mut s, &cfg.autoencoder, 16, &dims(&image)).unwrap()
        );
        let latent = moments.narrow(1, 0, 3);
        let decoded = autoencoder::decode(&mut t, &cfg.autoencoder, 16, &latent).unwrap();
        assert_eq!(dims(&decoded), [2, 3, 24, 16]);
        autoencoder::decode(&mut s, &cfg.autoencoder, 16, &dims(&latent)).unwrap();

        let io = cfg.unet_io();
        let x = Tensor::randn(
            [2, io.in_channels as i64, 12, 8],
            (Kind::Float, Device::Cpu),
        );
        let steps = Tensor::from_slice(&[3i64, 70]).to_kind(Kind::Float);
        let ctx = context(&mut t, &cfg, |shape, _| {
            Tensor::zeros(
                shape.iter().map(|&d| d as i64).collect::<Vec<_>>(),
                (Kind::Int64, Device::Cpu),
            )
        });
        let eps = unet::forward(&mut t, &cfg.unet, io, &x, &steps, ctx.as_ref()).unwrap();
        let sctx = context(&mut s, &cfg, |shape, _| shape.to_vec());
        let expected =
            unet::forward(&mut s, &cfg.unet, io, &dims(&x), &vec![2], sctx.as_ref()).unwrap();
        assert_eq!(dims(&eps), expected, "{regularizer} {cond}");
        // Same parameters in both interpretations, same names and sizes.
        let mut names: Vec<_> = t
            .params()
            .iter()
            .map(|(n, p)| (n.clone(), dims(p)))
            .collect();
        names.sort();
        let expected: Vec<_> = s.params.into_iter().collect();
        let differing: Vec<_> = names
            .iter()
            .filter(|n| !expected.contains(n))
            .chain(expected.iter().filter(|n| !names.contains(n)))
            .collect();
        assert!(differing.is_empty(), "{regularizer} {cond}: {differing:?}");
    }
}

#[test]
fn vq_straight_through_gradients_reach_the_encoder_and_the_codebook_learns() {
    tch::manual_seed(1);
    let cfg = tiny("vq", "");
    let mut o = TchOps::new(Device::Cpu);
    let image = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
    let z = autoencoder::encode(&mut o, &cfg.autoencoder, 16, &image).unwrap();
    let q = autoencoder::quantize(&mut o, &cfg.autoencoder, &z).unwrap();
    // Forward values are the codebook vectors.
    assert!(q.latent.allclose(&q.codes, 1e-6, 1e-6, false));
    let recon = autoencoder::decode_quantized(&mut o, &cfg.autoencoder, 16, &q.latent).unwrap();
    let (codebook, commitment) = vq_losses(&z, &q.codes, 0.25);
    let loss = recon.mse_loss(&image, tch::Reduction::Mean) + codebook + commitment;
    loss.backward();
    let grad_norm = |name: &str| {
        o.params()[name]
            .grad()
            .abs()
            .sum(Kind::Float)
            .double_value(&[])
    };
    assert!(
        grad_norm("encoder.conv_in.weight") > 0.0,
        "the reconstruction loss reaches the encoder through the quantiser"
    );
    assert!(
        grad_norm("quantize.embedding.weight") > 0.0,
        "the codebook loss reaches the codebook"
    );
    let p = perplexity(&q.indices, 7);
    assert!((1.0..=7.0 + 1e-6).contains(&p), "{p}");
}

#[test]
fn kl_term_is_zero_at_the_prior_and_positive_away_from_it() {
    let prior = Tensor::zeros([2, 6, 4, 4], (Kind::Float, Device::Cpu));
    assert!(kl_divergence(&prior).double_value(&[]).abs() < 1e-6);
    let shifted = Tensor::cat(
        &[
            Tensor::ones([2, 3, 4, 4], (Kind::Float, Device::Cpu)),
            Tensor::zeros([2, 3, 4, 4], (Kind::Float, Device::Cpu)),
        ],
        1,
    );
    // 0.5 · mean² summed over 3·4·4 elements.
    assert!((kl_divergence(&shifted).double_value(&[]) - 24.0).abs() < 1e-4);
    let perplexity_one = perplexity(&Tensor::zeros([10], (Kind::Int64, Device::Cpu)), 4);
    assert!((perplexity_one - 1.0).abs() < 1e-6);
}

#[test]
fn kl_samples_spread_around_the_mode_and_checkpoint_keys_are_parameter_names() {
    tch::manual_seed(4);
    let cfg = tiny("kl", "");
    let mut o = TchOps::new(Device::Cpu);
    let image = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
    let moments = autoencoder::encode(&mut o, &cfg.autoencoder, 16, &image).unwrap();
    let mode = ldm_train::gaussian::mode(&moments);
    let sample = ldm_train::gaussian::sample(&moments);
    assert_eq!(mode.size(), [2, 3, 8, 8]);
    assert!(!sample.allclose(&mode, 1e-4, 1e-4, false));
    // The checkpoint (safetensors) holds exactly the parameters, under their names.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ae.safetensors");
    o.var_store().save(&path).unwrap();
    let mut saved: Vec<String> = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    saved.sort();
    let mut names: Vec<String> = o.params().keys().cloned().collect();
    names.sort();
    assert_eq!(saved, names);
    assert!(names.contains(&"encoder.down.0.block.0.conv1.weight".to_string()));
}

#[test]
fn cross_attention_reads_the_context() {
    tch::manual_seed(2);
    let cfg = tiny("kl", TEXT);
    let mut o = TchOps::new(Device::Cpu);
    let x = Tensor::randn([1, 3, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[10.0f32]);
    let run = |o: &mut TchOps, ids: &[i64]| {
        let ctx = conditioning::text_encoder(
            o,
            &Tensor::from_slice(ids).reshape([1, 5]),
            cfg.text_encoder_shape().unwrap(),
        )
        .unwrap();
        unet::forward(o, &cfg.unet, cfg.unet_io(), &x, &t, Some(&ctx)).unwrap()
    };
    // Residual branches and the output start at zero (the reference's zero_module): give them
    // weights so the attention's effect reaches the output.
    let _ = run(&mut o, &[0, 0, 0, 0, 0]);
    tch::no_grad(|| {
        for p in o.params().values() {
            if p.abs().sum(Kind::Float).double_value(&[]) == 0.0 {
                let _ = p.shallow_clone().uniform_(-0.5, 0.5);
            }
        }
    });
    let a = run(&mut o, &[1, 2, 3, 0, 0]);
    let b = run(&mut o, &[4, 5, 6, 0, 0]);
    assert!(
        !a.allclose(&b, 1e-5, 1e-5, false),
        "another prompt changes the prediction"
    );
    let again = run(&mut o, &[1, 2, 3, 0, 0]);
    assert!(a.allclose(&again, 1e-6, 1e-6, false));
}

/// Two classes, two colours, edges on a 4-step grid, up to two objects, read through box
/// attention.
const BOX_LAYOUT: &str = "[conditioning]\nkind = \"text\"\nvocab_size = 28\nmax_length = 14\nwidth = 6\ndepth = 1\nheads = 2\n\
     [conditioning.layout]\nclasses = [\"circle\", \"star\"]\ncolours = [\"red\", \"blue\"]\nbins = 4\nmax_objects = 2\nbox_attention = true";

#[test]
fn box_attention_reads_each_object_near_its_box_and_every_other_token_everywhere() {
    tch::manual_seed(4);
    let cfg = tiny("kl", BOX_LAYOUT);
    assert_eq!(cfg.context_dim(), Some(6 + unet::BOX_CHANNELS));
    let layout = cfg.conditioning.layout().unwrap();
    let tokenizer = ldm_core::TextTokenizer::from_words(&layout.words()).unwrap();
    let ids = tokenizer.encode("star blue l0 t0 r2 b4", 14).unwrap().ids;
    let mut o = TchOps::new(Device::Cpu);
    let ids = Tensor::from_slice(&ids).reshape([1, 14]);
    let ctx = conditioning::text_encoder(&mut o, &ids, cfg.text_encoder_shape().unwrap()).unwrap();
    assert_eq!(ctx.size(), [1, 14, 10]);
    let boxes = ctx.narrow(2, 6, 4);
    let box_of = |token: i64| Vec::<f32>::try_from(boxes.get(0).get(token)).unwrap();
    for token in 1..=6 {
        assert_eq!(
            box_of(token),
            [0.0, 0.0, 0.5, 1.0],
            "the object's token {token}"
        );
    }
    for token in [0, 7, 8, 13] {
        assert_eq!(
            box_of(token),
            [0.0, 0.0, 1.0, 1.0],
            "token {token} is no object's"
        );
    }
    // On a 4x4 map the centres lie at 1/8, 3/8, 5/8, 7/8: the object's left half holds the
    // first two columns; the third is 1/8 beyond its right edge, the fourth 3/8.
    let x = Tensor::zeros([1, 3, 4, 4], (Kind::Float, Device::Cpu));
    let bias = unet::box_bias(&mut o, &x, &boxes).unwrap();
    assert_eq!(bias.size(), [1, 1, 16, 14]);
    let row = |token: i64| {
        Vec::<f32>::try_from(bias.get(0).get(0).narrow(0, 4, 4).select(1, token)).unwrap()
    };
    let expected = [0.0, 0.0, -6.0, -18.0];
    assert!(
        row(1)
            .iter()
            .zip(expected)
            .all(|(a, b)| (a - b).abs() < 1e-4),
        "{:?}",
        row(1)
    );
    assert_eq!(row(0), [0.0; 4]);
}

#[test]
fn a_few_adam_steps_lower_the_denoising_loss_of_unet_and_text_encoder_together() {
    tch::manual_seed(3);
    let cfg = tiny("kl", TEXT);
    let mut o = TchOps::new(Device::Cpu);
    let x = Tensor::randn([4, 3, 8, 8], (Kind::Float, Device::Cpu));
    let noise = Tensor::randn([4, 3, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[5.0f32, 20.0, 50.0, 90.0]);
    let ids = Tensor::from_slice(&[
        1i64, 2, 3, 4, 0, 5, 6, 7, 0, 0, 8, 9, 0, 0, 0, 10, 1, 2, 3, 0,
    ])
    .reshape([4, 5]);
    let loss_at = |o: &mut TchOps| {
        let ctx = conditioning::text_encoder(o, &ids, cfg.text_encoder_shape().unwrap()).unwrap();
        let eps =
            unet::forward(o, &cfg.unet, cfg.unet_io(), &(&x + &noise), &t, Some(&ctx)).unwrap();
        eps.mse_loss(&noise, tch::Reduction::Mean)
    };
    let first = loss_at(&mut o);
    let mut opt = tch::nn::Adam::default().build(o.var_store(), 1e-2).unwrap();
    let mut last = first.double_value(&[]);
    opt.backward_step(&first);
    for _ in 0..15 {
        let loss = loss_at(&mut o);
        last = loss.double_value(&[]);
        opt.backward_step(&loss);
    }
    let start = first.double_value(&[]);
    assert!(last.is_finite() && last < 0.8 * start, "{start} -> {last}");
    // The text encoder trained too.
    assert!(
        o.params()["token_emb.weight"]
            .grad()
            .abs()
            .sum(Kind::Float)
            .double_value(&[])
            > 0.0
    );
}
