//! AIMET's quantsim config as input: the config reader (built-ins equal to AIMET's own files,
//! a diagnostic at the line for what it refuses), the placement rules on small graphs, and, on
//! the fixtures, the tensors quant encodes against the key sets of AIMET 2.42's own exports
//! (`reference/aimet/`) for every variant and both file versions.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use common::info;
use quant::encoding::Bitwidth;
use quant::engine::oneshot::{self, OneShot};
use quant::export::aimet::EncodingVersion;
use quant::graph::{EncodingRule, Graph, NotQuantizedReason};
use quant::onnx::{AttributeValue, DType, GraphContents, NodeContents, OnnxModel};
use quant::onnx::{TensorContents, TensorValues};
use quant::placement::{self, QuantsimConfig};
use quant::quantizer::{CalibrationMethod, QuantizerSettings};
use serde_json::Value;

fn render(err: &dyn miette::Diagnostic) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, err)
        .unwrap();
    out
}

fn parse(text: &str) -> Result<QuantsimConfig, Box<quant::placement::QuantsimConfigError>> {
    QuantsimConfig::parse(
        text,
        miette::NamedSource::new("config.json", Arc::new(text.to_string())),
    )
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(e) => render(&*e),
    }
}

const MINIMAL: &str = r#"{
  "defaults": {
    "ops": { "is_output_quantized": "True" },
    "params": { "is_quantized": "True", "is_symmetric": "True" }
  },
  "params": { "bias": { "is_quantized": "False" } },
  "op_type": {},
  "supergroups": [ { "op_list": ["Conv", "Relu"] } ],
  "model_input": { "is_input_quantized": "True" },
  "model_output": {}
}"#;

#[test]
fn a_malformed_config_is_pointed_at() {
    insta::assert_snapshot!(error(
        "{\n  \"defaults\": {\n    \"ops\": { \"is_output_quantized\": True }\n  }\n}\n"
    ));
}

#[test]
fn an_unknown_op_type_gets_a_suggestion() {
    let text = MINIMAL.replace(
        "\"op_type\": {}",
        "\"op_type\": {\n    \"Convv\": { \"is_output_quantized\": \"False\" }\n  }",
    );
    insta::assert_snapshot!(error(&text));
}

#[test]
fn an_unknown_key_and_a_bad_boolean_are_refused_at_their_line() {
    let text = MINIMAL.replace("\"supergroups\"", "\"supergroup\"");
    insta::assert_snapshot!(error(&text));
    let text = MINIMAL.replace("\"is_symmetric\": \"True\"", "\"is_symmetric\": \"yes\"");
    insta::assert_snapshot!(error(&text));
}

#[test]
fn aimets_own_config_files_equal_the_built_ins() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    for (file, builtin) in [
        ("default_config.json", "aimet-default"),
        ("default_config_per_channel.json", "aimet-per-channel"),
    ] {
        let read = QuantsimConfig::read(&fixtures.join(format!("reference/aimet/{file}")))
            .unwrap_or_else(|e| panic!("{file}: {}", render(&*e)));
        let mut expected = QuantsimConfig::builtin(builtin).unwrap();
        // The files list the supergroups in different orders; the order changes no match.
        let mut sorted = read.clone();
        sorted.supergroups.sort();
        expected.supergroups.sort();
        assert_eq!(sorted, expected, "{file} vs {builtin}");
    }
}

// ---------------------------------------------------------------------------------------------
// Placement on small graphs.

fn floats(name: &str, dims: &[u64]) -> TensorContents {
    let n = dims.iter().product::<u64>() as usize;
    TensorContents {
        name: name.into(),
        dtype: Some(DType::Float32),
        dims: dims.to_vec(),
        values: TensorValues::Float((0..n).map(|i| i as f32 * 0.01 - 0.1).collect()),
    }
}

fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeContents {
    NodeContents {
        name: outputs[0].to_string(),
        op_type: op.into(),
        domain: String::new(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
        attributes: Vec::new(),
    }
}

/// x → Conv(w, b) → Relu (supergroup) → depthwise Conv(dw) → Relu (tied) → Reshape → MatMul
/// with an activation second input, and a Concat of two single-consumer branches → MaxPool.
fn small_graph() -> Graph {
    let mut depthwise = node("Conv", &["r1", "dw"], &["d"]);
    depthwise.attributes = vec![("group".into(), AttributeValue::Int(4))];
    let contents = GraphContents {
        ir_version: Some(8),
        opset: Some(13),
        inputs: vec![info("x", Some(&[1, 4, 2, 2]))],
        outputs: vec![info("m", None), info("p", None)],
        value_info: Vec::new(),
        initializers: vec![
            floats("w", &[4, 4, 1, 1]),
            floats("b", &[4]),
            floats("dw", &[4, 1, 1, 1]),
            TensorContents {
                name: "shape".into(),
                dtype: Some(DType::Int64),
                dims: vec![2],
                values: TensorValues::Int(vec![4, 4]),
            },
        ],
        nodes: vec![
            node("Conv", &["x", "w", "b"], &["c"]),
            node("Relu", &["c"], &["r1"]),
            depthwise,
            node("Relu", &["d"], &["r2"]),
            node("Reshape", &["r2", "shape"], &["flat"]),
            node("Sigmoid", &["flat"], &["s"]),
            node("MatMul", &["flat", "s"], &["m"]),
            node("Tanh", &["x"], &["t1"]),
            node("Sigmoid", &["x"], &["t2"]),
            node("Concat", &["t1", "t2"], &["cat"]),
            node("MaxPool", &["cat"], &["p"]),
        ],
    };
    let model = OnnxModel::from_contents(&contents, Path::new("small.onnx"));
    Graph::from_model(&model).unwrap()
}

#[test]
fn the_default_config_places_quantizers_as_aimet_does() {
    let graph = small_graph();
    let placed = placement::place(&graph, &QuantsimConfig::builtin("aimet-default").unwrap());
    let rule = |name: &str| placed.graph.tensor(name).unwrap().rule.clone();
    let off = EncodingRule::NotQuantized;
    let shares = |name: &str| EncodingRule::SharesInput(name.into());
    let expected = [
        ("x", EncodingRule::Own),
        ("w", EncodingRule::Own),
        ("b", off(NotQuantizedReason::ConfigParameter)),
        ("c", off(NotQuantizedReason::Supergroup)),
        ("r1", EncodingRule::Own),
        // Depthwise: no supergroup, and the Relu takes the Conv output's quantizer.
        ("d", EncodingRule::Own),
        ("r2", shares("d")),
        ("flat", off(NotQuantizedReason::DataMovement)),
        ("s", EncodingRule::Own),
        ("m", EncodingRule::Own),
        // Single-consumer Concat inputs take the Concat output's quantizer.
        ("t1", shares("cat")),
        ("t2", shares("cat")),
        ("cat", EncodingRule::Own),
        ("p", off(NotQuantizedReason::GridPreserving)),
    ];
    for (name, want) in expected {
        assert_eq!(rule(name), want, "{name}");
    }
    assert_eq!(
        placed.graph.encoding_source("t1").map(|n| n.as_str()),
        Some("cat")
    );
    // The MatMul's activation second input is symmetric, like a parameter.
    assert_eq!(placed.symmetric, BTreeMap::from([("s".to_string(), true)]));
    // Conv+Relu matched; the default config's other supergroups name ops this graph lacks.
    assert_eq!(placed.warnings.len(), 4, "{:#?}", placed.warnings);
}

#[test]
fn a_supergroup_naming_an_op_the_model_lacks_is_a_warning() {
    let text = MINIMAL.replace(
        "[ { \"op_list\": [\"Conv\", \"Relu\"] } ]",
        "[ { \"op_list\": [\"Conv\", \"Relu\"] }, { \"op_list\": [\"Conv\", \"LeakyRelu\"] } ]",
    );
    let config = parse(&text).unwrap();
    let placed = placement::place(&small_graph(), &config);
    insta::assert_snapshot!(placed.warnings.join("\n"));
    // The other supergroup still applies.
    assert_eq!(
        placed.graph.tensor("c").unwrap().rule,
        EncodingRule::NotQuantized(NotQuantizedReason::Supergroup)
    );
}

#[test]
fn op_type_settings_turn_outputs_on_and_off() {
    let text = MINIMAL.replace(
        "\"op_type\": {}",
        "\"op_type\": { \"MaxPool\": { \"is_output_quantized\": \"True\" }, \"Tanh\": { \"is_output_quantized\": \"False\" }, \"Sigmoid\": { \"is_symmetric\": \"True\" } }",
    );
    let placed = placement::place(&small_graph(), &parse(&text).unwrap());
    let rule = |name: &str| placed.graph.tensor(name).unwrap().rule.clone();
    assert_eq!(rule("p"), EncodingRule::Own);
    assert_eq!(
        rule("t1"),
        EncodingRule::NotQuantized(NotQuantizedReason::ConfigDisabled)
    );
    assert_eq!(placed.symmetric.get("s"), Some(&true));
    assert_eq!(
        placed.symmetric.get("t2"),
        None,
        "t2 shares the Concat's quantizer"
    );
}

// ---------------------------------------------------------------------------------------------
// Against AIMET's exports.

/// Names per section of an AIMET encodings file, either version.
fn key_sets(json: &Value) -> [BTreeSet<String>; 2] {
    ["activation_encodings", "param_encodings"].map(|section| match &json[section] {
        Value::Object(map) => map.keys().cloned().collect(),
        Value::Array(list) => list
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect(),
        other => panic!("{section}: {other}"),
    })
}

/// (scale, offset) per channel, by name, of one section.
fn grids(json: &Value, section: &str) -> BTreeMap<String, Vec<(f64, f64)>> {
    match &json[section] {
        Value::Object(map) => map
            .iter()
            .map(|(name, entries)| {
                let grid = entries
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| (e["scale"].as_f64().unwrap(), e["offset"].as_f64().unwrap()))
                    .collect();
                (name.clone(), grid)
            })
            .collect(),
        Value::Array(list) => list
            .iter()
            .map(|e| {
                let scales = e["scale"].as_array().unwrap();
                let offsets = e["offset"].as_array().unwrap();
                let grid = scales
                    .iter()
                    .zip(offsets)
                    .map(|(s, o)| (s.as_f64().unwrap(), o.as_f64().unwrap()))
                    .collect();
                (e["name"].as_str().unwrap().to_string(), grid)
            })
            .collect(),
        other => panic!("{section}: {other}"),
    }
}

