//! The encoding of a whole tensor: one [`Encoding`], one per channel along an axis, or none
//! (kept in float), plus the per-channel range and fake-quant helpers over row-major `f32` data.
//!
//! Per-row quantization (QNN's FullyConnected/MatMul weights) is per-channel along axis 0 of the
//! 2-D weight. This module knows shapes and axes but nothing about operators: choosing the axis
//! for a Conv or a Gemm weight is the caller's job.

use super::kernels::{self, FakeQuant, MinMax};
use super::{Bitwidth, Encoding, EncodingError, Schema, SymmetricConvention};

/// Width of a tensor kept in floating point (`dtype: "float"` in an overrides file, the seed's
/// `--float_bw`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FloatBitwidth {
    /// Half precision.
    F16,
    /// Single precision.
    F32,
}

impl FloatBitwidth {
    /// From an overrides file's `bitwidth`; only 16 and 32 exist.
    pub const fn new(bits: u32) -> Option<FloatBitwidth> {
        match bits {
            16 => Some(FloatBitwidth::F16),
            32 => Some(FloatBitwidth::F32),
            _ => None,
        }
    }

    /// 16 or 32.
    pub const fn bits(self) -> u32 {
        match self {
            FloatBitwidth::F16 => 16,
            FloatBitwidth::F32 => 32,
        }
    }
}

impl std::fmt::Display for FloatBitwidth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.bits())
    }
}

/// How one tensor is represented in the quantized model.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorEncoding {
    /// One encoding for every value.
    PerTensor(Encoding),
    /// One encoding per index along `axis` (AIMET lists them in channel order). QNN requires
    /// these to be symmetric with offset `-2^(bw-1)`; this type does not enforce it.
    PerChannel {
        /// The channel axis of the row-major tensor.
        axis: usize,
        /// One encoding per channel.
        channels: Vec<Encoding>,
    },
    /// Not quantized: kept as 16- or 32-bit float.
    Float {
        /// Float width.
        bitwidth: FloatBitwidth,
    },
}

impl TensorEncoding {
    /// The integer encodings: one for per-tensor, one per channel, none for float.
    pub fn encodings(&self) -> &[Encoding] {
        match self {
            TensorEncoding::PerTensor(encoding) => std::slice::from_ref(encoding),
            TensorEncoding::PerChannel { channels, .. } => channels,
            TensorEncoding::Float { .. } => &[],
        }
    }
}

/// Why a tensor-level helper refused its arguments.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorEncodingError {
    /// The axis does not exist in the shape.
    #[error("axis {axis} is out of range for a rank-{rank} tensor")]
    AxisOutOfRange {
        /// The axis asked for.
        axis: usize,
        /// The tensor's rank.
        rank: usize,
    },
    /// The data's length is not the product of the shape.
    #[error("shape {shape:?} holds {expected} values but the data has {actual}")]
    ShapeMismatch {
        /// The shape.
        shape: Vec<usize>,
        /// Product of the shape.
        expected: usize,
        /// Length of the data.
        actual: usize,
    },
    /// Not one encoding per channel.
    #[error("axis has {expected} channels but {actual} encodings were given")]
    ChannelCount {
        /// Channels along the axis.
        expected: usize,
        /// Encodings given.
        actual: usize,
    },
    /// A channel's range could not be encoded.
    #[error(transparent)]
    Encoding(#[from] EncodingError),
}

/// A row-major tensor seen as `[outer, channels, inner]` around one axis: channel `c` owns the
/// contiguous runs `data[(o·channels + c)·inner ..][..inner]` for every `o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLayout {
    /// Product of the dimensions before the axis.
    pub outer: usize,
    /// Size of the axis.
    pub channels: usize,
    /// Product of the dimensions after the axis.
    pub inner: usize,
}

impl ChannelLayout {
    /// Checks `axis` against `shape` and `shape` against `len` values.
    pub fn new(
        shape: &[usize],
        axis: usize,
        len: usize,
    ) -> Result<ChannelLayout, TensorEncodingError> {
        if axis >= shape.len() {
            return Err(TensorEncodingError::AxisOutOfRange {
                axis,
                rank: shape.len(),
            });
        }
        let expected: usize = shape.iter().product();
        if expected != len {
            return Err(TensorEncodingError::ShapeMismatch {
                shape: shape.to_vec(),
                expected,
                actual: len,
            });
        }
        Ok(ChannelLayout {
            outer: shape[..axis].iter().product(),
            channels: shape[axis],
            inner: shape[axis + 1..].iter().product(),
        })
    }
}

