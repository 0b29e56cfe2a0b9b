//! Reconstruction quality on tch tensors: PSNR and SSIM (Wang et al. 2004), the validation
//! metrics of the first stage; 1 - SSIM also serves as its perceptual loss term, since no
//! pretrained LPIPS network can be had here.

use tch::{Kind, Tensor};

/// The 11-tap Gaussian window (sigma 1.5) of the SSIM paper, as a [C, 1, 11, 11] depthwise
/// convolution kernel.
fn gaussian_window(channels: i64, like: &Tensor) -> Tensor {
    let taps: Vec<f32> = (0..11)
        .map(|i| (-((i as f32 - 5.0).powi(2)) / (2.0 * 1.5 * 1.5)).exp())
        .collect();
    let g = Tensor::from_slice(&taps).to_device(like.device());
    let g = &g / g.sum(Kind::Float);
    g.outer(&g)
        .expand([channels, 1, 11, 11], false)
        .contiguous()
}

/// Per-pixel SSIM map [B, C, H, W] of images in [-1, 1] (data range 2), with zero padding at
/// the borders so the map keeps the image size.
pub fn ssim_map(x: &Tensor, y: &Tensor) -> Tensor {
    let c = x.size()[1];
    let w = gaussian_window(c, x);
    let blur = |t: &Tensor| t.conv2d(&w, None::<Tensor>, [1, 1], [5, 5], [1, 1], c);
    let (mx, my) = (blur(x), blur(y));
    let sxx = blur(&(x * x)) - &mx * &mx;
    let syy = blur(&(y * y)) - &my * &my;
    let sxy = blur(&(x * y)) - &mx * &my;
    // K1 = 0.01, K2 = 0.03 times the data range 2.
    let (c1, c2) = (0.02f64.powi(2), 0.06f64.powi(2));
    ((&mx * &my * 2.0 + c1) * (sxy * 2.0 + c2))
        / ((mx.square() + my.square() + c1) * (sxx + syy + c2))
}

/// Mean SSIM of each image: [B].
pub fn ssim(x: &Tensor, y: &Tensor) -> Tensor {
    ssim_map(x, y).mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float)
}

/// PSNR in dB of each image: [B], images in [-1, 1] compared on the 0..255 scale after
/// clamping; identical images give 100 dB (capped, not infinite).
pub fn psnr(x: &Tensor, y: &Tensor) -> Tensor {
    let to_unit = |t: &Tensor| (t.clamp(-1.0, 1.0) + 1.0) * 0.5;
    let mse =
        (to_unit(x) - to_unit(y))
            .square()
            .mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float);
    (mse.clamp_min(1e-10).log10() * -10.0).clamp_max(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_images_score_one_and_the_cap_and_noise_scores_lower() {
        tch::manual_seed(0);
        let x = Tensor::rand([2, 3, 16, 16], tch::kind::FLOAT_CPU) * 2.0 - 1.0;
        let s: Vec<f32> = ssim(&x, &x).try_into().unwrap();
        assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-5), "{s:?}");
        let p: Vec<f32> = psnr(&x, &x).try_into().unwrap();
        assert_eq!(p, [100.0, 100.0]);
        let noisy = &x + Tensor::randn([2, 3, 16, 16], tch::kind::FLOAT_CPU) * 0.2;
        let s: Vec<f32> = ssim(&x, &noisy).try_into().unwrap();
        assert!(s.iter().all(|v| *v < 0.9), "{s:?}");
        // Uniform error of 0.1 on [-1, 1] is 0.05 on [0, 1]: PSNR = -10 log10(0.0025) = 26.02.
        let shifted = (&x * 0.5) + 0.1;
        let half = &x * 0.5;
        let p: Vec<f32> = psnr(&half, &shifted).try_into().unwrap();
        assert!((p[0] - 26.0206).abs() < 1e-3, "{p:?}");
    }
}
