//! The triage rules, in priority order, each with the facts it rests on.
//!
//! Every rule looks at all kept boots of a capture; the first rule that fires decides the
//! class. The order puts root causes before their symptoms: an interrupted eboot copy explains
//! the boot loop that follows it, a soft WDT dump also prints `Exception (4)`, and so on.
//! Rules use only what the log shows (documented signatures), never one known file.
//!
//! Sources are the project's fact sheets (`docs/boot-log.md`, `docs/failure-modes.md` in the
//! shared docs), which cite esp8266/Arduino's eboot.c, Updater.cpp, core_esp8266_postmortem.cpp
//! and the issues named below.

use crate::bootlog::{BootLog, BootSource, PostmortemKind, Record, RstCause};

use super::digest::{Crash, CrashKind, Digest, code_region, exception_name};
use super::{Class, Confidence, Details, Evidence, ExceptionDetail};

/// The outcome of the rule that fired.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The class.
    pub class: Class,
    /// One line for people.
    pub summary: String,
    /// How sure.
    pub confidence: Confidence,
    /// Supporting lines.
    pub evidence: Vec<Evidence>,
    /// Finer detail.
    pub details: Details,
    /// Rule id.
    pub rule: &'static str,
    /// Sources.
    pub sources: &'static [&'static str],
}

/// A rule: its id, the sources it rests on, and the check.
pub struct Rule {
    /// Stable id, shown in reports.
    pub id: &'static str,
    /// The class it assigns.
    pub class: Class,
    /// Where the facts come from.
    pub sources: &'static [&'static str],
    check: for<'a> fn(&Ctx<'a>) -> Option<Partial<'a>>,
}

/// What a check returns; the rule fills in class, id and sources.
struct Partial<'a> {
    summary: String,
    confidence: Confidence,
    evidence: Vec<&'a Record>,
    details: Details,
}

/// Most evidence lines shown.
const MAX_EVIDENCE: usize = 12;

struct Ctx<'a> {
    log: &'a BootLog,
    boots: &'a [Digest<'a>],
}

impl<'a> Ctx<'a> {
    /// The boot before `i`, if it was kept and directly precedes it.
    fn prev(&self, i: usize) -> Option<&'a Digest<'a>> {
        let prev = self.boots.get(i.checked_sub(1)?)?;
        (prev.boot.index + 1 == self.boots[i].boot.index).then_some(prev)
    }

    fn next(&self, i: usize) -> Option<&'a Digest<'a>> {
        let next = self.boots.get(i + 1)?;
        (next.boot.index == self.boots[i].boot.index + 1).then_some(next)
    }

    /// The first of the download-mode boots that run up to boot `i` (the watchdog resets the
    /// chip in download mode again and again; the straps stay latched).
    fn first_of_download_run(&self, mut i: usize) -> usize {
        while let Some(p) = self.prev(i)
            && p.banner.is_some()
            && p.source() == Some(BootSource::UartDownload)
        {
            i -= 1;
        }
        i
    }

    /// The boot that ends the download-mode boots running from boot `i` (a reset by hand
    /// or a power cycle), if the capture holds it.
    fn after_download_run(&self, mut i: usize) -> Option<&'a Digest<'a>> {
        loop {
            let next = self.next(i)?;
            if next.banner.is_some() && next.source() == Some(BootSource::UartDownload) {
                i += 1;
            } else {
                return Some(next);
            }
        }
    }

    fn banner_boots(&self) -> impl Iterator<Item = (usize, &'a Digest<'a>)> {
        self.boots
            .iter()
            .enumerate()
            .filter(|(_, d)| d.banner.is_some())
    }
}

