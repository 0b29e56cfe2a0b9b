//! The register tile that the dense products and the small-image convolutions share: up to
//! [`ROWS`] broadcast rows by up to four vectors, accumulated over a depth of steps, each step
//! of `TAPS` taps (1 for a product; 9 for a 3x3 convolution, the taps' offsets into a padded
//! image).

use super::{on_threads, Isa, SharedBuffer};

/// Broadcast rows one tile computes.
pub(super) const ROWS: usize = 6;

impl Isa {
    /// Vectors in a panel: as many as leave registers for [`ROWS`] rows of accumulators, the
    /// panel's vectors and a broadcast (AVX-512: 24 + 4 + 1 of 32; AVX2: 12 + 2 + 1 of 16).
    pub(super) fn panel_vectors(self) -> usize {
        match self {
            Isa::Avx512 => 4,
            Isa::Avx2 => 2,
        }
    }

    pub(super) fn panel_width(self) -> usize {
        self.panel_vectors() * self.lanes()
    }
}

/// What one tile reads and where it writes.
pub(super) struct Tile<const TAPS: usize> {
    /// The broadcast operand: row `r` at `broadcast + row_offsets[r]`, its depth's steps
    /// `step` apart, each step's taps at `taps` from it.
    pub broadcast: *const f32,
    pub row_offsets: [usize; ROWS],
    pub step: usize,
    pub taps: [usize; TAPS],
    /// The vector operand: the tile's vectors for the first tap of the first step, those of
    /// each next tap `pitch` on.
    pub vectors: *const f32,
    pub pitch: usize,
    pub depth: usize,
    /// Where the sums start: the bias, one per lane of the tile's vectors or one per row,
    /// or what the output holds (`accumulate`), else zero.
    pub bias_per_lane: Option<*const f32>,
    pub bias_per_row: Option<*const f32>,
    pub accumulate: bool,
    /// How far apart the output's rows of vectors are.
    pub out_row: usize,
}

/// Runs `tile` on `isa`'s kernel for `rows` rows (at most [`ROWS`]) by `vectors` vectors (at
/// most the ISA's panel), writing `out`.
///
/// # Safety
/// The CPU has `isa`; `tile` addresses `rows` rows and `vectors` vectors over its depth and
/// taps, and `out` the tile's rows of `vectors` vectors.
pub(super) unsafe fn run<const TAPS: usize>(
    isa: Isa,
    tile: &Tile<TAPS>,
    rows: usize,
    vectors: usize,
    out: *mut f32,
) {
    macro_rules! by_vectors {
        ($kernel:ident, $rows:literal) => {
            match vectors {
                4 => simd::$kernel::<$rows, 4, TAPS>(tile, out),
                3 => simd::$kernel::<$rows, 3, TAPS>(tile, out),
                2 => simd::$kernel::<$rows, 2, TAPS>(tile, out),
                _ => simd::$kernel::<$rows, 1, TAPS>(tile, out),
            }
        };
    }
    macro_rules! by_rows {
        ($kernel:ident) => {
            match rows {
                6 => by_vectors!($kernel, 6),
                5 => by_vectors!($kernel, 5),
                4 => by_vectors!($kernel, 4),
                3 => by_vectors!($kernel, 3),
                2 => by_vectors!($kernel, 2),
                _ => by_vectors!($kernel, 1),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => by_rows!(avx512),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => by_rows!(avx2),
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("no tile kernel is chosen off x86-64"),
    }
}

/// `staged` (`rows` rows of `width` elements, the first `columns` of each meaningful) into
/// `output`, element (row, column) at `row * output_row + column * output_column`, in blocks
/// that stay in a core's L1, on tract's executor's threads.
pub(super) fn scatter(
    staged: &[f32],
    rows: usize,
    columns: usize,
    width: usize,
    output: &mut [f32],
    output_row: usize,
    output_column: usize,
) {
    const BLOCK: usize = 16;
    let column_blocks = columns.div_ceil(BLOCK);
    let target = SharedBuffer(output.as_mut_ptr());
    on_threads(column_blocks, |range| {
        for block in range {
            let block_columns = block * BLOCK..((block + 1) * BLOCK).min(columns);
            for first_row in (0..rows).step_by(BLOCK) {
                for column in block_columns.clone() {
                    for row in first_row..(first_row + BLOCK).min(rows) {
                        let at = row * output_row + column * output_column;
                        // SAFETY: the strides map every (row, column) to its own element of
                        // the output, and each block of columns is one task's.
                        unsafe { *target.at(at) = staged[row * width + column] };
                    }
                }
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::Tile;
    use std::arch::x86_64::*;

    /// The kernel: `ROWS_` rows by `VECTORS_` vectors of `$lanes` in registers; each tap of
    /// each step loads the vectors and adds them times each row's broadcast value.
    macro_rules! kernel {
        ($name:ident, $feature:literal, $vector:ty, $lanes:literal,
         $splat:ident, $load:ident, $store:ident, $fma:ident $(, $_:ident)*) => {
            /// # Safety
            /// See [`super::run`].
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $name<
                const ROWS_: usize,
                const VECTORS_: usize,
                const TAPS: usize,
            >(
                tile: &Tile<TAPS>,
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
                if tile.accumulate {
                    for r in 0..ROWS_ {
                        for v in 0..VECTORS_ {
                            acc[r][v] = $load(out.add(r * tile.out_row + v * $lanes));
                        }
                    }
                }
                let mut rows = [tile.broadcast; ROWS_];
                for r in 0..ROWS_ {
                    rows[r] = tile.broadcast.add(tile.row_offsets[r]);
                }
                let mut vectors = tile.vectors;
                let mut at = 0;
                for _ in 0..tile.depth {
                    for t in 0..TAPS {
                        let tap = at + tile.taps[t];
                        let mut loaded = [$splat(0.0); VECTORS_];
                        for v in 0..VECTORS_ {
                            loaded[v] = $load(vectors.add(v * $lanes));
                        }
                        for r in 0..ROWS_ {
                            let b = $splat(*rows[r].add(tap));
                            for v in 0..VECTORS_ {
                                acc[r][v] = $fma(b, loaded[v], acc[r][v]);
                            }
                        }
                        vectors = vectors.add(tile.pitch);
                    }
                    at += tile.step;
                }
                for r in 0..ROWS_ {
                    for v in 0..VECTORS_ {
                        $store(out.add(r * tile.out_row + v * $lanes), acc[r][v]);
                    }
                }
            }
        };
    }

    crate::kernels::for_each_isa!(kernel);
}
