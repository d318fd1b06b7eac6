//! The ArduinoOTA / espota protocol (libraries/ArduinoOTA/ArduinoOTA.cpp, tools/espota.py):
//! message formats, the device's lenient parsing, the MD5 challenge and the TCP replies.
//!
//! 1. The host listens on a TCP port and sends a UDP [`Invitation`]
//!    `"<cmd> <port> <size> <md5>\n"` to the device's port 8266.
//! 2. The device answers `OK`, or `AUTH <nonce>` when it has a password (the host then sends an
//!    [`AuthRequest`] `"200 <cnonce> <response>\n"`), or `ERR: ERROR[n]: text` when
//!    `Update.begin` fails ([`InviteReply`]).
//! 3. After `OK` the device connects back to the host's TCP port; the host sends the image in
//!    [`HOST_CHUNK_SIZE`] chunks and the device acknowledges every `Update.write` with the
//!    decimal byte count, then ends with `OK` or `ERROR[n]: text\n` ([`ReplyScanner`]).
//!
//! Device timing lives in firmware/behaviour.toml (`[espota]`); host timeouts are here.

use std::time::Duration;

use md5::{Digest, Md5};

use super::CodecError;
use super::updater::{DeviceError, UpdateCommand};

/// ArduinoOTA's default UDP port (`ArduinoOTAClass::begin`).
pub const DEFAULT_PORT: u16 = 8266;
/// `U_AUTH`: the command word of the authentication message.
pub const CMD_AUTH: u32 = 200;
/// espota.py sends the image in chunks of this size (one TCP segment at MSS 1460).
pub const HOST_CHUNK_SIZE: usize = 1460;
/// espota.py waits this long for the UDP answer to the invitation ("No Answer").
pub const INVITE_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// espota.py waits this long for the answer to the authentication ("No Answer to our
/// Authentication").
pub const AUTH_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// espota.py waits this long for the device to connect back ("No response from device").
pub const CONNECT_BACK_TIMEOUT: Duration = Duration::from_secs(10);
/// espota.py waits this long for a reply to each chunk ("Error Uploading").
pub const CHUNK_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// espota.py waits this long for the final `OK` / `ERROR` after the last chunk.
pub const RESULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest image size an invitation can carry: the device reads the size with `parseInt`
/// (`atoi` into a 32-bit `int`), which saturates at `i32::MAX`, so a larger size arrives wrong.
pub const MAX_IMAGE_SIZE: u32 = i32::MAX as u32;

/// The device's reply to a wrong authentication response.
pub const AUTH_FAILED: &str = "Authentication Failed";
/// The device's reply when it accepts the invitation, and its final word after an update.
pub const OK: &str = "OK";

