//! The virtual Sonoff: one simulated ESP8266/ESP8285 board behind a real pty.
//!
//! The simulator sits beside the layers: it uses only L0 modules ([`crate::board`],
//! [`crate::flash::proto`], [`crate::image`], [`crate::ota`], [`crate::firmware`]) and is
//! reached the way hardware is, through a serial port (a pty) and loopback sockets. Nothing
//! above `rig::virtual` may know it exists.
//!
//! # What it models
//!
//! - `chip`: power, boot straps latched at power-on/external reset only, rst cause, UART
//!   rates, RTC memory (eboot's command; kept over software and watchdog resets, lost at power
//!   off), the hardware watchdog (8.2 s when enabled and not fed) and device-time timers;
//!   `rom`: the boot ROM's banner and boot decision; `rom_loader`: the ROM's UART download loop;
//!   `stub`: the esptool flasher stub; `regs`: eFuses, UART divider and the SPI flash
//!   controller; `pty`: the pseudo-terminal and its reader/writer threads.
//! - `boot`: the ROM loading the image at flash 0x0 (`load`/`tail`/`chksum`/`csum` lines,
//!   `csum err`, flash modes the board cannot run); `eboot`: the Arduino boot loader (`v`, `@`/`~`,
//!   the copy of a staged OTA image in device time, `ld`, `e:N`); `app`: what runs after it: the
//!   reference firmware of `firmware/` (state machine, button, OTA through the core's Updater,
//!   built-in faults), other images, and crash loops of broken ones.
//! - [`net`]: the firmware's OTA service as the OTA servers see it, reached through a
//!   `FirmwarePort`; [`clock`]: device time against real time.
//! - `ota_http`, `ota_espota`: the OTA libraries' network side (ESP8266WebServer with
//!   ESP8266HTTPUpdateServer, ArduinoOTA) on the board's own loopback address ([`BoardAddress`],
//!   127.0.0.x), listening only while the firmware has its OTA service started; `ota_link`: what
//!   they need from the firmware and their threads.
//! - [`flash_model`]: NOR flash of the board's real size in a file (or memory), addresses
//!   wrapping, writes going straight to the file.
//! - [`uart`]: bytes read at the wrong baud rate become what a real UART delivers. The ROM
//!   prints at 74880; its download loop autobauds on the host's first SYNC (the ESP8266 ROM
//!   measures the incoming rate, which is why esptool can talk at 115200 to a ROM that printed at
//!   74880); the stub keeps that rate until CHANGE_BAUDRATE; the app switches to 115200.
//!
//! # Running it
//!
//! [`SimHandle::start`] runs the board on threads (chip, pty reader, pty writer, control socket,
//! HTTP update server, ArduinoOTA) and powers it on. `harness sim` wraps it and prints the endpoints as the first stdout lines,
//! `name: value` each, ending with an empty line:
//!
//! ```text
//! pty: /dev/pts/7
//! port: /tmp/.tmpAbC123/serial      (a symlink to the pty; see `port unplug`)
//! control: /tmp/.tmpAbC123/control.sock
//! flash: /tmp/.tmpAbC123/flash.bin
//! tx-log: /tmp/capture.bin        (only with --tx-log)
//! time-scale: 0.05
//! http: 127.0.0.57:41023           (HTTP update server: the board's port 80)
//! ota: 127.0.0.57:52871            (ArduinoOTA UDP: the board's port 8266)
//!
//! ```
//!
//! The board's address and both ports are chosen free at start and stay for the life of the
//! simulator; outside UPDATE the TCP port refuses connections and the UDP port is silent.
//!
//! The control protocol (socket and stdin) is described in [`control`]. The board starts
//! powered, with the button held if the boot straps say download, and stays so until told
//! otherwise. The answer to a power or reset command comes after everything the board sent
//! before it is on the pty, so a client that flushes its input after the answer starts clean.
//!
//! # Timing
//!
//! Timed behaviour (debounce, UPDATE timeout, watchdogs, eboot's copy, flash busy times of OTA
//! writes) runs in device time, which [`clock::Clock`] maps to real time: 0.05 real seconds
//! per device second by default, 1.0 with realistic timing, or `--time-scale X`. The chip
//! thread sleeps until the next device deadline or the next event, and fires each timer at its
//! own device time, so the order of events is the same at every scale. With realistic timing
//! the UART also paces bytes at 10 bits per byte in both directions and the ROM loader's flash
//! operations take their datasheet times ([`flash_model`]).

