//! The parameters a transform changes, held as `f32` values beside the unchanged model until the
//! transform writes them back in one go. Reading a parameter the first time copies it out of the
//! graph IR; later reads see earlier changes, so steps that touch the same weight (two scalings of
//! the middle layer of a chain) compose. It must not decide what to change.

use super::TransformError;
use crate::graph::{Graph, TensorName};
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
                    .to_vec();
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
