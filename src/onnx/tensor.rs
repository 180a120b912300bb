//! Tensor payloads: decoding `TensorProto` data (raw little-endian bytes or the typed repeated
//! fields) into `f32`/`i64` vectors, and writing new `f32` values back in the same storage form.
//! It must not interpret what a tensor means (weight, bias, shape): that is `graph`'s job.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

use super::DType;
use super::proto::TensorProto;
use super::proto::tensor_proto::DataLocation;

/// Values of a tensor, widened to the two types the crate computes with.
/// Equality is bitwise on floats, so that NaN payloads compare equal to themselves (cache keys),
/// and compares values, not storage: [`TensorValues::Stored`] equals the `Float` it decodes to.
#[derive(Clone)]
pub enum TensorValues {
    /// Any real float type (float32, float16, bfloat16, float64), as `f32`.
    Float(Vec<f32>),
    /// Float values as the model stores them, widened on each read ([`TensorValues::floats`]).
    Stored(StoredFloats),
    /// Any integer or bool type, as `i64`.
    Int(Vec<i64>),
    /// Strings, complex numbers and exotic formats: present but not decoded.
    Undecoded,
}

impl TensorValues {
    /// The values as `f32`, for float tensors: borrowed when decoded already, widened from the
    /// stored bytes otherwise.
    pub fn floats(&self) -> Option<Cow<'_, [f32]>> {
        match self {
            TensorValues::Float(v) => Some(Cow::Borrowed(v)),
            TensorValues::Stored(stored) => Some(Cow::Owned(stored.decode())),
            TensorValues::Int(_) | TensorValues::Undecoded => None,
        }
    }

    /// The values as `i64`, for integer and bool tensors.
    pub fn ints(&self) -> Option<&[i64]> {
        match self {
            TensorValues::Int(v) => Some(v),
            _ => None,
        }
    }
}

impl PartialEq for TensorValues {
    fn eq(&self, other: &TensorValues) -> bool {
        match (self, other) {
            (TensorValues::Int(a), TensorValues::Int(b)) => a == b,
            (TensorValues::Undecoded, TensorValues::Undecoded) => true,
            // The same stored bytes decode alike, without decoding them.
            (TensorValues::Stored(a), TensorValues::Stored(b)) if a.same_storage(b) => true,
            _ => match (self.floats(), other.floats()) {
                (Some(a), Some(b)) => {
                    a.len() == b.len()
                        && a.iter()
                            .zip(b.iter())
                            .all(|(x, y)| x.to_bits() == y.to_bits())
                }
                _ => false,
            },
        }
    }
}

impl Eq for TensorValues {}

impl fmt::Debug for TensorValues {
    // Values, not storage, as equality compares them: stored floats print as the `Float` they
    // decode to.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorValues::Float(v) => f.debug_tuple("Float").field(v).finish(),
            TensorValues::Stored(stored) => f.debug_tuple("Float").field(&stored.decode()).finish(),
            TensorValues::Int(v) => f.debug_tuple("Int").field(v).finish(),
            TensorValues::Undecoded => f.write_str("Undecoded"),
        }
    }
}

/// Little-endian float values (float32, float16, bfloat16 or float64) in the buffer the model
/// was read from, shared with it rather than copied: a graph built from a model then holds no
/// second copy of its weights. The byte count was checked against the dims when it was made, so
/// decoding cannot fail.
#[derive(Clone)]
pub struct StoredFloats {
    dtype: DType,
    bytes: Bytes,
}

