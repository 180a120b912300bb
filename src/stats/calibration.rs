//! Calibration strategies: from a tensor's statistics to the float range its encoding must cover.
//!
//! Names follow qairt-quantizer's `--act_quantizer_calibration`/`--param_quantizer_calibration`
//! (`min-max`, `sqnr`, `percentile`, `mse`, `entropy`) and the legacy `--act_quantizer`/
//! `--param_quantizer` values (`tf`, `enhanced`, `adjusted`, `symmetric`). The formulas are in the
//! book's "Calibration" page. Every strategy returns a range inside (or, for `adjusted`, around)
//! the observed `[min, max]`; zero alignment and the minimum range are left to
//! [`crate::encoding::Encoding::from_range`].

use std::fmt;
use std::str::FromStr;

use super::{BINS, Histogram, StatisticsSettings, TensorStatistics};
use crate::encoding::{Bitwidth, MIN_RANGE, Schema};

/// Weight of clipping noise against rounding noise in the `sqnr` and `mse` cost. 1 is what the
/// SQNR of the calibration data itself weighs them with; AIMET's tf_enhanced uses 3, which was
/// measured to give lower SQNR than AIMET's own encodings on 44 of 484 fixture activations (the book's
/// "Calibration" page has the figures).
pub const GAMMA: f64 = 1.0;

/// qairt-quantizer's default `--percentile_calibration_value`.
pub const DEFAULT_PERCENTILE: f64 = 99.99;

/// Most thresholds `entropy` evaluates; each costs one KL divergence over up to [`super::BINS`] bins.
const ENTROPY_THRESHOLDS: usize = 128;

/// How a tensor's range is chosen from its statistics.
#[derive(Debug, Clone, Copy)]
pub enum Calibration {
    /// `min-max` / legacy `tf`: the observed range.
    MinMax,
    /// Legacy `symmetric`: `[-absmax, absmax]` of the observed range.
    Symmetric,
    /// `sqnr` / legacy `enhanced`: the range whose fake-quantization of the calibration values has
    /// the highest SQNR, i.e. the least `GAMMA`·clipping + rounding noise, searched over AIMET
    /// tf_enhanced's candidate grids and more.
    Sqnr,
    /// `percentile`: drop `(100 − p)` % of the values from each tail; `p` in `[90, 100]`.
    Percentile(f64),
    /// `mse`: minimize the expected squared error, clipping and rounding weighted equally. With
    /// signal power fixed that is the same optimum as `sqnr`; qairt-quantizer names both, so both
    /// names are kept, and they give equal encodings.
    Mse,
    /// `entropy`: the clipping threshold whose quantized distribution is closest in KL divergence.
    Entropy,
    /// Legacy `adjusted`: the observed range, widened (never clipped) so the zero-aligned grid
    /// still covers both ends.
    Adjusted,
}

impl Calibration {
    /// The qairt-quantizer names accepted by `--*_quantizer_calibration`.
    pub const NAMES: [&'static str; 5] = ["min-max", "sqnr", "percentile", "mse", "entropy"];
    /// The legacy `--act_quantizer`/`--param_quantizer` names.
    pub const LEGACY_NAMES: [&'static str; 4] = ["tf", "enhanced", "adjusted", "symmetric"];

    /// `percentile` with a checked value.
    pub fn percentile(value: f64) -> Result<Calibration, CalibrationError> {
        if (90.0..=100.0).contains(&value) {
            Ok(Calibration::Percentile(value))
        } else {
            Err(CalibrationError::PercentileOutOfRange(value))
        }
    }

    /// The name this strategy is written with (`min-max`, `sqnr`, ..., `adjusted`, `symmetric`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Calibration::MinMax => "min-max",
            Calibration::Symmetric => "symmetric",
            Calibration::Sqnr => "sqnr",
            Calibration::Percentile(_) => "percentile",
            Calibration::Mse => "mse",
            Calibration::Entropy => "entropy",
            Calibration::Adjusted => "adjusted",
        }
    }

    fn key(&self) -> (u8, u64) {
        match self {
            Calibration::MinMax => (0, 0),
            Calibration::Symmetric => (1, 0),
            Calibration::Sqnr => (2, 0),
            Calibration::Percentile(p) => (3, p.to_bits()),
            Calibration::Mse => (4, 0),
            Calibration::Entropy => (5, 0),
            Calibration::Adjusted => (6, 0),
        }
    }
}

/// Compares the percentile value by bits, so `Eq` and `Hash` are exact and consistent.
impl PartialEq for Calibration {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Calibration {}

impl std::hash::Hash for Calibration {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl fmt::Display for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Calibration {
    type Err = CalibrationError;

    /// Accepts the qairt-quantizer names and the legacy ones; `percentile` gets
    /// [`DEFAULT_PERCENTILE`] (the value comes from its own option).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "min-max" | "tf" => Calibration::MinMax,
            "sqnr" | "enhanced" => Calibration::Sqnr,
            "percentile" => Calibration::Percentile(DEFAULT_PERCENTILE),
            "mse" => Calibration::Mse,
            "entropy" => Calibration::Entropy,
            "adjusted" => Calibration::Adjusted,
            "symmetric" => Calibration::Symmetric,
            _ => return Err(CalibrationError::Unknown(s.to_string())),
        })
    }
}

/// Why a calibration setting was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalibrationError {
    /// Not one of the known names.
    #[error(
        "unknown calibration `{0}` (expected min-max, sqnr, percentile, mse or entropy; legacy: tf, enhanced, adjusted, symmetric)"
    )]
    Unknown(String),
    /// Percentile outside `[90, 100]`.
    #[error("percentile {0} is outside [90, 100]")]
    PercentileOutOfRange(f64),
}

