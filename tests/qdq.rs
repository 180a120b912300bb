//! `quant quantize --output_model`: the QDQ ONNX model's structure (checked here, in Rust) and
//! its behaviour in onnxruntime (checked by `tests/python/check_qdq.py`, skipped with a printed
//! reason when no Python with onnxruntime is available, failed under `QUANT_REQUIRE_FIXTURES`).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use quant::onnx::{DType, GraphContents, OnnxModel, TensorValues};
use serde_json::Value;

const DIGEST_KEY: &str = "quant.encodings_digest";

/// Runs `quant quantize` and returns (encodings path, QDQ model path).
fn quantize(
    dir: &Path,
    model: &Path,
    list: &Path,
    stem: &str,
    extra: &[&str],
) -> (PathBuf, PathBuf) {
    let encodings = dir.join(format!("{stem}.json"));
    let qdq = dir.join(format!("{stem}.qdq.onnx"));
    let out = Command::new(common::quant_bin())
        .arg("quantize")
        .arg("--input_network")
        .arg(model)
        .arg("--input_list")
        .arg(list)
        .arg("--output_encodings")
        .arg(&encodings)
        .arg("--output_model")
        .arg(&qdq)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "quant quantize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (encodings, qdq)
}

/// `check_qdq.py`'s JSON.
fn onnxruntime_check(
    python: &Path,
    qdq: &Path,
    list: &Path,
    float: &Path,
    input_dim: Option<&str>,
) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_qdq.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(qdq).arg(list).arg("--float").arg(float);
    if let Some(dims) = input_dim {
        cmd.args(["--input_dim", "x", dims]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "check_qdq.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn first_entry(entries: &Value) -> &Value {
    &entries.as_array().expect("encoding entries are a list")[0]
}

/// The zero point and stored type an AIMET 0.6.1 entry must become.
fn expected_zero_point(entry: &Value) -> (i64, DType) {
    let bitwidth = entry["bitwidth"].as_u64().unwrap();
    let offset = entry["offset"].as_f64().unwrap() as i64;
    let symmetric = entry["is_symmetric"] == "True";
    match (bitwidth, symmetric) {
        (32, true) => (0, DType::Int32),
        (16, true) => (0, DType::Int16),
        (16, false) => (-offset, DType::Uint16),
        (8, true) => (0, DType::Int8),
        (8, false) => (-offset, DType::Uint8),
        other => panic!("unexpected encoding in this test: {other:?}"),
    }
}

fn int_values(graph: &GraphContents, name: &str) -> (DType, Vec<i64>) {
    let tensor = graph
        .initializers
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no initializer `{name}`"));
    match &tensor.values {
        TensorValues::Int(v) => (tensor.dtype.unwrap(), v.clone()),
        other => panic!("`{name}` is not integer: {other:?}"),
    }
}

/// What the structural check saw, for the tests' own extra assertions.
struct Structure {
    qdq_model: GraphContents,
    activation_pairs: usize,
    stored_parameters: usize,
    kept_float: usize,
}

/// Every encoded activation has exactly one Q→DQ pair right after it and no other reader of the
/// float tensor; every encoded parameter is an integer initializer behind a DequantizeLinear
/// with the expected zero point; output names are unchanged; the digest is recorded.
fn check_structure(float: &Path, qdq: &Path, encodings: &Path) -> Structure {
    let float_model = OnnxModel::read(float).unwrap().contents().unwrap();
    let model = OnnxModel::read(qdq).unwrap();
    let graph = model.contents().unwrap();
    let json = read_json(encodings);

    let digest = blake3::hash(&std::fs::read(encodings).unwrap())
        .to_hex()
        .to_string();
    assert_eq!(model.metadata_value(DIGEST_KEY), Some(digest.as_str()));

    let names = |v: &[quant::onnx::ValueInfo]| v.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&graph.outputs), names(&float_model.outputs));
    assert_eq!(names(&graph.inputs), names(&float_model.inputs));

    let stored: HashSet<&str> = float_model
        .initializers
        .iter()
        .map(|t| t.name.as_str())
        .chain(
            float_model
                .nodes
                .iter()
                .filter(|n| n.op_type == "Constant")
                .map(|n| n.outputs[0].as_str()),
        )
        .collect();
    let outputs: HashSet<String> = names(&float_model.outputs).into_iter().collect();
    let producer: HashMap<&str, usize> = graph
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.outputs.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let readers = |name: &str| -> Vec<usize> {
        graph
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.inputs.iter().any(|i| i == name))
            .map(|(i, _)| i)
            .collect()
    };

    let mut activation_pairs = 0;
    let mut stored_parameters = 0;
    let mut kept_float = 0;
    let sections = [
        json["activation_encodings"].as_object().unwrap(),
        json["param_encodings"].as_object().unwrap(),
    ];
    for (name, entries) in sections.into_iter().flatten() {
        let entry = first_entry(entries);
        if entry["bitwidth"] == 32 && entry["is_symmetric"] == "False" {
            // A bias encoded from its own range stays float (onnxruntime would misread it).
            assert!(
                graph.initializers.iter().any(|t| &t.name == name),
                "`{name}`"
            );
            kept_float += 1;
            continue;
        }
        let (zero_point, dtype) = expected_zero_point(entry);
        if stored.contains(name.as_str()) {
            // A parameter: the float value is gone, a DequantizeLinear writes the name.
            let dq = &graph.nodes[producer[name.as_str()]];
            assert_eq!(dq.op_type, "DequantizeLinear", "`{name}`");
            assert!(graph.initializers.iter().all(|t| &t.name != name));
            let (stored_type, _) = int_values(&graph, &dq.inputs[0]);
            let (zp_type, zp) = int_values(&graph, &dq.inputs[2]);
            assert_eq!((stored_type, zp_type), (dtype, dtype), "`{name}`");
            assert_eq!(zp[0], zero_point, "`{name}`");
            stored_parameters += 1;
            continue;
        }
        // An activation: exactly one QuantizeLinear reads the float tensor.
        let float_name = if outputs.contains(name) {
            format!("{name}_QuantizeLinear_Input")
        } else {
            name.clone()
        };
        let float_readers = readers(&float_name);
        assert_eq!(
            float_readers.len(),
            1,
            "`{name}` is read by {float_readers:?}"
        );
        let q = &graph.nodes[float_readers[0]];
        assert_eq!(q.op_type, "QuantizeLinear", "`{name}`");
        let q_index = float_readers[0];
        if let Some(&p) = producer.get(float_name.as_str()) {
            assert_eq!(p + 1, q_index, "`{name}`: Q/DQ must follow the producer");
        }
        let dq_index = q_index + 1;
        let dq = &graph.nodes[dq_index];
        assert_eq!(dq.op_type, "DequantizeLinear");
        assert_eq!(dq.inputs[0], q.outputs[0]);
        assert_eq!(readers(&q.outputs[0]), [dq_index]);
        let (zp_type, zp) = int_values(&graph, &q.inputs[2]);
        assert_eq!((zp_type, zp[0]), (dtype, zero_point), "`{name}`");
        if outputs.contains(name) {
            assert_eq!(&dq.outputs[0], name);
        }
        activation_pairs += 1;
    }
    let quantize_nodes = graph
        .nodes
        .iter()
        .filter(|n| n.op_type == "QuantizeLinear")
        .count();
    assert_eq!(
        quantize_nodes, activation_pairs,
        "no Q/DQ beyond the encodings"
    );
    Structure {
        qdq_model: graph,
        activation_pairs,
        stored_parameters,
        kept_float,
    }
}

