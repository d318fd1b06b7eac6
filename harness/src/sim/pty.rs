//! The simulated UART cable: a pseudo-terminal whose slave is the board's serial port.
//!
//! - The simulator keeps its own descriptor of the slave open for its whole life, so a client
//!   closing and reopening the port never makes the master read fail with EIO (hangup).
//! - The host's baud rate is whatever the client set on the slave; it is read with `TCGETS2`
//!   (termios2), which also reports the arbitrary rates (74880) that pyserial and the serialport
//!   crate set with `BOTHER`. Bytes pass through [`super::uart::resample`] in both directions;
//!   a rate the host sets meets only the board's bytes sent after it could have reacted
//!   ([`HOST_REACTION`]).
//! - Bytes the chip sends while nobody reads stay in the pty buffer, like in a USB-UART bridge's
//!   buffer; clients flush their input after opening (esptool does). When the buffer stays full
//!   for [`WRITE_STALL`], further bytes are dropped, as a UART with nobody listening loses them.
//!
//! # Unplugging the cable
//!
//! The pty sits in a [`Cable`] with a stable name beside it: a symlink (`port:` endpoint) to
//! the current `/dev/pts/N`, as udev keeps `/dev/serial/by-id/...` for a USB adapter. `port
//! unplug` ([`Cable::unplug`]) removes the symlink and closes the pty: a client's open port
//! reports a hangup, as when a USB adapter is pulled, and whatever the client had not read yet is
//! lost with the adapter's buffer. Until `port plug` the board's output goes nowhere (it is not
//! written to the TX log either: it never reached a port) and nothing reaches the board.
//! `port plug` opens a new pty (usually another `/dev/pts/N`) and points the symlink at it,
//! so a client that reopens the stable name finds the board again.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{self, SetArg};

use crate::flash::proto::ROM_PRINT_BAUD;

use super::chip::Output;
use super::uart;
use super::{Event, SimError};

/// How long a write may wait for room in the pty before the bytes are dropped.
pub const WRITE_STALL: Duration = Duration::from_secs(2);
/// Poll interval of the reader and the sleeps, so the threads notice a shutdown promptly.
const TICK: Duration = Duration::from_millis(50);
/// Largest piece written (and paced) at once.
const SLICE: usize = 256;

/// The pseudo-terminal pair.
#[derive(Debug)]
pub struct Pty {
    master: OwnedFd,
    slave: Arc<OwnedFd>,
    path: PathBuf,
}

impl Pty {
    /// Opens a pty in raw mode at 74880 baud.
    pub fn open() -> Result<Pty, SimError> {
        let pair = nix::pty::openpty(None, None).map_err(SimError::Pty)?;
        let path = nix::unistd::ttyname(&pair.slave).map_err(SimError::Pty)?;
        let mut t = termios::tcgetattr(&pair.slave).map_err(SimError::Pty)?;
        termios::cfmakeraw(&mut t);
        termios::tcsetattr(&pair.slave, SetArg::TCSANOW, &t).map_err(SimError::Pty)?;
        set_speed(pair.slave.as_fd(), ROM_PRINT_BAUD);
        let flags = fcntl(&pair.master, FcntlArg::F_GETFL).map_err(SimError::Pty)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(&pair.master, FcntlArg::F_SETFL(flags)).map_err(SimError::Pty)?;
        Ok(Pty {
            master: pair.master,
            slave: Arc::new(pair.slave),
            path,
        })
    }

    /// Path of the slave (`/dev/pts/N`).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// A handle to read the host's rate from (shares the kept-open slave descriptor).
    pub fn rate_probe(&self) -> RateProbe {
        RateProbe {
            slave: Arc::clone(&self.slave),
        }
    }
}

/// The serial cable between the board and the host: a pty while plugged, nothing while
/// unplugged, and a symlink with a stable name to the current pty (see the module docs).
#[derive(Debug)]
pub struct Cable {
    current: std::sync::Mutex<Option<Arc<Pty>>>,
    link: PathBuf,
}

impl Cable {
    /// A plugged cable with `pty`, named by a new symlink at `link`.
    pub fn new(pty: Pty, link: PathBuf) -> Result<Cable, SimError> {
        point_link(&link, pty.path())?;
        Ok(Cable {
            current: std::sync::Mutex::new(Some(Arc::new(pty))),
            link,
        })
    }

    /// The stable name (a symlink to the current pty while plugged).
    pub fn link(&self) -> &std::path::Path {
        &self.link
    }

