//! Bad input through the binary: every message names the problem and where (file, offset, line,
//! key), and nothing panics. Corrupt captures are data (exit 0, a report); unreadable files and
//! unusable images or config are harness errors (exit 2); an image that parses but would not
//! boot is a lint failure (exit 1).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn harness_in<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("the harness binary runs")
}

fn harness<S: AsRef<OsStr>>(args: &[S]) -> Output {
    harness_in(&repo_root(), args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks the exit code and that the process did not panic; returns stdout and stderr.
fn expect(out: &Output, code: i32, what: &str) -> (String, String) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        !stderr.contains("panicked"),
        "{what}: the harness panicked:\n{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}:\nstdout: {stdout}\nstderr: {stderr}"
    );
    (stdout, stderr)
}

// ---------------------------------------------------------------------------------------------
// Boot logs

#[test]
fn truncated_and_garbage_captures_still_get_a_report() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = std::fs::read(repo_root().join("fixtures/seed/basic-attempt1.log")).unwrap();
    let crash = std::fs::read(repo_root().join("fixtures/corpus/exception-crash-01.log")).unwrap();
    let banner = b"ets Jan  8 2013,rst cause:2, boot mode:(3,6)";
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("banner cut mid-word", banner[..20].to_vec()),
        ("seed cut after one byte", seed[..1].to_vec()),
        ("seed cut in the middle", seed[..seed.len() / 2].to_vec()),
        (
            "crash dump cut short",
            crash[..crash.len() * 2 / 3].to_vec(),
        ),
        ("only NULs", vec![0; 5000]),
        ("only CRs", vec![b'\r'; 5000]),
        ("invalid UTF-8 without newline", vec![0xFF; 100_000]),
        (
            "line noise",
            (0..50_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
                .collect(),
        ),
    ];
    // A multi-byte character cut in half at the end of the capture.
    let mut cut_utf8 = b"app says caf\xc3".to_vec();
    cut_utf8.splice(0..0, banner.iter().copied().chain(*b"\r\n"));
    cases.push(("UTF-8 cut in half", cut_utf8));

    for (label, bytes) in &cases {
        let path = tmp.path().join("capture.log");
        std::fs::write(&path, bytes).unwrap();
        let out = harness(&[OsStr::new("triage"), path.as_os_str()]);
        let (stdout, _) = expect(&out, 0, label);
        assert!(
            stdout.contains("Remedy:") && stdout.contains("capture.log"),
            "{label}: {stdout}"
        );
        let out = harness(&[
            OsStr::new("triage"),
            OsStr::new("-f"),
            OsStr::new("json"),
            path.as_os_str(),
        ]);
        let (stdout, _) = expect(&out, 0, label);
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
        assert!(v["class"].is_string(), "{label}: {v}");
        assert!(v["total_lines"].as_u64().is_some(), "{label}: {v}");
    }
}

