//! What can be wrong with an overrides file, as `thiserror` kinds for programs and as `miette`
//! diagnostics (file name, span, help line) for people.
//!
//! This module only describes problems; it never prints them. The CLI renders the errors and
//! the returned warnings.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, Severity, SourceCode, SourceSpan};

/// The text of an overrides file under the name shown in diagnostics (the path as the user gave
/// it), shared by every diagnostic about it.
pub type OverridesSource = NamedSource<Arc<String>>;

/// What is wrong with an overrides file or one of its entries.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Io(String),
    /// Not JSON at all (serde_json's message, without its position).
    #[error("not valid JSON: {0}")]
    MalformedJson(String),
    /// JSON, but not shaped like an AIMET encodings file.
    #[error("not an AIMET encodings file: {0}")]
    NotEncodings(String),
    /// A `version` this reader does not understand.
    #[error("encodings version `{0}` is not supported (0.4 to 0.6.1, and 1.0.0 are)")]
    UnsupportedVersion(String),
    /// One entry of a tensor is malformed: missing field, wrong type, unknown value.
    #[error("tensor `{tensor}`: {problem}")]
    InvalidEntry {
        /// The tensor the entry belongs to.
        tensor: String,
        /// What is wrong, in words.
        problem: String,
    },
    /// A bitwidth that is not valid for the entry's dtype.
    #[error("tensor `{tensor}`: bitwidth {bitwidth} is not valid for dtype {dtype}")]
    InvalidBitwidth {
        /// The tensor.
        tensor: String,
        /// The bitwidth found.
        bitwidth: i64,
        /// `int` or `float`.
        dtype: &'static str,
    },
    /// `min > max`.
    #[error("tensor `{tensor}`: min {min} is greater than max {max}")]
    Inverted {
        /// The tensor.
        tensor: String,
        /// The given minimum.
        min: f64,
        /// The given maximum.
        max: f64,
    },
    /// A range bound or scale that is NaN, infinite, or (for a scale) not positive.
    #[error("tensor `{tensor}`: {field} {value} is not a finite{positive} number")]
    NotFinite {
        /// The tensor.
        tensor: String,
        /// The field (`min`, `max`, `scale`).
        field: &'static str,
        /// Its value.
        value: f64,
        /// `" positive"` for scales, empty otherwise.
        positive: &'static str,
    },
    /// A per-channel list whose entries are not symmetric with offset `-2^(bw-1)`.
    #[error(
        "tensor `{tensor}`: per-channel encodings must be symmetric with offset {expected}, {problem}"
    )]
    PerChannelNotSymmetric {
        /// The tensor.
        tensor: String,
        /// `-2^(bw-1)`.
        expected: i64,
        /// What was found instead.
        problem: String,
    },
    /// The same tensor twice in one section.
    #[error("tensor `{0}` is listed twice in the same section")]
    Duplicate(String),
    /// A name the model does not have.
    #[error("tensor `{tensor}` is not in the model")]
    UnknownTensor {
        /// The name in the file.
        tensor: String,
        /// The model's nearest names, best first.
        suggestions: Vec<String>,
    },
    /// INT32 overrides on every input and output of an op that cannot run in int32.
    #[error("{message}")]
    Int32Op {
        /// The tensor whose entry is pointed at.
        tensor: String,
        /// Which op, and why.
        message: String,
        /// Whether the op has weights or bias (otherwise ONNX has no int32 form of it).
        weighted: bool,
    },
    /// A name the model file has but the target's transforms removed.
    #[error("tensor `{tensor}` is not in the model once its transforms ran")]
    RemovedByTransform {
        /// The name in the file.
        tensor: String,
    },
    /// A per-channel list whose length is not the parameter's channel count.
    #[error(
        "tensor `{tensor}` has {found} per-channel encodings, but the model's tensor has {expected} channels"
    )]
    ChannelCount {
        /// The tensor.
        tensor: String,
        /// Channels in the model.
        expected: usize,
        /// Entries in the file.
        found: usize,
    },
    /// Several encodings for a tensor that has no channels to spread them over (an activation).
    #[error(
        "tensor `{tensor}` is an activation but has {found} encodings; only parameters can be per-channel"
    )]
    PerChannelActivation {
        /// The tensor.
        tensor: String,
        /// Entries in the file.
        found: usize,
    },
}

