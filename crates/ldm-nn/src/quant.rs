//! Post-training int8 quantisation of convolutions and linear layers: the calibration (the
//! range of each layer's input, as sampling met it) and the arithmetic both sides share.
//!
//! Activations are affine u8 (one scale and zero point per layer input, from its calibrated
//! range); weights are symmetric per output channel, stored as u8 around the zero point 128
//! (values 1..=255), the form every engine's `ConvInteger` and `MatMulInteger` take. The
//! integer product's per-channel rescaling then runs in f32 after it.

use std::collections::BTreeMap;

/// The zero point of every quantised weight.
pub const WEIGHT_ZERO_POINT: u8 = 128;

/// The smallest and largest input of every quantised layer, keyed by the parameter name of
/// the layer's weight (the same name in the checkpoint and in the ONNX graph).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActivationRanges {
    ranges: BTreeMap<String, (f32, f32)>,
}

impl ActivationRanges {
    /// Widens the range of `weight`'s input to hold `min` and `max`.
    pub fn observe(&mut self, weight: &str, min: f32, max: f32) {
        let entry = self
            .ranges
            .entry(weight.to_string())
            .or_insert((f32::INFINITY, f32::NEG_INFINITY));
        entry.0 = entry.0.min(min);
        entry.1 = entry.1.max(max);
    }

    /// The range of `weight`'s input, when calibration met that layer.
    pub fn get(&self, weight: &str) -> Option<(f32, f32)> {
        self.ranges.get(weight).copied()
    }

    /// Layers calibrated.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The first layer whose range is not a pair of finite numbers (a network that produced
    /// NaN or infinity while calibrating).
    pub fn non_finite(&self) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(_, (lo, hi))| !lo.is_finite() || !hi.is_finite())
            .map(|(name, _)| name.as_str())
    }
}

/// Scale and zero point of u8 activations covering `[min, max]`, widened to hold 0 (so
/// that zero padding is exact).
pub fn activation_qparams(min: f32, max: f32) -> (f32, u8) {
    let (lo, hi) = (min.min(0.0), max.max(0.0));
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let zero_point = (-lo / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zero_point)
}

/// Weights laid out with `channels` rows of equal length (output channel first), quantised
/// symmetrically per row: the u8 values (zero point [`WEIGHT_ZERO_POINT`]) and each row's
/// scale. A row of zeros gets scale 1.
pub fn quantize_weights(data: &[f32], channels: usize) -> (Vec<u8>, Vec<f32>) {
    let per_row = data.len() / channels.max(1);
    let mut values = Vec::with_capacity(data.len());
    let mut scales = Vec::with_capacity(channels);
    for row in data.chunks(per_row.max(1)) {
        let largest = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
        values.extend(row.iter().map(|v| {
            ((v / scale).round().clamp(-127.0, 127.0) as i32 + WEIGHT_ZERO_POINT as i32) as u8
        }));
        scales.push(scale);
    }
    (values, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_cover_their_range_and_zero() {
        let (scale, zp) = activation_qparams(-1.0, 3.0);
        assert!((scale - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(zp, 64);
        // A range above zero is widened down to it.
        let (scale, zp) = activation_qparams(2.0, 5.1);
        assert!((scale - 0.02).abs() < 1e-7 && zp == 0);
        assert_eq!(activation_qparams(0.0, 0.0), (1.0, 0));
    }

    #[test]
    fn weights_round_trip_within_half_a_step_per_row() {
        let data = [0.5, -1.0, 0.25, 0.0, 0.0, 0.0, 4.0, 2.0, -3.0];
        let (values, scales) = quantize_weights(&data, 3);
        assert_eq!(scales, vec![1.0 / 127.0, 1.0, 4.0 / 127.0]);
        assert_eq!(&values[3..6], &[128, 128, 128]);
        for (i, (&q, &w)) in values.iter().zip(&data).enumerate() {
            let back = (q as f32 - 128.0) * scales[i / 3];
            assert!(
                (back - w).abs() <= scales[i / 3] / 2.0 + 1e-6,
                "{i}: {back} vs {w}"
            );
        }
    }

    #[test]
    fn ranges_widen_and_flag_non_finite_layers() {
        let mut ranges = ActivationRanges::default();
        ranges.observe("a.weight", -1.0, 1.0);
        ranges.observe("a.weight", 0.0, 2.0);
        assert_eq!(ranges.get("a.weight"), Some((-1.0, 2.0)));
        assert_eq!(ranges.non_finite(), None);
        ranges.observe("b.weight", f32::NAN, 1.0);
        // NaN loses `min`, so the range stays at its infinite start.
        assert_eq!(ranges.non_finite(), Some("b.weight"));
    }
}
