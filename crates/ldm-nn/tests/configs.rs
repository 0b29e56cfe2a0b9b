//! Configurations: the shipped files load, the paper presets match the paper's sizes, and
//! wrong configurations are refused with messages that name the field.

use std::path::PathBuf;

use ldm_nn::ModelConfig;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

fn load(name: &str) -> ModelConfig {
    ModelConfig::load(&models_dir().join(name)).unwrap()
}

fn total(config: &ModelConfig, network: &str) -> u64 {
    config
        .costs()
        .unwrap()
        .iter()
        .filter(|c| c.network == network)
        .map(|c| c.parameters)
        .sum()
}

#[test]
fn every_shipped_configuration_loads_and_counts() {
    for entry in std::fs::read_dir(models_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config =
                ModelConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let identity = config.autoencoder.regularizer == ldm_nn::FirstStage::Identity;
            for cost in config.costs().unwrap() {
                let first_stage = cost.network == "encoder" || cost.network == "decoder";
                assert!(
                    cost.parameters > 0 || identity && first_stage,
                    "{}: {cost:?}",
                    path.display()
                );
            }
        }
    }
}

/// The compression trade-off presets (LDM-1 to LDM-16 on 64x64 emoji) compare like with like:
/// UNets within 15 % of each other in size, each f doing less work per step than the last.
#[test]
fn tradeoff_presets_have_comparable_unets_and_falling_cost() {
    let mut previous_macs = u64::MAX;
    let mut sizes = Vec::new();
    for f in [1, 2, 4, 8, 16] {
        let config = load(&format!("tradeoff-f{f}.toml"));
        assert_eq!(config.autoencoder.factor, f);
        assert_eq!(config.latent_resolution(), 64 / f);
        let unet = config
            .costs()
            .unwrap()
            .into_iter()
            .find(|c| c.network == "unet")
            .unwrap();
        assert!(
            unet.macs < previous_macs,
            "LDM-{f} costs {} MACs",
            unet.macs
        );
        previous_macs = unet.macs;
        sizes.push(unet.parameters as f64);
    }
    let (small, large) = sizes
        .iter()
        .fold((f64::MAX, 0f64), |(s, l), &p| (s.min(p), l.max(p)));
    assert!(large / small < 1.15, "UNet sizes {sizes:?}");
}

/// Paper Table 12 and 13 N_params of the UNet, in millions; the presets reproduce them.
#[test]
fn paper_presets_match_the_paper_parameter_counts() {
    let cases = [
        ("paper-celebahq-ldm4.toml", 274.0),
        ("paper-imagenet-ldm1.toml", 396.0),
        ("paper-imagenet-ldm2.toml", 391.0),
        ("paper-imagenet-ldm4.toml", 391.0),
        ("paper-imagenet-ldm8.toml", 395.0),
        ("paper-imagenet-ldm16.toml", 395.0),
        ("paper-imagenet-ldm32.toml", 395.0),
    ];
    for (file, paper) in cases {
        let config = load(file);
        let millions = (total(&config, "unet") + total(&config, "class_embedder")) as f64 / 1e6;
        assert!(
            (millions / paper - 1.0).abs() < 0.03,
            "{file}: {millions:.1}M vs the paper's {paper}M"
        );
    }
    // Text-to-image: 1.45B for first stage, UNet and text transformer together.
    let config = load("paper-txt2img-ldm8.toml");
    let all: u64 = config.costs().unwrap().iter().map(|c| c.parameters).sum();
    assert!((all as f64 / 1.45e9 - 1.0).abs() < 0.04, "{all}");
}

/// The presets that mirror a configuration of the reference code (configs/latent-diffusion/
/// of CompVis/latent-diffusion) count what its modules count, parameter for parameter: the
/// UNetModel, and the first stage's encoder and decoder with their quantisation convolutions
/// and codebook. (Counted by instantiating the reference's modules from each YAML.)
#[test]
fn paper_presets_equal_the_reference_configurations() {
    let cases = [
        (
            "paper-celebahq-ldm4.toml",
            274_056_163,
            22_361_999 + 32_960_783,
        ),
        ("paper-ffhq-ldm4.toml", 274_056_163, 22_361_999 + 32_960_783),
        (
            "paper-lsun-bedrooms-ldm4.toml",
            274_056_163,
            22_361_999 + 32_960_783,
        ),
        (
            "paper-lsun-churches-ldm8.toml",
            294_966_916,
            34_163_664 + 49_490_199,
        ),
        (
            "paper-imagenet-ldm8.toml",
            394_984_196,
            27_463_320 + 40_253_975,
        ),
        (
            "paper-imagenet-ldm4.toml",
            400_920_579,
            22_361_999 + 32_960_783,
        ),
        (
            "paper-txt2img-ldm8.toml",
            872_300_484,
            34_163_664 + 49_490_199,
        ),
    ];
    for (file, unet, first_stage) in cases {
        let config = load(file);
        assert_eq!(total(&config, "unet"), unet, "{file}: UNet");
        let ours = total(&config, "encoder") + total(&config, "decoder");
        assert_eq!(ours, first_stage, "{file}: first stage");
    }
}

