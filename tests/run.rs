//! Float execution against onnxruntime's reference statistics, and the QuantSim hook.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use ndarray::ArrayD;
use quant::calib::InputList;
use quant::run::{FloatRunner, RunError};
use rayon::prelude::*;

/// Reference min/max per activation from a `float_stats` JSON.
fn reference_ranges(path: &Path) -> HashMap<String, (f64, f64)> {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    json["activations"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, a)| {
            (
                name.clone(),
                (a["min"].as_f64().unwrap(), a["max"].as_f64().unwrap()),
            )
        })
        .collect()
}

fn runner(model: &Path, dims: &[(&str, &[usize])]) -> FloatRunner {
    let dims: Vec<(String, Vec<usize>)> = dims
        .iter()
        .map(|(n, d)| (n.to_string(), d.to_vec()))
        .collect();
    FloatRunner::new(&std::fs::read(model).unwrap(), &dims).unwrap()
}

fn load_all(runner: &FloatRunner, list: &Path, count: usize) -> Vec<Vec<ArrayD<f32>>> {
    let list = InputList::read(list).unwrap();
    (0..count.min(list.samples.len()))
        .map(|i| list.load_sample(i, runner.input_specs()).unwrap().tensors)
        .collect()
}

/// Min/max per activation over `samples`, run in parallel with a deterministic merge.
fn ranges(runner: &FloatRunner, samples: &[Vec<ArrayD<f32>>]) -> Vec<(f32, f32)> {
    let empty = vec![(f32::INFINITY, f32::NEG_INFINITY); runner.activation_names().len()];
    let per_sample: Vec<Vec<(f32, f32)>> = samples
        .par_iter()
        .map(|inputs| {
            let mut r = empty.clone();
            runner
                .run(inputs, |i, data, _| {
                    for v in data.iter().filter(|v| v.is_finite()) {
                        r[i].0 = r[i].0.min(*v);
                        r[i].1 = r[i].1.max(*v);
                    }
                })
                .unwrap();
            r
        })
        .collect();
    per_sample.into_iter().fold(empty, |acc, r| {
        acc.iter()
            .zip(&r)
            .map(|(a, b)| (a.0.min(b.0), a.1.max(b.1)))
            .collect()
    })
}

/// Every reference activation is captured under its name, and nothing else is.
fn assert_same_names(runner: &FloatRunner, reference: &HashMap<String, (f64, f64)>) {
    let ours: BTreeSet<&str> = runner
        .activation_names()
        .iter()
        .map(String::as_str)
        .collect();
    let theirs: BTreeSet<&str> = reference.keys().map(String::as_str).collect();
    let missing: Vec<_> = theirs.difference(&ours).collect();
    let extra: Vec<_> = ours.difference(&theirs).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    assert_eq!(
        ours.len(),
        runner.activation_names().len(),
        "a name is captured twice"
    );
}

/// |ours - reference| <= 1e-4 * (reference max - min) for both ends of every activation.
fn assert_ranges_match(
    runner: &FloatRunner,
    got: &[(f32, f32)],
    reference: &HashMap<String, (f64, f64)>,
) {
    let mut worst = (0.0f64, String::new());
    for (name, &(min, max)) in runner.activation_names().iter().zip(got) {
        let (rmin, rmax) = reference[name];
        let tol = 1e-4 * (rmax - rmin).max(f64::MIN_POSITIVE);
        let err = (min as f64 - rmin).abs().max((max as f64 - rmax).abs()) / tol;
        if err > worst.0 {
            worst = (err, name.clone());
        }
    }
    assert!(
        worst.0 <= 1.0,
        "{} is off by {} x tolerance",
        worst.1,
        worst.0
    );
}

#[test]
fn cls_prep_matches_onnxruntime_on_every_activation() {
    let Some(fx) = common::fixtures() else { return };
    let runner = runner(&fx.join("models/cls.prep.onnx"), &[]);
    let reference = reference_ranges(&fx.join("reference/float_stats/cls.prep.json"));
    assert_same_names(&runner, &reference);
    assert_eq!(runner.activation_names().len(), 180);
    let samples = load_all(&runner, &fx.join("cls/calib/input_list.txt"), 32);
    assert_eq!(samples.len(), 32);
    assert_ranges_match(&runner, &ranges(&runner, &samples), &reference);
}

