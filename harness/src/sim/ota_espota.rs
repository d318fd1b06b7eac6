//! The virtual board's ArduinoOTA: the device side of espota (protocols.md §B,
//! behaviour.toml `[espota]`, core 3.1.2 `ArduinoOTA.cpp`), with the reference sketch's
//! callbacks (`OTA start`, `OTA progress N%`, `OTA end`, `OTA error ...`).
//!
//! - The UDP socket exists only while the firmware has the arduino service started; outside
//!   UPDATE invitations get no answer at all.
//! - Invitations and authentication go through [`OtaListener`]; the reply goes to the sender's
//!   UDP port; after `OK` and `connect_delay_ms` the board connects back by TCP from its own
//!   address to the inviting host's address and the port in the invitation.
//! - While an update runs the sketch's loop is blocked and ArduinoOTA ignores datagrams, so
//!   they are discarded here at the point where the library becomes idle again (after a
//!   refused begin, before a failed update's error goes to the host; a successful one ends in
//!   the restart).
//! - The library's quirks are kept: a failed connect still ends with `Update.end()` (so two
//!   error lines), a receive timeout prints its error and goes on waiting while the host stays
//!   connected, a failed `Update.end()` sends `ERROR[n]: text` on the TCP connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::firmware::{self, OtaMethod};
use crate::ota::proto::{
    Invitation, InviteReply, ListenerAction, OtaListener, format_ack, md5_hex,
};
use crate::ota::updater::UpdaterError;

use super::net::{OtaReply, OtaRequest};
use super::ota_link::{FirmwareLink, Gone, Readiness, Service, TICK, started};

/// WiFiClient's default connect timeout (`ClientContext::connect`, 5000 ms).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(5000);
/// ArduinoOTA waits this long after sending `ERR: ...` (`_runUpdate`).
const BEGIN_ERROR_DELAY: Duration = Duration::from_millis(100);
/// Largest datagram read (invitations are short; the rest is ignored like the device does).
const DATAGRAM: usize = 1500;

/// The ArduinoOTA thread of one board.
pub(crate) struct EspotaServer {
    link: Arc<dyn FirmwareLink>,
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
}

/// The sketch's progress callback state (`static unsigned lastStep`).
#[derive(Debug, Default)]
struct Progress {
    last_step: u64,
}

impl EspotaServer {
    pub(crate) fn new(
        link: Arc<dyn FirmwareLink>,
        addr: SocketAddrV4,
        stop: Arc<AtomicBool>,
    ) -> Self {
        EspotaServer { link, addr, stop }
    }

