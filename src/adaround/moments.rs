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
    /// Per group, `Σ x_f x_qᵀ`, `K × K`.
    pub cross: Vec<Array2<f64>>,
    /// Patches summed (positions × batch over every sample).
    pub positions: u64,
}

impl LayerMoments {
    /// No samples yet.
    pub fn empty(layer: &AdaLayer) -> LayerMoments {
        let k = layer.k();
        LayerMoments {
            quantized: vec![Array2::zeros((k, k)); layer.groups],
            cross: vec![Array2::zeros((k, k)); layer.groups],
            positions: 0,
        }
    }

    /// One sample's moments from the layer's input in the quantized (`x_q`) and the float
    /// (`x_f`) model, both of dims `shape`.
    pub fn of_sample(
        layer: &AdaLayer,
        x_q: &[f32],
        x_f: &[f32],
        shape: &[usize],
    ) -> Result<LayerMoments, String> {
        if layer.layer.in_channels / layer.groups >= MIN_SHIFTED_CHANNELS
            && let Some(moments) = shifted_moments(layer, x_q, x_f, shape)?
        {
            return Ok(moments);
        }
        let mut moments = LayerMoments::empty(layer);
        let table = layer.window_table(shape)?;
        // Where nothing upstream is rounded the two inputs are equal, and so are the moments:
        // one product instead of two, the same bits.
        let same = x_q == x_f;
        for g in 0..layer.groups {
            let q = layer.patches_with(g, x_q, shape, table.as_deref())?;
            moments.positions = q.nrows() as u64;
            let quantized = q.t().dot(&q);
            moments.cross[g] = if same {
                quantized.mapv(f64::from)
            } else {
                let f = layer.patches_with(g, x_f, shape, table.as_deref())?;
                f.t().dot(&q).mapv(f64::from)
            };
            moments.quantized[g] = quantized.mapv(f64::from);
        }
        Ok(moments)
    }

    /// Adds `other`'s sums to these.
    pub fn add(&mut self, other: &LayerMoments) {
        for (a, b) in self.quantized.iter_mut().zip(&other.quantized) {
            *a += b;
        }
        for (a, b) in self.cross.iter_mut().zip(&other.cross) {
            *a += b;
        }
        self.positions += other.positions;
    }
}

/// Channels per group below which the patch products stay cheaper: a depthwise layer's
/// `K × K` product is tiny, and the correlations' fixed costs would dominate it.
const MIN_SHIFTED_CHANNELS: usize = 8;

