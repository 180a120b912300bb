//! `quant build` on a copy of the bundled example: what an edit recomputes, counted by the
//! `--json` summary of fresh processes and by the executed-query log of one database; and the
//! encodings it writes equal `quant quantize`'s for the same settings.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use quant::engine::{self, BuildContext, BuildOptions, Database, Db, ProjectSpec, WorkLog};
use serde_json::Value;
use tempfile::TempDir;

use common::{EXAMPLE, copy_tree};
const HEAD_TENSOR: &str = "save_infer_model/scale_0.tmp_1";

/// A copy of the example pipeline and an empty store beside it.
struct Example {
    _dir: TempDir,
    root: PathBuf,
    store: PathBuf,
}

impl Example {
    fn new() -> Example {
        let dir = TempDir::new().unwrap();
        let root = dir.path().join("text-orientation");
        copy_tree(Path::new(EXAMPLE), &root);
        let store = dir.path().join("store");
        Example {
            _dir: dir,
            root,
            store,
        }
    }

    fn quant(&self, args: &[&str]) -> Output {
        Command::new(common::quant_bin())
            .args(args)
            .env("QUANT_CACHE_DIR", &self.store)
            .env("NO_COLOR", "1")
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `quant build --json EXTRA...` in a fresh process; must succeed.
    fn build(&self, extra: &[&str]) -> (Value, String) {
        let mut args = vec!["build", "--json"];
        args.extend_from_slice(extra);
        let output = self.quant(&args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(
            output.status.code(),
            Some(0),
            "quant {args:?} failed:\n{stderr}"
        );
        let json: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        });
        (json, stderr)
    }

    /// Halves the head override's range: [0, 1] → [0, 0.5].
    fn edit_override(&self) {
        let path = self.root.join("overrides/head.json");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"max\": 1.0"));
        fs::write(&path, text.replace("\"max\": 1.0", "\"max\": 0.5")).unwrap();
    }

    /// Adds a ninth sample: sample 0 with a few values changed, so its content is new.
    fn add_sample(&self) {
        let mut bytes = fs::read(self.root.join("calib/0000.raw")).unwrap();
        for (i, chunk) in bytes.chunks_exact_mut(4).enumerate().step_by(997) {
            chunk.copy_from_slice(&((i % 7) as f32 * 0.25 - 0.75).to_le_bytes());
        }
        fs::write(self.root.join("calib/0008.raw"), bytes).unwrap();
        let list = self.root.join("calib/input_list.txt");
        let mut text = fs::read_to_string(&list).unwrap();
        text.push_str("0008.raw\n");
        fs::write(list, text).unwrap();
    }
}

