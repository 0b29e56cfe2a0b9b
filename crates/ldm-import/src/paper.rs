//! The weights of the paper's own checkpoints that Stable Diffusion's files do not have, under
//! the names and layouts of this project's networks:
//!
//! - the UNet's plain attention blocks (unconditional and concatenation models), whose 1-D
//!   convolutions hold q, k and v interleaved per head (the reference's `QKVAttentionLegacy`);
//! - the jointly trained text transformer, an x-transformers `TransformerWrapper` under
//!   `cond_stage_model.transformer.` (`BERTEmbedder`);
//! - the class embedder's table (`ClassEmbedder`), with or without the null class that
//!   classifier-free guidance conditions on.

use ldm_nn::UnetConfig;

use crate::{ImportError, RawTensor, Weights};

/// The UNet's attention blocks as this project computes them: 1-D convolution weights
/// `[o, i, 1]` as 2-D `[o, i, 1, 1]`, and the qkv projection's rows from the reference's
/// per-head order (head h: its q, k, v rows together, row h·3d + j·d + i) to q, k, v blocks
/// split into heads afterwards (row j·c + h·d + i).
pub fn attention_blocks(unet: Weights, cfg: &UnetConfig) -> Result<Weights, ImportError> {
    unet.into_iter()
        .map(|(name, mut tensor)| {
            if tensor.shape.len() == 3 && tensor.shape[2] == 1 {
                tensor.shape.push(1);
            }
            if name.ends_with(".qkv.weight") || name.ends_with(".qkv.bias") {
                tensor = qkv_from_legacy(&name, &tensor, cfg)?;
            }
            Ok((name, tensor))
        })
        .collect()
}

fn qkv_from_legacy(name: &str, t: &RawTensor, cfg: &UnetConfig) -> Result<RawTensor, ImportError> {
    let bad = |message: String| ImportError::Mismatch {
        what: format!("the UNet tensor {name}"),
        message,
    };
    let rows = *t
        .shape
        .first()
        .ok_or_else(|| bad("it is a scalar".into()))?;
    if rows == 0 || !rows.is_multiple_of(3) || !t.data.len().is_multiple_of(rows) {
        return Err(bad(format!("{rows} rows are not q, k and v of equal size")));
    }
    let c = rows / 3;
    let (heads, d) = cfg.head_layout(c).map_err(bad)?;
    let row = t.data.len() / rows;
    let mut data = vec![0u8; t.data.len()];
    for h in 0..heads {
        for j in 0..3 {
            let from = (h * 3 * d + j * d) * row;
            let to = (j * c + h * d) * row;
            data[to..to + d * row].copy_from_slice(&t.data[from..from + d * row]);
        }
    }
    Ok(RawTensor {
        dtype: t.dtype,
        shape: t.shape.clone(),
        data,
    })
}

/// x-transformers' encoder (`transformer.*` of the reference's `BERTEmbedder` and
/// `TransformerEmbedder`) under the paper's text encoder's names. Its layers alternate
/// attention (even) and feed-forward (odd), each `[norm, module, residual]`; the language
/// model head `to_logits`, which conditioning never uses, is dropped.
pub fn x_transformer(weights: Weights) -> Result<Weights, ImportError> {
    let mut out = Weights::new();
    for (key, tensor) in weights {
        let bad = || ImportError::Mismatch {
            what: "the text transformer (cond_stage_model.*)".into(),
            message: format!("tensor '{key}' is not part of x-transformers' encoder"),
        };
        let name = match key.as_str() {
            "transformer.token_emb.weight" => "token_emb.weight".to_string(),
            "transformer.pos_emb.emb.weight" => "pos_emb.weight".to_string(),
            "transformer.norm.weight" => "norm.weight".to_string(),
            "transformer.norm.bias" => "norm.bias".to_string(),
            k if k.starts_with("transformer.to_logits.") => continue,
            k => {
                let rest = k
                    .strip_prefix("transformer.attn_layers.layers.")
                    .ok_or_else(bad)?;
                let (n, inner) = rest.split_once('.').ok_or_else(bad)?;
                let n: usize = n.parse().map_err(|_| bad())?;
                let (block, attention) = (n / 2, n.is_multiple_of(2));
                let mapped = match (attention, inner) {
                    (true, "0.weight" | "0.bias") => format!("attn_norm.{}", &inner[2..]),
                    (false, "0.weight" | "0.bias") => format!("ff_norm.{}", &inner[2..]),
                    (true, "1.to_q.weight" | "1.to_k.weight" | "1.to_v.weight") => {
                        format!("attn.{}", &inner[2..])
                    }
                    (true, "1.to_out.weight" | "1.to_out.bias") => {
                        format!("attn.to_out.0.{}", &inner[9..])
                    }
                    (false, "1.net.0.0.weight" | "1.net.0.0.bias") => {
                        format!("ff.0.{}", &inner[10..])
                    }
                    (false, "1.net.2.weight" | "1.net.2.bias") => format!("ff.2.{}", &inner[8..]),
                    _ => return Err(bad()),
                };
                format!("layers.{block}.{mapped}")
            }
        };
        out.insert(name, tensor);
    }
    Ok(out)
}

