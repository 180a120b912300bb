//! A fixed-size histogram whose range grows with the data and whose merge is exact.
//!
//! Design (the book's "Calibration" page tells the same story with pictures in words):
//! - [`BINS`] bins of width `w = 2^exponent`, anchored at zero: absolute bin `i` covers
//!   `[i·w, (i+1)·w)`. The histogram holds the window of absolute bins `start .. start + BINS`.
//! - The state is a pure function of the set of finite values seen: `exponent` is the smallest
//!   (≥ [`MIN_EXPONENT`]) at which `floor(max/w) − floor(min/w) < BINS` and both bin indices stay
//!   below 2^40 in magnitude; `start = floor(min/w)`; each count is the exact number of values
//!   with `floor(x/w) = start + k`.
//! - Growing from `w` to `2^d·w` maps absolute bin `i` to `i >> d` (floor division by `2^d`), which
//!   is exactly where each of its values would have been binned at the coarser width, so
//!   re-binning loses nothing that the coarser histogram would have kept.
//! - Hence merging two histograms (grow both to the union's canonical exponent, add counts) gives
//!   the very bits one histogram over all the data would have: merge is associative and
//!   commutative, and results never depend on how data was split across threads.
//! - The counts of values exactly at the minimum and at the maximum are kept too (a bin cannot
//!   say where inside it its values sit, and values pile up at the extremes); they merge by the
//!   same rule as the bounds, so they are split-invariant as well.
//!
//! `x/w` is computed as `x · 2^−exponent`, which is exact (in `f64` always, in `f32` where
//! [`Binning::for_block`] says so), and the floor and the window start are taken exactly (in
//! integers, or by the round-to-integer constant trick of [`Binning`]), so binning has no
//! rounding at all. The vectorized [`Binning`] and the scalar `bin_index` agree with the
//! definition bit for bit; the tests compare both with it.

use super::min_max::{BLOCK, MinMax, scan_block};

/// Number of bins. Because the exponent is the smallest that fits, the data always spans more
/// than `BINS / 2 − 1` of them.
pub const BINS: usize = 2048;

/// Most finite values a histogram made by [`Histogram::keeping_values`] keeps exactly. Tensors
/// this small (an attention score, a squeeze-and-excite vector: a few dozen values per sample)
/// are where a bin read as uniform misleads a range search most: with a few hundred values, the
/// squared error depends on where each one falls on the grid.
pub const EXACT_VALUES: usize = 1024;

/// Finest bin width, `2^MIN_EXPONENT`: below every `f32` (the smallest subnormal is `2^−149`), so
/// it only binds for data made of a single value.
pub const MIN_EXPONENT: i32 = -200;

/// Bin indices stay below this in magnitude, so that `x/w` and its floor are exact in `f64`/`i64`.
const INDEX_LIMIT: f64 = (1u64 << 40) as f64;

/// Independent sub-histograms for long chunks: repeated values (the zeros after a ReLU) would
/// otherwise serialize on one counter's load-increment-store.
const LANES: usize = 4;

/// Chunk length from which the lanes pay for their final flush.
const LANE_THRESHOLD: usize = 4 * BINS;

/// Lane counters are `u32`; flush well before one could overflow.
const LANE_FLUSH: usize = 1 << 30;

/// `2^e` for `e` in the normal `f64` exponent range, built from bits so it is exact.
fn pow2(e: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&e));
    f64::from_bits(((1023 + e) as u64) << 52)
}

/// `-0.0` → `0.0`: the stored bounds must not depend on which zero arrived first.
fn canonical_zero(x: f32) -> f32 {
    if x == 0.0 { 0.0 } else { x }
}

/// Streaming histogram of a tensor's finite values; see the module documentation for the design.
///
/// `Eq` and `Hash` compare the exponent, window, bounds and counts exactly (never the scratch
/// buffers), so equal data gives equal histograms.
pub struct Histogram {
    exponent: i32,
    start: i64,
    min: u32,
    max: u32,
    total: u64,
    /// How many values equal `min` and `max` exactly: values often pile up there (a ReLU's
    /// zeros, a saturated sigmoid's ones), and a bin cannot say where inside it they sit.
    at_min: u64,
    at_max: u64,
    counts: Box<[u64; BINS]>,
    /// Every finite value observed, ascending (`-0.0` as `0.0`), while asked for and while
    /// there are at most [`EXACT_VALUES`] of them; `None` otherwise.
    values: Option<Vec<f32>>,
    /// Scratch for [`LANES`] `u32` sub-histograms; all zero between calls, kept to avoid
    /// allocating per call.
    lanes: Vec<u32>,
}

impl Histogram {
    /// An empty histogram (one 16 KiB allocation).
    pub fn new() -> Self {
        Histogram {
            exponent: MIN_EXPONENT,
            start: 0,
            min: f32::INFINITY.to_bits(),
            max: f32::NEG_INFINITY.to_bits(),
            total: 0,
            at_min: 0,
            at_max: 0,
            counts: zeroed_counts(),
            values: None,
            lanes: Vec::new(),
        }
    }

    /// An empty histogram that also keeps its values exactly as long as there are at most
    /// [`EXACT_VALUES`] of them ([`Histogram::values`]). Whether they are kept depends only on
    /// how many finite values it saw in all, never on how they were chunked or merged.
    pub fn keeping_values() -> Self {
        Histogram {
            values: Some(Vec::new()),
            ..Histogram::new()
        }
    }