    /// The thread: follows the service state, answers invitations, runs updates.
    pub(crate) fn run(self) {
        let mut socket: Option<(u64, UdpSocket)> = None;
        let mut listener = OtaListener::new(None);
        let mut inviter: Option<SocketAddr> = None;
        let mut progress = Progress::default();
        let mut restarting: Option<u64> = None;
        let mut bind_failed: Option<u64> = None;
        let epoch = Instant::now();
        let mut buf = [0u8; DATAGRAM];
        while !self.stop.load(Ordering::Relaxed) {
            let state = self.link.net().get();
            let service = started(&*self.link, OtaMethod::Arduino);
            match (&service, &socket) {
                (Some((g, _)), Some((sg, _))) if g == sg => {}
                (Some((g, password)), _) => {
                    // ArduinoOTA.begin(): a new socket; setPassword stores the MD5.
                    socket = None;
                    match bind(self.addr) {
                        Ok(s) => {
                            socket = Some((*g, s));
                            listener = OtaListener::new(
                                password.as_deref().map(|p| md5_hex(p.as_bytes())),
                            );
                            inviter = None;
                            progress = Progress::default();
                        }
                        Err(e) => {
                            if bind_failed != Some(*g) {
                                tracing::error!("ArduinoOTA cannot bind {}: {e}", self.addr);
                                bind_failed = Some(*g);
                            }
                        }
                    }
                }
                // ArduinoOTA.end(): the socket is closed, invitations go unanswered.
                (None, Some(_)) => socket = None,
                (None, None) => {}
            }
            let Some((generation, sock)) = &socket else {
                self.link.net().wait_change(&state, TICK);
                continue;
            };
            let svc = Service {
                link: &*self.link,
                generation: *generation,
                stop: &self.stop,
            };
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    tracing::warn!("ArduinoOTA receive failed: {e}");
                    std::thread::sleep(TICK);
                    continue;
                }
            };
            if restarting == Some(*generation) {
                // Between a successful update and the restart nothing is answered.
                continue;
            }
            let was_waiting = listener.waiting_for_auth();
            let micros = epoch.elapsed().as_micros() as u32;
            let result = match listener.on_datagram(&buf[..n], micros) {
                ListenerAction::Ignore => Ok(()),
                ListenerAction::Challenge { nonce } => {
                    inviter = Some(from);
                    send(sock, &InviteReply::Auth { nonce }.to_datagram(), from);
                    Ok(())
                }
                ListenerAction::AuthFailed => {
                    send(
                        sock,
                        &InviteReply::AuthFailed.to_datagram(),
                        inviter.unwrap_or(from),
                    );
                    print_error(&svc, "auth")
                }
                ListenerAction::Run(invitation) => {
                    if !was_waiting {
                        inviter = Some(from);
                    }
                    let host = inviter.unwrap_or(from);
                    let outcome = self.run_update(&svc, sock, &invitation, host, &mut progress);
                    match outcome {
                        Ok(true) => {
                            restarting = Some(*generation);
                            Ok(())
                        }
                        Ok(false) => Ok(()),
                        Err(gone) => Err(gone),
                    }
                }
            };
            if result.is_err() {
                // The service went away under us; the state check above catches up.
                continue;
            }
        }
    }

    /// `_runUpdate`; `Ok(true)` when the update succeeded and the restart is requested.
    fn run_update(
        &self,
        svc: &Service<'_>,
        sock: &UdpSocket,
        invitation: &Invitation,
        host: SocketAddr,
        progress: &mut Progress,
    ) -> Result<bool, Gone> {
        let b = firmware::behaviour();
        let eol = &b.serial.eol;
        let begin = OtaRequest::Begin {
            size: invitation.size,
            command: invitation.command,
            md5: Some(invitation.md5.clone()),
        };
        if let OtaReply::Err(e) = svc.call(begin)? {
            print_updater_error(svc, "begin", &e)?;
            send(
                sock,
                &InviteReply::Err(e.to_device_error()).to_datagram(),
                host,
            );
            svc.delay(BEGIN_ERROR_DELAY)?;
            drain(sock);
            return Ok(false);
        }
        send(sock, &InviteReply::Ok.to_datagram(), host);
        svc.delay(b.espota.connect_delay)?;
        svc.print(format!("{}{eol}", b.lines.ota_start.render(&[])))?;
        progress.report(svc, 0, invitation.size)?;

        let target = SocketAddr::new(host.ip(), invitation.port);
        let mut client = match connect_from(*self.addr.ip(), target, svc.link.real(CONNECT_TIMEOUT))
        {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::debug!("ArduinoOTA connect to {target} failed: {e}");
                print_error(svc, "connect")?;
                None
            }
        };

        let reset_after = svc.link.net().take_reset();
        let result = self.transfer(svc, client.as_mut(), invitation.size, progress, reset_after);
        let result = result.and_then(|reset| {
            if reset && let Some(stream) = client.take() {
                // `fault ota-reset`: the connection dies with an RST, as when a middlebox or
                // the Wi-Fi link drops it; the library sees a lost client.
                let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            }
            svc.call(OtaRequest::End {
                even_if_remaining: false,
            })
        });
        let reply = match result {
            Ok(reply) => reply,
            Err(Gone) => {
                if let Some(stream) = client {
                    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                }
                return Err(Gone);
            }
        };
        match reply {
            OtaReply::Err(e) => {
                // ArduinoOTA is idle again from here; what came in before was ignored.
                drain(sock);
                print_updater_error(svc, "end", &e)?;
                if let Some(mut stream) = client {
                    let _ = stream.write_all(e.printed().as_bytes());
                    close(stream);
                }
                Ok(false)
            }
            _ => {
                svc.delay(b.espota.before_ok)?;
                if let Some(stream) = client.as_mut() {
                    let _ = stream.write_all(crate::ota::proto::OK.as_bytes());
                }
                svc.delay(b.espota.after_ok)?;
                if let Some(stream) = client {
                    close(stream);
                }
                svc.print(format!("{}{eol}", b.lines.ota_end.render(&[])))?;
                let after_ms =
                    u64::try_from(b.espota.restart_delay.as_millis()).unwrap_or(u64::MAX);
                svc.call(OtaRequest::Restart { after_ms })?;
                Ok(true)
            }
        }
    }

    /// The receive loop: `while (!Update.isFinished() && (client.connected() || available))`.
    /// `Ok(true)`: the connection is to be reset now (`fault ota-reset`, after `reset_after`
    /// bytes of image data).
    fn transfer(
        &self,
        svc: &Service<'_>,
        client: Option<&mut TcpStream>,
        size: u32,
        progress: &mut Progress,
        reset_after: Option<u64>,
    ) -> Result<bool, Gone> {
        let Some(stream) = client else {
            return Ok(false);
        };
        let timeout = firmware::behaviour().espota.receive_timeout;
        let mut total: u32 = 0;
        let mut buf = vec![0u8; 16 * 1024];
        while total < size {
            if reset_after.is_some_and(|limit| u64::from(total) >= limit) {
                return Ok(true);
            }
            if svc.wait_readable(stream, Some(svc.deadline(timeout)))? == Readiness::TimedOut {
                // "Receive Failed": reported, and the loop goes on while the host is connected.
                print_error(svc, "receive")?;
                continue;
            }
            // Update.write(client) reads what is there, never more than what is missing (and,
            // with a reset armed, never past the byte at which the connection dies).
            let mut want = ((size - total) as usize).min(buf.len());
            if let Some(limit) = reset_after {
                want = want.min(usize::try_from(limit - u64::from(total)).unwrap_or(usize::MAX));
            }
            let n = match stream.read(&mut buf[..want]) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Ok(false),
            };
            let written = match svc.call(OtaRequest::Write(buf[..n].to_vec()))? {
                OtaReply::Written(w) => w.min(n),
                _ => 0,
            };
            if written > 0 {
                let _ = stream.write_all(format_ack(written).as_bytes());
                total += written as u32;
                progress.report(svc, total, size)?;
            }
            if written < n {
                // The Updater failed and reset itself: isFinished() is true from now on.
                return Ok(false);
            }
        }
        Ok(false)
    }
}