/// Lower-case hex MD5, as `MD5Builder::toString` and `hashlib.md5().hexdigest()` give it.
pub fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The UDP invitation `"<cmd> <port> <size> <md5>\n"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// Flash or filesystem.
    pub command: UpdateCommand,
    /// The host's TCP port the device connects back to.
    pub port: u16,
    /// Image size in bytes.
    pub size: u32,
    /// MD5 of the image, hex (the device only checks that it has 32 characters).
    pub md5: String,
}

impl Invitation {
    /// The datagram espota.py sends (`'%d %d %d %s\n'`).
    pub fn to_datagram(&self) -> Vec<u8> {
        format!(
            "{} {} {} {}\n",
            self.command.code(),
            self.port,
            self.size,
            self.md5
        )
        .into_bytes()
    }

    /// Parses an invitation strictly: exactly the format espota.py produces, with a command of
    /// 0 or 100, a non-zero port, a size the device reads as sent (at most [`MAX_IMAGE_SIZE`])
    /// and 32 hex digits of MD5.
    pub fn parse(datagram: &[u8]) -> Result<Self, CodecError> {
        let bad = |field, got: &[u8]| CodecError::Invitation {
            field,
            got: String::from_utf8_lossy(got).into_owned(),
        };
        let body = datagram
            .strip_suffix(b"\n")
            .ok_or_else(|| bad("line end", datagram))?;
        let mut fields = body.split(|&b| b == b' ');
        let mut next = |name| fields.next().ok_or_else(|| bad(name, b""));
        let (cmd, port, size, md5) = (next("command")?, next("port")?, next("size")?, next("md5")?);
        if let Some(extra) = fields.next() {
            return Err(bad("end", extra));
        }
        let command = decimal(cmd)
            .and_then(|c| u32::try_from(c).ok())
            .and_then(UpdateCommand::from_code)
            .ok_or_else(|| bad("command", cmd))?;
        let port = decimal(port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0)
            .ok_or_else(|| bad("port", port))?;
        let size = decimal(size)
            .and_then(|s| u32::try_from(s).ok())
            .filter(|&s| s <= MAX_IMAGE_SIZE)
            .ok_or_else(|| bad("size", size))?;
        if md5.len() != 32 || !md5.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad("md5", md5));
        }
        let md5 = String::from_utf8_lossy(md5).into_owned();
        Ok(Invitation {
            command,
            port,
            size,
            md5,
        })
    }

    /// Reads an invitation the way ArduinoOTA's `_onRx` does in its idle state; `None` where
    /// the device silently ignores the datagram.
    ///
    /// The device reads the command with its `parseInt` (skip spaces, up to 15 digits, `atoi`)
    /// and drops anything but 0 and 100; then port (truncated to 16 bits) and size the same
    /// way, skips one byte, reads up to `\n`, `\0` or the end, trims white space, and drops the
    /// datagram unless that MD5 has exactly 32 characters (hex or not).
    pub fn parse_device(datagram: &[u8]) -> Option<Self> {
        let mut c = DeviceCursor::new(datagram);
        let command = UpdateCommand::from_code(u32::try_from(c.parse_int()).ok()?)?;
        let port = c.parse_int() as u16;
        let size = c.parse_int().max(0) as u32;
        c.read();
        let md5 = trim_c(c.read_until(b'\n'));
        if md5.len() != 32 {
            return None;
        }
        Some(Invitation {
            command,
            port,
            size,
            md5: String::from_utf8_lossy(md5).into_owned(),
        })
    }
}

/// The authentication message `"200 <cnonce> <response>\n"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// The host's nonce (see [`cnonce`]).
    pub cnonce: String,
    /// `md5hex(md5hex(password) + ":" + nonce + ":" + cnonce)`.
    pub response: String,
}

impl AuthRequest {
    /// The message espota.py sends for a password, the device's nonce and a cnonce.
    pub fn new(password: &str, nonce: &str, cnonce: &str) -> Self {
        let password_md5 = md5_hex(password.as_bytes());
        AuthRequest {
            cnonce: cnonce.to_string(),
            response: auth_response(&password_md5, nonce, cnonce),
        }
    }

    /// The datagram (`'%d %s %s\n'`).
    pub fn to_datagram(&self) -> Vec<u8> {
        format!("{CMD_AUTH} {} {}\n", self.cnonce, self.response).into_bytes()
    }

    /// Reads the message the way ArduinoOTA does while waiting for authentication; `None`
    /// where the device gives up (command not 200, or cnonce/response not 32 characters; no
    /// trimming here).
    pub fn parse_device(datagram: &[u8]) -> Option<Self> {
        let mut c = DeviceCursor::new(datagram);
        if c.parse_int() != CMD_AUTH as i32 {
            return None;
        }
        c.read();
        let cnonce = c.read_until(b' ');
        let response = c.read_until(b'\n');
        if cnonce.len() != 32 || response.len() != 32 {
            return None;
        }
        Some(AuthRequest {
            cnonce: String::from_utf8_lossy(cnonce).into_owned(),
            response: String::from_utf8_lossy(response).into_owned(),
        })
    }
}

