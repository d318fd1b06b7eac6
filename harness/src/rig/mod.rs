//! How the harness holds and drives one board: its serial link, its power and GPIO0 lines, its
//! network address, all under a lock and a safety guard.
//!
//! L2. Imports L0 ([`crate::board`], [`crate::bootlog`]) and [`crate::capture`]; never the
//! runner or the simulator's internals (the virtual backend talks to `harness sim` through its
//! pty and control socket, like hardware).
//!
//! # Seams
//!
//! - [`Link`]: a byte pipe with deadlines. One implementation over a serial port
//!   ([`SerialLink`], a [`Capture`] that records every byte), one in memory
//!   ([`ScriptedLink`]) for client unit tests.
//! - [`Lines`]: power, GPIO0 and reset. Backends: the simulator's control socket (`virtual`),
//!   DTR/RTS (`usb-serial`), GPIO character device (`gpio`, cargo feature `gpio`).
//! - [`Rig`]: one board: a link, lines, the board profile, the OTA address, a time scale.
//!   [`BoardRig`] is the implementation every backend shares; [`open`] builds it from a
//!   [`BoardConfig`] (see [`mod@file`] for the rig file).
//!
//! Reset sequences ([`enter_download_mode`], [`power_cycle_run`]) are free functions over
//! `&mut dyn Lines`, the same for every backend.
//!
//! # Safety
//!
//! Whatever ends a run (an error, a timeout, Ctrl-C, SIGTERM, a panic), the board is left with
//! GPIO0 released and power as the rig file's `power_at_exit` says: [`BoardRig`]'s `Drop`, a
//! signal thread and a panic hook ([`safety`]) run the same action. A board another harness
//! process holds cannot be opened ([`lock`]).

pub mod file;
pub mod lock;
pub mod safety;
mod scripted;
mod sequence;
mod usb_serial;
mod r#virtual;

#[cfg(feature = "gpio")]
mod gpio;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::board::BoardProfile;
use crate::bootlog::Banner;
use crate::capture::{Capture, CaptureConfig, CaptureError, IndexEvent, Subscription};

pub use file::{Backend, BackendKind, BoardConfig, PowerAtExit, RigConfig, RigFileError};
pub use lock::BoardLock;
pub use scripted::ScriptedLink;
pub use sequence::{
    BANNER_TIMEOUT, POWER_OFF_TIME, RESET_PULSE, ResetTiming, SETTLE_TIME, enter_download_mode,
    power_cycle_run, wait_banner,
};
pub use r#virtual::SimClient;

