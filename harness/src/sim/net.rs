//! sim/net.rs: the firmware's network side as the OTA servers see it.
use std::net::Ipv4Addr;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::firmware::OtaMethod;
use crate::ota::updater::{UpdateCommand, UpdaterError};

/// The OTA service the firmware has started (only in its UPDATE state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtaService {
    /// Which library: ArduinoOTA or the HTTP update server.
    pub method: OtaMethod,
    /// Build-time password (SMN_OTA_PASSWORD), plain text; None = no password.
    pub password: Option<String>,
    /// Increments every time UPDATE is entered; requests carry it so that a request for a
    /// service that has since stopped (timeout, restart, power cut) is refused.
    pub generation: u64,
}

/// What the servers need to know right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetState {
    /// The board's own address, unique per simulator instance (127.0.0.x).
    pub ip: Ipv4Addr,
    /// Some only while the firmware runs with its OTA service started.
    pub service: Option<OtaService>,
}

/// Shared by the chip thread (writer) and the server threads (readers).
#[derive(Debug)]
pub struct NetShared {
    state: Mutex<NetState>,
    changed: Condvar,
    /// The `fault ota-reset N` knob: the next upload's connection is reset after N bytes.
    reset_after: Mutex<Option<u64>>,
}

impl NetShared {
    /// No service running yet.
    pub fn new(ip: Ipv4Addr) -> Self {
        NetShared {
            state: Mutex::new(NetState { ip, service: None }),
            changed: Condvar::new(),
            reset_after: Mutex::new(None),
        }
    }

    /// Arms (or with `None` disarms) the connection reset of the next upload.
    pub fn arm_reset(&self, after: Option<u64>) {
        *self.reset_after.lock().unwrap_or_else(|e| e.into_inner()) = after;
    }

    /// The armed connection reset, if any (still armed).
    pub fn reset_armed(&self) -> Option<u64> {
        *self.reset_after.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the armed connection reset for an upload that starts now (it fires once).
    pub fn take_reset(&self) -> Option<u64> {
        self.reset_after
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The current state.
    pub fn get(&self) -> NetState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the state and wakes the waiters.
    pub fn set(&self, state: NetState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
        self.changed.notify_all();
    }

    /// Waits until the state differs from `seen` or `timeout` has passed; returns the state.
    pub fn wait_change(&self, seen: &NetState, timeout: Duration) -> NetState {
        let guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |s| s == seen)
            .unwrap_or_else(|e| e.into_inner());
        guard.clone()
    }
}

/// Requests from a server thread to the firmware model on the chip thread.
#[derive(Debug)]
pub enum OtaRequest {
    /// `Update.begin(size, command)`; md5 = expected MD5 hex if the library sets one.
    Begin {
        /// Size announced to the Updater.
        size: u32,
        /// Flash or filesystem.
        command: UpdateCommand,
        /// Expected MD5 (hex), for `Update.setMD5`.
        md5: Option<String>,
    },
    /// `Update.write(data)`.
    Write(Vec<u8>),
    /// `Update.end(even_if_remaining)`: on success the firmware stores the eboot command in RTC memory.
    End {
        /// Accept an update shorter than announced (the HTTP path).
        even_if_remaining: bool,
    },
    /// The library gave up (connection lost, timeout): `Update.end()` is not called, nothing staged.
    Abort,
    /// A line the OTA library prints on the serial port (already formatted, with its own line end).
    Print(String),
    /// `ESP.restart()` after `after_ms` device milliseconds.
    Restart {
        /// Device milliseconds until the restart.
        after_ms: u64,
    },
    /// `ESP.getFreeSketchSpace()`: answered with [`OtaReply::FreeSpace`] (contract note
    /// 2026-11-25).
    FreeSketchSpace,
}

/// The firmware's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtaReply {
    /// Done.
    Ok,
    /// Bytes accepted by Update.write.
    Written(usize),
    /// The Updater's error (code + text as the core prints it).
    Err(UpdaterError),
    /// The service of this generation is gone (the board restarted, lost power, left UPDATE).
    NotRunning,
    /// Answer to [`OtaRequest::FreeSketchSpace`].
    FreeSpace(u32),
}
