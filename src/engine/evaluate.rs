//! The outputs that apply a unit's encodings to its model: `model.qdq.onnx` (the QDQ export)
//! and the evaluation behind `report.json` and `report.html` (float vs QuantSim on the target's
//! eval set, `evaluate = "NAME"`).
//!
//! It owns the queries [`unit_qdq_model`] and [`unit_evaluation`], the projection of a target's
//! eval set out of the manifest, and the store entry that carries a finished evaluation to the
//! next process. An evaluation runs every eval sample twice, so it is looked up in the store
//! first, under a key made of the digests of everything it reads: the model file and its
//! input dims, the unit's `encodings.json`, the eval list, every sample file, the labels file,
//! the calibration ranges the report shows, the names the report prints, and
//! [`EVALUATION_VERSION`]. Every file is read through [`source_file`], so `quant watch` follows
//! the eval set like any other input.
//!
//! On a miss, the evaluation starts from the traces the unit's last evaluation left
//! ([`crate::eval::trace`]): the float side of each sample (shared by every unit evaluating the
//! same model on it), the float totals of the list, and the unit's simulation traces, all in the
//! store; and from the [`run_structure`] of both runners, also stored, so that an evaluation
//! that runs no sample loads no model into tract.
//!
//! It must not write files or print (the driver writes, the CLI prints), and it holds no
//! numeric logic: [`crate::eval`] measures, [`crate::report`] renders, [`crate::export::qdq`]
//! rewrites the model.
//!
//! The evaluation runs its samples with rayon inside the query (each sample's float and
//! simulated runs are independent and read no database state); it therefore cannot be
//! cancelled between samples, only before it starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::adarounded::model_graph;
use super::cache::{
    EVALUATIONS, FLOAT_TOTALS, FLOAT_TRACES, RUN_STRUCTURES, RUNTIME, SIM_TRACES, lookup,
    lookup_bytes,
};
use super::calibrate::{merged_statistics, unit_calibration};
use super::db::Db;
use super::error::{BuildError, display_path};
use super::export::unit_encodings_json;
use super::inputs::source_file;
use super::keys::{BuildContext, ModelKey, Unit};
use super::log::{WorkLog, WorkRecord};
use super::model::{LoadedModel, model_key, runner_dims, uncorrected_key};
use super::plan::{UnitPlan, unit_eval_set, unit_plan};
use super::precision::model_encodings;
use super::samples::input_list;
use super::source::{FileError, FileSnapshot, SourceFile};
use super::stored::stable_digest;
use crate::calib::{CalibError, InputList};
use crate::encoding::Rounding;
use crate::eval::{
    EvalError, Evaluation, Evaluator, FloatTotals, FloatTrace, Labels, Runners, SimTrace,
    TraceStore, declared_classes,
};
use crate::graph::Graph;
use crate::quantizer::ModelEncodings;
use crate::quantsim::QuantSim;
use crate::report::{Report, ReportContext};
use crate::run::{FloatRunner, RunStructure};
use crate::store::{Digest, KeyBuilder, Kind, Store};

pub use super::cache::EVALUATION_VERSION;

/// The traces of one unit's eval samples in the store: a float trace per sample (shared by
/// every unit evaluating the same model on the same sample), the float totals of the list,
/// and one entry with the unit's simulation traces.
struct StoredTraces<'a> {
    store: Option<&'a Store>,
    /// Per sample in list order: its float trace key, which also names its simulation trace.
    samples: Vec<Digest>,
    /// The float totals' key (made of the samples' keys in order).
    totals: Digest,
    /// The key of the unit's simulation traces.
    sims: Digest,
    /// The unit's simulation traces as last stored, read on first use.
    kept_sims: std::sync::OnceLock<BTreeMap<Digest, SimTrace>>,
    /// Simulation traces this evaluation computed, by sample index.
    new_sims: std::sync::Mutex<BTreeMap<usize, SimTrace>>,
    /// Where damaged entries (each a miss: the sample runs, its trace is rewritten) and store
    /// failures are reported.
    log: &'a WorkLog,
}

