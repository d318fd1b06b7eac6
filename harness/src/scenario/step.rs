//! Validated steps: what each step kind asks for, with durations parsed and paths resolved.
//!
//! Durations are *device time*: the time the board would take. The executor scales them for
//! its rig (a simulator may run faster than real time); the runner never sleeps itself.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::firmware::{self, FwState, OtaMethod};
use crate::image::{Identity, LintId};
use crate::triage::Class;

/// How long a `button = "press"` holds the button.
///
/// Longer than the firmware's debounce (`button.debounce_ms`, 50 ms) so it counts, and far
/// shorter than its long press (`button.long_press_ms`, 3 s) so it stays a short press; a unit
/// test checks both against `firmware/behaviour.toml`.
pub const SHORT_PRESS: Duration = Duration::from_millis(200);

/// How much longer than the firmware's long press `enter_update` holds the button.
///
/// The firmware counts the long press from the debounced edge, and a rig's GPIO and the
/// executor's time scaling add jitter; half a second covers both without getting near the
/// UPDATE timeout.
pub const LONG_PRESS_MARGIN: Duration = Duration::from_millis(500);

/// Default `timeout` of `expect_line`, `expect_identity` and of the state line `enter_update`
/// waits for after releasing the button.
pub const DEFAULT_LINE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default `timeout` of `wait_boot`: ROM banner, eboot (which may copy a staged OTA image of up
/// to ~1 MB at roughly 50 KB/s, failure-modes.md B) and the app's first state line.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a `power` step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    /// Switch the board's supply on.
    On,
    /// Switch it off.
    Off,
    /// Off, wait, on: the only full reset of a Sonoff (clears latched straps and RTC memory).
    Cycle,
}

impl PowerAction {
    /// The word used in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Cycle => "cycle",
        }
    }
}

/// Why a device refused (or did not take) an OTA upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// The OTA service is not running: no reply to the espota invitation, or the HTTP
    /// connection is refused (the firmware is in RUN, behaviour.toml `outside_update`).
    NotInUpdateState,
    /// Wrong or missing password (espota `Authentication Failed`, HTTP 401).
    Auth,
    /// The core's Updater refused: `ERROR[n]` (espota `ERR:`, HTTP `Update error:`).
    UpdaterError,
    /// The upload did not go through: no connection, cut or stalled mid-upload, no verdict.
    Transfer,
    /// The device answered outside the protocol (unexpected HTTP status, unparsable reply).
    Protocol,
}

impl Refusal {
    /// Every reason.
    pub const ALL: [Refusal; 5] = [
        Refusal::NotInUpdateState,
        Refusal::Auth,
        Refusal::UpdaterError,
        Refusal::Transfer,
        Refusal::Protocol,
    ];

    /// The word used in scenario files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::NotInUpdateState => "not-in-update-state",
            Refusal::Auth => "auth",
            Refusal::UpdaterError => "updater-error",
            Refusal::Transfer => "transfer",
            Refusal::Protocol => "protocol",
        }
    }

    /// The reason with this name.
    pub fn from_name(name: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which state line an `expect_identity` waits for; `None` fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityWant {
    /// `app=`.
    pub app: Option<String>,
    /// `version=`.
    pub version: Option<String>,
    /// `ota=`.
    pub ota: Option<OtaMethod>,
    /// `state=`.
    pub state: Option<FwState>,
}

impl IdentityWant {
    /// Whether `line` is a firmware state line with these values.
    pub fn matches(&self, line: &str) -> bool {
        let Ok(parsed) = firmware::behaviour().parse_state_line(line) else {
            return false;
        };
        let field = |key| Identity::field(parsed.identity, key);
        self.app.as_deref().is_none_or(|a| field("app") == Some(a))
            && self
                .version
                .as_deref()
                .is_none_or(|v| field("version") == Some(v))
            && self.ota.is_none_or(|o| field("ota") == Some(o.name()))
            && self.state.is_none_or(|s| s == parsed.state)
    }
}

impl fmt::Display for IdentityWant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words = Vec::new();
        if let Some(a) = &self.app {
            words.push(format!("app={a}"));
        }
        if let Some(v) = &self.version {
            words.push(format!("version={v}"));
        }
        if let Some(o) = self.ota {
            words.push(format!("ota={o}"));
        }
        if let Some(s) = self.state {
            words.push(format!("state={s}"));
        }
        if words.is_empty() {
            f.write_str("any state line")
        } else {
            write!(f, "state line with {}", words.join(" "))
        }
    }
}

/// What a line wait looks for in the capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineMatcher {
    /// A line containing this text.
    Contains(String),
    /// A firmware state line (`HILFW app=.. version=.. ota=.. state=..`) with these values.
    StateLine(IdentityWant),
}

