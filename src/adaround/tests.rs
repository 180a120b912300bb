use super::*;
use crate::encoding::{Bitwidth, Encoding, Schema};
use crate::transform::{Padding, Window};
use ndarray::Array2;

/// A small deterministic generator, so the tests need no seed plumbing.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn gemm_layer(inputs: usize, outputs: usize) -> AdaLayer {
    AdaLayer {
        layer: BiasLayer {
            output: "y".into(),
            input: "x".into(),
            in_channels: inputs,
            geometry: Geometry::Gemm { trans_a: false },
        },
        weight: "w".into(),
        weight_dims: vec![outputs, inputs],
        layout: WeightLayout::Gemm { trans_b: true },
        groups: 1,
        out_channels: outputs,
    }
}

use crate::transform::{BiasLayer, Geometry};

/// A Gemm problem: `positions` float inputs, the quantized ones a perturbation of them.
fn gemm_case(
    seed: u64,
) -> (
    AdaLayer,
    Vec<f32>,
    TensorEncoding,
    LayerMoments,
    Vec<f32>,
    Vec<f32>,
) {
    let (inputs, outputs, positions) = (12, 6, 200);
    let mut rng = Lcg(seed);
    let layer = gemm_layer(inputs, outputs);
    let weights: Vec<f32> = (0..inputs * outputs).map(|_| rng.next()).collect();
    let x_f: Vec<f32> = (0..positions * inputs).map(|_| rng.next()).collect();
    let x_q: Vec<f32> = x_f.iter().map(|&x| x + 0.1 * rng.next()).collect();
    let moments =
        LayerMoments::of_sample(&layer, &weights, &x_q, &x_f, &[positions, inputs]).unwrap();
    let absmax = weights.iter().fold(0f32, |m, &w| m.max(w.abs()));
    let encoding = TensorEncoding::PerTensor(Encoding::symmetric(
        f64::from(absmax),
        Bitwidth::new(4).unwrap(),
        Schema::Symmetric,
    ));
    (layer, weights, encoding, moments, x_q, x_f)
}

/// `Σ ‖W x_f − Ŵ x_q‖² / P` computed directly from the samples.
fn direct_loss(w: &[f32], w_hat: &[f32], x_q: &[f32], x_f: &[f32], inputs: usize) -> f64 {
    let outputs = w.len() / inputs;
    let positions = x_f.len() / inputs;
    let mut total = 0f64;
    for p in 0..positions {
        for o in 0..outputs {
            let mut e = 0f64;
            for i in 0..inputs {
                e += f64::from(w[o * inputs + i]) * f64::from(x_f[p * inputs + i])
                    - f64::from(w_hat[o * inputs + i]) * f64::from(x_q[p * inputs + i]);
            }
            total += e * e;
        }
    }
    total / positions as f64
}

#[test]
fn adaround_reconstructs_better_than_nearest_and_stays_on_the_grid() {
    for seed in 1..4 {
        let (layer, weights, encoding, moments, x_q, x_f) = gemm_case(seed);
        let params = Hyperparameters {
            num_iterations: 2000,
            ..Hyperparameters::default()
        };
        let result = round_layer(&layer, &weights, &encoding, &moments, &params).unwrap();
        let e = encoding.encodings()[0];
        let nearest: Vec<f32> = weights
            .iter()
            .map(|&w| e.dequantize_value(e.quantize_value(f64::from(w))) as f32)
            .collect();
        let direct_nearest = direct_loss(&weights, &nearest, &x_q, &x_f, 12);
        let direct_ada = direct_loss(&weights, &result.weights, &x_q, &x_f, 12);
        assert!(
            direct_ada < direct_nearest,
            "seed {seed}: AdaRound {direct_ada} vs nearest {direct_nearest}"
        );
        // Every chosen weight is a grid point, within one step of the float weight.
        for (&w, &q) in weights.iter().zip(&result.weights) {
            let grid = f64::from(q) / e.scale;
            assert!((grid - grid.round()).abs() < 1e-3, "{q} is off the grid");
            assert!((f64::from(w - q)).abs() <= e.scale * 1.0001, "{w} → {q}");
        }
        // The moments' loss differs from the direct one by a constant of the float weights.
        let constant_nearest = direct_nearest - result.nearest_loss;
        let constant_ada = direct_ada - result.adaround_loss;
        assert!(
            (constant_nearest - constant_ada).abs() < 1e-3 * direct_nearest.max(1.0),
            "{constant_nearest} vs {constant_ada}"
        );
    }
}

