//! `harness flash` and the flash client end to end against the virtual board: through a rig
//! (download mode by GPIO0 + power, write, power cycle) and through a bare port (`--port`, the
//! test does the resets over the simulator's control socket). The flash file must equal the image
//! at 0x0 afterwards; chip detection must name the board's chip; a board that is not in download
//! mode must give the no-sync error in time; a failing lint must refuse the image.
//!
//! `harness flash` verifies by booting: after the write the rig power-cycles the virtual board
//! with GPIO0 released, the simulated firmware prints its identity line, and the harness matches
//! it against the image. A wrong image header makes the boot fail, which is a board failure.
//!
//! No sleeps for synchronisation: tests wait for process exits, output lines and status answers.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use harness::board::{self, Chip};
use harness::bootlog::BootSource;
use harness::firmware::OtaMethod;
use harness::flash::{
    self, FlashError, FlashOptions, SyncHint, Verification, flash_board, write_image,
};
use harness::image::Identity;
use harness::rig::{self, OpenOptions, Rig, RigConfig, SimClient, wait_banner};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const FIXTURE: &str = "sonoff-ota-1.0.0-webserver.bin";
const WRONG_LAYOUT: &str = "sonoff-ota-1.0.0-4mb-qio.bin";

fn harness() -> &'static str {
    env!("CARGO_BIN_EXE_harness")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/images")
        .join(name)
}

fn options() -> OpenOptions {
    OpenOptions {
        sim_exe: Some(PathBuf::from(harness())),
        ..OpenOptions::default()
    }
}

/// A rig file with one virtual board of `kind` whose simulator keeps its flash in `flash`.
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

/// The flash file holds `image` at 0x0 and the rest of the last 1 KiB block is 0xFF.
fn assert_flashed(flash: &Path, image: &[u8], size: u32) {
    let got = std::fs::read(flash).unwrap();
    assert_eq!(got.len(), size as usize, "flash file has the board's size");
    assert!(
        got[..image.len()] == image[..],
        "flash holds the image at 0x0"
    );
    let block_end = image.len().next_multiple_of(0x400);
    assert!(got[image.len()..block_end].iter().all(|&b| b == 0xFF));
}

fn flash_through_rig_reports_the_chip(kind: &str, chip: Chip, description: &str) {
    let dir = tempfile::tempdir().unwrap();
    let flash_file = dir.path().join("flash.bin");
    let config = RigConfig::load(&rig_file(dir.path(), kind, &flash_file)).unwrap();
    let mut rig = rig::open(config.board("dut").unwrap(), &options()).unwrap();
    let image = std::fs::read(fixture(FIXTURE)).unwrap();
    let opts = FlashOptions {
        verify: false,
        ..FlashOptions::default()
    };
    let mut progress = Vec::new();
    let report = flash_board(&mut rig, &image, &opts, &mut |p| progress.push(p)).unwrap();
    let profile = board::find(kind).unwrap();
    assert_eq!(report.chip.chip, chip);
    assert_eq!(report.chip.description, description);
    assert_eq!(report.chip.mac, profile.mac);
    assert_eq!(report.chip.crystal_mhz, 26);
    let id = report.flash_id.expect("flash id read");
    assert_eq!(id.0, profile.flash_id & 0xFF_FFFF);
    assert_eq!(id.size(), Some(profile.flash_size));
    assert_eq!(
        report.banner.and_then(|b| b.boot_mode).map(|m| m.source()),
        Some(BootSource::UartDownload),
        "entered through the ROM banner of download mode"
    );
    assert_eq!((report.write.offset, report.write.bytes), (0, 65536));
    assert_eq!(report.write.blocks, 64);
    assert_eq!(report.write.erase_size, flash::rom_erase_size(0, 65536));
    assert_eq!(report.verification, Verification::Skipped("not asked for"));
    assert_eq!(
        progress.last().map(|p| (p.written, p.total)),
        Some((65536, 65536))
    );
    drop(rig);
    assert_flashed(&flash_file, &image, profile.flash_size);
}

