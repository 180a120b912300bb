//! The engine's cache contract: every kind of store entry the build writes, declared once in
//! [`KINDS`] with its version, its payload form and the fields of its key, and the lookups that
//! read entries back with the work log recording what went wrong (a damaged entry is a miss and
//! a report, never a failure).
//!
//! The key tables in `ARCHITECTURE.md` and `book/src/cache.md` are [`markdown_table`]'s output
//! (`tests/cache_contract.rs` fails when they drift), and every [`KeyBuilder`] started from a
//! registered kind checks, in debug builds, that the fields it is given are the declared ones.
//! So a new stage that keys an entry on something the table does not name fails its tests.

use super::log::WorkLog;
use crate::store::{Digest, GetOutcome, Kind, Store};

/// The float runtime, with its exact version from `Cargo.lock` (read by `build.rs`): part of
/// every key whose value the executor computes (another tract may round differently).
pub use crate::run::RUNTIME;

/// How an entry's payload is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// `serde_json`, of the named type.
    Json(&'static str),
    /// A little-endian byte form (`crate::bytes`), by the named codec.
    Binary(&'static str),
}

/// One key field: its name as hashed into the key, and what its value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The name given to [`KeyBuilder`].
    pub name: &'static str,
    /// What the value is (rendered into the documentation tables).
    pub value: &'static str,
}

/// One kind of store entry, as the documentation tables show it.
#[derive(Debug, Clone, Copy)]
pub struct KindSpec {
    /// The kind (name and version).
    pub kind: Kind,
    /// What one entry holds.
    pub holds: &'static str,
    /// The payload's form.
    pub payload: Payload,
    /// The key's fields, in the order they are added (a field written "per …" repeats).
    pub fields: &'static [Field],
    /// Why the key is exactly these fields.
    pub why: &'static str,
}

const fn field(name: &'static str, value: &'static str) -> Field {
    Field { name, value }
}

const fn names<const N: usize>(fields: &[Field; N]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = fields[i].name;
        i += 1;
    }
    out
}

const STATISTICS_FIELDS: [Field; 5] = [
    field(
        "model",
        "digest of the ONNX bytes calibration runs (after `input_dims` are fixed, and after the weights are fake-quantized when the target calibrates with quantized weights)",
    ),
    field("runtime", "the float runtime and its exact version"),
    field("histogram", "whether histograms are collected"),
    field(
        "input",
        "per file of the sample, in the order the input-list line gives them: the input name (empty for a bare path)",
    ),
    field("file", "and the digest of the file's bytes"),
];
const STATISTICS_NAMES: [&str; 5] = names(&STATISTICS_FIELDS);
/// Statistics of every activation over one calibration sample.
pub const STATISTICS: Kind = Kind::new("statistics", 5).keyed_by(&STATISTICS_NAMES);

const INPUT_MEANS_FIELDS: [Field; 5] = [
    field("version", "the transforms' version"),
    field(
        "model",
        "digest of the model measured (the one bias correction corrects)",
    ),
    field("runtime", "the float runtime and its exact version"),
    field(
        "input",
        "per file of the sample, in the order the input-list line gives them: the input name (empty for a bare path)",
    ),
    field("file", "and the digest of the file's bytes"),
];
const INPUT_MEANS_NAMES: [&str; 5] = names(&INPUT_MEANS_FIELDS);
/// Every correctable layer's mean input patch over one calibration sample.
pub const INPUT_MEANS: Kind = Kind::new("input-means", 1).keyed_by(&INPUT_MEANS_NAMES);

const TRANSFORMED_MODELS_FIELDS: [Field; 6] = [
    field("transform", "`cle` or `bias_correction`"),
    field("version", "the transforms' version"),
    field("runtime", "the float runtime and its exact version"),
    field(
        "model",
        "*cle*: digest of the ONNX file; *bias_correction*: digest of the model it corrects",
    ),
    field(
        "inputs",
        "*cle*: stable digest of the `input_dims`; *bias_correction*: of its samples' `input-means` keys, in list order",
    ),
    field(
        "settings",
        "*cle*: stable digest of its options; *bias_correction*: of the quantizer settings and the target's overrides (the weight encodings)",
    ),
];
const TRANSFORMED_MODELS_NAMES: [&str; 6] = names(&TRANSFORMED_MODELS_FIELDS);
/// A model transformed (equalized or bias-corrected), with its report.
pub const TRANSFORMED_MODELS: Kind =
    Kind::new("transformed-models", 1).keyed_by(&TRANSFORMED_MODELS_NAMES);

