//! A layer with constant weights (Conv, ConvTranspose, Gemm) seen as a map from weight elements
//! to output and input channels, whatever the op and its groups: folding scales elements by
//! their output channel, cross-layer scaling by output channel in one layer and input channel in
//! the next, high-bias absorption sums elements per output channel weighted by input channel.
//! Writing each of those once over this map is what makes grouped and depthwise convolutions
//! and transposed weights come out right. It reads the graph IR and must not edit anything.

use super::report::LayerRef;
use crate::graph::{Graph, Node, NodeId, TensorName};

/// How a layer's weight is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LayerOp {
    /// `[out, in / group, k...]`.
    Conv,
    /// `[in, out / group, k...]`.
    ConvTranspose,
    /// `[in, out]`, or `[out, in]` with `transB = 1`.
    Gemm {
        /// Whether the weight is stored transposed.
        trans_b: bool,
    },
}

/// A Conv, ConvTranspose or Gemm whose weight (and bias, if any) are float parameters read by
/// this node alone, so that changing them changes nothing else.
#[derive(Debug, Clone)]
pub(super) struct Layer {
    pub node: NodeId,
    pub op: LayerOp,
    pub groups: usize,
    pub weight: TensorName,
    pub weight_dims: Vec<usize>,
    pub bias: Option<TensorName>,
    pub output: TensorName,
    pub out_channels: usize,
    pub in_channels: usize,
    /// Elements per (weight row, weight column): the product of the kernel dims.
    kernel: usize,
}

/// Why a node is not a [`Layer`] (the reports phrase it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NotALayer {
    /// Not Conv, ConvTranspose or Gemm.
    Op,
    /// The weight or bias is an activation, or not float.
    NotConstant(TensorName),
    /// The weight or bias is read by other nodes too.
    Shared(TensorName),
    /// The shapes do not fit the op (or are not known).
    Shape(String),
}

impl Layer {
    /// The layer `node` is, if it is one.
    pub fn of(graph: &Graph, node: &Node) -> Result<Layer, NotALayer> {
        let op = match (node.op_type.as_str(), node.domain.as_str()) {
            ("Conv", "") => LayerOp::Conv,
            ("ConvTranspose", "") => LayerOp::ConvTranspose,
            ("Gemm", "") => LayerOp::Gemm {
                trans_b: node.int_attribute("transB").unwrap_or(0) != 0,
            },
            _ => return Err(NotALayer::Op),
        };
        let Some(Some(weight)) = node.inputs.get(1) else {
            return Err(NotALayer::Shape("it has no weight input".into()));
        };
        let weight_dims = owned_float_parameter(graph, weight)?;
        let bias = match node.inputs.get(2) {
            Some(Some(bias)) => {
                owned_float_parameter(graph, bias)?;
                Some(bias.clone())
            }
            _ => None,
        };
        let output = node
            .outputs
            .first()
            .filter(|o| !o.as_str().is_empty())
            .cloned()
            .ok_or_else(|| NotALayer::Shape("it has no output".into()))?;
        let groups = node.int_attribute("group").unwrap_or(1).max(1) as usize;
        let shape_error = || {
            NotALayer::Shape(format!(
                "weight `{weight}` of shape {weight_dims:?} does not fit {} with group {groups}",
                node.op_type
            ))
        };
        let (out_channels, in_channels, kernel) = match op {
            LayerOp::Conv | LayerOp::ConvTranspose => {
                if weight_dims.len() < 3 {
                    return Err(shape_error());
                }
                let kernel = weight_dims[2..].iter().product();
                if op == LayerOp::Conv {
                    if weight_dims[0] % groups != 0 {
                        return Err(shape_error());
                    }
                    (weight_dims[0], weight_dims[1] * groups, kernel)
                } else {
                    if weight_dims[0] % groups != 0 {
                        return Err(shape_error());
                    }
                    (weight_dims[1] * groups, weight_dims[0], kernel)
                }
            }
            LayerOp::Gemm { trans_b } => {
                if weight_dims.len() != 2 {
                    return Err(shape_error());
                }
                let (rows, cols) = (weight_dims[0], weight_dims[1]);
                if trans_b {
                    (rows, cols, 1)
                } else {
                    (cols, rows, 1)
                }
            }
        };
        if let Some(bias) = &bias {
            let count: usize = graph
                .parameter(bias.as_str())
                .map_or(0, |p| p.shape.iter().product());
            // A Gemm's C may broadcast from one value; a Conv's bias is one per output channel.
            let fits = count == out_channels || (matches!(op, LayerOp::Gemm { .. }) && count == 1);
            if !fits {
                return Err(NotALayer::Shape(format!(
                    "bias `{bias}` has {count} values for {out_channels} output channels"
                )));
            }
        }
        Ok(Layer {
            node: node.id,
            op,
            groups,
            weight: weight.clone(),
            weight_dims,
            bias,
            output,
            out_channels,
            in_channels,
            kernel,
        })
    }

