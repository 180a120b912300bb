//! Quantization overrides: reading an AIMET encodings JSON file (`--quantization_overrides`)
//! into a checked, per-tensor map of [`Override`]s, and checking it against a model's tensors.
//!
//! Formats: the dictionary format of AIMET encodings 0.4 to 0.6.1 (also what the seed's
//! "Quantization Overrides" section shows) and the list format of 1.0.0. The rules, from the
//! seed:
//! - `bitwidth`, `min` and `max` fix the range; scale and offset are **recomputed** from them
//!   ([`Encoding::from_override`]: the range widened to contain 0.0 and to the seed's minimum
//!   range, offset `-2^(bw-1)` and the tightest covering scale when symmetric). Given `scale`/`offset` are ignored, with a warning when they
//!   disagree (scale by more than 1e-6 relative, offset at all). On AIMET's own 0.6.1 files the
//!   recomputed scales equal AIMET's within 3e-16 relative, except for tensors whose range is
//!   below the seed's minimum range (near-constant tensors), which are widened, with the warning.
//!   1.0.0 has no min/max: its scale/offset lists are the encoding, taken as given, and min/max
//!   are derived from them. Evaluation simulates a file as written instead
//!   ([`ParsedOverrides::as_written`]): the given scale and offset win there.
//! - A list of several entries is a per-channel override: symmetric, offset `-2^(bw-1)`, and as
//!   many entries as the parameter has channels (checked by [`ParsedOverrides::validate`]).
//! - `dtype: "float"` with bitwidth 16 or 32 keeps the tensor float; an integer bitwidth 32 is an
//!   INT32 override ([`Override::is_int32`]); an entry with only `bitwidth` and `dtype: "int"`
//!   quantizes at that bitwidth with the range from calibration statistics.
//! - Both sections must exist per the seed. A file with neither is an error; a file missing one
//!   of them is read with that section empty and a warning, since the intent is unambiguous.
//!
//! This module does no printing: errors are [`OverridesError`] diagnostics and warnings are
//! returned as values ([`OverridesWarning`]). It does not decide which tensors of a model get
//! encodings, and does not rewrite graphs (the INT32 rewrite belongs to the engine).

mod diagnostic;
mod json;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use miette::SourceSpan;

use crate::encoding::{Bitwidth, Encoding, FloatBitwidth, Schema, TensorEncoding};

pub use diagnostic::{
    ErrorKind, OverridesError, OverridesInvalid, OverridesSource, OverridesWarning, WarningKind,
};
pub(crate) use diagnostic::{NameAt, find_name, span_at};

/// A tensor's name as the ONNX model spells it.
pub type TensorName = String;

/// A tensor's encoding fixed entirely by numbers: what an encodings file can state and what the
/// AIMET writer ([`crate::export::aimet`]) writes.
///
/// Equality and hashing compare the floats bit for bit, so equal values are interchangeable in
/// caches.
#[derive(Debug, Clone)]
pub enum FixedEncoding {
    /// One encoding for the whole tensor.
    PerTensor(Encoding),
    /// One symmetric encoding per output channel, in channel order.
    PerChannel(Vec<Encoding>),
    /// The tensor stays floating point.
    Float(FloatBitwidth),
}

impl FixedEncoding {
    /// The integer encodings (one, one per channel, or none for float).
    pub fn encodings(&self) -> &[Encoding] {
        match self {
            FixedEncoding::PerTensor(e) => std::slice::from_ref(e),
            FixedEncoding::PerChannel(list) => list,
            FixedEncoding::Float(_) => &[],
        }
    }
}

impl From<&TensorEncoding> for FixedEncoding {
    /// Drops the channel axis, which encodings files do not record.
    fn from(encoding: &TensorEncoding) -> Self {
        match encoding {
            TensorEncoding::PerTensor(e) => FixedEncoding::PerTensor(*e),
            TensorEncoding::PerChannel { channels, .. } => {
                FixedEncoding::PerChannel(channels.clone())
            }
            TensorEncoding::Float { bitwidth } => FixedEncoding::Float(*bitwidth),
        }
    }
}