#[test]
fn chip_detection_says_esp8285_for_sonoff_4ch() {
    flash_through_rig_reports_the_chip("sonoff-4ch", Chip::Esp8285, "ESP8285N08");
}

#[test]
fn chip_detection_says_esp8266_for_sonoff_basic() {
    flash_through_rig_reports_the_chip("sonoff-basic", Chip::Esp8266, "ESP8266EX");
}

fn cli_flashes_through_the_rig(kind: &str, chip: &str) {
    let dir = tempfile::tempdir().unwrap();
    let flash_file = dir.path().join("flash.bin");
    let rig = rig_file(dir.path(), kind, &flash_file);
    let image = fixture(FIXTURE);
    let out = run(
        &[
            "flash",
            image.to_str().unwrap(),
            "--rig",
            rig.to_str().unwrap(),
            "--board",
            "dut",
            "--no-verify",
        ],
        dir.path(),
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("chip: {chip}")), "{stdout}");
    assert!(
        stdout.contains("wrote 65536 bytes at 0x00000000"),
        "{stdout}"
    );
    assert!(stdout.contains("not verified: not asked for"), "{stdout}");
    assert!(
        stderr.contains("wrote 100% (65536 of 65536 bytes"),
        "{stderr}"
    );
    assert_flashed(
        &flash_file,
        &std::fs::read(&image).unwrap(),
        board::find(kind).unwrap().flash_size,
    );
}

#[test]
fn cli_flashes_sonoff_4ch_through_the_rig() {
    cli_flashes_through_the_rig("sonoff-4ch", "ESP8285N08 (MAC 5c:cf:7f:c4:d5:02");
}

#[test]
fn cli_flashes_sonoff_basic_through_the_rig() {
    cli_flashes_through_the_rig("sonoff-basic", "ESP8266EX (MAC 18:fe:34:a1:b2:01");
}

#[test]
fn board_running_from_flash_gives_no_sync_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let flash_file = dir.path().join("flash.bin");
    let config = RigConfig::load(&rig_file(dir.path(), "sonoff-basic", &flash_file)).unwrap();
    let mut rig = rig::open(config.board("dut").unwrap(), &options()).unwrap();
    // GPIO0 released across the power-on: the ROM boots from flash, the loader never runs.
    let sub = rig.capture().subscribe();
    rig.power_cycle_run().unwrap();
    let banner = wait_banner(&sub, Duration::from_secs(5)).expect("ROM banner after power-on");
    assert_eq!(
        banner.boot_mode.map(|m| m.source()),
        Some(BootSource::Flash)
    );
    let profile = rig.board();
    let image = std::fs::read(fixture(FIXTURE)).unwrap();
    let started = Instant::now();
    let err = write_image(
        rig.link(),
        profile,
        &image,
        &FlashOptions::default(),
        Some(banner),
        &mut |_| {},
    )
    .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            err,
            FlashError::NoSync {
                tries: 35,
                hint: SyncHint::RunningFirmware,
                ..
            }
        ),
        "{err:?}"
    );
    // 35 SYNCs × (100 ms reply timeout + 50 ms pause), plus link overhead (generous for loaded
    // CI machines).
    assert!(
        took >= Duration::from_millis(5000) && took < Duration::from_secs(15),
        "{took:?}"
    );
    assert!(err.is_dut_failure());
    let help = miette::Diagnostic::help(&err).unwrap().to_string();
    assert!(
        help.contains("hold GPIO0 low while powering on; release after the banner"),
        "{help}"
    );
    drop(rig);
    assert!(
        std::fs::read(&flash_file)
            .unwrap()
            .iter()
            .all(|&b| b == 0xFF),
        "nothing was written"
    );
}

