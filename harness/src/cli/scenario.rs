//! `harness scenario`: check scenario files, or run them on a rig and write a run folder.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use miette::{IntoDiagnostic, WrapErr};

use harness::board;
use harness::report::{self, RunSet, RunStatus, StepStatus};
use harness::scenario::{self, ExecutorFactory, Progress, Scenario, ScenarioFile, artifacts};

use super::CmdResult;

/// Check scenario files, or run them on a rig.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  harness scenario check scenarios/*.toml
  harness scenario run scenarios/seed-4ch-remedy.toml --rig scenarios/rigs/virtual.toml
  harness scenario run scenarios/arduino-ota-both-boards.toml --board sonoff-basic \\
      --param password_env= --out runs/today

Exit status: 0 when every scenario that ran passed (check: every file is valid), 1 when a
scenario failed on the board, 2 on a harness error (bad file, rig problem, nothing ran).")]
pub struct ScenarioArgs {
    #[command(subcommand)]
    command: ScenarioCommand,
}

#[derive(Debug, Subcommand)]
enum ScenarioCommand {
    /// Validate scenario files without running them (steps, params, images, classes).
    Check(CheckArgs),
    /// Run scenarios on a rig; writes a run folder with captures, triage and reports.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Scenario files.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,

    /// Override a parameter: `name=value` (repeatable; replaces a matrix by one value).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Scenario files.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,

    /// The rig file (which boards, how they are wired). Default: the virtual rig.
    #[arg(long, value_name = "FILE")]
    rig: Option<PathBuf>,

    /// Only run on these boards (repeatable).
    #[arg(long = "board", value_name = "NAME")]
    boards: Vec<String>,

    /// Override a parameter: `name=value` (repeatable; replaces a matrix by one value).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,

    /// The run folder. Default: runs/<timestamp>-<name>.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Runs `harness scenario ...`.
pub fn run(args: ScenarioArgs) -> CmdResult {
    match args.command {
        ScenarioCommand::Check(a) => check(a),
        ScenarioCommand::Run(a) => run_scenarios(a),
    }
}

fn summary(file: &ScenarioFile) -> String {
    let mut s = format!(
        "{}: {} run{} (boards: {}",
        file.name,
        file.runs.len(),
        if file.runs.len() == 1 { "" } else { "s" },
        file.boards.join(", ")
    );
    let matrix: Vec<String> = file
        .runs
        .first()
        .map(|r| r.matrix.keys().cloned().collect())
        .unwrap_or_default();
    if !matrix.is_empty() {
        s.push_str(&format!("; matrix: {}", matrix.join(", ")));
    }
    let steps: usize = file.runs.first().map_or(0, |r| r.steps.len());
    s.push_str(&format!("; {steps} steps)"));
    s
}

fn check(a: CheckArgs) -> CmdResult {
    let overrides = scenario::parse_overrides(&a.params)?;
    let mut bad = 0;
    for path in &a.files {
        match scenario::load(path, &overrides) {
            Ok(file) => println!("ok    {}: {}", path.display(), summary(&file)),
            Err(e) => {
                bad += 1;
                eprintln!("{:?}", miette::Report::new(e));
            }
        }
    }
    if bad > 0 {
        eprintln!("{bad} of {} scenario files are invalid", a.files.len());
        Ok(ExitCode::from(2))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

/// There is no executor for the rig's backend (yet).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("no executor for rig backend `{backend}`: scenarios cannot run on it yet")]
#[diagnostic(
    code(harness::scenario::no_executor),
    help(
        "the rig-backed executor (power, GPIO0, serial flash, OTA, capture) is wired once the \
         rig, flasher and OTA client layers exist; `harness scenario check` validates scenario \
         files meanwhile"
    )
)]
struct NoExecutor {
    backend: String,
}

/// The backends a rig file's boards use (`[[board]] backend = "..."`), comma-separated.
///
/// Only this much of the rig file is read here; the rig layer validates the whole file when an
/// executor opens it.
fn rig_backend(rig: Option<&Path>) -> miette::Result<String> {
    let Some(path) = rig else {
        return Ok("virtual".to_string());
    };
    let text = std::fs::read_to_string(path)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read rig file `{}`", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .into_diagnostic()
        .wrap_err_with(|| format!("rig file `{}` is not TOML", path.display()))?;
    let mut backends: Vec<&str> = table
        .get("board")
        .and_then(|b| b.as_array())
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("backend").and_then(|v| v.as_str()))
        .collect();
    backends.sort_unstable();
    backends.dedup();
    if backends.is_empty() {
        miette::bail!(
            "rig file `{}` has no [[board]] with a backend",
            path.display()
        );
    }
    Ok(backends.join(", "))
}

