//! The protobuf side of mixed precision: given which nodes compute in float16, int32 or
//! float32 ([`PrecisionPlan`]), it rewrites a copy of the model so that each of those nodes
//! reads and writes its own data type, with `Cast` (or `Identity`) nodes at every boundary.
//!
//! It must not decide precisions: `export::precision` does, from encodings and overrides. What it
//! decides is ONNX-level: names, where the conversions go, and which stored floats become
//! float16.
//!
//! Naming keeps the rest of the export simple. A tensor `t` of the float model keeps its name
//! for the *integer domain*: the view integer ops, graph outputs and the QDQ rewrite (which runs
//! afterwards and may put a QuantizeLinear/DequantizeLinear pair on `t`) read. So:
//! - a float16 node's output is renamed `t_fp16`, and `Cast(to FLOAT)` writes `t` when anything
//!   outside float16 reads it (the specification's convert op);
//! - an int32 node reads `Cast(to INT32)` of its inputs and writes `t_int32`, cast back into `t`
//!   (the specification's Dequantize → Cast(INT32) → op → Cast(FP32) → Quantize, once the QDQ
//!   rewrite adds the pairs on `t`);
//! - a float32 node in a quantized graph whose output is both quantized for integer consumers
//!   and read by float consumers writes `t_float`, which the float consumers read, and an
//!   `Identity` writes `t` for the QuantizeLinear: float ops must not read the quantized copy.
//!
//! Stored floats (initializers, `Constant` values) read only by float16 nodes are converted in
//! place; one also read elsewhere gets a float16 copy. A few inputs stay float32 whatever the
//! node computes in, because their schema allows nothing else (Resize's `roi` and `scales`,
//! Upsample's `scales`).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::proto::{self, AttributeProto, NodeProto, TensorProto, attribute_proto::AttributeType};
use super::tensor::{TensorValues, tensor_values};
use super::{OnnxError, OnnxModel};

/// ONNX `DataType` codes used here.
const FLOAT: i32 = 1;
const INT32: i32 = 6;
const FLOAT16: i32 = 10;

/// What a node computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodePrecision {
    /// Float32: only matters in a quantized graph, where its output must not be read quantized
    /// by other float nodes.
    Float32,
    /// Float16: inputs cast to float16, stored floats converted, outputs cast back.
    Float16,
    /// Int32: float inputs cast to int32 (truncation toward zero), outputs cast back to float.
    Int32,
}

impl NodePrecision {
    /// Whether the node computes in a float type.
    pub fn is_float(self) -> bool {
        matches!(self, NodePrecision::Float32 | NodePrecision::Float16)
    }
}

/// Which nodes compute in what, and how the graph's inputs and outputs are typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrecisionPlan {
    /// Nodes by the name of their first output (node names are optional in ONNX; output
    /// names are unique). Nodes not listed are integer ops (in a quantized graph) or stay as
    /// they are.
    pub nodes: BTreeMap<String, NodePrecision>,
    /// Tensors of float32 type in the model (activations and stored floats); only these are
    /// cast or converted.
    pub float32: HashSet<String>,
    /// Activations the QDQ rewrite will quantize: a float node's output among these keeps a
    /// separate unquantized copy for float readers.
    pub quantized: HashSet<String>,
    /// Graph inputs and outputs stay float32, with casts inside (onnxconverter-common's
    /// `keep_io_types`); otherwise a float16 graph's inputs and outputs become float16.
    pub keep_io_types: bool,
}

/// Which view of a tensor a reader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum View {
    /// The integer domain: what integer ops and the QDQ rewrite see; float32.
    Int,
    /// Float32, read by a float32 op.
    F32,
    /// Float16.
    F16,
    /// Int32.
    I32,
}

/// Inputs that stay float32 in a float16 node: their schema types them apart from the data.
fn keeps_float32_input(op_type: &str, index: usize) -> bool {
    matches!((op_type, index), ("Resize", 1 | 2) | ("Upsample", 1))
}

impl OnnxModel {
    /// A copy of the model in which the nodes of `plan` compute in their precision.
    pub fn with_precisions(&self, plan: &PrecisionPlan) -> Result<OnnxModel, OnnxError> {
        let mut model = self.clone();
        if plan.nodes.is_empty() {
            return Ok(model);
        }
        let origin = model.origin.clone();
        let graph = model.proto.graph.get_or_insert_with(Default::default);
        rewrite(graph, plan).map_err(|e| OnnxError::TensorData {
            path: origin.clone(),
            source: e,
        })?;
        Ok(model)
    }
}

