//! The file as an Arduino build writes it: eboot at 0x0, the app at 0x1000.
//!
//! `tools/elf2bin.py` (Arduino core) writes eboot's image (`.text`, `.rodata`), pads it with
//! 0xAA up to 0x1000, then writes the app image (`.irom0.text .text .text1 .data .rodata`).
//! `.irom0.text` is mapped at 0x40201010, so its first word sits at flash 0x1010: the
//! `__crc_len` of core >= 3.0 (followed by `__crc_val` at 0x1014), or `core_version` in older
//! cores. eboot prints that word at every boot as `vXXXXXXXX`.
//!
//! A file that is a single image at 0x0 (no eboot) is a plain app; both are a [`Firmware`].

use serde::Serialize;

use super::checksum::{CRC_LEN_OFFSET, CRC_VAL_OFFSET, flash_crc, xor_bytes};
use super::header::MAGIC;
use super::segment::{IROM0_ADDR, SegmentKind};
use super::{Identity, Image, ImageError, parse_at};

/// Flash offset of the app image in a two-stage Arduino file.
pub const APP_OFFSET: usize = 0x1000;
/// Fill byte between the end of eboot and 0x1000 (elf2bin `write_bin`).
pub const EBOOT_PAD: u8 = 0xAA;

/// How the file is put together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// eboot at 0x0, padded with 0xAA, app at 0x1000 (an Arduino `.bin`).
    Combined,
    /// One image at 0x0.
    PlainApp,
}

/// The core >= 3.0 words at flash 0x1010/0x1014 and the CRC recomputed over the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FlashCrc {
    /// `__crc_len`: the file length elf2bin stored.
    pub len_word: u32,
    /// `__crc_val`: the CRC elf2bin stored.
    pub stored: u32,
    /// The CRC of this file computed the same way.
    pub computed: u32,
    /// Length of this file.
    pub file_len: usize,
}

impl FlashCrc {
    /// Whether the stored length and CRC both match this file.
    pub fn is_valid(&self) -> bool {
        self.len_word as usize == self.file_len && self.stored == self.computed
    }
}

/// Verdict on the app image's checksum byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppChecksum {
    /// Stored equals computed.
    Valid,
    /// Differs only by the CRC words: elf2bin computes the checksum *before* it patches
    /// `__crc_len`/`__crc_val` into the file, so core >= 3.0 builds look like this. eboot never
    /// checks the app checksum, so this is harmless.
    ValidBeforeCrcPatch,
    /// Differs: segment data changed after the build.
    Invalid,
}

/// A parsed firmware file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Firmware {
    len: usize,
    layout: Layout,
    eboot: Option<Image>,
    eboot_padding_other: usize,
    app: Image,
    trailing: usize,
    version_word: Option<u32>,
    flash_crc: Option<FlashCrc>,
    identity: Option<Identity>,
}

impl Firmware {
    /// Length of the file.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the file is empty (never true for a parsed firmware).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Combined eboot + app, or a plain app.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The eboot image at 0x0 of a combined file.
    pub fn eboot(&self) -> Option<&Image> {
        self.eboot.as_ref()
    }

    /// The application image (at 0x1000 in a combined file, else at 0x0).
    pub fn app(&self) -> &Image {
        &self.app
    }

    /// The image at 0x0, whose header the ROM boots with (eboot, or the plain app).
    pub fn boot_image(&self) -> &Image {
        self.eboot.as_ref().unwrap_or(&self.app)
    }

    /// Bytes between eboot's end and 0x1000 that are not the 0xAA fill.
    pub fn eboot_padding_other(&self) -> usize {
        self.eboot_padding_other
    }

    /// Bytes after the end of the app image.
    pub fn trailing(&self) -> usize {
        self.trailing
    }

    /// The word at flash 0x1010 that eboot prints as `vXXXXXXXX` (combined files only).
    pub fn version_word(&self) -> Option<u32> {
        self.version_word
    }

    /// The core >= 3.0 CRC words, if the word at 0x1010 looks like `__crc_len`.
    pub fn flash_crc(&self) -> Option<FlashCrc> {
        self.flash_crc
    }

    /// The embedded identity record, if any.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Verdict on the app image's checksum byte.
    pub fn app_checksum(&self) -> AppChecksum {
        let c = self.app.checksum();
        if c.is_valid() {
            return AppChecksum::Valid;
        }
        match self.flash_crc {
            Some(crc)
                if c.stored
                    == c.computed
                        ^ xor_bytes(&crc.len_word.to_le_bytes())
                        ^ xor_bytes(&crc.stored.to_le_bytes()) =>
            {
                AppChecksum::ValidBeforeCrcPatch
            }
            _ => AppChecksum::Invalid,
        }
    }
}

