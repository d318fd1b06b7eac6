//! The runner driven by the `FakeExecutor`: pass, fail in the middle, panics, errors, repeats,
//! matrices, skips, and the capture marks it passes to line waits.

use std::path::{Path, PathBuf};

use harness::firmware::{self, FwState, OtaMethod};
use harness::report::{RunReport, RunStatus, StepStatus};
use harness::scenario::fake::{Action, Call, Reply};
use harness::scenario::{
    self, Capability, CaptureMark, ExecError, Executor, FakeExecutor, LineMatcher, LineWait,
    OtaOutcome, Progress, Refusal, Scenario, ScenarioFile,
};
use harness::triage::Class;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn file(text: &str) -> ScenarioFile {
    let root = repo_root();
    scenario::parse(
        text,
        Path::new("scenarios/test.toml"),
        &root.join("scenarios"),
        Some(&root),
        &[],
    )
    .unwrap_or_else(|e| panic!("{:?}", miette::Report::new(e)))
}

fn one(text: &str) -> Scenario {
    let f = file(text);
    assert_eq!(f.runs.len(), 1);
    f.runs[0].clone()
}

const REMEDY: &str = r#"
name = "remedy"
description = "power cycle after the serial flash"
boards = ["sonoff-4ch"]
requires = ["power", "gpio0", "serial", "ota-webserver"]

[[step]]
flash = { image = "fixtures/images/sonoff-ota-1.0.0-webserver.bin" }
[[step]]
expect_identity = { version = "1.0.0", state = "RUN" }
[[step]]
enter_update = {}
[[step]]
label = "ota"
ota = { method = "webserver", image = "fixtures/images/sonoff-ota-2.0.0-webserver.bin" }
[[step]]
wait_boot = {}
[[step]]
expect_identity = { version = "2.0.0", state = "RUN" }
[[step]]
expect_triage = { class = "healthy-boot", since = "ota" }
"#;

fn run(s: &Scenario, fake: &mut FakeExecutor) -> (RunReport, Vec<String>) {
    let mut events = Vec::new();
    let report = scenario::run(s, fake, &mut |p| {
        events.push(match p {
            Progress::RunStarted { scenario } => format!("run {}", scenario.name),
            Progress::StepStarted { id, .. } => format!("start {id}"),
            Progress::StepFinished { report } => {
                format!("end {} {}", report.id, report.status.word())
            }
            Progress::RunFinished { report } => format!("done {}", report.status.word()),
        })
    });
    (report, events)
}

fn statuses(r: &RunReport) -> Vec<StepStatus> {
    r.steps.iter().map(|s| s.status).collect()
}

fn healthy_capture() -> Vec<u8> {
    std::fs::read(repo_root().join("fixtures/corpus/healthy-boot-01.log")).unwrap()
}

