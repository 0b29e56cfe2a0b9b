//! The evaluation network: a small convolutional classifier whose penultimate activations are
//! the feature space of FID, KID and precision/recall, and whose heads judge the conditioning
//! accuracy of generated images (an emoji's category, ...).
//!
//! No pretrained Inception network can be had here, so the project trains this one on its own
//! data; figures measured with it are comparable only with each other.
//!
//! Per level: 3x3 conv, GroupNorm, SiLU, then a stride-2 3x3 conv, GroupNorm, SiLU. A final
//! convolution as large as the remaining map gives the `features` vector ([B, feature_dim],
//! after SiLU); each head is a linear layer on it.

use serde::{Deserialize, Serialize};

use crate::layers::{conv2d, conv3x3, group_norm, linear, Path};
use crate::ops::{Dim, Ops, Result};
use crate::NnError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// Side of the square input images; must be divisible by 2^levels.
    pub resolution: usize,
    /// Channels of each level (each level halves the map); multiples of 8.
    pub channels: Vec<usize>,
    pub feature_dim: usize,
    pub heads: Vec<Head>,
}

/// One classification task: a metadata column and its classes, in output order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub column: String,
    pub classes: Vec<String>,
}

/// What the network computes for a batch.
pub struct ClassifierOutput<T> {
    pub features: T,
    /// One [B, classes] tensor per head.
    pub logits: Vec<T>,
}

impl ClassifierConfig {
    /// The shipped architecture (about 1.1 M parameters) for `resolution`-pixel images.
    pub fn new(resolution: usize, heads: Vec<Head>) -> Self {
        Self {
            resolution,
            channels: vec![32, 64, 128, 128],
            feature_dim: 256,
            heads,
        }
    }

    pub fn validate(&self) -> std::result::Result<(), NnError> {
        let levels = self.channels.len();
        if levels == 0 || self.resolution == 0 || !self.resolution.is_multiple_of(1 << levels) {
            return Err(NnError::config(
                "classifier.resolution",
                format!(
                    "{} must be a positive multiple of 2^{levels} (one halving per level)",
                    self.resolution
                ),
            ));
        }
        if let Some(c) = self.channels.iter().find(|&&c| c == 0 || c % 8 != 0) {
            return Err(NnError::config(
                "classifier.channels",
                format!("{c} is not a positive multiple of 8 (GroupNorm uses 8 groups)"),
            ));
        }
        if self.feature_dim == 0 {
            return Err(NnError::config(
                "classifier.feature_dim",
                "must be positive",
            ));
        }
        if let Some(h) = self.heads.iter().find(|h| h.classes.len() < 2) {
            return Err(NnError::config(
                "classifier.heads",
                format!("column '{}' has fewer than two classes", h.column),
            ));
        }
        Ok(())
    }
}

/// Features and logits of `images` [B, 3, resolution, resolution] in [-1, 1].
pub fn forward<O: Ops>(
    o: &mut O,
    config: &ClassifierConfig,
    images: &O::T,
) -> Result<ClassifierOutput<O::T>> {
    let root = Path::root("classifier");
    let mut x = o.alias(images);
    let mut cin = 3;
    for (level, &c) in config.channels.iter().enumerate() {
        let p = root.pp("levels").pp(level);
        x = conv3x3(o, &p.pp("conv"), &x, cin, c)?;
        x = group_norm(o, &p.pp("norm"), &x, c, 8, 1e-5)?;
        x = o.silu(&x)?;
        x = conv2d(o, &p.pp("down"), &x, c, c, 3, 2, 1, false)?;
        x = group_norm(o, &p.pp("down_norm"), &x, c, 8, 1e-5)?;
        x = o.silu(&x)?;
        cin = c;
    }
    let side = config.resolution >> config.channels.len();
    let pooled = conv2d(
        o,
        &root.pp("pool"),
        &x,
        cin,
        config.feature_dim,
        side,
        1,
        0,
        false,
    )?;
    let flat = o.reshape(&pooled, &[Dim::Keep, Dim::Infer])?;
    let features = o.silu(&flat)?;
    let logits = config
        .heads
        .iter()
        .map(|h| {
            linear(
                o,
                &root.pp("heads").pp(&h.column),
                &features,
                config.feature_dim,
                h.classes.len(),
                true,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ClassifierOutput { features, logits })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShapeOps;

    fn config() -> ClassifierConfig {
        ClassifierConfig::new(
            64,
            vec![Head {
                column: "label".into(),
                classes: vec!["a".into(), "b".into(), "c".into()],
            }],
        )
    }

    #[test]
    fn features_and_logits_have_the_configured_shapes() {
        let mut o = ShapeOps::default();
        let out = forward(&mut o, &config(), &vec![5, 3, 64, 64]).unwrap();
        assert_eq!(out.features, [5, 256]);
        assert_eq!(out.logits[0], [5, 3]);
        assert!(o.parameter_count() < 1_500_000, "{}", o.parameter_count());
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let mut c = config();
        c.resolution = 40;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("classifier.resolution"));
        let mut c = config();
        c.heads[0].classes.truncate(1);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("fewer than two classes"));
    }
}