impl StoredTraces<'_> {
    fn read(&self, kind: Kind, key: &Digest) -> Option<Vec<u8>> {
        lookup_bytes(self.store?, self.log, kind, key)
    }

    fn write(&self, kind: Kind, key: &Digest, bytes: &[u8]) {
        if let Some(store) = self.store
            && let Err(e) = store.put(kind, key, bytes)
        {
            self.log.with(|r| r.store_errors.push(format!("{e:#}")));
        }
    }

    fn kept_sims(&self) -> &BTreeMap<Digest, SimTrace> {
        self.kept_sims.get_or_init(|| {
            self.read(SIM_TRACES, &self.sims)
                .and_then(|bytes| decode_sim_traces(&bytes))
                .unwrap_or_default()
        })
    }

    /// Stores the unit's simulation traces when this evaluation computed any: the new ones,
    /// and the kept ones of the list's other samples.
    fn save_sims(&self) {
        let new = std::mem::take(&mut *lock(&self.new_sims));
        if new.is_empty() {
            return;
        }
        let kept = self.kept_sims();
        let mut out = Vec::new();
        let mut count = 0u64;
        let mut body = Vec::new();
        for (index, key) in self.samples.iter().enumerate() {
            let Some(trace) = new.get(&index).or_else(|| kept.get(key)) else {
                continue;
            };
            let bytes = trace.encode();
            body.extend_from_slice(key.as_bytes());
            body.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            body.extend_from_slice(&bytes);
            count += 1;
        }
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&body);
        self.write(SIM_TRACES, &self.sims, &out);
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads [`StoredTraces::save_sims`]' bytes: a count, then per sample its float trace key, the
/// length of its simulation trace and the trace. `None` when they are not exactly that.
pub(super) fn decode_sim_traces(bytes: &[u8]) -> Option<BTreeMap<Digest, SimTrace>> {
    let (count, mut rest) = bytes.split_first_chunk::<8>()?;
    let mut traces = BTreeMap::new();
    for _ in 0..u64::from_le_bytes(*count) {
        let (key, tail) = rest.split_first_chunk::<32>()?;
        let (len, tail) = tail.split_first_chunk::<8>()?;
        let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
        if len > tail.len() {
            return None;
        }
        let (trace, tail) = tail.split_at(len);
        traces.insert(Digest::from_bytes(*key), SimTrace::decode(trace)?);
        rest = tail;
    }
    rest.is_empty().then_some(traces)
}

impl TraceStore for StoredTraces<'_> {
    fn float(&self, index: usize) -> Option<FloatTrace> {
        FloatTrace::decode(&self.read(FLOAT_TRACES, self.samples.get(index)?)?)
    }

    fn has_float(&self, index: usize) -> bool {
        match (self.store, self.samples.get(index)) {
            (Some(store), Some(key)) => store.contains(FLOAT_TRACES, key),
            _ => false,
        }
    }

    fn sim(&self, index: usize) -> Option<SimTrace> {
        self.kept_sims().get(self.samples.get(index)?).cloned()
    }

    fn keep(&self, index: usize, float: Option<&FloatTrace>, sim: Option<&SimTrace>) {
        if let Some(float) = float
            && let Some(key) = self.samples.get(index)
        {
            self.write(FLOAT_TRACES, key, &float.encode());
        }
        if let Some(sim) = sim {
            lock(&self.new_sims).insert(index, sim.clone());
        }
    }

    fn float_totals(&self) -> Option<FloatTotals> {
        FloatTotals::decode(&self.read(FLOAT_TOTALS, &self.totals)?)
    }

    fn keep_totals(&self, totals: &FloatTotals) {
        self.write(FLOAT_TOTALS, &self.totals, &totals.encode());
    }
}

