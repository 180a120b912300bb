//! A protobuf-free copy of what a model's main graph says: value infos, initializers with their
//! decoded values, nodes with their attributes. `graph` builds its IR from this, so protobuf
//! types never leave `onnx`. It must not add meaning (roles, rules); it only transcribes.

use super::DType;
use super::proto::{self, attribute_proto::AttributeType, tensor_shape_proto, type_proto};
use super::tensor::{TensorDataError, TensorValues, stored_values, tensor_dtype};
use std::fmt;

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A known size.
    Fixed(u64),
    /// A named symbolic size (`dim_param`), e.g. `"batch"` or `"?"`.
    Symbolic(String),
    /// Neither a size nor a name (or a negative `dim_value` such as paddle2onnx's `-1`).
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(name) => f.write_str(name),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// A declared tensor type: graph inputs, outputs and `value_info` entries.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    /// Tensor name.
    pub name: String,
    /// Element type, when declared.
    pub dtype: Option<DType>,
    /// Shape, when declared (a declared rank with unknown dims is `Some`).
    pub shape: Option<Vec<Dim>>,
}

/// A constant tensor: an initializer or the `value` of a `Constant` node.
#[derive(Debug, Clone)]
pub struct TensorContents {
    /// Name stored in the tensor itself (for `Constant` values often empty or stale: use the
    /// node's output name instead).
    pub name: String,
    /// Element type, when defined.
    pub dtype: Option<DType>,
    /// Dims (empty for a scalar).
    pub dims: Vec<u64>,
    /// Values; float `raw_data` read from a model stays shared with the model's buffer
    /// ([`TensorValues::Stored`]) until read.
    pub values: TensorValues,
}

/// An attribute value. Subgraphs and sparse tensors are only marked, not transcribed.
#[derive(Debug, Clone)]
pub enum AttributeValue {
    /// `INT`.
    Int(i64),
    /// `FLOAT`.
    Float(f32),
    /// `STRING` (lossy UTF-8).
    String(String),
    /// `INTS`.
    Ints(Vec<i64>),
    /// `FLOATS`.
    Floats(Vec<f32>),
    /// `STRINGS` (lossy UTF-8).
    Strings(Vec<String>),
    /// `TENSOR`.
    Tensor(TensorContents),
    /// Anything else (graphs, sparse tensors, type protos).
    Unsupported,
}

/// One node of the main graph.
#[derive(Debug, Clone)]
pub struct NodeContents {
    /// Node name (may be empty: paddle2onnx leaves several `Constant` nodes unnamed).
    pub name: String,
    /// Operator type, e.g. `"Conv"`.
    pub op_type: String,
    /// Operator domain; empty for the default ONNX domain.
    pub domain: String,
    /// Input names in order; an empty string is an omitted optional input.
    pub inputs: Vec<String>,
    /// Output names in order.
    pub outputs: Vec<String>,
    /// Attributes in stored order.
    pub attributes: Vec<(String, AttributeValue)>,
}

/// Everything the IR needs from a model, free of protobuf types.
#[derive(Debug, Clone)]
pub struct GraphContents {
    /// `ir_version` of the model.
    pub ir_version: Option<i64>,
    /// Opset version of the default (`ai.onnx`) domain.
    pub opset: Option<i64>,
    /// Graph inputs (may include initializers in models older than IR 4).
    pub inputs: Vec<ValueInfo>,
    /// Graph outputs.
    pub outputs: Vec<ValueInfo>,
    /// `value_info` entries (intermediate tensor types, when the exporter wrote them).
    pub value_info: Vec<ValueInfo>,
    /// Initializers with their values.
    pub initializers: Vec<TensorContents>,
    /// Nodes in stored (topological) order.
    pub nodes: Vec<NodeContents>,
}

