//! The seam where the ROM boots from flash.
//!
//! [`boot_from_flash`] is called by the ROM after a reset in boot mode 3, and after the UART
//! loader's "run user code" (FLASH_END with 1, or the legacy stub's RUN_USER_CODE) with the boot
//! mode still latched at 1. Today it only knows what a chip does when there is nothing bootable:
//!
//! - flash not attached (after an rst cause 3 core reset the ROM skips attaching it): the read
//!   fails, the ROM prints `ets_main.c ` and stops (corpus checksum-error-01/-03 and
//!   ota-copy-incomplete-01 show `rst cause:3` followed by exactly that);
//! - no image magic (0xE9) at flash 0, e.g. erased flash: the ROM prints `ets_main.c ` and stops.
//!   Source: <https://esp8266.com/viewtopic.php?p=42567> ("I have just erased flash in my ESP and I
//!   see exactly the same message", the message ending in `ets_main.c`). Whether the ROM prints
//!   anything before it for other bad headers is not known.
//!
//! With a 0xE9 header the chip goes to [`Program::FlashImage`] and stays silent: parsing the
//! image, the ROM's `load`/`chksum`/`csum` lines, eboot and the app are added by a later part
//! here, using `chip.hw.flash`, `chip.hw.latched` (boot mode, still 1 after a soft start) and
//! `chip.hw.soft_started_after_download`.

use super::chip::{Chip, Program};

/// First byte of an ESP8266 application image (esptool `ESP_IMAGE_MAGIC`).
pub const IMAGE_MAGIC: u8 = 0xE9;

/// Boots from flash as the ROM does, leaving the chip in the resulting program.
pub fn boot_from_flash(chip: &mut Chip) {
    let hw = &mut chip.hw;
    let magic = if hw.flash_attached {
        let mut b = [0u8; 1];
        hw.flash.read(0, &mut b).ok().map(|()| b[0])
    } else {
        None
    };
    if magic == Some(IMAGE_MAGIC) {
        chip.set_program(Program::FlashImage);
    } else {
        hw.print("ets_main.c \r\n");
        chip.set_program(Program::Halted);
    }
}
