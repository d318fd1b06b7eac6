//! The run folder: everything one `harness scenario run` produced, written so that a reader
//! never mistakes a partial folder for a finished one.
//!
//! ```text
//! runs/<timestamp>-<name>/
//!   <scenario>--<board>[--key=value...]/   one per run
//!     capture.log      the raw serial capture (copied from the executor's file)
//!     triage.txt       triage of the capture, for people
//!     triage.json      the same, for machines
//!     steps.log        the run's step log
//!   steps.log  report.md  junit.xml
//!   report.json        written last; "complete": true only if everything above was written
//! ```
//!
//! Every file is written atomically: to a temporary file in the same folder, fsynced, then
//! renamed over the final name (and the folder fsynced). A full disk or a read-only folder
//! gives an error naming the file, and leaves no half-written file under a final name. The
//! capture is the exception: it is written as the bytes arrive (so a crash loses nothing),
//! straight into the run folder; if that file could not be written completely, the folder is
//! not complete either.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::report::{self, RunSet};
use crate::triage;

/// A run folder could not be written.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ArtifactError {
    /// A folder could not be created.
    #[error("cannot create the folder `{path}`")]
    #[diagnostic(
        code(harness::artifacts::create_dir),
        help("is there a file with that name, or is the disk full or read-only?")
    )]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file could not be written (nothing was left under its name).
    #[error("cannot write `{path}`")]
    #[diagnostic(
        code(harness::artifacts::write),
        help("is the disk full or the folder read-only? report.json is not marked complete")
    )]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The executor's capture file could not be read.
    #[error("cannot read the capture `{path}`")]
    #[diagnostic(code(harness::artifacts::read_capture))]
    ReadCapture {
        /// The capture file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A run's capture file could not be written completely (it is missing bytes).
    #[error("the capture `{path}` is incomplete: {reason}")]
    #[diagnostic(
        code(harness::artifacts::capture_incomplete),
        help(
            "is the disk full, or did the serial port go away during the run? report.json is \
             not marked complete; the run's steps are in it"
        )
    )]
    IncompleteCapture {
        /// The capture file.
        path: PathBuf,
        /// What went wrong while it was written.
        reason: String,
    },
    /// The JUnit renderer failed.
    #[error("cannot render junit.xml")]
    #[diagnostic(code(harness::artifacts::junit))]
    Junit(#[source] quick_junit::SerializeError),
}

/// Writes `bytes` to `path` atomically: temporary file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), ArtifactError> {
    let err = |source| ArtifactError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(err)?;
    fill(tmp.as_file_mut()).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    // On failure the temporary file is removed when `tmp` (returned in the error) drops.
    tmp.persist(path).map_err(|e| err(e.error))?;
    // Make the rename itself durable. Not every file system lets a directory be fsynced, so a
    // failure here is not reported.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn copy_atomic(from: &Path, to: &Path) -> Result<(), ArtifactError> {
    let mut src = File::open(from).map_err(|source| ArtifactError::ReadCapture {
        path: from.to_path_buf(),
        source,
    })?;
    // A read error in the middle surfaces as a write error of the copy; it names the target,
    // and the source is in the io::Error.
    write_atomic_with(to, |f| io::copy(&mut src, f).map(|_| ()))
}

fn create_dir(path: &Path) -> Result<(), ArtifactError> {
    fs::create_dir_all(path).map_err(|source| ArtifactError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// `2025-05-01T141500Z`: an RFC 3339 UTC time without colons, for folder names.
pub fn folder_timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(':', "")
}

/// The default run folder: `<base>/<timestamp>-<name>`, where `name` is the scenario's name
/// for one scenario and `<n>-scenarios` for several.
pub fn default_dir(base: &Path, started: SystemTime, scenario_names: &[&str]) -> PathBuf {
    let name = match scenario_names {
        [one] => report::file_safe(one),
        many => format!("{}-scenarios", many.len()),
    };
    base.join(format!("{}-{name}", folder_timestamp(started)))
}

/// What [`write_run_folder`] wrote.
#[derive(Debug, Clone)]
pub struct RunFolder {
    /// The folder.
    pub dir: PathBuf,
    /// The run set as written: capture paths point into the folder.
    pub set: RunSet,
}

/// Writes the run folder for `set` into `dir` (created if needed).
///
/// On error the files written so far stay, `report.json` is written (if it still can be) with
/// `"complete": false` and the error, and the error is returned.
pub fn write_run_folder(dir: &Path, set: &RunSet) -> Result<RunFolder, ArtifactError> {
    create_dir(dir)?;
    let mut written = set.clone();
    let result = write_contents(dir, &mut written).and_then(|()| {
        // A capture that misses bytes is half-written, whatever else got written.
        match written.runs.iter().find(|r| r.capture_error.is_some()) {
            Some(run) => Err(ArtifactError::IncompleteCapture {
                path: dir.join(run.capture.clone().unwrap_or_default()),
                reason: run.capture_error.clone().unwrap_or_default(),
            }),
            None => Ok(()),
        }
    });
    match result {
        Ok(()) => {
            write_atomic(
                &dir.join("report.json"),
                report::json::render(&written, true, &[]).as_bytes(),
            )?;
            Ok(RunFolder {
                dir: dir.to_path_buf(),
                set: written,
            })
        }
        Err(e) => {
            let mut message = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                message.push_str(&format!(": {c}"));
                cur = c.source();
            }
            // Best effort: the original error is what the caller must see.
            let _ = write_atomic(
                &dir.join("report.json"),
                report::json::render(&written, false, &[message]).as_bytes(),
            );
            Err(e)
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn write_contents(dir: &Path, set: &mut RunSet) -> Result<(), ArtifactError> {
    let mut all_steps = String::new();
    for run in &mut set.runs {
        let name = run.run_name();
        let sub = dir.join(&name);
        create_dir(&sub)?;
        if let Some(capture) = run.capture.clone() {
            let target = sub.join("capture.log");
            if !same_file(&capture, &target) {
                copy_atomic(&capture, &target)?;
            }
            run.capture = Some(PathBuf::from(&name).join("capture.log"));
        }
        if let Some(t) = &run.triage {
            let source = run
                .capture
                .as_ref()
                .map_or_else(|| name.clone(), |c| c.display().to_string());
            write_atomic(
                &sub.join("triage.txt"),
                triage::render_text(t, &source).as_bytes(),
            )?;
            let json = serde_json::to_string_pretty(t).expect("triage report serialises") + "\n";
            write_atomic(&sub.join("triage.json"), json.as_bytes())?;
        }
        let log = report::text::step_log(run);
        write_atomic(&sub.join("steps.log"), log.as_bytes())?;
        if !all_steps.is_empty() {
            all_steps.push('\n');
        }
        all_steps.push_str(&log);
    }
    write_atomic(&dir.join("steps.log"), all_steps.as_bytes())?;
    write_atomic(
        &dir.join("report.md"),
        report::markdown::render(set).as_bytes(),
    )?;
    let junit = report::junit::render(set).map_err(ArtifactError::Junit)?;
    write_atomic(&dir.join("junit.xml"), junit.as_bytes())?;
    Ok(())
}