#[test]
fn cls_prep_int32_bias_runs_in_onnxruntime() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let float = fixtures.join("models/cls.prep.onnx");
    let list = fixtures.join("cls/calib/input_list.txt");
    let (encodings, qdq) = quantize(dir.path(), &float, &list, "cls", &["--bias_bitwidth", "32"]);
    let structure = check_structure(&float, &qdq, &encodings);
    assert!(
        structure.activation_pairs > 150,
        "{}",
        structure.activation_pairs
    );
    let int32_biases = structure
        .qdq_model
        .initializers
        .iter()
        .filter(|t| t.dtype == Some(DType::Int32) && t.name.ends_with("_quantized"))
        .count();
    assert!(int32_biases > 30, "{int32_biases} int32 biases");
    // At most the Gemm bias `fc_0.b_0`, which the quantizer encodes from its own range.
    assert!(structure.kept_float <= 1, "{}", structure.kept_float);
    // cls.prep is opset 11: 8-bit per-tensor Q/DQ are standard ONNX ops.
    assert!(
        structure
            .qdq_model
            .nodes
            .iter()
            .all(|n| n.domain.is_empty())
    );

    let Some(python) = common::python() else {
        return;
    };
    let report = onnxruntime_check(&python, &qdq, &list, &float, None);
    assert_eq!(report["checker"], "ok");
    assert_eq!(report["samples"], 32);
    let agreement = report["argmax_agreement"][0].as_u64().unwrap();
    let sqnr = report["sqnr_db"][0].as_f64().unwrap();
    eprintln!("cls.prep W8A8 int32 bias: argmax agreement {agreement}/32, SQNR {sqnr:.2} dB");
    assert!(agreement >= 30, "{agreement}/32");
}

#[test]
fn cls_shipped_constant_weights_become_initializers() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let float = fixtures.join("models/cls.onnx");
    let list = fixtures.join("cls/calib/input_list.txt");
    let (encodings, qdq) = quantize(
        dir.path(),
        &float,
        &list,
        "cls_shipped",
        &["--input_dim", "x", "1,3,48,192"],
    );
    let structure = check_structure(&float, &qdq, &encodings);
    // Every encoded weight lived in a Constant node: those nodes are gone.
    assert!(
        structure.stored_parameters > 100,
        "{}",
        structure.stored_parameters
    );
    let json = read_json(&encodings);
    let params = json["param_encodings"].as_object().unwrap();
    let leftover: Vec<&str> = structure
        .qdq_model
        .nodes
        .iter()
        .filter(|n| n.op_type == "Constant" && params.contains_key(&n.outputs[0]))
        .map(|n| n.outputs[0].as_str())
        .collect();
    assert!(leftover.is_empty(), "{leftover:?}");

    let Some(python) = common::python() else {
        return;
    };
    let report = onnxruntime_check(&python, &qdq, &list, &float, Some("1,3,48,192"));
    assert_eq!(report["checker"], "ok");
    let agreement = report["argmax_agreement"][0].as_u64().unwrap();
    eprintln!(
        "cls.onnx W8A8: argmax agreement {agreement}/32, SQNR {:.2} dB",
        report["sqnr_db"][0].as_f64().unwrap()
    );
    assert!(agreement >= 30, "{agreement}/32");
}