impl Progress {
    /// The sketch's onProgress: a line at 0 and whenever the 10 % step changes.
    fn report(&mut self, svc: &Service<'_>, done: u32, total: u32) -> Result<(), Gone> {
        let b = firmware::behaviour();
        let step_size = u64::from(b.lines.progress_step_percent);
        let percent = if total == 0 {
            0
        } else {
            u64::from(done) * 100 / u64::from(total)
        };
        let step = percent / step_size * step_size;
        if done == 0 || step != self.last_step {
            self.last_step = step;
            let line = b
                .lines
                .ota_progress
                .render(&[("percent", &step.to_string())]);
            svc.print(format!("{line}{}", b.serial.eol))?;
        }
        Ok(())
    }
}

/// The sketch's onError for auth, connect and receive errors.
fn print_error(svc: &Service<'_>, kind: &str) -> Result<(), Gone> {
    let b = firmware::behaviour();
    let line = b.lines.ota_error.render(&[("kind", kind)]);
    svc.print(format!("{line}{}", b.serial.eol))
}

/// The sketch's onError for begin and end errors, with the Updater's error.
fn print_updater_error(svc: &Service<'_>, kind: &str, error: &UpdaterError) -> Result<(), Gone> {
    let b = firmware::behaviour();
    let line = b.lines.ota_error_updater.render(&[
        ("kind", kind),
        ("code", &error.code().to_string()),
        ("text", &error.to_string()),
    ]);
    svc.print(format!("{line}{}", b.serial.eol))
}

fn send(sock: &UdpSocket, datagram: &[u8], to: SocketAddr) {
    if let Err(e) = sock.send_to(datagram, to) {
        tracing::debug!("ArduinoOTA reply to {to} failed: {e}");
    }
}

/// Discards datagrams that arrived while the update ran (ArduinoOTA ignored them then).
fn drain(sock: &UdpSocket) {
    let mut buf = [0u8; DATAGRAM];
    if sock.set_nonblocking(true).is_ok() {
        while sock.recv_from(&mut buf).is_ok() {}
        let _ = sock.set_nonblocking(false);
    }
}

fn bind(addr: SocketAddrV4) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(addr)?;
    sock.set_read_timeout(Some(TICK))?;
    Ok(sock)
}

/// A TCP connection from the board's own address (bound before connecting, so the host sees
/// the board's address as the peer, as espota.py expects).
fn connect_from(
    board: std::net::Ipv4Addr,
    target: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::from(SocketAddrV4::new(board, 0)).into())?;
    socket.connect_timeout(&target.into(), timeout.max(Duration::from_millis(1)))?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket.into())
}

/// `client.stop()`: FIN after what was written; unread input discarded first.
fn close(stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    if stream.set_nonblocking(true).is_ok() {
        let mut sink = [0u8; 4096];
        while matches!((&stream).read(&mut sink), Ok(n) if n > 0) {}
    }
}
