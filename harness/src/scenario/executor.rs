//! The seam between the runner and a rig: [`Executor`], one method per device action.
//!
//! The runner decides *what* to do and whether the board passed; an executor only *does* it on
//! one board and reports what it saw. A device misbehaving (no boot, OTA refused, a boot loop in
//! the capture) is an observation returned as `Ok`; only the rig or the harness failing (a port
//! vanished, a socket cannot be bound) is an [`ExecError`].
//!
//! Durations passed in are device time; an executor scales them to its rig (the virtual board
//! may run faster than real time).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::model::Capability;
use super::step::{LineMatcher, PowerAction, Refusal};
use crate::firmware::OtaMethod;
use crate::ota::{Delivered, OtaError};
use crate::triage;

/// A position in the board's serial capture: bytes captured before it.
///
/// The runner takes a mark before each action and searches for lines from there, so output
/// that arrives while an action is still running (the state line printed while the button is
/// held, the restart after an OTA) is not missed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct CaptureMark(pub u64);

/// The result of waiting for a line (or a boot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineWait {
    /// The line was seen.
    Seen {
        /// The line, without its line end.
        line: String,
        /// The mark just after it; the next wait starts here.
        end: CaptureMark,
    },
    /// The timeout passed first.
    Timeout {
        /// The last complete line captured after the start mark, if any.
        last_line: Option<String>,
        /// The last line [`LineMatcher::is_candidate`] accepted (for a state line wait: the
        /// last state line seen), if any.
        last_candidate: Option<String>,
    },
}

/// The result of a serial flash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlashOutcome {
    /// The image was written (and verified, where the flasher verifies).
    Written {
        /// What the flasher reported, for the report.
        detail: String,
    },
    /// The device took part but the write did not succeed (bad verify, ROM error status).
    Failed {
        /// What went wrong.
        detail: String,
    },
}

/// An OTA upload to perform.
#[derive(Debug, Clone, Copy)]
pub struct OtaRequest<'a> {
    /// espota or HTTP.
    pub method: OtaMethod,
    /// The image file.
    pub image: &'a Path,
    /// The password, when the step names a `password_env`.
    pub password: Option<&'a str>,
    /// The local address to upload from; `None`: the one the OS picks.
    pub from: Option<std::net::IpAddr>,
}

/// What two overlapping uploads came to ([`Executor::ota_contended`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContendedOutcome {
    /// The upload that started first.
    pub first: OtaOutcome,
    /// The one started while the first was under way.
    pub second: OtaOutcome,
    /// Bytes of the first image sent when the second uploader started (and its total).
    pub second_started_at: Option<(u64, u64)>,
}

/// What the device did with an OTA upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtaOutcome {
    /// The device accepted the image (espota `OK`, HTTP `Update Success! Rebooting...`).
    Accepted {
        /// The device's answer.
        detail: String,
    },
    /// The device refused or did not take it.
    Refused {
        /// Why.
        reason: Refusal,
        /// The Updater's `ERROR[n]`, when it gave one.
        code: Option<u8>,
        /// The device's answer, or what the client saw (`connection refused`).
        detail: String,
    },
}

/// A failure of the rig or the harness while performing an action (not of the board).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ExecError {
    /// The rig cannot do this at all.
    #[error("the rig cannot {what}")]
    #[diagnostic(
        code(harness::exec::unsupported),
        help("list the capability in the scenario's `requires`, so rigs without it skip it")
    )]
    Unsupported {
        /// The action.
        what: String,
    },
    /// A lower layer (rig, capture, flash or OTA client) failed.
    #[error("{action} failed")]
    #[diagnostic(code(harness::exec::failed))]
    Failed {
        /// The action (`power cycle`, `serial flash`, ...).
        action: &'static str,
        /// The lower layer's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A [`FakeExecutor`](super::FakeExecutor) script does not fit the call made.
    #[error("fake executor script: {problem}")]
    #[diagnostic(code(harness::exec::script))]
    Script {
        /// What does not fit.
        problem: String,
    },
}

