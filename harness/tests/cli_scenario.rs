//! `harness scenario` end to end: runs the built binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn harness_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("the harness binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The harness exited with `code`; otherwise fails showing what it printed.
#[track_caller]
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn scenario_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("scenarios"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_scenario_in_the_repository_checks() {
    let files = scenario_files();
    assert!(files.len() >= 8, "{files:?}");
    let mut args = vec!["scenario", "check"];
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let out = harness_in(&repo_root(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        files.len(),
        "{stdout}"
    );
    // Each file says what it shows in a leading comment.
    for f in &files {
        let body = std::fs::read_to_string(f).unwrap();
        assert!(
            body.starts_with("# "),
            "{} has no leading comment",
            f.display()
        );
    }
}

#[test]
fn the_seed_scenarios_are_there() {
    let names: Vec<String> = scenario_files()
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "seed-4ch-first-ota-after-serial-flash",
        "seed-4ch-remedy",
        "seed-basic-wrong-flash-size",
        "seed-basic-correct-image",
        "arduino-ota-both-boards",
        "ota-refused-in-run-state",
        "update-state-timeout",
        "nightly-soak",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "missing scenarios/{want}.toml"
        );
    }
}

#[test]
fn check_reports_bad_files_with_line_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"x\"\ndescription = \"y\"\nboards = [\"sonoff-basic\"]\nrequires = [\"power\"]\n\n[[step]]\npower = \"cycle\"\n\n[[step]]\nflsh = { image = \"a.bin\" }\n",
    )
    .unwrap();
    let good = repo_root().join("scenarios/seed-4ch-remedy.toml");
    let out = harness_in(
        tmp.path(),
        &[
            "scenario",
            "check",
            // Relative, so that miette's line wrapping cannot split the location.
            "bad.toml",
            good.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bad.toml:10:1: unknown step kind `flsh`"),
        "{stderr}"
    );
    assert!(stderr.contains("expect_ota_refused"), "{stderr}");
    assert!(
        stderr.contains("1 of 2 scenario files are invalid"),
        "{stderr}"
    );
    // The good file is still checked.
    assert!(
        text(&out.stdout).contains("ok    "),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_applies_param_overrides() {
    let file = repo_root().join("scenarios/ota-refused-in-run-state.toml");
    let f = file.to_str().unwrap();
    let out = harness_in(&repo_root(), &["scenario", "check", f]);
    assert!(
        text(&out.stdout).contains("4 runs"),
        "{}",
        text(&out.stdout)
    );
    let out = harness_in(
        &repo_root(),
        &["scenario", "check", f, "--param", "method=arduino"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("2 runs"),
        "{}",
        text(&out.stdout)
    );
    let out = harness_in(
        &repo_root(),
        &["scenario", "check", f, "--param", "methd=arduino"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("the scenario has no parameter `methd`"),
        "{}",
        text(&out.stderr)
    );
}

/// A scenario the virtual board can do today: it has no app yet, so an erased flash stops in
/// the ROM (`ets_main.c`).
const ERASED: &str = r#"
# The ROM halts on erased flash.
name = "erased-flash"
description = "A board with erased flash prints the ROM banner and stops at ets_main.c."
boards = ["sonoff-basic", "sonoff-4ch"]
requires = ["power", "gpio0", "serial"]

[[step]]
label = "cycle"
power = "cycle"
[[step]]
expect_line = { contains = "ets_main.c", timeout = "5s" }
[[step]]
button = "press"
[[step]]
expect_triage = { class = "checksum-error", since = "cycle" }
"#;

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn run_on_the_virtual_rig_writes_a_complete_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("erased.toml"), ERASED).unwrap();
    let out = harness_in(
        tmp.path(),
        &["scenario", "run", "erased.toml", "--out", "out"],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("[4] pass"), "{stdout}");
    assert!(
        stdout.contains("2 runs: 2 passed, 0 failed, 0 errors, 0 skipped"),
        "{stdout}"
    );
    let dir = tmp.path().join("out");
    let report = json(&dir.join("report.json"));
    assert_eq!(report["complete"], true);
    assert_eq!(report["status"], "pass");
    assert_eq!(report["runs"][0]["backend"], "virtual");
    for board in ["sonoff-basic", "sonoff-4ch"] {
        let run = dir.join(format!("erased-flash--{board}"));
        let capture = std::fs::read(run.join("capture.log")).unwrap();
        assert!(
            String::from_utf8_lossy(&capture).contains("ets_main.c"),
            "{board}: {capture:?}"
        );
        assert_eq!(json(&run.join("triage.json"))["class"], "checksum-error");
    }
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    let parsed = quick_junit::Report::deserialize_from_str(&junit).unwrap();
    assert_eq!((parsed.tests, parsed.failures, parsed.errors), (2, 0, 0));
}

#[test]
fn failing_step_exits_1_and_the_report_says_what_was_seen() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("no-app.toml"),
        "# No app on erased flash.\nname = \"no-app\"\ndescription = \"wait_boot fails\"\nboards = [\"sonoff-4ch\"]\nrequires = [\"power\", \"serial\"]\n\n[[step]]\npower = \"cycle\"\n[[step]]\nwait_boot = { timeout = \"1s\" }\n[[step]]\npower = \"off\"\n",
    )
    .unwrap();
    let out = harness_in(
        tmp.path(),
        &["scenario", "run", "no-app.toml", "--out", "out"],
    );
    assert_exit(&out, 1);
    let md = std::fs::read_to_string(tmp.path().join("out/report.md")).unwrap();
    assert!(
        md.contains("Failed at step 2 (line 10): wait for a boot (1s)"),
        "{md}"
    );
    assert!(
        md.contains("- **Seen:** not seen within 1s; last line: `ets_main.c"),
        "{md}"
    );
    assert!(
        md.contains("**Triage of the capture:** `checksum-error`"),
        "{md}"
    );
    let report = json(&tmp.path().join("out/report.json"));
    assert_eq!(report["runs"][0]["steps"][2]["status"], "not-run");
}

