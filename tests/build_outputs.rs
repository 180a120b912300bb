//! What `quant build` writes beside `encodings.json` on a copy of the bundled example: the QDQ
//! model of each quantized target, and for targets with `evaluate = "NAME"` the evaluation in
//! `report.json`, `report.html` and the terminal summary. The evaluation agrees with `quant eval`
//! on the same files, is reused by a fresh process when nothing changed, re-runs when the
//! encodings change, and its outputs are byte-identical to a clean build's. Bad eval sets are
//! build errors (exit 1) with diagnostics naming the file.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use quant::export::qdq::DIGEST_KEY;
use quant::onnx::OnnxModel;
use serde_json::Value;
use tempfile::TempDir;

use common::{EXAMPLE, copy_tree};
/// Quantized targets of the example (both evaluate `textlines`) and its float target.
const QUANTIZED: [&str; 2] = ["htp", "htp-a16"];
const FLOAT: &str = "gpu";

/// A copy of the example pipeline with its own empty store.
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

    /// `quant build --json` in a fresh process; must succeed.
    fn build_json(&self) -> Value {
        let output = self.quant(&["build", "--json"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(0),
            "quant build failed:\n{stderr}"
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    fn out(&self, target: &str, file: &str) -> PathBuf {
        self.root
            .join("quant-out")
            .join(target)
            .join("cls")
            .join(file)
    }

    fn report(&self, target: &str) -> Value {
        serde_json::from_slice(&fs::read(self.out(target, "report.json")).unwrap()).unwrap()
    }

    /// Every file under `quant-out`, by relative path.
    fn outputs(&self) -> BTreeMap<String, Vec<u8>> {
        let base = self.root.join("quant-out");
        walkdir::WalkDir::new(&base)
            .into_iter()
            .map(Result::unwrap)
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let name = e.path().strip_prefix(&base).unwrap().display().to_string();
                (name, fs::read(e.path()).unwrap())
            })
            .collect()
    }

    /// Narrows the head override's range: [0, 1] → [0, 0.5].
    fn edit_override(&self) {
        let path = self.root.join("overrides/head.json");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"max\": 1.0"));
        fs::write(&path, text.replace("\"max\": 1.0", "\"max\": 0.5")).unwrap();
    }

    /// Widens the head override edited by [`Example::edit_override`]: [0, 0.5] → [0, 0.75].
    fn edit_override_again(&self) {
        let path = self.root.join("overrides/head.json");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"max\": 0.5"));
        fs::write(&path, text.replace("\"max\": 0.5", "\"max\": 0.75")).unwrap();
    }

    /// Adds an override of `relu_14.tmp_0`, a ReLU in the middle of the network: everything
    /// downstream of it changes.
    fn edit_inner_override(&self) {
        let path = self.root.join("overrides/head.json");
        let text = fs::read_to_string(&path).unwrap();
        let entry = r#""relu_14.tmp_0": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "max": 2.0, "min": 0.0}],"#;
        let edited = text.replacen(
            "\"activation_encodings\": {",
            &format!("\"activation_encodings\": {{{entry}"),
            1,
        );
        assert_ne!(edited, text);
        fs::write(&path, edited).unwrap();
    }
}

fn unit<'a>(summary: &'a Value, target: &str) -> &'a Value {
    summary["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == target)
        .unwrap_or_else(|| panic!("no target `{target}` in {summary}"))
}

/// Checks that `path` is a QDQ model of cls recording `encodings`' digest.
fn check_qdq_model(path: &Path, encodings: &[u8]) {
    let model = OnnxModel::from_bytes(&fs::read(path).unwrap(), path).unwrap();
    let proto = model.proto();
    let graph = proto.graph.as_ref().unwrap();
    let count = |op: &str| {
        graph
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some(op))
            .count()
    };
    let (quantize, dequantize) = (count("QuantizeLinear"), count("DequantizeLinear"));
    // Every encoded activation gets a pair; every encoded parameter a DequantizeLinear of its
    // stored integers.
    assert!(
        quantize > 100,
        "{quantize} QuantizeLinear in {}",
        path.display()
    );
    assert!(
        dequantize > quantize,
        "{dequantize} DequantizeLinear, {quantize} QuantizeLinear"
    );
    let digest: Vec<&str> = proto
        .metadata_props
        .iter()
        .filter(|p| p.key.as_deref() == Some(DIGEST_KEY))
        .filter_map(|p| p.value.as_deref())
        .collect();
    assert_eq!(
        digest,
        [blake3::hash(encodings).to_hex().as_str()],
        "{}",
        path.display()
    );
}

