//! 3x3 convolutions on a direct SIMD kernel of our own, in place of tract's.
//!
//! tract runs a convolution as a matrix product whose right operand it gathers lazily from the
//! image (im2col). On an AVX-512 Xeon the shipped decoder's convolutions ran at about half of
//! the machine's f32 peak that way, where ONNX Runtime's direct kernels run the whole decoder
//! at its peak (BENCHMARKS.md, "A direct 3x3 convolution"). No Rust library offers a direct
//! convolution, so this module is one, with two ways of tiling the zero-padded image, read
//! straight from memory. Where rows are a whole number of vectors wide, a tile is `BLOCK`
//! output channels by three runs of a vector's width of output pixels, and each input channel
//! and tap adds a broadcast weight times a run of pixels, into the NCHW output. Narrower rows
//! (a UNet's 8x8 and 4x4 levels, where a run would span rows) take the dense products' tile
//! turned around: six pixels by a panel of output channels, each tap adding a broadcast pixel
//! times a vector of weights, staged pixel-major and scattered into NCHW. (Read as runs over
//! nine shifted copies of the image, such convolutions reach 35-40 % of the 16x16 level's
//! rate.)
//!
//! [`replace_convolutions`] swaps tract's `Conv` for [`DirectConv3x3`] where the kernel
//! applies (f32, 3x3, stride 1, padding 1, no groups, constant weights) and the CPU has
//! AVX-512 or AVX2 with FMA; everything else, and every other CPU, keeps tract's convolution.
//! A run on several threads splits each convolution's tiles over them.

use super::tile::{self, Tile};
use super::{f32_elements, f32_output, on_threads, same_bits, Isa, SharedBuffer};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::cnn::PaddingSpec;
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Output channels whose weights are packed together and computed by one tile.
const BLOCK: usize = 8;
/// Runs of output pixels (a vector's width each) one tile computes.
const RUNS: usize = 3;

/// How a [`DirectConv3x3`] lays its tiles over the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Strategy {
    /// Rows a whole number of vectors wide: vectors of pixels, each weight broadcast
    /// ([`BLOCK`] output channels by [`RUNS`] runs of pixels per tile).
    Runs,
    /// Narrower rows (a UNet's 8x8 and 4x4 levels, where runs of pixels would span rows):
    /// vectors of output channels, each pixel broadcast ([`tile::ROWS`] pixels by a panel of
    /// channels per tile), outputs staged pixel-major and then scattered into NCHW.
    Broadcast,
}

/// The instruction set and strategy for a convolution to `output_channels` over an image
/// `width` pixels wide, among `isas` (widest first): the widest; runs where its vectors tile
/// the rows, except rows of one vector into many channels (where the runs' passes over the
/// input channels, sized for their weights, get many: 16 for a paper-size UNet's 672
/// channels); else broadcast pixels. Measured on an AVX-512 Xeon: 8x8 images go 1.6x faster
/// broadcast at 16 lanes than in runs at 8; 16x16 ones into 672 channels 1.15x faster
/// broadcast, into 64 channels 1.1x slower.
pub(super) fn strategy_for(
    isas: &[Isa],
    width: usize,
    output_channels: usize,
) -> Option<(Isa, Strategy)> {
    let &widest = isas.first()?;
    let lanes = widest.lanes();
    let many_channels = output_channels >= 4 * widest.panel_width();
    let strategy = if !width.is_multiple_of(lanes) || (width == lanes && many_channels) {
        Strategy::Broadcast
    } else {
        Strategy::Runs
    };
    Some((widest, strategy))
}

/// A 3x3 convolution, stride 1, padding 1, over an NCHW f32 image.
#[derive(Debug, Clone)]
pub struct DirectConv3x3 {
    isa: Isa,
    strategy: Strategy,
    input_channels: usize,
    output_channels: usize,
    /// Weights as `[output_channels / group (rounded up)][input_channels][9][group]`, the
    /// missing channels of a last partial group zero; a group is [`BLOCK`] channels for
    /// [`Strategy::Runs`], a panel for [`Strategy::Broadcast`].
    packed: Arc<Vec<f32>>,
    /// One per output channel, padded like `packed`; `None` where the bias is the op's second
    /// input (tract folds what a residual block adds after its convolution, the time
    /// embedding, into the convolution's bias).
    bias: Option<Arc<Vec<f32>>>,
}

impl PartialEq for DirectConv3x3 {
    fn eq(&self, other: &Self) -> bool {
        self.isa == other.isa
            && self.strategy == other.strategy
            && self.input_channels == other.input_channels
            && self.output_channels == other.output_channels
            && same_bits(&self.packed, &other.packed)
            && match (&self.bias, &other.bias) {
                (Some(a), Some(b)) => same_bits(a, b),
                (a, b) => a.is_none() && b.is_none(),
            }
    }
}

