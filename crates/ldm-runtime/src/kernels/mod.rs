//! Kernels of our own for the operations tract runs slowly on the graphs we export, swapped
//! into a decluttered graph before tract optimises it.
//!
//! - [`conv3x3`]: 3x3 convolutions, stride 1, on a direct kernel (tract gathers im2col).
//! - [`dense`]: products with constant weights (linear layers, 1x1 convolutions), where tract
//!   packs the activations for every product and reached about half of the machine's f32 rate
//!   on the UNet's small ones; and products of two activations (the attention's, per head).
//! - [`attention`]: scores, softmax and weighted sum fused per tile of queries.
//! - [`softmax`]: softmax over rows, where tract's per-row set-up cost ~20 ns per score over
//!   the cross-attention's 24 keys.
//! - [`tile`]: the register tile that the products and the small-image convolutions share.
//!
//! Each op replaces tract's only where its kernel applies (f32, the shapes it handles, an
//! x86-64 CPU with AVX-512 or AVX2 and FMA); everything else keeps tract's. Loop bodies (the
//! sliced attention's `Scan`) get the same treatment. `LDM_OWN_KERNELS=off` keeps tract's ops
//! everywhere, for comparison.

/// Invokes `$kernel!` once per instruction set, with its name, target feature, vector type
/// and lanes, and its intrinsics: splat, load, store, fused multiply-add (all a multiply-add
/// kernel takes; it ends its pattern with `$(, $_:ident)*`), then max, add, mul, sub and the
/// integer ones an exponential needs (float to int, int to float, int add, shift left, int
/// splat, bits as float).
#[cfg(target_arch = "x86_64")]
macro_rules! for_each_isa {
    ($kernel:ident) => {
        $kernel!(
            avx512,
            "avx512f",
            __m512,
            16,
            _mm512_set1_ps,
            _mm512_loadu_ps,
            _mm512_storeu_ps,
            _mm512_fmadd_ps,
            _mm512_max_ps,
            _mm512_add_ps,
            _mm512_mul_ps,
            _mm512_sub_ps,
            _mm512_cvtps_epi32,
            _mm512_cvtepi32_ps,
            _mm512_add_epi32,
            _mm512_slli_epi32,
            _mm512_set1_epi32,
            _mm512_castsi512_ps
        );
        $kernel!(
            avx2,
            "avx2,fma",
            __m256,
            8,
            _mm256_set1_ps,
            _mm256_loadu_ps,
            _mm256_storeu_ps,
            _mm256_fmadd_ps,
            _mm256_max_ps,
            _mm256_add_ps,
            _mm256_mul_ps,
            _mm256_sub_ps,
            _mm256_cvtps_epi32,
            _mm256_cvtepi32_ps,
            _mm256_add_epi32,
            _mm256_slli_epi32,
            _mm256_set1_epi32,
            _mm256_castsi256_ps
        );
    };
}
#[cfg(target_arch = "x86_64")]
use for_each_isa;

mod attention;
mod conv3x3;
mod dense;
mod softmax;
#[cfg(test)]
mod test_support;
mod tile;

use tract_linalg::multithread::{current_tract_executor, Executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::scan::Scan;

/// `model` with our kernels in place of tract's where they apply (none with
/// `LDM_OWN_KERNELS=off`).
pub fn with_own_kernels(model: TypedModel) -> TractResult<TypedModel> {
    if !enabled() {
        return Ok(model);
    }
    rewrite(model, &Isa::available())
}

/// Every rewrite, on `model` and on the bodies of its loops, with the instruction sets `isas`.
fn rewrite(model: TypedModel, isas: &[Isa]) -> TractResult<TypedModel> {
    let model = conv3x3::replace_convolutions(model, |width, channels| {
        conv3x3::strategy_for(isas, width, channels)
    })?;
    let model = dense::replace_products(model, isas)?;
    let model = softmax::replace_softmaxes(model, isas.first().copied())?;
    let model = attention::fuse(model)?;
    rewrite_loop_bodies(model, isas)
}

fn rewrite_loop_bodies(mut model: TypedModel, isas: &[Isa]) -> TractResult<TypedModel> {
    for id in model.eval_order()? {
        let Some(scan) = model.node(id).op_as::<Scan>() else {
            continue;
        };
        let mut scan = scan.clone();
        scan.body = rewrite(scan.body, isas)?;
        model.node_mut(id).op = Box::new(scan);
    }
    Ok(model)
}

/// Whether our kernels replace tract's (`LDM_OWN_KERNELS=off` keeps tract's own).
fn enabled() -> bool {
    std::env::var("LDM_OWN_KERNELS").map_or(true, |v| v != "off")
}

/// The instruction set a SIMD kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Isa {
    /// 16 lanes, 32 registers.
    Avx512,
    /// 8 lanes, 16 registers, with FMA.
    Avx2,
}

impl Isa {
    /// The instruction sets this CPU has, widest first.
    fn available() -> Vec<Isa> {
        let mut isas = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                isas.push(Isa::Avx2);
            }
        }
        isas
    }

    fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
        }
    }
}

/// `work` over `0..count`, split in contiguous parts over the threads of tract's executor when
/// it has several (the session's pool, whose other workers are kept awake while a plan runs).
fn on_threads(count: usize, work: impl Fn(std::ops::Range<usize>) + Sync) {
    match current_tract_executor() {
        Executor::MultiThread(pool) if pool.current_num_threads() > 1 && count > 1 => {
            let parts = pool.current_num_threads().min(count);
            pool.install(|| {
                rayon::scope(|scope| {
                    for part in 0..parts {
                        let work = &work;
                        scope
                            .spawn(move |_| work(part * count / parts..(part + 1) * count / parts));
                    }
                })
            });
        }
        _ => work(0..count),
    }
}

/// A buffer written by several threads at disjoint places.
struct SharedBuffer(*mut f32);
// SAFETY: every user writes disjoint elements from each thread.
unsafe impl Sync for SharedBuffer {}

impl SharedBuffer {
    /// The element `offset` places in. A method, so that closures capture the `Sync` wrapper
    /// rather than its pointer.
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Bit-for-bit equality of weights, so that an op's equality is an equivalence even with NaNs.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The elements of an f32 tensor, in place (tract's tensors are contiguous).
fn f32_elements(tensor: &Tensor) -> TractResult<&[f32]> {
    tensor.try_as_plain_ram()?.as_slice::<f32>()
}

/// A zeroed f32 tensor of `shape`, filled by `fill`: written in place, where an ndarray would
/// be copied into tract's aligned storage.
fn f32_output(shape: &[usize], fill: impl FnOnce(&mut [f32])) -> TractResult<TValue> {
    let mut output = Tensor::zero::<f32>(shape)?;
    fill(output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
    Ok(output.into_tvalue())
}
