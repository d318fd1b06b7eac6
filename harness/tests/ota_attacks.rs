//! The OTA access rules, attacked, on the virtual board, for both OTA methods: each attack
//! scenario of `scenarios/` runs end to end (`harness scenario run`) and must pass, its capture
//! must hold every byte the simulator sent, and the flash must show that nothing got through.
//! Where a scenario cannot express an attack (an invitation from a second host before the
//! legitimate one has authenticated), a raw peer does it here.
//!
//! The rules (firmware/behaviour.toml, the field report's security concept): uploads only in the
//! UPDATE state entered by a long press, only with the build's password, one at a time, only
//! images the device's Updater accepts, and UPDATE ends by itself after its timeout.

#[path = "support/runs.rs"]
mod runs;

use runs::{Bench, fixture, flashed, repo_root};

const FLASH_SIZE: usize = 1 << 20;
/// The password of the `-pw` fixtures, and a wrong one.
const ENV: [(&str, &str); 2] = [
    ("HIL_OTA_PASSWORD", "hil-test"),
    ("HIL_OTA_WRONG_PASSWORD", "not-the-password"),
];

fn scenario(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("scenarios").join(name)).unwrap()
}

fn image(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// Runs the scenario text for one method on a fresh board; it must pass, completely and
/// losslessly. Returns the board (its flash) and the run.
fn attack(kind: &'static str, text: &str, method: &str) -> (Bench, runs::Run) {
    let mut bench = Bench::new(kind);
    let run = bench.run_param(text, &format!("method={method}"), &ENV);
    assert_eq!(run.out.status.code(), Some(0), "{method}: {}", run.said());
    run.assert_complete_and_lossless();
    (bench, run)
}

/// In RUN the service is stopped: espota gets no reply, HTTP is refused; the flash is the
/// serial-flashed image and erased flash, byte for byte.
#[test]
fn uploads_in_run_state_are_refused_and_change_nothing() {
    let text = scenario("ota-refused-in-run-state.toml");
    for (kind, method) in [("sonoff-basic", "arduino"), ("sonoff-4ch", "webserver")] {
        let (bench, run) = attack(kind, &text, method);
        let old = image(&format!("sonoff-ota-1.0.0-{method}.bin"));
        assert!(
            bench.flash_bytes() == flashed(&old, FLASH_SIZE),
            "{method}: flash changed"
        );
        let seen = run.step("4")["observed"].as_str().unwrap().to_string();
        let want = match method {
            "arduino" => "refused (not-in-update-state): no answer from ",
            _ => "refused (not-in-update-state): connection to ",
        };
        assert!(seen.starts_with(want), "{seen}");
    }
}

/// A wrong and a missing password are refused (espota `Authentication Failed`, HTTP 401) and
/// nothing is written; the scenario's last part (the right password, which works) is checked by
/// running the whole file once per method too.
#[test]
fn wrong_and_missing_passwords_are_refused_and_change_nothing() {
    let text = scenario("ota-password-refused.toml");
    let (refusals, _) = text
        .split_once("[[step]]\nenter_update = {}\n\n[[step]]\nlabel = \"right\"")
        .expect("the scenario ends with the upload with the right password");
    for (kind, method) in [("sonoff-4ch", "arduino"), ("sonoff-basic", "webserver")] {
        let (bench, run) = attack(kind, refusals, method);
        let old = image(&format!("sonoff-ota-1.0.0-{method}-pw.bin"));
        assert!(
            bench.flash_bytes() == flashed(&old, FLASH_SIZE),
            "{method}: flash changed"
        );
        // Wrong: espota's `Authentication Failed`, HTTP 401 to the credentials sent. Missing:
        // the AUTH challenge (espota) or the 401 (HTTP) with nothing to answer it with.
        for (id, says) in [
            ("5", format!("refused the password ({method})")),
            (
                "6",
                format!("asks for a password ({method}) and none was given"),
            ),
        ] {
            let seen = run.step(id)["observed"].as_str().unwrap().to_string();
            assert!(
                seen.starts_with("refused (auth): 127.0.0.") && seen.ends_with(&says),
                "{method}: {seen}"
            );
        }
        let (_board, full) = attack(kind, &text, method);
        assert_eq!(full.step("14")["status"], "pass");
    }
}

/// A second upload during an upload is refused or kept waiting; what the board boots, and what
/// its flash holds at 0x0, is exactly the first image.
#[test]
fn a_second_uploader_never_mixes_in() {
    let text = scenario("ota-second-uploader.toml");
    for (kind, method) in [("sonoff-basic", "arduino"), ("sonoff-4ch", "webserver")] {
        let (bench, run) = attack(kind, &text, method);
        let new = image(&format!("sonoff-ota-2.0.0-{method}.bin"));
        let flash = bench.flash_bytes();
        assert!(
            flash[..new.len()] == new[..],
            "{method}: not exactly the first image"
        );
        let seen = run.step("5")["observed"].as_str().unwrap().to_string();
        assert!(
            seen.starts_with("first: accepted: ") && seen.contains("; second (started when "),
            "{seen}"
        );
        // The second started while the first was under way, not after it.
        let (sent, total) = started_at(&seen);
        assert!(sent < total, "{seen}");
    }
}

/// `second (started when SENT of TOTAL bytes were sent)`.
fn started_at(seen: &str) -> (u64, u64) {
    let rest = seen.split_once("started when ").unwrap().1;
    let mut words = rest.split_whitespace();
    let sent = words.next().unwrap().parse().unwrap();
    words.next();
    let total = words.next().unwrap().parse().unwrap();
    (sent, total)
}

/// A second host without the password, during an authorised upload, gets nothing; the board
/// boots the authorised image.
#[test]
fn a_second_host_without_the_password_gets_nothing() {
    let text = scenario("ota-second-host.toml");
    for (kind, method) in [("sonoff-4ch", "arduino"), ("sonoff-basic", "webserver")] {
        let (bench, run) = attack(kind, &text, method);
        let new = image(&format!("sonoff-ota-2.0.0-{method}-pw.bin"));
        assert!(bench.flash_bytes()[..new.len()] == new[..], "{method}");
        let seen = run.step("5")["observed"].as_str().unwrap().to_string();
        assert!(
            seen.contains("second from 127.1.2.3 (started when "),
            "{seen}"
        );
        assert!(
            !seen.contains("second from 127.1.2.3 (started when 0"),
            "{seen}"
        );
    }
}

/// An image built for 4 MB is refused by the device's Updater at the end of the upload
/// (`ERROR[9]`); eboot never runs, the app region keeps the old image. (The Updater has written
/// the refused bytes to the staging area below the filesystem, as on a real board; nothing
/// copies them.)
#[test]
fn an_image_for_another_flash_size_is_refused_by_the_updater() {
    let text = scenario("ota-wrong-image-refused.toml");
    for (kind, method) in [("sonoff-4ch", "arduino"), ("sonoff-basic", "webserver")] {
        let (bench, run) = attack(kind, &text, method);
        let old = image(&format!("sonoff-ota-1.0.0-{method}.bin"));
        assert!(bench.flash_bytes()[..old.len()] == old[..], "{method}");
        let seen = run.step("6")["observed"].as_str().unwrap().to_string();
        assert!(
            seen.starts_with("refused (updater-error ERROR[9]): ")
                && seen.contains("new Flash config wrong, real size: 1048576"),
            "{seen}"
        );
        let capture = runs::text(&std::fs::read(run.capture()).unwrap());
        assert!(
            !capture.contains("@cp:"),
            "eboot copied something: {capture:?}"
        );
        let lint = run.step("1")["observed"].as_str().unwrap().to_string();
        assert!(
            lint.starts_with("refused: not a firmware image: segment 0"),
            "{lint}"
        );
    }
}

/// What stops a truncated image is the harness lint, not the device: forced past the lint, the
/// Updater accepts it (it checks the magic byte and the header's flash size only), eboot copies
/// it, and the app does not run (eboot cannot load it, or it crashes); a serial reflash
/// recovers the board. This is the device's real
/// behaviour (esp8266/Arduino Updater.cpp `_verifyEnd`), shown so that nobody relies on the
/// device to refuse a broken download.
#[test]
fn a_truncated_image_forced_past_the_lint_is_accepted_by_the_device() {
    for (kind, method) in [("sonoff-basic", "arduino"), ("sonoff-4ch", "webserver")] {
        let text = format!(
            r#"# A truncated image forced past the lint.
name = "truncated-forced"
description = "A truncated image forced past the lint."
boards = ["{kind}"]
requires = ["power", "gpio0", "serial", "ota-{method}"]

[[step]]
flash = {{ image = "fixtures/images/sonoff-ota-1.0.0-{method}.bin" }}

[[step]]
wait_boot = {{}}

[[step]]
enter_update = {{}}

[[step]]
label = "ota"
ota = {{ method = "{method}", image = "fixtures/images/sonoff-ota-2.0.0-{method}-truncated.bin", force = true }}

[[step]]
expect_line = {{ contains = "@cp:0", timeout = "10s" }}

[[step]]
wait = "2s"

[[step]]
power = "off"

[[step]]
label = "reflash"
flash = {{ image = "fixtures/images/sonoff-ota-1.0.0-{method}.bin" }}

[[step]]
wait_boot = {{}}

[[step]]
expect_identity = {{ version = "1.0.0", state = "RUN" }}
"#
        );
        let mut bench = Bench::new(kind);
        let run = bench.run(&text, &[], &ENV);
        assert_eq!(run.out.status.code(), Some(0), "{method}: {}", run.said());
        run.assert_complete_and_lossless();
        let capture = runs::text(&std::fs::read(run.capture()).unwrap());
        // eboot copied it (`@cp:0`); then either eboot cannot load the cut segments (`e:N`) or
        // the app they make up crashes; 2.0.0 never runs.
        let (_, after) = capture.split_once("@cp:0\r\nld\r\n").unwrap();
        assert!(
            after.starts_with("e:") || after.contains("Exception ("),
            "{method}: {after:?}"
        );
        assert!(!capture.contains("version=2.0.0"), "{method}");
    }
}

/// UPDATE ends by itself after the firmware's timeout; uploads are refused afterwards and the
/// flash is the serial-flashed image, byte for byte.
#[test]
fn uploads_after_the_update_timeout_are_refused() {
    let text = scenario("update-state-timeout.toml");
    for (kind, method) in [("sonoff-4ch", "arduino"), ("sonoff-basic", "webserver")] {
        let (bench, run) = attack(kind, &text, method);
        let old = image(&format!("sonoff-ota-1.0.0-{method}.bin"));
        assert!(
            bench.flash_bytes() == flashed(&old, FLASH_SIZE),
            "{method}: flash changed"
        );
        assert!(
            run.step("7")["observed"]
                .as_str()
                .unwrap()
                .starts_with("refused (not-in-update-state): "),
            "{}",
            run.step("7")
        );
    }
}

/// Polls the simulator's status until `word` is in it (the board's state, not a sleep).
fn wait_status(sim: &runs::SimProcess, key: &str, value: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while sim.status().get(key).map(String::as_str) != Some(value) {
        assert!(
            std::time::Instant::now() < deadline,
            "{key}={value} never came: {:?}",
            sim.status()
        );
        std::thread::yield_now();
    }
}

/// ArduinoOTA with a password, attacked from a second host before the legitimate one has
/// authenticated: the attacker (127.1.2.4) invites first and gets an `AUTH` challenge it cannot
/// answer; the harness then uploads with the password. The device's listener drops the pending
/// challenge when the harness's invitation arrives (ArduinoOTA reads any datagram in WAITAUTH as
/// the authentication), the harness's next invitation is challenged and passes, and the device
/// connects back only to the harness: the attacker's listener never gets a connection, and the
/// attacker's late answer to its challenge gets no `OK`. The capture of the whole exchange holds
/// every byte the board sent.
#[test]
fn an_invitation_from_a_second_host_before_authentication_gets_no_connection() {
    use std::net::{TcpListener, UdpSocket};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let tx_log = dir.path().join("tx.bin");
    let old = fixture("sonoff-ota-1.0.0-arduino-pw.bin");
    let sim = runs::SimProcess::start(
        "sonoff-4ch",
        &[
            "--image",
            old.to_str().unwrap(),
            "--tx-log",
            tx_log.to_str().unwrap(),
        ],
    );
    let capture_file = dir.path().join("capture.log");
    let mut config = harness::capture::CaptureConfig::new(&sim.endpoints["port"]);
    config.file = Some(capture_file.clone());
    let capture = harness::capture::Capture::start(config).unwrap();
    capture
        .note(harness::capture::IndexEvent::Power { on: true })
        .unwrap();
    sim.command("power on");
    wait_status(&sim, "fw_state", "RUN");
    sim.command("button down");
    wait_status(&sim, "fw_state", "UPDATE");
    sim.command("button up");
    let device: std::net::SocketAddr = sim.endpoints["ota"].parse().unwrap();
    let board_ip = device.ip();
    let new = image("sonoff-ota-2.0.0-arduino-pw.bin");

    // The attacker's invitation, with its own back-connect port.
    let attacker_ip: std::net::IpAddr = "127.1.2.4".parse().unwrap();
    let listener = TcpListener::bind((attacker_ip, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let udp = UdpSocket::bind((attacker_ip, 0)).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let md5 = harness::ota::proto::md5_hex(&new);
    let invitation = format!(
        "0 {} {} {md5}\n",
        listener.local_addr().unwrap().port(),
        new.len()
    );
    udp.send_to(invitation.as_bytes(), device).unwrap();
    let mut buf = [0u8; 128];
    let (n, _) = udp
        .recv_from(&mut buf)
        .expect("the device challenges the attacker");
    let challenge = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(challenge.starts_with("AUTH "), "{challenge}");

    // The legitimate upload, with the password.
    let mut cfg = harness::ota::espota::EspotaConfig::new(device);
    cfg.password = Some(harness::ota::Password::new("hil-test"));
    let mut events = Vec::new();
    let delivered = harness::ota::espota::upload(
        &cfg,
        harness::ota::Payload {
            bytes: &new,
            name: "fw.bin",
        },
        &mut |e| events.push(format!("{e:?}")),
        &harness::ota::Cancel::new(),
    )
    .unwrap_or_else(|e| panic!("{e}: {events:#?}"));
    assert_eq!(delivered.device.ip(), board_ip);
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Connected") && e.contains(&board_ip.to_string())),
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|e| e.starts_with("StrangerRefused")),
        "{events:#?}"
    );
    assert!(
        events.iter().filter(|e| e.starts_with("Invited")).count() >= 2,
        "the harness's first invitation went to the attacker's pending challenge: {events:#?}"
    );

    // The attacker answers its challenge late (it cannot know the password): nothing comes.
    let nonce = challenge.trim_start_matches("AUTH ").trim();
    let cnonce = harness::ota::proto::md5_hex(b"attacker");
    let response = harness::ota::proto::md5_hex(format!("guess:{nonce}:{cnonce}").as_bytes());
    udp.send_to(format!("200 {cnonce} {response}\n").as_bytes(), device)
        .unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    if let Ok((n, _)) = udp.recv_from(&mut buf) {
        let said = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(!said.starts_with("OK"), "the attacker was let in: {said}");
    }
    // The board restarts into the harness's image; the attacker never got a connection.
    wait_status(&sim, "version", "2.0.0");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the device connected back to the attacker"
    );

    sim.command("power off");
    let summary = capture.stop().unwrap();
    let captured = std::fs::read(&capture_file).unwrap();
    assert_eq!(summary.bytes, captured.len() as u64);
    runs::assert_same_bytes(&captured, &std::fs::read(&tx_log).unwrap());
    assert!(runs::text(&captured).contains("HILFW app=sonoff-ota version=2.0.0"));
}
