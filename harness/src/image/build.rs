//! Makes valid, deterministic test firmware files shaped like an Arduino build.
//!
//! The file is what `tools/elf2bin.py` writes: eboot at 0x0 (one segment of 1384 bytes loaded
//! at 0x4010F000, like the eboot in the field report, so the ROM prints `load 0x4010f000, len
//! 1384, room 16` and `chksum 0x2d`), 0xAA fill up to 0x1000, then the app: `.irom0.text` at
//! 0x40201010 (starting with `__crc_len`/`__crc_val` as in core >= 3.0, then filler), `.text`
//! at 0x40100000, `.data` at 0x3FFE8000 and `.rodata` holding the [`Identity`] record. For an
//! identity with a core before 3.0 the word at 0x1010 is a `core_version`-like word instead
//! ([`core_version_word`]) and there is no CRC. The
//! filler is pseudo-random so the file does not compress to nothing (OTA tests time real
//! transfers).
//!
//! Unlike elf2bin, which computes the app checksum *before* patching in the CRC words (see
//! [`AppChecksum::ValidBeforeCrcPatch`](super::AppChecksum)), these files have a valid checksum
//! *and* a valid CRC, so esptool and `ESP.checkFlashCRC()` both accept them. The two depend on
//! each other (the CRC covers the checksum byte, the checksum covers the CRC word), so one
//! "trim" byte at the end of `.irom0.text` is solved for (`solve_trim`).

use super::checksum::{CRC_LEN_OFFSET, CRC_VAL_OFFSET, flash_crc, rom_checksum, xor_bytes};
use super::firmware::{APP_OFFSET, EBOOT_PAD};
use super::header::{HEADER_LEN, Header};
use super::segment::{DRAM_ADDR, EBOOT_LOAD_ADDR, IRAM_ADDR, IROM0_ADDR, SEGMENT_HEADER_LEN};
use super::{FlashFreq, FlashSize, Identity, ImageError};
use crate::board::FlashMode;

/// Default file size: a realistic small sketch (300 KiB).
pub const DEFAULT_SIZE: usize = 300 * 1024;
/// Largest file `build` makes: 1 MiB, more than any ESP8266 sketch can be (irom0 is < 1 MB).
pub const MAX_SIZE: usize = 1024 * 1024;
/// Length of eboot's one segment (the field report's `len 1384`).
pub const EBOOT_SEGMENT_LEN: usize = 1384;
/// eboot's checksum byte (the field report's `chksum 0x2d`).
pub const EBOOT_CHECKSUM: u8 = 0x2D;
/// Entry point written into the app header (start of `.text`).
pub const APP_ENTRY: u32 = IRAM_ADDR;

const TEXT_LEN: usize = 2048;
const DATA_LEN: usize = 256;
const RODATA_FILLER: usize = 64;
/// `.irom0.text` needs the two CRC words and at least the trim byte.
const IROM_MIN: usize = 16;
const APP_SEGMENTS: usize = 4;

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The identity record to embed.
    pub identity: Identity,
    /// Flash mode for both headers.
    pub flash_mode: FlashMode,
    /// Flash size for both headers.
    pub flash_size: FlashSize,
    /// Flash frequency for both headers.
    pub flash_freq: FlashFreq,
    /// Total file size in bytes; rounded up to a multiple of 16.
    pub size: usize,
}

impl BuildSpec {
    /// A spec with the defaults of `harness image make`: DOUT, 1MB, 40m, 300 KiB.
    pub fn new(identity: Identity) -> Self {
        BuildSpec {
            identity,
            flash_mode: FlashMode::Dout,
            flash_size: FlashSize::M1,
            flash_freq: FlashFreq::F40m,
            size: DEFAULT_SIZE,
        }
    }
}

/// The smallest file `build` can make for this identity.
pub fn min_size(identity: &Identity) -> usize {
    APP_OFFSET + align16(app_fixed_len(identity) + IROM_MIN + 1)
}