/// The class embedder's table for `classes` labels plus the null class: as it is when the
/// checkpoint has that row (the reference's guided ImageNet model, 1001 rows), else with a
/// zero row appended, for a model trained without one (which then samples unguided).
/// Returns whether the null class was trained.
pub fn class_table(mut weights: Weights, classes: usize) -> Result<(Weights, bool), ImportError> {
    let bad = |message: String| ImportError::Mismatch {
        what: "the class embedder (cond_stage_model.*)".into(),
        message,
    };
    if let Some(other) = weights.keys().find(|k| *k != "embedding.weight") {
        return Err(bad(format!(
            "tensor '{other}' is not part of a ClassEmbedder"
        )));
    }
    let table = weights
        .get_mut("embedding.weight")
        .ok_or_else(|| bad("'embedding.weight' is missing".into()))?;
    match table.shape.first() {
        Some(&rows) if rows == classes + 1 => Ok((weights, true)),
        Some(&rows) if rows == classes && table.shape.len() == 2 => {
            let width = table.shape[1];
            table
                .data
                .extend(std::iter::repeat_n(0u8, width * table.dtype.size()));
            table.shape[0] += 1;
            Ok((weights, false))
        }
        _ => Err(bad(format!(
            "the table is {:?}, expected {classes} or {} rows",
            table.shape,
            classes + 1
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn rows(values: &[f32], shape: Vec<usize>) -> RawTensor {
        RawTensor {
            dtype: DType::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    #[test]
    fn legacy_qkv_rows_become_q_k_v_blocks() {
        // Two heads of two channels: legacy rows are q0 q0 k0 k0 v0 v0 q1 q1 k1 k1 v1 v1.
        let legacy = [0., 1., 10., 11., 20., 21., 2., 3., 12., 13., 22., 23.];
        let cfg = UnetConfig {
            heads: None,
            head_channels: Some(2),
            ..ldm_nn::ModelConfig::parse(include_str!("../../../models/tiny-text.toml"))
                .unwrap()
                .unet
        };
        let mut unet = Weights::new();
        unet.insert("middle_block.1.qkv.bias".into(), rows(&legacy, vec![12]));
        let out = attention_blocks(unet, &cfg).unwrap();
        let got = out["middle_block.1.qkv.bias"].to_f32().unwrap();
        assert_eq!(
            got,
            [0., 1., 2., 3., 10., 11., 12., 13., 20., 21., 22., 23.]
        );
    }

    #[test]
    fn a_class_table_without_the_null_class_gets_a_zero_row() {
        let mut w = Weights::new();
        w.insert(
            "embedding.weight".into(),
            rows(&[1., 2., 3., 4.], vec![2, 2]),
        );
        let (w, trained) = class_table(w, 2).unwrap();
        assert!(!trained);
        assert_eq!(w["embedding.weight"].shape, [3, 2]);
        assert_eq!(w["embedding.weight"].to_f32().unwrap()[4..], [0., 0.]);
        let mut w = Weights::new();
        w.insert("embedding.weight".into(), rows(&[1.; 4], vec![4, 1]));
        let err = class_table(w, 2).err().unwrap().to_string();
        assert!(err.contains("expected 2 or 3 rows"), "{err}");
    }

    #[test]
    fn x_transformer_names_map_and_strangers_are_refused() {
        let t = rows(&[1.], vec![1]);
        let mut w = Weights::new();
        for k in [
            "transformer.attn_layers.layers.2.1.to_out.bias",
            "transformer.attn_layers.layers.3.1.net.0.0.weight",
            "transformer.attn_layers.layers.3.0.bias",
            "transformer.to_logits.weight",
        ] {
            w.insert(k.into(), t.clone());
        }
        let names: Vec<String> = x_transformer(w).unwrap().into_keys().collect();
        assert_eq!(
            names,
            [
                "layers.1.attn.to_out.0.bias",
                "layers.1.ff.0.weight",
                "layers.1.ff_norm.bias"
            ]
        );
        let mut w = Weights::new();
        w.insert("transformer.attn_layers.layers.1.1.to_q.weight".into(), t);
        let err = x_transformer(w).err().unwrap().to_string();
        assert!(err.contains("layers.1.1.to_q.weight"), "{err}");
    }
}
