//! Calibration: samples → statistics → merged statistics → each tensor's statistics.
//!
//! It owns the queries from a unit's input list to the statistics its encodings read: the
//! model calibration runs (fake-quantized first when the target calibrates with quantized
//! weights), the float runner, each sample's statistics (looked up in the store by a content
//! key before the sample runs, and stored after), the merged statistics of the list, and the
//! projection on one tensor ([`tensor_statistics`]) that keeps a new sample inside a tensor's
//! range from re-encoding it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::adarounded::model_graph;
use super::cache::{MERGED_STATISTICS, RUNTIME, STATISTICS, lookup_bytes};
use super::db::Db;
use super::error::{BuildError, display_path};
use super::inputs::source_file;
use super::keys::{CalibrationKey, SampleKey, TensorKey, Unit};
use super::log::SampleRun;
use super::model::{model_key, runner_dims};
use super::overrides::unit_overrides;
use super::plan::unit_plan;
use super::samples::{
    SampleLine, key_files, listed_sample, load_sample, sample_count, sample_file_digests,
};
use super::stored::{
    decode_merged_statistics, decode_sample_statistics, encode_merged_statistics,
    encode_sample_statistics, stable_digest,
};
use crate::calib::NonFinite;
use crate::quantizer::{self, SampleStatistics, Warning, statistics_settings};
use crate::run::FloatRunner;
use crate::stats::TensorStatistics;
use crate::store::{Digest, KeyBuilder};

/// The calibration of a unit: `None` for float targets.
pub fn unit_calibration<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
) -> Result<Option<CalibrationKey<'db>>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    let (Some(settings), Some(list)) = (plan.settings(), &plan.input_list) else {
        return Ok(None);
    };
    Ok(Some(CalibrationKey::new(
        db,
        model_key(db, unit, plan),
        source_file(db, list),
        statistics_settings(settings).histogram,
        settings.calibrate_with_quantized_weights.then_some(unit),
        unit.project(db).context(db),
    )))
}

/// The model bytes calibration runs and their digest (the statistics key's model field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalibrationModel {
    /// The ONNX bytes when weights are fake-quantized; `None` runs the model as loaded (with
    /// `input_dims` applied), whose bytes are only serialized if a sample must run.
    pub rewritten: Option<Arc<[u8]>>,
    /// Identifies the bytes calibration runs: blake3 of `rewritten`, or of the model file's
    /// digest and the `input_dims` (the loaded model is a function of both).
    pub digest: Digest,
}

/// The model a calibration runs.
#[salsa::tracked(returns(ref))]
pub fn calibration_model<'db>(
    db: &'db dyn Db,
    calibration: CalibrationKey<'db>,
) -> Result<Arc<CalibrationModel>, BuildError> {
    let key = calibration.model(db);
    if key.file(db).digest(db).is_none() {
        // The model's own diagnostic (missing, unreadable).
        model_graph(db, key).as_ref().map_err(Clone::clone)?;
    }
    let rewritten = match calibration.quantized_weights(db) {
        Some(unit) => {
            let model = model_graph(db, key).as_ref().map_err(Clone::clone)?;
            let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
            let overrides = unit_overrides(db, unit).as_ref().map_err(Clone::clone)?;
            match plan.settings() {
                Some(settings) => quantizer::calibration_model(
                    &model.onnx,
                    &model.graph,
                    &overrides.overrides,
                    settings,
                )
                .map_err(|e| BuildError::Calibration(Arc::new(e)))?,
                None => None,
            }
        }
        None => None,
    };
    Ok(Arc::new(match rewritten {
        Some(rewritten) => {
            let bytes: Arc<[u8]> = rewritten.to_bytes().into();
            CalibrationModel {
                digest: Digest::of(&bytes),
                rewritten: Some(bytes),
            }
        }
        // A transformed model is named by its own bytes' digest, already at hand.
        None if key.cle(db)
            || key.corrected_for(db).is_some()
            || key.adaround_for(db).is_some() =>
        {
            CalibrationModel {
                rewritten: None,
                digest: model_graph(db, key).as_ref().map_err(Clone::clone)?.content,
            }
        }
        // Re-serializing a large model only to digest it cost more than the rest of an edit's
        // calibration lookups; the file digest and the dims name the same bytes.
        None => CalibrationModel {
            rewritten: None,
            digest: stable_digest(&(
                "loaded model: onnx file and input_dims",
                key.file(db).digest(db).unwrap_or_else(|| Digest::of(b"")),
                key.input_dims(db),
            )),
        },
    }))
}

/// The float runner of a calibration: built only when some sample misses the store (loading
/// and optimizing a model costs far more than reading statistics back).
#[salsa::tracked(returns(ref), no_eq)]
pub fn float_runner<'db>(
    db: &'db dyn Db,
    calibration: CalibrationKey<'db>,
) -> Result<Arc<FloatRunner>, BuildError> {
    let model = calibration_model(db, calibration)
        .as_ref()
        .map_err(Clone::clone)?;
    let dims = runner_dims(calibration.model(db).input_dims(db));
    let runner = match &model.rewritten {
        Some(bytes) => FloatRunner::new(bytes, &dims).map_err(|e| e.to_string()),
        None => {
            let loaded = model_graph(db, calibration.model(db))
                .as_ref()
                .map_err(Clone::clone)?;
            FloatRunner::for_model(&loaded.onnx, &dims).map_err(|e| e.to_string())
        }
    };
    runner.map(Arc::new).map_err(|message| BuildError::Runner {
        path: display_path(calibration.model(db).file(db).path(db)),
        message,
    })
}

