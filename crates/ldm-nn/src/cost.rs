//! Parameter and multiply-accumulate counts per network, from the shape interpretation.

use crate::conditioning::TextEncoderShape;
use crate::config::{Conditioning, ModelConfig};
use crate::ops::Result;
use crate::unet::UnetIo;
use crate::{autoencoder, conditioning, unet, ShapeOps};

/// One network's size and the work of one forward pass with batch 1.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkCost {
    pub network: &'static str,
    pub parameters: u64,
    pub macs: u64,
    pub output_shape: Vec<usize>,
}

fn measure(
    network: &'static str,
    run: impl FnOnce(&mut ShapeOps) -> Result<Vec<usize>>,
) -> Result<NetworkCost> {
    let mut ops = ShapeOps::default();
    let output_shape = run(&mut ops)?;
    Ok(NetworkCost {
        network,
        parameters: ops.parameter_count(),
        macs: ops.macs,
        output_shape,
    })
}

impl ModelConfig {
    /// Every network of the model at the configured resolution, batch 1.
    pub fn costs(&self) -> Result<Vec<NetworkCost>> {
        let (res, ae) = (self.resolution, &self.autoencoder);
        let (r, c) = (self.latent_resolution(), ae.latent_channels);
        let mut costs = vec![
            measure("encoder", |o| {
                autoencoder::encode(o, ae, res, &vec![1, ae.in_channels, res, res])
            })?,
            measure("decoder", |o| {
                autoencoder::decode(o, ae, res, &vec![1, c, r, r])
            })?,
        ];
        let io = self.unet_io();
        costs.push(measure("unet", |o| {
            let context = self
                .context_length()
                .zip(self.context_dim())
                .map(|(m, d)| vec![1, m, d]);
            unet::forward(
                o,
                &self.unet,
                io,
                &vec![1, io.in_channels, r, r],
                &vec![1],
                context.as_ref(),
            )
        })?);
        match self.conditioning {
            Conditioning::Text { max_length, .. } => {
                let shape = self.text_encoder_shape().expect("text conditioning");
                costs.push(measure("text_encoder", |o| {
                    conditioning::text_encoder(o, &vec![1, max_length], shape)
                })?)
            }
            Conditioning::Class { classes, width } => costs.push(measure("class_embedder", |o| {
                conditioning::class_embedder(o, &vec![1], classes, width)
            })?),
            _ => {}
        }
        Ok(costs)
    }

    /// The text encoder's sizes, for text-conditioned models.
    pub fn text_encoder_shape(&self) -> Option<TextEncoderShape> {
        match self.conditioning {
            Conditioning::Text {
                vocab_size,
                max_length,
                width,
                depth,
                heads,
                head_channels,
                encoder,
                activation,
                mlp_width,
                positions,
                concat: _,
                layout: _,
                planner: _,
            } => Some(TextEncoderShape {
                vocab_size,
                max_length,
                width,
                depth,
                heads,
                head_dim: head_channels.unwrap_or(width / heads),
                encoder,
                activation,
                mlp_width: mlp_width.unwrap_or(4 * width),
                positions: positions.unwrap_or(max_length),
                boxes: self.box_tokens(),
            }),
            _ => None,
        }
    }

    /// The UNet's channels and context width for this model.
    pub fn unet_io(&self) -> UnetIo {
        UnetIo {
            in_channels: self.unet_in_channels(),
            out_channels: self.autoencoder.latent_channels,
            context_dim: self.context_dim(),
            context_boxes: self.box_tokens().is_some(),
        }
    }
}
