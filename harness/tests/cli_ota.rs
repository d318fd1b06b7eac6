//! `harness ota` end to end: the built binary against device peers on 127.0.0.1
//! (tests/ota_peers), checking exit codes, the lint gate and what is printed.

mod ota_peers;

use std::net::UdpSocket;
use std::process::{Command, Output};

use ota_peers::{Device, closed_port, espota_device, fixture, fixture_path, http_device};

fn harness(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env_remove("HARNESS_OTA_PASSWORD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the harness binary runs")
}

/// Output with runs of white space made one space: miette and clap wrap long lines (miette
/// marks its continuation lines with `│`).
fn flat(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn stdout(o: &Output) -> String {
    flat(&o.stdout)
}

fn stderr(o: &Output) -> String {
    flat(&o.stderr)
}

fn image(name: &str) -> String {
    fixture_path(name).display().to_string()
}

#[test]
fn webserver_upload_succeeds_with_exit_0() {
    let file = "sonoff-ota-2.0.0-webserver.bin";
    let peer = http_device(Device {
        installed: fixture("sonoff-ota-1.0.0-webserver.bin"),
        ..Device::default()
    });
    let port = peer.addr.port().to_string();
    let out = harness(
        &[
            "ota",
            &image(file),
            "--method",
            "webserver",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--kind",
            "sonoff-4ch",
        ],
        &[],
    );
    let (so, se) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{so}\n{se}");
    assert!(
        so.contains(&format!("updated 127.0.0.1:{port} (webserver)")),
        "{so}"
    );
    assert!(so.contains("`Update Success! Rebooting...`"), "{so}");
    // Not a terminal: plain progress lines.
    assert!(se.contains("sent 100%"), "{se}");
    peer.join().assert_staged(&fixture(file));
}

#[test]
fn arduino_upload_with_password_from_the_environment() {
    let file = "sonoff-ota-2.0.0-arduino.bin";
    let peer = espota_device(Device {
        password: Some("pw-from-env".into()),
        ..Device::default()
    });
    let port = peer.addr.port().to_string();
    let args = [
        "ota",
        &image(file),
        "--method",
        "arduino",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--kind",
        "sonoff-basic",
        "--password-env",
        "MY_OTA_PW",
    ];
    let out = harness(&args, &[("MY_OTA_PW", "pw-from-env")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("the device asks for the password"));
    peer.join().assert_staged(&fixture(file));

    // The named variable is missing: a harness error, nothing is sent.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let mut args = args;
    args[7] = &port;
    let out = harness(&args, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--password-env MY_OTA_PW: the variable is not set"),
        "{}",
        stderr(&out)
    );
    assert_nothing_arrived(&silent);
}

fn assert_nothing_arrived(socket: &UdpSocket) {
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let got = socket.recv(&mut buf);
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a datagram arrived: {got:?}"
    );
}

#[test]
fn a_4mb_qio_image_is_refused_for_the_4ch_unless_forced() {
    let file = image("sonoff-ota-1.0.0-4mb-qio.bin");
    // Refused: exit 1, the lints on stderr, no invitation sent.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let out = harness(
        &[
            "ota",
            &file,
            "--method",
            "arduino",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--kind",
            "sonoff-4ch",
        ],
        &[],
    );
    let se = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(se.contains("error flash-size-too-big"), "{se}");
    assert!(se.contains("error flash-mode-unsupported"), "{se}");
    assert!(
        se.contains("refusing to upload") && se.contains("--force uploads anyway"),
        "{se}"
    );
    assert_nothing_arrived(&silent);

    // Forced: the device's Updater refuses it at the end with ERROR[9], exit 1 with the remedy.
    let peer = espota_device(Device::default());
    let port = peer.addr.port().to_string();
    let out = harness(
        &[
            "ota",
            &file,
            "--method",
            "arduino",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--kind",
            "sonoff-4ch",
            "--force",
        ],
        &[],
    );
    let se = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(se.contains("uploading anyway (--force)"), "{se}");
    assert!(
        se.contains("ERROR[9]: new Flash config wrong, real size: 1048576"),
        "{se}"
    );
    assert!(se.contains("build for 1 MB flash"), "{se}");
    let outcome = peer.join();
    assert_eq!(outcome.error.map(|e| e.code()), Some(9));
    assert_eq!(outcome.eboot, None);
}