/// Errors of the rig layer.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum RigError {
    /// The rig cannot do this (no power switch, no reset line, ...).
    #[error("this rig cannot {what}")]
    #[diagnostic(
        code(harness::rig::unsupported),
        help("wire the line and name it in the rig file, or skip steps that need it")
    )]
    Unsupported {
        /// What was asked.
        what: &'static str,
    },
    /// The rig file cannot be read.
    #[error("cannot read rig file {path}")]
    #[diagnostic(code(harness::rig::read))]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The rig file is invalid.
    #[error(transparent)]
    #[diagnostic(transparent)]
    File(#[from] Box<RigFileError>),
    /// No board of that name in the rig.
    #[error("no board `{name}` in {rig}")]
    #[diagnostic(code(harness::rig::no_board), help("boards in this rig: {known}"))]
    NoSuchBoard {
        /// The name asked for.
        name: String,
        /// The rig.
        rig: String,
        /// The boards it has.
        known: String,
    },
    /// Another harness process holds the board.
    #[error(
        "board `{board}` is in use by another harness process{} (lock file {})",
        holder_text(*.pid),
        .lock.display()
    )]
    #[diagnostic(
        code(harness::rig::busy),
        help(
            "wait for that run to finish, or stop it; the lock is released as soon as the \
             holding process exits, however it exits"
        )
    )]
    Busy {
        /// The board (or port) name.
        board: String,
        /// The holder's process id, if it wrote one.
        pid: Option<u32>,
        /// The lock file.
        lock: PathBuf,
    },
    /// The lock file cannot be created or locked.
    #[error("cannot use lock file {path}")]
    #[diagnostic(
        code(harness::rig::lock),
        help("set HARNESS_LOCK_DIR to a writable folder")
    )]
    Lock {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The serial capture failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Capture(#[from] CaptureError),
    /// The simulator could not be started.
    #[error("cannot start the simulator `{exe}`")]
    #[diagnostic(
        code(harness::rig::sim_spawn),
        help("the virtual backend runs `harness sim`; set HARNESS_SIM_EXE to the harness binary")
    )]
    SimSpawn {
        /// The program.
        exe: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The simulator did not print its endpoints.
    #[error("the simulator did not report its `{missing}` endpoint (it printed {printed:?})")]
    #[diagnostic(
        code(harness::rig::sim_endpoints),
        help("run `harness sim --board <kind>` by hand to see why it does not start")
    )]
    SimEndpoints {
        /// The endpoint missing.
        missing: &'static str,
        /// What it printed.
        printed: Vec<String>,
    },
    /// The simulator's control socket failed.
    #[error("simulator control socket {socket}: `{command}` failed")]
    #[diagnostic(
        code(harness::rig::sim_control),
        help("is the simulator still running? `harness sim` prints its control socket path")
    )]
    SimControl {
        /// The socket.
        socket: PathBuf,
        /// The command sent.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The simulator answered a control command with an error.
    #[error("the simulator refused `{command}`: {reply}")]
    #[diagnostic(code(harness::rig::sim_refused))]
    SimRefused {
        /// The command sent.
        command: String,
        /// Its answer.
        reply: String,
    },
    /// The rig file names a backend this binary was built without.
    #[error("backend `{backend}` is not built into this harness")]
    #[diagnostic(
        code(harness::rig::not_built),
        help("rebuild with `cargo build --release --features {feature}`")
    )]
    NotBuilt {
        /// The backend.
        backend: &'static str,
        /// The cargo feature.
        feature: &'static str,
    },
    /// A GPIO line could not be requested or set.
    #[cfg(feature = "gpio")]
    #[error("GPIO {chip} line {line}: cannot {operation}")]
    #[diagnostic(
        code(harness::rig::gpio),
        help(
            "check the chip and line with `gpioinfo`, that no other program holds the line, \
             and that you may open /dev/gpiochip* (group gpio)"
        )
    )]
    Gpio {
        /// The chip.
        chip: String,
        /// The line offset.
        line: u32,
        /// What was attempted.
        operation: &'static str,
        /// Why.
        #[source]
        source: gpiocdev::Error,
    },
}

fn holder_text(pid: Option<u32>) -> String {
    pid.map_or(String::new(), |p| format!(" (pid {p})"))
}

/// What a rig's lines can do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Switch the board's power.
    pub power: bool,
    /// Hold GPIO0 low.
    pub gpio0: bool,
    /// Pulse RST/EN.
    pub reset: bool,
    /// Reach the board over the network (an OTA address is known).
    pub ota: bool,
}

impl Capabilities {
    /// The names scenarios use in `requires = [...]`.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.power, "power"),
            (self.gpio0, "gpio0"),
            (self.reset, "reset"),
            (self.ota, "ota"),
        ]
        .into_iter()
        .filter_map(|(has, name)| has.then_some(name))
        .collect()
    }

    /// Whether the rig has the capability called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.names().contains(&name)
    }
}

/// Device time to real time: `real = device × scale`. 1.0 on hardware; below 1 for a
/// simulator whose device clock runs faster than real time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeScale(f64);

impl TimeScale {
    /// Real time.
    pub const REAL: TimeScale = TimeScale(1.0);

    /// A scale; `None` unless finite and above 0.
    pub fn new(scale: f64) -> Option<TimeScale> {
        (scale.is_finite() && scale > 0.0).then_some(TimeScale(scale))
    }

