//! `harness firmware`: what the reference firmware prints and serves (firmware/behaviour.toml).

use std::process::ExitCode;

use clap::Args;
use harness::firmware::{self, Behaviour, FwState, OtaMethod};

use super::CmdResult;

/// Show the reference firmware's behaviour, or read or write its state line.
#[derive(Debug, Args)]
pub struct FirmwareArgs {
    /// Print the behaviour description (firmware/behaviour.toml) verbatim.
    #[arg(long, conflicts_with_all = ["parse", "state"])]
    pub toml: bool,

    /// Parse a serial line as the firmware's state line and print its parts.
    #[arg(long, value_name = "LINE", conflicts_with = "state")]
    pub parse: Option<String>,

    /// Print the state line for this state (RUN or UPDATE).
    #[arg(long, value_name = "STATE", value_parser = parse_state)]
    pub state: Option<FwState>,

    /// Firmware version for --state.
    #[arg(
        long = "fw-version",
        value_name = "VERSION",
        default_value = "1.0.0",
        requires = "state"
    )]
    pub fw_version: String,

    /// OTA method for --state (arduino or webserver).
    #[arg(long, default_value = "arduino", requires = "state")]
    pub ota: OtaMethod,
}

fn parse_state(s: &str) -> Result<FwState, String> {
    match s.to_ascii_uppercase().as_str() {
        "RUN" => Ok(FwState::Run),
        "UPDATE" => Ok(FwState::Update),
        _ => Err(format!("unknown state `{s}` (expected RUN or UPDATE)")),
    }
}

/// Runs `harness firmware`.
pub fn run(args: FirmwareArgs) -> CmdResult {
    let b = firmware::behaviour();
    if args.toml {
        out!("{}", firmware::BEHAVIOUR_TOML)?;
    } else if let Some(line) = &args.parse {
        let parsed = b.parse_state_line(line)?;
        outln!("state: {}", parsed.state)?;
        outln!("identity: {}", parsed.identity)?;
    } else if let Some(state) = args.state {
        outln!("{}", b.state_line(&args.fw_version, args.ota, state))?;
    } else {
        out!("{}", summary(b))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(b: &Behaviour) -> String {
    let ms = |d: std::time::Duration| d.as_millis();
    let closed = |c: firmware::Closed| match c {
        firmware::Closed::Silent => "no reply",
        firmware::Closed::Refused => "connection refused",
        firmware::Closed::NotFound => "404",
    };
    format!(
        "serial        {} baud\n\
         state line    {}\n\
         identity      {}\n\
         button        GPIO{} active {}, debounce {} ms, long press {} ms -> UPDATE\n\
         update        timeout {} ms\n\
         espota        UDP {} (outside UPDATE: {})\n\
         http          TCP {} {} field `{}` (outside UPDATE: {})\n",
        b.serial.baud,
        b.state.line,
        b.identity.format,
        b.button.gpio,
        if b.button.active_low { "low" } else { "high" },
        ms(b.button.debounce),
        ms(b.button.long_press),
        ms(b.update.timeout),
        b.espota.port,
        closed(b.outside_update.espota),
        b.http.port,
        b.http.path,
        b.http.field,
        closed(b.outside_update.http),
    )
}
