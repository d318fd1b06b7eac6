//! ESP8266 application images: parse, lint against a board, build test images.
//!
//! L0: pure functions over bytes. No file system, no clock; callers read the file and pass
//! the bytes in. Imports only [`crate::board`].
//!
//! - [`header`]: the 8-byte header (magic 0xE9, segment count, flash mode/size/frequency, entry)
//! - [`segment`]: segment headers and data, with a guess at the linker section
//! - [`checksum`]: the ROM checksum byte and the core >= 3.0 flash CRC
//! - [`firmware`]: the Arduino two-stage file (eboot at 0x0, app at 0x1000)
//! - [`identity`]: the `HILFW app=.. version=..` record of the reference firmware
//! - [`lint`](mod@lint): checks of an image against a [`BoardProfile`](crate::board::BoardProfile)
//! - [`build`](mod@build): makes valid, deterministic test images (`harness image make`)
//!
//! Source for the format: esptool `bin_image.py` (v5.6.0) and the Arduino core's
//! `tools/elf2bin.py`; see also `docs/protocols.md` §D.

pub mod build;
pub mod checksum;
mod error;
pub mod firmware;
pub mod header;
pub mod identity;
pub mod lint;
pub mod segment;

use serde::Serialize;

pub use build::{BuildSpec, build};
pub use checksum::Checksum;
pub use error::ImageError;
pub use firmware::{AppChecksum, Firmware, FlashCrc, Layout, parse_firmware};
pub use header::{FlashFreq, FlashSize, Header};
pub use identity::{Fault, Identity};
pub use lint::{Lint, LintId, Severity, check, lint};
pub use segment::{Segment, SegmentKind};

use checksum::{checksum_offset, rom_checksum};
use header::HEADER_LEN;

/// One image: header, segments, checksum byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    offset: usize,
    len: usize,
    header: Header,
    segments: Vec<Segment>,
    checksum: Checksum,
}

impl Image {
    /// Offset of the image in the input (0, or 0x1000 for the app of a combined file).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Length including padding and the checksum byte (a multiple of 16).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the image has zero length (never true for a parsed image).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset just past the checksum byte.
    pub fn end(&self) -> usize {
        self.offset + self.len
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The segments, in file order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Stored and computed checksum.
    pub fn checksum(&self) -> Checksum {
        self.checksum
    }
}

/// Parses the single image at offset 0 of `bytes`.
///
/// A wrong checksum is not an error: see [`Image::checksum`]. Bytes after the image are
/// ignored (use [`parse_firmware`] for whole files).
pub fn parse(bytes: &[u8]) -> Result<Image, ImageError> {
    parse_at(bytes, 0)
}

/// Parses the image starting at `offset`; errors name absolute offsets.
pub(crate) fn parse_at(bytes: &[u8], offset: usize) -> Result<Image, ImageError> {
    let header = Header::parse(bytes, offset)?;
    let (segments, end) =
        segment::parse_segments(bytes, offset + HEADER_LEN, header.segment_count())?;
    let at = checksum_offset(offset, end);
    let stored = *bytes.get(at).ok_or(ImageError::Truncated {
        offset: at,
        what: "the checksum byte",
        needed: 1,
        len: bytes.len(),
    })?;
    let computed = rom_checksum(segments.iter().map(|s| s.data()));
    Ok(Image {
        offset,
        len: at + 1 - offset,
        header,
        segments,
        checksum: Checksum {
            offset: at,
            stored,
            computed,
        },
    })
}
