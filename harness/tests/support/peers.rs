//! Real OTA peers for the simulator's tests: curl, headless Chromium driven through chromedriver,
//! and an espota uploader.
//!
//! - curl and Chromium are the programs a user points at `/update` (the field report's user
//!   used a browser). Chromium is driven with the W3C WebDriver protocol: plain HTTP + JSON to
//!   chromedriver, a handful of calls written here, so the tests need no WebDriver crate and no
//!   Python.
//! - The espota uploader is written from the protocol facts (protocols.md §B, espota.py's
//!   message formats and order) and deliberately shares no code with the harness's own OTA
//!   client, so the two cannot agree on a mistake.
//!
//! A missing program is a test failure that says what to install, never a skip. The paths can
//! be overridden with CURL, CHROMIUM and CHROMEDRIVER.
//!
//! Shared by the in-crate server tests (`#[path]`-included) and `tests/sim_ota.rs`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use serde_json::{Value, json};

/// Finds `name` through the environment variable `var`, else on PATH; panics with what to
/// install when it is missing.
pub fn require(var: &str, name: &str, install: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{var}={} does not exist", p.display());
        return p;
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "{name} not found: set {var}=/path/to/{name} or install it ({install}); CI installs it"
        )
    })
}

/// What a curl run gave.
#[derive(Debug)]
pub struct CurlRun {
    /// Exit code (7 = could not connect).
    pub code: i32,
    /// Response body (or headers with `-i`).
    pub stdout: String,
    /// Diagnostics.
    pub stderr: String,
}

/// Runs curl with `args` (plus `-sS` and a 60 s limit).
pub fn curl(args: &[&str]) -> CurlRun {
    let curl = require("CURL", "curl", "apt-get install curl");
    let out = Command::new(curl)
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .expect("run curl");
    CurlRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A headless Chromium session behind a chromedriver child process.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a Chromium session with a fresh profile.
    pub fn start() -> Browser {
        let driver_bin = require(
            "CHROMEDRIVER",
            "chromedriver",
            "apt-get install chromium chromium-driver",
        );
        let chromium = require(
            "CHROMIUM",
            "chromium",
            "apt-get install chromium chromium-driver",
        );
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::Builder::new()
            .prefix("sim-ota-chromium-")
            .tempdir()
            .unwrap();
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(status) = browser.call("GET", "/status", None)
                && status["value"]["ready"] == json!(true)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!(
            "--user-data-dir={}",
            browser._profile.path().display()
        )])
        .collect::<Vec<_>>();
        let caps = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": args},
                "timeouts": {"pageLoad": 30000, "implicit": 0},
            }}
        });
        let reply = browser
            .call("POST", "/session", Some(caps))
            .unwrap_or_else(|e| panic!("cannot start a Chromium session: {e}"));
        browser.session = reply["value"]["sessionId"]
            .as_str()
            .expect("session id")
            .to_string();
        browser
    }

    /// One WebDriver command; `Err` carries the WebDriver error (`error: message`).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        // chromedriver answers `Connection: close` but may keep the socket open: read by
        // Content-Length (or to the last chunk).
        let mut raw = Vec::new();
        let mut chunk = [0u8; 8192];
        let payload = loop {
            let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
            raw.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let head = head.to_ascii_lowercase();
                let length = head.lines().find_map(|l| {
                    l.strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                });
                match length {
                    Some(len) if body.len() >= len => break body[..len].to_string(),
                    None if head.contains("chunked") && body.contains("\r\n0\r\n") => {
                        break dechunk(body);
                    }
                    _ => {}
                }
            }
            if n == 0 {
                return Err(format!("WebDriver answer cut short: {text}"));
            }
        };
        let value: Value = serde_json::from_str(&payload)
            .map_err(|e| format!("bad WebDriver JSON ({e}): {payload}"))?;
        if let Some(error) = value["value"]["error"].as_str() {
            let message = value["value"]["message"].as_str().unwrap_or_default();
            return Err(format!("{error}: {message}"));
        }
        Ok(value)
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Navigates; `Err` when the page cannot be loaded (e.g. `net::ERR_CONNECTION_REFUSED`).
    pub fn open(&self, url: &str) -> Result<(), String> {
        self.session_call("POST", "/url", Some(json!({"url": url})))
            .map(drop)
    }

    /// The id of the element an XPath selects.
    pub fn find(&self, xpath: &str) -> Result<String, String> {
        let v = self.session_call(
            "POST",
            "/element",
            Some(json!({"using": "xpath", "value": xpath})),
        )?;
        let obj = v["value"].as_object().ok_or("no element object")?;
        obj.values()
            .next()
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| "no element id".to_string())
    }

    /// An attribute of an element.
    pub fn attribute(&self, element: &str, name: &str) -> Option<String> {
        self.session_call("GET", &format!("/element/{element}/attribute/{name}"), None)
            .ok()
            .and_then(|v| v["value"].as_str().map(str::to_string))
    }

    /// Chooses `file` in the form's file input named `field` and presses that form's submit
    /// button, as a user does.
    pub fn upload(&self, field: &str, file: &Path) -> Result<(), String> {
        let file = file
            .canonicalize()
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let input = self.find(&format!("//input[@type='file' and @name='{field}']"))?;
        self.session_call(
            "POST",
            &format!("/element/{input}/value"),
            Some(json!({"text": file.display().to_string()})),
        )?;
        let submit = self.find(&format!(
            "//input[@name='{field}']/ancestor::form//input[@type='submit']"
        ))?;
        self.session_call("POST", &format!("/element/{submit}/click"), Some(json!({})))
            .map(drop)
    }

    /// The page's visible text.
    pub fn text(&self) -> String {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({"script": "return document.body ? document.body.innerText : ''", "args": []})),
        )
        .ok()
        .and_then(|v| v["value"].as_str().map(str::to_string))
        .unwrap_or_default()
    }

    /// Waits until the page text contains `needle`; returns the text.
    pub fn wait_text(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "page never showed {needle:?}; it shows {text:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How an espota upload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Espota {
    /// The invitation (or the authentication) got no UDP answer in time.
    NoAnswer,
    /// The device answered the authentication with `Authentication Failed`.
    AuthFailed,
    /// The device refused the invitation: the whole `ERR: ...` datagram.
    Refused(String),
    /// The device accepted but never connected back.
    NoConnect,
    /// The transfer ran; everything the device sent on the TCP connection until it closed.
    Transferred {
        /// The device's bytes: acknowledgements, then `OK` or `ERROR[n]: text\n`.
        replies: String,
        /// The device's address as seen on the TCP connection.
        peer: SocketAddr,
    },
}

