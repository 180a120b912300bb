//! `quant quantize` end to end: usage errors (exit 2), data errors naming the file and line
//! (exit 1), deterministic output whatever the thread count, and both encodings formats.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch folder holding a calibration list of the first `samples` cls samples (absolute
/// paths) as `list.txt`; the command runs inside it so messages show short relative names.
struct Scratch {
    dir: tempfile::TempDir,
    fixtures: common::Fixtures,
}

impl Scratch {
    fn new(samples: usize) -> Option<Scratch> {
        let fixtures = common::fixtures()?;
        let dir = tempfile::tempdir().unwrap();
        let calib = fixtures.join("cls/calib");
        let list: String = std::fs::read_to_string(fixtures.join("cls/calib/input_list.txt"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(samples)
            .map(|l| format!("{}\n", calib.join(l.trim()).display()))
            .collect();
        std::fs::write(dir.path().join("list.txt"), list).unwrap();
        Some(Scratch { dir, fixtures })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn model(&self) -> String {
        self.fixtures
            .join("models/cls.prep.onnx")
            .display()
            .to_string()
    }

    /// Runs `quant quantize` on cls.prep with `list.txt`, writing `out`, plus `extra`.
    fn quantize(&self, out: &str, extra: &[&str]) -> (i32, String, String) {
        let model = self.model();
        let mut args = vec![
            "quantize",
            "--input_network",
            &model,
            "--input_list",
            "list.txt",
            "--output_encodings",
            out,
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let output = Command::new(common::quant_bin())
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let fixtures = self.fixtures.dir().display().to_string();
        let clean = |bytes: &[u8]| {
            String::from_utf8_lossy(bytes)
                .replace(&fixtures, "<fixtures>")
                .replace(&self.dir.path().display().to_string(), "<scratch>")
        };
        (
            output.status.code().unwrap_or(-1),
            clean(&output.stdout),
            clean(&output.stderr),
        )
    }
}

#[test]
fn usage_errors_exit_2_with_a_message_naming_the_argument() {
    let Some(scratch) = Scratch::new(1) else {
        return;
    };
    let cases: [&[&str]; 6] = [
        &[
            "--act_quantizer",
            "tf",
            "--act_quantizer_calibration",
            "min-max",
        ],
        &["--act_bw", "8", "--act_bitwidth", "8"],
        &["--act_bitwidth", "33"],
        &["--percentile_calibration_value", "80"],
        &["--param_quantizer_schema", "lopsided"],
        &["-j", "0"],
    ];
    let mut transcript = Vec::new();
    for extra in cases {
        let (code, stdout, stderr) = scratch.quantize("out.json", extra);
        assert_eq!(code, 2, "{extra:?}: exit code; stderr: {stderr}");
        assert!(stdout.is_empty(), "{extra:?}: stdout {stdout}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("error: "), "{extra:?}: {stderr}");
        // The message names the offending option (clap appends its usage footer below it).
        let option = extra.iter().rfind(|a| a.starts_with('-')).unwrap();
        assert!(first.contains(option), "{extra:?}: {first}");
        assert!(
            !scratch.path("out.json").exists(),
            "{extra:?}: wrote output"
        );
        transcript.push(format!("{}\n  {first}", extra.join(" ")));
    }
    insta::assert_snapshot!(transcript.join("\n"));
}

/// `--input_dim` naming an input the model does not have is a usage error.
#[test]
fn input_dim_naming_an_unknown_input_is_a_usage_error() {
    let Some(scratch) = Scratch::new(1) else {
        return;
    };
    let (code, _, stderr) = scratch.quantize("out.json", &["--input_dim", "y", "1,3,48,192"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("`y`") && stderr.contains("inputs: x"),
        "{stderr}"
    );
}

/// A quantsim config that cannot be used is a usage error naming the file and line, with the
/// nearest op type suggested; nothing is written. A built-in name is accepted.
#[test]
fn a_bad_quantsim_config_is_a_usage_error_naming_its_line() {
    let Some(scratch) = Scratch::new(1) else {
        return;
    };
    std::fs::write(
        scratch.path("config.json"),
        "{\n  \"defaults\": {\"ops\": {}, \"params\": {}},\n  \"op_type\": {\"Sigmoidd\": {}}\n}\n",
    )
    .unwrap();
    let (code, stdout, stderr) =
        scratch.quantize("out.json", &["--quantsim_config", "config.json"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("`Sigmoidd` is not an ONNX op type")
            && stderr.contains("config.json:3")
            && stderr.contains("did you mean `Sigmoid`?"),
        "{stderr}"
    );
    assert!(!scratch.path("out.json").exists());
    let (code, _, stderr) = scratch.quantize("out.json", &["--quantsim_config", "missing.json"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("cannot read the quantsim config"),
        "{stderr}"
    );
    let (code, _, stderr) = scratch.quantize("out.json", &["--quantsim_config", "aimet-default"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(scratch.path("out.json").exists());
}

/// Each data error exits 1 with a diagnostic naming the file (and line and column where there
/// is one) and writes nothing.
#[test]
fn data_errors_exit_1_naming_the_file() {
    let Some(scratch) = Scratch::new(1) else {
        return;
    };
    std::fs::write(
        scratch.path("malformed.json"),
        "{\"activation_encodings\": {\"x\": [{\"bitwidth\": 8, \"min\": -1, \"max\": 1}]},\n \
         \"param_encodings\": {,}\n}\n",
    )
    .unwrap();
    std::fs::write(
        scratch.path("unknown.json"),
        "{\"activation_encodings\": {\"relu_0.tmp\": [{\"bitwidth\": 8, \"min\": -1, \"max\": \
         1}]},\n \"param_encodings\": {}\n}\n",
    )
    .unwrap();
    let model = scratch.model();
    let cases: [(&str, Vec<&str>, &str); 4] = [
        (
            "missing model",
            vec![
                "quantize",
                "--input_network",
                "missing.onnx",
                "--input_list",
                "list.txt",
                "--output_encodings",
                "out.json",
            ],
            "missing.onnx",
        ),
        (
            "missing list",
            vec![
                "quantize",
                "--input_network",
                &model,
                "--input_list",
                "missing.txt",
                "--output_encodings",
                "out.json",
            ],
            "missing.txt",
        ),
        (
            "malformed overrides",
            vec![
                "quantize",
                "--input_network",
                &model,
                "--input_list",
                "list.txt",
                "--output_encodings",
                "out.json",
                "--quantization_overrides",
                "malformed.json",
            ],
            "malformed.json:2:22",
        ),
        (
            "unknown tensor in overrides",
            vec![
                "quantize",
                "--input_network",
                &model,
                "--input_list",
                "list.txt",
                "--output_encodings",
                "out.json",
                "--quantization_overrides",
                "unknown.json",
            ],
            "unknown.json:1:27",
        ),
    ];
    let mut transcript = Vec::new();
    for (what, args, names) in cases {
        let (code, stdout, stderr) = scratch.run(&args);
        assert_eq!(code, 1, "{what}: {stderr}");
        assert!(stdout.is_empty(), "{what}: {stdout}");
        assert!(
            stderr.contains(names),
            "{what}: should name {names}: {stderr}"
        );
        assert!(!scratch.path("out.json").exists(), "{what}: wrote output");
        transcript.push(format!("== {what}\n{}", stderr.trim_end()));
    }
    insta::assert_snapshot!(transcript.join("\n"));
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Equal inputs give equal bytes: twice in a row, and on 1 or 2 threads (sqnr, whose
/// histograms merge across samples, as well as min-max).
#[test]
fn output_is_deterministic_across_runs_and_thread_counts() {
    let Some(scratch) = Scratch::new(32) else {
        return;
    };
    for (out, extra) in [
        ("a.json", &["-j", "2"][..]),
        ("b.json", &["-j", "2"]),
        ("c.json", &["-j", "1"]),
        (
            "d.json",
            &["-j", "1", "--act_quantizer_calibration", "sqnr"],
        ),
        (
            "e.json",
            &["-j", "2", "--act_quantizer_calibration", "sqnr"],
        ),
    ] {
        let (code, _, stderr) = scratch.quantize(out, extra);
        assert_eq!(code, 0, "{extra:?}: {stderr}");
    }
    let a = read(&scratch.path("a.json"));
    assert_eq!(a, read(&scratch.path("b.json")), "same inputs twice");
    assert_eq!(a, read(&scratch.path("c.json")), "-j 1 vs -j 2");
    let d = read(&scratch.path("d.json"));
    assert_eq!(d, read(&scratch.path("e.json")), "sqnr: -j 1 vs -j 2");
    assert_ne!(a, d, "sqnr and min-max encodings should differ");
}

/// `--encoding_version 1.0.0` writes AIMET's 1.0.0 layout with the same numbers as 0.6.1.
#[test]
fn encoding_version_1_0_0_has_the_same_encodings_as_0_6_1() {
    let Some(scratch) = Scratch::new(2) else {
        return;
    };
    let (code, _, stderr) = scratch.quantize("v061.json", &[]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = scratch.quantize("v100.json", &["--encoding_version", "1.0.0"]);
    assert_eq!(code, 0, "{stderr}");
    let parse = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&read(&scratch.path(name))).unwrap()
    };
    let (old, new) = (parse("v061.json"), parse("v100.json"));
    assert_eq!(old["version"], "0.6.1");
    assert_eq!(new["version"], "1.0.0");
    let old_activations = old["activation_encodings"].as_object().unwrap();
    let new_activations = new["activation_encodings"].as_array().unwrap();
    assert_eq!(old_activations.len(), new_activations.len());
    assert!(!new_activations.is_empty());
    for entry in new_activations {
        let name = entry["name"].as_str().unwrap();
        let before = &old_activations[name][0];
        assert_eq!(entry["enc_type"], "PER_TENSOR", "{name}");
        assert_eq!(entry["dtype"], "INT", "{name}");
        assert_eq!(entry["bw"], before["bitwidth"], "{name}");
        assert_eq!(entry["scale"][0], before["scale"], "{name}");
        assert_eq!(entry["offset"][0], before["offset"], "{name}");
    }
    let old_params = old["param_encodings"].as_object().unwrap();
    let new_params = new["param_encodings"].as_array().unwrap();
    assert_eq!(old_params.len(), new_params.len());
}

/// `--algorithms cle` equalizes the model before calibrating, writes the equalized model beside
/// the encodings and reports what it did; an unknown algorithm is a usage error.
#[test]
fn algorithms_cle_writes_the_equalized_model_and_reports_it() {
    let Some(scratch) = Scratch::new(4) else {
        return;
    };
    let (code, _, stderr) = scratch.quantize("plain.json", &[]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = scratch.quantize(
        "cle.json",
        &["--algorithms", "cle", "--output_model", "cle.qdq.onnx"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("Transform"), "{stderr}");
    assert!(stderr.contains("equalized"), "{stderr}");
    let equalized = scratch.path("cls.prep.cle.onnx");
    assert!(stderr.contains("cls.prep.cle.onnx"), "{stderr}");
    assert_ne!(
        read(&equalized),
        read(Path::new(&scratch.model())),
        "the equalized model is the original"
    );
    // The encodings are of the equalized model: its weights, so other values.
    assert_ne!(
        read(&scratch.path("cle.json")),
        read(&scratch.path("plain.json"))
    );
    assert!(scratch.path("cle.qdq.onnx").exists());

    let (code, stdout, stderr) = scratch.quantize("bad.json", &["--algorithms", "seq_mse"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("--algorithms"), "{stderr}");
    assert!(
        stderr.contains("cle or bias_correction or adaround"),
        "{stderr}"
    );
    assert!(!scratch.path("bad.json").exists());
}

/// An override naming a tensor that CLE folds away (a Conv's output before its BatchNorm) is
/// told why the tensor is gone, not that it never existed; without CLE it applies.
#[test]
fn an_override_of_a_folded_away_tensor_says_cle_removed_it() {
    let Some(scratch) = Scratch::new(2) else {
        return;
    };
    std::fs::write(
        scratch.path("overrides.json"),
        r#"{"activation_encodings": {"conv2d_53.tmp_0": [{"bitwidth": 8, "dtype": "int",
            "is_symmetric": "False", "min": -4.0, "max": 4.0}]}, "param_encodings": {}}"#,
    )
    .unwrap();
    let model = scratch
        .fixtures
        .join("models/cls.onnx")
        .display()
        .to_string();
    let args = |extra: &[&'static str]| {
        let mut args = vec![
            "quantize",
            "--input_network",
            model.as_str(),
            "--input_list",
            "list.txt",
            "--output_encodings",
            "out.json",
            "--input_dim",
            "x",
            "1,3,48,192",
            "--quantization_overrides",
            "overrides.json",
        ];
        args.extend_from_slice(extra);
        args
    };
    let (code, _, stderr) = scratch.run(&args(&[]));
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = scratch.run(&args(&["--algorithms", "cle"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("removed_by_transform"), "{stderr}");
    assert!(stderr.contains("conv2d_53.tmp_0"), "{stderr}");
    assert!(stderr.contains("folded it away"), "{stderr}");
}

/// `--pack_4_bit_weights` is accepted: with 4-bit weights the QDQ model stores them as packed
/// ONNX INT4 (half a byte each); with 8-bit weights it warns that it changes nothing.
#[test]
fn pack_4_bit_weights_stores_int4_and_warns_when_weights_are_wider() {
    let Some(scratch) = Scratch::new(2) else {
        return;
    };
    let (code, _, stderr) = scratch.quantize(
        "w4.json",
        &[
            "--weights_bitwidth",
            "4",
            "--use_per_channel_quantization",
            "--pack_4_bit_weights",
            "--output_model",
            "w4.qdq.onnx",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("pack_4_bit_weights"), "{stderr}");
    let model = quant::onnx::OnnxModel::read(&scratch.path("w4.qdq.onnx")).unwrap();
    let graph = model.proto().graph.as_ref().unwrap();
    let conv_weight = graph
        .node
        .iter()
        .find(|n| n.op_type.as_deref() == Some("Conv"))
        .map(|n| n.input[1].clone())
        .unwrap();
    let dequantize = graph
        .node
        .iter()
        .find(|n| n.output[0] == conv_weight)
        .unwrap();
    assert_eq!(dequantize.op_type.as_deref(), Some("DequantizeLinear"));
    // cls.prep is opset 11: only onnxruntime's DequantizeLinear reads INT4 there.
    assert_eq!(dequantize.domain.as_deref(), Some("com.microsoft"));
    let stored = graph
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(dequantize.input[0].as_str()))
        .unwrap();
    assert_eq!(stored.data_type, Some(22), "INT4");
    let elements: i64 = stored.dims.iter().product();
    assert_eq!(
        stored.raw_data.as_ref().unwrap().len() as i64,
        (elements + 1) / 2
    );

    let (code, _, stderr) = scratch.quantize("w8.json", &["--pack_4_bit_weights"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("--pack_4_bit_weights has no effect: weights are 8-bit"),
        "{stderr}"
    );
}
