//! The watch loop: build, wait for a change, rebuild; a change during a build cancels it.
//!
//! It owns the order of operations between the build database, the build worker and the
//! watcher, which is where the subtle races live (a file read by the build before the watcher
//! knew it; a change landing just as a build finishes). It must not print: every step is handed
//! to the caller's callback, and the caller (the CLI) decides what to show.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::{Build, Database, Db};

use super::Watcher;

/// How often a running build is checked for completion while waiting for changes.
const BUILD_POLL: Duration = Duration::from_millis(20);

/// How long the loop waits for a change before reporting [`WatchEvent::Idle`].
const IDLE_TICK: Duration = Duration::from_millis(250);

/// One step of the watch loop, handed to the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchEvent<T> {
    /// A build ran to completion; its result may well be a diagnostic (a broken manifest, a
    /// missing file), after which the loop keeps watching.
    Built(T),
    /// Tracked files changed while a build ran: it was cancelled and starts again.
    Restarted {
        /// The files whose contents changed, sorted.
        changed: Vec<PathBuf>,
    },
    /// Tracked files changed while idle: a build starts.
    Changed {
        /// The files whose contents changed, sorted.
        changed: Vec<PathBuf>,
    },
    /// Nothing changed for a short while. Lets the caller stop the loop (return
    /// `ControlFlow::Break`) without waiting for a change.
    Idle,
}

/// Builds with `build`, then rebuilds whenever a file the database tracks changes, until
/// `on_event` returns `ControlFlow::Break`.
///
/// Every file the build read (through [`crate::engine::source_file`] or [`Database::load`]) is
/// watched from then on, so the tracked set follows the manifest. Files stay tracked after the
/// manifest stops naming them, which keeps a briefly broken manifest's previous files watched.
/// Must be called on a thread that holds no other clone of `db`.
pub fn rebuild_on_change<T, B>(
    db: &mut Database,
    watcher: &mut Watcher,
    build: B,
    mut on_event: impl FnMut(WatchEvent<T>) -> ControlFlow<()>,
) where
    T: Send + 'static,
    B: Fn(&Database) -> T + Clone + Send + 'static,
{
    'rebuild: loop {
        let running = Build::spawn(db, build.clone());
        let outcome = loop {
            if running.is_finished() {
                break running.join();
            }
            let Some(changed) = watcher.next_change(BUILD_POLL) else {
                continue;
            };
            // The database may have read the new contents already (a file the build opened
            // for the first time); then nothing is set and the build goes on.
            if db.refresh(&changed).is_empty() {
                continue;
            }
            // The refresh above cancelled the build and waited for it to unwind. If it had
            // finished just before, its result is stale all the same.
            let _stale = running.join();
            if on_event(WatchEvent::Restarted { changed }).is_break() {
                return;
            }
            continue 'rebuild;
        };
        match outcome {
            Ok(result) => {
                if on_event(WatchEvent::Built(result)).is_break() {
                    return;
                }
            }
            // Cancelled without a change of ours (another handle set an input): build again.
            Err(_cancelled) => continue 'rebuild,
        }

        // Watch what this build read. Files it read for the first time are re-read now, after
        // the watcher took its baseline, so an edit between the two is not lost.
        let known: BTreeSet<PathBuf> = watcher.paths().into_iter().collect();
        let tracked = db.files().paths();
        watcher.update_paths(&tracked);
        let new: Vec<&PathBuf> = tracked.iter().filter(|p| !known.contains(*p)).collect();
        if !db.refresh(new).is_empty() {
            continue 'rebuild;
        }

        loop {
            match watcher.next_change(IDLE_TICK) {
                Some(changed) => {
                    if db.refresh(&changed).is_empty() {
                        continue;
                    }
                    if on_event(WatchEvent::Changed { changed }).is_break() {
                        return;
                    }
                    continue 'rebuild;
                }
                None => {
                    if on_event(WatchEvent::Idle).is_break() {
                        return;
                    }
                }
            }
        }
    }
}
