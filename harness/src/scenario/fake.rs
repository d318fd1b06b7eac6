//! [`FakeExecutor`]: an [`Executor`] that answers from a script and records every call.
//!
//! It is how the runner, the reports and the run folder are tested without a rig, and how a
//! new step kind can be tried before a rig supports it. Unscripted calls get the answer of a
//! healthy board (action done, line seen, upload accepted), so a test scripts only what it is
//! about.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::executor::{
    CaptureMark, ExecError, Executor, FlashOutcome, LineWait, OtaOutcome, OtaRequest,
};
use super::model::Capability;
use super::step::{LineMatcher, PowerAction};
use crate::firmware::{self, FwState, OtaMethod};
use crate::triage;

/// The executor methods a script can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// [`Executor::mark`] (only `Fail` and `Panic` make sense).
    Mark,
    /// [`Executor::power`].
    Power,
    /// [`Executor::button`].
    Button,
    /// [`Executor::flash`].
    Flash,
    /// [`Executor::wait_boot`].
    WaitBoot,
    /// [`Executor::wait_line`].
    WaitLine,
    /// [`Executor::ota`].
    Ota,
    /// [`Executor::wait`].
    Wait,
    /// [`Executor::triage`].
    Triage,
    /// [`Executor::safe_state`].
    SafeState,
}

/// One scripted answer.
#[derive(Debug)]
pub enum Reply {
    /// For actions without a result (power, button, wait, safe state): done.
    Done,
    /// For `wait_boot` / `wait_line`.
    Line(LineWait),
    /// For `flash`.
    Flash(FlashOutcome),
    /// For `ota`.
    Ota(OtaOutcome),
    /// For `triage`.
    Triage(Box<triage::Report>),
    /// Any action: fail with this harness error.
    Fail(ExecError),
    /// Any action: panic with this message (to test that the runner survives it).
    Panic(String),
}

/// A call the fake received, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `mark()`, with the mark it returned.
    Mark(CaptureMark),
    /// `power(action)`.
    Power(PowerAction),
    /// `button(hold)`.
    Button(Duration),
    /// `flash(image, power_cycle_after)`.
    Flash {
        /// The image path.
        image: PathBuf,
        /// Whether a power cycle follows.
        power_cycle_after: bool,
    },
    /// `wait_boot(from, timeout)`.
    WaitBoot {
        /// Start mark.
        from: CaptureMark,
        /// Timeout.
        timeout: Duration,
    },
    /// `wait_line(from, matcher, timeout)`.
    WaitLine {
        /// Start mark.
        from: CaptureMark,
        /// What was waited for.
        matcher: LineMatcher,
        /// Timeout.
        timeout: Duration,
    },
    /// `ota(request)`.
    Ota {
        /// Method.
        method: OtaMethod,
        /// Image path.
        image: PathBuf,
        /// Password given.
        password: Option<String>,
    },
    /// `wait(duration)`.
    Wait(Duration),
    /// `triage(from)`.
    Triage {
        /// Start mark.
        from: CaptureMark,
    },
    /// `safe_state()`.
    SafeState,
}

/// An [`Executor`] that answers from per-action queues of [`Reply`]s.
///
/// ```
/// use harness::scenario::{FakeExecutor, fake::{Action, Reply}, OtaOutcome, Refusal};
/// let mut fake = FakeExecutor::new().reply(
///     Action::Ota,
///     Reply::Ota(OtaOutcome::Refused {
///         reason: Refusal::NotInUpdateState,
///         code: None,
///         detail: "connection refused".into(),
///     }),
/// );
/// # let _ = &mut fake;
/// ```
#[derive(Debug)]
pub struct FakeExecutor {
    capabilities: BTreeSet<Capability>,
    script: HashMap<Action, VecDeque<Reply>>,
    calls: Vec<Call>,
    capture: Vec<u8>,
    capture_path: Option<PathBuf>,
    marks: u64,
}

impl Default for FakeExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeExecutor {
    /// A fake with every capability, an empty script and an empty capture.
    pub fn new() -> Self {
        FakeExecutor {
            capabilities: Capability::ALL.into_iter().collect(),
            script: HashMap::new(),
            calls: Vec::new(),
            capture: Vec::new(),
            capture_path: None,
            marks: 0,
        }
    }

    /// Replaces the capabilities the fake claims.
    pub fn with_capabilities(mut self, caps: impl IntoIterator<Item = Capability>) -> Self {
        self.capabilities = caps.into_iter().collect();
        self
    }

    /// Queues `reply` as the answer to the next unanswered call of `action`.
    pub fn reply(mut self, action: Action, reply: Reply) -> Self {
        self.push(action, reply);
        self
    }

    /// Queues `reply` (for use on a fake that is already built).
    pub fn push(&mut self, action: Action, reply: Reply) {
        self.script.entry(action).or_default().push_back(reply);
    }

    /// The capture that unscripted `triage` calls classify.
    pub fn with_capture(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.capture = bytes.into();
        self
    }

