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
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value, json};

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
    pub fn to_json(&self, version: EncodingVersion) -> String {
        let section = |map: &BTreeMap<TensorName, FixedEncoding>| match version {
            EncodingVersion::V0_6_1 => Value::Object(
                map.iter()
                    .map(|(name, fixed)| (name.clone(), dictionary_entries(fixed)))
                    .collect(),
            ),
            EncodingVersion::V1_0_0 => Value::Array(
                map.iter()
                    .map(|(name, fixed)| list_entry(name, fixed))
                    .collect(),
            ),
        };
        let args = &self.quantizer_args;
        // `json!` builds maps in the order written here (serde_json's preserve_order):
        // alphabetical, as AIMET's sort_keys.
        let top = json!({
            "activation_encodings": section(&self.activations),
            "param_encodings": section(&self.parameters),
            "producer": {
                "package": "quant",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "quantizer_args": {
                "activation_bitwidth": args.activation_bitwidth.bits(),
                "dtype": "int",
                "is_symmetric": args.is_symmetric,
                "param_bitwidth": args.param_bitwidth.bits(),
                "per_channel_quantization": args.per_channel_quantization,
                "quant_scheme": args.quant_scheme,
            },
            "version": version.as_str(),
        });
        let mut out = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
        top.serialize(&mut serializer)
            .expect("a JSON value always serializes to memory");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    /// Writes [`AimetEncodings::to_json`] to `path` through a temporary file in the same folder
    /// and a rename, so a failed write never leaves half a file behind.
    pub fn write(&self, path: &Path, version: EncodingVersion) -> std::io::Result<()> {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "encodings".to_string());
        let temporary = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
        let written = (|| {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(self.to_json(version).as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written
    }
}

/// A float that JSON can hold; encodings are finite by construction, this keeps a stray NaN
/// from becoming `null` silently in release builds' eyes.
fn number(x: f64) -> Value {
    debug_assert!(x.is_finite(), "non-finite value in an encoding: {x}");
    Value::from(x)
}

fn python_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// 0.6.1: the list of entries of one tensor.
fn dictionary_entries(fixed: &FixedEncoding) -> Value {
    match fixed {
        FixedEncoding::Float(bits) => json!([{ "bitwidth": bits.bits(), "dtype": "float" }]),
        _ => Value::Array(fixed.encodings().iter().map(dictionary_entry).collect()),
    }
}

fn dictionary_entry(e: &Encoding) -> Value {
    json!({
        "bitwidth": e.bitwidth.bits(),
        "dtype": "int",
        "is_symmetric": python_bool(e.schema.is_symmetric()),
        "max": number(e.max),
        "min": number(e.min),
        "offset": number(e.offset as f64),
        "scale": number(e.scale),
    })
}

/// 1.0.0: one named entry.
fn list_entry(name: &str, fixed: &FixedEncoding) -> Value {
    let encodings = match fixed {
        FixedEncoding::Float(bits) => {
            return json!({
                "bw": bits.bits(),
                "dtype": "FLOAT",
                "enc_type": "PER_TENSOR",
                "name": name,
            });
        }
        _ => fixed.encodings(),
    };
    let enc_type = match fixed {
        FixedEncoding::PerChannel(_) => "PER_CHANNEL",
        _ => "PER_TENSOR",
    };
    let mut entry = Map::new();
    entry.insert("bw".into(), encodings[0].bitwidth.bits().into());
    entry.insert("dtype".into(), "INT".into());
    entry.insert("enc_type".into(), enc_type.into());
    entry.insert("is_sym".into(), encodings[0].schema.is_symmetric().into());
    entry.insert("name".into(), name.into());
    entry.insert(
        "offset".into(),
        encodings.iter().map(|e| number(e.offset as f64)).collect(),
    );
    entry.insert(
        "scale".into(),
        encodings.iter().map(|e| number(e.scale)).collect(),
    );
    Value::Object(entry)
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
        let back: Value = serde_json::from_str(&text).unwrap();
        let scale = back["activation_encodings"]["c"][0]["scale"]
            .as_f64()
            .unwrap();
        assert_eq!(scale.to_bits(), tiny.scale.to_bits());
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
