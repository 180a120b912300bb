//! The measurements empirical bias correction needs, reduced to a per-sample statistic.
//!
//! A layer's expected output is linear in its weights. For a Conv,
//! `y[c, o] = b_c + Σ_k W[c, k] · x[patch_k(o)]`, where `k` runs over the weight elements of
//! output channel `c` (input channel and kernel offset) and `patch_k(o)` is the input position
//! element `k` multiplies at output position `o` (zero where it falls in the padding). Taking the
//! mean over samples and output positions,
//!
//! ```text
//! E[y_c] = b_c + Σ_k W[c, k] · M[k],    M[k] = mean over samples and o of x[patch_k(o)]
//! ```
//!
//! so the shift a layer's *own* weight quantization causes, given the float model's input to
//! that layer, is `E[ỹ_c] − E[y_c] = Σ_k (W̃ − W)[c, k] · M[k]`: one mean "patch" `M` per layer
//! prices any weights. `M` is indexed `[input channel, kernel offset...]` over *all* input
//! channels, so groups only choose which slice a weight element reads (the element map of
//! [`Layer`] does that). ConvTranspose scatters instead of gathering
//! (`y[co, i·s + k·d − pad] += x[ci, i] · W[ci, co, k]`), so there `M[ci, k]` is the sum of
//! `x[ci, i]` over the inputs `i` whose target lands inside the output, divided by the number
//! of output positions. For Gemm, `M[k]` is the mean of the rows of `A` (of `Aᵀ` with
//! `transA`).
//!
//! Per sample, [`BiasLayer::accumulate`] adds that sample's patch (the mean over its batch and
//! output positions) to a running sum: merging samples is a plain sum, associative, so an
//! engine can store one patch per sample and merge them in any grouping. Then
//! [`channel_means`] turns the merged patch into the float and quantized means per output
//! channel that [`super::correct_biases`] takes.
//!
//! The patch is computed separably: along each spatial axis, the input positions one kernel
//! offset reads form an arithmetic progression, so a patch entry is a sum over a product of
//! progressions, reduced one axis at a time with strided prefix sums (outermost axis first, so
//! the widest pass adds whole rows and vectorizes). A 3×3 Conv on a 64×80×80 input costs about
//! one pass over the input, not one per kernel element: 0.22 ms per sample in release, 4.6× a
//! memcpy of the same input and 1.3× the 1×1 Conv's patch (`benches/bias_means.rs`, on a
//! shared 2-core machine).
//!
//! It must not run models or quantize weights: it is handed activations and weight values.

use super::TransformError;
use super::layer::{Layer, LayerOp};
use crate::graph::{Attribute, Graph, Node, TensorKind, TensorName};
use crate::onnx::OnnxModel;

use super::bias_correction::ChannelMeans;

/// One layer whose bias can be corrected: a Conv (any groups, any number of spatial axes),
/// ConvTranspose or Gemm with constant, unshared weights, whose input is an activation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BiasLayer {
    /// The layer's output tensor: how [`ChannelMeans`] and [`channel_means`] name the layer.
    pub output: TensorName,
    /// The activation the layer reads (its first input): what [`BiasLayer::accumulate`] is fed.
    pub input: TensorName,
    /// Input channels (Conv, ConvTranspose: axis 1 of the input; Gemm: the inner dimension).
    pub in_channels: usize,
    /// How inputs map to outputs.
    pub geometry: Geometry,
}

/// How a [`BiasLayer`]'s input positions map to its output positions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Geometry {
    /// A Conv: output position `o` reads input `o·stride + k·dilation − pad_begin`.
    Conv(Window),
    /// A ConvTranspose: input `i` writes output `i·stride + k·dilation − pad_begin`.
    ConvTranspose(Window),
    /// A Gemm: each row of `A` is one position.
    Gemm {
        /// Whether `A` is stored transposed (`transA = 1`), one position per column.
        trans_a: bool,
    },
}

