//! The encoding math of `quant`, with no model and no files: how a float range becomes an
//! encoding (bitwidth, min, max, scale, offset) exactly as the QNN quantization specification
//! says, and what quantizing and dequantizing with it does to values.
//!
//! It shows an 8-bit asymmetric and an 8-bit symmetric encoding of the same range, a 16-bit
//! activation, and per-channel weights, each with a few values pushed through the integer grid.
//!
//! Run it with `cargo run --example encoding_math`.

use quant::encoding::kernels::{dequantize, fake_quantize_in_place, quantize};
use quant::encoding::tensor::{fake_quantize_per_channel_in_place, per_channel_encodings};
use quant::encoding::{Bitwidth, Encoding, Schema, SymmetricConvention, TensorEncoding};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // An activation observed in [-1.5, 4.0] during calibration.
    let (min, max) = (-1.5, 4.0);
    let probes = [-2.0, -1.5, -0.3, 0.0, 0.01, 1.0, 3.99, 4.0, 5.0];

    // Asymmetric: the grid spans exactly [min, max] (widened so that 0.0 is a grid point).
    let asymmetric = Encoding::from_range(min, max, Bitwidth::B8, Schema::Asymmetric)?;
    show("8-bit asymmetric", &asymmetric);
    round_trip(&asymmetric, &probes);

    // Symmetric: the grid is centred on zero and spans [-absmax, absmax], so half of it goes
    // unused here (nothing is below -1.5) and the step is coarser.
    let symmetric = Encoding::from_range(min, max, Bitwidth::B8, Schema::Symmetric)?;
    show("8-bit symmetric", &symmetric);
    round_trip(&symmetric, &probes);

    // The same math on whole slices, as the kernels run it over tensors: stored integers (u8
    // for the unsigned grid) and back, or fake quantization in one step.
    let values = [-1.5f32, -0.3, 0.0, 0.77, 4.0];
    let mut stored = [0u8; 5];
    quantize(&values, &mut stored, &asymmetric)?;
    let mut restored = [0f32; 5];
    dequantize(&stored, &mut restored, &asymmetric)?;
    println!("  slice {values:?}\n    → u8 {stored:?}\n    → f32 {restored:?}");
    let mut fake = values;
    fake_quantize_in_place(&mut fake, &asymmetric);
    assert_eq!(
        fake, restored,
        "fake quantization is quantize then dequantize"
    );
    println!();

    // A 16-bit activation (a ReLU6 output): 65536 steps instead of 256, so the step is 256
    // times finer and the round-trip error all but disappears.
    let wide = Encoding::from_range(0.0, 6.0, Bitwidth::B16, Schema::Asymmetric)?;
    show("16-bit asymmetric activation", &wide);
    round_trip(&wide, &[0.0, 0.001, 1.2345, 5.9999, 6.0]);

    // Per-channel weights: a [2 output channels, 4] weight, each channel with its own symmetric
    // encoding, so the small channel keeps its precision instead of sharing the large one's step.
    let weights = [0.02f32, -0.01, 0.015, -0.02, 1.5, -3.0, 0.7, 2.2];
    let shape = [2, 4];
    let per_channel = per_channel_encodings(
        &weights,
        &shape,
        0,
        Bitwidth::B8,
        Schema::Symmetric,
        SymmetricConvention::Seed,
    )?;
    let TensorEncoding::PerChannel { axis, channels } = &per_channel else {
        unreachable!("per_channel_encodings returns per-channel encodings");
    };
    println!("per-channel weights along axis {axis}, shape {shape:?}");
    for (c, encoding) in channels.iter().enumerate() {
        show(&format!("  channel {c}"), encoding);
    }
    let mut simulated = weights;
    fake_quantize_per_channel_in_place(&mut simulated, &shape, *axis, channels)?;
    let per_tensor = Encoding::from_range(-3.0, 2.2, Bitwidth::B8, Schema::Symmetric)?;
    let mut shared = weights;
    fake_quantize_in_place(&mut shared, &per_tensor);
    println!("  weights            {weights:?}");
    println!("  per-channel        {simulated:?}");
    println!("  one shared scale   {shared:?}  (channel 0 keeps one step)");
    Ok(())
}

/// Prints an encoding's parameters.
fn show(title: &str, e: &Encoding) {
    let (lowest, highest) = e.integer_range();
    println!(
        "{title}: bitwidth {}, schema {}, min {:.6}, max {:.6}, scale {:.8}, offset {}, \
         stored integers {lowest}..={highest}, zero point {}",
        e.bitwidth,
        e.schema,
        e.min,
        e.max,
        e.scale,
        e.offset,
        e.zero_point()
    );
}

/// Quantizes each value to its stored integer and back, showing the error (values outside the
/// range are clamped to its ends).
fn round_trip(e: &Encoding, values: &[f64]) {
    for &x in values {
        let q = e.quantize_value(x);
        let back = e.dequantize_value(q);
        println!(
            "  {x:>9.4} → {q:>6} → {back:>10.6}  (error {:+.6})",
            back - x
        );
    }
    println!();
}
