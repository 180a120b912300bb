//! The raw manifest: what the user typed, typed and checked key by key, with every span kept.
//!
//! This stage checks TOML syntax, unknown keys, value types and value ranges, and the conflicts
//! between a qairt-quantizer option and its legacy alias within one table. It must not follow
//! references, apply `extends`, consult the backend table or touch the file system: that is
//! `resolve`'s job.

use std::ops::Range;
use std::sync::Arc;

use miette::NamedSource;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostic::ManifestDiagnostic;
use super::{
    Backend, CalibrationMethod, EncodingVersion, FloatBitwidth, LegacyQuantizer, Percentile,
};
use crate::adaround::AdaroundConfig;
use crate::encoding::{Bitwidth, Schema};
use crate::transform::Algorithms;

/// A value the user wrote for a key, with the spelling of the key they used (canonical name or
/// legacy alias) and both spans, so later checks can point at either.
#[derive(Debug, Clone, PartialEq)]
pub struct Given<T> {
    /// The value.
    pub value: T,
    /// The key as written (`act_bitwidth` or `act_bw`, ...).
    pub key: &'static str,
    /// Byte range of the key.
    pub key_span: Range<usize>,
    /// Byte range of the value.
    pub value_span: Range<usize>,
}

/// A whole manifest as typed.
#[derive(Debug, Clone)]
pub struct RawManifest {
    /// `[pipeline]`.
    pub pipeline: RawPipeline,
    /// `[models.NAME]`, in file order.
    pub models: Vec<RawModel>,
    /// `[calibration.NAME]`, in file order.
    pub calibration: Vec<RawCalibration>,
    /// `[overrides.NAME]`, in file order.
    pub overrides: Vec<RawOverrides>,
    /// `[eval.NAME]`, in file order.
    pub eval: Vec<RawEval>,
    /// `[targets.NAME]`, in file order.
    pub targets: Vec<RawTarget>,
    /// `[workspace] members`, when the table is present.
    pub workspace_members: Option<Vec<Spanned<String>>>,
    /// `[cache]`, when the table is present.
    pub cache: Option<RawCache>,
    /// `(section, name)` of tables that already had a problem here; the resolver does not
    /// report their consequences again (a bad `backend` value is not also a missing one).
    pub(crate) invalid_tables: std::collections::BTreeSet<(&'static str, String)>,
}

impl RawManifest {
    pub(crate) fn is_invalid(&self, section: &'static str, name: &Spanned<String>) -> bool {
        self.invalid_tables
            .contains(&(section, name.get_ref().clone()))
    }
}

/// `[cache]`: the remote cache builds of this manifest (as the root) use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawCache {
    /// `remote`: the remote cache's URL.
    pub remote: Option<String>,
    /// `read_only`: read from the remote, upload nothing.
    pub read_only: bool,
}

/// `[pipeline]`.
#[derive(Debug, Clone, Default)]
pub struct RawPipeline {
    /// `name`.
    pub name: Option<Spanned<String>>,
    /// `out_dir`.
    pub out_dir: Option<Spanned<String>>,
    /// `encoding_version`.
    pub encoding_version: Option<Spanned<EncodingVersion>>,
}

/// `[models.NAME]`.
#[derive(Debug, Clone)]
pub struct RawModel {
    /// The table's name.
    pub name: Spanned<String>,
    /// `path` (required).
    pub path: Option<Spanned<String>>,
    /// `input_dims = { input = [dims] }`.
    pub input_dims: Vec<(Spanned<String>, Vec<u64>)>,
}

/// `[calibration.NAME]`.
#[derive(Debug, Clone)]
pub struct RawCalibration {
    /// The table's name.
    pub name: Spanned<String>,
    /// `input_list` (required).
    pub input_list: Option<Spanned<String>>,
}

/// `[overrides.NAME]`.
#[derive(Debug, Clone)]
pub struct RawOverrides {
    /// The table's name.
    pub name: Spanned<String>,
    /// `path` (required).
    pub path: Option<Spanned<String>>,
}

/// `[eval.NAME]`.
#[derive(Debug, Clone)]
pub struct RawEval {
    /// The table's name.
    pub name: Spanned<String>,
    /// `input_list` (required).
    pub input_list: Option<Spanned<String>>,
    /// `labels`.
    pub labels: Option<Spanned<String>>,
}

/// `[targets.NAME]` as typed, before `extends` is applied.
#[derive(Debug, Clone)]
pub struct RawTarget {
    /// The table's name.
    pub name: Spanned<String>,
    /// `backend`.
    pub backend: Option<Given<Backend>>,
    /// `models`.
    pub models: Option<Given<Vec<Spanned<String>>>>,
    /// `calibration`.
    pub calibration: Option<Given<String>>,
    /// `overrides`.
    pub overrides: Option<Given<Vec<Spanned<String>>>>,
    /// `evaluate`.
    pub evaluate: Option<Given<String>>,
    /// `extends`.
    pub extends: Option<Given<String>>,
    /// The qairt-quantizer options.
    pub options: RawQuantizerOptions,
}

