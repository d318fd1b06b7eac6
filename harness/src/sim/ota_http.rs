//! The virtual board's HTTP update server: ESP8266WebServer with ESP8266HTTPUpdateServer as the
//! reference firmware sets them up (protocols.md §C, behaviour.toml `[http]`, core 3.1.2).
//!
//! - The listener exists only while the firmware has the webserver service started; outside
//!   UPDATE the port refuses connections. Re-entering UPDATE binds the same port again.
//! - One client at a time, as the single-threaded web server does: later clients wait in the
//!   listen backlog. HTTP/1.1 connections are kept alive for `HTTP_MAX_CLOSE_WAIT` unless
//!   another client is waiting.
//! - `GET /update` serves the library's upload page, `OPTIONS /update` its preflight answer,
//!   `POST /update` takes a `multipart/form-data` upload (parsed with [`Parser`] into
//!   [`DEVICE_UPLOAD_BLOCK`]-byte blocks, handed to the firmware's Updater block by block),
//!   anything else gets `404 Not found: <uri>`. With a password, HTTP Basic authentication.
//! - As in core 3.1.2, an upload has no read timeout (`_uploadReadByte` waits while the client
//!   is connected); a lost connection aborts it without an answer.
//!
//! Not modelled: Digest authentication (the library also accepts it; this server answers such
//! requests as unauthenticated), the 30 ms head timeout when another client has data, and
//! `Expect: 100-continue` (the device ignores it as well, so clients send the body after their
//! own wait).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::board::FlashLayout;
use crate::firmware::{self, OtaMethod};
use crate::ota::multipart::{DEVICE_UPLOAD_BLOCK, Event, Parser, PartHeaders};
use crate::ota::updater::{UpdateCommand, UpdaterError, http_begin_size_from_free};

use super::net::{OtaReply, OtaRequest};
use super::ota_link::{FirmwareLink, Gone, Readiness, Service, TICK, readable, started};

/// `HTTP_MAX_DATA_WAIT`: how long the server waits for a request (ESP8266WebServer.h).
const HTTP_MAX_DATA_WAIT: Duration = Duration::from_millis(5000);
/// `HTTP_MAX_POST_WAIT`: how long it waits for a non-form POST body.
const HTTP_MAX_POST_WAIT: Duration = Duration::from_millis(5000);
/// `HTTP_MAX_CLOSE_WAIT`: how long a served client may stay for another request.
const HTTP_MAX_CLOSE_WAIT: Duration = Duration::from_millis(2000);
/// `MAX_PENDING_CLIENTS_PER_PORT` of WiFiServer: the listen backlog.
const BACKLOG: i32 = 5;
/// The simulator's bound on a request head (the device is bounded by its heap).
const MAX_HEAD: usize = 16 * 1024;
/// Headers per request the simulator parses.
const MAX_HEADERS: usize = 64;
/// The realm of `requestAuthentication()` when none is given.
const REALM: &str = "Login Required";

/// The upload page (`serverIndex` of ESP8266HTTPUpdateServer-impl.h, 3.1.2), byte for byte.
pub(crate) const UPLOAD_PAGE: &str = "<!DOCTYPE html>
     <html lang='en'>
     <head>
         <meta charset='utf-8'>
         <meta name='viewport' content='width=device-width,initial-scale=1'/>
     </head>
     <body>
     <form method='POST' action='' enctype='multipart/form-data'>
         Firmware:<br>
         <input type='file' accept='.bin,.bin.gz' name='firmware'>
         <input type='submit' value='Update Firmware'>
     </form>
     <form method='POST' action='' enctype='multipart/form-data'>
         FileSystem:<br>
         <input type='file' accept='.bin,.bin.gz' name='filesystem'>
         <input type='submit' value='Update FileSystem'>
     </form>
     </body>
     </html>";

/// The field name that makes an upload a filesystem update; any other file field is firmware.
const FS_FIELD: &str = "filesystem";

/// The HTTP server thread of one board.
pub(crate) struct HttpServer {
    link: Arc<dyn FirmwareLink>,
    addr: SocketAddrV4,
    layout: FlashLayout,
    stop: Arc<AtomicBool>,
}

