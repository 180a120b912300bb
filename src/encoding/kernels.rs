//! Kernels over `f32` slices: the range of a tensor ([`min_max`]) and quantize, dequantize and
//! fake-quant (quantize → dequantize) with one [`Encoding`].
//!
//! These run over every activation of every calibration sample, so they are written for
//! throughput: fixed-width chunks of [`LANES`] values with branch-free bodies that LLVM turns
//! into SIMD, no libm call per element, no allocation. They must NOT spawn threads: callers
//! split the slice (rayon chunks) and merge, which gives the same bits whatever the thread count
//! because min/max and counts are order-independent and every element is quantized on its own.
//!
//! The default kernels compute exactly what onnxruntime's QuantizeLinear and DequantizeLinear
//! compute with the `f32` scale a QDQ model stores (MLAS `MlasQuantizeLinear`): `x / scale` as
//! an `f32` division (not a multiplication by a reciprocal, which differs within an ulp of a
//! tie), clamped to the integer grid, rounded half to even, then `(q − zp) · scale` in `f32`.
//! Rounding uses the 1.5·2^23 trick (`(t + M) - M` in `f32`, exact for `|t| ≤ 2^22`; `t` is
//! clamped to the grid first, which keeps it far inside that bound for bitwidths up to 16).
//! 32-bit encodings round in `f64` with 1.5·2^52 after the same `f32` division.
//!
//! [`FakeQuant`] names the two other arithmetics a simulation needs: a parameter stored by the
//! QDQ export (its integer comes from `f64` arithmetic, [`Encoding::quantize_value`]) and
//! AIMET's own kernel (clamp in the real domain, half away from zero).
//!
//! NaN inputs quantize to the lowest grid value (the clamp's comparisons are false for NaN);
//! ±Inf saturate to the grid's ends.

use super::Encoding;

/// Values processed per chunk: two AVX registers of `f32`, enough independent work for LLVM to
/// unroll and vectorize on any x86-64 or aarch64 target.
pub const LANES: usize = 16;

/// `1.5 · 2^23`: adding and subtracting it rounds an `f32` to an integer, half to even.
const MAGIC_F32: f32 = 12_582_912.0;
/// `1.5 · 2^52`, the same trick in `f64`.
const MAGIC_F64: f64 = 6_755_399_441_055_744.0;

/// The range of the finite values of a slice, and how many values were not finite.
///
/// NaN and ±Inf are skipped (an encoding cannot cover them) and counted, so callers can report
/// them. An empty result (no finite value) has `min = +Inf`, `max = -Inf`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinMax {
    /// Smallest finite value, `+Inf` if none.
    pub min: f32,
    /// Largest finite value, `-Inf` if none.
    pub max: f32,
    /// How many values were NaN.
    pub nan_count: u64,
    /// How many values were `+Inf` or `-Inf`.
    pub inf_count: u64,
}

impl MinMax {
    /// The range of no values; the identity of [`MinMax::merge`].
    pub const EMPTY: MinMax = MinMax {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
        nan_count: 0,
        inf_count: 0,
    };

    /// The range of the union of both inputs. Commutative and associative, so chunked and
    /// threaded scans give the same result as one pass.
    pub fn merge(self, other: MinMax) -> MinMax {
        MinMax {
            min: self.min.min(other.min),
            max: self.max.max(other.max),
            nan_count: self.nan_count + other.nan_count,
            inf_count: self.inf_count + other.inf_count,
        }
    }

    /// Whether no finite value was seen.
    pub fn is_empty(&self) -> bool {
        self.min > self.max
    }

    /// `(min, max)` as `f64`, or `None` when no finite value was seen.
    pub fn range(&self) -> Option<(f64, f64)> {
        (!self.is_empty()).then(|| (f64::from(self.min), f64::from(self.max)))
    }
}

