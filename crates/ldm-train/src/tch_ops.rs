//! The tch interpretation of the networks: tensors with autograd on CPU or CUDA; parameters
//! live in a `VarStore` under their hierarchical names (the safetensors checkpoint keys).

use std::collections::HashMap;

use ldm_nn::ops::Result;
use ldm_nn::quant::ActivationRanges;
use ldm_nn::{Dim, Init, NnError, Ops};
use tch::{nn, Device, Kind, Tensor};

pub struct TchOps {
    vs: nn::VarStore,
    /// Parameters by full name (`VarStore::variables` copies its map on every call).
    params: HashMap<String, Tensor>,
    /// When set, asking for a parameter that does not exist yet is an error (inference on a
    /// loaded checkpoint must not silently initialise missing weights).
    frozen: bool,
    /// While calibrating: the input range of every convolution and linear layer.
    observed: Option<Observer>,
}

/// Records layer inputs, finding each layer by its weight's storage.
struct Observer {
    names: HashMap<usize, String>,
    ranges: ActivationRanges,
}

fn backend(e: tch::TchError) -> NnError {
    NnError::Backend(e.to_string())
}

impl TchOps {
    pub fn new(device: Device) -> Self {
        Self {
            vs: nn::VarStore::new(device),
            params: HashMap::new(),
            frozen: false,
            observed: None,
        }
    }

    /// From now on, records the range of the input of every convolution and linear layer
    /// (for int8 export), until [`TchOps::take_ranges`].
    pub fn observe_layer_inputs(&mut self) {
        let names = self
            .params
            .iter()
            .map(|(name, t)| (t.data_ptr() as usize, name.clone()))
            .collect();
        self.observed = Some(Observer {
            names,
            ranges: ActivationRanges::default(),
        });
    }

    /// The ranges recorded since [`TchOps::observe_layer_inputs`]; recording stops.
    pub fn take_ranges(&mut self) -> Option<ActivationRanges> {
        self.observed.take().map(|o| o.ranges)
    }

    fn observe(&mut self, x: &Tensor, weight: &Tensor) -> Result<()> {
        let Some(observer) = self.observed.as_mut() else {
            return Ok(());
        };
        if let Some(name) = observer.names.get(&(weight.data_ptr() as usize)) {
            let min = x
                .f_min()
                .and_then(|t| t.f_double_value(&[]))
                .map_err(backend)?;
            let max = x
                .f_max()
                .and_then(|t| t.f_double_value(&[]))
                .map_err(backend)?;
            observer.ranges.observe(name, min as f32, max as f32);
        }
        Ok(())
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// Refuse to create parameters from now on.
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    /// Installs loaded weights as trainable parameters under their names; the networks then
    /// find them instead of initialising new ones. Call before the first forward.
    pub fn load_params(&mut self, weights: Vec<(String, Tensor)>) -> Result<()> {
        for (name, value) in weights {
            let (parent, leaf) = self.parent_path(&name);
            let t = parent
                .f_var_copy(leaf, &value.to_device(self.device()))
                .map_err(backend)?;
            self.params.insert(name, t);
        }
        Ok(())
    }

    /// The VarStore path of a dotted name's parent, and the leaf name.
    fn parent_path<'a>(&self, name: &'a str) -> (nn::Path<'_>, &'a str) {
        let (parents, leaf) = name.rsplit_once('.').unwrap_or(("", name));
        let mut path = self.vs.root();
        for part in parents.split('.').filter(|p| !p.is_empty()) {
            path = path / part;
        }
        (path, leaf)
    }

    pub fn params(&self) -> &HashMap<String, Tensor> {
        &self.params
    }
}

impl Ops for TchOps {
    type T = Tensor;

    fn alias(&self, x: &Tensor) -> Tensor {
        x.shallow_clone()
    }

    fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        if let Some(t) = self.params.get(name) {
            if t.size() != dims {
                return Err(NnError::Param {
                    name: name.to_string(),
                    message: format!("asked for shape {shape:?}, but it holds {:?}", t.size()),
                });
            }
            return Ok(t.shallow_clone());
        }
        if self.frozen {
            return Err(NnError::Param {
                name: name.to_string(),
                message: "missing from the loaded weights".into(),
            });
        }
        let init = match init {
            Init::Zeros => nn::Init::Const(0.0),
            Init::Ones => nn::Init::Const(1.0),
            Init::FanIn(fan_in) => {
                let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                }
            }
            Init::Normal(stdev) => nn::Init::Randn { mean: 0.0, stdev },
        };
        // VarStore paths use '.' as their separator: walk down to the leaf's parent.
        let (path, leaf) = self.parent_path(name);
        let t = path.f_var(leaf, &dims, init).map_err(backend)?;
        self.params.insert(name.to_string(), t.shallow_clone());
        Ok(t)
    }

    fn constant(&mut self, values: &[f32], shape: &[usize]) -> Result<Tensor> {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        Tensor::from_slice(values)
            .f_reshape(dims)
            .map_err(backend)?
            .f_to_device(self.device())
            .map_err(backend)
    }

    fn conv2d(
        &mut self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        self.observe(x, w)?;
        let (s, p) = (stride as i64, padding as i64);
        x.f_conv2d(w, b, [s, s], [p, p], [1, 1], 1).map_err(backend)
    }

    fn pad2d(&mut self, x: &Tensor, [l, r, t, b]: [usize; 4]) -> Result<Tensor> {
        x.f_constant_pad_nd([l as i64, r as i64, t as i64, b as i64])
            .map_err(backend)
    }

    fn matmul(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        a.f_matmul(b).map_err(backend)
    }
    fn add(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        a.f_add(b).map_err(backend)
    }
    fn sub(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        a.f_sub(b).map_err(backend)
    }
    fn mul(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        a.f_mul(b).map_err(backend)
    }
    fn scale(&mut self, x: &Tensor, factor: f32) -> Result<Tensor> {
        x.f_mul_scalar(factor as f64).map_err(backend)
    }
    fn exp(&mut self, x: &Tensor) -> Result<Tensor> {
        x.f_exp().map_err(backend)
    }
    fn sin(&mut self, x: &Tensor) -> Result<Tensor> {
        x.f_sin().map_err(backend)
    }
    fn cos(&mut self, x: &Tensor) -> Result<Tensor> {
        x.f_cos().map_err(backend)
    }
    fn erf(&mut self, x: &Tensor) -> Result<Tensor> {
        x.f_erf().map_err(backend)
    }
    fn sigmoid(&mut self, x: &Tensor) -> Result<Tensor> {
        x.f_sigmoid().map_err(backend)
    }
    fn clamp(&mut self, x: &Tensor, min: f32, max: f32) -> Result<Tensor> {
        x.f_clamp(min as f64, max as f64).map_err(backend)
    }
    fn softmax(&mut self, x: &Tensor) -> Result<Tensor> {
        x.f_softmax(-1, Kind::Float).map_err(backend)
    }

    fn group_norm(
        &mut self,
        x: &Tensor,
        groups: usize,
        w: &Tensor,
        b: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        let channels = x.size().get(1).copied().unwrap_or(0);
        if groups == 0 || channels % groups as i64 != 0 {
            return Err(NnError::Shape {
                op: "group_norm",
                message: format!("{channels} channels do not split into {groups} groups"),
            });
        }
        x.f_group_norm(groups as i64, Some(w), Some(b), eps, true)
            .map_err(backend)
    }

    fn layer_norm(&mut self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
        let d = *x.size().last().unwrap_or(&0);
        x.f_layer_norm([d], Some(w), Some(b), eps, true)
            .map_err(backend)
    }

    fn reshape(&mut self, x: &Tensor, dims: &[Dim]) -> Result<Tensor> {
        let size = x.size();
        let target = dims
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Dim::Keep => size.get(i).copied().ok_or_else(|| NnError::Shape {
                    op: "reshape",
                    message: format!("Keep at axis {i} of {size:?}"),
                }),
                Dim::Infer => Ok(-1),
                Dim::Fixed(n) => Ok(*n as i64),
            })
            .collect::<Result<Vec<i64>>>()?;
        x.f_reshape(target).map_err(backend)
    }

    fn reshape_like(&mut self, x: &Tensor, like: &Tensor) -> Result<Tensor> {
        x.f_reshape(like.size()).map_err(backend)
    }

    fn permute(&mut self, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
        let perm: Vec<i64> = perm.iter().map(|&p| p as i64).collect();
        x.f_permute(perm).map_err(backend)
    }

    fn concat(&mut self, xs: &[&Tensor], axis: usize) -> Result<Tensor> {
        Tensor::f_cat(xs, axis as i64).map_err(backend)
    }

    fn narrow(&mut self, x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        x.f_narrow(axis as i64, start as i64, len as i64)
            .map_err(backend)
    }

    fn upsample2x(&mut self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
        x.f_upsample_nearest2d([2 * h, 2 * w], None, None)
            .map_err(backend)
    }

    fn avg_pool2x(&mut self, x: &Tensor) -> Result<Tensor> {
        x.f_avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None)
            .map_err(backend)
    }

    fn coordinate_grid(&mut self, like: &Tensor) -> Result<Tensor> {
        let size = like.size();
        let [.., h, w] = size[..] else {
            return Err(NnError::Shape {
                op: "coordinate_grid",
                message: format!("{size:?} has no two spatial axes"),
            });
        };
        // (2i + 1) / n - 1: the centres of n equal cells of (-1, 1).
        let axis = |n: i64| {
            Tensor::f_arange(n, (Kind::Float, like.device()))
                .map(|i| (i * 2.0 + 1.0) / n as f64 - 1.0)
                .map_err(backend)
        };
        let xs = axis(w)?.view([1, 1, 1, w]).expand([1, 1, h, w], false);
        let ys = axis(h)?.view([1, 1, h, 1]).expand([1, 1, h, w], false);
        Tensor::f_cat(&[xs, ys], 1).map_err(backend)
    }

    fn embedding(&mut self, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
        Tensor::f_embedding(table, ids, -1, false, false).map_err(backend)
    }

    fn argmin(&mut self, x: &Tensor) -> Result<Tensor> {
        x.f_argmin(-1, false).map_err(backend)
    }

    fn to_float(&mut self, x: &Tensor) -> Result<Tensor> {
        x.f_to_kind(Kind::Float).map_err(backend)
    }

    fn sum_squares(&mut self, x: &Tensor) -> Result<Tensor> {
        x.f_square()
            .and_then(|s| s.f_sum_dim_intlist([-1i64].as_slice(), true, Kind::Float))
            .map_err(backend)
    }

    fn straight_through(&mut self, value: &Tensor, gradient_to: &Tensor) -> Result<Tensor> {
        let delta = value.f_sub(gradient_to).map_err(backend)?.detach();
        gradient_to.f_add(&delta).map_err(backend)
    }

    fn linear(&mut self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        self.observe(x, w)?;
        x.f_linear(w, b).map_err(backend)
    }
}
