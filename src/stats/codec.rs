//! A compact, versioned byte form of [`TensorStatistics`], for the build engine's store.
//!
//! Little-endian integers only (the bounds are already `f32` bits), so encoding is exact and
//! decoding gives back a value equal to the original. Histograms store only the run of bins
//! between the first and last non-empty one, each count as a LEB128 varint: a calibrated tensor
//! usually fills a fraction of its 2048 bins, most counts fit in one or two bytes, and a model's
//! statistics are written once per sample (an evaluation's once per eval sample). A histogram
//! that keeps its values exactly (at most a few thousand) stores them after the counts.

use super::histogram::Histogram;
use super::min_max::MinMax;
use super::{BINS, TensorStatistics};
use crate::bytes::{Reader, Writer};

/// Bumped whenever the layout below changes.
pub const CODEC_VERSION: u8 = 4;

impl MinMax {
    fn encode(&self, w: &mut Writer<'_>) {
        let (min, max, finite, nan, pos, neg) = self.raw_parts();
        w.u32(min);
        w.u32(max);
        for v in [finite, nan, pos, neg] {
            w.u64(v);
        }
    }

    fn decode(r: &mut Reader<'_>) -> Option<MinMax> {
        Some(MinMax::from_raw_parts(
            r.u32()?,
            r.u32()?,
            r.u64()?,
            r.u64()?,
            r.u64()?,
            r.u64()?,
        ))
    }
}

impl Histogram {
    fn encode(&self, w: &mut Writer<'_>) {
        let (exponent, start, min, max, total, (at_min, at_max), counts, values) = self.raw_parts();
        w.u32(exponent as u32);
        w.u64(start as u64);
        w.u32(min);
        w.u32(max);
        w.u64(total);
        w.u64(at_min);
        w.u64(at_max);
        let first = counts.iter().position(|&c| c != 0).unwrap_or(0);
        let last = counts.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
        let run = &counts[first..last.max(first)];
        w.u32(first as u32);
        w.u32(run.len() as u32);
        for &c in run {
            w.varint(c);
        }
        match values {
            Some(values) => {
                w.u8(1);
                for &v in values {
                    w.f32(v);
                }
            }
            None => w.u8(0),
        }
    }

    fn decode(r: &mut Reader<'_>) -> Option<Histogram> {
        let exponent = r.u32()? as i32;
        let start = r.u64()? as i64;
        let min = r.u32()?;
        let max = r.u32()?;
        let total = r.u64()?;
        let extremes = (r.u64()?, r.u64()?);
        let first = r.u32()? as usize;
        let len = r.u32()? as usize;
        if first.checked_add(len)? > BINS {
            return None;
        }
        let mut counts = vec![0u64; BINS];
        for slot in &mut counts[first..first + len] {
            *slot = r.varint()?;
        }
        // The kept values number exactly `total` (checked when rebuilt).
        let values = match r.u8()? {
            0 => None,
            1 => {
                if total > super::histogram::EXACT_VALUES as u64 {
                    return None;
                }
                Some((0..total).map(|_| r.f32()).collect::<Option<Vec<_>>>()?)
            }
            _ => return None,
        };
        Histogram::from_raw_parts(exponent, start, min, max, total, extremes, &counts)?
            .with_kept_values(values)
    }
}

impl TensorStatistics {
    /// Appends this value's byte form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.write(&mut Writer(out));
    }

    fn write(&self, w: &mut Writer<'_>) {
        self.min_max.encode(w);
        match &self.histogram {
            Some(histogram) => {
                w.u8(1);
                histogram.encode(w);
            }
            None => w.u8(0),
        }
    }

    /// Decodes the byte form of a list of statistics written by [`encode_all`]; `None` when the
    /// bytes are not exactly such a list (truncated, trailing bytes, other version, bad fields).
    pub fn decode_all(bytes: &[u8]) -> Option<Vec<TensorStatistics>> {
        let mut r = Reader(bytes);
        if r.u8()? != CODEC_VERSION {
            return None;
        }
        // Every entry takes at least 41 bytes: refuse counts the bytes cannot hold.
        let count = r.count(41)?;
        let mut all = Vec::with_capacity(count);
        for _ in 0..count {
            let min_max = MinMax::decode(&mut r)?;
            let histogram = match r.u8()? {
                0 => None,
                1 => Some(Histogram::decode(&mut r)?),
                _ => return None,
            };
            all.push(TensorStatistics { min_max, histogram });
        }
        r.0.is_empty().then_some(all)
    }
}

/// The byte form of a list of statistics (a sample's or a model's), version-tagged.
pub fn encode_all(statistics: &[TensorStatistics]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer(&mut out);
    w.u8(CODEC_VERSION);
    w.count(statistics.len());
    for s in statistics {
        s.write(&mut w);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::StatisticsSettings;

    #[test]
    fn round_trips_exactly() {
        let mut with = TensorStatistics::new(StatisticsSettings::WITH_HISTOGRAM);
        with.observe(&[-3.5, 0.0, 1.25, f32::NAN, f32::INFINITY, 7.0]);
        let mut without = TensorStatistics::new(StatisticsSettings::MIN_MAX);
        without.observe(&[2.0, -1.0]);
        let empty = TensorStatistics::new(StatisticsSettings::WITH_HISTOGRAM);
        let all = vec![with, without, empty];
        let bytes = encode_all(&all);
        assert_eq!(TensorStatistics::decode_all(&bytes), Some(all));
    }

    /// Statistics of `n` spread values plus one of each non-finite kind.
    fn sample(n: usize, histogram: bool) -> TensorStatistics {
        let settings = if histogram {
            StatisticsSettings::WITH_HISTOGRAM
        } else {
            StatisticsSettings::MIN_MAX
        };
        let mut s = TensorStatistics::new(settings);
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 9.0)
            .collect();
        s.observe(&values);
        s.observe(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
        s
    }

    /// The store keeps these bytes between versions of quant: a change to them must come with a
    /// new [`CODEC_VERSION`] (and this digest), never silently.
    #[test]
    fn bytes_are_those_the_store_already_holds() {
        let all = [
            sample(10, true),
            sample(20_000, true),
            sample(5, false),
            TensorStatistics::new(StatisticsSettings::WITH_HISTOGRAM),
        ];
        assert_eq!(
            blake3::hash(&encode_all(&all)).to_hex().as_str(),
            "0219a020ffd140fdb1a194626a6ec57a5c09e3d81d8601bf52b4542055922261"
        );
    }

    #[test]
    fn rejects_damaged_bytes() {
        let mut s = TensorStatistics::new(StatisticsSettings::WITH_HISTOGRAM);
        s.observe(&[1.0, 2.0, 3.0]);
        let bytes = encode_all(&[s]);
        for cut in 0..bytes.len() {
            assert_eq!(
                TensorStatistics::decode_all(&bytes[..cut]),
                None,
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(TensorStatistics::decode_all(&longer), None);
        let mut other_version = bytes;
        other_version[0] = CODEC_VERSION + 1;
        assert_eq!(TensorStatistics::decode_all(&other_version), None);
    }
}
