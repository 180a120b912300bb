//! The protobuf side of the QDQ model: given a plan in plain data ([`QdqPlan`]: which tensor
//! gets which integer type, scales and zero points, and for parameters the integers to store),
//! it rewrites a copy of the model with QuantizeLinear/DequantizeLinear nodes.
//!
//! It must not compute encodings, round values or decide which tensors are quantized: the plan
//! (built by `export::qdq`) says all of that. What it decides is purely ONNX-level: node and
//! tensor names, node order, and which operator domain can express each Q/DQ at the model's
//! opset (see [`QdqDomain`]).
//!
//! Layout, as onnxruntime's `quantize_static` writes it:
//! - an activation `t` gets `t → QuantizeLinear → t_QuantizeLinear_Output → DequantizeLinear →
//!   t_DequantizeLinear_Output`, placed right after its producer, and every consumer reads the
//!   DequantizeLinear output. A graph output keeps its name: the producer then writes
//!   `t_QuantizeLinear_Input` and the DequantizeLinear writes `t`.
//! - a parameter `w` (initializer or `Constant` node) is replaced by an integer initializer
//!   `w_quantized` and a DequantizeLinear that writes `w`, so consumers are unchanged. `Constant`
//!   nodes holding a quantized parameter are removed.
//! - scales are float32 initializers `<t>_scale`, zero points `<t>_zero_point` of the stored
//!   integer type (1-D per channel, with the DequantizeLinear `axis`).

use std::collections::{HashMap, HashSet};

use super::proto::{
    self, AttributeProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    attribute_proto::AttributeType,
};
use super::tensor::{TensorDataError, TensorValues, tensor_values};
use super::{OnnxError, OnnxModel};

/// The integer type a quantized tensor is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantizedType {
    /// `UINT8`.
    Uint8,
    /// `INT8`.
    Int8,
    /// `UINT16`.
    Uint16,
    /// `INT16`.
    Int16,
    /// `INT32` (biases).
    Int32,
    /// `UINT4` (opset 21): packed two per byte in initializers, see [`Self::raw_bytes`].
    Uint4,
    /// `INT4` (opset 21): packed two per byte in initializers, see [`Self::raw_bytes`].
    Int4,
}

impl QuantizedType {
    /// The ONNX `DataType` number.
    pub fn onnx_code(self) -> i32 {
        match self {
            QuantizedType::Uint8 => 2,
            QuantizedType::Int8 => 3,
            QuantizedType::Uint16 => 4,
            QuantizedType::Int16 => 5,
            QuantizedType::Int32 => 6,
            QuantizedType::Uint4 => 21,
            QuantizedType::Int4 => 22,
        }
    }

    /// Smallest and largest stored value.
    pub fn range(self) -> (i64, i64) {
        match self {
            QuantizedType::Uint8 => (0, 255),
            QuantizedType::Int8 => (-128, 127),
            QuantizedType::Uint16 => (0, 65_535),
            QuantizedType::Int16 => (-32_768, 32_767),
            QuantizedType::Int32 => (i32::MIN.into(), i32::MAX.into()),
            QuantizedType::Uint4 => (0, 15),
            QuantizedType::Int4 => (-8, 7),
        }
    }

    /// Whether the standard operators need opset 21 for this type (16- and 4-bit types).
    fn needs_opset_21(self) -> bool {
        matches!(
            self,
            QuantizedType::Uint16
                | QuantizedType::Int16
                | QuantizedType::Uint4
                | QuantizedType::Int4
        )
    }

    fn is_4_bit(self) -> bool {
        matches!(self, QuantizedType::Uint4 | QuantizedType::Int4)
    }

    /// `values` little-endian in this type's width; they were checked against [`Self::range`].
    fn little_endian(self, values: &[i64]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(values.len() * self.width());
        for &v in values {
            self.push(&mut bytes, v);
        }
        self.raw_bytes(&bytes)
    }

    /// A tensor's `raw_data` from its values held one per [`Self::width`] bytes: the same bytes,
    /// except for the 4-bit types, which ONNX stores packed over the whole flattened tensor
    /// (two values per byte, the first in the low nibble, one padding nibble at the end of an
    /// odd count; not row by row as QNN's packed weights, see [`crate::encoding::packed`]).
    pub fn raw_bytes(self, held: &[u8]) -> Vec<u8> {
        if !self.is_4_bit() {
            return held.to_vec();
        }
        crate::encoding::packed::pack_nibbles(held).collect()
    }

    /// Bytes per stored value as [`QdqValues`] holds them (a 4-bit value takes a byte until
    /// [`Self::raw_bytes`] packs it).
    pub fn width(self) -> usize {
        match self {
            QuantizedType::Uint8
            | QuantizedType::Int8
            | QuantizedType::Uint4
            | QuantizedType::Int4 => 1,
            QuantizedType::Uint16 | QuantizedType::Int16 => 2,
            QuantizedType::Int32 => 4,
        }
    }

    fn push(self, bytes: &mut Vec<u8>, v: i64) {
        match self {
            QuantizedType::Uint8 | QuantizedType::Uint4 => bytes.push(v as u8),
            QuantizedType::Int8 | QuantizedType::Int4 => bytes.push(v as i8 as u8),
            QuantizedType::Uint16 => bytes.extend((v as u16).to_le_bytes()),
            QuantizedType::Int16 => bytes.extend((v as i16).to_le_bytes()),
            QuantizedType::Int32 => bytes.extend((v as i32).to_le_bytes()),
        }
    }
}