/// Builds the file. Same spec, same bytes.
pub fn build(spec: &BuildSpec) -> Result<Vec<u8>, ImageError> {
    let size = align16(spec.size);
    let minimum = min_size(&spec.identity);
    if size < minimum {
        return Err(ImageError::SizeTooSmall {
            requested: size,
            minimum,
        });
    }
    if size > MAX_SIZE {
        return Err(ImageError::SizeTooLarge {
            requested: spec.size,
            maximum: MAX_SIZE,
        });
    }
    let header = |count: usize, entry| {
        Header::new(
            count as u8,
            spec.flash_mode,
            spec.flash_size,
            spec.flash_freq,
            entry,
        )
    };

    let mut file = Vec::with_capacity(size);
    write_image(
        &mut file,
        header(1, EBOOT_LOAD_ADDR),
        &[(EBOOT_LOAD_ADDR, &eboot_code())],
    );
    file.resize(APP_OFFSET, EBOOT_PAD);

    let line = spec.identity.line();
    let mut rng = SplitMix64(fnv1a(line.as_bytes()));
    let irom_len = (size - APP_OFFSET - 1 - app_fixed_len(&spec.identity)) & !3;
    let mut irom = vec![0u8; 8];
    irom.extend(rng.bytes(irom_len - 8));
    irom[irom_len - 1] = 0; // the trim byte, solved for below
    let text = rng.bytes(TEXT_LEN);
    let data = rng.bytes(DATA_LEN);
    let mut rodata = line.into_bytes();
    rodata.push(0);
    rodata.resize(align4(rodata.len()), 0);
    rodata.extend(rng.bytes(RODATA_FILLER));
    let segments = [
        (IROM0_ADDR, irom.as_slice()),
        (IRAM_ADDR, text.as_slice()),
        (DRAM_ADDR, data.as_slice()),
        (DRAM_ADDR + DATA_LEN as u32, rodata.as_slice()),
    ];
    write_image(&mut file, header(APP_SEGMENTS, APP_ENTRY), &segments);
    debug_assert_eq!(file.len(), size);

    let checksum_at = file.len() - 1;
    if let Some(word) = core_version_word(spec.identity.core()) {
        // Cores before 3.0 put `core_version` where later cores put `__crc_len`, and have no
        // `__crc_val`: the word after it is code.
        file[CRC_LEN_OFFSET..CRC_LEN_OFFSET + 4].copy_from_slice(&word.to_le_bytes());
        let code = SplitMix64(u64::from(word)).bytes(4);
        file[CRC_VAL_OFFSET..CRC_VAL_OFFSET + 4].copy_from_slice(&code);
        file[checksum_at] = rom_checksum(app_segment_data(&file));
        return Ok(file);
    }
    let len_word = (file.len() as u32).to_le_bytes();
    file[CRC_LEN_OFFSET..CRC_LEN_OFFSET + 4].copy_from_slice(&len_word);
    let trim_at = APP_OFFSET + HEADER_LEN + SEGMENT_HEADER_LEN + irom_len - 1;
    let (trim, checksum, crc) = solve_trim(&mut file, trim_at);
    file[trim_at] = trim;
    file[checksum_at] = checksum;
    file[CRC_VAL_OFFSET..CRC_VAL_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(file)
}

/// The `core_version` word a core before 3.0 puts at flash 0x1010 (eboot prints it as
/// `vXXXXXXXX`), or `None` for cores that put `__crc_len` there.
///
/// The real word is the core's git short hash (`ARDUINO_ESP8266_GIT_VER`), which this builder
/// cannot know; it uses a stable hash of the version instead, with the top nibble set so it
/// can never pass for a file length.
pub fn core_version_word(core: &str) -> Option<u32> {
    let (major, ..) = super::identity::parse_core_version(core)?;
    (major < 3).then(|| {
        let h = fnv1a(format!("core_version {core}").as_bytes());
        ((h >> 32) as u32 ^ h as u32) | 0x1000_0000
    })
}

/// Finds a trim byte `k` and checksum byte `c` such that the app checksum (which covers `k`
/// and the CRC word) equals `c` and the CRC (which covers `k` and `c`) is the one stored.
///
/// The CRC is affine in the message bits, so the CRC for any `(k, c)` is the CRC with both
/// zero XOR the effects of their set bits; 16 extra CRCs give all 65 536 candidates, of which
/// about one in 256 works. `file` must hold `__crc_len` and a zero `__crc_val`; `k` and `c`
/// are zeroed here. Returns `(k, c, crc)`.
fn solve_trim(file: &mut [u8], trim_at: usize) -> (u8, u8, u32) {
    let checksum_at = file.len() - 1;
    file[trim_at] = 0;
    file[checksum_at] = 0;
    // The app checksum with k = 0 and __crc_val = 0; k and the CRC word XOR into it.
    let app_checksum0 = rom_checksum(app_segment_data(file));
    let crc_of = |f: &[u8]| flash_crc(f).unwrap_or_default();
    let base = crc_of(file);
    let mut effect = |at: usize| -> [u32; 8] {
        std::array::from_fn(|bit| {
            file[at] = 1 << bit;
            let e = crc_of(file) ^ base;
            file[at] = 0;
            e
        })
    };
    let trim_effect = effect(trim_at);
    let checksum_effect = effect(checksum_at);
    let apply = |effects: &[u32; 8], byte: u8| {
        (0..8)
            .filter(|b| byte & (1 << b) != 0)
            .fold(0, |acc, b| acc ^ effects[b])
    };
    for k in 0..=255u8 {
        for c in 0..=255u8 {
            let crc = base ^ apply(&trim_effect, k) ^ apply(&checksum_effect, c);
            if app_checksum0 ^ k ^ xor_bytes(&crc.to_le_bytes()) == c {
                return (k, c, crc);
            }
        }
    }
    // Not seen in practice (each try succeeds with p = 1/256). Fall back to what elf2bin does:
    // the checksum is computed before the CRC words are patched in.
    let c = app_checksum0 ^ xor_bytes(&file[CRC_LEN_OFFSET..CRC_LEN_OFFSET + 4]);
    (0, c, base ^ apply(&checksum_effect, c))
}

/// The data of every app segment, read back from the file being built.
fn app_segment_data(file: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = APP_OFFSET + HEADER_LEN;
    (0..APP_SEGMENTS).map(move |_| {
        let len = u32::from_le_bytes([file[pos + 4], file[pos + 5], file[pos + 6], file[pos + 7]]);
        let data = &file[pos + SEGMENT_HEADER_LEN..pos + SEGMENT_HEADER_LEN + len as usize];
        pos += SEGMENT_HEADER_LEN + len as usize;
        data
    })
}

/// Appends one image: header, segments, zero padding, checksum.
fn write_image(out: &mut Vec<u8>, header: Header, segments: &[(u32, &[u8])]) {
    let start = out.len();
    out.extend_from_slice(&header.to_bytes());
    for (addr, data) in segments {
        out.extend_from_slice(&addr.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }
    let checksum_at = start + ((out.len() - start) | 15);
    out.resize(checksum_at, 0);
    out.push(rom_checksum(segments.iter().map(|(_, d)| *d)));
}

/// eboot's segment: fixed filler whose last byte makes the checksum [`EBOOT_CHECKSUM`].
fn eboot_code() -> Vec<u8> {
    let mut code = SplitMix64(fnv1a(b"eboot")).bytes(EBOOT_SEGMENT_LEN);
    let fix = rom_checksum([code.as_slice()]) ^ EBOOT_CHECKSUM;
    code[EBOOT_SEGMENT_LEN - 1] ^= fix;
    code
}

/// Everything in the app image except `.irom0.text`'s data and the padding/checksum.
fn app_fixed_len(identity: &Identity) -> usize {
    let rodata = align4(identity.line().len() + 1) + RODATA_FILLER;
    HEADER_LEN + APP_SEGMENTS * SEGMENT_HEADER_LEN + TEXT_LEN + DATA_LEN + rodata
}

fn align16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// SplitMix64 (Steele, Lea, Flood 2014), written out here because the filler must stay
/// byte-identical forever (fixtures are compared byte for byte) and `rand`'s `StdRng` does not
/// promise a stable stream across versions.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::OtaMethod;
    use crate::image::{AppChecksum, Fault, Layout, parse_firmware};

    fn spec(size: usize) -> BuildSpec {
        let id = Identity::new("sonoff-ota", "1.0.0", OtaMethod::WebServer, None).unwrap();
        BuildSpec {
            size,
            ..BuildSpec::new(id)
        }
    }

    #[test]
    fn built_file_parses_with_valid_checksums_and_crc() {
        let file = build(&spec(32 * 1024)).unwrap();
        assert_eq!(file.len(), 32 * 1024);
        let fw = parse_firmware(&file).unwrap();
        assert_eq!(fw.layout(), Layout::Combined);
        let eboot = fw.eboot().unwrap();
        assert_eq!(eboot.segments().len(), 1);
        assert_eq!(eboot.segments()[0].addr(), EBOOT_LOAD_ADDR);
        assert_eq!(eboot.segments()[0].len() as usize, EBOOT_SEGMENT_LEN);
        assert_eq!(eboot.checksum().stored, 0x2D);
        assert!(eboot.checksum().is_valid());
        assert_eq!(fw.app_checksum(), AppChecksum::Valid);
        let crc = fw.flash_crc().unwrap();
        assert!(crc.is_valid(), "{crc:?}");
        assert_eq!(fw.version_word(), Some(32 * 1024));
        assert_eq!(fw.trailing(), 0);
        assert_eq!(fw.eboot_padding_other(), 0);
        assert_eq!(fw.identity(), Some(&spec(0).identity));
        let names: Vec<_> = fw.app().segments().iter().map(|s| s.name()).collect();
        assert_eq!(names, [".irom0.text", ".text", ".data", ".rodata"]);
    }

    #[test]
    fn old_cores_get_a_core_version_word_and_no_crc() {
        let mut s = spec(32 * 1024);
        s.identity = s.identity.clone().with_core("2.3.0").unwrap();
        let file = build(&s).unwrap();
        let fw = parse_firmware(&file).unwrap();
        let word = core_version_word("2.3.0").unwrap();
        assert_eq!(fw.version_word(), Some(word));
        assert!(word >= 0x1000_0000);
        assert_eq!(fw.flash_crc(), None);
        assert_eq!(fw.app_checksum(), AppChecksum::Valid);
        assert_eq!(fw.identity().unwrap().core(), "2.3.0");
        assert_eq!(core_version_word("3.1.2"), None);
        assert_ne!(core_version_word("2.3.0"), core_version_word("2.4.0"));
    }

    #[test]
    fn deterministic_and_version_sensitive() {
        assert_eq!(build(&spec(20_000)).unwrap(), build(&spec(20_000)).unwrap());
        let mut other = spec(20_000);
        other.identity = Identity::new("sonoff-ota", "2.0.0", OtaMethod::WebServer, None).unwrap();
        assert_ne!(build(&spec(20_000)).unwrap(), build(&other).unwrap());
    }

    #[test]
    fn size_rounds_up_to_16_and_has_limits() {
        assert_eq!(build(&spec(20_001)).unwrap().len(), 20_016);
        let min = min_size(&spec(0).identity);
        assert_eq!(build(&spec(min)).unwrap().len(), min);
        assert_eq!(
            build(&spec(min - 16)),
            Err(ImageError::SizeTooSmall {
                requested: min - 16,
                minimum: min
            })
        );
        assert!(matches!(
            build(&spec(MAX_SIZE + 1)),
            Err(ImageError::SizeTooLarge { .. })
        ));
    }

    #[test]
    fn every_size_near_the_minimum_is_consistent() {
        let min = min_size(&spec(0).identity);
        for size in (min..min + 64).step_by(16) {
            let mut s = spec(size);
            s.identity = Identity::new("x", "1", OtaMethod::Arduino, Some(Fault::SoftWdt)).unwrap();
            let file = build(&s).unwrap();
            let fw = parse_firmware(&file).unwrap();
            assert_eq!(fw.app_checksum(), AppChecksum::Valid);
            assert!(fw.flash_crc().unwrap().is_valid());
        }
    }
}