pub(super) fn transcribe(model: &proto::ModelProto) -> Result<GraphContents, TensorDataError> {
    let opset = model
        .opset_import
        .iter()
        .find(|o| {
            o.domain.as_deref().unwrap_or("").is_empty() || o.domain.as_deref() == Some("ai.onnx")
        })
        .and_then(|o| o.version);
    let empty = proto::GraphProto::default();
    let graph = model.graph.as_ref().unwrap_or(&empty);
    Ok(GraphContents {
        ir_version: model.ir_version,
        opset,
        inputs: graph.input.iter().map(value_info).collect(),
        outputs: graph.output.iter().map(value_info).collect(),
        value_info: graph.value_info.iter().map(value_info).collect(),
        initializers: graph
            .initializer
            .iter()
            .map(tensor_contents)
            .collect::<Result<_, _>>()?,
        nodes: graph
            .node
            .iter()
            .map(node_contents)
            .collect::<Result<_, _>>()?,
    })
}

fn value_info(info: &proto::ValueInfoProto) -> ValueInfo {
    let tensor_type = match info.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => Some(t),
        _ => None,
    };
    ValueInfo {
        name: info.name.clone().unwrap_or_default(),
        dtype: tensor_type.and_then(|t| DType::from_onnx(t.elem_type.unwrap_or(0))),
        shape: tensor_type.and_then(|t| t.shape.as_ref()).map(|shape| {
            shape
                .dim
                .iter()
                .map(|d| match &d.value {
                    Some(tensor_shape_proto::dimension::Value::DimValue(v)) if *v >= 0 => {
                        Dim::Fixed(*v as u64)
                    }
                    Some(tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => {
                        Dim::Symbolic(p.clone())
                    }
                    _ => Dim::Unknown,
                })
                .collect()
        }),
    }
}

fn tensor_contents(tensor: &proto::TensorProto) -> Result<TensorContents, TensorDataError> {
    Ok(TensorContents {
        name: tensor.name.clone().unwrap_or_default(),
        dtype: tensor_dtype(tensor),
        // Negative dims are rejected by `stored_values` below, so the cast cannot wrap there.
        dims: tensor.dims.iter().map(|&d| d.max(0) as u64).collect(),
        values: stored_values(tensor)?,
    })
}

fn node_contents(node: &proto::NodeProto) -> Result<NodeContents, TensorDataError> {
    Ok(NodeContents {
        name: node.name.clone().unwrap_or_default(),
        op_type: node.op_type.clone().unwrap_or_default(),
        domain: node.domain.clone().unwrap_or_default(),
        inputs: node.input.clone(),
        outputs: node.output.clone(),
        attributes: node
            .attribute
            .iter()
            .map(|a| Ok((a.name.clone().unwrap_or_default(), attribute_value(a)?)))
            .collect::<Result<_, TensorDataError>>()?,
    })
}

fn attribute_value(a: &proto::AttributeProto) -> Result<AttributeValue, TensorDataError> {
    let lossy = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let declared = a.r#type.and_then(|t| AttributeType::try_from(t).ok());
    // Files older than IR 2 leave `type` unset: infer it from the field that is filled.
    let kind = declared
        .filter(|t| *t != AttributeType::Undefined)
        .unwrap_or(if a.t.is_some() {
            AttributeType::Tensor
        } else if !a.floats.is_empty() {
            AttributeType::Floats
        } else if !a.ints.is_empty() {
            AttributeType::Ints
        } else if !a.strings.is_empty() {
            AttributeType::Strings
        } else if a.s.is_some() {
            AttributeType::String
        } else if a.f.is_some() {
            AttributeType::Float
        } else if a.i.is_some() {
            AttributeType::Int
        } else {
            AttributeType::Undefined
        });
    Ok(match kind {
        AttributeType::Int => AttributeValue::Int(a.i.unwrap_or(0)),
        AttributeType::Float => AttributeValue::Float(a.f.unwrap_or(0.0)),
        AttributeType::String => AttributeValue::String(lossy(a.s.as_deref().unwrap_or(&[]))),
        AttributeType::Ints => AttributeValue::Ints(a.ints.clone()),
        AttributeType::Floats => AttributeValue::Floats(a.floats.clone()),
        AttributeType::Strings => {
            AttributeValue::Strings(a.strings.iter().map(|s| lossy(s)).collect())
        }
        AttributeType::Tensor => match &a.t {
            Some(t) => AttributeValue::Tensor(tensor_contents(t)?),
            None => AttributeValue::Unsupported,
        },
        _ => AttributeValue::Unsupported,
    })
}

