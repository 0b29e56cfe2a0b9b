//! Arbitrary bytes as a bundle's manifest.json: parsed and validated.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ldm_core::Manifest::parse(text);
    }
});
