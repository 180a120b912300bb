//! Quantization overrides (AIMET encodings JSON in) and AIMET export (out): every rule of the
//! reader with its diagnostic as a snapshot, round trips through our writer, and every real
//! AIMET file of the reference fixtures.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme};
use quant::encoding::{Bitwidth, Encoding, FloatBitwidth, MIN_RANGE, Schema};
use quant::export::aimet::{AimetEncodings, EncodingVersion, QuantizerArgs};
use quant::overrides::{
    self, ErrorKind, FixedEncoding, ModelTensors, Override, ParsedOverrides, WarningKind,
};
use serde_json::Value;

/// Overrides test files, named relative to the crate root so rendered paths are stable.
fn data(name: &str) -> PathBuf {
    Path::new("tests/data/overrides").join(name)
}

fn read(name: &str) -> ParsedOverrides {
    overrides::read(&data(name)).unwrap_or_else(|e| panic!("{}", render(&e)))
}

fn read_err(name: &str) -> overrides::OverridesError {
    match overrides::read(&data(name)) {
        Ok(parsed) => panic!("{name} parsed: {:?}", parsed.overrides),
        Err(e) => e,
    }
}

fn render(diagnostic: &dyn Diagnostic) -> String {
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .with_links(false)
        .render_report(&mut out, diagnostic)
        .expect("rendering into a String cannot fail");
    out
}

