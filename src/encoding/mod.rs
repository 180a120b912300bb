//! Encoding math: turning a float range into (bitwidth, min, max, scale, offset) exactly as the
//! QNN quantization spec describes, and the kernels that quantize with such an encoding.
//!
//! **Architecture Invariant:** this module is pure. No IO, no logging, no threads of its own;
//! everything above it (statistics, overrides, export, the engine) calls into it.
//!
//! Conventions (see the book's "Encoding math" page for the reasoning):
//! - `offset` is always stored in the AIMET JSON convention, `offset = round(min / scale)`, with the
//!   unsigned integer grid `q = round(x / scale) - offset ∈ [0, 2^bw - 1]`. Signed schemas store
//!   the same grid shifted by `2^(bw-1)`; [`Encoding::zero_point`] gives the stored zero point.
//! - Arithmetic is done in `f64` from `f32` statistics, as AIMET does, and `round` is half away
//!   from zero (`f64::round`).

use std::fmt;

/// The seed's minimum encoding range: `max` is raised to at least `min + MIN_RANGE`.
pub const MIN_RANGE: f64 = 0.0001;

/// How the integer grid is laid out around zero (the seed's schema table).
///
/// Names follow `qairt-quantizer --act_quantizer_schema/--param_quantizer_schema`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Schema {
    /// Unsigned asymmetric, `q ∈ [0, 2^bw - 1]`: the default for weights and activations.
    Asymmetric,
    /// Signed asymmetric, `q ∈ [-2^(bw-1), 2^(bw-1) - 1]`.
    SignedAsymmetric,
    /// Signed symmetric: range `[-absmax, absmax]`, float zero at integer zero.
    Symmetric,
    /// Unsigned symmetric: symmetric range stored on the unsigned grid.
    UnsignedSymmetric,
}

impl Schema {
    /// All schemas, in the order the CLI lists them.
    pub const ALL: [Schema; 4] = [
        Schema::Asymmetric,
        Schema::SignedAsymmetric,
        Schema::Symmetric,
        Schema::UnsignedSymmetric,
    ];

    /// The qairt-quantizer spelling (`asymmetric`, `signedasymmetric`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Schema::Asymmetric => "asymmetric",
            Schema::SignedAsymmetric => "signedasymmetric",
            Schema::Symmetric => "symmetric",
            Schema::UnsignedSymmetric => "unsignedsymmetric",
        }
    }

    /// Whether the range is forced symmetric around zero (AIMET's `is_symmetric`).
    pub fn is_symmetric(self) -> bool {
        matches!(self, Schema::Symmetric | Schema::UnsignedSymmetric)
    }

    /// Whether the stored integers are signed.
    pub fn is_signed(self) -> bool {
        matches!(self, Schema::SignedAsymmetric | Schema::Symmetric)
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Schema {
    type Err = EncodingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schema::ALL
            .into_iter()
            .find(|schema| schema.as_str() == s)
            .ok_or_else(|| EncodingError::UnknownSchema(s.to_string()))
    }
}

/// A bitwidth that is valid for an integer encoding: 2–16, or 32 (int32 bias / INT32 overrides).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bitwidth(u8);

impl Bitwidth {
    /// 8 bit, the default for activations, weights and biases.
    pub const B8: Bitwidth = Bitwidth(8);
    /// 16 bit.
    pub const B16: Bitwidth = Bitwidth(16);
    /// 32 bit, only for biases and INT32 overrides.
    pub const B32: Bitwidth = Bitwidth(32);

    /// Checks `bits`; 2..=16 and 32 are accepted.
    pub fn new(bits: u32) -> Result<Bitwidth, EncodingError> {
        match bits {
            2..=16 | 32 => Ok(Bitwidth(bits as u8)),
            _ => Err(EncodingError::InvalidBitwidth(bits)),
        }
    }

    /// The number of bits.
    pub fn bits(self) -> u32 {
        u32::from(self.0)
    }

    /// `2^bw - 1`, the number of steps of the unsigned grid.
    pub fn steps(self) -> f64 {
        (2f64).powi(self.bits() as i32) - 1.0
    }

    /// `2^(bw-1)`, the shift between the unsigned and the signed grid.
    pub fn half(self) -> f64 {
        (2f64).powi(self.bits() as i32 - 1)
    }
}

impl fmt::Display for Bitwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why an encoding could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodingError {
    /// Bitwidth outside 2–16 and not 32.
    #[error("bitwidth {0} is not supported (use 2 to 16, or 32 for biases)")]
    InvalidBitwidth(u32),
    /// A schema name that qairt-quantizer does not know.
    #[error(
        "unknown schema `{0}` (expected asymmetric, signedasymmetric, symmetric or unsignedsymmetric)"
    )]
    UnknownSchema(String),
    /// NaN or infinite range bound.
    #[error("range bound {0} is not a finite number")]
    NotFinite(f64),
    /// `min > max`.
    #[error("min {min} is greater than max {max}")]
    Inverted {
        /// The given minimum.
        min: f64,
        /// The given maximum.
        max: f64,
    },
}