/// A parameter's stored integers, as the initializer holds them: little-endian, in the width of
/// their type (a million int8 weights take a megabyte, not eight). Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QdqValues {
    dtype: QuantizedType,
    bytes: std::sync::Arc<[u8]>,
}

impl QdqValues {
    /// `values` stored as `dtype`; `Err` with the first value outside the type's range.
    pub fn new(dtype: QuantizedType, values: impl IntoIterator<Item = i64>) -> Result<Self, i64> {
        let (lo, hi) = dtype.range();
        let values = values.into_iter();
        let mut bytes = Vec::with_capacity(values.size_hint().0 * dtype.width());
        for v in values {
            if !(lo..=hi).contains(&v) {
                return Err(v);
            }
            dtype.push(&mut bytes, v);
        }
        Ok(QdqValues {
            dtype,
            bytes: bytes.into(),
        })
    }

    /// The stored type.
    pub fn dtype(&self) -> QuantizedType {
        self.dtype
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.width()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// How the stored integers map back to floats: `real = scale · (q − zero_point)`.
#[derive(Debug, Clone, PartialEq)]
pub struct QdqParams {
    /// The stored integer type.
    pub dtype: QuantizedType,
    /// One scale (per tensor) or one per channel.
    pub scales: Vec<f32>,
    /// One zero point per scale.
    pub zero_points: Vec<i64>,
    /// The channel axis, for per-channel parameters.
    pub axis: Option<usize>,
}

/// One tensor of the plan.
#[derive(Debug, Clone, PartialEq)]
pub enum QdqTensor {
    /// A graph input or node output: gets a QuantizeLinear → DequantizeLinear pair.
    Activation {
        /// Tensor name in the float model.
        name: String,
        /// Its quantization.
        params: QdqParams,
    },
    /// An initializer or `Constant` output: stored as integers behind a DequantizeLinear.
    Parameter {
        /// Tensor name in the float model.
        name: String,
        /// Its quantization.
        params: QdqParams,
        /// The integers to store, row-major, in the parameter's shape, of `params.dtype`
        /// (shared: a build keeps each parameter's integers between revisions).
        values: QdqValues,
    },
}

impl QdqTensor {
    /// The tensor's name in the float model.
    pub fn name(&self) -> &str {
        match self {
            QdqTensor::Activation { name, .. } | QdqTensor::Parameter { name, .. } => name,
        }
    }

    fn params(&self) -> &QdqParams {
        match self {
            QdqTensor::Activation { params, .. } | QdqTensor::Parameter { params, .. } => params,
        }
    }
}

/// Everything the rewrite needs: the tensors and the model metadata to record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QdqPlan {
    /// The quantized tensors, each at most once.
    pub tensors: Vec<QdqTensor>,
    /// `metadata_props` entries to set (replacing entries with the same key).
    pub metadata: Vec<(String, String)>,
}

/// Which operator set a QuantizeLinear/DequantizeLinear pair uses.
///
/// The default ONNX domain when the model's opset already has what the pair needs (8-bit and
/// int32 per-tensor: opset 10; per-channel `axis`: 13; `uint16`/`int16`, `uint4`/`int4`: 21).
/// Otherwise
/// onnxruntime's `com.microsoft` QuantizeLinear/DequantizeLinear (opset 1 of that domain),
/// which accept all of these at any ONNX opset. Raising the model's own opset instead would
/// need every other op converted (Squeeze, Split, ReduceMean, ... changed signature between
/// opsets 11 and 21), so the model's opset is never changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QdqDomain {
    /// The standard ONNX operators.
    Onnx,
    /// onnxruntime's contrib operators.
    Microsoft,
}

impl QdqDomain {
    /// The lowest ONNX opset whose QuantizeLinear/DequantizeLinear express `params`.
    pub fn required_opset(params: &QdqParams) -> i64 {
        if params.dtype.needs_opset_21() {
            21
        } else if params.axis.is_some() {
            13
        } else {
            10
        }
    }

    /// The domain for `params` in a model whose default-domain opset is `opset`.
    pub fn for_params(params: &QdqParams, opset: i64) -> QdqDomain {
        if opset >= Self::required_opset(params) {
            QdqDomain::Onnx
        } else {
            QdqDomain::Microsoft
        }
    }

    fn name(self) -> &'static str {
        match self {
            QdqDomain::Onnx => "",
            QdqDomain::Microsoft => "com.microsoft",
        }
    }
}

/// Why a QDQ rewrite was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QdqError {
    /// The plan names a tensor the model does not have.
    #[error(
        "`{name}` is not a tensor of the model (no initializer, Constant, graph input or node output has that name)"
    )]
    UnknownTensor {
        /// The name.
        name: String,
    },
    /// A parameter in the plan is not stored in the model, or an activation is.
    #[error("`{name}` is planned as {planned} but the model holds it as {actual}")]
    WrongKind {
        /// The name.
        name: String,
        /// What the plan says.
        planned: &'static str,
        /// What the model says.
        actual: &'static str,
    },
    /// The plan's numbers do not fit the tensor.
    #[error("`{name}`: {message}")]
    Plan {
        /// The name.
        name: String,
        /// What is inconsistent.
        message: String,
    },
    /// A parameter's stored value could not be read.
    #[error(transparent)]
    TensorData(#[from] TensorDataError),
}

/// A float parameter as stored in the model: its dims and values.
#[derive(Debug, Clone, PartialEq)]
pub struct ParameterValues {
    /// Dims (empty for a scalar).
    pub dims: Vec<u64>,
    /// Row-major values, widened to `f32`.
    pub values: Vec<f32>,
}