/// The sliding window of a Conv or ConvTranspose, one entry per spatial axis.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Window {
    /// Kernel size per axis (the weight's dims after the first two).
    pub kernel: Vec<usize>,
    /// Strides, at least 1.
    pub strides: Vec<usize>,
    /// Dilations, at least 1.
    pub dilations: Vec<usize>,
    /// Padding, as `auto_pad` and `pads` say.
    pub padding: Padding,
    /// Groups (the patch covers every input channel; groups only matter to the weights).
    pub groups: usize,
    /// ConvTranspose's `output_padding` (zeros for Conv): extra output positions at the end.
    pub output_padding: Vec<usize>,
    /// ConvTranspose's `output_shape` (spatial dims), which fixes the output size and makes
    /// the pads follow from it.
    pub output_shape: Option<Vec<usize>>,
}

/// ONNX's `auto_pad` with `pads`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Padding {
    /// `NOTSET`: these pads, per axis, at the start and the end.
    Explicit {
        /// Zeros before the first input position, per axis.
        begin: Vec<usize>,
        /// Zeros after the last input position, per axis.
        end: Vec<usize>,
    },
    /// `VALID`: no padding.
    Valid,
    /// `SAME_UPPER`: output size `ceil(input / stride)` (ConvTranspose: `input · stride`), the
    /// odd pad at the end.
    SameUpper,
    /// `SAME_LOWER`: as `SameUpper`, the odd pad at the start.
    SameLower,
}

/// Every [`BiasLayer`] of `model`, in node order. A layer whose input is a parameter (an
/// initializer or `Constant` output, not an activation) is left out: there is nothing to
/// measure, and its output does not depend on the data.
pub fn bias_layers(model: &OnnxModel) -> Result<Vec<BiasLayer>, TransformError> {
    let graph = Graph::from_model(model)?;
    let mut layers = Vec::new();
    for node in graph.nodes() {
        let Ok(layer) = Layer::of(&graph, node) else {
            continue;
        };
        if let Some(bias_layer) = BiasLayer::of(&graph, node, &layer)? {
            layers.push(bias_layer);
        }
    }
    Ok(layers)
}

impl BiasLayer {
    /// The bias layer `layer` (`node`) is, or `None` when its input is not an activation.
    fn of(graph: &Graph, node: &Node, layer: &Layer) -> Result<Option<BiasLayer>, TransformError> {
        let Some(Some(input)) = node.inputs.first() else {
            return Ok(None);
        };
        let is_activation = graph
            .tensor(input.as_str())
            .is_some_and(|t| t.kind == TensorKind::Activation);
        if !is_activation {
            return Ok(None);
        }
        let problem = |problem: String| TransformError::BiasMeans {
            layer: layer.output.to_string(),
            problem,
        };
        let geometry = match layer.op {
            LayerOp::Gemm { .. } => Geometry::Gemm {
                trans_a: node.int_attribute("transA").unwrap_or(0) != 0,
            },
            LayerOp::Conv => Geometry::Conv(Window::of(node, layer).map_err(problem)?),
            LayerOp::ConvTranspose => {
                Geometry::ConvTranspose(Window::of(node, layer).map_err(problem)?)
            }
        };
        Ok(Some(BiasLayer {
            output: layer.output.clone(),
            input: input.clone(),
            in_channels: layer.in_channels,
            geometry,
        }))
    }

    /// Entries of the mean patch: input channels × kernel elements (Gemm: input columns).
    pub fn patch_len(&self) -> usize {
        match &self.geometry {
            Geometry::Conv(w) | Geometry::ConvTranspose(w) => {
                self.in_channels * w.kernel.iter().product::<usize>()
            }
            Geometry::Gemm { .. } => self.in_channels,
        }
    }

