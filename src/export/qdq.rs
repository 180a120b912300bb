//! QDQ ONNX: the float model with every encoding written as ONNX QuantizeLinear/DequantizeLinear,
//! which onnxruntime (CPU and its QNN execution provider), TensorRT and others run as the
//! quantized model.
//!
//! This module turns [`ModelEncodings`] into a [`QdqPlan`]: the stored integer type of each
//! encoding, its scales and zero points, and each encoded parameter's integers. The graph
//! surgery itself is [`OnnxModel::with_qdq`]; this module never sees protobuf.
//!
//! Representation choices:
//! - Stored type from bitwidth and schema: up to 8 bits → `uint8`/`int8`, 9–16 → `uint16`/`int16`,
//!   32 → `int32`; signed for [`Schema::Symmetric`] and [`Schema::SignedAsymmetric`], unsigned
//!   otherwise. Zero points are [`Encoding::zero_point`]: `-offset` for unsigned asymmetric, 0 for
//!   signed symmetric. An unsigned 32-bit encoding (a bias encoded from its own range) is stored
//!   as `int32` with values and zero point shifted by `2^31`, which dequantizes to the same floats.
//! - Parameters (weights, and constants AIMET lists) of 4 bits or fewer are stored as ONNX
//!   `int4`/`uint4`, packed two per byte (see [`QuantizedType::raw_bytes`]): the seed's packed
//!   4-bit weights, at half the size of the 8-bit container.
//! - Other bitwidths (activations of 4 bits or fewer, 12, ...) use the next container with the
//!   encoding's own grid: stored parameters hold exactly the encoding's integers, but an
//!   activation's QuantizeLinear saturates at the container's limits, not the encoding's, so
//!   values beyond the encoding's range are clipped less than on the target.
//! - A 32-bit bias the quantizer encoded from its own range (its input or weight had no integer
//!   encoding: [`Warning::BiasOwnRange`]) stays in float: onnxruntime's fused kernels assume every
//!   int32 bias is at input scale × weight scale.
//! - Tensors kept in float (overrides with `dtype: float`, 16 or 32 bit) are left untouched in
//!   float32.
//! - The Q/DQ operator domain depends on the model's opset, which is never changed: see
//!   [`crate::onnx::qdq::QdqDomain`] (16-bit pairs and 4-bit weights below opset 21, and
//!   per-channel pairs below opset 13, use onnxruntime's `com.microsoft` operators).

use crate::encoding::tensor::ChannelLayout;
use crate::encoding::{Encoding, TensorEncoding};
use crate::onnx::qdq::{QdqError, QdqParams, QdqPlan, QdqTensor, QdqValues, QuantizedType};
use crate::onnx::{OnnxError, OnnxModel};
use std::collections::HashSet;

use crate::quantizer::{ModelEncodings, Warning};

/// The `metadata_props` key holding the encodings' digest.
pub const DIGEST_KEY: &str = "quant.encodings_digest";

/// The digest recorded in a QDQ model: blake3 of the AIMET encodings JSON bytes, in hex.
pub fn encodings_digest(aimet_json: &[u8]) -> String {
    blake3::hash(aimet_json).to_hex().to_string()
}

