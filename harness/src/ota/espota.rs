//! The ArduinoOTA uploader, as tools/espota.py does it (protocols.md §B), over blocking std
//! sockets.
//!
//! 1. Listen on a TCP port of the local address that routes to the device.
//! 2. Send the UDP invitation `0 <port> <size> <md5>\n` to the device (port 8266 on hardware;
//!    the virtual board remaps it) and wait for `OK`, `AUTH <nonce>` or `ERR: ...`; answer a
//!    challenge with the MD5 response.
//! 3. Accept the device's back-connect, only from the device's IP: anyone else is closed and
//!    reported ([`Event::StrangerRefused`]).
//! 4. Send the image in [`HOST_CHUNK_SIZE`] chunks, each followed by a wait for the device's
//!    decimal acknowledgement, then wait for `OK` or `ERROR[n]: text`.
//!
//! The codecs are [`super::proto`]'s; this file only moves bytes and keeps time.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use super::client::{
    Cancel, Delivered, Event, Password, Payload, Waited, WriteEnd, read_some, wait,
    write_all_deadline,
};
use super::error::{OtaError, Phase};
use super::proto::{
    self, AUTH_REPLY_TIMEOUT, AuthRequest, CHUNK_REPLY_TIMEOUT, CONNECT_BACK_TIMEOUT,
    HOST_CHUNK_SIZE, INVITE_REPLY_TIMEOUT, Invitation, InviteReply, MAX_IMAGE_SIZE, RESULT_TIMEOUT,
    ReplyScanner, TransferReply,
};
use super::updater::UpdateCommand;
use crate::firmware::OtaMethod;

/// espota.py sends the invitation up to this many times before it gives up.
///
/// espota.py waits [`INVITE_REPLY_TIMEOUT`] after each; the harness spreads the attempts over
/// one such wait instead, so a device that is not in UPDATE state fails in 10 s, not 100 s.
pub const INVITE_ATTEMPTS: u32 = 10;

/// Largest UDP answer read; the longest real one (`ERR: ERROR[11]: ...`) is about 80 bytes.
const MAX_DATAGRAM: usize = 512;

/// How long each step may take; defaults are espota.py's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspotaTimeouts {
    /// Total wait for an answer to the invitations ("No Answer").
    pub invite: Duration,
    /// Invitations sent within `invite`, evenly spaced (at least 1).
    pub invite_attempts: u32,
    /// Wait for the answer to the authentication.
    pub auth: Duration,
    /// Wait for the device to connect back ("No response from device").
    pub connect_back: Duration,
    /// Wait for an acknowledgement after each chunk (a stall).
    pub reply: Duration,
    /// Wait for `OK` / `ERROR` after the last chunk.
    pub result: Duration,
}

impl Default for EspotaTimeouts {
    fn default() -> Self {
        EspotaTimeouts {
            invite: INVITE_REPLY_TIMEOUT,
            invite_attempts: INVITE_ATTEMPTS,
            auth: AUTH_REPLY_TIMEOUT,
            connect_back: CONNECT_BACK_TIMEOUT,
            reply: CHUNK_REPLY_TIMEOUT,
            result: RESULT_TIMEOUT,
        }
    }
}

impl EspotaTimeouts {
    /// Every wait set to `d` (the CLI's `--timeout`), with espota's number of invitations.
    pub fn all(d: Duration) -> Self {
        EspotaTimeouts {
            invite: d,
            invite_attempts: INVITE_ATTEMPTS,
            auth: d,
            connect_back: d,
            reply: d,
            result: d,
        }
    }
}

/// Where and how to upload.
#[derive(Debug, Clone)]
pub struct EspotaConfig {
    /// The device's ArduinoOTA UDP endpoint (port 8266 on hardware).
    pub device: SocketAddr,
    /// Local address to listen and send from; `None` picks the one the OS routes to the
    /// device through (espota's `-I`).
    pub local_ip: Option<IpAddr>,
    /// Local TCP port for the back-connect; 0 lets the OS choose (espota's `-P`).
    pub local_port: u16,
    /// The OTA password (the firmware's SMN_OTA_PASSWORD), if any.
    pub password: Option<Password>,
    /// Flash (`U_FLASH`) or filesystem (`U_FS`).
    pub command: UpdateCommand,
    /// Step timeouts.
    pub timeouts: EspotaTimeouts,
}

impl EspotaConfig {
    /// A flash update of `device` without password, with espota's timeouts.
    pub fn new(device: SocketAddr) -> Self {
        EspotaConfig {
            device,
            local_ip: None,
            local_port: 0,
            password: None,
            command: UpdateCommand::Flash,
            timeouts: EspotaTimeouts::default(),
        }
    }
}

