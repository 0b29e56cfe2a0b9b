//! The pure-Rust engine: tract, with one optimised plan per set of input shapes.
//!
//! Graphs keep batch, height and width symbolic; tract optimises best with every dimension
//! known, so each new combination of input shapes gets its own plan, kept for reuse: the
//! [`MAX_PLANS`] most recently used, so that a stream of different sizes cannot grow memory
//! without bound.
//!
//! A batch of several rows runs as rows of one, spread over the session's threads, each row
//! on a single-threaded plan. `ldm profile` shows why: tract's plans at batch 1 fuse what its
//! plans for larger batches do not (lazy im2col, chained multiply-adds, broadcasts along one
//! axis), so for the shipped UNet batch 2 costs 3.1x batch 1 and batch 8 11.4x, where rows on
//! threads of their own scale. A single row runs on the calling thread, whose products and
//! other splits go to the session's other threads ([`crate::run_threads`]).
//!
//! Each plan is built from the parsed graph in four steps of our own around tract's optimiser
//! (BENCHMARKS.md, "Where tract spends its time"): f16 weights widened once, 3x3 convolutions,
//! products with constant weights and softmaxes given to kernels of our own
//! ([`crate::kernels`]), the optimised plan's constants given
//! natural strides, and the other threads kept awake while the plan runs. Constants
//! inside a loop's body (the sliced attention's) keep tract's strides: the body is optimised
//! inside its loop node.

use std::path::{Path, PathBuf};

use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_hir::infer::Factoid;

use crate::plan_cache::{self, PlanCache};
use crate::run_threads::RunThreads;
use crate::session::in_graph_order;
use crate::{RuntimeError, Session, Tensor, TensorData};

pub struct TractSession {
    /// The graph's file, parsed again for each new plan.
    source: PathBuf,
    /// Where decluttered graphs are kept, with the SHA-256 of the graph file's bytes.
    cache: Option<(PlanCache, [u8; 32])>,
    /// Plans built from a decluttered graph the cache held.
    plans_from_cache: usize,
    /// The graph as parsed at load, until the first plan takes it. Kept for the session's life
    /// it would hold every weight a second time (as stored, beside the plans' packed copies):
    /// a plan for a new shape parses the file again instead.
    parsed: Option<InferenceModel>,
    /// The threads of a run: the plan runs on one of them and its products are split over all.
    threads: RunThreads,
    inputs: Vec<String>,
    outputs: Vec<String>,
    /// Whether every input's first dimension is the symbolic `batch` of the bundle contract,
    /// whose rows the graph computes independently.
    rows_independent: bool,
    /// Plans by input shapes, least recently used first.
    plans: Vec<(Vec<Vec<usize>>, Arc<TypedRunnableModel>)>,
}

/// Optimised plans a session keeps (each may hold its own packed copy of the weights).
pub const MAX_PLANS: usize = 8;

fn parse(path: &Path) -> Result<InferenceModel, RuntimeError> {
    tract_onnx::onnx()
        .model_for_path(path)
        .map_err(|e| load_error(path, ldm_core::one_line(e.as_ref())))
}

fn load_error(path: &Path, message: String) -> RuntimeError {
    RuntimeError::Load {
        engine: "tract",
        path: path.to_path_buf(),
        message,
    }
}

fn run_error(e: TractError) -> RuntimeError {
    run_failure(ldm_core::one_line(e.as_ref()))
}

fn run_failure(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Run {
        engine: "tract",
        message: message.into(),
    }
}

impl TractSession {
    /// Loads a graph that runs on the calling thread.
    pub fn load(path: &Path) -> Result<Self, RuntimeError> {
        Self::with_threads(path, 1)
    }

    /// Loads a graph whose matrix products use `threads` threads.
    pub fn with_threads(path: &Path, threads: usize) -> Result<Self, RuntimeError> {
        Self::open(path, threads, parse(path)?, None)
    }

