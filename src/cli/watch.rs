//! `quant watch`: one long-lived build database; builds, then rebuilds on every change to a
//! file the build read, and prints which encodings changed (old → new scale and offset) and, per
//! evaluated target, what the change did to its metrics (old → new top-1 and output SQNR).
//! A broken manifest or a missing file is shown as a diagnostic and watching goes on;
//! Ctrl-C ends it with exit code 0.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;

use super::EXIT_FAILURE;
use super::build::{finished_line, progress_printer, projects, render};
use super::shell::Shell;
use crate::engine::{self, BuildOptions, BuildReport, Database, UnitEncodings, UnitEvaluation};
use crate::overrides::FixedEncoding;
use crate::watch::{WatchEvent, Watcher, rebuild_on_change};

/// Changed encodings printed per build before "and N more".
const CHANGE_LINES: usize = 20;

/// `quant watch` options.
#[derive(Args, Debug)]
pub struct WatchArgs {
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
    /// Print why each recomputation happened.
    #[arg(long)]
    explain: bool,
    /// Let manifests write outside their own folder and read files outside PATH.
    #[arg(long)]
    allow_outside_root: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C sets a flag the watch loop checks between builds, so it ends cleanly (exit 0).
fn catch_interrupt() {
    #[cfg(unix)]
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let handler: extern "C" fn(libc::c_int) = on_interrupt;
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// One encoding, for a change line.
fn describe(fixed: &FixedEncoding) -> String {
    match fixed {
        FixedEncoding::PerTensor(e) => format!(
            "scale {} offset {} ({}-bit, [{}, {}])",
            e.scale, e.offset, e.bitwidth, e.min, e.max
        ),
        FixedEncoding::PerChannel(channels) => {
            let low = channels
                .iter()
                .map(|e| e.scale)
                .fold(f64::INFINITY, f64::min);
            let high = channels
                .iter()
                .map(|e| e.scale)
                .fold(f64::NEG_INFINITY, f64::max);
            format!("{} channels, scale {low}..{high}", channels.len())
        }
        FixedEncoding::Float(bits) => format!("float{}", bits.bits()),
    }
}

/// Lines describing how `new` differs from `old`.
fn changes(unit: &str, old: &UnitEncodings, new: &UnitEncodings) -> Vec<String> {
    let mut lines = Vec::new();
    for (old_map, new_map) in [
        (&old.activations, &new.activations),
        (&old.parameters, &new.parameters),
    ] {
        for (name, encoding) in new_map {
            match old_map.get(name) {
                Some(previous) if previous == encoding => {}
                Some(previous) => lines.push(format!(
                    "{unit} {name}: {} → {}",
                    describe(previous),
                    describe(encoding)
                )),
                None => lines.push(format!("{unit} {name}: new, {}", describe(encoding))),
            }
        }
        for name in old_map.keys().filter(|n| !new_map.contains_key(*n)) {
            lines.push(format!("{unit} {name}: no longer encoded"));
        }
    }
    lines
}

/// Runs `quant watch`.
pub fn run(args: WatchArgs) -> ExitCode {
    let shell = Shell::new();
    if args.jobs == Some(0) {
        shell.error("--jobs must be at least 1");
        return ExitCode::from(super::EXIT_USAGE);
    }
    catch_interrupt();
    let path = args.path.clone().unwrap_or_else(|| PathBuf::from("."));
    let mut db = Database::new();
    let projects = match projects(&db, &path, args.allow_outside_root) {
        Ok(projects) => projects,
        Err(e) => return e.report(&shell),
    };
    let mut watcher = match Watcher::new(projects.iter().map(|p| p.manifest.clone())) {
        Ok(watcher) => watcher,
        Err(e) => {
            shell.error(format!("{e}"));
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let options = BuildOptions {
        targets: args.target.clone(),
        models: args.model.clone(),
        jobs: args.jobs,
        shard: None,
    };
    let progress = Arc::new(progress_printer(shell));
    let build = {
        let projects = projects.clone();
        move |db: &Database| engine::build(db, &projects, &options, progress.as_ref())
    };
    let mut last: BTreeMap<String, Arc<UnitEncodings>> = BTreeMap::new();
    let mut last_evaluation: BTreeMap<String, Arc<UnitEvaluation>> = BTreeMap::new();
    let mut usage_error = false;
    rebuild_on_change(
        &mut db,
        &mut watcher,
        build,
        |event: WatchEvent<BuildReport>| {
            match event {
                WatchEvent::Built(report) => {
                    let _ = render(&shell, &report, args.explain);
                    if !report.unknown.is_empty() {
                        usage_error = true;
                        return ControlFlow::Break(());
                    }
                    let mut lines = Vec::new();
                    let mut metrics = Vec::new();
                    for unit in &report.units {
                        let Ok(done) = &unit.result else { continue };
                        let name = format!("{}/{}/{}", unit.pipeline, unit.target, unit.model);
                        if let Some(evaluation) = &done.evaluation {
                            let previous = last_evaluation.insert(name.clone(), evaluation.clone());
                            // What a user tuning overrides watches for: what the edit did to
                            // accuracy, once per evaluated target that ran again.
                            if done.evaluated || previous.is_none() {
                                metrics.push(format!(
                                    "{}/{}: {}",
                                    unit.target,
                                    unit.model,
                                    evaluation.headline_text(previous.as_deref())
                                ));
                            }
                        }
                        if let Some(previous) = last.get(&name) {
                            lines.extend(changes(
                                &format!("{}/{}", unit.target, unit.model),
                                previous,
                                &done.encodings,
                            ));
                        }
                        last.insert(name, done.encodings.clone());
                    }
                    // On stderr with the status lines, so a reader sees them in order.
                    for line in lines.iter().take(CHANGE_LINES) {
                        shell.status("Changed", line);
                    }
                    if lines.len() > CHANGE_LINES {
                        shell.status(
                            "Changed",
                            format!("… and {} more", lines.len() - CHANGE_LINES),
                        );
                    }
                    for line in &metrics {
                        shell.status("Evaluated", line);
                    }
                    if report.succeeded() {
                        shell.status("Finished", finished_line(&report));
                    }
                    shell.status("Watching", "for changes (Ctrl-C to stop)");
                }
                // Counts only: the build's own lines (diagnostics, `--explain`) name the files,
                // so a file is named once, by what happened to it.
                WatchEvent::Restarted { changed } => shell.status(
                    "Restarting",
                    format!(
                        "{} file{} changed during the build",
                        changed.len(),
                        plural(changed.len())
                    ),
                ),
                WatchEvent::Changed { changed } => shell.status(
                    "Rebuilding",
                    format!("{} file{} changed", changed.len(), plural(changed.len())),
                ),
                WatchEvent::Idle => {}
            }
            if INTERRUPTED.load(Ordering::SeqCst) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    );
    if usage_error {
        ExitCode::from(super::EXIT_USAGE)
    } else {
        ExitCode::SUCCESS
    }
}