    /// The finite values observed, ascending, when this histogram keeps them
    /// ([`Histogram::keeping_values`]) and there are at most [`EXACT_VALUES`].
    pub fn values(&self) -> Option<&[f32]> {
        self.values.as_deref()
    }

    /// Keeps the finite values of a chunk of which `finite` were binned, or stops keeping
    /// values once there are more than [`EXACT_VALUES`].
    fn keep_values(&mut self, chunk: &[f32], finite: u64) {
        let Some(kept) = &mut self.values else {
            return;
        };
        if kept.len() as u64 + finite > EXACT_VALUES as u64 {
            self.values = None;
            return;
        }
        kept.extend(
            chunk
                .iter()
                .filter(|x| x.is_finite())
                .map(|&x| canonical_zero(x)),
        );
        kept.sort_unstable_by(f32::total_cmp);
    }

    /// Folds one chunk in: a single pass over it, blocked so each block is binned while still in
    /// L1, and no allocation except the lane scratch on the first long chunk.
    pub fn observe(&mut self, values: &[f32]) {
        self.observe_impl(values, None);
    }

    /// [`Histogram::observe`] that also feeds `min_max` from the same pass.
    pub(crate) fn observe_with_min_max(&mut self, values: &[f32], min_max: &mut MinMax) {
        self.observe_impl(values, Some(min_max));
    }

    fn observe_impl(&mut self, values: &[f32], min_max: Option<&mut MinMax>) {
        let before = self.total;
        self.bin_values(values, min_max);
        if self.values.is_some() {
            self.keep_values(values, self.total - before);
        }
    }

    fn bin_values(&mut self, values: &[f32], mut min_max: Option<&mut MinMax>) {
        let use_lanes = values.len() >= LANE_THRESHOLD;
        if use_lanes && self.lanes.len() != LANES * BINS {
            self.lanes = vec![0; LANES * BINS];
        }
        let mut since_flush = 0usize;
        for block in values.chunks(BLOCK) {
            let scan = scan_block(block);
            let (lo, hi) = if scan.all_finite {
                if let Some(m) = min_max.as_deref_mut() {
                    m.absorb_block(block, scan);
                }
                (scan.min, scan.max)
            } else {
                // The rare block with NaN/∞: MinMax counts them; a throwaway one when the
                // caller keeps none.
                let mut unused = MinMax::new();
                min_max
                    .as_deref_mut()
                    .unwrap_or(&mut unused)
                    .absorb_with_non_finite(block)
            };
            if lo > hi {
                continue; // no finite value in this block
            }
            let (lo, hi) = (canonical_zero(lo), canonical_zero(hi));
            self.count_extremes(block, lo, hi);
            if self.total == 0 || lo < self.min_f32() || hi > self.max_f32() {
                if use_lanes {
                    self.flush_lanes();
                    since_flush = 0;
                }
                self.extend(lo, hi);
            }
            if !scan.all_finite {
                let scale = pow2(-self.exponent);
                self.total += bin_finite_only(&mut self.counts, block, scale, self.start);
                continue;
            }
            let binning = Binning::for_block(self.exponent, self.start, lo);
            if use_lanes {
                bin_lanes(&mut self.lanes, block, binning);
                self.total += block.len() as u64;
                since_flush += block.len();
                if since_flush >= LANE_FLUSH {
                    self.flush_lanes();
                    since_flush = 0;
                }
            } else {
                bin_direct(&mut self.counts, block, binning);
                self.total += block.len() as u64;
            }
        }
        if use_lanes {
            self.flush_lanes();
        }
    }