#[test]
fn a_directory_or_a_missing_file_among_captures_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = repo_root().join("fixtures/seed/basic-attempt1.log");
    let dir = tmp.path().join("captures");
    std::fs::create_dir(&dir).unwrap();
    let out = harness(&[OsStr::new("triage"), seed.as_os_str(), dir.as_os_str()]);
    let (_, stderr) = expect(&out, 2, "directory");
    assert!(
        stderr.contains(&format!("cannot read capture `{}`", dir.display())),
        "{stderr}"
    );
    assert!(stderr.contains("Is a directory"), "{stderr}");

    let missing = tmp.path().join("gone.log");
    let out = harness(&[OsStr::new("triage"), seed.as_os_str(), missing.as_os_str()]);
    let (_, stderr) = expect(&out, 2, "missing second file");
    assert!(
        stderr.contains(&format!("cannot open capture `{}`", missing.display())),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Images: every header field corrupted in turn

/// The combined fixture: eboot's header at 0x0, the app's at 0x1000.
fn fixture_image() -> Vec<u8> {
    std::fs::read(repo_root().join("fixtures/images/sonoff-ota-1.0.0-webserver.bin")).unwrap()
}

fn inspect(tmp: &Path, bytes: &[u8]) -> Output {
    let path = tmp.join("corrupt.bin");
    std::fs::write(&path, bytes).unwrap();
    harness(&[OsStr::new("image"), OsStr::new("inspect"), path.as_os_str()])
}

/// Corrupts with `change`, runs `image inspect`, expects `code` and every piece of `want` in
/// the output (stderr for exit 2, stdout for exit 1).
fn corrupt(tmp: &Path, label: &str, change: impl Fn(&mut Vec<u8>), code: i32, want: &[&str]) {
    let mut bytes = fixture_image();
    change(&mut bytes);
    let out = inspect(tmp, &bytes);
    let (stdout, stderr) = expect(&out, code, label);
    let shown = if code == 2 { stderr } else { stdout };
    for w in want {
        assert!(shown.contains(w), "{label}: no `{w}` in\n{shown}");
    }
}

#[test]
fn every_header_field_corrupted_in_turn_is_named_with_its_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for base in [0usize, 0x1000] {
        let at = |o: usize| format!("offset {:#x}", base + o);
        corrupt(
            dir,
            "magic",
            |b| b[base] = 0x00,
            2,
            &["bad magic 0x00", &at(0), "expected 0xe9"],
        );
        corrupt(
            dir,
            "segment count 0",
            |b| b[base + 1] = 0,
            2,
            &["segment count 0", &at(1)],
        );
        corrupt(
            dir,
            "absurd segment count",
            |b| b[base + 1] = 200,
            2,
            &["segment count 200", &at(1), "at most 16"],
        );
        for mode in 4..=255u8 {
            let value = format!("unknown flash mode {mode:#04x}");
            corrupt(
                dir,
                "flash mode",
                |b| b[base + 2] = mode,
                2,
                &[&value, &at(2)],
            );
        }
        for nibble in [0x7u8, 0xA, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let value = format!("unknown flash size nibble {nibble:#x}");
            let change = |b: &mut Vec<u8>| b[base + 3] = nibble << 4 | (b[base + 3] & 0xF);
            corrupt(dir, "size nibble", change, 2, &[&value, &at(3)]);
        }
        for nibble in 3..=0xEu8 {
            let value = format!("unknown flash frequency nibble {nibble:#x}");
            let change = |b: &mut Vec<u8>| b[base + 3] = (b[base + 3] & 0xF0) | nibble;
            corrupt(dir, "freq nibble", change, 2, &[&value, &at(3)]);
        }
        for entry in [0u32, 0xFFFF_FFFF, 0x4020_1010] {
            let value = format!("entry point {entry:#010x}");
            let change =
                |b: &mut Vec<u8>| b[base + 4..base + 8].copy_from_slice(&entry.to_le_bytes());
            corrupt(
                dir,
                "entry point",
                change,
                1,
                &["entry-point", &value, &at(4)],
            );
        }
        corrupt(
            dir,
            "first segment longer than the file",
            |b| b[base + 12..base + 16].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes()),
            2,
            &[
                "segment 0",
                "header at ",
                &at(8),
                "declares 4294967280 bytes",
            ],
        );
    }
    // The checksum bytes: eboot's ends its image at 0x57f, the app's ends the file.
    let len = fixture_image().len();
    corrupt(
        dir,
        "eboot checksum",
        |b| b[0x57F] ^= 0xFF,
        1,
        &["boot-checksum", "at offset 0x57f", "will not boot it"],
    );
    corrupt(
        dir,
        "app checksum",
        |b| b[len - 1] ^= 0xFF,
        1,
        &["app-checksum", &format!("at offset {:#x}", len - 1)],
    );
}

// ---------------------------------------------------------------------------------------------
// Scenario and rig files

const HEADER: &str = "name = \"x\"\ndescription = \"y\"\nboards = [\"sonoff-basic\"]\n";

fn check_scenario(tmp: &Path, body: &str) -> String {
    std::fs::write(tmp.join("bad.toml"), format!("{HEADER}{body}")).unwrap();
    let out = harness_in(tmp, &["scenario", "check", "bad.toml"]);
    let (_, stderr) = expect(&out, 2, body);
    stderr
}

