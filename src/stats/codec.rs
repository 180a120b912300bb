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

/// Bumped whenever the layout below changes.
pub const CODEC_VERSION: u8 = 4;

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// LEB128: seven bits per byte, low bits first, the high bit set on every byte but the last.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads fixed-size little-endian fields off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    /// A [`put_varint`] value; `None` when truncated or longer than a `u64`.
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return None;
            }
            v |= bits << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}

impl MinMax {
    fn encode(&self, out: &mut Vec<u8>) {
        let (min, max, finite, nan, pos, neg) = self.raw_parts();
        put_u32(out, min);
        put_u32(out, max);
        for v in [finite, nan, pos, neg] {
            put_u64(out, v);
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
    fn encode(&self, out: &mut Vec<u8>) {
        let (exponent, start, min, max, total, (at_min, at_max), counts, values) = self.raw_parts();
        put_u32(out, exponent as u32);
        put_u64(out, start as u64);
        put_u32(out, min);
        put_u32(out, max);
        put_u64(out, total);
        put_u64(out, at_min);
        put_u64(out, at_max);
        let first = counts.iter().position(|&c| c != 0).unwrap_or(0);
        let last = counts.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
        let run = &counts[first..last.max(first)];
        put_u32(out, first as u32);
        put_u32(out, run.len() as u32);
        for &c in run {
            put_varint(out, c);
        }
        match values {
            Some(values) => {
                out.push(1);
                for v in values {
                    put_u32(out, v.to_bits());
                }
            }
            None => out.push(0),
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
                Some(
                    (0..total)
                        .map(|_| r.u32().map(f32::from_bits))
                        .collect::<Option<Vec<_>>>()?,
                )
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
        self.min_max.encode(out);
        match &self.histogram {
            Some(histogram) => {
                out.push(1);
                histogram.encode(out);
            }
            None => out.push(0),
        }
    }

    /// Decodes the byte form of a list of statistics written by [`encode_all`]; `None` when the
    /// bytes are not exactly such a list (truncated, trailing bytes, other version, bad fields).
    pub fn decode_all(bytes: &[u8]) -> Option<Vec<TensorStatistics>> {
        let mut r = Reader(bytes);
        if r.u8()? != CODEC_VERSION {
            return None;
        }
        let count = r.u64()? as usize;
        // Every entry takes at least 41 bytes: refuse counts the bytes cannot hold.
        if count > bytes.len() / 41 {
            return None;
        }
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
    let mut out = vec![CODEC_VERSION];
    put_u64(&mut out, statistics.len() as u64);
    for s in statistics {
        s.encode(&mut out);
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

    #[test]
    fn varints_round_trip_at_every_width() {
        let values = [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ];
        let mut bytes = Vec::new();
        for v in values {
            put_varint(&mut bytes, v);
        }
        // 1 + 1 + 1 + 2 + 2 + 2 + 3 + 5 + 10 bytes.
        assert_eq!(bytes.len(), 27);
        let mut r = Reader(&bytes);
        for v in values {
            assert_eq!(r.varint(), Some(v));
        }
        assert!(r.0.is_empty());
        // Eleven bytes, or a tenth byte with more than the top bit, overflow a u64.
        assert_eq!(Reader(&[0xff; 11]).varint(), None);
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(Reader(&over).varint(), None);
        assert_eq!(Reader(&[0x80]).varint(), None);
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
