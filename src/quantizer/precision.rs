//! Which ops compute in what: float16, float32 or int32, derived from the encodings the
//! quantizer chose (and, for a non-quantized model, from the target's float bitwidth).
//!
//! The specification's rules:
//! - every op computes in one type: all its inputs, outputs and parameters are integer, or all
//!   are float (*Mixed Precision and FP16 Support*). An op's type is its output's: an output
//!   kept `dtype: "float"` makes a float op at that bitwidth;
//! - Conv (and Conv3d, depthwise Conv), ConvTranspose, Gemm and MatMul: if any of output,
//!   weight or bias is float, all three are, at the bitwidth of the overriding tensor
//!   ([`implied_float`]);
//! - an op whose inputs and outputs are all INT32 runs in int32 (*INT32 Overrides*); one with
//!   weights or bias cannot ([`PrecisionError::Int32WithParameters`]), nor one ONNX cannot run
//!   in int32 ([`PrecisionError::Int32Unsupported`]).
//!
//! A tensor between an integer op and a float (or int32) op is converted: the integer side
//! reads it quantized with an encoding calibrated as any activation's ([`Conversions`]), which
//! is what qairt-converter's inserted Convert ops are given.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::encoding::{Bitwidth, FloatBitwidth, TensorEncoding};
use crate::graph::{Graph, Node, Role};
use crate::onnx::DType;
use crate::onnx::precision::{NodePrecision, PrecisionPlan};
use crate::overrides::{FixedEncoding, Override, Overrides};

/// Ops whose weight and bias follow their output into float (the specification's list).
const WEIGHTED_OPS: &[&str] = &["Conv", "ConvTranspose", "Gemm", "MatMul"];

/// Ops ONNX defines on int32 for every data input (opset 13 and later), which onnxruntime
/// runs on its CPU provider.
const INT32_OPS: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Abs",
    "Max",
    "Min",
    "Concat",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Gather",
    "Split",
    "Tile",
    "Expand",
    "Identity",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
];

/// Why the encodings ask for a precision the specification forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrecisionError {
    /// INT32 on an op with weights or bias.
    #[error(
        "`{op}` ({op_type}) has all its inputs and outputs overridden to INT32, but it has a {role}: INT32 overrides are only for ops without weights and bias"
    )]
    Int32WithParameters {
        /// The op's name (or its first output's).
        op: String,
        /// Its type.
        op_type: String,
        /// "weight" or "bias".
        role: &'static str,
        /// The overridden tensors, to point at their entries.
        tensors: Vec<String>,
    },
    /// INT32 on an op ONNX cannot run in int32.
    #[error(
        "`{op}` ({op_type}) has all its inputs and outputs overridden to INT32, but ONNX has no int32 {op_type}"
    )]
    Int32Unsupported {
        /// The op's name (or its first output's).
        op: String,
        /// Its type.
        op_type: String,
        /// The overridden tensors.
        tensors: Vec<String>,
    },
}

impl PrecisionError {
    /// The tensors whose override entries caused the error.
    pub fn tensors(&self) -> &[String] {
        match self {
            PrecisionError::Int32WithParameters { tensors, .. }
            | PrecisionError::Int32Unsupported { tensors, .. } => tensors,
        }
    }
}

