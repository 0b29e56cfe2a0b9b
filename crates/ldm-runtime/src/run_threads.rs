//! The threads a tract plan runs on when a session has more than one.
//!
//! The plan runs on the calling thread, which is made worker 0 of a rayon pool of its own (one
//! per calling thread, shared by every session it runs with that many threads): tract's and our
//! kernels' splits go to the pool's other workers, and a call crosses no thread. Handing each
//! call to a pool worker and back had cost two thread wake-ups, about 0.2 ms a call on the
//! project's VMs: nothing to a 9 ms UNet, 40 % of the 0.5 ms text encoder (BENCHMARKS.md).
//!
//! A calling thread that cannot join such a pool (a worker of another rayon pool, or a thread
//! whose own pool has another size) hands its calls to a pool the session keeps for them.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::{ThreadPool, ThreadPoolBuilder};
use tract_linalg::multithread::{multithread_tract_scope, Executor};

use crate::RuntimeError;

/// How long the pool's other workers keep looking for work after a run: long enough to span
/// the gap to a pipeline's next call, short enough that an idle machine spends at most 1 ms
/// of a core per call on it.
const LINGER: Duration = Duration::from_millis(1);

thread_local! {
    /// The pool this thread is worker 0 of, once a session ran a plan on it.
    static CALLER_POOL: RefCell<Option<Pool>> = const { RefCell::new(None) };
}

/// A session's thread count and where its runs go.
pub(crate) struct RunThreads {
    threads: usize,
    /// The pool for calls from threads that cannot be worker 0 of a pool of `threads`, started
    /// on the first such call.
    handed_off: Mutex<Option<Pool>>,
}

impl RunThreads {
    pub fn new(threads: usize) -> Self {
        Self {
            threads,
            handed_off: Mutex::new(None),
        }
    }

    pub fn count(&self) -> usize {
        self.threads
    }

    /// Runs `work` (a plan's run) with tract's executor spread over the session's threads.
    pub fn run<R: Send>(&self, work: impl FnOnce() -> R + Send) -> Result<R, RuntimeError> {
        if self.threads == 1 {
            return Ok(work());
        }
        let pool = match caller_pool(self.threads) {
            Some(pool) => pool,
            None => self.handed_off_pool()?,
        };
        // Inline on the caller's own pool; a hand-off to a worker on the session's.
        Ok(pool.threads.install(|| {
            let _helpers = Helpers::start(&pool.awake);
            multithread_tract_scope(Executor::MultiThread(pool.threads.clone()), work)
        }))
    }

    fn handed_off_pool(&self) -> Result<Pool, RuntimeError> {
        let mut slot = self
            .handed_off
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            let threads = builder(self.threads)
                .build()
                .map_err(|e| RuntimeError::Run {
                    engine: "tract",
                    message: format!("cannot start {} threads: {e}", self.threads),
                })?;
            *slot = Some(Pool::new(threads));
        }
        Ok(slot.clone().expect("set above"))
    }
}

fn builder(threads: usize) -> ThreadPoolBuilder {
    ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("ldm-tract-{i}"))
}

/// The calling thread's own pool of `threads`, made on its first call; `None` when it cannot
/// have one (it works for another pool already, or its pool has another size).
fn caller_pool(threads: usize) -> Option<Pool> {
    CALLER_POOL.with_borrow_mut(|own| {
        if own.is_none() && rayon::current_thread_index().is_none() {
            // rayon keeps the calling thread's worker state for the thread's life: the pool's
            // other threads stop when the thread ends and drops it.
            *own = builder(threads)
                .use_current_thread()
                .build()
                .ok()
                .map(Pool::new);
        }
        own.as_ref()
            .filter(|pool| pool.threads.current_num_threads() == threads)
            .cloned()
    })
}

#[derive(Clone)]
struct Pool {
    threads: Arc<ThreadPool>,
    awake: Arc<Awake>,
}

