//! The fault matrix on the virtual board: what the harness reports when a board loses power at
//! a bad moment, stays silent, drops its network connection or loses its serial port, and when
//! the run folder cannot be written.
//!
//! Every row runs `harness scenario run` (or `harness monitor`) end to end against a simulator
//! the harness starts, with the fault armed through the rig file (`[board.sim] faults`, the
//! simulator's control lines; see `harness::sim::control`) or sent by the test at a moment it
//! waits for. Each row ends in a classified report and checks that the capture holds every byte
//! the simulator sent (its `--tx-log`), byte for byte.
//!
//! No sleeps for synchronisation: the tests wait for process exits, index records and status
//! answers.

#[path = "support/runs.rs"]
mod runs;

use runs::{Bench, repo_root};

fn scenario_file(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("scenarios").join(name)).unwrap()
}

/// eboot's copy cut at several points (before the first sector, after an erase, in the
/// middle, one sector before the end): the board shows `@cp:` with no result and then crashes
/// (or stops in the ROM), triage says ota-copy-incomplete with "reflash over serial", and the
/// scenario's serial reflash brings 1.0.0 back.
#[test]
fn power_cut_during_the_eboot_copy_at_several_sectors() {
    let scenario = scenario_file("ota-copy-interrupted.toml");
    // What the board does at the power-on after the cut, as a real one would show it.
    let old_boots = "\r\n~ld\r\n\r\nHILFW app=sonoff-ota version=1.0.0";
    let crash_loop = "Exception (3):";
    let rom_stops = "ets_main.c";
    let no_load = "~ld\r\ne:";
    // The same-sized 64 KiB 2.0.0: its segment headers fit the old layout, so a half copy
    // loads and crashes.
    let same_size = scenario.replace(
        "sonoff-ota-2.0.0-webserver-128k.bin",
        "sonoff-ota-2.0.0-webserver.bin",
    );
    for (kind, cut, after, scenario) in [
        // Nothing erased yet: the old app is intact and boots.
        (
            "sonoff-basic",
            "power-cut-during-copy 0",
            old_boots,
            &scenario,
        ),
        // eboot's own sector erased: the ROM finds no boot loader.
        (
            "sonoff-4ch",
            "power-cut-during-copy 0 erased",
            rom_stops,
            &scenario,
        ),
        // The 128 KiB image's first sectors over the 64 KiB one: eboot cannot load the app (a
        // segment header or segment runs into old code: `e:2`/`e:3`) and resets the core; the
        // ROM then stops.
        (
            "sonoff-basic",
            "power-cut-during-copy 7",
            no_load,
            &scenario,
        ),
        // All but the last of its 64 sectors: the same.
        ("sonoff-4ch", "power-cut-during-copy 63", no_load, &scenario),
        // Half of the same-sized image: the app loads, its checksum is wrong, it crashes at
        // every boot.
        (
            "sonoff-basic",
            "power-cut-during-copy 8",
            crash_loop,
            &same_size,
        ),
    ] {
        let mut bench = Bench::new(kind);
        let run = bench.run(scenario, &[cut], &[]);
        assert_eq!(run.out.status.code(), Some(0), "{cut}: {}", run.said());
        run.assert_complete_and_lossless();
        let capture = runs::text(&std::fs::read(run.capture()).unwrap());
        // eboot's `@cp:` with no result, then the next power-on's banner.
        let (_, rest) = capture
            .split_once("@cp:\r\n ets Jan  8 2013,rst cause:1, boot mode:(3,")
            .unwrap_or_else(|| panic!("{cut}: no unfinished copy: {capture:?}"));
        let next_banner = rest.find("rst cause:").unwrap_or(rest.len());
        assert!(
            rest[..next_banner].contains(after),
            "{cut}: expected {after:?} after the cut: {rest:?}"
        );
        let triage = run.step("10");
        assert!(
            triage["observed"]
                .as_str()
                .unwrap()
                .starts_with("ota-copy-incomplete"),
            "{cut}: {triage:#}"
        );
        let md = std::fs::read_to_string(run.folder.join("report.md")).unwrap();
        assert!(md.contains("eflash over serial"), "{md}");
    }
}

