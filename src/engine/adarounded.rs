//! AdaRound as a build stage: a unit's layers planned ([`adaround_plan`]), each layer's result
//! a store entry ([`layer_rounding`]), the moments a wave's layers are optimized from
//! ([`wave_moments`]), and the AdaRounded model. Also the front every later stage loads a
//! unit's model through ([`model_graph`]), whichever transforms made it.
//!
//! A layer's key is made of what its result depends on: its float weights, the settings its
//! frozen encoding and the optimizer read, the model and samples its input moments are measured
//! on, and the keys of the AdaRounded layers upstream of its input, whose rounding shapes its
//! quantized input. So one more layer in `ignore_quant_ops_list` changes the keys of exactly
//! the layers downstream of it, and an activation override changes none (the runs quantize no
//! activation).
//!
//! The runs of a wave read no database state once the samples are loaded (on the query's
//! thread), so they run side by side inside [`wave_moments`], as an evaluation's samples do.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::adaround::{LayerPlan, LayerSummary, plan_layers, wave_moments as run_wave};
use super::cache::{ADAROUND_LAYERS, ADAROUND_VERSION, RUNTIME, lookup_bytes};
use super::correct::corrected_or_source;
use super::db::Db;
use super::error::{BuildError, display_path};
use super::inputs::source_file;
use super::keys::{CalibrationKey, ModelKey, SampleKey, TensorKey, Unit};
use super::model::{LoadedModel, TransformedModel, loaded, model_key, runner_dims};
use super::overrides::unit_overrides;
use super::plan::unit_plan;
use super::samples::{listed_sample, load_sample, sample_count, sample_file_digests};
use super::stored::{Reader, Writer, stable_digest};
use crate::adaround::{AdaLayer, LayerMoments, LayerResult, round_layer};
use crate::encoding::TensorEncoding;
use crate::onnx::OnnxModel;
use crate::overrides::FixedEncoding;
use crate::run::FloatRunner;
use crate::store::{Digest, KeyBuilder};

/// The model `key` names, with every transform applied: the untransformed, equalized or
/// bias-corrected model from `correct`, or the AdaRounded one from here.
pub fn model_graph<'db>(
    db: &'db dyn Db,
    key: ModelKey<'db>,
) -> &'db Result<Arc<LoadedModel>, BuildError> {
    match key.adaround_for(db) {
        None => corrected_or_source(db, key),
        Some(_) => adarounded_model(db, key),
    }
}

/// The key of the model AdaRound starts from: `key` without AdaRound.
pub fn unrounded_key<'db>(db: &'db dyn Db, key: ModelKey<'db>) -> ModelKey<'db> {
    ModelKey::new(
        db,
        key.file(db),
        key.input_dims(db).clone(),
        key.cle(db),
        key.corrected_for(db),
        None,
        key.context(db),
    )
}

/// One layer AdaRound optimizes, as its unit plans it.
#[derive(Debug, Clone)]
pub struct PlannedLayer {
    /// The layer.
    pub layer: AdaLayer,
    /// Its wave.
    pub wave: usize,
    /// The weights of the AdaRounded layers upstream of its input, in node order.
    pub upstream: Vec<String>,
    /// Its frozen weight encoding.
    pub frozen: TensorEncoding,
    /// Its float weight values.
    pub weights: Arc<[f32]>,
    /// Its store key: everything its result depends on.
    pub key: Digest,
}

// The key names everything else a planned layer holds (the weights by their digest, the
// encoding by the settings it is computed with), so equal keys are equal layers.
impl PartialEq for PlannedLayer {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.wave == other.wave && self.upstream == other.upstream
    }
}

impl Eq for PlannedLayer {}

/// What AdaRound does to one unit's model.
#[derive(Debug, Clone)]
pub struct AdaroundPlan {
    /// The layers it optimizes, in node order.
    pub layers: Vec<PlannedLayer>,
    /// How many calibration samples the moments are measured over.
    pub samples: usize,
    /// Digest of every layer's key, wave and upstream layers: the plan's identity.
    pub digest: Digest,
}

impl PartialEq for AdaroundPlan {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for AdaroundPlan {}

impl AdaroundPlan {
    /// The deepest wave (0 when there are no layers).
    pub fn last_wave(&self) -> usize {
        self.layers.iter().map(|l| l.wave).max().unwrap_or(0)
    }

