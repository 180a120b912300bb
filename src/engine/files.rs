//! Source files as salsa inputs: their bytes and blake3 digest, set only when the digest changed.
//!
//! It owns reading tracked files from disk, the path → [`SourceFile`] registry shared by every
//! database clone, and the rule that decides whether a file changed. A missing or unreadable
//! file is a value ([`FileError`]), not a failure of the engine: the queries that need the file
//! turn it into a diagnostic, and the file coming back later is an ordinary change. This module
//! must not interpret file contents.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use salsa::Setter;

use super::db::{Database, Db};
use crate::store::Digest;

pub use source::SourceFile;

// Salsa generates the constructor, getters and setters without docs; the fields are documented.
#[allow(missing_docs)]
mod source {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::FileError;
    use crate::store::Digest;

    /// One file the build depends on, as a salsa input.
    ///
    /// `digest` and `contents` always describe the same read of the file; they are set together
    /// and only when what is on disk differs from what the input holds, because salsa starts a new
    /// revision on every set, even of an equal value.
    #[salsa::input(debug)]
    pub struct SourceFile {
        /// The normalized absolute path (see [`normalize_path`]).
        #[returns(ref)]
        pub path: PathBuf,
        /// The blake3 digest of the contents, or `None` when the file could not be read.
        #[returns(copy)]
        pub digest: Option<Digest>,
        /// The file's bytes, or why they could not be read.
        #[returns(ref)]
        pub contents: Result<Arc<[u8]>, FileError>,
    }
}

/// Why a tracked file has no contents. Compared by value so that a file that stays missing
/// does not count as a change.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum FileError {
    /// Nothing exists at the path (yet, or any more).
    #[error("file not found")]
    NotFound,
    /// The path exists but reading it failed (permissions, a directory, an I/O error).
    #[error("cannot read file: {message}")]
    Unreadable {
        /// The kind of I/O error, kept for matching.
        kind: io::ErrorKind,
        /// The operating system's message.
        message: String,
    },
}

impl From<io::Error> for FileError {
    fn from(error: io::Error) -> FileError {
        match error.kind() {
            io::ErrorKind::NotFound => FileError::NotFound,
            kind => FileError::Unreadable {
                kind,
                message: error.to_string(),
            },
        }
    }
}

/// What one read of a file found: its digest and bytes, or the error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSnapshot {
    /// The blake3 digest of `contents`, `None` when the read failed.
    pub digest: Option<Digest>,
    /// The bytes read, or why they could not be.
    pub contents: Result<Arc<[u8]>, FileError>,
}

impl FileSnapshot {
    /// Reads `path` now.
    pub fn read(path: &Path) -> FileSnapshot {
        match std::fs::read(path) {
            Ok(bytes) => FileSnapshot {
                digest: Some(Digest::of(&bytes)),
                contents: Ok(bytes.into()),
            },
            Err(error) => FileSnapshot {
                digest: None,
                contents: Err(error.into()),
            },
        }
    }

    /// Whether two reads saw the same thing: equal digests, or the same error.
    ///
    /// Comparing digests (not bytes) is what lets a watcher keep only 32 bytes per file.
    pub fn same_as(&self, digest: Option<Digest>, error: Option<&FileError>) -> bool {
        match (self.digest, digest) {
            (Some(ours), Some(theirs)) => ours == theirs,
            (None, None) => self.contents.as_ref().err() == error,
            _ => false,
        }
    }
}

/// The path under which a file is tracked: absolute, with its parent directory canonicalized.
///
/// Only the parent is canonicalized so that a file that does not exist yet still gets the same
/// key it will have once created, and so that watch events (reported under the watched,
/// canonical directory) match it.
pub fn normalize_path(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => match parent.canonicalize() {
            Ok(parent) => parent.join(name),
            Err(_) => absolute,
        },
        _ => absolute,
    }
}

/// The path → [`SourceFile`] registry. Cheap to clone; clones share the same registry, so a
/// file created on one database clone is known to all of them.
#[derive(Clone, Default)]
pub struct Files(Arc<Mutex<HashMap<PathBuf, SourceFile>>>);

