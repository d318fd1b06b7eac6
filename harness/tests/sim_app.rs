//! End to end: `harness sim` booting firmware images from its flash file, read on the real pty
//! with the serialport crate at the rates a capture tool uses (74880 for the ROM and eboot,
//! 115200 for the app after `ld`), and the captures classified by `harness triage`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const STARTUP: Duration = Duration::from_secs(10);

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/images")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A 1 MB flash file holding `image` at 0x0, the rest erased.
fn flash_file(dir: &Path, image: &[u8]) -> PathBuf {
    let mut flash = vec![0xFF; 1 << 20];
    flash[..image.len()].copy_from_slice(image);
    let path = dir.join("flash.bin");
    std::fs::write(&path, flash).unwrap();
    path
}

/// A running `harness sim`.
struct Sim {
    child: Child,
    endpoints: Vec<String>,
    control: PathBuf,
    pty: String,
    _dir: tempfile::TempDir,
}

impl Sim {
    fn start(board: &str, image: &[u8], extra: &[&str]) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let flash = flash_file(dir.path(), image);
        let mut child = Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(["sim", "--board", board, "--flash"])
            .arg(&flash)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start harness sim");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
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
            endpoints.push(line);
        }
        let get = |name: &str| {
            endpoints
                .iter()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .map(str::to_string)
                .unwrap_or_else(|| panic!("no `{name}:` endpoint in {endpoints:?}"))
        };
        Sim {
            pty: get("pty"),
            control: PathBuf::from(get("control")),
            endpoints,
            child,
            _dir: dir,
        }
    }

    fn control(&self, line: &str) -> String {
        let mut s = UnixStream::connect(&self.control).expect("control socket");
        s.set_read_timeout(Some(STARTUP)).unwrap();
        writeln!(s, "{line}").unwrap();
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).unwrap();
        answer.trim_end().to_string()
    }

    /// Switches the board off, opens its serial port at `baud` (dropping what was sent before)
    /// and powers the board on again.
    fn boot(&self, baud: u32) -> Port {
        assert_eq!(self.control("power off"), "ok");
        let port = self.port(baud);
        assert_eq!(self.control("power on"), "ok");
        port
    }

    /// Opens the board's serial port at `baud`, dropping what was sent before.
    fn port(&self, baud: u32) -> Port {
        let port = serialport::new(&self.pty, baud)
            .timeout(Duration::from_millis(50))
            .open_native()
            .expect("open the pty with serialport");
        serialport::SerialPort::clear(&port, serialport::ClearBuffer::Input).unwrap();
        Port {
            port,
            capture: Vec::new(),
            cursor: 0,
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A serial port and everything read from it.
struct Port {
    port: serialport::TTYPort,
    capture: Vec<u8>,
    /// End of the last match.
    cursor: usize,
}

impl Port {
    /// Reads until `needle` has arrived after `from` (an offset into the capture).
    fn read_until_from(&mut self, from: usize, needle: &[u8], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self.capture[from.min(self.capture.len())..]
                .windows(needle.len())
                .position(|w| w == needle)
            {
                return from + i + needle.len();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&self.capture[from.min(self.capture.len())..])
            );
            let mut buf = [0u8; 1024];
            match self.port.read(&mut buf) {
                Ok(n) => self.capture.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("pty read failed: {e}"),
            }
        }
    }

    /// Reads until `needle` has arrived after the previous match; returns where it ends.
    fn read_until(&mut self, needle: &str, within: Duration) -> usize {
        self.cursor = self.read_until_from(self.cursor, needle.as_bytes(), within);
        self.cursor
    }

    /// Reads until the capture holds at least `len` bytes.
    fn read_at_least(&mut self, len: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.capture.len() < len {
            assert!(Instant::now() < deadline, "timed out: {:?}", self.text());
            let mut buf = [0u8; 1024];
            match self.port.read(&mut buf) {
                Ok(n) => self.capture.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("pty read failed: {e}"),
            }
        }
    }

    fn set_baud(&mut self, baud: u32) {
        serialport::SerialPort::set_baud_rate(&mut self.port, baud).unwrap();
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.capture).into_owned()
    }
}