/// The range of the finite values of `data`, skipping and counting NaN and ±Inf.
///
/// One pass of compare-and-select per value plus a count of non-finite values; when that count
/// is non-zero (rare in real tensors) a second, slower pass splits it into NaN and Inf and
/// recomputes the range without the infinities.
pub fn min_max(data: &[f32]) -> MinMax {
    // Per-lane u32 counters cannot overflow inside one block.
    const BLOCK: usize = LANES << 24;
    let mut result = MinMax::EMPTY;
    for block in data.chunks(BLOCK) {
        result = result.merge(min_max_block(block));
    }
    result
}

fn min_max_block(data: &[f32]) -> MinMax {
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let mut non_finite = [0u32; LANES];
    let chunks = data.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for i in 0..LANES {
            let x = chunk[i];
            // `<`/`>` are false for NaN, so NaN never replaces the accumulator (minps/maxps).
            // Measured: with the count in the body LLVM vectorizes this loop; the same loop
            // without it stayed scalar (benches/kernels.rs keeps a count-free baseline).
            lo[i] = if x < lo[i] { x } else { lo[i] };
            hi[i] = if x > hi[i] { x } else { hi[i] };
            non_finite[i] += u32::from(!x.is_finite());
        }
    }
    for &x in tail {
        lo[0] = if x < lo[0] { x } else { lo[0] };
        hi[0] = if x > hi[0] { x } else { hi[0] };
        non_finite[0] += u32::from(!x.is_finite());
    }
    let non_finite: u64 = non_finite.iter().map(|&n| u64::from(n)).sum();
    if non_finite > 0 {
        return min_max_with_non_finite(data);
    }
    MinMax {
        min: lo.iter().copied().fold(f32::INFINITY, f32::min),
        max: hi.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        nan_count: 0,
        inf_count: 0,
    }
}

fn min_max_with_non_finite(data: &[f32]) -> MinMax {
    let mut result = MinMax::EMPTY;
    for &x in data {
        if x.is_nan() {
            result.nan_count += 1;
        } else if x.is_infinite() {
            result.inf_count += 1;
        } else {
            result.min = result.min.min(x);
            result.max = result.max.max(x);
        }
    }
    result
}

/// Why a kernel refused its arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// Input and output slices differ in length.
    #[error("output has {actual} values, input has {expected}")]
    LengthMismatch {
        /// Length of the input.
        expected: usize,
        /// Length of the output.
        actual: usize,
    },
    /// The integer type cannot hold every stored integer of the encoding.
    #[error("{type_name} cannot hold the stored integers {min}..={max} of this encoding")]
    IntegerTooNarrow {
        /// The Rust type asked for.
        type_name: &'static str,
        /// Smallest stored integer of the encoding.
        min: i64,
        /// Largest stored integer of the encoding.
        max: i64,
    },
}

/// An integer type quantized values can be stored in (`u8`, `i8`, `u16`, `i16`, `u32`, `i32`).
pub trait StoredInteger: Copy + sealed::Sealed {
    /// Smallest value of the type.
    const MIN: i64;
    /// Largest value of the type.
    const MAX: i64;
    /// The type's name, for errors.
    const NAME: &'static str;
    /// From an integral `f32` known to be in range.
    fn from_f32(v: f32) -> Self;
    /// From an integral `f64` known to be in range.
    fn from_f64(v: f64) -> Self;
    /// As `f32` (exact for 8 and 16 bit).
    fn to_f32(self) -> f32;
    /// As `f64` (exact).
    fn to_f64(self) -> f64;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! stored_integer {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl StoredInteger for $t {
            const MIN: i64 = <$t>::MIN as i64;
            const MAX: i64 = <$t>::MAX as i64;
            const NAME: &'static str = stringify!($t);
            #[inline(always)]
            fn from_f32(v: f32) -> Self { v as $t }
            #[inline(always)]
            fn from_f64(v: f64) -> Self { v as $t }
            #[inline(always)]
            fn to_f32(self) -> f32 { self as f32 }
            #[inline(always)]
            fn to_f64(self) -> f64 { self as f64 }
        }
    )*};
}
stored_integer!(u8, i8, u16, i16, u32, i32);