// Compared bit for bit, so equality is an equivalence even with NaNs.
impl Eq for DirectConv3x3 {}

impl DirectConv3x3 {
    /// From OIHW `weights` ([output, input, 3, 3]) and, if constant, the bias.
    fn new(
        (isa, strategy): (Isa, Strategy),
        weights: &[f32],
        bias: Option<&[f32]>,
        output_channels: usize,
    ) -> Self {
        let input_channels = weights.len() / (output_channels * 9);
        let op = DirectConv3x3 {
            isa,
            strategy,
            input_channels,
            output_channels,
            packed: Arc::new(Vec::new()),
            bias: None,
        };
        let group = op.group();
        let groups = output_channels.div_ceil(group);
        let mut packed = vec![0f32; groups * input_channels * 9 * group];
        for o in 0..output_channels {
            let (block, lane) = (o / group, o % group);
            for c in 0..input_channels {
                for tap in 0..9 {
                    packed[((block * input_channels + c) * 9 + tap) * group + lane] =
                        weights[(o * input_channels + c) * 9 + tap];
                }
            }
        }
        DirectConv3x3 {
            packed: Arc::new(packed),
            bias: bias.map(|b| Arc::new(padded_bias(b, output_channels, group))),
            ..op
        }
    }

    /// Output channels packed together.
    fn group(&self) -> usize {
        match self.strategy {
            Strategy::Runs => BLOCK,
            Strategy::Broadcast => self.isa.panel_width(),
        }
    }

    /// Convolves one image, `[input_channels, height, width]`, into `output`, with `bias`
    /// padded to whole groups.
    fn convolve(
        &self,
        image: &[f32],
        height: usize,
        width: usize,
        bias: &[f32],
        output: &mut [f32],
    ) {
        match self.strategy {
            Strategy::Runs => self.convolve_runs(image, height, width, bias, output),
            Strategy::Broadcast => self.convolve_broadcast(image, height, width, bias, output),
        }
    }

    fn convolve_runs(
        &self,
        image: &[f32],
        height: usize,
        width: usize,
        bias: &[f32],
        output: &mut [f32],
    ) {
        let prepared = padded_image(image, self.input_channels, height, width, self.isa.lanes());
        let runs = &prepared.runs;
        let groups = runs.len().div_ceil(RUNS);
        let blocks = self.output_channels.div_ceil(BLOCK);
        let geometry = Geometry {
            image: &prepared.image,
            tap_row: width + 2,
            plane: prepared.plane,
            output_plane: height * width,
        };
        let output = SharedBuffer(output.as_mut_ptr());
        // Input channels in passes whose weights stay in a core's cache while the image
        // streams through; the first pass starts from the bias, the others add to the output.
        let per_pass = input_channels_per_pass(self.output_channels);
        for first in (0..self.input_channels).step_by(per_pass) {
            let pass = first..(first + per_pass).min(self.input_channels);
            let bias = (first == 0).then_some(bias);
            // Tasks are (group of runs, block of channels), group-major so that consecutive
            // tasks read the same rows of the image.
            on_threads(groups * blocks, |range| {
                for task in range {
                    let (group, block) = (task / blocks, task % blocks);
                    let group_runs = &runs[group * RUNS..((group + 1) * RUNS).min(runs.len())];
                    // SAFETY: each task writes the channels of its block at its runs' pixels,
                    // and no two tasks of a pass share both.
                    unsafe { self.tile(&geometry, group_runs, block, pass.clone(), bias, &output) };
                }
            });
        }
    }

