//! AdaRound over a whole model: the part that runs models.
//!
//! Layers are taken in waves: a layer's wave is one more than the latest wave of the AdaRound
//! layers upstream of its input, so every layer of a wave reads an input that only already
//! AdaRounded layers shape. Per wave, each selected sample runs once through the float model
//! and once through the model with every earlier wave's weights AdaRounded (AIMET's asymmetric
//! reconstruction: inputs from the model quantized so far, targets from the float model),
//! each layer of the wave reduces its two inputs to second moments, and the layers are then
//! optimized side by side. The first wave needs no quantized run: nothing upstream changed.
//!
//! Deterministic: samples are reduced in list order, layers are optimized in fixed row blocks,
//! so the thread count changes no bit.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rayon::prelude::*;

use crate::adaround::{AdaLayer, AdaroundConfig, LayerMoments, ada_layers, round_layer};
use crate::calib::{InputList, LoadedSample};
use crate::encoding::TensorEncoding;
use crate::graph::{Graph, Role};
use crate::onnx::OnnxModel;
use crate::overrides::{FixedEncoding, Override, Overrides};
use crate::quantizer::{self, QuantizerSettings};
use crate::run::FloatRunner;

/// What AdaRound made of a model.
#[derive(Debug, Clone)]
pub struct AdaroundOutput {
    /// The model with every optimized layer's weights AdaRounded.
    pub model: OnnxModel,
    /// The frozen weight encodings, by weight name: the encodings the chosen integers are on.
    pub frozen: BTreeMap<String, FixedEncoding>,
    /// One line per optimized layer, in node order.
    pub layers: Vec<LayerSummary>,
}

/// What happened to one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSummary {
    /// The layer's output tensor.
    pub layer: String,
    /// Its wave.
    pub wave: usize,
    /// Weights rounded the other way than to nearest, of all.
    pub flipped: usize,
    /// Weights in the layer.
    pub total: usize,
    /// Reconstruction loss with nearest rounding (less its rounding-independent constant).
    pub nearest_loss: f64,
    /// The same with the chosen rounding.
    pub adaround_loss: f64,
}

impl LayerSummary {
    /// One line for a report.
    pub fn line(&self) -> String {
        format!(
            "adaround `{}`: {} of {} weights rounded the other way, reconstruction {:.6} → {:.6} \
             (relative to the float output)",
            self.layer, self.flipped, self.total, self.nearest_loss, self.adaround_loss
        )
    }
}

/// The settings a layer's weight encoding is computed with: the target's, with the config's
/// bitwidths and scheme.
fn layer_settings(
    config: &AdaroundConfig,
    settings: &QuantizerSettings,
    weight: &str,
) -> QuantizerSettings {
    let mut s = settings.clone();
    if let Some(bits) = config.default_param_bw {
        s.weights_bitwidth = bits;
    }
    if let Some((_, bits)) = config
        .param_bw_override_list
        .iter()
        .find(|(name, _)| name == weight)
    {
        s.weights_bitwidth = *bits;
    }
    if let Some(method) = config.default_quant_scheme {
        s.param_calibration = method;
    }
    s
}

/// Each layer's wave (see the module docs), and the layers upstream of its input (indices,
/// ascending): the only ones whose rounding its quantized input depends on.
fn waves(graph: &Graph, layers: &[AdaLayer]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let index: HashMap<&str, usize> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name(), i))
        .collect();
    // Per tensor: the AdaRound layers it depends on.
    let mut memo: HashMap<String, BTreeSet<usize>> = HashMap::new();
    let mut wave = vec![0; layers.len()];
    let mut upstream = vec![Vec::new(); layers.len()];
    // Node order is topological, so layers come after everything they read.
    for node in graph.nodes() {
        let mut above: BTreeSet<usize> = BTreeSet::new();
        for input in node.inputs.iter().flatten() {
            if let Some(set) = memo.get(input.as_str()) {
                above.extend(set);
            }
        }
        let own = node
            .outputs
            .first()
            .and_then(|o| index.get(o.as_str()))
            .copied();
        if let Some(i) = own {
            wave[i] = above.iter().map(|&u| wave[u] + 1).max().unwrap_or(0);
            upstream[i] = above.iter().copied().collect();
            above.insert(i);
        }
        for output in &node.outputs {
            memo.insert(output.to_string(), above.clone());
        }
    }
    (wave, upstream)
}

/// What AdaRound will do to a model, decided before anything runs: the layers it optimizes (in
/// node order), their float weights and frozen encodings, their waves, and the layers upstream
/// of each.
#[derive(Debug, Clone)]
pub struct LayerPlan {
    /// The layers, supported and neither ignored nor fixed by an override.
    pub layers: Vec<AdaLayer>,
    /// Each layer's float weight values.
    pub weights: Vec<Vec<f32>>,
    /// Each layer's frozen weight encoding: from the float weights, before any rounding.
    pub encodings: Vec<TensorEncoding>,
    /// Each layer's wave.
    pub waves: Vec<usize>,
    /// Each layer's upstream layers (indices into `layers`, ascending).
    pub upstream: Vec<Vec<usize>>,
}

