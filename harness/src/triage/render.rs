//! Text (terminal) and Markdown (issue) renderings of a report. JSON is serde's.

use std::fmt::Write;

use super::Report;

/// Renders a report for a terminal. `source` names the capture.
pub fn render_text(report: &Report, source: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{source}: {}", report.class);
    let _ = writeln!(o, "  {}", report.summary);
    let _ = writeln!(o, "  confidence: {:?}", report.confidence);
    let _ = writeln!(o);
    let _ = writeln!(o, "Remedy:");
    for line in wrap(&report.remedy, 96) {
        let _ = writeln!(o, "  {line}");
    }
    write_details(&mut o, report, "  ");
    if !report.evidence.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "Evidence:");
        for e in &report.evidence {
            let _ = writeln!(o, "  {:>6} | {}", e.line, e.text);
        }
    }
    write_timeline_text(&mut o, report);
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Rule: {} (sources: {})",
        report.rule,
        report.sources.join("; ")
    );
    o
}

fn write_details(o: &mut String, report: &Report, indent: &str) {
    let d = &report.details;
    let mut lines = Vec::new();
    if let Some(e) = &d.exception {
        let mut s = match e.cause {
            Some(c) => format!("exception: {c} ({})", e.name),
            None => format!("crash: {}", e.name),
        };
        if let Some(pc) = &e.epc1 {
            let _ = write!(s, ", epc1={pc}");
            if let Some(r) = e.epc1_region {
                let _ = write!(s, " in {r}");
            }
        }
        if let Some(a) = &e.excvaddr {
            let _ = write!(s, ", excvaddr={a}");
        }
        if let Some(c) = &e.context {
            let _ = write!(s, ", ctx: {c}");
        }
        lines.push(s);
        if !e.stack_code_addresses.is_empty() {
            lines.push(format!(
                "code addresses on the stack: {}",
                e.stack_code_addresses.join(" ")
            ));
        }
    }
    if let Some(c) = d.eboot_copy_result {
        lines.push(format!("eboot copy result: cp:{c}"));
    }
    if let Some(c) = d.eboot_error {
        lines.push(format!("eboot load error: e:{c}"));
    }
    if let Some(c) = d.updater_error {
        lines.push(format!("updater error: ERROR[{c}]"));
    }
    if let Some(v) = &d.eboot_version {
        lines.push(format!("installed app word at 0x1010: {v}"));
    }
    if let Some(i) = &d.identity {
        lines.push(format!("firmware: {i}"));
    }
    lines.extend(d.notes.iter().cloned());
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "Details:");
    for l in lines {
        let _ = writeln!(o, "{indent}{l}");
    }
}

fn write_timeline_text(o: &mut String, report: &Report) {
    if report.boots.is_empty() {
        return;
    }
    let _ = writeln!(o);
    let shown = report.boots.len() as u64;
    if report.total_boots > shown {
        let _ = writeln!(
            o,
            "Boots ({} in the capture, {shown} shown):",
            report.total_boots
        );
    } else {
        let _ = writeln!(o, "Boots:");
    }
    let mut prev: Option<u64> = None;
    for b in &report.boots {
        if prev.is_some_and(|p| p + 1 != b.index) {
            let _ = writeln!(o, "  ...");
        }
        prev = Some(b.index);
        let banner = match (&b.rst_cause, &b.boot_mode) {
            (Some(c), Some(m)) => format!("rst cause {c}, boot mode {m}"),
            (Some(c), None) => format!("rst cause {c}"),
            _ => "no banner".to_string(),
        };
        let _ = writeln!(o, "  #{:<3} line {:>6}  {banner}", b.index, b.line);
        let _ = writeln!(o, "        {} => {}", b.stages, b.outcome);
    }
}

/// Renders a report as Markdown, to paste into an issue.
pub fn render_markdown(report: &Report, source: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "### Boot-log triage: `{}`", report.class);
    let _ = writeln!(o);
    let _ = writeln!(o, "**Capture:** `{source}`  ");
    let _ = writeln!(o, "**Finding:** {}  ", report.summary);
    let _ = writeln!(o, "**Confidence:** {:?}", report.confidence);
    let _ = writeln!(o);
    let _ = writeln!(o, "**Remedy:** {}", report.remedy);
    let mut details = String::new();
    write_details(&mut details, report, "- ");
    if !details.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "**Details:**");
        for l in details.lines().filter(|l| l.starts_with("- ")) {
            let _ = writeln!(o, "{l}");
        }
    }
    if !report.evidence.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "**Evidence:**");
        let _ = writeln!(o);
        let _ = writeln!(o, "```text");
        for e in &report.evidence {
            let _ = writeln!(o, "{:>6} | {}", e.line, e.text.replace("```", "'''"));
        }
        let _ = writeln!(o, "```");
    }
    if !report.boots.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "<details><summary>Boots ({})</summary>",
            report.total_boots
        );
        let _ = writeln!(o);
        let _ = writeln!(o, "| # | line | rst cause | boot mode | stages | outcome |");
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        for b in &report.boots {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                b.index,
                b.line,
                b.rst_cause.as_deref().unwrap_or("-"),
                b.boot_mode.as_deref().unwrap_or("-"),
                b.stages.replace('|', "\\|"),
                b.outcome.replace('|', "\\|")
            );
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "</details>");
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "<sub>rule `{}`; sources: {}</sub>",
        report.rule,
        report.sources.join("; ")
    );
    o
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}
