//! The 8-byte image header: magic, segment count, flash mode, size/frequency, entry point.
//!
//! Layout and value tables from esptool `bin_image.py` / `targets/esp8266.py` (v5.6.0) and the
//! Arduino core's `tools/elf2bin.py`: `E9 nseg mode size<<4|freq entry:u32le`.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::ImageError;
use crate::board::FlashMode;

/// First byte of every ESP8266 "v1" image (esptool `ESP_IMAGE_MAGIC`).
pub const MAGIC: u8 = 0xE9;
/// Length of the image header.
pub const HEADER_LEN: usize = 8;
/// The ROM and esptool reject images with more segments (esptool `verify`).
pub const MAX_SEGMENTS: u8 = 16;

/// Flash size, the high nibble of header byte 3 (esptool `ESP8266ROM.FLASH_SIZES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FlashSize {
    /// 256 KB (nibble 1).
    K256,
    /// 512 KB (nibble 0).
    K512,
    /// 1 MB (nibble 2).
    M1,
    /// 2 MB (nibble 3).
    M2,
    /// 4 MB (nibble 4).
    M4,
    /// 2 MB with the SDK's 1024+1024 layout (nibble 5).
    M2C1,
    /// 4 MB with the SDK's 1024+1024 layout (nibble 6).
    M4C1,
    /// 8 MB (nibble 8).
    M8,
    /// 16 MB (nibble 9).
    M16,
}

impl FlashSize {
    /// Every size, in nibble order.
    pub const ALL: [FlashSize; 9] = [
        FlashSize::K512,
        FlashSize::K256,
        FlashSize::M1,
        FlashSize::M2,
        FlashSize::M4,
        FlashSize::M2C1,
        FlashSize::M4C1,
        FlashSize::M8,
        FlashSize::M16,
    ];

    /// The header nibble.
    pub fn nibble(self) -> u8 {
        match self {
            FlashSize::K512 => 0,
            FlashSize::K256 => 1,
            FlashSize::M1 => 2,
            FlashSize::M2 => 3,
            FlashSize::M4 => 4,
            FlashSize::M2C1 => 5,
            FlashSize::M4C1 => 6,
            FlashSize::M8 => 8,
            FlashSize::M16 => 9,
        }
    }

    /// The size for a header nibble, if it is a defined one.
    pub fn from_nibble(nibble: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.nibble() == nibble)
    }

    /// Size in bytes.
    pub fn bytes(self) -> u32 {
        const M: u32 = 1024 * 1024;
        match self {
            FlashSize::K256 => 256 * 1024,
            FlashSize::K512 => 512 * 1024,
            FlashSize::M1 => M,
            FlashSize::M2 | FlashSize::M2C1 => 2 * M,
            FlashSize::M4 | FlashSize::M4C1 => 4 * M,
            FlashSize::M8 => 8 * M,
            FlashSize::M16 => 16 * M,
        }
    }

    /// The name esptool prints and accepts (`1MB`, `4MB-c1`).
    pub fn name(self) -> &'static str {
        match self {
            FlashSize::K256 => "256KB",
            FlashSize::K512 => "512KB",
            FlashSize::M1 => "1MB",
            FlashSize::M2 => "2MB",
            FlashSize::M4 => "4MB",
            FlashSize::M2C1 => "2MB-c1",
            FlashSize::M4C1 => "4MB-c1",
            FlashSize::M8 => "8MB",
            FlashSize::M16 => "16MB",
        }
    }
}

impl fmt::Display for FlashSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for FlashSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl FromStr for FlashSize {
    type Err = ImageError;

    /// Accepts esptool names (`1MB`, `4MB-c1`) and elf2bin names (`1M`, `512K`), any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let want = s.trim().to_ascii_uppercase();
        FlashSize::ALL
            .into_iter()
            .find(|size| {
                let name = size.name().to_ascii_uppercase();
                name == want || name.replacen("B", "", 1) == want
            })
            .ok_or_else(|| ImageError::UnknownFlashParam {
                what: "size",
                name: s.to_string(),
                known: "256KB 512KB 1MB 2MB 4MB 2MB-c1 4MB-c1 8MB 16MB",
            })
    }
}

/// SPI clock, the low nibble of header byte 3 (esptool `ESP8266ROM.FLASH_FREQUENCY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlashFreq {
    /// 40 MHz (nibble 0).
    F40m,
    /// 26.7 MHz (nibble 1).
    F26m,
    /// 20 MHz (nibble 2).
    F20m,
    /// 80 MHz (nibble 0xF).
    F80m,
}