#[test]
fn lint_failure_refuses_the_image_and_force_flashes_it() {
    let dir = tempfile::tempdir().unwrap();
    let flash_file = dir.path().join("flash.bin");
    let rig = rig_file(dir.path(), "sonoff-4ch", &flash_file);
    let image = fixture(WRONG_LAYOUT);
    let base = [
        "flash",
        image.to_str().unwrap(),
        "--rig",
        rig.to_str().unwrap(),
        "--board",
        "dut",
        "--no-verify",
    ];
    let out = run(&base, dir.path());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("refusing to flash"), "{stderr}");
    assert!(stderr.contains("flash-size-too-big"), "{stderr}");
    assert!(stderr.contains("flash-mode-unsupported"), "{stderr}");
    assert!(!flash_file.exists(), "the simulator was not even started");

    let mut forced = base.to_vec();
    forced.push("--force");
    let out = run(&forced, dir.path());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("flashing anyway (--force)"), "{stderr}");
    assert_flashed(&flash_file, &std::fs::read(&image).unwrap(), 1 << 20);
}

#[test]
fn unreadable_or_unparseable_image_is_a_harness_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &["flash", "/nonexistent/fw.bin", "--board", "sonoff-4ch"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("cannot read /nonexistent/fw.bin"));
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"not an image").unwrap();
    let out = run(
        &["flash", junk.to_str().unwrap(), "--board", "sonoff-4ch"],
        dir.path(),
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad magic 0x6e at offset 0x0"), "{stderr}");
}

/// A `harness sim` started by the test, for `--port`.
struct Sim {
    child: Child,
    pty: String,
    control: PathBuf,
    flash: PathBuf,
}

impl Sim {
    fn start(kind: &str, boot: &str, dir: &Path) -> Sim {
        let flash = dir.join("port-flash.bin");
        let mut child = Command::new(harness())
            .args(["sim", "--board", kind, "--boot", boot, "--flash"])
            .arg(&flash)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (mut pty, mut control) = (None, None);
        let mut line = String::new();
        loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "sim ended early");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("pty: ") {
                pty = Some(v.to_string());
            }
            if let Some(v) = l.strip_prefix("control: ") {
                control = Some(PathBuf::from(v));
            }
        }
        Sim {
            child,
            pty: pty.unwrap(),
            control: control.unwrap(),
            flash,
        }
    }

    fn command(&self, line: &str) -> String {
        SimClient::connect(&self.control)
            .unwrap()
            .command(line)
            .unwrap()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

#[test]
fn bare_port_flashes_a_board_put_in_download_mode_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start("sonoff-basic", "download", dir.path());
    let image = fixture(FIXTURE);
    let out = run(
        &[
            "flash",
            image.to_str().unwrap(),
            "--port",
            &sim.pty,
            "--kind",
            "sonoff-basic",
            "--no-verify",
        ],
        dir.path(),
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("the board must be in download mode"),
        "{stderr}"
    );
    assert!(stdout.contains("chip: ESP8266EX"), "{stdout}");
    assert!(
        stdout.contains("the board is still in the ROM loader: power-cycle it"),
        "{stdout}"
    );
    let status = sim.command("status");
    assert!(status.contains("state=rom-download"), "{status}");
    assert_flashed(&sim.flash, &std::fs::read(&image).unwrap(), 1 << 20);
}

#[test]
fn bare_port_refuses_a_board_of_another_kind() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start("sonoff-4ch", "download", dir.path());
    let image = fixture(FIXTURE);
    let out = run(
        &[
            "flash",
            image.to_str().unwrap(),
            "--port",
            &sim.pty,
            "--kind",
            "sonoff-basic",
        ],
        dir.path(),
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("the chip is an ESP8285N08, but board profile `sonoff-basic` says ESP8266"),
        "{stderr}"
    );
    assert!(
        std::fs::read(&sim.flash)
            .unwrap()
            .iter()
            .all(|&b| b == 0xFF),
        "nothing was written"
    );
}

