//! Which layers AdaRound optimizes, how their weights read as `rows × K` matrices per group,
//! and the second moments of their input patches.
//!
//! A patch is what one output position of one group reads: for a Conv, the input channels of
//! the group times the kernel offsets (`K = in/group · kernel area`, zero where the window
//! falls in the padding); for a ConvTranspose the inputs whose writes land on that output
//! position; for a Gemm, one row of `A`. Per sample the patches of the quantized model's input
//! `X_q` and of the float model's `X_f` are laid out as `positions × K` matrices and reduced
//! to `X_qᵀX_q` and `X_fᵀX_q` (`K × K`), the only thing the optimizer needs. Moments are sums,
//! so samples merge by addition, in a fixed order for identical bits.

use ndarray::{Array2, ArrayView2};

use crate::graph::{Graph, TensorName};
use crate::onnx::OnnxModel;
use crate::transform::{BiasLayer, Geometry, TransformError, bias_layers};

/// How a layer's weight is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightLayout {
    /// `[out, in / group, k...]`.
    Conv,
    /// `[in, out / group, k...]`.
    ConvTranspose,
    /// `[out, in]` (`transB = 1`) or `[in, out]`.
    Gemm {
        /// `transB`.
        trans_b: bool,
    },
}

/// A layer AdaRound can optimize: a Conv (any groups), ConvTranspose or Gemm with a constant
/// float weight it alone reads, whose input is an activation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AdaLayer {
    /// Geometry and the input activation, as bias correction sees the layer.
    pub layer: BiasLayer,
    /// The weight parameter.
    pub weight: TensorName,
    /// Its dims.
    pub weight_dims: Vec<usize>,
    /// How they are laid out.
    pub layout: WeightLayout,
    /// Groups (1 for Gemm).
    pub groups: usize,
    /// Output channels.
    pub out_channels: usize,
}

/// Every layer AdaRound can optimize, in node order.
pub fn ada_layers(model: &OnnxModel) -> Result<Vec<AdaLayer>, TransformError> {
    let graph = Graph::from_model(model)?;
    let mut layers = Vec::new();
    for layer in bias_layers(model)? {
        let Some(node) = graph
            .tensor(layer.output.as_str())
            .and_then(|t| t.producer.as_ref())
            .map(|p| graph.node(p.node))
        else {
            continue;
        };
        let Some(Some(weight)) = node.inputs.get(1) else {
            continue;
        };
        let Some(dims) = graph.parameter(weight.as_str()).map(|p| p.shape.clone()) else {
            continue;
        };
        let groups = node.int_attribute("group").unwrap_or(1).max(1) as usize;
        let (layout, out_channels) = match (&layer.geometry, dims.len()) {
            (Geometry::Conv(_), _) => (WeightLayout::Conv, dims[0]),
            (Geometry::ConvTranspose(_), _) => (WeightLayout::ConvTranspose, dims[1] * groups),
            (Geometry::Gemm { .. }, 2) => {
                let trans_b = node.int_attribute("transB").unwrap_or(0) != 0;
                let out = if trans_b { dims[0] } else { dims[1] };
                (WeightLayout::Gemm { trans_b }, out)
            }
            _ => continue,
        };
        let groups = if matches!(layout, WeightLayout::Gemm { .. }) {
            1
        } else {
            groups
        };
        layers.push(AdaLayer {
            layer,
            weight: weight.clone(),
            weight_dims: dims,
            layout,
            groups,
            out_channels,
        });
    }
    Ok(layers)
}

impl AdaLayer {
    /// The layer's output tensor, which names it.
    pub fn name(&self) -> &str {
        self.layer.output.as_str()
    }

    fn kernel(&self) -> usize {
        match self.layout {
            WeightLayout::Gemm { .. } => 1,
            _ => self.weight_dims[2..].iter().product(),
        }
    }

    /// The patches one input of dims `shape` gives: the batch times the output positions of a
    /// Conv or ConvTranspose, the rows of a Gemm's `A`.
    pub fn positions(&self, shape: &[usize]) -> Result<u64, String> {
        let count = match &self.layer.geometry {
            Geometry::Gemm { trans_a } => match shape {
                &[rows, columns] => {
                    if *trans_a {
                        columns
                    } else {
                        rows
                    }
                }
                _ => return Err(format!("Gemm input of shape {shape:?}: rank 2 expected")),
            },
            _ => {
                let map = self.layer.spatial_map(shape)?;
                shape.first().copied().unwrap_or(0) * map.iter().map(|&(o, _)| o).product::<usize>()
            }
        };
        Ok(count as u64)
    }