    /// The factor.
    pub fn factor(self) -> f64 {
        self.0
    }

    /// The real duration of a device duration.
    pub fn real(self, device: Duration) -> Duration {
        device.mul_f64(self.0)
    }

    /// Sleeps for a device duration (the reset sequences' fixed waits).
    pub fn sleep(self, device: Duration) {
        std::thread::sleep(self.real(device));
    }
}

impl Default for TimeScale {
    fn default() -> Self {
        TimeScale::REAL
    }
}

/// Where OTA reaches the board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtaTarget {
    /// Host name or IP address.
    pub host: String,
    /// The espota (ArduinoOTA) port, when not the firmware's default.
    pub espota_port: Option<u16>,
    /// The HTTP update port, when not the firmware's default.
    pub http_port: Option<u16>,
}

/// A byte pipe to the board with deadlines.
pub trait Link: Send {
    /// Reads what has arrived, waiting up to `timeout` for at least one byte. `Ok(0)` means
    /// nothing arrived in time (not end of file: a serial line has none).
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, RigError>;
    /// Writes all of `data`.
    fn write_all(&mut self, data: &[u8]) -> Result<(), RigError>;
    /// Sets the baud rate.
    fn set_baud(&mut self, baud: u32) -> Result<(), RigError>;
    /// The current baud rate.
    fn baud(&self) -> u32;
    /// Waits until everything written has been sent.
    fn drain(&mut self) -> Result<(), RigError>;
    /// Discards bytes received and not read yet.
    fn discard_input(&mut self) -> Result<(), RigError>;
}

/// The control lines of one board. Levels are logical: `pressed`/`asserted` mean the board pin
/// is pulled low, whatever the wiring.
pub trait Lines: Send {
    /// What these lines can do.
    fn capabilities(&self) -> Capabilities;
    /// Switches the board's power.
    fn set_power(&mut self, on: bool) -> Result<(), RigError>;
    /// Holds GPIO0 low (`true`) or releases it (high-impedance; the board's pull-up wins).
    fn set_gpio0(&mut self, pressed: bool) -> Result<(), RigError>;
    /// Asserts (EN low) or releases the reset line.
    fn set_reset(&mut self, asserted: bool) -> Result<(), RigError> {
        let _ = asserted;
        Err(RigError::Unsupported {
            what: "pulse the reset line (no reset line wired)",
        })
    }
}

/// One board held by the harness. Drivers (flash client, OTA client, console reader) borrow its
/// link and lines.
pub trait Rig: Send {
    /// The board's name in the rig.
    fn name(&self) -> &str;
    /// The board profile.
    fn board(&self) -> &'static BoardProfile;
    /// What the rig can do.
    fn capabilities(&self) -> Capabilities;
    /// The serial link.
    fn link(&mut self) -> &mut dyn Link;
    /// The control lines (changes are noted in the capture).
    fn lines(&mut self) -> &mut dyn Lines;
    /// The capture of the serial port (subscribe to lines, add notes).
    fn capture(&self) -> &Capture;
    /// Where OTA reaches the board.
    fn ota(&self) -> Option<&OtaTarget>;
    /// Device time to real time.
    fn time_scale(&self) -> TimeScale;
    /// Releases GPIO0 and sets power as the rig file says for exit.
    fn safe_state(&mut self) -> Result<(), RigError>;
    /// `name: value` pairs describing the board's resources, for people.
    fn describe(&self) -> Vec<(&'static str, String)>;

    /// Power off, GPIO0 held, power on, GPIO0 released after the ROM banner: the ROM serial
    /// loader waits for a host. Returns the banner if one was seen.
    fn enter_download_mode(&mut self) -> Result<Option<Banner>, RigError> {
        let sub = self.capture().subscribe();
        let scale = self.time_scale();
        enter_download_mode(self.lines(), &ResetTiming::default(), scale, &mut |t| {
            wait_banner(&sub, t)
        })
    }

    /// Power off (>= 200 ms device time), GPIO0 released, power on: a clean boot from flash.
    fn power_cycle_run(&mut self) -> Result<(), RigError> {
        let scale = self.time_scale();
        power_cycle_run(self.lines(), &ResetTiming::default(), scale)
    }
}

/// The serial [`Link`]: a [`Capture`] (one reader thread, every byte on disk).
#[derive(Debug, Clone)]
pub struct SerialLink(Arc<Capture>);

impl SerialLink {
    /// A link over `capture` (a bare port, or a rig board's).
    pub fn new(capture: Arc<Capture>) -> Self {
        SerialLink(capture)
    }

