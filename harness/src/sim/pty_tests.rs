//! The field report's scenarios on a running simulator: real pty read with the serialport crate,
//! esptool for the serial upload, OTA requests through the [`FirmwarePort`] as the OTA servers
//! send them, and the captures compared with the seed line by line and classified by triage.
//!
//! esptool comes from the `ESPTOOL` environment variable, else `esptool` on PATH; without it
//! the tests that need it fail with a message (CI installs it).

use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::board;
use crate::firmware::OtaMethod;
use crate::firmware::behaviour;
use crate::image::{self, BuildSpec, Identity};
use crate::ota::updater::UpdateCommand;
use crate::triage::{self, Class};

use super::net::{OtaReply, OtaRequest};
use super::{BootStraps, FirmwarePort, SimConfig, SimHandle};

const WAIT: Duration = Duration::from_secs(10);

fn esptool() -> PathBuf {
    if let Some(p) = std::env::var_os("ESPTOOL") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("esptool"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("esptool not found: set ESPTOOL=/path/to/esptool or put esptool on PATH")
        })
}

fn build(version: &str, core: &str) -> Vec<u8> {
    build_sized(version, core, 32 * 1024)
}

fn build_sized(version: &str, core: &str, size: usize) -> Vec<u8> {
    let id = Identity::new("sonoff-ota", version, OtaMethod::WebServer, None)
        .unwrap()
        .with_core(core)
        .unwrap();
    image::build(&BuildSpec {
        size,
        ..BuildSpec::new(id)
    })
    .unwrap()
}

struct Port {
    port: serialport::TTYPort,
    capture: Vec<u8>,
    cursor: usize,
}

impl Port {
    fn open(sim: &SimHandle, baud: u32) -> Port {
        let port = serialport::new(sim.endpoints().pty.to_string_lossy(), baud)
            .timeout(Duration::from_millis(50))
            .open_native()
            .unwrap();
        serialport::SerialPort::clear(&port, serialport::ClearBuffer::Input).unwrap();
        Port {
            port,
            capture: Vec::new(),
            cursor: 0,
        }
    }

    fn read_until(&mut self, needle: &str) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.capture[self.cursor..]
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
            {
                self.cursor += i + needle.len();
                return self.cursor;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?}; got {:?}",
                String::from_utf8_lossy(&self.capture)
            );
            let mut buf = [0u8; 1024];
            match self.port.read(&mut buf) {
                Ok(n) => self.capture.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("pty read failed: {e}"),
            }
        }
    }
}

fn control(sim: &SimHandle, line: &str) -> String {
    sim.control().send_line(line)
}

/// Polls `status` until it contains `word`.
fn wait_status(sim: &SimHandle, word: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = control(sim, "status");
        if status.contains(word) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {word}: {status}"
        );
        std::thread::yield_now();
    }
}

/// Long press: UPDATE, with the service's generation.
fn enter_update(sim: &SimHandle, port: &FirmwarePort) -> u64 {
    wait_status(sim, "uart_tx=115200");
    assert_eq!(control(sim, "button down"), "ok");
    wait_status(sim, "fw_state=UPDATE");
    assert_eq!(control(sim, "button up"), "ok");
    port.net().get().service.expect("OTA service").generation
}

/// ESP8266HTTPUpdateServer's sequence of Updater calls and prints, ending in the restart.
fn http_upload(port: &FirmwarePort, generation: u64, image: &[u8]) {
    let req = |r| port.request(generation, r);
    let OtaReply::FreeSpace(free) = req(OtaRequest::FreeSketchSpace) else {
        panic!("free space")
    };
    let serial = &behaviour().http.serial;
    let name = serial.upload_start.render(&[("filename", "sonoff.bin")]);
    assert_eq!(req(OtaRequest::Print(name)), OtaReply::Ok);
    let begin = OtaRequest::Begin {
        size: (free - 0x1000) & 0xFFFF_F000,
        command: UpdateCommand::Flash,
        md5: None,
    };
    assert_eq!(req(begin), OtaReply::Ok);
    for block in image.chunks(behaviour().http.upload_block) {
        assert_eq!(
            req(OtaRequest::Write(block.to_vec())),
            OtaReply::Written(block.len())
        );
    }
    assert_eq!(
        req(OtaRequest::End {
            even_if_remaining: true
        }),
        OtaReply::Ok
    );
    let done = serial
        .upload_success
        .render(&[("size", &image.len().to_string())]);
    assert_eq!(req(OtaRequest::Print(done)), OtaReply::Ok);
    assert_eq!(req(OtaRequest::Restart { after_ms: 100 }), OtaReply::Ok);
}

/// The seed file's lines, leading spaces dropped.
fn seed_lines(name: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/seed")
        .join(name);
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.trim_start().to_string())
        .collect()
}

