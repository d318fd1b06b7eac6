//! The streaming line feeder.

use super::{BootLog, Builder, line};

/// Longest line buffered before it is handed on in pieces. Garbage at the wrong baud rate can
/// run for megabytes without a newline; cutting it keeps memory constant.
pub const MAX_LINE: usize = 4096;

/// A streaming boot-log parser: [`feed`](Parser::feed) it chunks, then [`finish`](Parser::finish).
///
/// Lines end at `\n`; a `\r` inside a line also separates parts (terminals and progress output
/// use a bare `\r`), which keep the line's number.
#[derive(Debug, Default)]
pub struct Parser {
    partial: Vec<u8>,
    line_no: u64,
    bytes: u64,
    builder: Builder,
}

impl Parser {
    /// A parser at the start of a capture.
    pub fn new() -> Self {
        Parser {
            partial: Vec::with_capacity(256),
            ..Default::default()
        }
    }

    /// Feeds the next bytes of the capture.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        self.bytes += bytes.len() as u64;
        while !bytes.is_empty() {
            match memchr::memchr(b'\n', bytes) {
                Some(pos) => {
                    let (line, rest) = (&bytes[..pos], &bytes[pos + 1..]);
                    if self.partial.is_empty() {
                        self.line(line);
                    } else {
                        let mut buf = std::mem::take(&mut self.partial);
                        buf.extend_from_slice(line);
                        self.line(&buf);
                        buf.clear();
                        self.partial = buf;
                    }
                    self.line_no += 1;
                    bytes = rest;
                }
                None => {
                    self.partial.extend_from_slice(bytes);
                    if self.partial.len() > MAX_LINE {
                        let buf = std::mem::take(&mut self.partial);
                        self.line(&buf);
                        self.partial = buf;
                        self.partial.clear();
                    }
                    bytes = &[];
                }
            }
        }
    }

    /// Ends the capture and returns the parsed log.
    pub fn finish(mut self) -> BootLog {
        if !self.partial.is_empty() {
            let buf = std::mem::take(&mut self.partial);
            self.line(&buf);
            self.line_no += 1;
        }
        self.builder.finish(self.line_no, self.bytes)
    }

    fn line(&mut self, bytes: &[u8]) {
        let number = self.line_no + 1;
        let builder = &mut self.builder;
        line::parse_line(bytes, &mut |event, text: &[u8]| {
            builder.event(number, event, text)
        });
    }
}