/// How the float model (`sim: None`) or a simulation runner of `model` depends on its hooks:
/// read from the store when kept, otherwise taken from the runner (built for it) and stored,
/// so an evaluation served from traces loads no model into tract.
#[salsa::tracked(returns(ref), no_eq)]
pub fn run_structure<'db>(
    db: &'db dyn Db,
    model: ModelKey<'db>,
    sim: Option<SimModel<'db>>,
    context: BuildContext,
) -> Result<Arc<RunStructure>, BuildError> {
    // The loaded model's content digest: the file's, or the transformed bytes'.
    let model_digest = model_graph(db, model)
        .as_ref()
        .map_err(Clone::clone)?
        .content;
    let mut key = KeyBuilder::new(RUN_STRUCTURES)
        .str("runtime", RUNTIME)
        .digest("model", &model_digest)
        .digest("input_dims", &stable_digest(model.input_dims(db)));
    if let Some(sim) = sim {
        key = key.digest("parameters", &sim.parameters(db).digest);
    }
    let key = key.finish();
    let (store, log) = (context.store(db).as_ref(), context.log(db));
    if let Some(structure) =
        store.and_then(|s| lookup::<RunStructure>(s, log, RUN_STRUCTURES, &key))
    {
        return Ok(Arc::new(structure));
    }
    let runner = match sim {
        Some(sim) => sim_runner(db, sim),
        None => evaluation_float_runner(db, model),
    }
    .as_ref()
    .map_err(Clone::clone)?;
    let structure = runner.structure();
    if let Some(store) = store
        && let Err(e) = store.put_json(RUN_STRUCTURES, &key, &structure)
    {
        log.with(|r| r.store_errors.push(format!("{e:#}")));
    }
    Ok(Arc::new(structure))
}

/// A finished evaluation of one unit, as its output files and the terminal show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitEvaluation {
    /// The [`Report`] as a JSON value: `report.json`'s `evaluation` field.
    pub report: Value,
    /// `report.html`.
    pub html: String,
    /// The terminal summary (overall metrics, then the worst tensors by SQNR).
    pub summary: String,
}

impl UnitEvaluation {
    /// The headline metrics for `quant build --json`: top-1 of the float and the quantized
    /// model (`null` without labels) and the mean output SQNR in dB (the mean over outputs of
    /// each output's per-sample mean; `null` when not finite).
    pub fn headline(&self) -> Value {
        let top1 = &self.report["metrics"]["top1"];
        serde_json::json!({
            "samples": self.report["samples"],
            "top1_float": top1["float"]["accuracy"],
            "top1_quantized": top1["quantized"]["accuracy"],
            "output_sqnr_db_mean": self.output_sqnr_db(),
        })
    }

    /// The quantized model's top-1 accuracy as a fraction (`None` without labels).
    pub fn top1_quantized(&self) -> Option<f64> {
        self.report["metrics"]["top1"]["quantized"]["accuracy"].as_f64()
    }

    /// The mean over outputs of each output's per-sample mean SQNR, in dB (`None` when no
    /// output has a finite one).
    pub fn output_sqnr_db(&self) -> Option<f64> {
        let means: Vec<f64> = self.report["metrics"]["outputs"]
            .as_array()
            .map(|outputs| {
                outputs
                    .iter()
                    .filter_map(|o| o["sqnr_db_mean"].as_f64())
                    .collect()
            })
            .unwrap_or_default();
        (!means.is_empty()).then(|| means.iter().sum::<f64>() / means.len() as f64)
    }

    /// The headline in words, e.g. `top-1 87.50 %, output SQNR 88.95 dB`; with `before`, each
    /// figure as a change, e.g. `top-1 87.50 % → 87.50 %, output SQNR 88.95 → 71.20 dB`.
    pub fn headline_text(&self, before: Option<&UnitEvaluation>) -> String {
        let mut parts = Vec::new();
        if let Some(now) = self.top1_quantized() {
            let now = format!("{:.2} %", 100.0 * now);
            parts.push(match before.and_then(UnitEvaluation::top1_quantized) {
                Some(then) => format!("top-1 {:.2} % → {now}", 100.0 * then),
                None => format!("top-1 {now}"),
            });
        }
        if let Some(now) = self.output_sqnr_db() {
            parts.push(match before.and_then(UnitEvaluation::output_sqnr_db) {
                Some(then) => format!("output SQNR {then:.2} → {now:.2} dB"),
                None => format!("output SQNR {now:.2} dB"),
            });
        }
        parts.join(", ")
    }
}

/// The parameter encodings of a simulation ([`crate::quantsim::simulated_parameters`]),
/// compared by a digest of their values: equal parameters give one interned [`SimModel`] however
/// many targets (or revisions) produce them.
#[derive(Clone, Debug)]
pub struct SimParameters {
    digest: Digest,
    encodings: Arc<ModelEncodings>,
    rounding: Rounding,
}

