//! The reference firmware's serial and network behaviour, as typed data.
//!
//! `firmware/behaviour.toml` describes what `firmware/sonoff-ota/sonoff-ota.ino` prints and
//! serves: the identity/state line, button thresholds, the UPDATE timeout, OTA ports and the
//! texts the OTA libraries send. The virtual Sonoff implements it and the harness expects it;
//! both read it through [`behaviour()`]. A unit test below checks the sketch's literals against
//! the file, so sketch, simulator and harness cannot drift apart.
//!
//! Layer L0: no I/O. The TOML is embedded at build time.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The embedded behaviour description, verbatim.
pub const BEHAVIOUR_TOML: &str = include_str!("../../firmware/behaviour.toml");

/// Why a behaviour description or a firmware line was rejected.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum FirmwareError {
    /// The TOML does not parse or does not fit the schema (unknown or missing key, bad type).
    #[error("behaviour description does not fit the schema")]
    #[diagnostic(code(harness::firmware::schema))]
    Schema(#[from] toml::de::Error),
    /// A value parses but breaks a rule (placeholder set, threshold order, ...).
    #[error("behaviour key `{key}`: {problem}")]
    #[diagnostic(code(harness::firmware::invalid))]
    Invalid {
        /// Dotted key of the offending value.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Why a line is not a valid state line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum StateLineError {
    /// The line does not have the state line's shape (`HILFW app=... state=...`).
    #[error("not a firmware state line")]
    #[diagnostic(
        code(harness::firmware::not_state_line),
        help("a state line looks like `HILFW app=sonoff-ota version=1.0.0 ota=arduino state=RUN`")
    )]
    NotStateLine,
    /// The line has the shape but the state word is unknown.
    #[error("unknown firmware state `{state}` at column {column}")]
    #[diagnostic(
        code(harness::firmware::unknown_state),
        help("the states are RUN and UPDATE")
    )]
    UnknownState {
        /// The word after `state=`.
        state: String,
        /// Byte column of the word in the line.
        column: usize,
    },
}

/// The build-time OTA method (`#define smnArduinoOTA` / `#define smnWebServerOTA`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OtaMethod {
    /// ArduinoOTA: espota invitation over UDP, upload over TCP.
    Arduino,
    /// ESP8266HTTPUpdateServer: multipart POST to `/update`.
    #[serde(rename = "webserver")]
    WebServer,
}

impl OtaMethod {
    /// The word used in the identity line (`ota=arduino`).
    pub fn name(self) -> &'static str {
        match self {
            OtaMethod::Arduino => "arduino",
            OtaMethod::WebServer => "webserver",
        }
    }
}

impl fmt::Display for OtaMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OtaMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "arduino" => Ok(OtaMethod::Arduino),
            "webserver" => Ok(OtaMethod::WebServer),
            other => Err(format!(
                "unknown OTA method `{other}` (expected arduino or webserver)"
            )),
        }
    }
}

/// The firmware's state machine states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FwState {
    /// Normal operation; no OTA service is running.
    Run,
    /// Entered by a long button press; the OTA service listens.
    Update,
}

impl FwState {
    /// The word used in the state line (`state=RUN`).
    pub fn name(self) -> &'static str {
        match self {
            FwState::Run => "RUN",
            FwState::Update => "UPDATE",
        }
    }

    fn from_word(word: &str) -> Option<Self> {
        match word {
            "RUN" => Some(FwState::Run),
            "UPDATE" => Some(FwState::Update),
            _ => None,
        }
    }
}

impl fmt::Display for FwState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a client sees when it talks to a stopped OTA service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Closed {
    /// No reply at all (closed UDP socket).
    Silent,
    /// TCP connection refused (closed listener).
    Refused,
    /// The server runs but answers 404.
    NotFound,
}

/// A line template: `{name}` placeholders between literal text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(String),
}