/// The local address the OS would send from to reach `device` (a connected UDP socket sends
/// nothing, it only makes the kernel pick a route).
pub fn local_ip_for(device: SocketAddr) -> io::Result<IpAddr> {
    let any: IpAddr = match device {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let probe = UdpSocket::bind((any, 0))?;
    probe.connect(device)?;
    Ok(probe.local_addr()?.ip())
}

/// Uploads `payload` to the device; `observe` sees each [`Event`], `cancel` stops it at the
/// next wait slice.
///
/// A `Ok` means the device said `OK`: it staged the image, wrote the eboot command and
/// restarts. Every refusal and silence of the device is an [`OtaError`] whose
/// [`is_device_failure`](OtaError::is_device_failure) is true.
pub fn upload(
    cfg: &EspotaConfig,
    payload: Payload<'_>,
    observe: &mut dyn FnMut(&Event),
    cancel: &Cancel,
) -> Result<Delivered, OtaError> {
    let start = Instant::now();
    let total = payload.bytes.len() as u64;
    let size = u32::try_from(total)
        .ok()
        .filter(|&s| s <= MAX_IMAGE_SIZE)
        .ok_or(OtaError::ImageTooLarge {
            len: total,
            max: u64::from(MAX_IMAGE_SIZE),
        })?;
    let device = cfg.device;
    let local_ip = match cfg.local_ip {
        Some(ip) => ip,
        None => {
            local_ip_for(device).map_err(OtaError::io("find the local address to the device"))?
        }
    };
    let listener = TcpListener::bind((local_ip, cfg.local_port))
        .map_err(OtaError::io("listen for the device's back-connect"))?;
    let listen = listener
        .local_addr()
        .map_err(OtaError::io("read the listen address"))?;
    let udp = UdpSocket::bind((local_ip, 0)).map_err(OtaError::io("bind a UDP socket"))?;
    // Connected: only the device's datagrams arrive, and an ICMP port-unreachable shows up as
    // ConnectionRefused instead of silence.
    udp.connect(device)
        .map_err(OtaError::io("address the device over UDP"))?;

    let md5 = proto::md5_hex(payload.bytes);
    let invitation = Invitation {
        command: cfg.command,
        port: listen.port(),
        size,
        md5: md5.clone(),
    };
    let reply = invite(&udp, &invitation, cfg, listen, observe, cancel)?;
    match reply {
        InviteReply::Ok => {}
        InviteReply::Auth { nonce } => {
            observe(&Event::Challenged);
            let password = cfg.password.as_ref().ok_or(OtaError::PasswordRequired {
                device,
                method: OtaMethod::Arduino,
            })?;
            // espota.py puts the device address "as given" into the cnonce; the device only
            // checks its length, so the IP is as good as a host name.
            let cnonce = proto::cnonce(payload.name, total, &md5, &device.ip().to_string());
            let auth = AuthRequest::new(password.expose(), &nonce, &cnonce);
            send(&udp, &auth.to_datagram())?;
            match recv_reply(&udp, Instant::now() + cfg.timeouts.auth, cancel)? {
                Received::Reply(InviteReply::Ok) => {}
                Received::Reply(InviteReply::AuthFailed) => {
                    return Err(OtaError::AuthFailed {
                        device,
                        method: OtaMethod::Arduino,
                    });
                }
                Received::Reply(InviteReply::Err(error)) => {
                    return Err(OtaError::Updater {
                        device,
                        phase: Phase::Invitation,
                        error,
                    });
                }
                Received::Reply(InviteReply::Auth { .. }) => {
                    return Err(OtaError::BadReply {
                        device,
                        source: super::CodecError::Reply {
                            got: "a second AUTH challenge".into(),
                        },
                    });
                }
                Received::Bad(source) => return Err(OtaError::BadReply { device, source }),
                Received::Nothing { .. } => {
                    return Err(OtaError::NoAuthAnswer {
                        device,
                        waited: cfg.timeouts.auth,
                    });
                }
                Received::Cancelled => return Err(OtaError::Cancelled { sent: 0, total }),
            }
        }
        InviteReply::Err(error) => {
            return Err(OtaError::Updater {
                device,
                phase: Phase::Invitation,
                error,
            });
        }
        InviteReply::AuthFailed => {
            return Err(OtaError::AuthFailed {
                device,
                method: OtaMethod::Arduino,
            });
        }
    }
    observe(&Event::Accepted);
    drop(udp);

    let mut refused = Vec::new();
    let (stream, peer) =
        accept_device(&listener, cfg, listen, total, &mut refused, observe, cancel)?;
    drop(listener);
    observe(&Event::Connected { peer });
    transfer(stream, cfg, payload, observe, cancel)?;
    Ok(Delivered {
        device,
        bytes: total,
        elapsed: start.elapsed(),
        reply: proto::OK.to_string(),
        refused,
    })
}

/// A UDP receive outcome.
enum Received {
    Reply(InviteReply),
    Bad(super::CodecError),
    Nothing { port_unreachable: bool },
    Cancelled,
}

fn send(udp: &UdpSocket, datagram: &[u8]) -> Result<(), OtaError> {
    match udp.send(datagram) {
        Ok(_) => Ok(()),
        // A pending ICMP error of an earlier datagram is reported here; the datagram itself
        // may not have gone out, which the caller's retries cover.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
        Err(e) => Err(OtaError::Io {
            action: "send to the device",
            source: e,
        }),
    }
}

/// Waits for one answer until `deadline`.
fn recv_reply(udp: &UdpSocket, deadline: Instant, cancel: &Cancel) -> Result<Received, OtaError> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut port_unreachable = false;
    loop {
        let res = wait(deadline, cancel, |slice| {
            udp.set_read_timeout(Some(slice))?;
            udp.recv(&mut buf)
        });
        return Ok(match res {
            Ok(Waited::Done(n)) => match InviteReply::parse(&buf[..n]) {
                Ok(r) => Received::Reply(r),
                Err(e) => Received::Bad(e),
            },
            Ok(Waited::TimedOut) => Received::Nothing { port_unreachable },
            Ok(Waited::Cancelled) => Received::Cancelled,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                port_unreachable = true;
                continue;
            }
            Err(e) => {
                return Err(OtaError::Io {
                    action: "receive from the device",
                    source: e,
                });
            }
        });
    }
}

