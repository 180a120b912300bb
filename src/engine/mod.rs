//! The incremental build engine: a salsa database whose inputs are file contents and whose
//! queries turn a manifest into encodings, recomputing only what an edit can affect.
//!
//! One module per stage of the data flow, declared bottom to top below; a module uses only
//! modules declared before it (`tests/tidy.rs` fails on an arrow pointing up, and so on any
//! circle):
//!
//! - `source`, `db`: files as salsa inputs, and the database;
//! - `log`, `keys`, `error`, `inputs`: the work log, the salsa ids every query is keyed by,
//!   `BuildError`, reading files in;
//! - `cache`, `stored`: the registry of store kinds (the cache contract) and the payloads' forms;
//! - `plan`, `model`, `overrides`: the manifest as each unit sees it, its model (equalized when
//!   the target asks for CLE), its overrides;
//! - `samples`, `correct`: a calibration's input list and samples; bias correction, the
//!   transform that measures them;
//! - `adaround`, `adarounded`: AdaRound over a model (the runs and the plan, shared with
//!   `oneshot`), and AdaRound as a stage, one store entry per layer, with the front every later
//!   stage loads a model through;
//! - `calibrate`: samples → statistics → merged statistics → each tensor's statistics;
//! - `encode`: each tensor's encoding, and a unit's encodings;
//! - `export`, `evaluate`, `artifacts`: `encodings.json` and the QDQ model, the evaluation,
//!   a unit's output files;
//! - `explain`, `outcome`, `fresh`, `pipeline`, `build`: the driver, from manifests to written
//!   files, and the worker that makes a build cancellable.
//!
//! From outside, the engine is what this module re-exports (the front): the database, the
//! driver's [`build`] with its options and report, the errors and the file inputs. The CLI and
//! the watcher use nothing else. [`oneshot`] is the same work without a database, for
//! `quant quantize`; [`lines`] is the incremental model at toy scale.
//!
//! It must not format terminal output (the CLI does), watch the file system (`watch` does, and
//! hands over changed paths), or hold numeric logic of its own (that lives in `quantizer`,
//! `stats`, `encoding`, `overrides`, `export`, `eval`).
//!
//! # The query chain
//!
//! ```text
//! manifest file ──► resolved targets ──► model (CLE, bias correction, AdaRound) ──► per-sample statistics
//!                                                                      │
//!            ┌────────────── merged statistics ◄───────────────────────┘
//!            ▼
//!   per-tensor statistics ─┐
//!                          ├──► per-tensor encoding ──► artifacts
//!   per-tensor overrides ──┘
//! ```
//!
//! The two per-tensor *projections* are what make an edit cheap. The coarse queries before
//! them (the whole overrides file parsed, the merged statistics of a model) re-run on any
//! change to their input; each projection then re-runs too, but returns an equal value for
//! every tensor the edit did not touch. Salsa *backdates* an equal result: queries depending
//! only on it are not re-executed. So editing one override re-encodes exactly one tensor, and
//! the artifacts re-serialize once. [`lines`] is the same shape at toy scale, and the tests
//! assert it through the execution log ([`Database::with_execution_log`]).
//!
//! # The persistent store
//!
//! Salsa memoizes within one process; the store (`crate::store`) carries results to the next
//! one. Two queries consult it before computing: a sample's statistics and a tensor's
//! encoding, each under a key made only of content digests and settings (the table in
//! `book/src/cache.md`, generated from the registry in `cache`). The store is a cache of pure
//! functions, so a query reading it stays deterministic. What was actually computed (a store miss) is reported through the
//! [`WorkLog`] of the build's [`BuildContext`] — the `--json` counts — a side
//! channel outside dependency tracking, because memoization is exactly what hides it.
//!
//! # Rules
//!
//! **Architecture Invariant:** inputs change only through [`Database::load`] and
//! [`Database::refresh`], which set a [`SourceFile`] only when its blake3 digest (or its
//! read error) changed.
//! *Rationale:* a salsa setter starts a new revision even for an equal value, which would
//! re-validate everything downstream for nothing.
//!
//! **Architecture Invariant:** parallel work runs on database clones with rayon, outside
//! queries: `items.par_iter().map_with(db.clone(), |db, item| query(db, *item))`.
//! *Rationale:* the database is `Send + Clone` but not `Sync`; results memoized on a clone are
//! visible from every handle, and a query that spawned threads would hide their reads from
//! dependency tracking. An evaluation's samples and an AdaRound wave's runs are the exceptions:
//! their parallel part reads no database state.
//!
//! **Architecture Invariant:** any loop that can run longer than a few milliseconds (samples,
//! tensors, channels) calls `db.unwind_if_revision_cancelled()` on each iteration.
//! *Rationale:* a newer edit must cancel a stale build promptly, and salsa checks the flag only
//! at query boundaries.
//!
//! **Architecture Invariant:** never set an input while holding a database clone on the same
//! thread. *Rationale:* a set waits for every clone to drop, which would never happen.
//!
//! Builds run through [`Build`]: on a worker thread with a clone, so that the main
//! thread (the one that owns the original handle and talks to the watcher) can set inputs, which
//! cancels the running build; `Build::join` then returns `Err(salsa::Cancelled)` and the caller
//! starts a new one. A cancelled computation returns nothing, so nothing partial is ever stored.
//! [`crate::watch::rebuild_on_change`] is that loop, for `quant watch`.

// Bottom to top: each module uses only modules listed before it (`tests/tidy.rs` checks it).
// One blank line between them keeps rustfmt from sorting them by name.

// Files the build reads, and the database that tracks them.
mod source;

mod db;

// What a build records of its own work, and the salsa ids every stage is keyed by.
mod log;

mod keys;

mod error;

mod inputs;

// The store: its kinds and key fields, and the payloads' byte forms.
mod cache;

mod stored;

// The stages, in data-flow order.
mod plan;

mod model;

mod overrides;

mod samples;

mod correct;

mod adaround;

mod adarounded;

mod calibrate;

mod encode;

mod precision;

mod export;

mod evaluate;

mod artifacts;

// The driver, on top.
mod explain;

mod outcome;

mod fresh;

mod pipeline;

mod build;

pub mod lines;

pub mod oneshot;

#[cfg(test)]
mod payload_fuzz;

// The front: everything the CLI, the watcher, the tests and embedders use.
pub use adaround::LayerSummary;
pub use build::Build;
pub use cache::{Field, KINDS, KindSpec, Payload, markdown_table as cache_table};
pub use db::{Database, Db, ExecutedQuery};
pub use encode::UnitEncodings;
pub use error::{BuildError, display_path};
pub use evaluate::UnitEvaluation;
pub use explain::{Explanation, InputChange};
pub use inputs::source_file;
pub use keys::BuildContext;
pub use log::{SampleRun, TensorRun, WorkLog, WorkRecord};
pub use outcome::{
    BuildCounts, BuildOptions, BuildReport, Progress, ProjectSpec, Shard, UnitDone, UnitOutcome,
};
pub use pipeline::build;
pub use source::{FileError, FileSnapshot, Files, SourceFile, normalize_path};
