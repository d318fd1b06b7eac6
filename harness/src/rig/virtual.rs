//! The `virtual` backend: a simulated board (`harness sim`) reached like hardware.
//!
//! The serial side is the simulator's pty, opened by the same [`crate::capture::Capture`] as a
//! USB adapter; power, button and reset are lines on its control socket (`power on`,
//! `button down`, `reset`, `status`, one answer line each: `ok ...` or `error: ...`). Nothing
//! here imports the simulator's code: it is a separate process.
//!
//! A board either starts its own simulator (`<exe> sim --board KIND ...`, where `exe` is
//! [`super::OpenOptions::sim_exe`], `HARNESS_SIM_EXE` or the running executable) and reads the
//! endpoint lines it prints (`pty: ...`, `port: ...`, `control: ...`, `flash: ...`, an empty
//! line), or attaches to one already running, given its `control` socket and `pty` (best its
//! stable `port:` name, which survives `port unplug`/`port plug`).
//!
//! A started simulator dies with the harness, however the harness ends: it is stopped with
//! SIGTERM when the rig drops, and it is started with `PR_SET_PDEATHSIG` = SIGTERM so that the
//! kernel sends that signal when the harness dies without cleaning up (SIGKILL, or the safety
//! guard's `exit` after SIGINT). The kernel ties that signal to the *thread* that forked, so a
//! rig should be opened on a thread that lives as long as the rig (the main thread in the CLI;
//! the test's thread in tests).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::file::{SimBoot, VirtualConfig};
use super::{BoardConfig, Capabilities, Lines, OpenOptions, OtaTarget, RigError};

/// How long a started simulator may take to print its endpoints.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a control command may take to be answered.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopped simulator may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// A simulator the board uses: started by this process, or attached.
#[derive(Debug)]
pub(crate) struct Sim {
    child: Option<Child>,
    endpoints: Vec<(String, String)>,
    pty: PathBuf,
    control: PathBuf,
}

