//! Quantizer placement from an AIMET quantsim config: which tensors get an encoding, which share
//! one, and which activations are symmetric, as aimet-onnx 2.42 decides them for the same model.
//!
//! Without a config, [`crate::graph`]'s rules (the QNN specification's) stand. With one,
//! [`place`] rewrites them:
//! - **Parameters**: a weight, bias or batch-norm parameter keeps its encoding only when the
//!   config quantizes it (`params`, `op_type.X.params`; AIMET's names `weight`, `bias`,
//!   `running_mean`, `running_var`). Other constants are quantized as activations, as before.
//! - **Outputs**: AIMET never quantizes data-movement outputs ([`DATA_MOVEMENT`]); a
//!   grid-preserving op's output ([`GRID_PRESERVING`]) only when the config names its type;
//!   every other float output per `is_output_quantized` (the op type's, else the default).
//! - **Supergroups**: in a chain of the config's `supergroups` (each op the only reader of the
//!   previous one's output), every output but the last is left out. A depthwise or 3-D Conv
//!   never starts or joins one (AIMET excludes them).
//! - **Ties**: a Relu, AveragePool, Resize or Upsample output takes its input's encoding; a
//!   Concat input read by nothing else takes the Concat output's. A tied quantizer sees the
//!   union of its tensors' data, and these outputs never leave their input's range (nor a
//!   Concat input its output's), so with min-max calibration the shared encoding is exactly
//!   AIMET's.
//! - **Symmetry**: a MatMul's second input that is not a constant is symmetric when the
//!   config's parameters are (AIMET applies parameter symmetry to it); an op type's
//!   `is_symmetric` sets its outputs'.
//!
//! `book/src/aimet-config.md` has the rules with the figures they were checked against.

mod config;

pub use config::{ONNX_OP_TYPES, OpTypeConfig, ParamConfig, QuantsimConfig, QuantsimConfigError};

use std::collections::{BTreeMap, BTreeSet};

use crate::encoding::Schema;
use crate::graph::{EncodingRule, Graph, NotQuantizedReason, Role, TensorKind};
use crate::quantizer::QuantizerSettings;

/// Ops whose outputs AIMET never quantizes (`aimet_onnx.quantsim.op_outputs_to_ignore`).
pub const DATA_MOVEMENT: &[&str] = &[
    "Flatten",
    "Gather",
    "Reshape",
    "Shape",
    "Unsqueeze",
    "Squeeze",
    "Split",
    "Compress",
    "Tile",
    "Transpose",
    "Identity",
];

/// Ops whose output lies on its input's grid; their outputs are quantized only when the
/// config names the op type.
pub const GRID_PRESERVING: &[&str] = &[
    "BatchToSpace",
    "Col2Im",
    "Compress",
    "DepthToSpace",
    "Dropout",
    "Expand",
    "Flatten",
    "Gather",
    "GatherElements",
    "GatherND",
    "Identity",
    "MaxPool",
    "MaxRoiPool",
    "NonZero",
    "Pad",
    "ReduceMax",
    "ReduceMin",
    "Reshape",
    "Slice",
    "SpaceToBatch",
    "SpaceToDepth",
    "Split",
    "SplitToSequence",
    "Squeeze",
    "Tile",
    "TopK",
    "Transpose",
    "Unsqueeze",
];

/// Ops whose output quantizer is tied to their input's.
const OUTPUT_TIED: &[&str] = &["Relu", "AveragePool", "Resize", "Upsample"];

/// A graph with a config's placement applied.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The graph, its rules rewritten.
    pub graph: Graph,
    /// Activations whose schema the config fixes (`true`: symmetric), whatever the settings'
    /// activation schema; an override of the tensor still wins.
    pub symmetric: BTreeMap<String, bool>,
    /// Things the user should know (a supergroup naming an op type the model lacks).
    pub warnings: Vec<String>,
}

/// The settings a config implies: parameter and activation schemas, per-channel weights
/// (Conv and ConvTranspose per channel, Gemm and MatMul per row), and statistics gathered with
/// quantized weights, as AIMET calibrates.
pub fn settings_for(config: &QuantsimConfig, mut settings: QuantizerSettings) -> QuantizerSettings {
    settings.param_schema = if config.params_symmetric {
        Schema::Symmetric
    } else {
        Schema::Asymmetric
    };
    settings.act_schema = if config.activations_symmetric {
        Schema::Symmetric
    } else {
        Schema::Asymmetric
    };
    settings.per_channel = config.per_channel("Conv") || config.per_channel("ConvTranspose");
    settings.per_row = config.per_channel("Gemm") || config.per_channel("MatMul");
    settings.calibrate_with_quantized_weights = true;
    settings
}

