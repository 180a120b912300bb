//! Throughput of statistics collection (min/max, histogram) over 100 M `f32`, on one thread and on
//! all threads (rayon: fixed-size chunks, one statistic per chunk, merged in chunk order), next to
//! a `memcpy` of the same buffer measured in the same run. Compare each figure with `memcpy`'s.
//!
//! `cargo bench --bench stats -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quant::encoding::{Bitwidth, Schema};
use quant::stats::{
    Calibration, Histogram, MinMax, StatisticsSettings, TensorStatistics, select_range,
};
use rayon::prelude::*;

const LEN: usize = 100_000_000;
/// Chunk size for the parallel runs; fixed, so the merged result does not depend on thread count.
const CHUNK: usize = 1 << 20;

/// Activation-like data: a bell shape (sum of two uniforms) with a sprinkle of outliers, or the
/// same after a ReLU (half zeros, the worst case for histogram counters).
fn data(relu: bool) -> Vec<f32> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u32 << 24) as f32
    };
    (0..LEN)
        .map(|i| {
            let x = (next() + next() - 1.0) * 4.0 + if i % 100_003 == 0 { 50.0 } else { 0.0 };
            if relu { x.max(0.0) } else { x }
        })
        .collect()
}

fn parallel<S: Send>(
    values: &[f32],
    new: impl Fn() -> S + Sync,
    observe: impl Fn(&mut S, &[f32]) + Sync,
) -> Vec<S> {
    values
        .par_chunks(CHUNK)
        .map(|chunk| {
            let mut s = new();
            observe(&mut s, chunk);
            s
        })
        .collect()
}

fn statistics(c: &mut Criterion) {
    let values = data(false);
    let relu = data(true);
    let mut copy = vec![0f32; LEN];
    let threads = rayon::current_num_threads();

    let mut group = c.benchmark_group("stats");
    group.sample_size(10);
    group.throughput(Throughput::Bytes((LEN * size_of::<f32>()) as u64));

    group.bench_function("memcpy", |b| {
        b.iter(|| copy.copy_from_slice(black_box(&values)));
    });
    group.bench_function("min_max/1_thread", |b| {
        b.iter(|| {
            let mut m = MinMax::new();
            m.observe(black_box(&values));
            m
        });
    });
    group.bench_function(format!("min_max/{threads}_threads"), |b| {
        b.iter(|| {
            let parts = parallel(black_box(&values), MinMax::new, |m, c| m.observe(c));
            let mut merged = MinMax::new();
            parts.iter().for_each(|p| merged.merge(p));
            merged
        });
    });
    group.bench_function("histogram/1_thread", |b| {
        let mut h = Histogram::new();
        b.iter(|| {
            h = Histogram::new();
            h.observe(black_box(&values));
        });
    });
    group.bench_function("histogram_relu/1_thread", |b| {
        let mut h = Histogram::new();
        b.iter(|| {
            h = Histogram::new();
            h.observe(black_box(&relu));
        });
    });
    group.bench_function(format!("histogram/{threads}_threads"), |b| {
        b.iter(|| {
            let parts = parallel(black_box(&values), Histogram::new, |h, c| h.observe(c));
            let mut merged = Histogram::new();
            parts.iter().for_each(|p| merged.merge(p));
            merged
        });
    });
    group.bench_function("min_max+histogram/1_thread", |b| {
        b.iter(|| {
            let mut s = TensorStatistics::new(StatisticsSettings::WITH_HISTOGRAM);
            s.observe(black_box(&values));
            s
        });
    });
    group.finish();

    // Range selection on the histogram of the same data: the per-tensor cost after calibration.
    let mut stats = TensorStatistics::new(StatisticsSettings::WITH_HISTOGRAM);
    stats.observe(&values);
    let mut group = c.benchmark_group("select_range");
    for calibration in [
        Calibration::Sqnr,
        Calibration::Mse,
        Calibration::Entropy,
        Calibration::Percentile(99.99),
    ] {
        group.bench_function(calibration.as_str(), |b| {
            b.iter(|| {
                select_range(
                    black_box(&stats),
                    calibration,
                    Bitwidth::B8,
                    Schema::Asymmetric,
                )
            });
        });
    }
    group.finish();

    // The claim the benchmark rests on: the merged parallel result is the sequential one, bit for bit.
    let mut sequential = Histogram::new();
    sequential.observe(&values);
    let parts = parallel(&values, Histogram::new, |h, c| h.observe(c));
    let mut merged = Histogram::new();
    parts.iter().for_each(|p| merged.merge(p));
    assert_eq!(
        merged, sequential,
        "parallel histogram differs from sequential"
    );
}

criterion_group!(benches, statistics);
criterion_main!(benches);