/// ESP8266HTTPUpdateServer's members, and the Updater's error flag as its POST handler reads it
/// (`Update.hasError()`: set by a failed call, cleared by a successful `begin`).
#[derive(Debug, Default)]
struct Library {
    authenticated: bool,
    updater_error: String,
    has_error: bool,
}

/// What the server does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Keep the connection for `HTTP_MAX_CLOSE_WAIT`.
    KeepAlive,
    /// Close it.
    Close,
    /// Drop it without an answer (bad request, aborted upload).
    Drop,
    /// The update succeeded: the firmware restarts, nothing more is served.
    Restart,
}

/// HTTP methods as ESP8266WebServer maps them (anything unknown counts as GET).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl Method {
    fn parse(word: &str) -> Method {
        match word {
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            _ => Method::Get,
        }
    }

    fn has_body(self) -> bool {
        matches!(
            self,
            Method::Post | Method::Put | Method::Patch | Method::Delete
        )
    }
}

/// A parsed request head.
#[derive(Debug)]
struct Head {
    method: Method,
    uri: String,
    version: u8,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A client connection with its read buffer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// `fault ota-reset` fired: the connection is dropped with an RST.
    reset: bool,
}

/// Result of one read.
enum Fill {
    Data,
    Eof,
    TimedOut,
}

impl Conn {
    /// Reads once into the buffer, waiting until `deadline` (None: as long as connected).
    fn fill(&mut self, svc: &Service<'_>, deadline: Option<Instant>) -> Result<Fill, Gone> {
        if svc.wait_readable(&self.stream, deadline)? == Readiness::TimedOut {
            return Ok(Fill::TimedOut);
        }
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) => Ok(Fill::Eof),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(Fill::Data)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Fill::Data),
            Err(_) => Ok(Fill::Eof),
        }
    }

    /// Reads and parses a request head; `None` when the client sent none in time or an
    /// invalid one (the device then drops the client without an answer).
    fn read_head(&mut self, svc: &Service<'_>, deadline: Instant) -> Result<Option<Head>, Gone> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let target = req.path.unwrap_or("/");
                    let uri = target.split('?').next().unwrap_or(target).to_string();
                    let head = Head {
                        method: Method::parse(req.method.unwrap_or("GET")),
                        uri,
                        version: req.version.unwrap_or(1),
                        headers: req
                            .headers
                            .iter()
                            .map(|h| {
                                let value = String::from_utf8_lossy(h.value).trim().to_string();
                                (h.name.to_string(), value)
                            })
                            .collect(),
                    };
                    self.buf.drain(..n);
                    return Ok(Some(head));
                }
                Ok(httparse::Status::Partial) if self.buf.len() <= MAX_HEAD => {}
                Ok(httparse::Status::Partial) | Err(_) => return Ok(None),
            }
            match self.fill(svc, Some(deadline))? {
                Fill::Data => {}
                Fill::Eof | Fill::TimedOut => return Ok(None),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        // A client that went away gets nothing; the server carries on like the device.
        let _ = self.stream.write_all(bytes);
    }

    /// Closes after sending: no more writes, unread input discarded (so the kernel sends FIN,
    /// not RST, and the client still reads the answer).
    fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Write);
        if self.stream.set_nonblocking(true).is_ok() {
            let mut sink = [0u8; 4096];
            while matches!((&self.stream).read(&mut sink), Ok(n) if n > 0) {}
        }
    }

    /// Drops the connection with a reset, as when the board vanishes under it.
    fn abort(self) {
        let _ = SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }
}

impl HttpServer {
    pub(crate) fn new(
        link: Arc<dyn FirmwareLink>,
        addr: SocketAddrV4,
        layout: FlashLayout,
        stop: Arc<AtomicBool>,
    ) -> Self {
        HttpServer {
            link,
            addr,
            layout,
            stop,
        }
    }

