//! What a transform did and did not do, as data (for `report.json` and tests) and as one
//! `Display` line per event (for the CLI). Every BatchNorm folded or kept, every pair or triple
//! scaled or skipped (with the reason), every Relu6 replaced and every HBA warning gets a line.
//! It must not decide anything; the transforms fill it in.

use crate::graph::TensorName;
use std::fmt;

/// A node as the reports name it: its op (`DepthwiseConv` for a depthwise Conv), its name, and
/// its first output, which names it when the node has no name (paddle2onnx leaves some empty).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayerRef {
    /// The op, e.g. `Conv`, `DepthwiseConv`, `Gemm`, `BatchNormalization`, `Clip`.
    pub op: String,
    /// The node name (may be empty).
    pub node: String,
    /// The node's first output.
    pub output: TensorName,
}

impl LayerRef {
    /// A reference from its parts.
    pub fn new(op: impl Into<String>, node: &str, output: &TensorName) -> LayerRef {
        LayerRef {
            op: op.into(),
            node: node.to_owned(),
            output: output.clone(),
        }
    }
}

impl fmt::Display for LayerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.node.is_empty() {
            write!(f, "{} (output `{}`)", self.op, self.output)
        } else {
            write!(f, "{} `{}`", self.op, self.node)
        }
    }
}

/// One BatchNorm folded into the layer before it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fold {
    /// The BatchNormalization node, now removed.
    pub batch_norm: LayerRef,
    /// The layer it was folded into; its `output` is now the BatchNorm's output name.
    pub layer: LayerRef,
    /// The layer's former output, which no longer exists.
    pub removed_output: TensorName,
    /// The bias the layer gained, when it had none.
    pub new_bias: Option<TensorName>,
}

/// Why a BatchNorm was not folded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum KeptReason {
    /// Its input is a graph input.
    GraphInput,
    /// Its input comes from an op that cannot absorb it.
    Producer(LayerRef),
    /// The producer's output is read by other nodes too, or is a graph output: folding would
    /// change what they see.
    SharedInput {
        /// The producer's output.
        tensor: TensorName,
        /// How many nodes read it.
        readers: usize,
        /// Whether it is a graph output.
        graph_output: bool,
    },
    /// The producer's weight or bias is computed, or not float.
    NotConstant(TensorName),
    /// The producer's weight or bias is read by other nodes too.
    SharedParameter(TensorName),
    /// The BatchNorm's own parameters, mode or channel count do not allow folding.
    BatchNorm(String),
    /// The producer's shapes do not allow folding.
    Shape(String),
}

impl fmt::Display for KeptReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeptReason::GraphInput => f.write_str("its input is a graph input"),
            KeptReason::Producer(p) => write!(
                f,
                "its input comes from {p}, not from a Conv, ConvTranspose or Gemm"
            ),
            KeptReason::SharedInput {
                tensor,
                readers,
                graph_output,
            } => {
                write!(f, "its input `{tensor}` is read by {readers} nodes")?;
                if *graph_output {
                    f.write_str(" and is a graph output")?;
                }
                Ok(())
            }
            KeptReason::NotConstant(t) => write!(f, "`{t}` is not a constant float parameter"),
            KeptReason::SharedParameter(t) => write!(f, "`{t}` is shared with other nodes"),
            KeptReason::BatchNorm(why) | KeptReason::Shape(why) => f.write_str(why),
        }
    }
}

/// High-bias absorption from one layer of a scaled set into the next.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum HighBias {
    /// Absorbed: in `channels` of `of` channels the folded BatchNorm's β − 3|γ| was positive.
    Absorbed {
        /// Channels with a positive absorbed bias.
        channels: usize,
        /// Output channels of the first layer.
        of: usize,
    },
    /// No Relu between the layers: absorption applies only across Relu.
    NoRelu,
    /// The first layer had no BatchNorm folded into it (see the HBA warning).
    NoBatchNorm,
    /// Turned off in [`super::CleOptions`].
    Off,
}