const FLASH_OLD: &str = r#"# Serial flash of 1.0.0.
name = "serial-flash"
description = "Serial flash of the 1.0.0 web-server build, then its boot."
boards = ["sonoff-basic", "sonoff-4ch"]
requires = ["power", "gpio0", "serial"]

[[step]]
flash = { image = "fixtures/images/sonoff-ota-1.0.0-webserver.bin" }

[[step]]
wait_boot = {}

[[step]]
expect_identity = { version = "1.0.0", state = "RUN" }
"#;

/// What the board shows on its own after whatever the last run left in its flash.
const POWER_ON: &str = r#"# Power on and watch.
name = "power-on"
description = "Power on and let the board show what its flash holds."
boards = ["sonoff-basic", "sonoff-4ch"]
requires = ["power", "serial"]

[[step]]
power = "cycle"

[[step]]
wait = "3s"
"#;

/// A power cut during the serial flash after `blocks` blocks of 1 KiB (the last of them written
/// but not acknowledged, so the flasher counts `bytes_written`): the flasher reports that the
/// board stopped answering and how far it got (a board failure, exit 1); at the next
/// power-on the board shows what the half-written flash holds and triage classifies it; a
/// second serial flash recovers it.
fn serial_flash_cut(kind: &'static str, blocks: u32, bytes_written: u64, shows: &str, class: &str) {
    let mut bench = Bench::new(kind);
    let cut = format!("power-cut-during-flash {blocks}");
    let run = bench.run(FLASH_OLD, &[&cut], &[]);
    assert_eq!(run.out.status.code(), Some(1), "{cut}: {}", run.said());
    run.assert_complete_and_lossless();
    let step = run.step("1");
    assert_eq!(step["status"], "fail", "{step:#}");
    let seen = step["observed"].as_str().unwrap();
    let (command, progress) = if blocks == 0 {
        (
            "FLASH_BEGIN",
            "(stopped before any byte was written)".to_string(),
        )
    } else {
        (
            "FLASH_DATA",
            format!("(stopped after {bytes_written} of 65536 bytes written)"),
        )
    };
    assert!(
        seen.starts_with(&format!("no reply to {command} within 3.0s"))
            && seen.contains(&progress)
            && seen.contains("the board stopped answering: check the 3.3 V supply"),
        "{cut}: {seen}"
    );

    let after = bench.run(POWER_ON, &[], &[]);
    assert_eq!(after.out.status.code(), Some(0), "{}", after.said());
    after.assert_complete_and_lossless();
    let capture = runs::text(&std::fs::read(after.capture()).unwrap());
    assert!(capture.contains(shows), "after {cut}: {capture:?}");
    assert_eq!(after.triage_class(), class, "after {cut}: {capture:?}");

    let again = bench.run(FLASH_OLD, &[], &[]);
    assert_eq!(again.out.status.code(), Some(0), "{}", again.said());
    again.assert_complete_and_lossless();
}

/// Cut right after FLASH_BEGIN erased the image's sectors: nothing to boot.
#[test]
fn power_cut_during_the_serial_flash_after_the_erase() {
    serial_flash_cut("sonoff-basic", 0, 0, "ets_main.c", "checksum-error");
}

/// Cut after the first block: eboot is half there, the ROM's checksum fails.
#[test]
fn power_cut_during_the_serial_flash_in_the_boot_loader() {
    serial_flash_cut("sonoff-4ch", 1, 0, "csum", "checksum-error");
}

/// Cut in the middle of the app: eboot cannot load its segments (`e:3`) and resets into the ROM,
/// which stops (read at the app rate the capture follows after `ld`, that is garbage).
#[test]
fn power_cut_during_the_serial_flash_in_the_app() {
    serial_flash_cut(
        "sonoff-basic",
        40,
        39 * 1024,
        "~ld\r\ne:3\r\n",
        "checksum-error",
    );
}