    /// The thread: follows the service state, serves clients one at a time.
    pub(crate) fn run(self) {
        let mut listener: Option<(u64, TcpListener)> = None;
        let mut library = Library::default();
        let mut restarting: Option<u64> = None;
        let mut bind_failed: Option<u64> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let state = self.link.net().get();
            let service = started(&*self.link, OtaMethod::WebServer);
            match (&service, &listener) {
                (Some((g, _)), Some((lg, _))) if g == lg => {}
                (Some((g, _)), _) => {
                    // httpServer.begin(): a new listener on the same port.
                    listener = None;
                    match bind(self.addr) {
                        Ok(l) => {
                            listener = Some((*g, l));
                            library = Library::default();
                        }
                        Err(e) => {
                            if bind_failed != Some(*g) {
                                tracing::error!(
                                    "HTTP update server cannot bind {}: {e}",
                                    self.addr
                                );
                                bind_failed = Some(*g);
                            }
                        }
                    }
                }
                // httpServer.stop(): connections are refused from now on.
                (None, Some(_)) => listener = None,
                (None, None) => {}
            }
            let Some((generation, l)) = &listener else {
                self.link.net().wait_change(&state, TICK);
                continue;
            };
            if restarting == Some(*generation) {
                // Answered a successful update; the restart takes the service down.
                self.link.net().wait_change(&state, TICK);
                continue;
            }
            if !readable(l, TICK) {
                continue;
            }
            let stream = match l.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    tracing::warn!("HTTP update server accept failed: {e}");
                    continue;
                }
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_nodelay(true);
            let password = service.and_then(|(_, p)| p).filter(|p| !p.is_empty());
            let svc = Service {
                link: &*self.link,
                generation: *generation,
                stop: &self.stop,
            };
            let mut conn = Conn {
                stream,
                buf: Vec::new(),
                reset: false,
            };
            match self.serve(&svc, l, &mut conn, &mut library, password.as_deref()) {
                Ok(Next::Restart) => {
                    // client().stop(), then ESP.restart() after the library's delay.
                    restarting = Some(*generation);
                    conn.close();
                    let delay = firmware::behaviour().http.restart_delay;
                    let after_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    let _ = svc.call(OtaRequest::Restart { after_ms });
                }
                Ok(Next::Drop) if conn.reset => conn.abort(),
                Ok(Next::Close | Next::KeepAlive | Next::Drop) => conn.close(),
                Err(Gone) => conn.abort(),
            }
        }
    }

    /// Serves one client until it is done (handleClient's HC_WAIT_READ / HC_WAIT_CLOSE).
    fn serve(
        &self,
        svc: &Service<'_>,
        listener: &TcpListener,
        conn: &mut Conn,
        library: &mut Library,
        password: Option<&str>,
    ) -> Result<Next, Gone> {
        loop {
            let Some(head) = conn.read_head(svc, svc.deadline(HTTP_MAX_DATA_WAIT))? else {
                return Ok(Next::Drop);
            };
            let next = self.handle(svc, listener, conn, &head, library, password)?;
            if next != Next::KeepAlive {
                return Ok(next);
            }
            // Wait for the client's next request, its close, or another client.
            let deadline = svc.deadline(HTTP_MAX_CLOSE_WAIT);
            loop {
                if !conn.buf.is_empty() {
                    break;
                }
                if readable(listener, Duration::ZERO) {
                    return Ok(Next::Close);
                }
                match conn.fill(svc, Some(deadline.min(Instant::now() + TICK)))? {
                    Fill::Data => break,
                    Fill::Eof => return Ok(Next::Close),
                    Fill::TimedOut if Instant::now() >= deadline => return Ok(Next::Close),
                    Fill::TimedOut => {}
                }
            }
        }
    }

    /// One request: read the body (handing uploads to the update server), then answer.
    fn handle(
        &self,
        svc: &Service<'_>,
        listener: &TcpListener,
        conn: &mut Conn,
        head: &Head,
        library: &mut Library,
        password: Option<&str>,
    ) -> Result<Next, Gone> {
        let spec = &firmware::behaviour().http;
        let is_update = head.uri == spec.path;
        let mut keep_alive = head.version > 0;
        if let Some(c) = head.header("Connection") {
            keep_alive = c.eq_ignore_ascii_case("keep-alive");
        }
        let auth_ok = match password {
            None => true,
            Some(p) => authenticate(head, &spec.user, p),
        };

        if head.method.has_body() {
            let content_type = head.header("Content-Type").unwrap_or_default();
            let length = head
                .header("Content-Length")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if content_type.starts_with("multipart/") {
                let upload = head.method == Method::Post && is_update;
                let form = Form {
                    content_type,
                    length,
                    upload,
                    auth_ok,
                };
                if !self.parse_form(svc, conn, &form, library)? {
                    return Ok(Next::Drop);
                }
            } else {
                let deadline = svc.deadline(HTTP_MAX_POST_WAIT);
                while (conn.buf.len() as u64) < length {
                    match conn.fill(svc, Some(deadline))? {
                        Fill::Data => {}
                        Fill::Eof | Fill::TimedOut => return Ok(Next::Drop),
                    }
                }
                conn.buf.drain(..length as usize);
            }
        }

        let cors = [
            ("Access-Control-Allow-Headers", "*".to_string()),
            ("Access-Control-Allow-Origin", "*".to_string()),
        ];
        let unauthorized = ("WWW-Authenticate", format!("Basic realm=\"{REALM}\""));
        let mut reply = Reply {
            head,
            listener,
            keep_alive: &mut keep_alive,
        };
        match (head.method, is_update) {
            (Method::Get, true) => {
                if !auth_ok {
                    reply.send(conn, spec.unauthorized_status, &[unauthorized], "");
                } else {
                    reply.send(conn, 200, &[], UPLOAD_PAGE);
                }
            }
            (Method::Options, true) => reply.send(conn, 200, &cors, "y"),
            (Method::Post, true) => {
                if !library.authenticated {
                    let [a, b] = cors;
                    reply.send(conn, spec.unauthorized_status, &[a, b, unauthorized], "");
                } else if library.has_error {
                    let body = spec
                        .error_body
                        .render(&[("error", library.updater_error.as_str())]);
                    reply.send(conn, 200, &cors, &body);
                } else {
                    // Success: answer; the caller closes and has the firmware restart.
                    reply.send(conn, 200, &cors, &spec.success_body);
                    return Ok(Next::Restart);
                }
            }
            _ => {
                let body = format!("Not found: {}", head.uri);
                reply.send(conn, spec.not_found_status, &[], &body);
            }
        }
        Ok(if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        })
    }

    /// `_parseForm` with the update server's upload handler. `false`: the form broke off (the
    /// device drops the client without an answer).
    fn parse_form(
        &self,
        svc: &Service<'_>,
        conn: &mut Conn,
        form: &Form<'_>,
        library: &mut Library,
    ) -> Result<bool, Gone> {
        let Ok(parser) = Parser::from_content_type(form.content_type) else {
            return Ok(false);
        };
        let mut parser = parser.with_block_size(DEVICE_UPLOAD_BLOCK);
        let mut fed: u64 = 0;
        let mut part: Option<Part> = None;
        // `fault ota-reset N`: the connection dies after N bytes of the upload's body.
        let reset_after = if form.upload {
            svc.link.net().take_reset()
        } else {
            None
        };
        loop {
            if reset_after.is_some_and(|limit| fed >= limit) {
                conn.reset = true;
                self.aborted(svc, form, part.as_ref(), library)?;
                return Ok(false);
            }
            // Feed up to Content-Length first, so that bytes of a next request stay buffered;
            // past it (a short Content-Length) keep going, the device reads to the boundary.
            let mut take = if fed < form.length {
                conn.buf.len().min((form.length - fed) as usize)
            } else {
                conn.buf.len()
            };
            if let Some(limit) = reset_after {
                take = take.min(usize::try_from(limit - fed).unwrap_or(usize::MAX));
            }
            if take > 0 {
                let bytes: Vec<u8> = conn.buf.drain(..take).collect();
                fed += take as u64;
                let events = match parser.feed(&bytes) {
                    Ok(events) => events,
                    Err(e) => {
                        tracing::debug!("HTTP upload: {e}");
                        self.aborted(svc, form, part.as_ref(), library)?;
                        return Ok(false);
                    }
                };
                let mut ended = false;
                for event in events {
                    match event {
                        Event::PartStart(headers) => {
                            part = headers.filename.is_some().then(Part::default);
                            if part.is_some() && form.upload {
                                self.upload_start(svc, form, &headers, library)?;
                            }
                        }
                        Event::Data(block) => {
                            if let Some(p) = part.as_mut() {
                                p.total += block.len();
                                p.blocks += 1;
                                if form.upload {
                                    upload_write(svc, library, block)?;
                                }
                            }
                        }
                        Event::PartEnd => {
                            if let Some(p) = part.take()
                                && form.upload
                            {
                                // The device hands over the last (maybe empty) block at the
                                // boundary, so an empty file still gets one write.
                                if p.blocks == 0 {
                                    upload_write(svc, library, Vec::new())?;
                                }
                                upload_end(svc, library, p.total)?;
                            }
                        }
                        Event::End => ended = true,
                    }
                }
                if ended {
                    // The epilogue up to Content-Length (curl and browsers end with CRLF).
                    let deadline = svc.deadline(HTTP_MAX_POST_WAIT);
                    while fed < form.length {
                        let take = conn.buf.len().min((form.length - fed) as usize);
                        conn.buf.drain(..take);
                        fed += take as u64;
                        if fed >= form.length {
                            break;
                        }
                        match conn.fill(svc, Some(deadline))? {
                            Fill::Data => {}
                            Fill::Eof | Fill::TimedOut => break,
                        }
                    }
                    return Ok(true);
                }
                continue;
            }
            // Core 3.1.2 waits for upload data as long as the client stays connected.
            match conn.fill(svc, None)? {
                Fill::Data | Fill::TimedOut => {}
                Fill::Eof => {
                    self.aborted(svc, form, part.as_ref(), library)?;
                    return Ok(false);
                }
            }
        }
    }

    /// `UPLOAD_FILE_ABORTED`: only inside a file part of an upload.
    fn aborted(
        &self,
        svc: &Service<'_>,
        form: &Form<'_>,
        part: Option<&Part>,
        library: &mut Library,
    ) -> Result<(), Gone> {
        if part.is_none() || !form.upload || !library.authenticated {
            return Ok(());
        }
        svc.call(OtaRequest::Abort)?;
        svc.print(firmware::behaviour().http.serial.upload_aborted.clone())
    }

    /// `UPLOAD_FILE_START`.
    fn upload_start(
        &self,
        svc: &Service<'_>,
        form: &Form<'_>,
        headers: &PartHeaders,
        library: &mut Library,
    ) -> Result<(), Gone> {
        let serial = &firmware::behaviour().http.serial;
        library.updater_error.clear();
        library.authenticated = form.auth_ok;
        if !library.authenticated {
            return svc.print(serial.unauthenticated.clone());
        }
        let filename = headers.filename.as_deref().unwrap_or_default();
        svc.print(serial.upload_start.render(&[("filename", filename)]))?;
        if headers.name == FS_FIELD {
            // size_t arithmetic of `FS_end - FS_start`.
            let size = self.layout.fs_end.wrapping_sub(self.layout.fs_start);
            let begin = OtaRequest::Begin {
                size,
                command: UpdateCommand::Fs,
                md5: None,
            };
            match svc.call(begin)? {
                OtaReply::Err(e) => {
                    // The filesystem branch only prints; the error text is not kept.
                    library.has_error = e.code() != 0;
                    svc.print(e.printed())?;
                }
                _ => library.has_error = false,
            }
        } else {
            let free = match svc.call(OtaRequest::FreeSketchSpace)? {
                OtaReply::FreeSpace(n) => n,
                other => {
                    tracing::warn!("firmware answered FreeSketchSpace with {other:?}");
                    0
                }
            };
            let begin = OtaRequest::Begin {
                size: http_begin_size_from_free(free),
                command: UpdateCommand::Flash,
                md5: None,
            };
            match svc.call(begin)? {
                OtaReply::Err(e) => set_error(svc, library, &e)?,
                _ => library.has_error = false,
            }
        }
        Ok(())
    }
}

