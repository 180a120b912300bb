//! Graph edits on a decoded model, for the model transforms (`crate::transform`): setting a
//! float parameter to new values of a new shape, rewiring node inputs and outputs, turning a node
//! into another op, removing nodes, and pruning the parameters and `value_info` entries nothing
//! reads any more. Nodes are addressed by their position in the stored node list, which is the
//! [`crate::graph::NodeId`] of a graph built from the same model.
//!
//! Each edit is mechanical and leaves the graph's meaning to the caller: it must not decide what
//! to fold, scale or rename. Edits keep every other byte of the model as it was, so a transform
//! that changes nothing writes the bytes it read.

use super::proto::{self, tensor_proto::DataLocation};
use super::tensor::{TensorDataError, tensor_dtype};
use super::{DType, OnnxError, OnnxModel};
use std::collections::HashSet;

impl OnnxModel {
    /// Sets the float32 parameter `name` to `values` with shape `dims`, whether or not the shape
    /// changes: an initializer or a `Constant` node's `value` tensor keeps its name, position and
    /// storage form (`raw_data` or `float_data`); a `Constant` holding `value_float(s)` becomes a
    /// `value` tensor. A name no parameter has becomes a new initializer (raw little-endian data)
    /// at the end of the initializer list.
    pub fn set_parameter_f32(
        &mut self,
        name: &str,
        dims: &[u64],
        values: &[f32],
    ) -> Result<(), OnnxError> {
        let expected = dims.iter().product::<u64>() as usize;
        if values.len() != expected {
            return Err(self.tensor_error(TensorDataError::ElementCount {
                name: name.to_owned(),
                dims: dims.iter().map(|&d| d as i64).collect(),
                expected,
                found: values.len(),
            }));
        }
        let origin = self.origin.clone();
        let tensor_err = |source| OnnxError::TensorData {
            path: origin.clone(),
            source,
        };
        let graph = self.graph_mut();
        if let Some(init) = graph
            .initializer
            .iter_mut()
            .find(|t| t.name.as_deref() == Some(name))
        {
            return overwrite_f32(init, name, dims, values).map_err(tensor_err);
        }
        let constant = graph.node.iter_mut().find(|n| {
            n.op_type.as_deref() == Some("Constant")
                && n.output.first().map(String::as_str) == Some(name)
        });
        if let Some(node) = constant {
            let position = node.attribute.iter().position(|a| {
                matches!(
                    a.name.as_deref(),
                    Some("value" | "value_float" | "value_floats")
                )
            });
            let Some(position) = position else {
                return Err(tensor_err(TensorDataError::NotFloat32 {
                    name: name.to_owned(),
                    dtype: DType::Other(0),
                }));
            };
            let attr = &mut node.attribute[position];
            if attr.name.as_deref() == Some("value")
                && let Some(t) = attr.t.as_mut()
            {
                return overwrite_f32(t, name, dims, values).map_err(tensor_err);
            }
            // `value_float(s)` cannot hold a shape: the node gets a `value` tensor instead.
            *attr = proto::AttributeProto {
                name: Some("value".into()),
                r#type: Some(proto::attribute_proto::AttributeType::Tensor as i32),
                t: Some(new_f32_tensor(name, dims, values)),
                ..Default::default()
            };
            return Ok(());
        }
        graph.initializer.push(new_f32_tensor(name, dims, values));
        Ok(())
    }

    /// Makes input `index` of node `node` read `tensor`; an index past the end first pads the
    /// input list with empty names (omitted optional inputs), as a Conv gains its bias.
    pub fn set_node_input(
        &mut self,
        node: usize,
        index: usize,
        tensor: &str,
    ) -> Result<(), OnnxError> {
        let n = self.node_mut(node)?;
        if n.input.len() <= index {
            n.input.resize(index + 1, String::new());
        }
        n.input[index] = tensor.to_owned();
        Ok(())
    }

    /// Makes node `node` write its output `index` under the name `tensor` (the node must have
    /// that output). Readers of the old name are not rewired: that is the caller's plan.
    pub fn set_node_output(
        &mut self,
        node: usize,
        index: usize,
        tensor: &str,
    ) -> Result<(), OnnxError> {
        let origin = self.origin.clone();
        let n = self.node_mut(node)?;
        let Some(slot) = n.output.get_mut(index) else {
            return Err(OnnxError::NoSuchNode {
                path: origin,
                index: node,
                detail: format!("it has no output {index}"),
            });
        };
        *slot = tensor.to_owned();
        Ok(())
    }

