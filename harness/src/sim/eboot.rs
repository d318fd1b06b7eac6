//! eboot, the Arduino core's second-stage boot loader, as the ROM runs it from flash 0x0.
//!
//! Follows bootloaders/eboot/eboot.c of esp8266/Arduino (master, the version with the
//! compiled-out `cmp:` verify; shared docs boot-log.md §4), line by line where it prints:
//!
//! 1. `v%08x\n`: the word at flash 0x1010 (the installed app's `__crc_len`, or an older
//!    core's `core_version`).
//! 2. `@` when RTC memory holds a command whose magic and CRC check out
//!    ([`EbootCommand::from_words`]), else `~` and "load the app from 0".
//! 3. For `ACTION_COPY_RAW`: `cp:`, the watchdog off, then `copy_raw(src, dst, size)`: both
//!    addresses must be sector-aligned (else 1); a gzip source (1F 8B) is inflated (bad header
//!    5, inflate error 6); for every 4 KiB sector the destination is erased (error 2), the
//!    source read (error 3) and the destination written (error 4). Then the watchdog is back on
//!    and the result digit and `\n` are printed; on success the app is loaded from `dst`.
//! 4. The command is cleared (magic and CRC words zeroed) whatever the result.
//! 5. `ld\n`, then the app image at `addr + 0x1000` is loaded segment by segment (header read
//!    fails: `e:1`, a segment header: `e:2`, segment data: `e:3`, each followed by `\n`); only
//!    segments below 0x40000000, in 0x40100000..0x4010C000 or from 0x60000000 are read, the
//!    others (irom0) are skipped.
//! 6. Any failure ends in a software reset of the core (`SWRST`), which the ROM reports as
//!    rst cause 3 and, skipping the flash attach, stops in `ets_main.c` (corpus
//!    checksum-error-01/-03). The shared docs expected a `~ld` boot after a failed copy; the
//!    corpus shows the halt, so the simulator halts.
//!
//! `ets_putc('\n')` is sent as `\r\n` like every ROM print.
//!
//! # Timing of the copy
//!
//! The copy runs in device time, sector by sector: erase ([`SECTOR_ERASE_TIME`], 45 ms), read
//! the source ([`SECTOR_READ_TIME`], an estimate: 4 KiB at 40 MHz over two data lines is about
//! 0.4 ms) and program 16 pages ([`PAGE_PROGRAM_TIME`] each, 0.7 ms); the erase and program
//! figures are the typical values of an 8 Mbit SPI NOR part (see
//! [`super::flash_model`]). About 57 ms per sector, so a 300 KiB image copies in about 4 s
//! (the shared docs' "roughly 50 KB/s"). A power cut between steps leaves the flash as far as
//! the copy got: the sectors before are new, the rest old (or erased, if the cut came after an
//! erase), and RTC memory, with the command, is gone. The next boot then runs whatever
//! 0x0..0x1000 and the app region now hold; see [`super::app`] for what a half-copied app does.
//!
//! # The field report's Sonoff Basic (failure modes B and C)
//!
//! The seed shows, on the 1 MB Basic: `@cp:` and no digit, a reset by the user, then "very big
//! traffic at a strange bit rate", and the EEPROM lost. The mechanism the simulator implements
//! (test `four_mb_layout_on_a_1mb_basic_stages_over_the_eeprom`):
//!
//! 1. The app was built for 4 MB (header byte 3 says 4MB, the linker layout is a 4 MB one:
//!    filesystem from 0x300000, EEPROM at 0x3FB000; protocols.md §E, failure-modes.md C).
//!    [`super::app::linked_layout`] derives the layout from the header's size.
//! 2. ArduinoOTA's `Update.begin(size)` stages the new image at `FS_start - round4k(size)`,
//!    0x2F8000 for 32 KiB. A 1 MB chip ignores the upper address bits, so the staging lands at
//!    0xF8000..0x100000: it overwrites the EEPROM (0xFB000), RF calibration (0xFC000) and SDK
//!    parameters (0xFD000..) during the upload itself. That is the lost EEPROM.
//! 3. eboot copies from 0x2F8000 (within the 4 MB the header announces, so the read wraps to
//!    the staged bytes): a 300 KiB image takes about 4 s with the watchdog off and nothing on
//!    the serial port after `@cp:`, which looks like a hang.
//! 4. A reset or power cut during the copy leaves the app half new, half old; its next boots
//!    crash and restart in a loop, shown as ROM lines and garbage at one rate and crash dumps and
//!    garbage at the other (the "strange bit rate").
//!
//! Doubts, stated: core 2.1.0 and later refuse a 4 MB header on a 1 MB chip (`Update.begin`
//! error 8, `Update.end` error 9; PR #1259), so this path needs an image built with
//! `--core 2.0.0` or older (`CoreModel::PRE_2_1`), while the seed's eboot (len 1384) and
//! `v3ffe903d` point to a newer 2.x core; and the seed used the HTTP update server, whose
//! staging sits right after the running sketch (it begins with all free space) and does not
//! wrap. The seed's lost EEPROM may therefore have another cause (an erase-all serial flash
//! is the other candidate the shared docs name). The simulator models the mechanism above
//! because it is the one the facts allow for a 4 MB image on this board.
//!
//! # SPI reads beyond the chip
//!
//! The ROM's `SPIRead` fails for addresses past the flash size it was configured with, which
//! this model takes from the header at flash 0 (an assumption: the ROM and SDK configure the
//! SPI size from header byte 3). Below that limit addresses wrap at the real chip size, as the
//! flash itself ignores the upper address bits ([`super::flash_model`]).

