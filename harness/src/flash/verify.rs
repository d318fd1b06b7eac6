//! Verifying a serial flash by booting it.
//!
//! The ESP8266 ROM loader can neither read flash back nor hash it (SPI_FLASH_MD5 and READ_FLASH
//! exist only in esptool's stub), so the harness checks a write the way a person would: it
//! reboots the board and waits for the firmware to announce itself. Reference firmware prints
//! its identity record (`HILFW app=.. version=.. ota=..`, [`Identity`]) at boot; the line must
//! equal the one embedded in the image that was written. esptool's stub-based `verify-flash`
//! (an MD5 of the flash region) is the deeper check where esptool is installed.
//!
//! Pure: lines in, a verdict out. The caller reads the lines from the capture.

use std::time::Duration;

use crate::image::Identity;
use crate::triage;

use super::FlashError;

/// Output kept for the triage of a boot that never announced itself.
const KEEP: usize = 64 * 1024;

/// Watches a board's output lines for its identity line.
#[derive(Debug, Clone)]
pub struct IdentityWatch {
    expected: Identity,
    seen: Vec<u8>,
    last_line: Option<String>,
}

impl IdentityWatch {
    /// Waits for `expected`.
    pub fn new(expected: Identity) -> Self {
        IdentityWatch {
            expected,
            seen: Vec::new(),
            last_line: None,
        }
    }

    /// The identity waited for.
    pub fn expected(&self) -> &Identity {
        &self.expected
    }

    /// Feeds one output line (line end optional). An identity line gives a verdict: `Ok` with
    /// the identity when it is the expected one, [`FlashError::VerifyMismatch`] otherwise.
    pub fn line(&mut self, text: &[u8]) -> Option<Result<Identity, FlashError>> {
        if self.seen.len() < KEEP {
            self.seen
                .extend_from_slice(&text[..text.len().min(KEEP - self.seen.len())]);
            self.seen.push(b'\n');
        }
        let line = String::from_utf8_lossy(text);
        let printable = line.trim().chars().filter(|c| !c.is_control()).count();
        if printable >= 3 && printable * 10 >= line.trim().chars().count() * 9 {
            self.last_line = Some(line.trim().chars().take(120).collect());
        }
        let got = Identity::parse_line(&line)?;
        Some(if got == self.expected {
            Ok(got)
        } else {
            Err(FlashError::VerifyMismatch {
                expected: Box::new(self.expected.clone()),
                got: Box::new(got),
            })
        })
    }

    /// The error for no identity line within `waited`: names what the output triages as.
    pub fn timed_out(&self, waited: Duration) -> FlashError {
        let seen = if self.seen.iter().all(u8::is_ascii_whitespace) {
            "nothing".to_string()
        } else {
            let report = triage::triage_bytes(&self.seen);
            let mut seen = format!("{}: {}", report.class, report.summary.trim_end_matches('.'));
            if let Some(last) = &self.last_line {
                seen.push_str(&format!("; last readable line `{last}`"));
            }
            seen
        };
        FlashError::VerifyTimeout {
            expected: Box::new(self.expected.clone()),
            waited,
            seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::OtaMethod;

    fn id(version: &str) -> Identity {
        Identity::new("sonoff-ota", version, OtaMethod::WebServer, None).unwrap()
    }

    #[test]
    fn matches_the_serial_form_of_the_identity_line() {
        let mut w = IdentityWatch::new(id("1.0.0"));
        assert!(
            w.line(b"ets Jan  8 2013,rst cause:1, boot mode:(3,7)")
                .is_none()
        );
        assert!(w.line(b"").is_none());
        let v = w
            .line(b"HILFW app=sonoff-ota version=1.0.0 ota=webserver state=RUN\r")
            .unwrap();
        assert_eq!(v.unwrap(), id("1.0.0"));
    }

    #[test]
    fn another_version_is_a_mismatch() {
        let mut w = IdentityWatch::new(id("2.0.0"));
        let err = w
            .line(b"HILFW app=sonoff-ota version=1.0.0 ota=webserver state=RUN")
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&err, FlashError::VerifyMismatch { got, .. } if **got == id("1.0.0")),
            "{err:?}"
        );
        assert!(err.is_dut_failure());
        assert!(
            err.to_string().contains("version=1.0.0")
                && err
                    .to_string()
                    .contains("expected `HILFW app=sonoff-ota version=2.0.0"),
            "{err}"
        );
    }

    #[test]
    fn a_timeout_says_what_the_board_printed() {
        let mut w = IdentityWatch::new(id("1.0.0"));
        let err = w.timed_out(Duration::from_secs(10));
        assert!(err.to_string().contains("printed: nothing"), "{err}");
        for _ in 0..3 {
            w.line(b"");
            w.line(b" ets Jan  8 2013,rst cause:4, boot mode:(3,6)");
            w.line(b"");
            w.line(b"wdt reset");
        }
        let err = w.timed_out(Duration::from_secs(10));
        let text = err.to_string();
        assert!(text.contains("no identity line within 10.0s"), "{text}");
        assert!(!text.contains("printed: nothing"), "{text}");
        assert!(text.contains("last readable line `wdt reset`"), "{text}");
    }
}
