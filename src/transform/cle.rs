//! Cross-layer equalization as the QNN specification defines it (`--algorithms cle`), after
//! Nagel et al. 2019 (arXiv 1906.04721) and checked against AIMET's implementation:
//!
//! 1. BatchNorm folding ([`super::fold_batch_norms`]), keeping each folded BatchNorm's β and γ.
//! 2. Chains of Convs in a single branch, each joined to the next directly or through one Relu
//!    or Relu6 (a Clip to [0, 6]); any other op between two Convs, or a second reader, ends the
//!    chain and is reported. Chains split into the specification's patterns: Conv→Conv,
//!    Conv→DepthwiseConv→Conv, and (as AIMET does) DepthwiseConv→Conv at the start of a chain.
//! 3. Relu6 inside a pattern becomes Relu, so that scaling commutes with it.
//! 4. Cross-layer scaling: output channel i of one layer is divided by s_i and input channel i
//!    of the next multiplied by it, s_i = √(r1_i · r2_i) / r2_i, where r is a channel's largest
//!    absolute weight; the three-layer pattern uses AIMET's closed form, which leaves all three
//!    ranges equal to ∛(r0 r1 r2).
//! 5. High-bias absorption across Relu: c_i = max(0, β_i − 3|γ_i|) / s_i leaves layer one's bias
//!    and enters layer two's as W2 · c. A pair whose first layer had no BatchNorm gets the
//!    specification's "Invalid model for HBA quantization algorithm" warning.
//!
//! Scaling alone preserves the function up to rounding; absorption does too except where the
//! pre-activation falls below β − 3|γ| and at the zero padding of the second layer.
//! It must not touch anything outside the matched patterns.

use super::TransformError;
use super::edits::{Edits, Parameters, fresh_name};
use super::fold::{BatchNormData, fold};
use super::layer::{Layer, NotALayer};
use super::report::{
    HighBias, LayerRef, PairSkip, ScaledSet, SkipReason, TransformEvent, TransformReport,
};
use crate::graph::{Attribute, Graph, Node, NodeId, TensorName};
use crate::onnx::OnnxModel;
use std::collections::{BTreeMap, BTreeSet};

/// What [`equalize`] does beyond folding and scaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CleOptions {
    /// High-bias absorption after scaling (the specification's CLE includes it; off gives the
    /// exactly function-preserving scaling alone).
    pub high_bias_absorption: bool,
}

impl Default for CleOptions {
    fn default() -> CleOptions {
        CleOptions {
            high_bias_absorption: true,
        }
    }
}

/// Cross-layer equalization: BatchNorm folding, Relu6 → Relu inside the patterns, cross-layer
/// scaling and (per `options`) high-bias absorption; the report lists the folds, every scaled
/// set, every skipped pair with its reason, every Relu6 replaced and every HBA warning.
pub fn equalize(
    model: &OnnxModel,
    options: &CleOptions,
) -> Result<(OnnxModel, TransformReport), TransformError> {
    let (mut folded, mut report, batch_norms) = fold(model)?;
    let graph = Graph::from_model(&folded)?;
    let layers = conv_layers(&graph);
    let mut links = BTreeMap::new();
    let mut events: BTreeMap<NodeId, Vec<TransformEvent>> = BTreeMap::new();
    for (&id, layer) in &layers {
        match find_link(&graph, &layers, graph.node(id), layer) {
            Some(Next::Link(link)) => {
                links.insert(id, link);
            }
            Some(Next::Skip(skip)) => events
                .entry(id)
                .or_default()
                .push(TransformEvent::Skipped(skip)),
            None => {}
        }
    }
    let mut params = Parameters::default();
    let mut edits = Edits::default();
    for set in cls_sets(&graph, &layers, &links, &mut events) {
        let first = set.layers[0].node;
        let mut set_events = Vec::new();
        for (k, link) in set.links.iter().enumerate() {
            if let Activation::Relu6(clip) = link.activation {
                edits.ops.push((clip, "Relu", 1));
                let node = graph.node(clip);
                set_events.push(TransformEvent::Relu6Replaced {
                    node: LayerRef::new(&node.op_type, &node.name, &node.outputs[0]),
                    after: set.layers[k].reference(&graph),
                });
            }
        }
        let scales = scale(&graph, &set.layers, &mut params);
        let mut high_bias = Vec::new();
        for (k, link) in set.links.iter().enumerate() {
            let (from, to) = (&set.layers[k], &set.layers[k + 1]);
            let outcome = if !options.high_bias_absorption {
                HighBias::Off
            } else if link.activation == Activation::Linear {
                HighBias::NoRelu
            } else if let Some(bn) = batch_norms.get(&from.output) {
                absorb(&graph, from, to, bn, &scales[k], &mut params, &mut edits)
            } else {
                set_events.push(TransformEvent::HbaWarning {
                    first: from.reference(&graph),
                    second: to.reference(&graph),
                });
                HighBias::NoBatchNorm
            };
            high_bias.push(outcome);
        }
        let activations = set
            .links
            .iter()
            .map(|link| match link.activation {
                Activation::Linear => None,
                // A replaced Relu6 is a Relu now.
                Activation::Relu(_) | Activation::Relu6(_) => Some("Relu".to_owned()),
            })
            .collect();
        // The scaled line goes before its warnings, after its replacements.
        let warnings_at = set_events
            .iter()
            .position(TransformEvent::is_warning)
            .unwrap_or(set_events.len());
        set_events.insert(
            warnings_at,
            TransformEvent::Scaled(ScaledSet {
                layers: set.layers.iter().map(|l| l.reference(&graph)).collect(),
                activations,
                high_bias,
            }),
        );
        events.entry(first).or_default().extend(set_events);
    }
    report.events.extend(events.into_values().flatten());
    params.write(&mut folded)?;
    edits.write(&mut folded)?;
    Ok((folded, report))
}