/// The capture's lines, leading spaces dropped (the seed's reporter indented every line).
fn capture_lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split("\r\n")
        .map(|l| l.trim_start().to_string())
        .collect()
}

#[test]
fn seed_basic_attempt_2_first_ota_restart_after_a_serial_upload() {
    let work = tempfile::tempdir().unwrap();
    let old = work.path().join("old.bin");
    std::fs::write(&old, build("1.0.0", "2.3.0")).unwrap();
    let mut config = SimConfig::new(board::find("sonoff-basic").unwrap());
    config.boot = BootStraps::Download;
    let sim = SimHandle::start(config).unwrap();
    assert_eq!(control(&sim, "button up"), "ok");
    // The Sonoff board definition's upload: no reset before, soft reset ("run user code") after.
    let out = Command::new(esptool())
        .args(["--port"])
        .arg(&sim.endpoints().pty)
        .args(["--before", "no-reset", "--after", "soft-reset", "--no-stub"])
        .args(["write-flash", "0x0"])
        .arg(&old)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status = wait_status(&sim, "uart_tx=115200");
    assert!(
        status.contains("boot_mode=1,6") && status.contains("soft_started=yes"),
        "{status}"
    );

    let fw = sim.firmware_port();
    let generation = enter_update(&sim, &fw);
    let mut port = Port::open(&sim, 74_880);
    // Core 2.3.0 has no bootstrap check: the upload succeeds.
    http_upload(&fw, generation, &build("2.0.0", "2.3.0"));
    let end = port.read_until("wdt reset\r\n");
    let text = &port.capture[..end];
    let first = text
        .windows(4)
        .position(|w| w == b" ets")
        .expect("a ROM banner");
    assert_eq!(
        capture_lines(&text[first..]),
        [seed_lines("basic-attempt2.log"), vec![String::new()]].concat(),
        "{:?}",
        String::from_utf8_lossy(text)
    );
    assert_eq!(
        triage::triage_bytes(&port.capture).class,
        Class::RestartAfterSerialFlash
    );
    assert!(control(&sim, "status").contains("state=rom-download"));
    // The staged command dies with the power: the old firmware runs.
    assert_eq!(control(&sim, "power off"), "ok");
    serialport::SerialPort::clear(&port.port, serialport::ClearBuffer::Input).unwrap();
    port.cursor = port.capture.len();
    assert_eq!(control(&sim, "power on"), "ok");
    port.read_until("~ld\r\n");
    serialport::SerialPort::set_baud_rate(&mut port.port, 115_200).unwrap();
    port.read_until("HILFW app=sonoff-ota version=1.0.0 ota=webserver state=RUN\r\n");
}

#[test]
fn seed_4ch_attempt_2_the_second_upload_copies_and_loads() {
    let mut config = SimConfig::new(board::find("sonoff-4ch").unwrap());
    let work = tempfile::tempdir().unwrap();
    let flash = work.path().join("flash.bin");
    let mut bytes = vec![0xFF; 1 << 20];
    let old = build("1.0.0", "2.3.0");
    bytes[..old.len()].copy_from_slice(&old);
    std::fs::write(&flash, bytes).unwrap();
    config.flash = Some(flash);
    // Device time at half speed: the app starts 100 device ms (200 ms) after `ld`, time for
    // the reader to switch to 115200.
    config.time_scale = Some(2.0);
    let sim = SimHandle::start(config).unwrap();
    let fw = sim.firmware_port();
    let generation = enter_update(&sim, &fw);
    let new = build("2.0.0", "2.3.0");
    let mut port = Port::open(&sim, 74_880);
    http_upload(&fw, generation, &new);
    let start = port.read_until("rst cause:1") - " ets Jan  8 2013,rst cause:1".len();
    let ld = port.read_until("@cp:0\r\nld\r\n");
    let lines = capture_lines(&port.capture[start..ld]);
    let seed = seed_lines("4ch-attempt2.log");
    // Up to `ld`; the seed's last line `) ` is the app's first bytes at 115200 read at 74880,
    // which a capture tool that switches rates reads as the app's text instead.
    assert_eq!(lines.len(), 10, "{lines:?}");
    for (i, (got, want)) in lines.iter().zip(&seed).take(9).enumerate() {
        if i == 6 {
            // The installed app's version word: ours stands in for the old core's git hash.
            assert!(got.starts_with('v') && got.len() == 9, "{got:?}");
        } else {
            assert_eq!(got, want, "line {i}");
        }
    }
    serialport::SerialPort::set_baud_rate(&mut port.port, 115_200).unwrap();
    port.read_until("\r\nHILFW app=sonoff-ota version=2.0.0 ota=webserver state=RUN\r\n");
    assert_eq!(
        triage::triage_bytes(&port.capture[start..]).class,
        Class::HealthyBoot
    );
}

