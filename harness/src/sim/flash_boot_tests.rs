//! The chip booting real images, in memory and in virtual device time: ROM, eboot, the
//! reference firmware, OTA through the firmware's request interface, copies cut by power loss,
//! and the first restart after a serial upload.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use crate::board::FlashMode;
use crate::firmware::OtaMethod;
use crate::firmware::behaviour;
use crate::flash::proto::{Command, Op};
use crate::image::{self, BuildSpec, Fault, FlashSize, Identity};
use crate::ota::updater::{EbootCommand, UpdateCommand, UpdaterError};
use crate::triage::{self, Class};

use super::chip::tests::chip;
use super::chip::{Chip, NetLink, Output};
use super::control::CopyCut;
use super::net::{NetShared, OtaReply, OtaRequest};
use super::port::ServicePorts;
use super::uart;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

struct Spec {
    version: &'static str,
    ota: OtaMethod,
    fault: Option<Fault>,
    core: &'static str,
    mode: FlashMode,
    size: FlashSize,
    bytes: usize,
}

impl Spec {
    fn new(version: &'static str, ota: OtaMethod) -> Spec {
        Spec {
            version,
            ota,
            fault: None,
            core: "3.1.2",
            mode: FlashMode::Dout,
            size: FlashSize::M1,
            bytes: 32 * 1024,
        }
    }

    fn build(&self) -> Vec<u8> {
        let id = Identity::new("sonoff-ota", self.version, self.ota, self.fault)
            .unwrap()
            .with_core(self.core)
            .unwrap();
        image::build(&BuildSpec {
            flash_mode: self.mode,
            flash_size: self.size,
            size: self.bytes,
            ..BuildSpec::new(id)
        })
        .unwrap()
    }
}

/// A board with `image` at flash 0 and a network side, its output collected as it goes.
struct Bench {
    chip: Chip,
    out: Vec<Output>,
    net: Arc<NetShared>,
}

impl Bench {
    fn new(board: &str, image: &[u8]) -> Bench {
        let mut chip = chip(board);
        chip.hw.flash.program(0, image).unwrap();
        let net = Arc::new(NetShared::new("127.0.0.9".parse().unwrap()));
        let ports = Arc::new(ServicePorts::default());
        ports.set_http(40080);
        ports.set_ota(48266);
        chip.hw.net = Some(NetLink {
            shared: Arc::clone(&net),
            ports,
        });
        Bench {
            chip,
            out: Vec::new(),
            net,
        }
    }

    fn collect(&mut self) {
        self.out.extend(self.chip.take_output());
    }

    /// Runs device time forward by `d`.
    fn run(&mut self, d: Duration) {
        let until = self.chip.hw.now + d;
        self.chip.advance(until);
        self.collect();
    }

    fn power_on(&mut self) {
        self.chip.power_on();
        self.collect();
    }

    /// Everything so far as a port at `rate` would have received it.
    fn read_at(&self, rate: u32) -> String {
        let bytes: Vec<u8> = self
            .out
            .iter()
            .filter_map(|o| match o {
                Output::Tx { bytes, baud, .. } => Some(uart::resample(bytes, *baud, rate)),
                Output::Delay { .. } => None,
            })
            .flatten()
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// What a capture tool that reads at 74880 and switches to 115200 after each `ld` sees:
    /// every chunk read at the rate it was sent.
    fn capture(&self) -> Vec<u8> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Output::Tx { bytes, .. } => Some(bytes.clone()),
                Output::Delay { .. } => None,
            })
            .flatten()
            .collect()
    }

    fn status(&self) -> String {
        self.chip.status().to_string()
    }

    fn ota(&mut self, generation: u64, req: OtaRequest) -> OtaReply {
        let (tx, rx) = mpsc::channel();
        self.chip.on_ota(generation, req, tx);
        self.collect();
        // A flash-busy answer comes when its device time is reached.
        for _ in 0..1000 {
            if let Ok(reply) = rx.try_recv() {
                return reply;
            }
            self.run(ms(5));
        }
        panic!("no answer to the OTA request");
    }

    /// Holds the button for `hold` and releases it, then lets the firmware react.
    fn press(&mut self, hold: Duration) {
        self.chip.set_button(true);
        self.run(hold);
        self.chip.set_button(false);
        self.run(ms(100));
    }

    fn generation(&self) -> u64 {
        self.net
            .get()
            .service
            .expect("the OTA service runs")
            .generation
    }

    /// Starts an upload of unknown size as ESP8266HTTPUpdateServer does (all the free sketch
    /// space, rounded down to a sector); returns the OTA service's generation.
    fn begin_http_upload(&mut self) -> u64 {
        let g = self.generation();
        let free = match self.ota(g, OtaRequest::FreeSketchSpace) {
            OtaReply::FreeSpace(n) => n,
            other => panic!("{other:?}"),
        };
        let begin = OtaRequest::Begin {
            size: (free - 0x1000) & 0xFFFF_F000,
            command: UpdateCommand::Flash,
            md5: None,
        };
        assert_eq!(self.ota(g, begin), OtaReply::Ok);
        g
    }

    /// Uploads `image` as ESP8266HTTPUpdateServer does and restarts like it.
    fn http_upload(&mut self, image: &[u8]) {
        let g = self.begin_http_upload();
        for block in image.chunks(behaviour().http.upload_block) {
            assert_eq!(
                self.ota(g, OtaRequest::Write(block.to_vec())),
                OtaReply::Written(block.len())
            );
        }
        assert_eq!(
            self.ota(
                g,
                OtaRequest::End {
                    even_if_remaining: true
                }
            ),
            OtaReply::Ok
        );
        let done = format!("Update Success: {}\nRebooting...\n", image.len());
        assert_eq!(self.ota(g, OtaRequest::Print(done)), OtaReply::Ok);
        assert_eq!(
            self.ota(g, OtaRequest::Restart { after_ms: 100 }),
            OtaReply::Ok
        );
    }
}

