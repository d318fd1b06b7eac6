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

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn classify(path: &Path) -> Class {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    triage::triage_bytes(&bytes).class
}

#[test]
fn every_corpus_log_gets_its_class() {
    let dir = fixtures().join("corpus");
    let corpus: Corpus = read_toml(&dir.join("corpus.toml"));
    let argued: Disagreements = read_toml(&dir.join("disagreements.toml"));
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

#[derive(Deserialize)]
struct RealWorld {
    log: Vec<RealWorldLog>,
    disagreement: Vec<RealWorldDisagreement>,
}

#[derive(Deserialize)]
struct RealWorldLog {
    file: String,
    source: String,
    class: String,
}

#[derive(Deserialize)]
struct RealWorldDisagreement {
    file: String,
    triage: String,
    why: String,
}

/// Logs the rules were not written from (fixtures/realworld): each gets the class its thread
/// supports, or exactly the class its listed disagreement argues for.
#[test]
fn real_world_logs_beyond_the_corpus() {
    let dir = fixtures().join("realworld");
    let set: RealWorld = read_toml(&dir.join("labels.toml"));
    let argued: HashMap<&str, &RealWorldDisagreement> = set
        .disagreement
        .iter()
        .map(|d| (d.file.as_str(), d))
        .collect();
    let mut agree = 0;
    let mut wrong = Vec::new();
    for e in &set.log {
        assert!(e.source.starts_with("https://"), "{}", e.file);
        let got = classify(&dir.join(&e.file));
        let want = match argued.get(e.file.as_str()) {
            Some(d) => {
                assert!(!d.why.is_empty());
                assert_ne!(d.triage, e.class, "{} is no disagreement", e.file);
                d.triage.as_str()
            }
            None => {
                agree += 1;
                e.class.as_str()
            }
        };
        if got.id() != want {
            wrong.push(format!("{}: got {}, want {want}", e.file, got.id()));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    for d in &set.disagreement {
        assert!(set.log.iter().any(|e| e.file == d.file), "{}", d.file);
    }
    // Every file on disk is labelled.
    for sub in ["arduino", "others"] {
        for f in std::fs::read_dir(dir.join(sub)).unwrap() {
            let name = format!("{sub}/{}", f.unwrap().file_name().to_string_lossy());
            assert!(set.log.iter().any(|e| e.file == name), "{name} unlabelled");
        }
    }
    assert_eq!((agree, set.log.len()), (42, 52));
}

#[test]
fn every_corpus_file_is_listed() {
    let dir = fixtures().join("corpus");
    let corpus: Corpus = read_toml(&dir.join("corpus.toml"));
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
    let seed: Seed = read_toml(&dir.join("expected.toml"));
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

/// boot-log.md §3: the `csum` the ROM prints is the checksum stored in the image and the
/// `chksum` before it the one computed over the segments; when they differ and nothing runs
/// after them, the image at 0x0 is bad even without a `csum err` line.
#[test]
fn a_csum_unlike_its_chksum_is_a_checksum_error_when_the_boot_stops() {
    let stopped = b" ets Jan  8 2013,rst cause:2, boot mode:(3,6)\r\n\r\n\
        load 0x40100000, len 31124, room 16 \r\ntail 4\r\nchksum 0xcc\r\n\
        load 0x3ffe8000, len 2252, room 4 \r\ntail 8\r\nchksum 0x8e\r\ncsum 0x53\r\n";
    let r = triage::triage_bytes(stopped);
    assert_eq!(r.class, Class::ChecksumError, "{}", r.summary);
    let lines: Vec<u64> = r.evidence.iter().map(|e| e.line).collect();
    assert!(lines.contains(&8) && lines.contains(&9), "{lines:?}");

    // The same values with eboot and the app after them: the ROM went on, so the pair is a
    // misread line, not a bad image.
    let mut went_on = stopped.to_vec();
    went_on.extend_from_slice(b"v614f7c32\r\n~ld\r\nHello from the app\r\n");
    let r = triage::triage_bytes(&went_on);
    assert_eq!(r.class, Class::HealthyBoot, "{}", r.summary);

    // Equal values are the normal case.
    let equal = String::from_utf8_lossy(stopped).replace("csum 0x53", "csum 0x8e");
    assert_ne!(
        triage::triage_bytes(equal.as_bytes()).class,
        Class::ChecksumError
    );
}

/// `ld` hands over to the app; only the app's own output shows that it runs.
#[test]
fn a_boot_that_ends_at_ld_is_healthy_only_with_medium_confidence() {
    let to_ld = b" ets Jan  8 2013,rst cause:2, boot mode:(3,6)\r\n\r\n\
        load 0x4010f000, len 1264, room 16 \r\ntail 0\r\nchksum 0x42\r\ncsum 0x42\r\n\
        @cp:0\r\nld\r\n";
    let r = triage::triage_bytes(to_ld);
    assert_eq!(r.class, Class::HealthyBoot);
    assert_eq!(r.confidence, triage::Confidence::Medium);
    assert!(r.summary.contains("no app output"), "{}", r.summary);

    let mut with_app = to_ld.to_vec();
    with_app.extend_from_slice(b"\r\nsonoff relay ready\r\n");
    let r = triage::triage_bytes(&with_app);
    assert_eq!(r.class, Class::HealthyBoot);
    assert_eq!(r.confidence, triage::Confidence::High);
    assert!(r.summary.contains("the new app started"), "{}", r.summary);
}

const FLASH_BOOT: &str = "load 0x4010f000, len 1384, room 16 \ntail 8\nchksum 0x2d\n\
    csum 0x2d\nv614f7c32\n~ld\n";

fn banner(cause: u8, x: u8) -> String {
    format!("\n ets Jan  8 2013,rst cause:{cause}, boot mode:({x},6)\n\n")
}

/// failure-modes A and G: a crash resets the chip, and with the straps still latched from a
/// serial upload the restart lands in download mode. The crash is the fault to fix; the
/// download-mode restart is a note.
#[test]
fn a_crash_outranks_the_download_mode_restart_it_caused() {
    let soft_wdt = "Soft WDT reset\n\n>>>stack>>>\n\nctx: cont\nsp: 3ffefbf0 end: 3ffefde0 \
        offset: 01b0\n3ffefda0:  3ffe8510 3ffeeb28 3ffeed88 402021bd\n<<<stack<<<\n";
    let log = format!(
        "{}{FLASH_BOOT}app running\n{soft_wdt}{}{}wdt reset\n",
        banner(2, 3),
        banner(2, 1),
        banner(4, 1)
    );
    let r = triage::triage_bytes(log.as_bytes());
    assert_eq!(r.class, Class::SoftWdt, "{}", r.summary);
    assert!(
        r.details.notes.iter().any(|n| n.contains("download mode")),
        "{:?}",
        r.details.notes
    );

    // Without the crash the same restart is the serial-flash latch.
    let latched = format!(
        "{}{FLASH_BOOT}Rebooting...\n{}{}wdt reset\n",
        banner(2, 3),
        banner(2, 1),
        banner(4, 1)
    );
    assert_eq!(
        triage::triage_bytes(latched.as_bytes()).class,
        Class::RestartAfterSerialFlash
    );

    // A crash right after the board was reset by hand is the fault left; one boots later is
    // another story, and the latch stays the finding.
    let exception = "Exception (28):\nepc1=0x40207b1c epc2=0x00000000 epc3=0x00000000 \
        excvaddr=0x00000000 depc=0x00000000\n";
    let crash_next = format!("{latched}{}{FLASH_BOOT}app\n{exception}", banner(2, 3));
    assert_eq!(
        triage::triage_bytes(crash_next.as_bytes()).class,
        Class::ExceptionCrash
    );
    let crash_later = format!(
        "{latched}{}{FLASH_BOOT}app\n{}{FLASH_BOOT}app\n{exception}",
        banner(1, 3),
        banner(2, 3)
    );
    assert_eq!(
        triage::triage_bytes(crash_later.as_bytes()).class,
        Class::RestartAfterSerialFlash
    );
}

/// failure-modes F: power-on resets while the app runs, more than once, point at the supply;
/// one looks like a power cycle by hand and is only a note.
#[test]
fn unannounced_power_on_resets_point_at_the_supply() {
    let once = format!(
        "{}{FLASH_BOOT}relay on\n{}{FLASH_BOOT}",
        banner(1, 3),
        banner(1, 3)
    );
    let r = triage::triage_bytes(once.as_bytes());
    assert_eq!(r.class, Class::HealthyBoot, "{}", r.summary);
    assert!(
        r.details.notes.iter().any(|n| n.contains("power-on reset")),
        "{:?}",
        r.details.notes
    );

    let twice = format!("{once}relay on\n{}{FLASH_BOOT}relay on\n", banner(1, 3));
    let r = triage::triage_bytes(twice.as_bytes());
    assert_eq!(r.class, Class::BrownoutOrPower);
    assert_eq!(r.confidence, triage::Confidence::Medium);

    // An announced restart is no brown-out.
    let announced = format!(
        "{}{FLASH_BOOT}APP: Restarting\n{}{FLASH_BOOT}relay on\n",
        banner(1, 3),
        banner(1, 3)
    );
    assert_eq!(
        triage::triage_bytes(announced.as_bytes()).class,
        Class::HealthyBoot
    );
}

/// A restart the app announces is no fault; the same restart again and again is a loop,
/// unless updates asked for them.
#[test]
fn announced_restarts_again_and_again_are_a_loop() {
    let boot = |last: &str| format!("{}{FLASH_BOOT}WifiManager active\n{last}\n", banner(2, 3));
    let log = [
        boot("APP: Restarting"),
        boot("APP: Restarting"),
        boot("APP: Restarting"),
    ]
    .concat();
    let r = triage::triage_bytes(log.as_bytes());
    assert_eq!(r.class, Class::BootLoop, "{}", r.summary);
    assert!(r.summary.contains("APP: Restarting"), "{}", r.summary);

    let updates = [
        boot("Update Success: 301456\nRebooting..."),
        boot("Update Success: 301456\nRebooting..."),
        boot("ready"),
    ]
    .concat();
    assert_eq!(
        triage::triage_bytes(updates.as_bytes()).class,
        Class::HealthyBoot
    );
}

/// Lines pasted from serial monitors and forum replies carry prefixes; the triage reads
/// through them.
#[test]
fn prefixed_captures_get_the_same_class() {
    let bytes = std::fs::read(fixtures().join("corpus/soft-wdt-01.log")).unwrap();
    let want = triage::triage_bytes(&bytes).class;
    assert_eq!(want, Class::SoftWdt);
    let text = String::from_utf8_lossy(&bytes);
    for prefix in [
        "> ",
        "[14:58:27]",
        "[2023-01-05 12:00:01.123] ",
        "12:00:01.123 > ",
    ] {
        let prefixed: String = text.lines().map(|l| format!("{prefix}{l}\n")).collect();
        assert_eq!(
            triage::triage_bytes(prefixed.as_bytes()).class,
            want,
            "prefix {prefix:?}"
        );
    }
}

/// boot-log.md §6: the core's own crash lines (`Panic file:line func`, `Abort called`, ...)
/// are quoted in the summary, since they name the place.
#[test]
fn a_core_panic_is_quoted_with_its_place() {
    let log = b"[14:58:27]User exception (panic/abort/assert)\n\
        [14:58:27]Panic core_esp8266_main.cpp:191 __yield\n[14:58:27]>>>stack>>>\n";
    let r = triage::triage_bytes(log);
    assert_eq!(r.class, Class::ExceptionCrash);
    assert!(
        r.summary
            .contains("`Panic core_esp8266_main.cpp:191 __yield`"),
        "{}",
        r.summary
    );
}

/// Nothing to judge: the summary still says how far the boot got, as the boot list does.
#[test]
fn an_inconclusive_capture_says_where_the_boot_stopped() {
    let log = format!(
        "{}load 0x4010f000, len 1384, room 16 \ntail 8\nchksum 0x2d\ncsum 0x2d\nv9c56ed1f\n",
        banner(1, 3)
    );
    let r = triage::triage_bytes(log.as_bytes());
    assert_eq!(r.class, Class::Inconclusive);
    assert!(r.summary.contains("eboot v9c56ed1f"), "{}", r.summary);
    assert_eq!(r.evidence.len(), 1);
    let r = triage::triage_bytes(b"");
    assert!(r.summary.contains("no boot"), "{}", r.summary);
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

#[test]
fn threads_do_not_change_the_report() {
    // A few MB of corpus logs and noise, so that the capture spans many chunks, and an
    // unterminated last line. (Lines over `MAX_LINE` are cut where reads end, so a pipe could
    // cut them elsewhere than a file; tests/bootlog.rs checks that case read by read.)
    let mut logs: Vec<Vec<u8>> = std::fs::read_dir(fixtures().join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    logs.sort();
    let mut bytes = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while bytes.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&logs[x as usize % logs.len()]);
        if x.is_multiple_of(5) {
            bytes.extend((0..x % 3000).map(|i| (x >> (i % 56)) as u8));
        }
    }
    bytes.extend_from_slice(b"\nets Jan  8 2013,rst cause:4, boot mode:(3,6)");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &bytes).unwrap();
    let run = |threads: &str| {
        let out = harness()
            .args(["triage", "--format", "json", "--threads", threads])
            .arg(file.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let alone = run("0");
    let v: serde_json::Value = serde_json::from_str(&alone).unwrap();
    assert!(v["total_boots"].as_u64().unwrap() > 1000, "{v}");
    for threads in ["1", "3"] {
        assert_eq!(run(threads), alone, "--threads {threads}");
    }
    // The same through a pipe, whose reads are shorter and uneven.
    let mut child = harness()
        .args(["triage", "--format", "json", "--threads", "2", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        for piece in bytes.chunks(10_000) {
            stdin.write_all(piece).unwrap();
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let piped = String::from_utf8(out.stdout).unwrap();
    let name = file.path().display().to_string();
    assert_eq!(piped, alone.replace(&name, "<stdin>"));
}
