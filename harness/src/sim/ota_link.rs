//! What the OTA servers ([`super::ota_http`], [`super::ota_espota`]) need from the rest of the
//! simulator, the helpers both use, and their threads' life cycle.
//!
//! The servers play the OTA *libraries* of the firmware (ESP8266WebServer with
//! ESP8266HTTPUpdateServer, ArduinoOTA): sockets, parsing, timing and the library's serial
//! lines. Everything that touches the chip (the Updater on the flash, RTC memory, restarts,
//! the UART) is the firmware model's, reached through [`FirmwareLink`] with the requests of
//! [`super::net`]. While a library is blocked in an upload, the firmware's loop is blocked on
//! the device too, so a server handles one client at a time on its own thread.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rand::Rng;

use crate::board::FlashLayout;
use crate::firmware::OtaMethod;

use super::net::{NetShared, OtaReply, OtaRequest};

/// How often blocked server threads look at the stop flag and the service state.
pub(crate) const TICK: Duration = Duration::from_millis(20);

/// The firmware side as the OTA servers reach it.
pub(crate) trait FirmwareLink: Send + Sync + 'static {
    /// Sends one request for the service of `generation` and waits for the answer.
    fn request(&self, generation: u64, request: OtaRequest) -> OtaReply;
    /// The network state the firmware publishes.
    fn net(&self) -> &NetShared;
    /// The real time that a device-time delay of a library takes (the simulator's clock).
    fn real(&self, device: Duration) -> Duration;
}

impl FirmwareLink for super::port::FirmwarePort {
    fn request(&self, generation: u64, request: OtaRequest) -> OtaReply {
        super::port::FirmwarePort::request(self, generation, request)
    }

    fn net(&self) -> &NetShared {
        super::port::FirmwarePort::net(self)
    }

    fn real(&self, device: Duration) -> Duration {
        self.clock().real(device)
    }
}

/// The service ended under a running exchange (restart, power cut, UPDATE left) or the
/// simulator stops: the server drops what it holds, silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gone;

/// One started service as a server thread talks to it.
pub(crate) struct Service<'a> {
    pub(crate) link: &'a dyn FirmwareLink,
    pub(crate) generation: u64,
    pub(crate) stop: &'a AtomicBool,
}

impl Service<'_> {
    /// Whether the simulator runs and the firmware still has this service started.
    pub(crate) fn alive(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
            && self
                .link
                .net()
                .get()
                .service
                .is_some_and(|s| s.generation == self.generation)
    }

    /// One request; `NotRunning` becomes [`Gone`].
    pub(crate) fn call(&self, request: OtaRequest) -> Result<OtaReply, Gone> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(Gone);
        }
        match self.link.request(self.generation, request) {
            OtaReply::NotRunning => Err(Gone),
            reply => Ok(reply),
        }
    }

    /// A library line on the serial port.
    pub(crate) fn print(&self, text: impl Into<String>) -> Result<(), Gone> {
        self.call(OtaRequest::Print(text.into())).map(drop)
    }

    /// `delay(ms)` of the library: sleeps the real equivalent, watching the service.
    pub(crate) fn delay(&self, device: Duration) -> Result<(), Gone> {
        let deadline = Instant::now() + self.link.real(device);
        loop {
            if !self.alive() {
                return Err(Gone);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            std::thread::sleep((deadline - now).min(TICK));
        }
    }

    /// The real deadline of a device-time timeout starting now.
    pub(crate) fn deadline(&self, device: Duration) -> Instant {
        Instant::now() + self.link.real(device)
    }

    /// Waits until `fd` is readable (data or EOF), the deadline passes, or the service goes.
    pub(crate) fn wait_readable(
        &self,
        fd: &impl AsFd,
        deadline: Option<Instant>,
    ) -> Result<Readiness, Gone> {
        loop {
            if !self.alive() {
                return Err(Gone);
            }
            let mut wait = TICK;
            if let Some(deadline) = deadline {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(Readiness::TimedOut);
                }
                wait = wait.min(deadline - now);
            }
            if readable(fd, wait) {
                return Ok(Readiness::Ready);
            }
        }
    }
}

