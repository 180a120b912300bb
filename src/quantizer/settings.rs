//! The quantizer's settings: every numeric and policy knob of qairt-quantizer that decides an
//! encoding, with qairt-quantizer's defaults in one place.
//!
//! The manifest and `quant quantize` both resolve into [`QuantizerSettings`]; it holds no
//! manifest names (calibration sets, overrides), so renaming one cannot change a cache key.

use std::fmt;

use crate::encoding::{Bitwidth, FloatBitwidth, Schema};

/// How a quantizer chooses a tensor's range from its statistics.
///
/// The first five are qairt-quantizer's `--*_quantizer_calibration` names; `Adjusted` exists only
/// through the legacy `param_quantizer = "adjusted"` (the seed's "TF Adjusted", weights only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CalibrationMethod {
    /// True min/max (legacy `tf`).
    MinMax,
    /// Range that maximises the signal-to-quantization-noise ratio (legacy `enhanced`).
    Sqnr,
    /// A percentile of the histogram (`percentile_calibration_value`).
    Percentile,
    /// Range that minimises the mean squared error.
    Mse,
    /// Range that minimises the KL divergence of the histogram.
    Entropy,
    /// The seed's TF Adjusted mode for 8-bit weights (legacy `adjusted`).
    Adjusted,
}

impl CalibrationMethod {
    /// The methods `*_quantizer_calibration` accepts, in qairt-quantizer's order.
    pub const NAMED: [CalibrationMethod; 5] = [
        CalibrationMethod::MinMax,
        CalibrationMethod::Sqnr,
        CalibrationMethod::Percentile,
        CalibrationMethod::Mse,
        CalibrationMethod::Entropy,
    ];

    /// The manifest spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            CalibrationMethod::MinMax => "min-max",
            CalibrationMethod::Sqnr => "sqnr",
            CalibrationMethod::Percentile => "percentile",
            CalibrationMethod::Mse => "mse",
            CalibrationMethod::Entropy => "entropy",
            CalibrationMethod::Adjusted => "adjusted",
        }
    }

    /// Whether the method needs a histogram of the tensor (min-max and adjusted need only the
    /// range), so calibration builds histograms only when some target asks for them.
    pub const fn needs_histogram(self) -> bool {
        !matches!(
            self,
            CalibrationMethod::MinMax | CalibrationMethod::Adjusted
        )
    }
}

impl fmt::Display for CalibrationMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The legacy `act_quantizer` / `param_quantizer` modes (`tf`, `enhanced`, `adjusted`,
/// `symmetric`), each a shorthand for a calibration method and a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegacyQuantizer {
    /// min-max, asymmetric.
    Tf,
    /// sqnr, asymmetric.
    Enhanced,
    /// adjusted (8-bit weights only), asymmetric.
    Adjusted,
    /// min-max, symmetric.
    Symmetric,
}

impl LegacyQuantizer {
    /// Every legacy mode.
    pub const ALL: [LegacyQuantizer; 4] = [
        LegacyQuantizer::Tf,
        LegacyQuantizer::Enhanced,
        LegacyQuantizer::Adjusted,
        LegacyQuantizer::Symmetric,
    ];

    /// The legacy spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            LegacyQuantizer::Tf => "tf",
            LegacyQuantizer::Enhanced => "enhanced",
            LegacyQuantizer::Adjusted => "adjusted",
            LegacyQuantizer::Symmetric => "symmetric",
        }
    }

    /// The calibration method and schema this mode stands for.
    pub const fn expand(self) -> (CalibrationMethod, Schema) {
        match self {
            LegacyQuantizer::Tf => (CalibrationMethod::MinMax, Schema::Asymmetric),
            LegacyQuantizer::Enhanced => (CalibrationMethod::Sqnr, Schema::Asymmetric),
            LegacyQuantizer::Adjusted => (CalibrationMethod::Adjusted, Schema::Asymmetric),
            LegacyQuantizer::Symmetric => (CalibrationMethod::MinMax, Schema::Symmetric),
        }
    }
}

/// qairt-quantizer's `--percentile_calibration_value`: a finite percentile in `[90, 100]`.
///
/// Stored as the `f64`'s bits so resolved targets stay `Eq + Hash` (salsa needs both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Percentile(u64);

impl Percentile {
    /// qairt-quantizer's default, 99.99.
    pub const DEFAULT: f64 = 99.99;
    /// Smallest accepted value (qairt-quantizer's lower bound).
    pub const MIN: f64 = 90.0;
    /// Largest accepted value.
    pub const MAX: f64 = 100.0;

