//! The measurements empirical bias correction takes, against tract: for each layer kind and
//! geometry (padding, strides, dilations, groups, ConvTranspose's scatter, Gemm's transposes),
//! the per-channel means `channel_means` prices from the mean input patch equal the means of
//! the layer's outputs run with the float and with perturbed weights. Then `accumulate` against
//! a naive loop over random geometries, its refusal of shapes that do not fit, and bias
//! correction end to end with 4-bit weights.

mod common;

use common::{Values, info};
use ndarray::{ArrayD, Axis, IxDyn};
use quant::encoding::Bitwidth;
use quant::graph::{Graph, TensorName};
use quant::onnx::{
    AttributeValue, DType, GraphContents, NodeContents, OnnxModel, TensorContents, TensorValues,
};
use quant::overrides::Overrides;
use quant::quantizer::{QuantizerSettings, fake_quantized_weights};
use quant::run::FloatRunner;
use quant::transform::{
    BiasLayer, ChannelMeans, Geometry, bias_layers, channel_means, correct_biases,
};
use rayon::prelude::*;
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// Tiny models (the builder of tests/transform.rs, cut down to one layer)

fn ints(values: &[i64]) -> AttributeValue {
    AttributeValue::Ints(values.to_vec())
}

/// One layer `op` reading graph input `x` of dims `input`, with a random weight of dims
/// `weight` (and a random bias of `bias` values, if any), writing graph output `y`.
fn one_layer(
    op: &str,
    input: &[u64],
    weight: &[u64],
    bias: Option<u64>,
    attributes: Vec<(&str, AttributeValue)>,
    seed: u64,
) -> OnnxModel {
    let mut values = Values(seed);
    let count: u64 = weight.iter().product();
    let fan_in = (count / weight[0].max(1)).max(1) as f32;
    let w: Vec<f32> = values
        .take(count as usize)
        .iter()
        .map(|v| v / fan_in.sqrt())
        .collect();
    let mut initializers = vec![TensorContents {
        name: "w".into(),
        dtype: Some(DType::Float32),
        dims: weight.to_vec(),
        values: TensorValues::Float(w),
    }];
    let mut inputs = vec!["x".to_string(), "w".to_string()];
    if let Some(n) = bias {
        initializers.push(TensorContents {
            name: "b".into(),
            dtype: Some(DType::Float32),
            dims: vec![n],
            values: TensorValues::Float(values.take(n as usize)),
        });
        inputs.push("b".into());
    }
    let contents = GraphContents {
        ir_version: Some(8),
        opset: Some(13),
        inputs: vec![info("x", Some(input))],
        outputs: vec![info("y", None)],
        value_info: Vec::new(),
        initializers,
        nodes: vec![NodeContents {
            name: "layer".into(),
            op_type: op.into(),
            domain: String::new(),
            inputs,
            outputs: vec!["y".into()],
            attributes: attributes
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }],
    };
    OnnxModel::from_contents(&contents, Path::new("<tiny>"))
}

/// `model` with its weight moved by up to `size` of its largest magnitude per element, the
/// way a coarse weight grid moves it.
fn perturbed(model: &OnnxModel, size: f32) -> OnnxModel {
    let graph = Graph::from_model(model).unwrap();
    let w = graph.parameter("w").unwrap().as_f32().unwrap();
    let largest = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut noise = Values(0xdead_beef);
    let moved: Vec<f32> = w
        .iter()
        .map(|v| v + noise.next() * size * largest)
        .collect();
    let mut out = model.clone();
    out.replace_parameter_f32("w", &moved).unwrap();
    out
}

/// Random inputs whose channels have different, non-zero means, so that padding (which reads
/// zeros) visibly changes the patch means.
fn samples(dims: &[usize], count: usize, seed: u64) -> Vec<ArrayD<f32>> {
    let mut values = Values(seed);
    let n: usize = dims.iter().product();
    let channels = dims.get(1).copied().unwrap_or(1);
    let per_channel = (n / dims[0] / channels).max(1);
    (0..count)
        .map(|_| {
            let data = (0..n)
                .map(|i| {
                    let channel = (i / per_channel) % channels;
                    0.3 + 0.4 * channel as f32 + values.next()
                })
                .collect();
            ArrayD::from_shape_vec(IxDyn(dims), data).unwrap()
        })
        .collect()
}