    /// The weights of the layers in `wave`, in node order.
    pub fn wave(&self, wave: usize) -> Vec<String> {
        self.layers
            .iter()
            .filter(|l| l.wave == wave)
            .map(|l| l.layer.weight.to_string())
            .collect()
    }
}

/// The calibration whose samples AdaRound reads: the unit's input list on the model before
/// AdaRound.
fn adaround_calibration<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
) -> Result<CalibrationKey<'db>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let Some(list) = &plan.input_list else {
        return Err(failed(
            &plan.model.path,
            "the target has no calibration data to measure".into(),
        ));
    };
    Ok(CalibrationKey::new(
        db,
        unrounded_key(db, model_key(db, unit, plan)),
        source_file(db, list),
        false,
        None,
        unit.project(db).context(db),
    ))
}

fn failed(path: &std::path::Path, message: String) -> BuildError {
    BuildError::Model {
        path: display_path(path),
        message: format!("adaround: {message}"),
    }
}

/// Checks that every name the config gives is in the model: a layer (node or output) to ignore,
/// a parameter to override.
fn check_names(
    graph: &crate::graph::Graph,
    config: &crate::adaround::AdaroundConfig,
) -> Result<(), String> {
    for name in &config.ignore_quant_ops_list {
        let known = graph
            .nodes()
            .iter()
            .any(|n| n.name == *name || n.outputs.iter().any(|o| o.as_str() == name));
        if !known {
            return Err(format!(
                "`ignore_quant_ops_list` names `{name}`, which is no node or output of the model"
            ));
        }
    }
    for (name, _) in &config.param_bw_override_list {
        if graph.parameter(name).is_none() {
            return Err(format!(
                "`param_bw_override_list` names `{name}`, which is no parameter of the model"
            ));
        }
    }
    Ok(())
}

/// The unit's AdaRound warnings: `ignore_quant_ops_list` entries that ignore no layer.
pub fn adaround_warnings<'db>(db: &'db dyn Db, unit: Unit<'db>) -> Result<Vec<String>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let Some(quantization) = plan.target.quantization() else {
        return Ok(Vec::new());
    };
    let base_key = unrounded_key(db, model_key(db, unit, plan));
    let base = corrected_or_source(db, base_key)
        .as_ref()
        .map_err(Clone::clone)?;
    crate::adaround::ineffective_ignores(&quantization.adaround, &base.onnx, &base.graph)
        .map_err(|e| failed(&plan.model.path, e.to_string()))
}

/// The layers a unit AdaRounds, their waves and their keys. An error when the unit does not
/// AdaRound.
#[salsa::tracked(returns(ref))]
pub fn adaround_plan<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
) -> Result<Arc<AdaroundPlan>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let path = &plan.model.path;
    let (Some(quantization), Some(settings)) = (plan.target.quantization(), plan.settings()) else {
        return Err(failed(path, "the target is not quantized".into()));
    };
    let config = &quantization.adaround;
    let base_key = unrounded_key(db, model_key(db, unit, plan));
    let base = corrected_or_source(db, base_key)
        .as_ref()
        .map_err(Clone::clone)?;
    let overrides = unit_overrides(db, unit).as_ref().map_err(Clone::clone)?;
    check_names(&base.graph, config).map_err(|m| failed(path, m))?;
    let LayerPlan {
        layers,
        weights,
        encodings,
        waves,
        upstream,
    } = plan_layers(
        &base.onnx,
        &base.graph,
        &overrides.overrides,
        settings,
        config,
    )
    .map_err(|m| failed(path, m))?;
    let calibration = adaround_calibration(db, unit)?;
    let available = sample_count(db, calibration)?;
    let samples = super::adaround::sample_count(config, available).map_err(|m| failed(path, m))?;
    let mut sample_files = Vec::with_capacity(samples);
    for index in 0..samples {
        let sample = SampleKey::new(db, calibration, index);
        let line = listed_sample(db, sample)?;
        let digests: Vec<(Option<String>, Digest)> = sample_file_digests(db, sample, line)?
            .into_iter()
            .map(|(input, digest)| (input.clone(), digest))
            .collect();
        sample_files.push(digests);
    }
    let samples_digest = stable_digest(&sample_files);
    let dims_digest = stable_digest(base_key.input_dims(db));
    let optimizer = (config.num_iterations as u64, config.seed);
    let mut planned: Vec<PlannedLayer> = Vec::with_capacity(layers.len());
    for (i, layer) in layers.into_iter().enumerate() {
        // Upstream layers come first in node order, so their keys are made already.
        let upstream_keys: Vec<Digest> = upstream[i].iter().map(|&u| planned[u].key).collect();
        // The frozen encoding itself, not the settings it comes from: targets that differ
        // only in activation settings (`htp`, `htp-a16`) share every layer.
        let axis = match &encodings[i] {
            TensorEncoding::PerChannel { axis, .. } => *axis,
            _ => 0,
        };
        let frozen = (FixedEncoding::from(&encodings[i]), axis as u64);
        let key = KeyBuilder::new(ADAROUND_LAYERS)
            .u64("version", ADAROUND_VERSION)
            .str("runtime", RUNTIME)
            .digest("model", &base.content)
            .digest("input_dims", &dims_digest)
            .str("layer", layer.name())
            .digest("weight", &values_digest(&weights[i]))
            .digest("settings", &stable_digest(&(frozen, optimizer)))
            .digest("samples", &samples_digest)
            .digests("upstream", upstream_keys.iter())
            .finish();
        let upstream_weights: Vec<String> = upstream[i]
            .iter()
            .map(|&u| planned[u].layer.weight.to_string())
            .collect();
        planned.push(PlannedLayer {
            wave: waves[i],
            upstream: upstream_weights,
            frozen: encodings[i].clone(),
            weights: weights[i].as_slice().into(),
            key,
            layer,
        });
    }
    let digest = stable_digest(
        &planned
            .iter()
            .map(|l| (l.key, l.wave, &l.upstream))
            .collect::<Vec<_>>(),
    );
    Ok(Arc::new(AdaroundPlan {
        layers: planned,
        samples,
        digest,
    }))
}