/// Sends the invitation up to `invite_attempts` times within `invite`; returns the first
/// answer.
///
/// An invitation is only repeated while nothing has come back: a device that already sent
/// `AUTH` treats any further invitation as a failed authentication and drops it.
fn invite(
    udp: &UdpSocket,
    invitation: &Invitation,
    cfg: &EspotaConfig,
    listen: SocketAddr,
    observe: &mut dyn FnMut(&Event),
    cancel: &Cancel,
) -> Result<InviteReply, OtaError> {
    let t = &cfg.timeouts;
    let attempts = t.invite_attempts.max(1);
    let start = Instant::now();
    let end = start + t.invite;
    let datagram = invitation.to_datagram();
    let mut port_unreachable = false;
    for attempt in 1..=attempts {
        send(udp, &datagram)?;
        observe(&Event::Invited { attempt, listen });
        let deadline = if attempt == attempts {
            end
        } else {
            start + t.invite.mul_f64(f64::from(attempt) / f64::from(attempts))
        };
        match recv_reply(udp, deadline, cancel)? {
            Received::Reply(r) => return Ok(r),
            Received::Bad(source) => {
                return Err(OtaError::BadReply {
                    device: cfg.device,
                    source,
                });
            }
            Received::Nothing {
                port_unreachable: p,
            } => port_unreachable |= p,
            Received::Cancelled => {
                return Err(OtaError::Cancelled {
                    sent: 0,
                    total: u64::from(invitation.size),
                });
            }
        }
    }
    Err(OtaError::NoAnswer {
        device: cfg.device,
        attempts,
        waited: start.elapsed(),
        port_unreachable,
    })
}