fn constant_value(node: &NodeProto) -> Option<Result<ParameterValues, TensorDataError>> {
    for attr in &node.attribute {
        match attr.name.as_deref() {
            Some("value") => {
                let tensor = attr.t.as_ref()?;
                return Some(tensor_parameter(tensor));
            }
            Some("value_float") => {
                return Some(Ok(ParameterValues {
                    dims: Vec::new(),
                    values: vec![attr.f.unwrap_or(0.0)],
                }));
            }
            Some("value_floats") => {
                return Some(Ok(ParameterValues {
                    dims: vec![attr.floats.len() as u64],
                    values: attr.floats.clone(),
                }));
            }
            _ => {}
        }
    }
    None
}

fn tensor_parameter(tensor: &TensorProto) -> Result<ParameterValues, TensorDataError> {
    let dims = tensor
        .dims
        .iter()
        .map(|&d| u64::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TensorDataError::NegativeDim {
            name: tensor.name.clone().unwrap_or_default(),
            dims: tensor.dims.clone(),
        })?;
    match tensor_values(tensor)? {
        TensorValues::Float(values) => Ok(ParameterValues { dims, values }),
        _ => Err(TensorDataError::NotFloat32 {
            name: tensor.name.clone().unwrap_or_default(),
            dtype: super::tensor::tensor_dtype(tensor).unwrap_or(super::DType::Other(0)),
        }),
    }
}

fn is_constant_producing(node: &NodeProto, name: &str) -> bool {
    node.op_type.as_deref() == Some("Constant")
        && node.domain.as_deref().unwrap_or("").is_empty()
        && node.output.first().map(String::as_str) == Some(name)
}

impl OnnxModel {
    /// The float values of a parameter (initializer, or `Constant` node output), `None` when
    /// `name` is neither. Errors when it is one but its data is not float or unreadable.
    pub fn parameter_values(&self, name: &str) -> Result<Option<ParameterValues>, OnnxError> {
        let Some(graph) = self.proto.graph.as_ref() else {
            return Ok(None);
        };
        let found = if let Some(init) = graph
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(name))
        {
            Some(tensor_parameter(init))
        } else {
            graph
                .node
                .iter()
                .find(|n| is_constant_producing(n, name))
                .and_then(constant_value)
        };
        found
            .transpose()
            .map_err(|source| self.tensor_error(named(source, name)))
    }

    /// The value of a model-level `metadata_props` entry (e.g. the QDQ model's encodings
    /// digest).
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.proto
            .metadata_props
            .iter()
            .find(|entry| entry.key.as_deref() == Some(key))
            .and_then(|entry| entry.value.as_deref())
    }

    /// A copy of this model with the plan's QuantizeLinear/DequantizeLinear nodes (see the
    /// module docs for the layout). The original is left as it is.
    pub fn with_qdq(&self, plan: &QdqPlan) -> Result<OnnxModel, QdqError> {
        let replaced: HashSet<&str> = plan
            .tensors
            .iter()
            .filter_map(|t| match t {
                QdqTensor::Parameter { name, .. } => Some(name.as_str()),
                QdqTensor::Activation { .. } => None,
            })
            .collect();
        let mut model = OnnxModel {
            proto: copy_without_data(&self.proto, &replaced),
            origin: self.origin.clone(),
        };
        rewrite(&mut model.proto, plan)?;
        Ok(model)
    }
}

/// A copy of `proto` in which the initializers named in `replaced` keep their name, type and
/// dims but not their values: the rewrite replaces them with integers anyway, and copying a
/// large model's float weights only to drop them cost more than the rewrite.
fn copy_without_data(proto: &proto::ModelProto, replaced: &HashSet<&str>) -> proto::ModelProto {
    let graph = proto.graph.as_ref().map(|g| proto::GraphProto {
        node: g.node.clone(),
        name: g.name.clone(),
        initializer: g
            .initializer
            .iter()
            .map(|t| match t.name.as_deref() {
                Some(name) if replaced.contains(name) => TensorProto {
                    name: t.name.clone(),
                    data_type: t.data_type,
                    dims: t.dims.clone(),
                    ..Default::default()
                },
                _ => t.clone(),
            })
            .collect(),
        sparse_initializer: g.sparse_initializer.clone(),
        doc_string: g.doc_string.clone(),
        input: g.input.clone(),
        output: g.output.clone(),
        value_info: g.value_info.clone(),
        quantization_annotation: g.quantization_annotation.clone(),
        metadata_props: g.metadata_props.clone(),
    });
    proto::ModelProto {
        ir_version: proto.ir_version,
        opset_import: proto.opset_import.clone(),
        producer_name: proto.producer_name.clone(),
        producer_version: proto.producer_version.clone(),
        domain: proto.domain.clone(),
        model_version: proto.model_version,
        doc_string: proto.doc_string.clone(),
        graph,
        metadata_props: proto.metadata_props.clone(),
        training_info: proto.training_info.clone(),
        functions: proto.functions.clone(),
        configuration: proto.configuration.clone(),
    }
}

/// `Constant` value tensors usually carry an empty name: errors name the output instead.
fn named(error: TensorDataError, name: &str) -> TensorDataError {
    match error {
        TensorDataError::NotFloat32 { dtype, .. } => TensorDataError::NotFloat32 {
            name: name.to_owned(),
            dtype,
        },
        TensorDataError::ElementCount {
            dims,
            expected,
            found,
            ..
        } => TensorDataError::ElementCount {
            name: name.to_owned(),
            dims,
            expected,
            found,
        },
        other => other,
    }
}

