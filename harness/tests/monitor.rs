//! `harness monitor` as a process: board locks between processes, exit codes on signals.
//! (Safe state after signals on a virtual board: tests/rig_virtual.rs.)

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

struct Pty {
    master: File,
    path: PathBuf,
    _slave: OwnedFd,
}

fn pty() -> Pty {
    let pair = nix::pty::openpty(None, None).expect("openpty");
    let path = nix::unistd::ttyname(&pair.slave).expect("ttyname");
    Pty {
        master: File::from(pair.master),
        path,
        _slave: pair.slave,
    }
}

fn harness() -> Command {
    Command::new(env!("CARGO_BIN_EXE_harness"))
}

/// Starts `harness monitor --port PATH` and waits until it is monitoring (the caller waits for
/// the child).
#[allow(clippy::zombie_processes)]
fn monitor(port: &Path, dir: &Path, out: &str) -> (Child, BufReader<ChildStdout>) {
    let mut child = harness()
        .args(["monitor", "--port"])
        .arg(port)
        .arg("--out")
        .arg(dir.join(out))
        .env("HARNESS_LOCK_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "monitor ended before monitoring"
        );
        if line.starts_with("# monitoring") {
            return (child, stdout);
        }
    }
}

fn wait_for_line(stdout: &mut BufReader<ChildStdout>, want: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "no `{want}` line");
        if line.trim_end() == want {
            return;
        }
    }
}

#[test]
fn a_held_port_is_refused_naming_the_holder_and_freed_when_it_dies() {
    let mut p = pty();
    let dir = tempfile::tempdir().unwrap();
    let (mut first, mut first_out) = monitor(&p.path, dir.path(), "first.log");
    p.master.write_all(b"hello from the board\n").unwrap();
    wait_for_line(&mut first_out, "hello from the board");

    let second = harness()
        .args(["monitor", "--duration", "5s", "--port"])
        .arg(&p.path)
        .arg("--out")
        .arg(dir.path().join("second.log"))
        .env("HARNESS_LOCK_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2), "a harness error");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains(&format!(
            "is in use by another harness process (pid {})",
            first.id()
        )),
        "{err}"
    );
    assert!(!dir.path().join("second.log").exists(), "nothing opened");

    // SIGKILL: no cleanup runs, the kernel drops the lock with the process.
    first.kill().unwrap();
    first.wait().unwrap();
    let (mut third, mut third_out) = monitor(&p.path, dir.path(), "third.log");
    p.master.write_all(b"third time\n").unwrap();
    wait_for_line(&mut third_out, "third time");
    kill(Pid::from_raw(third.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(third.wait().unwrap().code(), Some(143));
    assert_eq!(
        std::fs::read(dir.path().join("third.log")).unwrap(),
        b"third time\n"
    );
}

#[test]
fn sigint_stops_the_monitor_with_130() {
    let mut p = pty();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut out) = monitor(&p.path, dir.path(), "cap.log");
    p.master
        .write_all(b"ets Jan  8 2013,rst cause:1, boot mode:(3,6)\r\n")
        .unwrap();
    wait_for_line(&mut out, "ets Jan  8 2013,rst cause:1, boot mode:(3,6)");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("SIGINT: safe state applied to 0 board(s)"),
        "{err}"
    );
}

#[test]
fn duration_ends_with_a_triage_line_and_the_capture_summary() {
    let mut p = pty();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cap.log");
    let mut child = harness()
        .args([
            "monitor",
            "--duration",
            "3s",
            "--boot-quiet",
            "100ms",
            "--port",
        ])
        .arg(&p.path)
        .arg("--out")
        .arg(&file)
        .env("HARNESS_LOCK_DIR", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    wait_for_line(&mut out, "# monitoring (Ctrl-C to stop)");
    // A download-mode boot: the ROM banner and nothing else.
    p.master
        .write_all(b"\r\n ets Jan  8 2013,rst cause:2, boot mode:(1,6)\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut out, &mut text).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        text.contains("# triage boot 0: download-mode:"),
        "one triage line per boot:\n{text}"
    );
    assert_eq!(text.matches("# triage").count(), 1, "{text}");
    assert!(
        text.contains(&format!("# captured 51 bytes in {}", file.display())),
        "{text}"
    );
}

/// `harness monitor | head`: when the reader goes away the monitor stops as if its time were
/// up, with exit 0 and everything the board sent in the capture file.
#[test]
fn a_reader_that_goes_away_ends_the_monitor_quietly_with_the_capture_kept() {
    let mut p = pty();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cap.log");
    let mut child = harness()
        .args(["monitor", "--port"])
        .arg(&p.path)
        .arg("--out")
        .arg(&file)
        .env("HARNESS_LOCK_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    wait_for_line(&mut out, "# monitoring (Ctrl-C to stop)");
    drop(out);
    p.master
        .write_all(b"hello after the reader left\n")
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the monitor kept running"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let captured = std::fs::read(&file).unwrap();
    assert_eq!(captured, b"hello after the reader left\n");
}
