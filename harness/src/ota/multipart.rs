//! `multipart/form-data` as used for the ESP8266HTTPUpdateServer upload: a builder for the host
//! side and an incremental parser for the device side.
//!
//! The builder produces what a browser's `<input type=file name=firmware>` form (or
//! `curl -F firmware=@fw.bin`) sends: one file part with `Content-Disposition: form-data;
//! name="firmware"; filename="..."` and `Content-Type: application/octet-stream`. It is split
//! into a head, the file bytes and a tail, so a client can stream the file with progress and
//! still send `Content-Length` up front.
//!
//! The parser is hand-written on purpose: the simulator must see an upload the way
//! ESP8266WebServer's `_parseForm` hands it to the update server, part by part and in
//! [`DEVICE_UPLOAD_BLOCK`]-byte blocks as bytes arrive (so it can inject faults mid-upload),
//! without buffering the whole file. `multer`, the maintained Rust parser, is async and
//! stream-based, which does not fit the blocking simulator.
//!
//! The parser follows RFC 7578 / RFC 2046 (preamble and epilogue allowed, transport padding
//! after a boundary, boundaries split across feeds). The device is stricter: it expects the
//! opening boundary on the first non-empty line, `name` before `filename`, and at most a
//! `Content-Type` header besides `Content-Disposition`. The builder's output satisfies both.

use std::fmt;

use memchr::memmem;

use super::CodecError;

/// ESP8266WebServer's `HTTP_UPLOAD_BUFLEN`: the upload handler gets data in blocks this size.
pub const DEVICE_UPLOAD_BLOCK: usize = 2048;
/// The longest part header block the parser accepts.
pub const MAX_HEADER_BLOCK: usize = 8 * 1024;
/// The most headers one part may have.
const MAX_PART_HEADERS: usize = 16;
/// RFC 2046: a boundary has 1 to 70 characters.
const MAX_BOUNDARY: usize = 70;
/// Most transport padding (spaces, tabs) accepted after a boundary; bounds the buffer.
const MAX_PADDING: usize = 256;

/// What is wrong with a multipart body or its `Content-Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The Content-Type is not `multipart/*`.
    NotMultipart {
        /// The Content-Type as given.
        content_type: String,
    },
    /// The Content-Type has no `boundary` parameter.
    NoBoundary,
    /// The boundary breaks RFC 2046.
    BadBoundary {
        /// Which rule.
        reason: &'static str,
    },
    /// The input ended before the first boundary.
    NoOpeningBoundary,
    /// A boundary is followed by something other than `--` or a line end.
    BadDelimiterLine,
    /// A part's header block is longer than [`MAX_HEADER_BLOCK`].
    HeaderTooLong,
    /// A part header does not parse (httparse's reason).
    BadHeader {
        /// The reason.
        reason: String,
    },
    /// A part has no `Content-Disposition` header.
    NoContentDisposition,
    /// The `Content-Disposition` is not `form-data`.
    NotFormData {
        /// The disposition type found.
        disposition: String,
    },
    /// The `Content-Disposition` has no `name`.
    NoName,
    /// The input ended before the closing boundary.
    Truncated {
        /// The part that was open, if any.
        in_part: Option<String>,
    },
    /// The file given to the builder has another length than announced.
    LengthMismatch {
        /// Announced length.
        announced: u64,
        /// Length given.
        given: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotMultipart { content_type } => {
                write!(f, "Content-Type `{content_type}` is not multipart")
            }
            Problem::NoBoundary => f.write_str("Content-Type has no boundary parameter"),
            Problem::BadBoundary { reason } => write!(f, "bad boundary: {reason}"),
            Problem::NoOpeningBoundary => f.write_str("no opening boundary before the end"),
            Problem::BadDelimiterLine => f.write_str("boundary not followed by `--` or a line end"),
            Problem::HeaderTooLong => {
                write!(f, "part header block longer than {MAX_HEADER_BLOCK} bytes")
            }
            Problem::BadHeader { reason } => write!(f, "bad part header ({reason})"),
            Problem::NoContentDisposition => f.write_str("part without Content-Disposition"),
            Problem::NotFormData { disposition } => {
                write!(f, "Content-Disposition `{disposition}` is not form-data")
            }
            Problem::NoName => f.write_str("Content-Disposition without a name"),
            Problem::Truncated {
                in_part: Some(name),
            } => {
                write!(f, "body ends inside part `{name}` (no closing boundary)")
            }
            Problem::Truncated { in_part: None } => {
                f.write_str("body ends before the closing boundary")
            }
            Problem::LengthMismatch { announced, given } => {
                write!(f, "file has {given} bytes, {announced} were announced")
            }
        }
    }
}

