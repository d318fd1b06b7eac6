//! End to end: `harness sim` running the reference firmware from its flash file, updated over
//! the air by real peers: curl, headless Chromium (through chromedriver) and an espota uploader
//! written from the protocol (tests/support/peers.rs).
//!
//! UPDATE is entered as a user does: `button down` on the simulator's control channel, held
//! until the firmware prints its `state=UPDATE` line (the long press fires while the button is
//! held), `button up`. A successful update must end with the eboot copy (`@cp:0`, `ld`) and the
//! new version's state line on the serial port, and the new image at flash 0x0. Outside UPDATE
//! the HTTP port refuses and the espota port is silent, and the flash stays byte for byte.
//!
//! The simulator runs at half speed (see [`Board::start`]) and one board at a time, so each
//! test takes several seconds: the 3 s long press, eboot's copy, ArduinoOTA's 2 s around its
//! final `OK`, all doubled.
//!
//! curl, chromium and chromedriver must be installed (CI installs them); a missing one fails
//! the test with what to install.

#[path = "support/peers.rs"]
mod peers;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use harness::capture::{Capture, CaptureConfig, CaptureEvent, IndexEvent, Subscription};
use peers::{Browser, Espota, curl, espota_upload, expected_acks};

const STARTUP: Duration = Duration::from_secs(20);
/// Generous bound for anything the board does at the fast time scale.
const WAIT: Duration = Duration::from_secs(30);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/images")
        .join(name)
}

/// One board at a time: the capture must switch its rate within 200 ms of eboot's `ld` and of
/// the restart announcement, which several simulators and a browser on two cores can delay.
static ONE_BOARD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A `harness sim` child process running a board with `image` at flash 0.
struct Board {
    child: Child,
    stdin: ChildStdin,
    answers: Receiver<String>,
    http: SocketAddr,
    ota: SocketAddr,
    flash: PathBuf,
    capture: Option<Capture>,
    sub: Subscription,
    /// Every serial line seen so far (for failure messages).
    seen: Vec<String>,
    /// The start of a line cut short.
    partial: String,
    _dir: tempfile::TempDir,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl Board {
    fn start(image: &Path) -> Board {
        let one = ONE_BOARD.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let flash = dir.path().join("flash.bin");
        let mut content = vec![0xFFu8; 1 << 20];
        let bytes = std::fs::read(image).unwrap();
        content[..bytes.len()].copy_from_slice(&bytes);
        std::fs::write(&flash, &content).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(["sim", "--board", "sonoff-basic", "--flash"])
            .arg(&flash)
            // Device time at twice real speed: below real time the chip waits at each UART
            // rate switch (eboot's `ld`, a restart) for the capture to follow
            // (sim::RATE_SWITCH_WAIT), so a loaded machine slows the board down instead of
            // garbling its first app line; and the UPDATE window (120 device-s) stays a minute
            // long, which an upload on a loaded machine fits in (at the fast default, 6 s).
            .args(["--time-scale", "0.5"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start harness sim");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut endpoints = Vec::new();
        loop {
            let line = rx.recv_timeout(STARTUP).expect("endpoint lines");
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(": ").expect("name: value");
            endpoints.push((k.to_string(), v.to_string()));
        }
        let get = |name: &str| {
            endpoints
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no `{name}` endpoint in {endpoints:?}"))
        };
        let http: SocketAddr = get("http").parse().unwrap();
        let ota: SocketAddr = get("ota").parse().unwrap();
        assert_eq!(http.ip(), ota.ip(), "one board address");
        let mut config = CaptureConfig::new(get("pty"));
        // The capture's index (baud switches, power notes) explains a failure.
        config.file = Some(dir.path().join("capture.bin"));
        let (capture, sub) = Capture::start_subscribed(config).unwrap();
        let mut board = Board {
            child,
            stdin,
            answers: rx,
            http,
            ota,
            flash,
            capture: Some(capture),
            sub,
            seen: Vec::new(),
            partial: String::new(),
            _dir: dir,
            _one: one,
        };
        // Boot again now that the port is read, so nothing of the boot is missed; the capture
        // is told, as a rig does, so that it reads the ROM's output at the ROM's rate.
        assert_eq!(board.control("power off"), "ok");
        // The first boot's output waited in the pty until the capture opened it; let the
        // capture read all of it first, or the new boot's notes would claim it.
        while board.sub.recv_timeout(Duration::from_millis(200)).is_ok() {}
        let capture = board.capture.as_ref().unwrap();
        capture.note(IndexEvent::Power { on: false }).unwrap();
        capture.note(IndexEvent::Power { on: true }).unwrap();
        assert_eq!(board.control("power on"), "ok");
        board
    }

    fn control(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        self.answers
            .recv_timeout(Duration::from_secs(10))
            .expect("control answer")
    }

    /// Waits for a serial line containing `needle`; returns it.
    fn line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| {
                    let index = harness::capture::index_path(&self._dir.path().join("capture.bin"));
                    panic!(
                        "no line with {needle:?}; saw {:#?}\ncapture index:\n{}",
                        self.seen,
                        std::fs::read_to_string(index).unwrap_or_default()
                    )
                });
            let Ok(CaptureEvent::Line { text, complete, .. }) = self.sub.recv_timeout(left) else {
                continue;
            };
            // A line the capture cut when the port went quiet (eboot's `@cp:` before the
            // copy's result) continues in the next piece.
            self.partial.push_str(&String::from_utf8_lossy(&text));
            if !complete {
                continue;
            }
            let text = std::mem::take(&mut self.partial).trim_end().to_string();
            self.seen.push(text.clone());
            if text.contains(needle) {
                return text;
            }
        }
    }

