//! Streaming minimum and maximum of a tensor's finite values, with NaN and infinities counted on
//! the side. Also the block scan that [`super::Histogram`] shares, so that collecting both costs
//! one pass over the data.

/// Elements scanned at a time: small enough to stay in L1 between the scan and the binning that
/// follows it, large enough that the per-block bookkeeping is noise.
pub(crate) const BLOCK: usize = 4096;

/// Exact running minimum/maximum of the finite values seen, plus counts of everything else.
///
/// NaN and ±∞ never reach `min`/`max`: they are only counted. `-0.0` is stored as `0.0`, so the
/// result is the same whichever of the two zeros arrives first. All fields are integers (the
/// bounds as `f32` bits), which makes `MinMax` `Eq`/`Hash` and its value a function of the
/// multiset of values observed: any split into chunks, merged in any order, gives the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MinMax {
    min: u32,
    max: u32,
    finite: u64,
    nan: u64,
    positive_infinity: u64,
    negative_infinity: u64,
}

impl MinMax {
    /// Every field, for the byte codec: min and max bits, then the finite, NaN, +∞ and −∞ counts.
    pub(super) fn raw_parts(&self) -> (u32, u32, u64, u64, u64, u64) {
        (
            self.min,
            self.max,
            self.finite,
            self.nan,
            self.positive_infinity,
            self.negative_infinity,
        )
    }

    /// Rebuilds a value from [`MinMax::raw_parts`].
    pub(super) fn from_raw_parts(
        min: u32,
        max: u32,
        finite: u64,
        nan: u64,
        positive_infinity: u64,
        negative_infinity: u64,
    ) -> MinMax {
        MinMax {
            min,
            max,
            finite,
            nan,
            positive_infinity,
            negative_infinity,
        }
    }
}

impl Default for MinMax {
    fn default() -> Self {
        Self::new()
    }
}

/// What one block scan found: bounds of the non-NaN values (infinities included) and whether
/// every value was finite.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockScan {
    pub(crate) min: f32,
    pub(crate) max: f32,
    pub(crate) all_finite: bool,
}

/// Branch-free scan of one block, written so that it vectorizes: 8 independent accumulators,
/// `if x < m` selects (NaN compares false and is skipped), and `x * 0.0` summed per lane, which
/// stays `±0` unless some value was NaN or infinite.
#[inline]
pub(crate) fn scan_block(block: &[f32]) -> BlockScan {
    let mut lo = [f32::INFINITY; 8];
    let mut hi = [f32::NEG_INFINITY; 8];
    let mut poison = [0.0f32; 8];
    let mut lanes = block.chunks_exact(8);
    for chunk in &mut lanes {
        for j in 0..8 {
            let x = chunk[j];
            lo[j] = if x < lo[j] { x } else { lo[j] };
            hi[j] = if x > hi[j] { x } else { hi[j] };
            poison[j] += x * 0.0;
        }
    }
    for (j, &x) in lanes.remainder().iter().enumerate() {
        lo[j] = if x < lo[j] { x } else { lo[j] };
        hi[j] = if x > hi[j] { x } else { hi[j] };
        poison[j] += x * 0.0;
    }
    let mut scan = BlockScan {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
        all_finite: true,
    };
    for j in 0..8 {
        scan.min = if lo[j] < scan.min { lo[j] } else { scan.min };
        scan.max = if hi[j] > scan.max { hi[j] } else { scan.max };
        scan.all_finite &= poison[j] == 0.0;
    }
    scan
}

/// `-0.0` → `0.0`, so stored bounds do not depend on which zero came first.
#[inline]
fn canonical_zero(x: f32) -> f32 {
    if x == 0.0 { 0.0 } else { x }
}

impl MinMax {
    /// Nothing observed yet.
    pub const fn new() -> Self {
        MinMax {
            min: f32::INFINITY.to_bits(),
            max: f32::NEG_INFINITY.to_bits(),
            finite: 0,
            nan: 0,
            positive_infinity: 0,
            negative_infinity: 0,
        }
    }

    /// Folds one chunk of a tensor in. Single pass, no allocation.
    pub fn observe(&mut self, values: &[f32]) {
        for block in values.chunks(BLOCK) {
            let scan = scan_block(block);
            self.absorb_block(block, scan);
        }
    }

    /// Folds a block whose [`scan_block`] result is `scan`. Blocks containing NaN or ±∞ (rare)
    /// take a scalar path that classifies each value.
    #[inline]
    pub(crate) fn absorb_block(&mut self, block: &[f32], scan: BlockScan) {
        if scan.all_finite {
            if !block.is_empty() {
                self.include(scan.min, scan.max, block.len() as u64);
            }
            return;
        }
        self.absorb_with_non_finite(block);
    }

    /// Scalar path for a block with NaN/∞: counts them and returns the bounds of the finite
    /// values (`+∞, -∞` when there are none).
    pub(crate) fn absorb_with_non_finite(&mut self, block: &[f32]) -> (f32, f32) {
        let mut lo = f32::INFINITY;
        let mut hi = f32::NEG_INFINITY;
        let mut finite = 0u64;
        for &x in block {
            if x.is_finite() {
                lo = lo.min(x);
                hi = hi.max(x);
                finite += 1;
            } else if x.is_nan() {
                self.nan += 1;
            } else if x > 0.0 {
                self.positive_infinity += 1;
            } else {
                self.negative_infinity += 1;
            }
        }
        if finite > 0 {
            self.include(lo, hi, finite);
        }
        (lo, hi)
    }

