//! Per-sample traces of an evaluation, which let the next evaluation of the same model and
//! sample re-measure only the tensors an encoding edit reaches.
//!
//! A [`FloatTrace`] holds what a sample's float run measured (it depends on nothing but the
//! model and the sample); a [`SimTrace`] holds what its simulation measured, each tensor's
//! numbers filed under a [`TensorKeys`] pair: a digest of every encoding its value depends on,
//! as read off the plan the simulation runs ([`crate::run::RunStructure`]). A tensor whose key
//! is unchanged would be measured to the same bits, so its numbers are reused; a terminal
//! tensor (nothing reads its rewritten value) whose own encoding alone changed is re-quantized
//! from the value its producer computed, kept in the trace, with no run at all.
//!
//! This module owns the traces, their keys and their byte form. It must NOT decide where
//! traces are kept (the engine stores them) nor run models (the evaluator does).

use crate::bytes::{Reader, Writer};
use crate::encoding::{Rounding, TensorEncoding};
use crate::run::RunStructure;
use crate::stats::{Histogram, MinMax, TensorStatistics};
use crate::store::StableHasher;
use std::hash::{Hash, Hasher};

/// Version of the traces' byte form; part of it, so other versions decode as a miss.
pub const TRACE_VERSION: u8 = 1;

/// A 128-bit digest: what a tensor's measured value depends on.
pub type TraceKey = [u8; 16];

/// A model output's value in one run.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputValue {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its elements in C order.
    pub data: Vec<f32>,
}

/// What the float run measured about one activation of one sample.
#[derive(Debug, Clone)]
pub struct FloatTensor {
    /// Σf².
    pub signal: f64,
    /// Values seen.
    pub elements: u64,
    /// Exact range and the strided histogram of the values.
    pub statistics: TensorStatistics,
}

/// One sample's float run: per float activation (in the float runner's order) its
/// measurements, and the values of the ones that are terminal there; the model's outputs.
#[derive(Debug, Clone)]
pub struct FloatTrace {
    /// Per float activation.
    pub tensors: Vec<FloatTensor>,
    /// Per float activation: its values when it is terminal in the float plan.
    pub terminal: Vec<Option<Vec<f32>>>,
    /// The model's outputs.
    pub outputs: Vec<OutputValue>,
}

/// The float side of an evaluation over a whole input list: every sample's measurements summed
/// in list order (exactly as the evaluation sums them), and each sample's terminal values and
/// outputs. An evaluation that runs no sample reads this one entry instead of a trace per
/// sample.
#[derive(Debug, Clone)]
pub struct FloatTotals {
    /// Per float activation, the sum over the samples in list order.
    pub tensors: Vec<FloatTensor>,
    /// Per sample in list order: its trace without measurements (`tensors` empty).
    pub samples: Vec<FloatTrace>,
}

/// What the simulation measured about one activation of one sample, against the float run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimTensor {
    /// The key its value was measured under ([`TensorKeys::after`]).
    pub key: TraceKey,
    /// The key of its value before the hook rewrote it ([`TensorKeys::before`]).
    pub before_key: TraceKey,
    /// Σ(f − q)², 0 when the simulation never produced it.
    pub noise: f64,
    /// Float values outside its encoding's range.
    pub clipped: u64,
}

/// One sample's simulation: per simulated activation its measurements, the values its
/// producer computed for the terminal ones, and the model's outputs as simulated.
#[derive(Debug, Clone)]
pub struct SimTrace {
    /// Per simulated activation.
    pub tensors: Vec<SimTensor>,
    /// Per simulated activation: its value before fake quantization, when terminal.
    pub before: Vec<Option<Vec<f32>>>,
    /// The model's outputs.
    pub outputs: Vec<OutputValue>,
}

/// The two keys of one simulated activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorKeys {
    /// Its value as its producer computes it: the encodings of every activation upstream.
    pub before: TraceKey,
    /// Its value as consumers read it and as it is measured: `before` and the encodings
    /// applied where it is produced (its own among them).
    pub after: TraceKey,
}