impl SimParameters {
    /// `encodings`' parameters that the simulation of `graph` applies, rounded with `rounding`.
    pub fn of(
        graph: &crate::graph::Graph,
        encodings: &ModelEncodings,
        rounding: Rounding,
    ) -> SimParameters {
        let parameters = crate::quantsim::simulated_parameters(graph, encodings);
        let mut hasher = blake3::Hasher::new();
        for (name, encoding) in &parameters.parameters {
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            crate::eval::trace::hash_encoding(&mut hasher, Some(encoding));
        }
        for op in parameters.ops.keys() {
            hasher.update(b"int32 op");
            hasher.update(&(op.len() as u64).to_le_bytes());
            hasher.update(op.as_bytes());
        }
        // Only AIMET's rounding is named, so the digests of ONNX-rounded simulations stay what
        // they were.
        if rounding != Rounding::Onnx {
            hasher.update(b"rounding ");
            hasher.update(rounding.as_str().as_bytes());
        }
        SimParameters {
            digest: Digest::from(hasher.finalize()),
            encodings: Arc::new(parameters),
            rounding,
        }
    }
}

impl PartialEq for SimParameters {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for SimParameters {}

impl std::hash::Hash for SimParameters {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.digest.hash(state);
    }
}

#[allow(missing_docs)]
mod sim_key {
    use super::{ModelKey, SimParameters};

    /// A model with a set of parameter encodings: what a simulation runner is built from.
    #[salsa::interned(debug)]
    pub struct SimModel<'db> {
        #[returns(copy)]
        pub model: ModelKey<'db>,
        #[returns(ref)]
        pub parameters: SimParameters,
    }
}
pub use sim_key::SimModel;

/// Whose arithmetic a unit's evaluation rounds with: AIMET's for a target that places its
/// encodings by an AIMET quantsim config (the numbers AIMET's own simulation would give),
/// onnxruntime's otherwise (what the QDQ export computes).
pub fn unit_rounding(settings: Option<&crate::quantizer::QuantizerSettings>) -> Rounding {
    match settings {
        Some(settings) if settings.quantsim_config.0.is_some() => Rounding::Aimet,
        _ => Rounding::Onnx,
    }
}

/// The simulation runner of a model with fake-quantized parameters, shared by every unit whose
/// parameter encodings are equal (`htp` and `htp-a16` differ only in activations) and kept
/// across activation edits in `quant watch`.
#[salsa::tracked(returns(ref), no_eq)]
pub fn sim_runner<'db>(
    db: &'db dyn Db,
    key: SimModel<'db>,
) -> Result<Arc<FloatRunner>, BuildError> {
    let model = key.model(db);
    let loaded = model_graph(db, model).as_ref().map_err(Clone::clone)?;
    crate::quantsim::parameters_runner(
        &loaded.onnx,
        &loaded.graph,
        &key.parameters(db).encodings,
        &runner_dims(model.input_dims(db)),
        key.parameters(db).rounding,
    )
    .map(Arc::new)
    .map_err(eval_error)
}

/// The float model an evaluation compares against, loaded once per model and input dims
/// however many targets evaluate it (and only when some evaluation misses the store).
#[salsa::tracked(returns(ref), no_eq)]
pub fn evaluation_float_runner<'db>(
    db: &'db dyn Db,
    model: ModelKey<'db>,
) -> Result<Arc<FloatRunner>, BuildError> {
    let loaded = model_graph(db, model).as_ref().map_err(Clone::clone)?;
    FloatRunner::for_model(&loaded.onnx, &runner_dims(model.input_dims(db)))
        .map(Arc::new)
        .map_err(|e| BuildError::Runner {
            path: display_path(model.file(db).path(db)),
            message: e.to_string(),
        })
}

fn eval_error(error: impl Into<EvalError>) -> BuildError {
    BuildError::Evaluation(Arc::new(error.into()))
}

/// A path as the report names it: relative to the manifest's folder, so the report reads the
/// same wherever the project lives.
fn project_label(plan: &UnitPlan, path: &Path) -> String {
    path.strip_prefix(&plan.root)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| display_path(path))
}

/// The input list's own diagnostic for an eval sample file that cannot be read.
fn unreadable_sample(list: &InputList, index: usize, path: &Path, file: &FileError) -> BuildError {
    let entry = &list.samples[index];
    let span = entry
        .files
        .iter()
        .find(|f| f.path == path)
        .map_or(entry.span, |f| f.span);
    BuildError::List(Arc::new(CalibError::ReadSample {
        line: entry.line,
        path: PathBuf::from(display_path(path)),
        list_dir: list.dir(),
        reason: file.to_string(),
        src: list.named_source(),
        span,
    }))
}