/// The rules, in priority order.
pub const RULES: &[Rule] = &[
    Rule {
        id: "download-mode-after-restart",
        class: Class::RestartAfterSerialFlash,
        sources: &[
            "failure-modes.md A; boot-log.md §2 latching, §5",
            "https://github.com/esp8266/Arduino/issues/1017",
            "https://github.com/esp8266/Arduino/issues/1722",
        ],
        check: restart_after_serial_flash,
    },
    Rule {
        id: "eboot-copy-unfinished",
        class: Class::OtaCopyIncomplete,
        sources: &[
            "failure-modes.md B",
            "boot-log.md §4 (bootloaders/eboot/eboot.c)",
        ],
        check: ota_copy_incomplete,
    },
    Rule {
        id: "flash-unreadable-in-header-mode",
        class: Class::FlashConfigMismatch,
        sources: &[
            "failure-modes.md C, D",
            "https://docs.espressif.com/projects/esptool/en/latest/esp8266/esptool/flash-modes.html",
            "Updater.cpp errors 8/9 (protocols.md §C)",
        ],
        check: flash_config_mismatch,
    },
    Rule {
        id: "image-checksum-or-load-error",
        class: Class::ChecksumError,
        sources: &["boot-log.md §3 (chksum/csum, flash read err), §4 (e:N)"],
        check: checksum_error,
    },
    Rule {
        id: "soft-wdt-dump",
        class: Class::SoftWdt,
        sources: &[
            "boot-log.md §6 (core_esp8266_postmortem.cpp)",
            "failure-modes.md G",
        ],
        check: soft_wdt,
    },
    Rule {
        id: "exception-dump",
        class: Class::ExceptionCrash,
        sources: &["boot-log.md §6, §7", "failure-modes.md G"],
        check: exception_crash,
    },
    Rule {
        id: "hardware-watchdog-reset",
        class: Class::HwWdtLoop,
        sources: &["boot-log.md §2 (rst cause 4), §5, §6", "failure-modes.md G"],
        check: hw_wdt_loop,
    },
    Rule {
        id: "unexplained-power-on-resets",
        class: Class::BrownoutOrPower,
        sources: &["failure-modes.md F", "hardware.md (power caveats)"],
        check: brownout,
    },
    Rule {
        id: "unexplained-warm-resets",
        class: Class::BootLoop,
        sources: &["boot-log.md §2 (rst cause 2/3)", "failure-modes.md G"],
        check: boot_loop,
    },
    Rule {
        id: "strapped-for-download",
        class: Class::DownloadMode,
        sources: &[
            "boot-log.md §2 boot mode X",
            "hardware.md (entering the ROM bootloader)",
        ],
        check: download_mode,
    },
    Rule {
        id: "unreadable-at-capture-baud",
        class: Class::GarbageBaud,
        sources: &["boot-log.md §1"],
        check: garbage_baud,
    },
    Rule {
        id: "boot-reached-app",
        class: Class::HealthyBoot,
        sources: &["boot-log.md §3, §4"],
        check: healthy,
    },
];

/// Runs the rules over a capture's boots.
pub(crate) fn classify(log: &BootLog, boots: &[Digest<'_>]) -> Finding {
    let ctx = Ctx { log, boots };
    for rule in RULES {
        if let Some(p) = (rule.check)(&ctx) {
            let mut evidence: Vec<Evidence> = Vec::new();
            for r in p.evidence {
                if evidence.len() == MAX_EVIDENCE {
                    break;
                }
                if !evidence
                    .iter()
                    .any(|e| e.line == r.line && e.text == r.text)
                {
                    evidence.push(Evidence {
                        line: r.line,
                        text: r.text.clone(),
                    });
                }
            }
            evidence.sort_by_key(|e| e.line);
            let mut details = p.details;
            fill_common_details(boots, &mut details);
            if matches!(rule.class, Class::SoftWdt | Class::ExceptionCrash)
                && let Some(r) = latched_download_restart(&ctx)
            {
                details.notes.push(format!(
                    "Line {}: a restart then landed in the ROM's download mode (boot mode:(1,x)): \
                     the straps were still latched from a serial upload. Power-cycle the board \
                     after flashing over serial.",
                    r.line
                ));
            }
            return Finding {
                class: rule.class,
                summary: p.summary,
                confidence: p.confidence,
                evidence,
                details,
                rule: rule.id,
                sources: rule.sources,
            };
        }
    }
    // Say how far the last boot got, so that the summary agrees with the boot list.
    let last = boots.iter().rev().find(|d| d.banner.is_some());
    let summary = match last {
        Some(d) => format!(
            "The last boot got as far as `{}` and the capture shows nothing after it: no fault, \
             and no app output to judge (the capture ended, the app prints at another baud \
             rate, or the boot hung there).",
            d.summary().stages
        ),
        None => "The capture holds no boot, no crash and no readable app output.".into(),
    };
    Finding {
        class: Class::Inconclusive,
        summary,
        confidence: Confidence::Low,
        evidence: last
            .and_then(|d| d.banner)
            .map(|r| Evidence {
                line: r.line,
                text: r.text.clone(),
            })
            .into_iter()
            .collect(),
        details: Details::default(),
        rule: "nothing-to-judge",
        sources: &[],
    }
}

/// A software or watchdog restart that landed in download mode (failure-modes A): the banner
/// of the first one.
fn latched_download_restart<'a>(ctx: &Ctx<'a>) -> Option<&'a Record> {
    ctx.banner_boots().find_map(|(i, d)| {
        let latched = d.source() == Some(BootSource::UartDownload)
            && (d.wdt_reset.is_some()
                || matches!(d.cause(), Some(RstCause::Watchdog | RstCause::Software))
                || ctx
                    .prev(i)
                    .is_some_and(|p| p.crash.is_some() || p.announced_restart().is_some()));
        latched.then_some(d.banner).flatten()
    })
}