/// Names already used by tensors or nodes; new names never collide with them.
struct Names {
    taken: HashSet<String>,
}

impl Names {
    /// Every name `graph` already uses: node names, inputs and outputs, initializers and graph
    /// inputs.
    fn taken_in(graph: &proto::GraphProto) -> Names {
        let mut taken = HashSet::new();
        for node in &graph.node {
            taken.extend(node.output.iter().cloned());
            taken.extend(node.input.iter().cloned());
            taken.extend(node.name.iter().cloned());
        }
        taken.extend(graph.initializer.iter().filter_map(|t| t.name.clone()));
        taken.extend(graph.input.iter().filter_map(|t| t.name.clone()));
        Names { taken }
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

fn tensor_proto(name: String, dtype: i32, dims: Vec<i64>, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name),
        data_type: Some(dtype),
        dims,
        raw_data: Some(raw.into()),
        ..Default::default()
    }
}

fn check_params(name: &str, params: &QdqParams) -> Result<(), QdqError> {
    let plan_error = |message: String| QdqError::Plan {
        name: name.to_owned(),
        message,
    };
    if params.scales.is_empty() || params.scales.len() != params.zero_points.len() {
        return Err(plan_error(format!(
            "{} scales and {} zero points",
            params.scales.len(),
            params.zero_points.len()
        )));
    }
    if params.axis.is_none() && params.scales.len() != 1 {
        return Err(plan_error(format!(
            "{} scales without a channel axis",
            params.scales.len()
        )));
    }
    if let Some(bad) = params.scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(plan_error(format!("scale {bad} is not a positive number")));
    }
    let (lo, hi) = params.dtype.range();
    if let Some(bad) = params.zero_points.iter().find(|z| !(lo..=hi).contains(*z)) {
        return Err(plan_error(format!(
            "zero point {bad} does not fit {:?}",
            params.dtype
        )));
    }
    Ok(())
}

/// Scale and zero-point initializers; returns their names.
fn push_params(
    initializers: &mut Vec<TensorProto>,
    names: &mut Names,
    base: &str,
    params: &QdqParams,
) -> (String, String) {
    let dims = match params.axis {
        Some(_) => vec![params.scales.len() as i64],
        None => Vec::new(),
    };
    let scale = names.fresh(format!("{base}_scale"));
    let zero_point = names.fresh(format!("{base}_zero_point"));
    let scale_bytes = params.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
    initializers.push(tensor_proto(scale.clone(), 1, dims.clone(), scale_bytes));
    initializers.push(tensor_proto(
        zero_point.clone(),
        params.dtype.onnx_code(),
        dims,
        params.dtype.little_endian(&params.zero_points),
    ));
    (scale, zero_point)
}

fn qdq_node(
    op_type: &str,
    name: String,
    inputs: [String; 3],
    output: String,
    params: &QdqParams,
    domain: QdqDomain,
) -> NodeProto {
    let attribute = match (op_type, params.axis) {
        ("DequantizeLinear", Some(axis)) => vec![AttributeProto {
            name: Some("axis".into()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(axis as i64),
            ..Default::default()
        }],
        _ => Vec::new(),
    };
    NodeProto {
        input: inputs.into(),
        output: vec![output],
        name: Some(name),
        op_type: Some(op_type.into()),
        domain: Some(domain.name().into()).filter(|d: &String| !d.is_empty()),
        attribute,
        ..Default::default()
    }
}

/// Rewrites `model` in place as `plan` says, one phase after another. Placing the planned
/// tensors owns every refusal, so the phases after it cannot fail: they build what the
/// placements add, splice it into the graph, and declare what the new nodes need.
fn rewrite(model: &mut proto::ModelProto, plan: &QdqPlan) -> Result<(), QdqError> {
    let opset = default_domain_opset(model);
    let graph = model.graph.get_or_insert_with(Default::default);
    let placements = place(graph, plan, opset)?;
    let Additions {
        initializers,
        nodes,
        removed_parameters,
    } = build(Names::taken_in(graph), &placements);
    replace_parameters(graph, &removed_parameters, initializers);
    splice_nodes(graph, nodes, &removed_parameters);
    if placements.iter().any(|p| p.domain == QdqDomain::Microsoft) {
        declare_microsoft_domain(model);
    }
    record_metadata(model, &plan.metadata);
    Ok(())
}

/// The model's opset of the default ONNX domain: it decides which [`QdqDomain`] each pair
/// needs. A model that declares none is read as opset 1, the most conservative.
fn default_domain_opset(model: &proto::ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| {
            o.domain.as_deref().unwrap_or("").is_empty() || o.domain.as_deref() == Some("ai.onnx")
        })
        .and_then(|o| o.version)
        .unwrap_or(1)
}

/// One planned tensor, checked against the model, with where its nodes go.
struct Placement<'p> {
    /// The tensor's name in the float model.
    name: &'p str,
    params: &'p QdqParams,
    /// Decided once per tensor, so the nodes and the model's `opset_import` agree.
    domain: QdqDomain,
    kind: PlacementKind<'p>,
}

/// What a planned tensor is in the model, which decides the nodes it gets.
enum PlacementKind<'p> {
    /// An initializer or `Constant` output, replaced by `values` (in `dims`) behind a
    /// DequantizeLinear.
    Parameter {
        dims: Vec<i64>,
        values: &'p QdqValues,
    },
    /// A graph input or node output, followed by a QuantizeLinear → DequantizeLinear pair.
    Activation { site: ActivationSite },
}