/// The qairt-quantizer options of one target table. Legacy quantizer modes are already expanded
/// into calibration method and schema (the `key` of each [`Given`] still says `act_quantizer`).
#[derive(Debug, Clone, Default)]
pub struct RawQuantizerOptions {
    /// `act_bitwidth` / `act_bw`.
    pub act_bitwidth: Option<Given<Bitwidth>>,
    /// `weights_bitwidth` / `weight_bw`.
    pub weights_bitwidth: Option<Given<Bitwidth>>,
    /// `bias_bitwidth` / `bias_bw`.
    pub bias_bitwidth: Option<Given<Bitwidth>>,
    /// `float_bitwidth` / `float_bw`.
    pub float_bitwidth: Option<Given<FloatBitwidth>>,
    /// `float_bias_bitwidth` / `float_bias_bw`.
    pub float_bias_bitwidth: Option<Given<FloatBitwidth>>,
    /// `act_quantizer_calibration`, or from `act_quantizer`.
    pub act_calibration: Option<Given<CalibrationMethod>>,
    /// `param_quantizer_calibration`, or from `param_quantizer`.
    pub param_calibration: Option<Given<CalibrationMethod>>,
    /// `act_quantizer_schema`, or from `act_quantizer`.
    pub act_schema: Option<Given<Schema>>,
    /// `param_quantizer_schema`, or from `param_quantizer`.
    pub param_schema: Option<Given<Schema>>,
    /// `percentile_calibration_value`.
    pub percentile: Option<Given<Percentile>>,
    /// `use_per_channel_quantization`.
    pub per_channel: Option<Given<bool>>,
    /// `use_per_row_quantization`.
    pub per_row: Option<Given<bool>>,
    /// `ignore_quantization_overrides`.
    pub ignore_quantization_overrides: Option<Given<bool>>,
    /// `calibrate_with_quantized_weights`.
    pub calibrate_with_quantized_weights: Option<Given<bool>>,
    /// `algorithms`, each name checked.
    pub algorithms: Option<Given<Algorithms>>,
    /// `keep_io_types`: a float16 model's graph inputs and outputs stay float32.
    pub keep_io_types: Option<Given<bool>>,
    /// `enable_float_fallback` / `float_fallback`: no calibration; overrides give the
    /// encodings and every other tensor falls back to float.
    pub float_fallback: Option<Given<bool>>,
    /// `[targets.NAME.adaround]`: AdaRound's settings, the keys of its YAML config.
    pub adaround: Option<Given<AdaroundConfig>>,
    /// `quantsim_config`: an AIMET quantsim config file (relative to the manifest's folder) or
    /// a built-in config's name.
    pub quantsim_config: Option<Given<String>>,
}

impl RawQuantizerOptions {
    /// Every option that was given, as (key as written, key span): the keys a float backend
    /// rejects.
    pub fn given_keys(&self) -> Vec<(&'static str, Range<usize>)> {
        fn key<T>(given: &Option<Given<T>>) -> Option<(&'static str, Range<usize>)> {
            given.as_ref().map(|g| (g.key, g.key_span.clone()))
        }
        let mut keys: Vec<_> = [
            key(&self.act_bitwidth),
            key(&self.weights_bitwidth),
            key(&self.bias_bitwidth),
            key(&self.act_calibration),
            key(&self.param_calibration),
            key(&self.act_schema),
            key(&self.param_schema),
            key(&self.percentile),
            key(&self.per_channel),
            key(&self.per_row),
            key(&self.ignore_quantization_overrides),
            key(&self.calibrate_with_quantized_weights),
            key(&self.algorithms),
            key(&self.float_bias_bitwidth),
            key(&self.float_fallback),
            key(&self.adaround),
            key(&self.quantsim_config),
        ]
        .into_iter()
        .flatten()
        .collect();
        // A legacy quantizer fills two slots from one key.
        keys.sort_by_key(|(_, span)| span.start);
        keys.dedup_by_key(|(_, span)| span.start);
        keys
    }
}

/// Top-level tables.
const SECTIONS: &[&str] = &[
    "pipeline",
    "models",
    "calibration",
    "overrides",
    "eval",
    "targets",
    "workspace",
    "cache",
];
const PIPELINE_KEYS: &[&str] = &["name", "out_dir", "encoding_version"];
const MODEL_KEYS: &[&str] = &["path", "input_dims"];
const CALIBRATION_KEYS: &[&str] = &["input_list"];
const OVERRIDES_KEYS: &[&str] = &["path"];
const EVAL_KEYS: &[&str] = &["input_list", "labels"];
const WORKSPACE_KEYS: &[&str] = &["members"];
const CACHE_KEYS: &[&str] = &["remote", "read_only"];

/// Every key a target accepts: canonical qairt-quantizer names, then legacy aliases.
pub const TARGET_KEYS: &[&str] = &[
    "backend",
    "models",
    "calibration",
    "overrides",
    "evaluate",
    "extends",
    "act_bitwidth",
    "weights_bitwidth",
    "bias_bitwidth",
    "float_bitwidth",
    "float_bias_bitwidth",
    "act_quantizer_calibration",
    "param_quantizer_calibration",
    "act_quantizer_schema",
    "param_quantizer_schema",
    "percentile_calibration_value",
    "use_per_channel_quantization",
    "use_per_row_quantization",
    "ignore_quantization_overrides",
    "calibrate_with_quantized_weights",
    "quantsim_config",
    "algorithms",
    "keep_io_types",
    "enable_float_fallback",
    "adaround",
    "act_bw",
    "weight_bw",
    "bias_bw",
    "float_bw",
    "float_bias_bw",
    "float_fallback",
    "act_quantizer",
    "param_quantizer",
];

/// Collects problems for one manifest text.
pub(crate) struct Problems {
    pub(crate) source: NamedSource<Arc<str>>,
    pub(crate) list: Vec<ManifestDiagnostic>,
}

impl Problems {
    pub(crate) fn new(source: NamedSource<Arc<str>>) -> Self {
        Problems {
            source,
            list: Vec::new(),
        }
    }

    /// Starts a diagnostic; `push` it when complete.
    pub(crate) fn at(
        &self,
        code: &'static str,
        message: impl Into<String>,
        span: Range<usize>,
        label: impl Into<String>,
    ) -> ManifestDiagnostic {
        ManifestDiagnostic::new(&self.source, code, message, span, label)
    }

    pub(crate) fn push(&mut self, diagnostic: ManifestDiagnostic) {
        self.list.push(diagnostic);
    }
}