/// Feeds `encoding` (or its absence) to `hasher`, every field by its bits, through a
/// [`StableHasher`] so the schema's name is framed and no two encodings feed the same bytes.
pub fn hash_encoding(hasher: &mut blake3::Hasher, encoding: Option<&TensorEncoding>) {
    let mut hasher = StableHasher::over(hasher);
    let Some(encoding) = encoding else {
        hasher.write_u8(0xff);
        return;
    };
    let (tag, axis, float) = match encoding {
        TensorEncoding::PerTensor(_) => (0u8, 0u64, 0u32),
        TensorEncoding::PerChannel { axis, .. } => (1, *axis as u64, 0),
        TensorEncoding::Float { bitwidth } => (2, 0, bitwidth.bits()),
    };
    hasher.write_u8(tag);
    hasher.write_u64(axis);
    hasher.write_u32(float);
    hasher.write_usize(encoding.encodings().len());
    for e in encoding.encodings() {
        hasher.write_u32(e.bitwidth.bits());
        e.schema.as_str().hash(&mut hasher);
        for x in [e.min, e.max, e.scale] {
            hasher.write_u64(x.to_bits());
        }
        hasher.write_i64(e.offset);
    }
}

fn truncated(hash: blake3::Hash) -> TraceKey {
    let mut key = [0u8; 16];
    key.copy_from_slice(&hash.as_bytes()[..16]);
    key
}

/// The keys of every activation of `structure` when the hook applies `hooked` (per
/// activation, `None` = stays float) in `rounding`'s arithmetic.
///
/// The rounding mode enters every key, before and after: it changes the parameters and every
/// hooked value, so traces of the two modes never stand in for each other.
pub fn tensor_keys(
    structure: &RunStructure,
    hooked: &[Option<TensorEncoding>],
    rounding: Rounding,
) -> Vec<TensorKeys> {
    let own: Vec<TraceKey> = hooked
        .iter()
        .map(|encoding| {
            let mut hasher = blake3::Hasher::new();
            hash_encoding(&mut hasher, encoding.as_ref());
            truncated(hasher.finalize())
        })
        .collect();
    let feed = |hasher: &mut blake3::Hasher, list: &[u32]| {
        hasher.update(&(list.len() as u64).to_le_bytes());
        for &a in list {
            hasher.update(&a.to_le_bytes());
            hasher.update(own.get(a as usize).unwrap_or(&[0; 16]));
        }
    };
    (0..structure.names.len())
        .map(|a| {
            let mut hasher = blake3::Hasher::new();
            hasher.update(b"before");
            hasher.update(rounding.as_str().as_bytes());
            hasher.update(&(a as u64).to_le_bytes());
            feed(&mut hasher, &structure.upstream[a]);
            let before = truncated(hasher.finalize());
            let mut hasher = blake3::Hasher::new();
            hasher.update(b"after");
            hasher.update(&before);
            feed(&mut hasher, &structure.siblings[a]);
            TensorKeys {
                before,
                after: truncated(hasher.finalize()),
            }
        })
        .collect()
}

// --- byte form -------------------------------------------------------------------------------

/// The writes of the traces' fields beyond the primitive ones; [`Reader`]'s below read them.
impl Writer<'_> {
    fn values(&mut self, values: &[f32]) {
        self.count(values.len());
        for &v in values {
            self.f32(v);
        }
    }

    fn optional(&mut self, values: &Option<Vec<f32>>) {
        match values {
            Some(values) => {
                self.u8(1);
                self.values(values);
            }
            None => self.u8(0),
        }
    }

    fn outputs(&mut self, outputs: &[OutputValue]) {
        self.count(outputs.len());
        for output in outputs {
            self.count(output.shape.len());
            for &d in &output.shape {
                self.u64(d as u64);
            }
            self.values(&output.data);
        }
    }
}

impl Reader<'_> {
    fn key(&mut self) -> Option<TraceKey> {
        self.take(16)?.try_into().ok()
    }

    fn values(&mut self) -> Option<Vec<f32>> {
        let n = self.count(4)?;
        // One bounds check for the whole run: terminal values can be millions of floats.
        let bytes = self.take(n * 4)?;
        Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_bits(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        )
    }

    fn optional(&mut self) -> Option<Option<Vec<f32>>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.values()?)),
            _ => None,
        }
    }

    fn outputs(&mut self) -> Option<Vec<OutputValue>> {
        let n = self.count(16)?;
        let mut outputs = Vec::with_capacity(n);
        for _ in 0..n {
            let rank = self.count(8)?;
            let shape = (0..rank)
                .map(|_| usize::try_from(self.u64()?).ok())
                .collect::<Option<Vec<_>>>()?;
            let data = self.values()?;
            if shape.iter().product::<usize>() != data.len() {
                return None;
            }
            outputs.push(OutputValue { shape, data });
        }
        Some(outputs)
    }
}

