//! What one line of a capture means.

use serde::Serialize;

/// The ROM's reset cause, as printed in `rst cause:N` (the ROM/RTC numbering, not the SDK's
/// `rst_info.reason`; boot-log.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RstCause {
    /// 0: no reason recorded.
    Unknown,
    /// 1: power-on (also seen after `ESP.restart()` on some cores).
    PowerOn,
    /// 2: external reset pin, or a software restart on most cores.
    External,
    /// 3: software reset (eboot error path, `ESP.reset()`).
    Software,
    /// 4: hardware watchdog; the ROM prints `wdt reset`.
    Watchdog,
    /// 5: deep-sleep wake.
    DeepSleep,
    /// 6: SDIO reset.
    Sdio,
    /// Any other number.
    Other(u8),
}

impl RstCause {
    /// Maps the ROM's number.
    pub fn from_code(code: u8) -> Self {
        match code {
            0 => RstCause::Unknown,
            1 => RstCause::PowerOn,
            2 => RstCause::External,
            3 => RstCause::Software,
            4 => RstCause::Watchdog,
            5 => RstCause::DeepSleep,
            6 => RstCause::Sdio,
            n => RstCause::Other(n),
        }
    }

    /// The ROM's number.
    pub fn code(self) -> u8 {
        match self {
            RstCause::Unknown => 0,
            RstCause::PowerOn => 1,
            RstCause::External => 2,
            RstCause::Software => 3,
            RstCause::Watchdog => 4,
            RstCause::DeepSleep => 5,
            RstCause::Sdio => 6,
            RstCause::Other(n) => n,
        }
    }

    /// What the number means, for people.
    pub fn describe(self) -> &'static str {
        match self {
            RstCause::Unknown => "no reset reason",
            RstCause::PowerOn => "power-on",
            RstCause::External => "external reset or software restart",
            RstCause::Software => "software reset",
            RstCause::Watchdog => "hardware watchdog",
            RstCause::DeepSleep => "deep-sleep wake",
            RstCause::Sdio => "SDIO reset",
            RstCause::Other(_) => "undocumented reset cause",
        }
    }

    /// Warm resets keep RTC memory and the latched strapping pins.
    pub fn is_warm(self) -> bool {
        matches!(
            self,
            RstCause::External | RstCause::Software | RstCause::Watchdog
        )
    }
}

/// Where the ROM boots from, decoded from X in `boot mode:(X,Y)`:
/// X = GPIO15<<2 | GPIO0<<1 | GPIO2 as latched at the last power-on or external reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootSource {
    /// X=1: GPIO0 low: the ROM serial loader waits for a host.
    UartDownload,
    /// X=3: normal boot from SPI flash.
    Flash,
    /// X=4..7: GPIO15 high: SDIO boot (`waiting for host`).
    Sdio,
    /// X=0 or 2: GPIO2 low, not a valid strapping.
    Invalid,
}

/// The `boot mode:(X,Y)` pair. Y is undocumented and never used for classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BootMode {
    /// Strapping bits (GPIO15, GPIO0, GPIO2).
    pub x: u8,
    /// Undocumented second field (GPIO_IN bits 29..31).
    pub y: u8,
}

impl BootMode {
    /// Decodes X.
    pub fn source(self) -> BootSource {
        match self.x {
            1 => BootSource::UartDownload,
            3 => BootSource::Flash,
            4..=7 => BootSource::Sdio,
            _ => BootSource::Invalid,
        }
    }
}

/// The ROM banner `ets Jan  8 2013,rst cause:N, boot mode:(X,Y)`. Fields are `None` when the
/// line was cut short (a truncated banner still starts a boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Banner {
    /// Reset cause.
    pub rst_cause: Option<RstCause>,
    /// Boot mode pair.
    pub boot_mode: Option<BootMode>,
}

/// The five exception registers printed with a crash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Registers {
    /// Exception PC.
    pub epc1: Option<u32>,
    /// EPC at level 2.
    pub epc2: Option<u32>,
    /// EPC at level 3.
    pub epc3: Option<u32>,
    /// Faulting data address.
    pub excvaddr: Option<u32>,
    /// Double-exception PC.
    pub depc: Option<u32>,
}

impl Registers {
    /// True when no register was found.
    pub fn is_empty(&self) -> bool {
        *self == Registers::default()
    }
}

/// Postmortem causes other than an exception or a soft WDT (core_esp8266_postmortem.cpp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PostmortemKind {
    /// `Panic file:line func`.
    Panic,
    /// `Unhandled C++ exception: ...`.
    UnhandledCxx,
    /// `Abort called`.
    Abort,
    /// `Stack smashing detected`.
    StackSmashing,
    /// `Stack overflow detected`.
    StackOverflow,
    /// `Generic Reset`.
    GenericReset,
}

/// A message of the Arduino `Updater` or the OTA code as the firmware prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateEvent {
    /// `Update Success` (serial or HTTP text).
    Success,
    /// `ERROR[n]: text` with n != 0.
    Error(u8),
    /// `Rebooting...` or a similar announcement of an intended restart.
    Rebooting,
}

