//! Products of an activation with constant weights on a SIMD kernel of our own: the linear
//! layers and 1x1 convolutions that tract declutters into `EinSum`s.
//!
//! Whatever the einsum's form ("km,kn->mn" for a channel-major activation, "mk,kn->nm",
//! "NIHW,OI->NOHW", ...), it is a product of an activation viewed as rows x depth (each with
//! its own stride) by weights of depth x columns, into an output of rows x columns (each with
//! its own stride), as long as the axes of each kind lie next to each other. The weights are
//! packed once, when the graph is rewritten, for the register tile of [`super::tile`]: in
//! panels along the output's columns where those are contiguous (each step adds a row of the
//! panel times each row's broadcast activation), in groups of columns broadcast against
//! vectors of the activation's rows where the rows are (1x1 convolutions over NCHW images), and
//! otherwise along the columns into a staging buffer scattered into place. The activation is
//! read where it lies: nothing is packed or transposed per run (tract packs the activation for
//! every product). A constant bias added right after the product is folded into it.
//!
//! On the shipped UNet tract's products ran at 20-50 % of the machine's f32 rate, most of
//! them small (16 to 256 rows); see BENCHMARKS.md, "Products, softmax and attention of our
//! own".

use super::tile::{self, Tile, ROWS};
use super::{f32_elements, f32_output, on_threads, same_bits, Isa, SharedBuffer};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::Add;

/// How a product's operands and output are laid out as matrices, in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Geometry {
    /// Products side by side (attention heads); 1 for a product with constant weights.
    pub(in crate::kernels) batch: usize,
    pub(in crate::kernels) rows: usize,
    pub(in crate::kernels) depth: usize,
    pub(in crate::kernels) columns: usize,
    /// Strides of the activation and the output between products of the batch.
    pub(in crate::kernels) activation_batch: usize,
    pub(in crate::kernels) output_batch: usize,
    /// Strides of the activation between rows and between steps of the depth.
    pub(in crate::kernels) activation_row: usize,
    pub(in crate::kernels) activation_depth: usize,
    /// Strides of the output between rows and between columns.
    pub(in crate::kernels) output_row: usize,
    pub(in crate::kernels) output_column: usize,
}

/// Which operand the kernel reads as vectors, along which axis of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Orientation {
    /// Vectors of the weights along the output's columns (next to each other there), each
    /// row's activations broadcast: linear layers.
    Columns,
    /// Vectors of the activation along the rows (next to each other in the activation and
    /// the output), the weights broadcast: 1x1 convolutions over NCHW images.
    Rows,
}

/// An f32 product of an activation (the op's one input) by constant weights, plus an optional
/// constant bias per column.
#[derive(Debug, Clone)]
pub struct DenseProduct {
    isa: Isa,
    orientation: Orientation,
    geometry: Geometry,
    input_shape: TVec<usize>,
    output_shape: TVec<usize>,
    /// The weights, packed for the orientation: [`Orientation::Columns`] as
    /// `[panel][depth][panel width]`, [`Orientation::Rows`] as `[group][depth][ROWS]` (groups
    /// of `ROWS` columns), zero past the last column.
    packed: Arc<Vec<f32>>,
    /// One per column, padded like `packed`.
    bias: Option<Arc<Vec<f32>>>,
}

impl PartialEq for DenseProduct {
    fn eq(&self, other: &Self) -> bool {
        self.isa == other.isa
            && self.orientation == other.orientation
            && self.geometry == other.geometry
            && self.input_shape == other.input_shape
            && self.output_shape == other.output_shape
            && same_bits(&self.packed, &other.packed)
            && match (&self.bias, &other.bias) {
                (Some(a), Some(b)) => same_bits(a, b),
                (a, b) => a.is_none() && b.is_none(),
            }
    }
}

// Compared bit for bit, so equality is an equivalence even with NaNs.
impl Eq for DenseProduct {}

impl DenseProduct {
    /// Multiplies `activations` into `output`, both laid out as the geometry says.
    fn multiply(&self, activations: &[f32], output: &mut [f32]) {
        let g = self.geometry;
        if self.orientation == Orientation::Columns && g.output_column != 1 {
            // Columns apart in the output (a token-major product written channel-major):
            // rows of columns first, then each element to its place.
            let mut staged = vec![0f32; g.rows * g.columns];
            self.multiply_into(activations, &mut staged, g.columns);
            let (rows, columns) = (g.rows, g.columns);
            tile::scatter(
                &staged,
                rows,
                columns,
                columns,
                output,
                g.output_row,
                g.output_column,
            );
        } else {
            self.multiply_into(activations, output, g.output_row);
        }
    }

