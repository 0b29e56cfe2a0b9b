//! Arbitrary bytes as a bundle's graph file: the checks before an engine reads it (protobuf
//! decoding, initializer sizes, external data confined to the bundle).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir();
    let _ = ldm_runtime::check_bytes(&dir, &dir.join("graph.onnx"), data);
});
