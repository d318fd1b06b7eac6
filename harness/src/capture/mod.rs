//! Serial capture: every byte a board sends, on disk as it arrives, across resets, port
//! re-opens and baud switches.
//!
//! L2 support, used by [`crate::rig`] (whose serial [`crate::rig::Link`] is a [`Capture`]) and
//! by the scenario runner. Imports L0 only ([`crate::bootlog`]); never `rig`.
//!
//! # One reader per port
//!
//! A [`Capture`] owns a thread that is the only reader of the serial port. For each chunk it
//! reads it, in this order:
//!
//! 1. appends the bytes to the capture file with one unbuffered `write` (nothing is held in
//!    user space, so a SIGKILL of the harness loses nothing already handled; only a chunk
//!    between its `read` and its `write`, at most [`READ_CHUNK`] bytes, can be lost);
//! 2. queues them for [`Capture::read`] (the raw byte pipe the flash client uses);
//! 3. cuts them into lines, parses each with [`crate::bootlog::parse_line`], hands the line to
//!    the [`follower::BaudFollower`] and to every [`Subscription`] (the monitor, the runner's
//!    line waiter).
//!
//! Writes, rate changes and modem lines go through a clone of the port handle, so a writer never
//! waits for the reader.
//!
//! # Files
//!
//! The capture file holds the raw bytes; the index beside it ([`index::index_path`]) holds one
//! JSON line per event: start, rate changes, port lost and reopened, power and button changes
//! made by the rig, notes, stop (see [`index`]).
//!
//! # A port that goes away
//!
//! When the port fails (a USB adapter unplugged, a pty whose master closed) the loss goes into
//! the index, what was captured stays, [`Capture::read`] and [`Capture::write_all`] report
//! [`CaptureError::PortLost`], and the thread tries to open the same path again every
//! [`CaptureConfig::reconnect_every`] until it succeeds or the capture stops. A stable path
//! (`/dev/serial/by-id/...`) lets it find a re-plugged adapter.

pub mod follower;
pub mod index;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serialport::SerialPort;

use crate::bootlog::{self, Event};

pub use follower::{BaudFollower, DEFAULT_APP_BAUD, ROM_BAUD, Stage, SwitchReason};
pub use index::{IndexEvent, IndexRecord, index_path, read_index};

/// Longest piece of a line held back waiting for its `\n`; longer runs (garbage at the wrong
/// rate often has no newline) are handed on in pieces.
pub const MAX_LINE: usize = 512;
/// Largest read from the port. A SIGKILL can only lose the one chunk between its `read` and its
/// `write` to the capture file (a window of microseconds); everything read before is on disk.
pub const READ_CHUNK: usize = 4096;
/// Longest [`Capture::discard_input`] waits for the reader to take the driver's buffered bytes
/// into the file.
pub const DISCARD_WAIT: Duration = Duration::from_secs(2);
/// Bytes kept for [`Capture::read`] when nobody reads; older bytes are dropped from that queue
/// (never from the file) and the loss is noted in the index.
pub const RX_QUEUE_BYTES: usize = 1 << 20;

/// Errors of the capture.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum CaptureError {
    /// The serial port could not be opened.
    #[error("cannot open serial port {port}")]
    #[diagnostic(
        code(harness::capture::open),
        help(
            "check the path, that the adapter is plugged in, and that you may open it \
             (group dialout); `ls -l /dev/serial/by-id/` lists USB adapters"
        )
    )]
    Open {
        /// The port.
        port: PathBuf,
        /// What the serial library said.
        #[source]
        source: serialport::Error,
    },
    /// A serial port operation failed.
    #[error("{operation} failed on serial port {port}")]
    #[diagnostic(code(harness::capture::serial))]
    Serial {
        /// What was attempted.
        operation: &'static str,
        /// The port.
        port: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The port is gone (unplugged, pty closed); the capture is trying to reopen it.
    #[error("serial port {port} is gone")]
    #[diagnostic(
        code(harness::capture::port_lost),
        help("check the USB cable and the adapter; the capture reconnects when the port returns")
    )]
    PortLost {
        /// The port.
        port: PathBuf,
    },
    /// The capture or index file could not be written.
    #[error("cannot write capture file {path}")]
    #[diagnostic(code(harness::capture::file))]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The capture has stopped.
    #[error("the capture of {port} has stopped")]
    #[diagnostic(code(harness::capture::stopped))]
    Stopped {
        /// The port.
        port: PathBuf,
    },
}