/// The range of each channel along `axis` of a row-major tensor of `shape`.
pub fn per_channel_min_max(
    data: &[f32],
    shape: &[usize],
    axis: usize,
) -> Result<Vec<MinMax>, TensorEncodingError> {
    let layout = ChannelLayout::new(shape, axis, data.len())?;
    let mut ranges = vec![MinMax::EMPTY; layout.channels];
    if layout.channels == 0 || layout.inner == 0 {
        return Ok(ranges);
    }
    for block in data.chunks_exact(layout.channels * layout.inner) {
        for (range, run) in ranges.iter_mut().zip(block.chunks_exact(layout.inner)) {
            *range = range.merge(kernels::min_max(run));
        }
    }
    Ok(ranges)
}

/// Per-channel encodings of a tensor along `axis`, each from its channel's range (see
/// [`Encoding::from_range_with`]). A channel without any finite value is encoded as `[0, 0]`,
/// i.e. the minimum range.
pub fn per_channel_encodings(
    data: &[f32],
    shape: &[usize],
    axis: usize,
    bitwidth: Bitwidth,
    schema: Schema,
    convention: SymmetricConvention,
) -> Result<TensorEncoding, TensorEncodingError> {
    let channels = per_channel_min_max(data, shape, axis)?
        .iter()
        .map(|range| {
            let (min, max) = range.range().unwrap_or((0.0, 0.0));
            Encoding::from_range_with(min, max, bitwidth, schema, convention)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TensorEncoding::PerChannel { axis, channels })
}

/// The per-tensor encoding of `data` from its range, like [`per_channel_encodings`] with one
/// channel.
pub fn per_tensor_encoding(
    data: &[f32],
    bitwidth: Bitwidth,
    schema: Schema,
    convention: SymmetricConvention,
) -> Result<TensorEncoding, EncodingError> {
    let (min, max) = kernels::min_max(data).range().unwrap_or((0.0, 0.0));
    Encoding::from_range_with(min, max, bitwidth, schema, convention).map(TensorEncoding::PerTensor)
}

/// Fake-quantizes a row-major tensor in place with one encoding per channel along `axis`.
pub fn fake_quantize_per_channel_in_place(
    data: &mut [f32],
    shape: &[usize],
    axis: usize,
    channels: &[Encoding],
) -> Result<(), TensorEncodingError> {
    fake_quantize_per_channel_in_place_as(data, shape, axis, channels, FakeQuant::OnnxRuntime)
}

/// [`fake_quantize_per_channel_in_place`] with the arithmetic `kind` names.
pub fn fake_quantize_per_channel_in_place_as(
    data: &mut [f32],
    shape: &[usize],
    axis: usize,
    channels: &[Encoding],
    kind: FakeQuant,
) -> Result<(), TensorEncodingError> {
    let layout = ChannelLayout::new(shape, axis, data.len())?;
    if channels.len() != layout.channels {
        return Err(TensorEncodingError::ChannelCount {
            expected: layout.channels,
            actual: channels.len(),
        });
    }
    if layout.channels == 0 || layout.inner == 0 {
        return Ok(());
    }
    for block in data.chunks_exact_mut(layout.channels * layout.inner) {
        for (encoding, run) in channels.iter().zip(block.chunks_exact_mut(layout.inner)) {
            kernels::fake_quantize_in_place_as(run, encoding, kind);
        }
    }
    Ok(())
}

/// Fake-quantizes any [`TensorEncoding`] in place; `shape` is needed for per-channel only.
/// Float tensors are left unchanged (no f16 rounding is simulated).
pub fn fake_quantize_tensor_in_place(
    data: &mut [f32],
    shape: &[usize],
    encoding: &TensorEncoding,
) -> Result<(), TensorEncodingError> {
    fake_quantize_tensor_in_place_as(data, shape, encoding, FakeQuant::OnnxRuntime)
}

/// [`fake_quantize_tensor_in_place`] with the arithmetic `kind` names for integer encodings.
pub fn fake_quantize_tensor_in_place_as(
    data: &mut [f32],
    shape: &[usize],
    encoding: &TensorEncoding,
    kind: FakeQuant,
) -> Result<(), TensorEncodingError> {
    match encoding {
        TensorEncoding::PerTensor(encoding) => {
            kernels::fake_quantize_in_place_as(data, encoding, kind);
            Ok(())
        }
        TensorEncoding::PerChannel { axis, channels } => {
            fake_quantize_per_channel_in_place_as(data, shape, *axis, channels, kind)
        }
        // A float16 tensor holds what float16 can: each value rounded to nearest even, as a
        // Cast to float16 does (saturating at ±65504 is left to infinity, as the cast does).
        TensorEncoding::Float {
            bitwidth: FloatBitwidth::F16,
        } => {
            for x in data.iter_mut() {
                *x = half::f16::from_f32(*x).to_f32();
            }
            Ok(())
        }
        TensorEncoding::Float { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_of_a_conv_weight() {
        let shape = [32, 3, 3, 3];
        assert_eq!(
            ChannelLayout::new(&shape, 0, 864).unwrap(),
            ChannelLayout {
                outer: 1,
                channels: 32,
                inner: 27
            }
        );
        assert_eq!(
            ChannelLayout::new(&shape, 3, 864).unwrap(),
            ChannelLayout {
                outer: 288,
                channels: 3,
                inner: 1
            }
        );
        assert!(matches!(
            ChannelLayout::new(&shape, 4, 864),
            Err(TensorEncodingError::AxisOutOfRange { axis: 4, rank: 4 })
        ));
        assert!(matches!(
            ChannelLayout::new(&shape, 0, 863),
            Err(TensorEncodingError::ShapeMismatch {
                expected: 864,
                actual: 863,
                ..
            })
        ));
    }

    #[test]
    fn per_channel_ranges_along_each_axis() {
        // shape [2, 3]: rows [0, 1, 2], [3, 4, -5]
        let data = [0.0, 1.0, 2.0, 3.0, 4.0, -5.0];
        let rows = per_channel_min_max(&data, &[2, 3], 0).unwrap();
        assert_eq!(
            rows.iter().map(|r| (r.min, r.max)).collect::<Vec<_>>(),
            [(0.0, 2.0), (-5.0, 4.0)]
        );
        let cols = per_channel_min_max(&data, &[2, 3], 1).unwrap();
        assert_eq!(
            cols.iter().map(|r| (r.min, r.max)).collect::<Vec<_>>(),
            [(0.0, 3.0), (1.0, 4.0), (-5.0, 2.0)]
        );
    }

    #[test]
    fn per_channel_symmetric_encodings() {
        let data = [0.5, -1.27, 2.54, -0.1];
        let TensorEncoding::PerChannel { axis, channels } = per_channel_encodings(
            &data,
            &[2, 2],
            0,
            Bitwidth::B8,
            Schema::Symmetric,
            SymmetricConvention::Seed,
        )
        .unwrap() else {
            panic!("expected per-channel");
        };
        assert_eq!(axis, 0);
        assert!((channels[0].scale - 0.01).abs() < 1e-9);
        assert!((channels[1].scale - 0.02).abs() < 1e-9);
        assert!(channels.iter().all(|c| c.offset == -128));
    }

    #[test]
    fn float_and_channel_count_errors() {
        let mut data = [1.0f32, 2.0];
        let float = TensorEncoding::Float {
            bitwidth: FloatBitwidth::F16,
        };
        fake_quantize_tensor_in_place(&mut data, &[2], &float).unwrap();
        assert_eq!(data, [1.0, 2.0]);
        // Float16 keeps 11 significant bits: 0.1 becomes the nearest half, 0.0999755859375;
        // float32 leaves it alone.
        let mut tenth = [0.1f32];
        fake_quantize_tensor_in_place(&mut tenth, &[1], &float).unwrap();
        assert_eq!(tenth, [0.099_975_586]);
        let single = TensorEncoding::Float {
            bitwidth: FloatBitwidth::F32,
        };
        let mut tenth = [0.1f32];
        fake_quantize_tensor_in_place(&mut tenth, &[1], &single).unwrap();
        assert_eq!(tenth, [0.1]);
        assert!(float.encodings().is_empty());
        let e = Encoding::symmetric(1.0, Bitwidth::B8, Schema::Symmetric);
        assert!(matches!(
            fake_quantize_per_channel_in_place(&mut data, &[2], 0, &[e]),
            Err(TensorEncodingError::ChannelCount {
                expected: 2,
                actual: 1
            })
        ));
    }

    proptest! {
        #[test]
        fn per_channel_fake_quant_matches_gathered_channels(
            dims in prop::collection::vec(1usize..5, 1..4),
            axis_pick in 0usize..4,
            seed in any::<u32>(),
        ) {
            let axis = axis_pick % dims.len();
            let n: usize = dims.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / 1e9 - 2.0)
                .collect();
            let TensorEncoding::PerChannel { channels, .. } = per_channel_encodings(
                &data, &dims, axis, Bitwidth::B8, Schema::Asymmetric, SymmetricConvention::Seed,
            ).unwrap() else { unreachable!() };
            let mut fq = data.clone();
            fake_quantize_per_channel_in_place(&mut fq, &dims, axis, &channels).unwrap();
            let inner: usize = dims[axis + 1..].iter().product();
            for i in 0..n {
                let c = (i / inner) % dims[axis];
                let mut one = [data[i]];
                kernels::fake_quantize_in_place(&mut one, &channels[c]);
                prop_assert_eq!(fq[i], one[0]);
                // Each channel's own values are within half a step of its grid.
                prop_assert!((f64::from(fq[i]) - f64::from(data[i])).abs() <= channels[c].scale * 0.5 + 1e-6);
            }
        }
    }
}