#[test]
fn passing_run_reports_every_step() {
    let s = one(REMEDY);
    let mut fake = FakeExecutor::new()
        .with_capture(healthy_capture())
        .with_capture_path("/captures/remedy.log");
    let (report, events) = run(&s, &mut fake);
    assert_eq!(report.status, RunStatus::Pass, "{report:#?}");
    assert_eq!(statuses(&report), vec![StepStatus::Pass; 7]);
    assert!(report.steps.iter().all(|s| s.duration.is_some()));
    assert_eq!(report.backend, "fake");
    assert_eq!(
        report.capture.as_deref(),
        Some(Path::new("/captures/remedy.log"))
    );
    assert_eq!(report.triage.as_ref().unwrap().class, Class::HealthyBoot);
    // Expectation and observation of a line step.
    let id = &report.steps[1];
    assert_eq!(
        id.expected.as_deref(),
        Some("state line with version=1.0.0 state=RUN within 5s")
    );
    assert!(id.observed.as_deref().unwrap().contains("version=1.0.0"));
    assert_eq!(
        events.first().map(String::as_str),
        Some("run remedy"),
        "{events:?}"
    );
    assert_eq!(events.last().map(String::as_str), Some("done PASS"));
    assert_eq!(events.iter().filter(|e| e.starts_with("start")).count(), 7);

    // The calls, in order: enter_update is a long press then a state=UPDATE wait from the mark
    // taken before the press; safe state comes last.
    let calls = fake.calls();
    assert_eq!(calls.last(), Some(&Call::SafeState));
    let hold = firmware::behaviour().button.long_press + scenario::step::LONG_PRESS_MARGIN;
    let press = calls
        .iter()
        .position(|c| *c == Call::Button(hold))
        .expect("long press");
    let Call::Mark(before_press) = calls[press - 1] else {
        panic!("a mark before the press: {calls:?}")
    };
    let Call::WaitLine { from, matcher, .. } = &calls[press + 1] else {
        panic!("{calls:?}")
    };
    let LineMatcher::StateLine(want) = matcher else {
        panic!()
    };
    assert_eq!(want.state, Some(FwState::Update));
    assert_eq!(
        *from, before_press,
        "the wait starts where the press started"
    );
    let ota = calls
        .iter()
        .find_map(|c| match c {
            Call::Ota {
                method,
                image,
                password,
            } => Some((*method, image.clone(), password.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(ota.0, OtaMethod::WebServer);
    assert!(ota.1.ends_with("sonoff-ota-2.0.0-webserver.bin"));
    assert_eq!(ota.2, None);
}

#[test]
fn failure_in_the_middle_marks_the_rest_not_run() {
    let s = one(REMEDY);
    let mut fake = FakeExecutor::new().reply(
        Action::Ota,
        Reply::Ota(OtaOutcome::Refused {
            reason: Refusal::UpdaterError,
            code: Some(11),
            detail: "Update error: ERROR[11]: Invalid bootstrapping state".into(),
        }),
    );
    let (report, events) = run(&s, &mut fake);
    assert_eq!(report.status, RunStatus::Fail);
    assert_eq!(
        statuses(&report),
        [
            StepStatus::Pass,
            StepStatus::Pass,
            StepStatus::Pass,
            StepStatus::Fail,
            StepStatus::NotRun,
            StepStatus::NotRun,
            StepStatus::NotRun
        ]
    );
    let failed = report.culprit().unwrap();
    assert_eq!(failed.id, "4");
    assert_eq!(failed.label.as_deref(), Some("ota"));
    assert_eq!(failed.expected.as_deref(), Some("upload accepted"));
    assert_eq!(
        failed.observed.as_deref(),
        Some(
            "refused (updater-error ERROR[11]): Update error: ERROR[11]: Invalid bootstrapping state"
        )
    );
    assert!(report.steps[4..].iter().all(|s| s.duration.is_none()));
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .starts_with("step 4 (OTA webserver")
    );
    // Nothing after the failed step was done, but the capture was triaged and the board made safe.
    assert!(
        !fake
            .calls()
            .iter()
            .any(|c| matches!(c, Call::WaitBoot { .. }))
    );
    assert!(report.triage.is_some());
    assert_eq!(fake.calls().last(), Some(&Call::SafeState));
    assert!(!events.iter().any(|e| e == "start 5"));
}

#[test]
fn line_timeout_reports_the_last_state_line_seen() {
    let s = one(REMEDY);
    let old = firmware::behaviour().state_line("1.0.0", OtaMethod::WebServer, FwState::Run);
    let mut fake = FakeExecutor::new();
    fake.push(
        Action::WaitLine,
        Reply::Line(LineWait::Seen {
            line: old.clone(),
            end: CaptureMark(50),
        }),
    );
    fake.push(
        Action::WaitLine,
        Reply::Line(LineWait::Seen {
            line: "HILFW app=sonoff-ota version=1.0.0 ota=webserver state=UPDATE".into(),
            end: CaptureMark(60),
        }),
    );
    fake.push(
        Action::WaitLine,
        Reply::Line(LineWait::Timeout {
            last_line: Some("WiFi connected ip=10.0.0.7".into()),
            last_candidate: Some(old.clone()),
        }),
    );
    let (report, _) = run(&s, &mut fake);
    assert_eq!(report.status, RunStatus::Fail);
    let failed = report.culprit().unwrap();
    assert_eq!(failed.id, "6");
    assert_eq!(
        failed.observed.as_deref().unwrap(),
        format!("not seen within 5s; last such line: `{old}`")
    );
    // Each wait started after the line the previous one matched (marks 50 and 60), not at the
    // start of the capture.
    let froms: Vec<u64> = fake
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::WaitLine { from, .. } => Some(from.0),
            _ => None,
        })
        .collect();
    assert_eq!(froms.len(), 3);
    assert!(froms[1] > 50 && froms[2] > 60, "{froms:?}");
    assert_eq!(fake.unused_replies(), 0);
}

#[test]
fn panic_in_a_step_is_an_error_and_safe_state_still_runs() {
    let s = one(REMEDY);
    let mut fake =
        FakeExecutor::new().reply(Action::Ota, Reply::Panic("socket table exploded".into()));
    let (report, _) = run(&s, &mut fake);
    assert_eq!(report.status, RunStatus::Error);
    let step = &report.steps[3];
    assert_eq!(step.status, StepStatus::Error);
    assert_eq!(step.error.as_deref(), Some("panic: socket table exploded"));
    assert!(
        report.steps[4..]
            .iter()
            .all(|s| s.status == StepStatus::NotRun)
    );
    assert_eq!(fake.calls().last(), Some(&Call::SafeState));
}

#[test]
fn harness_error_in_a_step_keeps_its_cause() {
    let s = one(REMEDY);
    let cause = std::io::Error::new(std::io::ErrorKind::NotFound, "/dev/ttyUSB0 vanished");
    let mut fake = FakeExecutor::new().reply(
        Action::Flash,
        Reply::Fail(ExecError::Failed {
            action: "serial flash",
            source: Box::new(cause),
        }),
    );
    let (report, _) = run(&s, &mut fake);
    assert_eq!(report.status, RunStatus::Error);
    assert_eq!(
        report.steps[0].error.as_deref(),
        Some("serial flash failed: /dev/ttyUSB0 vanished")
    );
}

#[test]
fn safe_state_failure_is_a_harness_error_even_after_a_pass() {
    let s = one(REMEDY);
    let mut fake = FakeExecutor::new().with_capture(healthy_capture()).reply(
        Action::SafeState,
        Reply::Fail(ExecError::Unsupported {
            what: "release GPIO0".into(),
        }),
    );
    let (report, _) = run(&s, &mut fake);
    assert!(report.steps.iter().all(|s| s.status == StepStatus::Pass));
    assert_eq!(report.status, RunStatus::Error);
    assert_eq!(
        report.harness_errors,
        ["safe state: the rig cannot release GPIO0"]
    );
}

#[test]
fn panic_in_safe_state_is_caught() {
    let s = one(REMEDY);
    let mut fake = FakeExecutor::new().reply(Action::SafeState, Reply::Panic("relay stuck".into()));
    let (report, _) = run(&s, &mut fake);
    assert_eq!(report.status, RunStatus::Error);
    assert_eq!(report.harness_errors, ["safe state: panic: relay stuck"]);
}

#[test]
fn missing_capability_skips_with_a_reason() {
    let s = one(REMEDY);
    let mut fake =
        FakeExecutor::new().with_capabilities([Capability::Serial, Capability::OtaWebserver]);
    let (report, _) = run(&s, &mut fake);
    assert_eq!(report.status, RunStatus::Skipped);
    assert_eq!(
        report.reason.as_deref(),
        Some("the fake rig for sonoff-4ch lacks power, gpio0")
    );
    assert!(report.steps.iter().all(|s| s.status == StepStatus::Skipped));
    // Nothing was done to the board, but it was still put in the safe state.
    assert_eq!(fake.calls(), [Call::SafeState]);
}

#[test]
fn repeat_runs_iterations_and_stops_at_the_first_failure() {
    let s = one(r#"
name = "soak"
description = "repeat"
boards = ["sonoff-basic"]
requires = ["power", "gpio0", "serial", "ota-webserver"]

[[step]]
repeat = { times = 5, steps = [
  { enter_update = {} },
  { label = "up", ota = { method = "webserver", image = "fixtures/images/sonoff-ota-2.0.0-webserver.bin" } },
  { expect_triage = { class = "healthy-boot", since = "up" } },
] }
[[step]]
power = "off"
"#);
    let mut fake = FakeExecutor::new().with_capture(healthy_capture());
    let (report, events) = run(&s, &mut fake);
    assert_eq!(report.status, RunStatus::Pass, "{report:#?}");
    let repeat = &report.steps[0];
    assert_eq!(repeat.children.len(), 5);
    assert_eq!(repeat.children[4].id, "1.5");
    assert_eq!(repeat.children[4].children[2].id, "1.5.3");
    assert_eq!(repeat.observed.as_deref(), Some("5 of 5 iterations passed"));
    assert!(events.contains(&"end 1.3.2 pass".to_string()), "{events:?}");
    // `since = "up"` triages from the mark taken at the start of the latest `up` step.
    let triage_froms: Vec<u64> = fake
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::Triage { from } => Some(from.0),
            _ => None,
        })
        .collect();
    assert_eq!(triage_froms.len(), 6, "5 expect_triage + the final triage");
    assert!(
        triage_froms.windows(2).take(4).all(|w| w[0] < w[1]),
        "{triage_froms:?}"
    );

    // Third upload refused: iteration 3 fails, 4 and 5 do not run, neither does step 2.
    let mut fake = FakeExecutor::new().with_capture(healthy_capture());
    fake.push(
        Action::Ota,
        Reply::Ota(OtaOutcome::Accepted {
            detail: "ok".into(),
        }),
    );
    fake.push(
        Action::Ota,
        Reply::Ota(OtaOutcome::Accepted {
            detail: "ok".into(),
        }),
    );
    fake.push(
        Action::Ota,
        Reply::Ota(OtaOutcome::Refused {
            reason: Refusal::Transfer,
            code: None,
            detail: "connection reset after 12288 bytes".into(),
        }),
    );
    let (report, _) = run(&s, &mut fake);
    assert_eq!(report.status, RunStatus::Fail);
    let repeat = &report.steps[0];
    assert_eq!(repeat.status, StepStatus::Fail);
    assert_eq!(repeat.children.len(), 3);
    assert_eq!(
        repeat.observed.as_deref(),
        Some("iteration 3 of 5 did not pass; 2 passed")
    );
    let third = &repeat.children[2];
    assert_eq!(
        third.children.iter().map(|c| c.status).collect::<Vec<_>>(),
        [StepStatus::Pass, StepStatus::Fail, StepStatus::NotRun]
    );
    assert_eq!(report.culprit().unwrap().id, "1.3.2");
    assert_eq!(report.steps[1].status, StepStatus::NotRun);
}

