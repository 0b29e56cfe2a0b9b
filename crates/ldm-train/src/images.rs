//! Tensors to PNG: image grids (samples, reconstructions), written atomically.

use std::path::Path;

use image::RgbImage;
use tch::{Kind, Tensor};

use crate::files::write_atomic;

/// Lays out `images` [B, 3, H, W] in [-1, 1] as a grid of `columns` columns with a 2-pixel
/// white gutter, and writes it as PNG.
pub fn save_grid(images: &Tensor, columns: usize, path: &Path) -> std::io::Result<()> {
    let size = images.size();
    let (b, h, w) = (size[0] as usize, size[2] as u32, size[3] as u32);
    let columns = columns.clamp(1, b.max(1));
    let rows = b.div_ceil(columns);
    let pixels: Vec<u8> = ((images.detach().to_device(tch::Device::Cpu).clamp(-1.0, 1.0) + 1.0)
        * 127.5)
        .round()
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous()
        .flatten(0, -1)
        .try_into()
        .map_err(std::io::Error::other)?;
    let gap = 2;
    let mut grid = RgbImage::from_pixel(
        columns as u32 * (w + gap) + gap,
        rows as u32 * (h + gap) + gap,
        image::Rgb([255, 255, 255]),
    );
    let per_image = (h * w * 3) as usize;
    for (i, chunk) in pixels.chunks(per_image).enumerate() {
        let (gx, gy) = ((i % columns) as u32, (i / columns) as u32);
        for (j, rgb) in chunk.chunks(3).enumerate() {
            let (x, y) = (j as u32 % w, j as u32 / w);
            grid.put_pixel(
                gap + gx * (w + gap) + x,
                gap + gy * (h + gap) + y,
                image::Rgb([rgb[0], rgb[1], rgb[2]]),
            );
        }
    }
    let mut bytes = Vec::new();
    grid.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(std::io::Error::other)?;
    write_atomic(path, &bytes)
}
