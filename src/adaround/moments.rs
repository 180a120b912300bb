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
    fn window_table(&self, shape: &[usize]) -> Result<Option<Vec<u32>>, String> {
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
    fn patches_with(
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
