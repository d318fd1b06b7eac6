//! nom parsers for single lines of a capture.
//!
//! Every parser is a pure function of one line's bytes. They are tolerant: real captures have
//! timestamps in front, garbage behind, lines cut short and `\r` where `\n` belongs, so a parser
//! matches the known prefix of a line and hands whatever follows back to the caller.

use memchr::memmem;
use nom::{
    IResult, Parser,
    bytes::complete::{tag, take_while},
    character::complete::{char, digit1, space0, space1},
    combinator::opt,
    error::ErrorKind,
    sequence::preceded,
};

use super::event::{Banner, BootMode, Event, PostmortemKind, Registers, RstCause, UpdateEvent};

/// Longest line kept as evidence text; longer lines are cut (the parse sees all bytes).
pub(crate) const EVIDENCE_CHARS: usize = 160;

/// Deepest chain of "event, then the rest of the line" on one line.
const MAX_SPLITS: usize = 4;

/// Where the line parser puts the events it finds.
///
/// Each event is written straight into the place that keeps it ([`slot`](Sink::slot)), then
/// its text is given ([`commit`](Sink::commit)). Handing events on by value instead copies each
/// one just after it was written field by field; the processor then cannot forward the
/// narrow stores to the wide loads of the copy and waits for them, once per copy, and that
/// waiting took longer than parsing the loader lines that make up most of a boot log.
pub(crate) trait Sink {
    /// The place for the next event. The parser overwrites what is in it; a slot handed out
    /// and not committed is handed out again.
    fn slot(&mut self) -> &mut Event;
    /// The event in the slot is complete, shown by `text` (a part of the line).
    fn commit(&mut self, text: &[u8]);
}

/// Parses one line (without its terminator) and calls `emit` with each event found and the
/// bytes that show it. A line can carry several events, e.g. garbage followed by a ROM banner
/// when the app's last output had no newline, or `@` + `cp:0` from eboot; events of one token
/// chain are shown with the whole line.
pub(crate) fn parse_line(line: &[u8], emit: &mut impl FnMut(Event, &[u8])) {
    struct Emit<'e, F> {
        slot: Event,
        emit: &'e mut F,
    }
    impl<F: FnMut(Event, &[u8])> Sink for Emit<'_, F> {
        fn slot(&mut self) -> &mut Event {
            &mut self.slot
        }
        fn commit(&mut self, text: &[u8]) {
            (self.emit)(std::mem::replace(&mut self.slot, Event::Text), text);
        }
    }
    parse_into(
        line,
        &mut Emit {
            slot: Event::Text,
            emit,
        },
    );
}

/// Parses one line like [`parse_line`], into a [`Sink`].
pub(crate) fn parse_into(line: &[u8], sink: &mut impl Sink) {
    parse_part(line, None, 0, sink);
}

/// Writes `event` into the next slot and commits it.
fn put(sink: &mut impl Sink, event: Event, text: &[u8]) {
    *sink.slot() = event;
    sink.commit(text);
}

fn parse_part(line: &[u8], chain: Option<&[u8]>, depth: usize, sink: &mut impl Sink) {
    let line = strip_capture_prefix(trim(line));
    if line.is_empty() {
        return;
    }
    // Known line kinds first, by their first bytes: most lines of a boot log are one of them,
    // and they need no scan of the whole line.
    if line.starts_with(b"ets Jan") {
        put(sink, Event::RomBanner(banner(line)), line);
        return;
    }
    if let Some(rest) = classify(line, sink.slot()) {
        let rest = trim(rest);
        if rest.is_empty() {
            sink.commit(chain.unwrap_or(line));
        } else {
            let used = &line[..line.len() - rest.len()];
            sink.commit(chain.unwrap_or(used));
            if depth < MAX_SPLITS {
                parse_part(rest, chain.or(Some(line)), depth + 1, sink);
            } else {
                put(sink, Event::Text, rest);
            }
        }
        return;
    }
    // Unknown: app text, garbage, a banner after other output, or parts split by bare CRs.
    let scan = scan(line);
    // A bare CR inside a line (progress output, terminals) separates parts of the line.
    if !scan.plain
        && depth == 0
        && let Some(first_cr) = memchr::memchr(b'\r', line)
    {
        // memchr rather than `split`, which looks at one byte at a time: noise at the wrong
        // baud rate holds a CR every few hundred bytes.
        let mut start = 0;
        let mut cr = Some(first_cr);
        while let Some(end) = cr {
            parse_part(&line[start..end], None, depth + 1, sink);
            start = end + 1;
            cr = memchr::memchr(b'\r', &line[start..]).map(|p| start + p);
        }
        parse_part(&line[start..], None, depth + 1, sink);
        return;
    }
    // The banner can follow garbage or app output on the same line when a reset cut it short.
    if scan.has_j
        && let Some(pos) = find_banner(line)
    {
        parse_part(&line[..pos], None, depth + 1, sink);
        let banner_text = &line[pos..];
        put(sink, Event::RomBanner(banner(banner_text)), banner_text);
        return;
    }
    if !scan.plain && is_garbage(line) {
        let bytes = line.len() as u32;
        put(sink, Event::Garbage { bytes }, line);
        return;
    }
    // Update messages behind a log tag (`UPD: Update Success`, `Update Failed: ERROR[8]`).
    if scan.has_update_mark
        && let Some((event, _)) = update_line_anywhere(line)
    {
        put(sink, event, line);
        return;
    }
    put(sink, Event::Text, line);
}

/// What one pass over a line tells.
struct Scan {
    /// Printable ASCII (and tab) only: the fast path for ordinary output.
    plain: bool,
    /// Holds a `J`, so it may hold a ROM banner.
    has_j: bool,
    /// Holds a `[` or a `U`, so it may hold an Updater message (`ERROR[`, `Update Success`).
    has_update_mark: bool,
}