impl LineMatcher {
    /// Whether `line` (without its line end) is what the step waits for.
    pub fn matches(&self, line: &str) -> bool {
        match self {
            LineMatcher::Contains(text) => line.contains(text.as_str()),
            LineMatcher::StateLine(want) => want.matches(line),
        }
    }

    /// Whether `line` is worth reporting when the wait times out: for a state line wait, any
    /// state line (so the report can say "saw version=1.0.0 instead"); nothing for `Contains`.
    pub fn is_candidate(&self, line: &str) -> bool {
        match self {
            LineMatcher::Contains(_) => false,
            LineMatcher::StateLine(_) => firmware::behaviour().parse_state_line(line).is_ok(),
        }
    }
}

impl fmt::Display for LineMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineMatcher::Contains(text) => write!(f, "a line containing `{text}`"),
            LineMatcher::StateLine(want) => write!(f, "{want}"),
        }
    }
}

/// An OTA upload as a step asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtaStep {
    /// ArduinoOTA (espota) or the HTTP update server.
    pub method: OtaMethod,
    /// The image to upload (resolved, checked to exist).
    pub image: PathBuf,
    /// The image path as the file wrote it (after substitution), for reports.
    pub image_display: String,
    /// Environment variable holding the password; `None` uploads without one.
    pub password_env: Option<String>,
    /// A second uploader that starts while this upload runs (`ota` steps only).
    pub second: Option<SecondUpload>,
}

/// `ota.second`: another uploader, started once the step's own upload is under way (its first
/// image bytes have gone out). The step passes when the first upload is accepted and the
/// second is not: refused, or kept waiting until the board restarted into the first image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondUpload {
    /// Its image (resolved; not linted: it may be anything an uploader sends).
    pub image: PathBuf,
    /// The path as written, for reports.
    pub image_display: String,
    /// Environment variable holding its password; `None` uploads without one.
    pub password_env: Option<String>,
    /// The local address it uploads from (another host, as far as the board can tell);
    /// `None`: the address the OS picks, as for the first.
    pub from: Option<std::net::IpAddr>,
}

/// A serial flash as a step asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashStep {
    /// The image, written at 0x0 (resolved, checked to exist).
    pub image: PathBuf,
    /// The image path as the file wrote it, for reports.
    pub image_display: String,
    /// Power-cycle with GPIO0 released afterwards (the remedy for failure mode A). `false`
    /// leaves the board as esptool's `--after soft-reset` does: running, straps latched in
    /// download mode.
    pub power_cycle_after: bool,
    /// Flash even though the image lint refuses it for the board.
    pub force: bool,
}

/// One validated step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The step's `label`, if any.
    pub label: Option<String>,
    /// Line of the step in the scenario file.
    pub line: usize,
    /// What it does.
    pub kind: StepKind,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    /// Switch or cycle the supply.
    Power(PowerAction),
    /// Hold the button (GPIO0) this long, then release it.
    Button {
        /// How long it is held.
        hold: Duration,
    },
    /// Write an image over the serial ROM loader.
    Flash(FlashStep),
    /// Wait for a ROM banner followed by the app's state line.
    WaitBoot {
        /// Device time to wait.
        timeout: Duration,
    },
    /// Wait for a line in the capture.
    ExpectLine {
        /// What the line must contain.
        matcher: LineMatcher,
        /// Device time to wait.
        timeout: Duration,
    },
    /// Wait for a state line with given identity values.
    ExpectIdentity {
        /// The state line wanted.
        matcher: LineMatcher,
        /// Device time to wait.
        timeout: Duration,
    },
    /// Long press (firmware `button.long_press_ms` + [`LONG_PRESS_MARGIN`]), then expect
    /// `state=UPDATE`.
    EnterUpdate {
        /// How long the button is held.
        hold: Duration,
        /// Device time to wait for the state line after releasing it.
        timeout: Duration,
    },
    /// Upload an image; passes when the device accepts it.
    Ota(OtaStep),
    /// Upload an image; passes when the device refuses it for `reason`.
    ExpectOtaRefused {
        /// The upload.
        ota: OtaStep,
        /// The expected reason.
        reason: Refusal,
        /// For `updater-error`: the expected `ERROR[n]` code.
        code: Option<u8>,
    },
    /// Lint an image against the board; passes when the lint refuses it.
    ExpectLintRefusal {
        /// The image (resolved).
        image: PathBuf,
        /// The path as written.
        image_display: String,
        /// The lint that must be among the errors (any error if `None`).
        lint: Option<LintId>,
    },
    /// Triage the capture (from the start of the labelled step, or all of it so far).
    ExpectTriage {
        /// The class expected.
        class: Class,
        /// Label of the step from whose start the capture is triaged.
        since: Option<String>,
    },
    /// Let device time pass.
    Wait(Duration),
    /// Run the inner steps `times` times; stops at the first failure.
    Repeat {
        /// How often.
        times: u32,
        /// The steps of one iteration.
        steps: Vec<Step>,
    },
}

