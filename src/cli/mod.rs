//! The command line: parses arguments, calls the library, renders diagnostics and progress.
//! It must not contain quantization logic; every number it prints comes from the library.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod build;
mod cache;
mod encode;
mod eval;
mod inspect;
mod quantize;
pub mod shell;
mod watch;

/// Exit code for a build or data error.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for bad usage (invalid arguments).
pub const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "quant",
    version,
    about = "Quantize ONNX models the QNN way, as an incremental build"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build every target of the manifests at PATH, incrementally.
    Build(build::BuildArgs),
    /// Store maintenance.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Delete the store and the output folder of the manifests at PATH.
    Clean(cache::CleanArgs),
    /// Compute one encoding from a range or from values.
    Encode(encode::EncodeArgs),
    /// Run an eval set through the float model and the simulated quantized one; report metrics.
    Eval(eval::EvalArgs),
    /// List every tensor of a model with its role and encoding rule.
    Inspect(inspect::InspectArgs),
    /// Calibrate a model and write its AIMET encodings (qairt-quantizer's options).
    Quantize(quantize::QuantizeArgs),
    /// Build, then rebuild on every change and print which encodings changed.
    Watch(watch::WatchArgs),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    match cli.command {
        Command::Build(args) => build::run(args),
        Command::Cache(command) => cache::run(command),
        Command::Clean(args) => cache::run_clean(args),
        Command::Watch(args) => watch::run(args),
        Command::Encode(args) => encode::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Quantize(args) => quantize::run(args),
    }
}

/// Prints a clap error and returns its exit code. Help and version go out whole; a usage
/// error becomes its one `error: ...` line naming the argument (the usage block clap appends
/// repeats what `--help` says and buries the message in scripts' logs).
fn usage_error(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if !err.use_stderr() {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = err.print();
        return ExitCode::from(EXIT_USAGE);
    }
    // The message is everything before clap's first blank line (a list of missing arguments
    // continues on indented lines); joined, it stays one line.
    let rendered = err.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = if message.is_empty() {
        "error: invalid arguments".to_string()
    } else {
        message.join(" ")
    };
    eprintln!("{line} (see --help)");
    ExitCode::from(EXIT_USAGE)
}
