//! Exponential moving average of the weights (the reference `LitEma`): the shadow copy is what
//! sampling and export use.

use tch::Tensor;

pub struct Ema {
    shadow: Vec<(String, Tensor)>,
    decay: f64,
    updates: u64,
}

impl Ema {
    /// Starts the average at the current weights.
    pub fn new(params: &[(String, Tensor)], decay: f64) -> Self {
        let shadow = params
            .iter()
            .map(|(n, p)| (n.clone(), p.detach().copy()))
            .collect();
        Self {
            shadow,
            decay,
            updates: 0,
        }
    }

    /// Moves the average towards `params` (same names, same order as at creation). The decay
    /// warms up as min(decay, (1 + n) / (10 + n)), so early weights do not dominate.
    pub fn update(&mut self, params: &[(String, Tensor)]) {
        self.updates += 1;
        let n = self.updates as f64;
        let decay = self.decay.min((1.0 + n) / (10.0 + n));
        tch::no_grad(|| {
            for ((_, shadow), (_, p)) in self.shadow.iter_mut().zip(params) {
                let _ = shadow.f_lerp_(&p.detach(), 1.0 - decay);
            }
        });
    }

    pub fn weights(&self) -> &[(String, Tensor)] {
        &self.shadow
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Restores a saved average (names and shapes are checked by the checkpoint loader).
    pub fn restore(&mut self, saved: &[(String, Tensor)], updates: u64) -> Result<(), String> {
        for (name, shadow) in &mut self.shadow {
            let t = saved
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| format!("EMA weights lack '{name}'"))?;
            *shadow = t.to_device(shadow.device());
        }
        self.updates = updates;
        Ok(())
    }
}