/// One pass over the line. A reduction without early exit: the compiler turns it into SIMD,
/// which beats stopping early on lines of a few dozen bytes.
fn scan(line: &[u8]) -> Scan {
    let (bad, j, u) = line.iter().fold((0u8, 0u8, 0u8), |(bad, j, u), &c| {
        (
            bad | u8::from(!((0x20..0x7f).contains(&c) || c == b'\t')),
            j | u8::from(c == b'J'),
            u | u8::from(c == b'[' || c == b'U'),
        )
    });
    Scan {
        plain: bad == 0,
        has_j: j != 0,
        has_update_mark: u != 0,
    }
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if matches!(first, b' ' | b'\t' | b'\r' | 0) {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = b {
        if matches!(last, b' ' | b'\t' | b'\r' | 0) {
            b = rest;
        } else {
            break;
        }
    }
    b
}

/// Most prefixes removed from one line.
const MAX_PREFIXES: usize = 3;

/// Removes what serial monitors, terminal programs and forum quoting put in front of each
/// line: `12:00:01.123 -> ` (Arduino IDE), `12:00:01.123 > `, `[12:00:01]` or
/// `[2023-01-05 12:00:01.123] ` (Termite, CoolTerm, web serial consoles, glued or not),
/// `2023-01-05 12:00:01 `, `> ` (a quoted reply) and `118> ` (line numbers). Several may
/// stack up (`> [12:00:01] `). The device's own lines never start like this: stack dump lines
/// start with eight hex digits, ESPHome tags (`[I][wifi:304]`) hold no digit before `]`.
fn strip_capture_prefix(mut line: &[u8]) -> &[u8] {
    for _ in 0..MAX_PREFIXES {
        let rest = match line.first() {
            Some(b'>') => quote_prefix(line),
            Some(b'[') => bracketed_stamp(line),
            Some(c) if c.is_ascii_digit() => bare_stamp(line),
            _ => None,
        };
        match rest {
            Some(rest) => line = trim(rest),
            None => break,
        }
    }
    line
}

/// `> text` or a lone `>`; not `>>>stack>>>`.
fn quote_prefix(line: &[u8]) -> Option<&[u8]> {
    match line {
        [b'>'] => Some(&[]),
        [b'>', b' ' | b'\t', rest @ ..] => Some(rest),
        _ => None,
    }
}

/// `[...]` holding a time, a date or a counter: digits and `:.,-/ T+Z` only, with a digit.
fn bracketed_stamp(line: &[u8]) -> Option<&[u8]> {
    const LONGEST: usize = 40;
    let end = memchr::memchr(b']', &line[..line.len().min(LONGEST)])?;
    let inner = &line[1..end];
    let stamp = inner.iter().any(u8::is_ascii_digit)
        && inner
            .iter()
            .all(|c| c.is_ascii_digit() || b":.,-/ T+Z".contains(c));
    stamp.then(|| arrow(&line[end + 1..]))
}

/// A time `H:MM:SS` (optionally `.mmm`), a date `YYYY-MM-DD`, or a line number `118>`, then
/// a separator (` -> `, ` > `, ` | ` or a space) or the end of the line.
fn bare_stamp(line: &[u8]) -> Option<&[u8]> {
    let digits = |i: &[u8]| i.iter().take_while(|c| c.is_ascii_digit()).count();
    let lead = digits(line);
    let rest = match line.get(lead) {
        // A time: H:MM:SS or HH:MM:SS, then an optional fraction.
        Some(b':') if lead <= 2 => {
            let i = &line[lead + 1..];
            (digits(i) == 2 && i.get(2) == Some(&b':')).then_some(())?;
            let i = &i[3..];
            (digits(i) == 2).then_some(())?;
            let i = &i[2..];
            match i {
                [b'.' | b',', frac @ ..] if digits(frac) > 0 => &frac[digits(frac)..],
                _ => i,
            }
        }
        // A date: YYYY-MM-DD, then `T` or a space before the time.
        Some(b'-') if lead == 4 => {
            let i = &line[5..];
            (digits(i) == 2 && i.get(2) == Some(&b'-') && digits(&i[3..]) == 2).then_some(())?;
            match &i[5..] {
                // `2023-01-05T12:00:01`: the time follows without a separator.
                [b'T', rest @ ..] if rest.first().is_some_and(u8::is_ascii_digit) => {
                    return Some(rest);
                }
                rest => rest,
            }
        }
        // A line number: `118>` or `118> `.
        Some(b'>') if lead <= 7 && line.get(lead + 1) != Some(&b'>') => &line[lead + 1..],
        _ => return None,
    };
    match rest.first() {
        None | Some(b' ' | b'\t' | b'>' | b'|' | b'-') => Some(arrow(rest)),
        _ => None,
    }
}

/// Skips blanks and one separator (`->`, `>`, `|`) after a stamp.
fn arrow(i: &[u8]) -> &[u8] {
    let i = trim(i);
    let i = i
        .strip_prefix(b"->")
        .or_else(|| i.strip_prefix(b">").filter(|r| !r.starts_with(b">")))
        .or_else(|| i.strip_prefix(b"|"))
        .unwrap_or(i);
    trim(i)
}

fn find_banner(line: &[u8]) -> Option<usize> {
    // `J` is rare in serial output, so one memchr rejects almost every line; a substring
    // searcher costs more per short line than the whole rest of the parse.
    let mut from = 0;
    while let Some(j) = memchr::memchr(b'J', &line[from..]) {
        let j = from + j;
        if j >= 4 && line[j - 4..].starts_with(b"ets Jan") {
            return Some(j - 4);
        }
        from = j + 1;
    }
    None
}

/// Searchers for substrings looked for inside app lines, built once.
fn finder(which: &'static [u8]) -> &'static memmem::Finder<'static> {
    use std::sync::LazyLock;
    static UPDATE_SUCCESS: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"Update Success"));
    static ERROR: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"ERROR["));
    if which == b"ERROR[" {
        &ERROR
    } else {
        &UPDATE_SUCCESS
    }
}

/// Bytes of a line looked at to tell text from noise.
const GARBAGE_SAMPLE: usize = 256;

/// Decides whether a line with non-ASCII or control bytes is text or line noise.
///
/// Output read at the wrong baud rate turns into control bytes, invalid UTF-8 and, once a
/// terminal or a forum has re-encoded it, runs of Latin-1/CP1252 letters, U+FFFD and block
/// characters. Real text may hold a few non-ASCII characters (a check mark, an umlaut) among
/// many ASCII ones, so the rule is a ratio: more than one non-text character for every two
/// printable ASCII characters is noise. Characters are counted by their first byte (UTF-8
/// continuation bytes are skipped unless they follow ASCII), which needs no decoding and treats
/// invalid UTF-8 as noise all the same.
fn is_garbage(line: &[u8]) -> bool {
    // Noise is uniform; its first bytes decide as well as all of them.
    let line = &line[..line.len().min(GARBAGE_SAMPLE)];
    let Some((&first, _)) = line.split_first() else {
        return false;
    };
    // Every byte is text (printable ASCII, tab), a continuation byte after a non-ASCII byte
    // (part of a character already counted), or else non-text: so counting the first two
    // gives the third.
    let text = |c: u8| c.wrapping_sub(0x20) < 0x5f || c == b'\t';
    let continues = |prev: u8, c: u8| c & 0xc0 == 0x80 && prev >= 0x80;
    // Each byte beside the one before it, in runs of at most 128 so that byte-wide sums cannot
    // overflow: the compiler turns these sums into plain SIMD, which matters on noise lines
    // hundreds of bytes long (a running `prev` and `usize` counters kept it to a byte at a time).
    let mut ascii = usize::from(text(first));
    let mut part = 0;
    let (cur, prev) = (&line[1..], &line[..line.len() - 1]);
    for (cur, prev) in cur.chunks(128).zip(prev.chunks(128)) {
        ascii += usize::from(cur.iter().fold(0u8, |n, &c| n + u8::from(text(c))));
        part += usize::from(
            cur.iter()
                .zip(prev)
                .fold(0u8, |n, (&c, &p)| n + u8::from(continues(p, c))),
        );
    }
    let other = line.len() - ascii - part;
    other * 2 > ascii
}

