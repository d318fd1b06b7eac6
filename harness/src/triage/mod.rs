//! Triage: from a parsed capture to one classified report with evidence and a remedy.
//!
//! L0: pure over a [`BootLog`]. The rules live in [`rules`], each with the sources it rests on;
//! the advice for each class lives in [`remedy`]. A device failure found here is data, never an
//! `Err`.

mod digest;
pub mod remedy;
mod render;
pub mod rules;

use std::fmt;

use serde::Serialize;

use crate::bootlog::{BootLog, BootSource, RstCause};

pub use render::{render_markdown, render_text};

/// What went wrong (or did not). The ids are stable: the public corpus and scenario files use
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// The board booted and its app runs.
    HealthyBoot,
    /// The first restart after a serial flash fell into UART download mode (latched straps).
    RestartAfterSerialFlash,
    /// The board was reset into the ROM serial loader (or SDIO) by its strapping pins.
    DownloadMode,
    /// eboot's copy of a staged OTA image did not complete.
    OtaCopyIncomplete,
    /// The image's flash mode or size does not fit the chip.
    FlashConfigMismatch,
    /// The ROM or eboot rejected the image in flash (checksum, unreadable).
    ChecksumError,
    /// The app crashed with an exception or another postmortem.
    ExceptionCrash,
    /// The software watchdog fired (loop blocked > ~3 s).
    SoftWdt,
    /// The hardware watchdog keeps resetting the board.
    HwWdtLoop,
    /// Resets that point at the supply (brown-out, power-on resets while running).
    BrownoutOrPower,
    /// The output is unreadable at the capture's baud rate.
    GarbageBaud,
    /// The app restarts over and over without a crash report.
    BootLoop,
    /// Nothing in the capture to judge (empty, or no boot and no app output).
    Inconclusive,
}

impl Class {
    /// All classes, in rule priority order.
    pub const ALL: [Class; 13] = [
        Class::RestartAfterSerialFlash,
        Class::OtaCopyIncomplete,
        Class::FlashConfigMismatch,
        Class::ChecksumError,
        Class::SoftWdt,
        Class::ExceptionCrash,
        Class::HwWdtLoop,
        Class::BrownoutOrPower,
        Class::BootLoop,
        Class::DownloadMode,
        Class::GarbageBaud,
        Class::HealthyBoot,
        Class::Inconclusive,
    ];

    /// The stable id (`healthy-boot`, ...).
    pub fn id(self) -> &'static str {
        match self {
            Class::HealthyBoot => "healthy-boot",
            Class::RestartAfterSerialFlash => "restart-after-serial-flash",
            Class::DownloadMode => "download-mode",
            Class::OtaCopyIncomplete => "ota-copy-incomplete",
            Class::FlashConfigMismatch => "flash-config-mismatch",
            Class::ChecksumError => "checksum-error",
            Class::ExceptionCrash => "exception-crash",
            Class::SoftWdt => "soft-wdt",
            Class::HwWdtLoop => "hw-wdt-loop",
            Class::BrownoutOrPower => "brownout-or-power",
            Class::GarbageBaud => "garbage-baud",
            Class::BootLoop => "boot-loop",
            Class::Inconclusive => "inconclusive",
        }
    }

    /// Whether this class means the board is fine.
    pub fn is_healthy(self) -> bool {
        self == Class::HealthyBoot
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl std::str::FromStr for Class {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Class::ALL
            .iter()
            .copied()
            .find(|c| c.id() == s)
            .ok_or_else(|| {
                let ids: Vec<_> = Class::ALL.iter().map(|c| c.id()).collect();
                format!(
                    "unknown triage class `{s}` (expected one of: {})",
                    ids.join(", ")
                )
            })
    }
}

/// How sure the rule is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// The log shows the documented signature.
    High,
    /// The signature fits but has other explanations.
    Medium,
    /// Little to go on.
    Low,
}

/// One line of the capture that supports the finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// 1-based line number.
    pub line: u64,
    /// The line.
    pub text: String,
}