/// An upload the board never finishes, for `method` (`{method}` in the image names): the
/// upload must end refused (`transfer`), the board (if still powered) must say that it gave up
/// (`device_says`), and after a power cycle 1.0.0 still runs and boots cleanly.
fn interrupted_upload(method: &str, device_says: Option<&str>) -> String {
    let gave_up = device_says
        .map(|line| {
            format!("\n[[step]]\nexpect_line = {{ contains = \"{line}\", timeout = \"5s\" }}\n")
        })
        .unwrap_or_default();
    format!(
        r#"# An OTA upload that does not get through.
name = "ota-interrupted"
description = "An OTA upload is cut; the old firmware stays."
boards = ["sonoff-basic", "sonoff-4ch"]
requires = ["power", "gpio0", "serial", "ota-{method}"]

[[step]]
flash = {{ image = "fixtures/images/sonoff-ota-1.0.0-{method}.bin" }}

[[step]]
wait_boot = {{}}

[[step]]
expect_identity = {{ version = "1.0.0", state = "RUN" }}

[[step]]
enter_update = {{}}

[[step]]
label = "ota"
expect_ota_refused = {{ method = "{method}", image = "fixtures/images/sonoff-ota-2.0.0-{method}.bin", reason = "transfer" }}
{gave_up}
[[step]]
power = "cycle"

[[step]]
wait_boot = {{}}

[[step]]
expect_identity = {{ version = "1.0.0", state = "RUN" }}

[[step]]
expect_triage = {{ class = "healthy-boot", since = "ota" }}
"#
    )
}

/// Runs [`interrupted_upload`] with `fault` armed; returns what the OTA step saw and the
/// capture.
fn upload_with_fault(
    kind: &'static str,
    method: &str,
    fault: &str,
    device_says: Option<&str>,
) -> (String, String) {
    let mut bench = Bench::new(kind);
    let old = std::fs::read(runs::fixture(&format!("sonoff-ota-1.0.0-{method}.bin"))).unwrap();
    let run = bench.run(&interrupted_upload(method, device_says), &[fault], &[]);
    assert_eq!(run.out.status.code(), Some(0), "{fault}: {}", run.said());
    run.assert_complete_and_lossless();
    // Nothing of 2.0.0 reached the app region: flash 0..1 MB is the serial-flashed image, the
    // rest untouched but for the staging area below the filesystem.
    let flash = bench.flash_bytes();
    assert_eq!(
        flash[..old.len()],
        old[..],
        "{fault}: the app region is 1.0.0"
    );
    let seen = run.step("5")["observed"].as_str().unwrap().to_string();
    assert!(
        seen.starts_with("refused (transfer): upload cut: the connection to 127.0.0.")
            && seen.contains("Connection reset by peer"),
        "{fault}: {seen}"
    );
    let capture = runs::text(&std::fs::read(run.capture()).unwrap());
    (seen, capture)
}

/// Power lost after 20 KiB of a web-server upload.
#[test]
fn power_cut_during_a_webserver_upload() {
    let (_, capture) = upload_with_fault(
        "sonoff-basic",
        "webserver",
        "power-cut-during-ota 20480",
        None,
    );
    assert!(!capture.contains("Update Success"), "{capture:?}");
}

/// Power lost after 10 KiB of an ArduinoOTA upload.
#[test]
fn power_cut_during_an_arduino_upload() {
    let (seen, capture) =
        upload_with_fault("sonoff-4ch", "arduino", "power-cut-during-ota 10240", None);
    assert!(seen.contains(" of 32768 bytes"), "{seen}");
    // The upload ran (how far the progress lines got depends on how the TCP stream was cut
    // into reads) and never ended.
    assert!(
        capture.contains("OTA progress 0%") && !capture.contains("OTA end"),
        "{capture:?}"
    );
}

