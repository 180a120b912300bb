//! The graph IR: every tensor of a model with its name, type, shape, kind (activation or
//! parameter), role (weight, bias, ...), producer and consumers, the nodes in graph order, the
//! values of every parameter, and the [`EncodingRule`] that says whether and how each tensor gets an
//! encoding (`book/src/tensor-rules.md` explains the rules).
//!
//! **Architecture Invariant:** built only from [`crate::onnx::GraphContents`]; no protobuf type
//! appears here. It must not compute encodings or run the model: it describes, others calculate.

mod build;
mod role;
mod rule;

pub use build::GraphError;
pub use role::Role;
pub use rule::{EncodingRule, NotQuantizedReason};

pub use crate::onnx::{DType, Dim};
use crate::onnx::{OnnxModel, TensorValues};
use std::borrow::Borrow;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

/// The name of a tensor in the ONNX graph, exactly as written there (the key of every encoding).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct TensorName(String);

impl TensorName {
    /// Wraps a name.
    pub fn new(name: impl Into<String>) -> TensorName {
        TensorName(name.into())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TensorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for TensorName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for TensorName {
    fn from(name: &str) -> TensorName {
        TensorName::new(name)
    }
}

/// Index of a node in [`Graph::nodes`] (graph order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

/// A node attribute. Only the scalar and list forms are kept; tensors live in parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Attribute {
    /// An integer, e.g. `transB`, `group`.
    Int(i64),
    /// A float, e.g. `alpha`.
    Float(f32),
    /// A string, e.g. Resize's `mode`.
    String(String),
    /// Integers, e.g. `kernel_shape`.
    Ints(Vec<i64>),
    /// Floats.
    Floats(Vec<f32>),
    /// Strings.
    Strings(Vec<String>),
    /// A tensor (a `Constant` node's value: read it through [`Graph::parameter`]).
    Tensor,
    /// A subgraph or another form the IR does not model.
    Unsupported,
}

/// One node, in graph order.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Position in graph order.
    pub id: NodeId,
    /// Node name; may be empty (paddle2onnx leaves several `Constant` nodes unnamed).
    pub name: String,
    /// Operator type, e.g. `"Conv"`.
    pub op_type: String,
    /// Operator domain, empty for the default ONNX domain.
    pub domain: String,
    /// Inputs in order; `None` for an omitted optional input.
    pub inputs: Vec<Option<TensorName>>,
    /// Outputs in order.
    pub outputs: Vec<TensorName>,
    /// Attributes by name.
    pub attributes: BTreeMap<String, Attribute>,
}

impl Node {
    /// An integer attribute (`transB`, `group`, ...), `None` when absent.
    pub fn int_attribute(&self, name: &str) -> Option<i64> {
        match self.attributes.get(name) {
            Some(Attribute::Int(v)) => Some(*v),
            _ => None,
        }
    }

    /// A string attribute (`mode`, ...), `None` when absent.
    pub fn string_attribute(&self, name: &str) -> Option<&str> {
        match self.attributes.get(name) {
            Some(Attribute::String(v)) => Some(v),
            _ => None,
        }
    }

    /// Whether this is a `Constant` node, whose output is a parameter.
    pub fn is_constant(&self) -> bool {
        self.op_type == "Constant" && self.domain.is_empty()
    }
}

/// Where a parameter's values are stored in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParameterSource {
    /// A graph initializer.
    Initializer,
    /// The output of a `Constant` node (how PaddlePaddle exports keep every weight).
    ConstantNode,
}

/// Activation or parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorKind {
    /// A graph input or the output of a non-`Constant` node: values come from running the model.
    Activation,
    /// An initializer or a `Constant` output: values are in the model.
    Parameter(ParameterSource),
}

impl TensorKind {
    /// Whether this is a parameter.
    pub fn is_parameter(self) -> bool {
        matches!(self, TensorKind::Parameter(_))
    }
}

