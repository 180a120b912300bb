//! From the raw manifest to the resolved pipeline: references, `extends`, defaults, the backend
//! capability checks and the files the manifest points at.
//!
//! It must not parse TOML (that is `raw`) and reads the file system only to check that
//! referenced files exist, and only when asked to ([`FileCheck::Exists`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::raw::{Given, Problems, RawManifest, RawQuantizerOptions, RawTarget, suggestion};
use super::{
    Backend, CalibrationMethod, Capabilities, FloatBitwidth, Precision, Quantization,
    QuantizerSettings, ResolvedCalibration, ResolvedEval, ResolvedModel, ResolvedOverrides,
    ResolvedPipeline, ResolvedTarget,
};
use crate::encoding::Bitwidth;
use crate::transform::Algorithms;

/// Whether resolution checks that the files the manifest names exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileCheck {
    /// Each referenced file must exist; a missing one is a diagnostic on its path.
    Exists,
    /// Do not look at the file system (the engine reads the files itself and reports).
    Skip,
}

/// The default `[pipeline] out_dir`.
pub const DEFAULT_OUT_DIR: &str = "quant-out";

struct Paths<'a> {
    root: &'a Path,
    files: FileCheck,
}

impl Paths<'_> {
    /// Joins a manifest path to the manifest's folder and checks it names a file.
    fn file(
        &self,
        problems: &mut Problems,
        key: &str,
        owner: &str,
        given: &Spanned<String>,
    ) -> Option<PathBuf> {
        let text = given.get_ref();
        if text.is_empty() {
            let diagnostic = problems
                .at(
                    "quant::manifest::value",
                    format!("`{key}` of {owner} is empty"),
                    given.span(),
                    "empty path",
                )
                .with_help("give a path relative to the manifest's folder");
            problems.push(diagnostic);
            return None;
        }
        let path = self.root.join(text);
        if self.files == FileCheck::Exists && !path.is_file() {
            let (message, label) = if path.exists() {
                (format!("`{text}` is not a file"), "not a file")
            } else {
                (format!("file `{text}` not found"), "no such file")
            };
            let diagnostic = problems
                .at("quant::manifest::missing_file", message, given.span(), label)
                .with_help(format!(
                    "{key} of {owner} is read relative to the manifest's folder; create the file or fix the path"
                ));
            problems.push(diagnostic);
        }
        Some(path)
    }
}

fn missing_key(
    problems: &mut Problems,
    owner: &str,
    key: &str,
    name: &Spanned<String>,
    example: &str,
) {
    let diagnostic = problems
        .at(
            "quant::manifest::missing_key",
            format!("{owner} has no `{key}`"),
            name.span(),
            format!("declared here without `{key}`"),
        )
        .with_help(format!("add `{example}` to this table"));
    problems.push(diagnostic);
}

