//! What the two OTA clients share: the payload, progress events, the cancel flag, the password
//! wrapper, the success record, and waiting on blocking sockets with a deadline.
//!
//! Layer L1: std sockets and the clock, no threads. Waits are cut into short slices so that a
//! [`Cancel`] set from another thread (a signal handler) is noticed within [`WAIT_SLICE`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a blocking wait runs before the cancel flag is checked again.
pub const WAIT_SLICE: Duration = Duration::from_millis(50);

/// The image to upload and the name it is announced under.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    /// The file's bytes, sent unchanged.
    pub bytes: &'a [u8],
    /// espota: the path as given by the user (it enters the auth cnonce, as in espota.py).
    /// HTTP: the file name in the multipart part (browsers send the base name).
    pub name: &'a str,
}

/// What a client reports while it works, in order of occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// espota: the invitation was sent (attempt counts from 1).
    Invited {
        /// Which attempt.
        attempt: u32,
        /// The host's TCP port announced in it.
        listen: SocketAddr,
    },
    /// espota: the device asked for the password (`AUTH <nonce>`).
    Challenged,
    /// espota: the device accepted (`OK`) and will connect back.
    Accepted,
    /// The TCP connection to the device is up (espota: its back-connect; HTTP: our connect).
    Connected {
        /// The device's end.
        peer: SocketAddr,
    },
    /// espota: a TCP connection from another address than the device's was closed unused.
    StrangerRefused {
        /// Who connected.
        peer: SocketAddr,
    },
    /// Image bytes written to the connection so far.
    Progress {
        /// Bytes of the image sent.
        sent: u64,
        /// Image size.
        total: u64,
    },
    /// The whole image is sent; waiting for the device's verdict.
    WaitingForResult,
}

/// A cooperative cancel flag, shared with whoever may stop the upload (a signal handler).
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the client to stop at its next wait slice.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`Cancel::cancel`] was called (or the shared flag set).
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// The shared flag, e.g. for `signal_hook::flag::register`.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.0)
    }
}

/// A password that does not show up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Self {
        Password(password.into())
    }

    /// The clear text, for the protocol code only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A finished upload that the device accepted; it restarts into eboot next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The device's OTA endpoint.
    pub device: SocketAddr,
    /// Image bytes sent.
    pub bytes: u64,
    /// From the first packet to the device's verdict.
    pub elapsed: Duration,
    /// The device's last word: `OK` (espota) or the HTTP response body.
    pub reply: String,
    /// espota: back-connects from other addresses that were refused on the way.
    pub refused: Vec<SocketAddr>,
}

/// The outcome of a wait with a deadline.
#[derive(Debug)]
pub(crate) enum Waited<T> {
    /// The operation completed.
    Done(T),
    /// The deadline passed first.
    TimedOut,
    /// The cancel flag was set first.
    Cancelled,
}

/// Whether an I/O error only means "nothing yet" for a socket with a timeout.
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Runs `op` with timeouts of at most [`WAIT_SLICE`] until it completes, `deadline` passes or
/// `cancel` is set. `op` gets the slice to use as its socket timeout; a timeout error from it
/// means "try again".
pub(crate) fn wait<T>(
    deadline: Instant,
    cancel: &Cancel,
    mut op: impl FnMut(Duration) -> io::Result<T>,
) -> io::Result<Waited<T>> {
    loop {
        if cancel.is_cancelled() {
            return Ok(Waited::Cancelled);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Waited::TimedOut);
        }
        // A zero timeout means "block forever" to std, so never pass one.
        let slice = (deadline - now)
            .min(WAIT_SLICE)
            .max(Duration::from_millis(1));
        match op(slice) {
            Ok(v) => return Ok(Waited::Done(v)),
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads what is available (at least one byte, or 0 at EOF) before `deadline`.
pub(crate) fn read_some(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    cancel: &Cancel,
) -> io::Result<Waited<usize>> {
    wait(deadline, cancel, |slice| {
        stream.set_read_timeout(Some(slice))?;
        stream.read(buf)
    })
}

/// Writes all of `data`, each write finishing before `stall` passes without progress.
///
/// Returns the bytes written when the wait ended early; a partial write is never lost the way
/// `write_all` loses it on a timeout.
pub(crate) fn write_all_deadline(
    stream: &mut TcpStream,
    data: &[u8],
    stall: Duration,
    cancel: &Cancel,
) -> Result<(), (usize, WriteEnd)> {
    let mut done = 0;
    while done < data.len() {
        let deadline = Instant::now() + stall;
        let res = wait(deadline, cancel, |slice| {
            stream.set_write_timeout(Some(slice))?;
            stream.write(&data[done..])
        });
        match res {
            Ok(Waited::Done(0)) => {
                return Err((done, WriteEnd::Failed(io::ErrorKind::WriteZero.into())));
            }
            Ok(Waited::Done(n)) => done += n,
            Ok(Waited::TimedOut) => return Err((done, WriteEnd::Stalled)),
            Ok(Waited::Cancelled) => return Err((done, WriteEnd::Cancelled)),
            Err(e) => return Err((done, WriteEnd::Failed(e))),
        }
    }
    Ok(())
}

/// Why [`write_all_deadline`] stopped early.
#[derive(Debug)]
pub(crate) enum WriteEnd {
    /// No progress for the stall time.
    Stalled,
    /// The cancel flag was set.
    Cancelled,
    /// The socket failed (reset, broken pipe).
    Failed(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_not_printed() {
        let p = Password::new("hunter2");
        assert_eq!(format!("{p:?}"), "Password(***)");
        assert_eq!(p.expose(), "hunter2");
    }

    #[test]
    fn wait_stops_at_the_deadline_and_on_cancel() {
        let cancel = Cancel::new();
        let start = Instant::now();
        let r = wait(start + Duration::from_millis(120), &cancel, |slice| {
            // What a socket with this timeout does when nothing arrives.
            std::thread::sleep(slice);
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        })
        .unwrap();
        assert!(matches!(r, Waited::TimedOut));
        assert!(start.elapsed() >= Duration::from_millis(120));

        let cancel = Cancel::new();
        let other = cancel.clone();
        let mut calls = 0;
        let r = wait(Instant::now() + Duration::from_secs(60), &cancel, |_| {
            calls += 1;
            if calls == 3 {
                other.cancel();
            }
            Err::<(), _>(io::ErrorKind::TimedOut.into())
        })
        .unwrap();
        assert!(matches!(r, Waited::Cancelled));
        assert_eq!(calls, 3);

        let r = wait(
            Instant::now() + Duration::from_secs(1),
            &Cancel::new(),
            |_| Err::<(), _>(io::ErrorKind::ConnectionReset.into()),
        );
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    }
}