impl StepKind {
    /// The step kind's key in scenario files.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Power(_) => "power",
            StepKind::Button { .. } => "button",
            StepKind::Flash(_) => "flash",
            StepKind::WaitBoot { .. } => "wait_boot",
            StepKind::ExpectLine { .. } => "expect_line",
            StepKind::ExpectIdentity { .. } => "expect_identity",
            StepKind::EnterUpdate { .. } => "enter_update",
            StepKind::Ota(_) => "ota",
            StepKind::ExpectOtaRefused { .. } => "expect_ota_refused",
            StepKind::ExpectLintRefusal { .. } => "expect_lint_refusal",
            StepKind::ExpectTriage { .. } => "expect_triage",
            StepKind::Wait(_) => "wait",
            StepKind::Repeat { .. } => "repeat",
        }
    }
}

fn dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl fmt::Display for StepKind {
    /// One line for logs and reports: `flash fixtures/images/x.bin (no power cycle after)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepKind::Power(a) => write!(f, "power {}", a.name()),
            StepKind::Button { hold } => write!(f, "button hold {}", dur(*hold)),
            StepKind::Flash(s) => {
                write!(f, "serial flash {}", s.image_display)?;
                if !s.power_cycle_after {
                    f.write_str(" (no power cycle after)")?;
                }
                if s.force {
                    f.write_str(" (forced past the lint)")?;
                }
                Ok(())
            }
            StepKind::WaitBoot { timeout } => write!(f, "wait for a boot ({})", dur(*timeout)),
            StepKind::ExpectLine { matcher, timeout }
            | StepKind::ExpectIdentity { matcher, timeout } => {
                write!(f, "expect {matcher} ({})", dur(*timeout))
            }
            StepKind::EnterUpdate { hold, .. } => {
                write!(f, "enter UPDATE (hold the button {})", dur(*hold))
            }
            StepKind::Ota(o) => {
                write!(f, "OTA {} {}", o.method, o.image_display)?;
                if let Some(second) = &o.second {
                    write!(f, " while a second uploader sends {}", second.image_display)?;
                    if let Some(from) = second.from {
                        write!(f, " from {from}")?;
                    }
                }
                Ok(())
            }
            StepKind::ExpectOtaRefused { ota, reason, code } => {
                write!(
                    f,
                    "expect OTA {} {} refused: {reason}",
                    ota.method, ota.image_display
                )?;
                if let Some(c) = code {
                    write!(f, " ERROR[{c}]")?;
                }
                Ok(())
            }
            StepKind::ExpectLintRefusal {
                image_display,
                lint,
                ..
            } => {
                write!(f, "expect the lint to refuse {image_display}")?;
                if let Some(l) = lint {
                    write!(f, " ({})", l.name())?;
                }
                Ok(())
            }
            StepKind::ExpectTriage { class, since } => {
                write!(f, "expect triage {class}")?;
                if let Some(s) = since {
                    write!(f, " since `{s}`")?;
                }
                Ok(())
            }
            StepKind::Wait(d) => write!(f, "wait {}", dur(*d)),
            StepKind::Repeat { times, steps } => {
                write!(f, "repeat {times} times ({} steps)", steps.len())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn press_constants_fit_the_firmware_thresholds() {
        let b = &firmware::behaviour().button;
        assert!(
            b.debounce < SHORT_PRESS,
            "a short press must outlast the debounce"
        );
        assert!(
            SHORT_PRESS * 4 < b.long_press,
            "a short press must stay far from a long press"
        );
        let hold = b.long_press + LONG_PRESS_MARGIN;
        assert!(hold < firmware::behaviour().update.timeout);
    }

    #[test]
    fn identity_matcher_reads_state_lines() {
        let b = firmware::behaviour();
        let line = b.state_line("2.0.0", OtaMethod::WebServer, FwState::Run);
        let want = IdentityWant {
            version: Some("2.0.0".into()),
            state: Some(FwState::Run),
            ..Default::default()
        };
        assert!(want.matches(&line));
        assert!(want.matches(&format!("{line}\r")));
        let old = b.state_line("1.0.0", OtaMethod::WebServer, FwState::Run);
        assert!(!want.matches(&old));
        let update = b.state_line("2.0.0", OtaMethod::WebServer, FwState::Update);
        assert!(!want.matches(&update));
        let m = LineMatcher::StateLine(want);
        assert!(m.is_candidate(&old));
        assert!(!m.is_candidate("WiFi connected ip=10.0.0.2"));
        assert_eq!(m.to_string(), "state line with version=2.0.0 state=RUN");
    }

    #[test]
    fn refusal_names_round_trip() {
        for r in Refusal::ALL {
            assert_eq!(Refusal::from_name(r.name()), Some(r));
        }
        assert_eq!(Refusal::from_name("busy"), None);
    }
}
