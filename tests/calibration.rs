//! Calibration against the peers on the real models: float ranges and min-max encodings against
//! onnxruntime, quantized-weight calibration against AIMET's tf exports, weight encodings against
//! the seed's symmetric formula, and sqnr against AIMET's tf_enhanced — each on every tensor,
//! with the few tensors where a peer applies a rule of its own named in the test with its reason.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use quant::calib::InputList;
use quant::encoding::{Bitwidth, Encoding, Schema, TensorEncoding};
use quant::engine::oneshot::{self, OneShot};
use quant::graph::Graph;
use quant::manifest::{CalibrationMethod, Percentile, QuantizerSettings};
use quant::onnx::OnnxModel;
use quant::overrides::Overrides;
use quant::quantizer::{self, ModelEncodings, SampleStatistics};
use quant::run::FloatRunner;
use quant::stats::TensorStatistics;
use rayon::prelude::*;
use serde_json::Value;

/// qairt-quantizer's defaults: 8/8/8 bits, min-max, asymmetric, float weights while calibrating.
fn defaults() -> QuantizerSettings {
    QuantizerSettings {
        act_bitwidth: Bitwidth::B8,
        weights_bitwidth: Bitwidth::B8,
        bias_bitwidth: Bitwidth::B8,
        float_bitwidth: None,
        act_calibration: CalibrationMethod::MinMax,
        param_calibration: CalibrationMethod::MinMax,
        act_schema: Schema::Asymmetric,
        param_schema: Schema::Asymmetric,
        percentile: Percentile::default(),
        per_channel: false,
        per_row: false,
        calibrate_with_quantized_weights: false,
        float_bias_bitwidth: Default::default(),
        quantsim_config: Default::default(),
    }
}

#[test]
fn the_quantizers_default_is_qairt_quantizers() {
    assert_eq!(QuantizerSettings::default(), defaults());
}

/// `--param_quantizer_schema symmetric --calibrate_with_quantized_weights`: AIMET's way.
fn aimet_like(act_calibration: CalibrationMethod) -> QuantizerSettings {
    QuantizerSettings {
        act_calibration,
        param_schema: Schema::Symmetric,
        calibrate_with_quantized_weights: true,
        ..defaults()
    }
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// One calibration of a model: the graph, the model the samples ran through (weights
/// fake-quantized or not) and the merged statistics by activation name.
struct Calibrated {
    graph: Graph,
    calibration_model: OnnxModel,
    statistics: HashMap<String, TensorStatistics>,
}

impl Calibrated {
    fn encode(&self, settings: &QuantizerSettings) -> ModelEncodings {
        quantizer::encode_model(
            &self.graph,
            &self.statistics,
            &Overrides::default(),
            settings,
        )
        .unwrap()
    }

    fn range(&self, name: &str) -> Option<(f32, f32)> {
        self.statistics.get(name).and_then(|s| s.min_max.range())
    }
}

/// The calibration pass of `quant quantize`, spelled out so that one pass can serve several
/// encodings (8 and 16 bit, weight settings) and so the model it ran is at hand.
fn calibrate(model: &Path, list: &Path, settings: &QuantizerSettings) -> Calibrated {
    let model = OnnxModel::read(model).unwrap();
    let graph = Graph::from_model(&model).unwrap();
    let calibration_model =
        quantizer::calibration_model(&model, &graph, &Overrides::default(), settings)
            .unwrap()
            .unwrap_or(model);
    let runner = FloatRunner::new(&calibration_model.to_bytes(), &[]).unwrap();
    let list = InputList::read(list).unwrap();
    let stats_settings = quantizer::statistics_settings(settings);
    let merged = list
        .samples
        .par_iter()
        .map(|sample| {
            let loaded = list.load(sample, runner.input_specs()).unwrap();
            quantizer::sample_statistics(&runner, &loaded, stats_settings).unwrap()
        })
        .reduce(
            || SampleStatistics {
                tensors: Vec::new(),
            },
            |mut a, b| {
                quantizer::merge_statistics(&mut a, &b);
                a
            },
        );
    let statistics = runner
        .activation_names()
        .iter()
        .cloned()
        .zip(merged.tensors)
        .collect();
    Calibrated {
        graph,
        calibration_model,
        statistics,
    }
}

fn prep(fixtures: &common::Fixtures, model: &str) -> (PathBuf, PathBuf) {
    (
        fixtures.join(format!("models/{model}.prep.onnx")),
        fixtures.join(format!("{model}/calib/input_list.txt")),
    )
}

/// Float-weight and quantized-weight calibrations of each `.prep` model, shared by the tests.
fn calibrated(model: &str, quantized_weights: bool) -> Option<&'static Calibrated> {
    static CELLS: [OnceLock<Calibrated>; 4] = [const { OnceLock::new() }; 4];
    let fixtures = common::fixtures()?;
    let index = usize::from(model == "det") * 2 + usize::from(quantized_weights);
    Some(CELLS[index].get_or_init(|| {
        let (model, list) = prep(&fixtures, model);
        let settings = if quantized_weights {
            aimet_like(CalibrationMethod::MinMax)
        } else {
            defaults()
        };
        calibrate(&model, &list, &settings)
    }))
}

