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
//!   from zero (`f64::round`). The kernels that quantize tensors round half to even (see
//!   [`kernels`]); the two only meet on exact ties.
//!
//! Submodules: [`kernels`] (min/max, quantize, dequantize, fake-quant over `f32` slices),
//! [`tensor`] (per-tensor / per-channel / float encodings of a whole tensor, any axis) and
//! [`packed`] (packed 4-bit storage).

use std::fmt;

pub mod kernels;
pub mod packed;
pub mod tensor;

pub use kernels::{FakeQuant, MinMax, min_max};
pub use tensor::{FloatBitwidth, TensorEncoding};

/// The seed's minimum encoding range: `max` is raised to at least `min + MIN_RANGE`.
pub const MIN_RANGE: f64 = 0.0001;

/// AIMET's smallest scale, `2^-23` (`FLT_EPSILON`), used by [`SymmetricConvention::Aimet`]
/// instead of [`MIN_RANGE`].
pub const AIMET_MIN_SCALE: f64 = 1.0 / 8_388_608.0;

/// Which rule turns a range into a symmetric encoding. Both use `offset = -2^(bw-1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SymmetricConvention {
    /// The seed's per-channel example: `scale = absmax / (2^(bw-1) - 1)`, so `max = absmax` and
    /// `min = -2^(bw-1)·scale`, a little beyond `-absmax`. Minimum range [`MIN_RANGE`].
    #[default]
    Seed,
    /// aimet-onnx 2.42's weight rule: the tightest `scale` whose grid
    /// `[-2^(bw-1)·scale, (2^(bw-1) - 1)·scale]` still covers `[min(min, 0), max(max, 0)]`,
    /// `scale = max(|min| / 2^(bw-1), max / (2^(bw-1) - 1))`, at least [`AIMET_MIN_SCALE`].
    Aimet,
}

/// Whose arithmetic a simulation rounds with.
///
/// The two differ only on values at or within an ulp of a rounding boundary, but a step there
/// propagates, so a simulation meant to reproduce a runtime's numbers must use its arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Rounding {
    /// ONNX QuantizeLinear/DequantizeLinear as onnxruntime runs a QDQ model: activations divided
    /// by the `f32` scale and rounded half to even ([`FakeQuant::OnnxRuntime`]), parameters
    /// holding the integers the QDQ export stores ([`FakeQuant::OnnxStored`]).
    #[default]
    Onnx,
    /// AIMET's QuantSim kernel for activations and parameters alike ([`FakeQuant::Aimet`]):
    /// clamp to the encoding's min/max, round half away from zero.
    Aimet,
}

impl Rounding {
    /// Both modes, in the order the CLI lists them.
    pub const ALL: [Rounding; 2] = [Rounding::Onnx, Rounding::Aimet];

    /// The CLI spelling: `onnx` or `aimet`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rounding::Onnx => "onnx",
            Rounding::Aimet => "aimet",
        }
    }

    /// The arithmetic of activations, fake-quantized at run time.
    pub fn activations(self) -> FakeQuant {
        match self {
            Rounding::Onnx => FakeQuant::OnnxRuntime,
            Rounding::Aimet => FakeQuant::Aimet,
        }
    }

    /// The arithmetic of parameters, fake-quantized once into the model.
    pub fn parameters(self) -> FakeQuant {
        match self {
            Rounding::Onnx => FakeQuant::OnnxStored,
            Rounding::Aimet => FakeQuant::Aimet,
        }
    }
}

impl fmt::Display for Rounding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
        // A shift, not `powi`: this sits in per-value loops and `powi` is a libcall. Exact:
        // bitwidths are at most 32, so `2^bw - 1` fits a `u64` and an `f64` mantissa.
        ((1u64 << self.bits()) - 1) as f64
    }

    /// `2^(bw-1)`, the shift between the unsigned and the signed grid.
    pub fn half(self) -> f64 {
        (1u64 << (self.bits() - 1)) as f64
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
    /// A symmetric rule was asked for with an asymmetric schema.
    #[error("schema `{0}` is not symmetric (use symmetric or unsignedsymmetric)")]
    NotSymmetric(Schema),
}