fn values_digest(values: &[f32]) -> Digest {
    let mut hasher = blake3::Hasher::new();
    for value in values {
        hasher.update(&value.to_le_bytes());
    }
    Digest::from(hasher.finalize())
}

/// The projection of a unit's plan on one weight: the layer it belongs to, when AdaRound
/// optimizes it. Backdates for every layer an edit leaves alone.
#[salsa::tracked]
pub fn planned_layer<'db>(db: &'db dyn Db, weight: TensorKey<'db>) -> Option<PlannedLayer> {
    let unit = weight.unit(db);
    let plan = unit_plan(db, unit).as_ref().ok()?;
    if !plan.algorithms().adaround {
        return None;
    }
    let ada = adaround_plan(db, unit).as_ref().ok()?;
    ada.layers
        .iter()
        .find(|l| l.layer.weight.as_str() == weight.name(db))
        .cloned()
}

/// A weight's frozen encoding, when AdaRound optimizes it: the grid its chosen integers are on,
/// which its encoding must be (re-encoding the AdaRounded values would move the grid).
pub fn frozen_encoding(db: &dyn Db, weight: TensorKey<'_>) -> Option<FixedEncoding> {
    planned_layer(db, weight)
        .as_ref()
        .map(|l| FixedEncoding::from(&l.frozen))
}

/// The runner of the model AdaRound starts from, built only when a wave must be measured.
#[salsa::tracked(returns(ref), no_eq)]
pub fn unrounded_runner<'db>(
    db: &'db dyn Db,
    key: ModelKey<'db>,
) -> Result<Arc<FloatRunner>, BuildError> {
    let base = corrected_or_source(db, key)
        .as_ref()
        .map_err(Clone::clone)?;
    FloatRunner::new(&base.onnx.to_bytes(), &runner_dims(key.input_dims(db)))
        .map(Arc::new)
        .map_err(|e| BuildError::Runner {
            path: display_path(key.file(db).path(db)),
            message: e.to_string(),
        })
}

/// The input moments of the layers of one wave that the store does not have, by weight name:
/// each selected sample run once through the model AdaRound starts from and once through it
/// with every earlier wave's layers AdaRounded.
#[salsa::tracked(returns(ref), no_eq)]
pub fn wave_moments<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
    wave: usize,
) -> Result<Arc<BTreeMap<String, LayerMoments>>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let path = plan.model.path.clone();
    let ada = adaround_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let store = unit.project(db).context(db).store(db).as_ref();
    let members: Vec<&PlannedLayer> = ada
        .layers
        .iter()
        .filter(|l| l.wave == wave)
        .filter(|l| store.is_none_or(|s| !s.contains(ADAROUND_LAYERS, &l.key)))
        .collect();
    measure(db, unit, ada, &members, &path).map(Arc::new)
}

