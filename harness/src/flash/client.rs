//! The ESP8266 ROM loader client: sync, chip detection, flash ID, erase and write, over any
//! [`Link`].
//!
//! L1: it borrows a byte pipe (a serial port through the rig's capture, the simulator's pty, or a
//! [`crate::rig::ScriptedLink`] in tests) and speaks the protocol of [`super::proto`]. It never
//! touches power or GPIO0: putting the board into download mode and power-cycling it afterwards
//! is the caller's job ([`super::flash_board`] does both through a rig).
//!
//! Why written by hand: no maintained Rust crate speaks the ESP8266 ROM loader protocol
//! (espflash dropped the chip in 3.0), and what a Sonoff needs is small. The command sequences
//! follow esptool 5.6.0 with `--no-stub` (shared docs protocols.md §A, §A2), so the ROM sees what
//! it sees from esptool:
//!
//! - [`Flasher::connect`]: SYNC with retries (esptool `connect`: 7 attempts × 5 SYNC frames, the
//!   first reply awaited 100 ms, 50 ms between tries); the ROM answers one SYNC 8 times and the
//!   extra replies are drained.
//! - [`Flasher::detect_chip`]: the magic register 0x40001000, then the four eFuse words (ESP8266
//!   or ESP8285, MAC, chip ID) and the UART divider (crystal), as esptool `targets/esp8266.py`.
//! - [`Flasher::attach_flash`]: `FLASH_BEGIN(0, 0, 0x400, 0)`, esptool's attach under the ROM
//!   (the ROM has no SPI_ATTACH).
//! - [`Flasher::flash_id`]: JEDEC RDID through the SPI user-command registers (esptool
//!   `run_spiflash_command`).
//! - [`Flasher::write_flash`]: FLASH_BEGIN with the ROM erase-size quirk ([`rom_erase_size`]),
//!   FLASH_DATA in 0x400-byte blocks with checksums, each tried up to 3 times.
//! - [`Flasher::finish`]: nothing ([`After::NoReset`], the default: the caller power-cycles, see
//!   failure-modes.md A) or esptool's ROM soft reset ([`After::SoftReset`]).
//!
//! The ESP8266 ROM has no read-back and no MD5, so a write cannot be verified here; the
//! caller verifies by booting the image and matching its identity line ([`super::verify`]).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::board::Chip;
use crate::bootlog::{Banner, BootSource};
use crate::image::Identity;
use crate::rig::{Link, RigError};

use super::proto::{
    Command, DEFAULT_TIMEOUT, ERASE_REGION_TIMEOUT_PER_MB, ESP_ROM_BAUD, FLASH_SECTOR_SIZE, Op,
    ROM_FLASH_BLOCK, Response, RomError, SYNC_REPLIES, SYNC_TIMEOUT, SlipDecoder, reg, spi_flash,
};

/// Connect attempts (esptool `DEFAULT_CONNECT_ATTEMPTS`).
pub const CONNECT_ATTEMPTS: u32 = 7;
/// SYNC frames per connect attempt (esptool `_connect_attempt`).
pub const SYNCS_PER_ATTEMPT: u32 = 5;
/// Pause after a SYNC that got no reply (esptool `_connect_attempt`).
pub const SYNC_RETRY_DELAY: Duration = Duration::from_millis(50);
/// Tries per FLASH_DATA block (esptool `WRITE_BLOCK_ATTEMPTS`).
pub const WRITE_BLOCK_ATTEMPTS: u32 = 3;
/// Frames read while waiting for one reply before giving up (esptool `command`).
const MAX_SKIPPED_FRAMES: usize = 100;
/// Quiet time that ends the draining of the ROM's 7 extra SYNC replies.
const SYNC_DRAIN_QUIET: Duration = Duration::from_millis(100);
/// Polls of the SPI command register before a user command counts as hung
/// (esptool `run_spiflash_command`).
const SPI_POLLS: u32 = 10;
/// Bytes of non-protocol output kept while syncing, to tell the user what the board said.
const NOISE_KEEP: usize = 2048;
/// The ROM's 64 KiB erase block, in sectors (esptool `get_erase_size`).
const SECTORS_PER_BLOCK: u32 = 16;

/// FLASH_BEGIN's `erase_size` for writing `size` bytes at `offset` through the ESP8266 ROM.
///
/// The ROM's erase routine counts the sectors up to the next 64 KiB boundary twice, so asking
/// for the real size erases too much (and may erase what follows). esptool
/// (`ESP8266ROM.get_erase_size`) sends a size the bug turns back into the right one: with
/// `n = ceil(size / 4096)` sectors and `head = min(16 − (offset / 4096) mod 16, n)` sectors
/// before the boundary, `ceil(n / 2)` sectors when `n < 2 × head`, else `n − head`.
pub fn rom_erase_size(offset: u32, size: u32) -> u32 {
    let sectors = size.div_ceil(FLASH_SECTOR_SIZE);
    let start_sector = offset / FLASH_SECTOR_SIZE;
    let head = (SECTORS_PER_BLOCK - start_sector % SECTORS_PER_BLOCK).min(sectors);
    if sectors < 2 * head {
        sectors.div_ceil(2) * FLASH_SECTOR_SIZE
    } else {
        (sectors - head) * FLASH_SECTOR_SIZE
    }
}

/// Per-command timeouts (protocols.md §A).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Every command but FLASH_BEGIN (esptool `DEFAULT_TIMEOUT`, 3 s).
    pub command: Duration,
    /// FLASH_BEGIN erases up front under the ROM: this much per (decimal) megabyte of data,
    /// never less than `command` (esptool `ERASE_REGION_TIMEOUT_PER_MB`, 40 s).
    pub erase_per_mb: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: DEFAULT_TIMEOUT,
            erase_per_mb: ERASE_REGION_TIMEOUT_PER_MB,
        }
    }
}

impl Timeouts {
    /// The FLASH_BEGIN timeout for writing `size` bytes (esptool `timeout_per_mb`).
    pub fn flash_begin(&self, size: u32) -> Duration {
        self.erase_per_mb
            .mul_f64(f64::from(size) / 1e6)
            .max(self.command)
    }
}

/// How [`Flasher::connect`] syncs.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// The rate to talk at; the ROM measures it from the first SYNC (autobaud).
    pub baud: u32,
    /// Connect attempts.
    pub attempts: u32,
    /// SYNC frames per attempt.
    pub syncs_per_attempt: u32,
    /// How long to wait for the first reply to one SYNC.
    pub reply_timeout: Duration,
    /// Pause after a SYNC without reply.
    pub retry_delay: Duration,
    /// The ROM banner the caller saw when it reset the board (at 74880 baud, before syncing),
    /// if any: it turns "no reply" into a precise hint.
    pub banner: Option<Banner>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            baud: ESP_ROM_BAUD,
            attempts: CONNECT_ATTEMPTS,
            syncs_per_attempt: SYNCS_PER_ATTEMPT,
            reply_timeout: SYNC_TIMEOUT,
            retry_delay: SYNC_RETRY_DELAY,
            banner: None,
        }
    }
}

/// What came back while SYNC went unanswered: the basis of the remedy shown to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncHint {
    /// Not one byte came back.
    Silent,
    /// The board runs its firmware: its ROM banner said boot mode 3, or readable text came back.
    RunningFirmware,
    /// The ROM banner said download mode (boot mode 1), yet SYNC got no reply.
    DownloadBannerNoReply,
    /// Bytes came back, but neither protocol replies nor readable text.
    Noise,
}