    /// Adds everything `other` saw. The result is bit-identical to one histogram observing both
    /// inputs, whatever the order or grouping of merges.
    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        // An empty histogram is the identity, whether or not it keeps values.
        self.values = match (&mut self.values, &other.values) {
            _ if self.total == 0 => other.values.clone(),
            (Some(kept), Some(more)) if kept.len() + more.len() <= EXACT_VALUES => {
                let mut all = std::mem::take(kept);
                all.extend_from_slice(more);
                all.sort_unstable_by(f32::total_cmp);
                Some(all)
            }
            _ => None,
        };
        self.merge_extremes(other.min_f32(), other.at_min, other.max_f32(), other.at_max);
        let lo = self.min_f32().min(other.min_f32());
        let hi = self.max_f32().max(other.max_f32());
        let (exponent, start) = fit(self.exponent.max(other.exponent), lo, hi);
        self.rebin(exponent, start);
        let shift = (exponent - other.exponent).min(63) as u32;
        for (k, &count) in other.counts.iter().enumerate() {
            if count != 0 {
                let bin = (other.start + k as i64) >> shift;
                self.counts[(bin - start) as usize] += count;
            }
        }
        self.min = lo.to_bits();
        self.max = hi.to_bits();
        self.total += other.total;
    }

    /// Counts the values of `block` (finite range `[lo, hi]`) at its extremes and folds them
    /// into the counts at this histogram's extremes. Called before `min`/`max` take the block in.
    fn count_extremes(&mut self, block: &[f32], lo: f32, hi: f32) {
        // Only a block that reaches this histogram's extremes can change their counts; once the
        // extremes are established most blocks do not, and are not scanned again.
        let empty = self.total == 0;
        let need_lo = empty || lo <= self.min_f32();
        let need_hi = empty || hi >= self.max_f32();
        let count = |v: f32| block.iter().filter(|&&x| x == v).count() as u64;
        let at_lo = if need_lo { count(lo) } else { 0 };
        // A block of one repeated value counts it once for both ends, but only if the low end
        // was counted (a block that reaches the maximum and not the minimum counts it here).
        let at_hi = match (need_hi, hi == lo && need_lo) {
            (false, _) => 0,
            (true, true) => at_lo,
            (true, false) => count(hi),
        };
        self.merge_extremes(lo, at_lo, hi, at_hi);
    }

    /// Folds another set of values' extremes and their counts into this one's: the smaller
    /// minimum wins, equal ones add up (likewise the maxima). Associative and commutative, so
    /// merges in any grouping agree. Called before `min`/`max` change.
    fn merge_extremes(&mut self, lo: f32, at_lo: u64, hi: f32, at_hi: u64) {
        if self.total == 0 {
            (self.at_min, self.at_max) = (at_lo, at_hi);
            return;
        }
        let (min, max) = (self.min_f32(), self.max_f32());
        self.at_min = if lo < min {
            at_lo
        } else if lo == min {
            self.at_min + at_lo
        } else {
            self.at_min
        };
        self.at_max = if hi > max {
            at_hi
        } else if hi == max {
            self.at_max + at_hi
        } else {
            self.at_max
        };
    }

    /// How many values equal the smallest and the largest exactly (`(0, 0)` when empty).
    pub fn extreme_counts(&self) -> (u64, u64) {
        (self.at_min, self.at_max)
    }

    /// Grows the window (and coarsens the bins if needed) to cover `[lo, hi]` as well.
    fn extend(&mut self, lo: f32, hi: f32) {
        let lo = if self.total == 0 {
            lo
        } else {
            lo.min(self.min_f32())
        };
        let hi = if self.total == 0 {
            hi
        } else {
            hi.max(self.max_f32())
        };
        let (exponent, start) = fit(self.exponent, lo, hi);
        self.rebin(exponent, start);
        self.min = lo.to_bits();
        self.max = hi.to_bits();
    }

    /// Moves the counts to a coarser (or equal) exponent and a new window start. Lanes must be
    /// flushed.
    fn rebin(&mut self, exponent: i32, start: i64) {
        debug_assert!(exponent >= self.exponent);
        if self.total != 0 && (exponent != self.exponent || start != self.start) {
            let shift = (exponent - self.exponent).min(63) as u32;
            let mut moved = [0u64; BINS];
            for (k, &count) in self.counts.iter().enumerate() {
                if count != 0 {
                    let bin = (self.start + k as i64) >> shift;
                    moved[(bin - start) as usize] += count;
                }
            }
            *self.counts = moved;
        }
        self.exponent = exponent;
        self.start = start;
    }

    fn flush_lanes(&mut self) {
        if self.lanes.is_empty() {
            return;
        }
        let (l0, rest) = self.lanes.split_at_mut(BINS);
        let (l1, rest) = rest.split_at_mut(BINS);
        let (l2, l3) = rest.split_at_mut(BINS);
        for k in 0..BINS {
            self.counts[k] +=
                u64::from(l0[k]) + u64::from(l1[k]) + u64::from(l2[k]) + u64::from(l3[k]);
        }
        self.lanes.fill(0);
    }

    fn min_f32(&self) -> f32 {
        f32::from_bits(self.min)
    }

    fn max_f32(&self) -> f32 {
        f32::from_bits(self.max)
    }

    /// Whether no finite value has been observed.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Number of finite values binned (NaN and ±∞ are never binned).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Exact smallest and largest finite value observed, `None` when empty.
    pub fn range(&self) -> Option<(f32, f32)> {
        (self.total > 0).then(|| (self.min_f32(), self.max_f32()))
    }

    /// Bin width is `2^exponent`.
    pub fn exponent(&self) -> i32 {
        self.exponent
    }

    /// Bin width, `2^exponent`.
    pub fn bin_width(&self) -> f64 {
        pow2(self.exponent)
    }

    /// Absolute index of the window's first bin: bin `k` of [`Histogram::counts`] covers
    /// `[(start + k)·w, (start + k + 1)·w)`.
    pub fn start(&self) -> i64 {
        self.start
    }

    /// The [`BINS`] counts of the window.
    pub fn counts(&self) -> &[u64] {
        &self.counts[..]
    }

    /// `[left, right)` edges of window bin `k`.
    pub fn bin_edges(&self, k: usize) -> (f64, f64) {
        let w = self.bin_width();
        let left = (self.start + k as i64) as f64 * w;
        (left, left + w)
    }
}

/// The canonical `(exponent, start)` for finite bounds `lo ≤ hi`: the smallest exponent ≥ `from`
/// at which they fit. Scanning up from any exponent not above the canonical one reaches it,
/// because a range that fits at `e` also fits at `e + 1`.
fn fit(from: i32, lo: f32, hi: f32) -> (i32, i64) {
    let mut exponent = from;
    let scale = pow2(-exponent);
    let mut first = (f64::from(lo) * scale).floor();
    let mut last = (f64::from(hi) * scale).floor();
    while last - first >= BINS as f64 || first < -INDEX_LIMIT || last >= INDEX_LIMIT {
        exponent += 1;
        first = (first * 0.5).floor();
        last = (last * 0.5).floor();
    }
    (exponent, first as i64)
}

