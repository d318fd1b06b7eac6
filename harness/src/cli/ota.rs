//! `harness ota`: lint an image against the board, then upload it with espota or HTTP.

use std::io::IsTerminal as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use harness::board::{self, BoardProfile};
use harness::firmware::{self, OtaMethod};
use harness::image;
use harness::ota::espota::{self, EspotaConfig, EspotaTimeouts};
use harness::ota::http::{self, HttpConfig, HttpTimeouts};
use harness::ota::{Cancel, Delivered, Event, OtaError, Password, Payload};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use miette::{Context as _, IntoDiagnostic as _, miette};

use super::CmdResult;

/// The variable read for the password when `--password-env` is not given.
pub const DEFAULT_PASSWORD_ENV: &str = "HARNESS_OTA_PASSWORD";

/// Upload a firmware image over the air (ArduinoOTA or the HTTP update page).
///
/// The long help and the examples are set on the subcommand in `cli/mod.rs`
/// ([`long_about`], [`EXAMPLES`]): clap lets the variant's doc comment win over the struct's.
#[derive(Debug, Args)]
pub struct OtaArgs {
    /// The firmware file (the .bin of an Arduino build).
    image: PathBuf,

    /// How the running firmware takes updates: arduino (espota: UDP invitation, TCP back to
    /// this host) or webserver (HTTP POST /update).
    #[arg(long, value_name = "arduino|webserver")]
    method: OtaMethod,

    /// The device's address (IP or host name).
    #[arg(
        long,
        value_name = "HOST",
        required_unless_present = "board",
        conflicts_with = "board"
    )]
    host: Option<String>,

    /// The device's OTA port [default: 8266 for arduino, 80 for webserver].
    #[arg(long, value_name = "PORT", requires = "host")]
    port: Option<u16>,

    /// The board kind the image is linted against with --host (sonoff-basic, sonoff-4ch).
    #[arg(long, value_name = "KIND", requires = "host")]
    kind: Option<String>,

    /// A board of the rig file, or without --rig a board kind (address from the rig).
    #[arg(long, value_name = "NAME")]
    board: Option<String>,

    /// The rig file naming --board.
    #[arg(long, value_name = "FILE", requires = "board")]
    rig: Option<PathBuf>,

    /// Environment variable holding the OTA password (the firmware's SMN_OTA_PASSWORD)
    /// [default: HARNESS_OTA_PASSWORD, if set]. Never pass a password as an argument.
    #[arg(long, value_name = "VAR")]
    password_env: Option<String>,

    /// Seconds to wait for each answer of the device [default: 10 per step, 60 for the final
    /// verdict, as espota.py].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    timeout: Option<Duration>,

    /// Upload even if the image fails a lint or does not parse as an ESP8266 image.
    #[arg(long)]
    force: bool,

    /// arduino: the local address the device connects back to [default: the one that routes
    /// to the device].
    #[arg(long, value_name = "IP")]
    local_ip: Option<IpAddr>,

    /// arduino: the local TCP port the device connects back to [default: any free port].
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 0,
        hide_default_value = true
    )]
    local_port: u16,
}

/// Examples shown after `harness ota --help`.
pub const EXAMPLES: &str = "Examples:
  harness ota build/sonoff-ota.ino.bin --method webserver --host 192.168.1.50 --kind sonoff-4ch
  harness ota build/sonoff-ota.ino.bin --method arduino --host 192.168.1.51 --kind sonoff-basic
  OTA_PW=... harness ota fw.bin --method arduino --host 192.168.1.51 --password-env OTA_PW
  harness ota fw.bin --method webserver --host 127.0.0.1 --port 18080 --timeout 30 --force";

