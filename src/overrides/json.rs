//! The two JSON layouts of AIMET encodings files, turned into [`Override`]s: the dictionary of
//! 0.4–0.6.1 and the list of 1.0.0. Every check that needs only the file happens here, once.

use std::collections::BTreeMap;
use std::sync::Arc;

use miette::{NamedSource, SourceSpan};
use serde_json::{Map, Value};

use super::diagnostic::{NameAt, find_name, section_offset, span_at};
use super::{
    ErrorKind, FixedEncoding, Override, Overrides, OverridesError, OverridesSource,
    OverridesWarning, ParsedOverrides, Section, WarningKind, encoding_from_scale_offset,
};
use crate::encoding::{Bitwidth, Encoding, EncodingError, FloatBitwidth};

/// Relative difference above which a given scale "disagrees" with the recomputed one. AIMET's
/// own files agree to about 1e-15; 1e-6 is the precision of a float32 scale.
const SCALE_TOLERANCE: f64 = 1e-6;

/// The two layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// 0.4 to 0.6.1: `{"tensor": [entry, ...]}`.
    Dictionary,
    /// 1.0.0: `[{"name": "tensor", ...}, ...]`.
    List,
}

const SECTIONS: [(&str, Section); 2] = [
    ("activation_encodings", Section::Activations),
    ("param_encodings", Section::Parameters),
];

pub(super) fn parse(file: &str, text: Arc<String>) -> Result<ParsedOverrides, OverridesError> {
    let source: OverridesSource = NamedSource::new(file, Arc::clone(&text)).with_language("json");
    let top: Value = serde_json::from_str(&text).map_err(|e| {
        let message = e.to_string();
        // serde_json appends " at line L column C"; the span shows that already.
        let message = match message.rfind(" at line ") {
            Some(cut) => message[..cut].to_string(),
            None => message,
        };
        let span = span_at(&text, e.line(), e.column());
        OverridesError::new(ErrorKind::MalformedJson(message), &source, Some(span))
    })?;
    let not_encodings =
        |why: &str| OverridesError::new(ErrorKind::NotEncodings(why.into()), &source, None);
    let Value::Object(top) = top else {
        return Err(not_encodings("the top level is not an object"));
    };

    let version = match top.get("version") {
        None => None,
        Some(Value::String(v)) => Some(v.clone()),
        Some(_) => return Err(not_encodings("`version` is not a string")),
    };
    let declared = match version.as_deref() {
        None => None,
        Some(v) if v.starts_with("0.") => Some(Layout::Dictionary),
        Some("1.0.0") => Some(Layout::List),
        Some(v) => {
            let span = find_name(&text, 0, "\"version\"", NameAt::Key);
            return Err(OverridesError::new(
                ErrorKind::UnsupportedVersion(v.to_string()),
                &source,
                span,
            ));
        }
    };

    let mut parsed = ParsedOverrides {
        overrides: Overrides::default(),
        version,
        warnings: Vec::new(),
        source: source.clone(),
        spans: BTreeMap::new(),
        written: BTreeMap::new(),
    };
    if SECTIONS.iter().all(|(key, _)| !top.contains_key(*key)) {
        return Err(not_encodings(
            "neither `activation_encodings` nor `param_encodings` is present",
        ));
    }
    for (key, section) in SECTIONS {
        let Some(value) = top.get(key) else {
            parsed.warnings.push(OverridesWarning::new(
                WarningKind::MissingSection(key),
                &source,
                None,
            ));
            continue;
        };
        let found = match value {
            Value::Object(_) => Layout::Dictionary,
            Value::Array(_) => Layout::List,
            _ => {
                return Err(not_encodings(&format!(
                    "`{key}` is neither an object (0.6.1) nor a list (1.0.0)"
                )));
            }
        };
        if let Some(declared) = declared
            && declared != found
        {
            let shape = |l| match l {
                Layout::Dictionary => "an object (the 0.6.1 layout)",
                Layout::List => "a list (the 1.0.0 layout)",
            };
            let why = format!(
                "`{key}` is {}, but `version` says {}",
                shape(found),
                parsed.version.as_deref().unwrap_or_default()
            );
            let span = find_name(&text, 0, &format!("\"{key}\""), NameAt::Key);
            return Err(OverridesError::new(
                ErrorKind::NotEncodings(why),
                &source,
                span,
            ));
        }
        let mut cursor = Cursor {
            text: &text,
            start: section_offset(&text, key).unwrap_or(0),
            next: 0,
        };
        cursor.next = cursor.start;
        match value {
            Value::Object(map) => {
                for (name, entries) in map {
                    let span = cursor.find(name, NameAt::Key);
                    let mut entry = Entry::new(name, span, &source, &mut parsed.warnings);
                    let over = entry.dictionary_override(entries)?;
                    if let Some(written) = entry.written.take() {
                        parsed.written.insert((section, name.clone()), written);
                    }
                    parsed
                        .spans
                        .extend(span.map(|s| ((section, name.clone()), s)));
                    insert(&mut parsed, section, name.clone(), over, span)?;
                }
            }
            Value::Array(list) => {
                for (index, item) in list.iter().enumerate() {
                    let (name, over, span) =
                        list_override(item, index, &mut cursor, &source, &mut parsed.warnings)?;
                    if let Some(span) = span {
                        parsed.spans.entry((section, name.clone())).or_insert(span);
                    }
                    insert(&mut parsed, section, name, over, span)?;
                }
            }
            _ => unreachable!("checked above"),
        }
    }
    Ok(parsed)
}

