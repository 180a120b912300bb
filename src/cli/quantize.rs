//! `quant quantize`: the one-shot command with qairt-quantizer's option names, for people
//! switching from it. It calibrates, encodes and writes an AIMET encodings file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;

use super::shell::Shell;
use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::encoding::{Bitwidth, FloatBitwidth, Schema};
use crate::engine::oneshot::{self, OneShot, OneShotError};
use crate::export::aimet::EncodingVersion;
use crate::quantizer::{CalibrationMethod, LegacyQuantizer, Percentile, QuantizerSettings};
use crate::transform::Algorithms;

/// Options, spelled as qairt-quantizer spells them.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The float ONNX model.
    #[arg(long = "input_network", value_name = "MODEL.onnx")]
    input_network: PathBuf,
    /// Calibration samples, one line per sample (`path` or `name:=path ...`).
    #[arg(long = "input_list", value_name = "LIST.txt")]
    input_list: Option<PathBuf>,
    /// No calibration: the overrides give the encodings, data-movement outputs share them, and
    /// every other tensor falls back to float (exclusive with `--input_list`).
    #[arg(
        long = "enable_float_fallback",
        visible_alias = "float_fallback",
        conflicts_with = "input_list"
    )]
    enable_float_fallback: bool,
    /// Float bitwidth, 16 or 32: of a non-quantized model (no `--input_list`, no float
    /// fallback: every tensor float), and of tensors that fall back to float.
    #[arg(long = "float_bitwidth", visible_alias = "float_bw", value_parser = parse_float_bitwidth)]
    float_bitwidth: Option<FloatBitwidth>,
    /// Bitwidth of a float op's bias that has no override entry: 16 or 32 [default: the op's].
    #[arg(long = "float_bias_bitwidth", visible_alias = "float_bias_bw",
          value_parser = parse_float_bitwidth)]
    float_bias_bitwidth: Option<FloatBitwidth>,
    /// A float16 model's graph inputs and outputs stay float32, with casts inside.
    #[arg(long = "keep_io_types", default_value_t = true, action = clap::ArgAction::Set,
          value_name = "true|false")]
    keep_io_types: bool,

    /// Where to write the AIMET encodings JSON (not written for a non-quantized model).
    #[arg(long = "output_encodings", value_name = "ENCODINGS.json")]
    output_encodings: Option<PathBuf>,
    /// Activation bitwidth (2–16) [default: 8].
    #[arg(long = "act_bitwidth", visible_alias = "act_bw", value_parser = parse_bitwidth)]
    act_bitwidth: Option<Bitwidth>,
    /// Weight bitwidth (2–16) [default: 8].
    #[arg(long = "weights_bitwidth", visible_alias = "weight_bw", value_parser = parse_bitwidth)]
    weights_bitwidth: Option<Bitwidth>,
    /// Bias bitwidth: 8 (own range) or 32 (input scale × weight scale) [default: 8].
    #[arg(long = "bias_bitwidth", visible_alias = "bias_bw", value_parser = parse_bias_bitwidth)]
    bias_bitwidth: Option<Bitwidth>,
    /// Activation calibration: min-max, sqnr, percentile, mse, entropy.
    #[arg(long = "act_quantizer_calibration", value_parser = parse_calibration)]
    act_quantizer_calibration: Option<CalibrationMethod>,
    /// Parameter calibration: min-max, sqnr, percentile, mse, entropy.
    #[arg(long = "param_quantizer_calibration", value_parser = parse_calibration)]
    param_quantizer_calibration: Option<CalibrationMethod>,
    /// Activation schema: asymmetric, signedasymmetric, symmetric, unsignedsymmetric.
    #[arg(long = "act_quantizer_schema")]
    act_quantizer_schema: Option<Schema>,
    /// Parameter schema: asymmetric, signedasymmetric, symmetric, unsignedsymmetric.
    #[arg(long = "param_quantizer_schema")]
    param_quantizer_schema: Option<Schema>,
    /// Legacy activation quantizer: tf, enhanced, adjusted, symmetric.
    #[arg(long = "act_quantizer", value_parser = parse_legacy,
          conflicts_with_all = ["act_quantizer_calibration", "act_quantizer_schema"])]
    act_quantizer: Option<LegacyQuantizer>,
    /// Legacy parameter quantizer: tf, enhanced, adjusted, symmetric.
    #[arg(long = "param_quantizer", value_parser = parse_legacy,
          conflicts_with_all = ["param_quantizer_calibration", "param_quantizer_schema"])]
    param_quantizer: Option<LegacyQuantizer>,
    /// Percentile for the percentile calibration, in [90, 100] [default: 99.99].
    #[arg(long = "percentile_calibration_value", value_parser = parse_percentile)]
    percentile_calibration_value: Option<Percentile>,
    /// Per-channel weights for Conv-family ops (forces symmetric weights).
    #[arg(long = "use_per_channel_quantization")]
    use_per_channel_quantization: bool,
    /// Per-row weights for Gemm/MatMul (forces symmetric weights).
    #[arg(long = "use_per_row_quantization")]
    use_per_row_quantization: bool,
    /// Store 4-bit weights packed two per byte. Accepted as qairt-quantizer spells it: the QDQ
    /// model (`--output_model`) always stores weights of 4 bits or fewer as ONNX int4/uint4.
    #[arg(long = "pack_4_bit_weights")]
    pack_4_bit_weights: bool,
    /// AIMET encodings JSON (0.4–1.0.0) whose entries win over calibration.
    #[arg(long = "quantization_overrides", value_name = "OVERRIDES.json")]
    quantization_overrides: Option<PathBuf>,
    /// Calibrate everything, ignoring `--quantization_overrides`.
    #[arg(long = "ignore_quantization_overrides")]
    ignore_quantization_overrides: bool,
    /// Fixes a dynamic input's dims: `--input_dim x 1,3,48,192` (repeatable).
    #[arg(long = "input_dim", num_args = 2, value_names = ["NAME", "DIMS"], action = clap::ArgAction::Append)]
    input_dim: Vec<String>,
    /// Gather activation statistics with weights fake-quantized first (with AIMET's symmetric
    /// weight rule), as AIMET does.
    #[arg(long = "calibrate_with_quantized_weights")]
    calibrate_with_quantized_weights: bool,
    /// Model transforms to run before calibration: `cle` (cross-layer equalization with
    /// BatchNorm folding and high-bias absorption), `bias_correction`; comma-separated or
    /// repeated.
    #[arg(long = "algorithms", visible_alias = "apply_algorithms", value_delimiter = ',',
          value_parser = parse_algorithm, action = clap::ArgAction::Append, value_name = "NAME")]
    algorithms: Vec<&'static str>,
    /// AIMET quantsim config JSON deciding which tensors get encodings and how (AIMET's
    /// `default_config.json` format), or a built-in one: `aimet-default`, `aimet-per-channel`.
    /// Sets the schemas and per-channel weights from the config and calibrates with quantized
    /// weights, as AIMET does.
    #[arg(long = "quantsim_config", value_name = "CONFIG.json")]
    quantsim_config: Option<String>,
    /// AdaRound's YAML settings (`num_iterations`, `num_batches`, `seed`,
    /// `optional_adaround_args`), read when `--apply_algorithms adaround` is given.
    #[arg(long = "config", value_name = "ADAROUND.yaml")]
    config: Option<PathBuf>,
    /// Where to write the transformed float model the encodings refer to, when `--algorithms`
    /// is given [default: `MODEL.cle.onnx` (or `.bc`, `.cle.bc`) beside the encodings].
    #[arg(long = "output_float_model", value_name = "MODEL.cle.onnx")]
    output_float_model: Option<PathBuf>,
    /// Also write the QDQ ONNX model (QuantizeLinear/DequantizeLinear on every encoding).
    #[arg(long = "output_model", value_name = "MODEL.qdq.onnx")]
    output_model: Option<PathBuf>,
    /// AIMET encodings format to write: 0.6.1 or 1.0.0.
    #[arg(long = "encoding_version", default_value = "0.6.1", value_parser = parse_version)]
    encoding_version: EncodingVersion,
    /// Samples run in parallel (default: all cores).
    #[arg(short = 'j', long = "jobs")]
    jobs: Option<usize>,
}

