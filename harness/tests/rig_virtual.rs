//! The rig on the virtual backend: `harness sim` behind the same serial capture and a control
//! socket. Power, button and reset sequences change what the simulator reports; the safety
//! guard leaves the board safe after a panic, SIGINT and SIGTERM; locks hold across processes;
//! a SIGKILLed monitor loses nothing the simulator sent.
//!
//! No sleeps for synchronisation: tests wait for lines, status answers or process exits.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/runs.rs"]
mod runs;

use harness::bootlog::{BootSource, Event};
use harness::capture::{CaptureEvent, IndexEvent};
use harness::rig::{self, OpenOptions, Rig, RigConfig, SimClient, safety};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use runs::SimProcess;

const WAIT: Duration = Duration::from_secs(10);

/// The harness binary that provides `harness sim`.
fn sim_exe() -> PathBuf {
    std::env::var_os("HARNESS_SIM_EXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_harness")))
}

fn options() -> OpenOptions {
    OpenOptions {
        sim_exe: Some(sim_exe()),
        ..OpenOptions::default()
    }
}

fn describe(rig: &dyn Rig, key: &str) -> String {
    rig.describe()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("rig does not describe `{key}`"))
}

fn status(control: &Path) -> BTreeMap<String, String> {
    SimClient::connect(control).unwrap().status().unwrap()
}

fn boot_source(events: &[Event]) -> Option<BootSource> {
    events.iter().find_map(|e| match e {
        Event::RomBanner(b) => b.boot_mode.map(|m| m.source()),
        _ => None,
    })
}

#[test]
fn power_button_and_cycles_through_the_rig_change_the_sims_status() {
    let rig_config = RigConfig::builtin_virtual();
    let mut rig = rig::open(rig_config.board("basic").unwrap(), &options()).unwrap();
    let control = PathBuf::from(describe(&rig, "control"));
    assert_eq!(rig.board().id, "sonoff-basic");
    assert!(rig.capabilities().has("power") && rig.capabilities().has("gpio0"));
    assert_eq!(
        status(&control)["power"],
        "off",
        "the rig starts its sim unpowered and decides when it boots"
    );
    rig.lines().set_power(true).unwrap();
    assert_eq!(status(&control)["power"], "on");

    rig.lines().set_power(false).unwrap();
    assert_eq!(status(&control)["power"], "off");
    rig.lines().set_gpio0(true).unwrap();
    assert_eq!(status(&control)["button"], "down");
    rig.lines().set_power(true).unwrap();
    let s = status(&control);
    assert_eq!((s["power"].as_str(), s["button"].as_str()), ("on", "down"));
    assert!(s["boot_mode"].starts_with("1,"), "{s:?}");

    rig.power_cycle_run().unwrap();
    let s = status(&control);
    assert_eq!((s["power"].as_str(), s["button"].as_str()), ("on", "up"));
    assert!(s["boot_mode"].starts_with("3,"), "{s:?}");
    assert_eq!(s["rst_cause"], "1", "a power cycle is a power-on reset");

    // The rig's line changes are in the capture index.
    let sub = rig.capture().subscribe();
    rig.lines().set_power(false).unwrap();
    assert!(
        sub.wait_for(WAIT, |e| match e {
            CaptureEvent::Index(r) if r.event == IndexEvent::Power { on: false } => Some(()),
            _ => None,
        })
        .is_some()
    );
    drop(rig);
    // The started simulator is gone with the rig.
    assert!(SimClient::connect(&control).is_err());
}

#[test]
fn rom_banner_shows_download_mode_then_flash_boot() {
    let rig_config = RigConfig::builtin_virtual();
    let mut rig = rig::open(rig_config.board("4ch").unwrap(), &options()).unwrap();
    let control = PathBuf::from(describe(&rig, "control"));

    let banner = rig
        .enter_download_mode()
        .unwrap()
        .expect("the ROM banner is seen");
    assert_eq!(banner.boot_mode.map(|m| m.x), Some(1), "{banner:?}");
    let s = status(&control);
    assert_eq!(s["state"], "rom-download", "{s:?}");
    assert_eq!(s["button"], "up", "released after the banner");

    let sub = rig.capture().subscribe();
    rig.power_cycle_run().unwrap();
    let source = sub
        .wait_for(WAIT, |e| match e {
            CaptureEvent::Line { events, .. } => boot_source(events),
            _ => None,
        })
        .expect("a banner after the power cycle");
    assert_eq!(source, BootSource::Flash);
    assert!(status(&control)["boot_mode"].starts_with("3,"));
}

