//! The boot-log parser on hostile input: it never panics, and chunking never changes the result.

use harness::bootlog::{self, BootLog, Chunk, Event, Parser};
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

/// Feeds `bytes` to a parser in reads of the given sizes (taken in turn).
fn parse_fed(bytes: &[u8], reads: &[usize]) -> BootLog {
    let mut p = Parser::new();
    let mut rest = bytes;
    for &size in reads.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (read, tail) = rest.split_at(size.min(rest.len()));
        p.feed(read);
        rest = tail;
    }
    p.finish()
}

/// The same reads through the chunk API, cutting each chunk before the one before it is
/// added, the way the threaded reader does.
fn parse_chunked(bytes: &[u8], reads: &[usize]) -> BootLog {
    let mut p = Parser::new();
    let mut pending: Option<Chunk> = None;
    let mut rest = bytes;
    for &size in reads.iter().cycle() {
        let mut chunk = Chunk::default();
        let space = p.chunk_space(&mut chunk, size);
        let n = space.len().min(rest.len());
        space[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        if n == 0 {
            break;
        }
        p.cut(&mut chunk, n);
        chunk.classify();
        if let Some(mut before) = pending.replace(chunk) {
            p.add(&mut before);
        }
    }
    if let Some(mut last) = pending {
        p.add(&mut last);
    }
    p.finish()
}

/// Bytes shaped like captures: corpus lines, runs of noise, bare CRs, and lines longer than
/// [`bootlog::MAX_LINE`] (which are cut at read boundaries).
fn capture_like() -> impl Strategy<Value = Vec<u8>> {
    let logs = corpus_bytes();
    let part = prop_oneof![
        (0..logs.len(), 0usize..4000).prop_map(move |(i, cut)| {
            let log = &logs[i];
            log[..cut.min(log.len())].to_vec()
        }),
        proptest::collection::vec(any::<u8>(), 0..600),
        (1usize..3, 4000usize..9000).prop_map(|(c, n)| vec![b"x\r"[c - 1]; n]),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
    ];
    proptest::collection::vec(part, 0..12).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn chunks_give_the_log_that_feeding_gives(
        bytes in capture_like(),
        reads in proptest::collection::vec(1usize..10_000, 1..4),
    ) {
        prop_assert_eq!(parse_chunked(&bytes, &reads), parse_fed(&bytes, &reads));
    }

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

#[test]
fn chunks_cut_long_lines_where_feeding_does() {
    // A line of 10 000 bytes is handed on in pieces every `MAX_LINE` bytes of the line,
    // whatever the reads; the chunk API must cut it at the same places, and keep the pieces on
    // one line number.
    let mut bytes = b"ets Jan  8 2013,rst cause:2, boot mode:(3,6)\n".to_vec();
    bytes.extend(std::iter::repeat_n(0x80, 10_000));
    bytes.extend_from_slice(b"\nld\nunterminated last line");
    for reads in [[3000], [1], [4097], [20_000]] {
        let chunked = parse_chunked(&bytes, &reads);
        assert_eq!(chunked, parse_fed(&bytes, &reads), "reads of {reads:?}");
        assert_eq!(chunked.totals.lines, 4);
        assert_eq!(chunked.totals.garbage_bytes, 10_000);
        assert_eq!(chunked.totals.bytes, bytes.len() as u64);
    }
    let pieces = |reads: &[usize]| {
        parse_chunked(&bytes, reads)
            .records()
            .filter(|r| r.line == 2)
            .count()
    };
    for reads in [[3000], [1], [4097], [20_000]] {
        assert_eq!(
            pieces(&reads),
            3,
            "4096 + 4096 + 1808 bytes, reads of {reads:?}"
        );
    }
}

#[test]
fn chunks_of_a_long_boot_loop_give_the_log_that_feeding_gives() {
    // Thousands of boots, so that most chunks hold more than `BOOTS_TAIL` of them and the
    // boots certainly dropped are summed up rather than collected; crashes, noise and long
    // boots in between, so that the sums have something to count.
    let logs = corpus_bytes();
    let mut bytes = Vec::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..6000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&logs[x as usize % logs.len()]);
        if i % 7 == 0 {
            bytes.extend((0..x % 700).map(|k| (x >> (k % 50)) as u8));
        }
        if i % 1000 == 999 {
            for k in 0..3000 {
                bytes.extend_from_slice(format!("app line {k}\n").as_bytes());
            }
        }
    }
    let whole = bootlog::parse(&bytes);
    assert!(whole.totals.boots > 5000 && whole.totals.crashes > 100);
    assert!(whole.totals.boots_omitted > 0);
    for reads in [&[bootlog::READ_SIZE][..], &[7_000, 90_000], &[1 << 20]] {
        assert_eq!(parse_chunked(&bytes, reads), whole, "reads of {reads:?}");
    }
    assert_eq!(bootlog::parse_reader(&bytes[..]).unwrap(), whole);
}
