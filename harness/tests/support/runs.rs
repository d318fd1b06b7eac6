//! Runs `harness scenario run` on a virtual board the harness starts, with the simulator's TX
//! log and flash file kept, and checks what a run must always leave behind: a report that says
//! it is complete and a capture that holds every byte the board sent.
//!
//! Shared by the fault matrix (tests/fault_matrix.rs), the OTA attacks (tests/ota_attacks.rs),
//! the safety tests (tests/safety.rs) and the virtual rig's tests (tests/rig_virtual.rs).

#![allow(dead_code, reason = "each test file uses a part")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (scenario image paths resolve against it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A fixture image path.
pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("fixtures/images").join(name)
}

/// Text of process output, lossy.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One virtual board with a persistent flash file, run by `harness scenario run`.
pub struct Bench {
    /// Scratch folder (scenarios, rig files, run folders, TX logs).
    pub dir: tempfile::TempDir,
    /// The board kind.
    pub kind: &'static str,
    /// The flash file every run's simulator uses.
    pub flash: PathBuf,
    runs: usize,
}

/// What one `harness scenario run` left.
pub struct Run {
    /// The process output.
    pub out: Output,
    /// The run folder.
    pub folder: PathBuf,
    /// The simulator's TX log: every byte the board put on its serial port.
    pub tx_log: PathBuf,
}

impl Bench {
    /// A board of `kind` with erased flash.
    pub fn new(kind: &'static str) -> Bench {
        let mut dir = tempfile::tempdir().unwrap();
        // To look at the run folders of a failing test afterwards.
        if std::env::var_os("HARNESS_KEEP_RUNS").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        let flash = dir.path().join("flash.bin");
        Bench {
            dir,
            kind,
            flash,
            runs: 0,
        }
    }

