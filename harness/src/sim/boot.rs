//! The ROM's boot from flash: load the image at flash 0x0 into RAM, print its loader lines and
//! jump to it (eboot, or a plain SDK/app image).
//!
//! [`boot_from_flash`] is called by the ROM after a reset in boot mode 3, and after the UART
//! loader's "run user code" (FLASH_END with 1, or the legacy stub's RUN_USER_CODE) with the boot
//! mode still latched at 1.
//!
//! # What the ROM prints, and why these numbers
//!
//! For each segment, at 74880 baud with `\r\n` line ends (`ets_printf` turns `\n` into `\r\n`,
//! corpus flash-config-mismatch-02 shows the pairs):
//!
//! ```text
//! load 0x4010f000, len 1384, room 16 \r\n     (note the space before the line end)
//! tail 8\r\n
//! chksum 0x2d\r\n
//! ```
//!
//! then `csum 0x2d\r\n`, and on a mismatch `csum err\r\nets_main.c \r\n` and a halt (corpus
//! checksum-error-04/-05). `chksum` is the running checksum after each segment (0xEF XOR the
//! data so far) and `csum` the final computed one: in every corpus log `csum` equals the last
//! `chksum`, also when the check fails (checksum-error-04: `chksum 0xef` / `csum 0xef` /
//! `csum err`), so the stored byte is never printed.
//!
//! `room` and `tail` are the ROM's 16-byte read buffer bookkeeping. The rule below reproduces
//! every loader line in the corpus (boot-loop-03, checksum-error-01/-03/-05, hw-wdt-loop-01,
//! flash-config-mismatch-02/-03, healthy-boot-01/-03 and the seed): with the segment's data at
//! flash offset `start` and `len` bytes long,
//!
//! - `room` = the bytes left in the current 16-byte block at `start` (`(16 - start % 16) % 16`),
//!   except for the first segment, whose data always starts at 16 and shows `room 16`
//!   (the ROM has already fetched that block with the header);
//! - `tail` = `(len - room) % 16` (0 when `len <= room`);
//! - when the next segment header straddles a 16-byte boundary (the segment ends more than 8
//!   bytes into a block), the ROM prints `ho 0 tail T room R` first, T = end % 16, R = 16 - T
//!   (one corpus example, flash-config-mismatch-02; the meaning of `ho 0` is unknown).
//!
//! # Flash modes the chip cannot run
//!
//! When header byte 2 asks for a mode the board's flash is not wired for (QIO/QOUT/DIO on the
//! ESP8285, see `boards.toml` `flash_modes`), two corpus captures show two outcomes, and the
//! simulator reproduces each for the layout it came from (why the ROM fares differently is not
//! known; the choice follows the evidence, not a mechanism):
//!
//! - a plain SDK image (segments loaded by the ROM): the header and first segment header are
//!   read correctly (the first 16-byte fetch), every read after that returns zeros, so the
//!   first segment's data checksums to nothing (`chksum 0xef`), the next segment headers are
//!   `load 0x00000000, len 0`, the stored checksum reads 0 and the ROM stops with `csum err`
//!   (corpus flash-config-mismatch-03, checksum-error-05);
//! - an Arduino file (eboot at 0x0, one segment): the ROM loads eboot fine and eboot loads the
//!   app, which dies at its first instruction fetched through the flash cache in the header's
//!   mode, with the SDK's `Fatal exception (0):` and registers at 74880 (the core has not set
//!   the UART to 115200 yet), then restarts (corpus flash-config-mismatch-01; see
//!   [`super::app`]).
//!
//! # Other failures
//!
//! - flash not attached (after an rst cause 3 core reset the ROM skips attaching it): the read
//!   fails, the ROM prints `ets_main.c ` and stops (corpus checksum-error-01/-03 and
//!   ota-copy-incomplete-01 show `rst cause:3` followed by exactly that);
//! - no image magic (0xE9) at flash 0, e.g. erased flash: `ets_main.c ` and stop. Source:
//!   <https://esp8266.com/viewtopic.php?p=42567> ("I have just erased flash in my ESP and I see
//!   exactly the same message", the message ending in `ets_main.c`);
//! - a segment longer than the chip's RAM (an assumption of this model: 128 KiB): the ROM would
//!   overwrite itself; the simulator prints the `load` line and then stays silent.

use crate::board::FlashMode;
use crate::image::FlashSize;
use crate::image::checksum::CHECKSUM_SEED;
use crate::image::header::HEADER_LEN;
use crate::image::segment::{SEGMENT_HEADER_LEN, SegmentKind};

use super::chip::{Chip, Hw, Program};
use super::{app, eboot};

/// First byte of an ESP8266 application image (esptool `ESP_IMAGE_MAGIC`).
pub const IMAGE_MAGIC: u8 = 0xE9;
/// Largest segment the ROM can load before it overwrites itself (IRAM + DRAM are under
/// 128 KiB; an assumption of this model).
pub const MAX_ROM_SEGMENT: u32 = 128 * 1024;
/// The ROM reads flash into a 16-byte buffer.
const ROM_BLOCK: u32 = 16;

