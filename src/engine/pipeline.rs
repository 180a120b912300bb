//! The build driver: from manifests to output files, one build at a time.
//!
//! It owns the order of a build: resolve every manifest, check the requested targets and
//! models, run the calibration samples in parallel (rayon over database clones — never inside
//! a query), then ask each unit for its artifacts and write the files that changed, atomically.
//! It also counts what was computed versus reused, and keeps the build records `--explain`
//! compares against. It must not print: progress goes to a callback and the result is a value
//! the CLI renders.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rayon::ThreadPool;
use rayon::prelude::*;

use super::adarounded::{adaround_plan, layer_rounding, model_graph, planned_layer, wave_moments};
use super::artifacts::{TRANSFORMED_MODEL_FILES, unit_artifacts};
use super::calibrate::{
    merged_statistics, merged_statistics_stored, sample_shard, sample_statistics, unit_calibration,
};
use super::correct::{means_calibration, sample_input_means};
use super::db::Database;
use super::encode::unit_encodings;
use super::error::{BuildError, display_path};
use super::fresh::{
    distinct_stores, fresh_unit, load_stamps, record_and_explain, save_stamps, save_unit_state,
    unit_inputs,
};
use super::inputs::{prefetch, source_file};
use super::keys::{CalibrationKey, ModelKey, Project, SampleKey, TensorKey, Unit};
use super::log::{WorkLog, WorkRecord};
use super::model::{model_key, uncorrected_key};
use super::outcome::{
    BuildCounts, BuildOptions, BuildReport, Progress, ProjectSpec, Shard, UnitDone, UnitOutcome,
};
use super::plan::{pipeline, plan_of, unit_eval_set};
use super::precision::FLOAT_MODEL_FILES;
use super::samples::{input_list, sample_count};
use crate::manifest::ResolvedPipeline;
use crate::store::Digest;

/// The progress callback of a build.
type ProgressFn<'a> = &'a (dyn Fn(Progress) + Sync);

/// Builds `projects` and writes their outputs. Runs on any database handle (the main one for
/// `quant build`, a [`super::Build`] worker's clone for `quant watch`); a cancellation unwinds
/// out of it and leaves nothing half-written.
///
/// The phases, in order: resolve the manifests; choose the units; read every input file side by
/// side; find the units left fresh by their last build; run the calibration samples the others
/// need; load their models and merged statistics side by side; build the units; count the work.
pub fn build(
    db: &Database,
    projects: &[ProjectSpec],
    options: &BuildOptions,
    progress: ProgressFn<'_>,
) -> BuildReport {
    let started = Instant::now();
    let logs = distinct_logs(db, projects);
    for log in &logs {
        // Whatever a cancelled build left behind is not this build's work.
        drop(log.take());
    }
    let stores = distinct_stores(db, projects);
    load_stamps(db, &stores);
    let mut report = BuildReport::default();

    let resolved = resolve(db, projects, &mut report);
    report.unknown = unknown_names(&resolved, options, report.manifest_errors.is_empty());
    if !report.unknown.is_empty() {
        report.wall_ms = started.elapsed().as_millis();
        return report;
    }
    let units = select_units(db, &resolved, options);
    prefetch_inputs(db, &units);
    // Units whose inputs and output files are exactly those of their last build are done.
    let fresh: Vec<Option<UnitDone>> = units.iter().map(|u| fresh_unit(db, *u)).collect();
    let pool = options.jobs.and_then(|jobs| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(jobs.max(1))
            .build()
            .ok()
    });
    measure_for_bias_correction(db, &units, &fresh, pool.as_ref());
    adaround(db, &units, &fresh, pool.as_ref(), progress);
    let mut sample_errors = Vec::new();
    let samples_total = calibrate(
        db,
        &units,
        &fresh,
        pool.as_ref(),
        progress,
        options.shard.map(|shard| (shard, &mut sample_errors)),
    );
    if options.shard.is_some() {
        // A shard's product is its samples' statistics in the store (and so on the remote
        // cache); the build that merges them writes the outputs.
        let work = drain_logs(&logs);
        // No unit asks for the statistics, so the samples' own diagnostics are reported here.
        report.manifest_errors.extend(sample_errors);
        report.counts = count(&report, &work, samples_total, 0);
        report.corruptions.extend(work.corruptions);
        report.store_errors.extend(work.store_errors);
        save_stamps(db, &stores);
        report.wall_ms = started.elapsed().as_millis();
        return report;
    }
    warm_stale_units(db, &units, &fresh, pool.as_ref());
    let outcomes = build_units(db, &units, fresh, pool.as_ref(), progress);
    let tensors_total = units
        .iter()
        .zip(&outcomes)
        .filter_map(|(unit, outcome)| {
            let done = outcome.result.as_ref().ok()?;
            let plan = plan_of(db, *unit).ok()?;
            plan.settings()
                .is_some()
                .then_some(done.encodings.computed_tensors)
        })
        .sum();
    report.units = outcomes;

    let work = drain_logs(&logs);
    attach_work(&mut report, &work);
    attach_samples(db, &units, &mut report, &work);
    report.counts = count(&report, &work, samples_total, tensors_total);
    report.corruptions.extend(work.corruptions);
    report.store_errors.extend(work.store_errors);
    save_stamps(db, &stores);
    report.wall_ms = started.elapsed().as_millis();
    report
}

