//! Terminal renderings: a concise summary of a run set, and the step log of one run.

use std::fmt::Write as _;
use std::time::Duration;

use super::{RunReport, RunSet, RunStatus, StepReport};

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// A concise summary for a terminal: one line per run, and for a run that did not pass the
/// step that stopped it, what it expected and saw, and the triage of the capture.
pub fn render(set: &RunSet) -> String {
    let mut o = String::new();
    for run in &set.runs {
        let _ = writeln!(
            o,
            "{:<7} {}  ({})",
            run.status.word(),
            run.title(),
            secs(run.duration)
        );
        match run.status {
            RunStatus::Pass => {}
            RunStatus::Skipped => {
                if let Some(r) = &run.reason {
                    let _ = writeln!(o, "        {r}");
                }
            }
            RunStatus::Fail | RunStatus::Error => write_culprit(&mut o, run, "        "),
        }
    }
    let c = set.counts();
    let _ = writeln!(
        o,
        "\n{} run{}: {} passed, {} failed, {} error{}, {} skipped",
        set.runs.len(),
        if set.runs.len() == 1 { "" } else { "s" },
        c.pass,
        c.fail,
        c.error,
        if c.error == 1 { "" } else { "s" },
        c.skipped
    );
    o
}

fn write_culprit(o: &mut String, run: &RunReport, indent: &str) {
    if let Some(step) = run.culprit() {
        let _ = writeln!(
            o,
            "{indent}step {} (line {}): {} {}",
            step.id,
            step.line,
            step.description,
            step.status.word()
        );
        write_expectation(o, step, &format!("{indent}  "));
    } else if let Some(r) = &run.reason {
        let _ = writeln!(o, "{indent}{r}");
    }
    for e in &run.harness_errors {
        let _ = writeln!(o, "{indent}harness error: {e}");
    }
    if let Some(t) = &run.triage {
        let _ = writeln!(
            o,
            "{indent}triage of the capture: {} ({:?}): {}",
            t.class, t.confidence, t.summary
        );
    }
    if let Some(c) = &run.capture {
        let _ = writeln!(o, "{indent}capture: {}", c.display());
    }
}

fn write_expectation(o: &mut String, step: &StepReport, indent: &str) {
    if let Some(e) = &step.expected {
        let _ = writeln!(o, "{indent}expected: {e}");
    }
    if let Some(s) = &step.observed {
        let _ = writeln!(o, "{indent}seen:     {s}");
    }
    if let Some(e) = &step.error {
        let _ = writeln!(o, "{indent}error:    {e}");
    }
}

/// The step log of one run (`steps.log`, JUnit system-out): every step with status, time,
/// expectation and observation.
pub fn step_log(run: &RunReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "run {} ({} rig)", run.title(), run.backend);
    let _ = writeln!(o, "file {}", run.file);
    for (k, v) in &run.params {
        let _ = writeln!(o, "param {k} = {v}");
    }
    for step in &run.steps {
        write_step(&mut o, step, 0);
    }
    let _ = write!(o, "result {}", run.status.word());
    match &run.reason {
        Some(r) => {
            let _ = writeln!(o, ": {r}");
        }
        None => o.push('\n'),
    }
    for e in &run.harness_errors {
        let _ = writeln!(o, "harness error: {e}");
    }
    if let Some(t) = &run.triage {
        let _ = writeln!(o, "triage {} ({:?}): {}", t.class, t.confidence, t.summary);
    }
    o
}

fn write_step(o: &mut String, step: &StepReport, depth: usize) {
    let pad = "  ".repeat(depth);
    let time = step
        .duration
        .map(|d| format!("{}ms", d.as_millis()))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "{pad}[{}] {:<7} {:>8}  {}",
        step.id,
        step.status.word(),
        time,
        step.description
    );
    write_expectation(o, step, &format!("{pad}      "));
    for child in &step.children {
        write_step(o, child, depth + 1);
    }
}