/// Resolves `raw`, whose manifest lives in `root` (absolute).
pub(crate) fn resolve(
    problems: &mut Problems,
    raw: &RawManifest,
    manifest_path: &Path,
    root: &Path,
    files: FileCheck,
) -> ResolvedPipeline {
    let paths = Paths { root, files };
    let name = raw
        .pipeline
        .name
        .as_ref()
        .map(|n| n.get_ref().clone())
        .or_else(|| root.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "pipeline".to_string());
    let out_dir = root.join(
        raw.pipeline
            .out_dir
            .as_ref()
            .map_or(DEFAULT_OUT_DIR, |d| d.get_ref().as_str()),
    );

    let mut models = BTreeMap::new();
    for model in &raw.models {
        let owner = format!("model `{}`", model.name.get_ref());
        let Some(path) = model.path.as_ref() else {
            if raw.is_invalid("models", &model.name) {
                continue;
            }
            missing_key(
                problems,
                &owner,
                "path",
                &model.name,
                "path = \"models/NAME.onnx\"",
            );
            continue;
        };
        let Some(path) = paths.file(problems, "path", &owner, path) else {
            continue;
        };
        let input_dims = model
            .input_dims
            .iter()
            .map(|(input, dims)| (input.get_ref().clone(), dims.clone()))
            .collect();
        let name = model.name.get_ref().clone();
        models.insert(
            name.clone(),
            ResolvedModel {
                name,
                path,
                input_dims,
            },
        );
    }

    let mut calibration = BTreeMap::new();
    for set in &raw.calibration {
        let owner = format!("calibration set `{}`", set.name.get_ref());
        let Some(list) = set.input_list.as_ref() else {
            if raw.is_invalid("calibration", &set.name) {
                continue;
            }
            missing_key(
                problems,
                &owner,
                "input_list",
                &set.name,
                "input_list = \"calib/input_list.txt\"",
            );
            continue;
        };
        if let Some(input_list) = paths.file(problems, "input_list", &owner, list) {
            let name = set.name.get_ref().clone();
            calibration.insert(name.clone(), ResolvedCalibration { name, input_list });
        }
    }

    let mut overrides = BTreeMap::new();
    for entry in &raw.overrides {
        let owner = format!("overrides `{}`", entry.name.get_ref());
        let Some(path) = entry.path.as_ref() else {
            if raw.is_invalid("overrides", &entry.name) {
                continue;
            }
            missing_key(
                problems,
                &owner,
                "path",
                &entry.name,
                "path = \"overrides/NAME.json\"",
            );
            continue;
        };
        if let Some(path) = paths.file(problems, "path", &owner, path) {
            let name = entry.name.get_ref().clone();
            overrides.insert(name.clone(), ResolvedOverrides { name, path });
        }
    }

    let mut eval = BTreeMap::new();
    for set in &raw.eval {
        let owner = format!("eval set `{}`", set.name.get_ref());
        let Some(list) = set.input_list.as_ref() else {
            if raw.is_invalid("eval", &set.name) {
                continue;
            }
            missing_key(
                problems,
                &owner,
                "input_list",
                &set.name,
                "input_list = \"eval/input_list.txt\"",
            );
            continue;
        };
        let input_list = paths.file(problems, "input_list", &owner, list);
        let labels = set
            .labels
            .as_ref()
            .map(|l| paths.file(problems, "labels", &owner, l));
        if let (Some(input_list), None | Some(Some(_))) = (input_list, &labels) {
            let name = set.name.get_ref().clone();
            eval.insert(
                name.clone(),
                ResolvedEval {
                    name,
                    input_list,
                    labels: labels.flatten(),
                },
            );
        }
    }

    check_references(problems, raw);
    let targets = resolve_targets(problems, raw, root);

    ResolvedPipeline {
        manifest_path: manifest_path.to_path_buf(),
        root: root.to_path_buf(),
        name,
        out_dir,
        encoding_version: raw
            .pipeline
            .encoding_version
            .as_ref()
            .map(|v| *v.get_ref())
            .unwrap_or_default(),
        models,
        calibration,
        overrides,
        eval,
        targets,
        workspace_members: raw
            .workspace_members
            .iter()
            .flatten()
            .map(|m| m.get_ref().clone())
            .collect(),
    }
}

/// Every name a target refers to must be declared; reported where the target itself writes it
/// (not again in each target that inherits it).
fn check_references(problems: &mut Problems, raw: &RawManifest) {
    let models: Vec<&str> = raw
        .models
        .iter()
        .map(|m| m.name.get_ref().as_str())
        .collect();
    let calibration: Vec<&str> = raw
        .calibration
        .iter()
        .map(|c| c.name.get_ref().as_str())
        .collect();
    let overrides: Vec<&str> = raw
        .overrides
        .iter()
        .map(|o| o.name.get_ref().as_str())
        .collect();
    let eval: Vec<&str> = raw.eval.iter().map(|e| e.name.get_ref().as_str()).collect();
    let targets: Vec<&str> = raw
        .targets
        .iter()
        .map(|t| t.name.get_ref().as_str())
        .collect();

    let mut check =
        |name: &str, span: Range<usize>, declared: &[&str], what: &str, section: &str| {
            if declared.contains(&name) {
                return;
            }
            let hint = match (declared.is_empty(), section) {
                (true, "targets") => "no other `[targets.*]` is declared".to_string(),
                (true, _) => format!("no `[{section}.*]` is declared"),
                (false, _) => suggestion(name, declared.iter().copied(), what),
            };
            let separator = if hint.ends_with('?') { " " } else { ". " };
            let help =
                format!("{hint}{separator}If `{name}` is new, declare it as `[{section}.{name}]`");
            let diagnostic = problems
                .at(
                    "quant::manifest::undeclared",
                    format!("{what} `{name}` is not declared"),
                    span,
                    format!("no [{section}.{name}]"),
                )
                .with_help(help);
            problems.push(diagnostic);
        };
    for target in &raw.targets {
        for model in target.models.iter().flat_map(|m| m.value.iter()) {
            check(model.get_ref(), model.span(), &models, "model", "models");
        }
        if let Some(c) = &target.calibration {
            check(
                &c.value,
                c.value_span.clone(),
                &calibration,
                "calibration set",
                "calibration",
            );
        }
        for o in target.overrides.iter().flat_map(|o| o.value.iter()) {
            check(o.get_ref(), o.span(), &overrides, "overrides", "overrides");
        }
        if let Some(e) = &target.evaluate {
            check(&e.value, e.value_span.clone(), &eval, "eval set", "eval");
        }
        if let Some(e) = &target.extends {
            let others: Vec<&str> = targets
                .iter()
                .copied()
                .filter(|t| *t != target.name.get_ref())
                .collect();
            check(&e.value, e.value_span.clone(), &others, "target", "targets");
        }
    }
}

