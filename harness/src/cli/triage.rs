//! `harness triage`: classify serial captures.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use miette::{IntoDiagnostic, WrapErr};
use serde::Serialize;

use harness::triage::{self, Report};

use super::CmdResult;

/// Output format of a triage report.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// For a terminal.
    Text,
    /// For machines (one object per capture; an array for several).
    Json,
    /// To paste into an issue.
    Markdown,
}

/// Classify ESP8266 serial captures: what went wrong, the lines that show it, and what to do.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  harness triage fixtures/seed/basic-attempt1.log
  harness triage --format markdown capture.log > issue.md
  pio device monitor | tee capture.log;  harness triage - < capture.log

Classes: healthy-boot, restart-after-serial-flash, download-mode, ota-copy-incomplete,
flash-config-mismatch, checksum-error, exception-crash, soft-wdt, hw-wdt-loop,
brownout-or-power, garbage-baud, boot-loop (inconclusive when there is nothing to judge).

Exit status: 0 when triage ran (whatever it found), 2 when an input cannot be read.")]
pub struct TriageArgs {
    /// Capture files (raw serial bytes, any size). `-` or nothing reads standard input.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Output format.
    #[arg(long, short, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(Serialize)]
struct Named<'a> {
    source: &'a str,
    #[serde(flatten)]
    report: &'a Report,
}

fn triage_reader(reader: impl Read) -> io::Result<Report> {
    Ok(triage::triage(&harness::bootlog::parse_reader(reader)?))
}

/// Runs `harness triage`.
pub fn run(args: TriageArgs) -> CmdResult {
    let inputs: Vec<PathBuf> = if args.files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        args.files.clone()
    };
    let mut reports = Vec::with_capacity(inputs.len());
    for path in &inputs {
        let (name, report) = if path.as_os_str() == "-" {
            let report = triage_reader(io::stdin().lock())
                .into_diagnostic()
                .wrap_err("cannot read the capture from standard input")?;
            ("<stdin>".to_string(), report)
        } else {
            let file = File::open(path)
                .into_diagnostic()
                .wrap_err_with(|| format!("cannot open capture `{}`", path.display()))?;
            let report = triage_reader(file)
                .into_diagnostic()
                .wrap_err_with(|| format!("cannot read capture `{}`", path.display()))?;
            (path.display().to_string(), report)
        };
        reports.push((name, report));
    }
    let out = match args.format {
        Format::Text => reports
            .iter()
            .map(|(n, r)| triage::render_text(r, n))
            .collect::<Vec<_>>()
            .join("\n"),
        Format::Markdown => reports
            .iter()
            .map(|(n, r)| triage::render_markdown(r, n))
            .collect::<Vec<_>>()
            .join("\n"),
        Format::Json => {
            let named: Vec<Named<'_>> = reports
                .iter()
                .map(|(n, r)| Named {
                    source: n,
                    report: r,
                })
                .collect();
            let json = if named.len() == 1 {
                serde_json::to_string_pretty(&named[0])
            } else {
                serde_json::to_string_pretty(&named)
            };
            json.into_diagnostic()? + "\n"
        }
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