impl fmt::Display for SyncHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncHint::Silent => {
                "nothing came back: check that the board is powered, the port, and that TX/RX \
                 are not swapped (4CH R1 silkscreen: the pin next to VCC33 is RX); for the ROM \
                 loader hold GPIO0 low while powering on; release after the banner"
            }
            SyncHint::RunningFirmware => {
                "the board runs its firmware, not the ROM loader: hold GPIO0 low while powering \
                 on; release after the banner (on a rig: check the GPIO0 line and its wiring)"
            }
            SyncHint::DownloadBannerNoReply => {
                "74880 banner seen but no SYNC reply: wrong port? The ROM is in download mode but \
                 what the harness sends does not reach it: check the harness TX to board RX wire \
                 and that TX/RX are not swapped (4CH R1 silkscreen)"
            }
            SyncHint::Noise => {
                "bytes came back but no SYNC reply: the board is not in download mode or the rate \
                 is wrong; hold GPIO0 low while powering on; release after the banner"
            }
        })
    }
}

/// When the write is done: what to leave the chip doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum After {
    /// Nothing: the chip stays in the ROM loader (esptool `--after no-reset`). The harness then
    /// power-cycles with GPIO0 released, which also clears the latched boot mode
    /// (failure-modes.md A).
    #[default]
    NoReset,
    /// esptool's ROM `--after soft-reset`: `FLASH_BEGIN(0, 0)` + `FLASH_END(1)`, the ROM runs the
    /// firmware at once, but the boot mode stays latched at 1, so the firmware's first restart
    /// lands in the ROM loader again (failure-modes.md A). For reproducing that failure.
    SoftReset,
}

/// What [`Flasher::detect_chip`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChipInfo {
    /// ESP8266 or ESP8285.
    pub chip: Chip,
    /// esptool's name: `ESP8266EX`, `ESP8285N08`, `ESP8285H16`, ...
    pub description: &'static str,
    /// The station MAC address.
    pub mac: [u8; 6],
    /// The SDK's chip ID (`system_get_chip_id`).
    pub chip_id: u32,
    /// Crystal frequency in MHz (26 or 40), estimated from the UART divider.
    pub crystal_mhz: u32,
    /// Embedded flash size of an ESP8285 from its eFuses, in bytes.
    pub embedded_flash: Option<u32>,
    /// The eFuse words at 0x3FF00050, …54, …58, …5C.
    pub efuses: [u32; 4],
}

impl ChipInfo {
    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Decodes the eFuse words as esptool `ESP8266ROM` does; `None` for an unknown MAC OUI.
    pub fn from_efuses(efuses: [u32; 4], crystal_mhz: u32) -> Option<ChipInfo> {
        let [mac0, mac1, mac2, mac3] = efuses;
        let bits = u128::from(mac3) << 96
            | u128::from(mac2) << 64
            | u128::from(mac1) << 32
            | u128::from(mac0);
        let bit = |n: u32| bits & (1u128 << n) != 0;
        let oui = if mac3 != 0 {
            [(mac3 >> 16) as u8, (mac3 >> 8) as u8, mac3 as u8]
        } else {
            match (mac1 >> 16) & 0xFF {
                0 => [0x18, 0xFE, 0x34],
                1 => [0xAC, 0xD0, 0x74],
                _ => return None,
            }
        };
        let mac = [
            oui[0],
            oui[1],
            oui[2],
            (mac1 >> 8) as u8,
            mac1 as u8,
            (mac0 >> 24) as u8,
        ];
        let is_8285 = bit(4) || bit(80);
        let embedded_mb = match (bit(4), bit(121), bit(122), bit(123)) {
            (true, false, false, false) => Some(1),
            (true, false, true, false) => Some(2),
            (false, true, false, false) => Some(2),
            (false, true, true, false) => Some(4),
            _ => None,
        };
        let max_temp = bit(5);
        let (chip, description, embedded_flash) = if is_8285 {
            let description = match (embedded_mb, max_temp) {
                (Some(1), false) => "ESP8285N08",
                (Some(1), true) => "ESP8285H08",
                (Some(2), false) => "ESP8285N16",
                (Some(2), true) => "ESP8285H16",
                _ => "ESP8285",
            };
            (
                Chip::Esp8285,
                description,
                embedded_mb.map(|mb: u32| mb << 20),
            )
        } else {
            (Chip::Esp8266, "ESP8266EX", None)
        };
        Some(ChipInfo {
            chip,
            description,
            mac,
            chip_id: (mac0 >> 24) | ((mac1 & 0xFF_FFFF) << 8),
            crystal_mhz,
            embedded_flash,
            efuses,
        })
    }
}

/// The SPI flash's JEDEC id as RDID returns it: manufacturer in the low byte, then memory type,
/// then capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashId(pub u32);

impl FlashId {
    /// Manufacturer code (0xC8 GigaDevice, 0xEF Winbond, ...).
    pub fn manufacturer(self) -> u8 {
        self.0 as u8
    }

    /// Device id the way esptool prints it (memory type, then capacity: `0x4014`).
    pub fn device(self) -> u16 {
        (((self.0 >> 8) & 0xFF) << 8 | ((self.0 >> 16) & 0xFF)) as u16
    }

    /// The size the capacity byte stands for (esptool `DETECTED_FLASH_SIZES`), if known.
    pub fn size(self) -> Option<u32> {
        let capacity = (self.0 >> 16) & 0xFF;
        match capacity {
            0x12..=0x1C => Some(1 << capacity),
            0x32..=0x3A => Some(1 << (capacity - 0x20)),
            _ => None,
        }
    }
}

impl fmt::Display for FlashId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "manufacturer {:#04x}, device {:#06x}",
            self.manufacturer(),
            self.device()
        )?;
        if let Some(size) = self.size() {
            write!(f, " ({})", size_text(size))?;
        }
        Ok(())
    }
}

/// `1MB`, `512KB`, or bytes.
pub(crate) fn size_text(bytes: u32) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{}MB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{}KB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// Progress of a write: bytes acknowledged by the ROM out of the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes written so far.
    pub written: u64,
    /// Bytes to write (after alignment and padding).
    pub total: u64,
}

/// What [`Flasher::write_flash`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// Where the write started (the offset aligned down to a 4 KiB sector).
    pub offset: u32,
    /// Bytes written (0xFF before an unaligned offset, padding to 4 bytes included).
    pub bytes: u32,
    /// FLASH_DATA blocks sent.
    pub blocks: u32,
    /// The `erase_size` FLASH_BEGIN carried.
    pub erase_size: u32,
    /// Blocks that had to be sent again.
    pub retries: u32,
    /// Time from FLASH_BEGIN to the last block's reply.
    pub elapsed: Duration,
}