fn fill_common_details(boots: &[Digest<'_>], details: &mut Details) {
    if details.eboot_version.is_none() {
        details.eboot_version = boots
            .iter()
            .rev()
            .find_map(|d| d.eboot_version)
            .map(|(v, _)| format!("v{v:08x}"));
    }
    if details.identity.is_none() {
        details.identity = boots
            .iter()
            .rev()
            .find_map(|d| d.identity)
            .map(|r| r.text.clone());
    }
    if details.updater_error.is_none() {
        details.updater_error = boots
            .iter()
            .rev()
            .find_map(|d| d.updater_error)
            .map(|(c, _)| c);
    }
}

fn partial(summary: String, confidence: Confidence, evidence: Vec<&Record>) -> Option<Partial<'_>> {
    Some(Partial {
        summary,
        confidence,
        evidence,
        details: Details::default(),
    })
}

/// failure-modes A: the straps are latched only by power-on or external reset, so after a
/// serial upload the first software restart lands in UART download mode (X=1), where the
/// still-armed watchdog fires once (`rst cause:4 ... wdt reset`). A download-mode boot is
/// this fault when the watchdog fired in it (a board reset into download mode by its button
/// has no app, so no armed watchdog) or when the app had just announced a restart.
fn restart_after_serial_flash<'a>(ctx: &Ctx<'a>) -> Option<Partial<'a>> {
    for (i, d) in ctx.banner_boots() {
        if d.source() != Some(BootSource::UartDownload) {
            continue;
        }
        // A crash explains more: one just before caused the restart (the latched straps only
        // decide where it lands), one in the boot after (or in this one, when the capture
        // lost the banner of the reset) is the fault left once the board was reset by hand.
        // The crash rules report it, with this restart as a note.
        if ctx
            .prev(ctx.first_of_download_run(i))
            .is_some_and(|p| p.crash.is_some())
            || d.crash.is_some()
            || ctx.after_download_run(i).is_some_and(|n| n.crash.is_some())
        {
            continue;
        }
        let wdt = d.wdt_reset.or_else(|| {
            ctx.next(i)
                .filter(|n| {
                    n.source() == Some(BootSource::UartDownload)
                        && n.cause() == Some(RstCause::Watchdog)
                })
                .and_then(|n| n.wdt_reset.or(n.banner))
        });
        let announced = ctx.prev(i).and_then(Digest::announced_restart);
        if wdt.is_none() && announced.is_none() {
            continue;
        }
        let mut evidence: Vec<&Record> = announced.into_iter().collect();
        evidence.extend(d.banner);
        evidence.extend(wdt);
        if let Some(n) = ctx.next(i) {
            evidence.extend(n.banner);
        }
        let pending_ota = ctx
            .prev(i)
            .and_then(|p| p.update_success.or(p.last_text.last().copied()))
            .filter(|r| r.text.to_ascii_lowercase().contains("update"));
        let mut summary =
            "A software restart landed in the ROM's UART download mode (boot mode:(1,x))"
                .to_string();
        if wdt.is_some() {
            summary.push_str(" and the watchdog reset it there");
        }
        summary.push_str(
            ": the strapping pins were still latched from a serial upload, because the board was not \
             power-cycled after flashing.",
        );
        let mut p = partial(summary, Confidence::High, evidence)?;
        if pending_ota.is_some() {
            p.details.notes.push(
                "The OTA image was staged, but the restart never reached eboot; a power cycle \
                 clears RTC memory, so the old firmware will run and the update is lost."
                    .into(),
            );
        }
        return Some(p);
    }
    None
}

/// failure-modes B: `@cp:` with no digit and no `ld` means eboot hung or lost power during
/// the copy (the WDT is off while copying); `cp:N`/`cmp:N` with N != 0 is a copy error.
fn ota_copy_incomplete<'a>(ctx: &Ctx<'a>) -> Option<Partial<'a>> {
    for (i, d) in ctx.boots.iter().enumerate() {
        let Some(r) = d.copy_incomplete() else {
            continue;
        };
        let mut evidence: Vec<&Record> = d.banner.into_iter().collect();
        evidence.extend(d.eboot_version.map(|(_, r)| r));
        evidence.extend(d.copy.map(|(_, r)| r));
        evidence.push(r);
        let next = ctx.next(i);
        evidence.extend(next.and_then(|n| n.banner));
        evidence.extend(next.and_then(|n| n.ets_main).or(d.ets_main));
        let code = d.copy.and_then(|(c, _)| c).filter(|&c| c != 0);
        let summary = match (code, d.verify) {
            (Some(c), _) => format!(
                "eboot's copy of the staged OTA image failed with cp:{c} ({}); the app region may \
                 be partly overwritten.",
                copy_error_name(c)
            ),
            (None, Some((None, _))) => "eboot copied the staged OTA image but its verify step \
                                        (cmp:) never finished; the board halted without loading \
                                        an app."
                .to_string(),
            _ => "eboot started copying the staged OTA image (@cp:) and never finished: the copy \
                  hung or the board lost power or was reset during it, so flash from 0x1000 may \
                  be half-written."
                .to_string(),
        };
        let mut p = partial(summary, Confidence::High, evidence)?;
        p.details.eboot_copy_result = d.copy.and_then(|(c, _)| c);
        if next.is_some_and(|n| n.boot.garbage_bytes >= 32) {
            p.details.notes.push(
                "The boots after the interrupted copy print garbage: the half-copied app runs \
                 (or loops) at a rate the capture does not read."
                    .into(),
            );
        }
        return Some(p);
    }
    None
}