    /// Like [`TractSession::with_threads`], with the decluttered graphs of its plans read from,
    /// or written to, `cache` (unless the graph keeps its weights in external data).
    pub fn with_plan_cache(
        path: &Path,
        threads: usize,
        cache: PlanCache,
    ) -> Result<Self, RuntimeError> {
        let bytes = std::fs::read(path).map_err(|e| load_error(path, e.to_string()))?;
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut bytes.as_slice())
            .map_err(|e| load_error(path, ldm_core::one_line(e.as_ref())))?;
        let external = proto
            .graph
            .as_ref()
            .is_some_and(|g| g.initializer.iter().any(|t| !t.external_data.is_empty()));
        if external {
            return Self::with_threads(path, threads);
        }
        let model = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| load_error(path, ldm_core::one_line(e.as_ref())))?;
        drop(proto);
        let fingerprint = plan_cache::fingerprint(&bytes);
        drop(bytes);
        let mut session = Self::open(path, threads, model, Some((cache, fingerprint)))?;
        // Plans will mostly come from the cache: the parsed graph is not kept for them (a plan
        // the cache lacks parses the file again).
        session.parsed = None;
        Ok(session)
    }

    /// How many of this session's plans were built from a decluttered graph the cache held.
    pub fn plans_from_cache(&self) -> usize {
        self.plans_from_cache
    }

    fn open(
        path: &Path,
        threads: usize,
        model: InferenceModel,
        cache: Option<(PlanCache, [u8; 32])>,
    ) -> Result<Self, RuntimeError> {
        let threads = crate::bundle::check_threads(threads)?;
        let inputs: Vec<String> = model
            .input_outlets()
            .expect("an inference model lists its inputs")
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let outputs = model
            .output_outlets()
            .expect("an inference model lists its outputs")
            .iter()
            .map(|o| {
                model
                    .outlet_label(*o)
                    .map(str::to_string)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        let rows_independent = (0..inputs.len()).all(|i| {
            model.input_fact(i).is_ok_and(|fact| {
                fact.shape
                    .dim(0)
                    .and_then(|d| d.concretize())
                    .is_some_and(|d| d.to_string() == "batch")
            })
        });
        Ok(Self {
            source: path.to_path_buf(),
            cache,
            plans_from_cache: 0,
            parsed: Some(model),
            threads: RunThreads::new(threads),
            inputs,
            outputs,
            rows_independent,
            plans: Vec::new(),
        })
    }

    /// The plan for `inputs` with their first dimension replaced by `rows`.
    fn plan(
        &mut self,
        inputs: &[&Tensor],
        rows: Option<usize>,
    ) -> Result<Arc<TypedRunnableModel>, RuntimeError> {
        let key: Vec<Vec<usize>> = inputs
            .iter()
            .map(|t| {
                let mut shape = t.shape().to_vec();
                if let (Some(rows), Some(first)) = (rows, shape.first_mut()) {
                    *first = rows;
                }
                shape
            })
            .collect();
        if let Some(index) = self.plans.iter().position(|(shapes, _)| *shapes == key) {
            let entry = self.plans.remove(index);
            let plan = entry.1.clone();
            self.plans.push(entry);
            return Ok(plan);
        }
        let facts: Vec<(DatumType, Vec<usize>)> = inputs
            .iter()
            .zip(&key)
            .map(|(tensor, shape)| {
                let datum = match tensor.data() {
                    TensorData::F32(_) => f32::datum_type(),
                    TensorData::I64(_) => i64::datum_type(),
                };
                (datum, shape.clone())
            })
            .collect();
        let entry = self
            .cache
            .as_ref()
            .map(|(cache, graph)| (cache, cache.entry(graph, &facts)));
        let cached = entry.as_ref().and_then(|(cache, entry)| cache.load(entry));
        let decluttered = match cached {
            Some(model) => {
                self.plans_from_cache += 1;
                self.parsed = None;
                // NNEF reads some axis changes back as ops of their own, which keep our kernels
                // from folding a bias; decluttered again (no measurable start time), the graph is
                // the one a fresh parse gives, and its plan computes the same bits.
                model.into_decluttered().map_err(run_error)?
            }
            None => {
                let mut model = match self.parsed.take() {
                    Some(model) => model,
                    None => parse(&self.source)?,
                };
                for (index, (datum, shape)) in facts.iter().enumerate() {
                    model
                        .set_input_fact(index, InferenceFact::dt_shape(*datum, shape))
                        .map_err(run_error)?;
                }
                let model = model
                    .into_typed()
                    .and_then(with_f32_weights)
                    .and_then(|m| m.into_decluttered())
                    .map_err(run_error)?;
                if let Some((cache, entry)) = &entry {
                    // Best effort: a cache that cannot be written costs the next start time,
                    // not this run.
                    let _ = cache.store(entry, &model);
                }
                model
            }
        };
        let plan = crate::kernels::with_own_kernels(decluttered)
            .and_then(|mut m| m.optimize().map(|()| m))
            .and_then(with_natural_constants)
            .and_then(|m| m.into_runnable())
            .map_err(run_error)?;
        if self.plans.len() == MAX_PLANS {
            self.plans.remove(0);
        }
        self.plans.push((key, plan.clone()));
        Ok(plan)
    }
}

impl Session for TractSession {
    fn input_names(&self) -> &[String] {
        &self.inputs
    }

    fn output_names(&self) -> &[String] {
        &self.outputs
    }

    fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<Tensor>, RuntimeError> {
        let ordered = in_graph_order(&self.inputs, inputs)?;
        let rows = ordered.first().and_then(|t| t.shape().first()).copied();
        let splittable = self.rows_independent
            && rows.is_some_and(|r| r > 1)
            && ordered.iter().all(|t| t.shape().first() == rows.as_ref());
        if !splittable {
            let plan = self.plan(&ordered, None)?;
            let values = tract_values(&ordered, None)?;
            let outputs = self.threads.run(|| plan.run(values))?.map_err(run_error)?;
            return self.gather(&[outputs]);
        }
        let rows = rows.unwrap_or(1);
        let plan = self.plan(&ordered, Some(1))?;
        let workers = self.threads.count().min(rows);
        let run_rows = |range: std::ops::Range<usize>| {
            range
                .map(|row| {
                    let values = tract_values(&ordered, Some(row))?;
                    multithread_tract_scope(Executor::SingleThread, || plan.run(values))
                        .map_err(run_error)
                })
                .collect::<Result<Vec<_>, RuntimeError>>()
        };
        // Contiguous rows per worker, so that their outputs joined in worker order are in
        // row order.
        let chunk = |w: usize| w * rows / workers..(w + 1) * rows / workers;
        let per_row: Vec<TVec<TValue>> = if workers == 1 {
            run_rows(0..rows)?
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..workers)
                    .map(|w| scope.spawn(move || run_rows(chunk(w))))
                    .collect();
                let mut joined = Vec::with_capacity(rows);
                for handle in handles {
                    joined.extend(
                        handle
                            .join()
                            .map_err(|_| run_failure("a row's run panicked"))??,
                    );
                }
                Ok::<_, RuntimeError>(joined)
            })?
        };
        self.gather(&per_row)
    }
}