const ROM_LINES: &str =
    "load 0x4010f000, len 1384, room 16 \r\ntail 8\r\nchksum 0x2d\r\ncsum 0x2d\r\n";

#[test]
fn healthy_boot_prints_rom_eboot_and_the_identity_line() {
    let img = Spec::new("1.0.0", OtaMethod::WebServer).build();
    let mut b = Bench::new("sonoff-4ch", &img);
    b.power_on();
    b.run(ms(500));
    let rom = b.read_at(74_880);
    assert!(
        rom.starts_with(&format!(
            "\r\n ets Jan  8 2013,rst cause:1, boot mode:(3,7)\r\n\r\n{ROM_LINES}v00008000\r\n~ld\r\n"
        )),
        "{rom:?}"
    );
    let app = b.read_at(115_200);
    assert!(
        app.ends_with("\r\nHILFW app=sonoff-ota version=1.0.0 ota=webserver state=RUN\r\n"),
        "{app:?}"
    );
    assert!(!rom.contains("HILFW"), "the app's line is garbage at 74880");
    b.run(Duration::from_secs(3));
    assert!(
        b.read_at(115_200)
            .ends_with("WiFi connected ip=127.0.0.9\r\n")
    );
    let status = b.status();
    assert!(
        status.contains("state=app")
            && status.ends_with("app=sonoff-ota version=1.0.0 fw_state=RUN relay=off led=on"),
        "{status}"
    );
    let report = triage::triage_bytes(&b.capture());
    assert_eq!(report.class, Class::HealthyBoot, "{report:?}");
}

#[test]
fn button_toggles_relay_and_long_press_enters_update_until_the_timeout() {
    let img = Spec::new("1.0.0", OtaMethod::Arduino).build();
    let mut b = Bench::new("sonoff-basic", &img);
    b.power_on();
    b.run(Duration::from_secs(3));
    // A bounce shorter than the debounce time does nothing.
    b.press(ms(20));
    assert!(b.status().contains("relay=off"));
    b.press(ms(200));
    assert!(b.read_at(115_200).ends_with("relay 1 on\r\n"));
    assert!(b.status().contains("relay=on"), "{}", b.status());

    b.chip.set_button(true);
    b.run(ms(2900));
    assert!(b.status().contains("fw_state=RUN"));
    assert_eq!(b.net.get().service, None);
    b.run(ms(200));
    let text = b.read_at(115_200);
    assert!(
        text.ends_with(
            "HILFW app=sonoff-ota version=1.0.0 ota=arduino state=UPDATE\r\n\
             HILFW endpoint=espota://127.0.0.9:48266\r\n"
        ),
        "{text:?}"
    );
    let service = b.net.get().service.unwrap();
    assert_eq!(service.method, crate::firmware::OtaMethod::Arduino);
    assert_eq!(service.password, None);
    // The release after a long press does nothing; the LED blinks.
    b.chip.set_button(false);
    b.run(ms(100));
    assert!(b.status().contains("fw_state=UPDATE relay=on"));
    let entered = b.chip.hw.now;
    b.chip.advance(entered + ms(250));
    let led1 = b.status().contains("led=on");
    b.chip.advance(entered + ms(500));
    assert_ne!(
        led1,
        b.status().contains("led=on"),
        "LED toggles every 250 ms"
    );

    b.run(Duration::from_secs(119));
    assert!(b.status().contains("fw_state=UPDATE"));
    b.run(Duration::from_secs(2));
    assert!(
        b.read_at(115_200)
            .ends_with("HILFW app=sonoff-ota version=1.0.0 ota=arduino state=RUN\r\n")
    );
    assert_eq!(b.net.get().service, None);
    assert_eq!(
        b.ota(service.generation, OtaRequest::Abort),
        OtaReply::NotRunning
    );

    // A short press in UPDATE leaves it at once.
    b.chip.set_button(true);
    b.run(ms(3100));
    assert!(b.status().contains("fw_state=UPDATE"));
    b.chip.set_button(false);
    b.run(ms(100));
    b.press(ms(100));
    assert!(b.status().contains("fw_state=RUN"), "{}", b.status());
}