pub(crate) mod app;
pub(crate) mod boot;
pub(crate) mod chip;
pub mod clock;
pub mod control;
pub(crate) mod eboot;
#[cfg(test)]
mod flash_boot_tests;
pub mod flash_model;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod net;
pub(crate) mod ota_espota;
pub(crate) mod ota_http;
pub(crate) mod ota_link;
#[cfg(test)]
mod ota_tests;
pub(crate) mod port;
pub(crate) mod pty;
#[cfg(test)]
mod pty_tests;
pub(crate) mod regs;
pub(crate) mod rom;
pub(crate) mod rom_loader;
pub(crate) mod stub;
pub mod uart;

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::board::BoardProfile;

use self::chip::{Chip, Faults, NetLink, ResetKind};
use self::clock::Clock;
use self::control::{ControlCommand, Fault, Reply};
use self::flash_model::Flash;
use self::net::{NetShared, OtaReply, OtaRequest};
use self::ota_link::{FirmwareLink, OtaServers};
pub(crate) use self::port::FirmwarePort;
pub use self::port::ServicePorts;

pub use self::ota_link::BoardAddress;

/// Boot strap setting at power-on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootStraps {
    /// GPIO0 released: boot from flash (boot mode 3).
    #[default]
    Flash,
    /// GPIO0 held low (button pressed): ROM UART download (boot mode 1).
    Download,
}

/// How to run a simulated board.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The board.
    pub board: &'static BoardProfile,
    /// Flash file: opened if it exists (it must have the board's flash size), created erased
    /// otherwise. `None`: a fresh erased file in the simulator's temporary directory.
    pub flash: Option<PathBuf>,
    /// Straps at the initial power-on.
    pub boot: BootStraps,
    /// Pace the UART and the flash at real speed.
    pub realistic_timing: bool,
    /// Append every byte the chip puts on the pty to this file.
    pub tx_log: Option<PathBuf>,
    /// Real seconds per device second; `None`: 1.0 with realistic timing, else [`Clock::FAST`].
    pub time_scale: Option<f64>,
    /// A firmware file to write at flash 0x0 before the first power-on (the sectors it covers
    /// are erased first, as esptool's write-flash does).
    pub image: Option<Vec<u8>>,
    /// Power the board when the simulator starts (a board plugged in), or leave it off until a
    /// `power on` (a rig that switches power itself).
    pub power_at_start: bool,
}

impl SimConfig {
    /// Defaults for `board`: erased temporary flash, flash boot, fast, no log.
    pub fn new(board: &'static BoardProfile) -> Self {
        SimConfig {
            board,
            flash: None,
            boot: BootStraps::Flash,
            realistic_timing: false,
            tx_log: None,
            time_scale: None,
            image: None,
            power_at_start: true,
        }
    }

    /// The device clock scale this configuration asks for.
    pub fn scale(&self) -> f64 {
        self.time_scale.unwrap_or(if self.realistic_timing {
            Clock::REALISTIC
        } else {
            Clock::FAST
        })
    }
}

/// Where to reach a running simulator.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoints {
    /// The board's serial port as first opened (a new one after `port unplug`/`port plug`).
    pub pty: PathBuf,
    /// A stable name for the serial port: a symlink to the current pty, gone while the port
    /// is unplugged (what `/dev/serial/by-id/...` is for a USB adapter).
    pub port: PathBuf,
    /// The control socket (mode 0600).
    pub control: PathBuf,
    /// The flash file.
    pub flash: PathBuf,
    /// The TX log, if any.
    pub tx_log: Option<PathBuf>,
    /// Real seconds per device second.
    pub time_scale: f64,
    /// The board's own network address.
    pub ip: Ipv4Addr,
    /// The HTTP update server's address (the board's port 80), listening only in UPDATE.
    pub http: SocketAddrV4,
    /// The ArduinoOTA UDP address (the board's port 8266), answering only in UPDATE.
    pub ota: SocketAddrV4,
}