impl Template {
    /// Parses a template; placeholders are `{name}` with `name` in `[a-z_]+`, and two
    /// placeholders may not touch (the line could not be split back into values).
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    pieces.push(Piece::Lit(rest.to_string()));
                    break;
                }
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(format!("unmatched `}}` at byte {}", offset + i));
                }
                Some(i) => {
                    if i > 0 {
                        pieces.push(Piece::Lit(rest[..i].to_string()));
                    }
                    let close = rest[i..]
                        .find('}')
                        .ok_or_else(|| format!("unclosed `{{` at byte {}", offset + i))?;
                    let name = &rest[i + 1..i + close];
                    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    {
                        return Err(format!(
                            "bad placeholder `{{{name}}}` at byte {}",
                            offset + i
                        ));
                    }
                    if matches!(pieces.last(), Some(Piece::Var(_))) {
                        return Err(format!(
                            "placeholder `{{{name}}}` at byte {} touches the previous one",
                            offset + i
                        ));
                    }
                    pieces.push(Piece::Var(name.to_string()));
                    offset += i + close + 1;
                    rest = &rest[i + close + 1..];
                }
            }
        }
        Ok(Template {
            text: text.to_string(),
            pieces,
        })
    }

    /// The template text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The placeholder names, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Var(v) => Some(v.as_str()),
            Piece::Lit(_) => None,
        })
    }

    /// The literal pieces, in order.
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Lit(l) => Some(l.as_str()),
            Piece::Var(_) => None,
        })
    }

    /// Fills the placeholders; a placeholder without a value stays as `{name}`.
    pub fn render(&self, values: &[(&str, &str)]) -> String {
        let mut out = String::with_capacity(self.text.len() + 16);
        for piece in &self.pieces {
            match piece {
                Piece::Lit(l) => out.push_str(l),
                Piece::Var(v) => match values.iter().find(|(k, _)| k == v) {
                    Some((_, value)) => out.push_str(value),
                    None => {
                        out.push('{');
                        out.push_str(v);
                        out.push('}');
                    }
                },
            }
        }
        out
    }

    /// Matches a whole line against the template and returns the placeholder values.
    ///
    /// A placeholder extends to the first occurrence of the literal after it (or to the end of
    /// the line), so values must not contain that literal. `None` if the line does not match.
    pub fn capture<'l>(&self, line: &'l str) -> Option<Vec<(&str, &'l str)>> {
        let mut out = Vec::new();
        let mut pos = 0;
        let mut pieces = self.pieces.iter().peekable();
        while let Some(piece) = pieces.next() {
            match piece {
                Piece::Lit(l) => {
                    if !line[pos..].starts_with(l.as_str()) {
                        return None;
                    }
                    pos += l.len();
                }
                Piece::Var(v) => {
                    let end = match pieces.peek() {
                        Some(Piece::Lit(next)) => pos + line[pos..].find(next.as_str())?,
                        _ => line.len(),
                    };
                    out.push((v.as_str(), &line[pos..end]));
                    pos = end;
                }
            }
        }
        (pos == line.len()).then_some(out)
    }

    fn expect_placeholders(&self, key: &str, expected: &[&str]) -> Result<(), FirmwareError> {
        let found: BTreeSet<&str> = self.placeholders().collect();
        let want: BTreeSet<&str> = expected.iter().copied().collect();
        let count = self.placeholders().count();
        if found != want || count != want.len() {
            return Err(FirmwareError::Invalid {
                key: key.to_string(),
                problem: format!(
                    "template `{}` must have exactly the placeholders {:?}, has {:?}",
                    self.text,
                    want,
                    self.placeholders().collect::<Vec<_>>()
                ),
            });
        }
        Ok(())
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Template::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

/// Serial port settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSpec {
    /// Baud rate of the application (the ROM prints at 74880 before it).
    pub baud: u32,
    /// Line end of the sketch's own lines.
    pub eol: String,
    /// Whether setup() prints an empty line before the first state line.
    pub boot_blank_line: bool,
}

/// The identity words.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {
    /// Application name (`app=`).
    pub app: String,
    /// `HILFW app={app} version={version} ota={ota}`; also embedded NUL-terminated in the image.
    pub format: Template,
    /// The OTA methods a build can choose.
    pub ota_methods: Vec<OtaMethod>,
}

/// The state line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    /// All states.
    pub states: Vec<FwState>,
    /// `{identity} state={state}`.
    pub line: Template,
    /// State after boot.
    pub initial: FwState,
}