    /// Adds one sample's mean patch — the mean over its batch and the layer's output
    /// positions, laid out `[input channel, kernel offset...]` — to `sums` (`patch_len()`
    /// long). `input` is the layer's input activation in C order, of dims `shape`. A shape the
    /// layer cannot read (wrong rank or channel count, smaller than the kernel's reach, an
    /// empty batch) is an error and leaves `sums` as it was.
    pub fn accumulate(
        &self,
        input: &[f32],
        shape: &[usize],
        sums: &mut [f64],
    ) -> Result<(), String> {
        if sums.len() != self.patch_len() {
            return Err(format!(
                "{} sums for a patch of {} entries",
                sums.len(),
                self.patch_len()
            ));
        }
        let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if count != Some(input.len()) {
            return Err(format!(
                "{} values for an input of shape {shape:?}",
                input.len()
            ));
        }
        match &self.geometry {
            Geometry::Gemm { trans_a } => self.accumulate_gemm(*trans_a, input, shape, sums),
            Geometry::Conv(window) => {
                let axes = self.spatial_shape(window, shape)?;
                let axes = window.conv_axes(axes)?;
                self.accumulate_window(&axes, input, shape, sums);
                Ok(())
            }
            Geometry::ConvTranspose(window) => {
                let axes = self.spatial_shape(window, shape)?;
                let axes = window.transpose_axes(axes)?;
                self.accumulate_window(&axes, input, shape, sums);
                Ok(())
            }
        }
    }

    /// Per spatial axis of an input of dims `shape`: the number of output positions and the
    /// padding before the first (see [`BiasLayer::accumulate`] for the checks). Empty for
    /// Gemm. What an explicit patch extraction (AdaRound's second moments) walks.
    pub fn spatial_map(&self, shape: &[usize]) -> Result<Vec<(usize, i64)>, String> {
        let axes = match &self.geometry {
            Geometry::Gemm { .. } => return Ok(Vec::new()),
            Geometry::Conv(window) => window.conv_axes(self.spatial_shape(window, shape)?)?,
            Geometry::ConvTranspose(window) => {
                window.transpose_axes(self.spatial_shape(window, shape)?)?
            }
        };
        Ok(axes.iter().map(|a| (a.outputs, a.begin)).collect())
    }

    /// The spatial dims of `shape`, once it is checked to be `[N ≥ 1, in_channels, spatial...]`.
    fn spatial_shape<'s>(
        &self,
        window: &Window,
        shape: &'s [usize],
    ) -> Result<&'s [usize], String> {
        let rank = window.kernel.len() + 2;
        if shape.len() != rank {
            return Err(format!(
                "input of shape {shape:?} for a layer of {} spatial axes (rank {rank} expected)",
                window.kernel.len()
            ));
        }
        if shape[1] != self.in_channels {
            return Err(format!(
                "input of shape {shape:?} has {} channels, the layer reads {}",
                shape[1], self.in_channels
            ));
        }
        if shape[0] == 0 || shape[2..].contains(&0) {
            return Err(format!("input of shape {shape:?} is empty"));
        }
        Ok(&shape[2..])
    }

    fn accumulate_gemm(
        &self,
        trans_a: bool,
        input: &[f32],
        shape: &[usize],
        sums: &mut [f64],
    ) -> Result<(), String> {
        let &[rows, columns] = shape else {
            return Err(format!("Gemm input of shape {shape:?}: rank 2 expected"));
        };
        let (positions, inner) = if trans_a {
            (columns, rows)
        } else {
            (rows, columns)
        };
        if inner != self.in_channels {
            return Err(format!(
                "Gemm input of shape {shape:?} (transA = {}) has inner dimension {inner}, the \
                 weight reads {}",
                u8::from(trans_a),
                self.in_channels
            ));
        }
        if positions == 0 || inner == 0 {
            return Err(format!("Gemm input of shape {shape:?} is empty"));
        }
        let scale = 1.0 / positions as f64;
        if trans_a {
            for (sum, row) in sums.iter_mut().zip(input.chunks_exact(columns)) {
                *sum += row.iter().map(|&x| f64::from(x)).sum::<f64>() * scale;
            }
        } else {
            // Row by row, so the inner loop adds whole rows and vectorizes.
            let mut total = vec![0f64; inner];
            for row in input.chunks_exact(inner) {
                for (t, &x) in total.iter_mut().zip(row) {
                    *t += f64::from(x);
                }
            }
            for (sum, t) in sums.iter_mut().zip(total) {
                *sum += t * scale;
            }
        }
        Ok(())
    }

    /// Conv and ConvTranspose: `axes` has been checked against `shape`.
    fn accumulate_window(&self, axes: &[Axis], input: &[f32], shape: &[usize], sums: &mut [f64]) {
        let batch = shape[0];
        let kernel: usize = axes.iter().map(|a| a.sets.len()).product();
        let outputs: f64 = axes.iter().map(|a| a.outputs as f64).product();
        let scale = 1.0 / (batch as f64 * outputs);
        let plane: usize = shape[2..].iter().product();
        let mut buffers = Buffers::default();
        for (index, plane) in input.chunks_exact(plane).enumerate() {
            let channel = index % self.in_channels;
            let patch = buffers.reduce(plane, &shape[2..], axes);
            for (sum, p) in sums[channel * kernel..][..kernel].iter_mut().zip(patch) {
                *sum += p * scale;
            }
        }
    }
}

