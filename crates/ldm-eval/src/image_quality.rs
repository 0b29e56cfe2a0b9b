//! Full-reference image quality: PSNR, SSIM (Wang et al. 2004) and MS-SSIM (Wang et al.
//! 2003), on 8-bit RGB images scaled to [0, 1].
//!
//! SSIM uses the paper's 11-tap Gaussian window (sigma 1.5) over the valid region, K1 = 0.01,
//! K2 = 0.03, averaged over the three channels. MS-SSIM uses the paper's five scale weights
//! but only the scales at which the window still fits (side >= 11): a 64x64 image has three
//! (64, 32, 16), whose weights are renormalised to sum to 1. Written here because no
//! maintained Rust crate computes either on plain pixel buffers.

use image::RgbImage;

/// PSNR of identical images (infinite in theory), in dB.
pub const PSNR_CAP: f64 = 100.0;

const WINDOW: usize = 11;
const SIGMA: f64 = 1.5;
const C1: f64 = 0.01 * 0.01;
const C2: f64 = 0.03 * 0.03;
/// Weights of the five scales, finest first (Wang et al. 2003).
const MS_WEIGHTS: [f64; 5] = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333];

/// Two images that cannot be compared pixel by pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeMismatch {
    pub reference: (u32, u32),
    pub image: (u32, u32),
}

impl std::fmt::Display for SizeMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "image is {}x{} but its reference is {}x{}",
            self.image.0, self.image.1, self.reference.0, self.reference.1
        )
    }
}

impl std::error::Error for SizeMismatch {}

fn same_size(reference: &RgbImage, image: &RgbImage) -> Result<(), SizeMismatch> {
    if reference.dimensions() == image.dimensions() {
        Ok(())
    } else {
        Err(SizeMismatch {
            reference: reference.dimensions(),
            image: image.dimensions(),
        })
    }
}

/// PSNR in dB over all channels; [`PSNR_CAP`] for identical images.
pub fn psnr(reference: &RgbImage, image: &RgbImage) -> Result<f64, SizeMismatch> {
    same_size(reference, image)?;
    let squared: f64 = reference
        .as_raw()
        .iter()
        .zip(image.as_raw())
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let mse = squared / (reference.as_raw().len() as f64 * 255.0 * 255.0);
    Ok(if mse == 0.0 {
        PSNR_CAP
    } else {
        (-10.0 * mse.log10()).min(PSNR_CAP)
    })
}

/// Mean SSIM over the channels, in [-1, 1]; 1 for identical images.
pub fn ssim(reference: &RgbImage, image: &RgbImage) -> Result<f64, SizeMismatch> {
    same_size(reference, image)?;
    let (a, b) = (planes(reference), planes(image));
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| {
            let (luminance, contrast_structure) = ssim_terms(x, y);
            mean_product(&luminance, &contrast_structure)
        })
        .sum::<f64>()
        / 3.0)
}

/// MS-SSIM over the scales the window fits (see the module docs), in [0, 1].
pub fn ms_ssim(reference: &RgbImage, image: &RgbImage) -> Result<f64, SizeMismatch> {
    same_size(reference, image)?;
    let (w, h) = reference.dimensions();
    let mut scales = 1;
    while scales < MS_WEIGHTS.len() && (w.min(h) as usize >> scales) >= WINDOW {
        scales += 1;
    }
    let total: f64 = MS_WEIGHTS[..scales].iter().sum();
    let mut score = 0.0;
    for (x, y) in planes(reference).into_iter().zip(planes(image)) {
        let (mut x, mut y) = (x, y);
        let mut channel = 1.0;
        for (scale, weight) in MS_WEIGHTS[..scales].iter().enumerate() {
            let (luminance, contrast_structure) = ssim_terms(&x, &y);
            // Negative similarity would make fractional powers undefined: floor at 0.
            let term = if scale + 1 == scales {
                mean_product(&luminance, &contrast_structure)
            } else {
                contrast_structure.values.iter().sum::<f64>()
                    / contrast_structure.values.len() as f64
            };
            channel *= term.max(0.0).powf(weight / total);
            x = x.halved();
            y = y.halved();
        }
        score += channel;
    }
    Ok(score / 3.0)
}

/// One channel, row-major, values in [0, 1].
#[derive(Debug, Clone)]
struct Plane {
    width: usize,
    height: usize,
    values: Vec<f64>,
}

impl Plane {
    fn at(&self, x: usize, y: usize) -> f64 {
        self.values[y * self.width + x]
    }

    /// 2x2 average pooling (an odd last row or column is dropped).
    fn halved(&self) -> Plane {
        let (width, height) = (self.width / 2, self.height / 2);
        let mut values = Vec::with_capacity(width * height);
        for y in 0..height {
            for x in 0..width {
                let sum = self.at(2 * x, 2 * y)
                    + self.at(2 * x + 1, 2 * y)
                    + self.at(2 * x, 2 * y + 1)
                    + self.at(2 * x + 1, 2 * y + 1);
                values.push(sum / 4.0);
            }
        }
        Plane {
            width,
            height,
            values,
        }
    }

    fn map2(&self, other: &Plane, f: impl Fn(f64, f64) -> f64) -> Plane {
        Plane {
            width: self.width,
            height: self.height,
            values: self
                .values
                .iter()
                .zip(&other.values)
                .map(|(&a, &b)| f(a, b))
                .collect(),
        }
    }