#[test]
fn bare_port_to_a_board_not_in_download_mode_is_no_sync() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start("sonoff-4ch", "flash", dir.path());
    let image = fixture(FIXTURE);
    let started = Instant::now();
    let out = run(
        &[
            "flash",
            image.to_str().unwrap(),
            "--port",
            &sim.pty,
            "--kind",
            "sonoff-4ch",
        ],
        dir.path(),
    );
    let took = started.elapsed();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("no SYNC reply from the ROM loader after 35 SYNC frames"),
        "{stderr}"
    );
    assert!(stderr.contains("harness::flash::no_sync"), "{stderr}");
    // 35 SYNCs × (100 ms + 50 ms) ≈ 5.3 s, plus process start; generous for loaded CI machines.
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// A scripted ESP8285 ROM loader on a pty the test owns: it answers what `harness flash` sends
/// and records the flash writes, so the test can play the board's boot after the write (the
/// simulator does not run firmware yet).
struct ScriptedBoard {
    slave_path: PathBuf,
    master: std::fs::File,
    _slave: std::os::fd::OwnedFd,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl ScriptedBoard {
    fn start() -> ScriptedBoard {
        use harness::flash::proto::{Command, Op, Response, SlipDecoder, reg, rom_status};
        use std::io::{Read, Write};
        use std::os::fd::AsFd;
        use std::sync::atomic::Ordering;

        let pair = nix::pty::openpty(None, None).unwrap();
        let slave_path = nix::unistd::ttyname(&pair.slave).unwrap();
        let master = std::fs::File::from(pair.master);
        let mut reader = master.try_clone().unwrap();
        let mut writer = master.try_clone().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_thread = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut flash = vec![0xFFu8; 1 << 20];
            let mut regs = std::collections::HashMap::from([
                (reg::CHIP_DETECT_MAGIC, reg::ESP8266_MAGIC),
                (reg::EFUSE_MAC0, 0x02 << 24 | 1 << 4),
                (reg::EFUSE_MAC1, 0xC4D5),
                (reg::EFUSE_MAC3, 0x5C_CF7F),
                (reg::UART_CLKDIV, 451),
            ]);
            let mut session = (0u32, 0x400u32);
            let mut decoder = SlipDecoder::new();
            let mut buf = [0u8; 4096];
            while !stop_thread.load(Ordering::Relaxed) {
                let mut fds = [nix::poll::PollFd::new(
                    reader.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u16)).unwrap_or(0) == 0
                {
                    continue;
                }
                let Ok(n) = reader.read(&mut buf) else { break };
                for frame in decoder.push(&buf[..n]) {
                    let Ok(cmd) = Command::parse(&frame.unwrap()) else {
                        continue;
                    };
                    let ok =
                        |op, value| Response::new(op, value, &[], rom_status(Ok(()))).to_slip();
                    let out = match cmd.op {
                        Op::Sync => (0..8).flat_map(|_| ok(Op::Sync, 0x2000_0000)).collect(),
                        Op::ReadReg => ok(
                            Op::ReadReg,
                            regs.get(&cmd.word(0).unwrap()).copied().unwrap_or(0),
                        ),
                        Op::WriteReg => {
                            let [addr, value, ..] = cmd.words::<4>().unwrap();
                            if addr == reg::SPI_CMD {
                                regs.insert(reg::SPI_W0, 0x14_40C8);
                            } else {
                                regs.insert(addr, value);
                            }
                            ok(Op::WriteReg, 0)
                        }
                        Op::FlashBegin => {
                            let [_, _, block, offset] = cmd.words::<4>().unwrap();
                            session = (offset, block);
                            ok(Op::FlashBegin, 0)
                        }
                        Op::FlashData => {
                            let b = cmd.data_block().unwrap();
                            let at = (session.0 + b.seq * session.1) as usize;
                            flash[at..at + b.payload.len()].copy_from_slice(b.payload);
                            ok(Op::FlashData, 0)
                        }
                        other => ok(other, 0),
                    };
                    writer.write_all(&out).unwrap();
                }
            }
            flash
        });
        ScriptedBoard {
            slave_path,
            master,
            _slave: pair.slave,
            stop,
            thread: Some(thread),
        }
    }

    /// What the board prints: written to the harness's port.
    fn print(&mut self, text: &str) {
        use std::io::Write;
        self.master.write_all(text.as_bytes()).unwrap();
    }

    /// Stops the ROM and returns the flash contents.
    fn flash(mut self) -> Vec<u8> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Runs `harness flash --port` on the scripted board; when it asks for the power cycle, the