/// Along one spatial axis: the number of output positions and, per kernel offset, the input
/// positions that offset reads (Conv) or whose writes land inside the output (ConvTranspose),
/// an arithmetic progression.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Axis {
    outputs: usize,
    /// Padding before the first position: output `o` reads (Conv) input `o·s + k·d − begin`,
    /// input `i` writes (ConvTranspose) output `i·s + k·d − begin`.
    begin: i64,
    /// Distance between consecutive input positions of one progression.
    step: usize,
    /// Per kernel offset: (first input position, count).
    sets: Vec<(usize, usize)>,
}

impl Window {
    fn of(node: &Node, layer: &Layer) -> Result<Window, String> {
        let kernel = layer.weight_dims[2..].to_vec();
        let axes = kernel.len();
        let list = |name: &str, default: usize, len: usize| -> Result<Vec<usize>, String> {
            match node.attributes.get(name) {
                None => Ok(vec![default; len]),
                Some(Attribute::Ints(values)) if values.len() == len => values
                    .iter()
                    .map(|&v| {
                        usize::try_from(v).map_err(|_| format!("`{name}` {values:?} is negative"))
                    })
                    .collect(),
                Some(other) => Err(format!(
                    "`{name}` is {other:?}, {len} non-negative integers expected"
                )),
            }
        };
        if let Some(declared) = node.attributes.get("kernel_shape") {
            let fits = matches!(declared, Attribute::Ints(v)
                if v.len() == axes && v.iter().zip(&kernel).all(|(&a, &b)| a == b as i64));
            if !fits {
                return Err(format!(
                    "`kernel_shape` {declared:?} does not match the weight's kernel {kernel:?}"
                ));
            }
        }
        let strides = list("strides", 1, axes)?;
        let dilations = list("dilations", 1, axes)?;
        if strides.contains(&0) || dilations.contains(&0) {
            return Err(format!(
                "strides {strides:?} and dilations {dilations:?} must be at least 1"
            ));
        }
        let padding = match node.string_attribute("auto_pad").unwrap_or("NOTSET") {
            "NOTSET" => {
                let pads = list("pads", 0, 2 * axes)?;
                Padding::Explicit {
                    begin: pads[..axes].to_vec(),
                    end: pads[axes..].to_vec(),
                }
            }
            "VALID" => Padding::Valid,
            "SAME_UPPER" => Padding::SameUpper,
            "SAME_LOWER" => Padding::SameLower,
            other => return Err(format!("unknown `auto_pad` {other:?}")),
        };
        let transpose = layer.op == LayerOp::ConvTranspose;
        let output_padding = if transpose {
            list("output_padding", 0, axes)?
        } else {
            vec![0; axes]
        };
        let output_shape = match node.attributes.get("output_shape") {
            Some(Attribute::Ints(dims)) if transpose => {
                // Some exporters write the full output shape, batch and channels included.
                let spatial = if dims.len() == axes + 2 {
                    &dims[2..]
                } else {
                    &dims[..]
                };
                let spatial = spatial
                    .iter()
                    .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0))
                    .collect::<Option<Vec<_>>>()
                    .filter(|s| s.len() == axes)
                    .ok_or_else(|| format!("`output_shape` {dims:?} does not fit {axes} axes"))?;
                Some(spatial)
            }
            _ => None,
        };
        Ok(Window {
            kernel,
            strides,
            dilations,
            padding,
            groups: layer.groups,
            output_padding,
            output_shape,
        })
    }

    /// Whether every per-axis list has one entry per axis of `spatial` (the fields are public,
    /// so a hand-built window may not).
    fn check_axes(&self, spatial: &[usize]) -> Result<(), String> {
        let axes = self.kernel.len();
        let lengths_fit = self.strides.len() == axes
            && self.dilations.len() == axes
            && self.output_padding.len() == axes
            && self.output_shape.as_ref().is_none_or(|s| s.len() == axes)
            && match &self.padding {
                Padding::Explicit { begin, end } => begin.len() == axes && end.len() == axes,
                _ => true,
            };
        if !lengths_fit || spatial.len() != axes {
            return Err(format!(
                "window {self:?} does not describe {} spatial axes",
                spatial.len()
            ));
        }
        if self.strides.contains(&0) || self.dilations.contains(&0) {
            return Err("strides and dilations must be at least 1".into());
        }
        Ok(())
    }

    /// Conv: output position `o` reads input `o·s + k·d − begin`.
    fn conv_axes(&self, spatial: &[usize]) -> Result<Vec<Axis>, String> {
        self.check_axes(spatial)?;
        let mut axes = Vec::with_capacity(spatial.len());
        for (a, &input) in spatial.iter().enumerate() {
            let (input, kernel) = (input as i64, self.kernel[a] as i64);
            let (stride, dilation) = (self.strides[a] as i64, self.dilations[a] as i64);
            let reach = (kernel - 1) * dilation + 1;
            let (begin, end) = match &self.padding {
                Padding::Explicit { begin, end } => (begin[a] as i64, end[a] as i64),
                Padding::Valid => (0, 0),
                same => {
                    let outputs = ceil_div(input, stride);
                    let total = ((outputs - 1) * stride + reach - input).max(0);
                    split_pad(total, *same == Padding::SameUpper)
                }
            };
            let span = input + begin + end - reach;
            if span < 0 {
                return Err(format!(
                    "spatial axis {a} has {input} positions, fewer than the kernel's reach \
                     {reach} with pads {begin} + {end}"
                ));
            }
            let outputs = span / stride + 1;
            let sets = (0..kernel)
                .map(|k| {
                    let shift = k * dilation - begin;
                    let first = ceil_div(-shift, stride).max(0);
                    let last = floor_div(input - 1 - shift, stride).min(outputs - 1);
                    if last < first {
                        (0, 0)
                    } else {
                        (
                            (first * stride + shift) as usize,
                            (last - first + 1) as usize,
                        )
                    }
                })
                .collect();
            axes.push(Axis {
                outputs: outputs as usize,
                begin,
                step: stride as usize,
                sets,
            });
        }
        Ok(axes)
    }

    /// ConvTranspose: input `i` writes output `i·s + k·d − begin`, which counts when it lands
    /// in `[0, outputs)`.
    fn transpose_axes(&self, spatial: &[usize]) -> Result<Vec<Axis>, String> {
        self.check_axes(spatial)?;
        let mut axes = Vec::with_capacity(spatial.len());
        for (a, &input) in spatial.iter().enumerate() {
            let (input, kernel) = (input as i64, self.kernel[a] as i64);
            let (stride, dilation) = (self.strides[a] as i64, self.dilations[a] as i64);
            let extra = self.output_padding[a] as i64;
            let reach = (kernel - 1) * dilation + 1;
            let full = stride * (input - 1) + extra + reach;
            let fixed = match (&self.output_shape, &self.padding) {
                (Some(shape), _) => Some(shape[a] as i64),
                (None, Padding::SameUpper | Padding::SameLower) => Some(input * stride),
                _ => None,
            };
            let (outputs, begin) = match (fixed, &self.padding) {
                (Some(outputs), padding) => {
                    let upper = *padding == Padding::SameUpper;
                    (outputs, split_pad(full - outputs, upper).0)
                }
                (None, Padding::Explicit { begin, end }) => {
                    (full - begin[a] as i64 - end[a] as i64, begin[a] as i64)
                }
                (None, _) => (full, 0),
            };
            if outputs < 1 {
                return Err(format!(
                    "spatial axis {a} of {input} positions gives {outputs} output positions"
                ));
            }
            let sets = (0..kernel)
                .map(|k| {
                    let shift = k * dilation - begin;
                    let first = ceil_div(-shift, stride).max(0);
                    let last = floor_div(outputs - 1 - shift, stride).min(input - 1);
                    if last < first {
                        (0, 0)
                    } else {
                        (first as usize, (last - first + 1) as usize)
                    }
                })
                .collect();
            axes.push(Axis {
                outputs: outputs as usize,
                begin,
                step: 1,
                sets,
            });
        }
        Ok(axes)
    }
}