fn error(offset: u64, problem: Problem) -> CodecError {
    CodecError::Multipart { offset, problem }
}

/// Checks a boundary against RFC 2046 (`bchars`, 1 to 70 characters, no trailing space).
pub fn validate_boundary(boundary: &str) -> Result<(), CodecError> {
    let bad = |reason| error(0, Problem::BadBoundary { reason });
    if boundary.is_empty() || boundary.len() > MAX_BOUNDARY {
        return Err(bad("must have 1 to 70 characters"));
    }
    let bchar = |b: u8| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b);
    if !boundary.bytes().all(bchar) {
        return Err(bad("character outside RFC 2046 bchars"));
    }
    if boundary.ends_with(' ') {
        return Err(bad("ends with a space"));
    }
    Ok(())
}

/// A boundary like browsers make: a fixed prefix and 16 random alphanumerics.
pub fn random_boundary(rng: &mut impl rand::Rng) -> String {
    const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let tail: String = (0..16)
        .map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char)
        .collect();
    format!("----HilFormBoundary{tail}")
}

/// The boundary of a `multipart/*` Content-Type header value.
pub fn boundary_from_content_type(content_type: &str) -> Result<String, CodecError> {
    let mut params = content_type.split(';');
    let mime = params.next().unwrap_or_default().trim();
    if !mime.to_ascii_lowercase().starts_with("multipart/") {
        return Err(error(
            0,
            Problem::NotMultipart {
                content_type: content_type.to_string(),
            },
        ));
    }
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        if key.trim().eq_ignore_ascii_case("boundary") {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            validate_boundary(value)?;
            return Ok(value.to_string());
        }
    }
    Err(error(0, Problem::NoBoundary))
}

/// A field or file name as the builder writes it into `Content-Disposition`: browsers' escaping
/// (WHATWG HTML, form submission: `"`, CR and LF percent-encoded), extended to every other ASCII
/// control character, which a header value may not hold (RFC 9110 §5.5), and to `\`, which
/// curl-style senders use as an escape inside the quotes (the parser reads it so). The device
/// does not decode the escapes.
pub fn escape_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '"' || c == '\\' || c.is_ascii_control() {
            out.push_str(&format!("%{:02X}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// A file upload body: head, file bytes, tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUpload {
    boundary: String,
    head: Vec<u8>,
    tail: Vec<u8>,
    file_len: u64,
}

impl FileUpload {
    /// A body with one file part `field` (the update server wants `firmware`) named
    /// `filename`, for a file of `file_len` bytes.
    pub fn new(
        field: &str,
        filename: &str,
        file_len: u64,
        boundary: &str,
    ) -> Result<Self, CodecError> {
        validate_boundary(boundary)?;
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n",
            escape_name(field),
            escape_name(filename)
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        Ok(FileUpload {
            boundary: boundary.to_string(),
            head: head.into_bytes(),
            tail: tail.into_bytes(),
            file_len,
        })
    }

    /// The boundary.
    pub fn boundary(&self) -> &str {
        &self.boundary
    }

    /// The request's `Content-Type` header value. The boundary is quoted when it has characters
    /// a bare parameter value may not (RFC 2046 §5.1.1: space, `(`, `)`, `,`, `/`, `:`, `=`,
    /// `?`); unquoted, a reader would cut or trim it.
    pub fn content_type(&self) -> String {
        let token = self
            .boundary
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"'+-._".contains(&b));
        if token {
            format!("multipart/form-data; boundary={}", self.boundary)
        } else {
            format!("multipart/form-data; boundary=\"{}\"", self.boundary)
        }
    }

    /// The request's `Content-Length`: head + file + tail.
    pub fn content_length(&self) -> u64 {
        self.head.len() as u64 + self.file_len + self.tail.len() as u64
    }

    /// Bytes to send before the file.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Bytes to send after the file.
    pub fn tail(&self) -> &[u8] {
        &self.tail
    }

    /// The whole body for an in-memory file as a sequence of slices: head, the file in
    /// `chunk_size` pieces, tail. Fails if the file's length is not the announced one.
    pub fn chunks<'a>(
        &'a self,
        file: &'a [u8],
        chunk_size: usize,
    ) -> Result<impl Iterator<Item = &'a [u8]> + 'a, CodecError> {
        if file.len() as u64 != self.file_len {
            let problem = Problem::LengthMismatch {
                announced: self.file_len,
                given: file.len() as u64,
            };
            return Err(error(self.head.len() as u64, problem));
        }
        let file_chunks = file.chunks(chunk_size.max(1));
        Ok(std::iter::once(self.head.as_slice())
            .chain(file_chunks)
            .chain([self.tail.as_slice()]))
    }
}