use std::io::Read;
use std::time::Duration;

use crate::ota::updater::{EbootAction, EbootCommand, FLASH_SECTOR_SIZE, eboot as block};

use super::app::{self, Loaded};
use super::boot::{BootHeader, word};
use super::chip::{Flow, Hw, Program, ResetKind};
use super::control::CopyCut;
use super::flash_model::{PAGE_PROGRAM_TIME, SECTOR_ERASE_TIME};

/// Reading one 4 KiB source sector (an estimate, see the module docs).
pub const SECTOR_READ_TIME: Duration = Duration::from_micros(500);
/// Flash offset of the app image, relative to the load address eboot is given.
const APP_START_OFFSET: u32 = 0x1000;
/// Flash offset of the word eboot prints as `vXXXXXXXX`.
const VERSION_WORD_AT: u32 = APP_START_OFFSET + 8 + 8;

/// Time to program one sector: 16 pages of 256 bytes.
pub fn sector_program_time() -> Duration {
    PAGE_PROGRAM_TIME * (FLASH_SECTOR_SIZE / 256)
}

/// Where the copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// About to start sector `done`.
    Next,
    /// Erasing sector `done`.
    Erasing,
    /// Reading and programming sector `done`.
    Writing,
}

/// eboot while its copy runs.
#[derive(Debug)]
pub struct Eboot {
    boot: BootHeader,
    src: u32,
    dst: u32,
    sectors: u32,
    done: u32,
    step: Step,
    due: Duration,
    /// The inflated image of a gzip source.
    inflated: Option<Vec<u8>>,
}

/// Runs eboot from its start; returns the program the chip continues with.
pub fn start(hw: &mut Hw, boot: BootHeader) -> Program {
    let version = word(hw, VERSION_WORD_AT);
    hw.print(&format!("v{version:08x}\r\n"));
    let cmd = match EbootCommand::from_words(&hw.rtc) {
        Ok(cmd) => {
            hw.print("@");
            Some(cmd)
        }
        Err(_) => {
            hw.print("~");
            None
        }
    };
    let Some(cmd) = cmd else {
        return load_app(hw, boot, 0, false);
    };
    match cmd.action {
        EbootAction::CopyRaw => {}
        EbootAction::LoadApp => return load_app(hw, boot, cmd.args[0], true),
        // Neither action: res stays 9, the command is cleared and the core reset.
        EbootAction::Other(_) => {
            clear_command(hw);
            return restart(hw, ResetKind::CoreReset);
        }
    }
    hw.print("cp:");
    hw.wdt_enabled = false;
    let [src, dst, size, ..] = cmd.args;
    if src % FLASH_SECTOR_SIZE != 0 || dst % FLASH_SECTOR_SIZE != 0 {
        return finish(hw, boot, dst, 1);
    }
    let gzip = read(hw, boot, src, 2).is_some_and(|m| m == [0x1F, 0x8B]);
    let (left, inflated) = if gzip {
        match inflate(hw, boot, src, size) {
            Ok(data) => (data.len() as u32, Some(data)),
            Err(code) => return finish(hw, boot, dst, code),
        }
    } else {
        (size.div_ceil(FLASH_SECTOR_SIZE) * FLASH_SECTOR_SIZE, None)
    };
    let copy = Eboot {
        boot,
        src,
        dst,
        sectors: left.div_ceil(FLASH_SECTOR_SIZE),
        done: 0,
        step: Step::Next,
        // `ets_putc` waits for room in the UART FIFO, so eboot's lines (and the ROM's before
        // them) have left the chip when the copy starts: a cut at sector 0 still shows `@cp:`,
        // as the seed's Basic log does.
        due: hw.now.max(hw.tx_busy_until),
        inflated,
    };
    Program::Eboot(copy)
}