    /// Output channels per group: the rows of each group's matrix.
    pub fn rows(&self) -> usize {
        self.out_channels / self.groups
    }

    /// Patch length per group: input channels per group × kernel area.
    pub fn k(&self) -> usize {
        self.layer.in_channels / self.groups * self.kernel()
    }

    /// The flat (row-major) index of weight element `(group, row, column)`.
    pub fn flat(&self, group: usize, row: usize, column: usize) -> usize {
        let kernel = self.kernel();
        match self.layout {
            WeightLayout::Conv => (group * self.rows() + row) * self.k() + column,
            WeightLayout::ConvTranspose => {
                let per_group_in = self.layer.in_channels / self.groups;
                let (ci, offset) = (column / kernel, column % kernel);
                ((group * per_group_in + ci) * self.rows() + row) * kernel + offset
            }
            WeightLayout::Gemm { trans_b: true } => row * self.k() + column,
            WeightLayout::Gemm { trans_b: false } => column * self.rows() + row,
        }
    }

    /// `values` (one per weight element, row-major) as one `rows × K` matrix per group.
    pub fn matrices(&self, values: &[f32]) -> Vec<Array2<f32>> {
        (0..self.groups)
            .map(|g| {
                Array2::from_shape_fn((self.rows(), self.k()), |(r, c)| {
                    values.get(self.flat(g, r, c)).copied().unwrap_or(0.0)
                })
            })
            .collect()
    }

    /// Writes group matrices back into row-major weight values.
    pub fn scatter(&self, matrices: &[Array2<f32>], values: &mut [f32]) {
        for (g, matrix) in matrices.iter().enumerate() {
            for ((r, c), &x) in matrix.indexed_iter() {
                if let Some(slot) = values.get_mut(self.flat(g, r, c)) {
                    *slot = x;
                }
            }
        }
    }

    /// One sample's patches of group `group` as a `positions × K` matrix. `input` is the
    /// layer's input in C order, of dims `shape`.
    pub fn patches(
        &self,
        group: usize,
        input: &[f32],
        shape: &[usize],
    ) -> Result<Array2<f32>, String> {
        let table = self.window_table(shape)?;
        self.patches_with(group, input, shape, table.as_deref())
    }

    /// For a Conv or ConvTranspose input of dims `shape`: per kernel offset and output
    /// position, the input position read (`u32::MAX` in the padding). The same for every
    /// group, channel and sample of that shape, so it is computed once per layer and shape.
    pub(super) fn window_table(&self, shape: &[usize]) -> Result<Option<Vec<u32>>, String> {
        let (Geometry::Conv(window) | Geometry::ConvTranspose(window)) = &self.layer.geometry
        else {
            return Ok(None);
        };
        let transpose = matches!(self.layer.geometry, Geometry::ConvTranspose(_));
        let map = self.layer.spatial_map(shape)?;
        let spatial = &shape[2..];
        let outputs: usize = map.iter().map(|&(o, _)| o).product();
        let kernel: usize = window.kernel.iter().product();
        let mut table = vec![u32::MAX; kernel * outputs];
        for kk in 0..kernel {
            let mut koff = vec![0usize; spatial.len()];
            let mut rest = kk;
            for a in (0..spatial.len()).rev() {
                koff[a] = rest % window.kernel[a];
                rest /= window.kernel[a];
            }
            for o in 0..outputs {
                let mut rest = o;
                let mut flat = 0usize;
                let mut inside = true;
                let mut stride_prod = 1usize;
                for a in (0..spatial.len()).rev() {
                    let (count, begin) = map[a];
                    let oa = (rest % count) as i64;
                    rest /= count;
                    let (s, d) = (window.strides[a] as i64, window.dilations[a] as i64);
                    let position = if transpose {
                        let shifted = oa + begin - koff[a] as i64 * d;
                        if shifted.rem_euclid(s) != 0 {
                            inside = false;
                            break;
                        }
                        shifted.div_euclid(s)
                    } else {
                        oa * s + koff[a] as i64 * d - begin
                    };
                    if position < 0 || position >= spatial[a] as i64 {
                        inside = false;
                        break;
                    }
                    flat += position as usize * stride_prod;
                    stride_prod *= spatial[a];
                }
                if inside {
                    table[kk * outputs + o] = flat as u32;
                }
            }
        }
        Ok(Some(table))
    }

