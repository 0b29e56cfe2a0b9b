//! The process's malloc policy (glibc), set once at start: what the engines' allocations leave
//! resident, which no engine option controls.

/// One malloc arena for the whole process. glibc gives threads that allocate arenas of their
/// own (up to eight per core), and the rows of a guided step, run on two threads, left two
/// heaps of freed activations resident: the peak of a default `ldm generate` on two threads
/// went from 131 MB to 112 MB, at the same speed (allocations are few and large).
pub fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: first thing in main, before any other thread exists; mallopt only sets a limit.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Blocks of 1 MB and more (activations at large sizes) handed back to the system when freed,
/// for a run under a memory budget. By default glibc raises that threshold as blocks are freed
/// and keeps them for reuse: faster (a 512x512 image takes 16-17 s on two threads against
/// 22-23 s), but the peak then varies from run to run, up to 15 % above the plan's estimate,
/// where with this it stays below it (BENCHMARKS.md, "Peak memory against image size").
pub fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: before the pipeline's threads start; mallopt only sets a threshold.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