/// The moments of `members` (layers of one wave), measured as [`wave_moments`] says.
fn measure<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
    ada: &AdaroundPlan,
    members: &[&PlannedLayer],
    path: &std::path::Path,
) -> Result<BTreeMap<String, LayerMoments>, BuildError> {
    let Some(wave) = members.first().map(|m| m.wave) else {
        return Ok(BTreeMap::new());
    };
    db.unwind_if_revision_cancelled();
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let base_key = unrounded_key(db, model_key(db, unit, plan));
    let float_runner = unrounded_runner(db, base_key)
        .as_ref()
        .map_err(Clone::clone)?;
    let quantized_runner = if wave == 0 {
        None
    } else {
        let base = corrected_or_source(db, base_key)
            .as_ref()
            .map_err(Clone::clone)?;
        let mut model: OnnxModel = base.onnx.clone();
        for layer in ada.layers.iter().filter(|l| l.wave < wave) {
            let weight = layer.layer.weight.to_string();
            let rounded = layer_rounding(db, TensorKey::new(db, unit, weight.clone()))
                .as_ref()
                .map_err(Clone::clone)?;
            model
                .replace_parameter_f32(&weight, &rounded.weights)
                .map_err(|e| failed(path, e.to_string()))?;
        }
        let runner = FloatRunner::new(&model.to_bytes(), &runner_dims(base_key.input_dims(db)))
            .map_err(|e| BuildError::Runner {
                path: display_path(path),
                message: e.to_string(),
            })?;
        Some(runner)
    };
    let calibration = adaround_calibration(db, unit)?;
    let specs = float_runner.input_specs();
    // A failed load keeps its own diagnostic (the input list's, at its line).
    let mut load_error: Option<BuildError> = None;
    let layers: Vec<(&AdaLayer, &[f32])> =
        members.iter().map(|m| (&m.layer, &*m.weights)).collect();
    let measured = run_wave(
        float_runner,
        quantized_runner.as_ref(),
        ada.samples,
        &mut |index| {
            db.unwind_if_revision_cancelled();
            let sample = SampleKey::new(db, calibration, index);
            let loaded =
                listed_sample(db, sample).and_then(|line| load_sample(db, sample, line, specs));
            loaded.map_err(|e| {
                let message = e.to_string();
                load_error = Some(e);
                message
            })
        },
        &layers,
    );
    let moments = match (measured, load_error) {
        (Ok(moments), _) => moments,
        (Err(_), Some(e)) => return Err(e),
        (Err(m), None) => return Err(failed(path, m)),
    };
    Ok(members
        .iter()
        .map(|m| m.layer.weight.to_string())
        .zip(moments)
        .collect())
}

/// One layer's AdaRound result: from the store when kept, otherwise optimized from its wave's
/// moments (and stored).
#[salsa::tracked(returns(ref), no_eq)]
pub fn layer_rounding<'db>(
    db: &'db dyn Db,
    weight: TensorKey<'db>,
) -> Result<Arc<LayerResult>, BuildError> {
    let unit = weight.unit(db);
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let path = plan.model.path.clone();
    let Some(layer) = planned_layer(db, weight).clone() else {
        return Err(failed(
            &path,
            format!("`{}` is not a layer AdaRound optimizes", weight.name(db)),
        ));
    };
    let context = unit.project(db).context(db);
    let (store, log) = (context.store(db).as_ref(), context.log(db));
    if let Some(store) = store
        && let Some(result) = lookup_bytes(store, log, ADAROUND_LAYERS, &layer.key)
            .and_then(|b| decode_layer(&b, layer.weights.len()))
    {
        return Ok(Arc::new(result));
    }
    let wave = wave_moments(db, unit, layer.wave)
        .as_ref()
        .map_err(Clone::clone)?;
    let measured_alone;
    let moments = match wave.get(weight.name(db)) {
        Some(moments) => moments,
        None => {
            // The store had this layer when the wave was measured, and no longer does (removed
            // or damaged since): measure it alone.
            let ada = adaround_plan(db, unit).as_ref().map_err(Clone::clone)?;
            measured_alone = measure(db, unit, ada, &[&layer], &path)?;
            measured_alone
                .get(weight.name(db))
                .ok_or_else(|| failed(&path, "the layer was not measured".into()))?
        }
    };
    db.unwind_if_revision_cancelled();
    let quantization = plan
        .target
        .quantization()
        .ok_or_else(|| failed(&path, "the target is not quantized".into()))?;
    let result = round_layer(
        &layer.layer,
        &layer.weights,
        &layer.frozen,
        moments,
        &quantization.adaround.hyperparameters(),
    )
    .map_err(|m| failed(&path, format!("layer `{}`: {m}", layer.layer.name())))?;
    if let Some(store) = store
        && let Err(e) = store.put(ADAROUND_LAYERS, &layer.key, &encode_layer(&result))
    {
        log.with(|r| r.store_errors.push(format!("{e:#}")));
    }
    log.with(|r| {
        r.layers_optimized.push(format!(
            "{}/{}/{} {}",
            plan.pipeline,
            plan.target.name,
            plan.model.name,
            layer.layer.name()
        ))
    });
    Ok(Arc::new(result))
}

