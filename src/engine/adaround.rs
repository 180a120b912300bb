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
use std::sync::Arc;

use rayon::prelude::*;

use crate::adaround::{AdaLayer, AdaroundConfig, LayerMoments, ada_layers, round_layer};
use crate::calib::{InputList, LoadedSample};
use crate::encoding::TensorEncoding;
use crate::graph::{Graph, Role};
use crate::onnx::OnnxModel;
use crate::overrides::{FixedEncoding, Override, Overrides};
use crate::quantizer::{self, QuantizerSettings};
use crate::run::FloatRunner;
use ndarray::ArrayD;

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
        config
            .ignore_quant_ops_list
            .iter()
            .any(|n| crate::adaround::names_layer(n, layer, graph))
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
    let load = |i: usize| {
        list.load(&samples[i], float_runner.input_specs())
            .map_err(|e| e.to_string())
    };
    let mut parts = Parts::plan(&graph, &layers, &wave_of, &float_runner, samples.len());
    if let Some(parts) = parts.as_mut() {
        parts.start(model, &float_runner, &load)?;
    }
    let mut current = model.clone();
    let mut summaries: Vec<Option<LayerSummary>> = vec![None; layers.len()];
    let hyper = config.hyperparameters();
    let total = layers.len();
    let mut done = 0;
    for wave in 0..=last_wave {
        let members: Vec<usize> = (0..layers.len()).filter(|&i| wave_of[i] == wave).collect();
        let member_layers: Vec<(&AdaLayer, &[f32])> = members
            .iter()
            .map(|&i| (&layers[i], weights[i].as_slice()))
            .collect();
        let moments = match parts.as_ref() {
            Some(parts) => parts.moments(&member_layers)?,
            None if members.is_empty() => Vec::new(),
            None => {
                let quantized_runner = if wave == 0 {
                    None
                } else {
                    Some(
                        FloatRunner::new(&current.to_bytes(), runner_dims)
                            .map_err(|e| e.to_string())?,
                    )
                };
                wave_moments(
                    &float_runner,
                    quantized_runner.as_ref(),
                    samples.len(),
                    &mut |i| load(i),
                    &member_layers,
                )?
            }
        };
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
        if let Some(parts) = parts.as_mut() {
            parts.advance(wave, model, &current)?;
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

/// Peak bytes of the values a parted run keeps between parts, over all samples, above which
/// AdaRound runs the whole model once per wave instead (slower, but holding one sample's
/// values at a time per thread).
const PARTS_MEMORY_BUDGET: usize = 1 << 30;

/// One sample's values kept between parts, by name; a value equal in both forms is shared.
type Values = HashMap<String, Arc<ArrayD<f32>>>;

/// The model cut into parts at AdaRound's waves, run a part at a time over every sample.
///
/// A node's stage is the latest wave of the AdaRound layers its output depends on (a layer's
/// own wave for the layer), or none. Part `p` holds the nodes of stage `p − 1` (part 0: those
/// that no AdaRound layer reaches), so once the layers of waves `< p` are rounded, part `p`'s
/// values are final, and a layer of wave `w` reads a value of part `w`. Running part `w + 1`
/// after wave `w` is optimized, on the values the earlier parts left, computes every value
/// once: the whole model runs about once per sample in the float and once in the rounded form,
/// instead of twice per wave. The values are the same as a whole run's up to how the runtime
/// fuses operations across a cut.
struct Parts {
    /// Per part, the node positions, in graph order.
    nodes: Vec<Vec<usize>>,
    /// Per part, the values it reads from earlier parts (or the graph inputs).
    inputs: Vec<Vec<String>>,
    /// Per part, the values it produces that a later part reads.
    outputs: Vec<Vec<String>>,
    /// Per value kept between parts, the last part that reads it.
    last_reader: HashMap<String, usize>,
    /// Samples run.
    samples: usize,
    /// Per sample, the values so far: float model, then rounded model.
    float: Vec<Values>,
    rounded: Vec<Values>,
}

impl Parts {
    /// Cuts `graph` at the waves of `layers`; `None` when a value crossing a cut is not a float
    /// activation of fixed shape (the runtime's parts read float inputs only), or when
    /// `samples` samples' values would exceed [`PARTS_MEMORY_BUDGET`].
    fn plan(
        graph: &Graph,
        layers: &[AdaLayer],
        wave_of: &[usize],
        runner: &FloatRunner,
        samples: usize,
    ) -> Option<Parts> {
        let layer_wave: HashMap<&str, usize> = layers
            .iter()
            .zip(wave_of)
            .map(|(l, &w)| (l.name(), w))
            .collect();
        let last_wave = wave_of.iter().copied().max()?;
        let count = last_wave + 2;
        // Per value: the part whose nodes produce it (graph inputs are in the samples).
        let mut produced: HashMap<&str, usize> = HashMap::new();
        let mut nodes = vec![Vec::new(); count];
        let mut inputs: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); count];
        let mut outputs: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); count];
        let mut last_reader: HashMap<String, usize> = HashMap::new();
        for node in graph.nodes() {
            // Every part holds the `Constant` nodes it reads (`OnnxModel::segment`).
            if node.is_constant() {
                continue;
            }
            let activations: Vec<&str> = node
                .inputs
                .iter()
                .flatten()
                .map(|t| t.as_str())
                .filter(|t| graph.parameter(t).is_none())
                .collect();
            let part = match node
                .outputs
                .first()
                .and_then(|o| layer_wave.get(o.as_str()))
            {
                Some(&wave) => wave + 1,
                None => activations
                    .iter()
                    .filter_map(|t| produced.get(t).copied())
                    .max()
                    .unwrap_or(0),
            };
            nodes[part].push(node.id.0);
            for t in activations {
                let from = produced.get(t).copied();
                if from != Some(part) {
                    inputs[part].insert(t);
                    if let Some(from) = from {
                        outputs[from].insert(t);
                    }
                    let last = last_reader.entry(t.to_string()).or_insert(part);
                    *last = (*last).max(part);
                }
            }
            for output in &node.outputs {
                produced.insert(output.as_str(), part);
            }
        }
        let inputs: Vec<Vec<String>> = inputs
            .into_iter()
            .map(|i| i.into_iter().map(str::to_string).collect())
            .collect();
        // Every value crossing a cut must be a float activation the full model captures.
        let shapes: HashMap<&str, &Vec<usize>> = runner
            .activation_names()
            .iter()
            .map(|n| n.as_str())
            .zip(runner.activation_shapes())
            .collect();
        let mut peak = 0usize;
        let mut live: BTreeMap<&str, usize> = BTreeMap::new();
        for (part, read) in inputs.iter().enumerate() {
            for t in read {
                let shape = shapes.get(t.as_str())?;
                live.insert(t.as_str(), shape.iter().product::<usize>() * 4);
            }
            peak = peak.max(live.values().sum());
            live.retain(|t, _| last_reader.get(*t).is_some_and(|&r| r > part));
        }
        // Float and rounded values of every sample.
        if peak.saturating_mul(2).saturating_mul(samples) > PARTS_MEMORY_BUDGET {
            return None;
        }
        Some(Parts {
            nodes,
            inputs,
            outputs: outputs
                .into_iter()
                .map(|o| o.into_iter().map(str::to_string).collect())
                .collect(),
            last_reader,
            samples,
            float: Vec::new(),
            rounded: Vec::new(),
        })
    }

    /// Loads every sample and runs part 0, which no rounding reaches: its values are the
    /// float model's in both forms.
    fn start(
        &mut self,
        model: &OnnxModel,
        runner: &FloatRunner,
        load: &(dyn Fn(usize) -> Result<LoadedSample, String> + Sync),
    ) -> Result<(), String> {
        let names: Vec<&str> = runner
            .input_specs()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        // Loaded on this thread, in list order, as `wave_moments` does.
        let mut states = Vec::with_capacity(self.samples);
        for i in 0..self.samples {
            let loaded = load(i)?;
            states.push(
                names
                    .iter()
                    .map(|n| n.to_string())
                    .zip(loaded.tensors.into_iter().map(Arc::new))
                    .collect::<HashMap<_, _>>(),
            );
        }
        self.float = states;
        self.float = Self::run_part(
            &self.nodes[0],
            &self.inputs[0],
            &self.outputs[0],
            model,
            std::mem::take(&mut self.float),
        )?;
        self.forget(0);
        // Equal in both forms: shared, not copied.
        self.rounded = self.float.clone();
        Ok(())
    }

    /// Runs one part's nodes of `model` on every sample's values (side by side), adding the
    /// values later parts read.
    fn run_part(
        nodes: &[usize],
        inputs: &[String],
        outputs: &[String],
        model: &OnnxModel,
        mut states: Vec<Values>,
    ) -> Result<Vec<Values>, String> {
        if outputs.is_empty() {
            return Ok(states);
        }
        let Some(first) = states.first() else {
            return Ok(states);
        };
        let input_dims: Vec<(&str, &[usize])> = inputs
            .iter()
            .map(|name| {
                first
                    .get(name)
                    .map(|value| (name.as_str(), value.shape()))
                    .ok_or_else(|| format!("no value `{name}` before its part"))
            })
            .collect::<Result<_, _>>()?;
        let output_names: Vec<&str> = outputs.iter().map(String::as_str).collect();
        let part = model
            .segment(nodes, &input_dims, &output_names)
            .map_err(|e| e.to_string())?;
        let runner = FloatRunner::new(&part.to_bytes(), &[]).map_err(|e| e.to_string())?;
        let order: Vec<String> = runner
            .input_specs()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let produced: Vec<Vec<ArrayD<f32>>> = states
            .par_iter()
            .map(|state| {
                let feed: Vec<ArrayD<f32>> = order
                    .iter()
                    .map(|name| {
                        state
                            .get(name)
                            .map(|value| value.as_ref().clone())
                            .ok_or_else(|| format!("no value `{name}` before its part"))
                    })
                    .collect::<Result<_, _>>()?;
                runner.run(&feed, |_, _, _| {}).map_err(|e| e.to_string())
            })
            .collect::<Result<_, String>>()?;
        for (state, values) in states.iter_mut().zip(produced) {
            for (name, value) in runner.output_names().iter().zip(values) {
                state.insert(name.clone(), Arc::new(value));
            }
        }
        Ok(states)
    }

    /// Drops the values no part after `part` reads.
    fn forget(&mut self, part: usize) {
        let last = &self.last_reader;
        for state in self.float.iter_mut().chain(self.rounded.iter_mut()) {
            state.retain(|name, _| last.get(name).is_some_and(|&r| r > part));
        }
    }

    /// The moments of `members` (layers of the wave whose inputs the parts so far computed),
    /// summed over the samples in list order.
    fn moments(&self, members: &[(&AdaLayer, &[f32])]) -> Result<Vec<LayerMoments>, String> {
        let per_sample: Vec<Vec<LayerMoments>> = self
            .float
            .par_iter()
            .zip(self.rounded.par_iter())
            .map(|(float, rounded)| {
                members
                    .iter()
                    .map(|&(layer, weights)| {
                        let name = layer.layer.input.as_str();
                        let missing = || format!("no value `{name}` for layer `{}`", layer.name());
                        let x_f = float.get(name).ok_or_else(missing)?;
                        let x_q = rounded.get(name).ok_or_else(missing)?;
                        let (x_f, x_q) = (x_f.as_standard_layout(), x_q.as_standard_layout());
                        LayerMoments::of_sample(
                            layer,
                            weights,
                            x_q.as_slice().unwrap_or_default(),
                            x_f.as_slice().unwrap_or_default(),
                            x_f.shape(),
                        )
                        .map_err(|e| format!("layer `{}`: {e}", layer.name()))
                    })
                    .collect()
            })
            .collect::<Result<_, String>>()?;
        let mut totals: Vec<LayerMoments> =
            members.iter().map(|l| LayerMoments::empty(l.0)).collect();
        for sample in per_sample {
            for (total, m) in totals.iter_mut().zip(&sample) {
                total.add(m);
            }
        }
        Ok(totals)
    }

    /// After wave `wave` is rounded: runs part `wave + 1` in the float `model` and in `rounded`.
    fn advance(
        &mut self,
        wave: usize,
        model: &OnnxModel,
        rounded: &OnnxModel,
    ) -> Result<(), String> {
        let part = wave + 1;
        if part >= self.nodes.len() {
            return Ok(());
        }
        let (nodes, inputs, outputs) = (&self.nodes[part], &self.inputs[part], &self.outputs[part]);
        self.float = Self::run_part(
            nodes,
            inputs,
            outputs,
            model,
            std::mem::take(&mut self.float),
        )?;
        self.rounded = Self::run_part(
            nodes,
            inputs,
            outputs,
            rounded,
            std::mem::take(&mut self.rounded),
        )?;
        self.forget(part);
        Ok(())
    }
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
    members: &[(&AdaLayer, &[f32])],
) -> Result<Vec<LayerMoments>, String> {
    let wanted: HashMap<&str, Vec<usize>> =
        members
            .iter()
            .enumerate()
            .fold(HashMap::new(), |mut map, (m, (layer, _))| {
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
            .map(|(m, &(layer, weights))| {
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
                LayerMoments::of_sample(layer, weights, x_q, x_f, shape)
                    .map_err(|e| format!("layer `{}`: {e}", layer.name()))
            })
            .collect()
    };
    let mut totals: Vec<LayerMoments> = members.iter().map(|l| LayerMoments::empty(l.0)).collect();
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
