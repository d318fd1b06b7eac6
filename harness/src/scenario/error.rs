//! The error type of scenario loading: what is wrong, and where in which file.

use std::fmt;
use std::path::PathBuf;

use miette::{LabeledSpan, NamedSource, SourceSpan};

/// Where a problem is: file, and line/column when it is inside the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The scenario file as given (or `--param` for a command-line override).
    pub file: String,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// 1-based column (characters) on that line.
    pub column: Option<usize>,
}

impl Location {
    /// The location of byte `offset` of `text`.
    pub(crate) fn at(file: &str, text: &str, offset: usize) -> Location {
        let offset = offset.min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location {
            file: file.to_string(),
            line: Some(line),
            column: Some(column),
        }
    }

    /// A location that is just a file (or the command line).
    pub(crate) fn file(file: &str) -> Location {
        Location {
            file: file.to_string(),
            line: None,
            column: None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        Ok(())
    }
}

/// What is wrong with a scenario file.
///
/// Each variant names the key and the value it rejects; [`ScenarioError`] adds the place.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// The file cannot be read.
    #[error("cannot read the scenario file")]
    Read(#[source] std::io::Error),
    /// TOML syntax, a wrong type, a missing or unknown key (toml's own message).
    #[error("{}{message}", key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Toml {
        /// The dotted key (`step[1].flash.image`), when the position names one.
        key: Option<String>,
        /// toml's message, without its location and excerpt (which [`ScenarioError`] gives).
        message: String,
    },
    /// A `[[step]]` key that is no step kind.
    #[error("unknown step kind `{kind}` (valid step kinds: {valid})")]
    UnknownStep {
        /// The key.
        kind: String,
        /// The step kinds, comma-separated.
        valid: String,
    },
    /// A step with only a label, or with no keys at all.
    #[error("step has no kind (valid step kinds: {valid})")]
    NoStepKind {
        /// The step kinds, comma-separated.
        valid: String,
    },
    /// A step with two kind keys.
    #[error("step has two kinds, `{first}` and `{second}`: give each its own [[step]]")]
    TwoStepKinds {
        /// The first kind key.
        first: String,
        /// The second kind key.
        second: String,
    },
    /// A value outside its set (power action, state, OTA method, capability, ...).
    #[error("`{key}` is `{value}`, expected {expected}")]
    BadValue {
        /// Dotted key.
        key: String,
        /// The value found.
        value: String,
        /// What would be accepted.
        expected: String,
    },
    /// A duration humantime cannot read.
    #[error("`{key}` is `{value}`, which is not a duration (write e.g. 500ms, 5s, 2m)")]
    BadDuration {
        /// Dotted key.
        key: String,
        /// The value found.
        value: String,
        /// humantime's reason.
        #[source]
        source: humantime::DurationError,
    },
    /// A `{name}` placeholder that names no parameter.
    #[error("unknown parameter `{{{name}}}` in `{key}` (parameters: {known})")]
    UnknownParam {
        /// Dotted key of the string with the placeholder.
        key: String,
        /// The placeholder's name.
        name: String,
        /// Declared and built-in parameters, comma-separated.
        known: String,
    },
    /// A `{` without its `}` (write `{{` for a literal brace).
    #[error("unclosed `{{` in `{key}` (write `{{{{` for a literal brace)")]
    UnclosedPlaceholder {
        /// Dotted key.
        key: String,
    },
    /// `--param name=value` for a parameter the scenario does not declare.
    #[error("`--param {name}=...`: the scenario has no parameter `{name}` (parameters: {known})")]
    UnknownOverride {
        /// The parameter named on the command line.
        name: String,
        /// Declared parameters, comma-separated.
        known: String,
    },
    /// Boards × matrix values give more runs than one file may have.
    #[error("{boards} boards × the [params] matrix make {runs} runs, more than {max}")]
    TooManyRuns {
        /// Boards of the file.
        boards: usize,
        /// The runs it would make (saturating).
        runs: usize,
        /// [`MAX_RUNS`](crate::scenario::model::MAX_RUNS).
        max: usize,
    },
    /// A `--param` that is not `name=value`.
    #[error("`--param {text}` is not `name=value`")]
    BadOverride {
        /// The argument.
        text: String,
    },
    /// An image path that exists nowhere it was looked for.
    #[error("image `{path}` in `{key}` not found (looked at {tried})")]
    MissingImage {
        /// Dotted key.
        key: String,
        /// The path as written (after substitution).
        path: String,
        /// The paths tried, comma-separated.
        tried: String,
    },
    /// An image that exists but cannot be read.
    #[error("cannot read image `{path}` in `{key}`")]
    UnreadableImage {
        /// Dotted key.
        key: String,
        /// The resolved path.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// An image that is not an ESP8266 firmware file.
    #[error("image `{path}` in `{key}` is not a usable firmware file")]
    BadImage {
        /// Dotted key.
        key: String,
        /// The resolved path.
        path: PathBuf,
        /// Why the image parser rejected it.
        #[source]
        source: crate::image::ImageError,
    },
    /// A flash or OTA step whose image the board lint refuses, without `force = true`.
    #[error("image `{path}` in `{key}` does not fit board `{board}`: {lints}")]
    ImageDoesNotFit {
        /// Dotted key.
        key: String,
        /// The path as written.
        path: String,
        /// The board id.
        board: String,
        /// The lint errors, `id: message`, separated by `; `.
        lints: String,
    },
    /// A triage class id that does not exist.
    #[error("`{key}` is `{value}`, which is no triage class (classes: {valid})")]
    UnknownClass {
        /// Dotted key.
        key: String,
        /// The value found.
        value: String,
        /// The class ids, comma-separated.
        valid: String,
    },
    /// A lint id that does not exist.
    #[error("`{key}` is `{value}`, which is no image lint (lints: {valid})")]
    UnknownLint {
        /// Dotted key.
        key: String,
        /// The value found.
        value: String,
        /// The lint ids, comma-separated.
        valid: String,
    },
    /// A board id that is not in the board table.
    #[error("unknown board `{id}` (boards: {known})")]
    UnknownBoard {
        /// The id.
        id: String,
        /// Known board ids, comma-separated.
        known: String,
    },
    /// `since = "label"` naming no earlier step.
    #[error("`since` names `{label}`, but no earlier step has that label (labels: {known})")]
    UnknownLabel {
        /// The label.
        label: String,
        /// Labels of earlier steps, comma-separated (or `none`).
        known: String,
    },
    /// Two steps with one label.
    #[error("label `{label}` is already used by the step on line {first_line}")]
    DuplicateLabel {
        /// The label.
        label: String,
        /// Line of the first step with it.
        first_line: usize,
    },
    /// A step that needs a capability the scenario does not list in `requires`.
    #[error("step `{step}` needs capability `{capability}`, which `requires` does not list")]
    MissingCapability {
        /// The step kind.
        step: &'static str,
        /// The capability it needs.
        capability: &'static str,
    },
    /// A list or table that must not be empty, or a count that must be positive.
    #[error("`{key}` must not be empty")]
    Empty {
        /// Dotted key.
        key: String,
    },
}

impl Problem {
    fn code(&self) -> &'static str {
        match self {
            Problem::Read(_) => "harness::scenario::read",
            Problem::Toml { .. } => "harness::scenario::toml",
            Problem::UnknownStep { .. } => "harness::scenario::unknown_step",
            Problem::NoStepKind { .. } => "harness::scenario::no_step_kind",
            Problem::TwoStepKinds { .. } => "harness::scenario::two_step_kinds",
            Problem::BadValue { .. } => "harness::scenario::bad_value",
            Problem::BadDuration { .. } => "harness::scenario::bad_duration",
            Problem::UnknownParam { .. } => "harness::scenario::unknown_param",
            Problem::UnclosedPlaceholder { .. } => "harness::scenario::unclosed_placeholder",
            Problem::UnknownOverride { .. } => "harness::scenario::unknown_override",
            Problem::BadOverride { .. } => "harness::scenario::bad_override",
            Problem::TooManyRuns { .. } => "harness::scenario::too_many_runs",
            Problem::MissingImage { .. } => "harness::scenario::missing_image",
            Problem::UnreadableImage { .. } => "harness::scenario::unreadable_image",
            Problem::BadImage { .. } => "harness::scenario::bad_image",
            Problem::ImageDoesNotFit { .. } => "harness::scenario::image_does_not_fit",
            Problem::UnknownClass { .. } => "harness::scenario::unknown_class",
            Problem::UnknownLint { .. } => "harness::scenario::unknown_lint",
            Problem::UnknownBoard { .. } => "harness::scenario::unknown_board",
            Problem::UnknownLabel { .. } => "harness::scenario::unknown_label",
            Problem::DuplicateLabel { .. } => "harness::scenario::duplicate_label",
            Problem::MissingCapability { .. } => "harness::scenario::missing_capability",
            Problem::Empty { .. } => "harness::scenario::empty",
        }
    }

