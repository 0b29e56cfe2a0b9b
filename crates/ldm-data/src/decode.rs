//! Images from files someone else made, decoded within bounds: the header's dimensions are
//! read first and refused above a side limit, so a small file that declares an enormous image
//! (a decompression bomb) costs nothing; the decoder then runs under the same limits.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageReader, Limits};

use crate::DataError;

/// Longest side of an image in a data folder.
pub const MAX_DATA_SIDE: u32 = 8192;

/// Decodes the image at `path` if neither side exceeds `max_side`.
pub fn open_image(path: &Path, max_side: u32) -> Result<DynamicImage, DataError> {
    let bytes = std::fs::read(path).map_err(DataError::io(path))?;
    decode_image(&bytes, max_side, path)
}

/// Decodes image `bytes` (read from `path`, which errors name) if neither side its header
/// declares exceeds `max_side`.
pub fn decode_image(bytes: &[u8], max_side: u32, path: &Path) -> Result<DynamicImage, DataError> {
    let image_error = |source| DataError::Image {
        path: path.to_path_buf(),
        source,
    };
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(DataError::io(path))
    };
    // The header alone, whatever it declares: the check below is the limit.
    let mut header = reader()?;
    header.no_limits();
    let (width, height) = header.into_dimensions().map_err(image_error)?;
    if width > max_side || height > max_side {
        return Err(DataError::ImageTooLarge {
            path: path.to_path_buf(),
            width,
            height,
            max_side,
        });
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    // The decoded pixels and the decoder's own buffers: RGBA at 16 bits, twice over.
    limits.max_alloc = Some(u64::from(max_side) * u64::from(max_side) * 16);
    let mut reader = reader()?;
    reader.limits(limits);
    reader.decode().map_err(image_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PNG whose header declares `width` x `height`, with one row of data at most.
    fn png_declaring(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], data: &[u8]| {
            bytes.extend((data.len() as u32).to_be_bytes());
            let mut body = kind.to_vec();
            body.extend(data);
            bytes.extend(&body);
            bytes.extend(crc32fast::hash(&body).to_be_bytes());
        };
        let mut header = width.to_be_bytes().to_vec();
        header.extend(height.to_be_bytes());
        header.extend([8, 2, 0, 0, 0]);
        chunk(b"IHDR", &header);
        // One zlib stream of nothing: the header is all a bomb needs to be.
        chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        chunk(b"IEND", &[]);
        bytes
    }

    #[test]
    fn images_declaring_enormous_sides_are_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        for (width, height) in [(100_000, 10), (10, 1 << 30), (u32::MAX >> 1, u32::MAX >> 1)] {
            let path = dir.path().join("bomb.png");
            std::fs::write(&path, png_declaring(width, height)).unwrap();
            let err = open_image(&path, 4096).unwrap_err().to_string();
            // Sides beyond 2^30 are refused by the PNG decoder's own header limit.
            assert!(
                err.contains(&format!("declares {width}x{height} pixels"))
                    || err.contains("Memory limit exceeded"),
                "{err}"
            );
        }
        let path = dir.path().join("small.png");
        image::RgbImage::new(8, 4).save(&path).unwrap();
        assert_eq!(open_image(&path, 8).unwrap().width(), 8);
        std::fs::write(&path, b"not an image").unwrap();
        assert!(open_image(&path, 8).is_err());
    }
}