    /// [`AdaLayer::patches`] with the window table already made.
    pub(super) fn patches_with(
        &self,
        group: usize,
        input: &[f32],
        shape: &[usize],
        table: Option<&[u32]>,
    ) -> Result<Array2<f32>, String> {
        let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if count != Some(input.len()) {
            return Err(format!(
                "{} values for an input of shape {shape:?}",
                input.len()
            ));
        }
        let k = self.k();
        match &self.layer.geometry {
            Geometry::Gemm { trans_a } => {
                let &[rows, columns] = shape else {
                    return Err(format!("Gemm input of shape {shape:?}: rank 2 expected"));
                };
                let view =
                    ArrayView2::from_shape((rows, columns), input).map_err(|e| e.to_string())?;
                let view = if *trans_a { view.reversed_axes() } else { view };
                if view.ncols() != k {
                    return Err(format!(
                        "Gemm input of shape {shape:?} does not give {k} columns"
                    ));
                }
                Ok(view.as_standard_layout().into_owned())
            }
            Geometry::Conv(window) | Geometry::ConvTranspose(window) => {
                let table = table.ok_or("no window table for a Conv input")?;
                let spatial = &shape[2..];
                let batch = shape[0];
                let kernel: usize = window.kernel.iter().product();
                let plane: usize = spatial.iter().product();
                let outputs = table.len() / kernel.max(1);
                let per_group = self.layer.in_channels / self.groups;
                let mut out = Array2::<f32>::zeros((batch * outputs, k));
                let data = out.as_slice_mut().unwrap_or_default();
                for n in 0..batch {
                    for ci in 0..per_group {
                        let channel = group * per_group + ci;
                        let base = (n * self.layer.in_channels + channel) * plane;
                        let plane = &input[base..base + plane];
                        for kk in 0..kernel {
                            let column = ci * kernel + kk;
                            for (o, &index) in table[kk * outputs..][..outputs].iter().enumerate() {
                                if index != u32::MAX {
                                    data[(n * outputs + o) * k + column] = plane[index as usize];
                                }
                            }
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// The moments of one layer, summed over samples.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerMoments {
    /// Per group, `Σ x_q x_qᵀ`, `K × K`.
    pub quantized: Vec<Array2<f64>>,
    /// Per group, `Σ (W x_f) x_qᵀ`, `rows × K`: the float layer's output against the quantized
    /// input, all the optimizer needs of the float input (`W·B` with `B = Σ x_f x_qᵀ`).
    pub target: Vec<Array2<f64>>,
    /// Patches summed (positions × batch over every sample).
    pub positions: u64,
}

impl LayerMoments {
    /// No samples yet.
    pub fn empty(layer: &AdaLayer) -> LayerMoments {
        let (rows, k) = (layer.rows(), layer.k());
        LayerMoments {
            quantized: vec![Array2::zeros((k, k)); layer.groups],
            target: vec![Array2::zeros((rows, k)); layer.groups],
            positions: 0,
        }
    }

    /// One sample's moments from the layer's input in the quantized (`x_q`) and the float
    /// (`x_f`) model, both of dims `shape`, for the layer's float `weights` (row-major, as
    /// stored).
    pub fn of_sample(
        layer: &AdaLayer,
        weights: &[f32],
        x_q: &[f32],
        x_f: &[f32],
        shape: &[usize],
    ) -> Result<LayerMoments, String> {
        let expected: usize = layer.weight_dims.iter().product();
        if weights.len() != expected || x_q.len() != x_f.len() {
            return Err(format!(
                "{} weights for dims {:?}, inputs of {} and {} values",
                weights.len(),
                layer.weight_dims,
                x_q.len(),
                x_f.len()
            ));
        }
        let w = layer.matrices(weights);
        let table = layer.window_table(shape)?;
        // Where nothing upstream is rounded the two inputs are equal, and so are the moments:
        // the target is then `W·A`, the same bits.
        let same = x_q == x_f;
        let (rows, k) = (layer.rows(), layer.k());
        let mut moments = LayerMoments::empty(layer);
        let narrow = layer.layer.in_channels / layer.groups < MIN_SHIFTED_CHANNELS;
        let grams = |left, right| match narrow {
            true => Ok(None),
            false => shifted_grams(layer, left, right, shape),
        };
        let shifted = grams(x_q, x_q)?;
        // The target two ways: from the float output `Y_f = P_f·Wᵀ` (`positions × rows`),
        // `2·rows·K` per position plus gathering both inputs' patches; or as `W·B` with
        // `B = P_fᵀP_q`, `K²` per position from patches, or one `C × plane × C` product per
        // shift from correlations. Whichever costs fewer operations.
        let positions = layer.positions(shape)?;
        moments.positions = positions;
        let positions = positions as f64;
        let output_cost = (2 * rows + 8) as f64 * k as f64 * positions;
        let gram_cost = match &shifted {
            Some(_) => {
                let per_group = (layer.layer.in_channels / layer.groups) as f64;
                let plane: usize = shape.iter().skip(2).product();
                shift_count(layer) as f64 * per_group * per_group * plane as f64
            }
            None => (k * k) as f64 * positions,
        } * shape.first().copied().unwrap_or(1) as f64;
        let through_output = !same && output_cost < gram_cost;
        let cross = if same || through_output {
            None
        } else {
            grams(x_f, x_q)?
        };
        for g in 0..layer.groups {
            let mut q_patches = None;
            let patches = |x: &[f32]| layer.patches_with(g, x, shape, table.as_deref());
            moments.quantized[g] = match &shifted {
                Some(grams) => grams[g].clone(),
                None => {
                    let q = patches(x_q)?;
                    let gram = q.t().dot(&q).mapv(f64::from);
                    q_patches = Some(q);
                    gram
                }
            };
            let target = if same {
                w[g].mapv(f64::from).dot(&moments.quantized[g])
            } else if through_output {
                let q = match q_patches.take() {
                    Some(q) => q,
                    None => patches(x_q)?,
                };
                let output = patches(x_f)?.dot(&w[g].t());
                output.t().dot(&q).mapv(f64::from)
            } else {
                let b = match &cross {
                    Some(grams) => grams[g].clone(),
                    None => {
                        let q = match q_patches.take() {
                            Some(q) => q,
                            None => patches(x_q)?,
                        };
                        patches(x_f)?.t().dot(&q).mapv(f64::from)
                    }
                };
                w[g].mapv(f64::from).dot(&b)
            };
            debug_assert_eq!(target.dim(), (rows, k));
            moments.target[g] = target;
        }
        Ok(moments)
    }

    /// Adds `other`'s sums to these.
    pub fn add(&mut self, other: &LayerMoments) {
        for (a, b) in self.quantized.iter_mut().zip(&other.quantized) {
            *a += b;
        }
        for (a, b) in self.target.iter_mut().zip(&other.target) {
            *a += b;
        }
        self.positions += other.positions;
    }
}

/// Channels per group below which the patch products stay cheaper: a depthwise layer's
/// `K × K` product is tiny, and the correlations' fixed costs would dominate it.
const MIN_SHIFTED_CHANNELS: usize = 8;

/// How one spatial axis of a window pairs kernel offsets, for [`shifted_grams`].
struct AxisPairs {
    /// Per kernel offset `a`: the input positions `[lo, hi)` that some output position reads
    /// through `a` (each through exactly one output position).
    valid: Vec<(usize, usize)>,
    /// Per pair `a · k + b`: how far the input read through `b` lies from the one read through
    /// `a` by the same output position, or `None` when no output position reads through both.
    shift: Vec<Option<i64>>,
}

impl AxisPairs {
    /// A Conv axis of stride 1: output `o` reads input `o + a·d − begin` through offset `a`.
    /// `None` for other strides, whose reads are not one shifted copy of the input.
    fn conv(
        k: usize,
        stride: usize,
        d: usize,
        begin: i64,
        input: usize,
        output: usize,
    ) -> Option<Self> {
        if stride != 1 {
            return None;
        }
        let valid = (0..k)
            .map(|a| {
                let first = a as i64 * d as i64 - begin;
                let lo = first.clamp(0, input as i64) as usize;
                let hi = (first + output as i64).clamp(0, input as i64) as usize;
                (lo, hi.max(lo))
            })
            .collect();
        let shift = (0..k * k)
            .map(|ab| Some((ab % k) as i64 * d as i64 - (ab / k) as i64 * d as i64))
            .collect();
        Some(AxisPairs { valid, shift })
    }

    /// A ConvTranspose axis: input `i` writes output `i·s + a·d − begin` through offset `a`, so
    /// an output position reads through `a` and `b` two inputs `(a − b)·d / s` apart, when
    /// that is a whole number.
    fn transpose(k: usize, s: usize, d: usize, begin: i64, input: usize, output: usize) -> Self {
        let (s, d) = (s as i64, d as i64);
        let valid = (0..k as i64)
            .map(|a| {
                // 0 ≤ i·s + a·d − begin < output
                let lo =
                    (begin - a * d).div_euclid(s) + i64::from((begin - a * d).rem_euclid(s) != 0);
                let end = output as i64 + begin - a * d;
                let hi = end.div_euclid(s) + i64::from(end.rem_euclid(s) != 0);
                let lo = lo.clamp(0, input as i64) as usize;
                let hi = hi.clamp(0, input as i64) as usize;
                (lo, hi.max(lo))
            })
            .collect();
        let shift = (0..k as i64 * k as i64)
            .map(|ab| {
                let (a, b) = (ab / k as i64, ab % k as i64);
                let gap = (a - b) * d;
                (gap.rem_euclid(s) == 0).then(|| gap / s)
            })
            .collect();
        AxisPairs { valid, shift }
    }
}

/// How a 2-D window pairs its kernel offsets over an input plane (see [`shifted_grams`]).
struct Pairing {
    ys: AxisPairs,
    xs: AxisPairs,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    /// The distinct shifts of all offset pairs, sorted.
    shifts: Vec<(i64, i64)>,
}

impl Pairing {
    fn kernel(&self) -> usize {
        self.kh * self.kw
    }

    /// `δ(a, b)` for offset indices `a = ay·kw + ax`, `b`; `None` when no output position
    /// reads through both.
    fn shift(&self, a: usize, b: usize) -> Option<(i64, i64)> {
        let (kh, kw) = (self.kh, self.kw);
        let dy = self.ys.shift[(a / kw) * kh + b / kw]?;
        let dx = self.xs.shift[(a % kw) * kw + b % kw]?;
        Some((dy, dx))
    }

    /// `V_a` as row and column ranges.
    fn valid(&self, a: usize) -> ((usize, usize), (usize, usize)) {
        (self.ys.valid[a / self.kw], self.xs.valid[a % self.kw])
    }
}

/// `Σ patches(left)ᵀ patches(right)` per group (`K × K`, summed over the batch) for a 2-D
/// Conv of stride 1 or a 2-D ConvTranspose, from the inputs' correlations instead of their
/// patches; `None` for any other layer.
///
/// With `x̃` the input extended by zeros, an output position reads through kernel offsets `a`
/// and `b` two input positions a fixed `δ(a, b)` apart, and through `a` each input position of
/// a rectangle `V_a` exactly once (see [`AxisPairs`]). So an entry of the patch Gram matrix is
/// `Σ_{p∈V_a} l_c(p) r̃_c'(p+δ) = R_cc'(δ) − Σ_{p ∈ plane∖V_a} l_c(p) r̃_c'(p+δ)`, where
/// `R_cc'(δ) = Σ_{p∈plane} l_c(p) r̃_c'(p+δ)`. A 3×3 Conv has 25 shifts `δ` against 81 offset
/// pairs (and a Gram of one input with itself needs only 13: `R(−δ) = R(δ)ᵀ`); a 1×1 Conv or a
/// ConvTranspose whose stride equals its kernel has the one shift 0. The corrections run over
/// the thin border strips `plane∖V_a`. Exact up to float summation order.
pub(super) fn shifted_grams(
    layer: &AdaLayer,
    left: &[f32],
    right: &[f32],
    shape: &[usize],
) -> Result<Option<Vec<Array2<f64>>>, String> {
    let (Geometry::Conv(window) | Geometry::ConvTranspose(window)) = &layer.layer.geometry else {
        return Ok(None);
    };
    let transpose = matches!(layer.layer.geometry, Geometry::ConvTranspose(_));
    let per_group = layer.layer.in_channels / layer.groups;
    if window.kernel.len() != 2 {
        return Ok(None);
    }
    let map = layer.layer.spatial_map(shape)?;
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if count != Some(left.len()) || left.len() != right.len() {
        return Err(format!(
            "{} values for an input of shape {shape:?}",
            left.len()
        ));
    }
    let (h, w) = (shape[2], shape[3]);
    let axis = |i: usize, input: usize| {
        let (k, s, d) = (window.kernel[i], window.strides[i], window.dilations[i]);
        let (output, begin) = map[i];
        if transpose {
            Some(AxisPairs::transpose(k, s, d, begin, input, output))
        } else {
            AxisPairs::conv(k, s, d, begin, input, output)
        }
    };
    let (Some(ys), Some(xs)) = (axis(0, h), axis(1, w)) else {
        return Ok(None);
    };
    let (kh, kw) = (window.kernel[0], window.kernel[1]);
    let mut pairing = Pairing {
        ys,
        xs,
        h,
        w,
        kh,
        kw,
        shifts: Vec::new(),
    };
    let kernel = pairing.kernel();
    // The distinct shifts, in a fixed order (the bits must not depend on anything else).
    let mut shifts: Vec<(i64, i64)> = (0..kernel)
        .flat_map(|a| (0..kernel).map(move |b| (a, b)))
        .filter_map(|(a, b)| pairing.shift(a, b))
        .collect();
    shifts.sort_unstable();
    shifts.dedup();
    pairing.shifts = shifts;
    debug_assert_eq!(layer.k(), per_group * kernel);
    let plane = h * w;
    // The same input on both sides (a pointer or a value comparison): its Gram is symmetric.
    let symmetric = std::ptr::eq(left, right) || left == right;
    let k = layer.k();
    let mut grams = vec![Array2::<f64>::zeros((k, k)); layer.groups];
    let mut dense = DenseGram::new(&pairing, per_group);
    for n in 0..shape[0] {
        for (g, gram) in grams.iter_mut().enumerate() {
            let base = (n * layer.layer.in_channels + g * per_group) * plane;
            let l = group_view(left, base, per_group, plane)?;
            let r = group_view(right, base, per_group, plane)?;
            dense.add(&pairing, l, r, symmetric, gram);
        }
    }
    Ok(Some(grams))
}

/// How many distinct shifts [`shifted_grams`] computes for `layer` (an estimate of its cost:
/// the kernel offsets' differences).
fn shift_count(layer: &AdaLayer) -> usize {
    match &layer.layer.geometry {
        Geometry::Conv(window) => window.kernel.iter().map(|&k| 2 * k - 1).product(),
        Geometry::ConvTranspose(window) => window
            .kernel
            .iter()
            .zip(&window.strides)
            .map(|(&k, &s)| 2 * k.div_ceil(s.max(1)) - 1)
            .product(),
        Geometry::Gemm { .. } => 1,
    }
}

/// `rows` channel planes of `x` from `base` on, as a `rows × plane` matrix.
fn group_view(
    x: &[f32],
    base: usize,
    rows: usize,
    plane: usize,
) -> Result<ArrayView2<'_, f32>, String> {
    ArrayView2::from_shape((rows, plane), &x[base..base + rows * plane]).map_err(|e| e.to_string())
}

/// Whether `δ` is in the half of the shifts a symmetric Gram computes (the other half are
/// transposes).
fn upper_half((dy, dx): (i64, i64)) -> bool {
    dy > 0 || (dy == 0 && dx >= 0)
}

/// The Gram of a group of several channels: per shift, one `C × plane × C` product.
struct DenseGram {
    /// The shifted copy of the right side, reused: a fresh allocation per shift costs page
    /// faults (and, across threads, TLB shootdowns) comparable to the product itself.
    buffer: Array2<f32>,
    /// Per offset `a`: the plane positions outside `V_a`, whose products the correlations
    /// overcount.
    strips: Vec<Vec<(usize, usize)>>,
}

impl DenseGram {
    fn new(pairing: &Pairing, channels: usize) -> DenseGram {
        let (h, w) = (pairing.h, pairing.w);
        let strips = (0..pairing.kernel())
            .map(|a| {
                let ((y0, y1), (x0, x1)) = pairing.valid(a);
                let mut cells = Vec::new();
                for y in 0..h {
                    for x in 0..w {
                        if !(y0..y1).contains(&y) || !(x0..x1).contains(&x) {
                            cells.push((y, x));
                        }
                    }
                }
                cells
            })
            .collect();
        DenseGram {
            buffer: Array2::zeros((channels, h * w)),
            strips,
        }
    }

    /// `x̃_c(p + δ)` for every channel row of `x`, into the buffer (zeros off the plane).
    fn shift_into(&mut self, pairing: &Pairing, x: ArrayView2<f32>, (dy, dx): (i64, i64)) {
        let (h, w) = (pairing.h as i64, pairing.w as i64);
        self.buffer.fill(0.0);
        let (x0, x1) = ((-dx).max(0), (w - dx).min(w));
        if x0 >= x1 {
            return;
        }
        for c in 0..x.nrows() {
            let row = x.row(c);
            let row = row.as_slice().unwrap_or_default();
            let mut target = self.buffer.row_mut(c);
            let target = target.as_slice_mut().unwrap_or_default();
            for y in 0..h {
                let sy = y + dy;
                if sy < 0 || sy >= h {
                    continue;
                }
                let (dst, src) = ((y * w) as usize, sy * w);
                target[dst + x0 as usize..dst + x1 as usize]
                    .copy_from_slice(&row[(src + x0 + dx) as usize..(src + x1 + dx) as usize]);
            }
        }
    }

    /// Adds `Σ_{p∈V_a} left_c(p) right̃_c'(p+δ(a, b))` to `out[c·kernel + a, c'·kernel + b]`.
    /// `symmetric`: `left` and `right` are the same input.
    fn add(
        &mut self,
        pairing: &Pairing,
        left: ArrayView2<f32>,
        right: ArrayView2<f32>,
        symmetric: bool,
        out: &mut Array2<f64>,
    ) {
        let shifts = &pairing.shifts;
        let mut correlations: Vec<Option<Array2<f32>>> = vec![None; shifts.len()];
        for (i, &delta) in shifts.iter().enumerate() {
            if symmetric && !upper_half(delta) {
                continue;
            }
            correlations[i] = Some(if delta == (0, 0) {
                left.dot(&right.t())
            } else {
                self.shift_into(pairing, right, delta);
                left.dot(&self.buffer.t())
            });
        }
        if symmetric {
            // Σ_p x_c(p) x̃_c'(p−δ) = Σ_p x_c'(p) x̃_c(p+δ): R(−δ) is the transpose of R(δ).
            for (i, &(dy, dx)) in shifts.iter().enumerate() {
                if correlations[i].is_none()
                    && let Ok(j) = shifts.binary_search(&(-dy, -dx))
                {
                    correlations[i] = correlations[j].as_ref().map(|r| r.t().to_owned());
                }
            }
        }
        let (h, w) = (pairing.h as i64, pairing.w);
        let kernel = pairing.kernel();
        let channels = left.nrows();
        for a in 0..kernel {
            let cells = &self.strips[a];
            let left_strip = (!cells.is_empty()).then(|| {
                Array2::from_shape_fn((channels, cells.len()), |(c, j)| {
                    let (y, x) = cells[j];
                    left[[c, y * w + x]]
                })
            });
            for b in 0..kernel {
                let Some((dy, dx)) = pairing.shift(a, b) else {
                    continue;
                };
                let Some(full) = shifts
                    .binary_search(&(dy, dx))
                    .ok()
                    .and_then(|i| correlations[i].as_ref())
                else {
                    continue;
                };
                let correction = left_strip.as_ref().map(|strip| {
                    let shifted = Array2::from_shape_fn((channels, cells.len()), |(c, j)| {
                        let (y, x) = cells[j];
                        let (ty, tx) = (y as i64 + dy, x as i64 + dx);
                        if ty >= 0 && ty < h && tx >= 0 && tx < w as i64 {
                            right[[c, ty as usize * w + tx as usize]]
                        } else {
                            0.0
                        }
                    });
                    strip.dot(&shifted.t())
                });
                for c in 0..channels {
                    for c2 in 0..channels {
                        let mut v = f64::from(full[[c, c2]]);
                        if let Some(correction) = &correction {
                            v -= f64::from(correction[[c, c2]]);
                        }
                        out[[c * kernel + a, c2 * kernel + b]] += v;
                    }
                }
            }
        }
    }
}
