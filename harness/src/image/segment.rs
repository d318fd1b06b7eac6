//! Segments: `addr:u32le size:u32le data[size]`, one after another after the header.
//!
//! The name guess follows the ESP8266 memory map (esptool `ESP8266ROM.MEMORY_MAP`) and the
//! order the Arduino core's elf2bin writes sections in (`.irom0.text .text .text1 .data
//! .rodata` for the app, `.text .rodata` for eboot).

use serde::Serialize;

use super::ImageError;

/// Length of a segment header.
pub const SEGMENT_HEADER_LEN: usize = 8;

/// Where eboot is linked in IRAM (the ROM's `load 0x4010f000` line).
pub const EBOOT_LOAD_ADDR: u32 = 0x4010_F000;
/// Where `.irom0.text` is mapped: flash 0x1010 seen through the cache at 0x40200000.
pub const IROM0_ADDR: u32 = 0x4020_1010;
/// Start of the app's `.text` in IRAM.
pub const IRAM_ADDR: u32 = 0x4010_0000;
/// Start of DRAM, where `.data` and `.rodata` load.
pub const DRAM_ADDR: u32 = 0x3FFE_8000;

/// What a segment's load address says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SegmentKind {
    /// Flash-mapped code, 0x40200000..0x40300000 (`.irom0.text`).
    Irom,
    /// Instruction RAM, 0x40100000..0x4010F000 (`.text`, `.text1`).
    Iram,
    /// The top of IRAM from 0x4010F000, where eboot runs.
    Eboot,
    /// Data RAM, 0x3FFE8000..0x40000000 (`.data`, `.rodata`).
    Dram,
    /// Anything else (suspicious in an ESP8266 image).
    Other,
}

impl SegmentKind {
    /// The kind for a load address.
    pub fn of(addr: u32) -> SegmentKind {
        match addr {
            0x4020_0000..0x4030_0000 => SegmentKind::Irom,
            0x4010_0000..EBOOT_LOAD_ADDR => SegmentKind::Iram,
            EBOOT_LOAD_ADDR..0x4011_0000 => SegmentKind::Eboot,
            DRAM_ADDR..0x4000_0000 => SegmentKind::Dram,
            _ => SegmentKind::Other,
        }
    }
}

/// One segment of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Segment {
    index: usize,
    header_offset: usize,
    addr: u32,
    len: u32,
    kind: SegmentKind,
    name: &'static str,
    #[serde(skip)]
    data: Vec<u8>,
}

impl Segment {
    /// Position in the image (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Absolute offset of the 8-byte segment header in the input.
    pub fn header_offset(&self) -> usize {
        self.header_offset
    }

    /// Absolute offset of the first data byte in the input.
    pub fn data_offset(&self) -> usize {
        self.header_offset + SEGMENT_HEADER_LEN
    }

    /// Load address.
    pub fn addr(&self) -> u32 {
        self.addr
    }

    /// Data length in bytes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the segment has no data.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memory region of the load address.
    pub fn kind(&self) -> SegmentKind {
        self.kind
    }

    /// Best guess at the linker section (`.irom0.text`, `.text`, `.data`, `.rodata`, ...).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The segment data.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

/// Reads `count` segments starting at `offset`; returns them and the offset after the last one.
pub(crate) fn parse_segments(
    bytes: &[u8],
    offset: usize,
    count: u8,
) -> Result<(Vec<Segment>, usize), ImageError> {
    let mut pos = offset;
    let mut segments = Vec::with_capacity(count as usize);
    let mut seen_dram = false;
    for index in 0..count as usize {
        let h = bytes
            .get(pos..pos + SEGMENT_HEADER_LEN)
            .ok_or(ImageError::Truncated {
                offset: pos,
                what: "a segment header",
                needed: SEGMENT_HEADER_LEN,
                len: bytes.len(),
            })?;
        let addr = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let start = pos + SEGMENT_HEADER_LEN;
        let available = bytes.len() - start;
        if len as usize > available {
            return Err(ImageError::SegmentPastEnd {
                index,
                offset: pos,
                addr,
                size: len,
                available,
            });
        }
        let kind = SegmentKind::of(addr);
        let name = match kind {
            SegmentKind::Irom => ".irom0.text",
            SegmentKind::Iram => ".text",
            SegmentKind::Eboot => "eboot",
            // elf2bin writes .data before .rodata; .data starts DRAM.
            SegmentKind::Dram if !seen_dram && addr == DRAM_ADDR => ".data",
            SegmentKind::Dram => ".rodata",
            SegmentKind::Other => "?",
        };
        seen_dram |= kind == SegmentKind::Dram;
        segments.push(Segment {
            index,
            header_offset: pos,
            addr,
            len,
            kind,
            name,
            data: bytes[start..start + len as usize].to_vec(),
        });
        pos = start + len as usize;
    }
    Ok((segments, pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_two_segments() {
        let bytes = b"\x00\x00\x10\x40\x02\x00\x00\x00\xAA\xBB\x00\x80\xFE\x3F\x01\x00\x00\x00\xCC";
        let (segs, end) = parse_segments(bytes, 0, 2).unwrap();
        assert_eq!(end, bytes.len());
        assert_eq!(segs[0].addr(), IRAM_ADDR);
        assert_eq!(segs[0].data(), b"\xAA\xBB");
        assert_eq!(segs[0].name(), ".text");
        assert_eq!(segs[1].header_offset(), 10);
        assert_eq!(segs[1].data_offset(), 18);
        assert_eq!(segs[1].name(), ".data");
        assert_eq!(segs[1].kind(), SegmentKind::Dram);
    }

    #[test]
    fn segment_past_end_names_offset_and_sizes() {
        let bytes = b"\x10\x10\x20\x40\x00\x01\x00\x00\x01\x02";
        assert_eq!(
            parse_segments(bytes, 0, 1),
            Err(ImageError::SegmentPastEnd {
                index: 0,
                offset: 0,
                addr: IROM0_ADDR,
                size: 256,
                available: 2
            })
        );
        assert_eq!(
            parse_segments(&bytes[..5], 0, 1),
            Err(ImageError::Truncated {
                offset: 0,
                what: "a segment header",
                needed: 8,
                len: 5
            })
        );
    }

    #[test]
    fn kinds_follow_the_memory_map() {
        assert_eq!(SegmentKind::of(EBOOT_LOAD_ADDR), SegmentKind::Eboot);
        assert_eq!(SegmentKind::of(IROM0_ADDR), SegmentKind::Irom);
        assert_eq!(SegmentKind::of(0x3FFE_8100), SegmentKind::Dram);
        assert_eq!(SegmentKind::of(0x6000_0000), SegmentKind::Other);
    }
}