#[test]
fn reconstruction_gradient_matches_finite_differences() {
    let (layer, weights, _, moments, _, _) = gemm_case(7);
    let p = moments.positions as f64;
    let a = moments.quantized[0].mapv(|x| (x / p) as f32);
    let target = moments.target[0].mapv(|x| (x / p) as f32);
    let w = &layer.matrices(&weights)[0];
    let ones = Array2::<f32>::ones(w.raw_dim());
    let zeros = Array2::<f32>::zeros(w.raw_dim());
    let problem = Problem {
        weights: w.view(),
        scale: ones.view(),
        offset: zeros.view(),
        steps: 15.0,
        quantized_moments: a.view(),
        target: target.view(),
    };
    let w_hat = w.mapv(|x| x * 0.9 + 0.01);
    let analytic = (w_hat.dot(&a) - &target) * 2.0;
    let eps = 1e-2f32;
    for (r, c) in [(0, 0), (2, 5), (5, 11)] {
        let mut up = w_hat.clone();
        up[(r, c)] += eps;
        let mut down = w_hat.clone();
        down[(r, c)] -= eps;
        let numeric =
            (problem.reconstruction(&up) - problem.reconstruction(&down)) / (2.0 * f64::from(eps));
        let expected = f64::from(analytic[(r, c)]);
        assert!(
            (numeric - expected).abs() < 1e-2 * expected.abs().max(1.0),
            "({r}, {c}): {numeric} vs {expected}"
        );
    }
}

#[test]
fn rectified_sigmoid_derivative_and_initialization() {
    for &v in &[-3.0f32, -0.5, 0.0, 0.7, 2.0] {
        let eps = 1e-3;
        let numeric = (rectified_sigmoid(v + eps).0 - rectified_sigmoid(v - eps).0) / (2.0 * eps);
        let (_, analytic) = rectified_sigmoid(v);
        assert!(
            (numeric - analytic).abs() < 1e-3,
            "{v}: {numeric} vs {analytic}"
        );
    }
    for &rest in &[0.05f32, 0.3, 0.5, 0.9] {
        let (h, _) = rectified_sigmoid(initial_v(rest));
        assert!((h - rest).abs() < 1e-5, "{rest} → {h}");
    }
    // Far out, h is exactly 0 or 1 and passes no gradient.
    assert_eq!(rectified_sigmoid(10.0), (1.0, 0.0));
    assert_eq!(rectified_sigmoid(-10.0), (0.0, 0.0));
}

#[test]
fn beta_is_annealed_from_20_to_2_after_the_warm_start() {
    let params = Hyperparameters {
        num_iterations: 1000,
        ..Hyperparameters::default()
    };
    assert_eq!(params.beta(0), None);
    assert_eq!(params.beta(199), None);
    assert!((params.beta(200).unwrap() - 20.0).abs() < 1e-4);
    assert!((params.beta(600).unwrap() - 11.0).abs() < 1e-4);
    assert!((params.beta(999).unwrap() - 2.0).abs() < 1e-3);
}