#[test]
fn panic_inside_a_step_leaves_gpio0_released_and_power_as_configured() {
    safety::install_panic_hook();
    let dir = tempfile::tempdir().unwrap();

    // The panic hook: the rig survives the panic (borrowed by the step), the hook has already
    // applied the exit state (power off) before unwinding.
    let rig_config = RigConfig::builtin_virtual();
    let mut rig = rig::open(rig_config.board("basic").unwrap(), &options()).unwrap();
    let control = PathBuf::from(describe(&rig, "control"));
    let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rig.lines().set_power(false).unwrap();
        rig.lines().set_gpio0(true).unwrap();
        rig.lines().set_power(true).unwrap();
        panic!("step 3 failed while GPIO0 was held");
    }));
    assert!(step.is_err());
    let s = status(&control);
    assert_eq!((s["button"].as_str(), s["power"].as_str()), ("up", "off"));

    // Drop during unwinding on another thread (the hook only handles its own thread's boards):
    // power_at_exit = "on".
    // An attached board takes locks in the default lock folder: a name no other run uses.
    let sim = SimProcess::start("sonoff-basic", &[]);
    let name = format!("panicky-{}", std::process::id());
    let rig_file = sim.rig_file(dir.path(), &name, "sonoff-basic", "on");
    let config = RigConfig::load(&rig_file).unwrap();
    let mut rig = rig::open(config.board(&name).unwrap(), &options()).unwrap();
    rig.lines().set_power(false).unwrap();
    let worker = std::thread::spawn(move || {
        let mut rig = rig;
        rig.lines().set_gpio0(true).unwrap();
        panic!("a step on a worker thread failed");
    });
    assert!(worker.join().is_err());
    let s = sim.status();
    assert_eq!((s["button"].as_str(), s["power"].as_str()), ("up", "on"));
}

/// Starts `harness monitor` for a rig board and waits until it monitors.
#[allow(clippy::zombie_processes)]
fn monitor(rig_file: &Path, board: &str, lock_dir: &Path) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["monitor", "--board", board, "--rig"])
        .arg(rig_file)
        .arg("--out")
        .arg(lock_dir.join(format!("{board}.log")))
        .env("HARNESS_LOCK_DIR", lock_dir)
        .env("HARNESS_SIM_EXE", sim_exe())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "monitor ended early");
        if line.starts_with("# monitoring") {
            return (child, out);
        }
    }
}

#[test]
fn sigint_and_sigterm_leave_the_board_safe() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProcess::start("sonoff-basic", &[]);
    for (signal, code, at_exit) in [(Signal::SIGINT, 130, "off"), (Signal::SIGTERM, 143, "on")] {
        let rig_file = sim.rig_file(dir.path(), "sig", "sonoff-basic", at_exit);
        // The state a step might leave behind: GPIO0 held, power the other way.
        sim.command(if at_exit == "on" {
            "power off"
        } else {
            "power on"
        });
        sim.command("button down");
        let (mut child, _out) = monitor(&rig_file, "sig", dir.path());
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{signal}");
        let s = sim.status();
        assert_eq!(
            (s["button"].as_str(), s["power"].as_str()),
            ("up", at_exit),
            "after {signal}"
        );
        let index = harness::capture::read_index(&harness::capture::index_path(
            &dir.path().join("sig.log"),
        ))
        .unwrap();
        assert!(
            index.iter().any(
                |r| matches!(&r.event, IndexEvent::Note { text } if text.contains(signal.as_str()))
            ),
            "the safe state is noted in the capture index"
        );
    }
}