type Factory = Box<ExecutorFactory<'static>>;

/// The executor factory for a rig backend.
fn executor_factory(backend: &str, _rig: Option<&Path>) -> Result<Factory, NoExecutor> {
    // No backend has a rig-backed executor yet; failing here, before anything runs, is better
    // than reporting runs that did not happen.
    Err(NoExecutor {
        backend: backend.to_string(),
    })
}

fn print_progress(p: Progress<'_>) {
    let mut out = std::io::stdout().lock();
    match p {
        Progress::RunStarted { scenario } => {
            let mut title = format!("{} on {}", scenario.name, scenario.board);
            for (k, v) in &scenario.matrix {
                title.push_str(&format!(" {k}={v}"));
            }
            let _ = writeln!(out, "== {title}");
        }
        Progress::StepStarted { .. } => {}
        Progress::StepFinished { report } => {
            let depth = report.id.matches('.').count();
            let time = report
                .duration
                .map(|d| format!("{}ms", d.as_millis()))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{}[{}] {:<7} {:>8}  {}",
                "  ".repeat(depth),
                report.id,
                report.status.word(),
                time,
                report.description
            );
            if matches!(report.status, StepStatus::Fail | StepStatus::Error)
                && report.children.is_empty()
            {
                for (k, v) in [
                    ("expected", &report.expected),
                    ("seen", &report.observed),
                    ("error", &report.error),
                ] {
                    if let Some(v) = v {
                        let _ = writeln!(out, "{}      {k}: {v}", "  ".repeat(depth));
                    }
                }
            }
        }
        Progress::RunFinished { report } => {
            let _ = writeln!(out, "== {}", report.status.word());
        }
    }
    let _ = out.flush();
}

fn run_scenarios(a: RunArgs) -> CmdResult {
    let overrides = scenario::parse_overrides(&a.params)?;
    for b in &a.boards {
        board::find(b)?;
    }
    let files = a
        .files
        .iter()
        .map(|p| scenario::load(p, &overrides))
        .collect::<Result<Vec<_>, _>>()?;
    let runs: Vec<&Scenario> = files
        .iter()
        .flat_map(|f| &f.runs)
        .filter(|r| a.boards.is_empty() || a.boards.contains(&r.board))
        .collect();
    if runs.is_empty() {
        miette::bail!(
            "no run selected: none of the scenarios applies to the boards {}",
            a.boards.join(", ")
        );
    }
    let backend = rig_backend(a.rig.as_deref())?;
    let mut factory = executor_factory(&backend, a.rig.as_deref())?;

    let started = SystemTime::now();
    let reports = scenario::run_all(runs, &mut *factory, &mut print_progress);
    let set = RunSet {
        started: humantime::format_rfc3339_seconds(started).to_string(),
        runs: reports,
    };
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let dir = a
        .out
        .unwrap_or_else(|| artifacts::default_dir(Path::new("runs"), started, &names));
    let written = artifacts::write_run_folder(&dir, &set);
    println!();
    print!("{}", report::text::render(&set));
    let folder = written?;
    println!("run folder: {}", folder.dir.display());
    Ok(match set.status() {
        RunStatus::Pass => ExitCode::SUCCESS,
        RunStatus::Fail => ExitCode::from(1),
        RunStatus::Error => ExitCode::from(2),
        RunStatus::Skipped => {
            eprintln!("no scenario ran: every run was skipped");
            ExitCode::from(2)
        }
    })
}
