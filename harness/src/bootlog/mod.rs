//! Boot-log parser: turns a serial capture into boots and events.
//!
//! Pure over bytes: no I/O, no clock. [`parse`] takes a whole capture; [`Parser`] takes it in
//! chunks of any size (a serial port, a file of gigabytes) in constant memory. Any bytes are
//! accepted: lines cut short, NULs, CR/LF mixes, invalid UTF-8 and runs of line noise all
//! become events, never errors.
//!
//! A capture is a sequence of [`Boot`]s: each starts at a ROM banner (`ets Jan  8 2013,rst
//! cause:..`), and what comes before the first banner is boot 0 without a banner. Every line
//! becomes one or more [`Event`]s (see [`event`]); lines the parser does not know are kept as
//! [`Event::Text`] with their line number.
//!
//! Memory stays bounded however long the capture is: a boot keeps its first and last
//! [`RECORDS_HEAD`]/[`RECORDS_TAIL`] records, and the log keeps the first [`BOOTS_HEAD`] and the
//! last [`BOOTS_TAIL`] boots, counting what it drops.
//!
//! Classifying lines is most of the work and needs nothing but the line, so a caller with
//! threads can spread it: [`Chunk`] holds whole lines of one read, classified anywhere and
//! handed back to the [`Parser`] in order, for the same log. The module itself stays pure.

pub mod event;
mod line;
mod stream;

use std::collections::VecDeque;

use serde::Serialize;

pub use event::{
    Banner, BootMode, BootSource, Event, PostmortemKind, Registers, RstCause, UpdateEvent,
};
pub use stream::{Chunk, MAX_LINE, Parser};

/// Records kept from the start of a boot.
pub const RECORDS_HEAD: usize = 96;
/// Records kept from the end of a boot.
pub const RECORDS_TAIL: usize = 96;
/// Boots kept from the start of a capture.
pub const BOOTS_HEAD: usize = 32;
/// Boots kept from the end of a capture.
pub const BOOTS_TAIL: usize = 224;
/// Stack-dump lines kept per boot (a dump can be hundreds of lines).
pub const STACK_WORDS_KEPT: usize = 48;

/// One event with the line it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// 1-based line number in the capture.
    pub line: u64,
    /// What the line means.
    pub event: Event,
    /// The line's text (lossy UTF-8, cut to a readable length; garbage is escaped).
    pub text: String,
}

/// One boot: from a ROM banner to the next (or from the start of the capture to the first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Boot {
    /// 0-based position in the capture; boot 0 has no banner when the capture started mid-run.
    pub index: u64,
    /// The banner that started it, if any.
    pub banner: Option<Banner>,
    /// First line of the boot.
    pub first_line: u64,
    /// Last line of the boot.
    pub last_line: u64,
    records: Vec<Record>,
    /// Records dropped from the middle of a long boot (between the kept head and tail).
    pub omitted: u64,
    /// Lines of application text.
    pub text_lines: u64,
    /// Bytes of garbage.
    pub garbage_bytes: u64,
    /// Bytes of text since the last boot-stage or crash event, or since the last line with a
    /// word in it.
    pub trailing_text_bytes: u64,
    /// Bytes of garbage since the last boot-stage or crash event, or since the last line with a
    /// word in it: output that stays unreadable to the end of the boot.
    pub trailing_garbage_bytes: u64,
}

impl Boot {
    /// The records kept, in capture order.
    pub fn records(&self) -> impl DoubleEndedIterator<Item = &Record> + Clone {
        self.records.iter()
    }

    /// The events kept, in capture order.
    pub fn events(&self) -> impl DoubleEndedIterator<Item = &Event> + Clone {
        self.records().map(|r| &r.event)
    }

    /// Where the ROM booted from, according to the banner.
    pub fn source(&self) -> Option<BootSource> {
        self.banner.and_then(|b| b.boot_mode).map(BootMode::source)
    }

    /// The reset cause of its banner.
    pub fn rst_cause(&self) -> Option<RstCause> {
        self.banner.and_then(|b| b.rst_cause)
    }
}

/// Counts over every boot of the capture, including boots not kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Boots (banners) seen.
    pub boots: u64,
    /// Boots dropped from the middle of a long capture.
    pub boots_omitted: u64,
    /// Lines in the capture.
    pub lines: u64,
    /// Bytes in the capture.
    pub bytes: u64,
    /// Bytes of garbage.
    pub garbage_bytes: u64,
    /// Banners per ROM reset cause 0..=6 (index 7: any other).
    pub rst_causes: [u64; 8],
    /// Banners in UART download mode (X=1).
    pub download_mode_boots: u64,
    /// Crash dumps (exceptions, soft WDT, other postmortems).
    pub crashes: u64,
}

