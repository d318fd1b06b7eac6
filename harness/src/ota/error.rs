//! [`OtaError`]: everything that can end an OTA upload early, for both clients.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use miette::Diagnostic;

use super::CodecError;
use super::updater::DeviceError;
use crate::firmware::{self, OtaMethod};

/// Where in the exchange the device's Updater reported an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// espota: the UDP answer to the invitation (`ERR: ...`, from `Update.begin`).
    Invitation,
    /// espota: the TCP reply stream (`ERROR[n]: ...`, from `Update.write` or `Update.end`).
    Transfer,
    /// HTTP: the response body `Update error: ...` (begin, write or end).
    Response,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Invitation => "the invitation (Update.begin)",
            Phase::Transfer => "the transfer (Update.write/end)",
            Phase::Response => "the HTTP upload",
        })
    }
}

/// What is wrong with an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseProblem {
    /// The status line or a header does not parse.
    Parse(httparse::Error),
    /// The header block is longer than the client accepts.
    HeadTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is longer than the client accepts.
    BodyTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// `Content-Length` is not a decimal number.
    BadContentLength,
    /// The connection closed inside the header block or before `Content-Length` bytes.
    Truncated,
    /// A 200 response whose body is neither the success text nor `Update error: ERROR[n]: ...`.
    UnknownBody {
        /// The body, lossily decoded.
        body: String,
    },
}

impl fmt::Display for ResponseProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseProblem::Parse(e) => write!(f, "{e}"),
            ResponseProblem::HeadTooLong { limit } => {
                write!(f, "header block longer than {limit} bytes")
            }
            ResponseProblem::BodyTooLong { limit } => write!(f, "body longer than {limit} bytes"),
            ResponseProblem::BadContentLength => f.write_str("Content-Length is not a number"),
            ResponseProblem::Truncated => f.write_str("connection closed inside the response"),
            ResponseProblem::UnknownBody { body } => {
                write!(f, "200 with an unknown body `{}`", body.trim_end())
            }
        }
    }
}

