//! The conditioning side of a diffusion model on tch: how a training batch's captions, labels
//! or images, and a sampling request's prompts, become the denoiser's [`Condition`]. Prompts
//! follow the rules every engine shares (`ldm_core::conditions`).

use ldm_core::conditions::{class_ids, TextPrompts};
use ldm_core::layout::LayoutVocabulary;
use ldm_core::semantic::class_shares;
use ldm_core::TextTokenizer;
use ldm_data::{Batch, ImageFolder};
use ldm_nn::ModelConfig;
use tch::{Device, Kind, Tensor};

use crate::autoencoder::encode_mode;
use crate::denoiser::Condition;
use crate::latents::{LatentCache, Window};
use crate::tensors::images_tensor;
use crate::{TchOps, TrainError};

pub enum Conditioner {
    None,
    Text {
        // Boxed: the tokenizer is large next to the other variants.
        tokenizer: Box<TextTokenizer>,
        max_length: usize,
        layout: Option<LayoutVocabulary>,
    },
    Class {
        classes: usize,
        /// Id i is `names[i]`.
        names: Vec<String>,
    },
    SuperResolution,
    Inpainting,
    /// Semantic maps of the training folder's rows (`ImageFolder::load_semantic_map`).
    SemanticMap {
        classes: usize,
        folder: Box<ImageFolder>,
    },
}

impl Conditioner {
    /// Whether the model has a conditioning encoder, which guidance needs.
    pub fn guides(&self) -> bool {
        matches!(self, Conditioner::Text { .. } | Conditioner::Class { .. })
    }

    /// The condition of a sampling batch: the prompts (captions, or class names or ids), then,
    /// when `guided`, the unconditional rows (`negative` prompt, or the null class).
    pub fn prompts(
        &self,
        prompts: &[String],
        negative: &str,
        guided: bool,
        device: Device,
    ) -> Result<Condition, TrainError> {
        Ok(match self {
            Conditioner::None => Condition::None,
            Conditioner::Text {
                tokenizer,
                max_length,
                layout,
            } => {
                let text = TextPrompts {
                    tokenizer,
                    layout: layout.as_ref(),
                    max_length: *max_length,
                };
                let ids = text.ids(prompts, negative, guided)?;
                let rows = ids.len() / max_length;
                Condition::Ids(
                    Tensor::from_slice(&ids)
                        .reshape([rows as i64, *max_length as i64])
                        .to_device(device),
                )
            }
            Conditioner::Class { classes, names } => {
                let ids = class_ids(prompts, *classes, names, guided)?;
                Condition::Ids(Tensor::from_slice(&ids).to_device(device))
            }
            Conditioner::SuperResolution
            | Conditioner::Inpainting
            | Conditioner::SemanticMap { .. } => return Err(TrainError::NeedsImage),
        })
    }

    /// The condition of a training batch; `dropped[i]` replaces image i's caption or label by
    /// the unconditional one.
    #[allow(clippy::too_many_arguments)]
    pub fn batch(
        &self,
        batch: &Batch,
        dropped: &[bool],
        crops: (&[Option<Window>], Option<usize>),
        cache: &LatentCache,
        first_stage: Option<&mut TchOps>,
        config: &ModelConfig,
        scale_factor: f64,
        device: Device,
    ) -> Result<Condition, TrainError> {
        Ok(match self {
            Conditioner::None => Condition::None,
            Conditioner::Text { .. } => {
                let texts: Vec<String> = batch
                    .texts
                    .iter()
                    .zip(dropped)
                    .map(|(t, &d)| if d { String::new() } else { t.clone() })
                    .collect();
                self.prompts(&texts, "", false, device)?
            }
            Conditioner::Class { classes, .. } => {
                let null = *classes as i64;
                let ids: Vec<i64> = batch
                    .labels
                    .iter()
                    .zip(dropped)
                    .map(|(l, &d)| match (d, l) {
                        (false, Some(l)) => *l as i64,
                        _ => null,
                    })
                    .collect();
                Condition::Ids(Tensor::from_slice(&ids).to_device(device))
            }
            Conditioner::SuperResolution => {
                Condition::Concat(cache.low_resolution(&batch.rows, device))
            }
            Conditioner::SemanticMap { classes, folder } => Condition::Concat(semantic_condition(
                folder,
                &batch.rows,
                crops,
                *classes,
                config,
                device,
            )?),
            Conditioner::Inpainting => {
                let images = images_tensor(&batch.images, batch.shape, device);
                let mask = random_boxes(batch.shape[0], config.resolution, device);
                Condition::Concat(inpainting_condition(
                    &images,
                    &mask,
                    first_stage,
                    config,
                    scale_factor,
                )?)
            }
        })
    }
}