/// Version of what AdaRound computes for a layer and how its entry is laid out; bump when
/// either changes, so older entries are never read back.
pub const ADAROUND_VERSION: u64 = 2;

const ADAROUND_LAYERS_FIELDS: [Field; 9] = [
    field("version", "AdaRound's version"),
    field("runtime", "the float runtime and its exact version"),
    field(
        "model",
        "digest of the model AdaRound starts from (the source, equalized or bias-corrected model)",
    ),
    field("input_dims", "stable digest of the `input_dims`"),
    field("layer", "the layer's output tensor"),
    field("weight", "blake3 of the layer's float weight values"),
    field(
        "settings",
        "stable digest of the layer's frozen weight encoding (with its channel axis), `num_iterations` and `seed`",
    ),
    field(
        "samples",
        "stable digest of the selected calibration samples' files (input names and digests), in list order",
    ),
    field(
        "upstream",
        "the `adaround-layers` keys of the AdaRounded layers upstream of the layer's input, in node order",
    ),
];
const ADAROUND_LAYERS_NAMES: [&str; 9] = names(&ADAROUND_LAYERS_FIELDS);
/// One layer's AdaRounded weights.
pub const ADAROUND_LAYERS: Kind = Kind::new("adaround-layers", 1).keyed_by(&ADAROUND_LAYERS_NAMES);

const MERGED_FIELDS: [Field; 2] = [
    field("samples", "their count"),
    field("sample", "per sample, in list order, its `statistics` key"),
];
const MERGED_NAMES: [&str; 2] = names(&MERGED_FIELDS);
/// Statistics merged over every sample of a calibration set.
pub const MERGED_STATISTICS: Kind = Kind::new("merged-statistics", 5).keyed_by(&MERGED_NAMES);

const ENCODINGS_FIELDS: [Field; 13] = [
    field("tensor", "the tensor's name"),
    field(
        "settings",
        "stable digest of the target's quantizer settings",
    ),
    field(
        "override",
        "stable digest of this tensor's override (or of none)",
    ),
    field(
        "role",
        "`activation`, `parameter`, `bias`, `shared` or `float fallback`; then by role",
    ),
    field(
        "statistics",
        "*activation*: stable digest of the range (`f32` bits) and non-finite counts when there is no histogram, of the whole statistics otherwise",
    ),
    field("values", "*parameter*, *bias*: blake3 of the `f32` values"),
    field(
        "layout",
        "*parameter*: stable digest of shape, role and the consumers' op types (per-channel/per-row choice); *bias*: of shape and role",
    ),
    field("input", "*bias*: stable digest of its op's input encoding"),
    field(
        "weight",
        "*bias*: stable digest of its op's weight encoding",
    ),
    field(
        "source",
        "*shared* (data movement): stable digest of the source's encoding",
    ),
    field(
        "model",
        "*float fallback*: digest of the model (of the transformed model's bytes when the target transforms it)",
    ),
    field(
        "input_dims",
        "*float fallback*: stable digest of the `input_dims`",
    ),
    field(
        "overrides",
        "*float fallback*: stable digest of the unit's merged overrides",
    ),
];
const ENCODINGS_NAMES: [&str; 13] = names(&ENCODINGS_FIELDS);
/// The encoding of one tensor.
pub const ENCODINGS: Kind = Kind::new("encodings", 3).keyed_by(&ENCODINGS_NAMES);

/// Version of what an evaluation computes and how its store entry is laid out; bump when
/// either changes, so older entries are never read back.
pub const EVALUATION_VERSION: u32 = 2;

const EVALUATIONS_FIELDS: [Field; 11] = [
    field("version", "the evaluation's version"),
    field(
        "rounding",
        "the simulation's rounding: `onnx`, or `aimet` for a target with a quantsim config",
    ),
    field("runtime", "the float runtime and its exact version"),
    field(
        "model",
        "digest of the float ONNX file (of the transformed model's bytes when the target transforms it; with bias correction, stable digest of the corrected and the uncorrected model's, the float side of the comparison)",
    ),
    field("input_dims", "stable digest of the `input_dims`"),
    field("encodings", "blake3 of the unit's `encodings.json`"),
    field("list", "digest of the eval input list"),
    field("sample", "digest of each eval sample file, in list order"),
    field(
        "labels",
        "stable digest of the labels file's digest (or none)",
    ),
    field(
        "calibration_ranges",
        "stable digest of the calibration ranges the report shows",
    ),
    field(
        "context",
        "stable digest of the names the report prints (target, model, files)",
    ),
];
const EVALUATIONS_NAMES: [&str; 11] = names(&EVALUATIONS_FIELDS);
/// A unit's finished evaluation.
pub const EVALUATIONS: Kind =
    Kind::new("evaluations", EVALUATION_VERSION).keyed_by(&EVALUATIONS_NAMES);

