//! All terminal output goes through here, the way cargo's `Shell` does it: status lines with a
//! right-aligned green verb on stderr, warnings in yellow, diagnostics rendered by miette, and
//! progress bars only when stderr is a terminal. stdout carries results and nothing else.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Width the status verb is right-aligned to, as cargo does.
const VERB_WIDTH: usize = 12;

/// The process's terminal output.
#[derive(Debug, Clone, Copy)]
pub struct Shell {
    color: bool,
    tty: bool,
    quiet: bool,
}

impl Shell {
    /// A shell for stderr; colors and progress bars only on a terminal.
    pub fn new() -> Shell {
        let tty = std::io::stderr().is_terminal();
        Shell {
            color: tty && std::env::var_os("NO_COLOR").is_none(),
            tty,
            quiet: false,
        }
    }

    /// A shell that prints no status lines (`--json` mode still reports warnings and errors).
    pub fn quiet(mut self, quiet: bool) -> Shell {
        self.quiet = quiet;
        self
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// `   Compiling foo` style line on stderr.
    pub fn status(&self, verb: &str, message: impl std::fmt::Display) {
        if self.quiet {
            return;
        }
        let verb = format!("{verb:>VERB_WIDTH$}");
        let _ = writeln!(std::io::stderr(), "{} {message}", self.paint("1;32", &verb));
    }

    /// `warning: ...` on stderr.
    pub fn warn(&self, message: impl std::fmt::Display) {
        let _ = writeln!(
            std::io::stderr(),
            "{} {message}",
            self.paint("1;33", "warning:")
        );
    }

    /// `error: ...` on stderr, one line.
    pub fn error(&self, message: impl std::fmt::Display) {
        let _ = writeln!(
            std::io::stderr(),
            "{} {message}",
            self.paint("1;31", "error:")
        );
    }

    /// A miette diagnostic, rendered with its source snippet.
    pub fn diagnostic(&self, diagnostic: miette::Report) {
        let _ = writeln!(std::io::stderr(), "{}", render_diagnostic(&diagnostic));
    }

    /// A progress bar of `len` steps, hidden unless stderr is a terminal.
    pub fn progress(&self, verb: &str, len: u64) -> ProgressBar {
        if !self.tty || self.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        let template = format!(
            "{{prefix:>{VERB_WIDTH}.cyan.bold}} [{{bar:30}}] {{pos}}/{{len}} {{msg}} ({{elapsed}})"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(verb.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }
}

/// A diagnostic as [`Shell::diagnostic`] prints it: miette's graphical form with the source
/// snippet, or its narrated form when a label sits on a line too long to draw under.
///
/// The graphical handler pads underlines with `format!` widths, which Rust caps at `u16::MAX`: a
/// label past column 65535 (minified JSON, a one-line generated manifest) would panic while the
/// error is being reported.
pub fn render_diagnostic(report: &miette::Report) -> String {
    let diagnostic: &dyn miette::Diagnostic = report.as_ref();
    if drawable(diagnostic) {
        return format!("{report:?}");
    }
    let mut out = String::new();
    match miette::NarratableReportHandler::new().render_report(&mut out, diagnostic) {
        Ok(()) => out,
        Err(_) => report.to_string(),
    }
}

/// Longest line the graphical handler may underline (with room for the gutter and tabs).
const DRAWABLE_LINE: usize = 30_000;

fn drawable(diagnostic: &dyn miette::Diagnostic) -> bool {
    let labels_fit = diagnostic.source_code().is_none_or(|source| {
        diagnostic.labels().into_iter().flatten().all(|label| {
            source.read_span(label.inner(), 1, 1).is_ok_and(|contents| {
                contents
                    .data()
                    .split(|&b| b == b'\n')
                    .all(|line| line.len() < DRAWABLE_LINE)
            })
        })
    });
    labels_fit
        && diagnostic.related().into_iter().flatten().all(drawable)
        && diagnostic.diagnostic_source().is_none_or(drawable)
}

impl Default for Shell {
    fn default() -> Self {
        Shell::new()
    }
}