impl FloatTrace {
    /// The byte form: version, per tensor signal and count, terminal values, outputs, then
    /// the range and histogram of every tensor in the statistics codec.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Writer(&mut out);
        w.raw(&[TRACE_VERSION, b'F']);
        w.count(self.tensors.len());
        for t in &self.tensors {
            w.f64(t.signal);
            w.u64(t.elements);
        }
        for values in &self.terminal {
            w.optional(values);
        }
        w.outputs(&self.outputs);
        let statistics: Vec<TensorStatistics> =
            self.tensors.iter().map(|t| t.statistics.clone()).collect();
        w.raw(&crate::stats::encode_all(&statistics));
        out
    }

    /// Reads [`FloatTrace::encode`]'s bytes back; `None` when they are not exactly that.
    pub fn decode(bytes: &[u8]) -> Option<FloatTrace> {
        let mut r = Reader(bytes);
        if r.u8()? != TRACE_VERSION || r.u8()? != b'F' {
            return None;
        }
        let n = r.count(17)?;
        let mut sums = Vec::with_capacity(n);
        for _ in 0..n {
            sums.push((r.f64()?, r.u64()?));
        }
        let terminal = (0..n).map(|_| r.optional()).collect::<Option<Vec<_>>>()?;
        let outputs = r.outputs()?;
        let statistics = TensorStatistics::decode_all(r.0)?;
        if statistics.len() != n {
            return None;
        }
        let tensors = sums
            .into_iter()
            .zip(statistics)
            .map(|((signal, elements), statistics)| FloatTensor {
                signal,
                elements,
                statistics,
            })
            .collect();
        Some(FloatTrace {
            tensors,
            terminal,
            outputs,
        })
    }
}

impl FloatTotals {
    /// The byte form: version, the samples' terminal values and outputs, then the summed
    /// tensors as a [`FloatTrace`] without terminal values.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Writer(&mut out);
        w.raw(&[TRACE_VERSION, b'T']);
        w.count(self.samples.len());
        for sample in &self.samples {
            w.count(sample.terminal.len());
            for values in &sample.terminal {
                w.optional(values);
            }
            w.outputs(&sample.outputs);
        }
        let sums = FloatTrace {
            tensors: self.tensors.clone(),
            terminal: vec![None; self.tensors.len()],
            outputs: Vec::new(),
        };
        w.raw(&sums.encode());
        out
    }

    /// Reads [`FloatTotals::encode`]'s bytes back; `None` when they are not exactly that.
    pub fn decode(bytes: &[u8]) -> Option<FloatTotals> {
        let mut r = Reader(bytes);
        if r.u8()? != TRACE_VERSION || r.u8()? != b'T' {
            return None;
        }
        let count = r.count(16)?;
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count {
            let n = r.count(1)?;
            let terminal = (0..n).map(|_| r.optional()).collect::<Option<Vec<_>>>()?;
            let outputs = r.outputs()?;
            samples.push(FloatTrace {
                tensors: Vec::new(),
                terminal,
                outputs,
            });
        }
        let sums = FloatTrace::decode(r.0)?;
        Some(FloatTotals {
            tensors: sums.tensors,
            samples,
        })
    }
}

impl SimTrace {
    /// The byte form: version, per tensor its keys, noise and clipped count, the values
    /// before the hook of terminal tensors, outputs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Writer(&mut out);
        w.raw(&[TRACE_VERSION, b'S']);
        w.count(self.tensors.len());
        for t in &self.tensors {
            w.raw(&t.key);
            w.raw(&t.before_key);
            w.f64(t.noise);
            w.u64(t.clipped);
        }
        for values in &self.before {
            w.optional(values);
        }
        w.outputs(&self.outputs);
        out
    }

    /// Reads [`SimTrace::encode`]'s bytes back; `None` when they are not exactly that.
    pub fn decode(bytes: &[u8]) -> Option<SimTrace> {
        let mut r = Reader(bytes);
        if r.u8()? != TRACE_VERSION || r.u8()? != b'S' {
            return None;
        }
        let n = r.count(49)?;
        let mut tensors = Vec::with_capacity(n);
        for _ in 0..n {
            tensors.push(SimTensor {
                key: r.key()?,
                before_key: r.key()?,
                noise: r.f64()?,
                clipped: r.u64()?,
            });
        }
        let before = (0..n).map(|_| r.optional()).collect::<Option<Vec<_>>>()?;
        let outputs = r.outputs()?;
        r.0.is_empty().then_some(SimTrace {
            tensors,
            before,
            outputs,
        })
    }
}