/// An encoding prepared for the inner loops: the clamp bounds are the grid's integers around
/// zero, `[offset, offset + 2^bw - 1]`, so `round(clamp(x / scale))` is the grid position.
#[derive(Debug, Clone, Copy)]
struct Grid {
    /// The scale a QDQ model stores, which is what the runtime divides by.
    scale: f32,
    lo: f64,
    hi: f64,
    /// Added to a grid position to get the stored integer.
    zero_point: f64,
    wide: bool,
}

impl Grid {
    fn new(encoding: &Encoding) -> Grid {
        let lo = encoding.offset as f64;
        Grid {
            scale: encoding.scale as f32,
            lo,
            hi: lo + encoding.bitwidth.steps(),
            zero_point: encoding.zero_point() as f64,
            // Above 16 bit the grid no longer fits the f32 rounding trick's exact range.
            wide: encoding.bitwidth.bits() > 16,
        }
    }
}

#[inline(always)]
fn grid_f32(x: f32, scale: f32, lo: f32, hi: f32) -> f32 {
    let t = x / scale;
    // Comparisons, not f32::max/min: they compile to bare maxps/minps and send NaN to `lo`.
    let t = if t > lo { t } else { lo };
    let t = if t < hi { t } else { hi };
    (t + MAGIC_F32) - MAGIC_F32
}

#[inline(always)]
fn grid_f64(x: f32, scale: f32, lo: f64, hi: f64) -> f64 {
    // The runtime divides in f32 whatever the integer width; only the rounding needs f64.
    let t = f64::from(x / scale);
    let t = if t > lo { t } else { lo };
    let t = if t < hi { t } else { hi };
    (t + MAGIC_F64) - MAGIC_F64
}

fn check_len(expected: usize, actual: usize) -> Result<(), KernelError> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::LengthMismatch { expected, actual })
    }
}

/// Fake-quantizes `data` in place: each value becomes the float its quantized integer stands for.
pub fn fake_quantize_in_place(data: &mut [f32], encoding: &Encoding) {
    let g = Grid::new(encoding);
    if g.wide {
        for x in data.iter_mut() {
            *x = grid_f64(*x, g.scale, g.lo, g.hi) as f32 * g.scale;
        }
        return;
    }
    let (scale, lo, hi) = (g.scale, g.lo as f32, g.hi as f32);
    let mut chunks = data.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for x in chunk.iter_mut() {
            *x = grid_f32(*x, scale, lo, hi) * scale;
        }
    }
    for x in chunks.into_remainder() {
        *x = grid_f32(*x, scale, lo, hi) * scale;
    }
}

/// Fake-quantizes `input` into `output` (same length).
pub fn fake_quantize(
    input: &[f32],
    output: &mut [f32],
    encoding: &Encoding,
) -> Result<(), KernelError> {
    check_len(input.len(), output.len())?;
    let g = Grid::new(encoding);
    if g.wide {
        for (y, &x) in output.iter_mut().zip(input) {
            *y = grid_f64(x, g.scale, g.lo, g.hi) as f32 * g.scale;
        }
        return Ok(());
    }
    let (scale, lo, hi) = (g.scale, g.lo as f32, g.hi as f32);
    let mut out_chunks = output.chunks_exact_mut(LANES);
    let in_chunks = input.chunks_exact(LANES);
    let in_tail = in_chunks.remainder();
    for (out, inp) in (&mut out_chunks).zip(in_chunks) {
        for i in 0..LANES {
            out[i] = grid_f32(inp[i], scale, lo, hi) * scale;
        }
    }
    for (y, &x) in out_chunks.into_remainder().iter_mut().zip(in_tail) {
        *y = grid_f32(x, scale, lo, hi) * scale;
    }
    Ok(())
}