/// What joins one layer to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    /// The next layer reads the output directly.
    Linear,
    /// A Relu node.
    Relu(NodeId),
    /// A Clip to [0, 6], to become a Relu.
    Relu6(NodeId),
}

/// What follows a layer: a link to scale across, or a pair to report as skipped.
enum Next {
    Link(Link),
    Skip(PairSkip),
}

#[derive(Debug, Clone)]
struct Link {
    to: NodeId,
    activation: Activation,
}

/// Every Conv node, as a layer or with the reason it is not one.
fn conv_layers(graph: &Graph) -> BTreeMap<NodeId, Result<Layer, NotALayer>> {
    graph
        .nodes()
        .iter()
        .filter(|n| n.op_type == "Conv" && n.domain.is_empty())
        .map(|n| (n.id, Layer::of(graph, n)))
        .collect()
}

fn node_ref(node: &Node) -> LayerRef {
    LayerRef::new(&node.op_type, &node.name, &node.outputs[0])
}

fn layer_ref(graph: &Graph, node: &Node, layer: &Result<Layer, NotALayer>) -> LayerRef {
    match layer {
        Ok(layer) => layer.reference(graph),
        Err(_) => node_ref(node),
    }
}

/// The Conv reading `tensor` as its data input, if `tensor` is read by exactly that one node;
/// otherwise, when some Conv reads it among others, the skip to report.
fn single_conv_reader(
    graph: &Graph,
    tensor: &TensorName,
) -> Option<Result<NodeId, (NodeId, SkipReason)>> {
    let t = graph.tensor(tensor.as_str())?;
    let conv_reader = t.consumers.iter().find(|u| {
        u.input_index == 0 && u.op_type == "Conv" && graph.node(u.node).domain.is_empty()
    })?;
    if t.consumers.len() == 1 && !t.is_graph_output {
        Some(Ok(conv_reader.node))
    } else {
        let readers = t.consumers.len() + usize::from(t.is_graph_output);
        Some(Err((
            conv_reader.node,
            SkipReason::Branches {
                tensor: tensor.clone(),
                readers,
            },
        )))
    }
}

