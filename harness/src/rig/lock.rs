//! Board locks: one harness process per board.
//!
//! An advisory `flock` on a file per board name and per serial port, in `$HARNESS_LOCK_DIR`,
//! else `$XDG_RUNTIME_DIR/harness`, else `/tmp/harness-<uid>`. The kernel drops a flock when the
//! holder's file descriptor closes, so the lock ends with the holding process however it ends
//! (even SIGKILL); the file itself stays (removing it would let two processes lock two
//! different inodes of one name). The holder writes its pid into the file so that the error a
//! second process gets can name it.
//!
//! A board started as a private simulator by one process is not locked: nobody else can reach
//! it, and parallel runs each get their own.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::{BoardConfig, RigError};

/// A held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct BoardLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl BoardLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Where lock files live.
pub fn lock_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HARNESS_LOCK_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Path::new(&dir).join("harness");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/harness-{uid}"))
}

/// File-name-safe form of a name or path.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Locks a board by its name and by its serial port.
pub(crate) fn lock_board(config: &BoardConfig) -> Result<Vec<BoardLock>, RigError> {
    let mut locks = vec![acquire(
        &format!("board-{}", sanitize(&config.name)),
        &config.name,
    )?];
    if let Some(port) = config.port() {
        locks.push(lock_port(port)?);
    }
    Ok(locks)
}

/// Locks a serial port (by its resolved path, so symlinks to one device share the lock).
pub fn lock_port(port: &Path) -> Result<BoardLock, RigError> {
    let real = std::fs::canonicalize(port).unwrap_or_else(|_| port.to_path_buf());
    let shown = real.display().to_string();
    acquire(&format!("port-{}", sanitize(&shown)), &shown)
}

/// Takes the lock called `key`; `label` names the board or port in the error.
pub fn acquire(key: &str, label: &str) -> Result<BoardLock, RigError> {
    let dir = lock_dir();
    let path = dir.join(format!("{key}.lock"));
    let io_err = |source| RigError::Lock {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io_err)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(RigError::Busy {
                board: label.to_string(),
                pid: holder_pid(&text),
                lock: path,
            });
        }
        Err((_, errno)) => return Err(io_err(errno.into())),
    };
    let me = format!("pid={}\nboard={label}\n", std::process::id());
    lock.set_len(0).map_err(io_err)?;
    lock.rewind().map_err(io_err)?;
    lock.write_all(me.as_bytes()).map_err(io_err)?;
    Ok(BoardLock { _file: lock, path })
}

fn holder_pid(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("pid="))
        .and_then(|p| p.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_file_safe() {
        assert_eq!(sanitize("/dev/ttyUSB0"), "_dev_ttyUSB0");
        assert_eq!(sanitize("my board #1"), "my_board__1");
        assert_eq!(holder_pid("pid=4242\nboard=x\n"), Some(4242));
        assert_eq!(holder_pid(""), None);
    }

    #[test]
    fn a_second_lock_in_the_same_process_is_refused_until_the_first_drops() {
        // flock locks belong to the open file description, so two opens conflict even in one
        // process; the two-process case is tested in tests/monitor.rs.
        let key = format!("unit-test-{}", std::process::id());
        let first = acquire(&key, "unit").unwrap();
        match acquire(&key, "unit") {
            Err(RigError::Busy { pid, board, lock }) => {
                assert_eq!(pid, Some(std::process::id()));
                assert_eq!(board, "unit");
                assert_eq!(lock, first.path());
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        let path = first.path().to_path_buf();
        drop(first);
        let again = acquire(&key, "unit").unwrap();
        drop(again);
        let _ = std::fs::remove_file(path);
    }
}