/// A part's headers as the upload handler sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartHeaders {
    /// The form field name (`firmware`, `filesystem`).
    pub name: String,
    /// The file name, for file parts.
    pub filename: Option<String>,
    /// The part's Content-Type, if given.
    pub content_type: Option<String>,
}

/// What the parser found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A part starts (`UPLOAD_FILE_START`).
    PartStart(PartHeaders),
    /// Part data (`UPLOAD_FILE_WRITE`): full blocks, then the rest at the part's end.
    Data(Vec<u8>),
    /// The part ended (`UPLOAD_FILE_END`).
    PartEnd,
    /// The closing boundary; later bytes are epilogue and ignored.
    End,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Preamble,
    AfterDelimiter,
    Headers,
    Body,
    Epilogue,
    Failed(CodecError),
}

/// Incremental `multipart/form-data` parser: feed it byte chunks of any size.
#[derive(Debug, Clone)]
pub struct Parser {
    delimiter: Vec<u8>,
    state: State,
    /// Unconsumed bytes; at most a partial delimiter or a partial header block between feeds.
    buf: Vec<u8>,
    /// Body offset of `buf[0]`; starts at -2 because the parser pretends the body starts with
    /// CRLF, so the opening boundary is found like every other one.
    base: i64,
    block: Vec<u8>,
    block_size: usize,
    part: Option<String>,
}

impl Parser {
    /// A parser for a boundary.
    pub fn new(boundary: &str) -> Result<Self, CodecError> {
        validate_boundary(boundary)?;
        Ok(Parser {
            delimiter: format!("\r\n--{boundary}").into_bytes(),
            state: State::Preamble,
            buf: b"\r\n".to_vec(),
            base: -2,
            block: Vec::new(),
            block_size: DEVICE_UPLOAD_BLOCK,
            part: None,
        })
    }

    /// A parser for the boundary of a request's Content-Type.
    pub fn from_content_type(content_type: &str) -> Result<Self, CodecError> {
        Self::new(&boundary_from_content_type(content_type)?)
    }

    /// Delivers data in blocks of `size` bytes instead of [`DEVICE_UPLOAD_BLOCK`].
    pub fn with_block_size(mut self, size: usize) -> Self {
        self.block_size = size.max(1);
        self
    }

    /// Body bytes fed so far.
    pub fn offset(&self) -> u64 {
        (self.base + self.buf.len() as i64).max(0) as u64
    }