    /// [`Strategy::Broadcast`]: tiles of pixels by panels of output channels, into a
    /// pixel-major buffer, then scattered into the NCHW output.
    fn convolve_broadcast(
        &self,
        image: &[f32],
        height: usize,
        width: usize,
        bias: &[f32],
        output: &mut [f32],
    ) {
        let padded_width = width + 2;
        let plane = (height + 2) * padded_width;
        let padded = padded_planes(image, self.input_channels, height, width);
        let pixels = height * width;
        let panel = self.isa.panel_width();
        let panels = self.output_channels.div_ceil(panel);
        let staged_row = panels * panel;
        let mut staged = vec![0f32; pixels * staged_row];
        let target = SharedBuffer(staged.as_mut_ptr());
        let pixel_tiles = pixels.div_ceil(tile::ROWS);
        let taps: [usize; 9] = std::array::from_fn(|t| (t / 3) * padded_width + t % 3);
        // Input channels in passes whose panel of weights stays in a core's L2 while every
        // tile of pixels reads it (a paper-size UNet's 896 channels make 2 MB panels); the
        // first pass starts from the bias, the others add to the staged sums.
        let per_pass = broadcast_channels_per_pass(panel);
        for first_channel in (0..self.input_channels).step_by(per_pass) {
            let depth = per_pass.min(self.input_channels - first_channel);
            // Panel-major, so that a thread's consecutive tiles reuse the panel's weights.
            on_threads(panels * pixel_tiles, |range| {
                for task in range {
                    let (p, pixel_tile) = (task / pixel_tiles, task % pixel_tiles);
                    let first = pixel_tile * tile::ROWS;
                    let rows = (pixels - first).min(tile::ROWS);
                    let channels = (self.output_channels - p * panel).min(panel);
                    let weights = (p * self.input_channels + first_channel) * 9 * panel;
                    let tile = Tile {
                        broadcast: padded[first_channel * plane..].as_ptr(),
                        // Pixel (y, x)'s tap (0, 0) is padded pixel (y, x).
                        row_offsets: std::array::from_fn(|r| {
                            let pixel = first + r.min(rows - 1);
                            (pixel / width) * padded_width + pixel % width
                        }),
                        step: plane,
                        taps,
                        vectors: self.packed[weights..].as_ptr(),
                        pitch: panel,
                        depth,
                        bias_per_lane: (first_channel == 0).then(|| bias[p * panel..].as_ptr()),
                        bias_per_row: None,
                        accumulate: first_channel > 0,
                        out_row: staged_row,
                    };
                    let out = target.at(first * staged_row + p * panel);
                    let vectors = channels.div_ceil(self.isa.lanes());
                    // SAFETY: the rewrite chose an instruction set this CPU has; the panel and
                    // the staged rows are whole; each task writes its own pixels and channels.
                    unsafe { tile::run(self.isa, &tile, rows, vectors, out) };
                }
            });
        }
        let channels = self.output_channels;
        tile::scatter(&staged, pixels, channels, staged_row, output, 1, pixels);
    }

    /// Computes the channels of `block` at `runs` over the input channels `inputs`: from
    /// `bias`, or onto what the output holds when there is none.
    ///
    /// # Safety
    /// The CPU has the instruction set of `self.isa`, and no other thread writes the same
    /// channels at the same pixels.
    unsafe fn tile(
        &self,
        geometry: &Geometry,
        runs: &[(usize, usize)],
        block: usize,
        inputs: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        output: &SharedBuffer,
    ) {
        let ci = inputs.len();
        let channels = (self.output_channels - block * BLOCK).min(BLOCK);
        let weights = &self.packed[(block * self.input_channels + inputs.start) * 9 * BLOCK..]
            [..ci * 9 * BLOCK];
        let pass = Pass {
            image: &geometry.image[inputs.start * geometry.plane..],
            input_channels: ci,
            weights,
            bias: bias.map(|b| &b[block * BLOCK..][..BLOCK]),
        };
        let out = output.at(block * BLOCK * geometry.output_plane);
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => match runs.len() {
                3 => simd::avx512::<3>(geometry, &pass, runs, out, channels),
                2 => simd::avx512::<2>(geometry, &pass, runs, out, channels),
                _ => simd::avx512::<1>(geometry, &pass, runs, out, channels),
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                for half in 0..2 {
                    let first = half * 4;
                    if first >= channels {
                        break;
                    }
                    let half = Pass {
                        weights: &weights[first..],
                        bias: pass.bias.map(|b| &b[first..]),
                        ..pass
                    };
                    let out = out.add(first * geometry.output_plane);
                    let channels = (channels - first).min(4);
                    match runs.len() {
                        3 => simd::avx2::<3>(geometry, &half, runs, out, channels),
                        2 => simd::avx2::<2>(geometry, &half, runs, out, channels),
                        _ => simd::avx2::<1>(geometry, &half, runs, out, channels),
                    }
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("no direct kernel is chosen off x86-64"),
        }
    }
}

/// The image as the kernel reads it, and the sizes that address it and the output.
struct Geometry<'a> {
    /// One plane per input channel.
    image: &'a [f32],
    /// How far the tap one row down is from a run's pixels: tap (ky, kx) reads
    /// `ky * tap_row + kx` on.
    tap_row: usize,
    /// Elements per input channel in `image`.
    plane: usize,
    /// `height * width`.
    output_plane: usize,
}