fn zeroed_counts() -> Box<[u64; BINS]> {
    vec![0u64; BINS]
        .into_boxed_slice()
        .try_into()
        .expect("length is BINS")
}

/// Window index of a finite value inside the window: `floor(x · 2^−e) − start`, exact.
/// Truncation then a correction gives the floor without a libm call. The scalar path, for the
/// rare block holding NaN or ±∞.
#[inline(always)]
fn bin_index(x: f32, scale: f64, start: i64) -> usize {
    let scaled = f64::from(x) * scale;
    let truncated = scaled as i64;
    let floor = truncated - i64::from(scaled < truncated as f64);
    let index = (floor - start) as usize;
    debug_assert!(index < BINS, "{x} outside the window");
    // The mask is a no-op for values inside the window; it lets the compiler drop bounds checks.
    index & (BINS - 1)
}

/// `1.5·2^23`: for `|y| ≤ 2^22`, `y + ROUND_F32` lands in `[2^23, 2^24]`, where the spacing of
/// `f32` is 1, so the sum is `y` rounded to the nearest integer, exactly, and its bit pattern is
/// that integer plus a constant.
const ROUND_F32: f32 = 12_582_912.0;

/// `1.5·2^52`: the same trick in `f64`, for `|y| ≤ 2^51`.
const ROUND_F64: f64 = 6_755_399_441_055_744.0;

/// Window indices of finite values known to lie inside the window, by branch-free arithmetic
/// that the compiler vectorizes. Both variants compute `floor(x · 2^−e) − start` exactly:
/// - `x · 2^−e` is exact (see [`Binning::for_block`] for when `f32` suffices);
/// - `r = y + ROUND` is `round(y)` exactly, `r − ROUND` too, and `floor(y)` is that minus one
///   when it is above `y`;
/// - the integer is read from `r`'s bits, so no float-to-integer conversion is needed, and
///   `start` is subtracted in integers, never in floating point.
#[derive(Debug, Clone, Copy)]
enum Binning {
    /// Four or eight values per instruction; the common case.
    Single { scale: f32, offset: u32 },
    /// Two or four values per instruction; any window.
    Double { scale: f64, offset: u64 },
}

/// Values binned per round trip through the index buffer: small enough that the buffer is a
/// few cache lines on the stack, large enough for the vectorized loop to run long.
const STEP: usize = 256;

impl Binning {
    /// The binning for a block of finite values whose smallest is `lo`, in the window
    /// `(exponent, start)`.
    ///
    /// `f32` is exact when the window's indices stay within `±2^22` and `x · 2^−e` is exact in
    /// `f32`. The latter holds whenever `e ≤ 0` (every finite `f32` is a multiple of `2^−149`, so
    /// scaling it up keeps it one). For `e > 0` a product below `2^−126` may round, but the
    /// floor of a positive value in `[0, 1)` is 0 however it rounds, so blocks without negative
    /// values are exact too; a tiny negative value could round to `−0.0` and lose its `−1`, so
    /// such blocks take `f64`, where the product is always exact.
    fn for_block(exponent: i32, start: i64, lo: f32) -> Binning {
        const LIMIT: i64 = 1 << 22;
        let scale_fits =
            (-126..=0).contains(&exponent) || ((1..=126).contains(&exponent) && lo >= 0.0);
        if scale_fits && start >= -LIMIT && start + BINS as i64 <= LIMIT {
            Binning::Single {
                scale: f32::from_bits(((127 - exponent) as u32) << 23),
                offset: ROUND_F32.to_bits().wrapping_add(start as u32),
            }
        } else {
            Binning::Double {
                scale: pow2(-exponent),
                offset: ROUND_F64.to_bits().wrapping_add(start as u64),
            }
        }
    }

    /// Fills `indices[..values.len()]`; `values.len() ≤ STEP`.
    #[inline(always)]
    fn indices(self, values: &[f32], indices: &mut [u16; STEP]) {
        match self {
            Binning::Single { scale, offset } => {
                for (index, &x) in indices.iter_mut().zip(values) {
                    let y = x * scale;
                    let r = y + ROUND_F32;
                    let below = u32::from(r - ROUND_F32 > y);
                    *index = (r.to_bits().wrapping_sub(offset).wrapping_sub(below)) as u16;
                }
            }
            Binning::Double { scale, offset } => {
                for (index, &x) in indices.iter_mut().zip(values) {
                    let y = f64::from(x) * scale;
                    let r = y + ROUND_F64;
                    let below = u64::from(r - ROUND_F64 > y);
                    *index = (r.to_bits().wrapping_sub(offset).wrapping_sub(below)) as u16;
                }
            }
        }
    }
}

/// Counts a block of finite values, all inside the window, into `counts`.
fn bin_direct(counts: &mut [u64; BINS], block: &[f32], binning: Binning) {
    let mut indices = [0u16; STEP];
    for step in block.chunks(STEP) {
        binning.indices(step, &mut indices);
        for &index in &indices[..step.len()] {
            counts[usize::from(index) & (BINS - 1)] += 1;
        }
    }
}