impl Eboot {
    /// The next step's device time.
    pub fn deadline(&self) -> Option<Duration> {
        Some(self.due)
    }

    /// `sector=N/M` for `status`: N sectors copied of M.
    pub fn status(&self) -> String {
        format!("sector={}/{}", self.done, self.sectors)
    }

    /// Runs the step that is due; returns the next program if eboot is done.
    pub fn on_timer(&mut self, hw: &mut Hw) -> (Option<Program>, Flow) {
        if hw.now < self.due {
            return (None, Flow::Stay);
        }
        let cut = hw.faults.power_cut_during_copy;
        let cut_here = |erased: bool| {
            cut == Some(CopyCut {
                sectors: self.done,
                erased,
            })
        };
        let offset = self.done * FLASH_SECTOR_SIZE;
        match self.step {
            Step::Next => {
                if self.done == self.sectors {
                    return (Some(finish(hw, self.boot, self.dst, 0)), Flow::Stay);
                }
                if cut_here(false) {
                    return (None, Flow::PowerOff);
                }
                self.step = Step::Erasing;
                self.due = hw.now + SECTOR_ERASE_TIME;
            }
            Step::Erasing => {
                let at = self.dst.wrapping_add(offset);
                if !in_limit(self.boot, at, FLASH_SECTOR_SIZE) || hw.flash.erase_sector(at).is_err()
                {
                    return (Some(finish(hw, self.boot, self.dst, 2)), Flow::Stay);
                }
                if cut_here(true) {
                    return (None, Flow::PowerOff);
                }
                self.step = Step::Writing;
                self.due = hw.now + SECTOR_READ_TIME + sector_program_time();
            }
            Step::Writing => {
                let data = match &self.inflated {
                    Some(inflated) => {
                        let mut data = vec![0xFF; FLASH_SECTOR_SIZE as usize];
                        let from = offset as usize;
                        let n = inflated.len().saturating_sub(from).min(data.len());
                        data[..n].copy_from_slice(&inflated[from..from + n]);
                        Some(data)
                    }
                    None => read(
                        hw,
                        self.boot,
                        self.src.wrapping_add(offset),
                        FLASH_SECTOR_SIZE,
                    ),
                };
                let Some(data) = data else {
                    return (Some(finish(hw, self.boot, self.dst, 3)), Flow::Stay);
                };
                if hw
                    .flash
                    .program(self.dst.wrapping_add(offset), &data)
                    .is_err()
                {
                    return (Some(finish(hw, self.boot, self.dst, 4)), Flow::Stay);
                }
                self.done += 1;
                self.step = Step::Next;
            }
        }
        (None, Flow::Stay)
    }
}

/// The end of `copy_raw`: digit, watchdog back on, command cleared, app loaded from `dst`.
fn finish(hw: &mut Hw, boot: BootHeader, dst: u32, res: u8) -> Program {
    hw.print(&format!("{res}\r\n"));
    hw.wdt_enabled = true;
    if res != 0 {
        clear_command(hw);
        return restart(hw, ResetKind::CoreReset);
    }
    hw.booted_after_copy = true;
    load_app(hw, boot, dst, true)
}

/// `eboot_command_clear`: the magic and CRC words are zeroed.
fn clear_command(hw: &mut Hw) {
    hw.rtc[0] = 0;
    hw.rtc[block::WORDS - 1] = 0;
}