fn error_of(toml: &str) -> String {
    ModelConfig::parse(toml).unwrap_err().to_string()
}

fn tiny(ae: &str, unet: &str, conditioning: &str) -> String {
    format!("resolution = 16\n[autoencoder]\n{ae}\n[unet]\n{unet}\n{conditioning}",)
}

const AE: &str = "regularizer = \"kl\"\nfactor = 2\nlatent_channels = 3\nchannels = 8\nchannel_mult = [1, 2]\ngroups = 4";
const UNET: &str = "model_channels = 8\nchannel_mult = [1, 2]\nattention_resolutions = [2]\nhead_channels = 4\ngroups = 4";

#[test]
fn wrong_configurations_name_the_field() {
    assert!(ModelConfig::parse(&tiny(AE, UNET, "")).is_ok());
    assert_eq!(
        error_of(&tiny(&AE.replace("groups = 4", "groups = 3"), UNET, "")),
        "invalid configuration: autoencoder.channel_mult[0]: 8 x 1 = 8 channels are not divisible by groups = 3"
    );
    assert_eq!(
        error_of(&tiny(AE, &UNET.replace("groups = 4", "groups = 16"), "")),
        "invalid configuration: unet.channel_mult[0]: 8 x 1 = 8 channels are not divisible by groups = 16"
    );
    assert_eq!(
        error_of(&tiny(AE, &UNET.replace("attention_resolutions = [2]", "attention_resolutions = [4]"), "")),
        "invalid configuration: unet.attention_resolutions: 4 is never reached (downsampling rates are [1, 2])"
    );
    assert_eq!(
        error_of(&tiny(&format!("{AE}\nattn_resolutions = [5]"), UNET, "")),
        "invalid configuration: autoencoder.attn_resolutions: 5 is never reached (the encoder sees [16, 8])"
    );
    assert_eq!(
        error_of(&tiny(&AE.replace("factor = 2", "factor = 3"), UNET, "")),
        "invalid configuration: autoencoder.factor: 3 is not a power of two from 1 to 32"
    );
    assert_eq!(
        error_of(&tiny(&AE.replace("factor = 2", "factor = 4"), UNET, "")),
        "invalid configuration: autoencoder.channel_mult: 2 levels give f = 2^1 but factor = 4"
    );
    assert_eq!(
        error_of(&tiny(AE, &UNET.replace("head_channels = 4", "head_channels = 3"), "")),
        "invalid configuration: unet.channel_mult[0]: 8 channels do not split into heads of 3 channels"
    );
    assert_eq!(
        error_of(&tiny(AE, &UNET.replace("head_channels = 4", "heads = 2\nhead_channels = 4"), "")),
        "invalid configuration: unet.channel_mult[0]: set exactly one of unet.heads and unet.head_channels"
    );
    assert_eq!(
        error_of(&tiny(AE, &format!("{UNET}\nposition_frequencies = 9"), "")),
        "invalid configuration: unet.position_frequencies: 9 is above 8"
    );
    assert_eq!(
        error_of(&tiny(&AE.replace("\"kl\"", "\"vq\""), UNET, "")),
        "invalid configuration: autoencoder.codebook_size: a VQ autoencoder needs codebook_size >= 1"
    );
    let msg = error_of(&tiny(AE, UNET, "[conditioning]\nkind = \"audio\""));
    assert!(
        msg.contains("unknown variant `audio`, expected one of `none`, `text`, `class`, `concat`"),
        "{msg}"
    );
    let msg = error_of(&tiny(AE, &format!("{UNET}\nchanel_mult = [1]"), ""));
    assert!(msg.contains("unknown field `chanel_mult`"), "{msg}");
    let msg = error_of(&tiny(
        AE,
        UNET,
        "[conditioning]\nkind = \"text\"\nvocab_size = 10\nwidth = 10\ndepth = 1\nheads = 3",
    ));
    assert_eq!(
        msg,
        "invalid configuration: conditioning.width: 10 does not split into 3 heads"
    );
    let msg = error_of(&tiny(
        AE,
        UNET,
        "[diffusion]\ntimesteps = 1000\nbeta_start = 0.1\nbeta_end = 0.01",
    ));
    assert_eq!(msg, "invalid configuration: diffusion: invalid noise schedule: need 0 < beta_start (0.1) < beta_end (0.01) < 1");
    let msg = ModelConfig::load(&models_dir().join("missing.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("missing.toml: cannot read the configuration"),
        "{msg}"
    );
}
