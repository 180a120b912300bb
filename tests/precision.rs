//! Mixed precision, FP16 and INT32 in the QDQ export: the specification's three-Conv example
//! (`conv2_1` in FP32 between two INT8 convs) on a tiny model built here, float16 ops with
//! casts, and the INT32 rewrite.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use quant::onnx::{
    AttributeValue, DType, GraphContents, NodeContents, OnnxModel, TensorContents, TensorValues,
};

fn info(name: &str, dims: &[u64]) -> quant::onnx::ValueInfo {
    common::info(name, Some(dims))
}

/// The specification's network: `data_0 → conv1 → conv1_1 → conv2 → conv2_1 → conv3 →
/// conv3_1`, 3×3 convs with 4 channels, weights `convN_w_0` and biases `convN_b_0`.
fn three_convs(dir: &Path) -> PathBuf {
    let mut values = common::Values(0x2545_f491_4f6c_dd1d);
    let mut contents = GraphContents {
        ir_version: Some(8),
        opset: Some(13),
        inputs: vec![info("data_0", &[1, 4, 8, 8])],
        outputs: vec![info("conv3_1", &[1, 4, 8, 8])],
        value_info: Vec::new(),
        initializers: Vec::new(),
        nodes: Vec::new(),
    };
    let mut input = "data_0".to_string();
    for i in 1..=3 {
        let w = format!("conv{i}_w_0");
        let b = format!("conv{i}_b_0");
        let out = format!("conv{i}_1");
        contents.initializers.push(TensorContents {
            name: w.clone(),
            dtype: Some(DType::Float32),
            dims: vec![4, 4, 3, 3],
            values: TensorValues::Float(values.take(144).iter().map(|v| v * 0.3).collect()),
        });
        contents.initializers.push(TensorContents {
            name: b.clone(),
            dtype: Some(DType::Float32),
            dims: vec![4],
            values: TensorValues::Float(values.take(4).iter().map(|v| v * 0.1).collect()),
        });
        contents.nodes.push(NodeContents {
            name: format!("conv{i}"),
            op_type: "Conv".into(),
            domain: String::new(),
            inputs: vec![input.clone(), w, b],
            outputs: vec![out.clone()],
            attributes: vec![("pads".into(), AttributeValue::Ints(vec![1; 4]))],
        });
        input = out;
    }
    let model = OnnxModel::from_contents(&contents, Path::new("three_convs.onnx"));
    let path = dir.join("three_convs.onnx");
    model.write(&path).unwrap();
    path
}

/// Four random calibration samples and their list.
fn samples(dir: &Path, len: usize) -> PathBuf {
    let mut values = common::Values(0x9e37_79b9_7f4a_7c15);
    let mut list = String::new();
    for i in 0..4 {
        let path = dir.join(format!("s{i}.raw"));
        let bytes: Vec<u8> = values
            .take(len)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(&path, bytes).unwrap();
        list.push_str(&format!("{}\n", path.display()));
    }
    let path = dir.join("list.txt");
    std::fs::write(&path, list).unwrap();
    path
}

fn quantize(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(common::quant_bin())
        .arg("quantize")
        .args(args)
        .output()
        .unwrap()
}

/// The specification's partial-override JSON: only `conv2_1` and its parameters, FP32.
const CONV2_FP32: &str = r#"{
  "activation_encodings": { "conv2_1": [ { "bitwidth": 32, "dtype": "float" } ] },
  "param_encodings": {
    "conv2_w_0": [ { "bitwidth": 32, "dtype": "float" } ],
    "conv2_b_0": [ { "bitwidth": 32, "dtype": "float" } ]
  },
  "version": "0.5.0"
}"#;

struct Graph {
    nodes: Vec<NodeContents>,
    initializers: HashMap<String, DType>,
}

impl Graph {
    fn read(path: &Path) -> Graph {
        let contents = OnnxModel::read(path).unwrap().contents().unwrap();
        Graph {
            initializers: contents
                .initializers
                .iter()
                .map(|t| (t.name.clone(), t.dtype.unwrap()))
                .collect(),
            nodes: contents.nodes,
        }
    }

