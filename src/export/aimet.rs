//! AIMET encodings JSON, versions 0.6.1 (the default) and 1.0.0, laid out as AIMET's
//! `QuantizationSimModel.export()` writes them: keys sorted, 4-space indent, offsets as floats
//! (`-128.0`), `is_symmetric` as the strings "True"/"False" in 0.6.1 entries and as booleans in
//! 1.0.0. Floats are printed as the shortest text that reads back to the same `f64` (AIMET prints
//! Python's `repr`, which differs only in exponent spelling: `1e-07` there, `1e-7` here).
//!
//! The reader for this format is [`crate::overrides`]; our own output reads back to the same
//! encodings. This module only formats: it computes no encoding.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use crate::encoding::{Bitwidth, Encoding};
use crate::overrides::{FixedEncoding, TensorName};

/// Which AIMET encodings layout to write (`--encoding_version`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EncodingVersion {
    /// `"0.6.1"`: dictionaries keyed by tensor name, with min/max. What qairt-converter has read
    /// the longest.
    #[default]
    V0_6_1,
    /// `"1.0.0"`: lists of named entries with scale/offset lists and no min/max.
    V1_0_0,
}

impl EncodingVersion {
    /// Every version we write.
    pub const ALL: [EncodingVersion; 2] = [EncodingVersion::V0_6_1, EncodingVersion::V1_0_0];

    /// The `version` string in the file.
    pub const fn as_str(self) -> &'static str {
        match self {
            EncodingVersion::V0_6_1 => "0.6.1",
            EncodingVersion::V1_0_0 => "1.0.0",
        }
    }
}

impl fmt::Display for EncodingVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `--encoding_version` value that is not one we write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("encoding version `{0}` cannot be written (use 0.6.1 or 1.0.0)")]
pub struct UnknownEncodingVersion(pub String);

impl std::str::FromStr for EncodingVersion {
    type Err = UnknownEncodingVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "0.6.1" => Ok(EncodingVersion::V0_6_1),
            "1.0.0" => Ok(EncodingVersion::V1_0_0),
            other => Err(UnknownEncodingVersion(other.to_string())),
        }
    }
}

/// The file's `quantizer_args` block: the settings the encodings were made with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuantizerArgs {
    /// Default activation bitwidth (`--act_bitwidth`).
    pub activation_bitwidth: Bitwidth,
    /// Default weight bitwidth (`--weights_bitwidth`).
    pub param_bitwidth: Bitwidth,
    /// Whether parameters use a symmetric schema.
    pub is_symmetric: bool,
    /// `--use_per_channel_quantization`.
    pub per_channel_quantization: bool,
    /// The calibration, in AIMET's words: `min_max`, `post_training_tf_enhanced`, ...
    pub quant_scheme: String,
}

impl QuantizerArgs {
    /// The block for encodings made with `settings`, in AIMET's words.
    pub fn for_settings(settings: &crate::quantizer::QuantizerSettings) -> QuantizerArgs {
        use crate::manifest::CalibrationMethod;
        QuantizerArgs {
            activation_bitwidth: settings.act_bitwidth,
            param_bitwidth: settings.weights_bitwidth,
            is_symmetric: settings.param_schema.is_symmetric()
                || settings.per_channel
                || settings.per_row,
            per_channel_quantization: settings.per_channel,
            quant_scheme: match settings.act_calibration {
                CalibrationMethod::MinMax => "min_max",
                CalibrationMethod::Sqnr => "post_training_tf_enhanced",
                CalibrationMethod::Percentile => "post_training_percentile",
                CalibrationMethod::Mse => "mse",
                CalibrationMethod::Entropy => "entropy",
                CalibrationMethod::Adjusted => "adjusted",
            }
            .to_string(),
        }
    }
}

impl Default for QuantizerArgs {
    /// qairt-quantizer's defaults: 8/8 bit, asymmetric, per-tensor, min-max.
    fn default() -> Self {
        QuantizerArgs {
            activation_bitwidth: Bitwidth::B8,
            param_bitwidth: Bitwidth::B8,
            is_symmetric: false,
            per_channel_quantization: false,
            quant_scheme: "min_max".to_string(),
        }
    }
}