/// The statistics of one sample: every captured activation (by name) and its statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleStats {
    /// Activation names in the runner's order.
    pub names: Arc<Vec<String>>,
    /// One entry per name.
    pub tensors: Vec<TensorStatistics>,
}

/// A sample's statistics: from the store when an entry has the same model, sample contents and
/// settings; otherwise the sample is run (and the result stored).
#[salsa::tracked(returns(ref))]
pub fn sample_statistics<'db>(
    db: &'db dyn Db,
    sample: SampleKey<'db>,
) -> Result<Arc<SampleStats>, BuildError> {
    let calibration = sample.calibration(db);
    let context = calibration.context(db);
    let line = listed_sample(db, sample)?;
    let key = sample_statistics_key(db, sample, line)?;
    let store = context.store(db);
    let log = context.log(db);
    if let Some(store) = store
        && let Some((names, tensors)) = lookup_bytes(store, log, STATISTICS, &key)
            .and_then(|bytes| decode_sample_statistics(&bytes))
    {
        return Ok(Arc::new(SampleStats {
            names: Arc::new(names),
            tensors,
        }));
    }

    db.unwind_if_revision_cancelled();
    let runner = float_runner(db, calibration)
        .as_ref()
        .map_err(Clone::clone)?;
    let loaded = load_sample(db, sample, line, runner.input_specs())?;
    let statistics = quantizer::sample_statistics(
        runner,
        &loaded,
        crate::stats::StatisticsSettings {
            histogram: calibration.histogram(db),
        },
    )
    .map_err(|e| BuildError::Calibration(Arc::new(e)))?;
    let names: Vec<String> = runner.activation_names().to_vec();
    if let Some(store) = store {
        let bytes = encode_sample_statistics(&names, &statistics.tensors);
        if let Err(e) = store.put(STATISTICS, &key, &bytes) {
            log.with(|r| r.store_errors.push(format!("{e:#}")));
        }
    }
    log.with(|r| {
        r.samples_run.push(SampleRun {
            files: line.files.iter().map(|(_, p)| display_path(p)).collect(),
        })
    });
    Ok(Arc::new(SampleStats {
        names: Arc::new(names),
        tensors: statistics.tensors,
    }))
}

/// The store key of one sample's statistics: the calibration model, the runtime, the
/// statistics settings and each input file's name and digest. Fails as the sample would: a
/// missing file is the list's diagnostic.
fn sample_statistics_key(
    db: &dyn Db,
    sample: SampleKey<'_>,
    line: &SampleLine,
) -> Result<Digest, BuildError> {
    let calibration = sample.calibration(db);
    let digests = sample_file_digests(db, sample, line)?;
    let model = calibration_model(db, calibration)
        .as_ref()
        .map_err(Clone::clone)?;
    let key = KeyBuilder::new(STATISTICS)
        .digest("model", &model.digest)
        .str("runtime", RUNTIME)
        .bool("histogram", calibration.histogram(db));
    Ok(key_files(key, &digests).finish())
}

/// The shard, of `count`, a calibration sample belongs to: the digest of its files' contents
/// (input names included), read as a little-endian `u64`, modulo `count`. Content rather than
/// list position, so adding or removing samples moves no other sample to another shard; `None`
/// when the sample cannot be read (its own diagnostic comes from [`sample_statistics`]).
pub fn sample_shard(db: &dyn Db, sample: SampleKey<'_>, count: u32) -> Option<u32> {
    let line = listed_sample(db, sample).ok()?;
    let digests = sample_file_digests(db, sample, line).ok()?;
    let digest = stable_digest(&("calibration sample shard", &digests));
    let low = u64::from_le_bytes(digest.as_bytes()[..8].try_into().ok()?);
    Some((low % u64::from(count)) as u32)
}

/// The store key of a calibration's merged statistics: its samples' keys in list order (so
/// it changes exactly when some sample's statistics would, or when samples are added, removed
/// or reordered).
#[salsa::tracked(returns(ref))]
pub fn merged_statistics_key<'db>(
    db: &'db dyn Db,
    calibration: CalibrationKey<'db>,
) -> Result<Digest, BuildError> {
    let count = sample_count(db, calibration)?;
    let mut key = KeyBuilder::new(MERGED_STATISTICS).u64("samples", count as u64);
    for index in 0..count {
        let sample = SampleKey::new(db, calibration, index);
        let line = listed_sample(db, sample)?;
        key = key.digest("sample", &sample_statistics_key(db, sample, line)?);
    }
    Ok(key.finish())
}