impl ErrorKind {
    fn help(&self) -> Option<String> {
        Some(match self {
            ErrorKind::Io(_) => "check the path given to --quantization_overrides".into(),
            ErrorKind::MalformedJson(_) => {
                "fix the JSON at the marked position (NaN and Infinity are not JSON: range bounds must be finite numbers)".into()
            }
            ErrorKind::NotEncodings(_) => {
                "an encodings file is an object with `activation_encodings` and `param_encodings` sections (AIMET 0.6.1 or 1.0.0 format)".into()
            }
            ErrorKind::UnsupportedVersion(_) => {
                "re-export the encodings with AIMET's encoding_version=\"0.6.1\" or \"1.0.0\"".into()
            }
            ErrorKind::InvalidEntry { .. } => {
                "an entry needs `bitwidth` and `dtype`, and `min` and `max` to fix the range (see the seed's Quantization Overrides)".into()
            }
            ErrorKind::InvalidBitwidth { dtype, .. } => match *dtype {
                "float" => "float overrides use bitwidth 16 or 32".into(),
                _ => "integer overrides use bitwidth 2 to 16, or 32 for an INT32 override".into(),
            },
            ErrorKind::Inverted { .. } => "swap min and max".into(),
            ErrorKind::NotFinite { .. } => "give finite range bounds and a scale above zero".into(),
            ErrorKind::PerChannelNotSymmetric { .. } => {
                "per-channel quantization always has is_symmetric = True and offset == -2^(bitwidth-1); give one entry for a per-tensor encoding".into()
            }
            ErrorKind::Duplicate(_) => "keep one entry per tensor".into(),
            ErrorKind::UnknownTensor { suggestions, .. } => match suggestions.as_slice() {
                [] => "remove the entry, or check the names with `quant inspect`".into(),
                names => format!(
                    "did you mean {}?",
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            ErrorKind::RemovedByTransform { .. } => "`algorithms` folded it away: a BatchNorm folded into the layer before it leaves that layer writing the BatchNorm's output, so name the BatchNorm's output instead (`report.json` lists every fold under `transforms`); a folded BatchNorm's parameters are gone".into(),
            ErrorKind::Int32Op { weighted: true, .. } => "the specification allows INT32 only on ops without weights and bias: remove the INT32 entries of this op's inputs or outputs, or keep it in float with `\"dtype\": \"float\"`".into(),
            ErrorKind::Int32Op { weighted: false, .. } => "ONNX runs Add, Sub, Mul, Div, Concat, Reshape, Transpose, Slice, Gather and other data-movement and arithmetic ops in int32: remove the INT32 entries of this op's inputs or outputs".into(),
            ErrorKind::ChannelCount { expected, .. } => format!(
                "give exactly {expected} entries (one per output channel), or one entry for a per-tensor encoding"
            ),
            ErrorKind::PerChannelActivation { .. } => {
                "give one entry for an activation".into()
            }
        })
    }

    fn label(&self) -> &'static str {
        match self {
            ErrorKind::MalformedJson(_) => "here",
            ErrorKind::UnknownTensor { .. } => "unknown tensor",
            ErrorKind::RemovedByTransform { .. } => "removed by a transform",
            ErrorKind::Int32Op { .. } => "INT32 here",
            ErrorKind::ChannelCount { .. } => "wrong number of channels",
            ErrorKind::InvalidBitwidth { .. } => "invalid bitwidth",
            ErrorKind::Duplicate(_) => "listed again here",
            ErrorKind::UnsupportedVersion(_) => "this version",
            ErrorKind::NotEncodings(_) => "this section",
            _ => "this tensor",
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ErrorKind::Io(_) => "quant::overrides::io",
            ErrorKind::MalformedJson(_) => "quant::overrides::malformed_json",
            ErrorKind::NotEncodings(_) => "quant::overrides::not_encodings",
            ErrorKind::UnsupportedVersion(_) => "quant::overrides::version",
            ErrorKind::InvalidEntry { .. } => "quant::overrides::invalid_entry",
            ErrorKind::InvalidBitwidth { .. } => "quant::overrides::bitwidth",
            ErrorKind::Inverted { .. } => "quant::overrides::inverted_range",
            ErrorKind::NotFinite { .. } => "quant::overrides::not_finite",
            ErrorKind::PerChannelNotSymmetric { .. } => "quant::overrides::per_channel_symmetric",
            ErrorKind::Duplicate(_) => "quant::overrides::duplicate",
            ErrorKind::UnknownTensor { .. } => "quant::overrides::unknown_tensor",
            ErrorKind::RemovedByTransform { .. } => "quant::overrides::removed_by_transform",
            ErrorKind::Int32Op { .. } => "quant::overrides::int32_op",
            ErrorKind::ChannelCount { .. } => "quant::overrides::channel_count",
            ErrorKind::PerChannelActivation { .. } => "quant::overrides::per_channel_activation",
        }
    }
}

/// One problem in an overrides file: its [`ErrorKind`], the file, and where in it. Boxed, so
/// that `Result<_, OverridesError>` stays small.
#[derive(Debug, Clone)]
pub struct OverridesError(Box<ErrorData>);

#[derive(Debug, Clone)]
struct ErrorData {
    kind: ErrorKind,
    file: String,
    source: Option<OverridesSource>,
    span: Option<SourceSpan>,
}

impl OverridesError {
    pub(crate) fn new(kind: ErrorKind, source: &OverridesSource, span: Option<SourceSpan>) -> Self {
        OverridesError(Box::new(ErrorData {
            kind,
            file: source.name().to_string(),
            source: Some(source.clone()),
            span,
        }))
    }