/// The chain `[target, parent, grandparent, ...]`, or `None` when it runs into a cycle (reported
/// once, by the cycle's first member in name order) or an undeclared parent (already reported).
fn chain<'a>(
    problems: &mut Problems,
    by_name: &BTreeMap<&str, &'a RawTarget>,
    start: &'a RawTarget,
) -> Option<Vec<&'a RawTarget>> {
    let mut stack = vec![start];
    loop {
        let current = stack[stack.len() - 1];
        let Some(parent) = &current.extends else {
            return Some(stack);
        };
        let next = *by_name.get(parent.value.as_str())?;
        if let Some(position) = stack
            .iter()
            .position(|t| t.name.get_ref() == next.name.get_ref())
        {
            let cycle = &stack[position..];
            let first = cycle.iter().map(|t| t.name.get_ref()).min();
            if first == Some(start.name.get_ref()) {
                report_cycle(problems, cycle);
            }
            return None;
        }
        stack.push(next);
    }
}

fn report_cycle(problems: &mut Problems, cycle: &[&RawTarget]) {
    let mut names: Vec<&str> = cycle.iter().map(|t| t.name.get_ref().as_str()).collect();
    names.push(names[0]);
    let path = names.join(" → ");
    let extends = |t: &RawTarget| {
        t.extends
            .as_ref()
            .map(|e| e.value_span.clone())
            .unwrap_or(t.name.span())
    };
    let mut diagnostic = problems
        .at(
            "quant::manifest::extends_cycle",
            format!("cyclic `extends`: {path}"),
            extends(cycle[0]),
            format!("`{}` extends `{}`", names[0], names[1]),
        )
        .with_help("a target may extend another only if that one does not (indirectly) extend it back; remove one `extends` of the cycle");
    for (i, target) in cycle.iter().enumerate().skip(1) {
        diagnostic = diagnostic.with_label(
            extends(target),
            format!("`{}` extends `{}`", names[i], names[i + 1]),
        );
    }
    problems.push(diagnostic);
}

fn or<T: Clone>(child: &Option<T>, parent: &Option<T>) -> Option<T> {
    child.clone().or_else(|| parent.clone())
}