    /// Checks `value` lies in `[90, 100]`.
    pub fn new(value: f64) -> Option<Percentile> {
        (Self::MIN..=Self::MAX)
            .contains(&value)
            .then(|| Percentile(value.to_bits()))
    }

    /// The percentile, e.g. `99.99`.
    pub fn value(self) -> f64 {
        f64::from_bits(self.0)
    }
}

impl Default for Percentile {
    fn default() -> Self {
        Percentile(Self::DEFAULT.to_bits())
    }
}

impl fmt::Display for Percentile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.value())
    }
}

/// The settings that decide a quantized model's encodings.
///
/// [`Default`] is qairt-quantizer's: 8-bit activations, weights and biases, min-max calibration,
/// asymmetric schemas, percentile 99.99, per-tensor weights, float weights while calibrating.
/// One default follows the bitwidth instead of a field: symmetric encodings of 4 bits or fewer
/// use the whole signed grid ([`super::weight_convention`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuantizerSettings {
    /// `act_bitwidth` (`act_bw`).
    pub act_bitwidth: Bitwidth,
    /// `weights_bitwidth` (`weight_bw`).
    pub weights_bitwidth: Bitwidth,
    /// `bias_bitwidth` (`bias_bw`): 8 or 32.
    pub bias_bitwidth: Bitwidth,
    /// `float_bitwidth` for tensors the overrides keep float (mixed precision); `None` when not
    /// given, which means FP32 for such tensors.
    pub float_bitwidth: Option<FloatBitwidth>,
    /// `act_quantizer_calibration` (or from legacy `act_quantizer`).
    pub act_calibration: CalibrationMethod,
    /// `param_quantizer_calibration` (or from legacy `param_quantizer`).
    pub param_calibration: CalibrationMethod,
    /// `act_quantizer_schema` (or from legacy `act_quantizer`).
    pub act_schema: Schema,
    /// `param_quantizer_schema` (or from legacy `param_quantizer`).
    pub param_schema: Schema,
    /// `percentile_calibration_value`, used by the percentile method.
    pub percentile: Percentile,
    /// `use_per_channel_quantization`.
    pub per_channel: bool,
    /// `use_per_row_quantization`.
    pub per_row: bool,
    /// `calibrate_with_quantized_weights`: gather activation statistics with the weights
    /// already fake-quantized (with AIMET's symmetric weight rule), as AIMET does.
    pub calibrate_with_quantized_weights: bool,
    /// `float_bias_bitwidth` (`float_bias_bw`).
    pub float_bias_bitwidth: FloatBiasBitwidth,
    /// An AIMET quantsim config deciding quantizer placement (`--quantsim_config`,
    /// `quantsim_config`); `None` for the QNN specification's rules.
    pub quantsim_config: QuantsimConfigSetting,
}

/// The quantsim config a target's encodings follow ([`crate::placement`]).
///
/// Hashed only when given, so the digests of settings without one stay what they were. With
/// one, encodings also follow AIMET's arithmetic where it differs from the specification's
/// (its minimum scale `2^-23` instead of the minimum range).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QuantsimConfigSetting(pub Option<std::sync::Arc<crate::placement::QuantsimConfig>>);

impl std::hash::Hash for QuantsimConfigSetting {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        if let Some(config) = &self.0 {
            "quantsim_config".hash(state);
            config.hash(state);
        }
    }
}

/// `float_bias_bitwidth`: the bitwidth of a float op's bias that has no entry of its own
/// (otherwise it takes its op's overriding bitwidth).
///
/// Hashed only when given, so the settings' digests (and every store key built on them) stay
/// what they were for settings that do not use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FloatBiasBitwidth(pub Option<FloatBitwidth>);

impl std::hash::Hash for FloatBiasBitwidth {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        if let Some(bits) = self.0 {
            bits.hash(state);
        }
    }
}

impl Default for QuantizerSettings {
    fn default() -> Self {
        QuantizerSettings {
            act_bitwidth: Bitwidth::B8,
            weights_bitwidth: Bitwidth::B8,
            bias_bitwidth: Bitwidth::B8,
            float_bitwidth: None,
            act_calibration: CalibrationMethod::MinMax,
            param_calibration: CalibrationMethod::MinMax,
            act_schema: Schema::Asymmetric,
            param_schema: Schema::Asymmetric,
            percentile: Percentile::default(),
            per_channel: false,
            per_row: false,
            calibrate_with_quantized_weights: false,
            float_bias_bitwidth: FloatBiasBitwidth(None),
            quantsim_config: QuantsimConfigSetting(None),
        }
    }
}