/// Finer detail than the class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Details {
    /// The crash, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exception: Option<ExceptionDetail>,
    /// eboot's copy result (`cp:N`), when a copy was seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eboot_copy_result: Option<u8>,
    /// eboot's load error (`e:N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eboot_error: Option<u8>,
    /// Updater error code (`ERROR[n]`), when the firmware printed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updater_error: Option<u8>,
    /// The installed app's word at flash 0x1010 as eboot printed it (`vXXXXXXXX`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eboot_version: Option<String>,
    /// The reference firmware's last identity line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Free-form notes from the rule (why, what else could explain it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A decoded crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExceptionDetail {
    /// EXCCAUSE, or `None` for a postmortem without one (panic, abort, soft WDT).
    pub cause: Option<u8>,
    /// Its name (`LoadProhibited`) or the postmortem kind.
    pub name: String,
    /// Exception PC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epc1: Option<String>,
    /// Where the PC points (IRAM, flash, ROM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epc1_region: Option<&'static str>,
    /// Faulting address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excvaddr: Option<String>,
    /// `ctx:` of the stack dump (cont = sketch, sys = SDK).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Code addresses found in the stack dump (candidates for the exception decoder).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stack_code_addresses: Vec<String>,
}

/// One boot in the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootSummary {
    /// Position in the capture (0 = before the first banner).
    pub index: u64,
    /// First line.
    pub line: u64,
    /// ROM reset cause number and meaning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rst_cause: Option<String>,
    /// `boot mode:(X,Y)` and what X means.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<String>,
    /// The stages seen, e.g. `rom > eboot @cp:0 > app`.
    pub stages: String,
    /// How the boot ended.
    pub outcome: String,
}

/// The triage of one capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// What went wrong.
    pub class: Class,
    /// One line for people.
    pub summary: String,
    /// How sure.
    pub confidence: Confidence,
    /// What to do about it.
    pub remedy: String,
    /// The lines that show it.
    pub evidence: Vec<Evidence>,
    /// Finer detail.
    pub details: Details,
    /// The rule that decided, and where its facts come from.
    pub rule: &'static str,
    /// Sources of the rule.
    pub sources: Vec<&'static str>,
    /// Per-boot timeline (kept boots).
    pub boots: Vec<BootSummary>,
    /// Boots seen in all (the timeline may leave some out of a long capture).
    pub total_boots: u64,
    /// Lines in the capture.
    pub total_lines: u64,
    /// Bytes of garbage in the capture.
    pub garbage_bytes: u64,
}

/// Classifies a parsed capture.
pub fn triage(log: &BootLog) -> Report {
    let digests = digest::digest_all(log);
    let finding = rules::classify(log, &digests);
    let boots = digests.iter().map(digest::Digest::summary).collect();
    Report {
        class: finding.class,
        summary: finding.summary,
        confidence: finding.confidence,
        remedy: remedy::remedy(finding.class, &finding.details),
        evidence: finding.evidence,
        details: finding.details,
        rule: finding.rule,
        sources: finding.sources.to_vec(),
        boots,
        total_boots: log.totals.boots,
        total_lines: log.totals.lines,
        garbage_bytes: log.totals.garbage_bytes,
    }
}

/// Triage of raw capture bytes.
pub fn triage_bytes(bytes: &[u8]) -> Report {
    triage(&crate::bootlog::parse(bytes))
}

/// A short description of a boot's banner, for people.
pub(crate) fn describe_banner(cause: Option<RstCause>, source: Option<BootSource>) -> String {
    let cause = cause.map_or("unknown reset".to_string(), |c| {
        format!("rst cause {} ({})", c.code(), c.describe())
    });
    let mode = match source {
        Some(BootSource::Flash) => "flash boot",
        Some(BootSource::UartDownload) => "UART download mode",
        Some(BootSource::Sdio) => "SDIO mode",
        Some(BootSource::Invalid) => "invalid strapping",
        None => "boot mode unknown",
    };
    format!("{cause}, {mode}")
}
