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
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::store::Digest;

pub use input::SourceFile;

// Salsa generates the constructor, getters and setters without docs; the fields are documented.
#[allow(missing_docs)]
mod input {
    use std::path::PathBuf;

    use super::{FileContents, FileError};
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
        /// The file's bytes (read now, or on first use when its stamp vouched for its digest),
        /// or why they could not be read.
        #[returns(ref)]
        pub contents: Result<FileContents, FileError>,
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
    /// The file was taken as unchanged from its stamp (size, times, inode), but by the time its
    /// bytes were needed they no longer had the recorded digest.
    #[error("file changed while the build was running")]
    Changed,
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

/// A file's bytes, compared by digest. Either read with the digest, or *vouched for*: a stamp
/// recorded by an earlier build matched, so the digest is known and the bytes are read only if
/// something asks for them (a no-op build or an override edit needs no sample's bytes, only
/// their digests).
#[derive(Clone)]
pub struct FileContents(Arc<ContentsInner>);

struct ContentsInner {
    path: PathBuf,
    digest: Digest,
    bytes: OnceLock<Result<Arc<[u8]>, FileError>>,
}

impl FileContents {
    pub(super) fn read(path: &Path, bytes: Arc<[u8]>, digest: Digest) -> FileContents {
        FileContents(Arc::new(ContentsInner {
            path: path.to_path_buf(),
            digest,
            bytes: OnceLock::from(Ok(bytes)),
        }))
    }

    fn vouched(path: &Path, digest: Digest) -> FileContents {
        FileContents(Arc::new(ContentsInner {
            path: path.to_path_buf(),
            digest,
            bytes: OnceLock::new(),
        }))
    }

    /// The bytes, read from disk now if they were only vouched for; [`FileError::Changed`]
    /// when the file no longer has the digest it was taken with.
    pub fn bytes(&self) -> Result<&Arc<[u8]>, FileError> {
        self.0
            .bytes
            .get_or_init(|| {
                let bytes = std::fs::read(&self.0.path)?;
                if Digest::of(&bytes) == self.0.digest {
                    Ok(bytes.into())
                } else {
                    Err(FileError::Changed)
                }
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl PartialEq for FileContents {
    fn eq(&self, other: &Self) -> bool {
        self.0.digest == other.0.digest
    }
}

impl Eq for FileContents {}

impl std::fmt::Debug for FileContents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileContents")
            .field("digest", &self.0.digest)
            .field("read", &self.0.bytes.get().is_some())
            .finish()
    }
}

/// What identifies one version of a file without reading it: size, modification and change
/// times, inode and device (what git's index and make compare). Unix only; elsewhere every
/// file is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

impl Stamp {
    #[cfg(unix)]
    fn of(metadata: &std::fs::Metadata) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        Some(Stamp {
            len: metadata.len(),
            mtime_ns: ns(metadata.mtime(), metadata.mtime_nsec()),
            ctime_ns: ns(metadata.ctime(), metadata.ctime_nsec()),
            ino: metadata.ino(),
            dev: metadata.dev(),
        })
    }

    #[cfg(not(unix))]
    fn of(_metadata: &std::fs::Metadata) -> Option<Stamp> {
        None
    }

    /// The stamp of `path` now.
    pub fn of_path(path: &Path) -> Option<Stamp> {
        Stamp::of(&std::fs::metadata(path).ok()?)
    }
}

/// A stamp recorded when a file was read, with the digest of what was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StampedDigest {
    /// The file's stamp, equal before and after the read.
    pub stamp: Stamp,
    /// The blake3 digest of the bytes read.
    pub digest: Digest,
    /// When the read began, in nanoseconds since the Unix epoch.
    pub read_at_ns: i128,
}

/// How long before a read a file must have last changed for its stamp to vouch for it later. A
/// file written in the same timestamp tick as (or just before) the read could change again
/// without its stamp changing; two seconds is far above any file system's tick.
const RACY_NS: i128 = 2_000_000_000;

impl StampedDigest {
    /// Whether this record vouches for the file that has `stamp` now: same stamp, and the file
    /// had settled well before the recorded read (the racy case that git's index also guards).
    pub fn vouches_for(&self, stamp: &Stamp) -> bool {
        self.stamp == *stamp
            && self.stamp.mtime_ns < self.read_at_ns - RACY_NS
            && self.stamp.ctime_ns < self.read_at_ns - RACY_NS
    }
}

/// What one read of a file found: its digest and bytes, or the error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSnapshot {
    /// The blake3 digest of `contents`, `None` when the read failed.
    pub digest: Option<Digest>,
    /// The bytes read, or why they could not be.
    pub contents: Result<FileContents, FileError>,
    /// The file's stamp, when it was the same before and after the read.
    pub stamped: Option<StampedDigest>,
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

impl FileSnapshot {
    /// Reads `path` now.
    /// Contents given in memory for `path` (an editor's unsaved buffer, an embedder's edit):
    /// no stamp, since nothing on disk vouches for them.
    pub fn in_memory(path: &Path, bytes: &[u8]) -> FileSnapshot {
        let digest = Digest::of(bytes);
        FileSnapshot {
            digest: Some(digest),
            contents: Ok(FileContents::read(path, bytes.into(), digest)),
            stamped: None,
        }
    }

