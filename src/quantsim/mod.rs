//! QuantSim: runs a model the way a quantized target computes it, in float arithmetic.
//!
//! Every encoded parameter (weights, biases, batch-norm parameters, constant operands) is
//! replaced by its fake-quantized value in a copy of the ONNX model, and every encoded activation
//! is fake-quantized in place right after its producer ran, through [`FloatRunner::run_with_hook`],
//! so its consumers read what the target would hold. Tensors encoded as float (overridden to
//! `dtype: "float"`) and tensors without an encoding stay float. A data-movement output
//! ([`EncodingRule::SharesInput`]) without an entry of its own takes its source's encoding;
//! fake-quantizing values that already sit on that grid changes nothing, so this only matters
//! when the encodings file leaves those tensors out (AIMET does).
//!
//! It never relies on tract executing QuantizeLinear/DequantizeLinear: tract 0.23 computes
//! cls's Softmax→QuantizeLinear wrongly after decluttering, so simulation stays in the hook.
//!
//! Whose rounding it simulates is a [`Rounding`]: onnxruntime's on a QDQ model (activations
//! divided by the `f32` scale and rounded half to even, parameters holding the integers the QDQ
//! export stores), or AIMET's QuantSim kernel. Encodings are used exactly as given: a scale and
//! offset that an encodings file states are the ones simulated (see
//! [`crate::overrides::ParsedOverrides::as_written`]).
//!
//! It must NOT read input lists, compute metrics or decide encodings: it takes encodings as
//! given ([`ModelEncodings`]) and hands each simulated activation to the caller.

use std::collections::BTreeMap;
use std::sync::Arc;

use ndarray::ArrayD;

use crate::encoding::tensor::{ChannelLayout, fake_quantize_tensor_in_place_as};
use crate::encoding::{Rounding, TensorEncoding};
use crate::graph::{EncodingRule, Graph, Role};
use crate::onnx::{OnnxError, OnnxModel};
use crate::overrides::{Override, Overrides};
use crate::quantizer::ModelEncodings;
use crate::run::{FloatRunner, RunError};

/// Why a model could not be simulated.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum QuantSimError {
    /// A parameter could not be rewritten in the model.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// The model with fake-quantized parameters could not be prepared or run.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Run(#[from] RunError),
    /// An encoding does not fit its tensor (per-channel count or axis).
    #[error("`{tensor}`: {message}")]
    #[diagnostic(
        code(quant::quantsim::encoding),
        help("the encodings must come from this model: re-run `quant quantize` on it")
    )]
    Encoding {
        /// The tensor.
        tensor: String,
        /// What does not fit.
        message: String,
    },
}

/// Something about the encodings the user should know; simulation goes on without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuantSimWarning {
    /// An encodings entry names a tensor the model does not have.
    UnknownTensor {
        /// The name.
        tensor: String,
    },
    /// An entry gives only a bitwidth, no range: there is nothing to simulate with.
    NoRange {
        /// The tensor.
        tensor: String,
    },
    /// tract folded the activation into a constant, so the hook cannot rewrite it.
    ConstantActivation {
        /// The tensor.
        tensor: String,
    },
}

impl std::fmt::Display for QuantSimWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuantSimWarning::UnknownTensor { tensor } => {
                write!(
                    f,
                    "`{tensor}` has an encoding but is not in the model; ignored"
                )
            }
            QuantSimWarning::NoRange { tensor } => write!(
                f,
                "`{tensor}`: the encoding gives a bitwidth but no range; simulated in float"
            ),
            QuantSimWarning::ConstantActivation { tensor } => write!(
                f,
                "`{tensor}` does not depend on the input and was folded to a constant; its \
                 activation encoding is not simulated"
            ),
        }
    }
}

