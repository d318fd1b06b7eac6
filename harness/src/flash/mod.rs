//! Serial flashing of ESP8266/ESP8285 boards through the ROM loader.
//!
//! - [`proto`] (L0, pure): SLIP framing, the command/response codec, op codes, status codes and
//!   the protocol's constants and timeouts. Both the simulator's ROM loader and the harness's own
//!   flasher use it, so the two cannot drift apart.
//! - [`client`] (L1): the ROM loader client over any [`crate::rig::Link`]: sync, chip detection,
//!   flash ID, erase and write.
//! - [`verify`] (pure): a write is verified by booting it and matching the image's identity line.
//! - [`board`]: the driver over a [`crate::rig::Rig`] that the CLI and the scenario runner call:
//!   download mode, write, power cycle, verify ([`flash_board`]).
//!
//! Nothing here may depend on the runner or the simulator; `client` knows the rig only through
//! the `Link` trait.
//!
//! Why hand-written: no maintained Rust crate speaks the ESP8266 ROM loader protocol (espflash
//! dropped the chip in 3.0), and the codec is small.

pub mod board;
pub mod client;
pub mod proto;
pub mod verify;

pub use board::{
    AfterFlash, FlashOptions, FlashReport, VERIFY_TIMEOUT, Verification, Written,
    expected_identity, flash_board, wait_identity, write_image,
};
pub use client::{
    After, ChipInfo, FlashError, FlashId, Flasher, Progress, SyncConfig, SyncHint, Timeouts,
    WriteSummary, rom_erase_size,
};
pub use verify::IdentityWatch;
