//! The device clock: how device time (the firmware's `millis()`) maps to real time.
//!
//! `scale` is real seconds per device second. The default fast mode runs the board twenty
//! times faster than real ([`Clock::FAST`] = 0.05), so a 120 s UPDATE timeout takes 6 s; with
//! `--realistic-timing` device time is real time ([`Clock::REALISTIC`]); `--time-scale X` picks
//! any other factor. Every timed behaviour of the board (button debounce, watchdogs, eboot's
//! copy, the OTA libraries' delays) is expressed in device time and converted here, so the order
//! of events is the same at every scale.

use std::time::{Duration, Instant};

/// Device time against real time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    scale: f64,
    origin: Instant,
}

/// Smallest accepted scale (device time 10 000 times faster than real).
pub const MIN_SCALE: f64 = 1e-4;
/// Largest accepted scale (device time 100 times slower than real).
pub const MAX_SCALE: f64 = 100.0;

impl Clock {
    /// Fast mode: 0.05 real seconds per device second.
    pub const FAST: f64 = 0.05;
    /// Realistic timing: device time is real time.
    pub const REALISTIC: f64 = 1.0;

    /// A clock whose device time starts now; `None` unless `scale` is finite and within
    /// [`MIN_SCALE`]..=[`MAX_SCALE`].
    pub fn new(scale: f64) -> Option<Clock> {
        (scale.is_finite() && (MIN_SCALE..=MAX_SCALE).contains(&scale)).then(|| Clock {
            scale,
            origin: Instant::now(),
        })
    }

    /// Real seconds per device second.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The real duration of a device duration.
    pub fn real(&self, device: Duration) -> Duration {
        device.mul_f64(self.scale)
    }

    /// The device duration of a real duration.
    pub fn device(&self, real: Duration) -> Duration {
        real.div_f64(self.scale)
    }

    /// Device time since the clock started.
    pub fn now(&self) -> Duration {
        self.device(self.origin.elapsed())
    }

    /// Stops device time for `real`: what would have happened in that time happens later.
    pub fn pause(&mut self, real: Duration) {
        self.origin += real;
    }

    /// The real instant at which the device clock reads `device`.
    pub fn instant_at(&self, device: Duration) -> Instant {
        self.origin + self.real(device)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            scale: Clock::FAST,
            origin: Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_both_ways() {
        let c = Clock::new(0.05).unwrap();
        assert_eq!(c.real(Duration::from_secs(120)), Duration::from_secs(6));
        assert_eq!(c.device(Duration::from_secs(6)), Duration::from_secs(120));
        let r = Clock::new(Clock::REALISTIC).unwrap();
        assert_eq!(
            r.real(Duration::from_millis(250)),
            Duration::from_millis(250)
        );
        assert!(
            c.instant_at(Duration::from_secs(20)) >= Instant::now() + Duration::from_millis(900)
        );
    }

    #[test]
    fn rejects_unusable_scales() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-9, 1000.0] {
            assert!(Clock::new(bad).is_none(), "{bad}");
        }
        assert_eq!(Clock::default().scale(), Clock::FAST);
    }
}
