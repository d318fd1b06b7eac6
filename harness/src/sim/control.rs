//! The control channel: what a rig would do with relays and transistors, as text lines.
//!
//! Grammar: one command per line, `verb [argument…]`, words separated by spaces, case-insensitive.
//! Every command gets exactly one answer line: `ok`, `ok <key=value …>` or `error: <reason>`.
//! Adding a command (fault knobs, say) means adding a [`ControlCommand`] variant, a line in
//! [`parse`] and its handling in the chip thread; the answer format stays the same.
//!
//! | line | effect |
//! |---|---|
//! | `power on` / `power off` / `power cycle` | switch the board's supply; `on` when already on changes nothing |
//! | `button down` / `button up` | hold or release the button on GPIO0 (the boot strap) |
//! | `reset` | pulse RST/EN (an external reset: straps sampled, rst cause 2) |
//! | `status` | `ok power=on button=up boot_mode=1,6 rst_cause=1 state=rom-download soft_started=no uart_tx=74880 uart_rx=auto rtc_cmd=no` |
//! | `fault power-cut-during-copy N` | cut the power when eboot's copy has copied N sectors (0 = before the first erase); stays armed |
//! | `fault power-cut-during-copy N erased` | the same, but after sector N was erased and before it is written |
//! | `fault power-cut-during-flash N` | cut the power when the ROM loader (or a stub) has written N flash data blocks, before its reply to the Nth leaves the UART; 0 = right after FLASH_BEGIN's erase; fires once |
//! | `fault power-cut-during-ota N` | cut the power once the firmware's Updater has been handed N bytes of an OTA upload (the write of the block that reaches N is done, its answer is lost); fires once |
//! | `fault ota-reset N` | the next OTA upload's TCP connection is reset (RST) by the board's network side once N bytes of upload data have arrived; the firmware sees a lost connection; fires once |
//! | `fault rom-silent` | the ROM's download loop never answers (no SYNC reply, nothing) until `fault clear` |
//! | `fault app-silent` | every app the ROM or eboot starts prints nothing (ROM and eboot lines still come; the app still runs: button, OTA) until `fault clear` |
//! | `fault clear` | no fault knob armed (a pulled cable stays pulled) |
//! | `port unplug` | pull the serial cable: the stable port name goes away and the pty is closed, so a client's open port sees a hangup; the board's output until `port plug` reaches no port (and is not in the TX log) |
//! | `port plug` | plug it back: a new pty behind the same stable name (the `port:` endpoint) |
//!
//! Fault knobs are for tests of the harness (see harness/tests/fault_matrix.rs): each models one
//! thing that goes wrong on a bench (a brown-out at a given moment, a dead ROM, a hung app, a
//! flaky Wi-Fi link, a USB adapter pulled out). The answer to a `port` command comes once
//! everything the board sent before it is on the pty, like a power command.
//!
//! `state` is one of `off`, `rom-download`, `stub`, `ram-code`, `halted`, `eboot-copy`, `app`,
//! `hung`, `restarting`. `rtc_cmd=yes` while a valid eboot command waits in RTC memory. Some
//! states add words at the end:
//!
//! - `faults=a,b` lists the armed knobs (`copy-cut:N`, `copy-cut:N-erased`, `flash-cut:N`,
//!   `ota-cut:N`, `ota-reset:N`, `rom-silent`, `app-silent`) and `port=unplugged` is shown while the
//!   cable is pulled; both only when there is something to say;
//! - `eboot-copy`: `sector=N/M` (N sectors of M copied), e.g.
//!   `... state=eboot-copy ... rtc_cmd=yes sector=3/8`;
//! - `app`: `app=sonoff-ota version=1.0.0 fw_state=RUN relay=off led=on` for the reference
//!   firmware (`fw_state` is `BOOT` before its `setup()`, then `RUN`, `UPDATE` or `HUNG`),
//!   `app=other`, `app=unknown` (no identity
//!   record) or `app=crashing` with `fw_state=-` otherwise.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::SimControl;

/// Where in eboot's copy a power cut is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyCut {
    /// Sectors completely copied before the cut.
    pub sectors: u32,
    /// Also erase the next sector before the cut (it is left blank).
    pub erased: bool,
}

