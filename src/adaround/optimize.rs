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

/// `ζ` of the rectified sigmoid.
pub const ZETA: f32 = 1.1;
/// `γ` of the rectified sigmoid.
pub const GAMMA: f32 = -0.1;
/// Rows optimized together: fixed, so results do not depend on the thread count.
const ROW_BLOCK: usize = 16;

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
    /// `B = Σ x_f x_qᵀ / P`, `K × K` (row index: the float input).
    pub cross_moments: ArrayView2<'a, f32>,
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
        let wb = self.weights.dot(&self.cross_moments);
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
        // `W·B` once: the only place the float input enters the iterations.
        let target = self.weights.dot(&self.cross_moments);
        let blocks: Vec<Array2<f32>> = (0..rows.div_ceil(ROW_BLOCK))
            .into_par_iter()
            .map(|b| {
                let r = s![b * ROW_BLOCK..((b + 1) * ROW_BLOCK).min(rows), ..];
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
            grid.slice_mut(s![b * ROW_BLOCK..b * ROW_BLOCK + block.nrows(), ..])
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

impl Block<'_> {
    fn run(&self, params: &Hyperparameters) -> Array2<f32> {
        let shape = self.weights.raw_dim();
        // Owned, standard-layout copies: the loops below walk plain slices.
        let floor = self.floor.to_owned();
        let scale = self.scale.to_owned();
        let offset = self.offset.to_owned();
        let target = self.target.to_owned();
        let (floor, scale, offset, target) = (
            floor.as_slice().unwrap_or_default(),
            scale.as_slice().unwrap_or_default(),
            offset.as_slice().unwrap_or_default(),
            target.as_slice().unwrap_or_default(),
        );
        let mut v: Vec<f32> = self
            .weights
            .iter()
            .zip(scale)
            .zip(floor)
            .map(|((&w, &s), &f)| initial_v(w / s - f))
            .collect();
        let len = v.len();
        let (beta1, beta2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let mut m = vec![0f32; len];
        let mut second = vec![0f32; len];
        let mut w_hat = Array2::<f32>::zeros(shape);
        // `Ŵ·A`, written in place every iteration rather than allocated.
        let mut product = Array2::<f32>::zeros((shape[0], self.moments.ncols()));
        let mut dw_dv = vec![0f32; len];
        let mut h = vec![0f32; len];
        let mut dh = vec![0f32; len];
        let mut sigma = vec![0f32; len];
        let mut g = vec![0f32; len];
        let steps = self.steps;
        let (mut power1, mut power2) = (1.0f32, 1.0f32);
        // The same arithmetic per element as `rectified_sigmoid` and the loss's gradient, split
        // into loops without calls or early exits so that all but the `exp` and `powf` ones
        // compile to vector instructions.
        for t in 0..params.num_iterations {
            for (s, &v) in sigma.iter_mut().zip(&v) {
                *s = 1.0 / (1.0 + (-v).exp());
            }
            let w_hat_values = w_hat.as_slice_mut().unwrap_or_default();
            for i in 0..len {
                let sg = sigma[i];
                let raw = sg * (ZETA - GAMMA) + GAMMA;
                let derivative = if (0.0..=1.0).contains(&raw) {
                    (ZETA - GAMMA) * sg * (1.0 - sg)
                } else {
                    0.0
                };
                let value = raw.clamp(0.0, 1.0);
                let grid = floor[i] + value - offset[i];
                let inside = (0.0..=steps).contains(&grid);
                w_hat_values[i] = scale[i] * (grid.clamp(0.0, steps) + offset[i]);
                dw_dv[i] = if inside { scale[i] * derivative } else { 0.0 };
                h[i] = value;
                dh[i] = derivative;
            }
            ndarray::linalg::general_mat_mul(1.0, &w_hat, &self.moments, 0.0, &mut product);
            let product = product.as_slice().unwrap_or_default();
            let beta = params.beta(t);
            power1 *= beta1;
            power2 *= beta2;
            let step = params.learning_rate / (1.0 - power1);
            let correction2 = 1.0 / (1.0 - power2);
            for i in 0..len {
                g[i] = 2.0 * (product[i] - target[i]) * dw_dv[i];
            }
            if let Some(beta) = beta {
                for i in 0..len {
                    // d/dV of λ(1 − |2h − 1|^β) = −2λβ|2h − 1|^(β−1)·sign(2h − 1)·h'(V).
                    let u = 2.0 * h[i] - 1.0;
                    if u != 0.0 && dh[i] != 0.0 {
                        g[i] -= params.reg_param
                            * beta
                            * u.abs().powf(beta - 1.0)
                            * u.signum()
                            * 2.0
                            * dh[i];
                    }
                }
            }
            for i in 0..len {
                m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
                second[i] = beta2 * second[i] + (1.0 - beta2) * g[i] * g[i];
                v[i] -= step * m[i] / ((second[i] * correction2).sqrt() + eps);
            }
        }
        let grid: Vec<f32> = (0..len)
            .map(|i| {
                let up = if v[i] >= 0.0 { 1.0 } else { 0.0 };
                (floor[i] + up - offset[i]).clamp(0.0, self.steps)
            })
            .collect();
        Array2::from_shape_vec(shape, grid).unwrap_or_else(|_| Array2::zeros((0, 0)))
    }
}