fn bin_finite_only(counts: &mut [u64; BINS], block: &[f32], scale: f64, start: i64) -> u64 {
    let mut binned = 0;
    for &x in block {
        if x.is_finite() {
            counts[bin_index(x, scale, start)] += 1;
            binned += 1;
        }
    }
    binned
}

/// [`bin_direct`] into the [`LANES`] interleaved `u32` sub-histograms.
fn bin_lanes(lanes: &mut [u32], block: &[f32], binning: Binning) {
    let (l0, rest) = lanes.split_at_mut(BINS);
    let (l1, rest) = rest.split_at_mut(BINS);
    let (l2, l3) = rest.split_at_mut(BINS);
    let l0: &mut [u32; BINS] = l0.try_into().expect("lane length");
    let l1: &mut [u32; BINS] = l1.try_into().expect("lane length");
    let l2: &mut [u32; BINS] = l2.try_into().expect("lane length");
    let l3: &mut [u32; BINS] = l3.try_into().expect("lane length");
    let at = |index: u16| usize::from(index) & (BINS - 1);
    let mut indices = [0u16; STEP];
    for step in block.chunks(STEP) {
        binning.indices(step, &mut indices);
        let mut quads = indices[..step.len()].chunks_exact(4);
        for q in &mut quads {
            l0[at(q[0])] += 1;
            l1[at(q[1])] += 1;
            l2[at(q[2])] += 1;
            l3[at(q[3])] += 1;
        }
        for &index in quads.remainder() {
            l0[at(index)] += 1;
        }
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// Every field of the statistic, for the byte codec.
    #[allow(clippy::type_complexity)]
    pub(super) fn raw_parts(
        &self,
    ) -> (i32, i64, u32, u32, u64, (u64, u64), &[u64], Option<&[f32]>) {
        (
            self.exponent,
            self.start,
            self.min,
            self.max,
            self.total,
            (self.at_min, self.at_max),
            &self.counts[..],
            self.values.as_deref(),
        )
    }

    /// Rebuilds a histogram from [`Histogram::raw_parts`]; `None` when the fields cannot belong
    /// to one (counts that do not add up to the total, an exponent out of range).
    pub(super) fn from_raw_parts(
        exponent: i32,
        start: i64,
        min: u32,
        max: u32,
        total: u64,
        (at_min, at_max): (u64, u64),
        counts: &[u64],
    ) -> Option<Histogram> {
        if counts.len() != BINS
            || !(MIN_EXPONENT..=1023).contains(&exponent)
            || counts.iter().try_fold(0u64, |sum, &c| sum.checked_add(c)) != Some(total)
            || at_min > total
            || at_max > total
        {
            return None;
        }
        let mut histogram = Histogram::new();
        histogram.exponent = exponent;
        histogram.start = start;
        histogram.min = min;
        histogram.max = max;
        histogram.total = total;
        (histogram.at_min, histogram.at_max) = (at_min, at_max);
        histogram.counts.copy_from_slice(counts);
        Some(histogram)
    }

    /// This histogram with `values` as its kept values ([`Histogram::values`]); `None` when
    /// they cannot be its values (not `total` finite values in ascending order).
    pub(super) fn with_kept_values(mut self, values: Option<Vec<f32>>) -> Option<Histogram> {
        let fit = values.as_ref().is_none_or(|v| {
            v.len() as u64 == self.total
                && v.iter().all(|x| x.is_finite())
                && v.is_sorted_by(|a, b| a.total_cmp(b).is_le())
        });
        self.values = values;
        fit.then_some(self)
    }
}

impl Clone for Histogram {
    /// Clones the statistics, not the scratch buffers.
    fn clone(&self) -> Self {
        Histogram {
            exponent: self.exponent,
            start: self.start,
            min: self.min,
            max: self.max,
            total: self.total,
            at_min: self.at_min,
            at_max: self.at_max,
            counts: self.counts.clone(),
            values: self.values.clone(),
            lanes: Vec::new(),
        }
    }
}

impl PartialEq for Histogram {
    fn eq(&self, other: &Self) -> bool {
        self.exponent == other.exponent
            && self.start == other.start
            && self.min == other.min
            && self.max == other.max
            && self.total == other.total
            && (self.at_min, self.at_max) == (other.at_min, other.at_max)
            && self.counts == other.counts
            && self.values_bits() == other.values_bits()
    }
}

impl Eq for Histogram {}

impl std::hash::Hash for Histogram {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.exponent, self.start, self.min, self.max, self.total).hash(state);
        (self.at_min, self.at_max).hash(state);
        self.counts[..].hash(state);
        self.values_bits().hash(state);
    }
}

