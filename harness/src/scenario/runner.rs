//! The runner: performs a [`Scenario`] on one board through an [`Executor`], step by step, and
//! records what each step expected and saw in a [`RunReport`].
//!
//! Layer L3. Runner rules:
//! - steps run in order; the first step that does not pass stops the run and the rest are
//!   marked not run;
//! - a harness error or a panic inside a step is caught and reported as that step's error;
//! - the executor's safe-state hook is called at the end of every run, whatever happened;
//! - line waits search from a capture mark taken before the action that should cause the line,
//!   and continue after the last line matched.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::executor::{
    CaptureMark, ExecError, Executor, FlashOutcome, LineWait, OtaOutcome, OtaRequest,
};
use super::model::Scenario;
use super::step::{IdentityWant, LineMatcher, OtaStep, Refusal, Step, StepKind};
use crate::board;
use crate::firmware::FwState;
use crate::image::{self, Severity};
use crate::report::{RunReport, RunStatus, StepReport, StepStatus};

/// What the runner is doing, for a progress display.
#[derive(Debug)]
pub enum Progress<'a> {
    /// A run begins.
    RunStarted {
        /// The scenario.
        scenario: &'a Scenario,
    },
    /// A step (or a repeat iteration) begins.
    StepStarted {
        /// Its id (`3`, `7.2.1`).
        id: &'a str,
        /// Its description.
        description: &'a str,
    },
    /// A step (or iteration) ended.
    StepFinished {
        /// What it did.
        report: &'a StepReport,
    },
    /// A run ended.
    RunFinished {
        /// The report.
        report: &'a RunReport,
    },
}

/// A harness failure inside a step.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("environment variable `{name}` (password_env) is not set")]
    MissingEnv { name: String },
    #[error("cannot read image `{path}`")]
    ReadImage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown board `{0}`")]
    Board(String),
}

/// An error and its causes on one line: `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let _ = write!(s, ": {c}");
        cur = c.source();
    }
    s
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

fn dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The outcome of one step before timing is added.
struct Outcome {
    status: StepStatus,
    expected: Option<String>,
    observed: Option<String>,
    children: Vec<StepReport>,
}

impl Outcome {
    fn pass(observed: impl Into<Option<String>>) -> Outcome {
        Outcome {
            status: StepStatus::Pass,
            expected: None,
            observed: observed.into(),
            children: Vec::new(),
        }
    }

    fn check(ok: bool, expected: String, observed: String) -> Outcome {
        Outcome {
            status: if ok {
                StepStatus::Pass
            } else {
                StepStatus::Fail
            },
            expected: Some(expected),
            observed: Some(observed),
            children: Vec::new(),
        }
    }
}

struct Runner<'a, 'p> {
    exec: &'a mut dyn Executor,
    scenario: &'a Scenario,
    progress: &'p mut dyn FnMut(Progress<'_>),
    /// Where the next line wait starts.
    cursor: CaptureMark,
    /// Mark at the start of each labelled step (the latest, inside repeats).
    labels: HashMap<String, CaptureMark>,
}