/// The long help of `harness ota`, with the firmware's button and timeout values.
pub fn long_about() -> String {
    let b = firmware::behaviour();
    format!(
        "Upload a firmware image over the air: ArduinoOTA (espota) or ESP8266HTTPUpdateServer \
         (HTTP POST {path}).\n\n\
         The reference firmware serves OTA only in UPDATE state. To enter it, press and hold \
         the button (GPIO{gpio}) for {long:.0} s, until the LED blinks (every {blink} ms). The \
         device returns to RUN after {timeout} s, or at once on a short press. Outside UPDATE \
         an espota invitation gets no answer and the HTTP port refuses connections.\n\n\
         The image is first linted against the board (flash size, flash mode, OTA space; see \
         `harness image inspect`) and refused when a check fails, unless --force.\n\n\
         Exit status: 0 the device accepted the image and restarts into it; 1 the image failed \
         a lint, or the device refused or failed the update, went silent or cut the \
         connection; 2 the harness could not try (bad arguments, unreadable image, missing \
         password, local network error).",
        path = b.http.path,
        gpio = b.button.gpio,
        long = b.button.long_press.as_secs_f64(),
        blink = b.led.blink.as_millis(),
        timeout = b.update.timeout.as_secs(),
    )
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{text}` is not a number of seconds between 0 and 3600"))
}

/// Runs `harness ota`.
pub fn run(args: OtaArgs) -> CmdResult {
    if let Some(name) = &args.board {
        return Err(miette!(
            help = "until then give the address: --host HOST [--port PORT] --kind KIND",
            "--board {name}{}: finding a board's OTA address needs the rig module (rig files), \
             which this build does not have yet",
            args.rig
                .as_ref()
                .map(|r| format!(" --rig {}", r.display()))
                .unwrap_or_default()
        ));
    }
    if args.method == OtaMethod::WebServer && (args.local_ip.is_some() || args.local_port != 0) {
        return Err(miette!(
            "--local-ip and --local-port are for --method arduino (the device connects back); \
             webserver uploads connect out"
        ));
    }
    let host = args
        .host
        .clone()
        .ok_or_else(|| miette!("give the device's address with --host HOST"))?;
    let kind = args.kind.as_deref().map(board::find).transpose()?;
    let bytes = std::fs::read(&args.image)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read {}", args.image.display()))?;
    if !lint_gate(&args, &bytes, kind)? {
        return Ok(ExitCode::from(1));
    }
    let password = password(args.password_env.as_deref())?;

    let b = firmware::behaviour();
    let port = args.port.unwrap_or(match args.method {
        OtaMethod::Arduino => b.espota.port,
        OtaMethod::WebServer => b.http.port,
    });
    let device = resolve(&host, port)?;

    let cancel = Cancel::new();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while the first is handled ends the process at once.
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 2, cancel.flag());
        let _ = signal_hook::flag::register(signal, cancel.flag());
    }
    let mut ui = Ui::new(device, std::io::stderr().is_terminal());
    let path_name = args.image.display().to_string();
    let file_name = args
        .image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path_name.clone());
    let result = match args.method {
        OtaMethod::Arduino => {
            let cfg = EspotaConfig {
                local_ip: args.local_ip,
                local_port: args.local_port,
                password,
                timeouts: args.timeout.map(EspotaTimeouts::all).unwrap_or_default(),
                ..EspotaConfig::new(device)
            };
            let payload = Payload {
                bytes: &bytes,
                name: &path_name,
            };
            espota::upload(&cfg, payload, &mut |e| ui.event(e), &cancel)
        }
        OtaMethod::WebServer => {
            let cfg = HttpConfig {
                host: if port == 80 {
                    host.clone()
                } else {
                    format!("{host}:{port}")
                },
                password,
                timeouts: args.timeout.map(HttpTimeouts::all).unwrap_or_default(),
                ..HttpConfig::new(device)
            };
            let payload = Payload {
                bytes: &bytes,
                name: &file_name,
            };
            http::upload(&cfg, payload, &mut |e| ui.event(e), &cancel)
        }
    };
    ui.finish();
    verdict(args.method, result)
}

/// Prints the outcome; device failures are exit 1, harness failures go up as errors (2).
fn verdict(method: OtaMethod, result: Result<Delivered, OtaError>) -> CmdResult {
    match result {
        Ok(d) => {
            outln!(
                "updated {} ({method}): {} bytes in {:.1} s; the device answered `{}` and \
                 restarts into the new image",
                d.device,
                d.bytes,
                d.elapsed.as_secs_f64(),
                first_line(&d.reply)
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_device_failure() => {
            eprintln!("{:?}", miette::Report::new(e));
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

/// The reply without HTML noise: the text after the last `>` of the first line.
fn first_line(reply: &str) -> &str {
    let line = reply.lines().next().unwrap_or_default();
    line.rsplit('>').next().unwrap_or(line).trim()
}

/// Lints the image; `Ok(false)` when it is refused (printed on stderr).
fn lint_gate(args: &OtaArgs, bytes: &[u8], kind: Option<&BoardProfile>) -> miette::Result<bool> {
    let fw = match image::parse_firmware(bytes) {
        Ok(fw) => fw,
        Err(e) if args.force => {
            eprintln!(
                "warning: {} is not a usable ESP8266 image ({e}); uploading it anyway (--force)",
                args.image.display()
            );
            return Ok(true);
        }
        Err(e) => {
            return Err(miette::Report::new(e).wrap_err(format!(
                "{} is not a usable ESP8266 firmware image (--force uploads it anyway)",
                args.image.display()
            )));
        }
    };
    let lints = match kind {
        Some(b) => image::lint(&fw, b),
        None => image::check(&fw),
    };
    match kind {
        Some(b) if !lints.is_empty() => eprintln!("lints for {} ({}):", b.name, b.id),
        Some(_) => {}
        None => eprintln!("no --kind: flash size, mode and OTA space were not checked"),
    }
    if let Some(id) = fw.identity() {
        let next = id.ota();
        if next != args.method {
            eprintln!(
                "note: the new image takes updates by {next}: the next OTA needs --method {next}"
            );
        }
    }
    Ok(super::lint_verdict(
        &lints,
        args.force,
        ["upload", "uploads", "uploading"],
        &args.image,
    ))
}

fn password(var: Option<&str>) -> miette::Result<Option<Password>> {
    match var {
        Some(var) => match std::env::var(var) {
            Ok(pw) => Ok(Some(Password::new(pw))),
            Err(std::env::VarError::NotPresent) => Err(miette!(
                help = format!("export {var}=... before running, or drop --password-env"),
                "--password-env {var}: the variable is not set"
            )),
            Err(std::env::VarError::NotUnicode(_)) => Err(miette!(
                "--password-env {var}: the value is not valid UTF-8"
            )),
        },
        None => Ok(std::env::var(DEFAULT_PASSWORD_ENV).ok().map(Password::new)),
    }
}

/// The first address of `host`, IPv4 first (ArduinoOTA speaks IPv4).
fn resolve(host: &str, port: u16) -> Result<SocketAddr, OtaError> {
    let resolve_err = |source| OtaError::Resolve {
        host: host.to_string(),
        source,
    };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(resolve_err)?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| resolve_err(std::io::ErrorKind::NotFound.into()))
}

/// Progress on stderr: a bar on a terminal, a line per 10 % otherwise.
struct Ui {
    device: SocketAddr,
    bar: Option<ProgressBar>,
    tty: bool,
    decile: Option<u64>,
}

impl Ui {
    fn new(device: SocketAddr, tty: bool) -> Self {
        Ui {
            device,
            bar: None,
            tty,
            decile: None,
        }
    }

    fn say(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn event(&mut self, e: &Event) {
        match e {
            Event::Invited { attempt: 1, listen } => self.say(&format!(
                "invitation sent to {}; listening on {listen} for its connection",
                self.device
            )),
            Event::Invited { attempt, .. } => {
                self.say(&format!("no answer yet; invitation {attempt}"))
            }
            Event::Challenged => self.say("the device asks for the password"),
            Event::Accepted => self.say("the device accepted; waiting for it to connect back"),
            Event::Connected { peer } => self.say(&format!("connected to {peer}")),
            Event::StrangerRefused { peer } => self.say(&format!(
                "refused a connection from {peer}: not the device's address"
            )),
            Event::Progress { sent, total } => self.progress(*sent, *total),
            Event::WaitingForResult => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                self.say("image sent; waiting for the device's verdict")
            }
            _ => {}
        }
    }

    fn progress(&mut self, sent: u64, total: u64) {
        if self.tty {
            let bar = self.bar.get_or_insert_with(|| {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "{bar:40.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar());
                bar.set_style(style);
                bar
            });
            bar.set_position(sent);
            return;
        }
        let decile = (sent * 10).checked_div(total).unwrap_or(10);
        if self.decile != Some(decile) {
            self.decile = Some(decile);
            eprintln!("sent {:>3}% ({sent} of {total} bytes)", decile * 10);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