/// Turns an encodings file's entries into the model's encodings: per-channel entries get the
/// weight's output-channel axis from the graph; entries without a range are dropped with a
/// warning. Which section an entry sits in does not matter (AIMET lists constant operands as
/// activations).
pub fn encodings_from_overrides(
    graph: &Graph,
    overrides: &Overrides,
) -> (ModelEncodings, Vec<QuantSimWarning>) {
    let mut encodings = ModelEncodings::default();
    let mut warnings = Vec::new();
    for (name, entry) in overrides.activations.iter().chain(&overrides.parameters) {
        let Some(tensor) = graph.tensor(name) else {
            warnings.push(QuantSimWarning::UnknownTensor {
                tensor: name.clone(),
            });
            continue;
        };
        let Override::Fixed(fixed) = entry else {
            warnings.push(QuantSimWarning::NoRange {
                tensor: name.clone(),
            });
            continue;
        };
        let axis = match tensor.role {
            Role::Weight {
                output_channel_axis,
            } => output_channel_axis,
            _ => 0,
        };
        let encoding = fixed.clone().with_axis(axis);
        if tensor.kind.is_parameter() {
            encodings.parameters.insert(name.clone(), encoding);
        } else {
            encodings.activations.insert(name.clone(), encoding);
        }
    }
    (encodings, warnings)
}

/// The encoding of `name`, looked up in both sections.
fn lookup<'e>(encodings: &'e ModelEncodings, name: &str) -> Option<&'e TensorEncoding> {
    encodings
        .parameters
        .get(name)
        .or_else(|| encodings.activations.get(name))
}

/// The encodings a simulation's parameters take: each float parameter's, from either section
/// (AIMET lists constant operands as activations), and the INT32 ops. [`parameters_runner`]
/// depends on nothing else of the encodings.
pub fn simulated_parameters(graph: &Graph, encodings: &ModelEncodings) -> ModelEncodings {
    let mut out = ModelEncodings::default();
    for tensor in graph.float_parameters() {
        let name = tensor.name.as_str();
        if let Some(encoding) = lookup(encodings, name) {
            out.parameters.insert(name.to_string(), encoding.clone());
        }
    }
    // The ops' precisions and which activations are float change the simulated model itself
    // (INT32 casts, and the integer copies of float tensors: see `quantized_parameters_model`).
    out.ops = encodings.ops.clone();
    out.activations = encodings
        .activations
        .iter()
        .filter(|(_, e)| matches!(e, TensorEncoding::Float { .. }))
        .map(|(name, e)| (name.clone(), e.clone()))
        .collect();
    out
}

/// The float activations that both float and integer ops read, each with the name of the copy
/// its integer readers read instead, by copy name.
///
/// The target converts such a tensor for its integer readers only (the QDQ export gives the
/// float readers the float value and the integer ones its QuantizeLinear/DequantizeLinear), but
/// the hook fake-quantizes a tensor in place for every reader. So the simulated model gets an
/// `Identity` writing the copy, which the hook quantizes while the tensor itself stays float.
/// A function of the graph, the ops' precisions and the float activations only, so the
/// simulated model and the hook agree on the names.
pub fn integer_copies(graph: &Graph, encodings: &ModelEncodings) -> BTreeMap<String, String> {
    let float_op = |output: Option<&crate::graph::TensorName>| {
        output
            .and_then(|o| encodings.ops.get(o.as_str()))
            .is_some_and(|p| p.is_float())
    };
    let mut copies = BTreeMap::new();
    for (name, encoding) in &encodings.activations {
        if !matches!(encoding, TensorEncoding::Float { .. }) {
            continue;
        }
        let Some(tensor) = graph.tensor(name) else {
            continue;
        };
        let (mut float, mut integer) = (false, false);
        for reader in &tensor.consumers {
            if float_op(graph.node(reader.node).outputs.first()) {
                float = true;
            } else {
                integer = true;
            }
        }
        if float && integer {
            let mut copy = format!("{name}_integer");
            while graph.tensor(&copy).is_some() || copies.contains_key(&copy) {
                copy.push('_');
            }
            copies.insert(copy, name.clone());
        }
    }
    copies
}

