//! The persistent, content-addressed store (`<manifest dir>/.quant/`, or `$QUANT_CACHE_DIR`):
//! statistics, encodings and artifacts kept between builds under keys computed from the content
//! they depend on. It owns the directory layout, atomic writes, corruption detection, LRU garbage
//! collection and `clean`. It must not decide *what* to cache or compute anything, must not put
//! paths or modification times into keys (see [`KeyBuilder`]), and must not print: corruption
//! is returned as a value ([`GetOutcome::Corrupt`]) for the caller to report.
//!
//! **Invariant:** a reader sees a complete, verified entry or nothing. Entries are written to a
//! unique temp file beside their target and renamed over it ([`crate::atomic`]), so a killed
//! writer leaves at most a stale temp file (ignored by readers, removed by [`Store::gc`]); every
//! read checks the header's length and blake3 digest, so a damaged file is a miss, never wrong
//! data.
//!
//! Layout (`book/src/cache.md` is the reference, including what goes into each key):
//!
//! ```text
//! <dir>/CACHEDIR.TAG                       marks the folder as a cache (backup tools skip it;
//!                                          `clean` refuses folders without it)
//! <dir>/objects/<kind>/<2 hex>/<62 hex>    one entry: header + payload (see `entry` docs)
//! <dir>/objects/<kind>/<2 hex>/.tmp-*      a write in progress, or left by a killed process
//!                                          (any name `atomic::is_temporary` recognizes)
//! <dir>/quarantine/<kind>-<hex>-*          entries that failed verification, kept for inspection
//! ```

mod digest;
mod entry;
mod gc;
mod hash;
mod key;
mod remote;
mod size;

pub use digest::{Digest, DigestParseError};
pub use entry::{CorruptReason, FORMAT_VERSION, HEADER_LEN, MAGIC};
pub use gc::{CleanReport, DEFAULT_MAX_SIZE, GcReport, STALE_TEMP_AGE, clean};
pub use hash::{StableHasher, stable_digest};
pub use key::{KEY_DOMAIN, KeyBuilder, Kind, SCHEMA_VERSION};
pub use remote::{
    CONNECT_TIMEOUT, REMOTE_CACHE_ENV, REQUEST_TIMEOUT, Remote, RemoteConfigError, RemoteCounts,
    redact_url,
};
pub use size::{ParseSizeError, parse_size};

use crate::atomic::{self, Durability};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Folder name of the store next to a manifest.
pub const DEFAULT_DIR_NAME: &str = ".quant";
/// Environment variable that moves the store (e.g. to share one between checkouts in CI).
pub const CACHE_DIR_ENV: &str = "QUANT_CACHE_DIR";

const OBJECTS_DIR: &str = "objects";
const QUARANTINE_DIR: &str = "quarantine";
const TAG_FILE: &str = "CACHEDIR.TAG";
/// The standard signature (bford.info/cachedir) plus a line that says who wrote it; `clean`
/// checks for both before deleting anything.
const TAG_CONTENT: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This folder is a cache written by quant. It is safe to delete.\n";
const TAG_OWNER_LINE: &str = "# This folder is a cache written by quant";
/// Reads refresh an entry's modification time (its LRU clock) at most this often, so a build
/// that reads thousands of entries does not also write thousands of inodes.
const TOUCH_GRANULARITY: Duration = Duration::from_secs(60);

/// An open store. Cheap to clone; any number of threads and processes may use one folder.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    fsync: bool,
    /// Read through on a local miss, written back after a local `put` (shared kinds only).
    remote: Option<Arc<Remote>>,
}

/// Result of a lookup. `Corrupt` is a miss the caller should report as a warning.
#[derive(Debug, Clone, PartialEq)]
pub enum GetOutcome<T = Vec<u8>> {
    /// A verified entry.
    Hit(T),
    /// No entry under this key.
    Miss,
    /// An entry existed but failed verification; it has been moved out of the way, so the
    /// caller recomputes and `put`s as for a miss.
    Corrupt(Corruption),
}

