//! The identity record: which reference firmware an image is, and what it prints at boot.
//!
//! The reference firmware embeds one ASCII line in `.rodata`, NUL-terminated:
//!
//! ```text
//! HILFW app=sonoff-ota version=1.0.0 ota=webserver fault=wdt-loop
//! ```
//!
//! and prints the same line on its serial port at boot, followed by ` state=RUN`. Both are read
//! by [`Identity::parse_line`], so an image on disk and a board on the bench can be compared
//! with `==`. Words are `key=value`, separated by single spaces; `app`, `version` and `ota` are
//! required, `fault`, `core` and `password` are optional, and keys this version does not know
//! (such as `state`) are ignored so that older harnesses still recognise newer firmware.
//!
//! - `core=2.3.0`: the esp8266/Arduino core the image stands for; absent means
//!   [`DEFAULT_CORE`]. The simulator picks the Updater's behaviour from it and `harness image
//!   make` writes the word at flash 0x1010 the way that core does.
//! - `password=secret`: the build-time OTA password (`SMN_OTA_PASSWORD`) in plain text. A
//!   convenience of test images only, so the virtual board knows the password its firmware was
//!   built with; a real build never carries its password in such a record.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::ImageError;
use crate::firmware::OtaMethod;

/// The word every identity line starts with.
pub const IDENTITY_TAG: &str = "HILFW";
/// Longest identity record [`Identity::find`] will read before giving up on a NUL.
pub const IDENTITY_MAX_LEN: usize = 256;
/// Longest `app` or `version` value.
const VALUE_MAX_LEN: usize = 64;
/// The core version an identity without `core=` stands for (what the reference firmware
/// targets).
pub const DEFAULT_CORE: &str = "3.1.2";

/// A deliberate misbehaviour built into a reference firmware, to test triage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// `crash-on-boot`: an Exception 28 (load from a bad pointer) postmortem right at boot.
    CrashOnBoot,
    /// `wdt-loop`: blocks with interrupts off until the hardware WDT resets it, every boot.
    WdtLoop,
    /// `soft-wdt`: blocks `loop()` until the `Soft WDT reset` postmortem.
    SoftWdt,
    /// `hang-after-ota`: runs normally, but hangs on the first boot after an OTA update.
    HangAfterOta,
    /// `no-ota`: never starts its OTA service (uploads are refused or time out).
    NoOta,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 5] = [
        Fault::CrashOnBoot,
        Fault::WdtLoop,
        Fault::SoftWdt,
        Fault::HangAfterOta,
        Fault::NoOta,
    ];

    /// The name used in the identity line and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::CrashOnBoot => "crash-on-boot",
            Fault::WdtLoop => "wdt-loop",
            Fault::SoftWdt => "soft-wdt",
            Fault::HangAfterOta => "hang-after-ota",
            Fault::NoOta => "no-ota",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| ImageError::UnknownFault {
                name: s.to_string(),
            })
    }
}

/// Which reference firmware this is: app name, version, OTA method, built-in fault.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Identity {
    app: String,
    version: String,
    ota: OtaMethod,
    fault: Option<Fault>,
    #[serde(skip_serializing_if = "Option::is_none")]
    core: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

impl Identity {
    /// An identity; `app` and `version` must be 1..=64 printable ASCII characters without
    /// spaces or `=` (they become `key=value` words).
    pub fn new(
        app: &str,
        version: &str,
        ota: OtaMethod,
        fault: Option<Fault>,
    ) -> Result<Identity, ImageError> {
        for (key, value) in [("app", app), ("version", version)] {
            if !valid_value(value) {
                return Err(ImageError::BadIdentityValue {
                    key,
                    value: value.to_string(),
                });
            }
        }
        Ok(Identity {
            app: app.to_string(),
            version: version.to_string(),
            ota,
            fault,
            core: None,
            password: None,
        })
    }

    /// The same identity for another core version (`MAJOR.MINOR.PATCH`, as `2.3.0`);
    /// [`DEFAULT_CORE`] is not recorded.
    pub fn with_core(mut self, core: &str) -> Result<Identity, ImageError> {
        if !valid_value(core) || parse_core_version(core).is_none() {
            return Err(ImageError::BadCoreVersion {
                value: core.to_string(),
            });
        }
        self.core = (core != DEFAULT_CORE).then(|| core.to_string());
        Ok(self)
    }

