//! The C example (`examples/generate.c`), compiled with the system's `cc` against
//! `include/ldm.h` and the `libldm.so` cargo built for this test: it generates an image,
//! has a second generation cancelled by its callback, and takes the error paths; then again
//! under valgrind, which must find no definite or indirect leak and no invalid access (one
//! false positive inside tract is suppressed: `tests/valgrind.supp` says why).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder of this test's binary (`target/debug/deps`), where cargo puts the `libldm.so`
/// it links the test against.
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().to_path_buf()
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bundle() -> PathBuf {
    crate_dir().join("../../export/emoji-text")
}

/// The example, built into `dir`.
fn build_example(dir: &Path) -> PathBuf {
    let lib = library_dir();
    assert!(
        lib.join("libldm.so").exists(),
        "{} has no libldm.so",
        lib.display()
    );
    let exe = dir.join("generate");
    let status = Command::new("cc")
        .arg("-Wall")
        .arg("-Werror")
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg(crate_dir().join("examples/generate.c"))
        .arg("-L")
        .arg(&lib)
        .arg("-lldm")
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("a C compiler named cc");
    assert!(status.success(), "the C example does not compile");
    exe
}

fn run(command: &mut Command) -> (bool, String) {
    let output = command
        .env("LD_LIBRARY_PATH", library_dir())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_c_example_generates_cancels_and_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let exe = build_example(dir.path());
    let png = dir.path().join("apple.png");
    let semantic = bundle().with_file_name("scenes-semantic");
    let (ok, text) = run(Command::new(&exe)
        .arg(bundle())
        .arg(&png)
        .arg("5")
        .arg(semantic));
    assert!(ok, "the example failed:\n{text}");
    for line in [
        "1 image(s) of 64x64",
        "cancelled generation: LDM_CANCELLED: cancelled",
        "0 steps: LDM_REQUEST: 0 steps (expected 1 to 1000)",
        "sampler heun: LDM_INVALID_ARGUMENT: unknown sampler 'heun'",
        "100000 images: LDM_REQUEST: 100000 images; one request may ask for at most 65535",
        "missing bundle: LDM_BUNDLE",
        "drew 128x64",
        "class 9: LDM_REQUEST: ",
        "map 100000 wide: LDM_INVALID_ARGUMENT: a semantic map of 100000x64",
        "NULL ids: LDM_INVALID_ARGUMENT: ids is NULL",
        "0 unexpected result(s)",
    ] {
        assert!(text.contains(line), "no '{line}' in:\n{text}");
    }
    let image = image::open(&png).unwrap();
    assert_eq!((image.width(), image.height()), (64, 64));
}

#[test]
fn the_c_example_is_clean_under_valgrind() {
    let dir = tempfile::tempdir().unwrap();
    let exe = build_example(dir.path());
    let png = dir.path().join("apple.png");
    let (ok, text) = run(Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--show-leak-kinds=definite,indirect",
            "--errors-for-leak-kinds=definite,indirect",
            "--error-exitcode=99",
        ])
        .arg(format!(
            "--suppressions={}",
            crate_dir().join("tests/valgrind.supp").display()
        ))
        .arg(&exe)
        .arg(bundle())
        .arg(&png)
        .arg("2"));
    assert!(ok, "valgrind found errors or the example failed:\n{text}");
    assert!(text.contains("ERROR SUMMARY: 0 errors"), "{text}");
    let freed = text.contains("All heap blocks were freed");
    for leak in ["definitely lost: 0 bytes", "indirectly lost: 0 bytes"] {
        assert!(
            freed || text.contains(leak),
            "no '{leak}' in valgrind's report:\n{text}"
        );
    }
}
