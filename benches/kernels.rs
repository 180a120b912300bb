//! Throughput of the encoding kernels on 100 M `f32` (400 MB), single thread and all threads,
//! each next to a `memcpy` (`copy_from_slice`) of the same buffer measured in the same run.
//!
//! Throughput is input bytes per second. At the end the bench prints each kernel's median time
//! per pass as a fraction of the same mode's memcpy (goals: min/max ≥ 70 %, fake-quant ≥ 50 %).
//! `min_max_no_count` is a plain `f32::min`/`f32::max` fold (NaN-skipping, no NaN/Inf count),
//! to show what the library's count costs.
//!
//! Run: `cargo bench --bench kernels -- --warm-up-time 1 --measurement-time 3`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use quant::encoding::kernels::{self, LANES, MinMax};
use quant::encoding::{Bitwidth, Encoding, Schema};
use rayon::prelude::*;

const LEN: usize = 100_000_000;
/// Work unit for the threaded runs: 4 MB, large enough that scheduling is noise.
const CHUNK: usize = 1 << 20;

/// Per-pass durations of every benchmark, keyed by "mode/name", for the ratio table.
type Samples = RefCell<BTreeMap<String, Vec<Duration>>>;

fn timed(samples: &Samples, key: &str, iters: u64, mut pass: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        pass();
    }
    let elapsed = start.elapsed();
    samples
        .borrow_mut()
        .entry(key.to_string())
        .or_default()
        .push(elapsed / iters.max(1) as u32);
    elapsed
}

/// Deterministic activations-like data in roughly [-4, 6] (xorshift; no NaN/Inf).
fn data() -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..LEN)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 10.0 - 4.0
        })
        .collect()
}

/// Min/max without counts: `f32::min`/`f32::max` per lane (NaN-skipping). Written with
/// `f32::min` because LLVM leaves the bare compare-and-select form of this loop scalar.
fn min_max_no_count(data: &[f32]) -> (f32, f32) {
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let chunks = data.chunks_exact(LANES);
    for &x in chunks.remainder() {
        lo[0] = lo[0].min(x);
        hi[0] = hi[0].max(x);
    }
    for chunk in chunks {
        for i in 0..LANES {
            lo[i] = lo[i].min(chunk[i]);
            hi[i] = hi[i].max(chunk[i]);
        }
    }
    (
        lo.iter().copied().fold(f32::INFINITY, f32::min),
        hi.iter().copied().fold(f32::NEG_INFINITY, f32::max),
    )
}

fn main() {
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let threads = rayon::current_num_threads();

    let src = data();
    let mut dst = vec![1.0f32; LEN];
    let range = kernels::min_max(&src);
    let encoding = Encoding::from_range(
        f64::from(range.min),
        f64::from(range.max),
        Bitwidth::B8,
        Schema::Asymmetric,
    )
    .expect("finite range");
    let samples = Samples::default();
    let bytes = (LEN * size_of::<f32>()) as u64;

    {
        let mut group = criterion.benchmark_group("single_thread");
        group.sampling_mode(SamplingMode::Flat);
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function("memcpy", |b| {
            b.iter_custom(|n| timed(&samples, "1/memcpy", n, || dst.copy_from_slice(&src)))
        });
        group.bench_function("min_max", |b| {
            b.iter_custom(|n| {
                timed(&samples, "1/min_max", n, || {
                    black_box(kernels::min_max(black_box(&src)));
                })
            })
        });
        group.bench_function("min_max_no_count", |b| {
            b.iter_custom(|n| {
                timed(&samples, "1/min_max_no_count", n, || {
                    black_box(min_max_no_count(black_box(&src)));
                })
            })
        });
        group.bench_function("fake_quant", |b| {
            b.iter_custom(|n| {
                timed(&samples, "1/fake_quant", n, || {
                    kernels::fake_quantize(&src, &mut dst, &encoding).expect("same length")
                })
            })
        });
        group.bench_function("fake_quant_in_place", |b| {
            b.iter_custom(|n| {
                timed(&samples, "1/fake_quant_in_place", n, || {
                    kernels::fake_quantize_in_place(&mut dst, &encoding)
                })
            })
        });
        group.finish();
    }
    {
        let mut group = criterion.benchmark_group(format!("all_threads_{threads}"));
        group.sampling_mode(SamplingMode::Flat);
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function("memcpy", |b| {
            b.iter_custom(|n| {
                timed(&samples, "n/memcpy", n, || {
                    dst.par_chunks_mut(CHUNK)
                        .zip(src.par_chunks(CHUNK))
                        .for_each(|(d, s)| d.copy_from_slice(s))
                })
            })
        });
        group.bench_function("min_max", |b| {
            b.iter_custom(|n| {
                timed(&samples, "n/min_max", n, || {
                    black_box(
                        src.par_chunks(CHUNK)
                            .map(kernels::min_max)
                            .reduce(|| MinMax::EMPTY, MinMax::merge),
                    );
                })
            })
        });
        group.bench_function("fake_quant", |b| {
            b.iter_custom(|n| {
                timed(&samples, "n/fake_quant", n, || {
                    dst.par_chunks_mut(CHUNK)
                        .zip(src.par_chunks(CHUNK))
                        .for_each(|(d, s)| {
                            kernels::fake_quantize(s, d, &encoding).expect("same length")
                        })
                })
            })
        });
        group.finish();
    }
    criterion.final_summary();
    report(&samples.borrow(), bytes, threads);
}

fn median(durations: &[Duration]) -> Duration {
    let mut sorted = durations.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn report(samples: &BTreeMap<String, Vec<Duration>>, bytes: u64, threads: usize) {
    println!("\nkernel throughput as a fraction of memcpy (median per pass, 400 MB input):");
    for (mode, label) in [
        ("1", "1 thread".to_string()),
        ("n", format!("{threads} threads")),
    ] {
        let Some(memcpy) = samples.get(&format!("{mode}/memcpy")).map(|d| median(d)) else {
            continue;
        };
        let gbps = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
        println!("  {label}: memcpy {:.2} GB/s", gbps(memcpy));
        for (key, durations) in samples {
            let Some(name) = key.strip_prefix(&format!("{mode}/")) else {
                continue;
            };
            if name == "memcpy" {
                continue;
            }
            let d = median(durations);
            println!(
                "    {name:<22} {:>6.2} GB/s  {:>5.1} % of memcpy",
                gbps(d),
                100.0 * memcpy.as_secs_f64() / d.as_secs_f64()
            );
        }
    }
}
