//! One layer's rounding, optimized from its input moments.
//!
//! AIMET's formulation (Nagel et al. 2020, as `aimet_onnx.adaround` implements it): every weight
//! `w` of a frozen encoding `(s, o, n = 2^bw − 1)` becomes
//! `ŵ = s · (clamp(⌊w / s⌋ + h(V) − o, 0, n) + o)` with the rectified sigmoid
//! `h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1)`, `ζ = 1.1`, `γ = −0.1`, and `V` starts where `h(V)`
//! equals the fractional part of `w / s`. Adam (lr 10⁻³, β₁ 0.9, β₂ 0.999, ε 10⁻⁸) minimizes
//!
//! ```text
//! recon + λ · Σ (1 − |2h − 1|^β)        (the second term only after the warm start)
//! ```
//!
//! with `recon` AIMET's `‖ŷ − y‖²` summed over channels and averaged over positions, and `β`
//! annealed from 20 to 2 along a cosine. At the end `h` is hardened to `V ≥ 0`.
//!
//! The reconstruction is quadratic in `Ŵ`: over all patches `x_q` (the layer's input in the
//! model quantized so far) and `x_f` (the float model's), with `P` patches,
//! `recon = (1/P) Σ ‖W x_f − Ŵ x_q‖² = const − 2 Σ (W·B) ⊙ Ŵ + Σ (Ŵ·A) ⊙ Ŵ` where
//! `A = Σ x_q x_qᵀ / P` and `B = Σ x_f x_qᵀ / P`, so its gradient is `2 (Ŵ·A − W·B)`. `W·B` is
//! computed once; each iteration costs one `(rows × K)·(K × K)` product, whatever the number of
//! samples and pixels. Rows (output channels) do not interact, so fixed blocks of rows are
//! optimized independently, in parallel, and give the same bits for any thread count.

use ndarray::{Array2, ArrayView2, s};
use rayon::prelude::*;
use wide::{CmpEq, CmpGe, CmpLe, CmpNe, f32x8};

/// `ζ` of the rectified sigmoid.
pub const ZETA: f32 = 1.1;
/// `γ` of the rectified sigmoid.
pub const GAMMA: f32 = -0.1;
/// Rows optimized together, from the layer's rows alone (so results do not depend on the
/// thread count): at least 16, so that the product packs the `K × K` moments once for many
/// rows, at most 64, and otherwise a quarter of the rows, so that a layer alone in its wave
/// still keeps every core busy.
fn row_block(rows: usize) -> usize {
    rows.div_ceil(4).next_multiple_of(8).clamp(16, 64)
}

/// The optimizer's hyperparameters, AIMET's defaults by [`Default`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hyperparameters {
    /// Adam steps per layer (AIMET's `num_iterations`, 10000).
    pub num_iterations: usize,
    /// `λ`, the weight of the rounding regularizer (0.01).
    pub reg_param: f32,
    /// `β` at the end of the warm start and at the last iteration (20, 2).
    pub beta_range: (f64, f64),
    /// The fraction of iterations without the regularizer (0.2).
    pub warm_start: f64,
    /// Adam's learning rate (10⁻³, torch's default that AIMET keeps).
    pub learning_rate: f32,
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Hyperparameters {
            num_iterations: 10_000,
            reg_param: 0.01,
            beta_range: (20.0, 2.0),
            warm_start: 0.2,
            learning_rate: 1e-3,
        }
    }
}

impl Hyperparameters {
    /// `β` at iteration `t` (AIMET's `_compute_beta`), `None` during the warm start, when the
    /// regularizer is off.
    pub fn beta(&self, t: usize) -> Option<f32> {
        let n = self.num_iterations as f64;
        let warm = self.warm_start * n;
        if (t as f64) < warm {
            return None;
        }
        let (start, end) = self.beta_range;
        let relative = (t as f64 - warm) / (n - warm);
        Some((end + 0.5 * (start - end) * (1.0 + (relative * std::f64::consts::PI).cos())) as f32)
    }
}

/// One group of a layer: its weights as a `rows × K` matrix (row = output channel, column =
/// input element of the patch), each element's frozen encoding, and the input moments.
#[derive(Debug, Clone, Copy)]
pub struct Problem<'a> {
    /// Float weights, `rows × K`.
    pub weights: ArrayView2<'a, f32>,
    /// Each weight's encoding scale, `rows × K`.
    pub scale: ArrayView2<'a, f32>,
    /// Each weight's encoding offset (AIMET's, `≤ 0`), `rows × K`.
    pub offset: ArrayView2<'a, f32>,
    /// `2^bw − 1`.
    pub steps: f32,
    /// `A = Σ x_q x_qᵀ / P`, `K × K`.
    pub quantized_moments: ArrayView2<'a, f32>,
    /// `W·B`, `rows × K`, with `B = Σ x_f x_qᵀ / P` (row index: the float input): the only
    /// way the float input enters the loss.
    pub target: ArrayView2<'a, f32>,
}

/// The chosen rounding of one group.
#[derive(Debug, Clone, PartialEq)]
pub struct Rounding {
    /// The unsigned grid value of each weight, `0..=steps`, `rows × K`.
    pub grid: Array2<f32>,
}

