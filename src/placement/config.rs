//! AIMET's quantsim config JSON (`default_config.json` and the backend configs AIMET ships):
//! read into a [`QuantsimConfig`], every problem a diagnostic that points at the file's line.
//!
//! The format: `defaults` (`ops`, `params`, `strict_symmetric`, `unsigned_symmetric`,
//! `per_channel_quantization`, `supported_kernels`, `hw_version`), `params` (by AIMET's
//! parameter names: `weight`, `bias`, ...), `op_type` (per ONNX op type: `is_input_quantized`,
//! `is_output_quantized`, `is_symmetric`, `per_channel_quantization`, `params`,
//! `supported_kernels`, `encoding_constraints`), `supergroups` (`op_list`s),
//! `supergroup_pass_list`, `model_input`, `model_output`. Booleans are AIMET's strings
//! `"True"`/`"False"`; JSON booleans are accepted too.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use miette::{Diagnostic, NamedSource, SourceSpan};
use serde_json::{Map, Value};

use crate::manifest::suggestion;
use crate::overrides::{NameAt, find_name, span_at};

/// One quantizer setting group (`defaults.params`, `params.bias`, an op type's param).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ParamConfig {
    /// `is_quantized`.
    pub quantized: Option<bool>,
    /// `is_symmetric`.
    pub symmetric: Option<bool>,
}

/// The settings of one op type (`op_type.Conv`, ...), each `None` when not given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct OpTypeConfig {
    /// `is_input_quantized`.
    pub input_quantized: Option<bool>,
    /// `is_output_quantized`.
    pub output_quantized: Option<bool>,
    /// `is_symmetric` of the op's activations.
    pub symmetric: Option<bool>,
    /// `per_channel_quantization` of the op's weight.
    pub per_channel: Option<bool>,
    /// `params`, by AIMET's parameter name.
    pub params: BTreeMap<String, ParamConfig>,
}

/// An AIMET quantsim config: which tensors get quantizers and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuantsimConfig {
    /// `defaults.ops.is_output_quantized`.
    pub output_quantized: bool,
    /// `defaults.ops.is_symmetric`: activations symmetric.
    pub activations_symmetric: bool,
    /// `defaults.params.is_quantized`.
    pub params_quantized: bool,
    /// `defaults.params.is_symmetric`.
    pub params_symmetric: bool,
    /// `defaults.strict_symmetric`: symmetric grids without their lowest level.
    pub strict_symmetric: bool,
    /// `defaults.per_channel_quantization`.
    pub per_channel: bool,
    /// `params`: settings by AIMET's parameter name (`bias`, `weight`, ...).
    pub params: BTreeMap<String, ParamConfig>,
    /// `op_type`: settings by ONNX op type.
    pub op_types: BTreeMap<String, OpTypeConfig>,
    /// `supergroups`: chains of op types with no quantizer between them.
    pub supergroups: Vec<Vec<String>>,
    /// `model_input.is_input_quantized`.
    pub model_input_quantized: bool,
    /// `model_output.is_output_quantized`: `None` when not given (outputs follow their op).
    pub model_output_quantized: Option<bool>,
}

/// AIMET's defaults with nothing configured per op type or parameter: outputs and parameters
/// quantized, parameters symmetric, activations asymmetric, per-tensor, model input quantized.
impl Default for QuantsimConfig {
    fn default() -> Self {
        QuantsimConfig {
            output_quantized: true,
            activations_symmetric: false,
            params_quantized: true,
            params_symmetric: true,
            strict_symmetric: false,
            per_channel: false,
            params: BTreeMap::new(),
            op_types: BTreeMap::new(),
            supergroups: Vec::new(),
            model_input_quantized: true,
            model_output_quantized: None,
        }
    }
}