/// Errors of the serial flasher.
///
/// Everything but [`FlashError::Rig`] is the board's (or the image's) fault: see
/// [`FlashError::is_dut_failure`].
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum FlashError {
    /// SYNC never got a reply.
    #[error(
        "no SYNC reply from the ROM loader after {tries} SYNC frames ({received} bytes came back)"
    )]
    #[diagnostic(code(harness::flash::no_sync), help("{hint}"))]
    NoSync {
        /// SYNC frames sent.
        tries: u32,
        /// Bytes received meanwhile (none of them a reply).
        received: usize,
        /// What that suggests.
        hint: SyncHint,
    },
    /// SYNC was answered the way an esptool flasher stub answers, not the ROM.
    #[error("an esptool flasher stub answered SYNC, not the ROM loader")]
    #[diagnostic(
        code(harness::flash::stub_running),
        help(
            "a stub from an earlier esptool session is still running: power-cycle the board into \
             download mode (hold GPIO0 low while powering on; release after the banner)"
        )
    )]
    StubRunning,
    /// A command got no reply in time.
    #[error("no reply to {command} within {timeout:.1?}")]
    #[diagnostic(
        code(harness::flash::timeout),
        help(
            "the board stopped answering: check the 3.3 V supply (a brown-out during erase or \
             write resets the chip, failure-modes F) and the serial wiring, then power-cycle into \
             download mode and try again"
        )
    )]
    Timeout {
        /// The command.
        command: Op,
        /// How long it was given.
        timeout: Duration,
    },
    /// The ROM answered with an error status.
    #[error("{command} failed: the ROM answered `{error}`")]
    #[diagnostic(code(harness::flash::rom_error), help("{}", rom_help(*error)))]
    Rom {
        /// The command.
        command: Op,
        /// The ROM's error code.
        error: RomError,
    },
    /// The ROM said it does not know the command (a reply with another op and error 0x05).
    #[error("the ROM loader does not support {command}")]
    #[diagnostic(code(harness::flash::unsupported))]
    Unsupported {
        /// The command.
        command: Op,
    },
    /// A reply too short to hold the status bytes.
    #[error("{command}: reply with {len} data bytes has no status")]
    #[diagnostic(code(harness::flash::short_reply))]
    ShortReply {
        /// The command.
        command: Op,
        /// Data bytes in the reply.
        len: usize,
    },
    /// Replies kept coming, none for the command.
    #[error("{MAX_SKIPPED_FRAMES} replies came back, none for {command}")]
    #[diagnostic(code(harness::flash::no_matching_reply))]
    NoMatchingReply {
        /// The command.
        command: Op,
    },
    /// The magic register does not hold the ESP8266 value.
    #[error(
        "not an ESP8266/ESP8285: register 0x40001000 reads {magic:#010x}, expected {:#010x}",
        reg::ESP8266_MAGIC
    )]
    #[diagnostic(
        code(harness::flash::not_esp8266),
        help("another Espressif chip answers on this port: check the port and the board")
    )]
    NotEsp8266 {
        /// The value read.
        magic: u32,
    },
    /// The eFuse MAC words name no OUI esptool knows.
    #[error("the eFuses hold no known MAC OUI (word 0x3FF00054 = {mac1:#010x})")]
    #[diagnostic(code(harness::flash::unknown_oui))]
    UnknownOui {
        /// eFuse word 1.
        mac1: u32,
    },
    /// An SPI flash user command did not complete.
    #[error("the SPI flash controller did not finish command {opcode:#04x}")]
    #[diagnostic(
        code(harness::flash::spi_timeout),
        help("the flash chip does not respond: check the board's supply; power-cycle and retry")
    )]
    SpiTimeout {
        /// The flash opcode.
        opcode: u8,
    },
    /// The chip is not the one the board profile names.
    #[error("the chip is an {detected}, but board profile `{board}` says {expected}")]
    #[diagnostic(
        code(harness::flash::chip_mismatch),
        help(
            "flash with the profile of the board that is wired (--kind, or the rig file's `kind`); \
             a Sonoff Basic R2/R3 has an ESP8285, an R1 an ESP8266"
        )
    )]
    ChipMismatch {
        /// The profile.
        board: String,
        /// What the profile says.
        expected: Chip,
        /// What the chip says (esptool's name).
        detected: &'static str,
    },
    /// The flash chip's size is not the one the board profile names.
    #[error(
        "the flash chip is {} ({id}), but board profile `{board}` says {}",
        size_text(*detected),
        size_text(*expected)
    )]
    #[diagnostic(
        code(harness::flash::flash_size_mismatch),
        help(
            "use the profile of the hardware that is wired; a build for a bigger flash wraps \
             around on a smaller chip and overwrites EEPROM and SDK sectors (failure-modes C)"
        )
    )]
    FlashSizeMismatch {
        /// The profile.
        board: String,
        /// The profile's size.
        expected: u32,
        /// The size RDID reports.
        detected: u32,
        /// The JEDEC id.
        id: FlashId,
    },
    /// The data does not fit in the flash.
    #[error("{len} bytes at {offset:#x} do not fit in {} of flash", size_text(*flash_size))]
    #[diagnostic(
        code(harness::flash::too_big),
        help("build a smaller image or use the 1 MB layout (`harness image inspect --board ...`)")
    )]
    ImageTooBig {
        /// Where the data would start.
        offset: u32,
        /// Its length.
        len: usize,
        /// The flash size.
        flash_size: u32,
    },
    /// After the reboot the board announced another firmware.
    #[error("after the reboot the board printed `{got}`, expected `{expected}`")]
    #[diagnostic(
        code(harness::flash::verify_mismatch),
        help(
            "the board boots another image: the write did not take (check the supply during \
             erase and write, failure-modes F), or an older copy is what runs"
        )
    )]
    VerifyMismatch {
        /// The identity of the image written.
        expected: Box<Identity>,
        /// The identity the board printed.
        got: Box<Identity>,
    },
    /// The board did not print the image's identity line in time after the reboot (device time:
    /// a simulated board may run faster than real time).
    #[error(
        "no identity line within {waited:.1?} after the reboot (expected `{expected}`); \
         triage of what the board printed: {seen}"
    )]
    #[diagnostic(
        code(harness::flash::verify_timeout),
        help(
            "the image was written but does not boot to its identity line: look at the capture \
             (`harness triage FILE`); a boot loop right after a serial flash points at the flash \
             mode or size in the header (failure-modes C, D)"
        )
    )]
    VerifyTimeout {
        /// The identity of the image written.
        expected: Box<Identity>,
        /// How long the harness waited, in device time.
        waited: Duration,
        /// Triage of the output seen meanwhile (class: summary).
        seen: String,
    },
    /// The link or the rig failed (a harness failure, not the board's).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Rig(#[from] RigError),
}

impl FlashError {
    /// Whether the board (or the image) failed, as opposed to the harness (port, rig).
    pub fn is_dut_failure(&self) -> bool {
        !matches!(self, FlashError::Rig(_))
    }
}

fn rom_help(error: RomError) -> &'static str {
    match error {
        RomError::BadChecksum => {
            "bytes were corrupted on the way to the chip: check the wiring and the common ground, \
             keep the serial leads short, or try a lower --baud"
        }
        RomError::FlashWrite | RomError::FlashRead | RomError::FlashReadLength => {
            "the flash could not be erased, written or read: check the 3.3 V supply (≥ 500 mA with \
             a bulk capacitor, failure-modes F), then power-cycle into download mode and retry"
        }
        RomError::InvalidMessage => {
            "the ROM did not understand the command (a corrupted packet?): power-cycle into \
             download mode and try again"
        }
        _ => {
            "the ROM could not carry out the command: power-cycle into download mode and try again"
        }
    }
}

/// A ROM loader session over a link. See the module docs for the order of calls.
pub struct Flasher<'a> {
    link: &'a mut dyn Link,
    decoder: SlipDecoder,
    frames: VecDeque<Vec<u8>>,
    timeouts: Timeouts,
    /// Bytes received while syncing (to explain a failed sync); capped at [`NOISE_KEEP`].
    noise: Vec<u8>,
    received: usize,
}

