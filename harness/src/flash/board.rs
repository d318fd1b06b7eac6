//! Flashing a board held by a rig: download mode, write, reboot, verify. The driver the CLI and
//! the scenario runner call.
//!
//! It borrows the rig's lines and link (a driver in labgrid's sense, like the OTA client): the
//! rig's reset sequences put the board into the ROM loader and boot it afterwards, the
//! [`Flasher`] talks to the ROM in between, and the rig's capture supplies the lines the
//! verification reads. Nothing here knows whether the rig is hardware or the simulator.

use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use crate::board::BoardProfile;
use crate::bootlog::Banner;
use crate::capture::{CaptureEvent, Stage, Subscription};
use crate::image::{self, Identity};
use crate::rig::{Link, Rig, RigError, TimeScale};

use super::client::{
    After, ChipInfo, FlashError, FlashId, Flasher, Progress, SyncConfig, Timeouts, WriteSummary,
};
use super::verify::IdentityWatch;

/// How long a freshly flashed board may take to print its identity line, in device time: the
/// ROM, eboot and the app's start take well under a second; the rest is margin for slow boots
/// (an SDK calibrating RF after an erase).
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// What to do once the image is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterFlash {
    /// Power off, GPIO0 released, power on: a clean boot with the straps latched anew. The
    /// default, and the only way that leaves the board ready for OTA (failure-modes.md A).
    #[default]
    PowerCycle,
    /// esptool's ROM `--after soft-reset`: the ROM runs the firmware, but the boot mode stays
    /// latched in download mode, so the firmware's first restart hangs in the ROM loader
    /// (failure-modes.md A). For scenarios that reproduce that failure.
    SoftReset,
    /// Leave the chip in the ROM loader (esptool `--after no-reset`); nothing can be verified.
    Stay,
}

/// How [`flash_board`] flashes.
#[derive(Debug, Clone, PartialEq)]
pub struct FlashOptions {
    /// Flash offset of the image (0x0 for an Arduino .bin).
    pub offset: u32,
    /// Sync settings (the baud rate among them).
    pub sync: SyncConfig,
    /// Per-command timeouts.
    pub timeouts: Timeouts,
    /// What to do after the write.
    pub after: AfterFlash,
    /// Wait for the image's identity line after the reboot.
    pub verify: bool,
    /// How long to wait for it (device time; scaled by the rig's time scale).
    pub verify_timeout: Duration,
    /// Read the flash chip's JEDEC id and refuse a chip whose size is not the profile's.
    pub check_flash_size: bool,
}

impl Default for FlashOptions {
    fn default() -> Self {
        FlashOptions {
            offset: 0,
            sync: SyncConfig::default(),
            timeouts: Timeouts::default(),
            after: AfterFlash::PowerCycle,
            verify: true,
            verify_timeout: VERIFY_TIMEOUT,
            check_flash_size: true,
        }
    }
}

/// Whether and how the write was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The board printed the image's identity line after the reboot.
    Identity(Identity),
    /// Not verified, and why.
    Skipped(&'static str),
}

/// What [`flash_board`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashReport {
    /// The ROM banner seen when entering download mode.
    pub banner: Option<Banner>,
    /// The chip.
    pub chip: ChipInfo,
    /// The flash chip's JEDEC id, when read.
    pub flash_id: Option<FlashId>,
    /// The write.
    pub write: WriteSummary,
    /// The verification.
    pub verification: Verification,
    /// Wall time from the first reset to the verdict.
    pub elapsed: Duration,
}

