//! `report.json`: the whole run set for machines.
//!
//! `complete` is the reader's guarantee: it is `true` only in the copy written after every other
//! file of the run folder was written, so a report from an interrupted or failed write never
//! looks finished.

use serde::Serialize;

use super::{Counts, RunReport, RunSet, RunStatus};

#[derive(Serialize)]
struct Document<'a> {
    complete: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    write_errors: &'a [String],
    harness_version: &'static str,
    started: &'a str,
    status: RunStatus,
    counts: Counts,
    runs: &'a [RunReport],
}

/// Renders the run set; `write_errors` lists files of the run folder that could not be
/// written (and must be non-empty whenever `complete` is false because of them).
pub fn render(set: &RunSet, complete: bool, write_errors: &[String]) -> String {
    let doc = Document {
        complete,
        write_errors,
        harness_version: env!("CARGO_PKG_VERSION"),
        started: &set.started,
        status: set.status(),
        counts: set.counts(),
        runs: &set.runs,
    };
    // Every field is a plain struct, string, number or map with string keys: serialising to a
    // string cannot fail.
    serde_json::to_string_pretty(&doc).expect("run report serialises") + "\n"
}