/// The target's own settings over its parent's.
fn inherit(child: &RawTarget, parent: &RawTarget) -> RawTarget {
    let (c, p) = (&child.options, &parent.options);
    // Calibrating and falling back to float exclude each other: a child that chooses one
    // (and not both) drops the parent's other choice instead of contradicting it.
    let child_falls_back = c.float_fallback.as_ref().is_some_and(|f| f.value);
    let calibration = match (&child.calibration, child_falls_back) {
        (None, true) => None,
        _ => or(&child.calibration, &parent.calibration),
    };
    let float_fallback = match (&child.calibration, &c.float_fallback) {
        (Some(_), None) => None,
        _ => or(&c.float_fallback, &p.float_fallback),
    };
    RawTarget {
        name: child.name.clone(),
        backend: or(&child.backend, &parent.backend),
        models: or(&child.models, &parent.models),
        calibration,
        overrides: or(&child.overrides, &parent.overrides),
        evaluate: or(&child.evaluate, &parent.evaluate),
        extends: child.extends.clone(),
        options: RawQuantizerOptions {
            act_bitwidth: or(&c.act_bitwidth, &p.act_bitwidth),
            weights_bitwidth: or(&c.weights_bitwidth, &p.weights_bitwidth),
            bias_bitwidth: or(&c.bias_bitwidth, &p.bias_bitwidth),
            float_bitwidth: or(&c.float_bitwidth, &p.float_bitwidth),
            float_bias_bitwidth: or(&c.float_bias_bitwidth, &p.float_bias_bitwidth),
            act_calibration: or(&c.act_calibration, &p.act_calibration),
            param_calibration: or(&c.param_calibration, &p.param_calibration),
            act_schema: or(&c.act_schema, &p.act_schema),
            param_schema: or(&c.param_schema, &p.param_schema),
            percentile: or(&c.percentile, &p.percentile),
            per_channel: or(&c.per_channel, &p.per_channel),
            per_row: or(&c.per_row, &p.per_row),
            ignore_quantization_overrides: or(
                &c.ignore_quantization_overrides,
                &p.ignore_quantization_overrides,
            ),
            calibrate_with_quantized_weights: or(
                &c.calibrate_with_quantized_weights,
                &p.calibrate_with_quantized_weights,
            ),
            algorithms: or(&c.algorithms, &p.algorithms),
            keep_io_types: or(&c.keep_io_types, &p.keep_io_types),
            float_fallback,
            quantsim_config: or(&c.quantsim_config, &p.quantsim_config),
            // A child listing its own algorithms without AdaRound drops the parent's table,
            // which configures an algorithm it no longer runs.
            adaround: match (&c.adaround, &c.algorithms) {
                (None, Some(algorithms)) if !algorithms.value.adaround => None,
                _ => or(&c.adaround, &p.adaround),
            },
        },
    }
}

fn resolve_targets(
    problems: &mut Problems,
    raw: &RawManifest,
    root: &Path,
) -> BTreeMap<String, ResolvedTarget> {
    let by_name: BTreeMap<&str, &RawTarget> = raw
        .targets
        .iter()
        .map(|t| (t.name.get_ref().as_str(), t))
        .collect();
    let all_models: BTreeSet<String> = raw
        .models
        .iter()
        .map(|m| m.name.get_ref().clone())
        .collect();
    let mut resolved = BTreeMap::new();
    for target in &raw.targets {
        let Some(chain) = chain(problems, &by_name, target) else {
            continue;
        };
        let mut effective = (*chain[chain.len() - 1]).clone();
        for child in chain.iter().rev().skip(1) {
            effective = inherit(child, &effective);
        }
        if chain.iter().any(|t| raw.is_invalid("targets", &t.name)) {
            continue;
        }
        let extends = chain[1..]
            .iter()
            .map(|t| t.name.get_ref().clone())
            .collect();
        if let Some(mut t) = check_target(problems, &effective, &all_models, extends) {
            if let Some(given) = &effective.options.quantsim_config
                && !apply_quantsim_config(problems, &mut t, given, root)
            {
                continue;
            }
            resolved.insert(t.name.clone(), t);
        }
    }
    resolved
}

/// Reads the target's quantsim config (a built-in name, or a file relative to the manifest's
/// folder) into its settings; `false`, with a diagnostic at the value, when it cannot be used.
fn apply_quantsim_config(
    problems: &mut Problems,
    target: &mut ResolvedTarget,
    given: &Given<String>,
    root: &Path,
) -> bool {
    let Precision::Quantized(quantization) = &mut target.precision else {
        return true;
    };
    match crate::placement::load(&given.value, Some(root)) {
        Ok(config) => {
            quantization.settings =
                crate::placement::with_config(config, quantization.settings.clone());
            true
        }
        Err(err) => {
            let diagnostic = problems
                .at(
                    "quant::manifest::quantsim_config",
                    format!("cannot use quantsim config `{}`", given.value),
                    given.value_span.clone(),
                    err.located(),
                )
                .with_help(format!(
                    "give a quantsim config JSON file (relative to the manifest's folder) or a \
                     built-in config: {}",
                    crate::placement::QuantsimConfig::BUILTIN.join(", ")
                ));
            problems.push(diagnostic);
            false
        }
    }
}

fn val<T: Copy>(given: &Option<Given<T>>, default: T) -> T {
    given.as_ref().map_or(default, |g| g.value)
}

