//! The streaming line feeder, and the pieces of a parse spread over threads.

use std::ops::Range;

use super::{BOOTS_TAIL, BootLog, Builder, Event, Totals, line};

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

    /// Readies `chunk` for the next read of the capture: it gets the unfinished line carried
    /// over from the last one. Returns the space to read up to `size` bytes into; then call
    /// [`cut`](Parser::cut) with the count read.
    pub fn chunk_space<'c>(&mut self, chunk: &'c mut Chunk, size: usize) -> &'c mut [u8] {
        let carry = self.partial.len();
        let size = size.min(MAX_CHUNK);
        if chunk.buf.len() < carry + size {
            chunk.buf.resize(carry + size, 0);
        }
        chunk.buf[..carry].copy_from_slice(&self.partial);
        chunk.len = carry;
        chunk.lines_end = 0;
        chunk.pieces_end = 0;
        chunk.lines = 0;
        chunk.events.clear();
        chunk.skipped = None;
        // The parser may have more boots by the time the chunk comes back, never fewer.
        chunk.may_skip = self.builder.head_full();
        &mut chunk.buf[carry..carry + size]
    }

    /// Closes `chunk` after `n` bytes were read into the space [`chunk_space`](Parser::chunk_space)
    /// gave: it then holds the whole lines, and the unfinished last one stays with the parser
    /// for the next chunk (or is cut off as a piece, as [`feed`](Parser::feed) cuts lines
    /// longer than [`MAX_LINE`]).
    pub fn cut(&mut self, chunk: &mut Chunk, n: usize) {
        let start = chunk.len;
        chunk.len = start + n;
        self.bytes += n as u64;
        let bytes = &chunk.buf[..chunk.len];
        // The carried-over bytes hold no newline, so only the new ones need a look.
        chunk.lines_end = memchr::memrchr(b'\n', &bytes[start..]).map_or(0, |p| start + p + 1);
        // The unfinished last line is cut every MAX_LINE bytes, as `feed` cuts it: the full
        // pieces are classified with this chunk, the rest is carried over.
        let rest = bytes.len() - chunk.lines_end;
        let full = rest / MAX_LINE * MAX_LINE;
        chunk.pieces_end = chunk.lines_end + full;
        self.cut = full > 0 || (self.cut && chunk.lines_end == 0);
        self.partial.clear();
        self.partial.extend_from_slice(&bytes[chunk.pieces_end..]);
    }

    /// Adds the events of a classified chunk. Chunks must come in the order they were cut.
    pub fn add(&mut self, chunk: &mut Chunk) {
        let bytes = &chunk.buf[..chunk.len];
        // The events before and after the boots summed up, if any.
        let (before, after) = match &chunk.skipped {
            Some(s) => (
                &chunk.events[..s.events.start],
                &chunk.events[s.events.end..],
            ),
            None => (&chunk.events[..], &[][..]),
        };
        // By reference, and cloned into the boot's record: moving each event out first
        // copies it into a temporary that the next step reads back in other widths, and the
        // processor stalls on that.
        let add = |builder: &mut Builder, events: &[(u32, Event, Range<u32>)]| {
            for (index, event, text) in events {
                let number = self.line_no + u64::from(*index) + 1;
                let text = &bytes[text.start as usize..text.end as usize];
                builder.event(number, event, text);
            }
        };
        add(&mut self.builder, before);
        if let Some(s) = &chunk.skipped {
            self.builder.skip(s.boots, &s.totals);
        }
        add(&mut self.builder, after);
        chunk.events.clear();
        self.line_no += chunk.lines;
    }

    fn line(&mut self, bytes: &[u8]) {
        let number = self.line_no + 1;
        let builder = &mut self.builder;
        line::parse_line(bytes, &mut |event, text: &[u8]| {
            builder.event(number, &event, text)
        });
    }
}

/// Largest read a chunk takes, so that offsets in it fit in a `u32`.
const MAX_CHUNK: usize = 1 << 30;