impl fmt::Debug for Flasher<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flasher")
            .field("baud", &self.link.baud())
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl<'a> Flasher<'a> {
    /// Sets the link to `config.baud` and syncs with the ROM loader; the board must already be
    /// in download mode. Uses the default [`Timeouts`].
    pub fn connect(link: &'a mut dyn Link, config: &SyncConfig) -> Result<Self, FlashError> {
        Self::connect_with(link, config, Timeouts::default())
    }

    /// As [`connect`](Self::connect), with other timeouts.
    pub fn connect_with(
        link: &'a mut dyn Link,
        config: &SyncConfig,
        timeouts: Timeouts,
    ) -> Result<Self, FlashError> {
        link.set_baud(config.baud)?;
        let mut f = Flasher {
            link,
            decoder: SlipDecoder::new(),
            frames: VecDeque::new(),
            timeouts,
            noise: Vec::new(),
            received: 0,
        };
        f.sync(config)?;
        Ok(f)
    }

    fn sync(&mut self, config: &SyncConfig) -> Result<(), FlashError> {
        let mut tries = 0;
        for _ in 0..config.attempts {
            for _ in 0..config.syncs_per_attempt {
                tries += 1;
                self.link.discard_input()?;
                self.decoder.reset();
                self.frames.clear();
                self.send(&Command::sync())?;
                match self.read_response(Op::Sync, config.reply_timeout) {
                    Ok(first) => {
                        tracing::debug!(tries, value = first.value, "SYNC answered");
                        let mut stub = first.value == 0;
                        let mut seen = 1;
                        while seen < SYNC_REPLIES {
                            match self.read_response(Op::Sync, SYNC_DRAIN_QUIET) {
                                Ok(r) => {
                                    stub &= r.value == 0;
                                    seen += 1;
                                }
                                Err(FlashError::Rig(e)) => return Err(e.into()),
                                Err(_) => break,
                            }
                        }
                        // The ROM sends a value ≠ 0; a stub sends 0 (esptool `sync`).
                        if stub {
                            return Err(FlashError::StubRunning);
                        }
                        return Ok(());
                    }
                    Err(FlashError::Rig(e)) => return Err(e.into()),
                    Err(e) => {
                        tracing::trace!(tries, "SYNC: {e}");
                        std::thread::sleep(config.retry_delay);
                    }
                }
            }
        }
        Err(FlashError::NoSync {
            tries,
            received: self.received,
            hint: classify_silence(config.banner.as_ref(), &self.noise, self.received),
        })
    }

    fn send(&mut self, cmd: &Command) -> Result<(), FlashError> {
        self.link.write_all(&cmd.to_slip())?;
        Ok(())
    }

    /// The next SLIP frame, or `None` once `deadline` has passed.
    fn next_frame(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>, FlashError> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.frames.pop_front() {
                return Ok(Some(f));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // A link's read waits up to `left`; 0 bytes means the time has passed.
            let n = self.link.read(&mut buf, left)?;
            if n == 0 {
                return Ok(None);
            }
            self.received += n;
            if self.noise.len() < NOISE_KEEP {
                let take = n.min(NOISE_KEEP - self.noise.len());
                self.noise.extend_from_slice(&buf[..take]);
            }
            for item in self.decoder.push(&buf[..n]) {
                match item {
                    Ok(frame) => self.frames.push_back(frame),
                    Err(e) => tracing::debug!("dropped a broken SLIP frame: {e}"),
                }
            }
        }
    }

    /// Waits for the reply to `op` the way esptool's `command` does: frames that are not
    /// responses, or answer another command, are skipped (up to 100).
    fn read_response(&mut self, op: Op, timeout: Duration) -> Result<Response, FlashError> {
        let deadline = Instant::now() + timeout;
        for _ in 0..MAX_SKIPPED_FRAMES {
            let Some(frame) = self.next_frame(deadline)? else {
                return Err(FlashError::Timeout {
                    command: op,
                    timeout,
                });
            };
            let Ok(r) = Response::parse(&frame) else {
                continue;
            };
            if r.op == op {
                return Ok(r);
            }
            if r.data.len() >= 2
                && r.data[0] != 0
                && RomError::from(r.data[1]) == RomError::InvalidMessage
            {
                return Err(FlashError::Unsupported { command: op });
            }
        }
        Err(FlashError::NoMatchingReply { command: op })
    }

    /// Sends `cmd`, waits for its reply and checks the ROM status; returns the reply's value.
    fn check(&mut self, cmd: &Command, timeout: Duration) -> Result<u32, FlashError> {
        self.send(cmd)?;
        let r = self.read_response(cmd.op, timeout)?;
        match r.rom_result(0) {
            Some(Ok(())) => Ok(r.value),
            Some(Err(error)) => Err(FlashError::Rom {
                command: cmd.op,
                error,
            }),
            None => Err(FlashError::ShortReply {
                command: cmd.op,
                len: r.data.len(),
            }),
        }
    }

    /// Reads a 32-bit register (READ_REG).
    pub fn read_reg(&mut self, addr: u32) -> Result<u32, FlashError> {
        self.check(&Command::read_reg(addr), self.timeouts.command)
    }

    /// Writes a 32-bit register (WRITE_REG, all bits, no delay).
    pub fn write_reg(&mut self, addr: u32, value: u32) -> Result<(), FlashError> {
        self.check(
            &Command::write_reg(addr, value, 0xFFFF_FFFF, 0),
            self.timeouts.command,
        )
        .map(drop)
    }

    /// Tells the chip family, reads the eFuses (ESP8266 or ESP8285, MAC, chip ID) and estimates
    /// the crystal, as esptool does.
    pub fn detect_chip(&mut self) -> Result<ChipInfo, FlashError> {
        let magic = self.read_reg(reg::CHIP_DETECT_MAGIC)?;
        if magic != reg::ESP8266_MAGIC {
            return Err(FlashError::NotEsp8266 { magic });
        }
        // esptool's order (`get_efuses`): word 3 first.
        let mac3 = self.read_reg(reg::EFUSE_MAC3)?;
        let mac2 = self.read_reg(reg::EFUSE_MAC2)?;
        let mac1 = self.read_reg(reg::EFUSE_MAC1)?;
        let mac0 = self.read_reg(reg::EFUSE_MAC0)?;
        let divider = self.read_reg(reg::UART_CLKDIV)? & reg::UART_CLKDIV_MASK;
        // esptool `get_crystal_freq`: baud × divider / 2 (XTAL_CLK_DIVIDER), then 26 or 40.
        let estimate = f64::from(self.link.baud()) * f64::from(divider) / 1e6 / 2.0;
        let crystal_mhz = if estimate > 33.0 { 40 } else { 26 };
        ChipInfo::from_efuses([mac0, mac1, mac2, mac3], crystal_mhz)
            .ok_or(FlashError::UnknownOui { mac1 })
    }

    /// Attaches the SPI flash: `FLASH_BEGIN(0, 0, 0x400, 0)`, which is how esptool does it under
    /// the ROM (no SPI_ATTACH there). Nothing is erased.
    pub fn attach_flash(&mut self) -> Result<(), FlashError> {
        let cmd = Command::from_words(Op::FlashBegin, &[0, 0, ROM_FLASH_BLOCK, 0]);
        self.check(&cmd, self.timeouts.flash_begin(0)).map(drop)
    }

    /// Reads the flash chip's JEDEC id (RDID) through the SPI user-command registers, as
    /// esptool's `run_spiflash_command` does. Call [`attach_flash`](Self::attach_flash) first.
    pub fn flash_id(&mut self) -> Result<FlashId, FlashError> {
        self.spi_command(spi_flash::RDID, 24).map(FlashId)
    }

    /// Runs a flash command with no address and no data out, reading `read_bits` (≤ 32) back.
    fn spi_command(&mut self, opcode: u8, read_bits: u32) -> Result<u32, FlashError> {
        /// `SPI_USR_COMMAND`: the command has a command phase.
        const SPI_USR_COMMAND: u32 = 1 << 31;
        /// Shift of the command length (minus one) in USR2.
        const SPI_USR2_COMMAND_LEN_SHIFT: u32 = 28;
        let old_usr = self.read_reg(reg::SPI_USR)?;
        let old_usr2 = self.read_reg(reg::SPI_USR2)?;
        let mut flags = SPI_USR_COMMAND;
        let miso = if read_bits > 0 {
            flags |= reg::SPI_USR_MISO;
            read_bits - 1
        } else {
            0
        };
        self.write_reg(reg::SPI_USR1, miso << reg::SPI_MISO_BITLEN_SHIFT)?;
        self.write_reg(reg::SPI_USR, flags)?;
        self.write_reg(
            reg::SPI_USR2,
            7 << SPI_USR2_COMMAND_LEN_SHIFT | u32::from(opcode),
        )?;
        self.write_reg(reg::SPI_W0, 0)?;
        self.write_reg(reg::SPI_CMD, reg::SPI_CMD_USR)?;
        let mut done = false;
        for _ in 0..SPI_POLLS {
            if self.read_reg(reg::SPI_CMD)? & reg::SPI_CMD_USR == 0 {
                done = true;
                break;
            }
        }
        if !done {
            return Err(FlashError::SpiTimeout { opcode });
        }
        let value = self.read_reg(reg::SPI_W0)?;
        self.write_reg(reg::SPI_USR, old_usr)?;
        self.write_reg(reg::SPI_USR2, old_usr2)?;
        Ok(value)
    }

    /// Writes `data` at `offset` as esptool `--no-stub write-flash` does: padded with 0xFF to a
    /// multiple of 4, an unaligned start moved down to its 4 KiB sector with 0xFF before the data,
    /// FLASH_BEGIN with [`rom_erase_size`], then 0x400-byte FLASH_DATA blocks (the last one
    /// 0xFF-padded), each tried up to [`WRITE_BLOCK_ATTEMPTS`] times. `progress` is called after
    /// every block. No FLASH_END is sent: see [`finish`](Self::finish).
    pub fn write_flash(
        &mut self,
        offset: u32,
        data: &[u8],
        progress: &mut dyn FnMut(Progress),
    ) -> Result<WriteSummary, FlashError> {
        let over = offset % FLASH_SECTOR_SIZE;
        let start = offset - over;
        let mut image = Vec::with_capacity(over as usize + data.len() + 3);
        image.resize(over as usize, 0xFF);
        image.extend_from_slice(data);
        image.resize(image.len().next_multiple_of(4), 0xFF);
        let size = u32::try_from(image.len()).map_err(|_| FlashError::ImageTooBig {
            offset,
            len: data.len(),
            flash_size: u32::MAX,
        })?;
        let blocks = size.div_ceil(ROM_FLASH_BLOCK);
        let erase_size = rom_erase_size(start, size);
        let began = Instant::now();
        let begin = Command::from_words(
            Op::FlashBegin,
            &[erase_size, blocks, ROM_FLASH_BLOCK, start],
        );
        self.check(&begin, self.timeouts.flash_begin(size))?;
        let total = u64::from(size);
        progress(Progress { written: 0, total });
        let mut written = 0u64;
        let mut retries = 0;
        let mut block = vec![0xFF; ROM_FLASH_BLOCK as usize];
        for (seq, chunk) in image.chunks(ROM_FLASH_BLOCK as usize).enumerate() {
            block[..chunk.len()].copy_from_slice(chunk);
            block[chunk.len()..].fill(0xFF);
            let cmd = Command::data(Op::FlashData, &block, seq as u32);
            let mut attempt = 1;
            loop {
                match self.check(&cmd, self.timeouts.command) {
                    Ok(_) => break,
                    Err(FlashError::Rig(e)) => return Err(e.into()),
                    Err(e) if attempt < WRITE_BLOCK_ATTEMPTS => {
                        tracing::warn!(seq, attempt, "FLASH_DATA: {e}; sending the block again");
                        attempt += 1;
                        retries += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
            written += chunk.len() as u64;
            progress(Progress { written, total });
        }
        Ok(WriteSummary {
            offset: start,
            bytes: size,
            blocks,
            erase_size,
            retries,
            elapsed: began.elapsed(),
        })
    }

    /// Leaves the ROM loader as `after` says.
    pub fn finish(&mut self, after: After) -> Result<(), FlashError> {
        match after {
            After::NoReset => Ok(()),
            After::SoftReset => {
                // esptool `ESPLoader.run`: a fake, empty FLASH_BEGIN, then FLASH_END(1) = run.
                self.attach_flash()?;
                self.check(
                    &Command::from_words(Op::FlashEnd, &[1]),
                    self.timeouts.command,
                )
                .map(drop)
            }
        }
    }
}

/// What the bytes seen while SYNC went unanswered suggest.
fn classify_silence(banner: Option<&Banner>, noise: &[u8], received: usize) -> SyncHint {
    let readable = noise
        .iter()
        .filter(|&&b| b == b'\r' || b == b'\n' || b == b'\t' || (0x20..0x7F).contains(&b))
        .count();
    let text = noise.len() >= 8 && readable * 10 >= noise.len() * 9;
    match banner.and_then(|b| b.boot_mode).map(|m| m.source()) {
        Some(BootSource::Flash) => return SyncHint::RunningFirmware,
        Some(BootSource::UartDownload) if !text => return SyncHint::DownloadBannerNoReply,
        _ => {}
    }
    if text {
        SyncHint::RunningFirmware
    } else if received == 0 {
        SyncHint::Silent
    } else {
        SyncHint::Noise
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootlog::BootMode;
    use crate::flash::proto::{self, rom_status};
    use crate::rig::ScriptedLink;
    use std::sync::{Arc, Mutex};

    /// What a scripted ROM does with each command it receives.
    #[derive(Default)]
    struct Rom {
        /// Commands received, in order.
        log: Vec<Command>,
        /// SYNC frames to ignore before answering.
        deaf_syncs: usize,
        /// FLASH_DATA sequence numbers whose first reply is lost (a timeout for the client).
        drop_data_once: Vec<u32>,
        /// FLASH_DATA sequence numbers answered with this error, every time.
        fail_data: Option<(u32, RomError)>,
        /// Flash contents written through FLASH_DATA (1 MB, erased).
        flash: Vec<u8>,
        session: Option<(u32, u32)>,
        regs: std::collections::HashMap<u32, u32>,
    }

    fn reply(op: Op, value: u32, result: Result<(), RomError>) -> Vec<u8> {
        Response::new(op, value, &[], rom_status(result)).to_slip()
    }

    impl Rom {
        fn new() -> Self {
            let mut regs = std::collections::HashMap::new();
            regs.insert(reg::CHIP_DETECT_MAGIC, reg::ESP8266_MAGIC);
            // sonoff-4ch: MAC 5c:cf:7f:c4:d5:02, ESP8285 with 1 MB (bit 4).
            regs.insert(reg::EFUSE_MAC0, 0x02 << 24 | 1 << 4);
            regs.insert(reg::EFUSE_MAC1, 0xC4D5);
            regs.insert(reg::EFUSE_MAC2, 0);
            regs.insert(reg::EFUSE_MAC3, 0x5C_CF7F);
            // 115200 at 52 MHz UART clock: 451.
            regs.insert(reg::UART_CLKDIV, 451);
            Rom {
                flash: vec![0xFF; 1 << 20],
                regs,
                ..Default::default()
            }
        }

        fn handle(&mut self, wire: &[u8]) -> Vec<u8> {
            let mut d = SlipDecoder::new();
            let mut out = Vec::new();
            for frame in d.push(wire) {
                let cmd = Command::parse(&frame.unwrap()).unwrap();
                out.extend(self.answer(&cmd));
                self.log.push(cmd);
            }
            out
        }

        fn answer(&mut self, cmd: &Command) -> Vec<u8> {
            match cmd.op {
                Op::Sync => {
                    if self.deaf_syncs > 0 {
                        self.deaf_syncs -= 1;
                        return Vec::new();
                    }
                    (0..SYNC_REPLIES)
                        .flat_map(|_| reply(Op::Sync, 0x2000_0000, Ok(())))
                        .collect()
                }
                Op::ReadReg => {
                    let addr = cmd.word(0).unwrap();
                    let v = self.regs.get(&addr).copied().unwrap_or(0);
                    reply(Op::ReadReg, v, Ok(()))
                }
                Op::WriteReg => {
                    let [addr, value, ..] = cmd.words::<4>().unwrap();
                    if addr == reg::SPI_CMD && value & reg::SPI_CMD_USR != 0 {
                        let opcode = self.regs.get(&reg::SPI_USR2).copied().unwrap_or(0) & 0xFF;
                        assert_eq!(opcode, u32::from(spi_flash::RDID));
                        self.regs.insert(reg::SPI_W0, 0x14_40C8);
                        self.regs.insert(reg::SPI_CMD, 0);
                    } else {
                        self.regs.insert(addr, value);
                    }
                    reply(Op::WriteReg, 0, Ok(()))
                }
                Op::FlashBegin => {
                    let [_, _, block, offset] = cmd.words::<4>().unwrap();
                    self.session = Some((offset, block));
                    reply(Op::FlashBegin, 0, Ok(()))
                }
                Op::FlashData => {
                    let b = cmd.data_block().unwrap();
                    let seq = b.seq;
                    if let Some(i) = self.drop_data_once.iter().position(|&s| s == seq) {
                        self.drop_data_once.remove(i);
                        return Vec::new();
                    }
                    if let Some((s, e)) = self.fail_data
                        && s == seq
                    {
                        return reply(Op::FlashData, 0, Err(e));
                    }
                    assert_eq!(proto::checksum(b.payload), cmd.checksum);
                    let (offset, block) = self.session.unwrap();
                    let at = (offset + seq * block) as usize;
                    self.flash[at..at + b.payload.len()].copy_from_slice(b.payload);
                    reply(Op::FlashData, 0, Ok(()))
                }
                Op::FlashEnd => reply(Op::FlashEnd, 0, Ok(())),
                other => reply(other, 0, Err(RomError::InvalidMessage)),
            }
        }

        fn ops(&self) -> Vec<Op> {
            self.log.iter().map(|c| c.op).collect()
        }
    }

    fn link_with(rom: Rom) -> (ScriptedLink, Arc<Mutex<Rom>>) {
        let rom = Arc::new(Mutex::new(rom));
        let mut link = ScriptedLink::new(74_880);
        let r = Arc::clone(&rom);
        link.respond_with(move |w| r.lock().unwrap().handle(w));
        (link, rom)
    }

    fn fast_sync() -> SyncConfig {
        SyncConfig {
            retry_delay: Duration::ZERO,
            ..SyncConfig::default()
        }
    }

    #[test]
    fn erase_size_matches_esptool_formula() {
        // Values computed with esptool 5.6.0 `ESP8266ROM.get_erase_size(offset, size)`.
        let cases = [
            (0x0, 0x0, 0x0),
            (0x0, 0x1, 0x1000),
            (0x0, 0x1000, 0x1000),
            (0x0, 0x1001, 0x1000),
            (0x0, 0x3000, 0x2000),
            (0x0, 0x10000, 0x8000),
            (0x0, 0x10010, 0x9000),
            (0x0, 0x4B000, 0x3B000),
            (0x0, 0x100000, 0xF0000),
            (0x1000, 0x10000, 0x8000),
            (0x1000, 0x20000, 0x11000),
            (0x3000, 0x5000, 0x3000),
            (0xF000, 0x3000, 0x2000),
            (0x10000, 0x10000, 0x8000),
            (0x7B000, 0x1000, 0x1000),
            (0xFB000, 0x5000, 0x3000),
        ];
        for (offset, size, expected) in cases {
            assert_eq!(
                rom_erase_size(offset, size),
                expected,
                "offset {offset:#x} size {size:#x}"
            );
        }
    }

    #[test]
    fn erase_size_inverts_the_rom_bug() {
        // What the simulator's model of the ROM erases for esptool's request covers exactly the
        // sectors needed (one more for an odd count inside the first 64 KiB block).
        for offset in (0..0x40000).step_by(0x3000) {
            for size in [1u32, 0x1000, 0x1800, 0x7000, 0x10000, 0x23456, 0x4B000] {
                let needed = size.div_ceil(FLASH_SECTOR_SIZE);
                let erased = crate::sim::rom_loader::rom_erased_sectors(
                    offset,
                    rom_erase_size(offset, size),
                );
                assert!(
                    erased == needed || erased == needed + 1,
                    "offset {offset:#x} size {size:#x}: {erased} sectors for {needed}"
                );
            }
        }
    }

    #[test]
    fn sync_retries_until_the_rom_answers_and_drains_the_extra_replies() {
        let mut rom = Rom::new();
        rom.deaf_syncs = 6;
        let (mut link, rom) = link_with(rom);
        {
            let mut f = Flasher::connect(&mut link, &fast_sync()).unwrap();
            // The next command's reply is not confused with the 7 extra SYNC replies.
            assert_eq!(
                f.read_reg(reg::CHIP_DETECT_MAGIC).unwrap(),
                reg::ESP8266_MAGIC
            );
        }
        let rom = rom.lock().unwrap();
        assert_eq!(rom.ops()[..7], [Op::Sync; 7]);
        assert_eq!(rom.ops()[7], Op::ReadReg);
        assert_eq!(link.baud_changes(), [ESP_ROM_BAUD]);
        // The first reply of each SYNC is awaited 100 ms, as esptool does.
        assert!(link.read_timeouts()[0] <= SYNC_TIMEOUT);
        assert!(link.read_timeouts()[0] > SYNC_TIMEOUT - Duration::from_millis(20));
    }

    #[test]
    fn no_reply_is_no_sync_after_35_frames_with_a_hint() {
        let mut rom = Rom::new();
        rom.deaf_syncs = usize::MAX;
        let (mut link, rom) = link_with(rom);
        let err = Flasher::connect(&mut link, &fast_sync()).unwrap_err();
        assert!(
            matches!(
                err,
                FlashError::NoSync {
                    tries: 35,
                    received: 0,
                    hint: SyncHint::Silent
                }
            ),
            "{err:?}"
        );
        assert_eq!(rom.lock().unwrap().ops(), [Op::Sync; 35]);
        assert!(err.is_dut_failure());
        let help = miette::Diagnostic::help(&err).unwrap().to_string();
        assert!(
            help.contains("TX/RX are not swapped (4CH R1 silkscreen"),
            "{help}"
        );
    }

    #[test]
    fn silence_hints_use_the_banner_and_the_bytes() {
        let banner = |x| Banner {
            rst_cause: None,
            boot_mode: Some(BootMode { x, y: 7 }),
        };
        assert_eq!(
            classify_silence(Some(&banner(1)), &[], 0),
            SyncHint::DownloadBannerNoReply
        );
        assert!(
            SyncHint::DownloadBannerNoReply
                .to_string()
                .starts_with("74880 banner seen but no SYNC reply: wrong port?")
        );
        assert_eq!(
            classify_silence(Some(&banner(3)), &[], 0),
            SyncHint::RunningFirmware
        );
        assert!(
            SyncHint::RunningFirmware
                .to_string()
                .contains("hold GPIO0 low while powering on; release after the banner")
        );
        let app = b"HILFW app=sonoff-ota version=1.0.0 ota=webserver state=RUN\r\n";
        assert_eq!(
            classify_silence(None, app, app.len()),
            SyncHint::RunningFirmware
        );
        let garbage = [0x80u8, 0xF0, 0x00, 0xFE, 0x8C, 0x12, 0x9A, 0xE0, 0x81, 0xFF];
        assert_eq!(classify_silence(None, &garbage, 10), SyncHint::Noise);
        assert_eq!(classify_silence(None, &[], 0), SyncHint::Silent);
    }

    #[test]
    fn running_firmware_text_makes_the_hint() {
        let mut link = ScriptedLink::new(115_200);
        link.respond_with(|w| {
            if w.first() == Some(&0xC0) {
                b"HILFW app=x version=1 ota=arduino state=RUN\r\n".to_vec()
            } else {
                Vec::new()
            }
        });
        let cfg = SyncConfig {
            attempts: 1,
            syncs_per_attempt: 2,
            ..fast_sync()
        };
        let err = Flasher::connect(&mut link, &cfg).unwrap_err();
        assert!(
            matches!(
                err,
                FlashError::NoSync {
                    tries: 2,
                    hint: SyncHint::RunningFirmware,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_stub_answering_sync_is_refused() {
        let mut link = ScriptedLink::new(115_200);
        link.respond_with(|_| {
            (0..SYNC_REPLIES)
                .flat_map(|_| Response::new(Op::Sync, 0, &[], [0, 0]).to_slip())
                .collect()
        });
        let err = Flasher::connect(&mut link, &fast_sync()).unwrap_err();
        assert!(matches!(err, FlashError::StubRunning), "{err:?}");
    }

    #[test]
    fn detects_esp8285_mac_crystal_and_flash_id() {
        let (mut link, rom) = link_with(Rom::new());
        let mut f = Flasher::connect(&mut link, &fast_sync()).unwrap();
        let chip = f.detect_chip().unwrap();
        assert_eq!(chip.chip, Chip::Esp8285);
        assert_eq!(chip.description, "ESP8285N08");
        assert_eq!(chip.mac_string(), "5c:cf:7f:c4:d5:02");
        assert_eq!(chip.chip_id, 0x00C4_D502);
        assert_eq!(chip.crystal_mhz, 26);
        assert_eq!(chip.embedded_flash, Some(1 << 20));
        f.attach_flash().unwrap();
        let id = f.flash_id().unwrap();
        assert_eq!(id, FlashId(0x14_40C8));
        assert_eq!(id.size(), Some(1 << 20));
        assert_eq!(id.to_string(), "manufacturer 0xc8, device 0x4014 (1MB)");
        drop(f);
        let rom = rom.lock().unwrap();
        let reads: Vec<u32> = rom
            .log
            .iter()
            .filter(|c| c.op == Op::ReadReg)
            .map(|c| c.word(0).unwrap())
            .take(6)
            .collect();
        assert_eq!(
            reads,
            [
                reg::CHIP_DETECT_MAGIC,
                reg::EFUSE_MAC3,
                reg::EFUSE_MAC2,
                reg::EFUSE_MAC1,
                reg::EFUSE_MAC0,
                reg::UART_CLKDIV
            ]
        );
        let attach = rom.log.iter().find(|c| c.op == Op::FlashBegin).unwrap();
        assert_eq!(attach.words::<4>().unwrap(), [0, 0, 0x400, 0]);
        // The SPI registers are restored after RDID.
        let last: Vec<(u32, u32)> = rom
            .log
            .iter()
            .filter(|c| c.op == Op::WriteReg)
            .map(|c| (c.word(0).unwrap(), c.word(1).unwrap()))
            .rev()
            .take(2)
            .collect();
        assert_eq!(last, [(reg::SPI_USR2, 0), (reg::SPI_USR, 0)]);
    }

    #[test]
    fn esp8266_efuses_decode_like_esptool() {
        // sonoff-basic: 18:fe:34:a1:b2:01, no ESP8285 bits.
        let info = ChipInfo::from_efuses([0x01 << 24, 0xA1B2, 0, 0], 26).unwrap();
        assert_eq!(info.chip, Chip::Esp8266);
        assert_eq!(info.description, "ESP8266EX");
        assert_eq!(info.mac_string(), "18:fe:34:a1:b2:01");
        assert_eq!(info.embedded_flash, None);
        let acd0 = ChipInfo::from_efuses([0, 0x01_0000, 0, 0], 26).unwrap();
        assert_eq!(acd0.mac[..3], [0xAC, 0xD0, 0x74]);
        assert_eq!(ChipInfo::from_efuses([0, 0x02_0000, 0, 0], 26), None);
        // Bit 80 alone marks an ESP8285 of unknown flash size.
        let odd = ChipInfo::from_efuses([0, 0, 1 << 16, 0], 26).unwrap();
        assert_eq!((odd.chip, odd.description), (Chip::Esp8285, "ESP8285"));
    }

    #[test]
    fn writes_blocks_with_checksums_and_the_erase_formula() {
        let (mut link, rom) = link_with(Rom::new());
        let data: Vec<u8> = (0..0x1_2345u32).map(|i| (i * 7 + i / 300) as u8).collect();
        let mut seen = Vec::new();
        let summary = {
            let mut f = Flasher::connect(&mut link, &fast_sync()).unwrap();
            f.write_flash(0x3010, &data, &mut |p| seen.push(p)).unwrap()
        };
        // Aligned down to 0x3000 with 0x10 bytes of 0xFF first, padded to a multiple of 4.
        let size = (0x10 + data.len()).next_multiple_of(4) as u32;
        assert_eq!(summary.offset, 0x3000);
        assert_eq!(summary.bytes, size);
        assert_eq!(summary.blocks, size.div_ceil(0x400));
        assert_eq!(summary.erase_size, rom_erase_size(0x3000, size));
        assert_eq!(summary.retries, 0);
        let rom = rom.lock().unwrap();
        let begin = rom.log.iter().find(|c| c.op == Op::FlashBegin).unwrap();
        assert_eq!(
            begin.words::<4>().unwrap(),
            [rom_erase_size(0x3000, size), summary.blocks, 0x400, 0x3000]
        );
        assert_eq!(
            begin.data.len(),
            16,
            "4 words to the ESP8266 ROM, no encrypt flag"
        );
        let blocks: Vec<&Command> = rom.log.iter().filter(|c| c.op == Op::FlashData).collect();
        assert_eq!(blocks.len() as u32, summary.blocks);
        for (i, c) in blocks.iter().enumerate() {
            let b = c.data_block().unwrap();
            assert_eq!(b.seq, i as u32);
            assert_eq!(b.payload.len(), ROM_FLASH_BLOCK as usize);
            assert_eq!(c.checksum, proto::checksum(b.payload));
        }
        assert!(rom.flash[0x3000..0x3010].iter().all(|&b| b == 0xFF));
        assert_eq!(&rom.flash[0x3010..0x3010 + data.len()], &data[..]);
        assert!(
            rom.flash[0x3010 + data.len()..0x3000 + summary.blocks as usize * 0x400]
                .iter()
                .all(|&b| b == 0xFF),
            "last block padded with 0xFF"
        );
        assert!(
            !rom.ops().contains(&Op::FlashEnd),
            "no-reset sends no FLASH_END"
        );
        assert_eq!(
            seen.first(),
            Some(&Progress {
                written: 0,
                total: u64::from(size)
            })
        );
        assert_eq!(
            seen.last(),
            Some(&Progress {
                written: u64::from(size),
                total: u64::from(size)
            })
        );
        assert_eq!(seen.len() as u32, summary.blocks + 1);
    }

    #[test]
    fn flash_begin_timeout_scales_with_size() {
        let t = Timeouts::default();
        assert_eq!(t.flash_begin(0), Duration::from_secs(3));
        assert_eq!(t.flash_begin(50_000), Duration::from_secs(3));
        assert_eq!(t.flash_begin(1_000_000), Duration::from_secs(40));
        assert_eq!(t.flash_begin(0x10_0000), Duration::from_secs_f64(41.94304));

        // The client waits that long for FLASH_BEGIN's reply, 3 s for the blocks.
        let (mut link, _rom) = link_with(Rom::new());
        {
            let mut f = Flasher::connect(&mut link, &fast_sync()).unwrap();
            f.write_flash(0, &vec![0x55; 1 << 20], &mut |_| {}).unwrap();
        }
        let longest = link.read_timeouts().iter().max().copied().unwrap();
        assert!(
            longest <= Duration::from_secs_f64(41.95) && longest > Duration::from_secs(41),
            "{longest:?}"
        );
    }

    #[test]
    fn a_lost_block_reply_is_retried() {
        let mut rom = Rom::new();
        rom.drop_data_once = vec![2, 2, 5];
        let (mut link, rom) = link_with(rom);
        let data = vec![0xA5; 8 * 0x400];
        let timeouts = Timeouts {
            command: Duration::from_millis(30),
            ..Timeouts::default()
        };
        let summary = {
            let mut f = Flasher::connect_with(&mut link, &fast_sync(), timeouts).unwrap();
            f.write_flash(0, &data, &mut |_| {}).unwrap()
        };
        assert_eq!(summary.retries, 3);
        let rom = rom.lock().unwrap();
        let seqs: Vec<u32> = rom
            .log
            .iter()
            .filter(|c| c.op == Op::FlashData)
            .map(|c| c.data_block().unwrap().seq)
            .collect();
        assert_eq!(seqs, [0, 1, 2, 2, 2, 3, 4, 5, 5, 6, 7]);
        assert_eq!(&rom.flash[..data.len()], &data[..]);
    }

    #[test]
    fn a_block_lost_three_times_is_a_timeout() {
        let mut rom = Rom::new();
        rom.drop_data_once = vec![1, 1, 1];
        let (mut link, _rom) = link_with(rom);
        let timeouts = Timeouts {
            command: Duration::from_millis(20),
            ..Timeouts::default()
        };
        let mut f = Flasher::connect_with(&mut link, &fast_sync(), timeouts).unwrap();
        let err = f.write_flash(0, &[0; 0x800], &mut |_| {}).unwrap_err();
        assert!(
            matches!(
                err,
                FlashError::Timeout {
                    command: Op::FlashData,
                    timeout
                } if timeout == Duration::from_millis(20)
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("no reply to FLASH_DATA within 20.0ms"),
            "{err}"
        );
    }

    #[test]
    fn rom_error_status_maps_to_flash_error() {
        for (code, expected, help) in [
            (0x07, RomError::BadChecksum, "lower --baud"),
            (0x08, RomError::FlashWrite, "3.3 V supply"),
            (
                0x42,
                RomError::Other(0x42),
                "power-cycle into download mode",
            ),
        ] {
            let mut rom = Rom::new();
            rom.fail_data = Some((0, RomError::from(code)));
            let (mut link, rom) = link_with(rom);
            let mut f = Flasher::connect(&mut link, &fast_sync()).unwrap();
            let err = f.write_flash(0, &[1, 2, 3, 4], &mut |_| {}).unwrap_err();
            match &err {
                FlashError::Rom { command, error } => {
                    assert_eq!((*command, *error), (Op::FlashData, expected));
                }
                other => panic!("{other:?}"),
            }
            assert!(err.is_dut_failure());
            let text = miette::Diagnostic::help(&err).unwrap().to_string();
            assert!(text.contains(help), "{code:#x}: {text}");
            drop(f);
            let tries = rom
                .lock()
                .unwrap()
                .ops()
                .iter()
                .filter(|o| **o == Op::FlashData)
                .count();
            assert_eq!(
                tries, WRITE_BLOCK_ATTEMPTS as usize,
                "esptool retries any failure"
            );
        }
    }

    #[test]
    fn unsupported_command_and_noise_between_replies() {
        let mut link = ScriptedLink::new(115_200);
        let mut synced = false;
        link.respond_with(move |w| {
            let cmd = Command::parse(&SlipDecoder::new().push(w)[0].clone().unwrap()).unwrap();
            match cmd.op {
                Op::Sync if !synced => {
                    synced = true;
                    let mut out = b"\r\nnoise at the wrong rate \xF0\x80\r\n".to_vec();
                    out.extend(reply(Op::Sync, 1, Ok(())));
                    out
                }
                Op::Sync => Vec::new(),
                // An echo of another op with 01 05: esptool's "unsupported command".
                _ => reply(Op::GetSecurityInfo, 0, Err(RomError::InvalidMessage)),
            }
        });
        let mut f = Flasher::connect(&mut link, &fast_sync()).unwrap();
        let err = f.read_reg(0x3FF0_0050).unwrap_err();
        assert!(
            matches!(
                err,
                FlashError::Unsupported {
                    command: Op::ReadReg
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn soft_reset_sends_empty_begin_then_end_run() {
        let (mut link, rom) = link_with(Rom::new());
        {
            let mut f = Flasher::connect(&mut link, &fast_sync()).unwrap();
            f.finish(After::NoReset).unwrap();
            f.finish(After::SoftReset).unwrap();
        }
        let rom = rom.lock().unwrap();
        let tail: Vec<(Op, Vec<u8>)> = rom
            .log
            .iter()
            .skip_while(|c| c.op == Op::Sync)
            .map(|c| (c.op, c.data.clone()))
            .collect();
        assert_eq!(
            tail,
            [
                (
                    Op::FlashBegin,
                    [0u32, 0, 0x400, 0]
                        .iter()
                        .flat_map(|w| w.to_le_bytes())
                        .collect()
                ),
                (Op::FlashEnd, 1u32.to_le_bytes().to_vec()),
            ]
        );
    }

    #[test]
    fn a_reply_split_over_many_reads_decodes() {
        let mut link = ScriptedLink::new(115_200);
        link.push_read(b"ets Jan  8 2013,rst cause:2, boot mode:(1,6)\r\n".to_vec());
        for b in reply(Op::ReadReg, 0xDEAD_BEEF, Ok(())) {
            link.push_read(vec![b]);
        }
        let mut f = Flasher {
            link: &mut link,
            decoder: SlipDecoder::new(),
            frames: VecDeque::new(),
            timeouts: Timeouts::default(),
            noise: Vec::new(),
            received: 0,
        };
        let r = f
            .read_response(Op::ReadReg, Duration::from_millis(10))
            .unwrap();
        assert_eq!(r.value, 0xDEAD_BEEF);
        assert!(matches!(
            f.read_response(Op::ReadReg, Duration::from_millis(10)),
            Err(FlashError::Timeout {
                command: Op::ReadReg,
                ..
            })
        ));
    }
}