/// The float bitwidth `name` takes because a weighted op it belongs to is float: the
/// override of the op's output, weight or bias that says `dtype: "float"`. `None` when the
/// tensor has its own override or belongs to no such op. `float_bias` is
/// `--float_bias_bitwidth`, which a bias without an entry takes instead.
pub fn implied_float(
    graph: &Graph,
    overrides: &Overrides,
    name: &str,
    float_bias: Option<FloatBitwidth>,
) -> Option<FloatBitwidth> {
    if overrides.get(name).is_some() {
        return None;
    }
    let tensor = graph.tensor(name)?;
    let mut ops: Vec<&Node> = tensor
        .consumers
        .iter()
        .filter(|u| matches!(u.input_index, 1 | 2))
        .map(|u| graph.node(u.node))
        .collect();
    if let Some(p) = &tensor.producer {
        ops.push(graph.node(p.node));
    }
    for node in ops {
        if !WEIGHTED_OPS.contains(&node.op_type.as_str()) {
            continue;
        }
        let members = node
            .outputs
            .first()
            .into_iter()
            .chain(node.inputs.iter().skip(1).take(2).flatten());
        for member in members {
            if let Some(Override::Fixed(FixedEncoding::Float(bits))) =
                overrides.get(member.as_str())
            {
                let is_bias = tensor.role == Role::Bias;
                return Some(if is_bias {
                    float_bias.unwrap_or(*bits)
                } else {
                    *bits
                });
            }
        }
    }
    None
}

/// `overrides` with every [`implied_float`] entry added (borrowed when there is none).
pub fn with_implied_floats<'a>(
    graph: &Graph,
    overrides: &'a Overrides,
    float_bias: Option<FloatBitwidth>,
) -> std::borrow::Cow<'a, Overrides> {
    let mut implied: Vec<(String, FloatBitwidth, bool)> = Vec::new();
    for tensor in graph.tensors() {
        let name = tensor.name.as_str();
        if let Some(bits) = implied_float(graph, overrides, name, float_bias) {
            implied.push((name.to_string(), bits, tensor.kind.is_parameter()));
        }
    }
    if implied.is_empty() {
        return std::borrow::Cow::Borrowed(overrides);
    }
    let mut out = overrides.clone();
    for (name, bits, parameter) in implied {
        let entry = Override::Fixed(FixedEncoding::Float(bits));
        let section = if parameter {
            &mut out.parameters
        } else {
            &mut out.activations
        };
        section.insert(name, entry);
    }
    std::borrow::Cow::Owned(out)
}

/// What the QDQ export needs to write a mixed-precision graph.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conversions {
    /// Each non-integer op's precision, by its first output.
    pub ops: BTreeMap<String, NodePrecision>,
    /// Float and INT32 activations an integer op writes or reads: they need an integer
    /// encoding for that side, calibrated as any activation's.
    pub converted: BTreeSet<String>,
}

fn is_int32(encoding: &TensorEncoding) -> bool {
    match encoding {
        TensorEncoding::PerTensor(e) => e.bitwidth == Bitwidth::B32,
        _ => false,
    }
}

fn float_bits(encoding: &TensorEncoding) -> Option<FloatBitwidth> {
    match encoding {
        TensorEncoding::Float { bitwidth } => Some(*bitwidth),
        _ => None,
    }
}

fn op_label(node: &Node) -> String {
    if node.name.is_empty() {
        node.outputs
            .first()
            .map(|o| o.as_str().to_string())
            .unwrap_or_default()
    } else {
        node.name.clone()
    }
}

