//! `quant watch` as a user runs it: a child process on a copy of the example pipeline, edited the
//! way editors save (write a temporary file, rename it over), with every line it prints read on
//! background threads. Every wait has a deadline, and the child is killed however the test ends.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use common::{EXAMPLE, copy_tree};
/// The tensor `overrides/head.json` pins.
const HEAD_TENSOR: &str = "save_infer_model/scale_0.tmp_1";
/// A cold build of the example in a debug binary on a loaded 2-core machine, with margin.
const FIRST_BUILD: Duration = Duration::from_secs(120);
/// A rebuild after one edit, with margin for the debounce and a loaded machine.
const REBUILD: Duration = Duration::from_secs(60);

/// Saves the way editors do: a temporary file beside the target, renamed over it.
fn save_atomically(path: &Path, bytes: &[u8]) {
    let temporary = path.with_extension("swp~");
    fs::write(&temporary, bytes).unwrap();
    fs::rename(&temporary, path).unwrap();
}

/// A running `quant watch` and everything it printed so far (stdout and stderr interleaved in
/// arrival order, which is all the test needs).
struct Watch {
    child: Child,
    lines: Receiver<String>,
    transcript: Vec<String>,
}

impl Watch {
    fn start(root: &Path, store: &Path) -> Watch {
        let mut child = Command::new(common::quant_bin())
            .arg("watch")
            .arg(root)
            .env("QUANT_CACHE_DIR", store)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (stream, tag) in [
            (Box::new(stdout) as Box<dyn Read + Send>, "out"),
            (Box::new(stderr), "err"),
        ] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if sender.send(format!("[{tag}] {line}")).is_err() {
                        break;
                    }
                }
            });
        }
        Watch {
            child,
            lines,
            transcript: Vec::new(),
        }
    }

    /// Waits until a line printed from now on satisfies `matches`; returns it. Fails the test
    /// with the whole transcript when the deadline passes or the child exits.
    fn wait_for(
        &mut self,
        what: &str,
        deadline: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.transcript.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {what} within {deadline:?}; transcript:\n{}",
                        self.transcript.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "quant watch exited ({:?}) before printing {what}; transcript:\n{}",
                    self.child.try_wait(),
                    self.transcript.join("\n")
                ),
            }
        }
    }

    /// Lines printed since `mark` (an index into the transcript).
    fn since(&self, mark: usize) -> &[String] {
        &self.transcript[mark..]
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A line that ends a successful build.
fn finished(line: &str) -> bool {
    line.contains("Finished")
}

/// A line that says the watcher waits for the next change.
fn watching(line: &str) -> bool {
    line.contains("Watching for changes")
}

/// A line that reports a failed build (miette's error marker).
fn failed(line: &str) -> bool {
    line.contains('×')
}

#[test]
fn watch_rebuilds_after_a_rename_save_and_after_a_sample_comes_back() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("text-orientation");
    copy_tree(Path::new(EXAMPLE), &root);
    let store = TempDir::new().unwrap();
    let mut watch = Watch::start(&root, store.path());
    watch.wait_for("the first build", FIRST_BUILD, finished);
    watch.wait_for("watching to start", REBUILD, watching);
    let encodings = root.join("quant-out/htp/cls/encodings.json");
    let before =
        fs::read_to_string(&encodings).expect("the first build wrote htp/cls/encodings.json");

    // An override edit: [0, 1] → [0, 0.5] halves the head's scale, offset stays 0.
    let overrides = root.join("overrides/head.json");
    let text = fs::read_to_string(&overrides).unwrap();
    assert!(
        text.contains("\"max\": 1.0"),
        "the example's override changed: {text}"
    );
    let mark = watch.transcript.len();
    save_atomically(
        &overrides,
        text.replace("\"max\": 1.0", "\"max\": 0.5").as_bytes(),
    );
    let change = watch.wait_for("the changed head encoding", REBUILD, |line| {
        line.contains(HEAD_TENSOR) && line.contains('→')
    });
    // Old and new scale of an 8-bit [0, 1] and [0, 0.5] encoding.
    assert!(
        change.contains("0.0039215") && change.contains("0.0019607"),
        "the change line does not show the old and new scale: {change}"
    );
    watch.wait_for("the rebuild to finish", REBUILD, finished);
    watch.wait_for("watching to resume", REBUILD, watching);
    let after = fs::read_to_string(&encodings).unwrap();
    assert_ne!(before, after, "encodings.json did not change on disk");
    let since = watch.since(mark);
    let changed: Vec<_> = since
        .iter()
        .filter(|line| line.contains("Changed"))
        .collect();
    assert!(
        !changed.is_empty() && changed.iter().all(|line| line.contains(HEAD_TENSOR)),
        "an override edit reported other tensors as changed: {changed:#?}"
    );
    // What the edit did to accuracy: one line per evaluated target, old → new.
    for target in ["htp", "htp-a16"] {
        let prefix = format!("Evaluated {target}/cls: top-1 ");
        let metrics: Vec<_> = since.iter().filter(|l| l.contains(&prefix)).collect();
        assert_eq!(metrics.len(), 1, "{since:#?}");
        assert!(
            metrics[0].contains(" % → ")
                && metrics[0].contains("output SQNR ")
                && metrics[0].ends_with(" dB"),
            "{since:#?}"
        );
    }

    // A calibration sample disappears: the build fails with a diagnostic naming it, and
    // watching goes on; when it is back, the next build succeeds again.
    let sample = root.join("calib/0003.raw");
    let bytes = fs::read(&sample).unwrap();
    let failed_at = watch.transcript.len();
    fs::remove_file(&sample).unwrap();
    let diagnostic = watch.wait_for("a diagnostic for the missing sample", REBUILD, |line| {
        line.contains("0003.raw")
    });
    watch.wait_for(
        "watching to go on after the failed build",
        REBUILD,
        watching,
    );
    assert!(
        !watch.since(failed_at).iter().any(|line| finished(line)),
        "the build without {} finished:\n{}",
        sample.display(),
        watch.since(failed_at).join("\n")
    );
    let mark = watch.transcript.len();
    fs::write(&sample, &bytes).unwrap();
    watch.wait_for("a build after the sample came back", REBUILD, finished);
    assert!(
        !watch.since(mark).iter().any(|line| failed(line)),
        "the build after re-creating {diagnostic:?} still failed:\n{}",
        watch.since(mark).join("\n")
    );
    // Same bytes back → same outputs as before the sample vanished.
    assert_eq!(fs::read_to_string(&encodings).unwrap(), after);
    assert!(
        watch.child.try_wait().unwrap().is_none(),
        "quant watch exited"
    );
}
