//! What a unit's last build left for the next one, kept in the store: the stamp index that
//! lets a build trust a settled file's digest without reading it, the unit state that lets an
//! unchanged unit skip its build entirely, and the build record `--explain` compares with.
//!
//! Unlike store keys these entries hold paths: they describe *this* checkout's files, like
//! cargo's fingerprints, so a moved project simply builds once from the store.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cache::{BUILD_RECORD, ENCODINGS, FILE_STAMPS, STATISTICS, UNIT_STATE};
use super::db::{Database, Db};
use super::encode::UnitEncodings;
use super::error::display_path;
use super::evaluate::UnitEvaluation;
use super::explain::{self, BuildRecord, Explanation};
use super::inputs::source_file;
use super::keys::{BuildContext, Unit};
use super::log::WorkRecord;
use super::outcome::{ProjectSpec, UnitDone};
use super::plan::{UnitPlan, plan_of, unit_eval_set};
use super::samples::input_list;
use super::source::StampedDigest;
use super::stored::{Reader, Writer, stable_digest};
use crate::encoding::Bitwidth;
use crate::export::aimet::QuantizerArgs;
use crate::manifest::ResolvedEval;
use crate::store::{Corruption, Digest, GetOutcome, KeyBuilder};

/// Most records the index keeps: this build's, then earlier ones by path.
const MAX_STAMPS: usize = 100_000;

fn stamps_key() -> Digest {
    KeyBuilder::new(FILE_STAMPS)
        .str("index", "files read by this store's builds")
        .finish()
}

/// Each distinct store of the projects (projects sharing a store share a context).
pub(super) fn distinct_stores(
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
pub(super) fn load_stamps(db: &Database, stores: &[(crate::store::Store, BuildContext)]) {
    for (store, context) in stores {
        match store.get_json::<StampIndex>(FILE_STAMPS, &stamps_key()) {
            Ok(GetOutcome::Hit(records)) => db.files().add_stamps(records),
            Ok(GetOutcome::Corrupt(corruption)) => context_log_corruption(db, *context, corruption),
            Ok(GetOutcome::Miss) | Err(_) => {}
        }
    }
}

/// Writes this build's stamp records into each store's index, unless it holds them already.
pub(super) fn save_stamps(db: &Database, stores: &[(crate::store::Store, BuildContext)]) {
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
    let eval = unit_eval_set(db, unit);
    let files = unit_inputs(db, plan, eval.as_ref())?;
    let digests = files
        .iter()
        .map(|path| Some((path.as_path(), source_file(db, path).digest(db)?)))
        .collect::<Option<Vec<_>>>()?;
    let versions = (
        env!("CARGO_PKG_VERSION"),
        UNIT_STATE.version(),
        ENCODINGS.version(),
        STATISTICS.version(),
        super::evaluate::EVALUATION_VERSION,
        super::cache::TRANSFORMED_MODELS.version(),
        super::model::TRANSFORM_VERSION,
        super::cache::ADAROUND_VERSION,
    );
    let cwd = std::env::current_dir().ok();
    Some(stable_digest(&(versions, cwd, plan, &eval, digests)))
}

/// Every file a unit reads: model, overrides, input lists and their samples, the eval set's
/// list, samples and labels. `None` when an input list cannot be parsed.
pub(super) fn unit_inputs(
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
        let parsed = input_list(db, source_file(db, list)).as_ref().ok()?;
        files.push(list.to_path_buf());
        for sample in &parsed.samples {
            files.extend(sample.files.iter().map(|f| f.path.clone()));
        }
    }
    Some(files)
}

/// The unit, finished, when its last build had the same fingerprint and every output file
/// still holds exactly the bytes that build wrote (and the files it did not write are absent).
pub(super) fn fresh_unit(db: &Database, unit: Unit<'_>) -> Option<UnitDone> {
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
        evaluated: false,
    })
}

/// Records a unit's successful build for [`fresh_unit`]. Best effort: without the entry the
/// next build is an ordinary one.
pub(super) fn save_unit_state(
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

/// The label of an input in records and explanations: relative to the manifest's folder.
fn label(plan: &UnitPlan, path: &Path) -> String {
    path.strip_prefix(&plan.root)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| display_path(path))
}

