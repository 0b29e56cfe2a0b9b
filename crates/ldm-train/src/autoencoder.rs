//! The first stage as the later stages use it: its parameter names, its weights loaded and
//! frozen, and the latent an image encodes to.

use std::collections::BTreeMap;
use std::path::Path;

use ldm_core::manifest::GraphRole;
use ldm_nn::{autoencoder, graphs, FirstStage, ModelConfig};
use tch::{Device, Tensor};

use crate::{checkpoint, gaussian, TchOps, TrainError};

/// Checkpoint (and release) file of the first stage's weights.
pub const AUTOENCODER: &str = "autoencoder";

/// Whether `name` is one of the decoder's own weights: what a `--decoder-only` fine-tune
/// trains. Everything else (the encoder, a VQ codebook) decides the latents.
pub fn is_decoder_param(name: &str) -> bool {
    name.starts_with("decoder.")
}

/// Names and shapes of the first stage's parameters: its encoder's and decoder's graphs
/// together (one file holds both).
pub fn expected_params(config: &ModelConfig) -> Result<BTreeMap<String, Vec<usize>>, TrainError> {
    let mut params = graphs::expected_params(GraphRole::Encoder, config)?;
    params.extend(graphs::expected_params(GraphRole::Decoder, config)?);
    Ok(params)
}

/// One forward pass of a blank image through `ops`'s encoder and decoder: what creates a fresh
/// first stage's parameters (and checks loaded ones against the configuration).
pub fn probe(ops: &mut TchOps, config: &ModelConfig, device: Device) -> Result<(), TrainError> {
    let (side, channels) = (
        config.resolution as i64,
        config.autoencoder.in_channels as i64,
    );
    let image = Tensor::zeros([1, channels, side, side], (tch::Kind::Float, device));
    let latent = encode_mode(ops, config, &image)?;
    let _ = autoencoder::decode(ops, &config.autoencoder, config.resolution, &latent)?;
    Ok(())
}

/// The encoder's latent as the decoder takes it: the posterior's mode (KL), the
/// pre-quantisation latent (VQ; the decoder quantises).
pub fn encode_mode(
    ops: &mut TchOps,
    config: &ModelConfig,
    images: &Tensor,
) -> Result<Tensor, TrainError> {
    let moments = autoencoder::encode(ops, &config.autoencoder, config.resolution, images)?;
    Ok(match config.autoencoder.regularizer {
        FirstStage::Kl => gaussian::mode(&moments),
        _ => moments,
    })
}

/// The first stage with the weights of a run's checkpoint or of a release (f16, read as f32),
/// frozen, for encoding and decoding.
pub fn load_autoencoder(
    checkpoint: &Path,
    config: &ModelConfig,
    device: Device,
) -> Result<TchOps, TrainError> {
    let weights =
        checkpoint::load_weights_as_f32(checkpoint, AUTOENCODER, Some(&expected_params(config)?))?;
    let mut ops = TchOps::new(device);
    ops.load_params(weights)?;
    ops.freeze();
    Ok(ops)
}

/// Images [N, C, H, W] in [-1, 1] from sampled latents (scaled as the UNet sees them): divided
/// by the scale factor and decoded, or returned as they are without a first stage.
pub fn decode_sampled(
    first_stage: Option<&mut TchOps>,
    config: &ModelConfig,
    latents: &Tensor,
    scale_factor: f64,
) -> Result<Tensor, TrainError> {
    let _guard = tch::no_grad_guard();
    let latents = latents / scale_factor;
    Ok(match first_stage {
        Some(ops) => autoencoder::decode(ops, &config.autoencoder, config.resolution, &latents)?,
        None => latents,
    })
}
