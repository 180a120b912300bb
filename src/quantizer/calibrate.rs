//! The calibration pass: one sample through the float model, every activation reduced to
//! statistics on the spot, and the deterministic merge of many samples' statistics.

use super::QuantizerSettings;
use crate::calib::{CalibError, LoadedSample, NonFinite};
use crate::encoding::tensor::{ChannelLayout, TensorEncodingError};
use crate::encoding::{Encoding, TensorEncoding};
use crate::graph::{Graph, Role};
use crate::onnx::{OnnxError, OnnxModel};
use crate::overrides::Overrides;
use crate::run::{FloatRunner, RunError};
use crate::stats::{StatisticsSettings, TensorStatistics};

use super::tensor::{EncodeError, Warning, encode_parameter};

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
/// statistics with quantized weights, as AIMET does — [`fake_quantized_weights`].
pub fn calibration_model(
    model: &OnnxModel,
    graph: &Graph,
    overrides: &Overrides,
    settings: &QuantizerSettings,
) -> Result<Option<OnnxModel>, CalibrationError> {
    if !settings.calibrate_with_quantized_weights {
        return Ok(None);
    }
    fake_quantized_weights(model, graph, overrides, settings).map(Some)
}

/// A copy of `model` (whose IR is `graph`) with every parameter the target quantizes inside
/// its op — weights and the batch-norm scale — replaced by its fake-quantized values under the
/// target's weight encodings (overrides included); everything else, biases among them, is left
/// as it is. The same graph, so tensor names and nodes match `model`'s one for one: what
/// calibrating with quantized weights runs, and the W̃ bias correction compares against W.
pub fn fake_quantized_weights(
    model: &OnnxModel,
    graph: &Graph,
    overrides: &Overrides,
    settings: &QuantizerSettings,
) -> Result<OnnxModel, CalibrationError> {
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
            encode_parameter(tensor, &values, &data.shape, overrides.get(name), settings)?;
        let values = aimet_fake_quantize(&values, &data.shape, &encoding).map_err(|e| {
            EncodeError::Override {
                tensor: name.to_string(),
                message: e.to_string(),
            }
        })?;
        quantized.replace_parameter_f32(name, &values)?;
    }
    Ok(quantized)
}

/// Quantize-dequantize of a parameter the way AIMET's parameter quantizers do it while
/// calibrating, operation for operation in float32: `x / scale` (the scale a float32 value),
/// shifted onto the unsigned grid by subtracting the offset — still in float32, which rounds
/// a value within an ulp of a half step onto it — then rounded half away from zero, clamped to
/// `[0, 2^bw − 1]`, and dequantized as `(q + offset) · scale`.
///
/// The bulk kernels compute in double and round `x / scale` before any shift. On det's weights
/// the two disagree on 3 of its 1 164 344 values (e.g. `x / scale` = 4.4999925 rounds to 4
/// there and to 5 here, since 132.4999925 is 132.5 in float32); each flipped weight moves the
/// ranges of every activation downstream of it by ~1e-4 relative, more than this mode promises
/// against AIMET. Checked against the values AIMET 2.42.0's quantizers output while
/// calibrating det: every weight and the batch-norm scale equal to the bit.
fn aimet_fake_quantize(
    values: &[f32],
    shape: &[usize],
    encoding: &TensorEncoding,
) -> Result<Vec<f32>, TensorEncodingError> {
    let one = |x: f32, e: &Encoding| {
        let scale = e.scale as f32;
        let shifted = x / scale - e.offset as f32;
        let q = shifted.round().clamp(0.0, e.bitwidth.steps() as f32);
        ((f64::from(q) + e.offset as f64) * f64::from(scale)) as f32
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

/// One [`Warning::NonFiniteInput`] per input of a sample that holds NaN or infinite values.
pub fn non_finite_inputs<'a>(
    sample: &str,
    inputs: impl IntoIterator<Item = &'a str>,
    counts: &[NonFinite],
) -> Vec<Warning> {
    inputs
        .into_iter()
        .zip(counts)
        .filter(|(_, n)| !n.is_clean())
        .map(|(input, n)| Warning::NonFiniteInput {
            sample: sample.to_string(),
            input: input.to_string(),
            nan: n.nan,
            inf: n.inf,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{Bitwidth, Schema};

    /// A signed 8-bit grid of step `scale` (offset −128), as AIMET stores det's weights.
    fn grid(scale: f64) -> TensorEncoding {
        TensorEncoding::PerTensor(Encoding {
            bitwidth: Bitwidth::B8,
            schema: Schema::Symmetric,
            min: -128.0 * scale,
            max: 127.0 * scale,
            scale,
            offset: -128,
        })
    }

    #[test]
    fn rounds_where_aimet_rounds_on_det_weights() {
        // Three det weights (value, scale, AIMET's integer while calibrating): `x / scale` is
        // 4.4999924, −1.5000010 and 0.4999984, which double-precision rounding takes to 4, −2
        // and 0.
        let cases = [
            (0.393_889_76_f32, 0.087_531_202_421_413_63, 5.0),
            (-0.015_038_792_f32, 0.010_025_855_153_799_057, -1.0),
            (0.024_311_772_f32, 0.048_623_703_420_162_2, 1.0),
        ];
        for (x, scale, integer) in cases {
            let out = aimet_fake_quantize(&[x], &[1], &grid(scale)).unwrap();
            let expected = (integer * f64::from(scale as f32)) as f32;
            assert_eq!(out, [expected], "x = {x}, scale = {scale}");
            assert_ne!(
                (f64::from(x) / scale).round(),
                integer,
                "not a boundary case"
            );
        }
    }

    #[test]
    fn clamps_to_the_grid_and_keeps_float_tensors() {
        let out = aimet_fake_quantize(&[1e6, -1e6, 0.0], &[3], &grid(0.5)).unwrap();
        assert_eq!(out, [63.5, -64.0, 0.0]);
        let float = TensorEncoding::Float {
            bitwidth: crate::encoding::tensor::FloatBitwidth::F16,
        };
        assert_eq!(
            aimet_fake_quantize(&[0.1, 7.0], &[2], &float).unwrap(),
            [0.1, 7.0]
        );
    }
}
