//! `ldm train diffusion --init-from SOURCE --transplant`: a UNet started from another model's
//! where their layers agree, so a new conditioning (class labels, concatenated images, none)
//! learns on a denoiser that already knows the data instead of on noise.
//!
//! A layer is a parameter name up to the end of its first run of indexes (`input_blocks.4.1`,
//! `middle_block.0`, `out.2`): the block the reference UNet builds in one place. A layer is taken whole when the source has
//! it with the same tensors and shapes, or when only the input convolution's channel count grew
//! (a concatenation model's): the source's channels are kept and the new ones
//! start at zero, so the network begins by computing what the source did. Every other layer,
//! and the conditioning encoder, starts as in a fresh run.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use tch::Tensor;

use ldm_nn::ModelConfig;

use crate::denoiser::expected_params;
use crate::run::Start;
use crate::tensors::NamedWeights;
use crate::{checkpoint, release, TrainError};

/// How each layer of the new UNet starts.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Layers copied as they are.
    pub taken: Vec<String>,
    /// Layers copied with new input channels at zero: (layer, source channels, new channels).
    pub widened: Vec<(String, usize, usize)>,
    /// Layers that start fresh (absent from the source, or of another shape there).
    pub fresh: Vec<String>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} UNet layers taken from the source, {} widened, {} fresh",
            self.taken.len(),
            self.widened.len(),
            self.fresh.len()
        )?;
        for (layer, from, to) in &self.widened {
            write!(
                f,
                "; {layer}: {from} -> {to} input channels (new ones at zero)"
            )?;
        }
        if !self.fresh.is_empty() {
            write!(f, "; fresh: {}", abbreviated(&self.fresh))?;
        }
        Ok(())
    }
}

