//! Which tensors get an encoding, and whose: the per-tensor [`EncodingRule`]. The rules are
//! explained, with their reasons and how they compare to onnxruntime and AIMET, in
//! `book/src/tensor-rules.md`; keep the two in step. It must not compute encodings.

use super::{Node, Role, TensorName};
use std::fmt;

/// Whether and how a tensor gets an encoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EncodingRule {
    /// Encoded from its own statistics (activations) or values (parameters).
    Own,
    /// A data-movement output (Reshape, Transpose, MaxPool, nearest Resize, ...): every value is a
    /// value of the named input, so it takes that input's encoding. The input may itself share;
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
}

impl fmt::Display for NotQuantizedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotQuantizedReason::ShapeOperand => "shape operand",
            NotQuantizedReason::Unused => "unused",
            NotQuantizedReason::Empty => "no elements",
            NotQuantizedReason::UnknownType => "unknown type",
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
        _ if elements == Some(0) => EncodingRule::NotQuantized(NotQuantizedReason::Empty),
        _ => EncodingRule::Own,
    }
}

/// Whether output `output_index` of `node` holds only values of its input 0, laid out anew —
/// so it can reuse input 0's encoding without widening or losing anything.
pub(super) fn moves_data(node: &Node, output_index: usize) -> bool {
    if !(node.domain.is_empty() || node.domain == "ai.onnx") {
        return false;
    }
    match node.op_type.as_str() {
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Transpose" | "Identity" | "Slice"
        | "Gather" | "GatherElements" | "GatherND" | "Tile" | "Expand" | "DepthToSpace"
        | "SpaceToDepth" => output_index == 0,
        // Every output of Split is a piece of the input.
        "Split" => true,
        // Output 1 is the int64 indices.
        "MaxPool" => output_index == 0,
        // Only nearest-neighbour resizing copies values; linear and cubic interpolate (cubic
        // even overshoots the input range).
        "Resize" | "Upsample" => {
            output_index == 0 && node.string_attribute("mode").unwrap_or("nearest") == "nearest"
        }
        _ => false,
    }
}