    /// The same identity with a build-time OTA password (same character rules as `app`).
    pub fn with_password(mut self, password: &str) -> Result<Identity, ImageError> {
        if !valid_value(password) {
            return Err(ImageError::BadIdentityValue {
                key: "password",
                value: password.to_string(),
            });
        }
        self.password = Some(password.to_string());
        Ok(self)
    }

    /// Application name (`sonoff-ota`).
    pub fn app(&self) -> &str {
        &self.app
    }

    /// Version string (`1.0.0`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// OTA method.
    pub fn ota(&self) -> OtaMethod {
        self.ota
    }

    /// The built-in fault, if any.
    pub fn fault(&self) -> Option<Fault> {
        self.fault
    }

    /// The core version the image stands for ([`DEFAULT_CORE`] unless recorded).
    pub fn core(&self) -> &str {
        self.core.as_deref().unwrap_or(DEFAULT_CORE)
    }

    /// The build-time OTA password, if the record carries one.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The record as embedded in the image (without the NUL): `HILFW app=.. version=.. ota=..`.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{IDENTITY_TAG} app={} version={} ota={}",
            self.app, self.version, self.ota
        );
        if let Some(fault) = self.fault {
            line.push_str(" fault=");
            line.push_str(fault.name());
        }
        if let Some(core) = &self.core {
            line.push_str(" core=");
            line.push_str(core);
        }
        if let Some(password) = &self.password {
            line.push_str(" password=");
            line.push_str(password);
        }
        line
    }

    /// Parses an identity line from text: the embedded record or a serial line.
    ///
    /// The record may start anywhere in `line` (a serial line can carry baud-rate garbage in
    /// front); it runs to the end of the line, ignoring trailing `\r`, `\n` and NUL. Returns
    /// `None` unless every word is `key=value`, the required keys are there exactly once and
    /// `ota`/`fault` name known values.
    pub fn parse_line(line: &str) -> Option<Identity> {
        let mut app = None;
        let mut version = None;
        let mut ota = None;
        let mut fault = None;
        let mut core = None;
        let mut password = None;
        for (key, value) in words(line)? {
            let slot = match key {
                "app" => &mut app,
                "version" => &mut version,
                "ota" => &mut ota,
                "fault" => &mut fault,
                "core" => &mut core,
                "password" => &mut password,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return None;
            }
        }
        let ota = ota?.parse().ok()?;
        let fault = match fault {
            Some(f) => Some(f.parse().ok()?),
            None => None,
        };
        let mut identity = Identity::new(app?, version?, ota, fault).ok()?;
        if let Some(core) = core {
            identity = identity.with_core(core).ok()?;
        }
        if let Some(password) = password {
            identity = identity.with_password(password).ok()?;
        }
        Some(identity)
    }

    /// The value of `key` in an identity line (for keys [`Identity`] ignores, like `state`).
    ///
    /// `Identity::field("HILFW app=a version=1 ota=arduino state=RUN", "state") == Some("RUN")`.
    pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
        words(line)?
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Finds the first valid NUL-terminated identity record anywhere in `bytes`.
    pub fn find(bytes: &[u8]) -> Option<Identity> {
        let tag = IDENTITY_TAG.as_bytes();
        memchr::memmem::find_iter(bytes, tag).find_map(|at| {
            let rest = &bytes[at..bytes.len().min(at + IDENTITY_MAX_LEN)];
            let end = memchr::memchr(0, rest)?;
            let text = std::str::from_utf8(&rest[..end]).ok()?;
            // The embedded record is exactly the line: nothing before the tag, no line breaks.
            if text.contains(['\r', '\n']) {
                return None;
            }
            Identity::parse_line(text)
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line())
    }
}

/// Splits `2.3.0` (or `2.4.0-rc2`) into its three numbers.
pub fn parse_core_version(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.splitn(3, '.');
    let mut number = |last: bool| -> Option<u32> {
        let part = parts.next()?;
        let digits = if last {
            part.split_once('-').map_or(part, |(d, _)| d)
        } else {
            part
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 4 {
            return None;
        }
        digits.parse().ok()
    };
    let major = number(false)?;
    let minor = number(false)?;
    let patch = number(true)?;
    Some((major, minor, patch))
}

fn valid_value(value: &str) -> bool {
    (1..=VALUE_MAX_LEN).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_graphic() && b != b'=')
}

/// Splits the record in `line` into `(key, value)` words; `None` if it is not a record.
fn words(line: &str) -> Option<Vec<(&str, &str)>> {
    let start = find_tag(line)?;
    let record = line[start..].trim_end_matches(['\r', '\n', '\0']);
    let mut parts = record.split(' ');
    if parts.next() != Some(IDENTITY_TAG) {
        return None;
    }
    parts
        .map(|word| {
            let (k, v) = word.split_once('=')?;
            (!k.is_empty() && valid_value(v) && k.bytes().all(|b| b.is_ascii_graphic()))
                .then_some((k, v))
        })
        .collect()
}

