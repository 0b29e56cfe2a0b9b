//! Generations batched into shared UNet calls ([`Pipeline::step`]): requests with their own
//! prompts, seeds, samplers, step counts and guidance, started at different times, give the
//! images each gives alone; generations that cannot share a call are refused.

mod common;

use common::{mean_abs_difference, shipped_bundle};
use ldm_core::SamplerKind;
use ldm_runtime::{Backend, Bundle, Generate, Generation, Image, Pipeline, RuntimeError};

fn pipeline(backend: Backend) -> Pipeline {
    Pipeline::new(Bundle::load(&shipped_bundle()).unwrap(), backend, 2).unwrap()
}

/// Requests that differ in all but their size: guided and not, 1 and 2 images.
fn requests() -> Vec<Generate> {
    vec![
        Generate::new(vec![
            "a large red circle in the center on a white background".into(),
        ])
        .steps(4)
        .guidance(3.0)
        .seed(1),
        Generate::new(vec!["a small blue square on a white background".into()])
            .steps(6)
            .guidance(1.0)
            .sampler(SamplerKind::Euler)
            .seed(2),
        Generate::new(vec![
            "a green triangle at the top".into(),
            "two yellow circles".into(),
        ])
        .steps(5)
        .guidance(2.0)
        .negative_prompt("blue")
        .sampler(SamplerKind::Plms)
        .seed(3),
    ]
}

/// Runs `requests` together, request i joining at step `i` of the first (as a server admits
/// what arrives while a batch samples), each finished as soon as it is done.
fn batched(pipeline: &mut Pipeline, requests: &[Generate]) -> Vec<Vec<Image>> {
    let mut running: Vec<(usize, Generation)> = Vec::new();
    let mut images: Vec<Option<Vec<Image>>> = vec![None; requests.len()];
    let mut calls = 0;
    loop {
        if calls < requests.len() {
            running.push((calls, pipeline.start(&requests[calls]).unwrap()));
        }
        if running.is_empty() {
            break;
        }
        let mut batch: Vec<&mut Generation> = running.iter_mut().map(|(_, g)| g).collect();
        pipeline.step(&mut batch).unwrap();
        calls += 1;
        let (done, still): (Vec<_>, Vec<_>) = running.into_iter().partition(|(_, g)| g.is_done());
        for (index, generation) in done {
            images[index] = Some(pipeline.finish(generation).unwrap());
        }
        running = still;
    }
    images.into_iter().map(Option::unwrap).collect()
}

#[test]
fn batched_requests_give_what_each_gives_alone() {
    let backends = [
        Backend::Tract,
        #[cfg(feature = "ort")]
        Backend::OrtCpu,
    ];
    for backend in backends {
        let mut pipeline = pipeline(backend);
        let requests = requests();
        let together = batched(&mut pipeline, &requests);
        for (request, images) in requests.iter().zip(&together) {
            let alone = pipeline.generate(request, &mut |_| true).unwrap();
            assert_eq!(alone.len(), images.len());
            for (a, b) in alone.iter().zip(images) {
                // Batch composition changes the engine's summation order only.
                let d = mean_abs_difference(a, b);
                assert!(d < 0.5, "{}: {d} of 255 apart", backend.name());
            }
        }
    }
}

#[test]
fn generations_that_cannot_share_a_call_are_refused() {
    let mut pipeline = pipeline(Backend::Tract);
    let small = Generate::new(vec!["a red circle".into()]).steps(2);
    let mut a = pipeline.start(&small).unwrap();
    let mut b = pipeline.start(&small.clone().size(128)).unwrap();
    assert!(!a.batches_with(&b));
    let err = pipeline.step(&mut [&mut a, &mut b]).unwrap_err();
    assert!(matches!(err, RuntimeError::MixedBatch), "{err}");
    let mut c = pipeline.start(&small).unwrap();
    pipeline.step(&mut [&mut a, &mut c]).unwrap();
    pipeline.step(&mut [&mut a, &mut c]).unwrap();
    assert!(a.is_done() && c.is_done());
    let err = pipeline.step(&mut [&mut a]).unwrap_err();
    assert!(
        matches!(err, RuntimeError::MixedBatch),
        "a finished one: {err}"
    );
    assert_eq!(pipeline.finish(a).unwrap().len(), 1);
    assert!(pipeline.step(&mut []).is_ok());
}