/// Whole lines of a capture, to classify on any thread: the unit of a parse spread over threads.
///
/// Classifying a line is a pure function of its bytes and most of the cost of a parse, while
/// grouping events into boots needs them in capture order. So one thread reads into chunks
/// ([`Parser::chunk_space`], [`Parser::cut`]), any thread runs [`classify`](Chunk::classify),
/// and the parser takes the results back in the order the chunks were cut ([`Parser::add`]).
/// The log is the same as [`Parser::feed`] gives for the same reads.
#[derive(Debug, Default)]
pub struct Chunk {
    /// The unfinished line carried over from the last chunk, then one read; reused.
    buf: Vec<u8>,
    /// Bytes of `buf` in use.
    len: usize,
    /// End of the whole lines: just past the last newline.
    lines_end: usize,
    /// End of the pieces of the unfinished last line that are cut off (every [`MAX_LINE`]
    /// bytes) and parsed with this chunk.
    pieces_end: usize,
    /// Whole lines classified.
    lines: u64,
    /// Each event with its line (counted from the chunk's first) and the range of its text.
    events: Vec<(u32, Event, Range<u32>)>,
    /// Whether boots the log certainly drops may be summed up rather than handed on: not
    /// while the parser still takes in its first boots, which it keeps whatever follows.
    may_skip: bool,
    /// The boots summed up, if any.
    skipped: Option<Skipped>,
}

/// Boots of a chunk that the log drops whatever else the capture holds, summed up.
///
/// The log keeps the last [`BOOTS_TAIL`] boots, and a boot leaves that ring when the
/// `BOOTS_TAIL + 1`-th boot after it starts. So a boot followed by that many banners in its own
/// chunk is certainly dropped, and only its counts matter. In a boot loop, most boots of a chunk
/// are such boots; summing them up in the worker spares the parser collecting their records.
#[derive(Debug)]
struct Skipped {
    /// Their events.
    events: Range<usize>,
    /// How many.
    boots: u64,
    /// What their events add to the totals.
    totals: Totals,
}

impl Chunk {
    /// Finds the events of the chunk's lines.
    pub fn classify(&mut self) {
        let Chunk {
            buf,
            len,
            lines_end,
            pieces_end,
            lines,
            events,
            ..
        } = self;
        events.clear();
        let bytes = &buf[..*len];
        let mut sink = ChunkSink {
            bytes,
            events,
            index: 0,
            open: false,
        };
        let mut start = 0;
        while let Some(p) = memchr::memchr(b'\n', &bytes[start..*lines_end]) {
            // Like `Parser::feed`, a line longer than MAX_LINE is parsed in pieces that keep
            // its number.
            for piece in bytes[start..start + p].chunks(MAX_LINE) {
                sink.line(piece);
            }
            sink.index += 1;
            start += p + 1;
        }
        for piece in bytes[*lines_end..*pieces_end].chunks(MAX_LINE) {
            sink.line(piece);
        }
        let index = sink.index;
        *lines = u64::from(index);
        if self.may_skip {
            self.skipped = skip_dropped_boots(&self.events);
        }
    }
}

/// Finds the boots that more than [`BOOTS_TAIL`] later boots of the same chunk push out of the
/// log, and sums up their events.
fn skip_dropped_boots(events: &[(u32, Event, Range<u32>)]) -> Option<Skipped> {
    let is_banner = |e: &(u32, Event, Range<u32>)| matches!(e.1, Event::RomBanner(_));
    let banners = events.iter().filter(|e| is_banner(e)).count();
    // Banner `j` (from 0) starts a dropped boot when `j + BOOTS_TAIL + 1 <= banners - 1`.
    let boots = banners.checked_sub(BOOTS_TAIL + 1).filter(|&n| n > 0)?;
    let mut starts = events
        .iter()
        .enumerate()
        .filter(|(_, e)| is_banner(e))
        .map(|(i, _)| i);
    let first = starts.next()?;
    // The banner of the first boot kept.
    let end = starts.nth(boots - 1)?;
    let mut totals = Totals::default();
    for (_, event, _) in &events[first..end] {
        totals.count(event);
    }
    Some(Skipped {
        events: first..end,
        boots: boots as u64,
        totals,
    })
}

/// Puts the events of a chunk's lines into its list, each built in place (see [`line::Sink`]).
struct ChunkSink<'a> {
    bytes: &'a [u8],
    events: &'a mut Vec<(u32, Event, Range<u32>)>,
    /// The line being parsed, counted from the chunk's first.
    index: u32,
    /// The last entry of `events` is a slot handed out and not yet committed.
    open: bool,
}

