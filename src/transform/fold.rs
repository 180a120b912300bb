//! BatchNorm folding: a BatchNormalization whose input is the only use of a Conv, ConvTranspose
//! or Gemm output becomes part of that layer's weight and bias, and the layer writes the
//! BatchNorm's output name. Exact up to float rounding (the factors are computed in `f64`).
//! It must not fold anything it cannot fold exactly: a BatchNorm after an Add, after a layer
//! whose output has other readers, or in training mode stays, and the report says why.

use super::TransformError;
use super::edits::{Edits, Parameters, fresh_name};
use super::layer::{Layer, LayerOp, NotALayer};
use super::report::{Fold, KeptReason, LayerRef, TransformEvent, TransformReport};
use crate::graph::{Attribute, Graph, Node, TensorName};
use crate::onnx::OnnxModel;
use std::collections::BTreeMap;

/// ONNX's default BatchNormalization epsilon.
const DEFAULT_EPSILON: f64 = 1e-5;

/// Folds every foldable BatchNormalization into the Conv, ConvTranspose or Gemm before it and
/// reports every BatchNorm, folded or kept. The folded layer writes the BatchNorm's output name;
/// its weight and bias keep their names; a layer without a bias gains one named
/// `{node name}.bias` (the weight's name when the node has none).
pub fn fold_batch_norms(model: &OnnxModel) -> Result<(OnnxModel, TransformReport), TransformError> {
    let (model, report, _) = fold(model)?;
    Ok((model, report))
}

/// The β and γ of a folded BatchNorm, per output channel of the layer it went into: the data
/// high-bias absorption needs, gone from the model once folded.
#[derive(Debug, Clone)]
pub(super) struct BatchNormData {
    pub gamma: Vec<f64>,
    pub beta: Vec<f64>,
}

/// [`fold_batch_norms`], also returning each folded BatchNorm's data under the name the layer
/// now writes.
pub(super) fn fold(
    model: &OnnxModel,
) -> Result<
    (
        OnnxModel,
        TransformReport,
        BTreeMap<TensorName, BatchNormData>,
    ),
    TransformError,
> {
    let graph = Graph::from_model(model)?;
    let mut params = Parameters::default();
    let mut report = TransformReport::default();
    let mut folded = BTreeMap::new();
    let mut edits = Edits::default();
    for node in graph.nodes() {
        if node.op_type != "BatchNormalization" || !node.domain.is_empty() {
            continue;
        }
        let batch_norm = LayerRef::new(&node.op_type, &node.name, &node.outputs[0]);
        match plan(&graph, node) {
            Ok(plan) => {
                let fold = apply(&graph, node, &plan, &mut params, &mut edits);
                folded.insert(
                    plan.output.clone(),
                    BatchNormData {
                        gamma: plan.gamma,
                        beta: plan.beta,
                    },
                );
                report
                    .events
                    .push(TransformEvent::Folded(Fold { batch_norm, ..fold }));
            }
            Err(reason) => report
                .events
                .push(TransformEvent::Kept { batch_norm, reason }),
        }
    }
    let mut out = model.clone();
    params.write(&mut out)?;
    edits.write(&mut out)?;
    Ok((out, report, folded))
}

/// What folding one BatchNorm needs, checked.
struct Plan {
    layer: Layer,
    output: TensorName,
    gamma: Vec<f64>,
    beta: Vec<f64>,
    mean: Vec<f64>,
    variance: Vec<f64>,
    epsilon: f64,
    /// Gemm's `beta`: the bias enters as `beta · C`.
    bias_factor: f64,
}