/// Outcome of [`Service::wait_readable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Data (or end of stream) is there.
    Ready,
    /// The deadline passed first.
    TimedOut,
}

/// Whether `fd` becomes readable within `wait` (errors count as readable, so that the next
/// read reports them).
pub(crate) fn readable(fd: &impl AsFd, wait: Duration) -> bool {
    let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => false,
        Ok(_) => true,
        Err(nix::errno::Errno::EINTR) => false,
        Err(_) => true,
    }
}

/// The generation of the service of `method` if the firmware has it started.
pub(crate) fn started(link: &dyn FirmwareLink, method: OtaMethod) -> Option<(u64, Option<String>)> {
    link.net()
        .get()
        .service
        .filter(|s| s.method == method)
        .map(|s| (s.generation, s.password))
}

/// The board's network identity: its own loopback address and the two ports, fixed for the
/// life of the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoardAddress {
    /// HTTP update server (ESP8266HTTPUpdateServer; port 80 on the device).
    pub http: SocketAddrV4,
    /// ArduinoOTA UDP port (8266 on the device).
    pub espota: SocketAddrV4,
}

impl BoardAddress {
    /// The board's IP address.
    pub fn ip(&self) -> Ipv4Addr {
        *self.http.ip()
    }

    /// Picks 127.0.0.x with x random in 2..=254 and a free TCP port and a free UDP port on it.
    ///
    /// Random so that simulators running side by side (parallel tests) get distinct boards;
    /// checked by binding, since a port can only be shown free by taking it.
    pub(crate) fn pick() -> io::Result<BoardAddress> {
        let mut rng = rand::rng();
        let mut last = None;
        for _ in 0..32 {
            let ip = Ipv4Addr::new(127, 0, 0, rng.random_range(2..=254));
            match Self::probe(ip) {
                Ok(addr) => return Ok(addr),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free loopback address")))
    }

    fn probe(ip: Ipv4Addr) -> io::Result<BoardAddress> {
        let tcp = TcpListener::bind(SocketAddrV4::new(ip, 0))?;
        let udp = UdpSocket::bind(SocketAddrV4::new(ip, 0))?;
        let port = |a: io::Result<std::net::SocketAddr>| a.map(|a| a.port());
        Ok(BoardAddress {
            http: SocketAddrV4::new(ip, port(tcp.local_addr())?),
            espota: SocketAddrV4::new(ip, port(udp.local_addr())?),
        })
    }

    /// The endpoint lines `harness sim` prints: `http: 127.0.0.x:PORT`, `ota: 127.0.0.x:PORT`.
    pub fn lines(&self) -> [String; 2] {
        [
            format!("http: {}", self.http),
            format!("ota: {}", self.espota),
        ]
    }
}

/// The two server threads of one board.
#[derive(Debug)]
pub(crate) struct OtaServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl OtaServers {
    /// Starts both servers; they listen only while the firmware has their service started.
    pub(crate) fn start(
        link: Arc<dyn FirmwareLink>,
        address: BoardAddress,
        layout: FlashLayout,
    ) -> io::Result<OtaServers> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let http = super::ota_http::HttpServer::new(
            Arc::clone(&link),
            address.http,
            layout,
            Arc::clone(&stop),
        );
        threads.push(
            std::thread::Builder::new()
                .name("sim-ota-http".into())
                .spawn(move || http.run())?,
        );
        let espota = super::ota_espota::EspotaServer::new(
            Arc::clone(&link),
            address.espota,
            Arc::clone(&stop),
        );
        let spawned = std::thread::Builder::new()
            .name("sim-ota-espota".into())
            .spawn(move || espota.run());
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                let mut partial = OtaServers { stop, threads };
                partial.shutdown();
                return Err(e);
            }
        }
        Ok(OtaServers { stop, threads })
    }

    /// Stops both threads and closes their sockets.
    pub(crate) fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for OtaServers {
    fn drop(&mut self) {
        self.shutdown();
    }
}
