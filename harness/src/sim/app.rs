//! The application the boot loader jumps to: the reference firmware, any other image, or what a
//! broken flash makes of them.
//!
//! The simulator cannot execute Xtensa code, so it decides from the flash contents what the
//! code would do ([`launch`]):
//!
//! - the header at 0x0 asks for a flash mode the board cannot run (QIO/QOUT/DIO on the
//!   ESP8285): the app dies at its first instruction fetched through the flash cache, before the
//!   core has set up the UART: the SDK prints `Fatal exception (0): ` and a register line (with
//!   commas, corpus flash-config-mismatch-01) at 74880 baud, epc1 in irom0 (0x402xxxxx), and
//!   the chip restarts with rst cause 2, in a loop;
//! - the app image's checksum is wrong (a copy cut short left it half new, half old) or a
//!   segment points outside RAM: the app crashes at boot with a core postmortem
//!   (`Exception (3)`, LoadStoreError) at 115200 and restarts with rst cause 2, in a loop: what
//!   a capture at the ROM's rate shows as ROM lines and garbage, at the app's rate as garbage
//!   and crash dumps (failure-modes.md B: "garbage or boot loops"). The exception number is a
//!   plausible pick for code that is half one build and half another, not a derived fact;
//! - an image whose identity record names the reference firmware (`app=sonoff-ota`): the
//!   firmware of `firmware/sonoff-ota`, driven by `firmware/behaviour.toml` (every line it
//!   prints comes from [`behaviour()`] templates), with the fault its identity names;
//! - any other valid image: prints `HILFW app=.. version=.. ota=..` once if it has an identity
//!   record, otherwise nothing, and runs quietly.
//!
//! # Timing (device time)
//!
//! - [`SETUP_DELAY`] from the jump to `setup()`: the SDK's start-up (an estimate; it is also
//!   the window in which a capture tool switches from 74880 to 115200 after `ld`);
//! - [`WIFI_CONNECT_DELAY`] from `setup()` to the station's address (an estimate);
//! - [`SOFT_WDT_TIMEOUT`] 3.2 s and the hardware watchdog 8.2 s
//!   ([`super::chip::HW_WDT_TIMEOUT`]), measured by
//!   <https://sigmdel.ca/michel/program/esp8266/arduino/watchdogs_en.html>;
//! - a postmortem ends with `ets_delay_us(10000)` before the restart
//!   (core_esp8266_postmortem.cpp), after the UART has sent the dump.
//!
//! # Restarts
//!
//! `ESP.restart()` comes back with ROM rst cause 1 on cores before 2.4.0 and 2 after: the field
//! report (an old core, `v3ffe903d`) and esp8266/Arduino #1107 (2015) show 1 after an OTA
//! restart, most later reports show 2 (#1722, #3432). That split by core version is a modelling
//! choice that reproduces the seed, not a documented rule. A crash restarts with rst cause 2
//! (corpus exception-crash-01/-03), the soft watchdog too.
//!
//! # OTA
//!
//! In UPDATE the firmware publishes its service ([`OtaService`]) and answers the servers'
//! requests with the core's Updater ([`UpdateSession`]), writing the simulated flash; a
//! request's answer waits for the flash busy time (erase 45 ms per sector, program 0.7 ms per
//! page). The core model ([`CoreModel::for_version`]) comes from the identity's `core=` word
//! (3.1.2 when absent), the linked flash layout from the running header's flash size
//! ([`linked_layout`]), the strap value from the latched boot mode. The service's password is
//! the identity record's `password=` word (`harness image make --password`, a test-image
//! convenience standing for the build's `SMN_OTA_PASSWORD`); the `no-ota` fault enters UPDATE
//! without starting the service.
//!
//! # Button
//!
//! The `button down`/`up` control lines are the raw GPIO0 level; the sketch's `pollButton`
//! runs at every edge and timer: the level must be stable for `button.debounce_ms`, a press
//! held `button.long_press_ms` (counted from its raw edge) enters UPDATE while still held, a
//! shorter one toggles the relay in RUN and leaves UPDATE. While an upload runs the loop is
//! blocked: edges are read again when it ends, and the UPDATE timeout waits.

