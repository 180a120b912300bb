//! What the build keeps in the persistent store, and the stable digests its keys are made of.
//!
//! It owns the serialized forms of per-sample statistics and per-tensor encodings (store
//! payloads), their exact round trip back to the library's types, and [`stable_digest`]: a
//! blake3 digest of any `Hash` value that does not change between runs. It must not decide
//! when to read or write the store (the queries do) nor compute statistics or encodings.

use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::encoding::tensor::FloatBitwidth;
use crate::encoding::{Bitwidth, Encoding, Schema};
use crate::overrides::FixedEncoding;
use crate::stats::{MinMax, TensorStatistics};
use crate::store::Digest;

/// A `Hasher` that feeds blake3 with fixed-width little-endian integers, so a value's digest is
/// the same in every process (std's `DefaultHasher` is randomly keyed per process).
struct StableHasher(blake3::Hasher);

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        let hash = self.0.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn write_u8(&mut self, n: u8) {
        self.0.update(&[n]);
    }

    fn write_u16(&mut self, n: u16) {
        self.0.update(&n.to_le_bytes());
    }

    fn write_u32(&mut self, n: u32) {
        self.0.update(&n.to_le_bytes());
    }

    fn write_u64(&mut self, n: u64) {
        self.0.update(&n.to_le_bytes());
    }

    fn write_usize(&mut self, n: usize) {
        // Widened so 32- and 64-bit machines agree.
        self.0.update(&(n as u64).to_le_bytes());
    }

    fn write_i64(&mut self, n: i64) {
        self.0.update(&n.to_le_bytes());
    }

    fn write_isize(&mut self, n: isize) {
        self.0.update(&(n as i64).to_le_bytes());
    }
}

/// The blake3 digest of `value` through its `Hash` implementation, identical across runs and
/// machines of either pointer width. Used for store key fields that are settings or overrides
/// (types the library hashes but does not serialize). A change to a type's `Hash` only makes
/// old entries unreachable; it can never make a key match a different value.
pub fn stable_digest<T: Hash + ?Sized>(value: &T) -> Digest {
    let mut hasher = StableHasher(blake3::Hasher::new());
    value.hash(&mut hasher);
    Digest::from(hasher.0.finalize())
}

/// One tensor's min/max statistics as stored: the bounds' `f32` bits and every count, which is
/// all a [`MinMax`] holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMinMax {
    /// Smallest finite value's bits, when any finite value was seen.
    pub min: Option<u32>,
    /// Largest finite value's bits, when any finite value was seen.
    pub max: Option<u32>,
    /// Finite values seen.
    pub finite: u64,
    /// NaNs seen.
    pub nan: u64,
    /// +∞ seen.
    pub positive_infinity: u64,
    /// −∞ seen.
    pub negative_infinity: u64,
}

impl StoredMinMax {
    /// The stored form, or `None` for statistics with a histogram, which has no serialized form
    /// yet (such statistics are recomputed by each new process instead of stored).
    pub fn from_statistics(statistics: &TensorStatistics) -> Option<StoredMinMax> {
        if statistics.histogram.is_some() {
            return None;
        }
        let m = &statistics.min_max;
        Some(StoredMinMax {
            min: m.min().map(f32::to_bits),
            max: m.max().map(f32::to_bits),
            finite: m.finite_count(),
            nan: m.nan_count(),
            positive_infinity: m.positive_infinity_count(),
            negative_infinity: m.negative_infinity_count(),
        })
    }

    /// Rebuilds the exact [`MinMax`] through its public operations: observing the bounds, then
    /// merging copies of one-value statistics by repeated doubling to reach every count (a
    /// merge adds counts), so the result compares equal to the original bit for bit.
    pub fn to_statistics(&self) -> Option<TensorStatistics> {
        let mut min_max = MinMax::new();
        match (self.min, self.max, self.finite) {
            (None, None, 0) => {}
            (Some(min), Some(max), 1) if min == max => min_max.observe(&[f32::from_bits(min)]),
            (Some(min), Some(max), finite) if finite >= 2 => {
                let (min, max) = (f32::from_bits(min), f32::from_bits(max));
                if !(min.is_finite() && max.is_finite() && min <= max) {
                    return None;
                }
                min_max.observe(&[min, max]);
                min_max.merge(&repeated(min, finite - 2));
            }
            _ => return None,
        }
        min_max.merge(&repeated(f32::NAN, self.nan));
        min_max.merge(&repeated(f32::INFINITY, self.positive_infinity));
        min_max.merge(&repeated(f32::NEG_INFINITY, self.negative_infinity));
        Some(TensorStatistics {
            min_max,
            histogram: None,
        })
    }
}

/// Min/max statistics of `value` observed `count` times, in O(log count) merges.
fn repeated(value: f32, count: u64) -> MinMax {
    let mut total = MinMax::new();
    let mut power = MinMax::new();
    power.observe(&[value]);
    let mut remaining = count;
    while remaining > 0 {
        if remaining & 1 == 1 {
            total.merge(&power);
        }
        let copy = power;
        power.merge(&copy);
        remaining >>= 1;
    }
    total
}

/// One sample's statistics as stored: the activation names in the runner's order and one
/// min/max per activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSampleStatistics {
    /// Activation names, in the runner's activation order.
    pub names: Vec<String>,
    /// One entry per name.
    pub tensors: Vec<StoredMinMax>,
}

/// One integer encoding as stored: floats by their bits, so the round trip is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredScalar {
    /// Bits per value.
    pub bitwidth: u32,
    /// Schema, as the manifest spells it.
    pub schema: u8,
    /// `min` as `f64` bits.
    pub min: u64,
    /// `max` as `f64` bits.
    pub max: u64,
    /// `scale` as `f64` bits.
    pub scale: u64,
    /// The AIMET offset.
    pub offset: i64,
}

