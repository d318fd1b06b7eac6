//! Checks of a firmware file on its own ([`check`]) and against a board ([`lint`]).
//!
//! Each [`Lint`] names the values it compared, so the message alone explains the problem
//! ("header says 4MB, Sonoff 4CH (ESP8285) has 1MB"), and carries the remedy. The rules and
//! their sources are in `docs/failure-modes.md` (C flash size, D flash mode, E space) and
//! `docs/protocols.md` §E (staging rule).

use std::fmt::Write as _;

use serde::Serialize;

use super::Image;
use super::firmware::{AppChecksum, Firmware, Layout};
use super::header::FlashSize;
use super::segment::SegmentKind;
use crate::board::{BoardProfile, Chip, FlashMode};
use crate::firmware::OtaMethod;

/// Flash sector size: the unit of erase and of OTA staging.
pub const SECTOR: u32 = 0x1000;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Will misbehave on this board; `harness image inspect` exits 1.
    Error,
    /// Works, but is not what the board wants.
    Warning,
}

/// Which rule produced a lint (stable, kebab-case in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum LintId {
    /// The image at 0x0 has a bad checksum: the ROM will not boot it.
    BootChecksum,
    /// The app image's checksum is wrong (and not just by the core 3.x CRC words).
    AppChecksum,
    /// `__crc_len`/`__crc_val` do not match the file.
    FlashCrc,
    /// eboot's and the app's headers disagree on flash mode, size or frequency.
    HeaderMismatch,
    /// A header's entry point is not inside a segment loaded to IRAM.
    EntryPoint,
    /// The header claims more flash than the board has.
    FlashSizeTooBig,
    /// The header claims less flash than the board has.
    FlashSizeSmaller,
    /// The board's flash cannot run the header's mode.
    FlashModeUnsupported,
    /// The mode works but is not the board's recommended one.
    FlashModeNotRecommended,
    /// The image does not fit the sketch area of the board's layout.
    SketchTooBig,
    /// The image cannot be staged for OTA next to a running copy of itself.
    OtaNoSpace,
    /// With the header's (too big) layout, OTA staging wraps onto EEPROM/RF cal/SDK sectors.
    OtaWrapsIntoSystem,
}

impl LintId {
    /// Every rule, in the order [`lint`] runs them.
    pub const ALL: [LintId; 12] = [
        LintId::BootChecksum,
        LintId::AppChecksum,
        LintId::FlashCrc,
        LintId::HeaderMismatch,
        LintId::EntryPoint,
        LintId::FlashSizeTooBig,
        LintId::FlashSizeSmaller,
        LintId::FlashModeUnsupported,
        LintId::FlashModeNotRecommended,
        LintId::SketchTooBig,
        LintId::OtaNoSpace,
        LintId::OtaWrapsIntoSystem,
    ];

