//! The chip: power, boot straps, reset cause, UART and which program runs, as one state machine.
//!
//! Every change of state is one named transition ([`Chip::power_on`], [`Chip::power_off`],
//! [`Chip::reset`], [`Chip::set_button`], [`Chip::on_rx`]). Output is not written anywhere: it is
//! queued as [`Output`] items (bytes at a baud rate, or a busy delay) that the caller drains, so
//! the whole model runs in unit tests without a pty or a clock.
//!
//! Strap latching (the seed's quirk): GPIO0/GPIO2/GPIO15 are sampled only by a power-on or an
//! external (RST/EN) reset. A software restart, a core reset and a watchdog reset keep the latched
//! value, so after a UART download session every soft restart comes back with boot mode 1 until
//! power is cycled (esp8266/Arduino #1017, #1722; shared docs boot-log.md §2).

use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use crate::board::{BoardProfile, Chip as ChipKind};
use crate::flash::proto::{self, Command, SlipDecoder};
use crate::ota::updater::eboot as eboot_block;

use super::app::App;
use super::control::CopyCut;
use super::eboot::Eboot;
use super::flash_model::Flash;
use super::net::{NetShared, NetState, OtaReply, OtaRequest, OtaService};
use super::port::ServicePorts;
use super::regs::Registers;
use super::rom_loader::RomLoader;
use super::stub::{Stub, StubKind};
use super::uart;

/// ROM rst cause a software restart (`ESP.restart()`, `system_restart`) shows in most reports
/// (esp8266/Arduino #1722, #3432). Some reports show 1 instead (#1107 and the seed, both after an
/// OTA update), so [`ResetKind::SoftRestart`] takes the cause as a parameter.
pub const SOFT_RESTART_CAUSE: u8 = 2;

/// Value the ROM puts in the SYNC response's value field. esptool only needs it non-zero (zero
/// means "a stub is already running"); 0x20120707 echoes the first SYNC payload word, as ROM
/// SYNC replies in esptool `--trace` output do (recalled from traces, not verified here).
pub const ROM_SYNC_VALUE: u32 = 0x2012_0707;

/// Lowest host rate the ROM's autobaud locks onto (an assumption: the real detector measures
/// pulse widths and has no documented range).
pub const AUTOBAUD_MIN: u32 = 1200;
/// Highest host rate the ROM's autobaud locks onto (an assumption, see [`AUTOBAUD_MIN`]).
pub const AUTOBAUD_MAX: u32 = 3_000_000;

/// Hardware watchdog timeout: about 8.2 s, measured by
/// <https://sigmdel.ca/michel/program/esp8266/arduino/watchdogs_en.html> (also quoted by
/// <https://www.weigu.lu/microcontroller/tips_tricks/watchdog_tips_tricks/>); shared docs
/// boot-log.md §6 give 6–8 s.
pub const HW_WDT_TIMEOUT: Duration = Duration::from_millis(8200);

/// The two numbers the ROM prints as `boot mode:(X,Y)`.
///
/// X is (GPIO15 << 2) | (GPIO0 << 1) | GPIO2 as latched at reset: 1 = UART download, 3 = flash
/// boot. Y is GPIO_IN bits 29..31, undocumented; 6 and 7 are typical (boot-log.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootMode {
    /// Strap value X.
    pub x: u8,
    /// The undocumented Y.
    pub y: u8,
}

impl BootMode {
    /// Whether X selects the ROM's UART download mode.
    pub fn is_download(self) -> bool {
        self.x == 1
    }
}

/// How the chip is reset: decides whether the straps are sampled and the rst cause printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    /// Power applied: rst cause 1, straps sampled.
    PowerOn,
    /// RST/EN pin pulled low and released: rst cause 2, straps sampled.
    External,
    /// A software restart (`ESP.restart()`, the ROM's FLASH_END reboot, the legacy stub's
    /// reboot): the given rst cause (usually [`SOFT_RESTART_CAUSE`]), straps kept.
    SoftRestart {
        /// The rst cause the ROM will print.
        rom_cause: u8,
    },
    /// Software reset of the digital core (eboot after a failed copy): rst cause 3, straps kept.
    CoreReset,
    /// Hardware watchdog: rst cause 4 and a `wdt reset` line, straps kept.
    Watchdog,
}

impl ResetKind {
    /// The RTC reset reason the ROM prints for this reset.
    pub fn rom_cause(self) -> u8 {
        match self {
            ResetKind::PowerOn => 1,
            ResetKind::External => 2,
            ResetKind::SoftRestart { rom_cause } => rom_cause,
            ResetKind::CoreReset => 3,
            ResetKind::Watchdog => 4,
        }
    }