/// Adds the [`integer_copies`] to `model`: an `Identity` right after each tensor is written,
/// and each integer reader rewired to the copy.
fn add_integer_copies(
    model: &mut OnnxModel,
    graph: &Graph,
    encodings: &ModelEncodings,
) -> Result<(), QuantSimError> {
    let copies = integer_copies(graph, encodings);
    if copies.is_empty() {
        return Ok(());
    }
    let float_op = |output: Option<&crate::graph::TensorName>| {
        output
            .and_then(|o| encodings.ops.get(o.as_str()))
            .is_some_and(|p| p.is_float())
    };
    let proto = model.proto_mut().graph.get_or_insert_with(Default::default);
    for (copy, name) in &copies {
        let Some(tensor) = graph.tensor(name) else {
            continue;
        };
        // Readers by their first output: the IR's node order need not be the file's.
        for reader in &tensor.consumers {
            let node = graph.node(reader.node);
            let Some(first) = node.outputs.first() else {
                continue;
            };
            if float_op(Some(first)) {
                continue;
            }
            if let Some(proto_node) = proto
                .node
                .iter_mut()
                .find(|n| n.output.first().map(String::as_str) == Some(first.as_str()))
                && let Some(input) = proto_node.input.get_mut(reader.input_index)
                && input == name
            {
                *input = copy.clone();
            }
        }
        let at = proto
            .node
            .iter()
            .position(|n| n.output.iter().any(|o| o == name))
            .map_or(0, |i| i + 1);
        proto.node.insert(
            at,
            crate::onnx::proto::NodeProto {
                name: Some(format!("{copy}_Identity")),
                op_type: Some("Identity".into()),
                input: vec![name.clone()],
                output: vec![copy.clone()],
                ..Default::default()
            },
        );
    }
    Ok(())
}

/// The runner of `model` with its encoded parameters fake-quantized with `rounding`'s
/// arithmetic (the costly part of a [`QuantSim`]: tract loads and optimizes the rewritten
/// model).
pub fn parameters_runner(
    model: &OnnxModel,
    graph: &Graph,
    encodings: &ModelEncodings,
    input_dims: &[(String, Vec<usize>)],
    rounding: Rounding,
) -> Result<FloatRunner, QuantSimError> {
    let quantized = quantized_parameters_model(model, graph, encodings, rounding)?;
    Ok(FloatRunner::new(&quantized.to_bytes(), input_dims)?)
}

/// A copy of `model` whose encoded parameters hold their fake-quantized values, in
/// `rounding`'s arithmetic for parameters ([`Rounding::parameters`]).
///
/// Biases included: an int32 bias on the `input scale × weight scale` grid takes the integer the
/// QDQ export stores and the `f32` product `q · scale` DequantizeLinear computes, so the float
/// bias the simulated Conv adds is the one onnxruntime adds with optimizations disabled.
pub fn quantized_parameters_model(
    model: &OnnxModel,
    graph: &Graph,
    encodings: &ModelEncodings,
    rounding: Rounding,
) -> Result<OnnxModel, QuantSimError> {
    let mut quantized = model.clone();
    for tensor in graph.float_parameters() {
        let name = tensor.name.as_str();
        let Some(encoding) = lookup(encodings, name) else {
            continue;
        };
        if matches!(
            encoding,
            TensorEncoding::Float {
                bitwidth: crate::encoding::FloatBitwidth::F32
            }
        ) {
            continue;
        }
        let Some(data) = graph.parameter(name) else {
            continue;
        };
        let Some(values) = data.as_f32() else {
            continue;
        };
        let mut values = values.into_owned();
        check_fits(name, encoding, &data.shape, values.len())?;
        fake_quantize_tensor_in_place_as(&mut values, &data.shape, encoding, rounding.parameters())
            .map_err(|e| QuantSimError::Encoding {
                tensor: name.to_string(),
                message: e.to_string(),
            })?;
        quantized.replace_parameter_f32(name, &values)?;
    }
    add_integer_copies(&mut quantized, graph, encodings)?;
    // INT32 ops run as the QDQ export writes them: inputs cast to int32 (truncating toward
    // zero), the op in int32, the output cast back; the runner hooks only float tensors, so
    // the casts' int32 tensors pass untouched.
    let int32_ops: std::collections::BTreeMap<_, _> = encodings
        .ops
        .iter()
        .filter(|(_, p)| **p == crate::onnx::precision::NodePrecision::Int32)
        .map(|(name, p)| (name.clone(), *p))
        .collect();
    if !int32_ops.is_empty() {
        quantized = quantized.with_precisions(&crate::onnx::precision::PrecisionPlan {
            nodes: int32_ops,
            float32: crate::quantizer::precision::float32_tensors(graph),
            quantized: Default::default(),
            keep_io_types: true,
        })?;
    }
    Ok(quantized)
}

