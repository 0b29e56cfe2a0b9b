//! Both training stages end to end on a tiny model and procedural data: losses are finite and
//! fall, checkpoints are written, `--resume` reproduces an uninterrupted run bit for bit, and
//! bad input stops with a message that names it.

mod common;

use std::path::Path;

use common::*;
use ldm_core::SamplerKind;
use ldm_train::diffusion::DiffusionState;
use ldm_train::optim::LrDecay;
use ldm_train::release;
use ldm_train::trained::{SampleOptions, TrainedModel};

#[test]
fn autoencoder_then_diffusion_learn_checkpoint_and_resume_exactly() {
    let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let data = shapes_data(tmp.path());
    let cfg = config(TEXT);

    // First stage: 16 steps straight, the discriminator joining at step 6.
    let ae = tmp.path().join("ae");
    let summary = autoencoder(&cfg, &data, &ae, ae_options(16), 8, false).unwrap();
    assert_eq!(summary.step, 16);
    let rec = logged(&ae, 1);
    assert_eq!(rec.len(), 16);
    assert!(rec.iter().all(|v| v.is_finite()));
    assert!(
        mean(&rec[12..]) < mean(&rec[..4]),
        "reconstruction loss falls: {rec:?}"
    );
    let d_loss = logged(&ae, 4);
    assert!(
        d_loss[..6].iter().all(|&d| d == 0.0) && d_loss[6..].iter().all(|&d| d > 0.0),
        "{d_loss:?}"
    );
    let (psnr, ssim) = summary.validation.unwrap();
    assert!(psnr.is_finite() && (-1.0..=1.0).contains(&ssim));
    for file in [
        "loss.png",
        "reconstructions/step-00000016.png",
        "validation.csv",
        "config.toml",
    ] {
        assert!(ae.join(file).is_file(), "{file}");
    }

    // The same run in two parts: 8 steps, then --resume to 16.
    let split = tmp.path().join("ae-split");
    autoencoder(&cfg, &data, &split, ae_options(8), 8, false).unwrap();
    let err = autoencoder(&cfg, &data, &split, ae_options(16), 8, false).unwrap_err();
    assert!(
        err.to_string().contains("pass --resume to continue it"),
        "{err}"
    );
    let resumed = autoencoder(&cfg, &data, &split, ae_options(16), 8, true).unwrap();
    assert_eq!(resumed.step, 16);
    for file in ["autoencoder", "discriminator", "optimizer"] {
        assert_identical(
            &weights(&summary.checkpoint, file),
            &weights(&resumed.checkpoint, file),
        );
    }
    assert_eq!(
        logged(&split, 1),
        rec,
        "the resumed log continues the first one"
    );

    // Fine-tuning starts from the trained weights, not from a fresh initialisation.
    let tuned = tmp.path().join("ae-tuned");
    let from = |source: &Path| AutoencoderOptions {
        init_from: Some(source.to_path_buf()),
        learning_rate: 1e-4,
        seed: 1,
        ..ae_options(2)
    };
    let tuned = autoencoder(&cfg, &data, &tuned, from(&ae), 8, false).unwrap();
    assert_started_from(
        &weights(&tuned.checkpoint, "autoencoder"),
        &weights(&summary.checkpoint, "autoencoder"),
    );
    // A decoder-only fine-tune leaves the encoder (the latents) exactly as it was.
    let decoder_run = tmp.path().join("ae-decoder");
    let decoder_only = AutoencoderOptions {
        decoder_only: true,
        ..from(&ae)
    };
    let decoder = autoencoder(&cfg, &data, &decoder_run, decoder_only, 8, false).unwrap();
    let trained = weights(&summary.checkpoint, "autoencoder");
    for ((name, after), (_, before)) in weights(&decoder.checkpoint, "autoencoder")
        .iter()
        .zip(&trained)
    {
        assert_eq!(after.equal(before), !name.starts_with("decoder."), "{name}");
    }
    let nowhere = tmp.path().join("no-run");
    let err = autoencoder(&cfg, &data, &nowhere, from(&nowhere), 8, false).unwrap_err();
    assert!(err.to_string().contains("no checkpoint there"), "{err}");

    // Second stage on the trained first stage, text-conditioned, on a tokenizer trained
    // beforehand (`--tokenizer`).
    let tokenizer = tmp.path().join("tokenizer.json");
    let captions = ldm_data::ImageFolder::open(&data)
        .unwrap()
        .records()
        .filter_map(|r| r.text.clone())
        .collect::<Vec<_>>();
    ldm_core::TextTokenizer::train(captions.iter(), 256)
        .unwrap()
        .save(&tokenizer)
        .unwrap();
    let inputs = (data.as_path(), ae.as_path(), Some(tokenizer.as_path()));
    let ldm = tmp.path().join("ldm");
    let summary = diffusion(&cfg, inputs, &ldm, diffusion_options(30), 15, false).unwrap();
    let loss = logged(&ldm, 1);
    assert!(loss.iter().all(|v| v.is_finite()));
    assert!(
        mean(&loss[22..]) < mean(&loss[..8]),
        "denoising loss falls: {loss:?}"
    );
    assert!(summary.scale_factor.is_finite() && summary.scale_factor > 0.0);
    let state: DiffusionState = checkpoint::load_state(&summary.checkpoint).unwrap();
    assert_eq!(state.step, 30);
    assert_eq!(state.ema_updates, 30);
    for file in [
        "samples/step-00000030.png",
        "tokenizer.json",
        "latents.safetensors",
        "loss.png",
    ] {
        assert!(ldm.join(file).is_file(), "{file}");
    }

    // The release holds the EMA weights in f16 and samples like the run.
    let release = tmp.path().join("release");
    ldm_train::release::write_release(&ldm, None, &release).unwrap();
    let unet = checkpoint::load_weights(&release, "unet", None).unwrap();
    assert!(unet.iter().all(|(_, t)| t.kind() == tch::Kind::Half));
    let prompts = vec!["a large red star at the top left on a white background".to_string(); 2];
    let options = SampleOptions {
        sampler: SamplerKind::Ddim { eta: 0.0 },
        steps: 3,
        guidance: 2.0,
        seed: 7,
    };
    let from_run = TrainedModel::load(&ldm, Device::Cpu)
        .unwrap()
        .generate(&prompts, "", &options)
        .unwrap();
    let from_release = TrainedModel::load(&release, Device::Cpu)
        .unwrap()
        .generate(&prompts, "", &options)
        .unwrap();
    assert_eq!(from_run.size(), [2, 3, 16, 16]);
    let gap = (&from_run - &from_release).abs().max().double_value(&[]);
    assert!(gap < 0.05, "f16 storage moves samples by {gap}");
    let err = TrainedModel::load(&data, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("is neither a release"), "{err}");

    // A release may ship the decoder-only fine-tune's first stage, never one whose encoder
    // moved.
    let redecoded = tmp.path().join("release-new-decoder");
    release::write_release(&ldm, Some(&decoder_run), &redecoded).unwrap();
    let shipped_first_stage = weights(&redecoded, "autoencoder");
    let tuned_first_stage = weights(&decoder.checkpoint, "autoencoder");
    for ((name, shipped), (_, tuned)) in shipped_first_stage.iter().zip(&tuned_first_stage) {
        let gap = (shipped - tuned).abs().max().double_value(&[]);
        assert!(
            gap < 1e-2,
            "{name}: the release holds the new first stage (f16 gap {gap})"
        );
    }
    let err = release::write_release(&ldm, Some(&tmp.path().join("ae-tuned")), &redecoded)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is not the one the UNet was trained on"),
        "{err}"
    );
    // A release takes another decoder the same way: the bytes match the run's re-release.
    let again = tmp.path().join("release-again");
    release::write_release(&release, Some(&decoder_run), &again).unwrap();
    for file in ["unet", "autoencoder", "text_encoder"] {
        assert_identical(&weights(&again, file), &weights(&redecoded, file));
    }

    // A fine-tuned text model keeps its source's tokenizer and starts from its weights; its
    // cosine learning rate starts at the peak and is half of it at the second of two steps.
    let tuned_from = |source: &Path| DiffusionOptions {
        init_from: Some(source.to_path_buf()),
        learning_rate: 1e-4,
        lr_decay: LrDecay::Cosine,
        seed: 1,
        ..diffusion_options(2)
    };
    let tuned = tmp.path().join("ldm-tuned");
    let no_tokenizer = (data.as_path(), ae.as_path(), None);
    let tuned_summary = diffusion(&cfg, no_tokenizer, &tuned, tuned_from(&ldm), 15, false).unwrap();
    assert_text_model_tuned_from(&tuned, &tuned_summary.checkpoint, &ldm, &summary.checkpoint);
    assert_eq!(logged(&tuned, 3), [1e-4, 5e-5]);

    // What is shipped can be fine-tuned without its run folders: a release serves as the
    // first stage and as the starting point (its EMA weights, f16), and an autoencoder
    // fine-tuned from it starts with a fresh discriminator.
    let shipped = tmp.path().join("release");
    release::write_release(&ldm, None, &shipped).unwrap();
    let from_release = tmp.path().join("ldm-from-release");
    let on_release = (data.as_path(), shipped.as_path(), None);
    let summary_r = diffusion(
        &cfg,
        on_release,
        &from_release,
        tuned_from(&shipped),
        15,
        false,
    )
    .unwrap();
    assert_text_model_tuned_from(&from_release, &summary_r.checkpoint, &shipped, &shipped);
    let state: DiffusionState = checkpoint::load_state(&summary_r.checkpoint).unwrap();
    assert_eq!(
        state.autoencoder_checkpoint,
        Some(std::fs::canonicalize(&shipped).unwrap())
    );
    // Position features added in a fine-tune start at zero (the source has none), and the
    // source's other weights carry over.
    let placed_cfg =
        ModelConfig::parse(&config_text(&format!("position_frequencies = 2\n{TEXT}"))).unwrap();
    let placed = tmp.path().join("ldm-placed");
    let placed_summary = diffusion(
        &placed_cfg,
        on_release,
        &placed,
        tuned_from(&shipped),
        15,
        false,
    )
    .unwrap();
    let (new, carried): (Vec<_>, Vec<_>) = weights(&placed_summary.checkpoint, "unet")
        .into_iter()
        .partition(|(name, _)| ldm_nn::unet::is_position_param(name));
    assert!(!new.is_empty());
    assert_started_from(&carried, &weights(&shipped, "unet"));
    for (name, t) in &new {
        let largest = t.abs().max().double_value(&[]);
        assert!(largest < 0.01, "{name} began at zero, now {largest}");
    }
    // A transplant starts a model of another conditioning (inpainting: the masked image's
    // latent and the mask concatenated to the latent) from the text model's layers that fit:
    // the input convolution keeps the source's channels, the new ones start at zero; the
    // attention blocks, which the text model's spatial transformers are not, start fresh.
    let inpainting = config("[conditioning]\nkind = \"concat\"\ntask = \"inpainting\"");
    let options = DiffusionOptions {
        transplant: true,
        learning_rate: 1e-9,
        ..tuned_from(&shipped)
    };
    let grafted = tmp.path().join("ldm-transplant");
    let grafted = diffusion(&inpainting, on_release, &grafted, options, 15, false).unwrap();
    let source = weights(&shipped, "unet");
    let grafted = weights(&grafted.checkpoint, "unet");
    let find = |set: &[(String, Tensor)], name: &str| {
        set.iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
    };
    let gap = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    let input = find(&grafted, "input_blocks.0.0.weight").unwrap();
    let theirs = find(&source, "input_blocks.0.0.weight").unwrap();
    assert_eq!((input.size()[1], theirs.size()[1]), (7, 3));
    assert!(gap(&input.narrow(1, 0, 3), &theirs) < 1e-6);
    assert!(input.narrow(1, 3, 4).abs().max().double_value(&[]) < 1e-6);
    for name in ["time_embed.0.weight", "out.2.weight"] {
        let moved = gap(
            &find(&grafted, name).unwrap(),
            &find(&source, name).unwrap(),
        );
        assert!(moved < 1e-6, "{name} moved {moved}");
    }
    let fresh: Vec<&String> = grafted
        .iter()
        .map(|(n, _)| n)
        .filter(|n| find(&source, n).is_none())
        .collect();
    assert!(
        !fresh.is_empty() && fresh.iter().all(|n| n.contains(".1.")),
        "{fresh:?}"
    );
    let rereleased = tmp.path().join("release-2");
    release::write_release(&from_release, None, &rereleased).unwrap();
    let (before, after) = (
        release::load_release(&shipped).unwrap().info,
        release::load_release(&rereleased).unwrap().info,
    );
    assert_eq!(after.autoencoder_steps, before.autoencoder_steps);
    assert_eq!(after.autoencoder_validation, before.autoencoder_validation);
    let ae_from_release = tmp.path().join("ae-from-release");
    let tuned = autoencoder(&cfg, &data, &ae_from_release, from(&shipped), 8, false).unwrap();
    assert_started_from(
        &weights(&tuned.checkpoint, "autoencoder"),
        &weights(&shipped, "autoencoder"),
    );

    let split = tmp.path().join("ldm-split");
    diffusion(&cfg, inputs, &split, diffusion_options(15), 15, false).unwrap();
    let resumed = diffusion(&cfg, inputs, &split, diffusion_options(30), 15, true).unwrap();
    for file in ["unet", "text_encoder", "ema", "optimizer"] {
        assert_identical(
            &weights(&summary.checkpoint, file),
            &weights(&resumed.checkpoint, file),
        );
    }
}

