//! One tensor's encoding from its statistics or values, the target's settings and its override.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use super::QuantizerSettings;
use crate::encoding::tensor::ChannelLayout;
use crate::encoding::{Bitwidth, Encoding, EncodingError, Schema, TensorEncoding};
use crate::graph::{EncodingRule, Graph, Role, Tensor};
use crate::overrides::{Override, Overrides};
use crate::stats::{StatisticsSettings, TensorStatistics, required_statistics, select_range};

use super::{calibration, weight_convention};

/// Something the user should know about an encoding decision; never fatal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Warning {
    /// Per-channel or per-row quantization forced a symmetric schema on a weight, as
    /// qairt-quantizer does.
    ForcedSymmetric {
        /// The schema the settings asked for.
        requested: Schema,
    },
    /// An activation has no statistics (the runtime folded it into a constant or never
    /// produced it), so it was left in float.
    NoStatistics {
        /// The tensor.
        tensor: String,
    },
    /// NaN or infinite values were seen in an activation and left out of its statistics.
    NonFinite {
        /// The tensor.
        tensor: String,
        /// How many values.
        count: u64,
    },
    /// A calibration sample's input holds NaN or infinite values: the model sees them, and every
    /// activation they reach leaves them out of its statistics.
    NonFiniteInput {
        /// The sample, as the user knows it: its list line and files.
        sample: String,
        /// The graph input.
        input: String,
        /// NaN values.
        nan: u64,
        /// +Inf and -Inf values.
        inf: u64,
    },
    /// An int32 bias could not use `input scale × weight scale` (input or weight not integer),
    /// so it was encoded from its own range at 32 bits.
    BiasOwnRange {
        /// The bias tensor.
        tensor: String,
    },
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::ForcedSymmetric { requested } => write!(
                f,
                "per-channel/per-row quantization requires symmetric weights: \
                 param_quantizer_schema `{requested}` is overridden to `symmetric` for those weights"
            ),
            Warning::NoStatistics { tensor } => {
                write!(
                    f,
                    "`{tensor}` has no calibration statistics; it is left in float"
                )
            }
            Warning::NonFinite { tensor, count } => write!(
                f,
                "`{tensor}`: {count} NaN/infinite values were left out of its statistics"
            ),
            Warning::NonFiniteInput {
                sample,
                input,
                nan,
                inf,
            } => write!(
                f,
                "sample {sample}: input `{input}` holds {nan} NaN and {inf} infinite values; \
                 the statistics of every activation they reach leave them out"
            ),
            Warning::BiasOwnRange { tensor } => write!(
                f,
                "`{tensor}`: input or weight of its op is not integer, so the 32-bit bias is \
                 encoded from its own range"
            ),
        }
    }
}

/// Tensors named in one grouped line before "and N more".
const GROUPED_NAMES: usize = 5;

impl Warning {
    /// The tensor a warning is about, for those about one tensor.
    pub fn tensor(&self) -> Option<&str> {
        match self {
            Warning::NoStatistics { tensor }
            | Warning::NonFinite { tensor, .. }
            | Warning::BiasOwnRange { tensor } => Some(tensor),
            Warning::ForcedSymmetric { .. } | Warning::NonFiniteInput { .. } => None,
        }
    }
}

/// Words `warnings` for a user, one line each, except that [`Warning::NonFinite`] of several
/// tensors become one line naming the first few: a sample full of NaN reaches every activation,
/// and hundreds of lines saying so would bury the one line (its [`Warning::NonFiniteInput`])
/// that names the cause. Order is kept; the grouped line stands where the first one was.
pub fn word_warnings<'a>(warnings: impl IntoIterator<Item = &'a Warning>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut non_finite: Vec<(&str, u64)> = Vec::new();
    let mut grouped_at = None;
    for warning in warnings {
        match warning {
            Warning::NonFinite { tensor, count } => {
                grouped_at.get_or_insert(lines.len());
                non_finite.push((tensor, *count));
            }
            other => lines.push(other.to_string()),
        }
    }
    if let Some(at) = grouped_at {
        let line = match non_finite.as_slice() {
            [(tensor, count)] => Warning::NonFinite {
                tensor: tensor.to_string(),
                count: *count,
            }
            .to_string(),
            all => {
                let named: Vec<String> = all
                    .iter()
                    .take(GROUPED_NAMES)
                    .map(|(tensor, count)| format!("`{tensor}` ({count})"))
                    .collect();
                let more = match all.len().saturating_sub(GROUPED_NAMES) {
                    0 => String::new(),
                    n => format!(" and {n} more"),
                };
                format!(
                    "{} activations saw NaN/infinite values, left out of their statistics: {}{more}",
                    all.len(),
                    named.join(", ")
                )
            }
        };
        lines.insert(at, line);
    }
    lines
}

