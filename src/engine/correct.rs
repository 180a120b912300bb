//! Bias correction, the transform that needs calibration data: the mean input patch of every
//! layer, measured per sample on the model before correction, and the corrected model built
//! from those means and the target's weight encodings; [`corrected_or_source`], the model a key
//! names with every transform but AdaRound applied.

use std::sync::Arc;

use super::cache::{INPUT_MEANS, RUNTIME, TRANSFORMED_MODELS, lookup_bytes};
use super::db::Db;
use super::error::{BuildError, display_path};
use super::inputs::source_file;
use super::keys::{CalibrationKey, ModelKey, SampleKey};
use super::log::SampleRun;
use super::model::{
    LoadedModel, TRANSFORM_VERSION, TransformedModel, loaded, runner_dims, source_model,
    uncorrected_key,
};
use super::overrides::unit_overrides;
use super::plan::unit_plan;
use super::samples::{key_files, listed_sample, load_sample, sample_count, sample_file_digests};
use super::stored::{
    decode_input_means, decode_transformed_model, encode_input_means, encode_transformed_model,
    stable_digest,
};
use crate::graph::TensorName;
use crate::onnx::OnnxModel;
use crate::quantizer;
use crate::run::FloatRunner;
use crate::store::{Digest, KeyBuilder};
use crate::transform::{bias_layers, channel_means, correct_biases};

/// The model `key` names, with every transform but AdaRound applied: the untransformed or
/// equalized model from `model`, or the bias-corrected one from here.
pub fn corrected_or_source<'db>(
    db: &'db dyn Db,
    key: ModelKey<'db>,
) -> &'db Result<Arc<LoadedModel>, BuildError> {
    match key.corrected_for(db) {
        None => source_model(db, key),
        Some(_) => corrected_model(db, key),
    }
}

/// The calibration bias correction measures: the unit's input list run through its model
/// before correction. `None` when the key is not bias-corrected or the target has no
/// calibration list.
pub fn means_calibration<'db>(
    db: &'db dyn Db,
    key: ModelKey<'db>,
) -> Result<Option<CalibrationKey<'db>>, BuildError> {
    let Some(unit) = key.corrected_for(db) else {
        return Ok(None);
    };
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let Some(list) = &plan.input_list else {
        return Ok(None);
    };
    Ok(Some(CalibrationKey::new(
        db,
        uncorrected_key(db, key),
        source_file(db, list),
        false,
        None,
        key.context(db),
    )))
}

/// One sample's mean input patch of every correctable layer, by the layer's output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleMeans {
    /// Per layer: its output tensor and the sums `BiasLayer::accumulate` left.
    pub layers: Vec<(String, Vec<f64>)>,
}

/// The runner bias correction measures with: the model before correction, built only when a
/// sample misses the store.
#[salsa::tracked(returns(ref), no_eq)]
pub fn means_runner<'db>(
    db: &'db dyn Db,
    model: ModelKey<'db>,
) -> Result<Arc<FloatRunner>, BuildError> {
    let loaded = source_model(db, model).as_ref().map_err(Clone::clone)?;
    FloatRunner::for_model(&loaded.onnx, &runner_dims(model.input_dims(db)))
        .map(Arc::new)
        .map_err(|e| BuildError::Runner {
            path: display_path(model.file(db).path(db)),
            message: e.to_string(),
        })
}

/// The store key of one sample's means: the measured model, the runtime and the sample's files.
fn sample_means_key(db: &dyn Db, sample: SampleKey<'_>) -> Result<Digest, BuildError> {
    let calibration = sample.calibration(db);
    let line = listed_sample(db, sample)?;
    let digests = sample_file_digests(db, sample, line)?;
    let model = source_model(db, calibration.model(db))
        .as_ref()
        .map_err(Clone::clone)?;
    let key = KeyBuilder::new(INPUT_MEANS)
        .u64("version", TRANSFORM_VERSION)
        .digest("model", &model.content)
        .str("runtime", RUNTIME);
    Ok(key_files(key, &digests).finish())
}

/// A sample's means: from the store when kept, otherwise the sample is run through the model
/// before correction and every layer's input is averaged into its patch (and stored).
#[salsa::tracked(returns(ref))]
pub fn sample_input_means<'db>(
    db: &'db dyn Db,
    sample: SampleKey<'db>,
) -> Result<Arc<SampleMeans>, BuildError> {
    let calibration = sample.calibration(db);
    let context = calibration.context(db);
    let (store, log) = (context.store(db).as_ref(), context.log(db));
    let key = sample_means_key(db, sample)?;
    if let Some(store) = store
        && let Some(layers) =
            lookup_bytes(store, log, INPUT_MEANS, &key).and_then(|b| decode_input_means(&b))
    {
        return Ok(Arc::new(SampleMeans { layers }));
    }
    db.unwind_if_revision_cancelled();
    let model = source_model(db, calibration.model(db))
        .as_ref()
        .map_err(Clone::clone)?;
    let failed = |message: String| BuildError::Model {
        path: display_path(calibration.model(db).file(db).path(db)),
        message: format!("bias correction: {message}"),
    };
    let layers = bias_layers(&model.onnx).map_err(|e| failed(e.to_string()))?;
    let runner = means_runner(db, calibration.model(db))
        .as_ref()
        .map_err(Clone::clone)?;
    let line = listed_sample(db, sample)?;
    let loaded = load_sample(db, sample, line, runner.input_specs())?;
    let mut sums: Vec<Vec<f64>> = layers.iter().map(|l| vec![0.0; l.patch_len()]).collect();
    let mut problem = None;
    let names = runner.activation_names();
    runner
        .run(&loaded.tensors, |index, data, shape| {
            for (layer, sums) in layers.iter().zip(&mut sums) {
                if layer.input.as_str() == names[index]
                    && let Err(e) = layer.accumulate(data, shape, sums)
                {
                    problem.get_or_insert(e);
                }
            }
        })
        .map_err(|e| failed(format!("sample on line {}: {e}", line.sample.line)))?;
    if let Some(problem) = problem {
        return Err(failed(problem));
    }
    let layers: Vec<(String, Vec<f64>)> = layers
        .iter()
        .map(|l| l.output.to_string())
        .zip(sums)
        .collect();
    if let Some(store) = store
        && let Err(e) = store.put(INPUT_MEANS, &key, &encode_input_means(&layers))
    {
        log.with(|r| r.store_errors.push(format!("{e:#}")));
    }
    log.with(|r| {
        r.samples_run.push(SampleRun {
            files: line.files.iter().map(|(_, p)| display_path(p)).collect(),
        })
    });
    Ok(Arc::new(SampleMeans { layers }))
}

