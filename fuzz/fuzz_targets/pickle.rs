//! Arbitrary bytes as a checkpoint's pickle (`data.pkl` of a `.ckpt`): read without running
//! anything, refused or accepted.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ldm_import::pickle::load(data);
});