fn plan(graph: &Graph, bn: &Node) -> Result<Plan, KeptReason> {
    let bad = |why: &str| KeptReason::BatchNorm(why.to_owned());
    if bn.int_attribute("training_mode").unwrap_or(0) != 0 {
        return Err(bad("it runs in training mode"));
    }
    if bn.int_attribute("spatial").unwrap_or(1) == 0 {
        return Err(bad("it normalizes per element (spatial = 0)"));
    }
    if bn.outputs.iter().skip(1).any(|o| !o.as_str().is_empty()) {
        return Err(bad("it writes running statistics (training outputs)"));
    }
    let output = bn
        .outputs
        .first()
        .filter(|o| !o.as_str().is_empty())
        .cloned()
        .ok_or_else(|| bad("it has no output"))?;
    let Some(Some(input)) = bn.inputs.first() else {
        return Err(bad("it has no input"));
    };
    let tensor = graph
        .tensor(input.as_str())
        .ok_or_else(|| bad("its input is undefined"))?;
    if tensor.kind.is_parameter() {
        return Err(bad("its input is a constant"));
    }
    let Some(producer) = &tensor.producer else {
        return Err(KeptReason::GraphInput);
    };
    let producer_node = graph.node(producer.node);
    let layer = Layer::of(graph, producer_node).map_err(|e| match e {
        NotALayer::Op => KeptReason::Producer(LayerRef::new(
            &producer_node.op_type,
            &producer_node.name,
            input,
        )),
        NotALayer::NotConstant(t) => KeptReason::NotConstant(t),
        NotALayer::Shared(t) => KeptReason::SharedParameter(t),
        NotALayer::Shape(why) => KeptReason::Shape(why),
    })?;
    if tensor.consumers.len() != 1 || tensor.is_graph_output {
        return Err(KeptReason::SharedInput {
            tensor: input.clone(),
            readers: tensor.consumers.len(),
            graph_output: tensor.is_graph_output,
        });
    }
    let mut vectors = Vec::with_capacity(4);
    for k in 1..=4 {
        let Some(Some(name)) = bn.inputs.get(k) else {
            return Err(bad("it lacks one of scale, B, mean, var"));
        };
        let values = graph
            .tensor(name.as_str())
            .filter(|t| t.is_float_parameter())
            .and_then(|_| graph.parameter(name.as_str()))
            .and_then(|p| p.as_f32())
            .ok_or_else(|| KeptReason::NotConstant(name.clone()))?;
        if values.len() != layer.out_channels {
            return Err(KeptReason::BatchNorm(format!(
                "`{name}` has {} values for the {} output channels of {}",
                values.len(),
                layer.out_channels,
                layer.reference(graph)
            )));
        }
        vectors.push(values.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>());
    }
    let bias_factor = match layer.op {
        LayerOp::Gemm { .. } => float_attribute(producer_node, "beta").unwrap_or(1.0),
        _ => 1.0,
    };
    if bias_factor == 0.0 || !bias_factor.is_finite() {
        return Err(KeptReason::Shape(format!(
            "{} has beta = {bias_factor}, so it has no bias to fold into",
            layer.reference(graph)
        )));
    }
    let variance = vectors.pop().expect("four vectors");
    let mean = vectors.pop().expect("four vectors");
    let beta = vectors.pop().expect("four vectors");
    let gamma = vectors.pop().expect("four vectors");
    Ok(Plan {
        layer,
        output,
        gamma,
        beta,
        mean,
        variance,
        epsilon: float_attribute(bn, "epsilon").unwrap_or(DEFAULT_EPSILON),
        bias_factor,
    })
}

fn float_attribute(node: &Node, name: &str) -> Option<f64> {
    match node.attributes.get(name) {
        Some(Attribute::Float(v)) => Some(f64::from(*v)),
        _ => None,
    }
}

/// Folds one BatchNorm: y = γ (x − μ) / √(σ² + ε) + β with x = W·in + b becomes
/// W' = a W per output channel and b' = a (b − μ) + β, where a = γ / √(σ² + ε).
fn apply(
    graph: &Graph,
    bn: &Node,
    plan: &Plan,
    params: &mut Parameters,
    edits: &mut Edits,
) -> Fold {
    let layer = &plan.layer;
    let factors: Vec<f64> = plan
        .gamma
        .iter()
        .zip(&plan.variance)
        .map(|(g, v)| g / (v + plan.epsilon).sqrt())
        .collect();
    let weight = params.get_mut(graph, &layer.weight);
    for (e, w) in weight.iter_mut().enumerate() {
        *w = (f64::from(*w) * factors[layer.out_channel(e)]) as f32;
    }
    let channels = layer.out_channels;
    let old_bias: Vec<f64> = match &layer.bias {
        Some(name) => {
            let values = params.get(graph, name);
            // A Gemm's C may be one value broadcast over the channels.
            (0..channels)
                .map(|c| f64::from(values[if values.len() == 1 { 0 } else { c }]))
                .collect()
        }
        None => vec![0.0; channels],
    };
    let new_bias: Vec<f32> = (0..channels)
        .map(|c| {
            let folded =
                factors[c] * (plan.bias_factor * old_bias[c] - plan.mean[c]) + plan.beta[c];
            (folded / plan.bias_factor) as f32
        })
        .collect();
    let node = graph.node(layer.node);
    let created = match &layer.bias {
        Some(name) => {
            let dims = graph
                .parameter(name.as_str())
                .map(|p| p.shape.iter().map(|&d| d as u64).collect::<Vec<u64>>())
                .filter(|d| d.iter().product::<u64>() == channels as u64)
                .unwrap_or_else(|| vec![channels as u64]);
            params.set(name, dims, new_bias);
            None
        }
        None => {
            let base = if node.name.is_empty() {
                layer.weight.as_str()
            } else {
                node.name.as_str()
            };
            let name = fresh_name(graph, params, base, "bias");
            params.set(&name, vec![channels as u64], new_bias);
            edits.inputs.push((layer.node, 2, name.clone()));
            Some(name)
        }
    };
    edits.outputs.push((layer.node, 0, plan.output.clone()));
    edits.removals.push(bn.id);
    let mut layer_ref = layer.reference(graph);
    layer_ref.output = plan.output.clone();
    Fold {
        batch_norm: LayerRef::new(&bn.op_type, &bn.name, &plan.output),
        layer: layer_ref,
        removed_output: layer.output.clone(),
        new_bias: created,
    }
}