    /// Separable Gaussian filtering over the valid region (no padding).
    fn blurred(&self, taps: &[f64]) -> Plane {
        let k = taps.len();
        let (out_w, out_h) = (self.width + 1 - k, self.height + 1 - k);
        let mut rows = Vec::with_capacity(out_w * self.height);
        for y in 0..self.height {
            for x in 0..out_w {
                rows.push((0..k).map(|i| taps[i] * self.at(x + i, y)).sum::<f64>());
            }
        }
        let mut values = Vec::with_capacity(out_w * out_h);
        for y in 0..out_h {
            for x in 0..out_w {
                values.push(
                    (0..k)
                        .map(|i| taps[i] * rows[(y + i) * out_w + x])
                        .sum::<f64>(),
                );
            }
        }
        Plane {
            width: out_w,
            height: out_h,
            values,
        }
    }
}

fn planes(image: &RgbImage) -> [Plane; 3] {
    let (w, h) = image.dimensions();
    std::array::from_fn(|c| Plane {
        width: w as usize,
        height: h as usize,
        values: image.pixels().map(|p| p.0[c] as f64 / 255.0).collect(),
    })
}

/// The normalised Gaussian window, shortened to the largest odd length that fits `side`.
fn window(side: usize) -> Vec<f64> {
    let k = WINDOW
        .min(if side % 2 == 1 { side } else { side - 1 })
        .max(1);
    let centre = (k / 2) as f64;
    let taps: Vec<f64> = (0..k)
        .map(|i| (-(i as f64 - centre).powi(2) / (2.0 * SIGMA * SIGMA)).exp())
        .collect();
    let sum: f64 = taps.iter().sum();
    taps.into_iter().map(|t| t / sum).collect()
}

/// The luminance and contrast-structure maps of SSIM.
fn ssim_terms(x: &Plane, y: &Plane) -> (Plane, Plane) {
    let taps = window(x.width.min(x.height));
    let (mx, my) = (x.blurred(&taps), y.blurred(&taps));
    let xx = x.map2(x, |a, b| a * b).blurred(&taps);
    let yy = y.map2(y, |a, b| a * b).blurred(&taps);
    let xy = x.map2(y, |a, b| a * b).blurred(&taps);
    let luminance = mx.map2(&my, |a, b| (2.0 * a * b + C1) / (a * a + b * b + C1));
    let variances = xx
        .map2(&mx, |s, m| s - m * m)
        .map2(&yy.map2(&my, |s, m| s - m * m), |a, b| a + b);
    let covariance = xy.map2(&mx.map2(&my, |a, b| a * b), |s, m| s - m);
    let contrast_structure = covariance.map2(&variances, |c, v| (2.0 * c + C2) / (v + C2));
    (luminance, contrast_structure)
}

fn mean_product(a: &Plane, b: &Plane) -> f64 {
    a.values
        .iter()
        .zip(&b.values)
        .map(|(x, y)| x * y)
        .sum::<f64>()
        / a.values.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_image(seed: u64, side: u32) -> RgbImage {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        RgbImage::from_fn(side, side, |_, _| {
            image::Rgb([rng.random(), rng.random(), rng.random()])
        })
    }

    fn with_noise(image: &RgbImage, amplitude: i32, seed: u64) -> RgbImage {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut out = image.clone();
        for v in out.iter_mut() {
            *v = (*v as i32 + rng.random_range(-amplitude..=amplitude)).clamp(0, 255) as u8;
        }
        out
    }

    #[test]
    fn identical_images_score_the_cap_and_one() {
        let image = random_image(0, 64);
        assert_eq!(psnr(&image, &image).unwrap(), PSNR_CAP);
        assert!((ssim(&image, &image).unwrap() - 1.0).abs() < 1e-12);
        assert!((ms_ssim(&image, &image).unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn psnr_of_a_uniform_error_follows_its_formula() {
        let a = RgbImage::from_pixel(8, 8, image::Rgb([100, 100, 100]));
        let b = RgbImage::from_pixel(8, 8, image::Rgb([110, 110, 110]));
        let expected = 20.0 * (255.0f64 / 10.0).log10();
        assert!((psnr(&a, &b).unwrap() - expected).abs() < 1e-9);
    }

    #[test]
    fn more_noise_scores_lower_on_every_metric() {
        let image = random_image(1, 64);
        let (slight, heavy) = (with_noise(&image, 10, 2), with_noise(&image, 80, 3));
        for metric in [psnr, ssim, ms_ssim] {
            let (s, h) = (
                metric(&image, &slight).unwrap(),
                metric(&image, &heavy).unwrap(),
            );
            assert!(s > h, "slight {s} <= heavy {h}");
        }
    }

    #[test]
    fn ssim_of_a_constant_shift_sees_only_the_luminance() {
        // Same structure, mean moved by 0.1: l = (2ab + C1) / (a^2 + b^2 + C1) < 1, cs = 1.
        let a = RgbImage::from_pixel(16, 16, image::Rgb([100, 100, 100]));
        let b = RgbImage::from_pixel(16, 16, image::Rgb([125, 125, 125]));
        let (x, y) = (100.0 / 255.0, 125.0 / 255.0);
        let expected = (2.0 * x * y + C1) / (x * x + y * y + C1);
        assert!((ssim(&a, &b).unwrap() - expected).abs() < 1e-9);
    }

    #[test]
    fn images_of_different_sizes_are_refused() {
        let err = ssim(&random_image(0, 16), &random_image(0, 32)).unwrap_err();
        assert_eq!(err.to_string(), "image is 32x32 but its reference is 16x16");
    }
}