/// ONNX's split of a total pad: `SAME_UPPER` puts the odd one at the end. Floor division, as
/// the ONNX reference does, so a negative total (a ConvTranspose cropping) splits the same way.
fn split_pad(total: i64, upper: bool) -> (i64, i64) {
    let half = total.div_euclid(2);
    if upper {
        (half, total - half)
    } else {
        (total - half, half)
    }
}

fn floor_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b)
}

fn ceil_div(a: i64, b: i64) -> i64 {
    -(-a).div_euclid(b)
}

/// Scratch space reused across the planes of one call.
#[derive(Default)]
struct Buffers {
    prefix: Vec<f64>,
    current: Vec<f64>,
    next: Vec<f64>,
}

impl Buffers {
    /// Sums `plane` (dims `spatial`) over each kernel offset's product of progressions:
    /// `[kernel...]` values, reduced one axis at a time from the outermost.
    fn reduce(&mut self, plane: &[f32], spatial: &[usize], axes: &[Axis]) -> &[f64] {
        let mut outer = 1;
        for (a, axis) in axes.iter().enumerate() {
            let len = spatial[a];
            let inner: usize = spatial[a + 1..].iter().product();
            if a == 0 {
                reduce_axis(
                    plane,
                    outer,
                    len,
                    inner,
                    axis,
                    &mut self.prefix,
                    &mut self.next,
                );
            } else {
                reduce_axis(
                    &self.current,
                    outer,
                    len,
                    inner,
                    axis,
                    &mut self.prefix,
                    &mut self.next,
                );
            }
            std::mem::swap(&mut self.current, &mut self.next);
            outer *= axis.sets.len();
        }
        &self.current
    }
}