impl Totals {
    /// Counts what an event adds to the totals (all but lines, bytes and dropped boots).
    #[inline]
    fn count(&mut self, event: &Event) {
        match event {
            Event::RomBanner(b) => {
                self.boots += 1;
                let cause = b.rst_cause.map_or(7, |c| usize::from(c.code()).min(7));
                self.rst_causes[cause] += 1;
                if b.boot_mode.map(BootMode::source) == Some(BootSource::UartDownload) {
                    self.download_mode_boots += 1;
                }
            }
            // A soft WDT dump also prints `Exception (4)` in newer cores; that counts twice,
            // which only matters for the total.
            Event::Exception { .. } | Event::Postmortem(_) | Event::SoftWdt => {
                self.crashes += 1;
            }
            Event::Garbage { bytes } => self.garbage_bytes += u64::from(*bytes),
            _ => {}
        }
    }

    /// Adds counts made by [`count`](Totals::count).
    fn add(&mut self, other: &Totals) {
        self.boots += other.boots;
        for (mine, theirs) in self.rst_causes.iter_mut().zip(other.rst_causes) {
            *mine += theirs;
        }
        self.download_mode_boots += other.download_mode_boots;
        self.crashes += other.crashes;
        self.garbage_bytes += other.garbage_bytes;
    }
}

/// A parsed capture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BootLog {
    /// Boots kept (see the module docs), in capture order.
    pub boots: Vec<Boot>,
    /// Counts over the whole capture.
    pub totals: Totals,
}

impl BootLog {
    /// Every kept record, in order.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.boots.iter().flat_map(Boot::records)
    }

    /// The last boot that started with a banner.
    pub fn last_banner_boot(&self) -> Option<&Boot> {
        self.boots.iter().rev().find(|b| b.banner.is_some())
    }
}

/// Parses a whole capture held in memory.
pub fn parse(bytes: &[u8]) -> BootLog {
    let mut p = Parser::new();
    p.feed(bytes);
    p.finish()
}

/// Parses one line (without its `\n`) and calls `emit` with each event and the bytes that show
/// it, for consumers that see a live stream one line at a time (the capture's baud follower).
/// The same rules as [`parse`]; a line can yield several events (`@cp:0` + `ld`, garbage + a
/// banner).
pub fn parse_line(line: &[u8], mut emit: impl FnMut(Event, &[u8])) {
    line::parse_line(line, &mut emit);
}
/// Bytes a reader is asked for at a time: a chunk of a few thousand lines. Larger chunks let more
/// boots of a boot loop be summed up rather than collected (see [`Chunk`]); the chunks in
/// flight of a parse over threads stay a few MB.
pub const READ_SIZE: usize = 256 * 1024;

