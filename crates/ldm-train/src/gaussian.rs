//! The KL autoencoder's posterior q(z|x) = N(mean, exp(logvar)), from the encoder's moments.

use tch::Tensor;

/// Splits [B, 2c, h, w] moments into (mean, logvar).
pub fn split_moments(moments: &Tensor) -> (Tensor, Tensor) {
    let c = moments.size()[1] / 2;
    (moments.narrow(1, 0, c), moments.narrow(1, c, c))
}

/// The posterior's mode: its mean.
pub fn mode(moments: &Tensor) -> Tensor {
    split_moments(moments).0
}

/// A reparameterised sample mean + exp(logvar / 2) · ε, differentiable in the moments.
pub fn sample(moments: &Tensor) -> Tensor {
    let (mean, logvar) = split_moments(moments);
    let std = (logvar * 0.5).exp();
    &mean + std * mean.randn_like()
}