impl Files {
    /// The input for an already tracked path, if any.
    pub fn get(&self, path: &Path) -> Option<SourceFile> {
        self.lock().get(&normalize_path(path)).copied()
    }

    /// Every tracked path, sorted (the set a watcher should follow).
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.lock().keys().cloned().collect();
        paths.sort();
        paths
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, SourceFile>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads and digests every file of `paths` not loaded yet, in parallel, so that the
/// [`source_file`] calls that follow find them loaded.
pub fn prefetch(db: &dyn Db, paths: &[PathBuf]) {
    use rayon::prelude::*;
    let missing: Vec<PathBuf> = {
        let files = db.files().lock();
        let mut missing: Vec<PathBuf> = paths
            .iter()
            .map(|p| normalize_path(p))
            .filter(|p| !files.contains_key(p))
            .collect();
        missing.sort();
        missing.dedup();
        missing
    };
    let snapshots: Vec<(PathBuf, FileSnapshot)> = missing
        .into_par_iter()
        .map(|path| {
            let snapshot = FileSnapshot::read(&path);
            (path, snapshot)
        })
        .collect();
    let mut files = db.files().lock();
    for (path, snapshot) in snapshots {
        // A file another thread loaded meanwhile keeps that value: one path, one input.
        if let std::collections::hash_map::Entry::Vacant(entry) = files.entry(path) {
            let path = entry.key().clone();
            entry.insert(SourceFile::new(
                db,
                path,
                snapshot.digest,
                snapshot.contents,
            ));
        }
    }
}

/// The input for `path`, read from disk the first time it is asked for.
///
/// Safe to call from inside a query (the lazy-input pattern): it never changes an existing
/// input, so it cannot invalidate the revision the query runs in. Later changes to the file
/// reach the database only through [`Database::load`] or [`Database::refresh`].
pub fn source_file(db: &dyn Db, path: &Path) -> SourceFile {
    // Keys are normalized paths, and normalizing one gives it back: a path that is a key needs
    // none of the system calls `normalize_path` makes (queries ask for the model's file once
    // per tensor).
    if let Some(file) = db.files().lock().get(path) {
        return *file;
    }
    let path = normalize_path(path);
    // Held across the read so two threads asking for a new file create one input, not two.
    let mut files = db.files().lock();
    if let Some(file) = files.get(&path) {
        return *file;
    }
    let snapshot = FileSnapshot::read(&path);
    let file = SourceFile::new(db, path.clone(), snapshot.digest, snapshot.contents);
    files.insert(path, file);
    file
}

impl Database {
    /// Reads `path` now and returns its input, setting it only when the digest (or the error)
    /// differs from what the input holds, so an unchanged file starts no new revision.
    ///
    /// Must not be called while a clone of this database is alive on the same thread: salsa
    /// waits for clones to drop before a set, which would never happen.
    pub fn load(&mut self, path: &Path) -> SourceFile {
        self.load_and_compare(path).0
    }

    /// [`Database::load`], also telling whether the input changed (a new file counts).
    fn load_and_compare(&mut self, path: &Path) -> (SourceFile, bool) {
        let path = normalize_path(path);
        let snapshot = FileSnapshot::read(&path);
        let Some(file) = self.files().get(&path) else {
            let file = SourceFile::new(self, path.clone(), snapshot.digest, snapshot.contents);
            self.files().lock().insert(path, file);
            return (file, true);
        };
        if snapshot.same_as(file.digest(self), file.contents(self).as_ref().err()) {
            return (file, false);
        }
        let _previous = file.set_digest(self).to(snapshot.digest);
        let _previous = file.set_contents(self).to(snapshot.contents);
        (file, true)
    }

    /// Re-reads the given paths that are tracked (others are ignored) and returns the inputs
    /// whose digest actually changed, in the order given.
    pub fn refresh<P: AsRef<Path>>(
        &mut self,
        paths: impl IntoIterator<Item = P>,
    ) -> Vec<SourceFile> {
        let mut changed = Vec::new();
        for path in paths {
            if self.files().get(path.as_ref()).is_none() {
                continue;
            }
            if let (file, true) = self.load_and_compare(path.as_ref()) {
                changed.push(file);
            }
        }
        changed
    }
}
