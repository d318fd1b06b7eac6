//! `harness sim`: run one virtual Sonoff on a pty until SIGINT/SIGTERM.
//!
//! Prints the endpoints first (`pty: /dev/pts/N`, `port: …` (a stable symlink to the pty that
//! survives `port unplug`/`port plug`), `control: …`, `flash: …`, `time-scale: …`,
//! `http: 127.0.0.x:PORT`, `ota: 127.0.0.x:PORT`, then an empty line) and flushes, so a parent process can read them before anything else. Control lines are taken
//! from stdin (answered on stdout) and from the control socket (answered there); see
//! `harness::sim::control` for the protocol. End of stdin only stops reading stdin.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use harness::board;
use harness::sim::{BootStraps, SimConfig, SimHandle};
use miette::{IntoDiagnostic, WrapErr};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::CmdResult;

/// Boot strap setting at power-on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootArg {
    /// GPIO0 released: boot from flash.
    Flash,
    /// GPIO0 held low (button pressed): ROM serial download mode.
    Download,
}

/// Run a simulated Sonoff board on a pseudo-terminal.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Board profile to simulate (sonoff-basic, sonoff-4ch).
    #[arg(long)]
    pub board: String,
    /// Flash contents file: used if it exists (must be the board's flash size), else created
    /// erased. Default: a fresh erased file in a temporary directory.
    #[arg(long, value_name = "FILE")]
    pub flash: Option<PathBuf>,
    /// Boot straps at power-on: `download` holds the button (GPIO0 low) until `button up`.
    #[arg(long, value_enum, default_value_t = BootArg::Flash)]
    pub boot: BootArg,
    /// Pace serial bytes at the baud rate and flash erase/program at datasheet speed; device
    /// time runs at real speed (time scale 1.0).
    #[arg(long)]
    pub realistic_timing: bool,
    /// Real seconds per device second (default 0.05: the board's timers run 20x fast; 1.0
    /// with --realistic-timing).
    #[arg(long, value_name = "X")]
    pub time_scale: Option<f64>,
    /// Firmware file (an Arduino .bin or a plain image) written at flash 0x0 before the board
    /// is powered, as `esptool write-flash 0x0 FILE` would.
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Append every byte the board transmits (as the port receives it) to this file.
    #[arg(long, value_name = "FILE")]
    pub tx_log: Option<PathBuf>,
    /// Power at start: `on` as a board plugged in, `off` until a `power on` control line (what
    /// the harness's virtual rig uses, so that it decides when the board boots).
    #[arg(long, value_enum, default_value_t = PowerArg::On)]
    pub power: PowerArg,
}

/// Power at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PowerArg {
    /// Powered.
    On,
    /// Unpowered.
    Off,
}

/// Runs the simulator until SIGINT or SIGTERM.
pub fn run(args: SimArgs) -> CmdResult {
    let board = board::find(&args.board)?;
    let mut config = SimConfig::new(board);
    config.flash = args.flash;
    config.boot = match args.boot {
        BootArg::Flash => BootStraps::Flash,
        BootArg::Download => BootStraps::Download,
    };
    config.realistic_timing = args.realistic_timing;
    config.time_scale = args.time_scale;
    if let Some(path) = &args.image {
        let bytes = std::fs::read(path)
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot read image {}", path.display()))?;
        config.image = Some(bytes);
    }
    config.tx_log = args.tx_log;
    config.power_at_start = args.power == PowerArg::On;

    // Registered before the endpoints are printed, so a signal sent right after is not lost.
    let mut signals = Signals::new([SIGINT, SIGTERM]).into_diagnostic()?;
    let sim = SimHandle::start(config)?;

    let mut out = std::io::stdout().lock();
    for line in sim.endpoints().lines() {
        writeln!(out, "{line}").into_diagnostic()?;
    }
    writeln!(out).into_diagnostic()?;
    out.flush().into_diagnostic()?;
    drop(out);

    let control = sim.control();
    std::thread::Builder::new()
        .name("sim-stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                let answer = control.send_line(&line);
                let mut out = std::io::stdout().lock();
                if writeln!(out, "{answer}")
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    break;
                }
            }
        })
        .into_diagnostic()?;

    let signal = signals.forever().next();
    tracing::info!(?signal, "stopping the simulator");
    sim.shutdown()?;
    Ok(ExitCode::SUCCESS)
}