/// The semantic-map model's extra channels for folder rows `rows`: each map's class shares
/// at the latent's size ([`class_shares`], as every engine builds them); where `windows` holds
/// one (random crops), of that window of the map taken at `crop_from` pixels a side.
pub fn semantic_condition(
    folder: &ImageFolder,
    rows: &[usize],
    (windows, crop_from): (&[Option<Window>], Option<usize>),
    classes: usize,
    config: &ModelConfig,
    device: Device,
) -> Result<Tensor, TrainError> {
    let (size, f) = (config.resolution, config.autoencoder.factor);
    let mut shares = Vec::with_capacity(rows.len() * classes * (size / f) * (size / f));
    for (i, &row) in rows.iter().enumerate() {
        let map = match (windows.get(i).copied().flatten(), crop_from) {
            (Some(w), Some(side)) => folder
                .load_semantic_map(row, side as u32)?
                .window(w.x * f, w.y * f, size)
                .expect("windows are drawn inside the crop side"),
            _ => folder.load_semantic_map(row, size as u32)?,
        };
        let row_shares = class_shares(&map, classes, f).map_err(|e| {
            TrainError::Mismatch(format!(
                "{}: {e}",
                folder.records().nth(row).map_or("", |r| &r.file_name)
            ))
        })?;
        shares.extend(row_shares);
    }
    let side = (size / f) as i64;
    Ok(Tensor::from_slice(&shares)
        .reshape([rows.len() as i64, classes as i64, side, side])
        .to_device(device))
}

/// One random rectangle per image, 1 inside (the region to fill): sides from a quarter to
/// three quarters of the image.
fn random_boxes(count: usize, size: usize, device: Device) -> Tensor {
    let draws: Vec<f32> = Tensor::rand([count as i64, 4], (Kind::Float, Device::Cpu))
        .flatten(0, -1)
        .try_into()
        .expect("f32");
    let mut mask = vec![0f32; count * size * size];
    for (i, d) in draws.chunks(4).enumerate() {
        let (w, h) = (
            ((0.25 + 0.5 * d[0]) * size as f32) as usize,
            ((0.25 + 0.5 * d[1]) * size as f32) as usize,
        );
        let (x0, y0) = (
            (d[2] * (size - w) as f32) as usize,
            (d[3] * (size - h) as f32) as usize,
        );
        for y in y0..y0 + h {
            mask[i * size * size + y * size + x0..i * size * size + y * size + x0 + w].fill(1.0);
        }
    }
    Tensor::from_slice(&mask)
        .reshape([count as i64, 1, size as i64, size as i64])
        .to_device(device)
}

/// The inpainting model's extra channels: the encoded masked image (scaled) and the mask at
/// the latent's size (1 where the model must fill in).
pub fn inpainting_condition(
    images: &Tensor,
    mask: &Tensor,
    first_stage: Option<&mut TchOps>,
    config: &ModelConfig,
    scale_factor: f64,
) -> Result<Tensor, TrainError> {
    let _guard = tch::no_grad_guard();
    let masked = images * (1.0 - mask);
    let latent = match first_stage {
        Some(ops) => encode_mode(ops, config, &masked)? * scale_factor,
        None => masked,
    };
    let f = config.autoencoder.factor as i64;
    let small = mask.avg_pool2d([f, f], [f, f], [0, 0], false, true, None::<i64>);
    Ok(Tensor::cat(&[latent, small], 1))
}