/// Why a QDQ model could not be made.
#[derive(Debug, thiserror::Error)]
pub enum QdqExportError {
    /// A parameter's values could not be read from the model.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// The model and the encodings disagree.
    #[error("cannot write the QDQ model: {0}")]
    Rewrite(#[from] QdqError),
    /// QuantizeLinear has no 32-bit output below opset 21, and runtimes do not run it.
    #[error("`{tensor}` has a 32-bit activation encoding, which QuantizeLinear cannot express")]
    Int32Activation {
        /// The tensor.
        tensor: String,
    },
    /// A per-channel parameter's encodings do not fit its shape.
    #[error("`{tensor}`: {message}")]
    Shape {
        /// The tensor.
        tensor: String,
        /// What does not fit.
        message: String,
    },
}

/// The stored integer type of an encoding (of a parameter the model stores, when `parameter`),
/// and the shift that moves its unsigned 32-bit integers into `int32`.
fn stored_type(encoding: &Encoding, parameter: bool) -> (QuantizedType, i64) {
    let bits = encoding.bitwidth.bits();
    let signed = encoding.schema.is_signed();
    match (bits, signed) {
        // Packed two per byte: the seed's `--pack_4_bit_weights`, in ONNX's own 4-bit types.
        (..=4, false) if parameter => (QuantizedType::Uint4, 0),
        (..=4, true) if parameter => (QuantizedType::Int4, 0),
        (..=8, false) => (QuantizedType::Uint8, 0),
        (..=8, true) => (QuantizedType::Int8, 0),
        (..=16, false) => (QuantizedType::Uint16, 0),
        (..=16, true) => (QuantizedType::Int16, 0),
        (_, true) => (QuantizedType::Int32, 0),
        (_, false) => (QuantizedType::Int32, 1 << 31),
    }
}

fn params(
    encodings: &[Encoding],
    axis: Option<usize>,
    parameter: bool,
) -> Option<(QdqParams, i64)> {
    let (dtype, shift) = stored_type(encodings.first()?, parameter);
    Some((
        QdqParams {
            dtype,
            scales: encodings.iter().map(|e| e.scale as f32).collect(),
            zero_points: encodings.iter().map(|e| e.zero_point() - shift).collect(),
            axis,
        },
        shift,
    ))
}

/// The plan for `encodings` on `model`: which tensors become Q/DQ and with what numbers.
pub fn plan(
    model: &OnnxModel,
    encodings: &ModelEncodings,
    digest: &str,
) -> Result<QdqPlan, QdqExportError> {
    let own_range_biases = own_range_biases(encodings);
    let mut tensors = Vec::new();
    for (name, encoding) in encodings.activations.iter().chain(&encodings.parameters) {
        // A float or INT32 activation next to an integer op is quantized with its integer
        // side's encoding; an INT32 one between int32 ops is only cast.
        if let Some(converted) = encodings.converted.get(name) {
            tensors.extend(plan_tensor_with(name, converted, false, None)?);
            continue;
        }
        if encodings.activations.contains_key(name) && is_int32(encoding) {
            continue;
        }
        let own_range = own_range_biases.contains(name.as_str());
        if let Some(tensor) = plan_tensor(model, name, encoding, own_range)? {
            tensors.push(tensor);
        }
    }
    Ok(assemble(tensors, digest))
}

/// The biases the quantizer had to encode from their own range ([`Warning::BiasOwnRange`]).
pub fn own_range_biases(encodings: &ModelEncodings) -> HashSet<&str> {
    encodings
        .warnings
        .iter()
        .filter_map(|w| match w {
            Warning::BiasOwnRange { tensor } => Some(tensor.as_str()),
            _ => None,
        })
        .collect()
}

/// The plan of the tensors [`plan_tensor`] made, in the order of [`plan`], with `digest` in
/// its metadata.
pub fn assemble(tensors: Vec<QdqTensor>, digest: &str) -> QdqPlan {
    QdqPlan {
        tensors,
        metadata: vec![(DIGEST_KEY.to_string(), digest.to_string())],
    }
}

/// One tensor's part of [`plan`]: `None` when it stays float. `own_range_bias` marks a bias the
/// quantizer encoded from its own range. A parameter's integers are computed here, which is
/// most of an export's work, so a build keeps the result per tensor.
pub fn plan_tensor(
    model: &OnnxModel,
    name: &str,
    encoding: &TensorEncoding,
    own_range_bias: bool,
) -> Result<Option<QdqTensor>, QdqExportError> {
    let stored = model.parameter_values(name)?;
    plan_tensor_with(
        name,
        encoding,
        own_range_bias,
        stored.as_ref().map(|p| (&p.values[..], &p.dims[..])),
    )
}

/// [`plan_tensor`] with the parameter's values and dims already at hand (`None`: the tensor is
/// an activation).
pub fn plan_tensor_with(
    name: &str,
    encoding: &TensorEncoding,
    own_range_bias: bool,
    stored: Option<(&[f32], &[u64])>,
) -> Result<Option<QdqTensor>, QdqExportError> {
    // onnxruntime's fused integer kernels (QLinearConv, QGemm) read an int32 bias as if its
    // scale were input scale × weight scale, whatever its DequantizeLinear says; a bias the
    // quantizer had to encode from its own range would be misread, so it stays in float (its
    // 32-bit grid is finer than float32 rounding anyway).
    if own_range_bias {
        return Ok(None);
    }
    let axis = match encoding {
        TensorEncoding::PerTensor(_) => None,
        TensorEncoding::PerChannel { axis, .. } => Some(*axis),
        TensorEncoding::Float { .. } => return Ok(None),
    };
    let Some((params, shift)) = params(encoding.encodings(), axis, stored.is_some()) else {
        return Ok(None);
    };
    // Constants AIMET lists as activations are stored quantized too: the model holds them.
    match stored {
        Some((values, dims)) => {
            let values = quantize_values(name, values, dims, encoding, params.dtype, shift)?;
            Ok(Some(QdqTensor::Parameter {
                name: name.to_string(),
                params,
                values,
            }))
        }
        None => {
            if params.dtype == QuantizedType::Int32 {
                return Err(QdqExportError::Int32Activation {
                    tensor: name.to_string(),
                });
            }
            Ok(Some(QdqTensor::Activation {
                name: name.to_string(),
                params,
            }))
        }
    }
}

fn quantize_values(
    name: &str,
    values: &[f32],
    dims: &[u64],
    encoding: &TensorEncoding,
    dtype: QuantizedType,
    shift: i64,
) -> Result<QdqValues, QdqExportError> {
    let out_of_range = |bad: i64| {
        QdqExportError::Rewrite(QdqError::Plan {
            name: name.to_string(),
            message: format!("stored value {bad} does not fit {dtype:?}"),
        })
    };
    match encoding {
        TensorEncoding::PerTensor(e) => {
            let grid = Grid::new(e, shift);
            QdqValues::new(dtype, values.iter().map(|&x| grid.quantize(x))).map_err(out_of_range)
        }
        TensorEncoding::PerChannel { axis, channels } => {
            let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
            let shape_error = |message: String| QdqExportError::Shape {
                tensor: name.to_string(),
                message,
            };
            let layout = ChannelLayout::new(&shape, *axis, values.len())
                .map_err(|e| shape_error(e.to_string()))?;
            if layout.channels != channels.len() {
                return Err(shape_error(format!(
                    "{} per-channel encodings for {} channels along axis {axis}",
                    channels.len(),
                    layout.channels
                )));
            }
            let grids: Vec<Grid> = channels.iter().map(|e| Grid::new(e, shift)).collect();
            // Row-major: runs of `inner` values share a channel, and the channels cycle.
            let quantized =
                values
                    .chunks(layout.inner.max(1))
                    .enumerate()
                    .flat_map(|(run, chunk)| {
                        let grid = &grids[run % grids.len().max(1)];
                        chunk.iter().map(move |&x| grid.quantize(x))
                    });
            QdqValues::new(dtype, quantized).map_err(out_of_range)
        }
        TensorEncoding::Float { .. } => Ok(QdqValues::new(dtype, []).map_err(out_of_range)?),
    }
}

/// [`Encoding::quantize_value`] minus `shift`, with the per-encoding constants worked out once:
/// weights are millions of values, and recomputing `2^bw` and the signed shift per value
/// dominated the export.
struct Grid {
    scale: f64,
    offset: f64,
    steps: f64,
    shift: i64,
}

impl Grid {
    fn new(encoding: &Encoding, shift: i64) -> Grid {
        let (low, _) = encoding.integer_range();
        Grid {
            scale: encoding.scale,
            offset: encoding.offset as f64,
            steps: encoding.bitwidth.steps(),
            shift: shift - low,
        }
    }

