//! What the image tasks need besides sampling: images as model tensors and masks at the
//! latent's size.

use crate::{Image, RequestError, RuntimeError, Tensor};

/// An RGB image as [1, channels, H, W] in [-1, 1] (grey repeated when one channel is asked).
pub fn image_tensor(image: &Image, channels: usize) -> Result<Tensor, RuntimeError> {
    let (w, h) = (image.width, image.height);
    if image.rgb.len() != w * h * 3 {
        return Err(RequestError::ImageBytes {
            width: w,
            height: h,
            expected: w * h * 3,
            got: image.rgb.len(),
        }
        .into());
    }
    let mut data = Vec::with_capacity(channels * w * h);
    for c in 0..channels {
        data.extend((0..w * h).map(|p| image.rgb[p * 3 + c.min(2)] as f32 / 127.5 - 1.0));
    }
    Tensor::f32(&[1, channels, h, w], data)
}

/// Refuses a mask with grey pixels: black keeps, white draws, nothing in between (a little
/// compression noise aside).
pub fn check_binary(mask: &Image) -> Result<(), RequestError> {
    let grey = mask.rgb.iter().filter(|&&v| (16..240).contains(&v)).count();
    if grey > 0 {
        return Err(RequestError::GreyMask(grey));
    }
    Ok(())
}

/// A mask image (white = 1 = to fill, black = keep; its mean over RGB) as values in [0, 1],
/// averaged over f x f blocks: [H/f · W/f].
pub fn mask_at(mask: &Image, f: usize) -> Vec<f32> {
    let (w, h) = (mask.width / f, mask.height / f);
    let value = |x: usize, y: usize| {
        let p = (y * mask.width + x) * 3;
        mask.rgb[p..p + 3].iter().map(|&v| v as f32).sum::<f32>() / (3.0 * 255.0)
    };
    let mut out = Vec::with_capacity(w * h);
    for by in 0..h {
        for bx in 0..w {
            let mut sum = 0.0;
            for y in by * f..(by + 1) * f {
                for x in bx * f..(bx + 1) * f {
                    sum += value(x, y);
                }
            }
            out.push(sum / (f * f) as f32);
        }
    }
    out
}

/// A mask image as 0 or 1 (its mean over RGB, binarised at 0.5) at every f-th pixel of each
/// axis, as Stable Diffusion's inpainting pipelines sample it (nearest): [H/f · W/f].
pub fn mask_sampled(mask: &Image, f: usize) -> Vec<f32> {
    let (w, h) = (mask.width / f, mask.height / f);
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let p = (y * f * mask.width + x * f) * 3;
            let sum: u32 = mask.rgb[p..p + 3].iter().map(|&v| v as u32).sum();
            out.push(if sum * 2 >= 3 * 255 { 1.0 } else { 0.0 });
        }
    }
    out
}

/// The image with the masked region (mask 1) set to 0, the middle grey of [-1, 1].
pub fn masked(image: &Tensor, mask: &[f32]) -> Result<Tensor, RuntimeError> {
    let data = image.as_f32().expect("image tensors are f32");
    let plane = mask.len();
    let kept = data
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 - mask[i % plane]))
        .collect();
    Tensor::f32(image.shape(), kept)
}
