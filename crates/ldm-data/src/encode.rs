//! 8-bit RGB pixels to PNG, written atomically: what every writer of generated images uses.

use std::path::Path;

use image::ImageEncoder;

/// `rgb` (`width` x `height` x 3 bytes, rows top to bottom) as PNG bytes.
pub fn png_bytes(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes).write_image(
        rgb,
        width,
        height,
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(bytes)
}

/// Writes `rgb` to `path` as a PNG, whole or not at all (see [`crate::write_atomic`]).
pub fn write_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> std::io::Result<()> {
    let bytes = png_bytes(width, height, rgb).map_err(std::io::Error::other)?;
    crate::write_atomic(path, &bytes)
}