#[test]
fn a_copy_cut_by_power_loss_leaves_a_crashing_half_copied_app() {
    for manual in [false, true] {
        let mut config = SimConfig::new(board::find("sonoff-basic").unwrap());
        let work = tempfile::tempdir().unwrap();
        let flash = work.path().join("flash.bin");
        // 32 sectors: after the status shows sector 3, the copy has 29 more to go (1.6 s at
        // real speed), time enough for the `power off` to land inside it.
        let size = 128 * 1024;
        let mut bytes = vec![0xFF; 1 << 20];
        let old = build_sized("1.0.0", "3.1.2", size);
        bytes[..old.len()].copy_from_slice(&old);
        std::fs::write(&flash, bytes).unwrap();
        config.flash = Some(flash);
        // By hand, the test needs time to see the copy run: device time at real speed.
        config.time_scale = Some(if manual { 1.0 } else { 0.05 });
        let sim = SimHandle::start(config).unwrap();
        let fw = sim.firmware_port();
        let generation = enter_update(&sim, &fw);
        if !manual {
            assert_eq!(control(&sim, "fault power-cut-during-copy 3"), "ok");
        }
        let mut port = Port::open(&sim, 74_880);
        http_upload(&fw, generation, &build_sized("2.0.0", "3.1.2", size));
        port.read_until("@cp:");
        if manual {
            let status = wait_status(&sim, "sector=3/32");
            assert!(status.contains("state=eboot-copy"), "{status}");
            assert_eq!(control(&sim, "power off"), "ok");
        } else {
            wait_status(&sim, "power=off");
        }
        assert_eq!(control(&sim, "power on"), "ok");
        port.read_until("rst cause:1, boot mode:(3,6)");
        port.read_until("~ld\r\n");
        port.read_until("rst cause:2, boot mode:(3,6)");
        let report = triage::triage_bytes(&port.capture);
        assert_eq!(report.class, Class::OtaCopyIncomplete, "{report:?}");
        let status = control(&sim, "status");
        assert!(status.contains("rtc_cmd=no"), "{status}");
    }
}

#[test]
fn port_unplug_hangs_up_the_client_and_plug_brings_a_new_pty_behind_the_same_name() {
    let work = tempfile::tempdir().unwrap();
    let tx_log = work.path().join("tx.bin");
    let mut config = SimConfig::new(board::find("sonoff-basic").unwrap());
    config.tx_log = Some(tx_log.clone());
    config.power_at_start = false;
    let sim = SimHandle::start(config).unwrap();
    let link = sim.endpoints().port.clone();
    assert_eq!(std::fs::read_link(&link).unwrap(), sim.endpoints().pty);
    let open = || {
        serialport::new(link.to_string_lossy(), 74_880)
            .timeout(Duration::from_millis(50))
            .open_native()
            .unwrap()
    };
    let mut port = open();
    assert_eq!(control(&sim, "power on"), "ok");
    let mut seen = Vec::new();
    let read_until = |port: &mut serialport::TTYPort, seen: &mut Vec<u8>, needle: &[u8]| {
        let deadline = Instant::now() + WAIT;
        while !seen.windows(needle.len()).any(|w| w == needle) {
            assert!(
                Instant::now() < deadline,
                "{:?}",
                String::from_utf8_lossy(seen)
            );
            let mut buf = [0u8; 256];
            match port.read(&mut buf) {
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("{e}"),
            }
        }
    };
    read_until(&mut port, &mut seen, b"ets_main.c \r\n");

    assert_eq!(control(&sim, "port unplug"), "ok");
    assert!(!link.exists(), "the stable name is gone");
    assert!(control(&sim, "status").ends_with(" port=unplugged"));
    // The client's port hangs up (EOF or an error), as a pulled USB adapter does.
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no hangup");
        let mut buf = [0u8; 64];
        match port.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => panic!("data after the unplug: {:?}", &buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    // Output while unplugged reaches no port and is not in the TX log.
    let logged = std::fs::read(&tx_log).unwrap().len();
    assert_eq!(control(&sim, "power cycle"), "ok");
    assert_eq!(std::fs::read(&tx_log).unwrap().len(), logged);

    assert_eq!(control(&sim, "port plug"), "ok");
    let new_pty = std::fs::read_link(&link).unwrap();
    assert!(new_pty.starts_with("/dev/pts/"), "{new_pty:?}");
    let mut port = open();
    let mut again = Vec::new();
    assert_eq!(control(&sim, "power cycle"), "ok");
    read_until(&mut port, &mut again, b"ets_main.c \r\n");
    let log = std::fs::read(&tx_log).unwrap();
    assert_eq!(log[..logged], seen[..], "before the unplug");
    assert_eq!(log[logged..], again[..], "after the plug");
}
