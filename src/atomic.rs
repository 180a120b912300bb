//! Atomic file writes: every file this crate writes (store entries, encodings, reports, models)
//! goes to a uniquely named temporary file in the target's own folder and is renamed over the
//! target, so a reader sees the old file or the new one, never half of either, and a killed
//! writer leaves at most a temporary file behind.
//!
//! It owns the temporary-file naming: [`is_temporary`] recognizes every name this crate writes
//! or ever wrote, and [`remove_stale_temporaries`] cleans up after writers that died. It must not
//! decide *what* to write or where; callers pass finished bytes and a path.
//!
//! Temporary names are `.tmp-<pid>-<counter>-<random>.<target name>`: hidden, so listings and
//! globs skip them; the process id lets a cleaner tell a dead writer from a live one; the
//! counter separates threads of one process; the random part separates a process from an
//! earlier one that had the same id; the target name says what was being written.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// How every temporary name of the current scheme starts (the store's older names too).
pub const TEMP_PREFIX: &str = ".tmp-";

/// A temporary file older than this belongs to a writer that died: no live write takes an hour.
pub const STALE_AGE: Duration = Duration::from_secs(60 * 60);

/// Target names are cut to this many bytes inside a temporary name, so a long target name
/// cannot push the temporary's past the file system's limit (255 bytes on most).
const MAX_TARGET_IN_NAME: usize = 128;

/// How hard a write tries to survive a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The file is flushed to disk before the rename and its folder after it, so a power loss
    /// leaves the old file or the new one. Flushing dominates the cost of a small write.
    Flushed,
    /// No flush: a killed process still leaves the old file or the new one (the rename sees to
    /// that), but a power loss may leave the target empty or torn. For throwaway files and
    /// stores that verify what they read.
    Unflushed,
}

/// Writes `bytes` to `path` atomically and durably ([`Durability::Flushed`]). The folder must
/// exist. On any failure the temporary file is removed and the target is left as it was.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_parts(path, &[bytes], Durability::Flushed)
}

/// Writes the concatenation of `parts` to `path` atomically (no copy is made to join them). The
/// folder must exist. On any failure the temporary file is removed and the target is left as
/// it was.
pub fn write_parts(path: &Path, parts: &[&[u8]], durability: Durability) -> io::Result<()> {
    let dir = folder_of(path);
    let (temporary, file) = create_temporary(dir, path.file_name())?;
    if let Err(err) = fill_and_rename(file, &temporary, path, parts, durability) {
        // Nothing will ever rename it, and a reader never looks at it: it is only litter.
        let _ = fs::remove_file(&temporary);
        return Err(err);
    }
    if durability == Durability::Flushed {
        sync_dir(dir);
    }
    Ok(())
}

fn fill_and_rename(
    mut file: File,
    temporary: &Path,
    path: &Path,
    parts: &[&[u8]],
    durability: Durability,
) -> io::Result<()> {
    for part in parts {
        file.write_all(part)?;
    }
    // Without this a power loss after the rename could leave a renamed but empty file.
    if durability == Durability::Flushed {
        file.sync_all()?;
    }
    // Closed before the rename: some platforms refuse to rename an open file.
    drop(file);
    fs::rename(temporary, path)
}

/// Writes `bytes` to `path` unless it already holds them, creating the folder if needed;
/// atomically and durably, as [`write`]. Returns whether it wrote.
///
/// Leaving an unchanged file alone keeps its modification time, so whatever watches the
/// outputs (an IDE, a downstream build) sees only the files that changed.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    if holds(path, bytes) {
        return Ok(false);
    }
    fs::create_dir_all(folder_of(path))?;
    write(path, bytes).map(|()| true)
}

/// Whether the file at `path` holds exactly `bytes`. Compares the length first and then reads
/// in blocks, stopping at the first difference: an edited output differs from the old one
/// somewhere, and reading a whole multi-megabyte file to find out cost more than writing it.
pub fn holds(path: &Path, bytes: &[u8]) -> bool {
    const BLOCK: usize = 1 << 16;
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    if file.metadata().map(|m| m.len()).ok() != Some(bytes.len() as u64) {
        return false;
    }
    let mut buffer = vec![0u8; BLOCK.min(bytes.len().max(1))];
    let mut rest = bytes;
    loop {
        let want = rest.len().min(buffer.len());
        if want == 0 {
            // Nothing may follow (the file could have grown since the length was read).
            return matches!(file.read(&mut buffer[..1]), Ok(0));
        }
        if file.read_exact(&mut buffer[..want]).is_err() || buffer[..want] != rest[..want] {
            return false;
        }
        rest = &rest[want..];
    }
}