/// `quant eval --json` on a unit's own files: the reference the build's evaluation must equal.
fn quant_eval(example: &Example, target: &str) -> Value {
    let encodings = example.out(target, "encodings.json");
    let output = example.quant(&[
        "eval",
        "--input_network",
        "models/cls.onnx",
        "--encodings",
        encodings.to_str().unwrap(),
        "--input_list",
        "eval/input_list.txt",
        "--labels",
        "eval/labels.txt",
        "--input_dim",
        "x",
        "1,3,48,192",
        "--json",
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn build_writes_qdq_models_and_evaluated_reports() {
    let example = Example::new();
    let cold = example.build_json();
    assert_eq!(cold["evaluations_run"], 2, "{cold}");
    // gpu: encodings, report.json, model.fp16.onnx; htp, htp-a16: encodings, report.json,
    // model.qdq.onnx, report.html.
    assert_eq!(cold["artifacts_written"], 11, "{cold}");

    for target in QUANTIZED {
        let encodings = fs::read(example.out(target, "encodings.json")).unwrap();
        check_qdq_model(&example.out(target, "model.qdq.onnx"), &encodings);

        let report = example.report(target);
        assert_eq!(report["report_version"], 2);
        let evaluation = &report["evaluation"];
        let top1 = &evaluation["metrics"]["top1"];
        assert_eq!(top1["samples"], 8, "{target}: {top1}");
        assert!(top1["float"]["accuracy"].is_f64(), "{target}: {top1}");
        assert!(top1["quantized"]["accuracy"].is_f64(), "{target}: {top1}");
        // No paths of this machine: names relative to the manifest.
        assert_eq!(evaluation["input_list"], "eval/input_list.txt");
        assert_eq!(evaluation["labels"], "eval/labels.txt");
        assert!(
            !String::from_utf8_lossy(&fs::read(example.out(target, "report.json")).unwrap())
                .contains(example.root.to_str().unwrap()),
            "{target}: report.json holds an absolute path"
        );

        // The same measurements as `quant eval` on the unit's encodings.json.
        let reference = quant_eval(&example, target);
        assert_eq!(evaluation["metrics"], reference["metrics"], "{target}");
        let sqnr = |r: &Value| -> Vec<Value> {
            r["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["sqnr_db"].clone())
                .collect()
        };
        assert_eq!(sqnr(evaluation), sqnr(&reference), "{target}");

        // --json carries the headline.
        let headline = &unit(&cold, target)["evaluation"];
        assert_eq!(
            headline["top1_float"], top1["float"]["accuracy"],
            "{headline}"
        );
        assert_eq!(headline["top1_quantized"], top1["quantized"]["accuracy"]);
        assert_eq!(
            headline["output_sqnr_db_mean"],
            evaluation["metrics"]["outputs"][0]["sqnr_db_mean"]
        );

        let html = fs::read_to_string(example.out(target, "report.html")).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"), "{}", &html[..40]);
        assert!(
            html.contains("pool2d_7.tmp_0"),
            "the tensor table is missing"
        );
    }

    // The float target: encodings and a report without evaluation, nothing else.
    assert!(!example.out(FLOAT, "model.qdq.onnx").exists());
    assert!(!example.out(FLOAT, "report.html").exists());
    assert!(example.report(FLOAT).get("evaluation").is_none());
    assert!(unit(&cold, FLOAT)["evaluation"].is_null());
}

#[test]
fn evaluation_is_reused_rerun_on_edit_and_equal_to_a_clean_build() {
    let example = Example::new();
    // Status output of a build that evaluates: each evaluated unit's tables, after its files.
    let cold = example.quant(&["build"]);
    let stderr = String::from_utf8_lossy(&cold.stderr);
    assert_eq!(cold.status.code(), Some(0), "{stderr}");
    for target in QUANTIZED {
        assert!(
            stderr.contains(&format!(
                "Evaluated text-orientation/{target}/cls on 8 samples"
            )),
            "{stderr}"
        );
    }
    assert_eq!(stderr.matches("Worst 10 of").count(), 2, "{stderr}");
    assert!(stderr.contains("top-1 (save_infer_model/scale_0.tmp_1, 2 classes): float"));
    assert!(!stderr.contains("Fresh"), "{stderr}");
    let first = example.outputs();

    // No change, fresh process: nothing evaluated or written.
    let noop = example.build_json();
    assert_eq!(noop["evaluations_run"], 0, "{noop}");
    assert_eq!(noop["eval_samples_run"], 0, "{noop}");
    assert_eq!(noop["artifacts_written"], 0, "{noop}");
    assert_eq!(example.outputs(), first);

    // Status output of a no-op: one `Fresh` line per unit, with the headline of the evaluated
    // ones, and the `Finished` line; no tables.
    let plain = example.quant(&["build"]);
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert_eq!(plain.status.code(), Some(0), "{stderr}");
    let lines: Vec<&str> = stderr.lines().map(str::trim).collect();
    for target in QUANTIZED {
        let fresh = format!("Fresh text-orientation/{target}/cls (top-1 ");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&fresh) && l.ends_with(" dB)")),
            "{stderr}"
        );
    }
    assert!(
        lines.contains(&format!("Fresh text-orientation/{FLOAT}/cls").as_str()),
        "{stderr}"
    );
    assert!(lines.last().unwrap().starts_with("Finished"), "{stderr}");
    assert_eq!(lines.len(), QUANTIZED.len() + 2, "{stderr}");

    // `--verbose` prints the reused evaluations' tables too.
    let verbose = example.quant(&["build", "--verbose"]);
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    assert_eq!(stderr.matches("Worst 10 of").count(), 2, "{stderr}");
    assert!(!stderr.contains("Fresh text-orientation/htp/"), "{stderr}");

    // The override changes both quantized targets' encodings: both evaluations re-run. The
    // tensor is the model's output, which nothing reads: its traced value is re-quantized and
    // no eval sample runs.
    example.edit_override();
    let edited = example.build_json();
    assert_eq!(edited["evaluations_run"], 2, "{edited}");
    assert_eq!(edited["eval_samples_run"], 0, "{edited}");
    assert_eq!(edited["eval_samples_reused"], 16, "{edited}");
    let after = example.outputs();
    for target in QUANTIZED {
        for file in [
            "encodings.json",
            "model.qdq.onnx",
            "report.json",
            "report.html",
        ] {
            let name = format!("{target}/cls/{file}");
            assert_ne!(after[&name], first[&name], "{name} did not change");
        }
    }

    // A clean build of the edited project, in another folder with an empty store, writes the
    // same bytes.
    let clean = Example::new();
    clean.edit_override();
    clean.build_json();
    let clean_outputs = clean.outputs();
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        clean_outputs.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &after {
        assert!(
            *bytes == clean_outputs[name],
            "{name} differs from a clean build"
        );
    }

    // An edit in the middle of the network reaches the output: every eval sample runs again
    // (8 per target), measuring only the tensors downstream of the edit, and the result is
    // again a clean build's.
    example.edit_inner_override();
    let inner = example.build_json();
    assert_eq!(inner["evaluations_run"], 2, "{inner}");
    assert_eq!(inner["eval_samples_run"], 16, "{inner}");
    let after_inner = example.outputs();
    let clean = Example::new();
    clean.edit_override();
    clean.edit_inner_override();
    let clean_json = clean.build_json();
    assert_eq!(clean_json["eval_samples_run"], 16, "{clean_json}");
    let clean_outputs = clean.outputs();
    for (name, bytes) in &after_inner {
        assert!(
            *bytes == clean_outputs[name],
            "{name} differs from a clean build after the inner edit"
        );
    }
    assert_ne!(
        after_inner["htp/cls/report.json"], after["htp/cls/report.json"],
        "the inner edit changed no measurement"
    );
}

/// Flips a byte in the middle of every entry of store kind `kind`; returns their file names.
fn damage_entries(example: &Example, kind: &str) -> Vec<String> {
    let dir = example.store.join("objects").join(kind);
    let mut damaged = Vec::new();
    for entry in walkdir::WalkDir::new(&dir).into_iter().map(Result::unwrap) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_file() && !name.contains(".tmp") {
            let mut bytes = fs::read(entry.path()).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x5A;
            fs::write(entry.path(), bytes).unwrap();
            damaged.push(name);
        }
    }
    damaged
}

