//! The safety guard: whatever ends a run, GPIO0 is released and power is left as the rig file
//! says (`power_at_exit`).
//!
//! Three paths run the same action (release GPIO0 and RST, set power):
//!
//! - `Drop` of [`super::BoardRig`]: normal ends, errors, timeouts, and panics that unwind
//!   through the rig's owner.
//! - A signal thread ([`install_signal_handler`]): SIGINT, SIGTERM and SIGHUP apply the safe
//!   state of every open board, keep the boards' lines locked so that a step still running on
//!   the main thread cannot undo it, then exit with 128 + the signal (130, 143, 129).
//!   Destructors do not run on that path; the capture loses nothing since it writes unbuffered,
//!   and a simulator started by the harness dies with it (see `rig::virtual`).
//! - A panic hook ([`install_panic_hook`]): before the panic unwinds (or aborts), applies the
//!   safe state of the boards opened by the panicking thread. Boards of other threads are left
//!   alone: a thread that panics says nothing about a board another thread drives (the test
//!   harness runs tests on parallel threads, each with its own board).
//!
//! Every open board registers here when it is opened; the registration ends when the rig drops.
//! The lines are shared through a mutex; the signal path waits at most [`LOCK_WAIT`] for a
//! line operation in progress to finish.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, PoisonError, TryLockError, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::capture::{Capture, IndexEvent};

use super::{PowerAtExit, SharedLines, apply_safe_state};

/// Longest wait for a line operation in progress before the safe state is applied anyway
/// (signal path) or left to `Drop` (panic path: the panicking thread may hold the lines).
pub const LOCK_WAIT: Duration = Duration::from_secs(2);
const PANIC_LOCK_WAIT: Duration = Duration::from_millis(200);

struct Entry {
    id: u64,
    board: String,
    lines: SharedLines,
    capture: Weak<Capture>,
    power_at_exit: PowerAtExit,
    thread: ThreadId,
}

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A board's place in the registry; dropping it unregisters the board.
#[derive(Debug)]
pub struct Registration {
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        registry().retain(|e| e.id != self.id);
    }
}

fn registry() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registers an open board's lines for the signal and panic paths.
pub(crate) fn register(
    board: &str,
    lines: SharedLines,
    capture: Weak<Capture>,
    power_at_exit: PowerAtExit,
) -> Registration {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    registry().push(Entry {
        id,
        board: board.to_string(),
        lines,
        capture,
        power_at_exit,
        thread: std::thread::current().id(),
    });
    Registration { id }
}

/// Applies the safe state to every registered board; returns how many were reached.
pub fn apply_all(reason: &str) -> usize {
    apply_registered(reason, false)
}

/// As [`apply_all`], then keeps every board's lines locked until the process ends: the signal
/// path's last word, so that a step still running on another thread cannot switch power or
/// press GPIO0 again between the safe state and the exit.
fn freeze_all(reason: &str) -> usize {
    apply_registered(reason, true)
}

fn apply_registered(reason: &str, freeze: bool) -> usize {
    let entries: Vec<_> = registry()
        .iter()
        .map(|e| {
            (
                e.board.clone(),
                e.lines.clone(),
                e.capture.clone(),
                e.power_at_exit,
            )
        })
        .collect();
    entries
        .iter()
        .filter(|(board, lines, capture, at_exit)| {
            apply(board, lines, capture, *at_exit, reason, LOCK_WAIT, freeze)
        })
        .count()
}

/// Applies the safe state to the boards registered by the calling thread.
fn apply_current_thread(reason: &str) {
    let me = std::thread::current().id();
    // try_lock: the panic may have happened while this thread held the registry.
    let entries: Vec<_> = match REGISTRY.try_lock() {
        Ok(reg) => reg
            .iter()
            .filter(|e| e.thread == me)
            .map(|e| {
                (
                    e.board.clone(),
                    e.lines.clone(),
                    e.capture.clone(),
                    e.power_at_exit,
                )
            })
            .collect(),
        Err(_) => return,
    };
    for (board, lines, capture, at_exit) in &entries {
        apply(
            board,
            lines,
            capture,
            *at_exit,
            reason,
            PANIC_LOCK_WAIT,
            false,
        );
    }
}

