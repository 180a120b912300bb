//! Building the IR from transcribed model contents: tensors in a fixed order, producers and
//! consumers, element types (declared, or inferred per op when the exporter wrote no
//! `value_info`), roles and encoding rules. It must not read files or protobuf.

use super::role::parameter_role;
use super::rule::{moves_data, parameter_rule};
use super::{
    Attribute, EncodingRule, Graph, Node, NodeId, NotQuantizedReason, ParameterData,
    ParameterSource, Producer, Role, Tensor, TensorKind, TensorName, Use,
};
use crate::onnx::{
    AttributeValue, DType, Dim, GraphContents, NodeContents, OnnxError, TensorContents,
    TensorValues, ValueInfo,
};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Why a model's graph could not be turned into the IR.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Reading or decoding the model failed.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// A node reads a tensor nothing defines.
    #[error("in {}: node `{node}` ({op_type}) reads `{tensor}`, which no graph input, initializer or node output defines", path.display())]
    UndefinedTensor {
        /// The model path.
        path: PathBuf,
        /// The reading node's name.
        node: String,
        /// Its operator type.
        op_type: String,
        /// The missing tensor.
        tensor: String,
    },
    /// Two definitions of one name (ONNX graphs are single-assignment).
    #[error("in {}: tensor `{tensor}` is defined more than once", path.display())]
    DuplicateTensor {
        /// The model path.
        path: PathBuf,
        /// The name.
        tensor: String,
    },
    /// A graph output nothing defines.
    #[error("in {}: graph output `{tensor}` is defined by no graph input, initializer or node", path.display())]
    UndefinedOutput {
        /// The model path.
        path: PathBuf,
        /// The output's name.
        tensor: String,
    },
    /// Nodes that read each other's outputs in a circle: no order runs them.
    #[error("in {}: nodes read each other's outputs in a cycle: {}", path.display(), cycle.join(" → "))]
    Cycle {
        /// The model path.
        path: PathBuf,
        /// The nodes on the cycle, each as `name (op)`, the first repeated at the end.
        cycle: Vec<String>,
    },
}