fn single(encoding: &TensorEncoding) -> &Encoding {
    match encoding {
        TensorEncoding::PerTensor(e) => e,
        other => panic!("expected a per-tensor encoding, got {other:?}"),
    }
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
}

// ---------------------------------------------------------------------------------------------
// Every model form calibrates.

/// A list of the first `count` samples of `list`, with absolute paths, in `dir`.
fn first_samples(list: &Path, count: usize, dir: &Path) -> PathBuf {
    let folder = list.parent().unwrap();
    let text: String = std::fs::read_to_string(list)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(count)
        .map(|l| format!("{}\n", folder.join(l.trim()).display()))
        .collect();
    let path = dir.join("input_list.txt");
    std::fs::write(&path, text).unwrap();
    path
}

fn one_shot(model: PathBuf, list: PathBuf, dims: &[u64]) -> oneshot::OneShotOutput {
    let job = OneShot {
        model,
        input_list: Some(list),
        overrides: None,
        input_dims: if dims.is_empty() {
            Vec::new()
        } else {
            vec![("x".to_string(), dims.to_vec())]
        },
        settings: defaults(),
        algorithms: Default::default(),
        adaround: Default::default(),
        adaround_names: Default::default(),
        jobs: None,
    };
    oneshot::quantize(&job, |_, _| {}).unwrap()
}

fn quantizes_every_form(model: &str, dims: &[u64], shipped_counts: (usize, usize)) {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let list = first_samples(
        &fixtures.join(format!("{model}/calib/input_list.txt")),
        2,
        dir.path(),
    );
    let shipped = one_shot(
        fixtures.join(format!("models/{model}.onnx")),
        list.clone(),
        dims,
    );
    let canonical = one_shot(
        fixtures.join(format!("models/{model}.canonical.onnx")),
        list.clone(),
        dims,
    );
    let prep = one_shot(
        fixtures.join(format!("models/{model}.prep.onnx")),
        list,
        &[],
    );
    // Constant nodes and initializers are the same parameters: same encodings, byte for byte.
    let version = quant::export::aimet::EncodingVersion::default();
    assert_eq!(
        shipped.encodings.to_json(version),
        canonical.encodings.to_json(version)
    );
    assert_eq!(
        (
            shipped.encodings.activations.len(),
            shipped.encodings.parameters.len()
        ),
        shipped_counts
    );
    assert_eq!(prep.samples, 2);
    // The prep model's encodings are those of its own calibration.
    let own = calibrated(model, false).unwrap();
    let prep_names: Vec<&str> = prep
        .encodings
        .activations
        .keys()
        .map(|n| n.as_str())
        .collect();
    let encoded = own.encode(&defaults());
    assert_eq!(
        prep_names,
        encoded
            .activations
            .keys()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
    );
}

#[test]
fn cls_quantizes_as_shipped_canonical_and_prep() {
    quantizes_every_form("cls", &[1, 3, 48, 192], (344, 124));
}

