//! `harness flash` verifies by booting: after the write the rig power-cycles the virtual board
//! with GPIO0 released, the simulated firmware prints its identity line, and the harness matches
//! it against the image. A wrong image header makes the boot fail, which is a board failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::firmware::OtaMethod;
use harness::flash::{self, FlashOptions, Verification, flash_board};
use harness::image::Identity;
use harness::rig::{self, OpenOptions, Rig, RigConfig, SimClient};

fn harness() -> &'static str {
    env!("CARGO_BIN_EXE_harness")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/images")
        .join(name)
}

fn rig_file(dir: &Path, kind: &str, flash: &Path) -> PathBuf {
    let path = dir.join("rig.toml");
    std::fs::write(
        &path,
        format!(
            "[[board]]\nname = \"dut\"\nkind = \"{kind}\"\nbackend = \"virtual\"\n\
             power_at_exit = \"off\"\n[board.sim]\nflash = \"{}\"\n",
            flash.display()
        ),
    )
    .unwrap();
    path
}

fn run(args: &[&str], lock_dir: &Path) -> Output {
    Command::new(harness())
        .args(args)
        .env("HARNESS_LOCK_DIR", lock_dir)
        .env("HARNESS_SIM_EXE", harness())
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn flashes_and_verifies(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let flash_file = dir.path().join("flash.bin");
    let rig = rig_file(dir.path(), kind, &flash_file);
    for (name, version) in [
        ("sonoff-ota-1.0.0-webserver.bin", "1.0.0"),
        ("sonoff-ota-2.0.0-webserver.bin", "2.0.0"),
    ] {
        let image = fixture(name);
        let out = run(
            &[
                "flash",
                image.to_str().unwrap(),
                "--rig",
                rig.to_str().unwrap(),
                "--board",
                "dut",
            ],
            dir.path(),
        );
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
        assert!(
            stdout.contains(&format!(
                "verified: the board printed `HILFW app=sonoff-ota version={version} \
                 ota=webserver` after the power cycle"
            )),
            "{stdout}"
        );
        let image = std::fs::read(&image).unwrap();
        let flash = std::fs::read(&flash_file).unwrap();
        assert!(
            flash[..image.len()] == image[..],
            "flash holds {name} at 0x0"
        );
    }
}

#[test]
fn flash_verifies_the_identity_after_the_power_cycle_sonoff_4ch() {
    flashes_and_verifies("sonoff-4ch");
}

#[test]
fn flash_verifies_the_identity_after_the_power_cycle_sonoff_basic() {
    flashes_and_verifies("sonoff-basic");
}

#[test]
fn fresh_clone_example_flashes_the_built_in_virtual_rig() {
    let dir = tempfile::tempdir().unwrap();
    let image = fixture("sonoff-ota-1.0.0-webserver.bin");
    let out = run(
        &["flash", image.to_str().unwrap(), "--board", "sonoff-4ch"],
        dir.path(),
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("chip: ESP8285N08"), "{stdout}");
    assert!(stdout.contains("verified: the board printed"), "{stdout}");
}

#[test]
fn a_forced_image_that_cannot_boot_fails_verification() {
    // QIO on the ESP8285's DOUT-only flash: written fine, but it does not boot.
    let dir = tempfile::tempdir().unwrap();
    let flash_file = dir.path().join("flash.bin");
    let rig = rig_file(dir.path(), "sonoff-4ch", &flash_file);
    let image = fixture("sonoff-ota-1.0.0-4mb-qio.bin");
    let out = run(
        &[
            "flash",
            image.to_str().unwrap(),
            "--rig",
            rig.to_str().unwrap(),
            "--board",
            "dut",
            "--force",
            "--verify-timeout",
            "3",
        ],
        dir.path(),
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("harness::flash::verify_timeout"),
        "{stderr}"
    );
    assert!(stderr.contains("no identity line within 3.0s"), "{stderr}");
    // The boot output is triaged in the message: the chip cannot run QIO.
    assert!(stderr.contains("IllegalInstruction"), "{stderr}");
    let written = std::fs::read(&image).unwrap();
    assert!(std::fs::read(&flash_file).unwrap()[..written.len()] == written[..]);
}

#[test]
fn soft_reset_boots_the_image_but_leaves_download_mode_latched() {
    let dir = tempfile::tempdir().unwrap();
    let flash_file = dir.path().join("flash.bin");
    let config = RigConfig::load(&rig_file(dir.path(), "sonoff-basic", &flash_file)).unwrap();
    let options = OpenOptions {
        sim_exe: Some(PathBuf::from(harness())),
        ..OpenOptions::default()
    };
    let mut rig = rig::open(config.board("dut").unwrap(), &options).unwrap();
    let control = rig
        .describe()
        .into_iter()
        .find(|(k, _)| *k == "control")
        .map(|(_, v)| PathBuf::from(v))
        .unwrap();
    let image = std::fs::read(fixture("sonoff-ota-1.0.0-arduino.bin")).unwrap();
    let opts = FlashOptions {
        after: flash::AfterFlash::SoftReset,
        ..FlashOptions::default()
    };
    let report = flash_board(&mut rig, &image, &opts, &mut |_| {}).unwrap();
    assert_eq!(
        report.verification,
        Verification::Identity(
            Identity::new("sonoff-ota", "1.0.0", OtaMethod::Arduino, None).unwrap()
        )
    );
    let status = SimClient::connect(&control).unwrap().status().unwrap();
    assert_eq!(status["soft_started"], "yes", "{status:?}");
    assert!(status["boot_mode"].starts_with("1,"), "{status:?}");
}

#[test]
fn a_board_running_its_firmware_gives_no_sync_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let flash_file = dir.path().join("flash.bin");
    let config = RigConfig::load(&rig_file(dir.path(), "sonoff-4ch", &flash_file)).unwrap();
    let options = OpenOptions {
        sim_exe: Some(PathBuf::from(harness())),
        ..OpenOptions::default()
    };
    let mut rig = rig::open(config.board("dut").unwrap(), &options).unwrap();
    let image = std::fs::read(fixture("sonoff-ota-1.0.0-webserver.bin")).unwrap();
    flash_board(&mut rig, &image, &FlashOptions::default(), &mut |_| {}).unwrap();
    // The firmware runs (verified above); GPIO0 was never pressed again.
    let board = rig.board();
    let started = std::time::Instant::now();
    let err = flash::write_image(
        rig.link(),
        board,
        &image,
        &FlashOptions::default(),
        None,
        &mut |_| {},
    )
    .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, flash::FlashError::NoSync { tries: 35, .. }),
        "{err:?}"
    );
    // 35 SYNCs × (100 ms + 50 ms) ≈ 5.3 s; generous for loaded CI machines.
    assert!(
        took >= std::time::Duration::from_secs(5) && took < std::time::Duration::from_secs(15),
        "{took:?}"
    );
    let help = miette::Diagnostic::help(&err).unwrap().to_string();
    assert!(help.contains("hold GPIO0 low while powering on"), "{help}");
}
