//! The calibration pass: one sample through the float model, every activation reduced to
//! statistics on the spot, and the deterministic merge of many samples' statistics.

use crate::calib::{CalibError, LoadedSample};
use crate::encoding::tensor::{ChannelLayout, TensorEncodingError};
use crate::encoding::{Encoding, TensorEncoding};
use crate::graph::{Graph, Role};
use crate::manifest::QuantizerSettings;
use crate::onnx::{OnnxError, OnnxModel};
use crate::overrides::Overrides;
use crate::run::{FloatRunner, RunError};
use crate::stats::{StatisticsSettings, TensorStatistics};

use super::tensor::{EncodeError, encode_parameter};

/// Why calibration failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CalibrationError {
    /// A sample could not be read (the diagnostic names the list file and line).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Sample(Box<CalibError>),
    /// The float model failed on a sample.
    #[error("running sample on line {line}: {source}")]
    Run {
        /// Line of the sample in its input list.
        line: usize,
        /// What the runtime said.
        source: RunError,
    },
    /// A weight could not be fake-quantized for calibration.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The model could not be rewritten with fake-quantized weights.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
}

impl From<CalibError> for CalibrationError {
    fn from(error: CalibError) -> Self {
        // Boxed: input-list diagnostics carry the list's text, which would make every
        // `Result` of this module as large as they are.
        CalibrationError::Sample(Box::new(error))
    }
}

/// The statistics of every captured activation over one sample, in the runner's activation
/// order (see [`FloatRunner::activation_names`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SampleStatistics {
    /// One entry per activation.
    pub tensors: Vec<TensorStatistics>,
}

/// Runs one sample and reduces each activation to statistics as soon as it is produced;
/// nothing of the activation is kept, so memory does not grow with the number of samples.
pub fn sample_statistics(
    runner: &FloatRunner,
    sample: &LoadedSample,
    settings: StatisticsSettings,
) -> Result<SampleStatistics, CalibrationError> {
    let mut tensors = vec![TensorStatistics::new(settings); runner.activation_names().len()];
    runner
        .run(&sample.tensors, |index, data, _shape| {
            tensors[index].observe(data);
        })
        .map_err(|source| CalibrationError::Run {
            line: sample.line,
            source,
        })?;
    Ok(SampleStatistics { tensors })
}

/// Folds `next` into `total`, tensor by tensor. Merging is associative and exact, so any
/// grouping of samples merged in list order gives the same bits.
pub fn merge_statistics(total: &mut SampleStatistics, next: &SampleStatistics) {
    if total.tensors.is_empty() {
        total.tensors = next.tensors.clone();
        return;
    }
    for (t, n) in total.tensors.iter_mut().zip(&next.tensors) {
        t.merge(n);
    }
}

/// The model to calibrate with: `model` itself, or — when the settings ask to gather
/// statistics with quantized weights, as AIMET does — a copy whose weights are replaced by
/// their fake-quantized values under the target's weight encodings (overrides included).
pub fn calibration_model(
    model: &OnnxModel,
    graph: &Graph,
    overrides: &Overrides,
    settings: &QuantizerSettings,
) -> Result<Option<OnnxModel>, CalibrationError> {
    if !settings.calibrate_with_quantized_weights {
        return Ok(None);
    }
    let mut quantized = model.clone();
    for tensor in graph.float_parameters() {
        // The parameters the target quantizes in its ops (AIMET's parameter quantizers):
        // weights and the batch-norm scale.
        let quantized_in_op = matches!(tensor.role, Role::Weight { .. } | Role::BatchNormScale);
        if !quantized_in_op || !tensor.rule.is_encoded() {
            continue;
        }
        let name = tensor.name.as_str();
        let Some(data) = graph.parameter(name) else {
            continue;
        };
        let Some(values) = data.as_f32() else {
            continue;
        };
        let (encoding, _) =
            encode_parameter(tensor, values, &data.shape, overrides.get(name), settings)?;
        let values = aimet_fake_quantize(values, &data.shape, &encoding).map_err(|e| {
            EncodeError::Override {
                tensor: name.to_string(),
                message: e.to_string(),
            }
        })?;
        quantized.replace_parameter_f32(name, &values)?;
    }
    Ok(Some(quantized))
}

/// Quantize-dequantize of a parameter the way AIMET's parameter quantizers do it while
/// calibrating: the scale is a float32 value, `x / scale` is rounded half away from zero, and
/// the integer is clamped to the grid. The bulk kernels round half to even on a float32
/// reciprocal instead; on a weight that lands within an ulp of a half step the two disagree,
/// and one flipped weight moves a downstream activation range by far more than the 1e-4 this
/// mode promises against AIMET.
fn aimet_fake_quantize(
    values: &[f32],
    shape: &[usize],
    encoding: &TensorEncoding,
) -> Result<Vec<f32>, TensorEncodingError> {
    let one = |x: f32, e: &Encoding| {
        let scale = f64::from(e.scale as f32);
        let (low, high) = (e.offset as f64, (e.offset as f64) + e.bitwidth.steps());
        let q = (f64::from(x) / scale).round().clamp(low, high);
        (q * scale) as f32
    };
    match encoding {
        TensorEncoding::PerTensor(e) => Ok(values.iter().map(|&x| one(x, e)).collect()),
        TensorEncoding::PerChannel { axis, channels } => {
            let layout = ChannelLayout::new(shape, *axis, values.len())?;
            if layout.channels != channels.len() {
                return Err(TensorEncodingError::ChannelCount {
                    expected: layout.channels,
                    actual: channels.len(),
                });
            }
            let mut out = Vec::with_capacity(values.len());
            if layout.channels > 0 && layout.inner > 0 {
                for block in values.chunks_exact(layout.channels * layout.inner) {
                    for (e, run) in channels.iter().zip(block.chunks_exact(layout.inner)) {
                        out.extend(run.iter().map(|&x| one(x, e)));
                    }
                }
            }
            Ok(out)
        }
        TensorEncoding::Float { .. } => Ok(values.to_vec()),
    }
}