#[test]
fn bad_scenario_files_name_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Wrong type: line 5 is `power = 3`, the value at column 9.
    let e = check_scenario(dir, "\n[[step]]\npower = 3\n");
    assert!(
        e.contains(
            "bad.toml:6:9: key `step[0].power`: invalid type: integer `3`, expected a string"
        ),
        "{e}"
    );
    // toml's own excerpt is not repeated under the message.
    assert_eq!(e.matches("invalid type").count(), 1, "{e}");
    // Wrong type deep inside a repeat.
    let e = check_scenario(
        dir,
        "requires = [\"power\"]\n[[step]]\nrepeat = { times = 2, steps = [ { wait = \"1s\" }, { wait = 5 } ] }\n",
    );
    assert!(
        e.contains("bad.toml:6:") && e.contains("key `step[0].repeat.steps[1].wait`"),
        "{e}"
    );
    // Unknown step inside a repeat.
    let e = check_scenario(
        dir,
        "[[step]]\nrepeat = { times = 2, steps = [ { wiat = \"1s\" } ] }\n",
    );
    assert!(
        e.contains("bad.toml:5:") && e.contains("unknown step kind `wiat`"),
        "{e}"
    );
    // Unknown key in a step table.
    let e = check_scenario(dir, "[[step]]\nwait_boot = { timout = \"1s\" }\n");
    assert!(
        e.contains("bad.toml:5:") && e.contains("key `step[0].wait_boot.timout`"),
        "{e}"
    );
    // A missing image: the line, the key and where it looked.
    let e = check_scenario(
        dir,
        "requires = [\"ota-webserver\"]\n[[step]]\nota = { method = \"webserver\", image = \"nope.bin\" }\n",
    );
    assert!(e.contains("bad.toml:6:"), "{e}");
    assert!(e.contains("ota.image") && e.contains("nope.bin"), "{e}");
    assert!(e.contains("looked at ./nope.bin"), "{e}");
    // An unknown board kind.
    std::fs::write(
        dir.join("bad.toml"),
        "name = \"x\"\ndescription = \"y\"\nboards = [\"sonoff-basic\", \"sonoff-pow\"]\n[[step]]\nwait = \"1s\"\n",
    )
    .unwrap();
    let out = harness_in(dir, &["scenario", "check", "bad.toml"]);
    let (_, e) = expect(&out, 2, "unknown board");
    assert!(
        e.contains("bad.toml:3:27: unknown board `sonoff-pow`") && e.contains("sonoff-4ch"),
        "{e}"
    );
}

const RIG_BOARD: &str = "[[board]]\nname = \"b\"\nkind = \"sonoff-basic\"\nbackend = \"virtual\"\n";

fn run_with_rig(tmp: &Path, rig: &str) -> String {
    std::fs::write(tmp.join("rig.toml"), rig).unwrap();
    let scenario = repo_root().join("scenarios/seed-basic-correct-image.toml");
    let out = harness_in(
        tmp,
        &[
            OsStr::new("scenario"),
            OsStr::new("run"),
            scenario.as_os_str(),
            OsStr::new("--rig"),
            OsStr::new("rig.toml"),
        ],
    );
    let (_, stderr) = expect(&out, 2, rig);
    assert!(
        !tmp.join("runs").exists(),
        "nothing runs with a bad rig file"
    );
    stderr
}