/// The inverse of [`transcribe`]: a model whose main graph says what `contents` says. Floats are
/// stored as float32 and integers as int64 (int32 for `Int32`, `int32_data` for the narrower
/// types, as ONNX stores them), all as raw little-endian data; `Undecoded` tensors and
/// `Unsupported` attributes are written without a value. Tests build small models with it.
pub(super) fn assemble(contents: &GraphContents) -> proto::ModelProto {
    proto::ModelProto {
        ir_version: contents.ir_version,
        opset_import: vec![proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: contents.opset,
        }],
        producer_name: Some("quant".into()),
        graph: Some(proto::GraphProto {
            name: Some("main".into()),
            node: contents.nodes.iter().map(node_proto).collect(),
            initializer: contents.initializers.iter().map(tensor_proto).collect(),
            input: contents.inputs.iter().map(value_info_proto).collect(),
            output: contents.outputs.iter().map(value_info_proto).collect(),
            value_info: contents.value_info.iter().map(value_info_proto).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn value_info_proto(info: &ValueInfo) -> proto::ValueInfoProto {
    use tensor_shape_proto::{Dimension, dimension::Value};
    let shape = info.shape.as_ref().map(|dims| proto::TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| Dimension {
                value: match d {
                    Dim::Fixed(n) => Some(Value::DimValue(*n as i64)),
                    Dim::Symbolic(name) => Some(Value::DimParam(name.clone())),
                    Dim::Unknown => None,
                },
                denotation: None,
            })
            .collect(),
    });
    proto::ValueInfoProto {
        name: Some(info.name.clone()),
        r#type: Some(proto::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: info.dtype.map(DType::to_onnx),
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tensor_proto(tensor: &TensorContents) -> proto::TensorProto {
    let mut t = proto::TensorProto {
        name: Some(tensor.name.clone()),
        dims: tensor.dims.iter().map(|&d| d as i64).collect(),
        ..Default::default()
    };
    match &tensor.values {
        TensorValues::Float(_) | TensorValues::Stored(_) => {
            let v = tensor.values.floats().unwrap_or_default();
            t.data_type = Some(DType::Float32.to_onnx());
            t.raw_data = Some(raw(v.iter().flat_map(|x| x.to_le_bytes())));
        }
        TensorValues::Int(v) => match tensor.dtype {
            Some(DType::Int32) => {
                t.data_type = Some(DType::Int32.to_onnx());
                t.raw_data = Some(raw(v.iter().flat_map(|&x| (x as i32).to_le_bytes())));
            }
            Some(
                dtype @ (DType::Int8 | DType::Uint8 | DType::Int16 | DType::Uint16 | DType::Bool),
            ) => {
                t.data_type = Some(dtype.to_onnx());
                t.int32_data = v.iter().map(|&x| x as i32).collect();
            }
            _ => {
                t.data_type = Some(DType::Int64.to_onnx());
                t.raw_data = Some(raw(v.iter().flat_map(|x| x.to_le_bytes())));
            }
        },
        TensorValues::Undecoded => t.data_type = tensor.dtype.map(DType::to_onnx),
    }
    t
}

fn raw(bytes: impl Iterator<Item = u8>) -> bytes::Bytes {
    bytes.collect::<Vec<u8>>().into()
}

fn node_proto(node: &NodeContents) -> proto::NodeProto {
    proto::NodeProto {
        name: Some(node.name.clone()),
        op_type: Some(node.op_type.clone()),
        domain: (!node.domain.is_empty()).then(|| node.domain.clone()),
        input: node.inputs.clone(),
        output: node.outputs.clone(),
        attribute: node
            .attributes
            .iter()
            .map(|(name, value)| attribute_proto(name, value))
            .collect(),
        ..Default::default()
    }
}

fn attribute_proto(name: &str, value: &AttributeValue) -> proto::AttributeProto {
    let mut a = proto::AttributeProto {
        name: Some(name.to_owned()),
        ..Default::default()
    };
    let kind = match value {
        AttributeValue::Int(i) => {
            a.i = Some(*i);
            AttributeType::Int
        }
        AttributeValue::Float(f) => {
            a.f = Some(*f);
            AttributeType::Float
        }
        AttributeValue::String(s) => {
            a.s = Some(s.clone().into_bytes());
            AttributeType::String
        }
        AttributeValue::Ints(v) => {
            a.ints = v.clone();
            AttributeType::Ints
        }
        AttributeValue::Floats(v) => {
            a.floats = v.clone();
            AttributeType::Floats
        }
        AttributeValue::Strings(v) => {
            a.strings = v.iter().map(|s| s.clone().into_bytes()).collect();
            AttributeType::Strings
        }
        AttributeValue::Tensor(t) => {
            a.t = Some(tensor_proto(t));
            AttributeType::Tensor
        }
        AttributeValue::Unsupported => AttributeType::Undefined,
    };
    a.r#type = Some(kind as i32);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembling_then_transcribing_gives_the_contents_back() {
        let floats = |name: &str, dims: Vec<u64>, v: Vec<f32>| TensorContents {
            name: name.into(),
            dtype: Some(DType::Float32),
            dims,
            values: TensorValues::Float(v),
        };
        let contents = GraphContents {
            ir_version: Some(8),
            opset: Some(13),
            inputs: vec![ValueInfo {
                name: "x".into(),
                dtype: Some(DType::Float32),
                shape: Some(vec![Dim::Fixed(1), Dim::Symbolic("h".into()), Dim::Unknown]),
            }],
            outputs: vec![ValueInfo {
                name: "y".into(),
                dtype: Some(DType::Float32),
                shape: None,
            }],
            value_info: Vec::new(),
            initializers: vec![
                floats("w", vec![2, 1], vec![1.5, -2.0]),
                TensorContents {
                    name: "shape".into(),
                    dtype: Some(DType::Int64),
                    dims: vec![2],
                    values: TensorValues::Int(vec![-1, 2]),
                },
                TensorContents {
                    name: "small".into(),
                    dtype: Some(DType::Int8),
                    dims: vec![1],
                    values: TensorValues::Int(vec![-3]),
                },
            ],
            nodes: vec![
                NodeContents {
                    name: "k".into(),
                    op_type: "Constant".into(),
                    domain: String::new(),
                    inputs: Vec::new(),
                    outputs: vec!["c".into()],
                    attributes: vec![(
                        "value".into(),
                        AttributeValue::Tensor(floats("", vec![], vec![3.0])),
                    )],
                },
                NodeContents {
                    name: "g".into(),
                    op_type: "Gemm".into(),
                    domain: String::new(),
                    inputs: vec!["x".into(), "w".into(), String::new()],
                    outputs: vec!["y".into()],
                    attributes: vec![
                        ("transB".into(), AttributeValue::Int(1)),
                        ("alpha".into(), AttributeValue::Float(0.5)),
                        ("mode".into(), AttributeValue::String("a".into())),
                        ("pads".into(), AttributeValue::Ints(vec![0, 1])),
                        ("scales".into(), AttributeValue::Floats(vec![2.0])),
                        ("names".into(), AttributeValue::Strings(vec!["n".into()])),
                    ],
                },
            ],
        };
        let again = transcribe(&assemble(&contents)).unwrap();
        assert_eq!(format!("{again:?}"), format!("{contents:?}"));
    }
}
