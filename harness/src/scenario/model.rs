//! `RawScenario` → validated [`ScenarioFile`]: one [`Scenario`] per board × parameter
//! combination, with placeholders substituted, durations parsed, images found and linted,
//! triage classes and labels checked.
//!
//! Pure apart from `ImageFiles`, through which the caller says where images are and reads
//! them (the file system for `harness`, anything for tests).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

use super::error::{Problem, ScenarioError};
use super::raw::{
    RawButton, RawKind, RawParam, RawScenario, RawStep, RawTimeout, RawTriage, STEP_KINDS,
};
use super::step::{
    DEFAULT_BOOT_TIMEOUT, DEFAULT_LINE_TIMEOUT, FlashStep, IdentityWant, LONG_PRESS_MARGIN,
    LineMatcher, OtaStep, PowerAction, Refusal, SHORT_PRESS, SecondUpload, Step, StepKind,
};
use crate::board::{self, BoardProfile};
use crate::firmware::{self, FwState, OtaMethod};
use crate::image::{self, LintId, Severity};
use crate::triage::Class;

/// What a rig must offer for a scenario to run on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Switch the board's supply.
    Power,
    /// Drive the button / boot strap GPIO0.
    Gpio0,
    /// Read the board's serial output (and talk to its ROM loader).
    Serial,
    /// Reach the board's ArduinoOTA (espota) service.
    OtaArduino,
    /// Reach the board's HTTP update server.
    OtaWebserver,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 5] = [
        Capability::Power,
        Capability::Gpio0,
        Capability::Serial,
        Capability::OtaArduino,
        Capability::OtaWebserver,
    ];

    /// The word used in `requires`.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Power => "power",
            Capability::Gpio0 => "gpio0",
            Capability::Serial => "serial",
            Capability::OtaArduino => "ota-arduino",
            Capability::OtaWebserver => "ota-webserver",
        }
    }

    /// The capability with this name.
    pub fn from_name(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The capability an OTA method needs.
    pub fn for_ota(method: OtaMethod) -> Capability {
        match method {
            OtaMethod::Arduino => Capability::OtaArduino,
            OtaMethod::WebServer => Capability::OtaWebserver,
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Most runs one scenario file may make (boards × matrix combinations). Far more than a bench
/// can run; the limit keeps a small file with a few long `[params]` arrays from making millions
/// of runs (and running out of memory) before anything is checked.
pub const MAX_RUNS: usize = 1024;

/// Placeholders every scenario has besides its `[params]`.
///
/// `board` is the board id of the run; `long_press` and `update_timeout` come from
/// `firmware/behaviour.toml`, so scenarios about those thresholds follow the firmware.
pub const BUILTIN_PARAMS: [&str; 3] = ["board", "long_press", "update_timeout"];

/// A validated scenario file: its header and one [`Scenario`] per board and parameter
/// combination.
#[derive(Debug, Clone)]
pub struct ScenarioFile {
    /// The file.
    pub path: PathBuf,
    /// `name`.
    pub name: String,
    /// `description`: what the scenario shows.
    pub description: String,
    /// Board ids it applies to.
    pub boards: Vec<String>,
    /// Capabilities it needs.
    pub requires: BTreeSet<Capability>,
    /// The runs: boards × parameter combinations, boards outermost.
    pub runs: Vec<Scenario>,
}

/// One runnable scenario: a board and concrete parameter values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// `name`.
    pub name: String,
    /// `description`.
    pub description: String,
    /// The scenario file.
    pub file: PathBuf,
    /// The board id.
    pub board: String,
    /// Every declared parameter with its value for this run.
    pub params: BTreeMap<String, String>,
    /// The parameters that vary between runs of this file (matrix parameters).
    pub matrix: BTreeMap<String, String>,
    /// Capabilities it needs.
    pub requires: BTreeSet<Capability>,
    /// The steps.
    pub steps: Vec<Step>,
}

/// Where the images named by a scenario are, and their bytes.
pub(crate) trait ImageFiles {
    /// The file an image path (as written) refers to, or every path that was tried.
    fn resolve(&self, written: &str) -> Result<PathBuf, Vec<PathBuf>>;
    /// The image's bytes.
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
}

fn join<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> String {
    let v: Vec<String> = items.into_iter().map(|s| s.as_ref().to_string()).collect();
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// Validates the text of a scenario file. `file` names it in errors; `overrides` are the
/// command line's `--param name=value` values, which replace the file's (matrix) values.
pub(crate) fn validate(
    text: &str,
    file: &Path,
    images: &dyn ImageFiles,
    overrides: &[(String, String)],
) -> Result<ScenarioFile, ScenarioError> {
    let name = file.display().to_string();
    let raw: RawScenario = toml::from_str(text).map_err(|e| {
        let span = e.span();
        let problem = Problem::Toml {
            key: span
                .as_ref()
                .and_then(|s| crate::toml_path::key_at(text, s.start)),
            message: e.message().trim_end().to_string(),
        };
        match span {
            Some(span) => ScenarioError::at(problem, &name, text, span),
            None => ScenarioError::in_file(problem, &name),
        }
    })?;
    let err = |problem: Problem, span: Range<usize>| ScenarioError::at(problem, &name, text, span);

    if raw.name.get_ref().trim().is_empty() {
        return Err(err(Problem::Empty { key: "name".into() }, raw.name.span()));
    }
    if raw.boards.get_ref().is_empty() {
        return Err(err(
            Problem::Empty {
                key: "boards".into(),
            },
            raw.boards.span(),
        ));
    }
    let mut boards: Vec<&'static BoardProfile> = Vec::new();
    for b in raw.boards.get_ref() {
        let profile = board::find(b.get_ref()).map_err(|e| {
            err(
                Problem::UnknownBoard {
                    id: e.id,
                    known: e.known,
                },
                b.span(),
            )
        })?;
        boards.push(profile);
    }
    let mut requires = BTreeSet::new();
    for r in &raw.requires {
        let cap = Capability::from_name(r.get_ref()).ok_or_else(|| {
            err(
                Problem::BadValue {
                    key: "requires".into(),
                    value: r.get_ref().clone(),
                    expected: format!("one of {}", join(Capability::ALL.iter().map(|c| c.name()))),
                },
                r.span(),
            )
        })?;
        requires.insert(cap);
    }

    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut matrix_keys = BTreeSet::new();
    for (key, value) in &raw.params {
        if BUILTIN_PARAMS.contains(&key.as_str()) {
            return Err(err(
                Problem::BadValue {
                    key: format!("params.{key}"),
                    value: key.clone(),
                    expected: format!("a name other than the built-ins {}", join(BUILTIN_PARAMS)),
                },
                value.span(),
            ));
        }
        let values = match value.get_ref() {
            RawParam::One(v) => vec![v.clone()],
            RawParam::Many(vs) => {
                if vs.is_empty() {
                    return Err(err(
                        Problem::Empty {
                            key: format!("params.{key}"),
                        },
                        value.span(),
                    ));
                }
                matrix_keys.insert(key.clone());
                vs.clone()
            }
        };
        params.insert(key.clone(), values);
    }
    for (key, value) in overrides {
        let Some(slot) = params.get_mut(key) else {
            return Err(ScenarioError::in_file(
                Problem::UnknownOverride {
                    name: key.clone(),
                    known: join(params.keys()),
                },
                &name,
            ));
        };
        *slot = vec![value.clone()];
        matrix_keys.remove(key);
    }
    if raw.step.is_empty() {
        return Err(ScenarioError::in_file(
            Problem::Empty { key: "step".into() },
            &name,
        ));
    }

    let runs = params
        .values()
        .fold(boards.len(), |n, values| n.saturating_mul(values.len()));
    if runs > MAX_RUNS {
        let problem = Problem::TooManyRuns {
            boards: boards.len(),
            runs,
            max: MAX_RUNS,
        };
        // Point at the longest array: the first candidate to cut.
        let span = raw
            .params
            .values()
            .max_by_key(|v| match v.get_ref() {
                RawParam::One(_) => 0,
                RawParam::Many(vs) => vs.len(),
            })
            .map_or(raw.boards.span(), |v| v.span());
        return Err(err(problem, span));
    }

    let behaviour = firmware::behaviour();
    let mut runs = Vec::new();
    let mut lints = HashMap::new();
    for profile in &boards {
        for combo in combinations(&params) {
            let mut all = combo.clone();
            all.insert("board".into(), profile.id.clone());
            all.insert(
                "long_press".into(),
                humantime::format_duration(behaviour.button.long_press).to_string(),
            );
            all.insert(
                "update_timeout".into(),
                humantime::format_duration(behaviour.update.timeout).to_string(),
            );
            let mut ctx = Ctx {
                file: &name,
                text,
                params: &all,
                board: profile,
                images,
                requires: &requires,
                labels: Vec::new(),
                lints: &mut lints,
            };
            let steps = ctx.steps(&raw.step)?;
            runs.push(Scenario {
                name: raw.name.get_ref().clone(),
                description: raw.description.get_ref().trim().to_string(),
                file: file.to_path_buf(),
                board: profile.id.clone(),
                matrix: combo
                    .iter()
                    .filter(|(k, _)| matrix_keys.contains(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                params: combo,
                requires: requires.clone(),
                steps,
            });
        }
    }
    Ok(ScenarioFile {
        path: file.to_path_buf(),
        name: raw.name.into_inner(),
        description: raw.description.into_inner().trim().to_string(),
        boards: boards.iter().map(|b| b.id.clone()).collect(),
        requires,
        runs,
    })
}

/// Every combination of parameter values, in key order (the last key varies fastest).
fn combinations(params: &BTreeMap<String, Vec<String>>) -> Vec<BTreeMap<String, String>> {
    let mut out = vec![BTreeMap::new()];
    for (key, values) in params {
        out = out
            .into_iter()
            .flat_map(|partial| {
                values.iter().map(move |v| {
                    let mut next = partial.clone();
                    next.insert(key.clone(), v.clone());
                    next
                })
            })
            .collect();
    }
    out
}

/// Substitutes `{name}` placeholders; `{{` and `}}` are literal braces.
///
/// Returns the name of an unknown placeholder as `Err(Some(name))`, an unclosed `{` as
/// `Err(None)`.
pub(crate) fn substitute(
    text: &str,
    params: &BTreeMap<String, String>,
) -> Result<String, Option<String>> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{{") {
            out.push('{');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("}}") {
            out.push('}');
            rest = t;
        } else if let Some(t) = tail.strip_prefix('{') {
            let end = t.find('}').ok_or(None)?;
            let name = &t[..end];
            let value = params.get(name).ok_or_else(|| Some(name.to_string()))?;
            out.push_str(value);
            rest = &t[end + 1..];
        } else {
            // A lone `}` is literal: only `{` starts a placeholder.
            out.push('}');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    params: &'a BTreeMap<String, String>,
    board: &'static BoardProfile,
    images: &'a dyn ImageFiles,
    requires: &'a BTreeSet<Capability>,
    /// Labels of the steps validated so far, with their lines.
    labels: Vec<(String, usize)>,
    lints: &'a mut HashMap<(PathBuf, String), Vec<image::Lint>>,
}

impl Ctx<'_> {
    fn err(&self, problem: Problem, span: Range<usize>) -> ScenarioError {
        ScenarioError::at(problem, self.file, self.text, span)
    }

    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn string(&self, key: &str, s: &Spanned<String>) -> Result<String, ScenarioError> {
        substitute(s.get_ref(), self.params).map_err(|e| {
            let problem = match e {
                Some(name) => Problem::UnknownParam {
                    key: key.to_string(),
                    name,
                    known: join(self.params.keys()),
                },
                None => Problem::UnclosedPlaceholder {
                    key: key.to_string(),
                },
            };
            self.err(problem, s.span())
        })
    }

    fn duration(&self, key: &str, s: &Spanned<String>) -> Result<Duration, ScenarioError> {
        let text = self.string(key, s)?;
        humantime::parse_duration(text.trim()).map_err(|source| {
            self.err(
                Problem::BadDuration {
                    key: key.to_string(),
                    value: text.clone(),
                    source,
                },
                s.span(),
            )
        })
    }

    fn timeout(
        &self,
        key: &str,
        s: &Option<Spanned<String>>,
        default: Duration,
    ) -> Result<Duration, ScenarioError> {
        s.as_ref().map_or(Ok(default), |s| self.duration(key, s))
    }

    fn word<T>(
        &self,
        key: &str,
        s: &Spanned<String>,
        parse: impl Fn(&str) -> Option<T>,
        expected: &str,
    ) -> Result<T, ScenarioError> {
        let text = self.string(key, s)?;
        parse(&text).ok_or_else(|| {
            self.err(
                Problem::BadValue {
                    key: key.to_string(),
                    value: text.clone(),
                    expected: expected.to_string(),
                },
                s.span(),
            )
        })
    }

    fn method(&self, key: &str, s: &Spanned<String>) -> Result<OtaMethod, ScenarioError> {
        self.word(key, s, |t| t.parse().ok(), "arduino or webserver")
    }

    /// Resolves an image; with `lint`, also checks that the board lint accepts it.
    fn image(
        &mut self,
        key: &str,
        s: &Spanned<String>,
        lint: bool,
    ) -> Result<(PathBuf, String), ScenarioError> {
        let written = self.string(key, s)?;
        let path = self.images.resolve(&written).map_err(|tried| {
            self.err(
                Problem::MissingImage {
                    key: key.to_string(),
                    path: written.clone(),
                    tried: join(tried.iter().map(|p| p.display().to_string())),
                },
                s.span(),
            )
        })?;
        if lint {
            let errors = self.lint(key, s, &path)?;
            if !errors.is_empty() {
                return Err(self.err(
                    Problem::ImageDoesNotFit {
                        key: key.to_string(),
                        path: written,
                        board: self.board.id.clone(),
                        lints: errors.join("; "),
                    },
                    s.span(),
                ));
            }
        }
        Ok((path, written))
    }

    /// The lint errors (`id: message`) of an image on this board.
    fn lint(
        &mut self,
        key: &str,
        s: &Spanned<String>,
        path: &Path,
    ) -> Result<Vec<String>, ScenarioError> {
        let cache_key = (path.to_path_buf(), self.board.id.clone());
        if !self.lints.contains_key(&cache_key) {
            let bytes = self.images.read(path).map_err(|source| {
                self.err(
                    Problem::UnreadableImage {
                        key: key.to_string(),
                        path: path.to_path_buf(),
                        source,
                    },
                    s.span(),
                )
            })?;
            let fw = image::parse_firmware(&bytes).map_err(|source| {
                self.err(
                    Problem::BadImage {
                        key: key.to_string(),
                        path: path.to_path_buf(),
                        source,
                    },
                    s.span(),
                )
            })?;
            self.lints
                .insert(cache_key.clone(), image::lint(&fw, self.board));
        }
        Ok(self.lints[&cache_key]
            .iter()
            .filter(|l| l.severity == Severity::Error)
            .map(|l| format!("{}: {}", l.id.name(), l.message))
            .collect())
    }

    fn need(
        &self,
        cap: Capability,
        step: &'static str,
        span: Range<usize>,
    ) -> Result<(), ScenarioError> {
        if self.requires.contains(&cap) {
            Ok(())
        } else {
            Err(self.err(
                Problem::MissingCapability {
                    step,
                    capability: cap.name(),
                },
                span,
            ))
        }
    }

    fn steps(&mut self, raw: &[Spanned<RawStep>]) -> Result<Vec<Step>, ScenarioError> {
        raw.iter().map(|s| self.step(s)).collect()
    }

    fn step(&mut self, raw: &Spanned<RawStep>) -> Result<Step, ScenarioError> {
        let valid = STEP_KINDS.join(", ");
        let step = raw.get_ref();
        let (key, kind) = match step.kinds.as_slice() {
            [] => {
                return Err(self.err(Problem::NoStepKind { valid }, raw.span()));
            }
            [(key, RawKind::Unknown), ..] | [_, (key, RawKind::Unknown), ..] => {
                return Err(self.err(
                    Problem::UnknownStep {
                        kind: key.get_ref().clone(),
                        valid,
                    },
                    key.span(),
                ));
            }
            [one] => one,
            [first, second, ..] => {
                return Err(self.err(
                    Problem::TwoStepKinds {
                        first: first.0.get_ref().clone(),
                        second: second.0.get_ref().clone(),
                    },
                    second.0.span(),
                ));
            }
        };
        let line = self.line(key.span().start);
        let label = match &step.label {
            Some(l) => {
                let text = self.string("label", l)?;
                if let Some((_, first_line)) = self.labels.iter().find(|(t, _)| *t == text) {
                    return Err(self.err(
                        Problem::DuplicateLabel {
                            label: text,
                            first_line: *first_line,
                        },
                        l.span(),
                    ));
                }
                Some(text)
            }
            None => None,
        };
        let kind = self.kind(kind, key.span())?;
        // Registered after the kind, so that `since` cannot name its own step.
        if let Some(l) = &label {
            self.labels.push((l.clone(), line));
        }
        Ok(Step { label, line, kind })
    }

    fn kind(&mut self, kind: &RawKind, key_span: Range<usize>) -> Result<StepKind, ScenarioError> {
        let b = &firmware::behaviour().button;
        Ok(match kind {
            RawKind::Power(s) => {
                self.need(Capability::Power, "power", key_span)?;
                StepKind::Power(self.word(
                    "power",
                    s,
                    |t| match t {
                        "on" => Some(PowerAction::On),
                        "off" => Some(PowerAction::Off),
                        "cycle" => Some(PowerAction::Cycle),
                        _ => None,
                    },
                    "on, off or cycle",
                )?)
            }
            RawKind::Button(s) => {
                self.need(Capability::Gpio0, "button", key_span)?;
                let hold = match s.get_ref() {
                    RawButton::Word(w) => {
                        let w = Spanned::new(s.span(), w.clone());
                        self.word(
                            "button",
                            &w,
                            |t| (t == "press").then_some(()),
                            "\"press\" or { hold = \"3s\" }",
                        )?;
                        SHORT_PRESS
                    }
                    RawButton::Hold(h) => self.duration("button.hold", &h.hold)?,
                };
                StepKind::Button { hold }
            }
            RawKind::Flash(s) => {
                for cap in [Capability::Serial, Capability::Gpio0, Capability::Power] {
                    self.need(cap, "flash", key_span.clone())?;
                }
                let f = s.get_ref();
                let force = f.force.as_ref().is_some_and(|f| *f.get_ref());
                let (image, image_display) = self.image("flash.image", &f.image, !force)?;
                StepKind::Flash(FlashStep {
                    image,
                    image_display,
                    power_cycle_after: f.power_cycle_after.as_ref().is_none_or(|p| *p.get_ref()),
                    force,
                })
            }
            RawKind::WaitBoot(s) => {
                self.need(Capability::Serial, "wait_boot", key_span)?;
                let RawTimeout { timeout } = s.get_ref();
                StepKind::WaitBoot {
                    timeout: self.timeout("wait_boot.timeout", timeout, DEFAULT_BOOT_TIMEOUT)?,
                }
            }
            RawKind::ExpectLine(s) => {
                self.need(Capability::Serial, "expect_line", key_span)?;
                let e = s.get_ref();
                let contains = self.string("expect_line.contains", &e.contains)?;
                if contains.is_empty() {
                    return Err(self.err(
                        Problem::Empty {
                            key: "expect_line.contains".into(),
                        },
                        e.contains.span(),
                    ));
                }
                StepKind::ExpectLine {
                    matcher: LineMatcher::Contains(contains),
                    timeout: self.timeout(
                        "expect_line.timeout",
                        &e.timeout,
                        DEFAULT_LINE_TIMEOUT,
                    )?,
                }
            }
            RawKind::ExpectIdentity(s) => {
                self.need(Capability::Serial, "expect_identity", key_span)?;
                let e = s.get_ref();
                let opt = |key: &str, v: &Option<Spanned<String>>| {
                    v.as_ref().map(|v| self.string(key, v)).transpose()
                };
                let want = IdentityWant {
                    app: opt("expect_identity.app", &e.app)?,
                    version: opt("expect_identity.version", &e.version)?,
                    ota: e
                        .ota
                        .as_ref()
                        .map(|o| self.method("expect_identity.ota", o))
                        .transpose()?,
                    state: e
                        .state
                        .as_ref()
                        .map(|st| {
                            self.word(
                                "expect_identity.state",
                                st,
                                |t| match t {
                                    "RUN" => Some(FwState::Run),
                                    "UPDATE" => Some(FwState::Update),
                                    _ => None,
                                },
                                "RUN or UPDATE",
                            )
                        })
                        .transpose()?,
                };
                StepKind::ExpectIdentity {
                    matcher: LineMatcher::StateLine(want),
                    timeout: self.timeout(
                        "expect_identity.timeout",
                        &e.timeout,
                        DEFAULT_LINE_TIMEOUT,
                    )?,
                }
            }
            RawKind::EnterUpdate(s) => {
                self.need(Capability::Gpio0, "enter_update", key_span.clone())?;
                self.need(Capability::Serial, "enter_update", key_span)?;
                StepKind::EnterUpdate {
                    hold: b.long_press + LONG_PRESS_MARGIN,
                    timeout: self.timeout(
                        "enter_update.timeout",
                        &s.get_ref().timeout,
                        DEFAULT_LINE_TIMEOUT,
                    )?,
                }
            }
            RawKind::Ota(s) => {
                let o = s.get_ref();
                let method = self.method("ota.method", &o.method)?;
                self.need(Capability::for_ota(method), "ota", key_span)?;
                let force = o.force.as_ref().is_some_and(|f| *f.get_ref());
                let (image, image_display) = self.image("ota.image", &o.image, !force)?;
                let second = match &o.second {
                    None => None,
                    Some(sec) => {
                        let sec = sec.get_ref();
                        // What a second uploader sends is not the harness's to lint.
                        let (image, image_display) =
                            self.image("ota.second.image", &sec.image, false)?;
                        let from = sec
                            .from
                            .as_ref()
                            .map(|f| {
                                self.word(
                                    "ota.second.from",
                                    f,
                                    |t| t.parse::<std::net::IpAddr>().ok(),
                                    "an IP address of this host, such as 127.1.2.3",
                                )
                            })
                            .transpose()?;
                        Some(SecondUpload {
                            image,
                            image_display,
                            password_env: self
                                .password_env("ota.second.password_env", &sec.password_env)?,
                            from,
                        })
                    }
                };
                StepKind::Ota(OtaStep {
                    method,
                    image,
                    image_display,
                    password_env: self.password_env("ota.password_env", &o.password_env)?,
                    second,
                })
            }
            RawKind::ExpectOtaRefused(s) => {
                let o = s.get_ref();
                let method = self.method("expect_ota_refused.method", &o.method)?;
                self.need(Capability::for_ota(method), "expect_ota_refused", key_span)?;
                // The point may be to show a refusal of an image that does not fit: no lint.
                let (image, image_display) =
                    self.image("expect_ota_refused.image", &o.image, false)?;
                let reason = self.word(
                    "expect_ota_refused.reason",
                    &o.reason,
                    Refusal::from_name,
                    &format!("one of {}", join(Refusal::ALL.iter().map(|r| r.name()))),
                )?;
                if let Some(code) = &o.code
                    && reason != Refusal::UpdaterError
                {
                    return Err(self.err(
                        Problem::BadValue {
                            key: "expect_ota_refused.code".into(),
                            value: code.get_ref().to_string(),
                            expected: "no code unless reason = \"updater-error\"".into(),
                        },
                        code.span(),
                    ));
                }
                StepKind::ExpectOtaRefused {
                    ota: OtaStep {
                        method,
                        image,
                        image_display,
                        password_env: self
                            .password_env("expect_ota_refused.password_env", &o.password_env)?,
                        second: None,
                    },
                    reason,
                    code: o.code.as_ref().map(|c| *c.get_ref()),
                }
            }
            RawKind::ExpectLintRefusal(s) => {
                let e = s.get_ref();
                let (image, image_display) =
                    self.image("expect_lint_refusal.image", &e.image, false)?;
                let lint = e
                    .lint
                    .as_ref()
                    .map(|l| {
                        let text = self.string("expect_lint_refusal.lint", l)?;
                        LintId::from_name(&text).ok_or_else(|| {
                            self.err(
                                Problem::UnknownLint {
                                    key: "expect_lint_refusal.lint".into(),
                                    value: text.clone(),
                                    valid: join(LintId::ALL.iter().map(|l| l.name())),
                                },
                                l.span(),
                            )
                        })
                    })
                    .transpose()?;
                StepKind::ExpectLintRefusal {
                    image,
                    image_display,
                    lint,
                }
            }
            RawKind::ExpectTriage(s) => {
                self.need(Capability::Serial, "expect_triage", key_span)?;
                let (class, since) = match s.get_ref() {
                    RawTriage::Class(c) => (Spanned::new(s.span(), c.clone()), None),
                    RawTriage::Table(t) => (t.class.clone(), t.since.clone()),
                };
                let text = self.string("expect_triage.class", &class)?;
                let class_id: Class = text.parse().map_err(|_| {
                    self.err(
                        Problem::UnknownClass {
                            key: "expect_triage.class".into(),
                            value: text.clone(),
                            valid: join(Class::ALL.iter().map(|c| c.id())),
                        },
                        class.span(),
                    )
                })?;
                let since = match since {
                    Some(l) => {
                        let label = self.string("expect_triage.since", &l)?;
                        if !self.labels.iter().any(|(t, _)| *t == label) {
                            return Err(self.err(
                                Problem::UnknownLabel {
                                    label,
                                    known: join(self.labels.iter().map(|(t, _)| t)),
                                },
                                l.span(),
                            ));
                        }
                        Some(label)
                    }
                    None => None,
                };
                StepKind::ExpectTriage {
                    class: class_id,
                    since,
                }
            }
            RawKind::Wait(s) => StepKind::Wait(self.duration("wait", s)?),
            RawKind::Repeat(s) => {
                let r = s.get_ref();
                if *r.times.get_ref() == 0 {
                    return Err(self.err(
                        Problem::Empty {
                            key: "repeat.times".into(),
                        },
                        r.times.span(),
                    ));
                }
                if r.steps.is_empty() {
                    return Err(self.err(
                        Problem::Empty {
                            key: "repeat.steps".into(),
                        },
                        s.span(),
                    ));
                }
                StepKind::Repeat {
                    times: *r.times.get_ref(),
                    steps: self.steps(&r.steps)?,
                }
            }
            RawKind::Unknown => unreachable!("unknown kinds are reported in step()"),
        })
    }

    /// An empty variable name means "no password", so a matrix can switch it off.
    fn password_env(
        &self,
        key: &str,
        s: &Option<Spanned<String>>,
    ) -> Result<Option<String>, ScenarioError> {
        Ok(match s {
            Some(s) => Some(self.string(key, s)?).filter(|v| !v.is_empty()),
            None => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn placeholders_substitute_and_escape() {
        let p = params(&[("v", "2.0.0"), ("m", "arduino")]);
        assert_eq!(
            substitute("sonoff-ota-{v}-{m}.bin", &p).unwrap(),
            "sonoff-ota-2.0.0-arduino.bin"
        );
        assert_eq!(substitute("{{v}} }", &p).unwrap(), "{v} }");
        assert_eq!(substitute("{nope}", &p), Err(Some("nope".to_string())));
        assert_eq!(substitute("open {v", &p), Err(None));
    }

    #[test]
    fn matrix_is_the_cartesian_product() {
        let mut p = BTreeMap::new();
        p.insert("a".to_string(), vec!["1".to_string(), "2".to_string()]);
        p.insert("b".to_string(), vec!["x".to_string()]);
        p.insert("c".to_string(), vec!["y".to_string(), "z".to_string()]);
        let combos = combinations(&p);
        assert_eq!(combos.len(), 4);
        assert_eq!(combos[1], params(&[("a", "1"), ("b", "x"), ("c", "z")]));
    }
}