/// Why a tensor could not be encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// The encoding math refused a range (NaN, inverted).
    #[error("`{tensor}`: {source}")]
    Encoding {
        /// The tensor.
        tensor: String,
        /// What went wrong.
        source: EncodingError,
    },
    /// A parameter's values could not be read as float.
    #[error("`{tensor}`: parameter values are missing or not float")]
    ParameterData {
        /// The tensor.
        tensor: String,
    },
    /// A per-channel override does not fit the tensor.
    #[error("`{tensor}`: {message}")]
    Override {
        /// The tensor.
        tensor: String,
        /// What does not fit.
        message: String,
    },
    /// The overrides ask for a precision the specification forbids.
    #[error(transparent)]
    Precision(#[from] super::precision::PrecisionError),
}

/// Every encoding of one model for one target.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelEncodings {
    /// Activations (and constant operands, which AIMET also lists as activations), by name.
    pub activations: BTreeMap<String, TensorEncoding>,
    /// Weights, biases and batch-norm parameters, by name.
    pub parameters: BTreeMap<String, TensorEncoding>,
    /// Ops that do not compute in integer (float or INT32 overrides), by first output.
    pub ops: BTreeMap<String, crate::onnx::precision::NodePrecision>,
    /// The integer encoding of each float or INT32 activation an integer op writes or reads:
    /// what the conversion between them quantizes to.
    pub converted: BTreeMap<String, TensorEncoding>,
    /// Warnings, deduplicated, in the order they arose.
    pub warnings: Vec<Warning>,
}

/// Which statistics the calibration pass must collect for these settings.
pub fn statistics_settings(settings: &QuantizerSettings) -> StatisticsSettings {
    required_statistics(calibration(settings.act_calibration, settings))
}

fn encoding_error(tensor: &str) -> impl FnOnce(EncodingError) -> EncodeError + '_ {
    move |source| EncodeError::Encoding {
        tensor: tensor.to_string(),
        source,
    }
}

/// Bitwidth and schema an override leaves open, from the settings' defaults.
fn overridden_grid(
    ov: Option<&Override>,
    bitwidth: Bitwidth,
    schema: Schema,
) -> (Bitwidth, Schema) {
    match ov {
        Some(Override::Calibrated {
            bitwidth,
            symmetric,
        }) => {
            let schema = match symmetric {
                Some(true) => Schema::Symmetric,
                Some(false) if schema.is_symmetric() => Schema::Asymmetric,
                _ => schema,
            };
            (*bitwidth, schema)
        }
        _ => (bitwidth, schema),
    }
}

/// An activation's encoding from its merged statistics.
///
/// A fixed override (range or float) wins outright; an override that gives only a bitwidth
/// (and maybe symmetry) is calibrated like any other activation at that bitwidth.
pub fn encode_activation(
    tensor: &str,
    statistics: Option<&TensorStatistics>,
    ov: Option<&Override>,
    settings: &QuantizerSettings,
) -> Result<(Option<TensorEncoding>, Vec<Warning>), EncodeError> {
    if let Some(Override::Fixed(fixed)) = ov {
        return Ok((Some(fixed.clone().with_axis(0)), Vec::new()));
    }
    let Some(statistics) = statistics else {
        return Ok((
            None,
            vec![Warning::NoStatistics {
                tensor: tensor.to_string(),
            }],
        ));
    };
    let mut warnings = Vec::new();
    let non_finite = statistics.min_max.non_finite_count();
    if non_finite > 0 {
        warnings.push(Warning::NonFinite {
            tensor: tensor.to_string(),
            count: non_finite,
        });
    }
    let (bitwidth, schema) = overridden_grid(ov, settings.act_bitwidth, settings.act_schema);
    let (min, max) = select_range(
        statistics,
        calibration(settings.act_calibration, settings),
        bitwidth,
        schema,
    );
    let encoding =
        range_encoding(min, max, bitwidth, schema, settings).map_err(encoding_error(tensor))?;
    Ok((Some(TensorEncoding::PerTensor(encoding)), warnings))
}