    /// The path [`Executor::capture_path`] reports.
    pub fn with_capture_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.capture_path = Some(path.into());
        self
    }

    /// Every call received, in order.
    pub fn calls(&self) -> &[Call] {
        &self.calls
    }

    /// Scripted replies nobody asked for (a test may assert this is zero).
    pub fn unused_replies(&self) -> usize {
        self.script.values().map(VecDeque::len).sum()
    }

    fn next(&mut self, action: Action) -> Option<Reply> {
        match self.script.get_mut(&action)?.pop_front()? {
            Reply::Panic(message) => panic!("{message}"),
            other => Some(other),
        }
    }

    fn mismatch(action: Action, reply: Reply) -> ExecError {
        ExecError::Script {
            problem: format!("{reply:?} is no answer to {action:?}"),
        }
    }

    fn unit(&mut self, action: Action) -> Result<(), ExecError> {
        match self.next(action) {
            None | Some(Reply::Done) => Ok(()),
            Some(Reply::Fail(e)) => Err(e),
            Some(other) => Err(Self::mismatch(action, other)),
        }
    }

    fn line(&mut self, action: Action, default: String) -> Result<LineWait, ExecError> {
        match self.next(action) {
            None => Ok(LineWait::Seen {
                line: default,
                end: self.bump(),
            }),
            Some(Reply::Line(w)) => {
                // Capture positions only grow: later marks come after a scripted line's end.
                if let LineWait::Seen { end, .. } = &w {
                    self.marks = self.marks.max(end.0);
                }
                Ok(w)
            }
            Some(Reply::Fail(e)) => Err(e),
            Some(other) => Err(Self::mismatch(action, other)),
        }
    }

    fn bump(&mut self) -> CaptureMark {
        self.marks += 1;
        CaptureMark(self.marks)
    }
}

/// The line a healthy board would print for `matcher`.
fn line_for(matcher: &LineMatcher) -> String {
    match matcher {
        LineMatcher::Contains(text) => text.clone(),
        LineMatcher::StateLine(want) => firmware::behaviour().state_line(
            want.version.as_deref().unwrap_or("1.0.0"),
            want.ota.unwrap_or(OtaMethod::WebServer),
            want.state.unwrap_or(FwState::Run),
        ),
    }
}

impl Executor for FakeExecutor {
    fn backend(&self) -> &str {
        "fake"
    }

    fn capabilities(&self) -> BTreeSet<Capability> {
        self.capabilities.clone()
    }

    fn mark(&mut self) -> Result<CaptureMark, ExecError> {
        match self.next(Action::Mark) {
            None => {}
            Some(Reply::Fail(e)) => return Err(e),
            Some(other) => return Err(Self::mismatch(Action::Mark, other)),
        }
        let mark = self.bump();
        self.calls.push(Call::Mark(mark));
        Ok(mark)
    }

    fn power(&mut self, action: PowerAction) -> Result<(), ExecError> {
        self.calls.push(Call::Power(action));
        self.unit(Action::Power)
    }

    fn button(&mut self, hold: Duration) -> Result<(), ExecError> {
        self.calls.push(Call::Button(hold));
        self.unit(Action::Button)
    }

    fn flash(&mut self, image: &Path, power_cycle_after: bool) -> Result<FlashOutcome, ExecError> {
        self.calls.push(Call::Flash {
            image: image.to_path_buf(),
            power_cycle_after,
        });
        match self.next(Action::Flash) {
            None => Ok(FlashOutcome::Written {
                detail: "fake: written".into(),
            }),
            Some(Reply::Flash(o)) => Ok(o),
            Some(Reply::Fail(e)) => Err(e),
            Some(other) => Err(Self::mismatch(Action::Flash, other)),
        }
    }

    fn wait_boot(&mut self, from: CaptureMark, timeout: Duration) -> Result<LineWait, ExecError> {
        self.calls.push(Call::WaitBoot { from, timeout });
        let line = firmware::behaviour().state_line("1.0.0", OtaMethod::WebServer, FwState::Run);
        self.line(Action::WaitBoot, line)
    }

    fn wait_line(
        &mut self,
        from: CaptureMark,
        matcher: &LineMatcher,
        timeout: Duration,
    ) -> Result<LineWait, ExecError> {
        self.calls.push(Call::WaitLine {
            from,
            matcher: matcher.clone(),
            timeout,
        });
        self.line(Action::WaitLine, line_for(matcher))
    }

    fn ota(&mut self, request: &OtaRequest<'_>) -> Result<OtaOutcome, ExecError> {
        self.calls.push(Call::Ota {
            method: request.method,
            image: request.image.to_path_buf(),
            password: request.password.map(str::to_string),
        });
        match self.next(Action::Ota) {
            None => Ok(OtaOutcome::Accepted {
                detail: "fake: accepted".into(),
            }),
            Some(Reply::Ota(o)) => Ok(o),
            Some(Reply::Fail(e)) => Err(e),
            Some(other) => Err(Self::mismatch(Action::Ota, other)),
        }
    }

    fn wait(&mut self, duration: Duration) -> Result<(), ExecError> {
        self.calls.push(Call::Wait(duration));
        self.unit(Action::Wait)
    }

    fn triage(&mut self, from: CaptureMark) -> Result<triage::Report, ExecError> {
        self.calls.push(Call::Triage { from });
        match self.next(Action::Triage) {
            None => Ok(triage::triage_bytes(&self.capture)),
            Some(Reply::Triage(r)) => Ok(*r),
            Some(Reply::Fail(e)) => Err(e),
            Some(other) => Err(Self::mismatch(Action::Triage, other)),
        }
    }

    fn capture_path(&self) -> Option<PathBuf> {
        self.capture_path.clone()
    }

    fn safe_state(&mut self) -> Result<(), ExecError> {
        self.calls.push(Call::SafeState);
        self.unit(Action::SafeState)
    }
}