/// The moments of a 2-D Conv with stride 1 and dilation 1 and a kernel larger than 1×1, from
/// the input's correlations instead of its patches; `None` for any other layer.
///
/// With `x̃` the input extended by zeros, `a`, `b` kernel offsets (shifted by the padding) and
/// `O` the output positions, an entry of the patch Gram matrix is
/// `Σ_{o∈O} x̃_c(o+a) x̃_c'(o+b) = R_cc'(b−a) − Σ_{p ∈ plane∖(O+a)} x_c(p) x̃_c'(p+b−a)`, where
/// `R_cc'(δ) = Σ_{p∈plane} x_c(p) x̃_c'(p+δ)`. There are `(2kh−1)(2kw−1)` shifts `δ` against
/// `(kh·kw)²` offset pairs, so a 3×3 kernel costs 25 `C × plane × C` products instead of 81,
/// plus the corrections over the thin border strips `plane∖(O+a)`. Exact up to float
/// summation order.
pub(super) fn shifted_moments(
    layer: &AdaLayer,
    x_q: &[f32],
    x_f: &[f32],
    shape: &[usize],
) -> Result<Option<LayerMoments>, String> {
    let Geometry::Conv(window) = &layer.layer.geometry else {
        return Ok(None);
    };
    if window.kernel.len() != 2
        || window.strides.iter().any(|&s| s != 1)
        || window.dilations.iter().any(|&d| d != 1)
        || window.kernel.iter().product::<usize>() < 2
    {
        return Ok(None);
    }
    let map = layer.layer.spatial_map(shape)?;
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if count != Some(x_q.len()) || x_q.len() != x_f.len() {
        return Err(format!(
            "{} values for an input of shape {shape:?}",
            x_q.len()
        ));
    }
    let (kh, kw) = (window.kernel[0], window.kernel[1]);
    let (h, w) = (shape[2], shape[3]);
    let ((oh, begin_y), (ow, begin_x)) = (map[0], map[1]);
    let plane = h * w;
    let kernel = kh * kw;
    let per_group = layer.layer.in_channels / layer.groups;
    let k = layer.k();
    let same = x_q == x_f;
    let mut moments = LayerMoments::empty(layer);
    moments.positions = (shape[0] * oh * ow) as u64;
    // Kernel offset index a = ky·kw + kx reads input (oy + ky − begin_y, ox + kx − begin_x).
    let shift_of = |a: usize| {
        (
            a as i64 / kw as i64 - begin_y,
            a as i64 % kw as i64 - begin_x,
        )
    };
    // `x̃_c(p + δ)` for every channel row, as a `C × plane` matrix (zeros off the plane).
    let shifted = |x: ArrayView2<f32>, dy: i64, dx: i64| -> Array2<f32> {
        let mut out = Array2::<f32>::zeros((x.nrows(), plane));
        for c in 0..x.nrows() {
            let row = x.row(c);
            let row = row.as_slice().unwrap_or_default();
            let target = out.row_mut(c).into_slice().unwrap_or_default();
            for y in 0..h as i64 {
                let sy = y + dy;
                if sy < 0 || sy >= h as i64 {
                    continue;
                }
                let (x0, x1) = ((-dx).max(0), (w as i64 - dx).min(w as i64));
                if x0 >= x1 {
                    continue;
                }
                let dst = y as usize * w;
                let src = sy as usize * w;
                target[dst + x0 as usize..dst + x1 as usize].copy_from_slice(
                    &row[(src as i64 + x0 + dx) as usize..(src as i64 + x1 + dx) as usize],
                );
            }
        }
        out
    };
    // Per offset a: the plane positions p with p − a outside the output grid.
    let strips: Vec<Vec<(usize, usize)>> = (0..kernel)
        .map(|a| {
            let (ay, ax) = shift_of(a);
            let mut cells = Vec::new();
            for y in 0..h {
                for x in 0..w {
                    let (oy, ox) = (y as i64 - ay, x as i64 - ax);
                    if oy < 0 || oy >= oh as i64 || ox < 0 || ox >= ow as i64 {
                        cells.push((y, x));
                    }
                }
            }
            cells
        })
        .collect();
    let gram = |left: ArrayView2<f32>, right: ArrayView2<f32>, out: &mut Array2<f64>| {
        let (sy, sx) = (2 * kh - 1, 2 * kw - 1);
        let mut correlations = Vec::with_capacity(sy * sx);
        for dy in -(kh as i64 - 1)..kh as i64 {
            for dx in -(kw as i64 - 1)..kw as i64 {
                correlations.push(left.dot(&shifted(right, dy, dx).t()));
            }
        }
        let channels = left.nrows();
        for a in 0..kernel {
            let (ay, ax) = shift_of(a);
            let cells = &strips[a];
            let left_strip = if cells.is_empty() {
                None
            } else {
                let mut m = Array2::<f32>::zeros((channels, cells.len()));
                for c in 0..channels {
                    for (j, &(y, x)) in cells.iter().enumerate() {
                        m[[c, j]] = left[[c, y * w + x]];
                    }
                }
                Some(m)
            };
            for b in 0..kernel {
                let (by, bx) = shift_of(b);
                let (dy, dx) = (by - ay, bx - ax);
                let index = (dy + kh as i64 - 1) as usize * sx + (dx + kw as i64 - 1) as usize;
                let full = &correlations[index];
                let correction = left_strip.as_ref().map(|strip| {
                    let mut m = Array2::<f32>::zeros((channels, cells.len()));
                    for c in 0..channels {
                        for (j, &(y, x)) in cells.iter().enumerate() {
                            let (ty, tx) = (y as i64 + dy, x as i64 + dx);
                            if ty >= 0 && ty < h as i64 && tx >= 0 && tx < w as i64 {
                                m[[c, j]] = right[[c, ty as usize * w + tx as usize]];
                            }
                        }
                    }
                    strip.dot(&m.t())
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
    };
    debug_assert_eq!(k, per_group * kernel);
    for n in 0..shape[0] {
        for g in 0..layer.groups {
            let base = (n * layer.layer.in_channels + g * per_group) * plane;
            fn view(
                x: &[f32],
                base: usize,
                rows: usize,
                plane: usize,
            ) -> Result<ArrayView2<'_, f32>, String> {
                ArrayView2::from_shape((rows, plane), &x[base..base + rows * plane])
                    .map_err(|e| e.to_string())
            }
            let q = view(x_q, base, per_group, plane)?;
            gram(q, q, &mut moments.quantized[g]);
            if !same {
                gram(view(x_f, base, per_group, plane)?, q, &mut moments.cross[g]);
            }
        }
    }
    if same {
        // Where nothing upstream is rounded the two inputs are equal, and so are the moments.
        moments.cross = moments.quantized.clone();
    }
    Ok(Some(moments))
}