/// espota.py's cnonce: `md5hex(filename + str(size) + file_md5 + device_ip)`, where
/// `filename` is the path as given on its command line and `device_ip` the address as given.
pub fn cnonce(filename: &str, size: u64, file_md5: &str, device_ip: &str) -> String {
    md5_hex(format!("{filename}{size}{file_md5}{device_ip}").as_bytes())
}

/// The challenge response: `md5hex(password_md5 + ":" + nonce + ":" + cnonce)`.
pub fn auth_response(password_md5: &str, nonce: &str, cnonce: &str) -> String {
    md5_hex(format!("{password_md5}:{nonce}:{cnonce}").as_bytes())
}

/// The device's nonce: the MD5 of `micros()` printed in decimal.
pub fn device_nonce(micros: u32) -> String {
    md5_hex(micros.to_string().as_bytes())
}

/// Checks a response like the device: recompute and compare in constant time, case-sensitive
/// (`String::equalsConstantTime`).
///
/// Written out because the comparison is a few lines and the crate has no constant-time
/// dependency; it must not exit early on the first differing byte.
pub fn verify_response(password_md5: &str, nonce: &str, cnonce: &str, response: &str) -> bool {
    let expected = auth_response(password_md5, nonce, cnonce);
    if expected.len() != response.len() {
        return false;
    }
    expected
        .bytes()
        .zip(response.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// A UDP reply of the device to an invitation or authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteReply {
    /// Accepted; the device connects back.
    Ok,
    /// A password is set; answer with an [`AuthRequest`].
    Auth {
        /// The device's nonce.
        nonce: String,
    },
    /// `Update.begin` failed: `ERR: ERROR[n]: text`.
    Err(DeviceError),
    /// The authentication response was wrong.
    AuthFailed,
}

impl InviteReply {
    /// The datagram the device sends.
    pub fn to_datagram(&self) -> Vec<u8> {
        match self {
            InviteReply::Ok => OK.into(),
            InviteReply::Auth { nonce } => format!("AUTH {nonce}").into_bytes(),
            InviteReply::Err(e) => format!("ERR: {e}\n").into_bytes(),
            InviteReply::AuthFailed => AUTH_FAILED.into(),
        }
    }

    /// Parses a reply datagram.
    pub fn parse(datagram: &[u8]) -> Result<Self, CodecError> {
        let text = String::from_utf8_lossy(datagram);
        let bad = || CodecError::Reply {
            got: text.clone().into_owned(),
        };
        if datagram == OK.as_bytes() {
            return Ok(InviteReply::Ok);
        }
        if datagram == AUTH_FAILED.as_bytes() {
            return Ok(InviteReply::AuthFailed);
        }
        if let Some(rest) = text.strip_prefix("AUTH") {
            let nonce = rest.split_whitespace().next().ok_or_else(bad)?;
            return Ok(InviteReply::Auth {
                nonce: nonce.to_string(),
            });
        }
        if let Some(rest) = text.strip_prefix("ERR: ") {
            return DeviceError::parse(rest)
                .map(InviteReply::Err)
                .ok_or_else(bad);
        }
        Err(bad())
    }
}

/// What the device does with one datagram ([`OtaListener::on_datagram`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerAction {
    /// Nothing (ignored, or an authentication attempt abandoned without reply).
    Ignore,
    /// Send `AUTH <nonce>` and wait for the authentication.
    Challenge {
        /// The nonce to send.
        nonce: String,
    },
    /// Send `Authentication Failed`; back to idle.
    AuthFailed,
    /// Run the update: `Update.begin(size, command)`, then `OK` or `ERR: ...`.
    Run(Invitation),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ListenerState {
    Idle,
    WaitAuth {
        invitation: Invitation,
        nonce: String,
    },
}

/// ArduinoOTA's UDP side (`_onRx`): idle, or waiting for authentication.
///
/// While waiting, any datagram is read as the authentication; a new invitation therefore
/// ends the wait and is dropped, as on the device. The device never times out of the wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtaListener {
    password_md5: Option<String>,
    state: ListenerState,
}