/// The image with a border of zeros, for [`Strategy::Runs`], with its runs: (offset of a
/// run's pixels in a channel's plane, offset of its outputs in an output plane), `lanes`
/// pixels of one row each.
struct Prepared {
    image: Vec<f32>,
    plane: usize,
    runs: Vec<(usize, usize)>,
}

fn padded_image(
    image: &[f32],
    channels: usize,
    height: usize,
    width: usize,
    lanes: usize,
) -> Prepared {
    let padded_width = width + 2;
    let runs = (0..height)
        .flat_map(|row| {
            (0..width)
                .step_by(lanes)
                .map(move |x| (row * padded_width + x, row * width + x))
        })
        .collect();
    Prepared {
        image: padded_planes(image, channels, height, width),
        plane: (height + 2) * padded_width,
        runs,
    }
}

/// Each channel of `image` with a border of zeros, `(height + 2) x (width + 2)`: each tap of
/// a 3x3 convolution a shift of it.
fn padded_planes(image: &[f32], channels: usize, height: usize, width: usize) -> Vec<f32> {
    let padded_width = width + 2;
    let plane = (height + 2) * padded_width;
    planes_on_threads(channels, plane, |channel, plane_out| {
        let source = &image[channel * height * width..][..height * width];
        for (row, pixels) in plane_out[padded_width..]
            .chunks_exact_mut(padded_width)
            .zip(source.chunks_exact(width))
        {
            row[1..=width].copy_from_slice(pixels);
        }
    })
}

/// Input channels per pass for `output_channels`: as many as keep the pass's weights (9 per
/// input and output channel) within 1 MB, which a core's L2 holds on current x86 CPUs. A
/// paper-size UNet's 896-channel convolution has 7 MB of weights: read whole, they left the
/// cache before each group of runs came back to them.
fn input_channels_per_pass(output_channels: usize) -> usize {
    const PASS_WEIGHT_BYTES: usize = 1 << 20;
    let per_input_channel = 9 * output_channels.div_ceil(BLOCK) * BLOCK * 4;
    (PASS_WEIGHT_BYTES / per_input_channel).max(1)
}

/// Input channels per pass of [`Strategy::Broadcast`] with panels `panel` channels wide: as
/// many as keep the pass's part of a panel (9 weights per input and output channel) within
/// 512 KB, a quarter of a current x86 core's L2, beside the image and the staged sums.
fn broadcast_channels_per_pass(panel: usize) -> usize {
    const PASS_WEIGHT_BYTES: usize = 512 << 10;
    (PASS_WEIGHT_BYTES / (9 * panel * 4)).max(1)
}

/// `channels` planes of `plane` zeros each, filled by `fill(channel, plane)` on the threads of
/// tract's executor.
fn planes_on_threads(
    channels: usize,
    plane: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut planes = vec![0f32; channels * plane];
    let target = SharedBuffer(planes.as_mut_ptr());
    on_threads(channels, |range| {
        for channel in range {
            // SAFETY: each channel writes its own plane.
            fill(channel, unsafe {
                std::slice::from_raw_parts_mut(target.at(channel * plane), plane)
            });
        }
    });
    planes
}

/// What one pass of a tile reads: the pass's input channels and the block's weights for
/// them, and the bias to start from (none: add onto the output).
#[derive(Clone, Copy)]
struct Pass<'a> {
    /// The pass's first input channel's plane onward.
    image: &'a [f32],
    input_channels: usize,
    /// `[input_channels][9][BLOCK]`, from the tile's first output channel.
    weights: &'a [f32],
    bias: Option<&'a [f32]>,
}

/// `bias` (one value per output channel, or one for all) with zeros up to whole groups.
fn padded_bias(bias: &[f32], output_channels: usize, group: usize) -> Vec<f32> {
    let mut padded = vec![0f32; output_channels.div_ceil(group) * group];
    for (o, value) in padded[..output_channels].iter_mut().enumerate() {
        *value = if bias.len() == 1 { bias[0] } else { bias[o] };
    }
    padded
}

#[cfg(target_arch = "x86_64")]
mod simd;

