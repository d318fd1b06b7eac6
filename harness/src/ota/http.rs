//! The HTTP uploader for ESP8266HTTPUpdateServer (protocols.md §C): one multipart POST of the
//! image to `http://host:port/update`, field `firmware`, streamed with progress.
//!
//! The HTTP/1.1 exchange is written by hand over `std::net::TcpStream`, with `httparse` for
//! the response head. One request with a fixed `Content-Length` (ESP8266WebServer reads the
//! body by it) is a page of code, and owning the socket is what the diagnosis needs: progress
//! counts bytes actually written, a reset is told apart from a stall and from a clean close
//! with the byte count at which it happened, and every status and body comes back raw.
//! The maintained blocking client (ureq 3) would need a new dependency tree, hides the socket
//! error behind its own type and pulls the body through a `Read` adapter, which loses exactly
//! those distinctions.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::client::{
    Cancel, Delivered, Event, Password, Payload, Waited, WriteEnd, read_some, write_all_deadline,
};
use super::error::{OtaError, Phase, ResponseProblem};
use super::multipart::{self, FileUpload};
use super::updater::DeviceError;
use crate::firmware::{self, OtaMethod};

/// Wait for the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time without progress while sending, or between response bytes.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait for the response after the last body byte (espota's 60 s for the final answer).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes per write; ESP8266WebServer hands the upload on in blocks of this size.
pub const CHUNK_SIZE: usize = multipart::DEVICE_UPLOAD_BLOCK;
/// Longest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Longest response body accepted (the device's bodies are under 100 bytes).
const MAX_BODY: usize = 64 * 1024;
/// Most response headers parsed.
const MAX_HEADERS: usize = 32;
/// After a failed write, how long to look for a response the server sent before closing.
const EARLY_RESPONSE_WAIT: Duration = Duration::from_millis(500);

/// How long each step may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// No progress while sending.
    pub stall: Duration,
    /// The response after the last byte.
    pub response: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        HttpTimeouts {
            connect: CONNECT_TIMEOUT,
            stall: STALL_TIMEOUT,
            response: RESPONSE_TIMEOUT,
        }
    }
}

impl HttpTimeouts {
    /// Every wait set to `d` (the CLI's `--timeout`).
    pub fn all(d: Duration) -> Self {
        HttpTimeouts {
            connect: d,
            stall: d,
            response: d,
        }
    }
}

/// Where and how to upload.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The device's HTTP endpoint (port 80 on hardware; the virtual board remaps it).
    pub device: SocketAddr,
    /// The `Host` header (the address as the user gave it).
    pub host: String,
    /// The update path (`/update`).
    pub path: String,
    /// The form field (`firmware`; `filesystem` for a filesystem image).
    pub field: String,
    /// The HTTP Basic user (`admin` in the reference firmware).
    pub user: String,
    /// The password (the firmware's SMN_OTA_PASSWORD), if any; sent with the request.
    pub password: Option<Password>,
    /// Local address to connect from; `None` lets the OS choose (another host's address, for
    /// tests of who may upload).
    pub local_ip: Option<std::net::IpAddr>,
    /// Step timeouts.
    pub timeouts: HttpTimeouts,
}

impl HttpConfig {
    /// A firmware upload to `device` with the reference firmware's path, field and user.
    pub fn new(device: SocketAddr) -> Self {
        let b = &firmware::behaviour().http;
        HttpConfig {
            device,
            host: device.to_string(),
            path: b.path.clone(),
            field: b.field.clone(),
            user: b.user.clone(),
            password: None,
            local_ip: None,
            timeouts: HttpTimeouts::default(),
        }
    }
}