impl TractSession {
    /// The graph's outputs from the outputs of each row (or of the whole batch), joined along
    /// the first axis.
    fn gather(&self, per_row: &[TVec<TValue>]) -> Result<Vec<Tensor>, RuntimeError> {
        self.outputs
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let parts: Vec<&TValue> = per_row.iter().map(|outputs| &outputs[index]).collect();
                let mut shape = parts[0].shape().to_vec();
                if per_row.len() > 1 {
                    let rows = parts.iter().map(|p| p.shape().first().copied()).sum();
                    match (shape.first_mut(), rows) {
                        (Some(first), Some(rows)) => *first = rows,
                        _ => {
                            return Err(run_failure(format!(
                                "output '{name}' has no batch axis to join the rows along"
                            )))
                        }
                    }
                }
                match parts[0].datum_type() {
                    DatumType::F32 => Tensor::f32(&shape, joined::<f32>(&parts)?),
                    DatumType::I64 => Tensor::i64(&shape, joined::<i64>(&parts)?),
                    other => Err(RuntimeError::UnsupportedType {
                        name: name.clone(),
                        dtype: format!("{other:?}"),
                    }),
                }
            })
            .collect()
    }
}

/// Time spent in one node of an optimised plan, averaged over the profiled runs.
#[derive(Debug, Clone)]
pub struct NodeTime {
    pub node: String,
    /// The operator's name as tract's optimiser left it (`Conv`, `OptMatMul`, ...).
    pub op: String,
    pub seconds: f64,
}