    /// The capture behind the link.
    pub fn capture(&self) -> &Capture {
        &self.0
    }
}

impl Link for SerialLink {
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, RigError> {
        Ok(self.0.read(buf, timeout)?)
    }
    fn write_all(&mut self, data: &[u8]) -> Result<(), RigError> {
        Ok(self.0.write_all(data)?)
    }
    fn set_baud(&mut self, baud: u32) -> Result<(), RigError> {
        Ok(self.0.set_baud(baud)?)
    }
    fn baud(&self) -> u32 {
        self.0.baud()
    }
    fn drain(&mut self) -> Result<(), RigError> {
        Ok(self.0.flush()?)
    }
    fn discard_input(&mut self) -> Result<(), RigError> {
        Ok(self.0.discard_input()?)
    }
}

/// The backend's lines, shared with the safety guard (signal thread, panic hook).
type SharedLines = Arc<Mutex<Box<dyn Lines>>>;

fn lock_lines(lines: &SharedLines) -> MutexGuard<'_, Box<dyn Lines>> {
    lines.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The rig's view of the lines: forwards to the backend and notes every change in the capture
/// (a power-on also tells the baud follower that the ROM is about to print). Setting a line to
/// the level it is known to have is passed on but not noted: nothing happened to the board.
struct NotedLines {
    lines: SharedLines,
    capture: Arc<Capture>,
    power: Option<bool>,
    gpio0: Option<bool>,
    reset: Option<bool>,
}

impl NotedLines {
    fn new(lines: SharedLines, capture: Arc<Capture>) -> Self {
        NotedLines {
            lines,
            capture,
            power: None,
            gpio0: None,
            reset: None,
        }
    }

    fn note(&self, event: IndexEvent) {
        if let Err(e) = self.capture.note(event) {
            tracing::warn!("capture note: {e}");
        }
    }
}

impl Lines for NotedLines {
    fn capabilities(&self) -> Capabilities {
        lock_lines(&self.lines).capabilities()
    }

    fn set_power(&mut self, on: bool) -> Result<(), RigError> {
        let change = self.power != Some(on);
        if on && change {
            // Before: the ROM's first bytes must be read at its rate.
            self.note(IndexEvent::Power { on });
        }
        let r = lock_lines(&self.lines).set_power(on);
        self.power = if r.is_ok() { Some(on) } else { None };
        if !on && change && r.is_ok() {
            self.note(IndexEvent::Power { on });
        }
        r
    }

    fn set_gpio0(&mut self, pressed: bool) -> Result<(), RigError> {
        let r = lock_lines(&self.lines).set_gpio0(pressed);
        if r.is_ok() && self.gpio0 != Some(pressed) {
            self.note(IndexEvent::Button { pressed });
        }
        self.gpio0 = if r.is_ok() { Some(pressed) } else { None };
        r
    }