impl fmt::Display for HighBias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HighBias::Absorbed { channels, of } => write!(f, "{channels} of {of} channels"),
            HighBias::NoRelu => f.write_str("none (no Relu)"),
            HighBias::NoBatchNorm => f.write_str("none (no BatchNorm data)"),
            HighBias::Off => f.write_str("off"),
        }
    }
}

/// Two or three layers scaled together.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScaledSet {
    /// The layers, in graph order (a Conv, an optional DepthwiseConv, a Conv).
    pub layers: Vec<LayerRef>,
    /// The activation after each layer but the last (`None`: the next layer reads it directly).
    pub activations: Vec<Option<String>>,
    /// High-bias absorption from each layer but the last into the next.
    pub high_bias: Vec<HighBias>,
}

/// Why CLE left two adjacent layers alone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum SkipReason {
    /// The activation between them is neither Relu nor Relu6: scaling would change the function.
    Activation(LayerRef),
    /// Several nodes lie between them (the ops on the way, in order): only one Relu may.
    Path(Vec<String>),
    /// An output on the way is read by more than one node: CLE needs a single branch.
    Branches {
        /// The tensor with several readers.
        tensor: TensorName,
        /// How many.
        readers: usize,
    },
    /// A layer's weight or bias is computed, shared or misshapen.
    Layer(String),
    /// A grouped convolution that is not depthwise.
    Grouped {
        /// Its `group`.
        groups: usize,
    },
    /// The layers fit none of the specification's patterns (a depthwise layer must sit
    /// between two Convs, or start the chain before a Conv).
    Pattern,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Activation(a) => write!(
                f,
                "the activation between them, {a}, is not Relu or Relu6 (scaling needs a positively homogeneous activation)"
            ),
            SkipReason::Path(ops) => write!(
                f,
                "{} lie between them (only a single Relu or Relu6 may)",
                ops.join(" → ")
            ),
            SkipReason::Branches { tensor, readers } => write!(
                f,
                "`{tensor}` is read by {readers} nodes (CLE needs a single branch)"
            ),
            SkipReason::Layer(why) => f.write_str(why),
            SkipReason::Grouped { groups } => write!(
                f,
                "a grouped convolution (group {groups}) that is not depthwise is not supported"
            ),
            SkipReason::Pattern => f.write_str(
                "not a CLE pattern (Conv→Conv, Conv→DepthwiseConv→Conv, DepthwiseConv→Conv): \
                 a depthwise layer must be followed by a Conv",
            ),
        }
    }
}

/// Two adjacent layers CLE did not scale.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PairSkip {
    /// The first layer.
    pub first: LayerRef,
    /// The node reading it (a layer, or whatever reads the activation).
    pub second: LayerRef,
    /// Why.
    pub reason: SkipReason,
}

/// A bias moved by bias correction.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BiasCorrection {
    /// The corrected layer.
    pub layer: LayerRef,
    /// Its output channels.
    pub channels: usize,
    /// The largest shift of one channel's bias.
    pub max_shift: f32,
}

/// One thing a transform did or declined to do.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum TransformEvent {
    /// A BatchNorm folded into its producer.
    Folded(Fold),
    /// A BatchNorm left in the model.
    Kept {
        /// The BatchNormalization node.
        batch_norm: LayerRef,
        /// Why.
        reason: KeptReason,
    },
    /// A Relu6 (Clip to [0, 6]) inside a CLE pattern became a Relu.
    Relu6Replaced {
        /// The Clip node, now a Relu of the same name and output.
        node: LayerRef,
        /// The layer it follows.
        after: LayerRef,
    },
    /// Layers scaled together.
    Scaled(ScaledSet),
    /// Adjacent layers left alone.
    Skipped(PairSkip),
    /// The specification's "Invalid model for HBA quantization algorithm": a pair across Relu
    /// whose first layer had no BatchNorm data, so its high bias stays.
    HbaWarning {
        /// The layer without BatchNorm data.
        first: LayerRef,
        /// The layer its bias would have moved into.
        second: LayerRef,
    },
    /// A bias corrected.
    BiasCorrected(BiasCorrection),
}