/// Everything an AIMET encodings file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AimetEncodings {
    /// `activation_encodings`.
    pub activations: BTreeMap<TensorName, FixedEncoding>,
    /// `param_encodings`.
    pub parameters: BTreeMap<TensorName, FixedEncoding>,
    /// `quantizer_args`.
    pub quantizer_args: QuantizerArgs,
}

impl AimetEncodings {
    /// The file's text (no trailing newline, as AIMET). Equal values give equal bytes.
    ///
    /// Each tensor's entry is formatted on its own ([`entry_fragment`]) and the file assembled
    /// around them ([`assemble`]): a build keeps every tensor's fragment and, after an edit,
    /// formats only the tensors that changed.
    pub fn to_json(&self, version: EncodingVersion) -> String {
        let fragments = |map: &BTreeMap<TensorName, FixedEncoding>| -> Vec<String> {
            map.iter()
                .map(|(name, fixed)| entry_fragment(name, fixed, version))
                .collect()
        };
        assemble(
            &fragments(&self.activations),
            &fragments(&self.parameters),
            &self.quantizer_args,
            version,
        )
    }

    /// Writes [`AimetEncodings::to_json`] to `path` atomically ([`crate::atomic::write`]), so a
    /// failed write never leaves half a file behind.
    pub fn write(&self, path: &Path, version: EncodingVersion) -> std::io::Result<()> {
        crate::atomic::write(path, self.to_json(version).as_bytes())
    }
}

/// Pretty-prints `value` with AIMET's 4-space indent.
fn pretty<T: Serialize + ?Sized>(value: &T, capacity: usize) -> String {
    let mut out = Vec::with_capacity(capacity);
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    value
        .serialize(&mut serializer)
        .expect("serializing to memory cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// serde_json's pretty layout (4-space indent) starting `level` levels deep: how a tensor's
/// entry is written straight into its place in the file.
struct Nested {
    level: usize,
    has_value: bool,
}

impl Nested {
    fn indent<W: ?Sized + std::io::Write>(&self, writer: &mut W) -> std::io::Result<()> {
        for _ in 0..self.level {
            writer.write_all(b"    ")?;
        }
        Ok(())
    }

    fn open<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        bracket: &[u8],
    ) -> std::io::Result<()> {
        self.level += 1;
        self.has_value = false;
        writer.write_all(bracket)
    }

    fn close<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        bracket: &[u8],
    ) -> std::io::Result<()> {
        self.level -= 1;
        if self.has_value {
            writer.write_all(b"\n")?;
            self.indent(writer)?;
        }
        writer.write_all(bracket)
    }

    fn item<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        writer.write_all(if first { b"\n" } else { b",\n" })?;
        self.indent(writer)
    }
}

impl serde_json::ser::Formatter for Nested {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.open(writer, b"[")
    }

    fn end_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.close(writer, b"]")
    }

    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.item(writer, first)
    }

    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, _: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.open(writer, b"{")
    }

    fn end_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.close(writer, b"}")
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.item(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }

    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, _: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

/// Writes `value` into `out` as it reads two levels deep (inside a section of the file).
fn nested<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let formatter = Nested {
        level: 2,
        has_value: false,
    };
    let mut serializer = serde_json::Serializer::with_formatter(out, formatter);
    value
        .serialize(&mut serializer)
        .expect("serializing to memory cannot fail");
}