fn insert(
    parsed: &mut ParsedOverrides,
    section: Section,
    name: String,
    over: Override,
    span: Option<SourceSpan>,
) -> Result<(), OverridesError> {
    let map = match section {
        Section::Activations => &mut parsed.overrides.activations,
        Section::Parameters => &mut parsed.overrides.parameters,
    };
    if map.contains_key(&name) {
        return Err(OverridesError::new(
            ErrorKind::Duplicate(name),
            &parsed.source,
            span,
        ));
    }
    map.insert(name, over);
    Ok(())
}

/// Finds tensor names in file order, so a repeated name gets the span of its own occurrence.
struct Cursor<'t> {
    text: &'t str,
    start: usize,
    next: usize,
}

impl Cursor<'_> {
    fn find(&mut self, name: &str, at: NameAt) -> Option<SourceSpan> {
        let quoted = serde_json::to_string(name).ok()?;
        let span = find_name(self.text, self.next, &quoted, at)
            .or_else(|| find_name(self.text, self.start, &quoted, at))?;
        self.next = span.offset() + span.len();
        Some(span)
    }
}

/// One 1.0.0 list item: its name, its override and the name's span.
fn list_override(
    item: &Value,
    index: usize,
    cursor: &mut Cursor<'_>,
    source: &OverridesSource,
    warnings: &mut Vec<OverridesWarning>,
) -> Result<(String, Override, Option<SourceSpan>), OverridesError> {
    let unnamed = format!("#{index}");
    let Some(object) = item.as_object() else {
        let mut entry = Entry::new(&unnamed, None, source, warnings);
        return Err(entry.invalid(format!("entry {index} is {}, not an object", kind_of(item))));
    };
    let Some(name) = object.get("name").and_then(Value::as_str) else {
        let mut entry = Entry::new(&unnamed, None, source, warnings);
        return Err(entry.invalid(format!("entry {index} has no string `name`")));
    };
    let span = cursor.find(name, NameAt::NameValue);
    let mut entry = Entry::new(name, span, source, warnings);
    let over = entry.list_override(object)?;
    Ok((name.to_string(), over, span))
}

/// Integer or float, as the entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    Int,
    Float,
}

/// One 0.6.1 entry's fields, read but not yet checked against each other.
struct DictionaryEntry {
    bitwidth: i64,
    dtype: Dtype,
    min: Option<f64>,
    max: Option<f64>,
    scale: Option<f64>,
    offset: Option<f64>,
    symmetric: Option<bool>,
}

/// Reads one tensor's entries, with what diagnostics need to point at it.
struct Entry<'a> {
    tensor: &'a str,
    span: Option<SourceSpan>,
    source: &'a OverridesSource,
    warnings: &'a mut Vec<OverridesWarning>,
    /// The encoding as the entry states it, when its own scale/offset (or min/max) are not what
    /// the recomputation gave: what an evaluation simulates.
    written: Option<FixedEncoding>,
}