    /// Whether this reset samples the boot straps again.
    pub fn samples_straps(self) -> bool {
        matches!(self, ResetKind::PowerOn | ResetKind::External)
    }

    /// Whether this reset cuts off what the UART was still sending. Firmware that restarts
    /// itself (the stub after its FLASH_END reply, `ESP.restart()`) lets the UART drain first;
    /// a reset pin, a power loss or the watchdog does not wait.
    pub fn cuts_output(self) -> bool {
        !matches!(self, ResetKind::SoftRestart { .. } | ResetKind::CoreReset)
    }
}

/// What the CPU is running.
#[derive(Debug)]
pub enum Program {
    /// No power.
    Off,
    /// The ROM's UART download loop (boot mode 1).
    RomDownload(RomLoader),
    /// An esptool flasher stub uploaded through the ROM.
    Stub(Stub),
    /// Code uploaded to RAM that the simulator cannot run; the chip is silent.
    RamCode,
    /// The ROM stopped after printing why (`ets_main.c`, `unknown reset`).
    Halted,
    /// eboot copying a staged OTA image (see [`super::eboot`]).
    Eboot(Eboot),
    /// An application loaded from flash (see [`super::app`]).
    App(Box<App>),
    /// Code runs but prints nothing and never returns (a wild jump, an oversized segment).
    Hung,
    /// A reset is due at `at` (device time), once the UART has sent what is queued.
    Restarting {
        /// When.
        at: Duration,
        /// Which reset.
        kind: ResetKind,
    },
}

impl Program {
    /// Short name used in `status` answers.
    pub fn name(&self) -> &'static str {
        match self {
            Program::Off => "off",
            Program::RomDownload(_) => "rom-download",
            Program::Stub(_) => "stub",
            Program::RamCode => "ram-code",
            Program::Halted => "halted",
            Program::Eboot(_) => "eboot-copy",
            Program::App(_) => "app",
            Program::Hung => "hung",
            Program::Restarting { .. } => "restarting",
        }
    }

    /// Whether the running code keeps the hardware watchdog fed. The ROM's download loop and
    /// a halted ROM do not (after a software restart the watchdog the app armed fires there,
    /// failure-modes.md A); the stub, eboot and a healthy app do.
    fn feeds_wdt(&self) -> bool {
        match self {
            Program::Off | Program::RomDownload(_) | Program::RamCode | Program::Halted => false,
            Program::Hung => false,
            Program::App(app) => app.feeds_wdt(),
            Program::Stub(_) | Program::Eboot(_) | Program::Restarting { .. } => true,
        }
    }
}

/// What a flash-boot program asks the chip to do next.
#[derive(Debug)]
pub enum Flow {
    /// Nothing changes.
    Stay,
    /// Reset now.
    Reset(ResetKind),
    /// Switch the board's power off (a fault knob).
    PowerOff,
}

/// The board's network side: what the firmware publishes for the OTA servers.
#[derive(Debug, Clone)]
pub struct NetLink {
    /// Shared with the servers.
    pub shared: Arc<NetShared>,
    /// The servers' real ports.
    pub ports: Arc<ServicePorts>,
}

/// Fault knobs set over the control channel (see [`super::control`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// Cut the power during eboot's copy once this many sectors are done (`erased`: also
    /// after erasing the next one, before writing it).
    pub power_cut_during_copy: Option<CopyCut>,
    /// Cut the power once this many flash data blocks have been written by a loader.
    pub power_cut_during_flash: Option<u32>,
    /// Flash data blocks seen since that knob was armed.
    pub flash_blocks: u32,
    /// Cut the power once the Updater has been handed this many bytes.
    pub power_cut_during_ota: Option<u64>,
    /// OTA bytes handed to the Updater since that knob was armed.
    pub ota_bytes: u64,
    /// The ROM download loop never answers.
    pub rom_silent: bool,
    /// Apps print nothing.
    pub app_silent: bool,
}

impl Faults {
    /// The armed knobs as `status` words (`flash-cut:3`), in a fixed order.
    pub fn words(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(c) = self.power_cut_during_copy {
            out.push(format!(
                "copy-cut:{}{}",
                c.sectors,
                if c.erased { "-erased" } else { "" }
            ));
        }
        if let Some(n) = self.power_cut_during_flash {
            out.push(format!("flash-cut:{n}"));
        }
        if let Some(n) = self.power_cut_during_ota {
            out.push(format!("ota-cut:{n}"));
        }
        if self.rom_silent {
            out.push("rom-silent".into());
        }
        if self.app_silent {
            out.push("app-silent".into());
        }
        out
    }
}

