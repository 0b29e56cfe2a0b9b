//! The tile kernels, one per instruction set, from one macro.

use super::{Geometry, Pass, BLOCK};
use std::arch::x86_64::*;

/// One tile's kernel: `channels` output channels (at most `$lanes / 2`: 8 of 32 registers
/// for AVX-512, 4 of 16 for AVX2, times three runs) by `RUNS_` runs of `$lanes` pixels,
/// accumulated in registers over every input channel and tap.
macro_rules! kernel {
    ($name:ident, $feature:literal, $vector:ty, $lanes:literal,
     $splat:ident, $load:ident, $store:ident, $fma:ident $(, $_:ident)*) => {
        /// # Safety
        /// The CPU supports the feature; `out` addresses `channels` output planes holding
        /// every run's pixels.
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn $name<const RUNS_: usize>(
            geometry: &Geometry,
            pass: &Pass,
            runs: &[(usize, usize)],
            out: *mut f32,
            channels: usize,
        ) {
            let Pass {
                image,
                input_channels,
                weights,
                bias,
            } = *pass;
            let mut acc = [[$splat(0.0); RUNS_]; $lanes / 2];
            match bias {
                Some(bias) => {
                    for j in 0..$lanes / 2 {
                        for r in 0..RUNS_ {
                            acc[j][r] = $splat(*bias.get_unchecked(j));
                        }
                    }
                }
                None => {
                    for j in 0..channels {
                        for r in 0..RUNS_ {
                            let at = j * geometry.output_plane + runs.get_unchecked(r).1;
                            acc[j][r] = $load(out.add(at));
                        }
                    }
                }
            }
            let mut base = [0usize; RUNS_];
            for r in 0..RUNS_ {
                base[r] = runs.get_unchecked(r).0;
            }
            let tap_row = geometry.tap_row;
            debug_assert!(
                (input_channels - 1) * geometry.plane
                    + base[RUNS_ - 1]
                    + 2 * (tap_row + 1)
                    + $lanes
                    <= image.len()
            );
            let mut w = weights.as_ptr();
            let mut plane = image.as_ptr();
            for _ in 0..input_channels {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let tap = plane.add(ky * tap_row + kx);
                        let mut pixels = [$splat(0.0); RUNS_];
                        for r in 0..RUNS_ {
                            pixels[r] = $load(tap.add(base[r]));
                        }
                        for j in 0..$lanes / 2 {
                            let weight = $splat(*w.add(j));
                            for r in 0..RUNS_ {
                                acc[j][r] = $fma(weight, pixels[r], acc[j][r]);
                            }
                        }
                        w = w.add(BLOCK);
                    }
                }
                plane = plane.add(geometry.plane);
            }
            for j in 0..channels {
                for r in 0..RUNS_ {
                    $store(
                        out.add(j * geometry.output_plane + runs.get_unchecked(r).1),
                        acc[j][r],
                    );
                }
            }
        }
    };
}

crate::kernels::for_each_isa!(kernel);