/// A config by name or path: a [built-in](QuantsimConfig::BUILTIN) name, else a file, read
/// relative to `base` when given and relative.
pub fn load(
    given: &str,
    base: Option<&std::path::Path>,
) -> Result<QuantsimConfig, Box<QuantsimConfigError>> {
    if let Some(config) = QuantsimConfig::builtin(given) {
        return Ok(config);
    }
    let path = std::path::Path::new(given);
    match base {
        Some(base) if path.is_relative() => QuantsimConfig::read_as(&base.join(path), given),
        _ => QuantsimConfig::read(path),
    }
}

/// `settings` following `config` ([`settings_for`]), the config kept for placement.
pub fn with_config(config: QuantsimConfig, settings: QuantizerSettings) -> QuantizerSettings {
    let mut settings = settings_for(&config, settings);
    settings.quantsim_config =
        crate::quantizer::QuantsimConfigSetting(Some(std::sync::Arc::new(config)));
    settings
}

/// The graph `settings` place encodings on: `graph` itself without a quantsim config.
pub fn placed(graph: &Graph, settings: &QuantizerSettings) -> Option<Placement> {
    settings
        .quantsim_config
        .0
        .as_ref()
        .map(|config| place(graph, config))
}

fn default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// Whether a Conv node is depthwise (one input channel per group, more than one group) or 3-D:
/// AIMET keeps those out of supergroups.
fn depthwise_or_3d(graph: &Graph, node: &crate::graph::Node) -> bool {
    if node.op_type != "Conv" {
        return false;
    }
    let weight = node
        .inputs
        .get(1)
        .and_then(Option::as_ref)
        .and_then(|w| graph.tensor(w.as_str()))
        .and_then(|w| w.shape.as_ref());
    let Some(shape) = weight else {
        return false;
    };
    let group = node.int_attribute("group").unwrap_or(1);
    let one_per_group = matches!(shape.get(1), Some(crate::graph::Dim::Fixed(1)));
    shape.len() == 5 || (group > 1 && one_per_group)
}

