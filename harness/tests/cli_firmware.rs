//! `harness firmware` end to end: runs the built binary.

use std::process::{Command, Output};

fn harness(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("the harness binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn summary_names_thresholds_and_ports() {
    let out = harness(&["firmware"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("115200 baud"), "{text}");
    assert!(text.contains("long press 3000 ms"), "{text}");
    assert!(text.contains("timeout 120000 ms"), "{text}");
    assert!(
        text.contains("UDP 8266 (outside UPDATE: no reply)"),
        "{text}"
    );
    assert!(text.contains("TCP 80 /update field `firmware` (outside UPDATE: connection refused)"));
}

#[test]
fn state_line_written_and_read_back() {
    let out = harness(&[
        "firmware",
        "--state",
        "update",
        "--ota",
        "webserver",
        "--fw-version",
        "2.1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let line = stdout(&out);
    assert_eq!(
        line,
        "HILFW app=sonoff-ota version=2.1 ota=webserver state=UPDATE\n"
    );

    let out = harness(&["firmware", "--parse", line.trim_end()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out),
        "state: UPDATE\nidentity: HILFW app=sonoff-ota version=2.1 ota=webserver\n"
    );
}

#[test]
fn bad_state_line_is_a_harness_error_naming_the_column() {
    let out = harness(&[
        "firmware",
        "--parse",
        "HILFW app=sonoff-ota version=1 ota=arduino state=NAP",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown firmware state `NAP` at column 49"),
        "{err}"
    );

    let out = harness(&[
        "firmware",
        "--parse",
        "ets Jan  8 2013,rst cause:2, boot mode:(3,6)",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a firmware state line"));
}

#[test]
fn toml_is_the_embedded_file() {
    let out = harness(&["firmware", "--toml"]);
    assert!(out.status.success());
    let file = include_str!("../../firmware/behaviour.toml");
    assert_eq!(stdout(&out), file);
}
