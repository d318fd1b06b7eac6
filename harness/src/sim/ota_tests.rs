//! The OTA servers against real peers (curl, headless Chromium, an espota uploader written
//! from the protocol), with a TEST DOUBLE in place of the firmware model.
//!
//! [`FirmwareDouble`] is a stand-in, not the simulator's firmware: it answers the servers'
//! [`OtaRequest`]s with an in-memory [`UpdateSession`] on an in-memory flash and treats
//! `Restart` as "eboot copies the staged image, the service stops". It lets these tests check
//! the servers' side exactly (requests, serial lines, answers) and fast; the end-to-end tests in
//! `tests/sim_ota.rs` run the same peers against the real firmware model.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::board::{self, FlashLayout};
use crate::firmware::OtaMethod;
use crate::ota::updater::{
    CoreModel, DeviceEnv, EbootCommand, FlashFault, FlashWriter, UpdateSession, UpdaterError,
    free_sketch_space, sketch_size,
};

use super::net::{NetShared, NetState, OtaReply, OtaRequest, OtaService};
use super::ota_link::{BoardAddress, FirmwareLink, OtaServers};

#[path = "../../tests/support/peers.rs"]
mod peers;

use peers::{Browser, Espota, curl, espota_upload, expected_acks};

/// Device seconds per real second in these tests (the simulator's fast default).
const SCALE: f64 = 0.05;

/// Flash as a byte vector.
struct MemFlash(Vec<u8>);