impl OtaListener {
    /// A listener; `password_md5` is what `setPassword` stores (`md5hex(password)`) or what
    /// `setPasswordHash` was given.
    pub fn new(password_md5: Option<String>) -> Self {
        OtaListener {
            password_md5,
            state: ListenerState::Idle,
        }
    }

    /// Whether the listener waits for an authentication message.
    pub fn waiting_for_auth(&self) -> bool {
        matches!(self.state, ListenerState::WaitAuth { .. })
    }

    /// Handles one datagram; `micros` is the device clock, the seed of the nonce.
    pub fn on_datagram(&mut self, datagram: &[u8], micros: u32) -> ListenerAction {
        match std::mem::replace(&mut self.state, ListenerState::Idle) {
            ListenerState::Idle => {
                let Some(invitation) = Invitation::parse_device(datagram) else {
                    return ListenerAction::Ignore;
                };
                if self.password_md5.is_none() {
                    return ListenerAction::Run(invitation);
                }
                let nonce = device_nonce(micros);
                self.state = ListenerState::WaitAuth {
                    invitation,
                    nonce: nonce.clone(),
                };
                ListenerAction::Challenge { nonce }
            }
            ListenerState::WaitAuth { invitation, nonce } => {
                let Some(auth) = AuthRequest::parse_device(datagram) else {
                    return ListenerAction::Ignore;
                };
                let password_md5 = self.password_md5.as_deref().unwrap_or_default();
                if verify_response(password_md5, &nonce, &auth.cnonce, &auth.response) {
                    ListenerAction::Run(invitation)
                } else {
                    ListenerAction::AuthFailed
                }
            }
        }
    }
}

/// The device's acknowledgement of one `Update.write`: the byte count in decimal, no separator.
pub fn format_ack(written: usize) -> String {
    written.to_string()
}

/// One item of the device's TCP reply stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferReply {
    /// A run of acknowledgement digits. Acknowledgements have no separator, so one run may be
    /// several coalesced counts; espota.py does not parse them either (it only looks for `O`
    /// and `E`). The value saturates.
    Ack(u64),
    /// The update succeeded; the device restarts.
    Ok,
    /// The update failed at `Update.end()`.
    Error(DeviceError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ScanState {
    Acks,
    SawO,
    Error(Vec<u8>),
    Done,
}

/// Incremental reader of the device's TCP replies (host side), fed whatever `recv` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyScanner {
    state: ScanState,
    offset: u64,
    digits: Option<u64>,
}

impl Default for ReplyScanner {
    fn default() -> Self {
        ReplyScanner {
            state: ScanState::Acks,
            offset: 0,
            digits: None,
        }
    }
}

impl ReplyScanner {
    /// A scanner at the start of the stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds received bytes; returns the replies completed by them. A digit run is reported at
    /// the end of each feed (or when a letter follows). Bytes after the final reply are ignored.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<TransferReply>, CodecError> {
        let mut out = Vec::new();
        for &b in bytes {
            let offset = self.offset;
            self.offset += 1;
            match &mut self.state {
                ScanState::Done => {}
                ScanState::Acks => match b {
                    b'0'..=b'9' => {
                        let d = u64::from(b - b'0');
                        let v = self.digits.unwrap_or(0);
                        self.digits = Some(v.saturating_mul(10).saturating_add(d));
                    }
                    b'O' => {
                        out.extend(self.digits.take().map(TransferReply::Ack));
                        self.state = ScanState::SawO;
                    }
                    b'E' => {
                        out.extend(self.digits.take().map(TransferReply::Ack));
                        self.state = ScanState::Error(vec![b]);
                    }
                    _ => return Err(CodecError::ReplyByte { offset, byte: b }),
                },
                ScanState::SawO if b == b'K' => {
                    out.push(TransferReply::Ok);
                    self.state = ScanState::Done;
                }
                ScanState::SawO => return Err(CodecError::ReplyByte { offset, byte: b }),
                ScanState::Error(line) if b == b'\n' => {
                    let line = std::mem::take(line);
                    out.push(Self::error_reply(&line, offset)?);
                    self.state = ScanState::Done;
                }
                ScanState::Error(line) => line.push(b),
            }
        }
        out.extend(self.digits.take().map(TransferReply::Ack));
        Ok(out)
    }

    /// The stream ended (connection closed): completes an error line without its `\n`.
    /// `None` if no final reply arrived.
    pub fn finish(&mut self) -> Result<Option<TransferReply>, CodecError> {
        match std::mem::replace(&mut self.state, ScanState::Done) {
            ScanState::Error(line) => Self::error_reply(&line, self.offset).map(Some),
            _ => Ok(None),
        }
    }

    fn error_reply(line: &[u8], end: u64) -> Result<TransferReply, CodecError> {
        let text = String::from_utf8_lossy(line);
        DeviceError::parse(&text)
            .map(TransferReply::Error)
            .ok_or(CodecError::ReplyByte {
                offset: end.saturating_sub(line.len() as u64),
                byte: b'E',
            })
    }
}

