//! Generation jobs: their state as every route sees it (status, step, images, error), shared
//! between the request handlers and the worker that runs them, and the store that keeps
//! finished jobs (and so their images) for a limited time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

/// A job as it stands.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub status: Status,
    pub step: usize,
    pub total: usize,
    /// PNG files, once succeeded.
    pub images: Arc<Vec<Vec<u8>>>,
    /// Why it failed.
    pub error: Option<String>,
    /// The seed of its first image.
    pub seed: u64,
    /// PNG files of the latents after this step, when the job asked for previews and the
    /// step is one of them.
    pub preview: Option<Arc<Vec<Vec<u8>>>>,
}

pub struct Job {
    pub id: String,
    pub model: String,
    /// Seconds since the epoch at submission.
    pub created: u64,
    /// Steps between preview images (0: none).
    pub preview_every: usize,
    cancelled: AtomicBool,
    state: watch::Sender<Snapshot>,
    finished: Mutex<Option<Instant>>,
}

impl Job {
    pub fn new(id: String, model: String, seed: u64, preview_every: usize) -> Self {
        let (state, _) = watch::channel(Snapshot {
            status: Status::Queued,
            step: 0,
            total: 0,
            images: Arc::new(Vec::new()),
            error: None,
            seed,
            preview: None,
        });
        Job {
            id,
            model,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            preview_every,
            cancelled: AtomicBool::new(false),
            state,
            finished: Mutex::new(None),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.state.subscribe()
    }

    /// Asks the worker to stop it (at the next step, or before it starts).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Whether the step just done is one to send a preview of.
    pub fn wants_preview(&self, step: usize) -> bool {
        self.preview_every > 0 && step.is_multiple_of(self.preview_every)
    }

    pub fn progress(&self, step: usize, total: usize, preview: Option<Vec<Vec<u8>>>) {
        self.state.send_modify(|s| {
            s.status = Status::Running;
            s.step = step;
            s.total = total;
            s.preview = preview.map(Arc::new);
        });
    }

    /// The job's last state: succeeded with `images`, or failed or cancelled.
    pub fn finish(&self, outcome: Result<Vec<Vec<u8>>, Outcome>) {
        *self.finished.lock().expect("job lock") = Some(Instant::now());
        self.state.send_modify(|s| match outcome {
            Ok(images) => {
                s.status = Status::Succeeded;
                s.step = s.total;
                s.images = Arc::new(images);
                s.preview = None;
            }
            Err(Outcome::Cancelled) => s.status = Status::Cancelled,
            Err(Outcome::Failed(message)) => {
                s.status = Status::Failed;
                s.error = Some(message);
            }
        });
    }

    fn finished_at(&self) -> Option<Instant> {
        *self.finished.lock().expect("job lock")
    }

    fn finished_before(&self, limit: Instant) -> bool {
        self.finished_at().is_some_and(|t| t < limit)
    }
}

/// How a job ended, when not with images.
#[derive(Debug, Clone)]
pub enum Outcome {
    Cancelled,
    Failed(String),
}

/// Finished jobs kept at most, whatever their age: their images are held in memory.
const MAX_FINISHED: usize = 1024;

/// Jobs by id; finished ones are dropped `keep` after they end, the oldest first beyond
/// [`MAX_FINISHED`].
pub struct JobStore {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    keep: Duration,
}

impl JobStore {
    pub fn new(keep: Duration) -> Self {
        JobStore {
            jobs: Mutex::new(HashMap::new()),
            keep,
        }
    }

    /// A fresh, unguessable job id.
    pub fn new_id() -> String {
        format!("{:032x}", rand::random::<u128>())
    }

    pub fn insert(&self, job: Arc<Job>) {
        let mut jobs = self.jobs.lock().expect("store lock");
        if let Some(limit) = Instant::now().checked_sub(self.keep) {
            jobs.retain(|_, j| !j.finished_before(limit));
        }
        let mut finished: Vec<(Instant, String)> = jobs
            .values()
            .filter_map(|j| j.finished_at().map(|t| (t, j.id.clone())))
            .collect();
        if finished.len() > MAX_FINISHED {
            finished.sort();
            for (_, id) in &finished[..finished.len() - MAX_FINISHED] {
                jobs.remove(id);
            }
        }
        jobs.insert(job.id.clone(), job);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.lock().expect("store lock").get(id).cloned()
    }

    /// Jobs not yet finished.
    pub fn active(&self) -> Vec<Arc<Job>> {
        self.jobs
            .lock()
            .expect("store lock")
            .values()
            .filter(|j| !j.snapshot().status.is_final())
            .cloned()
            .collect()
    }
}

/// Cancels a job when the request waiting on it goes away (its client disconnected), unless
/// it finished first.
pub struct CancelOnDrop(pub Arc<Job>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.0.snapshot().status.is_final() {
            self.0.cancel();
        }
    }
}