/// Flashes `image` at `options.offset` on the rig's board: download mode through the rig
/// (GPIO0 held across a power-on), sync, chip and flash checks against the board profile,
/// write, then `options.after`, and, unless told otherwise, waits for the identity line.
///
/// Board failures (no sync, ROM errors, wrong chip, verification) are `Err` with
/// [`FlashError::is_dut_failure`]; rig failures are [`FlashError::Rig`]. The rig's safety
/// guard still releases GPIO0 whatever happens.
pub fn flash_board(
    rig: &mut dyn Rig,
    image: &[u8],
    options: &FlashOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<FlashReport, FlashError> {
    let started = Instant::now();
    let board = rig.board();
    check_fits(board, options.offset, image)?;
    let expected = expected_identity(image);
    let banner = rig.enter_download_mode()?;
    // Subscribed before the ROM runs anything, so a soft-reset boot is not missed either.
    let lines = rig.capture().subscribe();
    let written = write_image(rig.link(), board, image, options, banner, progress)?;
    match options.after {
        AfterFlash::PowerCycle => rig.power_cycle_run()?,
        // The ROM now boots the app without a reset, and its UART keeps the rate the loader
        // locked onto: eboot and the app print at the loader's rate, here the app's rate too.
        // The next reset brings the ROM's 74880 back, so the capture follows from the app stage.
        AfterFlash::SoftReset => rig
            .capture()
            .follow_at(Stage::App)
            .map_err(RigError::from)?,
        AfterFlash::Stay => {}
    }
    let verification = match (options.verify, options.after, expected) {
        (false, _, _) => Verification::Skipped("not asked for"),
        (true, AfterFlash::Stay, _) => Verification::Skipped("the board stays in the ROM loader"),
        (true, _, None) => Verification::Skipped("the image has no identity record"),
        (true, _, Some(expected)) => Verification::Identity(wait_identity(
            &lines,
            expected,
            options.verify_timeout,
            rig.time_scale(),
        )?),
    };
    Ok(FlashReport {
        banner,
        chip: written.chip,
        flash_id: written.flash_id,
        write: written.write,
        verification,
        elapsed: started.elapsed(),
    })
}

/// What [`write_image`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The chip.
    pub chip: ChipInfo,
    /// The flash chip's JEDEC id, when read.
    pub flash_id: Option<FlashId>,
    /// The write.
    pub write: WriteSummary,
}

/// The ROM loader part of [`flash_board`], for a board already in download mode behind `link`
/// (a bare port): sync, chip and flash checks against `board`, write, then
/// [`After::SoftReset`] if `options.after` asks for it (otherwise the chip stays in the ROM).
/// `banner` is the ROM banner seen when the board was reset, if any (for the no-sync hint).
pub fn write_image(
    link: &mut dyn Link,
    board: &BoardProfile,
    image: &[u8],
    options: &FlashOptions,
    banner: Option<Banner>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Written, FlashError> {
    check_fits(board, options.offset, image)?;
    let sync = SyncConfig {
        banner,
        ..options.sync.clone()
    };
    let mut f = Flasher::connect_with(link, &sync, options.timeouts)?;
    let chip = f.detect_chip()?;
    if chip.chip != board.chip {
        return Err(FlashError::ChipMismatch {
            board: board.id.clone(),
            expected: board.chip,
            detected: chip.description,
        });
    }
    f.attach_flash()?;
    let flash_id = if options.check_flash_size {
        let id = f.flash_id()?;
        if let Some(size) = id.size()
            && size != board.flash_size
        {
            return Err(FlashError::FlashSizeMismatch {
                board: board.id.clone(),
                expected: board.flash_size,
                detected: size,
                id,
            });
        }
        Some(id)
    } else {
        None
    };
    let write = f.write_flash(options.offset, image, progress)?;
    f.finish(if options.after == AfterFlash::SoftReset {
        After::SoftReset
    } else {
        After::NoReset
    })?;
    Ok(Written {
        chip,
        flash_id,
        write,
    })
}

/// The identity record embedded in `image`, if it is a firmware file that has one.
pub fn expected_identity(image: &[u8]) -> Option<Identity> {
    image::parse_firmware(image)
        .ok()
        .and_then(|fw| fw.identity().cloned())
}

/// Waits up to `timeout` of device time (real time = `scale` × device time) for `lines` to show
/// `expected`'s identity line.
pub fn wait_identity(
    lines: &Subscription,
    expected: Identity,
    timeout: Duration,
    scale: TimeScale,
) -> Result<Identity, FlashError> {
    let mut watch = IdentityWatch::new(expected);
    let deadline = Instant::now() + scale.real(timeout);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(CaptureEvent::Line { text, .. }) => {
                if let Some(verdict) = watch.line(&text) {
                    return verdict;
                }
            }
            Ok(CaptureEvent::Index(_)) => {}
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                return Err(watch.timed_out(timeout));
            }
        }
    }
}

fn check_fits(board: &BoardProfile, offset: u32, image: &[u8]) -> Result<(), FlashError> {
    if u64::from(offset) + image.len() as u64 > u64::from(board.flash_size) {
        return Err(FlashError::ImageTooBig {
            offset,
            len: image.len(),
            flash_size: board.flash_size,
        });
    }
    Ok(())
}
