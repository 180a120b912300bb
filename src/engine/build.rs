//! Running a build on a worker thread so that a newer edit can cancel it.
//!
//! It owns the thread and the catching of salsa's cancellation. It must not decide what a build
//! computes, nor report anything to the user.

use std::panic::AssertUnwindSafe;
use std::thread::JoinHandle;

use salsa::Cancelled;

use super::db::Database;

/// A build running on its own thread against a clone of the database.
///
/// Setting an input on the original handle (e.g. [`Database::refresh`] after a file changed)
/// raises salsa's cancellation flag; the build's next query call, or its next
/// `unwind_if_revision_cancelled`, unwinds, the worker drops its clone, and the set proceeds.
/// The set blocks until then, so it must happen on a thread that holds no other clone.
#[must_use = "a build's result (or cancellation) is only observed through `join`"]
pub struct Build<T> {
    worker: JoinHandle<Result<T, Cancelled>>,
}

impl<T: Send + 'static> Build<T> {
    /// Starts `build` on a new thread with a clone of `db`.
    pub fn spawn<F>(db: &Database, build: F) -> Build<T>
    where
        F: FnOnce(&Database) -> T + Send + 'static,
    {
        let db = db.clone();
        let worker = std::thread::spawn(move || {
            // Unwind safety: a cancelled revision's partial results are discarded by salsa,
            // and the clone is dropped right after, so no broken state is observed.
            let outcome = Cancelled::catch(AssertUnwindSafe(|| build(&db)));
            drop(db);
            outcome
        });
        Build { worker }
    }

    /// Whether the build has finished or been cancelled (so `join` will not block).
    pub fn is_finished(&self) -> bool {
        self.worker.is_finished()
    }

    /// Waits for the build: its result, or `Err(Cancelled)` when an input changed under it.
    ///
    /// A panic in the build that is not a cancellation is re-raised here: it is a bug, not an
    /// outcome.
    pub fn join(self) -> Result<T, Cancelled> {
        match self.worker.join() {
            Ok(outcome) => outcome,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}