impl Sim {
    /// Starts a simulator for `config`, or attaches to the one its `sim` table names.
    pub(crate) fn start_or_attach(
        config: &BoardConfig,
        v: &VirtualConfig,
        options: &OpenOptions,
    ) -> Result<Sim, RigError> {
        if let Some(attach) = &v.attach {
            let mut endpoints = vec![
                ("pty".into(), attach.pty.display().to_string()),
                ("control".into(), attach.control.display().to_string()),
            ];
            for (name, addr) in [("http", attach.http), ("ota", attach.ota)] {
                if let Some(a) = addr {
                    endpoints.push((name.into(), a.to_string()));
                }
            }
            if let Some(scale) = attach.time_scale {
                endpoints.push(("time-scale".into(), scale.factor().to_string()));
            }
            return Ok(Sim {
                child: None,
                endpoints,
                pty: attach.pty.clone(),
                control: attach.control.clone(),
            });
        }
        let exe = match options
            .sim_exe
            .clone()
            .or_else(|| std::env::var_os("HARNESS_SIM_EXE").map(PathBuf::from))
        {
            Some(exe) => exe,
            None => own_executable().map_err(|source| RigError::SimSpawn {
                exe: PathBuf::from("<current executable>"),
                source,
            })?,
        };
        let mut cmd = Command::new(&exe);
        cmd.arg("sim").arg("--board").arg(&config.profile.id);
        if let Some(flash) = &v.flash {
            cmd.arg("--flash").arg(flash);
        }
        if let Some(log) = &v.tx_log {
            cmd.arg("--tx-log").arg(log);
        }
        if v.realistic_timing {
            cmd.arg("--realistic-timing");
        }
        // The rig decides when the board boots: the first power-on comes from a step, so a
        // capture never starts with a boot nobody asked for.
        cmd.arg("--power").arg("off");
        cmd.arg("--boot").arg(match v.boot {
            SimBoot::Flash => "flash",
            SimBoot::Download => "download",
        });
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let parent = nix::unistd::getpid();
        // SAFETY: the closure runs between fork and exec; it only makes two system calls
        // (prctl, getppid) and builds errors from raw codes, without allocating or locking.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
                    .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
                // The parent may have died before the prctl took effect.
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| RigError::SimSpawn {
            exe: exe.clone(),
            source,
        })?;
        let endpoints = match read_endpoints(&mut child) {
            Ok(e) => e,
            Err(e) => {
                stop(&mut child);
                return Err(e);
            }
        };
        let find = |name: &'static str| {
            endpoints
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| PathBuf::from(v))
                .ok_or_else(|| RigError::SimEndpoints {
                    missing: name,
                    printed: endpoints.iter().map(|(k, v)| format!("{k}: {v}")).collect(),
                })
        };
        // The stable name (`port:`, a symlink to the pty) survives `port unplug`/`port plug`,
        // as /dev/serial/by-id/... survives re-plugging a USB adapter; older simulators print
        // only `pty:`.
        let (pty, control) = match (find("port").or_else(|_| find("pty")), find("control")) {
            (Ok(p), Ok(c)) => (p, c),
            (Err(e), _) | (_, Err(e)) => {
                stop(&mut child);
                return Err(e);
            }
        };
        // Fault knobs of the rig file, armed before anything runs.
        if !v.faults.is_empty() {
            let armed = SimClient::connect(&control).and_then(|mut client| {
                v.faults
                    .iter()
                    .try_for_each(|f| client.command(&format!("fault {f}")).map(drop))
            });
            if let Err(e) = armed {
                stop(&mut child);
                return Err(e);
            }
        }
        Ok(Sim {
            child: Some(child),
            endpoints,
            pty,
            control,
        })
    }

    /// The simulator's serial port.
    pub(crate) fn pty(&self) -> &Path {
        &self.pty
    }

    /// What to show people.
    pub(crate) fn describe(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("control", self.control.display().to_string())];
        out.push((
            "sim",
            match &self.child {
                Some(c) => format!("started, pid {}", c.id()),
                None => "attached".into(),
            },
        ));
        if let Some((_, flash)) = self.endpoints.iter().find(|(k, _)| k == "flash") {
            out.push(("flash", flash.clone()));
        }
        out
    }

    /// The simulator's device-clock scale (`time-scale: 0.05` = real seconds per device
    /// second), if it printed one.
    pub(crate) fn time_scale(&self) -> Option<super::TimeScale> {
        self.endpoints
            .iter()
            .find(|(k, _)| k == "time-scale")
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .and_then(super::TimeScale::new)
    }

    /// OTA endpoints the simulator printed (`ota: 127.0.0.x:PORT` for ArduinoOTA, `http: ...`), if any.
    pub(crate) fn ota(&self) -> Option<OtaTarget> {
        let addr = |name: &str| {
            self.endpoints
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.parse::<std::net::SocketAddr>().ok())
        };
        let espota = addr("ota");
        let http = addr("http");
        let host = espota.or(http)?.ip().to_string();
        Some(OtaTarget {
            host,
            espota_port: espota.map(|a| a.port()),
            http_port: http.map(|a| a.port()),
        })
    }

    /// The control lines (checked with a `status` round trip).
    pub(crate) fn lines(&self) -> Result<SimLines, RigError> {
        let mut client = SimClient::connect(&self.control)?;
        client.status()?;
        Ok(SimLines {
            client,
            reset: false,
        })
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            stop(child);
        }
    }
}

/// SIGTERM, then SIGKILL if it does not exit in time.
fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads `name: value` lines up to the first empty line; a thread keeps draining stdout after
/// that so the simulator never blocks on a full pipe.
fn read_endpoints(child: &mut Child) -> Result<Vec<(String, String)>, RigError> {
    let stdout = child.stdout.take().ok_or(RigError::SimEndpoints {
        missing: "pty",
        printed: Vec::new(),
    })?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("sim-stdout".into())
        .spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let mut header = true;
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if header => {
                        let l = line.trim_end().to_string();
                        header = !l.is_empty();
                        if tx.send(l).is_err() {
                            header = false;
                        }
                    }
                    Ok(_) => {}
                }
            }
        })
        .map_err(|source| RigError::SimSpawn {
            exe: PathBuf::from("<stdout reader thread>"),
            source,
        })?;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut endpoints = Vec::new();
    let mut printed = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.is_empty() => return Ok(endpoints),
            Ok(line) => {
                if let Some((k, v)) = line.split_once(':') {
                    endpoints.push((k.trim().to_string(), v.trim().to_string()));
                }
                printed.push(line);
            }
            Err(_) => {
                // Ended (the simulator exited) or timed out before the empty line.
                let missing = if endpoints.iter().any(|(k, _)| k == "pty") {
                    "control"
                } else {
                    "pty"
                };
                return Err(RigError::SimEndpoints { missing, printed });
            }
        }
    }
}