fn check_range(min: f64, max: f64) -> Result<(), EncodingError> {
    for bound in [min, max] {
        if !bound.is_finite() {
            return Err(EncodingError::NotFinite(bound));
        }
    }
    if min > max {
        return Err(EncodingError::Inverted { min, max });
    }
    Ok(())
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
        check_range(min, max)?;
        if schema.is_symmetric() {
            return Ok(Self::symmetric(min.abs().max(max.abs()), bitwidth, schema));
        }
        // Zero must be inside the range (the seed's all-positive / all-negative cases).
        let min = min.min(0.0);
        let mut max = max.max(0.0);
        if max - min < MIN_RANGE {
            max = min + MIN_RANGE;
        }
        Ok(Self::asymmetric_grid(
            min,
            (max - min) / bitwidth.steps(),
            bitwidth,
            schema,
        ))
    }

    /// The unsigned grid of `scale` whose offset is `round(min / scale)`: shifted so that some
    /// integer lands exactly on 0.0, `min`/`max` recomputed from it. The offset is kept in
    /// `[-(2^bw - 1), 0]`, which a range containing 0 already satisfies.
    fn asymmetric_grid(min: f64, scale: f64, bitwidth: Bitwidth, schema: Schema) -> Encoding {
        let steps = bitwidth.steps();
        let offset = (min / scale).round().clamp(-steps, 0.0);
        Encoding {
            bitwidth,
            schema,
            min: offset * scale,
            max: (offset + steps) * scale,
            scale,
            offset: offset as i64,
        }
    }

    /// aimet-onnx 2.42's asymmetric rule: the range widened to contain 0,
    /// `scale = max((max - min) / (2^bw - 1), 2^-23)` ([`AIMET_MIN_SCALE`], no minimum range),
    /// `offset = clamp(round(min / scale), -(2^bw - 1), 0)`, and min/max recomputed from them.
    pub fn aimet_asymmetric(
        min: f64,
        max: f64,
        bitwidth: Bitwidth,
        schema: Schema,
    ) -> Result<Encoding, EncodingError> {
        check_range(min, max)?;
        let (min, max) = (min.min(0.0), max.max(0.0));
        let scale = ((max - min) / bitwidth.steps()).max(AIMET_MIN_SCALE);
        Ok(Self::asymmetric_grid(min, scale, bitwidth, schema))
    }

    /// [`Encoding::from_range`] for asymmetric schemas, [`Encoding::symmetric_with`] under
    /// `convention` for symmetric ones: the one entry point for "range → encoding".
    pub fn from_range_with(
        min: f64,
        max: f64,
        bitwidth: Bitwidth,
        schema: Schema,
        convention: SymmetricConvention,
    ) -> Result<Encoding, EncodingError> {
        if schema.is_symmetric() {
            Self::symmetric_with(min, max, bitwidth, schema, convention)
        } else {
            Self::from_range(min, max, bitwidth, schema)
        }
    }

    /// A symmetric encoding covering `[min, max]` under either convention.
    ///
    /// Zero is always inside the range (as for asymmetric schemas), so `[2, 5]` is treated as
    /// `[0, 5]`. `schema` must be [`Schema::Symmetric`] or [`Schema::UnsignedSymmetric`]: they
    /// share scale and offset and differ only in the stored integers (see
    /// [`Encoding::zero_point`]).
    pub fn symmetric_with(
        min: f64,
        max: f64,
        bitwidth: Bitwidth,
        schema: Schema,
        convention: SymmetricConvention,
    ) -> Result<Encoding, EncodingError> {
        check_range(min, max)?;
        if !schema.is_symmetric() {
            return Err(EncodingError::NotSymmetric(schema));
        }
        match convention {
            SymmetricConvention::Seed => {
                Ok(Self::symmetric(min.abs().max(max.abs()), bitwidth, schema))
            }
            SymmetricConvention::Aimet => {
                let half = bitwidth.half();
                let scale = (-min.min(0.0) / half)
                    .max(max.max(0.0) / (half - 1.0))
                    .max(AIMET_MIN_SCALE);
                Ok(Self::symmetric_grid(scale, bitwidth, schema))
            }
        }
    }

    /// The encoding of a hand-written override entry (`bitwidth`, `min`, `max`,
    /// `is_symmetric`): scale and offset are recomputed from min/max, as the spec requires,
    /// whatever the entry said.
    ///
    /// Asymmetric entries go through the seed's algorithm ([`Encoding::from_range`]).
    /// Symmetric entries get offset `-2^(bw-1)` and the tightest scale whose grid covers
    /// `[min, max]` (the [`SymmetricConvention::Aimet`] rule, floored at [`MIN_RANGE`] like every
    /// seed encoding). An entry that is itself an exported symmetric encoding
    /// (`min = -2^(bw-1)·s`, `max = (2^(bw-1)-1)·s`) therefore gets its own `s` back.
    pub fn from_override(
        min: f64,
        max: f64,
        bitwidth: Bitwidth,
        is_symmetric: bool,
    ) -> Result<Encoding, EncodingError> {
        check_range(min, max)?;
        if !is_symmetric {
            return Self::from_range(min, max, bitwidth, Schema::Asymmetric);
        }
        let half = bitwidth.half();
        let scale = (-min.min(0.0) / half)
            .max(max.max(0.0) / (half - 1.0))
            .max(MIN_RANGE / bitwidth.steps());
        Ok(Self::symmetric_grid(scale, bitwidth, Schema::Symmetric))
    }

    fn symmetric_grid(scale: f64, bitwidth: Bitwidth, schema: Schema) -> Encoding {
        let half = bitwidth.half();
        Encoding {
            bitwidth,
            schema,
            min: -half * scale,
            max: (half - 1.0) * scale,
            scale,
            offset: -half as i64,
        }
    }

    /// The seed's symmetric encoding of `[-absmax, absmax]`:
    /// `scale = absmax / (2^(bw−1) − 1)`, `offset = −2^(bw−1)`.
    ///
    /// `absmax` is floored at `MIN_RANGE / 2` so the range spans at least [`MIN_RANGE`].
    pub fn symmetric(absmax: f64, bitwidth: Bitwidth, schema: Schema) -> Encoding {
        let half = bitwidth.half();
        let absmax = absmax.abs().max(MIN_RANGE / 2.0);
        Self::symmetric_grid(absmax / (half - 1.0), bitwidth, schema)
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

    /// Whether this is a symmetric encoding (AIMET's `is_symmetric`).
    pub fn is_symmetric(&self) -> bool {
        self.schema.is_symmetric()
    }

    /// The stored integer for `x`: `round(x / scale) - offset` on the unsigned grid (shifted for
    /// signed schemas), clamped. Rounds half to even like the [`kernels`], but in `f64` with the
    /// `f64` scale (what the QDQ export stores for parameters); the kernels divide by the `f32`
    /// scale, as the runtime does, and can differ by one step within an ulp of a tie.
    pub fn quantize_value(&self, x: f64) -> i64 {
        let steps = self.bitwidth.steps();
        let grid = (x / self.scale - self.offset as f64).round_ties_even();
        let grid = if grid.is_nan() {
            0.0
        } else {
            grid.clamp(0.0, steps)
        };
        grid as i64 - self.signed_shift()
    }

    /// The float a stored integer stands for: `(q - zero_point) · scale`.
    pub fn dequantize_value(&self, q: i64) -> f64 {
        (q - self.zero_point()) as f64 * self.scale
    }

    fn signed_shift(&self) -> i64 {
        if self.schema.is_signed() {
            self.bitwidth.half() as i64
        } else {
            0
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
    use proptest::prelude::*;

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
        assert!(
            close(e.min, -5.12, 1e-12) && close(e.max, 5.08, 1e-12),
            "{e:?}"
        );
        // The seed's own example leaves 5.1 outside [min, max]: the shift moves the grid by up
        // to half a step, so coverage holds only to within scale/2.
        assert!(e.max < 5.1 && 5.1 - e.max <= e.scale / 2.0 + 1e-12);
        assert_eq!(e.zero_point(), 128);
    }

    #[test]
    fn seed_worked_example_values() {
        let e = Encoding::from_range(-1.8, 0.5, Bitwidth::B8, Schema::Asymmetric).unwrap();
        let quantized: Vec<i64> = [-1.8, -1.0, 0.0, 0.5].map(|x| e.quantize_value(x)).to_vec();
        assert_eq!(quantized, [0, 89, 200, 255]);
        let dequantized = quantized.iter().map(|&q| e.dequantize_value(q));
        // The seed prints −1.0011 for the second value: −1.001176 truncated, not rounded.
        for (got, want) in dequantized.zip([-1.8039, -1.0012, 0.0, 0.4961]) {
            assert!(close(got, want, 5e-5), "{got} vs {want}");
        }
        assert_eq!(e.dequantize_value(200), 0.0);
    }

    #[test]
    fn minimum_range_is_enforced() {
        let e = Encoding::from_range(0.0, 0.0, Bitwidth::B8, Schema::Asymmetric).unwrap();
        assert_eq!((e.min, e.offset), (0.0, 0));
        assert!(close(e.max, MIN_RANGE, 1e-18));
        let e = Encoding::from_range(2.0, 2.0, Bitwidth::B8, Schema::Asymmetric).unwrap();
        assert_eq!((e.min, e.max), (0.0, 2.0));
        let e = Encoding::symmetric(0.0, Bitwidth::B8, Schema::Symmetric);
        assert!(e.max - e.min >= MIN_RANGE);
    }

    #[test]
    fn bad_ranges_and_names_are_refused() {
        let b = Bitwidth::B8;
        let a = Schema::Asymmetric;
        assert!(matches!(
            Encoding::from_range(f64::NAN, 1.0, b, a),
            Err(EncodingError::NotFinite(_))
        ));
        assert_eq!(
            Encoding::from_range(1.0, -1.0, b, a),
            Err(EncodingError::Inverted {
                min: 1.0,
                max: -1.0
            })
        );
        assert_eq!(Bitwidth::new(1), Err(EncodingError::InvalidBitwidth(1)));
        assert_eq!(Bitwidth::new(17), Err(EncodingError::InvalidBitwidth(17)));
        assert!(Bitwidth::new(16).is_ok() && Bitwidth::new(32).is_ok());
        assert_eq!("unsignedsymmetric".parse(), Ok(Schema::UnsignedSymmetric));
        assert!("tf".parse::<Schema>().is_err());
        assert_eq!(
            Encoding::symmetric_with(-1.0, 1.0, b, a, SymmetricConvention::Aimet),
            Err(EncodingError::NotSymmetric(a))
        );
    }

    #[test]
    fn schemas_share_the_grid_and_differ_in_stored_integers() {
        for (schema, zero_point, range) in [
            (Schema::Asymmetric, 200, (0, 255)),
            (Schema::SignedAsymmetric, 72, (-128, 127)),
        ] {
            let e = Encoding::from_range(-1.8, 0.5, Bitwidth::B8, schema).unwrap();
            assert_eq!(
                (e.offset, e.zero_point(), e.integer_range()),
                (-200, zero_point, range)
            );
        }
        for (schema, zero_point, range) in [
            (Schema::Symmetric, 0, (-128, 127)),
            (Schema::UnsignedSymmetric, 128, (0, 255)),
        ] {
            let e = Encoding::from_range(-0.5, 1.27, Bitwidth::B8, schema).unwrap();
            assert!(close(e.scale, 0.01, 1e-15));
            assert_eq!(
                (e.offset, e.zero_point(), e.integer_range()),
                (-128, zero_point, range)
            );
        }
    }

    #[test]
    fn symmetric_conventions() {
        let b = Bitwidth::B8;
        let s = Schema::Symmetric;
        // |min| > max: the seed uses absmax/127, AIMET |min|/128 and keeps min exact.
        let seed = Encoding::symmetric_with(-1.28, 0.5, b, s, SymmetricConvention::Seed).unwrap();
        let aimet = Encoding::symmetric_with(-1.28, 0.5, b, s, SymmetricConvention::Aimet).unwrap();
        assert!(close(seed.scale, 1.28 / 127.0, 1e-15) && close(seed.max, 1.28, 1e-15));
        assert!(close(aimet.scale, 0.01, 1e-15) && close(aimet.min, -1.28, 1e-15));
        // max dominates: both agree.
        let seed = Encoding::symmetric_with(-0.3, 1.27, b, s, SymmetricConvention::Seed).unwrap();
        let aimet = Encoding::symmetric_with(-0.3, 1.27, b, s, SymmetricConvention::Aimet).unwrap();
        assert_eq!(seed, aimet);
        // AIMET's floor is 2^-23, not the seed's minimum range.
        let zero = Encoding::symmetric_with(0.0, 0.0, b, s, SymmetricConvention::Aimet).unwrap();
        assert_eq!(zero.scale, AIMET_MIN_SCALE);
        // aimet-onnx 2.42 cls ConvBnFusion_W_conv1_weights channel 1 (tf_w8a8_pc): |min| > max.
        let ch1 = Encoding::symmetric_with(
            -0.31984445452690125,
            0.13405008614063263,
            b,
            s,
            SymmetricConvention::Aimet,
        )
        .unwrap();
        assert_eq!(ch1.scale, 0.002498784800991416);
        assert_eq!(ch1.min, -0.31984445452690125);
    }

    #[test]
    fn int32_bias() {
        let e = Encoding::int32_bias(0.02, 0.005);
        assert_eq!(e.bitwidth, Bitwidth::B32);
        assert!(close(e.scale, 1e-4, 1e-18));
        assert_eq!((e.zero_point(), e.offset), (0, -2_147_483_648));
        assert_eq!(e.quantize_value(0.0123), 123);
        assert_eq!(e.integer_range(), (i32::MIN as i64, i32::MAX as i64));
    }

    /// The seed's override examples: scale and offset recomputed from min/max give back the
    /// file's numbers.
    #[test]
    fn seed_override_entries_reproduce() {
        // Case 1, "features.9.conv.3.weight", asymmetric.
        let e =
            Encoding::from_override(-2.059169834735364, 3.0387749017453665, Bitwidth::B8, false)
                .unwrap();
        assert!(close(e.scale, 0.019991940143061618, 1e-16), "{e:?}");
        assert_eq!(e.offset, -103);
        assert!(close(e.min, -2.059169834735364, 1e-13) && close(e.max, 3.0387749017453665, 1e-13));
        // Case 2, "features.8.conv.3.weight", 3 channels, symmetric.
        let channels = [
            (
                -0.7066381259227362,
                0.7011175155639648,
                0.005520610358771377,
            ),
            (
                -0.5269230519692729,
                0.5228064656257629,
                0.004116586343509945,
            ),
            (
                -0.7426297045129491,
                0.7368279099464417,
                0.005801794566507415,
            ),
        ];
        for (min, max, scale) in channels {
            let e = Encoding::from_override(min, max, Bitwidth::B8, true).unwrap();
            assert!(close(e.scale, scale, 1e-17), "{e:?} vs {scale}");
            assert_eq!(e.offset, -128);
            assert!(e.is_symmetric());
            // The entries are themselves seed symmetric encodings of absmax = max.
            let seed = Encoding::symmetric(max, Bitwidth::B8, Schema::Symmetric);
            assert!(close(seed.scale, scale, 1e-17) && close(seed.min, min, 1e-15));
        }
        // Activation "Conv1:0": all-positive range.
        let e = Encoding::from_override(0.0, 12.82344407824954, Bitwidth::B8, false).unwrap();
        assert!(close(e.scale, 0.050288015993135454, 1e-16));
        assert_eq!(e.offset, 0);
    }

    fn any_range() -> impl Strategy<Value = (f64, f64, Bitwidth, Schema)> {
        (
            prop_oneof![-1e4f64..1e4, -1e-3f64..1e-3],
            prop_oneof![0.0f64..1e4, 0.0f64..1e-3],
            prop_oneof![2u32..=16, Just(32u32)],
            prop::sample::select(Schema::ALL.to_vec()),
        )
            .prop_map(|(min, width, bits, schema)| {
                (min, min + width, Bitwidth::new(bits).unwrap(), schema)
            })
    }

    proptest! {
        #[test]
        fn zero_is_exactly_representable((min, max, bw, schema) in any_range()) {
            for e in [
                Encoding::from_range(min, max, bw, schema).unwrap(),
                Encoding::from_override(min, max, bw, schema.is_symmetric()).unwrap(),
            ] {
                prop_assert_eq!(e.min, e.offset as f64 * e.scale);
                prop_assert_eq!(e.max, (e.offset as f64 + bw.steps()) * e.scale);
                let (lo, hi) = e.integer_range();
                let zp = e.zero_point();
                prop_assert!(lo <= zp && zp <= hi);
                prop_assert_eq!(e.dequantize_value(zp), 0.0);
                prop_assert_eq!(e.quantize_value(0.0), zp);
                prop_assert!(e.max - e.min >= MIN_RANGE * (1.0 - 1e-12));
            }
        }

        /// Every input lies in [min - scale/2, max + scale/2] and so within half a step of
        /// the grid; symmetric encodings cover [min, max] outright.
        #[test]
        fn min_max_encoding_covers_its_inputs((min, max, bw, schema) in any_range()) {
            let e = Encoding::from_range(min, max, bw, schema).unwrap();
            let slack = 1e-9 * e.scale.max(min.abs()).max(max.abs());
            let reach = if schema.is_symmetric() { 0.0 } else { e.scale / 2.0 };
            for x in [min, max, 0.0, (min + max) / 2.0] {
                prop_assert!(x >= e.min - reach - slack && x <= e.max + reach + slack, "{x} {e:?}");
                let q = e.quantize_value(x);
                prop_assert!((e.dequantize_value(q) - x).abs() <= e.scale / 2.0 + slack);
            }
        }

        #[test]
        fn overrides_cover_the_given_range((min, max, bw, _schema) in any_range(), sym in any::<bool>()) {
            let e = Encoding::from_override(min, max, bw, sym).unwrap();
            let slack = 1e-9 * e.scale.max(min.abs()).max(max.abs());
            let reach = if sym { 0.0 } else { e.scale / 2.0 };
            prop_assert!(min.min(0.0) >= e.min - reach - slack);
            prop_assert!(max.max(0.0) <= e.max + reach + slack);
        }
    }
}