    fn set_reset(&mut self, asserted: bool) -> Result<(), RigError> {
        let change = self.reset != Some(asserted);
        if !asserted && change {
            // Before: a released reset restarts the ROM.
            self.note(IndexEvent::Reset { asserted });
        }
        let r = lock_lines(&self.lines).set_reset(asserted);
        self.reset = if r.is_ok() { Some(asserted) } else { None };
        if asserted && change && r.is_ok() {
            self.note(IndexEvent::Reset { asserted });
        }
        r
    }
}

/// Releases GPIO0 and sets power to `power_at_exit` (what every exit path runs).
fn apply_safe_state(lines: &mut dyn Lines, power_at_exit: PowerAtExit) -> Result<(), RigError> {
    let caps = lines.capabilities();
    let mut first_err = None;
    if caps.gpio0 {
        first_err = lines.set_gpio0(false).err();
    }
    if caps.reset
        && let Err(e) = lines.set_reset(false)
    {
        first_err.get_or_insert(e);
    }
    if caps.power
        && let Err(e) = lines.set_power(power_at_exit.is_on())
    {
        first_err.get_or_insert(e);
    }
    first_err.map_or(Ok(()), Err)
}

/// How [`open`] should open a board.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// The capture file (its index goes beside it). `None`: no files.
    pub capture_file: Option<PathBuf>,
    /// The program to run as `<exe> sim` for virtual boards. Default: `HARNESS_SIM_EXE`, else
    /// the running executable.
    pub sim_exe: Option<PathBuf>,
    /// Line prefixes that announce a restart (for the baud follower), besides the defaults of
    /// [`CaptureConfig::new`].
    pub restart_markers: Vec<String>,
    /// Keep the port at the board's app rate instead of following the boot stages.
    pub fixed_baud: bool,
    /// Keep a subscription that sees the capture from its first byte
    /// ([`BoardRig::take_initial_subscription`]).
    pub subscribe: bool,
}

/// What a backend keeps alive while the board is open (a simulator process).
trait Resource: Send + fmt::Debug {}
impl<T: Send + fmt::Debug> Resource for T {}

/// The [`Rig`] of every backend: a capture on the serial port, the backend's lines, a lock, a
/// safety registration.
pub struct BoardRig {
    name: String,
    profile: &'static BoardProfile,
    power_at_exit: PowerAtExit,
    ota: Option<OtaTarget>,
    time_scale: TimeScale,
    describe: Vec<(&'static str, String)>,
    // Drop order matters: the guard first (nothing runs the safe state after the lines go),
    // then the lines and the capture, then the backend (simulator), then the locks.
    guard: Option<safety::Registration>,
    initial: Option<Subscription>,
    lines: NotedLines,
    link: SerialLink,
    backend: Box<dyn Resource>,
    _locks: Vec<BoardLock>,
}

impl fmt::Debug for BoardRig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoardRig")
            .field("name", &self.name)
            .field("board", &self.profile.id)
            .field("describe", &self.describe)
            .field("backend", &self.backend)
            .finish()
    }
}