use std::sync::mpsc::Sender;
use std::time::Duration;

use crate::board::{BoardProfile, FlashLayout};
use crate::firmware::{FwState, OtaMethod, behaviour};
use crate::image::{self, AppChecksum, Fault, Identity};
use crate::ota::updater::{
    CoreModel, DeviceEnv, FlashFault, FlashWriter, UpdateSession, free_sketch_space, sketch_size,
};

use super::boot::{BootHeader, word};
use super::chip::{Flow, Hw, Program, ResetKind};
use super::flash_model::Flash;
use super::net::{OtaReply, OtaRequest, OtaService};

/// From the jump to the app to its `setup()` (an estimate).
pub const SETUP_DELAY: Duration = Duration::from_millis(100);
/// From `setup()` to the station having an address (an estimate).
pub const WIFI_CONNECT_DELAY: Duration = Duration::from_millis(2000);
/// The SDK's software watchdog.
pub const SOFT_WDT_TIMEOUT: Duration = Duration::from_millis(3200);
/// `ets_delay_us(10000)` at the end of a postmortem.
pub const POSTMORTEM_DELAY: Duration = Duration::from_millis(10);
/// The UART rate the core sets in `user_init`, before the sketch runs (core_esp8266_main.cpp).
pub const CORE_BAUD: u32 = 115_200;

/// What eboot's loader found in the app image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Entry point from the app header.
    pub entry: u32,
    /// Every loaded segment lies in RAM.
    pub ram_ok: bool,
}

/// The ROM rst cause of `ESP.restart()` for a core version (see the module docs).
pub fn restart_cause(core: &str) -> u8 {
    match image::identity::parse_core_version(core) {
        Some(v) if v < (2, 4, 0) => 1,
        _ => 2,
    }
}

/// The flash layout an app was linked with, from the flash size in its header: the board's
/// layout when the size is the board's, else the Arduino core's usual layout for that size
/// (filesystem in the last megabyte up to the EEPROM, then EEPROM, RF cal and SDK sectors at
/// the end, as eagle.flash.2m1m/4m1m.ld; for sizes up to 1 MB no filesystem).
pub fn linked_layout(header_size: u32, board: &BoardProfile) -> FlashLayout {
    if header_size == board.flash_size {
        return board.layout.clone();
    }
    let eeprom = header_size - 0x5000;
    let fs_start = if header_size > 0x10_0000 {
        header_size - 0x10_0000
    } else {
        eeprom
    };
    FlashLayout {
        description: format!("{} KiB layout of the app's header", header_size / 1024),
        sketch_start: 0x1000,
        fs_start,
        fs_end: eeprom,
        eeprom,
        rf_cal: header_size - 0x4000,
        sdk_params: header_size - 0x3000,
        flash_end: header_size,
    }
}

/// Jumps to the app eboot loaded from 0x1000.
pub fn launch(hw: &mut Hw, boot: BootHeader, loaded: Loaded) -> Program {
    let end = image_end(hw, 0x1000).min(boot.size.min(hw.board.flash_size));
    let parsed = hw
        .flash
        .read_vec(0, end as usize)
        .ok()
        .and_then(|bytes| image::parse_firmware(&bytes).ok());
    let kind = if !boot.mode_ok {
        Kind::FlashFetchFault
    } else {
        match parsed {
            Some(fw) if loaded.ram_ok && fw.app_checksum() != AppChecksum::Invalid => {
                Kind::from_identity(fw.identity().cloned(), boot, hw)
            }
            _ => Kind::Corrupt,
        }
    };
    start(hw, kind)
}