/// The node that writes a tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    /// The node.
    pub node: NodeId,
    /// Its operator type.
    pub op_type: String,
    /// Its name (may be empty).
    pub node_name: String,
    /// Which of its outputs this tensor is.
    pub output_index: usize,
}

/// One use of a tensor as a node input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    /// The consuming node.
    pub node: NodeId,
    /// Its operator type.
    pub op_type: String,
    /// Its name (may be empty).
    pub node_name: String,
    /// Which of its inputs the tensor is.
    pub input_index: usize,
}

/// Everything the IR knows about one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// The ONNX name.
    pub name: TensorName,
    /// Element type, `None` when neither declared nor inferable.
    pub dtype: Option<DType>,
    /// Shape as declared in the model (inputs, outputs, `value_info`) or stored (parameters);
    /// `None` when the model does not say. No shape inference is done.
    pub shape: Option<Vec<Dim>>,
    /// Activation or parameter.
    pub kind: TensorKind,
    /// What the tensor is for.
    pub role: Role,
    /// The writing node: `None` for graph inputs and initializers; the `Constant` node for
    /// Constant parameters.
    pub producer: Option<Producer>,
    /// Every use as a node input, in graph order.
    pub consumers: Vec<Use>,
    /// Whether it is one of the graph's outputs.
    pub is_graph_output: bool,
    /// Whether and how it gets an encoding.
    pub rule: EncodingRule,
}

impl Tensor {
    /// Whether this is a float activation (graph input or node output of a real float type).
    pub fn is_float_activation(&self) -> bool {
        self.kind == TensorKind::Activation && self.dtype.is_some_and(DType::is_float)
    }

    /// Whether this is a float parameter.
    pub fn is_float_parameter(&self) -> bool {
        self.kind.is_parameter() && self.dtype.is_some_and(DType::is_float)
    }
}

/// A parameter's stored values, widened to `f32` (float types) or `i64` (integer types). Float
/// values read from a model stay in the model's buffer and are widened on each read, so a graph
/// holds no second copy of the weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterData {
    /// Dims (empty for a scalar).
    pub shape: Vec<usize>,
    /// Values in row-major order.
    pub values: TensorValues,
}

impl ParameterData {
    /// The values as `f32`, for float parameters.
    pub fn as_f32(&self) -> Option<Cow<'_, [f32]>> {
        self.values.floats()
    }

    /// Whether the values are floats, without decoding them.
    pub fn is_float(&self) -> bool {
        matches!(
            self.values,
            TensorValues::Float(_) | TensorValues::Stored(_)
        )
    }

    /// The values as `i64`, for integer parameters (shapes, axes, indices).
    pub fn as_i64(&self) -> Option<&[i64]> {
        self.values.ints()
    }

    /// The float values as an n-dimensional array (per-channel statistics index it by axis).
    pub fn as_array(&self) -> Option<ndarray::CowArray<'_, f32, ndarray::IxDyn>> {
        let shape = ndarray::IxDyn(&self.shape);
        match self.as_f32()? {
            Cow::Borrowed(values) => ndarray::ArrayViewD::from_shape(shape, values)
                .ok()
                .map(Into::into),
            Cow::Owned(values) => ndarray::ArrayD::from_shape_vec(shape, values)
                .ok()
                .map(Into::into),
        }
    }
}

/// Tensor counts of a graph, as `quant inspect` and the reference float statistics report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Counts {
    /// Float activations (graph inputs and float node outputs).
    pub float_activations: usize,
    /// Float parameters (initializers and `Constant` outputs).
    pub float_parameters: usize,
    /// Tensors of other types (shape tensors, indices, ...).
    pub non_float: usize,
    /// Tensors whose rule is [`EncodingRule::Own`].
    pub own_encodings: usize,
    /// Tensors whose rule is [`EncodingRule::SharesInput`].
    pub shared_encodings: usize,
    /// Float tensors with [`EncodingRule::NotQuantized`].
    pub not_quantized: usize,
}