/// Boots from flash as the ROM does, leaving the chip in the resulting program.
pub fn boot_from_flash(chip: &mut Chip) {
    let program = rom_load(&mut chip.hw);
    chip.set_program(program);
    chip.after_program_change();
}

/// What the header at flash 0 says about flash access, as the ROM and SDK configure it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootHeader {
    /// Header byte 2.
    pub mode: u8,
    /// Header byte 3's size nibble, in bytes (the board's real size if the nibble is unknown).
    pub size: u32,
    /// Whether the board's flash can be read in that mode.
    pub mode_ok: bool,
}

impl BootHeader {
    /// Reads the header at flash 0 (`None` if it cannot be read).
    pub fn read(hw: &Hw) -> Option<BootHeader> {
        let mut head = [0u8; 4];
        hw.flash.read(0, &mut head).ok()?;
        let size = FlashSize::from_nibble(head[3] >> 4).map_or(hw.board.flash_size, |s| s.bytes());
        let mode_ok = FlashMode::from_header(head[2]).is_some_and(|m| hw.board.supports_mode(m));
        Some(BootHeader {
            mode: head[2],
            size,
            mode_ok,
        })
    }
}

fn rom_load(hw: &mut Hw) -> Program {
    let mut header = [0u8; HEADER_LEN];
    if !hw.flash_attached || hw.flash.read(0, &mut header).is_err() || header[0] != IMAGE_MAGIC {
        hw.print("ets_main.c \r\n");
        return Program::Halted;
    }
    let Some(boot) = BootHeader::read(hw) else {
        hw.print("ets_main.c \r\n");
        return Program::Halted;
    };
    let count = header[1];
    let first_addr = word(hw, HEADER_LEN as u32);
    // An Arduino file: eboot alone in the image at 0x0, loaded at the top of IRAM.
    let is_eboot = count == 1 && SegmentKind::of(first_addr) == SegmentKind::Eboot;
    // A plain image in a mode the flash cannot do: reads after the first block are zeros.
    let garbage = !boot.mode_ok && !is_eboot;
    let read = |hw: &Hw, at: u32, len: u32| -> Vec<u8> {
        if garbage && at >= ROM_BLOCK {
            return vec![0; len as usize];
        }
        hw.flash.read_vec(at, len as usize).unwrap_or_default()
    };

    let mut pos = HEADER_LEN as u32;
    let mut checksum = CHECKSUM_SEED;
    for index in 0..count {
        let h = read(hw, pos, SEGMENT_HEADER_LEN as u32);
        let addr = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let start = pos + SEGMENT_HEADER_LEN as u32;
        let room = if index == 0 {
            ROM_BLOCK
        } else {
            (ROM_BLOCK - start % ROM_BLOCK) % ROM_BLOCK
        };
        let tail = len.saturating_sub(room) % ROM_BLOCK;
        hw.print(&format!("load 0x{addr:08x}, len {len}, room {room} \r\n"));
        if len > MAX_ROM_SEGMENT {
            return Program::Hung;
        }
        hw.print(&format!("tail {tail}\r\n"));
        let data = read(hw, start, len);
        checksum = data.iter().fold(checksum, |c, b| c ^ b);
        hw.print(&format!("chksum 0x{checksum:02x}\r\n"));
        let end = start + len;
        if index + 1 < count && end % ROM_BLOCK > ROM_BLOCK - SEGMENT_HEADER_LEN as u32 {
            let t = end % ROM_BLOCK;
            hw.print(&format!("ho 0 tail {t} room {}\r\n", ROM_BLOCK - t));
        }
        pos = end;
    }
    let stored = read(hw, pos | (ROM_BLOCK - 1), 1)[0];
    hw.print(&format!("csum 0x{checksum:02x}\r\n"));
    if stored != checksum {
        hw.print("csum err\r\nets_main.c \r\n");
        return Program::Halted;
    }
    if is_eboot {
        eboot::start(hw, boot)
    } else {
        app::launch_plain(hw, boot)
    }
}