/// Where a tensor comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Output of node `i`.
    Node(usize),
    /// A graph input.
    Input,
    /// An initializer (or sparse initializer).
    Stored,
}

fn rewrite(
    graph: &mut proto::GraphProto,
    plan: &PrecisionPlan,
) -> Result<(), super::TensorDataError> {
    let precision_of = |node: &NodeProto| -> Option<NodePrecision> {
        node.output
            .first()
            .and_then(|o| plan.nodes.get(o.as_str()))
            .copied()
    };
    let precisions: Vec<Option<NodePrecision>> = graph.node.iter().map(precision_of).collect();
    let mut names = Fresh::taken_in(graph);
    let graph_outputs: HashSet<String> =
        graph.output.iter().filter_map(|o| o.name.clone()).collect();
    let graph_inputs: HashSet<String> = graph.input.iter().filter_map(|o| o.name.clone()).collect();
    let stored: HashSet<String> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.clone())
        .collect();

    // Every float32 tensor's source, and the views its readers need.
    let mut source: HashMap<String, Source> = HashMap::new();
    for name in &graph_inputs {
        source.insert(name.clone(), Source::Input);
    }
    for name in &stored {
        source.insert(name.clone(), Source::Stored);
    }
    for (i, node) in graph.node.iter().enumerate() {
        for out in &node.output {
            if !out.is_empty() {
                source.insert(out.clone(), Source::Node(i));
            }
        }
    }
    let mut readers: BTreeMap<String, Vec<(usize, usize, View)>> = BTreeMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for (k, input) in node.input.iter().enumerate() {
            if input.is_empty() || !plan.float32.contains(input) {
                continue;
            }
            let view = match precisions[i] {
                None => View::Int,
                Some(NodePrecision::Float32) => View::F32,
                Some(NodePrecision::Float16) if keeps_float32_input(node_op(node), k) => View::F32,
                Some(NodePrecision::Float16) => View::F16,
                Some(NodePrecision::Int32) => View::I32,
            };
            readers.entry(input.clone()).or_default().push((i, k, view));
        }
    }

    // The precision a tensor is written in ("native"), and the name it is written under.
    let native = |t: &str| -> Option<NodePrecision> {
        match source.get(t)? {
            Source::Node(i) => precisions[*i],
            Source::Input => {
                let f16_readers = readers
                    .get(t)
                    .is_some_and(|r| r.iter().any(|(_, _, v)| *v == View::F16));
                (!plan.keep_io_types && f16_readers).then_some(NodePrecision::Float16)
            }
            Source::Stored => {
                let all_f16 = readers
                    .get(t)
                    .is_some_and(|r| !r.is_empty() && r.iter().all(|(_, _, v)| *v == View::F16))
                    && !graph_outputs.contains(t);
                all_f16.then_some(NodePrecision::Float16)
            }
        }
    };

    let mut casts_after: BTreeMap<usize, Vec<NodeProto>> = BTreeMap::new();
    let mut casts_first: Vec<NodeProto> = Vec::new();
    let mut casts_before: BTreeMap<usize, Vec<NodeProto>> = BTreeMap::new();
    let mut renamed_outputs: HashMap<(usize, String), String> = HashMap::new();
    let mut input_renames: Vec<(usize, usize, String)> = Vec::new();
    let mut converted_stored: HashSet<String> = HashSet::new();
    let mut f16_copies: Vec<(String, String)> = Vec::new();
    let mut retyped_inputs: HashSet<String> = HashSet::new();
    let mut retyped_outputs: HashSet<String> = HashSet::new();
    let mut constant_f16: HashSet<usize> = HashSet::new();

    let tensors: Vec<String> = plan
        .float32
        .iter()
        .filter(|t| source.contains_key(t.as_str()))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for t in &tensors {
        let src = source[t.as_str()];
        let native_precision = match src {
            Source::Stored if plan.quantized.contains(t.as_str()) => None,
            _ => native(t),
        };
        let reads = readers.get(t.as_str()).cloned().unwrap_or_default();
        let is_output = graph_outputs.contains(t.as_str());
        // Constant nodes are stored floats written by a node: convert them as initializers.
        let constant_node = match src {
            Source::Node(i) if node_op(&graph.node[i]) == "Constant" => Some(i),
            _ => None,
        };
        let all_f16_readers =
            !reads.is_empty() && reads.iter().all(|(_, _, v)| *v == View::F16) && !is_output;
        if let Some(i) = constant_node {
            if all_f16_readers {
                constant_f16.insert(i);
            }
            // A Constant read in several precisions is cast like any activation below.
            if all_f16_readers {
                continue;
            }
        }
        if src == Source::Stored && !plan.quantized.contains(t.as_str()) {
            if native_precision == Some(NodePrecision::Float16) {
                converted_stored.insert(t.clone());
                continue;
            }
            if reads.iter().any(|(_, _, v)| *v == View::F16) {
                // A weight shared with float32 readers: a float16 copy, not a runtime cast.
                let copy = names.fresh(format!("{t}_fp16"));
                for (i, k, v) in &reads {
                    if *v == View::F16 {
                        input_renames.push((*i, *k, copy.clone()));
                    }
                }
                f16_copies.push((t.clone(), copy));
            }
            // Int32 readers of a stored float: cast at the start.
            let i32_reads: Vec<_> = reads.iter().filter(|r| r.2 == View::I32).collect();
            if !i32_reads.is_empty() {
                let name = names.fresh(format!("{t}_int32"));
                casts_first.push(cast(&mut names, t, &name, INT32));
                for (i, k, _) in i32_reads {
                    input_renames.push((*i, *k, name.clone()));
                }
            }
            continue;
        }

        // Activations (graph inputs and node outputs).
        let float_readers = reads
            .iter()
            .any(|(_, _, v)| matches!(v, View::F32 | View::F16));
        let int_domain_needed = reads
            .iter()
            .any(|(_, _, v)| matches!(v, View::Int | View::I32))
            || (is_output
                && (plan.keep_io_types || native_precision != Some(NodePrecision::Float16)));
        // Name written by the source, and the views built from it.
        let (native_name, place): (String, Place) = match (src, native_precision) {
            (Source::Node(i), Some(p)) => {
                let needs_rename = match p {
                    NodePrecision::Float16 | NodePrecision::Int32 => int_domain_needed,
                    NodePrecision::Float32 => {
                        plan.quantized.contains(t.as_str()) && float_readers && int_domain_needed
                    }
                };
                if needs_rename {
                    let suffix = match p {
                        NodePrecision::Float16 => "fp16",
                        NodePrecision::Int32 => "int32",
                        NodePrecision::Float32 => "float",
                    };
                    let new = names.fresh(format!("{t}_{suffix}"));
                    renamed_outputs.insert((i, t.clone()), new.clone());
                    (new, Place::After(i))
                } else {
                    if p == NodePrecision::Float16 {
                        retyped_outputs.insert(t.clone());
                    }
                    (t.clone(), Place::After(i))
                }
            }
            (Source::Node(i), None) => (t.clone(), Place::After(i)),
            (Source::Input, Some(NodePrecision::Float16)) => {
                retyped_inputs.insert(t.clone());
                (t.clone(), Place::First)
            }
            (Source::Input, _) => (t.clone(), Place::First),
            // A quantized stored tensor: its readers follow the DequantizeLinear the QDQ rewrite
            // writes under its name, so conversions go right before the first reader.
            (Source::Stored, _) => {
                let first = reads.iter().map(|r| r.0).min().unwrap_or(0);
                (t.clone(), Place::Before(first))
            }
        };
        let native_view = match native_precision {
            None => View::Int,
            Some(NodePrecision::Float32) => View::F32,
            Some(NodePrecision::Float16) => View::F16,
            Some(NodePrecision::Int32) => View::I32,
        };
        let mut push = |node: NodeProto| match place {
            Place::After(i) => casts_after.entry(i).or_default().push(node),
            Place::Before(i) => casts_before.entry(i).or_default().push(node),
            Place::First => casts_first.push(node),
        };
        // The integer domain under the original name, when the native name differs.
        if native_name != *t && int_domain_needed {
            let node = match native_view {
                View::F32 => identity(&mut names, &native_name, t),
                _ => cast(&mut names, &native_name, t, FLOAT),
            };
            push(node);
        }
        // Every other view a reader needs.
        let mut built: HashMap<View, String> = HashMap::new();
        for (i, k, view) in &reads {
            let name = view_name(
                *view,
                native_view,
                &native_name,
                t,
                &mut built,
                &mut names,
                &mut push,
            );
            if name != *t || native_name != *t {
                input_renames.push((*i, *k, name));
            }
        }
    }

    // Apply: inputs, outputs, attributes, stored data, node order.
    for (i, k, name) in input_renames {
        graph.node[i].input[k] = name;
    }
    for ((i, old), new) in &renamed_outputs {
        for out in graph.node[*i].output.iter_mut() {
            if out == old {
                *out = new.clone();
            }
        }
    }
    for (i, precision) in precisions.iter().enumerate() {
        if *precision == Some(NodePrecision::Float16) {
            retarget_float16(&mut graph.node[i]);
        }
    }
    for i in &constant_f16 {
        for attr in graph.node[*i].attribute.iter_mut() {
            if let Some(t) = attr.t.as_mut()
                && t.data_type == Some(FLOAT)
            {
                to_float16(t)?;
            }
        }
    }
    for init in graph.initializer.iter_mut() {
        if init
            .name
            .as_ref()
            .is_some_and(|n| converted_stored.contains(n))
        {
            to_float16(init)?;
        }
    }
    for (original, copy) in &f16_copies {
        if let Some(init) = graph
            .initializer
            .iter()
            .find(|i| i.name.as_deref() == Some(original.as_str()))
        {
            let mut init = init.clone();
            init.name = Some(copy.clone());
            to_float16(&mut init)?;
            graph.initializer.push(init);
        }
    }
    // Graph inputs from initializers must not keep a stale float32 declaration.
    for input in graph.input.iter_mut() {
        let name = input.name.clone().unwrap_or_default();
        if retyped_inputs.contains(&name) || converted_stored.contains(&name) {
            set_elem_type(input, FLOAT16);
        }
    }
    for output in graph.output.iter_mut() {
        let name = output.name.clone().unwrap_or_default();
        if retyped_outputs.contains(&name) {
            set_elem_type(output, FLOAT16);
        }
    }
    // value_info of tensors whose type changed is corrected; renamed ones keep theirs on `t`,
    // which is still float32.
    for info in graph.value_info.iter_mut() {
        let name = info.name.clone().unwrap_or_default();
        if retyped_outputs.contains(&name) {
            set_elem_type(info, FLOAT16);
        }
    }
    let old = std::mem::take(&mut graph.node);
    let mut nodes = Vec::with_capacity(old.len() + casts_first.len());
    nodes.extend(casts_first);
    for (i, node) in old.into_iter().enumerate() {
        if let Some(before) = casts_before.remove(&i) {
            nodes.extend(before);
        }
        nodes.push(node);
        if let Some(after) = casts_after.remove(&i) {
            nodes.extend(after);
        }
    }
    graph.node = nodes;
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Place {
    After(usize),
    Before(usize),
    First,
}

