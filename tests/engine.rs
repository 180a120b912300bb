//! The engine's incremental guarantees, asserted through the log of executed queries: inputs
//! change only when their digest does, one edited line re-runs one per-line query, missing
//! files are values, and a newer edit cancels a running build.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quant::engine::lines::{Line, file_total, line_value};
use quant::engine::{Build, Database, Db, FileError, SourceFile};
use rayon::prelude::*;

/// The names of the queries executed since the last call, sorted (execution order across
/// queries is salsa's business; which and how many is ours).
fn executed(db: &Database) -> Vec<String> {
    let mut names: Vec<String> = db.take_executed().into_iter().map(|q| q.query).collect();
    names.sort();
    names
}

fn count(names: &[String], query: &str) -> usize {
    names.iter().filter(|name| *name == query).count()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn loading_an_unchanged_file_starts_no_revision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("numbers.txt");
    write(&path, "1 2\n3\n");
    let mut db = Database::with_execution_log();
    let file = db.load(&path);
    assert_eq!(file_total(&db, file), &Ok(6));
    assert!(count(&executed(&db), "parsed_lines") == 1);

    // Same bytes written again (an editor's save without edits): the input is not set, so
    // nothing re-executes, not even the coarse parse.
    write(&path, "1 2\n3\n");
    assert_eq!(db.load(&path), file, "a path keeps its input");
    assert_eq!(file_total(&db, file), &Ok(6));
    assert_eq!(executed(&db), Vec::<String>::new());
    assert!(db.refresh([&path]).is_empty());
}

#[test]
fn editing_one_line_reexecutes_exactly_one_line_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("numbers.txt");
    write(&path, "1 2\n3\n4 5 6\n7\n8\n");
    let mut db = Database::with_execution_log();
    let file = db.load(&path);
    assert_eq!(file_total(&db, file), &Ok(36));
    let first = executed(&db);
    assert_eq!(count(&first, "line_value"), 5);

    write(&path, "1 2\n3\n4 5 60\n7\n8\n");
    assert_eq!(db.refresh([&path]), vec![file]);
    assert_eq!(file_total(&db, file), &Ok(90));
    // The parse and every projection re-run; four projections return what they returned before
    // and are backdated, so only the edited line's value and the total are recomputed.
    assert_eq!(
        executed(&db),
        [
            "file_total",
            "line_text",
            "line_text",
            "line_text",
            "line_text",
            "line_text",
            "line_value",
            "parsed_lines",
        ]
    );
    let edited = Line::new(&db, file, 2);
    assert_eq!(line_value(&db, edited), &69);
}

#[test]
fn a_missing_file_is_an_error_value_and_recreating_it_is_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later.txt");
    let mut db = Database::with_execution_log();

    let file = db.load(&path);
    assert_eq!(file.contents(&db), &Err(FileError::NotFound));
    assert_eq!(file.digest(&db), None);
    assert_eq!(file_total(&db, file), &Err(FileError::NotFound));

    // Still missing: no change, no re-execution.
    assert!(db.refresh([&path]).is_empty());
    executed(&db);
    assert_eq!(file_total(&db, file), &Err(FileError::NotFound));
    assert_eq!(executed(&db), Vec::<String>::new());

    write(&path, "10\n20\n");
    assert_eq!(db.refresh([&path]), vec![file]);
    assert_eq!(file_total(&db, file), &Ok(30));
    assert_eq!(
        file.digest(&db),
        Some(quant::store::Digest::of(b"10\n20\n"))
    );

    std::fs::remove_file(&path).unwrap();
    assert_eq!(db.refresh([&path]), vec![file]);
    assert_eq!(file_total(&db, file), &Err(FileError::NotFound));
}

#[test]
fn refresh_reports_only_tracked_files_whose_digest_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, untracked) = (
        dir.path().join("a.txt"),
        dir.path().join("b.txt"),
        dir.path().join("c.txt"),
    );
    write(&a, "1\n");
    write(&b, "2\n");
    let mut db = Database::new();
    let file_a = db.load(&a);
    let _file_b = db.load(&b);
    write(&a, "1\n");
    write(&b, "22\n");
    write(&untracked, "3\n");
    let changed = db.refresh([&a, &b, &untracked]);
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].path(&db), &quant::engine::normalize_path(&b));
    assert!(
        db.files().get(&untracked).is_none(),
        "refresh must not start tracking"
    );
    assert_eq!(db.files().paths().len(), 2);
    assert_eq!(db.files().get(&a), Some(file_a));
}

#[test]
fn results_computed_on_parallel_clones_are_reused_by_the_original_handle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("numbers.txt");
    let text: String = (0..64).map(|i| format!("{i} {i}\n")).collect();
    write(&path, &text);
    let mut db = Database::with_execution_log();
    let file = db.load(&path);
    let lines: Vec<Line> = (0..64).map(|index| Line::new(&db, file, index)).collect();

    let values: Vec<i64> = lines
        .par_iter()
        .map_with(db.clone(), |db, line| *line_value(db, *line))
        .collect();
    assert_eq!(values.iter().sum::<i64>(), 2 * (0..64).sum::<i64>());
    assert_eq!(count(&executed(&db), "line_value"), 64);

    assert_eq!(file_total(&db, file), &Ok(2 * (0..64).sum::<i64>()));
    assert_eq!(executed(&db), ["file_total"]);
}

/// Set once the slow query below is running, so the test edits mid-build, not before it.
static SLOW_QUERY_STARTED: AtomicBool = AtomicBool::new(false);

/// A query that would take 30 s unless cancelled, checking for cancellation every millisecond
/// the way calibration loops over samples.
#[salsa::tracked]
fn slow_byte_count(db: &dyn Db, file: SourceFile) -> u64 {
    SLOW_QUERY_STARTED.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        db.unwind_if_revision_cancelled();
        std::thread::sleep(Duration::from_millis(1));
    }
    file.bytes(db).map_or(0, |bytes| bytes.len() as u64)
}

#[test]
fn an_edit_cancels_the_running_build_and_the_next_build_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("numbers.txt");
    write(&path, "1\n");
    let mut db = Database::with_execution_log();
    let file = db.load(&path);

    let build = Build::spawn(&db, move |db| *slow_byte_count(db, file));
    let waiting_since = Instant::now();
    while !SLOW_QUERY_STARTED.load(Ordering::SeqCst) {
        assert!(
            waiting_since.elapsed() < Duration::from_secs(20),
            "the build never started"
        );
        std::thread::sleep(Duration::from_millis(1));
    }

    let edit_started = Instant::now();
    write(&path, "1\n2\n");
    // Blocks until the worker has unwound and dropped its clone.
    assert_eq!(db.refresh([&path]), vec![file]);
    let outcome = build.join();
    assert!(
        matches!(outcome, Err(salsa::Cancelled::PendingWrite)),
        "expected a cancelled build, got {outcome:?}"
    );
    assert!(
        edit_started.elapsed() < Duration::from_secs(10),
        "cancellation took {:?}",
        edit_started.elapsed()
    );

    let build = Build::spawn(&db, move |db| file_total(db, file).clone());
    assert_eq!(build.join().unwrap(), Ok(3));
}