/// How to run a capture.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// The serial port (a device or a pty; a symlink such as `/dev/serial/by-id/...` is best,
    /// it survives re-plugging).
    pub port: PathBuf,
    /// The raw capture file (created or truncated); the index goes beside it. `None`: no files.
    pub file: Option<PathBuf>,
    /// The rate the app prints at.
    pub app_baud: u32,
    /// Whether the baud follower decides the rate (otherwise it stays where it is set).
    pub follow: bool,
    /// Line prefixes that announce a restart besides `Rebooting`/`Restarting`.
    pub restart_markers: Vec<String>,
    /// How often a lost port is tried again.
    pub reconnect_every: Duration,
    /// How long the line must be silent to count as quiet (also the reader's poll interval).
    pub quiet: Duration,
    /// DTR level to set after every open (`Some(true)` = asserted); `None` leaves it alone.
    pub dtr: Option<bool>,
    /// RTS level to set after every open.
    pub rts: Option<bool>,
}

impl CaptureConfig {
    /// Defaults for `port`: no files, following at 115200, the reference firmware's restart
    /// announcement (`OTA end`, firmware/behaviour.toml) as a marker, reconnect every 200 ms.
    pub fn new(port: impl Into<PathBuf>) -> Self {
        let lines = &crate::firmware::behaviour().lines;
        CaptureConfig {
            port: port.into(),
            file: None,
            app_baud: DEFAULT_APP_BAUD,
            follow: true,
            restart_markers: vec![lines.ota_end.as_str().to_string()],
            reconnect_every: Duration::from_millis(200),
            quiet: Duration::from_millis(20),
            dtr: None,
            rts: None,
        }
    }
}

/// What subscribers receive.
#[derive(Debug, Clone, PartialEq)]
pub enum CaptureEvent {
    /// A line (or a piece of one: see `complete`).
    Line {
        /// Offset of its first byte in the capture.
        offset: u64,
        /// Its bytes, without the `\n`.
        text: Vec<u8>,
        /// True when it ended with `\n`; false when it was cut (too long, or the line went
        /// quiet, or the board was powered on) and its rest may follow.
        complete: bool,
        /// What [`crate::bootlog`] makes of it.
        events: Vec<Event>,
        /// The rate it was read at.
        baud: u32,
    },
    /// Something that went into the index.
    Index(IndexRecord),
}

/// A receiver of capture events. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    rx: Receiver<CaptureEvent>,
}

impl Subscription {
    /// The next event, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<CaptureEvent, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// Waits until `f` returns `Some` for an event, or `timeout` passes (then `None`).
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&CaptureEvent) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok(ev) => {
                    if let Some(t) = f(&ev) {
                        return Some(t);
                    }
                }
                Err(_) => return None,
            }
        }
    }
}

/// Totals of a finished capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSummary {
    /// Bytes captured.
    pub bytes: u64,
    /// The capture file, if any.
    pub file: Option<PathBuf>,
}

/// A running capture of one serial port; see the module docs.
#[derive(Debug)]
pub struct Capture {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    config: CaptureConfig,
    io: Mutex<PortIo>,
    rx: Mutex<RxQueue>,
    rx_ready: Condvar,
    rec: Mutex<Recorder>,
    stop: AtomicBool,
    stop_lock: Mutex<()>,
    stop_signal: Condvar,
    baud: AtomicU32,
    connected: AtomicBool,
}

/// The write side: a clone of the reader's port handle, replaced on reconnect.
struct PortIo {
    writer: Option<Box<dyn SerialPort>>,
    dtr: Option<bool>,
    rts: Option<bool>,
}

impl std::fmt::Debug for PortIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortIo")
            .field("open", &self.writer.is_some())
            .field("dtr", &self.dtr)
            .field("rts", &self.rts)
            .finish()
    }
}

#[derive(Debug, Default)]
struct RxQueue {
    bytes: VecDeque<u8>,
    dropped: u64,
}

