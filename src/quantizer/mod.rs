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
};
pub use tensor::{
    EncodeError, ModelEncodings, Warning, bias_encoding, bias_partners, encode_activation,
    encode_model, encode_model_fallback, encode_parameter, is_activation_like, parameter_values,
    statistics_settings, word_warnings,
};

use crate::encoding::SymmetricConvention;
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

/// The symmetric rule weights use: AIMET's tighter grid when statistics are gathered with
/// quantized weights (that mode exists to reproduce AIMET's calibration, whose activation
/// ranges depend on exactly how the weights were rounded), the seed's otherwise.
pub fn weight_convention(settings: &QuantizerSettings) -> SymmetricConvention {
    if settings.calibrate_with_quantized_weights {
        SymmetricConvention::Aimet
    } else {
        SymmetricConvention::Seed
    }
}