/// The web-server upload's TCP connection reset after 30000 bytes: the client says "upload
/// cut", the board aborts the update and stays on 1.0.0.
#[test]
fn connection_reset_during_a_webserver_upload() {
    // The board sees the connection go and aborts the update (ESP8266HTTPUpdateServer).
    let (_, capture) = upload_with_fault(
        "sonoff-4ch",
        "webserver",
        "ota-reset 30000",
        Some("Update was aborted"),
    );
    assert!(!capture.contains("Update Success"), "{capture:?}");
}

/// The ArduinoOTA upload's connection reset after 8000 bytes.
#[test]
fn connection_reset_during_an_arduino_upload() {
    // ArduinoOTA's loop ends with the client; Update.end() refuses the short image.
    let (_, capture) = upload_with_fault(
        "sonoff-basic",
        "arduino",
        "ota-reset 8000",
        Some("OTA error end: ERROR["),
    );
    assert!(!capture.contains("OTA end\r\n"), "{capture:?}");
}

/// A ROM that never answers in download mode: the flash step fails with the flasher's no-sync
/// error, which names what it saw (the download-mode banner, then nothing) and what to check.
#[test]
fn a_rom_that_never_answers_is_a_no_sync_failure() {
    let mut bench = Bench::new("sonoff-4ch");
    let run = bench.run(FLASH_OLD, &["rom-silent"], &[]);
    assert_eq!(run.out.status.code(), Some(1), "{}", run.said());
    run.assert_complete_and_lossless();
    let step = run.step("1");
    let seen = step["observed"].as_str().unwrap();
    assert_eq!(
        seen,
        "no SYNC reply from the ROM loader after 35 SYNC frames (0 bytes came back); 74880 \
         banner seen but no SYNC reply: wrong port? The ROM is in download mode but what the \
         harness sends does not reach it: check the harness TX to board RX wire and that TX/RX \
         are not swapped (4CH R1 silkscreen)"
    );
    assert_eq!(run.triage_class(), "download-mode", "{}", run.said());
}

/// An app that prints nothing: the ROM and eboot lines come, `wait_boot` times out and says
/// that the banner came but the app never spoke.
#[test]
fn a_silent_app_is_a_wait_boot_timeout_that_says_so() {
    let mut bench = Bench::new("sonoff-basic");
    let run = bench.run(FLASH_OLD, &["app-silent"], &[]);
    assert_eq!(run.out.status.code(), Some(1), "{}", run.said());
    run.assert_complete_and_lossless();
    let step = run.step("2");
    assert_eq!(step["status"], "fail");
    let seen = step["observed"].as_str().unwrap();
    assert_eq!(
        seen,
        "not seen within 30s; last line: `~ld`; the ROM banner came (`ets Jan  8 2013,rst \
         cause:1, boot mode:(3,6)`) but no state line from the app followed",
    );
    // Triage reads only the log: eboot loaded the app and nothing went wrong after it. An
    // app that prints nothing looks like a healthy one there; the failed step says otherwise.
    assert_eq!(run.triage_class(), "healthy-boot");
}