impl<T> GetOutcome<T> {
    /// The value on a hit; `None` for a miss or a corrupt entry.
    pub fn hit(self) -> Option<T> {
        match self {
            GetOutcome::Hit(value) => Some(value),
            GetOutcome::Miss | GetOutcome::Corrupt(_) => None,
        }
    }

    /// Whether this is a hit.
    pub fn is_hit(&self) -> bool {
        matches!(self, GetOutcome::Hit(_))
    }

    /// The corruption to warn about, if any.
    pub fn corruption(&self) -> Option<&Corruption> {
        match self {
            GetOutcome::Corrupt(corruption) => Some(corruption),
            GetOutcome::Hit(_) | GetOutcome::Miss => None,
        }
    }
}

/// A store entry that failed verification: where it was, why, and where it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The entry file as it was found.
    pub path: PathBuf,
    /// What was wrong with it.
    pub reason: CorruptReason,
    /// Where the damaged file was moved for inspection; `None` if it was deleted instead (or
    /// could not be moved, in which case the next `put` replaces it).
    pub quarantined: Option<PathBuf>,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "store entry `{}` is corrupt: {}",
            self.path.display(),
            self.reason
        )?;
        if let Some(moved) = &self.quarantined {
            write!(f, " (moved to `{}`)", moved.display())?;
        }
        write!(f, "; it will be recomputed")
    }
}

