//! `harness image`: inspect a firmware file (and lint it against a board), or make a test one.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use harness::board::{self, BoardProfile, FlashMode};
use harness::firmware::OtaMethod;
use harness::image::build::DEFAULT_SIZE;
use harness::image::{
    self, AppChecksum, BuildSpec, Fault, Firmware, FlashCrc, FlashFreq, FlashSize, Header,
    Identity, Image, Layout, Lint, Segment, Severity,
};
use miette::{Context, IntoDiagnostic};
use serde::Serialize;

use super::CmdResult;

/// Inspect or make ESP8266 firmware images.
#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Show header, segments, checksums, identity and (with --board) lints of a firmware file.
    ///
    /// Exit status: 0 when nothing is wrong (warnings allowed), 1 when a check of severity
    /// error fails, 2 when the file cannot be read or parsed (the message names the offset).
    #[command(after_help = "Examples:\n  \
        harness image inspect build/sonoff.ino.bin --board sonoff-4ch\n  \
        harness image inspect fixtures/images/sonoff-ota-1.0.0-webserver.bin --format json")]
    Inspect(InspectArgs),

    /// Write a valid, deterministic firmware file shaped like an Arduino build.
    ///
    /// eboot (one 1384-byte segment at 0x4010f000, checksum 0x2d) at 0x0, 0xAA up to 0x1000,
    /// then the app: .irom0.text (with core 3.x __crc_len/__crc_val, or an older core's
    /// core_version word), .text, .data and .rodata holding the identity line
    /// `HILFW app=.. version=.. ota=.. [fault=..] [core=..] [password=..]`. Same arguments,
    /// same bytes.
    #[command(
        disable_version_flag = true,
        after_help = "Examples:\n  \
        harness image make --app sonoff-ota --version 1.0.0 -o sonoff-ota-1.0.0.bin\n  \
        harness image make --app sonoff-ota --version 2.0.0 --ota arduino --size 64KiB \
        --fault wdt-loop -o wdt.bin"
    )]
    Make(MakeArgs),
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// The firmware file (an Arduino .bin: eboot + app, or a plain app image).
    file: PathBuf,

    /// Also check against this board (sonoff-basic, sonoff-4ch).
    #[arg(long, value_name = "BOARD")]
    board: Option<String>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// For people.
    Text,
    /// For machines (serde JSON, one object).
    Json,
}

#[derive(Debug, Args)]
struct MakeArgs {
    /// Application name in the identity line.
    #[arg(long, value_name = "NAME")]
    app: String,

    /// Version in the identity line.
    #[arg(long, value_name = "V")]
    version: String,

    /// OTA method of the firmware: arduino (espota) or webserver (HTTP /update).
    #[arg(long, default_value = "webserver", value_name = "arduino|webserver")]
    ota: OtaMethod,

    /// Flash size in both headers: 256KB 512KB 1MB 2MB 4MB 2MB-c1 4MB-c1 8MB 16MB.
    #[arg(long, default_value = "1MB", value_name = "SIZE")]
    flash_size: FlashSize,

    /// Flash mode in both headers: qio qout dio dout.
    #[arg(long, default_value = "dout", value_name = "MODE")]
    flash_mode: FlashMode,

    /// Flash frequency in both headers: 20m 26m 40m 80m.
    #[arg(long, default_value = "40m", value_name = "FREQ")]
    flash_freq: FlashFreq,

    /// Total file size (bytes, or 64K/64KiB/1M/0x10000); rounded up to a multiple of 16.
    #[arg(long, value_parser = parse_bytes, value_name = "BYTES")]
    size: Option<usize>,

    /// Built-in fault: crash-on-boot, wdt-loop, soft-wdt, hang-after-ota, no-ota.
    #[arg(long, value_name = "FAULT")]
    fault: Option<Fault>,

    /// esp8266/Arduino core version the image stands for. Recorded as `core=` (unless 3.1.2);
    /// cores before 3.0 get a core_version word at 0x1010 instead of the CRC words, and the
    /// simulator models that core's Updater (2.3.0: no bootstrap check).
    #[arg(long, default_value = image::identity::DEFAULT_CORE, value_name = "VERSION")]
    core: String,

    /// Build-time OTA password, stored in plain text as `password=` in the identity record
    /// (a test-image convenience: the simulator reads it from there).
    #[arg(long, value_name = "TEXT")]
    password: Option<String>,

    /// Keep only the first BYTES of the file (a download cut short: header intact, segments
    /// cut; for tests of what refuses such a file).
    #[arg(long, value_parser = parse_bytes, value_name = "BYTES")]
    truncate: Option<usize>,

    /// Output file.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .map(|s| format!("{s}B"))
        .unwrap_or_else(|| t.to_string());
    board::parse_size(&t)
        .map(|n| n as usize)
        .ok_or_else(|| format!("`{text}` is not a size (bytes, 64K, 64KiB, 1M or 0x10000)"))
}