/// Reduces `data`, of shape `[outer, len, inner]`, along its middle axis to
/// `[outer, axis.sets.len(), inner]`: each entry the sum over one progression of `axis`,
/// read off strided prefix sums (`prefix[i] = data[i] + prefix[i − step]`) as the difference
/// of two of them.
fn reduce_axis<T: Copy + Into<f64>>(
    data: &[T],
    outer: usize,
    len: usize,
    inner: usize,
    axis: &Axis,
    prefix: &mut Vec<f64>,
    out: &mut Vec<f64>,
) {
    let offsets = axis.sets.len();
    out.clear();
    out.resize(outer * offsets * inner, 0.0);
    prefix.resize(len * inner, 0.0);
    let step = axis.step;
    for (block, dst) in data
        .chunks_exact(len * inner)
        .zip(out.chunks_exact_mut(offsets * inner))
    {
        for (r, row) in block.chunks_exact(inner).enumerate() {
            let (before, rest) = prefix.split_at_mut(r * inner);
            let target = &mut rest[..inner];
            if r >= step {
                let earlier = &before[(r - step) * inner..][..inner];
                for ((p, &x), &e) in target.iter_mut().zip(row).zip(earlier) {
                    *p = x.into() + e;
                }
            } else {
                for (p, &x) in target.iter_mut().zip(row) {
                    *p = x.into();
                }
            }
        }
        for (&(first, count), sum) in axis.sets.iter().zip(dst.chunks_exact_mut(inner)) {
            if count == 0 {
                continue;
            }
            let last = first + (count - 1) * step;
            sum.copy_from_slice(&prefix[last * inner..][..inner]);
            if first >= step {
                for (s, &p) in sum
                    .iter_mut()
                    .zip(&prefix[(first - step) * inner..][..inner])
                {
                    *s -= p;
                }
            }
        }
    }
}

