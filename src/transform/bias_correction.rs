//! Empirical bias correction (Nagel et al. 2019, section 4.2): weight quantization shifts a
//! layer's expected output per channel by E[W̃x] − E[Wx]; subtracting that shift from the bias
//! removes it. The caller measures the means (the float model and the model with quantized
//! weights, over calibration data, per output channel of each layer); this file only moves the
//! biases. It must not run models or quantize weights.

use super::TransformError;
use super::edits::{Edits, Parameters, fresh_name};
use super::layer::Layer;
use super::report::{BiasCorrection, TransformEvent, TransformReport};
use crate::graph::{Graph, TensorName};
use crate::onnx::OnnxModel;

/// One layer's output means per output channel, as measured by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelMeans {
    /// The layer's output tensor (what the layer node writes, before any activation).
    pub layer_output: TensorName,
    /// E[y_c] of the float model.
    pub float: Vec<f64>,
    /// E[ỹ_c] with quantized weights (and, for the empirical variant, quantized activations
    /// upstream).
    pub quantized: Vec<f64>,
}

/// Subtracts each layer's measured shift (quantized − float mean, per output channel) from its
/// bias; a layer without a bias gains one (`{node name}.bias`). Layers are Conv,
/// ConvTranspose and Gemm with constant, unshared weights; any other name is an error.
pub fn correct_biases(
    model: &OnnxModel,
    means: &[ChannelMeans],
) -> Result<(OnnxModel, TransformReport), TransformError> {
    let graph = Graph::from_model(model)?;
    let mut params = Parameters::default();
    let mut edits = Edits::default();
    let mut report = TransformReport::default();
    for m in means {
        let problem = |problem: String| TransformError::BiasCorrection {
            layer: m.layer_output.to_string(),
            problem,
        };
        let node = graph
            .tensor(m.layer_output.as_str())
            .and_then(|t| t.producer.as_ref())
            .map(|p| graph.node(p.node))
            .ok_or_else(|| problem("no node writes it".into()))?;
        let layer = Layer::of(&graph, node).map_err(|_| {
            problem(format!(
                "{} is not a layer with constant weights",
                node.op_type
            ))
        })?;
        let channels = layer.out_channels;
        if m.float.len() != channels || m.quantized.len() != channels {
            return Err(problem(format!(
                "{} and {} means for {channels} output channels",
                m.float.len(),
                m.quantized.len()
            )));
        }
        let bias = match &layer.bias {
            Some(bias)
                if graph
                    .parameter(bias.as_str())
                    .is_some_and(|p| p.shape.iter().product::<usize>() == channels) =>
            {
                bias.clone()
            }
            Some(bias) => {
                // A Gemm's broadcast C: widen it to one value per channel first.
                let value = params.get(&graph, bias)[0];
                params.set(bias, vec![channels as u64], vec![value; channels]);
                bias.clone()
            }
            None => {
                let base = if node.name.is_empty() {
                    layer.weight.as_str()
                } else {
                    node.name.as_str()
                };
                let name = fresh_name(&graph, &params, base, "bias");
                params.set(&name, vec![channels as u64], vec![0.0; channels]);
                edits.inputs.push((layer.node, 2, name.clone()));
                name
            }
        };
        // Gemm adds β·C: moving the output by `shift` moves C by `shift / β`.
        let (_, beta) = super::input_means::gemm_scales(node);
        if beta == 0.0 {
            return Err(problem(
                "a Gemm with beta = 0 ignores its C, so no bias can move".into(),
            ));
        }
        let mut max_shift = 0f32;
        for (c, b) in params.get_mut(&graph, &bias).iter_mut().enumerate() {
            let shift = m.quantized[c] - m.float[c];
            max_shift = max_shift.max(shift.abs() as f32);
            *b = (f64::from(*b) - shift / beta) as f32;
        }
        report
            .events
            .push(TransformEvent::BiasCorrected(BiasCorrection {
                layer: layer.reference(&graph),
                channels,
                max_shift,
            }));
    }
    let mut out = model.clone();
    params.write(&mut out)?;
    edits.write(&mut out)?;
    Ok((out, report))
}