/// Backend capability checks on a target with `extends` applied; builds the resolved target.
/// Every key is checked against the backend, so a target without one stops there; after that
/// the float and the quantized paths report all they find, and a target is resolved only when
/// neither reported anything.
fn check_target(
    problems: &mut Problems,
    t: &RawTarget,
    all_models: &BTreeSet<String>,
    extends: Vec<String>,
) -> Option<ResolvedTarget> {
    let backend = require_backend(problems, t)?;
    let errors_before = problems.list.len();
    let precision = if backend.caps.quantized {
        Precision::Quantized(check_quantized(problems, &backend, t)?)
    } else {
        Precision::Float {
            float_bitwidth: check_float(problems, &backend, t),
            keep_io_types: val(&t.options.keep_io_types, true),
        }
    };
    (problems.list.len() == errors_before).then(|| ResolvedTarget {
        name: t.name.get_ref().clone(),
        backend: backend.given.value,
        models: target_models(t, all_models),
        evaluate: t.evaluate.as_ref().map(|e| e.value.clone()),
        extends,
        precision,
    })
}

/// A target's backend as written, with its row of the capability table: what every check
/// compares a key against, and where its diagnostics point to say why.
struct TargetBackend<'t> {
    given: &'t Given<Backend>,
    caps: &'static Capabilities,
}

impl TargetBackend<'_> {
    /// A value the backend cannot run: labelled where it is given and at the backend.
    fn reject(
        &self,
        problems: &mut Problems,
        given_span: Range<usize>,
        message: String,
        label: String,
        help: String,
    ) {
        let diagnostic = problems
            .at("quant::manifest::backend", message, given_span, label)
            .with_label(
                self.given.value_span.clone(),
                format!("backend {}", self.given.value),
            )
            .with_help(help);
        problems.push(diagnostic);
    }
}

/// The backend decides everything else a target may say, so a target without one (after
/// `extends`) is reported once and checked no further.
fn require_backend<'t>(problems: &mut Problems, t: &'t RawTarget) -> Option<TargetBackend<'t>> {
    let name = t.name.get_ref();
    let Some(given) = &t.backend else {
        let diagnostic = problems
            .at(
                "quant::manifest::missing_key",
                format!("target `{name}` has no `backend`"),
                t.name.span(),
                "declared here without `backend`",
            )
            .with_help("add `backend = \"htp\"` (cpu, gpu, dsp, htp or hta), or `extends` a target that has one");
        problems.push(diagnostic);
        return None;
    };
    Some(TargetBackend {
        given,
        caps: given.value.capabilities(),
    })
}

/// The models a target builds, sorted: those it lists, or every declared model.
fn target_models(t: &RawTarget, all_models: &BTreeSet<String>) -> Vec<String> {
    match &t.models {
        Some(list) => list
            .value
            .iter()
            .map(|m| m.get_ref().clone())
            .collect::<BTreeSet<_>>(),
        None => all_models.clone(),
    }
    .into_iter()
    .collect()
}

