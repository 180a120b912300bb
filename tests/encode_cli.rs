//! `quant encode` end to end: the seed's worked examples through the real binary, agreement with
//! onnxruntime's MinMax encodings, and one-line usage errors.

mod common;

use std::process::Command;

use serde_json::Value;

/// Runs `quant encode <args>`; returns (exit code, stdout, stderr).
fn encode(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(common::quant_bin())
        .arg("encode")
        .args(args)
        .output()
        .expect("run quant");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// Runs a command that must succeed and returns its single JSON line, parsed and raw.
fn entry(args: &[&str]) -> (Value, String) {
    let (code, stdout, stderr) = encode(args);
    assert_eq!(code, 0, "quant encode {args:?} failed: {stderr}");
    assert!(stderr.is_empty(), "unexpected stderr: {stderr}");
    assert_eq!(
        stdout.lines().count(),
        1,
        "one JSON object per run: {stdout}"
    );
    (
        serde_json::from_str(&stdout).unwrap(),
        stdout.trim_end().to_string(),
    )
}

fn number(entry: &Value, key: &str) -> f64 {
    entry[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {entry}"))
}

fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, want {want} ± {tol}"
    );
}

#[test]
fn seed_worked_example() {
    let (e, raw) = entry(&["--values", "-1.8,-1.0,0,0.5", "--bitwidth", "8"]);
    // The seed: min −1.803922, max 0.496078, step 0.009020, zero-point 200 (JSON offset −200).
    assert_close(number(&e, "min"), -1.803922, 5e-7, "min");
    assert_close(number(&e, "max"), 0.496078, 5e-7, "max");
    assert_close(number(&e, "scale"), 0.009020, 5e-7, "scale");
    assert_eq!(number(&e, "offset"), -200.0);
    assert_eq!(e["quantized"], serde_json::json!([0, 89, 200, 255]));
    // The seed prints −1.0011 for the second value: −1.001176 truncated; rounded it is −1.0012.
    let dequantized: Vec<f64> = e["dequantized"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (got, want) in dequantized.iter().zip([-1.8039, -1.0012, 0.0, 0.4961]) {
        assert_close(*got, want, 5e-5, "dequantized");
    }
    assert_eq!(dequantized[2], 0.0);
    insta::assert_snapshot!(raw);
}

#[test]
fn seed_zero_cases() {
    let (positive, _) = entry(&["--min", "5", "--max", "10"]);
    assert_eq!(
        (number(&positive, "min"), number(&positive, "max")),
        (0.0, 10.0)
    );
    let (negative, _) = entry(&["--min", "-20", "--max", "-6"]);
    assert_eq!(
        (number(&negative, "min"), number(&negative, "max")),
        (-20.0, 0.0)
    );
    assert_eq!(number(&negative, "offset"), -255.0);
    let (mixed, _) = entry(&["--min=-5.1", "--max=5.1"]);
    assert_close(number(&mixed, "min"), -5.12, 1e-12, "min");
    assert_close(number(&mixed, "max"), 5.08, 1e-12, "max");
    assert_eq!(number(&mixed, "offset"), -128.0);
    let all = [positive, negative, mixed]
        .map(|e| e.to_string())
        .join("\n");
    insta::assert_snapshot!(all);
}

#[test]
fn schemas_and_bitwidths() {
    let runs = [
        vec![
            "--values",
            "-1.8,-1.0,0,0.5",
            "--schema",
            "signedasymmetric",
        ],
        vec!["--values", "-1.27,0,0.01,1.0", "--schema", "symmetric"],
        vec![
            "--values",
            "-1.27,0,0.01,1.0",
            "--schema",
            "unsignedsymmetric",
        ],
        vec!["--min", "-1", "--max", "1", "--bitwidth", "16"],
        vec![
            "--min",
            "-1",
            "--max",
            "1",
            "--bitwidth",
            "4",
            "--schema",
            "symmetric",
        ],
    ];
    let lines: Vec<String> = runs
        .iter()
        .map(|args| format!("{}\n{}", args.join(" "), entry(args).1))
        .collect();
    // Symmetric and unsigned symmetric share scale/offset and differ only in stored integers.
    let (sym, _) = entry(&runs[1]);
    let (usym, _) = entry(&runs[2]);
    assert_eq!(sym["quantized"], serde_json::json!([-127, 0, 1, 100]));
    assert_eq!(usym["quantized"], serde_json::json!([1, 128, 129, 228]));
    assert_eq!(
        (sym["is_symmetric"].as_str(), sym["offset"].as_f64()),
        (Some("True"), Some(-128.0))
    );
    assert_eq!(sym["scale"], usym["scale"]);
    insta::assert_snapshot!(lines.join("\n"));
}

/// onnxruntime 1.32 `quantize_static` (MinMax, per-tensor, uint8 activations) on cls.prep:
/// `calibrated_min/max`, `scale`, `zero_point` copied from
/// `../shared/fixtures/reference/ort/cls.minmax_pt_u8.json`. ORT rounds the zero point half to
/// even and we round the offset half away from zero; these tensors' `min / scale` fractions
/// (0.0, .56, .90, .71, .06) are nowhere near a tie, so both agree. ORT stores the scale as
/// float32, hence the relative tolerance.
#[test]
fn agrees_with_onnxruntime_minmax_uint8() {
    let tensors = [
        ("Clip@0", 0.0, 6.0, 0.0235294122248888, 0),
        ("Mul@0", -2.25, 57.774871826171875, 0.23539166152477264, 10),
        (
            "batch_norm_0.tmp_2",
            -8.681361198425293,
            9.629145622253418,
            0.0718059092760086,
            121,
        ),
        (
            "batch_norm_12.tmp_2",
            -6.038172245025635,
            5.925078868865967,
            0.046914711594581604,
            129,
        ),
        (
            "batch_norm_20.tmp_2",
            -11.777438163757324,
            6.86923360824585,
            0.07312420010566711,
            161,
        ),
    ];
    for (name, min, max, ort_scale, ort_zero_point) in tensors {
        let (e, _) = entry(&[
            "--min",
            &format!("{min:?}"),
            "--max",
            &format!("{max:?}"),
            "--bitwidth",
            "8",
            "--schema",
            "asymmetric",
        ]);
        let scale = number(&e, "scale");
        assert!(
            (scale - ort_scale).abs() <= 1e-6 * ort_scale,
            "{name}: scale {scale} vs ORT {ort_scale}"
        );
        assert_eq!(
            -number(&e, "offset"),
            f64::from(ort_zero_point),
            "{name}: zero point"
        );
    }
}

#[test]
fn usage_errors_are_one_line_naming_the_argument() {
    let cases: [&[&str]; 14] = [
        &["--min", "NaN", "--max", "1"],
        &["--min", "0", "--max", "inf"],
        &["--min", "1", "--max", "-1"],
        &["--min", "abc", "--max", "1"],
        &["--min", "0", "--max", "1", "--bitwidth", "1"],
        &["--min", "0", "--max", "1", "--bitwidth", "17"],
        &["--min", "0", "--max", "1", "--bitwidth", "eight"],
        &["--min", "0", "--max", "1", "--schema", "tf"],
        &["--values", "1,x,3"],
        &["--values", "1,,3"],
        &["--values", "1e39"],
        &["--min", "0", "--max", "1", "--values", "1,2"],
        &["--min", "0"],
        &[],
    ];
    let mut transcript = Vec::new();
    for args in cases {
        let (code, stdout, stderr) = encode(args);
        assert_eq!(code, 2, "{args:?}: exit code");
        assert!(
            stdout.is_empty(),
            "{args:?}: nothing on stdout, got {stdout}"
        );
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one line, got {stderr}"
        );
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        transcript.push(format!("{}\n  {}", args.join(" "), stderr.trim_end()));
    }
    insta::assert_snapshot!(transcript.join("\n"));
}
