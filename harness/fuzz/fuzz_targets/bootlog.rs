//! Boot-log parser and triage: any bytes, fed in any chunks, give the one-shot result.
//!
//! The first two input bytes seed the chunk sizes; the rest is the capture.

#![no_main]

use harness::bootlog::{self, Parser};
use harness::triage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (seed, capture) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => (0, data),
    };
    let whole = bootlog::parse(capture);
    assert_eq!(whole.totals.bytes, capture.len() as u64);

    let mut parser = Parser::new();
    let mut rest = capture;
    let mut state = u32::from(seed) | 1;
    // Chunk sizes: mostly small, sometimes around the parser's line limit.
    let limit = match seed % 4 {
        0 => 1,
        1 => 16,
        2 => 512,
        _ => 8192, // twice the parser's MAX_LINE
    };
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % limit + 1).min(rest.len());
        parser.feed(&rest[..n]);
        rest = &rest[n..];
    }
    let chunked = parser.finish();
    assert_eq!(chunked, whole, "chunking changed the parse");

    let report = triage::triage(&whole);
    assert_eq!(report.total_lines, whole.totals.lines);
    let _ = triage::render_text(&report, "fuzz");
    let _ = triage::render_markdown(&report, "fuzz");
});