fn parse_bitwidth(s: &str) -> Result<Bitwidth, String> {
    let bits: u32 = s.parse().map_err(|_| format!("`{s}` is not a bitwidth"))?;
    match bits {
        2..=16 => Bitwidth::new(bits).map_err(|e| e.to_string()),
        _ => Err(format!("bitwidth {bits} is not supported (use 2 to 16)")),
    }
}

fn parse_float_bitwidth(s: &str) -> Result<FloatBitwidth, String> {
    s.parse::<u32>()
        .ok()
        .and_then(FloatBitwidth::new)
        .ok_or_else(|| format!("float bitwidth must be 16 or 32, not `{s}`"))
}

fn parse_bias_bitwidth(s: &str) -> Result<Bitwidth, String> {
    match s {
        "8" => Ok(Bitwidth::B8),
        "32" => Ok(Bitwidth::B32),
        _ => Err(format!("bias bitwidth must be 8 or 32, not `{s}`")),
    }
}

fn parse_calibration(s: &str) -> Result<CalibrationMethod, String> {
    CalibrationMethod::NAMED
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| {
            format!(
                "unknown calibration `{s}` (expected min-max, sqnr, percentile, mse or entropy)"
            )
        })
}

fn parse_legacy(s: &str) -> Result<LegacyQuantizer, String> {
    LegacyQuantizer::ALL
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| {
            format!("unknown quantizer `{s}` (expected tf, enhanced, adjusted or symmetric)")
        })
}