/// Statistics of `values` as calibration would gather them, so parameters and activations
/// share one range-selection path.
fn value_statistics(values: &[f32], settings: StatisticsSettings) -> TensorStatistics {
    let mut statistics = TensorStatistics::new(settings);
    statistics.observe(values);
    statistics
}

/// Whether the weight's consumer asks for per-channel (Conv family) or per-row (Gemm/MatMul)
/// quantization under these settings.
fn channelwise(tensor: &Tensor, settings: &QuantizerSettings) -> bool {
    tensor.consumers.iter().any(|u| match u.op_type.as_str() {
        "Conv" | "ConvTranspose" => settings.per_channel,
        "Gemm" | "MatMul" => settings.per_row,
        _ => false,
    })
}

/// A parameter's encoding from its values (everything but biases; see [`bias_encoding`]).
///
/// Weights use the param settings, per-channel along their output-channel axis when asked for
/// (which forces a symmetric schema). Batch-norm parameters use the param settings per tensor.
/// Other constant operands (an `Add`'s `3.0`, a `Clip` bound) are encoded like activations,
/// with the activation bitwidth and schema, as AIMET and onnxruntime both do.
pub fn encode_parameter(
    tensor: &Tensor,
    values: &[f32],
    shape: &[usize],
    ov: Option<&Override>,
    settings: &QuantizerSettings,
) -> Result<(TensorEncoding, Vec<Warning>), EncodeError> {
    let name = tensor.name.as_str();
    let mut warnings = Vec::new();
    if let Some(Override::Fixed(fixed)) = ov {
        let axis = match tensor.role {
            Role::Weight {
                output_channel_axis,
            } => output_channel_axis,
            _ => 0,
        };
        let encoding = fixed.clone().with_axis(axis);
        if let TensorEncoding::PerChannel { axis, channels } = &encoding {
            let layout = ChannelLayout::new(shape, *axis, values.len()).map_err(|e| {
                EncodeError::Override {
                    tensor: name.to_string(),
                    message: e.to_string(),
                }
            })?;
            if layout.channels != channels.len() {
                return Err(EncodeError::Override {
                    tensor: name.to_string(),
                    message: format!(
                        "the override has {} per-channel encodings but axis {axis} has {} channels",
                        channels.len(),
                        layout.channels
                    ),
                });
            }
        }
        return Ok((encoding, warnings));
    }
    let (bitwidth, schema, method) = match tensor.role {
        Role::Weight { .. }
        | Role::BatchNormScale
        | Role::BatchNormBias
        | Role::BatchNormMean
        | Role::BatchNormVariance => (
            settings.weights_bitwidth,
            settings.param_schema,
            settings.param_calibration,
        ),
        _ => (
            settings.act_bitwidth,
            settings.act_schema,
            settings.act_calibration,
        ),
    };
    // AIMET's exception rule: batch-norm parameters are symmetric only at 16 bits and more;
    // below that they stay asymmetric whatever the weight schema.
    let schema = match tensor.role {
        Role::BatchNormScale
        | Role::BatchNormBias
        | Role::BatchNormMean
        | Role::BatchNormVariance
            if bitwidth.bits() < 16 =>
        {
            Schema::Asymmetric
        }
        _ => schema,
    };
    let (bitwidth, mut schema) = overridden_grid(ov, bitwidth, schema);
    let convention = weight_convention(settings, bitwidth);
    let strategy = calibration(method, settings);
    let stats_settings = required_statistics(strategy);
    if let Role::Weight {
        output_channel_axis,
    } = tensor.role
        && channelwise(tensor, settings)
        && output_channel_axis < shape.len()
    {
        if !schema.is_symmetric() {
            warnings.push(Warning::ForcedSymmetric { requested: schema });
            schema = Schema::Symmetric;
        }
        let layout =
            ChannelLayout::new(shape, output_channel_axis, values.len()).map_err(|_| {
                EncodeError::ParameterData {
                    tensor: name.to_string(),
                }
            })?;
        let mut per_channel = vec![TensorStatistics::new(stats_settings); layout.channels];
        if layout.inner > 0 && layout.channels > 0 {
            for block in values.chunks_exact(layout.channels * layout.inner) {
                for (statistics, run) in
                    per_channel.iter_mut().zip(block.chunks_exact(layout.inner))
                {
                    statistics.observe(run);
                }
            }
        }
        let channels = per_channel
            .iter()
            .map(|statistics| {
                let (min, max) = select_range(statistics, strategy, bitwidth, schema);
                Encoding::from_range_with(min, max, bitwidth, schema, convention)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(encoding_error(name))?;
        return Ok((
            TensorEncoding::PerChannel {
                axis: output_channel_axis,
                channels,
            },
            warnings,
        ));
    }
    let statistics = value_statistics(values, stats_settings);
    let (min, max) = select_range(&statistics, strategy, bitwidth, schema);
    let encoding =
        range_encoding(min, max, bitwidth, schema, settings).map_err(encoding_error(name))?;
    Ok((TensorEncoding::PerTensor(encoding), warnings))
}

/// A bias's encoding. At 32 bits it is `input scale × weight scale` (per channel when the
/// weight is per-channel), offset 0; at other bitwidths, or when its op's input or weight is
/// not integer, it is encoded from its own range.
pub fn bias_encoding(
    tensor: &Tensor,
    values: &[f32],
    ov: Option<&Override>,
    input: Option<&TensorEncoding>,
    weight: Option<&TensorEncoding>,
    settings: &QuantizerSettings,
) -> Result<(TensorEncoding, Vec<Warning>), EncodeError> {
    let name = tensor.name.as_str();
    if let Some(Override::Fixed(fixed)) = ov {
        return Ok((fixed.clone().with_axis(0), Vec::new()));
    }
    let bitwidth = match ov {
        Some(Override::Calibrated { bitwidth, .. }) => *bitwidth,
        _ => settings.bias_bitwidth,
    };
    let mut warnings = Vec::new();
    if bitwidth == Bitwidth::B32 {
        let input_scale = match input {
            Some(TensorEncoding::PerTensor(e)) => Some(e.scale),
            _ => None,
        };
        match (input_scale, weight) {
            (Some(s_in), Some(TensorEncoding::PerTensor(w))) => {
                return Ok((
                    TensorEncoding::PerTensor(Encoding::int32_bias(s_in, w.scale)),
                    warnings,
                ));
            }
            (Some(s_in), Some(TensorEncoding::PerChannel { channels, .. }))
                if channels.len() == values.len() =>
            {
                let channels = channels
                    .iter()
                    .map(|w| Encoding::int32_bias(s_in, w.scale))
                    .collect();
                return Ok((TensorEncoding::PerChannel { axis: 0, channels }, warnings));
            }
            _ => warnings.push(Warning::BiasOwnRange {
                tensor: name.to_string(),
            }),
        }
    }
    let strategy = calibration(settings.param_calibration, settings);
    let statistics = value_statistics(values, required_statistics(strategy));
    let (bitwidth, schema) = overridden_grid(ov, bitwidth, settings.param_schema);
    let (min, max) = select_range(&statistics, strategy, bitwidth, schema);
    let encoding = Encoding::from_range_with(
        min,
        max,
        bitwidth,
        schema,
        weight_convention(settings, bitwidth),
    )
    .map_err(encoding_error(name))?;
    Ok((TensorEncoding::PerTensor(encoding), warnings))
}

/// A float parameter's values and shape.
pub fn parameter_values<'g>(
    graph: &'g Graph,
    name: &str,
) -> Result<(std::borrow::Cow<'g, [f32]>, &'g [usize]), EncodeError> {
    let missing = || EncodeError::ParameterData {
        tensor: name.to_string(),
    };
    let data = graph.parameter(name).ok_or_else(missing)?;
    Ok((data.as_f32().ok_or_else(missing)?, &data.shape))
}

/// The tensor a bias's op reads as input 0 and as weight (input 1).
pub fn bias_partners<'g>(graph: &'g Graph, tensor: &Tensor) -> Option<(&'g str, &'g str)> {
    let consumer = tensor.consumers.first()?;
    let node = graph.node(consumer.node);
    let input = node.inputs.first()?.as_ref()?;
    let weight = node.inputs.get(1)?.as_ref()?;
    Some((input.as_str(), weight.as_str()))
}

