//! Regularisation losses of the first stage (paper 3.1, G).

use tch::{Kind, Tensor};

use crate::gaussian::split_moments;

/// KL divergence of N(mean, exp(logvar)) from N(0, 1), summed over latent elements and
/// averaged over the batch; `moments` is the encoder's [B, 2c, h, w] (mean, then log-variance).
pub fn kl_divergence(moments: &Tensor) -> Tensor {
    let (mean, logvar) = split_moments(moments);
    let per_sample = (mean.square() + logvar.exp() - 1.0 - &logvar).sum_dim_intlist(
        [1i64, 2, 3].as_slice(),
        false,
        Kind::Float,
    ) * 0.5;
    per_sample.mean(Kind::Float)
}

/// VQ losses (van den Oord et al.): the codebook term ||sg[z] - e||² moves codes to the
/// encoder outputs, the commitment term β·||z - sg[e]||² keeps the encoder near its codes.
pub fn vq_losses(z: &Tensor, codes: &Tensor, beta: f64) -> (Tensor, Tensor) {
    let codebook = codes.mse_loss(&z.detach(), tch::Reduction::Mean);
    let commitment = z.mse_loss(&codes.detach(), tch::Reduction::Mean) * beta;
    (codebook, commitment)
}

/// Codebook perplexity exp(H(usage)) of the chosen indices: n when all n codes are used
/// evenly, 1 when one code takes every position.
pub fn perplexity(indices: &Tensor, codebook_size: i64) -> f64 {
    let counts = indices
        .flatten(0, -1)
        .bincount::<Tensor>(None, codebook_size)
        .to_kind(Kind::Float);
    let p = &counts / counts.sum(Kind::Float);
    let entropy = -(&p * (&p + 1e-10).log()).sum(Kind::Float);
    entropy.exp().double_value(&[])
}