/// The meaning of one (part of a) line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Event {
    /// ROM banner: a new boot starts here.
    RomBanner(Banner),
    /// ROM: the hardware watchdog caused this reset.
    WdtReset,
    /// ROM in SDIO boot mode.
    WaitingForHost,
    /// ROM loader: `load ADDR, len L, room R`.
    Load {
        /// RAM address of the segment.
        addr: u32,
        /// Segment length.
        len: u32,
    },
    /// ROM loader: `chksum 0x..` (running checksum after a segment).
    Chksum(u8),
    /// ROM loader: `csum 0x..`.
    Csum(u8),
    /// ROM loader: the image checksum did not match.
    CsumErr,
    /// ROM loader bookkeeping (`tail N`, `room N`, `ho ...`): not diagnostic.
    LoaderDetail,
    /// ROM: `flash read err`.
    FlashReadErr,
    /// ROM: `ets_main.c`, printed when the ROM gives up and halts.
    EtsMain,
    /// eboot: `vXXXXXXXX`, the word at flash 0x1010 of the installed app.
    EbootVersion(u32),
    /// eboot: `@` (a command was found in RTC memory) or `~` (none).
    EbootCommand {
        /// `@` = found.
        found: bool,
    },
    /// eboot: `cp:` started a copy; the digit after it is the result, missing if the copy
    /// never finished.
    EbootCopy {
        /// 0 ok, 1..9 error code.
        result: Option<u8>,
    },
    /// eboot: `cmp:` (the verify step of some cores); the digit is the result.
    EbootVerify {
        /// 0 ok.
        result: Option<u8>,
    },
    /// eboot: `ld`, loading the app.
    EbootLoad,
    /// eboot: `e:N`, the app image could not be loaded.
    EbootError {
        /// 1 header, 2 segment header, 3 segment data.
        code: Option<u8>,
    },
    /// SDK second-stage boot loader or SDK start lines (`2nd boot version`, `jump to run`,
    /// `SDK ver:`): the app is starting.
    SdkStart,
    /// SDK: `rf_cal[0] !=0x05,is 0xFF`: the RF calibration sector is missing.
    RfCalMissing,
    /// Crash: `Exception (N):` (core postmortem) or `Fatal exception (N):` (SDK).
    Exception {
        /// EXCCAUSE.
        cause: u8,
        /// SDK format (no core postmortem handler).
        sdk: bool,
        /// Registers, when on the same line (boxed: crash lines are rare, and a smaller event
        /// is cheaper to move for every other line).
        regs: Box<Registers>,
    },
    /// Crash registers on their own line.
    Registers(Box<Registers>),
    /// `Soft WDT reset`.
    SoftWdt,
    /// Another postmortem cause.
    Postmortem(PostmortemKind),
    /// `CUT HERE FOR EXCEPTION DECODER` or the `To make this dump useful` header.
    CutHere,
    /// `ctx: cont|sys|bearssl`.
    Ctx(String),
    /// `sp: ... end: ... offset: ...`.
    StackPointer {
        /// Stack pointer.
        sp: u32,
        /// Stack end.
        end: u32,
    },
    /// `>>>stack>>>`.
    StackBegin,
    /// `<<<stack<<<`.
    StackEnd,
    /// `addr:  w w w w` inside a stack dump.
    StackWords {
        /// Address of the first word.
        addr: u32,
        /// The words; only the first `count` are set.
        words: [u32; 4],
        /// How many words the line had (0..=4).
        count: u8,
    },
    /// An app line reporting the previous reset (`Reset reason: ...`, `Fatal exception:N flag:F`).
    ResetInfo {
        /// Exception cause, when the line gives one.
        exception: Option<u8>,
        /// SDK `rst_info.reason` flag, when given.
        reason: Option<u8>,
    },
    /// Updater / OTA progress message.
    Update(UpdateEvent),
    /// The reference firmware's identity line (`HILFW app=... version=...`).
    Identity,
    /// A line the parser does not know: application output.
    Text,
    /// Bytes that are not text at the capture's baud rate.
    Garbage {
        /// How many bytes.
        bytes: u32,
    },
}

impl Event {
    /// True for lines printed by the ROM, eboot or the SDK boot loader (they arrive at 74880).
    pub fn is_boot_stage(&self) -> bool {
        matches!(
            self,
            Event::RomBanner(_)
                | Event::WdtReset
                | Event::WaitingForHost
                | Event::Load { .. }
                | Event::Chksum(_)
                | Event::Csum(_)
                | Event::CsumErr
                | Event::LoaderDetail
                | Event::FlashReadErr
                | Event::EtsMain
                | Event::EbootVersion(_)
                | Event::EbootCommand { .. }
                | Event::EbootCopy { .. }
                | Event::EbootVerify { .. }
                | Event::EbootLoad
                | Event::EbootError { .. }
        )
    }
}