/// Bitwidths as the help lines list them: `8 or 16`.
fn bits(list: &[u32]) -> String {
    list.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The float path (cpu, gpu): no quantization key applies, and the whole model runs at one
/// float bitwidth the backend must support. Returns that bitwidth (FP32 unless given).
fn check_float(problems: &mut Problems, backend: &TargetBackend, t: &RawTarget) -> FloatBitwidth {
    reject_quantization_keys(problems, backend, t);
    let b = backend.given.value;
    let o = &t.options;
    if let Some(f) = &o.float_bitwidth
        && !b.allows_float_bitwidth(f.value)
    {
        backend.reject(
            problems,
            f.value_span.clone(),
            format!("{b} cannot run {}-bit float models", f.value),
            format!("FP{}", f.value),
            format!(
                "{b} runs float models at {} bit",
                bits(backend.caps.float_bitwidths)
            ),
        );
    }
    val(&o.float_bitwidth, FloatBitwidth::F32)
}

/// On a float backend, quantizer options, `calibration` and `overrides` are one mistake (the
/// wrong backend, or keys left over), so they make one diagnostic: at the first key in the
/// file, with a label on each other.
fn reject_quantization_keys(problems: &mut Problems, backend: &TargetBackend, t: &RawTarget) {
    let (name, b) = (t.name.get_ref(), backend.given.value);
    let mut keys = t.options.given_keys();
    if let Some(c) = &t.calibration {
        keys.push((c.key, c.key_span.clone()));
    }
    if let Some(ov) = &t.overrides {
        keys.push((ov.key, ov.key_span.clone()));
    }
    keys.sort_by_key(|(_, span)| span.start);
    let Some((first, span)) = keys.first() else {
        return;
    };
    let mut diagnostic = problems
        .at(
            "quant::manifest::backend",
            format!("target `{name}` runs on {b}, which runs float models, but sets quantization options"),
            span.clone(),
            format!("`{first}` needs a quantized backend"),
        )
        .with_label(backend.given.value_span.clone(), format!("{b} takes float models only"));
    for (key, span) in &keys[1..] {
        diagnostic = diagnostic.with_label(span.clone(), format!("`{key}` too"));
    }
    let diagnostic = diagnostic.with_help(format!(
        "the seed's {upper} backend runs non-quantized models: remove these keys (only `float_bitwidth` applies), or use a quantized backend (dsp, htp, hta)",
        upper = b.as_str().to_uppercase()
    ));
    problems.push(diagnostic);
}

/// The quantized path (dsp, htp, hta): a calibration set is required (without one nothing is
/// checked further), then every option is checked against the backend and against each other.
/// Returns the quantization even when a check reported: the caller decides from the problems.
fn check_quantized(
    problems: &mut Problems,
    backend: &TargetBackend,
    t: &RawTarget,
) -> Option<Quantization> {
    let calibration = match t.options.float_fallback.as_ref().filter(|f| f.value) {
        Some(fallback) => {
            check_float_fallback(problems, backend, t, fallback);
            None
        }
        None => Some(require_calibration(problems, backend, t)?),
    };
    let bitwidths = check_bitwidths(problems, backend, &t.options);
    let overrides: Vec<String> = t
        .overrides
        .iter()
        .flat_map(|o| o.value.iter().map(|n| n.get_ref().clone()))
        .collect();
    if calibration.is_some() {
        check_mixed_precision(problems, backend, t, &overrides);
    }
    check_calibration_methods(problems, &t.options, bitwidths.weights);
    check_adaround(problems, t);
    Some(quantization(calibration, overrides, &t.options, bitwidths))
}

/// qairt-quantizer's `--enable_float_fallback`: no calibration data, the overrides give the
/// encodings and every other tensor stays float. So a calibration set is a contradiction (the
/// CLI makes the pair a usage error), an algorithm that measures data cannot run, and the
/// backend must run float ops at the fallback's bitwidth.
fn check_float_fallback(
    problems: &mut Problems,
    backend: &TargetBackend,
    t: &RawTarget,
    fallback: &Given<bool>,
) {
    let (name, b, caps) = (t.name.get_ref(), backend.given.value, backend.caps);
    if let Some(c) = &t.calibration {
        let diagnostic = problems
            .at(
                "quant::manifest::float_fallback",
                format!("target `{name}` sets both `{}` and `calibration`", fallback.key),
                c.key_span.clone(),
                "calibration set",
            )
            .with_label(fallback.key_span.clone(), "no calibration")
            .with_help("float fallback takes its encodings from the overrides alone: remove `calibration`, or the fallback to calibrate");
        problems.push(diagnostic);
    }
    if let Some(algorithms) = &t.options.algorithms {
        let a = algorithms.value;
        let needs_data = [
            ("bias_correction", a.bias_correction),
            ("adaround", a.adaround),
        ];
        for (algorithm, _) in needs_data.into_iter().filter(|(_, on)| *on) {
            let diagnostic = problems
                .at(
                    "quant::manifest::float_fallback",
                    format!("target `{name}` falls back to float without data, but {algorithm} measures the model on calibration data"),
                    algorithms.value_span.clone(),
                    algorithm,
                )
                .with_label(fallback.key_span.clone(), "no calibration")
                .with_help(format!("remove `{algorithm}`, or calibrate the target instead of falling back"));
            problems.push(diagnostic);
        }
    }
    let fallback_bits = t
        .options
        .float_bitwidth
        .as_ref()
        .map_or(FloatBitwidth::F32, |f| f.value);
    if !b.allows_float_bitwidth(fallback_bits) {
        let span = t
            .options
            .float_bitwidth
            .as_ref()
            .map_or(fallback.value_span.clone(), |f| f.value_span.clone());
        let help = if caps.float_bitwidths.is_empty() {
            format!("{b} runs every tensor quantized, so nothing can fall back to float: use htp")
        } else {
            format!(
                "{b} runs float ops at {} bit: set `float_bitwidth` to one of them",
                bits(caps.float_bitwidths)
            )
        };
        backend.reject(
            problems,
            span,
            format!("{b} cannot run the {fallback_bits}-bit float ops tensors fall back to"),
            format!("FP{fallback_bits}"),
            help,
        );
    }
}

/// An `adaround` table configures the `adaround` algorithm: without it in `algorithms`, the
/// table would be silently ignored.
fn check_adaround(problems: &mut Problems, t: &RawTarget) {
    let o = &t.options;
    let Some(table) = &o.adaround else {
        return;
    };
    if o.algorithms.as_ref().is_some_and(|a| a.value.adaround) {
        return;
    }
    let diagnostic = problems
        .at(
            "quant::manifest::adaround_unused",
            format!(
                "target `{}` has an `adaround` table, but its `algorithms` do not include \"adaround\"",
                t.name.get_ref()
            ),
            table.key_span.clone(),
            "AdaRound's settings",
        )
        .with_help("add \"adaround\" to `algorithms`, or remove the table");
    let diagnostic = match &o.algorithms {
        Some(a) => diagnostic.with_label(a.value_span.clone(), "no \"adaround\" here"),
        None => diagnostic,
    };
    problems.push(diagnostic);
}

/// The seed's quantized mode computes encodings from calibration data, so a quantized target
/// without a calibration set cannot be built at all.
fn require_calibration<'t>(
    problems: &mut Problems,
    backend: &TargetBackend,
    t: &'t RawTarget,
) -> Option<&'t Given<String>> {
    let (name, b) = (t.name.get_ref(), backend.given.value);
    let Some(calibration) = &t.calibration else {
        let diagnostic = problems
            .at(
                "quant::manifest::missing_key",
                format!("target `{name}` runs on {b}, which needs a quantized model, but has no `calibration`"),
                t.name.span(),
                "no calibration set",
            )
            .with_label(backend.given.value_span.clone(), format!("{b} runs quantized models only"))
            .with_help("add `calibration = \"NAME\"` naming a [calibration.NAME] set: the seed's quantized mode computes encodings from calibration data (or `enable_float_fallback = true` to take them from overrides alone)");
        problems.push(diagnostic);
        return None;
    };
    Some(calibration)
}

