//! What the build keeps in the persistent store, and the stable digests its keys are made of.
//!
//! It owns the serialized forms of per-sample statistics and per-tensor encodings (store
//! payloads), their exact round trip back to the library's types, and [`stable_digest`]: a
//! blake3 digest of any `Hash` value that does not change between runs. It must not decide
//! when to read or write the store (the queries do) nor compute statistics or encodings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub(super) use crate::bytes::{Reader, Writer};
use crate::encoding::tensor::FloatBitwidth;
use crate::encoding::{Bitwidth, Encoding, Schema};
use crate::overrides::FixedEncoding;
use crate::quantizer::Warning;
use crate::stats::TensorStatistics;
use crate::store::Digest;
pub(super) use crate::store::stable_digest;

/// One sample's statistics as stored: the activation names in the runner's order, then the
/// statistics in `stats`' exact byte codec (histograms included, so every calibration method's
/// statistics survive the process).
///
/// Layout: name count (u64 LE), each name as length (u64 LE) + UTF-8 bytes, then
/// [`crate::stats::encode_all`] of the statistics.
pub fn encode_sample_statistics(names: &[String], statistics: &[TensorStatistics]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer(&mut out);
    w.strings(names);
    w.raw(&crate::stats::encode_all(statistics));
    out
}

/// Reads [`encode_sample_statistics`]' bytes back; `None` when they are not exactly that (a
/// damaged or foreign payload counts as a miss and is recomputed).
pub fn decode_sample_statistics(bytes: &[u8]) -> Option<(Vec<String>, Vec<TensorStatistics>)> {
    let mut r = Reader(bytes);
    let names = r.strings()?;
    let statistics = TensorStatistics::decode_all(r.0)?;
    (statistics.len() == names.len()).then_some((names, statistics))
}

/// A transformed model as stored: its report lines, then its ONNX bytes (length prefixed).
pub fn encode_transformed_model(lines: &[String], model: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(model.len() + 64);
    let mut w = Writer(&mut out);
    w.strings(lines);
    w.prefixed_bytes(model);
    out
}

/// Reads [`encode_transformed_model`]'s bytes back; `None` when they are not exactly that.
pub fn decode_transformed_model(bytes: &[u8]) -> Option<(Vec<String>, Vec<u8>)> {
    let mut r = Reader(bytes);
    let lines = r.strings()?;
    let model = r.prefixed_bytes()?.to_vec();
    r.0.is_empty().then_some((lines, model))
}