const RUN_STRUCTURES_FIELDS: [Field; 4] = [
    field("runtime", "the float runtime and its exact version"),
    field(
        "model",
        "digest of the ONNX file (of the transformed model's bytes when transformed)",
    ),
    field("input_dims", "stable digest of the `input_dims`"),
    field(
        "parameters",
        "for a simulation: digest of the parameter encodings it fake-quantizes and of the rounding it fake-quantizes them with",
    ),
];
const RUN_STRUCTURES_NAMES: [&str; 4] = names(&RUN_STRUCTURES_FIELDS);
/// How a tract plan's values depend on the simulation hook's rewrites.
pub const RUN_STRUCTURES: Kind = Kind::new("run-structures", 1).keyed_by(&RUN_STRUCTURES_NAMES);

const FLOAT_TRACES_FIELDS: [Field; 5] = [
    field("runtime", "the float runtime and its exact version"),
    field(
        "model",
        "digest of the ONNX file (of the transformed model's bytes when transformed)",
    ),
    field("input_dims", "stable digest of the `input_dims`"),
    field("input", "per file of the sample: the input name"),
    field("file", "and the file's digest"),
];
const FLOAT_TRACES_NAMES: [&str; 5] = names(&FLOAT_TRACES_FIELDS);
/// What one eval sample's float run measured.
pub const FLOAT_TRACES: Kind = Kind::new("eval-float-traces", 1).keyed_by(&FLOAT_TRACES_NAMES);

const FLOAT_TOTALS_FIELDS: [Field; 2] = [
    field("samples", "their count"),
    field(
        "sample",
        "each sample's `eval-float-traces` key, in list order",
    ),
];
const FLOAT_TOTALS_NAMES: [&str; 2] = names(&FLOAT_TOTALS_FIELDS);
/// The float side of a whole eval list.
pub const FLOAT_TOTALS: Kind = Kind::new("eval-float-totals", 1).keyed_by(&FLOAT_TOTALS_NAMES);

const SIM_TRACES_FIELDS: [Field; 7] = [
    field("runtime", "the float runtime and its exact version"),
    field(
        "model",
        "digest of the ONNX file (of the transformed model's bytes when transformed)",
    ),
    field("input_dims", "stable digest of the `input_dims`"),
    field(
        "parameters",
        "digest of the parameter encodings the simulation fake-quantizes",
    ),
    field("pipeline", "the `[pipeline] name`"),
    field("target", "the target's name"),
    field("model_name", "the model's name"),
];
const SIM_TRACES_NAMES: [&str; 7] = names(&SIM_TRACES_FIELDS);
/// One unit's simulation traces, one per eval sample.
pub const SIM_TRACES: Kind = Kind::new("eval-sim-traces", 2)
    .keyed_by(&SIM_TRACES_NAMES)
    .machine_local();

const FILE_STAMPS_FIELDS: [Field; 1] = [field("index", "a constant: one entry per store")];
const FILE_STAMPS_NAMES: [&str; 1] = names(&FILE_STAMPS_FIELDS);
/// The stamp index of the files a store's builds read.
pub const FILE_STAMPS: Kind = Kind::new("file-stamps", 1)
    .keyed_by(&FILE_STAMPS_NAMES)
    .machine_local();

const UNIT_FIELDS: [Field; 3] = [
    field("pipeline", "the `[pipeline] name`"),
    field("target", "the target's name"),
    field("model", "the model's name"),
];
const UNIT_NAMES: [&str; 3] = names(&UNIT_FIELDS);
/// What a unit's last build read and produced, for `--explain`.
pub const BUILD_RECORD: Kind = Kind::new("build-record", 1)
    .keyed_by(&UNIT_NAMES)
    .machine_local();
/// A unit's last successful build.
pub const UNIT_STATE: Kind = Kind::new("unit-state", 3)
    .keyed_by(&UNIT_NAMES)
    .machine_local();

