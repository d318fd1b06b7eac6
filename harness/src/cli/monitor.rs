//! `harness monitor`: watch a board's serial output live, capture it to disk, triage each boot.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime};

use clap::{ArgGroup, Args, ValueEnum};
use miette::IntoDiagnostic;

use harness::bootlog::Event;
use harness::capture::{Capture, CaptureConfig, CaptureEvent, IndexEvent, Subscription};
use harness::rig::{self, OpenOptions, Rig, RigConfig, safety};
use harness::triage;

use super::CmdResult;

/// How to start the board before watching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartArg {
    /// Leave the board as it is.
    Attach,
    /// Power-cycle with GPIO0 released: boot from flash.
    Run,
    /// Power-cycle with GPIO0 held: the ROM serial loader.
    Download,
}

/// Watch a board's serial output: live text, baud switches, one triage line per boot.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["board", "port"])))]
#[command(after_help = "\
Examples:
  harness monitor --board basic                       # built-in virtual rig
  harness monitor --rig scenarios/rigs/pi.toml --board 4ch --start run
  harness monitor --port /dev/ttyUSB0 --out boot.log  # a bare port, no power control

Every byte is written to the capture file as it arrives (default: <board>-<time>.log in the
current folder), with an index beside it (<file>.index.jsonl: baud switches, power and button
changes, port lost/reopened). The port follows the board between 74880 baud (ROM, eboot) and the
app's rate. Ctrl-C stops; the board is left with GPIO0 released and power as the rig file's
`power_at_exit` says (exit status 130; 143 for SIGTERM).")]
pub struct MonitorArgs {
    /// The board's name in the rig file.
    #[arg(long, short)]
    pub board: Option<String>,

    /// The rig file. Default: the built-in virtual rig (boards `basic` and `4ch`).
    #[arg(long, value_name = "FILE", requires = "board")]
    pub rig: Option<PathBuf>,

    /// A bare serial port instead of a rig board (no power or button control).
    #[arg(long, value_name = "PATH")]
    pub port: Option<PathBuf>,

    /// The app's baud rate with `--port` (rig boards take it from the rig file).
    #[arg(long, default_value_t = harness::capture::DEFAULT_APP_BAUD, requires = "port")]
    pub baud: u32,

    /// The capture file (raw bytes); the index goes beside it.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Start the board first: power-cycle to run, into download mode, or attach to it as it
    /// is. Default: `run` for a rig board, `attach` for a bare `--port`.
    #[arg(long, value_enum)]
    pub start: Option<StartArg>,

    /// Stop after this long (`30s`, `5m`); default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Silence that ends a boot for the triage line.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub boot_quiet: Duration,

    /// Keep the port at the app's rate (do not follow the ROM's 74880 and back).
    #[arg(long)]
    pub no_follow: bool,
}

/// Bytes of one boot kept for its triage (the parser bounds memory anyway; this bounds ours).
const BOOT_BYTES: usize = 256 * 1024;

/// The output of the current and the previous boot, triaged together so that a boot that ends
/// in the ROM loader after an announced restart is seen as such.
#[derive(Default)]
struct Boots {
    previous: Vec<u8>,
    current: Vec<u8>,
    number: u64,
    untriaged: bool,
    content: bool,
}

impl Boots {
    fn push_line(&mut self, text: &[u8], complete: bool) {
        if self.current.len() < BOOT_BYTES {
            self.current.extend_from_slice(text);
            if complete {
                self.current.push(b'\n');
            }
        }
        // Blank lines (the `\r\n` the ROM prints first) are no boot of their own.
        if text.iter().any(|c| !c.is_ascii_whitespace() && *c != 0) {
            self.untriaged = true;
            self.content = true;
        }
    }

    fn triage_line(&mut self) -> Option<String> {
        if !self.untriaged || !self.content {
            return None;
        }
        self.untriaged = false;
        let mut window = self.previous.clone();
        window.extend_from_slice(&self.current);
        let report = triage::triage_bytes(&window);
        Some(format!(
            "# triage boot {}: {}: {}",
            self.number, report.class, report.summary
        ))
    }

    fn next_boot(&mut self) {
        self.previous = std::mem::take(&mut self.current);
        self.number += 1;
        self.content = false;
    }
}

