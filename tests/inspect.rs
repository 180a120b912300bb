//! The graph IR and `quant inspect` against the reference fixtures: tensor counts, names,
//! producers, consumers, roles and parameter values agree with onnxruntime's float statistics
//! (`reference/float_stats/*.json`) on every model form; the inspect table and JSON are snapshots.

mod common;

use quant::graph::{Graph, ParameterSource, Role, TensorKind};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// (model file, float_stats file) for every model form that has reference statistics.
const FORMS: [(&str, &str); 5] = [
    ("models/cls.onnx", "reference/float_stats/cls.json"),
    (
        "models/cls.prep.onnx",
        "reference/float_stats/cls.prep.json",
    ),
    ("models/det.onnx", "reference/float_stats/det.json"),
    (
        "models/det.prep.onnx",
        "reference/float_stats/det.prep.json",
    ),
    (
        "reference/tiny/tiny.onnx",
        "reference/tiny/tiny.float_stats.json",
    ),
];

fn load(fixtures: &common::Fixtures, model: &str, stats: &str) -> (Graph, Value) {
    let graph = Graph::read(&fixtures.join(model)).unwrap();
    let stats = std::fs::read_to_string(fixtures.join(stats)).unwrap();
    (graph, serde_json::from_str(&stats).unwrap())
}

#[test]
fn float_tensor_counts_and_names_match_float_stats() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let mut measured = Vec::new();
    for (model, stats_file) in FORMS {
        let (graph, stats) = load(&fixtures, model, stats_file);
        let counts = graph.counts();
        let expected = &stats["counts"];
        assert_eq!(
            counts.float_activations as u64,
            expected["activations"].as_u64().unwrap(),
            "{model}"
        );
        assert_eq!(
            counts.float_parameters as u64,
            expected["parameters"].as_u64().unwrap(),
            "{model}"
        );

        let ours: BTreeSet<&str> = graph.float_activations().map(|t| t.name.as_str()).collect();
        let theirs: BTreeSet<&str> = stats["activations"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(ours, theirs, "{model}: float activation names");
        let ours: BTreeSet<&str> = graph.float_parameters().map(|t| t.name.as_str()).collect();
        let theirs: BTreeSet<&str> = stats["parameters"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(ours, theirs, "{model}: float parameter names");
        measured.push(format!(
            "{model}: {}/{}",
            counts.float_activations, counts.float_parameters
        ));
    }
    assert_eq!(
        measured,
        [
            "models/cls.onnx: 253/285",
            "models/cls.prep.onnx: 180/111",
            "models/det.onnx: 331/342",
            "models/det.prep.onnx: 329/240",
            "reference/tiny/tiny.onnx: 10/6",
        ]
    );
}

#[test]
fn producers_consumers_and_roles_match_float_stats() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    for (model, stats_file) in FORMS {
        let (graph, stats) = load(&fixtures, model, stats_file);
        for (name, entry) in stats["activations"].as_object().unwrap() {
            let tensor = graph.tensor(name).unwrap();
            let (op, node) = match &tensor.producer {
                None => ("graph_input", None),
                Some(p) => (p.op_type.as_str(), Some(p.node_name.as_str())),
            };
            assert_eq!(op, entry["producer_op"], "{model}: {name}");
            assert_eq!(node, entry["producer_node"].as_str(), "{model}: {name}");
        }
        let mut weights = 0;
        for (name, entry) in stats["parameters"].as_object().unwrap() {
            let tensor = graph.tensor(name).unwrap();
            let source = match tensor.kind {
                TensorKind::Parameter(ParameterSource::Initializer) => "initializer",
                TensorKind::Parameter(ParameterSource::ConstantNode) => "Constant",
                TensorKind::Activation => panic!("{model}: {name} is a parameter"),
            };
            assert_eq!(source, entry["source"], "{model}: {name}");
            let ours: Vec<(String, String, u64)> = tensor
                .consumers
                .iter()
                .map(|u| (u.op_type.clone(), u.node_name.clone(), u.input_index as u64))
                .collect();
            let theirs: Vec<(String, String, u64)> = entry["consumers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    let text = |k: &str| c[k].as_str().unwrap().to_owned();
                    (
                        text("op_type"),
                        text("node"),
                        c["input_index"].as_u64().unwrap(),
                    )
                })
                .collect();
            assert_eq!(ours, theirs, "{model}: consumers of {name}");

            // float_stats gives per-channel statistics exactly for Conv/ConvTranspose weights, and
            // the output-channel axis for Gemm/MatMul weights.
            let reference_axis = entry["per_channel"]["axis"]
                .as_u64()
                .or_else(|| entry["output_channel_axis"].as_u64());
            match (tensor.role, reference_axis) {
                (
                    Role::Weight {
                        output_channel_axis,
                    },
                    Some(axis),
                ) => {
                    assert_eq!(output_channel_axis as u64, axis, "{model}: {name}");
                    weights += 1;
                }
                (role, None) => assert!(!role.is_weight(), "{model}: {name} is {role}"),
                (role, Some(_)) => panic!("{model}: {name} has a channel axis but is {role}"),
            }
            let first = &theirs[0];
            let expected_role = match (first.0.as_str(), first.2) {
                ("Conv" | "ConvTranspose" | "Gemm", 2) => Some(Role::Bias),
                ("BatchNormalization", 1) => Some(Role::BatchNormScale),
                ("BatchNormalization", 3) => Some(Role::BatchNormMean),
                _ => None,
            };
            if let Some(role) = expected_role {
                assert_eq!(tensor.role, role, "{model}: {name}");
            }
        }
        assert!(weights > 0, "{model}: no weights checked");
    }
}