impl FixedEncoding {
    /// The engine's form; `axis` (the model's output-channel axis) is used only if per-channel.
    pub fn with_axis(self, axis: usize) -> TensorEncoding {
        match self {
            FixedEncoding::PerTensor(e) => TensorEncoding::PerTensor(e),
            FixedEncoding::PerChannel(channels) => TensorEncoding::PerChannel { axis, channels },
            FixedEncoding::Float(bitwidth) => TensorEncoding::Float { bitwidth },
        }
    }
}

/// The bits that identify an encoding, so that `Eq`/`Hash` agree (no `0.0 == -0.0` surprises).
fn encoding_key(e: &Encoding) -> (Bitwidth, Schema, u64, u64, u64, i64) {
    (
        e.bitwidth,
        e.schema,
        e.min.to_bits(),
        e.max.to_bits(),
        e.scale.to_bits(),
        e.offset,
    )
}

impl PartialEq for FixedEncoding {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (FixedEncoding::Float(a), FixedEncoding::Float(b)) => a == b,
            (FixedEncoding::PerTensor(_), FixedEncoding::PerTensor(_))
            | (FixedEncoding::PerChannel(_), FixedEncoding::PerChannel(_)) => {
                let (a, b) = (self.encodings(), other.encodings());
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(x, y)| encoding_key(x) == encoding_key(y))
            }
            _ => false,
        }
    }
}

impl Eq for FixedEncoding {}

impl Hash for FixedEncoding {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            FixedEncoding::Float(bits) => bits.hash(state),
            _ => {
                for e in self.encodings() {
                    encoding_key(e).hash(state);
                }
            }
        }
    }
}

/// What an encodings file says about one tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Override {
    /// The encoding is fixed by the file (range given, or float).
    Fixed(FixedEncoding),
    /// Only the bitwidth (and maybe the symmetry) is fixed: the range comes from calibration.
    Calibrated {
        /// Bits to quantize with.
        bitwidth: Bitwidth,
        /// `is_symmetric` when the entry gives it.
        symmetric: Option<bool>,
    },
}

impl Override {
    /// Whether this is an INT32 override: integer at 32 bits.
    pub fn is_int32(&self) -> bool {
        self.bitwidth() == Some(Bitwidth::B32)
    }

    /// Whether the tensor stays floating point.
    pub fn is_float(&self) -> bool {
        matches!(self, Override::Fixed(FixedEncoding::Float(_)))
    }

    /// The integer bitwidth, `None` for float.
    pub fn bitwidth(&self) -> Option<Bitwidth> {
        match self {
            Override::Fixed(fixed) => fixed.encodings().first().map(|e| e.bitwidth),
            Override::Calibrated { bitwidth, .. } => Some(*bitwidth),
        }
    }
}

/// The overrides of one file: activation and parameter sections, each a sorted map from tensor
/// name to [`Override`]. Equal files give equal (and equally hashed) values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Overrides {
    /// `activation_encodings`.
    pub activations: BTreeMap<TensorName, Override>,
    /// `param_encodings` (weights and biases).
    pub parameters: BTreeMap<TensorName, Override>,
}

impl Overrides {
    /// The override of `tensor`, looked up in the parameter section first. AIMET lists constant
    /// initializers that are no op's parameter as activations, so callers should not rely on
    /// the section.
    pub fn get(&self, tensor: &str) -> Option<&Override> {
        self.parameters
            .get(tensor)
            .or_else(|| self.activations.get(tensor))
    }

    /// Names of the tensors with an INT32 override, sorted.
    pub fn int32_tensors(&self) -> BTreeSet<&str> {
        self.activations
            .iter()
            .chain(&self.parameters)
            .filter(|(_, o)| o.is_int32())
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Whether there is no override at all.
    pub fn is_empty(&self) -> bool {
        self.activations.is_empty() && self.parameters.is_empty()
    }
}

/// The tensors of a model that overrides may name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelTensors {
    /// Activation tensors: graph inputs and node outputs.
    pub activations: BTreeSet<TensorName>,
    /// Parameter tensors (initializers and `Constant` outputs) with their output-channel count.
    pub parameters: BTreeMap<TensorName, usize>,
    /// Tensors of the model file that the target's transforms removed (the output of a layer a
    /// BatchNorm was folded into, the BatchNorm's parameters): an override naming one is told
    /// why it is gone rather than that it never existed.
    pub removed: BTreeSet<TensorName>,
}