/// Plans AdaRound over `model` (see [`LayerPlan`]).
pub fn plan_layers(
    model: &OnnxModel,
    graph: &Graph,
    overrides: &Overrides,
    settings: &QuantizerSettings,
    config: &AdaroundConfig,
) -> Result<LayerPlan, String> {
    let ignored = |layer: &AdaLayer| {
        let node_name = graph
            .tensor(layer.name())
            .and_then(|t| t.producer.as_ref())
            .map(|p| p.node_name.as_str());
        config.ignore_quant_ops_list.iter().any(|n| {
            n == layer.name() || n == layer.weight.as_str() || Some(n.as_str()) == node_name
        })
    };
    let layers: Vec<AdaLayer> = ada_layers(model)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|l| !ignored(l))
        // A weight the overrides fix, or keep float, is not the optimizer's to choose.
        .filter(|l| overrides.get(l.weight.as_str()).is_none())
        .collect();
    let mut weights = Vec::with_capacity(layers.len());
    let mut encodings = Vec::with_capacity(layers.len());
    for layer in &layers {
        let tensor = graph
            .tensor(layer.weight.as_str())
            .ok_or_else(|| format!("no weight `{}`", layer.weight))?;
        let data = graph
            .parameter(layer.weight.as_str())
            .and_then(|p| p.as_f32().map(|v| (v.into_owned(), p.shape.clone())))
            .ok_or_else(|| format!("weight `{}` is not float", layer.weight))?;
        let layer_settings = layer_settings(config, settings, layer.weight.as_str());
        let (encoding, _) =
            quantizer::encode_parameter(tensor, &data.0, &data.1, None, &layer_settings)
                .map_err(|e| e.to_string())?;
        debug_assert!(matches!(tensor.role, Role::Weight { .. }));
        encodings.push(encoding);
        weights.push(data.0);
    }
    let (waves, upstream) = waves(graph, &layers);
    Ok(LayerPlan {
        layers,
        weights,
        encodings,
        waves,
        upstream,
    })
}

/// How many samples of a list of `available` AdaRound reads; `Err` says why none.
pub fn sample_count(config: &AdaroundConfig, available: usize) -> Result<usize, String> {
    let count = match config.num_batches {
        Some(n) if n > available => {
            return Err(format!(
                "num_batches is {n}, but the input list has {available} samples"
            ));
        }
        Some(n) => n,
        None => available,
    };
    if count == 0 {
        return Err("the input list has no samples".into());
    }
    Ok(count)
}

/// AdaRounds every supported layer of `model` not in the ignore list. `runner_dims` fix the
/// model's dynamic inputs; `progress(done, total, layer)` is called as layers finish.
pub fn adaround_model(
    model: &OnnxModel,
    overrides: &Overrides,
    settings: &QuantizerSettings,
    config: &AdaroundConfig,
    list: &InputList,
    runner_dims: &[(String, Vec<usize>)],
    progress: &(dyn Fn(usize, usize, &str) + Sync),
) -> Result<AdaroundOutput, String> {
    let graph = Graph::from_model(model).map_err(|e| e.to_string())?;
    let LayerPlan {
        layers,
        weights,
        encodings,
        waves: wave_of,
        ..
    } = plan_layers(model, &graph, overrides, settings, config)?;
    let samples = &list.samples[..sample_count(config, list.samples.len())?];
    let last_wave = wave_of.iter().copied().max().unwrap_or(0);
    let float_runner =
        FloatRunner::new(&model.to_bytes(), runner_dims).map_err(|e| e.to_string())?;
    list.check(float_runner.input_specs())
        .map_err(|e| e.to_string())?;
    let mut current = model.clone();
    let mut summaries: Vec<Option<LayerSummary>> = vec![None; layers.len()];
    let hyper = config.hyperparameters();
    let total = layers.len();
    let mut done = 0;
    for wave in 0..=last_wave {
        let members: Vec<usize> = (0..layers.len()).filter(|&i| wave_of[i] == wave).collect();
        if members.is_empty() {
            continue;
        }
        let quantized_runner = if wave == 0 {
            None
        } else {
            Some(FloatRunner::new(&current.to_bytes(), runner_dims).map_err(|e| e.to_string())?)
        };
        let moments = wave_moments(
            &float_runner,
            quantized_runner.as_ref(),
            samples.len(),
            &mut |i| {
                list.load(&samples[i], float_runner.input_specs())
                    .map_err(|e| e.to_string())
            },
            &members.iter().map(|&i| &layers[i]).collect::<Vec<_>>(),
        )?;
        let results: Vec<_> = members
            .par_iter()
            .zip(moments.par_iter())
            .map(|(&i, moments)| {
                round_layer(&layers[i], &weights[i], &encodings[i], moments, &hyper)
                    .map_err(|e| format!("layer `{}`: {e}", layers[i].name()))
            })
            .collect::<Result<_, _>>()?;
        for (&i, result) in members.iter().zip(results) {
            current
                .replace_parameter_f32(layers[i].weight.as_str(), &result.weights)
                .map_err(|e| e.to_string())?;
            summaries[i] = Some(LayerSummary {
                layer: layers[i].name().to_string(),
                wave,
                flipped: result.flipped,
                total: result.total,
                nearest_loss: result.nearest_loss,
                adaround_loss: result.adaround_loss,
            });
            done += 1;
            progress(done, total, layers[i].name());
        }
    }
    let frozen = layers
        .iter()
        .zip(&encodings)
        .map(|(l, e)| (l.weight.to_string(), FixedEncoding::from(e)))
        .collect();
    Ok(AdaroundOutput {
        model: current,
        frozen,
        layers: summaries.into_iter().flatten().collect(),
    })
}