    pub(crate) fn io(path: &Path, error: &std::io::Error) -> Self {
        OverridesError(Box::new(ErrorData {
            kind: ErrorKind::Io(error.to_string()),
            file: path.display().to_string(),
            source: None,
            span: None,
        }))
    }

    /// What is wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.0.kind
    }

    /// The file's name as given by the user.
    pub fn file(&self) -> &str {
        &self.0.file
    }

    /// Where in the file, as a byte span, when known.
    pub fn span(&self) -> Option<SourceSpan> {
        self.0.span
    }
}

impl fmt::Display for OverridesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.file, self.0.kind)
    }
}

impl std::error::Error for OverridesError {}

impl Diagnostic for OverridesError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.0.kind.code()))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.0
            .kind
            .help()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.0.span?;
        self.0.source.as_ref().map(|s| s as &dyn SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.0.span?;
        Some(Box::new(std::iter::once(
            LabeledSpan::new_primary_with_span(Some(self.0.kind.label().to_string()), span),
        )))
    }
}

/// Every problem found when checking an overrides file against a model.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {} quantization override(s) do not fit the model", errors.len())]
pub struct OverridesInvalid {
    /// The file's name as given by the user.
    pub file: String,
    /// One error per offending entry, in file order of tensor names.
    pub errors: Vec<OverridesError>,
}

impl Diagnostic for OverridesInvalid {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new("quant::overrides::invalid"))
    }
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(self.errors.iter().map(|e| e as &dyn Diagnostic)))
    }
}

/// Something accepted but probably not what the author meant.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WarningKind {
    /// A section (`activation_encodings` or `param_encodings`) is absent; read as empty.
    #[error("the `{0}` section is missing; read as empty")]
    MissingSection(&'static str),
    /// The given scale disagrees with the one recomputed from bitwidth, min and max.
    #[error(
        "tensor `{tensor}`{channel}: given scale {given} differs from {recomputed} recomputed from bitwidth, min and max; the recomputed scale is used"
    )]
    ScaleDisagrees {
        /// The tensor.
        tensor: String,
        /// `" channel N"` for per-channel entries, empty otherwise.
        channel: String,
        /// Scale in the file.
        given: f64,
        /// Scale used.
        recomputed: f64,
    },
    /// The given offset disagrees with the one recomputed from bitwidth, min and max.
    #[error(
        "tensor `{tensor}`{channel}: given offset {given} differs from {recomputed} recomputed from bitwidth, min and max; the recomputed offset is used"
    )]
    OffsetDisagrees {
        /// The tensor.
        tensor: String,
        /// `" channel N"` for per-channel entries, empty otherwise.
        channel: String,
        /// Offset in the file.
        given: f64,
        /// Offset used.
        recomputed: i64,
    },
}

/// A warning about an overrides file, with its place in the file. The library returns these;
/// the caller decides whether to print them.
#[derive(Debug, Clone)]
pub struct OverridesWarning {
    /// What was noticed.
    pub kind: WarningKind,
    /// The file's name as given by the user.
    pub file: String,
    source: OverridesSource,
    span: Option<SourceSpan>,
}

impl OverridesWarning {
    pub(crate) fn new(
        kind: WarningKind,
        source: &OverridesSource,
        span: Option<SourceSpan>,
    ) -> Self {
        OverridesWarning {
            kind,
            file: source.name().to_string(),
            source: source.clone(),
            span,
        }
    }
}

