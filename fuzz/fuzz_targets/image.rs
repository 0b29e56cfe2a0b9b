//! Arbitrary bytes as an input image or mask (PNG, JPEG): decoded within the side limit.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ldm_data::decode_image(data, 512, std::path::Path::new("image.png"));
});
