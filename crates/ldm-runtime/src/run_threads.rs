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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};
use tract_linalg::multithread::{multithread_tract_scope, Executor};

use crate::RuntimeError;

thread_local! {
    /// The pool this thread is worker 0 of, once a session ran a plan on it.
    static CALLER_POOL: RefCell<Option<Arc<ThreadPool>>> = const { RefCell::new(None) };
}

/// A session's thread count and where its runs go.
pub(crate) struct RunThreads {
    threads: usize,
    /// The pool for calls from threads that cannot be worker 0 of a pool of `threads`, started
    /// on the first such call.
    handed_off: Mutex<Option<Arc<ThreadPool>>>,
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
        Ok(pool.install(|| {
            let _helpers = KeepAwake::start();
            multithread_tract_scope(Executor::MultiThread(pool.clone()), work)
        }))
    }

    fn handed_off_pool(&self) -> Result<Arc<ThreadPool>, RuntimeError> {
        let mut slot = self
            .handed_off
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            *slot = Some(Arc::new(builder(self.threads).build().map_err(|e| {
                RuntimeError::Run {
                    engine: "tract",
                    message: format!("cannot start {} threads: {e}", self.threads),
                }
            })?));
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
fn caller_pool(threads: usize) -> Option<Arc<ThreadPool>> {
    CALLER_POOL.with_borrow_mut(|own| {
        if own.is_none() && rayon::current_thread_index().is_none() {
            // rayon keeps the calling thread's worker state for the thread's life: the pool's
            // other threads stop when the thread ends and drops it.
            *own = builder(threads)
                .use_current_thread()
                .build()
                .ok()
                .map(Arc::new);
        }
        own.as_ref()
            .filter(|pool| pool.current_num_threads() == threads)
            .cloned()
    })
}

/// The pool's other workers, kept looking for work while a plan runs on this one.
///
/// An idle rayon worker sleeps, and on the project's VMs a sleeping thread took longer to wake
/// than a convolution's half takes to run: the plan's thread did both halves itself, and two
/// threads ran no faster than one. Each helper runs [`rayon::yield_now`] in a loop (taking the
/// halves the plan's thread offers) until the run ends, as ONNX Runtime's threads spin between
/// operators. The helper given to the plan's own thread returns at once.
struct KeepAwake {
    done: Arc<AtomicBool>,
}

impl KeepAwake {
    /// Starts a helper on each of the current pool's threads but this one.
    fn start() -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let home = rayon::current_thread_index();
        let helpers_done = done.clone();
        // One job per thread, so that each other thread surely gets its own (a plain spawn
        // lands in this thread's queue, where this thread may pop it first).
        rayon::spawn_broadcast(move |context| {
            while !helpers_done.load(Ordering::Acquire) && Some(context.index()) != home {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        });
        KeepAwake { done }
    }
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
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
