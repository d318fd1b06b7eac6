//! The `usb-serial` backend: a USB-UART adapter whose modem lines drive the board's straps, as
//! in the common auto-reset circuit (NodeMCU, esptool's "classic reset"): DTR → GPIO0,
//! RTS → EN, asserted = pin low.
//!
//! That circuit cross-couples two transistors so that DTR and RTS asserted together pull
//! neither pin (a terminal that raises both does not reset the board). It can therefore express
//! "EN low" (DTR released, RTS asserted) and "GPIO0 low, EN high" (DTR asserted, RTS released),
//! but not both pins low at once. The lines here keep the logical state and map it: while reset
//! is asserted it wins, and releasing it with GPIO0 pressed switches straight from (DTR 0,
//! RTS 1) to (DTR 1, RTS 0), which is esptool's sequence; the EN capacitor delays the rising edge
//! long enough for GPIO0 to be low when the chip samples it. The same mapping works for direct
//! (not cross-coupled) wiring. Sonoff headers expose neither EN nor DTR wiring, so this backend
//! is for bare modules and boards with an EN pad.
//!
//! Power can be switched by RTS instead (`power = { modem = "rts" }`); the EN reset is then not
//! available. The modem lines are set through the capture's port handle and set again after the
//! port is reopened (Linux raises DTR and RTS when a tty is opened).
//!
//! Built always (unlike `gpio`): it needs no crate beyond `serialport`, which the capture uses
//! anyway.

use std::sync::Arc;

use crate::capture::Capture;

use super::file::{Level, UsbSerialConfig};
use super::{Capabilities, Lines, PowerAtExit, RigError};

/// RTS asserted (pin low) for the power state `on` with a switch active at `active`.
fn rts_for_power(active: Level, on: bool) -> bool {
    match active {
        Level::Low => on,
        Level::High => !on,
    }
}

/// (DTR, RTS) to set right after opening the port: GPIO0 and EN released, power at rest.
pub(crate) fn resting_levels(config: &UsbSerialConfig, power_at_exit: PowerAtExit) -> (bool, bool) {
    let rts = config
        .power_rts
        .is_some_and(|active| rts_for_power(active, power_at_exit.is_on()));
    (false, rts)
}

/// (DTR, RTS) asserted for EN held in reset and GPIO0 pressed, on the auto-reset circuit:
/// reset wins, since the circuit cannot pull both pins low at once.
fn straps(reset: bool, gpio0: bool) -> (bool, bool) {
    match (reset, gpio0) {
        (true, _) => (false, true),
        (false, pressed) => (pressed, false),
    }
}

/// The pins (EN low, GPIO0 low) that (DTR, RTS) asserted pull on the cross-coupled auto-reset
/// circuit: each transistor conducts only while its own line is asserted and the other is not.
#[cfg(test)]
fn pins(dtr: bool, rts: bool) -> (bool, bool) {
    (rts && !dtr, dtr && !rts)
}

/// DTR/RTS as [`Lines`].
#[derive(Debug)]
pub(crate) struct ModemLines {
    capture: Arc<Capture>,
    power_rts: Option<Level>,
    gpio0: bool,
    reset: bool,
}

impl ModemLines {
    pub(crate) fn new(capture: Arc<Capture>, power_rts: Option<Level>) -> Self {
        ModemLines {
            capture,
            power_rts,
            gpio0: false,
            reset: false,
        }
    }

    /// Sets DTR/RTS for the logical state (auto-reset mapping, see the module docs).
    fn apply_straps(&mut self) -> Result<(), RigError> {
        let (dtr, rts) = straps(self.reset, self.gpio0);
        // DTR first, as esptool does: the EN capacitor covers the microseconds in between.
        self.capture.set_dtr(dtr)?;
        self.capture.set_rts(rts)?;
        Ok(())
    }
}

impl Lines for ModemLines {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            power: self.power_rts.is_some(),
            gpio0: true,
            reset: self.power_rts.is_none(),
            ota: false,
        }
    }

    fn set_power(&mut self, on: bool) -> Result<(), RigError> {
        match self.power_rts {
            Some(active) => Ok(self.capture.set_rts(rts_for_power(active, on))?),
            None => Err(RigError::Unsupported {
                what: "switch power (usb-serial board without `power = { modem = \"rts\" }`)",
            }),
        }
    }

    fn set_gpio0(&mut self, pressed: bool) -> Result<(), RigError> {
        self.gpio0 = pressed;
        if self.power_rts.is_some() {
            // RTS is the power switch: DTR goes straight to GPIO0.
            return Ok(self.capture.set_dtr(pressed)?);
        }
        self.apply_straps()
    }

    fn set_reset(&mut self, asserted: bool) -> Result<(), RigError> {
        if self.power_rts.is_some() {
            return Err(RigError::Unsupported {
                what: "pulse EN (RTS switches power on this board)",
            });
        }
        self.reset = asserted;
        self.apply_straps()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn straps_map_to_the_pins_the_auto_reset_circuit_pulls() {
        // Released: neither pin pulled; GPIO0 pressed alone; reset alone or with GPIO0.
        assert_eq!(
            pins(straps(false, false).0, straps(false, false).1),
            (false, false)
        );
        assert_eq!(
            pins(straps(false, true).0, straps(false, true).1),
            (false, true)
        );
        assert_eq!(
            pins(straps(true, false).0, straps(true, false).1),
            (true, false)
        );
        assert_eq!(
            pins(straps(true, true).0, straps(true, true).1),
            (true, false)
        );
        // Entering download mode as the rig does it (GPIO0 pressed, reset pulsed, reset
        // released) goes from EN low straight to GPIO0 low with EN released: esptool's
        // classic reset, and the chip samples GPIO0 low as EN rises.
        let sequence: Vec<_> = [(false, true), (true, true), (false, true)]
            .iter()
            .map(|&(reset, gpio0)| {
                let (dtr, rts) = straps(reset, gpio0);
                pins(dtr, rts)
            })
            .collect();
        assert_eq!(sequence, [(false, true), (true, false), (false, true)]);
    }

    #[test]
    fn power_polarity_and_resting_levels() {
        assert!(rts_for_power(Level::Low, true));
        assert!(!rts_for_power(Level::Low, false));
        assert!(!rts_for_power(Level::High, true));
        let cfg = UsbSerialConfig {
            port: "/dev/ttyUSB0".into(),
            power_rts: Some(Level::Low),
        };
        assert_eq!(resting_levels(&cfg, PowerAtExit::On), (false, true));
        assert_eq!(resting_levels(&cfg, PowerAtExit::Off), (false, false));
        let cfg = UsbSerialConfig {
            port: "/dev/ttyUSB0".into(),
            power_rts: None,
        };
        assert_eq!(resting_levels(&cfg, PowerAtExit::On), (false, false));
    }
}
