//! `harness scenario`: check scenario files, or run them on a rig and write a run folder.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use miette::IntoDiagnostic;

use harness::report::{self, RunSet, RunStatus, StepStatus};
use harness::rig::{BoardConfig, RigConfig, safety};
use harness::scenario::{
    self, ExecError, Executor, Progress, RigExecutor, Scenario, ScenarioFile, artifacts,
};

use super::CmdResult;

/// Check scenario files, or run them on a rig.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  harness scenario check scenarios/*.toml
  harness scenario run scenarios/seed-4ch-remedy.toml --rig scenarios/rigs/pi.toml
  harness scenario run scenarios/arduino-ota-both-boards.toml --board basic \\
      --param password_env= --out runs/today

A run uses the rig's first board of the scenario's board kind; scenarios whose `requires` the rig
cannot meet are skipped. Not supported yet: `flash` steps (no serial flasher in this harness).

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

    /// The rig file (which boards, how they are wired). Default: the built-in virtual rig.
    #[arg(long, value_name = "FILE")]
    rig: Option<PathBuf>,

    /// Only run on these boards: a board name of the rig or a board kind (repeatable).
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
            Ok(file) => outln!("ok    {}: {}", path.display(), summary(&file))?,
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
    let files = a
        .files
        .iter()
        .map(|p| scenario::load(p, &overrides))
        .collect::<Result<Vec<_>, _>>()?;
    let rig = match &a.rig {
        Some(path) => RigConfig::load(path)?,
        None => RigConfig::builtin_virtual(),
    };
    // `--board` takes a board name of the rig or a board kind.
    let selects = |b: &str, c: &BoardConfig| c.name == b || c.profile.id == b;
    for b in &a.boards {
        if !rig.boards.iter().any(|c| selects(b, c)) {
            miette::bail!(
                "no board `{b}` in {} (boards: {})",
                rig.source,
                rig.boards
                    .iter()
                    .map(|c| format!("{} ({})", c.name, c.profile.id))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let chosen = |c: &BoardConfig| a.boards.is_empty() || a.boards.iter().any(|b| selects(b, c));
    let runs: Vec<&Scenario> = files
        .iter()
        .flat_map(|f| &f.runs)
        .filter(|r| {
            a.boards.is_empty()
                || rig
                    .boards
                    .iter()
                    .any(|c| c.profile.id == r.board && chosen(c))
        })
        .collect();
    if runs.is_empty() {
        miette::bail!(
            "no run selected: none of the scenarios applies to the boards {}",
            a.boards.join(", ")
        );
    }

    safety::install_signal_handler().into_diagnostic()?;
    safety::install_panic_hook();
    let started = SystemTime::now();
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let dir = a
        .out
        .unwrap_or_else(|| artifacts::default_dir(Path::new("runs"), started, &names));
    let mut reports = Vec::with_capacity(runs.len());
    for s in runs {
        let Some(board) = rig
            .boards
            .iter()
            .find(|c| c.profile.id == s.board && chosen(c))
        else {
            let report =
                scenario::skipped(s, "", format!("{} has no {} board", rig.source, s.board));
            print_progress(Progress::RunFinished { report: &report });
            reports.push(report);
            continue;
        };
        // The capture goes straight into the run folder.
        let run_dir = dir.join(report::run_name(&s.name, &s.board, &s.matrix));
        let mut factory = |_: &Scenario| -> Result<Box<dyn Executor>, ExecError> {
            std::fs::create_dir_all(&run_dir).map_err(|source| ExecError::Failed {
                action: "create the run folder",
                source: Box::new(source),
            })?;
            let exec = RigExecutor::open(board, &run_dir.join("capture.log"))?;
            Ok(Box::new(exec))
        };
        reports.extend(scenario::run_all([s], &mut factory, &mut print_progress));
    }
    let set = RunSet {
        started: humantime::format_rfc3339_seconds(started).to_string(),
        runs: reports,
    };
    let written = artifacts::write_run_folder(&dir, &set);
    outln!()?;
    out!("{}", report::text::render(&set))?;
    let folder = written?;
    outln!("run folder: {}", folder.dir.display())?;
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
