//! Scenario files: good files validate into runs; every kind of mistake is an error that names
//! the file, the line and the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::firmware::{FwState, OtaMethod};
use harness::scenario::step::{LONG_PRESS_MARGIN, SHORT_PRESS};
use harness::scenario::{
    self, Capability, LineMatcher, PowerAction, Problem, Refusal, ScenarioError, ScenarioFile,
    StepKind,
};
use harness::triage::Class;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn parse_with(text: &str, overrides: &[(&str, &str)]) -> Result<ScenarioFile, ScenarioError> {
    let overrides: Vec<(String, String)> = overrides
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let root = repo_root();
    scenario::parse(
        text,
        Path::new("scenarios/test.toml"),
        &root.join("scenarios"),
        Some(&root),
        &overrides,
    )
}

fn parse(text: &str) -> Result<ScenarioFile, ScenarioError> {
    parse_with(text, &[])
}

const HEAD: &str = r#"
name = "t"
description = "test"
boards = ["sonoff-4ch"]
requires = ["power", "gpio0", "serial", "ota-arduino", "ota-webserver"]
"#;

fn with_steps(steps: &str) -> String {
    format!("{HEAD}\n{steps}")
}

/// The error, checking that its Display starts with `scenarios/test.toml:<line>:`.
fn error_at(text: &str, line: usize) -> ScenarioError {
    let e = parse(text).expect_err("the scenario must be rejected");
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("scenarios/test.toml:{line}:")),
        "expected line {line}: {shown}"
    );
    assert_eq!(e.location().line, Some(line), "{shown}");
    e
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in text")
        + 1
}

#[test]
fn every_step_kind_validates() {
    let text = with_steps(
        r#"
[params]
old = "fixtures/images/sonoff-ota-1.0.0-webserver.bin"

[[step]]
label = "flash"
flash = { image = "{old}", power_cycle_after = false }
[[step]]
power = "cycle"
[[step]]
button = "press"
[[step]]
button = { hold = "1s 500ms" }
[[step]]
wait_boot = { timeout = "20s" }
[[step]]
expect_line = { contains = "WiFi connected" }
[[step]]
expect_identity = { version = "1.0.0", ota = "webserver", state = "RUN", timeout = "2s" }
[[step]]
enter_update = {}
[[step]]
ota = { method = "arduino", image = "fixtures/images/sonoff-ota-2.0.0-arduino.bin", password_env = "PW" }
[[step]]
expect_ota_refused = { method = "webserver", image = "{old}", reason = "updater-error", code = 11 }
[[step]]
expect_lint_refusal = { image = "fixtures/images/sonoff-ota-1.0.0-4mb-qio.bin", lint = "flash-size-too-big" }
[[step]]
expect_triage = "healthy-boot"
[[step]]
expect_triage = { class = "restart-after-serial-flash", since = "flash" }
[[step]]
wait = "{long_press}"
[[step]]
repeat = { times = 2, steps = [ { power = "off" }, { wait = "1s" } ] }
"#,
    );
    let file = parse(&text).unwrap();
    assert_eq!(file.runs.len(), 1);
    let run = &file.runs[0];
    assert_eq!(run.board, "sonoff-4ch");
    assert!(run.matrix.is_empty());
    let kinds: Vec<&StepKind> = run.steps.iter().map(|s| &s.kind).collect();
    let StepKind::Flash(f) = kinds[0] else {
        panic!("{:?}", kinds[0])
    };
    assert!(!f.power_cycle_after && !f.force);
    assert!(f.image.is_file());
    assert_eq!(
        f.image_display,
        "fixtures/images/sonoff-ota-1.0.0-webserver.bin"
    );
    assert_eq!(run.steps[0].label.as_deref(), Some("flash"));
    assert_eq!(run.steps[0].line, line_of(&text, "flash = {"));
    assert_eq!(kinds[1], &StepKind::Power(PowerAction::Cycle));
    assert_eq!(kinds[2], &StepKind::Button { hold: SHORT_PRESS });
    assert_eq!(
        kinds[3],
        &StepKind::Button {
            hold: Duration::from_millis(1500)
        }
    );
    assert_eq!(
        kinds[4],
        &StepKind::WaitBoot {
            timeout: Duration::from_secs(20)
        }
    );
    let StepKind::ExpectIdentity {
        matcher: LineMatcher::StateLine(want),
        timeout,
    } = kinds[6]
    else {
        panic!("{:?}", kinds[6])
    };
    assert_eq!(want.version.as_deref(), Some("1.0.0"));
    assert_eq!(want.ota, Some(OtaMethod::WebServer));
    assert_eq!(want.state, Some(FwState::Run));
    assert_eq!(*timeout, Duration::from_secs(2));
    let long_press = harness::firmware::behaviour().button.long_press;
    let StepKind::EnterUpdate { hold, .. } = kinds[7] else {
        panic!()
    };
    assert_eq!(*hold, long_press + LONG_PRESS_MARGIN);
    let StepKind::Ota(o) = kinds[8] else { panic!() };
    assert_eq!(o.method, OtaMethod::Arduino);
    assert_eq!(o.password_env.as_deref(), Some("PW"));
    let StepKind::ExpectOtaRefused { reason, code, .. } = kinds[9] else {
        panic!()
    };
    assert_eq!((*reason, *code), (Refusal::UpdaterError, Some(11)));
    assert_eq!(
        kinds[12],
        &StepKind::ExpectTriage {
            class: Class::RestartAfterSerialFlash,
            since: Some("flash".into())
        }
    );
    assert_eq!(kinds[13], &StepKind::Wait(long_press));
    let StepKind::Repeat { times, steps } = kinds[14] else {
        panic!()
    };
    assert_eq!(*times, 2);
    assert_eq!(steps[0].kind, StepKind::Power(PowerAction::Off));
    assert_eq!(
        file.requires,
        Capability::ALL
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
    );
}