/// The IR of one model's main graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    opset: Option<i64>,
    inputs: Vec<TensorName>,
    outputs: Vec<TensorName>,
    tensors: Vec<Tensor>,
    index: HashMap<TensorName, usize>,
    nodes: Vec<Node>,
    parameters: HashMap<TensorName, ParameterData>,
}

impl Graph {
    /// Reads a model file and builds its IR.
    pub fn read(path: &Path) -> Result<Graph, GraphError> {
        Graph::from_model(&OnnxModel::read(path)?)
    }

    /// Builds the IR of a decoded model.
    pub fn from_model(model: &OnnxModel) -> Result<Graph, GraphError> {
        build::build(model.contents()?, model.origin())
    }

    /// Builds the IR from transcribed contents; `origin` is the path named in errors.
    pub fn from_contents(
        contents: crate::onnx::GraphContents,
        origin: &Path,
    ) -> Result<Graph, GraphError> {
        build::build(contents, origin)
    }

    /// Opset version of the default ONNX domain.
    pub fn opset(&self) -> Option<i64> {
        self.opset
    }

    /// Graph inputs that are activations (initializers listed as inputs are left out).
    pub fn inputs(&self) -> &[TensorName] {
        &self.inputs
    }

    /// Graph outputs.
    pub fn outputs(&self) -> &[TensorName] {
        &self.outputs
    }

    /// Every tensor: graph inputs, then initializers, then node outputs in graph order.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    /// One tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// Nodes in graph order (including `Constant` nodes).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// One node.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    /// A parameter's values and shape, `None` for activations and unknown names.
    pub fn parameter(&self, name: &str) -> Option<&ParameterData> {
        self.parameters.get(name)
    }

    /// Float activations, in [`Graph::tensors`] order.
    pub fn float_activations(&self) -> impl Iterator<Item = &Tensor> {
        self.tensors.iter().filter(|t| t.is_float_activation())
    }

    /// Float parameters, in [`Graph::tensors`] order.
    pub fn float_parameters(&self) -> impl Iterator<Item = &Tensor> {
        self.tensors.iter().filter(|t| t.is_float_parameter())
    }

    /// The tensor whose own statistics determine `name`'s encoding: `name` itself for
    /// [`EncodingRule::Own`], the end of the [`EncodingRule::SharesInput`] chain otherwise;
    /// `None` for tensors without an encoding.
    pub fn encoding_source(&self, name: &str) -> Option<&TensorName> {
        let mut tensor = self.tensor(name)?;
        // Chains are acyclic (a link points to an earlier tensor, or from a Concat input to its
        // output, which shares nothing); the bound guards bad input.
        for _ in 0..=self.tensors.len() {
            match &tensor.rule {
                EncodingRule::Own => return Some(&tensor.name),
                EncodingRule::SharesInput(input) => tensor = self.tensor(input.as_str())?,
                EncodingRule::NotFloat | EncodingRule::NotQuantized(_) => return None,
            }
        }
        None
    }

    /// Replaces one tensor's rule (a quantsim config's placement, [`crate::placement`]);
    /// `false` when the graph has no such tensor.
    pub fn set_rule(&mut self, name: &str, rule: EncodingRule) -> bool {
        match self.index.get(name) {
            Some(&i) => {
                self.tensors[i].rule = rule;
                true
            }
            None => false,
        }
    }

    /// Counts of tensors by kind, type and rule.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for t in &self.tensors {
            if t.is_float_activation() {
                counts.float_activations += 1;
            } else if t.is_float_parameter() {
                counts.float_parameters += 1;
            } else {
                counts.non_float += 1;
            }
            match t.rule {
                EncodingRule::Own => counts.own_encodings += 1,
                EncodingRule::SharesInput(_) => counts.shared_encodings += 1,
                EncodingRule::NotQuantized(_) => counts.not_quantized += 1,
                EncodingRule::NotFloat => {}
            }
        }
        counts
    }
}
