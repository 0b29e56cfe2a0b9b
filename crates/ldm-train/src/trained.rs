//! A trained model loaded for sampling on tch, from a diffusion run (its latest checkpoint's
//! EMA weights and the first stage it was trained on) or from a release (`models/<name>/`).

use std::path::Path;

use ldm_core::{NoiseSchedule, TextTokenizer};
use ldm_nn::{autoencoder, Conditioning, ModelConfig};
use tch::{Device, Kind, Tensor};

use crate::denoiser::{token_ids, Condition, Denoiser};
use crate::release::{load_release_or_run, Release};
use crate::sampling::ddim_sample;
use crate::{TchOps, TrainError};

pub struct TrainedModel {
    pub config: ModelConfig,
    /// Diffusion training steps behind the weights.
    pub step: u64,
    scale_factor: f64,
    class_names: Vec<String>,
    denoiser: Denoiser,
    first_stage: Option<TchOps>,
    tokenizer: Option<TextTokenizer>,
    schedule: NoiseSchedule,
    device: Device,
}

impl TrainedModel {
    /// A release folder, or the latest checkpoint of a diffusion run folder.
    pub fn load(path: &Path, device: Device) -> Result<Self, TrainError> {
        Self::from_release(load_release_or_run(path)?, device)
    }

    fn from_release(release: Release, device: Device) -> Result<Self, TrainError> {
        let config = release.config;
        let denoiser = Denoiser::new(&config, device, Some((release.unet, release.encoder)))?;
        let first_stage = match release.autoencoder {
            Some(weights) => {
                let mut ops = TchOps::new(device);
                ops.load_params(weights)?;
                ops.freeze();
                Some(ops)
            }
            None => None,
        };
        let schedule = config.diffusion.schedule()?;
        Ok(Self {
            step: release.info.diffusion_steps,
            scale_factor: release.info.scale_factor,
            class_names: release.info.class_names,
            config,
            denoiser,
            first_stage,
            tokenizer: release.tokenizer,
            schedule,
            device,
        })
    }

    /// One image per prompt (text: a caption; class: a class name; unconditional: ignored),
    /// [N, 3, H, W] in [-1, 1]: DDIM with `steps` steps of the given `eta` and classifier-free
    /// `guidance`.
    pub fn generate(
        &mut self,
        prompts: &[String],
        steps: usize,
        eta: f64,
        guidance: f64,
        seed: i64,
    ) -> Result<Tensor, TrainError> {
        let n = prompts.len() as i64;
        let (condition, unconditional) = self.conditions(prompts)?;
        let (r, c) = (
            self.config.latent_resolution() as i64,
            self.config.autoencoder.latent_channels as i64,
        );
        let latents = ddim_sample(
            &mut self.denoiser,
            &self.schedule,
            [n, c, r, r],
            &condition,
            unconditional.as_ref(),
            guidance,
            steps,
            eta,
            seed,
            self.device,
        )?;
        let _guard = tch::no_grad_guard();
        let latents = latents / self.scale_factor;
        Ok(match self.first_stage.as_mut() {
            Some(ops) => autoencoder::decode(
                ops,
                &self.config.autoencoder,
                self.config.resolution,
                &latents,
            )?,
            None => latents,
        })
    }

    fn conditions(&self, prompts: &[String]) -> Result<(Condition, Option<Condition>), TrainError> {
        let n = prompts.len() as i64;
        Ok(match self.config.conditioning {
            Conditioning::None => (Condition::None, None),
            Conditioning::Text { max_length, .. } => {
                let tokenizer = self.tokenizer.as_ref().expect("text models load their tokenizer");
                let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
                let empty = vec![""; texts.len()];
                (
                    Condition::Tokens(token_ids(tokenizer, &texts, max_length, self.device)?),
                    Some(Condition::Tokens(token_ids(tokenizer, &empty, max_length, self.device)?)),
                )
            }
            Conditioning::Class { classes, .. } => {
                let names = &self.class_names;
                let ids = prompts
                    .iter()
                    .map(|p| {
                        names.iter().position(|c| c == p).map(|i| i as i64).ok_or_else(|| {
                            TrainError::Run(format!("unknown class '{p}' (the model knows {} classes: {})", names.len(), names.join(", ")))
                        })
                    })
                    .collect::<Result<Vec<i64>, _>>()?;
                (
                    Condition::Classes(Tensor::from_slice(&ids).to_device(self.device)),
                    Some(Condition::Classes(Tensor::full([n], classes as i64, (Kind::Int64, self.device)))),
                )
            }
            Conditioning::Concat { .. } => {
                return Err(TrainError::Run(
                    "concatenation models sample from an input image; export the run and use the runtime".into(),
                ))
            }
        })
    }
}