/// Shows a line for a terminal: lossy text with control bytes escaped; garbage as hex.
fn render(text: &[u8], events: &[Event], baud: u32) -> String {
    let garbage = events.iter().all(|e| matches!(e, Event::Garbage { .. })) && !events.is_empty();
    let mut out = String::new();
    if garbage {
        out.push_str(&format!("<{} bytes of garbage at {baud}:", text.len()));
        for b in text.iter().take(24) {
            out.push_str(&format!(" {b:02x}"));
        }
        if text.len() > 24 {
            out.push_str(" ...");
        }
        out.push('>');
        return out;
    }
    for c in String::from_utf8_lossy(text).chars() {
        match c {
            '\r' => {}
            '\t' => out.push('\t'),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn render_index(event: &IndexEvent, t: f64) -> Option<String> {
    let what = match event {
        IndexEvent::Rx | IndexEvent::Start { .. } | IndexEvent::Stop { .. } => return None,
        IndexEvent::Baud { baud, reason } => format!("baud {baud} ({})", kebab(reason)),
        IndexEvent::PortLost { error } => format!("port lost: {error} (reconnecting)"),
        IndexEvent::PortReopened { baud } => format!("port reopened at {baud}"),
        IndexEvent::Power { on } => format!("power {}", if *on { "on" } else { "off" }),
        IndexEvent::Button { pressed } => {
            format!("GPIO0 {}", if *pressed { "pressed" } else { "released" })
        }
        IndexEvent::Reset { asserted } => {
            format!("reset {}", if *asserted { "asserted" } else { "released" })
        }
        IndexEvent::Note { text } => format!("note: {text}"),
        IndexEvent::ConsumerOverrun { dropped } => format!("reader fell behind by {dropped} bytes"),
    };
    Some(format!("# [{t:9.3}] {what}"))
}

fn kebab(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn default_out(name: &str) -> PathBuf {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(':', "");
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    PathBuf::from(format!("{safe}-{stamp}.log"))
}

/// What is being watched: a rig board (with lines) or a bare port.
enum Target {
    Board(Box<rig::BoardRig>),
    Port {
        capture: Capture,
        _lock: rig::BoardLock,
    },
}

impl Target {
    fn capture(&self) -> &Capture {
        match self {
            Target::Board(r) => r.capture(),
            Target::Port { capture, .. } => capture,
        }
    }
}

/// The opened target, its subscription from the first byte, and its description.
type Opened = (Target, Subscription, Vec<(String, String)>);

fn open(args: &MonitorArgs) -> miette::Result<Opened> {
    if let Some(port) = &args.port {
        let lock = rig::lock::lock_port(port)?;
        let out = args.out.clone().unwrap_or_else(|| {
            default_out(
                &port
                    .file_name()
                    .map_or("port".into(), |n| n.to_string_lossy()),
            )
        });
        let mut config = CaptureConfig::new(port);
        config.file = Some(out);
        config.app_baud = args.baud;
        config.follow = !args.no_follow;
        let (capture, sub) = Capture::start_subscribed(config)?;
        let mut describe = vec![("port".to_string(), port.display().to_string())];
        if let Some(f) = capture.file() {
            describe.push(("capture".into(), f.display().to_string()));
        }
        return Ok((
            Target::Port {
                capture,
                _lock: lock,
            },
            sub,
            describe,
        ));
    }
    let name = args.board.as_deref().unwrap_or_default();
    let rig_config = match &args.rig {
        Some(path) => RigConfig::load(path)?,
        None => RigConfig::builtin_virtual(),
    };
    let board = rig_config.board(name)?;
    let options = OpenOptions {
        capture_file: Some(args.out.clone().unwrap_or_else(|| default_out(&board.name))),
        subscribe: true,
        fixed_baud: args.no_follow,
        ..OpenOptions::default()
    };
    let mut rig = rig::open(board, &options)?;
    let sub = rig
        .take_initial_subscription()
        .expect("OpenOptions::subscribe keeps one");
    let describe = rig
        .describe()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    Ok((Target::Board(Box::new(rig)), sub, describe))
}

/// Runs `harness monitor`.
pub fn run(args: MonitorArgs) -> CmdResult {
    safety::install_signal_handler().into_diagnostic()?;
    safety::install_panic_hook();
    let (mut target, sub, describe) = open(&args)?;
    let mut out = std::io::stdout().lock();
    let mut header = String::new();
    for (k, v) in &describe {
        header.push_str(&format!("# {k}: {v}\n"));
    }
    // `harness monitor | head`: once the reader is gone, monitoring ends as if its time were
    // up (the capture file has everything); other write errors end it with an error.
    let mut reader_gone = !write_out(&mut out, &header)?;
    if let Target::Board(rig) = &mut target {
        match args.start.unwrap_or(StartArg::Run) {
            StartArg::Attach => {}
            StartArg::Run => rig.power_cycle_run()?,
            StartArg::Download => {
                rig.enter_download_mode()?;
            }
        }
    } else if let Some(start @ (StartArg::Run | StartArg::Download)) = args.start {
        return Err(miette::miette!(
            "--start {start:?} needs a rig board with power control, not --port"
        ));
    }
    reader_gone = reader_gone || !write_out(&mut out, "# monitoring (Ctrl-C to stop)\n")?;

    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut boots = Boots::default();
    let mut last_line = Instant::now();
    macro_rules! put {
        ($($arg:tt)*) => {
            if !write_out(&mut out, &format!("{}\n", format_args!($($arg)*)))? {
                reader_gone = true;
                break;
            }
        };
    }
    while !reader_gone {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        let quiet_left = args.boot_quiet.saturating_sub(last_line.elapsed());
        let mut wait = if boots.untriaged {
            quiet_left
        } else {
            Duration::from_secs(3600)
        };
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_duration_since(now));
        }
        match sub.recv_timeout(wait.max(Duration::from_millis(1))) {
            Ok(CaptureEvent::Line {
                text,
                complete,
                events,
                baud,
                ..
            }) => {
                let banner = events.iter().any(|e| matches!(e, Event::RomBanner(_)));
                if banner && boots.content {
                    if let Some(line) = boots.triage_line() {
                        put!("{line}");
                    }
                    boots.next_boot();
                }
                boots.push_line(&text, complete);
                last_line = Instant::now();
                put!("{}", render(&text, &events, baud));
            }
            Ok(CaptureEvent::Index(record)) => {
                if let Some(line) = render_index(&record.event, record.t) {
                    put!("{line}");
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if last_line.elapsed() >= args.boot_quiet
                    && let Some(line) = boots.triage_line()
                {
                    put!("{line}");
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let bytes = target.capture().bytes();
    let file = target.capture().file().map(Path::to_path_buf);
    drop(target);
    if !reader_gone {
        let mut tail = String::new();
        if let Some(line) = boots.triage_line() {
            tail.push_str(&format!("{line}\n"));
        }
        if let Some(f) = file {
            tail.push_str(&format!("# captured {bytes} bytes in {}\n", f.display()));
        }
        drop(out);
        crate::cli::emit(&tail)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes and flushes `text`; `Ok(false)` when the reader has gone (a closed pipe).
fn write_out(out: &mut impl Write, text: &str) -> miette::Result<bool> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e)
            .into_diagnostic()
            .map_err(|r| r.wrap_err("cannot write to stdout")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_render_for_a_terminal() {
        assert_eq!(render(b"hello\r", &[Event::Text], 115_200), "hello");
        assert_eq!(render(b"a\x1bb", &[Event::Text], 115_200), "a\\x1bb");
        assert_eq!(
            render(&[0x80, 0xff], &[Event::Garbage { bytes: 2 }], 74_880),
            "<2 bytes of garbage at 74880: 80 ff>"
        );
    }

    #[test]
    fn boots_are_triaged_once() {
        let mut b = Boots::default();
        assert_eq!(b.triage_line(), None);
        b.push_line(b"ets Jan  8 2013,rst cause:2, boot mode:(1,6)", true);
        let line = b.triage_line().unwrap();
        assert!(
            line.starts_with("# triage boot 0: download-mode:"),
            "{line}"
        );
        assert_eq!(b.triage_line(), None);
        b.next_boot();
        assert_eq!(b.number, 1);
        assert!(b.current.is_empty() && !b.previous.is_empty());
    }
}