/// Matches the known line kinds: writes the event into `slot` and returns the unparsed rest of
/// the line, or leaves `slot` alone when the line is of no known kind.
///
/// Most lines are told apart by their first bytes, so each arm calls the one parser that can
/// match. The parsers of common lines are inlined here, so that the event they build is
/// written straight into the slot (see [`Sink`]); a chain of `or_else` would copy it from one
/// stack slot into the next at every link.
fn classify<'a>(line: &'a [u8], slot: &mut Event) -> Option<&'a [u8]> {
    // Inlined into each arm, so that the event goes from the parser into the slot directly.
    let mut put = |found: Option<(Event, &'a [u8])>| {
        let (event, rest) = found?;
        *slot = event;
        Some(rest)
    };
    match line[0] {
        // `load 0x..` or eboot's `ld`; no loader detail word starts with `l`.
        b'l' if line.starts_with(b"ld") => put(eboot(line)),
        b'l' => put(load(line)),
        b'r' if line.starts_with(b"rf_cal[") || line.starts_with(b"rst_info") => put(rf_cal(line)),
        // A banner without its `ets Jan  8 2013,` (retyped, or cut by the capture).
        b'r' if line.starts_with(b"rst cause") || line.starts_with(b"rst  cause") => {
            put(Some((Event::RomBanner(banner(line)), &[][..])))
        }
        b't' | b'r' | b'h' => put(loader_detail(line)),
        b'c' if line.starts_with(b"ctx:") => put(ctx(line)),
        b'c' if line.starts_with(b"cp:") || line.starts_with(b"cmp:") => put(eboot(line)),
        b'c' => put(checksum(line)),
        b'w' => put(prefixed(line, b"wdt reset", Event::WdtReset)
            .or_else(|| prefixed(line, b"waiting for host", Event::WaitingForHost))),
        b'f' => put(prefixed(line, b"flash read err", Event::FlashReadErr)),
        b'v' => put(eboot_version(line)),
        b'@' | b'~' => put(eboot(line)),
        b'e' if line.starts_with(b"e:") => put(eboot_error(line)),
        b'e' if line.starts_with(b"epc1") => put(registers_line(line)),
        b'e' => put(prefixed(line, b"ets_main.c", Event::EtsMain)),
        b'E' if line.starts_with(b"ERROR[") => put(updater_error(line)),
        b'E' => put(exception(line)),
        // `Fatal exception:29 flag:2` is the app reporting the last reset; the SDK's own crash
        // line has a space or a parenthesis after `exception`.
        b'F' if line.starts_with(b"Fatal exception:") => put(reset_info_fatal(line)),
        b'F' if line.starts_with(b"Flash config wrong") => put(flash_config_error(line)),
        b'F' => put(fatal_exception(line)),
        b'S' => put(soft_wdt(line)
            .or_else(|| sdk_start(line))
            .or_else(|| postmortem(line))
            .or_else(|| spi_detail(line))),
        b's' => put(stack_pointer(line)),
        b'>' => put(prefixed(line, b">>>stack>>>", Event::StackBegin)),
        b'<' => put(prefixed(line, b"<<<stack<<<", Event::StackEnd)),
        b'-' | b'T' => put(cut_here(line)),
        b'P' | b'A' | b'G' => put(postmortem(line)),
        b'U' => put(postmortem(line).or_else(|| update_line(line))),
        b'R' => put(reset_info(line).or_else(|| rebooting(line))),
        b'H' => put(identity(line)),
        b'I' => put(updater_error(line)),
        b'j' => put(sdk_start(line)),
        b'2' if line.starts_with(b"2nd boot version") => put(sdk_start(line)),
        // Update messages behind a tag or number are looked for once, in `parse_part`, for
        // every line no parser here took.
        b'0'..=b'9' if is_stack_words(line) => put(stack_words(line)),
        b'a' | b'b' | b'd' => put(stack_words(line)),
        _ => None,
    }
}

#[inline(always)]
fn prefixed<'a>(line: &'a [u8], prefix: &[u8], event: Event) -> Option<(Event, &'a [u8])> {
    line.strip_prefix(prefix).map(|rest| (event, rest))
}

// Numbers are scanned by hand rather than with `take_while_m_n`/`digit1` + `map_opt`: those
// combinators do not inline into the line parsers and cost more than the rest of a line's parse
// (the triage benchmark spends most of its time on loader and stack-dump lines, which are mostly
// numbers). They keep nom's signature and error so that they compose with the combinators that
// give each line its structure.

fn number_error(i: &[u8], kind: ErrorKind) -> nom::Err<nom::error::Error<&[u8]>> {
    nom::Err::Error(nom::error::Error::new(i, kind))
}

/// Hex digit values by byte; `NOT_HEX` marks the bytes that are not hex digits.
const HEX: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 16 {
        table[b"0123456789abcdef"[i] as usize] = i as u8;
        table[b"0123456789ABCDEF"[i] as usize] = i as u8;
        i += 1;
    }
    table
};
const NOT_HEX: u8 = 0x80;

/// One to eight hex digits (a ninth is left in the input), like `take_while_m_n(1, 8, hex)`.
#[inline(always)]
fn hex_u32(i: &[u8]) -> IResult<&[u8], u32> {
    // Addresses and words in loader lines and stack dumps have all eight digits: fold them
    // without a branch per digit and check once at the end.
    if let Some(eight) = i.first_chunk::<8>() {
        let (value, flags) = eight.iter().fold((0u32, 0u8), |(v, f), &c| {
            let d = HEX[usize::from(c)];
            ((v << 4) | u32::from(d & 0xf), f | d)
        });
        if flags & NOT_HEX == 0 {
            return Ok((&i[8..], value));
        }
    }
    let mut value = 0u32;
    let mut n = 0;
    while n < 8
        && let Some(&d) = i.get(n).map(|&c| &HEX[usize::from(c)])
        && d != NOT_HEX
    {
        value = (value << 4) | u32::from(d);
        n += 1;
    }
    if n == 0 {
        return Err(number_error(i, ErrorKind::TakeWhileMN));
    }
    Ok((&i[n..], value))
}

/// All the decimal digits there are (at least one); fails when they overflow a `u32`.
fn dec_u32(i: &[u8]) -> IResult<&[u8], u32> {
    let n = i.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 {
        return Err(number_error(i, ErrorKind::Digit));
    }
    i[..n]
        .iter()
        .try_fold(0u32, |acc, &c| {
            acc.checked_mul(10)?.checked_add(u32::from(c - b'0'))
        })
        .map(|v| (&i[n..], v))
        .ok_or_else(|| number_error(i, ErrorKind::MapOpt))
}

/// One to three decimal digits (a fourth is left in the input); fails above 255.
fn dec_u8(i: &[u8]) -> IResult<&[u8], u8> {
    let mut value = 0u32;
    let mut n = 0;
    while let Some(&c) = i.get(n).filter(|c| c.is_ascii_digit()) {
        value = value * 10 + u32::from(c - b'0');
        n += 1;
        if n == 3 {
            break;
        }
    }
    if n == 0 {
        return Err(number_error(i, ErrorKind::TakeWhileMN));
    }
    u8::try_from(value)
        .map(|v| (&i[n..], v))
        .map_err(|_| number_error(i, ErrorKind::MapOpt))
}