/// Float fallback (qairt's `--enable_float_fallback`): no calibration. Activations take the
/// encodings the overrides give, data-movement outputs their source's (the rule of
/// [`EncodingRule::SharesInput`]), and every other activation falls back to float
/// (`float_bitwidth`, FP32 by default). An op whose output is integer is an integer op: its
/// weights are encoded from their values, which needs no calibration, and its bias from its
/// input and weight encodings; parameters of float ops stay float.
pub fn encode_model_fallback(
    graph: &Graph,
    overrides: &Overrides,
    settings: &QuantizerSettings,
) -> Result<ModelEncodings, EncodeError> {
    let implied =
        super::precision::with_implied_floats(graph, overrides, settings.float_bias_bitwidth.0);
    let overrides = &implied;
    let float = TensorEncoding::Float {
        bitwidth: settings
            .float_bitwidth
            .unwrap_or(crate::encoding::FloatBitwidth::F32),
    };
    let mut out = ModelEncodings::default();
    for tensor in graph.float_activations() {
        let name = tensor.name.as_str();
        let fixed = match overrides.get(name) {
            Some(Override::Fixed(fixed)) => Some(fixed.clone().with_axis(0)),
            _ => None,
        };
        match (&tensor.rule, fixed) {
            (_, Some(encoding)) => {
                out.activations.insert(name.to_string(), encoding);
            }
            (EncodingRule::SharesInput(_), None) => {
                let shared = graph
                    .encoding_source(name)
                    .and_then(|source| out.activations.get(source.as_str()).cloned());
                if let Some(encoding) = shared {
                    out.activations.insert(name.to_string(), encoding);
                }
            }
            _ => {}
        }
    }
    for tensor in graph.float_activations() {
        let name = tensor.name.as_str();
        if !out.activations.contains_key(name) && tensor.rule != EncodingRule::NotFloat {
            out.activations.insert(name.to_string(), float.clone());
        }
    }
    // An op is integer when what it writes is.
    let integer_op = |tensor: &Tensor| {
        !tensor.consumers.is_empty()
            && tensor.consumers.iter().all(|u| {
                graph
                    .node(u.node)
                    .outputs
                    .first()
                    .and_then(|o| out.activations.get(o.as_str()))
                    .is_some_and(|e| !matches!(e, TensorEncoding::Float { .. }))
            })
    };
    let mut biases = Vec::new();
    let mut parameters = BTreeMap::new();
    for tensor in graph.float_parameters() {
        if tensor.rule != EncodingRule::Own {
            continue;
        }
        let name = tensor.name.as_str();
        let ov = overrides.get(name);
        if ov.is_none() && !integer_op(tensor) {
            parameters.insert(name.to_string(), (tensor, float.clone()));
            continue;
        }
        if tensor.role == Role::Bias {
            biases.push(tensor);
            continue;
        }
        let (values, shape) = parameter_values(graph, name)?;
        let (encoding, warnings) = encode_parameter(tensor, &values, shape, ov, settings)?;
        out.warnings.extend(warnings);
        parameters.insert(name.to_string(), (tensor, encoding));
    }
    for tensor in biases {
        let name = tensor.name.as_str();
        let (values, _) = parameter_values(graph, name)?;
        let (input, weight) = match bias_partners(graph, tensor) {
            Some((input, weight)) => (
                out.activations.get(input),
                parameters.get(weight).map(|(_, e)| e),
            ),
            None => (None, None),
        };
        let (encoding, warnings) = bias_encoding(
            tensor,
            &values,
            overrides.get(name),
            input,
            weight,
            settings,
        )?;
        out.warnings.extend(warnings);
        parameters.insert(name.to_string(), (tensor, encoding));
    }
    for (name, (tensor, encoding)) in parameters {
        if is_activation_like(tensor.role) {
            out.activations.insert(name, encoding);
        } else {
            out.parameters.insert(name, encoding);
        }
    }
    out.ops =
        super::precision::conversions(graph, &out.activations, &overrides.int32_tensors())?.ops;
    Ok(out)
}