/// Runs `scenario` on the executor's board and reports what happened.
///
/// Never returns an error: harness failures are recorded in the report (status `error`), so a
/// caller always gets a report to write and the board is always left in the safe state.
pub fn run(
    scenario: &Scenario,
    exec: &mut dyn Executor,
    progress: &mut dyn FnMut(Progress<'_>),
) -> RunReport {
    progress(Progress::RunStarted { scenario });
    let started = Instant::now();
    let mut report = RunReport {
        scenario: scenario.name.clone(),
        file: scenario.file.display().to_string(),
        description: scenario.description.clone(),
        board: scenario.board.clone(),
        backend: exec.backend().to_string(),
        params: scenario.params.clone(),
        matrix: scenario.matrix.clone(),
        status: RunStatus::Pass,
        reason: None,
        duration: Duration::ZERO,
        steps: Vec::new(),
        triage: None,
        capture: None,
        capture_error: None,
        harness_errors: Vec::new(),
    };

    let have = exec.capabilities();
    let missing: Vec<&str> = scenario
        .requires
        .iter()
        .filter(|c| !have.contains(c))
        .map(|c| c.name())
        .collect();
    if !missing.is_empty() {
        report.status = RunStatus::Skipped;
        report.reason = Some(format!(
            "the {} rig for {} lacks {}",
            exec.backend(),
            scenario.board,
            missing.join(", ")
        ));
        report.steps = all_not_done(scenario, StepStatus::Skipped);
    } else {
        match guarded(|| exec.mark().map_err(StepError::from)) {
            Ok(start) => {
                let mut runner = Runner {
                    exec: &mut *exec,
                    scenario,
                    progress: &mut *progress,
                    cursor: start,
                    labels: HashMap::new(),
                };
                let (steps, _) = runner.steps(&scenario.steps, "");
                report.steps = steps;
                // The executor's capture belongs to this run: triage all of it.
                match guarded(|| {
                    runner
                        .exec
                        .triage(CaptureMark::default())
                        .map_err(StepError::from)
                }) {
                    Ok(t) => report.triage = Some(t),
                    Err(e) => report
                        .harness_errors
                        .push(format!("triage of the capture: {e}")),
                }
            }
            Err(e) => {
                report.steps = all_not_done(scenario, StepStatus::NotRun);
                report
                    .harness_errors
                    .push(format!("capture mark at the start: {e}"));
            }
        }
        report.capture = exec.capture_path();
    }
    if let Err(e) = guarded(|| exec.safe_state().map_err(StepError::from)) {
        report.harness_errors.push(format!("safe state: {e}"));
    }
    // After the safe state: the board is quiet, the capture has everything it will get.
    if let Some(e) = exec.capture_error() {
        report
            .harness_errors
            .push(format!("capture incomplete: {e}"));
        report.capture_error = Some(e);
    }

    let culprit = report
        .culprit()
        .map(|s| (s.status, s.id.clone(), s.description.clone()));
    if let Some((status, id, description)) = culprit {
        report.status = if status == StepStatus::Error {
            RunStatus::Error
        } else {
            RunStatus::Fail
        };
        report.reason = Some(format!("step {id} ({description}) {}", status.word()));
    }
    if !report.harness_errors.is_empty() && report.status != RunStatus::Skipped {
        report.status = RunStatus::Error;
        if report.reason.is_none() {
            report.reason = report.harness_errors.first().cloned();
        }
    }
    report.duration = started.elapsed();
    progress(Progress::RunFinished { report: &report });
    report
}

/// Runs `f`, turning a panic into an error message and an error into its chain.
fn guarded<T>(f: impl FnOnce() -> Result<T, StepError>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(chain(&e)),
        Err(payload) => Err(format!("panic: {}", panic_message(&*payload))),
    }
}

fn all_not_done(scenario: &Scenario, status: StepStatus) -> Vec<StepReport> {
    scenario
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| not_done(s, &(i + 1).to_string(), status))
        .collect()
}

fn not_done(step: &Step, id: &str, status: StepStatus) -> StepReport {
    StepReport {
        id: id.to_string(),
        kind: step.kind.name().to_string(),
        label: step.label.clone(),
        line: step.line,
        description: step.kind.to_string(),
        status,
        duration: None,
        expected: None,
        observed: None,
        error: None,
        children: Vec::new(),
    }
}

impl Runner<'_, '_> {
    /// Runs a step list; returns the reports and whether all passed.
    fn steps(&mut self, steps: &[Step], prefix: &str) -> (Vec<StepReport>, bool) {
        let mut out = Vec::with_capacity(steps.len());
        let mut ok = true;
        for (i, step) in steps.iter().enumerate() {
            let id = format!("{prefix}{}", i + 1);
            if !ok {
                out.push(not_done(step, &id, StepStatus::NotRun));
                continue;
            }
            let report = self.step(step, &id);
            ok = report.status == StepStatus::Pass;
            out.push(report);
        }
        (out, ok)
    }

    fn step(&mut self, step: &Step, id: &str) -> StepReport {
        let description = step.kind.to_string();
        (self.progress)(Progress::StepStarted {
            id,
            description: &description,
        });
        let t0 = Instant::now();
        let result = guarded(|| {
            self.exec.step_started(id, &description);
            if let Some(label) = &step.label {
                let mark = self.exec.mark()?;
                self.labels.insert(label.clone(), mark);
            }
            self.perform(step, id)
        });
        let mut report = not_done(step, id, StepStatus::Pass);
        match result {
            Ok(o) => {
                report.status = o.status;
                report.expected = o.expected;
                report.observed = o.observed;
                report.children = o.children;
            }
            Err(message) => {
                report.status = StepStatus::Error;
                report.error = Some(message);
            }
        }
        report.duration = Some(t0.elapsed());
        (self.progress)(Progress::StepFinished { report: &report });
        report
    }