    /// Multiplies `activations` into `output`, whose rows are `output_row` apart when the
    /// vectors go along the columns.
    fn multiply_into(&self, activations: &[f32], output: &mut [f32], output_row: usize) {
        let g = self.geometry;
        let width = self.isa.panel_width();
        let (vector_extent, broadcast_extent) = match self.orientation {
            Orientation::Columns => (g.columns, g.rows),
            Orientation::Rows => (g.rows, g.columns),
        };
        let vector_tiles = vector_extent.div_ceil(width);
        let broadcast_tiles = broadcast_extent.div_ceil(ROWS);
        let output = SharedBuffer(output.as_mut_ptr());
        let bias = self.bias.as_deref();
        // Vector tiles outermost, so that a thread's consecutive tiles reuse the vectors from
        // its cache.
        on_threads(vector_tiles * broadcast_tiles, |range| {
            for task in range {
                let (vector_tile, broadcast_tile) =
                    (task / broadcast_tiles, task % broadcast_tiles);
                let first_vector = vector_tile * width;
                let vectors = (vector_extent - first_vector).min(width) / self.isa.lanes();
                let first_row = broadcast_tile * ROWS;
                let rows = (broadcast_extent - first_row).min(ROWS);
                let (tile, out) = match self.orientation {
                    Orientation::Columns => (
                        Tile {
                            broadcast: activations.as_ptr(),
                            row_offsets: std::array::from_fn(|r| {
                                (first_row + r.min(rows - 1)) * g.activation_row
                            }),
                            step: g.activation_depth,
                            taps: [0],
                            vectors: self.packed[vector_tile * g.depth * width..].as_ptr(),
                            pitch: width,
                            depth: g.depth,
                            bias_per_lane: bias.map(|b| b[first_vector..].as_ptr()),
                            bias_per_row: None,
                            accumulate: false,
                            out_row: output_row,
                        },
                        output.at(first_row * output_row + first_vector),
                    ),
                    Orientation::Rows => (
                        Tile {
                            broadcast: self.packed[broadcast_tile * g.depth * ROWS..].as_ptr(),
                            row_offsets: std::array::from_fn(|r| r),
                            step: ROWS,
                            taps: [0],
                            vectors: activations[first_vector..].as_ptr(),
                            pitch: g.activation_depth,
                            depth: g.depth,
                            bias_per_lane: None,
                            bias_per_row: bias.map(|b| b[first_row..].as_ptr()),
                            accumulate: false,
                            out_row: g.output_column,
                        },
                        output.at(first_row * g.output_column + first_vector),
                    ),
                };
                // SAFETY: the rewrite chose an instruction set this CPU has and a geometry
                // that `eval` checked against the input; each task writes its own rows and
                // columns.
                unsafe { tile::run(self.isa, &tile, rows, vectors, out) };
            }
        });
    }
}

impl Op for DenseProduct {
    fn name(&self) -> StaticName {
        "DenseProduct".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geometry;
        Ok(vec![format!(
            "{}x{} by {}x{}{}, {:?}",
            g.rows,
            g.depth,
            g.depth,
            g.columns,
            if self.bias.is_some() { " + bias" } else { "" },
            self.isa
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for DenseProduct {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        ensure!(
            input.shape() == &*self.input_shape,
            "DenseProduct expects {:?}, got {:?}",
            self.input_shape,
            input.shape()
        );
        let activations = f32_elements(input)?;
        let output = f32_output(&self.output_shape, |output| {
            self.multiply(activations, output)
        })?;
        Ok(tvec!(output))
    }
}

impl TypedOp for DenseProduct {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.output_shape)))
    }
}

/// `model` with its products by constant weights, and of two activations, replaced where a
/// kernel of the instruction sets `isas` (widest first) runs them.
pub(super) fn replace_products(mut model: TypedModel, isas: &[Isa]) -> TractResult<TypedModel> {
    let mut replaced = false;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(einsum) = node.op_as::<EinSum>() else {
            continue;
        };
        let (op, inputs, last): (Box<dyn TypedOp>, Vec<OutletId>, usize) =
            if let Some((op, activation, bias)) = dense_form(&model, node, einsum, isas)? {
                (Box::new(op), vec![activation], bias.unwrap_or(id))
            } else if let Some(op) = batched::batched_form(&model, node, einsum, isas)? {
                (Box::new(op), node.inputs.to_vec(), id)
            } else {
                continue;
            };
        let mut patch = TypedModelPatch::default();
        let inputs = inputs
            .iter()
            .map(|&outlet| patch.tap_model(&model, outlet))
            .collect::<TractResult<Vec<_>>>()?;
        let output = patch.wire_node(&node.name, op, &inputs)?[0];
        patch.shunt_outside(&model, OutletId::new(last, 0), output)?;
        patch.apply(&mut model)?;
        replaced = true;
    }
    if replaced {
        // Drops the replaced products' weights before optimising packs what is left.
        model.compact()?;
    }
    Ok(model)
}