/// Accepts connections until one comes from the device's IP; others are closed and noted.
fn accept_device(
    listener: &TcpListener,
    cfg: &EspotaConfig,
    listen: SocketAddr,
    total: u64,
    refused: &mut Vec<SocketAddr>,
    observe: &mut dyn FnMut(&Event),
    cancel: &Cancel,
) -> Result<(TcpStream, SocketAddr), OtaError> {
    listener
        .set_nonblocking(true)
        .map_err(OtaError::io("poll the listener"))?;
    let deadline = Instant::now() + cfg.timeouts.connect_back;
    loop {
        let res = wait(deadline, cancel, |slice| {
            let mut fds = [nix::poll::PollFd::new(
                listener.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = u16::try_from(slice.as_millis()).unwrap_or(u16::MAX);
            nix::poll::poll(&mut fds, ms).map_err(io::Error::from)?;
            listener.accept()
        });
        match res {
            Ok(Waited::Done((stream, peer))) => {
                if peer.ip() == cfg.device.ip() {
                    stream
                        .set_nonblocking(false)
                        .map_err(OtaError::io("configure the device connection"))?;
                    return Ok((stream, peer));
                }
                tracing::warn!(%peer, device = %cfg.device, "refused a back-connect from another address");
                let _ = stream.shutdown(std::net::Shutdown::Both);
                refused.push(peer);
                observe(&Event::StrangerRefused { peer });
            }
            Ok(Waited::TimedOut) => {
                return Err(OtaError::NoBackConnect {
                    device: cfg.device,
                    listen,
                    waited: cfg.timeouts.connect_back,
                    refused: std::mem::take(refused),
                });
            }
            Ok(Waited::Cancelled) => {
                return Err(OtaError::Cancelled { sent: 0, total });
            }
            Err(e) => {
                return Err(OtaError::Io {
                    action: "accept the device's back-connect",
                    source: e,
                });
            }
        }
    }
}

/// Sends the chunks in lockstep with the acknowledgements, then waits for the verdict.
fn transfer(
    mut stream: TcpStream,
    cfg: &EspotaConfig,
    payload: Payload<'_>,
    observe: &mut dyn FnMut(&Event),
    cancel: &Cancel,
) -> Result<(), OtaError> {
    let device = cfg.device;
    let total = payload.bytes.len() as u64;
    let mut scanner = ReplyScanner::new();
    let mut sent = 0u64;
    let mut buf = [0u8; 256];
    let mut done = false;
    observe(&Event::Progress { sent, total });
    for chunk in payload.bytes.chunks(HOST_CHUNK_SIZE) {
        if let Err((n, end)) = write_all_deadline(&mut stream, chunk, cfg.timeouts.reply, cancel) {
            sent += n as u64;
            return Err(match end {
                WriteEnd::Stalled => OtaError::Stalled {
                    device,
                    sent,
                    total,
                    waited: cfg.timeouts.reply,
                },
                WriteEnd::Cancelled => OtaError::Cancelled { sent, total },
                WriteEnd::Failed(e) => OtaError::UploadCut {
                    device,
                    sent,
                    total,
                    source: Some(e),
                },
            });
        }
        sent += chunk.len() as u64;
        observe(&Event::Progress { sent, total });
        // espota.py reads once per chunk: any reply bytes (an acknowledgement) let the next
        // chunk go. Acknowledgements have no separator, so their values are not counted.
        let deadline = Instant::now() + cfg.timeouts.reply;
        match read_some(&mut stream, &mut buf, deadline, cancel) {
            Ok(Waited::Done(0)) => return Err(closed(&mut scanner, device, sent, total, None)),
            Ok(Waited::Done(n)) => {
                if scan(&mut scanner, &buf[..n], device)? {
                    done = true;
                    break;
                }
            }
            Ok(Waited::TimedOut) => {
                return Err(OtaError::Stalled {
                    device,
                    sent,
                    total,
                    waited: cfg.timeouts.reply,
                });
            }
            Ok(Waited::Cancelled) => return Err(OtaError::Cancelled { sent, total }),
            Err(e) => return Err(closed(&mut scanner, device, sent, total, Some(e))),
        }
    }
    if done {
        return Ok(());
    }
    observe(&Event::WaitingForResult);
    let deadline = Instant::now() + cfg.timeouts.result;
    loop {
        match read_some(&mut stream, &mut buf, deadline, cancel) {
            Ok(Waited::Done(0)) => return Err(closed(&mut scanner, device, sent, total, None)),
            Ok(Waited::Done(n)) => {
                if scan(&mut scanner, &buf[..n], device)? {
                    return Ok(());
                }
            }
            Ok(Waited::TimedOut) => {
                return Err(OtaError::NoResult {
                    device,
                    waited: cfg.timeouts.result,
                });
            }
            Ok(Waited::Cancelled) => return Err(OtaError::Cancelled { sent, total }),
            Err(e) => return Err(closed(&mut scanner, device, sent, total, Some(e))),
        }
    }
}

/// Feeds reply bytes; `true` on the final `OK`, the device's error as `Err`.
fn scan(scanner: &mut ReplyScanner, bytes: &[u8], device: SocketAddr) -> Result<bool, OtaError> {
    let replies = scanner
        .feed(bytes)
        .map_err(|source| OtaError::BadReply { device, source })?;
    for r in replies {
        match r {
            TransferReply::Ack(_) => {}
            TransferReply::Ok => return Ok(true),
            TransferReply::Error(error) => {
                return Err(OtaError::Updater {
                    device,
                    phase: Phase::Transfer,
                    error,
                });
            }
        }
    }
    Ok(false)
}

/// The connection ended (EOF or a socket error): an error line without its `\n` still counts.
fn closed(
    scanner: &mut ReplyScanner,
    device: SocketAddr,
    sent: u64,
    total: u64,
    source: Option<io::Error>,
) -> OtaError {
    match scanner.finish() {
        Ok(Some(TransferReply::Error(error))) => OtaError::Updater {
            device,
            phase: Phase::Transfer,
            error,
        },
        Err(source) => OtaError::BadReply { device, source },
        Ok(_) if sent == total && source.is_none() => {
            OtaError::ClosedWithoutResult { device, total }
        }
        Ok(_) => OtaError::UploadCut {
            device,
            sent,
            total,
            source,
        },
    }
}
