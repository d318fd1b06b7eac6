//! Image parser against esptool (a real peer), the `harness image` CLI, fixtures, and fuzzing.
//!
//! esptool is found through the `ESPTOOL` environment variable, else `esptool` on `PATH`; the
//! peer tests fail (they do not skip) when neither exists.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::board::FlashMode;
use harness::firmware::OtaMethod;
use harness::image::{self, BuildSpec, FlashFreq, FlashSize, Identity, ImageError};
use proptest::prelude::*;

const HARNESS: &str = env!("CARGO_BIN_EXE_harness");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn harness(args: &[&str]) -> Output {
    Command::new(HARNESS)
        .args(args)
        .output()
        .expect("run harness")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------------
// esptool as the reference parser

fn esptool() -> PathBuf {
    if let Some(p) = std::env::var_os("ESPTOOL") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("esptool"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "esptool not found: set ESPTOOL=/path/to/esptool (v5) or put `esptool` on PATH \
                 (pip install esptool); these tests compare our parser with it"
            )
        })
}

/// What `esptool --chip esp8266 image-info` printed.
#[derive(Debug, Default)]
struct EsptoolInfo {
    ok: bool,
    entry: Option<u32>,
    segment_count: Option<usize>,
    flash_size: Option<String>,
    flash_freq: Option<String>,
    flash_mode: Option<String>,
    /// (length, load address, file offset of the segment header)
    segments: Vec<(u32, u32, usize)>,
    checksum: Option<u8>,
    checksum_valid: Option<bool>,
    calculated: Option<u8>,
    text: String,
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("{s}"))
}

fn esptool_info(bytes: &[u8]) -> EsptoolInfo {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.bin");
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new(esptool())
        .args(["--chip", "esp8266", "image-info"])
        .arg(&path)
        .output()
        .expect("run esptool");
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    let mut info = EsptoolInfo {
        ok: out.status.success(),
        text: text.clone(),
        ..Default::default()
    };
    let mut in_segments = false;
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Entry point: ") {
            info.entry = Some(hex(v) as u32);
        } else if l == "Entry point not set" {
            info.entry = Some(0);
        } else if let Some(v) = l.strip_prefix("Segments: ") {
            info.segment_count = Some(v.parse().unwrap());
        } else if let Some(v) = l.strip_prefix("Flash size: ") {
            info.flash_size = Some(v.to_string());
        } else if let Some(v) = l.strip_prefix("Flash freq: ") {
            info.flash_freq = Some(v.to_string());
        } else if let Some(v) = l.strip_prefix("Flash mode: ") {
            info.flash_mode = Some(v.to_string());
        } else if l.starts_with("-------") {
            in_segments = true;
        } else if in_segments && l.is_empty() {
            in_segments = false;
        } else if in_segments {
            let w: Vec<&str> = l.split_whitespace().collect();
            info.segments
                .push((hex(w[1]) as u32, hex(w[2]) as u32, hex(w[3]) as usize));
        } else if let Some(v) = l.strip_prefix("Checksum: ") {
            let (stored, rest) = v.split_once(' ').unwrap();
            info.checksum = Some(hex(stored) as u8);
            info.checksum_valid = Some(rest == "(valid)");
            info.calculated = rest
                .strip_prefix("(invalid - calculated ")
                .map(|c| hex(c.trim_end_matches(')')) as u8);
        }
    }
    info
}