/// The labels file, parsed, with its digest.
fn read_labels(db: &dyn Db, file: SourceFile) -> Result<(Labels, Digest), BuildError> {
    let path = file.path(db);
    let shown = display_path(path);
    let not_readable = |error: &FileError| BuildError::File {
        what: "labels file",
        path: shown.clone(),
        error: error.clone(),
    };
    let bytes = file.bytes(db).map_err(|e| not_readable(&e))?;
    let text = std::str::from_utf8(bytes).map_err(|_| {
        not_readable(&FileError::Unreadable {
            kind: std::io::ErrorKind::InvalidData,
            message: "not UTF-8 text".to_string(),
        })
    })?;
    let labels = Labels::parse(Path::new(&shown), text).map_err(eval_error)?;
    Ok((labels, Digest::of(bytes)))
}

/// Each activation's calibration range (what the report shows as observed), by name.
fn calibration_ranges(
    db: &dyn Db,
    unit: Unit<'_>,
) -> Result<BTreeMap<String, (f64, f64)>, BuildError> {
    let Some(calibration) = unit_calibration(db, unit)? else {
        return Ok(BTreeMap::new());
    };
    let merged = merged_statistics(db, calibration)
        .as_ref()
        .map_err(Clone::clone)?;
    Ok(merged
        .by_name
        .iter()
        .filter_map(|(name, statistics)| {
            let (min, max) = statistics.min_max.range()?;
            Some((name.clone(), (f64::from(min), f64::from(max))))
        })
        .collect())
}

/// What an evaluation reads, gathered and checked before anything runs: the errors of its
/// inputs (encodings, model, eval list, labels) come out here, in that order.
struct EvaluationInputs<'db> {
    plan: &'db Arc<UnitPlan>,
    model: ModelKey<'db>,
    loaded: &'db Arc<LoadedModel>,
    model_digest: Digest,
    /// The float model the quantized one is compared with: the unit's model before bias
    /// correction (which moves biases to make the *quantized* model match it), else the model.
    float_model: ModelKey<'db>,
    float_digest: Digest,
    encodings_digest: Digest,
    list_file: SourceFile,
    list: &'db Arc<InputList>,
    /// Every eval sample file with the digest it had when the evaluation began.
    samples: Vec<(PathBuf, Digest)>,
    labels: Option<(Labels, Digest)>,
    ranges: BTreeMap<String, (f64, f64)>,
    context: ReportContext,
    /// Whose arithmetic the simulation rounds with ([`unit_rounding`]).
    rounding: Rounding,
}

/// The evaluation of a unit whose target says `evaluate = "NAME"`: float vs QuantSim on the eval
/// set, rendered. `None` for float targets and targets without `evaluate`. Read back from the
/// store when an entry has the same inputs; otherwise run (and stored).
#[salsa::tracked(returns(ref))]
pub fn unit_evaluation<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
) -> Result<Option<Arc<UnitEvaluation>>, BuildError> {
    let Some(inputs) = evaluation_inputs(db, unit)? else {
        return Ok(None);
    };
    let key = evaluation_key(db, &inputs);
    let store_and_log = unit.project(db).context(db);
    if let Some(hit) = store_and_log
        .store(db)
        .as_ref()
        .and_then(|store| lookup::<UnitEvaluation>(store, store_and_log.log(db), EVALUATIONS, &key))
    {
        return Ok(Some(Arc::new(hit)));
    }
    db.unwind_if_revision_cancelled();
    let evaluation = run_evaluation(db, unit, &inputs)?;
    // The evaluator read the samples from disk itself: a file that changed since its digest
    // was taken would put this result under the wrong key.
    for (path, digest) in &inputs.samples {
        if FileSnapshot::read(path).digest != Some(*digest) {
            return Err(BuildError::Changed {
                path: display_path(path),
            });
        }
    }
    Ok(Some(store_evaluation(db, unit, &inputs, &evaluation, &key)))
}

