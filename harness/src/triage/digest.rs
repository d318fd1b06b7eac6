//! Per-boot facts the rules reason about.

use crate::bootlog::{
    Boot, BootLog, BootSource, Event, PostmortemKind, Record, Registers, RstCause, UpdateEvent,
};

use super::{BootSummary, describe_banner};

/// What one boot showed, with the records that showed it.
#[derive(Debug)]
pub(crate) struct Digest<'a> {
    pub boot: &'a Boot,
    pub banner: Option<&'a Record>,
    pub wdt_reset: Option<&'a Record>,
    pub waiting_for_host: Option<&'a Record>,
    pub loads: Vec<&'a Record>,
    /// A `load` line no real image has (address 0, length 0, outside RAM): flash reads
    /// returned nonsense after the header.
    pub impossible_segment: Option<&'a Record>,
    pub csum_err: Option<&'a Record>,
    pub csum: Option<&'a Record>,
    /// The last `chksum` line so far: the loader's running checksum after a segment.
    pub chksum: Option<(u8, &'a Record)>,
    /// A `csum` (the checksum stored in the image) that differs from the `chksum` before it
    /// (the one computed over the segments): the pair of lines.
    pub csum_mismatch: Option<(&'a Record, &'a Record)>,
    pub flash_read_err: Option<&'a Record>,
    pub ets_main: Option<&'a Record>,
    pub eboot_version: Option<(u32, &'a Record)>,
    pub copy: Option<(Option<u8>, &'a Record)>,
    pub verify: Option<(Option<u8>, &'a Record)>,
    pub ld: Option<&'a Record>,
    pub eboot_error: Option<(Option<u8>, &'a Record)>,
    pub sdk_start: Option<&'a Record>,
    pub rf_cal_missing: Option<&'a Record>,
    pub crash: Option<Crash<'a>>,
    pub reset_info: Option<(Option<u8>, Option<u8>, &'a Record)>,
    pub updater_error: Option<(u8, &'a Record)>,
    pub update_success: Option<&'a Record>,
    pub identity: Option<&'a Record>,
    /// App output (text lines) after the boot stages and before any crash.
    pub app_text_before_crash: bool,
    /// Some readable app output at all.
    pub app_text: bool,
    /// The last readable lines, newest last (restart announcements live here).
    pub last_text: Vec<&'a Record>,
}

/// A crash dump in a boot.
#[derive(Debug, Clone)]
pub(crate) struct Crash<'a> {
    pub kind: CrashKind,
    pub record: &'a Record,
    pub regs: Registers,
    pub context: Option<String>,
    pub stack_words: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashKind {
    Exception { cause: u8, sdk: bool },
    SoftWdt,
    Postmortem(PostmortemKind),
}

impl<'a> Digest<'a> {
    fn new(boot: &'a Boot) -> Self {
        let mut d = Digest {
            boot,
            banner: None,
            wdt_reset: None,
            waiting_for_host: None,
            loads: Vec::new(),
            impossible_segment: None,
            csum_err: None,
            csum: None,
            chksum: None,
            csum_mismatch: None,
            flash_read_err: None,
            ets_main: None,
            eboot_version: None,
            copy: None,
            verify: None,
            ld: None,
            eboot_error: None,
            sdk_start: None,
            rf_cal_missing: None,
            crash: None,
            reset_info: None,
            updater_error: None,
            update_success: None,
            identity: None,
            app_text_before_crash: false,
            app_text: false,
            last_text: Vec::new(),
        };
        let mut in_stack = false;
        for r in boot.records() {
            match &r.event {
                Event::RomBanner(_) => d.banner = d.banner.or(Some(r)),
                Event::WdtReset => d.wdt_reset = d.wdt_reset.or(Some(r)),
                Event::WaitingForHost => d.waiting_for_host = d.waiting_for_host.or(Some(r)),
                Event::Load { addr, len } => {
                    d.loads.push(r);
                    if d.impossible_segment.is_none() && !plausible_segment(*addr, *len) {
                        d.impossible_segment = Some(r);
                    }
                }
                Event::CsumErr => d.csum_err = d.csum_err.or(Some(r)),
                Event::Chksum(v) => d.chksum = Some((*v, r)),
                Event::Csum(v) => {
                    d.csum = d.csum.or(Some(r));
                    if let Some((computed, chk)) = d.chksum
                        && computed != *v
                    {
                        d.csum_mismatch = d.csum_mismatch.or(Some((chk, r)));
                    }
                }
                Event::FlashReadErr => d.flash_read_err = d.flash_read_err.or(Some(r)),
                Event::EtsMain => d.ets_main = d.ets_main.or(Some(r)),
                Event::EbootVersion(v) => d.eboot_version = d.eboot_version.or(Some((*v, r))),
                Event::EbootCopy { result } => d.copy = Some((*result, r)),
                Event::EbootVerify { result } => d.verify = Some((*result, r)),
                Event::EbootLoad => d.ld = d.ld.or(Some(r)),
                Event::EbootError { code } => d.eboot_error = d.eboot_error.or(Some((*code, r))),
                Event::SdkStart => d.sdk_start = d.sdk_start.or(Some(r)),
                Event::RfCalMissing => d.rf_cal_missing = d.rf_cal_missing.or(Some(r)),
                // A soft WDT dump prints `Exception (4)` too; keep the soft WDT.
                Event::Exception { cause, sdk, regs } if !d.is_soft_wdt() => {
                    d.set_crash(
                        CrashKind::Exception {
                            cause: *cause,
                            sdk: *sdk,
                        },
                        r,
                        **regs,
                    );
                }
                Event::SoftWdt => d.set_crash(CrashKind::SoftWdt, r, Registers::default()),
                Event::Postmortem(k) if d.crash.is_none() => {
                    d.set_crash(CrashKind::Postmortem(*k), r, Registers::default());
                }
                Event::Registers(regs) => {
                    if let Some(c) = &mut d.crash
                        && c.regs.is_empty()
                    {
                        c.regs = **regs;
                    }
                }
                Event::Ctx(name) => {
                    if let Some(c) = &mut d.crash {
                        c.context.get_or_insert_with(|| name.clone());
                    }
                }
                Event::StackBegin => in_stack = true,
                Event::StackEnd => in_stack = false,
                Event::StackWords { words, count, .. } if in_stack => {
                    if let Some(c) = &mut d.crash {
                        c.stack_words.extend(&words[..usize::from(*count).min(4)]);
                    }
                }
                Event::ResetInfo { exception, reason } => {
                    d.reset_info = d.reset_info.or(Some((*exception, *reason, r)));
                }
                Event::Update(UpdateEvent::Error(code)) => {
                    d.updater_error = d.updater_error.or(Some((*code, r)));
                    d.note_text(r);
                }
                Event::Update(UpdateEvent::Success) => {
                    d.update_success = d.update_success.or(Some(r));
                    d.note_text(r);
                }
                Event::Identity => {
                    d.identity = Some(r);
                    d.note_text(r);
                }
                Event::Update(UpdateEvent::Rebooting) | Event::Text => d.note_text(r),
                _ => {}
            }
        }
        d
    }

    fn is_soft_wdt(&self) -> bool {
        matches!(&self.crash, Some(c) if c.kind == CrashKind::SoftWdt)
    }

    fn set_crash(&mut self, kind: CrashKind, record: &'a Record, regs: Registers) {
        self.crash = Some(Crash {
            kind,
            record,
            regs,
            context: None,
            stack_words: Vec::new(),
        });
    }

    fn note_text(&mut self, r: &'a Record) {
        self.app_text = true;
        if self.crash.is_none() {
            self.app_text_before_crash = true;
        }
        if self.last_text.len() == 4 {
            self.last_text.remove(0);
        }
        self.last_text.push(r);
    }

    pub fn source(&self) -> Option<BootSource> {
        self.boot.source()
    }

    pub fn cause(&self) -> Option<RstCause> {
        self.boot.rst_cause()
    }

    /// The boot got as far as running application code.
    pub fn reached_app(&self) -> bool {
        self.ld.is_some() && self.eboot_error.is_none()
            || self.sdk_start.is_some()
            || self.app_text
            || self.crash.is_some()
    }

    /// The boot's last readable lines announce an intended restart (OTA end, `ESP.restart()`
    /// with a message), so the reset that follows is not a fault.
    pub fn announced_restart(&self) -> Option<&'a Record> {
        self.last_text.iter().rev().take(3).copied().find(|r| {
            if matches!(
                r.event,
                Event::Update(UpdateEvent::Rebooting | UpdateEvent::Success)
            ) {
                return true;
            }
            let t = r.text.to_ascii_lowercase();
            t.contains("reboot")
                || t.contains("restart")
                || t.contains("update success")
                || t.trim() == "end"
                || t.contains("ota end")
                || t.contains("state=restart")
        })
    }

    /// The copy of a staged update did not finish: `cp:` without a result and no `ld` after
    /// it, a copy error, or a verify that never finished.
    pub fn copy_incomplete(&self) -> Option<&'a Record> {
        match (self.copy, self.verify, self.ld) {
            (Some((None, r)), _, None) => Some(r),
            (Some((Some(n), r)), _, _) if n != 0 => Some(r),
            (_, Some((None, r)), None) => Some(r),
            (_, Some((Some(n), r)), _) if n != 0 => Some(r),
            _ => None,
        }
    }

    pub fn summary(&self) -> BootSummary {
        let b = self.boot;
        let mut stages = Vec::new();
        if b.banner.is_some() {
            stages.push(
                if self.wdt_reset.is_some() {
                    "rom (wdt reset)"
                } else {
                    "rom"
                }
                .to_string(),
            );
        } else {
            stages.push("(capture started mid-boot)".to_string());
        }
        if !self.loads.is_empty() {
            let mut s = format!("loader {} segment(s)", self.loads.len());
            if self.csum_err.is_some() {
                s.push_str(", csum err");
            } else if self.csum_mismatch.is_some() {
                s.push_str(", checksum mismatch");
            }
            stages.push(s);
        }
        let mut eboot = Vec::new();
        if let Some((v, _)) = self.eboot_version {
            eboot.push(format!("v{v:08x}"));
        }
        match self.copy {
            Some((Some(n), _)) => eboot.push(format!("@cp:{n}")),
            Some((None, _)) => eboot.push("@cp: (unfinished)".into()),
            None => {}
        }
        if let Some((res, _)) = self.verify {
            eboot.push(res.map_or("cmp: (unfinished)".into(), |n| format!("cmp:{n}")));
        }
        if self.ld.is_some() {
            eboot.push("ld".into());
        }
        if let Some((code, _)) = self.eboot_error {
            eboot.push(code.map_or("e:".into(), |c| format!("e:{c}")));
        }
        if !eboot.is_empty() {
            stages.push(format!("eboot {}", eboot.join(" ")));
        }
        if self.sdk_start.is_some() {
            stages.push("sdk boot".into());
        }
        if self.app_text {
            stages.push("app".into());
        }
        let outcome = match (&self.crash, self.ets_main, self.waiting_for_host) {
            (Some(c), _, _) => match c.kind {
                CrashKind::Exception { cause, .. } => {
                    format!("crash: Exception ({cause}) {}", exception_name(cause))
                }
                CrashKind::SoftWdt => "crash: Soft WDT reset".into(),
                CrashKind::Postmortem(k) => format!("crash: {k:?}"),
            },
            (None, Some(_), _) => "ROM halted (ets_main.c)".into(),
            (None, None, Some(_)) => "waiting for host (SDIO)".into(),
            _ if self.source() == Some(BootSource::UartDownload) => {
                "in the ROM serial loader".into()
            }
            _ if b.trailing_garbage_bytes >= 32 => {
                format!("{} bytes of unreadable output", b.trailing_garbage_bytes)
            }
            _ if self.copy_incomplete().is_some() => "stopped during the eboot copy".into(),
            _ if self.reached_app() => "app running".into(),
            _ => "no further output".into(),
        };
        BootSummary {
            index: b.index,
            line: b.first_line,
            rst_cause: b
                .rst_cause()
                .map(|c| format!("{} ({})", c.code(), c.describe())),
            boot_mode: b.banner.and_then(|bn| bn.boot_mode).map(|m| {
                let what = describe_banner(None, Some(m.source()));
                format!(
                    "({},{}) {}",
                    m.x,
                    m.y,
                    what.split(", ").nth(1).unwrap_or("")
                )
            }),
            stages: stages.join(" > "),
            outcome,
        }
    }
}

/// RAM regions the ROM loads segments into (IRAM, DRAM) and the flash-mapped range a segment
/// header of a ROM-loaded image can name.
fn plausible_segment(addr: u32, len: u32) -> bool {
    let ram =
        (0x3FFE_8000..0x4000_0000).contains(&addr) || (0x4010_0000..0x4011_0000).contains(&addr);
    ram && len > 0 && len < 0x10_0000
}

/// The EXCCAUSE names of the Xtensa core (doc/exception_causes.rst).
pub(crate) fn exception_name(cause: u8) -> &'static str {
    match cause {
        0 => "IllegalInstruction",
        1 => "Syscall",
        2 => "InstructionFetchError",
        3 => "LoadStoreError",
        4 => "Level1Interrupt",
        5 => "Alloca",
        6 => "IntegerDivideByZero",
        8 => "Privileged",
        9 => "LoadStoreAlignment",
        12 => "InstrPIFDataError",
        13 => "LoadStorePIFDataError",
        14 => "InstrPIFAddrError",
        15 => "LoadStorePIFAddrError",
        16 => "InstTLBMiss",
        17 => "InstTLBMultiHit",
        18 => "InstFetchPrivilege",
        20 => "InstFetchProhibited",
        24 => "LoadStoreTLBMiss",
        25 => "LoadStoreTLBMultiHit",
        26 => "LoadStorePrivilege",
        28 => "LoadProhibited",
        29 => "StoreProhibited",
        32..=39 => "CoprocessorDisabled",
        _ => "reserved",
    }
}

/// Where a code address points.
pub(crate) fn code_region(addr: u32) -> Option<&'static str> {
    match addr {
        0x4000_0000..=0x4000_FFFF => Some("ROM"),
        0x4010_0000..=0x4010_FFFF => Some("IRAM"),
        0x4020_0000..=0x402F_FFFF => Some("flash (irom0)"),
        _ => None,
    }
}

pub(crate) fn digest_all(log: &BootLog) -> Vec<Digest<'_>> {
    log.boots.iter().map(Digest::new).collect()
}