/// Edit distance between two short names, for "did you mean" suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// The candidate closest to `name`, if it is close enough to be a plausible typo.
pub(crate) fn nearest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, candidate)| (*distance, *candidate))
        .map(|(_, candidate)| candidate)
}

/// `did you mean `x`?` or, without a near candidate, the list of valid ones.
pub(crate) fn suggestion<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str> + Clone,
    what: &str,
) -> String {
    match nearest(name, candidates.clone()) {
        Some(near) => format!("did you mean `{near}`?"),
        None => {
            let all: Vec<String> = candidates.into_iter().map(|c| format!("`{c}`")).collect();
            if all.is_empty() {
                format!("no {what} is declared")
            } else {
                format!("valid {what}s: {}", all.join(", "))
            }
        }
    }
}

type Entry<'a, 'i> = (
    &'a Spanned<toml::de::DeString<'i>>,
    &'a Spanned<DeValue<'i>>,
);

/// The entries of `table` in file order, reporting keys not in `known`.
fn entries<'a, 'i>(
    problems: &mut Problems,
    table: &'a DeTable<'i>,
    known: &[&'static str],
    context: &str,
) -> Vec<(&'static str, Entry<'a, 'i>)> {
    let mut all: Vec<Entry<'a, 'i>> = table.iter().collect();
    all.sort_by_key(|(key, _)| key.span().start);
    let mut kept = Vec::new();
    for (key, value) in all {
        match known.iter().find(|k| **k == key.get_ref().as_ref()) {
            Some(name) => kept.push((*name, (key, value))),
            None => {
                let name = key.get_ref().as_ref();
                let help = suggestion(name, known.iter().copied(), "key");
                let diagnostic = problems
                    .at(
                        "quant::manifest::unknown_key",
                        format!("unknown key `{name}` in {context}"),
                        key.span(),
                        "not a key of this table",
                    )
                    .with_help(help);
                problems.push(diagnostic);
            }
        }
    }
    kept
}

fn type_error(
    problems: &mut Problems,
    key: &str,
    expected: &str,
    value: &Spanned<DeValue<'_>>,
    example: &str,
) {
    let found = value.get_ref().type_str();
    let diagnostic = problems
        .at(
            "quant::manifest::type",
            format!("`{key}` must be {expected}, not a {found}"),
            value.span(),
            format!("a {found}"),
        )
        .with_help(format!("write it like `{example}`"));
    problems.push(diagnostic);
}

fn string(
    problems: &mut Problems,
    key: &str,
    value: &Spanned<DeValue<'_>>,
    example: &str,
) -> Option<Spanned<String>> {
    match value.get_ref() {
        DeValue::String(s) => Some(Spanned::new(value.span(), s.to_string())),
        _ => {
            type_error(problems, key, "a string", value, example);
            None
        }
    }
}

fn integer(
    problems: &mut Problems,
    key: &str,
    value: &Spanned<DeValue<'_>>,
    example: &str,
) -> Option<i64> {
    match value.get_ref() {
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Some(n),
            Err(_) => {
                let diagnostic = problems
                    .at(
                        "quant::manifest::value",
                        format!("`{key}` is out of range"),
                        value.span(),
                        "too large",
                    )
                    .with_help(format!("write it like `{example}`"));
                problems.push(diagnostic);
                None
            }
        },
        _ => {
            type_error(problems, key, "an integer", value, example);
            None
        }
    }
}

fn number(
    problems: &mut Problems,
    key: &str,
    value: &Spanned<DeValue<'_>>,
    example: &str,
) -> Option<f64> {
    match value.get_ref() {
        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .map(|n| n as f64),
        _ => {
            type_error(problems, key, "a number", value, example);
            None
        }
    }
}

fn boolean(problems: &mut Problems, key: &str, value: &Spanned<DeValue<'_>>) -> Option<bool> {
    match value.get_ref() {
        DeValue::Boolean(b) => Some(*b),
        _ => {
            type_error(
                problems,
                key,
                "true or false",
                value,
                &format!("{key} = true"),
            );
            None
        }
    }
}

fn string_array(
    problems: &mut Problems,
    key: &str,
    value: &Spanned<DeValue<'_>>,
    example: &str,
) -> Option<Vec<Spanned<String>>> {
    let DeValue::Array(items) = value.get_ref() else {
        type_error(problems, key, "an array of strings", value, example);
        return None;
    };
    let mut out = Vec::new();
    for item in items.iter() {
        out.push(string(problems, &format!("{key}[..]"), item, example)?);
    }
    Some(out)
}

fn table<'a, 'i>(
    problems: &mut Problems,
    key: &str,
    value: &'a Spanned<DeValue<'i>>,
    help: &str,
) -> Option<&'a DeTable<'i>> {
    match value.get_ref() {
        DeValue::Table(t) => Some(t),
        other => {
            let diagnostic = problems
                .at(
                    "quant::manifest::type",
                    format!("`{key}` must be a table, not a {}", other.type_str()),
                    value.span(),
                    format!("a {}", other.type_str()),
                )
                .with_help(help.to_string());
            problems.push(diagnostic);
            None
        }
    }
}

fn bad_value(
    problems: &mut Problems,
    key: &str,
    shown: &str,
    span: Range<usize>,
    label: &str,
    help: String,
) {
    let diagnostic = problems
        .at(
            "quant::manifest::value",
            format!("invalid value {shown} for `{key}`"),
            span,
            label.to_string(),
        )
        .with_help(help);
    problems.push(diagnostic);
}