#[test]
fn the_regularizer_makes_the_soft_rounding_binary() {
    // With no reconstruction signal at all (zero moments), only the regularizer moves V, and it
    // pushes every h(V) to 0 or 1: the hardened rounding is then the one nearest to where each
    // weight started, up for fractional parts above one half.
    let w = Array2::from_shape_vec((1, 4), vec![0.2f32, 0.45, 0.55, 0.8]).unwrap();
    let ones = Array2::<f32>::ones((1, 4));
    let zeros = Array2::<f32>::zeros((1, 4));
    let moments = Array2::<f32>::zeros((4, 4));
    let target = Array2::<f32>::zeros((1, 4));
    let problem = Problem {
        weights: w.view(),
        scale: ones.view(),
        offset: zeros.view(),
        steps: 15.0,
        quantized_moments: moments.view(),
        target: target.view(),
    };
    let params = Hyperparameters {
        num_iterations: 3000,
        reg_param: 1.0,
        ..Hyperparameters::default()
    };
    let rounding = problem.optimize(&params);
    assert_eq!(rounding.grid.as_slice().unwrap(), &[0.0, 0.0, 1.0, 1.0]);
}

/// A grouped, strided, padded 2-D convolution computed directly.
#[allow(clippy::too_many_arguments)]
fn direct_conv(
    x: &[f32],
    w: &[f32],
    (c_in, h, wd): (usize, usize, usize),
    c_out: usize,
    groups: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> (Vec<f32>, usize, usize) {
    let oh = (h + 2 * pad - k) / stride + 1;
    let ow = (wd + 2 * pad - k) / stride + 1;
    let (in_g, out_g) = (c_in / groups, c_out / groups);
    let mut y = vec![0f32; c_out * oh * ow];
    for co in 0..c_out {
        let g = co / out_g;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0f32;
                for ci in 0..in_g {
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * stride + ky) as i64 - pad as i64;
                            let ix = (ox * stride + kx) as i64 - pad as i64;
                            if iy < 0 || ix < 0 || iy >= h as i64 || ix >= wd as i64 {
                                continue;
                            }
                            let xv = x[((g * in_g + ci) * h + iy as usize) * wd + ix as usize];
                            acc += xv * w[((co * in_g + ci) * k + ky) * k + kx];
                        }
                    }
                }
                y[(co * oh + oy) * ow + ox] = acc;
            }
        }
    }
    (y, oh, ow)
}

#[test]
fn conv_patches_times_weights_give_the_convolution() {
    let (c_in, h, wd, c_out, groups, k, stride, pad) = (4, 7, 6, 6, 2, 3, 2, 1);
    let mut rng = Lcg(11);
    let x: Vec<f32> = (0..c_in * h * wd).map(|_| rng.next()).collect();
    let w: Vec<f32> = (0..c_out * (c_in / groups) * k * k)
        .map(|_| rng.next())
        .collect();
    let layer = AdaLayer {
        layer: BiasLayer {
            output: "y".into(),
            input: "x".into(),
            in_channels: c_in,
            geometry: Geometry::Conv(Window {
                kernel: vec![k, k],
                strides: vec![stride, stride],
                dilations: vec![1, 1],
                padding: Padding::Explicit {
                    begin: vec![pad, pad],
                    end: vec![pad, pad],
                },
                groups,
                output_padding: vec![0, 0],
                output_shape: None,
            }),
        },
        weight: "w".into(),
        weight_dims: vec![c_out, c_in / groups, k, k],
        layout: WeightLayout::Conv,
        groups,
        out_channels: c_out,
    };
    let (expected, oh, ow) = direct_conv(&x, &w, (c_in, h, wd), c_out, groups, k, stride, pad);
    let matrices = layer.matrices(&w);
    for (g, matrix) in matrices.iter().enumerate() {
        let patches = layer.patches(g, &x, &[1, c_in, h, wd]).unwrap();
        assert_eq!(patches.nrows(), oh * ow);
        let y = patches.dot(&matrix.t());
        for p in 0..oh * ow {
            for r in 0..layer.rows() {
                let co = g * layer.rows() + r;
                let want = expected[co * oh * ow + p];
                assert!((y[(p, r)] - want).abs() < 1e-4, "g {g} p {p} r {r}");
            }
        }
    }
    // Matrices and scatter are inverse.
    let mut back = vec![0f32; w.len()];
    layer.scatter(&matrices, &mut back);
    assert_eq!(back, w);
}