#[test]
fn http_ota_copies_with_eboot_and_boots_the_new_version() {
    let old = Spec::new("1.0.0", OtaMethod::WebServer).build();
    let new = Spec::new("2.0.0", OtaMethod::WebServer).build();
    let mut b = Bench::new("sonoff-4ch", &old);
    b.power_on();
    b.run(Duration::from_secs(3));
    b.chip.set_button(true);
    b.run(ms(3100));
    b.chip.set_button(false);
    b.http_upload(&new);
    assert!(b.status().contains("rtc_cmd=yes"), "{}", b.status());
    // The restart comes after 100 ms with rst cause 2 (core 3.1.2), then eboot copies.
    b.run(ms(150));
    let text = b.read_at(74_880);
    let boot = text.rsplit("ets Jan").next().unwrap();
    assert!(
        boot.starts_with("  8 2013,rst cause:2, boot mode:(3,7)\r\n\r\n"),
        "{boot:?}"
    );
    assert!(boot.ends_with("v00008000\r\n@cp:"), "{boot:?}");
    assert!(b.status().contains("state=eboot-copy"), "{}", b.status());
    assert!(b.status().contains("sector=0/8"), "{}", b.status());
    b.run(ms(200));
    assert!(b.status().contains("sector=4/8"), "{}", b.status());
    b.run(ms(260));
    let text = b.read_at(74_880);
    assert!(text.ends_with("@cp:0\r\nld\r\n"), "{text:?}");
    assert!(b.status().contains("rtc_cmd=no"));
    b.run(ms(200));
    assert!(
        b.read_at(115_200)
            .ends_with("HILFW app=sonoff-ota version=2.0.0 ota=webserver state=RUN\r\n")
    );
    assert_eq!(&b.chip.hw.flash.read_vec(0, new.len()).unwrap(), &new);
    let report = triage::triage_bytes(&b.capture());
    assert_eq!(report.class, Class::HealthyBoot, "{report:?}");
}

/// Uploads `new` over `old` on a Basic, cuts the power after `sectors` of eboot's copy and
/// powers on again.
fn cut_copy(old: &[u8], new: &[u8], sectors: u32) -> Bench {
    let mut b = Bench::new("sonoff-basic", old);
    b.power_on();
    b.run(Duration::from_secs(3));
    b.chip.set_button(true);
    b.run(ms(3100));
    b.chip.set_button(false);
    b.http_upload(new);
    b.chip.hw.faults.power_cut_during_copy = Some(CopyCut {
        sectors,
        erased: false,
    });
    b.run(Duration::from_secs(2));
    assert!(b.status().starts_with("power=off"), "{}", b.status());
    let flash = b.chip.hw.flash.read_vec(0, new.len()).unwrap();
    let n = sectors as usize * 4096;
    assert_eq!(flash[..n], new[..n], "copied sectors");
    assert_eq!(flash[n..old.len()], old[n..], "the rest is old");
    b.power_on();
    b.run(Duration::from_secs(1));
    b
}

#[test]
fn power_cut_during_the_copy_leaves_a_half_copied_app_that_crashes() {
    // Same layout, different builds: the headers parse, the code is half new, half old.
    let old = Spec::new("1.0.0", OtaMethod::WebServer).build();
    let new = Spec::new("2.0.0", OtaMethod::WebServer).build();
    let b = cut_copy(&old, &new, 5);
    let text = b.read_at(74_880);
    assert!(
        text.contains("v00008000\r\n@cp:\r\n ets Jan  8 2013,rst cause:1"),
        "{text:?}"
    );
    // The command was lost with the power: a plain boot of the half-copied app, which crashes
    // and restarts, again and again.
    let after = text.split("@cp:").nth(1).unwrap();
    assert!(after.contains("~ld\r\n"), "{after:?}");
    assert!(after.contains("rst cause:2, boot mode:(3,6)"), "{after:?}");
    let app = b.read_at(115_200);
    let dumps = app.matches("Exception (3):").count();
    assert!(dumps >= 2, "a crash loop: {app:?}");
    assert!(
        app.contains(">>>stack>>>") && app.contains("<<<stack<<<"),
        "{app:?}"
    );
    let report = triage::triage_bytes(&b.capture());
    assert_eq!(report.class, Class::OtaCopyIncomplete, "{report:?}");
}

