//! The incremental build engine: a salsa database whose inputs are file contents and whose
//! queries turn a manifest into encodings, recomputing only what an edit can affect.
//!
//! It owns the database ([`db`]), the source-file inputs ([`files`]), the build worker that
//! makes builds cancellable ([`build`]), the query chain ([`queries`]), the driver that runs a
//! build from manifests to written files ([`pipeline`]), the serialized forms kept in the
//! persistent store ([`stored`]), `report.json` ([`summary`]), the QDQ model and the
//! evaluation ([`evaluate`]) and `--explain`'s build records
//! ([`explain`]). [`oneshot`] is the same work without a database, for `quant quantize`. It must not format terminal output
//! (the CLI does), watch the file system (`watch` does, and hands over changed paths), or hold
//! numeric logic of its own (that lives in `stats`, `encoding`, `overrides`, `export`).
//!
//! # The query chain
//!
//! ```text
//! manifest file ──► resolved targets ──► model graph ──► per-sample statistics
//!                                                            │
//!            ┌────────────── merged statistics ◄─────────────┘
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
//! `book/src/cache.md`). The store is a cache of pure functions, so a query reading it stays
//! deterministic. What was actually computed (a store miss) is reported through the
//! [`queries::WorkLog`] of the build's [`queries::BuildContext`] — the `--json` counts — a side
//! channel outside dependency tracking, because memoization is exactly what hides it.
//!
//! # Rules
//!
//! **Architecture Invariant:** inputs change only through [`Database::load`] and
//! [`Database::refresh`], which set a [`files::SourceFile`] only when its blake3 digest (or its
//! read error) changed.
//! *Rationale:* a salsa setter starts a new revision even for an equal value, which would
//! re-validate everything downstream for nothing.
//!
//! **Architecture Invariant:** parallel work runs on database clones with rayon, outside
//! queries: `items.par_iter().map_with(db.clone(), |db, item| query(db, *item))`.
//! *Rationale:* the database is `Send + Clone` but not `Sync`; results memoized on a clone are
//! visible from every handle, and a query that spawned threads would hide their reads from
//! dependency tracking.
//!
//! **Architecture Invariant:** any loop that can run longer than a few milliseconds (samples,
//! tensors, channels) calls `db.unwind_if_revision_cancelled()` on each iteration.
//! *Rationale:* a newer edit must cancel a stale build promptly, and salsa checks the flag only
//! at query boundaries.
//!
//! **Architecture Invariant:** never set an input while holding a database clone on the same
//! thread. *Rationale:* a set waits for every clone to drop, which would never happen.
//!
//! Builds run through [`build::Build`]: on a worker thread with a clone, so that the main
//! thread (the one that owns the original handle and talks to the watcher) can set inputs, which
//! cancels the running build; `Build::join` then returns `Err(salsa::Cancelled)` and the caller
//! starts a new one. A cancelled computation returns nothing, so nothing partial is ever stored.
//! [`crate::watch::rebuild_on_change`] is that loop, for `quant watch`.

pub mod build;
pub mod db;
pub mod evaluate;
pub mod explain;
pub mod files;
pub mod lines;
pub mod oneshot;
pub mod pipeline;
pub mod queries;
pub mod stored;
pub mod summary;

pub use build::Build;
pub use db::{Database, Db, ExecutedQuery};
pub use files::{FileError, FileSnapshot, Files, SourceFile, normalize_path, source_file};