fn apply(
    board: &str,
    lines: &SharedLines,
    capture: &Weak<Capture>,
    power_at_exit: PowerAtExit,
    reason: &str,
    wait: Duration,
    freeze: bool,
) -> bool {
    let deadline = Instant::now() + wait;
    let mut guard = loop {
        match lines.try_lock() {
            Ok(g) => break g,
            Err(TryLockError::Poisoned(p)) => break p.into_inner(),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(TryLockError::WouldBlock) => {
                tracing::error!("board {board}: lines busy, safe state not applied ({reason})");
                return false;
            }
        }
    };
    let result = apply_safe_state(guard.as_mut(), power_at_exit);
    let caps = guard.capabilities();
    if freeze {
        // Never unlocked: the process is about to exit.
        std::mem::forget(guard);
    } else {
        drop(guard);
    }
    if let Some(capture) = capture.upgrade() {
        let _ = capture.note(IndexEvent::Note {
            text: format!("safe state ({reason})"),
        });
        if caps.gpio0 {
            let _ = capture.note(IndexEvent::Button { pressed: false });
        }
        if caps.power {
            let _ = capture.note(IndexEvent::Power {
                on: power_at_exit.is_on(),
            });
        }
    }
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::error!("board {board}: safe state ({reason}) failed: {e}");
            false
        }
    }
}

/// Starts the signal thread once per process: on SIGINT, SIGTERM or SIGHUP it applies the safe
/// state of every open board and exits with 128 + the signal number.
pub fn install_signal_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = (|| {
            let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
            std::thread::Builder::new()
                .name("rig-safety-signals".into())
                .spawn(move || {
                    if let Some(signal) = signals.forever().next() {
                        let name = match signal {
                            SIGINT => "SIGINT",
                            SIGTERM => "SIGTERM",
                            _ => "SIGHUP",
                        };
                        let n = freeze_all(name);
                        eprintln!("harness: {name}: safe state applied to {n} board(s), exiting");
                        std::process::exit(128 + signal);
                    }
                })?;
            Ok(())
        })();
    });
    result
}

/// Installs the panic hook once per process (it calls the previous hook afterwards).
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            apply_current_thread("panic");
            previous(info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::rig::{Capabilities, Lines, RigError};

    /// Lines that remember their state.
    #[derive(Debug, Default)]
    struct State {
        power: Option<bool>,
        pressed: Option<bool>,
    }

    struct Fake(Arc<Mutex<State>>);

    impl Lines for Fake {
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                power: true,
                gpio0: true,
                reset: false,
                ota: false,
            }
        }
        fn set_power(&mut self, on: bool) -> Result<(), RigError> {
            self.0.lock().unwrap().power = Some(on);
            Ok(())
        }
        fn set_gpio0(&mut self, pressed: bool) -> Result<(), RigError> {
            self.0.lock().unwrap().pressed = Some(pressed);
            Ok(())
        }
    }

    /// The two tests look at the one process-wide registry.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn fake() -> (Arc<Mutex<State>>, SharedLines) {
        let state = Arc::new(Mutex::new(State::default()));
        let lines: SharedLines = Arc::new(Mutex::new(Box::new(Fake(Arc::clone(&state)))));
        (state, lines)
    }

    #[test]
    fn panic_hook_applies_the_safe_state_of_this_threads_boards_only() {
        install_panic_hook();
        let (mine, lines) = fake();
        let _reg = register("mine", Arc::clone(&lines), Weak::new(), PowerAtExit::On);
        let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let (other, other_lines) = fake();
        let _other_reg = std::thread::spawn(move || {
            register("other", other_lines, Weak::new(), PowerAtExit::Off)
        })
        .join()
        .unwrap();

        lines.lock().unwrap().set_gpio0(true).unwrap();
        let result = std::panic::catch_unwind(|| panic!("a step failed"));
        assert!(result.is_err());
        let s = mine.lock().unwrap();
        assert_eq!((s.pressed, s.power), (Some(false), Some(true)));
        let o = other.lock().unwrap();
        assert_eq!((o.pressed, o.power), (None, None), "another thread's board");
    }

    #[test]
    fn apply_all_reaches_every_board_and_unregistering_removes_it() {
        let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let (a, la) = fake();
        let reg = register("a", la, Weak::new(), PowerAtExit::Off);
        assert!(apply_all("test") >= 1);
        assert_eq!(a.lock().unwrap().power, Some(false));
        drop(reg);
        a.lock().unwrap().power = None;
        apply_all("test");
        assert_eq!(a.lock().unwrap().power, None, "unregistered");
    }
}
