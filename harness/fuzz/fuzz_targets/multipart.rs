//! The device-side multipart parser on arbitrary bodies: fed in any chunks it gives the events
//! and the error it gives when fed at once, and it never hands out more bytes than came in.
//!
//! Input: a knob byte (boundary, block size, chunk seed), then the body.

#![no_main]

use harness::ota::CodecError;
use harness::ota::multipart::{Event, Parser};
use libfuzzer_sys::fuzz_target;

const BOUNDARIES: [&str; 4] = [
    "X",
    "----HilFormBoundaryAbC123",
    "a b'()+_,-./:=?",
    "0123456789012345678901234567890123456789012345678901234567890123456789",
];

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, body)) = data.split_first() else {
        return;
    };
    let boundary = BOUNDARIES[usize::from(knobs & 3)];
    let block = [1, 7, 2048, 4096][usize::from(knobs >> 2 & 3)];
    let chunk = usize::from(knobs >> 4) * 3 + 1;

    let at_once = run(boundary, block, &[body]);
    let pieces: Vec<&[u8]> = body.chunks(chunk).collect();
    let chunked = run(boundary, block, &pieces);
    assert_eq!(at_once, chunked, "chunking changed the parse");

    if let (Ok(events), _) = &at_once {
        let data: usize = events
            .iter()
            .map(|e| match e {
                Event::Data(d) => {
                    assert!(!d.is_empty() && d.len() <= block);
                    d.len()
                }
                _ => 0,
            })
            .sum();
        assert!(data <= body.len());
        let ends = events.iter().filter(|e| **e == Event::End).count();
        assert!(ends <= 1);
        if ends == 1 {
            assert_eq!(events.last(), Some(&Event::End));
        }
    }
});

/// Feeds `reads` to a parser; returns the events (or the first error) and `finish`'s result.
fn run(
    boundary: &str,
    block: usize,
    reads: &[&[u8]],
) -> (Result<Vec<Event>, CodecError>, Result<(), CodecError>) {
    let mut p = Parser::new(boundary).unwrap().with_block_size(block);
    let mut events = Vec::new();
    for r in reads {
        match p.feed(r) {
            Ok(e) => events.extend(e),
            Err(e) => return (Err(e), p.finish()),
        }
    }
    let offset = p.offset();
    let finish = p.finish();
    assert!(offset <= reads.iter().map(|r| r.len() as u64).sum());
    (Ok(events), finish)
}