/// An empty float measurement, ready to observe a tensor's values.
pub(super) fn empty_float_tensor() -> FloatTensor {
    FloatTensor {
        signal: 0.0,
        elements: 0,
        statistics: TensorStatistics {
            min_max: MinMax::new(),
            histogram: Some(Histogram::new()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{Bitwidth, Encoding, Schema};

    fn structure() -> RunStructure {
        // a → b → c (terminal), a → d (terminal); b and e are produced by one node.
        RunStructure {
            names: ["a", "b", "c", "d", "e"].map(String::from).to_vec(),
            shapes: vec![vec![1]; 5],
            upstream: vec![vec![], vec![0], vec![0, 1, 4], vec![0], vec![0]],
            siblings: vec![vec![0], vec![1, 4], vec![2], vec![3], vec![1, 4]],
            terminal: vec![false, false, true, true, false],
            constant: vec![false; 5],
            outputs: vec![Some(2)],
            output_names: vec!["c".to_string()],
        }
    }

    fn encoding(max: f64) -> Option<TensorEncoding> {
        Some(TensorEncoding::PerTensor(
            Encoding::from_range(0.0, max, Bitwidth::B8, Schema::Asymmetric).unwrap(),
        ))
    }

    #[test]
    fn an_edit_changes_exactly_the_keys_it_reaches() {
        let s = structure();
        let base: Vec<_> = (0..5).map(|i| encoding(1.0 + i as f64)).collect();
        let keys = tensor_keys(&s, &base, Rounding::Onnx);
        let changed = |edited: usize| -> Vec<(bool, bool)> {
            let mut hooked = base.clone();
            hooked[edited] = encoding(10.0);
            tensor_keys(&s, &hooked, Rounding::Onnx)
                .iter()
                .zip(&keys)
                .map(|(new, old)| (new.before != old.before, new.after != old.after))
                .collect()
        };
        // The terminal `c`: only its own value after the hook.
        assert_eq!(
            changed(2),
            [
                (false, false),
                (false, false),
                (false, true),
                (false, false),
                (false, false)
            ]
        );
        // `e` is produced with `b`: both read values change, and `c` downstream of both.
        assert_eq!(
            changed(4),
            [
                (false, false),
                (false, true),
                (true, true),
                (false, false),
                (false, true)
            ]
        );
        // The input reaches everything.
        assert!(changed(0).iter().all(|&(_, after)| after));
        // Float and an encoding differ.
        let mut float = base.clone();
        float[3] = None;
        assert_ne!(
            tensor_keys(&s, &float, Rounding::Onnx)[3].after,
            keys[3].after
        );
        assert_eq!(
            tensor_keys(&s, &float, Rounding::Onnx)[3].before,
            keys[3].before
        );
        // The other rounding mode keys every tensor apart, before and after.
        for (aimet, onnx) in tensor_keys(&s, &base, Rounding::Aimet).iter().zip(&keys) {
            assert_ne!(aimet.before, onnx.before);
            assert_ne!(aimet.after, onnx.after);
        }
    }

    /// The store keeps these bytes between versions of quant: a change to them must come with a
    /// new [`TRACE_VERSION`] (and these digests), never silently.
    #[test]
    fn bytes_are_those_the_store_already_holds() {
        let tensor = |n: usize| {
            let mut statistics =
                TensorStatistics::new(crate::stats::StatisticsSettings::WITH_HISTOGRAM);
            let values: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 9.0)
                .collect();
            statistics.observe(&values);
            statistics.observe(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
            FloatTensor {
                signal: 1.0 / 3.0,
                elements: n as u64,
                statistics,
            }
        };
        let float = FloatTrace {
            tensors: vec![tensor(3), tensor(3000)],
            terminal: vec![None, Some(vec![1.0, -0.0, f32::NAN])],
            outputs: vec![OutputValue {
                shape: vec![1, 3],
                data: vec![0.5, 0.25, -8.0],
            }],
        };
        let totals = FloatTotals {
            tensors: float.tensors.clone(),
            samples: vec![FloatTrace {
                tensors: vec![],
                terminal: float.terminal.clone(),
                outputs: float.outputs.clone(),
            }],
        };
        let sim = SimTrace {
            tensors: vec![SimTensor {
                key: [1; 16],
                before_key: [2; 16],
                noise: 1e-9,
                clipped: 17,
            }],
            before: vec![Some(vec![3.5; 4])],
            outputs: float.outputs.clone(),
        };
        let digest = |bytes: Vec<u8>| blake3::hash(&bytes).to_hex().to_string();
        assert_eq!(
            digest(float.encode()),
            "83f727c8c39ff1c422e555bc0106372f79b9a0c9d5bbd96e3e4aacbafbb1a7d5"
        );
        assert_eq!(
            digest(totals.encode()),
            "ec4ca5850aca67f6f0ca58a3cf2a9839f494dab4266c76e5402066dd86d173aa"
        );
        assert_eq!(
            digest(sim.encode()),
            "bc3e9e42deb7c698b8b3f3eab1f3b309fddc57b2abde5c991bf3715941e3f0bb"
        );
    }

    #[test]
    fn hash_encoding_frames_the_schema() {
        // Encodings that differ only in the schema's name, and sequences of encodings that
        // differ only in where one ends, feed different bytes.
        let digest = |encodings: &[Option<&TensorEncoding>]| {
            let mut hasher = blake3::Hasher::new();
            for &e in encodings {
                hash_encoding(&mut hasher, e);
            }
            hasher.finalize()
        };
        let encoding =
            |schema| TensorEncoding::PerTensor(Encoding::symmetric(1.0, Bitwidth::B8, schema));
        let symmetric = encoding(Schema::Symmetric);
        let unsigned = encoding(Schema::UnsignedSymmetric);
        assert_ne!(digest(&[Some(&symmetric)]), digest(&[Some(&unsigned)]));
        assert_ne!(
            digest(&[Some(&symmetric), None]),
            digest(&[None, Some(&symmetric)])
        );
        assert_eq!(
            digest(&[Some(&symmetric)]),
            digest(&[Some(&encoding(Schema::Symmetric))])
        );
    }

    #[test]
    fn traces_round_trip_and_damage_is_a_miss() {
        let mut tensor = empty_float_tensor();
        tensor.signal = 2.5;
        tensor.elements = 3;
        tensor.statistics.min_max.observe(&[-1.0, 0.5, 2.0]);
        if let Some(h) = tensor.statistics.histogram.as_mut() {
            h.observe(&[-1.0, 0.5, 2.0]);
        }
        let float = FloatTrace {
            tensors: vec![tensor.clone(), empty_float_tensor()],
            terminal: vec![None, Some(vec![1.0, f32::NAN])],
            outputs: vec![OutputValue {
                shape: vec![1, 2],
                data: vec![0.25, -0.0],
            }],
        };
        let bytes = float.encode();
        let back = FloatTrace::decode(&bytes).unwrap();
        assert_eq!(back.encode(), bytes);
        assert_eq!(back.tensors[0].signal, 2.5);
        assert_eq!(back.outputs, float.outputs);
        assert!(FloatTrace::decode(&bytes[..bytes.len() - 1]).is_none());

        let totals = FloatTotals {
            tensors: float.tensors.clone(),
            samples: vec![FloatTrace {
                tensors: Vec::new(),
                terminal: float.terminal.clone(),
                outputs: float.outputs.clone(),
            }],
        };
        let bytes = totals.encode();
        let back = FloatTotals::decode(&bytes).unwrap();
        assert_eq!(back.encode(), bytes);
        assert_eq!(back.samples[0].outputs, float.outputs);
        assert!(FloatTotals::decode(&bytes[..bytes.len() - 2]).is_none());

        let sim = SimTrace {
            tensors: vec![SimTensor {
                key: [7; 16],
                before_key: [9; 16],
                noise: 0.125,
                clipped: 4,
            }],
            before: vec![Some(vec![3.0])],
            outputs: vec![],
        };
        let bytes = sim.encode();
        let back = SimTrace::decode(&bytes).unwrap();
        assert_eq!(back.tensors, sim.tensors);
        assert_eq!(back.before, sim.before);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(SimTrace::decode(&longer).is_none());
        assert!(SimTrace::decode(&float.encode()).is_none());
    }
}