fn copy_error_name(code: u8) -> &'static str {
    match code {
        1 => "source or destination not sector-aligned",
        2 => "flash erase failed",
        3 => "flash read failed",
        4 => "flash write failed",
        5 => "bad gzip header",
        6 => "gzip inflate error",
        9 => "verify mismatch",
        _ => "undocumented error",
    }
}

/// failure-modes C/D. Three signatures:
/// - the ROM read the image header, but the segment headers after it are impossible (address
///   0, length 0, outside RAM): flash reads went wrong once the chip used the header's mode;
/// - the app dies with IllegalInstruction (EXCCAUSE 0) before printing anything: the first
///   code fetched from flash through the cache was wrong (QIO/DIO image on DOUT-only flash);
/// - the Updater's own checks (`ERROR[8]` Flash config wrong, `ERROR[9]` new Flash config).
fn flash_config_mismatch<'a>(ctx: &Ctx<'a>) -> Option<Partial<'a>> {
    for d in ctx.boots {
        if let Some(seg) = d.impossible_segment {
            let mut evidence: Vec<&Record> = d.banner.into_iter().collect();
            evidence.extend(d.loads.iter().copied().take(4));
            evidence.push(seg);
            evidence.extend(d.csum_err);
            evidence.extend(d.ets_main);
            return partial(
                "The ROM read the image header but then loaded impossible segments (address or \
                 length 0): flash reads return nonsense in the mode and size the header selects, \
                 so the image does not fit this chip's flash (less likely: the flash after the \
                 header is erased or half-written)."
                    .into(),
                Confidence::Medium,
                evidence,
            );
        }
        if let Some(crash) = &d.crash
            && let CrashKind::Exception { cause: 0, .. } = crash.kind
            && !d.app_text_before_crash
            && (d.ld.is_some() || d.sdk_start.is_some())
            && crash
                .regs
                .epc1
                .is_none_or(|pc| code_region(pc) == Some("flash (irom0)"))
        {
            let mut evidence: Vec<&Record> = d.banner.into_iter().collect();
            evidence.extend(d.ld.or(d.sdk_start));
            evidence.push(crash.record);
            let mut p = partial(
                "The app died with IllegalInstruction before printing anything: the first code \
                 fetched from flash was wrong, which is what a flash mode the chip cannot run \
                 (QIO/DIO on DOUT-only flash) does."
                    .into(),
                Confidence::Medium,
                evidence,
            )?;
            p.details.exception = Some(exception_detail(crash));
            return Some(p);
        }
        if let Some((code @ (8 | 9), r)) = d.updater_error {
            let mut p = partial(
                format!(
                    "The Updater refused the update with ERROR[{code}]: the {} flash size does not \
                     match the real chip.",
                    if code == 8 {
                        "running firmware's"
                    } else {
                        "new image's"
                    }
                ),
                Confidence::High,
                vec![r],
            )?;
            p.details.updater_error = Some(code);
            return Some(p);
        }
    }
    None
}