/// What the chip put on its UART TX pin, or a pause while it was busy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Bytes transmitted at `baud`.
    Tx {
        /// The bytes.
        bytes: Vec<u8>,
        /// The chip's transmit rate.
        baud: u32,
        /// Power/reset generation they belong to (stale ones are dropped on reset).
        epoch: u64,
        /// Device time at which the first byte goes on the wire.
        at: Duration,
    },
    /// The chip is busy (flash erase/program) before its next output.
    Delay {
        /// How long.
        duration: Duration,
        /// Power/reset generation.
        epoch: u64,
    },
}

/// How the UART receiver is clocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxMode {
    /// The ROM download loop before its autobaud has locked onto a SYNC.
    Autobaud,
    /// A fixed rate.
    Fixed(u32),
}

/// An action a loader asks the chip to take once its reply is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Leave the loader and boot from flash without sampling the straps (ROM FLASH_END with
    /// "run user code", legacy stub RUN_USER_CODE).
    RunUserCode,
    /// Software restart back into the ROM (ROM FLASH_END with "reboot").
    Reboot,
    /// Jump to RAM code at `entry` (MEM_END with flag 0).
    Jump {
        /// Entry point.
        entry: u32,
    },
    /// Change the UART rate to `baud` (after the reply went out at the old rate).
    SetBaud {
        /// New rate.
        baud: u32,
    },
}

/// A RAM segment uploaded with MEM_BEGIN/MEM_DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamSegment {
    /// Load address.
    pub addr: u32,
    /// Contents (as received so far; unreceived bytes are 0).
    pub data: Vec<u8>,
}

/// The chip's hardware resources and bookkeeping, shared by every program.
#[derive(Debug)]
pub struct Hw {
    /// The board this chip sits on.
    pub board: &'static BoardProfile,
    /// SPI flash.
    pub flash: Flash,
    /// Memory-mapped registers.
    pub regs: Registers,
    /// RAM uploads since the last reset.
    pub ram: Vec<RamSegment>,
    /// UART transmit rate.
    pub tx_baud: u32,
    /// UART receive clocking.
    pub rx: RxMode,
    /// Power switch.
    pub powered: bool,
    /// GPIO0 held low (button pressed / boot strap asserted).
    pub gpio0_low: bool,
    /// Straps latched at the last power-on or external reset.
    pub latched: Option<BootMode>,
    /// RTC reset reason of the last reset.
    pub rst_cause: Option<u8>,
    /// The firmware was started by the ROM loader (FLASH_END "run user code") without a reset,
    /// so the latched boot mode is still 1; a later part needs this to reproduce the seed.
    pub soft_started_after_download: bool,
    /// SPI flash attached by the ROM (flash boot, or FLASH_BEGIN in the loader).
    pub flash_attached: bool,
    /// Emit [`Output::Delay`] for flash busy times.
    pub realistic: bool,
    /// Device time now (set by the chip thread, or by tests).
    pub now: Duration,
    /// RTC user memory at 0x60001200: eboot's command block. Survives software, core and
    /// watchdog resets, not a power cut (failure-modes.md, intro).
    pub rtc: [u32; eboot_block::WORDS],
    /// The hardware watchdog is enabled (the SDK arms it; eboot turns it off for its copy).
    pub wdt_enabled: bool,
    /// When the unfed watchdog fires.
    pub wdt_deadline: Option<Duration>,
    /// Device time when the UART has sent everything queued so far.
    pub tx_busy_until: Duration,
    /// eboot copied an OTA image during this boot (the app then runs its first boot after an
    /// update).
    pub booted_after_copy: bool,
    /// Counts UPDATE periods over the simulator's life ([`OtaService::generation`]).
    pub ota_generation: u64,
    /// The network side, if the simulator has one.
    pub net: Option<NetLink>,
    /// Fault knobs.
    pub faults: Faults,
    /// The UART prints nothing (an app started under `fault app-silent`); cleared by every
    /// reset and power cut.
    pub muted: bool,
    epoch: u64,
    out: Vec<Output>,
    /// Device time at which each queued item has left the UART.
    out_ends: Vec<Duration>,
}

impl Hw {
    /// A power cut or reset: what the UART had already sent by now stays (restamped with the
    /// new epoch so the writer keeps it), the rest is lost.
    fn cut_output(&mut self) {
        self.epoch += 1;
        let now = self.now;
        let epoch = self.epoch;
        let items = std::mem::take(&mut self.out);
        let ends = std::mem::take(&mut self.out_ends);
        for (mut item, end) in items.into_iter().zip(ends) {
            if end > now {
                break;
            }
            match &mut item {
                Output::Tx { epoch: e, .. } | Output::Delay { epoch: e, .. } => *e = epoch,
            }
            self.out.push(item);
            self.out_ends.push(end);
        }
        self.tx_busy_until = now;
    }