/// Runs `work` on the build's pool when `--jobs` made one, on the global pool otherwise.
fn on_pool<R: Send>(
    db: &Database,
    pool: Option<&ThreadPool>,
    work: impl FnOnce(&Database) -> R + Send,
) -> R {
    match pool {
        Some(pool) => {
            let clone = db.clone();
            pool.install(move || work(&clone))
        }
        None => work(db),
    }
}

/// Every manifest resolved; those that cannot be are the report's manifest errors.
fn resolve<'db>(
    db: &'db Database,
    projects: &[ProjectSpec],
    report: &mut BuildReport,
) -> Vec<(Project<'db>, Arc<ResolvedPipeline>)> {
    let mut resolved = Vec::new();
    for spec in projects {
        let project = Project::new(
            db,
            source_file(db, &spec.manifest),
            spec.shown_as.clone(),
            spec.context,
        );
        match pipeline(db, project) {
            Ok(pipeline) => resolved.push((project, pipeline.clone())),
            Err(e) => report.manifest_errors.push(e.clone()),
        }
    }
    resolved
}

/// The units the options select, in manifest, target, model order.
fn select_units<'db>(
    db: &'db Database,
    resolved: &[(Project<'db>, Arc<ResolvedPipeline>)],
    options: &BuildOptions,
) -> Vec<Unit<'db>> {
    resolved
        .iter()
        .flat_map(|(project, pipeline)| {
            pipeline
                .targets
                .values()
                .filter(|t| options.targets.is_empty() || options.targets.contains(&t.name))
                .flat_map(move |target| {
                    target
                        .models
                        .iter()
                        .filter(|m| options.models.is_empty() || options.models.contains(m))
                        .map(move |model| {
                            Unit::new(db, *project, target.name.clone(), model.clone())
                        })
                })
        })
        .collect()
}