/// The name of `view` of tensor `t`, building the conversion once.
fn view_name(
    view: View,
    native: View,
    native_name: &str,
    t: &str,
    built: &mut HashMap<View, String>,
    names: &mut Fresh,
    push: &mut impl FnMut(NodeProto),
) -> String {
    if view == native {
        return native_name.to_string();
    }
    fn float32_cast(
        t: &str,
        native_name: &str,
        built: &mut HashMap<View, String>,
        names: &mut Fresh,
        push: &mut impl FnMut(NodeProto),
    ) -> String {
        built
            .entry(View::F32)
            .or_insert_with(|| {
                let name = names.fresh(format!("{t}_fp32"));
                push(cast(names, native_name, &name, FLOAT));
                name
            })
            .clone()
    }
    match view {
        // Integer ops read `t` (which the QDQ rewrite may quantize): the integer domain is
        // written under `t` whenever the native name differs. Only a graph input turned
        // float16 is both named `t` and not float32.
        View::Int => {
            if native_name != t || matches!(native, View::Int | View::F32) {
                t.to_string()
            } else {
                float32_cast(t, native_name, built, names, push)
            }
        }
        // A float32 op reads an integer op's output dequantized ("DequantizeLinear into the
        // float op"), and anything else through its own exact cast, never the quantized copy.
        View::F32 => {
            if native == View::Int {
                t.to_string()
            } else {
                float32_cast(t, native_name, built, names, push)
            }
        }
        View::F16 => built
            .entry(View::F16)
            .or_insert_with(|| {
                let name = names.fresh(format!("{t}_to_fp16"));
                // From the integer domain, so a quantized tensor is dequantized first.
                let from = if native == View::F32 { native_name } else { t };
                push(cast(names, from, &name, FLOAT16));
                name
            })
            .clone(),
        View::I32 => built
            .entry(View::I32)
            .or_insert_with(|| {
                let name = names.fresh(format!("{t}_to_int32"));
                push(cast(names, t, &name, INT32));
                name
            })
            .clone(),
    }
}