#[test]
fn cls_as_shipped_with_input_dims_matches_onnxruntime() {
    let Some(fx) = common::fixtures() else { return };
    let runner = runner(&fx.join("models/cls.onnx"), &[("x", &[1, 3, 48, 192])]);
    let reference = reference_ranges(&fx.join("reference/float_stats/cls.json"));
    assert_same_names(&runner, &reference);
    assert_eq!(runner.activation_names().len(), 253);
    assert_eq!(runner.output_names(), ["save_infer_model/scale_0.tmp_1"]);
    let samples = load_all(&runner, &fx.join("cls/calib/input_list.txt"), 32);
    assert_ranges_match(&runner, &ranges(&runner, &samples), &reference);
}

#[test]
fn det_prep_captures_every_activation_within_the_reference_range() {
    let Some(fx) = common::fixtures() else { return };
    let runner = runner(&fx.join("models/det.prep.onnx"), &[]);
    let reference = reference_ranges(&fx.join("reference/float_stats/det.prep.json"));
    assert_same_names(&runner, &reference);
    // 3 of the 16 reference samples: each range must lie inside the 16-sample range
    let samples = load_all(&runner, &fx.join("det/calib/input_list.txt"), 3);
    let got = ranges(&runner, &samples);
    for (name, &(min, max)) in runner.activation_names().iter().zip(&got) {
        let (rmin, rmax) = reference[name];
        let tol = 1e-4 * (rmax - rmin);
        assert!(
            min as f64 >= rmin - tol && max as f64 <= rmax + tol,
            "{name}: [{min}, {max}] vs [{rmin}, {rmax}]"
        );
        assert!(min <= max, "{name} never seen");
    }
}

#[test]
fn tiny_two_inputs_match_onnxruntime() {
    let Some(fx) = common::fixtures() else { return };
    let runner = runner(&fx.join("reference/tiny/tiny.onnx"), &[]);
    let specs: Vec<_> = runner
        .input_specs()
        .iter()
        .map(|s| (s.name.as_str(), s.shape.clone()))
        .collect();
    assert_eq!(
        specs,
        [("input_a", vec![1, 3, 8, 8]), ("input_b", vec![1, 4, 8, 8])]
    );
    let reference = reference_ranges(&fx.join("reference/tiny/tiny.float_stats.json"));
    assert_same_names(&runner, &reference);
    let samples = load_all(&runner, &fx.join("reference/tiny/calib/input_list.txt"), 4);
    assert_eq!(samples.len(), 4);
    assert_ranges_match(&runner, &ranges(&runner, &samples), &reference);
}

#[test]
fn dynamic_dims_must_be_given() {
    let Some(fx) = common::fixtures() else { return };
    let bytes = std::fs::read(fx.join("models/cls.onnx")).unwrap();
    let err = FloatRunner::new(&bytes, &[]).unwrap_err();
    assert!(
        matches!(&err, RunError::UnknownDim { input, .. } if input == "x"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "input `x` has unknown dims (?,3,?,?); give them with --input_dim"
    );

    let err = FloatRunner::new(&bytes, &[("y".into(), vec![1, 3, 48, 192])]).unwrap_err();
    assert_eq!(err.to_string(), "the model has no input `y`");

    let prep = std::fs::read(fx.join("models/cls.prep.onnx")).unwrap();
    let err = FloatRunner::new(&prep, &[("x".into(), vec![1, 3, 32, 100])]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "--input_dim x [1, 3, 32, 100] contradicts the model's declared dims (1,3,48,192)"
    );
    // given dims equal to the declared ones are fine
    FloatRunner::new(&prep, &[("x".into(), vec![1, 3, 48, 192])]).unwrap();
}

#[test]
fn wrong_input_shape_is_an_error_not_a_panic() {
    let Some(fx) = common::fixtures() else { return };
    let runner = runner(&fx.join("models/cls.prep.onnx"), &[]);
    let bad = ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 3, 48, 100]));
    let err = runner.run(&[bad], |_, _, _| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        "input `x` must have shape [1, 3, 48, 192], got [1, 3, 48, 100]"
    );
    assert!(runner.run(&[], |_, _, _| {}).is_err());
}