fn render_warnings(parsed: &ParsedOverrides) -> String {
    parsed
        .warnings
        .iter()
        .map(|w| render(w))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The tensors of a small model shaped like the seed's three-Conv example.
fn seed_model() -> ModelTensors {
    ModelTensors {
        removed: Default::default(),
        activations: ["data_0", "conv1_1", "conv2_1", "conv3_1", "relu_0"]
            .map(String::from)
            .into(),
        parameters: [
            ("conv1_w_0", 3),
            ("conv1_b_0", 3),
            ("conv2_w_0", 8),
            ("conv2_b_0", 8),
            ("conv3_w_0", 8),
            ("conv3_b_0", 8),
            ("features.8.conv.3.weight", 3),
            ("features.9.conv.3.weight", 16),
        ]
        .map(|(n, c)| (n.to_string(), c))
        .into(),
    }
}

fn fixed(o: &Override) -> &FixedEncoding {
    match o {
        Override::Fixed(f) => f,
        other => panic!("not a fixed encoding: {other:?}"),
    }
}

fn close(a: f64, b: f64, relative: f64) -> bool {
    (a - b).abs() <= relative * a.abs().max(b.abs())
}

// ---- the seed's rules ------------------------------------------------------------------------

#[test]
fn seed_example_recomputes_scale_and_offset_and_warns_where_they_disagree() {
    let parsed = read("seed_example.json");
    let input = fixed(&parsed.overrides.activations["input:0"]).encodings()[0];
    // bitwidth/min/max win: scale = (max - min) / 255, offset = round(min / scale).
    assert!(close(
        input.scale,
        (0.9960872825108046 + 1.0039304197656937) / 255.0,
        1e-15
    ));
    assert_eq!(input.offset, -128);
    assert_eq!(input.schema, Schema::Asymmetric);
    let weights = fixed(&parsed.overrides.parameters["Conv2d/weights"]).encodings()[0];
    assert_eq!(weights.offset, -141);
    // Conv1:0 agrees with itself (offset 0); the seed's positive offsets for the other two do not.
    let offsets: Vec<_> = parsed
        .warnings
        .iter()
        .map(|w| match &w.kind {
            WarningKind::OffsetDisagrees {
                tensor, recomputed, ..
            } => (tensor.as_str(), *recomputed),
            other => panic!("unexpected warning {other:?}"),
        })
        .collect();
    assert_eq!(offsets, [("input:0", -128), ("Conv2d/weights", -141)]);
    insta::assert_snapshot!(render_warnings(&parsed));
}

#[test]
fn scale_disagreement_is_a_warning_and_the_recomputed_scale_is_used() {
    let parsed = read("scale_disagrees.json");
    let e = fixed(&parsed.overrides.activations["conv1_1"]).encodings()[0];
    assert!(close(e.scale, 6.2 / 255.0, 1e-15), "{e:?}");
    assert_eq!(e.offset, -49);
    assert_eq!(parsed.warnings.len(), 1);
    assert!(matches!(
        parsed.warnings[0].kind,
        WarningKind::ScaleDisagrees { given, .. } if given == 0.025
    ));
    insta::assert_snapshot!(render_warnings(&parsed));
}

#[test]
fn mixed_precision_float_and_bitwidth_only_entries() {
    let parsed = read("mixed_precision.json");
    assert!(parsed.warnings.is_empty());
    assert_eq!(parsed.version.as_deref(), Some("0.5.0"));
    let o = &parsed.overrides;
    assert_eq!(
        o.activations["conv2_1"],
        Override::Fixed(FixedEncoding::Float(FloatBitwidth::F32))
    );
    assert_eq!(
        o.parameters["conv2_w_0"],
        Override::Fixed(FixedEncoding::Float(FloatBitwidth::F16))
    );
    assert!(o.get("conv2_b_0").unwrap().is_float());
    // Only bitwidth + dtype int: quantize at that bitwidth, range from calibration.
    assert_eq!(
        o.activations["data_0"],
        Override::Calibrated {
            bitwidth: Bitwidth::B8,
            symmetric: None
        }
    );
    assert_eq!(
        o.activations["conv3_1"],
        Override::Calibrated {
            bitwidth: Bitwidth::B16,
            symmetric: Some(true)
        }
    );
    assert_eq!(o.parameters["conv3_w_0"].bitwidth(), Bitwidth::new(4).ok());
    assert!(o.int32_tensors().is_empty());
    parsed.validate(&seed_model()).unwrap();
}

#[test]
fn int32_overrides_are_recorded() {
    let parsed = read("int32.json");
    let o = &parsed.overrides;
    assert_eq!(
        o.int32_tensors().into_iter().collect::<Vec<_>>(),
        ["conv2_1", "data_0"]
    );
    let e = fixed(&o.activations["data_0"]).encodings()[0];
    assert_eq!(e.bitwidth, Bitwidth::B32);
    assert_eq!(e.offset, -(1i64 << 31));
    assert!(close(e.scale, 4.0 / (2f64.powi(31) - 1.0), 1e-15), "{e:?}");
    assert!(o.activations["conv2_1"].is_int32());
}

#[test]
fn per_channel_lists_are_symmetric_and_match_the_channel_count() {
    let parsed = read("per_channel.json");
    assert!(parsed.warnings.is_empty(), "{}", render_warnings(&parsed));
    let FixedEncoding::PerChannel(channels) =
        fixed(&parsed.overrides.parameters["features.8.conv.3.weight"])
    else {
        panic!("not per-channel")
    };
    let given = [
        0.005520610358771377,
        0.004116586343509945,
        0.005801794566507415,
    ];
    for (e, scale) in channels.iter().zip(given) {
        assert_eq!((e.offset, e.schema), (-128, Schema::Symmetric));
        assert!(close(e.scale, scale, 1e-6), "{e:?} vs {scale}");
    }
    // Case 1 of the seed: one asymmetric entry is a per-tensor encoding.
    let single = fixed(&parsed.overrides.parameters["features.9.conv.3.weight"]);
    assert!(matches!(single, FixedEncoding::PerTensor(e) if e.offset == -103));
    parsed.validate(&seed_model()).unwrap();

    let mut model = seed_model();
    model
        .parameters
        .insert("features.8.conv.3.weight".into(), 4);
    let invalid = parsed.validate(&model).unwrap_err();
    assert!(matches!(
        invalid.errors[..],
        [ref e] if *e.kind() == ErrorKind::ChannelCount {
            tensor: "features.8.conv.3.weight".into(),
            expected: 4,
            found: 3
        }
    ));
    insta::assert_snapshot!(render(&invalid));
}

#[test]
fn per_channel_entry_that_is_not_symmetric_is_an_error() {
    let e = read_err("per_channel_asymmetric.json");
    assert!(matches!(
        e.kind(),
        ErrorKind::PerChannelNotSymmetric { expected: -128, .. }
    ));
    insta::assert_snapshot!(render(&e));
}

#[test]
fn per_channel_on_an_activation_is_an_error() {
    let mut model = seed_model();
    model.parameters.remove("features.8.conv.3.weight");
    model.activations.insert("features.8.conv.3.weight".into());
    let invalid = read("per_channel.json").validate(&model).unwrap_err();
    let kinds: Vec<_> = invalid.errors.iter().map(|e| e.kind()).collect();
    assert!(
        matches!(
            kinds[..],
            [ErrorKind::PerChannelActivation { found: 3, .. }]
        ),
        "{kinds:?}"
    );
}

// ---- errors, each with its rendered diagnostic ------------------------------------------------

#[test]
fn malformed_json_names_file_line_and_column() {
    let e = read_err("malformed.json");
    assert!(matches!(e.kind(), ErrorKind::MalformedJson(_)));
    let text = std::fs::read_to_string(data("malformed.json")).unwrap();
    // serde_json stops at line 7 column 17, the `"min"` after the missing comma.
    let span = e.span().unwrap();
    assert_eq!(
        &text[span.offset()..],
        &text[text.find("\"min\"").unwrap()..]
    );
    insta::assert_snapshot!(render(&e));
}

#[test]
fn nan_is_not_json() {
    let e = read_err("nan.json");
    assert!(matches!(e.kind(), ErrorKind::MalformedJson(_)));
    insta::assert_snapshot!(render(&e));
}

#[test]
fn unknown_tensor_names_suggest_the_nearest_ones() {
    let parsed = read("unknown_tensor.json");
    let invalid = parsed.validate(&seed_model()).unwrap_err();
    let names: Vec<_> = invalid
        .errors
        .iter()
        .map(|e| match e.kind() {
            ErrorKind::UnknownTensor {
                tensor,
                suggestions,
            } => (tensor.as_str(), suggestions.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        [
            (
                "conv9_1",
                vec!["conv1_1".into(), "conv2_1".into(), "conv3_1".into()]
            ),
            ("relu_out", vec![]),
            (
                "conv1_w",
                vec!["conv1_1".into(), "conv1_w_0".into(), "conv2_1".into()]
            ),
        ]
    );
    insta::assert_snapshot!(render(&invalid));
}

#[test]
fn invalid_bitwidth() {
    let e = read_err("invalid_bitwidth.json");
    assert_eq!(
        *e.kind(),
        ErrorKind::InvalidBitwidth {
            tensor: "conv2_1".into(),
            bitwidth: 33,
            dtype: "int"
        }
    );
    insta::assert_snapshot!(render(&e));
    let e = read_err("invalid_float_bitwidth.json");
    assert!(matches!(
        e.kind(),
        ErrorKind::InvalidBitwidth {
            bitwidth: 8,
            dtype: "float",
            ..
        }
    ));
    insta::assert_snapshot!("invalid_float_bitwidth", render(&e));
}

#[test]
fn min_above_max() {
    let e = read_err("inverted_range.json");
    assert!(matches!(
        e.kind(),
        ErrorKind::Inverted {
            min: 6.0,
            max: -6.0,
            ..
        }
    ));
    insta::assert_snapshot!(render(&e));
}

#[test]
fn missing_section_is_a_warning_and_no_section_is_an_error() {
    let parsed = read("missing_section.json");
    assert!(parsed.overrides.activations.is_empty());
    assert!(parsed.overrides.parameters["conv2_w_0"].is_float());
    assert!(matches!(
        parsed.warnings[..],
        [ref w] if w.kind == WarningKind::MissingSection("activation_encodings")
    ));
    insta::assert_snapshot!(render_warnings(&parsed));

    let e = overrides::parse("inline.json", r#"{"version": "0.6.1"}"#.into()).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::NotEncodings(_)));
    insta::assert_snapshot!("no_section", render(&e));
}

#[test]
fn unsupported_version_and_layout_mismatch() {
    let e = read_err("unsupported_version.json");
    assert_eq!(*e.kind(), ErrorKind::UnsupportedVersion("2.0.0".into()));
    insta::assert_snapshot!(render(&e));
    let e = read_err("version_mismatch.json");
    assert!(matches!(e.kind(), ErrorKind::NotEncodings(_)));
    insta::assert_snapshot!("version_mismatch", render(&e));
}

// ---- 1.0.0 -----------------------------------------------------------------------------------

#[test]
fn v100_input() {
    let parsed = read("v100.json");
    assert!(parsed.warnings.is_empty());
    let o = &parsed.overrides;
    let data0 = fixed(&o.activations["data_0"]).encodings()[0];
    // No min/max in 1.0.0: derived from scale and offset.
    assert_eq!(data0.offset, -128);
    assert_eq!(data0.scale, 0.00784313725490196);
    assert_eq!(data0.min, -128.0 * 0.00784313725490196);
    assert_eq!(data0.max, 127.0 * 0.00784313725490196);
    assert!(o.activations["conv2_1"].is_float());
    assert_eq!(
        o.activations["conv3_1"],
        Override::Calibrated {
            bitwidth: Bitwidth::B16,
            symmetric: Some(true)
        }
    );
    let FixedEncoding::PerChannel(channels) = fixed(&o.parameters["conv1_w_0"]) else {
        panic!("not per-channel")
    };
    let scales: Vec<f64> = channels.iter().map(|e| e.scale).collect();
    assert_eq!(scales, [0.001, 0.002, 0.004]);
    assert!(channels.iter().all(|e| e.schema == Schema::Symmetric));
    parsed.validate(&seed_model()).unwrap();
}

#[test]
fn v100_errors_point_at_the_entry() {
    let e = read_err("v100_per_channel_asymmetric.json");
    assert!(matches!(e.kind(), ErrorKind::PerChannelNotSymmetric { .. }));
    insta::assert_snapshot!(render(&e));
    let e = read_err("v100_duplicate.json");
    assert_eq!(*e.kind(), ErrorKind::Duplicate("data_0".into()));
    let text = std::fs::read_to_string(data("v100_duplicate.json")).unwrap();
    // The span is the second occurrence, not the first.
    assert_eq!(
        e.span().unwrap().offset(),
        text.rfind("\"data_0\"").unwrap()
    );
    insta::assert_snapshot!("v100_duplicate", render(&e));
}

// ---- writing, and reading our own output -----------------------------------------------------

fn sample_export() -> AimetEncodings {
    let asymmetric = Encoding::from_range(-1.8, 0.5, Bitwidth::B8, Schema::Asymmetric).unwrap();
    let wide = Encoding::from_range(
        -5.692648887634277,
        12.61242961883545,
        Bitwidth::B16,
        Schema::Asymmetric,
    )
    .unwrap();
    let int32 = Encoding::from_override(-4.0, 4.0, Bitwidth::B32, true).unwrap();
    let channels = [0.31984445452690125, 1.0283180475234985, 0.0001, 7.25]
        .map(|absmax| Encoding::from_override(-absmax, absmax * 0.5, Bitwidth::B8, true).unwrap())
        .to_vec();
    let mut out = AimetEncodings {
        quantizer_args: QuantizerArgs {
            per_channel_quantization: true,
            is_symmetric: true,
            ..QuantizerArgs::default()
        },
        ..AimetEncodings::default()
    };
    out.activations
        .insert("x".into(), FixedEncoding::PerTensor(asymmetric));
    out.activations
        .insert("Add@0".into(), FixedEncoding::PerTensor(wide));
    out.activations
        .insert("int32_out".into(), FixedEncoding::PerTensor(int32));
    out.activations
        .insert("conv2_1".into(), FixedEncoding::Float(FloatBitwidth::F16));
    out.parameters
        .insert("conv1_w".into(), FixedEncoding::PerChannel(channels));
    out.parameters
        .insert("conv2_w".into(), FixedEncoding::Float(FloatBitwidth::F32));
    out
}

fn as_overrides(e: &AimetEncodings) -> overrides::Overrides {
    let convert = |map: &BTreeMap<String, FixedEncoding>| {
        map.iter()
            .map(|(k, v)| (k.clone(), Override::Fixed(v.clone())))
            .collect()
    };
    overrides::Overrides {
        activations: convert(&e.activations),
        parameters: convert(&e.parameters),
    }
}

/// Same tensors, same variants, offsets equal and scales within `relative`; the largest
/// relative scale difference seen.
fn assert_same_encodings(a: &overrides::Overrides, b: &overrides::Overrides, relative: f64) -> f64 {
    let mut worst = 0f64;
    for (x, y) in [
        (&a.activations, &b.activations),
        (&a.parameters, &b.parameters),
    ] {
        assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
        for (name, o) in x {
            let (p, q) = (o, &y[name]);
            match (p, q) {
                (
                    Override::Fixed(FixedEncoding::Float(f)),
                    Override::Fixed(FixedEncoding::Float(g)),
                ) => {
                    assert_eq!(f, g, "{name}")
                }
                (Override::Fixed(f), Override::Fixed(g)) => {
                    let (f, g) = (f.encodings(), g.encodings());
                    assert_eq!(f.len(), g.len(), "{name}");
                    for (e, h) in f.iter().zip(g) {
                        assert_eq!(
                            (e.bitwidth, e.schema, e.offset),
                            (h.bitwidth, h.schema, h.offset),
                            "{name}"
                        );
                        let diff = (e.scale - h.scale).abs() / e.scale.abs().max(h.scale.abs());
                        assert!(diff <= relative, "{name}: {e:?} vs {h:?}");
                        worst = worst.max(diff);
                    }
                }
                _ => assert_eq!(p, q, "{name}"),
            }
        }
    }
    worst
}

#[test]
fn our_output_reads_back_to_the_same_encodings() {
    let original = sample_export();
    // 1.0.0 carries scale and offset themselves: the round trip is exact, bit for bit.
    let text = original.to_json(EncodingVersion::V1_0_0);
    let back = overrides::parse("ours.v100.json", text).unwrap();
    assert!(back.warnings.is_empty());
    let expected = as_overrides(&original);
    assert_eq!(back.overrides, expected);

    // 0.6.1 carries min/max, from which scale and offset are recomputed: equal to rounding.
    let text = original.to_json(EncodingVersion::V0_6_1);
    let back = overrides::parse("ours.v061.json", text).unwrap();
    assert!(back.warnings.is_empty(), "{}", render_warnings(&back));
    let worst = assert_same_encodings(&back.overrides, &expected, 1e-12);
    eprintln!("0.6.1 round trip: worst relative scale difference {worst:e}");
}

/// [`sample_export`] with enough more activations that an unsorted writer could not pass for a
/// sorted one by chance, named so that byte order (Python's `sort_keys`, which AIMET uses)
/// differs from insertion, case-insensitive and numeric order.
fn many_tensor_export() -> AimetEncodings {
    let mut out = sample_export();
    let encoding = Encoding::from_range(-1.0, 3.0, Bitwidth::B8, Schema::Asymmetric).unwrap();
    let names = (0..24)
        .map(|i| format!("relu_{}.tmp_0", (i * 7) % 24))
        .chain(["Z_out", "a_in", "conv10_out", "_first"].map(String::from));
    for name in names {
        out.activations
            .insert(name, FixedEncoding::PerTensor(encoding));
    }
    out
}

/// Every object's keys, at every depth, in the order the text has them (serde_json's
/// `preserve_order`), with their path for messages.
fn object_keys_in_text_order<'a>(
    value: &'a Value,
    path: String,
    out: &mut Vec<(String, Vec<&'a str>)>,
) {
    match value {
        Value::Object(map) => {
            out.push((path.clone(), map.keys().map(String::as_str).collect()));
            for (key, child) in map {
                object_keys_in_text_order(child, format!("{path}.{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                object_keys_in_text_order(child, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// What `to_json` promises: AIMET's layout with keys sorted, and equal values give equal bytes.
#[test]
fn export_is_deterministic() {
    // Without `preserve_order` a parsed object lists its keys sorted whatever the text says, and
    // the order checks below could not fail.
    let probe: Value = serde_json::from_str(r#"{"b": 0, "a": 0}"#).unwrap();
    assert_eq!(
        probe.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["b", "a"],
        "serde_json must keep the text's key order for this test to mean anything"
    );

    let a = many_tensor_export();
    // The same tensors handed over in other orders give the same value and the same bytes (the
    // sections being sorted maps today; this holds the promise if they stop being).
    let mut orders: Vec<(Vec<_>, Vec<_>)> = Vec::new();
    let activations: Vec<_> = a.activations.clone().into_iter().collect();
    let parameters: Vec<_> = a.parameters.clone().into_iter().collect();
    orders.push((
        activations.iter().rev().cloned().collect(),
        parameters.iter().rev().cloned().collect(),
    ));
    let mut rotated = activations.clone();
    rotated.rotate_left(activations.len() / 3);
    orders.push((rotated, parameters.clone()));
    for (activations, parameters) in orders {
        let b = AimetEncodings {
            activations: activations.into_iter().collect(),
            parameters: parameters.into_iter().collect(),
            quantizer_args: a.quantizer_args.clone(),
        };
        assert_eq!(a, b);
        for version in EncodingVersion::ALL {
            assert_eq!(a.to_json(version), b.to_json(version), "{version}");
        }
    }

    for version in EncodingVersion::ALL {
        let text = a.to_json(version);
        assert_eq!(text, a.to_json(version), "{version}: a second call differs");
        assert_eq!(
            text,
            a.clone().to_json(version),
            "{version}: a clone differs"
        );

        let document: Value = serde_json::from_str(&text).unwrap();
        let mut objects = Vec::new();
        object_keys_in_text_order(&document, String::from("$"), &mut objects);
        // At least the top level, producer, quantizer_args and every tensor's entry.
        let least = 3 + a.activations.len() + a.parameters.len();
        assert!(objects.len() >= least, "{version}: {}", objects.len());
        for (path, keys) in &objects {
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            assert_eq!(keys, &sorted, "{version}: keys of {path} out of order");
        }
        assert_eq!(
            objects[0].1,
            [
                "activation_encodings",
                "param_encodings",
                "producer",
                "quantizer_args",
                "version"
            ],
            "{version}"
        );

        // The tensors in each section, in text order: sorted by name, each exactly once.
        for (section, expected) in [
            ("activation_encodings", &a.activations),
            ("param_encodings", &a.parameters),
        ] {
            let names: Vec<&str> = match version {
                EncodingVersion::V0_6_1 => document[section]
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(String::as_str)
                    .collect(),
                EncodingVersion::V1_0_0 => document[section]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|entry| entry["name"].as_str().unwrap())
                    .collect(),
            };
            let mut sorted: Vec<&str> = expected.keys().map(String::as_str).collect();
            sorted.sort_unstable();
            assert_eq!(names, sorted, "{version}: {section}");
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.encodings");
    a.write(&path, EncodingVersion::V0_6_1).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        a.to_json(EncodingVersion::V0_6_1)
    );
    // Nothing but the file itself is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

// ---- the real AIMET files --------------------------------------------------------------------

fn aimet_files(fixtures: &common::Fixtures) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(fixtures.join("reference/aimet"))
        .expect("reference/aimet is part of the fixtures")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "encodings"))
        .collect();
    files.sort();
    files
}

#[test]
fn real_aimet_files_parse_and_both_versions_agree() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let files = aimet_files(&fixtures);
    assert_eq!(files.len(), 16, "{files:?}");
    let mut parsed = BTreeMap::new();
    let mut warnings = 0;
    for path in &files {
        let p = overrides::read(path).unwrap_or_else(|e| panic!("{}", render(&e)));
        // The only warnings: tensors whose range in the file is below the seed's minimum range
        // (near-constant tensors, AIMET's scale floor 2^-23), which the recomputation widens.
        let mut narrow = std::collections::BTreeSet::new();
        for warning in &p.warnings {
            if let WarningKind::ScaleDisagrees {
                ref tensor,
                given,
                recomputed,
                ..
            } = warning.kind
            {
                let steps = fixed(p.overrides.get(tensor).unwrap()).encodings()[0]
                    .bitwidth
                    .steps();
                assert!(
                    given * steps < MIN_RANGE * (1.0 + 1e-9),
                    "{}",
                    render(warning)
                );
                assert!(
                    close(recomputed, MIN_RANGE / steps, 1e-12),
                    "{}",
                    render(warning)
                );
                narrow.insert(tensor.clone());
            }
        }
        for warning in &p.warnings {
            match &warning.kind {
                WarningKind::ScaleDisagrees { .. } => {}
                WarningKind::OffsetDisagrees { tensor, .. } if narrow.contains(tensor) => {}
                _ => panic!("{}", render(warning)),
            }
        }
        warnings += p.warnings.len();
        assert!(
            p.overrides
                .activations
                .values()
                .chain(p.overrides.parameters.values())
                .all(|o| matches!(o, Override::Fixed(_))),
            "{path:?}"
        );
        parsed.insert(path.file_name().unwrap().to_string_lossy().into_owned(), p);
    }
    eprintln!("{} files read, {warnings} warnings", files.len());
    let cls = &parsed["cls.tf_w8a8.v061.encodings"].overrides;
    assert_eq!((cls.activations.len(), cls.parameters.len()), (169, 54));
    let det = &parsed["det.tf_w8a8.v061.encodings"].overrides;
    assert_eq!((det.activations.len(), det.parameters.len()), (427, 65));

    let mut worst = 0f64;
    let mut compared = 0;
    for (name, v061) in &parsed {
        let Some(stem) = name.strip_suffix(".v061.encodings") else {
            continue;
        };
        let v100 = &parsed[&format!("{stem}.v100.encodings")].overrides;
        let v061 = &v061.overrides;
        // Per-channel files list a one-channel weight as PER_CHANNEL in 1.0.0 and as a single
        // entry in 0.6.1; compare the encodings themselves.
        let flatten = |o: &overrides::Overrides| {
            let mut flat = o.clone();
            for map in [&mut flat.activations, &mut flat.parameters] {
                for over in map.values_mut() {
                    if let Override::Fixed(FixedEncoding::PerChannel(list)) = over
                        && list.len() == 1
                    {
                        *over = Override::Fixed(FixedEncoding::PerTensor(list[0]));
                    }
                }
            }
            flat
        };
        let (a, b) = (flatten(v061), flatten(v100));
        // The one exception: 0.6.1's min/max are widened to the seed's minimum range (1e-4)
        // when recomputed, 1.0.0's scale is taken as given. Only constant-zero tensors (AIMET's
        // scale 2^-23) have such a range.
        let (mut a, mut b) = (a, b);
        for map in [&mut b.activations, &mut b.parameters] {
            map.retain(|_, o| {
                fixed(o)
                    .encodings()
                    .iter()
                    .all(|e| e.max - e.min >= MIN_RANGE)
            });
        }
        let kept: Vec<String> = b
            .activations
            .keys()
            .chain(b.parameters.keys())
            .cloned()
            .collect();
        let narrow = a.activations.len() + a.parameters.len() - kept.len();
        a.activations.retain(|k, _| b.activations.contains_key(k));
        a.parameters.retain(|k, _| b.parameters.contains_key(k));
        eprintln!(
            "{stem}: {} tensors compared, {narrow} below the minimum range",
            kept.len()
        );
        worst = worst.max(assert_same_encodings(&a, &b, 1e-12));
        compared += kept.len();
    }
    eprintln!("0.6.1 vs 1.0.0: {compared} tensors, worst relative scale difference {worst:e}");
}

#[test]
fn real_aimet_file_re_exported_reads_back_equal() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    for name in [
        "cls.tf_w8a8_pc.v061.encodings",
        "det.tf_w8a16.v061.encodings",
    ] {
        let path = fixtures.join(format!("reference/aimet/{name}"));
        let parsed = overrides::read(&path).unwrap();
        let export = AimetEncodings {
            activations: parsed
                .overrides
                .activations
                .iter()
                .map(|(k, o)| (k.clone(), fixed(o).clone()))
                .collect(),
            parameters: parsed
                .overrides
                .parameters
                .iter()
                .map(|(k, o)| (k.clone(), fixed(o).clone()))
                .collect(),
            quantizer_args: QuantizerArgs::default(),
        };
        for version in [EncodingVersion::V0_6_1, EncodingVersion::V1_0_0] {
            let text = export.to_json(version);
            let back = overrides::parse(name, text).unwrap();
            assert!(back.warnings.is_empty(), "{}", render_warnings(&back));
            let worst = assert_same_encodings(&back.overrides, &parsed.overrides, 1e-12);
            eprintln!("{name} re-exported as {version}: worst relative scale difference {worst:e}");
        }
    }
}
