//! Tensors to pictures: RGB images and PNG grids (samples, reconstructions), written
//! atomically.

use std::path::Path;

use image::RgbImage;
use tch::{Kind, Tensor};

use ldm_data::write_atomic;

/// `images` [B, 3, H, W] in [-1, 1] as 8-bit RGB images.
pub fn to_rgb_images(images: &Tensor) -> Vec<RgbImage> {
    let size = images.size();
    let (h, w) = (size[2] as u32, size[3] as u32);
    let pixels: Vec<u8> = ((images.detach().to_device(tch::Device::Cpu).clamp(-1.0, 1.0) + 1.0)
        * 127.5)
        .round()
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous()
        .flatten(0, -1)
        .try_into()
        .expect("u8 tensor");
    pixels
        .chunks((h * w * 3) as usize)
        .map(|chunk| RgbImage::from_raw(w, h, chunk.to_vec()).expect("sized chunk"))
        .collect()
}

/// Lays out `images` [B, 3, H, W] in [-1, 1] as a grid of `columns` columns with a 2-pixel
/// white gutter, and writes it as PNG; a single image is written as it is, as `ldm generate`
/// writes one.
pub fn save_grid(images: &Tensor, columns: usize, path: &Path) -> std::io::Result<()> {
    let tiles = to_rgb_images(images);
    let Some(first) = tiles.first() else {
        return Err(std::io::Error::other("no images to lay out"));
    };
    let (w, h) = first.dimensions();
    let columns = columns.clamp(1, tiles.len());
    let rows = tiles.len().div_ceil(columns) as u32;
    let gap = if tiles.len() == 1 { 0 } else { 2 };
    let mut grid = RgbImage::from_pixel(
        columns as u32 * (w + gap) + gap,
        rows * (h + gap) + gap,
        image::Rgb([255, 255, 255]),
    );
    for (i, tile) in tiles.iter().enumerate() {
        let (gx, gy) = ((i % columns) as u32, (i / columns) as u32);
        image::imageops::replace(
            &mut grid,
            tile,
            (gap + gx * (w + gap)) as i64,
            (gap + gy * (h + gap)) as i64,
        );
    }
    let mut bytes = Vec::new();
    grid.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(std::io::Error::other)?;
    write_atomic(path, &bytes)
}