    /// Queues `bytes` for transmission at the current rate.
    pub fn send(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() && !self.muted {
            let start = self.tx_busy_until.max(self.now);
            self.tx_busy_until = start + super::pty::byte_time(bytes.len(), self.tx_baud);
            self.out_ends.push(self.tx_busy_until);
            self.out.push(Output::Tx {
                bytes,
                baud: self.tx_baud,
                epoch: self.epoch,
                at: start,
            });
        }
    }

    /// Queues ROM/firmware text (already with `\r\n` line ends, as `ets_printf` sends them).
    pub fn print(&mut self, text: &str) {
        self.send(text.as_bytes().to_vec());
    }

    /// Queues one SLIP-framed packet.
    pub fn send_frame(&mut self, packet: &[u8]) {
        self.send(proto::slip_encode(packet));
    }

    /// Records that the chip is busy for `duration` before its next output (realistic timing).
    pub fn busy(&mut self, duration: Duration) {
        if self.realistic && !duration.is_zero() {
            self.out_ends.push(self.now);
            self.out.push(Output::Delay {
                duration,
                epoch: self.epoch,
            });
        }
    }

    /// Sets both UART directions to `baud` and programs the divider accordingly.
    pub fn set_baud(&mut self, baud: u32) {
        self.tx_baud = baud;
        self.rx = RxMode::Fixed(baud);
        self.regs.set_uart_baud(baud);
    }

    /// Current power/reset generation.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Publishes the OTA service (or its absence) for the servers.
    pub fn publish_service(&mut self, service: Option<OtaService>) {
        if let Some(net) = &self.net {
            let current = net.shared.get();
            if current.service != service {
                net.shared.set(NetState {
                    ip: current.ip,
                    service,
                });
            }
        }
    }

    /// The board's IP address (127.0.0.1 without a network side).
    pub fn ip(&self) -> std::net::Ipv4Addr {
        self.net
            .as_ref()
            .map_or(std::net::Ipv4Addr::LOCALHOST, |n| n.shared.get().ip)
    }

    /// The boot mode the straps give right now (what a reset would latch).
    pub fn sample_straps(&self) -> BootMode {
        // GPIO15 is held low by the board (relay 4 driver on the 4CH, pull-down on the Basic)
        // and GPIO2 floats high, so only GPIO0 decides between 1 and 3.
        let gpio0 = u8::from(!self.gpio0_low);
        BootMode {
            x: (gpio0 << 1) | 1,
            y: boot_mode_y(self.board),
        }
    }
}

/// Y of `boot mode:(X,Y)` for a board: the seed's Sonoff Basic (ESP8266) prints 6 and its
/// Sonoff 4CH (ESP8285) prints 7.
fn boot_mode_y(board: &BoardProfile) -> u8 {
    match board.chip {
        ChipKind::Esp8266 => 6,
        ChipKind::Esp8285 => 7,
    }
}

/// One snapshot of the chip for `status` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Power switch.
    pub powered: bool,
    /// Button (GPIO0) held down.
    pub button_down: bool,
    /// Latched boot mode, if powered.
    pub boot_mode: Option<BootMode>,
    /// Last rst cause, if powered.
    pub rst_cause: Option<u8>,
    /// Program name ([`Program::name`]).
    pub state: &'static str,
    /// See [`Hw::soft_started_after_download`].
    pub soft_started_after_download: bool,
    /// UART transmit rate.
    pub uart_tx: u32,
    /// UART receive rate, `None` while autobauding.
    pub uart_rx: Option<u32>,
    /// Program-specific `key=value` words (eboot's sector, the app's state).
    pub detail: Option<String>,
    /// An eboot command is waiting in RTC memory.
    pub rtc_command: bool,
    /// Armed fault knobs ([`Faults::words`], plus the network's).
    pub faults: Vec<String>,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let onoff = |b: bool| if b { "on" } else { "off" };
        write!(
            f,
            "power={} button={}",
            onoff(self.powered),
            if self.button_down { "down" } else { "up" }
        )?;
        match self.boot_mode {
            Some(m) => write!(f, " boot_mode={},{}", m.x, m.y)?,
            None => write!(f, " boot_mode=-")?,
        }
        match self.rst_cause {
            Some(c) => write!(f, " rst_cause={c}")?,
            None => write!(f, " rst_cause=-")?,
        }
        write!(
            f,
            " state={} soft_started={}",
            self.state,
            if self.soft_started_after_download {
                "yes"
            } else {
                "no"
            }
        )?;
        write!(f, " uart_tx={}", self.uart_tx)?;
        match self.uart_rx {
            Some(r) => write!(f, " uart_rx={r}")?,
            None => write!(f, " uart_rx=auto")?,
        }
        write!(
            f,
            " rtc_cmd={}",
            if self.rtc_command { "yes" } else { "no" }
        )?;
        if !self.faults.is_empty() {
            write!(f, " faults={}", self.faults.join(","))?;
        }
        if let Some(detail) = &self.detail {
            write!(f, " {detail}")?;
        }
        Ok(())
    }
}

