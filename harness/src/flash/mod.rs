//! Serial flashing of ESP8266/ESP8285 boards: the ROM loader and esptool stub protocol.
//!
//! - [`proto`] (L0, pure): SLIP framing, the command/response codec, op codes, status codes and
//!   the protocol's constants and timeouts. Both the simulator's ROM loader and the harness's own
//!   flasher use it, so the two cannot drift apart.
//!
//! Nothing in this module may depend on the rig, the runner or the simulator.
//!
//! Why hand-written: no maintained Rust crate speaks the ESP8266 ROM loader protocol (espflash
//! dropped the chip in 3.0), and the codec is small.

pub mod proto;