#[test]
fn bad_input_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint() {
    let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let data = shapes_data(tmp.path());
    let cfg = config(TEXT);

    // A diffusion run needs a trained first stage.
    let missing = tmp.path().join("no-such-run");
    let inputs = (data.as_path(), missing.as_path(), None);
    let err = diffusion(
        &cfg,
        inputs,
        &tmp.path().join("ldm"),
        diffusion_options(2),
        1,
        false,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("holds no autoencoder checkpoint; train one first"),
        "{err}"
    );

    // A learning rate that blows the weights up: the NaN is caught, named, and the last
    // checkpoint written before it stays the latest.
    let ae = tmp.path().join("ae");
    autoencoder(&cfg, &data, &ae, ae_options(2), 2, false).unwrap();
    let wild = AutoencoderOptions {
        steps: 6,
        learning_rate: 1e30,
        ..ae_options(6)
    };
    let err = autoencoder(&cfg, &data, &ae, wild.clone(), 1, true).unwrap_err();
    assert!(
        matches!(err, TrainError::NotResumable { .. }),
        "options differ from the run's: {err}"
    );
    let fresh = tmp.path().join("ae-wild");
    let err = autoencoder(&cfg, &data, &fresh, wild, 1, false).unwrap_err();
    assert!(
        matches!(err, TrainError::NonFinite { step: 1, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("step-00000001); lower --lr"),
        "{err}"
    );
    assert!(checkpoint::latest(&fresh)
        .unwrap()
        .unwrap()
        .ends_with("step-00000001"));

    // Another configuration or other data cannot resume the run.
    let other = config(TEXT).autoencoder.clone();
    let mut wider = cfg.clone();
    wider.autoencoder = ldm_nn::AutoencoderConfig {
        channels: 16,
        ..other
    };
    let err = autoencoder(&wider, &data, &ae, ae_options(4), 1, true).unwrap_err();
    assert!(
        err.to_string().contains("another model configuration"),
        "{err}"
    );
    let validation = tmp.path().join("shapes/validation");
    let err = autoencoder(&cfg, &validation, &ae, ae_options(4), 1, true).unwrap_err();
    assert!(
        err.to_string().contains("was trained on other data"),
        "{err}"
    );

    // Data that does not fit the configuration: images smaller than its resolution.
    let mut larger = cfg.clone();
    larger.resolution = 32;
    let err = autoencoder(
        &larger,
        &data,
        &tmp.path().join("big"),
        ae_options(2),
        1,
        false,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("holds 16x16 images but the configuration trains at resolution = 32"),
        "{err}"
    );

    // A corrupt latest checkpoint is named.
    let latest = checkpoint::latest(&ae).unwrap().unwrap();
    std::fs::write(
        latest.join("autoencoder.safetensors"),
        b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}",
    )
    .unwrap();
    let err = autoencoder(&cfg, &data, &ae, ae_options(4), 1, true).unwrap_err();
    assert!(
        err.to_string()
            .contains("autoencoder.safetensors: not a readable checkpoint"),
        "{err}"
    );
}

#[test]
fn every_first_stage_and_conditioning_trains_and_samples() {
    let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let data = shapes_data(tmp.path());
    let kinds = [
        (
            "vq",
            "[conditioning]\nkind = \"class\"\nclasses = 40\nwidth = 8",
        ),
        ("kl", ""),
        (
            "kl",
            "[conditioning]\nkind = \"concat\"\ntask = \"super_resolution\"",
        ),
        (
            "vq",
            "[conditioning]\nkind = \"concat\"\ntask = \"inpainting\"",
        ),
    ];
    for (i, (regularizer, conditioning)) in kinds.into_iter().enumerate() {
        let mut cfg = config(conditioning);
        if regularizer == "vq" {
            cfg.autoencoder.regularizer = ldm_nn::FirstStage::Vq;
            cfg.autoencoder.codebook_size = Some(16);
        }
        let ae = tmp.path().join(format!("ae-{i}"));
        let ldm = tmp.path().join(format!("ldm-{i}"));
        autoencoder(&cfg, &data, &ae, ae_options(3), 3, false).unwrap();
        assert!(
            logged(&ae, 2).iter().all(|v| v.is_finite() && *v > 0.0),
            "{regularizer} term"
        );
        // The sample grids take any sampler.
        let samplers = ["dpm++2m", "ddim", "euler-a", "plms"];
        let options = DiffusionOptions {
            sample_sampler: samplers[i].into(),
            ..diffusion_options(3)
        };
        let summary = diffusion(&cfg, (&data, &ae, None), &ldm, options, 3, false)
            .unwrap_or_else(|e| panic!("{conditioning}: {e}"));
        assert!(
            logged(&ldm, 1).iter().all(|v| v.is_finite()),
            "{conditioning}"
        );
        assert!(summary.scale_factor > 0.0);
        assert!(
            ldm.join("samples/step-00000003.png").is_file(),
            "{conditioning}"
        );
    }
    // A class model samples by class name or id, with every sampler, and names an unknown
    // class.
    let mut model = TrainedModel::load(&tmp.path().join("ldm-0"), Device::Cpu).unwrap();
    for sampler in ["ddim", "ddpm", "plms", "dpm++2m", "euler", "euler-a"] {
        let options = SampleOptions {
            sampler: sampler.parse().unwrap(),
            steps: 2,
            guidance: 3.0,
            seed: 0,
        };
        let images = model
            .generate(&["red circle".into(), "0".into()], "", &options)
            .unwrap();
        assert_eq!(images.size(), [2, 3, 16, 16], "{sampler}");
    }
    let options = SampleOptions {
        sampler: SamplerKind::Ddim { eta: 1.0 },
        steps: 2,
        guidance: 3.0,
        seed: 0,
    };
    let err = model
        .generate(&["plaid hexagon".into()], "", &options)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("'plaid hexagon' is neither a class name"),
        "{err}"
    );
}