/// The button (GPIO0).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ButtonSpec {
    /// GPIO number.
    pub gpio: u8,
    /// Pressed = low.
    pub active_low: bool,
    /// How long the raw level must be stable to count.
    #[serde(rename = "debounce_ms", deserialize_with = "millis")]
    pub debounce: Duration,
    /// How long a press must last to enter UPDATE (from the raw edge).
    #[serde(rename = "long_press_ms", deserialize_with = "millis")]
    pub long_press: Duration,
}

/// Relay 1.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySpec {
    /// GPIO number.
    pub gpio: u8,
    /// On = high.
    pub active_high: bool,
    /// Relay state after boot.
    pub initial_on: bool,
}

/// The status LED.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedSpec {
    /// GPIO number.
    pub gpio: u8,
    /// On = low.
    pub active_low: bool,
    /// Half period of the blinking in UPDATE.
    #[serde(rename = "blink_ms", deserialize_with = "millis")]
    pub blink: Duration,
}

/// The UPDATE state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSpec {
    /// UPDATE returns to RUN this long after it was entered.
    #[serde(rename = "timeout_ms", deserialize_with = "millis")]
    pub timeout: Duration,
}

/// What the stopped OTA services look like from the network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutsideUpdateSpec {
    /// The espota UDP port.
    pub espota: Closed,
    /// The HTTP port.
    pub http: Closed,
}

/// Lines the sketch prints besides the state line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinesSpec {
    /// `HILFW endpoint={url}`, once per UPDATE period when the station has an address.
    pub endpoint: Template,
    /// `WiFi connected ip={ip}`.
    pub wifi_connected: Template,
    /// `relay 1 {level}` after a short press in RUN.
    pub relay: Template,
    /// The `{level}` words for off and on.
    pub relay_levels: [String; 2],
    /// ArduinoOTA onStart.
    pub ota_start: Template,
    /// ArduinoOTA onProgress, at each multiple of `progress_step_percent`.
    pub ota_progress: Template,
    /// Step of the progress lines in percent.
    pub progress_step_percent: u8,
    /// ArduinoOTA onEnd (just before the restart).
    pub ota_end: Template,
    /// ArduinoOTA onError without Updater detail.
    pub ota_error: Template,
    /// ArduinoOTA onError for begin/end errors, with the Updater's code and text.
    pub ota_error_updater: Template,
    /// The `{kind}` words.
    pub ota_error_kinds: Vec<String>,
}

/// ArduinoOTA service parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EspotaSpec {
    /// UDP port of the invitation (the virtual board remaps it).
    pub port: u16,
    /// `espota://{ip}:{port}`, the endpoint line's URL.
    pub url: Template,
    /// The build-time define that sets a password.
    pub password_define: String,
    /// Delay between the UDP `OK` and the TCP connect back.
    #[serde(rename = "connect_delay_ms", deserialize_with = "millis")]
    pub connect_delay: Duration,
    /// The device gives up when no data arrives this long.
    #[serde(rename = "receive_timeout_ms", deserialize_with = "millis")]
    pub receive_timeout: Duration,
    /// Delay between a successful `Update.end()` and `OK`.
    #[serde(rename = "before_ok_ms", deserialize_with = "millis")]
    pub before_ok: Duration,
    /// Delay between `OK` and closing the connection.
    #[serde(rename = "after_ok_ms", deserialize_with = "millis")]
    pub after_ok: Duration,
    /// Delay between closing (and onEnd) and `ESP.restart()`.
    #[serde(rename = "restart_delay_ms", deserialize_with = "millis")]
    pub restart_delay: Duration,
}

/// Serial lines printed by ESP8266HTTPUpdateServer itself (with their own line ends).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSerialSpec {
    /// Upload start: `Update: {filename}\n`.
    pub upload_start: Template,
    /// Printed once per upload block, no line end.
    pub upload_block_mark: String,
    /// `Update Success: {size}\nRebooting...\n`.
    pub upload_success: Template,
    /// `ERROR[{code}]: {text}\n` (Updater printError).
    pub upload_error: Template,
    /// Upload aborted by the client.
    pub upload_aborted: String,
    /// Wrong or missing credentials.
    pub unauthenticated: String,
}