impl QuantsimConfig {
    /// The names of the built-in configs, for manifests and `--quantsim_config`.
    pub const BUILTIN: [&'static str; 2] = ["aimet-default", "aimet-per-channel"];

    /// A built-in config: `aimet-default` has the same settings as AIMET's
    /// `default_config.json` (per-tensor weights), `aimet-per-channel` as
    /// `default_config_per_channel.json` (per-channel Conv, ConvTranspose, Gemm, MatMul and
    /// PRelu weights), which is what aimet-onnx uses when given no config.
    pub fn builtin(name: &str) -> Option<QuantsimConfig> {
        let per_channel = match name {
            "aimet-default" => false,
            "aimet-per-channel" => true,
            _ => return None,
        };
        let off = || ParamConfig {
            quantized: Some(false),
            symmetric: None,
        };
        let mut op_types = BTreeMap::new();
        op_types.insert(
            "BatchNormalization".to_string(),
            OpTypeConfig {
                params: [("running_mean", off()), ("running_var", off())]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                ..OpTypeConfig::default()
            },
        );
        op_types.insert(
            "Cast".to_string(),
            OpTypeConfig {
                output_quantized: Some(false),
                ..OpTypeConfig::default()
            },
        );
        if per_channel {
            for op in ["Conv", "ConvTranspose", "Gemm", "MatMul", "PRelu"] {
                op_types.insert(
                    op.to_string(),
                    OpTypeConfig {
                        per_channel: Some(true),
                        ..OpTypeConfig::default()
                    },
                );
            }
        }
        let chain = |a: &str, b: &str| vec![a.to_string(), b.to_string()];
        Some(QuantsimConfig {
            params: [("bias".to_string(), off())].into_iter().collect(),
            op_types,
            supergroups: vec![
                chain("Conv", "Relu"),
                chain("ConvTranspose", "Relu"),
                chain("Conv", "Clip"),
                chain("Add", "Relu"),
                chain("Gemm", "Relu"),
            ],
            ..QuantsimConfig::default()
        })
    }

    /// Reads a config file.
    pub fn read(path: &Path) -> Result<QuantsimConfig, Box<QuantsimConfigError>> {
        QuantsimConfig::read_as(path, &path.display().to_string())
    }

    /// Reads a config file, naming it `shown` in diagnostics (the path as the user wrote it).
    pub fn read_as(path: &Path, shown: &str) -> Result<QuantsimConfig, Box<QuantsimConfigError>> {
        let source = |text: String| NamedSource::new(shown, Arc::new(text));
        let text = std::fs::read_to_string(path).map_err(|e| {
            Box::new(QuantsimConfigError {
                message: format!("cannot read the quantsim config: {e}"),
                src: source(String::new()),
                span: None,
                help: None,
            })
        })?;
        QuantsimConfig::parse(&text, source(text.clone()))
    }

    /// Parses a config's text; `src` names it in diagnostics.
    pub fn parse(
        text: &str,
        src: NamedSource<Arc<String>>,
    ) -> Result<QuantsimConfig, Box<QuantsimConfigError>> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            let message = e.to_string();
            let message = message
                .rsplit_once(" at line ")
                .map_or(message.as_str(), |(m, _)| m)
                .to_string();
            Box::new(QuantsimConfigError {
                message: format!("not valid JSON: {message}"),
                span: Some(span_at(text, e.line(), e.column())),
                src: src.clone(),
                help: None,
            })
        })?;
        Reader { text, src }.config(&value)
    }

    /// The settings of `op_type`, when the config names it.
    pub fn op_type(&self, op_type: &str) -> Option<&OpTypeConfig> {
        self.op_types.get(op_type)
    }

    /// Whether parameter `param` (AIMET's name: `weight`, `bias`, `running_mean`, ...) of an
    /// `op_type` op gets a quantizer: the op type's setting, else the global `params` one, else
    /// the default.
    pub fn param_quantized(&self, op_type: &str, param: &str) -> bool {
        self.op_type(op_type)
            .and_then(|op| op.params.get(param))
            .and_then(|p| p.quantized)
            .or_else(|| self.params.get(param).and_then(|p| p.quantized))
            .unwrap_or(self.params_quantized)
    }

    /// Whether an `op_type` op's weight is quantized per channel.
    pub fn per_channel(&self, op_type: &str) -> bool {
        self.op_type(op_type)
            .and_then(|op| op.per_channel)
            .unwrap_or(self.per_channel)
    }
}

/// A quantsim config that cannot be used.
#[derive(Debug, Clone, thiserror::Error, Diagnostic)]
#[error("{message}")]
#[diagnostic(code(quant::quantsim_config))]
pub struct QuantsimConfigError {
    message: String,
    #[source_code]
    src: NamedSource<Arc<String>>,
    #[label("here")]
    span: Option<SourceSpan>,
    #[help]
    help: Option<String>,
}