fn check_fits(
    name: &str,
    encoding: &TensorEncoding,
    shape: &[usize],
    len: usize,
) -> Result<(), QuantSimError> {
    if let TensorEncoding::PerChannel { axis, channels } = encoding {
        let layout =
            ChannelLayout::new(shape, *axis, len).map_err(|e| QuantSimError::Encoding {
                tensor: name.to_string(),
                message: e.to_string(),
            })?;
        if layout.channels != channels.len() {
            return Err(QuantSimError::Encoding {
                tensor: name.to_string(),
                message: format!(
                    "{} per-channel encodings for {} channels along axis {axis}",
                    channels.len(),
                    layout.channels
                ),
            });
        }
    }
    Ok(())
}

/// The encoding the hook applies to each of `names` (a runner's activations): the tensor's own,
/// or for a data-movement output without one its source's; `None` where it stays float.
pub fn hooked_encodings(
    names: &[String],
    graph: &Graph,
    encodings: &ModelEncodings,
) -> Result<Vec<Option<TensorEncoding>>, QuantSimError> {
    let copies = integer_copies(graph, encodings);
    let copied: std::collections::BTreeSet<&str> = copies.values().map(String::as_str).collect();
    let mut hooked = Vec::with_capacity(names.len());
    for name in names {
        // A float or INT32 tensor next to an integer op is read as its conversion quantizes it;
        // one that float ops read too stays float, and its integer copy is quantized.
        let own = match copies.get(name.as_str()) {
            Some(source) => encodings.converted.get(source.as_str()),
            None if copied.contains(name.as_str()) => encodings.activations.get(name.as_str()),
            None => encodings
                .converted
                .get(name.as_str())
                .or_else(|| encodings.activations.get(name.as_str())),
        };
        let shared = || match graph.tensor(name).map(|t| &t.rule) {
            Some(EncodingRule::SharesInput(_)) => graph
                .encoding_source(name)
                .and_then(|source| lookup(encodings, source.as_str())),
            _ => None,
        };
        let encoding = own.or_else(shared).cloned();
        if let Some(TensorEncoding::PerChannel { .. }) = &encoding {
            return Err(QuantSimError::Encoding {
                tensor: name.clone(),
                message: "activations take one encoding, not one per channel".to_string(),
            });
        }
        hooked.push(encoding);
    }
    Ok(hooked)
}

/// A model ready to run as the target computes it.
#[derive(Debug, Clone)]
pub struct QuantSim {
    runner: Arc<FloatRunner>,
    /// Per activation index of `runner`: the encoding applied in the hook.
    activation_encodings: Vec<Option<TensorEncoding>>,
    /// Whose arithmetic the hook (and the runner's parameters) round with.
    rounding: Rounding,
    warnings: Vec<QuantSimWarning>,
}

impl QuantSim {
    /// Prepares `model` (input dims already fixed in it, or given by `input_dims`) with
    /// `encodings`, rounding as onnxruntime does ([`Rounding::Onnx`]); see
    /// [`QuantSim::with_rounding`].
    pub fn new(
        model: &OnnxModel,
        graph: &Graph,
        encodings: &ModelEncodings,
        input_dims: &[(String, Vec<usize>)],
    ) -> Result<QuantSim, QuantSimError> {
        QuantSim::with_rounding(model, graph, encodings, input_dims, Rounding::Onnx)
    }

    /// Prepares `model` with `encodings` in `rounding`'s arithmetic: parameters are
    /// fake-quantized into a copy of the model, activations get their encoding (or their shared
    /// source's) for the hook.
    pub fn with_rounding(
        model: &OnnxModel,
        graph: &Graph,
        encodings: &ModelEncodings,
        input_dims: &[(String, Vec<usize>)],
        rounding: Rounding,
    ) -> Result<QuantSim, QuantSimError> {
        let runner = parameters_runner(model, graph, encodings, input_dims, rounding)?;
        QuantSim::with_runner(Arc::new(runner), graph, encodings, rounding)
    }