/// The model's output `y` per sample.
fn run(model: &OnnxModel, dims: &[usize], inputs: &[ArrayD<f32>]) -> Vec<ArrayD<f32>> {
    let runner = FloatRunner::new(&model.to_bytes(), &[("x".to_string(), dims.to_vec())])
        .expect("the model loads into tract");
    inputs
        .par_iter()
        .map(|x| {
            let mut outputs = runner.run(std::slice::from_ref(x), |_, _, _| {}).unwrap();
            outputs.remove(0)
        })
        .collect()
}

/// Mean per channel (axis 1) over everything else and over the samples.
fn output_channel_means(outputs: &[ArrayD<f32>]) -> Vec<f64> {
    let channels = outputs[0].shape()[1];
    let mut sums = vec![0f64; channels];
    let mut count = 0;
    for output in outputs {
        for (c, sum) in sums.iter_mut().enumerate() {
            let lane = output.index_axis(Axis(1), c);
            *sum += lane.iter().map(|&v| f64::from(v)).sum::<f64>();
            if c == 0 {
                count += lane.len();
            }
        }
    }
    sums.iter().map(|s| s / count as f64).collect()
}

/// The merged mean patch of `layer` over `inputs`.
fn mean_patch(layer: &BiasLayer, inputs: &[ArrayD<f32>]) -> Vec<f64> {
    let mut sums = vec![0f64; layer.patch_len()];
    for x in inputs {
        layer
            .accumulate(x.as_slice().unwrap(), x.shape(), &mut sums)
            .unwrap();
    }
    sums.iter().map(|s| s / inputs.len() as f64).collect()
}

fn only_layer(model: &OnnxModel) -> BiasLayer {
    let layers = bias_layers(model).unwrap();
    assert_eq!(layers.len(), 1, "{layers:?}");
    let layer = layers.into_iter().next().unwrap();
    assert_eq!(layer.output.as_str(), "y");
    assert_eq!(layer.input.as_str(), "x");
    layer
}

#[track_caller]
fn assert_close(what: &str, measured: &[f64], computed: &[f64], tolerance: f64) {
    assert_eq!(measured.len(), computed.len(), "{what}: channel counts");
    for (c, (m, p)) in measured.iter().zip(computed).enumerate() {
        assert!(
            (m - p).abs() <= tolerance,
            "{what}, channel {c}: tract {m}, computed {p} (tolerance {tolerance})\n\
             tract    {measured:?}\ncomputed {computed:?}"
        );
    }
}

/// Runs the one-layer `model` on random samples with its own and with perturbed weights and
/// checks `channel_means` against the means tract's outputs have, per output channel: the
/// float and the quantized means, and their difference (the shift bias correction removes).
fn check_against_tract(model: &OnnxModel, dims: &[usize]) {
    let layer = only_layer(model);
    let quantized = perturbed(model, 0.25);
    let inputs = samples(dims, 5, 11);
    let patch = mean_patch(&layer, &inputs);
    let means = channel_means(model, &quantized, &[(layer.output.clone(), patch)]).unwrap();
    let [
        ChannelMeans {
            layer_output,
            float,
            quantized: quantized_means,
        },
    ] = &means[..]
    else {
        panic!("one layer measured, {} means", means.len());
    };
    assert_eq!(layer_output, &layer.output);

    let tract_float = output_channel_means(&run(model, dims, &inputs));
    let tract_quantized = output_channel_means(&run(&quantized, dims, &inputs));
    let scale = tract_float
        .iter()
        .chain(&tract_quantized)
        .fold(1f64, |m, v| m.max(v.abs()));
    let tolerance = 1e-4 * scale;
    assert_close("float means", &tract_float, float, tolerance);
    assert_close(
        "quantized means",
        &tract_quantized,
        quantized_means,
        tolerance,
    );

    let shift =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(q, f)| q - f).collect() };
    let tract_shift = shift(&tract_quantized, &tract_float);
    let largest_shift = tract_shift.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(
        largest_shift > 100.0 * tolerance,
        "the perturbation moves the means by only {largest_shift}: the check would not see a \
         wrong patch"
    );
    assert_close(
        "shift",
        &tract_shift,
        &shift(quantized_means, float),
        tolerance,
    );
}

