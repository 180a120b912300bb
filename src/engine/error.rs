//! [`BuildError`]: why part of a build could not be computed, as a value (a broken file is one
//! more state of the build, not a failure of the engine), and [`display_path`], how every
//! diagnostic names a file.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, SourceCode};

use super::source::FileError;
use crate::calib::CalibError;
use crate::manifest::ManifestError;
use crate::overrides::{OverridesError, OverridesInvalid};
use crate::quantizer::{CalibrationError, EncodeError};

// ---------------------------------------------------------------------------------------------
// Errors.

/// Why part of a build could not be computed. A value, compared by its message, so a build
/// that fails the same way twice backdates like any other result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BuildError {
    /// The manifest is invalid or unreadable.
    #[error(transparent)]
    Manifest(Arc<ManifestError>),
    /// A file the manifest names is missing or unreadable.
    #[error("{what} `{path}`: {error}")]
    File {
        /// What the file is ("model", "input list", "overrides file").
        what: &'static str,
        /// The path as shown.
        path: String,
        /// What went wrong.
        error: FileError,
    },
    /// The model cannot be read or its graph is malformed.
    #[error("model `{path}`: {message}")]
    Model {
        /// The model as shown.
        path: String,
        /// What the reader said.
        message: String,
    },
    /// The model cannot be prepared for running.
    #[error("model `{path}` cannot be run: {message}")]
    Runner {
        /// The model as shown.
        path: String,
        /// What the runtime said.
        message: String,
    },
    /// The input list or one of its samples is bad.
    #[error(transparent)]
    List(Arc<CalibError>),
    /// An overrides file is malformed.
    #[error(transparent)]
    Overrides(Arc<OverridesError>),
    /// An overrides file names tensors the model does not have.
    #[error(transparent)]
    OverridesInvalid(Arc<OverridesInvalid>),
    /// A sample failed to run.
    #[error(transparent)]
    Calibration(Arc<CalibrationError>),
    /// A tensor could not be encoded.
    #[error(transparent)]
    Encode(EncodeError),
    /// An output file could not be written.
    #[error("cannot write `{path}`: {message}")]
    Output {
        /// The file as shown.
        path: String,
        /// What the operating system said.
        message: String,
    },
    /// The evaluation could not run (labels that do not fit, a model it cannot simulate).
    #[error(transparent)]
    Evaluation(Arc<crate::eval::EvalError>),
    /// The QDQ model could not be made.
    #[error("cannot export `{path}`: {message}")]
    Export {
        /// The output file as shown.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The encodings ask for a precision the specification forbids (INT32 on an op with
    /// weights, or on one ONNX cannot run in int32).
    #[error("`{path}`: {message}")]
    Precision {
        /// The model as shown.
        path: String,
        /// What the overrides ask for, and why it cannot be.
        message: String,
    },
    /// A file changed while it was being read; the next build sees the new contents.
    #[error("`{path}` changed while it was being read; build again")]
    Changed {
        /// The file as shown.
        path: String,
    },
}

impl BuildError {
    fn inner(&self) -> Option<&dyn Diagnostic> {
        match self {
            BuildError::Manifest(e) => Some(e.as_ref()),
            BuildError::List(e) => Some(e.as_ref()),
            BuildError::Overrides(e) => Some(e.as_ref()),
            BuildError::OverridesInvalid(e) => Some(e.as_ref()),
            BuildError::Calibration(e) => Some(e.as_ref()),
            BuildError::Evaluation(e) => Some(e.as_ref()),
            _ => None,
        }
    }

    pub(super) fn file(what: &'static str, path: &Path, error: &FileError) -> BuildError {
        BuildError::File {
            what,
            path: display_path(path),
            error: error.clone(),
        }
    }
}

impl PartialEq for BuildError {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl Eq for BuildError {}

impl Diagnostic for BuildError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self.inner() {
            Some(inner) => inner.code(),
            None => Some(Box::new(match self {
                BuildError::File { .. } => "quant::build::file",
                BuildError::Model { .. } => "quant::build::model",
                BuildError::Runner { .. } => "quant::build::run",
                BuildError::Encode(_) => "quant::build::encode",
                BuildError::Output { .. } => "quant::build::output",
                BuildError::Export { .. } => "quant::build::export",
                BuildError::Precision { .. } => "quant::build::precision",
                _ => "quant::build::changed",
            })),
        }
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self.inner() {
            Some(inner) => inner.help(),
            None => match self {
                BuildError::File { .. } => Some(Box::new(
                    "paths in quant.toml are relative to the manifest's folder",
                )),
                BuildError::Model { .. } => Some(Box::new(
                    "check that the file is an ONNX model and that `input_dims` names its inputs",
                )),
                _ => None,
            },
        }
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.inner().and_then(|inner| inner.source_code())
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.inner().and_then(|inner| inner.labels())
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        self.inner().and_then(|inner| inner.related())
    }
}

/// `path` as diagnostics show it: relative to the working directory when inside it.
pub fn display_path(path: &Path) -> String {
    let relative = std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf));
    relative
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}