/// Reads and digests every input file of the units before anything looks at it, in parallel
/// (a fresh process otherwise reads a model and its samples one after the other).
fn prefetch_inputs(db: &Database, units: &[Unit<'_>]) {
    let inputs: Vec<PathBuf> = units
        .iter()
        .filter_map(|unit| {
            let plan = plan_of(db, *unit).ok()?;
            let eval = unit_eval_set(db, *unit);
            unit_inputs(db, plan, eval.as_ref())
        })
        .flatten()
        .collect();
    prefetch(db, &inputs);
}

/// Runs the samples of every calibration a stale unit needs, each calibration once however
/// many targets share it, and none whose merged statistics are stored. Returns how many
/// samples the units' calibrations have in all (run or not), for the reuse count.
///
/// With a shard, only the samples [`sample_shard`] assigns to it are computed (every
/// calibration whose merged statistics are not stored yet, fresh units included: the shard
/// exists to fill the store), and their errors are collected in the vector.
fn calibrate(
    db: &Database,
    units: &[Unit<'_>],
    fresh: &[Option<UnitDone>],
    pool: Option<&ThreadPool>,
    progress: ProgressFn<'_>,
    mut shard: Option<(Shard, &mut Vec<BuildError>)>,
) -> usize {
    let mut calibrations: Vec<(CalibrationKey<'_>, Vec<Unit<'_>>, bool)> = Vec::new();
    for (unit, done) in units.iter().zip(fresh) {
        if let Ok(Some(calibration)) = unit_calibration(db, *unit) {
            let stale = done.is_none();
            match calibrations.iter_mut().find(|(c, _, _)| *c == calibration) {
                Some((_, users, any_stale)) => {
                    users.push(*unit);
                    *any_stale |= stale;
                }
                None => calibrations.push((calibration, vec![*unit], stale)),
            }
        }
    }
    let mut samples_total = 0;
    for (calibration, users, stale) in &calibrations {
        let Ok(count) = sample_count(db, *calibration) else {
            continue;
        };
        let indices: Vec<usize> = match &shard {
            Some((part, _)) => (0..count)
                .filter(|&index| {
                    let sample = SampleKey::new(db, *calibration, index);
                    // An unreadable sample is every shard's to report.
                    sample_shard(db, sample, part.count).is_none_or(|k| k == part.index)
                })
                .collect(),
            None => (0..count).collect(),
        };
        samples_total += indices.len();
        if (!stale && shard.is_none()) || merged_statistics_stored(db, *calibration) {
            continue;
        }
        let first = users[0];
        progress(Progress::Calibrating {
            pipeline: plan_of(db, first)
                .map(|p| p.pipeline.clone())
                .unwrap_or_default(),
            model: first.model(db).clone(),
            targets: users.iter().map(|u| u.target(db).clone()).collect(),
            samples: indices.len(),
        });
        let calibration = *calibration;
        on_pool(db, pool, |db| {
            indices
                .par_iter()
                .copied()
                .for_each_with(db.clone(), |db, index| {
                    let sample = SampleKey::new(&*db, calibration, index);
                    // An error is the unit's to report, when it asks for the statistics.
                    let _ = sample_statistics(&*db, sample);
                    progress(Progress::SampleDone);
                })
        });
        if let Some((_, errors)) = shard.as_mut() {
            for &index in &indices {
                let sample = SampleKey::new(db, calibration, index);
                if let Err(e) = sample_statistics(db, sample)
                    && !errors.contains(e)
                {
                    errors.push(e.clone());
                }
            }
        }
    }
    samples_total
}

/// Runs the samples bias correction measures, in parallel, for every stale unit that corrects
/// its model, each model and list once: the corrected model, which calibration then runs, needs
/// every sample's means.
fn measure_for_bias_correction(
    db: &Database,
    units: &[Unit<'_>],
    fresh: &[Option<UnitDone>],
    pool: Option<&ThreadPool>,
) {
    let mut measured: Vec<CalibrationKey<'_>> = Vec::new();
    for (unit, done) in units.iter().zip(fresh) {
        let Ok(plan) = plan_of(db, *unit) else {
            continue;
        };
        if done.is_some() || !plan.algorithms().bias_correction {
            continue;
        }
        let Ok(Some(calibration)) = means_calibration(db, model_key(db, *unit, plan)) else {
            continue;
        };
        if measured.contains(&calibration) {
            continue;
        }
        measured.push(calibration);
        let Ok(count) = sample_count(db, calibration) else {
            continue;
        };
        on_pool(db, pool, |db| {
            (0..count)
                .into_par_iter()
                .for_each_with(db.clone(), |db, index| {
                    // An error is the unit's to report, when it asks for its model.
                    let _ = sample_input_means(&*db, SampleKey::new(&*db, calibration, index));
                })
        });
    }
}

/// AdaRounds the models of every stale unit that asks for it, wave after wave, the layers of a
/// wave side by side (each reads its result from the store or optimizes it), reporting each
/// layer as it finishes. A wave's moments are measured once, before its layers, for those the
/// store does not have.
fn adaround(
    db: &Database,
    units: &[Unit<'_>],
    fresh: &[Option<UnitDone>],
    pool: Option<&ThreadPool>,
    progress: ProgressFn<'_>,
) {
    for (unit, done) in units.iter().zip(fresh) {
        let Ok(plan) = plan_of(db, *unit) else {
            continue;
        };
        if done.is_some() || !plan.algorithms().adaround {
            continue;
        }
        // An error is the unit's to report, when it asks for its model.
        let Ok(ada) = adaround_plan(db, *unit) else {
            continue;
        };
        progress(Progress::Adarounding {
            pipeline: plan.pipeline.clone(),
            target: plan.target.name.clone(),
            model: plan.model.name.clone(),
            layers: ada.layers.len(),
        });
        let unit = *unit;
        for wave in 0..=ada.last_wave() {
            let members = ada.wave(wave);
            on_pool(db, pool, |db| {
                if wave_moments(db, unit, wave).is_err() {
                    return;
                }
                members.par_iter().for_each_with(db.clone(), |db, weight| {
                    let key = TensorKey::new(&*db, unit, weight.clone());
                    let _ = layer_rounding(&*db, key);
                    let layer = planned_layer(&*db, key)
                        .as_ref()
                        .map(|l| l.layer.name().to_string())
                        .unwrap_or_else(|| weight.clone());
                    progress(Progress::LayerDone { layer });
                })
            });
        }
    }
}

/// Loads the models and merged statistics of the stale units side by side: each unit starts
/// with both, and they would otherwise load one after the other inside the first unit to ask,
/// on an edit's critical path.
fn warm_stale_units(
    db: &Database,
    units: &[Unit<'_>],
    fresh: &[Option<UnitDone>],
    pool: Option<&ThreadPool>,
) {
    let mut models: Vec<ModelKey<'_>> = Vec::new();
    let mut merged: Vec<CalibrationKey<'_>> = Vec::new();
    for (unit, done) in units.iter().zip(fresh) {
        if done.is_some() {
            continue;
        }
        if let Ok(plan) = plan_of(db, *unit) {
            let model = uncorrected_key(db, model_key(db, *unit, plan));
            if !models.contains(&model) {
                models.push(model);
            }
        }
        if let Ok(Some(calibration)) = unit_calibration(db, *unit)
            && !merged.contains(&calibration)
        {
            merged.push(calibration);
        }
    }
    on_pool(db, pool, |db| {
        let (for_models, for_merged) = (db.clone(), db.clone());
        let (models, merged) = (&models, &merged);
        rayon::join(
            move || {
                for model in models {
                    let _ = model_graph(&for_models, *model);
                }
            },
            move || {
                for calibration in merged {
                    let _ = merged_statistics(&for_merged, *calibration);
                }
            },
        );
    });
}

/// Builds (or reuses) every unit. Units are independent (their own outputs, shared queries
/// memoized once), so they build side by side; an edit that touches every target of a model
/// costs one unit's time per core.
fn build_units(
    db: &Database,
    units: &[Unit<'_>],
    fresh: Vec<Option<UnitDone>>,
    pool: Option<&ThreadPool>,
    progress: ProgressFn<'_>,
) -> Vec<UnitOutcome> {
    let jobs: Vec<(Unit<'_>, Option<UnitDone>)> = units.iter().copied().zip(fresh).collect();
    on_pool(db, pool, |db| {
        jobs.into_par_iter()
            .map_with(db.clone(), |db, (unit, done)| match done {
                Some(done) => reuse_unit(db, unit, done, progress),
                None => build_unit(db, unit, progress),
            })
            .collect()
    })
}

/// Everything the build's logs recorded, taken out of them.
fn drain_logs(logs: &[WorkLog]) -> WorkRecord {
    let work = WorkLog::default();
    for log in logs {
        work.append(log.take());
    }
    work.take()
}

/// Names in each unit's explanation the tensors it encoded, and marks the units whose
/// evaluation ran.
fn attach_work(report: &mut BuildReport, work: &WorkRecord) {
    for outcome in &mut report.units {
        let Ok(done) = &mut outcome.result else {
            continue;
        };
        let name = format!("{}/{}/{}", outcome.pipeline, outcome.target, outcome.model);
        done.evaluated = work.evaluations_run.contains(&name);
        done.explanation.tensors_encoded = work
            .tensors_encoded
            .iter()
            .filter(|t| {
                t.pipeline == outcome.pipeline
                    && t.target == outcome.target
                    && t.model == outcome.model
            })
            .map(|t| t.tensor.clone())
            .collect();
        // The log names a layer "pipeline/target/model layer"; a layer two targets share is
        // logged once, under the unit that computed it.
        let prefix = format!("{name} ");
        let mut layers: Vec<String> = work
            .layers_optimized
            .iter()
            .filter_map(|entry| entry.strip_prefix(&prefix).map(str::to_string))
            .collect();
        // Layers of one wave finish in any order; the explanation should not.
        layers.sort();
        done.explanation.layers_optimized = layers;
    }
}

/// The `--json` counts: computed from the work log, reused as the rest of the totals.
fn count(
    report: &BuildReport,
    work: &WorkRecord,
    samples_total: usize,
    tensors_total: usize,
) -> BuildCounts {
    let done = || report.units.iter().filter_map(|u| u.result.as_ref().ok());
    BuildCounts {
        samples_run: work.samples_run.len(),
        samples_reused: samples_total.saturating_sub(work.samples_run.len()),
        tensors_encoded: work.tensors_encoded.len(),
        tensors_reused: tensors_total.saturating_sub(work.tensors_encoded.len()),
        artifacts_written: done().map(|d| d.written.len()).sum(),
        artifacts_unchanged: done().map(|d| d.unchanged.len()).sum(),
        evaluations_run: work.evaluations_run.len(),
        eval_samples_run: work.eval_samples_run,
        eval_samples_reused: work.eval_samples_reused,
        transforms_run: work.transforms_run.len(),
        layers_optimized: work.layers_optimized.len(),
        layers_reused: done()
            .map(|d| d.encodings.adaround_layers)
            .sum::<usize>()
            .saturating_sub(work.layers_optimized.len()),
    }
}

/// Each context's log once (projects sharing a store share a context).
fn distinct_logs(db: &Database, projects: &[ProjectSpec]) -> Vec<WorkLog> {
    let mut logs: Vec<WorkLog> = Vec::new();
    for spec in projects {
        let log = spec.context.log(db);
        if !logs.iter().any(|l| l.same_as(log)) {
            logs.push(log.clone());
        }
    }
    logs
}

/// Requested names that no resolved manifest declares. Only checked when every manifest
/// resolved: a broken manifest may well declare the name.
fn unknown_names(
    resolved: &[(Project<'_>, Arc<ResolvedPipeline>)],
    options: &BuildOptions,
    all_resolved: bool,
) -> Vec<String> {
    if !all_resolved {
        return Vec::new();
    }
    let targets: BTreeSet<&str> = resolved
        .iter()
        .flat_map(|(_, p)| p.targets.keys().map(String::as_str))
        .collect();
    let models: BTreeSet<&str> = resolved
        .iter()
        .flat_map(|(_, p)| p.models.keys().map(String::as_str))
        .collect();
    let mut unknown = Vec::new();
    for name in &options.targets {
        if !targets.contains(name.as_str()) {
            unknown.push(format!(
                "no manifest declares target `{name}` (targets: {})",
                targets.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    for name in &options.models {
        if !models.contains(name.as_str()) {
            unknown.push(format!(
                "no manifest declares model `{name}` (models: {})",
                models.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    unknown
}

fn build_unit<'db>(db: &'db Database, unit: Unit<'db>, progress: ProgressFn<'_>) -> UnitOutcome {
    let target = unit.target(db).clone();
    let model = unit.model(db).clone();
    let plan = match plan_of(db, unit) {
        Ok(plan) => plan.clone(),
        Err(e) => {
            return UnitOutcome {
                pipeline: String::new(),
                target,
                model,
                out_dir: PathBuf::new(),
                result: Err(e.clone()),
            };
        }
    };
    progress(Progress::Encoding {
        pipeline: plan.pipeline.clone(),
        target: target.clone(),
        model: model.clone(),
    });
    let result = (|| {
        let artifacts = unit_artifacts(db, unit).as_ref().map_err(Clone::clone)?;
        let encodings = unit_encodings(db, unit)
            .as_ref()
            .map_err(Clone::clone)?
            .clone();
        let mut written = Vec::new();
        let mut unchanged = Vec::new();
        let encodings_path = plan.out_dir.join("encodings.json");
        let evaluation = artifacts.evaluation.clone();
        crate::atomic::remove_stale_temporaries(&plan.out_dir);
        let mut files: Vec<(&str, Option<&[u8]>)> = vec![
            ("encodings.json", Some(artifacts.encodings_json.as_bytes())),
            ("report.json", Some(artifacts.report_json.as_bytes())),
            ("model.qdq.onnx", artifacts.qdq_model.as_deref()),
            (
                "report.html",
                evaluation.as_ref().map(|e| e.html.as_bytes()),
            ),
        ];
        for name in TRANSFORMED_MODEL_FILES {
            let bytes = match &artifacts.transformed_model {
                Some((written, bytes)) if written == name => Some(&bytes[..]),
                _ => None,
            };
            files.push((name, bytes));
        }
        for name in FLOAT_MODEL_FILES {
            let bytes = match &artifacts.float_model {
                Some((written, bytes)) if written == name => Some(&bytes[..]),
                _ => None,
            };
            files.push((name, bytes));
        }
        for &(name, bytes) in &files {
            let path = plan.out_dir.join(name);
            let output_error = |e: io::Error| BuildError::Output {
                path: display_path(&path),
                message: e.to_string(),
            };
            let Some(bytes) = bytes else {
                // A file this unit no longer produces (the target lost `evaluate`, or became
                // float) must not outlive it: a clean build would not have it.
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(output_error(e)),
                    _ => continue,
                }
            };
            let changed = crate::atomic::write_if_changed(&path, bytes).map_err(output_error)?;
            if changed {
                progress(Progress::Wrote { path: path.clone() });
                written.push(path);
            } else {
                unchanged.push(path);
            }
        }
        let explanation = record_and_explain(db, unit, &plan, &encodings);
        let outputs = files
            .iter()
            .map(|(name, bytes)| (name.to_string(), bytes.map(Digest::of)))
            .collect();
        save_unit_state(db, unit, &plan, outputs, &encodings, evaluation.as_deref());
        Ok(UnitDone {
            encodings,
            encodings_path,
            written,
            unchanged,
            explanation,
            evaluation,
            evaluated: false,
        })
    })();
    UnitOutcome {
        pipeline: plan.pipeline.clone(),
        target,
        model,
        out_dir: plan.out_dir.clone(),
        result,
    }
}

/// A fresh unit's outcome: nothing computed or written, its build record compared as usual.
fn reuse_unit<'db>(
    db: &'db Database,
    unit: Unit<'db>,
    mut done: UnitDone,
    progress: ProgressFn<'_>,
) -> UnitOutcome {
    let (target, model) = (unit.target(db).clone(), unit.model(db).clone());
    let plan = match plan_of(db, unit) {
        Ok(plan) => plan.clone(),
        Err(_) => return build_unit(db, unit, progress),
    };
    // No `Encoding` event: nothing is encoded, and the CLI says `Fresh` for it at the end.
    done.explanation = record_and_explain(db, unit, &plan, &done.encodings);
    UnitOutcome {
        pipeline: plan.pipeline.clone(),
        target,
        model,
        out_dir: plan.out_dir.clone(),
        result: Ok(done),
    }
}

/// Attaches the samples each calibration ran to the units using it.
fn attach_samples(db: &Database, units: &[Unit<'_>], report: &mut BuildReport, work: &WorkRecord) {
    if work.samples_run.is_empty() {
        return;
    }
    // A sample belongs to a unit when its files are in that unit's input list.
    let mut lists: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    for unit in units {
        let Ok(plan) = plan_of(db, *unit) else {
            continue;
        };
        let Some(list) = &plan.input_list else {
            continue;
        };
        let Ok(parsed) = input_list(db, source_file(db, list)) else {
            continue;
        };
        let files = parsed
            .samples
            .iter()
            .flat_map(|s| s.files.iter().map(|f| display_path(&f.path)))
            .collect();
        lists.insert(
            (
                plan.pipeline.clone(),
                plan.target.name.clone(),
                plan.model.name.clone(),
            ),
            files,
        );
    }
    for outcome in &mut report.units {
        let Ok(done) = &mut outcome.result else {
            continue;
        };
        let key = (
            outcome.pipeline.clone(),
            outcome.target.clone(),
            outcome.model.clone(),
        );
        let Some(files) = lists.get(&key) else {
            continue;
        };
        done.explanation.samples_run = work
            .samples_run
            .iter()
            .filter(|s| s.files.iter().all(|f| files.contains(f)))
            .map(|s| s.files.clone())
            .collect();
    }
}
