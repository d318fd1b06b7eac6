//! Hardware safety of `harness scenario run`: whatever step is running when SIGINT or SIGTERM
//! arrives, or whichever step panics, the board is left with GPIO0 released and power as the
//! rig file's `power_at_exit` says (read back from the simulator's `status`); and a board one
//! harness process holds cannot be taken by another until that process is gone.
//!
//! (`harness monitor` under signals, a panic inside a rig operation, and the lock between
//! monitors: tests/rig_virtual.rs and tests/monitor.rs.)
//!
//! The simulator is started by the test (so its status can be read after the harness is gone)
//! and attached through a rig file; it runs at real speed here (`--time-scale 1`), so that each
//! step lasts long enough to be interrupted inside it. The tests wait for the runner's own note
//! of the step's start in the capture index, not for time to pass.

#[path = "support/runs.rs"]
mod runs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use runs::SimProcess;

const WAIT: Duration = Duration::from_secs(30);

/// A scenario with one step of interest (step 1), on the Basic.
fn scenario(kind: &str, step: &str) -> String {
    let ota = if step.contains("arduino") {
        ", \"ota-arduino\""
    } else {
        ""
    };
    format!(
        "# Safety: a signal during a {kind} step.\nname = \"safety-{kind}\"\n\
         description = \"A {kind} step, interrupted.\"\nboards = [\"sonoff-basic\"]\n\
         requires = [\"power\", \"gpio0\", \"serial\"{ota}]\n\n[[step]]\n{step}\n"
    )
}

/// The step kinds that act on the board, each written to last long enough to be interrupted.
/// (`expect_triage` and `expect_lint_refusal` read files only; `repeat` runs the others.)
fn steps() -> Vec<(&'static str, &'static str)> {
    vec![
        ("power", "power = \"cycle\""),
        ("button", "button = { hold = \"60s\" }"),
        (
            "flash",
            "flash = { image = \"fixtures/images/sonoff-ota-1.0.0-webserver.bin\" }",
        ),
        ("wait_boot", "wait_boot = { timeout = \"60s\" }"),
        (
            "expect_line",
            "expect_line = { contains = \"never printed\", timeout = \"60s\" }",
        ),
        (
            "expect_identity",
            "expect_identity = { version = \"9.9.9\", timeout = \"60s\" }",
        ),
        ("enter_update", "enter_update = { timeout = \"60s\" }"),
        (
            "ota",
            "ota = { method = \"arduino\", image = \"fixtures/images/sonoff-ota-2.0.0-arduino.bin\" }",
        ),
        (
            "expect_ota_refused",
            "expect_ota_refused = { method = \"arduino\", image = \"fixtures/images/sonoff-ota-2.0.0-arduino.bin\", reason = \"auth\" }",
        ),
        ("wait", "wait = \"60s\""),
        (
            "repeat",
            "repeat = { times = 3, steps = [ { wait = \"60s\" } ] }",
        ),
    ]
}

