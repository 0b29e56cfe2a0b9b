//! A model's worker: the one thread that owns its pipeline. Every job it has admitted samples
//! in lockstep, one UNet call per step for all of them (continuous batching): a job that
//! arrives while others sample joins at the next step, while the batch stays within its
//! image limit and the memory budget. Jobs are admitted in arrival order; one of another
//! latent size waits at the head of the queue until the running batch drains.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ldm_core::manifest::BundleConditioning;
use ldm_runtime::{Generate, Generation, Image, Pipeline, Plan, RuntimeError};
use tokio::sync::mpsc;

use crate::images::png;
use crate::jobs::{Job, Outcome};
use crate::metrics::Metrics;
use crate::models::Work;

pub struct Worker {
    pub pipeline: Pipeline,
    /// Jobs queued and not yet admitted.
    pub depth: Arc<AtomicUsize>,
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// Images one UNet call may carry (a single larger request still runs, alone).
    pub max_batch: usize,
}

/// An admitted job and its sampling.
struct Running {
    job: Arc<Job>,
    generation: Generation,
}

impl Worker {
    pub fn run(mut self, mut queue: mpsc::Receiver<Work>) {
        self.warm_up();
        self.ready.store(true, Ordering::SeqCst);
        let mut running: Vec<Running> = Vec::new();
        // The next job in arrival order, taken from the queue but not yet admitted.
        let mut head: Option<(Work, Plan)> = None;
        loop {
            if running.is_empty() && head.is_none() {
                match queue.blocking_recv() {
                    Some(work) => head = self.planned(work),
                    None => return, // the server has shut down and every job is done
                }
            }
            loop {
                if head.is_none() {
                    match queue.try_recv() {
                        Ok(work) => head = self.planned(work),
                        Err(_) => break,
                    }
                    continue;
                }
                let (work, plan) = head.take().expect("checked above");
                if work.job.is_cancelled() {
                    self.depth.fetch_sub(1, Ordering::SeqCst);
                    work.job.finish(Err(Outcome::Cancelled));
                    continue;
                }
                if !self.fits(&running, &plan) {
                    head = Some((work, plan));
                    break;
                }
                self.depth.fetch_sub(1, Ordering::SeqCst);
                match self.pipeline.start(&work.request) {
                    Ok(generation) => running.push(Running {
                        job: work.job,
                        generation,
                    }),
                    Err(e) => work.job.finish(Err(Outcome::Failed(e.to_string()))),
                }
            }
            if !running.is_empty() {
                running = self.step(running);
            }
        }
    }

    /// `work`'s plan, or None when it is already over (cancelled while queued, or refused by
    /// the plan, which the handlers checked, so only when the pipeline's budget differs).
    fn planned(&self, work: Work) -> Option<(Work, Plan)> {
        if work.job.is_cancelled() {
            self.depth.fetch_sub(1, Ordering::SeqCst);
            work.job.finish(Err(Outcome::Cancelled));
            return None;
        }
        match self.pipeline.plan(&work.request) {
            Ok(plan) => Some((work, plan)),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                work.job.finish(Err(Outcome::Failed(e.to_string())));
                None
            }
        }
    }

    /// Whether a job planned as `plan` may join `running` at its next step.
    fn fits(&self, running: &[Running], plan: &Plan) -> bool {
        let Some(first) = running.first() else {
            return true;
        };
        let images: usize = running
            .iter()
            .map(|r| r.generation.plan().sampling.images)
            .sum();
        let rows: usize = running.iter().map(|r| r.generation.rows()).sum();
        let planner = self.pipeline.planner();
        first.generation.plan().sampling.latent_shape == plan.sampling.latent_shape
            && images + plan.sampling.images <= self.max_batch
            && planner
                .batch_memory(rows + plan.sampling.rows(), plan)
                .total()
                <= planner.memory_budget()
    }

    /// One step of every running job in one UNet call; reports progress, finishes the jobs
    /// that are done or cancelled, and returns those still sampling.
    fn step(&mut self, mut running: Vec<Running>) -> Vec<Running> {
        let started = Instant::now();
        let images: usize = running
            .iter()
            .map(|r| r.generation.plan().sampling.images)
            .sum();
        let mut batch: Vec<&mut Generation> =
            running.iter_mut().map(|r| &mut r.generation).collect();
        if let Err(e) = self.pipeline.step(&mut batch) {
            // The call failed for all of them (an engine error, a non-finite output).
            for r in running {
                r.job.finish(Err(Outcome::Failed(e.to_string())));
            }
            return Vec::new();
        }
        self.metrics.step(started.elapsed().as_secs_f64(), images);
        let mut still = Vec::with_capacity(running.len());
        for r in running {
            let (step, total) = {
                let progress = r.generation.progress();
                (progress.step, progress.total)
            };
            let preview = (r.job.wants_preview(step) && !r.generation.is_done())
                .then(|| self.pipeline.preview(&r.generation))
                .and_then(|decoded| decoded.ok())
                .map(|images| images.iter().map(png).collect());
            r.job.progress(step, total, preview);
            if r.job.is_cancelled() {
                r.job.finish(Err(Outcome::Cancelled));
            } else if r.generation.is_done() {
                let result = self.pipeline.finish(r.generation);
                r.job.finish(self.outcome(result));
            } else {
                still.push(r);
            }
        }
        still
    }

    fn outcome(&self, decoded: Result<Vec<Image>, RuntimeError>) -> Result<Vec<Vec<u8>>, Outcome> {
        let images = decoded.map_err(|e| Outcome::Failed(e.to_string()))?;
        self.metrics.images(images.len());
        Ok(images.iter().map(png).collect())
    }

    /// One request of one step at the default size, then one UNet step at every batch size
    /// up to the limit, so that no request pays for the engine's plan optimisation (tract
    /// optimises once per input shape, about a second each for the shipped bundle).
    fn warm_up(&mut self) {
        let conditioning = &self.pipeline.bundle().manifest.conditioning;
        let prompt = match conditioning {
            BundleConditioning::Class { .. } => "0",
            BundleConditioning::Concat { .. } => return, // needs an input image
            _ => "",
        };
        let one = Generate::new(vec![prompt.into()]).steps(1);
        let _ = self.pipeline.generate(&one, &mut |_| true);
        for images in 2..=self.max_batch {
            let batch = Generate::new(vec![prompt.into(); images]).steps(1);
            if let Ok(mut generation) = self.pipeline.start(&batch) {
                let _ = self.pipeline.step(&mut [&mut generation]);
            }
        }
    }
}