/// One sample's bias-correction means as stored: per layer, its output name and its sums.
pub fn encode_input_means(layers: &[(String, Vec<f64>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer(&mut out);
    w.count(layers.len());
    for (name, sums) in layers {
        w.prefixed_str(name);
        w.count(sums.len());
        for &s in sums {
            w.f64(s);
        }
    }
    out
}

/// Reads [`encode_input_means`]' bytes back; `None` when they are not exactly that.
pub fn decode_input_means(bytes: &[u8]) -> Option<Vec<(String, Vec<f64>)>> {
    let mut r = Reader(bytes);
    let count = r.count(8)?;
    let mut layers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = r.prefixed_str()?.to_string();
        let n = r.count(8)?;
        let sums = (0..n).map(|_| r.f64()).collect::<Option<Vec<f64>>>()?;
        layers.push((name, sums));
    }
    r.0.is_empty().then_some(layers)
}

/// A calibration's merged statistics as stored: [`encode_sample_statistics`]' bytes (length
/// prefixed), then the samples whose inputs held NaN or infinite values, each as its label, the
/// input's name, and the NaN and infinity counts. Those live here because the merged entry is
/// all a warm build reads of a calibration, and the warnings must survive it.
pub fn encode_merged_statistics(
    names: &[String],
    statistics: &[TensorStatistics],
    non_finite_inputs: &[Warning],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer(&mut out);
    w.prefixed_bytes(&encode_sample_statistics(names, statistics));
    let inputs: Vec<_> = non_finite_inputs
        .iter()
        .filter_map(|warning| match warning {
            Warning::NonFiniteInput {
                sample,
                input,
                nan,
                inf,
            } => Some((sample, input, nan, inf)),
            _ => None,
        })
        .collect();
    w.count(inputs.len());
    for (sample, input, nan, inf) in inputs {
        w.prefixed_str(sample);
        w.prefixed_str(input);
        w.u64(*nan);
        w.u64(*inf);
    }
    out
}

/// Statistics and non-finite inputs, as [`decode_merged_statistics`] reads them back.
pub type DecodedMerged = (Vec<String>, Vec<TensorStatistics>, Vec<Warning>);

/// Reads [`encode_merged_statistics`]' bytes back; `None` when they are not exactly that.
pub fn decode_merged_statistics(bytes: &[u8]) -> Option<DecodedMerged> {
    let mut r = Reader(bytes);
    let (names, statistics) = decode_sample_statistics(r.prefixed_bytes()?)?;
    // Two length prefixes and two counts at least.
    let n = r.count(32)?;
    let inputs = (0..n)
        .map(|_| {
            Some(Warning::NonFiniteInput {
                sample: r.string()?,
                input: r.string()?,
                nan: r.u64()?,
                inf: r.u64()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    r.0.is_empty().then_some((names, statistics, inputs))
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
/// The engine's payload fields, on top of the primitive ones of [`crate::bytes`]; each is read
/// back by the [`Reader`] method of the same name below.
impl Writer<'_> {
    pub(super) fn digest(&mut self, digest: &Digest) {
        self.raw(digest.as_bytes());
    }

    pub(super) fn strings(&mut self, strings: &[String]) {
        self.count(strings.len());
        for s in strings {
            self.prefixed_str(s);
        }
    }

    pub(super) fn scalar(&mut self, s: &StoredScalar) {
        self.u64(u64::from(s.bitwidth));
        self.u8(s.schema);
        self.u64(s.min);
        self.u64(s.max);
        self.u64(s.scale);
        self.u64(s.offset as u64);
    }

    pub(super) fn encoding(&mut self, encoding: &StoredEncoding) {
        match encoding {
            StoredEncoding::PerTensor(s) => {
                self.u8(0);
                self.scalar(s);
            }
            StoredEncoding::PerChannel { axis, channels } => {
                self.u8(1);
                self.count(*axis);
                self.count(channels.len());
                for s in channels {
                    self.scalar(s);
                }
            }
            StoredEncoding::Float(bits) => {
                self.u8(2);
                self.u64(u64::from(*bits));
            }
        }
    }

    pub(super) fn section(&mut self, section: &BTreeMap<String, FixedEncoding>) {
        self.count(section.len());
        for (name, fixed) in section {
            self.prefixed_str(name);
            self.encoding(&StoredEncoding::new(fixed, 0));
        }
    }
}

/// The reads of [`Writer`]'s fields beyond the primitive ones.
impl<'a> Reader<'a> {
    pub(super) fn string(&mut self) -> Option<String> {
        self.prefixed_str().map(str::to_owned)
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
    fn merged_statistics_round_trip_with_their_non_finite_inputs() {
        use crate::stats::StatisticsSettings;
        let mut a = TensorStatistics::new(StatisticsSettings::MIN_MAX);
        a.observe(&[f32::NAN, 1.0, f32::INFINITY]);
        let names = vec!["x".to_string()];
        let inputs = vec![Warning::NonFiniteInput {
            sample: "on line 3 (calib/2.raw)".to_string(),
            input: "x".to_string(),
            nan: 1,
            inf: 1,
        }];
        let bytes = encode_merged_statistics(&names, std::slice::from_ref(&a), &inputs);
        assert_eq!(
            decode_merged_statistics(&bytes),
            Some((names.clone(), vec![a.clone()], inputs))
        );
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_merged_statistics(&bytes[..cut]),
                None,
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_merged_statistics(&longer), None, "trailing bytes");
        // Other warnings are not the merged entry's to keep.
        let other = [Warning::NoStatistics {
            tensor: "x".to_string(),
        }];
        let bytes = encode_merged_statistics(&names, std::slice::from_ref(&a), &other);
        assert_eq!(
            decode_merged_statistics(&bytes),
            Some((names, vec![a], vec![]))
        );
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