#[test]
fn bad_rig_files_name_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let e = run_with_rig(dir, &format!("{RIG_BOARD}{RIG_BOARD}"));
    assert!(
        e.contains("rig.toml:6:8: key `board[1].name`: board name `b` is already used on line 2"),
        "{e}"
    );
    let e = run_with_rig(dir, &RIG_BOARD.replace("sonoff-basic", "sonoff-pow"));
    assert!(
        e.contains("rig.toml:3:8: key `board[0].kind`") && e.contains("sonoff-pow"),
        "{e}"
    );
    let e = run_with_rig(dir, &RIG_BOARD.replace("\"virtual\"", "3"));
    assert!(
        e.contains("rig.toml:4:11: key `board[0].backend`: wanted string or table"),
        "{e}"
    );
    let e = run_with_rig(dir, &format!("{RIG_BOARD}boot = \"sideways\"\n"));
    assert!(
        e.contains("rig.toml:5:") && e.contains("board[0].boot"),
        "{e}"
    );
    let e = run_with_rig(dir, "description = \"nothing\"\n");
    assert!(e.contains("rig.toml") && e.contains("`board`"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Paths that are not UTF-8

/// A directory whose name has the byte 0xFF (not UTF-8), inside `tmp`.
fn non_utf8_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join(OsStr::from_bytes(b"caf\xff-dir"));
    std::fs::create_dir(&dir).unwrap();
    assert!(dir.to_str().is_none());
    dir
}

fn non_utf8_name(dir: &Path, stem: &[u8], ext: &str) -> PathBuf {
    let mut name = OsString::from_vec(stem.to_vec());
    name.push(".");
    name.push(ext);
    dir.join(name)
}

#[test]
fn non_utf8_paths_work_and_are_shown_lossily() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = non_utf8_dir(tmp.path());
    let shown = |p: &Path| p.display().to_string();

    // A capture.
    let capture = non_utf8_name(&dir, b"boot\xfe", "log");
    std::fs::copy(
        repo_root().join("fixtures/seed/basic-attempt1.log"),
        &capture,
    )
    .unwrap();
    let out = harness(&[OsStr::new("triage"), capture.as_os_str()]);
    let (stdout, _) = expect(&out, 0, "triage of a non-UTF-8 path");
    assert!(stdout.contains(&shown(&capture)), "{stdout}");
    let out = harness(&[
        OsStr::new("triage"),
        OsStr::new("-f"),
        OsStr::new("json"),
        capture.as_os_str(),
    ]);
    let (stdout, _) = expect(&out, 0, "JSON triage of a non-UTF-8 path");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["source"], shown(&capture));
    let missing = non_utf8_name(&dir, b"gone\xfe", "log");
    let out = harness(&[OsStr::new("triage"), missing.as_os_str()]);
    let (_, stderr) = expect(&out, 2, "missing non-UTF-8 capture");
    assert!(stderr.contains(&shown(&missing)), "{stderr}");

    // An image: made, inspected, and refused when corrupt, all under the odd name.
    let image = non_utf8_name(&dir, b"fw\xfe", "bin");
    let out = harness(&[
        OsStr::new("image"),
        OsStr::new("make"),
        OsStr::new("--app"),
        OsStr::new("sonoff-ota"),
        OsStr::new("--version"),
        OsStr::new("1.0.0"),
        OsStr::new("--size"),
        OsStr::new("16K"),
        OsStr::new("-o"),
        image.as_os_str(),
    ]);
    let (stdout, _) = expect(&out, 0, "image make to a non-UTF-8 path");
    assert!(stdout.contains(&shown(&image)), "{stdout}");
    for format in ["text", "json"] {
        let out = harness(&[
            OsStr::new("image"),
            OsStr::new("inspect"),
            image.as_os_str(),
            OsStr::new("--board"),
            OsStr::new("sonoff-basic"),
            OsStr::new("--format"),
            OsStr::new(format),
        ]);
        let (stdout, _) = expect(&out, 0, "image inspect of a non-UTF-8 path");
        assert!(stdout.contains(&shown(&image)), "{stdout}");
    }
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[0] = 0;
    std::fs::write(&image, bytes).unwrap();
    let out = harness(&[
        OsStr::new("image"),
        OsStr::new("inspect"),
        image.as_os_str(),
    ]);
    let (_, stderr) = expect(&out, 2, "corrupt image at a non-UTF-8 path");
    assert!(
        stderr.contains(&shown(&image)) && stderr.contains("bad magic"),
        "{stderr}"
    );

    // A scenario whose image sits next to it in the same non-UTF-8 directory.
    std::fs::copy(
        repo_root().join("fixtures/images/sonoff-ota-2.0.0-webserver.bin"),
        dir.join("new.bin"),
    )
    .unwrap();
    let scenario = non_utf8_name(&dir, b"plan\xfe", "toml");
    std::fs::write(
        &scenario,
        "name = \"odd-path\"\ndescription = \"y\"\nboards = [\"sonoff-basic\"]\nrequires = [\"ota-webserver\"]\n[[step]]\nota = { method = \"webserver\", image = \"new.bin\" }\n",
    )
    .unwrap();
    let out = harness_in(
        tmp.path(),
        &[
            OsStr::new("scenario"),
            OsStr::new("check"),
            scenario.as_os_str(),
        ],
    );
    let (stdout, _) = expect(&out, 0, "scenario check of a non-UTF-8 path");
    assert!(stdout.contains("odd-path"), "{stdout}");
    // And one with a mistake: the message still has the (lossy) file name and the line.
    std::fs::write(&scenario, format!("{HEADER}[[step]]\npower = 3\n")).unwrap();
    let out = harness_in(
        tmp.path(),
        &[
            OsStr::new("scenario"),
            OsStr::new("check"),
            scenario.as_os_str(),
        ],
    );
    let (_, stderr) = expect(&out, 2, "bad scenario at a non-UTF-8 path");
    assert!(
        stderr.contains(&format!("{}:5:9", shown(&scenario))),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// A reader that went away (`harness … | head`)

/// Runs the harness with stdout on a pipe whose reading end is already closed, so that its
/// first write fails with EPIPE whatever the timing.
fn harness_into_closed_pipe(args: &[&str]) -> Output {
    let (read, write) = nix::unistd::pipe().expect("a pipe");
    drop(read);
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(args)
        .current_dir(repo_root())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("the harness binary runs")
}

#[test]
fn a_closed_stdout_ends_each_report_quietly() {
    let cases: &[(&[&str], i32)] = &[
        (
            &[
                "scenario",
                "check",
                "scenarios/seed-4ch-first-ota-after-serial-flash.toml",
            ],
            0,
        ),
        (&["triage", "fixtures/seed/4ch-attempt2.log"], 0),
        (
            &[
                "image",
                "inspect",
                "fixtures/images/sonoff-ota-1.0.0-webserver-pw.bin",
            ],
            0,
        ),
        (&["firmware"], 0),
        (&["firmware", "--toml"], 0),
    ];
    for (args, code) in cases {
        let out = harness_into_closed_pipe(args);
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
        assert_eq!(out.status.code(), Some(*code), "{args:?}:\n{stderr}");
        assert!(stderr.trim().is_empty(), "{args:?} complained:\n{stderr}");
    }
}