fn parse_percentile(s: &str) -> Result<Percentile, String> {
    s.parse::<f64>()
        .ok()
        .and_then(Percentile::new)
        .ok_or_else(|| format!("percentile must be a number in [90, 100], not `{s}`"))
}

fn parse_algorithm(s: &str) -> Result<&'static str, String> {
    Algorithms::NAMES
        .into_iter()
        .find(|name| *name == s)
        .ok_or_else(|| {
            format!(
                "unknown algorithm `{s}` (expected {})",
                Algorithms::NAMES.join(" or ")
            )
        })
}

fn parse_version(s: &str) -> Result<EncodingVersion, String> {
    s.parse::<EncodingVersion>().map_err(|e| e.to_string())
}

impl QuantizeArgs {
    /// The transforms `--algorithms` names.
    fn algorithms(&self) -> Algorithms {
        let mut algorithms = Algorithms::default();
        for name in &self.algorithms {
            algorithms.enable(name);
        }
        algorithms
    }

    /// Where the transformed float model goes: `None` when no transform runs.
    fn float_model_path(&self) -> Option<PathBuf> {
        let infix = self.algorithms().file_infix()?;
        if let Some(path) = &self.output_float_model {
            return Some(path.clone());
        }
        let stem = self
            .input_network
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        let folder = self
            .output_encodings
            .as_deref()
            .and_then(|p| p.parent())
            .map(PathBuf::from)
            .unwrap_or_default();
        Some(folder.join(format!("{stem}.{infix}.onnx")))
    }

    /// The settings these options give, qairt-quantizer's defaults (the quantizer's own) for
    /// every option not given.
    fn settings(&self) -> QuantizerSettings {
        let defaults = QuantizerSettings::default();
        let (act_calibration, act_schema) = match self.act_quantizer {
            Some(legacy) => legacy.expand(),
            None => (
                self.act_quantizer_calibration
                    .unwrap_or(defaults.act_calibration),
                self.act_quantizer_schema.unwrap_or(defaults.act_schema),
            ),
        };
        let (param_calibration, param_schema) = match self.param_quantizer {
            Some(legacy) => legacy.expand(),
            None => (
                self.param_quantizer_calibration
                    .unwrap_or(defaults.param_calibration),
                self.param_quantizer_schema.unwrap_or(defaults.param_schema),
            ),
        };
        QuantizerSettings {
            act_bitwidth: self.act_bitwidth.unwrap_or(defaults.act_bitwidth),
            weights_bitwidth: self.weights_bitwidth.unwrap_or(defaults.weights_bitwidth),
            bias_bitwidth: self.bias_bitwidth.unwrap_or(defaults.bias_bitwidth),
            act_calibration,
            param_calibration,
            act_schema,
            param_schema,
            percentile: self
                .percentile_calibration_value
                .unwrap_or(defaults.percentile),
            // Flags: absent is the default, off.
            per_channel: self.use_per_channel_quantization,
            per_row: self.use_per_row_quantization,
            calibrate_with_quantized_weights: self.calibrate_with_quantized_weights,
            float_bitwidth: self.float_bitwidth,
            float_bias_bitwidth: crate::quantizer::FloatBiasBitwidth(self.float_bias_bitwidth),
            quantsim_config: Default::default(),
        }
    }

