//! Watching the files a build depends on, and reporting only those whose contents changed.
//!
//! It owns the operating-system watch (through notify-debouncer-full), the set of tracked paths
//! and the last digest seen for each. It watches the *directories* holding tracked files, not
//! the files: editors save by writing a temporary file and renaming it over the original, which
//! replaces the inode and silently ends a per-file watch. Events are filtered to tracked paths
//! and then gated on the blake3 digest, so touching a file, or rewriting it with the same bytes,
//! reports nothing. It must not print (the CLI reports), nor touch the build database: it hands
//! changed paths to whoever drives the build.

mod session;

pub use session::{WatchEvent, rebuild_on_change};

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify_debouncer_full::notify::event::{AccessKind, AccessMode, EventKind};
use notify_debouncer_full::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

use crate::engine::{FileError, FileSnapshot, normalize_path};
use crate::store::Digest;

/// How long the debouncer waits for a burst of events (an editor's write + rename) to settle.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

/// How often directories that did not exist are looked for again while waiting.
const MISSING_DIRECTORY_RETRY: Duration = Duration::from_millis(250);

/// Why the watcher could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The operating system refused to create a watcher (e.g. inotify instances exhausted).
    #[error("cannot start the file watcher")]
    Start(#[source] notify_debouncer_full::notify::Error),
}

/// What was last seen at a tracked path: only the digest (or the error), never the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    digest: Option<Digest>,
    error: Option<FileError>,
}

impl Seen {
    fn read(path: &Path) -> Seen {
        let snapshot = FileSnapshot::read(path);
        Seen {
            digest: snapshot.digest,
            error: snapshot.contents.err(),
        }
    }
}