/// The statistics `calibration` reads: a histogram for `sqnr`, `percentile`, `mse`, `entropy`.
pub fn required_statistics(calibration: Calibration) -> StatisticsSettings {
    match calibration {
        Calibration::MinMax | Calibration::Symmetric | Calibration::Adjusted => {
            StatisticsSettings::MIN_MAX
        }
        Calibration::Sqnr
        | Calibration::Percentile(_)
        | Calibration::Mse
        | Calibration::Entropy => StatisticsSettings::WITH_HISTOGRAM,
    }
}

/// The float range to encode, per `calibration`, for an encoding of `bitwidth` and `schema`.
///
/// Pass the result to [`crate::encoding::Encoding::from_range`]. With no finite value observed
/// the range is `(0, 0)` (which `from_range` widens to the minimum range). A strategy that needs a
/// histogram falls back to the observed range when `stats` has none; collect what
/// [`required_statistics`] asks for to avoid that.
pub fn select_range(
    stats: &TensorStatistics,
    calibration: Calibration,
    bitwidth: Bitwidth,
    schema: Schema,
) -> (f64, f64) {
    let Some((min, max)) = stats.min_max.range() else {
        return (0.0, 0.0);
    };
    let (min, max) = (f64::from(min), f64::from(max));
    let histogram = stats.histogram.as_ref().filter(|h| !h.is_empty());
    match (calibration, histogram) {
        (Calibration::MinMax, _) => (min, max),
        (Calibration::Symmetric, _) => {
            let absmax = min.abs().max(max.abs());
            (-absmax, absmax)
        }
        (Calibration::Adjusted, _) => adjusted(min, max, bitwidth, schema),
        (_, None) => (min, max),
        (Calibration::Percentile(p), Some(h)) => percentile(h, p, min, max),
        (Calibration::Sqnr | Calibration::Mse, Some(h)) => {
            NoiseSearch::new(h, min, max, bitwidth, schema).best(GAMMA)
        }
        (Calibration::Entropy, Some(h)) => entropy(h, min, max, bitwidth, schema),
    }
}

/// Two-sided percentile: each tail keeps `(100 − p)` % of the values outside the range, located
/// by linear interpolation inside the bin where the tail ends. `p = 100` gives `[min, max]`.
fn percentile(h: &Histogram, p: f64, min: f64, max: f64) -> (f64, f64) {
    let p = p.clamp(0.0, 100.0);
    let tail = h.total() as f64 * (100.0 - p) / 100.0;
    let counts = h.counts();
    let w = h.bin_width();
    let mut lower = min;
    let mut seen = 0.0;
    for (k, &count) in counts.iter().enumerate() {
        let count = count as f64;
        if count > 0.0 && seen + count > tail {
            lower = h.bin_edges(k).0 + w * (tail - seen) / count;
            break;
        }
        seen += count;
    }
    let mut upper = max;
    seen = 0.0;
    for (k, &count) in counts.iter().enumerate().rev() {
        let count = count as f64;
        if count > 0.0 && seen + count > tail {
            upper = h.bin_edges(k).1 - w * (tail - seen) / count;
            break;
        }
        seen += count;
    }
    let lower = lower.clamp(min, max);
    let upper = upper.clamp(lower, max);
    (lower, upper)
}

/// One occupied histogram bin as the noise model reads it: the bin's interval clamped to the
/// observed range (so the bins holding `min` and `max` shrink towards them) and its share of
/// the values.
#[derive(Debug, Clone, Copy)]
struct Bin {
    left: f64,
    right: f64,
    share: f64,
}

/// A candidate asymmetric grid as `from_range` builds it: `scale` and the integer `offset`.
#[derive(Debug, Clone, Copy)]
struct Grid {
    scale: f64,
    offset: f64,
}

/// How many screened candidates get the exact cost (besides the min-max range and AIMET's
/// family, which always do).
const SCREENED: usize = 24;

/// How many times its neighbour's count the last bin must hold to be read as a pile at the
/// maximum rather than values spread over the bin.
const PILE: u64 = 64;

/// Grid steps past an observed end that a search over exact values may reach.
const EXACT_REACH: f64 = 2.0;

/// Halvings of the refinement step, from one grid step down to `2^−REFINE_LEVELS` of a step.
const REFINE_LEVELS: i32 = 6;

/// Expected noise of candidate grids over a histogram, with two cost models.
///
/// - *Screening* (cheap, only to rank the wide candidate grid): each bin's values at its
///   midpoint; clipping noise `Σ p·(m − clamp(m))²` from prefix sums, rounding noise `δ²/12`
///   per value inside. Two binary searches per candidate.
/// - *Exact* (the cost the choice is made on): each bin's values spread evenly over its
///   interval, and the squared error of fake-quantizing them on the very grid `from_range`
///   will build (zero on the grid, offset rounded), integrated in closed form. Clipping, the
///   part of the interval outside `[lo_g, hi_g]`, is weighted by `γ`; inside, the error is the
///   sawtooth `x − δ·round(x/δ)`, so values that sit on grid points cost nothing and the
///   alignment of the grid with clustered values is seen, which `δ²/12` cannot see. Bins
///   wholly outside the grid come from prefix sums; the ones it covers cost a few flops each.
struct NoiseSearch {
    min: f64,
    max: f64,
    steps: f64,
    half: f64,
    symmetric: bool,
    /// The bins are the tensor's exact values ([`Histogram::values`]): the cost is the true
    /// squared error, so a grid reaching up to [`EXACT_REACH`] steps past an observed end,
    /// which can put more of the values on grid points, is worth trying.
    exact: bool,
    /// Offset subtracted from midpoints so the prefix sums of squares do not cancel.
    center: f64,
    bins: Vec<Bin>,
    /// Centered midpoints of `bins`.
    mids: Vec<f64>,
    /// Prefix sums over `bins` of `p`, `p·m`, `p·m²` (centered `m`) and `p·w²/12` (the spread
    /// of a bin's values about its midpoint), length `bins + 1`.
    mass: Vec<f64>,
    first: Vec<f64>,
    second: Vec<f64>,
    spread: Vec<f64>,
}

