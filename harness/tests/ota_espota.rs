//! The espota client against a device peer on 127.0.0.1 (tests/ota_peers): real UDP and TCP
//! sockets, the device side built from `OtaListener` and `UpdateSession`.

mod ota_peers;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use harness::ota::espota::{self, EspotaConfig, EspotaTimeouts};
use harness::ota::proto::{Invitation, md5_hex};
use harness::ota::updater::UpdateCommand;
use harness::ota::{Cancel, Delivered, Event, OtaError, Password, Payload, Phase};
use ota_peers::{Device, espota_device, fake_image, fixture};

/// Short waits so that failures come fast; the peers answer in microseconds.
fn quick(device: SocketAddr) -> EspotaConfig {
    EspotaConfig {
        timeouts: EspotaTimeouts {
            invite: Duration::from_millis(600),
            invite_attempts: 3,
            ..EspotaTimeouts::all(Duration::from_secs(5))
        },
        ..EspotaConfig::new(device)
    }
}

fn run(cfg: &EspotaConfig, image: &[u8]) -> (Result<Delivered, OtaError>, Vec<Event>) {
    let mut events = Vec::new();
    let res = espota::upload(
        cfg,
        Payload {
            bytes: image,
            name: "build/sonoff-ota.ino.bin",
        },
        &mut |e| events.push(e.clone()),
        &Cancel::new(),
    );
    (res, events)
}

#[test]
fn success_stages_the_image_and_commands_eboot() {
    let image = fixture("sonoff-ota-2.0.0-arduino.bin");
    let peer = espota_device(Device::default());
    let (res, events) = run(&quick(peer.addr), &image);
    let delivered = res.expect("upload succeeds");
    let out = peer.join();
    out.assert_staged(&image);
    assert_eq!(out.received, image.len());
    assert_eq!(delivered.bytes, image.len() as u64);
    assert_eq!(delivered.reply, "OK");
    assert!(delivered.refused.is_empty());

    assert!(matches!(events[0], Event::Invited { attempt: 1, .. }));
    assert!(events.contains(&Event::Accepted));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Connected { peer } if peer.ip() == peer_ip()))
    );
    let progress: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Progress { sent, total } => {
                assert_eq!(*total, image.len() as u64);
                Some(*sent)
            }
            _ => None,
        })
        .collect();
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    assert_eq!(progress.last(), Some(&(image.len() as u64)));
    // 1460-byte chunks, one progress step each (plus the 0 at the start).
    assert_eq!(progress.len(), image.len().div_ceil(1460) + 1);
}

fn peer_ip() -> std::net::IpAddr {
    Ipv4Addr::LOCALHOST.into()
}

#[test]
fn password_right_wrong_and_missing() {
    let image = fixture("sonoff-ota-2.0.0-arduino.bin");
    let locked = || Device {
        password: Some("s3cret".into()),
        ..Device::default()
    };

    let peer = espota_device(locked());
    let cfg = EspotaConfig {
        password: Some(Password::new("s3cret")),
        ..quick(peer.addr)
    };
    let (res, events) = run(&cfg, &image);
    res.expect("the right password is accepted");
    assert!(events.contains(&Event::Challenged));
    peer.join().assert_staged(&image);

    let peer = espota_device(locked());
    let cfg = EspotaConfig {
        password: Some(Password::new("guess")),
        ..quick(peer.addr)
    };
    let (res, _) = run(&cfg, &image);
    let err = res.unwrap_err();
    assert!(matches!(err, OtaError::AuthFailed { .. }), "{err:?}");
    assert!(err.is_device_failure());
    let out = peer.join();
    assert_eq!(out.auth_failures, 1);
    assert_eq!(out.staging, None, "nothing was written");

    let peer = espota_device(locked());
    let (res, _) = run(&quick(peer.addr), &image);
    let err = res.unwrap_err();
    assert!(matches!(err, OtaError::PasswordRequired { .. }), "{err:?}");
    assert!(!err.is_device_failure());
}

#[test]
fn silent_device_is_no_answer_after_the_retries() {
    // A bound socket that never answers: the firmware in RUN state, or a lost device.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let image = fake_image(10_000);
    let cfg = quick(silent.local_addr().unwrap());
    let start = Instant::now();
    let (res, events) = run(&cfg, &image);
    let elapsed = start.elapsed();
    match res.unwrap_err() {
        OtaError::NoAnswer {
            attempts,
            port_unreachable,
            waited,
            ..
        } => {
            assert_eq!(attempts, 3);
            assert!(!port_unreachable);
            assert!(waited >= Duration::from_millis(600), "{waited:?}");
        }
        other => panic!("expected NoAnswer, got {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    let invited = events
        .iter()
        .filter(|e| matches!(e, Event::Invited { .. }))
        .count();
    assert_eq!(invited, 3);

    // The three datagrams are espota invitations, exactly as espota.py formats them.
    silent.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 128];
    for _ in 0..3 {
        let n = silent.recv(&mut buf).expect("an invitation arrived");
        let inv = Invitation::parse(&buf[..n]).expect("strict invitation format");
        assert_eq!(inv.command, UpdateCommand::Flash);
        assert_eq!(inv.size, 10_000);
        assert_eq!(inv.md5, md5_hex(&image));
        assert_ne!(inv.port, 0);
    }
}

#[test]
fn closed_port_is_no_answer_with_port_unreachable() {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (res, _) = run(&quick(port), &fake_image(4096));
    match res.unwrap_err() {
        OtaError::NoAnswer {
            port_unreachable, ..
        } => assert!(port_unreachable),
        other => panic!("expected NoAnswer, got {other:?}"),
    }
}

#[test]
fn a_back_connect_from_another_address_is_refused_then_the_device_is_served() {
    let image = fixture("sonoff-ota-2.0.0-arduino.bin");
    let stranger = Ipv4Addr::new(127, 0, 0, 2);
    let peer = espota_device(Device {
        stranger: Some(stranger),
        ..Device::default()
    });
    let (res, events) = run(&quick(peer.addr), &image);
    let delivered = res.expect("the device itself is served");
    assert_eq!(delivered.refused.len(), 1);
    assert_eq!(delivered.refused[0].ip(), std::net::IpAddr::from(stranger));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::StrangerRefused { peer } if peer.ip() == stranger))
    );
    let out = peer.join();
    assert_eq!(
        out.stranger_closed,
        Some(true),
        "the stranger was hung up on"
    );
    out.assert_staged(&image);
}

