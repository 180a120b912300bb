//! What the build keeps in the persistent store, and the stable digests its keys are made of.
//!
//! It owns the serialized forms of per-sample statistics and per-tensor encodings (store
//! payloads), their exact round trip back to the library's types, and [`stable_digest`]: a
//! blake3 digest of any `Hash` value that does not change between runs. It must not decide
//! when to read or write the store (the queries do) nor compute statistics or encodings.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

pub(super) use crate::bytes::Reader;
use crate::encoding::tensor::FloatBitwidth;
use crate::encoding::{Bitwidth, Encoding, Schema};
use crate::overrides::FixedEncoding;
use crate::stats::TensorStatistics;
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

/// One sample's statistics as stored: the activation names in the runner's order, then the
/// statistics in `stats`' exact byte codec (histograms included, so every calibration method's
/// statistics survive the process).
///
/// Layout: name count (u64 LE), each name as length (u64 LE) + UTF-8 bytes, then
/// [`crate::stats::encode_all`] of the statistics.
pub fn encode_sample_statistics(names: &[String], statistics: &[TensorStatistics]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(names.len() as u64).to_le_bytes());
    for name in names {
        out.extend_from_slice(&(name.len() as u64).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    out.extend_from_slice(&crate::stats::encode_all(statistics));
    out
}

/// Reads [`encode_sample_statistics`]' bytes back; `None` when they are not exactly that (a
/// damaged or foreign payload counts as a miss and is recomputed).
pub fn decode_sample_statistics(bytes: &[u8]) -> Option<(Vec<String>, Vec<TensorStatistics>)> {
    fn take_u64(bytes: &mut &[u8]) -> Option<u64> {
        let (head, rest) = bytes.split_first_chunk::<8>()?;
        *bytes = rest;
        Some(u64::from_le_bytes(*head))
    }
    let mut rest = bytes;
    let count = usize::try_from(take_u64(&mut rest)?).ok()?;
    if count > rest.len() / 8 {
        return None;
    }
    let mut names = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::try_from(take_u64(&mut rest)?).ok()?;
        if len > rest.len() {
            return None;
        }
        let (name, tail) = rest.split_at(len);
        names.push(String::from_utf8(name.to_vec()).ok()?);
        rest = tail;
    }
    let statistics = TensorStatistics::decode_all(rest)?;
    (statistics.len() == names.len()).then_some((names, statistics))
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

/// A tensor's encoding as stored (see [`super::EncodedTensor`]).
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
#[derive(Default)]
pub(super) struct Writer(pub(super) Vec<u8>);

impl Writer {
    pub(super) fn u64(&mut self, n: u64) {
        self.0.extend_from_slice(&n.to_le_bytes());
    }

    pub(super) fn bytes(&mut self, bytes: &[u8]) {
        self.u64(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    pub(super) fn digest(&mut self, digest: &Digest) {
        self.0.extend_from_slice(digest.as_bytes());
    }

    pub(super) fn strings(&mut self, strings: &[String]) {
        self.u64(strings.len() as u64);
        for s in strings {
            self.bytes(s.as_bytes());
        }
    }

    pub(super) fn scalar(&mut self, s: &StoredScalar) {
        self.u64(u64::from(s.bitwidth));
        self.0.push(s.schema);
        self.u64(s.min);
        self.u64(s.max);
        self.u64(s.scale);
        self.u64(s.offset as u64);
    }

    pub(super) fn encoding(&mut self, encoding: &StoredEncoding) {
        match encoding {
            StoredEncoding::PerTensor(s) => {
                self.0.push(0);
                self.scalar(s);
            }
            StoredEncoding::PerChannel { axis, channels } => {
                self.0.push(1);
                self.u64(*axis as u64);
                self.u64(channels.len() as u64);
                for s in channels {
                    self.scalar(s);
                }
            }
            StoredEncoding::Float(bits) => {
                self.0.push(2);
                self.u64(u64::from(*bits));
            }
        }
    }

    pub(super) fn section(&mut self, section: &BTreeMap<String, FixedEncoding>) {
        self.u64(section.len() as u64);
        for (name, fixed) in section {
            self.bytes(name.as_bytes());
            self.encoding(&StoredEncoding::new(fixed, 0));
        }
    }
}

/// The reads of [`Writer`]'s fields beyond the primitive ones.
impl<'a> Reader<'a> {
    pub(super) fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n)
    }

    pub(super) fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    pub(super) fn digest(&mut self) -> Option<Digest> {
        Some(Digest::from_bytes(self.take(32)?.try_into().ok()?))
    }

    pub(super) fn strings(&mut self) -> Option<Vec<String>> {
        let n = self.count(8)?;
        (0..n).map(|_| self.string()).collect()
    }

    pub(super) fn scalar(&mut self) -> Option<StoredScalar> {
        Some(StoredScalar {
            bitwidth: u32::try_from(self.u64()?).ok()?,
            schema: self.u8()?,
            min: self.u64()?,
            max: self.u64()?,
            scale: self.u64()?,
            offset: self.u64()? as i64,
        })
    }

    pub(super) fn encoding(&mut self) -> Option<StoredEncoding> {
        Some(match self.u8()? {
            0 => StoredEncoding::PerTensor(self.scalar()?),
            1 => {
                let axis = usize::try_from(self.u64()?).ok()?;
                let n = self.count(41)?;
                let channels = (0..n).map(|_| self.scalar()).collect::<Option<_>>()?;
                StoredEncoding::PerChannel { axis, channels }
            }
            2 => StoredEncoding::Float(u32::try_from(self.u64()?).ok()?),
            _ => return None,
        })
    }

    pub(super) fn section(&mut self) -> Option<BTreeMap<String, FixedEncoding>> {
        let n = self.count(9)?;
        (0..n)
            .map(|_| {
                let name = self.string()?;
                let (fixed, _) = self.encoding()?.restore()?;
                Some((name, fixed))
            })
            .collect()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_statistics_round_trip_exactly_with_histograms() {
        use crate::stats::StatisticsSettings;
        let mut a = TensorStatistics::new(StatisticsSettings::WITH_HISTOGRAM);
        a.observe(&[-1.5, 0.0, 2.25, f32::NAN]);
        let mut b = TensorStatistics::new(StatisticsSettings::MIN_MAX);
        b.observe(&[3.0]);
        let names = vec!["x".to_string(), "conv/out:0".to_string()];
        let bytes = encode_sample_statistics(&names, &[a.clone(), b.clone()]);
        assert_eq!(decode_sample_statistics(&bytes), Some((names, vec![a, b])));
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_sample_statistics(&bytes[..cut]),
                None,
                "cut at {cut}"
            );
        }
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
