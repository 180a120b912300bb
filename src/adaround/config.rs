//! AdaRound's settings: qairt-quantizer's AdaRound YAML keys that make sense without Python.

use crate::encoding::Bitwidth;
use crate::quantizer::CalibrationMethod;

use super::Hyperparameters;

/// What `--config adaround.yaml` (or a target's `adaround` table) sets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AdaroundConfig {
    /// Calibration samples AdaRound reads, the first ones of the input list (`None`: all).
    pub num_batches: Option<usize>,
    /// Adam steps per layer (AIMET's default, 10000).
    pub num_iterations: usize,
    /// Recorded in every key. The optimization reads every selected sample at every step, so
    /// nothing in it is random: the seed changes no result.
    pub seed: u64,
    /// `default_param_bw`: the weight bitwidth of AdaRounded layers (`None`: the target's).
    pub default_param_bw: Option<Bitwidth>,
    /// `param_bw_override_list`: per weight tensor, its bitwidth.
    pub param_bw_override_list: Vec<(String, Bitwidth)>,
    /// `ignore_quant_ops_list`: layers left at nearest rounding, by node or output name.
    pub ignore_quant_ops_list: Vec<String>,
    /// `default_quant_scheme` (`tf` min-max, `tf_enhanced` SQNR): the weight range the frozen
    /// encodings come from (`None`: the target's parameter calibration).
    pub default_quant_scheme: Option<CalibrationMethod>,
}

impl Default for AdaroundConfig {
    fn default() -> Self {
        AdaroundConfig {
            num_batches: None,
            num_iterations: 10_000,
            seed: 0,
            default_param_bw: None,
            param_bw_override_list: Vec::new(),
            ignore_quant_ops_list: Vec::new(),
            default_quant_scheme: None,
        }
    }
}

impl AdaroundConfig {
    /// The optimizer's hyperparameters: AIMET's, with this config's iteration count.
    pub fn hyperparameters(&self) -> Hyperparameters {
        Hyperparameters {
            num_iterations: self.num_iterations,
            ..Hyperparameters::default()
        }
    }
}

/// The weight bitwidths AdaRound accepts, as AIMET does: 4 bits and more, up to 16.
pub const BITWIDTHS: std::ops::RangeInclusive<u32> = 4..=16;

/// The keys of the config's top level, and of `optional_adaround_args`.
pub const TOP_KEYS: [&str; 4] = [
    "num_batches",
    "num_iterations",
    "seed",
    "optional_adaround_args",
];

/// The keys of `optional_adaround_args`.
pub const OPTIONAL_KEYS: [&str; 4] = [
    "default_param_bw",
    "param_bw_override_list",
    "ignore_quant_ops_list",
    "default_quant_scheme",
];

/// qairt-quantizer's keys that name Python code; the input list replaces them.
pub const CALLBACK_KEYS: [&str; 2] = ["dataloader_callback", "dataloader_kwargs"];

/// `default_quant_scheme` as AIMET spells it (`tf`, `tf_enhanced`, with or without the
/// `QuantScheme.` and `post_training_` prefixes): the weight range's calibration method.
pub fn quant_scheme(name: &str) -> Option<CalibrationMethod> {
    match name.trim_start_matches("QuantScheme.") {
        "tf" | "post_training_tf" => Some(CalibrationMethod::MinMax),
        "tf_enhanced" | "post_training_tf_enhanced" => Some(CalibrationMethod::Sqnr),
        _ => None,
    }
}