/// Every kind of entry the build writes, in data-flow order.
pub const KINDS: &[KindSpec] = &[
    KindSpec {
        kind: TRANSFORMED_MODELS,
        holds: "a transformed float model (cross-layer equalized, or bias-corrected) and its report lines",
        payload: Payload::Binary("report lines, then the ONNX bytes, length-prefixed"),
        fields: &TRANSFORMED_MODELS_FIELDS,
        why: "a transform is a pure function of the model and its settings (and, for bias correction, of the measured means and the weight encodings); its output's own digest, not this key, names the model for every later stage, so a transform that lands on the same bytes spares them all",
    },
    KindSpec {
        kind: STATISTICS,
        holds: "min/max statistics (and histograms, when collected) of every activation over one calibration sample, with the activation names",
        payload: Payload::Binary("activation names, then `stats::encode_all`"),
        fields: &STATISTICS_FIELDS,
        why: "the activations depend on the model bytes, its fixed shapes (in the bytes), the sample's contents and the executor; names of files never enter. The byte codec is exact, histograms included, so every calibration method's statistics survive the process",
    },
    KindSpec {
        kind: INPUT_MEANS,
        holds: "for every layer bias correction can correct (Conv, ConvTranspose, Gemm with constant weights): its output name and the mean, over one sample's positions, of each input element its weights multiply",
        payload: Payload::Binary("per layer: name, then the `f64` sums, length-prefixed"),
        fields: &INPUT_MEANS_FIELDS,
        why: "what one sample's float run through the model measures, like `statistics`; the means of a list are their average, so a new sample runs alone",
    },
    KindSpec {
        kind: ADAROUND_LAYERS,
        holds: "one layer's AdaRound result: its AdaRounded weight values (each exactly a point of the frozen encoding's grid) and what the optimization changed (weights flipped, reconstruction before and after)",
        payload: Payload::Binary("the weights as `f32`, then the counts and losses"),
        fields: &ADAROUND_LAYERS_FIELDS,
        why: "a layer's result is a function of its weights, its frozen encoding and the optimizer's settings, and of its input moments, which depend on the model, the samples and the layers upstream whose rounding feeds its quantized input (their keys, so a change upstream reaches it and a change elsewhere does not). Activation overrides and ignored layers elsewhere never enter: the runs measure no quantized activation",
    },
    KindSpec {
        kind: MERGED_STATISTICS,
        holds: "the statistics of a calibration set, merged over its samples in list order, with the activation names, and which samples fed NaN or infinite values to which inputs (for the warnings)",
        payload: Payload::Binary(
            "the `statistics` form, length-prefixed, then each sample input that held NaN or infinite values: sample, input, counts",
        ),
        fields: &MERGED_FIELDS,
        why: "exactly what the merge reads: the per-sample entries it is made of. A fresh process that re-encodes after an override edit reads this one entry instead of every sample's; adding, removing or reordering a sample changes the key",
    },
    KindSpec {
        kind: ENCODINGS,
        holds: "the encoding of one tensor and the warnings it raised",
        payload: Payload::Json("StoredTensorEntry"),
        fields: &ENCODINGS_FIELDS,
        why: "exactly what the encoding math reads. The settings are the quantizer's own type, which holds no manifest names. Keying an activation on its range rather than its sample count means a new sample inside every range re-encodes nothing",
    },
    KindSpec {
        kind: EVALUATIONS,
        holds: "one unit's evaluation (float vs QuantSim on its eval set): the report's JSON, its HTML and its terminal summary",
        payload: Payload::Json("UnitEvaluation"),
        fields: &EVALUATIONS_FIELDS,
        why: "the evaluation is a pure function of the model, the encodings and the eval data; any override edit changes the encodings digest and re-runs it",
    },
    KindSpec {
        kind: RUN_STRUCTURES,
        holds: "how a tract plan's values depend on the QuantSim hook's rewrites: per activation, the activations upstream of it and those rewritten at the same node, which are terminal (nothing reads them), and which activation each model output is",
        payload: Payload::Json("RunStructure"),
        fields: &RUN_STRUCTURES_FIELDS,
        why: "a function of the plan tract builds from exactly these; stored so an evaluation that needs no run loads no model into tract",
    },
    KindSpec {
        kind: FLOAT_TRACES,
        holds: "what one eval sample's float run measured: per activation Σf², the value count, range and histogram; the values of terminal activations; the model's outputs",
        payload: Payload::Binary("`FloatTrace::encode`"),
        fields: &FLOAT_TRACES_FIELDS,
        why: "the float run depends on nothing else; shared by every target evaluating the same model on the same sample",
    },
    KindSpec {
        kind: FLOAT_TOTALS,
        holds: "the float side of a whole eval list: the float traces' measurements summed in list order, and each sample's terminal values and outputs",
        payload: Payload::Binary("`FloatTotals::encode`"),
        fields: &FLOAT_TOTALS_FIELDS,
        why: "exactly what it is made of. An evaluation that runs no sample reads this one entry instead of a float trace per sample",
    },
    KindSpec {
        kind: SIM_TRACES,
        holds: "one unit's simulation traces, one per eval sample (filed under its `eval-float-traces` key): each activation's Σ(f−q)² and clipped count under the digest of every encoding its value depends on; the values terminal activations had before fake quantization; the simulated outputs",
        payload: Payload::Binary("sample keys, then `SimTrace::encode`"),
        fields: &SIM_TRACES_FIELDS,
        why: "the names give each unit one entry to start its next evaluation from, as `unit-state` does; whether a tensor's numbers are reused is decided by the digests inside, not by the key",
    },
    KindSpec {
        kind: FILE_STAMPS,
        holds: "for every file the store's builds read: its stamp (size, modification and change times, inode, device) when read, the blake3 digest of what was read, and when the read began",
        payload: Payload::Json("Vec<(PathBuf, StampedDigest)>"),
        fields: &FILE_STAMPS_FIELDS,
        why: "an index of this machine's files, so paths are its subject. A build takes a file at its recorded digest without reading it when the stamp is unchanged and the file had settled (last changed more than 2 s) before the recorded read; its bytes are read only if something needs them, and checked against the digest then",
    },
    KindSpec {
        kind: BUILD_RECORD,
        holds: "what a unit's last build read (input → digest) and produced (tensor → encoding digest)",
        payload: Payload::Json("BuildRecord"),
        fields: &UNIT_FIELDS,
        why: "used only by `--explain` to say which edit caused the work; never to decide what to compute",
    },
    KindSpec {
        kind: UNIT_STATE,
        holds: "a unit's last successful build: its fingerprint, the blake3 digest of each output file (or \"not written\"), its encodings and its evaluation",
        payload: Payload::Binary("`StoredUnitState::encode`"),
        fields: &UNIT_FIELDS,
        why: "lets the next build skip a unit whose inputs and outputs are exactly as it left them; the fingerprint inside, not the key, decides",
    },
];