/// boot-log.md §3/§4: `csum err` or a `csum` unlike the `chksum` before it (the image at 0x0
/// failed the ROM's checksum), `flash read err`, eboot's `e:N` after `ld` (the app at 0x1000 cannot be loaded), and `ets_main.c` right
/// after a flash-boot banner (no image header at 0x0: the ROM halts; esp8266.com p=42567 shows
/// it for erased flash).
fn checksum_error<'a>(ctx: &Ctx<'a>) -> Option<Partial<'a>> {
    for (i, d) in ctx.boots.iter().enumerate() {
        let mut evidence: Vec<&Record> = d.banner.into_iter().collect();
        let summary = if let Some(r) = d.csum_err {
            evidence.extend(d.loads.iter().copied().take(3));
            evidence.extend(d.csum);
            evidence.push(r);
            evidence.extend(d.ets_main);
            "The ROM's checksum of the image at flash 0x0 failed (csum err) and it halted: the \
             boot image in flash is corrupt or was read wrongly."
                .to_string()
        } else if let Some((chk, cs)) = d
            .csum_mismatch
            .filter(|_| d.eboot_version.is_none() && d.ld.is_none() && !d.app_text)
        {
            // Only when nothing ran after it: a boot that goes on shows the ROM accepted it.
            evidence.extend(d.loads.iter().copied().take(3));
            evidence.push(chk);
            evidence.push(cs);
            evidence.extend(d.ets_main);
            "The image at flash 0x0 failed the ROM's checksum (the chksum computed over its \
             segments differs from the csum stored in it) and nothing started: the boot image \
             in flash is corrupt or was read wrongly."
                .to_string()
        } else if let Some(r) = d.flash_read_err {
            evidence.push(r);
            "The ROM could not read the flash at 0x0 (flash read err).".to_string()
        } else if let Some(r) = d.ets_main.filter(|_| {
            d.loads.is_empty() && d.source() == Some(BootSource::Flash) && d.eboot_version.is_none()
        }) {
            evidence.push(r);
            if d.cause() == Some(RstCause::Software) {
                "The ROM stopped (ets_main.c) after a software reset without loading anything: the \
                 boot loader or app that reset the chip could not load the image."
                    .to_string()
            } else {
                "The ROM found no bootable image at flash 0x0 (ets_main.c right after the banner): \
                 the flash is erased or holds no valid image header."
                    .to_string()
            }
        } else if let Some((code, r)) = d.eboot_error {
            evidence.extend(d.ld);
            evidence.push(r);
            if let Some(n) = ctx.next(i) {
                evidence.extend(n.banner);
                evidence.extend(n.ets_main);
            }
            format!(
                "eboot could not load the app image at flash 0x1000 ({}): the installed app is \
                 corrupt.",
                match code {
                    Some(1) => "e:1, header read failed",
                    Some(2) => "e:2, segment header read failed",
                    Some(3) => "e:3, segment data read failed",
                    _ => "e:, load failed",
                }
            )
        } else {
            continue;
        };
        let mut p = partial(summary, Confidence::High, evidence)?;
        p.details.eboot_error = d.eboot_error.and_then(|(c, _)| c);
        return Some(p);
    }
    None
}

/// boot-log.md §6: the software watchdog (about 3.2 s) prints `Soft WDT reset` and a stack.
fn soft_wdt<'a>(ctx: &Ctx<'a>) -> Option<Partial<'a>> {
    for d in ctx.boots {
        if let Some(crash) = &d.crash
            && crash.kind == CrashKind::SoftWdt
        {
            let mut p = partial(
                format!(
                    "The software watchdog reset the board: {} blocked for more than about 3 \
                     seconds without yielding.",
                    match crash.context.as_deref() {
                        Some("sys") => "the SDK/Wi-Fi context (ctx: sys)",
                        Some("cont") => "the sketch (ctx: cont, loop() or setup())",
                        _ => "the code",
                    }
                ),
                Confidence::High,
                vec![crash.record],
            )?;
            p.details.exception = Some(exception_detail(crash));
            return Some(p);
        }
        if let Some((_, Some(3), r)) = d.reset_info {
            return partial(
                "The app reports that its last reset was the software watchdog.".into(),
                Confidence::Medium,
                vec![r],
            );
        }
    }
    None
}

/// boot-log.md §6/§7: `Exception (N)`, `Fatal exception (N)`, panics and aborts.
fn exception_crash<'a>(ctx: &Ctx<'a>) -> Option<Partial<'a>> {
    for (i, d) in ctx.boots.iter().enumerate() {
        if let Some(crash) = &d.crash {
            let detail = exception_detail(crash);
            let mut evidence = vec![crash.record];
            evidence.extend(
                d.last_text
                    .iter()
                    .rev()
                    .find(|r| r.line < crash.record.line),
            );
            if let Some(n) = ctx.next(i) {
                evidence.extend(n.banner);
            }
            let what = match crash.kind {
                CrashKind::Exception { cause, .. } => {
                    format!("Exception ({cause}) {}", exception_name(cause))
                }
                CrashKind::Postmortem(k) => {
                    let line: String = crash.record.text.trim().chars().take(100).collect();
                    let meaning = match k {
                        PostmortemKind::Panic => "a check in the core or SDK failed at that place",
                        PostmortemKind::UnhandledCxx => {
                            "a C++ exception nobody caught, often std::bad_alloc (out of memory)"
                        }
                        PostmortemKind::Abort => "abort(): a failed assert or allocation",
                        PostmortemKind::StackSmashing | PostmortemKind::StackOverflow => {
                            "the stack overflowed or a buffer on it was overrun"
                        }
                        PostmortemKind::GenericReset => "a reset the core could not attribute",
                    };
                    format!("`{line}` ({meaning})")
                }
                CrashKind::SoftWdt => unreachable!("handled by the soft-wdt rule"),
            };
            let mut summary = format!("The app crashed with {what}");
            if let (Some(pc), Some(region)) = (crash.regs.epc1, detail.epc1_region) {
                summary.push_str(&format!(" at epc1=0x{pc:08x} ({region})"));
            }
            if let (CrashKind::Exception { cause: 28 | 29, .. }, Some(a)) =
                (crash.kind, crash.regs.excvaddr)
                && a < 0x1000
            {
                summary.push_str(&format!(", a null-pointer access (excvaddr=0x{a:08x})"));
            }
            summary.push('.');
            let mut p = partial(summary, Confidence::High, evidence)?;
            p.details.exception = Some(detail);
            return Some(p);
        }
        if let Some((exc, reason, r)) = d.reset_info
            && (exc.is_some() || reason == Some(2))
        {
            let mut p = partial(
                "The app reports that its last reset was an exception.".into(),
                Confidence::Medium,
                vec![r],
            )?;
            p.details.exception = exc.map(|c| ExceptionDetail {
                cause: Some(c),
                name: exception_name(c).into(),
                epc1: None,
                epc1_region: None,
                excvaddr: None,
                context: None,
                stack_code_addresses: Vec::new(),
            });
            return Some(p);
        }
    }
    None
}