/// Performs the runner's actions on one board.
///
/// Step kinds map to methods as follows: `power` → [`power`](Self::power), `button` →
/// [`button`](Self::button), `flash` → [`flash`](Self::flash), `wait_boot` →
/// [`wait_boot`](Self::wait_boot), `expect_line` and `expect_identity` →
/// [`wait_line`](Self::wait_line), `enter_update` → `button` then `wait_line`, `ota` and
/// `expect_ota_refused` → [`ota`](Self::ota), `expect_triage` → [`triage`](Self::triage),
/// `wait` → [`wait`](Self::wait). `repeat` and `expect_lint_refusal` need no device.
pub trait Executor {
    /// The rig backend, for reports (`virtual`, `usb-serial`, `gpio`, `fake`).
    fn backend(&self) -> &str;

    /// What this rig can do for this board.
    fn capabilities(&self) -> BTreeSet<Capability>;

    /// The current end of the capture.
    fn mark(&mut self) -> Result<CaptureMark, ExecError>;

    /// Switches or cycles the board's supply.
    fn power(&mut self, action: PowerAction) -> Result<(), ExecError>;

    /// Holds the button (GPIO0 low) for `hold`, then releases it.
    fn button(&mut self, hold: Duration) -> Result<(), ExecError>;

    /// Writes `image` at 0x0 through the ROM loader (entering it by GPIO0 + power), then
    /// power-cycles with GPIO0 released if `power_cycle_after`; otherwise leaves the board
    /// running the way esptool's `--after soft-reset` does.
    fn flash(&mut self, image: &Path, power_cycle_after: bool) -> Result<FlashOutcome, ExecError>;

    /// Waits, from `from`, for a ROM banner followed by the app's state line. On a timeout,
    /// `last_candidate` is the last ROM banner seen (so the report can tell "no boot at all"
    /// from "booted, but the app said nothing").
    fn wait_boot(&mut self, from: CaptureMark, timeout: Duration) -> Result<LineWait, ExecError>;

    /// Waits, from `from`, for a line `matcher` accepts.
    fn wait_line(
        &mut self,
        from: CaptureMark,
        matcher: &LineMatcher,
        timeout: Duration,
    ) -> Result<LineWait, ExecError>;

