//! The trainable part of a latent diffusion model: the UNet epsilon_theta and its conditioning
//! encoder tau_theta (text transformer or class embedder), optimised jointly (paper Eq. 3).
//! Each network lives in its own [`TchOps`], so its parameter names are the checkpoint's and
//! the exported graph's.

use std::collections::BTreeMap;

use ldm_nn::{conditioning, unet, Conditioning, ModelConfig, ShapeOps};
use tch::{Device, Kind, Tensor};

use crate::first_stage::sorted_params;
use crate::{TchOps, TrainError};

/// Named weights of one network.
pub type NamedWeights = Vec<(String, Tensor)>;
/// Parameter names and shapes of one network.
type ShapeMap = BTreeMap<String, Vec<usize>>;

/// What conditions one batch: token ids [B, L], class ids [B] (both int64), or channels to
/// concatenate [B, k, h, w].
pub enum Condition {
    None,
    Tokens(Tensor),
    Classes(Tensor),
    Concat(Tensor),
}

pub struct Denoiser {
    pub unet: TchOps,
    /// Text encoder or class embedder, when the model has one.
    pub encoder: Option<TchOps>,
    config: ModelConfig,
}

/// The checkpoint file name of the conditioning encoder.
pub fn encoder_name(config: &ModelConfig) -> Option<&'static str> {
    match config.conditioning {
        Conditioning::Text { .. } => Some("text_encoder"),
        Conditioning::Class { .. } => Some("class_embedder"),
        _ => None,
    }
}

/// Expected parameter names and shapes of the UNet and of the conditioning encoder.
pub fn expected_params(config: &ModelConfig) -> Result<(ShapeMap, Option<ShapeMap>), TrainError> {
    let r = config.latent_resolution();
    let io = config.unet_io();
    let mut u = ShapeOps::default();
    let context = context_shape(config).map(|(m, d)| vec![1, m, d]);
    unet::forward(
        &mut u,
        &config.unet,
        io,
        &vec![1, io.in_channels, r, r],
        &vec![1],
        context.as_ref(),
    )?;
    let encoder = match config.conditioning {
        Conditioning::Text { max_length, .. } => {
            let mut e = ShapeOps::default();
            let shape = config.text_encoder_shape().expect("text conditioning");
            conditioning::text_encoder(&mut e, &vec![1, max_length], shape)?;
            Some(e.params)
        }
        Conditioning::Class { classes, width } => {
            let mut e = ShapeOps::default();
            conditioning::class_embedder(&mut e, &vec![1], classes, width)?;
            Some(e.params)
        }
        _ => None,
    };
    Ok((u.params, encoder))
}

/// (length, width) of the cross-attention context.
fn context_shape(config: &ModelConfig) -> Option<(usize, usize)> {
    match config.conditioning {
        Conditioning::Text {
            max_length, width, ..
        } => Some((max_length, width)),
        Conditioning::Class { width, .. } => Some((1, width)),
        _ => None,
    }
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
        }
        Ok(model)
    }

    /// A batch-1 condition of the right kind, for the initialising forward pass.
    fn probe_condition(&self, device: Device) -> Condition {
        match self.config.conditioning {
            Conditioning::None => Condition::None,
            Conditioning::Text { max_length, .. } => {
                Condition::Tokens(Tensor::zeros([1, max_length as i64], (Kind::Int64, device)))
            }
            Conditioning::Class { .. } => {
                Condition::Classes(Tensor::zeros([1], (Kind::Int64, device)))
            }
            Conditioning::Concat { .. } => {
                let extra = (self.config.unet_in_channels()
                    - self.config.autoencoder.latent_channels) as i64;
                let r = self.config.latent_resolution() as i64;
                Condition::Concat(Tensor::zeros([1, extra, r, r], (Kind::Float, device)))
            }
        }
    }

    /// Predicted noise for `x` [B, c, h, w] at integer timesteps `t` [B].
    pub fn forward(
        &mut self,
        x: &Tensor,
        t: &Tensor,
        condition: &Condition,
    ) -> Result<Tensor, TrainError> {
        let io = self.config.unet_io();
        let t = t.to_kind(Kind::Float);
        let (input, context) = match condition {
            Condition::None => (x.shallow_clone(), None),
            Condition::Concat(extra) => (Tensor::cat(&[x, extra], 1), None),
            Condition::Tokens(ids) => {
                let shape = self.config.text_encoder_shape().expect("text conditioning");
                let encoder = self.encoder.as_mut().expect("text encoder");
                (
                    x.shallow_clone(),
                    Some(conditioning::text_encoder(encoder, ids, shape)?),
                )
            }
            Condition::Classes(ids) => {
                let Conditioning::Class { classes, width } = self.config.conditioning else {
                    unreachable!("class ids only for class conditioning")
                };
                let encoder = self.encoder.as_mut().expect("class embedder");
                (
                    x.shallow_clone(),
                    Some(conditioning::class_embedder(encoder, ids, classes, width)?),
                )
            }
        };
        Ok(unet::forward(
            &mut self.unet,
            &self.config.unet,
            io,
            &input,
            &t,
            context.as_ref(),
        )?)
    }

    /// Every trainable parameter, named `unet.*` and `<encoder>.*`, sorted.
    pub fn named_params(&self) -> Vec<(String, Tensor)> {
        let mut all: Vec<(String, Tensor)> = sorted_params(&self.unet)
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

/// Token ids [B, max_length] (int64) of captions, padded or cut to the text encoder's length.
pub fn token_ids(
    tokenizer: &ldm_core::TextTokenizer,
    texts: &[&str],
    max_length: usize,
    device: Device,
) -> Result<Tensor, TrainError> {
    let mut ids = Vec::with_capacity(texts.len() * max_length);
    for text in texts {
        ids.extend(tokenizer.encode(text, max_length)?.ids);
    }
    Ok(Tensor::from_slice(&ids)
        .reshape([texts.len() as i64, max_length as i64])
        .to_device(device))
}

/// Splits `unet.*` / `<encoder>.*` names (EMA weights, checkpoint files) back per network.
pub fn split_named(
    config: &ModelConfig,
    named: &[(String, Tensor)],
) -> (NamedWeights, Option<NamedWeights>) {
    let pick = |prefix: &str| -> Vec<(String, Tensor)> {
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