/// The ROM jumped to a plain image at 0x0 (checksum already verified by the ROM).
pub fn launch_plain(hw: &mut Hw, boot: BootHeader) -> Program {
    let end = image_end(hw, 0).min(hw.board.flash_size);
    let identity = hw
        .flash
        .read_vec(0, end as usize)
        .ok()
        .and_then(|bytes| image::parse_firmware(&bytes).ok())
        .and_then(|fw| fw.identity().cloned());
    start(hw, Kind::from_identity(identity, boot, hw))
}

fn start(hw: &mut Hw, kind: Kind) -> Program {
    // The SDK arms the hardware watchdog; the app feeds it from here on.
    hw.wdt_enabled = true;
    // `fault app-silent`: from the jump on, nothing reaches the UART (a sketch stuck before
    // Serial.begin, a wrong TX pin); the ROM's and eboot's lines before are unaffected.
    hw.muted = hw.faults.app_silent;
    let now = hw.now;
    let first = match kind {
        // The first instruction fetched from flash.
        Kind::FlashFetchFault => now,
        _ => now + SETUP_DELAY,
    };
    Program::App(Box::new(App {
        kind,
        setup_at: Some(first),
        restart_at: None,
        feeds: true,
        hung: false,
    }))
}

/// The end of the image at `base` (header and segment headers walked, not validated).
fn image_end(hw: &Hw, base: u32) -> u32 {
    let mut head = [0u8; 8];
    if hw.flash.read(base, &mut head).is_err() {
        return base;
    }
    let mut pos = u64::from(base) + 8;
    for _ in 0..head[1].min(16) {
        let size = u64::from(word(hw, pos as u32 + 4));
        pos += 8 + size;
        if pos > u64::from(hw.board.flash_size) {
            return hw.board.flash_size;
        }
    }
    ((pos | 15) + 1).min(u64::from(hw.board.flash_size)) as u32
}

/// What kind of code runs.
#[derive(Debug)]
enum Kind {
    /// Flash mode the chip cannot run: SDK fatal exception at the first cached fetch.
    FlashFetchFault,
    /// Half-copied or otherwise inconsistent app: crashes at boot.
    Corrupt,
    /// The reference firmware.
    Reference(Box<RefFw>),
    /// Any other valid app: its identity words, if it has a record.
    Other(Option<String>),
}

impl Kind {
    fn from_identity(identity: Option<Identity>, boot: BootHeader, hw: &Hw) -> Kind {
        match identity {
            Some(id) if id.app() == behaviour().identity.app => {
                Kind::Reference(Box::new(RefFw::new(id, boot, hw)))
            }
            Some(id) => Kind::Other(
                Identity::new(id.app(), id.version(), id.ota(), None)
                    .ok()
                    .map(|i| i.line()),
            ),
            None => Kind::Other(None),
        }
    }
}

/// A running application.
#[derive(Debug)]
pub struct App {
    kind: Kind,
    /// `setup()` (or the first fetch) is due.
    setup_at: Option<Duration>,
    /// A restart is due.
    restart_at: Option<(Duration, ResetKind)>,
    /// Feeds the hardware watchdog.
    feeds: bool,
    /// Stopped printing for good (hang-after-ota).
    hung: bool,
}

impl App {
    /// Whether the app keeps the hardware watchdog fed.
    pub fn feeds_wdt(&self) -> bool {
        self.feeds
    }

    /// The next device time something is due.
    pub fn deadline(&self) -> Option<Duration> {
        // A scheduled crash restart stops the sketch; setup has to run first; a hung sketch
        // does nothing.
        let runs = self.setup_at.is_none() && !self.hung && self.restart_at.is_none();
        let fw = match &self.kind {
            Kind::Reference(fw) if runs => fw.deadline(),
            _ => None,
        };
        [self.setup_at, self.restart_at.map(|(t, _)| t), fw]
            .into_iter()
            .flatten()
            .min()
    }