fn exception_detail(crash: &Crash<'_>) -> ExceptionDetail {
    let (cause, name) = match crash.kind {
        CrashKind::Exception { cause, .. } => (Some(cause), exception_name(cause).to_string()),
        CrashKind::SoftWdt => (None, "Soft WDT reset".to_string()),
        CrashKind::Postmortem(k) => (None, format!("{k:?}")),
    };
    let mut code: Vec<String> = crash
        .stack_words
        .iter()
        .filter(|&&w| matches!(code_region(w), Some("IRAM" | "flash (irom0)")))
        .map(|w| format!("0x{w:08x}"))
        .collect();
    code.dedup();
    code.truncate(16);
    ExceptionDetail {
        cause,
        name,
        epc1: crash.regs.epc1.map(|v| format!("0x{v:08x}")),
        epc1_region: crash.regs.epc1.and_then(code_region),
        excvaddr: crash.regs.excvaddr.map(|v| format!("0x{v:08x}")),
        context: crash.context.clone(),
        stack_code_addresses: code,
    }
}

/// boot-log.md §2/§5: `rst cause:4` + `wdt reset` in flash-boot mode is the hardware watchdog
/// (about 6–8 s) resetting a running app. A watchdog reset that directly follows an announced
/// restart and goes on to a successful `ld` is the restart itself (some eboot builds let the
/// watchdog end it, #517) and not a fault.
fn hw_wdt_loop<'a>(ctx: &Ctx<'a>) -> Option<Partial<'a>> {
    let mut hits: Vec<(usize, &Digest<'a>)> = Vec::new();
    for (i, d) in ctx.banner_boots() {
        if d.cause() != Some(RstCause::Watchdog) || d.source() != Some(BootSource::Flash) {
            continue;
        }
        let announced = ctx.prev(i).and_then(Digest::announced_restart);
        if announced.is_some() && d.ld.is_some() {
            continue;
        }
        hits.push((i, d));
    }
    if hits.is_empty() {
        let r = ctx
            .boots
            .iter()
            .find_map(|d| d.reset_info.filter(|(_, reason, _)| *reason == Some(1)))?;
        return partial(
            "The app reports that its last reset was the hardware watchdog.".into(),
            Confidence::Medium,
            vec![r.2],
        );
    }
    let mut evidence = Vec::new();
    for (i, d) in hits.iter().take(3) {
        evidence.extend(ctx.prev(*i).and_then(|p| p.last_text.last().copied()));
        evidence.extend(d.banner);
        evidence.extend(d.wdt_reset);
    }
    let total = ctx.log.totals.rst_causes[4];
    let summary = if total > 1 {
        format!(
            "The hardware watchdog reset the board {total} times while the app was running \
             (rst cause:4, wdt reset, no crash dump)."
        )
    } else {
        "The hardware watchdog reset the board while the app was running (rst cause:4, wdt \
         reset, no crash dump)."
            .to_string()
    };
    let mut p = partial(summary, Confidence::High, evidence)?;
    let wifi = hits.iter().any(|(i, _)| {
        ctx.prev(*i)
            .and_then(|p| p.last_text.last())
            .is_some_and(|r| {
                let t = r.text.to_ascii_lowercase();
                t.contains("wifi") || t.contains("wif:") || t.contains("connect")
            })
    });
    if wifi {
        p.details.notes.push(
            "The resets come as Wi-Fi connects, when the chip draws its peak current: check the \
             3.3 V supply before the code."
                .into(),
        );
    }
    Some(p)
}

/// Power-on resets that cut a running boot short, with no restart announced and no crash:
/// each with the boot it cut short.
fn unexplained_power_ons<'a>(ctx: &Ctx<'a>) -> Vec<(&'a Digest<'a>, &'a Digest<'a>)> {
    let mut hits = Vec::new();
    for (i, d) in ctx.banner_boots() {
        if d.cause() != Some(RstCause::PowerOn) || d.source() != Some(BootSource::Flash) {
            continue;
        }
        let Some(prev) = ctx.prev(i) else { continue };
        let cut_short = prev.banner.is_some()
            && !prev.loads.is_empty()
            && prev.csum.is_none()
            && prev.csum_err.is_none();
        let interrupted_app = prev.reached_app() && prev.crash.is_none();
        if prev.announced_restart().is_none() && (cut_short || interrupted_app) {
            hits.push((prev, d));
        }
    }
    hits
}

