//! `harness flash`: lint an image, write it through the ESP8266 ROM loader, boot it, verify it.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Args};
use harness::board::{self, BoardProfile};
use harness::capture::{Capture, CaptureConfig, DEFAULT_APP_BAUD};
use harness::flash::{
    self, FlashError, FlashOptions, Progress, SyncConfig, VERIFY_TIMEOUT, Verification, Written,
};
use harness::image;
use harness::rig::{
    self, BoardConfig, OpenOptions, RigConfig, RigError, SerialLink, TimeScale, safety,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use miette::{Context as _, IntoDiagnostic as _};

use super::CmdResult;

/// How long to wait for the identity line with `--port`, where a person power-cycles the board.
const PORT_VERIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// Write a firmware image at 0x0 through the ESP8266 ROM serial loader, reboot, verify.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["board", "port"])))]
pub struct FlashArgs {
    /// The firmware file (the .bin of an Arduino build: eboot + app), written at 0x0.
    image: PathBuf,

    /// A board of the rig file; without --rig, a board of the built-in virtual rig (`basic`,
    /// `4ch`, or their kinds `sonoff-basic`, `sonoff-4ch`).
    #[arg(long, short, value_name = "NAME")]
    board: Option<String>,

    /// The rig file naming --board.
    #[arg(long, value_name = "FILE", requires = "board")]
    rig: Option<PathBuf>,

    /// A bare serial port, no rig: you put the board into download mode before, and
    /// power-cycle it after (the harness says when).
    #[arg(long, value_name = "PATH", requires = "kind", conflicts_with_all = ["board", "rig"])]
    port: Option<PathBuf>,

    /// The board kind with --port: sonoff-basic or sonoff-4ch.
    #[arg(long, value_name = "KIND", requires = "port")]
    kind: Option<String>,

    /// Flash even if the image fails a lint or does not parse as an ESP8266 image.
    #[arg(long)]
    force: bool,

    /// Do not wait for the image's identity line after the reboot.
    #[arg(long)]
    no_verify: bool,

    /// The rate to talk to the ROM loader at (it measures it from the first SYNC).
    #[arg(long, default_value_t = 115_200, value_name = "BAUD")]
    baud: u32,

    /// Seconds to wait for the identity line after the reboot [default: 10 on a rig, 60 with
    /// --port]. Device time: a virtual board that runs faster than real time waits less.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    verify_timeout: Option<Duration>,

    /// Keep everything the board sends in this file (raw bytes; an index goes beside it).
    #[arg(long, value_name = "FILE")]
    capture: Option<PathBuf>,
}

/// The long help of `harness flash`.
pub const LONG_ABOUT: &str = "\
Write a firmware image at 0x0 through the ESP8266 ROM serial loader, reboot the board, and \
verify that it runs the image.

The image is first linted against the board (flash size, flash mode, space; see `harness image \
inspect`) and refused when a check fails, unless --force.

With a rig board (--board), the rig holds GPIO0 low across a power-on (the ROM serial loader), \
the harness syncs with the ROM, checks the chip (ESP8266 or ESP8285) and the flash size against \
the board profile, erases and writes the image in 1 KiB blocks, then power-cycles the board with \
GPIO0 released. A power cycle, not esptool's `--after soft-reset`: a soft start keeps the boot \
mode latched in download mode, and the firmware's first restart (an OTA, say) then hangs in the \
ROM loader.

With --port alone there are no power or GPIO0 lines: put the board into download mode yourself \
(hold GPIO0 / the button low while powering on; release after the banner), and power-cycle it \
when the harness says so.

Verification: the ESP8266 ROM loader can neither read flash back nor hash it, so the harness \
boots the image and waits for its identity line (`HILFW app=.. version=..`, printed by the \
reference firmware) to equal the one embedded in the image. Where esptool is installed, its \
stub-based `esptool verify-flash 0x0 IMAGE` (an MD5 of the flash) is the deeper check.

Exit status: 0 written and verified (or written, with --no-verify); 1 the image failed a lint, or \
the board failed: no sync, a ROM error, wrong chip or flash size, a verify mismatch or no \
identity line; 2 the harness could not do its job (bad arguments, unreadable file, rig or port \
error).";

/// Examples shown after `harness flash --help`.
pub const EXAMPLES: &str = "Examples:
  harness flash fixtures/images/sonoff-ota-1.0.0-webserver.bin --board sonoff-4ch
  harness flash build/sonoff.ino.bin --rig scenarios/rigs/pi.toml --board basic
  harness flash build/sonoff.ino.bin --port /dev/ttyUSB0 --kind sonoff-basic
  harness flash wrong-layout.bin --board basic --force --no-verify";

fn parse_secs(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{text}` is not a number of seconds between 0 and 3600"))
}

/// Runs `harness flash`.
pub fn run(args: FlashArgs) -> CmdResult {
    let bytes = std::fs::read(&args.image)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", args.image.display()))?;
    if let Some(port) = args.port.clone() {
        let kind = board::find(args.kind.as_deref().unwrap_or_default())?;
        if !lint_gate(&args, &bytes, kind)? {
            return Ok(ExitCode::from(1));
        }
        return flash_port(&args, port, kind, &bytes);
    }
    let rig_config = match &args.rig {
        Some(path) => RigConfig::load(path)?,
        None => RigConfig::builtin_virtual(),
    };
    let board = find_board(&rig_config, args.board.as_deref().unwrap_or_default())?;
    if !lint_gate(&args, &bytes, board.profile)? {
        return Ok(ExitCode::from(1));
    }
    safety::install_signal_handler().into_diagnostic()?;
    safety::install_panic_hook();
    let options = OpenOptions {
        capture_file: args.capture.clone(),
        ..OpenOptions::default()
    };
    let mut rig = rig::open(board, &options)?;
    eprintln!(
        "flashing {} ({} bytes) on {} ({}) via {}",
        args.image.display(),
        bytes.len(),
        board.name,
        board.profile.name,
        board.backend.kind().name()
    );
    let flash_options = FlashOptions {
        sync: sync_config(&args),
        verify: !args.no_verify,
        verify_timeout: args.verify_timeout.unwrap_or(VERIFY_TIMEOUT),
        ..FlashOptions::default()
    };
    let mut ui = Ui::new(std::io::stderr().is_terminal());
    let result = flash::flash_board(&mut rig, &bytes, &flash_options, &mut |p| ui.progress(p));
    ui.finish();
    match result {
        Ok(report) => {
            print_written(&Written {
                chip: report.chip,
                flash_id: report.flash_id,
                write: report.write,
            })?;
            print_verification(&report.verification, "the power cycle")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => failure(e),
    }
}

/// A board by name, or by kind when exactly one board of the rig has that kind.
fn find_board<'a>(rig: &'a RigConfig, name: &str) -> Result<&'a BoardConfig, RigError> {
    rig.board(name).or_else(|e| {
        let mut of_kind = rig.boards.iter().filter(|b| b.profile.id == name);
        match (of_kind.next(), of_kind.next()) {
            (Some(b), None) => Ok(b),
            _ => Err(e),
        }
    })
}

fn sync_config(args: &FlashArgs) -> SyncConfig {
    SyncConfig {
        baud: args.baud,
        ..SyncConfig::default()
    }
}

/// Device failures are exit 1 (printed here); harness failures go up as errors (2).
fn failure(e: FlashError) -> CmdResult {
    if e.is_dut_failure() {
        eprintln!("{:?}", miette::Report::new(e));
        Ok(ExitCode::from(1))
    } else {
        Err(e.into())
    }
}

/// `--port`: the person at the bench does the resets.
fn flash_port(args: &FlashArgs, port: PathBuf, kind: &BoardProfile, bytes: &[u8]) -> CmdResult {
    let _lock = rig::lock::lock_port(&port)?;
    let mut config = CaptureConfig::new(&port);
    config.file = args.capture.clone();
    config.follow = false;
    let capture = std::sync::Arc::new(Capture::start(config)?);
    eprintln!(
        "syncing with the ROM loader on {} (the board must be in download mode: hold GPIO0 low \
         while powering on; release after the banner)",
        port.display()
    );
    let options = FlashOptions {
        sync: sync_config(args),
        ..FlashOptions::default()
    };
    let expected = flash::expected_identity(bytes);
    // Subscribed before anything is written, so the identity line cannot be missed however
    // soon the board is power-cycled.
    let lines = capture.subscribe();
    let mut ui = Ui::new(std::io::stderr().is_terminal());
    let mut link = SerialLink::new(std::sync::Arc::clone(&capture));
    let result = flash::write_image(&mut link, kind, bytes, &options, None, &mut |p| {
        ui.progress(p)
    });
    ui.finish();
    let written = match result {
        Ok(w) => w,
        Err(e) => return failure(e),
    };
    print_written(&written)?;
    let verification = match (args.no_verify, expected) {
        (true, _) => Verification::Skipped("not asked for"),
        (false, None) => Verification::Skipped("the image has no identity record"),
        (false, Some(expected)) => {
            // The app talks at its own rate; the ROM's 74880 banner in between does not matter.
            capture.set_baud(DEFAULT_APP_BAUD)?;
            let timeout = args.verify_timeout.unwrap_or(PORT_VERIFY_TIMEOUT);
            outln!(
                "now power-cycle the board with GPIO0 released; waiting up to {:.0} s for `{}`",
                timeout.as_secs_f64(),
                expected
            )?;
            match flash::wait_identity(&lines, expected, timeout, TimeScale::REAL) {
                Ok(id) => Verification::Identity(id),
                Err(e) => return failure(e),
            }
        }
    };
    print_verification(&verification, "the reboot")?;
    if matches!(verification, Verification::Skipped(_)) {
        outln!("the board is still in the ROM loader: power-cycle it with GPIO0 released")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_written(w: &Written) -> miette::Result<()> {
    outln!(
        "chip: {} (MAC {}, crystal {} MHz)",
        w.chip.description,
        w.chip.mac_string(),
        w.chip.crystal_mhz
    )?;
    if let Some(id) = w.flash_id {
        outln!("flash: {id}")?;
    }
    let secs = w.write.elapsed.as_secs_f64();
    outln!(
        "wrote {} bytes at {:#010x} in {:.1} s ({:.1} KiB/s){}",
        w.write.bytes,
        w.write.offset,
        secs,
        f64::from(w.write.bytes) / 1024.0 / secs.max(1e-6),
        match w.write.retries {
            0 => String::new(),
            n => format!(", {n} block(s) sent again"),
        }
    )
}

fn print_verification(v: &Verification, after: &str) -> miette::Result<()> {
    match v {
        Verification::Identity(id) => outln!("verified: the board printed `{id}` after {after}"),
        Verification::Skipped(why) => outln!("not verified: {why}"),
    }
}

/// Lints the image; `Ok(false)` when it is refused (printed on stderr).
fn lint_gate(args: &FlashArgs, bytes: &[u8], board: &BoardProfile) -> miette::Result<bool> {
    let fw = match image::parse_firmware(bytes) {
        Ok(fw) => fw,
        Err(e) if args.force => {
            eprintln!(
                "warning: {} is not a usable ESP8266 image ({e}); flashing it anyway (--force)",
                args.image.display()
            );
            return Ok(true);
        }
        Err(e) => {
            return Err(miette::Report::new(e).wrap_err(format!(
                "{} is not a usable ESP8266 firmware image (--force flashes it anyway)",
                args.image.display()
            )));
        }
    };
    let lints = image::lint(&fw, board);
    if !lints.is_empty() {
        eprintln!("lints for {} ({}):", board.name, board.id);
    }
    Ok(super::lint_verdict(
        &lints,
        args.force,
        ["flash", "flashes", "flashing"],
        &args.image,
    ))
}

/// Progress on stderr: a bar on a terminal, a line per 10 % otherwise.
struct Ui {
    bar: Option<ProgressBar>,
    tty: bool,
    decile: Option<u64>,
    started: Instant,
}

impl Ui {
    fn new(tty: bool) -> Self {
        Ui {
            bar: None,
            tty,
            decile: None,
            started: Instant::now(),
        }
    }

    fn progress(&mut self, p: Progress) {
        if self.tty {
            let bar = self.bar.get_or_insert_with(|| {
                let bar = ProgressBar::with_draw_target(Some(p.total), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "writing {bar:40.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar());
                bar.set_style(style);
                bar
            });
            bar.set_position(p.written);
            return;
        }
        let decile = (p.written * 10).checked_div(p.total).unwrap_or(10);
        if self.decile != Some(decile) {
            self.decile = Some(decile);
            eprintln!(
                "wrote {:>3}% ({} of {} bytes, {:.1} s)",
                decile * 10,
                p.written,
                p.total,
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