    fn input_dims(&self) -> Result<Vec<(String, Vec<u64>)>, String> {
        self.input_dim
            .chunks(2)
            .map(|pair| {
                let [name, dims] = pair else {
                    return Err(
                        "--input_dim takes a name and dims, e.g. `--input_dim x 1,3,48,192`"
                            .to_string(),
                    );
                };
                let dims = crate::onnx::parse_dims(dims)
                    .map_err(|e| format!("--input_dim {name}: {e}"))?;
                Ok((name.clone(), dims))
            })
            .collect()
    }
}

/// What `quant quantize` was asked to do.
enum Mode {
    /// Calibrate on an input list.
    Calibrate(PathBuf),
    /// `--enable_float_fallback`: the overrides give the encodings.
    FloatFallback,
    /// Neither, with `--float_bitwidth`: the non-quantized model.
    NonQuantized(FloatBitwidth),
}

impl QuantizeArgs {
    fn mode(&self) -> Result<Mode, String> {
        match (
            &self.input_list,
            self.enable_float_fallback,
            self.float_bitwidth,
        ) {
            (Some(list), _, _) => Ok(Mode::Calibrate(list.clone())),
            (None, true, _) => Ok(Mode::FloatFallback),
            (None, false, Some(bits)) => Ok(Mode::NonQuantized(bits)),
            (None, false, None) => Err("one of --input_list (calibrate) and \
                 --enable_float_fallback (encodings from --quantization_overrides only) is \
                 required; for a non-quantized model give --float_bitwidth 16|32 and \
                 --output_model"
                .to_string()),
        }
    }
}

