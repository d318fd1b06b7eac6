//! The capture index: one JSON object per line beside the raw capture file.
//!
//! Every record has the byte `offset` in the capture file at which it applies (the number of
//! bytes captured before it), the time `t` in seconds since the capture started, and an `event`
//! with its fields:
//!
//! ```text
//! {"offset":0,"t":0.0,"event":"start","port":"/dev/ttyUSB0","baud":74880}
//! {"offset":0,"t":0.002,"event":"power","on":true}
//! {"offset":0,"t":0.031,"event":"rx"}
//! {"offset":187,"t":0.046,"event":"baud","baud":115200,"reason":"eboot-load"}
//! {"offset":412,"t":3.1,"event":"port-lost","error":"Broken pipe"}
//! {"offset":412,"t":4.6,"event":"port-reopened","baud":115200}
//! {"offset":950,"t":9.0,"event":"note","text":"step 3: ota upload"}
//! ```
//!
//! `rx` marks where data resumed after a quiet spell, so bursts can be timed without a record
//! per read.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::follower::SwitchReason;

/// One index line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexRecord {
    /// Bytes captured before this record.
    pub offset: u64,
    /// Seconds since the capture started.
    pub t: f64,
    /// What happened.
    #[serde(flatten)]
    pub event: IndexEvent,
}

/// What an index record says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum IndexEvent {
    /// The capture started on `port` at `baud`.
    Start {
        /// The serial port.
        port: String,
        /// Its rate.
        baud: u32,
    },
    /// Data arrived after a quiet spell.
    Rx,
    /// The port's rate changed.
    Baud {
        /// The new rate.
        baud: u32,
        /// Why.
        reason: SwitchReason,
    },
    /// The port vanished or failed; the capture keeps what it has and tries to reopen it.
    PortLost {
        /// What the operating system said.
        error: String,
    },
    /// The port is back.
    PortReopened {
        /// The rate it was opened at.
        baud: u32,
    },
    /// The rig switched the board's power.
    Power {
        /// On or off.
        on: bool,
    },
    /// The rig pressed or released GPIO0.
    Button {
        /// Pressed (GPIO0 low) or released.
        pressed: bool,
    },
    /// The rig asserted or released the reset line.
    Reset {
        /// Asserted (EN low).
        asserted: bool,
    },
    /// A note from the runner or the user.
    Note {
        /// The note.
        text: String,
    },
    /// Consumers fell behind and bytes were dropped from their queue (never from the file).
    ConsumerOverrun {
        /// Bytes dropped.
        dropped: u64,
    },
    /// The capture stopped.
    Stop {
        /// Total bytes captured.
        bytes: u64,
    },
}

/// The index path for a capture file: `<capture>.index.jsonl`.
pub fn index_path(capture: &Path) -> PathBuf {
    let mut name = capture.as_os_str().to_os_string();
    name.push(".index.jsonl");
    PathBuf::from(name)
}

/// Reads an index file back (tests, tools). Lines that do not parse are errors naming the line.
pub fn read_index(path: &Path) -> std::io::Result<Vec<IndexRecord>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}:{}: {e}", path.display(), i + 1),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_as_one_json_line() {
        let r = IndexRecord {
            offset: 187,
            t: 0.046,
            event: IndexEvent::Baud {
                baud: 115_200,
                reason: SwitchReason::EbootLoad,
            },
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(
            line,
            r#"{"offset":187,"t":0.046,"event":"baud","baud":115200,"reason":"eboot-load"}"#
        );
        assert_eq!(serde_json::from_str::<IndexRecord>(&line).unwrap(), r);
        assert_eq!(
            index_path(Path::new("/tmp/x.log")),
            PathBuf::from("/tmp/x.log.index.jsonl")
        );
    }
}