impl StoredFloats {
    /// How many values there are.
    pub fn len(&self) -> usize {
        self.bytes.len() / element_size(self.dtype).unwrap_or(1)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The values, widened to `f32`.
    pub fn decode(&self) -> Vec<f32> {
        match decode_raw(self.dtype, &self.bytes) {
            Some(TensorValues::Float(v)) => v,
            // `stored_values` makes these only for float types and whole element counts.
            _ => Vec::new(),
        }
    }

    fn same_storage(&self, other: &StoredFloats) -> bool {
        self.dtype == other.dtype
            && self.bytes.len() == other.bytes.len()
            && self.bytes.as_ptr() == other.bytes.as_ptr()
    }
}

/// The size in bytes of one stored element of a float type.
fn element_size(dtype: DType) -> Option<usize> {
    match dtype {
        DType::Float32 => Some(4),
        DType::Float64 => Some(8),
        DType::Float16 | DType::BFloat16 => Some(2),
        _ => None,
    }
}

/// Why a tensor's payload could not be read or replaced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorDataError {
    /// The payload lives in a separate file; only self-contained models are supported.
    #[error("tensor `{name}` stores its data in an external file, which is not supported")]
    ExternalData {
        /// Tensor name.
        name: String,
    },
    /// The element count disagrees with the dims.
    #[error("tensor `{name}` has {found} elements but its shape {dims:?} needs {expected}")]
    ElementCount {
        /// Tensor name.
        name: String,
        /// Declared dims.
        dims: Vec<i64>,
        /// Product of the dims.
        expected: usize,
        /// Elements actually stored (or given).
        found: usize,
    },
    /// `raw_data` length is not a multiple of the element size.
    #[error("tensor `{name}` has {bytes} raw bytes, not a whole number of {dtype} elements")]
    RawLength {
        /// Tensor name.
        name: String,
        /// Element type.
        dtype: DType,
        /// Raw byte count.
        bytes: usize,
    },
    /// A float payload was asked for (or given) on a tensor of another type.
    #[error("tensor `{name}` is {dtype}, not float32")]
    NotFloat32 {
        /// Tensor name.
        name: String,
        /// Its element type.
        dtype: DType,
    },
    /// A negative dim.
    #[error("tensor `{name}` has a negative dim in {dims:?}")]
    NegativeDim {
        /// Tensor name.
        name: String,
        /// Declared dims.
        dims: Vec<i64>,
    },
    /// Dims whose product (taken left to right) does not fit in memory's address range.
    #[error("tensor `{name}` declares dims {dims:?}, more elements than any memory holds")]
    DimsOverflow {
        /// Tensor name.
        name: String,
        /// Declared dims.
        dims: Vec<i64>,
    },
}

/// The element type of a tensor, `None` when undefined.
pub fn tensor_dtype(tensor: &TensorProto) -> Option<DType> {
    DType::from_onnx(tensor.data_type.unwrap_or(0))
}

/// The element count the dims promise (1 for a scalar).
///
/// Refuses dims whose running product overflows, even when a later dim is 0: every reader of
/// the shape multiplies the dims in some order, and none of them may overflow.
pub fn element_count(tensor: &TensorProto) -> Result<usize, TensorDataError> {
    let name = || tensor.name.clone().unwrap_or_default();
    tensor.dims.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d).map_err(|_| TensorDataError::NegativeDim {
            name: name(),
            dims: tensor.dims.clone(),
        })?;
        acc.checked_mul(d)
            .ok_or_else(|| TensorDataError::DimsOverflow {
                name: name(),
                dims: tensor.dims.clone(),
            })
    })
}

/// Decodes a tensor's values (raw little-endian bytes or typed fields), checking the element count.
pub fn tensor_values(tensor: &TensorProto) -> Result<TensorValues, TensorDataError> {
    let name = || tensor.name.clone().unwrap_or_default();
    if tensor.data_location == Some(DataLocation::External as i32) {
        return Err(TensorDataError::ExternalData { name: name() });
    }
    let Some(dtype) = tensor_dtype(tensor) else {
        return Ok(TensorValues::Undecoded);
    };
    // Before decoding: dims nothing can hold are refused whatever the data is.
    let expected = element_count(tensor)?;
    let raw = tensor.raw_data.as_deref().filter(|r| !r.is_empty());
    let values = match raw {
        Some(raw) => decode_raw(dtype, raw).ok_or_else(|| TensorDataError::RawLength {
            name: name(),
            dtype,
            bytes: raw.len(),
        })?,
        None => decode_typed(dtype, tensor),
    };
    let found = match &values {
        TensorValues::Float(v) => v.len(),
        TensorValues::Stored(v) => v.len(),
        TensorValues::Int(v) => v.len(),
        TensorValues::Undecoded => return Ok(values),
    };
    if found != expected {
        return Err(TensorDataError::ElementCount {
            name: name(),
            dims: tensor.dims.clone(),
            expected,
            found,
        });
    }
    Ok(values)
}

/// As [`tensor_values`], but float `raw_data` stays in the model's buffer
/// ([`TensorValues::Stored`]), checked but not decoded.
pub fn stored_values(tensor: &TensorProto) -> Result<TensorValues, TensorDataError> {
    let raw = tensor.raw_data.as_ref().filter(|r| !r.is_empty());
    let external = tensor.data_location == Some(DataLocation::External as i32);
    let (Some(raw), Some(dtype), false) = (raw, tensor_dtype(tensor), external) else {
        return tensor_values(tensor);
    };
    let Some(size) = element_size(dtype) else {
        return tensor_values(tensor);
    };
    let name = || tensor.name.clone().unwrap_or_default();
    let expected = element_count(tensor)?;
    if !raw.len().is_multiple_of(size) {
        return Err(TensorDataError::RawLength {
            name: name(),
            dtype,
            bytes: raw.len(),
        });
    }
    if raw.len() / size != expected {
        return Err(TensorDataError::ElementCount {
            name: name(),
            dims: tensor.dims.clone(),
            expected,
            found: raw.len() / size,
        });
    }
    Ok(TensorValues::Stored(StoredFloats {
        dtype,
        bytes: raw.clone(),
    }))
}