/// board "boots" and prints `boot_output`. Returns the exit code, stdout, stderr and the flash.
fn port_flash_with_boot(boot_output: &str) -> (Option<i32>, String, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mut board = ScriptedBoard::start();
    let image = fixture(FIXTURE);
    let mut child = Command::new(harness())
        .args(["flash", image.to_str().unwrap(), "--port"])
        .arg(&board.slave_path)
        .args(["--kind", "sonoff-4ch", "--verify-timeout", "5"])
        .env("HARNESS_LOCK_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if line.starts_with("now power-cycle the board with GPIO0 released") {
            board.print(boot_output);
        }
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), seen, stderr, board.flash())
}

#[test]
fn bare_port_verifies_the_identity_line_after_the_power_cycle() {
    let (code, stdout, stderr, flash) = port_flash_with_boot(
        "\u{fffd}\u{fffd}garbage at the wrong rate\r\n\
         HILFW app=sonoff-ota version=1.0.0 ota=webserver state=RUN\r\n",
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(
            "verified: the board printed `HILFW app=sonoff-ota version=1.0.0 ota=webserver` \
             after the reboot"
        ),
        "{stdout}"
    );
    let image = std::fs::read(fixture(FIXTURE)).unwrap();
    assert!(flash[..image.len()] == image[..]);
}

#[test]
fn bare_port_identity_mismatch_is_a_board_failure() {
    let (code, stdout, stderr, _) =
        port_flash_with_boot("HILFW app=sonoff-ota version=0.9.0 ota=webserver state=RUN\r\n");
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("harness::flash::verify_mismatch"),
        "{stderr}"
    );
    assert!(stderr.contains("version=0.9.0"), "{stderr}");
}

#[test]
fn bare_port_silence_after_the_power_cycle_is_a_verify_timeout() {
    let started = Instant::now();
    let (code, stdout, stderr, _) =
        port_flash_with_boot(" ets Jan  8 2013,rst cause:2, boot mode:(3,6)\r\n\r\n");
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("harness::flash::verify_timeout"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn soft_reset_runs_the_firmware_with_the_boot_mode_still_latched() {
    let dir = tempfile::tempdir().unwrap();
    let flash_file = dir.path().join("flash.bin");
    let config = RigConfig::load(&rig_file(dir.path(), "sonoff-4ch", &flash_file)).unwrap();
    let mut rig = rig::open(config.board("dut").unwrap(), &options()).unwrap();
    let control = rig
        .describe()
        .into_iter()
        .find(|(k, _)| *k == "control")
        .map(|(_, v)| PathBuf::from(v))
        .unwrap();
    let image = std::fs::read(fixture(FIXTURE)).unwrap();
    let status = |key: &str| SimClient::connect(&control).unwrap().status().unwrap()[key].clone();

    let stay = FlashOptions {
        after: flash::AfterFlash::Stay,
        ..FlashOptions::default()
    };
    let report = flash_board(&mut rig, &image, &stay, &mut |_| {}).unwrap();
    assert_eq!(
        report.verification,
        Verification::Skipped("the board stays in the ROM loader")
    );
    assert_eq!(status("state"), "rom-download");

    let soft = FlashOptions {
        after: flash::AfterFlash::SoftReset,
        verify: false,
        ..FlashOptions::default()
    };
    flash_board(&mut rig, &image, &soft, &mut |_| {}).unwrap();
    // The ROM ran the image without a reset: boot mode 1 stays latched (failure-modes.md A).
    assert_eq!(status("soft_started"), "yes");
    assert!(
        status("boot_mode").starts_with("1,"),
        "{}",
        status("boot_mode")
    );
    assert_ne!(status("state"), "rom-download");
    drop(rig);
    assert_flashed(&flash_file, &image, 1 << 20);
}

// ---------------------------------------------------------------------------------------------
// Verification by booting the flashed image

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
