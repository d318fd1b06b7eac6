//! The image checksum byte and the core >= 3.0 flash CRC.
//!
//! The ROM's checksum is 0xEF XOR every byte of segment data (esptool `ESPLoader.checksum`,
//! `ESP_CHECKSUM_MAGIC`). It sits in the last byte of the image, after zero padding that makes
//! the image length a multiple of 16. The ROM checks it for the image at flash 0x0 (the
//! `chksum 0x2d` / `csum 0x2d` boot lines); eboot does not check the app's.
//!
//! The flash CRC is the one the Arduino core's `tools/elf2bin.py` (`crc8266`) stores at flash
//! 0x1014 and `ESP.checkFlashCRC()` recomputes: CRC-32, polynomial 0x04C11DB7, initial value
//! 0xFFFFFFFF, MSB first, no final XOR (that is the catalogue's CRC-32/MPEG-2), over the whole
//! file with the two words at 0x1010 and 0x1014 taken as zero.

use serde::Serialize;

/// Seed of the ROM checksum (esptool `ESP_CHECKSUM_MAGIC`).
pub const CHECKSUM_SEED: u8 = 0xEF;

/// The ROM checksum of a sequence of segment data blocks.
pub fn rom_checksum<'a>(segments: impl IntoIterator<Item = &'a [u8]>) -> u8 {
    segments
        .into_iter()
        .fold(CHECKSUM_SEED, |acc, data| acc ^ xor_bytes(data))
}

/// XOR of all bytes.
pub(crate) fn xor_bytes(data: &[u8]) -> u8 {
    data.iter().fold(0, |acc, b| acc ^ b)
}

/// Offset of the checksum byte for an image whose segments end at `end` (image starts at `base`).
///
/// esptool `align_file_position(f, 16)`: skip to the last byte of the current 16-byte block.
pub(crate) fn checksum_offset(base: usize, end: usize) -> usize {
    base + ((end - base) | 15)
}

/// The stored and computed checksum of one image: a verdict, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Checksum {
    /// Absolute offset of the checksum byte.
    pub offset: usize,
    /// The byte in the file.
    pub stored: u8,
    /// 0xEF XOR all segment data.
    pub computed: u8,
}

impl Checksum {
    /// Whether stored and computed agree.
    pub fn is_valid(&self) -> bool {
        self.stored == self.computed
    }
}

/// The flash CRC algorithm of the Arduino core (`crc8266` in elf2bin.py, eboot's `crc_update`).
pub(crate) const FLASH_CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_MPEG_2);

/// Flash offset of `__crc_len` (core >= 3.0): the first word of `.irom0.text`.
pub const CRC_LEN_OFFSET: usize = 0x1010;
/// Flash offset of `__crc_val` (core >= 3.0).
pub const CRC_VAL_OFFSET: usize = 0x1014;

/// The core's flash CRC of `file`, with the words at 0x1010 and 0x1014 counted as zero.
///
/// Returns `None` when the file is too short to hold both words.
pub fn flash_crc(file: &[u8]) -> Option<u32> {
    if file.len() < CRC_VAL_OFFSET + 4 {
        return None;
    }
    let mut digest = FLASH_CRC.digest();
    digest.update(&file[..CRC_LEN_OFFSET]);
    digest.update(&[0u8; 8]);
    digest.update(&file[CRC_VAL_OFFSET + 4..]);
    Some(digest.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_ef_xor_data() {
        assert_eq!(rom_checksum([&b""[..]]), 0xEF);
        assert_eq!(rom_checksum([&b"\x01\x02"[..], &b"\x04"[..]]), 0xEF ^ 0x07);
        assert_eq!(rom_checksum([&b"\xEF"[..]]), 0x00);
    }

    #[test]
    fn checksum_offset_ends_a_16_byte_block() {
        assert_eq!(checksum_offset(0, 0), 15);
        assert_eq!(checksum_offset(0, 15), 15);
        assert_eq!(checksum_offset(0, 16), 31);
        assert_eq!(checksum_offset(0x1000, 0x1000 + 0x579), 0x157F);
    }

    #[test]
    fn flash_crc_matches_elf2bin_bitwise_definition() {
        // elf2bin's crc8266 is a bit-by-bit MSB-first CRC; recompute it the slow way here.
        fn crc8266(data: &[u8]) -> u32 {
            let mut crc = 0xFFFF_FFFFu32;
            for &byte in data {
                for i in (0..8).rev() {
                    let mut bit = crc & 0x8000_0000 != 0;
                    if byte & (1 << i) != 0 {
                        bit = !bit;
                    }
                    crc <<= 1;
                    if bit {
                        crc ^= 0x04C1_1DB7;
                    }
                }
            }
            crc
        }
        assert_eq!(FLASH_CRC.checksum(b"123456789"), 0x0376_E6E7);
        let mut file: Vec<u8> = (0..0x1100u32).map(|i| (i * 7 + 3) as u8).collect();
        let expected = {
            let mut z = file.clone();
            z[CRC_LEN_OFFSET..CRC_VAL_OFFSET + 4].fill(0);
            crc8266(&z)
        };
        assert_eq!(flash_crc(&file), Some(expected));
        // The stored words themselves do not change the CRC.
        file[CRC_LEN_OFFSET..CRC_VAL_OFFSET + 4].copy_from_slice(&[0xAB; 8]);
        assert_eq!(flash_crc(&file), Some(expected));
        assert_eq!(flash_crc(&file[..0x1017]), None);
    }
}
