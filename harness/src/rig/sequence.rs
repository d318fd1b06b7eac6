//! Reset sequences over any [`Lines`]: the same for relays, DTR/RTS and the simulator, the way
//! espflash's reset strategies work for any port.
//!
//! The order comes from hardware.md "Flashing sequence": the straps (GPIO0, GPIO15, GPIO2) are
//! latched only at power-on or an external reset, so GPIO0 must be low *before* power comes
//! and may be released once the ROM has printed `boot mode:(1,x)`. Leaving download mode needs a
//! real power cycle (or RST pulse) with GPIO0 released; a soft restart keeps the latched mode
//! (failure-modes.md A).

use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use crate::bootlog::{Banner, Event};
use crate::capture::{CaptureEvent, IndexEvent, Subscription};

use super::{Lines, RigError, TimeScale};

/// Off time of a power cycle: long enough for the 3.3 V rail and the chip to reset
/// (hardware.md: allow >= 200 ms).
pub const POWER_OFF_TIME: Duration = Duration::from_millis(200);
/// Time after power-on before GPIO0 may be released when no banner is seen (hardware.md: about
/// 100 ms).
pub const SETTLE_TIME: Duration = Duration::from_millis(100);
/// How long to wait for the ROM banner after power-on. The ROM prints it within a few
/// milliseconds; the margin covers slow supplies and USB latency.
pub const BANNER_TIMEOUT: Duration = Duration::from_secs(1);
/// Low time of an RST/EN pulse (the chip needs far less; relays and RC filters need more).
pub const RESET_PULSE: Duration = Duration::from_millis(50);

/// Device-time durations of the sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetTiming {
    /// Power off time.
    pub power_off: Duration,
    /// Minimum time from power-on to GPIO0 release.
    pub settle: Duration,
    /// Longest wait for the banner.
    pub banner_timeout: Duration,
    /// RST/EN pulse length.
    pub reset_pulse: Duration,
}

impl Default for ResetTiming {
    fn default() -> Self {
        ResetTiming {
            power_off: POWER_OFF_TIME,
            settle: SETTLE_TIME,
            banner_timeout: BANNER_TIMEOUT,
            reset_pulse: RESET_PULSE,
        }
    }
}

/// Puts the board into the ROM serial loader: power off, GPIO0 held low, power on (or an RST
/// pulse when power is not switched), then GPIO0 released as soon as `banner` reports the ROM
/// banner, or after [`ResetTiming::banner_timeout`]. `banner` waits up to the real duration it
/// is given and returns the banner it saw. Returns that banner.
pub fn enter_download_mode(
    lines: &mut dyn Lines,
    timing: &ResetTiming,
    scale: TimeScale,
    banner: &mut dyn FnMut(Duration) -> Option<Banner>,
) -> Result<Option<Banner>, RigError> {
    let caps = lines.capabilities();
    if !caps.gpio0 {
        return Err(RigError::Unsupported {
            what: "hold GPIO0 low (no GPIO0 line wired)",
        });
    }
    if !caps.power && !caps.reset {
        return Err(RigError::Unsupported {
            what: "reset the board (no power switch or reset line)",
        });
    }
    let result = (|| -> Result<Option<Banner>, RigError> {
        let on_at = if caps.power {
            lines.set_power(false)?;
            lines.set_gpio0(true)?;
            scale.sleep(timing.power_off);
            lines.set_power(true)?;
            Instant::now()
        } else {
            lines.set_reset(true)?;
            lines.set_gpio0(true)?;
            scale.sleep(timing.reset_pulse);
            lines.set_reset(false)?;
            Instant::now()
        };
        let seen = banner(scale.real(timing.banner_timeout));
        if let Some(rest) = scale.real(timing.settle).checked_sub(on_at.elapsed()) {
            std::thread::sleep(rest);
        }
        Ok(seen)
    })();
    // Released on the error path too: a held button must not outlive a failed sequence.
    let released = lines.set_gpio0(false);
    let seen = result?;
    released?;
    Ok(seen)
}

/// Boots the board from flash: power off for [`ResetTiming::power_off`] with GPIO0 released,
/// power on (or an RST pulse when power is not switched). This also clears a boot mode latched
/// by download mode, which a soft restart does not.
pub fn power_cycle_run(
    lines: &mut dyn Lines,
    timing: &ResetTiming,
    scale: TimeScale,
) -> Result<(), RigError> {
    let caps = lines.capabilities();
    if caps.power {
        lines.set_power(false)?;
        if caps.gpio0 {
            lines.set_gpio0(false)?;
        }
        scale.sleep(timing.power_off);
        lines.set_power(true)
    } else if caps.reset {
        if caps.gpio0 {
            lines.set_gpio0(false)?;
        }
        lines.set_reset(true)?;
        scale.sleep(timing.reset_pulse);
        lines.set_reset(false)
    } else {
        Err(RigError::Unsupported {
            what: "power-cycle the board (no power switch or reset line)",
        })
    }
}

