//! DDIM sampling on tch with classifier-free guidance, for the sample grids of diffusion
//! training (the runtime crate samples exported bundles; both use `ldm_core`'s update).

use ldm_core::{ddim_step, ddim_timesteps, NoiseSchedule};
use tch::{Device, Kind, Tensor};

use crate::denoiser::{Condition, Denoiser};
use crate::TrainError;

/// Stacks two conditions of the same kind along the batch axis.
fn stack(a: &Condition, b: &Condition) -> Condition {
    match (a, b) {
        (Condition::Tokens(x), Condition::Tokens(y)) => Condition::Tokens(Tensor::cat(&[x, y], 0)),
        (Condition::Classes(x), Condition::Classes(y)) => {
            Condition::Classes(Tensor::cat(&[x, y], 0))
        }
        (Condition::Concat(x), Condition::Concat(y)) => Condition::Concat(Tensor::cat(&[x, y], 0)),
        _ => Condition::None,
    }
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .flatten(0, -1)
        .try_into()
        .expect("f32 tensor")
}

/// Samples latents of `shape` (scaled, as the UNet sees them) with `steps` DDIM steps of the
/// given `eta` (0: deterministic; 1: DDPM's variance, fresh noise at every step). With
/// `unconditional` and `guidance` != 1, each step predicts eps_u + guidance · (eps_c - eps_u),
/// both halves in one batched UNet call.
#[allow(clippy::too_many_arguments)]
pub fn ddim_sample(
    model: &mut Denoiser,
    schedule: &NoiseSchedule,
    shape: [i64; 4],
    condition: &Condition,
    unconditional: Option<&Condition>,
    guidance: f64,
    steps: usize,
    eta: f64,
    seed: i64,
    device: Device,
) -> Result<Tensor, TrainError> {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(seed);
    let mut x = Tensor::randn(shape, (Kind::Float, Device::Cpu)).to_device(device);
    let guided = unconditional.filter(|_| guidance != 1.0);
    let both = guided.map(|u| stack(u, condition));
    let timesteps = ddim_timesteps(schedule, steps);
    for (i, &t) in timesteps.iter().enumerate().rev() {
        let t_prev = i.checked_sub(1).map(|p| timesteps[p]);
        let eps = match &both {
            Some(both) => {
                let xx = Tensor::cat(&[&x, &x], 0);
                let tt = Tensor::full([2 * shape[0]], t as i64, (Kind::Int64, device));
                let out = model.forward(&xx, &tt, both)?;
                let halves = out.chunk(2, 0);
                &halves[0] + (&halves[1] - &halves[0]) * guidance
            }
            None => {
                let tt = Tensor::full([shape[0]], t as i64, (Kind::Int64, device));
                model.forward(&x, &tt, condition)?
            }
        };
        let noise = (eta > 0.0).then(|| to_vec(&Tensor::randn(shape, (Kind::Float, Device::Cpu))));
        let next = ddim_step(
            schedule,
            &to_vec(&x),
            &to_vec(&eps),
            t,
            t_prev,
            eta,
            noise.as_deref(),
        );
        x = Tensor::from_slice(&next).reshape(shape).to_device(device);
    }
    Ok(x)
}
