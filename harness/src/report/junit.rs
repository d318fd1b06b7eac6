//! `junit.xml` for CI: one testsuite per scenario file, one testcase per run
//! (scenario × board × parameter values).

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::{RunReport, RunSet, RunStatus, text};

/// Name of the JUnit report (the `<testsuites name=...>` attribute).
pub const REPORT_NAME: &str = "sonoff-hil";

fn case_name(run: &RunReport) -> String {
    let mut name = run.board.clone();
    for (k, v) in &run.matrix {
        name.push_str(&format!(" {k}={v}"));
    }
    name
}

/// "step 5 (OTA ...) failed: expected X; seen Y", the failure message.
fn failure_message(run: &RunReport) -> String {
    match run.culprit() {
        Some(step) => {
            let mut m = format!(
                "step {} (line {}) {}: {}",
                step.id,
                step.line,
                step.status.word(),
                step.description
            );
            if let Some(e) = &step.expected {
                m.push_str(&format!("; expected: {e}"));
            }
            if let Some(s) = &step.observed {
                m.push_str(&format!("; seen: {s}"));
            }
            if let Some(e) = &step.error {
                m.push_str(&format!("; error: {e}"));
            }
            m
        }
        None => run
            .reason
            .clone()
            .unwrap_or_else(|| "run did not pass".to_string()),
    }
}

fn test_case(run: &RunReport) -> TestCase {
    let status = match run.status {
        RunStatus::Pass => TestCaseStatus::success(),
        RunStatus::Skipped => {
            let mut s = TestCaseStatus::skipped();
            if let Some(r) = &run.reason {
                s.set_message(r.as_str());
            }
            s
        }
        RunStatus::Fail | RunStatus::Error => {
            let kind = if run.status == RunStatus::Fail {
                NonSuccessKind::Failure
            } else {
                NonSuccessKind::Error
            };
            let mut s = TestCaseStatus::non_success(kind);
            s.set_message(failure_message(run));
            s.set_type(if run.status == RunStatus::Fail {
                "dut-failure"
            } else {
                "harness-error"
            });
            if let Some(t) = &run.triage {
                s.set_description(format!(
                    "triage of the capture: {} ({:?}): {}\nremedy: {}",
                    t.class, t.confidence, t.summary, t.remedy
                ));
            }
            s
        }
    };
    let mut case = TestCase::new(case_name(run), status);
    case.set_classname(run.scenario.as_str());
    case.set_time(run.duration);
    case.set_system_out(text::step_log(run));
    case.add_property(Property::new("board", run.board.as_str()));
    case.add_property(Property::new("backend", run.backend.as_str()));
    for (k, v) in &run.params {
        case.add_property(Property::new(format!("param.{k}"), v.as_str()));
    }
    if let Some(c) = &run.capture {
        case.add_property(Property::new("capture", c.display().to_string()));
    }
    case
}

/// Renders the run set as JUnit XML.
pub fn render(set: &RunSet) -> Result<String, quick_junit::SerializeError> {
    let mut report = Report::new(REPORT_NAME);
    // Suites in the order their files first ran.
    let mut files: Vec<&str> = Vec::new();
    for run in &set.runs {
        if !files.contains(&run.file.as_str()) {
            files.push(&run.file);
        }
    }
    for file in files {
        let runs: Vec<&RunReport> = set.runs.iter().filter(|r| r.file == file).collect();
        let mut suite = TestSuite::new(runs[0].scenario.as_str());
        suite.add_property(Property::new("file", file));
        suite.add_test_cases(runs.iter().map(|r| test_case(r)));
        report.add_test_suite(suite);
    }
    report.to_string()
}