/// The folder a file at `path` lives in; `.` for a bare file name.
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Creates a new temporary file in `dir` for a target named `target`. `create_new` makes sure
/// an existing file (another writer's) is never opened, let alone removed on failure.
fn create_temporary(dir: &Path, target: Option<&OsStr>) -> io::Result<(PathBuf, File)> {
    let target = target.map(OsStr::to_string_lossy).unwrap_or_default();
    let mut attempt = 0;
    loop {
        let path = dir.join(temporary_name(&target));
        match File::options().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            // A name is unique short of a 64-bit collision; retrying costs nothing.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
            Err(err) => return Err(err),
        }
    }
}

/// A temporary name for a file named `target` that no other writer can pick (see the module
/// docs for the layout).
fn temporary_name(target: &str) -> String {
    let token = unique_token();
    if target.is_empty() {
        return format!("{TEMP_PREFIX}{token}");
    }
    let mut end = target.len().min(MAX_TARGET_IN_NAME);
    while !target.is_char_boundary(end) {
        end -= 1;
    }
    format!("{TEMP_PREFIX}{token}.{}", &target[..end])
}

/// `<pid>-<counter>-<random>`: unique among all processes and threads of this machine, and
/// across a restart that reuses a process id. For names that must not collide, such as
/// quarantined and doomed store files.
pub fn unique_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // RandomState is seeded from the OS once per thread, so two processes differ even when
    // their ids, counters and clocks agree.
    let random = std::collections::hash_map::RandomState::new().hash_one((count, now));
    format!("{}-{count}-{random:016x}", std::process::id())
}

/// Who left a temporary file, as far as its name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// The process with this id.
    Process(u32),
    /// The name does not say (the older fixed-name schemes).
    Unknown,
}

/// Whether `name` (a file name, or a path whose last component is looked at) is a temporary
/// file of an atomic write by this crate, of the current scheme or of an older one:
///
/// - `.tmp-<pid>-<counter>-<random>[.<target>]`: this module's, and the store's before it;
/// - `.<target>.tmp-<pid>`: the build's output files;
/// - `.<target>.<pid>.tmp`: AIMET encodings files;
/// - `report.json.tmp`, `report.html.tmp`: reports;
/// - `<target>.partial`: ONNX models.
///
/// A finished file never has such a name, so a folder listing can skip them.
pub fn is_temporary(name: impl AsRef<Path>) -> bool {
    name.as_ref()
        .file_name()
        .and_then(OsStr::to_str)
        .and_then(writer_of)
        .is_some()
}

/// The writer of the temporary file named `name`, or `None` when it is not one.
fn writer_of(name: &str) -> Option<Writer> {
    if let Some(rest) = name.strip_prefix(TEMP_PREFIX) {
        // `<pid>-<counter>-<random>`, then the target for this module's names.
        let token = rest.split_once('.').map_or(rest, |(token, _)| token);
        let mut fields = token.splitn(3, '-');
        let pid = fields.next()?.parse::<u32>().ok();
        let counter = fields.next().filter(|c| is_digits(c));
        let random = fields
            .next()
            .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_hexdigit()));
        if let (Some(pid), Some(_), Some(_)) = (pid, counter, random) {
            return Some(Writer::Process(pid));
        }
    }
    if let Some(hidden) = name.strip_prefix('.') {
        // `.<target>.tmp-<pid>`.
        if let Some((_, pid)) = name.rsplit_once(".tmp-")
            && is_digits(pid)
            && let Ok(pid) = pid.parse::<u32>()
        {
            return Some(Writer::Process(pid));
        }
        // `.<target>.<pid>.tmp`.
        if let Some((target, pid)) = hidden
            .strip_suffix(".tmp")
            .and_then(|stem| stem.rsplit_once('.'))
            && !target.is_empty()
            && is_digits(pid)
            && let Ok(pid) = pid.parse::<u32>()
        {
            return Some(Writer::Process(pid));
        }
    }
    if matches!(name, "report.json.tmp" | "report.html.tmp") {
        return Some(Writer::Unknown);
    }
    if name.strip_suffix(".partial").is_some_and(|t| !t.is_empty()) {
        return Some(Writer::Unknown);
    }
    None
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Removes the temporary files ([`is_temporary`]) in `dir` whose writer is dead, and returns
/// how many it removed. Best effort: a file that cannot be inspected or removed is left alone.
///
/// A writer is dead when its name gives a process id and no such process runs (read off
/// `/proc`; never the current process), or when the file is older than [`STALE_AGE`]. The age
/// rule covers names without a process id, systems without `/proc`, and a process id reused by
/// another program (or by this one, as in a container that always starts as pid 1).
///
/// Only for folders of one machine: a folder shared between machines (a store on a network
/// drive) must use the age rule alone, since another machine's writers are not in `/proc`.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let proc = Path::new("/proc");
    let processes_visible = proc.join("self").exists();
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(writer) = name.to_str().and_then(writer_of) else {
            continue;
        };
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        if !metadata.is_file() {
            continue;
        }
        let dead_writer = match writer {
            Writer::Process(pid) => {
                processes_visible
                    && pid != std::process::id()
                    && !proc.join(pid.to_string()).exists()
            }
            Writer::Unknown => false,
        };
        let old = metadata
            .modified()
            .ok()
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age >= STALE_AGE);
        if (dead_writer || old) && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Makes a rename durable across power loss; best effort, and a no-op where directories cannot