    /// Turns node `node` into an `op_type` node of the default domain that keeps its name, its
    /// first `keep_inputs` inputs and its outputs, with no attributes (a `Clip` becomes a `Relu`).
    pub fn replace_op(
        &mut self,
        node: usize,
        op_type: &str,
        keep_inputs: usize,
    ) -> Result<(), OnnxError> {
        let n = self.node_mut(node)?;
        n.op_type = Some(op_type.to_owned());
        n.domain = None;
        n.input.truncate(keep_inputs);
        n.attribute.clear();
        Ok(())
    }

    /// Removes the nodes at these positions (any order, duplicates ignored). The others keep
    /// their relative order; readers of the removed nodes' outputs are not rewired.
    pub fn remove_nodes(&mut self, nodes: &[usize]) -> Result<(), OnnxError> {
        let count = self.graph_node_count();
        if let Some(&bad) = nodes.iter().find(|&&i| i >= count) {
            return Err(self.no_such_node(bad, count));
        }
        let doomed: HashSet<usize> = nodes.iter().copied().collect();
        let graph = self.graph_mut();
        let mut position = 0;
        graph.node.retain(|_| {
            let keep = !doomed.contains(&position);
            position += 1;
            keep
        });
        Ok(())
    }

    /// A model of some of this model's nodes: the nodes at positions `nodes` (in stored order)
    /// and every `Constant` node, reading the float tensors `inputs` (name, dims) as its graph
    /// inputs and producing the float tensors `outputs` as its graph outputs; parameters
    /// nothing in it reads are pruned. AdaRound runs a model this way a part at a time, so a
    /// part's values are computed once rather than once per layer after it. Whether the part is
    /// complete (every tensor it reads is an input, a parameter or produced in it) is the
    /// caller's to ensure; the runtime rejects a model that is not.
    pub fn segment(
        &self,
        nodes: &[usize],
        inputs: &[(&str, &[usize])],
        outputs: &[&str],
    ) -> Result<OnnxModel, OnnxError> {
        let count = self.graph_node_count();
        if let Some(&bad) = nodes.iter().find(|&&i| i >= count) {
            return Err(self.no_such_node(bad, count));
        }
        let keep: HashSet<usize> = nodes.iter().copied().collect();
        let float = |(name, dims): &(&str, &[usize])| {
            super::contents::value_info_proto(&super::ValueInfo {
                name: (*name).to_owned(),
                dtype: Some(DType::Float32),
                shape: Some(dims.iter().map(|&d| super::Dim::Fixed(d as u64)).collect()),
            })
        };
        let mut out = self.clone();
        let graph = out.graph_mut();
        let mut position = 0;
        graph.node.retain(|n| {
            let constant = n.op_type.as_deref() == Some("Constant")
                && n.domain.as_deref().unwrap_or("").is_empty();
            let kept = keep.contains(&position) || constant;
            position += 1;
            kept
        });
        graph.input = inputs.iter().map(float).collect();
        graph.output = outputs
            .iter()
            .map(|name| {
                super::contents::value_info_proto(&super::ValueInfo {
                    name: (*name).to_owned(),
                    dtype: Some(DType::Float32),
                    shape: None,
                })
            })
            .collect();
        out.prune_unused_parameters();
        Ok(out)
    }

    /// Removes initializers and `Constant` nodes that no node (subgraphs included) reads and that
    /// are not graph outputs, with their entries among the graph inputs (models older than IR 4
    /// list initializers there); then drops `value_info` entries of names nothing defines any
    /// more. Returns the removed parameter names in model order.
    pub fn prune_unused_parameters(&mut self) -> Vec<String> {
        let graph = self.graph_mut();
        let mut read: HashSet<String> =
            graph.output.iter().filter_map(|o| o.name.clone()).collect();
        for node in &graph.node {
            collect_reads(node, &mut read);
        }
        let mut removed = Vec::new();
        graph.initializer.retain(|t| {
            let name = t.name.clone().unwrap_or_default();
            let keep = read.contains(&name);
            if !keep {
                removed.push(name);
            }
            keep
        });
        graph.node.retain(|n| {
            let is_constant = n.op_type.as_deref() == Some("Constant")
                && n.domain.as_deref().unwrap_or("").is_empty();
            let unread = is_constant && n.output.iter().all(|o| !read.contains(o));
            if unread {
                removed.extend(n.output.iter().cloned());
            }
            !unread
        });
        let gone: HashSet<&String> = removed.iter().collect();
        graph
            .input
            .retain(|i| !i.name.as_ref().is_some_and(|n| gone.contains(n)));
        let mut defined: HashSet<String> =
            graph.input.iter().filter_map(|i| i.name.clone()).collect();
        defined.extend(graph.initializer.iter().filter_map(|t| t.name.clone()));
        for node in &graph.node {
            defined.extend(node.output.iter().cloned());
        }
        graph
            .value_info
            .retain(|v| v.name.as_ref().is_some_and(|n| defined.contains(n)));
        removed
    }

