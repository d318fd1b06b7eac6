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

#[test]
fn run_without_an_executor_is_a_harness_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let file = repo_root().join("scenarios/seed-4ch-remedy.toml");
    let out = harness_in(tmp.path(), &["scenario", "run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("no executor for rig backend `virtual`"),
        "{stderr}"
    );
    assert!(!tmp.path().join("runs").exists());

    let rig = tmp.path().join("bench.toml");
    std::fs::write(
        &rig,
        "[[board]]\nname = \"b\"\nkind = \"sonoff-4ch\"\nbackend = \"usb-serial\"\nport = \"/dev/ttyUSB0\"\n",
    )
    .unwrap();
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
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no executor for rig backend `usb-serial`"),
        "{}",
        text(&out.stderr)
    );
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn run_rejects_bad_input_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let file = repo_root().join("scenarios/seed-4ch-remedy.toml");
    let f = file.to_str().unwrap();
    let out = harness_in(tmp.path(), &["scenario", "run", f, "--board", "sonoff-pow"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown board `sonoff-pow`"));

    let out = harness_in(
        tmp.path(),
        &["scenario", "run", f, "--board", "sonoff-basic"],
    );
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
}
