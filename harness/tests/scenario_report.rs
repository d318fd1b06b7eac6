//! Run reports: snapshots of the text, Markdown, JSON and JUnit renderings of a set of runs made
//! with the `FakeExecutor` (times and paths fixed), JUnit read back by two parsers, and the run
//! folder writer, including writes that cannot succeed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::report::{self, RunReport, RunSet, StepReport};
use harness::scenario::artifacts::{self, ArtifactError};
use harness::scenario::fake::{Action, Reply};
use harness::scenario::{self, Capability, FakeExecutor, OtaOutcome, Scenario};
use quick_xml::XmlVersion;
use quick_xml::events::Event;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn scenario_from(text: &str, file: &str) -> Vec<Scenario> {
    let root = repo_root();
    scenario::parse(
        text,
        Path::new(file),
        &root.join("scenarios"),
        Some(&root),
        &[],
    )
    .unwrap_or_else(|e| panic!("{:?}", miette::Report::new(e)))
    .runs
}

const SEED: &str = r#"
name = "seed-4ch-first-ota"
description = """
Serial flash without a power cycle, then a web-server OTA: the restart lands in download mode."""
boards = ["sonoff-4ch"]
requires = ["power", "gpio0", "serial", "ota-webserver"]

[[step]]
label = "serial-flash"
flash = { image = "fixtures/images/sonoff-ota-1.0.0-webserver.bin", power_cycle_after = false }
[[step]]
enter_update = {}
[[step]]
label = "ota"
ota = { method = "webserver", image = "fixtures/images/sonoff-ota-2.0.0-webserver.bin" }
[[step]]
expect_triage = { class = "healthy-boot", since = "ota" }
[[step]]
power = "cycle"
"#;

const SOAK: &str = r#"
name = "soak"
description = "Two updates."
boards = ["sonoff-basic", "sonoff-4ch"]
requires = ["power", "gpio0", "serial", "ota-arduino"]

[params]
password_env = ["", "HIL_OTA_PASSWORD_FOR_REPORT_TESTS"]

[[step]]
repeat = { times = 2, steps = [
  { enter_update = {} },
  { ota = { method = "arduino", image = "fixtures/images/sonoff-ota-2.0.0-arduino.bin", password_env = "{password_env}" } },
] }
"#;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("fixtures").join(name)).unwrap()
}

/// Fixes everything that changes between runs: times and absolute paths.
fn normalize(set: &mut RunSet) {
    fn steps(list: &mut [StepReport]) {
        for s in list {
            if s.duration.is_some() {
                s.duration = Some(Duration::from_millis(7));
            }
            steps(&mut s.children);
        }
    }
    set.started = "2025-06-01T12:00:00Z".into();
    for r in &mut set.runs {
        r.duration = Duration::from_millis(1234);
        steps(&mut r.steps);
    }
}

/// Four runs of SEED and SOAK: a failure with a triage, a pass, a harness error, a skip.
fn run_set(capture_dir: Option<&Path>) -> RunSet {
    let seed = &scenario_from(SEED, "scenarios/seed.toml")[0];
    let soak = scenario_from(SOAK, "scenarios/soak.toml");
    let capture_path = |name: &str, bytes: &[u8]| {
        capture_dir.map(|d| {
            let p = d.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        })
    };

    let mut runs = Vec::new();
    // The field report: the OTA is accepted, the capture shows the restart into download mode.
    let capture = fixture("corpus/restart-after-serial-flash-01.log");
    let mut fake = FakeExecutor::new().with_capture(capture.clone());
    if let Some(p) = capture_path("seed.log", &capture) {
        fake = fake.with_capture_path(p);
    }
    runs.push(scenario::run(seed, &mut fake, &mut |_| {}));

    let healthy = fixture("corpus/healthy-boot-01.log");
    let mut fake = FakeExecutor::new().with_capture(healthy.clone());
    if let Some(p) = capture_path("soak-basic.log", &healthy) {
        fake = fake.with_capture_path(p);
    }
    runs.push(scenario::run(&soak[0], &mut fake, &mut |_| {}));

    let mut fake = FakeExecutor::new().with_capture(healthy);
    fake.push(
        Action::Ota,
        Reply::Ota(OtaOutcome::Accepted {
            detail: "OK".into(),
        }),
    );
    fake.push(
        Action::Ota,
        Reply::Panic("espota client lost its socket".into()),
    );
    runs.push(scenario::run(&soak[2], &mut fake, &mut |_| {}));
    assert_eq!(fake.unused_replies(), 0);

    let mut fake = FakeExecutor::new().with_capabilities([Capability::Serial]);
    runs.push(scenario::run(&soak[3], &mut fake, &mut |_| {}));

    let mut set = RunSet {
        started: String::new(),
        runs,
    };
    normalize(&mut set);
    set
}

