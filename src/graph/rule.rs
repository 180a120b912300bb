//! Which tensors get an encoding, and whose: the per-tensor [`EncodingRule`]. The rules are
//! explained, with their reasons and how they compare to onnxruntime and AIMET, in
//! `book/src/tensor-rules.md`; keep the two in step. It must not compute encodings.

use super::{Attribute, Node, ParameterData, Role, TensorName};
use std::fmt;

/// Whether and how a tensor gets an encoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EncodingRule {
    /// Encoded from its own statistics (activations) or values (parameters).
    Own,
    /// Takes the named tensor's encoding. Without a quantsim config: a data-movement output
    /// (Reshape, Transpose, Flatten, nearest upsampling Resize, ...) holds exactly the named
    /// input's values, so it takes that input's encoding. With one: AIMET's tied quantizers (a
    /// Relu, AveragePool or Resize output takes its input's, a single-consumer Concat input the
    /// Concat output's), see `crate::placement`. The named tensor may itself share;
    /// [`super::Graph::encoding_source`] follows the chain.
    SharesInput(TensorName),
    /// Not a float tensor (shape tensors, indices, masks): never encoded.
    NotFloat,
    /// A float tensor that is deliberately left in float.
    NotQuantized(NotQuantizedReason),
}

impl EncodingRule {
    /// Whether the tensor ends up with an encoding (its own or a shared one).
    pub fn is_encoded(&self) -> bool {
        matches!(self, EncodingRule::Own | EncodingRule::SharesInput(_))
    }
}

/// Why a float tensor gets no encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotQuantizedReason {
    /// It steers shapes or indexing (Resize scales/roi, ...): rounding it would change the graph,
    /// not its precision.
    ShapeOperand,
    /// No node reads it.
    Unused,
    /// It has no elements, so there is no range to encode.
    Empty,
    /// The model does not say its element type and it cannot be inferred.
    UnknownType,
    /// A BatchNormalization mean or variance: the converter folds batch norm into the
    /// preceding convolution before quantizing, so these never exist as integer tensors on the
    /// target (onnxruntime and AIMET leave them float too). Quantizing a variance per tensor would even round
    /// small channels to zero and blow the normalization up.
    BatchNormStatistic,
    /// An AIMET quantsim config leaves this parameter without a quantizer (`params`, e.g.
    /// `bias.is_quantized: False`).
    ConfigParameter,
    /// The first op of a quantsim config's supergroup (Conv+Relu, ...): the chain runs fused,
    /// with no quantizer between its ops.
    Supergroup,
    /// The output of an op AIMET never quantizes (Reshape, Transpose, Flatten, Split, ...).
    DataMovement,
    /// The output of a grid-preserving op (MaxPool, Slice, Pad, ...) whose type the quantsim
    /// config does not name: it stays on its input's grid.
    GridPreserving,
    /// The quantsim config turns this output or input off (`is_output_quantized: False`,
    /// `model_input`, `model_output`).
    ConfigDisabled,
}

impl fmt::Display for NotQuantizedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotQuantizedReason::ShapeOperand => "shape operand",
            NotQuantizedReason::Unused => "unused",
            NotQuantizedReason::Empty => "no elements",
            NotQuantizedReason::UnknownType => "unknown type",
            NotQuantizedReason::BatchNormStatistic => {
                "batch-norm statistic (folded by the converter)"
            }
            NotQuantizedReason::ConfigParameter => "parameter not quantized by the quantsim config",
            NotQuantizedReason::Supergroup => "inside a supergroup of the quantsim config",
            NotQuantizedReason::DataMovement => "data-movement output (AIMET quantizes none)",
            NotQuantizedReason::GridPreserving => "grid-preserving op's output",
            NotQuantizedReason::ConfigDisabled => "turned off by the quantsim config",
        })
    }
}

impl fmt::Display for EncodingRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodingRule::Own => f.write_str("own"),
            EncodingRule::SharesInput(input) => write!(f, "shares {input}"),
            EncodingRule::NotFloat => f.write_str("none: not float"),
            EncodingRule::NotQuantized(reason) => write!(f, "none: {reason}"),
        }
    }
}

/// The rule for a float parameter with this role and element count.
pub(super) fn parameter_rule(role: Role, elements: Option<usize>) -> EncodingRule {
    match role {
        Role::ShapeOperand => EncodingRule::NotQuantized(NotQuantizedReason::ShapeOperand),
        Role::Unused => EncodingRule::NotQuantized(NotQuantizedReason::Unused),
        Role::BatchNormMean | Role::BatchNormVariance => {
            EncodingRule::NotQuantized(NotQuantizedReason::BatchNormStatistic)
        }
        _ if elements == Some(0) => EncodingRule::NotQuantized(NotQuantizedReason::Empty),
        _ => EncodingRule::Own,
    }
}

/// Whether output `output_index` of `node` holds exactly the values of its input 0 — every one of
/// them, rearranged or repeated — so its own range would equal the input's and sharing the
/// input's encoding changes no number. Ops that select a subset (Slice, Gather, Split, MaxPool,
/// downsampling Resize) can narrow the range and keep their own encoding.
/// `constant` looks up a parameter's values (Resize/Upsample scales).
pub(super) fn moves_data<'a>(
    node: &Node,
    output_index: usize,
    constant: impl Fn(&TensorName) -> Option<&'a ParameterData>,
) -> bool {
    if output_index != 0 || !(node.domain.is_empty() || node.domain == "ai.onnx") {
        return false;
    }
    match node.op_type.as_str() {
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Transpose" | "Identity"
        | "DepthToSpace" | "SpaceToDepth" | "Expand" => true,
        "Resize" | "Upsample" => {
            // Linear and cubic interpolate (cubic even overshoots); nearest copies values, and
            // with integer scales >= 1 it copies every one of them.
            let nearest = node.string_attribute("mode").unwrap_or("nearest") == "nearest";
            let cropping = node.string_attribute("coordinate_transformation_mode")
                == Some("tf_crop_and_resize");
            let scales_input = if node.op_type == "Resize" { 2 } else { 1 };
            let scales: Option<Vec<f32>> = match node.attributes.get("scales") {
                Some(Attribute::Floats(scales)) => Some(scales.clone()),
                _ => node
                    .inputs
                    .get(scales_input)
                    .and_then(Option::as_ref)
                    .and_then(constant)
                    .and_then(|data| data.as_f32())
                    .map(std::borrow::Cow::into_owned),
            };
            nearest
                && !cropping
                && scales.is_some_and(|s| {
                    !s.is_empty() && s.iter().all(|&v| v >= 1.0 && v.fract() == 0.0)
                })
        }
        _ => false,
    }
}