/// A store operation that failed for a reason other than a damaged entry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed; says which, on what path and why. The reason is part of
    /// the message because every caller prints the error on one line (`{e:#}`), and "could not
    /// write X" without "No space left on device" leaves the user guessing.
    #[error("could not {action} `{}`: {source}", path.display())]
    Io {
        /// What was being done ("create", "read", "rename", ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// `clean` was pointed at a folder that is not a store.
    #[error("refusing to delete `{}`: it is not a quant store (no CACHEDIR.TAG written by quant)", path.display())]
    NotAStore {
        /// The folder.
        path: PathBuf,
    },
    /// A value could not be serialized for `put_json`.
    #[error("could not serialize a {kind} entry")]
    Encode {
        /// The kind being written.
        kind: Kind,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// Where the store of the manifest in `manifest_root` lives: `$QUANT_CACHE_DIR` when set
    /// and non-empty, else `<manifest_root>/.quant`.
    pub fn default_dir(manifest_root: &Path) -> PathBuf {
        default_dir_with(manifest_root, std::env::var_os(CACHE_DIR_ENV))
    }

    /// Opens the store in `dir`, creating the folder and its `CACHEDIR.TAG` if needed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let store = Store {
            dir: dir.into(),
            fsync: true,
            remote: None,
        };
        let objects = store.dir.join(OBJECTS_DIR);
        fs::create_dir_all(&objects).map_err(io_error("create", &objects))?;
        store.ensure_tag()?;
        Ok(store)
    }

    /// Turns flushing to disk (`fsync` of each entry and its folder) on or off; it is on by
    /// default. Off, a *power loss* may lose or tear recently written entries — reads detect
    /// those as corrupt and they are recomputed — while a killed process still leaves the store
    /// intact (the rename is what protects against that). Flushing dominates the cost of a
    /// small `put`, so throwaway stores (tests, CI caches) may turn it off.
    pub fn with_fsync(mut self, enabled: bool) -> Store {
        self.fsync = enabled;
        self
    }

    /// Puts a remote cache behind this store: a local miss of a shared [`Kind`] is looked up
    /// there (verified, then kept locally), and every local `put` of one is uploaded. The
    /// remote never turns a lookup into an error; its problems are its own warnings.
    pub fn with_remote(mut self, remote: Arc<Remote>) -> Store {
        self.remote = Some(remote);
        self
    }

    /// The remote cache behind this store, if any.
    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file an entry of `kind` under `key` lives in (whether or not it exists). Useful for
    /// messages; callers never read or write it directly.
    pub fn entry_path(&self, kind: Kind, key: &Digest) -> PathBuf {
        let hex = key.to_hex();
        self.dir
            .join(OBJECTS_DIR)
            .join(kind.name())
            .join(&hex[..2])
            .join(&hex[2..])
    }

    /// Looks up an entry and verifies it. A damaged entry is moved to `quarantine/` and
    /// returned as [`GetOutcome::Corrupt`]; only other I/O failures are errors.
    pub fn get(&self, kind: Kind, key: &Digest) -> Result<GetOutcome, StoreError> {
        let path = self.entry_path(kind, key);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Ok(match self.fetch_remote(kind, key) {
                    Some(payload) => GetOutcome::Hit(payload),
                    None => GetOutcome::Miss,
                });
            }
            Err(err) => return Err(io_error("open", &path)(err)),
        };
        let metadata = file.metadata().map_err(io_error("read", &path))?;
        let mut bytes = Vec::with_capacity(metadata.len() as usize);
        file.read_to_end(&mut bytes)
            .map_err(io_error("read", &path))?;
        match entry::verify(bytes) {
            Ok(payload) => {
                refresh_access_time(&file, &metadata);
                Ok(GetOutcome::Hit(payload))
            }
            Err(reason) => Ok(GetOutcome::Corrupt(
                self.quarantine(kind, key, path, reason),
            )),
        }
    }

    /// Whether an entry exists under `key` (not verified: [`Store::get`] still checks it).
    /// With a remote cache, an entry only the remote has counts (one HEAD request).
    pub fn contains(&self, kind: Kind, key: &Digest) -> bool {
        self.entry_path(kind, key).is_file()
            || self
                .remote
                .as_ref()
                .is_some_and(|remote| kind.is_shared() && remote.has(kind, key))
    }

    /// A local miss looked up on the remote: a verified download is written to this key's
    /// own entry path (never a name the server chose) and its payload returned.
    fn fetch_remote(&self, kind: Kind, key: &Digest) -> Option<Vec<u8>> {
        let remote = self.remote.as_ref().filter(|_| kind.is_shared())?;
        let (file, payload) = remote.fetch(kind, key)?;
        // Failing to keep a copy costs a download next time, nothing more.
        let _ = self.write_entry(kind, key, &[&file]);
        Some(payload)
    }

    /// Stores `payload` under `key`, atomically: concurrent readers see the previous entry or
    /// this one, never a mix, and a crash mid-write leaves only a stale temp file. Store only
    /// finished results — never a value from a failed or cancelled computation.
    ///
    /// With a remote cache, the entry is then uploaded (shared kinds only; never an error).
    pub fn put(&self, kind: Kind, key: &Digest, payload: &[u8]) -> Result<(), StoreError> {
        let header = entry::header_for(payload);
        self.write_entry(kind, key, &[&header, payload])?;
        if let Some(remote) = self.remote.as_ref().filter(|_| kind.is_shared()) {
            let mut file = Vec::with_capacity(header.len() + payload.len());
            file.extend_from_slice(&header);
            file.extend_from_slice(payload);
            remote.upload(kind, key, file);
        }
        Ok(())
    }

    /// Writes a whole entry file (header included) to the key's path, atomically.
    fn write_entry(&self, kind: Kind, key: &Digest, parts: &[&[u8]]) -> Result<(), StoreError> {
        let path = self.entry_path(kind, key);
        let parent = path.parent().expect("entry paths have a parent");
        if !parent.is_dir() {
            fs::create_dir_all(parent).map_err(io_error("create", parent))?;
            // The store may have been `clean`ed under a running build: keep it recognizable.
            self.ensure_tag()?;
        }
        atomic::write_parts(&path, parts, self.durability()).map_err(io_error("write", &path))
    }

    fn durability(&self) -> Durability {
        if self.fsync {
            Durability::Flushed
        } else {
            Durability::Unflushed
        }
    }

    /// Stores `value` as JSON. Bump the [`Kind`]'s version when the type's layout changes.
    pub fn put_json<T: Serialize + ?Sized>(
        &self,
        kind: Kind,
        key: &Digest,
        value: &T,
    ) -> Result<(), StoreError> {
        let json =
            serde_json::to_vec(value).map_err(|source| StoreError::Encode { kind, source })?;
        self.put(kind, key, &json)
    }

    /// Looks up a JSON entry. An intact entry that does not decode as `T` counts as corrupt
    /// (it was written by an incompatible layout under a version that was not bumped).
    pub fn get_json<T: DeserializeOwned>(
        &self,
        kind: Kind,
        key: &Digest,
    ) -> Result<GetOutcome<T>, StoreError> {
        Ok(match self.get(kind, key)? {
            GetOutcome::Hit(bytes) => match serde_json::from_slice(&bytes) {
                Ok(value) => GetOutcome::Hit(value),
                Err(err) => {
                    let path = self.entry_path(kind, key);
                    let reason = CorruptReason::Undecodable(err.to_string());
                    GetOutcome::Corrupt(self.quarantine(kind, key, path, reason))
                }
            },
            GetOutcome::Miss => GetOutcome::Miss,
            GetOutcome::Corrupt(corruption) => GetOutcome::Corrupt(corruption),
        })
    }

    /// Moves a damaged entry out of the key's path so the next `put` starts clean and a reader
    /// never trips over it twice; deletes it if it cannot be moved.
    fn quarantine(
        &self,
        kind: Kind,
        key: &Digest,
        path: PathBuf,
        reason: CorruptReason,
    ) -> Corruption {
        let quarantine_dir = self.dir.join(QUARANTINE_DIR);
        let target = quarantine_dir.join(format!(
            "{}-{}-{}",
            kind.name(),
            key.to_hex(),
            atomic::unique_token()
        ));
        let quarantined =
            match fs::create_dir_all(&quarantine_dir).and_then(|()| fs::rename(&path, &target)) {
                Ok(()) => Some(target),
                Err(_) => {
                    let _ = fs::remove_file(&path);
                    None
                }
            };
        Corruption {
            path,
            reason,
            quarantined,
        }
    }

    fn ensure_tag(&self) -> Result<(), StoreError> {
        let tag = self.dir.join(TAG_FILE);
        if tag.is_file() {
            return Ok(());
        }
        // Same temp-and-rename as entries: two processes opening a fresh store both succeed.
        atomic::write_parts(&tag, &[TAG_CONTENT.as_bytes()], self.durability())
            .map_err(io_error("write", &tag))
    }
}