    fn producer(&self, tensor: &str) -> Option<&NodeContents> {
        self.nodes
            .iter()
            .find(|n| n.outputs.iter().any(|o| o == tensor))
    }

    fn node(&self, name: &str) -> &NodeContents {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node `{name}`"))
    }

    /// The op that writes `tensor`, and the tensor it reads (for single-input ops).
    fn chain(&self, tensor: &str) -> (String, String) {
        let node = self
            .producer(tensor)
            .unwrap_or_else(|| panic!("nothing writes `{tensor}`"));
        (node.op_type.clone(), node.inputs[0].clone())
    }
}

#[test]
fn conv2_in_fp32_between_two_int8_convs_is_the_specifications_graph() {
    let dir = tempfile::tempdir().unwrap();
    let model = three_convs(dir.path());
    let list = samples(dir.path(), 4 * 8 * 8);
    let overrides = dir.path().join("overrides.json");
    std::fs::write(&overrides, CONV2_FP32).unwrap();
    let encodings = dir.path().join("encodings.json");
    let qdq = dir.path().join("model.qdq.onnx");
    let out = quantize(&[
        "--input_network".as_ref(),
        model.as_os_str(),
        "--input_list".as_ref(),
        list.as_os_str(),
        "--quantization_overrides".as_ref(),
        overrides.as_os_str(),
        "--output_encodings".as_ref(),
        encodings.as_os_str(),
        "--output_model".as_ref(),
        qdq.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "quant quantize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&encodings).unwrap()).unwrap();
    // The encodings file keeps the overrides' dtypes and integer encodings for the rest.
    assert_eq!(json["activation_encodings"]["conv2_1"][0]["dtype"], "float");
    assert_eq!(json["param_encodings"]["conv2_w_0"][0]["dtype"], "float");
    assert_eq!(json["activation_encodings"]["conv1_1"][0]["dtype"], "int");
    assert_eq!(json["param_encodings"]["conv3_w_0"][0]["dtype"], "int");

    let g = Graph::read(&qdq);
    // conv1 and conv3: integer weights behind a DequantizeLinear.
    for conv in ["conv1", "conv3"] {
        let weight = &g.node(conv).inputs[1];
        let (op, stored) = g.chain(weight);
        assert_eq!(op, "DequantizeLinear", "{conv}'s weight");
        assert!(
            matches!(g.initializers[&stored], DType::Int8 | DType::Uint8),
            "{conv}'s stored weight is {:?}",
            g.initializers[&stored]
        );
    }
    // conv2 keeps its float weight and bias, and reads conv1_1 dequantized.
    let conv2 = g.node("conv2");
    assert_eq!(g.initializers.get(&conv2.inputs[1]), Some(&DType::Float32));
    assert_eq!(g.initializers.get(&conv2.inputs[2]), Some(&DType::Float32));
    let (op, q_out) = g.chain(&conv2.inputs[0]);
    assert_eq!(op, "DequantizeLinear", "conv2 reads conv1_1 dequantized");
    assert_eq!(g.chain(&q_out), ("QuantizeLinear".into(), "conv1_1".into()));
    // After conv2 the convert: conv2_1 quantized for conv3.
    let (op, q_out) = g.chain(&g.node("conv3").inputs[0]);
    assert_eq!(
        op, "DequantizeLinear",
        "conv3 reads conv2_1 converted to integer"
    );
    assert_eq!(g.chain(&q_out), ("QuantizeLinear".into(), "conv2_1".into()));
    assert_eq!(g.producer("conv2_1").unwrap().name, "conv2");
    // No other conversions: 3 activation pairs (data_0, conv1_1, conv2_1) plus the output's.
    let quantize_ops = g
        .nodes
        .iter()
        .filter(|n| n.op_type == "QuantizeLinear")
        .count();
    assert_eq!(quantize_ops, 4);
    assert!(g.nodes.iter().all(|n| n.op_type != "Cast"));
}

#[test]
fn an_fp16_conv_runs_in_float16_with_casts() {
    let dir = tempfile::tempdir().unwrap();
    let model = three_convs(dir.path());
    let list = samples(dir.path(), 4 * 8 * 8);
    let overrides = dir.path().join("overrides.json");
    // Only the output: the weighted-op rule makes the weight and bias float16 too.
    std::fs::write(
        &overrides,
        r#"{"activation_encodings": {"conv2_1": [{"bitwidth": 16, "dtype": "float"}]}, "param_encodings": {}}"#,
    )
    .unwrap();
    let encodings = dir.path().join("encodings.json");
    let qdq = dir.path().join("model.qdq.onnx");
    let out = quantize(&[
        "--input_network".as_ref(),
        model.as_os_str(),
        "--input_list".as_ref(),
        list.as_os_str(),
        "--quantization_overrides".as_ref(),
        overrides.as_os_str(),
        "--output_encodings".as_ref(),
        encodings.as_os_str(),
        "--output_model".as_ref(),
        qdq.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "quant quantize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&encodings).unwrap()).unwrap();
    for param in ["conv2_w_0", "conv2_b_0"] {
        assert_eq!(
            json["param_encodings"][param][0]["dtype"], "float",
            "{param}"
        );
        assert_eq!(json["param_encodings"][param][0]["bitwidth"], 16, "{param}");
    }
    let g = Graph::read(&qdq);
    let conv2 = g.node("conv2");
    assert_eq!(g.initializers.get(&conv2.inputs[1]), Some(&DType::Float16));
    assert_eq!(g.initializers.get(&conv2.inputs[2]), Some(&DType::Float16));
    // DequantizeLinear → Cast(float16) → conv2 → Cast(float) → QuantizeLinear → conv3.
    let (op, dq) = g.chain(&conv2.inputs[0]);
    assert_eq!(op, "Cast");
    assert_eq!(g.chain(&dq).0, "DequantizeLinear");
    let written = &conv2.outputs[0];
    assert_ne!(
        written, "conv2_1",
        "conv2 writes a float16 tensor of its own"
    );
    assert_eq!(g.chain("conv2_1"), ("Cast".into(), written.clone()));
    let (op, q_out) = g.chain(&g.node("conv3").inputs[0]);
    assert_eq!(op, "DequantizeLinear");
    assert_eq!(g.chain(&q_out), ("QuantizeLinear".into(), "conv2_1".into()));
}

/// Runs `quant quantize` in `dir` with `args`, returning exit code and stderr with `dir` shown
/// as `<scratch>`.
fn quantize_in(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(common::quant_bin())
        .arg("quantize")
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr =
        String::from_utf8_lossy(&out.stderr).replace(&dir.display().to_string(), "<scratch>");
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn precision_usage_errors_are_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    three_convs(dir.path());
    samples(dir.path(), 4 * 8 * 8);
    std::fs::write(
        dir.path().join("int32_conv.json"),
        "{\n  \"activation_encodings\": {\n    \"data_0\": [{\"bitwidth\": 32, \"dtype\": \"int\"}],\n    \"conv1_1\": [{\"bitwidth\": 32, \"dtype\": \"int\"}]\n  },\n  \"param_encodings\": {}\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("double.json"),
        "{\n  \"activation_encodings\": {\n    \"conv2_1\": [{\"bitwidth\": 64, \"dtype\": \"double\"}]\n  },\n  \"param_encodings\": {}\n}\n",
    )
    .unwrap();
    let base = [
        "--input_network",
        "three_convs.onnx",
        "--output_encodings",
        "out.json",
    ];
    let cases: [(&str, Vec<&str>, i32); 4] = [
        (
            "float fallback with an input list",
            vec!["--input_list", "list.txt", "--enable_float_fallback"],
            2,
        ),
        ("neither an input list nor float fallback", vec![], 2),
        (
            "INT32 on every input and output of a Conv",
            vec![
                "--input_list",
                "list.txt",
                "--quantization_overrides",
                "int32_conv.json",
            ],
            1,
        ),
        (
            "an unknown dtype",
            vec![
                "--enable_float_fallback",
                "--quantization_overrides",
                "double.json",
            ],
            1,
        ),
    ];
    let mut transcript = Vec::new();
    for (what, extra, expected) in cases {
        let args: Vec<&str> = base.iter().copied().chain(extra).collect();
        let (code, stderr) = quantize_in(dir.path(), &args);
        assert_eq!(code, expected, "{what}: {stderr}");
        assert!(
            !dir.path().join("out.json").exists(),
            "{what}: wrote output"
        );
        transcript.push(format!("## {what} (exit {code})\n{}", stderr.trim_end()));
    }
    insta::assert_snapshot!(transcript.join("\n\n"));
}

#[test]
fn float_fallback_keeps_the_overrides_and_falls_back_to_float() {
    let dir = tempfile::tempdir().unwrap();
    three_convs(dir.path());
    // conv1's input and output fixed: conv1 is an integer op, its weight encoded from its
    // values; everything without an encoding is float, and conv2 and conv3 with it.
    std::fs::write(
        dir.path().join("fixed.json"),
        r#"{"activation_encodings": {
            "data_0": [{"bitwidth": 8, "dtype": "int", "min": -1.0, "max": 1.0}],
            "conv1_1": [{"bitwidth": 8, "dtype": "int", "min": -2.0, "max": 2.0}]},
            "param_encodings": {}}"#,
    )
    .unwrap();
    let (code, stderr) = quantize_in(
        dir.path(),
        &[
            "--input_network",
            "three_convs.onnx",
            "--enable_float_fallback",
            "--quantization_overrides",
            "fixed.json",
            "--output_encodings",
            "out.json",
            "--output_model",
            "out.qdq.onnx",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out.json")).unwrap()).unwrap();
    let a = &json["activation_encodings"];
    let p = &json["param_encodings"];
    assert_eq!(a["conv1_1"][0]["dtype"], "int");
    // The override's range, nudged onto a grid holding zero exactly.
    assert!((a["conv1_1"][0]["min"].as_f64().unwrap() + 2.0).abs() < 0.01);
    assert_eq!(p["conv1_w_0"][0]["dtype"], "int");
    assert_eq!(p["conv1_b_0"][0]["dtype"], "int");
    for float in ["conv2_1", "conv3_1"] {
        assert_eq!(a[float][0]["dtype"], "float", "{float}");
    }
    for float in ["conv2_w_0", "conv2_b_0", "conv3_w_0"] {
        assert_eq!(p[float][0]["dtype"], "float", "{float}");
    }
    let g = Graph::read(&dir.path().join("out.qdq.onnx"));
    assert_eq!(g.chain(&g.node("conv1").inputs[1]).0, "DequantizeLinear");
    assert_eq!(g.chain(&g.node("conv2").inputs[0]).0, "DequantizeLinear");
    assert_eq!(
        g.initializers.get(&g.node("conv3").inputs[1]),
        Some(&DType::Float32)
    );
}

/// A manifest target with `enable_float_fallback` builds without calibration data and writes
/// what `quant quantize --enable_float_fallback` writes for the same model and overrides; a
/// second build recomputes nothing, and an overrides edit re-encodes in the engine.
#[test]
fn a_float_fallback_target_builds_what_quantize_writes() {
    let dir = tempfile::tempdir().unwrap();
    three_convs(dir.path());
    let fixed = |max: f64| {
        format!(
            r#"{{"activation_encodings": {{
            "data_0": [{{"bitwidth": 8, "dtype": "int", "min": -1.0, "max": 1.0}}],
            "conv1_1": [{{"bitwidth": 8, "dtype": "int", "min": -2.0, "max": {max}}}]}},
            "param_encodings": {{}}}}"#
        )
    };
    std::fs::write(dir.path().join("fixed.json"), fixed(2.0)).unwrap();
    std::fs::write(
        dir.path().join("quant.toml"),
        r#"[pipeline]
name = "fallback"

[models.convs]
path = "three_convs.onnx"

[overrides.fixed]
path = "fixed.json"

[targets.htp]
backend = "htp"
enable_float_fallback = true
overrides = ["fixed"]
"#,
    )
    .unwrap();
    let (code, stderr) = quantize_in(
        dir.path(),
        &[
            "--input_network",
            "three_convs.onnx",
            "--enable_float_fallback",
            "--quantization_overrides",
            "fixed.json",
            "--output_encodings",
            "out.json",
            "--output_model",
            "out.qdq.onnx",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let build = || {
        let out = Command::new(common::quant_bin())
            .args(["build", "--json"])
            .arg(dir.path())
            .env("QUANT_CACHE_DIR", dir.path().join("store"))
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "quant build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let sections = |path: &Path| {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        (
            json["activation_encodings"].clone(),
            json["param_encodings"].clone(),
        )
    };
    let cold = build();
    assert_eq!(cold["samples_run"], 0, "{cold}");
    let unit = dir.path().join("quant-out/htp/convs");
    let built = sections(&unit.join("encodings.json"));
    assert_eq!(built, sections(&dir.path().join("out.json")));
    assert_eq!(built.0["conv2_1"][0]["dtype"], "float");
    assert_eq!(built.1["conv1_w_0"][0]["dtype"], "int");
    assert_eq!(
        std::fs::read(unit.join("model.qdq.onnx")).unwrap(),
        std::fs::read(dir.path().join("out.qdq.onnx")).unwrap(),
        "the QDQ export differs from quant quantize's"
    );

    let noop = build();
    assert_eq!(noop["tensors_encoded"], 0, "{noop}");
    assert_eq!(noop["artifacts_written"], 0, "{noop}");

    // An overrides edit re-keys the unit's tensors (one whole-model pass decides them all), and
    // the new range is written.
    std::fs::write(dir.path().join("fixed.json"), fixed(3.0)).unwrap();
    let edit = build();
    assert!(edit["tensors_encoded"].as_u64().unwrap() >= 1, "{edit}");
    let edited = sections(&unit.join("encodings.json"));
    assert!((edited.0["conv1_1"][0]["max"].as_f64().unwrap() - 3.0).abs() < 0.05);
}

/// The bundled example's gpu target (`float_bitwidth = 16`) writes an FP16 model, which runs in
/// onnxruntime and stays close to the float model.
#[test]
fn the_examples_gpu_target_writes_an_fp16_model_that_onnxruntime_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("example");
    common::copy_tree(Path::new(common::EXAMPLE), &root);
    let out = Command::new(common::quant_bin())
        .arg("build")
        .arg(&root)
        .env("QUANT_CACHE_DIR", dir.path().join("store"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "quant build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gpu = root.join("quant-out/gpu/cls");
    let fp16 = gpu.join("model.fp16.onnx");
    assert!(fp16.is_file(), "no model.fp16.onnx");
    assert!(!gpu.join("model.qdq.onnx").exists());
    let contents = OnnxModel::read(&fp16).unwrap().contents().unwrap();
    let float16 = contents
        .initializers
        .iter()
        .filter(|t| t.dtype == Some(DType::Float16))
        .count();
    assert!(float16 > 0, "no float16 initializer");
    // Graph inputs and outputs stay float32 (keep_io_types), with casts inside.
    assert!(
        contents
            .inputs
            .iter()
            .all(|i| i.dtype == Some(DType::Float32))
    );
    assert!(contents.nodes.iter().any(|n| n.op_type == "Cast"));
    let Some(python) = common::python() else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_fp16.py");
    let out = Command::new(python)
        .arg(script)
        .arg(&fp16)
        .arg(root.join("models/cls.onnx"))
        .arg(root.join("calib/input_list.txt"))
        .args(["--input_dim", "1,3,48,192"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check_fp16.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let samples = report["samples"].as_u64().unwrap();
    assert_eq!(samples, 8);
    assert_eq!(
        report["argmax_agreement"].as_u64(),
        Some(samples),
        "{report}"
    );
    assert_eq!(report["float32_initializers"].as_u64(), Some(0), "{report}");
    // Float16 keeps 11 significant bits: about 66 dB for one rounding, less through a deep
    // network; measured 50.9 dB mean over these samples.
    let sqnr = report["sqnr_db"].as_f64().unwrap();
    assert!(sqnr > 40.0, "FP16 output SQNR {sqnr} dB: {report}");
}

/// A float tensor that a float op and an integer op both read: QuantSim quantizes it for the
/// integer reader only (through a copy), and the float reader gets the float value, as the QDQ
/// export's Identity copy gives it.
#[test]
fn quantsim_quantizes_a_float_tensor_for_its_integer_readers_only() {
    use quant::encoding::{Bitwidth, Encoding, FloatBitwidth, Schema, TensorEncoding};
    use quant::onnx::precision::NodePrecision;
    use quant::quantizer::ModelEncodings;
    use quant::quantsim::{QuantSim, integer_copies};

    let dir = tempfile::tempdir().unwrap();
    let path = three_convs(dir.path());
    // conv1 (float) → conv1_1, read by conv2 (integer) and by a float Add beside conv3.
    let mut contents = OnnxModel::read(&path).unwrap().contents().unwrap();
    contents.nodes.push(NodeContents {
        name: "sum".into(),
        op_type: "Add".into(),
        domain: String::new(),
        inputs: vec!["conv1_1".into(), "conv3_1".into()],
        outputs: vec!["sum_1".into()],
        attributes: Vec::new(),
    });
    contents.outputs = vec![info("sum_1", &[1, 4, 8, 8])];
    let model = OnnxModel::from_contents(&contents, Path::new("sum.onnx"));
    let graph = quant::graph::Graph::from_model(&model).unwrap();

    let int8 = |absmax: f64| {
        TensorEncoding::PerTensor(
            Encoding::from_range(-absmax, absmax, Bitwidth::B8, Schema::Asymmetric).unwrap(),
        )
    };
    let float = TensorEncoding::Float {
        bitwidth: FloatBitwidth::F32,
    };
    let mut encodings = ModelEncodings::default();
    encodings.activations.insert("data_0".into(), int8(1.0));
    encodings
        .activations
        .insert("conv1_1".into(), float.clone());
    encodings.activations.insert("conv2_1".into(), int8(4.0));
    encodings.activations.insert("conv3_1".into(), int8(8.0));
    encodings.activations.insert("sum_1".into(), float);
    encodings
        .ops
        .insert("conv1_1".into(), NodePrecision::Float32);
    encodings.ops.insert("sum_1".into(), NodePrecision::Float32);
    // A coarse grid, so a quantized read is far from the float one.
    encodings.converted.insert("conv1_1".into(), int8(4.0));

    let copies = integer_copies(&graph, &encodings);
    assert_eq!(copies.values().collect::<Vec<_>>(), ["conv1_1"]);
    let sim = QuantSim::new(&model, &graph, &encodings, &[]).unwrap();
    let names = sim.runner().activation_names().to_vec();
    let index = |name: &str| names.iter().position(|n| n == name).unwrap();
    let copy = copies.keys().next().unwrap().clone();
    let (float_index, copy_index, conv3_index) = (index("conv1_1"), index(&copy), index("conv3_1"));
    let mut seen: HashMap<usize, Vec<f32>> = HashMap::new();
    let input = ndarray::ArrayD::from_shape_fn(vec![1, 4, 8, 8], |i| {
        ((i[1] * 64 + i[2] * 8 + i[3]) as f32 * 0.37).sin()
    });
    let outputs = sim
        .run(&[input], |i, data, _| {
            if [float_index, copy_index, conv3_index].contains(&i) {
                seen.insert(i, data.to_vec());
            }
        })
        .unwrap();
    let step = 8.0 / 255.0;
    let on_grid = |v: &f32| ((*v as f64 / step) - (*v as f64 / step).round()).abs() < 1e-3;
    assert!(
        seen[&copy_index].iter().all(on_grid),
        "the integer readers' copy is quantized"
    );
    assert!(
        !seen[&float_index].iter().all(on_grid),
        "the float tensor itself stays float"
    );
    // The float Add read the float value: its output is exactly float conv1_1 + conv3_1.
    let sum = outputs[0].as_slice().unwrap();
    for ((s, a), b) in sum.iter().zip(&seen[&float_index]).zip(&seen[&conv3_index]) {
        assert!((s - (a + b)).abs() < 1e-5, "{s} != {a} + {b}");
    }
}