    /// Uploads an image over the air and reports what the device answered.
    fn ota(&mut self, request: &OtaRequest<'_>) -> Result<OtaOutcome, ExecError>;

    /// Uploads `first`, and `second` from another uploader once the first is under way (its
    /// first image bytes sent); reports what the device answered each.
    fn ota_contended(
        &mut self,
        first: &OtaRequest<'_>,
        second: &OtaRequest<'_>,
    ) -> Result<ContendedOutcome, ExecError> {
        let _ = (first, second);
        Err(ExecError::Unsupported {
            what: "run two OTA uploads at once".into(),
        })
    }

    /// Lets `duration` of device time pass (capturing meanwhile).
    fn wait(&mut self, duration: Duration) -> Result<(), ExecError>;

    /// Triages the capture from `from` to now (`CaptureMark(0)`: all of it). An executor's
    /// capture starts when it is made, so all of it belongs to one run.
    fn triage(&mut self, from: CaptureMark) -> Result<triage::Report, ExecError>;

    /// The runner starts step `id` (`3`, `7.2.1`); an executor with a capture notes it there,
    /// so the capture shows where each step began.
    fn step_started(&mut self, id: &str, description: &str) {
        let _ = (id, description);
    }

    /// The file the raw capture is written to, if there is one.
    fn capture_path(&self) -> Option<PathBuf>;

    /// Why the capture file is missing bytes (a full disk, a write error, a serial port that
    /// went away for a while), if it is. The runner asks at the end of every run; a run with an
    /// incomplete capture is a harness error and its run folder is never marked complete.
    fn capture_error(&self) -> Option<String> {
        None
    }

    /// Leaves the board safe: button released, power as the rig file wants it at rest. The
    /// runner calls it at the end of every run, whatever happened.
    fn safe_state(&mut self) -> Result<(), ExecError>;
}

/// What an OTA client's result means to a scenario: the device's answers (accepted, refused,
/// silent, cut off) become an [`OtaOutcome`]; what kept the harness from trying (local sockets,
/// name lookup, cancel) becomes an [`ExecError`].
///
/// A device that asks for a password the scenario did not give counts as an `auth` refusal:
/// from the scenario's side the device refused the upload for want of credentials.
pub fn ota_outcome(result: Result<Delivered, OtaError>) -> Result<OtaOutcome, ExecError> {
    let e = match result {
        Ok(d) => {
            return Ok(OtaOutcome::Accepted {
                detail: d.reply.trim().to_string(),
            });
        }
        Err(e) => e,
    };
    let reason = match &e {
        OtaError::NoAnswer { .. }
        | OtaError::ConnectionRefused { .. }
        | OtaError::NotFound { .. } => Refusal::NotInUpdateState,
        OtaError::PasswordRequired { .. }
        | OtaError::AuthFailed { .. }
        | OtaError::NoAuthAnswer { .. } => Refusal::Auth,
        OtaError::Updater { .. } => Refusal::UpdaterError,
        OtaError::HttpStatus { .. } | OtaError::BadResponse { .. } | OtaError::BadReply { .. } => {
            Refusal::Protocol
        }
        e if e.is_device_failure() => Refusal::Transfer,
        _ => {
            return Err(ExecError::Failed {
                action: "OTA upload",
                source: Box::new(e),
            });
        }
    };
    let mut detail = e.to_string();
    let mut cur = std::error::Error::source(&e);
    while let Some(c) = cur {
        detail.push_str(&format!(": {c}"));
        cur = c.source();
    }
    Ok(OtaOutcome::Refused {
        reason,
        code: e.updater_code(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::ota::updater::DeviceError;

    fn dev() -> SocketAddr {
        "127.0.0.1:8266".parse().unwrap()
    }

    fn refusal(e: OtaError) -> (Refusal, Option<u8>, String) {
        match ota_outcome(Err(e)).unwrap() {
            OtaOutcome::Refused {
                reason,
                code,
                detail,
            } => (reason, code, detail),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn client_results_map_to_refusal_reasons() {
        let accepted = ota_outcome(Ok(Delivered {
            device: dev(),
            bytes: 10,
            elapsed: Duration::from_millis(5),
            reply: "OK\r\n".into(),
            refused: vec![],
        }))
        .unwrap();
        assert_eq!(
            accepted,
            OtaOutcome::Accepted {
                detail: "OK".into()
            }
        );
        let silent = refusal(OtaError::NoAnswer {
            device: dev(),
            attempts: 10,
            waited: Duration::from_secs(10),
            port_unreachable: true,
        });
        assert_eq!(silent.0, Refusal::NotInUpdateState);
        assert!(silent.2.contains("No Answer"), "{}", silent.2);
        let refused = refusal(OtaError::ConnectionRefused {
            device: dev(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        });
        assert_eq!(refused.0, Refusal::NotInUpdateState);
        assert!(
            refused
                .2
                .starts_with("connection to 127.0.0.1:8266 refused: "),
            "{}",
            refused.2
        );
        let auth = refusal(OtaError::PasswordRequired {
            device: dev(),
            method: OtaMethod::Arduino,
        });
        assert_eq!(auth.0, Refusal::Auth);
        let updater = refusal(OtaError::Updater {
            device: dev(),
            phase: crate::ota::Phase::Invitation,
            error: DeviceError {
                code: 11,
                text: "Invalid bootstrapping state, reset ESP8266 before updating".into(),
            },
        });
        assert_eq!((updater.0, updater.1), (Refusal::UpdaterError, Some(11)));
        let cut = refusal(OtaError::UploadCut {
            device: dev(),
            sent: 4096,
            total: 65536,
            source: None,
        });
        assert_eq!(cut.0, Refusal::Transfer);
    }

    #[test]
    fn harness_side_failures_are_errors() {
        let e = ota_outcome(Err(OtaError::Io {
            action: "bind a UDP socket",
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        }))
        .unwrap_err();
        assert!(matches!(
            e,
            ExecError::Failed {
                action: "OTA upload",
                ..
            }
        ));
        assert_eq!(e.to_string(), "OTA upload failed");
        let cancelled = ota_outcome(Err(OtaError::Cancelled { sent: 0, total: 1 }));
        assert!(cancelled.is_err());
    }
}