/// The serial port vanishes mid-capture (the USB adapter pulled: the stable name goes, the
/// open port hangs up) and comes back as a new pty behind the same name. `harness monitor`
/// says so, keeps what it had, reopens the port, and goes on capturing; the capture file is
/// exactly what the board put on the port (what it sent while unplugged reached no port).
#[test]
fn serial_port_vanishes_mid_capture_and_comes_back() {
    use std::io::BufReader;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let tx_log = dir.path().join("tx.bin");
    let sim = runs::SimProcess::start("sonoff-basic", &["--tx-log", tx_log.to_str().unwrap()]);
    let rig = sim.rig_file(dir.path(), "dut", "sonoff-basic", "off");
    let capture = dir.path().join("monitor.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["monitor", "--board", "dut", "--rig"])
        .arg(&rig)
        .arg("--out")
        .arg(&capture)
        .env("HARNESS_LOCK_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    runs::line_starting(&mut out, "# monitoring", &mut seen);
    // The monitor's own power cycle boots the erased board into the ROM's halt.
    runs::line_starting(&mut out, "ets_main.c", &mut seen);
    runs::line_starting(&mut out, "# triage boot", &mut seen);

    sim.command("port unplug");
    let lost = runs::line_starting(&mut out, "# [", &mut seen);
    assert!(lost.contains("port lost: "), "{lost}");
    assert!(lost.ends_with("(reconnecting)"), "{lost}");
    // While unplugged the board boots again; nothing of it reaches a port.
    sim.command("power cycle");
    sim.command("port plug");
    let back = runs::line_starting(&mut out, "# [", &mut seen);
    assert!(back.contains("port reopened at 74880"), "{back}");
    sim.command("power cycle");
    runs::line_starting(&mut out, "ets_main.c", &mut seen);
    runs::line_starting(&mut out, "# triage boot", &mut seen);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(143));
    let captured = std::fs::read(&capture).unwrap();
    let sent = std::fs::read(&tx_log).unwrap();
    runs::assert_same_bytes(&captured, &sent);
    assert_eq!(
        runs::text(&captured).matches("ets_main.c").count(),
        2,
        "the boot before the unplug and the one after the plug: {seen:#?}"
    );
    let events: Vec<String> = harness::capture::read_index(&harness::capture::index_path(&capture))
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::to_value(&r.event).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .filter(|e| e == "port-lost" || e == "port-reopened")
        .collect();
    assert_eq!(events, ["port-lost", "port-reopened"]);
}

/// `--out` names a file, not a folder: nothing can be written; the error names it, and no
/// report.json exists that could claim anything.
#[test]
fn a_run_folder_that_cannot_be_created_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, b"a file").unwrap();
    let scenario = dir.path().join("power-on.toml");
    std::fs::write(&scenario, POWER_ON).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["scenario", "run"])
        .arg(&scenario)
        .args(["--board", "basic", "--out"])
        .arg(blocker.join("run"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let said = format!("{}\n{}", runs::text(&out.stdout), runs::text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{said}");
    let err = runs::squash(&runs::text(&out.stderr));
    assert!(
        err.contains(&runs::squash(&format!(
            "cannot create the folder `{}`",
            blocker.join("run").display()
        ))),
        "{said}"
    );
    assert!(!blocker.join("run").exists());
}

/// The disk fills up mid-run: the harness process may write files of at most 8 KiB
/// (RLIMIT_FSIZE; with SIGXFSZ ignored a write past it fails with EFBIG, as a full disk fails
/// with ENOSPC). A crash-looping board fills the capture past that. The run is a harness error
/// naming the capture file, report.json says `complete: false`, and the capture holds exactly
/// the first 8 KiB the board sent: nothing else is lost or invented.
#[test]
fn a_full_disk_mid_run_never_passes_as_complete() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    // 1.0.0 with one byte of its app changed: the app checksum fails and it crashes at boot,
    // again and again.
    let mut image = std::fs::read(runs::fixture("sonoff-ota-1.0.0-webserver.bin")).unwrap();
    image[0x1100] ^= 0x55;
    let flash = dir.path().join("flash.bin");
    std::fs::write(&flash, runs::flashed(&image, 1 << 20)).unwrap();
    let tx_log = dir.path().join("tx.bin");
    // The simulator is not limited: the test starts it and the harness attaches.
    let sim = runs::SimProcess::start(
        "sonoff-basic",
        &[
            "--flash",
            flash.to_str().unwrap(),
            "--tx-log",
            tx_log.to_str().unwrap(),
        ],
    );
    let rig = sim.rig_file(dir.path(), "dut", "sonoff-basic", "off");
    let scenario = dir.path().join("loop.toml");
    std::fs::write(
        &scenario,
        POWER_ON.replace("wait = \"3s\"", "wait = \"40s\""),
    )
    .unwrap();
    let folder = dir.path().join("run");
    const LIMIT: u64 = 8192;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.args(["scenario", "run"])
        .arg(&scenario)
        .arg("--rig")
        .arg(&rig)
        .args(["--board", "dut", "--out"])
        .arg(&folder)
        .env("HARNESS_LOCK_DIR", dir.path())
        .env("NO_COLOR", "1");
    // SAFETY: between fork and exec only async-signal-safe calls (setrlimit, signal).
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let said = format!("{}\n{}", runs::text(&out.stdout), runs::text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{said}");
    let run_dir = folder.join("power-on--sonoff-basic");
    let capture = run_dir.join("capture.log");
    let err = runs::squash(&runs::text(&out.stderr));
    assert!(
        err.contains(&runs::squash(&format!(
            "the capture `{}` is incomplete: cannot write capture file {}: File too large",
            capture.display(),
            capture.display()
        ))),
        "{said}"
    );
    // Never a report that claims to be complete; where one could be written, it says false.
    let mut claims = Vec::new();
    for entry in walk(&folder) {
        let body = std::fs::read_to_string(&entry).unwrap_or_default();
        if body.contains("\"complete\": true") {
            claims.push(entry);
        }
    }
    assert!(claims.is_empty(), "{claims:?}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["complete"], false);
    assert_eq!(report["status"], "error");
    // The first LIMIT bytes the board sent, and nothing else.
    let captured = std::fs::read(&capture).unwrap();
    let sent = std::fs::read(&tx_log).unwrap();
    assert!(
        sent.len() as u64 > LIMIT,
        "the board sent {} bytes",
        sent.len()
    );
    assert_eq!(captured.len() as u64, LIMIT);
    runs::assert_same_bytes(&captured, &sent[..LIMIT as usize]);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The serial port vanishes during a `scenario run` step and comes back: the run goes on (the
/// step that waits for a line still sees it after the port is back), but the capture has a gap,
/// so the run is a harness error that says where the port was lost, and report.json is not
/// complete. The capture holds every byte that reached the port.
#[test]
fn serial_port_lost_during_a_scenario_run_makes_the_run_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let tx_log = dir.path().join("tx.bin");
    let sim = runs::SimProcess::start("sonoff-basic", &["--tx-log", tx_log.to_str().unwrap()]);
    let rig = sim.rig_file(dir.path(), "dut", "sonoff-basic", "off");
    let scenario = dir.path().join("unplugged.toml");
    std::fs::write(
        &scenario,
        r#"# The port goes away mid-run.
name = "unplugged"
description = "Two boots of an erased board, the port pulled between them."
boards = ["sonoff-basic"]
requires = ["power", "serial"]

[[step]]
power = "cycle"

[[step]]
expect_line = { contains = "ets_main.c" }

[[step]]
expect_line = { contains = "ets_main.c", timeout = "600s" }
"#,
    )
    .unwrap();
    let folder = dir.path().join("run");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["scenario", "run"])
        .arg(&scenario)
        .arg("--rig")
        .arg(&rig)
        .arg("--out")
        .arg(&folder)
        .env("HARNESS_LOCK_DIR", dir.path())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let index = folder.join("unplugged--sonoff-basic/capture.log.index.jsonl");
    let wait_index = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !std::fs::read_to_string(&index).is_ok_and(|t| t.contains(needle)) {
            assert!(std::time::Instant::now() < deadline, "{needle} never came");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    };
    wait_index("\"step 3: ");
    sim.command("port unplug");
    wait_index("\"port-lost\"");
    sim.command("power cycle");
    sim.command("port plug");
    wait_index("\"port-reopened\"");
    sim.command("power cycle");
    let out = child.wait_with_output().unwrap();
    let said = format!("{}\n{}", runs::text(&out.stdout), runs::text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{said}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["complete"], false, "{report:#}");
    let run = &report["runs"][0];
    assert_eq!(run["steps"][2]["status"], "pass", "{run:#}");
    let gap = run["capture_error"].as_str().unwrap();
    assert!(
        gap.starts_with("serial port ")
            && gap.contains(" lost after byte ")
            && gap.ends_with(", reopened"),
        "{gap}"
    );
    let captured = std::fs::read(folder.join("unplugged--sonoff-basic/capture.log")).unwrap();
    runs::assert_same_bytes(&captured, &std::fs::read(&tx_log).unwrap());
    assert_eq!(runs::text(&captured).matches("ets_main.c").count(), 2);
}
