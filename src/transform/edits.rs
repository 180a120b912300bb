//! What a transform changes, collected while it reads the unchanged model's graph and written
//! into a copy of the model in one go: parameter values ([`Parameters`]) and node edits
//! ([`Edits`]). Reading a parameter the first time copies it out of the graph IR; later reads
//! see earlier changes, so steps that touch the same weight (two scalings of the middle layer of
//! a chain) compose. It must not decide what to change.

use super::TransformError;
use crate::graph::{Graph, NodeId, TensorName};
use crate::onnx::OnnxModel;
use std::collections::BTreeMap;

/// Parameter values being changed, by name. A `BTreeMap` so they are written back in name order,
/// whatever order the transform touched them in: the output bytes depend only on the values.
#[derive(Debug, Default)]
pub(super) struct Parameters {
    values: BTreeMap<TensorName, (Vec<u64>, Vec<f32>)>,
}

impl Parameters {
    /// The current values of `name` (a float parameter of `graph`, or one added here).
    pub fn get_mut(&mut self, graph: &Graph, name: &TensorName) -> &mut Vec<f32> {
        &mut self
            .values
            .entry(name.clone())
            .or_insert_with(|| {
                let data = graph
                    .parameter(name.as_str())
                    .expect("transforms only read parameters the graph has");
                let dims = data.shape.iter().map(|&d| d as u64).collect();
                let values = data
                    .as_f32()
                    .expect("layers have float parameters")
                    .into_owned();
                (dims, values)
            })
            .1
    }

    /// The current values of `name`, copied.
    pub fn get(&mut self, graph: &Graph, name: &TensorName) -> Vec<f32> {
        self.get_mut(graph, name).clone()
    }

    /// Sets `name` to new values with a new shape (a Gemm bias broadcast from one value), or
    /// adds it.
    pub fn set(&mut self, name: &TensorName, dims: Vec<u64>, values: Vec<f32>) {
        self.values.insert(name.clone(), (dims, values));
    }

    /// Whether `name` was added or changed here.
    pub fn contains(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// Writes every value into `model`.
    pub fn write(self, model: &mut OnnxModel) -> Result<(), TransformError> {
        for (name, (dims, values)) in self.values {
            model.set_parameter_f32(name.as_str(), &dims, &values)?;
        }
        Ok(())
    }
}

/// A name for a new tensor derived from `base` that neither the graph nor `taken` uses:
/// `{base}.bias`, then `{base}.bias.1`, ...
pub(super) fn fresh_name(
    graph: &Graph,
    taken: &Parameters,
    base: &str,
    suffix: &str,
) -> TensorName {
    let free = |name: &str| graph.tensor(name).is_none() && !taken.contains(name);
    let first = format!("{base}.{suffix}");
    if free(&first) {
        return TensorName::new(first);
    }
    (1..)
        .map(|k| format!("{first}.{k}"))
        .find(|name| free(name))
        .map(TensorName::new)
        .expect("some suffix is free")
}

/// Node edits collected while the graph is read, applied after every parameter is written.
#[derive(Debug, Default)]
pub(super) struct Edits {
    /// (node, input index, tensor).
    pub inputs: Vec<(NodeId, usize, TensorName)>,
    /// (node, output index, tensor).
    pub outputs: Vec<(NodeId, usize, TensorName)>,
    /// (node, new op type, inputs kept).
    pub ops: Vec<(NodeId, &'static str, usize)>,
    /// Nodes to remove.
    pub removals: Vec<NodeId>,
}

impl Edits {
    /// Applies the edits (removals last, so positions stay valid), then prunes the parameters
    /// nothing reads any more.
    pub fn write(self, model: &mut OnnxModel) -> Result<(), TransformError> {
        for (node, index, tensor) in &self.inputs {
            model.set_node_input(node.0, *index, tensor.as_str())?;
        }
        for (node, index, tensor) in &self.outputs {
            model.set_node_output(node.0, *index, tensor.as_str())?;
        }
        for (node, op, keep) in &self.ops {
            model.replace_op(node.0, op, *keep)?;
        }
        let removals: Vec<usize> = self.removals.iter().map(|n| n.0).collect();
        model.remove_nodes(&removals)?;
        model.prune_unused_parameters();
        Ok(())
    }
}