/// The correlation form of the moments equals the patch products: stride-1 Convs with kernels
/// and paddings of every kind (same, valid, lopsided, wider than the input, dilated), and
/// ConvTransposes (stride equal to, below and above the kernel, cropped by padding), for groups
/// and batches.
#[test]
fn shifted_moments_equal_the_patch_products() {
    let cases = [
        // (transpose, c_in, h, w, groups, kh, kw, stride, dilation, pad begin (y, x),
        //  pad end (y, x), batch)
        (false, 4, 7, 6, 1, 3, 3, 1, 1, (1, 1), (1, 1), 1),
        (false, 4, 5, 5, 2, 3, 3, 1, 1, (0, 0), (0, 0), 2),
        (false, 3, 6, 4, 1, 5, 3, 1, 1, (2, 0), (1, 2), 1),
        (false, 2, 4, 3, 1, 1, 3, 1, 1, (0, 1), (0, 1), 1),
        (false, 2, 3, 3, 2, 5, 5, 1, 1, (3, 3), (3, 3), 1),
        (false, 3, 8, 7, 1, 3, 3, 1, 2, (2, 1), (2, 2), 1),
        (true, 3, 4, 5, 1, 2, 2, 2, 1, (0, 0), (0, 0), 1),
        (true, 4, 3, 4, 2, 3, 3, 2, 1, (1, 1), (0, 1), 2),
        (true, 2, 4, 3, 1, 3, 2, 1, 1, (1, 0), (1, 1), 1),
        (true, 2, 3, 3, 1, 2, 3, 3, 2, (0, 1), (2, 0), 1),
    ];
    for (case, &(transpose, c_in, h, w, groups, kh, kw, stride, dilation, begin, end, batch)) in
        cases.iter().enumerate()
    {
        let window = Window {
            kernel: vec![kh, kw],
            strides: vec![stride, stride],
            dilations: vec![dilation, dilation],
            padding: Padding::Explicit {
                begin: vec![begin.0, begin.1],
                end: vec![end.0, end.1],
            },
            groups,
            output_padding: vec![0, 0],
            output_shape: None,
        };
        let (geometry, weight_dims, layout) = if transpose {
            (
                Geometry::ConvTranspose(window),
                vec![c_in, 1, kh, kw],
                WeightLayout::ConvTranspose,
            )
        } else {
            (
                Geometry::Conv(window),
                vec![groups, c_in / groups, kh, kw],
                WeightLayout::Conv,
            )
        };
        let layer = AdaLayer {
            layer: BiasLayer {
                output: "y".into(),
                input: "x".into(),
                in_channels: c_in,
                geometry,
            },
            weight: "w".into(),
            weight_dims,
            layout,
            groups,
            out_channels: groups,
        };
        let shape = [batch, c_in, h, w];
        let mut rng = Lcg(100 + case as u64);
        let x_f: Vec<f32> = (0..batch * c_in * h * w).map(|_| rng.next()).collect();
        let x_q: Vec<f32> = x_f.iter().map(|v| v + 0.05 * rng.next()).collect();
        let table = layer.window_table(&shape).unwrap();
        for g_case in 0..2 {
            // A Gram of one input with itself (the symmetric shortcut), then of two inputs.
            let (left, right) = if g_case == 0 {
                (&x_q, &x_q)
            } else {
                (&x_f, &x_q)
            };
            let fast = moments::shifted_grams(&layer, left, right, &shape)
                .unwrap()
                .unwrap();
            for (g, fast) in fast.iter().enumerate() {
                let pl = layer
                    .patches_with(g, left, &shape, table.as_deref())
                    .unwrap();
                let pr = layer
                    .patches_with(g, right, &shape, table.as_deref())
                    .unwrap();
                let slow = pl.t().dot(&pr).mapv(f64::from);
                for ((i, j), v) in fast.indexed_iter() {
                    assert!(
                        (v - slow[[i, j]]).abs() < 1e-4,
                        "case {case} gram {g_case} group {g} [{i}, {j}]: {v} vs {}",
                        slow[[i, j]]
                    );
                }
            }
        }
    }
}

