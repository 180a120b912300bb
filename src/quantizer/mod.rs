//! The quantizer: per-tensor decisions that turn statistics, parameter values, overrides and a
//! target's settings into each tensor's encoding, and the calibration pass that gathers the
//! statistics.
//!
//! It owns the policy qairt-quantizer applies between "a range" and "an encodings file": which
//! bitwidth and schema a tensor gets, per-channel and per-row weights, 8-bit and int32 biases,
//! overrides winning over calibration, shared encodings of data-movement outputs, and running
//! samples through the float model with weights optionally fake-quantized first.
//!
//! It must not do IO beyond what it is handed (bytes, loaded samples) and must not print: it
//! returns values and [`Warning`]s; the engine caches them and the CLI renders them. Each
//! function computes one tensor (or one sample) so the build engine can memoize at that grain.

mod calibrate;
pub mod precision;
mod settings;
mod tensor;

pub use calibrate::{
    CalibrationError, SampleStatistics, calibration_model, fake_quantized_weights,
    merge_statistics, non_finite_inputs, sample_statistics,
};
pub use settings::{
    CalibrationMethod, FloatBiasBitwidth, LegacyQuantizer, Percentile, QuantizerSettings,
    QuantsimConfigSetting,
};
pub use tensor::{
    EncodeError, ModelEncodings, Warning, bias_encoding, bias_partners, encode_activation,
    encode_model, encode_model_fallback, encode_parameter, is_activation_like, parameter_values,
    statistics_settings, word_warnings,
};

use crate::encoding::{Bitwidth, SymmetricConvention};
use crate::stats::Calibration;

/// The statistics strategy for a manifest calibration method.
pub fn calibration(method: CalibrationMethod, settings: &QuantizerSettings) -> Calibration {
    match method {
        CalibrationMethod::MinMax => Calibration::MinMax,
        CalibrationMethod::Sqnr => Calibration::Sqnr,
        CalibrationMethod::Percentile => Calibration::Percentile(settings.percentile.value()),
        CalibrationMethod::Mse => Calibration::Mse,
        CalibrationMethod::Entropy => Calibration::Entropy,
        CalibrationMethod::Adjusted => Calibration::Adjusted,
    }
}

/// The widest bitwidth that gets the low-bit symmetric grid by default (see
/// [`weight_convention`]).
pub const LOW_BIT_MAX: u32 = 4;

/// The symmetric rule for a tensor of `bitwidth`: AIMET's grid, which also uses the lowest
/// signed level (`[-2^(bw-1), 2^(bw-1)-1]` tight on whichever side binds), when statistics are
/// gathered with quantized weights (that mode exists to reproduce AIMET's calibration, whose
/// activation ranges depend on exactly how the weights were rounded) and at
/// [`LOW_BIT_MAX`] bits or fewer; the seed's `absmax / (2^(bw-1)-1)` otherwise. The seed's grid
/// never reaches its lowest level, one of 16 at 4 bits (one of 256 at 8): measured on the cls
/// fixture at W4A8 per-channel, the low-bit grid takes onnxruntime's top-1 from 333 to 375 of
/// 400 (`benches/low_bit.sh`, `book/src/quantize.md`), while 8-bit encodings stay the seed's.
pub fn weight_convention(settings: &QuantizerSettings, bitwidth: Bitwidth) -> SymmetricConvention {
    if settings.calibrate_with_quantized_weights || bitwidth.bits() <= LOW_BIT_MAX {
        SymmetricConvention::Aimet
    } else {
        SymmetricConvention::Seed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{Encoding, Schema};

    #[test]
    fn low_bit_weights_use_the_full_signed_grid() {
        let plain = QuantizerSettings::default();
        let b4 = Bitwidth::new(4).unwrap();
        assert_eq!(weight_convention(&plain, b4), SymmetricConvention::Aimet);
        assert_eq!(
            weight_convention(&plain, Bitwidth::new(3).unwrap()),
            SymmetricConvention::Aimet
        );
        assert_eq!(
            weight_convention(&plain, Bitwidth::B8),
            SymmetricConvention::Seed
        );
        let quantized_weights = QuantizerSettings {
            calibrate_with_quantized_weights: true,
            ..QuantizerSettings::default()
        };
        assert_eq!(
            weight_convention(&quantized_weights, Bitwidth::B8),
            SymmetricConvention::Aimet
        );
        // [-0.8, 0.7] at 4 bits: -0.8 lands on -8 steps of 0.1; the seed's rule spends steps of
        // 0.8 / 7 and never reaches -8.
        let range = |convention| {
            Encoding::from_range_with(-0.8, 0.7, b4, Schema::Symmetric, convention)
                .unwrap()
                .scale
        };
        assert!((range(SymmetricConvention::Aimet) - 0.1).abs() < 1e-12);
        assert!((range(SymmetricConvention::Seed) - 0.8 / 7.0).abs() < 1e-12);
    }
}