/// A name used as a folder under `out_dir`: letters, digits, `-`, `_`, `.`, not starting with `.`.
fn check_name(problems: &mut Problems, what: &str, name: &Spanned<String>) {
    let text = name.get_ref();
    let ok = !text.is_empty()
        && !text.starts_with('.')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        let diagnostic = problems
            .at(
                "quant::manifest::name",
                format!("{what} name `{text}` cannot be used as a folder name"),
                name.span(),
                "becomes a folder under out_dir",
            )
            .with_help("use ASCII letters, digits, `-`, `_` and `.`, not starting with `.`");
        problems.push(diagnostic);
    }
}

/// Parses and checks `text`; the caller has named it in `source`.
pub(crate) fn parse(problems: &mut Problems, text: &str) -> Option<RawManifest> {
    let document = match DeTable::parse(text) {
        Ok(document) => document,
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            let message = error.message().trim_end().to_string();
            let diagnostic = problems
                .at("quant::manifest::syntax", "invalid TOML", span, message)
                .with_help("fix the TOML syntax; see https://toml.io/en/v1.0.0");
            problems.push(diagnostic);
            return None;
        }
    };
    let mut raw = RawManifest {
        pipeline: RawPipeline::default(),
        models: Vec::new(),
        calibration: Vec::new(),
        overrides: Vec::new(),
        eval: Vec::new(),
        targets: Vec::new(),
        workspace_members: None,
        cache: None,
        invalid_tables: Default::default(),
    };
    for (section, (_key, value)) in entries(problems, document.get_ref(), SECTIONS, "the manifest")
    {
        match section {
            "pipeline" => {
                if let Some(t) = table(
                    problems,
                    section,
                    value,
                    "write `[pipeline]` followed by its keys",
                ) {
                    raw.pipeline = pipeline(problems, t);
                }
            }
            "workspace" => {
                if let Some(t) = table(
                    problems,
                    section,
                    value,
                    "write `[workspace]` followed by `members = [\"models/*\"]`",
                ) {
                    raw.workspace_members = workspace(problems, t);
                }
            }
            "cache" => {
                if let Some(t) = table(
                    problems,
                    section,
                    value,
                    "write `[cache]` followed by `remote = \"https://cache.example/quant\"`",
                ) {
                    raw.cache = Some(cache(problems, t));
                }
            }
            _ => {
                let example = format!("declare each entry as its own table: `[{section}.NAME]`");
                let Some(t) = table(problems, section, value, &example) else {
                    continue;
                };
                let mut named: Vec<_> = t.iter().collect();
                named.sort_by_key(|(key, _)| key.span().start);
                for (name, value) in named {
                    let name_spanned = Spanned::new(name.span(), name.get_ref().to_string());
                    let Some(inner) = table(
                        problems,
                        &format!("{section}.{}", name.get_ref()),
                        value,
                        &example,
                    ) else {
                        continue;
                    };
                    let before = problems.list.len();
                    match section {
                        "models" => {
                            check_name(problems, "model", &name_spanned);
                            raw.models.push(model(problems, name_spanned, inner));
                        }
                        "calibration" => {
                            raw.calibration
                                .push(calibration(problems, name_spanned, inner))
                        }
                        "overrides" => raw.overrides.push(overrides(problems, name_spanned, inner)),
                        "eval" => raw.eval.push(eval(problems, name_spanned, inner)),
                        _ => {
                            check_name(problems, "target", &name_spanned);
                            raw.targets.push(target(problems, name_spanned, inner));
                        }
                    }
                    if problems.list.len() != before {
                        let section = SECTIONS
                            .iter()
                            .find(|s| **s == section)
                            .copied()
                            .unwrap_or("targets");
                        raw.invalid_tables
                            .insert((section, name.get_ref().to_string()));
                    }
                }
            }
        }
    }
    Some(raw)
}

fn pipeline(problems: &mut Problems, t: &DeTable<'_>) -> RawPipeline {
    let mut out = RawPipeline::default();
    for (key, (_, value)) in entries(problems, t, PIPELINE_KEYS, "[pipeline]") {
        match key {
            "name" => out.name = string(problems, key, value, "name = \"text-orientation\""),
            "out_dir" => out.out_dir = string(problems, key, value, "out_dir = \"quant-out\""),
            _ => {
                let Some(version) = string(problems, key, value, "encoding_version = \"0.6.1\"")
                else {
                    continue;
                };
                match EncodingVersion::ALL
                    .into_iter()
                    .find(|v| v.as_str() == version.get_ref())
                {
                    Some(v) => out.encoding_version = Some(Spanned::new(version.span(), v)),
                    None => bad_value(
                        problems,
                        key,
                        &format!("\"{}\"", version.get_ref()),
                        version.span(),
                        "not an AIMET encodings version",
                        "use \"0.6.1\" (the default) or \"1.0.0\"".into(),
                    ),
                }
            }
        }
    }
    out
}

fn cache(problems: &mut Problems, t: &DeTable<'_>) -> RawCache {
    let mut out = RawCache::default();
    for (key, (_, value)) in entries(problems, t, CACHE_KEYS, "[cache]") {
        match key {
            "remote" => {
                out.remote = string(problems, key, value, "remote = \"s3://bucket/quant\"")
                    .map(Spanned::into_inner)
            }
            _ => out.read_only = boolean(problems, key, value).unwrap_or(false),
        }
    }
    out
}

fn workspace(problems: &mut Problems, t: &DeTable<'_>) -> Option<Vec<Spanned<String>>> {
    let mut members = Some(Vec::new());
    for (key, (_, value)) in entries(problems, t, WORKSPACE_KEYS, "[workspace]") {
        members = string_array(problems, key, value, "members = [\"models/*\"]");
    }
    members
}