// ---------------------------------------------------------------------------------------------
// Against tract

#[test]
fn conv_3x3_stride_1_pad_1_means_match_tract() {
    let model = one_layer(
        "Conv",
        &[1, 3, 8, 8],
        &[4, 3, 3, 3],
        Some(4),
        vec![("pads", ints(&[1, 1, 1, 1]))],
        1,
    );
    check_against_tract(&model, &[1, 3, 8, 8]);
}

#[test]
fn conv_stride_2_asymmetric_pads_dilation_2_batch_2_means_match_tract() {
    let model = one_layer(
        "Conv",
        &[2, 3, 11, 10],
        &[5, 3, 3, 2],
        None,
        vec![
            ("strides", ints(&[2, 2])),
            ("dilations", ints(&[2, 2])),
            ("pads", ints(&[0, 1, 2, 1])),
        ],
        2,
    );
    check_against_tract(&model, &[2, 3, 11, 10]);
}

#[test]
fn grouped_conv_means_match_tract() {
    let model = one_layer(
        "Conv",
        &[1, 6, 7, 7],
        &[4, 3, 3, 3],
        Some(4),
        vec![
            ("group", AttributeValue::Int(2)),
            ("pads", ints(&[1, 1, 1, 1])),
        ],
        3,
    );
    check_against_tract(&model, &[1, 6, 7, 7]);
}

#[test]
fn depthwise_conv_same_upper_stride_2_means_match_tract() {
    let model = one_layer(
        "Conv",
        &[1, 4, 8, 9],
        &[4, 1, 3, 3],
        Some(4),
        vec![
            ("group", AttributeValue::Int(4)),
            ("strides", ints(&[2, 2])),
            ("auto_pad", AttributeValue::String("SAME_UPPER".into())),
        ],
        4,
    );
    check_against_tract(&model, &[1, 4, 8, 9]);
}

#[test]
fn depthwise_conv_same_lower_means_match_tract() {
    let model = one_layer(
        "Conv",
        &[1, 4, 8, 9],
        &[4, 1, 4, 2],
        None,
        vec![
            ("group", AttributeValue::Int(4)),
            ("strides", ints(&[2, 1])),
            ("auto_pad", AttributeValue::String("SAME_LOWER".into())),
        ],
        5,
    );
    check_against_tract(&model, &[1, 4, 8, 9]);
}

#[test]
fn conv_valid_1d_and_3d_means_match_tract() {
    let one_d = one_layer(
        "Conv",
        &[1, 3, 12],
        &[4, 3, 3],
        Some(4),
        vec![
            ("strides", ints(&[2])),
            ("pads", ints(&[1, 0])),
            ("dilations", ints(&[2])),
        ],
        6,
    );
    check_against_tract(&one_d, &[1, 3, 12]);
    let three_d = one_layer(
        "Conv",
        &[1, 2, 4, 5, 5],
        &[3, 2, 2, 3, 3],
        Some(3),
        vec![
            ("strides", ints(&[1, 2, 1])),
            ("pads", ints(&[1, 1, 0, 0, 1, 2])),
        ],
        7,
    );
    check_against_tract(&three_d, &[1, 2, 4, 5, 5]);
    let valid = one_layer(
        "Conv",
        &[1, 3, 7, 6],
        &[2, 3, 3, 3],
        Some(2),
        vec![("auto_pad", AttributeValue::String("VALID".into()))],
        8,
    );
    check_against_tract(&valid, &[1, 3, 7, 6]);
}

#[test]
fn conv_transpose_stride_2_pads_output_padding_means_match_tract() {
    let model = one_layer(
        "ConvTranspose",
        &[1, 3, 5, 6],
        &[3, 4, 3, 3],
        Some(4),
        vec![
            ("strides", ints(&[2, 2])),
            ("pads", ints(&[1, 0, 0, 2])),
            ("output_padding", ints(&[1, 1])),
        ],
        9,
    );
    check_against_tract(&model, &[1, 3, 5, 6]);
}