/// A `harness sim` child; killed on drop.
struct RunningSim(std::process::Child);

impl Drop for RunningSim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn scenarios_the_virtual_rig_cannot_serve_are_skipped() {
    use std::io::BufRead;
    // A simulator the rig attaches to by its control socket and pty only: the rig knows no OTA
    // address for it (a started simulator's `http:`/`ota:` endpoints would give one).
    let mut child = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["sim", "--board", "sonoff-4ch"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start harness sim");
    let stdout = child.stdout.take().unwrap();
    let sim = RunningSim(child);
    let mut endpoints = std::collections::HashMap::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(": ").unwrap();
        endpoints.insert(k.to_string(), v.to_string());
    }
    let tmp = tempfile::tempdir().unwrap();
    let rig = tmp.path().join("attached.toml");
    std::fs::write(
        &rig,
        format!(
            "description = \"an attached simulator\"\n\n[[board]]\nname = \"4ch\"\nkind = \"sonoff-4ch\"\n\
             backend = \"virtual\"\n\n[board.sim]\ncontrol = \"{}\"\npty = \"{}\"\n",
            endpoints["control"], endpoints["pty"]
        ),
    )
    .unwrap();
    let file = repo_root().join("scenarios/seed-4ch-remedy.toml");
    let out = harness_in(
        tmp.path(),
        &[
            "scenario",
            "run",
            file.to_str().unwrap(),
            "--rig",
            rig.to_str().unwrap(),
            "--out",
            "out",
        ],
    );
    drop(sim);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stdout).contains("the virtual rig for sonoff-4ch lacks ota-webserver"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stderr).contains("no scenario ran"));
    assert_eq!(
        json(&tmp.path().join("out/report.json"))["counts"]["skipped"],
        1
    );
}

#[test]
fn flash_step_writes_the_image_and_the_board_boots_it() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("flash.toml"),
        "# Flash.\nname = \"flash\"\ndescription = \"flash\"\nboards = [\"sonoff-basic\"]\nrequires = [\"power\", \"gpio0\", \"serial\"]\n\n[[step]]\nlabel = \"flash\"\nflash = { image = \"fixtures/images/sonoff-ota-1.0.0-webserver.bin\" }\n\n[[step]]\nwait_boot = {}\n\n[[step]]\nexpect_identity = { version = \"1.0.0\", state = \"RUN\" }\n\n[[step]]\nexpect_triage = { class = \"healthy-boot\", since = \"flash\" }\n",
    )
    .unwrap();
    let out = harness_in(
        &repo_root(),
        &[
            "scenario",
            "run",
            tmp.path().join("flash.toml").to_str().unwrap(),
            "--out",
            tmp.path().join("out").to_str().unwrap(),
        ],
    );
    assert_exit(&out, 0);
    let report = json(&tmp.path().join("out/report.json"));
    assert_eq!(report["counts"]["pass"], 1, "{report}");
}