impl Op for DirectConv3x3 {
    fn name(&self) -> StaticName {
        "DirectConv3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {} channels, {:?} {:?}",
            self.input_channels, self.output_channels, self.strategy, self.isa
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for DirectConv3x3 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let shape = input.shape();
        ensure!(shape.len() == 4 && shape[1] == self.input_channels);
        let (batch, height, width) = (shape[0], shape[2], shape[3]);
        ensure!(self.strategy != Strategy::Runs || width.is_multiple_of(self.isa.lanes()));
        let dynamic_bias;
        let bias = match (&self.bias, inputs.get(1)) {
            (Some(bias), _) => bias.as_slice(),
            (None, Some(bias)) => {
                let bias = bias.to_plain_array_view::<f32>()?;
                ensure!(bias.len() == self.output_channels || bias.len() == 1);
                let bias: Vec<f32> = bias.iter().copied().collect();
                dynamic_bias = padded_bias(&bias, self.output_channels, self.group());
                &dynamic_bias
            }
            (None, None) => bail!("DirectConv3x3 expects its bias as a second input"),
        };
        let image = f32_elements(input)?;
        let output_image = self.output_channels * height * width;
        let output = f32_output(&[batch, self.output_channels, height, width], |output| {
            for (source, target) in image
                .chunks_exact(self.input_channels * height * width)
                .zip(output.chunks_exact_mut(output_image))
            {
                self.convolve(source, height, width, bias, target);
            }
        })?;
        Ok(tvec!(output))
    }
}

impl TypedOp for DirectConv3x3 {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        ensure!(shape.len() == 4);
        shape[1] = self.output_channels.to_dim();
        Ok(tvec!(f32::fact(shape)))
    }
}
/// `model` with its convolutions replaced where `choose(width, output channels)` names an
/// instruction set and a strategy.
pub(super) fn replace_convolutions(
    mut model: TypedModel,
    choose: impl Fn(usize, usize) -> Option<(Isa, Strategy)>,
) -> TractResult<TypedModel> {
    let mut replaced = false;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let Some(op) = direct_form(&model, node, conv, &choose)? else {
            continue;
        };
        let mut patch = TypedModelPatch::default();
        let mut inputs = tvec![patch.tap_model(&model, node.inputs[0])?];
        if op.bias.is_none() {
            inputs.push(patch.tap_model(&model, node.inputs[2])?);
        }
        let output = patch.wire_node(&node.name, op, &inputs)?[0];
        patch.shunt_outside(&model, OutletId::new(id, 0), output)?;
        patch.apply(&mut model)?;
        replaced = true;
    }
    if replaced {
        // Drops the replaced convolutions' weights before optimising packs what is left.
        model.compact()?;
    }
    Ok(model)
}

/// The [`DirectConv3x3`] computing `node`'s convolution, if the kernel can.
fn direct_form(
    model: &TypedModel,
    node: &TypedNode,
    conv: &Conv,
    choose: impl Fn(usize, usize) -> Option<(Isa, Strategy)>,
) -> TractResult<Option<DirectConv3x3>> {
    let spec = &conv.pool_spec;
    let ones = |v: &Option<TVec<usize>>| v.as_ref().is_none_or(|v| v.iter().all(|&d| d == 1));
    let padded_by_one = match &spec.padding {
        PaddingSpec::Explicit(before, after) | PaddingSpec::ExplicitOnnxPool(before, after, _) => {
            before.iter().chain(after).all(|&p| p == 1)
        }
        PaddingSpec::SameUpper | PaddingSpec::SameLower => true,
        PaddingSpec::Valid => false,
    };
    if conv.q_params.is_some()
        || conv.group != 1
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.data_format != DataFormat::NCHW
        || *spec.kernel_shape != [3, 3]
        || !ones(&spec.strides)
        || !ones(&spec.dilations)
        || !padded_by_one
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let input = model.outlet_fact(node.inputs[0])?;
    let weights = model.outlet_fact(node.inputs[1])?;
    let bias = model.outlet_fact(node.inputs[2])?;
    let (Some(weights), Some(shape)) = (&weights.konst, input.shape.as_concrete()) else {
        return Ok(None);
    };
    let output_channels = spec.output_channels;
    let bias_len = bias
        .shape
        .as_concrete()
        .map(|s| s.iter().product::<usize>());
    if input.datum_type != f32::datum_type()
        || weights.datum_type() != f32::datum_type()
        || bias.datum_type != f32::datum_type()
        || shape.len() != 4
        || weights.shape() != [output_channels, spec.input_channels, 3, 3]
        || !(bias_len == Some(output_channels) || bias_len == Some(1))
    {
        return Ok(None);
    }
    let Some(choice) = choose(shape[3], output_channels) else {
        return Ok(None);
    };
    let weights = weights.to_plain_array_view::<f32>()?;
    let weights = weights.as_standard_layout();
    let weights = weights.as_slice().expect("a standard layout is contiguous");
    let bias = match &bias.konst {
        Some(bias) => Some(
            bias.to_plain_array_view::<f32>()?
                .iter()
                .copied()
                .collect::<Vec<_>>(),
        ),
        None => None,
    };
    Ok(Some(DirectConv3x3::new(
        choice,
        weights,
        bias.as_deref(),
        output_channels,
    )))
}

#[cfg(test)]
mod tests;