fn as_f32(v: &Value) -> f32 {
    v.as_f64().unwrap() as f32
}

#[test]
fn parameter_values_give_the_reference_min_max_exactly() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    for (model, stats_file) in FORMS {
        let (graph, stats) = load(&fixtures, model, stats_file);
        for (name, entry) in stats["parameters"].as_object().unwrap() {
            let data = graph.parameter(name).unwrap();
            let values = data.as_f32().unwrap();
            let shape: Vec<u64> = entry["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            assert_eq!(
                data.shape.iter().map(|&d| d as u64).collect::<Vec<_>>(),
                shape,
                "{model}: {name}"
            );
            if entry["min"].is_null() {
                // Empty tensors (det's Resize roi) have no range.
                assert!(values.is_empty(), "{model}: {name}");
                continue;
            }
            let min = values.iter().copied().fold(f32::INFINITY, f32::min);
            let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(min, as_f32(&entry["min"]), "{model}: min of {name}");
            assert_eq!(max, as_f32(&entry["max"]), "{model}: max of {name}");

            let Some(per_channel) = entry.get("per_channel") else {
                continue;
            };
            let axis = per_channel["axis"].as_u64().unwrap() as usize;
            let array = data.as_array().unwrap();
            for (c, channel) in array.axis_iter(ndarray::Axis(axis)).enumerate() {
                let min = channel.iter().copied().fold(f32::INFINITY, f32::min);
                let max = channel.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(
                    min,
                    as_f32(&per_channel["min"][c]),
                    "{model}: {name} channel {c}"
                );
                assert_eq!(
                    max,
                    as_f32(&per_channel["max"][c]),
                    "{model}: {name} channel {c}"
                );
            }
        }
    }
}