    fn help(&self) -> Option<String> {
        Some(match self {
            Problem::UnknownStep { valid, .. } | Problem::NoStepKind { valid } => {
                format!("each [[step]] has one of: {valid} (and optionally `label`)")
            }
            Problem::BadDuration { .. } => {
                "durations are device time in humantime syntax: 250ms, 5s, 1m 30s".to_string()
            }
            Problem::UnknownParam { .. } => {
                "declare it under [params], or write `{{` and `}}` for literal braces".to_string()
            }
            Problem::MissingImage { .. } => "image paths are relative to the scenario file or \
                 the repository root; `harness image make` writes test images"
                .to_string(),
            Problem::ImageDoesNotFit { .. } => "use an image built for the board, or add \
                 `force = true` to the step to do it on purpose (and `expect_lint_refusal` to \
                 show the refusal)"
                .to_string(),
            Problem::MissingCapability { capability, .. } => {
                format!(
                    "add \"{capability}\" to `requires` so that rigs without it skip the scenario"
                )
            }
            Problem::TooManyRuns { .. } => "split the matrix over several scenario files, or \
                 fix a parameter with `--param name=value`"
                .to_string(),
            Problem::UnknownLabel { .. } => {
                "give the step to measure from a `label = \"...\"`".to_string()
            }
            _ => return None,
        })
    }
}

