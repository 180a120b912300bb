//! `quant encode`: a calculator for people writing overrides by hand. It turns a range (or some
//! values) into one AIMET 0.6.1 encoding entry on stdout. It must not do any math of its own:
//! every number comes from [`crate::encoding`].

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use crate::encoding::kernels::{self, KernelError};
use crate::encoding::{Bitwidth, Encoding, EncodingError, Schema};

/// Arguments of `quant encode`. Values are taken as text and checked here, so that every
/// problem is reported as one line naming the argument.
#[derive(Args, Debug)]
#[command(
    about = "Compute one encoding (AIMET 0.6.1 entry) from a range or from values",
    long_about = "Compute one encoding from --min/--max, or from --values (their range), and print \
                  it as an AIMET 0.6.1 encodings entry. `offset` follows the AIMET convention \
                  round(min/scale), so zero-point = -offset; with --values the stored integers \
                  (signed for signed schemas) and their dequantized floats are added."
)]
pub struct EncodeArgs {
    /// Smallest value of the range (with --max).
    #[arg(long, allow_hyphen_values = true, value_name = "A")]
    min: Option<String>,
    /// Largest value of the range (with --min).
    #[arg(long, allow_hyphen_values = true, value_name = "B")]
    max: Option<String>,
    /// Comma-separated values; the range is theirs, and they are quantized too.
    #[arg(long, allow_hyphen_values = true, value_name = "V1,V2,...")]
    values: Option<String>,
    /// Bits per value: 2 to 16, or 32.
    #[arg(long, default_value = "8", value_name = "N")]
    bitwidth: String,
    /// asymmetric (default), signedasymmetric, symmetric or unsignedsymmetric.
    #[arg(long, default_value = "asymmetric", value_name = "S")]
    schema: String,
}

/// One encoding entry, keys in AIMET's (sorted) order.
#[derive(Serialize)]
struct Entry {
    bitwidth: u32,
    dtype: &'static str,
    is_symmetric: &'static str,
    max: f64,
    min: f64,
    offset: f64,
    scale: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    quantized: Option<Vec<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dequantized: Option<Vec<f32>>,
}

/// A usage problem, printed as `error: <message>`.
struct Usage(String);

/// Runs `quant encode`.
pub fn run(args: EncodeArgs) -> ExitCode {
    match entry(&args).and_then(|entry| {
        serde_json::to_string(&entry).map_err(|err| Usage(format!("cannot write JSON: {err}")))
    }) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(super::EXIT_USAGE)
        }
    }
}

fn entry(args: &EncodeArgs) -> Result<Entry, Usage> {
    let bits: u32 = args.bitwidth.trim().parse().map_err(|_| {
        Usage(format!(
            "--bitwidth: `{}` is not a whole number",
            args.bitwidth
        ))
    })?;
    let bitwidth = Bitwidth::new(bits).map_err(|err| Usage(format!("--bitwidth: {err}")))?;
    let schema: Schema = args
        .schema
        .trim()
        .parse()
        .map_err(|err: EncodingError| Usage(format!("--schema: {err}")))?;

    let (encoding, values) = match (&args.min, &args.max, &args.values) {
        (Some(min), Some(max), None) => {
            let min = parse_bound("--min", min)?;
            let max = parse_bound("--max", max)?;
            if min > max {
                return Err(Usage(format!("--min {min} is greater than --max {max}")));
            }
            (encode(min, max, bitwidth, schema)?, None)
        }
        (None, None, Some(values)) => {
            let values = parse_values(values)?;
            let (min, max) = kernels::min_max(&values)
                .range()
                .ok_or_else(|| Usage("--values: no values given".to_string()))?;
            (encode(min, max, bitwidth, schema)?, Some(values))
        }
        (_, _, Some(_)) => {
            return Err(Usage(
                "--values cannot be combined with --min/--max".to_string(),
            ));
        }
        (Some(_), None, None) => return Err(Usage("--min needs --max as well".to_string())),
        (None, Some(_), None) => return Err(Usage("--max needs --min as well".to_string())),
        (None, None, None) => {
            return Err(Usage(
                "give either --min and --max, or --values".to_string(),
            ));
        }
    };

    let (quantized, dequantized) = match values {
        Some(values) => {
            let (q, dq) = quantize(&values, &encoding).map_err(|err| Usage(err.to_string()))?;
            (Some(q), Some(dq))
        }
        None => (None, None),
    };
    Ok(Entry {
        bitwidth: encoding.bitwidth.bits(),
        dtype: "int",
        is_symmetric: if encoding.is_symmetric() {
            "True"
        } else {
            "False"
        },
        max: encoding.max,
        min: encoding.min,
        offset: encoding.offset as f64,
        scale: encoding.scale,
        quantized,
        dequantized,
    })
}

fn encode(min: f64, max: f64, bitwidth: Bitwidth, schema: Schema) -> Result<Encoding, Usage> {
    Encoding::from_range(min, max, bitwidth, schema).map_err(|err| Usage(err.to_string()))
}

fn parse_bound(name: &str, text: &str) -> Result<f64, Usage> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| Usage(format!("{name}: `{text}` is not a number")))?;
    if !value.is_finite() {
        return Err(Usage(format!("{name}: `{text}` is not a finite number")));
    }
    Ok(value)
}

/// Values are tensor data, so they are parsed as `f32` (what the kernels see).
fn parse_values(text: &str) -> Result<Vec<f32>, Usage> {
    text.split(',')
        .enumerate()
        .map(|(index, item)| {
            let value: f32 = item.trim().parse().map_err(|_| {
                Usage(format!(
                    "--values: item {} `{item}` is not a number",
                    index + 1
                ))
            })?;
            if !value.is_finite() {
                return Err(Usage(format!(
                    "--values: item {} `{item}` is not a finite 32-bit float",
                    index + 1
                )));
            }
            Ok(value)
        })
        .collect()
}

/// Stored integers and their floats, through the same kernels tensors go through. 32-bit
/// unsigned grids do not fit `i32`, so they take `u32`.
fn quantize(values: &[f32], encoding: &Encoding) -> Result<(Vec<i64>, Vec<f32>), KernelError> {
    let mut dequantized = vec![0f32; values.len()];
    let (_, max) = encoding.integer_range();
    let quantized = if max <= i64::from(i32::MAX) {
        let mut q = vec![0i32; values.len()];
        kernels::quantize(values, &mut q, encoding)?;
        kernels::dequantize(&q, &mut dequantized, encoding)?;
        q.into_iter().map(i64::from).collect()
    } else {
        let mut q = vec![0u32; values.len()];
        kernels::quantize(values, &mut q, encoding)?;
        kernels::dequantize(&q, &mut dequantized, encoding)?;
        q.into_iter().map(i64::from).collect()
    };
    Ok((quantized, dequantized))
}
