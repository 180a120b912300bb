//! Reading qairt-quantizer's AdaRound YAML (`--config adaround.yaml`), every problem a
//! diagnostic pointing at the YAML line.
//!
//! The file is read with `saphyr`, which keeps each node's position, so a bad value or key is
//! shown where it is written.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use miette::{NamedSource, SourceSpan};
use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use super::AdaroundConfig;
use super::config::{BITWIDTHS, CALLBACK_KEYS, OPTIONAL_KEYS, TOP_KEYS, quant_scheme};
use crate::encoding::Bitwidth;
use crate::graph::Graph;

/// A problem with an AdaRound YAML file.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
#[diagnostic(code(quant::adaround::config))]
pub struct ConfigError {
    message: String,
    #[source_code]
    source_code: NamedSource<Arc<str>>,
    #[label("{label}")]
    span: Option<SourceSpan>,
    label: String,
    #[help]
    help: Option<String>,
}

/// The names a config gives, with where they are written: checked against the model once it
/// is read.
#[derive(Debug, Clone, Default)]
pub struct ConfigNames {
    path: String,
    text: Arc<str>,
    /// `ignore_quant_ops_list` entries.
    ops: Vec<(String, Range<usize>)>,
    /// `param_bw_override_list` parameter names.
    params: Vec<(String, Range<usize>)>,
}

struct Reader<'t> {
    path: String,
    text: Arc<str>,
    /// Byte offset of each char, for saphyr's char-indexed markers.
    offsets: Vec<usize>,
    _text: std::marker::PhantomData<&'t ()>,
}

impl Reader<'_> {
    fn span(&self, node: &MarkedYaml) -> Range<usize> {
        let byte = |i: usize| self.offsets.get(i).copied().unwrap_or(self.text.len());
        let (start, end) = (byte(node.span.start.index()), byte(node.span.end.index()));
        start..end.max(start)
    }

    fn error(
        &self,
        span: Option<Range<usize>>,
        message: String,
        label: &str,
        help: Option<String>,
    ) -> Box<ConfigError> {
        Box::new(ConfigError {
            message: format!("{}: {message}", self.path),
            source_code: NamedSource::new(self.path.clone(), self.text.clone()),
            span: span.map(|r| {
                SourceSpan::from(r.start..r.end.max(r.start + 1).min(self.text.len().max(1)))
            }),
            label: label.to_string(),
            help,
        })
    }

    fn integer(&self, node: &MarkedYaml, key: &str, min: i64) -> Result<i64, Box<ConfigError>> {
        match &node.data {
            YamlData::Value(Scalar::Integer(i)) if *i >= min => Ok(*i),
            _ => Err(self.error(
                Some(self.span(node)),
                format!("`{key}` must be an integer of at least {min}"),
                "not an integer in range",
                None,
            )),
        }
    }

    fn string(&self, node: &MarkedYaml, what: &str) -> Result<String, Box<ConfigError>> {
        match &node.data {
            YamlData::Value(Scalar::String(s)) => Ok(s.to_string()),
            YamlData::Value(Scalar::Integer(i)) => Ok(i.to_string()),
            _ => Err(self.error(
                Some(self.span(node)),
                format!("{what} must be a string"),
                "not a string",
                None,
            )),
        }
    }

    fn bitwidth(&self, node: &MarkedYaml, key: &str) -> Result<Bitwidth, Box<ConfigError>> {
        let bits = match &node.data {
            YamlData::Value(Scalar::Integer(i)) => *i,
            _ => -1,
        };
        if !(i64::from(*BITWIDTHS.start())..=i64::from(*BITWIDTHS.end())).contains(&bits) {
            return Err(self.error(
                Some(self.span(node)),
                format!("`{key}`: AdaRound weight bitwidths are 4 to 16"),
                "unsupported bitwidth",
                Some(
                    "AIMET's AdaRound takes 4 bits and more; use 4 for the smallest weights".into(),
                ),
            ));
        }
        Bitwidth::new(bits as u32).map_err(|e| {
            self.error(
                Some(self.span(node)),
                e.to_string(),
                "unsupported bitwidth",
                None,
            )
        })
    }

    fn key_name(&self, key: &MarkedYaml) -> Result<String, Box<ConfigError>> {
        match &key.data {
            YamlData::Value(Scalar::String(s)) => Ok(s.to_string()),
            _ => Err(self.error(
                Some(self.span(key)),
                "keys must be names".into(),
                "not a name",
                None,
            )),
        }
    }

    fn unknown(&self, key: &MarkedYaml, name: &str, known: &[&str]) -> Box<ConfigError> {
        if CALLBACK_KEYS.contains(&name) {
            return self.error(
                Some(self.span(key)),
                format!("`{name}` names a Python data loader, which quant does not run"),
                "Python callback",
                Some("the samples come from `--input_list`; remove this key (`num_batches` picks how many)".into()),
            );
        }
        let near = known
            .iter()
            .filter(|k| strsim::jaro_winkler(name, k) > 0.8)
            .max_by(|a, b| strsim::jaro_winkler(name, a).total_cmp(&strsim::jaro_winkler(name, b)));
        self.error(
            Some(self.span(key)),
            format!("unknown key `{name}`"),
            "unknown key",
            Some(match near {
                Some(k) => format!("did you mean `{k}`?"),
                None => format!("the keys are {}", known.join(", ")),
            }),
        )
    }
}