fn model(problems: &mut Problems, name: Spanned<String>, t: &DeTable<'_>) -> RawModel {
    let mut out = RawModel {
        name,
        path: None,
        input_dims: Vec::new(),
    };
    let context = format!("[models.{}]", out.name.get_ref());
    for (key, (_, value)) in entries(problems, t, MODEL_KEYS, &context) {
        match key {
            "path" => out.path = string(problems, key, value, "path = \"models/cls.onnx\""),
            _ => {
                let example = "input_dims = { x = [1, 3, 48, 192] }";
                let Some(dims) = table(problems, key, value, &format!("write it like `{example}`"))
                else {
                    continue;
                };
                let mut inputs: Vec<_> = dims.iter().collect();
                inputs.sort_by_key(|(k, _)| k.span().start);
                for (input, shape) in inputs {
                    let label = format!("input_dims.{}", input.get_ref());
                    let DeValue::Array(items) = shape.get_ref() else {
                        type_error(problems, &label, "an array of dimensions", shape, example);
                        continue;
                    };
                    let mut out_dims = Vec::new();
                    for item in items.iter() {
                        let Some(n) = integer(problems, &label, item, example) else {
                            break;
                        };
                        if n < 1 {
                            bad_value(
                                problems,
                                &label,
                                &n.to_string(),
                                item.span(),
                                "dimensions are at least 1",
                                "give every dimension as a positive integer; this fixes the model's dynamic dims".into(),
                            );
                            break;
                        }
                        out_dims.push(n as u64);
                    }
                    if out_dims.len() == items.len() {
                        out.input_dims.push((
                            Spanned::new(input.span(), input.get_ref().to_string()),
                            out_dims,
                        ));
                    }
                }
            }
        }
    }
    out
}

fn calibration(problems: &mut Problems, name: Spanned<String>, t: &DeTable<'_>) -> RawCalibration {
    let mut out = RawCalibration {
        name,
        input_list: None,
    };
    let context = format!("[calibration.{}]", out.name.get_ref());
    for (key, (_, value)) in entries(problems, t, CALIBRATION_KEYS, &context) {
        out.input_list = string(
            problems,
            key,
            value,
            "input_list = \"calib/input_list.txt\"",
        );
    }
    out
}

fn overrides(problems: &mut Problems, name: Spanned<String>, t: &DeTable<'_>) -> RawOverrides {
    let mut out = RawOverrides { name, path: None };
    let context = format!("[overrides.{}]", out.name.get_ref());
    for (key, (_, value)) in entries(problems, t, OVERRIDES_KEYS, &context) {
        out.path = string(problems, key, value, "path = \"overrides/head.json\"");
    }
    out
}

fn eval(problems: &mut Problems, name: Spanned<String>, t: &DeTable<'_>) -> RawEval {
    let mut out = RawEval {
        name,
        input_list: None,
        labels: None,
    };
    let context = format!("[eval.{}]", out.name.get_ref());
    for (key, (_, value)) in entries(problems, t, EVAL_KEYS, &context) {
        match key {
            "input_list" => {
                out.input_list =
                    string(problems, key, value, "input_list = \"eval/input_list.txt\"")
            }
            _ => out.labels = string(problems, key, value, "labels = \"eval/labels.txt\""),
        }
    }
    out
}

/// Fills `slot`, or reports that an alias and its canonical name (or the same option twice
/// through a legacy mode) were both given.
fn set<T>(problems: &mut Problems, slot: &mut Option<Given<T>>, given: Given<T>) {
    if let Some(previous) = slot {
        if is_legacy_quantizer(previous.key) != is_legacy_quantizer(given.key) {
            // Reported once, as a legacy conflict, after the whole table is read.
            return;
        }
        let diagnostic = problems
            .at(
                "quant::manifest::alias_conflict",
                format!("`{}` and `{}` set the same option", previous.key, given.key),
                given.key_span.clone(),
                "second setting",
            )
            .with_label(previous.key_span.clone(), "first setting")
            .with_help(format!(
                "keep one of them; `{}` is the qairt-quantizer name",
                canonical(given.key)
            ));
        problems.push(diagnostic);
    } else {
        *slot = Some(given);
    }
}

fn is_legacy_quantizer(key: &str) -> bool {
    matches!(key, "act_quantizer" | "param_quantizer")
}

/// The canonical name of an option key (the key itself when it is not an alias).
pub(crate) fn canonical(key: &str) -> &str {
    match key {
        "act_bw" => "act_bitwidth",
        "weight_bw" => "weights_bitwidth",
        "bias_bw" => "bias_bitwidth",
        "float_bw" => "float_bitwidth",
        "float_bias_bw" => "float_bias_bitwidth",
        "float_fallback" => "enable_float_fallback",
        "act_quantizer" => "act_quantizer_calibration",
        "param_quantizer" => "param_quantizer_calibration",
        other => other,
    }
}

/// Where one key of a target table was written.
struct At {
    key: &'static str,
    key_span: Range<usize>,
    value_span: Range<usize>,
}

impl At {
    fn given<T>(&self, value: T) -> Given<T> {
        Given {
            value,
            key: self.key,
            key_span: self.key_span.clone(),
            value_span: self.value_span.clone(),
        }
    }
}

