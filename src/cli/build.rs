//! `quant build`: builds every target of the manifests at PATH, incrementally, and reports what
//! was computed and what was reused. Also the setup `quant watch` shares: finding manifests,
//! opening their stores, rendering a build's result.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Args;
use indicatif::ProgressBar;
use serde_json::json;

use super::shell::Shell;
use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::engine::{
    self, BuildContext, BuildOptions, BuildReport, Database, Explanation, Progress, ProjectSpec,
    Shard, WorkLog, display_path,
};
use crate::manifest;
use crate::store::{REMOTE_CACHE_ENV, Remote, RemoteCounts, Store};

/// `quant build` options.
#[derive(Args, Debug)]
pub struct BuildArgs {
    /// A quant.toml, a folder holding one, or a folder to search for them (default: `.`).
    path: Option<PathBuf>,
    /// Build only this target (repeatable).
    #[arg(long = "target", short = 't', value_name = "TARGET")]
    target: Vec<String>,
    /// Build only this model (repeatable).
    #[arg(long = "model", short = 'm', value_name = "MODEL")]
    model: Vec<String>,
    /// Calibration samples run in parallel (default: all cores).
    #[arg(short = 'j', long = "jobs")]
    jobs: Option<usize>,
    /// Print one JSON summary on stdout instead of status lines.
    #[arg(long)]
    json: bool,
    /// Print why each recomputation happened.
    #[arg(long)]
    explain: bool,
    /// Print every evaluated target's tables, also when its evaluation was reused.
    #[arg(long, short = 'v')]
    verbose: bool,
    /// Let manifests write outside their own folder and read files outside PATH.
    #[arg(long)]
    allow_outside_root: bool,
    /// A shared cache behind the local store: `http(s)://HOST/PATH` (GET/PUT, e.g. nginx
    /// WebDAV) or `s3://BUCKET/PREFIX` (default: $QUANT_REMOTE_CACHE, then `[cache] remote`).
    #[arg(long = "remote-cache", value_name = "URL")]
    remote_cache: Option<String>,
    /// Read from the remote cache but upload nothing (for untrusted builds).
    #[arg(long = "remote-cache-read-only")]
    remote_cache_read_only: bool,
    /// Compute only shard K of N of every calibration's samples (and upload them); write no
    /// outputs. A plain build afterwards merges the shards' statistics.
    #[arg(long, value_name = "K/N")]
    shard: Option<Shard>,
}

/// What went wrong before a build could start.
pub(crate) enum SetupError {
    /// Bad usage (exit 2): the message says what to fix.
    Usage(String),
    /// A manifest or store problem (exit 1).
    Failure(miette::Report),
    /// Problems in several manifests (exit 1).
    Failures(Vec<miette::Report>),
}

