//! The resolved pipeline: plain, checked data that the rest of the crate consumes.
//!
//! Everything here is already valid: references point at declared items, paths are joined to the
//! manifest's folder, defaults and `extends` are applied, and the backend can run what a target
//! asks for. These types carry no spans and do no IO.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::Backend;
use crate::adaround::AdaroundConfig;
use crate::transform::Algorithms;

pub use crate::encoding::FloatBitwidth;
pub use crate::export::aimet::EncodingVersion;
pub use crate::quantizer::{CalibrationMethod, LegacyQuantizer, Percentile, QuantizerSettings};

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
        /// An FP16 model's graph inputs and outputs stay float32, with casts inside
        /// (`keep_io_types`, default true).
        keep_io_types: bool,
    },
    /// The seed's quantized mode (dsp, htp, hta).
    Quantized(Quantization),
}

/// A quantized target's quantization: which calibration set and overrides it reads (by their
/// manifest names), and the quantizer settings they feed.
///
/// The names stay here, outside [`QuantizerSettings`], so nothing keyed on the settings can
/// change when a set is renamed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quantization {
    /// Name of the calibration set; `None` for float fallback (`enable_float_fallback`), where
    /// the overrides give the encodings and every other tensor stays float.
    pub calibration: Option<String>,
    /// Names of the overrides, in the order given (later ones win on the same tensor).
    pub overrides: Vec<String>,
    /// `ignore_quantization_overrides`: build as if `overrides` were empty.
    pub ignore_quantization_overrides: bool,
    /// `algorithms`: the model transforms run before calibration.
    pub algorithms: Algorithms,
    /// `[targets.NAME.adaround]`: AdaRound's settings (defaults when the table is absent),
    /// used when `algorithms` has `adaround`.
    pub adaround: AdaroundConfig,
    /// The settings, defaults applied.
    pub settings: QuantizerSettings,
}

impl Quantization {
    /// Whether the target falls back to float instead of calibrating.
    pub fn float_fallback(&self) -> bool {
        self.calibration.is_none()
    }

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
    /// The quantization, for quantized targets.
    pub fn quantization(&self) -> Option<&Quantization> {
        match &self.precision {
            Precision::Quantized(quantization) => Some(quantization),
            Precision::Float { .. } => None,
        }
    }

    /// The quantizer settings, for quantized targets.
    pub fn quantizer(&self) -> Option<&QuantizerSettings> {
        self.quantization().map(|q| &q.settings)
    }
}