/// Opens a board: takes its lock (hardware and attached simulators), starts or attaches the
/// backend, opens the serial port with a capture, and registers the safety guard.
pub fn open(config: &BoardConfig, options: &OpenOptions) -> Result<BoardRig, RigError> {
    let locks = if config.is_shared() {
        lock::lock_board(config)?
    } else {
        Vec::new()
    };
    let mut describe = vec![
        (
            "board",
            format!("{} ({})", config.name, config.profile.name),
        ),
        ("backend", config.backend.kind().name().to_string()),
    ];
    let capture_config = |port: PathBuf| {
        let mut c = CaptureConfig::new(port);
        c.file = options.capture_file.clone();
        c.app_baud = config.app_baud;
        c.follow = !options.fixed_baud;
        c.restart_markers
            .extend(options.restart_markers.iter().cloned());
        c
    };
    let start = |c: CaptureConfig| -> Result<(Arc<Capture>, Option<Subscription>), RigError> {
        if options.subscribe {
            let (capture, sub) = Capture::start_subscribed(c)?;
            Ok((Arc::new(capture), Some(sub)))
        } else {
            Ok((Arc::new(Capture::start(c)?), None))
        }
    };
    let mut ota = config.host.as_ref().map(|host| OtaTarget {
        host: host.clone(),
        espota_port: None,
        http_port: None,
    });
    type Parts = (
        Box<dyn Lines>,
        Arc<Capture>,
        Option<Subscription>,
        Box<dyn Resource>,
    );
    let mut time_scale = config.time_scale;
    let (lines, capture, initial, backend): Parts = match &config.backend {
        Backend::Virtual(v) => {
            let sim = r#virtual::Sim::start_or_attach(config, v, options)?;
            // The simulator runs on its own device clock; its scale is what our waits use.
            if let Some(scale) = sim.time_scale() {
                time_scale = scale;
            }
            let (capture, sub) = start(capture_config(sim.pty().into()))?;
            for (k, val) in sim.describe() {
                describe.push((k, val));
            }
            if ota.is_none() {
                ota = sim.ota();
            }
            let lines = sim.lines()?;
            (Box::new(lines), capture, sub, Box::new(sim))
        }
        Backend::UsbSerial(u) => {
            let mut c = capture_config(u.port.clone());
            let (dtr, rts) = usb_serial::resting_levels(u, config.power_at_exit);
            c.dtr = Some(dtr);
            c.rts = Some(rts);
            let (capture, sub) = start(c)?;
            let lines = usb_serial::ModemLines::new(Arc::clone(&capture), u.power_rts);
            (Box::new(lines), capture, sub, Box::new(()))
        }
        #[cfg(feature = "gpio")]
        Backend::Gpio(g) => {
            let lines = gpio::GpioLines::request(g, config.power_at_exit, &config.name)?;
            let (capture, sub) = start(capture_config(g.port.clone()))?;
            (Box::new(lines), capture, sub, Box::new(()))
        }
        #[cfg(not(feature = "gpio"))]
        Backend::Gpio(_) => {
            return Err(RigError::NotBuilt {
                backend: "gpio",
                feature: "gpio",
            });
        }
    };
    describe.push(("port", capture.port().display().to_string()));
    if let Some(f) = capture.file() {
        describe.push(("capture", f.display().to_string()));
    }
    if let Some(o) = &ota {
        describe.push(("ota", o.host.clone()));
    }
    let shared: SharedLines = Arc::new(Mutex::new(lines));
    let guard = safety::register(
        &config.name,
        Arc::clone(&shared),
        Arc::downgrade(&capture),
        config.power_at_exit,
    );
    Ok(BoardRig {
        name: config.name.clone(),
        profile: config.profile,
        power_at_exit: config.power_at_exit,
        ota,
        time_scale,
        describe,
        guard: Some(guard),
        initial,
        lines: NotedLines::new(shared, Arc::clone(&capture)),
        link: SerialLink(capture),
        backend,
        _locks: locks,
    })
}

impl BoardRig {
    /// The subscription kept by [`OpenOptions::subscribe`]: every line since the port opened.
    pub fn take_initial_subscription(&mut self) -> Option<Subscription> {
        self.initial.take()
    }
}

impl Rig for BoardRig {
    fn name(&self) -> &str {
        &self.name
    }
    fn board(&self) -> &'static BoardProfile {
        self.profile
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ota: self.ota.is_some(),
            ..self.lines.capabilities()
        }
    }
    fn link(&mut self) -> &mut dyn Link {
        &mut self.link
    }
    fn lines(&mut self) -> &mut dyn Lines {
        &mut self.lines
    }
    fn capture(&self) -> &Capture {
        self.link.capture()
    }
    fn ota(&self) -> Option<&OtaTarget> {
        self.ota.as_ref()
    }
    fn time_scale(&self) -> TimeScale {
        self.time_scale
    }
    fn safe_state(&mut self) -> Result<(), RigError> {
        apply_safe_state(&mut self.lines, self.power_at_exit)
    }
    fn describe(&self) -> Vec<(&'static str, String)> {
        self.describe.clone()
    }
}

impl Drop for BoardRig {
    fn drop(&mut self) {
        if let Err(e) = self.safe_state() {
            tracing::error!("board {}: cannot apply the exit state: {e}", self.name);
        }
        self.guard.take();
    }
}