impl QuantsimConfigError {
    /// The message, without the source excerpt.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message with the line it points at (`…, line 12`), for a diagnostic shown against
    /// another file (the manifest naming the config).
    pub fn located(&self) -> String {
        let Some(span) = self.span else {
            return self.message.clone();
        };
        let text = self.src.inner().as_str();
        let line = text[..span.offset().min(text.len())].matches('\n').count() + 1;
        let help = self
            .help
            .as_ref()
            .map_or(String::new(), |help| format!(" ({help})"));
        format!("{}, line {line} of {}{help}", self.message, self.src.name())
    }
}

/// The ONNX op types of the default domain (opset 1 to 23), for checking `op_type` and
/// `supergroups` names; AIMET's own op names are the same.
pub const ONNX_OP_TYPES: &[&str] = &[
    "Abs",
    "Acos",
    "Acosh",
    "Add",
    "AffineGrid",
    "And",
    "ArgMax",
    "ArgMin",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "AveragePool",
    "BatchNormalization",
    "Bernoulli",
    "BitShift",
    "BitwiseAnd",
    "BitwiseNot",
    "BitwiseOr",
    "BitwiseXor",
    "BlackmanWindow",
    "Cast",
    "CastLike",
    "Ceil",
    "Celu",
    "CenterCropPad",
    "Clip",
    "Col2Im",
    "Compress",
    "Concat",
    "ConcatFromSequence",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvInteger",
    "ConvTranspose",
    "Cos",
    "Cosh",
    "CumSum",
    "DFT",
    "DeformConv",
    "DepthToSpace",
    "DequantizeLinear",
    "Det",
    "Div",
    "Dropout",
    "DynamicQuantizeLinear",
    "Einsum",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "EyeLike",
    "Flatten",
    "Floor",
    "GRU",
    "Gather",
    "GatherElements",
    "GatherND",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalLpPool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "GridSample",
    "GroupNormalization",
    "HammingWindow",
    "HannWindow",
    "HardSigmoid",
    "HardSwish",
    "Hardmax",
    "Identity",
    "If",
    "ImageDecoder",
    "InstanceNormalization",
    "IsInf",
    "IsNaN",
    "LRN",
    "LSTM",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "Loop",
    "LpNormalization",
    "LpPool",
    "MatMul",
    "MatMulInteger",
    "Max",
    "MaxPool",
    "MaxRoiPool",
    "MaxUnpool",
    "Mean",
    "MeanVarianceNormalization",
    "MelWeightMatrix",
    "Min",
    "Mish",
    "Mod",
    "Mul",
    "Multinomial",
    "Neg",
    "NegativeLogLikelihoodLoss",
    "NonMaxSuppression",
    "NonZero",
    "Not",
    "OneHot",
    "Optional",
    "OptionalGetElement",
    "OptionalHasElement",
    "Or",
    "PRelu",
    "Pad",
    "Pow",
    "QLinearConv",
    "QLinearMatMul",
    "QuantizeLinear",
    "RMSNormalization",
    "RNN",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Range",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "RegexFullMatch",
    "Relu",
    "Reshape",
    "Resize",
    "ReverseSequence",
    "RoiAlign",
    "RotaryEmbedding",
    "Round",
    "STFT",
    "Scan",
    "Scatter",
    "ScatterElements",
    "ScatterND",
    "Selu",
    "SequenceAt",
    "SequenceConstruct",
    "SequenceEmpty",
    "SequenceErase",
    "SequenceInsert",
    "SequenceLength",
    "SequenceMap",
    "Shape",
    "Shrink",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Size",
    "Slice",
    "Softmax",
    "SoftmaxCrossEntropyLoss",
    "Softplus",
    "Softsign",
    "SpaceToDepth",
    "Split",
    "SplitToSequence",
    "Sqrt",
    "Squeeze",
    "StringConcat",
    "StringNormalizer",
    "StringSplit",
    "Sub",
    "Sum",
    "Tan",
    "Tanh",
    "TfIdfVectorizer",
    "ThresholdedRelu",
    "Tile",
    "TopK",
    "Transpose",
    "Trilu",
    "Unique",
    "Unsqueeze",
    "Upsample",
    "Where",
    "Xor",
];

/// Walks the JSON value, keeping the text for spans.
struct Reader<'t> {
    text: &'t str,
    src: NamedSource<Arc<String>>,
}

