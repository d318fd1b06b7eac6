//! The rig file: which boards a rig has and how each is wired.
//!
//! Read in two steps (style rule 6): serde fills [`RawRig`] (every key checked, unknown keys
//! rejected, spans kept), then [`RigConfig::parse`] validates it into [`RigConfig`] (board
//! kinds resolved against `harness/boards.toml`, keys checked against the backend, names
//! unique, relative paths resolved against the file's folder). Every error names the file, the
//! line and column, and the key (`board[1].power.line`), with the source line as a miette
//! snippet.
//!
//! ```toml
//! [[board]]
//! name = "basic"              # unique; `--board basic`
//! kind = "sonoff-basic"       # a board id from harness/boards.toml
//! backend = "gpio"            # virtual | gpio | usb-serial
//! port = "/dev/ttyAMA0"       # serial port (not for virtual)
//! baud = 115200               # the app's rate (default 115200)
//! host = "192.168.1.51"       # network address for OTA
//! power_at_exit = "off"       # on | off: left so when the harness exits, also the resting state
//! power = { chip = "gpiochip0", line = 17, active = "high" }
//! gpio0 = { chip = "gpiochip0", line = 27 }                  # driven open-drain
//! reset = { chip = "gpiochip0", line = 22 }                  # optional, open-drain to EN/RST
//! ```
//!
//! `usb-serial` boards use the adapter's modem lines as the common auto-reset circuit (DTR →
//! GPIO0, RTS → EN, asserted = low) and may switch power with RTS instead:
//! `power = { modem = "rts", active = "low" }`. `virtual` boards take `[board.sim]` options:
//! `flash`, `tx_log`, `realistic_timing`, `boot`, `faults` (a `harness sim` is started per
//! process; `faults = ["power-cut-during-copy 3"]` arms fault knobs in it before the run, each
//! the words after `fault` in a control line), or `control` + `pty` to attach to a `harness sim`
//! that is already running, with `http` and `ota` (its endpoint addresses) when OTA should reach
//! it and `time_scale` (its `time-scale:`) so that device durations are scaled to its clock.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use miette::{NamedSource, SourceSpan};
use serde::Deserialize;
use toml::Spanned;

use crate::board::{self, BoardProfile};
use crate::capture::DEFAULT_APP_BAUD;

use super::{RigError, TimeScale};

/// The built-in rig used when no rig file is given (also `scenarios/rigs/virtual.toml`).
const BUILTIN_VIRTUAL: &str = include_str!("../../../scenarios/rigs/virtual.toml");

/// The rig file as written (serde).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRig {
    /// What the rig is, for people.
    #[serde(default)]
    pub description: Option<String>,
    /// The boards.
    #[serde(default)]
    pub board: Vec<Spanned<RawBoard>>,
}

/// One `[[board]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBoard {
    name: Spanned<String>,
    kind: Spanned<String>,
    backend: Spanned<BackendKind>,
    #[serde(default)]
    port: Option<Spanned<PathBuf>>,
    #[serde(default)]
    baud: Option<Spanned<u32>>,
    #[serde(default)]
    host: Option<Spanned<String>>,
    #[serde(default)]
    power_at_exit: Option<PowerAtExit>,
    #[serde(default)]
    power: Option<Spanned<RawPower>>,
    #[serde(default)]
    gpio0: Option<Spanned<RawGpioLine>>,
    #[serde(default)]
    reset: Option<Spanned<RawGpioLine>>,
    #[serde(default)]
    sim: Option<Spanned<RawSim>>,
}

/// The `power` table as written: gpio keys or the usb-serial key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPower {
    #[serde(default)]
    chip: Option<Spanned<String>>,
    #[serde(default)]
    line: Option<Spanned<u32>>,
    #[serde(default)]
    active: Option<Level>,
    #[serde(default)]
    modem: Option<Spanned<ModemLine>>,
}

/// A GPIO line to a board pin (GPIO0, RST/EN), pulled low when asserted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpioLine {
    chip: String,
    line: u32,
    #[serde(default)]
    wiring: Option<Wiring>,
}

/// `[board.sim]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSim {
    #[serde(default)]
    flash: Option<Spanned<PathBuf>>,
    #[serde(default)]
    tx_log: Option<Spanned<PathBuf>>,
    #[serde(default)]
    realistic_timing: Option<Spanned<bool>>,
    #[serde(default)]
    boot: Option<Spanned<SimBoot>>,
    #[serde(default)]
    faults: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    control: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pty: Option<Spanned<PathBuf>>,
    #[serde(default)]
    http: Option<Spanned<String>>,
    #[serde(default)]
    ota: Option<Spanned<String>>,
    #[serde(default)]
    time_scale: Option<Spanned<f64>>,
}

