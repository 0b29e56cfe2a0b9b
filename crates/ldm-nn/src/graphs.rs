//! A model's graphs, engine-free: which networks a model has, the fixed names, dtypes and
//! shapes of each graph's inputs and outputs, each graph's computation over any
//! interpretation of the ops (tch for training and the reference outputs, ONNX for the file,
//! shapes for parameter names), and the parameters each graph holds.
//!
//! | graph            | inputs                                                    | outputs |
//! |------------------|-----------------------------------------------------------|---------|
//! | `encoder`        | `image` f32 [batch, C, height, width] in [-1, 1]          | `moments` (KL: mean ++ log-variance, 2c channels) or `latent` (VQ: before quantisation) |
//! | `decoder`        | `latent` f32 [batch, c, latent_height, latent_width], unscaled | `image` f32 [batch, C, height, width] |
//! | `unet`           | `sample` f32 [batch, c, latent_height, latent_width], `timestep` f32 [batch] (0-based, fractional allowed), `context` f32 [batch, tokens, width] or `concat` f32 [batch, k, latent_height, latent_width] | `eps` (predicted noise, like `sample`) |
//! | `text_encoder`   | `input_ids` i64 [batch, max_length]                       | `context` f32 [batch, max_length, width] |
//! | `class_embedder` | `class_labels` i64 [batch] (`classes` = no class)         | `context` f32 [batch, 1, width] |
//! | `planner`        | `caption_ids` i64 [batch, caption max_length]             | `scores` f32 [batch, max_objects, slot width] (`ldm_core::layout_plan`) |
//!
//! Inputs and outputs are f32 in every precision; an f16 graph converts inside.

use std::collections::BTreeMap;

use ldm_core::layout_plan::SlotScores;
use ldm_core::manifest::{DType, DimSpec, GraphRole, TensorSpec};

use crate::ops::Result;
use crate::{
    autoencoder, conditioning, planner, unet, Conditioning, FirstStage, ModelConfig, NnError, Ops,
    ShapeOps,
};

/// The graphs a model exports, in the order they are written.
pub fn roles(config: &ModelConfig) -> Vec<GraphRole> {
    let mut roles = Vec::new();
    if config.autoencoder.regularizer != FirstStage::Identity {
        roles.extend([GraphRole::Encoder, GraphRole::Decoder]);
    }
    roles.push(GraphRole::Unet);
    roles.extend(conditioner_role(config));
    if config.conditioning.planner().is_some() {
        roles.push(GraphRole::Planner);
    }
    roles
}

/// The conditioning encoder of a model (text transformer or class embedder), trained jointly
/// with the UNet; its role's name is its checkpoint and release file name.
pub fn conditioner_role(config: &ModelConfig) -> Option<GraphRole> {
    match config.conditioning {
        Conditioning::Text { .. } => Some(GraphRole::TextEncoder),
        Conditioning::Class { .. } => Some(GraphRole::ClassEmbedder),
        Conditioning::None | Conditioning::Concat { .. } => None,
    }
}

/// Names and shapes of the parameters of `role`'s graph, from the shape interpretation at the
/// training resolution and batch 1.
pub fn expected_params(
    role: GraphRole,
    config: &ModelConfig,
) -> Result<BTreeMap<String, Vec<usize>>> {
    let (inputs, _) = io_specs(role, config);
    let f = config.autoencoder.factor;
    let side = |name: &str| {
        if name.starts_with("latent_") {
            config.resolution / f
        } else {
            config.resolution
        }
    };
    let shapes: Vec<Vec<usize>> = inputs
        .iter()
        .map(|spec| {
            spec.shape
                .iter()
                .map(|d| match d {
                    DimSpec::Fixed(n) => *n,
                    DimSpec::Symbol(s) if s == "batch" => 1,
                    DimSpec::Symbol(s) => side(s),
                })
                .collect()
        })
        .collect();
    let mut ops = ShapeOps::default();
    forward(role, config, &mut ops, &shapes)?;
    Ok(ops.params)
}

fn sym(name: &str) -> DimSpec {
    DimSpec::Symbol(name.into())
}

fn fixed(n: usize) -> DimSpec {
    DimSpec::Fixed(n)
}

/// [batch, channels, <prefix>height, <prefix>width]
fn image_like(name: &str, channels: usize, prefix: &str) -> TensorSpec {
    let shape = [
        sym("batch"),
        fixed(channels),
        sym(&format!("{prefix}height")),
        sym(&format!("{prefix}width")),
    ];
    TensorSpec::new(name, DType::Float32, &shape)
}