/// The ops of a quantized graph that do not run in integer, from the activation encodings
/// (`activations`: every activation's encoding by name, shared ones included) and the tensors
/// the overrides make INT32 (`int32`). An op runs in int32 only when the overrides say so for
/// every one of its inputs and outputs: a data-movement output that merely shares an INT32
/// tensor's encoding does not make its op an int32 op, it is converted like any other.
pub fn conversions(
    graph: &Graph,
    activations: &BTreeMap<String, TensorEncoding>,
    int32: &BTreeSet<&str>,
) -> Result<Conversions, PrecisionError> {
    let mut out = Conversions::default();
    for node in graph.nodes() {
        let Some(first) = node.outputs.first() else {
            continue;
        };
        let float_outputs: Vec<&str> = node
            .outputs
            .iter()
            .map(|o| o.as_str())
            .filter(|o| graph.tensor(o).is_some_and(|t| t.is_float_activation()))
            .collect();
        let float_inputs: Vec<&str> = node
            .inputs
            .iter()
            .flatten()
            .map(|i| i.as_str())
            .filter(|i| graph.tensor(i).is_some_and(|t| t.is_float_activation()))
            .collect();
        if let Some(bits) = float_outputs
            .iter()
            .find_map(|o| activations.get(*o).and_then(float_bits))
        {
            let precision = match bits {
                FloatBitwidth::F16 => NodePrecision::Float16,
                FloatBitwidth::F32 => NodePrecision::Float32,
            };
            out.ops.insert(first.as_str().to_string(), precision);
            continue;
        }
        let all: Vec<&str> = float_inputs.iter().chain(&float_outputs).copied().collect();
        let int32_op = !all.is_empty() && all.iter().all(|t| int32.contains(t));
        if !int32_op {
            continue;
        }
        let tensors: Vec<String> = all.iter().map(|t| t.to_string()).collect();
        if let Some(role) = node.inputs.iter().flatten().find_map(|i| {
            match graph.tensor(i.as_str()).map(|t| t.role) {
                Some(Role::Weight { .. }) => Some("weight"),
                Some(Role::Bias) => Some("bias"),
                _ => None,
            }
        }) {
            return Err(PrecisionError::Int32WithParameters {
                op: op_label(node),
                op_type: node.op_type.clone(),
                role,
                tensors,
            });
        }
        if !node.domain.is_empty() || !INT32_OPS.contains(&node.op_type.as_str()) {
            return Err(PrecisionError::Int32Unsupported {
                op: op_label(node),
                op_type: node.op_type.clone(),
                tensors,
            });
        }
        out.ops
            .insert(first.as_str().to_string(), NodePrecision::Int32);
    }
    // A non-integer activation with an integer op on either side is converted there.
    let precision_of = |node: &Node| {
        node.outputs
            .first()
            .and_then(|o| out.ops.get(o.as_str()))
            .copied()
    };
    let mut converted = BTreeSet::new();
    for (name, encoding) in activations {
        if float_bits(encoding).is_none() && !is_int32(encoding) {
            continue;
        }
        let Some(tensor) = graph.tensor(name) else {
            continue;
        };
        let integer_producer = tensor
            .producer
            .as_ref()
            .is_some_and(|p| precision_of(graph.node(p.node)).is_none());
        let integer_reader = tensor
            .consumers
            .iter()
            .any(|u| precision_of(graph.node(u.node)).is_none());
        if integer_producer || integer_reader {
            converted.insert(name.clone());
        }
    }
    out.converted = converted;
    Ok(out)
}

/// The float32 tensors of `graph`: what a precision rewrite may cast or convert.
pub fn float32_tensors(graph: &Graph) -> HashSet<String> {
    graph
        .tensors()
        .iter()
        .filter(|t| t.dtype == Some(DType::Float32))
        .map(|t| t.name.as_str().to_string())
        .collect()
}

/// Ops a float16 model keeps in float32: control flow (its subgraphs are not rewritten) and
/// operators outside the ONNX domain, whose types quant cannot know.
fn stays_float32(node: &Node) -> bool {
    !node.domain.is_empty() || matches!(node.op_type.as_str(), "If" | "Loop" | "Scan")
}

/// The plan of a non-quantized FP16 model: every op with a float32 input or output runs in
/// float16, its stored floats converted; `keep_io_types` keeps the graph's inputs and outputs
/// float32 with casts inside.
pub fn float16_model(graph: &Graph, keep_io_types: bool) -> PrecisionPlan {
    let float32 = float32_tensors(graph);
    let mut nodes = BTreeMap::new();
    for node in graph.nodes() {
        if stays_float32(node) || node.is_constant() {
            continue;
        }
        let touches_float = node
            .inputs
            .iter()
            .flatten()
            .chain(&node.outputs)
            .any(|t| float32.contains(t.as_str()));
        if let (true, Some(first)) = (touches_float, node.outputs.first()) {
            nodes.insert(first.as_str().to_string(), NodePrecision::Float16);
        }
    }
    PrecisionPlan {
        nodes,
        float32,
        quantized: HashSet::new(),
        keep_io_types,
    }
}
