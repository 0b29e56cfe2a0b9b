//! The patch-based discriminator of the first stage (paper 3.1, G): the PatchGAN of pix2pix
//! (Isola et al. 2017) that the reference `NLayerDiscriminator` uses, judging overlapping
//! patches real or fake. It is a training aid only (never exported), so it is written directly
//! on `tch::nn` rather than over the ops trait.

use tch::nn::{self, ModuleT};
use tch::Tensor;

pub struct PatchDiscriminator {
    net: nn::SequentialT,
}

/// Convolutions start at N(0, 0.02) and BatchNorm scales at N(1, 0.02), as the reference's
/// `weights_init`.
fn conv(p: nn::Path, cin: i64, cout: i64, stride: i64, bias: bool) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding: 1,
        bias,
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, 4, config)
}

fn batch_norm(p: nn::Path, channels: i64) -> nn::BatchNorm {
    let config = nn::BatchNormConfig {
        ws_init: nn::Init::Randn {
            mean: 1.0,
            stdev: 0.02,
        },
        ..Default::default()
    };
    nn::batch_norm2d(p, channels, config)
}

impl PatchDiscriminator {
    /// `layers` stride-2 stages from `channels` filters (doubling, at most 8x), then a
    /// stride-1 stage and a one-channel patch map.
    pub fn new(p: &nn::Path, in_channels: i64, channels: i64, layers: usize) -> Self {
        // LeakyReLU with slope 0.2: max(x, 0.2 x).
        let leaky = |x: &Tensor| x.maximum(&(x * 0.2));
        let mut net = nn::seq_t()
            .add(conv(p / "main" / 0, in_channels, channels, 2, true))
            .add_fn(leaky);
        let mut width = channels;
        let mut index = 2;
        for n in 1..=layers {
            let stride = if n == layers { 1 } else { 2 };
            let next = channels * (1 << n.min(3));
            net = net
                .add(conv(p / "main" / index, width, next, stride, false))
                .add(batch_norm(p / "main" / (index + 1), next))
                .add_fn(leaky);
            width = next;
            index += 3;
        }
        net = net.add(conv(p / "main" / index, width, 1, 1, true));
        Self { net }
    }

    /// The smallest image side `layers` stages take: every stride-2 stage halves it and the
    /// two stride-1 stages (kernel 4, padding 1) each need at least 3 pixels in.
    pub fn smallest_side(layers: usize) -> usize {
        3 << layers.min(16)
    }

    /// Logits per patch, [B, 1, h, w].
    pub fn forward(&self, images: &Tensor, train: bool) -> Tensor {
        self.net.forward_t(images, train)
    }
}

/// The hinge loss of the discriminator: mean(relu(1 - D(real))) + mean(relu(1 + D(fake))),
/// halved as in the reference.
pub fn hinge_d_loss(logits_real: &Tensor, logits_fake: &Tensor) -> Tensor {
    let real = (-logits_real + 1.0).relu().mean(tch::Kind::Float);
    let fake = (logits_fake + 1.0).relu().mean(tch::Kind::Float);
    (real + fake) * 0.5
}