/// The link from Conv `node` to the next Conv, when the two are adjacent (directly or through
/// one single-input node); a skip when they are adjacent but cannot be scaled; `None` when no
/// Conv follows.
fn find_link(
    graph: &Graph,
    layers: &BTreeMap<NodeId, Result<Layer, NotALayer>>,
    node: &Node,
    layer: &Result<Layer, NotALayer>,
) -> Option<Next> {
    let output = node.outputs.first()?;
    let first = layer_ref(graph, node, layer);
    let skip = |to: NodeId, reason| {
        let second = graph.node(to);
        Next::Skip(PairSkip {
            first: first.clone(),
            second: layer_ref(graph, second, &layers[&to]),
            reason,
        })
    };
    let (to, via) = match single_conv_reader(graph, output) {
        Some(Ok(to)) => (to, None),
        Some(Err((to, reason))) => return Some(skip(to, reason)),
        None => match through_one_node(graph, output) {
            Some(Ok(found)) => found,
            Some(Err((to, reason))) => return Some(skip(to, reason)),
            None => {
                // No Conv one step away: is one a few elementwise steps away (a decomposed
                // hard-swish, a residual Add)? Then the pair exists but cannot be scaled.
                let (to, path) = conv_within(graph, output, MAX_PATH)?;
                return Some(skip(to, SkipReason::Path(path)));
            }
        },
    };
    let activation = match via {
        None => Activation::Linear,
        Some(n) if n.op_type == "Relu" && n.domain.is_empty() => Activation::Relu(n.id),
        Some(n) if is_relu6(graph, n) => Activation::Relu6(n.id),
        Some(n) => return Some(skip(to, SkipReason::Activation(node_ref(n)))),
    };
    let usable = |l: &Result<Layer, NotALayer>| match l {
        Ok(l) if l.groups > 1 && !l.is_depthwise() => Err(SkipReason::Grouped { groups: l.groups }),
        Ok(_) => Ok(()),
        Err(NotALayer::NotConstant(t)) => Err(SkipReason::Layer(format!(
            "`{t}` is not a constant float parameter"
        ))),
        Err(NotALayer::Shared(t)) => Err(SkipReason::Layer(format!(
            "`{t}` is shared with other nodes"
        ))),
        Err(NotALayer::Shape(why)) => Err(SkipReason::Layer(why.clone())),
        Err(NotALayer::Op) => Err(SkipReason::Pattern),
    };
    if let Err(reason) = usable(layer).and_then(|()| usable(&layers[&to])) {
        return Some(skip(to, reason));
    }
    if let (Ok(a), Ok(b)) = (layer, &layers[&to])
        && a.out_channels != b.in_channels
    {
        return Some(skip(
            to,
            SkipReason::Layer(format!(
                "{} output channels meet {} input channels",
                a.out_channels, b.in_channels
            )),
        ));
    }
    Some(Next::Link(Link { to, activation }))
}

/// The longest run of nodes between two Convs that the report still calls a pair.
const MAX_PATH: usize = 4;

/// The Conv reading, as its data input, the single output of the one node that alone reads
/// `output` (Conv → act → Conv); a skip when that Conv shares the activation with other readers.
#[allow(clippy::type_complexity)]
fn through_one_node<'g>(
    graph: &'g Graph,
    output: &TensorName,
) -> Option<Result<(NodeId, Option<&'g Node>), (NodeId, SkipReason)>> {
    let t = graph.tensor(output.as_str())?;
    let [reader] = t.consumers.as_slice() else {
        return None;
    };
    let between = graph.node(reader.node);
    let [next] = between.outputs.as_slice() else {
        return None;
    };
    if reader.input_index != 0 || t.is_graph_output {
        return None;
    }
    Some(single_conv_reader(graph, next)?.map(|to| (to, Some(between))))
}

/// The first Conv (in graph order) that reads, as its data input, a tensor computed from
/// `output` through at most `limit` non-layer nodes, with the ops on the way.
fn conv_within(graph: &Graph, output: &TensorName, limit: usize) -> Option<(NodeId, Vec<String>)> {
    let mut frontier = vec![(output.clone(), Vec::<String>::new())];
    let mut found: Option<(NodeId, Vec<String>)> = None;
    for _ in 0..=limit {
        let mut next = Vec::new();
        for (tensor, path) in frontier {
            for reader in &graph.tensor(tensor.as_str())?.consumers {
                let node = graph.node(reader.node);
                let is_layer = matches!(node.op_type.as_str(), "Conv" | "ConvTranspose" | "Gemm");
                if node.op_type == "Conv" && reader.input_index == 0 && !path.is_empty() {
                    if found.as_ref().is_none_or(|(id, _)| node.id < *id) {
                        found = Some((node.id, path.clone()));
                    }
                } else if !is_layer && path.len() < limit {
                    for out in &node.outputs {
                        let mut longer = path.clone();
                        longer.push(node.op_type.clone());
                        next.push((out.clone(), longer));
                    }
                }
            }
        }
        if found.is_some() || next.is_empty() {
            break;
        }
        frontier = next;
    }
    found
}