impl ModelTensors {
    /// The tensors of `graph` that overrides may name, with each parameter's channel count
    /// along its output-channel axis (1 for parameters that are never per-channel).
    pub fn of(graph: &crate::graph::Graph) -> ModelTensors {
        use crate::graph::Role;
        let activations = graph
            .float_activations()
            .map(|t| t.name.as_str().to_string())
            .collect();
        let parameters = graph
            .float_parameters()
            .map(|t| {
                let channels = match (t.role, graph.parameter(t.name.as_str())) {
                    (
                        Role::Weight {
                            output_channel_axis,
                        },
                        Some(data),
                    ) => data.shape.get(output_channel_axis).copied().unwrap_or(1),
                    _ => 1,
                };
                (t.name.as_str().to_string(), channels)
            })
            .collect();
        ModelTensors {
            activations,
            parameters,
            removed: BTreeSet::new(),
        }
    }

    /// These tensors, noting which of `source`'s (the model before its transforms) they lost.
    pub fn removed_from(mut self, source: &ModelTensors) -> ModelTensors {
        self.removed = source
            .activations
            .iter()
            .chain(source.parameters.keys())
            .filter(|name| {
                !self.activations.contains(*name) && !self.parameters.contains_key(*name)
            })
            .cloned()
            .collect();
        self
    }
}

/// An overrides file after parsing: the overrides, the warnings, and the text for diagnostics.
#[derive(Debug, Clone)]
pub struct ParsedOverrides {
    /// The overrides.
    pub overrides: Overrides,
    /// The `version` field, when present.
    pub version: Option<String>,
    /// Things accepted but suspicious, in file order.
    pub warnings: Vec<OverridesWarning>,
    source: OverridesSource,
    /// Where each tensor's name stands, per section, for labels.
    spans: BTreeMap<(Section, TensorName), SourceSpan>,
    /// Entries whose stated scale/offset (or min/max) differ from the recomputed encoding in
    /// `overrides`: the numbers as the file states them ([`ParsedOverrides::as_written`]).
    written: BTreeMap<(Section, TensorName), FixedEncoding>,
}

/// Which section of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Section {
    Activations,
    Parameters,
}

/// Reads and parses the overrides file at `path`; diagnostics name it as `path.display()`.
pub fn read(path: &Path) -> Result<ParsedOverrides, OverridesError> {
    let text = std::fs::read_to_string(path).map_err(|e| OverridesError::io(path, &e))?;
    parse(&path.display().to_string(), text)
}

/// Parses the text of an overrides file; `file` is the name diagnostics show.
pub fn parse(file: &str, text: String) -> Result<ParsedOverrides, OverridesError> {
    json::parse(file, Arc::new(text))
}

impl ParsedOverrides {
    /// The overrides with every encoding exactly as the file states it: an entry's own `scale`
    /// and `offset` where it gives usable ones (with its own `min`/`max` as the range), instead
    /// of the ones [`Encoding::from_override`] recomputes from bitwidth/min/max.
    ///
    /// For evaluating a file as written (`quant eval`); quantizing with overrides follows the
    /// specification and uses [`ParsedOverrides::overrides`]. Where the two differ a
    /// [`WarningKind::ScaleDisagrees`] or [`WarningKind::OffsetDisagrees`] was raised.
    pub fn as_written(&self) -> Overrides {
        let mut out = self.overrides.clone();
        for ((section, name), written) in &self.written {
            let map = match section {
                Section::Activations => &mut out.activations,
                Section::Parameters => &mut out.parameters,
            };
            map.insert(name.clone(), Override::Fixed(written.clone()));
        }
        out
    }

    /// The text under the name diagnostics show.
    pub fn source(&self) -> &OverridesSource {
        &self.source
    }