#[test]
fn grouped_dilated_conv_transpose_means_match_tract() {
    let model = one_layer(
        "ConvTranspose",
        &[2, 4, 4, 5],
        &[4, 3, 2, 3],
        None,
        vec![
            ("group", AttributeValue::Int(2)),
            ("strides", ints(&[3, 2])),
            ("dilations", ints(&[2, 1])),
            ("pads", ints(&[2, 1, 1, 1])),
        ],
        10,
    );
    check_against_tract(&model, &[2, 4, 4, 5]);
}

#[test]
fn gemm_means_match_tract() {
    // transB = 0, with alpha and beta.
    let plain = one_layer(
        "Gemm",
        &[6, 5],
        &[5, 4],
        Some(4),
        vec![
            ("alpha", AttributeValue::Float(0.5)),
            ("beta", AttributeValue::Float(2.0)),
        ],
        12,
    );
    check_against_tract(&plain, &[6, 5]);
    // transB = 1 and transA = 1: `x` is [inner, rows].
    let transposed = one_layer(
        "Gemm",
        &[5, 7],
        &[3, 5],
        Some(3),
        vec![
            ("transA", AttributeValue::Int(1)),
            ("transB", AttributeValue::Int(1)),
        ],
        13,
    );
    check_against_tract(&transposed, &[5, 7]);
}

// ---------------------------------------------------------------------------------------------
// accumulate on its own

#[test]
fn accumulate_refuses_shapes_that_do_not_fit() {
    let conv = only_layer(&one_layer(
        "Conv",
        &[1, 3, 4, 4],
        &[2, 3, 3, 3],
        None,
        vec![],
        1,
    ));
    let gemm = only_layer(&one_layer("Gemm", &[2, 5], &[5, 4], None, vec![], 1));
    let cases: [(&BiasLayer, &[usize], Option<usize>, usize); 9] = [
        (&conv, &[1, 3, 4], None, conv.patch_len()),    // rank
        (&conv, &[1, 2, 4, 4], None, conv.patch_len()), // channels
        (&conv, &[1, 3, 2, 4], None, conv.patch_len()), // smaller than the kernel
        (&conv, &[0, 3, 4, 4], None, conv.patch_len()), // empty batch
        (&conv, &[1, 3, 4, 4], Some(47), conv.patch_len()), // values ≠ shape
        (&conv, &[1, 3, 4, 4], None, conv.patch_len() - 1), // sums
        (&gemm, &[2, 4], None, gemm.patch_len()),       // inner dimension
        (&gemm, &[1, 2, 5], None, gemm.patch_len()),    // rank
        (&gemm, &[0, 5], None, gemm.patch_len()),       // no rows
    ];
    for (layer, shape, len, sums_len) in cases {
        let input = vec![1f32; len.unwrap_or(shape.iter().product())];
        let mut sums = vec![0f64; sums_len];
        let result = layer.accumulate(&input, shape, &mut sums);
        let Err(message) = result else {
            panic!("shape {shape:?} accepted");
        };
        assert!(!message.is_empty());
        assert!(
            sums.iter().all(|&s| s == 0.0),
            "shape {shape:?} changed the sums"
        );
    }
    // The shapes above are wrong only where the comments say.
    let mut sums = vec![0f64; conv.patch_len()];
    conv.accumulate(&[1.0; 48], &[1, 3, 4, 4], &mut sums)
        .unwrap();
    let mut sums = vec![0f64; gemm.patch_len()];
    gemm.accumulate(&[1.0; 10], &[2, 5], &mut sums).unwrap();
}