/// One tensor's entry as it sits in its section of the file: `"name": [ ... ]` (0.6.1) or the
/// named object (1.0.0), indented, without a separator. [`assemble`] joins them.
pub fn entry_fragment(name: &str, fixed: &FixedEncoding, version: EncodingVersion) -> String {
    let mut out = Vec::with_capacity(256 * fixed.encodings().len().max(1));
    out.extend_from_slice(b"        ");
    match version {
        EncodingVersion::V0_6_1 => {
            serde_json::to_writer(&mut out, name).expect("a string always serializes");
            out.extend_from_slice(b": ");
            nested(&mut out, &DictionaryEntries(fixed));
        }
        EncodingVersion::V1_0_0 => nested(&mut out, &ListEntry { name, fixed }),
    }
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// The file from its sections' [`entry_fragment`]s, each section in name order: byte for byte
/// what serializing the whole file at once gives.
pub fn assemble<F: AsRef<str>>(
    activations: &[F],
    parameters: &[F],
    args: &QuantizerArgs,
    version: EncodingVersion,
) -> String {
    let (open, close, empty) = match version {
        EncodingVersion::V0_6_1 => ("{", "}", "{}"),
        EncodingVersion::V1_0_0 => ("[", "]", "[]"),
    };
    let size: usize = activations
        .iter()
        .chain(parameters)
        .map(|f| f.as_ref().len() + 2)
        .sum();
    let mut out = String::with_capacity(size + 1024);
    out.push_str("{\n");
    for (key, fragments) in [
        ("activation_encodings", activations),
        ("param_encodings", parameters),
    ] {
        out.push_str("    \"");
        out.push_str(key);
        out.push_str("\": ");
        if fragments.is_empty() {
            out.push_str(empty);
        } else {
            out.push_str(open);
            for (i, fragment) in fragments.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.push_str(fragment.as_ref());
            }
            out.push_str("\n    ");
            out.push_str(close);
        }
        out.push_str(",\n");
    }
    // The rest of the file, from a map of the remaining keys: without its opening line it is
    // exactly the file's tail.
    let tail = pretty(&Tail { args, version }, 512);
    out.push_str(tail.split_once('\n').map_or("", |(_, rest)| rest));
    out
}

/// The keys after the two sections, in the file's (alphabetical) order.
struct Tail<'a> {
    args: &'a QuantizerArgs,
    version: EncodingVersion,
}

impl Serialize for Tail<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("producer", &Producer)?;
        map.serialize_entry("quantizer_args", &Args(self.args))?;
        map.serialize_entry("version", self.version.as_str())?;
        map.end()
    }
}

struct Producer;

impl Serialize for Producer {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("package", "quant")?;
        map.serialize_entry("version", env!("CARGO_PKG_VERSION"))?;
        map.end()
    }
}

struct Args<'a>(&'a QuantizerArgs);

impl Serialize for Args<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let args = self.0;
        let mut map = serializer.serialize_map(Some(6))?;
        map.serialize_entry("activation_bitwidth", &args.activation_bitwidth.bits())?;
        map.serialize_entry("dtype", "int")?;
        map.serialize_entry("is_symmetric", &args.is_symmetric)?;
        map.serialize_entry("param_bitwidth", &args.param_bitwidth.bits())?;
        map.serialize_entry("per_channel_quantization", &args.per_channel_quantization)?;
        map.serialize_entry("quant_scheme", &args.quant_scheme)?;
        map.end()
    }
}

/// A float that JSON can hold; encodings are finite by construction, this keeps a stray NaN
/// from becoming `null` silently in release builds' eyes.
fn number(x: f64) -> f64 {
    debug_assert!(x.is_finite(), "non-finite value in an encoding: {x}");
    x
}

fn python_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// 0.6.1: the list of entries of one tensor.
struct DictionaryEntries<'a>(&'a FixedEncoding);

impl Serialize for DictionaryEntries<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            FixedEncoding::Float(bits) => {
                let mut seq = serializer.serialize_seq(Some(1))?;
                seq.serialize_element(&FloatEntry(bits.bits()))?;
                seq.end()
            }
            fixed => serializer.collect_seq(fixed.encodings().iter().map(DictionaryEntry)),
        }
    }
}

struct FloatEntry(u32);

impl Serialize for FloatEntry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("bitwidth", &self.0)?;
        map.serialize_entry("dtype", "float")?;
        map.end()
    }
}

struct DictionaryEntry<'a>(&'a Encoding);

impl Serialize for DictionaryEntry<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut map = serializer.serialize_map(Some(7))?;
        map.serialize_entry("bitwidth", &e.bitwidth.bits())?;
        map.serialize_entry("dtype", "int")?;
        map.serialize_entry("is_symmetric", python_bool(e.schema.is_symmetric()))?;
        map.serialize_entry("max", &number(e.max))?;
        map.serialize_entry("min", &number(e.min))?;
        map.serialize_entry("offset", &number(e.offset as f64))?;
        map.serialize_entry("scale", &number(e.scale))?;
        map.end()
    }
}

/// 1.0.0: one named entry.
struct ListEntry<'a> {
    name: &'a str,
    fixed: &'a FixedEncoding,
}