#[test]
fn det_quantizes_as_shipped_canonical_and_prep() {
    quantizes_every_form("det", &[1, 3, 320, 320], (533, 122));
}

// ---------------------------------------------------------------------------------------------
// Float ranges against onnxruntime.

fn ranges_match_float_stats(model: &str) -> usize {
    let Some(fixtures) = common::fixtures() else {
        return 0;
    };
    let ours = calibrated(model, false).unwrap();
    let reference = json(&fixtures.join(format!("reference/float_stats/{model}.prep.json")));
    let activations = reference["activations"].as_object().unwrap();
    let mut compared = 0;
    for (name, a) in activations {
        let (min, max) = (a["min"].as_f64().unwrap(), a["max"].as_f64().unwrap());
        let (our_min, our_max) = ours
            .range(name)
            .unwrap_or_else(|| panic!("{model}: no statistics for {name}"));
        let tolerance = 1e-4 * (max - min).max(f64::MIN_POSITIVE);
        assert!(
            (f64::from(our_min) - min).abs() <= tolerance
                && (f64::from(our_max) - max).abs() <= tolerance,
            "{model} {name}: ours [{our_min}, {our_max}], onnxruntime [{min}, {max}]"
        );
        compared += 1;
    }
    compared
}

#[test]
fn cls_prep_activation_ranges_match_onnxruntime() {
    if common::fixtures().is_some() {
        assert_eq!(ranges_match_float_stats("cls"), 180);
    }
}

#[test]
fn det_prep_activation_ranges_match_onnxruntime() {
    if common::fixtures().is_some() {
        assert_eq!(ranges_match_float_stats("det"), 329);
    }
}

// ---------------------------------------------------------------------------------------------
// Min-max encodings against onnxruntime's MinMax (float weights).

/// Compares activation encodings with an ORT `quantize_static` reference; returns the names that
/// differ (scale beyond 1e-6 relative or zero point ≠ −offset) and how many were compared.
fn compare_with_onnxruntime(
    model: &str,
    bitwidth: Bitwidth,
    reference: &str,
) -> (usize, BTreeMap<String, String>) {
    let fixtures = common::fixtures().unwrap();
    let settings = QuantizerSettings {
        act_bitwidth: bitwidth,
        ..defaults()
    };
    let calibrated = calibrated(model, false).unwrap();
    let ours = calibrated.encode(&settings);
    let ort = json(&fixtures.join(format!("reference/ort/{model}.{reference}.json")));
    let mut compared = 0;
    let mut differ = BTreeMap::new();
    for (name, t) in ort["tensors"].as_object().unwrap() {
        if t["kind"] != "activation" {
            continue;
        }
        let Some(encoding) = ours.activations.get(name) else {
            continue;
        };
        let e = single(encoding);
        compared += 1;
        let (scale, zero_point) = (
            t["scale"].as_f64().unwrap(),
            t["zero_point"].as_i64().unwrap(),
        );
        if relative(e.scale, scale) > 1e-6 || -e.offset != zero_point {
            differ.insert(
                name.clone(),
                format!(
                    "ours scale {} offset {} from {:?}, onnxruntime scale {scale} zero point \
                     {zero_point} from [{}, {}]",
                    e.scale,
                    e.offset,
                    calibrated.range(name),
                    t["calibrated_min"],
                    t["calibrated_max"]
                ),
            );
        }
    }
    (compared, differ)
}

fn assert_onnxruntime(
    model: &str,
    bitwidth: Bitwidth,
    reference: &str,
    expected_compared: usize,
    exceptions: &[(&str, &str)],
) {
    if common::fixtures().is_none() {
        return;
    }
    let (compared, differ) = compare_with_onnxruntime(model, bitwidth, reference);
    eprintln!(
        "{model} {reference}: {} of {compared} activation encodings equal",
        compared - differ.len()
    );
    for (name, why) in &differ {
        eprintln!("  differs: {name}: {why}");
    }
    assert_eq!(compared, expected_compared);
    let names: Vec<&str> = differ.keys().map(|n| n.as_str()).collect();
    let expected: Vec<&str> = exceptions.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, expected, "{differ:#?}");
}

