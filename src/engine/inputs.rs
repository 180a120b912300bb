//! Reading the build's input files into the database: the lazy [`source_file`] lookup that
//! queries use, the parallel [`prefetch`] the driver starts a build with, and
//! [`Database::load`] / [`Database::refresh`], the only ways a changed file reaches the
//! database. It must not interpret file contents beyond telling text from bytes ([`text_of`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use salsa::Setter;

use super::db::{Database, Db};
use super::error::{BuildError, display_path};
use super::source::{FileError, FileSnapshot, SourceFile, normalize_path};

impl SourceFile {
    /// The file's bytes (see [`FileContents::bytes`]).
    pub fn bytes(self, db: &dyn Db) -> Result<&Arc<[u8]>, FileError> {
        match self.contents(db) {
            Ok(contents) => contents.bytes(),
            Err(error) => Err(error.clone()),
        }
    }
}

/// Reads and digests every file of `paths` not loaded yet, in parallel (or takes it from a stamp
/// record that vouches for it), so that the [`source_file`] calls that follow find them loaded.
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
    let registry = db.files();
    let snapshots: Vec<(PathBuf, FileSnapshot)> = missing
        .into_par_iter()
        .map(|path| {
            let snapshot = registry.snapshot(&path);
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

/// The input for `path`, read from disk the first time it is asked for (or taken from a stamp
/// record that vouches for it).
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
    let snapshot = db.files().snapshot(&path);
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
        // An explicit (re)load always reads: it is how a watcher's change reaches the database.
        let snapshot = FileSnapshot::read(&path);
        self.set_snapshot(path, snapshot)
    }

    /// Sets the input of `path` to `contents` given in memory, as if the file held them, and
    /// tells whether that changed the input. The file on disk is not touched: the contents hold
    /// until the path is loaded or refreshed again. This is how an embedder (an editor plugin,
    /// a tuning loop) builds with an edit before, or instead of, saving it.
    ///
    /// Must not be called while a clone of this database is alive on the same thread.
    pub fn set_contents(&mut self, path: &Path, contents: &[u8]) -> (SourceFile, bool) {
        let path = normalize_path(path);
        let snapshot = FileSnapshot::in_memory(&path, contents);
        self.set_snapshot(path, snapshot)
    }

    fn set_snapshot(&mut self, path: PathBuf, snapshot: FileSnapshot) -> (SourceFile, bool) {
        // A snapshot without a stamp also drops the path's old stamp: nothing on disk may vouch
        // for contents that did not come from it.
        self.files().remember(&path, &snapshot);
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

pub(super) fn text_of<'a>(
    db: &'a dyn Db,
    file: SourceFile,
    what: &'static str,
) -> Result<&'a str, BuildError> {
    let bytes = file
        .bytes(db)
        .map_err(|e| BuildError::file(what, file.path(db), &e))?;
    std::str::from_utf8(bytes).map_err(|_| BuildError::File {
        what,
        path: display_path(file.path(db)),
        error: FileError::Unreadable {
            kind: std::io::ErrorKind::InvalidData,
            message: "not UTF-8 text".to_string(),
        },
    })
}