/// A scenario file that cannot be used, with the place of the problem.
///
/// Renders as `file:line:col: problem`; as a miette diagnostic it also shows the lines around
/// the place.
#[derive(Debug)]
pub struct ScenarioError {
    // Boxed: validation passes this error up through many small functions.
    inner: Box<Inner>,
}

#[derive(Debug)]
struct Inner {
    problem: Problem,
    location: Location,
    src: Option<NamedSource<String>>,
    span: Option<SourceSpan>,
}

impl ScenarioError {
    /// A problem at byte range `span` of `text` (the file named `file`).
    pub(crate) fn at(
        problem: Problem,
        file: &str,
        text: &str,
        span: std::ops::Range<usize>,
    ) -> ScenarioError {
        let start = span.start.min(text.len());
        let len = span.end.min(text.len()).saturating_sub(start);
        ScenarioError {
            inner: Box::new(Inner {
                problem,
                location: Location::at(file, text, start),
                src: Some(NamedSource::new(file, text.to_string()).with_language("toml")),
                span: Some((start, len).into()),
            }),
        }
    }

    /// A problem with a file (or with the command line) as a whole.
    pub(crate) fn in_file(problem: Problem, file: &str) -> ScenarioError {
        ScenarioError {
            inner: Box::new(Inner {
                problem,
                location: Location::file(file),
                src: None,
                span: None,
            }),
        }
    }

    /// What is wrong.
    pub fn problem(&self) -> &Problem {
        &self.inner.problem
    }

    /// Where.
    pub fn location(&self) -> &Location {
        &self.inner.location
    }
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.location, self.inner.problem)
    }
}

impl std::error::Error for ScenarioError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The problem's own text is already in Display; continue the chain below it.
        std::error::Error::source(&self.inner.problem)
    }
}

impl miette::Diagnostic for ScenarioError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.inner.problem.code()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.inner
            .problem
            .help()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.inner
            .src
            .as_ref()
            .map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.inner.span?;
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some("here".to_string()),
            span,
        ))))
    }
}