/// The registry as the Markdown table the documentation carries.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| kind | version | payload | one entry holds | key fields, in order | why these fields |\n\
         |------|---------|---------|-----------------|----------------------|------------------|\n",
    );
    for spec in KINDS {
        let payload = match spec.payload {
            Payload::Json(of) => format!("JSON ({of})"),
            Payload::Binary(of) => format!("binary ({of})"),
        };
        let fields: Vec<String> = spec
            .fields
            .iter()
            .map(|f| format!("**{}**: {}", f.name, f.value))
            .collect();
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} |\n",
            spec.kind.name(),
            spec.kind.version(),
            payload,
            spec.holds,
            fields.join(" · "),
            spec.why,
        ));
    }
    out
}

/// Looks an entry up, recording corruption and store errors in the log; `None` unless a hit.
pub(super) fn lookup_bytes(
    store: &Store,
    log: &WorkLog,
    kind: Kind,
    key: &Digest,
) -> Option<Vec<u8>> {
    match store.get(kind, key) {
        Ok(GetOutcome::Hit(bytes)) => Some(bytes),
        Ok(GetOutcome::Miss) => None,
        Ok(GetOutcome::Corrupt(corruption)) => {
            log.with(|r| r.corruptions.push(corruption));
            None
        }
        Err(e) => {
            log.with(|r| r.store_errors.push(format!("{e:#}")));
            None
        }
    }
}

/// [`lookup_bytes`] for a JSON payload.
pub(super) fn lookup<T: serde::de::DeserializeOwned>(
    store: &Store,
    log: &WorkLog,
    kind: Kind,
    key: &Digest,
) -> Option<T> {
    match store.get_json::<T>(kind, key) {
        Ok(GetOutcome::Hit(value)) => Some(value),
        Ok(GetOutcome::Miss) => None,
        Ok(GetOutcome::Corrupt(corruption)) => {
            log.with(|r| r.corruptions.push(corruption));
            None
        }
        Err(e) => {
            log.with(|r| r.store_errors.push(format!("{e:#}")));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_distinct_and_declare_their_fields() {
        let mut seen = std::collections::BTreeSet::new();
        for spec in KINDS {
            assert!(seen.insert(spec.kind.name()), "{} twice", spec.kind.name());
            assert!(!spec.fields.is_empty(), "{} has no key fields", spec.kind);
            let declared: Vec<&str> = spec.fields.iter().map(|f| f.name).collect();
            assert_eq!(spec.kind.fields(), declared.as_slice(), "{}", spec.kind);
        }
    }
}