impl OverridesWarning {
    /// The warning as an evaluation words it: `quant eval` simulates a file as written
    /// ([`super::ParsedOverrides::as_written`]), so a usable scale or offset that disagrees with
    /// the recomputed one is the one simulated.
    pub fn evaluation_text(&self) -> String {
        let given_wins = |what: &str, tensor: &str, channel: &str, given: f64, recomputed: &str| {
            format!(
                "{}: tensor `{tensor}`{channel}: given {what} {given} differs from {recomputed} \
                 recomputed from bitwidth, min and max; the given {what} is simulated",
                self.file
            )
        };
        match &self.kind {
            WarningKind::ScaleDisagrees {
                tensor,
                channel,
                given,
                recomputed,
            } if given.is_finite() && *given > 0.0 => {
                given_wins("scale", tensor, channel, *given, &recomputed.to_string())
            }
            WarningKind::OffsetDisagrees {
                tensor,
                channel,
                given,
                recomputed,
            } if given.fract() == 0.0 => {
                given_wins("offset", tensor, channel, *given, &recomputed.to_string())
            }
            _ => self.to_string(),
        }
    }
}

impl fmt::Display for OverridesWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.kind)
    }
}

impl std::error::Error for OverridesWarning {}

impl Diagnostic for OverridesWarning {
    fn severity(&self) -> Option<Severity> {
        Some(Severity::Warning)
    }
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(match self.kind {
            WarningKind::MissingSection(_) => "quant::overrides::missing_section",
            WarningKind::ScaleDisagrees { .. } | WarningKind::OffsetDisagrees { .. } => {
                "quant::overrides::scale_offset_ignored"
            }
        }))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(match self.kind {
            WarningKind::MissingSection(_) => {
                "the seed requires both sections; add it, empty if no override is wanted"
            }
            _ => {
                "scale and offset are always recomputed from bitwidth, min and max; fix or drop them"
            }
        }))
    }
    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.span?;
        Some(&self.source)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.span?;
        Some(Box::new(std::iter::once(
            LabeledSpan::new_primary_with_span(Some("this tensor".to_string()), span),
        )))
    }
}

/// Byte span of the 1-based `line`/`column` serde_json reports (column 0 means "before the first
/// character of the line", e.g. at the end of input).
pub(crate) fn span_at(text: &str, line: usize, column: usize) -> SourceSpan {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let mut offset = (line_start + column.saturating_sub(1)).min(text.len());
    // serde_json counts columns in bytes: an error inside a multi-byte character points into
    // its middle, and the label must start on the character.
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let len = text[offset..].chars().next().map_or(0, char::len_utf8);
    SourceSpan::new(offset.into(), len)
}

/// Byte offset just after the top-level key `"section"`, where that section's value starts.
pub(crate) fn section_offset(text: &str, section: &str) -> Option<usize> {
    let quoted = format!("\"{section}\"");
    find_name(text, 0, &quoted, NameAt::Key).map(|span| span.offset() + span.len())
}

/// Where a tensor name stands in the JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameAt {
    /// An object key (0.6.1 and older: `"conv1": [...]`).
    Key,
    /// The value of a `name` field (1.0.0: `"name": "conv1"`).
    NameValue,
}

/// Span of the JSON string `quoted` (a tensor name, quotes included) standing as `at` says,
/// searched from byte `from`. Only a label position: `None` when the text escapes it differently.
pub(crate) fn find_name(text: &str, from: usize, quoted: &str, at: NameAt) -> Option<SourceSpan> {
    let mut start = from.min(text.len());
    while let Some(found) = text.get(start..)?.find(quoted) {
        let begin = start + found;
        let end = begin + quoted.len();
        let fits = match at {
            NameAt::Key => text[end..].trim_start().starts_with(':'),
            NameAt::NameValue => text[..begin]
                .trim_end()
                .strip_suffix(':')
                .is_some_and(|before| before.trim_end().ends_with("\"name\"")),
        };
        if fits {
            return Some(SourceSpan::new(begin.into(), quoted.len()));
        }
        start = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_at_counts_bytes_of_earlier_lines() {
        let text = "{\n  \"a\": x\n}";
        let span = span_at(text, 2, 8);
        assert_eq!((span.offset(), span.len()), (9, 1));
        assert_eq!(&text[9..10], "x");
        // Past the end: an empty span at the end.
        let span = span_at(text, 9, 0);
        assert_eq!((span.offset(), span.len()), (text.len(), 0));
    }

    #[test]
    fn find_name_tells_keys_from_values() {
        let text = r#"{"x": [{"dtype": "conv"}], "conv": [], "y": [{"name": "conv"}]}"#;
        let span = find_name(text, 0, "\"conv\"", NameAt::Key).unwrap();
        assert_eq!(span.offset(), text.find("\"conv\":").unwrap());
        let span = find_name(text, 0, "\"conv\"", NameAt::NameValue).unwrap();
        assert_eq!(span.offset(), text.rfind("\"conv\"").unwrap());
        assert!(find_name(text, 0, "\"nope\"", NameAt::Key).is_none());
    }
}