/// Parses `bytes` with both and asserts they agree on every field and on the verdict.
fn assert_agrees_with_esptool(bytes: &[u8], label: &str) {
    let theirs = esptool_info(bytes);
    let ours = image::parse(bytes);
    let img = match ours {
        Err(e) => {
            assert!(
                !theirs.ok,
                "{label}: we reject ({e}), esptool accepts:\n{}",
                theirs.text
            );
            return;
        }
        Ok(img) => img,
    };
    assert!(
        theirs.ok,
        "{label}: we accept, esptool rejects:\n{}",
        theirs.text
    );
    let h = img.header();
    assert_eq!(theirs.entry, Some(h.entry()), "{label}: entry");
    assert_eq!(
        theirs.segment_count,
        Some(h.segment_count() as usize),
        "{label}: segment count"
    );
    assert_eq!(
        theirs.flash_size.as_deref(),
        Some(h.flash_size().name()),
        "{label}: flash size"
    );
    assert_eq!(
        theirs.flash_freq.as_deref(),
        Some(h.flash_freq().name()),
        "{label}: flash freq"
    );
    assert_eq!(
        theirs.flash_mode,
        Some(h.flash_mode().to_string()),
        "{label}: flash mode"
    );
    let segs: Vec<_> = img
        .segments()
        .iter()
        .map(|s| (s.len(), s.addr(), s.header_offset()))
        .collect();
    assert_eq!(
        theirs.segments, segs,
        "{label}: segments (length, address, offset)"
    );
    let c = img.checksum();
    assert_eq!(theirs.checksum, Some(c.stored), "{label}: stored checksum");
    assert_eq!(
        theirs.checksum_valid,
        Some(c.is_valid()),
        "{label}: checksum verdict"
    );
    if !c.is_valid() {
        assert_eq!(
            theirs.calculated,
            Some(c.computed),
            "{label}: computed checksum"
        );
    }
}