/// Whether `node` is a Clip to exactly [0, 6]: bounds as constant inputs (opset 11 on) or as
/// attributes (before).
fn is_relu6(graph: &Graph, node: &Node) -> bool {
    if node.op_type != "Clip" || !node.domain.is_empty() {
        return false;
    }
    let bound = |index: usize, attribute: &str| -> Option<f32> {
        match node.inputs.get(index) {
            Some(Some(name)) => match &*graph.parameter(name.as_str())?.as_f32()? {
                [v] => Some(*v),
                _ => None,
            },
            _ => match node.attributes.get(attribute) {
                Some(Attribute::Float(v)) => Some(*v),
                _ => None,
            },
        }
    };
    bound(1, "min") == Some(0.0) && bound(2, "max") == Some(6.0)
}

/// Two or three layers scaled together, with the links between them.
struct ClsSet {
    layers: Vec<Layer>,
    links: Vec<Link>,
}

/// Splits the chains of linked layers into the patterns, as AIMET does: Conv→Conv,
/// Conv→DepthwiseConv→Conv, DepthwiseConv→Conv; a pair that fits none is reported.
fn cls_sets(
    graph: &Graph,
    layers: &BTreeMap<NodeId, Result<Layer, NotALayer>>,
    links: &BTreeMap<NodeId, Link>,
    events: &mut BTreeMap<NodeId, Vec<TransformEvent>>,
) -> Vec<ClsSet> {
    let linked_to: BTreeSet<NodeId> = links.values().map(|l| l.to).collect();
    let layer = |id: &NodeId| layers[id].as_ref().expect("linked layers are layers");
    let mut sets = Vec::new();
    for &start in links.keys().filter(|id| !linked_to.contains(id)) {
        let mut chain = vec![start];
        while let Some(link) = links.get(chain.last().expect("non-empty")) {
            chain.push(link.to);
        }
        let mut i = 0;
        while i + 1 < chain.len() {
            let (a, b) = (layer(&chain[i]), layer(&chain[i + 1]));
            let third = chain.get(i + 2).map(layer);
            let (count, fits) = match (a.is_depthwise(), b.is_depthwise(), third) {
                (_, false, _) => (2, true),
                (false, true, Some(c)) if !c.is_depthwise() => (3, true),
                _ => (1, false),
            };
            if fits {
                sets.push(ClsSet {
                    layers: chain[i..i + count]
                        .iter()
                        .map(|id| layer(id).clone())
                        .collect(),
                    links: chain[i..i + count - 1]
                        .iter()
                        .map(|id| links[id].clone())
                        .collect(),
                });
                i += count - 1;
            } else {
                events
                    .entry(chain[i])
                    .or_default()
                    .push(TransformEvent::Skipped(PairSkip {
                        first: a.reference(graph),
                        second: b.reference(graph),
                        reason: SkipReason::Pattern,
                    }));
                i += 1;
            }
        }
    }
    sets.sort_by_key(|s| s.layers[0].node);
    sets
}

/// Largest absolute weight per output channel (`by_output`) or per input channel.
fn channel_ranges(layer: &Layer, weights: &[f32], by_output: bool) -> Vec<f64> {
    let count = if by_output {
        layer.out_channels
    } else {
        layer.in_channels
    };
    let mut ranges = vec![0f64; count];
    for (e, w) in weights.iter().enumerate() {
        let c = if by_output {
            layer.out_channel(e)
        } else {
            layer.in_channel(e)
        };
        ranges[c] = ranges[c].max(f64::from(w.abs()));
    }
    ranges
}

/// A factor that does no scaling where a range is zero or not finite, as AIMET does.
fn sane(factor: f64) -> f64 {
    if factor.is_finite() && factor > 0.0 {
        factor
    } else {
        1.0
    }
}

