//! Scenario files: any text validates or fails with an error that names the file and a line
//! inside it, and renders; images named by the text are looked up in the repository's fixtures.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use harness::scenario;
use libfuzzer_sys::fuzz_target;

fn repo_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

fuzz_target!(|data: &[u8]| {
    // The loader reads files with read_to_string: invalid UTF-8 never gets this far.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let root = repo_root();
    let file = Path::new("fuzz.toml");
    match scenario::parse(text, file, &root.join("scenarios"), Some(root), &[]) {
        Ok(parsed) => {
            assert!(!parsed.runs.is_empty());
            for run in &parsed.runs {
                for step in &run.steps {
                    let _ = step.kind.to_string();
                }
            }
        }
        Err(e) => {
            let loc = e.location();
            assert_eq!(loc.file, "fuzz.toml");
            if let Some(line) = loc.line {
                assert!(line >= 1 && line <= text.lines().count().max(1) + 1, "{e}");
            }
            let mut out = String::new();
            let _ = miette::GraphicalReportHandler::new().render_report(&mut out, &e);
        }
    }
});