/// tract and onnxruntime sum a Conv in different orders: the tensor's max differs by ~2e-6
/// relative (relu_5.tmp_0: 22.92493 vs 22.924881; p2o.Mul.125: 29.442247 vs 29.442278), within
/// the 1e-4-of-range tolerance of the float statistics but beyond 1e-6 in scale.
const FLOAT_ROUNDING: &str = "tract vs onnxruntime float rounding, ~2e-6 relative in range";
/// The minimum differs from onnxruntime's in its last float32 digit, and −min/scale is
/// 23356.5002: the zero point rounds to the other side of the half step.
const FLOAT_ROUNDING_AT_HALF: &str = "1-ulp range difference at a half step of the zero point";

#[test]
fn cls_min_max_u8_matches_onnxruntime() {
    assert_onnxruntime("cls", Bitwidth::B8, "minmax_pt_u8", 146, &[]);
}

#[test]
fn cls_min_max_u16_matches_onnxruntime() {
    assert_onnxruntime(
        "cls",
        Bitwidth::B16,
        "minmax_pt_u16",
        146,
        &[("batch_norm_10.tmp_2", FLOAT_ROUNDING_AT_HALF)],
    );
}

#[test]
fn det_min_max_u8_matches_onnxruntime() {
    assert_onnxruntime(
        "det",
        Bitwidth::B8,
        "minmax_pt_u8",
        293,
        &[("relu_5.tmp_0", FLOAT_ROUNDING)],
    );
}

