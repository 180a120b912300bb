//! AdaRound in `quant build`, on the example's cls model: each layer's result is a store entry,
//! so a second identical build optimizes no layer, one more layer in `ignore_quant_ops_list`
//! re-optimizes exactly the layers downstream of it, and an override edit on an activation no
//! layer reads optimizes none. Every incremental build writes the bytes a clean one does, with
//! `-j 1` as with `-j 2`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use quant::adaround::ada_layers;
use quant::graph::Graph;
use quant::onnx::OnnxModel;

/// The files a unit writes, by name.
type Outputs = BTreeMap<String, Vec<u8>>;

fn manifest(ignored: &[&str]) -> String {
    let ignored: Vec<String> = ignored.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        r#"[pipeline]
name = "ada"

[models.cls]
path = "models/cls.onnx"
input_dims = {{ x = [1, 3, 48, 192] }}

[calibration.textlines]
input_list = "calib/input_list.txt"

[overrides.head]
path = "overrides/head.json"

[targets.htp-w4]
backend = "htp"
calibration = "textlines"
overrides = ["head"]
weights_bitwidth = 4
use_per_channel_quantization = true
algorithms = ["adaround"]

[targets.htp-w4.adaround]
num_batches = 2
num_iterations = 20
seed = 7

[targets.htp-w4.adaround.optional_adaround_args]
ignore_quant_ops_list = [{}]
"#,
        ignored.join(", ")
    )
}

/// Runs `quant build --json -j JOBS` in `dir`; returns the JSON summary.
fn build(dir: &Path, jobs: &str) -> serde_json::Value {
    build_with(dir, jobs, &[]).0
}

/// [`build`] with more arguments; also returns what it printed on stderr.
fn build_with(dir: &Path, jobs: &str, more: &[&str]) -> (serde_json::Value, String) {
    let output = Command::new(common::quant_bin())
        .current_dir(dir)
        .args(["build", "--json", "-j", jobs])
        .args(more)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "quant build failed:\n{stderr}");
    (serde_json::from_slice(&output.stdout).unwrap(), stderr)
}

fn counts(summary: &serde_json::Value) -> (u64, u64) {
    (
        summary["layers_optimized"].as_u64().unwrap(),
        summary["layers_reused"].as_u64().unwrap(),
    )
}

fn outputs(dir: &Path) -> Outputs {
    let unit = dir.join("quant-out/htp-w4/cls");
    let mut files = Outputs::new();
    for entry in std::fs::read_dir(&unit).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        files.insert(name, std::fs::read(entry.path()).unwrap());
    }
    files
}

/// A fresh copy of the example with `manifest` as its quant.toml.
fn project(root: &Path, name: &str, manifest: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    common::copy_tree(Path::new(common::EXAMPLE), &dir);
    std::fs::write(dir.join("quant.toml"), manifest).unwrap();
    dir
}

/// The AdaRound layers of the model downstream of `layer` (its output reaches their input).
fn downstream(model: &OnnxModel, layer: &str) -> BTreeSet<String> {
    let graph = Graph::from_model(model).unwrap();
    let layers: BTreeSet<String> = ada_layers(model)
        .unwrap()
        .iter()
        .map(|l| l.name().to_string())
        .collect();
    let mut reached: BTreeSet<String> = BTreeSet::from([layer.to_string()]);
    let mut below = BTreeSet::new();
    for node in graph.nodes() {
        let reads = node
            .inputs
            .iter()
            .flatten()
            .any(|i| reached.contains(i.as_str()));
        if !reads {
            continue;
        }
        if let Some(output) = node.outputs.first()
            && layers.contains(output.as_str())
        {
            below.insert(output.as_str().to_string());
        }
        reached.extend(node.outputs.iter().map(|o| o.as_str().to_string()));
    }
    below
}

#[test]
fn layers_are_reused_per_layer_and_incremental_builds_equal_clean_ones() {
    let root = tempfile::tempdir().unwrap();
    let dir = project(root.path(), "incremental", &manifest(&[]));

    // Cold: every layer optimized.
    let first = build(&dir, "2");
    let (optimized, reused) = counts(&first);
    assert!(optimized > 10, "only {optimized} layers optimized");
    assert_eq!(reused, 0);
    let cold = outputs(&dir);
    assert!(
        cold.contains_key("model.adaround.onnx"),
        "{:?}",
        cold.keys()
    );

    // The same inputs again: nothing optimized, nothing written.
    let second = build(&dir, "2");
    assert_eq!(counts(&second), (0, optimized));
    assert_eq!(outputs(&dir), cold);

    // An override edit on the softmax output, which no layer reads: the encodings change, no
    // layer is optimized.
    let head = dir.join("overrides/head.json");
    let text = std::fs::read_to_string(&head).unwrap();
    std::fs::write(&head, text.replace("\"max\": 1.0", "\"max\": 0.5")).unwrap();
    let third = build(&dir, "2");
    assert_eq!(counts(&third), (0, optimized));
    let edited = outputs(&dir);
    assert_ne!(edited["encodings.json"], cold["encodings.json"]);
    assert_eq!(edited["model.adaround.onnx"], cold["model.adaround.onnx"]);

    // One more layer ignored, near the end: exactly the layers downstream of it are optimized
    // again, the rest reused.
    let model = OnnxModel::read(&dir.join("models/cls.onnx")).unwrap();
    let layers = ada_layers(&model).unwrap();
    let ignored = layers[layers.len() - 4].name().to_string();
    let below_names = downstream(&model, &ignored);
    let below = below_names.len() as u64;
    assert!(below > 0 && below < optimized - 1, "{below} layers below");
    std::fs::write(dir.join("quant.toml"), manifest(&[&ignored])).unwrap();
    let (fourth, explained) = build_with(&dir, "2", &["--explain"]);
    assert_eq!(counts(&fourth), (below, optimized - 1 - below));
    // `--explain` names the cause and the layers it optimized again: the first of them in
    // name order, which is the order it lists them in.
    let line = explained
        .lines()
        .find(|l| l.contains("Dirty") && l.contains("htp-w4/cls"))
        .unwrap_or_else(|| panic!("no --explain line:\n{explained}"));
    assert!(line.contains("quant.toml changed"), "{line}");
    let plural = if below == 1 { "" } else { "s" };
    assert!(
        line.contains(&format!("{below} AdaRound layer{plural} optimized: ")),
        "{line}"
    );
    let first = below_names.iter().next().unwrap();
    assert!(
        line.contains(first.as_str()),
        "{line} does not name {first}"
    );
    let incremental = outputs(&dir);
    assert_ne!(
        incremental["model.adaround.onnx"],
        edited["model.adaround.onnx"]
    );

    // A clean build of the same inputs, on one thread, writes the same bytes.
    let clean = project(root.path(), "clean", &manifest(&[&ignored]));
    std::fs::write(
        clean.join("overrides/head.json"),
        std::fs::read(&head).unwrap(),
    )
    .unwrap();
    let fresh = build(&clean, "1");
    assert_eq!(counts(&fresh), (optimized - 1, 0));
    let from_scratch = outputs(&clean);
    assert_eq!(
        from_scratch.keys().collect::<Vec<_>>(),
        incremental.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &incremental {
        assert!(
            from_scratch[name] == *bytes,
            "{name} differs between the incremental (-j 2) and the clean (-j 1) build"
        );
    }
}
