//! The resolved pipeline: plain, checked data that the rest of the crate consumes.
//!
//! Everything here is already valid: references point at declared items, paths are joined to the
//! manifest's folder, defaults and `extends` are applied, and the backend can run what a target
//! asks for. These types carry no spans and do no IO.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::encoding::{Bitwidth, Schema};

use super::Backend;

pub use crate::encoding::FloatBitwidth;
pub use crate::export::aimet::EncodingVersion;

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

/// A manifest after resolution: what to build, for which targets, from which files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedPipeline {
    /// The manifest file (absolute).
    pub manifest_path: PathBuf,
    /// The manifest's folder (absolute): every relative path in it is joined to this.
    pub root: PathBuf,
    /// `[pipeline] name`; defaults to the manifest folder's name.
    pub name: String,
    /// `[pipeline] out_dir`, joined to `root`; defaults to `root/quant-out`.
    pub out_dir: PathBuf,
    /// `[pipeline] encoding_version`; defaults to 0.6.1.
    pub encoding_version: EncodingVersion,
    /// `[models.NAME]`, by name.
    pub models: BTreeMap<String, ResolvedModel>,
    /// `[calibration.NAME]`, by name.
    pub calibration: BTreeMap<String, ResolvedCalibration>,
    /// `[overrides.NAME]`, by name.
    pub overrides: BTreeMap<String, ResolvedOverrides>,
    /// `[eval.NAME]`, by name.
    pub eval: BTreeMap<String, ResolvedEval>,
    /// `[targets.NAME]` with `extends` applied, by name.
    pub targets: BTreeMap<String, ResolvedTarget>,
    /// `[workspace] members` patterns, as written (see [`super::discover`]).
    pub workspace_members: Vec<String>,
}

/// One ONNX model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedModel {
    /// The model's name in the manifest (also its output folder name).
    pub name: String,
    /// The `.onnx` file.
    pub path: PathBuf,
    /// Fixed shapes for inputs with dynamic dims, by input name.
    pub input_dims: BTreeMap<String, Vec<u64>>,
}

/// One calibration set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedCalibration {
    /// The set's name in the manifest.
    pub name: String,
    /// The seed's `--input_list` file.
    pub input_list: PathBuf,
}

/// One overrides file (AIMET encodings JSON).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedOverrides {
    /// The overrides' name in the manifest.
    pub name: String,
    /// The JSON file.
    pub path: PathBuf,
}

/// One evaluation set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedEval {
    /// The set's name in the manifest.
    pub name: String,
    /// Input list of the evaluation samples.
    pub input_list: PathBuf,
    /// One integer class per line, in input-list order, when given.
    pub labels: Option<PathBuf>,
}

/// One target: which models to build for which backend, and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedTarget {
    /// The target's name (also its output folder name).
    pub name: String,
    /// The backend it builds for.
    pub backend: Backend,
    /// Names of the models it builds, sorted; all declared models unless `models` was given.
    pub models: Vec<String>,
    /// Name of the eval set it is evaluated on, if any.
    pub evaluate: Option<String>,
    /// The chain of targets it extends, nearest first (empty when it extends none).
    pub extends: Vec<String>,
    /// Float or quantized, with the effective settings.
    pub precision: Precision,
}

/// What a target produces: a float model, or a quantized one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Precision {
    /// The seed's non-quantized mode (cpu, gpu): no calibration, every tensor float.
    Float {
        /// FP16 or FP32 for the whole model.
        float_bitwidth: FloatBitwidth,
    },
    /// The seed's quantized mode (dsp, htp, hta).
    Quantized(QuantizerSettings),
}

/// The effective quantizer settings of a quantized target, defaults applied (qairt-quantizer's:
/// 8/8/8, min-max, asymmetric, per-tensor).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuantizerSettings {
    /// Name of the calibration set.
    pub calibration: String,
    /// Names of the overrides, in the order given (later ones win on the same tensor).
    pub overrides: Vec<String>,
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
    /// `ignore_quantization_overrides`: build as if `overrides` were empty.
    pub ignore_quantization_overrides: bool,
    /// `calibrate_with_quantized_weights`: gather activation statistics with the weights
    /// already fake-quantized (with AIMET's symmetric weight rule), as AIMET does. Default `false`.
    pub calibrate_with_quantized_weights: bool,
}

impl QuantizerSettings {
    /// Overrides that actually apply (none when `ignore_quantization_overrides`).
    pub fn effective_overrides(&self) -> &[String] {
        if self.ignore_quantization_overrides {
            &[]
        } else {
            &self.overrides
        }
    }
}

impl ResolvedTarget {
    /// The quantizer settings, for quantized targets.
    pub fn quantizer(&self) -> Option<&QuantizerSettings> {
        match &self.precision {
            Precision::Quantized(settings) => Some(settings),
            Precision::Float { .. } => None,
        }
    }
}