#[test]
fn only_a_stranger_connecting_is_no_back_connect() {
    let stranger = Ipv4Addr::new(127, 0, 0, 3);
    let peer = espota_device(Device {
        stranger: Some(stranger),
        connect_back: false,
        ..Device::default()
    });
    let cfg = EspotaConfig {
        timeouts: EspotaTimeouts {
            connect_back: Duration::from_millis(800),
            ..quick(peer.addr).timeouts
        },
        ..quick(peer.addr)
    };
    let (res, _) = run(&cfg, &fake_image(8192));
    match res.unwrap_err() {
        OtaError::NoBackConnect { refused, .. } => {
            assert_eq!(refused.len(), 1);
            assert_eq!(refused[0].ip(), std::net::IpAddr::from(stranger));
        }
        other => panic!("expected NoBackConnect, got {other:?}"),
    }
    assert_eq!(peer.join().stranger_closed, Some(true));
}

fn updater_error(res: Result<Delivered, OtaError>) -> (Phase, u8, String) {
    match res {
        Err(OtaError::Updater { phase, error, .. }) => (phase, error.code, error.text),
        other => panic!("expected an Updater error, got {other:?}"),
    }
}

#[test]
fn not_enough_space_is_refused_at_the_invitation() {
    // 1m64 layout: the 32 KiB installed sketch and the new image must fit below 0xEB000.
    let image = fake_image(0xE4000);
    let peer = espota_device(Device::default());
    let (res, events) = run(&quick(peer.addr), &image);
    let (phase, code, text) = updater_error(res);
    assert_eq!(
        (phase, code, text.as_str()),
        (Phase::Invitation, 4, "Not Enough Space")
    );
    assert!(!events.contains(&Event::Accepted));
    assert_eq!(peer.join().received, 0);
}

#[test]
fn bad_magic_is_reported_at_the_end() {
    let mut image = fake_image(8192);
    image[0] = 0x00;
    let peer = espota_device(Device::default());
    let (res, _) = run(&quick(peer.addr), &image);
    let (phase, code, text) = updater_error(res);
    assert_eq!(
        (phase, code, text.as_str()),
        (Phase::Transfer, 10, "Magic byte is not 0xE9")
    );
    assert_eq!(peer.join().received, image.len(), "all bytes went over");
}

#[test]
fn boot_mode_1_is_error_11() {
    let peer = espota_device(Device {
        boot_mode: 1,
        ..Device::default()
    });
    let (res, _) = run(&quick(peer.addr), &fixture("sonoff-ota-2.0.0-arduino.bin"));
    let err = res.unwrap_err();
    assert_eq!(err.updater_code(), Some(11));
    assert!(err.is_device_failure());
    let help = miette::Diagnostic::help(&err).unwrap().to_string();
    assert!(help.contains("power-cycle after a serial flash"), "{help}");
}

#[test]
fn connection_cut_mid_upload() {
    let image = fixture("sonoff-ota-2.0.0-arduino.bin");
    let peer = espota_device(Device {
        cut_after: Some(3 * 1460),
        ..Device::default()
    });
    let (res, _) = run(&quick(peer.addr), &image);
    match res.unwrap_err() {
        OtaError::UploadCut { sent, total, .. } => {
            assert_eq!(total, image.len() as u64);
            assert!(sent >= 3 * 1460 && sent < total, "{sent}");
        }
        other => panic!("expected UploadCut, got {other:?}"),
    }
    assert_eq!(peer.join().eboot, None);
}

#[test]
fn cancel_stops_the_transfer() {
    let image = fixture("sonoff-ota-2.0.0-arduino.bin");
    let peer = espota_device(Device::default());
    let cancel = Cancel::new();
    let res = espota::upload(
        &quick(peer.addr),
        Payload {
            bytes: &image,
            name: "fw.bin",
        },
        &mut |e| {
            if matches!(e, Event::Progress { sent, .. } if *sent >= 4 * 1460) {
                cancel.cancel();
            }
        },
        &cancel,
    );
    match res.unwrap_err() {
        OtaError::Cancelled { sent, total } => assert!(sent >= 4 * 1460 && sent < total),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert_eq!(peer.join().eboot, None);
}