/// `ets Jan  8 2013,rst cause:2, boot mode:(3,6)`; fields stay `None` where the line is cut.
fn banner(line: &[u8]) -> Banner {
    // Every ROM prints the same date and separators, so the usual text is matched whole
    // before the parsers for its parts run (a boot loop is a banner every dozen lines); the
    // parsers take the rest (one space, a space after the comma, a line cut short).
    fn cause(i: &[u8]) -> IResult<&[u8], u8> {
        let (i, _) = match i.strip_prefix(b"ets Jan  8 2013,") {
            Some(rest) => space0(rest)?,
            // Retyped or trimmed banners start at `rst cause`.
            None if i.starts_with(b"rst ") => (i, &i[..0]),
            None => (
                tag("ets Jan"),
                space1,
                digit1,
                space1,
                digit1,
                char(','),
                space0,
            )
                .parse(i)
                .map(|(i, _)| (i, &i[..0]))?,
        };
        // Retyped banners: `rst  cause : 2`.
        preceded(
            (tag("rst"), space1, tag("cause"), space0, char(':'), space0),
            dec_u8,
        )
        .parse(i)
    }
    fn mode(i: &[u8]) -> IResult<&[u8], BootMode> {
        let (i, _) = match i.strip_prefix(b", boot mode:(") {
            Some(rest) => space0(rest)?,
            // Retyped banners drop the colon or add spaces: `boot mode (1,6)`.
            None => (
                space0,
                opt(char(',')),
                space0,
                tag("boot mode"),
                opt(char(':')),
                space0,
                char('('),
                space0,
            )
                .parse(i)
                .map(|(i, _)| (i, &i[..0]))?,
        };
        let (i, x) = dec_u8(i)?;
        let (i, _) = (space0, char(','), space0).parse(i)?;
        let (i, y) = dec_u8(i)?;
        let (i, _) = char(')').parse(i)?;
        Ok((i, BootMode { x, y }))
    }
    match cause(line) {
        Ok((rest, c)) => Banner {
            rst_cause: Some(RstCause::from_code(c)),
            boot_mode: mode(rest).ok().map(|(_, m)| m),
        },
        Err(_) => Banner {
            rst_cause: None,
            boot_mode: None,
        },
    }
}

/// `load 0x4010f000, len 1384, room 16`.
#[inline(always)]
fn load(line: &[u8]) -> Option<(Event, &[u8])> {
    // Step by step rather than as one tuple parser: the same parsers, with less of nom's
    // plumbing around each (loader lines are a quarter of a boot log).
    fn parse(i: &[u8]) -> IResult<&[u8], Event> {
        let (i, _) = tag("load 0x")(i)?;
        let (i, addr) = hex_u32(i)?;
        let (i, _) = opt(char(',')).parse(i)?;
        let (i, _) = space0(i)?;
        let (i, _) = tag("len ")(i)?;
        let (i, len) = dec_u32(i)?;
        let (i, _) = opt((opt(char(',')), space0, tag("room "), dec_u32)).parse(i)?;
        Ok((i, Event::Load { addr, len }))
    }
    parse(line).ok().map(|(rest, event)| (event, rest))
}

/// `tail N`, `room N`, `ho 0 tail 12 room 4`: the ROM's read-buffer bookkeeping.
#[inline(always)]
fn loader_detail(line: &[u8]) -> Option<(Event, &[u8])> {
    let (rest, word) = take_while::<_, _, nom::error::Error<&[u8]>>(|c: u8| c.is_ascii_lowercase())
        .parse(line)
        .ok()?;
    // The word first: app lines starting with t, r or h stop here.
    if !matches!(word, b"tail" | b"room" | b"ho") {
        return None;
    }
    // The rest of such a line is more bookkeeping (`ho 0 tail 12 room 4`).
    (space1::<&[u8], nom::error::Error<&[u8]>>, digit1)
        .parse(rest)
        .ok()?;
    Some((Event::LoaderDetail, &[][..]))
}

/// `  SPI Speed : 80MHz` and friends from the SDK's second-stage boot loader.
fn spi_detail(line: &[u8]) -> Option<(Event, &[u8])> {
    (line.starts_with(b"SPI Speed")
        || line.starts_with(b"SPI Mode")
        || line.starts_with(b"SPI Flash Size"))
    .then_some((Event::LoaderDetail, &[][..]))
}

/// `chksum 0x2d`, `csum 0x2d`, `csum err`.
#[inline(always)]
fn checksum(line: &[u8]) -> Option<(Event, &[u8])> {
    if let Some(rest) = line.strip_prefix(b"csum err") {
        return Some((Event::CsumErr, rest));
    }
    if let Some(rest) = line.strip_prefix(b"chksum 0x") {
        let (rest, v) = hex_u32(rest).ok()?;
        return Some((Event::Chksum((v & 0xFF) as u8), rest));
    }
    let rest = line.strip_prefix(b"csum 0x")?;
    let (rest, v) = hex_u32(rest).ok()?;
    Some((Event::Csum((v & 0xFF) as u8), rest))
}

/// `v3ffe903d`: exactly eight hex digits after `v`.
#[inline(always)]
fn eboot_version(line: &[u8]) -> Option<(Event, &[u8])> {
    let digits = line.get(1..9)?;
    if !digits.iter().all(u8::is_ascii_hexdigit)
        || line.get(9).is_some_and(u8::is_ascii_alphanumeric)
    {
        return None;
    }
    let (rest, v) = hex_u32(digits).ok()?;
    debug_assert!(rest.is_empty());
    Some((Event::EbootVersion(v), &line[9..]))
}

/// eboot's one-letter protocol: `@` or `~`, then `cp:N`, `cmp:N` or `ld`.
/// The prefix comes back as its own event so that `@cp:0` yields two.
#[inline(always)]
fn eboot(line: &[u8]) -> Option<(Event, &[u8])> {
    // eboot prints its marker directly before the action; anything else is not eboot.
    let action = |rest: &[u8]| {
        rest.starts_with(b"cp:") || rest.starts_with(b"cmp:") || rest.starts_with(b"ld")
    };
    match line[0] {
        b'@' if action(&line[1..]) => {
            return Some((Event::EbootCommand { found: true }, &line[1..]));
        }
        b'~' if action(&line[1..]) => {
            return Some((Event::EbootCommand { found: false }, &line[1..]));
        }
        b'@' | b'~' => return None,
        _ => {}
    }
    if let Some(rest) = line.strip_prefix(b"cp:") {
        let (rest, result) = digit_opt(rest);
        return Some((Event::EbootCopy { result }, rest));
    }
    if let Some(rest) = line.strip_prefix(b"cmp:") {
        let (rest, result) = digit_opt(rest);
        return Some((Event::EbootVerify { result }, rest));
    }
    if let Some(rest) = line.strip_prefix(b"ld") {
        // "ld" followed by a letter is a word of app output, not eboot.
        if !rest.first().is_some_and(u8::is_ascii_alphanumeric) {
            return Some((Event::EbootLoad, rest));
        }
    }
    None
}

#[inline(always)]
fn digit_opt(rest: &[u8]) -> (&[u8], Option<u8>) {
    match rest.first() {
        Some(d @ b'0'..=b'9') => (&rest[1..], Some(d - b'0')),
        _ => (rest, None),
    }
}

/// `e:3` alone on its line (eboot failed to load the app).
#[inline(always)]
fn eboot_error(line: &[u8]) -> Option<(Event, &[u8])> {
    let rest = line.strip_prefix(b"e:")?;
    let (after, code) = digit_opt(rest);
    trim(after)
        .is_empty()
        .then_some((Event::EbootError { code }, after))
}

