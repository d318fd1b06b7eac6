//! [`RigExecutor`]: the [`Executor`] over a real (or virtual) rig board.
//!
//! L3: drives a [`BoardRig`] (L2) and the OTA clients (L1). Every byte the board sends goes to
//! the capture file the rig writes; line waits read the capture's subscription, triage reads the
//! capture file. Device durations are scaled by the rig's [`TimeScale`](crate::rig::TimeScale).
//!
//! Not supported yet: the `flash` step (there is no ROM loader client in this harness; it fails
//! with [`ExecError::Unsupported`]).

use std::collections::{BTreeSet, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::executor::{
    CaptureMark, ContendedOutcome, ExecError, Executor, FlashOutcome, LineWait, OtaOutcome,
    OtaRequest, ota_outcome,
};
use super::model::Capability;
use super::step::{IdentityWant, LineMatcher, PowerAction};
use crate::bootlog::Event;
use crate::capture::{CaptureEvent, Subscription};
use crate::firmware::{self, OtaMethod};
use crate::flash::{self, AfterFlash};
use crate::ota::{self, Cancel, Password, Payload};
use crate::rig::{self, BoardConfig, BoardRig, OpenOptions, Rig, RigError};
use crate::triage;

/// A line of the capture, joined from the pieces the capture hands out.
#[derive(Debug, Clone)]
struct SeenLine {
    offset: u64,
    end: u64,
    text: String,
    banner: bool,
}

/// The capture's lines as the runner's waits need them: pieces joined, line ends stripped,
/// lines before the latest wait's start mark dropped.
#[derive(Debug, Default)]
struct LineStore {
    /// Complete lines not yet behind every later wait's start mark.
    lines: VecDeque<SeenLine>,
    /// The piece of a line whose rest has not arrived.
    pending: Option<SeenLine>,
}

impl LineStore {
    /// Takes one capture event.
    fn absorb(&mut self, event: CaptureEvent) {
        let CaptureEvent::Line {
            offset,
            text,
            complete,
            events,
            ..
        } = event
        else {
            return;
        };
        let banner = events.iter().any(|e| matches!(e, Event::RomBanner(_)));
        let piece = String::from_utf8_lossy(&text).into_owned();
        let end = offset + text.len() as u64 + u64::from(complete);
        let mut line = match self.pending.take() {
            Some(mut p) if p.end == offset => {
                p.text.push_str(&piece);
                p.end = end;
                p.banner |= banner;
                p
            }
            other => {
                if let Some(p) = other {
                    self.lines.push_back(p);
                }
                SeenLine {
                    offset,
                    end,
                    text: piece,
                    banner,
                }
            }
        };
        if complete {
            line.text
                .truncate(line.text.trim_end_matches(['\r', '\n']).len());
            self.lines.push_back(line);
        } else {
            self.pending = Some(line);
        }
    }

    /// Drops lines before `from`: the runner never searches before its latest start mark.
    fn prune(&mut self, from: CaptureMark) {
        while self.lines.front().is_some_and(|l| l.offset < from.0) {
            self.lines.pop_front();
        }
    }

    /// The last non-blank line at or after `from`, the unfinished one included.
    fn last_line(&self, from: CaptureMark) -> Option<String> {
        self.lines
            .iter()
            .chain(self.pending.iter())
            .rev()
            .find(|l| l.offset >= from.0 && !l.text.trim().is_empty())
            .map(|l| l.text.clone())
    }
}

/// An OTA upload ready to run (see [`RigExecutor::prepare_upload`]).
struct Upload {
    client: Client,
    bytes: Vec<u8>,
    name: String,
}

enum Client {
    Espota(ota::espota::EspotaConfig),
    Http(ota::http::HttpConfig),
}

impl Upload {
    fn run(&self, progress: &mut dyn FnMut(&ota::Event)) -> Result<ota::Delivered, ota::OtaError> {
        let payload = Payload {
            bytes: &self.bytes,
            name: &self.name,
        };
        let cancel = Cancel::new();
        match &self.client {
            Client::Espota(cfg) => ota::espota::upload(cfg, payload, progress, &cancel),
            Client::Http(cfg) => ota::http::upload(cfg, payload, progress, &cancel),
        }
    }
}

/// The [`Executor`] of a rig board.
#[derive(Debug)]
pub struct RigExecutor {
    rig: BoardRig,
    backend: String,
    sub: Subscription,
    store: LineStore,
    capture_file: PathBuf,
}

fn rig_err(action: &'static str) -> impl FnOnce(RigError) -> ExecError {
    move |e| ExecError::Failed {
        action,
        source: Box::new(e),
    }
}

impl RigExecutor {
    /// Opens the rig board `config`, capturing its serial output to `capture_file`.
    pub fn open(config: &BoardConfig, capture_file: &Path) -> Result<RigExecutor, ExecError> {
        let options = OpenOptions {
            capture_file: Some(capture_file.to_path_buf()),
            subscribe: true,
            ..OpenOptions::default()
        };
        let mut rig = rig::open(config, &options).map_err(rig_err("open the rig board"))?;
        let sub = rig
            .take_initial_subscription()
            .expect("OpenOptions::subscribe keeps a subscription");
        Ok(RigExecutor {
            rig,
            backend: config.backend.kind().name().to_string(),
            sub,
            store: LineStore::default(),
            capture_file: capture_file.to_path_buf(),
        })
    }

    fn real(&self, device: Duration) -> Duration {
        self.rig.time_scale().real(device)
    }

    /// Takes every event that has arrived, without waiting.
    fn drain(&mut self) {
        while let Ok(ev) = self.sub.recv_timeout(Duration::ZERO) {
            self.store.absorb(ev);
        }
    }

    /// Waits until `accept` takes a line at or after `from` (it sees every such line once,
    /// in order), or `timeout` (real time) passes. With `partial`, `accept` also sees the
    /// piece of a line whose end has not come (eboot's `@cp:` before the copy's result, a
    /// board that stops mid-line); a piece it takes ends the wait there.
    fn wait_lines(
        &mut self,
        from: CaptureMark,
        timeout: Duration,
        partial: bool,
        mut accept: impl FnMut(&SeenLine) -> bool,
    ) -> Option<SeenLine> {
        self.drain();
        self.store.prune(from);
        let deadline = Instant::now() + timeout;
        let mut next = 0;
        loop {
            while next < self.store.lines.len() {
                let line = &self.store.lines[next];
                next += 1;
                if line.offset >= from.0 && accept(line) {
                    return Some(line.clone());
                }
            }
            if partial
                && let Some(piece) = &self.store.pending
                && piece.offset >= from.0
                && accept(piece)
            {
                return Some(piece.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.sub.recv_timeout(left) {
                Ok(ev) => self.store.absorb(ev),
                Err(_) => return None,
            }
        }
    }

    /// An upload as a client will run it: the image read, the device address resolved, the
    /// client's timeouts scaled to the rig.
    fn prepare_upload(&self, request: &OtaRequest<'_>) -> Result<Upload, ExecError> {
        let device = self.ota_address(request.method)?;
        let bytes = std::fs::read(request.image).map_err(|source| ExecError::Failed {
            action: "read the OTA image",
            source: Box::new(source),
        })?;
        let password = request.password.map(Password::new);
        // The clients' timeouts are espota's and a browser's patience with a real board. A board
        // on a faster clock answers (or stays silent) that much sooner, so the waits shrink with
        // the rig's time scale, but never below a second of real time for the host's own delays.
        let wait = |d: Duration| self.real(d).max(Duration::from_secs(1)).min(d);
        let client = match request.method {
            OtaMethod::Arduino => {
                let mut cfg = ota::espota::EspotaConfig::new(device);
                cfg.password = password;
                cfg.local_ip = request.from;
                let t = &mut cfg.timeouts;
                for d in [
                    &mut t.invite,
                    &mut t.auth,
                    &mut t.connect_back,
                    &mut t.reply,
                    &mut t.result,
                ] {
                    *d = wait(*d);
                }
                Client::Espota(cfg)
            }
            OtaMethod::WebServer => {
                let mut cfg = ota::http::HttpConfig::new(device);
                cfg.password = password;
                cfg.local_ip = request.from;
                let t = &mut cfg.timeouts;
                for d in [&mut t.connect, &mut t.stall, &mut t.response] {
                    *d = wait(*d);
                }
                Client::Http(cfg)
            }
        };
        Ok(Upload {
            client,
            bytes,
            name: request.image.display().to_string(),
        })
    }

    fn ota_address(&self, method: OtaMethod) -> Result<SocketAddr, ExecError> {
        let target = self.rig.ota().ok_or_else(|| ExecError::Unsupported {
            what: "reach the board over the network (no OTA address in the rig)".into(),
        })?;
        let b = firmware::behaviour();
        let port = match method {
            OtaMethod::Arduino => target.espota_port.unwrap_or(b.espota.port),
            OtaMethod::WebServer => target.http_port.unwrap_or(b.http.port),
        };
        let resolve_err = |source: std::io::Error| ExecError::Failed {
            action: "resolve the board's OTA address",
            source: Box::new(source),
        };
        (target.host.as_str(), port)
            .to_socket_addrs()
            .map_err(resolve_err)?
            .next()
            .ok_or_else(|| {
                resolve_err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("`{}` has no address", target.host),
                ))
            })
    }
}

impl Executor for RigExecutor {
    fn backend(&self) -> &str {
        &self.backend
    }

    fn capabilities(&self) -> BTreeSet<Capability> {
        let caps = self.rig.capabilities();
        let mut out = BTreeSet::from([Capability::Serial]);
        if caps.power {
            out.insert(Capability::Power);
        }
        if caps.gpio0 {
            out.insert(Capability::Gpio0);
        }
        if caps.ota {
            out.insert(Capability::OtaArduino);
            out.insert(Capability::OtaWebserver);
        }
        out
    }

    fn mark(&mut self) -> Result<CaptureMark, ExecError> {
        // Everything the board sent before now belongs before the mark, also what is still
        // in the driver's buffer.
        Ok(CaptureMark(self.rig.capture().bytes_caught_up()))
    }

    fn power(&mut self, action: PowerAction) -> Result<(), ExecError> {
        match action {
            PowerAction::On => self.rig.lines().set_power(true),
            PowerAction::Off => self.rig.lines().set_power(false),
            PowerAction::Cycle => self.rig.power_cycle_run(),
        }
        .map_err(rig_err("switch the power"))
    }

    fn button(&mut self, hold: Duration) -> Result<(), ExecError> {
        let real = self.real(hold);
        self.rig
            .lines()
            .set_gpio0(true)
            .map_err(rig_err("press the button"))?;
        std::thread::sleep(real);
        self.rig
            .lines()
            .set_gpio0(false)
            .map_err(rig_err("release the button"))
    }

    fn flash(&mut self, image: &Path, power_cycle_after: bool) -> Result<FlashOutcome, ExecError> {
        let bytes = std::fs::read(image).map_err(|e| ExecError::Failed {
            action: "read the image to flash",
            source: Box::new(e),
        })?;
        let options = flash::FlashOptions {
            // `power_cycle_after = false` starts the app from the ROM loader as esptool's
            // --after soft-reset does, leaving the download-mode strapping latched (the seed's
            // failure mode A). The scenario's own wait_boot/expect_identity steps check the boot,
            // so the flasher does not wait for the identity line itself.
            after: if power_cycle_after {
                AfterFlash::PowerCycle
            } else {
                AfterFlash::SoftReset
            },
            verify: false,
            ..Default::default()
        };
        let mut progress = None;
        match flash::flash_board(&mut self.rig, &bytes, &options, &mut |p| progress = Some(p)) {
            Ok(r) => Ok(FlashOutcome::Written {
                detail: format!(
                    "{} bytes at {:#x} on {}",
                    r.write.bytes, r.write.offset, r.chip.description
                ),
            }),
            Err(e) if e.is_dut_failure() => {
                // Where the write stopped, and what to check: a board that stops answering
                // halfway has lost power or its cable.
                let mut detail = e.to_string();
                match progress {
                    Some(p) => detail.push_str(&format!(
                        " (stopped after {} of {} bytes written)",
                        p.written, p.total
                    )),
                    None if matches!(
                        e,
                        flash::FlashError::Timeout {
                            command: crate::flash::proto::Op::FlashBegin,
                            ..
                        }
                    ) =>
                    {
                        detail.push_str(" (stopped before any byte was written)");
                    }
                    None => {}
                }
                if let Some(help) = miette::Diagnostic::help(&e) {
                    detail.push_str(&format!("; {help}"));
                }
                Ok(FlashOutcome::Failed { detail })
            }
            Err(e) => Err(ExecError::Failed {
                action: "serial flash",
                source: Box::new(e),
            }),
        }
    }

    fn wait_boot(&mut self, from: CaptureMark, timeout: Duration) -> Result<LineWait, ExecError> {
        let real = self.real(timeout);
        let any_state = LineMatcher::StateLine(IdentityWant::default());
        let mut banner: Option<String> = None;
        let found = self.wait_lines(from, real, false, |l| {
            if l.banner {
                banner = Some(l.text.clone());
                false
            } else {
                banner.is_some() && any_state.matches(&l.text)
            }
        });
        Ok(match found {
            // The mark stays at the start of the state line: the boot is established by it,
            // and the scenario's next expectation (version, state) reads the same line.
            Some(l) => LineWait::Seen {
                line: l.text,
                end: CaptureMark(l.offset),
            },
            None => LineWait::Timeout {
                last_line: self.store.last_line(from),
                last_candidate: banner,
            },
        })
    }

    fn wait_line(
        &mut self,
        from: CaptureMark,
        matcher: &LineMatcher,
        timeout: Duration,
    ) -> Result<LineWait, ExecError> {
        let real = self.real(timeout);
        let mut candidate = None;
        let partial = matches!(matcher, LineMatcher::Contains(_));
        let found = self.wait_lines(from, real, partial, |l| {
            if matcher.matches(&l.text) {
                return true;
            }
            if matcher.is_candidate(&l.text) {
                candidate = Some(l.text.clone());
            }
            false
        });
        Ok(match found {
            Some(l) => LineWait::Seen {
                line: l.text,
                end: CaptureMark(l.end),
            },
            None => LineWait::Timeout {
                last_line: self.store.last_line(from),
                last_candidate: candidate,
            },
        })
    }

    fn ota(&mut self, request: &OtaRequest<'_>) -> Result<OtaOutcome, ExecError> {
        let upload = self.prepare_upload(request)?;
        ota_outcome(upload.run(&mut |_| {}))
    }

    fn ota_contended(
        &mut self,
        first: &OtaRequest<'_>,
        second: &OtaRequest<'_>,
    ) -> Result<ContendedOutcome, ExecError> {
        let first = self.prepare_upload(first)?;
        let second = self.prepare_upload(second)?;
        let (go, started) = std::sync::mpsc::channel();
        let (first_result, second_result, started_at) = std::thread::scope(|scope| {
            let other = scope.spawn(move || {
                // Once the first upload has image bytes on the wire, or it has ended.
                let at = started.recv().ok();
                (second.run(&mut |_| {}), at)
            });
            let mut go = Some(go);
            let first_result = first.run(&mut |event| {
                if let ota::Event::Progress { sent, total } = *event
                    && sent > 0
                    && let Some(go) = go.take()
                {
                    let _ = go.send((sent, total));
                }
            });
            drop(go);
            let (second_result, at) = other.join().unwrap_or_else(|panic| {
                std::panic::resume_unwind(panic);
            });
            (first_result, second_result, at)
        });
        Ok(ContendedOutcome {
            first: ota_outcome(first_result)?,
            second: ota_outcome(second_result)?,
            second_started_at: started_at,
        })
    }

    fn wait(&mut self, duration: Duration) -> Result<(), ExecError> {
        std::thread::sleep(self.real(duration));
        Ok(())
    }

    fn triage(&mut self, from: CaptureMark) -> Result<triage::Report, ExecError> {
        let read_err = |source: std::io::Error| ExecError::Failed {
            action: "read the capture file",
            source: Box::new(source),
        };
        let mut file = std::fs::File::open(&self.capture_file).map_err(read_err)?;
        file.seek(SeekFrom::Start(from.0)).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(read_err)?;
        Ok(triage::triage_bytes(&bytes))
    }

    fn capture_path(&self) -> Option<PathBuf> {
        Some(self.capture_file.clone())
    }

    fn step_started(&mut self, id: &str, description: &str) {
        let note = crate::capture::IndexEvent::Note {
            text: format!("step {id}: {description}"),
        };
        if let Err(e) = self.rig.capture().note(note) {
            tracing::warn!("capture note: {e}");
        }
    }

    fn capture_error(&self) -> Option<String> {
        // A write failure, or a gap: what the board sent while its port was gone.
        let capture = self.rig.capture();
        let mut problems: Vec<String> = capture.write_error().into_iter().collect();
        problems.extend(capture.port_losses());
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    fn safe_state(&mut self) -> Result<(), ExecError> {
        self.rig
            .safe_state()
            .map_err(rig_err("apply the safe state"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(offset: u64, text: &str, complete: bool) -> CaptureEvent {
        CaptureEvent::Line {
            offset,
            text: text.as_bytes().to_vec(),
            complete,
            events: {
                let mut events = Vec::new();
                crate::bootlog::parse_line(text.as_bytes(), |e, _| events.push(e));
                events
            },
            baud: 115200,
        }
    }

    #[test]
    fn pieces_join_into_lines_and_old_lines_go() {
        let banner = " ets Jan  8 2013,rst cause:2, boot mode:(3,6)\r";
        let (head, tail) = (
            "HILFW app=sonoff-ota ver",
            "sion=1.0.0 ota=webserver state=RUN\r",
        );
        let b = banner.len() as u64 + 1;
        let mut store = LineStore::default();
        store.absorb(piece(0, banner, true));
        store.absorb(piece(b, head, false));
        assert_eq!(store.last_line(CaptureMark(0)).as_deref(), Some(head));
        store.absorb(piece(b + head.len() as u64, tail, true));
        let texts: Vec<(u64, u64, &str, bool)> = store
            .lines
            .iter()
            .map(|l| (l.offset, l.end, l.text.as_str(), l.banner))
            .collect();
        assert_eq!(
            texts,
            [
                (0, b, " ets Jan  8 2013,rst cause:2, boot mode:(3,6)", true),
                (
                    b,
                    b + (head.len() + tail.len()) as u64 + 1,
                    "HILFW app=sonoff-ota version=1.0.0 ota=webserver state=RUN",
                    false
                ),
            ]
        );
        // A piece that does not continue the pending one starts a new line.
        store.absorb(piece(200, "garbage", false));
        store.absorb(piece(300, "next", true));
        assert_eq!(store.lines.len(), 4);
        store.prune(CaptureMark(b));
        assert_eq!(store.lines.front().unwrap().offset, b);
        assert_eq!(store.last_line(CaptureMark(301)), None);
        assert_eq!(store.last_line(CaptureMark(0)).as_deref(), Some("next"));
    }
}