/// Where an activation's pair goes, and which name its consumers see.
#[derive(Clone, Copy)]
enum ActivationSite {
    /// Before every node; a graph input cannot be renamed, so its consumers are rewired.
    GraphInput,
    /// Right after the producing node. A graph output keeps its name on the DequantizeLinear
    /// (the producer's output is renamed); any other activation's consumers are rewired.
    Producer { graph_output: bool },
}

/// The names the model gives its tensors, by what they are: what each planned tensor is
/// checked against.
struct ModelTensors<'g> {
    /// Initializers and `Constant` outputs.
    parameters: HashSet<&'g str>,
    graph_inputs: HashSet<&'g str>,
    graph_outputs: HashSet<&'g str>,
    node_outputs: HashSet<&'g str>,
}

impl<'g> ModelTensors<'g> {
    fn of(graph: &'g proto::GraphProto) -> Self {
        let names = |values: &'g [proto::ValueInfoProto]| {
            values.iter().filter_map(|v| v.name.as_deref()).collect()
        };
        let constant_outputs = graph
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some("Constant"))
            .filter_map(|n| n.output.first().map(String::as_str));
        ModelTensors {
            parameters: graph
                .initializer
                .iter()
                .filter_map(|t| t.name.as_deref())
                .chain(constant_outputs)
                .collect(),
            graph_inputs: names(&graph.input),
            graph_outputs: names(&graph.output),
            node_outputs: graph
                .node
                .iter()
                .flat_map(|n| n.output.iter().map(String::as_str))
                .collect(),
        }
    }
}

/// Checks every planned tensor against the model and decides where its nodes go. Owns every
/// refusal of the rewrite; tensors are checked in plan order, so the error is always the one
/// of the first tensor that does not fit.
fn place<'p>(
    graph: &proto::GraphProto,
    plan: &'p QdqPlan,
    opset: i64,
) -> Result<Vec<Placement<'p>>, QdqError> {
    let model = ModelTensors::of(graph);
    let mut seen = HashSet::new();
    plan.tensors
        .iter()
        .map(|tensor| {
            let name = tensor.name();
            if !seen.insert(name) {
                return Err(QdqError::Plan {
                    name: name.to_owned(),
                    message: "planned twice".into(),
                });
            }
            let params = tensor.params();
            check_params(name, params)?;
            let kind = match tensor {
                QdqTensor::Parameter { values, .. } => {
                    place_parameter(graph, &model, name, params, values)?
                }
                QdqTensor::Activation { .. } => place_activation(&model, name)?,
            };
            Ok(Placement {
                name,
                params,
                domain: QdqDomain::for_params(params, opset),
                kind,
            })
        })
        .collect()
}

/// A planned parameter must be stored in the model, and its integers must fill the stored
/// dims (and its scales the channel axis): the initializer is written with those dims.
fn place_parameter<'p>(
    graph: &proto::GraphProto,
    model: &ModelTensors,
    name: &str,
    params: &QdqParams,
    values: &'p QdqValues,
) -> Result<PlacementKind<'p>, QdqError> {
    let plan_error = |message: String| QdqError::Plan {
        name: name.to_owned(),
        message,
    };
    if !model.parameters.contains(name) {
        return Err(
            if model.graph_inputs.contains(name) || model.node_outputs.contains(name) {
                QdqError::WrongKind {
                    name: name.to_owned(),
                    planned: "a parameter",
                    actual: "an activation",
                }
            } else {
                QdqError::UnknownTensor {
                    name: name.to_owned(),
                }
            },
        );
    }
    if values.dtype() != params.dtype {
        return Err(plan_error(format!(
            "values stored as {:?} for a {:?} parameter",
            values.dtype(),
            params.dtype
        )));
    }
    let dims = parameter_dims(graph, name)
        .ok_or_else(|| plan_error("the parameter's dims cannot be read".into()))?;
    let count: i64 = dims.iter().product();
    if count != values.len() as i64 {
        return Err(plan_error(format!(
            "{} stored values for dims {dims:?} ({count} elements)",
            values.len()
        )));
    }
    if let Some(axis) = params.axis {
        let channels = dims.get(axis).copied();
        if channels != Some(params.scales.len() as i64) {
            return Err(plan_error(format!(
                "{} per-channel scales along axis {axis} of dims {dims:?}",
                params.scales.len()
            )));
        }
    }
    Ok(PlacementKind::Parameter { dims, values })
}

/// A planned activation must be a graph input or a node output, never a stored parameter
/// (those are quantized as parameters, behind a DequantizeLinear only).
fn place_activation(model: &ModelTensors, name: &str) -> Result<PlacementKind<'static>, QdqError> {
    if model.parameters.contains(name) {
        return Err(QdqError::WrongKind {
            name: name.to_owned(),
            planned: "an activation",
            actual: "a parameter",
        });
    }
    let site = if model.graph_inputs.contains(name) {
        ActivationSite::GraphInput
    } else if model.node_outputs.contains(name) {
        ActivationSite::Producer {
            graph_output: model.graph_outputs.contains(name),
        }
    } else {
        return Err(QdqError::UnknownTensor {
            name: name.to_owned(),
        });
    };
    Ok(PlacementKind::Activation { site })
}

