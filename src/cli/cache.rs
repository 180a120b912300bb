//! `quant cache gc` and `quant clean`: store maintenance for the manifests at PATH.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::shell::Shell;
use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::engine::display_path;
use crate::manifest::{self, FileCheck};
use crate::store::{self, DEFAULT_MAX_SIZE, Store};

/// `quant cache` subcommands.
#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Remove stale temp files and quarantined entries, then least-recently-used entries until
    /// the store fits in --max-size.
    Gc(GcArgs),
}

/// `quant cache gc` options.
#[derive(Args, Debug)]
pub struct GcArgs {
    /// A quant.toml, a folder holding one, or a folder to search for them (default: `.`).
    path: Option<PathBuf>,
    /// Largest size the store may keep, e.g. `500M`, `2G` (default 2G).
    #[arg(long = "max-size", value_parser = parse_size)]
    max_size: Option<u64>,
}

/// `quant clean` options.
#[derive(Args, Debug)]
pub struct CleanArgs {
    /// A quant.toml, a folder holding one, or a folder to search for them (default: `.`).
    path: Option<PathBuf>,
}

fn parse_size(text: &str) -> Result<u64, String> {
    store::parse_size(text).map_err(|e| e.to_string())
}

/// The manifests at `path` with their store folders (deduplicated, in order).
fn manifests(shell: &Shell, path: &Path) -> Result<Vec<(PathBuf, PathBuf)>, ExitCode> {
    let found = match manifest::discover(path) {
        Ok(found) => found,
        Err(e) => {
            shell.diagnostic(miette::Report::new(e));
            return Err(ExitCode::from(EXIT_FAILURE));
        }
    };
    if found.is_empty() {
        shell.error(format!(
            "no {} found in {}",
            manifest::MANIFEST_FILE,
            path.display()
        ));
        return Err(ExitCode::from(EXIT_USAGE));
    }
    Ok(found
        .into_iter()
        .map(|manifest| {
            let absolute = std::path::absolute(&manifest).unwrap_or(manifest);
            let root = absolute.parent().unwrap_or(Path::new(".")).to_path_buf();
            let store = Store::default_dir(&root);
            (absolute, store)
        })
        .collect())
}

/// Runs `quant cache ...`.
pub fn run(command: CacheCommand) -> ExitCode {
    let shell = Shell::new();
    match command {
        CacheCommand::Gc(args) => {
            let path = args.path.unwrap_or_else(|| PathBuf::from("."));
            let found = match manifests(&shell, &path) {
                Ok(found) => found,
                Err(code) => return code,
            };
            let max_size = args.max_size.unwrap_or(DEFAULT_MAX_SIZE);
            let dirs: BTreeSet<PathBuf> = found.into_iter().map(|(_, store)| store).collect();
            for dir in dirs {
                if !dir.is_dir() {
                    continue;
                }
                let result = Store::open(&dir).and_then(|store| store.gc(max_size));
                match result {
                    Ok(report) => shell.status(
                        "Collected",
                        format!(
                            "{}: removed {} entries ({} bytes), {} stale temp files, {} quarantined; kept {} entries ({} bytes)",
                            display_path(&dir),
                            report.entries_removed,
                            report.bytes_removed,
                            report.stale_temp_files_removed,
                            report.quarantined_removed,
                            report.entries_kept,
                            report.bytes_kept
                        ),
                    ),
                    Err(e) => {
                        shell.error(format!("{e:#}"));
                        return ExitCode::from(EXIT_FAILURE);
                    }
                }
            }
            ExitCode::SUCCESS
        }
    }
}

/// Runs `quant clean`: deletes the store and the output folder of each manifest at PATH.
pub fn run_clean(args: CleanArgs) -> ExitCode {
    let shell = Shell::new();
    let path = args.path.unwrap_or_else(|| PathBuf::from("."));
    let found = match manifests(&shell, &path) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let mut stores = BTreeSet::new();
    for (manifest_path, store_dir) in found {
        if stores.insert(store_dir.clone()) {
            match store::clean(&store_dir) {
                Ok(report) if report.files_removed > 0 => shell.status(
                    "Removed",
                    format!(
                        "{} ({} files, {} bytes)",
                        display_path(&store_dir),
                        report.files_removed,
                        report.bytes_removed
                    ),
                ),
                Ok(_) => {}
                Err(e) => {
                    shell.error(format!("{e:#}"));
                    return ExitCode::from(EXIT_FAILURE);
                }
            }
        }
        let Ok(text) = std::fs::read_to_string(&manifest_path) else {
            continue;
        };
        let pipeline = match manifest::resolve_text(&text, &manifest_path, FileCheck::Skip) {
            Ok(pipeline) => pipeline,
            Err(e) => {
                shell.diagnostic(miette::Report::new(e));
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        // Never delete the manifest's own folder or one above it (`out_dir = "."`).
        if pipeline.root.starts_with(&pipeline.out_dir) {
            shell.warn(format!(
                "not removing out_dir {}: it holds the manifest",
                display_path(&pipeline.out_dir)
            ));
            continue;
        }
        if pipeline.out_dir.is_dir() {
            if let Err(e) = std::fs::remove_dir_all(&pipeline.out_dir) {
                shell.error(format!(
                    "cannot remove {}: {e}",
                    display_path(&pipeline.out_dir)
                ));
                return ExitCode::from(EXIT_FAILURE);
            }
            shell.status("Removed", display_path(&pipeline.out_dir));
        }
    }
    ExitCode::SUCCESS
}