    /// The same arithmetic as [`Encoding::quantize_value`], in the same order, so the result
    /// is bit for bit the same.
    #[inline]
    fn quantize(&self, x: f32) -> i64 {
        let grid = (f64::from(x) / self.scale - self.offset).round_ties_even();
        let grid = if grid.is_nan() {
            0.0
        } else {
            grid.clamp(0.0, self.steps)
        };
        grid as i64 - self.shift
    }
}

/// The QDQ model for `model` quantized with `encodings`; `digest` (see [`encodings_digest`]) is
/// recorded under [`DIGEST_KEY`]. Write it with [`OnnxModel::write`] (atomic) or take its bytes
/// with [`OnnxModel::to_bytes`].
pub fn export(
    model: &OnnxModel,
    encodings: &ModelEncodings,
    digest: &str,
) -> Result<OnnxModel, QdqExportError> {
    let plan = plan(model, encodings, digest)?;
    if encodings.ops.is_empty() {
        return Ok(model.with_qdq(&plan)?);
    }
    let graph = crate::graph::Graph::from_model(model).map_err(|e| QdqExportError::Shape {
        tensor: String::new(),
        message: e.to_string(),
    })?;
    with_precisions_and_qdq(
        model,
        crate::quantizer::precision::float32_tensors(&graph),
        &encodings.ops,
        &plan,
    )
}

/// Whether an encoding is INT32 (an INT32 override's).
pub fn is_int32(encoding: &TensorEncoding) -> bool {
    matches!(encoding, TensorEncoding::PerTensor(e) if e.bitwidth.bits() == 32)
}

/// The QDQ model of `plan` on `model` whose `ops` compute in their own precision: the
/// precision rewrite first (casts, float16 weights, int32 ops), then the Q/DQ pairs on the
/// tensors the rewrite left under their names. `float32` lists the model's float32 tensors.
pub fn with_precisions_and_qdq(
    model: &OnnxModel,
    float32: HashSet<String>,
    ops: &std::collections::BTreeMap<String, crate::onnx::precision::NodePrecision>,
    plan: &QdqPlan,
) -> Result<OnnxModel, QdqExportError> {
    let precisions = crate::onnx::precision::PrecisionPlan {
        nodes: ops.clone(),
        float32,
        quantized: plan.tensors.iter().map(|t| t.name().to_string()).collect(),
        keep_io_types: true,
    };
    Ok(model.with_precisions(&precisions)?.with_qdq(plan)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{Bitwidth, Schema};

    #[test]
    fn stored_types_and_zero_points_per_schema() {
        let asym = Encoding::from_range(-1.8, 0.5, Bitwidth::B8, Schema::Asymmetric).unwrap();
        let (p, _) = params(&[asym], None, true).unwrap();
        assert_eq!((p.dtype, p.zero_points[0]), (QuantizedType::Uint8, 200));
        let sym = Encoding::symmetric(1.0, Bitwidth::B8, Schema::Symmetric);
        let (p, _) = params(&[sym], None, true).unwrap();
        assert_eq!((p.dtype, p.zero_points[0]), (QuantizedType::Int8, 0));
        let signed =
            Encoding::from_range(-1.8, 0.5, Bitwidth::B8, Schema::SignedAsymmetric).unwrap();
        let (p, _) = params(&[signed], None, true).unwrap();
        assert_eq!((p.dtype, p.zero_points[0]), (QuantizedType::Int8, 72));
        let a16 = Encoding::from_range(0.0, 1.0, Bitwidth::B16, Schema::Asymmetric).unwrap();
        assert_eq!(stored_type(&a16, false).0, QuantizedType::Uint16);
        let a4 =
            Encoding::from_range(-1.0, 1.0, Bitwidth::new(4).unwrap(), Schema::Asymmetric).unwrap();
        // A 4-bit activation lives in the 8-bit container; a 4-bit parameter is packed.
        let (p, _) = params(&[a4], None, false).unwrap();
        assert_eq!((p.dtype, p.zero_points[0]), (QuantizedType::Uint8, 8));
        let (p, _) = params(&[a4], None, true).unwrap();
        assert_eq!((p.dtype, p.zero_points[0]), (QuantizedType::Uint4, 8));
        let s4 = Encoding::symmetric(1.0, Bitwidth::new(4).unwrap(), Schema::Symmetric);
        let (p, _) = params(&[s4], Some(0), true).unwrap();
        assert_eq!((p.dtype, p.zero_points[0]), (QuantizedType::Int4, 0));
        let bias = Encoding::int32_bias(0.01, 0.02);
        let (p, shift) = params(&[bias], None, true).unwrap();
        assert_eq!(
            (p.dtype, p.zero_points[0], shift),
            (QuantizedType::Int32, 0, 0)
        );
        let own = Encoding::from_range(-1.0, 1.0, Bitwidth::B32, Schema::Asymmetric).unwrap();
        let (p, shift) = params(&[own], None, true).unwrap();
        assert_eq!(p.dtype, QuantizedType::Int32);
        // Shifted into int32, the zero point still dequantizes 0.0 exactly.
        assert_eq!(p.zero_points[0] + shift, own.zero_point());
    }

    proptest::proptest! {
        #[test]
        fn grid_equals_quantize_value(
            x in proptest::num::f32::ANY,
            lo in -100.0f64..0.0,
            hi in 0.0f64..100.0,
            bits in proptest::sample::select(vec![4u32, 8, 16, 32]),
            schema in proptest::sample::select(vec![Schema::Asymmetric, Schema::Symmetric, Schema::SignedAsymmetric]),
        ) {
            let e = Encoding::from_range(lo, hi, Bitwidth::new(bits).unwrap(), schema).unwrap();
            for shift in [0, 1 << 31] {
                proptest::prop_assert_eq!(
                    Grid::new(&e, shift).quantize(x),
                    e.quantize_value(f64::from(x)) - shift
                );
            }
        }
    }

    #[test]
    fn per_channel_values_use_each_channel_grid() {
        let channels = vec![
            Encoding::symmetric(1.27, Bitwidth::B8, Schema::Symmetric),
            Encoding::symmetric(2.54, Bitwidth::B8, Schema::Symmetric),
        ];
        let encoding = TensorEncoding::PerChannel { axis: 1, channels };
        // dims [2, 2]: columns are channels.
        let int8 = QuantizedType::Int8;
        let q = quantize_values("w", &[1.27, 1.3, -0.5, 2.54], &[2, 2], &encoding, int8, 0);
        assert_eq!(
            q.unwrap(),
            QdqValues::new(int8, [127, 65, -50, 127]).unwrap()
        );
        let err = quantize_values("w", &[1.0; 6], &[2, 3], &encoding, int8, 0).unwrap_err();
        assert!(
            err.to_string().contains("2 per-channel encodings for 3"),
            "{err}"
        );
    }
}