    fn graph_node_count(&self) -> usize {
        self.proto.graph.as_ref().map_or(0, |g| g.node.len())
    }

    fn no_such_node(&self, index: usize, count: usize) -> OnnxError {
        OnnxError::NoSuchNode {
            path: self.origin.clone(),
            index,
            detail: format!("the graph has {count} nodes"),
        }
    }

    fn node_mut(&mut self, index: usize) -> Result<&mut proto::NodeProto, OnnxError> {
        let count = self.graph_node_count();
        if index >= count {
            return Err(self.no_such_node(index, count));
        }
        Ok(&mut self.graph_mut().node[index])
    }
}

/// Every tensor name a node reads, its subgraphs' reads included (they may capture outer names).
fn collect_reads(node: &proto::NodeProto, read: &mut HashSet<String>) {
    read.extend(node.input.iter().filter(|i| !i.is_empty()).cloned());
    for attr in &node.attribute {
        for graph in attr.g.iter().chain(&attr.graphs) {
            for inner in &graph.node {
                collect_reads(inner, read);
            }
        }
    }
}

/// Overwrites a float32 tensor's dims and values, keeping its storage form.
fn overwrite_f32(
    tensor: &mut proto::TensorProto,
    name: &str,
    dims: &[u64],
    values: &[f32],
) -> Result<(), TensorDataError> {
    if tensor.data_location == Some(DataLocation::External as i32) {
        return Err(TensorDataError::ExternalData {
            name: name.to_owned(),
        });
    }
    let dtype = tensor_dtype(tensor).unwrap_or(DType::Other(0));
    if dtype != DType::Float32 {
        return Err(TensorDataError::NotFloat32 {
            name: name.to_owned(),
            dtype,
        });
    }
    tensor.dims = dims.iter().map(|&d| d as i64).collect();
    if tensor.float_data.is_empty() && !values.is_empty() {
        tensor.raw_data = Some(
            values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        );
    } else {
        tensor.raw_data = None;
        tensor.float_data = values.to_vec();
    }
    Ok(())
}