/// The chip.
#[derive(Debug)]
pub struct Chip {
    /// Hardware resources.
    pub hw: Hw,
    program: Program,
    rx_frames: SlipDecoder,
}

impl Chip {
    /// An unpowered chip on `board` with `flash`.
    pub fn new(board: &'static BoardProfile, flash: Flash, realistic: bool) -> Self {
        Chip {
            hw: Hw {
                board,
                flash,
                regs: Registers::new(board),
                ram: Vec::new(),
                tx_baud: proto::ROM_PRINT_BAUD,
                rx: RxMode::Fixed(proto::ROM_PRINT_BAUD),
                powered: false,
                gpio0_low: false,
                latched: None,
                rst_cause: None,
                soft_started_after_download: false,
                flash_attached: false,
                realistic,
                now: Duration::ZERO,
                rtc: [0; eboot_block::WORDS],
                wdt_enabled: false,
                wdt_deadline: None,
                tx_busy_until: Duration::ZERO,
                booted_after_copy: false,
                ota_generation: 0,
                net: None,
                faults: Faults::default(),
                muted: false,
                epoch: 0,
                out: Vec::new(),
                out_ends: Vec::new(),
            },
            program: Program::Off,
            rx_frames: SlipDecoder::new(),
        }
    }

    /// What the CPU runs.
    #[cfg(test)]
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Drains the queued output.
    pub fn take_output(&mut self) -> Vec<Output> {
        self.hw.out_ends.clear();
        std::mem::take(&mut self.hw.out)
    }

    /// A status snapshot.
    pub fn status(&self) -> Status {
        Status {
            powered: self.hw.powered,
            button_down: self.hw.gpio0_low,
            boot_mode: self.hw.latched,
            rst_cause: self.hw.rst_cause,
            state: self.program.name(),
            soft_started_after_download: self.hw.soft_started_after_download,
            uart_tx: self.hw.tx_baud,
            uart_rx: match self.hw.rx {
                RxMode::Autobaud => None,
                RxMode::Fixed(r) => Some(r),
            },
            detail: match &self.program {
                Program::Eboot(e) => Some(e.status()),
                Program::App(a) => Some(a.status(&self.hw)),
                _ => None,
            },
            rtc_command: crate::ota::updater::EbootCommand::from_words(&self.hw.rtc).is_ok(),
            faults: {
                let mut words = self.hw.faults.words();
                if let Some(n) = self.hw.net.as_ref().and_then(|n| n.shared.reset_armed()) {
                    words.push(format!("ota-reset:{n}"));
                }
                words
            },
        }
    }

    /// Transition: apply power. No effect if already powered.
    pub fn power_on(&mut self) {
        if self.hw.powered {
            return;
        }
        self.hw.powered = true;
        self.reset(ResetKind::PowerOn);
    }

    /// Transition: remove power. RAM, RTC memory, latched straps and queued output are lost.
    pub fn power_off(&mut self) {
        self.hw.muted = false;
        self.hw.publish_service(None);
        self.hw.rtc = [0; eboot_block::WORDS];
        self.hw.wdt_enabled = false;
        self.hw.wdt_deadline = None;
        self.hw.booted_after_copy = false;
        self.hw.cut_output();
        self.hw.powered = false;
        self.hw.latched = None;
        self.hw.rst_cause = None;
        self.hw.soft_started_after_download = false;
        self.hw.flash_attached = false;
        self.hw.ram.clear();
        self.hw.regs.reset();
        self.hw.set_baud(proto::ROM_PRINT_BAUD);
        self.rx_frames.reset();
        self.program = Program::Off;
    }

    /// Transition: press (`true`) or release the button on GPIO0. The straps see it at the next
    /// reset that samples them; a running app sees it as its button.
    pub fn set_button(&mut self, down: bool) {
        let changed = self.hw.gpio0_low != down;
        self.hw.gpio0_low = down;
        if changed && let Program::App(app) = &mut self.program {
            app.on_button(&mut self.hw, down);
        }
    }

