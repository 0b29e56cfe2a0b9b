//! Tiny models with random weights, for export tests.
#![allow(dead_code)] // each test file uses its own part

use ldm_core::manifest::GraphRole;
use ldm_core::TextTokenizer;
use ldm_nn::graphs;
use ldm_nn::{autoencoder, FirstStage, ModelConfig};
use ldm_train::denoiser::{split_named, Denoiser};
use ldm_train::diffusion::DiffusionOptions;
use ldm_train::release::{Release, ReleaseInfo, TrainedPlanner};
use ldm_train::tensors::sorted_params;
use ldm_train::TchOps;
use tch::{Device, Kind, Tensor};

pub const TEXT: &str = "[conditioning]\nkind = \"text\"\nvocab_size = 64\nmax_length = 6\nwidth = 12\ndepth = 1\nheads = 3";
pub const CLASS: &str = "[conditioning]\nkind = \"class\"\nclasses = 5\nwidth = 12";
pub const NONE: &str = "";
pub const SUPER_RESOLUTION: &str = "[conditioning]\nkind = \"concat\"\ntask = \"super_resolution\"";
pub const INPAINTING: &str = "[conditioning]\nkind = \"concat\"\ntask = \"inpainting\"";
/// Boxes of two classes and two colours on a 4-step grid, at most two a layout.
pub const LAYOUT: &str = "[conditioning]\nkind = \"text\"\nvocab_size = 28\nmax_length = 14\nwidth = 12\ndepth = 1\nheads = 3\n\
     [conditioning.layout]\nclasses = [\"circle\", \"star\"]\ncolours = [\"red\", \"blue\"]\nbins = 4\nmax_objects = 2";
/// [`LAYOUT`] with a layout planner that reads captions of up to 8 tokens.
pub const PLANNED_LAYOUT: &str = "[conditioning]\nkind = \"text\"\nvocab_size = 28\nmax_length = 14\nwidth = 12\ndepth = 1\nheads = 3\n\
     [conditioning.layout]\nclasses = [\"circle\", \"star\"]\ncolours = [\"red\", \"blue\"]\nbins = 4\nmax_objects = 2\n\
     [conditioning.planner]\nvocab_size = 64\nmax_length = 8\nwidth = 12\ndepth = 1\nheads = 3";
pub const SEMANTIC_MAP: &str =
    "[conditioning]\nkind = \"concat\"\ntask = \"semantic_map\"\nclasses = 5";

const KL: &str = "regularizer = \"kl\"\nfactor = 2\nlatent_channels = 3\nchannels = 8\nchannel_mult = [1, 2]\nres_blocks = 1\ngroups = 4\nattn_resolutions = [8]";
const VQ: &str = "regularizer = \"vq\"\nfactor = 2\nlatent_channels = 3\ncodebook_size = 16\nchannels = 8\nchannel_mult = [1, 2]\nres_blocks = 1\ngroups = 4";
const IDENTITY: &str = "regularizer = \"identity\"\nfactor = 1\nlatent_channels = 3";

pub fn config(regularizer: FirstStage, conditioning: &str) -> ModelConfig {
    config_with(regularizer, conditioning, "")
}

/// [`config`] with more `[unet]` options (lines of TOML).
pub fn config_with(regularizer: FirstStage, conditioning: &str, unet_options: &str) -> ModelConfig {
    let ae = match regularizer {
        FirstStage::Kl => KL,
        FirstStage::Vq => VQ,
        FirstStage::Identity => IDENTITY,
    };
    ModelConfig::parse(&format!(
        "resolution = 16\n[autoencoder]\n{ae}\n\
         [unet]\nmodel_channels = 8\nchannel_mult = [1, 2]\nres_blocks = 1\nattention_resolutions = [2]\nhead_channels = 4\ngroups = 4\n\
         {unet_options}\n{conditioning}\n[diffusion]\ntimesteps = 100\nbeta_start = 0.0015\nbeta_end = 0.0195"
    ))
    .unwrap()
}

/// Fresh weights replaced by N(0, 0.2²) everywhere: the UNet's zero-initialised output
/// layers would otherwise make its output trivially zero.
fn randomised(weights: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    weights
        .into_iter()
        .map(|(n, t)| (n, Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.2))
        .collect()
}

/// A release of `config` with random weights (seeded through libtorch's generator).
pub fn random_release(config: &ModelConfig, seed: i64) -> Release {
    tch::manual_seed(seed);
    let denoiser = Denoiser::new(config, Device::Cpu, None).unwrap();
    let (unet, encoder) = split_named(config, &randomised(denoiser.named_params()));
    let autoencoder = (config.autoencoder.regularizer != FirstStage::Identity).then(|| {
        let mut ops = TchOps::new(Device::Cpu);
        let r = config.resolution as i64;
        let image = Tensor::zeros([1, 3, r, r], (Kind::Float, Device::Cpu));
        let moments =
            autoencoder::encode(&mut ops, &config.autoencoder, config.resolution, &image).unwrap();
        let c = config.autoencoder.latent_channels as i64;
        let _ = autoencoder::decode(
            &mut ops,
            &config.autoencoder,
            config.resolution,
            &moments.narrow(1, 0, c),
        )
        .unwrap();
        randomised(sorted_params(&ops))
    });
    let tokenizer = config
        .text_encoder_shape()
        .map(|_| match config.conditioning.layout() {
            Some(layout) => TextTokenizer::from_words(&layout.words()).unwrap(),
            None => {
                let captions = ["a red circle", "a blue square at the top", "a green star"];
                TextTokenizer::train(captions.iter(), 64).unwrap()
            }
        });
    let planner = config.conditioning.planner().map(|p| {
        let mut ops = TchOps::new(Device::Cpu);
        let ids = Tensor::zeros([1, p.max_length as i64], (Kind::Int64, Device::Cpu));
        graphs::forward(GraphRole::Planner, config, &mut ops, &[ids]).unwrap();
        let captions = [
            "a red circle at the top",
            "a blue star and a red circle",
            "a star",
        ];
        TrainedPlanner {
            weights: randomised(sorted_params(&ops)),
            tokenizer: TextTokenizer::train(captions.iter(), p.vocab_size).unwrap(),
        }
    });
    Release {
        config: config.clone(),
        info: ReleaseInfo {
            format: 1,
            scale_factor: 0.7,
            class_names: Vec::new(),
            diffusion_steps: 0,
            diffusion_options: DiffusionOptions::default(),
            autoencoder_steps: None,
            autoencoder_options: None,
            autoencoder_validation: None,
            data_fingerprint: "test".into(),
            imported: None,
            planner: None,
        },
        unet,
        encoder,
        autoencoder,
        tokenizer,
        planner,
    }
}
