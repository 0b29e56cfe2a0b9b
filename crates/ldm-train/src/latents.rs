//! The data set in latent space: every image encoded once by the frozen first stage and cached
//! in the run folder (`latents.safetensors`), so diffusion training never runs the encoder on
//! the same image twice.

use std::path::Path;

use indicatif::ProgressBar;
use ldm_data::ImageFolder;
use ldm_nn::{autoencoder, FirstStage, ModelConfig};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::{gaussian, TchOps, TrainError};
use ldm_data::write_atomic;

const FILE: &str = "latents.safetensors";
const ABOUT: &str = "latents.json";
const BATCH: usize = 64;

/// What a cache was computed from: it is reused only for the same data and first stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Provenance {
    data_fingerprint: String,
    autoencoder_checkpoint: String,
    resolution: usize,
    /// The side images are also encoded at for random crops (caches saved before: none).
    #[serde(default)]
    crop_from: Option<usize>,
}

/// Where a training-size crop lies in the image taken at the crop side: its top-left corner,
/// in latent cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub x: usize,
    pub y: usize,
}

pub struct LatentCache {
    /// Per image: the posterior's moments (KL), the pre-quantisation latent (VQ) or the image
    /// itself (no first stage). On the CPU; batches move to the training device.
    encoded: Tensor,
    /// Per image, the image downsampled f times (super-resolution conditioning).
    low_resolution: Tensor,
    /// Per image, `encoded` of the image taken at the crop side (random crops only).
    large: Option<Tensor>,
    regularizer: FirstStage,
}

impl LatentCache {
    /// Loads the run's cache when it was made from the same data, first stage and crop side,
    /// or encodes the folder (showing progress on `bar`) and writes it.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        folder: &ImageFolder,
        config: &ModelConfig,
        mut first_stage: Option<&mut TchOps>,
        data_fingerprint: &str,
        autoencoder_checkpoint: &str,
        crop_from: Option<usize>,
        run_dir: &Path,
        bar: &ProgressBar,
    ) -> Result<Self, TrainError> {
        let provenance = Provenance {
            data_fingerprint: data_fingerprint.to_string(),
            autoencoder_checkpoint: autoencoder_checkpoint.to_string(),
            resolution: config.resolution,
            crop_from,
        };
        let regularizer = config.autoencoder.regularizer;
        if let Some(cache) = Self::load(run_dir, &provenance, regularizer) {
            return Ok(cache);
        }
        let side = config.resolution;
        let (encoded, low_resolution) =
            encode_folder(folder, config, first_stage.as_deref_mut(), side, bar)?;
        let large = match crop_from {
            Some(side) => Some(encode_folder(folder, config, first_stage, side, bar)?.0),
            None => None,
        };
        let path = run_dir.join(FILE);
        let mut tensors = vec![("encoded", &encoded), ("low_resolution", &low_resolution)];
        tensors.extend(large.as_ref().map(|large| ("large", large)));
        Tensor::write_safetensors(&tensors, path.with_extension("tmp"))?;
        std::fs::rename(path.with_extension("tmp"), &path).map_err(|e| TrainError::io(&path, e))?;
        let about = run_dir.join(ABOUT);
        let json = serde_json::to_vec_pretty(&provenance).expect("provenance serialises");
        write_atomic(&about, &json).map_err(|e| TrainError::io(&about, e))?;
        Ok(Self {
            encoded,
            low_resolution,
            large,
            regularizer,
        })
    }

    fn load(run_dir: &Path, provenance: &Provenance, regularizer: FirstStage) -> Option<Self> {
        let saved: Provenance =
            serde_json::from_slice(&std::fs::read(run_dir.join(ABOUT)).ok()?).ok()?;
        if saved != *provenance {
            return None;
        }
        let tensors = Tensor::read_safetensors(run_dir.join(FILE)).ok()?;
        let get = |name: &str| {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
        };
        let large = match provenance.crop_from {
            Some(_) => Some(get("large")?),
            None => None,
        };
        Some(Self {
            encoded: get("encoded")?,
            low_resolution: get("low_resolution")?,
            large,
            regularizer,
        })
    }

    pub fn len(&self) -> usize {
        self.encoded.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Latents of `rows`, unscaled: a draw from the posterior (KL) or the encoding itself; of
    /// the whole image, or where `windows` holds one, of that window of the image taken at the
    /// crop side.
    pub fn latents(&self, rows: &[usize], windows: &[Option<Window>], device: Device) -> Tensor {
        let picked = match &self.large {
            Some(large) if windows.iter().any(Option::is_some) => {
                let side = self.encoded.size()[2];
                let each: Vec<Tensor> = rows
                    .iter()
                    .enumerate()
                    .map(|(i, &row)| match windows.get(i).copied().flatten() {
                        Some(w) => large
                            .get(row as i64)
                            .narrow(1, w.y as i64, side)
                            .narrow(2, w.x as i64, side),
                        None => self.encoded.get(row as i64),
                    })
                    .collect();
                Tensor::stack(&each, 0).to_device(device)
            }
            _ => self.pick(&self.encoded, rows, device),
        };
        match self.regularizer {
            FirstStage::Kl => gaussian::sample(&picked),
            _ => picked,
        }
    }

    /// The low-resolution images of `rows`, in [-1, 1].
    pub fn low_resolution(&self, rows: &[usize], device: Device) -> Tensor {
        self.pick(&self.low_resolution, rows, device)
    }

    fn pick(&self, from: &Tensor, rows: &[usize], device: Device) -> Tensor {
        let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        from.index_select(0, &Tensor::from_slice(&index))
            .to_device(device)
    }
}

