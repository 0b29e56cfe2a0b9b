//! Pixel conversions shared by preparers and the loader.

use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, ImageBuffer, Pixel, Rgb, RgbImage};

/// Flattens any image to RGB, compositing transparency on white (emoji and icons are
/// drawn for a light page).
pub fn rgb_on_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over = |c: u8| ((c as u32 * a as u32 + 255 * (255 - a as u32) + 127) / 255) as u8;
        Rgb([over(r), over(g), over(b)])
    })
}

/// Scales the shorter side to `size` (Lanczos) and crops the centre square.
pub fn resize_center_crop(image: RgbImage, size: u32) -> RgbImage {
    resize_center_crop_with(image, size, FilterType::Lanczos3)
}

/// The same geometry for maps of class ids: nearest pixel, so no id is blended into another.
pub fn resize_center_crop_ids(map: GrayImage, size: u32) -> GrayImage {
    resize_center_crop_with(map, size, FilterType::Nearest)
}

fn resize_center_crop_with<P: Pixel<Subpixel = u8> + 'static>(
    image: ImageBuffer<P, Vec<u8>>,
    size: u32,
    filter: FilterType,
) -> ImageBuffer<P, Vec<u8>> {
    let (w, h) = image.dimensions();
    if w == size && h == size {
        return image;
    }
    let scale = size as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(size),
        ((h as f64 * scale).round() as u32).max(size),
    );
    let resized = image::imageops::resize(&image, nw, nh, filter);
    image::imageops::crop_imm(&resized, (nw - size) / 2, (nh - size) / 2, size, size).to_image()
}
