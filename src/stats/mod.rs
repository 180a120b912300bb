//! Statistics of tensors seen during calibration, and the calibration strategies that turn them
//! into a quantization range.
//!
//! This module owns: streaming, mergeable [`MinMax`] and [`Histogram`] over `&[f32]` chunks,
//! [`TensorStatistics`] that bundles what one tensor needs, and [`select_range`], which applies a
//! [`Calibration`] (the qairt-quantizer `--*_quantizer_calibration` vocabulary) to them. The
//! range it returns goes to [`crate::encoding::Encoding::from_range`].
//!
//! **Architecture Invariant:** pure. No IO, no logging, no threads of its own: the engine decides
//! how data is split across threads, and every statistic here merges to the same bits whatever
//! that split was (merge is associative and depends only on the data).

mod calibration;
mod codec;
mod histogram;
mod min_max;

pub use calibration::{Calibration, CalibrationError, GAMMA, required_statistics, select_range};
pub use codec::{CODEC_VERSION, encode_all};
pub use histogram::{BINS, Histogram, MIN_EXPONENT};
pub use min_max::MinMax;

/// Which statistics to collect for a tensor. Min/max is always collected (it is cheap and every
/// strategy clamps to it); the histogram only when a strategy needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StatisticsSettings {
    /// Collect a [`Histogram`] as well as the min/max.
    pub histogram: bool,
}

impl StatisticsSettings {
    /// Min/max only: enough for `min-max`, `symmetric` and `adjusted`.
    pub const MIN_MAX: StatisticsSettings = StatisticsSettings { histogram: false };
    /// Min/max and a histogram: needed by `sqnr`, `percentile`, `mse` and `entropy`.
    pub const WITH_HISTOGRAM: StatisticsSettings = StatisticsSettings { histogram: true };

    /// What both settings need, for a tensor that two strategies will read.
    pub fn union(self, other: StatisticsSettings) -> StatisticsSettings {
        StatisticsSettings {
            histogram: self.histogram || other.histogram,
        }
    }
}

/// Everything calibration keeps about one tensor (or one channel of it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorStatistics {
    /// Exact bounds of the finite values, and counts of NaN/∞.
    pub min_max: MinMax,
    /// Distribution of the finite values, when the settings asked for it.
    pub histogram: Option<Histogram>,
}

impl TensorStatistics {
    /// Empty statistics collecting what `settings` asks for.
    pub fn new(settings: StatisticsSettings) -> Self {
        TensorStatistics {
            min_max: MinMax::new(),
            histogram: settings.histogram.then(Histogram::keeping_values),
        }
    }

    /// What these statistics collect.
    pub fn settings(&self) -> StatisticsSettings {
        StatisticsSettings {
            histogram: self.histogram.is_some(),
        }
    }

    /// Folds one chunk of the tensor in; min/max and histogram come from the same pass.
    pub fn observe(&mut self, values: &[f32]) {
        match &mut self.histogram {
            Some(histogram) => histogram.observe_with_min_max(values, &mut self.min_max),
            None => self.min_max.observe(values),
        }
    }

    /// Adds what `other` saw. If only `self` has a histogram, it is dropped: it would no longer
    /// describe all the data.
    pub fn merge(&mut self, other: &TensorStatistics) {
        self.min_max.merge(&other.min_max);
        match (&mut self.histogram, &other.histogram) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (Some(_), None) => self.histogram = None,
            (None, _) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_feeds_both_statistics() {
        let values: Vec<f32> = (0..50_000)
            .map(|i| {
                if i == 999 {
                    f32::NAN
                } else {
                    (i as f32 * 0.37).sin() * 3.0
                }
            })
            .collect();
        let mut both = TensorStatistics::new(StatisticsSettings::WITH_HISTOGRAM);
        both.observe(&values);
        let mut alone = MinMax::new();
        alone.observe(&values);
        assert_eq!(both.min_max, alone);
        assert_eq!(both.min_max.nan_count(), 1);
        let histogram = both.histogram.as_ref().unwrap();
        assert_eq!(histogram.total(), alone.finite_count());
        assert_eq!(histogram.range(), alone.range());
    }

    #[test]
    fn merge_with_less_drops_the_histogram() {
        let mut a = TensorStatistics::new(StatisticsSettings::WITH_HISTOGRAM);
        a.observe(&[1.0, 2.0]);
        let mut b = TensorStatistics::new(StatisticsSettings::MIN_MAX);
        b.observe(&[-5.0]);
        a.merge(&b);
        assert_eq!(a.settings(), StatisticsSettings::MIN_MAX);
        assert_eq!(a.min_max.range(), Some((-5.0, 2.0)));
    }
}
