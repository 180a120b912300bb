//! Cost of one sample's mean input patch (`BiasLayer::accumulate`) on a 64×80×80 activation,
//! next to a `memcpy` of the same activation measured in the same run: the patch of a 3×3 Conv
//! (stride 1 and 2), of a 1×1 Conv and of a 3×3 ConvTranspose of stride 2, all one pass over
//! the input whatever the kernel size.
//!
//! `cargo bench --bench bias_means -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quant::transform::{BiasLayer, Geometry, Padding, Window};

const SHAPE: [usize; 4] = [1, 64, 80, 80];

fn data() -> Vec<f32> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..SHAPE.iter().product::<usize>())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u32 << 24) as f32
        })
        .collect()
}

fn layer(transpose: bool, kernel: usize, stride: usize) -> BiasLayer {
    let pad = kernel / 2;
    let window = Window {
        kernel: vec![kernel; 2],
        strides: vec![stride; 2],
        dilations: vec![1; 2],
        padding: Padding::Explicit {
            begin: vec![pad; 2],
            end: vec![pad; 2],
        },
        groups: 1,
        output_padding: vec![if transpose { stride - 1 } else { 0 }; 2],
        output_shape: None,
    };
    BiasLayer {
        output: "y".into(),
        input: "x".into(),
        in_channels: SHAPE[1],
        geometry: if transpose {
            Geometry::ConvTranspose(window)
        } else {
            Geometry::Conv(window)
        },
    }
}

fn bench(c: &mut Criterion) {
    let input = data();
    let mut group = c.benchmark_group("mean_patch_64x80x80");
    group.throughput(Throughput::Bytes((input.len() * 4) as u64));
    let mut copy = vec![0f32; input.len()];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            copy.copy_from_slice(black_box(&input));
            black_box(&copy);
        })
    });
    let cases = [
        ("conv_3x3_stride_1", layer(false, 3, 1)),
        ("conv_3x3_stride_2", layer(false, 3, 2)),
        ("conv_1x1", layer(false, 1, 1)),
        ("conv_transpose_3x3_stride_2", layer(true, 3, 2)),
    ];
    for (name, layer) in cases {
        let mut sums = vec![0f64; layer.patch_len()];
        group.bench_function(name, |b| {
            b.iter(|| {
                layer
                    .accumulate(black_box(&input), &SHAPE, &mut sums)
                    .unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