    /// `key=value` words for `status`.
    pub fn status(&self, hw: &Hw) -> String {
        match &self.kind {
            Kind::Reference(fw) => {
                let b = behaviour();
                let state = if self.setup_at.is_some() {
                    "BOOT"
                } else if self.hung {
                    "HUNG"
                } else {
                    fw.state.name()
                };
                format!(
                    "app={} version={} fw_state={state} relay={} led={}",
                    b.identity.app,
                    fw.identity.version(),
                    b.lines.relay_levels[usize::from(fw.relay)],
                    if fw.led_on(hw.now) { "on" } else { "off" }
                )
            }
            Kind::Other(Some(_)) => "app=other fw_state=-".into(),
            Kind::Other(None) => "app=unknown fw_state=-".into(),
            Kind::Corrupt | Kind::FlashFetchFault => "app=crashing fw_state=-".into(),
        }
    }

    /// The raw level of the button (GPIO0) changed.
    pub fn on_button(&mut self, hw: &mut Hw, down: bool) {
        if let Kind::Reference(fw) = &mut self.kind
            && self.setup_at.is_none()
            && !self.hung
            && !fw.blocked
        {
            fw.sync_raw(down, hw.now);
        }
    }

    /// Runs what is due at `hw.now`.
    pub fn on_timer(&mut self, hw: &mut Hw) -> Flow {
        let now = hw.now;
        if let Some((at, kind)) = self.restart_at
            && at <= now
        {
            self.restart_at = None;
            return Flow::Reset(kind);
        }
        if self.setup_at.is_some_and(|t| t <= now) {
            self.setup_at = None;
            self.setup(hw);
            return Flow::Stay;
        }
        if self.hung || self.restart_at.is_some() {
            return Flow::Stay;
        }
        let mut restart = None;
        if let Kind::Reference(fw) = &mut self.kind {
            match fw.poll(hw) {
                Poll::Run => {}
                Poll::SoftWdt => {
                    hw.print(&postmortem::soft_wdt());
                    restart = Some(ResetKind::SoftRestart { rom_cause: 2 });
                }
                Poll::Restart(kind) => return Flow::Reset(kind),
            }
        }
        if let Some(kind) = restart {
            self.restart_after_dump(hw, kind);
        }
        Flow::Stay
    }

    fn restart_after_dump(&mut self, hw: &Hw, kind: ResetKind) {
        let at = hw.now.max(hw.tx_busy_until) + POSTMORTEM_DELAY;
        self.restart_at = Some((at, kind));
    }

    /// `setup()`, or the crash that comes before it.
    fn setup(&mut self, hw: &mut Hw) {
        let crash_restart = ResetKind::SoftRestart { rom_cause: 2 };
        match &mut self.kind {
            Kind::FlashFetchFault => {
                let epc1 = 0x4020_1000 + ((word(hw, 0x1010) >> 4) & 0xFFFC);
                hw.print(&postmortem::sdk_fatal(0, epc1));
                self.restart_after_dump(hw, crash_restart);
            }
            Kind::Corrupt => {
                hw.set_baud(CORE_BAUD);
                let epc1 = 0x4010_0000 + ((word(hw, 0x1010) >> 8) & 0x7FFC);
                let excvaddr = 0x4020_0000 + ((word(hw, 0x1014) >> 4) & 0xFFFFC);
                hw.print(&postmortem::exception(3, epc1, excvaddr));
                self.restart_after_dump(hw, crash_restart);
            }
            Kind::Other(line) => {
                hw.set_baud(CORE_BAUD);
                if let Some(line) = line {
                    hw.print(&format!("\r\n{line}\r\n"));
                }
            }
            Kind::Reference(fw) => {
                let b = behaviour();
                hw.set_baud(b.serial.baud);
                if b.serial.boot_blank_line {
                    hw.print(&b.serial.eol);
                }
                let fault = fw.identity.fault();
                if fault == Some(Fault::HangAfterOta) && hw.booted_after_copy {
                    // Stuck before the state line, yielding: silent, watchdog fed.
                    self.hung = true;
                    return;
                }
                fw.setup(hw);
                match fault {
                    Some(Fault::CrashOnBoot) => {
                        hw.print(&postmortem::exception(28, 0x4020_1F2C, 0));
                        self.restart_after_dump(hw, crash_restart);
                    }
                    // Interrupts off in loop(): nothing feeds the hardware watchdog.
                    Some(Fault::WdtLoop) => self.feeds = false,
                    Some(Fault::SoftWdt) => fw.soft_wdt_at = Some(hw.now + SOFT_WDT_TIMEOUT),
                    _ => {}
                }
            }
        }
    }