/// The little-endian word at `addr`, 0 if it cannot be read.
pub(crate) fn word(hw: &Hw, addr: u32) -> u32 {
    let mut w = [0u8; 4];
    hw.flash
        .read(addr, &mut w)
        .map_or(0, |()| u32::from_le_bytes(w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::chip::tests::{chip, tx_bytes};

    /// A plain image with segments of the given lengths (data 0x11 each), checksum valid.
    fn plain_image(lens: &[u32], mode: u8) -> Vec<u8> {
        let mut v = vec![IMAGE_MAGIC, lens.len() as u8, mode, 0x20, 0, 0, 0x10, 0x40];
        let mut c = CHECKSUM_SEED;
        for (i, &len) in lens.iter().enumerate() {
            let addr = 0x4010_0000u32 + i as u32 * 0x8000;
            v.extend_from_slice(&addr.to_le_bytes());
            v.extend_from_slice(&len.to_le_bytes());
            let data: Vec<u8> = (0..len).map(|j| (j * 7 + i as u32) as u8).collect();
            c = data.iter().fold(c, |c, b| c ^ b);
            v.extend_from_slice(&data);
        }
        let at = v.len() | 15;
        v.resize(at, 0);
        v.push(c);
        v
    }

    fn boot_text(board: &str, image: &[u8]) -> String {
        let mut c = chip(board);
        c.hw.flash.program(0, image).unwrap();
        c.power_on();
        String::from_utf8_lossy(&tx_bytes(&c.take_output())).into_owned()
    }

    #[test]
    fn room_and_tail_follow_the_corpus() {
        // boot-loop-03: 29232 / 1964 / 3256.
        let text = boot_text("sonoff-basic", &plain_image(&[29232, 1964, 3256], 3));
        for line in [
            "load 0x40100000, len 29232, room 16 \r\ntail 0\r\n",
            "load 0x40108000, len 1964, room 8 \r\ntail 4\r\n",
            "load 0x40110000, len 3256, room 4 \r\ntail 4\r\n",
        ] {
            assert!(text.contains(line), "{line:?} in {text:?}");
        }
        assert!(!text.contains("ho 0"), "{text}");
        // flash-config-mismatch-02: 28780 / 1580 / 36588 with the straddling `ho` line.
        let text = boot_text("sonoff-basic", &plain_image(&[28780, 1580, 36588], 3));
        assert!(
            text.contains("load 0x40100000, len 28780, room 16 \r\ntail 12\r\nchksum 0x"),
            "{text}"
        );
        assert!(
            text.contains(
                "\r\nho 0 tail 12 room 4\r\nload 0x40108000, len 1580, room 12 \r\ntail 0\r\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("load 0x40110000, len 36588, room 8 \r\ntail 4\r\n"),
            "{text}"
        );
        // healthy-boot-03: 2408 / 776 / 632, aligned starts show room 0.
        let text = boot_text("sonoff-basic", &plain_image(&[2408, 776, 632], 3));
        assert!(text.contains("len 776, room 0 \r\ntail 8\r\n"), "{text}");
        assert!(text.contains("len 632, room 0 \r\ntail 8\r\n"), "{text}");
        // A valid plain image passes the checksum and is not halted.
        assert!(!text.contains("csum err"), "{text}");
    }

    #[test]
    fn a_plain_image_without_identity_runs_silently() {
        let mut c = chip("sonoff-basic");
        let img = plain_image(&[2408, 776, 632], 3);
        let sum = img[img.len() - 1];
        c.hw.flash.program(0, &img).unwrap();
        c.power_on();
        c.advance(std::time::Duration::from_secs(5));
        let text = String::from_utf8_lossy(&tx_bytes(&c.take_output())).into_owned();
        assert!(
            text.ends_with(&format!("chksum 0x{sum:02x}\r\ncsum 0x{sum:02x}\r\n")),
            "{text}"
        );
        assert!(!text.contains("ld"), "no eboot: {text}");
        let status = c.status().to_string();
        assert!(status.contains("state=app"), "{status}");
        assert!(status.contains("app=unknown fw_state=-"), "{status}");
        assert!(!text.contains("csum err"));
        assert_eq!(
            c.status().uart_tx,
            115_200,
            "the core sets 115200 and stays silent"
        );
    }

    #[test]
    fn bad_checksum_halts_with_csum_err() {
        let mut img = plain_image(&[1384], 3);
        let last = img.len() - 1;
        img[last] ^= 0xFF;
        let text = boot_text("sonoff-4ch", &img);
        let computed = img[last] ^ 0xFF;
        assert!(
            text.ends_with(&format!(
                "chksum 0x{computed:02x}\r\ncsum 0x{computed:02x}\r\ncsum err\r\nets_main.c \r\n"
            )),
            "{text}"
        );
    }

    #[test]
    fn plain_qio_image_on_the_esp8285_reads_zeros_after_the_first_block() {
        // flash-config-mismatch-03: 30312 then two impossible segments and csum err.
        let text = boot_text("sonoff-4ch", &plain_image(&[30312, 1000, 500], 0));
        let rom = text.split("boot mode:(3,7)\r\n\r\n").nth(1).unwrap();
        assert_eq!(
            rom,
            "load 0x40100000, len 30312, room 16 \r\ntail 8\r\nchksum 0xef\r\n\
             load 0x00000000, len 0, room 0 \r\ntail 0\r\nchksum 0xef\r\n\
             load 0x00000000, len 0, room 8 \r\ntail 0\r\nchksum 0xef\r\n\
             csum 0xef\r\ncsum err\r\nets_main.c \r\n"
        );
        // The Basic's external flash runs QIO: the same image boots.
        let text = boot_text("sonoff-basic", &plain_image(&[30312, 1000, 500], 0));
        assert!(!text.contains("csum err"), "{text}");
    }

    #[test]
    fn oversized_segment_hangs_after_its_load_line() {
        let mut img = plain_image(&[16], 3);
        img[12..16].copy_from_slice(&0x0010_0000u32.to_le_bytes());
        let text = boot_text("sonoff-basic", &img);
        assert!(
            text.ends_with("load 0x40100000, len 1048576, room 16 \r\n"),
            "{text}"
        );
    }
}