/// Whether a calibration's merged statistics are in the store, so that the driver need not
/// read (or run) its samples at all.
pub fn merged_statistics_stored(db: &dyn Db, calibration: CalibrationKey<'_>) -> bool {
    let Some(store) = calibration.context(db).store(db) else {
        return false;
    };
    match merged_statistics_key(db, calibration) {
        Ok(key) => store.contains(MERGED_STATISTICS, key),
        Err(_) => false,
    }
}

/// Every sample's statistics merged in list order, by activation name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedStatistics {
    /// Activation name → merged statistics.
    pub by_name: BTreeMap<String, TensorStatistics>,
    /// How many samples were merged.
    pub samples: usize,
    /// A [`Warning::NonFiniteInput`] per sample and input that held NaN or infinite values.
    pub non_finite_inputs: Vec<Warning>,
}

/// The merged statistics of a calibration. The driver computes the samples in parallel
/// before asking for this, so here they are memoized reads.
#[salsa::tracked(returns(ref))]
pub fn merged_statistics<'db>(
    db: &'db dyn Db,
    calibration: CalibrationKey<'db>,
) -> Result<Arc<MergedStatistics>, BuildError> {
    let count = sample_count(db, calibration)?;
    let key = *merged_statistics_key(db, calibration)
        .as_ref()
        .map_err(Clone::clone)?;
    let context = calibration.context(db);
    if let Some(store) = context.store(db)
        && let Some((names, tensors, non_finite_inputs)) =
            lookup_bytes(store, context.log(db), MERGED_STATISTICS, &key)
                .and_then(|bytes| decode_merged_statistics(&bytes))
    {
        return Ok(Arc::new(MergedStatistics {
            by_name: names.into_iter().zip(tensors).collect(),
            samples: count,
            non_finite_inputs,
        }));
    }
    let inputs: Vec<String> = model_graph(db, calibration.model(db))
        .as_ref()
        .map_err(Clone::clone)?
        .graph
        .inputs()
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut non_finite_inputs = Vec::new();
    let mut total = SampleStatistics {
        tensors: Vec::new(),
    };
    let mut names: Option<Arc<Vec<String>>> = None;
    for index in 0..count {
        db.unwind_if_revision_cancelled();
        let sample = SampleKey::new(db, calibration, index);
        let stats = sample_statistics(db, sample)
            .as_ref()
            .map_err(Clone::clone)?;
        if names.as_ref().is_some_and(|n| **n != *stats.names) {
            return Err(BuildError::Changed {
                path: display_path(calibration.list(db).path(db)),
            });
        }
        names.get_or_insert_with(|| stats.names.clone());
        non_finite_inputs.extend(sample_non_finite_inputs(db, sample, &inputs, stats)?);
        quantizer::merge_statistics(
            &mut total,
            &SampleStatistics {
                tensors: stats.tensors.clone(),
            },
        );
    }
    let names = names.map(|n| n.to_vec()).unwrap_or_default();
    if let Some(store) = context.store(db)
        && let Err(e) = store.put(
            MERGED_STATISTICS,
            &key,
            &encode_merged_statistics(&names, &total.tensors, &non_finite_inputs),
        )
    {
        context
            .log(db)
            .with(|r| r.store_errors.push(format!("{e:#}")));
    }
    let by_name = names.into_iter().zip(total.tensors).collect();
    Ok(Arc::new(MergedStatistics {
        by_name,
        samples: count,
        non_finite_inputs,
    }))
}

/// The warnings of one sample whose graph inputs held NaN or infinite values, read off the
/// inputs' own statistics (which count what they leave out), so a sample read back from the
/// store warns exactly as a sample just run.
fn sample_non_finite_inputs(
    db: &dyn Db,
    sample: SampleKey<'_>,
    inputs: &[String],
    stats: &SampleStats,
) -> Result<Vec<Warning>, BuildError> {
    let counts: Vec<NonFinite> = inputs
        .iter()
        .map(|input| {
            let index = stats.names.iter().position(|n| n == input);
            index.map_or(NonFinite::default(), |i| {
                let m = &stats.tensors[i].min_max;
                NonFinite {
                    nan: m.nan_count(),
                    inf: m.positive_infinity_count() + m.negative_infinity_count(),
                }
            })
        })
        .collect();
    if counts.iter().all(NonFinite::is_clean) {
        return Ok(Vec::new());
    }
    let line = listed_sample(db, sample)?;
    let files: Vec<String> = line.files.iter().map(|(_, p)| display_path(p)).collect();
    Ok(quantizer::non_finite_inputs(
        &format!("on line {} ({})", line.sample.line, files.join(" ")),
        inputs.iter().map(String::as_str),
        &counts,
    ))
}

/// The projection of the merged statistics on one activation: backdates for every tensor whose
/// statistics did not move (a new sample inside a tensor's range leaves its encoding alone).
#[salsa::tracked]
pub fn tensor_statistics<'db>(db: &'db dyn Db, tensor: TensorKey<'db>) -> Option<TensorStatistics> {
    let unit = tensor.unit(db);
    let calibration = unit_calibration(db, unit).ok()??;
    let merged = merged_statistics(db, calibration).as_ref().ok()?;
    merged.by_name.get(tensor.name(db)).cloned()
}