    fn perform(&mut self, step: &Step, id: &str) -> Result<Outcome, StepError> {
        Ok(match &step.kind {
            StepKind::Power(action) => {
                self.cursor = self.exec.mark()?;
                self.exec.power(*action)?;
                Outcome::pass(None)
            }
            StepKind::Button { hold } => {
                self.cursor = self.exec.mark()?;
                self.exec.button(*hold)?;
                Outcome::pass(None)
            }
            StepKind::Flash(f) => {
                self.cursor = self.exec.mark()?;
                match self.exec.flash(&f.image, f.power_cycle_after)? {
                    FlashOutcome::Written { detail } => Outcome::pass(detail),
                    FlashOutcome::Failed { detail } => {
                        Outcome::check(false, "image written".into(), detail)
                    }
                }
            }
            StepKind::WaitBoot { timeout } => {
                let wait = self.exec.wait_boot(self.cursor, *timeout)?;
                let expected = format!(
                    "a boot (ROM banner, then the app's state line) within {}",
                    dur(*timeout)
                );
                match wait {
                    LineWait::Timeout {
                        last_line,
                        last_candidate,
                    } => {
                        // Say which half is missing: no boot at all, or an app that is silent.
                        let banner = last_candidate;
                        let mut o = self.line_outcome(
                            LineWait::Timeout {
                                last_line,
                                last_candidate: None,
                            },
                            expected,
                            *timeout,
                        );
                        let why = match banner {
                            Some(b) => format!(
                                "; the ROM banner came (`{}`) but no state line from the app \
                                 followed",
                                b.trim()
                            ),
                            None => "; no ROM banner came".to_string(),
                        };
                        if let Some(observed) = o.observed.as_mut() {
                            observed.push_str(&why);
                        }
                        o
                    }
                    seen => self.line_outcome(seen, expected, *timeout),
                }
            }
            StepKind::ExpectLine { matcher, timeout }
            | StepKind::ExpectIdentity { matcher, timeout } => {
                let wait = self.exec.wait_line(self.cursor, matcher, *timeout)?;
                self.line_outcome(
                    wait,
                    format!("{matcher} within {}", dur(*timeout)),
                    *timeout,
                )
            }
            StepKind::EnterUpdate { hold, timeout } => {
                self.cursor = self.exec.mark()?;
                self.exec.button(*hold)?;
                let matcher = LineMatcher::StateLine(IdentityWant {
                    state: Some(FwState::Update),
                    ..IdentityWant::default()
                });
                let wait = self.exec.wait_line(self.cursor, &matcher, *timeout)?;
                self.line_outcome(
                    wait,
                    format!("state=UPDATE after holding the button {}", dur(*hold)),
                    *timeout,
                )
            }
            StepKind::Ota(ota) if ota.second.is_some() => self.contended(ota)?,
            StepKind::Ota(ota) => {
                let outcome = self.ota(ota)?;
                let observed = describe_ota(&outcome);
                Outcome::check(
                    matches!(outcome, OtaOutcome::Accepted { .. }),
                    "upload accepted".into(),
                    observed,
                )
            }
            StepKind::ExpectOtaRefused { ota, reason, code } => {
                let outcome = self.ota(ota)?;
                let ok = match &outcome {
                    OtaOutcome::Refused {
                        reason: r, code: c, ..
                    } => r == reason && (code.is_none() || c == code),
                    OtaOutcome::Accepted { .. } => false,
                };
                let mut expected = format!("upload refused: {reason}");
                if let Some(c) = code {
                    let _ = write!(expected, " ERROR[{c}]");
                }
                Outcome::check(ok, expected, describe_ota(&outcome))
            }
            StepKind::ExpectLintRefusal {
                image,
                image_display,
                lint,
            } => self.lint_refusal(image, image_display, *lint)?,
            StepKind::ExpectTriage { class, since } => {
                let from = match since {
                    Some(label) => self.labels.get(label).copied().unwrap_or_default(),
                    None => CaptureMark::default(),
                };
                let t = self.exec.triage(from)?;
                let mut expected = format!("triage class {class}");
                if let Some(l) = since {
                    let _ = write!(expected, " for the capture since step `{l}`");
                }
                Outcome::check(
                    t.class == *class,
                    expected,
                    format!("{} ({:?}): {}", t.class, t.confidence, t.summary),
                )
            }
            StepKind::Wait(d) => {
                self.exec.wait(*d)?;
                Outcome::pass(None)
            }
            StepKind::Repeat { times, steps } => {
                let mut children = Vec::new();
                let mut failed = None;
                for i in 1..=*times {
                    let iter_id = format!("{id}.{i}");
                    let description = format!("iteration {i} of {times}");
                    (self.progress)(Progress::StepStarted {
                        id: &iter_id,
                        description: &description,
                    });
                    let t0 = Instant::now();
                    let (reports, ok) = self.steps(steps, &format!("{iter_id}."));
                    let status = if ok {
                        StepStatus::Pass
                    } else if reports.iter().any(|r| r.status == StepStatus::Error) {
                        StepStatus::Error
                    } else {
                        StepStatus::Fail
                    };
                    let iteration = StepReport {
                        id: iter_id,
                        kind: "iteration".into(),
                        label: None,
                        line: step.line,
                        description,
                        status,
                        duration: Some(t0.elapsed()),
                        expected: None,
                        observed: None,
                        error: None,
                        children: reports,
                    };
                    (self.progress)(Progress::StepFinished { report: &iteration });
                    children.push(iteration);
                    if !ok {
                        failed = Some((i, status));
                        break;
                    }
                }
                let (status, observed) = match failed {
                    None => (
                        StepStatus::Pass,
                        format!("{times} of {times} iterations passed"),
                    ),
                    Some((i, status)) => (
                        status,
                        format!("iteration {i} of {times} did not pass; {} passed", i - 1),
                    ),
                };
                Outcome {
                    status,
                    expected: Some(format!("{times} iterations pass")),
                    observed: Some(observed),
                    children,
                }
            }
        })
    }