fn make(dir: &Path, name: &str, extra: &[&str]) -> Vec<u8> {
    let path = dir.join(name);
    let mut args = vec![
        "image",
        "make",
        "--app",
        "sonoff-ota",
        "-o",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = harness(&args);
    assert!(
        out.status.success(),
        "harness image make {extra:?}: {}",
        stderr(&out)
    );
    std::fs::read(path).unwrap()
}

#[test]
fn esptool_reads_made_images_as_we_do() {
    let dir = tempfile::tempdir().unwrap();
    let variants: &[&[&str]] = &[
        &["--version", "1.0.0", "--size", "40000"],
        &[
            "--version",
            "2.0.0",
            "--ota",
            "arduino",
            "--flash-size",
            "4MB",
            "--flash-mode",
            "qio",
            "--flash-freq",
            "80m",
            "--size",
            "20K",
        ],
        &[
            "--version",
            "3",
            "--flash-size",
            "2MB",
            "--flash-mode",
            "dio",
            "--flash-freq",
            "26m",
            "--size",
            "0x5000",
            "--fault",
            "soft-wdt",
        ],
        &[
            "--version",
            "4",
            "--flash-size",
            "512KB",
            "--flash-mode",
            "qout",
            "--flash-freq",
            "20m",
            "--size",
            "16K",
        ],
        &["--version", "5", "--flash-size", "16MB", "--size", "16K"],
        &["--version", "6", "--flash-size", "4MB-c1", "--size", "16K"],
        &["--version", "7"], // default size, 300 KiB
    ];
    for (i, extra) in variants.iter().enumerate() {
        let file = make(dir.path(), &format!("v{i}.bin"), extra);
        // esptool reads the image at offset 0 of a combined file: eboot.
        assert_agrees_with_esptool(&file, &format!("{extra:?} at 0x0"));
        assert_agrees_with_esptool(&file[0x1000..], &format!("{extra:?} app"));
        let fw = image::parse_firmware(&file).unwrap();
        assert_eq!(fw.app().offset(), 0x1000);
        assert_eq!(image::parse(&file[0x1000..]).unwrap().segments().len(), 4);
    }
}

#[test]
fn esptool_and_we_agree_on_corrupted_images() {
    let dir = tempfile::tempdir().unwrap();
    let file = make(
        dir.path(),
        "c.bin",
        &["--version", "1.0.0", "--size", "24K"],
    );
    let app = file[0x1000..].to_vec();
    let eboot_len = image::parse(&file).unwrap().len();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut c = file.clone();
    c[0x100] ^= 0x5A; // eboot data
    cases.push(("eboot data byte flipped", c));
    let mut c = file.clone();
    c[eboot_len - 1] ^= 0xFF;
    cases.push(("eboot checksum byte flipped", c));
    let mut c = app.clone();
    c[0x3000] ^= 0x01;
    cases.push(("app irom byte flipped", c));
    let mut c = app.clone();
    *c.last_mut().unwrap() = c.last().unwrap().wrapping_add(1);
    cases.push(("app checksum byte changed", c));
    let mut c = app.clone();
    c[0] = 0x00;
    cases.push(("bad magic", c));
    let mut c = app.clone();
    c[0] = 0xEA;
    cases.push(("v2 magic", c));
    cases.push(("truncated mid segment", app[..5000].to_vec()));
    cases.push(("truncated before checksum", app[..app.len() - 1].to_vec()));
    cases.push(("truncated header", app[..5].to_vec()));
    cases.push(("empty", Vec::new()));
    let mut c = app.clone();
    c[1] = 17;
    cases.push(("17 segments", c));
    let mut c = app.clone();
    c[1] = 3; // one segment fewer: .rodata becomes padding/checksum territory
    cases.push(("segment count 3", c));
    let mut c = app.clone();
    c[0xC..0x10].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    cases.push(("absurd segment length", c));
    for (label, bytes) in &cases {
        assert_agrees_with_esptool(bytes, label);
    }
    // The ones we promise to reject, with the offset named.
    assert_eq!(
        image::parse(&cases[4].1),
        Err(ImageError::BadMagic {
            offset: 0,
            found: 0
        })
    );
    assert!(matches!(
        image::parse(&cases[6].1),
        Err(ImageError::SegmentPastEnd {
            index: 0,
            offset: 8,
            ..
        })
    ));
    assert!(matches!(
        image::parse(&cases[7].1),
        Err(ImageError::Truncated {
            what: "the checksum byte",
            ..
        })
    ));
}

#[test]
fn unknown_size_nibble_we_reject_esptool_warns() {
    // esptool only warns about an undefined flash size; we refuse the image. Both flag it.
    let dir = tempfile::tempdir().unwrap();
    let mut app =
        make(dir.path(), "n.bin", &["--version", "1", "--size", "16K"])[0x1000..].to_vec();
    app[3] = 0x70;
    let theirs = esptool_info(&app);
    assert!(
        theirs.text.contains("Invalid flash size"),
        "{}",
        theirs.text
    );
    assert_eq!(
        image::parse(&app),
        Err(ImageError::UnknownFlashSize {
            offset: 3,
            value: 7
        })
    );
}

// ---------------------------------------------------------------------------------------------
// The CLI

fn fixture(name: &str) -> String {
    repo_root()
        .join("fixtures/images")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn inspect_names_both_problems_of_a_4mb_qio_image_on_the_4ch() {
    let out = harness(&[
        "image",
        "inspect",
        &fixture("sonoff-ota-1.0.0-4mb-qio.bin"),
        "--board",
        "sonoff-4ch",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(
        text.contains("flash-size-too-big: header says 4MB, Sonoff 4CH (ESP8285) has 1MB"),
        "{text}"
    );
    assert!(
        text.contains("flash-mode-unsupported: header flash mode is QIO"),
        "{text}"
    );
    assert!(text.contains("can only run DOUT"), "{text}");
    assert!(
        text.contains("HILFW app=sonoff-ota version=1.0.0 ota=arduino"),
        "{text}"
    );
    assert!(text.contains("ota-wraps-into-system"), "{text}");
    assert!(text.contains("verdict    FAIL (3 errors"), "{text}");
}

#[test]
fn inspect_json_has_the_fields() {
    let out = harness(&[
        "image",
        "inspect",
        &fixture("sonoff-ota-1.0.0-4mb-qio.bin"),
        "--board",
        "sonoff-4ch",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["layout"], "combined");
    assert_eq!(v["size"], 32768);
    assert_eq!(v["flash"]["mode"], "qio");
    assert_eq!(v["flash"]["size"], "4MB");
    assert_eq!(v["flash"]["size_bytes"], 4 << 20);
    assert_eq!(v["flash"]["freq"], "40m");
    assert_eq!(v["eboot"]["segments"][0]["addr"], 0x4010_F000u32);
    assert_eq!(v["eboot"]["segments"][0]["len"], 1384);
    assert_eq!(v["eboot"]["checksum"]["stored"], 0x2D);
    assert_eq!(v["eboot"]["checksum"]["valid"], true);
    assert_eq!(v["app"]["offset"], 0x1000);
    assert_eq!(v["app"]["header"]["segment_count"], 4);
    assert_eq!(v["app"]["segments"][0]["name"], ".irom0.text");
    assert_eq!(v["app"]["segments"][0]["addr"], 0x4020_1010u32);
    assert_eq!(v["app"]["segments"][3]["name"], ".rodata");
    assert_eq!(v["app_checksum"], "valid");
    assert_eq!(v["flash_crc"]["valid"], true);
    assert_eq!(v["version_word"], 32768);
    assert_eq!(v["identity"]["app"], "sonoff-ota");
    assert_eq!(v["identity"]["version"], "1.0.0");
    assert_eq!(v["identity"]["ota"], "arduino");
    assert_eq!(v["identity"]["fault"], serde_json::Value::Null);
    assert_eq!(v["board"], "sonoff-4ch");
    let ids: Vec<_> = v["lints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].clone())
        .collect();
    assert_eq!(
        ids,
        [
            "flash-size-too-big",
            "flash-mode-unsupported",
            "ota-wraps-into-system"
        ]
    );
    assert_eq!(v["lints"][0]["severity"], "error");
    assert!(v["lints"][0]["remedy"].as_str().unwrap().contains("1MB"));
    assert_eq!(v["verdict"], "fail");
}

#[test]
fn inspect_passes_good_fixtures_and_reports_the_fault() {
    for name in [
        "sonoff-ota-1.0.0-webserver.bin",
        "sonoff-ota-2.0.0-arduino.bin",
    ] {
        for board in ["sonoff-basic", "sonoff-4ch"] {
            let out = harness(&["image", "inspect", &fixture(name), "--board", board]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{name} on {board}: {}",
                stdout(&out)
            );
            assert!(stdout(&out).contains("lints for"), "{}", stdout(&out));
        }
    }
    let out = harness(&[
        "image",
        "inspect",
        &fixture("sonoff-ota-1.0.1-wdt-loop.bin"),
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["identity"]["fault"], "wdt-loop");
    assert_eq!(v["board"], serde_json::Value::Null);
}

#[test]
fn inspect_exit_codes_for_corrupt_and_unparsable_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("sonoff-ota-1.0.0-webserver.bin")).unwrap();
    bytes[0x200] ^= 1;
    let corrupt = dir.path().join("corrupt.bin");
    std::fs::write(&corrupt, &bytes).unwrap();
    let out = harness(&["image", "inspect", corrupt.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("boot-checksum"), "{}", stdout(&out));

    let truncated = dir.path().join("truncated.bin");
    std::fs::write(&truncated, &bytes[..0x3000]).unwrap();
    let out = harness(&["image", "inspect", truncated.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("offset 0x1008"), "{}", stderr(&out));

    let out = harness(&[
        "image",
        "inspect",
        dir.path().join("missing.bin").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));

    let out = harness(&[
        "image",
        "inspect",
        &fixture("sonoff-ota-1.0.0-webserver.bin"),
        "--board",
        "sonoff-pow",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("sonoff-4ch"), "{}", stderr(&out));
}

#[test]
fn make_rejects_unknown_faults_and_tiny_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("x.bin");
    let o = out_path.to_str().unwrap();
    let out = harness(&[
        "image",
        "make",
        "--app",
        "a",
        "--version",
        "1",
        "--fault",
        "explode",
        "-o",
        o,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown fault `explode`"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("hang-after-ota"), "{}", stderr(&out));
    let out = harness(&[
        "image",
        "make",
        "--app",
        "a",
        "--version",
        "1",
        "--size",
        "100",
        "-o",
        o,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("too small"), "{}", stderr(&out));
    assert!(!out_path.exists());
    let out = harness(&["image", "make", "--app", "a b", "--version", "1", "-o", o]);
    assert_eq!(out.status.code(), Some(2));
    let help = stdout(&harness(&["image", "make", "--help"]));
    assert!(
        help.contains("Examples:") && help.contains("--fault"),
        "{help}"
    );
    let help = stdout(&harness(&["image", "inspect", "--help"]));
    assert!(
        help.contains("Examples:") && help.contains("--board"),
        "{help}"
    );
}

// ---------------------------------------------------------------------------------------------
// Fixtures never drift

#[test]
fn fixtures_regenerate_byte_identical() {
    let root = repo_root();
    let dir = root.join("fixtures/images");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut covered = Vec::new();
    for line in readme
        .lines()
        .filter(|l| l.starts_with("harness image make "))
    {
        let mut args: Vec<String> = line.split_whitespace().skip(1).map(String::from).collect();
        let o = args
            .iter()
            .position(|a| a == "-o")
            .expect("every line has -o");
        let target = root.join(&args[o + 1]);
        let fresh = tmp.path().join(target.file_name().unwrap());
        args[o + 1] = fresh.to_str().unwrap().to_string();
        let out = Command::new(HARNESS).args(&args).output().unwrap();
        assert!(out.status.success(), "{line}: {}", stderr(&out));
        let want = std::fs::read(&target).unwrap_or_else(|e| panic!("{}: {e}", target.display()));
        // Small fixtures; the one exception is 128 KiB so that eboot's copy of it runs long
        // enough for a scenario to cut it (fixtures/images/README.md).
        assert!(
            want.len() <= 128 * 1024,
            "{} is bigger than 128 KiB",
            target.display()
        );
        assert!(
            std::fs::read(&fresh).unwrap() == want,
            "{line}: output differs from the fixture"
        );
        covered.push(target.file_name().unwrap().to_owned());
    }
    assert!(
        covered.len() >= 6,
        "README lists {} commands",
        covered.len()
    );
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name();
        if Path::new(&name).extension().is_some_and(|e| e == "bin") {
            assert!(
                covered.contains(&name),
                "{name:?} has no `harness image make` line in README"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Never panic

fn small_valid_image() -> Vec<u8> {
    let identity = Identity::new("p", "1", OtaMethod::Arduino, None).unwrap();
    let size = image::build::min_size(&identity);
    image::build(&BuildSpec {
        identity,
        flash_mode: FlashMode::Dout,
        flash_size: FlashSize::M1,
        flash_freq: FlashFreq::F40m,
        size,
    })
    .unwrap()
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..32))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Remove(i, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len().max(1);
    match m {
        // Bias towards the headers, where the interesting fields are.
        Mutation::Set(i, b) => {
            let at = if i % 2 == 0 {
                i % 0x1020.min(len)
            } else {
                i % len
            };
            if let Some(x) = bytes.get_mut(at) {
                *x = *b;
            }
        }
        Mutation::Truncate(i) => bytes.truncate(i % len),
        Mutation::Insert(i, v) => {
            let at = i % len;
            bytes.splice(at..at, v.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let at = i % len;
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = image::parse(&bytes);
        if let Ok(fw) = image::parse_firmware(&bytes) {
            let _ = image::check(&fw);
        }
        let _ = Identity::find(&bytes);
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes_after_a_magic(tail in proptest::collection::vec(any::<u8>(), 0..2048), nseg in 0u8..20) {
        let mut bytes = vec![0xE9, nseg, 3, 0x20];
        bytes.extend(tail);
        let _ = image::parse(&bytes);
        let _ = image::parse_firmware(&bytes);
    }

    #[test]
    fn parsers_never_panic_on_mutated_images(muts in proptest::collection::vec(mutation(), 1..6)) {
        let mut bytes = small_valid_image();
        for m in &muts {
            apply(&mut bytes, m);
        }
        let _ = image::parse(&bytes);
        if bytes.len() > 0x1000 {
            let _ = image::parse(&bytes[0x1000..]);
        }
        if let Ok(fw) = image::parse_firmware(&bytes) {
            for board in harness::board::all() {
                let _ = image::lint(&fw, board);
            }
            prop_assert!(fw.app().end() <= bytes.len());
        }
    }
}

/// esptool agrees with the parser on every fixture image the tests and scenarios use, at 0x0
/// (eboot) and at 0x1000 (the app).
#[test]
fn esptool_agrees_on_every_fixture_image() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/images");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "bin") {
            continue;
        }
        let file = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_agrees_with_esptool(&file, &format!("{name} at 0x0"));
        assert_agrees_with_esptool(&file[0x1000..], &format!("{name} app"));
        seen += 1;
    }
    assert!(seen >= 12, "only {seen} fixture images");
}