    /// A request of an OTA server (see [`super::net`]).
    pub fn on_ota(
        &mut self,
        hw: &mut Hw,
        generation: u64,
        request: OtaRequest,
        reply: Sender<OtaReply>,
    ) -> Flow {
        let Kind::Reference(fw) = &mut self.kind else {
            let _ = reply.send(OtaReply::NotRunning);
            return Flow::Stay;
        };
        if self.hung || self.restart_at.is_some() || fw.service != Some(generation) {
            let _ = reply.send(OtaReply::NotRunning);
            return Flow::Stay;
        }
        let (answer, busy) = fw.ota(hw, request);
        if busy.is_zero() {
            let _ = reply.send(answer);
        } else {
            fw.pending = Some((hw.now + busy, reply, answer));
        }
        Flow::Stay
    }
}

/// What one pass of the sketch's loop asks for.
enum Poll {
    Run,
    SoftWdt,
    Restart(ResetKind),
}

/// The reference firmware's state (firmware/sonoff-ota/sonoff-ota.ino).
#[derive(Debug)]
struct RefFw {
    identity: Identity,
    method: OtaMethod,
    state: FwState,
    relay: bool,
    update_entered: Duration,
    endpoint_printed: bool,
    wifi_at: Duration,
    wifi_up: bool,
    button_raw: bool,
    button_pressed: bool,
    raw_since: Duration,
    long_press_done: bool,
    /// Generation of the running OTA service.
    service: Option<u64>,
    session: UpdateSession,
    /// The loop is inside the OTA library (an upload runs, or the restart after it is due).
    blocked: bool,
    /// An answer waiting for the flash busy time.
    pending: Option<(Duration, Sender<OtaReply>, OtaReply)>,
    /// `ESP.restart()` requested by the OTA library.
    restart_at: Option<Duration>,
    soft_wdt_at: Option<Duration>,
}

impl RefFw {
    fn new(identity: Identity, boot: BootHeader, hw: &Hw) -> RefFw {
        let core = CoreModel::for_version(identity.core()).unwrap_or_default();
        let env = DeviceEnv {
            layout: linked_layout(boot.size, hw.board),
            real_flash_size: hw.board.flash_size,
            boot_mode: hw.latched.map_or(3, |m| m.x),
            core,
        };
        let method = identity.ota();
        let b = behaviour();
        RefFw {
            identity,
            method,
            state: b.state.initial,
            relay: b.relay.initial_on,
            update_entered: Duration::ZERO,
            endpoint_printed: false,
            wifi_at: Duration::MAX,
            wifi_up: false,
            button_raw: false,
            button_pressed: false,
            raw_since: Duration::ZERO,
            long_press_done: false,
            service: None,
            session: UpdateSession::new(env),
            blocked: false,
            pending: None,
            restart_at: None,
            soft_wdt_at: None,
        }
    }

    fn line(&self, state: FwState) -> String {
        let b = behaviour();
        format!(
            "{}{}",
            b.state_line(self.identity.version(), self.method, state),
            b.serial.eol
        )
    }

    fn setup(&mut self, hw: &mut Hw) {
        self.wifi_at = hw.now + WIFI_CONNECT_DELAY;
        self.sync_raw(hw.gpio0_low, hw.now);
        hw.print(&self.line(self.state));
    }

    fn led_on(&self, now: Duration) -> bool {
        if self.state != FwState::Update {
            return true;
        }
        let blink = behaviour().led.blink.as_millis().max(1);
        (now.saturating_sub(self.update_entered).as_millis() / blink).is_multiple_of(2)
    }