impl Problem<'_> {
    /// `⌊w / s⌋`, in float32 as AIMET computes it.
    fn floor(&self) -> Array2<f32> {
        ndarray::Zip::from(&self.weights)
            .and(&self.scale)
            .map_collect(|&w, &s| (w / s).floor())
    }

    /// The dequantized weights of unsigned grid values `grid`.
    pub fn dequantize(&self, grid: &Array2<f32>) -> Array2<f32> {
        ndarray::Zip::from(grid)
            .and(&self.scale)
            .and(&self.offset)
            .map_collect(|&q, &s, &o| s * (q + o))
    }

    /// Round to nearest on the frozen grid, the rounding AdaRound starts from and improves on.
    pub fn nearest(&self) -> Rounding {
        let grid = ndarray::Zip::from(&self.weights)
            .and(&self.scale)
            .and(&self.offset)
            .map_collect(|&w, &s, &o| ((w / s).round() - o).clamp(0.0, self.steps));
        Rounding { grid }
    }

    /// The reconstruction loss of dequantized weights `w_hat`, less the constant
    /// `tr(W Σ_ff Wᵀ)/P` that no rounding changes: `Σ (Ŵ·A) ⊙ Ŵ − 2 Σ (W·B) ⊙ Ŵ`, in f64.
    pub fn reconstruction(&self, w_hat: &Array2<f32>) -> f64 {
        let wa = w_hat.dot(&self.quantized_moments);
        let wb = self.target;
        ndarray::Zip::from(w_hat)
            .and(&wa)
            .and(&wb)
            .fold(0.0f64, |acc, &w, &a, &b| {
                acc + f64::from(w) * (f64::from(a) - 2.0 * f64::from(b))
            })
    }

    /// AdaRound: the rounding that minimizes reconstruction plus regularizer, hardened.
    pub fn optimize(&self, params: &Hyperparameters) -> Rounding {
        let rows = self.weights.nrows();
        let k = self.weights.ncols();
        let floor = self.floor();
        let target = self.target;
        let row_block = row_block(rows);
        let blocks: Vec<Array2<f32>> = (0..rows.div_ceil(row_block))
            .into_par_iter()
            .map(|b| {
                let r = s![b * row_block..((b + 1) * row_block).min(rows), ..];
                Block {
                    weights: self.weights.slice(r),
                    floor: floor.slice(r),
                    scale: self.scale.slice(r),
                    offset: self.offset.slice(r),
                    target: target.slice(r),
                    moments: self.quantized_moments,
                    steps: self.steps,
                }
                .run(params)
            })
            .collect();
        let mut grid = Array2::zeros((rows, k));
        for (b, block) in blocks.into_iter().enumerate() {
            grid.slice_mut(s![b * row_block..b * row_block + block.nrows(), ..])
                .assign(&block);
        }
        Rounding { grid }
    }
}

/// A block of rows, optimized on its own.
struct Block<'a> {
    weights: ArrayView2<'a, f32>,
    floor: ArrayView2<'a, f32>,
    scale: ArrayView2<'a, f32>,
    offset: ArrayView2<'a, f32>,
    target: ArrayView2<'a, f32>,
    moments: ArrayView2<'a, f32>,
    steps: f32,
}

/// `h(V)` and its derivative (zero where the clamp holds, as torch's clamp passes no gradient
/// outside its range).
pub fn rectified_sigmoid(v: f32) -> (f32, f32) {
    let sigma = 1.0 / (1.0 + (-v).exp());
    let raw = sigma * (ZETA - GAMMA) + GAMMA;
    let derivative = if (0.0..=1.0).contains(&raw) {
        (ZETA - GAMMA) * sigma * (1.0 - sigma)
    } else {
        0.0
    };
    (raw.clamp(0.0, 1.0), derivative)
}

/// `V` where `h(V)` equals `rest` (AIMET's `initialize_alpha`).
pub fn initial_v(rest: f32) -> f32 {
    -((ZETA - GAMMA) / (rest - GAMMA) - 1.0).ln()
}

/// Lanes of the optimizer's vectors.
const LANES: usize = 8;

/// `values[at..at + 8]` as a vector, zeros past the end.
fn load(values: &[f32], at: usize) -> f32x8 {
    match values.get(at..at + LANES) {
        Some(chunk) => f32x8::from(<[f32; LANES]>::try_from(chunk).unwrap_or_default()),
        None => {
            let mut lanes = [0f32; LANES];
            let tail = values.get(at..).unwrap_or_default();
            lanes[..tail.len()].copy_from_slice(tail);
            f32x8::from(lanes)
        }
    }
}

/// Writes the lanes of `v` that fall inside `values` from `at` on.
fn store(values: &mut [f32], at: usize, v: f32x8) {
    let lanes = v.to_array();
    let tail = values.get_mut(at..).unwrap_or_default();
    let n = tail.len().min(LANES);
    tail[..n].copy_from_slice(&lanes[..n]);
}

