//! Parsing the `--input_list` text into samples, and binding a sample's files to model inputs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{NamedSource, SourceSpan};

use super::{CalibError, InputSpec, ListSource};

/// Outputs requested by the list's optional leading lines. qairt-quantizer computes encodings
/// only for what these lines select, so the caller decides what to do with them; they are kept
/// verbatim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputSelection {
    /// Names from the `#<layer> <layer>...` line.
    pub layers: Vec<String>,
    /// Names from the `%<tensor> <tensor>...` line.
    pub tensors: Vec<String>,
}

/// One file of a sample, as written on its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleFile {
    /// The input name of a `name:=path` pair; `None` for a bare path (single-input models).
    pub input: Option<String>,
    /// The path, resolved against the list file's folder unless it was absolute.
    pub path: PathBuf,
    /// Where the path is in the list text.
    pub span: SourceSpan,
}

/// One calibration sample: one non-blank, non-header line of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// 1-based line number in the list file.
    pub line: usize,
    /// The line's span in the list text (without the line break).
    pub span: SourceSpan,
    /// The files in the order written.
    pub files: Vec<SampleFile>,
}

/// A parsed input list: what to feed the model, one sample per line.
#[derive(Debug, Clone)]
pub struct InputList {
    /// The list file (as given; diagnostics show it this way).
    pub path: PathBuf,
    /// The `#`/`%` output lines, empty when absent.
    pub outputs: OutputSelection,
    /// The samples in list order.
    pub samples: Vec<Sample>,
    /// The list text, for diagnostics.
    pub(crate) source: Arc<str>,
}

impl InputList {
    /// Reads and parses the list file at `path`.
    pub fn read(path: &Path) -> Result<InputList, CalibError> {
        let text = std::fs::read_to_string(path).map_err(|source| CalibError::ReadList {
            path: path.to_path_buf(),
            source,
        })?;
        InputList::parse(path, &text)
    }

    /// Parses list `text` as if read from `path` (relative sample paths resolve against
    /// `path`'s folder). Checks the syntax only; [`InputList::check`] checks it against a model.
    pub fn parse(path: &Path, text: &str) -> Result<InputList, CalibError> {
        let source: Arc<str> = Arc::from(text);
        let src = || NamedSource::new(path.display().to_string(), source.clone());
        let dir = list_dir(path);
        let mut outputs = OutputSelection::default();
        let mut seen_tensor_line = false;
        let mut samples = Vec::new();

        let mut offset = 0;
        for (index, raw_line) in text.split('\n').enumerate() {
            let line_no = index + 1;
            let line_start = offset;
            offset += raw_line.len() + 1;
            let line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
            let line_span = SourceSpan::from((line_start, line.len()));
            let trimmed = line.trim_start();
            if trimmed.is_empty() {
                continue;
            }
            let malformed =
                |reason: &str, help: &str, span: SourceSpan| CalibError::MalformedLine {
                    line: line_no,
                    reason: reason.to_string(),
                    help: help.to_string(),
                    src: src(),
                    span,
                };
            if let Some(rest) = trimmed
                .strip_prefix('#')
                .or_else(|| trimmed.strip_prefix('%'))
            {
                let is_layers = trimmed.starts_with('#');
                let kind = if is_layers {
                    "output-layer (`#`)"
                } else {
                    "output-tensor (`%`)"
                };
                if !samples.is_empty() {
                    return Err(malformed(
                        &format!("an {kind} line after the first sample"),
                        "put the `#` output-layer line and then the `%` output-tensor line before any sample",
                        line_span,
                    ));
                }
                if is_layers && seen_tensor_line {
                    return Err(malformed(
                        "the `#` output-layer line comes after the `%` output-tensor line",
                        "when both are given, the `#` line comes first, then the `%` line",
                        line_span,
                    ));
                }
                let names: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
                let target = if is_layers {
                    &mut outputs.layers
                } else {
                    &mut outputs.tensors
                };
                if !target.is_empty() {
                    return Err(malformed(
                        &format!("a second {kind} line"),
                        "list all names on one line, separated by spaces",
                        line_span,
                    ));
                }
                *target = names;
                seen_tensor_line |= !is_layers;
                continue;
            }

            let mut files: Vec<SampleFile> = Vec::new();
            for (token_start, token) in tokens(line) {
                let token_span = SourceSpan::from((line_start + token_start, token.len()));
                let file = match token.split_once(":=") {
                    Some((name, file_path)) => {
                        if name.is_empty() || file_path.is_empty() {
                            return Err(malformed(
                                "a `name:=path` pair with an empty side",
                                "write each input as `name:=path` with no spaces around `:=`",
                                token_span,
                            ));
                        }
                        if files.iter().any(|f| f.input.as_deref() == Some(name)) {
                            return Err(malformed(
                                &format!("input `{name}` is given twice"),
                                "give each input once per line",
                                token_span,
                            ));
                        }
                        let path_start = token_start + name.len() + 2;
                        SampleFile {
                            input: Some(name.to_string()),
                            path: resolve(&dir, file_path),
                            span: SourceSpan::from((line_start + path_start, file_path.len())),
                        }
                    }
                    None => SampleFile {
                        input: None,
                        path: resolve(&dir, token),
                        span: token_span,
                    },
                };
                files.push(file);
            }
            let named = files.iter().filter(|f| f.input.is_some()).count();
            if named != 0 && named != files.len() {
                return Err(malformed(
                    "the line mixes `name:=path` pairs and bare paths",
                    "name every input on a multi-input line: `name:=path name2:=path2`",
                    line_span,
                ));
            }
            if named == 0 && files.len() > 1 {
                return Err(malformed(
                    "several paths without input names",
                    "one sample per line; for a multi-input model write `name:=path name2:=path2` (paths cannot contain spaces)",
                    line_span,
                ));
            }
            samples.push(Sample {
                line: line_no,
                span: line_span,
                files,
            });
        }

        if samples.is_empty() {
            return Err(CalibError::EmptyList {
                path: path.to_path_buf(),
                src: src(),
                span: SourceSpan::from((0, text.len())),
            });
        }
        Ok(InputList {
            path: path.to_path_buf(),
            outputs,
            samples,
            source,
        })
    }