/// A product's two input facts, and the concrete shapes of its two inputs and its output.
type ProductFacts<'m> = ([&'m TypedFact; 2], [Vec<usize>; 3]);

/// The facts of a plain f32 `EinSum` of two inputs (not quantised) with concrete shapes;
/// `None` for any other.
fn f32_product<'m>(
    model: &'m TypedModel,
    node: &TypedNode,
    einsum: &EinSum,
) -> TractResult<Option<ProductFacts<'m>>> {
    if einsum.q_params.is_some()
        || einsum.operating_dt != f32::datum_type()
        || node.inputs.len() != 2
    {
        return Ok(None);
    }
    let facts = [
        model.outlet_fact(node.inputs[0])?,
        model.outlet_fact(node.inputs[1])?,
    ];
    if facts.iter().any(|f| f.datum_type != f32::datum_type()) {
        return Ok(None);
    }
    let concrete = |fact: &TypedFact| fact.shape.as_concrete().map(|s| s.to_vec());
    Ok(
        match (
            concrete(facts[0]),
            concrete(facts[1]),
            concrete(model.outlet_fact(OutletId::new(node.id, 0))?),
        ) {
            (Some(first), Some(second), Some(output)) => Some((facts, [first, second, output])),
            _ => None,
        },
    )
}

/// The [`DenseProduct`] computing `node`'s einsum (and the constant bias its one successor
/// adds, if it does), with the activation's outlet and the bias node, if the kernel can.
fn dense_form(
    model: &TypedModel,
    node: &TypedNode,
    einsum: &EinSum,
    isas: &[Isa],
) -> TractResult<Option<(DenseProduct, OutletId, Option<usize>)>> {
    let Some((facts, [first, second, output_shape])) = f32_product(model, node, einsum)? else {
        return Ok(None);
    };
    let activation_slot = match (&facts[0].konst, &facts[1].konst) {
        (None, Some(_)) => 0,
        (Some(_), None) => 1,
        _ => return Ok(None),
    };
    let (input_shape, weight_shape) = if activation_slot == 0 {
        (first, second)
    } else {
        (second, first)
    };
    let Some(layout) = Layout::of(
        einsum,
        activation_slot,
        [&input_shape, &weight_shape, &output_shape],
    ) else {
        return Ok(None);
    };
    let g = &layout.geometry;
    if g.batch > 1 {
        return Ok(None);
    }
    // Vectors go along the output's contiguous axis where they can (whole vectors of it),
    // else along its columns, staged.
    let whole = |extent: usize| isas.iter().find(|isa| extent.is_multiple_of(isa.lanes()));
    let (orientation, isa) = match (whole(g.columns), whole(g.rows)) {
        (Some(&isa), _) if g.output_column == 1 => (Orientation::Columns, isa),
        (_, Some(&isa)) if g.output_row == 1 && g.activation_row == 1 => (Orientation::Rows, isa),
        (Some(&isa), _) => (Orientation::Columns, isa),
        _ => return Ok(None),
    };
    let weights = facts[1 - activation_slot]
        .konst
        .as_ref()
        .expect("the weights are constant")
        .to_plain_array_view::<f32>()?;
    let weights = weights.as_standard_layout();
    let weights = weights.as_slice().expect("a standard layout is contiguous");
    let packed = match orientation {
        Orientation::Columns => layout.packing.pack(weights, g, isa.panel_width()),
        Orientation::Rows => layout.packing.pack(weights, g, ROWS),
    };
    let group = match orientation {
        Orientation::Columns => isa.panel_width(),
        Orientation::Rows => ROWS,
    };
    let bias = folded_bias(model, node, &output_shape, &layout)?;
    let op = DenseProduct {
        isa,
        orientation,
        geometry: layout.geometry,
        input_shape: input_shape.into(),
        output_shape: output_shape.into(),
        packed: Arc::new(packed),
        bias: bias.as_ref().map(|(b, _)| Arc::new(padded(b, group))),
    };
    Ok(Some((
        op,
        node.inputs[activation_slot],
        bias.map(|(_, id)| id),
    )))
}

