//! Tiled decoding: a latent too large for the first stage's decoder within the memory budget,
//! decoded as overlapping square tiles whose images are blended across the overlaps with
//! linear ramps, so that no seam shows. Each tile is decoded on its own, so the decoder's
//! activations are bounded by the tile, whatever the image.
//!
//! The result is close to, not equal to, an untiled decode: the decoder's group
//! normalisations see a tile's statistics instead of the image's (the same trade-off as
//! tiled VAE decoding elsewhere). `tests/tiled.rs` measures the difference.

use crate::{RuntimeError, Tensor};

/// Square latent tiles of `tile` latent pixels a side, consecutive tiles sharing `overlap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    pub tile: usize,
    pub overlap: usize,
}

impl Tiling {
    /// Tiles of `tile` latent pixels overlapping by a quarter of that.
    pub fn new(tile: usize) -> Self {
        let tile = tile.max(1);
        Self {
            tile,
            overlap: tile / 4,
        }
    }
}

/// Where tiles start along an axis of `len`: every `tile - overlap`, the last one flush with
/// the end.
fn starts(len: usize, tiling: Tiling) -> Vec<usize> {
    if len <= tiling.tile {
        return vec![0];
    }
    let stride = (tiling.tile - tiling.overlap).max(1);
    let mut starts: Vec<usize> = (0..)
        .map(|i| i * stride)
        .take_while(|s| s + tiling.tile < len)
        .collect();
    starts.push(len - tiling.tile);
    starts
}

/// Weight of output pixel `p` of a tile `n` pixels long: rising from its start over `ramp`
/// pixels unless it starts the image, falling to its end unless it ends the image.
fn weight(p: usize, n: usize, ramp: usize, first: bool, last: bool) -> f32 {
    let mut w = 1.0f32;
    if ramp > 0 {
        if !first {
            w = w.min((p as f32 + 0.5) / ramp as f32);
        }
        if !last {
            w = w.min(((n - p) as f32 - 0.5) / ramp as f32);
        }
    }
    w
}

/// Decodes latents `data` of shape [n, c, h, w] tile by tile with `decode` (one latent tile
/// in, its image [1, 3, th * f, tw * f] out), into images [n, 3, h * f, w * f].
pub fn decode_tiled(
    data: &[f32],
    [n, c, h, w]: [usize; 4],
    f: usize,
    tiling: Tiling,
    decode: &mut dyn FnMut(&Tensor) -> Result<Tensor, RuntimeError>,
) -> Result<Tensor, RuntimeError> {
    let (th, tw) = (tiling.tile.min(h), tiling.tile.min(w));
    let (ys, xs) = (starts(h, tiling), starts(w, tiling));
    let (out_h, out_w) = (h * f, w * f);
    let ramp = tiling.overlap * f;
    let mut sum = vec![0f32; n * 3 * out_h * out_w];
    let mut weights = vec![0f32; out_h * out_w];
    let mut tile = vec![0f32; c * th * tw];
    for image in 0..n {
        for (yi, &y0) in ys.iter().enumerate() {
            for (xi, &x0) in xs.iter().enumerate() {
                for ch in 0..c {
                    for y in 0..th {
                        let from = ((image * c + ch) * h + y0 + y) * w + x0;
                        tile[(ch * th + y) * tw..][..tw].copy_from_slice(&data[from..from + tw]);
                    }
                }
                let pixels = decode(&Tensor::f32(&[1, c, th, tw], tile.clone())?)?;
                let (ph, pw) = (th * f, tw * f);
                let pixels = pixels
                    .as_f32()
                    .filter(|_| pixels.shape() == [1, 3, ph, pw])
                    .ok_or_else(|| RuntimeError::NotImages {
                        graph: "decoder",
                        shape: pixels.shape().to_vec(),
                    })?;
                for y in 0..ph {
                    let wy = weight(y, ph, ramp, yi == 0, yi + 1 == ys.len());
                    for x in 0..pw {
                        let wxy = wy * weight(x, pw, ramp, xi == 0, xi + 1 == xs.len());
                        let at = (y0 * f + y) * out_w + x0 * f + x;
                        if image == 0 {
                            weights[at] += wxy;
                        }
                        for ch in 0..3 {
                            sum[((image * 3 + ch) * out_h) * out_w + at] +=
                                wxy * pixels[(ch * ph + y) * pw + x];
                        }
                    }
                }
            }
        }
    }
    for (i, value) in sum.iter_mut().enumerate() {
        *value /= weights[i % (out_h * out_w)];
    }
    Tensor::f32(&[n, 3, out_h, out_w], sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_axis_and_end_flush() {
        let t = Tiling::new(16);
        assert_eq!(starts(16, t), [0]);
        assert_eq!(starts(10, t), [0]);
        assert_eq!(starts(40, t), [0, 12, 24]);
        assert_eq!(starts(30, t), [0, 12, 14]);
    }

    #[test]
    fn an_identity_decoder_is_reproduced_exactly() {
        // A "decoder" that repeats each latent pixel f x f times in 3 channels: blending its
        // tiles must give the untiled result.
        let f = 2;
        let (n, c, h, w) = (2, 1, 13, 21);
        let data: Vec<f32> = (0..n * c * h * w)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let latent = Tensor::f32(&[n, c, h, w], data.clone()).unwrap();
        let mut upsample = |t: &Tensor| {
            let &[b, _, th, tw] = t.shape() else {
                unreachable!()
            };
            let v = t.as_f32().unwrap();
            let mut out = Vec::new();
            for image in 0..b {
                for _ in 0..3 {
                    for y in 0..th * f {
                        for x in 0..tw * f {
                            out.push(v[(image * th + y / f) * tw + x / f]);
                        }
                    }
                }
            }
            Tensor::f32(&[b, 3, th * f, tw * f], out)
        };
        let whole = upsample(&latent).unwrap();
        let tiled = decode_tiled(&data, [n, c, h, w], f, Tiling::new(8), &mut upsample).unwrap();
        assert_eq!(tiled.shape(), whole.shape());
        for (a, b) in tiled.as_f32().unwrap().iter().zip(whole.as_f32().unwrap()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
