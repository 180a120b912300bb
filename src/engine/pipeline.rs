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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use super::db::{Database, Db};
use super::evaluate::UnitEvaluation;
use super::explain::{self, BUILD_RECORD, BuildRecord, Explanation};
use super::files::{StampedDigest, source_file};
use super::queries::{
    self, BuildContext, BuildError, CalibrationKey, Project, SampleKey, Unit, UnitEncodings,
    UnitPlan, WorkRecord, display_path,
};
use super::stored::{StoredUnitState, stable_digest};
use crate::manifest::{ResolvedEval, ResolvedPipeline};
use crate::store::{Corruption, Digest, GetOutcome, KeyBuilder, Kind};

/// One manifest to build.
#[derive(Debug, Clone)]
pub struct ProjectSpec {
    /// The `quant.toml` file.
    pub manifest: PathBuf,
    /// How diagnostics name it (as the user typed it, or relative to the working directory).
    pub shown_as: String,
    /// Its store and work log (see [`BuildContext`]).
    pub context: BuildContext,
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Only these targets (all when empty).
    pub targets: Vec<String>,
    /// Only these models (all when empty).
    pub models: Vec<String>,
    /// Threads for calibration samples (`None`: all cores).
    pub jobs: Option<usize>,
}

/// What the driver is doing, for progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A calibration starts: `samples` samples of `model`, shared by `targets`.
    Calibrating {
        /// `[pipeline] name`.
        pipeline: String,
        /// The model.
        model: String,
        /// The targets that use these statistics.
        targets: Vec<String>,
        /// How many samples (run or read back from the store).
        samples: usize,
    },
    /// One more sample of the current calibration is done.
    SampleDone,
    /// A unit's encodings are being collected.
    Encoding {
        /// `[pipeline] name`.
        pipeline: String,
        /// The target.
        target: String,
        /// The model.
        model: String,
    },
    /// An output file was written (its bytes changed).
    Wrote {
        /// The file.
        path: PathBuf,
    },
}

/// Work done versus reused in one build: the `--json` counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BuildCounts {
    /// Samples run through the float model.
    pub samples_run: usize,
    /// Samples whose statistics were reused (memoized or from the store).
    pub samples_reused: usize,
    /// Tensors whose encoding was computed.
    pub tensors_encoded: usize,
    /// Tensors whose encoding was reused.
    pub tensors_reused: usize,
    /// Output files written because their bytes changed.
    pub artifacts_written: usize,
    /// Output files left alone because they already held the right bytes.
    pub artifacts_unchanged: usize,
    /// Evaluations run (the others were reused from the store or the database).
    pub evaluations_run: usize,
    /// Eval samples those evaluations ran (float model and simulation).
    pub eval_samples_run: usize,
    /// Eval samples those evaluations served from stored traces without running.
    pub eval_samples_reused: usize,
}

/// A unit built successfully.
#[derive(Debug, Clone)]
pub struct UnitDone {
    /// Its encodings (for reporting what changed between builds).
    pub encodings: Arc<UnitEncodings>,
    /// `encodings.json`.
    pub encodings_path: PathBuf,
    /// Files written.
    pub written: Vec<PathBuf>,
    /// Files already up to date.
    pub unchanged: Vec<PathBuf>,
    /// Why it rebuilt, compared with the last build's record.
    pub explanation: Explanation,
    /// Its evaluation, when the target has `evaluate`.
    pub evaluation: Option<Arc<UnitEvaluation>>,
}

/// One unit's outcome.
#[derive(Debug, Clone)]
pub struct UnitOutcome {
    /// `[pipeline] name`.
    pub pipeline: String,
    /// The target.
    pub target: String,
    /// The model.
    pub model: String,
    /// Its output folder.
    pub out_dir: PathBuf,
    /// The result.
    pub result: Result<UnitDone, BuildError>,
}