/// The frozen encodings as parameter overrides, added to `overrides`: what makes the final
/// encodings (and the QDQ export) use exactly the grid the integers were chosen on.
pub fn with_frozen(overrides: &Overrides, frozen: &BTreeMap<String, FixedEncoding>) -> Overrides {
    let mut out = overrides.clone();
    for (name, encoding) in frozen {
        out.parameters
            .insert(name.clone(), Override::Fixed(encoding.clone()));
    }
    out
}

/// One run's copies of the wave's layer inputs (data, dims), per member.
type Captured = Vec<Option<(Vec<f32>, Vec<usize>)>>;

/// One wave's moments: per member layer, summed over `count` samples in list order. `load`
/// reads sample `i`; it is called on this thread, a batch at a time, and the batch then runs
/// side by side (rayon): the runs read nothing but the runners and the loaded tensors.
pub fn wave_moments(
    float_runner: &FloatRunner,
    quantized_runner: Option<&FloatRunner>,
    count: usize,
    load: &mut dyn FnMut(usize) -> Result<LoadedSample, String>,
    members: &[&AdaLayer],
) -> Result<Vec<LayerMoments>, String> {
    let wanted: HashMap<&str, Vec<usize>> =
        members
            .iter()
            .enumerate()
            .fold(HashMap::new(), |mut map, (m, layer)| {
                map.entry(layer.layer.input.as_str()).or_default().push(m);
                map
            });
    let capture = |runner: &FloatRunner, loaded: &LoadedSample| -> Result<Captured, String> {
        let mut inputs: Captured = vec![None; members.len()];
        let names = runner.activation_names();
        runner
            .run(&loaded.tensors, |index, data, shape| {
                if let Some(ms) = wanted.get(names[index].as_str()) {
                    for &m in ms {
                        inputs[m] = Some((data.to_vec(), shape.to_vec()));
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(inputs)
    };
    let per_sample = |loaded: &LoadedSample| -> Result<Vec<LayerMoments>, String> {
        let float = capture(float_runner, loaded)?;
        let quantized = match quantized_runner {
            Some(runner) => Some(capture(runner, loaded)?),
            None => None,
        };
        members
            .iter()
            .enumerate()
            .map(|(m, layer)| {
                let (x_f, shape) = float[m]
                    .as_ref()
                    .ok_or_else(|| format!("the run did not produce `{}`", layer.layer.input))?;
                let x_q = match &quantized {
                    Some(q) => {
                        &q[m]
                            .as_ref()
                            .ok_or_else(|| {
                                format!("the run did not produce `{}`", layer.layer.input)
                            })?
                            .0
                    }
                    None => x_f,
                };
                LayerMoments::of_sample(layer, x_q, x_f, shape)
                    .map_err(|e| format!("layer `{}`: {e}", layer.name()))
            })
            .collect()
    };
    let mut totals: Vec<LayerMoments> = members.iter().map(|l| LayerMoments::empty(l)).collect();
    // A batch at a time, summed in list order: the same bits for any thread count.
    let indices: Vec<usize> = (0..count).collect();
    for batch in indices.chunks(8) {
        let loaded: Vec<LoadedSample> = batch.iter().map(|&i| load(i)).collect::<Result<_, _>>()?;
        let measured: Vec<Vec<LayerMoments>> = loaded
            .par_iter()
            .map(per_sample)
            .collect::<Result<_, _>>()?;
        for sample in measured {
            for (total, m) in totals.iter_mut().zip(&sample) {
                total.add(m);
            }
        }
    }
    Ok(totals)
}