impl Block<'_> {
    fn run(&self, params: &Hyperparameters) -> Array2<f32> {
        let shape = self.weights.raw_dim();
        let len = shape[0] * shape[1];
        // Per-weight state as 8-lane vectors (the last one padded with zeros, which get zero
        // gradients): `exp` and `powf` then run 8 weights at a time, which is most of an
        // iteration's cost besides the product.
        let vectors = |values: &ArrayView2<f32>| -> Vec<f32x8> {
            let owned = values.as_standard_layout();
            let flat = owned.as_slice().unwrap_or_default();
            (0..len.div_ceil(LANES))
                .map(|i| load(flat, i * LANES))
                .collect()
        };
        let floor = vectors(&self.floor);
        let scale = vectors(&self.scale);
        let offset = vectors(&self.offset);
        let target = vectors(&self.target);
        let weights = vectors(&self.weights);
        let chunks = floor.len();
        let mut v: Vec<f32x8> = (0..chunks)
            .map(|i| {
                let rest = (weights[i] / scale[i] - floor[i]).to_array();
                let mut lanes = [0f32; LANES];
                for (lane, r) in lanes.iter_mut().zip(rest) {
                    *lane = initial_v(r);
                }
                // Padding lanes (scale 0) start anywhere finite; their gradients are zero.
                let padding = scale[i].simd_eq(f32x8::ZERO);
                padding.blend(f32x8::ZERO, f32x8::from(lanes))
            })
            .collect();
        let (beta1, beta2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let mut m = vec![f32x8::ZERO; chunks];
        let mut second = vec![f32x8::ZERO; chunks];
        let mut w_hat = Array2::<f32>::zeros(shape);
        // `Ŵ·A`, written in place every iteration rather than allocated.
        let mut product = Array2::<f32>::zeros((shape[0], self.moments.ncols()));
        let mut dw_dv = vec![f32x8::ZERO; chunks];
        let mut h = vec![f32x8::ZERO; chunks];
        let mut dh = vec![f32x8::ZERO; chunks];
        let steps = f32x8::splat(self.steps);
        let (zeta_gamma, gamma) = (f32x8::splat(ZETA - GAMMA), f32x8::splat(GAMMA));
        let (zero, one, two) = (f32x8::ZERO, f32x8::ONE, f32x8::splat(2.0));
        let (mut power1, mut power2) = (1.0f32, 1.0f32);
        // The same arithmetic per element as `rectified_sigmoid` and the loss's gradient.
        for t in 0..params.num_iterations {
            let w_hat_values = w_hat.as_slice_mut().unwrap_or_default();
            for i in 0..chunks {
                let sigma = one / (one + (-v[i]).exp());
                let raw = sigma.mul_add(zeta_gamma, gamma);
                let in_range = raw.simd_ge(zero) & raw.simd_le(one);
                let derivative = in_range.blend(zeta_gamma * sigma * (one - sigma), zero);
                let value = raw.max(zero).min(one);
                let grid = floor[i] + value - offset[i];
                let inside = grid.simd_ge(zero) & grid.simd_le(steps);
                store(
                    w_hat_values,
                    i * LANES,
                    scale[i] * (grid.max(zero).min(steps) + offset[i]),
                );
                dw_dv[i] = inside.blend(scale[i] * derivative, zero);
                h[i] = value;
                dh[i] = derivative;
            }
            ndarray::linalg::general_mat_mul(1.0, &w_hat, &self.moments, 0.0, &mut product);
            let product = product.as_slice().unwrap_or_default();
            let beta = params.beta(t);
            power1 *= beta1;
            power2 *= beta2;
            let step = f32x8::splat(params.learning_rate / (1.0 - power1));
            let correction2 = f32x8::splat(1.0 / (1.0 - power2));
            let (b1, b2) = (f32x8::splat(beta1), f32x8::splat(beta2));
            let (c1, c2) = (f32x8::splat(1.0 - beta1), f32x8::splat(1.0 - beta2));
            for i in 0..chunks {
                let mut g = two * (load(product, i * LANES) - target[i]) * dw_dv[i];
                if let Some(beta) = beta {
                    // d/dV of λ(1 − |2h − 1|^β) = −2λβ|2h − 1|^(β−1)·sign(2h − 1)·h'(V).
                    let u = two * h[i] - one;
                    let active = u.simd_ne(zero) & dh[i].simd_ne(zero);
                    let power = u.abs().pow_f32x8(f32x8::splat(beta - 1.0));
                    let term = f32x8::splat(params.reg_param * beta)
                        * power
                        * one.copysign(u)
                        * two
                        * dh[i];
                    g -= active.blend(term, zero);
                }
                m[i] = b1 * m[i] + c1 * g;
                second[i] = b2 * second[i] + c2 * g * g;
                v[i] -= step * m[i] / ((second[i] * correction2).sqrt() + f32x8::splat(eps));
            }
        }
        let mut grid = vec![0f32; len];
        for i in 0..chunks {
            let up = v[i].simd_ge(zero).blend(one, zero);
            store(
                &mut grid,
                i * LANES,
                (floor[i] + up - offset[i]).max(zero).min(steps),
            );
        }
        Array2::from_shape_vec(shape, grid).unwrap_or_else(|_| Array2::zeros((0, 0)))
    }
}