/// A layer's result as stored: the weights, then the flipped and total counts and the two
/// losses (as `f64` bits).
pub fn encode_layer(result: &LayerResult) -> Vec<u8> {
    let mut out = Vec::with_capacity(result.weights.len() * 4 + 40);
    let mut w = Writer(&mut out);
    w.count(result.weights.len());
    for &value in &result.weights {
        w.u32(value.to_bits());
    }
    w.u64(result.flipped as u64);
    w.u64(result.total as u64);
    w.f64(result.nearest_loss);
    w.f64(result.adaround_loss);
    out
}

/// Reads [`encode_layer`]'s bytes back, for a layer of `len` weights; `None` when they are not
/// exactly that.
pub fn decode_layer(bytes: &[u8], len: usize) -> Option<LayerResult> {
    let mut r = Reader(bytes);
    let n = r.count(4)?;
    if n != len {
        return None;
    }
    let weights = (0..n)
        .map(|_| r.u32().map(f32::from_bits))
        .collect::<Option<Vec<f32>>>()?;
    let result = LayerResult {
        weights,
        flipped: usize::try_from(r.u64()?).ok()?,
        total: usize::try_from(r.u64()?).ok()?,
        nearest_loss: r.f64()?,
        adaround_loss: r.f64()?,
    };
    r.0.is_empty().then_some(result)
}

/// The AdaRounded model's bytes: the model before AdaRound with every optimized layer's weights
/// replaced by its result, and the report of every transform that made it. Compared by digest,
/// so a rebuild that lands on the same weights spares everything downstream.
#[salsa::tracked(returns(ref))]
pub fn adarounded_bytes<'db>(
    db: &'db dyn Db,
    key: ModelKey<'db>,
) -> Result<Arc<TransformedModel>, BuildError> {
    let path = key.file(db).path(db).clone();
    let Some(unit) = key.adaround_for(db) else {
        return Err(failed(&path, "no target to AdaRound the model for".into()));
    };
    let base = corrected_or_source(db, unrounded_key(db, key))
        .as_ref()
        .map_err(Clone::clone)?;
    let ada = adaround_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let mut model = base.onnx.clone();
    let mut lines = base
        .transformed
        .as_ref()
        .map(|t| t.lines.clone())
        .unwrap_or_default();
    for layer in &ada.layers {
        db.unwind_if_revision_cancelled();
        let weight = layer.layer.weight.to_string();
        let result = layer_rounding(db, TensorKey::new(db, unit, weight.clone()))
            .as_ref()
            .map_err(Clone::clone)?;
        model
            .replace_parameter_f32(&weight, &result.weights)
            .map_err(|e| failed(&path, e.to_string()))?;
        lines.push(
            LayerSummary {
                layer: layer.layer.name().to_string(),
                wave: layer.wave,
                flipped: result.flipped,
                total: result.total,
                nearest_loss: result.nearest_loss,
                adaround_loss: result.adaround_loss,
            }
            .line(),
        );
    }
    Ok(Arc::new(TransformedModel::new(model.to_bytes(), lines)))
}

/// The AdaRounded model, loaded.
#[salsa::tracked(returns(ref), no_eq)]
pub fn adarounded_model<'db>(
    db: &'db dyn Db,
    key: ModelKey<'db>,
) -> Result<Arc<LoadedModel>, BuildError> {
    let rounded = adarounded_bytes(db, key).as_ref().map_err(Clone::clone)?;
    let path = key.file(db).path(db);
    let onnx =
        OnnxModel::from_bytes(&rounded.bytes, path).map_err(|e| failed(path, e.to_string()))?;
    let base = corrected_or_source(db, unrounded_key(db, key))
        .as_ref()
        .map_err(Clone::clone)?;
    let mut model =
        loaded(onnx, rounded.digest, Some(rounded.clone())).map_err(|m| failed(path, m))?;
    // AdaRound changes values only: the tensors overrides may name are the model's before it.
    if let Some(model) = Arc::get_mut(&mut model) {
        model.tensors = base.tensors.clone();
    }
    Ok(model)
}