/// Reads an AdaRound YAML file.
pub fn read_config(path: &Path) -> Result<(AdaroundConfig, ConfigNames), Box<ConfigError>> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Box::new(ConfigError {
            message: format!("cannot read {shown}: {e}"),
            source_code: NamedSource::new(shown.clone(), Arc::from("")),
            span: None,
            label: String::new(),
            help: None,
        })
    })?;
    parse_config(&shown, &text)
}

/// Parses the text of an AdaRound YAML file named `path` (for diagnostics).
pub fn parse_config(
    path: &str,
    text: &str,
) -> Result<(AdaroundConfig, ConfigNames), Box<ConfigError>> {
    let reader = Reader {
        path: path.to_string(),
        text: Arc::from(text),
        offsets: text.char_indices().map(|(b, _)| b).collect(),
        _text: std::marker::PhantomData,
    };
    let documents = MarkedYaml::load_from_str(text).map_err(|e| {
        let at = e.marker().index();
        let byte = reader.offsets.get(at).copied().unwrap_or(text.len());
        reader.error(
            Some(byte..byte + 1),
            format!("not YAML: {}", e.info()),
            "here",
            None,
        )
    })?;
    let mut config = AdaroundConfig::default();
    let mut names = ConfigNames {
        path: path.to_string(),
        text: reader.text.clone(),
        ..ConfigNames::default()
    };
    let Some(root) = documents.first() else {
        return Ok((config, names));
    };
    let YamlData::Mapping(top) = &root.data else {
        return Err(reader.error(
            Some(reader.span(root)),
            "the file must be a mapping of keys".into(),
            "not a mapping",
            None,
        ));
    };
    for (key, value) in top {
        let name = reader.key_name(key)?;
        match name.as_str() {
            "num_batches" => config.num_batches = Some(reader.integer(value, &name, 1)? as usize),
            "num_iterations" => config.num_iterations = reader.integer(value, &name, 1)? as usize,
            "seed" => config.seed = reader.integer(value, &name, 0)? as u64,
            "optional_adaround_args" => {
                let YamlData::Mapping(optional) = &value.data else {
                    return Err(reader.error(
                        Some(reader.span(value)),
                        "`optional_adaround_args` must be a mapping".into(),
                        "not a mapping",
                        None,
                    ));
                };
                for (key, value) in optional {
                    let name = reader.key_name(key)?;
                    match name.as_str() {
                        "default_param_bw" => {
                            config.default_param_bw = Some(reader.bitwidth(value, &name)?)
                        }
                        "default_quant_scheme" => {
                            let scheme = reader.string(value, "`default_quant_scheme`")?;
                            let Some(method) = quant_scheme(&scheme) else {
                                return Err(reader.error(
                                    Some(reader.span(value)),
                                    format!("unknown quant scheme `{scheme}`"),
                                    "unknown scheme",
                                    Some("use `tf` (min-max) or `tf_enhanced` (SQNR)".into()),
                                ));
                            };
                            config.default_quant_scheme = Some(method);
                        }
                        "ignore_quant_ops_list" => {
                            let YamlData::Sequence(list) = &value.data else {
                                return Err(reader.error(
                                    Some(reader.span(value)),
                                    "`ignore_quant_ops_list` must be a list of layer names".into(),
                                    "not a list",
                                    None,
                                ));
                            };
                            for item in list {
                                let op = reader.string(item, "a layer name")?;
                                names.ops.push((op.clone(), reader.span(item)));
                                config.ignore_quant_ops_list.push(op);
                            }
                        }
                        "param_bw_override_list" => {
                            let YamlData::Sequence(list) = &value.data else {
                                return Err(reader.error(Some(reader.span(value)), "`param_bw_override_list` must be a list of [parameter, bitwidth] pairs".into(), "not a list", None));
                            };
                            for item in list {
                                let pair = match &item.data {
                                    YamlData::Sequence(pair) if pair.len() == 2 => pair,
                                    _ => {
                                        return Err(reader.error(
                                            Some(reader.span(item)),
                                            "each entry must be a [parameter, bitwidth] pair"
                                                .into(),
                                            "not a pair",
                                            None,
                                        ));
                                    }
                                };
                                let param = reader.string(&pair[0], "a parameter name")?;
                                let bits = reader.bitwidth(&pair[1], &name)?;
                                names.params.push((param.clone(), reader.span(&pair[0])));
                                config.param_bw_override_list.push((param, bits));
                            }
                        }
                        _ => return Err(reader.unknown(key, &name, &OPTIONAL_KEYS)),
                    }
                }
            }
            _ => return Err(reader.unknown(key, &name, &TOP_KEYS)),
        }
    }
    Ok((config, names))
}

impl ConfigNames {
    /// Checks every name against `graph`: ops by node name or output tensor, parameters by
    /// tensor name.
    pub fn check(&self, graph: &Graph) -> Result<(), Box<ConfigError>> {
        let reader = Reader {
            path: self.path.clone(),
            text: self.text.clone(),
            offsets: Vec::new(),
            _text: std::marker::PhantomData,
        };
        for (op, span) in &self.ops {
            let known = graph
                .nodes()
                .iter()
                .any(|n| &n.name == op || n.outputs.iter().any(|o| o.as_str() == op));
            if !known {
                return Err(reader.error(
                    Some(span.clone()),
                    format!("`ignore_quant_ops_list` names `{op}`, which is no node or output of the model"),
                    "no such layer",
                    None,
                ));
            }
        }
        for (param, span) in &self.params {
            let known = graph.parameter(param).is_some();
            if !known {
                return Err(reader.error(
                    Some(span.clone()),
                    format!("`param_bw_override_list` names `{param}`, which is no parameter of the model"),
                    "no such parameter",
                    None,
                ));
            }
        }
        Ok(())
    }
}