#[test]
fn identity_hook_reproduces_the_float_run() {
    let Some(fx) = common::fixtures() else { return };
    let runner = runner(&fx.join("models/cls.prep.onnx"), &[]);
    let samples = load_all(&runner, &fx.join("cls/calib/input_list.txt"), 2);
    for inputs in &samples {
        let mut seen = vec![0usize; runner.activation_names().len()];
        let plain = runner.run(inputs, |i, _, _| seen[i] += 1).unwrap();
        assert!(
            seen.iter().all(|&n| n == 1),
            "each activation reported exactly once"
        );
        let mut hooked_seen = vec![0usize; seen.len()];
        let hooked = runner
            .run_with_hook(inputs, |i, _, _| hooked_seen[i] += 1)
            .unwrap();
        assert_eq!(hooked_seen, seen);
        assert_eq!(plain, hooked);
        assert_eq!(plain[0].shape(), [1, 2]);
    }
}

/// Rewriting one activation in the hook must reach its consumers: for every activation (but
/// the input-independent ones tract folds into constants) the model output changes.
fn every_hook_propagates(model: &str, dims: &[(&str, &[usize])], list: &str) -> usize {
    let Some(fx) = common::fixtures() else {
        return 0;
    };
    let runner = runner(&fx.join(model), dims);
    let inputs = &load_all(&runner, &fx.join(list), 1)[0];
    let baseline = runner.run(inputs, |_, _, _| {}).unwrap();
    let constants: BTreeSet<&str> = runner.constant_activations().collect();
    let fused: Vec<&str> = runner.unpropagated_activations().collect();
    let names = runner.activation_names();
    let unaffected: Vec<&str> = (0..names.len())
        .into_par_iter()
        .filter(|&target| !constants.contains(names[target].as_str()))
        .filter(|&target| !fused.contains(&names[target].as_str()))
        .filter(|&target| {
            let out = runner
                .run_with_hook(inputs, |i, data, _| {
                    if i == target {
                        // shift rather than zero: a tensor that is all zero already would
                        // otherwise look unhooked
                        data.iter_mut().for_each(|v| *v = *v * 0.5 + 0.25);
                    }
                })
                .unwrap();
            out == baseline
        })
        .map(|i| names[i].as_str())
        .collect();
    assert!(
        unaffected.is_empty(),
        "{} hooks do not propagate: {unaffected:?}",
        unaffected.len()
    );
    names.len() - constants.len() - fused.len()
}

#[test]
fn hooks_propagate_on_cls_prep() {
    let hooked = every_hook_propagates("models/cls.prep.onnx", &[], "cls/calib/input_list.txt");
    assert!(hooked == 180 || common::fixtures().is_none());
}

#[test]
fn hooks_propagate_on_cls_as_shipped() {
    let dims: &[(&str, &[usize])] = &[("x", &[1, 3, 48, 192])];
    let hooked = every_hook_propagates("models/cls.onnx", dims, "cls/calib/input_list.txt");
    // the 18 `Reshape@N` of constant biases are folded into constants, and the first Conv's
    // output into the BatchNormalization after it: 253 - 18 - 1
    assert!(hooked == 234 || common::fixtures().is_none(), "{hooked}");
}

#[test]
fn hooks_propagate_on_tiny() {
    let tiny = "reference/tiny/tiny.onnx";
    let hooked = every_hook_propagates(tiny, &[], "reference/tiny/calib/input_list.txt");
    assert!(hooked == 10 || common::fixtures().is_none(), "{hooked}");
}