/// The effective activation, weight and bias bitwidths of a quantized target.
#[derive(Clone, Copy)]
struct TargetBitwidths {
    act: Bitwidth,
    weights: Bitwidth,
    bias: Bitwidth,
}

/// Each given bitwidth must be one the backend runs for its role; defaults are not checked,
/// since every quantized backend runs them. Returns the effective bitwidths.
fn check_bitwidths(
    problems: &mut Problems,
    backend: &TargetBackend,
    o: &RawQuantizerOptions,
) -> TargetBitwidths {
    let (b, caps) = (backend.given.value, backend.caps);
    let defaults = QuantizerSettings::default();
    let bitwidths = TargetBitwidths {
        act: val(&o.act_bitwidth, defaults.act_bitwidth),
        weights: val(&o.weights_bitwidth, defaults.weights_bitwidth),
        bias: val(&o.bias_bitwidth, defaults.bias_bitwidth),
    };
    for (given, value, role, allowed, list) in [
        (
            &o.act_bitwidth,
            bitwidths.act,
            "activations",
            b.allows_act_bitwidth(bitwidths.act),
            caps.act_bitwidths,
        ),
        (
            &o.weights_bitwidth,
            bitwidths.weights,
            "weights",
            b.allows_weights_bitwidth(bitwidths.weights),
            caps.weights_bitwidths,
        ),
        (
            &o.bias_bitwidth,
            bitwidths.bias,
            "biases",
            b.allows_bias_bitwidth(bitwidths.bias),
            caps.bias_bitwidths,
        ),
    ] {
        if let Some(given) = given
            && !allowed
        {
            backend.reject(
                problems,
                given.value_span.clone(),
                format!("{b} cannot run {value}-bit {role}"),
                format!("`{}` = {value}", given.key),
                format!(
                    "{b} runs {role} at {} bit (see the backend table in the book)",
                    bits(list)
                ),
            );
        }
    }
    bitwidths
}