/// Parses a firmware file: a combined Arduino file (eboot + app) or a plain app image.
pub fn parse_firmware(bytes: &[u8]) -> Result<Firmware, ImageError> {
    let first = parse_at(bytes, 0)?;
    let eboot_like = !first.segments().is_empty()
        && first
            .segments()
            .iter()
            .all(|s| s.kind() == SegmentKind::Eboot);
    let fits_before_app = first.end() <= APP_OFFSET;
    let app_magic_follows = bytes.get(APP_OFFSET) == Some(&MAGIC);
    if !(fits_before_app && (app_magic_follows || eboot_like)) {
        return Ok(Firmware {
            len: bytes.len(),
            layout: Layout::PlainApp,
            eboot: None,
            eboot_padding_other: 0,
            trailing: bytes.len() - first.end(),
            identity: find_identity(&first),
            app: first,
            version_word: None,
            flash_crc: None,
        });
    }
    // eboot alone, or eboot followed by something that is not an image: report it at 0x1000.
    let app = parse_at(bytes, APP_OFFSET)?;
    let eboot_padding_other = bytes[first.end()..APP_OFFSET]
        .iter()
        .filter(|&&b| b != EBOOT_PAD)
        .count();
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    let version_word = word(CRC_LEN_OFFSET);
    let starts_with_irom0 = app
        .segments()
        .first()
        .is_some_and(|s| s.addr() == IROM0_ADDR && s.len() >= 8);
    let flash_crc = match (starts_with_irom0, version_word, word(CRC_VAL_OFFSET)) {
        // A file length (16-aligned, past eboot, at most 16 MB), not a git-hash core_version.
        (true, Some(len_word), Some(stored))
            if len_word.is_multiple_of(16) && (0x1000..=0x100_0000).contains(&len_word) =>
        {
            Some(FlashCrc {
                len_word,
                stored,
                computed: flash_crc(bytes).unwrap_or_default(),
                file_len: bytes.len(),
            })
        }
        _ => None,
    };
    Ok(Firmware {
        len: bytes.len(),
        layout: Layout::Combined,
        eboot_padding_other,
        trailing: bytes.len() - app.end(),
        identity: find_identity(&app),
        eboot: Some(first),
        app,
        version_word,
        flash_crc,
    })
}

/// Looks for the identity record in DRAM segments first (where `.rodata` is), then elsewhere.
fn find_identity(app: &Image) -> Option<Identity> {
    let (dram, rest): (Vec<_>, Vec<_>) = app
        .segments()
        .iter()
        .partition(|s| s.kind() == SegmentKind::Dram);
    dram.iter()
        .chain(rest.iter())
        .find_map(|s| Identity::find(s.data()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::OtaMethod;
    use crate::image::checksum::rom_checksum;
    use crate::image::{BuildSpec, build};

    fn file() -> Vec<u8> {
        let id = Identity::new("sonoff-ota", "1.0.0", OtaMethod::Arduino, None).unwrap();
        build(&BuildSpec {
            size: 16 * 1024,
            ..BuildSpec::new(id)
        })
        .unwrap()
    }

    #[test]
    fn elf2bin_checksum_before_crc_patch_is_recognised() {
        let mut bytes = file();
        // What elf2bin writes: the checksum over the data with both CRC words still zero.
        let mut unpatched = bytes.clone();
        unpatched[CRC_LEN_OFFSET..CRC_VAL_OFFSET + 4].fill(0);
        let app = parse_at(&unpatched, APP_OFFSET).unwrap();
        let at = bytes.len() - 1; // the app's checksum byte ends the file
        bytes[at] = rom_checksum(app.segments().iter().map(|s| s.data()));
        // The CRC covers the checksum byte, so recompute it as elf2bin would.
        let crc = flash_crc(&bytes).unwrap();
        bytes[CRC_VAL_OFFSET..CRC_VAL_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        let fw = parse_firmware(&bytes).unwrap();
        assert!(!fw.app().checksum().is_valid());
        assert_eq!(fw.app_checksum(), AppChecksum::ValidBeforeCrcPatch);
        assert!(fw.flash_crc().unwrap().is_valid());
    }

    #[test]
    fn a_core_2_version_word_is_not_a_crc() {
        let mut bytes = file();
        bytes[CRC_LEN_OFFSET..CRC_LEN_OFFSET + 4].copy_from_slice(&0x3FFE_903Du32.to_le_bytes());
        let fw = parse_firmware(&bytes).unwrap();
        assert_eq!(fw.version_word(), Some(0x3FFE_903D));
        assert_eq!(fw.flash_crc(), None);
        assert_eq!(fw.app_checksum(), AppChecksum::Invalid);
    }

    #[test]
    fn plain_app_and_broken_combinations() {
        let bytes = file();
        let fw = parse_firmware(&bytes[APP_OFFSET..]).unwrap();
        assert_eq!(fw.layout(), Layout::PlainApp);
        assert!(fw.eboot().is_none());
        assert_eq!(fw.boot_image().offset(), 0);
        assert_eq!(fw.version_word(), None);
        assert_eq!(fw.identity().unwrap().version(), "1.0.0");
        // eboot followed by nothing, or by something that is not an image.
        assert!(matches!(
            parse_firmware(&bytes[..APP_OFFSET]),
            Err(ImageError::Truncated {
                offset: APP_OFFSET,
                ..
            })
        ));
        let mut bad = bytes.clone();
        bad[APP_OFFSET] = 0xFF;
        assert_eq!(
            parse_firmware(&bad),
            Err(ImageError::BadMagic {
                offset: APP_OFFSET,
                found: 0xFF
            })
        );
        // Extra bytes after the app and odd fill before it are reported, not fatal.
        let mut odd = bytes.clone();
        odd[0x800] = 0x00;
        odd.extend_from_slice(b"signature");
        let fw = parse_firmware(&odd).unwrap();
        assert_eq!(fw.eboot_padding_other(), 1);
        assert_eq!(fw.trailing(), 9);
        assert!(!fw.flash_crc().unwrap().is_valid());
    }
}