    /// The rule with this kebab-case name (as scenario files write it).
    pub fn from_name(name: &str) -> Option<LintId> {
        LintId::ALL.into_iter().find(|id| id.name() == name)
    }

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            LintId::BootChecksum => "boot-checksum",
            LintId::AppChecksum => "app-checksum",
            LintId::FlashCrc => "flash-crc",
            LintId::HeaderMismatch => "header-mismatch",
            LintId::EntryPoint => "entry-point",
            LintId::FlashSizeTooBig => "flash-size-too-big",
            LintId::FlashSizeSmaller => "flash-size-smaller",
            LintId::FlashModeUnsupported => "flash-mode-unsupported",
            LintId::FlashModeNotRecommended => "flash-mode-not-recommended",
            LintId::SketchTooBig => "sketch-too-big",
            LintId::OtaNoSpace => "ota-no-space",
            LintId::OtaWrapsIntoSystem => "ota-wraps-into-system",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lint {
    /// The rule.
    pub id: LintId,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, with the values compared.
    pub message: String,
    /// What to do about it.
    pub remedy: String,
}

impl Lint {
    fn new(id: LintId, severity: Severity, message: String, remedy: impl Into<String>) -> Lint {
        Lint {
            id,
            severity,
            message,
            remedy: remedy.into(),
        }
    }
}

/// Checks that need no board: checksums, the core CRC, eboot/app header agreement.
pub fn check(fw: &Firmware) -> Vec<Lint> {
    let mut out = Vec::new();
    let boot = fw.boot_image().checksum();
    if !boot.is_valid() {
        out.push(Lint::new(
            LintId::BootChecksum,
            Severity::Error,
            format!(
                "checksum of the image at 0x0 is {:#04x} at offset {:#x}, computed {:#04x}: the \
                 ROM prints `chksum {:#04x}` / `csum {:#04x}` and will not boot it",
                boot.stored, boot.offset, boot.computed, boot.stored, boot.computed
            ),
            "the file is corrupt: rebuild it or download it again",
        ));
    }
    if fw.layout() == Layout::Combined && fw.app_checksum() == AppChecksum::Invalid {
        let c = fw.app().checksum();
        out.push(Lint::new(
            LintId::AppChecksum,
            Severity::Error,
            format!(
                "app checksum is {:#04x} at offset {:#x}, computed {:#04x}: segment data changed \
                 after the build (eboot does not check it, so a corrupt app would still be run)",
                c.stored, c.offset, c.computed
            ),
            "the file is corrupt: rebuild it or download it again",
        ));
    }
    if let Some(crc) = fw.flash_crc().filter(|c| !c.is_valid()) {
        out.push(Lint::new(
            LintId::FlashCrc,
            Severity::Warning,
            format!(
                "__crc_len {} / __crc_val {:#010x} at 0x1010 do not match this file ({} bytes, \
                 CRC {:#010x}); ESP.checkFlashCRC() would fail",
                crc.len_word, crc.stored, crc.file_len, crc.computed
            ),
            "the file was changed after elf2bin wrote it; rebuild it",
        ));
    }
    if let Some(eboot) = fw.eboot() {
        let (e, a) = (eboot.header(), fw.app().header());
        if !e.same_flash_params(a) {
            out.push(Lint::new(
                LintId::HeaderMismatch,
                Severity::Warning,
                format!(
                    "eboot header says {} {} {}, app header at 0x1000 says {} {} {}; the ROM and \
                     the SDK use the one at 0x0",
                    e.flash_mode(),
                    e.flash_size(),
                    e.flash_freq(),
                    a.flash_mode(),
                    a.flash_size(),
                    a.flash_freq()
                ),
                "rebuild so both headers agree (elf2bin writes the same values into both)",
            ));
        }
    }
    for img in fw.eboot().into_iter().chain([fw.app()]) {
        lint_entry(&mut out, img);
    }
    out
}

/// The ROM (eboot, for the app) jumps to the header's entry point once the segments are loaded;
/// code runs from IRAM only (flash-mapped code needs the cache, which nothing has set up yet).
fn lint_entry(out: &mut Vec<Lint>, img: &Image) {
    let entry = img.header().entry();
    let in_code = img.segments().iter().any(|s| {
        matches!(s.kind(), SegmentKind::Iram | SegmentKind::Eboot)
            && entry >= s.addr()
            && entry - s.addr() < s.len()
    });
    if !in_code {
        out.push(Lint::new(
            LintId::EntryPoint,
            Severity::Error,
            format!(
                "entry point {entry:#010x} at offset {:#x} is not inside any segment the image                  loads to IRAM: the {} would jump into code that is not there",
                img.offset() + 4,
                if img.offset() == 0 { "ROM" } else { "bootloader" }
            ),
            "the header is corrupt, or the image was not made by elf2bin / esptool elf2image: \
             rebuild it",
        ));
    }
}

/// All checks: [`check`] plus flash size, flash mode and OTA space against `board`.
///
/// The header checked is the one at 0x0 (eboot's in an Arduino file): the ROM boots with its
/// mode, and the SDK takes the flash size from it.
pub fn lint(fw: &Firmware, board: &BoardProfile) -> Vec<Lint> {
    let mut out = check(fw);
    let header = fw.boot_image().header();
    lint_flash_size(&mut out, header.flash_size(), board);
    lint_flash_mode(&mut out, header.flash_mode(), board);
    lint_space(&mut out, fw, board);
    if header.flash_size_bytes() > board.flash_size {
        lint_wrap(&mut out, fw, header.flash_size(), board);
    }
    out
}

fn lint_flash_size(out: &mut Vec<Lint>, size: FlashSize, board: &BoardProfile) {
    let real = board.flash_size;
    if size.bytes() > real {
        out.push(Lint::new(
            LintId::FlashSizeTooBig,
            Severity::Error,
            format!("header says {size}, {} has {}", board.name, size_name(real)),
            format!(
                "build with Flash Size {} (eagle.flash.{}.ld) or write with esptool -fs {}; flash \
                 addresses wrap on the smaller chip, and core >= 2.4 refuses such an OTA with \
                 ERROR[9] \"new Flash config wrong\"",
                size_name(real),
                board.layout_name,
                size_name(real)
            ),
        ));
    } else if size.bytes() < real {
        out.push(Lint::new(
            LintId::FlashSizeSmaller,
            Severity::Warning,
            format!(
                "header says {size}, {} has {}: the SDK keeps its RF calibration and Wi-Fi \
                 settings at the top of {size} (from {:#x}), inside the board's sketch/OTA area",
                board.name,
                size_name(real),
                size.bytes() - 0x5000
            ),
            format!("build with Flash Size {}", size_name(real)),
        ));
    }
}

fn lint_flash_mode(out: &mut Vec<Lint>, mode: FlashMode, board: &BoardProfile) {
    let runs = |b: &BoardProfile| {
        b.flash_modes
            .iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
            .join("/")
    };
    let remedy = format!(
        "build with Flash Mode {0} and write with esptool -fm {1}; a plain OTA keeps the running \
         mode (Updater rewrites header byte 2 since core 2.4.2), but a gzip OTA or a serial \
         flash brings this header's mode",
        board.recommended_mode,
        board.recommended_mode.name()
    );
    if !board.supports_mode(mode) {
        let why = match board.chip {
            Chip::Esp8285 => "the ESP8285's internal flash is wired for DOUT",
            Chip::Esp8266 => "its flash is not wired for it",
        };
        out.push(Lint::new(
            LintId::FlashModeUnsupported,
            Severity::Error,
            format!(
                "header flash mode is {mode}, {} can only run {} ({why}); expect `chksum != \
                 csum`, or `ld` and then silence or a crash",
                board.name,
                runs(board)
            ),
            remedy,
        ));
    } else if mode != board.recommended_mode {
        out.push(Lint::new(
            LintId::FlashModeNotRecommended,
            Severity::Warning,
            format!(
                "header flash mode is {mode}; builds for {} should use {}",
                board.name, board.recommended_mode
            ),
            remedy,
        ));
    }
}

/// The OTA methods the space and wrap rules consider: the firmware's own (the same image is
/// assumed to be installed, so it is the one receiving the update), else both.
fn ota_methods(fw: &Firmware) -> Vec<OtaMethod> {
    match fw.identity() {
        Some(id) => vec![id.ota()],
        None => vec![OtaMethod::Arduino, OtaMethod::WebServer],
    }
}

fn lint_space(out: &mut Vec<Lint>, fw: &Firmware, board: &BoardProfile) {
    let fs_start = board.layout.fs_start;
    // What gets uploaded: the whole file. What is installed (the same image, assumed): the
    // sketch as ESP.getSketchSize() counts it, from flash 0 to the end of the app image.
    let new = fw.len() as u32;
    let installed = fw.app().end() as u32;
    if new > fs_start {
        out.push(Lint::new(
            LintId::SketchTooBig,
            Severity::Error,
            format!(
                "image is {} bytes ({}), but the sketch area of {} (eagle.flash.{}.ld) ends at \
                 {fs_start:#x} ({})",
                new,
                kib(new),
                board.name,
                board.layout_name,
                kib(fs_start)
            ),
            "make the sketch smaller, or pick a layout with a smaller filesystem",
        ));
        return;
    }
    let mut problems = Vec::new();
    for ota in ota_methods(fw) {
        match ota {
            OtaMethod::Arduino => {
                let need = round4k(installed) + round4k(new);
                if need > fs_start {
                    problems.push(format!(
                        "ArduinoOTA needs round4k(installed {:#x}) + round4k(new {:#x}) = {need:#x} \
                         ({}) below the filesystem start {fs_start:#x} ({}) of eagle.flash.{}.ld",
                        installed,
                        new,
                        kib(need),
                        kib(fs_start),
                        board.layout_name
                    ));
                }
            }
            OtaMethod::WebServer => {
                let offered = webserver_offer(fs_start, installed);
                if new > offered {
                    problems.push(format!(
                        "ESP8266HTTPUpdateServer offers (getFreeSketchSpace() - 0x1000) & ~0xFFF \
                         = {offered:#x} ({}) with eagle.flash.{}.ld, the image is {new:#x} ({})",
                        kib(offered),
                        board.layout_name,
                        kib(new)
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        out.push(Lint::new(
            LintId::OtaNoSpace,
            Severity::Error,
            format!(
                "image too big to stage for OTA next to itself: {}; Update.begin() fails with \
                 ERROR[4] Not Enough Space",
                problems.join("; ")
            ),
            "make the sketch smaller, use a layout without filesystem (eagle.flash.1m.ld), a \
             gzip OTA image (core >= 2.7), or update in two steps through a minimal firmware",
        ));
    }
}

/// The size ESP8266HTTPUpdateServer passes to `Update.begin()` (protocols.md §C).
fn webserver_offer(fs_start: u32, installed: u32) -> u32 {
    fs_start
        .saturating_sub(round4k(installed))
        .saturating_sub(SECTOR)
        & !(SECTOR - 1)
}

/// A flash layout of the Arduino core (`tools/sdk/ld/eagle.flash.*.ld` in esp8266/Arduino).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArduinoLayout {
    /// The linker script.
    pub ld: &'static str,
    /// Flash size it is made for.
    pub flash_size: u32,
    /// `_FS_start` (older: `_SPIFFS_start`) minus 0x40200000: where OTA staging ends.
    pub fs_start: u32,
}

/// The Arduino layouts, read from the linker scripts' `_FS_start`/`_SPIFFS_start`. EEPROM, RF
/// calibration and SDK sectors are the last five 4 KB sectors in every one of them
/// (`eeprom @0x405FB000` etc. in the 4 MB scripts).
pub const ARDUINO_LAYOUTS: &[ArduinoLayout] = &[
    ArduinoLayout {
        ld: "eagle.flash.1m.ld",
        flash_size: 0x10_0000,
        fs_start: 0xFB000,
    },
    ArduinoLayout {
        ld: "eagle.flash.1m64.ld",
        flash_size: 0x10_0000,
        fs_start: 0xEB000,
    },
    ArduinoLayout {
        ld: "eagle.flash.2m64.ld",
        flash_size: 0x20_0000,
        fs_start: 0x1F_0000,
    },
    ArduinoLayout {
        ld: "eagle.flash.2m128.ld",
        flash_size: 0x20_0000,
        fs_start: 0x1E_0000,
    },
    ArduinoLayout {
        ld: "eagle.flash.2m256.ld",
        flash_size: 0x20_0000,
        fs_start: 0x1C_0000,
    },
    ArduinoLayout {
        ld: "eagle.flash.2m512.ld",
        flash_size: 0x20_0000,
        fs_start: 0x18_0000,
    },
    ArduinoLayout {
        ld: "eagle.flash.2m1m.ld",
        flash_size: 0x20_0000,
        fs_start: 0x10_0000,
    },
    ArduinoLayout {
        ld: "eagle.flash.4m.ld",
        flash_size: 0x40_0000,
        fs_start: 0x3F_B000,
    },
    ArduinoLayout {
        ld: "eagle.flash.4m1m.ld",
        flash_size: 0x40_0000,
        fs_start: 0x30_0000,
    },
    ArduinoLayout {
        ld: "eagle.flash.4m2m.ld",
        flash_size: 0x40_0000,
        fs_start: 0x20_0000,
    },
    ArduinoLayout {
        ld: "eagle.flash.4m3m.ld",
        flash_size: 0x40_0000,
        fs_start: 0x10_0000,
    },
    ArduinoLayout {
        ld: "eagle.flash.8m6m.ld",
        flash_size: 0x80_0000,
        fs_start: 0x20_0000,
    },
    ArduinoLayout {
        ld: "eagle.flash.8m7m.ld",
        flash_size: 0x80_0000,
        fs_start: 0x10_0000,
    },
    ArduinoLayout {
        ld: "eagle.flash.16m14m.ld",
        flash_size: 0x100_0000,
        fs_start: 0x20_0000,
    },
    ArduinoLayout {
        ld: "eagle.flash.16m15m.ld",
        flash_size: 0x100_0000,
        fs_start: 0x10_0000,
    },
];

/// Where an OTA update writes, as `[start, end)` flash offsets, computed for a layout whose
/// filesystem starts at `fs_start`; `None` if `Update.begin()` would refuse.
///
/// ArduinoOTA calls `Update.begin(size)`: staging is `[fs_start - round4k(size), fs_start)`.
/// ESP8266HTTPUpdateServer calls `Update.begin()` with all free space, so staging starts right
/// after the running sketch plus one sector and the image is written from there.
pub fn ota_staging(ota: OtaMethod, fs_start: u32, installed: u32, new: u32) -> Option<(u32, u32)> {
    let (installed, new) = (round4k(installed), round4k(new));
    let start = match ota {
        OtaMethod::Arduino => fs_start.checked_sub(new)?,
        OtaMethod::WebServer => {
            let offered = webserver_offer(fs_start, installed);
            if offered < new {
                return None;
            }
            fs_start - offered
        }
    };
    (start >= installed).then_some((start, start + new))
}

fn lint_wrap(out: &mut Vec<Lint>, fw: &Firmware, size: FlashSize, board: &BoardProfile) {
    let real = board.flash_size;
    let l = &board.layout;
    let system = [
        ("EEPROM", l.eeprom, l.rf_cal),
        ("RF calibration", l.rf_cal, l.sdk_params),
        ("SDK parameters", l.sdk_params, l.flash_end),
    ];
    let (new, installed) = (fw.len() as u32, fw.app().end() as u32);
    // Layouts whose staging lands on the same wrapped range are reported together.
    let mut groups: Vec<(OtaMethod, u32, u32, String, Vec<String>)> = Vec::new();
    for layout in ARDUINO_LAYOUTS
        .iter()
        .filter(|a| a.flash_size == size.bytes())
    {
        for ota in ota_methods(fw) {
            let Some((start, end)) = ota_staging(ota, layout.fs_start, installed, new) else {
                continue;
            };
            let hit: Vec<String> = system
                .iter()
                .filter(|(_, a, b)| wrapped_overlaps(start, end, real, *a, *b))
                .map(|(name, a, _)| format!("{name} {a:#x}"))
                .collect();
            if hit.is_empty() {
                continue;
            }
            let (lo, hi) = (start % real, (end - 1) % real + 1);
            let what = format!(
                "{} (FS {:#x}: {start:#x}..{end:#x})",
                layout.ld, layout.fs_start
            );
            let hit = hit.join(", ");
            match groups
                .iter_mut()
                .find(|g| (g.0, g.1, g.2, &g.3) == (ota, lo, hi, &hit))
            {
                Some(g) => g.4.push(what),
                None => groups.push((ota, lo, hi, hit, vec![what])),
            }
        }
    }
    if groups.is_empty() {
        return;
    }
    let mut text = String::new();
    for (i, (ota, lo, hi, hit, layouts)) in groups.iter().enumerate() {
        let _ = write!(
            text,
            "{}{} staging with {} lands on {lo:#x}..{hi:#x} of the {} chip and overwrites {hit}",
            if i > 0 { "; " } else { "" },
            ota_name(*ota),
            layouts.join(", "),
            size_name(real),
        );
    }
    out.push(Lint::new(
        LintId::OtaWrapsIntoSystem,
        Severity::Error,
        format!(
            "header says {size} but {} has {}, and flash addresses wrap modulo {}: {text}",
            board.name,
            size_name(real),
            size_name(real)
        ),
        format!(
            "build with Flash Size {} (eagle.flash.{}.ld); if such an update already ran, expect \
             lost EEPROM contents and Wi-Fi settings and reconfigure the board",
            size_name(real),
            board.layout_name
        ),
    ));
}

fn ota_name(ota: OtaMethod) -> &'static str {
    match ota {
        OtaMethod::Arduino => "ArduinoOTA",
        OtaMethod::WebServer => "HTTP /update",
    }
}

/// Whether `[start, end)` taken modulo `real` touches `[a, b)`.
fn wrapped_overlaps(start: u32, end: u32, real: u32, a: u32, b: u32) -> bool {
    if end - start >= real {
        return true;
    }
    let lo = start % real;
    let hi = lo + (end - start);
    let overlaps = |x: u32, y: u32| x < b && a < y;
    if hi <= real {
        overlaps(lo, hi)
    } else {
        overlaps(lo, real) || overlaps(0, hi - real)
    }
}

fn round4k(n: u32) -> u32 {
    n.div_ceil(SECTOR) * SECTOR
}

fn size_name(bytes: u32) -> String {
    if bytes.is_multiple_of(1024 * 1024) {
        format!("{}MB", bytes / (1024 * 1024))
    } else {
        format!("{}KB", bytes / 1024)
    }
}

fn kib(bytes: u32) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board;
    use crate::image::{BuildSpec, Identity, build, parse_firmware};

    #[test]
    fn lint_ids_round_trip_by_name() {
        for id in LintId::ALL {
            assert_eq!(LintId::from_name(id.name()), Some(id));
        }
        assert_eq!(LintId::from_name("flash-size-huge"), None);
    }

    fn fw(ota: OtaMethod, size: usize, flash_size: FlashSize, mode: FlashMode) -> Vec<u8> {
        let id = Identity::new("sonoff-ota", "1.0.0", ota, None).unwrap();
        build(&BuildSpec {
            size,
            flash_size,
            flash_mode: mode,
            ..BuildSpec::new(id)
        })
        .unwrap()
    }

    fn ids(lints: &[Lint]) -> Vec<LintId> {
        lints.iter().map(|l| l.id).collect()
    }

    #[test]
    fn a_good_image_has_no_lints() {
        let file = fw(
            OtaMethod::WebServer,
            300 * 1024,
            FlashSize::M1,
            FlashMode::Dout,
        );
        let f = parse_firmware(&file).unwrap();
        assert_eq!(lint(&f, board::find("sonoff-4ch").unwrap()), vec![]);
        assert_eq!(lint(&f, board::find("sonoff-basic").unwrap()), vec![]);
    }

    #[test]
    fn entry_point_outside_iram_segments_is_an_error() {
        let file = fw(
            OtaMethod::WebServer,
            64 * 1024,
            FlashSize::M1,
            FlashMode::Dout,
        );
        for (at, entry) in [(4usize, 0u32), (0x1004, 0x4020_1010), (0x1004, 0x4010_0800)] {
            let mut bad = file.clone();
            bad[at..at + 4].copy_from_slice(&entry.to_le_bytes());
            let lints = check(&parse_firmware(&bad).unwrap());
            // Besides the file's flash CRC, which covers the header bytes.
            let entry_lints: Vec<_> = lints
                .iter()
                .filter(|l| l.id == LintId::EntryPoint)
                .collect();
            assert_eq!(entry_lints.len(), 1, "{entry:#x}: {lints:?}");
            assert_eq!(entry_lints[0].severity, Severity::Error);
            let want = format!("entry point {entry:#010x} at offset {at:#x}");
            assert!(
                entry_lints[0].message.contains(&want),
                "{}",
                entry_lints[0].message
            );
        }
        // The last byte of .text (2048 bytes at 0x40100000) is still inside.
        let mut edge = file.clone();
        edge[0x1004..0x1008].copy_from_slice(&0x4010_07FFu32.to_le_bytes());
        let lints = check(&parse_firmware(&edge).unwrap());
        assert!(
            lints.iter().all(|l| l.id != LintId::EntryPoint),
            "{lints:?}"
        );
    }

    #[test]
    fn qio_4mb_on_the_4ch() {
        let file = fw(
            OtaMethod::Arduino,
            300 * 1024,
            FlashSize::M4,
            FlashMode::Qio,
        );
        let f = parse_firmware(&file).unwrap();
        let lints = lint(&f, board::find("sonoff-4ch").unwrap());
        assert_eq!(
            ids(&lints),
            [
                LintId::FlashSizeTooBig,
                LintId::FlashModeUnsupported,
                LintId::OtaWrapsIntoSystem
            ]
        );
        assert_eq!(
            lints[0].message,
            "header says 4MB, Sonoff 4CH (ESP8285) has 1MB"
        );
        assert!(lints[1].message.contains("QIO") && lints[1].message.contains("DOUT"));
        let wrap = &lints[2].message;
        // 4m1m: FS at 0x300000, 300 KiB image -> staging 0x2B5000..0x300000 -> 0xB5000..0x100000.
        assert!(wrap.contains("eagle.flash.4m1m.ld"), "{wrap}");
        assert!(
            wrap.contains("0x2b5000..0x300000") && wrap.contains("0xb5000..0x100000"),
            "{wrap}"
        );
        assert!(wrap.contains("EEPROM 0xfb000, RF calibration 0xfc000, SDK parameters 0xfd000"));
        // eagle.flash.4m.ld stages below 0x3FB000, which wraps to below 0xFB000: no hit.
        assert!(!wrap.contains("eagle.flash.4m.ld "), "{wrap}");
        // 4m1m, 4m2m and 4m3m all land on the same range: one group.
        assert_eq!(wrap.matches("lands on").count(), 1, "{wrap}");
        assert!(
            wrap.contains("eagle.flash.4m3m.ld (FS 0x100000: 0xb5000..0x100000)"),
            "{wrap}"
        );
    }

    #[test]
    fn webserver_ota_starts_after_the_sketch_and_does_not_wrap() {
        let file = fw(
            OtaMethod::WebServer,
            300 * 1024,
            FlashSize::M4,
            FlashMode::Dout,
        );
        let f = parse_firmware(&file).unwrap();
        let lints = lint(&f, board::find("sonoff-basic").unwrap());
        assert_eq!(ids(&lints), [LintId::FlashSizeTooBig]);
    }

    #[test]
    fn dio_on_the_basic_is_a_warning() {
        let file = fw(
            OtaMethod::WebServer,
            64 * 1024,
            FlashSize::M1,
            FlashMode::Dio,
        );
        let f = parse_firmware(&file).unwrap();
        let lints = lint(&f, board::find("sonoff-basic").unwrap());
        assert_eq!(ids(&lints), [LintId::FlashModeNotRecommended]);
        assert_eq!(lints[0].severity, Severity::Warning);
    }

    #[test]
    fn space_rules_follow_protocols_e() {
        // 1m64: FS at 0xEB000 (940 KiB). ArduinoOTA: 2 * round4k(n) <= 0xEB000 -> n <= 0x75000 (468 KiB)
        let basic = board::find("sonoff-basic").unwrap();
        let fits = fw(OtaMethod::Arduino, 0x75000, FlashSize::M1, FlashMode::Dout);
        assert_eq!(lint(&parse_firmware(&fits).unwrap(), basic), vec![]);
        let over = fw(OtaMethod::Arduino, 0x75010, FlashSize::M1, FlashMode::Dout);
        let lints = lint(&parse_firmware(&over).unwrap(), basic);
        assert_eq!(ids(&lints), [LintId::OtaNoSpace]);
        assert!(
            lints[0].message.contains("= 0xec000"),
            "{}",
            lints[0].message
        );
        // The web server offers (0xEB000 - round4k(installed) - 0x1000) & ~0xFFF; for the odd
        // sector counts of the 1 MB layouts that is the same limit.
        let web = fw(
            OtaMethod::WebServer,
            0x75000,
            FlashSize::M1,
            FlashMode::Dout,
        );
        assert_eq!(lint(&parse_firmware(&web).unwrap(), basic), vec![]);
        let web_over = fw(
            OtaMethod::WebServer,
            0x75010,
            FlashSize::M1,
            FlashMode::Dout,
        );
        let lints = lint(&parse_firmware(&web_over).unwrap(), basic);
        assert_eq!(ids(&lints), [LintId::OtaNoSpace]);
        assert!(
            lints[0].message.contains("= 0x74000"),
            "{}",
            lints[0].message
        );
        let huge = fw(
            OtaMethod::WebServer,
            0xEB010,
            FlashSize::M1,
            FlashMode::Dout,
        );
        assert_eq!(
            ids(&lint(&parse_firmware(&huge).unwrap(), basic)),
            [LintId::SketchTooBig]
        );
    }

    #[test]
    fn staging_and_wrap_arithmetic() {
        assert_eq!(
            ota_staging(OtaMethod::Arduino, 0x30_0000, 0x4B000, 0x4B000),
            Some((0x2B_5000, 0x30_0000))
        );
        assert_eq!(
            ota_staging(OtaMethod::WebServer, 0xEB000, 0x4B000, 0x4B000),
            Some((0x4C000, 0x97000))
        );
        assert_eq!(
            ota_staging(OtaMethod::Arduino, 0xEB000, 0x80000, 0x80000),
            None
        );
        assert!(wrapped_overlaps(
            0x2B_5000, 0x30_0000, 0x10_0000, 0xFB000, 0xFC000
        ));
        assert!(!wrapped_overlaps(
            0x3B_0000, 0x3F_B000, 0x10_0000, 0xFB000, 0xFC000
        ));
        assert!(wrapped_overlaps(0xFF000, 0x10_2000, 0x10_0000, 0x0, 0x1000));
        assert_eq!(size_name(0x10_0000), "1MB");
        assert_eq!(size_name(0x8_0000), "512KB");
    }

    #[test]
    fn corrupt_checksums_are_errors_without_a_board() {
        let mut file = fw(
            OtaMethod::WebServer,
            16 * 1024,
            FlashSize::M1,
            FlashMode::Dout,
        );
        file[0x20] ^= 0x01; // inside eboot's segment
        file[0x2000] ^= 0x10; // inside .irom0.text
        let lints = check(&parse_firmware(&file).unwrap());
        assert_eq!(
            ids(&lints),
            [LintId::BootChecksum, LintId::AppChecksum, LintId::FlashCrc]
        );
        assert!(lints[0].message.contains("0x2d"), "{}", lints[0].message);
    }
}
