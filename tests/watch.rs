//! The watcher against a real file system: editor-style saves are seen, content that did not
//! change is not, and deleted or late files come back. Every wait has a deadline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::ops::ControlFlow;
use std::time::Instant;

use quant::engine::lines::file_total;
use quant::engine::{Database, FileError, normalize_path, source_file};
use quant::watch::{WatchEvent, Watcher, rebuild_on_change};

/// Long enough for a loaded CI machine to deliver an event that is coming.
const EXPECTED: Duration = Duration::from_secs(10);
/// Long enough for an event that would wrongly be reported (debounce is 50 ms).
const QUIET: Duration = Duration::from_millis(800);

/// Saves the way editors do: write a temporary file beside the target, rename it over.
fn save_atomically(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp~");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn changed(paths: &[&Path]) -> Option<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = paths.iter().map(|p| normalize_path(p)).collect();
    paths.sort();
    Some(paths)
}

#[test]
fn an_atomic_rename_save_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = dir.path().join("overrides.json");
    std::fs::write(&overrides, "{}").unwrap();
    let mut watcher = Watcher::new([&overrides]).unwrap();

    save_atomically(&overrides, r#"{"activation_encodings": {}}"#);
    assert_eq!(watcher.next_change(EXPECTED), changed(&[&overrides]));
    // The watch survived the rename (a per-file watch would not): a second save is seen too.
    save_atomically(&overrides, r#"{"param_encodings": {}}"#);
    assert_eq!(watcher.next_change(EXPECTED), changed(&[&overrides]));
}

#[test]
fn saving_identical_bytes_is_not_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("quant.toml");
    std::fs::write(&manifest, "[pipeline]\n").unwrap();
    let mut watcher = Watcher::new([&manifest]).unwrap();

    save_atomically(&manifest, "[pipeline]\n");
    std::fs::write(&manifest, "[pipeline]\n").unwrap();
    assert_eq!(watcher.next_change(QUIET), None);
}

#[test]
fn deleting_and_recreating_a_file_are_both_reported() {
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("sample_0.raw");
    std::fs::write(&sample, [1u8, 2, 3, 4]).unwrap();
    let mut watcher = Watcher::new([&sample]).unwrap();

    std::fs::remove_file(&sample).unwrap();
    assert_eq!(watcher.next_change(EXPECTED), changed(&[&sample]));
    std::fs::write(&sample, [1u8, 2, 3, 4]).unwrap();
    assert_eq!(watcher.next_change(EXPECTED), changed(&[&sample]));
}

#[test]
fn an_untracked_sibling_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let tracked = dir.path().join("quant.toml");
    let sibling = dir.path().join("notes.txt");
    std::fs::write(&tracked, "[pipeline]\n").unwrap();
    let mut watcher = Watcher::new([&tracked]).unwrap();

    std::fs::write(&sibling, "scratch").unwrap();
    save_atomically(&sibling, "more scratch");
    assert_eq!(watcher.next_change(QUIET), None);

    std::fs::write(&sibling, "even more").unwrap();
    save_atomically(&tracked, "[pipeline]\nname = \"x\"\n");
    assert_eq!(watcher.next_change(EXPECTED), changed(&[&tracked]));
}

#[test]
fn updating_the_tracked_set_moves_the_watch() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.json");
    let elsewhere = dir.path().join("overrides");
    std::fs::create_dir(&elsewhere).unwrap();
    let new = elsewhere.join("new.json");
    std::fs::write(&old, "{}").unwrap();
    std::fs::write(&new, "{}").unwrap();
    let mut watcher = Watcher::new([&old]).unwrap();

    watcher.update_paths([&new]);
    assert_eq!(watcher.paths(), changed(&[&new]).unwrap());
    save_atomically(&old, "{\"a\": 1}");
    assert_eq!(watcher.next_change(QUIET), None);
    save_atomically(&new, "{\"b\": 2}");
    assert_eq!(watcher.next_change(EXPECTED), changed(&[&new]));
}