    fn line_outcome(&mut self, wait: LineWait, expected: String, timeout: Duration) -> Outcome {
        match wait {
            LineWait::Seen { line, end } => {
                self.cursor = end;
                Outcome::check(true, expected, format!("`{line}`"))
            }
            LineWait::Timeout {
                last_line,
                last_candidate,
            } => {
                let mut observed = format!("not seen within {}", dur(timeout));
                match (last_candidate, last_line) {
                    (Some(c), _) => {
                        let _ = write!(observed, "; last such line: `{c}`");
                    }
                    (None, Some(l)) => {
                        let _ = write!(observed, "; last line: `{l}`");
                    }
                    (None, None) => observed.push_str("; no output"),
                }
                Outcome::check(false, expected, observed)
            }
        }
    }

    fn ota(&mut self, ota: &OtaStep) -> Result<OtaOutcome, StepError> {
        let password = password(&ota.password_env)?;
        self.cursor = self.exec.mark()?;
        Ok(self.exec.ota(&OtaRequest {
            method: ota.method,
            image: &ota.image,
            password: password.as_deref(),
            from: None,
        })?)
    }

    /// An `ota` step with a second uploader: passes when the step's upload is accepted and
    /// the second is not.
    fn contended(&mut self, ota: &OtaStep) -> Result<Outcome, StepError> {
        let Some(second) = &ota.second else {
            unreachable!("called for steps with a second uploader")
        };
        let first_pw = password(&ota.password_env)?;
        let second_pw = password(&second.password_env)?;
        self.cursor = self.exec.mark()?;
        let got = self.exec.ota_contended(
            &OtaRequest {
                method: ota.method,
                image: &ota.image,
                password: first_pw.as_deref(),
                from: None,
            },
            &OtaRequest {
                method: ota.method,
                image: &second.image,
                password: second_pw.as_deref(),
                from: second.from,
            },
        )?;
        let ok = matches!(got.first, OtaOutcome::Accepted { .. })
            && !matches!(got.second, OtaOutcome::Accepted { .. });
        let started = match got.second_started_at {
            Some((sent, total)) => format!(" (started when {sent} of {total} bytes were sent)"),
            None => " (started after the first ended)".to_string(),
        };
        let from = second
            .from
            .map(|f| format!(" from {f}"))
            .unwrap_or_default();
        Ok(Outcome::check(
            ok,
            "upload accepted; the second uploader's upload refused or left waiting, never mixed in"
                .into(),
            format!(
                "first: {}; second{from}{started}: {}",
                describe_ota(&got.first),
                describe_ota(&got.second)
            ),
        ))
    }