    /// Whether this is a depthwise convolution with depth multiplier 1 (one input and one
    /// output channel per group), the middle layer of the three-layer CLE pattern.
    pub fn is_depthwise(&self) -> bool {
        self.op == LayerOp::Conv
            && self.groups > 1
            && self.groups == self.out_channels
            && self.groups == self.in_channels
    }

    /// Elements per (weight row, weight column): the product of the kernel dims, 1 for Gemm.
    pub fn kernel(&self) -> usize {
        self.kernel
    }

    /// The output channel weight element `flat` (row-major) contributes to.
    pub fn out_channel(&self, flat: usize) -> usize {
        match self.op {
            LayerOp::Conv => flat / (self.weight_dims[1] * self.kernel),
            LayerOp::ConvTranspose => {
                let per_group_out = self.weight_dims[1];
                let row = flat / (per_group_out * self.kernel);
                let column = (flat / self.kernel) % per_group_out;
                let group = row / (self.in_channels / self.groups);
                group * per_group_out + column
            }
            LayerOp::Gemm { trans_b: true } => flat / self.weight_dims[1],
            LayerOp::Gemm { trans_b: false } => flat % self.weight_dims[1],
        }
    }

    /// The input channel weight element `flat` (row-major) reads.
    pub fn in_channel(&self, flat: usize) -> usize {
        match self.op {
            LayerOp::Conv => {
                let per_group_in = self.weight_dims[1];
                let row = flat / (per_group_in * self.kernel);
                let column = (flat / self.kernel) % per_group_in;
                let group = row / (self.out_channels / self.groups);
                group * per_group_in + column
            }
            LayerOp::ConvTranspose => flat / (self.weight_dims[1] * self.kernel),
            LayerOp::Gemm { trans_b: true } => flat % self.weight_dims[1],
            LayerOp::Gemm { trans_b: false } => flat / self.weight_dims[1],
        }
    }

    /// How the reports name this layer.
    pub fn reference(&self, graph: &Graph) -> LayerRef {
        let node = graph.node(self.node);
        let op = if self.is_depthwise() {
            "DepthwiseConv".to_owned()
        } else {
            node.op_type.clone()
        };
        LayerRef::new(op, &node.name, &self.output)
    }
}

