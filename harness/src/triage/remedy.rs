//! What to do about each class: concrete steps, most likely fix first.

use super::{Class, Details};

/// The remedy for a finding.
pub fn remedy(class: Class, details: &Details) -> String {
    let base = match class {
        Class::HealthyBoot => "Nothing to fix.",
        Class::RestartAfterSerialFlash => {
            "Power-cycle the board once after every serial flash (GPIO0 released) before the \
             first OTA or restart; the latched download-mode strapping only clears at a power-on \
             or RST reset. Then repeat the OTA. Do not rely on esptool's --after soft-reset: a \
             Sonoff has no RST wiring, so cut its power instead (the harness does this itself)."
        }
        Class::DownloadMode => {
            "Release GPIO0 (the Sonoff button) and power-cycle: GPIO0 must be high, GPIO2 high \
             and GPIO15 low at reset to boot from flash. Check the button, the rig's GPIO0 line \
             and any load on GPIO15 (relay 4 on the 4CH)."
        }
        Class::OtaCopyIncomplete => {
            "Reflash over serial: the app region may be half-overwritten. Power-cycle after the \
             serial flash, then repeat the OTA and do not reset or unplug the board while eboot \
             copies (several seconds for a few hundred KB; the watchdog is off during the copy). \
             If it stalls again, check that the build is for 1 MB flash (the OTA staging address \
             of a larger layout wraps onto the app and EEPROM) and that the supply is stable."
        }
        Class::FlashConfigMismatch => {
            "Build for the board's flash: Flash size 1 MB (e.g. 1M with 64 KB FS) and flash mode \
             DOUT for Sonoff boards (the ESP8285 runs DOUT only). Reflash over serial with \
             `-fm dout -fs 1MB`, and check images with `harness image inspect --board <board>` \
             before flashing or uploading them."
        }
        Class::ChecksumError => {
            "Reflash over serial, erasing first (`esptool erase-flash`), with a flash mode the \
             chip supports (DOUT on Sonoff boards). If it recurs after every OTA, the uploaded \
             image is corrupt (check its MD5, and `harness image inspect` it) or the flash is \
             written during a supply dip."
        }
        Class::ExceptionCrash => {
            "Decode the stack (ESP Exception Decoder, or addr2line on the ELF) to find the \
             crashing function; EXCCAUSE 28/29 with a small excvaddr is a null pointer, 9 an \
             unaligned access, 0 an illegal instruction (bad code read from flash), 3 a flash \
             read from IRAM/ISR code. Roll back to the last good firmware by serial if the crash \
             is at boot."
        }
        Class::SoftWdt => {
            "Let loop() return or call yield()/delay(0) inside long loops and blocking waits; \
             the software watchdog fires after about 3 seconds without yielding. ctx: sys means \
             the Wi-Fi/SDK context was starved, ctx: cont the sketch. Decode the stack to find \
             the blocking code."
        }
        Class::HwWdtLoop => {
            "Find code that blocks with interrupts off or spins for seconds (the hardware \
             watchdog fires after about 6–8 s, with no stack dump): ISRs without IRAM_ATTR, long \
             critical sections, flash access from interrupts. Check the supply and pull-ups too: \
             resets at Wi-Fi start point at power."
        }
        Class::BrownoutOrPower => {
            "Power the board from a 3.3 V supply of at least 500 mA with 100 µF or more close to \
             the header, never from a USB-serial adapter's or a Pi's 3.3 V pin; then repeat. \
             Flash writes during a dip corrupt images, so reflash over serial if boots now fail."
        }
        Class::GarbageBaud => {
            "Capture at the right rate: the ROM and eboot print at 74880 baud, the app at its \
             own (115200 for the reference firmware). `harness monitor` switches between them; \
             if the garbage keeps scrolling the board is boot-looping, so read it at 74880."
        }
        Class::BootLoop => {
            "Find what restarts the app: ESP.restart()/ESP.reset() in error paths (for example \
             services started before Wi-Fi is up), a watchdog-free reset from a library, or \
             hardware pulling RST/EN. Print the reset reason (ESP.getResetInfo()) at boot to \
             confirm."
        }
        Class::Inconclusive => {
            "Capture from power-on: connect the serial adapter, start the capture at 74880 \
             baud, then power the board."
        }
    };
    let mut out = base.to_string();
    if class == Class::BootLoop && details.notes.iter().any(|n| n.contains("rf_cal")) {
        out = "Write the SDK's esp_init_data_default.bin to the init-data sector (the 4th \
               sector from the end of flash) or erase the whole flash and reflash, so the SDK \
               finds its RF calibration data."
            .to_string();
    }
    if class == Class::HwWdtLoop && details.notes.iter().any(|n| n.contains("supply")) {
        out.push_str(
            " Here the resets coincide with Wi-Fi connecting: test with a stronger supply first.",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_advice_with_an_action() {
        for class in Class::ALL.into_iter().filter(|c| !c.is_healthy()) {
            let r = remedy(class, &Details::default());
            assert!(r.len() > 20, "{class}: {r}");
        }
        assert!(
            remedy(Class::OtaCopyIncomplete, &Details::default()).contains("Reflash over serial")
        );
        assert!(
            remedy(Class::RestartAfterSerialFlash, &Details::default()).contains("Power-cycle")
        );
        assert!(remedy(Class::FlashConfigMismatch, &Details::default()).contains("DOUT"));
    }
}