/// Runs `harness image ...`.
pub fn run(args: ImageArgs) -> CmdResult {
    match args.command {
        ImageCommand::Inspect(a) => inspect(a),
        ImageCommand::Make(a) => make(a),
    }
}

fn make(a: MakeArgs) -> CmdResult {
    let mut identity = Identity::new(&a.app, &a.version, a.ota, a.fault)?.with_core(&a.core)?;
    if let Some(password) = &a.password {
        identity = identity.with_password(password)?;
    }
    let spec = BuildSpec {
        identity,
        flash_mode: a.flash_mode,
        flash_size: a.flash_size,
        flash_freq: a.flash_freq,
        size: a.size.unwrap_or(DEFAULT_SIZE),
    };
    let mut bytes = image::build(&spec)?;
    if let Some(keep) = a.truncate {
        if keep >= bytes.len() {
            miette::bail!(
                "--truncate {keep} keeps the whole {}-byte image; give fewer bytes",
                bytes.len()
            );
        }
        bytes.truncate(keep);
    }
    std::fs::write(&a.output, &bytes)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot write {}", a.output.display()))?;
    let line = spec.identity.line();
    crate::cli::emit(&format!(
        "wrote {} ({} bytes): {line}\n",
        a.output.display(),
        bytes.len()
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn inspect(a: InspectArgs) -> CmdResult {
    let board = a.board.as_deref().map(board::find).transpose()?;
    let bytes = std::fs::read(&a.file)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", a.file.display()))?;
    let fw = image::parse_firmware(&bytes).wrap_err_with(|| {
        format!(
            "{} is not a usable ESP8266 firmware image",
            a.file.display()
        )
    })?;
    let lints = match board {
        Some(b) => image::lint(&fw, b),
        None => image::check(&fw),
    };
    let errors = lints
        .iter()
        .filter(|l| l.severity == Severity::Error)
        .count();
    let file = a.file.display().to_string();
    let out = match a.format {
        Format::Text => render_text(&file, &fw, board, &lints),
        Format::Json => {
            let json = InspectJson::new(file, &fw, board, &lints);
            serde_json::to_string_pretty(&json).into_diagnostic()? + "\n"
        }
    };
    crate::cli::emit(&out)?;
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn render_text(file: &str, fw: &Firmware, board: Option<&BoardProfile>, lints: &[Lint]) -> String {
    let mut s = String::new();
    let boot = fw.boot_image().header();
    let _ = writeln!(s, "file       {file} ({} bytes)", fw.len());
    let layout = match (fw.layout(), fw.eboot()) {
        (Layout::Combined, Some(e)) => format!(
            "Arduino two-stage: eboot at 0x0 ({} bytes, 0xAA fill to 0x1000{}), app at 0x1000 \
             ({} bytes)",
            e.len(),
            match fw.eboot_padding_other() {
                0 => String::new(),
                n => format!(", {n} other bytes"),
            },
            fw.app().len()
        ),
        _ => format!("plain app image at 0x0 ({} bytes)", fw.app().len()),
    };
    let _ = writeln!(s, "layout     {layout}");
    if fw.trailing() > 0 {
        let _ = writeln!(s, "trailing   {} bytes after the app image", fw.trailing());
    }
    let _ = writeln!(
        s,
        "flash      {} {} {} (header at 0x0: what the ROM boots with)",
        boot.flash_mode(),
        boot.flash_size(),
        boot.flash_freq()
    );
    let _ = writeln!(
        s,
        "identity   {}",
        fw.identity()
            .map_or_else(|| "none (no HILFW record)".to_string(), |i| i.line())
    );
    if let Some(word) = fw.version_word() {
        let what = match fw.flash_crc() {
            Some(c) => format!("__crc_len (core >= 3.0); {}", crc_text(&c)),
            None => "core_version (core < 3.0)".to_string(),
        };
        let _ = writeln!(
            s,
            "0x1010     {word:#010x}, printed by eboot as v{word:08x}: {what}"
        );
    }
    if let Some(e) = fw.eboot() {
        render_image(&mut s, "eboot", e, checksum_text(e, None));
    }
    render_image(
        &mut s,
        "app",
        fw.app(),
        checksum_text(fw.app(), Some(fw.app_checksum())),
    );
    let _ = writeln!(s);
    match board {
        Some(b) => {
            let _ = writeln!(s, "lints for {} ({}):", b.name, b.id);
        }
        None => {
            let _ = writeln!(
                s,
                "checks (no --board, so flash size/mode/space were not checked):"
            );
        }
    }
    if lints.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for l in lints {
        let sev = match l.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(s, "  {sev:<7} {}: {}", l.id.name(), l.message);
        let _ = writeln!(s, "          remedy: {}", l.remedy);
    }
    let errors = lints
        .iter()
        .filter(|l| l.severity == Severity::Error)
        .count();
    let warnings = lints.len() - errors;
    let verdict = if errors > 0 { "FAIL" } else { "OK" };
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let _ = writeln!(
        s,
        "verdict    {verdict} ({errors} error{}, {warnings} warning{})",
        plural(errors),
        plural(warnings)
    );
    s
}

fn render_image(s: &mut String, what: &str, img: &Image, checksum: String) {
    let h = img.header();
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{what} image at {:#x}: {} segment{}, {} {} {}, entry {:#010x}, {} bytes",
        img.offset(),
        h.segment_count(),
        if h.segment_count() == 1 { "" } else { "s" },
        h.flash_mode(),
        h.flash_size(),
        h.flash_freq(),
        h.entry(),
        img.len()
    );
    let _ = writeln!(s, "  seg  offset    load addr   length  name");
    for seg in img.segments() {
        let _ = writeln!(
            s,
            "  {:<3}  {:#08x}  {:#010x}  {:<6}  {}",
            seg.index(),
            seg.header_offset(),
            seg.addr(),
            seg.len(),
            seg.name()
        );
    }
    let _ = writeln!(s, "  checksum {checksum}");
}

fn checksum_text(img: &Image, verdict: Option<AppChecksum>) -> String {
    let c = img.checksum();
    let v = match verdict {
        Some(AppChecksum::ValidBeforeCrcPatch) => {
            "valid before elf2bin patched the CRC words (normal for core >= 3.0)".to_string()
        }
        _ if c.is_valid() => "valid".to_string(),
        _ => format!("INVALID, computed {:#04x}", c.computed),
    };
    format!("{:#04x} at {:#x}: {v}", c.stored, c.offset)
}

fn crc_text(c: &FlashCrc) -> String {
    if c.is_valid() {
        format!("CRC {:#010x} valid", c.stored)
    } else {
        format!(
            "stored length {} / CRC {:#010x}, file {} bytes / CRC {:#010x}: MISMATCH",
            c.len_word, c.stored, c.file_len, c.computed
        )
    }
}

/// The `--format json` document.
#[derive(Serialize)]
struct InspectJson<'a> {
    file: String,
    size: usize,
    layout: Layout,
    flash: FlashJson,
    eboot: Option<ImageJson<'a>>,
    app: ImageJson<'a>,
    app_checksum: AppChecksum,
    eboot_padding_other: usize,
    trailing: usize,
    version_word: Option<u32>,
    flash_crc: Option<CrcJson>,
    identity: Option<IdentityJson<'a>>,
    board: Option<&'a str>,
    lints: &'a [Lint],
    errors: usize,
    warnings: usize,
    verdict: &'static str,
}

#[derive(Serialize)]
struct FlashJson {
    mode: FlashMode,
    size: FlashSize,
    size_bytes: u32,
    freq: FlashFreq,
}

#[derive(Serialize)]
struct ImageJson<'a> {
    offset: usize,
    len: usize,
    header: &'a Header,
    segments: &'a [Segment],
    checksum: ChecksumJson,
}

#[derive(Serialize)]
struct ChecksumJson {
    offset: usize,
    stored: u8,
    computed: u8,
    valid: bool,
}

#[derive(Serialize)]
struct CrcJson {
    #[serde(flatten)]
    crc: FlashCrc,
    valid: bool,
}

#[derive(Serialize)]
struct IdentityJson<'a> {
    #[serde(flatten)]
    identity: &'a Identity,
    line: String,
}

impl<'a> InspectJson<'a> {
    fn new(
        file: String,
        fw: &'a Firmware,
        board: Option<&'a BoardProfile>,
        lints: &'a [Lint],
    ) -> Self {
        let image = |img: &'a Image| {
            let c = img.checksum();
            ImageJson {
                offset: img.offset(),
                len: img.len(),
                header: img.header(),
                segments: img.segments(),
                checksum: ChecksumJson {
                    offset: c.offset,
                    stored: c.stored,
                    computed: c.computed,
                    valid: c.is_valid(),
                },
            }
        };
        let boot = fw.boot_image().header();
        let errors = lints
            .iter()
            .filter(|l| l.severity == Severity::Error)
            .count();
        InspectJson {
            file,
            size: fw.len(),
            layout: fw.layout(),
            flash: FlashJson {
                mode: boot.flash_mode(),
                size: boot.flash_size(),
                size_bytes: boot.flash_size_bytes(),
                freq: boot.flash_freq(),
            },
            eboot: fw.eboot().map(image),
            app: image(fw.app()),
            app_checksum: fw.app_checksum(),
            eboot_padding_other: fw.eboot_padding_other(),
            trailing: fw.trailing(),
            version_word: fw.version_word(),
            flash_crc: fw.flash_crc().map(|crc| CrcJson {
                crc,
                valid: crc.is_valid(),
            }),
            identity: fw.identity().map(|identity| IdentityJson {
                identity,
                line: identity.line(),
            }),
            board: board.map(|b| b.id.as_str()),
            lints,
            errors,
            warnings: lints.len() - errors,
            verdict: if errors > 0 { "fail" } else { "pass" },
        }
    }
}