/// Waits until the capture index at `index` has a line containing `needle`.
fn wait_index(index: &Path, needle: &str, child: &mut Child) {
    let deadline = Instant::now() + WAIT;
    loop {
        if std::fs::read_to_string(index).is_ok_and(|t| t.contains(needle)) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the harness ended ({status}) before {needle:?} was noted");
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} never noted in {index:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn scenario_run(dir: &Path, rig: &Path, file: &Path, out: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.args(["scenario", "run"])
        .arg(file)
        .arg("--rig")
        .arg(rig)
        .arg("--out")
        .arg(dir.join(out))
        .current_dir(runs::repo_root())
        .env("HARNESS_LOCK_DIR", dir)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs the step of `kind` and sends `signal` once it has started, with the board left in the
/// unsafe state (GPIO0 held, power the other way) a step might leave it in.
fn interrupt(kind: &str, step: &str, signal: Signal, power_at_exit: &str) {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProcess::start("sonoff-basic", &["--time-scale", "1"]);
    if kind == "flash" {
        // A ROM that never answers keeps the flasher syncing.
        sim.command("fault rom-silent");
    }
    let rig = sim.rig_file(dir.path(), "dut", "sonoff-basic", power_at_exit);
    let file = dir.path().join("s.toml");
    std::fs::write(&file, scenario(kind, step)).unwrap();
    let mut child = scenario_run(dir.path(), &rig, &file, "out")
        .spawn()
        .unwrap();
    let index = dir.path().join(format!(
        "out/safety-{kind}--sonoff-basic/capture.log.index.jsonl"
    ));
    wait_index(&index, "\"step 1: ", &mut child);
    sim.command("button down");
    sim.command(if power_at_exit == "on" {
        "power off"
    } else {
        "power on"
    });
    kill(Pid::from_raw(child.id() as i32), signal).unwrap();
    let out = child.wait_with_output().unwrap();
    let code = 128 + signal as i32;
    let stderr = runs::text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{kind}: {stderr}");
    assert!(
        stderr.contains(&format!(
            "harness: {}: safe state applied to 1 board(s), exiting",
            signal.as_str()
        )),
        "{kind}: {stderr}"
    );
    let s = sim.status();
    assert_eq!(
        (s["button"].as_str(), s["power"].as_str()),
        ("up", power_at_exit),
        "{kind} after {signal}: {s:?}"
    );
    let notes = std::fs::read_to_string(&index).unwrap();
    assert!(
        notes.contains(&format!("safe state ({})", signal.as_str())),
        "{kind}: the safe state is noted in the capture index"
    );
}

/// SIGINT and SIGTERM alternate over the step kinds, and so do the two `power_at_exit` values.
fn interrupt_each(range: std::ops::Range<usize>) {
    for (i, (kind, step)) in steps().into_iter().enumerate() {
        if !range.contains(&i) {
            continue;
        }
        let signal = if i % 2 == 0 {
            Signal::SIGINT
        } else {
            Signal::SIGTERM
        };
        let at_exit = if i % 4 < 2 { "off" } else { "on" };
        interrupt(kind, step, signal, at_exit);
    }
}

#[test]
fn signals_during_power_button_flash_and_boot_steps_leave_the_board_safe() {
    interrupt_each(0..4);
}

#[test]
fn signals_during_line_and_update_steps_leave_the_board_safe() {
    interrupt_each(4..7);
}

#[test]
fn signals_during_ota_wait_and_repeat_steps_leave_the_board_safe() {
    interrupt_each(7..11);
}

/// A second `harness scenario run` cannot take a board the first one holds (it says who holds
/// it and exits 2, its report naming the lock); once the first is gone, however it ended, the
/// board is free again.
#[test]
fn a_board_held_by_one_scenario_run_is_refused_to_another() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProcess::start("sonoff-basic", &["--time-scale", "1"]);
    let rig = sim.rig_file(dir.path(), "shared", "sonoff-basic", "off");
    let long = dir.path().join("long.toml");
    std::fs::write(&long, scenario("wait", "wait = \"60s\"")).unwrap();
    let short = dir.path().join("short.toml");
    std::fs::write(&short, scenario("power", "power = \"off\"")).unwrap();

    let mut first = scenario_run(dir.path(), &rig, &long, "first")
        .spawn()
        .unwrap();
    let index = dir
        .path()
        .join("first/safety-wait--sonoff-basic/capture.log.index.jsonl");
    wait_index(&index, "\"step 1: ", &mut first);

    let second = scenario_run(dir.path(), &rig, &short, "second")
        .output()
        .unwrap();
    assert_eq!(
        second.status.code(),
        Some(2),
        "{}",
        runs::text(&second.stdout)
    );
    let busy = format!(
        "board `shared` is in use by another harness process (pid {})",
        first.id()
    );
    assert!(
        runs::text(&second.stdout).contains(&busy),
        "{}",
        runs::text(&second.stdout)
    );
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("second/report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["status"], "error");
    assert!(
        report["runs"][0]["reason"]
            .as_str()
            .unwrap()
            .contains(&busy)
    );
    // The second process touched nothing: the first's step still runs undisturbed.
    assert!(first.try_wait().unwrap().is_none());

    // The holder is killed outright: no cleanup runs, the kernel drops its lock.
    first.kill().unwrap();
    first.wait().unwrap();
    let third = scenario_run(dir.path(), &rig, &short, "third")
        .output()
        .unwrap();
    assert_eq!(
        third.status.code(),
        Some(0),
        "{}",
        runs::text(&third.stdout)
    );
    assert_eq!(sim.status()["power"], "off");
}

/// The rig executor with one step kind sabotaged: before that step's executor call does
/// anything, the board is put in an unsafe state (GPIO0 held, power the other way) and the
/// call panics, once. Everything else is the real [`RigExecutor`]. What the board looked like
/// when the runner asked for the safe state is kept: by then the panic hook must have applied
/// it already.
struct Sabotage<'a> {
    inner: harness::scenario::RigExecutor,
    kind: &'static str,
    sim: &'a SimProcess,
    power_at_exit: &'static str,
    fired: bool,
    at_safe_state: Option<std::collections::BTreeMap<String, String>>,
}

impl Sabotage<'_> {
    fn strike(&mut self, kinds: &[&str]) {
        if self.fired || !kinds.contains(&self.kind) {
            return;
        }
        self.fired = true;
        self.sim.command("button down");
        self.sim.command(if self.power_at_exit == "on" {
            "power off"
        } else {
            "power on"
        });
        panic!("sabotaged {} step", self.kind);
    }
}

use harness::scenario::{
    CaptureMark, ContendedOutcome, ExecError, Executor, FlashOutcome, LineMatcher, LineWait,
    OtaOutcome, OtaRequest, PowerAction,
};

impl Executor for Sabotage<'_> {
    fn backend(&self) -> &str {
        self.inner.backend()
    }
    fn capabilities(&self) -> std::collections::BTreeSet<harness::scenario::Capability> {
        self.inner.capabilities()
    }
    fn mark(&mut self) -> Result<CaptureMark, ExecError> {
        self.inner.mark()
    }
    fn power(&mut self, action: PowerAction) -> Result<(), ExecError> {
        self.strike(&["power"]);
        self.inner.power(action)
    }
    fn button(&mut self, hold: Duration) -> Result<(), ExecError> {
        self.strike(&["button", "enter_update"]);
        self.inner.button(hold)
    }
    fn flash(&mut self, image: &Path, power_cycle_after: bool) -> Result<FlashOutcome, ExecError> {
        self.strike(&["flash"]);
        self.inner.flash(image, power_cycle_after)
    }
    fn wait_boot(&mut self, from: CaptureMark, timeout: Duration) -> Result<LineWait, ExecError> {
        self.strike(&["wait_boot"]);
        self.inner.wait_boot(from, timeout)
    }
    fn wait_line(
        &mut self,
        from: CaptureMark,
        matcher: &LineMatcher,
        timeout: Duration,
    ) -> Result<LineWait, ExecError> {
        self.strike(&["expect_line", "expect_identity"]);
        self.inner.wait_line(from, matcher, timeout)
    }
    fn ota(&mut self, request: &OtaRequest<'_>) -> Result<OtaOutcome, ExecError> {
        self.strike(&["ota", "expect_ota_refused"]);
        self.inner.ota(request)
    }
    fn ota_contended(
        &mut self,
        first: &OtaRequest<'_>,
        second: &OtaRequest<'_>,
    ) -> Result<ContendedOutcome, ExecError> {
        self.strike(&["ota"]);
        self.inner.ota_contended(first, second)
    }
    fn wait(&mut self, duration: Duration) -> Result<(), ExecError> {
        self.strike(&["wait", "repeat"]);
        self.inner.wait(duration)
    }
    fn triage(&mut self, from: CaptureMark) -> Result<harness::triage::Report, ExecError> {
        self.strike(&["expect_triage"]);
        self.inner.triage(from)
    }
    fn step_started(&mut self, id: &str, description: &str) {
        self.inner.step_started(id, description);
    }
    fn capture_path(&self) -> Option<PathBuf> {
        self.inner.capture_path()
    }
    fn capture_error(&self) -> Option<String> {
        self.inner.capture_error()
    }
    fn safe_state(&mut self) -> Result<(), ExecError> {
        self.at_safe_state = Some(self.sim.status());
        self.inner.safe_state()
    }
}

