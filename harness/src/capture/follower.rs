//! The baud follower: which rate the capture port should read at, decided from what it reads.
//!
//! An ESP8266 board talks at two rates on one wire (boot-log.md §1): the ROM, eboot, the SDK
//! boot loader and SDK crash text at 74880 (115200 × 26/40 with a 26 MHz crystal), the sketch at
//! its own `Serial.begin` rate, usually 115200. A port left at one rate shows the other half as
//! garbage, which is what the field report's logs look like. The follower is a pure state
//! machine over the lines the capture reads (parsed by [`crate::bootlog`]) and over what the rig
//! does (power on, reset); it returns a [`Switch`] when the port should change rate, and the
//! capture applies it and writes it into the index.
//!
//! | from | input | to | reason |
//! |---|---|---|---|
//! | any | power on / reset released | ROM | [`SwitchReason::PowerOn`] / [`SwitchReason::Reset`] |
//! | ROM | eboot `ld`, SDK `jump to run` | app | [`SwitchReason::EbootLoad`] / [`SwitchReason::SdkJump`] |
//! | app | `Rebooting...` (bootlog), a configured restart line | ROM | [`SwitchReason::Restart`] |
//! | app | end of a crash dump (`<<<stack<<<` + closing CUT HERE, or quiet after it; SDK `Fatal exception` + quiet) | ROM | [`SwitchReason::CrashDump`] |
//! | any | a run of [`AUTOBAUD_GARBAGE`] bytes that are only garbage | the other rate | [`SwitchReason::Autobaud`] |
//!
//! A client that sets the rate itself (the flash client talking to the ROM loader) turns the
//! follower off ([`BaudFollower::manual`]) until the next power on or reset.

use serde::{Deserialize, Serialize};

use crate::bootlog::{Event, UpdateEvent};

/// The ROM's print rate with the usual 26 MHz crystal (boot-log.md §1).
pub const ROM_BAUD: u32 = 74_880;
/// The app rate when nothing else is configured (`Serial.begin(115200)`, firmware/behaviour.toml
/// `serial.baud`).
pub const DEFAULT_APP_BAUD: u32 = 115_200;
/// Bytes of unbroken garbage after which the follower tries the other rate. A ROM banner read
/// at the wrong rate yields about 40 bytes of noise per line, so two such lines decide; a
/// stray non-ASCII character in app text never adds up to this many.
pub const AUTOBAUD_GARBAGE: u64 = 64;

/// Which half of the boot the port is reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// ROM, eboot, SDK boot loader: [`ROM_BAUD`].
    Rom,
    /// The application: its configured rate.
    App,
}

/// Why the rate changed (written into the capture index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchReason {
    /// The rig switched the power on: the ROM starts at 74880.
    PowerOn,
    /// The rig released the reset line.
    Reset,
    /// eboot printed `ld` and jumps to the app.
    EbootLoad,
    /// The SDK boot loader printed `jump to run user...`.
    SdkJump,
    /// The firmware announced a restart (`Rebooting...`, a configured line).
    Restart,
    /// A crash dump ended; the chip resets and the ROM prints at 74880.
    CrashDump,
    /// A run of garbage: the other rate is tried.
    Autobaud,
    /// A client set the rate itself.
    Manual,
    /// The follower was turned back on.
    Resume,
}

/// A rate change the capture should apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    /// The new rate.
    pub baud: u32,
    /// Why.
    pub reason: SwitchReason,
}

/// A crash dump whose end has been seen; the switch waits for the closing line or quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Armed {
    /// `<<<stack<<<` seen: the closing CUT HERE line (new cores) or quiet ends the dump.
    StackEnd,
    /// SDK `Fatal exception`: its register line may follow, then the chip resets.
    SdkFatal,
}