/// How a board is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// The simulator (`harness sim`).
    Virtual,
    /// Linux GPIO character device (Raspberry Pi) + a serial port.
    Gpio,
    /// A USB-serial adapter whose DTR/RTS drive GPIO0/EN.
    UsbSerial,
}

impl BackendKind {
    /// The name used in rig files.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Virtual => "virtual",
            BackendKind::Gpio => "gpio",
            BackendKind::UsbSerial => "usb-serial",
        }
    }
}

/// The power state the harness leaves a board in (and requests power lines at).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerAtExit {
    /// Powered.
    On,
    /// Unpowered (the default: nothing runs unattended).
    #[default]
    Off,
}

impl PowerAtExit {
    /// True for [`PowerAtExit::On`].
    pub fn is_on(self) -> bool {
        self == PowerAtExit::On
    }
}

/// The level at which an output is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Active when high.
    High,
    /// Active when low (many relay modules).
    Low,
}

/// A modem line of a USB-serial adapter, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModemLine {
    /// Power is not switched by the rig.
    None,
    /// RTS switches power (the EN reset is then not available).
    Rts,
    /// DTR (not allowed for power: it drives GPIO0).
    Dtr,
}

/// How a GPIO0/reset line reaches the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Wiring {
    /// The Pi pin is wired to the board pin and driven open-drain: low when asserted,
    /// high-impedance when released, never 3.3 V into a node a button shorts to ground.
    #[default]
    OpenDrain,
    /// The Pi pin drives the gate/base of an N-MOSFET/NPN whose drain/collector pulls the board
    /// pin low (hardware.md): push-pull, high when asserted.
    Transistor,
}

/// The simulator's boot straps at its first power-on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimBoot {
    /// GPIO0 released.
    #[default]
    Flash,
    /// GPIO0 held (until the rig releases it).
    Download,
}

/// A validated rig.
#[derive(Debug, Clone, PartialEq)]
pub struct RigConfig {
    /// Where it came from (a path, or `built-in virtual rig`).
    pub source: String,
    /// What it is.
    pub description: Option<String>,
    /// The boards, in file order.
    pub boards: Vec<BoardConfig>,
}

/// One validated board.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardConfig {
    /// Unique name in the rig.
    pub name: String,
    /// The board profile.
    pub profile: &'static BoardProfile,
    /// How it is connected.
    pub backend: Backend,
    /// The app's baud rate.
    pub app_baud: u32,
    /// OTA address (host name or IP).
    pub host: Option<String>,
    /// The power state at exit (and at rest).
    pub power_at_exit: PowerAtExit,
    /// Device time to real time.
    pub time_scale: TimeScale,
    /// Line of the rig file where the board is defined.
    pub line: usize,
}

/// Backend and its wiring.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// A simulator.
    Virtual(VirtualConfig),
    /// GPIO character device + serial port.
    Gpio(GpioConfig),
    /// USB-serial adapter with DTR/RTS.
    UsbSerial(UsbSerialConfig),
}

impl Backend {
    /// The kind.
    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::Virtual(_) => BackendKind::Virtual,
            Backend::Gpio(_) => BackendKind::Gpio,
            Backend::UsbSerial(_) => BackendKind::UsbSerial,
        }
    }
}

/// A virtual board: start a simulator, or attach to one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VirtualConfig {
    /// Flash file for a started simulator.
    pub flash: Option<PathBuf>,
    /// TX log for a started simulator.
    pub tx_log: Option<PathBuf>,
    /// Real UART and flash timing in a started simulator.
    pub realistic_timing: bool,
    /// Boot straps at the started simulator's first power-on.
    pub boot: SimBoot,
    /// Fault knobs armed in a started simulator before the run: each the words after `fault`
    /// in a control line (`power-cut-during-copy 3`; see `harness::sim::control`).
    pub faults: Vec<String>,
    /// A running simulator to attach to instead.
    pub attach: Option<SimAttach>,
}

/// A running `harness sim`.
#[derive(Debug, Clone, PartialEq)]
pub struct SimAttach {
    /// Its control socket.
    pub control: PathBuf,
    /// Its pty (best its stable `port:` name).
    pub pty: PathBuf,
    /// Its HTTP update server (`http:` endpoint), for OTA.
    pub http: Option<std::net::SocketAddr>,
    /// Its ArduinoOTA port (`ota:` endpoint), for OTA.
    pub ota: Option<std::net::SocketAddr>,
    /// Its device clock (`time-scale:` endpoint: real seconds per device second).
    pub time_scale: Option<TimeScale>,
}

/// A GPIO line: chip (name like `gpiochip0` or path) and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpioLine {
    /// The chip.
    pub chip: String,
    /// The line offset on the chip.
    pub line: u32,
}

