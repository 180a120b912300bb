//! What a tensor is for: a parameter's role comes from its consumers' op types and input indices
//! (Conv input 1 is a weight, input 2 a bias, ...). It must not decide encodings; `rule` does,
//! partly from the role.

use super::{Node, Use};
use std::fmt;

/// What a tensor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An activation fed from outside (a graph input).
    GraphInput,
    /// An activation written by a node.
    NodeOutput,
    /// Input 1 of Conv, ConvTranspose, Gemm or MatMul.
    Weight {
        /// The axis holding output channels: Conv 0, ConvTranspose 1, Gemm 0 with `transB = 1`
        /// else 1, MatMul the last axis (1 for a 2-D weight). Per-channel encodings run along it.
        output_channel_axis: usize,
    },
    /// Input 2 of Conv, ConvTranspose or Gemm.
    Bias,
    /// BatchNormalization input 1.
    BatchNormScale,
    /// BatchNormalization input 2.
    BatchNormBias,
    /// BatchNormalization input 3.
    BatchNormMean,
    /// BatchNormalization input 4.
    BatchNormVariance,
    /// An input that steers shapes or indexing rather than carrying data: Reshape's shape,
    /// Resize's roi/scales/sizes, Slice's starts/ends/axes/steps, Squeeze/Unsqueeze axes, ...
    ShapeOperand,
    /// Any other constant operand (e.g. the `3.0` of hard-swish, Clip bounds, Mul/Add constants).
    Operand,
    /// A parameter no node reads.
    Unused,
}

impl Role {
    /// Whether the role is a weight (any output-channel axis).
    pub fn is_weight(self) -> bool {
        matches!(self, Role::Weight { .. })
    }

    /// How strongly a use defines the parameter when several uses disagree: a tensor that is a
    /// weight anywhere is a weight.
    fn precedence(self) -> u8 {
        match self {
            Role::Weight { .. } => 6,
            Role::Bias => 5,
            Role::BatchNormScale
            | Role::BatchNormBias
            | Role::BatchNormMean
            | Role::BatchNormVariance => 4,
            Role::Operand => 3,
            Role::ShapeOperand => 2,
            Role::Unused | Role::GraphInput | Role::NodeOutput => 0,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::GraphInput => f.write_str("graph input"),
            Role::NodeOutput => f.write_str("node output"),
            Role::Weight {
                output_channel_axis,
            } => write!(f, "weight (channel axis {output_channel_axis})"),
            Role::Bias => f.write_str("bias"),
            Role::BatchNormScale => f.write_str("batchnorm scale"),
            Role::BatchNormBias => f.write_str("batchnorm bias"),
            Role::BatchNormMean => f.write_str("batchnorm mean"),
            Role::BatchNormVariance => f.write_str("batchnorm variance"),
            Role::ShapeOperand => f.write_str("shape operand"),
            Role::Operand => f.write_str("operand"),
            Role::Unused => f.write_str("unused"),
        }
    }
}

/// The role one use gives a parameter. `rank` is the parameter's rank when known.
pub(super) fn role_of_use(node: &Node, input_index: usize, rank: Option<usize>) -> Role {
    let default_domain = node.domain.is_empty() || node.domain == "ai.onnx";
    if !default_domain {
        return Role::Operand;
    }
    match (node.op_type.as_str(), input_index) {
        ("Conv", 1) => Role::Weight {
            output_channel_axis: 0,
        },
        ("ConvTranspose", 1) => Role::Weight {
            output_channel_axis: 1,
        },
        ("Gemm", 1) => Role::Weight {
            output_channel_axis: if node.int_attribute("transB") == Some(1) {
                0
            } else {
                1
            },
        },
        ("MatMul", 1) => Role::Weight {
            output_channel_axis: rank.filter(|&r| r >= 2).map_or(1, |r| r - 1),
        },
        ("Conv" | "ConvTranspose" | "Gemm", 2) => Role::Bias,
        ("BatchNormalization", 1) => Role::BatchNormScale,
        ("BatchNormalization", 2) => Role::BatchNormBias,
        ("BatchNormalization", 3) => Role::BatchNormMean,
        ("BatchNormalization", 4) => Role::BatchNormVariance,
        ("Reshape" | "Expand" | "Tile" | "Squeeze" | "Unsqueeze" | "TopK" | "Split", 1)
        | ("Upsample", 1)
        | ("Resize", 1..=3)
        | ("Slice", 1..=4)
        | ("Pad", 1 | 3)
        | ("ConstantOfShape", 0)
        | ("Gather" | "GatherElements" | "GatherND" | "OneHot", 1) => Role::ShapeOperand,
        (op, 1) if op.starts_with("Reduce") => Role::ShapeOperand,
        _ => Role::Operand,
    }
}

/// The role of a parameter given all its uses: the strongest use wins, a parameter read by no
/// node is [`Role::Unused`].
pub(super) fn parameter_role(uses: &[Use], nodes: &[Node], rank: Option<usize>) -> Role {
    uses.iter()
        .map(|u| role_of_use(&nodes[u.node.0], u.input_index, rank))
        // `max_by_key` keeps the last of equal maxima; reversed, the first use wins ties.
        .rev()
        .max_by_key(|r| r.precedence())
        .unwrap_or(Role::Unused)
}