/// This build's record of a unit, compared with the stored one (which it then replaces).
pub(super) fn record_and_explain(
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
        if let Ok(parsed) = input_list(db, source_file(db, list)) {
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

/// What a unit's last successful build produced, kept so that the next build of the same
/// inputs can skip the unit entirely: the digest of every input it read (the fingerprint), the
/// digest of each output file (`None`: the unit does not write that file), and what the build
/// reports about the unit (its encodings and its evaluation, as JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredUnitState {
    /// Digest of everything the unit's outputs depend on (see `pipeline::unit_fingerprint`).
    pub fingerprint: Digest,
    /// Output file name → blake3 of its bytes, or `None` when the unit must not have it.
    pub outputs: Vec<(String, Option<Digest>)>,
    /// The unit's encodings.
    pub encodings: UnitEncodings,
    /// The unit's evaluation (`UnitEvaluation` as JSON), when its target has one.
    pub evaluation: Option<String>,
}

impl StoredUnitState {
    /// The payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Writer(&mut out);
        w.digest(&self.fingerprint);
        w.count(self.outputs.len());
        for (name, digest) in &self.outputs {
            w.prefixed_str(name);
            match digest {
                Some(digest) => {
                    w.u8(1);
                    w.digest(digest);
                }
                None => w.u8(0),
            }
        }
        let e = &self.encodings;
        w.section(&e.activations);
        w.section(&e.parameters);
        let args = &e.quantizer_args;
        w.u64(u64::from(args.activation_bitwidth.bits()));
        w.u64(u64::from(args.param_bitwidth.bits()));
        w.u8(u8::from(args.is_symmetric));
        w.u8(u8::from(args.per_channel_quantization));
        w.prefixed_str(&args.quant_scheme);
        w.strings(&e.warnings);
        w.u8(u8::from(e.float));
        w.u64(e.samples as u64);
        w.u64(e.computed_tensors as u64);
        w.u64(e.adaround_layers as u64);
        match &self.evaluation {
            Some(json) => {
                w.u8(1);
                w.prefixed_str(json);
            }
            None => w.u8(0),
        }
        out
    }

    /// Reads [`StoredUnitState::encode`]'s bytes back; `None` when they are not exactly that.
    pub fn decode(bytes: &[u8]) -> Option<StoredUnitState> {
        let mut r = Reader(bytes);
        let fingerprint = r.digest()?;
        let n = r.count(9)?;
        let outputs = (0..n)
            .map(|_| {
                let name = r.string()?;
                let digest = match r.u8()? {
                    0 => None,
                    1 => Some(r.digest()?),
                    _ => return None,
                };
                Some((name, digest))
            })
            .collect::<Option<Vec<_>>>()?;
        let activations = r.section()?;
        let parameters = r.section()?;
        let bitwidth = |n: u64| Bitwidth::new(u32::try_from(n).ok()?).ok();
        let quantizer_args = QuantizerArgs {
            activation_bitwidth: bitwidth(r.u64()?)?,
            param_bitwidth: bitwidth(r.u64()?)?,
            is_symmetric: r.u8()? != 0,
            per_channel_quantization: r.u8()? != 0,
            quant_scheme: r.string()?,
        };
        let warnings = r.strings()?;
        let float = r.u8()? != 0;
        let samples = usize::try_from(r.u64()?).ok()?;
        let computed_tensors = usize::try_from(r.u64()?).ok()?;
        let adaround_layers = usize::try_from(r.u64()?).ok()?;
        let evaluation = match r.u8()? {
            0 => None,
            1 => Some(r.string()?),
            _ => return None,
        };
        r.0.is_empty().then_some(StoredUnitState {
            fingerprint,
            outputs,
            encodings: UnitEncodings {
                activations,
                parameters,
                quantizer_args,
                warnings,
                float,
                samples,
                computed_tensors,
                adaround_layers,
            },
            evaluation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::tensor::FloatBitwidth;
    use crate::encoding::{Encoding, Schema};
    use crate::overrides::FixedEncoding;

    #[test]
    fn unit_states_round_trip_exactly() {
        let e = Encoding::from_range(-1.0, 3.0, Bitwidth::B8, Schema::Asymmetric).unwrap();
        let state = StoredUnitState {
            fingerprint: Digest::from_bytes([7; 32]),
            outputs: vec![
                (
                    "encodings.json".to_string(),
                    Some(Digest::from_bytes([1; 32])),
                ),
                ("report.html".to_string(), None),
            ],
            encodings: UnitEncodings {
                activations: BTreeMap::from([
                    ("x".to_string(), FixedEncoding::PerTensor(e)),
                    ("y".to_string(), FixedEncoding::Float(FloatBitwidth::F16)),
                ]),
                parameters: BTreeMap::from([(
                    "w".to_string(),
                    FixedEncoding::PerChannel(vec![e, e]),
                )]),
                quantizer_args: QuantizerArgs::default(),
                warnings: vec!["a warning".to_string()],
                float: false,
                samples: 8,
                computed_tensors: 3,
                adaround_layers: 2,
            },
            evaluation: Some("{\"samples\": 2}".to_string()),
        };
        let bytes = state.encode();
        assert_eq!(StoredUnitState::decode(&bytes), Some(state));
        for cut in 0..bytes.len() {
            assert_eq!(StoredUnitState::decode(&bytes[..cut]), None, "cut at {cut}");
        }
    }
}