/// Start of the first `HILFW` that is followed by a space.
fn find_tag(line: &str) -> Option<usize> {
    line.match_indices(IDENTITY_TAG)
        .map(|(i, _)| i)
        .find(|&i| line.as_bytes().get(i + IDENTITY_TAG.len()) == Some(&b' '))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(fault: Option<Fault>) -> Identity {
        Identity::new("sonoff-ota", "1.0.0", OtaMethod::WebServer, fault).unwrap()
    }

    #[test]
    fn line_round_trips() {
        let id = ident(Some(Fault::WdtLoop));
        assert_eq!(
            id.line(),
            "HILFW app=sonoff-ota version=1.0.0 ota=webserver fault=wdt-loop"
        );
        assert_eq!(Identity::parse_line(&id.line()), Some(id));
        let plain = ident(None);
        assert_eq!(
            plain.line(),
            "HILFW app=sonoff-ota version=1.0.0 ota=webserver"
        );
        assert_eq!(Identity::parse_line(&plain.line()), Some(plain));
    }

    #[test]
    fn core_and_password_are_optional_words() {
        let id = ident(Some(Fault::NoOta))
            .with_core("2.3.0")
            .unwrap()
            .with_password("s3cret")
            .unwrap();
        assert_eq!(
            id.line(),
            "HILFW app=sonoff-ota version=1.0.0 ota=webserver fault=no-ota core=2.3.0 password=s3cret"
        );
        assert_eq!(Identity::parse_line(&id.line()), Some(id.clone()));
        assert_eq!((id.core(), id.password()), ("2.3.0", Some("s3cret")));
        // The default core is not recorded, so older records stay byte-identical.
        let plain = ident(None).with_core(DEFAULT_CORE).unwrap();
        assert_eq!(plain, ident(None));
        assert_eq!(plain.core(), "3.1.2");
        assert_eq!(plain.password(), None);
        for bad in ["2.3", "two", "2.3.0 x"] {
            assert!(ident(None).with_core(bad).is_err(), "{bad}");
        }
        assert!(ident(None).with_password("a b").is_err());
        assert_eq!(
            Identity::parse_line("HILFW app=a version=1 ota=arduino core=banana"),
            None
        );
    }

    #[test]
    fn serial_line_with_state_and_garbage_parses_to_the_same_identity() {
        let serial =
            "\u{fffd}\u{fffd}) HILFW app=sonoff-ota version=1.0.0 ota=webserver state=RUN\r\n";
        assert_eq!(Identity::parse_line(serial), Some(ident(None)));
        assert_eq!(Identity::field(serial, "state"), Some("RUN"));
        assert_eq!(Identity::field(serial, "missing"), None);
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "",
            "HILFW",
            "HILFWX app=a version=1 ota=arduino",
            "HILFW app=a version=1",
            "HILFW app=a version=1 ota=serial",
            "HILFW app=a version=1 ota=arduino fault=explode",
            "HILFW app=a  version=1 ota=arduino",
            "HILFW app=a version=1 ota=arduino junk",
            "HILFW app=a app=b version=1 ota=arduino",
            "HILFW app= version=1 ota=arduino",
        ] {
            assert_eq!(Identity::parse_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn find_reads_a_nul_terminated_record() {
        let mut bytes = b"\x01\x02HILFW junk\0".to_vec();
        bytes.extend_from_slice(ident(Some(Fault::NoOta)).line().as_bytes());
        bytes.extend_from_slice(b"\0\xFF\xFF");
        assert_eq!(Identity::find(&bytes), Some(ident(Some(Fault::NoOta))));
        // No terminator within reach: not a record.
        let unterminated = ident(None).line().into_bytes();
        assert_eq!(Identity::find(&unterminated), None);
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(
            "explode".parse::<Fault>(),
            Err(ImageError::UnknownFault {
                name: "explode".into()
            })
        );
        for f in Fault::ALL {
            assert_eq!(f.name().parse::<Fault>(), Ok(f));
        }
        assert!(Identity::new("has space", "1", OtaMethod::Arduino, None).is_err());
        assert!(Identity::new("a", "v=1", OtaMethod::Arduino, None).is_err());
        assert!(Identity::new("a", &"9".repeat(65), OtaMethod::Arduino, None).is_err());
    }
}