pub(super) fn build(contents: GraphContents, origin: &Path) -> Result<Graph, GraphError> {
    let mut declared: HashMap<&str, &ValueInfo> = HashMap::new();
    for info in contents
        .value_info
        .iter()
        .chain(&contents.outputs)
        .chain(&contents.inputs)
    {
        declared.insert(info.name.as_str(), info);
    }

    let nodes: Vec<Node> = contents
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| node(NodeId(i), n))
        .collect();

    let mut builder = Builder {
        origin,
        tensors: Vec::new(),
        index: HashMap::new(),
        parameters: HashMap::new(),
    };

    let initializer_names: std::collections::HashSet<&str> = contents
        .initializers
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    let mut inputs = Vec::new();
    for input in &contents.inputs {
        // Models older than IR 4 list initializers as inputs too; those are parameters.
        if initializer_names.contains(input.name.as_str()) {
            continue;
        }
        let name = TensorName::new(input.name.clone());
        inputs.push(name.clone());
        builder.add(activation(
            name,
            input.dtype,
            input.shape.clone(),
            Role::GraphInput,
            None,
        ))?;
    }
    for init in &contents.initializers {
        builder.add_parameter(init.name.clone(), ParameterSource::Initializer, None, init)?;
    }
    for (n, node) in contents.nodes.iter().zip(&nodes) {
        if node.is_constant() {
            let Some(output) = n.outputs.first().filter(|o| !o.is_empty()) else {
                continue;
            };
            let value = constant_value(n);
            builder.add_parameter(
                output.clone(),
                ParameterSource::ConstantNode,
                Some(producer(node, 0)),
                &value,
            )?;
            continue;
        }
        for (k, output) in n.outputs.iter().enumerate() {
            if output.is_empty() {
                continue;
            }
            let info = declared.get(output.as_str());
            let dtype = info
                .and_then(|i| i.dtype)
                .or_else(|| infer_dtype(node, k, &builder));
            let shape = info.and_then(|i| i.shape.clone());
            let name = TensorName::new(output.clone());
            builder.add(activation(
                name,
                dtype,
                shape,
                Role::NodeOutput,
                Some(producer(node, k)),
            ))?;
        }
    }

    // Consumers, then roles: a parameter's role depends on every use.
    for node in &nodes {
        for (k, input) in node.inputs.iter().enumerate() {
            let Some(input) = input else { continue };
            let Some(&i) = builder.index.get(input) else {
                return Err(GraphError::UndefinedTensor {
                    path: origin.to_owned(),
                    node: node.name.clone(),
                    op_type: node.op_type.clone(),
                    tensor: input.to_string(),
                });
            };
            builder.tensors[i].consumers.push(Use {
                node: node.id,
                op_type: node.op_type.clone(),
                node_name: node.name.clone(),
                input_index: k,
            });
        }
    }
    let outputs: Vec<TensorName> = contents
        .outputs
        .iter()
        .map(|o| TensorName::new(o.name.clone()))
        .collect();
    for output in &outputs {
        let Some(&i) = builder.index.get(output) else {
            return Err(GraphError::UndefinedOutput {
                path: origin.to_owned(),
                tensor: output.as_str().to_string(),
            });
        };
        builder.tensors[i].is_graph_output = true;
    }
    if let Some(cycle) = find_cycle(&nodes, &builder) {
        return Err(GraphError::Cycle {
            path: origin.to_owned(),
            cycle,
        });
    }

    // Rules in tensor order: a node output comes after its inputs, so a shared input's rule is
    // already final when its output is ruled.
    for i in 0..builder.tensors.len() {
        let tensor = &builder.tensors[i];
        let rank = tensor.shape.as_ref().map(Vec::len);
        let role = match tensor.kind {
            TensorKind::Parameter(_) => parameter_role(&tensor.consumers, &nodes, rank),
            TensorKind::Activation => tensor.role,
        };
        let rule = rule_for(tensor, role, &nodes, &builder);
        let tensor = &mut builder.tensors[i];
        tensor.role = role;
        tensor.rule = rule;
    }

    Ok(Graph {
        opset: contents.opset,
        inputs,
        outputs,
        tensors: builder.tensors,
        index: builder.index,
        nodes,
        parameters: builder.parameters,
    })
}

struct Builder<'a> {
    origin: &'a Path,
    tensors: Vec<Tensor>,
    index: HashMap<TensorName, usize>,
    parameters: HashMap<TensorName, ParameterData>,
}

impl Builder<'_> {
    fn add(&mut self, tensor: Tensor) -> Result<(), GraphError> {
        if self.index.contains_key(&tensor.name) {
            return Err(GraphError::DuplicateTensor {
                path: self.origin.to_owned(),
                tensor: tensor.name.to_string(),
            });
        }
        self.index.insert(tensor.name.clone(), self.tensors.len());
        self.tensors.push(tensor);
        Ok(())
    }

    fn add_parameter(
        &mut self,
        name: String,
        source: ParameterSource,
        producer: Option<Producer>,
        value: &TensorContents,
    ) -> Result<(), GraphError> {
        let name = TensorName::new(name);
        let shape: Vec<usize> = value.dims.iter().map(|&d| d as usize).collect();
        self.add(Tensor {
            name: name.clone(),
            dtype: value.dtype,
            shape: Some(value.dims.iter().map(|&d| Dim::Fixed(d)).collect()),
            kind: TensorKind::Parameter(source),
            role: Role::Unused,
            producer,
            consumers: Vec::new(),
            is_graph_output: false,
            rule: EncodingRule::Own,
        })?;
        self.parameters.insert(
            name,
            ParameterData {
                shape,
                values: value.values.clone(),
            },
        );
        Ok(())
    }

    fn dtype_of(&self, name: &Option<TensorName>) -> Option<DType> {
        let name = name.as_ref()?;
        self.tensors[*self.index.get(name)?].dtype
    }
}

