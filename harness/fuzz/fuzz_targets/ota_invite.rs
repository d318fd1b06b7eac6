//! ArduinoOTA on both sides: the device's UDP listener (invitation, authentication), the strict
//! host-side parsers, and the host's reader of the device's TCP replies.
//!
//! The input is a sequence of datagrams, each prefixed by its length byte; the listener gets them
//! in order (with and without a password), and their concatenation goes through the reply
//! scanner at once and in datagram-sized reads.

#![no_main]

use harness::ota::CodecError;
use harness::ota::proto::{
    Invitation, InviteReply, ListenerAction, OtaListener, ReplyScanner, TransferReply, md5_hex,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
        // Without a password every invitation the device accepts runs at once.
        match open.on_datagram(d, i as u32) {
            ListenerAction::Run(inv) => assert_eq!(inv.md5.chars().count(), 32),
            ListenerAction::Ignore => {}
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

    // The TCP reply stream: split across reads anywhere, it must give the same final reply and
    // the same error; only the grouping of acknowledgement digits may differ.
    let stream: Vec<u8> = datagrams.concat();
    let at_once = scan(&[&stream]);
    let chunked = scan(&datagrams);
    assert_eq!(at_once, chunked, "chunking changed the replies");
});

/// Feeds `reads` to a scanner; returns the non-acknowledgement replies or the first error.
fn scan(reads: &[&[u8]]) -> Result<Vec<TransferReply>, CodecError> {
    let mut scanner = ReplyScanner::new();
    let mut out = Vec::new();
    for r in reads {
        out.extend(scanner.feed(r)?);
    }
    out.extend(scanner.finish()?);
    out.retain(|r| !matches!(r, TransferReply::Ack(_)));
    Ok(out)
}