/// A panic inside each step kind: the runner reports the step as an error naming the panic,
/// and the board was already safe (GPIO0 released, power as `power_at_exit`) when the runner
/// came to apply the safe state itself: the panic hook did it while the panic unwound.
#[test]
fn a_panic_in_each_step_kind_leaves_the_board_safe() {
    harness::rig::safety::install_panic_hook();
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProcess::start("sonoff-basic", &[]);
    let mut kinds: Vec<(&str, String)> = steps()
        .into_iter()
        .map(|(k, s)| (k, s.to_string()))
        .collect();
    kinds.push(("expect_triage", "expect_triage = \"checksum-error\"".into()));
    for (i, (kind, step)) in kinds.into_iter().enumerate() {
        let power_at_exit = if i % 2 == 0 { "off" } else { "on" };
        // Attached boards are locked by name in the default lock folder: a name nobody else uses.
        let name = format!("sabotage-{}-{kind}", std::process::id());
        let rig = sim.rig_file(dir.path(), &name, "sonoff-basic", power_at_exit);
        let rig = harness::rig::RigConfig::load(&rig).unwrap();
        let text = scenario(kind, &step);
        let file = harness::scenario::parse(
            &text,
            &dir.path().join(format!("{kind}.toml")),
            dir.path(),
            Some(&runs::repo_root()),
            &[],
        )
        .unwrap();
        let capture = dir.path().join(format!("{kind}.log"));
        let inner =
            harness::scenario::RigExecutor::open(rig.board(&name).unwrap(), &capture).unwrap();
        let mut exec = Sabotage {
            inner,
            kind,
            sim: &sim,
            power_at_exit,
            fired: false,
            at_safe_state: None,
        };
        let report = harness::scenario::run(&file.runs[0], &mut exec, &mut |_| {});
        assert!(exec.fired, "{kind}: the sabotage did not fire");
        // The innermost step that did not pass (inside a repeat: the iteration's step).
        let step = report.culprit().expect("a step errored");
        assert_eq!(
            step.error.as_deref(),
            Some(format!("panic: sabotaged {kind} step").as_str()),
            "{kind}: {step:?}"
        );
        let s = exec.at_safe_state.take().unwrap();
        assert_eq!(
            (s["button"].as_str(), s["power"].as_str()),
            ("up", power_at_exit),
            "{kind}: the panic hook left the board unsafe: {s:?}"
        );
        drop(exec);
        let s = sim.status();
        assert_eq!(
            (s["button"].as_str(), s["power"].as_str()),
            ("up", power_at_exit)
        );
    }
}
