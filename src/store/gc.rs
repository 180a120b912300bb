//! Store maintenance: size-bounded LRU eviction (`quant cache gc`) and removal (`quant clean`).
//! It must not touch anything outside the store folder, and must stay safe while builds run:
//! evicting an entry a build is reading only turns that read into a miss.

use super::{OBJECTS_DIR, QUARANTINE_DIR, Store, StoreError, TAG_FILE, TAG_OWNER_LINE, io_error};
use crate::atomic;
use serde::Serialize;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Size `quant cache gc` trims to when `--max-size` is not given (2 GiB).
pub const DEFAULT_MAX_SIZE: u64 = 2 << 30;
/// A temp file older than this belongs to a writer that died: no live write takes an hour.
///
/// The store goes by age alone, never by whether the writer's process runs: a store may be
/// shared between machines, whose processes this one cannot see.
pub const STALE_TEMP_AGE: Duration = atomic::STALE_AGE;

/// What `gc` did. Sizes are file sizes in bytes, headers included.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Entries left in the store.
    pub entries_kept: u64,
    /// Bytes of the entries left.
    pub bytes_kept: u64,
    /// Least-recently-used entries evicted to get under the size limit.
    pub entries_removed: u64,
    /// Bytes of the evicted entries.
    pub bytes_removed: u64,
    /// Temp files of writers that died (older than [`STALE_TEMP_AGE`]) removed.
    pub stale_temp_files_removed: u64,
    /// Quarantined corrupt entries removed.
    pub quarantined_removed: u64,
}

/// What `clean` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanReport {
    /// Files deleted.
    pub files_removed: u64,
    /// Their total size in bytes.
    pub bytes_removed: u64,
}

struct Entry {
    path: PathBuf,
    size: u64,
    last_used: SystemTime,
}

impl Store {
    /// Evicts least-recently-used entries until the entries total at most `max_size` bytes, and
    /// removes stale temp files and quarantined entries.
    ///
    /// "Used" is the file's modification time, which `put` sets and `get` refreshes (at most
    /// once a minute per entry). Ties are broken by path so the result is deterministic.
    pub fn gc(&self, max_size: u64) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let now = SystemTime::now();
        let mut entries = Vec::new();
        let objects = self.dir.join(OBJECTS_DIR);
        for kind_dir in list_dir(&objects)? {
            for shard_dir in list_dir(&kind_dir)? {
                for path in list_dir(&shard_dir)? {
                    let Some(metadata) = metadata_if_present(&path)? else {
                        continue;
                    };
                    if !metadata.is_file() {
                        continue;
                    }
                    let last_used = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    if atomic::is_temporary(&path) {
                        let stale = now
                            .duration_since(last_used)
                            .is_ok_and(|age| age >= STALE_TEMP_AGE);
                        if stale && remove_if_present(&path)? {
                            report.stale_temp_files_removed += 1;
                        }
                        continue;
                    }
                    entries.push(Entry {
                        path,
                        size: metadata.len(),
                        last_used,
                    });
                }
            }
        }
        for path in list_dir(&self.dir.join(QUARANTINE_DIR))? {
            if remove_if_present(&path)? {
                report.quarantined_removed += 1;
            }
        }
        // Stale temp files of the tag written at the store root.
        for path in list_dir(&self.dir)? {
            if atomic::is_temporary(&path) {
                let stale = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|modified| now.duration_since(modified).ok())
                    .is_some_and(|age| age >= STALE_TEMP_AGE);
                if stale && remove_if_present(&path)? {
                    report.stale_temp_files_removed += 1;
                }
            }
        }

        entries.sort_by(|a, b| {
            a.last_used
                .cmp(&b.last_used)
                .then_with(|| a.path.cmp(&b.path))
        });
        let mut total: u64 = entries.iter().map(|entry| entry.size).sum();
        let mut kept = entries.len() as u64;
        for entry in &entries {
            if total <= max_size {
                break;
            }
            // Already gone means another gc took it: its bytes are freed all the same.
            remove_if_present(&entry.path)?;
            total -= entry.size;
            kept -= 1;
            report.entries_removed += 1;
            report.bytes_removed += entry.size;
        }
        report.entries_kept = kept;
        report.bytes_kept = total;
        Ok(report)
    }

    /// Deletes the whole store folder. See [`clean`].
    pub fn clean(self) -> Result<CleanReport, StoreError> {
        clean(&self.dir)
    }
}

/// Deletes the store in `dir` (nothing to do if it does not exist). Refuses a folder without
/// the `CACHEDIR.TAG` quant writes, so a mistyped `QUANT_CACHE_DIR` cannot delete a home folder.
///
/// The folder is first renamed aside, so a build running concurrently starts a fresh store
/// instead of writing into a half-deleted one.
pub fn clean(dir: &Path) -> Result<CleanReport, StoreError> {
    let tag = dir.join(TAG_FILE);
    match fs::read_to_string(&tag) {
        Ok(content) if content.contains(TAG_OWNER_LINE) => {}
        Ok(_) => {
            return Err(StoreError::NotAStore {
                path: dir.to_path_buf(),
            });
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            if fs::symlink_metadata(dir).is_err() {
                return Ok(CleanReport::default());
            }
            return Err(StoreError::NotAStore {
                path: dir.to_path_buf(),
            });
        }
        Err(err) => return Err(io_error("read", &tag)(err)),
    }
    let mut doomed = dir.as_os_str().to_owned();
    doomed.push(format!(".removing-{}", atomic::unique_token()));
    let doomed = PathBuf::from(doomed);
    let target = match fs::rename(dir, &doomed) {
        Ok(()) => doomed,
        // E.g. the parent is read-only but the store is not: delete in place.
        Err(_) => dir.to_path_buf(),
    };
    let mut report = CleanReport::default();
    for entry in walkdir::WalkDir::new(&target).into_iter().flatten() {
        if entry.file_type().is_file() {
            report.files_removed += 1;
            report.bytes_removed += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    fs::remove_dir_all(&target).map_err(io_error("remove", &target))?;
    Ok(report)
}

/// Children of `dir`; a missing folder (never written, or removed concurrently) is empty.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let read = match fs::read_dir(dir) {
        Ok(read) => read,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io_error("list", dir)(err)),
    };
    let mut paths = Vec::new();
    for child in read {
        paths.push(child.map_err(io_error("list", dir))?.path());
    }
    Ok(paths)
}

fn metadata_if_present(path: &Path) -> Result<Option<fs::Metadata>, StoreError> {
    match fs::symlink_metadata(path) {
        Ok(metadata) => Ok(Some(metadata)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io_error("inspect", path)(err)),
    }
}

fn remove_if_present(path: &Path) -> Result<bool, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(io_error("remove", path)(err)),
    }
}
