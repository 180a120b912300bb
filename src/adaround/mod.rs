//! AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
//! Quantization"): each weight of a layer is rounded up or down, whichever way makes the layer's
//! output closest to the float model's, instead of to the nearest grid point.
//!
//! The formulation and defaults are AIMET's (`optimize`); the reconstruction runs from the
//! second moments of each layer's input patches (`moments`), so an iteration costs one
//! `(rows × K)·(K × K)` product whatever the calibration data. The encodings are frozen before
//! optimizing: the chosen integers live on the grid computed from the float weights, and the
//! AdaRounded weights are exactly `scale · (q + offset)`.
//!
//! Pure: the caller runs the models and hands in the moments.

mod config;
mod moments;
mod optimize;
mod yaml;

pub use config::{AdaroundConfig, BITWIDTHS, CALLBACK_KEYS, OPTIONAL_KEYS, TOP_KEYS, quant_scheme};
pub use yaml::{ConfigError, ConfigNames, parse_config, read_config};

pub use moments::{AdaLayer, LayerMoments, WeightLayout, ada_layers};
pub use optimize::{GAMMA, Hyperparameters, Problem, Rounding, ZETA, initial_v, rectified_sigmoid};

use ndarray::Array2;
use rayon::prelude::*;

use crate::encoding::TensorEncoding;
use crate::encoding::tensor::ChannelLayout;

/// Whether `name` (an `ignore_quant_ops_list` entry) names `layer`: its output, its weight, or
/// the node that computes it.
pub fn names_layer(name: &str, layer: &AdaLayer, graph: &crate::graph::Graph) -> bool {
    let node_name = graph
        .tensor(layer.name())
        .and_then(|t| t.producer.as_ref())
        .map(|p| p.node_name.as_str());
    name == layer.name() || name == layer.weight.as_str() || Some(name) == node_name
}

/// One warning per `ignore_quant_ops_list` entry that names a node or tensor of the model but
/// no layer AdaRound optimizes (a Relu, a Conv whose weight is computed): ignoring it changes
/// nothing, which is most likely not what was meant.
pub fn ineffective_ignores(
    config: &AdaroundConfig,
    model: &crate::onnx::OnnxModel,
    graph: &crate::graph::Graph,
) -> Result<Vec<String>, crate::transform::TransformError> {
    let layers = ada_layers(model)?;
    Ok(config
        .ignore_quant_ops_list
        .iter()
        .filter(|name| !layers.iter().any(|l| names_layer(name, l, graph)))
        .map(|name| {
            format!(
                "`ignore_quant_ops_list` names `{name}`, which is no layer AdaRound optimizes \
                 (a Conv, ConvTranspose or Gemm with a constant weight): it changes nothing"
            )
        })
        .collect())
}

/// What rounding one layer changed.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerResult {
    /// The AdaRounded weight values, row-major like the float weight.
    pub weights: Vec<f32>,
    /// Weights rounded the other way than to nearest.
    pub flipped: usize,
    /// Weights in the layer.
    pub total: usize,
    /// Reconstruction loss (less its rounding-independent constant) with nearest rounding.
    pub nearest_loss: f64,
    /// The same with the chosen rounding.
    pub adaround_loss: f64,
}

/// Each weight element's `(scale, offset)` under `encoding`; `None` for a float encoding or one
/// that does not fit `shape`.
fn element_grid(encoding: &TensorEncoding, shape: &[usize], len: usize) -> Option<Vec<(f32, f32)>> {
    match encoding {
        TensorEncoding::PerTensor(e) => Some(vec![(e.scale as f32, e.offset as f32); len]),
        TensorEncoding::PerChannel { axis, channels } => {
            let layout = ChannelLayout::new(shape, *axis, len).ok()?;
            if layout.channels != channels.len() || layout.inner == 0 {
                return None;
            }
            Some(
                (0..len)
                    .map(|i| {
                        let e = &channels[(i / layout.inner) % layout.channels];
                        (e.scale as f32, e.offset as f32)
                    })
                    .collect(),
            )
        }
        TensorEncoding::Float { .. } => None,
    }
}

/// AdaRounds one layer: `weights` (row-major, the layer's float weight) on the frozen
/// `encoding`, from its input `moments`. `Err` names what does not fit.
pub fn round_layer(
    layer: &AdaLayer,
    weights: &[f32],
    encoding: &TensorEncoding,
    moments: &LayerMoments,
    params: &Hyperparameters,
) -> Result<LayerResult, String> {
    let expected: usize = layer.weight_dims.iter().product();
    if weights.len() != expected {
        return Err(format!(
            "{} weights for dims {:?}",
            weights.len(),
            layer.weight_dims
        ));
    }
    let Some(bitwidth) = encoding.encodings().first().map(|e| e.bitwidth) else {
        return Err("the weight stays float".into());
    };
    let grid = element_grid(encoding, &layer.weight_dims, weights.len())
        .ok_or_else(|| "the encoding does not fit the weight".to_string())?;
    if moments.positions == 0 {
        return Err("no input positions were measured".into());
    }
    let scale: Vec<f32> = grid.iter().map(|g| g.0).collect();
    let offset: Vec<f32> = grid.iter().map(|g| g.1).collect();
    let (w, s, o) = (
        layer.matrices(weights),
        layer.matrices(&scale),
        layer.matrices(&offset),
    );
    let normalizer = 1.0 / moments.positions as f64;
    let steps = bitwidth.steps() as f32;
    // Groups do not interact: a depthwise layer is as many independent one-row problems,
    // optimized side by side; each group's result depends on that group alone.
    let per_group: Vec<(Array2<f32>, usize, f64, f64)> = (0..layer.groups)
        .into_par_iter()
        .map(|g| {
            let a: Array2<f32> = moments.quantized[g].mapv(|x| (x * normalizer) as f32);
            let target: Array2<f32> = moments.target[g].mapv(|x| (x * normalizer) as f32);
            let problem = Problem {
                weights: w[g].view(),
                scale: s[g].view(),
                offset: o[g].view(),
                steps,
                quantized_moments: a.view(),
                target: target.view(),
            };
            let nearest = problem.nearest();
            let rounding = problem.optimize(params);
            let flipped = nearest
                .grid
                .iter()
                .zip(&rounding.grid)
                .filter(|(a, b)| a != b)
                .count();
            let dequantized = problem.dequantize(&rounding.grid);
            let nearest_loss = problem.reconstruction(&problem.dequantize(&nearest.grid));
            let adaround_loss = problem.reconstruction(&dequantized);
            (dequantized, flipped, nearest_loss, adaround_loss)
        })
        .collect();
    let mut chosen = Vec::with_capacity(layer.groups);
    let (mut flipped, mut nearest_loss, mut adaround_loss) = (0, 0.0, 0.0);
    // Summed in group order: the same bits for any thread count.
    for (dequantized, f, n, a) in per_group {
        flipped += f;
        nearest_loss += n;
        adaround_loss += a;
        chosen.push(dequantized);
    }
    let mut out = weights.to_vec();
    layer.scatter(&chosen, &mut out);
    Ok(LayerResult {
        weights: out,
        flipped,
        total: weights.len(),
        nearest_loss,
        adaround_loss,
    })
}

#[cfg(test)]
mod tests;
