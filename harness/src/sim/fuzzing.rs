//! A narrow door into the chip model for the fuzz targets in `harness/fuzz` (feature `fuzzing`).
//!
//! The chip, the ROM loader and the stub are crate-private: outside the crate the simulator is
//! only reached through its pty, which is far too slow for a fuzzer. This wrapper drives the same
//! [`Chip::on_rx`] transition the pty reader thread calls, with in-memory flash.

use crate::board;
use crate::flash::proto::{self, Command, Op};

use super::chip::{Chip, Output};
use super::flash_model::Flash;
use super::stub::{KNOWN_STUBS, StubKind};

/// Where the fuzzed bytes start arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The ROM's download loop, still autobauding.
    RomLoader,
    /// The ROM's download loop after a SYNC at 115200.
    RomSynced,
    /// esptool's current stub, uploaded and running at 115200.
    Stub,
    /// esptool's legacy stub, uploaded and running at 115200.
    LegacyStub,
}

/// A powered chip in download mode with in-memory flash.
#[derive(Debug)]
pub struct FuzzChip {
    chip: Chip,
}

/// The host rate used to bring the chip to its [`Start`].
const SETUP_BAUD: u32 = 115_200;

impl FuzzChip {
    /// A chip on board `board_id` (`sonoff-basic`, `sonoff-4ch`), powered on with GPIO0 low and
    /// brought to `start`.
    pub fn new(board_id: &str, start: Start) -> FuzzChip {
        let b = board::find(board_id).expect("a known board id");
        let mut chip = Chip::new(b, Flash::in_memory(b.flash_size), false);
        chip.set_button(true);
        chip.power_on();
        let mut me = FuzzChip { chip };
        if start != Start::RomLoader {
            me.on_rx(&Command::sync().to_slip(), SETUP_BAUD);
        }
        let kind = match start {
            Start::Stub => Some(StubKind::Current),
            Start::LegacyStub => Some(StubKind::Legacy),
            Start::RomLoader | Start::RomSynced => None,
        };
        if let Some(s) = kind.and_then(|k| KNOWN_STUBS.iter().find(|s| s.kind == k)) {
            // MEM_BEGIN of the stub's text (left zero: the simulator recognises a stub by where
            // it is loaded), then MEM_END jumping to its entry.
            let words = [s.text_len as u32, 1, proto::RAM_BLOCK, s.text_start];
            me.on_rx(
                &Command::from_words(Op::MemBegin, &words).to_slip(),
                SETUP_BAUD,
            );
            me.on_rx(
                &Command::from_words(Op::MemEnd, &[0, s.entry]).to_slip(),
                SETUP_BAUD,
            );
            assert_eq!(me.state(), "stub", "the stub upload must start the stub");
        }
        me.take_tx();
        me
    }

    /// Bytes from the host, sent at `host_baud`.
    pub fn on_rx(&mut self, bytes: &[u8], host_baud: u32) {
        self.chip.on_rx(bytes, host_baud);
    }

    /// Everything the chip transmitted since the last call, ignoring rates.
    pub fn take_tx(&mut self) -> Vec<u8> {
        self.chip
            .take_output()
            .into_iter()
            .filter_map(|o| match o {
                Output::Tx { bytes, .. } => Some(bytes),
                Output::Delay { .. } => None,
            })
            .flatten()
            .collect()
    }

    /// What the chip runs (`rom-download`, `stub`, `halted`, ...).
    pub fn state(&self) -> &'static str {
        self.chip.status().state
    }
}