/// A fault knob other than the eboot copy cut (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Cut the power after this many flash data blocks written by the ROM loader or a stub.
    PowerCutDuringFlash(u32),
    /// Cut the power once the Updater has been handed this many bytes of an OTA upload.
    PowerCutDuringOta(u64),
    /// Reset the next OTA upload's TCP connection after this many bytes of upload data.
    OtaReset(u64),
    /// The ROM download loop never answers.
    RomSilent,
    /// Apps print nothing.
    AppSilent,
}

/// A control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlCommand {
    /// Switch power on.
    PowerOn,
    /// Switch power off.
    PowerOff,
    /// Switch power off and on again.
    PowerCycle,
    /// Press (`true`) or release the GPIO0 button.
    Button(bool),
    /// Pulse the reset pin.
    Reset,
    /// Report the chip's state.
    Status,
    /// Arm (or with `None` disarm) a power cut during eboot's copy.
    PowerCutDuringCopy(Option<CopyCut>),
    /// Arm another fault knob.
    Fault(Fault),
    /// Disarm every fault knob.
    ClearFaults,
    /// Pull (`false`) or plug (`true`) the serial cable.
    Port(bool),
}

/// The answer to a control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done; optional `key=value` details.
    Ok(Option<String>),
    /// Not done, and why.
    Error(String),
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Ok(None) => f.write_str("ok"),
            Reply::Ok(Some(detail)) => write!(f, "ok {detail}"),
            Reply::Error(reason) => write!(f, "error: {reason}"),
        }
    }
}

const USAGE: &str = "power on|off|cycle, button down|up, reset, status, \
                     fault power-cut-during-copy N [erased], fault power-cut-during-flash N, \
                     fault power-cut-during-ota N, fault ota-reset N, fault rom-silent, \
                     fault app-silent, fault clear, port unplug|plug";

fn number<T: std::str::FromStr>(word: &str, what: &str) -> Result<T, String> {
    word.parse()
        .map_err(|_| format!("bad {what} `{word}` (expected a number, e.g. 3)"))
}

/// Parses one control line.
pub fn parse(line: &str) -> Result<ControlCommand, String> {
    let words: Vec<String> = line
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["power", "on"] => Ok(ControlCommand::PowerOn),
        ["power", "off"] => Ok(ControlCommand::PowerOff),
        ["power", "cycle"] => Ok(ControlCommand::PowerCycle),
        ["button", "down"] => Ok(ControlCommand::Button(true)),
        ["button", "up"] => Ok(ControlCommand::Button(false)),
        ["reset"] => Ok(ControlCommand::Reset),
        ["status"] => Ok(ControlCommand::Status),
        ["fault", "clear"] => Ok(ControlCommand::ClearFaults),
        ["fault", "power-cut-during-flash", n] => Ok(ControlCommand::Fault(
            Fault::PowerCutDuringFlash(number(n, "block count")?),
        )),
        ["fault", "power-cut-during-ota", n] => Ok(ControlCommand::Fault(
            Fault::PowerCutDuringOta(number(n, "byte count")?),
        )),
        ["fault", "ota-reset", n] => Ok(ControlCommand::Fault(Fault::OtaReset(number(
            n,
            "byte count",
        )?))),
        ["fault", "rom-silent"] => Ok(ControlCommand::Fault(Fault::RomSilent)),
        ["fault", "app-silent"] => Ok(ControlCommand::Fault(Fault::AppSilent)),
        ["port", "unplug"] => Ok(ControlCommand::Port(false)),
        ["port", "plug"] => Ok(ControlCommand::Port(true)),
        ["fault", "power-cut-during-copy", n, rest @ ..] if rest.len() <= 1 => {
            let sectors = n
                .parse()
                .map_err(|_| format!("bad sector count `{n}` (expected a number, e.g. 3)"))?;
            let erased = match rest {
                [] => false,
                ["erased"] => true,
                [other] => {
                    return Err(format!(
                        "bad argument `{other}` after the sector count (expected `erased`)"
                    ));
                }
                _ => unreachable!(),
            };
            Ok(ControlCommand::PowerCutDuringCopy(Some(CopyCut {
                sectors,
                erased,
            })))
        }
        [] => Err(format!("empty command (expected {USAGE})")),
        ["power" | "button" | "fault" | "port", rest @ ..] => Err(format!(
            "bad argument `{}` for `{}` (expected {USAGE})",
            rest.join(" "),
            words[0]
        )),
        _ => Err(format!(
            "unknown command `{}` (expected {USAGE})",
            line.trim()
        )),
    }
}

