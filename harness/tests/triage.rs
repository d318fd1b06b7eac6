//! Triage against real logs: the public corpus, the field report, and report snapshots.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::triage::{self, Class};
use serde::Deserialize;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

#[derive(Deserialize)]
struct Corpus {
    log: Vec<CorpusEntry>,
}

#[derive(Deserialize)]
struct CorpusEntry {
    file: String,
    class: String,
}

#[derive(Deserialize)]
struct Disagreements {
    entry: Vec<Disagreement>,
}

#[derive(Deserialize)]
struct Disagreement {
    file: String,
    corpus: String,
    triage: String,
    why: String,
}

fn classify(path: &Path) -> Class {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    triage::triage_bytes(&bytes).class
}

#[test]
fn every_corpus_log_gets_its_class() {
    let dir = fixtures().join("corpus");
    let corpus: Corpus =
        toml::from_str(&std::fs::read_to_string(dir.join("corpus.toml")).unwrap()).unwrap();
    let argued: Disagreements =
        toml::from_str(&std::fs::read_to_string(dir.join("disagreements.toml")).unwrap()).unwrap();
    let argued: HashMap<_, _> = argued.entry.iter().map(|d| (d.file.as_str(), d)).collect();
    assert!(
        corpus.log.len() >= 38,
        "corpus has {} entries",
        corpus.log.len()
    );
    let mut failures = Vec::new();
    for entry in &corpus.log {
        let got = classify(&dir.join(&entry.file));
        let want = match argued.get(entry.file.as_str()) {
            Some(d) => {
                assert_eq!(
                    d.corpus, entry.class,
                    "{}: disagreement names the wrong corpus class",
                    d.file
                );
                assert!(
                    d.why.len() > 80,
                    "{}: a disagreement needs its argument",
                    d.file
                );
                d.triage.as_str()
            }
            None => entry.class.as_str(),
        };
        if got.id() != want {
            failures.push(format!("{}: expected {want}, got {got}", entry.file));
        }
    }
    assert!(
        failures.is_empty(),
        "misclassified:\n{}",
        failures.join("\n")
    );
    // Disagreements stay few and each names a real file.
    assert!(argued.len() <= 3);
    for file in argued.keys() {
        assert!(
            corpus.log.iter().any(|e| e.file == *file),
            "{file} is not in the corpus"
        );
    }
}

#[test]
fn every_corpus_file_is_listed() {
    let dir = fixtures().join("corpus");
    let corpus: Corpus =
        toml::from_str(&std::fs::read_to_string(dir.join("corpus.toml")).unwrap()).unwrap();
    for f in std::fs::read_dir(&dir).unwrap() {
        let name = f.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".log") {
            assert!(
                corpus.log.iter().any(|e| e.file == name),
                "{name} not in corpus.toml"
            );
        }
    }
}

#[derive(Deserialize)]
struct Seed {
    log: Vec<SeedEntry>,
}

#[derive(Deserialize)]
struct SeedEntry {
    file: String,
    class: String,
}

#[test]
fn seed_logs_get_the_experts_class() {
    let dir = fixtures().join("seed");
    let seed: Seed =
        toml::from_str(&std::fs::read_to_string(dir.join("expected.toml")).unwrap()).unwrap();
    assert_eq!(seed.log.len(), 4);
    for e in seed.log {
        assert_eq!(classify(&dir.join(&e.file)).id(), e.class, "{}", e.file);
    }
}

#[test]
fn seed_basic_report_names_the_copy_and_the_remedy() {
    let bytes = std::fs::read(fixtures().join("seed/basic-attempt1.log")).unwrap();
    let r = triage::triage_bytes(&bytes);
    assert_eq!(r.class, Class::OtaCopyIncomplete);
    assert!(r.remedy.starts_with("Reflash over serial"));
    assert!(
        r.evidence.iter().any(|e| e.line == 8 && e.text == "@cp:"),
        "{:?}",
        r.evidence
    );
    assert_eq!(r.details.eboot_version.as_deref(), Some("v3ffe903d"));
    assert_eq!(r.boots.len(), 1);
}

/// Snapshots of what people read, for a handful of logs of different kinds.
#[test]
fn report_snapshots() {
    for (name, path) in [
        ("seed-basic-attempt1", "seed/basic-attempt1.log"),
        ("seed-basic-attempt2", "seed/basic-attempt2.log"),
        ("seed-4ch-attempt2", "seed/4ch-attempt2.log"),
        ("exception-crash-01", "corpus/exception-crash-01.log"),
        ("soft-wdt-02", "corpus/soft-wdt-02.log"),
        ("garbage-baud-01", "corpus/garbage-baud-01.log"),
    ] {
        let bytes = std::fs::read(fixtures().join(path)).unwrap();
        let r = triage::triage_bytes(&bytes);
        insta::assert_snapshot!(format!("{name}.text"), triage::render_text(&r, path));
        insta::assert_snapshot!(format!("{name}.md"), triage::render_markdown(&r, path));
        insta::assert_json_snapshot!(format!("{name}.json"), r);
    }
}

fn harness() -> Command {
    Command::new(env!("CARGO_BIN_EXE_harness"))
}

#[test]
fn cli_text_json_markdown_and_exit_codes() {
    let seed = fixtures().join("seed/basic-attempt2.log");
    let out = harness().arg("triage").arg(&seed).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("restart-after-serial-flash"), "{text}");
    assert!(
        text.contains("Remedy:") && text.contains("Evidence:"),
        "{text}"
    );

    let out = harness()
        .args(["triage", "--format", "json"])
        .arg(&seed)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["class"], "restart-after-serial-flash");
    for key in ["summary", "remedy", "evidence", "boots"] {
        assert!(!v[key].is_null(), "JSON lacks {key}: {v}");
    }
    assert_eq!(v["evidence"][0]["line"], 1);
    assert!(
        v["evidence"][0]["text"]
            .as_str()
            .unwrap()
            .contains("boot mode:(1,6)")
    );

    // Two files: a JSON array, one object per file.
    let other = fixtures().join("seed/4ch-attempt2.log");
    let out = harness()
        .args(["triage", "-f", "json"])
        .arg(&seed)
        .arg(&other)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["class"], "healthy-boot");

    let out = harness()
        .args(["triage", "-f", "markdown"])
        .arg(&seed)
        .output()
        .unwrap();
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("### Boot-log triage")
    );

    // Standard input.
    let out = harness()
        .args(["triage", "-f", "json", "-"])
        .stdin(std::fs::File::open(&other).unwrap())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["class"], "healthy-boot");
    assert_eq!(v["source"], "<stdin>");

    // Unreadable input: exit 2 and a message naming the file.
    let out = harness()
        .args(["triage", "/nonexistent/capture.log"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("/nonexistent/capture.log"), "{err}");

    // A directory is not a capture.
    let out = harness().arg("triage").arg(fixtures()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_shows_an_example() {
    let out = harness().args(["triage", "--help"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("Examples:") && text.contains("harness triage"),
        "{text}"
    );
}