/// A client of a simulator's control socket: one command line, one answer line.
#[derive(Debug)]
pub struct SimClient {
    socket: PathBuf,
    conn: Option<(BufReader<UnixStream>, UnixStream)>,
}

impl SimClient {
    /// Connects to the control socket at `socket`.
    pub fn connect(socket: &Path) -> Result<SimClient, RigError> {
        let mut c = SimClient {
            socket: socket.to_path_buf(),
            conn: None,
        };
        c.reconnect("connect")?;
        Ok(c)
    }

    fn reconnect(&mut self, command: &str) -> Result<(), RigError> {
        let err = |source| RigError::SimControl {
            socket: self.socket.clone(),
            command: command.to_string(),
            source,
        };
        let stream = UnixStream::connect(&self.socket).map_err(err)?;
        stream
            .set_read_timeout(Some(CONTROL_TIMEOUT))
            .map_err(err)?;
        let reader = BufReader::new(stream.try_clone().map_err(err)?);
        self.conn = Some((reader, stream));
        Ok(())
    }

    /// Sends one command and returns the text after `ok` (empty for a bare `ok`).
    pub fn command(&mut self, command: &str) -> Result<String, RigError> {
        let answer = match self.round_trip(command) {
            Ok(a) => a,
            // The connection may have been closed since the last command: try once more.
            Err(_) => {
                self.reconnect(command)?;
                self.round_trip(command)
                    .map_err(|source| RigError::SimControl {
                        socket: self.socket.clone(),
                        command: command.to_string(),
                        source,
                    })?
            }
        };
        let answer = answer.trim();
        if answer == "ok" {
            return Ok(String::new());
        }
        if let Some(rest) = answer.strip_prefix("ok ") {
            return Ok(rest.to_string());
        }
        Err(RigError::SimRefused {
            command: command.to_string(),
            reply: answer
                .strip_prefix("error:")
                .unwrap_or(answer)
                .trim()
                .to_string(),
        })
    }

    fn round_trip(&mut self, command: &str) -> std::io::Result<String> {
        let (reader, writer) = self
            .conn
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))?;
        writer.write_all(format!("{command}\n").as_bytes())?;
        writer.flush()?;
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            self.conn = None;
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line)
    }

    /// The simulator's `status` as `key=value` pairs (`power`, `button`, `boot_mode`, ...).
    pub fn status(&mut self) -> Result<BTreeMap<String, String>, RigError> {
        let text = self.command("status")?;
        Ok(text
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }
}

/// The simulator's control socket as [`Lines`].
#[derive(Debug)]
pub(crate) struct SimLines {
    client: SimClient,
    reset: bool,
}

impl Lines for SimLines {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            power: true,
            gpio0: true,
            reset: true,
            ota: false,
        }
    }

    fn set_power(&mut self, on: bool) -> Result<(), RigError> {
        self.client
            .command(if on { "power on" } else { "power off" })
            .map(drop)
    }

    fn set_gpio0(&mut self, pressed: bool) -> Result<(), RigError> {
        self.client
            .command(if pressed { "button down" } else { "button up" })
            .map(drop)
    }

    /// The simulator models RST as a pulse: asserting is remembered, releasing sends `reset`
    /// (the chip restarts and samples the straps then, as on the rising edge of EN).
    fn set_reset(&mut self, asserted: bool) -> Result<(), RigError> {
        let was = std::mem::replace(&mut self.reset, asserted);
        if was && !asserted {
            self.client.command("reset")?;
        }
        Ok(())
    }
}

/// The running harness binary, to start the simulator from.
///
/// A rebuild or upgrade while a long run goes on (a nightly job next to a `cargo build`)
/// replaces the file: its old path then names the new binary or nothing (Linux shows it as
/// `… (deleted)`), while `/proc/self/exe` still reaches the binary this process runs.
fn own_executable() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let proc_exe = Path::new("/proc/self/exe");
    if !exe.exists() && proc_exe.exists() {
        return Ok(proc_exe.to_path_buf());
    }
    Ok(exe)
}