/// Runs `harness triage --format json` on a capture and returns the class.
fn triage_class(capture: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capture.log");
    std::fs::write(&path, capture).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["triage", "--format", "json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["class"].as_str().unwrap().to_string()
}

#[test]
fn healthy_boot_at_both_rates_triages_healthy() {
    let image = fixture("sonoff-ota-1.0.0-webserver.bin");
    // Device time at half speed: the app's setup() comes 100 device ms (200 ms) after `ld`,
    // the window in which the reader switches to 115200.
    let sim = Sim::start("sonoff-4ch", &image, &["--time-scale", "2"]);
    assert!(
        sim.endpoints.contains(&"time-scale: 2".to_string()),
        "{:?}",
        sim.endpoints
    );
    let mut port = sim.boot(74_880);
    port.read_until("~ld\r\n", STARTUP);
    port.set_baud(115_200);
    port.read_until("state=RUN\r\n", STARTUP);
    let text = port.text();
    assert_eq!(
        text,
        "\r\n ets Jan  8 2013,rst cause:1, boot mode:(3,7)\r\n\r\n\
         load 0x4010f000, len 1384, room 16 \r\ntail 8\r\nchksum 0x2d\r\ncsum 0x2d\r\n\
         v00010000\r\n~ld\r\n\
         \r\nHILFW app=sonoff-ota version=1.0.0 ota=webserver state=RUN\r\n"
    );
    let status = sim.control("status");
    assert!(
        status.contains("state=app") && status.contains("fw_state=RUN relay=off led=on"),
        "{status}"
    );
    assert_eq!(triage_class(&port.capture), "healthy-boot");
}

#[test]
fn app_output_read_at_the_rom_rate_is_garbage() {
    let image = fixture("sonoff-ota-1.0.0-arduino.bin");
    let sim = Sim::start("sonoff-basic", &image, &["--time-scale", "0.01"]);
    let mut port = sim.boot(74_880);
    let at = port.read_until("~ld\r\n", STARTUP);
    // The state line and, 2 device seconds later, the WiFi line: about 100 bytes at 115200,
    // fewer at 74880.
    port.read_at_least(at + 40, STARTUP);
    let after = String::from_utf8_lossy(&port.capture[at..]).into_owned();
    assert!(
        !after.contains("HILFW") && !after.contains("WiFi"),
        "{after:?}"
    );
    assert!(
        after
            .chars()
            .any(|c| c == '\u{FFFD}' || c.is_control() && c != '\r' && c != '\n'),
        "bytes a terminal cannot show: {after:?}"
    );
}

#[test]
fn qio_4mb_image_on_the_esp8285_triages_flash_config_mismatch() {
    let image = fixture("sonoff-ota-1.0.0-4mb-qio.bin");
    let sim = Sim::start("sonoff-4ch", &image, &[]);
    let mut port = sim.boot(74_880);
    let first = port.read_until("Fatal exception (0): \r\n", STARTUP);
    port.read_until("rst cause:2, boot mode:(3,7)", STARTUP);
    port.read_until("Fatal exception (0): \r\n", STARTUP);
    let text = port.text();
    assert!(
        text[..first].ends_with("csum 0x2d\r\nv00008000\r\n~ld\r\nFatal exception (0): \r\n"),
        "{text:?}"
    );
    assert_eq!(triage_class(&port.capture), "flash-config-mismatch");
}

#[test]
fn corrupt_eboot_checksum_triages_checksum_error() {
    let mut image = fixture("sonoff-ota-1.0.0-webserver.bin");
    image[100] ^= 0x01;
    let sim = Sim::start("sonoff-basic", &image, &[]);
    let mut port = sim.boot(74_880);
    port.read_until("ets_main.c \r\n", STARTUP);
    assert!(
        port.text()
            .ends_with("tail 8\r\nchksum 0x2c\r\ncsum 0x2c\r\ncsum err\r\nets_main.c \r\n"),
        "{}",
        port.text()
    );
    assert!(sim.control("status").contains("state=halted"));
    assert_eq!(triage_class(&port.capture), "checksum-error");
}

#[test]
fn long_press_enters_update_and_the_timeout_returns_to_run() {
    let image = fixture("sonoff-ota-1.0.0-arduino.bin");
    // 100 device seconds per real second: the 120 s UPDATE timeout takes 1.2 s.
    let sim = Sim::start("sonoff-basic", &image, &["--time-scale", "0.01"]);
    // Read at the app's rate from the start: the ROM's lines are garbage, the app's text.
    let mut port = sim.boot(115_200);
    port.read_until(
        "HILFW app=sonoff-ota version=1.0.0 ota=arduino state=RUN\r\n",
        STARTUP,
    );
    assert!(
        !port.text().contains("ets Jan"),
        "ROM text is garbage at 115200"
    );
    port.read_until("WiFi connected ip=127.0.0.", STARTUP);
    assert_eq!(sim.control("button down"), "ok");
    port.read_until(
        "HILFW app=sonoff-ota version=1.0.0 ota=arduino state=UPDATE\r\n",
        STARTUP,
    );
    port.read_until("HILFW endpoint=espota://127.0.0.", STARTUP);
    assert_eq!(sim.control("button up"), "ok");
    let status = sim.control("status");
    assert!(status.contains("fw_state=UPDATE"), "{status}");
    let entered = Instant::now();
    port.read_until(
        "HILFW app=sonoff-ota version=1.0.0 ota=arduino state=RUN\r\n",
        STARTUP,
    );
    assert!(
        entered.elapsed() >= Duration::from_millis(900),
        "the timeout is 120 device seconds: {:?}",
        entered.elapsed()
    );
    // A short press toggles the relay.
    assert_eq!(sim.control("button down"), "ok");
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(sim.control("button up"), "ok");
    port.read_until("relay 1 on\r\n", STARTUP);
    assert!(sim.control("status").contains("relay=on"));
}

#[test]
fn image_make_records_core_and_password() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("old.bin");
    let made = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args([
            "image",
            "make",
            "--app",
            "sonoff-ota",
            "--version",
            "1.0.0",
            "--ota",
            "webserver",
            "--size",
            "32K",
            "--core",
            "2.3.0",
            "--password",
            "s3cret",
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let stdout = String::from_utf8_lossy(&made.stdout);
    assert!(
        stdout.contains(
            "HILFW app=sonoff-ota version=1.0.0 ota=webserver core=2.3.0 password=s3cret"
        ),
        "{stdout}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args([
            "image",
            "make",
            "--app",
            "a",
            "--version",
            "1",
            "--core",
            "2.3",
            "-o",
        ])
        .arg(dir.path().join("bad.bin"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("core version `2.3` is not MAJOR.MINOR.PATCH"),
        "{bad:?}"
    );
    // The simulator shows the old core's version word and no CRC.
    let image = std::fs::read(&out).unwrap();
    let word = u32::from_le_bytes(image[0x1010..0x1014].try_into().unwrap());
    assert!(word >= 0x1000_0000, "{word:#x}");
    // Written into an erased flash file by `harness sim --image`.
    let sim = Sim::start("sonoff-basic", &[], &["--image", out.to_str().unwrap()]);
    let mut port = sim.boot(74_880);
    port.read_until(&format!("v{word:08x}\r\n~ld\r\n"), STARTUP);
}