impl Histogram {
    /// The kept values by their bits, for exact comparison and hashing.
    fn values_bits(&self) -> Option<Vec<u32>> {
        self.values
            .as_ref()
            .map(|v| v.iter().map(|x| x.to_bits()).collect())
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let occupied = self.counts.iter().filter(|&&c| c != 0).count();
        f.debug_struct("Histogram")
            .field("exponent", &self.exponent)
            .field("start", &self.start)
            .field("range", &self.range())
            .field("total", &self.total)
            .field("occupied_bins", &occupied)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_at_the_extremes_are_counted_across_chunks_and_merges() {
        let values = [0.0f32, -0.0, 0.5, 1.0, 0.25, 0.0, 1.0, f32::NAN, 0.75];
        let mut whole = Histogram::new();
        whole.observe(&values);
        // 0.0 and -0.0 are the same minimum; NaN is no value at all.
        assert_eq!(whole.extreme_counts(), (3, 2));
        for split in 0..=values.len() {
            let (a, b) = values.split_at(split);
            let (mut left, mut right) = (Histogram::new(), Histogram::new());
            left.observe(a);
            right.observe(b);
            let mut merged = right.clone();
            merged.merge(&left);
            left.merge(&right);
            assert_eq!(left.extreme_counts(), (3, 2), "split {split}");
            assert_eq!(merged.extreme_counts(), (3, 2), "split {split}");
        }
        let mut lower = Histogram::new();
        lower.observe(&[-2.0, -2.0, 1.0]);
        whole.merge(&lower);
        assert_eq!(
            whole.extreme_counts(),
            (2, 3),
            "a smaller minimum replaces the count"
        );
    }

    use super::*;
    use proptest::prelude::*;

    /// Deterministic heavy-ish data: a mix of scales, zeros and a few non-finite values.
    fn sample(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed | 1;
        (0..n)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                match i % 97 {
                    0 => 0.0,
                    1 if i % 5000 == 1 => f32::NAN,
                    2 => (u * 1000.0 - 200.0) as f32,
                    _ => ((u - 0.3) * 4.0) as f32,
                }
            })
            .collect()
    }

    /// Reference binning straight from the definition, at the histogram's final exponent.
    fn reference_counts(values: &[f32], h: &Histogram) -> Vec<u64> {
        let mut counts = vec![0u64; BINS];
        for &x in values.iter().filter(|x| x.is_finite()) {
            let bin = (f64::from(x) / h.bin_width()).floor() as i64 - h.start();
            counts[usize::try_from(bin).expect("inside window")] += 1;
        }
        counts
    }

    fn chunked(values: &[f32], k: usize) -> Histogram {
        let size = values.len().div_ceil(k).max(1);
        let mut merged = Histogram::new();
        for chunk in values.chunks(size) {
            let mut part = Histogram::new();
            part.observe(chunk);
            merged.merge(&part);
        }
        merged
    }

    #[test]
    fn counts_match_the_definition() {
        let values = sample(100_000, 7);
        let mut h = Histogram::new();
        h.observe(&values);
        assert_eq!(h.counts(), &reference_counts(&values, &h)[..]);
        assert_eq!(
            h.total(),
            values.iter().filter(|x| x.is_finite()).count() as u64
        );
    }

    #[test]
    fn exponent_is_the_smallest_that_fits() {
        let values = sample(10_000, 3);
        let mut h = Histogram::new();
        h.observe(&values);
        let (lo, hi) = h.range().unwrap();
        let span = |e: i32| {
            let w = pow2(e);
            (f64::from(hi) / w).floor() - (f64::from(lo) / w).floor()
        };
        assert!(span(h.exponent()) < BINS as f64);
        assert!(span(h.exponent() - 1) >= BINS as f64);
        // Data always covers more than half the window.
        assert!(span(h.exponent()) >= (BINS / 2 - 1) as f64);
    }

    #[test]
    fn chunks_and_thread_counts_give_identical_bits() {
        // Long enough that both the lane path and the direct path run.
        let values = sample(300_000, 11);
        let mut one = Histogram::new();
        one.observe(&values);
        for k in [1, 2, 3, 4, 8, 17, 1000] {
            assert_eq!(chunked(&values, k), one, "k = {k}");
        }
        // Real threads, merged in chunk order.
        use rayon::prelude::*;
        let parts: Vec<Histogram> = values
            .par_chunks(7_919)
            .map(|c| {
                let mut h = Histogram::new();
                h.observe(c);
                h
            })
            .collect();
        let mut merged = Histogram::new();
        for part in &parts {
            merged.merge(part);
        }
        assert_eq!(merged, one);
        // Merge order does not matter either.
        let mut reversed = Histogram::new();
        for part in parts.iter().rev() {
            reversed.merge(part);
        }
        assert_eq!(reversed, one);
    }

    #[test]
    fn single_value_and_zeros() {
        let mut h = Histogram::new();
        h.observe(&[0.0; 10]);
        assert_eq!(h.exponent(), MIN_EXPONENT);
        assert_eq!((h.start(), h.counts()[0]), (0, 10));
        h.observe(&[-0.0, f32::NAN, f32::NEG_INFINITY]);
        assert_eq!((h.total(), h.counts()[0]), (11, 11));
        let mut big = Histogram::new();
        big.observe(&[3.0e38, 3.0e38]);
        assert_eq!(big.total(), 2);
        assert_eq!(big.counts().iter().sum::<u64>(), 2);
        big.observe(&[-3.0e38, f32::MIN_POSITIVE]);
        assert_eq!(
            big.counts(),
            &reference_counts(&[3.0e38, 3.0e38, -3.0e38, f32::MIN_POSITIVE], &big)[..]
        );
    }

    #[test]
    fn tiny_negative_values_are_floored_exactly() {
        // floor(-1e-30 / w) is -1; a float subtraction of the window start would round it to 0.
        let values = [-1.0e-30f32, 3.0, -1.0e-30, 0.0];
        let mut h = Histogram::new();
        h.observe(&values);
        assert_eq!(h.counts(), &reference_counts(&values, &h)[..]);
        assert_eq!(h.start(), -1);
    }

    #[test]
    fn kept_values_depend_only_on_how_many_finite_values_there_are() {
        let values: Vec<f32> = (0..EXACT_VALUES)
            .map(|i| (i as f32 * 0.37).sin() * 10.0)
            .chain([f32::NAN, -0.0, f32::INFINITY])
            .collect();
        let mut whole = Histogram::keeping_values();
        whole.observe(&values);
        let mut expected: Vec<f32> = values
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .map(canonical_zero)
            .collect();
        expected.sort_by(f32::total_cmp);
        // EXACT_VALUES + 1 finite values: one too many.
        assert_eq!(expected.len(), EXACT_VALUES + 1);
        assert!(whole.values().is_none());
        let (head, tail) = values.split_at(EXACT_VALUES - 1);
        let mut part = Histogram::keeping_values();
        part.observe(head);
        assert_eq!(part.values().map(<[f32]>::len), Some(EXACT_VALUES - 1));
        for split in [1, 7, 500] {
            // Chunks observed one after another, and chunks merged in reverse.
            let mut chunked = Histogram::keeping_values();
            let mut merged = Histogram::keeping_values();
            for chunk in head.chunks(split).rev() {
                chunked.observe(chunk);
                let mut h = Histogram::keeping_values();
                h.observe(chunk);
                merged.merge(&h);
            }
            assert_eq!(chunked.values(), part.values(), "split {split}");
            assert_eq!(chunked.counts(), part.counts(), "split {split}");
            assert_eq!(
                chunked.extreme_counts(),
                part.extreme_counts(),
                "split {split}"
            );
            assert_eq!(chunked, part, "split {split}");
            assert_eq!(merged, part, "split {split}");
        }
        // An empty histogram that keeps nothing is still the identity of a merge.
        let mut empty = Histogram::new();
        empty.merge(&part);
        assert_eq!(empty, part);
        part.observe(tail);
        assert!(part.values().is_none());
        assert_eq!(part.range(), whole.range());
        assert_eq!(part.counts(), whole.counts());
        // Kept values survive the byte codec.
        let mut small = Histogram::keeping_values();
        small.observe(&[3.0, -1.0, 3.0, f32::NAN]);
        assert_eq!(small.values(), Some(&[-1.0, 3.0, 3.0][..]));
        let stats = crate::stats::TensorStatistics {
            min_max: MinMax::new(),
            histogram: Some(small.clone()),
        };
        let bytes = crate::stats::encode_all(std::slice::from_ref(&stats));
        let back = crate::stats::TensorStatistics::decode_all(&bytes).unwrap();
        assert_eq!(back[0].histogram.as_ref(), Some(&small));
    }

    #[test]
    fn clone_ignores_scratch() {
        let values = sample(50_000, 5);
        let mut h = Histogram::new();
        h.observe(&values);
        assert!(!h.lanes.is_empty());
        let c = h.clone();
        assert!(c.lanes.is_empty());
        assert_eq!(c, h);
    }

    /// `floor(x / w) − start` by the definition: an exact division by a power of two, `floor`
    /// from libm, the window start subtracted in integers.
    fn reference_index(x: f32, exponent: i32, start: i64) -> i64 {
        (f64::from(x) / pow2(exponent)).floor() as i64 - start
    }

    /// The fast path's indices for `block`, as `i64` for comparison with [`reference_index`].
    fn fast_indices(block: &[f32], exponent: i32, start: i64) -> Vec<i64> {
        let lo = block.iter().fold(f32::INFINITY, |m, &x| m.min(x));
        let binning = Binning::for_block(exponent, start, canonical_zero(lo));
        let mut out = Vec::new();
        let mut indices = [0u16; STEP];
        for step in block.chunks(STEP) {
            binning.indices(step, &mut indices);
            out.extend(indices[..step.len()].iter().map(|&i| i64::from(i)));
        }
        out
    }

    fn next_up(x: f32) -> f32 {
        match x {
            0.0 => f32::from_bits(1),
            _ if x > 0.0 => f32::from_bits(x.to_bits() + 1),
            _ => f32::from_bits(x.to_bits() - 1),
        }
    }

    fn next_down(x: f32) -> f32 {
        -next_up(-x)
    }

    /// Finite values from every corner of `f32`: any bit pattern, subnormals, zeros of both
    /// signs, powers of two and their neighbours (bin edges at every exponent), the extremes.
    fn extreme_value() -> impl Strategy<Value = f32> {
        let edge = (-149i32..=127, 1u32..64, 0u8..3, any::<bool>())
            .prop_map(|(e, k, side, neg)| {
                let x = (k as f64 * 2f64.powi(e)).min(f64::from(f32::MAX)) as f32;
                let x = [x, next_up(x), next_down(x)][usize::from(side)];
                if neg { -x } else { x }
            })
            // `next_up(f32::MAX)` is ∞, which never reaches the fast path.
            .prop_filter("finite", |x| x.is_finite());
        prop_oneof![
            4 => any::<u32>().prop_map(f32::from_bits).prop_filter("finite", |x| x.is_finite()),
            4 => edge,
            2 => (-1000i32..1000).prop_map(|k| k as f32 * f32::from_bits(1)),
            4 => -10.0f32..10.0,
            1 => Just(0.0f32),
            1 => Just(-0.0f32),
            1 => prop_oneof![Just(f32::MAX), Just(f32::MIN), Just(f32::MIN_POSITIVE), Just(-f32::MIN_POSITIVE)],
        ]
    }

    #[test]
    fn both_fast_variants_are_chosen_and_exact() {
        // Activation-like data at a fine width: f32.
        let usual = [-3.5f32, -1.0e-30, 0.0, -0.0, 2.75, 7.0];
        let (e, start) = fit(MIN_EXPONENT, -3.5, 7.0);
        assert!(matches!(
            Binning::for_block(e, start, -3.5),
            Binning::Single { .. }
        ));
        let expected: Vec<i64> = usual
            .iter()
            .map(|&x| reference_index(x, e, start))
            .collect();
        assert_eq!(fast_indices(&usual, e, start), expected);
        // Bins wider than 1 and a tiny negative value: f32 could round it to −0.0; f64 is used.
        let wide = [-1.0e-40f32, 5000.0, -3000.0, 1.0e-45];
        let (e, start) = fit(MIN_EXPONENT, -3000.0, 5000.0);
        assert!(e > 0);
        assert!(matches!(
            Binning::for_block(e, start, -3000.0),
            Binning::Double { .. }
        ));
        let expected: Vec<i64> = wide.iter().map(|&x| reference_index(x, e, start)).collect();
        assert_eq!(expected[0], -1 - start);
        assert_eq!(fast_indices(&wide, e, start), expected);
        // The same width with no negative value stays in f32.
        assert!(matches!(
            Binning::for_block(e, start, 0.0),
            Binning::Single { .. }
        ));
        // A window far from zero (indices beyond 2^22): f64.
        let far = [1.0e9f32, 1.0e9 + 64.0];
        let (e, start) = fit(MIN_EXPONENT, far[0], far[1]);
        assert!(start > 1 << 22);
        assert!(matches!(
            Binning::for_block(e, start, far[0]),
            Binning::Double { .. }
        ));
        let expected: Vec<i64> = far.iter().map(|&x| reference_index(x, e, start)).collect();
        assert_eq!(fast_indices(&far, e, start), expected);
    }

    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            10 => -10.0f32..10.0,
            3 => -1e-3f32..1e-3,
            2 => -1e30f32..1e30,
            1 => Just(0.0f32),
            1 => Just(-0.0f32),
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
        ]
    }

    proptest! {
        #[test]
        fn merge_of_any_split_is_bit_identical(
            values in prop::collection::vec(value(), 0..20_000),
            cuts in prop::collection::vec(0usize..20_000, 0..8),
        ) {
            let mut whole = Histogram::new();
            whole.observe(&values);
            prop_assert_eq!(whole.counts(), &reference_counts(&values, &whole)[..]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(values.len())).collect();
            cuts.sort_unstable();
            let mut merged = Histogram::new();
            let mut streamed = Histogram::new();
            let mut at = 0;
            for cut in cuts.into_iter().chain([values.len()]) {
                let mut part = Histogram::new();
                part.observe(&values[at..cut]);
                merged.merge(&part);
                streamed.observe(&values[at..cut]);
                at = cut;
            }
            prop_assert_eq!(&merged, &whole);
            prop_assert_eq!(&streamed, &whole);
            for k in [1, 2, 4, 8] {
                prop_assert_eq!(&chunked(&values, k), &whole);
            }
        }

        /// The vectorized binning against the definition, on any window a histogram can be in:
        /// the canonical one of the block's range widened by values seen before (`context`).
        #[test]
        fn fast_binning_matches_the_definition(
            block in prop::collection::vec(extreme_value(), 1..600),
            context in prop::collection::vec(extreme_value(), 0..3),
        ) {
            let lo = block.iter().chain(&context).fold(f32::INFINITY, |m, &x| m.min(x));
            let hi = block.iter().chain(&context).fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let (exponent, start) = fit(MIN_EXPONENT, canonical_zero(lo), canonical_zero(hi));
            let expected: Vec<i64> =
                block.iter().map(|&x| reference_index(x, exponent, start)).collect();
            prop_assert!(expected.iter().all(|&i| (0..BINS as i64).contains(&i)));
            prop_assert_eq!(fast_indices(&block, exponent, start), expected);
        }

        /// Whole histograms (both counter layouts, NaN/∞ blocks included) against the
        /// definition, on values from every corner of `f32`.
        #[test]
        fn extreme_values_are_binned_by_the_definition(
            values in prop::collection::vec(
                prop_oneof![
                    20 => extreme_value(),
                    1 => Just(f32::NAN),
                    1 => Just(f32::INFINITY),
                    1 => Just(f32::NEG_INFINITY),
                ],
                0..3000,
            ),
            repeat in 1usize..4,
        ) {
            // Repeating reaches the lane path (long chunks) as well as the direct one.
            let values: Vec<f32> = values.repeat(if repeat == 3 { 4 } else { repeat });
            let mut h = Histogram::new();
            h.observe(&values);
            prop_assert_eq!(h.counts(), &reference_counts(&values, &h)[..]);
            let mut with_min_max = Histogram::new();
            with_min_max.observe_with_min_max(&values, &mut MinMax::new());
            prop_assert_eq!(&with_min_max, &h);
        }
    }
}
