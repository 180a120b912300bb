//! Models that cannot run, and graphs that cannot be built: each is a diagnostic naming the model
//! (and the op), the other units of the same `quant build` still build and are reported, and the
//! exit code says one failed.

mod common;

use quant::onnx::{DType, GraphContents, NodeContents, OnnxModel, TensorContents, TensorValues};
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn node(op: &str, inputs: &[&str], output: &str) -> NodeContents {
    NodeContents {
        name: format!("{op}_{output}"),
        op_type: op.into(),
        domain: String::new(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: vec![output.into()],
        attributes: Vec::new(),
    }
}

/// `x [1, 4]` → MatMul by a 4×3 weight → `middle` → `nodes` … → `y`.
fn model(dir: &Path, file: &str, tail: Vec<NodeContents>) {
    let mut values = common::Values(7);
    let contents = GraphContents {
        ir_version: Some(8),
        opset: Some(13),
        inputs: vec![common::info("x", Some(&[1, 4]))],
        outputs: vec![common::info("y", None)],
        value_info: Vec::new(),
        initializers: vec![TensorContents {
            name: "w".into(),
            dtype: Some(DType::Float32),
            dims: vec![4, 3],
            values: TensorValues::Float(values.take(12)),
        }],
        nodes: [vec![node("MatMul", &["x", "w"], "middle")], tail].concat(),
    };
    OnnxModel::from_contents(&contents, Path::new(file))
        .write(&dir.join(file))
        .unwrap();
}

/// A project with model `good` and the model `bad` written by `bad_tail`, one target over both.
fn project(dir: &Path, bad_tail: Vec<NodeContents>) {
    fs::create_dir_all(dir.join("models")).unwrap();
    fs::create_dir_all(dir.join("calib")).unwrap();
    model(
        dir,
        "models/good.onnx",
        vec![node("Relu", &["middle"], "y")],
    );
    model(dir, "models/bad.onnx", bad_tail);
    let mut values = common::Values(3);
    let mut list = String::new();
    for i in 0..3 {
        let bytes: Vec<u8> = values
            .take(4)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        fs::write(dir.join(format!("calib/{i}.raw")), bytes).unwrap();
        list.push_str(&format!("{i}.raw\n"));
    }
    fs::write(dir.join("calib/input_list.txt"), list).unwrap();
    fs::write(
        dir.join("quant.toml"),
        r#"[pipeline]
name = "two"

[models.good]
path = "models/good.onnx"

[models.bad]
path = "models/bad.onnx"

[calibration.c]
input_list = "calib/input_list.txt"

[targets.htp]
backend = "htp"
calibration = "c"
"#,
    )
    .unwrap();
}

fn quant(dir: &Path, args: &[&str]) -> Output {
    Command::new(common::quant_bin())
        .args(args)
        .env("QUANT_CACHE_DIR", dir.join("store"))
        .env("NO_COLOR", "1")
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Builds the project; asserts the bad model failed with a diagnostic holding every one of
/// `says`, that the good one was built all the same, and that `--json` reports both.
fn build_fails_only_the_bad_model(bad_tail: Vec<NodeContents>, says: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    project(dir, bad_tail);
    let out = quant(dir, &["build", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("models/bad.onnx"),
        "names the model:\n{stderr}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let target = |model: &str| {
        json["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["model"] == model)
            .cloned()
            .unwrap_or_default()
    };
    let status = |model: &str| target(model)["status"].as_str().map(str::to_string);
    // The terminal form wraps lines; the JSON report holds the same message unwrapped.
    let error = target("bad")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("models/bad.onnx"), "{error}");
    for s in says {
        assert!(error.contains(s), "says `{s}`:\n{error}");
    }
    assert_eq!(status("bad").as_deref(), Some("error"), "{json}");
    assert_eq!(status("good").as_deref(), Some("ok"), "{json}");
    assert_eq!(json["errors"], 1, "{json}");
    assert!(dir.join("quant-out/htp/good/encodings.json").is_file());
    assert!(!dir.join("quant-out/htp/bad/encodings.json").exists());
}

#[test]
fn an_unknown_op_fails_its_model_only() {
    build_fails_only_the_bad_model(vec![node("NoSuchOp", &["middle"], "y")], &["NoSuchOp"]);
}

#[test]
fn a_shape_tract_rejects_fails_its_model_only() {
    // [1, 3] × [4, 3]: the inner dims disagree.
    build_fails_only_the_bad_model(
        vec![node("MatMul", &["middle", "w"], "y")],
        &["MatMul_y", "Inconsistent matmul"],
    );
}

#[test]
fn a_cycle_is_a_diagnostic_naming_its_nodes() {
    build_fails_only_the_bad_model(
        vec![node("Relu", &["y"], "a"), node("Relu", &["a"], "y")],
        &["cycle", "`Relu_a` (Relu)", "`Relu_y` (Relu)"],
    );
}

#[test]
fn a_dangling_input_is_a_diagnostic_naming_it() {
    build_fails_only_the_bad_model(
        vec![node("Relu", &["nobody"], "y")],
        &["`Relu_y` (Relu) reads `nobody`"],
    );
}

#[test]
fn a_dangling_graph_output_is_a_diagnostic_naming_it() {
    build_fails_only_the_bad_model(
        vec![node("Relu", &["middle"], "z")],
        &["graph output `y` is defined by no"],
    );
}

#[test]
fn a_duplicate_tensor_name_is_a_diagnostic_naming_it() {
    build_fails_only_the_bad_model(
        vec![
            node("Relu", &["middle"], "y"),
            node("Sigmoid", &["middle"], "y"),
        ],
        &["tensor `y` is defined more than once"],
    );
}

/// tract 0.23 indexes a map by each graph output's name and panics on one nothing defines: the
/// graph builder reports that model first, but the runner must survive it on its own too (a
/// panic inside tract is the model's load error, not the end of the build).
#[test]
fn a_panic_inside_tract_is_the_models_error() {
    let tmp = tempfile::tempdir().unwrap();
    model(
        tmp.path(),
        "dangling.onnx",
        vec![node("Relu", &["middle"], "z")],
    );
    let bytes = fs::read(tmp.path().join("dangling.onnx")).unwrap();
    let err = quant::run::FloatRunner::new(&bytes, &[]).unwrap_err();
    assert!(matches!(err, quant::run::RunError::Load(_)), "{err:?}");
    assert!(err.to_string().contains("tract panicked"), "{err}");
}