fn default_dir_with(manifest_root: &Path, env_value: Option<std::ffi::OsString>) -> PathBuf {
    match env_value {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => manifest_root.join(DEFAULT_DIR_NAME),
    }
}

/// gc evicts by modification time, so a read bumps it. Best effort: a read-only store still
/// serves hits, it just ages by write time.
fn refresh_access_time(file: &File, metadata: &fs::Metadata) {
    let now = SystemTime::now();
    let fresh = metadata
        .modified()
        .ok()
        .and_then(|modified| now.duration_since(modified).ok())
        .is_some_and(|age| age < TOUCH_GRANULARITY);
    if !fresh {
        let _ = file.set_modified(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_prefers_non_empty_env() {
        let root = Path::new("/project");
        assert_eq!(default_dir_with(root, None), Path::new("/project/.quant"));
        assert_eq!(
            default_dir_with(root, Some("".into())),
            Path::new("/project/.quant")
        );
        assert_eq!(
            default_dir_with(root, Some("/ci/cache".into())),
            Path::new("/ci/cache")
        );
    }

    #[test]
    fn entry_path_splits_the_key() {
        let store = Store {
            dir: PathBuf::from("/s"),
            fsync: true,
            remote: None,
        };
        let key = Digest::from_bytes([0xab; 32]);
        let path = store.entry_path(Kind::new("encodings", 1), &key);
        let expected = format!("/s/objects/encodings/ab/{}", "ab".repeat(31));
        assert_eq!(path, Path::new(&expected));
    }
}