/// HTTP update server parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// TCP port (the virtual board remaps it).
    pub port: u16,
    /// Path of the update form and upload.
    pub path: String,
    /// `http://{ip}:{port}/update`, the endpoint line's URL (ends with `path`).
    pub url: Template,
    /// The multipart field that carries the firmware.
    pub field: String,
    /// Size of the blocks the web server hands to the update handler.
    pub upload_block: usize,
    /// Status of other paths in UPDATE.
    pub not_found_status: u16,
    /// The build-time define that sets a password.
    pub password_define: String,
    /// HTTP user name when a password is set.
    pub user: String,
    /// Status when authentication fails.
    pub unauthorized_status: u16,
    /// POST reply body after a successful update.
    pub success_body: String,
    /// POST reply body after a failed update; `{error}` is `ERROR[n]: text\n`.
    pub error_body: Template,
    /// Delay between the success reply and `ESP.restart()`.
    #[serde(rename = "restart_delay_ms", deserialize_with = "millis")]
    pub restart_delay: Duration,
    /// What the library prints on the serial port.
    pub serial: HttpSerialSpec,
}

/// The whole behaviour description.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    /// Serial settings.
    pub serial: SerialSpec,
    /// Identity words.
    pub identity: IdentitySpec,
    /// State line and states.
    pub state: StateSpec,
    /// Button thresholds.
    pub button: ButtonSpec,
    /// Relay 1.
    pub relay: RelaySpec,
    /// Status LED.
    pub led: LedSpec,
    /// UPDATE state.
    pub update: UpdateSpec,
    /// Stopped services.
    pub outside_update: OutsideUpdateSpec,
    /// Other sketch lines.
    pub lines: LinesSpec,
    /// ArduinoOTA.
    pub espota: EspotaSpec,
    /// HTTP update server.
    pub http: HttpSpec,
}

/// A parsed state line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLine<'a> {
    /// Everything before ` state=`: `HILFW app=.. version=.. ota=..`, unparsed.
    pub identity: &'a str,
    /// The state word.
    pub state: FwState,
}

fn invalid(key: &str, problem: impl Into<String>) -> FirmwareError {
    FirmwareError::Invalid {
        key: key.to_string(),
        problem: problem.into(),
    }
}

impl Behaviour {
    /// Parses and validates a behaviour description.
    pub fn from_toml(text: &str) -> Result<Self, FirmwareError> {
        let b: Behaviour = toml::from_str(text)?;
        b.validate()?;
        Ok(b)
    }