impl Reader<'_> {
    /// Where the key at `path` (outer keys first) stands in the text.
    fn span(&self, path: &[&str]) -> Option<SourceSpan> {
        let mut from = 0;
        let mut span = None;
        for key in path {
            let found = find_name(self.text, from, &format!("\"{key}\""), NameAt::Key)?;
            from = found.offset() + found.len();
            span = Some(found);
        }
        span
    }

    fn error(
        &self,
        path: &[&str],
        message: String,
        help: Option<String>,
    ) -> Box<QuantsimConfigError> {
        Box::new(QuantsimConfigError {
            message,
            src: self.src.clone(),
            span: self.span(path),
            help,
        })
    }

    fn object<'v>(
        &self,
        value: &'v Value,
        path: &[&str],
    ) -> Result<&'v Map<String, Value>, Box<QuantsimConfigError>> {
        value.as_object().ok_or_else(|| {
            let what = if path.is_empty() {
                "the config".to_string()
            } else {
                format!("`{}`", path.join("."))
            };
            self.error(path, format!("{what} must be a JSON object"), None)
        })
    }

    /// Rejects keys outside `known`, suggesting the nearest.
    fn check_keys(
        &self,
        map: &Map<String, Value>,
        path: &[&str],
        known: &[&str],
    ) -> Result<(), Box<QuantsimConfigError>> {
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                let mut at = path.to_vec();
                at.push(key);
                let place = if path.is_empty() {
                    "at the top level".to_string()
                } else {
                    format!("in `{}`", path.join("."))
                };
                return Err(self.error(
                    &at,
                    format!("unknown key `{key}` {place}"),
                    Some(suggestion(key, known.iter().copied(), "key")),
                ));
            }
        }
        Ok(())
    }

    fn boolean(
        &self,
        map: &Map<String, Value>,
        path: &[&str],
        key: &str,
    ) -> Result<Option<bool>, Box<QuantsimConfigError>> {
        let Some(value) = map.get(key) else {
            return Ok(None);
        };
        match value {
            Value::Bool(b) => Ok(Some(*b)),
            Value::String(s) if s == "True" || s == "true" => Ok(Some(true)),
            Value::String(s) if s == "False" || s == "false" => Ok(Some(false)),
            other => {
                let mut at = path.to_vec();
                at.push(key);
                Err(self.error(
                    &at,
                    format!(
                        "`{}` must be \"True\" or \"False\", not {other}",
                        at.join(".")
                    ),
                    None,
                ))
            }
        }
    }

    fn param(&self, value: &Value, path: &[&str]) -> Result<ParamConfig, Box<QuantsimConfigError>> {
        let map = self.object(value, path)?;
        self.check_keys(map, path, &["is_quantized", "is_symmetric"])?;
        Ok(ParamConfig {
            quantized: self.boolean(map, path, "is_quantized")?,
            symmetric: self.boolean(map, path, "is_symmetric")?,
        })
    }

    fn params(
        &self,
        value: &Value,
        path: &[&str],
    ) -> Result<BTreeMap<String, ParamConfig>, Box<QuantsimConfigError>> {
        let map = self.object(value, path)?;
        let mut out = BTreeMap::new();
        for (name, value) in map {
            let mut at = path.to_vec();
            at.push(name);
            out.insert(name.clone(), self.param(value, &at)?);
        }
        Ok(out)
    }

    fn op_type_name(&self, name: &str, path: &[&str]) -> Result<(), Box<QuantsimConfigError>> {
        if ONNX_OP_TYPES.contains(&name) {
            return Ok(());
        }
        Err(self.error(
            path,
            format!("`{name}` is not an ONNX op type"),
            Some(suggestion(name, ONNX_OP_TYPES.iter().copied(), "op type")),
        ))
    }

    fn config(&self, value: &Value) -> Result<QuantsimConfig, Box<QuantsimConfigError>> {
        let top = self.object(value, &[])?;
        self.check_keys(
            top,
            &[],
            &[
                "defaults",
                "params",
                "op_type",
                "supergroups",
                "supergroup_pass_list",
                "model_input",
                "model_output",
            ],
        )?;
        let mut config = QuantsimConfig::default();
        let Some(defaults) = top.get("defaults") else {
            return Err(self.error(
                &[],
                "the config has no `defaults`".to_string(),
                Some("AIMET requires `defaults` with `ops` and `params`".to_string()),
            ));
        };
        let defaults = self.object(defaults, &["defaults"])?;
        self.check_keys(
            defaults,
            &["defaults"],
            &[
                "ops",
                "params",
                "strict_symmetric",
                "unsigned_symmetric",
                "per_channel_quantization",
                "supported_kernels",
                "hw_version",
            ],
        )?;
        if let Some(ops) = defaults.get("ops") {
            let path = ["defaults", "ops"];
            let ops = self.object(ops, &path)?;
            self.check_keys(
                ops,
                &path,
                &["is_output_quantized", "is_input_quantized", "is_symmetric"],
            )?;
            config.output_quantized = self
                .boolean(ops, &path, "is_output_quantized")?
                .unwrap_or(false);
            config.activations_symmetric =
                self.boolean(ops, &path, "is_symmetric")?.unwrap_or(false);
        }
        if let Some(params) = defaults.get("params") {
            let p = self.param(params, &["defaults", "params"])?;
            config.params_quantized = p.quantized.unwrap_or(false);
            config.params_symmetric = p.symmetric.unwrap_or(false);
        }
        config.strict_symmetric = self
            .boolean(defaults, &["defaults"], "strict_symmetric")?
            .unwrap_or(false);
        if self.boolean(defaults, &["defaults"], "unsigned_symmetric")? == Some(true) {
            return Err(self.error(
                &["defaults", "unsigned_symmetric"],
                "`unsigned_symmetric: True` is not supported".to_string(),
                Some(
                    "quant's symmetric grids are signed; remove the key or set it to \"False\""
                        .to_string(),
                ),
            ));
        }
        config.per_channel = self
            .boolean(defaults, &["defaults"], "per_channel_quantization")?
            .unwrap_or(false);
        if let Some(params) = top.get("params") {
            config.params = self.params(params, &["params"])?;
        }
        if let Some(op_types) = top.get("op_type") {
            let map = self.object(op_types, &["op_type"])?;
            for (name, value) in map {
                let path = ["op_type", name.as_str()];
                self.op_type_name(name, &path)?;
                let op = self.object(value, &path)?;
                self.check_keys(
                    op,
                    &path,
                    &[
                        "is_input_quantized",
                        "is_output_quantized",
                        "is_symmetric",
                        "per_channel_quantization",
                        "params",
                        "supported_kernels",
                        "encoding_constraints",
                    ],
                )?;
                let params = match op.get("params") {
                    Some(params) => self.params(params, &["op_type", name, "params"])?,
                    None => BTreeMap::new(),
                };
                config.op_types.insert(
                    name.clone(),
                    OpTypeConfig {
                        input_quantized: self.boolean(op, &path, "is_input_quantized")?,
                        output_quantized: self.boolean(op, &path, "is_output_quantized")?,
                        symmetric: self.boolean(op, &path, "is_symmetric")?,
                        per_channel: self.boolean(op, &path, "per_channel_quantization")?,
                        params,
                    },
                );
            }
        }
        if let Some(groups) = top.get("supergroups") {
            let Some(groups) = groups.as_array() else {
                return Err(self.error(
                    &["supergroups"],
                    "`supergroups` must be a list".to_string(),
                    None,
                ));
            };
            for group in groups {
                let map = self.object(group, &["supergroups"])?;
                self.check_keys(map, &["supergroups"], &["op_list"])?;
                let ops: Option<Vec<String>> = map
                    .get("op_list")
                    .and_then(Value::as_array)
                    .and_then(|ops| {
                        ops.iter()
                            .map(|op| op.as_str().map(str::to_string))
                            .collect()
                    });
                let Some(ops) = ops.filter(|ops| ops.len() >= 2) else {
                    return Err(self.error(
                        &["supergroups", "op_list"],
                        "a supergroup's `op_list` must list two or more op types".to_string(),
                        None,
                    ));
                };
                for op in &ops {
                    self.op_type_name(op, &["supergroups"])?;
                }
                config.supergroups.push(ops);
            }
        }
        if let Some(input) = top.get("model_input") {
            let input = self.object(input, &["model_input"])?;
            self.check_keys(input, &["model_input"], &["is_input_quantized"])?;
            config.model_input_quantized = self
                .boolean(input, &["model_input"], "is_input_quantized")?
                .unwrap_or(false);
        } else {
            config.model_input_quantized = false;
        }
        if let Some(output) = top.get("model_output") {
            let output = self.object(output, &["model_output"])?;
            self.check_keys(output, &["model_output"], &["is_output_quantized"])?;
            config.model_output_quantized =
                self.boolean(output, &["model_output"], "is_output_quantized")?;
        }
        Ok(config)
    }
}
