//! The salsa database every build query runs against, and the log of which queries executed.
//!
//! It owns the salsa storage, the registry of source files (see [`super::source`]) and an
//! optional execution log. It must not read files on its own initiative, format terminal output
//! or decide what a build means: queries and the driver do that.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use salsa::{DatabaseKeyIndex, EventKind};

use super::source::Files;

/// The query database trait: what a query may ask of the database besides salsa itself.
///
/// Queries take `&dyn Db` so they can be reused by any database that can hand out source files.
#[salsa::db]
pub trait Db: salsa::Database {
    /// The registry of source files, shared by every clone of the database.
    fn files(&self) -> &Files;
}

/// The incremental build database: salsa storage, the file registry and the execution log.
///
/// Clones share memoized results, inputs and the log; a clone is how work moves to another
/// thread (rayon, or a [`super::build::Build`] worker).
#[salsa::db]
#[derive(Clone)]
pub struct Database {
    storage: salsa::Storage<Self>,
    files: Files,
    log: Option<ExecutionLog>,
}

impl Database {
    /// A database without an execution log (what `quant build` uses when not explaining).
    pub fn new() -> Database {
        Database {
            storage: salsa::Storage::new(None),
            files: Files::default(),
            log: None,
        }
    }

    /// A database that records every query execution, for tests and `--explain`.
    pub fn with_execution_log() -> Database {
        let log = ExecutionLog::default();
        let sink = log.clone();
        let on_event = move |event: salsa::Event| {
            if let EventKind::WillExecute { database_key } = event.kind {
                sink.push(database_key);
            }
        };
        Database {
            storage: salsa::Storage::new(Some(Box::new(on_event))),
            files: Files::default(),
            log: Some(log),
        }
    }

    /// Removes and returns the queries executed since the last call, oldest first, with their
    /// query names resolved. Empty when the database has no execution log.
    pub fn take_executed(&self) -> Vec<ExecutedQuery> {
        let Some(log) = &self.log else {
            return Vec::new();
        };
        log.drain()
            .into_iter()
            .map(|key| ExecutedQuery {
                query: salsa::Database::ingredient_debug_name(self, key.ingredient_index())
                    .into_owned(),
                key: key.key_index(),
            })
            .collect()
    }
}

impl Default for Database {
    fn default() -> Database {
        Database::new()
    }
}

#[salsa::db]
impl salsa::Database for Database {}

#[salsa::db]
impl Db for Database {
    fn files(&self) -> &Files {
        &self.files
    }
}

/// One query execution: which query ran, and for which key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutedQuery {
    /// The query's name: the tracked function's name (e.g. `per_tensor_encoding`).
    pub query: String,
    /// The salsa id of the query's argument; stable within one database's lifetime.
    pub key: salsa::Id,
}

impl fmt::Display for ExecutedQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({:?})", self.query, self.key)
    }
}

/// The keys of executed queries, appended by salsa's event callback from whichever thread
/// executed them. Names are resolved later, on a database handle, because the callback has none.
#[derive(Clone, Default)]
struct ExecutionLog(Arc<Mutex<Vec<DatabaseKeyIndex>>>);

impl ExecutionLog {
    fn push(&self, key: DatabaseKeyIndex) {
        // A panicking query may poison the lock; the log itself is still consistent.
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(key);
    }

    fn drain(&self) -> Vec<DatabaseKeyIndex> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
