//! Manifest problems as miette diagnostics: a code, a message, labelled TOML spans, a help line.
//!
//! This module only describes problems; it never decides what is wrong (that is `raw` and
//! `resolve`) and never prints (that is the CLI).

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};

/// One problem in a manifest, pointing at the TOML text.
#[derive(Debug, Clone)]
pub struct ManifestDiagnostic {
    code: &'static str,
    message: String,
    help: Option<String>,
    /// The first label is the primary one; diagnostics sort by its start.
    labels: Vec<(Range<usize>, String)>,
    source: NamedSource<Arc<str>>,
}

impl ManifestDiagnostic {
    /// A problem with `code` (e.g. `quant::manifest::unknown_key`) and a primary label.
    pub(crate) fn new(
        source: &NamedSource<Arc<str>>,
        code: &'static str,
        message: impl Into<String>,
        span: Range<usize>,
        label: impl Into<String>,
    ) -> Self {
        ManifestDiagnostic {
            code,
            message: message.into(),
            help: None,
            labels: vec![(span, label.into())],
            source: source.clone(),
        }
    }

    /// Adds the help line.
    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a secondary label.
    pub(crate) fn with_label(mut self, span: Range<usize>, label: impl Into<String>) -> Self {
        self.labels.push((span, label.into()));
        self
    }

    /// The diagnostic code, e.g. `quant::manifest::unknown_key`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The one-line message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The help line, if any.
    pub fn help(&self) -> Option<&str> {
        self.help.as_deref()
    }

    /// Byte range of the primary label in the manifest text.
    pub fn span(&self) -> Range<usize> {
        self.labels[0].0.clone()
    }

    pub(crate) fn sort_key(&self) -> (usize, usize, &'static str) {
        (self.labels[0].0.start, self.labels[0].0.end, self.code)
    }
}

impl fmt::Display for ManifestDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ManifestDiagnostic {}

impl Diagnostic for ManifestDiagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|help| Box::new(help) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(self.labels.iter().enumerate().map(
            |(index, (span, label))| {
                let label = (!label.is_empty()).then(|| label.clone());
                if index == 0 {
                    LabeledSpan::new_primary_with_span(label, span.clone())
                } else {
                    LabeledSpan::new_with_span(label, span.clone())
                }
            },
        )))
    }
}

/// Why a manifest could not be loaded or resolved.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest file (or a workspace folder) could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest has problems; never empty, sorted by position in the file.
    #[error("{}", invalid_message(path, problems))]
    Invalid {
        /// The manifest, as the caller named it.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<ManifestDiagnostic>,
    },
}

fn invalid_message(path: &std::path::Path, problems: &[ManifestDiagnostic]) -> String {
    match problems {
        [one] => one.message.clone(),
        many => format!("{} problems in {}", many.len(), path.display()),
    }
}

impl ManifestError {
    /// The individual problems (empty for a read error).
    pub fn problems(&self) -> &[ManifestDiagnostic] {
        match self {
            ManifestError::Read { .. } => &[],
            ManifestError::Invalid { problems, .. } => problems,
        }
    }

    /// One problem alone is reported as itself; several as a summary with each one related.
    fn single(&self) -> Option<&ManifestDiagnostic> {
        match self.problems() {
            [one] => Some(one),
            _ => None,
        }
    }
}

impl Diagnostic for ManifestError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self {
            ManifestError::Read { .. } => Some(Box::new("quant::manifest::read")),
            ManifestError::Invalid { .. } => match self.single() {
                Some(one) => Diagnostic::code(one),
                None => Some(Box::new("quant::manifest::invalid")),
            },
        }
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self {
            ManifestError::Read { .. } => Some(Box::new(
                "check that the path exists and names a quant.toml or a folder holding one",
            )),
            ManifestError::Invalid { .. } => self.single().and_then(Diagnostic::help),
        }
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.single().and_then(Diagnostic::source_code)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.single().and_then(Diagnostic::labels)
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        match self.problems() {
            [] | [_] => None,
            many => Some(Box::new(many.iter().map(|p| p as &dyn Diagnostic))),
        }
    }
}