/// `epc1=0x... epc2=0x... epc3=0x... excvaddr=0x... depc=0x...` (also with `:` and commas).
fn registers(text: &[u8]) -> Registers {
    let mut regs = Registers::default();
    for word in text.split(|&c| c == b' ' || c == b',' || c == b'\t') {
        let Some(sep) = word.iter().position(|&c| c == b'=' || c == b':') else {
            continue;
        };
        let (key, value) = (&word[..sep], &word[sep + 1..]);
        let value = value.strip_prefix(b"0x").unwrap_or(value);
        let Ok((_, v)) = hex_u32(value) else { continue };
        match key {
            b"epc1" => regs.epc1 = Some(v),
            b"epc2" => regs.epc2 = Some(v),
            b"epc3" => regs.epc3 = Some(v),
            b"excvaddr" => regs.excvaddr = Some(v),
            b"depc" => regs.depc = Some(v),
            _ => {}
        }
    }
    regs
}

fn registers_line(line: &[u8]) -> Option<(Event, &[u8])> {
    line.starts_with(b"epc1")
        .then(|| (Event::Registers(Box::new(registers(line))), &[][..]))
}

/// `Exception (9):` as the core's postmortem prints it.
fn exception(line: &[u8]) -> Option<(Event, &[u8])> {
    let (rest, (_, _, cause, _)) = (
        tag::<_, _, nom::error::Error<&[u8]>>("Exception"),
        space0,
        paren_num,
        opt(char(':')),
    )
        .parse(line)
        .ok()?;
    Some((
        Event::Exception {
            cause,
            sdk: false,
            regs: Box::new(registers(rest)),
        },
        &[][..],
    ))
}

fn paren_num(i: &[u8]) -> IResult<&[u8], u8> {
    let (i, _) = char('(').parse(i)?;
    let (i, n) = dec_u8(i)?;
    let (i, _) = char(')').parse(i)?;
    Ok((i, n))
}

/// SDK format: `Fatal exception (0):` or `Fatal exception 28(LoadProhibitedCause):`.
fn fatal_exception(line: &[u8]) -> Option<(Event, &[u8])> {
    let rest = line.strip_prefix(b"Fatal exception")?;
    let rest = trim(rest);
    let (rest, cause) = paren_num(rest).or_else(|_| dec_u8(rest)).ok()?;
    Some((
        Event::Exception {
            cause,
            sdk: true,
            regs: Box::new(registers(rest)),
        },
        &[][..],
    ))
}

/// `Fatal exception:29 flag:2 (EXCEPTION) epc1:0x...`: `ESP.getResetInfo()` about the last reset.
fn reset_info_fatal(line: &[u8]) -> Option<(Event, &[u8])> {
    let rest = line.strip_prefix(b"Fatal exception:")?;
    let (rest, cause) = dec_u8(rest).ok()?;
    let reason = memmem::find(rest, b"flag:")
        .and_then(|p| dec_u8(&rest[p + 5..]).ok())
        .map(|(_, f)| f);
    Some((
        Event::ResetInfo {
            exception: Some(cause),
            reason,
        },
        &[][..],
    ))
}

/// `Reset reason: Exception`, `Reset info: ...`, `rst_info ...`, as apps print them.
fn reset_info(line: &[u8]) -> Option<(Event, &[u8])> {
    let lower = line[..line.len().min(12)].to_ascii_lowercase();
    if !(lower.starts_with(b"reset reason")
        || lower.starts_with(b"reset info")
        || lower.starts_with(b"resetreason"))
    {
        return None;
    }
    let text = String::from_utf8_lossy(line).to_ascii_lowercase();
    // ESP.getResetReason() strings, mapped to the SDK's rst_info.reason numbers.
    let reason = [
        ("power on", 0),
        ("hardware watchdog", 1),
        ("exception", 2),
        ("software watchdog", 3),
        ("software/system restart", 4),
        ("deep-sleep wake", 5),
        ("external system", 6),
    ]
    .iter()
    .find(|(name, _)| text.contains(name))
    .map(|&(_, n)| n);
    let exception = memmem::find(line, b"Fatal exception:")
        .and_then(|p| dec_u8(&line[p + 16..]).ok())
        .map(|(_, c)| c);
    Some((Event::ResetInfo { exception, reason }, &[][..]))
}

/// `rf_cal[0] !=0x05,is 0xFF` (SDK), or an `rst_info` line printed by SDK examples.
fn rf_cal(line: &[u8]) -> Option<(Event, &[u8])> {
    if line.starts_with(b"rf_cal[") {
        return Some((Event::RfCalMissing, &[][..]));
    }
    if line.starts_with(b"rst_info") {
        return reset_info_words(line);
    }
    None
}

/// `rst_info: reason 2 exccause 28 ...`.
fn reset_info_words(line: &[u8]) -> Option<(Event, &[u8])> {
    let find_num = |key: &[u8]| {
        memmem::find(line, key).and_then(|p| {
            let after = trim(&line[p + key.len()..]);
            let after = after
                .strip_prefix(b":")
                .or(after.strip_prefix(b"="))
                .unwrap_or(after);
            dec_u8(trim(after)).ok().map(|(_, v)| v)
        })
    };
    Some((
        Event::ResetInfo {
            exception: find_num(b"exccause"),
            reason: find_num(b"reason"),
        },
        &[][..],
    ))
}

fn soft_wdt(line: &[u8]) -> Option<(Event, &[u8])> {
    line.strip_prefix(b"Soft WDT reset")
        .map(|_| (Event::SoftWdt, &[][..]))
}

fn postmortem(line: &[u8]) -> Option<(Event, &[u8])> {
    let kinds: [(&[u8], PostmortemKind); 6] = [
        (b"Panic ", PostmortemKind::Panic),
        (b"Unhandled C++ exception", PostmortemKind::UnhandledCxx),
        (b"Abort called", PostmortemKind::Abort),
        (b"Stack smashing detected", PostmortemKind::StackSmashing),
        (b"Stack overflow detected", PostmortemKind::StackOverflow),
        (b"Generic Reset", PostmortemKind::GenericReset),
    ];
    kinds
        .iter()
        .find(|(p, _)| line.starts_with(p))
        .map(|&(_, k)| (Event::Postmortem(k), &[][..]))
}

fn cut_here(line: &[u8]) -> Option<(Event, &[u8])> {
    ((line.starts_with(b"---") && memmem::find(line, b"CUT HERE FOR EXCEPTION DECODER").is_some())
        || line.starts_with(b"To make this dump useful"))
    .then_some((Event::CutHere, &[][..]))
}

/// `ctx: cont`.
fn ctx(line: &[u8]) -> Option<(Event, &[u8])> {
    let rest = line.strip_prefix(b"ctx:")?;
    let name = trim(rest);
    let end = name
        .iter()
        .position(|c| !c.is_ascii_alphanumeric())
        .unwrap_or(name.len());
    Some((
        Event::Ctx(String::from_utf8_lossy(&name[..end]).into_owned()),
        &name[end..],
    ))
}

