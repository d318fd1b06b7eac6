//! The serial capture against pseudo-terminals made here: every byte on disk, a SIGKILL loses
//! nothing received, a vanished port is reported and reconnected, the baud follower switches.
//!
//! No sleeps for synchronisation: tests wait for bytes or capture events, with timeouts.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use harness::capture::{
    Capture, CaptureConfig, CaptureEvent, IndexEvent, ROM_BAUD, Subscription, SwitchReason,
    index_path, read_index,
};

const WAIT: Duration = Duration::from_secs(10);

/// A pty pair: the master is the "board" side, the slave path is the port.
struct Pty {
    master: File,
    path: PathBuf,
    /// Kept open so that the slave survives the capture closing it (as the sim does).
    slave: OwnedFd,
}

fn pty() -> Pty {
    let pair = nix::pty::openpty(None, None).expect("openpty");
    let path = nix::unistd::ttyname(&pair.slave).expect("ttyname");
    let mut t = nix::sys::termios::tcgetattr(&pair.slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&pair.slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
    Pty {
        master: File::from(pair.master),
        path,
        slave: pair.slave,
    }
}

/// Reads from the capture's link until `n` bytes came, or panics after [`WAIT`].
fn read_exactly(capture: &Capture, n: usize) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; 8192];
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} bytes arrived",
            out.len()
        );
        let got = capture.read(&mut buf, Duration::from_millis(200)).unwrap();
        out.extend_from_slice(&buf[..got]);
    }
    out
}

fn wait_index(sub: &Subscription, what: &str, f: impl Fn(&IndexEvent) -> bool) -> IndexEvent {
    sub.wait_for(WAIT, |ev| match ev {
        CaptureEvent::Index(r) if f(&r.event) => Some(r.event.clone()),
        _ => None,
    })
    .unwrap_or_else(|| panic!("no {what} event within {WAIT:?}"))
}

fn pattern(len: usize) -> Vec<u8> {
    // All byte values, in an order that is not periodic in small chunks.
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect()
}

#[test]
fn every_byte_written_is_in_the_capture_file() {
    let mut p = pty();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cap.bin");
    let mut config = CaptureConfig::new(&p.path);
    config.file = Some(file.clone());
    let capture = Capture::start(config).unwrap();
    let data = pattern(300_000);
    let writer = {
        let data = data.clone();
        let mut master = p.master.try_clone().unwrap();
        std::thread::spawn(move || {
            for chunk in data.chunks(777) {
                master.write_all(chunk).unwrap();
            }
        })
    };
    let got = read_exactly(&capture, data.len());
    writer.join().unwrap();
    assert_eq!(got, data, "the link delivers the bytes in order");
    let summary = capture.stop().unwrap();
    assert_eq!(summary.bytes, data.len() as u64);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        data,
        "the file holds every byte"
    );
    let index = read_index(&index_path(&file)).unwrap();
    assert!(matches!(&index[0].event, IndexEvent::Start { baud, .. } if *baud == ROM_BAUD));
    assert!(matches!(
        &index.last().unwrap().event,
        IndexEvent::Stop { bytes } if *bytes == data.len() as u64
    ));
    // Offsets never go back.
    assert!(index.windows(2).all(|w| w[0].offset <= w[1].offset));
    let _ = p.master.flush();
}

/// Current output speed of a tty, read with TCGETS2 (it also reports rates like 74880).
fn tty_speed(fd: &impl AsRawFd) -> u32 {
    // SAFETY: termios2 is plain data that TCGETS2 fills in for a tty descriptor.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS2, &mut t) };
    assert_eq!(r, 0, "TCGETS2");
    t.c_ospeed
}