    /// The folder relative sample paths are resolved against.
    pub fn dir(&self) -> PathBuf {
        list_dir(&self.path)
    }

    /// Checks every sample against the model's inputs without reading sample data: names,
    /// files present, and sizes (raw: file length; `.npy`: header and data length). Run it
    /// before a long calibration so a typo on line 900 fails at once.
    pub fn check(&self, specs: &[InputSpec]) -> Result<(), CalibError> {
        for sample in &self.samples {
            for (spec, file) in specs.iter().zip(self.bind(sample, specs)?) {
                super::sample::check_file(self, sample, spec, file)?;
            }
        }
        Ok(())
    }

    /// The sample's files in model-input order (`specs` order).
    pub fn bind<'a>(
        &self,
        sample: &'a Sample,
        specs: &[InputSpec],
    ) -> Result<Vec<&'a SampleFile>, CalibError> {
        let names = || {
            specs
                .iter()
                .map(|s| format!("`{}`", s.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let example = || {
            specs
                .iter()
                .map(|s| format!("{}:=path", s.name))
                .collect::<Vec<_>>()
                .join(" ")
        };
        if let [file] = sample.files.as_slice()
            && file.input.is_none()
        {
            if specs.len() == 1 {
                return Ok(vec![file]);
            }
            return Err(CalibError::MalformedLine {
                line: sample.line,
                reason: format!(
                    "one unnamed file for a model with {} inputs ({})",
                    specs.len(),
                    names()
                ),
                help: format!("name each input: `{}`", example()),
                src: self.named_source(),
                span: sample.span,
            });
        }
        for file in &sample.files {
            let name = file.input.as_deref().unwrap_or_default();
            if !specs.iter().any(|s| s.name == name) {
                let token_start = file.span.offset() - name.len() - 2;
                return Err(CalibError::UnknownInput {
                    line: sample.line,
                    name: name.to_string(),
                    inputs: names(),
                    src: self.named_source(),
                    span: SourceSpan::from((token_start, name.len() + 2 + file.span.len())),
                });
            }
        }
        specs
            .iter()
            .map(|spec| {
                sample
                    .files
                    .iter()
                    .find(|f| f.input.as_deref() == Some(spec.name.as_str()))
                    .ok_or_else(|| CalibError::MissingInput {
                        line: sample.line,
                        missing: spec.name.clone(),
                        help: format!("every line needs all inputs: `{}`", example()),
                        src: self.named_source(),
                        span: sample.span,
                    })
            })
            .collect()
    }

    pub(crate) fn named_source(&self) -> ListSource {
        NamedSource::new(self.path.display().to_string(), self.source.clone())
    }
}

fn list_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn resolve(dir: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// Whitespace-separated tokens with their byte offsets in `line`.
fn tokens(line: &str) -> impl Iterator<Item = (usize, &str)> {
    line.split([' ', '\t'])
        .scan(0usize, |pos, tok| {
            let start = *pos;
            *pos += tok.len() + 1;
            Some((start, tok))
        })
        .filter(|(_, t)| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> InputList {
        InputList::parse(Path::new("data/list.txt"), text).unwrap()
    }

    #[test]
    fn single_input_lines_resolve_against_the_list_folder() {
        let list = parse("0000.raw\n\n  \n/abs/0001.npy\r\nsub/0002.raw");
        let paths: Vec<_> = list
            .samples
            .iter()
            .map(|s| s.files[0].path.clone())
            .collect();
        assert_eq!(
            paths,
            [
                PathBuf::from("data/0000.raw"),
                "/abs/0001.npy".into(),
                "data/sub/0002.raw".into()
            ]
        );
        assert_eq!(
            list.samples.iter().map(|s| s.line).collect::<Vec<_>>(),
            [1, 4, 5]
        );
        assert_eq!(list.samples[1].span, SourceSpan::from((13, 13)));
    }

    #[test]
    fn output_lines_are_kept() {
        let list = parse("#conv1 relu1\n%out_a out_b\na:=x.raw b:=y.raw\n");
        assert_eq!(list.outputs.layers, ["conv1", "relu1"]);
        assert_eq!(list.outputs.tensors, ["out_a", "out_b"]);
        let files = &list.samples[0].files;
        assert_eq!(files[1].input.as_deref(), Some("b"));
        assert_eq!(files[1].path, PathBuf::from("data/y.raw"));
        // the span covers the path part of `b:=y.raw` only
        assert_eq!(files[1].span, SourceSpan::from((38, 5)));
    }

    #[test]
    fn list_in_current_folder() {
        let list = InputList::parse(Path::new("list.txt"), "a.raw").unwrap();
        assert_eq!(list.samples[0].files[0].path, PathBuf::from("./a.raw"));
    }
}