#[test]
fn statuses_of_the_test_set() {
    let set = run_set(None);
    let got: Vec<_> = set.runs.iter().map(|r| r.status.word()).collect();
    assert_eq!(got, ["FAIL", "PASS", "ERROR", "SKIPPED"]);
    assert_eq!(set.status(), report::RunStatus::Error);
}

#[test]
fn text_snapshot() {
    insta::assert_snapshot!("report_text", report::text::render(&run_set(None)));
}

#[test]
fn step_log_snapshot() {
    let set = run_set(None);
    insta::assert_snapshot!("steps_log_fail", report::text::step_log(&set.runs[0]));
    insta::assert_snapshot!("steps_log_error", report::text::step_log(&set.runs[2]));
}

#[test]
fn markdown_snapshot_says_what_failed() {
    let md = report::markdown::render(&run_set(None));
    assert!(md.contains("Failed at step 4 (line"), "{md}");
    assert!(
        md.contains("- **Expected:** triage class healthy-boot"),
        "{md}"
    );
    assert!(
        md.contains("- **Seen:** restart-after-serial-flash"),
        "{md}"
    );
    assert!(
        md.contains("**Triage of the capture:** `restart-after-serial-flash`"),
        "{md}"
    );
    insta::assert_snapshot!("report_md", md);
}

#[test]
fn json_snapshot() {
    let json = report::json::render(&run_set(None), true, &[]);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["complete"], true);
    assert_eq!(value["counts"]["fail"], 1);
    assert_eq!(value["runs"][0]["steps"][3]["status"], "fail");
    assert_eq!(
        value["runs"][0]["triage"]["class"],
        "restart-after-serial-flash"
    );
    insta::assert_json_snapshot!("report_json", value, {
        ".harness_version" => "[version]",
    });
}

#[test]
fn junit_snapshot() {
    insta::assert_snapshot!(
        "report_junit",
        report::junit::render(&run_set(None)).unwrap()
    );
}

#[test]
fn junit_reads_back_with_quick_junit() {
    let xml = report::junit::render(&run_set(None)).unwrap();
    let parsed = quick_junit::Report::deserialize_from_str(&xml).unwrap();
    assert_eq!(parsed.test_suites.len(), 2, "one suite per scenario file");
    assert_eq!(parsed.tests, 4);
    assert_eq!((parsed.failures, parsed.errors, parsed.skipped), (1, 1, 1));
    let seed = &parsed.test_suites[0];
    assert_eq!(seed.name.as_str(), "seed-4ch-first-ota");
    let case = &seed.test_cases[0];
    assert_eq!(case.name.as_str(), "sonoff-4ch");
    match &case.status {
        quick_junit::TestCaseStatus::NonSuccess {
            kind: quick_junit::NonSuccessKind::Failure,
            message: Some(m),
            ..
        } => {
            assert!(m.as_str().starts_with("step 4 (line"), "{m:?}");
            assert!(
                m.as_str().contains("expected: triage class healthy-boot"),
                "{m:?}"
            );
            assert!(
                m.as_str().contains("seen: restart-after-serial-flash"),
                "{m:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        case.system_out
            .as_ref()
            .unwrap()
            .as_str()
            .contains("[4] FAIL")
    );
    let soak = &parsed.test_suites[1];
    let names: Vec<&str> = soak.test_cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "sonoff-basic password_env=",
            "sonoff-4ch password_env=",
            "sonoff-4ch password_env=HIL_OTA_PASSWORD_FOR_REPORT_TESTS"
        ]
    );
}