#[test]
fn power_cut_with_a_larger_image_breaks_the_segment_headers() {
    // The new image is twice as long: after five sectors its irom0 segment ends in old or
    // erased flash, so the next segment header is nonsense and eboot stops with e:3.
    let old = Spec::new("1.0.0", OtaMethod::WebServer).build();
    let mut new = Spec::new("2.0.0", OtaMethod::WebServer);
    new.bytes = 64 * 1024;
    let b = cut_copy(&old, &new.build(), 5);
    let text = b.read_at(74_880);
    assert!(
        text.ends_with(
            "v00010000\r\n~ld\r\ne:3\r\n\r\n ets Jan  8 2013,rst cause:3, boot mode:(3,6)\r\n\r\nets_main.c \r\n"
        ),
        "{text:?}"
    );
    assert!(b.status().contains("state=halted"), "{}", b.status());
}

#[test]
fn a_cut_after_an_erase_leaves_that_sector_blank_and_a_cut_in_sector_0_bricks() {
    let old = Spec::new("1.0.0", OtaMethod::WebServer).build();
    let new = Spec::new("2.0.0", OtaMethod::WebServer).build();
    let staged = 0x80000;
    let stage = |b: &mut Bench| {
        b.chip.hw.flash.program(staged, &new).unwrap();
        b.chip.hw.rtc = EbootCommand::copy_raw(staged, 0, new.len() as u32).to_words();
    };
    let mut b = Bench::new("sonoff-basic", &old);
    stage(&mut b);
    b.chip.hw.faults.power_cut_during_copy = Some(CopyCut {
        sectors: 0,
        erased: true,
    });
    b.power_on();
    b.run(Duration::from_secs(1));
    assert!(b.chip.hw.flash.sector_is_blank(0).unwrap());
    b.power_on();
    b.run(ms(100));
    let text = b.read_at(74_880);
    assert!(
        text.ends_with("rst cause:1, boot mode:(3,6)\r\n\r\nets_main.c \r\n"),
        "{text:?}"
    );
}

#[test]
fn updater_errors_reach_the_server_and_core_models_differ() {
    // Core 3.1.2 started by the ROM loader's "run user code": Update.begin refuses (11).
    let img = Spec::new("1.0.0", OtaMethod::WebServer).build();
    let mut b = Bench::new("sonoff-basic", &img);
    soft_start_after_download(&mut b);
    b.chip.set_button(true);
    b.run(ms(3100));
    b.chip.set_button(false);
    let g = b.generation();
    let begin = || OtaRequest::Begin {
        size: 10_000,
        command: UpdateCommand::Flash,
        md5: None,
    };
    assert_eq!(b.ota(g, begin()), OtaReply::Err(UpdaterError::Bootstrap));
    assert_eq!(
        b.ota(g + 1, begin()),
        OtaReply::NotRunning,
        "stale generation"
    );
    // Not an image: the magic is only checked at the end.
    let mut b = Bench::new("sonoff-basic", &img);
    b.power_on();
    b.run(Duration::from_secs(3));
    b.chip.set_button(true);
    b.run(ms(3100));
    let g = b.generation();
    assert_eq!(b.ota(g, begin()), OtaReply::Ok);
    assert_eq!(
        b.ota(g, OtaRequest::Write(vec![b'P'; 10_000])),
        OtaReply::Written(10_000)
    );
    assert_eq!(
        b.ota(
            g,
            OtaRequest::End {
                even_if_remaining: false
            }
        ),
        OtaReply::Err(UpdaterError::MagicByte)
    );
    assert!(b.status().contains("rtc_cmd=no"));
    // An aborted upload resets the Updater: the next one can begin.
    assert_eq!(b.ota(g, begin()), OtaReply::Ok);
    assert_eq!(
        b.ota(g, OtaRequest::Write(vec![0xE9; 4096])),
        OtaReply::Written(4096)
    );
    assert_eq!(b.ota(g, OtaRequest::Abort), OtaReply::Ok);
    assert_eq!(b.ota(g, begin()), OtaReply::Ok);
    assert!(b.status().contains("rtc_cmd=no"));
}

/// Power on in download mode, then esptool's `--after soft-reset` with the ROM: FLASH_BEGIN
/// with nothing, FLASH_END(1) = "run user code".
fn soft_start_after_download(b: &mut Bench) {
    b.chip.set_button(true);
    b.power_on();
    b.chip.set_button(false);
    b.chip.on_rx(&Command::sync().to_slip(), 115_200);
    b.chip.on_rx(
        &Command::from_words(Op::FlashBegin, &[0, 0, 0x400, 0]).to_slip(),
        115_200,
    );
    b.chip
        .on_rx(&Command::from_words(Op::FlashEnd, &[1]).to_slip(), 115_200);
    b.collect();
    assert!(b.status().contains("soft_started=yes"), "{}", b.status());
    b.run(Duration::from_secs(3));
    assert!(b.status().contains("fw_state=RUN"), "{}", b.status());
}