impl NoiseSearch {
    fn new(h: &Histogram, min: f64, max: f64, bitwidth: Bitwidth, schema: Schema) -> Self {
        let center = (min + max) / 2.0;
        let total = h.total() as f64;
        let mut search = NoiseSearch {
            min,
            max,
            steps: bitwidth.steps(),
            half: bitwidth.half(),
            symmetric: schema.is_symmetric(),
            exact: false,
            center,
            bins: Vec::new(),
            mids: Vec::new(),
            mass: vec![0.0],
            first: vec![0.0],
            second: vec![0.0],
            spread: vec![0.0],
        };
        // A small tensor's values are known exactly: each distinct value is a point, and the
        // cost of a grid is its exact squared error on the data.
        if let Some(values) = h.values().filter(|v| !v.is_empty()) {
            let mut sums = (0.0, 0.0, 0.0, 0.0);
            for run in values.chunk_by(|a, b| a == b) {
                let x = f64::from(run[0]).clamp(min, max);
                search.push(x, x, run.len() as f64 / total, &mut sums);
            }
            search.exact = true;
            return search;
        }
        // The values exactly at the extremes are points, not spread over their bins: a pile at
        // the maximum (a saturated sigmoid's ones) costs nothing on a grid point there, which a
        // bin read as uniform cannot show.
        let (at_min, at_max) = h.extreme_counts();
        let occupied: Vec<usize> = (0..BINS).filter(|&k| h.counts()[k] != 0).collect();
        let (first_bin, last_bin) = (occupied.first().copied(), occupied.last().copied());
        let mut sums = (0.0, 0.0, 0.0, 0.0);
        for &k in &occupied {
            let (left, right) = h.bin_edges(k);
            let (left, right) = (left.clamp(min, max), right.clamp(min, max));
            let mut count = h.counts()[k];
            let mut points_after = 0;
            if Some(k) == first_bin && at_min > 0 {
                search.push(min, min, at_min as f64 / total, &mut sums);
                count -= at_min.min(count);
            }
            if Some(k) == last_bin && at_max > 0 && max > min {
                points_after = at_max.min(count);
                count -= points_after;
            }
            // A pile in the last bin is a saturation pile too, a few ulps below the maximum
            // (a sigmoid whose kernel saturates at 1 − 2⁻²¹ with stragglers at 1 − 2⁻²²):
            // read as spread over the bin, clipping it would look almost free.
            let previous = occupied.iter().rev().nth(1).map_or(0, |&p| h.counts()[p]);
            if Some(k) == last_bin && k > 0 && max > min && count > PILE * previous.max(1) {
                search.push(right, right, count as f64 / total, &mut sums);
                count = 0;
            }
            if count > 0 {
                search.push(left, right, count as f64 / total, &mut sums);
            }
            if points_after > 0 {
                search.push(max, max, points_after as f64 / total, &mut sums);
            }
        }
        search
    }

    /// Appends a bin of `share` of the values spread over `[left, right]` (a point when equal),
    /// with the running prefix sums `(p, p·m, p·m², p·w²/12)`.
    fn push(&mut self, left: f64, right: f64, share: f64, sums: &mut (f64, f64, f64, f64)) {
        let m = (left + right) / 2.0 - self.center;
        let width = right - left;
        sums.0 += share;
        sums.1 += share * m;
        sums.2 += share * m * m;
        sums.3 += share * width * width / 12.0;
        self.bins.push(Bin { left, right, share });
        self.mids.push(m);
        self.mass.push(sums.0);
        self.first.push(sums.1);
        self.second.push(sums.2);
        self.spread.push(sums.3);
    }

    /// `Σ p·(m − a)²` over bins `i..j`, `a` centered.
    fn moment(&self, i: usize, j: usize, a: f64) -> f64 {
        let mass = self.mass[j] - self.mass[i];
        let first = self.first[j] - self.first[i];
        let second = self.second[j] - self.second[i];
        (second - 2.0 * a * first + a * a * mass).max(0.0)
    }

    /// Screening cost of the grid `[lo, hi]` with step `delta`.
    fn screening_cost(&self, lo: f64, hi: f64, delta: f64, gamma: f64) -> f64 {
        let (lo, hi) = (lo - self.center, hi - self.center);
        let below = self.mids.partition_point(|&m| m < lo);
        let above = self.mids.partition_point(|&m| m <= hi);
        let n = self.mids.len();
        let clipping = self.moment(0, below, lo) + self.moment(above, n, hi);
        let inside = self.mass[above] - self.mass[below];
        gamma * clipping + inside * delta * delta / 12.0
    }

    /// Exact cost of `grid`: `γ`·clipping noise + rounding noise, per value.
    fn exact_cost(&self, grid: Grid, gamma: f64) -> f64 {
        let lo = grid.offset * grid.scale;
        let hi = (grid.offset + self.steps) * grid.scale;
        let n = self.bins.len();
        let below = self.bins.partition_point(|b| b.right <= lo);
        let above = below + self.bins[below..].partition_point(|b| b.left < hi);
        let outside = self.moment(0, below, lo - self.center)
            + self.moment(above, n, hi - self.center)
            + (self.spread[below] - self.spread[0])
            + (self.spread[n] - self.spread[above]);
        let mut cost = gamma * outside;
        for bin in &self.bins[below..above] {
            cost += bin.share * bin_noise(bin, lo, hi, grid.scale, gamma);
        }
        cost
    }