#[test]
fn zeroing_one_activation_changes_the_output() {
    let Some(fx) = common::fixtures() else { return };
    let runner = runner(&fx.join("models/cls.prep.onnx"), &[]);
    let inputs = &load_all(&runner, &fx.join("cls/calib/input_list.txt"), 1)[0];
    let baseline = runner.run(inputs, |_, _, _| {}).unwrap();
    let target = runner
        .activation_names()
        .iter()
        .position(|n| n == "batch_norm_0.tmp_2")
        .expect("first conv output");
    let mut zeroed_shape = Vec::new();
    let changed = runner
        .run_with_hook(inputs, |i, data, shape| {
            if i == target {
                data.fill(0.0);
                zeroed_shape = shape.to_vec();
            }
        })
        .unwrap();
    assert_eq!(zeroed_shape, [1, 8, 24, 96]);
    assert_ne!(changed, baseline);
    // with the first conv's output zeroed the prediction no longer depends on the image
    let other = &load_all(&runner, &fx.join("cls/calib/input_list.txt"), 2)[1];
    let zero_first = |i: usize, d: &mut [f32], _: &[usize]| {
        if i == target {
            d.fill(0.0)
        }
    };
    assert_eq!(changed, runner.run_with_hook(other, zero_first).unwrap());
}

#[test]
fn decluttered_plan_agrees_with_the_optimized_one() {
    let Some(fx) = common::fixtures() else { return };
    let bytes = std::fs::read(fx.join("models/cls.prep.onnx")).unwrap();
    let optimized = FloatRunner::new(&bytes, &[]).unwrap();
    let decluttered =
        FloatRunner::with_plan_kind(&bytes, &[], quant::run::PlanKind::Decluttered).unwrap();
    assert_eq!(optimized.activation_names(), decluttered.activation_names());
    assert_eq!(decluttered.unpropagated_activations().count(), 0);
    let samples = load_all(&optimized, &fx.join("cls/calib/input_list.txt"), 2);
    let (a, b) = (ranges(&optimized, &samples), ranges(&decluttered, &samples));
    for ((name, x), y) in optimized.activation_names().iter().zip(&a).zip(&b) {
        let tol = 1e-5 * (x.1 - x.0).max(1.0);
        assert!(
            (x.0 - y.0).abs() <= tol && (x.1 - y.1).abs() <= tol,
            "{name}: {x:?} vs {y:?}"
        );
    }
}

/// Every activation of every sample, bit for bit.
fn activation_bits(runner: &FloatRunner, samples: &[Vec<ArrayD<f32>>]) -> Vec<Vec<u32>> {
    let mut bits = vec![Vec::new(); runner.activation_names().len()];
    for inputs in samples {
        runner
            .run(inputs, |i, data, _| {
                bits[i].extend(data.iter().map(|v| v.to_bits()))
            })
            .unwrap();
    }
    bits
}

#[test]
fn a_model_set_aside_runs_exactly_as_in_memory() {
    let Some(fx) = common::fixtures() else { return };
    // cls.prep keeps its weights in initializers (cls.onnx in `Constant` nodes, which stay).
    let path = fx.join("models/cls.prep.onnx");
    let original = std::fs::read(&path).unwrap();
    let in_memory = FloatRunner::new(&original, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = quant::onnx::OnnxModel::read(&path).unwrap();
    let aside = model.set_aside(dir.path()).unwrap();
    let written = std::fs::metadata(aside.runtime_model()).unwrap().len() as usize;
    assert!(
        written < original.len() / 8,
        "{written} of {} bytes",
        original.len()
    );
    let from_file = FloatRunner::from_file(&aside.runtime_model(), &[]).unwrap();
    assert_eq!(from_file.activation_names(), in_memory.activation_names());
    let samples = load_all(&in_memory, &fx.join("cls/calib/input_list.txt"), 4);
    assert_eq!(
        activation_bits(&from_file, &samples),
        activation_bits(&in_memory, &samples)
    );
    assert_eq!(aside.restore().unwrap().to_bytes(), original);
}