/// Waits up to `timeout` for the first ROM banner after the next power-on or reset release
/// that the rig notes in the capture (`sub` must be subscribed before that). Banners still
/// arriving from an earlier boot are skipped.
pub fn wait_banner(sub: &Subscription, timeout: Duration) -> Option<Banner> {
    let deadline = Instant::now() + timeout;
    let mut restarted = false;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match sub.recv_timeout(left) {
            Ok(CaptureEvent::Index(r)) => {
                if matches!(
                    r.event,
                    IndexEvent::Power { on: true } | IndexEvent::Reset { asserted: false }
                ) {
                    restarted = true;
                }
            }
            Ok(CaptureEvent::Line { events, .. }) if restarted => {
                if let Some(b) = events.iter().find_map(|e| match e {
                    Event::RomBanner(b) => Some(*b),
                    _ => None,
                }) {
                    return Some(b);
                }
            }
            Ok(CaptureEvent::Line { .. }) => {}
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rig::Capabilities;

    /// Lines that record what was done.
    #[derive(Default)]
    struct Recorder {
        caps: Capabilities,
        log: Vec<String>,
        fail_power_on: bool,
    }

    impl Lines for Recorder {
        fn capabilities(&self) -> Capabilities {
            self.caps
        }
        fn set_power(&mut self, on: bool) -> Result<(), RigError> {
            self.log
                .push(format!("power {}", if on { "on" } else { "off" }));
            if on && self.fail_power_on {
                return Err(RigError::Unsupported { what: "test" });
            }
            Ok(())
        }
        fn set_gpio0(&mut self, pressed: bool) -> Result<(), RigError> {
            self.log.push(format!(
                "gpio0 {}",
                if pressed { "pressed" } else { "released" }
            ));
            Ok(())
        }
        fn set_reset(&mut self, asserted: bool) -> Result<(), RigError> {
            self.log.push(format!(
                "reset {}",
                if asserted { "asserted" } else { "released" }
            ));
            Ok(())
        }
    }

    const FAST: TimeScale = TimeScale(0.001);

    fn all() -> Capabilities {
        Capabilities {
            power: true,
            gpio0: true,
            reset: true,
            ota: false,
        }
    }

    #[test]
    fn download_mode_holds_gpio0_across_power_on() {
        let mut r = Recorder {
            caps: all(),
            ..Default::default()
        };
        let banner = Banner {
            rst_cause: None,
            boot_mode: None,
        };
        let mut asked = None;
        let seen = enter_download_mode(&mut r, &ResetTiming::default(), FAST, &mut |t| {
            asked = Some(t);
            Some(banner)
        })
        .unwrap();
        assert_eq!(seen, Some(banner));
        assert_eq!(
            asked,
            Some(Duration::from_millis(1)),
            "banner wait is scaled"
        );
        assert_eq!(
            r.log,
            ["power off", "gpio0 pressed", "power on", "gpio0 released"]
        );
    }

    #[test]
    fn download_mode_with_only_a_reset_line() {
        let mut r = Recorder {
            caps: Capabilities {
                power: false,
                ..all()
            },
            ..Default::default()
        };
        enter_download_mode(&mut r, &ResetTiming::default(), FAST, &mut |_| None).unwrap();
        assert_eq!(
            r.log,
            [
                "reset asserted",
                "gpio0 pressed",
                "reset released",
                "gpio0 released"
            ]
        );
    }

    #[test]
    fn failed_sequence_still_releases_gpio0() {
        let mut r = Recorder {
            caps: all(),
            fail_power_on: true,
            ..Default::default()
        };
        assert!(enter_download_mode(&mut r, &ResetTiming::default(), FAST, &mut |_| None).is_err());
        assert_eq!(r.log.last().unwrap(), "gpio0 released");
    }

    #[test]
    fn run_cycle_releases_gpio0_while_off() {
        let mut r = Recorder {
            caps: all(),
            ..Default::default()
        };
        power_cycle_run(&mut r, &ResetTiming::default(), FAST).unwrap();
        assert_eq!(r.log, ["power off", "gpio0 released", "power on"]);
        let mut none = Recorder::default();
        assert!(matches!(
            power_cycle_run(&mut none, &ResetTiming::default(), FAST),
            Err(RigError::Unsupported { .. })
        ));
        assert!(matches!(
            enter_download_mode(&mut none, &ResetTiming::default(), FAST, &mut |_| None),
            Err(RigError::Unsupported { .. })
        ));
    }
}
