//! What the kernels' tests share: running a graph, comparing its outputs, and running it on
//! one thread and on two.

use std::sync::Arc;
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

/// `model`'s first output, optimised, on `inputs`, as a flat vector.
pub fn run(model: TypedModel, inputs: TVec<TValue>) -> TractResult<Vec<f32>> {
    let plan = model.into_optimized()?.into_runnable()?;
    let output = plan.run(inputs)?.remove(0);
    Ok(output
        .to_plain_array_view::<f32>()?
        .iter()
        .copied()
        .collect())
}

/// Asserts that `actual` is within `relative` of `expected`'s largest magnitude (at least 1)
/// everywhere.
pub fn assert_close(expected: &[f32], actual: &[f32], relative: f32, label: &str) {
    assert_eq!(expected.len(), actual.len(), "{label}");
    let scale = expected.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = expected
        .iter()
        .zip(actual)
        .fold(0f32, |m, (e, a)| m.max((e - a).abs()));
    assert!(
        worst <= relative * scale,
        "{label}: {worst} off at scale {scale}"
    );
}

/// Asserts that `model` computes the same bits on one thread as on a pool of two.
pub fn assert_same_on_two_threads(
    model: TypedModel,
    inputs: impl Fn() -> TVec<TValue> + Sync,
    label: &str,
) -> TractResult<()> {
    let plan = model.into_optimized()?.into_runnable()?;
    let alone = plan.run(inputs())?.remove(0);
    let pool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(2).build()?);
    let shared = pool.install(|| {
        multithread_tract_scope(Executor::MultiThread(pool.clone()), || plan.run(inputs()))
    })?;
    assert_eq!(alone, shared[0], "{label}");
    Ok(())
}