/// The float and quantized means per output channel of each measured layer:
/// `E[y_c] = β·b_c + α·Σ_k W[c, k]·M[k]` with `W` read from `model` and, for `E[ỹ_c]`, `W̃` from
/// `quantized_weights` (the same model with its weights fake-quantized), where `M` is the layer's
/// merged mean patch (the sum of [`BiasLayer::accumulate`]'s over the samples, divided by their
/// number) and `α`, `β` are Gemm's (1 for Conv). Layers are named by their output tensor.
pub fn channel_means(
    model: &OnnxModel,
    quantized_weights: &OnnxModel,
    means: &[(TensorName, Vec<f64>)],
) -> Result<Vec<ChannelMeans>, TransformError> {
    let graph = Graph::from_model(model)?;
    let quantized_graph = Graph::from_model(quantized_weights)?;
    means
        .iter()
        .map(|(output, patch)| {
            let problem = |problem: String| TransformError::BiasMeans {
                layer: output.to_string(),
                problem,
            };
            let node = graph
                .tensor(output.as_str())
                .and_then(|t| t.producer.as_ref())
                .map(|p| graph.node(p.node))
                .ok_or_else(|| problem("no node writes it".into()))?;
            let layer = Layer::of(&graph, node).map_err(|_| {
                problem(format!(
                    "{} is not a layer with constant weights",
                    node.op_type
                ))
            })?;
            let bias_layer = BiasLayer::of(&graph, node, &layer)?
                .ok_or_else(|| problem("its input is not an activation".into()))?;
            if patch.len() != bias_layer.patch_len() {
                return Err(problem(format!(
                    "a mean patch of {} entries for a layer whose patch has {}",
                    patch.len(),
                    bias_layer.patch_len()
                )));
            }
            let weights = |graph: &Graph, which: &str| {
                graph
                    .parameter(layer.weight.as_str())
                    .filter(|p| p.shape == layer.weight_dims)
                    .and_then(|p| p.as_f32())
                    .map(std::borrow::Cow::into_owned)
                    .ok_or_else(|| {
                        problem(format!(
                            "the {which} model has no float weight `{}` of shape {:?}",
                            layer.weight, layer.weight_dims
                        ))
                    })
            };
            let float_weights = weights(&graph, "float")?;
            let quantized = weights(&quantized_graph, "quantized")?;
            let (alpha, beta) = gemm_scales(node);
            let bias: Vec<f64> = match &layer.bias {
                None => vec![0.0; layer.out_channels],
                Some(bias) => {
                    let values = graph
                        .parameter(bias.as_str())
                        .and_then(|p| p.as_f32())
                        .unwrap_or_default();
                    // `Layer::of` has checked the count: one per channel, or Gemm's broadcast one.
                    let value = |c: usize| values.get(if values.len() == 1 { 0 } else { c });
                    (0..layer.out_channels)
                        .map(|c| {
                            value(c)
                                .map(|&b| f64::from(b) * beta)
                                .ok_or_else(|| problem(format!("bias `{bias}` has no value {c}")))
                        })
                        .collect::<Result<_, _>>()?
                }
            };
            let kernel = layer.kernel();
            let mut float = vec![0f64; layer.out_channels];
            let mut quantized_means = vec![0f64; layer.out_channels];
            for (e, (&w, &q)) in float_weights.iter().zip(&quantized).enumerate() {
                let c = layer.out_channel(e);
                let m = patch[layer.in_channel(e) * kernel + e % kernel];
                float[c] += f64::from(w) * m;
                quantized_means[c] += f64::from(q) * m;
            }
            let finish = |sums: Vec<f64>| -> Vec<f64> {
                sums.iter().zip(&bias).map(|(s, b)| b + alpha * s).collect()
            };
            Ok(ChannelMeans {
                layer_output: output.clone(),
                float: finish(float),
                quantized: finish(quantized_means),
            })
        })
        .collect()
}

/// Gemm's `alpha` and `beta` (1 and 1 for the others, and when absent).
pub(super) fn gemm_scales(node: &Node) -> (f64, f64) {
    let scale = |name: &str| match node.attributes.get(name) {
        Some(Attribute::Float(v)) if node.op_type == "Gemm" => f64::from(*v),
        _ => 1.0,
    };
    (scale("alpha"), scale("beta"))
}