#[test]
fn repeat_steps_can_be_written_as_tables() {
    let text = with_steps(
        r#"
[[step]]
repeat.times = 3

[[step.repeat.steps]]
label = "inner"
power = "on"

[[step.repeat.steps]]
expect_triage = { class = "healthy-boot", since = "inner" }
"#,
    );
    let file = parse(&text).unwrap();
    let StepKind::Repeat { times, steps } = &file.runs[0].steps[0].kind else {
        panic!()
    };
    assert_eq!(*times, 3);
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[1].line, line_of(&text, "expect_triage"));
}

#[test]
fn matrix_params_make_one_run_per_value_and_board() {
    let text = r#"
name = "m"
description = "matrix"
boards = ["sonoff-basic", "sonoff-4ch"]
requires = ["ota-arduino", "ota-webserver"]

[params]
method = ["arduino", "webserver"]
version = "2.0.0"

[[step]]
ota = { method = "{method}", image = "fixtures/images/sonoff-ota-{version}-{method}.bin" }
"#;
    let file = parse(text).unwrap();
    assert_eq!(file.runs.len(), 4);
    let got: Vec<(String, String)> = file
        .runs
        .iter()
        .map(|r| (r.board.clone(), r.matrix["method"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("sonoff-basic", "arduino"),
            ("sonoff-basic", "webserver"),
            ("sonoff-4ch", "arduino"),
            ("sonoff-4ch", "webserver")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // Only matrix parameters name a run; all parameters are recorded.
    assert!(!file.runs[0].matrix.contains_key("version"));
    assert_eq!(file.runs[0].params["version"], "2.0.0");
    let StepKind::Ota(o) = &file.runs[1].steps[0].kind else {
        panic!()
    };
    assert_eq!(o.method, OtaMethod::WebServer);
    assert!(o.image.ends_with("sonoff-ota-2.0.0-webserver.bin"));

    // A --param override replaces the matrix by one value.
    let file = parse_with(text, &[("method", "arduino")]).unwrap();
    assert_eq!(file.runs.len(), 2);
    assert!(file.runs.iter().all(|r| r.params["method"] == "arduino"));
    assert!(file.runs[0].matrix.is_empty());
}

#[test]
fn a_matrix_of_millions_of_runs_is_refused_before_it_is_built() {
    // Six ten-value arrays on one board: a million runs from a 400-byte file (it used to be
    // built in full, and ran the harness out of memory).
    let ten = "[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\"]";
    let mut text = format!("{HEAD}\n[params]\n");
    for k in ["a", "b", "c", "d", "e"] {
        text.push_str(&format!("{k} = {ten}\n"));
    }
    text.push_str(
        "f = [\"x\", \"y\", \"z\", \"w\", \"v\", \"u\", \"t\", \"s\", \"r\", \"q\", \"p\"]\n",
    );
    text.push_str("\n[[step]]\nwait = \"1s\"\n");
    let e = error_at(&text, line_of(&text, "f = "));
    assert!(
        e.to_string()
            .ends_with("1 boards × the [params] matrix make 1100000 runs, more than 1024"),
        "{e}"
    );
    assert!(matches!(
        e.problem(),
        Problem::TooManyRuns {
            runs: 1_100_000,
            ..
        }
    ));
    // Fixing parameters on the command line brings it under the limit.
    let ok = parse_with(&text, &[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")]).unwrap();
    assert_eq!(ok.runs.len(), 110);
    let e = parse_with(&text, &[("a", "1"), ("b", "1"), ("c", "1")]).unwrap_err();
    assert!(matches!(
        e.problem(),
        Problem::TooManyRuns { runs: 1100, .. }
    ));
}

#[test]
fn unknown_override_names_the_parameter() {
    let text = with_steps("[params]\na = \"1\"\n[[step]]\nwait = \"1s\"\n");
    let e = parse_with(&text, &[("nope", "x")]).unwrap_err();
    assert!(
        matches!(e.problem(), Problem::UnknownOverride { name, known } if name == "nope" && known == "a"),
        "{e}"
    );
    assert!(scenario::parse_overrides(&["novalue".to_string()]).is_err());
    assert_eq!(
        scenario::parse_overrides(&["pw=".to_string()]).unwrap(),
        [("pw".to_string(), String::new())]
    );
}

#[test]
fn unknown_step_lists_the_valid_kinds_with_file_and_line() {
    let text = with_steps(
        "[[step]]\npower = \"on\"\n\n[[step]]\nlabel = \"x\"\nflsh = { image = \"a.bin\" }\n",
    );
    let e = error_at(&text, line_of(&text, "flsh"));
    assert_eq!(e.location().column, Some(1));
    let shown = e.to_string();
    assert!(shown.contains("unknown step kind `flsh`"), "{shown}");
    for kind in ["power", "button", "flash", "expect_ota_refused", "repeat"] {
        assert!(shown.contains(kind), "{shown}");
    }
    // The miette rendering shows the offending line.
    let rendered = format!("{:?}", miette::Report::new(e));
    assert!(rendered.contains("flsh = { image"), "{rendered}");
}

#[test]
fn unknown_step_inside_a_repeat_points_at_its_line() {
    let text = with_steps(
        "[[step]]\nrepeat = { times = 2, steps = [\n  { power = \"on\" },\n  { pwer = \"off\" },\n] }\n",
    );
    let e = error_at(&text, line_of(&text, "pwer"));
    assert!(matches!(*e.problem(), Problem::UnknownStep { ref kind, .. } if kind == "pwer"));
}

#[test]
fn step_without_or_with_two_kinds() {
    let text = with_steps("[[step]]\nlabel = \"lonely\"\n");
    let e = error_at(&text, line_of(&text, "[[step]]"));
    assert!(matches!(*e.problem(), Problem::NoStepKind { .. }), "{e}");

    let text = with_steps("[[step]]\npower = \"on\"\nwait = \"1s\"\n");
    let e = error_at(&text, line_of(&text, "wait ="));
    assert!(matches!(*e.problem(), Problem::TwoStepKinds { .. }), "{e}");
}

#[test]
fn wrong_type_is_reported_at_the_value() {
    let text = with_steps("[[step]]\nwait_boot = { timeout = 5 }\n");
    let e = error_at(&text, line_of(&text, "wait_boot"));
    assert_eq!(e.location().column, Some(25));
    assert!(matches!(*e.problem(), Problem::Toml { .. }));
    assert!(e.to_string().contains("expected a string"), "{e}");

    let text = with_steps("[[step]]\nflash = { image = \"x.bin\", power_cycle_after = \"no\" }\n");
    let e = error_at(&text, line_of(&text, "flash"));
    assert!(e.to_string().contains("expected a boolean"), "{e}");
}

#[test]
fn unknown_key_inside_a_step_is_named() {
    let text = with_steps("[[step]]\nexpect_line = { contains = \"x\", timout = \"1s\" }\n");
    let e = error_at(&text, line_of(&text, "timout"));
    assert!(e.to_string().contains("unknown field `timout`"), "{e}");
}

#[test]
fn bad_values_name_key_value_and_choices() {
    for (step, key, expected) in [
        (
            "power = \"reboot\"",
            "`power` is `reboot`",
            "on, off or cycle",
        ),
        (
            "expect_identity = { state = \"RUNNING\" }",
            "`expect_identity.state` is `RUNNING`",
            "RUN or UPDATE",
        ),
        (
            "ota = { method = \"ftp\", image = \"x.bin\" }",
            "`ota.method` is `ftp`",
            "arduino or webserver",
        ),
        (
            "expect_ota_refused = { method = \"arduino\", image = \"fixtures/images/sonoff-ota-2.0.0-arduino.bin\", reason = \"busy\" }",
            "`expect_ota_refused.reason` is `busy`",
            "not-in-update-state",
        ),
    ] {
        let text = with_steps(&format!("[[step]]\n{step}\n"));
        let e = error_at(&text, line_of(&text, step));
        let shown = e.to_string();
        assert!(shown.contains(key) && shown.contains(expected), "{shown}");
    }
}

#[test]
fn bad_duration_names_the_value() {
    let text = with_steps("[[step]]\nwait = \"5 parsecs\"\n");
    let e = error_at(&text, line_of(&text, "parsecs"));
    assert_eq!(e.location().column, Some(8));
    assert!(
        matches!(e.problem(), Problem::BadDuration { key, value, .. } if key == "wait" && value == "5 parsecs"),
        "{e}"
    );
}

#[test]
fn missing_image_lists_where_it_looked() {
    let text = with_steps("[[step]]\nflash = { image = \"fixtures/images/nope.bin\" }\n");
    let e = error_at(&text, line_of(&text, "nope.bin"));
    let Problem::MissingImage { key, path, tried } = e.problem() else {
        panic!("{e}")
    };
    assert_eq!(key, "flash.image");
    assert_eq!(path, "fixtures/images/nope.bin");
    assert!(
        tried.contains("scenarios/fixtures/images/nope.bin"),
        "{tried}"
    );
    assert!(tried.contains(", "), "both places: {tried}");
}

#[test]
fn image_the_lint_refuses_needs_force() {
    let img = "fixtures/images/sonoff-ota-1.0.0-4mb-qio.bin";
    let text = with_steps(&format!("[[step]]\nflash = {{ image = \"{img}\" }}\n"));
    let e = error_at(&text, line_of(&text, img));
    let Problem::ImageDoesNotFit { board, lints, .. } = e.problem() else {
        panic!("{e}")
    };
    assert_eq!(board, "sonoff-4ch");
    assert!(lints.contains("flash-size-too-big"), "{lints}");
    assert!(lints.contains("flash-mode-unsupported"), "{lints}");

    let text = with_steps(&format!(
        "[[step]]\nflash = {{ image = \"{img}\", force = true }}\n"
    ));
    let file = parse(&text).unwrap();
    let StepKind::Flash(f) = &file.runs[0].steps[0].kind else {
        panic!()
    };
    assert!(f.force);
}

#[test]
fn not_an_image_is_rejected() {
    let text = with_steps("[[step]]\nflash = { image = \"fixtures/images/README.md\" }\n");
    let e = error_at(&text, line_of(&text, "README"));
    assert!(matches!(*e.problem(), Problem::BadImage { .. }), "{e}");
}

#[test]
fn unknown_triage_class_lists_the_classes() {
    let text = with_steps("[[step]]\nexpect_triage = \"bricked\"\n");
    let e = error_at(&text, line_of(&text, "bricked"));
    let shown = e.to_string();
    assert!(shown.contains("`bricked`"), "{shown}");
    assert!(shown.contains("restart-after-serial-flash"), "{shown}");

    let text = with_steps("[[step]]\nexpect_triage = { class = \"wdt\" }\n");
    let e = error_at(&text, line_of(&text, "wdt"));
    assert!(matches!(*e.problem(), Problem::UnknownClass { .. }));
}

#[test]
fn unknown_lint_lists_the_lints() {
    let text = with_steps(
        "[[step]]\nexpect_lint_refusal = { image = \"fixtures/images/sonoff-ota-1.0.0-4mb-qio.bin\", lint = \"too-big\" }\n",
    );
    let e = error_at(&text, line_of(&text, "too-big"));
    assert!(e.to_string().contains("flash-size-too-big"), "{e}");
}

#[test]
fn unknown_param_names_the_placeholder() {
    let text = with_steps(
        "[params]\nold = \"a.bin\"\n\n[[step]]\nflash = { image = \"fixtures/images/{olde}\" }\n",
    );
    let e = error_at(&text, line_of(&text, "{olde}"));
    let Problem::UnknownParam { key, name, known } = e.problem() else {
        panic!("{e}")
    };
    assert_eq!((key.as_str(), name.as_str()), ("flash.image", "olde"));
    assert!(known.contains("old") && known.contains("board"), "{known}");

    let text = with_steps("[[step]]\nexpect_line = { contains = \"{oops\" }\n");
    let e = error_at(&text, line_of(&text, "{oops"));
    assert!(matches!(*e.problem(), Problem::UnclosedPlaceholder { .. }));
}

#[test]
fn builtin_params_cannot_be_redeclared() {
    let text = with_steps("[params]\nboard = \"x\"\n[[step]]\nwait = \"1s\"\n");
    let e = error_at(&text, line_of(&text, "board = \"x\""));
    assert!(e.to_string().contains("built-ins"), "{e}");
}

#[test]
fn labels_are_unique_and_since_needs_an_earlier_one() {
    let text = with_steps(
        "[[step]]\nlabel = \"a\"\npower = \"on\"\n[[step]]\nlabel = \"a\"\npower = \"off\"\n",
    );
    let e = parse(&text).unwrap_err();
    assert!(
        matches!(*e.problem(), Problem::DuplicateLabel { first_line, .. } if first_line == line_of(&text, "power = \"on\"")),
        "{e}"
    );

    let text = with_steps(
        "[[step]]\nexpect_triage = { class = \"healthy-boot\", since = \"later\" }\n[[step]]\nlabel = \"later\"\npower = \"on\"\n",
    );
    let e = error_at(&text, line_of(&text, "since"));
    assert!(matches!(*e.problem(), Problem::UnknownLabel { .. }), "{e}");
}

#[test]
fn steps_need_their_capabilities_in_requires() {
    let text = r#"
name = "c"
description = "caps"
boards = ["sonoff-basic"]
requires = ["serial"]

[[step]]
power = "cycle"
"#;
    let e = parse(text).unwrap_err();
    assert_eq!(e.location().line, Some(8));
    assert!(
        matches!(
            e.problem(),
            Problem::MissingCapability {
                step: "power",
                capability: "power"
            }
        ),
        "{e}"
    );
}

#[test]
fn header_mistakes() {
    let e = parse(
        "name = \"x\"\ndescription = \"y\"\nboards = [\"sonoff-pow\"]\n[[step]]\nwait = \"1s\"\n",
    )
    .unwrap_err();
    assert_eq!(e.location().line, Some(3));
    assert!(e.to_string().contains("sonoff-basic"), "{e}");

    let e = parse("name = \"x\"\ndescription = \"y\"\nboards = [\"sonoff-basic\"]\nrequires = [\"relay\"]\n[[step]]\nwait = \"1s\"\n")
        .unwrap_err();
    assert_eq!(e.location().line, Some(4));
    assert!(e.to_string().contains("ota-webserver"), "{e}");

    let e = parse("name = \"x\"\ndescription = \"y\"\nboards = [\"sonoff-basic\"]\n").unwrap_err();
    assert!(
        matches!(*e.problem(), Problem::Empty { ref key } if key == "step"),
        "{e}"
    );

    let e =
        parse("name = \"x\"\nboards = [\"sonoff-basic\"]\n[[step]]\nwait = \"1s\"\n").unwrap_err();
    assert!(e.to_string().contains("missing field `description`"), "{e}");

    let e = parse(
        "name = \"x\"\ndescription = \"y\"\nboards = [\"sonoff-basic\"]\nrequirements = []\n",
    )
    .unwrap_err();
    assert_eq!(e.location().line, Some(4));
    assert!(
        e.to_string().contains("unknown field `requirements`"),
        "{e}"
    );
}

#[test]
fn syntax_error_has_a_line() {
    let e = parse("name = \"x\ndescription = \"y\"\n").unwrap_err();
    assert_eq!(e.location().line, Some(1));
}

#[test]
fn board_placeholder_is_the_run_board() {
    let text = r#"
name = "b"
description = "board placeholder"
boards = ["sonoff-basic", "sonoff-4ch"]
requires = ["serial"]

[[step]]
expect_line = { contains = "board {board}" }
"#;
    let file = parse(text).unwrap();
    let lines: Vec<String> = file
        .runs
        .iter()
        .map(|r| match &r.steps[0].kind {
            StepKind::ExpectLine {
                matcher: LineMatcher::Contains(c),
                ..
            } => c.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(lines, ["board sonoff-basic", "board sonoff-4ch"]);
}

#[test]
fn load_reads_a_file_and_reports_unreadable_ones() {
    let root = repo_root();
    let file = scenario::load(&root.join("scenarios/seed-4ch-remedy.toml"), &[]).unwrap();
    assert_eq!(file.name, "seed-4ch-remedy");
    let e = scenario::load(&root.join("scenarios/does-not-exist.toml"), &[]).unwrap_err();
    assert!(matches!(*e.problem(), Problem::Read(_)), "{e}");
    assert!(e.to_string().contains("does-not-exist.toml"), "{e}");
}