    fn validate(&self) -> Result<(), FirmwareError> {
        if self.serial.baud == 0 {
            return Err(invalid("serial.baud", "must be positive"));
        }
        if !self.serial.eol.ends_with('\n') {
            return Err(invalid("serial.eol", "must end with a newline"));
        }
        let id = &self.identity;
        id.format
            .expect_placeholders("identity.format", &["app", "version", "ota"])?;
        if !id.format.as_str().starts_with("HILFW ") {
            return Err(invalid("identity.format", "must start with `HILFW `"));
        }
        if id.app.is_empty() || id.app.contains(char::is_whitespace) {
            return Err(invalid("identity.app", "must be one non-empty word"));
        }
        for m in [OtaMethod::Arduino, OtaMethod::WebServer] {
            if !id.ota_methods.contains(&m) {
                return Err(invalid("identity.ota_methods", format!("must list `{m}`")));
            }
        }
        self.state
            .line
            .expect_placeholders("state.line", &["identity", "state"])?;
        if !self.state.line.as_str().starts_with("{identity}") {
            return Err(invalid("state.line", "must start with `{identity}`"));
        }
        for s in [FwState::Run, FwState::Update] {
            if !self.state.states.contains(&s) {
                return Err(invalid("state.states", format!("must list `{s}`")));
            }
        }
        if self.button.debounce.is_zero() || self.button.long_press <= self.button.debounce {
            return Err(invalid(
                "button.long_press_ms",
                "must be longer than button.debounce_ms, which must be positive",
            ));
        }
        if self.update.timeout <= self.button.long_press {
            return Err(invalid(
                "update.timeout_ms",
                "must be longer than button.long_press_ms",
            ));
        }
        if self.led.blink.is_zero() {
            return Err(invalid("led.blink_ms", "must be positive"));
        }
        if self.outside_update.espota != Closed::Silent {
            return Err(invalid(
                "outside_update.espota",
                "a closed UDP socket can only be silent",
            ));
        }
        let l = &self.lines;
        l.endpoint.expect_placeholders("lines.endpoint", &["url"])?;
        l.wifi_connected
            .expect_placeholders("lines.wifi_connected", &["ip"])?;
        l.relay.expect_placeholders("lines.relay", &["level"])?;
        l.ota_start.expect_placeholders("lines.ota_start", &[])?;
        l.ota_progress
            .expect_placeholders("lines.ota_progress", &["percent"])?;
        l.ota_end.expect_placeholders("lines.ota_end", &[])?;
        l.ota_error
            .expect_placeholders("lines.ota_error", &["kind"])?;
        l.ota_error_updater
            .expect_placeholders("lines.ota_error_updater", &["kind", "code", "text"])?;
        if l.progress_step_percent == 0 || 100 % l.progress_step_percent != 0 {
            return Err(invalid("lines.progress_step_percent", "must divide 100"));
        }
        if l.ota_error_kinds.is_empty() {
            return Err(invalid("lines.ota_error_kinds", "must not be empty"));
        }
        let e = &self.espota;
        e.url.expect_placeholders("espota.url", &["ip", "port"])?;
        if e.port == 0 {
            return Err(invalid("espota.port", "must be positive"));
        }
        let h = &self.http;
        h.url.expect_placeholders("http.url", &["ip", "port"])?;
        if h.port == 0 {
            return Err(invalid("http.port", "must be positive"));
        }
        if !h.path.starts_with('/') {
            return Err(invalid("http.path", "must start with `/`"));
        }
        if !h.url.as_str().ends_with(&format!("}}{}", h.path)) {
            return Err(invalid("http.url", "must end with `{port}` and http.path"));
        }
        if h.upload_block == 0 {
            return Err(invalid("http.upload_block", "must be positive"));
        }
        h.error_body
            .expect_placeholders("http.error_body", &["error"])?;
        let s = &h.serial;
        s.upload_start
            .expect_placeholders("http.serial.upload_start", &["filename"])?;
        s.upload_success
            .expect_placeholders("http.serial.upload_success", &["size"])?;
        s.upload_error
            .expect_placeholders("http.serial.upload_error", &["code", "text"])?;
        Ok(())
    }

    /// The identity words for a build: `HILFW app=sonoff-ota version=1.0.0 ota=arduino`.
    pub fn identity(&self, version: &str, ota: OtaMethod) -> String {
        self.identity.format.render(&[
            ("app", &self.identity.app),
            ("version", version),
            ("ota", ota.name()),
        ])
    }

    /// The state line (without line end) for a build in a state.
    pub fn state_line(&self, version: &str, ota: OtaMethod, state: FwState) -> String {
        let identity = self.identity(version, ota);
        self.state
            .line
            .render(&[("identity", &identity), ("state", state.name())])
    }

    /// Parses a state line; a trailing `\r` or `\n` is ignored.
    ///
    /// Only the state word is interpreted. The identity part is returned raw, for
    /// `image::Identity::parse_line` to take apart.
    pub fn parse_state_line<'l>(&self, line: &'l str) -> Result<StateLine<'l>, StateLineError> {
        let line = line.trim_end_matches(['\r', '\n']);
        let prefix = self.identity.format.literals().next().unwrap_or_default();
        if !line.starts_with(prefix) {
            return Err(StateLineError::NotStateLine);
        }
        let values = self
            .state
            .line
            .capture(line)
            .ok_or(StateLineError::NotStateLine)?;
        let get = |name: &str| values.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let (Some(identity), Some(word)) = (get("identity"), get("state")) else {
            return Err(StateLineError::NotStateLine);
        };
        let state = FwState::from_word(word).ok_or_else(|| StateLineError::UnknownState {
            state: word.to_string(),
            column: word.as_ptr() as usize - line.as_ptr() as usize,
        })?;
        Ok(StateLine { identity, state })
    }
}

