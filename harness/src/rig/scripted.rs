//! An in-memory [`Link`] for unit tests of clients (flash, console): it replays scripted reads,
//! can answer writes through a responder, and records what was written and every rate change.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use super::{Link, RigError};

/// Computes the bytes a fake device answers to one write.
pub type Responder = Box<dyn FnMut(&[u8]) -> Vec<u8> + Send>;

/// A scripted byte pipe. Reads return the queued chunks in order (a chunk longer than the
/// buffer is split); with nothing queued a read returns `Ok(0)` at once, as a real link does
/// when its timeout passes.
#[derive(Default)]
pub struct ScriptedLink {
    reads: VecDeque<Vec<u8>>,
    written: Vec<u8>,
    baud: u32,
    baud_changes: Vec<u32>,
    responder: Option<Responder>,
    timeouts: Vec<Duration>,
}

impl fmt::Debug for ScriptedLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedLink")
            .field("queued", &self.reads.len())
            .field("written", &self.written.len())
            .field("baud", &self.baud)
            .finish()
    }
}

impl ScriptedLink {
    /// A link at `baud` with nothing queued.
    pub fn new(baud: u32) -> Self {
        ScriptedLink {
            baud,
            ..Default::default()
        }
    }

    /// Queues bytes for a later read.
    pub fn push_read(&mut self, bytes: impl Into<Vec<u8>>) {
        self.reads.push_back(bytes.into());
    }

    /// Answers every write with what `f` returns (queued for reading).
    pub fn respond_with(&mut self, f: impl FnMut(&[u8]) -> Vec<u8> + Send + 'static) {
        self.responder = Some(Box::new(f));
    }

    /// Everything written so far.
    pub fn written(&self) -> &[u8] {
        &self.written
    }

    /// Rates set so far, in order.
    pub fn baud_changes(&self) -> &[u32] {
        &self.baud_changes
    }

    /// The timeouts reads were called with, in order.
    pub fn read_timeouts(&self) -> &[Duration] {
        &self.timeouts
    }
}

impl Link for ScriptedLink {
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, RigError> {
        self.timeouts.push(timeout);
        let Some(mut chunk) = self.reads.pop_front() else {
            return Ok(0);
        };
        let n = buf.len().min(chunk.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        if n < chunk.len() {
            self.reads.push_front(chunk.split_off(n));
        }
        Ok(n)
    }

    fn write_all(&mut self, data: &[u8]) -> Result<(), RigError> {
        self.written.extend_from_slice(data);
        if let Some(r) = self.responder.as_mut() {
            let answer = r(data);
            if !answer.is_empty() {
                self.reads.push_back(answer);
            }
        }
        Ok(())
    }

    fn set_baud(&mut self, baud: u32) -> Result<(), RigError> {
        self.baud = baud;
        self.baud_changes.push(baud);
        Ok(())
    }

    fn baud(&self) -> u32 {
        self.baud
    }

    fn drain(&mut self) -> Result<(), RigError> {
        Ok(())
    }

    fn discard_input(&mut self) -> Result<(), RigError> {
        self.reads.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_splits_and_answers() {
        let mut link = ScriptedLink::new(115_200);
        link.push_read(b"hello".to_vec());
        let mut buf = [0u8; 3];
        assert_eq!(link.read(&mut buf, Duration::from_millis(5)).unwrap(), 3);
        assert_eq!(&buf, b"hel");
        assert_eq!(link.read(&mut buf, Duration::from_millis(5)).unwrap(), 2);
        assert_eq!(&buf[..2], b"lo");
        assert_eq!(link.read(&mut buf, Duration::from_millis(5)).unwrap(), 0);
        link.respond_with(|w| w.iter().rev().copied().collect());
        link.write_all(b"abc").unwrap();
        assert_eq!(link.read(&mut buf, Duration::ZERO).unwrap(), 3);
        assert_eq!(&buf, b"cba");
        link.set_baud(74_880).unwrap();
        assert_eq!(link.baud(), 74_880);
        assert_eq!(link.baud_changes(), [74_880]);
        assert_eq!(link.written(), b"abc");
        assert_eq!(link.read_timeouts().len(), 4);
    }
}