    /// Reads `path` now.
    pub fn read(path: &Path) -> FileSnapshot {
        let read_at_ns = now_ns();
        let before = Stamp::of_path(path);
        match std::fs::read(path) {
            Ok(bytes) => {
                let digest = Digest::of(&bytes);
                let after = Stamp::of_path(path);
                let stamped = match (before, after) {
                    (Some(stamp), Some(after)) if stamp == after => Some(StampedDigest {
                        stamp,
                        digest,
                        read_at_ns,
                    }),
                    _ => None,
                };
                FileSnapshot {
                    digest: Some(digest),
                    contents: Ok(FileContents::read(path, bytes.into(), digest)),
                    stamped,
                }
            }
            Err(error) => FileSnapshot {
                digest: None,
                contents: Err(error.into()),
                stamped: None,
            },
        }
    }

    /// The file at `path` as `record` vouches for it, without reading it; `None` when the
    /// record does not vouch for what is on disk now.
    pub fn vouched(path: &Path, record: &StampedDigest) -> Option<FileSnapshot> {
        let stamp = Stamp::of_path(path)?;
        record.vouches_for(&stamp).then(|| FileSnapshot {
            digest: Some(record.digest),
            contents: Ok(FileContents::vouched(path, record.digest)),
            stamped: Some(*record),
        })
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

/// The path → [`SourceFile`] registry, and the stamps that vouch for files' digests. Cheap to
/// clone; clones share both, so a file created on one database clone is known to all of them.
#[derive(Clone, Default)]
pub struct Files {
    inputs: Arc<Mutex<HashMap<PathBuf, SourceFile>>>,
    stamps: Arc<Mutex<HashMap<PathBuf, StampedDigest>>>,
}

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

    /// Adds stamp records from an earlier build (see [`StampedDigest`]); a record this process
    /// made itself is newer and stays.
    pub fn add_stamps(&self, records: impl IntoIterator<Item = (PathBuf, StampedDigest)>) {
        let mut stamps = self.stamps_lock();
        for (path, record) in records {
            stamps.entry(path).or_insert(record);
        }
    }

    /// Every stamp record known, by path, sorted: what the next build may trust.
    pub fn stamps(&self) -> Vec<(PathBuf, StampedDigest)> {
        let mut stamps: Vec<(PathBuf, StampedDigest)> = self
            .stamps_lock()
            .iter()
            .map(|(p, r)| (p.clone(), *r))
            .collect();
        stamps.sort_by(|a, b| a.0.cmp(&b.0));
        stamps
    }

    /// Reads `path` (normalized), or takes it from a stamp record that vouches for it, and
    /// keeps the record of what was read for the next build.
    pub(super) fn snapshot(&self, path: &Path) -> FileSnapshot {
        let known = self.stamps_lock().get(path).copied();
        if let Some(snapshot) = known.and_then(|record| FileSnapshot::vouched(path, &record)) {
            return snapshot;
        }
        let snapshot = FileSnapshot::read(path);
        self.remember(path, &snapshot);
        snapshot
    }

    pub(super) fn remember(&self, path: &Path, snapshot: &FileSnapshot) {
        let mut stamps = self.stamps_lock();
        match snapshot.stamped {
            Some(record) => stamps.insert(path.to_path_buf(), record),
            None => stamps.remove(path),
        };
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, SourceFile>> {
        self.inputs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stamps_lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, StampedDigest>> {
        self.stamps.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(mtime_ns: i128, ctime_ns: i128, read_at_ns: i128) -> StampedDigest {
        StampedDigest {
            stamp: Stamp {
                len: 10,
                mtime_ns,
                ctime_ns,
                ino: 7,
                dev: 1,
            },
            digest: Digest::of(b"0123456789"),
            read_at_ns,
        }
    }

    #[test]
    fn only_files_settled_before_the_read_are_vouched_for() {
        let second = 1_000_000_000;
        let settled = record(0, 0, 10 * second);
        assert!(settled.vouches_for(&settled.stamp));
        // Changed within the racy window before the read: a later write in the same tick
        // could keep the stamp, so the record proves nothing.
        let racy = record(9 * second, 9 * second, 10 * second);
        assert!(!racy.vouches_for(&racy.stamp));
        let ctime_racy = record(0, 9 * second, 10 * second);
        assert!(!ctime_racy.vouches_for(&ctime_racy.stamp));
        for other in [
            Stamp {
                len: 11,
                ..settled.stamp
            },
            Stamp {
                mtime_ns: 1,
                ..settled.stamp
            },
            Stamp {
                ctime_ns: 1,
                ..settled.stamp
            },
            Stamp {
                ino: 8,
                ..settled.stamp
            },
            Stamp {
                dev: 2,
                ..settled.stamp
            },
        ] {
            assert!(!settled.vouches_for(&other), "{other:?}");
        }
    }

    #[test]
    fn vouched_contents_are_checked_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sample.raw");
        std::fs::write(&path, b"0123456789").unwrap();
        let good = FileContents::vouched(&path, Digest::of(b"0123456789"));
        assert_eq!(&good.bytes().unwrap()[..], b"0123456789");
        let stale = FileContents::vouched(&path, Digest::of(b"something else"));
        assert_eq!(stale.bytes().unwrap_err(), FileError::Changed);
    }
}
