//! The checks behind the fuzz targets in `harness/fuzz` (feature `fuzzing`, not for normal use).
//!
//! Each function takes one fuzzer input and panics when a property fails, so a crash is a bug.
//! They live here rather than in the fuzz crate so that `tests/fuzz_regressions.rs` can replay
//! every input a fuzzer ever crashed on (`fixtures/fuzz-regressions/<target>/`) on stable, in
//! `cargo test`, with exactly the checks the fuzzer ran.

use std::path::Path;

use crate::bootlog::{self, Parser};
use crate::flash::proto::{Command, Response, SlipDecoder, slip_encode};
use crate::ota::CodecError;
use crate::ota::multipart::{self, FileUpload};
use crate::ota::proto::{
    Invitation, InviteReply, ListenerAction, OtaListener, ReplyScanner, TransferReply, md5_hex,
};
use crate::rig::RigConfig;
use crate::sim::fuzzing::{FuzzChip, Start};
use crate::{board, image, scenario, triage};

/// The targets, by name (the fuzz crate's binaries and the regression folders).
pub const TARGETS: [&str; 9] = [
    "bootlog",
    "image",
    "flash_slip",
    "sim_loader",
    "ota_invite",
    "multipart",
    "multipart_roundtrip",
    "scenario",
    "rig",
];

/// Boot-log parser and triage: any bytes, fed in any chunks, give the one-shot result.
///
/// The first two bytes seed the chunk sizes; the rest is the capture.
pub fn bootlog(data: &[u8]) {
    let (seed, capture) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => (0, data),
    };
    let whole = bootlog::parse(capture);
    assert_eq!(whole.totals.bytes, capture.len() as u64);

    let mut parser = Parser::new();
    let mut rest = capture;
    let mut state = u32::from(seed) | 1;
    // Chunk sizes: mostly small, sometimes around the parser's line limit (4096).
    let limit = [1, 16, 512, 8192][usize::from(seed % 4)];
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % limit + 1).min(rest.len());
        parser.feed(&rest[..n]);
        rest = &rest[n..];
    }
    assert_eq!(parser.finish(), whole, "chunking changed the parse");

    let report = triage::triage(&whole);
    assert_eq!(report.total_lines, whole.totals.lines);
    let _ = triage::render_text(&report, "fuzz");
    let _ = triage::render_markdown(&report, "fuzz");
}

