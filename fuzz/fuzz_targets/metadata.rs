//! Arbitrary bytes as an image folder's metadata.jsonl: its rows parsed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ldm_data::parse_metadata(data, std::path::Path::new("metadata.jsonl"));
});