    /// The raw button level as `digitalRead` sees it.
    fn sync_raw(&mut self, down: bool, now: Duration) {
        if down != self.button_raw {
            self.button_raw = down;
            self.raw_since = now;
        }
    }

    fn deadline(&self) -> Option<Duration> {
        let b = behaviour();
        let pending = self.pending.as_ref().map(|(t, ..)| *t);
        if self.blocked {
            return [pending, self.restart_at].into_iter().flatten().min();
        }
        let debounce =
            (self.button_raw != self.button_pressed).then(|| self.raw_since + b.button.debounce);
        let long = (self.button_pressed && !self.long_press_done)
            .then(|| self.raw_since + b.button.long_press);
        let wifi = (!self.wifi_up).then_some(self.wifi_at);
        let timeout =
            (self.state == FwState::Update).then(|| self.update_entered + b.update.timeout);
        [
            pending,
            self.restart_at,
            self.soft_wdt_at,
            debounce,
            long,
            wifi,
            timeout,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// One pass of `loop()` at `hw.now` (plus the OTA library's pending work).
    fn poll(&mut self, hw: &mut Hw) -> Poll {
        let now = hw.now;
        if let Some((at, ..)) = &self.pending
            && *at <= now
            && let Some((_, reply, answer)) = self.pending.take()
        {
            let _ = reply.send(answer);
        }
        if self.restart_at.is_some_and(|t| t <= now) {
            self.restart_at = None;
            return Poll::Restart(ResetKind::SoftRestart {
                rom_cause: restart_cause(self.identity.core()),
            });
        }
        if self.blocked {
            return Poll::Run;
        }
        if self.soft_wdt_at.is_some_and(|t| t <= now) {
            self.soft_wdt_at = None;
            return Poll::SoftWdt;
        }
        let b = behaviour();
        // pollButton
        if self.button_raw != self.button_pressed && now - self.raw_since >= b.button.debounce {
            self.button_pressed = self.button_raw;
            if self.button_pressed {
                self.long_press_done = false;
            } else if !self.long_press_done {
                self.short_press(hw);
            }
        }
        if self.button_pressed
            && !self.long_press_done
            && now - self.raw_since >= b.button.long_press
        {
            self.long_press_done = true;
            if self.state == FwState::Run {
                self.transition(hw, FwState::Update);
            }
        }
        // pollWifi
        if !self.wifi_up && now >= self.wifi_at {
            self.wifi_up = true;
            let ip = hw.ip().to_string();
            let line = b.lines.wifi_connected.render(&[("ip", &ip)]);
            hw.print(&format!("{line}{}", b.serial.eol));
        }
        if self.state == FwState::Update {
            if now - self.update_entered >= b.update.timeout {
                self.transition(hw, FwState::Run);
            } else if !self.endpoint_printed && self.wifi_up {
                self.endpoint_printed = true;
                let line = b.lines.endpoint.render(&[("url", &self.endpoint_url(hw))]);
                hw.print(&format!("{line}{}", b.serial.eol));
            }
        }
        Poll::Run
    }

    fn endpoint_url(&self, hw: &Hw) -> String {
        let b = behaviour();
        let ip = hw.ip().to_string();
        let ports = hw.net.as_ref().map(|n| &n.ports);
        let (template, port) = match self.method {
            OtaMethod::Arduino => (
                &b.espota.url,
                ports.and_then(|p| p.ota()).unwrap_or(b.espota.port),
            ),
            OtaMethod::WebServer => (
                &b.http.url,
                ports.and_then(|p| p.http()).unwrap_or(b.http.port),
            ),
        };
        template.render(&[("ip", &ip), ("port", &port.to_string())])
    }

    fn short_press(&mut self, hw: &mut Hw) {
        let b = behaviour();
        if self.state == FwState::Run {
            self.relay = !self.relay;
            let level = &b.lines.relay_levels[usize::from(self.relay)];
            let line = b.lines.relay.render(&[("level", level)]);
            hw.print(&format!("{line}{}", b.serial.eol));
        } else {
            self.transition(hw, FwState::Run);
        }
    }

    /// The sketch's `transition()`: start or stop the OTA service, then the state line.
    fn transition(&mut self, hw: &mut Hw, next: FwState) {
        if next == self.state {
            return;
        }
        if next == FwState::Update {
            hw.ota_generation += 1;
            if self.identity.fault() != Some(Fault::NoOta) {
                self.service = Some(hw.ota_generation);
                hw.publish_service(Some(OtaService {
                    method: self.method,
                    password: self.identity.password().map(str::to_string),
                    generation: hw.ota_generation,
                }));
            }
            self.update_entered = hw.now;
            self.endpoint_printed = false;
        } else {
            self.service = None;
            hw.publish_service(None);
        }
        self.state = next;
        hw.print(&self.line(next));
    }

    /// Handles one OTA request; returns the answer and the flash busy time before it.
    fn ota(&mut self, hw: &mut Hw, request: OtaRequest) -> (OtaReply, Duration) {
        let was_blocked = self.blocked;
        let (answer, busy) = self.updater(hw, request);
        if was_blocked && !self.blocked {
            // The loop runs again and reads the button as it is now.
            self.sync_raw(hw.gpio0_low, hw.now);
        }
        (answer, busy)
    }

    fn updater(&mut self, hw: &mut Hw, request: OtaRequest) -> (OtaReply, Duration) {
        let mut flash = SimFlash {
            flash: &mut hw.flash,
            busy: Duration::ZERO,
        };
        let answer = match request {
            OtaRequest::FreeSketchSpace => {
                let sketch = sketch_size(&mut flash).unwrap_or(0);
                OtaReply::FreeSpace(free_sketch_space(&self.session.env().layout, sketch))
            }
            OtaRequest::Begin { size, command, md5 } => {
                match self.session.begin(&mut flash, size, command) {
                    Ok(_) => {
                        if let Some(md5) = md5 {
                            self.session.set_md5(&md5);
                        }
                        self.blocked = true;
                        OtaReply::Ok
                    }
                    Err(e) => OtaReply::Err(e),
                }
            }
            OtaRequest::Write(data) => {
                let n = self.session.write(&mut flash, &data);
                if n == data.len() {
                    OtaReply::Written(n)
                } else {
                    self.blocked = false;
                    OtaReply::Err(
                        self.session
                            .error()
                            .cloned()
                            .unwrap_or(crate::ota::updater::UpdaterError::NoError),
                    )
                }
            }
            OtaRequest::End { even_if_remaining } => {
                match self.session.end(&mut flash, even_if_remaining) {
                    Ok(command) => {
                        if let Some(command) = command {
                            // Update.end() writes the command to RTC memory.
                            hw.rtc = command.to_words();
                        }
                        OtaReply::Ok
                    }
                    Err(e) => {
                        self.blocked = false;
                        OtaReply::Err(e)
                    }
                }
            }
            OtaRequest::Abort => {
                // The libraries end a broken upload with a premature `Update.end()` (ArduinoOTA
                // after its receive loop, the HTTP server on UPLOAD_FILE_ABORTED), which resets
                // the Updater; whatever it returns, no command goes to RTC memory.
                if self.session.is_running() {
                    let _ = self.session.end(&mut flash, false);
                }
                self.blocked = false;
                OtaReply::Ok
            }
            OtaRequest::Print(text) => {
                let busy = flash.busy;
                hw.print(&text);
                return (OtaReply::Ok, busy);
            }
            OtaRequest::Restart { after_ms } => {
                self.blocked = true;
                self.restart_at = Some(hw.now + Duration::from_millis(after_ms));
                OtaReply::Ok
            }
        };
        (answer, flash.busy)
    }
}

/// The simulated flash as the Updater writes it, adding up busy time.
struct SimFlash<'a> {
    flash: &'a mut Flash,
    busy: Duration,
}

impl FlashWriter for SimFlash<'_> {
    fn erase_sector(&mut self, addr: u32) -> Result<(), FlashFault> {
        let busy = self
            .flash
            .erase_sector(addr)
            .map_err(|_| FlashFault { addr })?;
        self.busy += busy;
        Ok(())
    }