/// Parses a capture from a reader in fixed-size chunks: constant memory for any length.
pub fn parse_reader(mut reader: impl std::io::Read) -> std::io::Result<BootLog> {
    let mut parser = Parser::new();
    let mut chunk = Chunk::default();
    loop {
        let space = parser.chunk_space(&mut chunk, READ_SIZE);
        match reader.read(space) {
            Ok(0) => return Ok(parser.finish()),
            Ok(n) => {
                parser.cut(&mut chunk, n);
                chunk.classify();
                parser.add(&mut chunk);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A record while its boot is being collected: the text stays raw bytes in the boot's arena
/// until the capture ends, so the hot path copies bytes and allocates nothing.
#[derive(Debug)]
struct RawRecord {
    line: u64,
    event: Event,
    text: std::ops::Range<usize>,
}

/// A boot while it is being collected.
#[derive(Debug, Default)]
struct BootBuf {
    index: u64,
    banner: Option<Banner>,
    first_line: u64,
    last_line: u64,
    head: Vec<RawRecord>,
    head_text: Vec<u8>,
    /// Ring of the last records; each keeps its own text buffer, reused when it is overwritten.
    tail: VecDeque<(RawRecord, Vec<u8>)>,
    omitted: u64,
    text_lines: u64,
    garbage_bytes: u64,
    trailing_text_bytes: u64,
    trailing_garbage_bytes: u64,
    stack_words: usize,
}

/// Longest raw text kept per record (enough for [`line::EVIDENCE_CHARS`] characters).
const RAW_TEXT_BYTES: usize = line::EVIDENCE_CHARS * 4;

impl BootBuf {
    fn reset(&mut self, index: u64, banner: Option<Banner>, line: u64) {
        self.index = index;
        self.banner = banner;
        self.first_line = line;
        self.last_line = line;
        self.head.clear();
        self.head_text.clear();
        self.tail.clear();
        self.omitted = 0;
        self.text_lines = 0;
        self.garbage_bytes = 0;
        self.trailing_text_bytes = 0;
        self.trailing_garbage_bytes = 0;
        self.stack_words = 0;
    }

    fn is_empty(&self) -> bool {
        self.banner.is_none() && self.head.is_empty() && self.garbage_bytes == 0
    }

    #[inline(always)]
    fn push(&mut self, line: u64, event: &Event, bytes: &[u8]) {
        self.last_line = line;
        let bytes = &bytes[..bytes.len().min(RAW_TEXT_BYTES)];
        if self.head.len() < RECORDS_HEAD {
            let start = self.head_text.len();
            self.head_text.extend_from_slice(bytes);
            let end = self.head_text.len();
            self.head.extend(std::iter::once_with(|| RawRecord {
                line,
                event: event.clone(),
                text: start..end,
            }));
            return;
        }
        let mut buf = if self.tail.len() == RECORDS_TAIL {
            self.omitted += 1;
            self.tail.pop_front().map(|(_, b)| b).unwrap_or_default()
        } else {
            Vec::new()
        };
        buf.clear();
        buf.extend_from_slice(bytes);
        self.tail.push_back((
            RawRecord {
                line,
                event: event.clone(),
                text: 0..bytes.len(),
            },
            buf,
        ));
    }

    /// Turns the raw records into a public [`Boot`].
    fn materialize(&self) -> Boot {
        let mut records = Vec::with_capacity(self.head.len() + self.tail.len());
        for r in &self.head {
            records.push(record(r, &self.head_text[r.text.clone()]));
        }
        for (r, buf) in &self.tail {
            records.push(record(r, buf));
        }
        Boot {
            index: self.index,
            banner: self.banner,
            first_line: self.first_line,
            last_line: self.last_line,
            records,
            omitted: self.omitted,
            text_lines: self.text_lines,
            garbage_bytes: self.garbage_bytes,
            trailing_text_bytes: self.trailing_text_bytes,
            trailing_garbage_bytes: self.trailing_garbage_bytes,
        }
    }
}

fn record(r: &RawRecord, bytes: &[u8]) -> Record {
    let mut text = String::new();
    evidence_text(&r.event, bytes, &mut text);
    Record {
        line: r.line,
        event: r.event.clone(),
        text,
    }
}

/// Groups events into boots, keeping memory bounded.
#[derive(Debug, Default)]
#[allow(
    clippy::vec_box,
    reason = "a boot loop passes a boot through `current`, the ring and the pool every dozen \
              lines; moving a pointer is cheaper than moving the buffer's fields"
)]
pub(crate) struct Builder {
    current: Option<Box<BootBuf>>,
    head: Vec<Box<BootBuf>>,
    tail: VecDeque<Box<BootBuf>>,
    totals: Totals,
    next_index: u64,
    /// Buffers of dropped boots, reused so that a boot loop does not allocate per boot.
    pool: Vec<Box<BootBuf>>,
}

impl Builder {
    #[inline(always)]
    pub(crate) fn event(&mut self, line_no: u64, event: &Event, bytes: &[u8]) {
        self.totals.count(event);
        if let Event::RomBanner(b) = event {
            self.start_boot(Some(*b), line_no);
        }
        if self.current.is_none() {
            self.start_boot(None, line_no);
        }
        let Some(boot) = self.current.as_mut() else {
            return;
        };
        match event {
            Event::Text | Event::Identity | Event::Update(_) => {
                boot.text_lines += 1;
                // Output at the wrong rate also yields short ASCII-only fragments; only a line
                // with a word in it shows that the output became readable again.
                if has_word(bytes) {
                    boot.trailing_garbage_bytes = 0;
                    boot.trailing_text_bytes = bytes.len() as u64;
                } else {
                    boot.trailing_text_bytes += bytes.len() as u64;
                }
            }
            Event::Garbage { bytes: n } => {
                boot.garbage_bytes += u64::from(*n);
                boot.trailing_garbage_bytes += u64::from(*n);
            }
            Event::StackWords { .. } => {
                boot.stack_words += 1;
                if boot.stack_words > STACK_WORDS_KEPT {
                    boot.omitted += 1;
                    boot.last_line = line_no;
                    return;
                }
            }
            _ => {
                boot.trailing_text_bytes = 0;
                boot.trailing_garbage_bytes = 0;
            }
        }
        boot.push(line_no, event, bytes);
    }

    /// Whether the first boots, which are kept whatever follows, are all in.
    pub(crate) fn head_full(&self) -> bool {
        self.head.len() == BOOTS_HEAD
    }

    /// Counts `boots` boots that start here and that the log certainly drops (more than
    /// [`BOOTS_TAIL`] boots follow them; see `Chunk`), with the `totals` of their events,
    /// without collecting them. The log comes out as if their events had been added one by
    /// one: the boot before them ends, and each of them would have passed through the ring
    /// and out of it.
    pub(crate) fn skip(&mut self, boots: u64, totals: &Totals) {
        debug_assert!(self.head_full(), "the first boots are never skipped");
        if let Some(done) = self.current.take() {
            self.keep(done);
        }
        self.next_index += boots;
        self.totals.boots_omitted += boots;
        self.totals.add(totals);
    }

    fn start_boot(&mut self, banner: Option<Banner>, line_no: u64) {
        if let Some(done) = self.current.take() {
            self.keep(done);
        }
        let mut boot = self.pool.pop().unwrap_or_default();
        boot.reset(self.next_index, banner, line_no);
        self.current = Some(boot);
        self.next_index += 1;
    }

    fn keep(&mut self, boot: Box<BootBuf>) {
        if boot.is_empty() {
            self.pool.push(boot);
            return;
        }
        if self.head.len() < BOOTS_HEAD {
            self.head.push(boot);
            return;
        }
        if self.tail.len() == BOOTS_TAIL
            && let Some(old) = self.tail.pop_front()
        {
            self.totals.boots_omitted += 1;
            self.pool.push(old);
        }
        self.tail.push_back(boot);
    }

    pub(crate) fn finish(mut self, lines: u64, bytes: u64) -> BootLog {
        if let Some(done) = self.current.take() {
            self.keep(done);
        }
        self.totals.lines = lines;
        self.totals.bytes = bytes;
        let boots = self
            .head
            .iter()
            .chain(self.tail.iter())
            .map(|b| b.materialize())
            .collect();
        BootLog {
            boots,
            totals: self.totals,
        }
    }
}

/// Whether the bytes hold a run of four ASCII letters.
fn has_word(bytes: &[u8]) -> bool {
    let mut run = 0;
    for &b in bytes {
        if b.is_ascii_alphabetic() {
            run += 1;
            if run == 4 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// Writes the evidence form of a line: lossy UTF-8 cut to [`line::EVIDENCE_CHARS`], or for
/// garbage a note with the first bytes escaped (raw noise is unreadable and may hold control
/// codes that upset terminals).
fn evidence_text(event: &Event, bytes: &[u8], out: &mut String) {
    use std::fmt::Write;
    if let Event::Garbage { bytes: n } = event {
        let _ = write!(out, "<{n} bytes of garbage: ");
        for &b in bytes.iter().take(12) {
            let _ = write!(out, "{b:02x}");
        }
        out.push_str(if bytes.len() > 12 { "...>" } else { ">" });
        return;
    }
    // Fast path: short printable ASCII, the bulk of every capture.
    if bytes.len() <= line::EVIDENCE_CHARS
        && bytes.iter().all(|&c| (0x20..0x7f).contains(&c))
        && let Ok(text) = std::str::from_utf8(bytes)
    {
        out.push_str(text);
        return;
    }
    for (i, c) in String::from_utf8_lossy(bytes).chars().enumerate() {
        if i == line::EVIDENCE_CHARS {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { '\u{fffd}' } else { c });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_4CH: &[u8] = b" ets Jan  8 2013,rst cause:1, boot mode:(3,7)\r\n\r\n load 0x4010f000, len 1384, room 16 \r\n tail 8\r\n chksum 0x2d\r\n csum 0x2d\r\n v3ffe903d\r\n @cp:0\r\n ld\r\n ) \r\n";

    #[test]
    fn seed_4ch_boot() {
        let log = parse(SEED_4CH);
        assert_eq!(log.boots.len(), 1);
        let boot = &log.boots[0];
        assert_eq!(boot.rst_cause(), Some(RstCause::PowerOn));
        assert_eq!(boot.source(), Some(BootSource::Flash));
        let ev: Vec<_> = boot.events().cloned().collect();
        assert!(ev.contains(&Event::EbootVersion(0x3ffe903d)));
        assert!(ev.contains(&Event::EbootCopy { result: Some(0) }));
        assert!(ev.contains(&Event::EbootLoad));
        assert_eq!(boot.records().next().unwrap().line, 1);
        let ld = boot
            .records()
            .find(|r| r.event == Event::EbootLoad)
            .unwrap();
        assert_eq!(ld.line, 9);
        assert_eq!(log.totals.lines, 10);
    }

    #[test]
    fn chunking_does_not_change_the_result() {
        let whole = parse(SEED_4CH);
        for size in [1, 2, 3, 7, 64] {
            let mut p = Parser::new();
            for chunk in SEED_4CH.chunks(size) {
                p.feed(chunk);
            }
            assert_eq!(p.finish(), whole, "chunk size {size}");
        }
    }

    #[test]
    fn long_lines_are_cut_at_the_same_places_whatever_the_chunks() {
        // Found by fuzzing (fixtures/fuzz-regressions/bootlog): fed at once, a 6000-byte line
        // was one piece; fed in chunks, it was cut where the buffer first passed 4096 bytes.
        let mut capture = b"ets Jan  8 2013,rst cause:2, boot mode:(3,6)\r\n".to_vec();
        capture.extend(std::iter::repeat_n(0xFE, 6000));
        capture.extend_from_slice(b"\r\nwdt reset\r\n");
        capture.extend(std::iter::repeat_n(b'x', stream::MAX_LINE));
        let whole = parse(&capture);
        let garbage: Vec<_> = whole
            .records()
            .filter_map(|r| match r.event {
                Event::Garbage { bytes } => Some((r.line, bytes)),
                _ => None,
            })
            .collect();
        assert_eq!(garbage, [(2, 4096), (2, 1904)]);
        assert_eq!(
            whole.totals.lines, 4,
            "a last line of exactly MAX_LINE bytes counts"
        );
        for size in [1, 7, 3000, 4095, 4097, 5000] {
            let mut p = Parser::new();
            for chunk in capture.chunks(size) {
                p.feed(chunk);
            }
            assert_eq!(p.finish(), whole, "chunk size {size}");
        }
    }

    #[test]
    fn text_before_first_banner_is_boot_zero() {
        let log = parse(b"hello\nets Jan  8 2013,rst cause:2, boot mode:(3,6)\n");
        assert_eq!(log.boots.len(), 2);
        assert!(log.boots[0].banner.is_none());
        assert_eq!(log.boots[0].records().next().unwrap().text, "hello");
        assert_eq!(log.boots[1].index, 1);
    }

    #[test]
    fn long_captures_stay_bounded() {
        let mut p = Parser::new();
        let boot = b"ets Jan  8 2013,rst cause:2, boot mode:(3,6)\nload 0x4010f000, len 1384, room 16\n~ld\napp line\n";
        for _ in 0..5000 {
            p.feed(boot);
        }
        let log = p.finish();
        assert_eq!(log.totals.boots, 5000);
        assert_eq!(log.boots.len(), BOOTS_HEAD + BOOTS_TAIL);
        assert_eq!(
            log.totals.boots_omitted,
            5000 - (BOOTS_HEAD + BOOTS_TAIL) as u64
        );
        assert_eq!(log.boots.last().unwrap().index, 4999);
        let mut p = Parser::new();
        for i in 0..10_000 {
            p.feed(format!("app output line {i}\n").as_bytes());
        }
        let log = p.finish();
        let boot = &log.boots[0];
        assert_eq!(boot.records().count(), RECORDS_HEAD + RECORDS_TAIL);
        assert_eq!(boot.omitted, 10_000 - (RECORDS_HEAD + RECORDS_TAIL) as u64);
        assert_eq!(boot.records().last().unwrap().text, "app output line 9999");
        assert_eq!(boot.records().last().unwrap().line, 10_000);
    }

    #[test]
    fn garbage_evidence_is_escaped() {
        let log = parse(b"\x80\x81\x82\x83\x84\x85\n");
        let r = log.records().next().unwrap();
        assert_eq!(r.event, Event::Garbage { bytes: 6 });
        assert_eq!(r.text, "<6 bytes of garbage: 808182838485>");
    }
}