#[test]
fn matrix_runs_each_combination_through_run_all() {
    let f = file(
        r#"
name = "refused"
description = "matrix"
boards = ["sonoff-basic", "sonoff-4ch"]
requires = ["ota-arduino", "ota-webserver"]

[params]
method = ["arduino", "webserver"]

[[step]]
expect_ota_refused = { method = "{method}", image = "fixtures/images/sonoff-ota-2.0.0-{method}.bin", reason = "not-in-update-state" }
"#,
    );
    let mut made = Vec::new();
    let mut factory = |s: &Scenario| -> Result<Box<dyn Executor>, ExecError> {
        made.push((s.board.clone(), s.params["method"].clone()));
        let refused = OtaOutcome::Refused {
            reason: Refusal::NotInUpdateState,
            code: None,
            detail: "no reply".into(),
        };
        // The 4CH over HTTP answers: that run must fail.
        let reply = if s.board == "sonoff-4ch" && s.params["method"] == "webserver" {
            OtaOutcome::Accepted {
                detail: "Update Success! Rebooting...".into(),
            }
        } else {
            refused
        };
        Ok(Box::new(
            FakeExecutor::new().reply(Action::Ota, Reply::Ota(reply)),
        ))
    };
    let reports = scenario::run_all(&f.runs, &mut factory, &mut |_| {});
    assert_eq!(made.len(), 4);
    let got: Vec<(String, String, RunStatus)> = reports
        .iter()
        .map(|r| (r.board.clone(), r.matrix["method"].clone(), r.status))
        .collect();
    assert_eq!(
        got,
        [
            ("sonoff-basic", "arduino", RunStatus::Pass),
            ("sonoff-basic", "webserver", RunStatus::Pass),
            ("sonoff-4ch", "arduino", RunStatus::Pass),
            ("sonoff-4ch", "webserver", RunStatus::Fail),
        ]
        .map(|(b, m, s)| (b.to_string(), m.to_string(), s))
    );
    let failed = reports[3].culprit().unwrap();
    assert_eq!(
        failed.expected.as_deref(),
        Some("upload refused: not-in-update-state")
    );
    assert_eq!(
        failed.observed.as_deref(),
        Some("accepted: Update Success! Rebooting...")
    );
    assert_eq!(
        reports[3].run_name(),
        "refused--sonoff-4ch--method=webserver"
    );
}