impl TractSession {
    /// Runs the plan for `inputs` `runs` times (after one untimed run) and times every node:
    /// where tract spends its time, in plan order.
    pub fn profile(
        &mut self,
        inputs: &[(&str, &Tensor)],
        runs: usize,
    ) -> Result<Vec<NodeTime>, RuntimeError> {
        let ordered = in_graph_order(&self.inputs, inputs)?;
        let plan = self.plan(&ordered, None)?;
        let mut state = plan.spawn().map_err(run_error)?;
        let mut totals: Vec<(usize, f64)> = Vec::new();
        for run in 0..=runs.max(1) {
            let values = tract_values(&ordered, None)?;
            self.threads
                .run(|| {
                    state.run_plan_with_eval(values, |context, op_state, node, input| {
                        let start = std::time::Instant::now();
                        let output =
                            tract_onnx::tract_core::plan::eval(context, op_state, node, input);
                        if run > 0 {
                            let seconds = start.elapsed().as_secs_f64();
                            match totals.iter_mut().find(|(id, _)| *id == node.id) {
                                Some(entry) => entry.1 += seconds,
                                None => totals.push((node.id, seconds)),
                            }
                        }
                        output
                    })
                })?
                .map_err(run_error)?;
        }
        let model = plan.model();
        Ok(totals
            .into_iter()
            .map(|(id, seconds)| {
                let node = model.node(id);
                NodeTime {
                    node: node.name.clone(),
                    op: node.op().name().to_string(),
                    seconds: seconds / runs.max(1) as f64,
                }
            })
            .collect())
    }
}

/// tract's copies of `tensors`, whole or only their row `row`.
/// Multiply-accumulates per second of tract's own f32 matrix product: the optimised plan of a
/// `side` x `side` by `side` x `side` product, run `repeats` times on the calling thread.
pub fn matmul_macs_per_second(side: usize, repeats: usize) -> Result<f64, RuntimeError> {
    let mut model = TypedModel::default();
    let a = model
        .add_source("a", f32::fact([side, side]))
        .map_err(run_error)?;
    let b = model
        .add_const(
            "b",
            tract_ndarray::Array2::from_elem((side, side), 0.5f32).into_tensor(),
        )
        .map_err(run_error)?;
    let product = model
        .wire_node(
            "product",
            tract_onnx::tract_core::ops::einsum::EinSum::new(
                "mk,kn->mn".parse().map_err(run_error)?,
                f32::datum_type(),
            ),
            &[a, b],
        )
        .map_err(run_error)?;
    model.select_output_outlets(&product).map_err(run_error)?;
    let plan = model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(run_error)?;
    let input = tract_ndarray::Array2::from_elem((side, side), 1.0f32).into_tvalue();
    plan.run(tvec![input.clone()]).map_err(run_error)?;
    let started = std::time::Instant::now();
    for _ in 0..repeats {
        std::hint::black_box(plan.run(tvec![input.clone()]).map_err(run_error)?);
    }
    Ok((repeats * side * side * side) as f64 / started.elapsed().as_secs_f64())
}

fn tract_values(tensors: &[&Tensor], row: Option<usize>) -> Result<TVec<TValue>, RuntimeError> {
    fn part<D: Datum + Copy>(
        shape: &[usize],
        data: &[D],
        row: Option<usize>,
    ) -> TractResult<tract_onnx::prelude::Tensor> {
        let Some(row) = row else {
            return tract_onnx::prelude::Tensor::from_shape(shape, data);
        };
        let mut row_shape = shape.to_vec();
        row_shape[0] = 1;
        let n: usize = row_shape.iter().product();
        tract_onnx::prelude::Tensor::from_shape(&row_shape, &data[row * n..(row + 1) * n])
    }
    tensors
        .iter()
        .map(|t| {
            let tensor = match t.data() {
                TensorData::F32(v) => part(t.shape(), v, row),
                TensorData::I64(v) => part(t.shape(), v, row),
            };
            tensor.map(TValue::from).map_err(run_error)
        })
        .collect()
}

fn joined<D: Datum + Copy>(parts: &[&TValue]) -> Result<Vec<D>, RuntimeError> {
    let mut data = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        data.extend(
            part.to_plain_array_view::<D>()
                .map_err(run_error)?
                .iter()
                .copied(),
        );
    }
    Ok(data)
}