#[test]
fn a_board_held_by_one_process_is_refused_to_another() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProcess::start("sonoff-basic", &[]);
    let rig_file = sim.rig_file(dir.path(), "shared", "sonoff-basic", "off");
    let (mut first, _out) = monitor(&rig_file, "shared", dir.path());
    let second = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["monitor", "--board", "shared", "--duration", "5s", "--rig"])
        .arg(&rig_file)
        .env("HARNESS_LOCK_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains(&format!(
            "board `shared` is in use by another harness process (pid {})",
            first.id()
        )),
        "{err}"
    );
    kill(Pid::from_raw(first.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(first.wait().unwrap().code(), Some(143));
}

/// A `harness monitor` SIGKILLed while the simulator prints: its capture file plus what was
/// still in the pty buffer is exactly the simulator's TX log.
#[test]
fn sigkill_of_monitor_loses_nothing_the_sim_sent() {
    let dir = tempfile::tempdir().unwrap();
    let tx_log = dir.path().join("tx.bin");
    // Unpowered at start: the only boots are the monitor's own power cycle and the test's, so
    // the monitor's lines and the boots match one to one (a boot the simulator made at start
    // would put the test one line behind the capture).
    let sim = SimProcess::start("sonoff-basic", &["--tx-log", tx_log.to_str().unwrap()]);
    // Collects what the monitor has not read when it dies (see tests/capture.rs).
    let spare = nix::fcntl::open(
        Path::new(&sim.endpoints["pty"]),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let rig_file = sim.rig_file(dir.path(), "killed", "sonoff-basic", "off");
    let (mut child, mut out) = monitor(&rig_file, "killed", dir.path());
    // The boot of the monitor's power cycle at its start, then six more, each shown by the monitor
    // (each ends with the ROM giving up on the erased flash); then SIGKILL, then six more boots
    // the pty keeps.
    let mut line = String::new();
    for cycle in 0..7 {
        if cycle > 0 {
            sim.command("power cycle");
        }
        loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0);
            if line.starts_with("ets_main.c") {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let shown = std::fs::read(dir.path().join("killed.log")).unwrap();
    let sent_before = wait_len(&tx_log, shown.len());
    assert!(
        shown == sent_before,
        "every byte shown before the SIGKILL is on disk, and nothing else: {} vs {}: {:?} / {:?}",
        shown.len(),
        sent_before.len(),
        String::from_utf8_lossy(&shown[shown.len().saturating_sub(80)..]),
        String::from_utf8_lossy(&sent_before[sent_before.len().saturating_sub(80)..]),
    );
    for _ in 0..6 {
        sim.command("power cycle");
    }
    sim.command("power off");
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [nix::poll::PollFd::new(
            spare.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(500u16)).unwrap() == 0 {
            break;
        }
        match nix::unistd::read(spare.as_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EAGAIN) => continue,
            Err(e) => panic!("read: {e}"),
        }
    }
    let mut joined = shown;
    let captured = joined.len();
    joined.extend_from_slice(&rest);
    let sent = wait_len(&tx_log, joined.len());
    assert!(
        captured > 0 && !rest.is_empty(),
        "killed mid-capture: {captured} + {}",
        rest.len()
    );
    assert_eq!(joined.len(), sent.len(), "capture + buffered vs TX log");
    assert!(
        joined == sent,
        "capture + buffered is exactly what the simulator sent"
    );
}

/// The TX log once it has at least `len` bytes (the simulator writes it beside the pty).
fn wait_len(path: &Path, len: usize) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    loop {
        let bytes = std::fs::read(path).unwrap();
        if bytes.len() >= len || Instant::now() > deadline {
            return bytes;
        }
        std::thread::yield_now();
    }
}

/// A simulator started by the harness dies with it, even when the harness is SIGKILLed and
/// runs no cleanup (PR_SET_PDEATHSIG).
#[test]
fn a_started_simulator_dies_with_a_killed_harness() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["monitor", "--board", "4ch", "--out"])
        .arg(dir.path().join("4ch.log"))
        .env("HARNESS_SIM_EXE", sim_exe())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut sim_pid = None;
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "monitor ended early");
        if let Some(rest) = line.trim_end().strip_prefix("# sim: started, pid ") {
            sim_pid = Some(Pid::from_raw(rest.parse().unwrap()));
        }
        if line.starts_with("# monitoring") {
            break;
        }
    }
    let sim_pid = sim_pid.expect("the monitor names the simulator's pid");
    assert!(kill(sim_pid, None).is_ok(), "the simulator runs");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + WAIT;
    while kill(sim_pid, None).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the simulator outlived the harness"
        );
        std::thread::yield_now();
    }
}