fn activation(
    name: TensorName,
    dtype: Option<DType>,
    shape: Option<Vec<Dim>>,
    role: Role,
    producer: Option<Producer>,
) -> Tensor {
    Tensor {
        name,
        dtype,
        shape,
        kind: TensorKind::Activation,
        role,
        producer,
        consumers: Vec::new(),
        is_graph_output: false,
        rule: EncodingRule::Own,
    }
}

fn producer(node: &Node, output_index: usize) -> Producer {
    Producer {
        node: node.id,
        op_type: node.op_type.clone(),
        node_name: node.name.clone(),
        output_index,
    }
}

fn node(id: NodeId, n: &NodeContents) -> Node {
    Node {
        id,
        name: n.name.clone(),
        op_type: n.op_type.clone(),
        domain: n.domain.clone(),
        inputs: n
            .inputs
            .iter()
            .map(|i| (!i.is_empty()).then(|| TensorName::new(i.clone())))
            .collect(),
        outputs: n
            .outputs
            .iter()
            .map(|o| TensorName::new(o.clone()))
            .collect(),
        attributes: n
            .attributes
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    AttributeValue::Int(i) => Attribute::Int(*i),
                    AttributeValue::Float(f) => Attribute::Float(*f),
                    AttributeValue::String(s) => Attribute::String(s.clone()),
                    AttributeValue::Ints(v) => Attribute::Ints(v.clone()),
                    AttributeValue::Floats(v) => Attribute::Floats(v.clone()),
                    AttributeValue::Strings(v) => Attribute::Strings(v.clone()),
                    AttributeValue::Tensor(_) => Attribute::Tensor,
                    AttributeValue::Unsupported => Attribute::Unsupported,
                };
                (k.clone(), v)
            })
            .collect::<BTreeMap<_, _>>(),
    }
}

/// The tensor a `Constant` node outputs, from whichever `value*` attribute it uses.
fn constant_value(n: &NodeContents) -> TensorContents {
    let scalar = |dtype, values| TensorContents {
        name: String::new(),
        dtype: Some(dtype),
        dims: Vec::new(),
        values,
    };
    let list = |dtype, len: usize, values| TensorContents {
        name: String::new(),
        dtype: Some(dtype),
        dims: vec![len as u64],
        values,
    };
    for (key, value) in &n.attributes {
        match (key.as_str(), value) {
            ("value", AttributeValue::Tensor(t)) => return t.clone(),
            ("value_float", AttributeValue::Float(f)) => {
                return scalar(DType::Float32, TensorValues::Float(vec![*f]));
            }
            ("value_floats", AttributeValue::Floats(v)) => {
                return list(DType::Float32, v.len(), TensorValues::Float(v.clone()));
            }
            ("value_int", AttributeValue::Int(i)) => {
                return scalar(DType::Int64, TensorValues::Int(vec![*i]));
            }
            ("value_ints", AttributeValue::Ints(v)) => {
                return list(DType::Int64, v.len(), TensorValues::Int(v.clone()));
            }
            ("value_string", _) => return scalar(DType::String, TensorValues::Undecoded),
            ("value_strings", AttributeValue::Strings(v)) => {
                return list(DType::String, v.len(), TensorValues::Undecoded);
            }
            _ => {}
        }
    }
    // `sparse_value` or a malformed node: present, type unknown.
    TensorContents {
        name: String::new(),
        dtype: None,
        dims: Vec::new(),
        values: TensorValues::Undecoded,
    }
}

