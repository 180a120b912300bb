//! ONNX in/out on the real fixture models: decode → encode is byte-identical, parameter values can
//! be replaced (initializers and `Constant` nodes) and input dims fixed, and bad files are errors
//! that name the path.

mod common;

use quant::onnx::{OnnxError, OnnxModel, TensorValues};
use std::path::PathBuf;

fn fixture_models() -> Option<Vec<PathBuf>> {
    let fixtures = common::fixtures()?;
    let mut models: Vec<PathBuf> = std::fs::read_dir(fixtures.join("models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    models.sort();
    models.push(fixtures.join("reference/tiny/tiny.onnx"));
    models.push(fixtures.join("reference/tiny/tiny.minmax_pt_u8.qdq.onnx"));
    models.push(fixtures.join("reference/ort/cls.minmax_pt_u8.qdq.onnx"));
    Some(models)
}

#[test]
fn decode_then_encode_is_byte_identical_on_every_fixture_model() {
    let Some(models) = fixture_models() else {
        return;
    };
    assert_eq!(
        models.len(),
        9,
        "6 model forms + tiny + 2 QDQ models: {models:?}"
    );
    for path in models {
        let bytes = std::fs::read(&path).unwrap();
        let model = OnnxModel::from_bytes(&bytes, &path).unwrap();
        let again = model.to_bytes();
        assert!(
            again == bytes,
            "{}: {} bytes in, {} out",
            path.display(),
            bytes.len(),
            again.len()
        );
    }
}

fn float_values(model: &OnnxModel, name: &str) -> Vec<f32> {
    let contents = model.contents().unwrap();
    let from_init = contents
        .initializers
        .iter()
        .find(|t| t.name == name)
        .map(|t| &t.values);
    let from_constant = contents.nodes.iter().find_map(|n| {
        (n.op_type == "Constant" && n.outputs.first().map(String::as_str) == Some(name)).then(
            || {
                n.attributes
                    .iter()
                    .find_map(|(k, v)| match (k.as_str(), v) {
                        ("value", quant::onnx::AttributeValue::Tensor(t)) => Some(&t.values),
                        _ => None,
                    })
            },
        )?
    });
    match from_init.or(from_constant).and_then(TensorValues::floats) {
        Some(v) => v.into_owned(),
        None => panic!("{name}: no float values"),
    }
}

#[test]
fn replacing_parameter_values_changes_only_that_parameter() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    // cls.prep keeps weights as initializers, cls.onnx as Constant nodes.
    for (file, weight) in [
        ("models/cls.prep.onnx", "ConvBnFusion_W_conv1_weights"),
        ("models/cls.onnx", "conv1_weights"),
    ] {
        let path = fixtures.join(file);
        let original = OnnxModel::read(&path).unwrap();
        let mut model = original.clone();
        let before = float_values(&model, weight);
        let halved: Vec<f32> = before.iter().map(|v| v * 0.5).collect();
        model.replace_parameter_f32(weight, &halved).unwrap();

        let reread = OnnxModel::from_bytes(&model.to_bytes(), &path).unwrap();
        assert_eq!(float_values(&reread, weight), halved, "{file}");
        assert_eq!(
            reread.to_bytes().len(),
            original.to_bytes().len(),
            "{file}: same storage form"
        );

        let wrong = model
            .replace_parameter_f32(weight, &halved[1..])
            .unwrap_err();
        assert!(wrong.to_string().contains(weight), "{wrong}");
        let unknown = model
            .replace_parameter_f32("no_such_weight", &halved)
            .unwrap_err();
        assert!(
            matches!(unknown, OnnxError::UnknownParameter { .. }),
            "{unknown}"
        );
        assert!(unknown.to_string().contains(file), "{unknown}");
    }
}

#[test]
fn fixing_input_dims_replaces_dynamic_dims_and_rejects_conflicts() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let path = fixtures.join("models/cls.onnx");
    let mut model = OnnxModel::read(&path).unwrap();
    let declared = model.contents().unwrap().inputs[0].shape.clone().unwrap();
    assert_eq!(
        declared.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        ["?", "3", "?", "?"],
        "paddle2onnx writes -1 for the batch and `?` for H and W"
    );
    let conflict = model.fix_input_dims("x", &[1, 4, 48, 192]).unwrap_err();
    assert!(
        matches!(conflict, OnnxError::DimConflict { .. }),
        "{conflict}"
    );
    let rank = model.fix_input_dims("x", &[1, 3, 48]).unwrap_err();
    assert!(matches!(rank, OnnxError::DimConflict { .. }), "{rank}");
    let unknown = model.fix_input_dims("image", &[1, 3, 48, 192]).unwrap_err();
    assert_eq!(
        unknown.to_string(),
        format!(
            "in {}: no graph input named `image` (inputs: x)",
            path.display()
        )
    );

    model.fix_input_dims("x", &[1, 3, 48, 192]).unwrap();
    let fixed = model.contents().unwrap().inputs[0].shape.clone().unwrap();
    assert_eq!(
        fixed.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        ["1", "3", "48", "192"]
    );
}

#[test]
fn files_that_are_not_models_are_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.onnx");
    let err = OnnxModel::read(&missing).unwrap_err();
    assert!(matches!(err, OnnxError::Read { .. }));
    assert!(err.to_string().contains("missing.onnx"), "{err}");

    let text = dir.path().join("notes.onnx");
    std::fs::write(&text, "this is a text file, not a protobuf\n").unwrap();
    let err = OnnxModel::read(&text).unwrap_err();
    assert!(
        matches!(err, OnnxError::Decode { .. } | OnnxError::NoGraph { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("{} is not an ONNX model", text.display())),
        "{err}"
    );

    let written = dir.path().join("out.onnx");
    let model = OnnxModel::from_bytes(&[], &written);
    assert!(
        matches!(model, Err(OnnxError::NoGraph { .. })),
        "empty bytes hold no graph"
    );
}

#[test]
fn writing_is_atomic_and_reproduces_the_bytes() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let path = fixtures.join("reference/tiny/tiny.onnx");
    let model = OnnxModel::read(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.onnx");
    model.write(&out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&path).unwrap());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    let err = model
        .write(&dir.path().join("no/such/dir/x.onnx"))
        .unwrap_err();
    assert!(matches!(err, OnnxError::Write { .. }));
}
