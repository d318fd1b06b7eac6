//! The `gpio` backend: power and GPIO0 (and optionally RST/EN) on Linux GPIO character-device
//! lines, e.g. a Raspberry Pi's header (wiring: hardware.md and scenarios/rigs/pi.toml).
//!
//! Uses `gpiocdev` (the GPIO character device uAPI v2, any Linux board). The Pi-only `rppal`
//! crate was archived upstream in 2025, and the sysfs GPIO interface is deprecated.
//!
//! - Power: an output at the configured active level, requested at the rig's resting state
//!   (`power_at_exit`) so that opening a rig does not switch the board.
//! - GPIO0 and RST: open-drain outputs, so the Pi only ever pulls the board pin low and leaves it
//!   high-impedance when released: it never drives 3.3 V into a node the button shorts to
//!   ground. Where the kernel refuses an open-drain request, the line is switched between input
//!   (released) and output-low (pressed) instead, which is electrically the same. With
//!   `wiring = "transistor"` the Pi pin drives a transistor's gate instead: push-pull, active
//!   high.
//!
//! Built only with the cargo feature `gpio`; not testable without the hardware.

use gpiocdev::Request;
use gpiocdev::line::{Drive, Value};
use gpiocdev::request::Config;

use super::file::{GpioConfig, GpioLine, Level, Wiring};
use super::{Capabilities, Lines, PowerAtExit, RigError};

/// The consumer label shown by `gpioinfo`.
fn consumer(board: &str, what: &str) -> String {
    format!("harness:{board}:{what}")
}

/// `gpiochip0` means `/dev/gpiochip0`; a path is used as is.
fn chip_path(chip: &str) -> String {
    if chip.contains('/') {
        chip.to_string()
    } else {
        format!("/dev/{chip}")
    }
}

fn gpio_err(line: &GpioLine, operation: &'static str) -> impl FnOnce(gpiocdev::Error) -> RigError {
    let chip = line.chip.clone();
    let offset = line.line;
    move |source| RigError::Gpio {
        chip,
        line: offset,
        operation,
        source,
    }
}

/// A line that pulls a board pin low when asserted.
#[derive(Debug)]
enum PullDown {
    /// Open-drain output, active low: Active = pin low, Inactive = high-impedance.
    OpenDrain(Request, GpioLine),
    /// No open-drain support: input when released, output low when asserted.
    SwitchDirection(Request, GpioLine),
    /// Push-pull into a transistor gate, active high.
    Transistor(Request, GpioLine),
}

impl PullDown {
    fn request(line: &GpioLine, wiring: Wiring, label: String) -> Result<PullDown, RigError> {
        let chip = chip_path(&line.chip);
        if wiring == Wiring::Transistor {
            let req = Request::builder()
                .on_chip(&chip)
                .with_consumer(label)
                .with_line(line.line)
                .as_output(Value::Inactive)
                .request()
                .map_err(gpio_err(line, "request as output"))?;
            return Ok(PullDown::Transistor(req, line.clone()));
        }
        let open_drain = Request::builder()
            .on_chip(&chip)
            .with_consumer(label.clone())
            .with_line(line.line)
            .as_active_low()
            .with_drive(Drive::OpenDrain)
            .as_output(Value::Inactive)
            .request();
        match open_drain {
            Ok(req) => Ok(PullDown::OpenDrain(req, line.clone())),
            Err(e) => {
                tracing::warn!(
                    "{} line {}: open-drain refused ({e}); switching direction instead",
                    line.chip,
                    line.line
                );
                let req = Request::builder()
                    .on_chip(&chip)
                    .with_consumer(label)
                    .with_line(line.line)
                    .as_input()
                    .request()
                    .map_err(gpio_err(line, "request as input"))?;
                Ok(PullDown::SwitchDirection(req, line.clone()))
            }
        }
    }

    fn set(&self, asserted: bool) -> Result<(), RigError> {
        match self {
            PullDown::OpenDrain(req, line) | PullDown::Transistor(req, line) => req
                .set_value(line.line, Value::from(asserted))
                .map_err(gpio_err(line, "set the line")),
            PullDown::SwitchDirection(req, line) => {
                let mut cfg = Config::default();
                cfg.with_line(line.line);
                if asserted {
                    // Physical low: active-high output at Inactive.
                    cfg.as_active_high().as_output(Value::Inactive);
                } else {
                    cfg.as_input();
                }
                req.reconfigure(&cfg)
                    .map_err(gpio_err(line, "switch the line direction"))
            }
        }
    }
}

/// GPIO lines of one board.
#[derive(Debug)]
pub(crate) struct GpioLines {
    power: Request,
    power_line: GpioLine,
    gpio0: PullDown,
    reset: Option<PullDown>,
}

impl GpioLines {
    /// Requests the lines: power at its resting state, GPIO0 and RST released.
    pub(crate) fn request(
        config: &GpioConfig,
        power_at_exit: PowerAtExit,
        board: &str,
    ) -> Result<GpioLines, RigError> {
        let mut builder = Request::builder();
        builder
            .on_chip(chip_path(&config.power.chip))
            .with_consumer(consumer(board, "power"))
            .with_line(config.power.line);
        if config.power_active == Level::Low {
            builder.as_active_low();
        }
        let power = builder
            .as_output(Value::from(power_at_exit.is_on()))
            .request()
            .map_err(gpio_err(&config.power, "request as output"))?;
        let gpio0 =
            PullDown::request(&config.gpio0, config.gpio0_wiring, consumer(board, "gpio0"))?;
        let reset = config
            .reset
            .as_ref()
            .map(|(line, wiring)| PullDown::request(line, *wiring, consumer(board, "reset")))
            .transpose()?;
        Ok(GpioLines {
            power,
            power_line: config.power.clone(),
            gpio0,
            reset,
        })
    }
}

impl Lines for GpioLines {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            power: true,
            gpio0: true,
            reset: self.reset.is_some(),
            ota: false,
        }
    }

    fn set_power(&mut self, on: bool) -> Result<(), RigError> {
        self.power
            .set_value(self.power_line.line, Value::from(on))
            .map_err(gpio_err(&self.power_line, "set the power line"))
    }

    fn set_gpio0(&mut self, pressed: bool) -> Result<(), RigError> {
        self.gpio0.set(pressed)
    }

    fn set_reset(&mut self, asserted: bool) -> Result<(), RigError> {
        match &self.reset {
            Some(r) => r.set(asserted),
            None => Err(RigError::Unsupported {
                what: "pulse the reset line (no `reset` line in the rig file)",
            }),
        }
    }
}