/// Names, dtypes and shapes of the inputs and outputs of `role`'s graph.
pub fn io_specs(role: GraphRole, config: &ModelConfig) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let ae = &config.autoencoder;
    let c = ae.latent_channels;
    match role {
        GraphRole::Encoder => {
            let output = match ae.regularizer {
                FirstStage::Kl => image_like("moments", 2 * c, "latent_"),
                _ => image_like("latent", c, "latent_"),
            };
            (vec![image_like("image", ae.in_channels, "")], vec![output])
        }
        GraphRole::Decoder => (
            vec![image_like("latent", c, "latent_")],
            vec![image_like("image", ae.in_channels, "")],
        ),
        GraphRole::Unet => {
            let mut inputs = vec![
                image_like("sample", c, "latent_"),
                TensorSpec::new("timestep", DType::Float32, &[sym("batch")]),
            ];
            if let (Some(length), Some(width)) = (config.context_length(), config.context_dim()) {
                inputs.push(TensorSpec::new(
                    "context",
                    DType::Float32,
                    &[sym("batch"), fixed(length), fixed(width)],
                ));
            }
            if config.conditioning.concat_task().is_some() {
                inputs.push(image_like(
                    "concat",
                    config.unet_in_channels() - c,
                    "latent_",
                ));
            }
            (inputs, vec![image_like("eps", c, "latent_")])
        }
        GraphRole::TextEncoder => {
            let max_length = config.context_length().unwrap_or(0);
            let width = config.context_dim().unwrap_or(0);
            (
                vec![TensorSpec::new(
                    "input_ids",
                    DType::Int64,
                    &[sym("batch"), fixed(max_length)],
                )],
                vec![TensorSpec::new(
                    "context",
                    DType::Float32,
                    &[sym("batch"), fixed(max_length), fixed(width)],
                )],
            )
        }
        GraphRole::Planner => {
            let (length, slots, width) =
                match (config.conditioning.planner(), config.conditioning.layout()) {
                    (Some(planner), Some(layout)) => (
                        planner.max_length,
                        layout.max_objects,
                        SlotScores::of(layout).width(),
                    ),
                    _ => (0, 0, 0),
                };
            (
                vec![TensorSpec::new(
                    "caption_ids",
                    DType::Int64,
                    &[sym("batch"), fixed(length)],
                )],
                vec![TensorSpec::new(
                    "scores",
                    DType::Float32,
                    &[sym("batch"), fixed(slots), fixed(width)],
                )],
            )
        }
        GraphRole::ClassEmbedder => {
            let width = config.context_dim().unwrap_or(0);
            (
                vec![TensorSpec::new(
                    "class_labels",
                    DType::Int64,
                    &[sym("batch")],
                )],
                vec![TensorSpec::new(
                    "context",
                    DType::Float32,
                    &[sym("batch"), fixed(1), fixed(width)],
                )],
            )
        }
    }
}

/// The computation of `role`'s graph: `inputs` in the order of [`io_specs`], outputs likewise.
pub fn forward<O: Ops>(
    role: GraphRole,
    config: &ModelConfig,
    o: &mut O,
    inputs: &[O::T],
) -> Result<Vec<O::T>> {
    let (expected, _) = io_specs(role, config);
    if inputs.len() != expected.len() {
        return Err(NnError::Shape {
            op: "graph inputs",
            message: format!(
                "{} takes {} inputs, got {}",
                role.as_str(),
                expected.len(),
                inputs.len()
            ),
        });
    }
    let ae = &config.autoencoder;
    let output = match role {
        GraphRole::Encoder => autoencoder::encode(o, ae, config.resolution, &inputs[0])?,
        GraphRole::Decoder => autoencoder::decode(o, ae, config.resolution, &inputs[0])?,
        GraphRole::Unet => {
            let (sample, timestep, rest) = (&inputs[0], &inputs[1], &inputs[2..]);
            let (context, concat) = match (config.context_dim(), rest) {
                (Some(_), [context, concat @ ..]) => (Some(context), concat.first()),
                (_, concat) => (None, concat.first()),
            };
            let io = config.unet_io();
            match concat {
                Some(concat) => {
                    let x = o.concat(&[sample, concat], 1)?;
                    unet::forward(o, &config.unet, io, &x, timestep, context)?
                }
                None => unet::forward(o, &config.unet, io, sample, timestep, context)?,
            }
        }
        GraphRole::TextEncoder => {
            let shape = config
                .text_encoder_shape()
                .ok_or_else(|| NnError::config("conditioning", "not text"))?;
            conditioning::text_encoder(o, &inputs[0], shape)?
        }
        GraphRole::ClassEmbedder => match config.conditioning {
            Conditioning::Class { classes, width } => {
                conditioning::class_embedder(o, &inputs[0], classes, width)?
            }
            _ => return Err(NnError::config("conditioning", "not class")),
        },
        GraphRole::Planner => match (config.conditioning.planner(), config.conditioning.layout()) {
            (Some(planner), Some(layout)) => planner::forward(o, &inputs[0], planner, layout)?,
            _ => return Err(NnError::config("conditioning.planner", "absent")),
        },
    };
    Ok(vec![output])
}