    /// The pty in use, or `None` while unplugged.
    pub fn current(&self) -> Option<Arc<Pty>> {
        self.lock().clone()
    }

    /// Whether the cable is plugged.
    pub fn plugged(&self) -> bool {
        self.lock().is_some()
    }

    /// Pulls the cable: the stable name goes, the pty closes once the reader and writer let
    /// go of it (within [`TICK`]). Returns false if it was already unplugged.
    pub fn unplug(&self) -> bool {
        let mut current = self.lock();
        if current.is_none() {
            return false;
        }
        let _ = std::fs::remove_file(&self.link);
        *current = None;
        true
    }

    /// Plugs the cable back: a new pty behind the stable name. Returns false if it was
    /// already plugged.
    pub fn plug(&self) -> Result<bool, SimError> {
        let mut current = self.lock();
        if current.is_some() {
            return Ok(false);
        }
        let pty = Pty::open()?;
        point_link(&self.link, pty.path())?;
        *current = Some(Arc::new(pty));
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Pty>>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.link);
    }
}

/// Points the symlink `link` at `target`, replacing what was there in one rename.
fn point_link(link: &std::path::Path, target: &std::path::Path) -> Result<(), SimError> {
    let mut tmp = link.as_os_str().to_os_string();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(SimError::Io)?;
    std::fs::rename(&tmp, link).map_err(SimError::Io)
}

/// Reads the baud rate the host side configured on the slave.
#[derive(Debug, Clone)]
pub struct RateProbe {
    slave: Arc<OwnedFd>,
}

impl RateProbe {
    /// The host's output rate, or `None` if it cannot be read.
    pub fn host_baud(&self) -> Option<u32> {
        get_speed(self.slave.as_fd())
    }
}

#[cfg(target_os = "linux")]
fn get_speed(fd: BorrowedFd<'_>) -> Option<u32> {
    // SAFETY: termios2 is plain old data; TCGETS2 fills it for a tty descriptor and fails
    // cleanly otherwise.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS2, &mut t) };
    (r == 0).then_some(t.c_ospeed)
}

#[cfg(target_os = "linux")]
fn set_speed(fd: BorrowedFd<'_>, baud: u32) {
    // SAFETY: as in get_speed; TCSETS2 only reads the struct we pass.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS2, &mut t) } != 0 {
        return;
    }
    t.c_cflag = (t.c_cflag & !libc::CBAUD) | libc::BOTHER;
    t.c_ispeed = baud;
    t.c_ospeed = baud;
    // A failure only leaves the default rate, which a client overrides anyway.
    let _ = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCSETS2, &t) };
}

#[cfg(not(target_os = "linux"))]
fn get_speed(_fd: BorrowedFd<'_>) -> Option<u32> {
    None
}