/// What a form's upload callbacks need to know.
struct Form<'a> {
    content_type: &'a str,
    length: u64,
    /// The request is `POST /update`: file parts go to the update server.
    upload: bool,
    /// The request's credentials are good (or none are needed).
    auth_ok: bool,
}

/// A file part being received.
#[derive(Debug, Default)]
struct Part {
    total: usize,
    blocks: usize,
}

/// `UPLOAD_FILE_WRITE`: one block to `Update.write`.
fn upload_write(svc: &Service<'_>, library: &mut Library, block: Vec<u8>) -> Result<(), Gone> {
    if !library.authenticated || !library.updater_error.is_empty() {
        return Ok(());
    }
    svc.print(firmware::behaviour().http.serial.upload_block_mark.clone())?;
    if block.is_empty() {
        // Update.write(buf, 0) takes nothing and reports nothing.
        return Ok(());
    }
    let len = block.len();
    match svc.call(OtaRequest::Write(block))? {
        OtaReply::Written(n) if n == len => Ok(()),
        OtaReply::Err(e) => set_error(svc, library, &e),
        _ => set_error(svc, library, &UpdaterError::NoError),
    }
}

/// `UPLOAD_FILE_END`: `Update.end(true)`.
fn upload_end(svc: &Service<'_>, library: &mut Library, total: usize) -> Result<(), Gone> {
    if !library.authenticated || !library.updater_error.is_empty() {
        return Ok(());
    }
    match svc.call(OtaRequest::End {
        even_if_remaining: true,
    })? {
        OtaReply::Err(e) => set_error(svc, library, &e),
        _ => {
            let serial = &firmware::behaviour().http.serial;
            svc.print(
                serial
                    .upload_success
                    .render(&[("size", &total.to_string())]),
            )
        }
    }
}

