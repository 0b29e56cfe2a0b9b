//! Quality metrics, pure Rust and engine-free.
//!
//! [`image_quality`] compares an image with its reference (autoencoder reconstructions,
//! super-resolution): PSNR, SSIM and MS-SSIM. [`distribution`] compares two sets of feature
//! vectors (generated against held-out images): FID, KID, and precision and recall.
//! [`Evaluator`] runs the project's own feature and classifier network on tract.

pub mod distribution;
pub mod evaluator;
pub mod image_quality;

pub use distribution::{fid, kid, precision_recall, Kid, PrecisionRecall};
pub use evaluator::{Evaluator, EvaluatorError, EvaluatorManifest, Judged};
pub use image_quality::{ms_ssim, psnr, ssim, PSNR_CAP};