#[cfg(not(target_os = "linux"))]
fn set_speed(_fd: BorrowedFd<'_>, _baud: u32) {}

/// Paces bytes on a line at a baud rate (10 bits per byte, 8N1).
#[derive(Debug)]
struct Pacer {
    free_at: Instant,
}

impl Pacer {
    fn new() -> Self {
        Pacer {
            free_at: Instant::now(),
        }
    }

    /// Waits until the line is free, then books `n` bytes at `baud`.
    fn book(&mut self, n: usize, baud: u32, stop: &dyn Fn() -> bool) {
        sleep_until(self.free_at, stop);
        let start = self.free_at.max(Instant::now());
        self.free_at = start + byte_time(n, baud);
    }
}

/// Time `n` bytes take on an 8N1 line at `baud`.
pub fn byte_time(n: usize, baud: u32) -> Duration {
    if baud == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(n as f64 * 10.0 / f64::from(baud))
}

fn sleep_until(deadline: Instant, stop: &dyn Fn() -> bool) {
    loop {
        let now = Instant::now();
        if now >= deadline || stop() {
            return;
        }
        std::thread::sleep((deadline - now).min(TICK));
    }
}

/// Reads what the host writes and forwards it to the chip thread with the host's rate.
pub fn run_reader(
    cable: Arc<Cable>,
    events: Sender<Event>,
    stop: Arc<AtomicBool>,
    realistic: bool,
) {
    let mut buf = [0u8; 4096];
    let mut pacer = Pacer::new();
    let stopped = || stop.load(Ordering::Relaxed);
    while !stopped() {
        let Some(pty) = cable.current() else {
            // Unplugged: nothing reaches the board.
            std::thread::sleep(TICK);
            continue;
        };
        let master = &pty.master;
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(TICK.as_millis() as u16)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::error!("pty poll failed: {e}");
                return;
            }
        }
        match nix::unistd::read(master, &mut buf) {
            Ok(0) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
            // Cannot happen while the slave is held open; be patient rather than spin.
            Err(Errno::EIO) => std::thread::sleep(TICK),
            Err(e) => {
                tracing::error!("pty read failed: {e}");
                return;
            }
            Ok(n) => {
                let baud = pty.rate_probe().host_baud().unwrap_or(0);
                if realistic {
                    pacer.book(n, baud, &stopped);
                    sleep_until(pacer.free_at, &stopped);
                }
                let bytes = buf[..n].to_vec();
                if events
                    .send(Event::Rx {
                        bytes,
                        host_baud: baud,
                    })
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// What the chip thread hands to the writer.
#[derive(Debug)]
pub enum WriterMsg {
    /// Output to put on the line.
    Out(Output),
    /// Answer once everything before has been written (or dropped as stale).
    Barrier(std::sync::mpsc::Sender<()>),
}

/// Puts the chip's output on the pty: resampled to the host's rate, logged, and paced.
pub struct Writer {
    /// The cable to write to (output is dropped while it is unplugged).
    pub cable: Arc<Cable>,
    /// Current power/reset generation; older output is dropped.
    pub epoch: Arc<AtomicU64>,
    /// Optional log of every byte written.
    pub tx_log: Option<File>,
    /// Pace at the baud rate and honour busy delays.
    pub realistic: bool,
    /// Set on shutdown: stop pacing and drop what is left.
    pub stop: Arc<AtomicBool>,
}

impl Writer {
    /// Runs until the output channel closes.
    pub fn run(mut self, outputs: Receiver<WriterMsg>) {
        let mut pacer = Pacer::new();
        let mut host_view = HostView::default();
        for msg in outputs {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let item = match msg {
                WriterMsg::Out(item) => item,
                WriterMsg::Barrier(done) => {
                    let _ = done.send(());
                    continue;
                }
            };
            let current = || self.epoch.load(Ordering::Relaxed);
            match item {
                Output::Delay { duration, epoch } => {
                    if epoch >= current() {
                        let deadline = Instant::now() + duration;
                        let epoch_now = current();
                        sleep_until(deadline, &|| {
                            self.epoch.load(Ordering::Relaxed) != epoch_now
                        });
                        pacer.free_at = pacer.free_at.max(Instant::now());
                    }
                }
                Output::Tx {
                    bytes,
                    baud,
                    epoch,
                    at,
                } => {
                    if epoch < current() {
                        continue;
                    }
                    let Some(pty) = self.cable.current() else {
                        // Unplugged: the bytes leave the board's TX pin and reach no port.
                        continue;
                    };
                    let probed = pty.rate_probe().host_baud().unwrap_or(baud);
                    let end = at + byte_time(bytes.len(), baud);
                    let host = host_view.rate_for(epoch, at, end, probed);
                    let wire = uart::resample(&bytes, baud, host);
                    for slice in wire.chunks(SLICE) {
                        if self.realistic {
                            let stale = || {
                                self.epoch.load(Ordering::Relaxed) != epoch
                                    || self.stop.load(Ordering::Relaxed)
                            };
                            pacer.book(slice.len(), baud, &stale);
                            if stale() {
                                break;
                            }
                        }
                        let written = write_slice(&pty.master, slice);
                        if let Some(log) = self.tx_log.as_mut()
                            && let Err(e) = log.write_all(&slice[..written])
                        {
                            tracing::error!("tx log write failed: {e}");
                            self.tx_log = None;
                        }
                        if written < slice.len() {
                            tracing::debug!("pty full: dropped {} bytes", wire.len() - written);
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Shortest device time in which a host can react to what the board sent: read it, decide,
/// and change its port's rate.
///
/// Bytes the board sends back to back are on the wire before any host can react to the first
/// of them (a USB-serial adapter alone delivers them in 1 ms frames): eboot's `e:2` right
/// after its `ld` reaches the host at the ROM's rate even when the host switches to the app's
/// rate on seeing `ld`. The writer, though, hands the board's output to the pty piece by
/// piece in real time, and on a loaded machine a host can switch between two pieces. So a rate
/// change seen on the host's port takes effect only for bytes that start at least this long
/// (device time) after the bytes written before it was seen. Far below any real host's
/// reaction, in both timing modes (5 µs of real time in fast mode).
pub const HOST_REACTION: Duration = Duration::from_micros(100);

/// The host's port rate as the board's bytes meet it (see [`HOST_REACTION`]).
#[derive(Debug, Default)]
struct HostView {
    /// The power/reset generation, the rate the last bytes met and when they ended (device
    /// time); none before the first bytes.
    last: Option<(u64, u32, Duration)>,
    /// A rate change seen on the host's port, and the device time from which it applies.
    change: Option<(u32, Duration)>,
}

impl HostView {
    /// The rate that bytes on the wire from `at` to `end` (device time, generation `epoch`)
    /// meet, given the host's port is at `probed` now.
    fn rate_for(&mut self, epoch: u64, at: Duration, end: Duration, probed: u32) -> u32 {
        let rate = match self.last {
            // A new generation starts after a power or reset command the host has seen.
            Some((e, used, last_end)) if e == epoch && probed != used => {
                let from = match self.change {
                    Some((rate, from)) if rate == probed => from,
                    _ => last_end + HOST_REACTION,
                };
                if at >= from {
                    self.change = None;
                    probed
                } else {
                    self.change = Some((probed, from));
                    used
                }
            }
            _ => {
                self.change = None;
                probed
            }
        };
        self.last = Some((epoch, rate, end));
        rate
    }
}

/// Writes as much of `data` as the pty accepts within [`WRITE_STALL`]; returns the count.
fn write_slice(master: &OwnedFd, data: &[u8]) -> usize {
    let mut done = 0;
    let deadline = Instant::now() + WRITE_STALL;
    while done < data.len() {
        match nix::unistd::write(master, &data[done..]) {
            Ok(n) => done += n,
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLOUT)];
                let wait = left.min(TICK).as_millis() as u16;
                let _ = poll(&mut fds, PollTimeout::from(wait));
            }
            Err(e) => {
                tracing::error!("pty write failed: {e}");
                break;
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn a_host_switch_misses_bytes_sent_back_to_back_and_meets_later_ones() {
        let mut v = HostView::default();
        // `ld` at 74880, met at 74880.
        assert_eq!(v.rate_for(1, us(0), us(535), 74_880), 74_880);
        // The host switched on seeing it; `e:2` went out right after `ld`: old rate.
        assert_eq!(v.rate_for(1, us(535), us(1203), 115_200), 74_880);
        // Still within the reaction time of the bytes before the switch was seen.
        assert_eq!(v.rate_for(1, us(600), us(700), 115_200), 74_880);
        // Later bytes meet the new rate, and so does everything after.
        assert_eq!(v.rate_for(1, us(2000), us(2100), 115_200), 115_200);
        assert_eq!(v.rate_for(1, us(2100), us(2200), 115_200), 115_200);
    }

    #[test]
    fn a_new_generation_or_a_gap_meets_the_hosts_rate_at_once() {
        let mut v = HostView::default();
        assert_eq!(v.rate_for(1, us(0), us(500), 115_200), 115_200);
        // Power cycled: the banner of the next generation meets whatever the host set.
        assert_eq!(v.rate_for(2, us(500), us(900), 74_880), 74_880);
        // A pause longer than the reaction time before the next bytes.
        assert_eq!(
            v.rate_for(2, us(900) + HOST_REACTION, us(1200), 115_200),
            115_200
        );
        // A change that is taken back before it applied leaves the rate as it was.
        assert_eq!(v.rate_for(2, us(1200), us(1300), 74_880), 115_200);
        assert_eq!(v.rate_for(2, us(1300), us(1400), 115_200), 115_200);
    }

    #[test]
    fn pty_reports_rates_set_by_a_client() {
        let pty = Pty::open().unwrap();
        let probe = pty.rate_probe();
        assert_eq!(probe.host_baud(), Some(74_880), "starts at the ROM's rate");
        let client = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pty.path())
            .unwrap();
        set_speed(client.as_fd(), 115_200);
        assert_eq!(probe.host_baud(), Some(115_200));
        set_speed(client.as_fd(), 460_800);
        drop(client);
        assert_eq!(
            probe.host_baud(),
            Some(460_800),
            "settings survive the client closing"
        );
    }

    #[test]
    fn byte_time_is_ten_bits_per_byte() {
        assert_eq!(byte_time(11_520, 115_200), Duration::from_secs(1));
        assert_eq!(byte_time(5, 0), Duration::ZERO);
    }
}