fn inspect(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(common::quant_bin())
        .arg("inspect")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn inspect_table_on_tiny() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let (code, stdout, stderr) = inspect(&fixtures.join("reference/tiny"), &["tiny.onnx"]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    insta::assert_snapshot!(stdout);
}

#[test]
fn inspect_json_on_tiny() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let (code, stdout, stderr) =
        inspect(&fixtures.join("reference/tiny"), &["tiny.onnx", "--json"]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    let document: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(document["tensors"].as_array().unwrap().len(), 16);
    insta::assert_snapshot!(stdout);
}

#[test]
fn inspect_counts_on_real_models() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let models = fixtures.join("models");
    for (model, summary) in [
        (
            "cls.prep.onnx",
            "180 float activations, 111 float parameters, 1 other tensors; 290 own encodings, 1 shared, 0 float tensors left unquantized",
        ),
        (
            "cls.onnx",
            "253 float activations, 285 float parameters, 29 other tensors; 466 own encodings, 2 shared, 70 float tensors left unquantized",
        ),
    ] {
        let (code, stdout, _) = inspect(&models, &[model]);
        assert_eq!(code, 0, "{model}");
        assert_eq!(stdout.lines().last(), Some(summary), "{model}");
        // One header, one line per tensor, a blank line, the summary.
        let graph = Graph::read(&models.join(model)).unwrap();
        assert_eq!(stdout.lines().count(), graph.tensors().len() + 3, "{model}");
    }
    let (_, stdout, _) = inspect(&models, &["cls.prep.onnx"]);
    let reshape = stdout
        .lines()
        .find(|l| l.starts_with("reshape2_0.tmp_0 "))
        .unwrap();
    assert!(
        reshape.ends_with("shares pool2d_10.tmp_0 (Reshape moves data)"),
        "{reshape}"
    );
}

#[test]
fn inspect_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.onnx"), "plain text, not protobuf\n").unwrap();

    let (code, stdout, stderr) = inspect(dir.path(), &["missing.onnx"]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert!(
        stderr.starts_with("error: cannot read ONNX model missing.onnx: "),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let (code, stdout, stderr) = inspect(dir.path(), &["notes.onnx"]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert!(
        stderr.starts_with("error: notes.onnx is not an ONNX model"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let (code, _, stderr) = inspect(dir.path(), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("<MODEL>"), "{stderr}");
}

#[test]
fn every_tensor_onnxruntime_or_aimet_encodes_gets_an_encoding() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    for model in ["cls", "det"] {
        let graph = Graph::read(&fixtures.join(format!("models/{model}.prep.onnx"))).unwrap();
        let read = |file: String| -> Value {
            serde_json::from_str(&std::fs::read_to_string(fixtures.join(file)).unwrap()).unwrap()
        };
        let ort = read(format!("reference/ort/{model}.minmax_pt_u8.json"));
        let aimet = read(format!("reference/aimet/{model}.tf_w8a8.v061.encodings"));
        let names = ort["tensors"]
            .as_object()
            .unwrap()
            .keys()
            .chain(aimet["activation_encodings"].as_object().unwrap().keys())
            .chain(aimet["param_encodings"].as_object().unwrap().keys());
        let mut checked = 0;
        for name in names {
            let tensor = graph.tensor(name).unwrap();
            assert!(
                tensor.rule.is_encoded(),
                "{model}: {name} is {}",
                tensor.rule
            );
            checked += 1;
        }
        assert!(checked > 400, "{model}: {checked}");
    }
}

#[test]
fn shared_encodings_change_no_range() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let mut shared = 0;
    for (model, stats_file) in FORMS {
        let (graph, stats) = load(&fixtures, model, stats_file);
        for tensor in graph.tensors() {
            if !matches!(tensor.rule, quant::graph::EncodingRule::SharesInput(_)) {
                continue;
            }
            let source = graph.encoding_source(tensor.name.as_str()).unwrap();
            let own = &stats["activations"][tensor.name.as_str()];
            let lent = &stats["activations"][source.as_str()];
            assert_eq!(
                (&own["min"], &own["max"]),
                (&lent["min"], &lent["max"]),
                "{model}: {}",
                tensor.name
            );
            shared += 1;
        }
    }
    // cls: Reshape and the output Identity; cls.prep: Reshape; det forms: 6 nearest Resizes each;
    // tiny: Flatten.
    assert_eq!(shared, 2 + 1 + 6 + 6 + 1);
}
