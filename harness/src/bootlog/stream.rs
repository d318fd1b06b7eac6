//! The streaming line feeder.

use super::{BootLog, Builder, line};

/// Longest line buffered before it is handed on in pieces. Garbage at the wrong baud rate can
/// run for megabytes without a newline; cutting it keeps memory constant. The cuts fall every
/// `MAX_LINE` bytes of a line, wherever the chunks end, so chunking never changes the result.
pub const MAX_LINE: usize = 4096;

/// A streaming boot-log parser: [`feed`](Parser::feed) it chunks, then [`finish`](Parser::finish).
///
/// Lines end at `\n`; a `\r` inside a line also separates parts (terminals and progress output
/// use a bare `\r`), which keep the line's number.
#[derive(Debug, Default)]
pub struct Parser {
    /// The current line's bytes since its start or its last cut; always < `MAX_LINE`.
    partial: Vec<u8>,
    /// Whether the current line was already cut (handed on in part).
    cut: bool,
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
            // The line may take this many more bytes before it is cut.
            let room = MAX_LINE - self.partial.len();
            let window = &bytes[..bytes.len().min(room)];
            match memchr::memchr(b'\n', window) {
                Some(pos) => {
                    self.piece(&window[..pos]);
                    self.line_no += 1;
                    self.cut = false;
                    bytes = &bytes[pos + 1..];
                }
                None if window.len() == room => {
                    self.piece(window);
                    self.cut = true;
                    bytes = &bytes[room..];
                }
                None => {
                    self.partial.extend_from_slice(window);
                    bytes = &[];
                }
            }
        }
    }

    /// Hands on the buffered part of the line followed by `tail`.
    fn piece(&mut self, tail: &[u8]) {
        if self.partial.is_empty() {
            self.line(tail);
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(tail);
            self.line(&buf);
            buf.clear();
            self.partial = buf;
        }
    }

    /// Ends the capture and returns the parsed log.
    pub fn finish(mut self) -> BootLog {
        if !self.partial.is_empty() || self.cut {
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