/// A sample's moments are the patch products whichever way they are computed: the quantized
/// Gram `P_qᵀP_q`, and the target `W·P_fᵀP_q` from the float output or from `B`, for layers
/// on each path (correlations or patches, few or many rows, equal or different inputs).
#[test]
fn sample_moments_equal_the_patch_products() {
    let cases = [
        // (c_in, groups, out_channels, kernel, stride, h, w)
        (8, 1, 2, 3, 1, 6, 5),
        (8, 1, 40, 3, 1, 5, 4),
        (8, 1, 3, 1, 1, 4, 4),
        (4, 4, 4, 3, 1, 6, 6),
        (3, 1, 5, 3, 2, 7, 6),
        (16, 2, 4, 3, 1, 4, 5),
    ];
    for (case, &(c_in, groups, out, kernel, stride, h, w)) in cases.iter().enumerate() {
        let layer = AdaLayer {
            layer: BiasLayer {
                output: "y".into(),
                input: "x".into(),
                in_channels: c_in,
                geometry: Geometry::Conv(Window {
                    kernel: vec![kernel, kernel],
                    strides: vec![stride, stride],
                    dilations: vec![1, 1],
                    padding: Padding::Explicit {
                        begin: vec![kernel / 2, kernel / 2],
                        end: vec![kernel / 2, kernel / 2],
                    },
                    groups,
                    output_padding: vec![0, 0],
                    output_shape: None,
                }),
            },
            weight: "w".into(),
            weight_dims: vec![out, c_in / groups, kernel, kernel],
            layout: WeightLayout::Conv,
            groups,
            out_channels: out,
        };
        let shape = [1, c_in, h, w];
        let mut rng = Lcg(300 + case as u64);
        let weights: Vec<f32> = (0..layer.weight_dims.iter().product::<usize>())
            .map(|_| rng.next())
            .collect();
        let x_f: Vec<f32> = (0..c_in * h * w).map(|_| rng.next()).collect();
        let x_q: Vec<f32> = x_f.iter().map(|v| v + 0.05 * rng.next()).collect();
        let table = layer.window_table(&shape).unwrap();
        let matrices = layer.matrices(&weights);
        for (q, f) in [(&x_q, &x_f), (&x_f, &x_f)] {
            let moments = LayerMoments::of_sample(&layer, &weights, q, f, &shape).unwrap();
            for (g, matrix) in matrices.iter().enumerate() {
                let pq = layer.patches_with(g, q, &shape, table.as_deref()).unwrap();
                let pf = layer.patches_with(g, f, &shape, table.as_deref()).unwrap();
                assert_eq!(moments.positions, pq.nrows() as u64, "case {case}");
                let gram = pq.t().dot(&pq).mapv(f64::from);
                let target = matrix.mapv(f64::from).dot(&pf.t().dot(&pq).mapv(f64::from));
                for (name, fast, slow) in [
                    ("quantized", &moments.quantized[g], &gram),
                    ("target", &moments.target[g], &target),
                ] {
                    assert_eq!(fast.dim(), slow.dim(), "case {case} {name}");
                    for ((i, j), v) in fast.indexed_iter() {
                        assert!(
                            (v - slow[[i, j]]).abs() < 1e-3,
                            "case {case} {name} group {g} [{i}, {j}]: {v} vs {}",
                            slow[[i, j]]
                        );
                    }
                }
            }
        }
    }
}