    /// Holds the button until the firmware is in UPDATE, then lets go.
    fn enter_update(&mut self) {
        assert_eq!(self.control("button down"), "ok");
        self.line("state=UPDATE");
        assert_eq!(self.control("button up"), "ok");
    }

    fn flash(&self) -> Vec<u8> {
        std::fs::read(&self.flash).unwrap()
    }

    fn url(&self) -> String {
        format!("http://{}/update", self.http)
    }

    /// After a successful update: the restart, eboot's copy, the new version running.
    fn expect_new_version(&mut self, state_line: &str) {
        self.line("@cp:0");
        self.line("ld");
        self.line(state_line);
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        drop(self.capture.take());
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn webserver_board() -> (Board, Vec<u8>, PathBuf) {
    let mut board = Board::start(&fixture("sonoff-ota-1.0.0-webserver.bin"));
    board.line("HILFW app=sonoff-ota version=1.0.0 ota=webserver state=RUN");
    let new_path = fixture("sonoff-ota-2.0.0-webserver.bin");
    let new = std::fs::read(&new_path).unwrap();
    (board, new, new_path)
}

#[test]
fn curl_updates_in_update_and_is_refused_in_run() {
    let (mut board, new, new_path) = webserver_board();
    let form = format!("firmware=@{}", new_path.display());

    // RUN: connection refused, nothing written.
    let before = board.flash();
    let refused = curl(&["-F", &form, &board.url()]);
    assert_eq!(refused.code, 7, "curl must fail to connect: {refused:?}");
    assert!(board.flash() == before, "flash changed in RUN");

    // UPDATE: the upload goes through, the board restarts into 2.0.0.
    board.enter_update();
    let run = curl(&["-F", &form, &board.url()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "<META http-equiv=\"refresh\" content=\"15;URL=/\">Update Success! Rebooting..."
    );
    board.line(&format!("Update Success: {}", new.len()));
    board.expect_new_version("HILFW app=sonoff-ota version=2.0.0 ota=webserver state=RUN");
    assert_eq!(board.flash()[..new.len()], new[..], "new image at 0x0");
    // Back in RUN after the restart: refused again.
    assert_eq!(curl(&[&board.url()]).code, 7);
}

#[test]
fn chromium_updates_through_the_form_and_cannot_load_it_in_run() {
    let (mut board, new, new_path) = webserver_board();
    let browser = Browser::start();

    let before = board.flash();
    let refused = browser.open(&board.url());
    let text = browser.text();
    assert!(
        refused
            .as_ref()
            .err()
            .is_some_and(|e| e.contains("ERR_CONNECTION_REFUSED"))
            || text.contains("ERR_CONNECTION_REFUSED"),
        "{refused:?} {text:?}"
    );
    assert!(browser.find("//input[@name='firmware']").is_err());
    assert!(board.flash() == before, "flash changed in RUN");

    board.enter_update();
    browser
        .open(&board.url())
        .expect("the upload page loads in UPDATE");
    browser.upload("firmware", &new_path).unwrap();
    browser.wait_text("Update Success! Rebooting...", WAIT);
    board.expect_new_version("HILFW app=sonoff-ota version=2.0.0 ota=webserver state=RUN");
    assert_eq!(board.flash()[..new.len()], new[..], "new image at 0x0");
}

/// Makes an ArduinoOTA image with `harness image make` (for builds the fixtures do not have).
fn make_image(dir: &Path, version: &str, password: Option<&str>) -> PathBuf {
    let out = dir.join(format!("sonoff-ota-{version}-arduino.bin"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.args([
        "image",
        "make",
        "--app",
        "sonoff-ota",
        "--version",
        version,
        "--ota",
        "arduino",
        "--size",
        "32K",
        "-o",
    ])
    .arg(&out);
    if let Some(p) = password {
        cmd.args(["--password", p]);
    }
    let made = cmd.output().unwrap();
    assert!(made.status.success(), "harness image make failed: {made:?}");
    out
}

#[test]
fn espota_updates_in_update_and_gets_no_answer_in_run() {
    let mut board = Board::start(&fixture("sonoff-ota-1.0.0-arduino.bin"));
    board.line("HILFW app=sonoff-ota version=1.0.0 ota=arduino state=RUN");
    let new = std::fs::read(fixture("sonoff-ota-2.0.0-arduino.bin")).unwrap();

    let before = board.flash();
    let silent = espota_upload(board.ota, &new, "fw.bin", None, Duration::from_secs(1));
    assert_eq!(silent, Espota::NoAnswer);
    assert!(board.flash() == before, "flash changed in RUN");

    board.enter_update();
    let outcome = espota_upload(board.ota, &new, "fw.bin", None, Duration::from_secs(10));
    let Espota::Transferred { replies, peer } = outcome else {
        panic!("upload did not run: {outcome:?}");
    };
    assert_eq!(replies, format!("{}OK", expected_acks(new.len())));
    assert_eq!(
        peer.ip(),
        board.ota.ip(),
        "the board connects back from its own address"
    );
    board.line("OTA end");
    board.expect_new_version("HILFW app=sonoff-ota version=2.0.0 ota=arduino state=RUN");
    assert_eq!(board.flash()[..new.len()], new[..], "new image at 0x0");
}

#[test]
fn espota_with_password_refuses_a_wrong_one_and_takes_the_right_one() {
    let dir = tempfile::tempdir().unwrap();
    let old = make_image(dir.path(), "1.0.0", Some("pa55"));
    let new_path = make_image(dir.path(), "2.0.0", Some("pa55"));
    let new = std::fs::read(&new_path).unwrap();
    let mut board = Board::start(&old);
    board.line("HILFW app=sonoff-ota version=1.0.0 ota=arduino state=RUN");
    board.enter_update();

    let before = board.flash();
    let wrong = espota_upload(
        board.ota,
        &new,
        "fw.bin",
        Some("guess"),
        Duration::from_secs(10),
    );
    assert_eq!(wrong, Espota::AuthFailed);
    board.line("OTA error auth");
    let none = espota_upload(board.ota, &new, "fw.bin", None, Duration::from_secs(10));
    assert_eq!(none, Espota::AuthFailed);
    assert!(
        board.flash() == before,
        "flash changed after a failed authentication"
    );

    let outcome = espota_upload(
        board.ota,
        &new,
        "fw.bin",
        Some("pa55"),
        Duration::from_secs(10),
    );
    let Espota::Transferred { replies, .. } = outcome else {
        panic!("upload did not run: {outcome:?}");
    };
    assert!(replies.ends_with("OK"), "{replies}");
    board.expect_new_version("HILFW app=sonoff-ota version=2.0.0 ota=arduino state=RUN");
    assert_eq!(board.flash()[..new.len()], new[..], "new image at 0x0");
}
