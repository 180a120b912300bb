//! Full disks and read-only folders, for real: the example pipeline is built inside a small
//! tmpfs. A write that fails (ENOSPC, EROFS) is an error naming the path, no half-written output
//! or temporary file remains, nothing lands in the store's quarantine, and the build after the
//! space is freed equals a clean build byte for byte.
//!
//! Mounting needs root (CI runs as root); elsewhere the tests skip saying why, and fail under
//! `QUANT_REQUIRE_FIXTURES`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{EXAMPLE, copy_tree};

/// A tmpfs mounted on a fresh folder, unmounted when dropped (also when the test fails).
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `kib` KiB, or says why it cannot (then the test skips).
    fn mount(kib: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("fs");
        fs::create_dir(&path).map_err(|e| e.to_string())?;
        mount(
            &["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"],
            &path,
        )?;
        Ok(Tmpfs { _dir: dir, path })
    }

    /// Changes the mount's options (`size=…`, `ro`, `rw`).
    fn remount(&self, options: &str) {
        mount(&["-o", &format!("remount,{options}")], &self.path).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn mount(args: &[&str], at: &Path) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .arg(at)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {args:?} failed (needs root, as CI has): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn build(root: &Path) -> Output {
    Command::new(common::quant_bin())
        .arg("build")
        .env_remove("QUANT_CACHE_DIR")
        .env("NO_COLOR", "1")
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// stderr with the diagnostics' wrapped lines joined again (the terminal form breaks long
/// messages at spaces and continues them after a `│` gutter).
fn unwrapped(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr).replace("\n  │ ", " ")
}

/// Every file under `dir` by relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = fs::read(&path).unwrap();
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    out
}

/// The outputs of a clean build of the example on an ordinary disk.
fn clean_outputs() -> BTreeMap<PathBuf, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("p");
    copy_tree(Path::new(EXAMPLE), &root);
    let out = build(&root);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tree(&root.join("quant-out"))
}

/// No temporary file anywhere under `root`, and nothing quarantined.
fn assert_no_litter(root: &Path) {
    for (path, _) in tree(root) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !quant::atomic::is_temporary(&name),
            "a temporary file remains: {}",
            path.display()
        );
        assert!(
            !path.starts_with(".quant/quarantine"),
            "a store entry was quarantined: {}",
            path.display()
        );
    }
}

/// Each output present is complete: byte for byte the clean build's file of that name.
fn assert_whole_outputs(root: &Path, clean: &BTreeMap<PathBuf, Vec<u8>>) {
    for (path, bytes) in tree(&root.join("quant-out")) {
        assert!(
            clean.get(&path) == Some(&bytes),
            "{} is not the clean build's file",
            path.display()
        );
    }
}

/// Size of the example's inputs, in KiB, rounded up.
fn example_kib() -> u64 {
    tree(Path::new(EXAMPLE))
        .iter()
        .filter(|(p, _)| !p.starts_with("quant-out") && !p.starts_with(".quant"))
        .map(|(_, b)| (b.len() as u64).div_ceil(4096) * 4)
        .sum()
}

#[test]
fn a_full_disk_fails_naming_the_path_and_the_next_build_equals_a_clean_one() {
    // Inputs plus 3 MiB: the store fills first, then the outputs cannot be written.
    let fs = match Tmpfs::mount(example_kib() + 3 * 1024) {
        Ok(fs) => fs,
        Err(reason) => return common::skip_or_fail(reason),
    };
    let clean = clean_outputs();
    let root = fs.path.join("p");
    copy_tree(Path::new(EXAMPLE), &root);

    let out = build(&root);
    let stderr = unwrapped(&out.stderr);
    println!("full disk, quant build said:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(stderr.contains("cannot write `quant-out/"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_no_litter(&root);
    assert_whole_outputs(&root, &clean);

    fs.remount("size=64m");
    let out = build(&root);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_no_litter(&root);
    assert_eq!(
        tree(&root.join("quant-out")),
        clean,
        "the build after freeing space differs from a clean one"
    );
}

#[test]
fn a_read_only_folder_fails_naming_the_path_and_leaves_nothing() {
    let fs = match Tmpfs::mount(64 * 1024) {
        Ok(fs) => fs,
        Err(reason) => return common::skip_or_fail(reason),
    };
    let clean = clean_outputs();
    let root = fs.path.join("p");
    copy_tree(Path::new(EXAMPLE), &root);
    fs.remount("ro");

    let out = build(&root);
    let stderr = unwrapped(&out.stderr);
    println!("read-only folder, quant build said:\n{stderr}");
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    // The first write is the store's folder, inside the manifest's folder.
    assert!(
        stderr.contains(&*root.join(".quant").to_string_lossy()),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!root.join("quant-out").exists() && !root.join(".quant").exists());

    fs.remount("rw");
    let out = build(&root);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_litter(&root);
    assert_eq!(tree(&root.join("quant-out")), clean);
}
