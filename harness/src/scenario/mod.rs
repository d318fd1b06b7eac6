//! Scenarios: TOML files that say what to do to a board and what it must show, and the runner
//! that does it.
//!
//! - [`model`]: `RawScenario` (serde, with spans) → validated [`ScenarioFile`] / [`Scenario`]
//!   (L0 apart from reading images through a trait)
//! - [`step`]: the validated step kinds and their constants (L0)
//! - [`executor`]: the [`Executor`] trait, the seam to a rig; [`fake`]: [`FakeExecutor`]
//! - [`rig_executor`]: [`RigExecutor`], the executor over a rig board (L3)
//! - [`runner`]: runs a scenario through an executor into a [`RunReport`](crate::report::RunReport) (L3)
//! - [`artifacts`]: the run folder (captures, triage, reports), written atomically (L3)
//!
//! Must not import `sim` or the binary's `cli`. Only [`rig_executor`] imports `rig` and the OTA
//! clients; the runner sees a rig only as an `Executor`.
//!
//! # File format
//!
//! ```toml
//! # What the scenario shows (comments are for people; `description` goes into reports).
//! name = "seed-4ch-remedy"
//! description = "Power cycle after a serial flash; the first OTA then works."
//! boards = ["sonoff-4ch"]                       # board ids it applies to
//! requires = ["power", "gpio0", "serial", "ota-webserver"]  # unmet -> skipped
//!
//! [params]                                      # strings; an array is a matrix
//! old = "fixtures/images/sonoff-ota-1.0.0-webserver.bin"
//! method = ["arduino", "webserver"]             # runs once per value
//!
//! [[step]]
//! label = "flash"                               # optional, for `since`
//! flash = { image = "{old}", power_cycle_after = true, force = false }
//! [[step]]
//! expect_identity = { version = "1.0.0", state = "RUN", timeout = "5s" }
//! ```
//!
//! Step kinds: `power = "on"|"off"|"cycle"`, `button = "press"` or `{ hold = "3s" }`,
//! `flash = { image, power_cycle_after?, force? }`, `wait_boot = { timeout? }`,
//! `expect_line = { contains, timeout? }`,
//! `expect_identity = { app?, version?, ota?, state?, timeout? }`, `enter_update = { timeout? }`,
//! `ota = { method, image, password_env?, force?, second? }` (`second = { image, password_env?,
//! from? }`: a second uploader that starts once this upload is under way, from the local
//! address `from` if given; the step then passes when this upload is accepted and the second is
//! not, so a scenario can show that uploads never interleave and that a second host gets
//! nowhere),
//! `expect_ota_refused = { method, image, reason, code?, password_env? }`,
//! (`reason`: not-in-update-state, auth, updater-error, transfer or protocol; `code` = the
//! Updater's `ERROR[n]`), `expect_lint_refusal = { image, lint? }`, `expect_triage = "class"` or
//! `{ class, since? }`, `wait = "2s"`, `repeat = { times, steps = [ {...}, ... ] }`.
//!
//! Durations are device time in humantime syntax. `{name}` in any step string is replaced by a
//! parameter (`{{`/`}}` are literal braces); `{board}`, `{long_press}` and `{update_timeout}`
//! are built in. Image paths are relative to the scenario file or the repository root; a flash
//! or OTA image must pass the board lint unless the step says `force = true`. An empty
//! `password_env` means no password, so a matrix can switch it off.

pub mod artifacts;
mod error;
pub mod executor;
pub mod fake;
pub mod model;
mod raw;
pub mod rig_executor;
pub mod runner;
pub mod step;

use std::path::{Path, PathBuf};

pub use error::{Location, Problem, ScenarioError};
pub use executor::{
    CaptureMark, ContendedOutcome, ExecError, Executor, FlashOutcome, LineWait, OtaOutcome,
    OtaRequest, ota_outcome,
};
pub use fake::FakeExecutor;
pub use model::{BUILTIN_PARAMS, Capability, Scenario, ScenarioFile};
pub use rig_executor::RigExecutor;
pub use runner::{ExecutorFactory, Progress, run, run_all, skipped};
pub use step::{LineMatcher, PowerAction, Refusal, SecondUpload, Step, StepKind};

/// Finds images for one scenario file: next to the file first, then from the repository root.
#[derive(Debug, Clone)]
struct FsImages {
    scenario_dir: PathBuf,
    repo_root: Option<PathBuf>,
}

impl model::ImageFiles for FsImages {
    fn resolve(&self, written: &str) -> Result<PathBuf, Vec<PathBuf>> {
        let written = Path::new(written);
        if written.is_absolute() {
            return if written.is_file() {
                Ok(written.to_path_buf())
            } else {
                Err(vec![written.to_path_buf()])
            };
        }
        let mut tried = vec![self.scenario_dir.join(written)];
        if let Some(root) = &self.repo_root {
            tried.push(root.join(written));
        }
        match tried.iter().find(|p| p.is_file()) {
            Some(p) => Ok(p.clone()),
            None => Err(tried),
        }
    }

    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

/// The repository root above `dir`: the nearest ancestor with a `.git` entry (a directory in a
/// clone, a file in a worktree).
pub fn find_repo_root(dir: &Path) -> Option<PathBuf> {
    let dir = std::path::absolute(dir).ok()?;
    dir.ancestors()
        .find(|d| d.join(".git").exists())
        .map(Path::to_path_buf)
}

/// Splits `--param name=value` arguments.
pub fn parse_overrides(args: &[String]) -> Result<Vec<(String, String)>, ScenarioError> {
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(ScenarioError::in_file(
                Problem::BadOverride { text: a.clone() },
                "--param",
            )),
        })
        .collect()
}

/// Reads and validates a scenario file; `overrides` replace parameter values.
///
/// Images are looked up next to the file, then under the repository root above it (or, for a
/// file outside any repository, above the current directory).
pub fn load(path: &Path, overrides: &[(String, String)]) -> Result<ScenarioFile, ScenarioError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ScenarioError::in_file(Problem::Read(e), &path.display().to_string()))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // A scenario outside any repository (a scratch file) still finds the repository's
    // fixtures when run from inside it.
    let root = find_repo_root(dir).or_else(|| find_repo_root(Path::new(".")));
    parse(&text, path, dir, root.as_deref(), overrides)
}

/// Validates scenario text as if it were the file `path`; images are looked up next to
/// `scenario_dir`, then under `repo_root`.
pub fn parse(
    text: &str,
    path: &Path,
    scenario_dir: &Path,
    repo_root: Option<&Path>,
    overrides: &[(String, String)],
) -> Result<ScenarioFile, ScenarioError> {
    let images = FsImages {
        scenario_dir: scenario_dir.to_path_buf(),
        repo_root: repo_root.map(Path::to_path_buf),
    };
    model::validate(text, path, &images, overrides)
}
