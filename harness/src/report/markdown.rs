//! `report.md`: the run set for people (an issue, a PR comment, a nightly mail).

use std::fmt::Write as _;

use super::{RunReport, RunSet, RunStatus, StepReport};

/// How many evidence lines of the triage to quote.
const EVIDENCE_LINES: usize = 8;

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn code(text: &str) -> String {
    text.replace("```", "'''")
}

/// Renders the run set as Markdown.
pub fn render(set: &RunSet) -> String {
    let mut o = String::new();
    let c = set.counts();
    let _ = writeln!(o, "# Scenario run {}", set.started);
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "**Result: {}**: {} run(s), {} passed, {} failed, {} error(s), {} skipped.",
        set.status().word(),
        set.runs.len(),
        c.pass,
        c.fail,
        c.error,
        c.skipped
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "| scenario | board | params | result | time |");
    let _ = writeln!(o, "|---|---|---|---|---|");
    for run in &set.runs {
        let params = run
            .matrix
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {:.1}s |",
            cell(&run.scenario),
            cell(&run.board),
            cell(&params),
            run.status.word(),
            run.duration.as_secs_f64()
        );
    }
    for run in &set.runs {
        write_run(&mut o, run);
    }
    o
}

fn write_run(o: &mut String, run: &RunReport) {
    let _ = writeln!(o);
    let _ = writeln!(o, "## {}: {}", run.status.word(), run.title());
    let _ = writeln!(o);
    for line in run.description.lines() {
        let _ = writeln!(o, "> {line}");
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "File `{}`, {} rig.", run.file, run.backend);
    match run.status {
        RunStatus::Pass => {}
        RunStatus::Skipped => {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "Skipped: {}.",
                run.reason.as_deref().unwrap_or("no reason given")
            );
        }
        RunStatus::Fail | RunStatus::Error => {
            if let Some(step) = run.culprit() {
                let _ = writeln!(o);
                let verb = if step.status == super::StepStatus::Error {
                    "Harness error at"
                } else {
                    "Failed at"
                };
                let _ = writeln!(
                    o,
                    "{verb} step {} (line {}): {}",
                    step.id, step.line, step.description
                );
                let _ = writeln!(o);
                if let Some(e) = &step.expected {
                    let _ = writeln!(o, "- **Expected:** {e}");
                }
                if let Some(s) = &step.observed {
                    let _ = writeln!(o, "- **Seen:** {s}");
                }
                if let Some(e) = &step.error {
                    let _ = writeln!(o, "- **Error:** {e}");
                }
            }
            for e in &run.harness_errors {
                let _ = writeln!(o, "- **Harness error:** {e}");
            }
        }
    }
    if let Some(t) = &run.triage {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "**Triage of the capture:** `{}` ({:?}): {}",
            t.class, t.confidence, t.summary
        );
        if !t.class.is_healthy() {
            let _ = writeln!(o);
            let _ = writeln!(o, "**Remedy:** {}", t.remedy);
        }
        if !t.evidence.is_empty() && run.status != RunStatus::Pass {
            let _ = writeln!(o);
            let _ = writeln!(o, "```text");
            for e in t.evidence.iter().take(EVIDENCE_LINES) {
                let _ = writeln!(o, "{:>6} | {}", e.line, code(&e.text));
            }
            let _ = writeln!(o, "```");
        }
    }
    if let Some(c) = &run.capture {
        let _ = writeln!(o);
        let _ = writeln!(o, "Capture: `{}`", c.display());
    }
    if !run.steps.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "<details><summary>Steps</summary>");
        let _ = writeln!(o);
        let _ = writeln!(o, "| # | line | step | result | time | seen |");
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        for s in &run.steps {
            write_step_row(o, s);
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "</details>");
    }
}

fn write_step_row(o: &mut String, s: &StepReport) {
    let time = s
        .duration
        .map(|d| format!("{} ms", d.as_millis()))
        .unwrap_or_default();
    let seen = s.observed.as_deref().or(s.error.as_deref()).unwrap_or("");
    let _ = writeln!(
        o,
        "| {} | {} | {} | {} | {} | {} |",
        s.id,
        s.line,
        cell(&s.description),
        s.status.word(),
        time,
        cell(seen)
    );
    for c in &s.children {
        write_step_row(o, c);
    }
}