/// The element type of output `k` of `node` when the model does not declare it. Most ops keep
/// their first input's type; these are the ones that do not.
fn infer_dtype(node: &Node, k: usize, builder: &Builder<'_>) -> Option<DType> {
    let input = |i: usize| node.inputs.get(i).and_then(|n| builder.dtype_of(n));
    let attr_dtype = |name| {
        node.int_attribute(name)
            .and_then(|c| DType::from_onnx(c as i32))
    };
    if !(node.domain.is_empty() || node.domain == "ai.onnx") {
        return input(0);
    }
    match (node.op_type.as_str(), k) {
        ("Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin", _) => Some(DType::Int64),
        ("Cast", _) => attr_dtype("to"),
        ("CastLike", _) => input(1),
        (
            "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And" | "Or"
            | "Xor" | "IsNaN" | "IsInf",
            _,
        ) => Some(DType::Bool),
        ("Where", _) => input(1),
        ("TopK" | "MaxPool", 1) | ("Unique", 1..) => Some(DType::Int64),
        ("Dropout", 1) => Some(DType::Bool),
        ("ConstantOfShape", _) => Some(DType::Float32),
        ("QuantizeLinear", _) => input(2).or(Some(DType::Uint8)),
        ("DequantizeLinear", _) => Some(DType::Float32),
        ("DynamicQuantizeLinear", 1) => Some(DType::Float32),
        ("DynamicQuantizeLinear", _) => Some(DType::Uint8),
        ("OneHot", _) => input(2),
        ("EyeLike" | "RandomNormalLike" | "RandomUniformLike", _) => {
            attr_dtype("dtype").or_else(|| input(0))
        }
        ("RandomNormal" | "RandomUniform", _) => attr_dtype("dtype").or(Some(DType::Float32)),
        ("If" | "Loop" | "Scan", _) => None,
        ("Concat" | "Max" | "Min" | "Sum" | "Mean", _) => (0..node.inputs.len()).find_map(input),
        _ => input(0),
    }
}

/// A cycle among the nodes (a node depends on the producers of its inputs), as the nodes'
/// `name (op)` from one back to itself; `None` when the nodes form a DAG. Iterative, so a
/// chain of any length cannot overflow the stack.
fn find_cycle(nodes: &[Node], builder: &Builder<'_>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let producers = |node: &Node| -> Vec<usize> {
        node.inputs
            .iter()
            .flatten()
            .filter_map(|name| builder.index.get(name))
            .filter_map(|&i| builder.tensors[i].producer.as_ref())
            .map(|p| p.node.0)
            .collect()
    };
    let mut marks = vec![Mark::New; nodes.len()];
    for start in 0..nodes.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // (node, its producers, next producer to visit)
        let mut path: Vec<(usize, Vec<usize>, usize)> = vec![(start, producers(&nodes[start]), 0)];
        marks[start] = Mark::OnPath;
        while let Some((node, deps, next)) = path.last_mut() {
            let Some(&dep) = deps.get(*next) else {
                marks[*node] = Mark::Done;
                path.pop();
                continue;
            };
            *next += 1;
            match marks[dep] {
                Mark::Done => {}
                Mark::New => {
                    marks[dep] = Mark::OnPath;
                    path.push((dep, producers(&nodes[dep]), 0));
                }
                Mark::OnPath => {
                    let from = path.iter().position(|(n, _, _)| *n == dep).unwrap_or(0);
                    let label = |n: usize| format!("`{}` ({})", nodes[n].name, nodes[n].op_type);
                    let mut cycle: Vec<String> =
                        path[from..].iter().map(|(n, _, _)| label(*n)).collect();
                    cycle.push(label(dep));
                    return Some(cycle);
                }
            }
        }
    }
    None
}