#[test]
fn baud_follower_switches_on_ld_and_back_on_rebooting() {
    let mut p = pty();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cap.bin");
    let mut config = CaptureConfig::new(&p.path);
    config.file = Some(file.clone());
    let (capture, sub) = Capture::start_subscribed(config).unwrap();
    assert_eq!(capture.baud(), 74_880);
    assert_eq!(
        tty_speed(&p.slave),
        74_880,
        "the port is opened at the ROM rate"
    );

    let boot = b"\r\n ets Jan  8 2013,rst cause:2, boot mode:(3,6)\r\n\r\nload 0x4010f000, len 3424, room 16 \r\ntail 0\r\nchksum 0x2e\r\nload 0x3fff20b8, len 40, room 8 \r\ntail 0\r\nchksum 0x2b\r\ncsum 0x2b\r\nv3ffe903d\r\n~ld\r\n";
    p.master.write_all(boot).unwrap();
    let ev = wait_index(&sub, "baud", |e| matches!(e, IndexEvent::Baud { .. }));
    assert_eq!(
        ev,
        IndexEvent::Baud {
            baud: 115_200,
            reason: SwitchReason::EbootLoad
        }
    );
    assert_eq!(capture.baud(), 115_200);
    assert_eq!(tty_speed(&p.slave), 115_200, "the port itself switched");

    p.master
        .write_all(b"\r\nHILFW app=sonoff-ota version=1.0.0 ota=arduino state=RUN\r\nUpdate Success: 345000\nRebooting...\n")
        .unwrap();
    let ev = wait_index(&sub, "baud", |e| matches!(e, IndexEvent::Baud { .. }));
    assert_eq!(
        ev,
        IndexEvent::Baud {
            baud: 74_880,
            reason: SwitchReason::Restart
        }
    );
    assert_eq!(tty_speed(&p.slave), 74_880);

    // A power-on by the rig while at the app rate goes back to the ROM's.
    p.master.write_all(b"~ld\n").unwrap();
    wait_index(&sub, "baud", |e| {
        matches!(e, IndexEvent::Baud { baud: 115_200, .. })
    });
    capture.note(IndexEvent::Power { on: true }).unwrap();
    let ev = wait_index(&sub, "baud", |e| matches!(e, IndexEvent::Baud { .. }));
    assert_eq!(
        ev,
        IndexEvent::Baud {
            baud: 74_880,
            reason: SwitchReason::PowerOn
        }
    );

    // A client that sets the rate owns it: `Rebooting` no longer switches.
    capture.set_baud(460_800).unwrap();
    p.master.write_all(b"Rebooting...\nmore\n").unwrap();
    sub.wait_for(WAIT, |ev| match ev {
        CaptureEvent::Line { text, .. } if text == b"more" => Some(()),
        _ => None,
    })
    .expect("lines keep coming");
    assert_eq!(capture.baud(), 460_800);

    drop(capture);
    let index = read_index(&index_path(&file)).unwrap();
    let switches: Vec<_> = index
        .iter()
        .filter_map(|r| match &r.event {
            IndexEvent::Baud { baud, reason } => Some((r.offset, *baud, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        switches[0],
        (boot.len() as u64, 115_200, SwitchReason::EbootLoad)
    );
    assert_eq!(
        switches.iter().map(|s| s.2).collect::<Vec<_>>(),
        [
            SwitchReason::EbootLoad,
            SwitchReason::Restart,
            SwitchReason::EbootLoad,
            SwitchReason::PowerOn,
            SwitchReason::Manual
        ]
    );
    assert!(
        index
            .iter()
            .any(|r| r.event == IndexEvent::Power { on: true })
    );
}

#[test]
fn garbage_run_switches_rate_and_is_noted() {
    let mut p = pty();
    let (capture, sub) = Capture::start_subscribed(CaptureConfig::new(&p.path)).unwrap();
    // What 115200-baud text looks like to a 74880 receiver: no newline, mostly non-text.
    let noise: Vec<u8> = [0x80u8, 0xf8, 0x1c, 0x9e, 0xe0, 0x03, 0xfc, 0x7f]
        .iter()
        .cycle()
        .take(600)
        .copied()
        .collect();
    p.master.write_all(&noise).unwrap();
    let ev = wait_index(&sub, "autobaud", |e| matches!(e, IndexEvent::Baud { .. }));
    assert_eq!(
        ev,
        IndexEvent::Baud {
            baud: 115_200,
            reason: SwitchReason::Autobaud
        }
    );
    drop(capture);
}

#[test]
fn vanished_port_is_reported_and_reconnected() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyUSB-by-id");
    let file = dir.path().join("cap.bin");
    let first = pty();
    std::os::unix::fs::symlink(&first.path, &link).unwrap();
    let mut config = CaptureConfig::new(&link);
    config.file = Some(file.clone());
    config.reconnect_every = Duration::from_millis(20);
    let (capture, sub) = Capture::start_subscribed(config).unwrap();

    let Pty {
        mut master, slave, ..
    } = first;
    master.write_all(b"before the unplug\n").unwrap();
    assert_eq!(read_exactly(&capture, 18), b"before the unplug\n");

    // Unplug: the master side goes away; the port reports a hangup.
    std::fs::remove_file(&link).unwrap();
    drop(slave);
    drop(master);
    let lost = wait_index(&sub, "port-lost", |e| {
        matches!(e, IndexEvent::PortLost { .. })
    });
    assert!(matches!(lost, IndexEvent::PortLost { .. }));
    assert!(!capture.is_connected());
    let mut buf = [0u8; 16];
    assert!(
        matches!(
            capture.read(&mut buf, Duration::from_millis(10)),
            Err(harness::capture::CaptureError::PortLost { .. })
        ),
        "readers learn that the port is gone"
    );
    assert!(capture.write_all(b"x").is_err());

    // Re-plug: a new device behind the same stable name.
    let mut second = pty();
    std::os::unix::fs::symlink(&second.path, &link).unwrap();
    wait_index(&sub, "port-reopened", |e| {
        matches!(e, IndexEvent::PortReopened { .. })
    });
    assert!(capture.is_connected());
    second.master.write_all(b"after the re-plug\n").unwrap();
    assert_eq!(read_exactly(&capture, 18), b"after the re-plug\n");
    capture.write_all(b"to the board").unwrap();
    let mut echo = [0u8; 12];
    second.master.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"to the board");

    drop(capture);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"before the unplug\nafter the re-plug\n",
        "what came before the loss is kept"
    );
    let kinds: Vec<String> = read_index(&index_path(&file))
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::to_value(&r.event).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .filter(|k| k != "rx")
        .collect();
    assert_eq!(kinds, ["start", "port-lost", "port-reopened", "stop"]);
}

