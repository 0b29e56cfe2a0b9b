//! Runs the reference software (tests/reference/*.py, on the project's Python, offline) and
//! compares bundles' graphs with what it computed.

use std::collections::BTreeMap;
use std::path::Path;

use std::path::PathBuf;

use ldm_core::manifest::GraphRole;
use ldm_core::{GuidedSampling, SamplerKind, SamplingSetup};
use ldm_runtime::{Backend, Bundle, Generate, Pipeline, Tensor};

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

/// Writes one f32 tensor as a safetensors file.
pub fn write_tensor(path: &Path, name: &str, shape: &[usize], values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &bytes)
            .unwrap();
    safetensors::tensor::serialize_to_file(vec![(name.to_string(), view)], &None, path).unwrap();
}

/// The standard normal initial latent the runtime's driver draws first for `request` (DDIM
/// takes it unscaled), as `out/noise-<name>.safetensors` (tensor `noise`, [1, c, h, w]) for
/// the reference software to start from.
pub fn driver_noise(bundle_dir: &Path, request: &Generate, out: &Path, name: &str) -> PathBuf {
    let pipeline = Pipeline::new(Bundle::load(bundle_dir).unwrap(), Backend::Tract, 1).unwrap();
    let plan = pipeline.plan(request).unwrap();
    let schedule = pipeline
        .bundle()
        .manifest
        .schedule
        .noise_schedule()
        .unwrap();
    let unscaled = SamplingSetup {
        sampler: SamplerKind::Ddim { eta: 0.0 },
        ..plan.sampling.clone()
    };
    let noise = GuidedSampling::new(&schedule, unscaled, None)
        .latents()
        .to_vec();
    let [c, h, w] = plan.sampling.latent_shape;
    let path = out.join(format!("noise-{name}.safetensors"));
    write_tensor(&path, "noise", &[1, c, h, w], &noise);
    path
}

/// `request` on every engine against what the reference software generated from the
/// driver's noise (`theirs`: `latents`, scaled as the UNet sees them, and `image`, the
/// decoded image as floats in [0, 1]): the final latents within 1e-4 of their largest value,
/// the decoded images, before rounding, within 1e-3.
pub fn check_generated(bundle_dir: &Path, request: &Generate, theirs: &Path, what: &str) {
    let theirs = reference_tensors(theirs);
    let (latents, image) = (&theirs["latents"], &theirs["image"]);
    let largest = latents.1.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let worst = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    };
    for backend in backends() {
        let mut pipeline = Pipeline::new(Bundle::load(bundle_dir).unwrap(), backend, 1).unwrap();
        let plan = pipeline.plan(request).unwrap();
        let [c, h, w] = plan.sampling.latent_shape;
        let scale = pipeline.bundle().manifest.latent_scale_factor as f32;
        let mut last = Vec::new();
        pipeline
            .generate(request, &mut |p| {
                last = p.latents.to_vec();
                true
            })
            .unwrap();
        let what = format!("{what} on {}", backend.name());
        let off = worst(&last, &latents.1);
        assert!(
            off <= 1e-4 * largest,
            "{what}: latents differ by up to {off:.2e} (largest {largest:.2})"
        );
        // The decoded image as floats, before the pipeline rounds it to bytes.
        let latent: Vec<f32> = last.iter().map(|v| v / scale).collect();
        let latent = Tensor::f32(&[1, c, h, w], latent).unwrap();
        let mut decoder = pipeline
            .bundle()
            .session(GraphRole::Decoder, backend, 1)
            .unwrap();
        let decoded = decoder.run(&[("latent", &latent)]).unwrap();
        assert_eq!(image.0, decoded[0].shape(), "{what}");
        let ours: Vec<f32> = decoded[0]
            .as_f32()
            .unwrap()
            .iter()
            .map(|v| ((v + 1.0) / 2.0).clamp(0.0, 1.0))
            .collect();
        let off = worst(&ours, &image.1);
        assert!(off <= 1e-3, "{what}: images differ by up to {off:.2e}");
    }
}

/// The bundle's tokenizer against the ids of every caption in a `tokens.json` (`captions`,
/// `ids`, padded to `length` as transformers does); returns how many were compared.
pub fn check_tokens(bundle: &Bundle, tokens_json: &Path, length: usize) -> usize {
    let tokens: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tokens_json).unwrap()).unwrap();
    let tokenizer = bundle.tokenizer.as_ref().unwrap();
    let captions = tokens["captions"].as_array().unwrap();
    for (caption, ids) in captions.iter().zip(tokens["ids"].as_array().unwrap()) {
        let caption = caption.as_str().unwrap();
        let want: Vec<i64> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let got = tokenizer.encode(caption, length).unwrap().ids;
        assert_eq!(got, want, "tokens of {caption:?}");
    }
    captions.len()
}