impl Endpoints {
    /// The `name: value` lines `harness sim` prints, `pty` first.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!("pty: {}", self.pty.display()),
            format!("port: {}", self.port.display()),
            format!("control: {}", self.control.display()),
            format!("flash: {}", self.flash.display()),
        ];
        if let Some(log) = &self.tx_log {
            lines.push(format!("tx-log: {}", log.display()));
        }
        lines.push(format!("time-scale: {}", self.time_scale));
        lines.push(format!("http: {}", self.http));
        lines.push(format!("ota: {}", self.ota));
        lines
    }
}

/// Errors starting or talking to the simulator.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum SimError {
    /// No pseudo-terminal could be set up.
    #[error("cannot set up a pseudo-terminal for the simulated serial port")]
    #[diagnostic(
        code(harness::sim::pty),
        help("check that /dev/ptmx exists and devpts is mounted")
    )]
    Pty(#[source] nix::Error),
    /// The flash file exists but cannot be used.
    #[error("cannot use flash file {path}")]
    #[diagnostic(
        code(harness::sim::flash_file),
        help(
            "pass a file of exactly the board's flash size, or a path that does not exist yet (it is created erased)"
        )
    )]
    FlashFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: flash_model::OpenError,
    },
    /// The flash file could not be created.
    #[error("cannot create flash file {path}")]
    #[diagnostic(code(harness::sim::flash_create))]
    FlashCreate {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TX log could not be opened.
    #[error("cannot open TX log {path}")]
    #[diagnostic(code(harness::sim::tx_log))]
    TxLog {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The control socket could not be created.
    #[error("cannot create control socket {path}")]
    #[diagnostic(code(harness::sim::control_socket))]
    ControlSocket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another I/O failure (temporary directory, thread start).
    #[error("simulator I/O error")]
    #[diagnostic(code(harness::sim::io))]
    Io(#[source] std::io::Error),
    /// The image does not fit the board's flash.
    #[error("the image is {len} bytes, larger than the board's {flash} bytes of flash")]
    #[diagnostic(code(harness::sim::image_size))]
    ImageTooLarge {
        /// Image length.
        len: usize,
        /// Flash size.
        flash: u32,
    },
    /// The time scale is not usable.
    #[error("time scale {0} is out of range")]
    #[diagnostic(
        code(harness::sim::time_scale),
        help("give real seconds per device second, between 0.0001 and 100 (fast default 0.05)")
    )]
    TimeScale(f64),
    /// The simulator has already stopped.
    #[error("the simulator has stopped")]
    #[diagnostic(code(harness::sim::stopped))]
    Stopped,
}

/// What the chip thread processes, in order.
#[derive(Debug)]
pub(crate) enum Event {
    /// Bytes from the host, sent at `host_baud` (0 if unknown).
    Rx {
        /// The bytes.
        bytes: Vec<u8>,
        /// The host's rate.
        host_baud: u32,
    },
    /// A control command and where to send its answer.
    Control(ControlCommand, Sender<Reply>),
    /// A request of an OTA server to the firmware (see [`net`]).
    Ota {
        /// The service generation the server is talking to.
        generation: u64,
        /// What it asks.
        request: OtaRequest,
        /// Where the answer goes.
        reply: Sender<OtaReply>,
    },
    /// Stop the chip thread.
    Shutdown,
}

/// A cloneable sender of control commands to a running simulator.
#[derive(Debug, Clone)]
pub struct SimControl {
    events: Sender<Event>,
}

impl SimControl {
    /// Sends `command` and waits for its answer.
    pub fn send(&self, command: ControlCommand) -> Result<Reply, SimError> {
        let (tx, rx) = mpsc::channel();
        self.events
            .send(Event::Control(command, tx))
            .map_err(|_| SimError::Stopped)?;
        rx.recv().map_err(|_| SimError::Stopped)
    }

    /// Parses and runs one control line; returns the answer line.
    pub fn send_line(&self, line: &str) -> String {
        let reply = match control::parse(line) {
            Ok(cmd) => self
                .send(cmd)
                .unwrap_or_else(|e| Reply::Error(e.to_string())),
            Err(reason) => Reply::Error(reason),
        };
        reply.to_string()
    }
}