fn rule_for(tensor: &Tensor, role: Role, nodes: &[Node], builder: &Builder<'_>) -> EncodingRule {
    let Some(dtype) = tensor.dtype else {
        return EncodingRule::NotQuantized(NotQuantizedReason::UnknownType);
    };
    if !dtype.is_float() {
        return EncodingRule::NotFloat;
    }
    if tensor.kind.is_parameter() {
        let elements = builder
            .parameters
            .get(&tensor.name)
            .map(|p| p.shape.iter().product());
        return parameter_rule(role, elements);
    }
    let Some(producer) = &tensor.producer else {
        return EncodingRule::Own;
    };
    let node = &nodes[producer.node.0];
    if !moves_data(node, producer.output_index, |name| {
        builder.parameters.get(name)
    }) {
        return EncodingRule::Own;
    }
    // Only an encoded float activation can lend its encoding: a reshaped weight has a
    // (possibly per-channel, symmetric) parameter encoding that does not suit an activation.
    let Some(source) = node.inputs.first().and_then(Option::as_ref) else {
        return EncodingRule::Own;
    };
    match builder.index.get(source).map(|&i| &builder.tensors[i]) {
        Some(input) if input.is_float_activation() && input.rule.is_encoded() => {
            EncodingRule::SharesInput(source.clone())
        }
        _ => EncodingRule::Own,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, dims: &[u64]) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            dtype: Some(DType::Float32),
            shape: Some(dims.iter().map(|&d| Dim::Fixed(d)).collect()),
        }
    }

    fn float_tensor(name: &str, dims: &[u64]) -> TensorContents {
        let n = dims.iter().product::<u64>() as usize;
        TensorContents {
            name: name.into(),
            dtype: Some(DType::Float32),
            dims: dims.to_vec(),
            values: TensorValues::Float((0..n).map(|i| i as f32 - 1.0).collect()),
        }
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeContents {
        NodeContents {
            name: format!("{op}_{}", outputs[0]),
            op_type: op.into(),
            domain: String::new(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            attributes: Vec::new(),
        }
    }

    /// x → Conv(w, b) → Reshape(shape) → Transpose → Relu → MatMul(m) → y, plus a Constant scalar
    /// added to y; no value_info, so dtypes are inferred.
    fn sample() -> GraphContents {
        let mut constant = node("Constant", &[], &["three"]);
        constant.name = String::new();
        constant.attributes = vec![("value_float".into(), AttributeValue::Float(3.0))];
        GraphContents {
            ir_version: Some(8),
            opset: Some(13),
            inputs: vec![info("x", &[1, 2, 4, 4])],
            outputs: vec![info("z", &[])],
            value_info: Vec::new(),
            initializers: vec![
                float_tensor("w", &[3, 2, 1, 1]),
                float_tensor("b", &[3]),
                TensorContents {
                    name: "shape".into(),
                    dtype: Some(DType::Int64),
                    dims: vec![2],
                    values: TensorValues::Int(vec![3, 16]),
                },
                float_tensor("m", &[3, 5]),
            ],
            nodes: vec![
                node("Conv", &["x", "w", "b"], &["c"]),
                node("Reshape", &["c", "shape"], &["r"]),
                node("Transpose", &["r"], &["t"]),
                node("Relu", &["t"], &["a"]),
                node("MatMul", &["m", "a"], &["y0"]),
                node("Transpose", &["y0"], &["y"]),
                constant,
                node("Add", &["y", "three"], &["z"]),
            ],
        }
    }

    #[test]
    fn kinds_roles_and_rules() {
        let g = build(sample(), Path::new("sample.onnx")).unwrap();
        let t = |n: &str| g.tensor(n).unwrap();
        assert_eq!(t("x").role, Role::GraphInput);
        assert_eq!(
            t("w").role,
            Role::Weight {
                output_channel_axis: 0
            }
        );
        assert_eq!(t("b").role, Role::Bias);
        assert_eq!(t("shape").role, Role::ShapeOperand);
        assert_eq!(t("shape").rule, EncodingRule::NotFloat);
        // m is MatMul's input 0: an operand, not a weight.
        assert_eq!(t("m").role, Role::Operand);
        assert_eq!(
            t("three").kind,
            TensorKind::Parameter(ParameterSource::ConstantNode)
        );
        assert_eq!(t("three").dtype, Some(DType::Float32));
        assert_eq!(t("three").producer.as_ref().unwrap().node_name, "");
        assert_eq!(t("c").rule, EncodingRule::Own);
        assert_eq!(t("r").rule, EncodingRule::SharesInput("c".into()));
        assert_eq!(t("t").rule, EncodingRule::SharesInput("r".into()));
        assert_eq!(t("a").rule, EncodingRule::Own);
        assert_eq!(g.encoding_source("t").unwrap().as_str(), "c");
        assert_eq!(g.encoding_source("shape"), None);
        assert!(t("z").is_graph_output);
        let counts = g.counts();
        assert_eq!(
            (
                counts.float_activations,
                counts.float_parameters,
                counts.non_float
            ),
            (8, 4, 1)
        );
        assert_eq!(counts.shared_encodings, 3, "r, t and y share");
        assert_eq!(
            g.parameter("w").unwrap().as_array().unwrap().shape(),
            [3, 2, 1, 1]
        );
        assert_eq!(&*g.parameter("three").unwrap().as_f32().unwrap(), [3.0]);
    }

    #[test]
    fn gemm_weight_axis_follows_trans_b_and_shape_ops_infer_int() {
        let mut contents = sample();
        let mut gemm = node("Gemm", &["a2", "m2"], &["g"]);
        gemm.attributes = vec![("transB".into(), AttributeValue::Int(1))];
        contents.nodes.push(node("Flatten", &["a"], &["a2"]));
        contents.nodes.push(gemm);
        contents.nodes.push(node("Shape", &["g"], &["s"]));
        contents.initializers.push(float_tensor("m2", &[5, 48]));
        let g = build(contents, Path::new("sample.onnx")).unwrap();
        assert_eq!(
            g.tensor("m2").unwrap().role,
            Role::Weight {
                output_channel_axis: 0
            }
        );
        assert_eq!(g.tensor("s").unwrap().dtype, Some(DType::Int64));
        assert_eq!(g.tensor("s").unwrap().rule, EncodingRule::NotFloat);
        assert_eq!(g.tensor("g").unwrap().dtype, Some(DType::Float32));
    }

    #[test]
    fn undefined_and_duplicate_tensors_are_errors() {
        let mut contents = sample();
        contents.nodes.push(node("Relu", &["nowhere"], &["q"]));
        let err = build(contents, Path::new("m.onnx")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "in m.onnx: node `Relu_q` (Relu) reads `nowhere`, which no graph input, initializer or node output defines"
        );
        let mut contents = sample();
        contents.nodes.push(node("Relu", &["x"], &["c"]));
        let err = build(contents, Path::new("m.onnx")).unwrap_err();
        assert!(matches!(err, GraphError::DuplicateTensor { .. }), "{err}");
    }

    #[test]
    fn only_value_preserving_ops_share_and_scales_stay_float() {
        let mut contents = sample();
        let mut resize = node("Resize", &["a", "", "scales"], &["big"]);
        resize.attributes = vec![("mode".into(), AttributeValue::String("linear".into()))];
        contents.nodes.push(resize);
        contents
            .nodes
            .push(node("Resize", &["a", "", "scales"], &["near"]));
        contents
            .nodes
            .push(node("Resize", &["a", "", "halves"], &["small"]));
        contents.nodes.push(node("MaxPool", &["a"], &["pooled"]));
        contents
            .nodes
            .push(node("Slice", &["a", "starts", "ends"], &["sliced"]));
        contents.initializers.push(TensorContents {
            values: TensorValues::Float(vec![1.0, 1.0, 2.0, 2.0]),
            ..float_tensor("scales", &[4])
        });
        contents.initializers.push(TensorContents {
            values: TensorValues::Float(vec![1.0, 1.0, 0.5, 0.5]),
            ..float_tensor("halves", &[4])
        });
        for name in ["starts", "ends"] {
            contents.initializers.push(TensorContents {
                name: name.into(),
                dtype: Some(DType::Int64),
                dims: vec![1],
                values: TensorValues::Int(vec![0]),
            });
        }
        let g = build(contents, Path::new("m.onnx")).unwrap();
        assert_eq!(g.tensor("big").unwrap().rule, EncodingRule::Own);
        assert_eq!(
            g.tensor("near").unwrap().rule,
            EncodingRule::SharesInput("a".into())
        );
        // Downsampling, pooling and slicing drop values: their own range may be narrower.
        for narrowing in ["small", "pooled", "sliced"] {
            assert_eq!(
                g.tensor(narrowing).unwrap().rule,
                EncodingRule::Own,
                "{narrowing}"
            );
        }
        assert_eq!(
            g.tensor("scales").unwrap().rule,
            EncodingRule::NotQuantized(NotQuantizedReason::ShapeOperand)
        );
        assert_eq!(g.node(NodeId(8)).inputs[1], None, "omitted optional input");
    }
}