#[test]
fn rig_file_and_board_selection() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("erased.toml"), ERASED).unwrap();
    // Only the 4CH of the built-in rig, by its rig name.
    let out = harness_in(
        tmp.path(),
        &[
            "scenario",
            "run",
            "erased.toml",
            "--board",
            "4ch",
            "--out",
            "a",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("1 run: 1 passed"),
        "{}",
        text(&out.stdout)
    );

    // A rig with only a Basic: the 4CH run is skipped, the Basic one passes.
    std::fs::write(
        tmp.path().join("rig.toml"),
        "[[board]]\nname = \"bench-basic\"\nkind = \"sonoff-basic\"\nbackend = \"virtual\"\npower_at_exit = \"off\"\n",
    )
    .unwrap();
    let out = harness_in(
        tmp.path(),
        &[
            "scenario",
            "run",
            "erased.toml",
            "--rig",
            "rig.toml",
            "--out",
            "b",
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("rig.toml has no sonoff-4ch board"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 runs: 1 passed, 0 failed, 0 errors, 1 skipped"),
        "{stdout}"
    );

    let out = harness_in(
        tmp.path(),
        &[
            "scenario",
            "run",
            "erased.toml",
            "--rig",
            "rig.toml",
            "--board",
            "4ch",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("bench-basic (sonoff-basic)"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn run_rejects_bad_input_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let file = repo_root().join("scenarios/seed-4ch-remedy.toml");
    let f = file.to_str().unwrap();
    let out = harness_in(tmp.path(), &["scenario", "run", f, "--board", "sonoff-pow"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no board `sonoff-pow`"),
        "{}",
        text(&out.stderr)
    );

    let out = harness_in(tmp.path(), &["scenario", "run", f, "--board", "basic"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no run selected"),
        "{}",
        text(&out.stderr)
    );

    let out = harness_in(tmp.path(), &["scenario", "run", f, "--param", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is not `name=value`"),
        "{}",
        text(&out.stderr)
    );
    assert!(!tmp.path().join("runs").exists());
}

/// Every scenario in `scenarios/` passes on the built-in virtual rig, and the run folder's JUnit
/// file is well-formed JUnit (one testcase per run, none failed).
#[test]
fn every_scenario_in_the_repository_passes_on_the_virtual_rig() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files: Vec<String> = std::fs::read_dir(repo_root().join("scenarios"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 8, "{files:?}");
    let out_dir = tmp.path().join("out");
    let mut args = vec!["scenario", "run"];
    args.extend(files.iter().map(String::as_str));
    args.extend(["--out", out_dir.to_str().unwrap()]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
        .current_dir(repo_root())
        .args(&args)
        // The password built into the `-pw` fixture images (fixtures/images/README.md), and a
        // wrong one for scenarios/ota-password-refused.toml.
        .env("HIL_OTA_PASSWORD", "hil-test")
        .env("HIL_OTA_WRONG_PASSWORD", "not-the-password")
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let report = json(&out_dir.join("report.json"));
    assert_eq!(report["complete"], true);
    assert_eq!(report["counts"]["fail"], 0, "{report}");
    assert_eq!(report["counts"]["error"], 0, "{report}");
    assert_eq!(report["counts"]["skipped"], 0, "{report}");
    let runs = report["runs"].as_array().unwrap().len();
    let junit = std::fs::read_to_string(out_dir.join("junit.xml")).unwrap();
    let parsed = quick_junit::Report::deserialize_from_str(&junit).unwrap();
    assert_eq!(
        (parsed.tests as usize, parsed.failures, parsed.errors),
        (runs, 0, 0)
    );
}

/// A nightly job may rebuild or upgrade the harness while a run goes on: the runs after that
/// still start their simulators from the binary the process runs, not from its old path.
#[test]
fn a_binary_deleted_during_a_run_still_starts_its_simulators() {
    // A hard link, not a copy: a copy holds a write descriptor that a process another test
    // forks at that moment inherits, and exec of a file open for writing fails (ETXTBSY).
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let exe = tmp.path().join("harness");
    std::fs::hard_link(env!("CARGO_BIN_EXE_harness"), &exe).unwrap();
    let out_dir = tmp.path().join("out");
    let child = std::process::Command::new(&exe)
        .current_dir(repo_root())
        .args([
            "scenario",
            "run",
            "scenarios/seed-4ch-first-ota-after-serial-flash.toml",
            "--out",
        ])
        .arg(&out_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The process runs (spawn returns after exec); its file goes before any simulator starts.
    std::fs::remove_file(&exe).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 0);
    let report = json(&out_dir.join("report.json"));
    assert_eq!(report["complete"], true);
}