impl SetupError {
    pub(crate) fn report(self, shell: &Shell) -> ExitCode {
        match self {
            SetupError::Usage(message) => {
                shell.error(message);
                ExitCode::from(EXIT_USAGE)
            }
            SetupError::Failure(report) => {
                shell.diagnostic(report);
                ExitCode::from(EXIT_FAILURE)
            }
            SetupError::Failures(reports) => {
                for report in reports {
                    shell.diagnostic(report);
                }
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}

/// The manifests at `path` (see [`manifest::discover`]), each with the context of its store.
/// Manifests sharing a store folder share one context; all share one work log. The manifests
/// must pass [`manifest::check_workspace`] (paths confined unless `allow_outside_root`).
pub(crate) fn projects(
    db: &Database,
    path: &Path,
    allow_outside_root: bool,
) -> Result<Vec<ProjectSpec>, SetupError> {
    projects_with_remote(db, path, allow_outside_root, None)
}

/// [`projects`], with `remote` behind every store.
pub(crate) fn projects_with_remote(
    db: &Database,
    path: &Path,
    allow_outside_root: bool,
    remote: Option<&Arc<Remote>>,
) -> Result<Vec<ProjectSpec>, SetupError> {
    let manifests =
        manifest::discover(path).map_err(|e| SetupError::Failure(miette::Report::new(e)))?;
    let problems = manifest::check_workspace(path, &manifests, allow_outside_root);
    if !problems.is_empty() {
        return Err(SetupError::Failures(
            problems.into_iter().map(miette::Report::new).collect(),
        ));
    }
    if manifests.is_empty() {
        return Err(SetupError::Usage(format!(
            "no {} found in {}",
            manifest::MANIFEST_FILE,
            path.display()
        )));
    }
    let log = WorkLog::default();
    let mut contexts: Vec<(PathBuf, BuildContext)> = Vec::new();
    let mut projects = Vec::new();
    for manifest_path in manifests {
        let absolute = std::path::absolute(&manifest_path).unwrap_or(manifest_path.clone());
        let root = absolute.parent().unwrap_or(Path::new(".")).to_path_buf();
        let dir = Store::default_dir(&root);
        let context = match contexts.iter().find(|(d, _)| *d == dir) {
            Some((_, context)) => *context,
            None => {
                // Entries are verified on every read, so a torn entry after a power loss is
                // recomputed; flushing each one would cost more than most computations.
                let mut store = Store::open(&dir)
                    .map_err(|e| SetupError::Failure(miette::Report::msg(format!("{e:#}"))))?
                    .with_fsync(false);
                if let Some(remote) = remote {
                    store = store.with_remote(remote.clone());
                }
                let context = BuildContext::new(db, Some(store), log.clone());
                contexts.push((dir, context));
                context
            }
        };
        projects.push(ProjectSpec {
            shown_as: display_path(&absolute),
            manifest: absolute,
            context,
        });
    }
    Ok(projects)
}

/// Progress callback printing cargo-like status lines and a bar while samples run.
pub(crate) fn progress_printer(shell: Shell) -> impl Fn(Progress) + Send + Sync + 'static {
    let bar: Mutex<Option<ProgressBar>> = Mutex::new(None);
    move |event| {
        let mut bar = bar
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match event {
            Progress::Calibrating {
                pipeline,
                model,
                targets,
                samples,
            } => {
                if let Some(old) = bar.take() {
                    old.finish_and_clear();
                }
                shell.status(
                    "Calibrating",
                    format!(
                        "{pipeline}/{model} with {samples} sample{} (for {})",
                        plural(samples),
                        targets.join(", ")
                    ),
                );
                *bar = Some(shell.progress("Calibrating", samples as u64));
            }
            Progress::SampleDone => {
                if let Some(bar) = bar.as_ref() {
                    bar.inc(1);
                }
            }
            Progress::Adarounding {
                pipeline,
                target,
                model,
                layers,
            } => {
                if let Some(old) = bar.take() {
                    old.finish_and_clear();
                }
                shell.status(
                    "AdaRounding",
                    format!(
                        "{pipeline}/{target}/{model}, {layers} layer{}",
                        plural(layers)
                    ),
                );
                *bar = Some(shell.progress("AdaRounding", layers as u64));
            }
            Progress::LayerDone { layer } => {
                if let Some(bar) = bar.as_ref() {
                    bar.set_message(layer);
                    bar.inc(1);
                }
            }
            Progress::Encoding {
                pipeline,
                target,
                model,
            } => {
                if let Some(old) = bar.take() {
                    old.finish_and_clear();
                }
                shell.status("Encoding", format!("{pipeline}/{target}/{model}"));
            }
            Progress::Wrote { path } => shell.status("Writing", display_path(&path)),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Names, at most `limit` of them, then "and N more".
pub(crate) fn list_names(names: &[String], limit: usize) -> String {
    let mut text = names
        .iter()
        .take(limit)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > limit {
        text.push_str(&format!(" and {} more", names.len() - limit));
    }
    text
}

/// The `--explain` line of one unit.
pub(crate) fn explanation_line(explanation: &Explanation) -> Option<String> {
    let mut work = Vec::new();
    if !explanation.samples_run.is_empty() {
        let files: Vec<String> = explanation
            .samples_run
            .iter()
            .map(|files| files.join(" "))
            .collect();
        work.push(format!(
            "{} sample{} calibrated: {}",
            files.len(),
            plural(files.len()),
            list_names(&files, 5)
        ));
    }
    if !explanation.layers_optimized.is_empty() {
        let n = explanation.layers_optimized.len();
        work.push(format!(
            "{n} AdaRound layer{} optimized: {}",
            plural(n),
            list_names(&explanation.layers_optimized, 5)
        ));
    }
    if !explanation.tensors_encoded.is_empty() {
        let n = explanation.tensors_encoded.len();
        work.push(format!(
            "{n} tensor{} re-encoded: {}",
            plural(n),
            list_names(&explanation.tensors_encoded, 5)
        ));
    }
    let cause = if explanation.first_build {
        "no record of an earlier build".to_string()
    } else if explanation.changes.is_empty() {
        if work.is_empty() {
            return None;
        }
        "no input changed (the store lacked these entries)".to_string()
    } else {
        explanation
            .changes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if work.is_empty() {
        work.push("nothing recomputed (all reused from the store)".to_string());
    }
    Some(format!("{cause} → {}", work.join("; ")))
}

/// Prints warnings, diagnostics and (with `explain`) explanations of a finished build; returns
/// the exit code it deserves.
pub(crate) fn render(shell: &Shell, report: &BuildReport, explain: bool) -> ExitCode {
    for corruption in &report.corruptions {
        shell.warn(corruption);
    }
    for problem in &report.store_errors {
        shell.warn(format!("store: {problem} (the build went on without it)"));
    }
    if !report.unknown.is_empty() {
        for message in &report.unknown {
            shell.error(message);
        }
        return ExitCode::from(EXIT_USAGE);
    }
    // A warning several targets of one model raise (a bad calibration sample, an override
    // naming nothing) is printed once, naming them all.
    // (pipeline, model, warning) → the targets raising it, in build order.
    type Raised<'a> = ((&'a str, &'a str, &'a str), Vec<&'a str>);
    let mut warnings: Vec<Raised<'_>> = Vec::new();
    for unit in &report.units {
        if let Ok(done) = &unit.result
            && !done.written.is_empty()
        {
            for warning in &done.encodings.warnings {
                let at = (
                    unit.pipeline.as_str(),
                    unit.model.as_str(),
                    warning.as_str(),
                );
                match warnings.iter_mut().find(|(key, _)| *key == at) {
                    Some((_, targets)) => targets.push(&unit.target),
                    None => warnings.push((at, vec![&unit.target])),
                }
            }
        }
    }
    for ((_, model, warning), targets) in warnings {
        match targets.as_slice() {
            [target] => shell.warn(format!("{target}/{model}: {warning}")),
            _ => shell.warn(format!("{model} ({}): {warning}", targets.join(", "))),
        }
    }
    if explain {
        let loud = Shell::new();
        for unit in &report.units {
            let name = format!("{}/{}/{}", unit.pipeline, unit.target, unit.model);
            match &unit.result {
                Ok(done) => match explanation_line(&done.explanation) {
                    Some(line) => loud.status("Dirty", format!("{name}: {line}")),
                    None => loud.status("Fresh", name),
                },
                Err(_) => loud.status("Failed", name),
            }
        }
    }
    let mut shown = Vec::new();
    for error in report.errors() {
        // Several units failing on one shared file report it once.
        let text = error.to_string();
        if !shown.contains(&text) {
            shell.diagnostic(miette::Report::new(error.clone()));
            shown.push(text);
        }
    }
    if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

/// A build's wall time: milliseconds under a second (watch-mode rebuilds live there, and
/// "0.04s" hides what a tuning session cares about), seconds with two decimals above.
fn duration(ms: u128) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.2}s", ms as f64 / 1000.0)
    }
}

/// The `Finished` line.
pub(crate) fn finished_line(report: &BuildReport) -> String {
    let c = &report.counts;
    let ok = report.units.iter().filter(|u| u.result.is_ok()).count();
    format!(
        "{ok} target{} in {} ({} sample{} run, {} reused; {} tensor{} encoded, {} reused; {} file{} written)",
        plural(ok),
        duration(report.wall_ms),
        c.samples_run,
        plural(c.samples_run),
        c.samples_reused,
        c.tensors_encoded,
        plural(c.tensors_encoded),
        c.tensors_reused,
        c.artifacts_written,
        plural(c.artifacts_written),
    )
}

/// The remote cache a build uses: `--remote-cache`, else `$QUANT_REMOTE_CACHE`, else the
/// `[cache]` table of the manifest at `path`; `None` when none is set.
fn remote_cache(args: &BuildArgs, path: &Path) -> Result<Option<Arc<Remote>>, SetupError> {
    let from_manifest = manifest::cache_settings(path);
    let url = args
        .remote_cache
        .clone()
        .or_else(|| std::env::var(REMOTE_CACHE_ENV).ok())
        .filter(|url| !url.is_empty())
        .or_else(|| from_manifest.as_ref().and_then(|c| c.remote.clone()));
    let Some(url) = url else {
        return Ok(None);
    };
    let read_only =
        args.remote_cache_read_only || from_manifest.as_ref().is_some_and(|c| c.read_only);
    Remote::open(&url, read_only)
        .map(|remote| Some(Arc::new(remote)))
        .map_err(|e| SetupError::Usage(e.to_string()))
}

/// The `--json` summary.
pub(crate) fn summary_json(report: &BuildReport) -> serde_json::Value {
    let c = &report.counts;
    let targets: Vec<serde_json::Value> = report
        .units
        .iter()
        .map(|unit| match &unit.result {
            Ok(done) => json!({
                "pipeline": unit.pipeline,
                "target": unit.target,
                "model": unit.model,
                "status": "ok",
                "encodings": display_path(&done.encodings_path),
                "activation_encodings": done.encodings.activations.len(),
                "param_encodings": done.encodings.parameters.len(),
                "written": done.written.len(),
                "unchanged": done.unchanged.len(),
                "tensors_encoded": done.explanation.tensors_encoded.len(),
                "evaluation": done.evaluation.as_ref().map(|e| e.headline()),
            }),
            Err(error) => json!({
                "pipeline": unit.pipeline,
                "target": unit.target,
                "model": unit.model,
                "status": "error",
                "error": error.to_string(),
            }),
        })
        .collect();
    json!({
        "samples_run": c.samples_run,
        "samples_reused": c.samples_reused,
        "tensors_encoded": c.tensors_encoded,
        "tensors_reused": c.tensors_reused,
        "artifacts_written": c.artifacts_written,
        "artifacts_unchanged": c.artifacts_unchanged,
        "evaluations_run": c.evaluations_run,
        "eval_samples_run": c.eval_samples_run,
        "eval_samples_reused": c.eval_samples_reused,
        "transforms_run": c.transforms_run,
        "layers_optimized": c.layers_optimized,
        "layers_reused": c.layers_reused,
        "wall_ms": report.wall_ms,
        "targets": targets,
        "errors": report.errors().count() + report.unknown.len(),
    })
}

/// Adds the remote cache's counters to a `--json` summary.
fn add_remote_counts(object: &mut serde_json::Map<String, serde_json::Value>, c: &RemoteCounts) {
    if let Ok(serde_json::Value::Object(counts)) = serde_json::to_value(c) {
        object.extend(counts);
    }
}

/// A byte count as people read it.
fn bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        _ => format!("{:.1} MB", n as f64 / 1e6),
    }
}

/// Prints, per unit, what the build did not already say: a `Fresh` line for a unit it left
/// alone (with its headline metrics, when evaluated), and the evaluation tables (float vs
/// quantized metrics, the worst tensors by SQNR) of every unit whose evaluation ran, or of every
/// evaluated unit with `verbose`. `fresh_lines` is off when `--explain` already named them. Status lines, so `--json` silences them like any other.
pub(crate) fn print_units(shell: &Shell, report: &BuildReport, verbose: bool, fresh_lines: bool) {
    for unit in &report.units {
        let Ok(done) = &unit.result else { continue };
        let name = format!("{}/{}/{}", unit.pipeline, unit.target, unit.model);
        match &done.evaluation {
            Some(evaluation) if done.evaluated || verbose => {
                let mut lines = evaluation.summary.lines();
                // The summary opens with "<model> on N samples"; the unit's full name says more.
                let first = lines.next().unwrap_or_default();
                let samples = first.rsplit_once(" on ").map_or(first, |(_, n)| n);
                shell.status("Evaluated", format!("{name} on {samples}"));
                for line in lines {
                    shell.status("", line);
                }
            }
            Some(evaluation) if fresh_lines && done.is_fresh() => shell.status(
                "Fresh",
                format!("{name} ({})", evaluation.headline_text(None)),
            ),
            _ if fresh_lines && done.is_fresh() => shell.status("Fresh", name),
            _ => {}
        }
    }
}

/// Runs `quant build`.
pub fn run(args: BuildArgs) -> ExitCode {
    let shell = Shell::new().quiet(args.json);
    if args.jobs == Some(0) {
        shell.error("--jobs must be at least 1");
        return ExitCode::from(EXIT_USAGE);
    }
    let path = args.path.clone().unwrap_or_else(|| PathBuf::from("."));
    let remote = match remote_cache(&args, &path) {
        Ok(remote) => remote,
        Err(e) => return e.report(&shell),
    };
    let db = Database::new();
    let projects = match projects_with_remote(&db, &path, args.allow_outside_root, remote.as_ref())
    {
        Ok(projects) => projects,
        Err(e) => return e.report(&shell),
    };
    let options = BuildOptions {
        targets: args.target.clone(),
        models: args.model.clone(),
        jobs: args.jobs,
        shard: args.shard,
    };
    let progress = progress_printer(shell);
    let report = engine::build(&db, &projects, &options, &progress);
    if let Some(remote) = &remote {
        for warning in remote.take_warnings() {
            shell.warn(warning);
        }
    }
    let code = render(&shell, &report, args.explain);
    print_units(&shell, &report, args.verbose, !args.explain);
    let remote_counts = remote.as_ref().map(|r| r.counts());
    if args.json {
        let mut summary = summary_json(&report);
        if let (Some(counts), Some(object)) = (remote_counts, summary.as_object_mut()) {
            add_remote_counts(object, &counts);
        }
        if let (Some(shard), Some(object)) = (args.shard, summary.as_object_mut()) {
            object.insert("shard".into(), json!([shard.index, shard.count]));
        }
        println!("{summary}");
    } else if report.succeeded() {
        let mut line = finished_line(&report);
        if let Some(counts) = remote_counts {
            line.push_str(&format!(
                "; remote cache: {} hit{}, {} miss{}, {} uploaded",
                counts.remote_hits,
                plural(counts.remote_hits as usize),
                counts.remote_misses,
                if counts.remote_misses == 1 { "" } else { "es" },
                bytes(counts.bytes_uploaded)
            ));
        }
        if let Some(shard) = args.shard {
            line.push_str(&format!(
                "; shard {}/{}: no outputs written",
                shard.index, shard.count
            ));
        }
        shell.status("Finished", line);
    }
    // Everything is written; freeing the database's memoized models, statistics and outputs
    // one allocation at a time would only delay the exit (by ~10 ms on det), so the OS gets
    // them back whole.
    std::mem::forget(report);
    std::mem::forget(db);
    code
}
