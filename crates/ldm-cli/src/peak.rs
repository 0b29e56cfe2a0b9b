//! The machine's f32 multiply-accumulate peak, as `ldm bench` divides by it: the best rate any
//! matrix product available here reaches (tract's own, `matrixmultiply`'s and, with the
//! `train` feature, libtorch's), beside the vector units' arithmetic bound read from the CPU.
//! A rate of one library alone would make a network that beats it look above 100 %.

use std::time::Instant;

use serde::Serialize;

/// Side of the square products measured: large enough for every kernel to reach its rate.
const SIDE: usize = 512;
/// Products per thread and kernel (about 2.7 GMAC each).
const REPEATS: usize = 20;

/// One kernel's measured rate.
#[derive(Debug, Clone, Serialize)]
pub struct KernelRate {
    pub kernel: &'static str,
    pub threads: usize,
    pub gmacs: f64,
}

/// What `ldm bench` reports as the machine's peak on one thread count.
#[derive(Debug, Clone, Serialize)]
pub struct Peak {
    pub threads: usize,
    /// The best of `kernels`, in GMAC/s: what "% of peak" divides by.
    pub gmacs: f64,
    pub kernels: Vec<KernelRate>,
    /// Lanes x fused multiply-add pipes x clock x threads, where the CPU's flags and clock tell.
    pub arithmetic_bound_gmacs: Option<f64>,
}

impl Peak {
    pub fn measure(threads: usize) -> Peak {
        let kernels: Vec<KernelRate> = [
            ("tract", per_thread(threads, tract_rate)),
            ("matrixmultiply", per_thread(threads, matrixmultiply_rate)),
            ("libtorch", libtorch_rate(threads)),
        ]
        .into_iter()
        .filter_map(|(kernel, rate)| {
            rate.map(|macs_per_second| KernelRate {
                kernel,
                threads,
                gmacs: macs_per_second / 1e9,
            })
        })
        .collect();
        Peak {
            threads,
            gmacs: kernels.iter().map(|k| k.gmacs).fold(0.0, f64::max),
            kernels,
            arithmetic_bound_gmacs: arithmetic_bound(threads),
        }
    }

    /// "38.5 GMAC/s (tract 38.5, matrixmultiply 31.2; arithmetic bound 83.1)".
    pub fn describe(&self) -> String {
        let kernels: Vec<String> = self
            .kernels
            .iter()
            .map(|k| format!("{} {:.1}", k.kernel, k.gmacs))
            .collect();
        let bound = self
            .arithmetic_bound_gmacs
            .map_or(String::new(), |b| format!("; arithmetic bound {b:.1}"));
        format!("{:.1} GMAC/s ({}{bound})", self.gmacs, kernels.join(", "))
    }
}

/// The summed rate of one independent product per thread, `None` if any thread failed.
fn per_thread(threads: usize, rate: fn() -> Option<f64>) -> Option<f64> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(rate)).collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .sum::<Option<f64>>()
    })
}

fn tract_rate() -> Option<f64> {
    ldm_runtime::tract_matmul_macs_per_second(SIDE, REPEATS).ok()
}

fn matrixmultiply_rate() -> Option<f64> {
    let a = vec![1.0f32; SIDE * SIDE];
    let b = vec![0.5f32; SIDE * SIDE];
    let mut c = vec![0.0f32; SIDE * SIDE];
    let started = Instant::now();
    for _ in 0..REPEATS {
        // SAFETY: a, b and c hold SIDE x SIDE row-major f32 matrices; the strides say so.
        unsafe {
            matrixmultiply::sgemm(
                SIDE,
                SIDE,
                SIDE,
                1.0,
                a.as_ptr(),
                SIDE as isize,
                1,
                b.as_ptr(),
                SIDE as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                SIDE as isize,
                1,
            );
        }
    }
    std::hint::black_box(&c);
    Some((REPEATS * SIDE * SIDE * SIDE) as f64 / started.elapsed().as_secs_f64())
}

/// libtorch's product on `threads` intra-op threads (how PyTorch runs one product), over
/// products of twice the side so that each thread has a 512-wide share.
#[cfg(feature = "train")]
fn libtorch_rate(threads: usize) -> Option<f64> {
    let side = SIDE * 2;
    tch::set_num_threads(threads as i32);
    let a = tch::Tensor::ones(
        [side as i64, side as i64],
        (tch::Kind::Float, tch::Device::Cpu),
    );
    let b = &a * 0.5;
    let _ = a.matmul(&b);
    let repeats = REPEATS.div_ceil(8) * threads;
    let started = Instant::now();
    for _ in 0..repeats {
        drop(std::hint::black_box(a.matmul(&b)));
    }
    Some((repeats * side * side * side) as f64 / started.elapsed().as_secs_f64())
}

#[cfg(not(feature = "train"))]
fn libtorch_rate(_threads: usize) -> Option<f64> {
    None
}

/// f32 lanes of the widest fused multiply-add the CPU's flags list, times two pipes (what
/// x86 cores since Haswell and Zen 2 have; a core that splits 512-bit work in halves, as
/// Zen 4 does, reaches half of this), times the clock `/proc/cpuinfo` reports now.
fn arithmetic_bound(threads: usize) -> Option<f64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let flags = field("flags")?;
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    let lanes = if has("avx512f") {
        16.0
    } else if has("avx2") && has("fma") {
        8.0
    } else {
        return None;
    };
    let mhz: f64 = field("cpu MHz")?.parse().ok()?;
    Some(lanes * 2.0 * mhz * 1e-3 * threads as f64)
}
