//! Device-side OTA peers for the client tests, written from the protocol facts (protocols.md
//! §B ArduinoOTA, §C ESP8266HTTPUpdateServer) on top of the crate's codecs: `OtaListener` and
//! `ReplyScanner`'s counterpart `format_ack` for espota, `multipart::Parser` for HTTP, and
//! `UpdateSession` over an in-memory 1 MB flash for both.
//!
//! Each peer serves one update attempt on 127.0.0.1 in a thread and hands back what the
//! device ended with ([`Outcome`]). Faults: a password, boot mode 1 (ERROR[11]), a connection
//! cut after N bytes, a back-connect preceded by a stranger's connection from another address.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use harness::board;
use harness::firmware;
use harness::ota::multipart::{self, Event as PartEvent};
use harness::ota::proto::{self, InviteReply, ListenerAction, OtaListener};
use harness::ota::updater::{
    self, CoreModel, DeviceEnv, EbootCommand, FLASH_SECTOR_SIZE, FlashFault, FlashWriter,
    UpdateCommand, UpdateSession, UpdaterError,
};

/// How long a peer waits for the client before it gives up (a safety net, never a sync).
const PEER_PATIENCE: Duration = Duration::from_secs(20);

/// The repository's fixtures/images/NAME.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Path of fixtures/images/NAME.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/images")
        .join(name)
}

/// An image of `len` bytes the Updater accepts: header E9, DOUT, 1 MB, then a pattern.
pub fn fake_image(len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
    v[..4].copy_from_slice(&[0xE9, 1, 3, 0x20]);
    v
}

/// 1 MB of NOR flash: erase sets 0xFF, programming can only clear bits.
#[derive(Debug, Clone)]
pub struct MemFlash {
    pub data: Vec<u8>,
}

impl MemFlash {
    /// Flash with `installed` written at 0 (what a serial flash of that file leaves).
    pub fn with_installed(installed: &[u8]) -> Self {
        let mut data = vec![0xFF; 1 << 20];
        data[..installed.len()].copy_from_slice(installed);
        MemFlash { data }
    }

    pub fn slice(&self, addr: u32, len: usize) -> &[u8] {
        &self.data[addr as usize..addr as usize + len]
    }
}

impl FlashWriter for MemFlash {
    fn erase_sector(&mut self, addr: u32) -> Result<(), FlashFault> {
        let a = addr as usize;
        self.data[a..a + FLASH_SECTOR_SIZE as usize].fill(0xFF);
        Ok(())
    }
    fn write(&mut self, addr: u32, data: &[u8]) -> Result<(), FlashFault> {
        let a = addr as usize;
        for (d, s) in self.data[a..a + data.len()].iter_mut().zip(data) {
            *d &= *s;
        }
        Ok(())
    }
    fn read(&mut self, addr: u32, buf: &mut [u8]) -> Result<(), FlashFault> {
        let a = addr as usize;
        buf.copy_from_slice(&self.data[a..a + buf.len()]);
        Ok(())
    }
}

/// The simulated device.
#[derive(Debug, Clone)]
pub struct Device {
    /// SMN_OTA_PASSWORD.
    pub password: Option<String>,
    /// Strap value latched at the last reset (1 after a serial flash without reset).
    pub boot_mode: u8,
    /// What is in flash at 0.
    pub installed: Vec<u8>,
    /// Drop the connection once this many image/body bytes arrived.
    pub cut_after: Option<usize>,
    /// espota: before connecting back, connect from this address first (a stranger) and wait
    /// until the host closes that connection.
    pub stranger: Option<Ipv4Addr>,
    /// espota: connect back at all.
    pub connect_back: bool,
}

impl Default for Device {
    fn default() -> Self {
        Device {
            password: None,
            boot_mode: 3,
            installed: fixture("sonoff-ota-1.0.0-arduino.bin"),
            cut_after: None,
            stranger: None,
            connect_back: true,
        }
    }
}

impl Device {
    fn env(&self) -> DeviceEnv {
        DeviceEnv {
            layout: board::find("sonoff-basic").unwrap().layout.clone(),
            real_flash_size: 1 << 20,
            boot_mode: self.boot_mode,
            core: CoreModel::V3_1,
        }
    }
}

/// What the device ended with.
#[derive(Debug)]
pub struct Outcome {
    pub flash: MemFlash,
    /// Where `Update.begin` put the staging area.
    pub staging: Option<u32>,
    /// The eboot command `Update.end` wrote (the update succeeded).
    pub eboot: Option<EbootCommand>,
    /// The Updater's error, if any.
    pub error: Option<UpdaterError>,
    /// Image (espota) or body (HTTP) bytes received.
    pub received: usize,
    /// espota: wrong authentications seen.
    pub auth_failures: u32,
    /// espota: the stranger's connection was closed by the host.
    pub stranger_closed: Option<bool>,
    /// HTTP: the request's method, path and Content-Length.
    pub request: Option<(String, String, Option<u64>)>,
    /// HTTP: the status sent.
    pub status: Option<u16>,
}