/// `sp: 3fff09f0 end: 3fff0bf0 offset: 01b0`.
fn stack_pointer(line: &[u8]) -> Option<(Event, &[u8])> {
    let (rest, (_, _, sp, _, _, _, end)) = (
        tag::<_, _, nom::error::Error<&[u8]>>("sp:"),
        space0,
        hex_u32,
        space1,
        tag("end:"),
        space0,
        hex_u32,
    )
        .parse(line)
        .ok()?;
    let _ = rest;
    Some((Event::StackPointer { sp, end }, &[][..]))
}

/// Starts like a stack dump line: eight hex digits and a colon.
fn is_stack_words(line: &[u8]) -> bool {
    line.len() >= 9 && line[8] == b':' && line[..8].iter().all(u8::is_ascii_hexdigit)
}

/// `3fff0ba0:  00000004 00000000 3ffefbbc 40202808`.
#[inline(always)]
fn stack_words(line: &[u8]) -> Option<(Event, &[u8])> {
    if !is_stack_words(line) {
        return None;
    }
    let (_, addr) = hex_u32(&line[..8]).ok()?;
    let mut words = [0u32; 4];
    let mut count = 0u8;
    for w in line[9..]
        .split(|&c| c == b' ')
        .filter(|w| !w.is_empty())
        .take(4)
    {
        if w.len() != 8 {
            return None;
        }
        words[usize::from(count)] = hex_u32(w).ok()?.1;
        count += 1;
    }
    Some((Event::StackWords { addr, words, count }, &[][..]))
}

/// SDK boot loader and SDK start lines.
fn sdk_start(line: &[u8]) -> Option<(Event, &[u8])> {
    (line.starts_with(b"2nd boot version")
        || line.starts_with(b"jump to run user")
        || line.starts_with(b"SDK ver:"))
    .then_some((Event::SdkStart, &[][..]))
}

/// `Update Success...`, `Update error: ERROR[4]: Not Enough Space`.
fn update_line(line: &[u8]) -> Option<(Event, &[u8])> {
    if line.starts_with(b"Update Success") || line.starts_with(b"Update success") {
        return Some((Event::Update(UpdateEvent::Success), &[][..]));
    }
    if let Some(rest) = line.strip_prefix(b"Update error: ") {
        return updater_error(trim(rest));
    }
    None
}

/// `ERROR[n]: text` as `Updater::printError` prints it; `ERROR[0]: No Error` is not an error.
fn updater_error(line: &[u8]) -> Option<(Event, &[u8])> {
    if line.starts_with(b"Invalid bootstrapping state") {
        return Some((Event::Update(UpdateEvent::Error(11)), &[][..]));
    }
    let rest = line.strip_prefix(b"ERROR[")?;
    let (rest, code) = dec_u8(rest).ok()?;
    rest.starts_with(b"]").then_some(())?;
    if code == 0 {
        return Some((Event::Text, &[][..]));
    }
    Some((Event::Update(UpdateEvent::Error(code)), &[][..]))
}

/// `Flash config wrong real: X, SDK: Y` / `new Flash config wrong, real size: X` (Updater 8/9).
fn flash_config_error(line: &[u8]) -> Option<(Event, &[u8])> {
    line.starts_with(b"Flash config wrong")
        .then_some((Event::Update(UpdateEvent::Error(8)), &[][..]))
}

/// `Rebooting...` and similar announcements of an intended restart.
fn rebooting(line: &[u8]) -> Option<(Event, &[u8])> {
    (line.starts_with(b"Rebooting") || line.starts_with(b"Restarting"))
        .then_some((Event::Update(UpdateEvent::Rebooting), &[][..]))
}

/// Update messages behind a timestamp or log tag (`00:00:05 UPD: ...`).
fn update_line_anywhere(line: &[u8]) -> Option<(Event, &[u8])> {
    if finder(b"Update Success").find(line).is_some() {
        return Some((Event::Update(UpdateEvent::Success), &[][..]));
    }
    if let Some(p) = finder(b"ERROR[").find(line) {
        return updater_error(&line[p..]);
    }
    None
}