/// The encoding an entry with a range states: its own scale and offset when it gives usable
/// ones (a finite positive scale, an integer offset), with its own min/max as the range; the
/// recomputed `encoding` where it does not. Bitwidth and schema are the recomputation's.
fn as_written(entry: &DictionaryEntry, encoding: &Encoding) -> Encoding {
    let (Some(scale), Some(offset)) = (entry.scale, entry.offset) else {
        return *encoding;
    };
    if !(scale.is_finite() && scale > 0.0 && offset.fract() == 0.0 && offset.abs() <= 2f64.powi(33))
    {
        return *encoding;
    }
    let offset = offset as i64;
    let steps = encoding.bitwidth.steps();
    Encoding {
        min: entry.min.unwrap_or(offset as f64 * scale),
        max: entry.max.unwrap_or((offset as f64 + steps) * scale),
        scale,
        offset,
        ..*encoding
    }
}

/// Whether two encodings are the same numbers, bit for bit.
fn same_bits(a: &Encoding, b: &Encoding) -> bool {
    (
        a.min.to_bits(),
        a.max.to_bits(),
        a.scale.to_bits(),
        a.offset,
    ) == (
        b.min.to_bits(),
        b.max.to_bits(),
        b.scale.to_bits(),
        b.offset,
    )
}

impl<'a> Entry<'a> {
    fn new(
        tensor: &'a str,
        span: Option<SourceSpan>,
        source: &'a OverridesSource,
        warnings: &'a mut Vec<OverridesWarning>,
    ) -> Self {
        Entry {
            tensor,
            span,
            source,
            warnings,
            written: None,
        }
    }

    fn error(&self, kind: ErrorKind) -> OverridesError {
        OverridesError::new(kind, self.source, self.span)
    }

    fn invalid(&mut self, problem: impl Into<String>) -> OverridesError {
        self.error(ErrorKind::InvalidEntry {
            tensor: self.tensor.to_string(),
            problem: problem.into(),
        })
    }

    fn warn(&mut self, kind: WarningKind) {
        self.warnings
            .push(OverridesWarning::new(kind, self.source, self.span));
    }

    fn int_bitwidth(&self, bits: i64) -> Result<Bitwidth, OverridesError> {
        u32::try_from(bits)
            .ok()
            .and_then(|b| Bitwidth::new(b).ok())
            .ok_or_else(|| {
                self.error(ErrorKind::InvalidBitwidth {
                    tensor: self.tensor.to_string(),
                    bitwidth: bits,
                    dtype: "int",
                })
            })
    }

    fn float_bitwidth(&self, bits: i64) -> Result<FloatBitwidth, OverridesError> {
        u32::try_from(bits)
            .ok()
            .and_then(FloatBitwidth::new)
            .ok_or_else(|| {
                self.error(ErrorKind::InvalidBitwidth {
                    tensor: self.tensor.to_string(),
                    bitwidth: bits,
                    dtype: "float",
                })
            })
    }

    fn range_error(&self, error: EncodingError) -> OverridesError {
        let tensor = self.tensor.to_string();
        self.error(match error {
            EncodingError::Inverted { min, max } => ErrorKind::Inverted { tensor, min, max },
            EncodingError::NotFinite(value) => ErrorKind::NotFinite {
                tensor,
                field: "range bound",
                value,
                positive: "",
            },
            other => ErrorKind::InvalidEntry {
                tensor,
                problem: other.to_string(),
            },
        })
    }

    // ---- fields -------------------------------------------------------------------------

    fn integer(
        &mut self,
        object: &Map<String, Value>,
        key: &str,
    ) -> Result<Option<i64>, OverridesError> {
        match object.get(key) {
            None => Ok(None),
            Some(value) => match value.as_i64() {
                Some(n) => Ok(Some(n)),
                None => match value.as_f64() {
                    Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => Ok(Some(x as i64)),
                    _ => {
                        Err(self.invalid(format!("`{key}` is {}, not an integer", kind_of(value))))
                    }
                },
            },
        }
    }