/// The result of a build.
#[derive(Debug, Clone, Default)]
pub struct BuildReport {
    /// Every unit built (or attempted), in manifest, target, model order.
    pub units: Vec<UnitOutcome>,
    /// Manifests that could not be resolved.
    pub manifest_errors: Vec<BuildError>,
    /// Requested target or model names no manifest declares (bad usage; nothing was built).
    pub unknown: Vec<String>,
    /// Work counts.
    pub counts: BuildCounts,
    /// Store entries that failed verification and were recomputed.
    pub corruptions: Vec<Corruption>,
    /// Other store failures (the build went on without the store for those entries).
    pub store_errors: Vec<String>,
    /// Wall time of the build, in milliseconds.
    pub wall_ms: u128,
}

impl BuildReport {
    /// Whether every manifest resolved and every unit built.
    pub fn succeeded(&self) -> bool {
        self.unknown.is_empty()
            && self.manifest_errors.is_empty()
            && self.units.iter().all(|u| u.result.is_ok())
    }

    /// Every error, manifests first.
    pub fn errors(&self) -> impl Iterator<Item = &BuildError> {
        self.manifest_errors
            .iter()
            .chain(self.units.iter().filter_map(|u| u.result.as_ref().err()))
    }
}

/// Builds `projects` and writes their outputs. Runs on any database handle (the main one for
/// `quant build`, a [`super::Build`] worker's clone for `quant watch`); a cancellation unwinds
/// out of it and leaves nothing half-written.
pub fn build(
    db: &Database,
    projects: &[ProjectSpec],
    options: &BuildOptions,
    progress: &(dyn Fn(Progress) + Sync),
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

    let mut resolved: Vec<(Project<'_>, Arc<ResolvedPipeline>)> = Vec::new();
    for spec in projects {
        let project = Project::new(
            db,
            source_file(db, &spec.manifest),
            spec.shown_as.clone(),
            spec.context,
        );
        match queries::pipeline(db, project) {
            Ok(pipeline) => resolved.push((project, pipeline.clone())),
            Err(e) => report.manifest_errors.push(e.clone()),
        }
    }
    report.unknown = unknown_names(&resolved, options, report.manifest_errors.is_empty());
    if !report.unknown.is_empty() {
        report.wall_ms = started.elapsed().as_millis();
        return report;
    }

    let units: Vec<Unit<'_>> = resolved
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
        .collect();

    // Every input file is read and digested before anything looks at it, in parallel (a fresh
    // process otherwise reads a model and its samples one after the other).
    let inputs: Vec<PathBuf> = units
        .iter()
        .filter_map(|unit| {
            let plan = plan_of(db, *unit).ok()?;
            let eval = super::evaluate::unit_eval_set(db, *unit);
            unit_inputs(db, plan, eval.as_ref())
        })
        .flatten()
        .collect();
    super::files::prefetch(db, &inputs);

    // Units whose inputs and output files are exactly those of their last build are done.
    let fresh: Vec<Option<UnitDone>> = units.iter().map(|u| fresh_unit(db, *u)).collect();

    // Calibrations, each once however many targets share it (and not at all when every
    // target using it is fresh).
    let mut calibrations: Vec<(CalibrationKey<'_>, Vec<Unit<'_>>, bool)> = Vec::new();
    for (unit, done) in units.iter().zip(&fresh) {
        if let Ok(Some(calibration)) = queries::unit_calibration(db, *unit) {
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
    let pool = options.jobs.and_then(|jobs| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(jobs.max(1))
            .build()
            .ok()
    });
    let mut samples_total = 0;
    for (calibration, users, stale) in &calibrations {
        let Ok(count) = queries::sample_count(db, *calibration) else {
            continue;
        };
        samples_total += count;
        if !stale || queries::merged_statistics_stored(db, *calibration) {
            continue;
        }
        let first = users[0];
        progress(Progress::Calibrating {
            pipeline: plan_of(db, first)
                .map(|p| p.pipeline.clone())
                .unwrap_or_default(),
            model: first.model(db).clone(),
            targets: users.iter().map(|u| u.target(db).clone()).collect(),
            samples: count,
        });
        let calibration = *calibration;
        let run = |db: &Database| {
            (0..count)
                .into_par_iter()
                .map_with(db.clone(), |db, index| {
                    let sample = SampleKey::new(&*db, calibration, index);
                    let ok = queries::sample_statistics(&*db, sample).is_ok();
                    progress(Progress::SampleDone);
                    ok
                })
                .collect::<Vec<bool>>()
        };
        match &pool {
            Some(pool) => {
                let clone = db.clone();
                pool.install(move || run(&clone));
            }
            None => {
                run(db);
            }
        }
    }

    // Every stale unit starts by loading its model and its merged statistics, and they would
    // load one after the other inside the first unit to ask; loading them side by side here
    // takes one of the two off an edit's critical path.
    let mut models: Vec<queries::ModelKey<'_>> = Vec::new();
    let mut merged: Vec<CalibrationKey<'_>> = Vec::new();
    for (unit, done) in units.iter().zip(&fresh) {
        if done.is_some() {
            continue;
        }
        if let Ok(plan) = plan_of(db, *unit) {
            let model = queries::model_key(db, plan);
            if !models.contains(&model) {
                models.push(model);
            }
        }
        if let Ok(Some(calibration)) = queries::unit_calibration(db, *unit)
            && !merged.contains(&calibration)
        {
            merged.push(calibration);
        }
    }
    let warm = |db: &Database| {
        let (for_models, for_merged) = (db.clone(), db.clone());
        let (models, merged) = (&models, &merged);
        rayon::join(
            move || {
                for model in models {
                    let _ = queries::model_graph(&for_models, *model);
                }
            },
            move || {
                for calibration in merged {
                    let _ = queries::merged_statistics(&for_merged, *calibration);
                }
            },
        );
    };
    match &pool {
        Some(pool) => {
            let clone = db.clone();
            pool.install(move || warm(&clone));
        }
        None => warm(db),
    }

    // Units are independent (their own outputs, shared queries memoized once), so they build
    // side by side; an edit that touches every target of a model costs one unit's time per core.
    let jobs: Vec<(Unit<'_>, Option<UnitDone>)> = units.iter().copied().zip(fresh).collect();
    let run_units = |db: &Database| -> Vec<UnitOutcome> {
        jobs.into_par_iter()
            .map_with(db.clone(), |db, (unit, done)| match done {
                Some(done) => reuse_unit(db, unit, done, progress),
                None => build_unit(db, unit, progress),
            })
            .collect()
    };
    let outcomes = match &pool {
        Some(pool) => {
            let clone = db.clone();
            pool.install(move || run_units(&clone))
        }
        None => run_units(db),
    };
    let mut tensors_total = 0;
    for (unit, outcome) in units.iter().zip(outcomes) {
        if let (Ok(done), Ok(plan)) = (&outcome.result, plan_of(db, *unit))
            && plan.settings().is_some()
        {
            tensors_total += done.encodings.computed_tensors;
        }
        report.units.push(outcome);
    }

    let mut work = WorkRecord::default();
    for log in &logs {
        let taken = log.take();
        work.samples_run.extend(taken.samples_run);
        work.tensors_encoded.extend(taken.tensors_encoded);
        work.corruptions.extend(taken.corruptions);
        work.store_errors.extend(taken.store_errors);
        work.evaluations_run.extend(taken.evaluations_run);
        work.eval_samples_run += taken.eval_samples_run;
        work.eval_samples_reused += taken.eval_samples_reused;
    }
    for outcome in &mut report.units {
        let Ok(done) = &mut outcome.result else {
            continue;
        };
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
    }
    attach_samples(db, &units, &mut report, &work);

    let written: usize = report
        .units
        .iter()
        .filter_map(|u| u.result.as_ref().ok())
        .map(|d| d.written.len())
        .sum();
    let unchanged: usize = report
        .units
        .iter()
        .filter_map(|u| u.result.as_ref().ok())
        .map(|d| d.unchanged.len())
        .sum();
    report.counts = BuildCounts {
        samples_run: work.samples_run.len(),
        samples_reused: samples_total.saturating_sub(work.samples_run.len()),
        tensors_encoded: work.tensors_encoded.len(),
        tensors_reused: tensors_total.saturating_sub(work.tensors_encoded.len()),
        artifacts_written: written,
        artifacts_unchanged: unchanged,
        evaluations_run: work.evaluations_run.len(),
        eval_samples_run: work.eval_samples_run,
        eval_samples_reused: work.eval_samples_reused,
    };
    report.corruptions.extend(work.corruptions);
    report.store_errors.extend(work.store_errors);
    save_stamps(db, &stores);
    report.wall_ms = started.elapsed().as_millis();
    report
}

/// The store kind of the stamp index: for every file a build read, its [`StampedDigest`] (size,
/// times and inode when read, and the digest of what was read). One entry per store, replaced
/// by each build. Like `unit-state` it describes this machine's files, not content: paths are
/// its very subject. A later build takes a file whose stamp is unchanged (and which had settled
/// before it was read) at its recorded digest without reading it, as git's index does; the
/// bytes are read only if something needs them, and checked against the digest then.
const FILE_STAMPS: Kind = Kind::new("file-stamps", 1);

/// Most records the index keeps: this build's, then earlier ones by path.
const MAX_STAMPS: usize = 100_000;

fn stamps_key() -> Digest {
    KeyBuilder::new(FILE_STAMPS)
        .str("index", "files read by this store's builds")
        .finish()
}

/// Each distinct store of the projects (projects sharing a store share a context).
fn distinct_stores(
    db: &Database,
    projects: &[ProjectSpec],
) -> Vec<(crate::store::Store, BuildContext)> {
    let mut stores: Vec<(crate::store::Store, BuildContext)> = Vec::new();
    for spec in projects {
        if let Some(store) = spec.context.store(db)
            && !stores.iter().any(|(s, _)| s.dir() == store.dir())
        {
            stores.push((store.clone(), spec.context));
        }
    }
    stores
}

type StampIndex = Vec<(PathBuf, StampedDigest)>;

/// Best effort: a missing or unreadable index only means files are read; a corrupt one is
/// reported like any damaged entry.
fn load_stamps(db: &Database, stores: &[(crate::store::Store, BuildContext)]) {
    for (store, context) in stores {
        match store.get_json::<StampIndex>(FILE_STAMPS, &stamps_key()) {
            Ok(GetOutcome::Hit(records)) => db.files().add_stamps(records),
            Ok(GetOutcome::Corrupt(corruption)) => context_log_corruption(db, *context, corruption),
            Ok(GetOutcome::Miss) | Err(_) => {}
        }
    }
}

/// Writes this build's stamp records into each store's index, unless it holds them already.
fn save_stamps(db: &Database, stores: &[(crate::store::Store, BuildContext)]) {
    let ours = db.files().stamps();
    for (store, _) in stores {
        let previous = match store.get_json::<StampIndex>(FILE_STAMPS, &stamps_key()) {
            Ok(GetOutcome::Hit(records)) => records,
            _ => Vec::new(),
        };
        let mut merged: BTreeMap<PathBuf, StampedDigest> = previous.iter().cloned().collect();
        for (path, record) in &ours {
            merged.insert(path.clone(), *record);
        }
        let mut index: StampIndex = merged.into_iter().collect();
        if index.len() > MAX_STAMPS {
            let ours: BTreeSet<&PathBuf> = ours.iter().map(|(p, _)| p).collect();
            index.sort_by_key(|(p, _)| !ours.contains(p));
            index.truncate(MAX_STAMPS);
            index.sort_by(|a, b| a.0.cmp(&b.0));
        }
        if index != previous {
            let _ = store.put_json(FILE_STAMPS, &stamps_key(), &index);
        }
    }
}

/// Each context's log once (projects sharing a store share a context).
fn distinct_logs(db: &Database, projects: &[ProjectSpec]) -> Vec<queries::WorkLog> {
    let mut logs: Vec<queries::WorkLog> = Vec::new();
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

fn plan_of<'db>(db: &'db Database, unit: Unit<'db>) -> Result<&'db Arc<UnitPlan>, &'db BuildError> {
    queries::unit_plan(db, unit).as_ref()
}

fn build_unit<'db>(
    db: &'db Database,
    unit: Unit<'db>,
    progress: &(dyn Fn(Progress) + Sync),
) -> UnitOutcome {
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
        let artifacts = queries::unit_artifacts(db, unit)
            .as_ref()
            .map_err(Clone::clone)?;
        let encodings = queries::unit_encodings(db, unit)
            .as_ref()
            .map_err(Clone::clone)?
            .clone();
        let mut written = Vec::new();
        let mut unchanged = Vec::new();
        let encodings_path = plan.out_dir.join("encodings.json");
        let evaluation = artifacts.evaluation.clone();
        remove_stale_temporaries(&plan.out_dir);
        let files: [(&str, Option<&[u8]>); 4] = [
            ("encodings.json", Some(artifacts.encodings_json.as_bytes())),
            ("report.json", Some(artifacts.report_json.as_bytes())),
            ("model.qdq.onnx", artifacts.qdq_model.as_deref()),
            (
                "report.html",
                evaluation.as_ref().map(|e| e.html.as_bytes()),
            ),
        ];
        for (name, bytes) in files {
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
            let changed = write_if_changed(&path, bytes).map_err(output_error)?;
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

/// The store kind of [`StoredUnitState`]: one entry per unit (keyed by its names), replaced by
/// each successful build of the unit. Bump its version when the fingerprint's contents or the
/// entry's layout change, or when an output file's bytes would change for the same inputs.
const UNIT_STATE: Kind = Kind::new("unit-state", 1);

fn unit_state_key(plan: &UnitPlan) -> Digest {
    KeyBuilder::new(UNIT_STATE)
        .str("pipeline", &plan.pipeline)
        .str("target", &plan.target.name)
        .str("model", &plan.model.name)
        .finish()
}

/// The digest of everything a unit's output files depend on: its plan and eval set (the
/// manifest as it concerns the unit), the digest of every file it reads (model, overrides,
/// input lists and their samples, labels), the working directory (diagnostics show paths
/// relative to it) and the versions of the code that computes the outputs. `None` when a file
/// cannot be read: the ordinary build reports it.
///
/// Unlike store keys it holds paths: it decides whether *this* checkout's outputs are current,
/// like cargo's fingerprints, and a moved project just builds once from the store.
fn unit_fingerprint(db: &Database, unit: Unit<'_>, plan: &UnitPlan) -> Option<Digest> {
    let eval = super::evaluate::unit_eval_set(db, unit);
    let files = unit_inputs(db, plan, eval.as_ref())?;
    let digests = files
        .iter()
        .map(|path| Some((path.as_path(), source_file(db, path).digest(db)?)))
        .collect::<Option<Vec<_>>>()?;
    let versions = (
        env!("CARGO_PKG_VERSION"),
        UNIT_STATE.version(),
        Kind::ENCODINGS.version(),
        Kind::STATISTICS.version(),
        super::evaluate::EVALUATION_VERSION,
    );
    let cwd = std::env::current_dir().ok();
    Some(stable_digest(&(versions, cwd, plan, &eval, digests)))
}

/// Every file a unit reads: model, overrides, input lists and their samples, the eval set's
/// list, samples and labels. `None` when an input list cannot be parsed.
fn unit_inputs(
    db: &Database,
    plan: &UnitPlan,
    eval: Option<&ResolvedEval>,
) -> Option<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = vec![plan.model.path.clone()];
    files.extend(plan.overrides.iter().cloned());
    let mut lists: Vec<&Path> = plan.input_list.iter().map(PathBuf::as_path).collect();
    if let Some(set) = eval {
        lists.push(&set.input_list);
        files.extend(set.labels.iter().cloned());
    }
    for list in lists {
        let parsed = queries::input_list(db, source_file(db, list))
            .as_ref()
            .ok()?;
        files.push(list.to_path_buf());
        for sample in &parsed.samples {
            files.extend(sample.files.iter().map(|f| f.path.clone()));
        }
    }
    Some(files)
}

/// The unit, finished, when its last build had the same fingerprint and every output file
/// still holds exactly the bytes that build wrote (and the files it did not write are absent).
fn fresh_unit(db: &Database, unit: Unit<'_>) -> Option<UnitDone> {
    let plan = plan_of(db, unit).ok()?;
    let context = unit.project(db).context(db);
    let store = context.store(db).as_ref()?;
    let state = match store.get(UNIT_STATE, &unit_state_key(plan)) {
        Ok(GetOutcome::Hit(bytes)) => StoredUnitState::decode(&bytes)?,
        Ok(GetOutcome::Corrupt(corruption)) => {
            context_log_corruption(db, context, corruption);
            return None;
        }
        Ok(GetOutcome::Miss) | Err(_) => return None,
    };
    if state.fingerprint != unit_fingerprint(db, unit, plan)? {
        return None;
    }
    let mut unchanged = Vec::new();
    for (name, digest) in &state.outputs {
        let path = plan.out_dir.join(name);
        match digest {
            Some(digest) if Digest::of(&fs::read(&path).ok()?) == *digest => unchanged.push(path),
            None if fs::symlink_metadata(&path).is_err() => {}
            _ => return None,
        }
    }
    let evaluation = match &state.evaluation {
        Some(json) => Some(Arc::new(serde_json::from_str(json).ok()?)),
        None => None,
    };
    Some(UnitDone {
        encodings: Arc::new(state.encodings),
        encodings_path: plan.out_dir.join("encodings.json"),
        written: Vec::new(),
        unchanged,
        explanation: Explanation::default(),
        evaluation,
    })
}

/// A fresh unit's outcome: nothing computed or written, its build record compared as usual.
fn reuse_unit<'db>(
    db: &'db Database,
    unit: Unit<'db>,
    mut done: UnitDone,
    progress: &(dyn Fn(Progress) + Sync),
) -> UnitOutcome {
    let (target, model) = (unit.target(db).clone(), unit.model(db).clone());
    let plan = match plan_of(db, unit) {
        Ok(plan) => plan.clone(),
        Err(_) => return build_unit(db, unit, progress),
    };
    progress(Progress::Encoding {
        pipeline: plan.pipeline.clone(),
        target: target.clone(),
        model: model.clone(),
    });
    done.explanation = record_and_explain(db, unit, &plan, &done.encodings);
    UnitOutcome {
        pipeline: plan.pipeline.clone(),
        target,
        model,
        out_dir: plan.out_dir.clone(),
        result: Ok(done),
    }
}

/// Records a unit's successful build for [`fresh_unit`]. Best effort: without the entry the
/// next build is an ordinary one.
fn save_unit_state(
    db: &Database,
    unit: Unit<'_>,
    plan: &UnitPlan,
    outputs: Vec<(String, Option<Digest>)>,
    encodings: &UnitEncodings,
    evaluation: Option<&UnitEvaluation>,
) {
    let Some(store) = unit.project(db).context(db).store(db) else {
        return;
    };
    let Some(fingerprint) = unit_fingerprint(db, unit, plan) else {
        return;
    };
    let Some(evaluation) = evaluation.map(serde_json::to_string).transpose().ok() else {
        return;
    };
    let state = StoredUnitState {
        fingerprint,
        outputs,
        encodings: encodings.clone(),
        evaluation,
    };
    let _ = store.put(UNIT_STATE, &unit_state_key(plan), &state.encode());
}

/// Writes `bytes` to `path` unless it already holds them; atomically (a temp file in the same
/// folder, renamed over the target), so a reader or a killed build never sees half a file.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    if holds(path, bytes) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = fs::write(&temp, bytes).and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map(|()| true)
}

/// Removes the temporary files a killed build left in `dir` (see [`write_if_changed`]): they
/// name their writer's process, and one that no longer runs will never rename them. Where
/// processes cannot be checked (no `/proc`), they are left alone.
fn remove_stale_temporaries(dir: &Path) {
    let proc = Path::new("/proc");
    if !proc.is_dir() {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.starts_with('.'))
            .and_then(|n| n.rsplit_once(".tmp-"))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !proc.join(pid.to_string()).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether the file at `path` holds exactly `bytes`. Compares the length first and then reads
/// in blocks, stopping at the first difference: an edited output differs from the old one
/// somewhere, and reading a whole multi-megabyte file to find out cost more than writing it.
fn holds(path: &Path, bytes: &[u8]) -> bool {
    use std::io::Read;
    const BLOCK: usize = 1 << 16;
    let Ok(mut file) = fs::File::open(path) else {
        return false;
    };
    if file.metadata().map(|m| m.len()).ok() != Some(bytes.len() as u64) {
        return false;
    }
    let mut buffer = vec![0u8; BLOCK];
    let mut rest = bytes;
    loop {
        let want = rest.len().min(BLOCK);
        if want == 0 {
            // Nothing may follow (the file could have grown since the length was read).
            return matches!(file.read(&mut buffer[..1]), Ok(0));
        }
        if file.read_exact(&mut buffer[..want]).is_err() || buffer[..want] != rest[..want] {
            return false;
        }
        rest = &rest[want..];
    }
}

/// The label of an input in records and explanations: relative to the manifest's folder.
fn label(plan: &UnitPlan, path: &Path) -> String {
    path.strip_prefix(&plan.root)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| display_path(path))
}

/// This build's record of a unit, compared with the stored one (which it then replaces).
fn record_and_explain(
    db: &Database,
    unit: Unit<'_>,
    plan: &UnitPlan,
    encodings: &UnitEncodings,
) -> Explanation {
    let mut record = BuildRecord::default();
    let mut add = |path: &Path| {
        let digest = source_file(db, path)
            .digest(db)
            .map_or_else(|| "missing".to_string(), |d| d.to_hex());
        record.inputs.insert(label(plan, path), digest);
    };
    let project = unit.project(db);
    add(project.manifest(db).path(db));
    add(&plan.model.path);
    for path in &plan.overrides {
        add(path);
    }
    if let Some(list) = &plan.input_list {
        add(list);
        if let Ok(parsed) = queries::input_list(db, source_file(db, list)) {
            for sample in &parsed.samples {
                for file in &sample.files {
                    add(&file.path);
                }
            }
        }
    }
    for (name, fixed) in encodings.activations.iter().chain(&encodings.parameters) {
        record
            .encodings
            .insert(name.clone(), stable_digest(fixed).to_hex());
    }

    let context = project.context(db);
    let Some(store) = context.store(db) else {
        return explain::compare(None, &record);
    };
    let key = explain::record_key(&plan.pipeline, &plan.target.name, &plan.model.name);
    let previous = match store.get_json::<BuildRecord>(BUILD_RECORD, &key) {
        Ok(GetOutcome::Hit(previous)) => Some(previous),
        Ok(GetOutcome::Miss) => None,
        Ok(GetOutcome::Corrupt(corruption)) => {
            context_log_corruption(db, context, corruption);
            None
        }
        Err(_) => None,
    };
    let explanation = explain::compare(previous.as_ref(), &record);
    if previous.as_ref() != Some(&record) {
        // Best effort: a record only improves explanations.
        let _ = store.put_json(BUILD_RECORD, &key, &record);
    }
    explanation
}

fn context_log_corruption(db: &Database, context: BuildContext, corruption: Corruption) {
    let mut record = WorkRecord::default();
    record.corruptions.push(corruption);
    context.log(db).append(record);
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
        let Ok(parsed) = queries::input_list(db, source_file(db, list)) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_of_dead_writers_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        // No process has this id (above the kernel's pid_max).
        let dead = dir.path().join(".encodings.json.tmp-4294967295");
        let ours = dir
            .path()
            .join(format!(".encodings.json.tmp-{}", std::process::id()));
        let output = dir.path().join("encodings.json");
        for path in [&dead, &ours, &output] {
            fs::write(path, b"{}").unwrap();
        }
        remove_stale_temporaries(dir.path());
        assert_eq!(dead.exists(), !Path::new("/proc").is_dir());
        assert!(ours.exists() && output.exists());
    }

    #[test]
    fn holds_compares_whole_contents_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        assert!(!holds(&path, b""), "a missing file holds nothing");
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&path, &big).unwrap();
        assert!(holds(&path, &big));
        let mut late = big.clone();
        *late.last_mut().unwrap() ^= 1;
        assert!(!holds(&path, &late), "a difference in the last block");
        assert!(!holds(&path, &big[..big.len() - 1]), "a shorter buffer");
        fs::write(&path, b"").unwrap();
        assert!(holds(&path, b""));
        assert!(write_if_changed(&path, b"x").unwrap());
        assert!(!write_if_changed(&path, b"x").unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"x");
    }
}
