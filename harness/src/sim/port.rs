//! The handle the OTA servers use to reach the firmware model on the chip thread.
//!
//! A [`FirmwarePort`] carries the chip thread's event sender, the shared [`NetShared`] state,
//! the device [`Clock`] and the [`ServicePorts`] the servers listen on. Requests are answered on
//! the chip thread in order with the serial output and control commands, so an OTA write and a
//! `power off` can never overlap.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Sender};

use super::Event;
use super::clock::Clock;
use super::net::{NetShared, OtaReply, OtaRequest};

/// The real ports of the board's OTA servers (the behaviour file's 8266 and 80 are remapped to
/// free ports on the board's own address). 0 = that server is not running.
#[derive(Debug, Default)]
pub struct ServicePorts {
    http: AtomicU32,
    ota: AtomicU32,
}

impl ServicePorts {
    /// Records the HTTP update server's port.
    pub fn set_http(&self, port: u16) {
        self.http.store(u32::from(port), Ordering::Relaxed);
    }

    /// Records the ArduinoOTA (espota) UDP port.
    pub fn set_ota(&self, port: u16) {
        self.ota.store(u32::from(port), Ordering::Relaxed);
    }

    /// The HTTP port, if a server registered one.
    pub fn http(&self) -> Option<u16> {
        u16::try_from(self.http.load(Ordering::Relaxed))
            .ok()
            .filter(|&p| p != 0)
    }

    /// The espota port, if a server registered one.
    pub fn ota(&self) -> Option<u16> {
        u16::try_from(self.ota.load(Ordering::Relaxed))
            .ok()
            .filter(|&p| p != 0)
    }
}

/// What a server thread holds to talk to the firmware.
#[derive(Debug, Clone)]
#[allow(dead_code, reason = "the OTA servers' side of the contract")]
pub(crate) struct FirmwarePort {
    events: Sender<Event>,
    net: Arc<NetShared>,
    clock: Clock,
    ports: Arc<ServicePorts>,
}

#[allow(dead_code, reason = "the OTA servers' side of the contract")]
impl FirmwarePort {
    pub(crate) fn new(
        events: Sender<Event>,
        net: Arc<NetShared>,
        clock: Clock,
        ports: Arc<ServicePorts>,
    ) -> Self {
        FirmwarePort {
            events,
            net,
            clock,
            ports,
        }
    }

    /// Sends `req` for the service of `generation` and waits for the firmware's answer.
    /// A stopped simulator answers [`OtaReply::NotRunning`].
    pub(crate) fn request(&self, generation: u64, req: OtaRequest) -> OtaReply {
        let (reply, answer) = mpsc::channel();
        let sent = self.events.send(Event::Ota {
            generation,
            request: req,
            reply,
        });
        if sent.is_err() {
            return OtaReply::NotRunning;
        }
        answer.recv().unwrap_or(OtaReply::NotRunning)
    }

    /// The network state the firmware publishes.
    pub(crate) fn net(&self) -> &NetShared {
        &self.net
    }

    /// The device clock (convert every library delay with [`Clock::real`]).
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Where the servers register their real ports (for the firmware's endpoint line).
    pub(crate) fn ports(&self) -> &ServicePorts {
        &self.ports
    }
}