/// What the placements add to the graph and what they take out of it.
struct Additions {
    /// Scales, zero points and quantized parameters, in plan order.
    initializers: Vec<TensorProto>,
    nodes: NodeEdits,
    /// Parameters now written by their DequantizeLinear: their float initializers, graph
    /// inputs and `Constant` nodes go.
    removed_parameters: HashSet<String>,
}

/// The Q/DQ nodes and how the existing nodes change around them.
#[derive(Default)]
struct NodeEdits {
    /// Nodes to insert before all others (parameters, graph inputs).
    leading: Vec<NodeProto>,
    /// Nodes to insert right after the producer of a tensor.
    after: HashMap<String, Vec<NodeProto>>,
    /// Consumers of these names read the replacement instead.
    rewire: HashMap<String, String>,
    /// Producer outputs renamed so that a graph output keeps its name on the DequantizeLinear.
    renamed_outputs: HashMap<String, String>,
}

/// Builds every placement's initializers and nodes. One placement at a time and in plan order,
/// because fresh names are taken in that order: the same plan always gets the same names.
fn build(mut names: Names, placements: &[Placement]) -> Additions {
    let mut additions = Additions {
        initializers: Vec::new(),
        nodes: NodeEdits::default(),
        removed_parameters: HashSet::new(),
    };
    for placement in placements {
        match &placement.kind {
            PlacementKind::Parameter { dims, values } => {
                additions.add_parameter(&mut names, placement, dims.clone(), values);
            }
            PlacementKind::Activation { site } => {
                additions.add_activation(&mut names, placement, *site);
            }
        }
    }
    additions
}

impl Additions {
    /// `w` becomes `w_quantized` (the integers), its scale and zero point, and a leading
    /// DequantizeLinear that writes `w`, so that its consumers stay as they are.
    fn add_parameter(
        &mut self,
        names: &mut Names,
        placement: &Placement,
        dims: Vec<i64>,
        values: &QdqValues,
    ) {
        let Placement {
            name,
            params,
            domain,
            ..
        } = *placement;
        let quantized = names.fresh(format!("{name}_quantized"));
        self.initializers.push(tensor_proto(
            quantized.clone(),
            params.dtype.onnx_code(),
            dims,
            params.dtype.raw_bytes(&values.bytes),
        ));
        let (scale, zero_point) = push_params(&mut self.initializers, names, name, params);
        let node_name = names.fresh(format!("{name}_DequantizeLinear"));
        self.nodes.leading.push(qdq_node(
            "DequantizeLinear",
            node_name,
            [quantized, scale, zero_point],
            name.to_owned(),
            params,
            domain,
        ));
        self.removed_parameters.insert(name.to_owned());
    }

    /// `t` gets its scale and zero point and a QuantizeLinear → DequantizeLinear pair at its
    /// site; consumers read the DequantizeLinear's output.
    fn add_activation(&mut self, names: &mut Names, placement: &Placement, site: ActivationSite) {
        let Placement {
            name,
            params,
            domain,
            ..
        } = *placement;
        let keep_name = matches!(site, ActivationSite::Producer { graph_output: true });
        let float_input = if keep_name {
            let renamed = names.fresh(format!("{name}_QuantizeLinear_Input"));
            self.nodes
                .renamed_outputs
                .insert(name.to_owned(), renamed.clone());
            renamed
        } else {
            name.to_owned()
        };
        let (scale, zero_point) = push_params(&mut self.initializers, names, name, params);
        let quantized = names.fresh(format!("{name}_QuantizeLinear_Output"));
        let dequantized = if keep_name {
            name.to_owned()
        } else {
            names.fresh(format!("{name}_DequantizeLinear_Output"))
        };
        let q = qdq_node(
            "QuantizeLinear",
            names.fresh(format!("{name}_QuantizeLinear")),
            [float_input, scale.clone(), zero_point.clone()],
            quantized.clone(),
            params,
            domain,
        );
        let dq = qdq_node(
            "DequantizeLinear",
            names.fresh(format!("{name}_DequantizeLinear")),
            [quantized, scale, zero_point],
            dequantized.clone(),
            params,
            domain,
        );
        if !keep_name {
            self.nodes.rewire.insert(name.to_owned(), dequantized);
        }
        match site {
            ActivationSite::GraphInput => self.nodes.leading.extend([q, dq]),
            ActivationSite::Producer { .. } => {
                self.nodes
                    .after
                    .entry(name.to_owned())
                    .or_default()
                    .extend([q, dq]);
            }
        }
    }
}

/// Parameters now come from their DequantizeLinear: their float initializers (and the graph
/// inputs that declared them) give way to the new initializers, appended after the kept ones.
fn replace_parameters(
    graph: &mut proto::GraphProto,
    removed: &HashSet<String>,
    initializers: Vec<TensorProto>,
) {
    let is_removed = |name: &Option<String>| name.as_deref().is_some_and(|n| removed.contains(n));
    graph.initializer.retain(|t| !is_removed(&t.name));
    graph.input.retain(|t| !is_removed(&t.name));
    graph.initializer.extend(initializers);
}