/// The first few names and how many more.
fn abbreviated(names: &[String]) -> String {
    const SHOWN: usize = 6;
    let mut text = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// The layer a parameter belongs to: its name up to the end of its first run of numeric
/// components (the whole name when it has none).
fn layer_of(name: &str) -> &str {
    let is_index = |p: &&str| p.parse::<usize>().is_ok();
    let parts: Vec<&str> = name.split('.').collect();
    let Some(first) = parts.iter().position(is_index) else {
        return name;
    };
    let run = parts[first..].iter().take_while(|p| is_index(p)).count();
    let len: usize = parts[..first + run].iter().map(|p| p.len() + 1).sum();
    &name[..len - 1]
}

type Shapes = BTreeMap<String, Vec<usize>>;

/// Groups parameter shapes by layer.
fn by_layer(shapes: &Shapes) -> BTreeMap<&str, Shapes> {
    let mut layers: BTreeMap<&str, Shapes> = BTreeMap::new();
    for (name, shape) in shapes {
        layers
            .entry(layer_of(name))
            .or_default()
            .insert(name.clone(), shape.clone());
    }
    layers
}

/// The convolution that reads the UNet's input: the latent, then any concatenated channels.
const INPUT_LAYER: &str = "input_blocks.0.0";

/// Input channels (source, ours) when `ours` is `theirs` with more channels along dim 1 of the
/// input convolution's weight.
fn widening(name: &str, theirs: &[usize], ours: &[usize]) -> Option<(usize, usize)> {
    let same_but_inputs = layer_of(name) == INPUT_LAYER
        && theirs.len() == 4
        && ours.len() == 4
        && theirs[0] == ours[0]
        && theirs[2..] == ours[2..]
        && theirs[1] < ours[1];
    same_but_inputs.then_some((theirs[1], ours[1]))
}

/// Which of `ours` (the new UNet's parameter shapes) start from `theirs` (the source's).
pub fn plan(theirs: &Shapes, ours: &Shapes) -> Plan {
    let (their_layers, mut plan) = (by_layer(theirs), Plan::default());
    for (layer, params) in by_layer(ours) {
        let Some(source) = their_layers.get(layer) else {
            plan.fresh.push(layer.to_string());
            continue;
        };
        let same_names = source.keys().eq(params.keys());
        let mut widened = None;
        let fits = same_names
            && params.iter().all(|(name, shape)| {
                let theirs = &source[name];
                if theirs == shape {
                    return true;
                }
                widened = widening(name, theirs, shape);
                widened.is_some()
            });
        match (fits, widened) {
            (true, None) => plan.taken.push(layer.to_string()),
            (true, Some((from, to))) => plan.widened.push((layer.to_string(), from, to)),
            (false, _) => plan.fresh.push(layer.to_string()),
        }
    }
    plan
}

/// The plan for `config`'s UNet from the source's (a release or run folder), with the source's
/// UNet weights (f32, on the CPU).
pub fn from_source(
    source: &Path,
    config: &ModelConfig,
) -> Result<(Plan, NamedWeights), TrainError> {
    let folder = release::weights_source(&Start::Fresh, Some(source))?;
    from_folder(folder.as_deref().unwrap_or(source), config)
}

/// [`from_source`] for a source already resolved to its weights folder.
pub(crate) fn from_folder(
    folder: &Path,
    config: &ModelConfig,
) -> Result<(Plan, NamedWeights), TrainError> {
    let weights = checkpoint::load_weights_as_f32(folder, "unet", None)?;
    let theirs = shapes_of(&weights);
    let (ours, _) = expected_params(config)?;
    let plan = plan(&theirs, &ours);
    if plan.taken.is_empty() && plan.widened.is_empty() {
        return Err(TrainError::Mismatch(format!(
            "--transplant: no UNet layer of {} fits this configuration (its widths differ: model_channels, channel_mult)",
            folder.display()
        )));
    }
    Ok((plan, weights))
}

/// Parameter shapes of named weights.
fn shapes_of(weights: &[(String, Tensor)]) -> Shapes {
    weights
        .iter()
        .map(|(n, t)| (n.clone(), t.size().iter().map(|&d| d as usize).collect()))
        .collect()
}

/// Copies the planned layers of `source` into the UNet parameters `params` (names without the
/// `unet.` prefix); a widened weight gets the source's channels first and zeros after them.
pub fn apply(plan: &Plan, source: &[(String, Tensor)], params: &[(String, Tensor)]) {
    let copied: Vec<&str> = plan
        .taken
        .iter()
        .chain(plan.widened.iter().map(|(layer, ..)| layer))
        .map(String::as_str)
        .collect();
    let source: BTreeMap<&str, &Tensor> = source.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let _guard = tch::no_grad_guard();
    for (name, param) in params {
        if !copied.contains(&layer_of(name)) {
            continue;
        }
        let value = source[name.as_str()].to_device(param.device());
        let mut param = param.shallow_clone();
        if value.size() == param.size() {
            param.copy_(&value);
        } else {
            let channels = value.size()[1];
            let _ = param.zero_();
            param.narrow(1, 0, channels).copy_(&value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(entries: &[(&str, &[usize])]) -> Shapes {
        entries
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_vec()))
            .collect()
    }

    #[test]
    fn a_layer_is_the_name_up_to_its_first_run_of_indexes() {
        assert_eq!(
            layer_of("input_blocks.4.1.proj_in.weight"),
            "input_blocks.4.1"
        );
        assert_eq!(
            layer_of("input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"),
            "input_blocks.1.1"
        );
        assert_eq!(
            layer_of("middle_block.0.in_layers.0.bias"),
            "middle_block.0"
        );
        assert_eq!(layer_of("out.2.weight"), "out.2");
        assert_eq!(layer_of("weight"), "weight");
    }

    #[test]
    fn layers_are_taken_widened_or_fresh() {
        let theirs = shapes(&[
            ("input_blocks.0.0.weight", &[8, 4, 3, 3]),
            ("input_blocks.0.0.bias", &[8]),
            ("time_embed.0.weight", &[16, 8]),
            ("out.2.weight", &[4, 8, 3, 3]),
            ("input_blocks.1.1.proj_out.weight", &[8, 8, 1, 1]),
        ]);
        let ours = shapes(&[
            ("input_blocks.0.0.weight", &[8, 7, 3, 3]),
            ("input_blocks.0.0.bias", &[8]),
            ("time_embed.0.weight", &[16, 8]),
            ("out.2.weight", &[4, 16, 3, 3]),
            // Same name and shape, but the layer holds a tensor the source's does not.
            ("input_blocks.1.1.proj_out.weight", &[8, 8, 1, 1]),
            ("input_blocks.1.1.qkv.weight", &[24, 8, 1, 1]),
            ("label_embed.0.weight", &[10, 8]),
        ]);
        let plan = plan(&theirs, &ours);
        assert_eq!(plan.taken, ["time_embed.0"]);
        assert_eq!(plan.widened, [("input_blocks.0.0".to_string(), 4, 7)]);
        assert_eq!(plan.fresh, ["input_blocks.1.1", "label_embed.0", "out.2"]);
        assert!(plan.to_string().contains("4 -> 7 input channels"), "{plan}");
    }

    #[test]
    fn a_widened_weight_keeps_the_source_channels_and_zeros_the_new_ones() {
        let source = vec![
            (
                "input_blocks.0.0.weight".to_string(),
                Tensor::ones([2, 1, 1, 1], tch::kind::FLOAT_CPU),
            ),
            (
                "input_blocks.0.0.bias".to_string(),
                Tensor::full([2], 3.0, tch::kind::FLOAT_CPU),
            ),
        ];
        let ours = vec![
            (
                "input_blocks.0.0.weight".to_string(),
                Tensor::full([2, 3, 1, 1], 9.0, tch::kind::FLOAT_CPU),
            ),
            (
                "input_blocks.0.0.bias".to_string(),
                Tensor::zeros([2], tch::kind::FLOAT_CPU),
            ),
            (
                "d.0.weight".to_string(),
                Tensor::full([1], 5.0, tch::kind::FLOAT_CPU),
            ),
        ];
        let plan = plan(&shapes_of(&source), &shapes_of(&ours));
        apply(&plan, &source, &ours);
        let weight = Vec::<f32>::try_from(ours[0].1.flatten(0, -1)).unwrap();
        assert_eq!(weight, [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        assert_eq!(Vec::<f32>::try_from(&ours[1].1).unwrap(), [3.0, 3.0]);
        assert_eq!(
            Vec::<f32>::try_from(&ours[2].1).unwrap(),
            [5.0],
            "fresh stays fresh"
        );
    }
}