impl Pool {
    fn new(threads: ThreadPool) -> Self {
        Self {
            threads: Arc::new(threads),
            awake: Arc::new(Awake {
                runs: AtomicUsize::new(0),
                helpers: AtomicUsize::new(0),
                until_ns: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }
}

/// What keeps a pool's other workers looking for work while plans run on it, and for
/// [`LINGER`] after.
///
/// An idle rayon worker sleeps, and on the project's VMs a sleeping thread took longer to wake
/// than a convolution's half takes to run: the plan's thread did both halves itself, and two
/// threads ran no faster than one. A helper on each other worker runs [`rayon::yield_now`] in a
/// loop instead (taking the halves the plan's thread offers), as ONNX Runtime's threads spin
/// between operators, and stays a moment after the run so that back-to-back calls find it
/// awake.
struct Awake {
    /// Plans running on the pool.
    runs: AtomicUsize,
    /// Helpers started and not yet gone: none are started while some remain.
    helpers: AtomicUsize,
    /// When the helpers may stop once no plan runs, in nanoseconds after `epoch`.
    until_ns: AtomicU64,
    epoch: Instant,
}

impl Awake {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn wanted(&self) -> bool {
        self.runs.load(Ordering::Acquire) > 0
            || self.now_ns() < self.until_ns.load(Ordering::Acquire)
    }
}

/// One run's hold on its pool's helpers.
struct Helpers {
    awake: Arc<Awake>,
}

impl Helpers {
    /// Counts a run in and, unless helpers remain from the last, starts one on each of the
    /// current pool's threads but this one.
    fn start(awake: &Arc<Awake>) -> Self {
        awake.runs.fetch_add(1, Ordering::AcqRel);
        let others = rayon::current_num_threads() - 1;
        let none_left = awake
            .helpers
            .compare_exchange(0, others, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if none_left {
            let home = rayon::current_thread_index();
            let helpers = awake.clone();
            // One job per thread, so that each other thread surely gets its own (a plain spawn
            // lands in this thread's queue, where this thread may pop it first).
            rayon::spawn_broadcast(move |context| {
                if Some(context.index()) == home {
                    return;
                }
                while helpers.wanted() {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
                // A run that starts between the check above and this leaves finds a helper
                // counted and starts none: it runs as if its workers slept.
                helpers.helpers.fetch_sub(1, Ordering::AcqRel);
            });
        }
        Helpers {
            awake: awake.clone(),
        }
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        let awake = &self.awake;
        // The deadline first, so that no helper sees no run and an old deadline.
        awake
            .until_ns
            .store(awake.now_ns() + LINGER.as_nanos() as u64, Ordering::Release);
        awake.runs.fetch_sub(1, Ordering::AcqRel);
        // The helper given to this thread stays queued until the thread next waits for the
        // pool, which a plan without splits never does: run it now (it returns at once), so
        // that such calls cannot pile helpers up.
        while rayon::yield_local() == Some(rayon::Yield::Executed) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread a run's work ran on, and the pool it saw.
    fn where_it_ran(threads: &RunThreads) -> (std::thread::ThreadId, Option<usize>, usize) {
        threads
            .run(|| {
                (
                    std::thread::current().id(),
                    rayon::current_thread_index(),
                    rayon::current_num_threads(),
                )
            })
            .unwrap()
    }

    /// Each test runs on a thread of its own, whose pool it starts.
    fn on_fresh_thread(test: impl FnOnce() + Send) {
        std::thread::scope(|scope| scope.spawn(test).join().unwrap());
    }

    #[test]
    fn a_run_stays_on_the_calling_thread_as_worker_zero() {
        on_fresh_thread(|| {
            let caller = std::thread::current().id();
            let two = RunThreads::new(2);
            assert_eq!(where_it_ran(&two), (caller, Some(0), 2));
            // A second session of the same size shares the pool.
            assert_eq!(where_it_ran(&RunThreads::new(2)), (caller, Some(0), 2));
            let indices = two
                .run(|| rayon::broadcast(|context| context.index()))
                .unwrap();
            assert_eq!(indices, [0, 1]);
        });
    }

    #[test]
    fn runs_without_splits_leave_no_helper_queued() {
        on_fresh_thread(|| {
            let two = RunThreads::new(2);
            for _ in 0..100 {
                two.run(|| ()).unwrap();
            }
            assert_eq!(rayon::yield_local(), Some(rayon::Yield::Idle));
        });
    }

    #[test]
    fn helpers_linger_after_a_run_then_go_and_never_pile_up() {
        on_fresh_thread(|| {
            let two = RunThreads::new(2);
            let awake = caller_pool(2).unwrap().awake;
            for _ in 0..1000 {
                two.run(|| ()).unwrap();
                assert!(awake.helpers.load(Ordering::Acquire) <= 1);
            }
            let ended = Instant::now();
            std::thread::sleep(LINGER / 5);
            let left = awake.helpers.load(Ordering::Acquire);
            // A helper leaves only once LINGER has passed (this thread may oversleep).
            assert!(left == 1 || ended.elapsed() >= LINGER, "gone before LINGER");
            let deadline = Instant::now() + Duration::from_secs(10);
            while awake.helpers.load(Ordering::Acquire) > 0 {
                assert!(
                    Instant::now() < deadline,
                    "still spinning 10 s after the run"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    }

    #[test]
    fn callers_that_cannot_join_hand_their_runs_off() {
        on_fresh_thread(|| {
            let caller = std::thread::current().id();
            assert_eq!(where_it_ran(&RunThreads::new(2)).0, caller);
            // This thread's pool has two threads: a session of three hands off.
            let (thread, index, count) = where_it_ran(&RunThreads::new(3));
            assert!(thread != caller && index.is_some() && count == 3);
        });
        on_fresh_thread(|| {
            let other = ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let worker = other.install(|| std::thread::current().id());
            let (thread, _, count) = other.install(|| where_it_ran(&RunThreads::new(2)));
            assert!(thread != worker && count == 2);
        });
    }

    #[test]
    fn one_thread_runs_on_the_caller_outside_any_pool() {
        on_fresh_thread(|| {
            let caller = std::thread::current().id();
            assert_eq!(
                where_it_ran(&RunThreads::new(1)),
                (caller, None, rayon::current_num_threads())
            );
        });
    }
}