    /// As [`QuantSim::with_rounding`] with the runner already built by [`parameters_runner`]
    /// from the same parameter encodings ([`simulated_parameters`] of `encodings`) and the same
    /// `rounding`: targets that differ only in activation encodings share one runner, and an
    /// activation edit rebuilds none.
    pub fn with_runner(
        runner: Arc<FloatRunner>,
        graph: &Graph,
        encodings: &ModelEncodings,
        rounding: Rounding,
    ) -> Result<QuantSim, QuantSimError> {
        let activation_encodings = hooked_encodings(runner.activation_names(), graph, encodings)?;
        let mut warnings: Vec<QuantSimWarning> = runner
            .constant_activations()
            .filter(|name| encodings.activations.contains_key(*name))
            .map(|name| QuantSimWarning::ConstantActivation {
                tensor: name.to_string(),
            })
            .collect();
        let known: BTreeMap<&str, ()> = graph
            .tensors()
            .iter()
            .map(|t| (t.name.as_str(), ()))
            .collect();
        for name in encodings
            .activations
            .keys()
            .chain(encodings.parameters.keys())
        {
            if !known.contains_key(name.as_str()) {
                warnings.push(QuantSimWarning::UnknownTensor {
                    tensor: name.clone(),
                });
            }
        }
        Ok(QuantSim {
            runner,
            activation_encodings,
            rounding,
            warnings,
        })
    }

    /// The runner of the model with fake-quantized parameters; its activation indices are the
    /// ones [`QuantSim::run`] reports.
    pub fn runner(&self) -> &FloatRunner {
        &self.runner
    }

    /// The encoding the hook applies to activation `index`, `None` when it stays float.
    pub fn activation_encoding(&self, index: usize) -> Option<&TensorEncoding> {
        self.activation_encodings
            .get(index)
            .and_then(Option::as_ref)
    }

    /// Whose arithmetic this simulation rounds with.
    pub fn rounding(&self) -> Rounding {
        self.rounding
    }

    /// Things about the encodings the user should know.
    pub fn warnings(&self) -> &[QuantSimWarning] {
        &self.warnings
    }

    /// As [`QuantSim::run`], also calling `before(index, data)` with each activation as its
    /// producer computed it, before it is fake-quantized.
    pub fn run_observed<B, F>(
        &self,
        inputs: &[ArrayD<f32>],
        mut before: B,
        mut observe: F,
    ) -> Result<Vec<ArrayD<f32>>, RunError>
    where
        B: FnMut(usize, &[f32]),
        F: FnMut(usize, &[f32], &[usize]),
    {
        self.runner.run_with_hook(inputs, |index, data, shape| {
            before(index, data);
            if let Some(encoding) = self.activation_encoding(index) {
                // Per-tensor and float encodings cannot fail; per-channel ones were refused
                // when the simulation was built.
                let _ = fake_quantize_tensor_in_place_as(
                    data,
                    shape,
                    encoding,
                    self.rounding.activations(),
                );
            }
            observe(index, data, shape);
        })
    }

    /// Runs one sample as the target computes it and calls `observe(index, data, shape)` with
    /// each activation as its consumers read it (fake-quantized when encoded). Returns the model's
    /// outputs, fake-quantized when they are encoded.
    pub fn run<F>(&self, inputs: &[ArrayD<f32>], observe: F) -> Result<Vec<ArrayD<f32>>, RunError>
    where
        F: FnMut(usize, &[f32], &[usize]),
    {
        self.run_observed(inputs, |_, _| {}, observe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{Bitwidth, Encoding, Schema};

    #[test]
    fn per_channel_count_mismatch_is_an_error() {
        let e = Encoding::from_range(-1.0, 1.0, Bitwidth::B8, Schema::Symmetric).unwrap();
        let encoding = TensorEncoding::PerChannel {
            axis: 0,
            channels: vec![e; 3],
        };
        let err = check_fits("w", &encoding, &[4, 2], 8).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`w`: 3 per-channel encodings for 4 channels along axis 0"
        );
        assert!(check_fits("w", &encoding, &[3, 2], 6).is_ok());
    }
}