/// The dims of `name` if it is a float parameter read by exactly one node.
fn owned_float_parameter(graph: &Graph, name: &TensorName) -> Result<Vec<usize>, NotALayer> {
    let tensor = graph
        .tensor(name.as_str())
        .ok_or_else(|| NotALayer::NotConstant(name.clone()))?;
    let data = graph
        .parameter(name.as_str())
        .filter(|p| tensor.is_float_parameter() && p.is_float())
        .ok_or_else(|| NotALayer::NotConstant(name.clone()))?;
    if tensor.consumers.len() != 1 || tensor.is_graph_output {
        return Err(NotALayer::Shared(name.clone()));
    }
    Ok(data.shape.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(op: LayerOp, groups: usize, dims: &[usize], out: usize, inp: usize) -> Layer {
        let kernel = match op {
            LayerOp::Gemm { .. } => 1,
            _ => dims[2..].iter().product(),
        };
        Layer {
            node: NodeId(0),
            op,
            groups,
            weight: "w".into(),
            weight_dims: dims.to_vec(),
            bias: None,
            output: "y".into(),
            out_channels: out,
            in_channels: inp,
            kernel,
        }
    }

    /// Every (out, in) pair a layer connects, from the element map.
    fn connections(l: &Layer) -> Vec<(usize, usize)> {
        let count: usize = l.weight_dims.iter().product();
        let mut pairs: Vec<_> = (0..count)
            .map(|e| (l.out_channel(e), l.in_channel(e)))
            .collect();
        pairs.sort();
        pairs.dedup();
        pairs
    }

    #[test]
    fn grouped_conv_connects_within_groups() {
        // 4 out, 6 in, 2 groups: outputs 0,1 read inputs 0..3, outputs 2,3 read inputs 3..6.
        let l = layer(LayerOp::Conv, 2, &[4, 3, 2, 2], 4, 6);
        let expected: Vec<(usize, usize)> = (0..4)
            .flat_map(|o| (0..3).map(move |i| (o, (o / 2) * 3 + i)))
            .collect();
        assert_eq!(connections(&l), expected);
    }

    #[test]
    fn depthwise_conv_connects_channel_to_itself() {
        let l = layer(LayerOp::Conv, 3, &[3, 1, 3, 3], 3, 3);
        assert!(l.is_depthwise());
        assert_eq!(connections(&l), [(0, 0), (1, 1), (2, 2)]);
    }

    #[test]
    fn conv_transpose_outputs_along_axis_one_by_group() {
        // 4 in, 2 groups, weight [4, 3, 2, 2]: 6 out; inputs 0,1 feed outputs 0..3.
        let l = layer(LayerOp::ConvTranspose, 2, &[4, 3, 2, 2], 6, 4);
        let expected: Vec<(usize, usize)> = (0..6)
            .flat_map(|o| (0..2).map(move |k| (o, (o / 3) * 2 + k)))
            .collect();
        assert_eq!(connections(&l), expected);
        assert_eq!(l.out_channel(12 - 1), 2); // element [0, 2, 1, 1]
    }

    proptest::proptest! {
        /// The element map agrees with the ONNX definitions written as nested loops over the
        /// weight's axes, for any groups and kernel size.
        #[test]
        fn element_map_follows_the_onnx_layouts(
            groups in 1usize..4,
            out_per_group in 1usize..4,
            in_per_group in 1usize..4,
            kernel in 1usize..4,
        ) {
            let (out, inp) = (groups * out_per_group, groups * in_per_group);
            // Conv: W[o, j, k] reads input (o / out_per_group) * in_per_group + j.
            let conv = layer(LayerOp::Conv, groups, &[out, in_per_group, kernel], out, inp);
            let mut flat = 0;
            for o in 0..out {
                for j in 0..in_per_group {
                    for _ in 0..kernel {
                        proptest::prop_assert_eq!(conv.out_channel(flat), o);
                        proptest::prop_assert_eq!(conv.in_channel(flat), (o / out_per_group) * in_per_group + j);
                        flat += 1;
                    }
                }
            }
            // ConvTranspose: W[c, j, k] writes output (c / in_per_group) * out_per_group + j.
            let transposed = layer(LayerOp::ConvTranspose, groups, &[inp, out_per_group, kernel], out, inp);
            let mut flat = 0;
            for c in 0..inp {
                for j in 0..out_per_group {
                    for _ in 0..kernel {
                        proptest::prop_assert_eq!(transposed.in_channel(flat), c);
                        proptest::prop_assert_eq!(transposed.out_channel(flat), (c / in_per_group) * out_per_group + j);
                        flat += 1;
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_follows_trans_b() {
        let plain = layer(LayerOp::Gemm { trans_b: false }, 1, &[3, 2], 2, 3);
        assert_eq!((plain.out_channel(1), plain.in_channel(1)), (1, 0));
        assert_eq!((plain.out_channel(4), plain.in_channel(4)), (0, 2));
        let transposed = layer(LayerOp::Gemm { trans_b: true }, 1, &[2, 3], 2, 3);
        assert_eq!(
            (transposed.out_channel(1), transposed.in_channel(1)),
            (0, 1)
        );
        assert_eq!(
            (transposed.out_channel(4), transposed.in_channel(4)),
            (1, 1)
        );
    }
}
