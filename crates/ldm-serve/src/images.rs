//! Images in and out of the APIs: PNG (or JPEG) encoding of results, decoding of uploads and
//! base64 fields (bounded before any pixel is allocated), and the masks of each API as the
//! runtime reads them (white: draw anew, black: keep).

use base64::Engine;
use image::{DynamicImage, ImageFormat};
use ldm_core::semantic::ClassMap;
use ldm_data::DataError;
use ldm_runtime::plan::MAX_SIDE;
use ldm_runtime::Image;

use crate::error::ApiError;

/// A result as PNG bytes.
pub fn png(image: &Image) -> Vec<u8> {
    encode(image, ImageFormat::Png).expect("an RGB buffer of its own size encodes")
}

/// A result in `format` (PNG or JPEG).
pub fn encode(image: &Image, format: ImageFormat) -> Result<Vec<u8>, image::ImageError> {
    let buffer =
        image::RgbImage::from_raw(image.width as u32, image.height as u32, image.rgb.clone())
            .expect("width x height x 3 bytes");
    let mut out = std::io::Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(buffer).write_to(&mut out, format)?;
    Ok(out.into_inner())
}

pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The bytes of a base64 field, with or without a `data:image/...;base64,` prefix.
pub fn from_base64(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    let payload = match text.split_once(";base64,") {
        Some((head, rest)) if head.starts_with("data:") => rest,
        _ => text,
    };
    base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| ApiError::field(field, format!("{field} is not base64: {e}")))
}

/// A PNG or JPEG upload, its size checked before it is decoded.
pub fn decode(field: &str, bytes: &[u8]) -> Result<DynamicImage, ApiError> {
    let max_side = MAX_SIDE as u32;
    ldm_data::decode_image(bytes, max_side, std::path::Path::new(field)).map_err(|e| {
        let message = match e {
            DataError::ImageTooLarge { width, height, .. } => format!(
                "{field} is {width}x{height}; images may be at most {max_side} pixels a side"
            ),
            DataError::Image { source, .. } => {
                format!("{field} is not a PNG or JPEG image: {source}")
            }
            other => other.to_string(),
        };
        ApiError::field(field, message)
    })
}

/// A semantic map upload: 8-bit grayscale, each value a class id.
pub fn class_map(field: &str, image: &DynamicImage) -> Result<ClassMap, ApiError> {
    let DynamicImage::ImageLuma8(map) = image else {
        return Err(ApiError::field(
            field,
            format!(
                "{field} is {:?}; it must be an 8-bit grayscale PNG whose values are class ids",
                image.color()
            ),
        ));
    };
    Ok(ClassMap {
        width: map.width() as usize,
        height: map.height() as usize,
        ids: map.as_raw().clone(),
    })
}

pub fn rgb(image: &DynamicImage) -> Image {
    let rgb = image.to_rgb8();
    Image {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        rgb: rgb.into_raw(),
    }
}

/// A mask as the runtime reads it: white where to draw. OpenAI's masks mark the region to
/// edit by full transparency; masks without an alpha channel are read as they are, binarised
/// at half intensity.
pub fn openai_mask(image: &DynamicImage) -> Image {
    if image.color().has_alpha() {
        let rgba = image.to_rgba8();
        let rgb = rgba
            .pixels()
            .flat_map(|p| if p[3] == 0 { [255u8; 3] } else { [0u8; 3] })
            .collect();
        Image {
            width: rgba.width() as usize,
            height: rgba.height() as usize,
            rgb,
        }
    } else {
        binary(image)
    }
}

/// A grey-level mask binarised at half intensity (the web UI's convention: white is redrawn).
pub fn binary(image: &DynamicImage) -> Image {
    let grey = image.to_luma8();
    let rgb = grey
        .pixels()
        .flat_map(|p| if p[0] >= 128 { [255u8; 3] } else { [0u8; 3] })
        .collect();
    Image {
        width: grey.width() as usize,
        height: grey.height() as usize,
        rgb,
    }
}

/// `image` resized to `width` x `height` when it is not that size already; sides of zero or
/// beyond `max_side` are refused here, before any pixel is allocated.
pub fn fit(
    image: DynamicImage,
    width: usize,
    height: usize,
    max_side: usize,
) -> Result<DynamicImage, ApiError> {
    crate::request::check_side("width", width, max_side)?;
    crate::request::check_side("height", height, max_side)?;
    Ok(
        if image.width() as usize == width && image.height() as usize == height {
            image
        } else {
            image.resize_exact(
                width as u32,
                height as u32,
                image::imageops::FilterType::Triangle,
            )
        },
    )
}
