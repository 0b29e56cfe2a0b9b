//! Build script shared by the packages that link libtorch (they name it with `build = ...`):
//! records libtorch's library folder as an rpath, so their tests and binaries run without
//! LD_LIBRARY_PATH. torch-sys reports the folder to its direct dependents.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