/// Encodes every tensor of `graph`: activations from `statistics` (by name), parameters from
/// their values, then biases (which need their op's input and weight encodings), then shared
/// encodings of data-movement outputs. Overrides win where given.
pub fn encode_model(
    graph: &Graph,
    statistics: &HashMap<String, TensorStatistics>,
    overrides: &Overrides,
    settings: &QuantizerSettings,
) -> Result<ModelEncodings, EncodeError> {
    let placement = crate::placement::placed(graph, settings);
    let graph = placement.as_ref().map_or(graph, |p| &p.graph);
    let implied =
        super::precision::with_implied_floats(graph, overrides, settings.float_bias_bitwidth.0);
    let implied = match &placement {
        Some(placement) => Cow::Owned(with_placed_symmetry(&implied, placement, settings)),
        None => implied,
    };
    let overrides = &implied;
    let mut out = ModelEncodings::default();
    let warn = |out: &mut ModelEncodings, warnings: Vec<Warning>| {
        for w in warnings {
            if !out.warnings.contains(&w) {
                out.warnings.push(w);
            }
        }
    };
    // Own activations first: shared ones and int32 biases refer to them.
    for tensor in graph.float_activations() {
        if tensor.rule != EncodingRule::Own {
            continue;
        }
        let name = tensor.name.as_str();
        let (encoding, warnings) =
            encode_activation(name, statistics.get(name), overrides.get(name), settings)?;
        warn(&mut out, warnings);
        if let Some(encoding) = encoding {
            out.activations.insert(name.to_string(), encoding);
        }
    }
    let mut biases = Vec::new();
    for tensor in graph.float_parameters() {
        if tensor.rule != EncodingRule::Own {
            continue;
        }
        let name = tensor.name.as_str();
        if tensor.role == Role::Bias {
            biases.push(tensor);
            continue;
        }
        let (values, shape) = parameter_values(graph, name)?;
        let (encoding, warnings) =
            encode_parameter(tensor, &values, shape, overrides.get(name), settings)?;
        warn(&mut out, warnings);
        if is_activation_like(tensor.role) {
            out.activations.insert(name.to_string(), encoding);
        } else {
            out.parameters.insert(name.to_string(), encoding);
        }
    }
    for tensor in biases {
        let name = tensor.name.as_str();
        let (values, _) = parameter_values(graph, name)?;
        let (input, weight) = match bias_partners(graph, tensor) {
            // A data-movement input (a Reshape before a Gemm) is encoded only at the end, as a
            // copy of its source: look the source up instead.
            Some((input, weight)) => (
                graph
                    .encoding_source(input)
                    .and_then(|source| out.activations.get(source.as_str())),
                out.parameters.get(weight),
            ),
            None => (None, None),
        };
        let (encoding, warnings) = bias_encoding(
            tensor,
            &values,
            overrides.get(name),
            input,
            weight,
            settings,
        )?;
        warn(&mut out, warnings);
        out.parameters.insert(name.to_string(), encoding);
    }
    // Shared encodings last, following each chain to its source.
    for tensor in graph.float_activations() {
        if let EncodingRule::SharesInput(_) = tensor.rule {
            let name = tensor.name.as_str();
            let encoding = match overrides.get(name) {
                Some(Override::Fixed(fixed)) => Some(fixed.clone().with_axis(0)),
                _ => graph
                    .encoding_source(name)
                    .and_then(|source| out.activations.get(source.as_str()).cloned()),
            };
            if let Some(encoding) = encoding {
                out.activations.insert(name.to_string(), encoding);
            }
        }
    }
    let mixed = super::precision::conversions(graph, &out.activations, &overrides.int32_tensors())?;
    for name in &mixed.converted {
        let (encoding, _) = encode_activation(name, statistics.get(name), None, settings)?;
        if let Some(encoding) = encoding {
            out.converted.insert(name.clone(), encoding);
        }
    }
    out.ops = mixed.ops;
    Ok(out)
}