/// `model` with its f16 weights (an `--fp16-weights` bundle's, every imported Stable
/// Diffusion's) widened to f32 constants once, here. tract folds a constant cast only when its
/// output stays under 4 MB, so a larger weight was cast, and then packed for its matrix
/// product, on every run: 14 % and 8 % of a paper-size UNet's time.
fn with_f32_weights(mut model: TypedModel) -> TractResult<TypedModel> {
    let casts: Vec<(usize, Arc<tract_onnx::prelude::Tensor>)> = model
        .nodes()
        .iter()
        .filter(|node| {
            node.op_as::<Cast>()
                .is_some_and(|c| c.to == f32::datum_type())
        })
        .filter_map(|node| {
            let fact = model.outlet_fact(node.inputs[0]).ok()?;
            let weight = fact.konst.clone()?;
            (fact.datum_type == f16::datum_type()).then_some((node.id, weight))
        })
        .collect();
    for (id, weight) in casts {
        let node = model.node(id);
        let wide = weight.cast_to::<f32>()?.into_owned();
        let mut patch = TypedModelPatch::default();
        let wire = patch.add_const(&node.name, wide)?;
        patch.shunt_outside(&model, id.into(), wire)?;
        patch.apply(&mut model)?;
    }
    // Drops the f16 originals now, before optimising allocates the packed copies.
    model.compact()?;
    Ok(model)
}

/// `model` with every constant's strides made natural. tract's optimiser gives a constant it
/// adds unit axes to (a [C] scale broadcast over [N, C, H, W]) the stride of its neighbour on
/// each new axis; its elementwise kernels check for natural strides and otherwise run a generic
/// loop about 20x slower (a group norm's scale and shift over 1x192x16x16 took 245 us instead
/// of 12 us, an eighth of the UNet's time). Only a unit axis's stride can differ, and it
/// addresses nothing, so the bytes stay as they are.
fn with_natural_constants(mut model: TypedModel) -> TractResult<TypedModel> {
    for id in 0..model.nodes().len() {
        let Some(konst) = model.node(id).op_as::<Const>() else {
            continue;
        };
        let tensor = konst.val();
        let shape = tensor.shape().to_vec();
        if tensor.strides() == &*tract_onnx::prelude::Tensor::natural_strides(&shape)
            || !tensor.is_plain()
        {
            continue;
        }
        let natural = (**tensor)
            .clone()
            .into_shape(&[tensor.len()])?
            .into_shape(&shape)?
            .into_arc_tensor();
        model.node_mut(id).op = Box::new(Const::new(natural.clone())?);
        model.node_mut(id).outputs[0].fact.konst = Some(natural);
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_weights_are_widened_once_whatever_their_size() -> TractResult<()> {
        // 2M elements: 8 MB as f32, above what tract's own constant folding widens.
        let n = 2 << 20;
        let weight = tract_onnx::prelude::tensor1(&vec![f16::from_f32(0.5); n]);
        let mut model = TypedModel::default();
        let konst = model.add_const("weight", weight)?;
        let wide = model.wire_node("wide", Cast::new(f32::datum_type()), &[konst])?;
        model.select_output_outlets(&wide)?;

        let model = with_f32_weights(model)?;
        let output = model.output_outlets()?[0];
        let node = model.node(output.node);
        let value = node.op_as::<Const>().expect("the cast is folded").val();
        assert_eq!(value.datum_type(), f32::datum_type());
        assert_eq!(value.len(), n);
        assert!(value
            .to_plain_array_view::<f32>()?
            .iter()
            .all(|&v| v == 0.5));
        Ok(())
    }

    #[test]
    fn constants_leave_with_natural_strides_and_the_same_values() -> TractResult<()> {
        // What tract's optimiser makes of a [C] scale broadcast over [N, C, H, W].
        let mut scale = tract_onnx::prelude::tensor1(&[1.0f32, 2.0, 3.0]);
        scale.insert_axis(0)?;
        scale.insert_axis(2)?;
        assert_ne!(
            scale.strides(),
            &*tract_onnx::prelude::Tensor::natural_strides(&[1, 3, 1])
        );
        let mut model = TypedModel::default();
        let konst = model.add_const("scale", scale)?;
        model.select_output_outlets(&[konst])?;

        let model = with_natural_constants(model)?;
        let value = model.node(konst.node).op_as::<Const>().unwrap().val();
        assert_eq!(value.strides(), &[3, 1, 1]);
        assert_eq!(value.shape(), &[1, 3, 1]);
        assert_eq!(
            value
                .to_plain_array_view::<f32>()?
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            [1.0, 2.0, 3.0]
        );
        assert_eq!(model.outlet_fact(konst)?.konst.as_deref(), Some(&**value));
        Ok(())
    }
}