/// Which arithmetic a fake-quantization follows; each is the one a runtime or toolchain
/// computes, to the bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeQuant {
    /// ONNX QuantizeLinear → DequantizeLinear at run time, as onnxruntime computes them with the
    /// `f32` scale: [`fake_quantize_in_place`].
    OnnxRuntime,
    /// A parameter of a QDQ model: the integer the export stored (`f64` arithmetic with the
    /// encoding's own scale, half to even: [`Encoding::quantize_value`]), dequantized as the
    /// runtime does, `(q − zp) · scale` in `f32` with the `f32` scale.
    OnnxStored,
    /// AIMET's `quantizeDequantizeCpu` (DlQuantization `trim_functions.cpp`), all in `f32`:
    /// clamp to the encoding's `[min, max]`, `x / delta − offset`, C `round` (half away from
    /// zero), then `delta · (q + offset)`.
    Aimet,
}

/// Fake-quantizes `data` in place with the arithmetic `kind` names.
pub fn fake_quantize_in_place_as(data: &mut [f32], encoding: &Encoding, kind: FakeQuant) {
    match kind {
        FakeQuant::OnnxRuntime => fake_quantize_in_place(data, encoding),
        FakeQuant::OnnxStored => fake_quantize_stored_in_place(data, encoding),
        FakeQuant::Aimet => fake_quantize_aimet_in_place(data, encoding),
    }
}

fn fake_quantize_stored_in_place(data: &mut [f32], encoding: &Encoding) {
    let (scale, offset, steps) = (
        encoding.scale,
        encoding.offset as f64,
        encoding.bitwidth.steps(),
    );
    let scale32 = encoding.scale as f32;
    for x in data.iter_mut() {
        // The export's arithmetic, step for step, so the integer is the one it wrote.
        let grid = (f64::from(*x) / scale - offset).round_ties_even();
        let grid = if grid.is_nan() {
            0.0
        } else {
            grid.clamp(0.0, steps)
        };
        // `grid + offset` is `q − zp`, an exact integer; the runtime converts it to f32.
        *x = (grid + offset) as f32 * scale32;
    }
}

/// C `round` on `f32` for `|t| ≤ 2^22`: half to even by the magic constant, then the ties
/// (where `t − r` is exactly ±0.5) moved away from zero. Branch-free, so it vectorizes, unlike
/// `f32::round` (a libm call on baseline x86-64).
#[inline(always)]
fn round_half_away(t: f32) -> f32 {
    let r = (t + MAGIC_F32) - MAGIC_F32;
    if (t - r).abs() == 0.5 {
        t + 0.5f32.copysign(t)
    } else {
        r
    }
}

fn fake_quantize_aimet_in_place(data: &mut [f32], encoding: &Encoding) {
    // TfEncoding's doubles, narrowed to the kernel's DTYPE (float) at the call.
    let (min, max, delta, offset) = (
        encoding.min as f32,
        encoding.max as f32,
        encoding.scale as f32,
        encoding.offset as f32,
    );
    if encoding.bitwidth.bits() > 16 {
        for x in data.iter_mut() {
            let t = x.min(max).max(min) / delta - offset;
            *x = delta * (t.round() + offset);
        }
        return;
    }
    // `min`/`max` are fmin/fmax: NaN goes to `max`, as in AIMET. The clamp keeps `t` within
    // the grid plus float slop, far inside the rounding trick's bound.
    let mut chunks = data.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for x in chunk.iter_mut() {
            let t = x.min(max).max(min) / delta - offset;
            *x = delta * (round_half_away(t) + offset);
        }
    }
    for x in chunks.into_remainder() {
        let t = x.min(max).max(min) / delta - offset;
        *x = delta * (round_half_away(t) + offset);
    }
}

fn check_integer<T: StoredInteger>(encoding: &Encoding) -> Result<(), KernelError> {
    let (min, max) = encoding.integer_range();
    if min < T::MIN || max > T::MAX {
        return Err(KernelError::IntegerTooNarrow {
            type_name: T::NAME,
            min,
            max,
        });
    }
    Ok(())
}