impl Serialize for ListEntry<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let encodings = match self.fixed {
            FixedEncoding::Float(bits) => {
                let mut map = serializer.serialize_map(Some(4))?;
                map.serialize_entry("bw", &bits.bits())?;
                map.serialize_entry("dtype", "FLOAT")?;
                map.serialize_entry("enc_type", "PER_TENSOR")?;
                map.serialize_entry("name", self.name)?;
                return map.end();
            }
            fixed => fixed.encodings(),
        };
        let enc_type = match self.fixed {
            FixedEncoding::PerChannel(_) => "PER_CHANNEL",
            _ => "PER_TENSOR",
        };
        let mut map = serializer.serialize_map(Some(7))?;
        map.serialize_entry("bw", &encodings[0].bitwidth.bits())?;
        map.serialize_entry("dtype", "INT")?;
        map.serialize_entry("enc_type", enc_type)?;
        map.serialize_entry("is_sym", &encodings[0].schema.is_symmetric())?;
        map.serialize_entry("name", self.name)?;
        map.serialize_entry(
            "offset",
            &Numbers(encodings.iter().map(|e| number(e.offset as f64))),
        )?;
        map.serialize_entry("scale", &Numbers(encodings.iter().map(|e| number(e.scale))))?;
        map.end()
    }
}

/// A list of floats produced on the fly.
struct Numbers<I>(I);

impl<I: Iterator<Item = f64> + Clone> Serialize for Numbers<I> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::FloatBitwidth;
    use crate::encoding::Schema;

    fn sample() -> AimetEncodings {
        let asym = Encoding::from_override(-1.0, 1.0, Bitwidth::B8, false).unwrap();
        let sym = Encoding::from_override(-0.5, 0.25, Bitwidth::B8, true).unwrap();
        let mut out = AimetEncodings::default();
        out.activations
            .insert("x".into(), FixedEncoding::PerTensor(asym));
        out.activations
            .insert("conv2_1".into(), FixedEncoding::Float(FloatBitwidth::F16));
        out.parameters
            .insert("w".into(), FixedEncoding::PerChannel(vec![sym, sym]));
        out
    }

    #[test]
    fn v061_layout() {
        insta::assert_snapshot!(sample().to_json(EncodingVersion::V0_6_1));
    }

    #[test]
    fn v100_layout() {
        insta::assert_snapshot!(sample().to_json(EncodingVersion::V1_0_0));
    }

    #[test]
    fn whole_floats_print_with_a_point_and_exponents_round_trip() {
        let tiny = Encoding {
            bitwidth: Bitwidth::B8,
            schema: Schema::Asymmetric,
            min: 0.0,
            max: 3.039836883544922e-05,
            scale: 1.1920928955078125e-07,
            offset: 0,
        };
        let mut out = AimetEncodings::default();
        out.activations
            .insert("c".into(), FixedEncoding::PerTensor(tiny));
        let text = out.to_json(EncodingVersion::V0_6_1);
        assert!(text.contains("\"offset\": 0.0,"), "{text}");
        assert!(text.contains("\"scale\": 1.1920928955078125e-7"), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        let scale = back["activation_encodings"]["c"][0]["scale"]
            .as_f64()
            .unwrap();
        assert_eq!(scale.to_bits(), tiny.scale.to_bits());
    }

    /// The assembled text is exactly what pretty-printing the whole document at once gives
    /// (parsed back and printed again with the same formatter), empty sections included.
    #[test]
    fn assembled_fragments_equal_the_whole_document_printed_at_once() {
        let empty = AimetEncodings::default();
        let mut only_params = sample();
        only_params.activations.clear();
        let mut escaped = sample();
        escaped.activations.insert(
            "odd \"name\"\\ é/1\t".into(),
            FixedEncoding::Float(FloatBitwidth::F32),
        );
        for encodings in [sample(), empty, only_params, escaped] {
            for version in EncodingVersion::ALL {
                let text = encodings.to_json(version);
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(text, pretty(&value, 0), "{version}");
            }
        }
    }

    #[test]
    fn version_names() {
        assert_eq!(
            "1.0.0".parse::<EncodingVersion>(),
            Ok(EncodingVersion::V1_0_0)
        );
        assert_eq!(EncodingVersion::default().to_string(), "0.6.1");
        assert!("2.0.0".parse::<EncodingVersion>().is_err());
    }
}
