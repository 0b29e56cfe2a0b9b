//! `ldm eval` on super-resolution and inpainting bundles: each held-out image is degraded
//! (downsampled f times by block averages, as the trainer makes its inputs, or a seeded
//! rectangle cut out, as the trainer's masks are), restored by the bundle, and scored against
//! the original beside a trivial restoration of the same input: bicubic upscaling, or the
//! hole filled with the mean colour of every pixel outside it. Inpainting is scored inside
//! the hole, where the two differ.

use std::path::Path;

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use ldm_core::manifest::ConcatKind;
use ldm_eval::{fid, psnr, ssim, Evaluator, Judged};
use ldm_runtime::{Image, Pipeline};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::eval::{from_rgb, mean, to_rgb};
use crate::generate::{grid, write_png, SamplingArgs};

#[derive(Serialize, Deserialize)]
pub struct RestorationScores {
    /// "super_resolution" or "inpainting".
    pub task: String,
    /// What the bundle is compared with: "bicubic upscaling" or "mean-colour fill".
    pub baseline: String,
    /// The bundle's restorations: PSNR and SSIM against the originals (inpainting: inside
    /// the hole), and FID of the whole images (with an evaluator).
    pub model: Quality,
    /// The trivial restoration of the same inputs, scored the same way.
    pub trivial: Quality,
}

#[derive(Serialize, Deserialize)]
pub struct Quality {
    pub psnr: f64,
    pub ssim: f64,
    pub fid: Option<f64>,
}

/// The smallest hole side, in pixels: SSIM needs room for its window.
const MIN_HOLE: u32 = 16;

/// A rectangle of the image: x, y, width, height.
type Hole = (u32, u32, u32, u32);

/// Scores the bundle on `real` (held-out images at its resolution) and writes
/// restoration-samples.png: originals, inputs, the bundle's restorations and the trivial ones.
pub fn evaluate(
    pipeline: &mut Pipeline,
    task: ConcatKind,
    real: &[RgbImage],
    evaluator: Option<&mut Evaluator>,
    real_judged: Option<&Judged>,
    sampling: &SamplingArgs,
    out: &Path,
) -> anyhow::Result<RestorationScores> {
    let f = pipeline.bundle().manifest.downsampling_factor as u32;
    let bar = crate::progress::bar("restoring");
    bar.set_length(real.len() as u64);
    let (mut inputs, mut restored, mut trivial, mut holes) = (vec![], vec![], vec![], vec![]);
    for (i, original) in real.iter().enumerate() {
        let seed = sampling.seed + i as u64;
        let mut request = sampling.request(vec![String::new()], seed);
        let (input, baseline, hole) = if task.is_inpainting() {
            let hole = random_hole(original.width(), original.height(), seed);
            request.mask = Some(from_rgb(&hole_mask(original, hole)));
            (cut(original, hole), mean_fill(original, hole), Some(hole))
        } else {
            let small = block_average(original, f);
            let upscaled = imageops::resize(
                &small,
                original.width(),
                original.height(),
                FilterType::CatmullRom,
            );
            (small, upscaled, None)
        };
        request.init_image = Some(from_rgb(&input));
        restored.push(to_rgb(
            pipeline.generate(&request, &mut |_| true)?.remove(0),
        ));
        inputs.push(input);
        trivial.push(baseline);
        holes.push(hole);
        bar.inc(1);
    }
    bar.finish_and_clear();
    write_samples(real, &inputs, &restored, &trivial, out)?;
    let mut evaluator = evaluator;
    let mut quality = |images: &[RgbImage]| -> anyhow::Result<Quality> {
        let (mut psnrs, mut ssims) = (vec![], vec![]);
        for ((original, image), hole) in real.iter().zip(images).zip(&holes) {
            let (original, image) = match hole {
                &Some((x, y, w, h)) => (
                    imageops::crop_imm(original, x, y, w, h).to_image(),
                    imageops::crop_imm(image, x, y, w, h).to_image(),
                ),
                None => (original.clone(), image.clone()),
            };
            psnrs.push(psnr(&original, &image)?);
            ssims.push(ssim(&original, &image)?);
        }
        let fid = match (evaluator.as_deref_mut(), real_judged) {
            (Some(e), Some(r)) => Some(fid(&r.features, &e.judge(images)?.features)?),
            _ => None,
        };
        Ok(Quality {
            psnr: mean(&psnrs),
            ssim: mean(&ssims),
            fid,
        })
    };
    let (model, trivial) = (quality(&restored)?, quality(&trivial)?);
    Ok(RestorationScores {
        task: if task.is_inpainting() {
            "inpainting"
        } else {
            "super_resolution"
        }
        .into(),
        baseline: if task.is_inpainting() {
            "mean-colour fill"
        } else {
            "bicubic upscaling"
        }
        .into(),
        model,
        trivial,
    })
}