impl FlashFreq {
    /// Every frequency.
    pub const ALL: [FlashFreq; 4] = [
        FlashFreq::F40m,
        FlashFreq::F26m,
        FlashFreq::F20m,
        FlashFreq::F80m,
    ];

    /// The header nibble.
    pub fn nibble(self) -> u8 {
        match self {
            FlashFreq::F40m => 0x0,
            FlashFreq::F26m => 0x1,
            FlashFreq::F20m => 0x2,
            FlashFreq::F80m => 0xF,
        }
    }

    /// The frequency for a header nibble, if it is a defined one.
    pub fn from_nibble(nibble: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.nibble() == nibble)
    }

    /// The name esptool prints and accepts (`40m`).
    pub fn name(self) -> &'static str {
        match self {
            FlashFreq::F40m => "40m",
            FlashFreq::F26m => "26m",
            FlashFreq::F20m => "20m",
            FlashFreq::F80m => "80m",
        }
    }
}

impl fmt::Display for FlashFreq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for FlashFreq {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl FromStr for FlashFreq {
    type Err = ImageError;

    /// Accepts `40m`, `40`, `40MHz`, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let digits = t
            .strip_suffix("mhz")
            .or_else(|| t.strip_suffix('m'))
            .unwrap_or(&t);
        FlashFreq::ALL
            .into_iter()
            .find(|f| f.name().trim_end_matches('m') == digits)
            .ok_or_else(|| ImageError::UnknownFlashParam {
                what: "frequency",
                name: s.to_string(),
                known: "20m 26m 40m 80m",
            })
    }
}

/// A decoded image header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Header {
    segment_count: u8,
    flash_mode: FlashMode,
    flash_size: FlashSize,
    flash_freq: FlashFreq,
    entry: u32,
}

impl Header {
    /// A header with these values.
    pub fn new(
        segment_count: u8,
        flash_mode: FlashMode,
        flash_size: FlashSize,
        flash_freq: FlashFreq,
        entry: u32,
    ) -> Self {
        Header {
            segment_count,
            flash_mode,
            flash_size,
            flash_freq,
            entry,
        }
    }

    /// Decodes the header at `offset` of `bytes`; errors name absolute offsets.
    pub(crate) fn parse(bytes: &[u8], offset: usize) -> Result<Header, ImageError> {
        let h = bytes
            .get(offset..offset + HEADER_LEN)
            .ok_or(ImageError::Truncated {
                offset,
                what: "the image header",
                needed: HEADER_LEN,
                len: bytes.len(),
            })?;
        if h[0] != MAGIC {
            return Err(ImageError::BadMagic {
                offset,
                found: h[0],
            });
        }
        if h[1] == 0 {
            return Err(ImageError::NoSegments { offset: offset + 1 });
        }
        if h[1] > MAX_SEGMENTS {
            return Err(ImageError::TooManySegments {
                offset: offset + 1,
                count: h[1],
            });
        }
        let flash_mode = FlashMode::from_header(h[2]).ok_or(ImageError::UnknownFlashMode {
            offset: offset + 2,
            value: h[2],
        })?;
        let flash_size = FlashSize::from_nibble(h[3] >> 4).ok_or(ImageError::UnknownFlashSize {
            offset: offset + 3,
            value: h[3] >> 4,
        })?;
        let flash_freq =
            FlashFreq::from_nibble(h[3] & 0xF).ok_or(ImageError::UnknownFlashFreq {
                offset: offset + 3,
                value: h[3] & 0xF,
            })?;
        let entry = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        Ok(Header {
            segment_count: h[1],
            flash_mode,
            flash_size,
            flash_freq,
            entry,
        })
    }