#[derive(Debug)]
struct Recorder {
    file: Option<File>,
    index: Option<File>,
    offset: u64,
    start: Instant,
    subscribers: Vec<Sender<CaptureEvent>>,
    follower: BaudFollower,
    partial: Vec<u8>,
    partial_offset: u64,
    error: Option<io::Error>,
    /// Port losses so far: capture offset, what the OS said, whether the port came back.
    losses: Vec<(u64, String, bool)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the capture down with it: the data is still consistent
    // (every critical section leaves it so before anything can panic).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Capture {
    /// Opens the port at the ROM rate (74880, or the app rate when not following), creates the
    /// files and starts the reader thread.
    pub fn start(config: CaptureConfig) -> Result<Capture, CaptureError> {
        Ok(Capture::start_subscribed(config)?.0)
    }

    /// As [`start`](Self::start), with a subscription that sees every line from the first
    /// byte (a later [`subscribe`](Self::subscribe) may miss what the reader handled before).
    pub fn start_subscribed(
        config: CaptureConfig,
    ) -> Result<(Capture, Subscription), CaptureError> {
        let baud = if config.follow {
            ROM_BAUD
        } else {
            config.app_baud
        };
        let (file, index) = match &config.file {
            Some(path) => {
                let create = |p: &Path| {
                    File::create(p).map_err(|source| CaptureError::File {
                        path: p.to_path_buf(),
                        source,
                    })
                };
                (Some(create(path)?), Some(create(&index_path(path))?))
            }
            None => (None, None),
        };
        let port = open_port(&config.port, baud, config.quiet)?;
        let writer = port.try_clone().map_err(|source| CaptureError::Open {
            port: config.port.clone(),
            source,
        })?;
        let mut follower =
            BaudFollower::new(config.app_baud).with_restart_markers(config.restart_markers.clone());
        if !config.follow {
            follower.disable();
        }
        let (first_tx, first_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            io: Mutex::new(PortIo {
                writer: Some(writer),
                dtr: config.dtr,
                rts: config.rts,
            }),
            rx: Mutex::new(RxQueue::default()),
            rx_ready: Condvar::new(),
            rec: Mutex::new(Recorder {
                file,
                index,
                offset: 0,
                start: Instant::now(),
                subscribers: vec![first_tx],
                follower,
                partial: Vec::new(),
                partial_offset: 0,
                error: None,
                losses: Vec::new(),
            }),
            stop: AtomicBool::new(false),
            stop_lock: Mutex::new(()),
            stop_signal: Condvar::new(),
            baud: AtomicU32::new(baud),
            connected: AtomicBool::new(true),
            config,
        });
        shared.apply_modem_lines()?;
        shared.record(
            &mut lock(&shared.rec),
            IndexEvent::Start {
                port: shared.config.port.display().to_string(),
                baud,
            },
        );
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("capture-reader".into())
                .spawn(move || shared.run(port))
                .map_err(|source| CaptureError::File {
                    path: PathBuf::from("<reader thread>"),
                    source,
                })?
        };
        Ok((
            Capture {
                shared,
                thread: Some(thread),
            },
            Subscription { rx: first_rx },
        ))
    }

    /// The port being captured.
    pub fn port(&self) -> &Path {
        &self.shared.config.port
    }

    /// The capture file, if any.
    pub fn file(&self) -> Option<&Path> {
        self.shared.config.file.as_deref()
    }

    /// Bytes captured so far.
    pub fn bytes(&self) -> u64 {
        lock(&self.shared.rec).offset
    }

    /// Bytes captured so far, after waiting (at most [`DISCARD_WAIT`]) for the reader to take
    /// what the driver already holds: a mark that separates what the board sent before this
    /// call from what it sends after.
    pub fn bytes_caught_up(&self) -> u64 {
        let pending = self
            .shared
            .with_writer("count input", |w| {
                w.bytes_to_read().map_err(io::Error::from)
            })
            .unwrap_or(0);
        let target = lock(&self.shared.rec).offset + u64::from(pending);
        let deadline = Instant::now() + DISCARD_WAIT;
        loop {
            let offset = lock(&self.shared.rec).offset;
            if offset >= target || Instant::now() >= deadline || !self.is_connected() {
                return offset;
            }
            let rx = lock(&self.shared.rx);
            drop(
                self.shared
                    .rx_ready
                    .wait_timeout(rx, Duration::from_millis(5))
                    .unwrap_or_else(PoisonError::into_inner),
            );
        }
    }

    /// Why the capture or index file is missing bytes (a write failed: disk full, file too
    /// large), if it is; the first error, naming the file.
    pub fn write_error(&self) -> Option<String> {
        let rec = lock(&self.shared.rec);
        let e = rec.error.as_ref()?;
        let file = self
            .shared
            .config
            .file
            .as_deref()
            .unwrap_or(Path::new("<no file>"));
        Some(format!("cannot write capture file {}: {e}", file.display()))
    }

    /// The times the port went away, one sentence each (`serial port /dev/ttyUSB0 lost after
    /// byte 4123 (Input/output error), reopened`): whatever the board sent meanwhile is not in
    /// the capture.
    pub fn port_losses(&self) -> Vec<String> {
        let port = self.shared.config.port.display().to_string();
        lock(&self.shared.rec)
            .losses
            .iter()
            .map(|(at, error, back)| {
                format!(
                    "serial port {port} lost after byte {at} ({error}), {}",
                    if *back { "reopened" } else { "not back" }
                )
            })
            .collect()
    }

    /// The port's current rate.
    pub fn baud(&self) -> u32 {
        self.shared.baud.load(Ordering::Relaxed)
    }

    /// Whether the port is open (false while it is lost).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Receives every line and index record from now on.
    pub fn subscribe(&self) -> Subscription {
        let (tx, rx) = mpsc::channel();
        lock(&self.shared.rec).subscribers.push(tx);
        Subscription { rx }
    }

    /// Records what the rig did (power, button, reset) or a note. A power-on or a released
    /// reset also tells the baud follower that the ROM is about to print.
    pub fn note(&self, event: IndexEvent) -> Result<(), CaptureError> {
        let mut rec = lock(&self.shared.rec);
        let restart = match event {
            IndexEvent::Power { on: true } => Some(SwitchReason::PowerOn),
            IndexEvent::Reset { asserted: false } => Some(SwitchReason::Reset),
            _ => None,
        };
        if restart.is_some() {
            // What is left of the last line belongs to the boot that just ended.
            self.shared.flush_partial(&mut rec, None);
        }
        self.shared.record(&mut rec, event);
        let switch = match restart {
            Some(SwitchReason::PowerOn) => rec.follower.power_on(),
            Some(_) => rec.follower.reset(),
            None => None,
        };
        if let Some(switch) = switch {
            self.shared
                .switch_baud(&mut rec, None, switch.baud, switch.reason)?;
        }
        Ok(())
    }

    /// Reads what has arrived, waiting up to `timeout` for at least one byte. `Ok(0)`: nothing
    /// arrived in time.
    pub fn read(&self, buf: &mut [u8], timeout: Duration) -> Result<usize, CaptureError> {
        let deadline = Instant::now() + timeout;
        let mut rx = lock(&self.shared.rx);
        loop {
            if !rx.bytes.is_empty() {
                let n = buf.len().min(rx.bytes.len());
                for (dst, src) in buf.iter_mut().zip(rx.bytes.drain(..n)) {
                    *dst = src;
                }
                return Ok(n);
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                return Err(self.shared.stopped());
            }
            if !self.is_connected() {
                return Err(self.shared.lost());
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Ok(0);
            };
            rx = self
                .shared
                .rx_ready
                .wait_timeout(rx, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Writes all of `data` to the port (into the driver's buffer; see [`flush`](Self::flush)).
    pub fn write_all(&self, data: &[u8]) -> Result<(), CaptureError> {
        self.shared.with_writer("write", |w| w.write_all(data))
    }

    /// Waits until everything written has left the port.
    pub fn flush(&self) -> Result<(), CaptureError> {
        self.shared.with_writer("flush", |w| w.flush())
    }

    /// Discards received bytes nobody has read yet (the capture file keeps them).
    ///
    /// Bytes still in the driver's buffer are not flushed there (that would lose them for the
    /// file too): the reader takes them into the file first, for at most [`DISCARD_WAIT`], and
    /// they are then dropped from the queue [`read`](Self::read) serves.
    pub fn discard_input(&self) -> Result<(), CaptureError> {
        let pending = self
            .shared
            .with_writer("count input", |w| {
                w.bytes_to_read().map_err(io::Error::from)
            })
            .or_else(|e| match e {
                // Nothing to wait for on a port that is gone.
                CaptureError::PortLost { .. } => Ok(0),
                e => Err(e),
            })?;
        let target = lock(&self.shared.rec).offset + u64::from(pending);
        let deadline = Instant::now() + DISCARD_WAIT;
        loop {
            // Lock order as in the reader: the recorder, then the queue.
            let rec = lock(&self.shared.rec);
            let mut rx = lock(&self.shared.rx);
            let reached = rec.offset >= target;
            if reached || Instant::now() >= deadline || !self.is_connected() {
                // The queue ends at `rec.offset`; keep what arrived after `target`.
                let keep = if reached {
                    (rec.offset - target).min(rx.bytes.len() as u64) as usize
                } else {
                    0
                };
                let drop_n = rx.bytes.len() - keep;
                rx.bytes.drain(..drop_n);
                return Ok(());
            }
            drop(rec);
            let left = deadline.saturating_duration_since(Instant::now());
            drop(
                self.shared
                    .rx_ready
                    .wait_timeout(rx, left.min(Duration::from_millis(5)))
                    .unwrap_or_else(PoisonError::into_inner),
            );
        }
    }

    /// Sets the rate and stops the follower until the next power-on or reset (a client that
    /// sets the rate owns it).
    pub fn set_baud(&self, baud: u32) -> Result<(), CaptureError> {
        let mut rec = lock(&self.shared.rec);
        rec.follower.manual();
        self.shared
            .switch_baud(&mut rec, None, baud, SwitchReason::Manual)
    }

    /// Turns the baud follower on again (it starts at the stage it was in).
    pub fn follow(&self) -> Result<(), CaptureError> {
        let stage = lock(&self.shared.rec).follower.stage();
        self.follow_at(stage)
    }

    /// Turns the baud follower on again at `stage` (its rate is set now). What was received
    /// so far without a line end (a client's binary exchange, e.g. the ROM loader's SLIP
    /// replies) is handed on as an unfinished line first, so the follower's first line starts
    /// here and is not judged by bytes it never followed.
    pub fn follow_at(&self, stage: Stage) -> Result<(), CaptureError> {
        let mut rec = lock(&self.shared.rec);
        self.shared.flush_partial(&mut rec, None);
        if let Some(switch) = rec.follower.resume_at(stage) {
            self.shared
                .switch_baud(&mut rec, None, switch.baud, switch.reason)?;
        }
        Ok(())
    }

    /// Sets DTR (`true` = asserted, the pin low); kept and set again after a reconnect.
    pub fn set_dtr(&self, asserted: bool) -> Result<(), CaptureError> {
        lock(&self.shared.io).dtr = Some(asserted);
        self.shared.with_writer("set DTR", |w| {
            w.write_data_terminal_ready(asserted)
                .map_err(io::Error::from)
        })
    }

    /// Sets RTS (`true` = asserted, the pin low); kept and set again after a reconnect.
    pub fn set_rts(&self, asserted: bool) -> Result<(), CaptureError> {
        lock(&self.shared.io).rts = Some(asserted);
        self.shared.with_writer("set RTS", |w| {
            w.write_request_to_send(asserted).map_err(io::Error::from)
        })
    }

    /// Stops the reader, writes the stop record and returns the totals (also done on drop).
    pub fn stop(mut self) -> Result<CaptureSummary, CaptureError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<CaptureSummary, CaptureError> {
        let Some(thread) = self.thread.take() else {
            return Ok(self.summary());
        };
        self.shared.stop.store(true, Ordering::Relaxed);
        {
            let _g = lock(&self.shared.stop_lock);
            self.shared.stop_signal.notify_all();
        }
        self.shared.rx_ready.notify_all();
        let _ = thread.join();
        let mut rec = lock(&self.shared.rec);
        self.shared.flush_partial(&mut rec, None);
        let bytes = rec.offset;
        self.shared.record(&mut rec, IndexEvent::Stop { bytes });
        rec.subscribers.clear();
        if let Some(source) = rec.error.take() {
            return Err(CaptureError::File {
                path: self.shared.config.file.clone().unwrap_or_default(),
                source,
            });
        }
        drop(rec);
        Ok(self.summary())
    }

    fn summary(&self) -> CaptureSummary {
        CaptureSummary {
            bytes: self.bytes(),
            file: self.shared.config.file.clone(),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            tracing::error!("capture of {}: {e}", self.shared.config.port.display());
        }
    }
}

fn open_port(path: &Path, baud: u32, quiet: Duration) -> Result<Box<dyn SerialPort>, CaptureError> {
    let err = |source| CaptureError::Open {
        port: path.to_path_buf(),
        source,
    };
    let port = serialport::new(path.to_string_lossy(), baud)
        .timeout(quiet)
        // DTR drives GPIO0 on auto-reset adapters; the rig sets it explicitly after opening.
        .dtr_on_open(false)
        // Not exclusive. TIOCEXCL lives on the tty, not on our descriptor, so after a SIGKILL
        // it stays set for as long as anyone else holds the tty open (the simulator always
        // does) and locks every later open out unless it runs as root. And the exclusive flock
        // that serialport would take as well fails while any other open of the port holds a
        // lock, even a shared one: a reopen right after a close failed now and then in the
        // tests, with other threads starting processes meanwhile. Harness
        // processes exclude each other with the board lock (`rig::lock`); the shared flock
        // taken instead still keeps out programs that lock the port exclusively.
        .exclusive(false)
        .open_native()
        .map_err(err)?;
    Ok(Box::new(port))
}

impl Shared {
    fn stopped(&self) -> CaptureError {
        CaptureError::Stopped {
            port: self.config.port.clone(),
        }
    }

    fn lost(&self) -> CaptureError {
        CaptureError::PortLost {
            port: self.config.port.clone(),
        }
    }

    fn with_writer<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Box<dyn SerialPort>) -> io::Result<T>,
    ) -> Result<T, CaptureError> {
        let mut io = lock(&self.io);
        let Some(writer) = io.writer.as_mut() else {
            return Err(if self.stop.load(Ordering::Relaxed) {
                self.stopped()
            } else {
                self.lost()
            });
        };
        f(writer).map_err(|source| CaptureError::Serial {
            operation,
            port: self.config.port.clone(),
            source,
        })
    }

    fn apply_modem_lines(&self) -> Result<(), CaptureError> {
        let (dtr, rts) = {
            let io = lock(&self.io);
            (io.dtr, io.rts)
        };
        if let Some(level) = dtr {
            self.with_writer("set DTR", |w| {
                w.write_data_terminal_ready(level).map_err(io::Error::from)
            })?;
        }
        if let Some(level) = rts {
            self.with_writer("set RTS", |w| {
                w.write_request_to_send(level).map_err(io::Error::from)
            })?;
        }
        Ok(())
    }

    /// The reader thread.
    fn run(self: Arc<Self>, port: Box<dyn SerialPort>) {
        let mut port = Some(port);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut quiet = true;
        while !self.stop.load(Ordering::Relaxed) {
            let Some(p) = port.as_mut() else {
                port = self.reconnect();
                continue;
            };
            match p.read(&mut buf) {
                Ok(0) => {
                    self.lose(&mut port, "end of file".into());
                }
                Ok(n) => {
                    self.received(&buf[..n], quiet, p.as_mut());
                    quiet = false;
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    if !quiet {
                        quiet = true;
                        self.went_quiet(p.as_mut());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.lose(&mut port, e.to_string());
                    quiet = true;
                }
            }
        }
        // Stopping: what the driver already holds arrived before the stop; it goes into the
        // file too. Bounded, in case the board keeps sending.
        if let Some(p) = port.as_mut() {
            for _ in 0..64 {
                match p.bytes_to_read() {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                match p.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        self.received(&buf[..n], quiet, p.as_mut());
                        quiet = false;
                    }
                    _ => break,
                }
            }
        }
    }

    fn received(&self, bytes: &[u8], after_quiet: bool, port: &mut dyn SerialPort) {
        let mut rec = lock(&self.rec);
        if after_quiet {
            self.record(&mut rec, IndexEvent::Rx);
        }
        // The file first: once this returns the bytes survive a SIGKILL.
        if let Some(file) = rec.file.as_mut()
            && let Err(e) = file.write_all(bytes)
        {
            if rec.error.is_none() {
                tracing::error!("capture file write failed: {e}");
            }
            rec.error.get_or_insert(e);
        }
        let start = rec.offset;
        rec.offset += bytes.len() as u64;
        self.queue(&mut rec, bytes);

        let chunk_end = rec.offset;
        let mut pos = 0;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            if rec.partial.is_empty() {
                rec.partial_offset = start + pos as u64;
            }
            let room = MAX_LINE - rec.partial.len();
            match memchr::memchr(b'\n', &rest[..rest.len().min(room)]) {
                Some(nl) => {
                    rec.partial.extend_from_slice(&rest[..nl]);
                    pos += nl + 1;
                    self.line(&mut rec, true, Some((&mut *port, chunk_end)));
                }
                None => {
                    let take = rest.len().min(room);
                    rec.partial.extend_from_slice(&rest[..take]);
                    pos += take;
                    if rec.partial.len() == MAX_LINE {
                        self.line(&mut rec, false, Some((&mut *port, chunk_end)));
                    }
                }
            }
        }
    }

    fn queue(&self, rec: &mut Recorder, bytes: &[u8]) {
        let mut rx = lock(&self.rx);
        rx.bytes.extend(bytes);
        let over = rx.bytes.len().saturating_sub(RX_QUEUE_BYTES);
        if over > 0 {
            rx.bytes.drain(..over);
            // Noted once per overrun, not per chunk.
            if rx.dropped == 0 {
                drop(rx);
                self.record(
                    rec,
                    IndexEvent::ConsumerOverrun {
                        dropped: over as u64,
                    },
                );
                rx = lock(&self.rx);
            }
            rx.dropped += over as u64;
        } else {
            rx.dropped = 0;
        }
        drop(rx);
        self.rx_ready.notify_all();
    }

    fn went_quiet(&self, port: &mut dyn SerialPort) {
        let mut rec = lock(&self.rec);
        let end = rec.offset;
        self.flush_partial(&mut rec, Some((port, end)));
        if let Some(switch) = rec.follower.quiet() {
            let _ = self.switch_baud(&mut rec, Some((port, end)), switch.baud, switch.reason);
        }
    }

    fn flush_partial(&self, rec: &mut Recorder, port: Option<(&mut dyn SerialPort, u64)>) {
        if !rec.partial.is_empty() {
            self.line(rec, false, port);
        }
    }

    /// Hands the buffered line to the follower and the subscribers.
    fn line(&self, rec: &mut Recorder, complete: bool, port: Option<(&mut dyn SerialPort, u64)>) {
        let text = std::mem::take(&mut rec.partial);
        let mut events = Vec::new();
        bootlog::parse_line(&text, |e, _| events.push(e));
        let switch = rec.follower.line(&text, &events);
        let event = CaptureEvent::Line {
            offset: rec.partial_offset,
            text,
            complete,
            events,
            baud: self.baud.load(Ordering::Relaxed),
        };
        rec.subscribers.retain(|s| s.send(event.clone()).is_ok());
        if let Some(switch) = switch {
            let _ = self.switch_baud(rec, port, switch.baud, switch.reason);
        }
    }

    /// Changes the rate, on the reader's handle when the reader asks (it owns the port), else
    /// on the writer's clone; `at` is the offset from which the new rate applies.
    fn switch_baud(
        &self,
        rec: &mut Recorder,
        port: Option<(&mut dyn SerialPort, u64)>,
        baud: u32,
        reason: SwitchReason,
    ) -> Result<(), CaptureError> {
        let at = port.as_ref().map_or(rec.offset, |(_, at)| *at);
        let result = match port {
            Some((p, _)) => p.set_baud_rate(baud).map_err(|e| CaptureError::Serial {
                operation: "set baud rate",
                port: self.config.port.clone(),
                source: e.into(),
            }),
            None => self.with_writer("set baud rate", |w| {
                w.set_baud_rate(baud).map_err(io::Error::from)
            }),
        };
        match result {
            // A lost port takes the new rate when it is reopened.
            Ok(()) | Err(CaptureError::PortLost { .. }) => {}
            Err(e) => return Err(e),
        }
        self.baud.store(baud, Ordering::Relaxed);
        let offset = rec.offset;
        rec.offset = at;
        self.record(rec, IndexEvent::Baud { baud, reason });
        rec.offset = offset;
        Ok(())
    }

    fn lose(&self, port: &mut Option<Box<dyn SerialPort>>, error: String) {
        *port = None;
        lock(&self.io).writer = None;
        self.connected.store(false, Ordering::Relaxed);
        {
            let mut rec = lock(&self.rec);
            self.flush_partial(&mut rec, None);
            let at = rec.offset;
            rec.losses.push((at, error.clone(), false));
            self.record(&mut rec, IndexEvent::PortLost { error });
        }
        self.rx_ready.notify_all();
    }

    fn reconnect(&self) -> Option<Box<dyn SerialPort>> {
        {
            let g = lock(&self.stop_lock);
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            let _ = self
                .stop_signal
                .wait_timeout(g, self.config.reconnect_every)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let baud = self.baud.load(Ordering::Relaxed);
        let port = open_port(&self.config.port, baud, self.config.quiet).ok()?;
        let writer = port.try_clone().ok()?;
        lock(&self.io).writer = Some(writer);
        if let Err(e) = self.apply_modem_lines() {
            tracing::warn!("after reopening {}: {e}", self.config.port.display());
        }
        self.connected.store(true, Ordering::Relaxed);
        let mut rec = lock(&self.rec);
        if let Some(loss) = rec.losses.last_mut() {
            loss.2 = true;
        }
        self.record(&mut rec, IndexEvent::PortReopened { baud });
        drop(rec);
        Some(port)
    }

    /// Appends an index record (one unbuffered write) and tells the subscribers.
    fn record(&self, rec: &mut Recorder, event: IndexEvent) {
        let t = (rec.start.elapsed().as_secs_f64() * 1e6).round() / 1e6;
        let record = IndexRecord {
            offset: rec.offset,
            t,
            event,
        };
        if let Some(index) = rec.index.as_mut() {
            let mut line = serde_json::to_vec(&record).unwrap_or_default();
            line.push(b'\n');
            if let Err(e) = index.write_all(&line) {
                if rec.error.is_none() {
                    tracing::error!("capture index write failed: {e}");
                }
                rec.error.get_or_insert(e);
            }
        }
        let event = CaptureEvent::Index(record);
        rec.subscribers.retain(|s| s.send(event.clone()).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_reference_firmware() {
        let b = crate::firmware::behaviour();
        assert_eq!(
            DEFAULT_APP_BAUD, b.serial.baud,
            "firmware/behaviour.toml serial.baud"
        );
        let c = CaptureConfig::new("/dev/null");
        assert!(c.follow);
        assert_eq!(c.restart_markers, [b.lines.ota_end.as_str()]);
        let mut f = BaudFollower::new(c.app_baud).with_restart_markers(c.restart_markers);
        let mut events = Vec::new();
        bootlog::parse_line(b"ld", |e, _| events.push(e));
        assert!(f.line(b"ld", &events).is_some());
        events.clear();
        bootlog::parse_line(b"OTA end\r", |e, _| events.push(e));
        assert_eq!(
            f.line(b"OTA end\r", &events).map(|s| s.reason),
            Some(SwitchReason::Restart)
        );
    }

    #[test]
    fn a_missing_port_is_an_error_naming_it() {
        let err = Capture::start(CaptureConfig::new("/dev/does-not-exist-harness")).unwrap_err();
        assert!(
            matches!(&err, CaptureError::Open { port, .. } if port == Path::new("/dev/does-not-exist-harness"))
        );
        assert!(err.to_string().contains("/dev/does-not-exist-harness"));
    }
}