#[test]
fn run_all_reports_an_executor_that_cannot_be_made() {
    let s = one(REMEDY);
    let mut factory = |_: &Scenario| -> Result<Box<dyn Executor>, ExecError> {
        Err(ExecError::Unsupported {
            what: "open /dev/ttyAMA0".into(),
        })
    };
    let reports = scenario::run_all([&s], &mut factory, &mut |_| {});
    assert_eq!(reports[0].status, RunStatus::Error);
    assert_eq!(
        reports[0].reason.as_deref(),
        Some("no executor: the rig cannot open /dev/ttyAMA0")
    );
    assert!(
        reports[0]
            .steps
            .iter()
            .all(|s| s.status == StepStatus::NotRun)
    );
}

#[test]
fn password_env_is_read_at_run_time() {
    let text = r#"
name = "pw"
description = "password"
boards = ["sonoff-basic"]
requires = ["ota-arduino"]

[params]
password_env = ["", "HARNESS_TEST_OTA_PASSWORD_SET", "HARNESS_TEST_OTA_PASSWORD_UNSET"]

[[step]]
ota = { method = "arduino", image = "fixtures/images/sonoff-ota-2.0.0-arduino.bin", password_env = "{password_env}" }
"#;
    // SAFETY: this test binary's only use of this variable; no other thread reads it.
    unsafe { std::env::set_var("HARNESS_TEST_OTA_PASSWORD_SET", "s3cret") };
    let f = file(text);
    let mut passwords = Vec::new();
    let mut statuses = Vec::new();
    for s in &f.runs {
        let mut fake = FakeExecutor::new();
        let (report, _) = run(s, &mut fake);
        statuses.push(report.status);
        passwords.push(fake.calls().iter().find_map(|c| match c {
            Call::Ota { password, .. } => Some(password.clone()),
            _ => None,
        }));
        if report.status == RunStatus::Error {
            assert_eq!(
                report.steps[0].error.as_deref(),
                Some(
                    "environment variable `HARNESS_TEST_OTA_PASSWORD_UNSET` (password_env) is not set"
                )
            );
        }
    }
    assert_eq!(
        passwords,
        [Some(None), Some(Some("s3cret".to_string())), None]
    );
    assert_eq!(
        statuses,
        [RunStatus::Pass, RunStatus::Pass, RunStatus::Error]
    );
}

