//! The simulator's UART download loop and esptool stub, driven with arbitrary host bytes.
//!
//! The first byte picks the board, where the chip starts (autobauding ROM, synced ROM, current or
//! legacy stub) and the host's baud rate; the rest arrives in chunks whose sizes come from the
//! input too. Nothing may panic, and while the ROM loader runs every SLIP frame the chip sends
//! must be a well-formed response (the stub also sends bare frames: greeting, flash data, MD5).

#![no_main]

use harness::flash::proto::{Response, SlipDecoder};
use harness::sim::fuzzing::{FuzzChip, Start};
use libfuzzer_sys::fuzz_target;

const BAUDS: [u32; 4] = [115_200, 74_880, 460_800, 9_600];

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, mut rest)) = data.split_first() else {
        return;
    };
    let board = if knobs & 1 == 0 { "sonoff-basic" } else { "sonoff-4ch" };
    let start = match knobs >> 1 & 3 {
        0 => Start::RomLoader,
        1 => Start::RomSynced,
        2 => Start::Stub,
        _ => Start::LegacyStub,
    };
    // Mostly the rate the chip expects, so frames get through the UART model.
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
        // The host reads at the chip's rate; text (banners) is skipped between frames.
        for frame in frames.push(&chip.take_tx()).into_iter().flatten() {
            if rom {
                let resp = Response::parse(&frame);
                assert!(resp.is_ok(), "ROM loader sent {frame:02x?}: {resp:?}");
            }
        }
    }
});