    fn lint_refusal(
        &self,
        image: &Path,
        display: &str,
        lint: Option<image::LintId>,
    ) -> Result<Outcome, StepError> {
        let board = board::find(&self.scenario.board)
            .map_err(|_| StepError::Board(self.scenario.board.clone()))?;
        let bytes = std::fs::read(image).map_err(|source| StepError::ReadImage {
            path: image.to_path_buf(),
            source,
        })?;
        let mut expected = format!("the lint refuses {display} for {}", board.id);
        if let Some(l) = lint {
            let _ = write!(expected, " with {}", l.name());
        }
        Ok(match image::parse_firmware(&bytes) {
            Err(e) => Outcome::check(
                lint.is_none(),
                expected,
                format!("refused: not a firmware image: {e}"),
            ),
            Ok(fw) => {
                let errors: Vec<_> = image::lint(&fw, board)
                    .into_iter()
                    .filter(|l| l.severity == Severity::Error)
                    .collect();
                let ok =
                    !errors.is_empty() && lint.is_none_or(|id| errors.iter().any(|l| l.id == id));
                let observed = if errors.is_empty() {
                    "accepted: no lint errors".to_string()
                } else {
                    format!(
                        "refused: {}",
                        errors
                            .iter()
                            .map(|l| format!("{} ({})", l.id.name(), l.message))
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                };
                Outcome::check(ok, expected, observed)
            }
        })
    }
}

/// The password in the environment variable a step names, if it names one.
fn password(env: &Option<String>) -> Result<Option<String>, StepError> {
    match env {
        Some(name) => std::env::var(name)
            .map(Some)
            .map_err(|_| StepError::MissingEnv { name: name.clone() }),
        None => Ok(None),
    }
}

fn describe_ota(outcome: &OtaOutcome) -> String {
    match outcome {
        OtaOutcome::Accepted { detail } => format!("accepted: {detail}"),
        OtaOutcome::Refused {
            reason,
            code,
            detail,
        } => {
            let code = code.map(|c| format!(" ERROR[{c}]")).unwrap_or_default();
            let r: &Refusal = reason;
            format!("refused ({r}{code}): {detail}")
        }
    }
}

/// Makes the executor for one run (the rig-backed one, or a fake in tests).
pub type ExecutorFactory<'f> = dyn FnMut(&Scenario) -> Result<Box<dyn Executor>, ExecError> + 'f;

/// Runs every scenario on a fresh executor from `make_executor`; a run whose executor cannot
/// be made is reported as an error and the others still run.
pub fn run_all<'s>(
    runs: impl IntoIterator<Item = &'s Scenario>,
    make_executor: &mut ExecutorFactory<'_>,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Vec<RunReport> {
    runs.into_iter()
        .map(|scenario| match make_executor(scenario) {
            Ok(mut exec) => run(scenario, exec.as_mut(), progress),
            Err(e) => {
                let mut r = not_run_report(scenario, "", RunStatus::Error);
                r.reason = Some(format!("no executor: {}", chain(&e)));
                r.harness_errors = vec![chain(&e)];
                progress(Progress::RunFinished { report: &r });
                r
            }
        })
        .collect()
}

/// The report of a run that was not attempted because the rig cannot do it (no board of that
/// kind, say): status skipped, every step skipped, `reason` saying why.
pub fn skipped(scenario: &Scenario, backend: &str, reason: String) -> RunReport {
    let mut r = not_run_report(scenario, backend, RunStatus::Skipped);
    r.reason = Some(reason);
    r
}

fn not_run_report(scenario: &Scenario, backend: &str, status: RunStatus) -> RunReport {
    RunReport {
        scenario: scenario.name.clone(),
        file: scenario.file.display().to_string(),
        description: scenario.description.clone(),
        board: scenario.board.clone(),
        backend: backend.to_string(),
        params: scenario.params.clone(),
        matrix: scenario.matrix.clone(),
        status,
        reason: None,
        duration: Duration::ZERO,
        steps: all_not_done(
            scenario,
            if status == RunStatus::Skipped {
                StepStatus::Skipped
            } else {
                StepStatus::NotRun
            },
        ),
        triage: None,
        capture: None,
        capture_error: None,
        harness_errors: Vec::new(),
    }
}