/// Opens a second reader of the slave that reads nothing until the monitor is dead: it then
/// collects what the monitor had not read.
fn spare_reader(path: &std::path::Path) -> OwnedFd {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap()
}

/// Reads what is left in the pty (the kernel may hand it over in pieces: wait for quiet).
fn drain(fd: &OwnedFd) -> Vec<u8> {
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(500u16)).unwrap() == 0 {
            return rest;
        }
        match nix::unistd::read(fd.as_fd(), &mut buf) {
            Ok(0) => return rest,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EAGAIN) => continue,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Starts `harness monitor --port` and waits until it monitors.
#[allow(clippy::zombie_processes)]
fn monitor(
    port: &std::path::Path,
    file: &std::path::Path,
    lock_dir: &std::path::Path,
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["monitor", "--port"])
        .arg(port)
        .arg("--out")
        .arg(file)
        .env("HARNESS_LOCK_DIR", lock_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "monitor ended early"
        );
        if line.starts_with("# monitoring") {
            return (child, stdout);
        }
    }
}

fn numbered(n: usize) -> String {
    format!("line {n:08} the quick brown fox jumps over the lazy dog\r\n")
}

/// `harness monitor --port` on a pty, SIGKILLed while the capture runs: everything it had
/// shown is in its capture file (no user-space buffer held it back), and the capture file plus
/// what was still in the pty is exactly what was sent, before and after the kill.
#[test]
fn sigkill_of_monitor_loses_nothing_it_had_received() {
    let mut p = pty();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cap.log");
    let spare = spare_reader(&p.path);
    let (mut child, mut stdout) = monitor(&p.path, &file, dir.path());

    let mut before = Vec::new();
    for n in 0..2000 {
        before.extend_from_slice(numbered(n).as_bytes());
    }
    p.master.write_all(&before).unwrap();
    // The monitor shows a line after it is in the file; the last one shown means all are.
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0);
        if line.starts_with("line 00001999 ") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let captured = std::fs::read(&file).unwrap();
    assert_eq!(
        captured.len(),
        before.len(),
        "every byte shown before the SIGKILL is on disk"
    );
    assert!(captured == before);

    // The board keeps talking after the harness died: the pty keeps it.
    let mut after = Vec::new();
    for n in 2000..2050 {
        after.extend_from_slice(numbered(n).as_bytes());
    }
    p.master.write_all(&after).unwrap();
    assert!(
        drain(&spare) == after,
        "the rest is in the pty, nothing went astray"
    );
}

/// The same under a continuous stream, killed at an arbitrary moment: the capture file is an
/// exact prefix of what was sent and the pty holds an exact suffix; the only bytes in neither
/// are the one read the monitor had in hand (at most `READ_CHUNK`).
#[test]
fn sigkill_mid_stream_loses_at_most_the_read_in_hand() {
    let p = pty();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cap.log");
    let spare = spare_reader(&p.path);
    let (mut child, mut stdout) = monitor(&p.path, &file, dir.path());

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let master_fd: OwnedFd = p.master.try_clone().unwrap().into();
    nix::fcntl::fcntl(
        &master_fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let writer = {
        let stop = Arc::clone(&stop);
        let sent = Arc::clone(&sent);
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let line = numbered(n);
                let mut rest = line.as_bytes();
                while !rest.is_empty() && !stop.load(Ordering::Relaxed) {
                    match nix::unistd::write(master_fd.as_fd(), rest) {
                        Ok(k) => {
                            all.extend_from_slice(&rest[..k]);
                            sent.fetch_add(k as u64, Ordering::Relaxed);
                            rest = &rest[k..];
                        }
                        Err(nix::errno::Errno::EAGAIN) => std::thread::yield_now(),
                        Err(e) => panic!("write: {e}"),
                    }
                }
                n += 1;
            }
            all
        })
    };
    let mut shown = 0;
    let mut line = String::new();
    while shown < 200 {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0);
        if line.starts_with("line ") {
            shown += 1;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let all = writer.join().unwrap();
    assert_eq!(all.len() as u64, sent.load(Ordering::Relaxed));
    let rest = drain(&spare);
    let captured = std::fs::read(&file).unwrap();
    assert!(
        captured.len() >= 200 * 60,
        "captured {} bytes",
        captured.len()
    );
    assert!(all.starts_with(&captured), "the capture is an exact prefix");
    assert!(all.ends_with(&rest), "the pty holds an exact suffix");
    assert!(captured.len() + rest.len() <= all.len(), "nothing twice");
    let in_hand = all.len() - captured.len() - rest.len();
    assert!(
        in_hand <= harness::capture::READ_CHUNK,
        "lost {in_hand} bytes: more than one read"
    );
    drop(p);
}