    fn write(&mut self, addr: u32, data: &[u8]) -> Result<(), FlashFault> {
        let busy = self
            .flash
            .program(addr, data)
            .map_err(|_| FlashFault { addr })?;
        self.busy += busy;
        Ok(())
    }

    fn read(&mut self, addr: u32, buf: &mut [u8]) -> Result<(), FlashFault> {
        self.flash.read(addr, buf).map_err(|_| FlashFault { addr })
    }
}

/// The crash dumps, as the core and the SDK print them (with `\n` sent as `\r\n`).
pub mod postmortem {
    /// `cut_here()` of core_esp8266_postmortem.cpp.
    fn cut_here() -> String {
        format!(
            "\r\n{0} CUT HERE FOR EXCEPTION DECODER {0}\r\n",
            "-".repeat(15)
        )
    }

    /// A stack dump from `sp + offset` up to `end` in the core's format, with words that look
    /// like a sketch's stack (return addresses in irom0 and IRAM, saved pointers in DRAM).
    fn stack(ctx: &str, sp: u32, end: u32, offset: u32, seed: u32) -> String {
        let mut out = format!(
            "\r\n>>>stack>>>\r\n\r\nctx: {ctx}\r\nsp: {sp:08x} end: {end:08x} offset: {offset:04x}\r\n"
        );
        let mut state = seed | 1;
        let mut pos = sp + offset;
        while pos < end {
            let mut words = [0u32; 4];
            for (i, w) in words.iter_mut().enumerate() {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *w = match (pos / 16 + i as u32) % 4 {
                    0 => 0x3FFE_E000 + (state & 0x1FFC),
                    1 => 0x4020_1000 + (state & 0xFFFC),
                    2 => 0x4010_0000 + (state & 0x3FFC),
                    _ => 0xFEEF_EFFE,
                };
            }
            out.push_str(&format!(
                "{pos:08x}:  {:08x} {:08x} {:08x} {:08x}  \r\n",
                words[0], words[1], words[2], words[3]
            ));
            pos += 16;
        }
        out.push_str("<<<stack<<<\r\n");
        out
    }