/// The bias-corrected model's bytes: read from the store when kept, otherwise computed from the
/// means of every sample and the unit's weight encodings. Compared by digest, so an override
/// edit that leaves every weight encoding alone spares everything downstream.
#[salsa::tracked(returns(ref))]
pub fn corrected_bytes<'db>(
    db: &'db dyn Db,
    key: ModelKey<'db>,
) -> Result<Arc<TransformedModel>, BuildError> {
    let path = display_path(key.file(db).path(db));
    let failed = |message: String| BuildError::Model {
        path: path.clone(),
        message: format!("bias correction: {message}"),
    };
    let Some(unit) = key.corrected_for(db) else {
        return Err(failed("no target to correct the model for".into()));
    };
    let base_key = uncorrected_key(db, key);
    let base = source_model(db, base_key).as_ref().map_err(Clone::clone)?;
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let (Some(settings), Some(calibration)) = (plan.settings(), means_calibration(db, key)?) else {
        return Err(failed(
            "the target has no calibration data to measure".into(),
        ));
    };
    let overrides = unit_overrides(db, unit).as_ref().map_err(Clone::clone)?;
    let count = sample_count(db, calibration)?;
    let mut sample_keys = Vec::with_capacity(count);
    for index in 0..count {
        sample_keys.push(sample_means_key(
            db,
            SampleKey::new(db, calibration, index),
        )?);
    }
    let store_key = KeyBuilder::new(TRANSFORMED_MODELS)
        .str("transform", "bias_correction")
        .u64("version", TRANSFORM_VERSION)
        .str("runtime", RUNTIME)
        .digest("model", &base.content)
        .digest("inputs", &stable_digest(&sample_keys))
        .digest(
            "settings",
            &stable_digest(&(settings, &overrides.overrides)),
        )
        .finish();
    let context = key.context(db);
    let (store, log) = (context.store(db).as_ref(), context.log(db));
    if let Some(store) = store
        && let Some((lines, bytes)) = lookup_bytes(store, log, TRANSFORMED_MODELS, &store_key)
            .and_then(|b| decode_transformed_model(&b))
    {
        return Ok(Arc::new(TransformedModel::new(bytes, lines)));
    }
    if count == 0 {
        return Err(failed("the calibration list has no samples".into()));
    }
    let mut merged: Vec<(TensorName, Vec<f64>)> = Vec::new();
    for index in 0..count {
        db.unwind_if_revision_cancelled();
        let sample = sample_input_means(db, SampleKey::new(db, calibration, index))
            .as_ref()
            .map_err(Clone::clone)?;
        if merged.is_empty() {
            merged = sample
                .layers
                .iter()
                .map(|(name, sums)| (TensorName::from(name.as_str()), sums.clone()))
                .collect();
        } else {
            for ((_, total), (_, sums)) in merged.iter_mut().zip(&sample.layers) {
                for (t, s) in total.iter_mut().zip(sums) {
                    *t += s;
                }
            }
        }
    }
    for (_, total) in &mut merged {
        for t in total.iter_mut() {
            *t /= count as f64;
        }
    }
    let quantized =
        quantizer::fake_quantized_weights(&base.onnx, &base.graph, &overrides.overrides, settings)
            .map_err(|e| BuildError::Calibration(Arc::new(e)))?;
    let means =
        channel_means(&base.onnx, &quantized, &merged).map_err(|e| failed(e.to_string()))?;
    let (corrected, report) =
        correct_biases(&base.onnx, &means).map_err(|e| failed(e.to_string()))?;
    let mut lines = base
        .transformed
        .as_ref()
        .map(|t| t.lines.clone())
        .unwrap_or_default();
    lines.extend(report.lines());
    let transformed = TransformedModel::new(corrected.to_bytes(), lines);
    if let Some(store) = store
        && let Err(e) = store.put(
            TRANSFORMED_MODELS,
            &store_key,
            &encode_transformed_model(&transformed.lines, &transformed.bytes),
        )
    {
        log.with(|r| r.store_errors.push(format!("{e:#}")));
    }
    log.with(|r| r.transforms_run.push(format!("bias_correction {path}")));
    Ok(Arc::new(transformed))
}

/// The bias-corrected model, loaded.
#[salsa::tracked(returns(ref), no_eq)]
pub fn corrected_model<'db>(
    db: &'db dyn Db,
    key: ModelKey<'db>,
) -> Result<Arc<LoadedModel>, BuildError> {
    let corrected = corrected_bytes(db, key).as_ref().map_err(Clone::clone)?;
    let path = key.file(db).path(db);
    let failed = |message: String| BuildError::Model {
        path: display_path(path),
        message,
    };
    let onnx = OnnxModel::from_bytes(&corrected.bytes, path).map_err(|e| failed(e.to_string()))?;
    loaded(onnx, corrected.digest, Some(corrected.clone())).map_err(failed)
}
