//! Calibration data: the qairt `--input_list` format and the sample files it names.
//!
//! This module owns parsing an input list (one sample per line, `name:=path` pairs for
//! multi-input models, the optional leading `#` output-layer and `%` output-tensor lines), checking
//! it against the model's input specs, and loading a sample's files (raw little-endian `f32` or
//! `.npy`) into tensors, with a content digest and a count of non-finite values. Every problem
//! with user data is a [`CalibError`] diagnostic that points at the list file and line.
//!
//! It must NOT run models, compute statistics or know about encodings: it hands tensors to the
//! caller and nothing else. Non-finite values are counted here, never filtered: the statistics
//! layer decides how to exclude them.

// A `CalibError` carries the list text and a span so it renders on its own; it is built once,
// on the way out, so its size costs nothing worth boxing for.
#![allow(clippy::result_large_err)]

mod list;
mod npy;
mod sample;

pub use list::{InputList, OutputSelection, Sample, SampleFile};
pub use sample::{InputSpec, LoadedSample, NonFinite};

use std::path::PathBuf;
use std::sync::Arc;

use miette::{Diagnostic, NamedSource, SourceSpan};

/// The list file's text as a miette source, shared by every diagnostic about that list.
pub type ListSource = NamedSource<Arc<str>>;

/// A problem with an input list or one of the sample files it names.
///
/// Each variant carries the list file's text and the span of the offending line (or token), so
/// rendering it with miette shows the file name, line and a marker under the culprit.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum CalibError {
    /// The list file itself could not be read.
    #[error("cannot read input list {}: {source}", path.display())]
    #[diagnostic(code(quant::calib::read_list), help("check the --input_list path"))]
    ReadList {
        /// The list file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },

    /// The list has no sample line.
    #[error("input list {} has no samples", path.display())]
    #[diagnostic(
        code(quant::calib::empty_list),
        help(
            "add one line per calibration sample: a file path, or `name:=path` pairs for several inputs"
        )
    )]
    EmptyList {
        /// The list file.
        path: PathBuf,
        /// The list text.
        #[source_code]
        src: ListSource,
        /// The whole file (possibly empty).
        #[label("no sample line in here")]
        span: SourceSpan,
    },

    /// A line that cannot be read as a sample.
    #[error("malformed input list line {line}: {reason}")]
    #[diagnostic(code(quant::calib::malformed_line), help("{help}"))]
    MalformedLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
        /// What to do instead.
        help: String,
        /// The list text.
        #[source_code]
        src: ListSource,
        /// The offending line or token.
        #[label("here")]
        span: SourceSpan,
    },

    /// A `name:=path` pair names an input the model does not have.
    #[error("input list line {line} names input `{name}`, which the model does not have")]
    #[diagnostic(
        code(quant::calib::unknown_input),
        help("the model's inputs are: {inputs}")
    )]
    UnknownInput {
        /// 1-based line number.
        line: usize,
        /// The name used in the list.
        name: String,
        /// The model's input names, comma separated.
        inputs: String,
        /// The list text.
        #[source_code]
        src: ListSource,
        /// The `name:=path` token.
        #[label("unknown input")]
        span: SourceSpan,
    },

    /// A line does not give a file for every model input.
    #[error("input list line {line} gives no file for input `{missing}`")]
    #[diagnostic(code(quant::calib::missing_input), help("{help}"))]
    MissingInput {
        /// 1-based line number.
        line: usize,
        /// The first input without a file.
        missing: String,
        /// What the line should look like.
        help: String,
        /// The list text.
        #[source_code]
        src: ListSource,
        /// The line.
        #[label("this sample")]
        span: SourceSpan,
    },

    /// A sample file named by the list does not exist or cannot be read.
    #[error("cannot read sample file {} (input list line {line}): {reason}", path.display())]
    #[diagnostic(
        code(quant::calib::read_sample),
        help("paths are relative to the folder of the input list ({})", list_dir.display())
    )]
    ReadSample {
        /// 1-based line number.
        line: usize,
        /// The resolved file path.
        path: PathBuf,
        /// The folder relative paths are resolved against.
        list_dir: PathBuf,
        /// The I/O failure, as text.
        reason: String,
        /// The list text.
        #[source_code]
        src: ListSource,
        /// The path token.
        #[label("this file")]
        span: SourceSpan,
    },

    /// A raw file's size does not match the input's shape.
    #[error(
        "sample file {} for input `{input}` has {found} bytes, expected {expected} (f32 {shape:?}) (input list line {line})",
        path.display()
    )]
    #[diagnostic(
        code(quant::calib::wrong_size),
        help(
            "raw files hold little-endian f32 values with batch 1 in the input's layout; fix the file or the input's dims (--input_dim)"
        )
    )]
    WrongSize {
        /// 1-based line number.
        line: usize,
        /// The model input.
        input: String,
        /// The resolved file path.
        path: PathBuf,
        /// Bytes the input's shape needs.
        expected: u64,
        /// Bytes found (for `.npy`: data bytes after the header).
        found: u64,
        /// The input's shape.
        shape: Vec<usize>,
        /// The list text.
        #[source_code]
        src: ListSource,
        /// The path token.
        #[label("{found} bytes, expected {expected}")]
        span: SourceSpan,
    },

    /// A `.npy` file that is not plain C-order little-endian `f32` of the right shape.
    #[error("unsupported .npy file {} for input `{input}` (input list line {line}): {reason}", path.display())]
    #[diagnostic(
        code(quant::calib::npy),
        help(
            "save samples as float32 in C order with the input's shape (size-1 dims may be left out), e.g. `np.save(p, np.ascontiguousarray(x, dtype=np.float32))`"
        )
    )]
    Npy {
        /// 1-based line number.
        line: usize,
        /// The model input.
        input: String,
        /// The resolved file path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// The list text.
        #[source_code]
        src: ListSource,
        /// The path token.
        #[label("this file")]
        span: SourceSpan,
    },

    /// A sample index past the end of the list.
    #[error("sample {index} out of range: the input list has {count} samples")]
    #[diagnostic(code(quant::calib::sample_index))]
    SampleIndex {
        /// The requested index.
        index: usize,
        /// How many samples the list has.
        count: usize,
    },
}