/// A board wired to GPIO lines.
#[derive(Debug, Clone, PartialEq)]
pub struct GpioConfig {
    /// Serial port.
    pub port: PathBuf,
    /// The power switch's control line.
    pub power: GpioLine,
    /// The level that switches power on.
    pub power_active: Level,
    /// The line to GPIO0.
    pub gpio0: GpioLine,
    /// How the GPIO0 line is wired.
    pub gpio0_wiring: Wiring,
    /// An optional line to RST/EN, and its wiring.
    pub reset: Option<(GpioLine, Wiring)>,
}

/// A board behind a USB-serial adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct UsbSerialConfig {
    /// Serial port.
    pub port: PathBuf,
    /// Power switched by RTS (`Some(level that switches it on)`), or not switched.
    pub power_rts: Option<Level>,
}

impl BoardConfig {
    /// The serial port (hardware), or the pty of an attached simulator.
    pub fn port(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Virtual(v) => v.attach.as_ref().map(|a| a.pty.as_path()),
            Backend::Gpio(g) => Some(&g.port),
            Backend::UsbSerial(u) => Some(&u.port),
        }
    }

    /// Whether another process could hold the same board (hardware, or an attached
    /// simulator); a simulator started by this process is private to it.
    pub fn is_shared(&self) -> bool {
        !matches!(&self.backend, Backend::Virtual(v) if v.attach.is_none())
    }
}

/// What is wrong in a rig file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// TOML syntax, a wrong type, an unknown or missing key (the TOML reader's message).
    Toml {
        /// The key, when the position names one.
        key: Option<String>,
        /// What the reader said.
        message: String,
    },
    /// Two boards with one name.
    DuplicateName {
        /// The key.
        key: String,
        /// The name.
        name: String,
        /// Line of the first board with it.
        first_line: usize,
    },
    /// A kind that is not in harness/boards.toml.
    UnknownKind {
        /// The key.
        key: String,
        /// The kind.
        kind: String,
        /// The kinds that exist.
        known: String,
    },
    /// A key the backend needs.
    Missing {
        /// The key.
        key: String,
        /// The backend.
        backend: &'static str,
    },
    /// A key the backend does not use.
    NotAllowed {
        /// The key.
        key: String,
        /// The backend.
        backend: &'static str,
    },
    /// A value out of range.
    Invalid {
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
    },
}

impl Problem {
    /// The key the problem is about.
    pub fn key(&self) -> Option<&str> {
        match self {
            Problem::Toml { key, .. } => key.as_deref(),
            Problem::DuplicateName { key, .. }
            | Problem::UnknownKind { key, .. }
            | Problem::Missing { key, .. }
            | Problem::NotAllowed { key, .. }
            | Problem::Invalid { key, .. } => Some(key),
        }
    }

    fn help(&self) -> Option<String> {
        Some(match self {
            Problem::Toml { .. } => return None,
            Problem::DuplicateName { .. } => {
                "board names select boards (`--board NAME`) and name their lock files; make \
                 each one unique"
                    .into()
            }
            Problem::UnknownKind { known, .. } => format!("known kinds: {known}"),
            Problem::Missing { key, .. } if key.ends_with("port") => {
                "the serial port the board's TX/RX are wired to, e.g. \"/dev/ttyUSB0\" or \
                 \"/dev/ttyAMA0\""
                    .into()
            }
            Problem::Missing { key, .. } if key.ends_with("pty") || key.ends_with("control") => {
                "to attach to a running `harness sim`, give both `control` and `pty` as it \
                 printed them"
                    .into()
            }
            Problem::Missing { .. } => {
                "see scenarios/rigs/pi.toml for a complete board of each backend".into()
            }
            Problem::NotAllowed { backend, .. } => {
                format!("remove the key, or change `backend` (this board is `{backend}`)")
            }
            Problem::Invalid { .. } => return None,
        })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Toml {
                key: Some(k),
                message,
            } => write!(f, "key `{k}`: {message}"),
            Problem::Toml { key: None, message } => f.write_str(message),
            Problem::DuplicateName {
                key,
                name,
                first_line,
            } => write!(
                f,
                "key `{key}`: board name `{name}` is already used on line {first_line}"
            ),
            Problem::UnknownKind { key, kind, .. } => {
                write!(f, "key `{key}`: unknown board kind `{kind}`")
            }
            Problem::Missing { key, backend } => {
                write!(f, "key `{key}` is required for backend `{backend}`")
            }
            Problem::NotAllowed { key, backend } => {
                write!(f, "key `{key}` is not used by backend `{backend}`")
            }
            Problem::Invalid { key, reason } => write!(f, "key `{key}`: {reason}"),
        }
    }
}