/// The follower's state; see the module docs for the transitions.
#[derive(Debug, Clone)]
pub struct BaudFollower {
    rom_baud: u32,
    app_baud: u32,
    stage: Stage,
    enabled: bool,
    following: bool,
    garbage_run: u64,
    armed: Option<Armed>,
    restart_markers: Vec<Vec<u8>>,
}

impl BaudFollower {
    /// A follower in the ROM stage (the state after power-on), following.
    pub fn new(app_baud: u32) -> Self {
        BaudFollower {
            rom_baud: ROM_BAUD,
            app_baud,
            stage: Stage::Rom,
            enabled: true,
            following: true,
            garbage_run: 0,
            armed: None,
            restart_markers: Vec::new(),
        }
    }

    /// Adds line prefixes that announce a restart, besides the ones [`crate::bootlog`] knows
    /// (`Rebooting`, `Restarting`), e.g. the reference firmware's `OTA end`.
    pub fn with_restart_markers(mut self, markers: impl IntoIterator<Item = String>) -> Self {
        self.restart_markers = markers.into_iter().map(String::into_bytes).collect();
        self
    }

    /// Turns the follower off for good: the port stays at the rate it is set to.
    pub fn disable(&mut self) {
        self.enabled = false;
        self.manual();
    }

    /// The rate of the current stage.
    pub fn baud(&self) -> u32 {
        match self.stage {
            Stage::Rom => self.rom_baud,
            Stage::App => self.app_baud,
        }
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Whether the follower is deciding the rate (false after [`manual`](Self::manual)).
    pub fn is_following(&self) -> bool {
        self.following
    }

    /// The board was powered on: the ROM prints at 74880. Turns following back on.
    pub fn power_on(&mut self) -> Option<Switch> {
        self.restart(SwitchReason::PowerOn)
    }

    /// The reset line was released: as power on.
    pub fn reset(&mut self) -> Option<Switch> {
        self.restart(SwitchReason::Reset)
    }

    fn restart(&mut self, reason: SwitchReason) -> Option<Switch> {
        if !self.enabled {
            return None;
        }
        let was = (self.following, self.baud());
        self.following = true;
        self.garbage_run = 0;
        self.armed = None;
        self.stage = Stage::Rom;
        // While following was off a client may have set any rate: report the switch then too.
        (was != (true, self.rom_baud)).then_some(Switch {
            baud: self.rom_baud,
            reason,
        })
    }

    /// A client set the rate itself: stop following until the next power on or reset.
    pub fn manual(&mut self) {
        self.following = false;
        self.armed = None;
        self.garbage_run = 0;
    }

    /// Turns following back on at the stage it was in.
    pub fn resume(&mut self) -> Option<Switch> {
        self.resume_at(self.stage)
    }

    /// Turns following back on at `stage`.
    pub fn resume_at(&mut self, stage: Stage) -> Option<Switch> {
        if self.following || !self.enabled {
            return None;
        }
        self.following = true;
        self.stage = stage;
        Some(Switch {
            baud: self.baud(),
            reason: SwitchReason::Resume,
        })
    }

    /// One complete line and the events [`crate::bootlog::parse_line`] found in it.
    pub fn line(&mut self, text: &[u8], events: &[Event]) -> Option<Switch> {
        if !self.following {
            return None;
        }
        let only_garbage =
            !events.is_empty() && events.iter().all(|e| matches!(e, Event::Garbage { .. }));
        if only_garbage {
            self.garbage_run += events
                .iter()
                .map(|e| match e {
                    Event::Garbage { bytes } => u64::from(*bytes),
                    _ => 0,
                })
                .sum::<u64>();
            if self.garbage_run >= AUTOBAUD_GARBAGE {
                self.garbage_run = 0;
                self.armed = None;
                let to = match self.stage {
                    Stage::Rom => Stage::App,
                    Stage::App => Stage::Rom,
                };
                return self.go(to, SwitchReason::Autobaud);
            }
            return None;
        }
        if !events.is_empty() {
            self.garbage_run = 0;
        }
        for event in events {
            if let Some(switch) = self.event(text, event) {
                return Some(switch);
            }
        }
        None
    }

    fn event(&mut self, text: &[u8], event: &Event) -> Option<Switch> {
        match (self.stage, event) {
            (_, Event::EbootLoad) => self.go(Stage::App, SwitchReason::EbootLoad),
            (_, Event::SdkStart) if trimmed(text).starts_with(b"jump to run") => {
                self.go(Stage::App, SwitchReason::SdkJump)
            }
            (Stage::App, Event::Update(UpdateEvent::Rebooting)) => {
                self.go(Stage::Rom, SwitchReason::Restart)
            }
            (Stage::App, Event::StackEnd) => {
                self.armed = Some(Armed::StackEnd);
                None
            }
            (Stage::App, Event::Exception { sdk: true, .. }) => {
                self.armed = Some(Armed::SdkFatal);
                None
            }
            (Stage::App, Event::CutHere) if self.armed == Some(Armed::StackEnd) => {
                self.go(Stage::Rom, SwitchReason::CrashDump)
            }
            // Whatever else the line holds (a marker may mention `Update Success`).
            (Stage::App, _) if self.is_restart_marker(text) => {
                self.go(Stage::Rom, SwitchReason::Restart)
            }
            _ => None,
        }
    }

    /// The line has been quiet for a while: a crash dump whose end was seen is over.
    pub fn quiet(&mut self) -> Option<Switch> {
        if !self.following || self.stage != Stage::App {
            return None;
        }
        self.armed
            .take()
            .and_then(|_| self.go(Stage::Rom, SwitchReason::CrashDump))
    }

    fn is_restart_marker(&self, text: &[u8]) -> bool {
        let t = trimmed(text);
        self.restart_markers.iter().any(|m| t.starts_with(m))
    }

    fn go(&mut self, to: Stage, reason: SwitchReason) -> Option<Switch> {
        self.armed = None;
        if self.stage == to {
            return None;
        }
        self.stage = to;
        Some(Switch {
            baud: self.baud(),
            reason,
        })
    }
}

fn trimmed(text: &[u8]) -> &[u8] {
    let start = text
        .iter()
        .position(|c| !c.is_ascii_whitespace() && *c != 0)
        .unwrap_or(text.len());
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(f: &mut BaudFollower, line: &[u8]) -> Option<Switch> {
        let mut events = Vec::new();
        crate::bootlog::parse_line(line, |e, _| events.push(e));
        f.line(line, &events)
    }

    fn to(baud: u32, reason: SwitchReason) -> Option<Switch> {
        Some(Switch { baud, reason })
    }

    #[test]
    fn eboot_ld_switches_to_the_app_rate_and_rebooting_back() {
        let mut f = BaudFollower::new(115_200);
        assert_eq!(f.baud(), ROM_BAUD);
        assert_eq!(
            feed(&mut f, b" ets Jan  8 2013,rst cause:1, boot mode:(3,7)\r"),
            None
        );
        assert_eq!(
            feed(&mut f, b" load 0x4010f000, len 1384, room 16 \r"),
            None
        );
        assert_eq!(feed(&mut f, b" v3ffe903d\r"), None);
        assert_eq!(feed(&mut f, b" @cp:0\r"), None);
        assert_eq!(feed(&mut f, b" ld\r"), to(115_200, SwitchReason::EbootLoad));
        assert_eq!(
            feed(
                &mut f,
                b"HILFW app=sonoff-ota version=1.0.0 ota=arduino state=RUN\r"
            ),
            None
        );
        assert_eq!(feed(&mut f, b"Update Success: 345000\r"), None);
        assert_eq!(
            feed(&mut f, b"Rebooting...\r"),
            to(ROM_BAUD, SwitchReason::Restart)
        );
        // A `Rebooting` already at the ROM rate changes nothing.
        assert_eq!(feed(&mut f, b"Rebooting...\r"), None);
    }

    #[test]
    fn sdk_jump_switches_but_other_sdk_lines_do_not() {
        let mut f = BaudFollower::new(115_200);
        assert_eq!(feed(&mut f, b"2nd boot version : 1.7(5d6f877)"), None);
        assert_eq!(
            feed(&mut f, b"jump to run user1 @ 1000"),
            to(115_200, SwitchReason::SdkJump)
        );
    }

    #[test]
    fn crash_dump_end_switches_on_the_closing_line_or_on_quiet() {
        let mut f = BaudFollower::new(115_200);
        feed(&mut f, b"~ld");
        assert_eq!(f.stage(), Stage::App);
        assert_eq!(feed(&mut f, b"Exception (28):"), None);
        assert_eq!(feed(&mut f, b">>>stack>>>"), None);
        assert_eq!(feed(&mut f, b"<<<stack<<<"), None);
        assert_eq!(
            feed(
                &mut f,
                b"--------------- CUT HERE FOR EXCEPTION DECODER ---------------"
            ),
            to(ROM_BAUD, SwitchReason::CrashDump)
        );
        // Old cores: no closing line, the quiet after the dump decides.
        let mut f = BaudFollower::new(115_200);
        feed(&mut f, b"~ld");
        assert_eq!(f.quiet(), None, "quiet without a dump changes nothing");
        feed(&mut f, b"<<<stack<<<");
        assert_eq!(f.quiet(), to(ROM_BAUD, SwitchReason::CrashDump));
        // SDK format.
        let mut f = BaudFollower::new(115_200);
        feed(&mut f, b"~ld");
        feed(&mut f, b"Fatal exception (0):");
        assert_eq!(f.quiet(), to(ROM_BAUD, SwitchReason::CrashDump));
    }

    #[test]
    fn garbage_run_tries_the_other_rate() {
        let mut f = BaudFollower::new(115_200);
        let noise = [0x80u8, 0xf8, 0x1c, 0x9e, 0xe0, 0x03, 0xfc, 0x7f];
        let line: Vec<u8> = noise.iter().cycle().take(40).copied().collect();
        assert_eq!(f.line(&line, &[Event::Garbage { bytes: 40 }]), None);
        assert_eq!(
            f.line(&line, &[Event::Garbage { bytes: 40 }]),
            to(115_200, SwitchReason::Autobaud)
        );
        // Readable text in between resets the run.
        assert_eq!(f.line(&line, &[Event::Garbage { bytes: 40 }]), None);
        assert_eq!(feed(&mut f, b"hello world"), None);
        assert_eq!(f.line(&line, &[Event::Garbage { bytes: 40 }]), None);
        assert_eq!(
            f.line(&line, &[Event::Garbage { bytes: 40 }]),
            to(ROM_BAUD, SwitchReason::Autobaud)
        );
    }

    #[test]
    fn restart_markers_and_manual_mode() {
        let mut f = BaudFollower::new(115_200).with_restart_markers(["OTA end".to_string()]);
        feed(&mut f, b"ld");
        assert_eq!(
            feed(&mut f, b"OTA end\r"),
            to(ROM_BAUD, SwitchReason::Restart)
        );
        feed(&mut f, b"ld");
        f.manual();
        assert_eq!(
            feed(&mut f, b"Rebooting..."),
            None,
            "a client owns the rate"
        );
        assert_eq!(f.power_on(), to(ROM_BAUD, SwitchReason::PowerOn));
        assert_eq!(f.power_on(), None, "already at the ROM rate");
        assert!(f.is_following());
        assert_eq!(feed(&mut f, b"ld"), to(115_200, SwitchReason::EbootLoad));
    }

    #[test]
    fn words_starting_like_ld_are_app_text() {
        let mut f = BaudFollower::new(115_200);
        assert_eq!(feed(&mut f, b"ldap connected"), None);
        assert_eq!(f.stage(), Stage::Rom);
    }
}