/// Uploads `payload`; `observe` sees each [`Event`], `cancel` stops it at the next wait slice.
///
/// `Ok` means a 200 with the success body: the device staged the image and restarts. The
/// device's refusals (401, 404, `Update error: ERROR[n]: ...`), a refused connection (no
/// service outside UPDATE state) and a cut connection are [`OtaError`]s whose
/// [`is_device_failure`](OtaError::is_device_failure) is true.
pub fn upload(
    cfg: &HttpConfig,
    payload: Payload<'_>,
    observe: &mut dyn FnMut(&Event),
    cancel: &Cancel,
) -> Result<Delivered, OtaError> {
    let start = Instant::now();
    let device = cfg.device;
    let total = payload.bytes.len() as u64;
    let boundary = multipart::random_boundary(&mut rand::rng());
    let form =
        FileUpload::new(&cfg.field, payload.name, total, &boundary).map_err(OtaError::Body)?;
    let head = request_head(cfg, &form);

    let mut stream = connect(cfg)?;
    observe(&Event::Connected { peer: device });
    let _ = stream.set_nodelay(true);

    let mut sent = 0u64;
    observe(&Event::Progress { sent, total });
    let pieces = std::iter::once((head.as_slice(), false))
        .chain(std::iter::once((form.head(), false)))
        .chain(payload.bytes.chunks(CHUNK_SIZE).map(|c| (c, true)))
        .chain(std::iter::once((form.tail(), false)));
    for (piece, is_file) in pieces {
        if let Err((n, end)) = write_all_deadline(&mut stream, piece, cfg.timeouts.stall, cancel) {
            if is_file {
                sent += n as u64;
            }
            return Err(match end {
                WriteEnd::Stalled => OtaError::Stalled {
                    device,
                    sent,
                    total,
                    waited: cfg.timeouts.stall,
                },
                WriteEnd::Cancelled => OtaError::Cancelled { sent, total },
                WriteEnd::Failed(e) => {
                    // A server may answer (401, 404) and close before reading everything.
                    let deadline = Instant::now() + EARLY_RESPONSE_WAIT;
                    match read_response(&mut stream, deadline, cancel) {
                        Ok(resp) => match interpret(cfg, resp) {
                            Ok(_) => OtaError::UploadCut {
                                device,
                                sent,
                                total,
                                source: Some(e),
                            },
                            Err(refusal) => refusal,
                        },
                        Err(_) => OtaError::UploadCut {
                            device,
                            sent,
                            total,
                            source: Some(e),
                        },
                    }
                }
            });
        }
        if is_file {
            sent += piece.len() as u64;
            observe(&Event::Progress { sent, total });
        }
    }
    observe(&Event::WaitingForResult);
    let deadline = Instant::now() + cfg.timeouts.response;
    let resp = match read_response(&mut stream, deadline, cancel) {
        Ok(resp) => resp,
        Err(ReadEnd::TimedOut) => {
            return Err(OtaError::NoResult {
                device,
                waited: cfg.timeouts.response,
            });
        }
        Err(ReadEnd::Cancelled) => return Err(OtaError::Cancelled { sent, total }),
        Err(ReadEnd::ClosedEmpty) => return Err(OtaError::ClosedWithoutResult { device, total }),
        Err(ReadEnd::Failed(e)) => {
            return Err(OtaError::UploadCut {
                device,
                sent,
                total,
                source: Some(e),
            });
        }
        Err(ReadEnd::Bad(problem)) => return Err(OtaError::BadResponse { device, problem }),
    };
    let reply = interpret(cfg, resp)?;
    Ok(Delivered {
        device,
        bytes: total,
        elapsed: start.elapsed(),
        reply,
        refused: Vec::new(),
    })
}

fn connect(cfg: &HttpConfig) -> Result<TcpStream, OtaError> {
    let device = cfg.device;
    let connected = match cfg.local_ip {
        None => TcpStream::connect_timeout(&device, cfg.timeouts.connect),
        Some(ip) => {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(device),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .and_then(|s| s.bind(&std::net::SocketAddr::new(ip, 0).into()).map(|()| s))
            .map_err(|source| OtaError::Io {
                action: "bind the local address for the upload",
                source,
            })?;
            socket
                .connect_timeout(&device.into(), cfg.timeouts.connect)
                .map(|()| socket.into())
        }
    };
    connected.map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused => OtaError::ConnectionRefused { device, source: e },
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => OtaError::ConnectTimeout {
            device,
            waited: cfg.timeouts.connect,
        },
        _ => OtaError::Unreachable { device, source: e },
    })
}