    /// Feeds the next bytes of the body; returns what they completed. After an error every
    /// call returns that error.
    pub fn feed(&mut self, input: &[u8]) -> Result<Vec<Event>, CodecError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        self.buf.extend_from_slice(input);
        let mut events = Vec::new();
        match self.run(&mut events) {
            Ok(()) => Ok(events),
            Err(e) => {
                self.state = State::Failed(e.clone());
                Err(e)
            }
        }
    }

    /// The body ended (Content-Length reached or connection closed). Fine after the closing
    /// boundary; otherwise the upload was cut short (`UPLOAD_FILE_ABORTED` on the device).
    pub fn finish(&mut self) -> Result<(), CodecError> {
        let problem = match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Epilogue => return Ok(()),
            State::Preamble => Problem::NoOpeningBoundary,
            State::Body => Problem::Truncated {
                in_part: self.part.clone(),
            },
            State::AfterDelimiter | State::Headers => Problem::Truncated { in_part: None },
        };
        let e = error(self.offset(), problem);
        self.state = State::Failed(e.clone());
        Err(e)
    }

    fn at(&self, i: usize) -> u64 {
        (self.base + i as i64).max(0) as u64
    }

    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        self.base += n as i64;
    }

    /// Length of the longest suffix of `buf` that is a proper prefix of the delimiter: those
    /// bytes may be the start of a boundary split across feeds.
    fn partial_delimiter(&self) -> usize {
        let max = self.buf.len().min(self.delimiter.len() - 1);
        (1..=max)
            .rev()
            .find(|&k| self.buf.ends_with(&self.delimiter[..k]))
            .unwrap_or(0)
    }

    fn push_data(&mut self, n: usize, events: &mut Vec<Event>) {
        let mut data = &self.buf[..n];
        while !data.is_empty() {
            let take = (self.block_size - self.block.len()).min(data.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.block.len() == self.block_size {
                events.push(Event::Data(std::mem::take(&mut self.block)));
            }
        }
        self.consume(n);
    }

    fn run(&mut self, events: &mut Vec<Event>) -> Result<(), CodecError> {
        loop {
            match self.state {
                State::Preamble => match memmem::find(&self.buf, &self.delimiter) {
                    Some(i) => {
                        self.consume(i + self.delimiter.len());
                        self.state = State::AfterDelimiter;
                    }
                    None => {
                        let keep = self.partial_delimiter();
                        self.consume(self.buf.len() - keep);
                        return Ok(());
                    }
                },
                State::AfterDelimiter => {
                    if self.buf.starts_with(b"--") {
                        self.consume(2);
                        events.push(Event::End);
                        self.state = State::Epilogue;
                        continue;
                    }
                    let pad = self
                        .buf
                        .iter()
                        .take_while(|&&b| b == b' ' || b == b'\t')
                        .count();
                    if pad > MAX_PADDING {
                        return Err(error(self.at(0), Problem::BadDelimiterLine));
                    }
                    let rest = &self.buf[pad..];
                    if rest.starts_with(b"\r\n") {
                        self.consume(pad + 2);
                        self.state = State::Headers;
                        continue;
                    }
                    let undecided = match rest {
                        [] => true,
                        [b'\r'] => true,
                        [b'-'] => pad == 0,
                        _ => false,
                    };
                    if undecided {
                        return Ok(());
                    }
                    return Err(error(self.at(pad), Problem::BadDelimiterLine));
                }
                State::Headers => {
                    let mut storage = [httparse::EMPTY_HEADER; MAX_PART_HEADERS];
                    match httparse::parse_headers(&self.buf, &mut storage) {
                        Ok(httparse::Status::Complete((n, headers))) => {
                            let part = part_headers(headers).map_err(|p| error(self.at(0), p))?;
                            self.part = Some(part.name.clone());
                            events.push(Event::PartStart(part));
                            self.consume(n);
                            self.state = State::Body;
                        }
                        Ok(httparse::Status::Partial) => {
                            if self.buf.len() > MAX_HEADER_BLOCK {
                                return Err(error(self.at(0), Problem::HeaderTooLong));
                            }
                            return Ok(());
                        }
                        Err(e) => {
                            let problem = Problem::BadHeader {
                                reason: e.to_string(),
                            };
                            return Err(error(self.at(0), problem));
                        }
                    }
                }
                State::Body => match memmem::find(&self.buf, &self.delimiter) {
                    Some(i) => {
                        self.push_data(i, events);
                        if !self.block.is_empty() {
                            events.push(Event::Data(std::mem::take(&mut self.block)));
                        }
                        events.push(Event::PartEnd);
                        self.part = None;
                        self.consume(self.delimiter.len());
                        self.state = State::AfterDelimiter;
                    }
                    None => {
                        let keep = self.partial_delimiter();
                        self.push_data(self.buf.len() - keep, events);
                        return Ok(());
                    }
                },
                State::Epilogue => {
                    self.consume(self.buf.len());
                    return Ok(());
                }
                State::Failed(ref e) => return Err(e.clone()),
            }
        }
    }
}

/// Reads name, filename and Content-Type from a part's headers.
fn part_headers(headers: &[httparse::Header<'_>]) -> Result<PartHeaders, Problem> {
    let value = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let disposition = value("Content-Disposition").ok_or(Problem::NoContentDisposition)?;
    let (kind, params) = split_params(&disposition);
    if !kind.eq_ignore_ascii_case("form-data") {
        return Err(Problem::NotFormData { disposition: kind });
    }
    let param = |key: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(key));
    let name = param("name")
        .map(|(_, v)| v.clone())
        .ok_or(Problem::NoName)?;
    let filename = param("filename").map(|(_, v)| v.clone());
    Ok(PartHeaders {
        name,
        filename,
        content_type: value("Content-Type"),
    })
}