/// failure-modes F: a brown-out resets the chip like a power-on. Power-on resets that cut a
/// running boot short, with no restart announced and no crash before them, more than once,
/// point at the supply. One looks the same as a power cycle by hand (or by the harness), so
/// it is only a note on the healthy boot.
fn brownout<'a>(ctx: &Ctx<'a>) -> Option<Partial<'a>> {
    let hits = unexplained_power_ons(ctx);
    if hits.len() < 2 {
        return None;
    }
    let mut evidence = Vec::new();
    for (prev, d) in hits.iter().take(3) {
        evidence.extend(
            prev.last_text
                .last()
                .copied()
                .or(prev.loads.last().copied()),
        );
        evidence.extend(d.banner);
    }
    partial(
        format!(
            "The board came back with a power-on reset {} times while it was running, with no \
             restart announced and no crash: the supply dips (brown-out) or the power connection \
             is unreliable.",
            hits.len()
        ),
        Confidence::Medium,
        evidence,
    )
}

/// boot-log.md §2: rst cause 2 (external reset, or `ESP.restart()` on most cores) or 3 at
/// flash boot, after a boot that was running and neither crashed nor announced a restart,
/// is an unexplained restart; the app resets itself (or something pulls RST) in a loop.
fn boot_loop<'a>(ctx: &Ctx<'a>) -> Option<Partial<'a>> {
    let mut hits = Vec::new();
    for (i, d) in ctx.banner_boots() {
        let warm = matches!(d.cause(), Some(RstCause::External | RstCause::Software));
        if !warm || d.source() != Some(BootSource::Flash) {
            continue;
        }
        let Some(prev) = ctx.prev(i) else { continue };
        let had_content = prev.app_text || prev.rf_cal_missing.is_some() || prev.reached_app();
        if had_content && prev.crash.is_none() && prev.announced_restart().is_none() {
            hits.push((prev, d));
        }
    }
    if hits.is_empty() {
        return restart_loop(ctx);
    }
    let mut evidence: Vec<&Record> = Vec::new();
    for (prev, d) in hits.iter().take(3) {
        evidence.extend(prev.rf_cal_missing.or(prev.last_text.last().copied()));
        evidence.extend(d.banner);
    }
    let rf = hits.iter().find_map(|(p, _)| p.rf_cal_missing);
    let mut p = partial(
        if rf.is_some() {
            "The SDK restarts the board at every boot because the RF calibration data is missing \
             (rf_cal[0] ... is 0xFF): the init-data sector at the end of flash is erased."
                .to_string()
        } else {
            format!(
                "The app restarted {} without a crash report or an announced restart (rst \
                 cause:2): it resets itself, or something pulls its reset line, in a loop.",
                if hits.len() > 1 {
                    format!("{} times", hits.len())
                } else {
                    "once".into()
                }
            )
        },
        if hits.len() > 1 || rf.is_some() {
            Confidence::High
        } else {
            Confidence::Medium
        },
        evidence,
    )?;
    if rf.is_some() {
        p.details.notes.push("rf_cal sector missing".into());
    }
    Some(p)
}

/// Restarts the app announces, again and again, that no update asked for (a config portal
/// timing out, a watchdog of the app's own): each boot is clean, the capture is a loop.
fn restart_loop<'a>(ctx: &Ctx<'a>) -> Option<Partial<'a>> {
    let hits: Vec<(&Record, &Record)> = ctx
        .banner_boots()
        .filter(|(_, d)| d.source() == Some(BootSource::Flash))
        .filter_map(|(i, d)| {
            let prev = ctx.prev(i)?;
            if prev.update_success.is_some() || prev.updater_error.is_some() {
                return None;
            }
            let said = prev.announced_restart()?;
            let text = said.text.to_ascii_lowercase();
            let update = text.contains("update") || text.contains("ota") || text.trim() == "end";
            (!update).then_some((said, d.banner?))
        })
        .collect();
    if hits.len() < 2 {
        return None;
    }
    let evidence = hits.iter().take(3).flat_map(|&(a, b)| [a, b]).collect();
    partial(
        format!(
            "The app restarted itself {} times, announcing it each time (\"{}\"), with no update \
             behind it: a restart loop. The lines before each restart say why the app gives up.",
            hits.len(),
            hits[0].0.text.trim()
        ),
        Confidence::Medium,
        evidence,
    )
}