impl StoredScalar {
    fn from_encoding(e: &Encoding) -> StoredScalar {
        StoredScalar {
            bitwidth: e.bitwidth.bits(),
            schema: match e.schema {
                Schema::Asymmetric => 0,
                Schema::SignedAsymmetric => 1,
                Schema::Symmetric => 2,
                Schema::UnsignedSymmetric => 3,
            },
            min: e.min.to_bits(),
            max: e.max.to_bits(),
            scale: e.scale.to_bits(),
            offset: e.offset,
        }
    }

    fn to_encoding(self) -> Option<Encoding> {
        Some(Encoding {
            bitwidth: Bitwidth::new(self.bitwidth).ok()?,
            schema: *Schema::ALL.get(usize::from(self.schema))?,
            min: f64::from_bits(self.min),
            max: f64::from_bits(self.max),
            scale: f64::from_bits(self.scale),
            offset: self.offset,
        })
    }
}

/// A tensor's encoding as stored (see [`super::queries::EncodedTensor`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredEncoding {
    /// One encoding for the tensor.
    PerTensor(StoredScalar),
    /// One encoding per channel along `axis`.
    PerChannel {
        /// The channel axis.
        axis: usize,
        /// One per channel.
        channels: Vec<StoredScalar>,
    },
    /// Kept in float at this width.
    Float(u32),
}

impl StoredEncoding {
    /// The stored form of an encoding and its channel axis.
    pub fn new(encoding: &FixedEncoding, axis: usize) -> StoredEncoding {
        match encoding {
            FixedEncoding::PerTensor(e) => {
                StoredEncoding::PerTensor(StoredScalar::from_encoding(e))
            }
            FixedEncoding::PerChannel(channels) => StoredEncoding::PerChannel {
                axis,
                channels: channels.iter().map(StoredScalar::from_encoding).collect(),
            },
            FixedEncoding::Float(bits) => StoredEncoding::Float(bits.bits()),
        }
    }

    /// The encoding and its channel axis back, or `None` for a payload no encoding has (which
    /// the caller treats as a corrupt entry).
    pub fn restore(&self) -> Option<(FixedEncoding, usize)> {
        match self {
            StoredEncoding::PerTensor(e) => Some((FixedEncoding::PerTensor(e.to_encoding()?), 0)),
            StoredEncoding::PerChannel { axis, channels } => Some((
                FixedEncoding::PerChannel(
                    channels
                        .iter()
                        .map(|e| e.to_encoding())
                        .collect::<Option<Vec<_>>>()?,
                ),
                *axis,
            )),
            StoredEncoding::Float(bits) => {
                Some((FixedEncoding::Float(FloatBitwidth::new(*bits)?), 0))
            }
        }
    }
}

/// A per-tensor store entry: the encoding (none for an activation without statistics) and the
/// warnings its computation raised, already worded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTensorEntry {
    /// The encoding, when the tensor gets one.
    pub encoding: Option<StoredEncoding>,
    /// Warnings, in the order raised.
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::StatisticsSettings;

    fn round_trip(values: &[f32]) {
        let mut statistics = TensorStatistics::new(StatisticsSettings::MIN_MAX);
        statistics.observe(values);
        let stored = StoredMinMax::from_statistics(&statistics).unwrap();
        let json = serde_json::to_string(&stored).unwrap();
        let back: StoredMinMax = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_statistics(), Some(statistics), "values {values:?}");
    }

    #[test]
    fn min_max_statistics_round_trip_exactly() {
        round_trip(&[]);
        round_trip(&[3.5]);
        round_trip(&[-0.0, 0.0]);
        round_trip(&[
            1.0,
            -2.0,
            7.25,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        let many: Vec<f32> = (0..100_003).map(|i| (i as f32 * 0.37).sin()).collect();
        round_trip(&many);
        round_trip(&[f32::NAN; 5]);
    }

    #[test]
    fn histograms_are_not_stored() {
        let mut statistics = TensorStatistics::new(StatisticsSettings::WITH_HISTOGRAM);
        statistics.observe(&[1.0, 2.0]);
        assert_eq!(StoredMinMax::from_statistics(&statistics), None);
    }

    #[test]
    fn inconsistent_payloads_are_rejected() {
        let stored = StoredMinMax {
            min: Some(2.0f32.to_bits()),
            max: Some(1.0f32.to_bits()),
            finite: 3,
            nan: 0,
            positive_infinity: 0,
            negative_infinity: 0,
        };
        assert_eq!(stored.to_statistics(), None);
    }

    #[test]
    fn encodings_round_trip_bit_for_bit() {
        let e = Encoding::from_range(-1.0, 3.0, Bitwidth::B8, Schema::Asymmetric).unwrap();
        for (fixed, axis) in [
            (FixedEncoding::PerTensor(e), 0),
            (FixedEncoding::PerChannel(vec![e, e]), 1),
            (FixedEncoding::Float(FloatBitwidth::F16), 0),
        ] {
            let stored = StoredEncoding::new(&fixed, axis);
            let json = serde_json::to_string(&stored).unwrap();
            let back: StoredEncoding = serde_json::from_str(&json).unwrap();
            assert_eq!(back.restore(), Some((fixed, axis)));
        }
    }

    #[test]
    fn stable_digests_depend_on_the_value_only() {
        assert_eq!(stable_digest(&("a", 1u32)), stable_digest(&("a", 1u32)));
        assert_ne!(stable_digest(&("a", 1u32)), stable_digest(&("a", 2u32)));
        assert_ne!(stable_digest(&("ab", "")), stable_digest(&("a", "b")));
    }
}