/// Inserts the Q/DQ nodes into the node list, rewires consumers and renames producers'
/// outputs, dropping the `Constant` nodes of replaced parameters. The original nodes keep
/// their order, and each pair sits right after its producer, so the list stays topologically
/// sorted without sorting it.
fn splice_nodes(graph: &mut proto::GraphProto, edits: NodeEdits, removed: &HashSet<String>) {
    let NodeEdits {
        leading,
        mut after,
        rewire,
        renamed_outputs,
    } = edits;
    let old_nodes = std::mem::take(&mut graph.node);
    let mut nodes = Vec::with_capacity(old_nodes.len() + leading.len() + 2 * after.len());
    nodes.extend(leading);
    for mut node in old_nodes {
        if node.op_type.as_deref() == Some("Constant")
            && node.output.first().is_some_and(|o| removed.contains(o))
        {
            continue;
        }
        for input in &mut node.input {
            if let Some(replacement) = rewire.get(input.as_str()) {
                *input = replacement.clone();
            }
        }
        let mut inserted = Vec::new();
        for output in &mut node.output {
            if let Some(pair) = after.remove(output.as_str()) {
                inserted.extend(pair);
            }
            if let Some(renamed) = renamed_outputs.get(output.as_str()) {
                *output = renamed.clone();
            }
        }
        nodes.push(node);
        nodes.extend(inserted);
    }
    graph.node = nodes;
}

/// Declares opset 1 of `com.microsoft` (once): without it, onnxruntime rejects the contrib
/// QuantizeLinear/DequantizeLinear the model's own opset could not express.
fn declare_microsoft_domain(model: &mut proto::ModelProto) {
    if !model
        .opset_import
        .iter()
        .any(|o| o.domain.as_deref() == Some("com.microsoft"))
    {
        model.opset_import.push(OperatorSetIdProto {
            domain: Some("com.microsoft".into()),
            version: Some(1),
        });
    }
}

/// Sets the plan's `metadata_props` (e.g. the encodings digest the export reads back), each
/// key once: an entry already there is replaced, not duplicated.
fn record_metadata(model: &mut proto::ModelProto, metadata: &[(String, String)]) {
    for (key, value) in metadata {
        model
            .metadata_props
            .retain(|entry| entry.key.as_deref() != Some(key.as_str()));
        model.metadata_props.push(StringStringEntryProto {
            key: Some(key.clone()),
            value: Some(value.clone()),
        });
    }
}