/// Applies `config` to `graph`.
pub fn place(graph: &Graph, config: &QuantsimConfig) -> Placement {
    let mut rules: BTreeMap<String, EncodingRule> = BTreeMap::new();
    let mut symmetric = BTreeMap::new();
    let mut warnings = Vec::new();
    let off = EncodingRule::NotQuantized;

    for tensor in graph.tensors() {
        let name = tensor.name.as_str();
        if !tensor.rule.is_encoded() {
            // Not float, unused, empty, shape operands, batch-norm statistics: AIMET leaves
            // all of them float too.
            continue;
        }
        let rule = match tensor.kind {
            TensorKind::Parameter(_) => {
                let op = tensor.consumers.first().map_or("", |u| u.op_type.as_str());
                let param = match tensor.role {
                    Role::Weight { .. } | Role::BatchNormScale => Some("weight"),
                    Role::Bias | Role::BatchNormBias => Some("bias"),
                    Role::BatchNormMean => Some("running_mean"),
                    Role::BatchNormVariance => Some("running_var"),
                    _ => None,
                };
                match param {
                    Some(param) if !config.param_quantized(op, param) => {
                        off(NotQuantizedReason::ConfigParameter)
                    }
                    _ => EncodingRule::Own,
                }
            }
            TensorKind::Activation => match &tensor.producer {
                None if !config.model_input_quantized => off(NotQuantizedReason::ConfigDisabled),
                None => EncodingRule::Own,
                Some(producer) => {
                    let node = graph.node(producer.node);
                    let op = node.op_type.as_str();
                    let named = config.op_type(op);
                    if default_domain(&node.domain) && DATA_MOVEMENT.contains(&op) {
                        off(NotQuantizedReason::DataMovement)
                    } else if let Some(quantized) = named.and_then(|c| c.output_quantized) {
                        if quantized {
                            EncodingRule::Own
                        } else {
                            off(NotQuantizedReason::ConfigDisabled)
                        }
                    } else if default_domain(&node.domain)
                        && GRID_PRESERVING.contains(&op)
                        && named.is_none()
                    {
                        off(NotQuantizedReason::GridPreserving)
                    } else if !config.output_quantized {
                        off(NotQuantizedReason::ConfigDisabled)
                    } else {
                        EncodingRule::Own
                    }
                }
            },
        };
        let rule = if tensor.is_graph_output && config.model_output_quantized == Some(false) {
            off(NotQuantizedReason::ConfigDisabled)
        } else {
            rule
        };
        rules.insert(name.to_string(), rule);
    }

    // Supergroups: every output inside a matched chain loses its quantizer.
    let present: BTreeSet<&str> = graph.nodes().iter().map(|n| n.op_type.as_str()).collect();
    for group in &config.supergroups {
        if let Some(missing) = group.iter().find(|op| !present.contains(op.as_str())) {
            warnings.push(format!(
                "quantsim config supergroup {} names `{missing}`, which the model does not \
                 use; the supergroup matches nothing",
                group.join("+")
            ));
            continue;
        }
        for start in graph.nodes() {
            let mut chain = vec![start];
            let mut node = start;
            if start.op_type != group[0] || !default_domain(&start.domain) {
                continue;
            }
            let mut matched = true;
            for op in &group[1..] {
                let Some(out) = node.outputs.first().and_then(|o| graph.tensor(o.as_str())) else {
                    matched = false;
                    break;
                };
                let next = match out.consumers.as_slice() {
                    [only] if !out.is_graph_output => graph.node(only.node),
                    _ => {
                        matched = false;
                        break;
                    }
                };
                if next.op_type != *op || !default_domain(&next.domain) {
                    matched = false;
                    break;
                }
                chain.push(next);
                node = next;
            }
            if !matched || chain.iter().any(|n| depthwise_or_3d(graph, n)) {
                continue;
            }
            for inner in &chain[..chain.len() - 1] {
                if let Some(out) = inner.outputs.first() {
                    rules.insert(out.to_string(), off(NotQuantizedReason::Supergroup));
                }
            }
        }
    }

    let encoded = |rules: &BTreeMap<String, EncodingRule>, name: &str| {
        rules.get(name).is_some_and(EncodingRule::is_encoded)
    };
    // Output ties, in graph order so a tied input's own tie is already in place.
    for node in graph.nodes() {
        if !default_domain(&node.domain) || !OUTPUT_TIED.contains(&node.op_type.as_str()) {
            continue;
        }
        let (Some(out), Some(Some(input))) = (node.outputs.first(), node.inputs.first()) else {
            continue;
        };
        let input_is_activation = graph
            .tensor(input.as_str())
            .is_some_and(|t| t.is_float_activation());
        if rules.get(out.as_str()) == Some(&EncodingRule::Own)
            && input_is_activation
            && encoded(&rules, input.as_str())
        {
            rules.insert(out.to_string(), EncodingRule::SharesInput(input.clone()));
        }
    }
    // Concat inputs read by nothing else take the Concat output's quantizer.
    for node in graph.nodes() {
        if !default_domain(&node.domain) || node.op_type != "Concat" {
            continue;
        }
        let Some(out) = node.outputs.first() else {
            continue;
        };
        if rules.get(out.as_str()) != Some(&EncodingRule::Own) {
            continue;
        }
        for input in node.inputs.iter().flatten() {
            let Some(tensor) = graph.tensor(input.as_str()) else {
                continue;
            };
            if tensor.is_float_activation()
                && tensor.consumers.len() == 1
                && !tensor.is_graph_output
                && rules.get(input.as_str()) == Some(&EncodingRule::Own)
            {
                rules.insert(input.to_string(), EncodingRule::SharesInput(out.clone()));
            }
        }
    }

    // Symmetry: a MatMul's activation second input inherits the parameters' symmetry.
    for node in graph.nodes() {
        if !default_domain(&node.domain) {
            continue;
        }
        if node.op_type == "MatMul"
            && let Some(Some(b)) = node.inputs.get(1)
            && graph
                .tensor(b.as_str())
                .is_some_and(|t| t.is_float_activation())
            && rules.get(b.as_str()) == Some(&EncodingRule::Own)
        {
            let params_symmetric = config
                .op_type("MatMul")
                .and_then(|op| op.params.get("weight"))
                .and_then(|p| p.symmetric)
                .unwrap_or(config.params_symmetric);
            symmetric.insert(b.to_string(), params_symmetric);
        }
        if let Some(s) = config.op_type(&node.op_type).and_then(|c| c.symmetric) {
            for out in &node.outputs {
                if rules.get(out.as_str()) == Some(&EncodingRule::Own) {
                    symmetric.entry(out.to_string()).or_insert(s);
                }
            }
        }
    }

    let mut placed = graph.clone();
    for (name, rule) in rules {
        placed.set_rule(&name, rule);
    }
    Placement {
        graph: placed,
        symmetric,
        warnings,
    }
}