fn chunks<const N: usize>(raw: &[u8]) -> Option<impl Iterator<Item = [u8; N]> + '_> {
    if !raw.len().is_multiple_of(N) {
        return None;
    }
    Some(
        raw.chunks_exact(N)
            .map(|c| <[u8; N]>::try_from(c).unwrap_or([0; N])),
    )
}

fn decode_raw(dtype: DType, raw: &[u8]) -> Option<TensorValues> {
    use TensorValues::{Float, Int};
    Some(match dtype {
        DType::Float32 => Float(chunks::<4>(raw)?.map(f32::from_le_bytes).collect()),
        DType::Float64 => Float(
            chunks::<8>(raw)?
                .map(|b| f64::from_le_bytes(b) as f32)
                .collect(),
        ),
        DType::Float16 => Float(
            chunks::<2>(raw)?
                .map(|b| f16_to_f32(u16::from_le_bytes(b)))
                .collect(),
        ),
        DType::BFloat16 => Float(
            chunks::<2>(raw)?
                .map(|b| bf16_to_f32(u16::from_le_bytes(b)))
                .collect(),
        ),
        DType::Int8 => Int(raw.iter().map(|&b| i64::from(b as i8)).collect()),
        DType::Uint8 | DType::Bool => Int(raw.iter().map(|&b| i64::from(b)).collect()),
        DType::Int16 => Int(chunks::<2>(raw)?
            .map(|b| i64::from(i16::from_le_bytes(b)))
            .collect()),
        DType::Uint16 => Int(chunks::<2>(raw)?
            .map(|b| i64::from(u16::from_le_bytes(b)))
            .collect()),
        DType::Int32 => Int(chunks::<4>(raw)?
            .map(|b| i64::from(i32::from_le_bytes(b)))
            .collect()),
        DType::Uint32 => Int(chunks::<4>(raw)?
            .map(|b| i64::from(u32::from_le_bytes(b)))
            .collect()),
        DType::Int64 => Int(chunks::<8>(raw)?.map(i64::from_le_bytes).collect()),
        // Values above i64::MAX wrap; no model here stores such shape values.
        DType::Uint64 => Int(chunks::<8>(raw)?
            .map(|b| u64::from_le_bytes(b) as i64)
            .collect()),
        DType::String | DType::Other(_) => TensorValues::Undecoded,
    })
}

fn decode_typed(dtype: DType, t: &TensorProto) -> TensorValues {
    use TensorValues::{Float, Int};
    match dtype {
        DType::Float32 => Float(t.float_data.clone()),
        DType::Float64 => Float(t.double_data.iter().map(|&v| v as f32).collect()),
        // float16/bfloat16 bits are stored in int32_data, one value per entry.
        DType::Float16 => Float(t.int32_data.iter().map(|&v| f16_to_f32(v as u16)).collect()),
        DType::BFloat16 => Float(
            t.int32_data
                .iter()
                .map(|&v| bf16_to_f32(v as u16))
                .collect(),
        ),
        DType::Int8 | DType::Uint8 | DType::Int16 | DType::Uint16 | DType::Int32 | DType::Bool => {
            Int(t.int32_data.iter().map(|&v| i64::from(v)).collect())
        }
        DType::Int64 => Int(t.int64_data.clone()),
        DType::Uint32 | DType::Uint64 => Int(t.uint64_data.iter().map(|&v| v as i64).collect()),
        DType::String | DType::Other(_) => TensorValues::Undecoded,
    }
}

/// Replaces a float32 tensor's values, keeping its storage form (`raw_data` stays `raw_data`,
/// `float_data` stays `float_data`) and its dims. The count must match the dims.
pub fn replace_f32(tensor: &mut TensorProto, values: &[f32]) -> Result<(), TensorDataError> {
    let name = tensor.name.clone().unwrap_or_default();
    if tensor.data_location == Some(DataLocation::External as i32) {
        return Err(TensorDataError::ExternalData { name });
    }
    let dtype = tensor_dtype(tensor).unwrap_or(DType::Other(0));
    if dtype != DType::Float32 {
        return Err(TensorDataError::NotFloat32 { name, dtype });
    }
    let expected = element_count(tensor)?;
    if values.len() != expected {
        return Err(TensorDataError::ElementCount {
            name,
            dims: tensor.dims.clone(),
            expected,
            found: values.len(),
        });
    }
    let uses_raw = tensor.raw_data.as_ref().is_some_and(|r| !r.is_empty());
    if uses_raw {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensor.raw_data = Some(raw.into());
    } else {
        tensor.float_data = values.to_vec();
    }
    Ok(())
}

fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    let magnitude = match (exponent, mantissa) {
        (0, 0) => 0,
        // Subnormal half: value = mantissa * 2^-24, exactly representable in f32.
        (0, m) => return sign_factor(sign) * (m as f32) * 2f32.powi(-24),
        (0x1f, 0) => 0xff << 23,
        (0x1f, m) => (0xff << 23) | (m << 13),
        (e, m) => ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(sign | magnitude)
}

fn sign_factor(sign: u32) -> f32 {
    if sign == 0 { 1.0 } else { -1.0 }
}

fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float_tensor(dims: Vec<i64>, raw: Option<Vec<u8>>, float_data: Vec<f32>) -> TensorProto {
        TensorProto {
            name: Some("w".into()),
            dims,
            data_type: Some(1),
            raw_data: raw.map(Bytes::from),
            float_data,
            ..Default::default()
        }
    }

    #[test]
    fn raw_and_typed_float_data_decode_alike() {
        let values = [1.5f32, -2.0, 0.1];
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        for tensor in [
            float_tensor(vec![3], Some(raw), vec![]),
            float_tensor(vec![3], None, values.to_vec()),
        ] {
            match tensor_values(&tensor).unwrap() {
                TensorValues::Float(v) => assert_eq!(v, values),
                other => panic!("expected floats, got {other:?}"),
            }
        }
    }

    #[test]
    fn stored_floats_decode_and_compare_as_their_values() {
        let values = [1.5f32, -2.0, f32::NAN];
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensor = float_tensor(vec![3], Some(raw), vec![]);
        let stored = stored_values(&tensor).unwrap();
        assert!(matches!(stored, TensorValues::Stored(_)));
        assert_eq!(stored, tensor_values(&tensor).unwrap());
        assert_eq!(
            format!("{stored:?}"),
            format!("{:?}", tensor_values(&tensor).unwrap())
        );
        assert_ne!(stored, TensorValues::Float(vec![1.5, -2.0, 0.0]));

        let short = float_tensor(vec![4], tensor.raw_data.clone().map(Vec::from), vec![]);
        assert!(matches!(
            stored_values(&short),
            Err(TensorDataError::ElementCount {
                expected: 4,
                found: 3,
                ..
            })
        ));
        let ragged = float_tensor(vec![3], Some(vec![0; 13]), vec![]);
        assert!(matches!(
            stored_values(&ragged),
            Err(TensorDataError::RawLength { bytes: 13, .. })
        ));
    }

    #[test]
    fn element_count_mismatch_is_an_error() {
        let tensor = float_tensor(vec![2, 2], None, vec![1.0; 3]);
        assert!(matches!(
            tensor_values(&tensor),
            Err(TensorDataError::ElementCount {
                expected: 4,
                found: 3,
                ..
            })
        ));
    }

    #[test]
    fn int64_raw_decodes() {
        let raw: Vec<u8> = [-1i64, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensor = TensorProto {
            dims: vec![2],
            data_type: Some(7),
            raw_data: Some(raw.into()),
            ..Default::default()
        };
        assert!(matches!(tensor_values(&tensor).unwrap(), TensorValues::Int(v) if v == [-1, 3]));
    }

    #[test]
    fn replacing_keeps_the_storage_form() {
        let raw: Vec<u8> = [1f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut as_raw = float_tensor(vec![2], Some(raw), vec![]);
        replace_f32(&mut as_raw, &[3.0, 4.0]).unwrap();
        assert!(as_raw.float_data.is_empty());
        assert_eq!(as_raw.raw_data.as_ref().unwrap().len(), 8);

        let mut as_typed = float_tensor(vec![2], None, vec![1.0, 2.0]);
        replace_f32(&mut as_typed, &[3.0, 4.0]).unwrap();
        assert_eq!(as_typed.float_data, [3.0, 4.0]);
        assert!(as_typed.raw_data.is_none());

        assert!(replace_f32(&mut as_typed, &[1.0]).is_err());
    }

    #[test]
    fn half_precision_converts_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
    }
}
