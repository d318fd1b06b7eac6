//! The HTTP /update client against a device peer on 127.0.0.1 (tests/ota_peers): a real TCP
//! server parsing the body with `multipart::Parser` and writing through `UpdateSession`.

mod ota_peers;

use std::net::SocketAddr;
use std::time::Duration;

use harness::firmware;
use harness::ota::http::{self, HttpConfig, HttpTimeouts};
use harness::ota::{Cancel, Delivered, Event, OtaError, Password, Payload, Phase};
use ota_peers::{Device, closed_port, fake_image, fixture, http_device};

fn quick(device: SocketAddr) -> HttpConfig {
    HttpConfig {
        timeouts: HttpTimeouts::all(Duration::from_secs(5)),
        ..HttpConfig::new(device)
    }
}

fn webserver_device() -> Device {
    Device {
        installed: fixture("sonoff-ota-1.0.0-webserver.bin"),
        ..Device::default()
    }
}

fn run(cfg: &HttpConfig, image: &[u8]) -> (Result<Delivered, OtaError>, Vec<Event>) {
    let mut events = Vec::new();
    let res = http::upload(
        cfg,
        Payload {
            bytes: image,
            name: "sonoff-ota.ino.bin",
        },
        &mut |e| events.push(e.clone()),
        &Cancel::new(),
    );
    (res, events)
}

#[test]
fn success_stages_the_image_and_commands_eboot() {
    let image = fixture("sonoff-ota-2.0.0-webserver.bin");
    let peer = http_device(webserver_device());
    let (res, events) = run(&quick(peer.addr), &image);
    let delivered = res.expect("upload succeeds");
    assert_eq!(delivered.reply, firmware::behaviour().http.success_body);
    assert_eq!(delivered.bytes, image.len() as u64);
    let out = peer.join();
    out.assert_staged(&image);
    assert_eq!(out.status, Some(200));
    let (method, path, content_length) = out.request.clone().unwrap();
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/update"));
    assert_eq!(
        content_length,
        Some(out.received as u64),
        "Content-Length is exact"
    );

    assert!(matches!(events[0], Event::Connected { .. }));
    let last_progress = events.iter().rev().find_map(|e| match e {
        Event::Progress { sent, total } => Some((*sent, *total)),
        _ => None,
    });
    assert_eq!(
        last_progress,
        Some((image.len() as u64, image.len() as u64))
    );
    assert_eq!(events.last(), Some(&Event::WaitingForResult));
}

#[test]
fn password_right_wrong_and_missing() {
    let image = fixture("sonoff-ota-2.0.0-webserver.bin");
    let locked = || Device {
        password: Some("s3cret".into()),
        ..webserver_device()
    };

    let peer = http_device(locked());
    let cfg = HttpConfig {
        password: Some(Password::new("s3cret")),
        ..quick(peer.addr)
    };
    run(&cfg, &image)
        .0
        .expect("Basic auth with the right password");
    peer.join().assert_staged(&image);

    let peer = http_device(locked());
    let cfg = HttpConfig {
        password: Some(Password::new("guess")),
        ..quick(peer.addr)
    };
    let err = run(&cfg, &image).0.unwrap_err();
    assert!(matches!(err, OtaError::AuthFailed { .. }), "{err:?}");
    assert!(err.is_device_failure());
    let out = peer.join();
    assert_eq!((out.status, out.staging), (Some(401), None));

    let peer = http_device(locked());
    let err = run(&quick(peer.addr), &image).0.unwrap_err();
    assert!(matches!(err, OtaError::PasswordRequired { .. }), "{err:?}");
    assert!(!err.is_device_failure());
    assert_eq!(peer.join().status, Some(401));
}

#[test]
fn connection_refused_outside_update_state() {
    let err = run(&quick(closed_port()), &fake_image(8192)).0.unwrap_err();
    assert!(matches!(err, OtaError::ConnectionRefused { .. }), "{err:?}");
    assert!(err.is_device_failure());
    let help = miette::Diagnostic::help(&err).unwrap().to_string();
    assert!(help.contains("hold the button (GPIO0) for 3 s"), "{help}");
}

#[test]
fn wrong_path_is_404() {
    let peer = http_device(webserver_device());
    let cfg = HttpConfig {
        path: "/upload".into(),
        ..quick(peer.addr)
    };
    let err = run(&cfg, &fake_image(8192)).0.unwrap_err();
    match &err {
        OtaError::NotFound { path, .. } => assert_eq!(path, "/upload"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(peer.join().status, Some(404));
}

fn updater_error(res: Result<Delivered, OtaError>) -> (Phase, u8, String) {
    match res {
        Err(OtaError::Updater { phase, error, .. }) => (phase, error.code, error.text),
        other => panic!("expected an Updater error, got {other:?}"),
    }
}

#[test]
fn not_enough_space_comes_back_in_the_body() {
    // The update server offers all free space; 0xE4000 bytes overflow it mid-upload.
    let peer = http_device(webserver_device());
    let (res, _) = run(&quick(peer.addr), &fake_image(0xE4000));
    assert_eq!(
        updater_error(res),
        (Phase::Response, 4, "Not Enough Space".to_string())
    );
    assert_eq!(peer.join().eboot, None);
}

#[test]
fn bad_magic_is_error_10() {
    let mut image = fake_image(8192);
    image[0] = 0x00;
    let peer = http_device(webserver_device());
    let (res, _) = run(&quick(peer.addr), &image);
    assert_eq!(
        updater_error(res),
        (Phase::Response, 10, "Magic byte is not 0xE9".to_string())
    );
}

#[test]
fn boot_mode_1_is_error_11() {
    let peer = http_device(Device {
        boot_mode: 1,
        ..webserver_device()
    });
    let (res, _) = run(
        &quick(peer.addr),
        &fixture("sonoff-ota-2.0.0-webserver.bin"),
    );
    let (phase, code, text) = updater_error(res);
    assert_eq!((phase, code), (Phase::Response, 11));
    assert_eq!(
        text,
        "Invalid bootstrapping state, reset ESP8266 before updating"
    );
}

#[test]
fn connection_reset_mid_upload_is_upload_cut() {
    let image = fake_image(0xD0000);
    let peer = http_device(Device {
        cut_after: Some(16 * 1024),
        ..webserver_device()
    });
    let (res, _) = run(&quick(peer.addr), &image);
    match res.unwrap_err() {
        OtaError::UploadCut {
            sent,
            total,
            source,
            ..
        } => {
            // `sent` counts bytes handed to the socket; on loopback they may all fit in the
            // buffers before the reset arrives.
            assert_eq!(total, image.len() as u64);
            assert!(sent <= total, "{sent}");
            let kind = source.expect("a socket error").kind();
            assert!(
                matches!(
                    kind,
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "{kind:?}"
            );
        }
        other => panic!("expected UploadCut, got {other:?}"),
    }
    let out = peer.join();
    assert!(
        out.received < image.len(),
        "the device got {} bytes",
        out.received
    );
    assert_eq!(out.eboot, None);
}