/// An XML walk with quick-xml alone: element counts and the attributes CI tools read.
#[test]
fn junit_reads_back_with_plain_xml() {
    let xml = report::junit::render(&run_set(None)).unwrap();
    let mut reader = quick_xml::Reader::from_str(&xml);
    let mut counts = std::collections::BTreeMap::new();
    let mut properties = Vec::new();
    let mut failure_message = None;
    loop {
        match reader.read_event().unwrap() {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) => {
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                let attr = |key: &str| {
                    e.try_get_attribute(key).unwrap().map(|a| {
                        a.normalized_value(XmlVersion::Explicit1_0)
                            .unwrap()
                            .into_owned()
                    })
                };
                match name.as_str() {
                    "property" => properties.push((attr("name").unwrap(), attr("value").unwrap())),
                    "failure" => failure_message = attr("message"),
                    _ => {}
                }
                *counts.entry(name).or_insert(0) += 1;
            }
            _ => {}
        }
    }
    assert_eq!(counts["testsuites"], 1);
    assert_eq!(counts["testsuite"], 2);
    assert_eq!(counts["testcase"], 4);
    assert_eq!(counts["failure"], 1);
    assert_eq!(counts["error"], 1);
    assert_eq!(counts["skipped"], 1);
    assert!(properties.contains(&("board".into(), "sonoff-4ch".into())));
    assert!(properties.contains(&(
        "param.password_env".into(),
        "HIL_OTA_PASSWORD_FOR_REPORT_TESTS".into()
    )));
    assert!(properties.contains(&("file".into(), "scenarios/seed.toml".into())));
    assert!(
        failure_message
            .unwrap()
            .contains("expected: triage class healthy-boot")
    );
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn report_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
fn run_folder_has_every_artifact_and_is_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let captures = tmp.path().join("captures");
    std::fs::create_dir(&captures).unwrap();
    let set = run_set(Some(&captures));
    let out = tmp.path().join("runs/x");
    let folder = artifacts::write_run_folder(&out, &set).unwrap();
    assert_eq!(folder.dir, out);
    let seed = "seed-4ch-first-ota--sonoff-4ch";
    let basic = "soak--sonoff-basic--password_env=";
    let error_run = "soak--sonoff-4ch--password_env=";
    let skipped_run = "soak--sonoff-4ch--password_env=HIL_OTA_PASSWORD_FOR_REPORT_TESTS";
    let mut expected: Vec<String> = vec![
        "junit.xml".into(),
        "report.json".into(),
        "report.md".into(),
        "steps.log".into(),
        format!("{skipped_run}/steps.log"),
    ];
    for run in [seed, basic, error_run] {
        for f in ["steps.log", "triage.json", "triage.txt"] {
            expected.push(format!("{run}/{f}"));
        }
    }
    expected.push(format!("{seed}/capture.log"));
    expected.push(format!("{basic}/capture.log"));
    expected.sort();
    assert_eq!(files_in(&out), expected);
    assert_eq!(
        std::fs::read(out.join(seed).join("capture.log")).unwrap(),
        fixture("corpus/restart-after-serial-flash-01.log")
    );
    let json = report_json(&out);
    assert_eq!(json["complete"], true);
    assert!(json.get("write_errors").is_none());
    assert_eq!(
        json["runs"][0]["capture"],
        format!("{seed}/capture.log"),
        "capture paths point into the folder"
    );
    let triage = std::fs::read_to_string(out.join(seed).join("triage.txt")).unwrap();
    assert!(triage.starts_with(&format!("{seed}/capture.log: restart-after-serial-flash")));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains(&format!("Capture: `{seed}/capture.log`")));
    // A second write into the same folder replaces the files.
    artifacts::write_run_folder(&out, &set).unwrap();
    assert_eq!(report_json(&out)["complete"], true);
}