    fn number(
        &mut self,
        object: &Map<String, Value>,
        key: &str,
    ) -> Result<Option<f64>, OverridesError> {
        match object.get(key) {
            None => Ok(None),
            Some(value) => value.as_f64().map(Some).ok_or_else(|| {
                self.invalid(format!("`{key}` is {}, not a number", kind_of(value)))
            }),
        }
    }

    fn boolean(
        &mut self,
        object: &Map<String, Value>,
        key: &str,
    ) -> Result<Option<bool>, OverridesError> {
        match object.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            // AIMET 0.6.1 writes Python's str(bool).
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(value) => Err(self.invalid(format!(
                "`{key}` is {}, expected \"True\", \"False\" or a boolean",
                kind_of(value)
            ))),
        }
    }

    fn dtype(&mut self, object: &Map<String, Value>) -> Result<Dtype, OverridesError> {
        match object.get("dtype") {
            None => Ok(Dtype::Int),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("int") => Ok(Dtype::Int),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("float") => Ok(Dtype::Float),
            Some(value) => Err(self.invalid(format!(
                "`dtype` is {}, expected \"int\" or \"float\"",
                kind_of(value)
            ))),
        }
    }

    // ---- 0.6.1 --------------------------------------------------------------------------

    fn dictionary_entry(
        &mut self,
        value: &Value,
        index: usize,
    ) -> Result<DictionaryEntry, OverridesError> {
        let Some(object) = value.as_object() else {
            return Err(self.invalid(format!(
                "entry {index} is {}, not an object",
                kind_of(value)
            )));
        };
        let Some(bitwidth) = self.integer(object, "bitwidth")? else {
            return Err(self.invalid(format!("entry {index} has no `bitwidth`")));
        };
        Ok(DictionaryEntry {
            bitwidth,
            dtype: self.dtype(object)?,
            min: self.number(object, "min")?,
            max: self.number(object, "max")?,
            scale: self.number(object, "scale")?,
            offset: self.number(object, "offset")?,
            symmetric: self.boolean(object, "is_symmetric")?,
        })
    }

    fn dictionary_override(&mut self, value: &Value) -> Result<Override, OverridesError> {
        let Some(list) = value.as_array() else {
            return Err(self.invalid(format!(
                "expected a list of encodings, found {}",
                kind_of(value)
            )));
        };
        let entries = list
            .iter()
            .enumerate()
            .map(|(i, v)| self.dictionary_entry(v, i))
            .collect::<Result<Vec<_>, _>>()?;
        match entries.as_slice() {
            [] => Err(self.invalid("the list of encodings is empty")),
            [entry] => self.dictionary_single(entry),
            _ => self.dictionary_per_channel(&entries),
        }
    }

    fn dictionary_single(&mut self, entry: &DictionaryEntry) -> Result<Override, OverridesError> {
        if entry.dtype == Dtype::Float {
            let bits = self.float_bitwidth(entry.bitwidth)?;
            return Ok(Override::Fixed(FixedEncoding::Float(bits)));
        }
        let bitwidth = self.int_bitwidth(entry.bitwidth)?;
        let symmetric = entry.symmetric.unwrap_or(false);
        let encoding = match (entry.min, entry.max) {
            (Some(min), Some(max)) => {
                let encoding = Encoding::from_override(min, max, bitwidth, symmetric)
                    .map_err(|e| self.range_error(e))?;
                self.compare_given(entry, &encoding, "");
                let written = as_written(entry, &encoding);
                if !same_bits(&written, &encoding) {
                    self.written = Some(FixedEncoding::PerTensor(written));
                }
                encoding
            }
            (Some(_), None) => return Err(self.invalid("`min` is given without `max`")),
            (None, Some(_)) => return Err(self.invalid("`max` is given without `min`")),
            (None, None) => match (entry.scale, entry.offset) {
                // Not in the seed, but what 1.0.0 carries: accept a grid without a range.
                (Some(scale), Some(offset)) => {
                    self.grid_from_scale_offset(scale, offset, bitwidth, symmetric)?
                }
                _ => {
                    return Ok(Override::Calibrated {
                        bitwidth,
                        symmetric: entry.symmetric,
                    });
                }
            },
        };
        Ok(Override::Fixed(FixedEncoding::PerTensor(encoding)))
    }

    fn dictionary_per_channel(
        &mut self,
        entries: &[DictionaryEntry],
    ) -> Result<Override, OverridesError> {
        if entries.iter().any(|e| e.dtype == Dtype::Float) {
            return Err(self.invalid(format!(
                "{} entries given, but a float override has exactly one",
                entries.len()
            )));
        }
        let bitwidth = self.int_bitwidth(entries[0].bitwidth)?;
        let expected = -(bitwidth.half() as i64);
        let mut encodings = Vec::with_capacity(entries.len());
        let mut written = Vec::with_capacity(entries.len());
        for (channel, entry) in entries.iter().enumerate() {
            if entry.bitwidth != entries[0].bitwidth {
                return Err(self.invalid(format!(
                    "channel {channel} has bitwidth {}, channel 0 has {}",
                    entry.bitwidth, entries[0].bitwidth
                )));
            }
            let not_symmetric = |problem: String| ErrorKind::PerChannelNotSymmetric {
                tensor: self.tensor.to_string(),
                expected,
                problem,
            };
            if entry.symmetric == Some(false) {
                return Err(self.error(not_symmetric(format!(
                    "but channel {channel} has is_symmetric False"
                ))));
            }
            if let Some(offset) = entry.offset
                && offset != expected as f64
            {
                return Err(self.error(not_symmetric(format!(
                    "but channel {channel} has offset {offset}"
                ))));
            }
            let encoding = match (entry.min, entry.max, entry.scale, entry.offset) {
                (Some(min), Some(max), ..) => {
                    let encoding = Encoding::from_override(min, max, bitwidth, true)
                        .map_err(|e| self.range_error(e))?;
                    self.compare_given(entry, &encoding, &format!(" channel {channel}"));
                    encoding
                }
                (None, None, Some(scale), Some(offset)) => {
                    self.grid_from_scale_offset(scale, offset, bitwidth, true)?
                }
                _ => {
                    return Err(self.invalid(format!(
                        "channel {channel} has no `min` and `max`; per-channel entries fix the range"
                    )));
                }
            };
            // An entry without a range is its scale and offset already.
            written.push(as_written(entry, &encoding));
            encodings.push(encoding);
        }
        if written
            .iter()
            .zip(&encodings)
            .any(|(w, e)| !same_bits(w, e))
        {
            self.written = Some(FixedEncoding::PerChannel(written));
        }
        Ok(Override::Fixed(FixedEncoding::PerChannel(encodings)))
    }

    /// Warns when the entry's own scale/offset are not what its bitwidth/min/max give (the
    /// recomputed ones win for quantization; [`as_written`] keeps the given ones).
    fn compare_given(&mut self, entry: &DictionaryEntry, encoding: &Encoding, channel: &str) {
        if let Some(given) = entry.scale
            && (given - encoding.scale).abs() > SCALE_TOLERANCE * encoding.scale.abs()
        {
            self.warn(WarningKind::ScaleDisagrees {
                tensor: self.tensor.to_string(),
                channel: channel.to_string(),
                given,
                recomputed: encoding.scale,
            });
        }
        if let Some(given) = entry.offset
            && given != encoding.offset as f64
        {
            self.warn(WarningKind::OffsetDisagrees {
                tensor: self.tensor.to_string(),
                channel: channel.to_string(),
                given,
                recomputed: encoding.offset,
            });
        }
    }

    fn grid_from_scale_offset(
        &mut self,
        scale: f64,
        offset: f64,
        bitwidth: Bitwidth,
        symmetric: bool,
    ) -> Result<Encoding, OverridesError> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(self.error(ErrorKind::NotFinite {
                tensor: self.tensor.to_string(),
                field: "scale",
                value: scale,
                positive: " positive",
            }));
        }
        if offset.fract() != 0.0 || offset.abs() > 2f64.powi(33) {
            return Err(self.invalid(format!("offset {offset} is not an integer")));
        }
        Ok(encoding_from_scale_offset(
            scale,
            offset as i64,
            bitwidth,
            symmetric,
        ))
    }

    // ---- 1.0.0 --------------------------------------------------------------------------

    fn list_override(&mut self, object: &Map<String, Value>) -> Result<Override, OverridesError> {
        let Some(bits) = self.integer(object, "bw")? else {
            return Err(self.invalid("the entry has no `bw`"));
        };
        if self.dtype(object)? == Dtype::Float {
            let bits = self.float_bitwidth(bits)?;
            return Ok(Override::Fixed(FixedEncoding::Float(bits)));
        }
        let bitwidth = self.int_bitwidth(bits)?;
        let symmetric = self.boolean(object, "is_sym")?;
        for unsupported in ["block_size", "block_axis"] {
            if object.contains_key(unsupported) {
                return Err(self.invalid(format!(
                    "`{unsupported}`: blockwise encodings are not supported"
                )));
            }
        }
        if let Some(shift) = self.number(object, "zero_point_shift")?
            && shift != 0.0
        {
            return Err(self.invalid(format!(
                "zero_point_shift {shift} is not supported (offsets must be integers)"
            )));
        }
        let per_channel = match object.get("enc_type") {
            None => None,
            Some(Value::String(s)) if s == "PER_TENSOR" => Some(false),
            Some(Value::String(s)) if s == "PER_CHANNEL" => Some(true),
            Some(other) => {
                return Err(self.invalid(format!(
                    "enc_type {other} is not supported (PER_TENSOR or PER_CHANNEL)"
                )));
            }
        };
        let scales = self.number_list(object, "scale")?;
        let offsets = self.number_list(object, "offset")?;
        let (scales, offsets) = match (scales, offsets) {
            (None, None) => {
                return Ok(Override::Calibrated {
                    bitwidth,
                    symmetric,
                });
            }
            (Some(s), Some(o)) if s.len() == o.len() && !s.is_empty() => (s, o),
            (Some(s), Some(o)) => {
                return Err(self.invalid(format!(
                    "{} scales and {} offsets; they must pair up",
                    s.len(),
                    o.len()
                )));
            }
            (Some(_), None) => return Err(self.invalid("`scale` is given without `offset`")),
            (None, Some(_)) => return Err(self.invalid("`offset` is given without `scale`")),
        };
        let per_channel = per_channel.unwrap_or(scales.len() > 1);
        if !per_channel && scales.len() != 1 {
            return Err(self.invalid(format!(
                "PER_TENSOR with {} scales; give one, or enc_type PER_CHANNEL",
                scales.len()
            )));
        }
        let expected = -(bitwidth.half() as i64);
        if per_channel {
            let problem = if symmetric != Some(true) {
                Some("but is_sym is not true".to_string())
            } else {
                offsets
                    .iter()
                    .position(|&o| o != expected as f64)
                    .map(|c| format!("but channel {c} has offset {}", offsets[c]))
            };
            if let Some(problem) = problem {
                return Err(self.error(ErrorKind::PerChannelNotSymmetric {
                    tensor: self.tensor.to_string(),
                    expected,
                    problem,
                }));
            }
        }
        let symmetric = symmetric.unwrap_or(false);
        let encodings = scales
            .iter()
            .zip(&offsets)
            .map(|(&s, &o)| self.grid_from_scale_offset(s, o, bitwidth, symmetric))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Override::Fixed(if per_channel {
            FixedEncoding::PerChannel(encodings)
        } else {
            FixedEncoding::PerTensor(encodings[0])
        }))
    }

    fn number_list(
        &mut self,
        object: &Map<String, Value>,
        key: &str,
    ) -> Result<Option<Vec<f64>>, OverridesError> {
        match object.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_f64().ok_or_else(|| {
                        self.invalid(format!("`{key}` holds {}, not a number", kind_of(v)))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(value) => Err(self.invalid(format!("`{key}` is {}, not a list", kind_of(value)))),
        }
    }
}