impl Outcome {
    fn new(dev: &Device) -> Self {
        Outcome {
            flash: MemFlash::with_installed(&dev.installed),
            staging: None,
            eboot: None,
            error: None,
            received: 0,
            auth_failures: 0,
            stranger_closed: None,
            request: None,
            status: None,
        }
    }

    /// Asserts the update staged exactly `image` and commanded eboot to copy it to 0.
    pub fn assert_staged(&self, image: &[u8]) {
        assert_eq!(self.error, None, "device error");
        let staging = self.staging.expect("Update.begin ran");
        assert!(
            self.flash.slice(staging, image.len()) == image,
            "the staging area at {staging:#x} does not hold the image"
        );
        assert_eq!(
            self.eboot,
            Some(EbootCommand::copy_raw(staging, 0, image.len() as u32)),
            "eboot command"
        );
    }
}

/// A peer thread and the address the client talks to.
pub struct Peer {
    pub addr: SocketAddr,
    handle: JoinHandle<Outcome>,
}

impl Peer {
    /// Waits for the peer to finish its attempt.
    pub fn join(self) -> Outcome {
        self.handle.join().expect("peer thread")
    }
}

// ---------------------------------------------------------------------------------------------
// espota

/// An ArduinoOTA device in UPDATE state: UDP on 127.0.0.1:<port>.
pub fn espota_device(dev: Device) -> Peer {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = udp.local_addr().unwrap();
    let handle = thread::spawn(move || espota_serve(udp, dev));
    Peer { addr, handle }
}

fn espota_serve(udp: UdpSocket, dev: Device) -> Outcome {
    let mut out = Outcome::new(&dev);
    let password_md5 = dev
        .password
        .as_deref()
        .map(|p| proto::md5_hex(p.as_bytes()));
    let mut listener = OtaListener::new(password_md5);
    let mut session = UpdateSession::new(dev.env());
    udp.set_read_timeout(Some(PEER_PATIENCE)).unwrap();
    let mut buf = [0u8; 512];
    let mut micros = 1_000u32;
    loop {
        let Ok((n, from)) = udp.recv_from(&mut buf) else {
            return out;
        };
        micros += 7_919;
        match listener.on_datagram(&buf[..n], micros) {
            ListenerAction::Ignore => {}
            ListenerAction::Challenge { nonce } => {
                udp.send_to(&InviteReply::Auth { nonce }.to_datagram(), from)
                    .unwrap();
            }
            ListenerAction::AuthFailed => {
                out.auth_failures += 1;
                udp.send_to(&InviteReply::AuthFailed.to_datagram(), from)
                    .unwrap();
                return out;
            }
            ListenerAction::Run(inv) => {
                match session.begin(&mut out.flash, inv.size, inv.command) {
                    Ok(start) => out.staging = Some(start),
                    Err(e) => {
                        let reply = InviteReply::Err(e.to_device_error());
                        udp.send_to(&reply.to_datagram(), from).unwrap();
                        out.error = Some(e);
                        return out;
                    }
                }
                assert!(session.set_md5(&inv.md5));
                udp.send_to(&InviteReply::Ok.to_datagram(), from).unwrap();
                let host = SocketAddr::new(from.ip(), inv.port);
                if let Some(ip) = dev.stranger {
                    out.stranger_closed = Some(stranger_is_refused(ip, host));
                }
                if !dev.connect_back {
                    return out;
                }
                let stream = TcpStream::connect(host).expect("connect back to the host");
                espota_receive(stream, &dev, &mut session, &mut out);
                return out;
            }
        }
    }
}

/// Connects from `ip` and reports whether the host closed the connection unused.
fn stranger_is_refused(ip: Ipv4Addr, host: SocketAddr) -> bool {
    let mut s = connect_from(ip, host).expect("stranger connects");
    s.set_read_timeout(Some(PEER_PATIENCE)).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => true,
        _ => false,
    }
}

/// ArduinoOTA's `_runUpdate` loop: read what is there, `Update.write`, acknowledge with the
/// decimal count; at the end `OK` or the printed error.
fn espota_receive(
    mut stream: TcpStream,
    dev: &Device,
    session: &mut UpdateSession,
    out: &mut Outcome,
) {
    let receive_timeout = firmware::behaviour().espota.receive_timeout;
    stream.set_read_timeout(Some(receive_timeout)).unwrap();
    let mut buf = [0u8; proto::HOST_CHUNK_SIZE];
    while !session.is_finished() {
        if dev.cut_after.is_some_and(|cut| out.received >= cut) {
            return; // dropped: the host sees the connection end
        }
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return, // "Receive Failed"
            Ok(n) => n,
        };
        out.received += n;
        let written = session.write(&mut out.flash, &buf[..n]);
        if written > 0 {
            stream
                .write_all(proto::format_ack(written).as_bytes())
                .unwrap();
        }
        if let Some(e) = session.error() {
            out.error = Some(e.clone());
            let _ = stream.write_all(e.printed().as_bytes());
            return;
        }
    }
    match session.end(&mut out.flash, false) {
        Ok(eboot) => {
            out.eboot = eboot;
            stream.write_all(proto::OK.as_bytes()).unwrap();
        }
        Err(e) => {
            stream.write_all(e.printed().as_bytes()).unwrap();
            out.error = Some(e);
        }
    }
}

