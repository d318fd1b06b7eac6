//! # sonoff-hil: a hardware-in-the-loop harness for ESP8266/ESP8285 boards
//!
//! The crate is layered; a module may use modules of its own layer or below, never above.
//!
//! | layer | modules | rules |
//! |---|---|---|
//! | L0 pure | [`board`], [`bootlog`], [`firmware`], [`flash::proto`], [`image`], [`ota::proto`], [`ota::multipart`], [`ota::updater`], [`triage`], [`report`], [`scenario::model`] | no I/O, no clock, no threads: bytes in, values out |
//! | L1 clients | [`flash::client`], [`flash::board`], [`ota::espota`], [`ota::http`] | talk to a device over a byte link or a socket (`flash::board` borrows a rig's link and lines) |
//! | L2 rig | [`rig`], [`capture`] | power, GPIO0 and serial of one board, hardware or virtual; every byte the board sends on disk |
//! | L3 runner | [`scenario::runner`], [`scenario::rig_executor`], [`scenario::artifacts`] | scenarios: drive a rig through an [`scenario::Executor`], capture, triage, report |
//! | beside | [`sim`] | the virtual Sonoff; uses L0 only, reached through a pty and loopback sockets |
//!
//! A device failure (boot loop, watchdog, bad checksum) is data in a report; a harness failure
//! (unreadable file, vanished port) is an `Err`.

#![deny(missing_docs)]

pub mod board;
pub mod bootlog;
pub mod capture;
pub mod firmware;
pub mod flash;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod ota;
pub mod report;
pub mod rig;
pub mod scenario;
pub mod sim;
mod toml_path;
pub mod triage;