fn count(json: &Value, key: &str) -> u64 {
    json[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not a count in {json}"))
}

fn counts(json: &Value) -> [u64; 6] {
    [
        "samples_run",
        "samples_reused",
        "tensors_encoded",
        "tensors_reused",
        "artifacts_written",
        "artifacts_unchanged",
    ]
    .map(|key| count(json, key))
}

#[test]
fn fresh_processes_recompute_only_what_an_edit_touches() {
    let example = Example::new();

    let (cold, _) = example.build(&[]);
    let [run, reused, encoded, _, written, unchanged] = counts(&cold);
    assert_eq!((run, reused), (8, 0), "{cold}");
    assert!(encoded > 500, "a cold build encodes every tensor: {cold}");
    // gpu, htp and htp-a16: encodings.json and report.json each; gpu its model.fp16.onnx;
    // the two quantized targets model.qdq.onnx and (they evaluate) report.html.
    assert_eq!((written, unchanged), (11, 0), "{cold}");
    assert!(cold["wall_ms"].is_u64());
    assert_eq!(cold["targets"].as_array().unwrap().len(), 3);

    let (noop, _) = example.build(&[]);
    let [run, reused, encoded, tensors_reused, written, unchanged] = counts(&noop);
    assert_eq!(
        (run, reused, encoded, written, unchanged),
        (0, 8, 0, 0, 11),
        "{noop}"
    );
    assert_eq!(tensors_reused, count(&cold, "tensors_encoded"), "{noop}");

    // One override entry, one target: one tensor re-encoded, no sample run, and --explain
    // names the file and the tensor.
    example.edit_override();
    let (edit, stderr) = example.build(&["--target", "htp", "--explain"]);
    let [run, _, encoded, _, written, _] = counts(&edit);
    // New encodings: encodings.json, report.json, model.qdq.onnx and report.html change.
    assert_eq!((run, encoded, written), (0, 1, 4), "{edit}");
    assert!(
        stderr.contains(&format!(
            "overrides/head.json changed → 1 tensor re-encoded: {HEAD_TENSOR}"
        )),
        "--explain does not say why:\n{stderr}"
    );
    // htp-a16 uses the same override: its one tensor is all that is left to do.
    let (rest, _) = example.build(&[]);
    let [run, _, encoded, _, written, _] = counts(&rest);
    assert_eq!((run, encoded, written), (0, 1, 4), "{rest}");

    example.add_sample();
    let (added, stderr) = example.build(&["--explain"]);
    let [run, reused, ..] = counts(&added);
    assert_eq!((run, reused), (1, 8), "{added}");
    assert!(
        stderr.contains("1 sample calibrated: calib/0008.raw"),
        "{stderr}"
    );

    let (noop, _) = example.build(&[]);
    let [run, _, encoded, _, written, _] = counts(&noop);
    assert_eq!((run, encoded, written), (0, 0, 0), "{noop}");
}

#[test]
fn build_writes_the_encodings_quantize_writes() {
    let example = Example::new();
    example.build(&["--target", "htp", "-j", "1"]);
    let reference = example.root.join("reference.json");
    let reference_model = example.root.join("reference.qdq.onnx");
    let output = example.quant(&[
        "quantize",
        "--output_model",
        reference_model.to_str().unwrap(),
        "--input_network",
        "models/cls.onnx",
        "--input_list",
        "calib/input_list.txt",
        "--output_encodings",
        reference.to_str().unwrap(),
        "--act_bitwidth",
        "8",
        "--weights_bitwidth",
        "8",
        "--bias_bitwidth",
        "32",
        "--param_quantizer_schema",
        "symmetric",
        "--use_per_channel_quantization",
        "--quantization_overrides",
        "overrides/head.json",
        "--input_dim",
        "x",
        "1,3,48,192",
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let built = fs::read(example.root.join("quant-out/htp/cls/encodings.json")).unwrap();
    assert!(
        built == fs::read(&reference).unwrap(),
        "quant build and quant quantize disagree"
    );
    // The build plans its QDQ model tensor by tensor and keeps each part; `quantize` plans it
    // in one pass. Both must give the same bytes.
    let built_model = fs::read(example.root.join("quant-out/htp/cls/model.qdq.onnx")).unwrap();
    assert!(
        built_model == fs::read(&reference_model).unwrap(),
        "quant build and quant quantize write different QDQ models"
    );
}

#[test]
fn unknown_names_are_bad_usage_and_broken_manifests_fail() {
    let example = Example::new();
    let output = example.quant(&["build", "--target", "htq"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("target `htq`") && stderr.contains("htp-a16"),
        "{stderr}"
    );
    assert!(
        !example.root.join("quant-out").exists(),
        "a usage error built something"
    );

    let manifest = example.root.join("quant.toml");
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(
        &manifest,
        text.replace("act_bitwidth = 16", "act_bitwidht = 16"),
    )
    .unwrap();
    let output = example.quant(&["build"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("act_bitwidht"), "{stderr}");
}

#[test]
fn a_missing_sample_is_a_diagnostic_naming_it() {
    let example = Example::new();
    fs::remove_file(example.root.join("calib/0003.raw")).unwrap();
    let output = example.quant(&["build", "--target", "htp"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("0003.raw"), "{stderr}");
}

/// The executed-query log of one database: the same counts as the fresh processes, seen from
/// inside salsa (no store, so every execution is a computation).
#[test]
fn one_override_edit_re_executes_one_tensor_encoding() {
    let example = Example::new();
    let mut db = Database::with_execution_log();
    let context = BuildContext::new(&db, None, WorkLog::default());
    let manifest = example.root.join("quant.toml");
    let projects = vec![ProjectSpec {
        shown_as: manifest.display().to_string(),
        manifest: manifest.clone(),
        context,
    }];
    let options = BuildOptions {
        targets: vec!["htp".to_string()],
        models: Vec::new(),
        jobs: Some(2),
        shard: None,
    };
    let executed = |db: &Database, query: &str| {
        db.take_executed()
            .iter()
            .filter(|q| q.query == query)
            .count()
    };

    let report = engine::build(&db, &projects, &options, &|_| {});
    assert!(
        report.succeeded(),
        "{:?}",
        report.errors().collect::<Vec<_>>()
    );
    let all = db.take_executed();
    let encodings = all.iter().filter(|q| q.query == "tensor_encoding").count();
    assert!(
        encodings > 400,
        "cold build executed {encodings} tensor_encoding"
    );
    assert_eq!(
        all.iter()
            .filter(|q| q.query == "sample_statistics")
            .count(),
        8
    );

    // Nothing changed: nothing executes.
    assert!(db.refresh(db.files().paths()).is_empty());
    let report = engine::build(&db, &projects, &options, &|_| {});
    assert!(report.succeeded());
    assert_eq!(db.take_executed(), Vec::new());

    example.edit_override();
    let changed = db.refresh([example.root.join("overrides/head.json")]);
    assert_eq!(changed.len(), 1);
    let report = engine::build(&db, &projects, &options, &|_| {});
    assert!(report.succeeded());
    let all = db.take_executed();
    let names: Vec<String> = all.iter().map(|q| q.query.clone()).collect();
    assert_eq!(
        all.iter().filter(|q| q.query == "tensor_encoding").count(),
        1,
        "executed: {names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n == "sample_statistics" || n == "merged_statistics")
    );
    assert_eq!(report.counts.tensors_encoded, 1);
    let done = report.units[0].result.as_ref().unwrap();
    assert_eq!(
        done.explanation.tensors_encoded,
        vec![HEAD_TENSOR.to_string()]
    );

    example.add_sample();
    let changed = db.refresh(db.files().paths());
    let paths: Vec<_> = changed.iter().map(|f| f.path(&db).clone()).collect();
    assert_eq!(
        changed.len(),
        1,
        "only the input list changed on disk: {paths:?}"
    );
    let report = engine::build(&db, &projects, &options, &|_| {});
    assert!(report.succeeded());
    assert_eq!(executed(&db, "sample_statistics"), 1);
    assert_eq!(report.counts.samples_run, 1);
    assert_eq!(report.counts.samples_reused, 8);
}

/// A later build trusts a settled file's stamp (size, times, inode) for its digest instead of
/// reading it; any write changes the stamp, even one that keeps the size and puts the
/// modification time back.
#[test]
fn stamps_vouch_only_for_untouched_files() {
    let example = Example::new();
    example.build(&[]);
    // The copies are seconds old only now: stamps taken earlier were too close to the
    // files' last change to be trusted, so this build reads them again and records them.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (noop, _) = example.build(&[]);
    assert_eq!(count(&noop, "samples_run"), 0, "{noop}");
    let index = example.store.join("objects/file-stamps");
    assert!(index.is_dir(), "no stamp index in the store");

    // Rewrite one sample with other bytes of the same length, then restore its mtime: only
    // the change time (which no user call can set back) and the content differ.
    let sample = example.root.join("calib/0003.raw");
    let modified = fs::metadata(&sample).unwrap().modified().unwrap();
    let mut bytes = fs::read(&sample).unwrap();
    for byte in bytes.iter_mut().step_by(4096) {
        *byte ^= 0x5a;
    }
    fs::write(&sample, &bytes).unwrap();
    fs::File::options()
        .write(true)
        .open(&sample)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    let (edited, _) = example.build(&[]);
    assert_eq!(count(&edited, "samples_run"), 1, "{edited}");
}
