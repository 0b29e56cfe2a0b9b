//! Products of two activations, a batch of them side by side: the attention's scores
//! (queries by keys, per head) and its weighted sum (scores by values, per head).
//!
//! tract ran these at ~12 GMAC/s on a paper-size UNet's 1,024 positions, the head axis
//! between the others. Here the operand that gives the output's columns is packed per run
//! (a head's keys are 1,024 x 32 values, its packing a thirty-second of its product's work),
//! and the same register tile as the products with constant weights runs each head.

use super::{Geometry, Layout, Packing};
use crate::kernels::tile::{self, Tile, ROWS};
use crate::kernels::{f32_elements, f32_output, on_threads, Isa, SharedBuffer};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

/// The most bytes of one product's packed operand. A paper-size autoencoder's attention (one
/// head of 4,096 positions by 512 channels: 8 MB) packed again for every chunk of queries ran
/// slower than tract's product; the UNet's heads (128 KB) stay in a core's L2.
const MAX_PACKED_BYTES: usize = 1 << 20;

/// A batch of f32 products of two activations, vectors along the output's columns (next to
/// each other there).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchedProduct {
    pub(in crate::kernels) isa: Isa,
    /// The input broadcast by rows; the other is packed per run.
    pub(in crate::kernels) broadcast_slot: usize,
    pub(in crate::kernels) geometry: Geometry,
    packing: Packing,
    pub(in crate::kernels) input_shapes: [TVec<usize>; 2],
    pub(in crate::kernels) output_shape: TVec<usize>,
}

impl BatchedProduct {
    /// The other input packed for the kernel: `[product][panel][depth][panel width]`.
    pub(in crate::kernels) fn pack(&self, other: &[f32]) -> Vec<f32> {
        self.packing
            .pack(other, &self.geometry, self.isa.panel_width())
    }

    fn multiply(&self, broadcast: &[f32], packed: &[f32], output: &mut [f32]) {
        let g = self.geometry;
        let row_tiles = g.rows.div_ceil(ROWS);
        let panels = g.columns.div_ceil(self.isa.panel_width());
        let output = SharedBuffer(output.as_mut_ptr());
        // Product, then panel, outermost: a thread's consecutive tiles reuse the panel.
        on_threads(g.batch * panels * row_tiles, |range| {
            for task in range {
                let (product, panel) = (task / (panels * row_tiles), task / row_tiles % panels);
                let first_row = task % row_tiles * ROWS;
                let rows = (g.rows - first_row).min(ROWS);
                let offset = product * g.activation_batch + first_row * g.activation_row;
                let out = output.at(product * g.output_batch + first_row * g.output_row);
                // SAFETY: the geometry, checked against the inputs by `eval`, keeps every
                // read in them; each task writes its own product's rows.
                unsafe {
                    self.rows_into(
                        broadcast[offset..].as_ptr(),
                        g.activation_row,
                        packed,
                        product,
                        panel..panel + 1,
                        rows,
                        out,
                        g.output_row,
                    )
                };
            }
        });
    }

    /// `rows` rows (at most [`ROWS`]) by the columns of `panels` of product `product`: row `r`'s
    /// broadcast values from `broadcast + r * broadcast_row` on, the geometry's depth step
    /// apart; into `out`, rows `out_row` apart, columns next to each other.
    ///
    /// # Safety
    /// `broadcast` holds `rows` rows over the depth, `packed` is [`BatchedProduct::pack`]'s,
    /// `out` holds `rows` rows of the columns, and the CPU has the rewrite's instruction set.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::kernels) unsafe fn rows_into(
        &self,
        broadcast: *const f32,
        broadcast_row: usize,
        packed: &[f32],
        product: usize,
        panels: std::ops::Range<usize>,
        rows: usize,
        out: *mut f32,
        out_row: usize,
    ) {
        let g = self.geometry;
        let width = self.isa.panel_width();
        let all_panels = g.columns.div_ceil(width);
        for panel in panels {
            let first_column = panel * width;
            let tile = Tile {
                broadcast,
                row_offsets: std::array::from_fn(|r| r.min(rows - 1) * broadcast_row),
                step: g.activation_depth,
                taps: [0],
                vectors: packed[(product * all_panels + panel) * g.depth * width..].as_ptr(),
                pitch: width,
                depth: g.depth,
                bias_per_lane: None,
                bias_per_row: None,
                accumulate: false,
                out_row,
            };
            let vectors = (g.columns - first_column).min(width) / self.isa.lanes();
            tile::run(self.isa, &tile, rows, vectors, out.add(first_column));
        }
    }
}

impl Op for BatchedProduct {
    fn name(&self) -> StaticName {
        "BatchedProduct".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geometry;
        Ok(vec![format!(
            "{} x {}x{} by {}x{}, {:?}",
            g.batch, g.rows, g.depth, g.depth, g.columns, self.isa
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for BatchedProduct {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        for (input, shape) in inputs.iter().zip(&self.input_shapes) {
            ensure!(
                input.shape() == &**shape,
                "BatchedProduct expects {:?}, got {:?}",
                self.input_shapes,
                input.shape()
            );
        }
        let broadcast = f32_elements(&inputs[self.broadcast_slot])?;
        let other = f32_elements(&inputs[1 - self.broadcast_slot])?;
        let packed = self.pack(other);
        let output = f32_output(&self.output_shape, |output| {
            self.multiply(broadcast, &packed, output)
        })?;
        Ok(tvec!(output))
    }
}

impl TypedOp for BatchedProduct {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.output_shape)))
    }
}

/// The [`BatchedProduct`] computing `node`'s einsum of two activations, if the kernel can:
/// with either input broadcast, the output's innermost axis one of the other's, whole
/// vectors of columns on one of `isas`.
pub(super) fn batched_form(
    model: &TypedModel,
    node: &TypedNode,
    einsum: &EinSum,
    isas: &[Isa],
) -> TractResult<Option<BatchedProduct>> {
    let Some((facts, [first, second, output_shape])) = super::f32_product(model, node, einsum)?
    else {
        return Ok(None);
    };
    if facts.iter().any(|f| f.konst.is_some()) {
        return Ok(None);
    }
    let shapes = [&first, &second];
    for broadcast_slot in 0..2 {
        let layout = Layout::of(
            einsum,
            broadcast_slot,
            [
                shapes[broadcast_slot],
                shapes[1 - broadcast_slot],
                &output_shape,
            ],
        );
        let Some(Layout {
            geometry, packing, ..
        }) = layout
        else {
            continue;
        };
        let isa = isas
            .iter()
            .find(|isa| geometry.columns.is_multiple_of(isa.lanes()));
        let packed_bytes = geometry.depth * geometry.columns * std::mem::size_of::<f32>();
        if packed_bytes > MAX_PACKED_BYTES {
            continue;
        }
        if let (Some(&isa), 1) = (isa, geometry.output_column) {
            return Ok(Some(BatchedProduct {
                isa,
                broadcast_slot,
                geometry,
                packing,
                input_shapes: [first.as_slice().into(), second.as_slice().into()],
                output_shape: output_shape.as_slice().into(),
            }));
        }
    }
    Ok(None)
}
