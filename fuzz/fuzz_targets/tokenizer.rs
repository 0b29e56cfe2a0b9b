//! Arbitrary bytes as a bundle's tokenizer.json: loaded, then a prompt encoded with it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(tokenizer) = ldm_core::TextTokenizer::from_bytes(data, "fuzz") {
        let _ = tokenizer.encode("a red apple, twemoji style", 16);
    }
});
