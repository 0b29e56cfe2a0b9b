//! The tile kernels, one per instruction set, from one macro.

use super::Tile;
use std::arch::x86_64::*;

/// One tile's kernel: `ROWS_` broadcast rows by `VECTORS_` vectors of `$lanes`, accumulated in
/// registers over the whole depth: each step loads the vectors and adds them times each
/// row's broadcast value.
macro_rules! kernel {
    ($name:ident, $feature:literal, $vector:ty, $lanes:literal,
     $splat:ident, $load:ident, $store:ident, $fma:ident) => {
        /// # Safety
        /// The CPU supports the feature; `tile` addresses `ROWS_` broadcast rows and
        /// `VECTORS_` vectors over its depth, and `out` the tile's rows of `VECTORS_` vectors.
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn $name<const ROWS_: usize, const VECTORS_: usize>(
            tile: &Tile,
            out: *mut f32,
        ) {
            let mut acc = [[$splat(0.0); VECTORS_]; ROWS_];
            if let Some(bias) = tile.bias_per_lane {
                for v in 0..VECTORS_ {
                    let b = $load(bias.add(v * $lanes));
                    for r in 0..ROWS_ {
                        acc[r][v] = b;
                    }
                }
            }
            if let Some(bias) = tile.bias_per_row {
                for r in 0..ROWS_ {
                    let b = $splat(*bias.add(r));
                    for v in 0..VECTORS_ {
                        acc[r][v] = b;
                    }
                }
            }
            let mut rows = [tile.broadcast; ROWS_];
            for r in 0..ROWS_ {
                rows[r] = tile.broadcast.add(r * tile.broadcast_row);
            }
            let mut vectors = tile.vectors;
            let mut at = 0;
            for _ in 0..tile.depth {
                let mut loaded = [$splat(0.0); VECTORS_];
                for v in 0..VECTORS_ {
                    loaded[v] = $load(vectors.add(v * $lanes));
                }
                for r in 0..ROWS_ {
                    let b = $splat(*rows[r].add(at));
                    for v in 0..VECTORS_ {
                        acc[r][v] = $fma(b, loaded[v], acc[r][v]);
                    }
                }
                vectors = vectors.add(tile.vectors_pitch);
                at += tile.broadcast_step;
            }
            for r in 0..ROWS_ {
                for v in 0..VECTORS_ {
                    $store(out.add(r * tile.out_row + v * $lanes), acc[r][v]);
                }
            }
        }
    };
}

kernel!(
    avx512,
    "avx512f",
    __m512,
    16,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_fmadd_ps
);
kernel!(
    avx2,
    "avx2,fma",
    __m256,
    8,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_fmadd_ps
);