/// Tensors whose values differ from AIMET's, with the tolerances of `tests/calibration.rs`:
/// activations 1e-4 relative in scale and the same offset, parameters 1e-6 and the same offset.
fn differing(ours: &Value, aimet: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (section, tolerance) in [("activation_encodings", 1e-4), ("param_encodings", 1e-6)] {
        let ours = grids(ours, section);
        for (name, theirs) in grids(aimet, section) {
            let Some(mine) = ours.get(&name) else {
                continue;
            };
            let same = mine.len() == theirs.len()
                && mine.iter().zip(&theirs).all(|((s1, o1), (s2, o2))| {
                    (s1 - s2).abs() <= tolerance * s2.abs() && o1 == o2
                });
            if !same {
                out.insert(name);
            }
        }
    }
    out
}

/// AIMET's weight-scale floor (`_adjust_weight_scales_against_overflow`, README c): a channel
/// whose weights are all ~1e-14 gets `2^-23.5 · s_out / s_in`, from the scales of the layer's
/// input and output; quant keeps the per-channel rule's own scale for it.
const OVERFLOW_FLOOR: &str =
    "near-zero channel: AIMET floors its scale from the layer's input and output scales";

#[test]
fn encoded_tensors_equal_aimets_key_sets_for_every_variant_and_version() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let aimet_dir = fixtures.join("reference/aimet");
    let per_tensor = QuantsimConfig::read(&aimet_dir.join("default_config.json")).unwrap();
    let per_channel =
        QuantsimConfig::read(&aimet_dir.join("default_config_per_channel.json")).unwrap();
    let mut report = Vec::new();
    for model in ["cls", "det"] {
        for variant in ["tf_w8a8", "tf_w8a8_pc", "tf_w8a16", "tfe_w8a8"] {
            let config = if variant.ends_with("_pc") {
                per_channel.clone()
            } else {
                per_tensor.clone()
            };
            let method = if variant.starts_with("tfe") {
                CalibrationMethod::Sqnr
            } else {
                CalibrationMethod::MinMax
            };
            let settings = QuantizerSettings {
                act_bitwidth: if variant.ends_with("a16") {
                    Bitwidth::B16
                } else {
                    Bitwidth::B8
                },
                act_calibration: method,
                param_calibration: method,
                ..QuantizerSettings::default()
            };
            let job = OneShot {
                model: fixtures.join(format!("models/{model}.prep.onnx")),
                input_list: Some(fixtures.join(format!("{model}/calib/input_list.txt"))),
                overrides: None,
                input_dims: Vec::new(),
                settings: placement::with_config(config, settings),
                algorithms: Default::default(),
                adaround: Default::default(),
                adaround_names: Default::default(),
                jobs: None,
            };
            let output = oneshot::quantize(&job, |_, _| {}).unwrap();
            for (version, suffix) in [
                (EncodingVersion::V0_6_1, "v061"),
                (EncodingVersion::V1_0_0, "v100"),
            ] {
                let ours: Value = serde_json::from_str(&output.encodings.to_json(version)).unwrap();
                let path = aimet_dir.join(format!("{model}.{variant}.{suffix}.encodings"));
                let aimet: Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                let [ours_a, ours_p] = key_sets(&ours);
                let [aimet_a, aimet_p] = key_sets(&aimet);
                assert_eq!(
                    ours_a, aimet_a,
                    "{model} {variant} {suffix}: activation names"
                );
                assert_eq!(
                    ours_p, aimet_p,
                    "{model} {variant} {suffix}: parameter names"
                );
                let differ = differing(&ours, &aimet);
                report.push(format!(
                    "{model} {variant} {suffix}: {} activations, {} parameters, same names; {} differ in value",
                    aimet_a.len(),
                    aimet_p.len(),
                    differ.len()
                ));
                if variant.starts_with("tfe") {
                    // quant's sqnr search is not AIMET's tf_enhanced histogram search: the values
                    // are compared by the SQNR they reach in `tests/calibration.rs`.
                    continue;
                }
                let explained: BTreeSet<String> = match (model, variant) {
                    ("det", "tf_w8a8_pc") => ["conv2d_419.w_0", "conv2d_420.w_0"]
                        .map(String::from)
                        .into(),
                    _ => BTreeSet::new(),
                };
                assert_eq!(
                    differ, explained,
                    "{model} {variant} {suffix}: differing values (explained: {OVERFLOW_FLOOR})"
                );
            }
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// The file quant writes under AIMET's config loads into aimet-onnx with `strict=True`. Runs only
/// when `QUANT_AIMET_PYTHON` names a Python with aimet-onnx (2.42's wheels need torch's CUDA
/// build, about 6 GB, so CI does not install it); the key-set test above stands for it there.
#[test]
fn encodings_load_strictly_into_aimet_when_it_is_installed() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let Some(python) = std::env::var_os("QUANT_AIMET_PYTHON") else {
        eprintln!("skipped: QUANT_AIMET_PYTHON does not name a Python with aimet-onnx");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures.join("reference/aimet/default_config.json");
    let model = fixtures.join("models/cls.prep.onnx");
    let encodings = dir.path().join("cls.encodings");
    let status = std::process::Command::new(common::quant_bin())
        .arg("quantize")
        .arg("--input_network")
        .arg(&model)
        .arg("--input_list")
        .arg(fixtures.join("cls/calib/input_list.txt"))
        .arg("--quantsim_config")
        .arg(&config)
        .arg("--output_encodings")
        .arg(&encodings)
        .status()
        .unwrap();
    assert!(status.success());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_aimet_load.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(&model)
        .arg(&config)
        .arg(&encodings)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "aimet-onnx refused the file:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A build whose targets name AIMET's configs evaluates as AIMET's own simulation does: its
/// placement, its arithmetic and its rounding give AIMET's cls top-1 for its own tf_w8a8
/// encodings, 390/400 per tensor and 393/400 per channel.
#[test]
fn a_build_with_aimets_config_scores_what_aimets_simulation_scores() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let path = |p: &str| fixtures.join(p).display().to_string();
    let manifest = format!(
        "[pipeline]\nname = \"aimet\"\n\n[models.cls]\npath = \"{}\"\n\n\
         [calibration.calib]\ninput_list = \"{}\"\n\n\
         [eval.eval]\ninput_list = \"{}\"\nlabels = \"{}\"\n\n\
         [targets.per-tensor]\nbackend = \"htp\"\ncalibration = \"calib\"\nevaluate = \"eval\"\n\
         quantsim_config = \"{}\"\n\n\
         [targets.per-channel]\nextends = \"per-tensor\"\nquantsim_config = \"aimet-per-channel\"\n",
        path("models/cls.prep.onnx"),
        path("cls/calib/input_list.txt"),
        path("cls/eval/input_list.txt"),
        path("cls/eval/labels.txt"),
        path("reference/aimet/default_config.json"),
    );
    std::fs::write(root.join("quant.toml"), manifest).unwrap();
    let output = std::process::Command::new(common::quant_bin())
        .args(["build", "--allow-outside-root"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for (target, aimet) in [("per-tensor", 390), ("per-channel", 393)] {
        let report: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join(format!("quant-out/{target}/cls/report.json")))
                .unwrap(),
        )
        .unwrap();
        let top1 = &report["evaluation"]["metrics"]["top1"];
        assert_eq!(top1["samples"], 400);
        assert_eq!(top1["quantized"]["correct"], aimet, "{target}: {top1}");
    }
}