/// `_setUpdaterError`: print the Updater's error and keep its text for the answer.
fn set_error(svc: &Service<'_>, library: &mut Library, error: &UpdaterError) -> Result<(), Gone> {
    library.has_error = error.code() != 0;
    library.updater_error = error.printed();
    svc.print(error.printed())
}

/// `authenticate(user, password)` for Basic credentials: the base64 of `user:password`,
/// compared in constant time.
fn authenticate(head: &Head, user: &str, password: &str) -> bool {
    let Some(value) = head.header("Authorization") else {
        return false;
    };
    if !value.starts_with("Basic") {
        return false;
    }
    let given = value.get(6..).unwrap_or_default().trim();
    let expected =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}").as_bytes());
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Writes answers the way `_prepareHeader` and `send` lay them out.
struct Reply<'a> {
    head: &'a Head,
    listener: &'a TcpListener,
    keep_alive: &'a mut bool,
}

impl Reply<'_> {
    fn send(&mut self, conn: &mut Conn, status: u16, headers: &[(&str, String)], body: &str) {
        // Keep-alive is given up when another client is waiting.
        if *self.keep_alive && readable(self.listener, Duration::ZERO) {
            *self.keep_alive = false;
        }
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.{} {status} {reason}\r\nContent-Type: text/html\r\n",
            self.head.version
        );
        for (name, value) in headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        if *self.keep_alive {
            out.push_str("Connection: keep-alive\r\n");
            out.push_str(&format!(
                "Keep-Alive: timeout={}\r\n",
                HTTP_MAX_CLOSE_WAIT.as_millis()
            ));
        } else {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        if self.head.method != Method::Head {
            out.push_str(body);
        }
        conn.send(out.as_bytes());
    }
}

/// A listener on the board's address and port; SO_REUSEADDR so that the port can be bound
/// again while connections of the last UPDATE period linger in TIME_WAIT.
fn bind(addr: SocketAddrV4) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