#[test]
fn blocked_run_folder_names_the_path_and_is_not_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let set = run_set(None);
    let out = tmp.path().join("run");
    std::fs::create_dir(&out).unwrap();
    // A file where the second run's folder must go.
    let blocker = out.join(set.runs[1].run_name());
    std::fs::write(&blocker, b"in the way").unwrap();
    let err = artifacts::write_run_folder(&out, &set).unwrap_err();
    let ArtifactError::CreateDir { path, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(path, &blocker);
    assert!(err.to_string().contains(&blocker.display().to_string()));
    let json = report_json(&out);
    assert_eq!(json["complete"], false);
    assert!(
        json["write_errors"][0]
            .as_str()
            .unwrap()
            .contains(&blocker.display().to_string())
    );
    // The first run's files were written completely; nothing temporary is left behind.
    assert!(out.join(set.runs[0].run_name()).join("steps.log").is_file());
    assert!(
        !files_in(&out).iter().any(|f| f.contains(".tmp")),
        "{:?}",
        files_in(&out)
    );
    assert!(!out.join("junit.xml").exists());
}

#[test]
fn folder_that_is_a_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs");
    std::fs::write(&out, b"not a folder").unwrap();
    let err = artifacts::write_run_folder(&out, &run_set(None)).unwrap_err();
    assert!(
        matches!(err, ArtifactError::CreateDir { ref path, .. } if *path == out),
        "{err:?}"
    );
}

#[test]
fn report_json_that_cannot_be_written_leaves_no_complete_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // A folder where report.json must go: the final rename fails.
    std::fs::create_dir_all(out.join("report.json")).unwrap();
    let err = artifacts::write_run_folder(&out, &run_set(None)).unwrap_err();
    let ArtifactError::Write { path, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(path, &out.join("report.json"));
    assert!(out.join("report.json").is_dir());
    assert!(out.join("junit.xml").is_file());
    assert!(
        !files_in(&out).iter().any(|f| f.contains(".tmp")),
        "{:?}",
        files_in(&out)
    );
}

#[test]
fn missing_capture_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut set = run_set(None);
    set.runs[0].capture = Some(tmp.path().join("gone.log"));
    let err = artifacts::write_run_folder(&tmp.path().join("run"), &set).unwrap_err();
    assert!(
        matches!(&err, ArtifactError::ReadCapture { path, .. } if path.ends_with("gone.log")),
        "{err:?}"
    );
    assert_eq!(report_json(&tmp.path().join("run"))["complete"], false);
}

#[test]
fn atomic_write_replaces_whole_files_and_names_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("a.txt");
    artifacts::write_atomic(&p, b"first version, longer").unwrap();
    artifacts::write_atomic(&p, b"second").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"second");
    assert_eq!(files_in(tmp.path()), ["a.txt"]);

    let missing = tmp.path().join("no/such/dir/b.txt");
    let err = artifacts::write_atomic(&missing, b"x").unwrap_err();
    assert!(
        matches!(&err, ArtifactError::Write { path, .. } if *path == missing),
        "{err:?}"
    );
    assert!(err.to_string().contains("no/such/dir/b.txt"));
}

#[test]
fn default_folder_name() {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_748_779_200);
    assert_eq!(
        artifacts::default_dir(Path::new("runs"), t, &["seed 4ch"]),
        Path::new("runs/2025-06-01T120000Z-seed_4ch")
    );
    assert_eq!(
        artifacts::default_dir(Path::new("runs"), t, &["a", "b"]),
        Path::new("runs/2025-06-01T120000Z-2-scenarios")
    );
}

#[test]
fn run_names_are_folder_safe() {
    let r: &RunReport = &run_set(None).runs[1];
    assert_eq!(r.run_name(), "soak--sonoff-basic--password_env=");
    assert_eq!(
        report::run_name("a/b", "c d", &Default::default()),
        "a_b--c_d"
    );
}