#[test]
fn a_file_in_a_directory_created_later_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let later = dir.path().join("calibration").join("input_list.txt");
    let mut watcher = Watcher::new([&later]).unwrap();
    assert_eq!(watcher.next_change(Duration::from_millis(300)), None);

    std::fs::create_dir(dir.path().join("calibration")).unwrap();
    std::fs::write(&later, "sample_0.raw\n").unwrap();
    assert_eq!(watcher.next_change(EXPECTED), changed(&[&later]));
}

#[test]
fn a_directory_deleted_and_recreated_is_watched_again() {
    let dir = tempfile::tempdir().unwrap();
    let calibration = dir.path().join("calibration");
    std::fs::create_dir(&calibration).unwrap();
    let list = calibration.join("input_list.txt");
    std::fs::write(&list, "sample_0.raw\n").unwrap();
    let mut watcher = Watcher::new([&list]).unwrap();

    std::fs::remove_dir_all(&calibration).unwrap();
    assert_eq!(watcher.next_change(EXPECTED), changed(&[&list]));
    std::fs::create_dir(&calibration).unwrap();
    std::fs::write(&list, "sample_1.raw\n").unwrap();
    assert_eq!(watcher.next_change(EXPECTED), changed(&[&list]));
    save_atomically(&list, "sample_2.raw\n");
    assert_eq!(watcher.next_change(EXPECTED), changed(&[&list]));
}

/// Gives up on a watch loop that has not finished its script by then.
const LOOP_DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn the_loop_rebuilds_after_an_edit_a_deletion_and_a_recreation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("numbers.txt");
    std::fs::write(&path, "1\n2\n").unwrap();
    let mut db = Database::new();
    // Starts empty: the loop learns what to watch from what the build read.
    let mut watcher = Watcher::new(Vec::<PathBuf>::new()).unwrap();
    let read = path.clone();
    let build = move |db: &Database| file_total(db, source_file(db, &read)).clone();

    let started = Instant::now();
    let mut results = Vec::new();
    rebuild_on_change(&mut db, &mut watcher, build, |event| {
        if let WatchEvent::Built(result) = event {
            results.push(result);
            // Each step edits right after a build, before the loop has even started watching
            // the file after the first one: the loop must not lose that edit either.
            match results.len() {
                1 => save_atomically(&path, "1\n2\n3\n"),
                2 => std::fs::remove_file(&path).unwrap(),
                3 => std::fs::write(&path, "10\n").unwrap(),
                _ => return ControlFlow::Break(()),
            }
        }
        if started.elapsed() > LOOP_DEADLINE {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    assert_eq!(results, [Ok(3), Ok(6), Err(FileError::NotFound), Ok(10)]);
    assert_eq!(watcher.paths(), changed(&[&path]).unwrap());
}

#[test]
fn a_change_during_a_build_restarts_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quant.toml");
    std::fs::write(&path, "slow").unwrap();
    let mut db = Database::new();
    db.load(&path);
    let mut watcher = Watcher::new([&path]).unwrap();
    let read = path.clone();
    // A build that takes 30 s on "slow" unless cancelled, checking as long loops must.
    let build = move |db: &Database| {
        let file = source_file(db, &read);
        let text = String::from_utf8_lossy(file.bytes(db).map(|b| &b[..]).unwrap_or_default());
        if text == "slow" {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                salsa::Database::unwind_if_revision_cancelled(db);
                std::thread::sleep(Duration::from_millis(1));
            }
            return "slow build was not cancelled".to_owned();
        }
        text.into_owned()
    };
    let editor = {
        let path = path.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            save_atomically(&path, "fast");
        })
    };

    let started = Instant::now();
    let mut events = Vec::new();
    rebuild_on_change(&mut db, &mut watcher, build, |event| {
        let done = matches!(event, WatchEvent::Built(_));
        if event != WatchEvent::Idle {
            events.push(event);
        }
        if done || started.elapsed() > LOOP_DEADLINE {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    editor.join().unwrap();
    assert_eq!(
        events,
        [
            WatchEvent::Restarted {
                changed: changed(&[&path]).unwrap()
            },
            WatchEvent::Built("fast".to_owned()),
        ]
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "restart took {:?}",
        started.elapsed()
    );
}