/// `overrides` plus the schemas a quantsim config fixes ([`crate::placement::Placement`]'s
/// `symmetric`) as bitwidth-only overrides, where the user gave none.
pub fn with_placed_symmetry(
    overrides: &Overrides,
    placement: &crate::placement::Placement,
    settings: &QuantizerSettings,
) -> Overrides {
    let mut out = overrides.clone();
    for (name, &symmetric) in &placement.symmetric {
        if out.get(name).is_none() {
            out.activations.insert(
                name.clone(),
                Override::Calibrated {
                    bitwidth: settings.act_bitwidth,
                    symmetric: Some(symmetric),
                },
            );
        }
    }
    out
}

/// An encoding from a range under `settings`: AIMET's arithmetic (minimum scale `2^-23`, no
/// minimum range) when a quantsim config is given, the specification's otherwise.
fn range_encoding(
    min: f64,
    max: f64,
    bitwidth: Bitwidth,
    schema: Schema,
    settings: &QuantizerSettings,
) -> Result<Encoding, EncodingError> {
    if settings.quantsim_config.0.is_some() && !schema.is_symmetric() {
        return Encoding::aimet_asymmetric(min, max, bitwidth, schema);
    }
    Encoding::from_range_with(
        min,
        max,
        bitwidth,
        schema,
        weight_convention(settings, bitwidth),
    )
}