/// On a quantized backend `float_bitwidth` is the precision of the tensors overrides mark
/// float (mixed precision): it needs a backend with float ops, overrides to mark them, and a
/// float bitwidth the backend runs. The first of these that fails is the one reported.
fn check_mixed_precision(
    problems: &mut Problems,
    backend: &TargetBackend,
    t: &RawTarget,
    overrides: &[String],
) {
    let Some(f) = &t.options.float_bitwidth else {
        return;
    };
    let (name, b, caps) = (t.name.get_ref(), backend.given.value, backend.caps);
    if caps.float_bitwidths.is_empty() {
        backend.reject(
            problems,
            f.key_span.clone(),
            format!("{b} has no float ops, so `{}` cannot apply", f.key),
            "float tensors".into(),
            format!(
                "{b} runs every tensor quantized: remove `{}`, or use htp for mixed precision",
                f.key
            ),
        );
    } else if overrides.is_empty() {
        backend.reject(
            problems,
            f.key_span.clone(),
            format!("`{}` on {b} needs mixed precision, but target `{name}` has no overrides", f.key),
            "no tensor is float".into(),
            "on a quantized backend float_bitwidth sets the precision of the tensors that overrides mark `dtype: \"float\"`; add `overrides = [...]` or remove the key".into(),
        );
    } else if !b.allows_float_bitwidth(f.value) {
        backend.reject(
            problems,
            f.value_span.clone(),
            format!("{b} cannot run {}-bit float ops", f.value),
            format!("FP{}", f.value),
            format!("{b} runs float ops at {} bit", bits(caps.float_bitwidths)),
        );
    }
}

/// Calibration methods that cannot apply to the target's bitwidths: TF Adjusted is defined
/// for 8-bit weights only. Not a backend limit, so the diagnostic points at the weights'
/// bitwidth rather than the backend.
fn check_calibration_methods(
    problems: &mut Problems,
    o: &RawQuantizerOptions,
    weights_bitwidth: Bitwidth,
) {
    if let Some(p) = &o.param_calibration
        && p.value == CalibrationMethod::Adjusted
        && weights_bitwidth != Bitwidth::B8
    {
        let diagnostic = problems
            .at(
                "quant::manifest::value",
                format!(
                    "`{} = \"adjusted\"` quantizes 8-bit weights only, not {weights_bitwidth}-bit",
                    p.key
                ),
                p.value_span.clone(),
                "TF Adjusted",
            )
            .with_help("use `param_quantizer = \"tf\"` or set `weights_bitwidth = 8`");
        let diagnostic = match &o.weights_bitwidth {
            Some(w) => {
                diagnostic.with_label(w.value_span.clone(), format!("`{}` = {}", w.key, w.value))
            }
            None => diagnostic,
        };
        problems.push(diagnostic);
    }
}

/// The resolved quantization: the checked bitwidths, and every other option given or its
/// default (the engine never sees an unset option).
fn quantization(
    calibration: Option<&Given<String>>,
    overrides: Vec<String>,
    o: &RawQuantizerOptions,
    bitwidths: TargetBitwidths,
) -> Quantization {
    let defaults = QuantizerSettings::default();
    Quantization {
        calibration: calibration.map(|c| c.value.clone()),
        overrides,
        ignore_quantization_overrides: val(&o.ignore_quantization_overrides, false),
        algorithms: val(&o.algorithms, Algorithms::default()),
        adaround: o
            .adaround
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default(),
        settings: QuantizerSettings {
            act_bitwidth: bitwidths.act,
            weights_bitwidth: bitwidths.weights,
            bias_bitwidth: bitwidths.bias,
            float_bitwidth: o.float_bitwidth.as_ref().map(|f| f.value),
            act_calibration: val(&o.act_calibration, defaults.act_calibration),
            param_calibration: val(&o.param_calibration, defaults.param_calibration),
            act_schema: val(&o.act_schema, defaults.act_schema),
            param_schema: val(&o.param_schema, defaults.param_schema),
            percentile: val(&o.percentile, defaults.percentile),
            per_channel: val(&o.per_channel, defaults.per_channel),
            per_row: val(&o.per_row, defaults.per_row),
            calibrate_with_quantized_weights: val(
                &o.calibrate_with_quantized_weights,
                defaults.calibrate_with_quantized_weights,
            ),
            float_bias_bitwidth: crate::quantizer::FloatBiasBitwidth(
                o.float_bias_bitwidth.as_ref().map(|f| f.value),
            ),
            quantsim_config: Default::default(),
        },
    }
}
