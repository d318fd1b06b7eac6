//! Subcommands. Each file owns one subcommand: its clap arguments and its `run`.

/// `print!` for a subcommand's report: a closed pipe (`harness … | head`) means the reader is
/// done, so it ends the output quietly instead of panicking like `print!`; other write errors
/// are returned. Evaluates to `miette::Result<()>`.
macro_rules! out {
    ($($arg:tt)*) => { crate::cli::emit(&format!($($arg)*)) };
}

/// `println!` counterpart of [`out!`].
macro_rules! outln {
    () => { crate::cli::emit("\n") };
    ($($arg:tt)*) => { crate::cli::emit(&format!("{}\n", format_args!($($arg)*))) };
}

mod firmware;
mod flash;
mod image;
mod monitor;
mod ota;
mod scenario;
mod sim;
mod triage;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Result of a subcommand: an exit code, or a harness error rendered by miette.
pub type CmdResult = miette::Result<ExitCode>;

/// Hardware-in-the-loop test and diagnosis harness for ESP8266/ESP8285 (Sonoff) boards.
#[derive(Debug, Parser)]
#[command(name = "harness", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Classify serial captures (boot logs): class, evidence, remedy.
    Triage(triage::TriageArgs),
    /// Inspect or make ESP8266 firmware images.
    Image(image::ImageArgs),
    /// Show the reference firmware's behaviour (serial lines, button, OTA ports).
    Firmware(firmware::FirmwareArgs),
    /// Write a firmware image through the ESP8266 ROM serial loader, reboot, verify.
    #[command(long_about = flash::LONG_ABOUT, after_help = flash::EXAMPLES)]
    Flash(flash::FlashArgs),
    /// Upload a firmware image over the air (ArduinoOTA or the HTTP update page).
    #[command(long_about = ota::long_about(), after_help = ota::EXAMPLES)]
    Ota(ota::OtaArgs),
    /// Check scenario files, or run them on a rig and write a run folder.
    Scenario(scenario::ScenarioArgs),
    /// Run a virtual Sonoff board on a pseudo-terminal.
    Sim(sim::SimArgs),
    /// Watch a board's serial output live: capture to disk, follow baud switches, triage boots.
    Monitor(monitor::MonitorArgs),
}

/// Writes to stdout; a closed pipe is not an error (see [`out!`]).
pub(crate) fn emit(text: &str) -> miette::Result<()> {
    use miette::{IntoDiagnostic as _, WrapErr as _};
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).into_diagnostic().wrap_err("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

/// Sets up tracing on stderr; `RUST_LOG` overrides the -v level.
pub fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> CmdResult {
    match cli.command {
        Command::Triage(args) => triage::run(args),
        Command::Image(args) => image::run(args),
        Command::Firmware(args) => firmware::run(args),
        Command::Flash(args) => flash::run(args),
        Command::Ota(args) => ota::run(args),
        Command::Scenario(args) => scenario::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Monitor(args) => monitor::run(args),
    }
}

/// Prints `lints` on stderr and decides whether to go on with `image`: yes without lint
/// errors, or with them when `force` is given. `verb` names the action in its three forms
/// (`["flash", "flashes", "flashing"]`).
pub(crate) fn lint_verdict(
    lints: &[harness::image::Lint],
    force: bool,
    [verb, verbs, verbing]: [&str; 3],
    image: &std::path::Path,
) -> bool {
    use harness::image::Severity;
    for l in lints {
        let sev = match l.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        eprintln!("  {sev:<7} {}: {}", l.id.name(), l.message);
        eprintln!("          remedy: {}", l.remedy);
    }
    let errors = lints
        .iter()
        .filter(|l| l.severity == Severity::Error)
        .count();
    if errors == 0 {
        return true;
    }
    if force {
        eprintln!("warning: {errors} lint error(s); {verbing} anyway (--force)");
        return true;
    }
    eprintln!(
        "refusing to {verb} {}: {errors} lint error(s) (--force {verbs} anyway)",
        image.display()
    );
    false
}