/// be opened as files.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// The names of the files in `dir`.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn set_mtime(path: &Path, time: SystemTime) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(time)
            .unwrap();
    }

    #[test]
    fn writes_replace_the_target_and_leave_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("encodings.json");
        write(&path, b"first").unwrap();
        write_parts(&path, &[b"sec", b"ond"], Durability::Unflushed).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(names(dir.path()), ["encodings.json"]);
    }

    #[test]
    fn a_failed_write_removes_its_temporary_and_keeps_the_target() {
        let dir = tempfile::tempdir().unwrap();
        // The rename fails: a folder (with something in it) cannot be replaced by a file.
        let target = dir.path().join("report.json");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"kept").unwrap();
        for durability in [Durability::Flushed, Durability::Unflushed] {
            assert!(write_parts(&target, &[b"x"], durability).is_err());
            assert!(write_if_changed(&target, b"x").is_err());
        }
        assert_eq!(names(dir.path()), ["report.json"]);
        assert_eq!(fs::read(target.join("inside")).unwrap(), b"kept");
        // The temporary cannot even be created: nothing to clean up, and an error.
        let missing = dir.path().join("no-such-folder").join("x.json");
        assert!(write(&missing, b"x").is_err());
        assert_eq!(names(dir.path()), ["report.json"]);
    }

    #[test]
    fn temporary_names_are_unique_recognized_and_say_what_they_were_for() {
        let a = temporary_name("encodings.json");
        let b = temporary_name("encodings.json");
        assert_ne!(a, b);
        assert!(a.starts_with(TEMP_PREFIX) && a.ends_with(".encodings.json"));
        assert!(a.starts_with(&format!("{TEMP_PREFIX}{}-", std::process::id())));
        assert_eq!(writer_of(&a), Some(Writer::Process(std::process::id())));
        assert!(is_temporary(temporary_name("")));
        // A long target name is cut at a character boundary.
        let long = temporary_name(&"é".repeat(200));
        assert!(long.len() < 200 && is_temporary(&long));
    }

    #[test]
    fn every_temporary_scheme_is_recognized_and_finished_files_are_not() {
        let temporaries = [
            // This module's, and the store's before it.
            (
                ".tmp-4242-17-00ff00ff00ff00ff.encodings.json",
                Writer::Process(4242),
            ),
            (".tmp-4242-17-00ff00ff00ff00ff", Writer::Process(4242)),
            (".tmp-1-2-3", Writer::Process(1)),
            // The build's output files.
            (".encodings.json.tmp-4242", Writer::Process(4242)),
            (".model.qdq.onnx.tmp-7", Writer::Process(7)),
            // AIMET encodings files.
            (".encodings.json.4242.tmp", Writer::Process(4242)),
            (".out.json.12.tmp", Writer::Process(12)),
            // Reports.
            ("report.json.tmp", Writer::Unknown),
            ("report.html.tmp", Writer::Unknown),
            // ONNX models.
            ("model.qdq.onnx.partial", Writer::Unknown),
        ];
        for (name, writer) in temporaries {
            assert_eq!(writer_of(name), Some(writer), "{name}");
            assert!(is_temporary(name), "{name}");
            assert!(is_temporary(Path::new("/out/htp").join(name)), "{name}");
        }
        let finished = [
            "encodings.json",
            "report.json",
            "report.html",
            "model.qdq.onnx",
            "CACHEDIR.TAG",
            "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
            // Names that merely look alike.
            "notes.tmp",
            ".tmp-",
            ".tmp-x-1-2",
            ".tmp-1-2-xyz",
            ".json.tmp-abc",
            "..tmp",
            ".partial",
            "scale_0.tmp_1",
        ];
        for name in finished {
            assert!(!is_temporary(name), "{name}");
        }
    }

    #[test]
    fn temporaries_of_dead_writers_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ours = std::process::id();
        // No process has this id (above the kernel's pid_max).
        let dead = u32::MAX;
        let fresh_dead = [
            format!(".encodings.json.tmp-{dead}"),
            format!(".encodings.json.{dead}.tmp"),
            format!(".tmp-{dead}-0-0123456789abcdef.report.json"),
        ];
        let kept = [
            format!(".encodings.json.tmp-{ours}"),
            format!(".tmp-{ours}-3-0123456789abcdef.report.json"),
            "report.json.tmp".to_string(),
            "model.onnx.partial".to_string(),
            "encodings.json".to_string(),
        ];
        let old = [
            // Without a writer's id, or with our own (a reused id): only their age tells.
            "report.html.tmp".to_string(),
            "cls.onnx.partial".to_string(),
            format!(".tmp-{ours}-4-0123456789abcdef.report.json"),
        ];
        for name in fresh_dead.iter().chain(&kept).chain(&old) {
            fs::write(dir.path().join(name), b"{}").unwrap();
        }
        let long_ago = SystemTime::now() - STALE_AGE - Duration::from_secs(60);
        for name in &old {
            set_mtime(&dir.path().join(name), long_ago);
        }
        // An old finished file is never touched, nor a folder with a temporary's name.
        set_mtime(&dir.path().join("encodings.json"), long_ago);
        fs::create_dir(dir.path().join(".tmp-1-2-3")).unwrap();

        let removed = remove_stale_temporaries(dir.path());
        let processes_visible = Path::new("/proc/self").exists();
        let mut expected: Vec<String> = kept.to_vec();
        expected.push(".tmp-1-2-3".to_string());
        if !processes_visible {
            expected.extend(fresh_dead.iter().cloned());
        }
        expected.sort();
        assert_eq!(names(dir.path()), expected);
        // Eleven files and a folder were there; the folder stays.
        assert_eq!(removed, 11 - (expected.len() - 1));
    }

    #[test]
    fn holds_compares_whole_contents_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        assert!(!holds(&path, b""), "a missing file holds nothing");
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&path, &big).unwrap();
        assert!(holds(&path, &big));
        let mut late = big.clone();
        *late.last_mut().unwrap() ^= 1;
        assert!(!holds(&path, &late), "a difference in the last block");
        assert!(!holds(&path, &big[..big.len() - 1]), "a shorter buffer");
        fs::write(&path, b"").unwrap();
        assert!(holds(&path, b""));
        assert!(write_if_changed(&path, b"x").unwrap());
        assert!(!write_if_changed(&path, b"x").unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"x");
        let nested = dir.path().join("a").join("b").join("c.json");
        assert!(
            write_if_changed(&nested, b"y").unwrap(),
            "creates the folders"
        );
        assert_eq!(fs::read(&nested).unwrap(), b"y");
    }

    #[test]
    fn concurrent_writers_never_produce_a_torn_file() {
        const WRITERS: usize = 4;
        const ROUNDS: usize = 50;
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().join("shared.bin"));
        // Each writer's content is large enough to take several write calls, and every byte of
        // it says which writer it came from, so a mix of two is visible anywhere in the file.
        let content = |writer: usize| vec![writer as u8 + 1; 300_000];
        write(&path, &content(0)).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (path, done) = (Arc::clone(&path), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut reads = 0;
                while !done.load(Ordering::Relaxed) {
                    let bytes = fs::read(&*path).unwrap();
                    assert_eq!(bytes.len(), 300_000, "a partial file");
                    assert!(bytes.iter().all(|&b| b == bytes[0]), "a torn file");
                    reads += 1;
                }
                reads
            })
        };
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let path = Arc::clone(&path);
                std::thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        write_parts(&path, &[&content(writer)], Durability::Unflushed).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        let last = fs::read(&*path).unwrap();
        assert!(last.iter().all(|&b| b == last[0]) && (1..=WRITERS as u8).contains(&last[0]));
        assert_eq!(
            names(dir.path()),
            ["shared.bin"],
            "no temporary left behind"
        );
    }
}