#[test]
fn det_min_max_u16_matches_onnxruntime() {
    assert_onnxruntime(
        "det",
        Bitwidth::B16,
        "minmax_pt_u16",
        293,
        &[
            ("p2o.Mul.125", FLOAT_ROUNDING),
            ("relu_5.tmp_0", FLOAT_ROUNDING),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Quantized-weight calibration against AIMET's tf exports.

/// Whether `min / scale` lies within 1e-4 of a half step: there a last-digit difference in the
/// range may round the offset either way.
fn near_half(min: f64, scale: f64) -> bool {
    let x = (min.min(0.0) / scale).abs();
    (x - x.floor() - 0.5).abs() <= 1e-4
}

/// Compares activation and parameter encodings with an AIMET 0.6.1 export: activations within
/// 1e-4 relative in scale and exactly in offset (±1 near a half step), parameters within 1e-6
/// relative (AIMET stores weight scales as float32) and exactly in offset, channel by channel.
fn compare_with_aimet(model: &str, bitwidth: Bitwidth, reference: &str) -> AimetComparison {
    let fixtures = common::fixtures().unwrap();
    let settings = QuantizerSettings {
        act_bitwidth: bitwidth,
        ..aimet_like(CalibrationMethod::MinMax)
    };
    let calibrated = calibrated(model, true).unwrap();
    let ours = calibrated.encode(&settings);
    let aimet = json(&fixtures.join(format!(
        "reference/aimet/{model}.{reference}.v061.encodings"
    )));
    let mut out = AimetComparison::default();
    for (name, entries) in aimet["activation_encodings"].as_object().unwrap() {
        let Some(encoding) = ours.activations.get(name) else {
            continue;
        };
        let e = single(encoding);
        let (scale, offset) = (
            entries[0]["scale"].as_f64().unwrap(),
            entries[0]["offset"].as_f64().unwrap() as i64,
        );
        out.activations += 1;
        let observed_min = calibrated.range(name).map_or(0.0, |r| f64::from(r.0));
        let offset_ok = e.offset == offset
            || ((e.offset - offset).abs() == 1 && near_half(observed_min, e.scale));
        let scale_error = relative(e.scale, scale);
        if scale_error > 1e-4 || !offset_ok {
            out.differ.insert(
                name.clone(),
                (
                    scale_error,
                    format!(
                        "ours scale {} offset {} from {:?}, AIMET scale {scale} offset {offset}",
                        e.scale,
                        e.offset,
                        calibrated.range(name),
                    ),
                ),
            );
        }
    }
    for (name, entries) in aimet["param_encodings"].as_object().unwrap() {
        let Some(encoding) = ours.parameters.get(name) else {
            continue;
        };
        out.parameters += 1;
        let entries = entries.as_array().unwrap();
        let ours = encoding.encodings();
        let same = ours.len() == entries.len()
            && ours.iter().zip(entries).all(|(e, entry)| {
                relative(e.scale, entry["scale"].as_f64().unwrap()) <= 1e-6
                    && e.offset == entry["offset"].as_f64().unwrap() as i64
            });
        if !same {
            out.parameters_differ.insert(
                name.clone(),
                format!("ours {:?}, AIMET {}", ours.first(), entries[0]),
            );
        }
    }
    out
}

/// What [`compare_with_aimet`] found.
#[derive(Default)]
struct AimetComparison {
    /// Activations both encode.
    activations: usize,
    /// Those that differ: relative scale error and a description.
    differ: BTreeMap<String, (f64, String)>,
    /// Parameters both encode.
    parameters: usize,
    /// Those that differ.
    parameters_differ: BTreeMap<String, String>,
}

/// Asserts a comparison with AIMET: the counts compared, every parameter equal, the `explained`
/// activations differing (each for the reason given), at least `min_equal` activations equal,
/// and every other difference within `unexplained_scale` relative in scale.
fn assert_aimet(
    model: &str,
    bitwidth: Bitwidth,
    reference: &str,
    expected: (usize, usize),
    explained: &[(&str, &str)],
    min_equal: usize,
    unexplained_scale: f64,
) {
    if common::fixtures().is_none() {
        return;
    }
    let c = compare_with_aimet(model, bitwidth, reference);
    let equal = c.activations - c.differ.len();
    eprintln!(
        "{model} {reference}: {equal} of {} activation encodings equal, {} of {} parameter \
         encodings",
        c.activations,
        c.parameters - c.parameters_differ.len(),
        c.parameters
    );
    for (name, (error, why)) in &c.differ {
        eprintln!("  differs: {name}: {why} ({error:.2e} relative)");
    }
    assert_eq!((c.activations, c.parameters), expected);
    assert!(c.parameters_differ.is_empty(), "{:#?}", c.parameters_differ);
    for (name, reason) in explained {
        assert!(
            c.differ.contains_key(*name),
            "{model} {name} was expected to differ ({reason}) but equals AIMET's"
        );
    }
    assert!(
        equal >= min_equal,
        "{model} {reference}: {equal} equal < {min_equal}"
    );
    for (name, (error, why)) in &c.differ {
        if explained.iter().all(|(n, _)| n != name) {
            assert!(
                *error <= unexplained_scale,
                "{model} {reference} {name}: {why} ({error:.2e} relative)"
            );
        }
    }
}

/// AIMET's minimum scale is 2^-23; the seed's minimum range is 0.0001 (scale 0.0001/255).
const MIN_RANGE: &str = "constant 0 (or below 0.0001): seed minimum range 0.0001, AIMET 2^-23";
/// AIMET ties a Relu's output quantizer to its input's when the pair is not a supergroup (a
/// depthwise Conv, a BatchNormalization): the Relu output takes the pre-activation range,
/// negative minimum included. quant encodes the Relu output on its own range.
const RELU_TIE: &str = "AIMET ties the Relu output to its input's quantizer (negative min)";

const CLS_EXPLAINED: [(&str, &str); 4] = [
    ("Constant@88", MIN_RANGE),
    ("relu_1.tmp_0", RELU_TIE),
    ("relu_4.tmp_0", RELU_TIE),
    ("relu_6.tmp_0", RELU_TIE),
];

const DET_EXPLAINED: [(&str, &str); 4] = [
    ("batch_norm_1.tmp_4", RELU_TIE),
    (
        "p2o.Add.277",
        "AIMET ties a single-consumer Concat input to the Concat output's quantizer",
    ),
    ("p2o.helper.constant.121", MIN_RANGE),
    ("whswish_b_5.w_1", MIN_RANGE),
];

/// At 16 bits a one-value constant `c` gets scale |c|/65535, below AIMET's floor 2^-23 when
/// |c| < 0.0078: AIMET's scale is the floor.
const MIN_SCALE_16: &str = "one-value constant: |c|/65535 is below AIMET's minimum scale 2^-23";

const DET_EXPLAINED_16: [(&str, &str); 12] = [
    DET_EXPLAINED[0],
    DET_EXPLAINED[1],
    DET_EXPLAINED[2],
    DET_EXPLAINED[3],
    ("mobile_one_block_10.w_1", MIN_SCALE_16),
    ("mobile_one_block_2.w_1", MIN_SCALE_16),
    ("mobile_one_block_21.w_1", MIN_SCALE_16),
    ("mobile_one_block_6.w_1", MIN_SCALE_16),
    ("whswish_b_1.w_1", MIN_SCALE_16),
    ("whswish_b_13.w_1", MIN_SCALE_16),
    ("whswish_b_19.w_1", MIN_SCALE_16),
    ("whswish_b_27.w_1", MIN_SCALE_16),
];

// Every other activation encoding equals AIMET's: the weights are fake-quantized with AIMET's
// own float32 arithmetic while calibrating (`quantizer::calibrate`), so no unexplained
// difference is allowed. (With double-precision rounding, 3 of det's weights and some of cls's
// fell on the other side of a half step and moved every range downstream by up to 7.5e-4.)

#[test]
fn cls_quantized_weights_a8_match_aimet_tf() {
    assert_aimet(
        "cls",
        Bitwidth::B8,
        "tf_w8a8",
        (169, 54),
        &CLS_EXPLAINED,
        165,
        0.0,
    );
}

#[test]
fn cls_quantized_weights_a16_match_aimet_tf() {
    assert_aimet(
        "cls",
        Bitwidth::B16,
        "tf_w8a16",
        (169, 54),
        &CLS_EXPLAINED,
        165,
        0.0,
    );
}

#[test]
fn det_quantized_weights_a8_match_aimet_tf() {
    assert_aimet(
        "det",
        Bitwidth::B8,
        "tf_w8a8",
        (427, 65),
        &DET_EXPLAINED,
        423,
        0.0,
    );
}

#[test]
fn det_quantized_weights_a16_match_aimet_tf() {
    assert_aimet(
        "det",
        Bitwidth::B16,
        "tf_w8a16",
        (427, 65),
        &DET_EXPLAINED_16,
        415,
        0.0,
    );
}

// ---------------------------------------------------------------------------------------------
// Weight encodings against the seed's symmetric formula on the true ranges.

/// The seed's symmetric 8-bit encoding of `[min, max]`: scale = absmax / 127 (absmax floored
/// at half the minimum range 0.0001), offset −128.
fn seed_symmetric(min: f64, max: f64) -> (f64, i64) {
    (min.abs().max(max.abs()).max(0.0001 / 2.0) / 127.0, -128)
}

/// Checks every Conv/ConvTranspose/Gemm weight; returns (per-tensor, per-channel) counts.
fn weights_follow_the_seed(model: &str, per_channel: bool) -> (usize, usize) {
    let fixtures = common::fixtures().unwrap();
    let settings = QuantizerSettings {
        param_schema: Schema::Symmetric,
        per_channel,
        per_row: per_channel,
        ..defaults()
    };
    let ours = calibrated(model, false).unwrap().encode(&settings);
    let reference = json(&fixtures.join(format!("reference/float_stats/{model}.prep.json")));
    let mut counts = (0, 0);
    for (name, p) in reference["parameters"].as_object().unwrap() {
        let is_weight = p["consumers"].as_array().unwrap().iter().any(|c| {
            c["input_index"] == 1
                && matches!(
                    c["op_type"].as_str().unwrap(),
                    "Conv" | "ConvTranspose" | "Gemm" | "MatMul"
                )
        });
        if !is_weight {
            continue;
        }
        let encoding = ours
            .parameters
            .get(name)
            .unwrap_or_else(|| panic!("{model}: no encoding for weight {name}"));
        let ranges: Vec<(f64, f64)> = match encoding {
            TensorEncoding::PerTensor(_) => {
                counts.0 += 1;
                vec![(p["min"].as_f64().unwrap(), p["max"].as_f64().unwrap())]
            }
            TensorEncoding::PerChannel { .. } => {
                counts.1 += 1;
                // Conv/ConvTranspose along their output-channel axis; Gemm along its N axis.
                let along = match p.get("output_channel_axis").and_then(Value::as_u64) {
                    Some(0) => &p["per_row"],
                    Some(_) => &p["per_column"],
                    None => &p["per_channel"],
                };
                let mins = along["min"].as_array().unwrap();
                let maxs = along["max"].as_array().unwrap();
                mins.iter()
                    .zip(maxs)
                    .map(|(a, b)| (a.as_f64().unwrap(), b.as_f64().unwrap()))
                    .collect()
            }
            TensorEncoding::Float { .. } => panic!("{model}: {name} kept float"),
        };
        let got = encoding.encodings();
        assert_eq!(got.len(), ranges.len(), "{model} {name}: channel count");
        for (channel, (e, &(min, max))) in got.iter().zip(&ranges).enumerate() {
            let (scale, offset) = seed_symmetric(min, max);
            assert!(
                relative(e.scale, scale) <= 1e-12 && e.offset == offset,
                "{model} {name} channel {channel}: ours scale {} offset {}, seed {scale} {offset}",
                e.scale,
                e.offset
            );
        }
    }
    counts
}

#[test]
fn cls_weight_encodings_follow_the_seed_formula() {
    if common::fixtures().is_some() {
        assert_eq!(weights_follow_the_seed("cls", false), (54, 0));
        assert_eq!(weights_follow_the_seed("cls", true), (0, 54));
    }
}

#[test]
fn det_weight_encodings_follow_the_seed_formula() {
    if common::fixtures().is_some() {
        assert_eq!(weights_follow_the_seed("det", false), (64, 0));
        assert_eq!(weights_follow_the_seed("det", true), (0, 64));
    }
}

// ---------------------------------------------------------------------------------------------
// sqnr against AIMET's tf_enhanced: SQNR of the calibration activations themselves.

/// An 8-bit AIMET grid: (scale, offset).
type Grid = (f64, f64);

/// Quantize-dequantize of one value on an AIMET grid (`offset <= 0`, unsigned integers).
fn fake_quantize(x: f64, scale: f64, offset: f64, steps: f64) -> f64 {
    ((x / scale).round() - offset)
        .clamp(0.0, steps)
        .mul_add(scale, offset * scale)
}

fn sqnr_db(signal: f64, noise: f64) -> f64 {
    if noise == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}

/// Per activation both encode: (name, our SQNR, AIMET's), in dB, over the first `samples`
/// calibration samples, re-captured from the same weights-quantized model.
fn sqnr_against_tf_enhanced(model: &str, samples: usize) -> Vec<(String, f64, f64)> {
    let fixtures = common::fixtures().unwrap();
    let settings = aimet_like(CalibrationMethod::Sqnr);
    let (model_path, list_path) = prep(&fixtures, model);
    let dir = tempfile::tempdir().unwrap();
    let list_path = first_samples(&list_path, samples, dir.path());
    let calibrated = calibrate(&model_path, &list_path, &settings);
    let ours = calibrated.encode(&settings);
    let aimet = json(&fixtures.join(format!("reference/aimet/{model}.tfe_w8a8.v061.encodings")));
    let runner = FloatRunner::new(&calibrated.calibration_model.to_bytes(), &[]).unwrap();
    // Per captured activation: (our scale, offset), (AIMET's scale, offset).
    let grids: Vec<Option<(Grid, Grid)>> = runner
        .activation_names()
        .iter()
        .map(|name| {
            let e = single(ours.activations.get(name)?);
            let a = &aimet["activation_encodings"].get(name)?[0];
            Some((
                (e.scale, e.offset as f64),
                (a["scale"].as_f64()?, a["offset"].as_f64()?),
            ))
        })
        .collect();
    let list = InputList::read(&list_path).unwrap();
    // Per activation: Σx², Σ(x − ours(x))², Σ(x − AIMET(x))².
    let sums = list
        .samples
        .par_iter()
        .map(|sample| {
            let loaded = list.load(sample, runner.input_specs()).unwrap();
            let mut sums = vec![[0.0f64; 3]; grids.len()];
            runner
                .run(&loaded.tensors, |index, data, _| {
                    let Some((ours, theirs)) = grids[index] else {
                        return;
                    };
                    let s = &mut sums[index];
                    for &x in data {
                        let x = f64::from(x);
                        s[0] += x * x;
                        s[1] += (x - fake_quantize(x, ours.0, ours.1, 255.0)).powi(2);
                        s[2] += (x - fake_quantize(x, theirs.0, theirs.1, 255.0)).powi(2);
                    }
                })
                .unwrap();
            sums
        })
        .reduce(
            || vec![[0.0f64; 3]; grids.len()],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    for k in 0..3 {
                        x[k] += y[k];
                    }
                }
                a
            },
        );
    runner
        .activation_names()
        .iter()
        .zip(&grids)
        .zip(&sums)
        .filter(|((_, grid), s)| grid.is_some() && s[0] > 0.0)
        .map(|((name, _), s)| (name.clone(), sqnr_db(s[0], s[1]), sqnr_db(s[0], s[2])))
        .collect()
}

/// Compares, prints the summary (and every activation below the bar) and asserts the means.
fn sqnr_summary(model: &str, samples: usize) -> Vec<(String, f64, f64)> {
    let results = sqnr_against_tf_enhanced(model, samples);
    let finite: Vec<_> = results
        .iter()
        .filter(|r| r.1.is_finite() && r.2.is_finite())
        .collect();
    let mean = |ours: bool| {
        finite
            .iter()
            .map(|r| if ours { r.1 } else { r.2 })
            .sum::<f64>()
            / finite.len() as f64
    };
    let worst = results
        .iter()
        .min_by(|a, b| (a.1 - a.2).total_cmp(&(b.1 - b.2)))
        .unwrap();
    let within = results.iter().filter(|r| r.1 >= r.2 - 0.1).count();
    eprintln!(
        "{model} sqnr vs tf_enhanced over {samples} samples: {} activations, mean {:.2} dB vs \
         {:.2} dB (over {} with finite SQNR), ours ≥ AIMET's − 0.1 dB on {within}, worst \
         margin {:+.3} dB ({})",
        results.len(),
        mean(true),
        mean(false),
        finite.len(),
        worst.1 - worst.2,
        worst.0
    );
    for (name, ours, theirs) in results.iter().filter(|r| r.1 < r.2 - 0.1) {
        eprintln!("  below: {name}: {ours:.3} dB vs {theirs:.3} dB");
    }
    assert!(
        mean(true) >= mean(false),
        "{model}: mean SQNR below tf_enhanced's"
    );
    results
}

fn assert_sqnr_at_least_tf_enhanced(model: &str, samples: usize) {
    if common::fixtures().is_none() {
        return;
    }
    let results = sqnr_summary(model, samples);
    for (name, ours, theirs) in &results {
        assert!(
            *ours >= theirs - 0.1,
            "{model} {name}: sqnr {ours:.3} dB < tf_enhanced {theirs:.3} dB − 0.1"
        );
    }
}

/// The acceptance criterion itself: on every activation, ours ≥ tf_enhanced − 0.1 dB.
#[test]
fn cls_sqnr_is_at_least_tf_enhanced_on_every_activation() {
    assert_sqnr_at_least_tf_enhanced("cls", 32);
}

/// As above, on det. `sigmoid_0.tmp_0` holds 73 841 values exactly at its maximum 1.0: the
/// histogram counts values at the extremes, so the search sees that a grid point there makes
/// them exact.
#[test]
fn det_sqnr_is_at_least_tf_enhanced_on_every_activation() {
    assert_sqnr_at_least_tf_enhanced("det", 16);
}
