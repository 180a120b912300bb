//! Element types of ONNX tensors, as a plain enum the rest of the crate can match on.
//! It knows the ONNX numbering and the printed names; it must not know anything about
//! quantization (whether a type gets an encoding is decided in `graph`).

use std::fmt;

/// The element type of a tensor (`TensorProto.DataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// 32-bit IEEE float (`FLOAT`).
    Float32,
    /// 16-bit IEEE float (`FLOAT16`).
    Float16,
    /// bfloat16 (`BFLOAT16`).
    BFloat16,
    /// 64-bit IEEE float (`DOUBLE`).
    Float64,
    /// `INT8`.
    Int8,
    /// `UINT8`.
    Uint8,
    /// `INT16`.
    Int16,
    /// `UINT16`.
    Uint16,
    /// `INT32`.
    Int32,
    /// `UINT32`.
    Uint32,
    /// `INT64`.
    Int64,
    /// `UINT64`.
    Uint64,
    /// `BOOL`.
    Bool,
    /// `STRING`.
    String,
    /// Any other ONNX element type (complex, 8/4-bit floats, 4-bit ints), by its ONNX number.
    Other(i32),
}

impl DType {
    /// Maps the ONNX `DataType` number; `None` for `UNDEFINED` (0).
    pub fn from_onnx(code: i32) -> Option<DType> {
        Some(match code {
            0 => return None,
            1 => DType::Float32,
            2 => DType::Uint8,
            3 => DType::Int8,
            4 => DType::Uint16,
            5 => DType::Int16,
            6 => DType::Int32,
            7 => DType::Int64,
            8 => DType::String,
            9 => DType::Bool,
            10 => DType::Float16,
            11 => DType::Float64,
            12 => DType::Uint32,
            13 => DType::Uint64,
            16 => DType::BFloat16,
            other => DType::Other(other),
        })
    }

    /// The ONNX `DataType` number.
    pub fn to_onnx(self) -> i32 {
        match self {
            DType::Float32 => 1,
            DType::Uint8 => 2,
            DType::Int8 => 3,
            DType::Uint16 => 4,
            DType::Int16 => 5,
            DType::Int32 => 6,
            DType::Int64 => 7,
            DType::String => 8,
            DType::Bool => 9,
            DType::Float16 => 10,
            DType::Float64 => 11,
            DType::Uint32 => 12,
            DType::Uint64 => 13,
            DType::BFloat16 => 16,
            DType::Other(code) => code,
        }
    }

    /// Whether values of this type are real numbers that a fixed-point encoding can represent.
    /// Complex and 8/4-bit float types are not: they are already low-precision formats.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            DType::Float32 | DType::Float16 | DType::BFloat16 | DType::Float64
        )
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            DType::Float32 => "float32",
            DType::Float16 => "float16",
            DType::BFloat16 => "bfloat16",
            DType::Float64 => "float64",
            DType::Int8 => "int8",
            DType::Uint8 => "uint8",
            DType::Int16 => "int16",
            DType::Uint16 => "uint16",
            DType::Int32 => "int32",
            DType::Uint32 => "uint32",
            DType::Int64 => "int64",
            DType::Uint64 => "uint64",
            DType::Bool => "bool",
            DType::String => "string",
            // The packed 4-bit integers a QDQ model stores 4-bit weights in.
            DType::Other(21) => "uint4",
            DType::Other(22) => "int4",
            DType::Other(code) => return write!(f, "onnx-type-{code}"),
        };
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_numbers_round_trip() {
        for code in 1..=23 {
            let dtype = DType::from_onnx(code).unwrap();
            assert_eq!(dtype.to_onnx(), code);
        }
        assert_eq!(DType::from_onnx(0), None);
        assert_eq!(DType::from_onnx(22).unwrap().to_string(), "int4");
        assert_eq!(DType::from_onnx(21).unwrap().to_string(), "uint4");
    }

    #[test]
    fn only_real_float_types_are_float() {
        assert!(DType::Float32.is_float());
        assert!(DType::Float16.is_float());
        assert!(!DType::Int64.is_float());
        assert!(!DType::Other(17).is_float());
    }
}