    /// The core's dump for an exception (`Exception (N):` and the register line).
    pub fn exception(cause: u32, epc1: u32, excvaddr: u32) -> String {
        let mut out = cut_here();
        out.push_str(&format!(
            "\r\nException ({cause}):\r\nepc1=0x{epc1:08x} epc2=0x00000000 epc3=0x00000000 \
             excvaddr=0x{excvaddr:08x} depc=0x00000000\r\n"
        ));
        out.push_str(&stack("cont", 0x3FFF_FE20, 0x3FFF_FFD0, 0x190, epc1));
        out.push_str(&cut_here());
        out
    }

    /// The core's dump for the software watchdog.
    pub fn soft_wdt() -> String {
        let mut out = cut_here();
        out.push_str("\r\nSoft WDT reset\r\n");
        out.push_str(&stack("cont", 0x3FFF_FDA0, 0x3FFF_FFD0, 0x1A0, 0x5EED));
        out.push_str(&cut_here());
        out
    }

    /// The SDK's own report of an exception it handles (no core handler yet), as in corpus
    /// flash-config-mismatch-01 (note the space after the colon and the commas).
    pub fn sdk_fatal(cause: u32, epc1: u32) -> String {
        format!(
            "Fatal exception ({cause}): \r\nepc1=0x{epc1:08x}, epc2=0x00000000, epc3=0x00000000, \
             excvaddr=0x00000000, depc=0x00000000\r\n"
        )
    }
}
