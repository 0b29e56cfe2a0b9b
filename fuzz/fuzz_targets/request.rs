//! Arbitrary bytes as a request to `ldm serve`: the first byte picks the API, the rest is its
//! JSON body, read and planned against the shipped bundle (`ldm_serve::fuzz_request`).
#![no_main]

use std::sync::OnceLock;

use ldm_runtime::{Bundle, Planner};

fn planner() -> &'static Planner {
    static PLANNER: OnceLock<Planner> = OnceLock::new();
    PLANNER.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../export/emoji-text");
        Planner::new(&Bundle::load(dir.as_ref()).expect("the shipped bundle")).expect("its plan")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| ldm_serve::fuzz_request(planner(), data));
