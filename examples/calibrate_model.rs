//! Calibrating one model in a few lines, with no manifest and no cache: load an ONNX model, run
//! calibration samples through it, and get the encoding of every tensor, exactly as
//! `quant quantize` (qairt-quantizer's command line) does.
//!
//! It uses the bundled text-orientation pipeline: PaddleOCR's text-orientation classifier and its
//! eight calibration samples, quantized with 8-bit asymmetric activations and per-channel
//! symmetric 8-bit weights. `quant::engine::oneshot` is the non-incremental pipeline; the
//! manifest build (`quant build`) computes the same encodings through its cached queries.
//!
//! Run it with `cargo run --example calibrate_model`.

use std::path::Path;

use quant::encoding::{Bitwidth, Schema, TensorEncoding};
use quant::engine::oneshot::{OneShot, quantize};
use quant::quantizer::QuantizerSettings;

/// Errors are printed as `quant quantize` prints them (with the list file's line for a bad
/// sample).
fn main() -> miette::Result<()> {
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/text-orientation");
    let job = OneShot {
        model: pipeline.join("models/cls.onnx"),
        // One `.raw` file per line: float32 tensors of the model's input shape.
        input_list: Some(pipeline.join("calib/input_list.txt")),
        overrides: None,
        // The export leaves batch, height and width dynamic; calibration needs them fixed.
        input_dims: vec![("x".to_string(), vec![1, 3, 48, 192])],
        // qairt-quantizer's defaults (8-bit, min-max, asymmetric), but per-channel symmetric
        // weights and 32-bit biases, as HTP runs them.
        settings: QuantizerSettings {
            bias_bitwidth: Bitwidth::B32,
            param_schema: Schema::Symmetric,
            per_channel: true,
            ..QuantizerSettings::default()
        },
        // No model transforms (`--algorithms cle` would equalize the model first).
        algorithms: Default::default(),
        // AdaRound's settings, read only when `algorithms.adaround` is on.
        adaround: Default::default(),
        adaround_names: Default::default(),
        jobs: None,
    };
    // Samples run side by side on every core; the callback (ignored here) hears of each one done.
    let output = quantize(&job, |_done, _total| {}).map_err(|e| e.into_report())?;

    let encodings = &output.model_encodings;
    println!(
        "{}: {} samples, {} activations and {} parameters encoded",
        job.model.display(),
        output.samples,
        encodings.activations.len(),
        encodings.parameters.len()
    );
    println!("\nactivations (the first five, and the model's output):");
    // The graph's first output, by name, from the model as calibrated.
    let output_name = output
        .model
        .proto()
        .graph
        .as_ref()
        .and_then(|g| g.output.first())
        .and_then(|o| o.name.as_deref());
    let shown = encodings
        .activations
        .iter()
        .take(5)
        .chain(output_name.and_then(|name| encodings.activations.get_key_value(name)));
    for (name, encoding) in shown {
        print_encoding(name, encoding);
    }
    println!("\nweights (the first three):");
    for (name, encoding) in encodings
        .parameters
        .iter()
        .filter(|(_, e)| matches!(e, TensorEncoding::PerChannel { .. }))
        .take(3)
    {
        print_encoding(name, encoding);
    }
    for warning in &output.warnings {
        println!("warning: {warning}");
    }
    Ok(())
}

/// One line per tensor: its range and grid, or its channels' when it has one encoding each.
fn print_encoding(name: &str, encoding: &TensorEncoding) {
    match encoding {
        TensorEncoding::PerTensor(e) => println!(
            "  {name:<32} {}-bit {:<10} [{:>9.4}, {:>9.4}]  scale {:.6}  offset {}",
            e.bitwidth, e.schema, e.min, e.max, e.scale, e.offset
        ),
        TensorEncoding::PerChannel { axis, channels } => {
            let Some(first) = channels.first() else {
                return println!("  {name:<32} per channel, without channels");
            };
            let scales = channels.iter().map(|e| e.scale);
            let (low, high) =
                scales.fold((f64::MAX, f64::MIN), |(lo, hi), s| (lo.min(s), hi.max(s)));
            println!(
                "  {name:<32} {}-bit {} per channel: {} channels along axis {axis}, \
                 scales {low:.6} to {high:.6}",
                first.bitwidth,
                first.schema,
                channels.len()
            );
        }
        TensorEncoding::Float { bitwidth } => println!("  {name:<32} float{bitwidth}"),
    }
}
