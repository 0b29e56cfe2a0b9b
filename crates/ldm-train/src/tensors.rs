//! Named-tensor helpers every stage uses: parameters in a fixed order, handles and CPU copies
//! for checkpoints, and image batches as tensors.

use tch::{Device, Tensor};

use crate::TchOps;

/// Named weights of one network.
pub type NamedWeights = Vec<(String, Tensor)>;

/// Parameters sorted by name: a fixed order for the optimiser and the checkpoint.
pub fn sorted_params(ops: &TchOps) -> NamedWeights {
    let mut params: NamedWeights = ops
        .params()
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    params
}

/// Another handle to each tensor (tch tensors are not `Clone`).
pub fn shallow(params: &[(String, Tensor)]) -> NamedWeights {
    params
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect()
}

/// Detached copies on the CPU, as checkpoints store them.
pub fn detached(params: &[(String, Tensor)]) -> NamedWeights {
    params
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu)))
        .collect()
}

/// A batch's images as a [B, 3, H, W] tensor on `device`.
pub fn images_tensor(images: &[f32], shape: [usize; 4], device: Device) -> Tensor {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Tensor::from_slice(images).reshape(dims).to_device(device)
}