#[test]
fn lint_refusal_and_triage_steps_judge_real_data() {
    let s = one(r#"
name = "wrong-size"
description = "lint and triage"
boards = ["sonoff-basic"]
requires = ["serial"]

[[step]]
expect_lint_refusal = { image = "fixtures/images/sonoff-ota-1.0.0-4mb-qio.bin", lint = "flash-size-too-big" }
[[step]]
expect_triage = "restart-after-serial-flash"
[[step]]
expect_lint_refusal = { image = "fixtures/images/sonoff-ota-1.0.0-arduino.bin" }
"#);
    let capture =
        std::fs::read(repo_root().join("fixtures/corpus/restart-after-serial-flash-01.log"))
            .unwrap();
    let mut fake = FakeExecutor::new().with_capture(capture);
    let (report, _) = run(&s, &mut fake);
    assert_eq!(
        statuses(&report),
        [StepStatus::Pass, StepStatus::Pass, StepStatus::Fail]
    );
    assert!(
        report.steps[0]
            .observed
            .as_deref()
            .unwrap()
            .starts_with("refused: flash-size-too-big (header says 4MB, Sonoff Basic R1 has 1MB)"),
        "{:?}",
        report.steps[0].observed
    );
    assert!(
        report.steps[1]
            .observed
            .as_deref()
            .unwrap()
            .starts_with("restart-after-serial-flash (High)"),
    );
    assert_eq!(
        report.steps[2].observed.as_deref(),
        Some("accepted: no lint errors")
    );
    assert_eq!(
        report.triage.as_ref().unwrap().class,
        Class::RestartAfterSerialFlash
    );
}

#[test]
fn wrong_scripted_reply_is_a_harness_error_not_a_pass() {
    let s = one(REMEDY);
    let mut fake = FakeExecutor::new().reply(Action::Flash, Reply::Done);
    let (report, _) = run(&s, &mut fake);
    assert_eq!(report.steps[0].status, StepStatus::Error);
    assert!(
        report.steps[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("fake executor script: Done is no answer to Flash"),
    );
}

#[test]
fn capture_that_cannot_be_marked_is_an_error_with_nothing_run() {
    let s = one(REMEDY);
    let mut fake = FakeExecutor::new().reply(
        Action::Mark,
        Reply::Fail(ExecError::Unsupported {
            what: "read the capture".into(),
        }),
    );
    let (report, _) = run(&s, &mut fake);
    assert_eq!(report.status, RunStatus::Error);
    assert_eq!(
        report.harness_errors,
        ["capture mark at the start: the rig cannot read the capture"]
    );
    assert_eq!(statuses(&report), vec![StepStatus::NotRun; 7]);
    assert_eq!(fake.calls(), [Call::SafeState]);
}