fn new_f32_tensor(name: &str, dims: &[u64], values: &[f32]) -> proto::TensorProto {
    proto::TensorProto {
        name: Some(name.to_owned()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DType::Float32.to_onnx()),
        raw_data: Some(
            values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        ),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        AttributeValue, GraphContents, NodeContents, TensorContents, TensorValues, ValueInfo,
    };
    use super::*;
    use std::path::Path;

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

    fn floats(name: &str, dims: &[u64], values: Vec<f32>) -> TensorContents {
        TensorContents {
            name: name.into(),
            dtype: Some(DType::Float32),
            dims: dims.to_vec(),
            values: TensorValues::Float(values),
        }
    }

    /// x → Conv(w) → c → Clip(lo, hi) → y, plus an unused initializer and a Constant.
    fn model() -> OnnxModel {
        let info = |name: &str| ValueInfo {
            name: name.into(),
            dtype: Some(DType::Float32),
            shape: None,
        };
        let mut constant = node("Constant", &[], &["k"]);
        constant.attributes = vec![("value_floats".into(), AttributeValue::Floats(vec![1.0]))];
        let mut clip = node("Clip", &["c", "lo", "hi"], &["y"]);
        clip.attributes = vec![("unused".into(), AttributeValue::Int(1))];
        OnnxModel::from_contents(
            &GraphContents {
                ir_version: Some(8),
                opset: Some(13),
                inputs: vec![info("x")],
                outputs: vec![info("y")],
                value_info: vec![info("c")],
                initializers: vec![
                    floats("w", &[1, 1, 1, 1], vec![2.0]),
                    floats("lo", &[], vec![0.0]),
                    floats("hi", &[], vec![6.0]),
                    floats("spare", &[1], vec![0.0]),
                ],
                nodes: vec![constant, node("Conv", &["x", "w"], &["c"]), clip],
            },
            Path::new("<test>"),
        )
    }

    fn values(model: &OnnxModel, name: &str) -> (Vec<u64>, Vec<f32>) {
        let contents = model.contents().unwrap();
        let t = contents
            .initializers
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .or_else(|| {
                contents.nodes.iter().find_map(|n| {
                    (n.outputs[0] == name).then(|| match &n.attributes[0].1 {
                        AttributeValue::Tensor(t) => t.clone(),
                        other => panic!("{other:?}"),
                    })
                })
            })
            .unwrap();
        let values = t.values.floats().expect("float values").into_owned();
        (t.dims, values)
    }

    #[test]
    fn parameters_take_new_shapes_in_place_or_appear() {
        let mut m = model();
        m.set_parameter_f32("w", &[2, 1, 1, 1], &[3.0, 4.0])
            .unwrap();
        assert_eq!(values(&m, "w"), (vec![2, 1, 1, 1], vec![3.0, 4.0]));
        // A `value_floats` Constant becomes a `value` tensor of the new shape.
        m.set_parameter_f32("k", &[1, 2], &[5.0, 6.0]).unwrap();
        assert_eq!(values(&m, "k"), (vec![1, 2], vec![5.0, 6.0]));
        m.set_parameter_f32("b", &[2], &[0.5, -0.5]).unwrap();
        let contents = m.contents().unwrap();
        assert_eq!(contents.initializers.last().unwrap().name, "b");
        assert_eq!(values(&m, "b"), (vec![2], vec![0.5, -0.5]));
        assert!(m.set_parameter_f32("w", &[3], &[1.0]).is_err());
    }

    #[test]
    fn nodes_are_rewired_replaced_and_removed() {
        let mut m = model();
        m.set_node_input(1, 2, "b").unwrap();
        m.set_node_input(1, 4, "z").unwrap();
        m.set_node_output(1, 0, "c2").unwrap();
        m.replace_op(2, "Relu", 1).unwrap();
        let nodes = m.contents().unwrap().nodes;
        assert_eq!(nodes[1].inputs, ["x", "w", "b", "", "z"]);
        assert_eq!(nodes[1].outputs, ["c2"]);
        assert_eq!(nodes[2].op_type, "Relu");
        assert_eq!(nodes[2].inputs, ["c"]);
        assert!(nodes[2].attributes.is_empty());
        assert!(m.set_node_output(1, 1, "nope").is_err());
        assert!(m.set_node_input(9, 0, "nope").is_err());

        m.remove_nodes(&[2, 0, 2]).unwrap();
        let nodes = m.contents().unwrap().nodes;
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].op_type, "Conv");
        assert!(m.remove_nodes(&[1]).is_err());
    }

    #[test]
    fn pruning_removes_what_nothing_reads() {
        let mut m = model();
        m.replace_op(2, "Relu", 1).unwrap();
        let removed = m.prune_unused_parameters();
        assert_eq!(removed, ["lo", "hi", "spare", "k"]);
        let contents = m.contents().unwrap();
        let names: Vec<&str> = contents
            .initializers
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["w"]);
        assert_eq!(contents.nodes.len(), 2);
        // `c` is still written by the Conv: its value_info stays.
        assert_eq!(contents.value_info.len(), 1);
        m.set_node_output(0, 0, "renamed").unwrap();
        m.prune_unused_parameters();
        assert!(m.contents().unwrap().value_info.is_empty());
    }

    #[test]
    fn an_unchanged_model_keeps_its_bytes() {
        let mut m = model();
        let before = m.to_bytes();
        assert!(m.prune_unused_parameters().contains(&"spare".to_string()));
        let mut again = OnnxModel::from_bytes(&m.to_bytes(), Path::new("<test>")).unwrap();
        let pruned = again.to_bytes();
        assert!(again.prune_unused_parameters().is_empty());
        assert_eq!(again.to_bytes(), pruned);
        assert_ne!(before, pruned);
    }
}