fn kind_of(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::Schema;

    fn one(entry: &str) -> Result<Override, ErrorKind> {
        let text =
            format!(r#"{{"activation_encodings": {{"t": [{entry}]}}, "param_encodings": {{}}}}"#);
        parse("t.json", Arc::new(text))
            .map(|p| p.overrides.activations["t"].clone())
            .map_err(|e| e.kind().clone())
    }

    fn one_v100(entry: &str) -> Result<Override, ErrorKind> {
        let text = format!(
            r#"{{"activation_encodings": [], "param_encodings": [{entry}], "version": "1.0.0"}}"#
        );
        parse("t.json", Arc::new(text))
            .map(|p| p.overrides.parameters["t"].clone())
            .map_err(|e| e.kind().clone())
    }

    #[test]
    fn as_written_keeps_the_stated_scale_and_offset() {
        let text = r#"{"activation_encodings": {"t": [{"bitwidth": 8, "min": -1.0, "max": 1.0,
            "scale": 0.0079, "offset": -127, "is_symmetric": "False"}],
            "close": [{"bitwidth": 8, "min": 0.0, "max": 2.55, "scale": 0.01, "offset": 0}],
            "range": [{"bitwidth": 8, "min": 0.0, "max": 2.55}]},
            "param_encodings": {"w": [
                {"bitwidth": 8, "min": -1.28, "max": 1.27, "scale": 0.0101, "offset": -128,
                 "is_symmetric": "True"},
                {"bitwidth": 8, "min": -2.56, "max": 2.54, "scale": 0.02, "offset": -128,
                 "is_symmetric": "True"}]}}"#;
        let parsed = parse("t.json", Arc::new(text.to_string())).unwrap();
        let written = parsed.as_written();
        let single = |o: &Override| match o {
            Override::Fixed(FixedEncoding::PerTensor(e)) => *e,
            other => panic!("{other:?}"),
        };
        // Quantizing recomputes; evaluating takes the file's numbers, range included.
        let recomputed = single(&parsed.overrides.activations["t"]);
        assert_ne!(recomputed.scale, 0.0079);
        let e = single(&written.activations["t"]);
        assert_eq!((e.scale, e.offset, e.min, e.max), (0.0079, -127, -1.0, 1.0));
        assert!(parsed.warnings.iter().any(|w| matches!(
            &w.kind,
            WarningKind::ScaleDisagrees { tensor, .. } if tensor == "t"
        )));
        // Within the warning's tolerance, but still the stated number, not 0.00999...
        assert_eq!(single(&written.activations["close"]).scale, 0.01);
        assert_ne!(single(&parsed.overrides.activations["close"]).scale, 0.01);
        assert_eq!(
            written.activations["range"],
            parsed.overrides.activations["range"]
        );
        let Override::Fixed(FixedEncoding::PerChannel(channels)) = &written.parameters["w"] else {
            panic!("{:?}", written.parameters["w"]);
        };
        assert_eq!(channels[0].scale, 0.0101);
        assert_eq!((channels[1].scale, channels[1].offset), (0.02, -128));
    }

    fn problem(result: Result<Override, ErrorKind>) -> String {
        match result {
            Err(ErrorKind::InvalidEntry { problem, .. }) => problem,
            other => panic!("expected an invalid entry, got {other:?}"),
        }
    }

    #[test]
    fn is_symmetric_as_python_strings_or_booleans() {
        for spelling in [r#""True""#, "true", r#""true""#] {
            let o = one(&format!(
                r#"{{"bitwidth": 8, "min": -1, "max": 1, "is_symmetric": {spelling}}}"#
            ));
            let Ok(Override::Fixed(FixedEncoding::PerTensor(e))) = o else {
                panic!("{o:?}")
            };
            assert_eq!((e.schema, e.offset), (Schema::Symmetric, -128));
        }
        let o = one(r#"{"bitwidth": 8, "is_symmetric": "yes"}"#);
        assert!(problem(o).contains("expected \"True\", \"False\""));
    }

    #[test]
    fn field_shapes() {
        // A whole float is an integer bitwidth; dtype is case-insensitive.
        assert_eq!(
            one(r#"{"bitwidth": 8.0, "dtype": "INT"}"#),
            Ok(Override::Calibrated {
                bitwidth: Bitwidth::B8,
                symmetric: None
            })
        );
        assert!(problem(one(r#"{"bitwidth": 8.5}"#)).contains("not an integer"));
        assert!(problem(one(r#"{"dtype": "int"}"#)).contains("no `bitwidth`"));
        assert!(problem(one(r#"{"bitwidth": 8, "min": -1}"#)).contains("without `max`"));
        assert!(problem(one(r#"{"bitwidth": 8, "min": "-1", "max": 1}"#)).contains("not a number"));
        assert!(problem(one(r#"{"bitwidth": 8, "dtype": "bfloat"}"#)).contains("`dtype`"));
        let text = r#"{"activation_encodings": {"t": []}, "param_encodings": {}}"#;
        let e = parse("t.json", Arc::new(text.into())).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::InvalidEntry { problem, .. } if problem.contains("empty"))
        );
    }

    #[test]
    fn scale_and_offset_without_a_range_are_the_grid() {
        let o = one(r#"{"bitwidth": 8, "scale": 0.5, "offset": -10}"#).unwrap();
        let Override::Fixed(FixedEncoding::PerTensor(e)) = o else {
            panic!("{o:?}")
        };
        assert_eq!((e.scale, e.offset, e.min, e.max), (0.5, -10, -5.0, 122.5));
        assert!(matches!(
            one(r#"{"bitwidth": 8, "scale": 0.0, "offset": 0}"#),
            Err(ErrorKind::NotFinite { field: "scale", .. })
        ));
    }

    #[test]
    fn per_channel_entries_share_a_bitwidth_and_an_offset() {
        let two = |a: &str, b: &str| {
            let text = format!(
                r#"{{"activation_encodings": {{}}, "param_encodings": {{"t": [{a}, {b}]}}}}"#
            );
            parse("t.json", Arc::new(text)).map_err(|e| e.kind().clone())
        };
        let ok = r#"{"bitwidth": 8, "min": -1, "max": 1}"#;
        let parsed = two(ok, ok).unwrap();
        assert!(matches!(
            &parsed.overrides.parameters["t"],
            Override::Fixed(FixedEncoding::PerChannel(list)) if list.len() == 2
                && list.iter().all(|e| e.schema == Schema::Symmetric)
        ));
        let e = two(ok, r#"{"bitwidth": 4, "min": -1, "max": 1}"#).unwrap_err();
        assert!(
            matches!(e, ErrorKind::InvalidEntry { problem, .. } if problem.contains("bitwidth 4"))
        );
        let e = two(
            ok,
            r#"{"bitwidth": 8, "min": -1, "max": 1, "offset": -127}"#,
        )
        .unwrap_err();
        assert!(matches!(
            e,
            ErrorKind::PerChannelNotSymmetric { expected: -128, .. }
        ));
        let e = two(ok, r#"{"bitwidth": 8}"#).unwrap_err();
        assert!(
            matches!(e, ErrorKind::InvalidEntry { problem, .. } if problem.contains("no `min`"))
        );
        let e = two(ok, r#"{"bitwidth": 16, "dtype": "float"}"#).unwrap_err();
        assert!(matches!(e, ErrorKind::InvalidEntry { problem, .. } if problem.contains("float")));
    }

    #[test]
    fn v100_entries() {
        let o = one_v100(
            r#"{"name": "t", "bw": 8, "dtype": "INT", "enc_type": "PER_TENSOR", "is_sym": false, "scale": [0.1], "offset": [-3.0]}"#,
        )
        .unwrap();
        let Override::Fixed(FixedEncoding::PerTensor(e)) = o else {
            panic!("{o:?}")
        };
        assert_eq!((e.offset, e.schema), (-3, Schema::Asymmetric));
        assert!(
            problem(one_v100(
                r#"{"name": "t", "bw": 8, "enc_type": "PER_TENSOR", "scale": [0.1, 0.2], "offset": [0, 0]}"#
            ))
            .contains("PER_TENSOR with 2 scales")
        );
        assert!(
            problem(one_v100(
                r#"{"name": "t", "bw": 4, "enc_type": "LPBQ", "scale": [0.1], "offset": [0]}"#
            ))
            .contains("not supported")
        );
        assert!(
            problem(one_v100(
                r#"{"name": "t", "bw": 8, "scale": [0.1], "offset": [0, 1]}"#
            ))
            .contains("pair up")
        );
        assert!(matches!(
            one_v100(r#"{"name": "t", "bw": 12, "dtype": "FLOAT"}"#),
            Err(ErrorKind::InvalidBitwidth { dtype: "float", .. })
        ));
    }
}
