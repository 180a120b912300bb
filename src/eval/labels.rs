//! A labels file: one integer class per line, in input-list order. Parsed once into [`Labels`];
//! every problem is a [`LabelsError`] that shows the file and the line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{NamedSource, SourceSpan};

/// The labels file's text as a miette source.
pub type LabelsSource = NamedSource<Arc<str>>;

/// A problem with a labels file, or with how it fits the input list and the model.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LabelsError {
    /// The file could not be read.
    #[error("cannot read labels file {}: {source}", path.display())]
    #[diagnostic(code(quant::eval::read_labels), help("check the --labels path"))]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },

    /// A line that is not an integer class.
    #[error("labels file {} line {line}: `{text}` is not a class number", path.display())]
    #[diagnostic(
        code(quant::eval::label_not_integer),
        help("write one non-negative integer class per line, in input-list order")
    )]
    NotInteger {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The line's text.
        text: String,
        /// The file's text.
        #[source_code]
        src: LabelsSource,
        /// The line.
        #[label("not an integer")]
        span: SourceSpan,
    },

    /// A class outside the model's output range.
    #[error(
        "labels file {} line {line}: class {class} is outside the model's {classes} classes (0..={max}) of output `{output}`",
        path.display(),
        max = classes.saturating_sub(1)
    )]
    #[diagnostic(
        code(quant::eval::label_out_of_range),
        help(
            "labels index the last axis of the model's first output; check that the labels belong to this model"
        )
    )]
    OutOfRange {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The class given.
        class: i64,
        /// Classes the output has (its last dim).
        classes: usize,
        /// The output top-1 is taken over.
        output: String,
        /// The file's text.
        #[source_code]
        src: LabelsSource,
        /// The line.
        #[label("class {class}")]
        span: SourceSpan,
    },

    /// Labels and samples do not pair up.
    #[error(
        "labels file {} has {labels} labels but input list {} has {samples} samples",
        path.display(),
        list.display()
    )]
    #[diagnostic(
        code(quant::eval::label_count),
        help("give one label per sample, in the input list's order")
    )]
    Count {
        /// The labels file.
        path: PathBuf,
        /// The input list.
        list: PathBuf,
        /// Labels in the file.
        labels: usize,
        /// Samples in the list.
        samples: usize,
    },
}

/// One label: the class and where it stands in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    /// The class.
    pub class: i64,
    /// 1-based line.
    pub line: usize,
    span: SourceSpan,
}

/// A parsed labels file.
#[derive(Debug, Clone)]
pub struct Labels {
    /// The file, as diagnostics name it.
    pub path: PathBuf,
    /// One per sample, in list order.
    pub labels: Vec<Label>,
    source: Arc<str>,
}

impl Labels {
    /// Reads and parses a labels file.
    pub fn read(path: &Path) -> Result<Labels, LabelsError> {
        let text = std::fs::read_to_string(path).map_err(|source| LabelsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Labels::parse(path, &text)
    }

    /// Parses labels text; `path` is what diagnostics name. Blank lines are allowed only at the
    /// end of the file: one in the middle would shift every later label onto the wrong sample.
    pub fn parse(path: &Path, text: &str) -> Result<Labels, LabelsError> {
        let source: Arc<str> = Arc::from(text);
        let mut labels = Vec::new();
        let mut offset = 0usize;
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let last_content = lines
            .iter()
            .rposition(|l| !l.trim().is_empty())
            .map_or(0, |i| i + 1);
        for (index, raw) in lines.iter().enumerate().take(last_content) {
            let content = raw.trim_end_matches(['\n', '\r']);
            let trimmed = content.trim();
            let start = offset + (content.len() - content.trim_start().len());
            let span = SourceSpan::new(start.into(), trimmed.len().max(1));
            offset += raw.len();
            let class = trimmed
                .parse::<i64>()
                .map_err(|_| LabelsError::NotInteger {
                    path: path.to_path_buf(),
                    line: index + 1,
                    text: trimmed.to_string(),
                    src: NamedSource::new(path.display().to_string(), source.clone()),
                    span,
                })?;
            labels.push(Label {
                class,
                line: index + 1,
                span,
            });
        }
        Ok(Labels {
            path: path.to_path_buf(),
            labels,
            source,
        })
    }

    /// Checks the count against the input list's samples.
    pub fn check_count(&self, list: &Path, samples: usize) -> Result<(), LabelsError> {
        if self.labels.len() == samples {
            return Ok(());
        }
        Err(LabelsError::Count {
            path: self.path.clone(),
            list: list.to_path_buf(),
            labels: self.labels.len(),
            samples,
        })
    }

    /// Checks every class against the output's class count; the first offender is the error.
    pub fn check_range(&self, classes: usize, output: &str) -> Result<(), LabelsError> {
        match self.labels.iter().find(|l| !in_range(l.class, classes)) {
            None => Ok(()),
            Some(label) => Err(self.out_of_range(label, classes, output)),
        }
    }

    /// The out-of-range diagnostic for one label.
    pub fn out_of_range(&self, label: &Label, classes: usize, output: &str) -> LabelsError {
        LabelsError::OutOfRange {
            path: self.path.clone(),
            line: label.line,
            class: label.class,
            classes,
            output: output.to_string(),
            src: NamedSource::new(self.path.display().to_string(), self.source.clone()),
            span: label.span,
        }
    }
}

/// Whether `class` indexes an axis of `classes` entries.
pub fn in_range(class: i64, classes: usize) -> bool {
    usize::try_from(class).is_ok_and(|c| c < classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_blank_lines_are_fine_but_inner_ones_are_not() {
        let labels = Labels::parse(Path::new("l.txt"), "0\n1\r\n 1 \n\n\n").unwrap();
        let classes: Vec<i64> = labels.labels.iter().map(|l| l.class).collect();
        assert_eq!(classes, vec![0, 1, 1]);
        assert_eq!(labels.labels[2].line, 3);
        let err = Labels::parse(Path::new("l.txt"), "0\n\n1\n").unwrap_err();
        assert!(
            matches!(err, LabelsError::NotInteger { line: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn range_and_count_checks_name_the_line() {
        let labels = Labels::parse(Path::new("l.txt"), "0\n1\n-1\n2\n").unwrap();
        let err = labels.check_range(2, "probs").unwrap_err();
        assert!(matches!(
            err,
            LabelsError::OutOfRange {
                line: 3,
                class: -1,
                ..
            }
        ));
        assert!(labels.check_range(3, "probs").is_err());
        assert!(labels.check_count(Path::new("list.txt"), 4).is_ok());
        let err = labels.check_count(Path::new("list.txt"), 5).unwrap_err();
        assert_eq!(
            err.to_string(),
            "labels file l.txt has 4 labels but input list list.txt has 5 samples"
        );
    }
}