    /// The flash file's bytes (the board's whole flash once a run has created it).
    pub fn flash_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.flash).unwrap()
    }

    /// Runs `scenario` (TOML text) on this board with fault knobs `faults` armed in the
    /// started simulator and `env` set for the harness.
    pub fn run(&mut self, scenario: &str, faults: &[&str], env: &[(&str, &str)]) -> Run {
        self.run_with(scenario, faults, env, |_| {})
    }

    /// Runs `scenario` with one matrix value chosen (`--param method=arduino`).
    pub fn run_param(&mut self, scenario: &str, param: &str, env: &[(&str, &str)]) -> Run {
        self.run_with(scenario, &[], env, |cmd| {
            cmd.args(["--param", param]);
        })
    }

    /// As [`run`](Self::run), with a hook to adjust the command (limits, signals).
    pub fn run_with(
        &mut self,
        scenario: &str,
        faults: &[&str],
        env: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command),
    ) -> Run {
        self.runs += 1;
        let n = self.runs;
        let d = self.dir.path();
        let file = d.join(format!("scenario-{n}.toml"));
        std::fs::write(&file, scenario).unwrap();
        let tx_log = d.join(format!("tx-{n}.bin"));
        let faults = faults
            .iter()
            .map(|f| format!("\"{f}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let rig = d.join(format!("rig-{n}.toml"));
        std::fs::write(
            &rig,
            format!(
                "description = \"one virtual board\"\n\n[[board]]\nname = \"dut\"\nkind = \"{}\"\n\
                 backend = \"virtual\"\npower_at_exit = \"off\"\n\n[board.sim]\nflash = \"{}\"\n\
                 tx_log = \"{}\"\nfaults = [{faults}]\n",
                self.kind,
                self.flash.display(),
                tx_log.display(),
            ),
        )
        .unwrap();
        let folder = d.join(format!("run-{n}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
        cmd.args(["scenario", "run"])
            .arg(&file)
            .arg("--rig")
            .arg(&rig)
            .args(["--board", "dut", "--out"])
            .arg(&folder)
            .current_dir(repo_root())
            .env("NO_COLOR", "1")
            .env("HARNESS_SIM_EXE", env!("CARGO_BIN_EXE_harness"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        adjust(&mut cmd);
        let out = cmd.output().unwrap();
        Run {
            out,
            folder,
            tx_log,
        }
    }
}

impl Run {
    /// stdout and stderr and the end of the capture, for failure messages.
    pub fn said(&self) -> String {
        let capture = std::fs::read_dir(&self.folder)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("capture.log"))
            .find(|p| p.is_file())
            .and_then(|p| std::fs::read(p).ok())
            .unwrap_or_default();
        let tail = &capture[capture.len().saturating_sub(1500)..];
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}\n--- capture (last {} of {} bytes)\n{:?}",
            self.out.status.code(),
            text(&self.out.stdout),
            text(&self.out.stderr),
            tail.len(),
            capture.len(),
            text(tail)
        )
    }

    /// report.json.
    pub fn report(&self) -> serde_json::Value {
        let path = self.folder.join("report.json");
        let body = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), self.said()));
        serde_json::from_str(&body).unwrap()
    }

    /// The only run's entry in report.json.
    pub fn run_report(&self) -> serde_json::Value {
        let r = self.report();
        assert_eq!(r["runs"].as_array().unwrap().len(), 1, "{r:#}");
        r["runs"][0].clone()
    }

    /// The step with id `id` (`"3"`, `"7.2.1"` is not searched).
    pub fn step(&self, id: &str) -> serde_json::Value {
        let run = self.run_report();
        run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no step {id}: {run:#}"))
            .clone()
    }

    /// The run's capture file in the run folder.
    pub fn capture(&self) -> PathBuf {
        let run = self.run_report();
        self.folder
            .join(run["capture"].as_str().expect("a capture"))
    }

    /// The checks every run gets: report.json complete, the run's triage present, and the
    /// capture holding exactly what the simulator sent (its TX log), byte for byte.
    pub fn assert_complete_and_lossless(&self) {
        let report = self.report();
        assert_eq!(report["complete"], true, "{report:#}\n{}", self.said());
        let run = &report["runs"][0];
        assert!(
            run["triage"]["class"].is_string(),
            "a classified report: {run:#}"
        );
        let captured = std::fs::read(self.capture()).unwrap();
        let sent = std::fs::read(&self.tx_log).unwrap();
        assert_same_bytes(&captured, &sent);
        let index =
            harness::capture::read_index(&harness::capture::index_path(&self.capture())).unwrap();
        assert!(
            matches!(index.last().map(|r| &r.event), Some(harness::capture::IndexEvent::Stop { bytes }) if *bytes == captured.len() as u64),
            "the index ends with the capture's stop record: {:?}",
            index.last()
        );
    }

    /// The triage class of the whole capture, from report.json.
    pub fn triage_class(&self) -> String {
        self.run_report()["triage"]["class"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Asserts two byte strings are equal, showing where they first differ.
pub fn assert_same_bytes(captured: &[u8], sent: &[u8]) {
    if captured == sent {
        return;
    }
    let at = captured
        .iter()
        .zip(sent)
        .position(|(a, b)| a != b)
        .unwrap_or(captured.len().min(sent.len()));
    let show = |b: &[u8]| {
        let from = at.saturating_sub(40);
        text(&b[from..(at + 40).min(b.len())])
    };
    panic!(
        "capture ({} bytes) and TX log ({} bytes) differ at byte {at}:\ncaptured: {:?}\nsent:     {:?}",
        captured.len(),
        sent.len(),
        show(captured),
        show(sent)
    );
}

/// The image bytes a board's flash holds after `harness flash` wrote `image` on erased flash.
pub fn flashed(image: &[u8], flash_size: usize) -> Vec<u8> {
    let mut bytes = vec![0xFF; flash_size];
    bytes[..image.len()].copy_from_slice(image);
    bytes
}

/// A `harness sim` the test starts and controls (so it outlives the harness processes under
/// test and its status can be read after they are gone); stopped on drop.
pub struct SimProcess {
    child: std::process::Child,
    /// `name: value` endpoint lines it printed.
    pub endpoints: std::collections::BTreeMap<String, String>,
}

impl SimProcess {
    /// Starts `harness sim --board KIND` with `extra` arguments, unpowered.
    pub fn start(kind: &str, extra: &[&str]) -> SimProcess {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_harness"))
            .args(["sim", "--board", kind, "--power", "off"])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut endpoints = std::collections::BTreeMap::new();
        let mut line = String::new();
        loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "sim ended early");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(": ").unwrap();
            endpoints.insert(k.to_string(), v.to_string());
        }
        // Keep draining stdout so the simulator never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        SimProcess { child, endpoints }
    }

    /// Its control socket.
    pub fn control_path(&self) -> PathBuf {
        PathBuf::from(&self.endpoints["control"])
    }

    /// Sends a control line; panics unless the answer is `ok ...`.
    pub fn command(&self, line: &str) -> String {
        harness::rig::SimClient::connect(&self.control_path())
            .unwrap()
            .command(line)
            .unwrap_or_else(|e| panic!("`{line}`: {e}"))
    }

    /// Its `status` as `key=value` pairs.
    pub fn status(&self) -> std::collections::BTreeMap<String, String> {
        harness::rig::SimClient::connect(&self.control_path())
            .unwrap()
            .status()
            .unwrap()
    }

    /// A rig file attaching to this simulator as board `name` through its stable port name,
    /// with its OTA addresses.
    pub fn rig_file(&self, dir: &Path, name: &str, kind: &str, power_at_exit: &str) -> PathBuf {
        let path = dir.join(format!("{name}-rig.toml"));
        std::fs::write(
            &path,
            format!(
                "[[board]]\nname = \"{name}\"\nkind = \"{kind}\"\nbackend = \"virtual\"\n\
                 power_at_exit = \"{power_at_exit}\"\n[board.sim]\ncontrol = \"{}\"\npty = \"{}\"\n\
                 http = \"{}\"\nota = \"{}\"\ntime_scale = {}\n",
                self.endpoints["control"],
                self.endpoints["port"],
                self.endpoints["http"],
                self.endpoints["ota"],
                self.endpoints["time-scale"],
            ),
        )
        .unwrap();
        path
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// Reads lines of a child's stdout until one starts with `prefix`; returns it.
pub fn line_starting(
    out: &mut impl std::io::BufRead,
    prefix: &str,
    seen: &mut Vec<String>,
) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "output ended before a line starting with {prefix:?}; saw {seen:#?}"
        );
        seen.push(line.trim_end().to_string());
        if line.starts_with(prefix) {
            return line.trim_end().to_string();
        }
    }
}

/// Text without white space and miette's `│` margins: miette wraps long lines (also inside
/// paths, after a `-`), so messages are compared squashed.
pub fn squash(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace() && *c != '│')
        .collect()
}