    #[inline]
    fn include(&mut self, lo: f32, hi: f32, count: u64) {
        let lo = canonical_zero(lo);
        let hi = canonical_zero(hi);
        if lo < f32::from_bits(self.min) {
            self.min = lo.to_bits();
        }
        if hi > f32::from_bits(self.max) {
            self.max = hi.to_bits();
        }
        self.finite += count;
    }

    /// Adds everything `other` saw. Associative and commutative.
    pub fn merge(&mut self, other: &MinMax) {
        if other.finite > 0 {
            self.include(
                f32::from_bits(other.min),
                f32::from_bits(other.max),
                other.finite,
            );
        }
        self.nan += other.nan;
        self.positive_infinity += other.positive_infinity;
        self.negative_infinity += other.negative_infinity;
    }

    /// Smallest finite value seen, `None` if no finite value was seen.
    pub fn min(&self) -> Option<f32> {
        (self.finite > 0).then(|| f32::from_bits(self.min))
    }

    /// Largest finite value seen, `None` if no finite value was seen.
    pub fn max(&self) -> Option<f32> {
        (self.finite > 0).then(|| f32::from_bits(self.max))
    }

    /// `(min, max)` of the finite values, `None` if there were none.
    pub fn range(&self) -> Option<(f32, f32)> {
        self.min().zip(self.max())
    }

    /// Number of finite values seen.
    pub fn finite_count(&self) -> u64 {
        self.finite
    }

    /// Number of NaN values seen.
    pub fn nan_count(&self) -> u64 {
        self.nan
    }

    /// Number of `+∞` values seen.
    pub fn positive_infinity_count(&self) -> u64 {
        self.positive_infinity
    }

    /// Number of `-∞` values seen.
    pub fn negative_infinity_count(&self) -> u64 {
        self.negative_infinity
    }

    /// NaN and infinities together: what calibration reports as non-finite.
    pub fn non_finite_count(&self) -> u64 {
        self.nan + self.positive_infinity + self.negative_infinity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_has_no_range() {
        let mut m = MinMax::new();
        m.observe(&[]);
        assert_eq!(m.range(), None);
        m.observe(&[f32::NAN, f32::INFINITY]);
        assert_eq!(m.range(), None);
        assert_eq!((m.nan_count(), m.positive_infinity_count()), (1, 1));
    }

    #[test]
    fn non_finite_values_are_counted_not_used() {
        let mut values = vec![0.5f32; 10_000];
        values[17] = f32::NAN;
        values[4099] = f32::NEG_INFINITY;
        values[9000] = f32::INFINITY;
        values[9001] = -3.0;
        values[5] = 7.0;
        let mut m = MinMax::new();
        m.observe(&values);
        assert_eq!(m.range(), Some((-3.0, 7.0)));
        assert_eq!(m.nan_count(), 1);
        assert_eq!(m.negative_infinity_count(), 1);
        assert_eq!(m.positive_infinity_count(), 1);
        assert_eq!(m.finite_count(), 9_997);
        assert_eq!(m.non_finite_count(), 3);
    }

    #[test]
    fn negative_zero_is_stored_as_zero() {
        let mut a = MinMax::new();
        a.observe(&[-0.0, 0.0]);
        let mut b = MinMax::new();
        b.observe(&[0.0, -0.0]);
        assert_eq!(a, b);
        assert_eq!(a.min().unwrap().to_bits(), 0.0f32.to_bits());
    }

    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            20 => -1e6f32..1e6f32,
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(-0.0f32),
        ]
    }

    proptest! {
        #[test]
        fn covers_every_finite_input(values in prop::collection::vec(value(), 0..3000)) {
            let mut m = MinMax::new();
            m.observe(&values);
            let finite: Vec<f32> = values.iter().copied().filter(|x| x.is_finite()).collect();
            prop_assert_eq!(m.finite_count(), finite.len() as u64);
            prop_assert_eq!(m.nan_count(), values.iter().filter(|x| x.is_nan()).count() as u64);
            match m.range() {
                None => prop_assert!(finite.is_empty()),
                Some((lo, hi)) => {
                    prop_assert!(finite.iter().all(|&x| lo <= x && x <= hi));
                    prop_assert!(finite.contains(&lo) && finite.contains(&hi));
                }
            }
        }

        #[test]
        fn any_split_merges_to_the_same_bits(
            values in prop::collection::vec(value(), 0..3000),
            cuts in prop::collection::vec(0usize..3000, 0..6),
        ) {
            let mut whole = MinMax::new();
            whole.observe(&values);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(values.len())).collect();
            cuts.sort_unstable();
            let mut merged = MinMax::new();
            let mut at = 0;
            for cut in cuts.into_iter().chain([values.len()]) {
                let mut part = MinMax::new();
                part.observe(&values[at..cut]);
                merged.merge(&part);
                at = cut;
            }
            prop_assert_eq!(merged, whole);
        }
    }
}