/// Runs `quant quantize`.
pub fn run(args: QuantizeArgs) -> ExitCode {
    let shell = Shell::new();
    let started = Instant::now();
    let input_dims = match args.input_dims() {
        Ok(dims) => dims,
        Err(message) => {
            shell.error(message);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(jobs) = args.jobs
        && jobs == 0
    {
        shell.error("--jobs must be at least 1");
        return ExitCode::from(EXIT_USAGE);
    }
    let mode = match args.mode() {
        Ok(mode) => mode,
        Err(message) => {
            shell.error(message);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Mode::NonQuantized(bits) = mode {
        return non_quantized(&shell, &args, &input_dims, bits, started);
    }
    let Some(output_encodings) = args.output_encodings.clone() else {
        shell.error("--output_encodings is required: where to write the encodings");
        return ExitCode::from(EXIT_USAGE);
    };
    let input_list = match &mode {
        Mode::Calibrate(list) => Some(list.clone()),
        _ => None,
    };
    let mut settings = args.settings();
    if let Some(given) = &args.quantsim_config {
        match crate::placement::load(given, None) {
            Ok(config) => settings = crate::placement::with_config(config, settings),
            Err(err) => {
                shell.diagnostic(miette::Report::new(*err));
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    if args.pack_4_bit_weights && settings.weights_bitwidth.bits() > 4 {
        shell.warn(format!(
            "--pack_4_bit_weights has no effect: weights are {}-bit (give --weights_bitwidth 4)",
            settings.weights_bitwidth.bits()
        ));
    }
    let (adaround, adaround_names) = match (&args.config, args.algorithms().adaround) {
        (Some(path), true) => match crate::adaround::read_config(path) {
            Ok(read) => read,
            Err(err) => {
                shell.diagnostic(miette::Report::new(*err));
                return ExitCode::from(EXIT_USAGE);
            }
        },
        (Some(path), false) => {
            shell.error(format!(
                "--config {} sets AdaRound, but `--apply_algorithms adaround` is not given",
                path.display()
            ));
            return ExitCode::from(EXIT_USAGE);
        }
        (None, _) => Default::default(),
    };
    let job = OneShot {
        model: args.input_network.clone(),
        input_list: input_list.clone(),
        overrides: if args.ignore_quantization_overrides {
            None
        } else {
            args.quantization_overrides.clone()
        },
        input_dims,
        settings,
        algorithms: args.algorithms(),
        adaround,
        adaround_names,
        jobs: args.jobs,
    };
    match &input_list {
        Some(list) => shell.status(
            "Calibrating",
            format!("{} with {}", args.input_network.display(), list.display()),
        ),
        None => shell.status(
            "Encoding",
            format!(
                "{} from its overrides, the rest in float",
                args.input_network.display()
            ),
        ),
    }
    let progress = shell.progress("Calibrating", 0);
    let result = oneshot::quantize(&job, |done, total| {
        progress.set_length(total as u64);
        progress.set_position(done as u64);
    });
    progress.finish_and_clear();
    let output = match result {
        Ok(output) => output,
        Err(OneShotError::Usage(message)) => {
            shell.error(message);
            return ExitCode::from(EXIT_USAGE);
        }
        Err(err) => {
            shell.diagnostic(err.into_report());
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    for event in &output.transforms.events {
        if event.is_warning() {
            shell.warn(event.to_string().trim_start_matches("warning: "));
        } else {
            shell.status("Transform", event.to_string());
        }
    }
    for layer in &output.adaround {
        shell.status("AdaRound", layer.line());
    }
    if args.algorithms().adaround {
        shell.status(
            "AdaRound",
            format!(
                "{} layers in {:.2}s",
                output.adaround.len(),
                output.adaround_time.as_secs_f64()
            ),
        );
    }
    for warning in &output.warnings {
        shell.warn(warning);
    }
    if let Some(path) = args.float_model_path() {
        if let Err(err) = crate::atomic::write(&path, &output.model.to_bytes()) {
            shell.error(format!("cannot write {}: {err}", path.display()));
            return ExitCode::from(EXIT_FAILURE);
        }
        shell.status(
            "Wrote",
            format!("transformed float model {}", path.display()),
        );
    }
    if let Err(err) = output
        .encodings
        .write(&output_encodings, args.encoding_version)
    {
        shell.error(format!(
            "cannot write {}: {err}",
            output_encodings.display()
        ));
        return ExitCode::from(EXIT_FAILURE);
    }
    if let Some(path) = &args.output_model {
        let json = output.encodings.to_json(args.encoding_version);
        let digest = crate::export::qdq::encodings_digest(json.as_bytes());
        let written = crate::export::qdq::export(&output.model, &output.model_encodings, &digest)
            .map_err(|e| e.to_string())
            .and_then(|qdq| qdq.write(path).map_err(|e| e.to_string()));
        if let Err(err) = written {
            shell.error(format!("cannot write {}: {err}", path.display()));
            return ExitCode::from(EXIT_FAILURE);
        }
        shell.status("Wrote", format!("QDQ model {}", path.display()));
    }
    shell.status(
        "Finished",
        format!(
            "{} activation and {} parameter encodings from {} samples in {:.2}s → {}",
            output.encodings.activations.len(),
            output.encodings.parameters.len(),
            output.samples,
            started.elapsed().as_secs_f64(),
            output_encodings.display()
        ),
    );
    ExitCode::SUCCESS
}

/// The non-quantized mode: the model with every tensor in `bits`, written to `--output_model`.
fn non_quantized(
    shell: &Shell,
    args: &QuantizeArgs,
    input_dims: &[(String, Vec<u64>)],
    bits: FloatBitwidth,
    started: Instant,
) -> ExitCode {
    let Some(path) = &args.output_model else {
        shell.error(
            "a non-quantized model (no --input_list) is written to --output_model: give its path",
        );
        return ExitCode::from(EXIT_USAGE);
    };
    if args.output_encodings.is_some() {
        shell.error(
            "a non-quantized model has no encodings: drop --output_encodings, or give \
             --input_list to quantize",
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let made = oneshot::float_model(&args.input_network, input_dims, bits, args.keep_io_types);
    let model = match made {
        Ok(model) => model,
        Err(OneShotError::Usage(message)) => {
            shell.error(message);
            return ExitCode::from(EXIT_USAGE);
        }
        Err(err) => {
            shell.diagnostic(err.into_report());
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    if let Err(err) = model.write(path) {
        shell.error(format!("cannot write {}: {err}", path.display()));
        return ExitCode::from(EXIT_FAILURE);
    }
    shell.status(
        "Finished",
        format!(
            "FP{} model in {:.2}s → {}",
            bits.bits(),
            started.elapsed().as_secs_f64(),
            path.display()
        ),
    );
    ExitCode::SUCCESS
}
