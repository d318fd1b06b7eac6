//! Run reports: what a scenario run did and saw, and its renderings for people and machines.
//!
//! Layer L0: the types here are plain data that the runner fills in, and the renderers are pure
//! functions from them to text ([`text`], [`markdown`], [`json`], [`junit`]). Nothing here runs,
//! reads a clock or touches a file; the run folder writer (`scenario::artifacts`) does that.
//! Must not import `scenario` (which sits above it).

pub mod json;
pub mod junit;
pub mod markdown;
pub mod text;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::triage;

/// How one step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    /// Done, and the board did what was expected.
    Pass,
    /// Done, and the board did something else (a DUT failure).
    Fail,
    /// Not attempted because the whole run was skipped.
    Skipped,
    /// Not attempted because an earlier step did not pass.
    NotRun,
    /// The harness or the rig failed (or panicked) while doing it.
    Error,
}

impl StepStatus {
    /// Lower-case word for logs.
    pub fn word(self) -> &'static str {
        match self {
            StepStatus::Pass => "pass",
            StepStatus::Fail => "FAIL",
            StepStatus::Skipped => "skipped",
            StepStatus::NotRun => "not run",
            StepStatus::Error => "ERROR",
        }
    }
}

/// How a run (or a set of runs) went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Every step passed.
    Pass,
    /// Not run: the rig lacks a required capability.
    Skipped,
    /// A step failed: the board did not do what was expected.
    Fail,
    /// The harness or the rig failed.
    Error,
}

impl RunStatus {
    /// Upper-case word for logs.
    pub fn word(self) -> &'static str {
        match self {
            RunStatus::Pass => "PASS",
            RunStatus::Skipped => "SKIPPED",
            RunStatus::Fail => "FAIL",
            RunStatus::Error => "ERROR",
        }
    }
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis_opt<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => millis(d, s),
        None => s.serialize_none(),
    }
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// Position: `3`, or `7.2.1` for step 1 of iteration 2 of the repeat at step 7.
    pub id: String,
    /// The step kind (`ota`), or `iteration` for one pass of a repeat.
    pub kind: String,
    /// The step's label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Line of the step in the scenario file.
    pub line: usize,
    /// One line saying what the step does.
    pub description: String,
    /// How it went.
    pub status: StepStatus,
    /// Wall-clock time it took (none if it did not run).
    #[serde(rename = "duration_ms", serialize_with = "millis_opt")]
    pub duration: Option<Duration>,
    /// What the step expected to see.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// What it saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed: Option<String>,
    /// The harness error (with its causes), for status `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Iterations of a repeat, or the steps of one iteration.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<StepReport>,
}

impl StepReport {
    /// The innermost step that did not pass or run (the one that stopped the run).
    pub fn culprit(&self) -> Option<&StepReport> {
        if !matches!(self.status, StepStatus::Fail | StepStatus::Error) {
            return None;
        }
        Some(
            self.children
                .iter()
                .find_map(StepReport::culprit)
                .unwrap_or(self),
        )
    }
}

/// One scenario run on one board with one set of parameter values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunReport {
    /// Scenario name.
    pub scenario: String,
    /// Scenario file.
    pub file: String,
    /// What the scenario shows.
    pub description: String,
    /// Board id.
    pub board: String,
    /// Rig backend (`virtual`, `usb-serial`, `fake`).
    pub backend: String,
    /// Parameter values of this run.
    pub params: BTreeMap<String, String>,
    /// The parameters that vary between runs of this scenario (part of the run's name).
    pub matrix: BTreeMap<String, String>,
    /// How it went.
    pub status: RunStatus,
    /// Why it was skipped, or what stopped it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Wall-clock time of the run.
    #[serde(rename = "duration_ms", serialize_with = "millis")]
    pub duration: Duration,
    /// The steps, in order.
    pub steps: Vec<StepReport>,
    /// Triage of the run's whole capture.
    pub triage: Option<triage::Report>,
    /// The raw capture file, if the executor wrote one.
    pub capture: Option<PathBuf>,
    /// Why the capture file is missing bytes (it could not be written completely), if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_error: Option<String>,
    /// Harness errors outside the steps (triage at the end, safe state).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub harness_errors: Vec<String>,
}

impl RunReport {
    /// The step that stopped the run (innermost), if one did.
    pub fn culprit(&self) -> Option<&StepReport> {
        self.steps.iter().find_map(StepReport::culprit)
    }

    /// A name for this run, usable as a folder name: `scenario--board` plus the matrix
    /// values (`--password_env=X`), with anything outside `[A-Za-z0-9._=-]` replaced by `_`.
    pub fn run_name(&self) -> String {
        run_name(&self.scenario, &self.board, &self.matrix)
    }

    /// `board` or `board key=value ...`, for headings.
    pub fn title(&self) -> String {
        let mut t = format!("{} on {}", self.scenario, self.board);
        for (k, v) in &self.matrix {
            t.push_str(&format!(" {k}={v}"));
        }
        t
    }
}

/// The folder-safe name of a run (see [`RunReport::run_name`]).
pub fn run_name(scenario: &str, board: &str, matrix: &BTreeMap<String, String>) -> String {
    let mut name = format!("{scenario}--{board}");
    for (k, v) in matrix {
        name.push_str(&format!("--{k}={v}"));
    }
    file_safe(&name)
}

/// `text` with every character outside `[A-Za-z0-9._=-]` replaced by `_`.
pub fn file_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._=-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// All runs of one `harness scenario run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSet {
    /// When the set started (RFC 3339, UTC).
    pub started: String,
    /// The runs, in the order they ran.
    pub runs: Vec<RunReport>,
}

/// How many runs ended how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Passed.
    pub pass: usize,
    /// Failed (DUT).
    pub fail: usize,
    /// Harness errors.
    pub error: usize,
    /// Skipped.
    pub skipped: usize,
}

impl RunSet {
    /// Runs per status.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for r in &self.runs {
            match r.status {
                RunStatus::Pass => c.pass += 1,
                RunStatus::Fail => c.fail += 1,
                RunStatus::Error => c.error += 1,
                RunStatus::Skipped => c.skipped += 1,
            }
        }
        c
    }

    /// The overall status: the worst run's (error > fail > skipped > pass), where an empty
    /// set or one whose runs were all skipped is `Skipped`.
    pub fn status(&self) -> RunStatus {
        let c = self.counts();
        if c.error > 0 {
            RunStatus::Error
        } else if c.fail > 0 {
            RunStatus::Fail
        } else if c.pass > 0 {
            RunStatus::Pass
        } else {
            RunStatus::Skipped
        }
    }
}