    /// The 8 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let e = self.entry.to_le_bytes();
        [
            MAGIC,
            self.segment_count,
            self.flash_mode.header_value(),
            self.flash_size.nibble() << 4 | self.flash_freq.nibble(),
            e[0],
            e[1],
            e[2],
            e[3],
        ]
    }

    /// Number of segments.
    pub fn segment_count(&self) -> u8 {
        self.segment_count
    }

    /// SPI flash mode (byte 2).
    pub fn flash_mode(&self) -> FlashMode {
        self.flash_mode
    }

    /// Flash size (high nibble of byte 3).
    pub fn flash_size(&self) -> FlashSize {
        self.flash_size
    }

    /// Flash size in bytes.
    pub fn flash_size_bytes(&self) -> u32 {
        self.flash_size.bytes()
    }

    /// SPI clock (low nibble of byte 3).
    pub fn flash_freq(&self) -> FlashFreq {
        self.flash_freq
    }

    /// Entry point address.
    pub fn entry(&self) -> u32 {
        self.entry
    }

    /// Whether mode, size and frequency are the same as in `other`.
    pub fn same_flash_params(&self, other: &Header) -> bool {
        self.flash_mode == other.flash_mode
            && self.flash_size == other.flash_size
            && self.flash_freq == other.flash_freq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_dout_1mb_40m_header() {
        let h = Header::parse(b"\xE9\x01\x03\x20\x00\xF0\x10\x40", 0).unwrap();
        assert_eq!(h.segment_count(), 1);
        assert_eq!(h.flash_mode(), FlashMode::Dout);
        assert_eq!(h.flash_size(), FlashSize::M1);
        assert_eq!(h.flash_size_bytes(), 1 << 20);
        assert_eq!(h.flash_freq(), FlashFreq::F40m);
        assert_eq!(h.entry(), 0x4010_F000);
        assert_eq!(&h.to_bytes(), b"\xE9\x01\x03\x20\x00\xF0\x10\x40");
    }

    #[test]
    fn decodes_qio_4mb_80m() {
        let h = Header::parse(b"\xE9\x04\x00\x4F\x00\x00\x10\x40", 0).unwrap();
        assert_eq!(h.flash_mode(), FlashMode::Qio);
        assert_eq!(h.flash_size(), FlashSize::M4);
        assert_eq!(h.flash_freq(), FlashFreq::F80m);
    }

    #[test]
    fn errors_name_the_offset() {
        assert_eq!(
            Header::parse(b"\xE9\x01\x03", 0),
            Err(ImageError::Truncated {
                offset: 0,
                what: "the image header",
                needed: 8,
                len: 3
            })
        );
        assert_eq!(
            Header::parse(b"\0\0\0\0\xEA\x04\x00\x20\0\0\0\0", 4),
            Err(ImageError::BadMagic {
                offset: 4,
                found: 0xEA
            })
        );
        assert_eq!(
            Header::parse(b"\xE9\x11\x03\x20\0\0\0\0", 0),
            Err(ImageError::TooManySegments {
                offset: 1,
                count: 17
            })
        );
        assert_eq!(
            Header::parse(b"\0\xE9\x00\x03\x20\0\0\0\0", 1),
            Err(ImageError::NoSegments { offset: 2 })
        );
        assert_eq!(
            Header::parse(b"\xE9\x01\x04\x20\0\0\0\0", 0),
            Err(ImageError::UnknownFlashMode {
                offset: 2,
                value: 4
            })
        );
        assert_eq!(
            Header::parse(b"\xE9\x01\x03\x70\0\0\0\0", 0),
            Err(ImageError::UnknownFlashSize {
                offset: 3,
                value: 7
            })
        );
        assert_eq!(
            Header::parse(b"\xE9\x01\x03\x23\0\0\0\0", 0),
            Err(ImageError::UnknownFlashFreq {
                offset: 3,
                value: 3
            })
        );
    }

    #[test]
    fn names_parse_both_spellings() {
        assert_eq!("1MB".parse::<FlashSize>().unwrap(), FlashSize::M1);
        assert_eq!("4m".parse::<FlashSize>().unwrap(), FlashSize::M4);
        assert_eq!("512K".parse::<FlashSize>().unwrap(), FlashSize::K512);
        assert_eq!("4MB-c1".parse::<FlashSize>().unwrap(), FlashSize::M4C1);
        assert!("3MB".parse::<FlashSize>().is_err());
        assert_eq!("40m".parse::<FlashFreq>().unwrap(), FlashFreq::F40m);
        assert_eq!("80".parse::<FlashFreq>().unwrap(), FlashFreq::F80m);
        assert_eq!("26MHz".parse::<FlashFreq>().unwrap(), FlashFreq::F26m);
        assert!("60m".parse::<FlashFreq>().is_err());
        for s in FlashSize::ALL {
            assert_eq!(FlashSize::from_nibble(s.nibble()), Some(s));
        }
    }
}