/// A running simulated board.
#[derive(Debug)]
pub struct SimHandle {
    endpoints: Endpoints,
    control: SimControl,
    #[allow(dead_code, reason = "handed to the OTA servers")]
    firmware: FirmwarePort,
    ota: Option<OtaServers>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl SimHandle {
    /// Opens the pty, flash and control socket, starts the threads and powers the board on.
    pub fn start(config: SimConfig) -> Result<SimHandle, SimError> {
        let board = config.board;
        let scale = config.scale();
        let clock = Clock::new(scale).ok_or(SimError::TimeScale(scale))?;
        let dir = tempfile::Builder::new()
            .prefix("harness-sim-")
            .tempdir()
            .map_err(SimError::Io)?;
        let tx_log = match &config.tx_log {
            Some(path) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| SimError::TxLog {
                        path: path.clone(),
                        source,
                    })?,
            ),
            None => None,
        };
        let flash_path = config
            .flash
            .clone()
            .unwrap_or_else(|| dir.path().join("flash.bin"));
        let mut flash = open_flash(&flash_path, board.flash_size)?;
        if let Some(image) = &config.image {
            write_image(&mut flash, image)?;
        }
        let control_path = dir.path().join("control.sock");
        let listener = bind_control(&control_path)?;
        let pty = pty::Pty::open()?;
        let pty_path = pty.path().to_path_buf();
        let cable = Arc::new(pty::Cable::new(pty, dir.path().join("serial"))?);
        let address = BoardAddress::pick().map_err(SimError::Io)?;
        let endpoints = Endpoints {
            pty: pty_path,
            port: cable.link().to_path_buf(),
            control: control_path,
            flash: flash_path,
            tx_log: config.tx_log.clone(),
            time_scale: scale,
            ip: address.ip(),
            http: address.http,
            ota: address.espota,
        };
        let net = Arc::new(NetShared::new(endpoints.ip));

        let ports = Arc::new(ServicePorts::default());
        ports.set_http(address.http.port());
        ports.set_ota(address.espota.port());
        let mut chip = Chip::new(board, flash, config.realistic_timing);
        chip.hw.net = Some(NetLink {
            shared: Arc::clone(&net),
            ports: Arc::clone(&ports),
        });
        chip.set_time(clock.now());
        chip.set_button(config.boot == BootStraps::Download);
        if config.power_at_start {
            chip.power_on();
        }