/// Gathers and checks what the evaluation reads (`None` when the unit has none to do).
fn evaluation_inputs<'db>(
    db: &'db dyn Db,
    unit: Unit<'db>,
) -> Result<Option<EvaluationInputs<'db>>, BuildError> {
    let plan = unit_plan(db, unit).as_ref().map_err(Clone::clone)?;
    if plan.settings().is_none() {
        return Ok(None);
    }
    let Some(set) = unit_eval_set(db, unit) else {
        return Ok(None);
    };
    // The encodings' own errors come first: they are the ones to fix.
    let json = unit_encodings_json(db, unit)
        .as_ref()
        .map_err(Clone::clone)?;
    let encodings_digest = Digest::of(json.as_bytes());
    let model = model_key(db, unit, plan);
    let loaded = model_graph(db, model).as_ref().map_err(Clone::clone)?;
    let model_digest = loaded.content;
    let float_model = uncorrected_key(db, model);
    let float_digest = model_graph(db, float_model)
        .as_ref()
        .map_err(Clone::clone)?
        .content;
    let list_file = source_file(db, &set.input_list);
    let list = input_list(db, list_file).as_ref().map_err(Clone::clone)?;
    let samples = eval_sample_digests(db, list)?;
    let labels = match &set.labels {
        Some(path) => Some(read_labels(db, source_file(db, path))?),
        None => None,
    };
    if let Some((labels, _)) = &labels {
        check_labels(labels, list, &loaded.graph)?;
    }
    let ranges = calibration_ranges(db, unit)?;
    let context = ReportContext {
        target: Some(plan.target.name.clone()),
        model: plan.model.name.clone(),
        encodings: Some("encodings.json".to_string()),
        input_list: project_label(plan, &set.input_list),
        labels: set.labels.as_deref().map(|p| project_label(plan, p)),
    };
    Ok(Some(EvaluationInputs {
        plan,
        model,
        loaded,
        model_digest,
        float_model,
        float_digest,
        encodings_digest,
        list_file,
        list,
        samples,
        labels,
        ranges,
        context,
        rounding: unit_rounding(plan.settings()),
    }))
}

/// Every eval sample file with its digest; an unreadable one is the list's diagnostic.
fn eval_sample_digests(
    db: &dyn Db,
    list: &InputList,
) -> Result<Vec<(PathBuf, Digest)>, BuildError> {
    let mut samples = Vec::new();
    for (index, sample) in list.samples.iter().enumerate() {
        for file in &sample.files {
            let source = source_file(db, &file.path);
            match (source.digest(db), source.contents(db)) {
                (Some(digest), _) => samples.push((file.path.clone(), digest)),
                (None, Err(error)) => {
                    return Err(unreadable_sample(list, index, &file.path, error));
                }
                (None, Ok(_)) => {
                    return Err(BuildError::Changed {
                        path: display_path(&file.path),
                    });
                }
            }
        }
    }
    Ok(samples)
}

/// One label per sample, each a class the model's first output has.
fn check_labels(labels: &Labels, list: &InputList, graph: &Graph) -> Result<(), BuildError> {
    labels
        .check_count(&list.path, list.samples.len())
        .map_err(eval_error)?;
    if let Some(output) = graph.outputs().first()
        && let Some(classes) = declared_classes(graph, output.as_str())
    {
        labels
            .check_range(classes, output.as_str())
            .map_err(eval_error)?;
    }
    Ok(())
}

/// The `evaluations` key: everything the rendered evaluation depends on (see the registry).
fn evaluation_key(db: &dyn Db, inputs: &EvaluationInputs<'_>) -> Digest {
    let range_bits: Vec<(&str, u64, u64)> = inputs
        .ranges
        .iter()
        .map(|(name, (min, max))| (name.as_str(), min.to_bits(), max.to_bits()))
        .collect();
    let context = &inputs.context;
    KeyBuilder::new(EVALUATIONS)
        .u64("version", u64::from(EVALUATION_VERSION))
        .str("rounding", inputs.rounding.as_str())
        .str("runtime", RUNTIME)
        .digest(
            "model",
            &if inputs.float_digest == inputs.model_digest {
                inputs.model_digest
            } else {
                stable_digest(&(inputs.model_digest, inputs.float_digest))
            },
        )
        .digest("input_dims", &stable_digest(inputs.model.input_dims(db)))
        .digest("encodings", &inputs.encodings_digest)
        .digest(
            "list",
            &inputs
                .list_file
                .digest(db)
                .unwrap_or_else(|| Digest::of(b"")),
        )
        .digests("sample", inputs.samples.iter().map(|(_, digest)| digest))
        .digest(
            "labels",
            &stable_digest(&inputs.labels.as_ref().map(|(_, d)| *d.as_bytes())),
        )
        .digest("calibration_ranges", &stable_digest(&range_bits))
        .digest(
            "context",
            &stable_digest(&(
                &context.target,
                &context.model,
                &context.encodings,
                &context.input_list,
                &context.labels,
            )),
        )
        .finish()
}