    /// The asymmetric grid `Encoding::from_range` builds from `[lo, hi]`, or `None` below the
    /// minimum range (such candidates are skipped).
    fn grid(&self, lo: f64, hi: f64) -> Option<Grid> {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        if hi - lo < MIN_RANGE {
            return None;
        }
        let scale = (hi - lo) / self.steps;
        Some(Grid {
            scale,
            offset: (lo / scale).round(),
        })
    }

    /// The candidate range of lowest exact cost (the first one on ties, so the result is
    /// deterministic).
    fn best(&self, gamma: f64) -> (f64, f64) {
        if self.symmetric {
            return self.best_symmetric(gamma);
        }
        let mn = self.min.min(0.0);
        let mx = self.max.max(0.0);
        let mut best = Best::new(mn, mx);
        // How far past each observed end (never past zero) a grid may reach.
        let reach = match self.exact {
            true => EXACT_REACH * (mx - mn) / self.steps,
            false => 0.0,
        };
        let (floor, ceiling) = (
            if mn < 0.0 { mn - reach } else { mn },
            if mx > 0.0 { mx + reach } else { mx },
        );
        let consider = |best: &mut Best, lo: f64, hi: f64| {
            let (lo, hi) = (lo.clamp(floor, 0.0), hi.clamp(0.0, ceiling));
            if let Some(grid) = self.grid(lo, hi) {
                best.offer(self.exact_cost(grid, gamma), lo, hi, grid.scale);
            }
        };
        consider(&mut best, mn, mx);
        for (lo, hi) in self.screened(gamma, mn, mx) {
            consider(&mut best, lo, hi);
        }
        // AIMET tf_enhanced's own candidates: 17 steps × 21 offsets, clamped to the observed
        // range (which is what `from_range` of the clamped range gives).
        let base = (mx - mn) / self.steps;
        for k in 1..=17 {
            let delta = base * f64::from(k) / 16.0;
            for i in 0..=20 {
                let offset = -self.steps + (self.steps * f64::from(i) / 20.0).round();
                consider(&mut best, offset * delta, (offset + self.steps) * delta);
            }
        }
        // Pattern search around the winner: move either end, or both, by a fraction of a step.
        let mut evaluations = 0;
        for level in 0..=REFINE_LEVELS {
            let step = best.scale * 2f64.powi(-level);
            loop {
                let (lo, hi, before) = (best.lo, best.hi, best.cost);
                for (dl, dh) in [
                    (-1.0, 0.0),
                    (1.0, 0.0),
                    (0.0, -1.0),
                    (0.0, 1.0),
                    (-1.0, -1.0),
                    (1.0, 1.0),
                ] {
                    consider(&mut best, lo + dl * step, hi + dh * step);
                    evaluations += 1;
                }
                if best.cost >= before || evaluations > 400 {
                    break;
                }
            }
        }
        match self.exact {
            true => (best.lo, best.hi),
            false => (best.lo.max(self.min), best.hi.min(self.max)),
        }
    }

    /// The `SCREENED` ranges of lowest screening cost among both sides of `[mn, mx]` shrunk
    /// by every pair of [`shrink_fractions`] (one side only when the other is exactly zero).
    fn screened(&self, gamma: f64, mn: f64, mx: f64) -> Vec<(f64, f64)> {
        let fractions = shrink_fractions();
        let lows: &[f64] = if mn == 0.0 { &[1.0] } else { &fractions };
        let highs: &[f64] = if mx == 0.0 { &[1.0] } else { &fractions };
        let mut ranked = Vec::with_capacity(lows.len() * highs.len());
        for &a in lows {
            for &b in highs {
                let (lo, hi) = (mn * a, mx * b);
                let Some(grid) = self.grid(lo, hi) else {
                    continue;
                };
                let cost = self.screening_cost(
                    grid.offset * grid.scale,
                    (grid.offset + self.steps) * grid.scale,
                    grid.scale,
                    gamma,
                );
                ranked.push((cost, ranked.len(), lo, hi));
            }
        }
        let keep = SCREENED.min(ranked.len());
        if keep > 0 && keep < ranked.len() {
            ranked.select_nth_unstable_by(keep - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        }
        ranked.truncate(keep);
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        ranked.into_iter().map(|(_, _, lo, hi)| (lo, hi)).collect()
    }

    /// Symmetric grids `δ = a/(2^(bw−1) − 1)` over `[−2^(bw−1)·δ, a]`: `a` from
    /// [`shrink_fractions`] and AIMET's 1 % steps of the absolute maximum, then refined.
    fn best_symmetric(&self, gamma: f64) -> (f64, f64) {
        let absmax = self.min.abs().max(self.max.abs());
        let mut best = Best::new(-absmax, absmax);
        let ceiling = match self.exact {
            true => absmax * (1.0 + EXACT_REACH / (self.half - 1.0)),
            false => absmax,
        };
        let consider = |best: &mut Best, a: f64| {
            let a = a.min(ceiling);
            if 2.0 * a < MIN_RANGE {
                return;
            }
            let scale = a / (self.half - 1.0);
            let grid = Grid {
                scale,
                offset: -self.half,
            };
            best.offer(self.exact_cost(grid, gamma), -a, a, scale);
        };
        for f in shrink_fractions() {
            consider(&mut best, absmax * f);
        }
        for k in 1..=100 {
            consider(&mut best, absmax * f64::from(k) / 100.0);
        }
        for level in 0..=REFINE_LEVELS {
            let step = best.scale * 2f64.powi(-level);
            for _ in 0..32 {
                let (a, before) = (best.hi, best.cost);
                consider(&mut best, a - step);
                consider(&mut best, a + step);
                if best.cost >= before {
                    break;
                }
            }
        }
        (best.lo, best.hi)
    }
}

/// The lowest-cost candidate so far; a later candidate must be strictly better.
struct Best {
    cost: f64,
    lo: f64,
    hi: f64,
    scale: f64,
}

impl Best {
    fn new(lo: f64, hi: f64) -> Self {
        Best {
            cost: f64::INFINITY,
            lo,
            hi,
            scale: (hi - lo).max(MIN_RANGE),
        }
    }

