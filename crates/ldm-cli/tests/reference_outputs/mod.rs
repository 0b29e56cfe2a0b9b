//! Runs the reference software (tests/reference/*.py, on the project's Python, offline) and
//! compares bundles' graphs with what it computed.

use std::collections::BTreeMap;
use std::path::Path;

use ldm_core::manifest::GraphRole;
use ldm_runtime::{Backend, Bundle, Tensor};

/// Runs `tests/reference/<script>` on the project's Python (offline), failing with its
/// stderr.
pub fn run_reference(script: &str, args: &[&std::ffi::OsStr]) {
    let python = std::env::var("LDM_PYTHON").expect("LDM_PYTHON (set in .cargo/config.toml)");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/reference")
        .join(script);
    let run = std::process::Command::new(python)
        .arg(path)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Every tensor of a safetensors file as f32 values (ids and counters too).
pub fn reference_tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    ldm_import::files::read_tensors(path)
        .unwrap()
        .into_iter()
        .map(|(name, t)| {
            let values = t
                .to_f32()
                .unwrap_or_else(|| panic!("{name}: {:?}", t.dtype));
            (name, (t.shape, values))
        })
        .collect()
}

pub fn backends() -> Vec<Backend> {
    vec![Backend::Tract, Backend::OrtCpu]
}

/// Runs `role` of `bundle` on `inputs` and compares its one output with `expected`.
pub fn compare(
    bundle: &Bundle,
    role: GraphRole,
    inputs: &[(&str, Tensor)],
    expected: &(Vec<usize>, Vec<f32>),
    what: &str,
) {
    for backend in backends() {
        let mut session = bundle.session(role, backend, 1).unwrap();
        let named: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
        let out = session.run(&named).unwrap();
        assert_eq!(
            out[0].shape(),
            expected.0.as_slice(),
            "{what} on {backend:?}"
        );
        let got = out[0].as_f32().unwrap();
        let scale = expected.1.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(&expected.1)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 1e-4 * scale,
            "{what} on {}: max difference {worst:.3e} (largest value {scale:.3})",
            backend.name()
        );
    }
}

pub fn f32_input(r: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, name: &str) -> Tensor {
    let (shape, values) = &r[name];
    Tensor::f32(shape, values.clone()).unwrap()
}