fn target(problems: &mut Problems, name: Spanned<String>, t: &DeTable<'_>) -> RawTarget {
    let mut out = RawTarget {
        name,
        backend: None,
        models: None,
        calibration: None,
        overrides: None,
        evaluate: None,
        extends: None,
        options: RawQuantizerOptions::default(),
    };
    let context = format!("[targets.{}]", out.name.get_ref());
    // Legacy modes, remembered to report mixing with `*_calibration`/`*_schema`.
    let mut legacy: Vec<(&'static str, Range<usize>)> = Vec::new();
    let mut modern: Vec<(&'static str, Range<usize>)> = Vec::new();
    for (key, (key_spanned, value)) in entries(problems, t, TARGET_KEYS, &context) {
        let at = At {
            key,
            key_span: key_spanned.span(),
            value_span: value.span(),
        };
        let o = &mut out.options;
        match key {
            "backend" => {
                let Some(s) = string(problems, key, value, "backend = \"htp\"") else {
                    continue;
                };
                match Backend::from_name(s.get_ref()) {
                    Some(b) => out.backend = Some(at.given(b)),
                    None => {
                        let help = format!(
                            "{} (backends: cpu, gpu, dsp, htp, hta)",
                            suggestion(s.get_ref(), Backend::ALL.map(Backend::as_str), "backend")
                        );
                        bad_value(
                            problems,
                            key,
                            &format!("\"{}\"", s.get_ref()),
                            s.span(),
                            "unknown backend",
                            help,
                        );
                    }
                }
            }
            "models" => {
                if let Some(list) = string_array(problems, key, value, "models = [\"cls\"]") {
                    out.models = Some(at.given(list));
                }
            }
            "overrides" => {
                if let Some(list) = string_array(problems, key, value, "overrides = [\"head\"]") {
                    out.overrides = Some(at.given(list));
                }
            }
            "algorithms" => {
                let example = "algorithms = [\"cle\", \"bias_correction\"]";
                let Some(list) = string_array(problems, key, value, example) else {
                    continue;
                };
                let mut algorithms = Algorithms::default();
                let mut known = true;
                for name in &list {
                    if !algorithms.enable(name.get_ref()) {
                        known = false;
                        bad_value(
                            problems,
                            key,
                            &format!("\"{}\"", name.get_ref()),
                            name.span(),
                            "unknown algorithm",
                            suggestion(name.get_ref(), Algorithms::NAMES, "algorithm"),
                        );
                    }
                }
                if known {
                    o.algorithms = Some(at.given(algorithms));
                }
            }
            "adaround" => {
                let help = format!(
                    "write `[targets.{}.adaround]` followed by its keys ({})",
                    out.name.get_ref(),
                    crate::adaround::TOP_KEYS.join(", ")
                );
                let Some(t) = table(problems, key, value, &help) else {
                    continue;
                };
                let context = format!("[targets.{}.adaround]", out.name.get_ref());
                if let Some(config) = adaround(problems, t, &context) {
                    o.adaround = Some(at.given(config));
                }
            }
            "quantsim_config" => {
                let example = "quantsim_config = \"aimet/default_config.json\"";
                if let Some(s) = string(problems, key, value, example) {
                    o.quantsim_config = Some(at.given(s.into_inner()));
                }
            }
            "calibration" | "evaluate" | "extends" => {
                if let Some(s) = string(problems, key, value, &format!("{key} = \"NAME\"")) {
                    let slot = match key {
                        "calibration" => &mut out.calibration,
                        "evaluate" => &mut out.evaluate,
                        _ => &mut out.extends,
                    };
                    *slot = Some(at.given(s.into_inner()));
                }
            }
            "act_bitwidth" | "act_bw" | "weights_bitwidth" | "weight_bw" | "bias_bitwidth"
            | "bias_bw" => {
                let example = format!("{key} = 8");
                let Some(n) = integer(problems, key, value, &example) else {
                    continue;
                };
                let is_bias = key.starts_with("bias");
                let bitwidth = u32::try_from(n).ok().and_then(|n| Bitwidth::new(n).ok());
                let bitwidth = match bitwidth {
                    Some(b) if !is_bias || b == Bitwidth::B8 || b == Bitwidth::B32 => b,
                    _ => {
                        let help = if is_bias {
                            "biases are 8 or 32 bit".to_string()
                        } else {
                            "integer encodings are 2 to 16 bit (4, 8 and 16 are the common ones)"
                                .to_string()
                        };
                        bad_value(
                            problems,
                            key,
                            &n.to_string(),
                            value.span(),
                            "unsupported bitwidth",
                            help,
                        );
                        continue;
                    }
                };
                let slot = match canonical(key) {
                    "act_bitwidth" => &mut o.act_bitwidth,
                    "weights_bitwidth" => &mut o.weights_bitwidth,
                    _ => &mut o.bias_bitwidth,
                };
                set(problems, slot, at.given(bitwidth));
            }
            "float_bitwidth" | "float_bw" | "float_bias_bitwidth" | "float_bias_bw" => {
                let Some(n) = integer(problems, key, value, &format!("{key} = 16")) else {
                    continue;
                };
                let slot = if canonical(key) == "float_bitwidth" {
                    &mut o.float_bitwidth
                } else {
                    &mut o.float_bias_bitwidth
                };
                match u32::try_from(n).ok().and_then(FloatBitwidth::new) {
                    Some(f) => set(problems, slot, at.given(f)),
                    None => bad_value(
                        problems,
                        key,
                        &n.to_string(),
                        value.span(),
                        "not a float bitwidth",
                        "float tensors are 16 (FP16) or 32 (FP32) bit".into(),
                    ),
                }
            }
            "act_quantizer_calibration" | "param_quantizer_calibration" => {
                let Some(s) = string(problems, key, value, &format!("{key} = \"min-max\"")) else {
                    continue;
                };
                let name = s.get_ref().as_str();
                let Some(method) = CalibrationMethod::NAMED
                    .into_iter()
                    .find(|m| m.as_str() == name)
                else {
                    let prefix = &key[..key.find('_').unwrap_or(0)];
                    let help = match LegacyQuantizer::ALL
                        .into_iter()
                        .find(|l| l.as_str() == name)
                    {
                        Some(l) => format!(
                            "`{name}` is a legacy quantizer name: write `{prefix}_quantizer = \"{name}\"` or `{key} = \"{}\"`",
                            l.expand().0
                        ),
                        None => format!(
                            "{} (calibration methods: min-max, sqnr, percentile, mse, entropy)",
                            suggestion(
                                name,
                                CalibrationMethod::NAMED.map(CalibrationMethod::as_str),
                                "calibration method"
                            )
                        ),
                    };
                    bad_value(
                        problems,
                        key,
                        &format!("\"{name}\""),
                        s.span(),
                        "unknown calibration method",
                        help,
                    );
                    continue;
                };
                modern.push((key, key_spanned.span()));
                let slot = if key.starts_with("act") {
                    &mut o.act_calibration
                } else {
                    &mut o.param_calibration
                };
                set(problems, slot, at.given(method));
            }
            "act_quantizer_schema" | "param_quantizer_schema" => {
                let Some(s) = string(problems, key, value, &format!("{key} = \"asymmetric\""))
                else {
                    continue;
                };
                let name = s.get_ref().as_str();
                let Ok(schema) = name.parse::<Schema>() else {
                    let help = format!(
                        "{} (schemas: asymmetric, signedasymmetric, symmetric, unsignedsymmetric)",
                        suggestion(name, Schema::ALL.map(Schema::as_str), "schema")
                    );
                    bad_value(
                        problems,
                        key,
                        &format!("\"{name}\""),
                        s.span(),
                        "unknown schema",
                        help,
                    );
                    continue;
                };
                modern.push((key, key_spanned.span()));
                let slot = if key.starts_with("act") {
                    &mut o.act_schema
                } else {
                    &mut o.param_schema
                };
                set(problems, slot, at.given(schema));
            }
            "act_quantizer" | "param_quantizer" => {
                let Some(s) = string(problems, key, value, &format!("{key} = \"tf\"")) else {
                    continue;
                };
                let name = s.get_ref().as_str();
                let Some(mode) = LegacyQuantizer::ALL
                    .into_iter()
                    .find(|l| l.as_str() == name)
                else {
                    let help = format!(
                        "{} (legacy quantizers: tf, enhanced, adjusted, symmetric)",
                        suggestion(
                            name,
                            LegacyQuantizer::ALL.map(LegacyQuantizer::as_str),
                            "legacy quantizer"
                        )
                    );
                    bad_value(
                        problems,
                        key,
                        &format!("\"{name}\""),
                        s.span(),
                        "unknown legacy quantizer",
                        help,
                    );
                    continue;
                };
                if key == "act_quantizer" && mode == LegacyQuantizer::Adjusted {
                    bad_value(
                        problems,
                        key,
                        "\"adjusted\"",
                        s.span(),
                        "weights only",
                        "the seed's TF Adjusted mode quantizes 8-bit weights only: use it with `param_quantizer`".into(),
                    );
                    continue;
                }
                legacy.push((key, key_spanned.span()));
                let (method, schema) = mode.expand();
                if key == "act_quantizer" {
                    set(problems, &mut o.act_calibration, at.given(method));
                    set(problems, &mut o.act_schema, at.given(schema));
                } else {
                    set(problems, &mut o.param_calibration, at.given(method));
                    set(problems, &mut o.param_schema, at.given(schema));
                }
            }
            "percentile_calibration_value" => {
                let Some(x) = number(problems, key, value, "percentile_calibration_value = 99.99")
                else {
                    continue;
                };
                match Percentile::new(x) {
                    Some(p) => o.percentile = Some(at.given(p)),
                    None => bad_value(
                        problems,
                        key,
                        &x.to_string(),
                        value.span(),
                        "outside [90, 100]",
                        "qairt-quantizer accepts percentiles from 90 to 100 (default 99.99)".into(),
                    ),
                }
            }
            _ => {
                let Some(b) = boolean(problems, key, value) else {
                    continue;
                };
                if canonical(key) == "enable_float_fallback" {
                    // Two spellings: both given is reported, as for the bitwidth aliases.
                    set(problems, &mut o.float_fallback, at.given(b));
                    continue;
                }
                let slot = match key {
                    "use_per_channel_quantization" => &mut o.per_channel,
                    "use_per_row_quantization" => &mut o.per_row,
                    "ignore_quantization_overrides" => &mut o.ignore_quantization_overrides,
                    "keep_io_types" => &mut o.keep_io_types,
                    _ => &mut o.calibrate_with_quantized_weights,
                };
                *slot = Some(at.given(b));
            }
        }
    }
    // qairt-quantizer: a legacy `--act_quantizer`/`--param_quantizer` cannot be combined with the
    // `*_calibration`/`*_schema` options.
    if let (Some((legacy_key, legacy_span)), Some((modern_key, modern_span))) =
        (legacy.first(), modern.first())
    {
        let diagnostic = problems
            .at(
                "quant::manifest::legacy_conflict",
                format!("legacy `{legacy_key}` cannot be mixed with `{modern_key}`"),
                legacy_span.clone(),
                "legacy quantizer",
            )
            .with_label(modern_span.clone(), "qairt-quantizer option")
            .with_help(
                "use either the legacy act_quantizer/param_quantizer keys or the *_quantizer_calibration and *_quantizer_schema keys, as qairt-quantizer requires",
            );
        problems.push(diagnostic);
    }
    out
}

/// `[targets.NAME.adaround]`: the keys of AdaRound's YAML config, checked as the YAML reader
/// checks them, every problem pointing at its TOML value. `None` when any problem was found.
fn adaround(problems: &mut Problems, t: &DeTable<'_>, context: &str) -> Option<AdaroundConfig> {
    let before = problems.list.len();
    let mut config = AdaroundConfig::default();
    let known: Vec<&'static str> = crate::adaround::TOP_KEYS
        .iter()
        .chain(&crate::adaround::CALLBACK_KEYS)
        .copied()
        .collect();
    for (key, (key_spanned, value)) in entries(problems, t, &known, context) {
        match key {
            "num_batches" | "num_iterations" => {
                let Some(n) = integer(problems, key, value, &format!("{key} = 16")) else {
                    continue;
                };
                match usize::try_from(n) {
                    Ok(n) if n >= 1 => match key {
                        "num_batches" => config.num_batches = Some(n),
                        _ => config.num_iterations = n,
                    },
                    _ => bad_value(
                        problems,
                        key,
                        &n.to_string(),
                        value.span(),
                        "not a positive count",
                        format!("`{key}` is a count of at least 1"),
                    ),
                }
            }
            "seed" => {
                let Some(n) = integer(problems, key, value, "seed = 0") else {
                    continue;
                };
                match u64::try_from(n) {
                    Ok(n) => config.seed = n,
                    Err(_) => bad_value(
                        problems,
                        key,
                        &n.to_string(),
                        value.span(),
                        "negative",
                        "the seed is an integer of at least 0".into(),
                    ),
                }
            }
            "optional_adaround_args" => {
                let help =
                    "write `[targets.NAME.adaround.optional_adaround_args]` followed by its keys";
                let Some(optional) = table(problems, key, value, help) else {
                    continue;
                };
                let context = format!("{}.optional_adaround_args]", context.trim_end_matches(']'));
                adaround_optional(problems, optional, &context, &mut config);
            }
            _ => {
                // A Python callback key: the input list replaces it.
                let diagnostic = problems
                    .at(
                        "quant::manifest::adaround_callback",
                        format!("`{key}` names a Python data loader, which quant does not run"),
                        key_spanned.span(),
                        "Python callback",
                    )
                    .with_help(
                        "the samples come from the target's `calibration` input list; remove this key (`num_batches` picks how many)",
                    );
                problems.push(diagnostic);
            }
        }
    }
    (problems.list.len() == before).then_some(config)
}

/// A weight bitwidth AdaRound takes (4 to 16), or the problem at its value.
fn adaround_bitwidth(
    problems: &mut Problems,
    key: &str,
    value: &Spanned<DeValue<'_>>,
) -> Option<Bitwidth> {
    let n = integer(problems, key, value, &format!("{key} = 4"))?;
    let bits = u32::try_from(n)
        .ok()
        .filter(|b| crate::adaround::BITWIDTHS.contains(b))
        .and_then(|b| Bitwidth::new(b).ok());
    if bits.is_none() {
        bad_value(
            problems,
            key,
            &n.to_string(),
            value.span(),
            "unsupported bitwidth",
            "AIMET's AdaRound takes weight bitwidths from 4 to 16; use 4 for the smallest weights"
                .into(),
        );
    }
    bits
}

/// `optional_adaround_args` of a target's `adaround` table.
fn adaround_optional(
    problems: &mut Problems,
    t: &DeTable<'_>,
    context: &str,
    config: &mut AdaroundConfig,
) {
    for (key, (_, value)) in entries(problems, t, &crate::adaround::OPTIONAL_KEYS, context) {
        match key {
            "default_param_bw" => {
                if let Some(bits) = adaround_bitwidth(problems, key, value) {
                    config.default_param_bw = Some(bits);
                }
            }
            "default_quant_scheme" => {
                let Some(s) = string(problems, key, value, "default_quant_scheme = \"tf\"") else {
                    continue;
                };
                match crate::adaround::quant_scheme(s.get_ref()) {
                    Some(method) => config.default_quant_scheme = Some(method),
                    None => bad_value(
                        problems,
                        key,
                        &format!("\"{}\"", s.get_ref()),
                        s.span(),
                        "unknown quant scheme",
                        "use \"tf\" (min-max) or \"tf_enhanced\" (SQNR)".into(),
                    ),
                }
            }
            "ignore_quant_ops_list" => {
                let example = "ignore_quant_ops_list = [\"conv_last\"]";
                if let Some(list) = string_array(problems, key, value, example) {
                    config.ignore_quant_ops_list =
                        list.into_iter().map(Spanned::into_inner).collect();
                }
            }
            _ => {
                let example = "param_bw_override_list = [[\"conv1.weight\", 8]]";
                let DeValue::Array(items) = value.get_ref() else {
                    type_error(
                        problems,
                        key,
                        "an array of [parameter, bitwidth] pairs",
                        value,
                        example,
                    );
                    continue;
                };
                for item in items.iter() {
                    let pair = match item.get_ref() {
                        DeValue::Array(pair) if pair.len() == 2 => pair,
                        _ => {
                            type_error(
                                problems,
                                key,
                                "an array of [parameter, bitwidth] pairs",
                                item,
                                example,
                            );
                            continue;
                        }
                    };
                    let (Some(name), Some(bits)) = (
                        string(problems, key, &pair[0], example),
                        adaround_bitwidth(problems, key, &pair[1]),
                    ) else {
                        continue;
                    };
                    config
                        .param_bw_override_list
                        .push((name.into_inner(), bits));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_suggests_plausible_typos_only() {
        assert_eq!(
            nearest("act_bitwith", TARGET_KEYS.iter().copied()),
            Some("act_bitwidth")
        );
        assert_eq!(
            nearest("weights_bw", TARGET_KEYS.iter().copied()),
            Some("weight_bw")
        );
        assert_eq!(nearest("target", SECTIONS.iter().copied()), Some("targets"));
        assert_eq!(nearest("colour", TARGET_KEYS.iter().copied()), None);
    }

    #[test]
    fn every_alias_names_a_canonical_key() {
        for alias in [
            "act_bw",
            "weight_bw",
            "bias_bw",
            "float_bw",
            "act_quantizer",
            "param_quantizer",
        ] {
            let name = canonical(alias);
            assert_ne!(name, alias);
            assert!(TARGET_KEYS.contains(&name), "{alias} → {name}");
        }
    }
}