/// Builds with `--json` after `edit`, requiring a warning naming each of `damaged`; checks the
/// outputs against a clean build of a fresh copy given `edits`; returns the summary.
fn build_after_damage(example: &Example, damaged: &[String], edits: &[fn(&Example)]) -> Value {
    let output = example.quant(&["build", "--json"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    for name in damaged {
        assert!(
            stderr.to_lowercase().contains("corrupt") && stderr.contains(name.as_str()),
            "no warning names the damaged entry {name}:\n{stderr}"
        );
    }
    let clean = Example::new();
    for edit in edits {
        edit(&clean);
    }
    clean.build_json();
    assert!(
        example.outputs() == clean.outputs(),
        "differs from a clean build"
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn damaged_evaluation_traces_are_reported_and_rerun() {
    let example = Example::new();
    example.build_json();

    // The simulation traces (one entry per quantized target): an output edit, which would run
    // no sample, runs every sample of both targets.
    let sims = damage_entries(&example, "eval-sim-traces");
    assert_eq!(sims.len(), 2, "{sims:?}");
    example.edit_override();
    let summary = build_after_damage(&example, &sims, &[Example::edit_override]);
    assert_eq!(summary["eval_samples_run"], 16, "{summary}");

    // The float totals: the evaluations fall back to each sample's float trace, still without
    // running a sample.
    let totals = damage_entries(&example, "eval-float-totals");
    assert_eq!(totals.len(), 1, "{totals:?}");
    example.edit_override_again();
    let summary = build_after_damage(
        &example,
        &totals,
        &[Example::edit_override, Example::edit_override_again],
    );
    assert_eq!(summary["eval_samples_run"], 0, "{summary}");
}

/// Replaces `eval/labels.txt` (or another file of the example) and builds; returns stderr of a
/// build that must fail with exit 1.
fn failing_build(example: &Example) -> String {
    let output = example.quant(&["build", "--target", "htp"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
}

#[test]
fn bad_eval_sets_are_build_errors_naming_the_file() {
    let example = Example::new();
    let labels = example.root.join("eval/labels.txt");
    let original = fs::read_to_string(&labels).unwrap();

    // One label short.
    let short: Vec<&str> = original.lines().take(7).collect();
    fs::write(&labels, short.join("\n") + "\n").unwrap();
    let stderr = failing_build(&example);
    // miette wraps the message: check its parts.
    assert!(
        stderr.contains("quant::eval::label_count")
            && stderr.contains("has 7 labels but input list")
            && stderr.contains("has 8 samples"),
        "{stderr}"
    );
    assert!(!example.out("htp", "report.json").exists());

    // A class the 2-class output does not have.
    fs::write(&labels, original.replacen('1', "5", 1)).unwrap();
    let stderr = failing_build(&example);
    assert!(
        stderr.contains("quant::eval::label_out_of_range")
            && stderr.contains("line 1: class 5 is outside the model's 2"),
        "{stderr}"
    );

    // A sample file that is gone.
    fs::write(&labels, &original).unwrap();
    fs::remove_file(example.root.join("eval/0003.raw")).unwrap();
    let stderr = failing_build(&example);
    assert!(
        stderr.contains("cannot read sample file") && stderr.contains("0003.raw"),
        "{stderr}"
    );

    // Put back, the same process state (store) builds fine.
    fs::copy(
        Path::new(EXAMPLE).join("eval/0003.raw"),
        example.root.join("eval/0003.raw"),
    )
    .unwrap();
    let ok = example.build_json();
    assert_eq!(ok["evaluations_run"], 2, "{ok}");
}

#[test]
fn a_sample_full_of_nan_warns_once_per_sample_and_once_per_unit() {
    let example = Example::new();
    // 110 592 bytes: 1×3×48×192 float32, every one NaN.
    let path = example.root.join("calib/0002.raw");
    let values = fs::read(&path).unwrap().len() / 4;
    let nan: Vec<u8> = std::iter::repeat_n(f32::NAN.to_le_bytes(), values)
        .flatten()
        .collect();
    fs::write(&path, nan).unwrap();

    let output = example.quant(&["build"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("warning"))
        .collect();
    // The cause, once for the model however many targets calibrate on it.
    let cause = format!(
        "sample on line 3 (calib/0002.raw): input `x` holds {values} NaN and 0 infinite values"
    );
    assert_eq!(
        warnings.iter().filter(|w| w.contains(&cause)).count(),
        1,
        "{stderr}"
    );
    // Its reach: one line instead of one per activation (and per target: both targets'
    // statistics are the same, so one line names them both).
    let reach: Vec<&&str> = warnings
        .iter()
        .filter(|w| w.contains("activations saw NaN/infinite values"))
        .collect();
    assert_eq!(reach.len(), 1, "{stderr}");
    assert!(
        reach[0].contains(&format!("cls ({}): ", QUANTIZED.join(", "))),
        "{stderr}"
    );
    assert!(reach[0].contains("`x` (27648)"), "{stderr}");
    assert_eq!(warnings.len(), 2, "{stderr}");

    // A warm store tells the same story: the merged statistics carry the sample's warning.
    fs::remove_dir_all(example.root.join("quant-out")).unwrap();
    let again = example.quant(&["build"]);
    let stderr_again = String::from_utf8_lossy(&again.stderr);
    assert_eq!(stderr_again.matches(&cause).count(), 1, "{stderr_again}");
}

/// A target with `algorithms = ["cle"]` writes the equalized model its encodings refer to, and
/// says what CLE did in `report.json`; its QDQ model is of the equalized model; turning CLE off
/// removes the file, as a clean build would not have it.
#[test]
fn cle_writes_the_equalized_model_and_its_report() {
    let example = Example::new();
    let manifest = example.root.join("quant.toml");
    let text = fs::read_to_string(&manifest).unwrap();
    let with_cle = text.replace(
        "use_per_channel_quantization = true\n",
        "use_per_channel_quantization = true\nalgorithms = [\"cle\"]\n",
    );
    assert_ne!(with_cle, text);
    fs::write(&manifest, &with_cle).unwrap();
    let summary = example.build_json();
    // Both quantized targets share one equalized model.
    assert_eq!(summary["transforms_run"], 1, "{summary}");

    let equalized = OnnxModel::read(&example.out("htp", "model.cle.onnx")).unwrap();
    let original = OnnxModel::read(&example.root.join("models/cls.onnx")).unwrap();
    assert_ne!(equalized.to_bytes(), original.to_bytes());
    for target in QUANTIZED {
        let report = example.report(target);
        let lines = report["transforms"]["report"].as_array().unwrap();
        assert_eq!(report["transforms"]["algorithms"], "cle");
        assert!(
            lines
                .iter()
                .any(|l| l.as_str().unwrap().starts_with("equalized ")),
            "{target}: {lines:?}"
        );
        let encodings = fs::read(example.out(target, "encodings.json")).unwrap();
        check_qdq_model(&example.out(target, "model.qdq.onnx"), &encodings);
    }
    // The gpu target runs the float model as given: no transform.
    assert!(!example.out("gpu", "model.cle.onnx").exists());

    fs::write(&manifest, &text).unwrap();
    example.build_json();
    assert!(!example.out("htp", "model.cle.onnx").exists());
    assert!(example.report("htp").get("transforms").is_none());
}