/// A rig file that cannot be used: where, which key, what.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{}:{line}:{column}: {problem}", path.display())]
#[diagnostic(code(harness::rig::file))]
pub struct RigFileError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (characters).
    pub column: usize,
    /// What is wrong.
    pub problem: Problem,
    #[source_code]
    source_code: NamedSource<String>,
    #[label("here")]
    span: SourceSpan,
    #[help]
    help: Option<String>,
}

impl RigFileError {
    fn new(path: &Path, src: &str, span: Range<usize>, problem: Problem) -> Box<Self> {
        let start = span.start.min(src.len());
        let (line, column) = line_col(src, start);
        let len = span.end.clamp(start, src.len()) - start;
        Box::new(RigFileError {
            path: path.to_path_buf(),
            line,
            column,
            help: problem.help(),
            problem,
            source_code: NamedSource::new(path.display().to_string(), src.to_string()),
            span: (start, len).into(),
        })
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(src: &str, pos: usize) -> (usize, usize) {
    let before = &src[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Collects the validation problems of one file.
struct Check<'a> {
    path: &'a Path,
    src: &'a str,
    base: &'a Path,
}

impl Check<'_> {
    fn err(&self, span: Range<usize>, problem: Problem) -> Box<RigFileError> {
        RigFileError::new(self.path, self.src, span, problem)
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn board(
        &self,
        index: usize,
        raw: &Spanned<RawBoard>,
    ) -> Result<BoardConfig, Box<RigFileError>> {
        let span = raw.span();
        let b = raw.get_ref();
        let key = |k: &str| format!("board[{index}].{k}");
        let backend = *b.backend.get_ref();
        let bname = backend.name();
        let not_allowed = |k: &str, s: Range<usize>| {
            self.err(
                s,
                Problem::NotAllowed {
                    key: key(k),
                    backend: bname,
                },
            )
        };
        let missing = |k: &str| {
            self.err(
                span.clone(),
                Problem::Missing {
                    key: key(k),
                    backend: bname,
                },
            )
        };

        if b.name.get_ref().trim().is_empty() {
            return Err(self.err(
                b.name.span(),
                Problem::Invalid {
                    key: key("name"),
                    reason: "a board name must not be empty",
                },
            ));
        }
        let profile = board::find(b.kind.get_ref()).map_err(|e| {
            self.err(
                b.kind.span(),
                Problem::UnknownKind {
                    key: key("kind"),
                    kind: e.id,
                    known: e.known,
                },
            )
        })?;
        let app_baud = match &b.baud {
            Some(s) if *s.get_ref() == 0 => {
                return Err(self.err(
                    s.span(),
                    Problem::Invalid {
                        key: key("baud"),
                        reason: "the baud rate must be above 0",
                    },
                ));
            }
            Some(s) => *s.get_ref(),
            None => DEFAULT_APP_BAUD,
        };
        let host = match &b.host {
            Some(h)
                if h.get_ref().trim().is_empty() || h.get_ref().contains(char::is_whitespace) =>
            {
                return Err(self.err(
                    h.span(),
                    Problem::Invalid {
                        key: key("host"),
                        reason: "a host name or IP address without spaces is expected",
                    },
                ));
            }
            Some(h) => Some(h.get_ref().clone()),
            None => None,
        };

        let backend = match backend {
            BackendKind::Virtual => {
                if let Some(p) = &b.port {
                    return Err(not_allowed("port", p.span()));
                }
                for (k, v) in [
                    ("power", b.power.as_ref().map(Spanned::span)),
                    ("gpio0", b.gpio0.as_ref().map(Spanned::span)),
                    ("reset", b.reset.as_ref().map(Spanned::span)),
                ] {
                    if let Some(s) = v {
                        return Err(not_allowed(k, s));
                    }
                }
                Backend::Virtual(self.sim(index, b.sim.as_ref())?)
            }
            BackendKind::Gpio => {
                if let Some(s) = &b.sim {
                    return Err(not_allowed("sim", s.span()));
                }
                let port = b.port.as_ref().ok_or_else(|| missing("port"))?;
                let power = b.power.as_ref().ok_or_else(|| missing("power"))?;
                let p = power.get_ref();
                if let Some(m) = &p.modem {
                    return Err(not_allowed("power.modem", m.span()));
                }
                let chip = p.chip.as_ref().ok_or_else(|| {
                    self.err(
                        power.span(),
                        Problem::Missing {
                            key: key("power.chip"),
                            backend: bname,
                        },
                    )
                })?;
                let line = p.line.as_ref().ok_or_else(|| {
                    self.err(
                        power.span(),
                        Problem::Missing {
                            key: key("power.line"),
                            backend: bname,
                        },
                    )
                })?;
                let gpio0 = b.gpio0.as_ref().ok_or_else(|| missing("gpio0"))?.get_ref();
                Backend::Gpio(GpioConfig {
                    port: self.resolve(port.get_ref()),
                    power: GpioLine {
                        chip: chip.get_ref().clone(),
                        line: *line.get_ref(),
                    },
                    power_active: p.active.unwrap_or(Level::High),
                    gpio0: GpioLine {
                        chip: gpio0.chip.clone(),
                        line: gpio0.line,
                    },
                    gpio0_wiring: gpio0.wiring.unwrap_or_default(),
                    reset: b.reset.as_ref().map(|r| {
                        let r = r.get_ref();
                        (
                            GpioLine {
                                chip: r.chip.clone(),
                                line: r.line,
                            },
                            r.wiring.unwrap_or_default(),
                        )
                    }),
                })
            }
            BackendKind::UsbSerial => {
                if let Some(s) = &b.sim {
                    return Err(not_allowed("sim", s.span()));
                }
                // The auto-reset circuit fixes GPIO0 to DTR and EN to RTS.
                if let Some(s) = &b.gpio0 {
                    return Err(not_allowed("gpio0", s.span()));
                }
                if let Some(s) = &b.reset {
                    return Err(not_allowed("reset", s.span()));
                }
                let port = b.port.as_ref().ok_or_else(|| missing("port"))?;
                let power_rts = match &b.power {
                    None => None,
                    Some(power) => {
                        let p = power.get_ref();
                        if let Some(c) = &p.chip {
                            return Err(not_allowed("power.chip", c.span()));
                        }
                        if let Some(l) = &p.line {
                            return Err(not_allowed("power.line", l.span()));
                        }
                        let modem = p.modem.as_ref().ok_or_else(|| {
                            self.err(
                                power.span(),
                                Problem::Missing {
                                    key: key("power.modem"),
                                    backend: bname,
                                },
                            )
                        })?;
                        match modem.get_ref() {
                            ModemLine::None => None,
                            ModemLine::Rts => Some(p.active.unwrap_or(Level::Low)),
                            ModemLine::Dtr => {
                                return Err(self.err(
                                    modem.span(),
                                    Problem::Invalid {
                                        key: key("power.modem"),
                                        reason: "DTR drives GPIO0 in the auto-reset circuit; \
                                                 power can only use RTS (or none)",
                                    },
                                ));
                            }
                        }
                    }
                };
                Backend::UsbSerial(UsbSerialConfig {
                    port: self.resolve(port.get_ref()),
                    power_rts,
                })
            }
        };
        Ok(BoardConfig {
            name: b.name.get_ref().clone(),
            profile,
            backend,
            app_baud,
            host,
            power_at_exit: b.power_at_exit.unwrap_or_default(),
            time_scale: TimeScale::REAL,
            line: line_col(self.src, span.start.min(self.src.len())).0,
        })
    }

    fn sim(
        &self,
        index: usize,
        sim: Option<&Spanned<RawSim>>,
    ) -> Result<VirtualConfig, Box<RigFileError>> {
        let Some(sim) = sim else {
            return Ok(VirtualConfig::default());
        };
        let span = sim.span();
        let s = sim.get_ref();
        let key = |k: &str| format!("board[{index}].sim.{k}");
        let addr = |k: &str, v: &Option<Spanned<String>>| -> Result<_, Box<RigFileError>> {
            v.as_ref()
                .map(|a| {
                    a.get_ref().parse::<std::net::SocketAddr>().map_err(|_| {
                        self.err(
                            a.span(),
                            Problem::Invalid {
                                key: key(k),
                                reason: "expected the address `harness sim` printed, such as \
                                         127.0.0.5:41023",
                            },
                        )
                    })
                })
                .transpose()
        };
        let http = addr("http", &s.http)?;
        let ota = addr("ota", &s.ota)?;
        let time_scale = s
            .time_scale
            .as_ref()
            .map(|t| {
                TimeScale::new(*t.get_ref()).ok_or_else(|| {
                    self.err(
                        t.span(),
                        Problem::Invalid {
                            key: key("time_scale"),
                            reason: "expected the simulator's `time-scale:`, a number above 0",
                        },
                    )
                })
            })
            .transpose()?;
        let attach = match (&s.control, &s.pty) {
            (Some(c), Some(p)) => Some(SimAttach {
                control: self.resolve(c.get_ref()),
                pty: p.get_ref().clone(),
                http,
                ota,
                time_scale,
            }),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                let k = if s.control.is_some() {
                    "pty"
                } else {
                    "control"
                };
                return Err(self.err(
                    span,
                    Problem::Missing {
                        key: key(k),
                        backend: "virtual",
                    },
                ));
            }
        };
        if attach.is_some() {
            // These configure a simulator this process starts; an attached one is already
            // configured.
            let started_only = [
                ("flash", s.flash.as_ref().map(Spanned::span)),
                ("tx_log", s.tx_log.as_ref().map(Spanned::span)),
                (
                    "realistic_timing",
                    s.realistic_timing.as_ref().map(Spanned::span),
                ),
                ("boot", s.boot.as_ref().map(Spanned::span)),
                ("faults", s.faults.as_ref().map(Spanned::span)),
            ];
            if let Some((k, Some(sp))) = started_only.into_iter().find(|(_, s)| s.is_some()) {
                return Err(self.err(
                    sp,
                    Problem::Invalid {
                        key: key(k),
                        reason: "only for a simulator the harness starts, not with `control`",
                    },
                ));
            }
        } else {
            let attached_only = [
                ("http", s.http.as_ref().map(Spanned::span)),
                ("ota", s.ota.as_ref().map(Spanned::span)),
                ("time_scale", s.time_scale.as_ref().map(Spanned::span)),
            ];
            if let Some((k, Some(sp))) = attached_only.into_iter().find(|(_, s)| s.is_some()) {
                return Err(self.err(
                    sp,
                    Problem::Invalid {
                        key: key(k),
                        reason: "only for a simulator the harness attaches to (with `control`); \
                                 a started one tells its addresses itself",
                    },
                ));
            }
        }
        Ok(VirtualConfig {
            flash: s.flash.as_ref().map(|p| self.resolve(p.get_ref())),
            tx_log: s.tx_log.as_ref().map(|p| self.resolve(p.get_ref())),
            realistic_timing: s.realistic_timing.as_ref().is_some_and(|b| *b.get_ref()),
            boot: s.boot.as_ref().map(|b| *b.get_ref()).unwrap_or_default(),
            faults: s
                .faults
                .as_ref()
                .map(|f| f.get_ref().clone())
                .unwrap_or_default(),
            attach,
        })
    }
}

impl RigConfig {
    /// Reads and validates a rig file.
    pub fn load(path: &Path) -> Result<RigConfig, RigError> {
        let text = std::fs::read_to_string(path).map_err(|source| RigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(RigConfig::parse(&text, path)?)
    }

    /// Validates rig file text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<RigConfig, Box<RigFileError>> {
        let raw: RawRig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let key = crate::toml_path::key_at(text, span.start);
            RigFileError::new(
                path,
                text,
                span,
                Problem::Toml {
                    key,
                    message: e.message().trim_end().to_string(),
                },
            )
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let check = Check {
            path,
            src: text,
            base,
        };
        let mut boards: Vec<BoardConfig> = Vec::with_capacity(raw.board.len());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, b) in raw.board.iter().enumerate() {
            let name = &b.get_ref().name;
            if let Some(&first_line) = seen.get(name.get_ref()) {
                return Err(check.err(
                    name.span(),
                    Problem::DuplicateName {
                        key: format!("board[{i}].name"),
                        name: name.get_ref().clone(),
                        first_line,
                    },
                ));
            }
            let board = check.board(i, b)?;
            seen.insert(board.name.clone(), line_col(text, name.span().start).0);
            boards.push(board);
        }
        if boards.is_empty() {
            return Err(check.err(
                0..0,
                Problem::Missing {
                    key: "board".into(),
                    backend: "any",
                },
            ));
        }
        Ok(RigConfig {
            source: path.display().to_string(),
            description: raw.description,
            boards,
        })
    }

    /// The rig used when no rig file is given: one virtual board of each kind.
    pub fn builtin_virtual() -> RigConfig {
        let mut rig = RigConfig::parse(BUILTIN_VIRTUAL, Path::new("scenarios/rigs/virtual.toml"))
            .expect("the built-in virtual rig is valid (tested)");
        rig.source = "built-in virtual rig".into();
        rig
    }

    /// The board called `name`.
    pub fn board(&self, name: &str) -> Result<&BoardConfig, RigError> {
        self.boards
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| RigError::NoSuchBoard {
                name: name.to_string(),
                rig: self.source.clone(),
                known: self
                    .boards
                    .iter()
                    .map(|b| b.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RigConfig, Box<RigFileError>> {
        RigConfig::parse(text, Path::new("/rigs/test.toml"))
    }

    fn err(text: &str) -> Box<RigFileError> {
        parse(text).expect_err("the rig file should be rejected")
    }

    const GPIO_BOARD: &str = r#"
[[board]]
name = "basic"
kind = "sonoff-basic"
backend = "gpio"
port = "/dev/ttyAMA0"
host = "192.168.1.51"
power_at_exit = "on"
power = { chip = "gpiochip0", line = 17, active = "low" }
gpio0 = { chip = "gpiochip0", line = 27 }
reset = { chip = "gpiochip0", line = 22, wiring = "transistor" }
"#;

    #[test]
    fn builtin_virtual_rig_has_one_board_of_each_kind() {
        let rig = RigConfig::builtin_virtual();
        let kinds: Vec<_> = rig.boards.iter().map(|b| b.profile.id.as_str()).collect();
        assert_eq!(kinds, ["sonoff-basic", "sonoff-4ch"]);
        assert!(
            rig.boards
                .iter()
                .all(|b| matches!(&b.backend, Backend::Virtual(v) if v.attach.is_none()))
        );
        assert_eq!(rig.board("basic").unwrap().power_at_exit, PowerAtExit::Off);
    }

    #[test]
    fn example_rig_files_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/rigs");
        let pi = RigConfig::load(&dir.join("pi.toml")).unwrap();
        assert_eq!(pi.boards.len(), 2);
        let Backend::Gpio(g) = &pi.board("basic").unwrap().backend else {
            panic!("pi basic is a gpio board")
        };
        assert_eq!(g.port, PathBuf::from("/dev/ttyAMA0"));
        let Backend::Gpio(g4) = &pi.board("4ch").unwrap().backend else {
            panic!("pi 4ch is a gpio board")
        };
        assert_eq!(g4.port, PathBuf::from("/dev/ttyUSB0"));
        assert_ne!(g.power, g4.power);
        let v = RigConfig::load(&dir.join("virtual.toml")).unwrap();
        assert_eq!(v.boards, RigConfig::builtin_virtual().boards);
    }

    #[test]
    fn gpio_board_parses_with_all_keys() {
        let rig = parse(GPIO_BOARD).unwrap();
        let b = &rig.boards[0];
        assert_eq!(b.name, "basic");
        assert_eq!(b.profile.id, "sonoff-basic");
        assert_eq!(b.host.as_deref(), Some("192.168.1.51"));
        assert_eq!(b.power_at_exit, PowerAtExit::On);
        assert_eq!(b.app_baud, 115_200);
        assert_eq!(b.line, 2);
        assert!(b.is_shared());
        assert_eq!(
            b.backend,
            Backend::Gpio(GpioConfig {
                port: "/dev/ttyAMA0".into(),
                power: GpioLine {
                    chip: "gpiochip0".into(),
                    line: 17
                },
                power_active: Level::Low,
                gpio0: GpioLine {
                    chip: "gpiochip0".into(),
                    line: 27
                },
                gpio0_wiring: Wiring::OpenDrain,
                reset: Some((
                    GpioLine {
                        chip: "gpiochip0".into(),
                        line: 22
                    },
                    Wiring::Transistor
                )),
            })
        );
    }

    #[test]
    fn usb_serial_and_virtual_options() {
        let rig = parse(
            r#"
description = "bench"
[[board]]
name = "u"
kind = "sonoff-4ch"
backend = "usb-serial"
port = "ttyUSB-link"
baud = 74880
power = { modem = "rts" }

[[board]]
name = "v"
kind = "sonoff-basic"
backend = "virtual"
[board.sim]
flash = "flash/basic.bin"
realistic_timing = true
boot = "download"

[[board]]
name = "a"
kind = "sonoff-basic"
backend = "virtual"
sim = { control = "/tmp/s/control.sock", pty = "/dev/pts/9" }
"#,
        )
        .unwrap();
        assert_eq!(rig.description.as_deref(), Some("bench"));
        assert_eq!(
            rig.boards[0].backend,
            Backend::UsbSerial(UsbSerialConfig {
                port: "/rigs/ttyUSB-link".into(),
                power_rts: Some(Level::Low),
            })
        );
        assert_eq!(rig.boards[0].app_baud, 74_880);
        let Backend::Virtual(v) = &rig.boards[1].backend else {
            panic!()
        };
        assert_eq!(v.flash.as_deref(), Some(Path::new("/rigs/flash/basic.bin")));
        assert!(v.realistic_timing);
        assert_eq!(v.boot, SimBoot::Download);
        assert!(!rig.boards[1].is_shared());
        assert_eq!(rig.boards[2].port(), Some(Path::new("/dev/pts/9")));
        assert!(rig.boards[2].is_shared());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = err(&GPIO_BOARD.replace("host =", "hots ="));
        let msg = e.to_string();
        assert!(
            msg.starts_with("/rigs/test.toml:7:1: key `board[0].hots`"),
            "{msg}"
        );
        assert!(msg.contains("unknown field `hots`"), "{msg}");
        assert_eq!((e.line, e.column), (7, 1));
    }

    #[test]
    fn unknown_key_in_a_nested_table() {
        let e = err(&GPIO_BOARD.replace("line = 27 }", "line = 27, pull = \"up\" }"));
        assert_eq!(e.line, 10);
        assert_eq!(e.problem.key(), Some("board[0].gpio0.pull"), "{e}");
    }

    #[test]
    fn wrong_type_names_file_line_and_key() {
        let e = err(&GPIO_BOARD.replace("line = 17", "line = \"seventeen\""));
        let msg = e.to_string();
        assert_eq!(e.line, 9, "{msg}");
        assert_eq!(e.problem.key(), Some("board[0].power.line"), "{msg}");
        assert!(msg.contains("/rigs/test.toml:9:"), "{msg}");
        let e = err(&GPIO_BOARD.replace("\"on\"", "\"sometimes\""));
        assert_eq!(e.line, 8);
        assert_eq!(e.problem.key(), Some("board[0].power_at_exit"), "{e}");
        let e = err(&GPIO_BOARD.replace("backend = \"gpio\"", "backend = \"relay\""));
        assert_eq!(e.line, 5);
        assert_eq!(e.problem.key(), Some("board[0].backend"), "{e}");
    }

    #[test]
    fn duplicate_board_name_points_at_the_second() {
        let text = format!(
            "{GPIO_BOARD}{}",
            GPIO_BOARD.replace("17", "5").replace("27", "6")
        );
        let e = err(&text);
        assert_eq!(e.line, 14, "{e}");
        assert_eq!(
            e.problem,
            Problem::DuplicateName {
                key: "board[1].name".into(),
                name: "basic".into(),
                first_line: 3
            }
        );
        assert!(e.to_string().contains("already used on line 3"), "{e}");
    }

    #[test]
    fn unknown_board_kind_lists_the_known_ones() {
        let e = err(&GPIO_BOARD.replace("sonoff-basic", "sonoff-pow"));
        assert_eq!((e.line, e.column), (4, 8));
        assert!(
            matches!(&e.problem, Problem::UnknownKind { kind, known, .. }
            if kind == "sonoff-pow" && known.contains("sonoff-4ch"))
        );
        assert_eq!(e.problem.key(), Some("board[0].kind"));
        assert!(e.help.as_deref().unwrap().contains("sonoff-basic"));
    }

    #[test]
    fn missing_port_for_gpio() {
        let e = err(&GPIO_BOARD.replace("port = \"/dev/ttyAMA0\"\n", ""));
        assert_eq!(
            e.problem,
            Problem::Missing {
                key: "board[0].port".into(),
                backend: "gpio"
            }
        );
        assert_eq!(e.line, 2, "points at the board: {e}");
        assert!(
            e.to_string()
                .starts_with("/rigs/test.toml:2:1: key `board[0].port` is required")
        );
    }

    #[test]
    fn keys_that_do_not_fit_the_backend() {
        let e = err(
            "[[board]]\nname = \"v\"\nkind = \"sonoff-basic\"\nbackend = \"virtual\"\nport = \"/dev/ttyUSB0\"\n",
        );
        assert_eq!(e.line, 5);
        assert_eq!(
            e.problem,
            Problem::NotAllowed {
                key: "board[0].port".into(),
                backend: "virtual"
            }
        );
        let e = err(
            "[[board]]\nname = \"u\"\nkind = \"sonoff-basic\"\nbackend = \"usb-serial\"\nport = \"/dev/ttyUSB0\"\npower = { modem = \"dtr\" }\n",
        );
        assert_eq!(e.line, 6);
        assert_eq!(e.problem.key(), Some("board[0].power.modem"));
        let e = err(
            "[[board]]\nname = \"v\"\nkind = \"sonoff-basic\"\nbackend = \"virtual\"\n[board.sim]\ncontrol = \"/tmp/c.sock\"\n",
        );
        assert_eq!(e.problem.key(), Some("board[0].sim.pty"));
        let e = err(&GPIO_BOARD.replace("power = {", "power = { modem = \"rts\","));
        assert_eq!(e.problem.key(), Some("board[0].power.modem"));
    }

    #[test]
    fn toml_syntax_errors_have_a_position() {
        let e = err("[[board]]\nname = \"x\nkind = 1\n");
        assert_eq!(e.line, 2, "{e}");
        let e = err("");
        assert_eq!(e.problem.key(), Some("board"));
    }

    #[test]
    fn no_such_board_lists_the_boards() {
        let rig = RigConfig::builtin_virtual();
        let e = rig.board("pow").unwrap_err();
        assert!(matches!(e, RigError::NoSuchBoard { ref known, .. } if known == "basic, 4ch"));
    }
}