        let (events_tx, events_rx) = mpsc::channel();
        let (out_tx, out_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(chip.hw.epoch()));
        let control = SimControl {
            events: events_tx.clone(),
        };
        let firmware = FirmwarePort::new(events_tx.clone(), Arc::clone(&net), clock, ports);

        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(SimError::Io)
        };
        let writer = pty::Writer {
            cable: Arc::clone(&cable),
            epoch: Arc::clone(&epoch),
            tx_log,
            realistic: config.realistic_timing,
            stop: Arc::clone(&stop),
        };
        threads.push(spawn(
            "sim-pty-writer",
            Box::new(move || writer.run(out_rx)),
        )?);
        {
            let epoch = Arc::clone(&epoch);
            let cable = Arc::clone(&cable);
            threads.push(spawn(
                "sim-chip",
                Box::new(move || run_chip(chip, events_rx, out_tx, epoch, clock, cable)),
            )?);
        }
        {
            let stop = Arc::clone(&stop);
            let realistic = config.realistic_timing;
            let events = events_tx.clone();
            threads.push(spawn(
                "sim-pty-reader",
                Box::new(move || pty::run_reader(cable, events, stop, realistic)),
            )?);
        }
        {
            let stop = Arc::clone(&stop);
            let control = control.clone();
            threads.push(spawn(
                "sim-control",
                Box::new(move || control::serve(listener, control, stop)),
            )?);
        }
        let link: Arc<dyn FirmwareLink> = Arc::new(firmware.clone());
        let ota = OtaServers::start(link, address, board.layout.clone()).map_err(SimError::Io)?;
        Ok(SimHandle {
            endpoints,
            control,
            firmware,
            ota: Some(ota),
            stop,
            threads,
            _dir: dir,
        })
    }

    /// Where to reach the simulator.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// A cloneable control sender (for other threads, e.g. a stdin reader).
    pub fn control(&self) -> SimControl {
        self.control.clone()
    }

    /// The port OTA servers use to reach the firmware.
    #[allow(dead_code, reason = "the OTA servers' entry point")]
    pub(crate) fn firmware_port(&self) -> FirmwarePort {
        self.firmware.clone()
    }

    /// Sends one control command and waits for its answer.
    pub fn command(&self, command: ControlCommand) -> Result<Reply, SimError> {
        self.control.send(command)
    }

    /// Stops all threads; the flash file is synced and stays, the temporary directory goes.
    pub fn shutdown(mut self) -> Result<(), SimError> {
        self.stop_threads();
        Ok(())
    }

    fn stop_threads(&mut self) {
        // The OTA servers first: they may be waiting for the chip thread.
        if let Some(mut ota) = self.ota.take() {
            ota.shutdown();
        }
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.control.events.send(Event::Shutdown);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

fn write_image(flash: &mut Flash, image: &[u8]) -> Result<(), SimError> {
    if image.len() > flash.size() as usize {
        return Err(SimError::ImageTooLarge {
            len: image.len(),
            flash: flash.size(),
        });
    }
    let sector = crate::flash::proto::FLASH_SECTOR_SIZE as usize;
    for at in (0..image.len()).step_by(sector) {
        flash.erase_sector(at as u32).map_err(SimError::Io)?;
    }
    flash.program(0, image).map_err(SimError::Io)?;
    Ok(())
}

fn open_flash(path: &Path, size: u32) -> Result<Flash, SimError> {
    if path.exists() {
        Flash::open(path, size).map_err(|source| SimError::FlashFile {
            path: path.to_path_buf(),
            source,
        })
    } else {
        Flash::create_erased(path, size).map_err(|source| SimError::FlashCreate {
            path: path.to_path_buf(),
            source,
        })
    }
}

fn bind_control(path: &Path) -> Result<UnixListener, SimError> {
    let err = |source| SimError::ControlSocket {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// The chip thread: applies events in order, fires the chip's timers when they are due in
/// device time, and hands the output to the writer.
fn run_chip(
    mut chip: Chip,
    events: Receiver<Event>,
    out: Sender<pty::WriterMsg>,
    epoch: Arc<AtomicU64>,
    mut clock: Clock,
    cable: Arc<pty::Cable>,
) {
    let mut floor = RateSwitchFloor {
        last: None,
        cable: Arc::clone(&cable),
    };
    let mut flush = |chip: &mut Chip, clock: &mut Clock| {
        epoch.store(chip.hw.epoch(), Ordering::Relaxed);
        for o in chip.take_output() {
            floor.before(&o, clock);
            let _ = out.send(pty::WriterMsg::Out(o));
        }
    };
    // After power and reset commands the answer waits until the writer has put everything
    // before on the pty (or dropped it as stale), so a client that flushes its input after
    // the answer never sees output from before the command. Bounded, never a deadlock.
    let barrier = |out: &Sender<pty::WriterMsg>| {
        let (done, wait) = mpsc::channel();
        if out.send(pty::WriterMsg::Barrier(done)).is_ok() {
            let _ = wait.recv_timeout(std::time::Duration::from_secs(2));
        }
    };
    loop {
        chip.advance(clock.now());
        flush(&mut chip, &mut clock);
        let event = match chip.next_deadline() {
            Some(due) => {
                // At least a moment: a deadline that a model bug failed to consume must not
                // spin the thread.
                let wait = clock
                    .instant_at(due)
                    .saturating_duration_since(std::time::Instant::now())
                    .max(std::time::Duration::from_micros(100));
                match events.recv_timeout(wait) {
                    Ok(event) => event,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            None => match events.recv() {
                Ok(event) => event,
                Err(_) => break,
            },
        };
        // Timers due before the event fire first, at their own device time.
        chip.advance(clock.now());
        match event {
            Event::Rx { bytes, host_baud } => chip.on_rx(&bytes, host_baud),
            Event::Control(ControlCommand::Port(plug), reply) => {
                // Everything sent before the command is on the (old) pty first.
                flush(&mut chip, &mut clock);
                barrier(&out);
                let answer = if plug {
                    match cable.plug() {
                        Ok(_) => Reply::Ok(None),
                        Err(e) => Reply::Error(format!("cannot plug the port back: {e}")),
                    }
                } else {
                    cable.unplug();
                    Reply::Ok(None)
                };
                let _ = reply.send(answer);
            }
            Event::Control(cmd, reply) => {
                let settles = matches!(
                    cmd,
                    ControlCommand::PowerOn
                        | ControlCommand::PowerOff
                        | ControlCommand::PowerCycle
                        | ControlCommand::Reset
                );
                let mut answer = apply_control(&mut chip, cmd);
                if cmd == ControlCommand::Status
                    && !cable.plugged()
                    && let Reply::Ok(Some(detail)) = &mut answer
                {
                    detail.push_str(" port=unplugged");
                }
                flush(&mut chip, &mut clock);
                if settles {
                    barrier(&out);
                }
                let _ = reply.send(answer);
            }
            Event::Ota {
                generation,
                request,
                reply,
            } => chip.on_ota(generation, request, reply),
            Event::Shutdown => break,
        }
        flush(&mut chip, &mut clock);
    }
    if let Err(e) = chip.hw.flash.sync() {
        tracing::error!("flash file sync failed: {e}");
    }
}

/// Longest real time the chip waits at a UART rate switch for the host to follow.
///
/// On hardware about 100 ms pass between eboot's `ld` at 74880 baud and the app's first line at
/// its own rate (SDK start-up), and as long between a restart announcement and the ROM banner.
/// A fast device clock shrinks that to a few milliseconds, less than a host needs to see the
/// line and switch its port, more so on a loaded machine. So at the fast time scale, when the
/// chip changes rate, the chip thread waits until the host's port is at the new rate (the pty
/// shows it), for at most this long, and stops the device clock meanwhile: the board's timeline
/// is unchanged, it only runs slower around rate switches. A host that does not follow gets
/// garbage after the wait, as on hardware. With realistic timing there is no wait.
pub const RATE_SWITCH_WAIT: Duration = Duration::from_millis(500);

/// Makes the chip thread wait for the host at rate switches (see [`RATE_SWITCH_WAIT`]).
#[derive(Debug)]
struct RateSwitchFloor {
    /// Rate of the last transmitted bytes and when they were handed to the writer.
    last: Option<(u32, Instant)>,
    /// The cable, whose pty shows the rate the host set on its end (none while unplugged).
    cable: Arc<pty::Cable>,
}

impl RateSwitchFloor {
    /// Called before each output is handed to the writer; one batch can hold both sides of a
    /// switch (eboot's `ld` and the app's first line when the thread woke late).
    fn before(&mut self, output: &chip::Output, clock: &mut Clock) {
        let chip::Output::Tx { baud, .. } = output else {
            return;
        };
        if let Some((last_baud, at)) = self.last
            && last_baud != *baud
            && clock.scale() < Clock::REALISTIC
        {
            let started = Instant::now();
            let deadline = at + RATE_SWITCH_WAIT;
            while Instant::now() < deadline
                && !self
                    .cable
                    .current()
                    .and_then(|pty| pty.rate_probe().host_baud())
                    .is_some_and(|host| uart::rates_match(*baud, host))
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            clock.pause(started.elapsed());
        }
        self.last = Some((*baud, Instant::now()));
    }
}

fn apply_control(chip: &mut Chip, cmd: ControlCommand) -> Reply {
    match cmd {
        ControlCommand::PowerOn => chip.power_on(),
        ControlCommand::PowerOff => chip.power_off(),
        ControlCommand::PowerCycle => {
            chip.power_off();
            chip.power_on();
        }
        ControlCommand::Button(down) => chip.set_button(down),
        ControlCommand::Reset => {
            if !chip.hw.powered {
                return Reply::Error("board is not powered".into());
            }
            chip.reset(ResetKind::External);
        }
        ControlCommand::Status => return Reply::Ok(Some(chip.status().to_string())),
        ControlCommand::PowerCutDuringCopy(cut) => chip.hw.faults.power_cut_during_copy = cut,
        ControlCommand::Fault(fault) => {
            let faults = &mut chip.hw.faults;
            match fault {
                Fault::PowerCutDuringFlash(n) => {
                    faults.power_cut_during_flash = Some(n);
                    faults.flash_blocks = 0;
                }
                Fault::PowerCutDuringOta(n) => {
                    faults.power_cut_during_ota = Some(n);
                    faults.ota_bytes = 0;
                }
                Fault::RomSilent => faults.rom_silent = true,
                Fault::AppSilent => faults.app_silent = true,
                Fault::OtaReset(n) => match &chip.hw.net {
                    Some(net) => net.shared.arm_reset(Some(n)),
                    None => return Reply::Error("this board has no network side".into()),
                },
            }
        }
        ControlCommand::ClearFaults => {
            chip.hw.faults = Faults::default();
            if let Some(net) = &chip.hw.net {
                net.shared.arm_reset(None);
            }
        }
        // Handled by the chip thread, which owns the cable.
        ControlCommand::Port(_) => {}
    }
    Reply::Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    /// Reads from `port` until `needle` has arrived or 10 s have passed.
    fn read_until(port: &mut std::fs::File, needle: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while !got.windows(needle.len()).any(|w| w == needle) {
            assert!(
                Instant::now() < deadline,
                "timed out; got {:?}",
                String::from_utf8_lossy(&got)
            );
            let mut fds = [nix::poll::PollFd::new(
                port.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)).unwrap_or(0) == 0 {
                continue;
            }
            let mut buf = [0u8; 256];
            let n = port.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[test]
    fn handle_runs_a_board_and_shuts_down_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let flash = dir.path().join("flash.bin");
        let mut config = SimConfig::new(crate::board::find("sonoff-4ch").unwrap());
        config.flash = Some(flash.clone());
        config.boot = BootStraps::Download;
        let sim = SimHandle::start(config).unwrap();
        let ep = sim.endpoints().clone();
        assert_eq!(ep.flash, flash);
        assert_eq!(ep.lines()[0], format!("pty: {}", ep.pty.display()));
        assert!(ep.lines().contains(&"time-scale: 0.05".to_string()));
        let port = sim.firmware_port();
        assert_eq!(port.net().get().ip, ep.ip);
        assert_eq!(port.net().get().service, None);
        assert_eq!(
            port.request(0, OtaRequest::Abort),
            OtaReply::NotRunning,
            "no service before the firmware starts one"
        );
        assert_eq!(std::fs::metadata(&flash).unwrap().len(), 1 << 20);

        // The pty starts at the ROM's 74880 baud, so a plain open reads the banner as text.
        let mut port = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&ep.pty)
            .unwrap();
        nix::sys::termios::tcflush(&port, nix::sys::termios::FlushArg::TCIFLUSH).unwrap();
        assert_eq!(
            sim.command(ControlCommand::PowerCycle).unwrap(),
            Reply::Ok(None)
        );
        read_until(&mut port, b"rst cause:1, boot mode:(1,7)\r\n\r\n");
        assert_eq!(sim.command(ControlCommand::Reset).unwrap(), Reply::Ok(None));
        read_until(&mut port, b"rst cause:2, boot mode:(1,7)\r\n\r\n");
        let status = sim.control().send_line("status");
        assert!(
            status.starts_with("ok power=on button=down boot_mode=1,7 rst_cause=2"),
            "{status}"
        );

        // Closing and reopening the port does not disturb the simulator.
        drop(port);
        let mut port = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&ep.pty)
            .unwrap();
        sim.command(ControlCommand::Button(false)).unwrap();
        sim.command(ControlCommand::PowerCycle).unwrap();
        read_until(&mut port, b"boot mode:(3,7)\r\n\r\nets_main.c \r\n");

        let control = sim.control();
        sim.shutdown().unwrap();
        assert!(matches!(
            control.send(ControlCommand::Status),
            Err(SimError::Stopped)
        ));
        assert!(!ep.control.exists(), "temporary directory removed");
        assert!(flash.exists(), "a given flash file stays");
    }

    #[test]
    fn wrong_sized_flash_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let flash = dir.path().join("small.bin");
        std::fs::write(&flash, [0xFF; 4096]).unwrap();
        let mut config = SimConfig::new(crate::board::find("sonoff-basic").unwrap());
        config.flash = Some(flash.clone());
        let err = SimHandle::start(config).unwrap_err();
        assert!(
            matches!(&err, SimError::FlashFile { path, .. } if *path == flash),
            "{err:?}"
        );
        let chain = format!("{}: {}", err, std::error::Error::source(&err).unwrap());
        assert!(
            chain.contains("4096 bytes") && chain.contains("1048576 bytes"),
            "{chain}"
        );
    }
}