fn node_op(node: &NodeProto) -> &str {
    node.op_type.as_deref().unwrap_or("")
}

/// A float16 node's own float32 attributes: `Cast(to FLOAT)` casts to float16 instead, and a
/// `ConstantOfShape` fills with float16.
fn retarget_float16(node: &mut NodeProto) {
    match node_op(node) {
        "Cast" => {
            for attr in node.attribute.iter_mut() {
                if attr.name.as_deref() == Some("to") && attr.i == Some(i64::from(FLOAT)) {
                    attr.i = Some(i64::from(FLOAT16));
                }
            }
        }
        "ConstantOfShape" => {
            for attr in node.attribute.iter_mut() {
                if let Some(t) = attr.t.as_mut()
                    && t.data_type == Some(FLOAT)
                {
                    // A one-element fill value: converting it cannot fail on its length.
                    let _ = to_float16(t);
                }
            }
        }
        _ => {}
    }
}

fn cast(names: &mut Fresh, from: &str, to: &str, dtype: i32) -> NodeProto {
    NodeProto {
        input: vec![from.to_string()],
        output: vec![to.to_string()],
        name: Some(names.fresh(format!("{to}_Cast"))),
        op_type: Some("Cast".into()),
        attribute: vec![AttributeProto {
            name: Some("to".into()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(i64::from(dtype)),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn identity(names: &mut Fresh, from: &str, to: &str) -> NodeProto {
    NodeProto {
        input: vec![from.to_string()],
        output: vec![to.to_string()],
        name: Some(names.fresh(format!("{to}_Identity"))),
        op_type: Some("Identity".into()),
        ..Default::default()
    }
}

/// Converts a float32 tensor's values to float16 in place (round to nearest even, as numpy's
/// `astype` does), stored as raw little-endian bytes. Finite values beyond float16's range
/// saturate at ±65504 rather than become infinite, as onnxconverter-common clamps them.
pub fn to_float16(tensor: &mut TensorProto) -> Result<(), super::TensorDataError> {
    let values = match tensor_values(tensor)? {
        TensorValues::Float(v) => v,
        _ => return Ok(()),
    };
    let raw: Vec<u8> = values
        .iter()
        .flat_map(|&x| {
            let h = half::f16::from_f32(x);
            let h = if h.is_infinite() && x.is_finite() {
                if x > 0.0 {
                    half::f16::MAX
                } else {
                    half::f16::MIN
                }
            } else {
                h
            };
            h.to_le_bytes()
        })
        .collect();
    tensor.float_data.clear();
    tensor.int32_data.clear();
    tensor.raw_data = Some(raw.into());
    tensor.data_type = Some(FLOAT16);
    Ok(())
}

fn set_elem_type(info: &mut proto::ValueInfoProto, dtype: i32) {
    if let Some(proto::type_proto::Value::TensorType(t)) =
        info.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.elem_type = Some(dtype);
    }
}

/// Names already used in the graph; new names never collide with them.
struct Fresh {
    taken: HashSet<String>,
}

impl Fresh {
    fn taken_in(graph: &proto::GraphProto) -> Fresh {
        let mut taken = HashSet::new();
        for node in &graph.node {
            taken.extend(node.output.iter().cloned());
            taken.extend(node.input.iter().cloned());
            taken.extend(node.name.iter().cloned());
        }
        taken.extend(graph.initializer.iter().filter_map(|t| t.name.clone()));
        taken.extend(graph.input.iter().filter_map(|t| t.name.clone()));
        taken.extend(graph.output.iter().filter_map(|t| t.name.clone()));
        Fresh { taken }
    }

    fn fresh(&mut self, base: String) -> String {
        let mut name = base.clone();
        let mut n = 1;
        while self.taken.contains(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        self.taken.insert(name.clone());
        name
    }
}