/// Uploads `image` to the ArduinoOTA device at `device` the way espota.py does: TCP listener,
/// UDP invitation `"0 <port> <size> <md5>\n"`, optional MD5 challenge, then the image in
/// 1460-byte chunks, each followed by waiting for the device's acknowledgement, and finally
/// the device's `OK` / `ERROR`. `answer` bounds each wait for the device.
pub fn espota_upload(
    device: SocketAddr,
    image: &[u8],
    filename: &str,
    password: Option<&str>,
    answer: Duration,
) -> Espota {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = listener.local_addr().unwrap().port();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(answer)).unwrap();
    let file_md5 = md5_hex(image);
    let invitation = format!("0 {host_port} {} {file_md5}\n", image.len());
    udp.send_to(invitation.as_bytes(), device).unwrap();
    let mut buf = [0u8; 256];
    let reply = |buf: &mut [u8]| match udp.recv_from(buf) {
        Ok((n, _)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(_) => None,
    };
    let Some(mut answer_text) = reply(&mut buf) else {
        return Espota::NoAnswer;
    };
    if let Some(nonce) = answer_text.strip_prefix("AUTH ") {
        let password = password.unwrap_or_default();
        let cnonce =
            md5_hex(format!("{filename}{}{file_md5}{}", image.len(), device.ip()).as_bytes());
        let response = md5_hex(
            format!("{}:{}:{cnonce}", md5_hex(password.as_bytes()), nonce.trim()).as_bytes(),
        );
        udp.send_to(format!("200 {cnonce} {response}\n").as_bytes(), device)
            .unwrap();
        let Some(text) = reply(&mut buf) else {
            return Espota::NoAnswer;
        };
        answer_text = text;
    }
    if answer_text == "Authentication Failed" {
        return Espota::AuthFailed;
    }
    if answer_text.starts_with("ERR") {
        return Espota::Refused(answer_text);
    }
    assert_eq!(answer_text, "OK", "unexpected espota answer");

    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + answer.max(Duration::from_secs(10));
    let (mut conn, peer) = loop {
        match listener.accept() {
            Ok(c) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Espota::NoConnect;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(answer.max(Duration::from_secs(10))))
        .unwrap();
    let mut replies = Vec::new();
    let mut chunk_reply = [0u8; 64];
    for chunk in image.chunks(1460) {
        if conn.write_all(chunk).is_err() {
            break;
        }
        match conn.read(&mut chunk_reply) {
            Ok(0) | Err(_) => break,
            Ok(n) => replies.extend_from_slice(&chunk_reply[..n]),
        }
        if replies.contains(&b'E') {
            break;
        }
    }
    // The final word (up to 60 s in espota.py); the device closes after it.
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    replies.extend_from_slice(&rest);
    Espota::Transferred {
        replies: String::from_utf8_lossy(&replies).into_owned(),
        peer,
    }
}

/// The acknowledgements the device sends when every chunk is written whole: the decimal
/// counts of the 1460-byte chunks of `len` bytes, back to back.
pub fn expected_acks(len: usize) -> String {
    (0..len)
        .step_by(1460)
        .map(|start| (len - start).min(1460).to_string())
        .collect()
}