/// Encodes every image of the folder in file order, taken at `size` pixels a side; beside
/// it, each image downsampled f times.
fn encode_folder(
    folder: &ImageFolder,
    config: &ModelConfig,
    mut first_stage: Option<&mut TchOps>,
    size: usize,
    bar: &ProgressBar,
) -> Result<(Tensor, Tensor), TrainError> {
    let _guard = tch::no_grad_guard();
    let f = config.autoencoder.factor as i64;
    bar.set_length(folder.len() as u64);
    bar.set_position(0);
    bar.set_message(format!("encoding the data set at {size}x{size}"));
    let (mut encoded, mut low) = (Vec::new(), Vec::new());
    for start in (0..folder.len()).step_by(BATCH) {
        let rows = start..(start + BATCH).min(folder.len());
        let count = rows.len() as i64;
        let mut pixels = Vec::new();
        for row in rows {
            pixels.extend(folder.load_chw(row, size as u32)?);
        }
        let images = Tensor::from_slice(&pixels).reshape([count, 3, size as i64, size as i64]);
        low.push(images.avg_pool2d([f, f], [f, f], [0, 0], false, true, None::<i64>));
        let encoded_batch = match first_stage.as_deref_mut() {
            Some(ops) => {
                let device = ops.device();
                autoencoder::encode(ops, &config.autoencoder, size, &images.to_device(device))?
                    .to_device(Device::Cpu)
            }
            None => images,
        };
        encoded.push(encoded_batch.to_kind(Kind::Float));
        bar.inc(count as u64);
    }
    Ok((Tensor::cat(&encoded, 0), Tensor::cat(&low, 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_takes_its_cells_of_the_larger_image_and_the_rest_stay_whole() {
        let cache = LatentCache {
            encoded: Tensor::zeros([2, 1, 2, 2], (Kind::Float, Device::Cpu)),
            low_resolution: Tensor::zeros([2, 3, 1, 1], (Kind::Float, Device::Cpu)),
            large: Some(Tensor::arange(32, (Kind::Float, Device::Cpu)).view([2, 1, 4, 4])),
            regularizer: FirstStage::Vq,
        };
        let windows = [None, Some(Window { x: 1, y: 2 })];
        let latents = cache.latents(&[1, 0], &windows, Device::Cpu);
        let values = Vec::<f32>::try_from(latents.flatten(0, -1)).unwrap();
        assert_eq!(values, [0.0, 0.0, 0.0, 0.0, 9.0, 10.0, 13.0, 14.0]);
    }
}