/// Whether a parameter is listed with the activations. Constant operands are (AIMET's convention): they are quantized
/// with the activation settings and are not any op's weight or bias.
pub fn is_activation_like(role: Role) -> bool {
    !matches!(
        role,
        Role::Weight { .. }
            | Role::Bias
            | Role::BatchNormScale
            | Role::BatchNormBias
            | Role::BatchNormMean
            | Role::BatchNormVariance
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn non_finite(tensor: &str, count: u64) -> Warning {
        Warning::NonFinite {
            tensor: tensor.to_string(),
            count,
        }
    }

    #[test]
    fn non_finite_tensors_are_worded_as_one_line_where_the_first_stood() {
        let before = Warning::NoStatistics {
            tensor: "a".to_string(),
        };
        let after = Warning::BiasOwnRange {
            tensor: "b".to_string(),
        };
        let many: Vec<Warning> = (0..7)
            .map(|i| non_finite(&format!("t{i}"), 10 + i))
            .collect();
        let mut warnings = vec![before.clone()];
        warnings.extend(many[..3].iter().cloned());
        warnings.push(after.clone());
        warnings.extend(many[3..].iter().cloned());
        assert_eq!(
            word_warnings(&warnings),
            [
                before.to_string(),
                "7 activations saw NaN/infinite values, left out of their statistics: `t0` (10), \
                 `t1` (11), `t2` (12), `t3` (13), `t4` (14) and 2 more"
                    .to_string(),
                after.to_string(),
            ]
        );
    }

    #[test]
    fn one_non_finite_tensor_keeps_its_own_line() {
        let one = [non_finite("x", 3)];
        assert_eq!(
            word_warnings(&one),
            ["`x`: 3 NaN/infinite values were left out of its statistics"]
        );
        assert!(word_warnings(&[]).is_empty());
    }
}
