//! Over-the-air updates of the Arduino core: the protocol codecs and the harness's clients.
//!
//! Codecs (layer L0: bytes in, values out; no sockets, no clock):
//! - [`proto`]: ArduinoOTA / espota.py: UDP invitation, MD5 challenge, TCP acknowledgements.
//! - [`multipart`]: the `multipart/form-data` upload to ESP8266HTTPUpdateServer, built on the
//!   host side and parsed incrementally on the device side.
//! - [`updater`]: the core's `Updater` (checks, error codes, staging, eboot command).
//!
//! Clients (layer L1: blocking std sockets and the clock, given a `SocketAddr`):
//! - [`espota`]: the ArduinoOTA uploader (UDP invitation, TCP back-connect).
//! - [`http`]: the multipart POST to `/update`.
//! - [`client`]: what both share (payload, progress [`Event`]s, [`Cancel`], [`Delivered`]);
//!   both fail with one [`OtaError`].
//!
//! Nothing here imports `rig`, `sim` or any other layer above. The clients and the simulator's
//! OTA servers sit on top of the codecs and must not re-implement them.

pub mod client;
mod error;
pub mod espota;
pub mod http;
pub mod multipart;
pub mod proto;
pub mod updater;

pub use client::{Cancel, Delivered, Event, Password, Payload};
pub use error::{OtaError, Phase, ResponseProblem};

/// A malformed OTA message, upload body or eboot command block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum CodecError {
    /// An espota invitation or auth message that does not follow `"<cmd> <port> <size> <md5>\n"`.
    #[error("bad espota message: field `{field}` is `{got}`")]
    #[diagnostic(code(harness::ota::invitation))]
    Invitation {
        /// The field that is wrong.
        field: &'static str,
        /// What was found there.
        got: String,
    },
    /// A UDP reply from the device that is none of `OK`, `AUTH <nonce>`, `ERR: ...`,
    /// `Authentication Failed`.
    #[error("unexpected espota reply `{got}`")]
    #[diagnostic(
        code(harness::ota::reply),
        help("is something other than ArduinoOTA listening on that port?")
    )]
    Reply {
        /// The reply, lossily decoded.
        got: String,
    },
    /// A byte in the device's TCP reply stream that is neither an acknowledgement digit nor the
    /// start of `OK` / `ERROR[n]: ...`.
    #[error("unexpected byte {byte:#04x} at offset {offset} of the espota reply stream")]
    #[diagnostic(code(harness::ota::reply_stream))]
    ReplyByte {
        /// Offset in the stream.
        offset: u64,
        /// The byte.
        byte: u8,
    },
    /// A malformed multipart body or header.
    #[error("multipart upload: {problem} at byte {offset}")]
    #[diagnostic(code(harness::ota::multipart))]
    Multipart {
        /// Offset in the body (0 for problems in the Content-Type header).
        offset: u64,
        /// What is wrong.
        problem: multipart::Problem,
    },
    /// An eboot command block whose magic is wrong (no command pending).
    #[error("no eboot command: magic word is {found:#010x}")]
    #[diagnostic(code(harness::ota::eboot_magic))]
    EbootMagic {
        /// The first word.
        found: u32,
    },
    /// An eboot command block with a wrong CRC (eboot ignores it).
    #[error("eboot command CRC is {stored:#010x}, computed {computed:#010x}")]
    #[diagnostic(code(harness::ota::eboot_crc))]
    EbootCrc {
        /// The CRC word in the block.
        stored: u32,
        /// The CRC of the first 31 words.
        computed: u32,
    },
}
