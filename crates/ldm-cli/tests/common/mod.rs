//! What the CLI tests share: running the `ldm` binary and reading what it printed.
#![allow(dead_code)] // each test file uses its own part

use std::process::Command;

/// The `ldm` binary under test.
pub fn ldm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ldm"))
}

/// Runs `cmd` to the end: whether it succeeded, and stdout then stderr.
pub fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Writes a small procedural-shapes data set into `dir/shapes`; returns its train folder.
pub fn shapes_data(dir: &std::path::Path, count: usize, size: u32) -> std::path::PathBuf {
    let data = dir.join("shapes");
    let (ok, text) = output(
        ldm()
            .args(["data", "shapes", "--out", data.to_str().unwrap()])
            .args(["--count", &count.to_string(), "--size", &size.to_string()]),
    );
    assert!(ok, "{text}");
    data.join("train")
}
