//! tract's decluttered graphs cached on disk: a second session plans from the cache and
//! computes exactly what the first did; an entry cut short or with a flipped bit is ignored and
//! written again; the cache keeps to its budget.

mod common;

use ldm_core::manifest::{DimSpec, GraphRole};
use ldm_runtime::{Bundle, PlanCache, Session, Tensor, TractSession};

/// The shipped bundle's UNet (its transformer blocks use the exact GELU, which tract's NNEF
/// cannot name without the runtime's help) and inputs for one row at 8x8 latents.
fn unet_and_inputs() -> (std::path::PathBuf, Vec<(String, Tensor)>) {
    let bundle = Bundle::load(&common::shipped_bundle()).unwrap();
    let spec = bundle.manifest.graph(GraphRole::Unet).unwrap();
    let inputs = spec
        .inputs
        .iter()
        .map(|input| {
            let shape: Vec<usize> = input
                .shape
                .iter()
                .map(|d| match d {
                    DimSpec::Fixed(n) => *n,
                    DimSpec::Symbol(name) if name == "batch" => 1,
                    DimSpec::Symbol(_) => 8,
                })
                .collect();
            let n: usize = shape.iter().product();
            let values = (0..n)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            (input.name.clone(), Tensor::f32(&shape, values).unwrap())
        })
        .collect();
    (bundle.graph_path(GraphRole::Unet).unwrap(), inputs)
}

fn run(session: &mut TractSession, inputs: &[(String, Tensor)]) -> Vec<f32> {
    let named: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    session.run(&named).unwrap()[0].as_f32().unwrap().to_vec()
}

fn entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    found.sort();
    found
}

#[test]
fn a_second_session_plans_from_the_cache_and_computes_the_same() {
    let (unet, inputs) = unet_and_inputs();
    let dir = tempfile::tempdir().unwrap();
    let cache = PlanCache::new(dir.path().join("plans"));

    let mut uncached = TractSession::with_threads(&unet, 1).unwrap();
    let expected = run(&mut uncached, &inputs);

    let mut first = TractSession::with_plan_cache(&unet, 1, cache.clone()).unwrap();
    assert_eq!(run(&mut first, &inputs), expected);
    assert_eq!(first.plans_from_cache(), 0);
    let written = entries(cache.dir());
    assert_eq!(written.len(), 1, "{written:?}");

    let mut second = TractSession::with_plan_cache(&unet, 1, cache.clone()).unwrap();
    assert_eq!(
        run(&mut second, &inputs),
        expected,
        "the cached plan computes the same bits"
    );
    assert_eq!(second.plans_from_cache(), 1);

    // An entry cut short reads as absent: the session plans from the graph and writes it again.
    let bytes = std::fs::read(&written[0]).unwrap();
    std::fs::write(&written[0], &bytes[..bytes.len() / 2]).unwrap();
    let mut third = TractSession::with_plan_cache(&unet, 1, cache.clone()).unwrap();
    assert_eq!(run(&mut third, &inputs), expected);
    assert_eq!(third.plans_from_cache(), 0);
    assert_eq!(std::fs::read(&written[0]).unwrap().len(), bytes.len());

    // So does one flipped bit among the weights, which would otherwise load and compute wrongly.
    let mut flipped = std::fs::read(&written[0]).unwrap();
    let near_end = flipped.len() - 4096;
    flipped[near_end] ^= 0x10;
    std::fs::write(&written[0], &flipped).unwrap();
    let mut fourth = TractSession::with_plan_cache(&unet, 1, cache.clone()).unwrap();
    assert_eq!(run(&mut fourth, &inputs), expected);
    assert_eq!(fourth.plans_from_cache(), 0);
    let mut fifth = TractSession::with_plan_cache(&unet, 1, cache.clone()).unwrap();
    assert_eq!(run(&mut fifth, &inputs), expected);
    assert_eq!(fifth.plans_from_cache(), 1, "the entry was written again");

    // Another graph file (one byte of its weights changed) gets an entry of its own.
    let mut edited = std::fs::read(&unet).unwrap();
    let last = edited.len() - 1;
    edited[last] ^= 1;
    let copy = dir.path().join("unet.onnx");
    std::fs::write(&copy, edited).unwrap();
    let mut other = TractSession::with_plan_cache(&copy, 1, cache.clone()).unwrap();
    run(&mut other, &inputs);
    assert_eq!(other.plans_from_cache(), 0);
    assert_eq!(entries(cache.dir()).len(), 2);
}

#[test]
fn the_cache_drops_its_least_recently_used_entries_past_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let cache = PlanCache::new(dir.path());
    let now = std::time::SystemTime::now();
    for (age, name) in [(30, "old"), (20, "middle"), (10, "new")] {
        let path = dir.path().join(format!("{name}.nnef.tar"));
        std::fs::write(&path, vec![0u8; 1000]).unwrap();
        let file = std::fs::File::options().append(true).open(&path).unwrap();
        file.set_modified(now - std::time::Duration::from_secs(age))
            .unwrap();
    }
    std::fs::write(dir.path().join("unrelated.txt"), vec![0u8; 5000]).unwrap();
    cache.trim(2000).unwrap();
    let names: Vec<String> = entries(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["middle.nnef.tar", "new.nnef.tar", "unrelated.txt"]);
}
