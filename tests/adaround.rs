//! `quant quantize --apply_algorithms adaround` end to end on a tiny Conv → Relu → Conv model:
//! the AdaRounded weights sit exactly on the frozen grid of the encodings, the rounding differs
//! from nearest somewhere, and outputs are byte-identical for `-j 1` and `-j 2`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Values, info};
use quant::graph::Graph;
use quant::onnx::{
    AttributeValue, DType, GraphContents, NodeContents, OnnxModel, TensorContents, TensorValues,
};

fn conv(name: &str, input: &str, output: &str, group: i64) -> NodeContents {
    NodeContents {
        name: name.into(),
        op_type: "Conv".into(),
        domain: String::new(),
        inputs: vec![input.into(), format!("{name}.w"), format!("{name}.b")],
        outputs: vec![output.into()],
        attributes: vec![
            ("pads".into(), AttributeValue::Ints(vec![1; 4])),
            ("group".into(), AttributeValue::Int(group)),
        ],
    }
}

fn tensor(name: &str, dims: &[u64], values: Vec<f32>) -> TensorContents {
    TensorContents {
        name: name.into(),
        dtype: Some(DType::Float32),
        dims: dims.to_vec(),
        values: TensorValues::Float(values),
    }
}

/// Writes the model and 6 calibration samples into `dir`; returns (model, list).
fn tiny(dir: &Path) -> (PathBuf, PathBuf) {
    let mut values = Values(0x5eed_1234_abcd_0001);
    let contents = GraphContents {
        ir_version: Some(8),
        opset: Some(13),
        inputs: vec![info("x", Some(&[1, 4, 8, 8]))],
        outputs: vec![info("y", Some(&[1, 6, 8, 8]))],
        value_info: Vec::new(),
        initializers: vec![
            tensor("c1.w", &[8, 4, 3, 3], values.take(8 * 4 * 9)),
            tensor("c1.b", &[8], values.take(8)),
            tensor("c2.w", &[6, 4, 3, 3], values.take(6 * 4 * 9)),
            tensor("c2.b", &[6], values.take(6)),
        ],
        nodes: vec![
            conv("c1", "x", "h", 1),
            NodeContents {
                name: "relu".into(),
                op_type: "Relu".into(),
                domain: String::new(),
                inputs: vec!["h".into()],
                outputs: vec!["r".into()],
                attributes: Vec::new(),
            },
            conv("c2", "r", "y", 2),
        ],
    };
    let model = dir.join("tiny.onnx");
    OnnxModel::from_contents(&contents, &model)
        .write(&model)
        .unwrap();
    let mut list = String::new();
    for i in 0..6 {
        let bytes: Vec<u8> = values
            .take(4 * 64)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(dir.join(format!("{i}.raw")), bytes).unwrap();
        list.push_str(&format!("{i}.raw\n"));
    }
    std::fs::write(dir.join("list.txt"), list).unwrap();
    (model, dir.join("list.txt"))
}

fn quantize(dir: &Path, model: &Path, list: &Path, out: &str, jobs: &str) -> PathBuf {
    let out = dir.join(out);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(dir.join("adaround.yaml"), "num_iterations: 300\nseed: 3\n").unwrap();
    let status = Command::new(common::quant_bin())
        .args(["quantize", "--input_network"])
        .arg(model)
        .arg("--input_list")
        .arg(list)
        .arg("--output_encodings")
        .arg(out.join("tiny.encodings"))
        .arg("--output_model")
        .arg(out.join("tiny.qdq.onnx"))
        .args([
            "--weights_bitwidth",
            "4",
            "--use_per_channel_quantization",
            "--apply_algorithms",
            "adaround",
            "--config",
        ])
        .arg(dir.join("adaround.yaml"))
        .args(["-j", jobs])
        .status()
        .unwrap();
    assert!(status.success());
    out
}

#[test]
fn adarounded_weights_are_on_the_frozen_grid_and_identical_for_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let (model, list) = tiny(dir.path());
    let one = quantize(dir.path(), &model, &list, "j1", "1");
    let two = quantize(dir.path(), &model, &list, "j2", "2");
    for file in ["tiny.encodings", "tiny.qdq.onnx", "tiny.adaround.onnx"] {
        let (a, b) = (
            std::fs::read(one.join(file)).unwrap(),
            std::fs::read(two.join(file)).unwrap(),
        );
        assert!(a == b, "{file} differs between -j 1 and -j 2");
    }

    let float = Graph::from_model(&OnnxModel::read(&model).unwrap()).unwrap();
    let rounded =
        Graph::from_model(&OnnxModel::read(&one.join("tiny.adaround.onnx")).unwrap()).unwrap();
    let encodings: serde_json::Value =
        serde_json::from_slice(&std::fs::read(one.join("tiny.encodings")).unwrap()).unwrap();
    let mut away_from_nearest = 0;
    for weight in ["c1.w", "c2.w"] {
        let w = float.parameter(weight).unwrap().as_f32().unwrap();
        let q = rounded.parameter(weight).unwrap().as_f32().unwrap();
        let channels = encodings["param_encodings"][weight].as_array().unwrap();
        let per_channel = w.len() / channels.len();
        for (i, (&w, &q)) in w.iter().zip(q.iter()).enumerate() {
            let scale = channels[i / per_channel]["scale"].as_f64().unwrap();
            let grid = f64::from(q) / scale;
            // On the frozen grid, and one of the two neighbours of the float weight.
            assert!(
                (grid - grid.round()).abs() < 1e-4,
                "{weight}[{i}]: {q} off the grid"
            );
            let lower = (f64::from(w) / scale).floor();
            assert!(
                grid.round() == lower || grid.round() == lower + 1.0,
                "{weight}[{i}]: {w} became {q}"
            );
            if grid.round() != (f64::from(w) / scale).round() {
                away_from_nearest += 1;
            }
        }
    }
    assert!(
        away_from_nearest > 0,
        "AdaRound chose nearest rounding everywhere"
    );
}