    fn offer(&mut self, cost: f64, lo: f64, hi: f64, scale: f64) {
        if cost < self.cost {
            *self = Best {
                cost,
                lo,
                hi,
                scale,
            };
        }
    }
}

/// Mean noise of one bin's values on the grid `[lo, hi]` with step `scale` (grid points at
/// integer multiples of `scale`): `γ·(x − lo)²` below, `γ·(x − hi)²` above, the sawtooth
/// inside, averaged over the bin's interval (at its single point when it has no width).
fn bin_noise(bin: &Bin, lo: f64, hi: f64, scale: f64, gamma: f64) -> f64 {
    let width = bin.right - bin.left;
    if width <= scale * 1e-9 {
        let x = (bin.left + bin.right) / 2.0;
        return if x < lo {
            gamma * (x - lo) * (x - lo)
        } else if x > hi {
            gamma * (x - hi) * (x - hi)
        } else {
            let t = x / scale;
            let u = t - t.round();
            u * u * scale * scale
        };
    }
    let mut total = 0.0;
    if bin.left < lo {
        let end = bin.right.min(lo);
        total += gamma * ((lo - bin.left).powi(3) - (lo - end).powi(3)) / 3.0;
    }
    if bin.right > hi {
        let start = bin.left.max(hi);
        total += gamma * ((bin.right - hi).powi(3) - (start - hi).powi(3)) / 3.0;
    }
    let (a, b) = (bin.left.max(lo), bin.right.min(hi));
    if b > a {
        total += scale.powi(3) * sawtooth(a / scale, b / scale);
    }
    total / width
}

/// `∫ (t − round(t))² dt` from `ta` to `tb`: whole periods contribute 1/12 each, counted in
/// integers so that long intervals (16-bit grids) keep their precision.
fn sawtooth(ta: f64, tb: f64) -> f64 {
    let (na, nb) = (ta.round(), tb.round());
    let (ua, ub) = (ta - na, tb - nb);
    (nb - na) / 12.0 + (ub.powi(3) - ua.powi(3)) / 3.0
}

/// Fractions of the observed extent tried by the noise searches: 1 % steps from 1 down to 0.2,
/// then ~7 % (geometric) steps down to 2^−12 for tails that dwarf the bulk. Ends with 1.0 tried
/// first so that ties keep the unclipped range.
fn shrink_fractions() -> Vec<f64> {
    let mut fractions: Vec<f64> = (20..=100).rev().map(|k| f64::from(k) / 100.0).collect();
    let mut f: f64 = 0.2;
    let ratio = (2f64).powf(-12.0 / 40.0);
    for _ in 0..40 {
        f *= ratio;
        fractions.push(f);
    }
    fractions
}

/// TensorRT-style entropy calibration over the histogram of `|x|`.
///
/// For each threshold `t` (a bin edge), the reference distribution `P` is the `|x|` histogram up to
/// `t` with everything beyond added to its last bin; `Q` merges those bins into as many levels as
/// the grid has on that side and spreads each level evenly over its occupied bins. The threshold
/// with the smallest `KL(P‖Q)` wins. Levels: `2^(bw−1)` when the grid must hold both signs,
/// `2^bw` for one-sided data on an asymmetric grid. When the histogram is not finer than the grid
/// (for example 16 bit), nothing is clipped.
fn entropy(h: &Histogram, min: f64, max: f64, bitwidth: Bitwidth, schema: Schema) -> (f64, f64) {
    let one_sided = min >= 0.0 || max <= 0.0;
    let levels = if one_sided && !schema.is_symmetric() {
        bitwidth.steps() + 1.0
    } else {
        bitwidth.half()
    };
    // Fold the signed histogram onto |x|: absolute bin a ≥ 0 stays, a < 0 becomes −a − 1.
    // A window far from zero (absolute bin indices up to 2^40) is first coarsened by `shift`
    // halvings, exactly as the histogram itself grows, so that `folded` stays small.
    let farthest = h
        .start()
        .unsigned_abs()
        .max((h.start() + BINS as i64).unsigned_abs());
    let shift = (farthest / (2 * BINS as u64))
        .checked_ilog2()
        .map_or(0, |d| d + 1);
    let mut folded: Vec<f64> = Vec::new();
    for (k, &count) in h.counts().iter().enumerate() {
        if count == 0 {
            continue;
        }
        let a = (h.start() + k as i64) >> shift;
        let index = if a >= 0 { a } else { -a - 1 } as usize;
        if folded.len() <= index {
            folded.resize(index + 1, 0.0);
        }
        folded[index] += count as f64;
    }
    let bins = folded.len();
    if (bins as f64) <= levels {
        return (min, max);
    }
    let levels = levels as usize;
    let mut beyond = vec![0.0; bins + 1];
    for i in (0..bins).rev() {
        beyond[i] = beyond[i + 1] + folded[i];
    }
    let span = bins - levels;
    let candidates = span.min(ENTROPY_THRESHOLDS);
    let mut best = (f64::INFINITY, bins);
    let mut reference = Vec::with_capacity(bins);
    let mut quantized = Vec::with_capacity(bins);
    for c in 0..=candidates {
        let i = levels + span * c / candidates.max(1);
        let divergence = kl_divergence(&folded, &beyond, i, levels, &mut reference, &mut quantized);
        if divergence < best.0 {
            best = (divergence, i);
        }
    }
    let threshold = best.1 as f64 * h.bin_width() * 2f64.powi(shift as i32);
    let lower = min.max(-threshold);
    let upper = max.min(threshold).max(lower);
    (lower, upper)
}

/// `KL(P‖Q)` for threshold bin `i` (see [`entropy`]); `reference`/`quantized` are reused buffers.
fn kl_divergence(
    folded: &[f64],
    beyond: &[f64],
    i: usize,
    levels: usize,
    reference: &mut Vec<f64>,
    quantized: &mut Vec<f64>,
) -> f64 {
    reference.clear();
    reference.extend_from_slice(&folded[..i]);
    reference[i - 1] += beyond[i];
    quantized.clear();
    quantized.resize(i, 0.0);
    let mut begin = 0;
    for level in 0..levels {
        let end = ((level + 1) * i) / levels;
        let group = &folded[begin..end];
        let sum: f64 = group.iter().sum();
        let occupied = group.iter().filter(|&&c| c > 0.0).count();
        if occupied > 0 {
            let share = sum / occupied as f64;
            for (q, &c) in quantized[begin..end].iter_mut().zip(group) {
                if c > 0.0 {
                    *q = share;
                }
            }
        }
        begin = end;
    }
    let p_total: f64 = reference.iter().sum();
    let q_total: f64 = quantized.iter().sum();
    if p_total == 0.0 || q_total == 0.0 {
        return f64::INFINITY;
    }
    // A bin with reference mass but no quantized mass (only the outlier bin can be one) gets a
    // tiny share instead of an infinite divergence, as TensorRT's smoothing does.
    let floor = 1e-4 / i as f64;
    let mut divergence = 0.0;
    for (&p, &q) in reference.iter().zip(quantized.iter()) {
        if p > 0.0 {
            let p = p / p_total;
            let q = (q / q_total).max(floor);
            divergence += p * (p / q).ln();
        }
    }
    divergence
}

/// `adjusted`: the smallest grid of `2^bw − 1` steps that has an integer exactly at zero and
/// covers `[min, max]` entirely. `min-max` shifts the grid to put zero on it, which can leave one
/// end up to half a step outside; here the step grows instead, so the range is only ever
/// expanded. Symmetric schemas already cover the observed range, and so do one-sided ranges
/// (zero is an end), so both are returned unchanged.
fn adjusted(min: f64, max: f64, bitwidth: Bitwidth, schema: Schema) -> (f64, f64) {
    let mn = min.min(0.0);
    let mx = max.max(0.0);
    if schema.is_symmetric() || bitwidth.bits() > 16 || mn == 0.0 || mx == 0.0 {
        return (min, max);
    }
    if mx - mn < MIN_RANGE {
        return (min, max);
    }
    let steps = bitwidth.steps();
    // With offset o (−steps < o < 0) the grid is [o·s, (o + steps)·s]; it covers [mn, mx] iff
    // s ≥ mn/o and s ≥ mx/(o + steps). The best o is next to where both bounds are equal.
    let ideal = steps * mn / (mx - mn);
    let mut best: Option<(f64, f64)> = None;
    for offset in [ideal.floor(), ideal.ceil()] {
        let offset = offset.clamp(-(steps - 1.0), -1.0);
        let scale = (mn / offset).max(mx / (offset + steps));
        if best.is_none_or(|(s, _)| scale < s) {
            best = Some((scale, offset));
        }
    }
    let (scale, offset) = best.expect("two candidates");
    // A few ulps of slack so that `from_range`'s own arithmetic cannot land inside [mn, mx].
    let scale = scale * (1.0 + 8.0 * f64::EPSILON);
    (offset * scale, (offset + steps) * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::Encoding;
    use crate::stats::{MinMax, StatisticsSettings};
    use proptest::prelude::*;

    fn stats_of(values: &[f32]) -> TensorStatistics {
        let mut stats = TensorStatistics::new(StatisticsSettings::WITH_HISTOGRAM);
        stats.observe(values);
        stats
    }

    /// Deterministic uniform numbers in [0, 1).
    fn uniform(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1u64 << 53) as f64
            })
            .collect()
    }

    /// Symmetric Lomax (Pareto II, shape 2) values: most mass within ±1, a power-law tail whose
    /// largest of 100 000 samples is in the hundreds.
    fn heavy_tailed(n: usize) -> Vec<f32> {
        uniform(n, 42)
            .iter()
            .zip(uniform(n, 43))
            .map(|(&u, s)| {
                let magnitude = (1.0 - u).powf(-1.0 / 2.0) - 1.0;
                (if s < 0.5 { -magnitude } else { magnitude }) as f32
            })
            .collect()
    }

    /// SQNR in dB of fake-quantizing `values` with the encoding made from `range`.
    fn sqnr_db(values: &[f32], range: (f64, f64), bitwidth: Bitwidth, schema: Schema) -> f64 {
        let e = Encoding::from_range(range.0, range.1, bitwidth, schema).unwrap();
        let (mut signal, mut noise) = (0.0, 0.0);
        for &x in values {
            let x = f64::from(x);
            let q = ((x / e.scale).round() - e.offset as f64).clamp(0.0, bitwidth.steps());
            let y = (q + e.offset as f64) * e.scale;
            signal += x * x;
            noise += (x - y) * (x - y);
        }
        10.0 * (signal / noise).log10()
    }

    #[test]
    fn names_and_legacy_names_parse() {
        let parse = |s: &str| s.parse::<Calibration>().unwrap();
        assert_eq!(parse("min-max"), Calibration::MinMax);
        assert_eq!(parse("tf"), Calibration::MinMax);
        assert_eq!(parse("sqnr"), Calibration::Sqnr);
        assert_eq!(parse("enhanced"), Calibration::Sqnr);
        assert_eq!(parse("percentile"), Calibration::Percentile(99.99));
        assert_eq!(parse("mse"), Calibration::Mse);
        assert_eq!(parse("entropy"), Calibration::Entropy);
        assert_eq!(parse("adjusted"), Calibration::Adjusted);
        assert_eq!(parse("symmetric"), Calibration::Symmetric);
        for name in Calibration::NAMES.iter().chain(&Calibration::LEGACY_NAMES) {
            let c = parse(name);
            assert_eq!(parse(c.as_str()), c, "{name}");
        }
        assert_eq!(
            "minmax".parse::<Calibration>(),
            Err(CalibrationError::Unknown("minmax".into()))
        );
        assert!(Calibration::percentile(89.9).is_err());
        assert!(Calibration::percentile(100.1).is_err());
        assert_eq!(
            Calibration::percentile(95.0),
            Ok(Calibration::Percentile(95.0))
        );
    }

    #[test]
    fn only_histogram_strategies_ask_for_one() {
        for c in [
            Calibration::MinMax,
            Calibration::Symmetric,
            Calibration::Adjusted,
        ] {
            assert!(!required_statistics(c).histogram, "{c}");
        }
        for c in [
            Calibration::Sqnr,
            Calibration::Percentile(99.0),
            Calibration::Mse,
            Calibration::Entropy,
        ] {
            assert!(required_statistics(c).histogram, "{c}");
        }
    }

    #[test]
    fn empty_statistics_give_an_empty_range() {
        let stats = TensorStatistics::new(StatisticsSettings::WITH_HISTOGRAM);
        assert_eq!(
            select_range(&stats, Calibration::Sqnr, Bitwidth::B8, Schema::Asymmetric),
            (0.0, 0.0)
        );
    }

    #[test]
    fn percentile_100_is_min_max() {
        let values = heavy_tailed(50_000);
        let stats = stats_of(&values);
        let (lo, hi) = stats.min_max.range().unwrap();
        let range = select_range(
            &stats,
            Calibration::Percentile(100.0),
            Bitwidth::B8,
            Schema::Asymmetric,
        );
        assert_eq!(range, (f64::from(lo), f64::from(hi)));
        // 99 % drops the outliers: the range must be well inside.
        let (l99, h99) = select_range(
            &stats,
            Calibration::Percentile(99.0),
            Bitwidth::B8,
            Schema::Asymmetric,
        );
        assert!(l99 > -10.0 && h99 < 10.0, "{l99} {h99}");
        let below = values.iter().filter(|&&x| f64::from(x) < l99).count() as f64;
        let above = values.iter().filter(|&&x| f64::from(x) > h99).count() as f64;
        let n = values.len() as f64;
        assert!((below / n - 0.01).abs() < 0.002, "{}", below / n);
        assert!((above / n - 0.01).abs() < 0.002, "{}", above / n);
    }

    #[test]
    fn sqnr_clips_a_long_tail() {
        let values = heavy_tailed(100_000);
        let stats = stats_of(&values);
        let (min, max) = stats.min_max.range().unwrap();
        let (min, max) = (f64::from(min), f64::from(max));
        // Rounding noise matters more the fewer the bits, so fewer bits clip more.
        for (bits, kept) in [(8, 0.97), (4, 0.9)] {
            let bitwidth = Bitwidth::new(bits).unwrap();
            let (lo, hi) = select_range(&stats, Calibration::Sqnr, bitwidth, Schema::Asymmetric);
            assert!(
                hi < kept * max && lo > kept * min,
                "{bits} bit: {lo} {hi} of {min} {max}"
            );
            assert!(hi > 3.0 && lo < -3.0, "{bits} bit: {lo} {hi}");
            let gain = sqnr_db(&values, (lo, hi), bitwidth, Schema::Asymmetric)
                - sqnr_db(&values, (min, max), bitwidth, Schema::Asymmetric);
            assert!(gain > 0.2, "{bits} bit: {gain:.2} dB");
        }
    }

    #[test]
    fn sqnr_on_a_small_tensor_is_optimized_on_its_exact_values() {
        // Like a squeeze-and-excite ReLU over 16 samples: 384 values, most of them zero.
        let mut values = vec![0.0f32; 241];
        values.extend(uniform(143, 3).into_iter().map(|x| (x * 32.55) as f32));
        let exact = stats_of(&values);
        assert!(exact.histogram.as_ref().unwrap().values().is_some());
        let mut binned = TensorStatistics {
            min_max: MinMax::new(),
            histogram: Some(Histogram::new()),
        };
        binned.observe(&values);
        assert!(binned.histogram.as_ref().unwrap().values().is_none());
        let (b, s) = (Bitwidth::B8, Schema::Asymmetric);
        let sqnr = |stats: &TensorStatistics| {
            sqnr_db(&values, select_range(stats, Calibration::Sqnr, b, s), b, s)
        };
        let (on_values, on_bins) = (sqnr(&exact), sqnr(&binned));
        let min_max = sqnr_db(
            &values,
            select_range(&exact, Calibration::MinMax, b, s),
            b,
            s,
        );
        assert!(on_values > on_bins + 0.1, "{on_values} vs {on_bins} dB");
        assert!(on_values > min_max, "{on_values} vs {min_max} dB");
    }

    #[test]
    fn sqnr_on_uniform_data_stays_near_min_max() {
        let values: Vec<f32> = uniform(100_000, 9)
            .iter()
            .map(|&u| (u * 6.0 - 2.0) as f32)
            .collect();
        let stats = stats_of(&values);
        let (min, max) = stats.min_max.range().unwrap();
        let (lo, hi) = select_range(&stats, Calibration::Sqnr, Bitwidth::B8, Schema::Asymmetric);
        let extent = f64::from(max - min);
        assert!((lo - f64::from(min)).abs() < 0.02 * extent, "{lo} vs {min}");
        assert!((hi - f64::from(max)).abs() < 0.02 * extent, "{hi} vs {max}");
    }

    #[test]
    fn noise_searches_beat_min_max_on_heavy_tails() {
        let values = heavy_tailed(100_000);
        let stats = stats_of(&values);
        for schema in [Schema::Asymmetric, Schema::Symmetric] {
            let baseline = sqnr_db(
                &values,
                select_range(&stats, Calibration::MinMax, Bitwidth::B8, schema),
                Bitwidth::B8,
                schema,
            );
            for c in [Calibration::Sqnr, Calibration::Mse] {
                let range = select_range(&stats, c, Bitwidth::B8, schema);
                let db = sqnr_db(&values, range, Bitwidth::B8, schema);
                assert!(
                    db >= baseline,
                    "{c} {schema}: {db:.2} dB < min-max {baseline:.2} dB"
                );
            }
            let sqnr = sqnr_db(
                &values,
                select_range(&stats, Calibration::Sqnr, Bitwidth::B8, schema),
                Bitwidth::B8,
                schema,
            );
            assert!(
                sqnr > baseline + 0.2,
                "{schema}: sqnr {sqnr:.2} dB, min-max {baseline:.2} dB"
            );
        }
    }

    #[test]
    fn entropy_keeps_one_sided_data_one_sided() {
        // ReLU-like: half zeros, exponential tail.
        let values: Vec<f32> = uniform(50_000, 3)
            .iter()
            .enumerate()
            .map(|(i, &u)| {
                if i % 2 == 0 {
                    0.0
                } else {
                    (-(1.0 - u).ln()) as f32
                }
            })
            .collect();
        let stats = stats_of(&values);
        let (lo, hi) = select_range(
            &stats,
            Calibration::Entropy,
            Bitwidth::B8,
            Schema::Asymmetric,
        );
        assert_eq!(lo, 0.0);
        let max = f64::from(stats.min_max.max().unwrap());
        assert!(hi > 3.0 && hi <= max, "{hi} of {max}");
    }

    #[test]
    fn adjusted_expands_where_min_max_clips() {
        // The seed's example: min-max shifts [-5.1, 5.1] to [-5.12, 5.08], clipping 5.1.
        let mut stats = TensorStatistics::new(StatisticsSettings::MIN_MAX);
        stats.observe(&[-5.1, 5.1]);
        let tf = select_range(
            &stats,
            Calibration::MinMax,
            Bitwidth::B8,
            Schema::Asymmetric,
        );
        let tf = Encoding::from_range(tf.0, tf.1, Bitwidth::B8, Schema::Asymmetric).unwrap();
        assert!(tf.max < 5.1f32 as f64);
        let (lo, hi) = select_range(
            &stats,
            Calibration::Adjusted,
            Bitwidth::B8,
            Schema::Asymmetric,
        );
        let e = Encoding::from_range(lo, hi, Bitwidth::B8, Schema::Asymmetric).unwrap();
        assert!(e.min <= -5.1f32 as f64 && e.max >= 5.1f32 as f64, "{e:?}");
        assert!(e.scale < tf.scale * 1.01, "{e:?}");
    }

    proptest! {
        #[test]
        fn adjusted_never_clips(min in -1e4f32..0.0, max in 0.0f32..1e4, bits in 2u32..=16) {
            let bitwidth = Bitwidth::new(bits).unwrap();
            let mut stats = TensorStatistics::new(StatisticsSettings::MIN_MAX);
            stats.observe(&[min, max]);
            let (lo, hi) = select_range(&stats, Calibration::Adjusted, bitwidth, Schema::Asymmetric);
            let e = Encoding::from_range(lo, hi, bitwidth, Schema::Asymmetric).unwrap();
            prop_assert!(e.min <= f64::from(min) && e.max >= f64::from(max), "{:?}", e);
            // Never wider than one extra step on each side of min-max's grid.
            let tf = Encoding::from_range(f64::from(min), f64::from(max), bitwidth, Schema::Asymmetric).unwrap();
            prop_assert!(e.scale <= tf.scale * (1.0 + 2.0 / bitwidth.steps()) + 1e-12, "{:?} vs {:?}", e, tf);
        }

        #[test]
        fn every_range_lies_within_the_observed_one(
            values in prop::collection::vec(-100.0f32..100.0, 1..6000),
            bits in prop::sample::select(vec![4u32, 8, 16]),
            symmetric in any::<bool>(),
        ) {
            let stats = stats_of(&values);
            let (min, max) = stats.min_max.range().unwrap();
            let (min, max) = (f64::from(min), f64::from(max));
            let bitwidth = Bitwidth::new(bits).unwrap();
            let schema = if symmetric { Schema::Symmetric } else { Schema::Asymmetric };
            for c in [Calibration::MinMax, Calibration::Sqnr, Calibration::Percentile(99.0), Calibration::Mse, Calibration::Entropy] {
                let (lo, hi) = select_range(&stats, c, bitwidth, schema);
                prop_assert!(lo <= hi, "{} {} {}", c, lo, hi);
                let absmax = min.abs().max(max.abs());
                // With the values kept exactly, a grid may reach EXACT_REACH steps further.
                let reach = match stats.histogram.as_ref().and_then(|h| h.values()) {
                    Some(_) => EXACT_REACH * 2.0 * absmax / (bitwidth.half() - 1.0),
                    None => 0.0,
                };
                prop_assert!(
                    lo >= min.min(-absmax) - reach && hi <= max.max(absmax) + reach,
                    "{} {} {}", c, lo, hi
                );
                prop_assert!(Encoding::from_range(lo, hi, bitwidth, schema).is_ok());
            }
        }
    }
}