/// Whether an event of this kind can leave a file with other contents. Opening, reading and
/// closing a file unwritten cannot; skipping them matters, because the digest gate itself opens
/// and reads the candidates: counting those reads as changes would make every gate schedule the
/// next one, and an idle watcher would re-read its tracked files forever.
fn may_change_contents(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Watches the directories of a set of tracked files and reports content changes.
pub struct Watcher {
    debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    events: Receiver<DebounceEventResult>,
    tracked: HashMap<PathBuf, Seen>,
    /// Directories under an operating-system watch.
    watched: BTreeSet<PathBuf>,
    /// Directories of tracked files that do not exist (yet); retried while waiting.
    missing: BTreeSet<PathBuf>,
}

impl Watcher {
    /// Starts watching `paths` (files; they need not exist yet) with [`DEFAULT_DEBOUNCE`].
    ///
    /// What each file holds now is the baseline: only later changes are reported.
    pub fn new<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Result<Watcher, WatchError> {
        Watcher::with_debounce(paths, DEFAULT_DEBOUNCE)
    }

    /// [`Watcher::new`] with an explicit debounce interval.
    pub fn with_debounce<P: AsRef<Path>>(
        paths: impl IntoIterator<Item = P>,
        debounce: Duration,
    ) -> Result<Watcher, WatchError> {
        let (sender, events) = mpsc::channel();
        let debouncer = new_debouncer(debounce, None, sender).map_err(WatchError::Start)?;
        let mut watcher = Watcher {
            debouncer,
            events,
            tracked: HashMap::new(),
            watched: BTreeSet::new(),
            missing: BTreeSet::new(),
        };
        watcher.update_paths(paths);
        Ok(watcher)
    }

    /// Replaces the tracked set (the manifest changed and now names other files).
    ///
    /// Paths already tracked keep their last seen digest; new ones take what they hold now as
    /// their baseline. To miss nothing, call this *before* loading the new paths into the build
    /// database: a change in between is then seen by the database load.
    pub fn update_paths<P: AsRef<Path>>(&mut self, paths: impl IntoIterator<Item = P>) {
        let mut tracked = HashMap::new();
        for path in paths {
            let path = normalize_path(path.as_ref());
            let seen = match self.tracked.remove(&path) {
                Some(seen) => seen,
                None => Seen::read(&path),
            };
            tracked.insert(path, seen);
        }
        self.tracked = tracked;

        let wanted: BTreeSet<PathBuf> = self
            .tracked
            .keys()
            .filter_map(|path| path.parent().map(Path::to_path_buf))
            .collect();
        for directory in self
            .watched
            .difference(&wanted)
            .cloned()
            .collect::<Vec<_>>()
        {
            // The directory may be gone already, which ends its watch anyway.
            let _ = self.debouncer.unwatch(&directory);
            self.watched.remove(&directory);
        }
        self.missing = wanted.difference(&self.watched).cloned().collect();
        self.watch_missing_directories();
    }

    /// The tracked paths, normalized, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.tracked.keys().cloned().collect();
        paths.sort();
        paths
    }

    /// Waits up to `timeout` for tracked files whose contents changed, and returns them (sorted),
    /// or `None` when nothing changed in time.
    ///
    /// A change is a different digest, a file that disappeared, or one that (re)appeared.
    /// Events that leave the digest as it was (a touch, an identical save, an untracked
    /// neighbour) keep the wait going.
    pub fn next_change(&mut self, timeout: Duration) -> Option<Vec<PathBuf>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut candidates = self.watch_missing_directories();
            let now = Instant::now();
            if candidates.is_empty() {
                if now >= deadline {
                    return None;
                }
                let mut wait = deadline - now;
                if !self.missing.is_empty() {
                    wait = wait.min(MISSING_DIRECTORY_RETRY);
                }
                match self.events.recv_timeout(wait) {
                    Ok(result) => self.collect_candidates(result, &mut candidates),
                    Err(RecvTimeoutError::Timeout) => continue,
                    // The debouncer thread is gone; there will be no more events.
                    Err(RecvTimeoutError::Disconnected) => return None,
                }
            }
            // Take whatever else is already queued, so one save yields one report.
            while let Ok(result) = self.events.try_recv() {
                self.collect_candidates(result, &mut candidates);
            }
            candidates.extend(self.forget_vanished_directories());
            let changed = self.gate_on_digest(candidates);
            if !changed.is_empty() {
                return Some(changed);
            }
        }
    }

    /// Adds the tracked paths an event batch may have changed. Errors and rescan requests mean
    /// events were lost, so every tracked path becomes a candidate.
    fn collect_candidates(&self, result: DebounceEventResult, candidates: &mut BTreeSet<PathBuf>) {
        let events = match result {
            Ok(events) => events,
            Err(_) => {
                candidates.extend(self.tracked.keys().cloned());
                return;
            }
        };
        for event in events {
            if event.need_rescan() {
                candidates.extend(self.tracked.keys().cloned());
                continue;
            }
            if !may_change_contents(&event.kind) {
                continue;
            }
            for path in &event.paths {
                let path = normalize_path(path);
                if self.tracked.contains_key(&path) {
                    candidates.insert(path);
                }
            }
        }
    }

    /// Re-reads the candidates and keeps those whose digest (or error) differs from last time.
    fn gate_on_digest(&mut self, candidates: BTreeSet<PathBuf>) -> Vec<PathBuf> {
        let mut changed = Vec::new();
        for path in candidates {
            let Some(seen) = self.tracked.get_mut(&path) else {
                continue;
            };
            let now = Seen::read(&path);
            if *seen != now {
                *seen = now;
                changed.push(path);
            }
        }
        changed
    }

    /// Moves watched directories that no longer exist back to the missing set (their
    /// operating-system watch ended with them) and returns the tracked files they held.
    fn forget_vanished_directories(&mut self) -> BTreeSet<PathBuf> {
        let vanished: BTreeSet<PathBuf> = self
            .watched
            .iter()
            .filter(|directory| !directory.is_dir())
            .cloned()
            .collect();
        for directory in &vanished {
            let _ = self.debouncer.unwatch(directory);
            self.watched.remove(directory);
            self.missing.insert(directory.clone());
        }
        self.tracked
            .keys()
            .filter(|path| {
                path.parent()
                    .is_some_and(|parent| vanished.contains(parent))
            })
            .cloned()
            .collect()
    }

    /// Tries to watch the directories that were missing; returns the tracked files inside those
    /// that now could be watched (they may have appeared unseen in the meantime).
    fn watch_missing_directories(&mut self) -> BTreeSet<PathBuf> {
        let mut now_watched = BTreeSet::new();
        for directory in self.missing.clone() {
            if self
                .debouncer
                .watch(&directory, RecursiveMode::NonRecursive)
                .is_ok()
            {
                self.missing.remove(&directory);
                self.watched.insert(directory.clone());
                now_watched.insert(directory);
            }
        }
        self.tracked
            .keys()
            .filter(|path| {
                path.parent()
                    .is_some_and(|parent| now_watched.contains(parent))
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify_debouncer_full::notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};

    #[test]
    fn reads_are_not_changes_and_writes_renames_and_removals_are() {
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert!(!may_change_contents(&kind), "{kind:?}");
        }
        for kind in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
            EventKind::Other,
        ] {
            assert!(may_change_contents(&kind), "{kind:?}");
        }
    }
}