/// boot-log.md §2: X=1 (GPIO0 low) is the ROM serial loader, X=4..7 SDIO (`waiting for
/// host`), X=0/2 invalid; in each the app never starts.
fn download_mode<'a>(ctx: &Ctx<'a>) -> Option<Partial<'a>> {
    let (_, d) = ctx.banner_boots().last()?;
    let source = d.source()?;
    if source == BootSource::Flash {
        return None;
    }
    let mut evidence: Vec<&Record> = d.banner.into_iter().collect();
    evidence.extend(d.waiting_for_host);
    let summary = match source {
        BootSource::UartDownload => {
            "The board was reset with GPIO0 low (boot mode:(1,x)): the ROM waits in its serial \
             loader for a flasher and the app does not start."
        }
        BootSource::Sdio => {
            "The board was reset with GPIO15 high (boot mode 4–7, SDIO): the ROM is waiting for \
             an SDIO host and the app does not start."
        }
        _ => {
            "The boot mode strapping is invalid (GPIO2 low at reset): the ROM does not boot \
             from flash."
        }
    };
    partial(summary.to_string(), Confidence::High, evidence)
}

/// boot-log.md §1: the capture ends in output that is not text at the capture's rate (ROM
/// text at 74880 read at 115200, or the reverse), so the boot cannot be read.
fn garbage_baud<'a>(ctx: &Ctx<'a>) -> Option<Partial<'a>> {
    let last = ctx.boots.last()?;
    let b = last.boot;
    let unreadable_end =
        b.trailing_garbage_bytes >= 32 && b.trailing_garbage_bytes >= b.trailing_text_bytes;
    if !unreadable_end {
        return None;
    }
    let mut evidence: Vec<&Record> = Vec::new();
    evidence.extend(last.banner);
    evidence.extend(last.ld);
    evidence.extend(last.last_text.last().copied());
    evidence.extend(
        b.records()
            .filter(|r| matches!(r.event, crate::bootlog::Event::Garbage { .. }))
            .take(3),
    );
    let summary = if last.banner.is_some() {
        format!(
            "The boot stages are readable, but the {} bytes that follow are not text at the \
             capture's baud rate: the app prints at another rate (usually 115200 while the ROM \
             prints at 74880).",
            b.trailing_garbage_bytes
        )
    } else {
        format!(
            "The capture ends in {} bytes that are not text at its baud rate: the ROM and eboot \
             print at 74880 baud, so a capture at 115200 shows their banners (often repeating \
             in a boot loop) as garbage.",
            b.trailing_garbage_bytes
        )
    };
    partial(summary, Confidence::Medium, evidence)
}

/// The last boot got to the app (eboot `ld`, the SDK boot loader, or app output) and no rule
/// above found a fault.
fn healthy<'a>(ctx: &Ctx<'a>) -> Option<Partial<'a>> {
    let last = ctx.boots.iter().rev().find(|d| d.reached_app())?;
    let mut evidence: Vec<&Record> = Vec::new();
    evidence.extend(last.banner);
    evidence.extend(last.copy.map(|(_, r)| r));
    evidence.extend(last.ld.or(last.sdk_start));
    evidence.extend(last.identity.or(last.last_text.first().copied()));
    let ota = matches!(last.copy, Some((Some(0), _)));
    // `ld` hands over to the app, but only its output shows that it runs: it may print at
    // another baud rate, or the capture may end there.
    let app_seen = last.app_text || last.sdk_start.is_some() || last.crash.is_some();
    let summary = match (last.banner.is_some(), ota, app_seen) {
        (true, true, true) => "The board booted normally: eboot copied the staged OTA image \
                               (@cp:0), loaded it (ld) and the new app started."
            .to_string(),
        (true, true, false) => "eboot copied the staged OTA image (@cp:0) and loaded it (ld) \
                                with no fault; the capture holds no app output after that, so \
                                it does not show the new app running (it may print at another \
                                baud rate)."
            .to_string(),
        (true, false, true) => {
            "The board booted normally: ROM, boot loader and app, with no fault.".to_string()
        }
        (true, false, false) => "The ROM and the boot loader finished (ld) with no fault; the \
                                 capture holds no app output after that, so it does not show \
                                 the app running (it may print at another baud rate)."
            .to_string(),
        (false, _, _) => "The app is running and printed no fault; the capture holds no ROM \
                          boot banner to check the boot itself."
            .to_string(),
    };
    let confidence = match (last.banner.is_some(), app_seen) {
        (true, true) => Confidence::High,
        (true, false) => Confidence::Medium,
        (false, _) => Confidence::Low,
    };
    let mut p = partial(summary, confidence, evidence)?;
    if let [(_, d)] = unexplained_power_ons(ctx)[..]
        && let Some(banner) = d.banner
    {
        p.details.notes.push(format!(
            "Line {}: the board came back once with a power-on reset while it was running, with \
             no restart announced: a power cycle by hand looks the same; if nobody switched it, \
             suspect the supply (a second one would be a brown-out finding).",
            banner.line
        ));
    }
    Some(p)
}