#[test]
fn first_restart_after_a_serial_upload_lands_in_download_mode_then_wdt() {
    // The seed's Basic attempt 2, with an old core whose Updater has no bootstrap check.
    let mut old = Spec::new("1.0.0", OtaMethod::WebServer);
    old.core = "2.3.0";
    let mut new = Spec::new("2.0.0", OtaMethod::WebServer);
    new.core = "2.3.0";
    let (old, new) = (old.build(), new.build());
    let mut b = Bench::new("sonoff-basic", &old);
    soft_start_after_download(&mut b);
    b.chip.set_button(true);
    b.run(ms(3100));
    b.chip.set_button(false);
    let before = b.out.len();
    b.http_upload(&new);
    b.run(ms(200));
    let tail = |b: &Bench| {
        let out = &b.out[before..];
        let bytes: Vec<u8> = out
            .iter()
            .filter_map(|o| match o {
                Output::Tx { bytes, baud, .. } => Some(uart::resample(bytes, *baud, 74_880)),
                Output::Delay { .. } => None,
            })
            .flatten()
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    assert!(
        tail(&b).ends_with("\r\n ets Jan  8 2013,rst cause:1, boot mode:(1,6)\r\n\r\n"),
        "{:?}",
        tail(&b)
    );
    assert!(
        b.status().contains("state=rom-download rtc_cmd=yes")
            || b.status().contains("state=rom-download")
    );
    b.run(Duration::from_secs(8));
    assert!(!tail(&b).contains("wdt reset"));
    b.run(Duration::from_secs(1));
    assert!(
        tail(&b).ends_with(
            "\r\n ets Jan  8 2013,rst cause:1, boot mode:(1,6)\r\n\r\n\
             \r\n ets Jan  8 2013,rst cause:4, boot mode:(1,6)\r\n\r\nwdt reset\r\n"
        ),
        "{:?}",
        tail(&b)
    );
    // Silence until the power cycle, which loses the RTC command: the old app runs.
    b.run(Duration::from_secs(30));
    assert!(tail(&b).ends_with("wdt reset\r\n"));
    assert!(b.status().contains("rtc_cmd=yes"), "{}", b.status());
    b.chip.power_off();
    b.power_on();
    b.run(Duration::from_secs(1));
    let last = tail(&b).rsplit("ets Jan").next().unwrap().to_string();
    assert!(
        last.starts_with("  8 2013,rst cause:1, boot mode:(3,6)\r\n\r\n")
            && last.contains("\r\n~ld\r\n"),
        "{last:?}"
    );
    assert!(
        b.read_at(115_200)
            .ends_with("HILFW app=sonoff-ota version=1.0.0 ota=webserver state=RUN\r\n")
    );
    let report = triage::triage_bytes(&b.capture());
    assert_eq!(report.class, Class::RestartAfterSerialFlash, "{report:?}");
}

/// Uploads `image` as ArduinoOTA does (begin with the image size, MD5, 1460-byte writes), with
/// the server's prints left out.
fn arduino_upload(b: &mut Bench, image: &[u8]) -> OtaReply {
    use md5::{Digest, Md5};
    let g = b.generation();
    let md5: String = Md5::digest(image)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    let begin = OtaRequest::Begin {
        size: image.len() as u32,
        command: UpdateCommand::Flash,
        md5: Some(md5),
    };
    match b.ota(g, begin) {
        OtaReply::Ok => {}
        other => return other,
    }
    for chunk in image.chunks(1460) {
        assert_eq!(
            b.ota(g, OtaRequest::Write(chunk.to_vec())),
            OtaReply::Written(chunk.len())
        );
    }
    let end = b.ota(
        g,
        OtaRequest::End {
            even_if_remaining: false,
        },
    );
    if end == OtaReply::Ok {
        assert_eq!(
            b.ota(g, OtaRequest::Restart { after_ms: 100 }),
            OtaReply::Ok
        );
    }
    end
}

fn enter_update(b: &mut Bench) {
    b.chip.set_button(true);
    b.run(ms(3100));
    b.chip.set_button(false);
    b.run(ms(100));
}

#[test]
fn qio_arduino_file_on_the_esp8285_dies_at_the_first_flash_fetch() {
    // fixtures/images/sonoff-ota-1.0.0-4mb-qio.bin: eboot loads, the app does not.
    let mut spec = Spec::new("1.0.0", OtaMethod::Arduino);
    spec.mode = FlashMode::Qio;
    spec.size = FlashSize::M4;
    let mut b = Bench::new("sonoff-4ch", &spec.build());
    b.power_on();
    b.run(ms(50));
    let text = b.read_at(74_880);
    assert!(
        text.starts_with(&format!(
            "\r\n ets Jan  8 2013,rst cause:1, boot mode:(3,7)\r\n\r\n{ROM_LINES}v00008000\r\n~ld\r\n\
             Fatal exception (0): \r\nepc1=0x402"
        )),
        "{text:?}"
    );
    assert!(
        text.contains(
            ", epc2=0x00000000, epc3=0x00000000, excvaddr=0x00000000, depc=0x00000000\r\n"
        ),
        "{text:?}"
    );
    assert!(
        text.contains("rst cause:2, boot mode:(3,7)"),
        "restarts: {text:?}"
    );
    assert!(!b.read_at(115_200).contains("HILFW"));
    let report = triage::triage_bytes(&b.capture());
    assert_eq!(report.class, Class::FlashConfigMismatch, "{report:?}");
    // The Basic's external flash runs QIO: the same file boots.
    let mut b = Bench::new("sonoff-basic", &spec.build());
    b.power_on();
    b.run(ms(500));
    assert!(b.read_at(115_200).contains("state=RUN"));
}

#[test]
fn built_in_faults() {
    let with = |fault| {
        let mut s = Spec::new("1.0.1", OtaMethod::WebServer);
        s.fault = Some(fault);
        let mut b = Bench::new("sonoff-basic", &s.build());
        b.power_on();
        b
    };
    // crash-on-boot: state line, Exception (28), restart with rst cause 2, again and again.
    let mut b = with(Fault::CrashOnBoot);
    b.run(ms(1000));
    let app = b.read_at(115_200);
    assert!(
        app.contains(
            "state=RUN\r\n\r\n--------------- CUT HERE FOR EXCEPTION DECODER ---------------\r\n\
             \r\nException (28):\r\nepc1=0x40201f2c epc2=0x00000000 epc3=0x00000000 \
             excvaddr=0x00000000 depc=0x00000000\r\n\r\n>>>stack>>>\r\n\r\nctx: cont\r\n\
             sp: 3ffffe20 end: 3fffffd0 offset: 0190\r\n3fffffb0:  "
        ),
        "{app:?}"
    );
    assert!(app.matches("Exception (28)").count() >= 2, "{app:?}");
    assert!(b.read_at(74_880).contains("rst cause:2, boot mode:(3,6)"));
    let report = triage::triage_bytes(&b.capture());
    assert_eq!(report.class, Class::ExceptionCrash, "{report:?}");

    // wdt-loop: the hardware watchdog every 8.2 s after setup.
    let mut b = with(Fault::WdtLoop);
    b.run(ms(8000));
    assert!(!b.read_at(74_880).contains("wdt reset"));
    b.run(ms(500));
    let rom = b.read_at(74_880);
    assert!(
        rom.contains(
            "\r\n ets Jan  8 2013,rst cause:4, boot mode:(3,6)\r\n\r\nwdt reset\r\nload 0x4010f000"
        ),
        "{rom:?}"
    );
    b.run(ms(9000));
    assert_eq!(b.read_at(74_880).matches("wdt reset").count(), 2);
    let report = triage::triage_bytes(&b.capture());
    assert_eq!(report.class, Class::HwWdtLoop, "{report:?}");

    // soft-wdt: the software watchdog's dump 3.2 s after setup, then rst cause 2.
    let mut b = with(Fault::SoftWdt);
    b.run(ms(3500));
    let app = b.read_at(115_200);
    assert!(app.contains("\r\nSoft WDT reset\r\n\r\n>>>stack>>>\r\n\r\nctx: cont\r\nsp: 3ffffda0 end: 3fffffd0 offset: 01a0\r\n"), "{app:?}");
    assert!(b.read_at(74_880).contains("rst cause:2, boot mode:(3,6)"));
    let report = triage::triage_bytes(&b.capture());
    assert_eq!(report.class, Class::SoftWdt, "{report:?}");

    // no-ota: UPDATE is entered but no service starts.
    let mut b = with(Fault::NoOta);
    b.run(ms(3000));
    enter_update(&mut b);
    assert!(b.status().contains("fw_state=UPDATE"));
    assert!(b.read_at(115_200).contains("state=UPDATE\r\n"));
    assert_eq!(b.net.get().service, None);
}

#[test]
fn hang_after_ota_runs_until_its_first_boot_after_an_update() {
    let mut old = Spec::new("1.0.0", OtaMethod::WebServer);
    old.fault = Some(Fault::HangAfterOta);
    let mut new = Spec::new("1.0.1", OtaMethod::WebServer);
    new.fault = Some(Fault::HangAfterOta);
    let mut b = Bench::new("sonoff-4ch", &old.build());
    b.power_on();
    b.run(ms(3000));
    assert!(b.status().contains("fw_state=RUN"));
    enter_update(&mut b);
    b.http_upload(&new.build());
    b.run(ms(2000));
    let app = b.read_at(115_200);
    assert!(!app.contains("version=1.0.1"), "{app:?}");
    assert!(b.read_at(74_880).contains("@cp:0\r\nld\r\n"));
    assert!(
        b.status().contains("version=1.0.1 fw_state=HUNG"),
        "{}",
        b.status()
    );
    // The next boot (not after an update) runs.
    b.chip.reset(super::chip::ResetKind::External);
    b.run(ms(500));
    assert!(
        b.read_at(115_200)
            .contains("version=1.0.1 ota=webserver state=RUN")
    );
}

#[test]
fn four_mb_layout_on_a_1mb_basic_stages_over_the_eeprom() {
    // Failure modes C + B, the seed's Basic attempt 1: an app linked for 4 MB (header 4MB) on
    // the 1 MB Basic, with a core whose Updater does not check flash sizes (before 2.1.0).
    let spec = |version| {
        let mut s = Spec::new(version, OtaMethod::Arduino);
        s.size = FlashSize::M4;
        s.core = "2.0.0";
        s.build()
    };
    let (old, new) = (spec("1.0.0"), spec("2.0.0"));
    let mut b = Bench::new("sonoff-basic", &old);
    let eeprom = 0xFB000u32;
    b.chip.hw.flash.program(eeprom, b"EEPROM config").unwrap();
    b.power_on();
    b.run(ms(3000));
    enter_update(&mut b);
    assert_eq!(arduino_upload(&mut b, &new), OtaReply::Ok);
    // Staged at FS_start(0x300000) - 32 KiB = 0x2F8000, which is 0xF8000 on a 1 MB chip.
    let staged = b.chip.hw.flash.read_vec(0xF8000, new.len()).unwrap();
    assert_eq!(staged, new);
    let at_eeprom = b.chip.hw.flash.read_vec(eeprom, 13).unwrap();
    assert_ne!(
        at_eeprom, b"EEPROM config",
        "the EEPROM sector was overwritten"
    );
    assert_eq!(
        EbootCommand::from_words(&b.chip.hw.rtc).unwrap().args[..3],
        [0x2F8000, 0, new.len() as u32]
    );
    // The restart (rst cause 1 on this core) and eboot's copy, which the user cuts short.
    b.chip.hw.faults.power_cut_during_copy = Some(CopyCut {
        sectors: 4,
        erased: false,
    });
    b.run(ms(1000));
    let text = b.read_at(74_880);
    assert!(
        text.contains(&format!(
            "\r\n ets Jan  8 2013,rst cause:1, boot mode:(3,6)\r\n\r\n{ROM_LINES}v"
        )) && text.ends_with("\r\n@cp:"),
        "{text:?}"
    );
    b.power_on();
    b.run(ms(1000));
    let report = triage::triage_bytes(&b.capture());
    assert_eq!(report.class, Class::OtaCopyIncomplete, "{report:?}");
    assert!(
        b.read_at(115_200).contains("Exception (3)"),
        "half-copied app crashes"
    );

    // Core 3.1.2 refuses at begin: the running header claims 4 MB on a 1 MB chip.
    let mut s = Spec::new("1.0.0", OtaMethod::Arduino);
    s.size = FlashSize::M4;
    let mut b = Bench::new("sonoff-basic", &s.build());
    b.power_on();
    b.run(ms(3000));
    enter_update(&mut b);
    assert_eq!(
        arduino_upload(&mut b, &new),
        OtaReply::Err(UpdaterError::FlashConfig {
            real: 1 << 20,
            sdk: 4 << 20
        })
    );
}

/// A board in download mode whose ROM has answered a SYNC.
fn synced_loader(board: &str) -> Bench {
    let mut b = Bench::new(board, &[]);
    b.chip.set_button(true);
    b.power_on();
    b.chip.on_rx(&Command::sync().to_slip(), 115_200);
    b.collect();
    b.out.clear();
    b
}

/// The frames the chip answered since the last call.
fn replies(b: &mut Bench) -> Vec<Vec<u8>> {
    b.collect();
    let bytes = b.capture();
    b.out.clear();
    let mut d = crate::flash::proto::SlipDecoder::new();
    d.push(&bytes).into_iter().map(Result::unwrap).collect()
}

#[test]
fn power_cut_during_flash_fires_after_the_nth_block_and_loses_its_reply() {
    let mut b = synced_loader("sonoff-basic");
    b.chip.hw.faults.power_cut_during_flash = Some(2);
    assert!(b.status().contains(" faults=flash-cut:2"), "{}", b.status());
    let begin = Command::from_words(Op::FlashBegin, &[0x2000, 2, 0x1000, 0]);
    b.chip.on_rx(&begin.to_slip(), 115_200);
    assert_eq!(replies(&mut b).len(), 1);
    b.chip.on_rx(
        &Command::data(Op::FlashData, &[0x11; 0x1000], 0).to_slip(),
        115_200,
    );
    assert_eq!(replies(&mut b).len(), 1, "block 1 is answered");
    b.chip.on_rx(
        &Command::data(Op::FlashData, &[0x22; 0x1000], 1).to_slip(),
        115_200,
    );
    assert!(replies(&mut b).is_empty(), "the reply to block 2 is lost");
    assert!(b.status().starts_with("power=off"), "{}", b.status());
    assert!(
        !b.status().contains("faults="),
        "fired once: {}",
        b.status()
    );
    // Both blocks reached the flash before the power went.
    assert_eq!(b.chip.hw.flash.read_vec(0x1000, 4).unwrap(), [0x22; 4]);

    // 0: right after FLASH_BEGIN's erase.
    let mut b = synced_loader("sonoff-4ch");
    b.chip.hw.flash.program(0, &[0u8; 16]).unwrap();
    b.chip.hw.faults.power_cut_during_flash = Some(0);
    b.chip.on_rx(&begin.to_slip(), 115_200);
    assert!(replies(&mut b).is_empty());
    assert!(b.status().starts_with("power=off"));
    assert!(b.chip.hw.flash.sector_is_blank(0).unwrap(), "erased first");
}

#[test]
fn rom_silent_never_answers_and_clears() {
    let mut b = Bench::new("sonoff-basic", &[]);
    b.chip.hw.faults.rom_silent = true;
    b.chip.set_button(true);
    b.power_on();
    assert!(
        b.read_at(74_880).contains("boot mode:(1,6)"),
        "the banner comes"
    );
    b.out.clear();
    for _ in 0..3 {
        b.chip.on_rx(&Command::sync().to_slip(), 115_200);
    }
    assert!(replies(&mut b).is_empty());
    assert!(b.status().contains("state=rom-download") && b.status().contains("rom-silent"));
    b.chip.hw.faults = Default::default();
    b.chip.on_rx(&Command::sync().to_slip(), 115_200);
    assert_eq!(replies(&mut b).len(), 8);
}

#[test]
fn app_silent_keeps_rom_and_eboot_lines_and_mutes_the_app() {
    let img = Spec::new("1.0.0", OtaMethod::WebServer).build();
    let mut b = Bench::new("sonoff-4ch", &img);
    b.chip.hw.faults.app_silent = true;
    b.power_on();
    b.run(Duration::from_secs(3));
    let rom = b.read_at(74_880);
    assert!(rom.ends_with("v00008000\r\n~ld\r\n"), "{rom:?}");
    assert!(!b.read_at(115_200).contains("HILFW"));
    let status = b.status();
    assert!(
        status.contains("fw_state=RUN") && status.contains("app-silent"),
        "the app runs: {status}"
    );
    // A power cycle: the ROM speaks again, the app stays silent.
    b.chip.power_off();
    b.out.clear();
    b.power_on();
    b.run(ms(500));
    assert!(b.read_at(74_880).contains("rst cause:1"));
    assert!(!b.read_at(115_200).contains("HILFW"));
}

#[test]
fn power_cut_during_ota_fires_once_the_updater_has_the_bytes() {
    let old = Spec::new("1.0.0", OtaMethod::WebServer).build();
    let mut b = Bench::new("sonoff-basic", &old);
    b.power_on();
    b.run(ms(3000));
    enter_update(&mut b);
    b.chip.hw.faults.power_cut_during_ota = Some(5000);
    let g = b.begin_http_upload();
    let new = Spec::new("2.0.0", OtaMethod::WebServer).build();
    assert_eq!(
        b.ota(g, OtaRequest::Write(new[..2048].to_vec())),
        OtaReply::Written(2048)
    );
    assert_eq!(
        b.ota(g, OtaRequest::Write(new[2048..4096].to_vec())),
        OtaReply::Written(2048)
    );
    let (tx, rx) = mpsc::channel();
    b.chip
        .on_ota(g, OtaRequest::Write(new[4096..6144].to_vec()), tx);
    assert!(b.status().starts_with("power=off"), "{}", b.status());
    assert!(rx.recv().is_err(), "the answer is lost with the power");
    assert!(!b.status().contains("ota-cut"));
    // Back on: nothing was staged for eboot, the old firmware boots.
    b.out.clear();
    b.power_on();
    b.run(ms(500));
    assert!(b.read_at(74_880).contains("~ld"));
    assert!(
        b.read_at(115_200)
            .contains("HILFW app=sonoff-ota version=1.0.0 ota=webserver state=RUN")
    );
}