/// The request line and headers, up to the empty line.
fn request_head(cfg: &HttpConfig, form: &FileUpload) -> Vec<u8> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sonoff-hil-harness/{}\r\nAccept: */*\r\n\
         Connection: close\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        cfg.path,
        cfg.host,
        env!("CARGO_PKG_VERSION"),
        form.content_type(),
        form.content_length()
    );
    // Sent up front: the update server checks it when the upload starts and otherwise reads
    // the whole image only to answer 401.
    if let Some(pw) = &cfg.password {
        let credentials = format!("{}:{}", cfg.user, pw.expose());
        head.push_str(&format!(
            "Authorization: Basic {}\r\n",
            base64(credentials.as_bytes())
        ));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// A parsed response.
#[derive(Debug)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// Why no response was read.
#[derive(Debug)]
enum ReadEnd {
    TimedOut,
    Cancelled,
    /// EOF before the first byte.
    ClosedEmpty,
    /// A socket error (reset) before a complete response.
    Failed(io::Error),
    Bad(ResponseProblem),
}

fn read_response(
    stream: &mut TcpStream,
    deadline: Instant,
    cancel: &Cancel,
) -> Result<Response, ReadEnd> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    // (head length, status, Content-Length) once the head is complete.
    let mut head: Option<(usize, u16, Option<usize>)> = None;
    loop {
        if let Some((len, status, Some(cl))) = head
            && buf.len() >= len + cl
        {
            return Ok(Response {
                status,
                body: buf[len..len + cl].to_vec(),
            });
        }
        let n = match read_some(stream, &mut chunk, deadline, cancel) {
            Ok(Waited::Done(n)) => n,
            Ok(Waited::TimedOut) => return Err(ReadEnd::TimedOut),
            Ok(Waited::Cancelled) => return Err(ReadEnd::Cancelled),
            Err(e) => return Err(ReadEnd::Failed(e)),
        };
        if n == 0 {
            return match head {
                None if buf.is_empty() => Err(ReadEnd::ClosedEmpty),
                Some((len, status, None)) => Ok(Response {
                    status,
                    body: buf[len..].to_vec(),
                }),
                _ => Err(ReadEnd::Bad(ResponseProblem::Truncated)),
            };
        }
        buf.extend_from_slice(&chunk[..n]);
        if head.is_none() {
            head = parse_head(&buf).map_err(ReadEnd::Bad)?;
        }
        if let Some((len, _, _)) = head
            && buf.len() - len > MAX_BODY
        {
            return Err(ReadEnd::Bad(ResponseProblem::BodyTooLong {
                limit: MAX_BODY,
            }));
        }
    }
}

/// Parses the response head: `(head length, status, Content-Length)` once complete.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, u16, Option<usize>)>, ResponseProblem> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let status = resp.code.unwrap_or_default();
            let cl = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| {
                    std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .ok_or(ResponseProblem::BadContentLength)
                })
                .transpose()?;
            if cl.is_some_and(|cl| cl > MAX_BODY) {
                return Err(ResponseProblem::BodyTooLong { limit: MAX_BODY });
            }
            Ok(Some((len, status, cl)))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            Err(ResponseProblem::HeadTooLong { limit: MAX_HEAD })
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(ResponseProblem::Parse(e)),
    }
}

/// Reads the device's verdict out of a response: the body on success.
fn interpret(cfg: &HttpConfig, resp: Response) -> Result<String, OtaError> {
    let device = cfg.device;
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    let spec = &firmware::behaviour().http;
    match resp.status {
        200 => {
            if let Some(error) = spec
                .error_body
                .capture(&body)
                .and_then(|vals| vals.into_iter().find(|(k, _)| *k == "error"))
                .and_then(|(_, v)| DeviceError::parse(v))
            {
                return Err(OtaError::Updater {
                    device,
                    phase: Phase::Response,
                    error,
                });
            }
            // Older update servers end the text differently; "Update Success" is common to
            // all of them.
            if body == spec.success_body || body.contains("Update Success") {
                return Ok(body);
            }
            Err(OtaError::BadResponse {
                device,
                problem: ResponseProblem::UnknownBody { body },
            })
        }
        401 => Err(match cfg.password {
            Some(_) => OtaError::AuthFailed {
                device,
                method: OtaMethod::WebServer,
            },
            None => OtaError::PasswordRequired {
                device,
                method: OtaMethod::WebServer,
            },
        }),
        404 => Err(OtaError::NotFound {
            device,
            path: cfg.path.clone(),
        }),
        status => Err(OtaError::HttpStatus {
            device,
            status,
            body,
        }),
    }
}

/// Standard base64 with padding (RFC 4648 §4), for the Basic credentials.
///
/// Written out: it is the only base64 the crate needs, a dozen lines, not worth a dependency.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 0x3F) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("admin:secret", "YWRtaW46c2VjcmV0"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded, "{plain}");
        }
    }

    #[test]
    fn head_has_length_type_and_credentials() {
        let mut cfg = HttpConfig::new("192.168.1.50:80".parse().unwrap());
        let form = FileUpload::new("firmware", "fw.bin", 100, "b0undary").unwrap();
        let head = String::from_utf8(request_head(&cfg, &form)).unwrap();
        assert!(head.starts_with("POST /update HTTP/1.1\r\nHost: 192.168.1.50:80\r\n"));
        assert!(head.contains(&format!("Content-Length: {}\r\n", form.content_length())));
        assert!(head.contains("Content-Type: multipart/form-data; boundary=b0undary\r\n"));
        assert!(!head.contains("Authorization"));
        assert!(head.ends_with("\r\n\r\n"));
        cfg.password = Some(Password::new("secret"));
        let head = String::from_utf8(request_head(&cfg, &form)).unwrap();
        assert!(head.contains("Authorization: Basic YWRtaW46c2VjcmV0\r\n"));
    }

    #[test]
    fn responses_map_to_verdicts() {
        let cfg = HttpConfig::new("10.0.0.2:80".parse().unwrap());
        let ok = |status, body: &str| {
            interpret(
                &cfg,
                Response {
                    status,
                    body: body.as_bytes().to_vec(),
                },
            )
        };
        let spec = &firmware::behaviour().http;
        assert_eq!(ok(200, &spec.success_body).unwrap(), spec.success_body);
        let e = ok(200, "Update error: ERROR[4]: Not Enough Space\n").unwrap_err();
        assert_eq!(e.updater_code(), Some(4));
        assert!(matches!(
            ok(200, "hello").unwrap_err(),
            OtaError::BadResponse {
                problem: ResponseProblem::UnknownBody { .. },
                ..
            }
        ));
        assert!(matches!(
            ok(401, "").unwrap_err(),
            OtaError::PasswordRequired { .. }
        ));
        assert!(matches!(
            ok(404, "Not found: /update").unwrap_err(),
            OtaError::NotFound { .. }
        ));
        assert!(matches!(
            ok(500, "boom").unwrap_err(),
            OtaError::HttpStatus { status: 500, .. }
        ));
    }

    #[test]
    fn head_parser_limits() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n"), Ok(None));
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"),
            Ok(Some((38, 200, Some(3))))
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(ResponseProblem::BadContentLength)
        );
        assert!(matches!(
            parse_head(b"HTTX/1.1 200 OK\r\n\r\n"),
            Err(ResponseProblem::Parse(_))
        ));
        let long = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(
            parse_head(long.as_bytes()),
            Err(ResponseProblem::HeadTooLong { limit: MAX_HEAD })
        );
    }

    #[test]
    fn a_refusal_sent_before_the_server_closes_wins_over_upload_cut() {
        // A server that answers 401 after the head and closes without reading the body (the
        // close with unread data is a reset): whether the client notices on a write or on the
        // read, the 401 it already received is the verdict.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            // Wait until body bytes are queued, so the close below is a reset.
            let _ = s.peek(&mut buf).unwrap();
        });
        let cfg = HttpConfig {
            password: Some(Password::new("pw")),
            ..HttpConfig::new(addr)
        };
        let image = vec![0xE9u8; 4 << 20];
        let res = upload(
            &cfg,
            Payload {
                bytes: &image,
                name: "fw.bin",
            },
            &mut |_| {},
            &Cancel::new(),
        );
        server.join().unwrap();
        assert!(matches!(res, Err(OtaError::AuthFailed { .. })), "{res:?}");
    }
}