/// The constant bias, one value per column (in column order), that `node`'s one successor
/// adds to its output without broadcasting it, with that successor's id.
fn folded_bias(
    model: &TypedModel,
    node: &TypedNode,
    output_shape: &[usize],
    layout: &Layout,
) -> TractResult<Option<(Vec<f32>, usize)>> {
    let [successor] = &*node.outputs[0].successors else {
        return Ok(None);
    };
    let add = model.node(successor.node);
    let Some(bin) = add.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if !bin.0.is::<Add>() || add.inputs.len() != 2 {
        return Ok(None);
    }
    let other = add.inputs[1 - successor.slot];
    let Some(bias) = model.outlet_fact(other)?.konst.clone() else {
        return Ok(None);
    };
    let sum_shape = model
        .outlet_fact(OutletId::new(add.id, 0))?
        .shape
        .as_concrete();
    let columns = layout.geometry.columns;
    if bias.datum_type() != f32::datum_type()
        || sum_shape != Some(output_shape)
        || bias.rank() != output_shape.len()
    {
        return Ok(None);
    }
    // The bias varies along the column axes only, each of its full size.
    let along_columns = bias.shape().iter().enumerate().all(|(axis, &size)| {
        size == 1 || (layout.column_axes.contains(&axis) && size == output_shape[axis])
    });
    if !along_columns {
        return Ok(None);
    }
    let values = bias.to_plain_array_view::<f32>()?;
    let values: Vec<f32> = values.iter().copied().collect();
    let per_column = match values.len() {
        1 => vec![values[0]; columns],
        n if n == columns => values,
        _ => return Ok(None),
    };
    Ok(Some((per_column, add.id)))
}

/// `values` with zeros up to a whole number of `width`s.
fn padded(values: &[f32], width: usize) -> Vec<f32> {
    let mut padded = values.to_vec();
    padded.resize(values.len().div_ceil(width) * width, 0.0);
    padded
}

/// An einsum seen as a batch of matrix products: its geometry, where the weights' elements
/// lie, and the output's column axes.
struct Layout {
    geometry: Geometry,
    packing: Packing,
    column_axes: Vec<usize>,
}

/// Where each element of the weights (the operand read as vectors) lies: (size, stride) of
/// each batch, depth and column axis, outermost first in the order of the activation (batch,
/// depth) and the output (columns).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Packing {
    batch: Vec<(usize, usize)>,
    depth: Vec<(usize, usize)>,
    columns: Vec<(usize, usize)>,
}

/// What an einsum axis is to the product.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Batch,
    Row,
    Depth,
    Column,
}

/// An einsum axis longer than one: its role, size, and position in each tensor it is in.
struct Place {
    role: Role,
    size: usize,
    activation: Option<usize>,
    weights: Option<usize>,
    output: Option<usize>,
}

/// The axes of `role`, in the order they lie in one tensor (`position` in it), if they lie
/// next to each other among that tensor's axes longer than one.
fn run_of(
    places: &[Place],
    role: Role,
    position: fn(&Place) -> Option<usize>,
) -> Option<Vec<&Place>> {
    let mut present: Vec<(usize, &Place)> = places
        .iter()
        .filter_map(|place| position(place).map(|at| (at, place)))
        .collect();
    present.sort_by_key(|(at, _)| *at);
    let indices: Vec<usize> = (0..present.len())
        .filter(|&i| present[i].1.role == role)
        .collect();
    if indices.windows(2).any(|w| w[1] != w[0] + 1) {
        return None;
    }
    Some(indices.iter().map(|&i| present[i].1).collect())
}