    /// Transition: reset the powered chip and run the ROM.
    pub fn reset(&mut self, kind: ResetKind) {
        if !self.hw.powered {
            return;
        }
        if kind.cuts_output() {
            self.hw.cut_output();
        }
        self.hw.muted = false;
        if kind.samples_straps() || self.hw.latched.is_none() {
            self.hw.latched = Some(self.hw.sample_straps());
            self.hw.soft_started_after_download = false;
        }
        self.hw.publish_service(None);
        // A software restart leaves the watchdog running (eboot.c: "after a soft restart the
        // WDT is already enabled"); every other reset stops it.
        if !matches!(kind, ResetKind::SoftRestart { .. }) {
            self.hw.wdt_enabled = false;
        }
        self.hw.wdt_deadline = None;
        self.hw.booted_after_copy = false;
        self.hw.rst_cause = Some(kind.rom_cause());
        self.hw.flash_attached = false;
        self.hw.ram.clear();
        self.hw.regs.reset();
        self.rx_frames.reset();
        self.program = Program::Off;
        super::rom::rom_main(self);
        self.after_program_change();
    }

    pub(crate) fn set_program(&mut self, program: Program) {
        self.program = program;
    }

    /// Re-evaluates the hardware watchdog after the program changed: it counts down while
    /// enabled and not fed, and stops counting while fed.
    pub(crate) fn after_program_change(&mut self) {
        if self.hw.powered && self.hw.wdt_enabled && !self.program.feeds_wdt() {
            if self.hw.wdt_deadline.is_none() {
                self.hw.wdt_deadline = Some(self.hw.now + HW_WDT_TIMEOUT);
            }
        } else {
            self.hw.wdt_deadline = None;
        }
    }

    /// Sets the device time (never backwards).
    pub fn set_time(&mut self, now: Duration) {
        self.hw.now = self.hw.now.max(now);
    }

    /// The next device time at which something is due, if any.
    pub fn next_deadline(&self) -> Option<Duration> {
        if !self.hw.powered {
            return None;
        }
        let program = match &self.program {
            Program::Eboot(e) => e.deadline(),
            Program::App(a) => a.deadline(),
            Program::Restarting { at, .. } => Some(*at),
            _ => None,
        };
        [program, self.hw.wdt_deadline].into_iter().flatten().min()
    }

    /// Advances device time to `now`, firing everything due on the way, each at its own time.
    pub fn advance(&mut self, now: Duration) {
        // Each firing either consumes its deadline or moves it later; the bound only guards
        // against a model bug spinning the chip thread.
        for _ in 0..100_000 {
            match self.next_deadline() {
                Some(due) if due <= now => {
                    self.hw.now = self.hw.now.max(due);
                    self.fire();
                }
                _ => break,
            }
        }
        self.set_time(now);
    }

    fn fire(&mut self) {
        let now = self.hw.now;
        if self.hw.wdt_deadline.is_some_and(|d| d <= now) {
            self.hw.wdt_deadline = None;
            self.reset(ResetKind::Watchdog);
            return;
        }
        let flow = match std::mem::replace(&mut self.program, Program::Off) {
            Program::Eboot(mut e) => {
                let (next, flow) = e.on_timer(&mut self.hw);
                self.program = next.unwrap_or(Program::Eboot(e));
                flow
            }
            Program::App(mut app) => {
                let flow = app.on_timer(&mut self.hw);
                self.program = Program::App(app);
                flow
            }
            Program::Restarting { at, kind } if at <= now => Flow::Reset(kind),
            other => {
                self.program = other;
                Flow::Stay
            }
        };
        self.apply_flow(flow);
        self.after_program_change();
    }

    fn apply_flow(&mut self, flow: Flow) {
        match flow {
            Flow::Stay => {}
            Flow::Reset(kind) => self.reset(kind),
            Flow::PowerOff => self.power_off(),
        }
    }

    /// A request of an OTA server; the answer goes to `reply` (maybe later, when the flash
    /// operation it started is done).
    pub fn on_ota(&mut self, generation: u64, request: OtaRequest, reply: Sender<OtaReply>) {
        match &mut self.program {
            Program::App(app) if self.hw.powered => {
                let written = match &request {
                    OtaRequest::Write(data) => data.len() as u64,
                    _ => 0,
                };
                let flow = app.on_ota(&mut self.hw, generation, request, reply);
                self.apply_flow(flow);
                if written > 0 && self.ota_cut_due(written) {
                    self.power_off();
                }
                self.after_program_change();
            }
            _ => {
                let _ = reply.send(OtaReply::NotRunning);
            }
        }
    }