    /// Checks every named tensor against the model: unknown names (with the nearest existing
    /// names as help), per-channel lists whose length is not the channel count, and several
    /// encodings on a tensor without channels. All problems are returned at once.
    pub fn validate(&self, model: &ModelTensors) -> Result<(), OverridesInvalid> {
        let mut errors = Vec::new();
        let sections = [
            (Section::Activations, &self.overrides.activations),
            (Section::Parameters, &self.overrides.parameters),
        ];
        for (section, map) in sections {
            for (name, over) in map {
                let span = self.spans.get(&(section, name.clone())).copied();
                let channels = match over {
                    Override::Fixed(FixedEncoding::PerChannel(list)) => list.len(),
                    _ => 1,
                };
                let kind = if let Some(&expected) = model.parameters.get(name) {
                    (channels != 1 && channels != expected).then(|| ErrorKind::ChannelCount {
                        tensor: name.clone(),
                        expected,
                        found: channels,
                    })
                } else if model.activations.contains(name) {
                    (channels != 1).then(|| ErrorKind::PerChannelActivation {
                        tensor: name.clone(),
                        found: channels,
                    })
                } else if model.removed.contains(name) {
                    Some(ErrorKind::RemovedByTransform {
                        tensor: name.clone(),
                    })
                } else {
                    Some(ErrorKind::UnknownTensor {
                        tensor: name.clone(),
                        suggestions: nearest_names(name, model),
                    })
                };
                if let Some(kind) = kind {
                    errors.push((span, OverridesError::new(kind, &self.source, span)));
                }
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        // File order reads best; entries without a span go last, by name.
        errors.sort_by_key(|(span, _)| span.map_or(usize::MAX, |s| s.offset()));
        Err(OverridesInvalid {
            file: self.source.name().to_string(),
            errors: errors.into_iter().map(|(_, e)| e).collect(),
        })
    }
}

impl ParsedOverrides {
    /// Checks the INT32 overrides against the specification: an op whose inputs and outputs
    /// are all INT32 runs in int32, which is forbidden for ops with weights or bias and
    /// impossible for ops ONNX has no int32 form of. The error points at the first of the op's
    /// entries in the file.
    pub fn validate_precision(&self, graph: &crate::graph::Graph) -> Result<(), OverridesInvalid> {
        let int32 =
            crate::encoding::Encoding::from_range(0.0, 1.0, Bitwidth::B32, Schema::Asymmetric);
        let Ok(int32) = int32 else {
            return Ok(());
        };
        let activations: BTreeMap<String, crate::encoding::TensorEncoding> = self
            .overrides
            .activations
            .iter()
            .filter(|(_, o)| o.is_int32())
            .map(|(name, _)| {
                (
                    name.clone(),
                    crate::encoding::TensorEncoding::PerTensor(int32),
                )
            })
            .collect();
        if activations.is_empty() {
            return Ok(());
        }
        let int32 = self.overrides.int32_tensors();
        let Err(error) = crate::quantizer::precision::conversions(graph, &activations, &int32)
        else {
            return Ok(());
        };
        let mut entries: Vec<(String, Option<miette::SourceSpan>)> = error
            .tensors()
            .iter()
            .map(|t| {
                let span = self.spans.get(&(Section::Activations, t.clone())).copied();
                (t.clone(), span)
            })
            .collect();
        entries.sort_by_key(|(_, span)| span.map_or(usize::MAX, |s| s.offset()));
        let (tensor, span) = entries.into_iter().next().unwrap_or_default();
        let weighted = matches!(
            error,
            crate::quantizer::precision::PrecisionError::Int32WithParameters { .. }
        );
        let kind = ErrorKind::Int32Op {
            tensor,
            message: error.to_string(),
            weighted,
        };
        Err(OverridesInvalid {
            file: self.source.name().to_string(),
            errors: vec![OverridesError::new(kind, &self.source, span)],
        })
    }
}

/// Up to three of the model's names closest to `name` by edit distance, close enough to be a
/// plausible typo (distance at most a third of the name, and at least 2 allowed).
fn nearest_names(name: &str, model: &ModelTensors) -> Vec<String> {
    let limit = (name.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &String)> = model
        .activations
        .iter()
        .chain(model.parameters.keys())
        .map(|candidate| (strsim::levenshtein(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .collect();
    scored.sort();
    scored.dedup();
    scored.into_iter().take(3).map(|(_, n)| n.clone()).collect()
}

/// The encoding 1.0.0's `scale`/`offset` stand for, min/max derived from them.
pub fn encoding_from_scale_offset(
    scale: f64,
    offset: i64,
    bitwidth: Bitwidth,
    symmetric: bool,
) -> Encoding {
    let offset_f = offset as f64;
    Encoding {
        bitwidth,
        schema: if symmetric {
            Schema::Symmetric
        } else {
            Schema::Asymmetric
        },
        min: offset_f * scale,
        max: (offset_f + bitwidth.steps()) * scale,
        scale,
        offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;

    fn hash_of<T: Hash>(value: &T) -> u64 {
        let mut h = DefaultHasher::new();
        value.hash(&mut h);
        h.finish()
    }

    #[test]
    fn asymmetric_override_recomputes_aimet_entry() {
        // cls `Add@0`, tf_w8a8: AIMET's own scale and offset come back from its min/max.
        let e =
            Encoding::from_override(-5.670985105925915, 12.634093400543811, Bitwidth::B8, false)
                .unwrap();
        assert_eq!(e.offset, -79);
        assert!((e.scale - 0.07178462159399893).abs() <= 1e-15, "{e:?}");
        assert_eq!(e.schema, Schema::Asymmetric);
    }

    #[test]
    fn symmetric_override_keeps_offset_and_covers_range() {
        // |min| > max: the negative side decides, min stays exact.
        let e = Encoding::from_override(
            -0.31984445452690125,
            0.31734566972590983,
            Bitwidth::B8,
            true,
        )
        .unwrap();
        assert_eq!(e.offset, -128);
        assert_eq!(e.scale, 0.31984445452690125 / 128.0);
        assert_eq!(e.min, -0.31984445452690125);
        // A plain [-x, x] range: max decides, the grid covers both ends.
        let e = Encoding::from_override(-1.0, 1.0, Bitwidth::B8, true).unwrap();
        assert_eq!(e.scale, 1.0 / 127.0);
        assert!(e.min <= -1.0 && e.max >= 1.0 - 1e-15, "{e:?}");
        let e = Encoding::from_override(-1.0, 1.0, Bitwidth::B16, true).unwrap();
        assert_eq!(e.offset, -32768);
    }

    #[test]
    fn equality_and_hash_compare_bits() {
        let a = encoding_from_scale_offset(0.0, 0, Bitwidth::B8, false);
        let mut b = a;
        b.scale = -0.0;
        b.min = -0.0;
        let (a, b) = (
            Override::Fixed(FixedEncoding::PerTensor(a)),
            Override::Fixed(FixedEncoding::PerTensor(b)),
        );
        assert_ne!(a, b);
        assert_eq!(a, a.clone());
        assert_eq!(hash_of(&a), hash_of(&a.clone()));
        let one = FixedEncoding::PerChannel(vec![encoding_from_scale_offset(
            0.5,
            -128,
            Bitwidth::B8,
            true,
        )]);
        let tensor = FixedEncoding::PerTensor(one.encodings()[0]);
        assert_ne!(one, tensor, "one channel is not the same as per-tensor");
    }

    #[test]
    fn nearest_names_are_close_ones_only() {
        let model = ModelTensors {
            activations: ["conv1_1", "conv2_1", "relu_0", "data_0"]
                .map(String::from)
                .into(),
            parameters: [("conv1_w_0".to_string(), 8)].into(),
            removed: Default::default(),
        };
        assert_eq!(nearest_names("conv9_1", &model), ["conv1_1", "conv2_1"]);
        assert_eq!(
            nearest_names("conv1_w", &model),
            ["conv1_1", "conv1_w_0", "conv2_1"]
        );
        assert!(nearest_names("completely_else", &model).is_empty());
    }
}