/// `ld`, then `load_app_from_flash_raw(addr)`.
fn load_app(hw: &mut Hw, boot: BootHeader, addr: u32, clear: bool) -> Program {
    if clear {
        clear_command(hw);
    }
    hw.print("ld\r\n");
    match load_segments(hw, boot, addr) {
        Ok(loaded) => app::launch(hw, boot, loaded),
        Err(code) => {
            hw.print(&format!("e:{code}\r\n"));
            restart(hw, ResetKind::CoreReset)
        }
    }
}

/// Walks the app image like `load_app_from_flash_raw`; the error is eboot's `e:` code.
fn load_segments(hw: &Hw, boot: BootHeader, addr: u32) -> Result<Loaded, u8> {
    let mut pos = addr.wrapping_add(APP_START_OFFSET);
    let header = read(hw, boot, pos, 8).ok_or(1u8)?;
    pos += 8;
    let mut ram_ok = true;
    for _ in 0..header[1] {
        let h = read(hw, boot, pos, 8).ok_or(2u8)?;
        pos += 8;
        let address = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let size = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let load = address < 0x4000_0000
            || (0x4010_0000..0x4010_C000).contains(&address)
            || address >= 0x6000_0000;
        if load {
            if !in_limit(boot, pos, size) {
                return Err(3);
            }
            ram_ok &= fits_ram(address, size);
        }
        pos = pos.checked_add(size).ok_or(3u8)?;
    }
    Ok(Loaded {
        entry: u32::from_le_bytes([header[4], header[5], header[6], header[7]]),
        ram_ok,
    })
}

/// Whether `[address, address + size)` lies in DRAM or IRAM (else loading it overwrites
/// whatever is there, eboot included, and the code that follows runs wild).
fn fits_ram(address: u32, size: u32) -> bool {
    let end = u64::from(address) + u64::from(size);
    [(0x3FFE_8000u64, 0x4000_0000u64), (0x4010_0000, 0x4010_C000)]
        .iter()
        .any(|&(lo, hi)| u64::from(address) >= lo && end <= hi)
}

/// Whether an SPI read of `len` bytes at `addr` stays within the configured flash size.
fn in_limit(boot: BootHeader, addr: u32, len: u32) -> bool {
    u64::from(addr) + u64::from(len) <= u64::from(boot.size)
}

/// `SPIRead`: `None` when it fails.
fn read(hw: &Hw, boot: BootHeader, addr: u32, len: u32) -> Option<Vec<u8>> {
    if !in_limit(boot, addr, len) {
        return None;
    }
    hw.flash.read_vec(addr, len as usize).ok()
}

/// Inflates a gzip image staged at `src` (`size` bytes); the error is eboot's code.
fn inflate(hw: &Hw, boot: BootHeader, src: u32, size: u32) -> Result<Vec<u8>, u8> {
    let data = read(hw, boot, src, size).ok_or(5u8)?;
    // uzlib_gzip_parse_header: magic, method 8 (deflate).
    if data.len() < 18 || data[2] != 8 {
        return Err(5);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data.as_slice())
        .read_to_end(&mut out)
        .map_err(|_| 6u8)?;
    Ok(out)
}

/// A software reset once the UART has sent what is queued.
pub(crate) fn restart(hw: &Hw, kind: ResetKind) -> Program {
    Program::Restarting {
        at: hw.now.max(hw.tx_busy_until),
        kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_timing_is_about_57_ms_per_sector() {
        let per_sector = SECTOR_ERASE_TIME + SECTOR_READ_TIME + sector_program_time();
        assert_eq!(per_sector, Duration::from_micros(56_700));
        // A 300 KiB image: 75 sectors, about 4.3 s of device time.
        assert_eq!((per_sector * 75).as_millis(), 4252);
    }

    #[test]
    fn ram_regions() {
        assert!(fits_ram(0x3FFE_8000, 0x100));
        assert!(fits_ram(0x4010_0000, 0xC000));
        assert!(!fits_ram(0x4010_0000, 0xC001));
        assert!(!fits_ram(0x0000_0000, 4));
        assert!(!fits_ram(0x3FFF_FFF0, 0x20));
    }
}