impl ChunkSink<'_> {
    fn line(&mut self, line: &[u8]) {
        line::parse_into(line, self);
        if self.open {
            // A slot the line did not need.
            self.events.pop();
            self.open = false;
        }
    }
}

impl line::Sink for ChunkSink<'_> {
    fn slot(&mut self) -> &mut Event {
        if !self.open {
            let index = self.index;
            // Built in place: `push` builds the entry on the stack and copies it over.
            self.events
                .extend(std::iter::once_with(|| (index, Event::Text, 0..0)));
            self.open = true;
        }
        let last = self.events.len() - 1;
        &mut self.events[last].1
    }

    fn commit(&mut self, text: &[u8]) {
        let range = text_range(self.bytes, text);
        if let Some(last) = self.events.last_mut() {
            last.2 = range;
        }
        self.open = false;
    }
}

/// Where `text` lies in `bytes`. The line parser only ever shows parts of the line it was
/// given; should that change, an empty text stands in rather than a wrong one.
fn text_range(bytes: &[u8], text: &[u8]) -> Range<u32> {
    let start = text.as_ptr().addr().wrapping_sub(bytes.as_ptr().addr());
    if start <= bytes.len() && text.len() <= bytes.len() - start {
        start as u32..(start + text.len()) as u32
    } else {
        debug_assert!(false, "the line parser showed text outside its line");
        0..0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootlog::BOOTS_HEAD;

    #[test]
    fn a_chunk_sums_up_the_boots_it_certainly_drops() {
        let boot = b"ets Jan  8 2013,rst cause:2, boot mode:(3,6)\nload 0x4010f000, len 1384, room 16\nException (3):\n\xff\xfe\xfd\n";
        let mut parser = Parser::new();
        // Fill the first boots, which are kept whatever follows (the one still open is not in
        // yet).
        for _ in 0..=BOOTS_HEAD {
            parser.feed(boot);
        }
        let mut fed = Parser::new();
        for _ in 0..=BOOTS_HEAD + 300 {
            fed.feed(boot);
        }

        let bytes = boot.repeat(300);
        let mut chunk = Chunk::default();
        parser
            .chunk_space(&mut chunk, bytes.len())
            .copy_from_slice(&bytes);
        parser.cut(&mut chunk, bytes.len());
        chunk.classify();
        let skipped = chunk.skipped.as_ref().expect("boots to sum up");
        // 300 boots, the last 225 of which may still be in the log when the chunk ends.
        assert_eq!(skipped.boots, 300 - (BOOTS_TAIL as u64 + 1));
        assert_eq!(skipped.totals.boots, skipped.boots);
        assert_eq!(skipped.totals.crashes, skipped.boots);
        assert_eq!(skipped.totals.rst_causes[2], skipped.boots);
        assert_eq!(skipped.totals.garbage_bytes, 3 * skipped.boots);
        assert_eq!(skipped.events.len(), 4 * skipped.boots as usize);
        parser.add(&mut chunk);
        assert_eq!(parser.finish(), fed.finish());
    }

    #[test]
    fn the_first_boots_are_never_summed_up() {
        let boot = b"ets Jan  8 2013,rst cause:2, boot mode:(3,6)\nld\n";
        let bytes = boot.repeat(1000);
        let mut parser = Parser::new();
        let mut chunk = Chunk::default();
        parser
            .chunk_space(&mut chunk, bytes.len())
            .copy_from_slice(&bytes);
        parser.cut(&mut chunk, bytes.len());
        chunk.classify();
        assert!(chunk.skipped.is_none());
        parser.add(&mut chunk);
        assert_eq!(parser.finish(), crate::bootlog::parse(&bytes));
    }

    #[test]
    fn text_ranges_point_into_the_chunk() {
        let bytes = b"0123456789";
        assert_eq!(text_range(bytes, &bytes[2..5]), 2..5);
        assert_eq!(text_range(bytes, &bytes[10..]), 10..10);
        assert_eq!(text_range(bytes, &bytes[..]), 0..10);
    }
}
