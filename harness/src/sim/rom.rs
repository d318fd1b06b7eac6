//! The ESP8266 boot ROM's `main()` after a reset: banner, reset-cause handling, and the choice
//! between the UART download loop and booting from flash.
//!
//! The flow follows the reverse-engineered rebuild of the ROM's `main()` named in esp8266/Arduino
//! `cores/esp8266/reboot_uart_dwnld.cpp` (<https://github.com/twischer/Arduino>, branch
//! reboot_uart_download_full), checked against the shared corpus logs:
//!
//! - print `\n ets Jan  8 2013,rst cause:N, boot mode:(X,Y)\n\n` (`ets_printf` turns `\n` into
//!   `\r\n`; corpus flash-config-mismatch-02 shows the CR LF pairs) at the ROM's 74880 baud;
//! - cause 1 or 2: set up the boot device (flash: attach the SPI flash; UART download: autobaud
//!   and run the loader); cause 3 (core software reset): skip that; cause 4: print `wdt reset`
//!   and set up the boot device; 5/6 skip it; anything else: `unknown reset` and stop;
//! - then, for boot mode 3 (or 1 once the loader returned without an entry point), boot from
//!   flash; if that fails print `ets_main.c ` and stop.

use crate::flash::proto::ROM_PRINT_BAUD;

use super::boot;
use super::chip::{Chip, Program, RxMode};
use super::rom_loader::RomLoader;

/// The ROM build date in the banner.
pub const ROM_DATE: &str = "Jan  8 2013";

/// The banner line for a reset (with the ROM's CR LF line ends).
pub fn banner(rst_cause: u8, x: u8, y: u8) -> String {
    format!("\r\n ets {ROM_DATE},rst cause:{rst_cause}, boot mode:({x},{y})\r\n\r\n")
}

/// Runs the ROM from reset until it settles in a program (download loop, halt, flash boot).
pub fn rom_main(chip: &mut Chip) {
    let hw = &mut chip.hw;
    let (Some(mode), Some(cause)) = (hw.latched, hw.rst_cause) else {
        return;
    };
    hw.set_baud(ROM_PRINT_BAUD);
    hw.print(&banner(cause, mode.x, mode.y));
    let setup_boot_device = match cause {
        1 | 2 => true,
        3 | 5 | 6 => false,
        4 => {
            hw.print("wdt reset\r\n");
            true
        }
        _ => {
            hw.print("unknown reset\r\nets_main.c \r\n");
            chip.set_program(Program::Halted);
            return;
        }
    };
    if setup_boot_device {
        if mode.is_download() {
            // Autobaud: the loader answers at whatever rate the host's first SYNC comes at.
            hw.rx = RxMode::Autobaud;
            chip.set_program(Program::RomDownload(RomLoader::default()));
            return;
        }
        hw.flash_attached = true;
    }
    boot::boot_from_flash(chip);
}
