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
}

pub struct LatentCache {
    /// Per image: the posterior's moments (KL), the pre-quantisation latent (VQ) or the image
    /// itself (no first stage). On the CPU; batches move to the training device.
    encoded: Tensor,
    /// Per image, the image downsampled f times (super-resolution conditioning).
    low_resolution: Tensor,
    regularizer: FirstStage,
}

impl LatentCache {
    /// Loads the run's cache when it was made from the same data and first stage, or encodes
    /// the folder (showing progress on `bar`) and writes it.
    pub fn open(
        folder: &ImageFolder,
        config: &ModelConfig,
        first_stage: Option<&mut TchOps>,
        data_fingerprint: &str,
        autoencoder_checkpoint: &str,
        run_dir: &Path,
        bar: &ProgressBar,
    ) -> Result<Self, TrainError> {
        let provenance = Provenance {
            data_fingerprint: data_fingerprint.to_string(),
            autoencoder_checkpoint: autoencoder_checkpoint.to_string(),
            resolution: config.resolution,
        };
        let regularizer = config.autoencoder.regularizer;
        if let Some(cache) = Self::load(run_dir, &provenance, regularizer) {
            return Ok(cache);
        }
        let (encoded, low_resolution) = encode_folder(folder, config, first_stage, bar)?;
        let path = run_dir.join(FILE);
        Tensor::write_safetensors(
            &[("encoded", &encoded), ("low_resolution", &low_resolution)],
            path.with_extension("tmp"),
        )?;
        std::fs::rename(path.with_extension("tmp"), &path).map_err(|e| TrainError::io(&path, e))?;
        let about = run_dir.join(ABOUT);
        let json = serde_json::to_vec_pretty(&provenance).expect("provenance serialises");
        write_atomic(&about, &json).map_err(|e| TrainError::io(&about, e))?;
        Ok(Self {
            encoded,
            low_resolution,
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
        Some(Self {
            encoded: get("encoded")?,
            low_resolution: get("low_resolution")?,
            regularizer,
        })
    }

    pub fn len(&self) -> usize {
        self.encoded.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Latents of `rows`, unscaled: a draw from the posterior (KL) or the encoding itself.
    pub fn latents(&self, rows: &[usize], device: Device) -> Tensor {
        let picked = self.pick(&self.encoded, rows, device);
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

/// Encodes every image of the folder in file order.
fn encode_folder(
    folder: &ImageFolder,
    config: &ModelConfig,
    mut first_stage: Option<&mut TchOps>,
    bar: &ProgressBar,
) -> Result<(Tensor, Tensor), TrainError> {
    let _guard = tch::no_grad_guard();
    let (size, f) = (config.resolution, config.autoencoder.factor as i64);
    bar.set_length(folder.len() as u64);
    bar.set_message("encoding the data set");
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
