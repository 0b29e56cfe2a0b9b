//! What the runtime's tests share: the shipped bundle they run on, and edited copies of it.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};

/// The shipped shapes bundle (text-conditioned, KL first stage).
pub fn shipped_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../export/shapes-text")
}

/// A copy of the shipped bundle in `dir/bundle`, its manifest edited by `edit`.
pub fn edited_bundle(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let copy = dir.join("bundle");
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(shipped_bundle()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let manifest = copy.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, edit(text)).unwrap();
    copy
}

/// The mean absolute difference of two images' bytes, of 255.
pub fn mean_abs_difference(a: &ldm_runtime::Image, b: &ldm_runtime::Image) -> f64 {
    let sum: u64 = a
        .rgb
        .iter()
        .zip(&b.rgb)
        .map(|(x, y)| x.abs_diff(*y) as u64)
        .sum();
    sum as f64 / a.rgb.len() as f64
}