/// AdaRound runs a model a part at a time between waves (`OnnxModel::segment`): a part fed the
/// values the whole model computed upstream of it gives the whole model's outputs.
#[test]
fn a_segment_fed_the_upstream_values_computes_what_the_whole_model_does() {
    use quant::run::FloatRunner;
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = tiny(dir.path());
    let model = OnnxModel::read(&model).unwrap();
    let whole = FloatRunner::new(&model.to_bytes(), &[]).unwrap();
    let mut values = Values(0x5eed_1234_abcd_0002);
    let x = ndarray::ArrayD::from_shape_vec(vec![1, 4, 8, 8], values.take(4 * 64)).unwrap();
    let names = whole.activation_names().to_vec();
    let mut h = None;
    let y = whole
        .run(std::slice::from_ref(&x), |index, data, shape| {
            if names[index] == "h" {
                h = Some(ndarray::ArrayD::from_shape_vec(shape.to_vec(), data.to_vec()).unwrap());
            }
        })
        .unwrap();
    let h = h.expect("the whole run computes `h`");
    // Nodes 1 and 2 (Relu, the second Conv), reading `h`; the first Conv's weights go.
    let part = model.segment(&[1, 2], &[("h", h.shape())], &["y"]).unwrap();
    let kept = Graph::from_model(&part).unwrap();
    assert!(kept.parameter("c1.w").is_none() && kept.parameter("c2.w").is_some());
    let runner = FloatRunner::new(&part.to_bytes(), &[]).unwrap();
    let from_part = runner.run(std::slice::from_ref(&h), |_, _, _| {}).unwrap();
    assert_eq!(from_part.len(), 1);
    let (a, b) = (&y[0], &from_part[0]);
    assert_eq!(a.shape(), b.shape());
    let worst = a
        .iter()
        .zip(b.iter())
        .map(|(p, q)| (p - q).abs() / p.abs().max(1.0))
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-5,
        "the part's output differs from the whole run's by {worst}"
    );
}

/// An `ignore_quant_ops_list` entry naming a node AdaRound does not optimize (a Relu) changes
/// nothing, and `quant quantize` says so; an entry naming a layer is not warned about, and
/// keeps that layer at nearest rounding.
#[test]
fn ignoring_a_node_that_is_no_layer_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let (model, list) = tiny(dir.path());
    let config = dir.path().join("ignore.yaml");
    std::fs::write(
        &config,
        "num_iterations: 50\noptional_adaround_args:\n  ignore_quant_ops_list: [relu, c2]\n",
    )
    .unwrap();
    let encodings = dir.path().join("tiny.encodings");
    let output = Command::new(common::quant_bin())
        .args(["quantize", "--input_network"])
        .arg(&model)
        .arg("--input_list")
        .arg(&list)
        .arg("--output_encodings")
        .arg(&encodings)
        .args([
            "--weights_bitwidth",
            "4",
            "--use_per_channel_quantization",
            "--apply_algorithms",
            "adaround",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr
            .contains("`ignore_quant_ops_list` names `relu`, which is no layer AdaRound optimizes"),
        "{stderr}"
    );
    assert!(!stderr.contains("names `c2`"), "{stderr}");

    let float = Graph::from_model(&OnnxModel::read(&model).unwrap()).unwrap();
    let rounded =
        Graph::from_model(&OnnxModel::read(&dir.path().join("tiny.adaround.onnx")).unwrap())
            .unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&encodings).unwrap()).unwrap();
    let w = float.parameter("c2.w").unwrap().as_f32().unwrap();
    let q = rounded.parameter("c2.w").unwrap().as_f32().unwrap();
    let channels = json["param_encodings"]["c2.w"].as_array().unwrap();
    let per_channel = w.len() / channels.len();
    for (i, (&w, &q)) in w.iter().zip(q.iter()).enumerate() {
        let channel = &channels[i / per_channel];
        let scale = channel["scale"].as_f64().unwrap();
        let offset = channel["offset"].as_f64().unwrap();
        let steps = 2f64.powi(channel["bitwidth"].as_i64().unwrap() as i32) - 1.0;
        let nearest = (f64::from(w) / scale).round().clamp(offset, offset + steps);
        assert_eq!(
            (f64::from(q) / scale).round(),
            nearest,
            "c2.w[{i}] is ignored, so rounded to nearest"
        );
    }
}