/// Quantizes `input` to the stored integers of `encoding` (`0..=2^bw-1` for unsigned schemas,
/// `-2^(bw-1)..=2^(bw-1)-1` for signed ones), clamping values outside the range.
///
/// `T` must hold the schema's whole integer range (e.g. `u8`/`i8`/`i32` for 8 bit).
pub fn quantize<T: StoredInteger>(
    input: &[f32],
    output: &mut [T],
    encoding: &Encoding,
) -> Result<(), KernelError> {
    check_len(input.len(), output.len())?;
    check_integer::<T>(encoding)?;
    let g = Grid::new(encoding);
    if g.wide {
        for (q, &x) in output.iter_mut().zip(input) {
            *q = T::from_f64(grid_f64(x, g.scale, g.lo, g.hi) + g.zero_point);
        }
        return Ok(());
    }
    let (scale, lo, hi, zp) = (g.scale, g.lo as f32, g.hi as f32, g.zero_point as f32);
    let mut out_chunks = output.chunks_exact_mut(LANES);
    let in_chunks = input.chunks_exact(LANES);
    let in_tail = in_chunks.remainder();
    for (out, inp) in (&mut out_chunks).zip(in_chunks) {
        for i in 0..LANES {
            out[i] = T::from_f32(grid_f32(inp[i], scale, lo, hi) + zp);
        }
    }
    for (q, &x) in out_chunks.into_remainder().iter_mut().zip(in_tail) {
        *q = T::from_f32(grid_f32(x, scale, lo, hi) + zp);
    }
    Ok(())
}