/// The image downsampled `f` times, each pixel the mean of its f x f block.
fn block_average(image: &RgbImage, f: u32) -> RgbImage {
    RgbImage::from_fn(image.width() / f, image.height() / f, |bx, by| {
        let mut sum = [0u32; 3];
        for y in by * f..(by + 1) * f {
            for x in bx * f..(bx + 1) * f {
                for (s, &v) in sum.iter_mut().zip(&image.get_pixel(x, y).0) {
                    *s += v as u32;
                }
            }
        }
        Rgb(sum.map(|s| ((s + f * f / 2) / (f * f)) as u8))
    })
}

/// A seeded rectangle a quarter to three quarters of each side, anywhere in the image (the
/// trainer's masks), at least [`MIN_HOLE`] pixels a side.
fn random_hole(width: u32, height: u32, seed: u64) -> Hole {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut side = |extent: u32| {
        let size = ((rng.random_range(0.25..0.75) * extent as f64) as u32)
            .clamp(MIN_HOLE.min(extent), extent);
        let start = rng.random_range(0..=extent - size);
        (start, size)
    };
    let (x, w) = side(width);
    let (y, h) = side(height);
    (x, y, w, h)
}

fn inside((x, y, w, h): Hole, px: u32, py: u32) -> bool {
    (x..x + w).contains(&px) && (y..y + h).contains(&py)
}

/// White inside the hole (to draw), black elsewhere (to keep).
fn hole_mask(image: &RgbImage, hole: Hole) -> RgbImage {
    RgbImage::from_fn(image.width(), image.height(), |x, y| {
        Rgb([if inside(hole, x, y) { 255 } else { 0 }; 3])
    })
}

/// The image with the hole painted mid-grey (what the bundle is shown of it).
fn cut(image: &RgbImage, hole: Hole) -> RgbImage {
    let mut cut = image.clone();
    for (x, y, pixel) in cut.enumerate_pixels_mut() {
        if inside(hole, x, y) {
            *pixel = Rgb([128; 3]);
        }
    }
    cut
}

/// The hole filled with the mean colour of the kept pixels.
fn mean_fill(image: &RgbImage, hole: Hole) -> RgbImage {
    let (mut sum, mut count) = ([0u64; 3], 0u64);
    for (x, y, pixel) in image.enumerate_pixels() {
        if !inside(hole, x, y) {
            for (s, &v) in sum.iter_mut().zip(&pixel.0) {
                *s += v as u64;
            }
            count += 1;
        }
    }
    let mean = Rgb(sum.map(|s| (s / count.max(1)) as u8));
    let mut filled = image.clone();
    for (x, y, pixel) in filled.enumerate_pixels_mut() {
        if inside(hole, x, y) {
            *pixel = mean;
        }
    }
    filled
}

/// Four rows of up to eight images (the grid's width; shorter rows padded white): originals,
/// inputs (upscaled by nearest neighbours to be seen), the bundle's restorations, the trivial
/// ones.
fn write_samples(
    real: &[RgbImage],
    inputs: &[RgbImage],
    restored: &[RgbImage],
    trivial: &[RgbImage],
    out: &Path,
) -> anyhow::Result<()> {
    const COLUMNS: usize = 8;
    let Some((w, h)) = real.first().map(|r| r.dimensions()) else {
        return Ok(());
    };
    let visible = |image: &RgbImage| from_rgb(&imageops::resize(image, w, h, FilterType::Nearest));
    let blank = from_rgb(&RgbImage::from_pixel(w, h, Rgb([255; 3])));
    let tiles: Vec<Image> = [real, inputs, restored, trivial]
        .iter()
        .flat_map(|row| {
            let shown = row.iter().take(COLUMNS).map(visible);
            shown.chain(std::iter::repeat(blank.clone())).take(COLUMNS)
        })
        .collect();
    write_png(&out.join("restoration-samples.png"), &grid(&tiles))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_average_is_the_mean_of_each_block() {
        let image = RgbImage::from_fn(4, 4, |x, y| Rgb([(x * 10 + y) as u8, 0, 255]));
        let small = block_average(&image, 2);
        assert_eq!(small.dimensions(), (2, 2));
        // Block (1, 0): x 2..4, y 0..2 -> 20, 21, 30, 31.
        assert_eq!(small.get_pixel(1, 0).0, [26, 0, 255]);
    }

    #[test]
    fn holes_are_seeded_inside_the_image_and_large_enough() {
        for seed in 0..200 {
            let (x, y, w, h) = random_hole(64, 48, seed);
            assert!(w >= MIN_HOLE && h >= MIN_HOLE && x + w <= 64 && y + h <= 48);
            assert_eq!(random_hole(64, 48, seed), (x, y, w, h));
        }
    }

    #[test]
    fn the_mean_fill_keeps_the_pixels_outside_the_hole() {
        let image = RgbImage::from_fn(32, 32, |x, _| Rgb([if x < 16 { 0 } else { 200 }; 3]));
        let hole = (16, 0, 16, 32);
        let filled = mean_fill(&image, hole);
        assert_eq!(filled.get_pixel(3, 3), image.get_pixel(3, 3));
        assert_eq!(filled.get_pixel(20, 3).0, [0; 3]);
        assert_eq!(hole_mask(&image, hole).get_pixel(20, 3).0, [255; 3]);
        assert_eq!(cut(&image, hole).get_pixel(20, 3).0, [128; 3]);
    }
}