/// Serves the control protocol on `listener` until `stop` is set; one thread per connection.
pub(crate) fn serve(listener: UnixListener, control: SimControl, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(50u16)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("control socket poll failed: {e}");
                return;
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let control = control.clone();
                let stop = Arc::clone(&stop);
                let spawned = std::thread::Builder::new()
                    .name("sim-control-conn".into())
                    .spawn(move || serve_connection(stream, control, stop));
                if let Err(e) = spawned {
                    tracing::error!("cannot start a control connection thread: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::warn!("control socket accept failed: {e}"),
        }
    }
}

fn serve_connection(stream: UnixStream, control: SimControl, stop: Arc<AtomicBool>) {
    // A read timeout lets the thread notice a shutdown while a client idles.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                let answer = control.send_line(&line);
                line.clear();
                if writeln!(writer, "{answer}")
                    .and_then(|()| writer.flush())
                    .is_err()
                {
                    return;
                }
            }
            // Partial input read so far stays in `line`; keep waiting for the newline.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(parse("power on"), Ok(ControlCommand::PowerOn));
        assert_eq!(parse("  POWER   Cycle \n"), Ok(ControlCommand::PowerCycle));
        assert_eq!(parse("power off"), Ok(ControlCommand::PowerOff));
        assert_eq!(parse("button down"), Ok(ControlCommand::Button(true)));
        assert_eq!(parse("button up"), Ok(ControlCommand::Button(false)));
        assert_eq!(parse("reset"), Ok(ControlCommand::Reset));
        assert_eq!(parse("status"), Ok(ControlCommand::Status));
        assert_eq!(
            parse("fault power-cut-during-copy 3"),
            Ok(ControlCommand::PowerCutDuringCopy(Some(CopyCut {
                sectors: 3,
                erased: false
            })))
        );
        assert_eq!(
            parse("FAULT power-cut-during-copy 0 erased"),
            Ok(ControlCommand::PowerCutDuringCopy(Some(CopyCut {
                sectors: 0,
                erased: true
            })))
        );
        assert_eq!(parse("fault clear"), Ok(ControlCommand::ClearFaults));
        assert_eq!(
            parse("fault power-cut-during-flash 4"),
            Ok(ControlCommand::Fault(Fault::PowerCutDuringFlash(4)))
        );
        assert_eq!(
            parse("fault power-cut-during-ota 8192"),
            Ok(ControlCommand::Fault(Fault::PowerCutDuringOta(8192)))
        );
        assert_eq!(
            parse("fault ota-reset 3000"),
            Ok(ControlCommand::Fault(Fault::OtaReset(3000)))
        );
        assert_eq!(
            parse("fault rom-silent"),
            Ok(ControlCommand::Fault(Fault::RomSilent))
        );
        assert_eq!(
            parse("fault app-silent"),
            Ok(ControlCommand::Fault(Fault::AppSilent))
        );
        assert_eq!(parse("port unplug"), Ok(ControlCommand::Port(false)));
        assert_eq!(parse("PORT plug"), Ok(ControlCommand::Port(true)));
        assert!(
            parse("fault ota-reset lots")
                .unwrap_err()
                .contains("bad byte count `lots`")
        );
        assert!(
            parse("fault power-cut-during-flash")
                .unwrap_err()
                .contains("bad argument `power-cut-during-flash` for `fault`")
        );
        assert!(
            parse("port wiggle")
                .unwrap_err()
                .contains("bad argument `wiggle` for `port`")
        );
        assert!(
            parse("fault power-cut-during-copy x")
                .unwrap_err()
                .contains("bad sector count `x`")
        );
        assert!(
            parse("fault power-cut-during-copy 1 later")
                .unwrap_err()
                .contains("bad argument `later`")
        );
        assert!(
            parse("fault explode")
                .unwrap_err()
                .contains("bad argument `explode` for `fault`")
        );
    }

    #[test]
    fn bad_lines_name_the_problem() {
        assert!(
            parse("power sideways")
                .unwrap_err()
                .contains("bad argument `sideways` for `power`")
        );
        assert!(
            parse("explode")
                .unwrap_err()
                .contains("unknown command `explode`")
        );
        assert!(parse("").unwrap_err().contains("empty command"));
    }

    #[test]
    fn replies_render_as_lines() {
        assert_eq!(Reply::Ok(None).to_string(), "ok");
        assert_eq!(
            Reply::Ok(Some("power=on".into())).to_string(),
            "ok power=on"
        );
        assert_eq!(Reply::Error("nope".into()).to_string(), "error: nope");
    }
}
