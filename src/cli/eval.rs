//! `quant eval`: runs an eval set through the float model and through QuantSim with the given
//! encodings, prints the summary (or the report JSON with `--json`) and writes `report.json` and
//! `report.html` when asked.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};

use super::shell::Shell;
use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::encoding::Rounding;
use crate::eval::{self, EvalError, EvalJob};
use crate::report::{Report, ReportContext};

/// Options of `quant eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The float ONNX model.
    #[arg(long = "input_network", value_name = "MODEL.onnx")]
    input_network: PathBuf,
    /// AIMET encodings JSON to simulate (what `quant quantize` writes).
    #[arg(long = "encodings", value_name = "ENCODINGS.json")]
    encodings: PathBuf,
    /// Eval samples, one line per sample (`path` or `name:=path ...`).
    #[arg(long = "input_list", value_name = "LIST.txt")]
    input_list: PathBuf,
    /// One integer class per line, in input-list order: adds top-1 accuracy.
    #[arg(long = "labels", value_name = "LABELS.txt")]
    labels: Option<PathBuf>,
    /// Fixes a dynamic input's dims: `--input_dim x 1,3,48,192` (repeatable).
    #[arg(long = "input_dim", num_args = 2, value_names = ["NAME", "DIMS"], action = clap::ArgAction::Append)]
    input_dim: Vec<String>,
    /// Writes report.json and report.html into this folder.
    #[arg(long = "report_dir", value_name = "DIR")]
    report_dir: Option<PathBuf>,
    /// Prints report.json on stdout instead of the summary.
    #[arg(long = "json")]
    json: bool,
    /// Samples run in parallel (default: all cores).
    #[arg(short = 'j', long = "jobs")]
    jobs: Option<usize>,
    /// Whose rounding the simulation reproduces: `onnx` computes what onnxruntime computes on
    /// the QDQ export (x / scale in float32, half to even); `aimet` computes what AIMET's
    /// QuantSim computes (clamp to the encoding's min/max, half away from zero).
    #[arg(long = "rounding", value_enum, default_value_t = RoundingArg::Onnx)]
    rounding: RoundingArg,
}

/// `--rounding`'s values; [`Rounding`] itself stays free of clap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RoundingArg {
    /// onnxruntime's QuantizeLinear/DequantizeLinear.
    Onnx,
    /// AIMET's QuantSim kernel.
    Aimet,
}

impl From<RoundingArg> for Rounding {
    fn from(arg: RoundingArg) -> Rounding {
        match arg {
            RoundingArg::Onnx => Rounding::Onnx,
            RoundingArg::Aimet => Rounding::Aimet,
        }
    }
}

impl EvalArgs {
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

/// Runs `quant eval`.
pub fn run(args: EvalArgs) -> ExitCode {
    let shell = Shell::new().quiet(args.json);
    let started = Instant::now();
    let input_dims = match args.input_dims() {
        Ok(dims) => dims,
        Err(message) => {
            shell.error(message);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.jobs == Some(0) {
        shell.error("--jobs must be at least 1");
        return ExitCode::from(EXIT_USAGE);
    }
    let job = EvalJob {
        model: args.input_network.clone(),
        encodings: args.encodings.clone(),
        input_list: args.input_list.clone(),
        labels: args.labels.clone(),
        input_dims,
        jobs: args.jobs,
        rounding: args.rounding.into(),
    };
    shell.status(
        "Evaluating",
        format!(
            "{} with {}",
            args.input_network.display(),
            args.encodings.display()
        ),
    );
    let progress = shell.progress("Evaluating", 0);
    let result = eval::run_job(&job, |done, total| {
        progress.set_length(total as u64);
        progress.set_position(done as u64);
    });
    progress.finish_and_clear();
    let output = match result {
        Ok(output) => output,
        Err(EvalError::Usage(message)) => {
            shell.error(message);
            return ExitCode::from(EXIT_USAGE);
        }
        Err(err) => {
            shell.diagnostic(err.into_report());
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    for warning in &output.warnings {
        shell.warn(warning);
    }
    let context = ReportContext {
        target: None,
        model: args.input_network.display().to_string(),
        encodings: Some(args.encodings.display().to_string()),
        input_list: args.input_list.display().to_string(),
        labels: args.labels.as_ref().map(|p| p.display().to_string()),
    };
    let report = Report::new(&output.evaluation, &context, None);
    if let Some(dir) = &args.report_dir {
        match report.write(dir) {
            Ok((json, html)) => shell.status(
                "Wrote",
                format!("{} and {}", json.display(), html.display()),
            ),
            Err(err) => {
                shell.error(format!(
                    "cannot write the report into {}: {err}",
                    dir.display()
                ));
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    }
    if args.json {
        print!("{}", report.to_json());
    } else {
        print!("{}", report.summary());
    }
    shell.status(
        "Finished",
        format!(
            "{} samples in {:.2}s",
            output.evaluation.samples,
            started.elapsed().as_secs_f64()
        ),
    );
    ExitCode::SUCCESS
}