    /// Counts `written` OTA bytes against `fault power-cut-during-ota`; true when the cut is
    /// due now (the knob is then disarmed).
    fn ota_cut_due(&mut self, written: u64) -> bool {
        let Some(limit) = self.hw.faults.power_cut_during_ota else {
            return false;
        };
        self.hw.faults.ota_bytes += written;
        if self.hw.faults.ota_bytes < limit {
            return false;
        }
        tracing::info!(limit, "fault: power cut during the OTA upload");
        self.hw.faults.power_cut_during_ota = None;
        self.hw.faults.ota_bytes = 0;
        true
    }

    /// Counts a loader's frame against `fault power-cut-during-flash`; true when the cut is due
    /// now (the knob is then disarmed).
    fn flash_cut_due(&mut self, frame: &[u8]) -> bool {
        let Some(limit) = self.hw.faults.power_cut_during_flash else {
            return false;
        };
        match Command::parse(frame).map(|c| c.op) {
            Ok(proto::Op::FlashBegin | proto::Op::FlashDeflBegin) if limit == 0 => {}
            Ok(proto::Op::FlashData | proto::Op::FlashDeflData) => {
                self.hw.faults.flash_blocks += 1;
                if self.hw.faults.flash_blocks < limit {
                    return false;
                }
            }
            _ => return false,
        }
        tracing::info!(limit, "fault: power cut during the serial flash");
        self.hw.faults.power_cut_during_flash = None;
        self.hw.faults.flash_blocks = 0;
        true
    }

    /// Transition: bytes arrived on UART RX, sent by the host at `host_baud`.
    pub fn on_rx(&mut self, bytes: &[u8], host_baud: u32) {
        if !self.hw.powered || bytes.is_empty() {
            return;
        }
        let wire = match self.hw.rx {
            // Before autobaud the ROM measures the host's own rate, so it reads the bytes as sent.
            RxMode::Autobaud => bytes.to_vec(),
            RxMode::Fixed(rate) => uart::resample(bytes, host_baud, rate),
        };
        for item in self.rx_frames.push(&wire) {
            let Ok(frame) = item else { continue };
            self.on_frame(&frame, host_baud);
        }
    }

    fn on_frame(&mut self, frame: &[u8], host_baud: u32) {
        let program = std::mem::replace(&mut self.program, Program::Off);
        let (program, action) = match program {
            Program::RomDownload(loader) if self.hw.faults.rom_silent => {
                // `fault rom-silent`: the loop takes the bytes and never answers.
                self.program = Program::RomDownload(loader);
                return;
            }
            Program::RomDownload(mut loader) => {
                if self.hw.rx == RxMode::Autobaud {
                    // The ROM's autobaud locks onto the first SYNC; anything before is lost.
                    let is_sync = Command::parse(frame).is_ok_and(|c| c.op == proto::Op::Sync);
                    if !is_sync || !(AUTOBAUD_MIN..=AUTOBAUD_MAX).contains(&host_baud) {
                        self.program = Program::RomDownload(loader);
                        return;
                    }
                    self.hw.set_baud(host_baud);
                }
                let action = loader.on_frame(frame, &mut self.hw);
                (Program::RomDownload(loader), action)
            }
            Program::Stub(mut stub) => {
                let action = stub.on_frame(frame, &mut self.hw);
                (Program::Stub(stub), action)
            }
            other => {
                self.program = other;
                return;
            }
        };
        self.program = program;
        if self.flash_cut_due(frame) {
            // The block is written; the power goes before its reply leaves the UART.
            self.power_off();
            self.after_program_change();
            return;
        }
        self.apply(action);
    }

    fn apply(&mut self, action: Action) {
        self.apply_action(action);
        self.after_program_change();
    }