impl FlashWriter for MemFlash {
    fn erase_sector(&mut self, addr: u32) -> Result<(), FlashFault> {
        let a = addr as usize;
        self.0[a..a + 0x1000].fill(0xFF);
        Ok(())
    }
    fn write(&mut self, addr: u32, data: &[u8]) -> Result<(), FlashFault> {
        let a = addr as usize;
        self.0[a..a + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn read(&mut self, addr: u32, buf: &mut [u8]) -> Result<(), FlashFault> {
        let a = addr as usize;
        buf.copy_from_slice(&self.0[a..a + buf.len()]);
        Ok(())
    }
}

struct DoubleState {
    session: UpdateSession,
    flash: MemFlash,
    layout: FlashLayout,
    /// Requests as short words, in order (`begin 892928 flash`, `write 2048`, ...).
    requests: Vec<String>,
    /// Everything printed, concatenated.
    serial: String,
    eboot: Option<EbootCommand>,
    generation: u64,
}

/// TEST DOUBLE of the firmware side of the OTA contract (see the module doc).
struct FirmwareDouble {
    net: NetShared,
    state: Mutex<DoubleState>,
}

impl FirmwareDouble {
    /// A Sonoff Basic (1 MB, 64 KB FS layout) running `image` at flash 0.
    fn new(ip: std::net::Ipv4Addr, image: &[u8]) -> Arc<Self> {
        let board = board::find("sonoff-basic").unwrap();
        let mut flash = vec![0xFF; board.flash_size as usize];
        flash[..image.len()].copy_from_slice(image);
        let env = DeviceEnv {
            layout: board.layout.clone(),
            real_flash_size: board.flash_size,
            boot_mode: 3,
            core: CoreModel::V3_1,
        };
        Arc::new(FirmwareDouble {
            net: NetShared::new(ip),
            state: Mutex::new(DoubleState {
                session: UpdateSession::new(env),
                flash: MemFlash(flash),
                layout: board.layout.clone(),
                requests: Vec::new(),
                serial: String::new(),
                eboot: None,
                generation: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DoubleState> {
        self.state.lock().unwrap()
    }

    /// The firmware enters UPDATE with `method` started.
    fn enter_update(&self, method: OtaMethod, password: Option<&str>) {
        let generation = {
            let mut s = self.lock();
            s.generation += 1;
            s.generation
        };
        let ip = self.net.get().ip;
        self.net.set(NetState {
            ip,
            service: Some(OtaService {
                method,
                password: password.map(str::to_string),
                generation,
            }),
        });
    }

    fn leave_update(&self) {
        let ip = self.net.get().ip;
        self.net.set(NetState { ip, service: None });
    }

    fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    fn serial(&self) -> String {
        self.lock().serial.clone()
    }

    fn flash(&self, addr: usize, len: usize) -> Vec<u8> {
        self.lock().flash.0[addr..addr + len].to_vec()
    }

    /// Waits until a request starting with `word` was seen (the servers finish their work
    /// after the client has its answer).
    fn wait_request(&self, word: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.requests().iter().any(|r| r.starts_with(word)) {
            assert!(
                Instant::now() < deadline,
                "no `{word}` request; got {:?}",
                self.requests()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl FirmwareLink for FirmwareDouble {
    fn request(&self, generation: u64, request: OtaRequest) -> OtaReply {
        let current = self.net.get().service.map(|s| s.generation);
        if current != Some(generation) {
            return OtaReply::NotRunning;
        }
        let mut guard = self.lock();
        let s = &mut *guard;
        match request {
            OtaRequest::Begin { size, command, md5 } => {
                s.requests.push(format!("begin {size} {}", command.code()));
                match s.session.begin(&mut s.flash, size, command) {
                    Ok(_) => {
                        if let Some(md5) = md5 {
                            s.session.set_md5(&md5);
                        }
                        OtaReply::Ok
                    }
                    Err(e) => OtaReply::Err(e),
                }
            }
            OtaRequest::Write(data) => {
                s.requests.push(format!("write {}", data.len()));
                let n = s.session.write(&mut s.flash, &data);
                if n == data.len() {
                    OtaReply::Written(n)
                } else {
                    OtaReply::Err(s.session.error().cloned().unwrap_or(UpdaterError::NoError))
                }
            }
            OtaRequest::End { even_if_remaining } => {
                s.requests.push(format!("end {even_if_remaining}"));
                match s.session.end(&mut s.flash, even_if_remaining) {
                    Ok(cmd) => {
                        s.eboot = cmd;
                        OtaReply::Ok
                    }
                    Err(e) => OtaReply::Err(e),
                }
            }
            OtaRequest::Abort => {
                s.requests.push("abort".into());
                let _ = s.session.end(&mut s.flash, false);
                OtaReply::Ok
            }
            OtaRequest::Print(text) => {
                s.serial.push_str(&text);
                OtaReply::Ok
            }
            OtaRequest::Restart { after_ms } => {
                s.requests.push(format!("restart {after_ms}"));
                // What eboot does at the next boot: copy the staged image to 0.
                if let Some(cmd) = s.eboot.take() {
                    let (src, dst, size) = (cmd.args[0], cmd.args[1], cmd.args[2]);
                    let staged = s.flash.0[src as usize..(src + size) as usize].to_vec();
                    s.flash.0[dst as usize..(dst + size) as usize].copy_from_slice(&staged);
                }
                drop(guard);
                self.leave_update();
                OtaReply::Ok
            }
            OtaRequest::FreeSketchSpace => {
                s.requests.push("free".into());
                let sketch = sketch_size(&mut s.flash).unwrap_or(0);
                OtaReply::FreeSpace(free_sketch_space(&s.layout, sketch))
            }
        }
    }

    fn net(&self) -> &NetShared {
        &self.net
    }

    fn real(&self, device: Duration) -> Duration {
        device.mul_f64(SCALE)
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/images")
        .join(name)
}

/// A board running the 1.0.0 image of `method` with both servers started.
struct Rig {
    fw: Arc<FirmwareDouble>,
    addr: BoardAddress,
    servers: OtaServers,
    old: Vec<u8>,
}

impl Rig {
    fn start(method: OtaMethod) -> Rig {
        let old =
            std::fs::read(fixture(&format!("sonoff-ota-1.0.0-{}.bin", method.name()))).unwrap();
        let addr = BoardAddress::pick().unwrap();
        let fw = FirmwareDouble::new(addr.ip(), &old);
        let layout = board::find("sonoff-basic").unwrap().layout.clone();
        let link: Arc<dyn FirmwareLink> = fw.clone();
        let servers = OtaServers::start(link, addr, layout).unwrap();
        Rig {
            fw,
            addr,
            servers,
            old,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr.http)
    }

    fn new_image(&self, method: OtaMethod) -> (PathBuf, Vec<u8>) {
        let path = fixture(&format!("sonoff-ota-2.0.0-{}.bin", method.name()));
        let bytes = std::fs::read(&path).unwrap();
        (path, bytes)
    }
}

/// The serial output of a successful HTTP upload of `len` bytes from `file`.
fn http_success_serial(file: &str, len: usize) -> String {
    format!(
        "Update: {file}\n{}Update Success: {len}\nRebooting...\n",
        ".".repeat(len.div_ceil(2048).max(1))
    )
}

#[test]
fn curl_upload_in_update_restarts_into_the_new_image() {
    let rig = Rig::start(OtaMethod::WebServer);
    let (path, new) = rig.new_image(OtaMethod::WebServer);
    rig.fw.enter_update(OtaMethod::WebServer, None);
    let run = curl(&[
        "-F",
        &format!("firmware=@{}", path.display()),
        &rig.url("/update"),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "<META http-equiv=\"refresh\" content=\"15;URL=/\">Update Success! Rebooting..."
    );
    rig.fw.wait_request("restart");
    let requests = rig.fw.requests();
    // 1 MB, 64 KB FS, 64 KB sketch: (0xEB000 - 0x10000 - 0x1000) & !0xFFF.
    assert_eq!(
        requests[..2],
        ["free".to_string(), format!("begin {} 0", 0xDA000)]
    );
    let writes = requests.iter().filter(|r| r.starts_with("write ")).count();
    assert_eq!(writes, new.len().div_ceil(2048));
    assert!(
        requests.iter().all(|r| r == "free"
            || r.starts_with("begin")
            || r == "write 2048"
            || r == "end true"
            || r == "restart 100"),
        "{requests:?}"
    );
    assert_eq!(requests[requests.len() - 2..], ["end true", "restart 100"]);
    let file = path.file_name().unwrap().to_str().unwrap();
    assert_eq!(rig.fw.serial(), http_success_serial(file, new.len()));
    assert_eq!(
        rig.fw.flash(0, new.len()),
        new,
        "eboot copied the new image to 0"
    );

    // The restart stopped the service: the port refuses again.
    let after = curl(&[&rig.url("/update")]);
    assert_eq!(after.code, 7, "{after:?}");
}

#[test]
fn curl_in_run_is_refused_and_nothing_is_written() {
    let rig = Rig::start(OtaMethod::WebServer);
    let (path, _) = rig.new_image(OtaMethod::WebServer);
    let run = curl(&[
        "-F",
        &format!("firmware=@{}", path.display()),
        &rig.url("/update"),
    ]);
    assert_eq!(run.code, 7, "connection refused expected: {run:?}");
    // Entering and leaving UPDATE: the listener comes and goes on the same port.
    rig.fw.enter_update(OtaMethod::WebServer, None);
    let wait = Instant::now() + Duration::from_secs(5);
    loop {
        let page = curl(&[&rig.url("/update")]);
        if page.code == 0 {
            assert!(page.stdout.contains("name='firmware'"), "{page:?}");
            break;
        }
        assert!(Instant::now() < wait, "listener never came up: {page:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    rig.fw.leave_update();
    let wait = Instant::now() + Duration::from_secs(5);
    loop {
        let run = curl(&[&rig.url("/update")]);
        if run.code == 7 {
            break;
        }
        assert!(Instant::now() < wait, "listener never went away: {run:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(rig.fw.requests().is_empty(), "{:?}", rig.fw.requests());
    assert_eq!(rig.fw.flash(0, rig.old.len()), rig.old);
    assert_eq!(rig.fw.serial(), "");
}

#[test]
fn pages_options_not_found_and_basic_auth() {
    let rig = Rig::start(OtaMethod::WebServer);
    rig.fw.enter_update(OtaMethod::WebServer, Some("s3cret"));
    let wait = Instant::now() + Duration::from_secs(5);
    let page = loop {
        let page = curl(&["-i", &rig.url("/update")]);
        if page.code == 0 {
            break page;
        }
        assert!(Instant::now() < wait, "{page:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        page.stdout.starts_with("HTTP/1.1 401 Unauthorized\r\nContent-Type: text/html\r\nWWW-Authenticate: Basic realm=\"Login Required\"\r\nContent-Length: 0\r\n"),
        "{page:?}"
    );
    let wrong = curl(&["-i", "-u", "admin:nope", &rig.url("/update")]);
    assert!(wrong.stdout.starts_with("HTTP/1.1 401 "), "{wrong:?}");
    let ok = curl(&["-u", "admin:s3cret", &rig.url("/update?x=1")]);
    assert_eq!(ok.stdout, super::ota_http::UPLOAD_PAGE);
    let options = curl(&["-i", "-X", "OPTIONS", &rig.url("/update")]);
    assert!(
        options
            .stdout
            .contains("Access-Control-Allow-Headers: *\r\nAccess-Control-Allow-Origin: *\r\n")
            && options.stdout.ends_with("\r\n\r\ny"),
        "{options:?}"
    );
    let missing = curl(&["-i", "-u", "admin:s3cret", &rig.url("/nothing?q")]);
    assert!(
        missing.stdout.starts_with("HTTP/1.1 404 Not Found\r\n")
            && missing.stdout.ends_with("Not found: /nothing"),
        "{missing:?}"
    );
    // HTTP/1.0 and `Connection: close` get `Connection: close`.
    let old = curl(&["-i", "-0", "-u", "admin:s3cret", &rig.url("/update")]);
    assert!(
        old.stdout.starts_with("HTTP/1.0 200 OK\r\n")
            && old.stdout.contains("Connection: close\r\n"),
        "{old:?}"
    );

    // An upload without credentials: the body is read, nothing is written, 401.
    let (path, new) = rig.new_image(OtaMethod::WebServer);
    let form = format!("firmware=@{}", path.display());
    let denied = curl(&["-i", "-F", &form, &rig.url("/update")]);
    assert!(denied.stdout.starts_with("HTTP/1.1 401 "), "{denied:?}");
    assert!(rig.fw.requests().is_empty(), "{:?}", rig.fw.requests());
    assert_eq!(rig.fw.serial(), "Unauthenticated Update\n");
    let done = curl(&["-u", "admin:s3cret", "-F", &form, &rig.url("/update")]);
    assert!(
        done.stdout.ends_with("Update Success! Rebooting..."),
        "{done:?}"
    );
    rig.fw.wait_request("restart");
    assert_eq!(rig.fw.flash(0, new.len()), new);
}

#[test]
fn updater_error_is_answered_and_the_service_stays() {
    let rig = Rig::start(OtaMethod::WebServer);
    rig.fw.enter_update(OtaMethod::WebServer, None);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("not-an-image.bin");
    std::fs::write(&bad, vec![0x42u8; 10_000]).unwrap();
    let wait = Instant::now() + Duration::from_secs(5);
    let run = loop {
        let run = curl(&[
            "-F",
            &format!("firmware=@{}", bad.display()),
            &rig.url("/update"),
        ]);
        if run.code != 7 {
            break run;
        }
        assert!(Instant::now() < wait);
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        run.stdout, "Update error: ERROR[10]: Magic byte is not 0xE9\n",
        "{run:?}"
    );
    assert_eq!(
        rig.fw.serial(),
        "Update: not-an-image.bin\n.....ERROR[10]: Magic byte is not 0xE9\n"
    );
    assert!(!rig.fw.requests().iter().any(|r| r.starts_with("restart")));
    // Still in UPDATE: the page is served.
    let page = curl(&[&rig.url("/update")]);
    assert_eq!(page.stdout, super::ota_http::UPLOAD_PAGE);
    assert_eq!(rig.fw.flash(0, rig.old.len()), rig.old);
}

#[test]
fn a_broken_upload_is_aborted_and_a_second_uploader_waits() {
    use std::io::Write;
    let rig = Rig::start(OtaMethod::WebServer);
    rig.fw.enter_update(OtaMethod::WebServer, None);
    let (path, new) = rig.new_image(OtaMethod::WebServer);
    let connect = || {
        let wait = Instant::now() + Duration::from_secs(5);
        loop {
            match std::net::TcpStream::connect(rig.addr.http) {
                Ok(s) => return s,
                Err(e) => assert!(Instant::now() < wait, "{e}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let boundary = "----sim-ota-test";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"firmware\"; filename=\"a.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let request = |len: usize| {
        format!(
            "POST /update HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\
             Content-Length: {len}\r\n\r\n"
        )
    };
    let tail = format!("\r\n--{boundary}--\r\n");
    let full = head.len() + new.len() + tail.len();

    // Uploader A sends half the file and stalls; it holds the server.
    let mut a = connect();
    a.write_all(request(full).as_bytes()).unwrap();
    a.write_all(head.as_bytes()).unwrap();
    a.write_all(&new[..new.len() / 2]).unwrap();
    rig.fw.wait_request("write");

    // curl B connects meanwhile; it is not served while A's upload runs.
    let form = format!("firmware=@{}", path.display());
    let url = rig.url("/update");
    let b = std::thread::spawn(move || curl(&["-F", &form, &url]));
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        assert!(
            !b.is_finished(),
            "the second uploader was served during the first upload"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let begins = rig
        .fw
        .requests()
        .iter()
        .filter(|r| r.starts_with("begin"))
        .count();
    assert_eq!(begins, 1, "{:?}", rig.fw.requests());

    // A's connection breaks: aborted, no answer; then B gets its turn and succeeds.
    drop(a);
    let b = b.join().unwrap();
    assert!(b.stdout.ends_with("Update Success! Rebooting..."), "{b:?}");
    let serial = rig.fw.serial();
    let (first, second) = serial.split_once("Update was aborted\r\n").expect(&serial);
    assert!(first.starts_with("Update: a.bin\n."), "{serial}");
    assert_eq!(
        second,
        http_success_serial("sonoff-ota-2.0.0-webserver.bin", new.len())
    );
    let requests = rig.fw.requests();
    let abort = requests.iter().position(|r| r == "abort").unwrap();
    let second_begin = requests
        .iter()
        .rposition(|r| r.starts_with("begin"))
        .unwrap();
    assert!(abort < second_begin, "{requests:?}");
    rig.fw.wait_request("restart");
    assert_eq!(rig.fw.flash(0, new.len()), new);

    // A raw client after the restart: refused.
    let wait = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(rig.addr.http).is_ok() {
        assert!(
            Instant::now() < wait,
            "the listener stayed after the restart"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn chromium_uploads_through_the_form_and_cannot_load_the_page_in_run() {
    let rig = Rig::start(OtaMethod::WebServer);
    let (path, new) = rig.new_image(OtaMethod::WebServer);
    let browser = Browser::start();

    // RUN: the page cannot load, nothing is written.
    let refused = browser.open(&rig.url("/update"));
    let text = browser.text();
    assert!(
        refused
            .as_ref()
            .err()
            .is_some_and(|e| e.contains("ERR_CONNECTION_REFUSED"))
            || text.contains("ERR_CONNECTION_REFUSED"),
        "{refused:?} {text:?}"
    );
    assert!(browser.find("//input[@name='firmware']").is_err());
    assert!(rig.fw.requests().is_empty());

    // UPDATE: open the page, choose the file, submit.
    rig.fw.enter_update(OtaMethod::WebServer, None);
    let wait = Instant::now() + Duration::from_secs(10);
    loop {
        if browser.open(&rig.url("/update")).is_ok()
            && browser.find("//input[@name='firmware']").is_ok()
        {
            break;
        }
        assert!(Instant::now() < wait, "the upload page never loaded");
    }
    let input = browser.find("//input[@name='firmware']").unwrap();
    assert_eq!(
        browser.attribute(&input, "accept").as_deref(),
        Some(".bin,.bin.gz")
    );
    browser.upload("firmware", &path).unwrap();
    browser.wait_text("Update Success! Rebooting...", Duration::from_secs(20));
    rig.fw.wait_request("restart");
    let file = path.file_name().unwrap().to_str().unwrap();
    assert_eq!(rig.fw.serial(), http_success_serial(file, new.len()));
    assert_eq!(rig.fw.flash(0, new.len()), new);
}

fn espota(rig: &Rig, image: &[u8], password: Option<&str>) -> Espota {
    let device = SocketAddr::V4(rig.addr.espota);
    espota_upload(
        device,
        image,
        "sonoff-ota-2.0.0-arduino.bin",
        password,
        Duration::from_secs(2),
    )
}

/// Sends invitations until the service answers (the socket appears shortly after the state
/// change), then runs the upload.
fn espota_when_up(rig: &Rig, image: &[u8], password: Option<&str>) -> Espota {
    let wait = Instant::now() + Duration::from_secs(10);
    let device = SocketAddr::V4(rig.addr.espota);
    loop {
        let outcome = espota_upload(
            device,
            image,
            "sonoff-ota-2.0.0-arduino.bin",
            password,
            Duration::from_millis(300),
        );
        if outcome != Espota::NoAnswer {
            return outcome;
        }
        assert!(Instant::now() < wait, "ArduinoOTA never answered");
    }
}

fn espota_success_serial(len: usize) -> String {
    let mut s = String::from("OTA start\r\nOTA progress 0%\r\n");
    let mut last = 0;
    for done in (1460..).step_by(1460).map(|d: usize| d.min(len)) {
        let step = done * 100 / len / 10 * 10;
        if step != last {
            s.push_str(&format!("OTA progress {step}%\r\n"));
            last = step;
        }
        if done == len {
            break;
        }
    }
    s.push_str("OTA end\r\n");
    s
}

#[test]
fn espota_without_password_updates_and_restarts() {
    let rig = Rig::start(OtaMethod::Arduino);
    let (_, new) = rig.new_image(OtaMethod::Arduino);
    rig.fw.enter_update(OtaMethod::Arduino, None);
    let Espota::Transferred { replies, peer } = espota_when_up(&rig, &new, None) else {
        panic!("upload did not run");
    };
    assert_eq!(replies, format!("{}OK", expected_acks(new.len())));
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(rig.addr.ip()),
        "connects back from the board's address"
    );
    rig.fw.wait_request("restart");
    let requests = rig.fw.requests();
    assert_eq!(requests[0], format!("begin {} 0", new.len()));
    assert_eq!(requests[requests.len() - 2..], ["end false", "restart 100"]);
    assert_eq!(rig.fw.serial(), espota_success_serial(new.len()));
    assert_eq!(rig.fw.flash(0, new.len()), new);
    // After the restart the socket is gone: no answer.
    assert_eq!(espota(&rig, &new, None), Espota::NoAnswer);
}

#[test]
fn espota_with_password_right_and_wrong() {
    let rig = Rig::start(OtaMethod::Arduino);
    let (_, new) = rig.new_image(OtaMethod::Arduino);
    rig.fw.enter_update(OtaMethod::Arduino, Some("pa55"));
    assert_eq!(
        espota_when_up(&rig, &new, Some("wrong")),
        Espota::AuthFailed
    );
    assert_eq!(espota(&rig, &new, None), Espota::AuthFailed);
    assert!(rig.fw.requests().is_empty(), "{:?}", rig.fw.requests());
    assert_eq!(rig.fw.serial(), "OTA error auth\r\nOTA error auth\r\n");
    assert_eq!(rig.fw.flash(0, rig.old.len()), rig.old);

    let Espota::Transferred { replies, .. } = espota(&rig, &new, Some("pa55")) else {
        panic!("upload did not run");
    };
    assert!(replies.ends_with("OK"), "{replies}");
    rig.fw.wait_request("restart");
    assert_eq!(rig.fw.flash(0, new.len()), new);
}

#[test]
fn espota_in_run_gets_no_answer_and_a_refused_begin_says_err() {
    let rig = Rig::start(OtaMethod::Arduino);
    let (_, new) = rig.new_image(OtaMethod::Arduino);
    assert_eq!(espota(&rig, &new, None), Espota::NoAnswer);
    // The webserver build does not answer espota either.
    rig.fw.enter_update(OtaMethod::WebServer, None);
    assert_eq!(espota(&rig, &new, None), Espota::NoAnswer);
    assert!(rig.fw.requests().is_empty());

    // Too big for the staging area: Update.begin fails, the invitation is refused.
    rig.fw.enter_update(OtaMethod::Arduino, None);
    let huge = vec![0xE9u8; 0xEA000];
    let outcome = espota_when_up(&rig, &huge, None);
    assert_eq!(
        outcome,
        Espota::Refused("ERR: ERROR[4]: Not Enough Space\n".into())
    );
    assert_eq!(
        rig.fw.serial(),
        "OTA error begin: ERROR[4]: Not Enough Space\r\n"
    );
    assert_eq!(rig.fw.flash(0, rig.old.len()), rig.old);
}

#[test]
fn espota_end_error_goes_to_the_host_and_the_service_stays() {
    let rig = Rig::start(OtaMethod::Arduino);
    let (_, mut new) = rig.new_image(OtaMethod::Arduino);
    new[0] = 0x00; // not an image: Update.end() fails with error 10 (MD5 of what was sent is fine)
    rig.fw.enter_update(OtaMethod::Arduino, None);
    let Espota::Transferred { replies, .. } = espota_when_up(&rig, &new, None) else {
        panic!("upload did not run");
    };
    assert_eq!(
        replies,
        format!(
            "{}ERROR[10]: Magic byte is not 0xE9\n",
            expected_acks(new.len())
        )
    );
    assert!(
        rig.fw
            .serial()
            .ends_with("OTA error end: ERROR[10]: Magic byte is not 0xE9\r\n")
    );
    assert!(!rig.fw.requests().iter().any(|r| r.starts_with("restart")));
    // The service stays: the good image goes through afterwards.
    new[0] = 0xE9;
    let outcome = espota(&rig, &new, None);
    let Espota::Transferred { replies, .. } = outcome else {
        panic!("second upload did not run: {outcome:?}");
    };
    assert!(replies.ends_with("OK"), "{replies}");
}

#[test]
fn servers_shut_down_while_a_client_holds_them() {
    let rig = Rig::start(OtaMethod::WebServer);
    rig.fw.enter_update(OtaMethod::WebServer, None);
    let wait = Instant::now() + Duration::from_secs(5);
    let _stalled = loop {
        match std::net::TcpStream::connect(rig.addr.http) {
            Ok(s) => break s,
            Err(e) => assert!(Instant::now() < wait, "{e}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let started = Instant::now();
    let Rig { mut servers, .. } = rig;
    servers.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn board_addresses_differ_and_print_as_endpoint_lines() {
    let a = BoardAddress::pick().unwrap();
    let b = BoardAddress::pick().unwrap();
    assert_ne!((a.http, a.espota), (b.http, b.espota));
    let [http, ota] = a.lines();
    assert_eq!(
        http,
        format!("http: 127.0.0.{}:{}", a.ip().octets()[3], a.http.port())
    );
    assert_eq!(
        ota,
        format!("ota: 127.0.0.{}:{}", a.ip().octets()[3], a.espota.port())
    );
    assert!((2..=254).contains(&a.ip().octets()[3]));
}

#[test]
fn raw_requests_follow_the_web_server() {
    use std::io::{Read, Write};
    let rig = Rig::start(OtaMethod::WebServer);
    rig.fw.enter_update(OtaMethod::WebServer, None);
    let connect = || {
        let wait = Instant::now() + Duration::from_secs(5);
        loop {
            match std::net::TcpStream::connect(rig.addr.http) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    return s;
                }
                Err(e) => assert!(Instant::now() < wait, "{e}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let read_response = |s: &mut std::net::TcpStream| {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                if body.len() >= len {
                    return text;
                }
            }
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed mid-answer: {text:?}");
            got.extend_from_slice(&buf[..n]);
        }
    };

    // Two requests on one HTTP/1.1 connection: kept alive between them.
    let mut s = connect();
    s.write_all(b"GET /update HTTP/1.1\r\nHost: b\r\n\r\n")
        .unwrap();
    let first = read_response(&mut s);
    assert!(
        first.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n")
            && first.contains("Connection: keep-alive\r\nKeep-Alive: timeout=2000\r\n"),
        "{first}"
    );
    s.write_all(b"GET /x?y HTTP/1.1\r\nHost: b\r\n\r\n")
        .unwrap();
    let second = read_response(&mut s);
    assert!(second.ends_with("\r\n\r\nNot found: /x"), "{second}");

    // HEAD is no route of the update server: 404, head only.
    let mut s = connect();
    s.write_all(b"HEAD /update HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert_eq!(
        all,
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 18\r\nConnection: close\r\n\r\n"
    );

    // Not HTTP: dropped without an answer.
    let mut s = connect();
    s.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    assert!(all.is_empty(), "{all:?}");
    assert!(rig.fw.requests().is_empty());
}

#[test]
fn espota_ignores_a_second_invitation_and_reports_a_receive_timeout() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, UdpSocket};
    let rig = Rig::start(OtaMethod::Arduino);
    let (_, new) = rig.new_image(OtaMethod::Arduino);
    rig.fw.enter_update(OtaMethod::Arduino, None);
    let device = SocketAddr::V4(rig.addr.espota);
    let md5 = crate::ota::proto::md5_hex(&new);
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let invitation = format!("0 {port} {} {md5}\n", new.len());
    let mut buf = [0u8; 64];
    let wait = Instant::now() + Duration::from_secs(10);
    loop {
        udp.send_to(invitation.as_bytes(), device).unwrap();
        if let Ok((n, _)) = udp.recv_from(&mut buf) {
            assert_eq!(&buf[..n], b"OK");
            break;
        }
        assert!(Instant::now() < wait, "no answer");
    }
    let (mut conn, _) = host.accept().unwrap();

    // A second uploader while this one runs: ArduinoOTA does not answer it.
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    other
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    other.send_to(invitation.as_bytes(), device).unwrap();
    assert!(
        other.recv_from(&mut buf).is_err(),
        "second invitation answered"
    );

    // Nothing sent for longer than receive_timeout_ms (1 s device, 50 ms here): reported, and
    // the device goes on waiting while the host stays connected.
    let wait = Instant::now() + Duration::from_secs(10);
    while !rig.fw.serial().contains("OTA error receive\r\n") {
        assert!(Instant::now() < wait, "{}", rig.fw.serial());
        std::thread::sleep(Duration::from_millis(10));
    }
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut replies = Vec::new();
    for chunk in new.chunks(1460) {
        conn.write_all(chunk).unwrap();
        let n = conn.read(&mut buf).unwrap();
        replies.extend_from_slice(&buf[..n]);
    }
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    replies.extend_from_slice(&rest);
    assert_eq!(
        String::from_utf8_lossy(&replies),
        format!("{}OK", expected_acks(new.len()))
    );
    rig.fw.wait_request("restart");
    let begins = rig
        .fw
        .requests()
        .iter()
        .filter(|r| r.starts_with("begin"))
        .count();
    assert_eq!(begins, 1);
    assert_eq!(rig.fw.flash(0, new.len()), new);
}
