//! The boot-log parser on hostile input: it never panics, and chunking never changes the result.

use harness::bootlog::{self, Event, Parser};
use proptest::prelude::*;

fn corpus_bytes() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/corpus");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "log").then(|| std::fs::read(p).unwrap())
        })
        .collect();
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let log = bootlog::parse(&bytes);
        let _ = harness::triage::triage(&log);
    }

    #[test]
    fn chunking_is_invisible(bytes in proptest::collection::vec(any::<u8>(), 0..2048), split in 1usize..64) {
        let whole = bootlog::parse(&bytes);
        let mut p = Parser::new();
        for c in bytes.chunks(split) {
            p.feed(c);
        }
        prop_assert_eq!(p.finish(), whole);
    }

    #[test]
    fn corpus_logs_cut_anywhere_never_panic(idx in 0usize..38, cut in 0usize..4000, flip in any::<(usize, u8)>()) {
        let logs = corpus_bytes();
        let mut bytes = logs[idx % logs.len()].clone();
        bytes.truncate(cut.min(bytes.len()));
        if !bytes.is_empty() {
            let i = flip.0 % bytes.len();
            bytes[i] ^= flip.1;
        }
        let _ = harness::triage::triage_bytes(&bytes);
    }
}

#[test]
fn nul_cr_and_mixed_line_ends() {
    let log = bootlog::parse(b"\0\0\0ets Jan  8 2013,rst cause:2, boot mode:(3,6)\r\r\nload 0x4010f000, len 1384, room 16\rtail 8\n\rchksum 0x2d\r\ncsum 0x2d\n~ld");
    let events: Vec<_> = log.records().map(|r| (r.line, r.event.clone())).collect();
    assert!(matches!(events[0], (1, Event::RomBanner(_))));
    assert!(events.contains(&(
        2,
        Event::Load {
            addr: 0x4010f000,
            len: 1384
        }
    )));
    assert!(events.contains(&(2, Event::LoaderDetail)), "{events:?}");
    assert!(events.contains(&(3, Event::Chksum(0x2d))));
    assert!(
        events.contains(&(5, Event::EbootLoad)),
        "a last line without newline counts"
    );
    assert_eq!(log.totals.lines, 5);
}

#[test]
fn megabytes_of_noise_without_newline_stay_bounded() {
    let mut p = Parser::new();
    let noise: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 0x80)
        .collect();
    for _ in 0..8 {
        p.feed(&noise);
    }
    p.feed(b"\nets Jan  8 2013,rst cause:1, boot mode:(3,7)\n");
    let log = p.finish();
    assert_eq!(log.totals.garbage_bytes, 8 * 1024 * 1024);
    assert_eq!(log.totals.boots, 1);
    let records: usize = log.boots.iter().map(|b| b.records().count()).sum();
    assert!(records <= 2 * (bootlog::RECORDS_HEAD + bootlog::RECORDS_TAIL));
}