#[test]
fn cls_sixteen_bit_activations_run_in_onnxruntime() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let float = fixtures.join("models/cls.prep.onnx");
    let list = fixtures.join("cls/calib/input_list.txt");
    let (encodings, qdq) = quantize(
        dir.path(),
        &float,
        &list,
        "cls16",
        &["--act_bitwidth", "16"],
    );
    let structure = check_structure(&float, &qdq, &encodings);
    // Opset 11 has no 16-bit QuantizeLinear: the pairs use onnxruntime's contrib operators.
    let quantize_domains: HashSet<&str> = structure
        .qdq_model
        .nodes
        .iter()
        .filter(|n| n.op_type == "QuantizeLinear")
        .map(|n| n.domain.as_str())
        .collect();
    assert_eq!(quantize_domains, HashSet::from(["com.microsoft"]));

    let Some(python) = common::python() else {
        return;
    };
    let report = onnxruntime_check(&python, &qdq, &list, &float, None);
    assert_eq!(report["checker"], "ok");
    let agreement = report["argmax_agreement"][0].as_u64().unwrap();
    let sqnr = report["sqnr_db"][0].as_f64().unwrap();
    eprintln!("cls.prep W8A16: argmax agreement {agreement}/32, SQNR {sqnr:.2} dB");
    assert!(agreement >= 31, "{agreement}/32");
}

#[test]
fn det_prep_output_sqnr_in_onnxruntime() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let float = fixtures.join("models/det.prep.onnx");
    let (encodings, qdq) = quantize(
        dir.path(),
        &float,
        &fixtures.join("det/calib/input_list.txt"),
        "det",
        &[],
    );
    check_structure(&float, &qdq, &encodings);

    let Some(python) = common::python() else {
        return;
    };
    let eval = fixtures.join("det/eval/input_list.txt");
    let report = onnxruntime_check(&python, &qdq, &eval, &float, None);
    assert_eq!(report["checker"], "ok");
    let sqnr = report["sqnr_db"][0].as_f64().unwrap();
    eprintln!("det.prep W8A8: mean output SQNR {sqnr:.2} dB over 8 eval samples");
    assert!(sqnr > 5.0, "{sqnr} dB");
}

#[test]
fn unwritable_output_model_fails_without_leaving_a_file() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/cls.qdq.onnx");
    let out = Command::new(common::quant_bin())
        .arg("quantize")
        .arg("--input_network")
        .arg(fixtures.join("models/cls.prep.onnx"))
        .arg("--input_list")
        .arg(fixtures.join("cls/calib_npy/input_list.txt"))
        .arg("--output_encodings")
        .arg(dir.path().join("cls.json"))
        .arg("--output_model")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot write"), "{stderr}");
    assert!(stderr.contains("cls.qdq.onnx"), "{stderr}");
    assert!(!missing.exists());
}

#[test]
fn cls_per_channel_weights_run_in_onnxruntime() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let float = fixtures.join("models/cls.prep.onnx");
    let list = fixtures.join("cls/calib/input_list.txt");
    let (encodings, qdq) = quantize(
        dir.path(),
        &float,
        &list,
        "cls_pc",
        &["--use_per_channel_quantization", "--bias_bitwidth", "32"],
    );
    let structure = check_structure(&float, &qdq, &encodings);
    // Per-channel DequantizeLinear needs opset 13; cls.prep is opset 11, so these are
    // onnxruntime's contrib operators, each with the channel axis.
    let per_channel: Vec<_> = structure
        .qdq_model
        .nodes
        .iter()
        .filter(|n| n.op_type == "DequantizeLinear")
        .filter(|n| n.attributes.iter().any(|(name, _)| name == "axis"))
        .collect();
    assert!(per_channel.len() > 50, "{}", per_channel.len());
    assert!(per_channel.iter().all(|n| n.domain == "com.microsoft"));

    let Some(python) = common::python() else {
        return;
    };
    let report = onnxruntime_check(&python, &qdq, &list, &float, None);
    assert_eq!(report["checker"], "ok");
    let agreement = report["argmax_agreement"][0].as_u64().unwrap();
    eprintln!(
        "cls.prep W8A8 per-channel: argmax agreement {agreement}/32, SQNR {:.2} dB",
        report["sqnr_db"][0].as_f64().unwrap()
    );
    assert!(agreement >= 30, "{agreement}/32");
}