impl Layout {
    /// The layout of `einsum` with the activation in input `activation_slot`, from the
    /// shapes of the activation, the weights and the output; none where an axis is summed
    /// inside one operand or repeats, or where the axes of a kind are not next to each other
    /// in the activation or the output.
    fn of(einsum: &EinSum, activation_slot: usize, shapes: [&[usize]; 3]) -> Option<Layout> {
        let [input, weights, output] = shapes;
        let single = |positions: &TVec<usize>| match positions.len() {
            0 => Some(None),
            1 => Some(Some(positions[0])),
            _ => None,
        };
        let mut places = Vec::new();
        for axis in einsum.axes.iter_all_axes() {
            let activation = single(&axis.inputs[activation_slot])?;
            let in_weights = single(&axis.inputs[1 - activation_slot])?;
            let in_output = single(axis.outputs.first()?)?;
            let sizes = [
                activation.map(|p| input[p]),
                in_weights.map(|p| weights[p]),
                in_output.map(|p| output[p]),
            ];
            let size = sizes.iter().flatten().copied().max().unwrap_or(1);
            if sizes.iter().flatten().any(|&s| s != size) {
                return None;
            }
            if size == 1 {
                continue;
            }
            let role = match (activation, in_weights, in_output) {
                (Some(_), Some(_), Some(_)) => Role::Batch,
                (Some(_), Some(_), None) => Role::Depth,
                (Some(_), None, Some(_)) => Role::Row,
                (None, Some(_), Some(_)) => Role::Column,
                _ => return None,
            };
            places.push(Place {
                role,
                size,
                activation,
                weights: in_weights,
                output: in_output,
            });
        }
        let batch_in = run_of(&places, Role::Batch, |p| p.activation)?;
        let rows_in = run_of(&places, Role::Row, |p| p.activation)?;
        let depth = run_of(&places, Role::Depth, |p| p.activation)?;
        let batch_out = run_of(&places, Role::Batch, |p| p.output)?;
        let rows_out = run_of(&places, Role::Row, |p| p.output)?;
        let columns = run_of(&places, Role::Column, |p| p.output)?;
        // Products and rows are counted the same way in the activation and the output.
        let same = |a: &[&Place], b: &[&Place]| a.iter().zip(b).all(|(a, b)| std::ptr::eq(*a, *b));
        if !same(&batch_in, &batch_out) || !same(&rows_in, &rows_out) {
            return None;
        }
        let (input_strides, weight_strides, output_strides) = (
            natural_strides(input),
            natural_strides(weights),
            natural_strides(output),
        );
        // The stride of a run's innermost axis in the tensor of `strides` (`position`).
        let innermost =
            |run: &[&Place], strides: &[usize], position: fn(&Place) -> Option<usize>| {
                run.last()
                    .and_then(|place| position(place))
                    .map_or(0, |at| strides[at])
            };
        let in_weights = |run: &[&Place]| -> Vec<(usize, usize)> {
            run.iter()
                .map(|p| (p.size, p.weights.map_or(0, |at| weight_strides[at])))
                .collect()
        };
        let product = |run: &[&Place]| run.iter().map(|p| p.size).product::<usize>();
        Some(Layout {
            geometry: Geometry {
                batch: product(&batch_in),
                rows: product(&rows_in),
                depth: product(&depth),
                columns: product(&columns),
                activation_batch: innermost(&batch_in, &input_strides, |p| p.activation),
                output_batch: innermost(&batch_out, &output_strides, |p| p.output),
                activation_row: innermost(&rows_in, &input_strides, |p| p.activation),
                activation_depth: innermost(&depth, &input_strides, |p| p.activation),
                output_row: innermost(&rows_out, &output_strides, |p| p.output),
                output_column: innermost(&columns, &output_strides, |p| p.output),
            },
            packing: Packing {
                batch: in_weights(&batch_in),
                depth: in_weights(&depth),
                columns: in_weights(&columns),
            },
            column_axes: columns.iter().filter_map(|p| p.output).collect(),
        })
    }
}

impl Packing {
    /// `weights` packed for `geometry` in groups of `width` columns, zero past the last
    /// column: `[batch][group][depth][width]`.
    fn pack(&self, weights: &[f32], geometry: &Geometry, width: usize) -> Vec<f32> {
        let offsets = |axes: &[(usize, usize)], count: usize| -> Vec<usize> {
            (0..count)
                .map(|mut index| {
                    let mut offset = 0;
                    for &(size, stride) in axes.iter().rev() {
                        offset += (index % size) * stride;
                        index /= size;
                    }
                    offset
                })
                .collect()
        };
        let g = geometry;
        let batch_offsets = offsets(&self.batch, g.batch);
        let depth_offsets = offsets(&self.depth, g.depth);
        let column_offsets = offsets(&self.columns, g.columns);
        let groups = g.columns.div_ceil(width);
        let mut packed = vec![0f32; g.batch * groups * g.depth * width];
        for (product, batch_offset) in batch_offsets.iter().enumerate() {
            let packed = &mut packed[product * groups * g.depth * width..];
            for (column, column_offset) in column_offsets.iter().enumerate() {
                let (group, lane) = (column / width, column % width);
                for (step, depth_offset) in depth_offsets.iter().enumerate() {
                    packed[(group * g.depth + step) * width + lane] =
                        weights[batch_offset + depth_offset + column_offset];
                }
            }
        }
        packed
    }
}

/// The strides of a C-contiguous array of `shape`, in elements.
fn natural_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for axis in (0..shape.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * shape[axis + 1];
    }
    strides
}

mod batched;

pub(super) use batched::BatchedProduct;

#[cfg(test)]
mod tests;
