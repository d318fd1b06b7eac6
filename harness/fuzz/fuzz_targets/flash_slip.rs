//! SLIP framing and the ROM loader / stub packet codec, both directions.
//!
//! Arbitrary bytes are decoded in chunks (as a serial port delivers them) and at once; both must
//! give the same frames. Every frame is then read as a request (what the simulator's ROM loader
//! and stub do with it) and as a response (what a host-side client does with it); whatever
//! parses must encode back to the same bytes.

#![no_main]

use harness::flash::proto::{Command, Response, SlipDecoder, slip_encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, wire)) = data.split_first() else {
        return;
    };
    // A small frame limit now and then, so TooLong is reached.
    let limit = if knobs & 0x80 != 0 { 64 } else { 64 * 1024 };
    let chunk = usize::from(knobs & 0x3F) + 1;

    let mut whole = SlipDecoder::with_limit(limit);
    let at_once = whole.push(wire);
    let mut pieces = SlipDecoder::with_limit(limit);
    let mut chunked = Vec::new();
    for c in wire.chunks(chunk) {
        chunked.extend(pieces.push(c));
    }
    assert_eq!(at_once, chunked, "chunking changed the frames");
    assert_eq!(whole.skipped(), pieces.skipped());

    for frame in at_once.into_iter().flatten() {
        assert!(!frame.is_empty() && frame.len() <= limit);
        // SLIP is lossless for any frame.
        let mut again = SlipDecoder::with_limit(limit);
        assert_eq!(again.push(&slip_encode(&frame)), vec![Ok(frame.clone())]);

        if let Ok(cmd) = Command::parse(&frame) {
            assert_eq!(cmd.to_packet(), frame);
            let _ = cmd.words::<4>();
            let _ = cmd.word(usize::from(knobs));
            if let Ok(block) = cmd.data_block() {
                let _ = block.len_matches();
                assert_eq!(block.payload.len() + 16, cmd.data.len());
            }
        }
        if let Ok(resp) = Response::parse(&frame) {
            assert_eq!(resp.to_packet(), frame);
            for body in [0, 2, 4, 16, usize::from(knobs)] {
                let _ = resp.status(body);
                let _ = resp.rom_result(body).map(|r| r.map_err(|e| e.to_string()));
                let _ = resp.stub_result(body).map(|r| r.map_err(|e| e.to_string()));
            }
        }
    }
});