    fn apply_action(&mut self, action: Action) {
        match action {
            Action::None => {}
            Action::SetBaud { baud } => self.hw.set_baud(baud),
            Action::Reboot => self.reset(ResetKind::SoftRestart {
                rom_cause: SOFT_RESTART_CAUSE,
            }),
            Action::RunUserCode => {
                // The ROM leaves the loader and boots from flash; the straps are not sampled
                // again, so the boot mode stays 1 (the seed's quirk).
                self.hw.soft_started_after_download = true;
                self.rx_frames.reset();
                super::boot::boot_from_flash(self);
            }
            Action::Jump { entry } => {
                self.rx_frames.reset();
                match StubKind::recognise(entry, &self.hw.ram) {
                    Some(kind) => {
                        let stub = Stub::start(kind, &mut self.hw);
                        self.program = Program::Stub(stub);
                    }
                    None => {
                        tracing::warn!(
                            entry = format_args!("{entry:#010x}"),
                            "RAM code is not a known esptool stub; the simulated CPU cannot run it"
                        );
                        self.program = Program::RamCode;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::board;

    /// A powered-off chip on `board` with in-memory flash.
    pub(crate) fn chip(board_id: &str) -> Chip {
        let b = board::find(board_id).unwrap();
        Chip::new(b, Flash::in_memory(b.flash_size), false)
    }

    /// All transmitted bytes, ignoring rates.
    pub(crate) fn tx_bytes(out: &[Output]) -> Vec<u8> {
        out.iter()
            .filter_map(|o| match o {
                Output::Tx { bytes, .. } => Some(bytes.clone()),
                Output::Delay { .. } => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn power_on_with_button_held_enters_download_mode() {
        let mut c = chip("sonoff-basic");
        c.set_button(true);
        c.power_on();
        let out = c.take_output();
        assert_eq!(
            out,
            vec![Output::Tx {
                bytes: b"\r\n ets Jan  8 2013,rst cause:1, boot mode:(1,6)\r\n\r\n".to_vec(),
                baud: 74_880,
                epoch: c.hw.epoch(),
                at: Duration::ZERO,
            }]
        );
        assert_eq!(c.program().name(), "rom-download");
        assert_eq!(c.status().uart_rx, None, "waiting for autobaud");
    }

    #[test]
    fn erased_flash_boot_prints_ets_main_and_halts() {
        let mut c = chip("sonoff-4ch");
        c.power_on();
        let text = String::from_utf8(tx_bytes(&c.take_output())).unwrap();
        assert_eq!(
            text,
            "\r\n ets Jan  8 2013,rst cause:1, boot mode:(3,7)\r\n\r\nets_main.c \r\n"
        );
        assert_eq!(c.program().name(), "halted");
    }

    #[test]
    fn straps_latch_across_soft_and_watchdog_resets() {
        let mut c = chip("sonoff-basic");
        c.set_button(true);
        c.power_on();
        c.set_button(false);
        c.take_output();
        c.reset(ResetKind::SoftRestart {
            rom_cause: SOFT_RESTART_CAUSE,
        });
        let text = String::from_utf8(tx_bytes(&c.take_output())).unwrap();
        assert!(text.contains("rst cause:2, boot mode:(1,6)"), "{text}");
        c.reset(ResetKind::Watchdog);
        let text = String::from_utf8(tx_bytes(&c.take_output())).unwrap();
        assert_eq!(
            text,
            "\r\n ets Jan  8 2013,rst cause:4, boot mode:(1,6)\r\n\r\nwdt reset\r\n"
        );
        assert_eq!(c.program().name(), "rom-download");
        // An external reset samples the (released) button again.
        c.reset(ResetKind::External);
        let text = String::from_utf8(tx_bytes(&c.take_output())).unwrap();
        assert!(text.contains("rst cause:2, boot mode:(3,6)"), "{text}");
        // A power cycle too, and it is a power-on reset.
        c.set_button(true);
        c.power_off();
        assert_eq!(c.status().boot_mode, None);
        c.power_on();
        let text = String::from_utf8(tx_bytes(&c.take_output())).unwrap();
        assert!(text.contains("rst cause:1, boot mode:(1,6)"), "{text}");
    }

    #[test]
    fn core_reset_does_not_enter_download_and_flash_is_not_attached() {
        // rst cause 3 skips the ROM's boot-device setup; the flash boot then fails (corpus:
        // checksum-error-01 shows `rst cause:3` followed by `ets_main.c`).
        let mut c = chip("sonoff-basic");
        c.set_button(true);
        c.power_on();
        c.take_output();
        c.reset(ResetKind::CoreReset);
        let text = String::from_utf8(tx_bytes(&c.take_output())).unwrap();
        assert_eq!(
            text,
            "\r\n ets Jan  8 2013,rst cause:3, boot mode:(1,6)\r\n\r\nets_main.c \r\n"
        );
    }

    #[test]
    fn power_off_drops_input_and_output() {
        let mut c = chip("sonoff-basic");
        c.on_rx(&Command::sync().to_slip(), 115_200);
        assert!(c.take_output().is_empty());
        c.power_on();
        let e = c.hw.epoch();
        c.power_off();
        assert!(c.take_output().is_empty());
        assert!(c.hw.epoch() > e);
        assert_eq!(
            c.status().to_string(),
            "power=off button=up boot_mode=- rst_cause=- state=off soft_started=no uart_tx=74880 uart_rx=74880 rtc_cmd=no"
        );
    }
}