/// The embedded behaviour description, parsed once.
pub fn behaviour() -> &'static Behaviour {
    static BEHAVIOUR: OnceLock<Behaviour> = OnceLock::new();
    // The file is part of the source tree and a unit test loads it, so an error here is a bug.
    BEHAVIOUR.get_or_init(|| {
        Behaviour::from_toml(BEHAVIOUR_TOML).expect("firmware/behaviour.toml is valid")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sketch, as the test sees it; it must agree with behaviour.toml.
    const SKETCH: &str = include_str!("../../firmware/sonoff-ota/sonoff-ota.ino");

    #[test]
    fn embedded_description_loads() {
        let b = Behaviour::from_toml(BEHAVIOUR_TOML).unwrap();
        assert_eq!(b.serial.baud, 115200);
        assert_eq!(b.button.long_press, Duration::from_millis(3000));
        assert_eq!(b.update.timeout, Duration::from_secs(120));
        assert_eq!(b.espota.port, 8266);
        assert_eq!(b.http.port, 80);
        assert_eq!(b.http.path, "/update");
        assert_eq!(b.outside_update.http, Closed::Refused);
        assert_eq!(behaviour().identity.app, "sonoff-ota");
    }

    #[test]
    fn state_line_round_trip() {
        let b = behaviour();
        let line = b.state_line("1.2.3", OtaMethod::WebServer, FwState::Update);
        assert_eq!(
            line,
            "HILFW app=sonoff-ota version=1.2.3 ota=webserver state=UPDATE"
        );
        let with_eol = format!("{line}\r\n");
        let parsed = b.parse_state_line(&with_eol).unwrap();
        assert_eq!(parsed.state, FwState::Update);
        assert_eq!(
            parsed.identity,
            "HILFW app=sonoff-ota version=1.2.3 ota=webserver"
        );
        assert_eq!(parsed.identity, b.identity("1.2.3", OtaMethod::WebServer));
    }

    #[test]
    fn state_line_rejects() {
        let b = behaviour();
        assert_eq!(
            b.parse_state_line("relay 1 on"),
            Err(StateLineError::NotStateLine)
        );
        assert_eq!(
            b.parse_state_line("HILFW endpoint=x"),
            Err(StateLineError::NotStateLine)
        );
        assert_eq!(
            b.parse_state_line("HILFW app=sonoff-ota version=1 ota=arduino state=SLEEP"),
            Err(StateLineError::UnknownState {
                state: "SLEEP".into(),
                column: 49
            })
        );
        // Garbage before the prefix (e.g. ROM output at the wrong baud) is not a state line.
        assert_eq!(
            b.parse_state_line("\u{fffd}HILFW app=sonoff-ota version=1 ota=arduino state=RUN"),
            Err(StateLineError::NotStateLine)
        );
    }

    #[test]
    fn template_parse_render_capture() {
        let t = Template::parse("OTA error {kind}: ERROR[{code}]: {text}").unwrap();
        assert_eq!(
            t.placeholders().collect::<Vec<_>>(),
            ["kind", "code", "text"]
        );
        let line = t.render(&[
            ("kind", "begin"),
            ("code", "4"),
            ("text", "Not Enough Space"),
        ]);
        assert_eq!(line, "OTA error begin: ERROR[4]: Not Enough Space");
        assert_eq!(
            t.capture(&line).unwrap(),
            [
                ("kind", "begin"),
                ("code", "4"),
                ("text", "Not Enough Space")
            ]
        );
        assert_eq!(t.capture("OTA error begin"), None);
        assert_eq!(
            t.render(&[("kind", "x")]),
            "OTA error x: ERROR[{code}]: {text}"
        );
        assert!(Template::parse("a {b").unwrap_err().contains("unclosed"));
        assert!(Template::parse("a } b").unwrap_err().contains("byte 2"));
        assert!(Template::parse("{a}{b}").unwrap_err().contains("touches"));
        assert!(
            Template::parse("{A}")
                .unwrap_err()
                .contains("bad placeholder")
        );
    }

    #[test]
    fn validation_names_the_key() {
        let bad = BEHAVIOUR_TOML.replace("long_press_ms = 3000", "long_press_ms = 10");
        let err = Behaviour::from_toml(&bad).unwrap_err();
        assert!(err.to_string().contains("button.long_press_ms"), "{err}");

        let bad = BEHAVIOUR_TOML.replace("state={state}", "state=");
        let err = Behaviour::from_toml(&bad).unwrap_err();
        assert!(err.to_string().contains("state.line"), "{err}");

        let bad = BEHAVIOUR_TOML.replace("[relay]\n", "[relay]\ncolour = \"red\"\n");
        match Behaviour::from_toml(&bad).unwrap_err() {
            FirmwareError::Schema(e) => assert!(e.to_string().contains("colour"), "{e}"),
            other => panic!("expected a schema error, got {other}"),
        }
    }

    /// Turns a template into the C printf format the sketch uses for it: `%` doubled in
    /// literals, placeholders through `spec`.
    fn printf_form(t: &Template, spec: &dyn Fn(&str) -> String) -> String {
        let mut out = String::new();
        for piece in &t.pieces {
            match piece {
                Piece::Lit(l) => out.push_str(&l.replace('%', "%%")),
                Piece::Var(v) => out.push_str(&spec(v)),
            }
        }
        out
    }

    fn c_spec(name: &str) -> String {
        match name {
            "percent" | "code" | "port" => "%u".to_string(),
            _ => "%s".to_string(),
        }
    }

    #[track_caller]
    fn assert_in_sketch(needle: &str) {
        assert!(
            SKETCH.contains(needle),
            "sketch lacks `{needle}` (firmware/behaviour.toml)"
        );
    }

    #[test]
    fn sketch_constants_match_behaviour() {
        let b = behaviour();
        let ms = |d: Duration| d.as_millis().to_string();
        for (name, value) in [
            ("kBaud", b.serial.baud.to_string()),
            ("kButtonPin", b.button.gpio.to_string()),
            ("kRelayPin", b.relay.gpio.to_string()),
            ("kLedPin", b.led.gpio.to_string()),
            ("kDebounceMs", ms(b.button.debounce)),
            ("kLongPressMs", ms(b.button.long_press)),
            ("kLedBlinkMs", ms(b.led.blink)),
            ("kUpdateTimeoutMs", ms(b.update.timeout)),
            ("kEspotaPort", b.espota.port.to_string()),
            ("kHttpPort", b.http.port.to_string()),
            (
                "kProgressStepPercent",
                b.lines.progress_step_percent.to_string(),
            ),
        ] {
            assert_in_sketch(&format!("{name} = {value};"));
        }
        assert_in_sketch(&format!("kUpdatePath[] = \"{}\";", b.http.path));
        assert_in_sketch(&format!("kHttpUser[] = \"{}\";", b.http.user));
        assert_in_sketch(&format!("#ifdef {}", b.espota.password_define));
        assert_eq!(b.espota.password_define, b.http.password_define);
        assert_in_sketch("#define smnArduinoOTA");
        assert_in_sketch("defined(smnWebServerOTA)");
        assert_in_sketch("Serial.println();");
        assert_in_sketch("pinMode(kButtonPin, INPUT_PULLUP)");
    }

    #[test]
    fn sketch_lines_match_behaviour() {
        let b = behaviour();
        let eol = b.serial.eol.replace('\r', "\\r").replace('\n', "\\n");
        let line = |t: &Template| format!("\"{}{eol}\"", printf_form(t, &c_spec));

        // The identity is assembled from macros at compile time.
        let identity = b.identity.format.render(&[
            ("app", &b.identity.app),
            ("version", "\" SMN_FW_VERSION \""),
            ("ota", "\" SMN_OTA_NAME"),
        ]);
        assert_in_sketch(&format!("kIdentity[] = \"{identity};"));
        for m in &b.identity.ota_methods {
            assert_in_sketch(&format!("#define SMN_OTA_NAME \"{m}\""));
        }
        assert_in_sketch(&line(&b.state.line));
        for s in &b.state.states {
            assert_in_sketch(&format!("\"{s}\""));
        }

        let espota_url = printf_form(&b.espota.url, &c_spec);
        let http_url = printf_form(&b.http.url, &c_spec);
        for url in [espota_url, http_url] {
            let endpoint = printf_form(&b.lines.endpoint, &|_| url.clone());
            assert_in_sketch(&format!("\"{endpoint}{eol}\""));
        }
        let l = &b.lines;
        for t in [
            &l.wifi_connected,
            &l.relay,
            &l.ota_start,
            &l.ota_progress,
            &l.ota_end,
            &l.ota_error,
            &l.ota_error_updater,
        ] {
            assert_in_sketch(&line(t));
        }
        for word in l.relay_levels.iter().chain(&l.ota_error_kinds) {
            assert_in_sketch(&format!("\"{word}\""));
        }
    }
}