/// The patch as its definition reads: every output position of every batch item, every kernel
/// offset, the input position it touches (Conv gathers, ConvTranspose scatters).
#[allow(clippy::too_many_arguments)]
fn naive_patch(
    transpose: bool,
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    [kh, kw]: [usize; 2],
    [sh, sw]: [usize; 2],
    [dh, dw]: [usize; 2],
    [top, left, bottom, right]: [usize; 4],
    [oph, opw]: [usize; 2],
) -> Option<Vec<f64>> {
    let (h, w) = (h as i64, w as i64);
    let reach = |k: usize, d: usize| ((k - 1) * d + 1) as i64;
    let (out_h, out_w) = if transpose {
        (
            sh as i64 * (h - 1) + oph as i64 + reach(kh, dh) - top as i64 - bottom as i64,
            sw as i64 * (w - 1) + opw as i64 + reach(kw, dw) - left as i64 - right as i64,
        )
    } else {
        (
            (h + (top + bottom) as i64 - reach(kh, dh)).div_euclid(sh as i64) + 1,
            (w + (left + right) as i64 - reach(kw, dw)).div_euclid(sw as i64) + 1,
        )
    };
    if out_h < 1 || out_w < 1 {
        return None;
    }
    let mut patch = vec![0f64; c * kh * kw];
    let at = |b: usize, ch: usize, i: i64, j: i64| {
        x[((b * c + ch) * h as usize + i as usize) * w as usize + j as usize]
    };
    for b in 0..n {
        for ch in 0..c {
            for ki in 0..kh {
                for kj in 0..kw {
                    let slot = &mut patch[(ch * kh + ki) * kw + kj];
                    let shift_h = (ki * dh) as i64 - top as i64;
                    let shift_w = (kj * dw) as i64 - left as i64;
                    if transpose {
                        for i in 0..h {
                            for j in 0..w {
                                let (oi, oj) = (i * sh as i64 + shift_h, j * sw as i64 + shift_w);
                                if (0..out_h).contains(&oi) && (0..out_w).contains(&oj) {
                                    *slot += f64::from(at(b, ch, i, j));
                                }
                            }
                        }
                    } else {
                        for oi in 0..out_h {
                            for oj in 0..out_w {
                                let (i, j) = (oi * sh as i64 + shift_h, oj * sw as i64 + shift_w);
                                if (0..h).contains(&i) && (0..w).contains(&j) {
                                    *slot += f64::from(at(b, ch, i, j));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let positions = (n as i64 * out_h * out_w) as f64;
    Some(patch.iter().map(|s| s / positions).collect())
}

proptest::proptest! {
    /// The separable prefix-sum reduction equals the definition, for any Conv or ConvTranspose
    /// geometry: kernels 1..4, strides 1..3, dilations 1..2, pads 0..2 on each side, groups.
    #[test]
    fn accumulate_equals_the_naive_loop(
        transpose in proptest::bool::ANY,
        batch in 1usize..3,
        groups in 1usize..4,
        per_group in 1usize..3,
        kernel in (1usize..5, 1usize..5),
        strides in (1usize..4, 1usize..4),
        dilations in (1usize..3, 1usize..3),
        pads in (0usize..3, 0usize..3, 0usize..3, 0usize..3),
        extra in (0usize..6, 0usize..6),
        output_padding in (0usize..3, 0usize..3),
        seed in 1u64..u64::MAX,
    ) {
        let channels = groups * per_group;
        let (kh, kw) = kernel;
        let (sh, sw) = strides;
        let (dh, dw) = dilations;
        // ONNX wants output_padding below the stride (or the dilation).
        let (oph, opw) = (output_padding.0 % sh, output_padding.1 % sw);
        let (h, w) = if transpose {
            (1 + extra.0, 1 + extra.1)
        } else {
            ((kh - 1) * dh + 1 + extra.0, (kw - 1) * dw + 1 + extra.1)
        };
        let dims = [batch, channels, h, w];
        let pads = [pads.0, pads.1, pads.2, pads.3];
        let weight = if transpose {
            [channels as u64, 2, kh as u64, kw as u64]
        } else {
            [2 * groups as u64, per_group as u64, kh as u64, kw as u64]
        };
        let mut attributes = vec![
            ("group", AttributeValue::Int(groups as i64)),
            ("strides", ints(&[sh as i64, sw as i64])),
            ("dilations", ints(&[dh as i64, dw as i64])),
            ("pads", ints(&pads.map(|p| p as i64))),
        ];
        if transpose {
            attributes.push(("output_padding", ints(&[oph as i64, opw as i64])));
        }
        let op = if transpose { "ConvTranspose" } else { "Conv" };
        let dims_u64 = dims.map(|d| d as u64);
        let layer = only_layer(&one_layer(op, &dims_u64, &weight, None, attributes, seed));
        let x = Values(seed).take(dims.iter().product());
        let expected = naive_patch(
            transpose, &x, dims, [kh, kw], [sh, sw], [dh, dw], pads, [oph, opw],
        );
        let mut sums = vec![0f64; layer.patch_len()];
        let result = layer.accumulate(&x, &dims, &mut sums);
        match expected {
            None => proptest::prop_assert!(result.is_err(), "no output positions, yet {sums:?}"),
            Some(expected) => {
                proptest::prop_assert!(result.is_ok(), "{result:?}");
                proptest::prop_assert_eq!(sums.len(), expected.len());
                for (s, e) in sums.iter().zip(&expected) {
                    proptest::prop_assert!((s - e).abs() <= 1e-9 * (1.0 + e.abs()), "{sums:?}\n{expected:?}");
                }
            }
        }
    }
}

#[test]
fn layers_reading_parameters_are_not_measured() {
    // A Conv whose input is an initializer computes a constant: there is nothing to measure.
    let mut model = one_layer("Conv", &[1, 3, 4, 4], &[2, 3, 3, 3], None, vec![], 1);
    let mut contents = model.contents().unwrap();
    contents.initializers.push(TensorContents {
        name: "c".into(),
        dtype: Some(DType::Float32),
        dims: vec![1, 3, 4, 4],
        values: TensorValues::Float(vec![0.5; 48]),
    });
    contents.nodes[0].inputs[0] = "c".into();
    model = OnnxModel::from_contents(&contents, Path::new("<tiny>"));
    assert!(bias_layers(&model).unwrap().is_empty());
    let geometry = &only_layer(&one_layer(
        "Conv",
        &[1, 3, 4, 4],
        &[2, 3, 3, 3],
        None,
        vec![],
        1,
    ))
    .geometry;
    assert!(matches!(geometry, Geometry::Conv(w) if w.kernel == [3, 3]));
}

// ---------------------------------------------------------------------------------------------
// End to end

/// Bias correction from these means, on a Conv whose weights go to a 4-bit grid: the corrected
/// model with quantized weights has the float model's output means per channel, where the
/// uncorrected one is visibly off.
#[test]
fn corrected_biases_restore_the_float_channel_means_with_4_bit_weights() {
    let dims = [2, 3, 9, 9];
    let model = one_layer(
        "Conv",
        &dims.map(|d| d as u64),
        &[6, 3, 3, 3],
        None,
        vec![("pads", ints(&[1, 1, 1, 1])), ("strides", ints(&[2, 2]))],
        21,
    );
    let settings = QuantizerSettings {
        weights_bitwidth: Bitwidth::new(4).unwrap(),
        ..QuantizerSettings::default()
    };
    let quantize = |model: &OnnxModel| {
        let graph = Graph::from_model(model).unwrap();
        fake_quantized_weights(model, &graph, &Overrides::default(), &settings).unwrap()
    };
    let quantized = quantize(&model);
    let layer = only_layer(&model);
    let inputs = samples(&dims, 6, 5);
    let patch = mean_patch(&layer, &inputs);
    let means = channel_means(&model, &quantized, &[(TensorName::new("y"), patch)]).unwrap();
    let (corrected, _) = correct_biases(&model, &means).unwrap();
    // The corrected model's weights are the float ones, so they quantize to the same grid.
    let corrected_quantized = quantize(&corrected);

    let float = output_channel_means(&run(&model, &dims, &inputs));
    let uncorrected = output_channel_means(&run(&quantized, &dims, &inputs));
    let after = output_channel_means(&run(&corrected_quantized, &dims, &inputs));
    let tolerance = 1e-4 * float.iter().fold(1f64, |m, v| m.max(v.abs()));
    assert_close("corrected means", &float, &after, tolerance);
    let error = float
        .iter()
        .zip(&uncorrected)
        .fold(0f64, |m, (f, u)| m.max((f - u).abs()));
    assert!(
        error > 100.0 * tolerance,
        "4-bit weights shift the means by only {error}: nothing to correct"
    );
}