/// Image parser and lints: an image or an error, never a panic; what parses lies inside the
/// input, and every board's lints run on it.
pub fn image(data: &[u8]) {
    if let Ok(img) = image::parse(data) {
        assert!(img.end() <= data.len());
        assert!(img.checksum().offset < data.len());
    }
    match image::parse_firmware(data) {
        Ok(fw) => {
            assert!(fw.app().end() <= data.len());
            let _ = image::check(&fw);
            for b in board::all() {
                for lint in image::lint(&fw, b) {
                    assert!(!lint.message.is_empty());
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let _ = image::Identity::find(data);
    let _ = image::checksum::flash_crc(data);
}

/// SLIP framing and the ROM loader / stub packet codec, both directions.
///
/// A knob byte (frame limit, read size), then the wire. Decoded in reads and at once, the frames
/// must be the same; each frame is read as a request (as the simulator's ROM loader and stub do)
/// and as a response (as a host-side client does), and what parses encodes back to its bytes.
pub fn flash_slip(data: &[u8]) {
    let Some((&knobs, wire)) = data.split_first() else {
        return;
    };
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
}

/// The simulator's ROM download loop and esptool stub driven with arbitrary host bytes.
///
/// A knob byte picks the board, where the chip starts (autobauding ROM, synced ROM, current or
/// legacy stub) and the host's rate; then length-prefixed reads (length byte + 1 bytes). While
/// the ROM loader runs, every SLIP frame it sends must be a well-formed response.
pub fn sim_loader(data: &[u8]) {
    const BAUDS: [u32; 4] = [115_200, 74_880, 460_800, 9_600];
    let Some((&knobs, mut rest)) = data.split_first() else {
        return;
    };
    let board = if knobs & 1 == 0 {
        "sonoff-basic"
    } else {
        "sonoff-4ch"
    };
    let start = match knobs >> 1 & 3 {
        0 => Start::RomLoader,
        1 => Start::RomSynced,
        2 => Start::Stub,
        _ => Start::LegacyStub,
    };
    // Mostly the rate the chip expects, so that frames get through the UART model.
    let host_baud = if knobs & 0x70 == 0x70 {
        BAUDS[usize::from(knobs >> 3 & 3)]
    } else {
        115_200
    };
    let mut chip = FuzzChip::new(board, start);
    let mut frames = SlipDecoder::new();
    while let Some((&len, tail)) = rest.split_first() {
        let n = (usize::from(len) + 1).min(tail.len());
        let rom_before = chip.state() == "rom-download";
        chip.on_rx(&tail[..n], host_baud);
        rest = &tail[n..];
        let rom = rom_before && chip.state() == "rom-download";
        for frame in frames.push(&chip.take_tx()).into_iter().flatten() {
            if rom {
                let resp = Response::parse(&frame);
                assert!(resp.is_ok(), "ROM loader sent {frame:02x?}: {resp:?}");
            }
        }
    }
}

/// ArduinoOTA on both sides: the device's UDP listener, the strict host-side parsers, and the
/// host's reader of the device's TCP replies.
///
/// The input is length-prefixed datagrams. The listener gets them in order, with and without a
/// password; their concatenation goes through the reply scanner at once and datagram by
/// datagram.
pub fn ota_invite(data: &[u8]) {
    let mut datagrams = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        datagrams.push(&tail[..n]);
        rest = &tail[n..];
    }

    let mut open = OtaListener::new(None);
    let mut locked = OtaListener::new(Some(md5_hex(b"secret")));
    for (i, d) in datagrams.iter().enumerate() {
        match open.on_datagram(d, i as u32) {
            ListenerAction::Run(_) | ListenerAction::Ignore => {}
            other => panic!("no password, yet {other:?}"),
        }
        let waiting = locked.waiting_for_auth();
        match locked.on_datagram(d, i as u32) {
            ListenerAction::Challenge { nonce } => {
                assert!(!waiting && nonce.len() == 32 && locked.waiting_for_auth());
            }
            ListenerAction::Run(_) | ListenerAction::AuthFailed => assert!(waiting),
            ListenerAction::Ignore => {}
        }
        // What the strict parser accepts, written out as espota.py would, reads back the same
        // on both sides.
        if let Ok(inv) = Invitation::parse(d) {
            let sent = inv.to_datagram();
            assert_eq!(Invitation::parse(&sent).as_ref().ok(), Some(&inv));
            assert_eq!(Invitation::parse_device(&sent), Some(inv));
        }
        if let Ok(reply) = InviteReply::parse(d) {
            let again = InviteReply::parse(&reply.to_datagram());
            assert_eq!(again.as_ref().ok(), Some(&reply), "{reply:?}");
        }
    }

    // Split across reads anywhere, the TCP reply stream gives the same final reply and the same
    // error; only the grouping of acknowledgement digits may differ.
    let stream: Vec<u8> = datagrams.concat();
    assert_eq!(
        scan_replies(&[&stream]),
        scan_replies(&datagrams),
        "chunking changed the replies"
    );
}

/// Feeds `reads` to a reply scanner; the non-acknowledgement replies, or the first error.
fn scan_replies(reads: &[&[u8]]) -> Result<Vec<TransferReply>, CodecError> {
    let mut scanner = ReplyScanner::new();
    let mut out = Vec::new();
    for r in reads {
        out.extend(scanner.feed(r)?);
    }
    out.extend(scanner.finish()?);
    out.retain(|r| !matches!(r, TransferReply::Ack(_)));
    Ok(out)
}

/// The device-side multipart parser on arbitrary bodies: in any reads it gives the events and
/// the error it gives at once, and never more data than came in.
///
/// A knob byte (boundary, block size, read size), then the body.
pub fn multipart(data: &[u8]) {
    const BOUNDARIES: [&str; 4] = [
        "X",
        "----HilFormBoundaryAbC123",
        "a b'()+_,-./:=?",
        "0123456789012345678901234567890123456789012345678901234567890123456789",
    ];
    let Some((&knobs, body)) = data.split_first() else {
        return;
    };
    let boundary = BOUNDARIES[usize::from(knobs & 3)];
    let block = [1, 7, 2048, 4096][usize::from(knobs >> 2 & 3)];
    let chunk = usize::from(knobs >> 4) * 3 + 1;

    let at_once = parse_multipart(boundary, block, &[body]);
    let pieces: Vec<&[u8]> = body.chunks(chunk).collect();
    assert_eq!(
        at_once,
        parse_multipart(boundary, block, &pieces),
        "chunking changed the parse"
    );
    if let (Ok(events), _) = &at_once {
        let mut data = 0;
        for e in events {
            if let multipart::Event::Data(d) = e {
                assert!(!d.is_empty() && d.len() <= block);
                data += d.len();
            }
        }
        assert!(data <= body.len());
        let ends = events
            .iter()
            .filter(|e| **e == multipart::Event::End)
            .count();
        assert!(ends <= 1);
        if ends == 1 {
            assert_eq!(events.last(), Some(&multipart::Event::End));
        }
    }
}

type Parsed = (
    Result<Vec<multipart::Event>, CodecError>,
    Result<(), CodecError>,
);

fn parse_multipart(boundary: &str, block: usize, reads: &[&[u8]]) -> Parsed {
    let mut p = multipart::Parser::new(boundary)
        .expect("a valid boundary")
        .with_block_size(block);
    let mut events = Vec::new();
    for r in reads {
        match p.feed(r) {
            Ok(e) => events.extend(e),
            Err(e) => return (Err(e), p.finish()),
        }
    }
    let offset = p.offset();
    assert!(offset <= reads.iter().map(|r| r.len() as u64).sum());
    (Ok(events), p.finish())
}

/// The host's multipart builder against the device's parser: one part with the field and file
/// name (escaped as [`FileUpload`] documents) and exactly the file's bytes, however the body is
/// cut into reads and blocks.
pub fn multipart_roundtrip(
    field: &str,
    filename: &str,
    boundary: &str,
    read: usize,
    block: usize,
    file: &[u8],
) {
    let Ok(upload) = FileUpload::new(field, filename, file.len() as u64, boundary) else {
        return;
    };
    let read = read.max(1);
    let body: Vec<u8> = upload
        .chunks(file, read)
        .expect("the announced length")
        .flatten()
        .copied()
        .collect();
    assert_eq!(body.len() as u64, upload.content_length());

    let mut parser = multipart::Parser::from_content_type(&upload.content_type())
        .expect("the builder's Content-Type")
        .with_block_size(block.max(1));
    let mut events = Vec::new();
    for r in body.chunks(read) {
        events.extend(parser.feed(r).unwrap_or_else(|e| panic!("{e}")));
    }
    parser.finish().expect("a complete body");

    let mut got = Vec::new();
    let mut parts = Vec::new();
    for e in &events {
        match e {
            multipart::Event::PartStart(h) => parts.push(h.clone()),
            multipart::Event::Data(d) => got.extend_from_slice(d),
            multipart::Event::PartEnd | multipart::Event::End => {}
        }
    }
    assert_eq!(parts.len(), 1, "{events:?}");
    assert_eq!(parts[0].name, multipart::escape_name(field));
    assert_eq!(
        parts[0].filename.as_deref(),
        Some(multipart::escape_name(filename).as_str())
    );
    assert_eq!(got, file);
    assert_eq!(events.last(), Some(&multipart::Event::End));
}

/// Scenario files: valid, or an error naming the file and a line inside it that renders;
/// images named by the text are looked up in the repository's fixtures under `repo_root`.
pub fn scenario(data: &[u8], repo_root: &Path) {
    // The loader reads files with read_to_string: invalid UTF-8 never gets this far.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.toml");
    let dir = repo_root.join("scenarios");
    match scenario::parse(text, file, &dir, Some(repo_root), &[]) {
        Ok(parsed) => {
            assert!(!parsed.runs.is_empty());
            for run in &parsed.runs {
                for step in &run.steps {
                    let _ = step.kind.to_string();
                }
            }
        }
        Err(e) => {
            let loc = e.location();
            assert_eq!(loc.file, "fuzz.toml");
            if let Some(line) = loc.line {
                assert!(line >= 1 && line <= text.lines().count() + 1, "{e}");
            }
            let mut out = String::new();
            let _ = miette::GraphicalReportHandler::new().render_report(&mut out, &e);
        }
    }
}

/// Rig files: valid, or an error naming the file and a line inside it that renders.
pub fn rig(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/rigs/fuzz.toml");
    match RigConfig::parse(text, path) {
        Ok(rig) => {
            for b in &rig.boards {
                assert!(rig.board(&b.name).is_ok());
            }
        }
        Err(e) => {
            assert_eq!(e.path, path);
            assert!(e.line >= 1 && e.line <= text.lines().count() + 1, "{e}");
            let mut out = String::new();
            let _ = miette::GraphicalReportHandler::new().render_report(&mut out, e.as_ref());
        }
    }
}
