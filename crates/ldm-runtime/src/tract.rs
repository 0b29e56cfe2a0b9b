//! The pure-Rust engine: tract, with one optimised plan per set of input shapes.
//!
//! Graphs keep batch, height and width symbolic; tract optimises best with every dimension
//! known, so each new combination of input shapes gets its own plan, kept for reuse: the
//! [`MAX_PLANS`] most recently used, so that a stream of different sizes cannot grow memory
//! without bound.

use std::path::Path;

use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

use crate::session::in_graph_order;
use crate::{RuntimeError, Session, Tensor, TensorData};

pub struct TractSession {
    model: InferenceModel,
    /// Runs matrix products on a thread pool when more than one thread was asked for.
    executor: Executor,
    inputs: Vec<String>,
    outputs: Vec<String>,
    /// Plans by input shapes, least recently used first.
    plans: Vec<(Vec<Vec<usize>>, Arc<TypedRunnableModel>)>,
}

/// Optimised plans a session keeps (each may hold its own packed copy of the weights).
pub const MAX_PLANS: usize = 8;

fn run_error(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Run {
        engine: "tract",
        message: format!("{e:#}"),
    }
}

impl TractSession {
    /// Loads a graph that runs on the calling thread.
    pub fn load(path: &Path) -> Result<Self, RuntimeError> {
        Self::with_threads(path, 1)
    }

    /// Loads a graph whose matrix products use `threads` threads.
    pub fn with_threads(path: &Path, threads: usize) -> Result<Self, RuntimeError> {
        let threads = crate::bundle::check_threads(threads)?;
        let model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| RuntimeError::Load {
                engine: "tract",
                path: path.to_path_buf(),
                message: format!("{e:#}"),
            })?;
        let inputs = model
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
        let executor = if threads > 1 {
            Executor::multithread(threads)
        } else {
            Executor::SingleThread
        };
        Ok(Self {
            model,
            executor,
            inputs,
            outputs,
            plans: Vec::new(),
        })
    }

    fn plan(&mut self, inputs: &[&Tensor]) -> Result<Arc<TypedRunnableModel>, RuntimeError> {
        let key: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
        if let Some(index) = self.plans.iter().position(|(shapes, _)| *shapes == key) {
            let entry = self.plans.remove(index);
            let plan = entry.1.clone();
            self.plans.push(entry);
            return Ok(plan);
        }
        let mut model = self.model.clone();
        for (index, tensor) in inputs.iter().enumerate() {
            let datum = match tensor.data() {
                TensorData::F32(_) => f32::datum_type(),
                TensorData::I64(_) => i64::datum_type(),
            };
            model
                .set_input_fact(index, InferenceFact::dt_shape(datum, tensor.shape()))
                .map_err(run_error)?;
        }
        let plan = model
            .into_optimized()
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
        let plan = self.plan(&ordered)?;
        let values = ordered
            .iter()
            .map(|t| {
                let tensor = match t.data() {
                    TensorData::F32(v) => tract_onnx::prelude::Tensor::from_shape(t.shape(), v),
                    TensorData::I64(v) => tract_onnx::prelude::Tensor::from_shape(t.shape(), v),
                };
                tensor.map(TValue::from).map_err(run_error)
            })
            .collect::<Result<TVec<_>, _>>()?;
        let outputs = multithread_tract_scope(self.executor.clone(), || plan.run(values))
            .map_err(run_error)?;
        outputs
            .iter()
            .zip(&self.outputs)
            .map(|(value, name)| {
                let shape = value.shape();
                match value.datum_type() {
                    DatumType::F32 => Tensor::f32(shape, flat::<f32>(value)?),
                    DatumType::I64 => Tensor::i64(shape, flat::<i64>(value)?),
                    other => Err(RuntimeError::UnsupportedType {
                        name: name.clone(),
                        dtype: format!("{other:?}"),
                    }),
                }
            })
            .collect()
    }
}

fn flat<D: Datum + Copy>(value: &TValue) -> Result<Vec<D>, RuntimeError> {
    Ok(value
        .to_plain_array_view::<D>()
        .map_err(run_error)?
        .iter()
        .copied()
        .collect())
}