/// Scales a set in place and returns, per link, the factor each output channel of the link's
/// first layer was divided by.
fn scale(graph: &Graph, layers: &[Layer], params: &mut Parameters) -> Vec<Vec<f64>> {
    let ranges = |params: &mut Parameters, layer: &Layer, by_output| {
        let weights = params.get(graph, &layer.weight);
        channel_ranges(layer, &weights, by_output)
    };
    let factors: Vec<Vec<f64>> = match layers {
        [a, b] => {
            let r1 = ranges(params, a, true);
            let r2 = ranges(params, b, false);
            vec![
                r1.iter()
                    .zip(&r2)
                    .map(|(r1, r2)| sane((r1 * r2).sqrt() / r2))
                    .collect(),
            ]
        }
        [a, dw, c] => {
            let r0 = ranges(params, a, true);
            let r1 = ranges(params, dw, true);
            let r2 = ranges(params, c, false);
            let mean: Vec<f64> = (0..r0.len())
                .map(|i| (r0[i] * r1[i] * r2[i]).cbrt())
                .collect();
            vec![
                (0..r0.len()).map(|i| sane(r0[i] / mean[i])).collect(),
                (0..r0.len()).map(|i| sane(mean[i] / r2[i])).collect(),
            ]
        }
        _ => unreachable!("sets have two or three layers"),
    };
    for (k, s) in factors.iter().enumerate() {
        let (from, to) = (&layers[k], &layers[k + 1]);
        for (e, w) in params.get_mut(graph, &from.weight).iter_mut().enumerate() {
            *w = (f64::from(*w) / s[from.out_channel(e)]) as f32;
        }
        if let Some(bias) = &from.bias {
            for (c, b) in params.get_mut(graph, bias).iter_mut().enumerate() {
                *b = (f64::from(*b) / s[c]) as f32;
            }
        }
        for (e, w) in params.get_mut(graph, &to.weight).iter_mut().enumerate() {
            *w = (f64::from(*w) * s[to.in_channel(e)]) as f32;
        }
    }
    factors
}

/// Moves c = max(0, β − 3|γ|) / s out of `from`'s bias and W·c into `to`'s, where `s` is what
/// scaling divided `from`'s output channels by. Past the Relu, `from`'s output is then lower by
/// c wherever it was at least β − 3|γ| (nearly everywhere, for a normal pre-activation), which
/// `to` adds back through its bias.
fn absorb(
    graph: &Graph,
    from: &Layer,
    to: &Layer,
    bn: &BatchNormData,
    scales: &[f64],
    params: &mut Parameters,
    edits: &mut Edits,
) -> HighBias {
    let absorbed: Vec<f64> = (0..from.out_channels)
        .map(|i| (bn.beta[i] - 3.0 * bn.gamma[i].abs()).max(0.0) / scales[i])
        .collect();
    let channels = absorbed.iter().filter(|&&c| c > 0.0).count();
    let of = from.out_channels;
    if channels == 0 {
        return HighBias::Absorbed { channels, of };
    }
    let from_bias = from
        .bias
        .as_ref()
        .expect("a layer with a folded BatchNorm has a bias");
    for (b, c) in params.get_mut(graph, from_bias).iter_mut().zip(&absorbed) {
        *b = (f64::from(*b) - c) as f32;
    }
    let weights = params.get(graph, &to.weight);
    let mut shift = vec![0f64; to.out_channels];
    for (e, w) in weights.iter().enumerate() {
        shift[to.out_channel(e)] += f64::from(*w) * absorbed[to.in_channel(e)];
    }
    let to_bias = match &to.bias {
        Some(bias) => bias.clone(),
        None => {
            let node = graph.node(to.node);
            let base = if node.name.is_empty() {
                to.weight.as_str()
            } else {
                node.name.as_str()
            };
            let name = fresh_name(graph, params, base, "bias");
            params.set(
                &name,
                vec![to.out_channels as u64],
                vec![0.0; to.out_channels],
            );
            edits.inputs.push((to.node, 2, name.clone()));
            name
        }
    };
    for (b, d) in params.get_mut(graph, &to_bias).iter_mut().zip(&shift) {
        *b = (f64::from(*b) + d) as f32;
    }
    HighBias::Absorbed { channels, of }
}