/// Why an OTA upload did not end with the device accepting the image.
///
/// [`OtaError::is_device_failure`] separates what the device did (refused, went silent, cut the
/// connection: a test verdict) from what kept the harness from trying (local sockets, missing
/// password, cancel).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtaError {
    /// A local socket operation failed (bind, listen, address lookup of our own interface).
    #[error("cannot {action}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The device's host name does not resolve.
    #[error("cannot resolve `{host}`")]
    Resolve {
        /// The name as given.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The image is larger than the invitation's size field can carry.
    #[error("image of {len} bytes is too large to announce (at most {max} bytes)")]
    ImageTooLarge {
        /// Image length.
        len: u64,
        /// The largest size the protocol carries.
        max: u64,
    },
    /// espota "No Answer": nothing came back to the invitations.
    #[error(
        "no answer from {device} to {attempts} espota invitation(s) in {} (\"No Answer\"){}",
        secs(*waited),
        if *port_unreachable { "; the port is closed (ICMP port unreachable)" } else { "" }
    )]
    NoAnswer {
        /// The device's UDP endpoint.
        device: SocketAddr,
        /// Invitations sent.
        attempts: u32,
        /// Time waited in total.
        waited: Duration,
        /// The host got an ICMP "port unreachable": something is at that address, but nothing
        /// listens on the port.
        port_unreachable: bool,
    },
    /// espota: no answer to the authentication message.
    #[error("no answer from {device} to the authentication within {}", secs(*waited))]
    NoAuthAnswer {
        /// The device's UDP endpoint.
        device: SocketAddr,
        /// Time waited.
        waited: Duration,
    },
    /// The device wants a password and the harness has none.
    #[error("{device} asks for a password ({method}) and none was given")]
    PasswordRequired {
        /// The device's endpoint.
        device: SocketAddr,
        /// Which OTA service asked.
        method: OtaMethod,
    },
    /// The device refused the password (espota `Authentication Failed`, HTTP 401).
    #[error("{device} refused the password ({method})")]
    AuthFailed {
        /// The device's endpoint.
        device: SocketAddr,
        /// Which OTA service refused.
        method: OtaMethod,
    },
    /// The device's Updater refused or failed the update: `ERROR[n]: text`.
    #[error("{device} failed the update in {phase}: {error}")]
    Updater {
        /// The device's endpoint.
        device: SocketAddr,
        /// Where the error came.
        phase: Phase,
        /// Code and text as the device printed them.
        error: DeviceError,
    },
    /// espota "No response from device": the device did not connect back.
    #[error(
        "{device} did not connect back to {listen} within {} (\"No response from device\"){}",
        secs(*waited),
        refused_text(refused)
    )]
    NoBackConnect {
        /// The device's UDP endpoint.
        device: SocketAddr,
        /// The host's TCP listener the invitation announced.
        listen: SocketAddr,
        /// Time waited.
        waited: Duration,
        /// Connections from other addresses that were refused meanwhile.
        refused: Vec<SocketAddr>,
    },
    /// The device stopped answering in the middle of the upload.
    #[error("upload stalled: nothing from {device} for {} after {sent} of {total} bytes", secs(*waited))]
    Stalled {
        /// The device's endpoint.
        device: SocketAddr,
        /// Bytes written to the connection.
        sent: u64,
        /// Image size.
        total: u64,
        /// How long nothing moved.
        waited: Duration,
    },
    /// The connection was closed or reset before the device gave a verdict.
    #[error("upload cut: the connection to {device} ended after {sent} of {total} bytes")]
    UploadCut {
        /// The device's endpoint.
        device: SocketAddr,
        /// Bytes written to the connection (the device may have received fewer).
        sent: u64,
        /// Image size.
        total: u64,
        /// The socket error; none when the device closed normally.
        #[source]
        source: Option<io::Error>,
    },
    /// The whole image went out but no verdict came in time.
    #[error("no result from {device} within {} after the whole image was sent", secs(*waited))]
    NoResult {
        /// The device's endpoint.
        device: SocketAddr,
        /// Time waited after the last byte.
        waited: Duration,
    },
    /// The device closed the connection after the whole image without `OK` or `ERROR`.
    #[error("{device} closed the connection after all {total} bytes without a result")]
    ClosedWithoutResult {
        /// The device's endpoint.
        device: SocketAddr,
        /// Image size.
        total: u64,
    },
    /// HTTP: nothing listens on the port.
    #[error("connection to {device} refused")]
    ConnectionRefused {
        /// The device's endpoint.
        device: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// HTTP: the TCP connect failed otherwise (host or network unreachable).
    #[error("cannot connect to {device}")]
    Unreachable {
        /// The device's endpoint.
        device: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// HTTP: the TCP connect did not complete in time.
    #[error("no TCP connection to {device} within {}", secs(*waited))]
    ConnectTimeout {
        /// The device's endpoint.
        device: SocketAddr,
        /// Time waited.
        waited: Duration,
    },
    /// HTTP: the server has no such path (404).
    #[error("{device} has no {path} (HTTP 404)")]
    NotFound {
        /// The device's endpoint.
        device: SocketAddr,
        /// The path asked for.
        path: String,
    },
    /// HTTP: a status other than 200, 401 and 404.
    #[error("{device} answered HTTP {status}: {}", body.trim_end())]
    HttpStatus {
        /// The device's endpoint.
        device: SocketAddr,
        /// The status code.
        status: u16,
        /// The response body, lossily decoded.
        body: String,
    },
    /// HTTP: the response does not parse, or its body says neither success nor error.
    #[error("bad HTTP response from {device}: {problem}")]
    BadResponse {
        /// The device's endpoint.
        device: SocketAddr,
        /// What is wrong.
        problem: ResponseProblem,
    },
    /// espota: a UDP answer or TCP reply byte that is not part of the protocol ("Bad Answer").
    #[error("unexpected reply from {device}")]
    BadReply {
        /// The device's endpoint.
        device: SocketAddr,
        /// The codec's complaint.
        #[source]
        source: CodecError,
    },
    /// The multipart body could not be built (a bug or an unusable file name).
    #[error("cannot build the upload body")]
    Body(#[source] CodecError),
    /// The cancel flag was set.
    #[error("cancelled after {sent} of {total} bytes")]
    Cancelled {
        /// Bytes written to the connection.
        sent: u64,
        /// Image size.
        total: u64,
    },
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn refused_text(refused: &[SocketAddr]) -> String {
    if refused.is_empty() {
        return String::new();
    }
    let list: Vec<String> = refused.iter().map(|a| a.to_string()).collect();
    format!(
        "; refused connection(s) from {} (not the device's address)",
        list.join(", ")
    )
}

impl OtaError {
    /// Whether the device (or the network in front of it) caused the failure: it refused,
    /// failed the update, went silent, or cut the connection. `false` for harness-side
    /// problems: local sockets, name lookup, a missing password, cancel.
    ///
    /// The CLI maps `true` to exit code 1 and `false` to 2.
    pub fn is_device_failure(&self) -> bool {
        !matches!(
            self,
            OtaError::Io { .. }
                | OtaError::Resolve { .. }
                | OtaError::ImageTooLarge { .. }
                | OtaError::PasswordRequired { .. }
                | OtaError::Body(_)
                | OtaError::Cancelled { .. }
        )
    }

    /// The Updater's error code, for [`OtaError::Updater`].
    pub fn updater_code(&self) -> Option<u8> {
        match self {
            OtaError::Updater { error, .. } => Some(error.code),
            _ => None,
        }
    }

    pub(crate) fn io(action: &'static str) -> impl FnOnce(io::Error) -> OtaError {
        move |source| OtaError::Io { action, source }
    }
}

/// How to get into UPDATE state, from the firmware description.
fn update_state_help() -> String {
    let b = firmware::behaviour();
    format!(
        "the OTA service runs only in UPDATE state: press and hold the button (GPIO{}) for {} s \
         until the LED blinks, then start the upload within {} s; also check the address and \
         port",
        b.button.gpio,
        b.button.long_press.as_secs_f64(),
        b.update.timeout.as_secs()
    )
}

/// The physical remedy for an Updater error code (Updater.h codes, failure-modes.md).
fn updater_help(code: u8) -> String {
    match code {
        1..=3 => "a flash operation failed on the device: check the supply (at least 300 mA at \
                  3.3 V, not a USB-UART's 3.3 V pin) and retry; a repeated failure means worn \
                  flash"
            .into(),
        4 => "the image is too big to stage (ERROR[4]): the running sketch and the new image \
              must both fit below the filesystem; make the sketch smaller, build with the 1 MB \
              no-filesystem layout, use a gzip image, or update in two steps through a minimal \
              firmware"
            .into(),
        5 | 13 => "the device received no image data: check that the file is not empty".into(),
        6 => "the device timed out reading the stream: check Wi-Fi quality and retry".into(),
        7 => "the image changed on the way (MD5 mismatch): retry; if it repeats, check the link"
            .into(),
        8 => "the running firmware was built for more flash than the chip has (ERROR[8]): \
              build for 1 MB flash (eagle.flash.1m*.ld) and reflash once by serial"
            .into(),
        9 => "the new image's header claims more flash than the chip has (ERROR[9]): build for \
              1 MB flash (Flash Size 1MB, eagle.flash.1m*.ld)"
            .into(),
        10 => "not an ESP8266 application image (first byte is not 0xE9): upload the .bin of the \
               build, not the .elf or a filesystem image"
            .into(),
        11 => "the chip still runs from the boot of a serial flash (boot mode 1, ERROR[11]): \
               power-cycle after a serial flash, or pulse RST with GPIO0 high, then retry"
            .into(),
        12 => "the image's signature does not verify: sign it with the device's key".into(),
        14 => "the device ran out of memory: retry after a restart".into(),
        15 => "an update is already running on the device: wait for it or power-cycle".into(),
        _ => "see the Updater error codes in docs/protocols.md §C".into(),
    }
}

impl Diagnostic for OtaError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        let code = match self {
            OtaError::Io { .. } => "io",
            OtaError::Resolve { .. } => "resolve",
            OtaError::ImageTooLarge { .. } => "image_too_large",
            OtaError::NoAnswer { .. } => "no_answer",
            OtaError::NoAuthAnswer { .. } => "no_auth_answer",
            OtaError::PasswordRequired { .. } => "password_required",
            OtaError::AuthFailed { .. } => "auth_failed",
            OtaError::Updater { .. } => "updater",
            OtaError::NoBackConnect { .. } => "no_back_connect",
            OtaError::Stalled { .. } => "stalled",
            OtaError::UploadCut { .. } => "upload_cut",
            OtaError::NoResult { .. } => "no_result",
            OtaError::ClosedWithoutResult { .. } => "closed_without_result",
            OtaError::ConnectionRefused { .. } => "connection_refused",
            OtaError::ConnectTimeout { .. } => "connect_timeout",
            OtaError::Unreachable { .. } => "unreachable",
            OtaError::NotFound { .. } => "not_found",
            OtaError::HttpStatus { .. } => "http_status",
            OtaError::BadResponse { .. } => "bad_response",
            OtaError::BadReply { .. } => "bad_reply",
            OtaError::Body(_) => "body",
            OtaError::Cancelled { .. } => "cancelled",
        };
        Some(Box::new(format!("harness::ota::{code}")))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        let text: String = match self {
            OtaError::Io { .. } => {
                "check the host's network configuration (interface up, port free)".into()
            }
            OtaError::Resolve { .. } => "use the device's IP address".into(),
            OtaError::ImageTooLarge { .. } => "this is not an ESP8266 image".into(),
            OtaError::NoAnswer {
                port_unreachable, ..
            } => {
                let mut h = update_state_help();
                if *port_unreachable {
                    h.push_str(
                        "; port unreachable also means a firmware built without ArduinoOTA \
                         (try --method webserver)",
                    );
                }
                h
            }
            OtaError::NoAuthAnswer { .. } => {
                "the device dropped the authentication (a second invitation ends its wait): \
                 retry once"
                    .into()
            }
            OtaError::PasswordRequired { .. } => {
                "the firmware was built with SMN_OTA_PASSWORD: put the password in an \
                 environment variable and name it with --password-env VAR"
                    .into()
            }
            OtaError::AuthFailed { .. } => {
                "the password does not match the firmware's SMN_OTA_PASSWORD".into()
            }
            OtaError::Updater { error, .. } => updater_help(error.code),
            OtaError::NoBackConnect { refused, .. } => {
                let mut h = String::from(
                    "the device accepted but could not open a TCP connection back to this host: \
                     check the host firewall for the listen port, and with several network \
                     interfaces pick the one on the device's network with --local-ip",
                );
                if !refused.is_empty() {
                    h.push_str("; another machine connected instead, check for NAT or a proxy");
                }
                h
            }
            OtaError::Stalled { .. } => {
                "the device stopped reading: check Wi-Fi signal and supply, then retry after it \
                 restarts into UPDATE state"
                    .into()
            }
            OtaError::UploadCut { .. } => {
                "the device dropped the connection mid-upload (reset, brown-out or Wi-Fi loss): \
                 check the supply and the serial log, then retry"
                    .into()
            }
            OtaError::NoResult { .. } | OtaError::ClosedWithoutResult { .. } => {
                "the device did not confirm the update: read its serial log; it may have \
                 restarted (check whether the new version runs)"
                    .into()
            }
            OtaError::ConnectionRefused { .. } => update_state_help(),
            OtaError::ConnectTimeout { .. } | OtaError::Unreachable { .. } => {
                "check that the device is powered and on the network (address, Wi-Fi)".into()
            }
            OtaError::NotFound { .. } => {
                "the firmware serves no HTTP update page: it may be built for ArduinoOTA (try \
                 --method arduino)"
                    .into()
            }
            OtaError::HttpStatus { .. } | OtaError::BadResponse { .. } => {
                "is something other than ESP8266HTTPUpdateServer listening on that port?".into()
            }
            OtaError::BadReply { .. } => {
                "is something other than ArduinoOTA listening on that port?".into()
            }
            OtaError::Body(_) => "rename the image file".into(),
            OtaError::Cancelled { .. } => {
                "the device may stay in UPDATE state until its timeout; power-cycle it if \
                 unsure"
                    .into()
            }
        };
        Some(Box::new(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "192.168.1.50:8266".parse().unwrap()
    }

    #[test]
    fn messages_and_help_name_the_remedy() {
        let e = OtaError::NoAnswer {
            device: addr(),
            attempts: 10,
            waited: Duration::from_secs(10),
            port_unreachable: false,
        };
        assert_eq!(
            e.to_string(),
            "no answer from 192.168.1.50:8266 to 10 espota invitation(s) in 10.0 s (\"No Answer\")"
        );
        let help = e.help().unwrap().to_string();
        assert!(help.contains("hold the button (GPIO0) for 3 s"), "{help}");
        assert!(e.is_device_failure());

        let e = OtaError::Updater {
            device: addr(),
            phase: Phase::Invitation,
            error: DeviceError::parse(
                "ERROR[11]: Invalid bootstrapping state, reset ESP8266 before updating",
            )
            .unwrap(),
        };
        assert_eq!(e.updater_code(), Some(11));
        assert!(
            e.to_string()
                .contains("in the invitation (Update.begin): ERROR[11]")
        );
        assert!(
            e.help()
                .unwrap()
                .to_string()
                .contains("power-cycle after a serial flash")
        );
        for (code, words) in [
            (4, "too big to stage"),
            (8, "build for 1 MB flash"),
            (9, "build for 1 MB flash"),
            (10, "0xE9"),
        ] {
            let e = OtaError::Updater {
                device: addr(),
                phase: Phase::Response,
                error: DeviceError {
                    code,
                    text: String::new(),
                },
            };
            assert!(e.help().unwrap().to_string().contains(words), "{code}");
        }

        let e = OtaError::NoBackConnect {
            device: addr(),
            listen: "192.168.1.10:40000".parse().unwrap(),
            waited: Duration::from_secs(10),
            refused: vec!["192.168.1.99:5555".parse().unwrap()],
        };
        assert!(
            e.to_string()
                .contains("refused connection(s) from 192.168.1.99:5555")
        );
        assert_eq!(
            e.code().unwrap().to_string(),
            "harness::ota::no_back_connect"
        );

        let harness_side = OtaError::PasswordRequired {
            device: addr(),
            method: OtaMethod::Arduino,
        };
        assert!(!harness_side.is_device_failure());
        assert!(
            !OtaError::Cancelled { sent: 1, total: 2 }.is_device_failure(),
            "cancel is the operator's doing"
        );
    }

    #[test]
    fn source_chain_survives() {
        use std::error::Error as _;
        let e = OtaError::UploadCut {
            device: addr(),
            sent: 2920,
            total: 32768,
            source: Some(io::ErrorKind::ConnectionReset.into()),
        };
        assert_eq!(
            e.source().unwrap().to_string(),
            io::Error::from(io::ErrorKind::ConnectionReset).to_string()
        );
    }
}