#[test]
fn the_same_image_passes_the_lints_of_no_kind() {
    // Without --kind only board-independent checks run; the 4 MB image is well formed.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let out = harness(
        &[
            "ota",
            &image("sonoff-ota-1.0.0-4mb-qio.bin"),
            "--method",
            "arduino",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--timeout",
            "0.3",
        ],
        &[],
    );
    let se = stderr(&out);
    assert!(se.contains("no --kind"), "{se}");
    // It went out, and the silent device makes it a DUT failure.
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(se.contains("\"No Answer\""), "{se}");
    assert!(se.contains("hold the button (GPIO0) for 3 s"), "{se}");
}

#[test]
fn refused_http_connection_is_a_dut_failure() {
    let port = closed_port().port().to_string();
    let out = harness(
        &[
            "ota",
            &image("sonoff-ota-2.0.0-webserver.bin"),
            "--method",
            "webserver",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--kind",
            "sonoff-basic",
        ],
        &[],
    );
    let se = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(se.contains("connection to 127.0.0.1:"), "{se}");
    assert!(se.contains("UPDATE state"), "{se}");
}

#[test]
fn a_forced_non_image_meets_error_10() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.bin");
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    let path = path.display().to_string();

    let out = harness(
        &[
            "ota",
            &path,
            "--method",
            "webserver",
            "--host",
            "127.0.0.1",
            "--port",
            "9",
        ],
        &[],
    );
    let se = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{se}");
    assert!(se.contains("not a usable ESP8266 firmware image"), "{se}");

    let peer = http_device(Device {
        installed: fixture("sonoff-ota-1.0.0-webserver.bin"),
        ..Device::default()
    });
    let port = peer.addr.port().to_string();
    let out = harness(
        &[
            "ota",
            &path,
            "--method",
            "webserver",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--force",
        ],
        &[],
    );
    let se = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(se.contains("ERROR[10]: Magic byte is not 0xE9"), "{se}");
    assert!(se.contains("not the .elf"), "{se}");
    assert_eq!(peer.join().status, Some(200));
}

#[test]
fn harness_errors_exit_2() {
    let missing = harness(
        &[
            "ota",
            "/nonexistent/fw.bin",
            "--method",
            "arduino",
            "--host",
            "127.0.0.1",
        ],
        &[],
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("cannot read /nonexistent/fw.bin"));

    let fw = image("sonoff-ota-2.0.0-arduino.bin");
    let no_target = harness(&["ota", &fw, "--method", "arduino"], &[]);
    assert_eq!(no_target.status.code(), Some(2));
    assert!(
        stderr(&no_target).contains("--host"),
        "{}",
        stderr(&no_target)
    );

    let board = harness(
        &["ota", &fw, "--method", "arduino", "--board", "sonoff-4ch"],
        &[],
    );
    assert_eq!(board.status.code(), Some(2));
    assert!(
        stderr(&board).contains("needs the rig module"),
        "{}",
        stderr(&board)
    );

    let kind = harness(
        &[
            "ota",
            &fw,
            "--method",
            "arduino",
            "--host",
            "127.0.0.1",
            "--kind",
            "sonoff-pow",
        ],
        &[],
    );
    assert_eq!(kind.status.code(), Some(2));
    assert!(stderr(&kind).contains("unknown board `sonoff-pow`"));

    let method = harness(
        &["ota", &fw, "--method", "serial", "--host", "127.0.0.1"],
        &[],
    );
    assert_eq!(method.status.code(), Some(2));
    assert!(stderr(&method).contains("unknown OTA method `serial`"));

    let local = harness(
        &[
            "ota",
            &fw,
            "--method",
            "webserver",
            "--host",
            "127.0.0.1",
            "--local-port",
            "4000",
        ],
        &[],
    );
    assert_eq!(local.status.code(), Some(2));
    assert!(stderr(&local).contains("are for --method arduino"));

    let timeout = harness(
        &[
            "ota",
            &fw,
            "--method",
            "arduino",
            "--host",
            "127.0.0.1",
            "--timeout",
            "0",
        ],
        &[],
    );
    assert_eq!(timeout.status.code(), Some(2));
}

#[test]
fn help_explains_the_update_state_and_shows_examples() {
    let out = harness(&["ota", "--help"], &[]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("press and hold the button (GPIO0) for 3 s, until the LED blinks"),
        "{text}"
    );
    assert!(text.contains("UPDATE state"), "{text}");
    assert!(text.contains("Examples:"), "{text}");
    assert!(text.contains("--password-env"), "{text}");
}
