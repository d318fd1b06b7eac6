//! Hardware-in-the-loop checks of a real rig. Ignored by default; on the Pi runner:
//!
//! ```sh
//! HIL_RIG=scenarios/rigs/pi.toml HIL_BOARD=basic \
//!     cargo test --features gpio --test rig_hardware -- --ignored
//! ```

use std::path::PathBuf;
use std::time::Duration;

use harness::bootlog::{BootSource, Event};
use harness::capture::CaptureEvent;
use harness::rig::{self, OpenOptions, Rig, RigConfig};

fn board() -> (RigConfig, String) {
    let rig = PathBuf::from(std::env::var_os("HIL_RIG").expect("set HIL_RIG to a rig file"));
    let name = std::env::var("HIL_BOARD").expect("set HIL_BOARD to a board name in HIL_RIG");
    (RigConfig::load(&rig).expect("HIL_RIG loads"), name)
}

#[test]
#[ignore = "needs a rig (HIL_RIG, HIL_BOARD)"]
fn download_mode_and_flash_boot_show_in_the_banner() {
    let (config, name) = board();
    let mut rig = rig::open(config.board(&name).unwrap(), &OpenOptions::default()).unwrap();
    let banner = rig
        .enter_download_mode()
        .unwrap()
        .expect("the ROM banner at 74880 after power-on");
    assert_eq!(
        banner.boot_mode.map(|m| m.source()),
        Some(BootSource::UartDownload)
    );
    let sub = rig.capture().subscribe();
    rig.power_cycle_run().unwrap();
    let source = sub.wait_for(Duration::from_secs(2), |e| match e {
        CaptureEvent::Line { events, .. } => events.iter().find_map(|e| match e {
            Event::RomBanner(b) => b.boot_mode.map(|m| m.source()),
            _ => None,
        }),
        _ => None,
    });
    assert_eq!(source, Some(BootSource::Flash));
}