impl TransformEvent {
    /// Whether this is a warning (the CLI prints it as one).
    pub fn is_warning(&self) -> bool {
        matches!(self, TransformEvent::HbaWarning { .. })
    }
}

impl fmt::Display for TransformEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransformEvent::Folded(fold) => {
                write!(
                    f,
                    "folded {} into {}, which now writes `{}` (`{}` is gone)",
                    fold.batch_norm, fold.layer, fold.layer.output, fold.removed_output
                )?;
                if let Some(bias) = &fold.new_bias {
                    write!(f, "; new bias `{bias}`")?;
                }
                Ok(())
            }
            TransformEvent::Kept { batch_norm, reason } => {
                write!(f, "kept {batch_norm}: {reason}")
            }
            TransformEvent::Relu6Replaced { node, after } => {
                write!(f, "replaced Relu6 {node} after {after} with Relu")
            }
            TransformEvent::Scaled(set) => {
                f.write_str("equalized ")?;
                for (k, layer) in set.layers.iter().enumerate() {
                    if k > 0 {
                        f.write_str(" → ")?;
                        if let Some(act) = &set.activations[k - 1] {
                            write!(f, "{act} → ")?;
                        }
                    }
                    write!(f, "{layer}")?;
                }
                f.write_str("; high-bias absorption: ")?;
                for (k, hb) in set.high_bias.iter().enumerate() {
                    if k > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{hb}")?;
                }
                Ok(())
            }
            TransformEvent::Skipped(skip) => write!(
                f,
                "skipped {} → {}: {}",
                skip.first, skip.second, skip.reason
            ),
            TransformEvent::HbaWarning { first, second } => write!(
                f,
                "warning: Invalid model for HBA quantization algorithm: {first} has no BatchNorm \
                 data (β, γ), so its high bias is not absorbed into {second}"
            ),
            TransformEvent::BiasCorrected(c) => write!(
                f,
                "corrected the bias of {} ({} channels, largest shift {:.3e})",
                c.layer, c.channels, c.max_shift
            ),
        }
    }
}

/// Everything one transform (or a chain of them) did, in the order it happened.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TransformReport {
    /// The events: the folds (and kept BatchNorms) in graph order; then, by the graph position
    /// of each pair's first layer, skipped pairs and scaled sets, each scaled set preceded by its
    /// Relu6 replacements and followed by its HBA warnings.
    pub events: Vec<TransformEvent>,
}

impl TransformReport {
    /// The BatchNorms folded.
    pub fn folds(&self) -> impl Iterator<Item = &Fold> {
        self.events.iter().filter_map(|e| match e {
            TransformEvent::Folded(fold) => Some(fold),
            _ => None,
        })
    }

    /// The sets scaled.
    pub fn scaled(&self) -> impl Iterator<Item = &ScaledSet> {
        self.events.iter().filter_map(|e| match e {
            TransformEvent::Scaled(set) => Some(set),
            _ => None,
        })
    }

    /// The pairs skipped.
    pub fn skipped(&self) -> impl Iterator<Item = &PairSkip> {
        self.events.iter().filter_map(|e| match e {
            TransformEvent::Skipped(skip) => Some(skip),
            _ => None,
        })
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &TransformEvent> {
        self.events.iter().filter(|e| e.is_warning())
    }

    /// One line per event, as `Display` prints them.
    pub fn lines(&self) -> Vec<String> {
        self.events.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Display for TransformReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for event in &self.events {
            writeln!(f, "{event}")?;
        }
        Ok(())
    }
}