/// Dequantizes stored integers: `(q - zero_point) · scale`, in `f32` with the `f32` scale as
/// DequantizeLinear computes it.
///
/// Integers outside the encoding's range are not clamped: they are what the caller stored.
pub fn dequantize<T: StoredInteger>(
    input: &[T],
    output: &mut [f32],
    encoding: &Encoding,
) -> Result<(), KernelError> {
    check_len(input.len(), output.len())?;
    let g = Grid::new(encoding);
    if g.wide {
        for (y, &q) in output.iter_mut().zip(input) {
            *y = (q.to_f64() - g.zero_point) as f32 * g.scale;
        }
        return Ok(());
    }
    let (scale, zp) = (g.scale, g.zero_point as f32);
    let mut out_chunks = output.chunks_exact_mut(LANES);
    let in_chunks = input.chunks_exact(LANES);
    let in_tail = in_chunks.remainder();
    for (out, inp) in (&mut out_chunks).zip(in_chunks) {
        for i in 0..LANES {
            out[i] = (inp[i].to_f32() - zp) * scale;
        }
    }
    for (y, &q) in out_chunks.into_remainder().iter_mut().zip(in_tail) {
        *y = (q.to_f32() - zp) * scale;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{Bitwidth, Schema};
    use proptest::prelude::*;

    fn enc(min: f64, max: f64, bits: u32, schema: Schema) -> Encoding {
        Encoding::from_range(min, max, Bitwidth::new(bits).unwrap(), schema).unwrap()
    }

    /// The obvious scalar formula, dividing by the `f32` scale as onnxruntime does.
    fn reference_grid(x: f32, e: &Encoding) -> f32 {
        let t = x / e.scale as f32;
        let lo = e.offset as f32;
        let hi = lo + e.bitwidth.steps() as f32;
        if t.is_nan() {
            return lo;
        }
        t.clamp(lo, hi).round_ties_even()
    }

    #[test]
    fn seed_example_through_kernels() {
        let e = enc(-1.8, 0.5, 8, Schema::Asymmetric);
        let input = [-1.8f32, -1.0, 0.0, 0.5];
        let mut q = [0u8; 4];
        quantize(&input, &mut q, &e).unwrap();
        assert_eq!(q, [0, 89, 200, 255]);
        let mut back = [0f32; 4];
        dequantize(&q, &mut back, &e).unwrap();
        // The seed prints -1.0011 for the second value: -1.001176 truncated, not rounded.
        let expected = [-1.8039, -1.0012, 0.0, 0.4961];
        for (b, x) in back.iter().zip(expected) {
            assert!((b - x).abs() < 5e-5, "{back:?}");
        }
        assert_eq!(back[2], 0.0);
    }

    #[test]
    fn signed_schemas_store_shifted_integers() {
        let e = enc(-1.8, 0.5, 8, Schema::SignedAsymmetric);
        let mut q = [0i8; 4];
        quantize(&[-1.8, -1.0, 0.0, 0.5], &mut q, &e).unwrap();
        assert_eq!(q, [-128, -39, 72, 127]);
        let e = Encoding::symmetric(1.27, Bitwidth::B8, Schema::Symmetric);
        let mut q = [0i8; 3];
        quantize(&[-2.0, 0.0, 0.01], &mut q, &e).unwrap();
        assert_eq!(q, [-128, 0, 1]);
        let e = Encoding::symmetric(1.27, Bitwidth::B8, Schema::UnsignedSymmetric);
        let mut q = [0u8; 3];
        quantize(&[-2.0, 0.0, 0.01], &mut q, &e).unwrap();
        assert_eq!(q, [0, 128, 129]);
    }

    #[test]
    fn narrow_integer_types_are_refused() {
        let e = enc(-1.0, 1.0, 8, Schema::Asymmetric);
        let mut q = [0i8; 1];
        assert!(matches!(
            quantize(&[0.0], &mut q, &e),
            Err(KernelError::IntegerTooNarrow {
                type_name: "i8",
                ..
            })
        ));
        let e = enc(-1.0, 1.0, 16, Schema::SignedAsymmetric);
        let mut q = [0u8; 1];
        assert!(quantize(&[0.0], &mut q, &e).is_err());
        let mut q = [0u8; 2];
        assert_eq!(
            quantize(&[0.0], &mut q, &enc(0.0, 1.0, 8, Schema::Asymmetric)),
            Err(KernelError::LengthMismatch {
                expected: 1,
                actual: 2
            })
        );
    }

    #[test]
    fn ties_round_half_to_even() {
        // scale 1: 0.5 → 0, 1.5 → 2, 2.5 → 2, -0.5 → -0 on a grid around zero.
        let e = Encoding::from_range(-128.0, 127.0, Bitwidth::B8, Schema::Asymmetric).unwrap();
        assert_eq!(e.scale, 1.0);
        let mut out = [0f32; 4];
        fake_quantize(&[0.5, 1.5, 2.5, -0.5], &mut out, &e).unwrap();
        assert_eq!(out, [0.0, 2.0, 2.0, 0.0]);
    }

    #[test]
    fn onnx_divides_by_the_f32_scale() {
        // 1.55f32 / 0.1f32 = 15.499999 rounds to 15, as onnxruntime's QuantizeLinear does;
        // 1.55f32 · (1/0.1f32) = 15.5 would round to 16.
        let e = Encoding::symmetric(12.7, Bitwidth::B8, Schema::Symmetric);
        assert_eq!(e.scale as f32, 0.1);
        let x = f32::from_bits(1_069_966_950);
        assert_eq!(x, 1.55);
        assert_eq!(x * (1.0 / 0.1f32), 15.5);
        let mut data = [x];
        fake_quantize_in_place(&mut data, &e);
        assert_eq!(data, [15.0 * 0.1f32]);
        let mut q = [0i8];
        quantize(&[x], &mut q, &e).unwrap();
        assert_eq!(q, [15]);
    }

    #[test]
    fn aimet_rounds_half_away_after_the_offset() {
        // scale 1, offset -128: the tie is decided on x − offset, so -0.5 (127.5) goes up to 0.
        let e = Encoding::from_range(-128.0, 127.0, Bitwidth::B8, Schema::Asymmetric).unwrap();
        let mut data = [0.5f32, 1.5, 2.5, -0.5, -1.5, 200.0, f32::NAN];
        fake_quantize_in_place_as(&mut data, &e, FakeQuant::Aimet);
        // NaN takes `max`: C's fmin(NaN, max) is max.
        assert_eq!(data, [1.0, 2.0, 3.0, 0.0, -1.0, 127.0, 127.0]);
        let mut onnx = [0.5f32, 1.5, 2.5, -0.5, -1.5];
        fake_quantize_in_place(&mut onnx, &e);
        assert_eq!(onnx, [0.0, 2.0, 2.0, 0.0, -2.0]);
    }

    #[test]
    fn aimet_clamps_to_the_encoding_range_before_the_grid() {
        // A stated range inside the grid: -2 clamps to -0.995 (grid 0.5, rounded to 1), where
        // ONNX saturates on the grid at offset · scale.
        let e = Encoding {
            bitwidth: Bitwidth::B8,
            schema: Schema::Asymmetric,
            min: -0.995,
            max: 1.5,
            scale: 0.01,
            offset: -100,
        };
        let mut data = [-2.0f32];
        fake_quantize_in_place_as(&mut data, &e, FakeQuant::Aimet);
        assert_eq!(data, [0.01f32 * (1.0 - 100.0)]);
        let mut data = [-2.0f32];
        fake_quantize_in_place(&mut data, &e);
        assert_eq!(data, [-100.0 * 0.01f32]);
    }

    #[test]
    fn clamping_nan_and_infinity() {
        let e = enc(-1.0, 1.0, 8, Schema::Asymmetric);
        let mut data = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 100.0, -100.0];
        fake_quantize_in_place(&mut data, &e);
        // The kernels compute grid · f32(scale), which can be an ulp away from f32(max).
        let scale = e.scale as f32;
        let (min, max) = (-128.0 * scale, 127.0 * scale);
        assert_eq!(e.offset, -128);
        assert_eq!(data, [min, max, min, max, min]);
    }

    #[test]
    fn thirty_two_bit_bias_quantizes_exactly() {
        let e = Encoding::int32_bias(0.5, 0.25);
        let mut q = [0i32; 4];
        quantize(&[1.0, -1.0, 0.0, 1e30], &mut q, &e).unwrap();
        assert_eq!(q, [8, -8, 0, i32::MAX]);
        let mut back = [0f32; 4];
        dequantize(&q[..3], &mut back[..3], &e).unwrap();
        assert_eq!(&back[..3], &[1.0, -1.0, 0.0]);
        let mut u = [0u8; 1];
        assert!(quantize(&[0.0], &mut u, &e).is_err());
    }

    #[test]
    fn min_max_skips_and_counts_non_finite() {
        let mut data: Vec<f32> = (0..100).map(|i| i as f32 - 50.0).collect();
        assert_eq!(
            min_max(&data),
            MinMax {
                min: -50.0,
                max: 49.0,
                nan_count: 0,
                inf_count: 0
            }
        );
        data[3] = f32::NAN;
        data[40] = f32::INFINITY;
        data[99] = f32::NEG_INFINITY;
        data[0] = f32::NAN;
        assert_eq!(
            min_max(&data),
            MinMax {
                min: -49.0,
                max: 48.0,
                nan_count: 2,
                inf_count: 2
            }
        );
        let all_nan = min_max(&[f32::NAN; 20]);
        assert!(all_nan.is_empty() && all_nan.range().is_none());
        assert_eq!(all_nan.nan_count, 20);
        assert!(min_max(&[]).is_empty());
    }

    fn any_encoding() -> impl Strategy<Value = Encoding> {
        (
            -1000.0f64..1000.0,
            0.0f64..1000.0,
            prop_oneof![2u32..=16, Just(32u32)],
            prop::sample::select(Schema::ALL.to_vec()),
        )
            .prop_map(|(min, width, bits, schema)| enc(min, min + width, bits, schema))
    }

    proptest! {
        #[test]
        fn min_max_agrees_with_a_fold(data in prop::collection::vec(
            prop_oneof![8 => -1e6f32..1e6, 1 => Just(f32::NAN), 1 => Just(f32::INFINITY)], 0..200)
        ) {
            let finite: Vec<f32> = data.iter().copied().filter(|x| x.is_finite()).collect();
            let got = min_max(&data);
            prop_assert_eq!(got.min, finite.iter().copied().fold(f32::INFINITY, f32::min));
            prop_assert_eq!(got.max, finite.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            prop_assert_eq!(got.nan_count, data.iter().filter(|x| x.is_nan()).count() as u64);
            let (a, b) = data.split_at(data.len() / 3);
            prop_assert_eq!(min_max(a).merge(min_max(b)), got);
        }

        #[test]
        fn kernels_agree_with_the_naive_formula(
            e in any_encoding(),
            data in prop::collection::vec(-2000.0f32..2000.0, 0..100),
        ) {
            prop_assume!(e.bitwidth.bits() <= 16);
            let mut fq = vec![0f32; data.len()];
            fake_quantize(&data, &mut fq, &e).unwrap();
            let mut in_place = data.clone();
            fake_quantize_in_place(&mut in_place, &e);
            let mut q = vec![0i32; data.len()];
            quantize(&data, &mut q, &e).unwrap();
            let mut dq = vec![0f32; data.len()];
            dequantize(&q, &mut dq, &e).unwrap();
            for i in 0..data.len() {
                let grid = reference_grid(data[i], &e);
                prop_assert_eq!(fq[i], grid * e.scale as f32);
                prop_assert_eq!(in_place[i].to_bits(), fq[i].to_bits());
                prop_assert_eq!(q[i] as f32, grid + e.zero_point() as f32);
                prop_assert_eq!(dq[i], fq[i]);
            }
        }

        #[test]
        fn stored_parameters_hold_the_exported_integers(
            e in any_encoding(),
            data in prop::collection::vec(-2000.0f32..2000.0, 0..100),
        ) {
            let mut fq = data.clone();
            fake_quantize_in_place_as(&mut fq, &e, FakeQuant::OnnxStored);
            for (x, y) in data.iter().zip(&fq) {
                let q = e.quantize_value(f64::from(*x)) - e.zero_point();
                prop_assert_eq!(*y, q as f32 * e.scale as f32);
            }
        }

        #[test]
        fn aimet_kernel_agrees_with_its_scalar_formula(
            e in any_encoding(),
            data in prop::collection::vec(-2000.0f32..2000.0, 0..100),
        ) {
            prop_assume!(e.bitwidth.bits() <= 16);
            let (min, max, delta, offset) =
                (e.min as f32, e.max as f32, e.scale as f32, e.offset as f32);
            let mut fq = data.clone();
            fake_quantize_in_place_as(&mut fq, &e, FakeQuant::Aimet);
            for (x, y) in data.iter().zip(&fq) {
                let t = x.min(max).max(min) / delta - offset;
                prop_assert_eq!(*y, delta * (t.round() + offset));
            }
        }

        #[test]
        fn fake_quant_error_is_at_most_half_a_step(
            e in any_encoding(),
            unit in prop::collection::vec(0.0f64..=1.0, 1..50),
        ) {
            let mut data: Vec<f32> =
                unit.iter().map(|u| (e.min + u * (e.max - e.min)) as f32).collect();
            let original = data.clone();
            fake_quantize_in_place(&mut data, &e);
            for (x, y) in original.iter().zip(&data) {
                let err = (f64::from(*x) - f64::from(*y)).abs();
                // f32 rounding of x, of 1/scale and of the product.
                let slack = 4.0 * f64::from(f32::EPSILON) * f64::from(x.abs()).max(e.scale);
                prop_assert!(err <= e.scale / 2.0 + slack, "{x} -> {y}, {e:?}");
            }
        }

        #[test]
        fn zero_survives_fake_quant(e in any_encoding()) {
            let mut data = [0.0f32, -0.0];
            fake_quantize_in_place(&mut data, &e);
            prop_assert_eq!(data, [0.0, 0.0]);
        }
    }
}