/// The store keys of the traces an evaluation starts from: each sample's float trace, the
/// float totals, and the unit's simulation traces.
fn stored_traces<'a>(
    db: &'a dyn Db,
    unit: Unit<'a>,
    inputs: &EvaluationInputs<'a>,
    sim_model: SimModel<'a>,
) -> StoredTraces<'a> {
    let input_dims = stable_digest(inputs.model.input_dims(db));
    let float_keys: Vec<Digest> = inputs
        .list
        .samples
        .iter()
        .map(|sample| {
            let mut key = KeyBuilder::new(FLOAT_TRACES)
                .str("runtime", RUNTIME)
                .digest("model", &inputs.float_digest)
                .digest("input_dims", &input_dims);
            for file in &sample.files {
                let digest = source_file(db, &file.path)
                    .digest(db)
                    .unwrap_or_else(|| Digest::of(b""));
                key = key
                    .str("input", file.input.as_deref().unwrap_or(""))
                    .digest("file", &digest);
            }
            key.finish()
        })
        .collect();
    let totals = KeyBuilder::new(FLOAT_TOTALS)
        .u64("samples", float_keys.len() as u64)
        .digests("sample", float_keys.iter())
        .finish();
    let plan = inputs.plan;
    let sims = KeyBuilder::new(SIM_TRACES)
        .str("runtime", RUNTIME)
        .digest("model", &inputs.model_digest)
        .digest("input_dims", &input_dims)
        .digest("parameters", &sim_model.parameters(db).digest)
        .str("pipeline", &plan.pipeline)
        .str("target", &plan.target.name)
        .str("model_name", &plan.model.name)
        .finish();
    let context = unit.project(db).context(db);
    StoredTraces {
        store: context.store(db).as_ref(),
        samples: float_keys,
        totals,
        sims,
        kept_sims: std::sync::OnceLock::new(),
        new_sims: std::sync::Mutex::new(BTreeMap::new()),
        log: context.log(db),
    }
}

/// Runs what the traces do not already answer, and measures float vs QuantSim.
fn run_evaluation(
    db: &dyn Db,
    unit: Unit<'_>,
    inputs: &EvaluationInputs<'_>,
) -> Result<Evaluation, BuildError> {
    let (model, loaded, list) = (inputs.model, inputs.loaded, inputs.list);
    let store_and_log = unit.project(db).context(db);
    let encodings = model_encodings(db, unit)?;
    let rounding = inputs.rounding;
    let parameters = SimParameters::of(&loaded.graph, &encodings, rounding);
    let sim_model = SimModel::new(db, model, parameters);
    let structure = |sim: Option<SimModel<'_>>| {
        let of = if sim.is_some() {
            model
        } else {
            inputs.float_model
        };
        run_structure(db, of, sim, store_and_log)
            .as_ref()
            .map(|s| Arc::unwrap_or_clone(s.clone()))
            .map_err(Clone::clone)
    };
    let float_structure = structure(None)?;
    let sim_structure = structure(Some(sim_model))?;
    let hooked = crate::quantsim::hooked_encodings(&sim_structure.names, &loaded.graph, &encodings)
        .map_err(eval_error)?;
    let evaluator = Evaluator::new(
        float_structure,
        sim_structure,
        hooked,
        rounding,
        &loaded.graph,
    );
    let traces = stored_traces(db, unit, inputs, sim_model);
    let labels = inputs.labels.as_ref().map(|(l, _)| l);
    let mut evaluation_plan = evaluator.plan(&traces, list.samples.len());
    let mut attempt = 0;
    let evaluation = loop {
        attempt += 1;
        let (samples_run, samples_reused) = evaluation_plan.counts();
        let runners = if evaluation_plan.needs_run() {
            Some(evaluation_runners(
                db, inputs, sim_model, &encodings, rounding,
            )?)
        } else {
            None
        };
        db.unwind_if_revision_cancelled();
        let result = evaluator.evaluate(
            evaluation_plan,
            runners.as_ref().map(|(float, sim)| Runners {
                float: float.as_ref(),
                sim,
            }),
            list,
            labels,
            &traces,
            |_, _| {},
        );
        match result {
            Ok(evaluation) => {
                let mut record = WorkRecord::default();
                record.eval_samples_run += samples_run;
                record.eval_samples_reused += samples_reused;
                traces.log.append(record);
                break evaluation;
            }
            // A trace went missing between planning and reading it: run every sample.
            Err(EvalError::TracesChanged) if attempt == 1 => {
                evaluation_plan = evaluator.plan(&crate::eval::NoTraces, list.samples.len());
            }
            Err(error) => return Err(eval_error(error)),
        }
    };
    traces.save_sims();
    Ok(evaluation)
}

