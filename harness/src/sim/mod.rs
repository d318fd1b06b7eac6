//! The virtual Sonoff: one simulated ESP8266/ESP8285 board behind a real pty.
//!
//! The simulator sits beside the layers: it uses only L0 modules ([`crate::board`],
//! [`crate::flash::proto`]) and is reached the way hardware is, through a serial port (a pty)
//! and, later, loopback sockets. Nothing above `rig::virtual` may know it exists.
//!
//! # What it models
//!
//! - `chip`: power, boot straps latched at power-on/external reset only, rst cause, UART
//!   rates; `rom`: the boot ROM's banner and boot decision; `rom_loader`: the ROM's UART
//!   download loop; `stub`: the esptool flasher stub; `regs`: eFuses, UART divider and the SPI
//!   flash controller; `boot`: the seam where booting from flash continues (images, eboot and
//!   the app come later); `pty`: the pseudo-terminal and its reader/writer threads.
//! - [`flash_model`]: NOR flash of the board's real size in a file (or memory), addresses
//!   wrapping, writes going straight to the file.
//! - [`uart`]: bytes read at the wrong baud rate become what a real UART delivers. The ROM
//!   prints at 74880; its download loop autobauds on the host's first SYNC (the ESP8266 ROM
//!   measures the incoming rate, which is why esptool can talk at 115200 to a ROM that printed at
//!   74880); the stub keeps that rate until CHANGE_BAUDRATE.
//!
//! # Running it
//!
//! [`SimHandle::start`] runs the board on threads (chip, pty reader, pty writer, control socket)
//! and powers it on. `harness sim` wraps it and prints the endpoints as the first stdout lines,
//! `name: value` each, ending with an empty line:
//!
//! ```text
//! pty: /dev/pts/7
//! control: /tmp/.tmpAbC123/control.sock
//! flash: /tmp/.tmpAbC123/flash.bin
//! tx-log: /tmp/capture.bin        (only with --tx-log)
//!
//! ```
//!
//! The control protocol (socket and stdin) is described in [`control`]. The board starts
//! powered, with the button held if the boot straps say download, and stays so until told
//! otherwise.
//!
//! # Timing
//!
//! By default everything is as fast as the host allows. With realistic timing the UART paces
//! bytes at 10 bits per byte in both directions and flash erase/program take their datasheet
//! times ([`flash_model`]).

pub(crate) mod boot;
pub(crate) mod chip;
pub mod control;
pub mod flash_model;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod pty;
pub(crate) mod regs;
pub(crate) mod rom;
pub(crate) mod rom_loader;
pub(crate) mod stub;
pub mod uart;

use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use crate::board::BoardProfile;

use self::chip::{Chip, Output, ResetKind};
use self::control::{ControlCommand, Reply};
use self::flash_model::Flash;

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
        }
    }
}

/// Where to reach a running simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The board's serial port.
    pub pty: PathBuf,
    /// The control socket (mode 0600).
    pub control: PathBuf,
    /// The flash file.
    pub flash: PathBuf,
    /// The TX log, if any.
    pub tx_log: Option<PathBuf>,
}

impl Endpoints {
    /// The `name: value` lines `harness sim` prints, `pty` first.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!("pty: {}", self.pty.display()),
            format!("control: {}", self.control.display()),
            format!("flash: {}", self.flash.display()),
        ];
        if let Some(log) = &self.tx_log {
            lines.push(format!("tx-log: {}", log.display()));
        }
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
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl SimHandle {
    /// Opens the pty, flash and control socket, starts the threads and powers the board on.
    pub fn start(config: SimConfig) -> Result<SimHandle, SimError> {
        let board = config.board;
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
        let flash = open_flash(&flash_path, board.flash_size)?;
        let control_path = dir.path().join("control.sock");
        let listener = bind_control(&control_path)?;
        let pty = pty::Pty::open()?;
        let endpoints = Endpoints {
            pty: pty.path().to_path_buf(),
            control: control_path,
            flash: flash_path,
            tx_log: config.tx_log.clone(),
        };

        let mut chip = Chip::new(board, flash, config.realistic_timing);
        chip.set_button(config.boot == BootStraps::Download);
        chip.power_on();

        let (events_tx, events_rx) = mpsc::channel();
        let (out_tx, out_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(chip.hw.epoch()));
        let control = SimControl {
            events: events_tx.clone(),
        };
        let (reader_fd, writer_fd, probe) = pty.into_parts()?;

        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(SimError::Io)
        };
        let writer = pty::Writer {
            master: writer_fd,
            probe: probe.clone(),
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
            threads.push(spawn(
                "sim-chip",
                Box::new(move || run_chip(chip, events_rx, out_tx, epoch)),
            )?);
        }
        {
            let stop = Arc::clone(&stop);
            let realistic = config.realistic_timing;
            let events = events_tx.clone();
            threads.push(spawn(
                "sim-pty-reader",
                Box::new(move || pty::run_reader(reader_fd, probe, events, stop, realistic)),
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
        Ok(SimHandle {
            endpoints,
            control,
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

/// The chip thread: applies events in order and hands the output to the writer.
fn run_chip(mut chip: Chip, events: Receiver<Event>, out: Sender<Output>, epoch: Arc<AtomicU64>) {
    let flush = |chip: &mut Chip| {
        epoch.store(chip.hw.epoch(), Ordering::Relaxed);
        for o in chip.take_output() {
            let _ = out.send(o);
        }
    };
    flush(&mut chip);
    for event in events {
        match event {
            Event::Rx { bytes, host_baud } => chip.on_rx(&bytes, host_baud),
            Event::Control(cmd, reply) => {
                let answer = apply_control(&mut chip, cmd);
                flush(&mut chip);
                let _ = reply.send(answer);
                continue;
            }
            Event::Shutdown => break,
        }
        flush(&mut chip);
    }
    if let Err(e) = chip.hw.flash.sync() {
        tracing::error!("flash file sync failed: {e}");
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
