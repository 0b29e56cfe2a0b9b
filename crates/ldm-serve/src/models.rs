//! The bundles a server holds: each loaded once into a pipeline that a worker thread of its
//! own ([`crate::worker`]) keeps warm and runs batched jobs on, from a bounded queue.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::http::StatusCode;
use ldm_runtime::{Backend, Bundle, Generate, Pipeline, Planner};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::jobs::Job;
use crate::metrics::Metrics;
use crate::worker::Worker;

/// A job for a model's worker.
pub struct Work {
    pub request: Generate,
    pub job: Arc<Job>,
}

pub struct Model {
    /// The bundle folder's name, which requests choose it by.
    pub name: String,
    /// Checks requests with the pipeline's own words before they are queued.
    pub planner: Planner,
    queue: mpsc::Sender<Work>,
    depth: Arc<AtomicUsize>,
    ready: Arc<AtomicBool>,
}

impl Model {
    /// Loads the bundle in `dir` and starts its worker, which warms the pipeline up (one
    /// step at the default size) before it takes jobs.
    pub fn load(
        dir: &Path,
        backend: Backend,
        threads: usize,
        queue: usize,
        max_batch: usize,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Model> {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("model")
            .to_string();
        let (tx, rx) = mpsc::channel(queue.max(1));
        let depth = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        // Sessions stay on the thread that opened them: the worker loads the bundle and
        // hands back what planning needs.
        let (opened, loaded) = std::sync::mpsc::channel();
        let (dir_owned, worker_depth, worker_ready) =
            (dir.to_path_buf(), depth.clone(), ready.clone());
        std::thread::Builder::new()
            .name(format!("ldm-{name}"))
            .spawn(move || {
                let pipeline = Bundle::load(&dir_owned)
                    .with_context(|| format!("cannot load {}", dir_owned.display()))
                    .and_then(|bundle| {
                        Pipeline::new(bundle, backend, threads).with_context(|| {
                            format!("cannot open {} on {}", dir_owned.display(), backend.name())
                        })
                    });
                let pipeline = match pipeline {
                    Ok(p) => {
                        let _ = opened.send(Ok(p.planner().clone()));
                        p
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                };
                Worker {
                    pipeline,
                    depth: worker_depth,
                    ready: worker_ready,
                    metrics,
                    max_batch,
                }
                .run(rx)
            })
            .context("cannot start a worker thread")?;
        let planner = loaded
            .recv()
            .context("the worker thread stopped while loading")??;
        Ok(Model {
            name,
            planner,
            queue: tx,
            depth,
            ready,
        })
    }

    /// Queues `work`, or refuses it with 429 when the queue is full.
    pub fn submit(&self, work: Work) -> Result<(), ApiError> {
        // Counted before it is sent, so that the worker never takes it off first.
        self.depth.fetch_add(1, Ordering::SeqCst);
        let sent = self.queue.try_send(work);
        if sent.is_err() {
            self.depth.fetch_sub(1, Ordering::SeqCst);
        }
        match sent {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("the queue of '{}' is full; retry shortly", self.name),
                )
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the worker of '{}' has stopped", self.name),
            )),
        }
    }

    /// Jobs waiting for the worker.
    pub fn queued(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// Whether the worker has warmed up and takes jobs.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}