fn parameter_dims(graph: &proto::GraphProto, name: &str) -> Option<Vec<i64>> {
    if let Some(init) = graph
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
    {
        return Some(init.dims.clone());
    }
    let node = graph.node.iter().find(|n| is_constant_producing(n, name))?;
    let values = constant_value(node)?.ok()?;
    Some(values.dims.iter().map(|&d| d as i64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// `x → Relu → y` with a Constant weight feeding `Mul(y, w) → z` (z is the graph output).
    fn tiny() -> OnnxModel {
        use proto::*;
        let value_info = |name: &str| ValueInfoProto {
            name: Some(name.into()),
            ..Default::default()
        };
        let w = TensorProto {
            name: Some(String::new()),
            data_type: Some(1),
            dims: vec![2],
            float_data: vec![0.5, -1.0],
            ..Default::default()
        };
        let node = |op: &str, inputs: &[&str], output: &str| NodeProto {
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: Some(format!("{op}_0")),
            ..Default::default()
        };
        let mut constant = node("Constant", &[], "w");
        constant.attribute.push(AttributeProto {
            name: Some("value".into()),
            r#type: Some(AttributeType::Tensor as i32),
            t: Some(w),
            ..Default::default()
        });
        let model = ModelProto {
            ir_version: Some(7),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(11),
            }],
            graph: Some(GraphProto {
                node: vec![
                    constant,
                    node("Relu", &["x"], "y"),
                    node("Mul", &["y", "w"], "z"),
                ],
                input: vec![value_info("x")],
                output: vec![value_info("z")],
                ..Default::default()
            }),
            ..Default::default()
        };
        OnnxModel {
            proto: model,
            origin: Path::new("<memory>").to_owned(),
        }
    }

    fn u8_params(scale: f32, zero_point: i64) -> QdqParams {
        QdqParams {
            dtype: QuantizedType::Uint8,
            scales: vec![scale],
            zero_points: vec![zero_point],
            axis: None,
        }
    }

    #[test]
    fn reads_constant_parameters() {
        let model = tiny();
        let w = model.parameter_values("w").unwrap().unwrap();
        assert_eq!(w.dims, [2]);
        assert_eq!(w.values, [0.5, -1.0]);
        assert_eq!(model.parameter_values("y").unwrap(), None);
    }

    #[test]
    fn rewires_activations_and_keeps_output_names() {
        let plan = QdqPlan {
            tensors: vec![
                QdqTensor::Activation {
                    name: "y".into(),
                    params: u8_params(0.1, 0),
                },
                QdqTensor::Activation {
                    name: "z".into(),
                    params: u8_params(0.2, 128),
                },
                QdqTensor::Parameter {
                    name: "w".into(),
                    params: QdqParams {
                        dtype: QuantizedType::Int8,
                        scales: vec![1.0 / 127.0],
                        zero_points: vec![0],
                        axis: None,
                    },
                    values: QdqValues::new(QuantizedType::Int8, [64, -127]).unwrap(),
                },
            ],
            metadata: vec![("quant.encodings_digest".into(), "abc".into())],
        };
        let out = tiny().with_qdq(&plan).unwrap();
        let graph = out.proto().graph.as_ref().unwrap();
        let ops: Vec<(&str, Vec<&str>, &str)> = graph
            .node
            .iter()
            .map(|n| {
                (
                    n.op_type.as_deref().unwrap(),
                    n.input.iter().map(String::as_str).collect(),
                    n.output[0].as_str(),
                )
            })
            .collect();
        assert_eq!(
            ops,
            [
                (
                    "DequantizeLinear",
                    vec!["w_quantized", "w_scale", "w_zero_point"],
                    "w"
                ),
                ("Relu", vec!["x"], "y"),
                (
                    "QuantizeLinear",
                    vec!["y", "y_scale", "y_zero_point"],
                    "y_QuantizeLinear_Output"
                ),
                (
                    "DequantizeLinear",
                    vec!["y_QuantizeLinear_Output", "y_scale", "y_zero_point"],
                    "y_DequantizeLinear_Output"
                ),
                (
                    "Mul",
                    vec!["y_DequantizeLinear_Output", "w"],
                    "z_QuantizeLinear_Input"
                ),
                (
                    "QuantizeLinear",
                    vec!["z_QuantizeLinear_Input", "z_scale", "z_zero_point"],
                    "z_QuantizeLinear_Output"
                ),
                (
                    "DequantizeLinear",
                    vec!["z_QuantizeLinear_Output", "z_scale", "z_zero_point"],
                    "z"
                ),
            ]
        );
        let w = graph
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some("w_quantized"))
            .unwrap();
        assert_eq!(w.data_type, Some(3));
        assert_eq!(w.raw_data.as_deref(), Some(&[64u8, 129][..]));
        assert_eq!(out.proto().metadata_props[0].value.as_deref(), Some("abc"));
        // Opset 11 has everything an 8-bit per-tensor pair needs.
        assert!(graph.node.iter().all(|n| n.domain.is_none()));
    }

    #[test]
    fn four_bit_parameters_are_packed_int4_behind_a_microsoft_dequantize_below_opset_21() {
        let params = QdqParams {
            dtype: QuantizedType::Int4,
            scales: vec![0.5, 0.25],
            zero_points: vec![0, -1],
            axis: Some(0),
        };
        assert_eq!(QdqDomain::for_params(&params, 11), QdqDomain::Microsoft);
        assert_eq!(QdqDomain::for_params(&params, 21), QdqDomain::Onnx);
        assert_eq!(QdqValues::new(QuantizedType::Int4, [8]), Err(8));
        let plan = QdqPlan {
            tensors: vec![QdqTensor::Parameter {
                name: "w".into(),
                params,
                values: QdqValues::new(QuantizedType::Int4, [-1, 7]).unwrap(),
            }],
            metadata: Vec::new(),
        };
        let out = tiny().with_qdq(&plan).unwrap();
        let graph = out.proto().graph.as_ref().unwrap();
        let find = |name: &str| {
            graph
                .initializer
                .iter()
                .find(|t| t.name.as_deref() == Some(name))
                .unwrap()
        };
        let w = find("w_quantized");
        // ONNX INT4: two values a byte, the first in the low nibble.
        assert_eq!((w.data_type, &w.dims[..]), (Some(22), &[2i64][..]));
        assert_eq!(w.raw_data.as_deref(), Some(&[0x7Fu8][..]));
        let zero_point = find("w_zero_point");
        assert_eq!(zero_point.data_type, Some(22));
        assert_eq!(zero_point.raw_data.as_deref(), Some(&[0xF0u8][..]));
        let dq = &graph.node[0];
        assert_eq!(dq.op_type.as_deref(), Some("DequantizeLinear"));
        assert_eq!(dq.domain.as_deref(), Some("com.microsoft"));
    }

    #[test]
    fn sixteen_bit_below_opset_21_uses_the_microsoft_domain() {
        let params = QdqParams {
            dtype: QuantizedType::Uint16,
            ..u8_params(0.1, 30_000)
        };
        assert_eq!(QdqDomain::for_params(&params, 11), QdqDomain::Microsoft);
        assert_eq!(QdqDomain::for_params(&params, 21), QdqDomain::Onnx);
        let plan = QdqPlan {
            tensors: vec![QdqTensor::Activation {
                name: "y".into(),
                params,
            }],
            metadata: Vec::new(),
        };
        let out = tiny().with_qdq(&plan).unwrap();
        let q = &out.proto().graph.as_ref().unwrap().node[2];
        assert_eq!(q.op_type.as_deref(), Some("QuantizeLinear"));
        assert_eq!(q.domain.as_deref(), Some("com.microsoft"));
        assert!(
            out.proto()
                .opset_import
                .iter()
                .any(|o| o.domain.as_deref() == Some("com.microsoft"))
        );
    }

    #[test]
    fn refuses_inconsistent_plans() {
        let model = tiny();
        let plan = |tensor| QdqPlan {
            tensors: vec![tensor],
            metadata: Vec::new(),
        };
        let err = model
            .with_qdq(&plan(QdqTensor::Activation {
                name: "nope".into(),
                params: u8_params(0.1, 0),
            }))
            .unwrap_err();
        assert!(matches!(err, QdqError::UnknownTensor { .. }), "{err}");
        let err = model
            .with_qdq(&plan(QdqTensor::Activation {
                name: "w".into(),
                params: u8_params(0.1, 0),
            }))
            .unwrap_err();
        assert!(matches!(err, QdqError::WrongKind { .. }), "{err}");
        let err = model
            .with_qdq(&plan(QdqTensor::Activation {
                name: "y".into(),
                params: u8_params(0.1, 300),
            }))
            .unwrap_err();
        assert!(err.to_string().contains("zero point 300"), "{err}");
        let err = model
            .with_qdq(&plan(QdqTensor::Parameter {
                name: "w".into(),
                params: u8_params(0.1, 0),
                values: QdqValues::new(QuantizedType::Uint8, [1, 2, 3]).unwrap(),
            }))
            .unwrap_err();
        assert!(err.to_string().contains("3 stored values"), "{err}");
    }
}