/// `HILFW app=... version=...`: the reference firmware's identity/state line.
fn identity(line: &[u8]) -> Option<(Event, &[u8])> {
    line.starts_with(b"HILFW ")
        .then_some((Event::Identity, &[][..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(line: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        parse_line(line, &mut |e, _| out.push(e));
        out
    }

    #[test]
    fn banner_with_and_without_double_space() {
        let want = Event::RomBanner(Banner {
            rst_cause: Some(RstCause::PowerOn),
            boot_mode: Some(BootMode { x: 3, y: 6 }),
        });
        assert_eq!(
            events(b" ets Jan  8 2013,rst cause:1, boot mode:(3,6)"),
            vec![want.clone()]
        );
        assert_eq!(
            events(b"ets Jan 8 2013,rst cause:1, boot mode:(3,6)\r"),
            vec![want]
        );
    }

    #[test]
    fn truncated_banner_still_starts_a_boot() {
        assert_eq!(
            events(b"ets Jan  8 2013,rst cau"),
            vec![Event::RomBanner(Banner {
                rst_cause: None,
                boot_mode: None
            })]
        );
        assert_eq!(
            events(b"ets Jan  8 2013,rst cause:4, boot mo"),
            vec![Event::RomBanner(Banner {
                rst_cause: Some(RstCause::Watchdog),
                boot_mode: None
            })]
        );
    }

    #[test]
    fn banner_after_garbage_on_the_same_line() {
        let ev = events(b"\xff\xfe\x80\x81\x82 ets Jan  8 2013,rst cause:2, boot mode:(1,7)");
        assert!(matches!(ev[0], Event::Garbage { .. }));
        assert!(matches!(ev[1], Event::RomBanner(_)));
    }

    #[test]
    fn loader_lines() {
        assert_eq!(
            events(b"load 0x4010f000, len 1384, room 16 "),
            vec![Event::Load {
                addr: 0x4010f000,
                len: 1384
            }]
        );
        assert_eq!(
            events(b"load 0x40100000, len 28780, room 16 <\\r><\\n>")[0],
            Event::Load {
                addr: 0x40100000,
                len: 28780
            }
        );
        assert_eq!(events(b"tail 8"), vec![Event::LoaderDetail]);
        assert_eq!(events(b"ho 0 tail 12 room 4"), vec![Event::LoaderDetail]);
        assert_eq!(events(b"chksum 0x2d"), vec![Event::Chksum(0x2d)]);
        assert_eq!(events(b"csum 0x2d"), vec![Event::Csum(0x2d)]);
        assert_eq!(events(b"csum err"), vec![Event::CsumErr]);
        assert_eq!(events(b"ets_main.c "), vec![Event::EtsMain]);
    }

    #[test]
    fn eboot_lines() {
        assert_eq!(events(b"v3ffe903d"), vec![Event::EbootVersion(0x3ffe903d)]);
        assert_eq!(
            events(b"@cp:0"),
            vec![
                Event::EbootCommand { found: true },
                Event::EbootCopy { result: Some(0) }
            ]
        );
        assert_eq!(
            events(b"@cp:"),
            vec![
                Event::EbootCommand { found: true },
                Event::EbootCopy { result: None }
            ]
        );
        assert_eq!(
            events(b"~ld"),
            vec![Event::EbootCommand { found: false }, Event::EbootLoad]
        );
        assert_eq!(events(b"ld"), vec![Event::EbootLoad]);
        assert_eq!(events(b"e:3"), vec![Event::EbootError { code: Some(3) }]);
        assert_eq!(events(b"e:"), vec![Event::EbootError { code: None }]);
        assert_eq!(events(b"cmp:"), vec![Event::EbootVerify { result: None }]);
        // Words that merely start like eboot output stay text.
        assert_eq!(events(b"ldap connected"), vec![Event::Text]);
        assert_eq!(events(b"version 2"), vec![Event::Text]);
        assert_eq!(events(b"e: something went wrong"), vec![Event::Text]);
    }

    #[test]
    fn eboot_line_followed_by_app_garbage() {
        let ev = events("~ld\u{e2}\u{b8}\u{ae}".as_bytes());
        assert_eq!(
            ev[..2],
            [Event::EbootCommand { found: false }, Event::EbootLoad]
        );
        assert!(matches!(ev[2], Event::Garbage { .. }));
    }

    #[test]
    fn crash_lines() {
        assert_eq!(
            events(b"Exception (9):"),
            vec![Event::Exception {
                cause: 9,
                sdk: false,
                regs: Box::default()
            }]
        );
        let regs = events(
            b"epc1=0x40203790 epc2=0x00000000 epc3=0x00000000 excvaddr=0x33342042 depc=0x00000000",
        );
        assert_eq!(
            regs,
            vec![Event::Registers(Box::new(Registers {
                epc1: Some(0x40203790),
                epc2: Some(0),
                epc3: Some(0),
                excvaddr: Some(0x33342042),
                depc: Some(0)
            }))]
        );
        let sdk = events(b"Fatal exception (0): ");
        assert_eq!(
            sdk,
            vec![Event::Exception {
                cause: 0,
                sdk: true,
                regs: Box::default()
            }]
        );
        let old = events(b"Fatal exception 28(LoadProhibitedCause):");
        assert!(matches!(
            old[0],
            Event::Exception {
                cause: 28,
                sdk: true,
                ..
            }
        ));
        let commas = events(b"epc1=0x4021c1d4, epc2=0x00000000, epc3=0x00000000, excvaddr=0x00000000, depc=0x00000000");
        assert!(matches!(&commas[0], Event::Registers(r) if r.epc1 == Some(0x4021c1d4)));
        assert_eq!(events(b"Soft WDT reset"), vec![Event::SoftWdt]);
        assert_eq!(events(b">>>stack>>>"), vec![Event::StackBegin]);
        assert_eq!(events(b"<<<stack<<<"), vec![Event::StackEnd]);
        assert_eq!(events(b"ctx: cont "), vec![Event::Ctx("cont".into())]);
        assert_eq!(
            events(b"sp: 3fff09f0 end: 3fff0bf0 offset: 01b0"),
            vec![Event::StackPointer {
                sp: 0x3fff09f0,
                end: 0x3fff0bf0
            }]
        );
        assert_eq!(
            events(b"3fff0ba0:  00000004 00000000 3ffefbbc 40202808  "),
            vec![Event::StackWords {
                addr: 0x3fff0ba0,
                words: [4, 0, 0x3ffefbbc, 0x40202808],
                count: 4
            }]
        );
        assert_eq!(
            events(b"--------------- CUT HERE FOR EXCEPTION DECODER ---------------"),
            vec![Event::CutHere]
        );
        assert_eq!(
            events(b"Panic core_esp8266_main.cpp:137 loop"),
            vec![Event::Postmortem(PostmortemKind::Panic)]
        );
    }

    #[test]
    fn reset_info_lines() {
        assert_eq!(
            events(b"Reset reason: Software Watchdog"),
            vec![Event::ResetInfo {
                exception: None,
                reason: Some(3)
            }]
        );
        assert_eq!(
            events(b"Fatal exception:29 flag:2 (EXCEPTION) epc1:0x40204f3e epc2:0x00000000"),
            vec![Event::ResetInfo {
                exception: Some(29),
                reason: Some(2)
            }]
        );
    }

    #[test]
    fn update_lines() {
        assert_eq!(
            events(b"Update Success: 266384"),
            vec![Event::Update(UpdateEvent::Success)]
        );
        assert_eq!(
            events(b"Rebooting..."),
            vec![Event::Update(UpdateEvent::Rebooting)]
        );
        assert_eq!(
            events(b"Update error: ERROR[11]: Invalid bootstrapping state, reset ESP8266 before updating"),
            vec![Event::Update(UpdateEvent::Error(11))]
        );
        assert_eq!(events(b"ERROR[0]: No Error"), vec![Event::Text]);
        assert_eq!(
            events(b"HILFW app=sonoff-ota version=2.0.0 ota=webserver state=RUN"),
            vec![Event::Identity]
        );
    }

    #[test]
    fn timestamps_are_stripped() {
        assert_eq!(
            events(b"17:31:43.744 -> ~ld"),
            vec![Event::EbootCommand { found: false }, Event::EbootLoad]
        );
    }

    #[test]
    fn monitor_and_quote_prefixes_are_stripped() {
        let soft_wdt = vec![Event::SoftWdt];
        for line in [
            &b"Soft WDT reset"[..],
            b"> Soft WDT reset",
            b"> > Soft WDT reset",
            b"[14:58:27]Soft WDT reset",
            b"[14:58:27.123] Soft WDT reset",
            b"[2023-01-05 12:00:01.123] Soft WDT reset",
            b"12:00:01.123 > Soft WDT reset",
            b"12:00:01 -> Soft WDT reset",
            b"2023-01-05 12:00:01 Soft WDT reset",
            b"2023-01-05T12:00:01.5 Soft WDT reset",
            b"118> Soft WDT reset",
            b"> [14:58:27] Soft WDT reset",
        ] {
            assert_eq!(events(line), soft_wdt, "{}", String::from_utf8_lossy(line));
        }
        // A prefix with nothing after it is an empty line, not app output.
        assert_eq!(events(b"16:03:50.336 -> "), vec![]);
        assert_eq!(events(b"[16:03:50]"), vec![]);
        assert_eq!(events(b">"), vec![]);
        // What the device prints itself stays as it is.
        assert_eq!(events(b">>>stack>>>"), vec![Event::StackBegin]);
        assert_eq!(events(b"12:00:01.123 >>>stack>>>"), vec![Event::StackBegin]);
        assert!(matches!(
            events(b"3ffffd50:  3fffdad0 00000000 3ffee5c8 40201100")[..],
            [Event::StackWords { count: 4, .. }]
        ));
        assert_eq!(events(b"[I][wifi:304]: Starting scan"), vec![Event::Text]);
    }

    #[test]
    fn retyped_banners_still_start_a_boot() {
        let want = |cause, x, y| {
            vec![Event::RomBanner(Banner {
                rst_cause: Some(cause),
                boot_mode: Some(BootMode { x, y }),
            })]
        };
        assert_eq!(
            events(b"rst cause:4,boot mode(1,6)"),
            want(RstCause::Watchdog, 1, 6)
        );
        assert_eq!(
            events(b"ets Jan 8 2013,rst  cause:2 , boot mode:(3,6)"),
            want(RstCause::External, 3, 6)
        );
        assert_eq!(
            events(b"rst cause: 1, boot mode: (3, 7)"),
            want(RstCause::PowerOn, 3, 7)
        );
    }

    #[test]
    fn updater_errors_behind_any_log_tag() {
        for line in [
            &b"Update Failed: ERROR[8]: Flash config wrong real: 4194304 IDE: 16777216"[..],
            b"[15:10:58][W][ota:276]: Update end failed! Error: ERROR[8]: Flash config wrong",
            b"00:00:05 UPD: ERROR[8]: Flash config wrong",
        ] {
            assert_eq!(
                events(line),
                vec![Event::Update(UpdateEvent::Error(8))],
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(
            events(b"UPD: Update Success: 301456"),
            vec![Event::Update(UpdateEvent::Success)]
        );
    }

    #[test]
    fn garbage_versus_text() {
        assert_eq!(events("\u{2714} Configured".as_bytes()), vec![Event::Text]);
        assert_eq!(
            events("Verbindung hergestellt, Gr\u{fc}\u{df}e".as_bytes()),
            vec![Event::Text]
        );
        assert!(matches!(
            events("\u{c3}\u{be}".as_bytes())[0],
            Event::Garbage { bytes: 4 }
        ));
        assert!(matches!(
            events(b"\x80\x99\xfe\x12\x13ab")[0],
            Event::Garbage { .. }
        ));
        assert!(matches!(
            events("d`N{\u{2592}\u{2592}\u{2592}n".as_bytes())[0],
            Event::Garbage { .. }
        ));
    }

    /// The nom combinators the hand-rolled number parsers replace, as the reference.
    mod reference {
        use nom::{
            IResult, Parser,
            bytes::complete::take_while_m_n,
            character::complete::digit1,
            combinator::{map, map_opt},
        };

        pub fn hex_u32(i: &[u8]) -> IResult<&[u8], u32> {
            map(
                take_while_m_n(1, 8, |c: u8| c.is_ascii_hexdigit()),
                |h: &[u8]| {
                    h.iter().fold(0u32, |acc, &c| {
                        (acc << 4) | (c as char).to_digit(16).unwrap_or(0)
                    })
                },
            )
            .parse(i)
        }

        pub fn dec_u32(i: &[u8]) -> IResult<&[u8], u32> {
            map_opt(digit1, |d: &[u8]| std::str::from_utf8(d).ok()?.parse().ok()).parse(i)
        }

        pub fn dec_u8(i: &[u8]) -> IResult<&[u8], u8> {
            map_opt(
                take_while_m_n(1, 3, |c: u8| c.is_ascii_digit()),
                |d: &[u8]| std::str::from_utf8(d).ok()?.parse().ok(),
            )
            .parse(i)
        }
    }

    #[test]
    fn number_edge_cases() {
        assert_eq!(hex_u32(b"4010f000, len"), Ok((&b", len"[..], 0x4010_f000)));
        assert_eq!(hex_u32(b"FFFFFFFF"), Ok((&b""[..], u32::MAX)));
        assert_eq!(hex_u32(b"2d "), Ok((&b" "[..], 0x2d)));
        // A ninth digit is left for the caller; a non-digit inside eight stops the number.
        assert_eq!(hex_u32(b"123456789"), Ok((&b"9"[..], 0x1234_5678)));
        assert_eq!(hex_u32(b"abcDEF0g1"), Ok((&b"g1"[..], 0xabc_def0)));
        assert!(hex_u32(b"").is_err());
        assert!(hex_u32(b"g").is_err());
        assert!(hex_u32(b" 1").is_err());

        assert_eq!(dec_u32(b"1384, room"), Ok((&b", room"[..], 1384)));
        assert_eq!(dec_u32(b"4294967295"), Ok((&b""[..], u32::MAX)));
        assert_eq!(dec_u32(b"0000000000001"), Ok((&b""[..], 1)));
        assert!(dec_u32(b"4294967296").is_err(), "overflow");
        assert!(dec_u32(b"99999999999999999999999").is_err(), "overflow");
        assert!(dec_u32(b"").is_err());
        assert!(dec_u32(b"x1").is_err());

        assert_eq!(dec_u8(b"255)"), Ok((&b")"[..], 255)));
        assert_eq!(dec_u8(b"0012"), Ok((&b"2"[..], 1)));
        assert!(dec_u8(b"256").is_err(), "overflow");
        assert!(dec_u8(b"999").is_err(), "overflow");
        assert!(dec_u8(b"").is_err());
        assert!(dec_u8(b"-1").is_err());
    }

    #[test]
    fn numbers_agree_with_the_nom_combinators() {
        // Every string of up to five bytes over an alphabet of digits, hex letters, their
        // neighbours in ASCII and separators.
        let alphabet = b"0129:afgAFG/ ";
        let mut input = Vec::new();
        let mut check = |i: &[u8]| {
            assert_eq!(hex_u32(i).ok(), reference::hex_u32(i).ok(), "{i:?}");
            assert_eq!(dec_u32(i).ok(), reference::dec_u32(i).ok(), "{i:?}");
            assert_eq!(dec_u8(i).ok(), reference::dec_u8(i).ok(), "{i:?}");
        };
        fn strings(prefix: &mut Vec<u8>, alphabet: &[u8], depth: usize, f: &mut impl FnMut(&[u8])) {
            f(prefix);
            if depth == 0 {
                return;
            }
            for &c in alphabet {
                prefix.push(c);
                strings(prefix, alphabet, depth - 1, f);
                prefix.pop();
            }
        }
        strings(&mut input, alphabet, 5, &mut check);
        // Long runs around the eight-digit fast path and the overflow limits.
        for s in [
            &b"0123456789abcdef"[..],
            b"3fff0ba0:",
            b"40202808 ",
            b"4294967295",
            b"4294967296",
            b"00000000000000000000042",
            b"fffffffff",
            b"1234567g",
            b"12345678g",
        ] {
            for end in 0..=s.len() {
                check(&s[..end]);
            }
        }
    }

    #[test]
    fn garbage_counts_match_the_plain_definition() {
        // The vectorised count against the definition written as a plain loop.
        fn plain(line: &[u8]) -> bool {
            let line = &line[..line.len().min(GARBAGE_SAMPLE)];
            let (mut ascii, mut other, mut prev) = (0usize, 0usize, 0u8);
            for &c in line {
                ascii += usize::from((0x20..0x7f).contains(&c) || c == b'\t');
                let stray = (0x80..0xc0).contains(&c) && prev < 0x80;
                other += usize::from((c < 0x20 && c != b'\t') || c == 0x7f || c >= 0xc0 || stray);
                prev = c;
            }
            other * 2 > ascii
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 300) as usize;
            // Mostly text with some noise, so that both answers come up.
            let noise = next() % 4;
            let line: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 4 < noise {
                        (r >> 8) as u8
                    } else {
                        b'a' + (r >> 8) as u8 % 26
                    }
                })
                .collect();
            assert_eq!(is_garbage(&line), plain(&line), "{line:?}");
        }
        assert!(!is_garbage(b""));
        assert_eq!(is_garbage(&[0x80]), plain(&[0x80]));
    }
}