/// The float runner and the simulation, for an evaluation that runs samples.
fn evaluation_runners(
    db: &dyn Db,
    inputs: &EvaluationInputs<'_>,
    sim_model: SimModel<'_>,
    encodings: &ModelEncodings,
    rounding: Rounding,
) -> Result<(Arc<FloatRunner>, QuantSim), BuildError> {
    let float = evaluation_float_runner(db, inputs.float_model)
        .as_ref()
        .map_err(Clone::clone)?
        .clone();
    inputs
        .list
        .check(float.input_specs())
        .map_err(|e| BuildError::List(Arc::new(e)))?;
    let runner = sim_runner(db, sim_model)
        .as_ref()
        .map_err(Clone::clone)?
        .clone();
    let sim = QuantSim::with_runner(runner, &inputs.loaded.graph, encodings, rounding)
        .map_err(eval_error)?;
    Ok((float, sim))
}

/// Renders the evaluation, stores it, and records that it ran.
fn store_evaluation(
    db: &dyn Db,
    unit: Unit<'_>,
    inputs: &EvaluationInputs<'_>,
    evaluation: &Evaluation,
    key: &Digest,
) -> Arc<UnitEvaluation> {
    let report = Report::new(evaluation, &inputs.context, Some(&inputs.ranges));
    let computed = UnitEvaluation {
        report: serde_json::to_value(&report).unwrap_or(Value::Null),
        html: report.to_html(),
        summary: report.summary(),
    };
    // What the next process reads back is exactly this JSON, so this one reads it too: a
    // clean and an incremental build then render the same bytes.
    let payload = serde_json::to_vec(&computed).unwrap_or_default();
    let evaluated: UnitEvaluation = serde_json::from_slice(&payload).unwrap_or(computed);
    let store_and_log = unit.project(db).context(db);
    let mut record = WorkRecord::default();
    if let Some(store) = store_and_log.store(db)
        && let Err(e) = store.put(EVALUATIONS, key, &payload)
    {
        record.store_errors.push(format!("{e:#}"));
    }
    let plan = inputs.plan;
    record.evaluations_run.push(format!(
        "{}/{}/{}",
        plan.pipeline, plan.target.name, plan.model.name
    ));
    store_and_log.log(db).append(record);
    Arc::new(evaluated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headline_reads_top1_and_averages_output_means() {
        let evaluation = UnitEvaluation {
            report: serde_json::json!({
                "samples": 4,
                "metrics": {
                    "top1": { "float": { "accuracy": 0.75 }, "quantized": { "accuracy": 0.5 } },
                    "outputs": [ { "sqnr_db_mean": 20.0 }, { "sqnr_db_mean": 30.0 } ],
                },
            }),
            html: String::new(),
            summary: String::new(),
        };
        let headline = evaluation.headline();
        assert_eq!(headline["top1_float"], 0.75);
        assert_eq!(headline["top1_quantized"], 0.5);
        assert_eq!(headline["output_sqnr_db_mean"], 25.0);

        let unlabelled = UnitEvaluation {
            report: serde_json::json!({ "samples": 1, "metrics": { "top1": null, "outputs": [] } }),
            ..evaluation
        };
        let headline = unlabelled.headline();
        assert!(headline["top1_float"].is_null());
        assert!(headline["output_sqnr_db_mean"].is_null());
    }
}