/// One integer encoding of a tensor (or of one channel of it).
///
/// `min = offset · scale` and `max = (offset + 2^bw − 1) · scale` always hold: the encoding's
/// range is the one its integer grid represents, not the observed one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Encoding {
    /// Bits per value.
    pub bitwidth: Bitwidth,
    /// How the grid is laid out.
    pub schema: Schema,
    /// Smallest representable float (integer 0 on the unsigned grid).
    pub min: f64,
    /// Largest representable float.
    pub max: f64,
    /// Step between adjacent integers.
    pub scale: f64,
    /// AIMET JSON offset, `round(min / scale)`, always `<= 0` for ranges that contain zero.
    pub offset: i64,
}

impl Encoding {
    /// The seed's algorithm: from the true range `[min, max]` of some data, an encoding that
    /// covers it, spans at least [`MIN_RANGE`] and represents 0.0 exactly.
    pub fn from_range(
        min: f64,
        max: f64,
        bitwidth: Bitwidth,
        schema: Schema,
    ) -> Result<Encoding, EncodingError> {
        for bound in [min, max] {
            if !bound.is_finite() {
                return Err(EncodingError::NotFinite(bound));
            }
        }
        if min > max {
            return Err(EncodingError::Inverted { min, max });
        }
        if schema.is_symmetric() {
            return Ok(Self::symmetric(min.abs().max(max.abs()), bitwidth, schema));
        }
        // Zero must be inside the range (the seed's all-positive / all-negative cases).
        let mut min = min.min(0.0);
        let mut max = max.max(0.0);
        if max - min < MIN_RANGE {
            max = min + MIN_RANGE;
        }
        let steps = bitwidth.steps();
        let scale = (max - min) / steps;
        // Mixed signs: shift the grid so that some integer lands exactly on 0.0.
        let offset = (min / scale).round();
        min = offset * scale;
        max = (offset + steps) * scale;
        Ok(Encoding {
            bitwidth,
            schema,
            min,
            max,
            scale,
            offset: offset as i64,
        })
    }

    /// The seed's symmetric encoding of `[-absmax, absmax]`:
    /// `scale = absmax / (2^(bw−1) − 1)`, `offset = −2^(bw−1)`.
    pub fn symmetric(absmax: f64, bitwidth: Bitwidth, schema: Schema) -> Encoding {
        let half = bitwidth.half();
        let absmax = absmax.max(MIN_RANGE / 2.0);
        let scale = absmax / (half - 1.0);
        let offset = -half;
        Encoding {
            bitwidth,
            schema,
            min: offset * scale,
            max: (half - 1.0) * scale,
            scale,
            offset: offset as i64,
        }
    }

    /// The int32 bias encoding: `scale = input scale × weight scale`, offset 0 on the signed grid.
    pub fn int32_bias(input_scale: f64, weight_scale: f64) -> Encoding {
        let scale = input_scale * weight_scale;
        let half = Bitwidth::B32.half();
        Encoding {
            bitwidth: Bitwidth::B32,
            schema: Schema::Symmetric,
            min: -half * scale,
            max: (half - 1.0) * scale,
            scale,
            offset: -half as i64,
        }
    }

    /// The zero point of the stored integers: `-offset` on the unsigned grid, shifted by
    /// `2^(bw-1)` for signed schemas (so 0 for signed symmetric).
    pub fn zero_point(&self) -> i64 {
        let unsigned = -self.offset;
        if self.schema.is_signed() {
            unsigned - self.bitwidth.half() as i64
        } else {
            unsigned
        }
    }

    /// Smallest and largest stored integer for this encoding's schema.
    pub fn integer_range(&self) -> (i64, i64) {
        let steps = self.bitwidth.steps() as i64;
        if self.schema.is_signed() {
            let half = self.bitwidth.half() as i64;
            (-half, steps - half)
        } else {
            (0, steps)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn seed_worked_example() {
        let e = Encoding::from_range(-1.8, 0.5, Bitwidth::B8, Schema::Asymmetric).unwrap();
        assert!(close(e.min, -1.803922, 5e-7), "{e:?}");
        assert!(close(e.max, 0.496078, 5e-7), "{e:?}");
        assert!(close(e.scale, 0.009020, 5e-7), "{e:?}");
        assert_eq!(e.offset, -200);
        assert_eq!(e.zero_point(), 200);
    }

    #[test]
    fn seed_zero_cases() {
        let e = Encoding::from_range(5.0, 10.0, Bitwidth::B8, Schema::Asymmetric).unwrap();
        assert_eq!((e.min, e.max), (0.0, 10.0));
        let e = Encoding::from_range(-20.0, -6.0, Bitwidth::B8, Schema::Asymmetric).unwrap();
        assert_eq!((e.min, e.max), (-20.0, 0.0));
        let e = Encoding::from_range(-5.1, 5.1, Bitwidth::B8, Schema::Asymmetric).unwrap();
        assert!(close(e.min, -5.12, 1e-12) && close(e.max, 5.08, 1e-12), "{e:?}");
    }
}
