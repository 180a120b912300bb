#!/usr/bin/env bash
# Which dense matrix product AdaRound should use: ndarray's `dot` (matrixmultiply, what quant
# links) against faer, on the shapes AdaRound multiplies, in one run on one machine.
#
# The shapes (det and cls, W4 per-channel):
#   optimizer   Ŵ·A, (rows × K)·(K × K), once per iteration: 16×384·384×384, 64×384·384×384,
#               24×864·864×864, 64×192·192×192
#   correlation X·S(X)ᵀ, (C × plane)·(plane × C), per shift and sample: 96×6400·6400×96,
#               96×1600·1600×96
#   output      P_f·Wᵀ, (positions × K)·(K × rows): 6400×864·864×24
# Each product is repeated for about half a second per library after a warm-up; the table gives
# GFlop/s and faer's time as a ratio of matrixmultiply's. faer runs on one thread (Par::Seq),
# as each AdaRound block does (the blocks themselves run side by side).
#
# faer is not a dependency of quant: this script builds a scratch crate in a temporary folder
# with both (the first run downloads and compiles faer, a few minutes).
# Usage: benches/gemm_choice.sh
set -euo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
ndarray_version=$(grep -m1 '^ndarray' "$(dirname "$0")/../Cargo.toml" | sed 's/.*"\(.*\)".*/\1/')
mkdir -p "$work/src"
cat > "$work/Cargo.toml" <<TOML
[package]
name = "gemm-choice"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
ndarray = "$ndarray_version"
faer = "0.22"

[profile.release]
debug = false
TOML
cat > "$work/src/main.rs" <<'RUST'
use std::time::{Duration, Instant};

fn fill(len: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) - 0.5
        })
        .collect()
}

/// Seconds per product, repeated for about half a second after a warm-up.
fn time(mut run: impl FnMut()) -> f64 {
    run();
    let start = Instant::now();
    let mut count = 0u32;
    while start.elapsed() < Duration::from_millis(500) {
        run();
        count += 1;
    }
    start.elapsed().as_secs_f64() / f64::from(count)
}

fn main() {
    let shapes: [(&str, usize, usize, usize); 7] = [
        ("optimizer", 16, 384, 384),
        ("optimizer", 64, 384, 384),
        ("optimizer", 24, 864, 864),
        ("optimizer", 64, 192, 192),
        ("correlation", 96, 6400, 96),
        ("correlation", 96, 1600, 96),
        ("output", 6400, 864, 24),
    ];
    println!("| product | m × k · k × n | matrixmultiply GFlop/s | faer GFlop/s | faer / matrixmultiply time |");
    println!("|---|---|---|---|---|");
    for (i, &(what, m, k, n)) in shapes.iter().enumerate() {
        let a = fill(m * k, 2 * i as u32 + 1);
        let b = fill(k * n, 2 * i as u32 + 2);
        let flops = 2.0 * (m * k * n) as f64;
        let na = ndarray::Array2::from_shape_vec((m, k), a.clone()).unwrap();
        let nb = ndarray::Array2::from_shape_vec((k, n), b.clone()).unwrap();
        let mut nc = ndarray::Array2::<f32>::zeros((m, n));
        let t_mm = time(|| ndarray::linalg::general_mat_mul(1.0, &na, &nb, 0.0, &mut nc));
        let fa = faer::Mat::<f32>::from_fn(m, k, |r, c| a[r * k + c]);
        let fb = faer::Mat::<f32>::from_fn(k, n, |r, c| b[r * n + c]);
        let mut fc = faer::Mat::<f32>::zeros(m, n);
        let t_faer = time(|| {
            faer::linalg::matmul::matmul(
                fc.as_mut(),
                faer::Accum::Replace,
                fa.as_ref(),
                fb.as_ref(),
                1.0f32,
                faer::Par::Seq,
            )
        });
        // The two agree: a wrong product would make any timing meaningless.
        let worst = (0..m)
            .flat_map(|r| (0..n).map(move |c| (r, c)))
            .map(|(r, c)| (nc[[r, c]] - fc[(r, c)]).abs() / (1.0 + nc[[r, c]].abs()))
            .fold(0f32, f32::max);
        assert!(worst < 1e-3, "{what} {m}×{k}·{k}×{n}: the products differ by {worst}");
        println!(
            "| {what} | {m}×{k}·{k}×{n} | {:.1} | {:.1} | {:.2} |",
            flops / t_mm / 1e9,
            flops / t_faer / 1e9,
            t_faer / t_mm
        );
    }
}
RUST
(cd "$work" && cargo build --release --quiet && ./target/release/gemm-choice)