/// `atoi` of up to 15 digits as newlib does it on a 32-bit `long`: saturates at `i32::MAX`.
fn atoi(digits: &[u8]) -> i32 {
    let v = digits
        .iter()
        .fold(0u64, |acc, d| acc.saturating_mul(10) + u64::from(d - b'0'));
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// `String::trim`: strips C `isspace` characters from both ends.
fn trim_c(s: &[u8]) -> &[u8] {
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r');
    let start = s.iter().position(|b| !space(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !space(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

/// A read cursor with ArduinoOTA's helpers over one datagram (UdpContext `peek`/`read`).
struct DeviceCursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> DeviceCursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        DeviceCursor { data, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    fn read(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    /// `ArduinoOTAClass::parseInt`: skip spaces, then take digits into a 16-byte buffer; a
    /// non-digit ends the number (not consumed); 16 digits in a row give 0.
    fn parse_int(&mut self) -> i32 {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
        let start = self.pos;
        for _ in 0..16 {
            match self.peek() {
                Some(b'0'..=b'9') => self.pos += 1,
                _ => return atoi(&self.data[start..self.pos]),
            }
        }
        0
    }

    /// `ArduinoOTAClass::readStringUntil`: up to (and consuming) `end`, a NUL, or the end.
    fn read_until(&mut self, end: u8) -> &'a [u8] {
        let start = self.pos;
        while let Some(b) = self.read() {
            if b == end || b == 0 {
                return &self.data[start..self.pos - 1];
            }
        }
        &self.data[start..self.pos]
    }
}

/// `atoi`-style decimal for the strict parser: digits only, no sign, no leading `+`.
fn decimal(field: &[u8]) -> Option<u64> {
    if field.is_empty() || field.len() > 19 || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MD5: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn invitation_round_trip() {
        let inv = Invitation {
            command: UpdateCommand::Flash,
            port: 41234,
            size: 345_678,
            md5: MD5.into(),
        };
        let d = inv.to_datagram();
        assert_eq!(d, format!("0 41234 345678 {MD5}\n").as_bytes());
        assert_eq!(Invitation::parse(&d).unwrap(), inv);
        assert_eq!(Invitation::parse_device(&d).unwrap(), inv);
        let fs = Invitation {
            command: UpdateCommand::Fs,
            ..inv
        };
        assert_eq!(Invitation::parse(&fs.to_datagram()).unwrap(), fs);
    }

    #[test]
    fn strict_parser_names_the_field() {
        let field = |d: &[u8]| match Invitation::parse(d) {
            Err(CodecError::Invitation { field, .. }) => field,
            other => panic!("expected an error, got {other:?}"),
        };
        assert_eq!(field(format!("0 1 2 {MD5}").as_bytes()), "line end");
        assert_eq!(field(format!("200 1 2 {MD5}\n").as_bytes()), "command");
        assert_eq!(field(format!("0 0 2 {MD5}\n").as_bytes()), "port");
        assert_eq!(field(format!("0 70000 2 {MD5}\n").as_bytes()), "port");
        assert_eq!(field(format!("0 1 -2 {MD5}\n").as_bytes()), "size");
        // Found by fuzzing (fixtures/fuzz-regressions/ota_invite): a size the device's atoi
        // saturates was accepted, so host and device disagreed on it.
        assert_eq!(field(format!("0 4 3341425678 {MD5}\n").as_bytes()), "size");
        assert_eq!(field(format!("0 4 2147483648 {MD5}\n").as_bytes()), "size");
        let max = format!("0 4 2147483647 {MD5}\n");
        assert_eq!(
            Invitation::parse(max.as_bytes()).unwrap().size,
            MAX_IMAGE_SIZE
        );
        assert_eq!(
            Invitation::parse_device(max.as_bytes()).unwrap().size,
            MAX_IMAGE_SIZE
        );
        assert_eq!(field(b"0 1 2 xyz\n"), "md5");
        assert_eq!(field(format!("0 1 2 {}g\n", &MD5[..31]).as_bytes()), "md5");
        assert_eq!(field(format!("0 1 2 {MD5} x\n").as_bytes()), "end");
        assert_eq!(field(b"0 1\n"), "size");
    }

    #[test]
    fn device_parser_is_as_lenient_as_arduino_ota() {
        // Other commands, including AUTH, are ignored in the idle state.
        assert_eq!(
            Invitation::parse_device(format!("200 1 2 {MD5}\n").as_bytes()),
            None
        );
        assert_eq!(
            Invitation::parse_device(format!("1 1 2 {MD5}\n").as_bytes()),
            None
        );
        // The MD5 must have 32 characters after trimming, but need not be hex.
        assert_eq!(Invitation::parse_device(b"0 1 2 abc\n"), None);
        let zs = "z".repeat(32);
        let inv = Invitation::parse_device(format!("0 1 2 {zs}").as_bytes()).unwrap();
        assert_eq!(inv.md5, zs);
        // Extra spaces, CRLF, trailing junk after a NUL, a port above 16 bits (truncated).
        let inv =
            Invitation::parse_device(format!("  100   65537 7  {MD5}\r\n").as_bytes()).unwrap();
        assert_eq!(
            (inv.command, inv.port, inv.size, inv.md5.as_str()),
            (
                UpdateCommand::Fs,
                1,
                7,
                " 0123456789abcdef0123456789abcdef".trim()
            )
        );
        let inv = Invitation::parse_device(format!("0 5 6 {MD5}\0junk").as_bytes()).unwrap();
        assert_eq!(inv.md5, MD5);
        // Garbage reads as command 0 but never yields a 32-character MD5.
        assert_eq!(Invitation::parse_device(b"hello"), None);
        // A huge size saturates like atoi; 16 digits in a row read as 0.
        let inv = Invitation::parse_device(format!("0 1 99999999999 {MD5}").as_bytes()).unwrap();
        assert_eq!(inv.size, i32::MAX as u32);
        assert_eq!(
            Invitation::parse_device(format!("0 1 1234567890123456 {MD5}").as_bytes())
                .unwrap()
                .size,
            0
        );
    }

    #[test]
    fn auth_matches_espota_and_arduino_ota() {
        // Values computed by the formulas of espota.py / ArduinoOTA.cpp, spelled out here.
        let file_md5 = md5_hex(b"firmware");
        let cn = cnonce("build/sonoff-ota.ino.bin", 8, &file_md5, "192.168.1.50");
        assert_eq!(
            cn,
            md5_hex(format!("build/sonoff-ota.ino.bin8{file_md5}192.168.1.50").as_bytes())
        );
        let nonce = device_nonce(123_456);
        assert_eq!(nonce, md5_hex(b"123456"));
        let req = AuthRequest::new("secret", &nonce, &cn);
        let pw = md5_hex(b"secret");
        assert_eq!(
            req.response,
            md5_hex(format!("{pw}:{nonce}:{cn}").as_bytes())
        );
        assert_eq!(
            req.to_datagram(),
            format!("200 {cn} {}\n", req.response).as_bytes()
        );
        assert!(verify_response(&pw, &nonce, &cn, &req.response));
        assert!(!verify_response(
            &pw,
            &nonce,
            &cn,
            &req.response.to_uppercase()
        ));
        assert!(!verify_response(&pw, &nonce, &cn, &req.response[..31]));
        assert_eq!(
            AuthRequest::parse_device(&req.to_datagram()),
            Some(req.clone())
        );
        assert_eq!(
            AuthRequest::parse_device(format!("200 {cn} abc\n").as_bytes()),
            None
        );
        assert_eq!(
            AuthRequest::parse_device(format!("0 {cn} {}\n", req.response).as_bytes()),
            None
        );
    }

    #[test]
    fn listener_without_and_with_password() {
        let inv = Invitation {
            command: UpdateCommand::Flash,
            port: 5000,
            size: 10,
            md5: MD5.into(),
        };
        let mut open = OtaListener::new(None);
        assert_eq!(open.on_datagram(b"junk", 0), ListenerAction::Ignore);
        assert_eq!(
            open.on_datagram(&inv.to_datagram(), 0),
            ListenerAction::Run(inv.clone())
        );

        let mut locked = OtaListener::new(Some(md5_hex(b"pw")));
        let ListenerAction::Challenge { nonce } = locked.on_datagram(&inv.to_datagram(), 42) else {
            panic!("expected a challenge");
        };
        assert_eq!(nonce, device_nonce(42));
        assert!(locked.waiting_for_auth());
        let cn = cnonce("fw.bin", 10, MD5, "10.0.0.2");
        let wrong = AuthRequest::new("nope", &nonce, &cn);
        assert_eq!(
            locked.on_datagram(&wrong.to_datagram(), 43),
            ListenerAction::AuthFailed
        );
        assert!(!locked.waiting_for_auth());

        let ListenerAction::Challenge { nonce } = locked.on_datagram(&inv.to_datagram(), 44) else {
            panic!("expected a challenge");
        };
        // A second invitation while waiting ends the wait and is dropped.
        assert_eq!(
            locked.on_datagram(&inv.to_datagram(), 45),
            ListenerAction::Ignore
        );
        assert!(!locked.waiting_for_auth());
        let ListenerAction::Challenge { nonce: n2 } = locked.on_datagram(&inv.to_datagram(), 46)
        else {
            panic!("expected a challenge");
        };
        assert_ne!(nonce, n2);
        let right = AuthRequest::new("pw", &n2, &cn);
        assert_eq!(
            locked.on_datagram(&right.to_datagram(), 47),
            ListenerAction::Run(inv)
        );
    }

    #[test]
    fn invite_replies() {
        let err = InviteReply::Err(DeviceError {
            code: 4,
            text: "Not Enough Space".into(),
        });
        assert_eq!(err.to_datagram(), b"ERR: ERROR[4]: Not Enough Space\n");
        for r in [
            InviteReply::Ok,
            InviteReply::Auth {
                nonce: device_nonce(1),
            },
            err,
            InviteReply::AuthFailed,
        ] {
            assert_eq!(InviteReply::parse(&r.to_datagram()), Ok(r));
        }
        assert!(matches!(
            InviteReply::parse(b"HELLO"),
            Err(CodecError::Reply { .. })
        ));
        assert!(matches!(
            InviteReply::parse(b"AUTH"),
            Err(CodecError::Reply { .. })
        ));
        assert!(matches!(
            InviteReply::parse(b"ERR: oops"),
            Err(CodecError::Reply { .. })
        ));
    }

    #[test]
    fn reply_stream() {
        let mut s = ReplyScanner::new();
        assert_eq!(s.feed(b"1460").unwrap(), [TransferReply::Ack(1460)]);
        assert_eq!(s.feed(b"14601").unwrap(), [TransferReply::Ack(14601)]);
        assert_eq!(s.feed(b"460O").unwrap(), [TransferReply::Ack(460)]);
        assert_eq!(s.feed(b"K").unwrap(), [TransferReply::Ok]);
        assert_eq!(s.feed(b"trailing").unwrap(), []);

        let mut s = ReplyScanner::new();
        let out = s.feed(b"1024ERROR[7]: MD5 verification failed: expected: a, calculated: b\n");
        assert_eq!(
            out.unwrap(),
            [
                TransferReply::Ack(1024),
                TransferReply::Error(DeviceError {
                    code: 7,
                    text: "MD5 verification failed: expected: a, calculated: b".into()
                })
            ]
        );

        let mut s = ReplyScanner::new();
        assert_eq!(s.feed(b"ERROR[0]: No Err").unwrap(), []);
        assert_eq!(
            s.finish().unwrap(),
            Some(TransferReply::Error(DeviceError {
                code: 0,
                text: "No Err".into()
            }))
        );

        let mut s = ReplyScanner::new();
        assert_eq!(
            s.feed(b"12x"),
            Err(CodecError::ReplyByte {
                offset: 2,
                byte: b'x'
            })
        );
        let mut s = ReplyScanner::new();
        assert_eq!(
            s.feed(b"OX"),
            Err(CodecError::ReplyByte {
                offset: 1,
                byte: b'X'
            })
        );
        assert_eq!(format_ack(1460), "1460");
    }

    #[test]
    fn default_port_is_the_firmware_port() {
        assert_eq!(crate::firmware::behaviour().espota.port, DEFAULT_PORT);
    }

    proptest! {
        #[test]
        fn device_parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Invitation::parse_device(&data);
            let _ = AuthRequest::parse_device(&data);
            let _ = Invitation::parse(&data);
            let _ = InviteReply::parse(&data);
            let mut l = OtaListener::new(Some(md5_hex(b"x")));
            let _ = l.on_datagram(&data, 1);
            let _ = l.on_datagram(&data, 2);
            let mut s = ReplyScanner::new();
            let _ = s.feed(&data);
            let _ = s.finish();
        }

        #[test]
        fn invitation_round_trips(cmd in prop_oneof![Just(UpdateCommand::Flash), Just(UpdateCommand::Fs)],
                                  port in 1u16.., size in 0u32..=i32::MAX as u32,
                                  md5 in "[0-9a-f]{32}") {
            let inv = Invitation { command: cmd, port, size, md5 };
            prop_assert_eq!(Invitation::parse(&inv.to_datagram()), Ok(inv.clone()));
            prop_assert_eq!(Invitation::parse_device(&inv.to_datagram()), Some(inv));
        }

        #[test]
        fn auth_round_trip(password in ".{0,20}", micros in any::<u32>(), file in "[a-z/]{1,20}",
                           size in any::<u32>(), ip in "[0-9.]{7,15}") {
            let nonce = device_nonce(micros);
            let cn = cnonce(&file, u64::from(size), &md5_hex(file.as_bytes()), &ip);
            let req = AuthRequest::new(&password, &nonce, &cn);
            let parsed = AuthRequest::parse_device(&req.to_datagram()).unwrap();
            prop_assert!(verify_response(&md5_hex(password.as_bytes()), &nonce, &parsed.cnonce, &parsed.response));
            let wrong = md5_hex(format!("{}!", password).as_bytes());
            prop_assert!(!verify_response(&wrong, &nonce, &parsed.cnonce, &parsed.response));
        }

        #[test]
        fn acks_fed_one_by_one_come_back(acks in proptest::collection::vec(1usize..100_000, 0..10)) {
            let mut s = ReplyScanner::new();
            let mut got = Vec::new();
            for a in &acks {
                got.extend(s.feed(format_ack(*a).as_bytes()).unwrap());
            }
            got.extend(s.feed(b"O").unwrap());
            got.extend(s.feed(b"K").unwrap());
            let want: Vec<_> = acks
                .iter()
                .map(|&a| TransferReply::Ack(a as u64))
                .chain([TransferReply::Ok])
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}
