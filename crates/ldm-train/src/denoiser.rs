//! The trainable part of a latent diffusion model: the UNet epsilon_theta and its conditioning
//! encoder tau_theta (text transformer or class embedder), optimised jointly (paper Eq. 3).
//! Each network lives in its own [`TchOps`], so its parameter names are the checkpoint's and
//! the exported graph's; both run as `ldm_nn::graphs` composes them.

use std::collections::BTreeMap;

use ldm_core::manifest::GraphRole;
use ldm_nn::{graphs, Conditioning, ModelConfig, TextEncoderKind};
use tch::{Device, Kind, Tensor};

use crate::tensors::{sorted_params, NamedWeights};
use crate::{TchOps, TrainError};

/// Parameter names and shapes of one network.
type ShapeMap = BTreeMap<String, Vec<usize>>;

/// What conditions one batch: ids for the conditioning encoder (int64 token ids [B, L] or
/// class ids [B]), channels to concatenate [B, k, h, w], or both (Stable Diffusion's
/// inpainting UNets).
pub enum Condition {
    None,
    Ids(Tensor),
    Concat(Tensor),
    IdsAndConcat { ids: Tensor, concat: Tensor },
}

impl Condition {
    fn parts(&self) -> (Option<&Tensor>, Option<&Tensor>) {
        match self {
            Condition::None => (None, None),
            Condition::Ids(ids) => (Some(ids), None),
            Condition::Concat(concat) => (None, Some(concat)),
            Condition::IdsAndConcat { ids, concat } => (Some(ids), Some(concat)),
        }
    }
}

pub struct Denoiser {
    pub unet: TchOps,
    /// Text encoder or class embedder, when the model has one.
    pub encoder: Option<TchOps>,
    config: ModelConfig,
}

/// The checkpoint file name of the conditioning encoder.
pub fn encoder_name(config: &ModelConfig) -> Option<&'static str> {
    graphs::conditioner_role(config).map(GraphRole::as_str)
}

/// Expected parameter names and shapes of the UNet and of the conditioning encoder.
pub fn expected_params(config: &ModelConfig) -> Result<(ShapeMap, Option<ShapeMap>), TrainError> {
    let unet = graphs::expected_params(GraphRole::Unet, config)?;
    let encoder = match graphs::conditioner_role(config) {
        Some(role) => Some(graphs::expected_params(role, config)?),
        None => None,
    };
    Ok((unet, encoder))
}

impl Denoiser {
    /// Fresh networks (initialised by one forward pass), or the given weights (frozen).
    pub fn new(
        config: &ModelConfig,
        device: Device,
        weights: Option<(NamedWeights, Option<NamedWeights>)>,
    ) -> Result<Self, TrainError> {
        let mut unet = TchOps::new(device);
        let mut encoder = encoder_name(config).map(|_| TchOps::new(device));
        if let Some((unet_weights, encoder_weights)) = weights {
            unet.load_params(unet_weights)?;
            unet.freeze();
            if let (Some(e), Some(w)) = (encoder.as_mut(), encoder_weights) {
                e.load_params(w)?;
                e.freeze();
            }
        }
        let mut model = Self {
            unet,
            encoder,
            config: config.clone(),
        };
        let probe = model.probe_condition(device);
        let r = config.latent_resolution() as i64;
        let c = config.autoencoder.latent_channels as i64;
        let x = Tensor::zeros([1, c, r, r], (Kind::Float, device));
        let t = Tensor::zeros([1], (Kind::Int64, device));
        let _ = model.forward(&x, &t, &probe)?;
        model.unet.freeze();
        if let Some(e) = model.encoder.as_mut() {
            e.freeze();
            // Stable Diffusion trains its UNet against a pretrained CLIP that stays fixed:
            // fine-tunes of an imported model keep it as it is (no gradients, no updates).
            if let Conditioning::Text {
                encoder: TextEncoderKind::Clip,
                ..
            } = config.conditioning
            {
                e.var_store_mut().freeze();
            }
        }
        Ok(model)
    }

    /// A batch-1 condition of the right kind, for the initialising forward pass.
    fn probe_condition(&self, device: Device) -> Condition {
        let ids = match self.config.conditioning {
            Conditioning::Text { max_length, .. } => {
                Some(Tensor::zeros([1, max_length as i64], (Kind::Int64, device)))
            }
            Conditioning::Class { .. } => Some(Tensor::zeros([1], (Kind::Int64, device))),
            Conditioning::None | Conditioning::Concat { .. } => None,
        };
        let concat = self.config.conditioning.concat_task().map(|_| {
            let extra =
                (self.config.unet_in_channels() - self.config.autoencoder.latent_channels) as i64;
            let r = self.config.latent_resolution() as i64;
            Tensor::zeros([1, extra, r, r], (Kind::Float, device))
        });
        match (ids, concat) {
            (None, None) => Condition::None,
            (Some(ids), None) => Condition::Ids(ids),
            (None, Some(concat)) => Condition::Concat(concat),
            (Some(ids), Some(concat)) => Condition::IdsAndConcat { ids, concat },
        }
    }

    /// Predicted noise for `x` [B, c, h, w] at integer timesteps `t` [B]. A condition the
    /// model does not take is refused.
    pub fn forward(
        &mut self,
        x: &Tensor,
        t: &Tensor,
        condition: &Condition,
    ) -> Result<Tensor, TrainError> {
        let role = graphs::conditioner_role(&self.config);
        let (ids, concat) = condition.parts();
        let context = match (ids, role, self.encoder.as_mut()) {
            (Some(ids), Some(role), Some(encoder)) => Some(
                graphs::forward(role, &self.config, encoder, &[ids.shallow_clone()])?.remove(0),
            ),
            (None, None, _) => None,
            _ => return Err(TrainError::ConditionMismatch),
        };
        if concat.is_some() != self.config.conditioning.concat_task().is_some() {
            return Err(TrainError::ConditionMismatch);
        }
        let mut inputs = vec![x.shallow_clone(), t.to_kind(Kind::Float)];
        inputs.extend(context);
        inputs.extend(concat.map(Tensor::shallow_clone));
        Ok(graphs::forward(GraphRole::Unet, &self.config, &mut self.unet, &inputs)?.remove(0))
    }

    /// Every trainable parameter, named `unet.*` and `<encoder>.*`, sorted.
    pub fn named_params(&self) -> NamedWeights {
        let mut all: NamedWeights = sorted_params(&self.unet)
            .into_iter()
            .map(|(n, t)| (format!("unet.{n}"), t))
            .collect();
        if let (Some(e), Some(name)) = (&self.encoder, encoder_name(&self.config)) {
            all.extend(
                sorted_params(e)
                    .into_iter()
                    .map(|(n, t)| (format!("{name}.{n}"), t)),
            );
        }
        all
    }
}

/// Splits `unet.*` / `<encoder>.*` names (EMA weights, checkpoint files) back per network.
pub fn split_named(
    config: &ModelConfig,
    named: &[(String, Tensor)],
) -> (NamedWeights, Option<NamedWeights>) {
    let pick = |prefix: &str| -> NamedWeights {
        named
            .iter()
            .filter_map(|(n, t)| {
                n.strip_prefix(prefix)
                    .map(|rest| (rest.to_string(), t.shallow_clone()))
            })
            .collect()
    };
    let encoder = encoder_name(config).map(|name| pick(&format!("{name}.")));
    (pick("unet."), encoder)
}