/// Splits `type; key=value; key="quoted \" value"` into the type and its parameters.
fn split_params(header: &str) -> (String, Vec<(String, String)>) {
    let mut chars = header.chars().peekable();
    let mut kind = String::new();
    while let Some(&c) = chars.peek() {
        if c == ';' {
            break;
        }
        kind.push(c);
        chars.next();
    }
    let mut params = Vec::new();
    while chars.next() == Some(';') {
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ';' {
                break;
            }
            key.push(c);
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => value.extend(chars.next()),
                        c => value.push(c),
                    }
                }
                while chars.peek().is_some_and(|&c| c != ';') {
                    chars.next();
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ';' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
                value = value.trim().to_string();
            }
        }
        params.push((key.trim().to_string(), value));
    }
    (kind.trim().to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const B: &str = "----HilFormBoundaryAbC123";

    fn parse_all(body: &[u8], cuts: &[usize], block: usize) -> Result<Vec<Event>, CodecError> {
        let mut p = Parser::new(B)?.with_block_size(block);
        let mut events = Vec::new();
        let mut rest = body;
        for &c in cuts {
            let n = c.min(rest.len());
            events.extend(p.feed(&rest[..n])?);
            rest = &rest[n..];
        }
        events.extend(p.feed(rest)?);
        p.finish()?;
        Ok(events)
    }

    /// Joins data events per part: (headers, bytes).
    fn parts(events: &[Event]) -> Vec<(PartHeaders, Vec<u8>)> {
        let mut out: Vec<(PartHeaders, Vec<u8>)> = Vec::new();
        for e in events {
            match e {
                Event::PartStart(h) => out.push((h.clone(), Vec::new())),
                Event::Data(d) => out.last_mut().unwrap().1.extend_from_slice(d),
                Event::PartEnd | Event::End => {}
            }
        }
        out
    }

    #[test]
    fn boundaries_with_spaces_or_separators_are_quoted_in_the_content_type() {
        // Found by fuzzing (multipart_roundtrip): `boundary=  jjj` was trimmed by the reader,
        // which then never found the opening boundary.
        for (boundary, content_type) in [
            (B, format!("multipart/form-data; boundary={B}")),
            (
                "  jjj",
                "multipart/form-data; boundary=\"  jjj\"".to_string(),
            ),
            (
                "a=b?c",
                "multipart/form-data; boundary=\"a=b?c\"".to_string(),
            ),
        ] {
            let up = FileUpload::new("firmware", "fw.bin", 1, boundary).unwrap();
            assert_eq!(up.content_type(), content_type);
            assert_eq!(boundary_from_content_type(&content_type).unwrap(), boundary);
            let body: Vec<u8> = up.chunks(b"z", 1).unwrap().flatten().copied().collect();
            let mut p = Parser::from_content_type(&content_type).unwrap();
            assert!(p.feed(&body).unwrap().contains(&Event::End));
            p.finish().unwrap();
        }
    }

    #[test]
    fn names_with_backslashes_quotes_and_controls_read_back_as_written() {
        // Found by fuzzing (multipart_roundtrip): a name ending in `\` came back as `"; filename=`
        // because the parser takes `\"` as an escaped quote (as curl writes it); the builder now
        // percent-encodes backslashes.
        for (field, filename) in [("\\", ""), ("a\\\"b", "c:\\x\\fw.bin"), ("\u{1a}", "x\0y")] {
            let up = FileUpload::new(field, filename, 1, B).unwrap();
            let body: Vec<u8> = up.chunks(b"z", 1).unwrap().flatten().copied().collect();
            let events = parse_all(&body, &[], 4).unwrap();
            let (headers, data) = parts(&events).remove(0);
            assert_eq!(headers.name, escape_name(field));
            assert_eq!(headers.filename, Some(escape_name(filename)));
            assert_eq!(data, b"z");
        }
        assert_eq!(escape_name("a\"b\r\n\u{1a}\\"), "a%22b%0D%0A%1A%5C");
    }

    #[test]
    fn builder_output_is_what_browsers_send() {
        let up = FileUpload::new("firmware", "sonoff-ota.ino.bin", 3, B).unwrap();
        let body: Vec<u8> = up
            .chunks(b"\xE9\x01\x02", 2)
            .unwrap()
            .flatten()
            .copied()
            .collect();
        let expected = format!(
            "--{B}\r\nContent-Disposition: form-data; name=\"firmware\"; \
             filename=\"sonoff-ota.ino.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n\
             \u{e9}\u{1}\u{2}\r\n--{B}--\r\n"
        );
        // The file bytes are raw, not UTF-8: compare around them.
        let head_len = up.head().len();
        assert_eq!(&body[..head_len], &expected.as_bytes()[..head_len]);
        assert_eq!(&body[head_len..head_len + 3], b"\xE9\x01\x02");
        assert_eq!(&body[head_len + 3..], format!("\r\n--{B}--\r\n").as_bytes());
        assert_eq!(up.content_length(), body.len() as u64);
        assert_eq!(
            up.content_type(),
            format!("multipart/form-data; boundary={B}")
        );
        assert!(matches!(
            up.chunks(b"toolong", 2),
            Err(CodecError::Multipart {
                problem: Problem::LengthMismatch { .. },
                ..
            })
        ));
        let odd = FileUpload::new("firmware", "a\"b\r\n.bin", 0, B).unwrap();
        assert!(String::from_utf8_lossy(odd.head()).contains("filename=\"a%22b%0D%0A.bin\""));
    }

    #[test]
    fn content_type_boundary() {
        assert_eq!(
            boundary_from_content_type(&format!("multipart/form-data; boundary={B}")).unwrap(),
            B
        );
        assert_eq!(
            boundary_from_content_type("Multipart/Form-Data;charset=x; BOUNDARY=\"a b\"").unwrap(),
            "a b"
        );
        let problem = |ct: &str| match boundary_from_content_type(ct) {
            Err(CodecError::Multipart { problem, .. }) => problem,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            problem("text/plain"),
            Problem::NotMultipart { .. }
        ));
        assert_eq!(problem("multipart/form-data"), Problem::NoBoundary);
        assert!(matches!(
            problem("multipart/form-data; boundary="),
            Problem::BadBoundary { .. }
        ));
        assert!(matches!(
            problem(&format!("multipart/form-data; boundary={}", "x".repeat(71))),
            Problem::BadBoundary { .. }
        ));
        assert!(matches!(
            problem("multipart/form-data; boundary=a{b"),
            Problem::BadBoundary { .. }
        ));
    }

    #[test]
    fn parses_a_curl_style_body_with_preamble_fields_and_epilogue() {
        let body = format!(
            "preamble, ignored\r\n--{B}   \r\n\
             Content-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--{B}\r\n\
             content-disposition: form-data; filename=\"f\\\"w.bin\"; name=firmware\r\n\
             Content-Type: application/octet-stream\r\n\r\n\
             0123456789\r\n--{B}--\r\nepilogue"
        );
        let events = parse_all(body.as_bytes(), &[], 4).unwrap();
        assert_eq!(
            events,
            [
                Event::PartStart(PartHeaders {
                    name: "note".into(),
                    filename: None,
                    content_type: None
                }),
                Event::Data(b"hell".to_vec()),
                Event::Data(b"o".to_vec()),
                Event::PartEnd,
                Event::PartStart(PartHeaders {
                    name: "firmware".into(),
                    filename: Some("f\"w.bin".into()),
                    content_type: Some("application/octet-stream".into()),
                }),
                Event::Data(b"0123".to_vec()),
                Event::Data(b"4567".to_vec()),
                Event::Data(b"89".to_vec()),
                Event::PartEnd,
                Event::End,
            ]
        );
    }

    #[test]
    fn near_boundaries_in_the_data_are_data() {
        let data = format!("a\r\n--{}\r\n-{B}x\r\r\n--", &B[..10]);
        let up = FileUpload::new("firmware", "x", data.len() as u64, B).unwrap();
        let body: Vec<u8> = up
            .chunks(data.as_bytes(), 3)
            .unwrap()
            .flatten()
            .copied()
            .collect();
        for cut in 0..body.len() {
            let events = parse_all(&body, &[cut, 1, 1, 5], 2048).unwrap();
            assert_eq!(parts(&events)[0].1, data.as_bytes(), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_bodies_name_problem_and_offset() {
        let err = |body: &str| parse_all(body.as_bytes(), &[], 2048).unwrap_err();
        let opening = format!("--{B}\r\n");
        assert_eq!(
            err(&format!("--{B}xx\r\n")),
            CodecError::Multipart {
                offset: 2 + B.len() as u64,
                problem: Problem::BadDelimiterLine
            }
        );
        assert_eq!(
            err(&format!("{opening}\r\nbody")),
            CodecError::Multipart {
                offset: opening.len() as u64,
                problem: Problem::NoContentDisposition
            }
        );
        assert!(matches!(
            err(&format!(
                "{opening}Content-Disposition: attachment; name=x\r\n\r\n"
            )),
            CodecError::Multipart {
                problem: Problem::NotFormData { .. },
                ..
            }
        ));
        assert!(matches!(
            err(&format!(
                "{opening}Content-Disposition: form-data; filename=x\r\n\r\n"
            )),
            CodecError::Multipart {
                problem: Problem::NoName,
                ..
            }
        ));
        assert!(matches!(
            err(&format!("{opening}Bad Header\r\n\r\n")),
            CodecError::Multipart {
                problem: Problem::BadHeader { .. },
                ..
            }
        ));
        let long = format!("{opening}X-Long: {}\r\n", "y".repeat(MAX_HEADER_BLOCK));
        assert!(matches!(
            err(&long),
            CodecError::Multipart { offset, problem: Problem::HeaderTooLong } if offset == opening.len() as u64
        ));
        let cut = format!("{opening}Content-Disposition: form-data; name=firmware\r\n\r\n12345");
        assert_eq!(
            err(&cut),
            CodecError::Multipart {
                offset: cut.len() as u64,
                problem: Problem::Truncated {
                    in_part: Some("firmware".into())
                }
            }
        );
        assert_eq!(
            err("no boundary at all"),
            CodecError::Multipart {
                offset: 18,
                problem: Problem::NoOpeningBoundary
            }
        );
        // Endless padding after a boundary is refused instead of buffered.
        assert_eq!(
            err(&format!("--{B}{}", " ".repeat(MAX_PADDING + 1))),
            CodecError::Multipart {
                offset: 2 + B.len() as u64,
                problem: Problem::BadDelimiterLine
            }
        );
        // The parser stays failed.
        let mut p = Parser::new(B).unwrap();
        assert!(p.feed(format!("--{B}!").as_bytes()).is_err());
        assert!(p.feed(b"more").is_err());
    }

    proptest! {
        #[test]
        fn round_trip_any_content_any_split(
            file in proptest::collection::vec(any::<u8>(), 0..6000),
            cuts in proptest::collection::vec(0usize..3000, 0..12),
            block in 1usize..4096,
        ) {
            let up = FileUpload::new("firmware", "fw.bin", file.len() as u64, B).unwrap();
            let body: Vec<u8> = up.chunks(&file, 1460).unwrap().flatten().copied().collect();
            prop_assert_eq!(body.len() as u64, up.content_length());
            let events = parse_all(&body, &cuts, block).unwrap();
            let got = parts(&events);
            prop_assert_eq!(got.len(), 1);
            prop_assert_eq!(&got[0].0.name, "firmware");
            prop_assert_eq!(got[0].0.filename.as_deref(), Some("fw.bin"));
            prop_assert_eq!(&got[0].1, &file);
            for e in &events[..events.len() - 3] {
                if let Event::Data(d) = e { prop_assert_eq!(d.len(), block); }
            }
            prop_assert_eq!(events.last(), Some(&Event::End));
        }

        #[test]
        fn never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..400),
            cuts in proptest::collection::vec(0usize..100, 0..6),
        ) {
            let mut p = Parser::new("xy").unwrap().with_block_size(7);
            let mut rest = &body[..];
            for c in cuts {
                let n = c.min(rest.len());
                let _ = p.feed(&rest[..n]);
                rest = &rest[n..];
            }
            let _ = p.feed(rest);
            let _ = p.finish();
        }

        #[test]
        fn structured_garbage_never_panics(
            pieces in proptest::collection::vec(prop_oneof![
                Just(b"--xy".to_vec()), Just(b"\r\n".to_vec()), Just(b"--".to_vec()),
                Just(b"Content-Disposition: form-data; name=\"a\"".to_vec()),
                Just(b"\r\n--xy--".to_vec()), Just(b" ".to_vec()), Just(b"\r".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..5),
            ], 0..30),
        ) {
            let body: Vec<u8> = pieces.concat();
            for split in [1usize, 2, 3, 7] {
                let mut p = Parser::new("xy").unwrap().with_block_size(3);
                for chunk in body.chunks(split) {
                    if p.feed(chunk).is_err() { break; }
                }
                let _ = p.finish();
            }
        }
    }
}