/// A TCP connection from a chosen local address (std cannot bind before connect).
pub fn connect_from(local: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let SocketAddr::V4(to) = to else {
        return Err(io::ErrorKind::Unsupported.into());
    };
    fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    }
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; the sockaddr structs live
    // across the calls and `len` is their size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let from = sockaddr(SocketAddrV4::new(local, 0));
        if libc::bind(fd, (&raw const from).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let dest = sockaddr(to);
        if libc::connect(fd, (&raw const dest).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stream)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// An ESP8266HTTPUpdateServer in UPDATE state on 127.0.0.1:<port>, serving one request.
pub fn http_device(dev: Device) -> Peer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let mut out = Outcome::new(&dev);
        let (stream, _) = listener.accept().unwrap();
        http_serve(stream, &dev, &mut out);
        out
    });
    Peer { addr, handle }
}

/// An address where nothing listens (the firmware closes its listener outside UPDATE).
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn http_serve(mut stream: TcpStream, dev: &Device, out: &mut Outcome) {
    stream.set_read_timeout(Some(PEER_PATIENCE)).unwrap();
    let spec = &firmware::behaviour().http;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_len, method, path, headers) = loop {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "client closed inside the request head");
        buf.extend_from_slice(&chunk[..n]);
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut hs);
        if let httparse::Status::Complete(len) = req.parse(&buf).unwrap() {
            let headers: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            break (
                len,
                req.method.unwrap().to_string(),
                req.path.unwrap().to_string(),
                headers,
            );
        }
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let content_length = header("content-length").map(|v| v.parse::<u64>().unwrap());
    out.request = Some((method, path.clone(), content_length));
    let content_length = content_length.expect("ESP8266WebServer needs Content-Length") as usize;

    // ESP8266WebServer::authenticate for Basic: decode and compare user and password.
    let authenticated = match &dev.password {
        None => true,
        Some(pw) => header("authorization")
            .and_then(|v| v.strip_prefix("Basic ").map(decode_base64))
            .is_some_and(|cred| cred == format!("{}:{pw}", spec.user).into_bytes()),
    };
    let mut parser = multipart::Parser::from_content_type(&header("content-type").unwrap())
        .unwrap()
        .with_block_size(spec.upload_block);
    let mut session = UpdateSession::new(dev.env());
    let mut error: Option<UpdaterError> = None;
    let mut body = buf.split_off(head_len);
    loop {
        if dev.cut_after.is_some_and(|cut| out.received >= cut) {
            // Close with unread bytes queued, so the host sees a reset.
            let _ = stream.peek(&mut chunk);
            return;
        }
        out.received += body.len();
        for ev in parser.feed(&body).expect("the client's body parses") {
            match ev {
                PartEvent::PartStart(h) if h.name == spec.field && authenticated => {
                    let sketch = updater::sketch_size(&mut out.flash).unwrap();
                    let size = updater::http_begin_size(&dev.env().layout, sketch);
                    match session.begin(&mut out.flash, size, UpdateCommand::Flash) {
                        Ok(start) => out.staging = Some(start),
                        Err(e) => error = Some(e),
                    }
                }
                PartEvent::Data(d) if authenticated && error.is_none() => {
                    let written = session.write(&mut out.flash, &d);
                    error = (written != d.len())
                        .then(|| session.error().cloned())
                        .flatten();
                }
                PartEvent::PartEnd if authenticated && error.is_none() => {
                    match session.end(&mut out.flash, true) {
                        Ok(eboot) => out.eboot = eboot,
                        Err(e) => error = Some(e),
                    }
                }
                _ => {}
            }
        }
        if out.received >= content_length {
            break;
        }
        let want = chunk.len().min(content_length - out.received);
        let n = stream.read(&mut chunk[..want]).unwrap();
        assert!(n > 0, "client closed inside the body");
        body = chunk[..n].to_vec();
    }
    parser
        .finish()
        .expect("the body ends with the closing boundary");

    let (status, reason, text) = if path != spec.path {
        (404, "Not Found", format!("Not found: {path}"))
    } else if !authenticated {
        (401, "Unauthorized", String::new())
    } else if let Some(e) = &error {
        let printed = e.printed();
        (
            200,
            "OK",
            spec.error_body.render(&[("error", printed.as_str())]),
        )
    } else {
        (200, "OK", spec.success_body.clone())
    };
    out.error = error;
    out.status = Some(status);
    let mut resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        text.len()
    );
    if status == 401 {
        resp.push_str("WWW-Authenticate: Basic realm=\"Login Required\"\r\n");
    }
    resp.push_str("\r\n");
    resp.push_str(&text);
    stream.write_all(resp.as_bytes()).unwrap();
}

/// RFC 4648 base64 decoding (padding optional); garbage decodes to garbage.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let sextets: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for s in sextets {
        acc = (acc << 6) | u32::from(s);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
