//! The Arduino core's `Updater` (the global `Update` object) as a pure model.
//!
//! Both OTA paths end here on the device: ArduinoOTA calls `Update.begin(size)`,
//! `Update.write(client)` per TCP read and `Update.end()`; ESP8266HTTPUpdateServer calls
//! `Update.begin(max free space)`, `Update.write(block)` per 2048-byte upload block and
//! `Update.end(true)`. [`UpdateSession`] follows cores/esp8266/Updater.cpp of core 3.1.x (the
//! master branch at f946290 for error codes 15 and 16), including its quirks: the checks run in
//! the same order, the magic byte is only checked at `end()` (neither OTA path uses
//! `writeStream`, which checks it up front), a 4 KiB buffer is flushed a sector at a time, and
//! the first sector of a non-gzip image gets the running flash mode (#4877). The simulator plugs
//! its flash in through [`FlashWriter`].
//!
//! Error codes and texts: Updater.h / `getErrorString` (protocols.md §C). Flash layout rule:
//! protocols.md §E.

use md5::{Digest, Md5};

use crate::board::FlashLayout;

use super::CodecError;

/// Size of an SPI flash sector (erase unit).
pub const FLASH_SECTOR_SIZE: u32 = 0x1000;
/// Flash offset of the application image (after eboot).
pub const APP_START_OFFSET: u32 = 0x1000;
/// Updater's buffer: one sector while the heap has more than two sectors free.
const BUFFER_SIZE: usize = FLASH_SECTOR_SIZE as usize;
/// `FM_UNKNOWN`: what `magicFlashChipMode` returns for a byte above 3 (DOUT).
const FLASH_MODE_UNKNOWN: u8 = 0xFF;
/// First bytes of a gzip stream; such images are not patched and not size-checked.
const GZIP_MAGIC: [u8; 2] = [0x1F, 0x8B];
/// First byte of an ESP8266 image.
const IMAGE_MAGIC: u8 = 0xE9;

/// What an update writes (`U_FLASH` / `U_FS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpdateCommand {
    /// The sketch (`U_FLASH` = 0): staged below the FS, copied by eboot.
    Flash,
    /// The filesystem (`U_FS` = 100, formerly `U_SPIFFS`): written in place.
    Fs,
}

impl UpdateCommand {
    /// The numeric command of Updater.h and the espota invitation.
    pub fn code(self) -> u32 {
        match self {
            UpdateCommand::Flash => 0,
            UpdateCommand::Fs => 100,
        }
    }

    /// The command for a numeric code.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(UpdateCommand::Flash),
            100 => Some(UpdateCommand::Fs),
            _ => None,
        }
    }
}

/// An error of the device's Updater: code and text as `Update.printError` prints them.
///
/// This is device behaviour (data in a report), not a harness failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpdaterError {
    /// 0: also what a premature `end()` reports (it sets no code).
    #[error("No Error")]
    NoError,
    /// 1.
    #[error("Flash Write Failed")]
    Write,
    /// 2.
    #[error("Flash Erase Failed")]
    Erase,
    /// 3.
    #[error("Flash Read Failed")]
    Read,
    /// 4: staging area too small at `begin`, or more data than announced at `write`.
    #[error("Not Enough Space")]
    Space,
    /// 5: `begin(0)`.
    #[error("Bad Size Given")]
    Size,
    /// 6: `writeStream` timeout (not used by the OTA paths).
    #[error("Stream Read Timeout")]
    Stream,
    /// 7.
    #[error("MD5 verification failed: expected: {expected}, calculated: {calculated}")]
    Md5 {
        /// The MD5 from the espota invitation, as sent.
        expected: String,
        /// MD5 of the received bytes, lower-case hex.
        calculated: String,
    },
    /// 8: the running image's header claims more flash than the chip has.
    #[error("Flash config wrong: real: {real}, SDK: {sdk}")]
    FlashConfig {
        /// Real flash size from the JEDEC id.
        real: u32,
        /// Size from the header at flash 0.
        sdk: u32,
    },
    /// 9: the new image's header claims more flash than the chip has.
    #[error("new Flash config wrong, real size: {real}")]
    NewFlashConfig {
        /// Real flash size from the JEDEC id.
        real: u32,
    },
    /// 10.
    #[error("Magic byte is not 0xE9")]
    MagicByte,
    /// 11: the chip was started from UART download mode (boot mode `(1,x)`).
    #[error("Invalid bootstrapping state, reset ESP8266 before updating")]
    Bootstrap,
    /// 12.
    #[error("Signature verification failed")]
    Sign,
    /// 13: `end()` with nothing flushed to flash.
    #[error("No data supplied")]
    NoData,
    /// 14.
    #[error("Out of memory")]
    Oom,
    /// 15 (master after 3.1.2; 3.1.2 returns false without a code).
    #[error("Update already running")]
    RunningAlready,
    /// 16 (master after 3.1.2).
    #[error("Unknown update command")]
    UnknownCommand,
}

impl UpdaterError {
    /// The numeric code (`UPDATE_ERROR_*`).
    pub fn code(&self) -> u8 {
        match self {
            UpdaterError::NoError => 0,
            UpdaterError::Write => 1,
            UpdaterError::Erase => 2,
            UpdaterError::Read => 3,
            UpdaterError::Space => 4,
            UpdaterError::Size => 5,
            UpdaterError::Stream => 6,
            UpdaterError::Md5 { .. } => 7,
            UpdaterError::FlashConfig { .. } => 8,
            UpdaterError::NewFlashConfig { .. } => 9,
            UpdaterError::MagicByte => 10,
            UpdaterError::Bootstrap => 11,
            UpdaterError::Sign => 12,
            UpdaterError::NoData => 13,
            UpdaterError::Oom => 14,
            UpdaterError::RunningAlready => 15,
            UpdaterError::UnknownCommand => 16,
        }
    }

    /// What `Update.printError` prints: `ERROR[n]: text\n`.
    pub fn printed(&self) -> String {
        format!("{}\n", self.to_device_error())
    }

    /// The error as a client sees it on the wire.
    pub fn to_device_error(&self) -> DeviceError {
        DeviceError {
            code: self.code(),
            text: self.to_string(),
        }
    }
}

/// An Updater error as received from a device: `ERROR[n]: text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceError {
    /// The code in brackets.
    pub code: u8,
    /// The text after `]: `.
    pub text: String,
}

impl DeviceError {
    /// Parses `ERROR[n]: text`, ignoring a trailing line end. `None` if it has another shape.
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim_end_matches(['\r', '\n']);
        let rest = line.strip_prefix("ERROR[")?;
        let close = rest.find("]: ")?;
        let digits = &rest[..close];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let code = digits.parse().ok()?;
        Some(DeviceError {
            code,
            text: rest[close + 3..].to_string(),
        })
    }
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ERROR[{}]: {}", self.code, self.text)
    }
}

/// A flash operation that failed (injected by a simulator or a fake).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("flash operation failed at {addr:#x}")]
pub struct FlashFault {
    /// The address of the failed operation.
    pub addr: u32,
}

/// The device flash as the Updater uses it. Addresses are flash offsets.
pub trait FlashWriter {
    /// Erases the 4 KiB sector starting at `addr` (sector-aligned) to 0xFF.
    fn erase_sector(&mut self, addr: u32) -> Result<(), FlashFault>;
    /// Programs `data` at `addr` (NOR semantics are the implementation's business).
    fn write(&mut self, addr: u32, data: &[u8]) -> Result<(), FlashFault>;
    /// Reads `buf.len()` bytes at `addr`.
    fn read(&mut self, addr: u32, buf: &mut [u8]) -> Result<(), FlashFault>;
}

/// Which core behaviour to model where core versions differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreModel {
    /// `begin()` refuses with error 11 when the chip booted with strap value 1 (core >= 2.4.0,
    /// commit 9b0ad39, May 2017).
    pub bootstrap_check: bool,
    /// The first sector of a non-gzip image gets the running flash mode (core >= 2.4.2, #4877).
    pub patch_flash_mode: bool,
    /// `begin()` checks the running header's flash size (error 8) and `end()` the staged
    /// header (errors 9 and 10). Added by esp8266/Arduino PR #1259 (merged 2015-12-20), so the
    /// first release with it is 2.1.0; the Updater.cpp before it has a one-argument `begin`
    /// and no checks.
    pub flash_config_checks: bool,
}

impl CoreModel {
    /// Core 3.1.x, the version the reference firmware targets.
    pub const V3_1: CoreModel = CoreModel {
        bootstrap_check: true,
        patch_flash_mode: true,
        flash_config_checks: true,
    };
    /// Cores 2.1.0 up to 2.4.0 (what the field report's device most likely ran): no bootstrap
    /// check, no flash mode patch, but the flash size checks.
    pub const PRE_2_4: CoreModel = CoreModel {
        bootstrap_check: false,
        patch_flash_mode: false,
        flash_config_checks: true,
    };
    /// Cores before 2.1.0: none of the checks.
    pub const PRE_2_1: CoreModel = CoreModel {
        bootstrap_check: false,
        patch_flash_mode: false,
        flash_config_checks: false,
    };

    /// The model for a core version `MAJOR.MINOR.PATCH` (a suffix such as `-rc1` after the
    /// patch number is ignored); `None` if it is not such a version.
    pub fn for_version(version: &str) -> Option<CoreModel> {
        let (major, minor, patch) = crate::image::identity::parse_core_version(version)?;
        let at_least = |v: (u32, u32, u32)| (major, minor, patch) >= v;
        Some(CoreModel {
            bootstrap_check: at_least((2, 4, 0)),
            patch_flash_mode: at_least((2, 4, 2)),
            flash_config_checks: at_least((2, 1, 0)),
        })
    }
}

impl Default for CoreModel {
    fn default() -> Self {
        CoreModel::V3_1
    }
}

/// What the Updater reads from the running device besides flash contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEnv {
    /// Layout the running sketch was linked with (`FS_start`, `FS_end`).
    pub layout: FlashLayout,
    /// `ESP.getFlashChipRealSize()`: the chip's size from its JEDEC id.
    pub real_flash_size: u32,
    /// The strap value latched at the last reset: X in `boot mode:(X,Y)`, the core's
    /// `(GPI >> 16) & 0xF`. 1 = UART download mode, 3 = flash.
    pub boot_mode: u8,
    /// Core version differences.
    pub core: CoreModel,
}

/// Rounds up to a whole sector, as Updater does (saturating instead of wrapping).
pub fn round_up_sector(n: u32) -> u32 {
    let mask = FLASH_SECTOR_SIZE - 1;
    n.checked_add(mask).map_or(!mask, |v| v & !mask)
}

/// `ESP.magicFlashChipSize`: the size coded in the high nibble of header byte 3; 0 for codes
/// it does not know (including 5 and 6, the "-c1" 2M/4M layouts).
pub fn magic_flash_chip_size(code: u8) -> u32 {
    const KB: u32 = 1024;
    match code & 0x0F {
        0x0 => 512 * KB,
        0x1 => 256 * KB,
        0x2 => 1024 * KB,
        0x3 => 2048 * KB,
        0x4 => 4096 * KB,
        0x8 => 8192 * KB,
        0x9 => 16384 * KB,
        _ => 0,
    }
}

/// `ESP.magicFlashChipMode`: header byte 2 as a mode, 0xFF (`FM_UNKNOWN`) above DOUT.
fn magic_flash_chip_mode(byte: u8) -> u8 {
    if byte > 3 { FLASH_MODE_UNKNOWN } else { byte }
}

/// `ESP.getSketchSize()`: walks the image header at [`APP_START_OFFSET`] and its segments.
///
/// The result counts from flash offset 0 (it includes eboot's sector) and is
/// `(end of last segment + 16) & !15`.
pub fn sketch_size(flash: &mut impl FlashWriter) -> Result<u32, FlashFault> {
    let mut header = [0u8; 8];
    let mut pos = APP_START_OFFSET;
    flash.read(pos, &mut header)?;
    pos += 8;
    for _ in 0..header[1] {
        let mut seg = [0u8; 8];
        flash.read(pos, &mut seg)?;
        let size = u32::from_le_bytes([seg[4], seg[5], seg[6], seg[7]]);
        pos = pos.saturating_add(8).saturating_add(size);
    }
    Ok(pos.saturating_add(16) & !15)
}

/// `ESP.getFreeSketchSpace()`: from the sector after the sketch up to `FS_start` (wrapping
/// like the device's `uint32_t` when the sketch is larger).
pub fn free_sketch_space(layout: &FlashLayout, sketch_size: u32) -> u32 {
    layout.fs_start.wrapping_sub(round_up_sector(sketch_size))
}

/// The size ESP8266HTTPUpdateServer passes to `Update.begin`:
/// `(getFreeSketchSpace() - 0x1000) & 0xFFFFF000`.
///
/// Because that fills all free space, the HTTP path stages the new image one sector after the
/// running sketch, whatever the new image's size; `end(true)` then truncates to what arrived.
pub fn http_begin_size(layout: &FlashLayout, sketch_size: u32) -> u32 {
    free_sketch_space(layout, sketch_size).wrapping_sub(FLASH_SECTOR_SIZE) & 0xFFFF_F000
}

/// Where `begin(size, command)` starts writing, or the error it reports (after the bootstrap,
/// size and flash-config checks, which [`UpdateSession::begin`] runs first).
///
/// Flash: staging = `FS_start - round_up(size)`, which must not be below
/// `round_up(sketch_size)` (error 4). FS: written in place at `FS_start`; it must fit before
/// `FS_end` (error 4).
pub fn staging_address(
    layout: &FlashLayout,
    sketch_size: u32,
    size: u32,
    command: UpdateCommand,
) -> Result<u32, UpdaterError> {
    let rounded = round_up_sector(size);
    match command {
        UpdateCommand::Flash => {
            let end = layout.fs_start;
            let start = end
                .checked_sub(rounded)
                .filter(|_| end > rounded)
                .unwrap_or(0);
            if start < round_up_sector(sketch_size) {
                return Err(UpdaterError::Space);
            }
            Ok(start)
        }
        UpdateCommand::Fs => {
            if u64::from(layout.fs_start) + u64::from(rounded) > u64::from(layout.fs_end) {
                return Err(UpdaterError::Space);
            }
            Ok(layout.fs_start)
        }
    }
}

/// `_verifyHeader`: the first-byte check `Update.writeStream` makes before writing (0xE9, or
/// 0x1F for gzip, for flash updates). The OTA libraries do not call it; see [`verify_end`].
pub fn verify_header(first_byte: u8, command: UpdateCommand) -> Result<(), UpdaterError> {
    match command {
        UpdateCommand::Flash if first_byte != IMAGE_MAGIC && first_byte != GZIP_MAGIC[0] => {
            Err(UpdaterError::MagicByte)
        }
        _ => Ok(()),
    }
}

/// `_verifyEnd` on the first four staged bytes: gzip passes, otherwise the magic must be 0xE9
/// (error 10) and the size in byte 3 must not exceed the real flash (error 9).
pub fn verify_end(
    head: [u8; 4],
    real_flash_size: u32,
    command: UpdateCommand,
) -> Result<(), UpdaterError> {
    if command == UpdateCommand::Fs || head[..2] == GZIP_MAGIC {
        return Ok(());
    }
    if head[0] != IMAGE_MAGIC {
        return Err(UpdaterError::MagicByte);
    }
    if magic_flash_chip_size(head[3] >> 4) > real_flash_size {
        return Err(UpdaterError::NewFlashConfig {
            real: real_flash_size,
        });
    }
    Ok(())
}

/// The Updater's state, driven like `Update.begin` / `write` / `end`.
///
/// The fields mirror the device's so that its edge cases come out the same: any error resets
/// the session (`_setError` calls `_reset`) but the error code stays until the next successful
/// `begin`; a running session is one with `size > 0`.
#[derive(Debug, Clone)]
pub struct UpdateSession {
    env: DeviceEnv,
    command: UpdateCommand,
    start: u32,
    current: u32,
    size: u32,
    buffer: Vec<u8>,
    error: Option<UpdaterError>,
    target_md5: Option<String>,
    md5: Md5,
}

impl UpdateSession {
    /// An idle Updater on a device.
    pub fn new(env: DeviceEnv) -> Self {
        UpdateSession {
            env,
            command: UpdateCommand::Flash,
            start: 0,
            current: 0,
            size: 0,
            buffer: Vec::with_capacity(BUFFER_SIZE),
            error: None,
            target_md5: None,
            md5: Md5::new(),
        }
    }

    /// The device environment.
    pub fn env(&self) -> &DeviceEnv {
        &self.env
    }

    /// `_reset`: drops the running update, keeps the error code and MD5 state.
    fn reset(&mut self) {
        self.buffer.clear();
        self.start = 0;
        self.current = 0;
        self.size = 0;
        self.command = UpdateCommand::Flash;
    }

    /// `_setError`.
    fn fail(&mut self, error: UpdaterError) -> UpdaterError {
        self.error = Some(error.clone());
        self.reset();
        error
    }

    /// `Update.begin(size, command)`; returns the start address (staging area for flash).
    ///
    /// Checks, in the device's order: already running (15), strap value 1 (11, if the core
    /// model checks it), size 0 (5), running header's flash size above the real size (8),
    /// space (4).
    pub fn begin(
        &mut self,
        flash: &mut impl FlashWriter,
        size: u32,
        command: UpdateCommand,
    ) -> Result<u32, UpdaterError> {
        if self.is_running() {
            return Err(self.fail(UpdaterError::RunningAlready));
        }
        if self.env.core.bootstrap_check && self.env.boot_mode == 1 {
            return Err(self.fail(UpdaterError::Bootstrap));
        }
        if size == 0 {
            return Err(self.fail(UpdaterError::Size));
        }
        // ESP.getFlashChipSize() reads the header at flash 0; a failed read gives 0.
        let mut head = [0u8; 4];
        let sdk = match flash.read(0, &mut head) {
            Ok(()) => magic_flash_chip_size(head[3] >> 4),
            Err(_) => 0,
        };
        let real = self.env.real_flash_size;
        if self.env.core.flash_config_checks && sdk > real {
            return Err(self.fail(UpdaterError::FlashConfig { real, sdk }));
        }
        self.reset();
        self.error = None;
        self.target_md5 = None;
        self.md5 = Md5::new();
        let sketch = sketch_size(flash).unwrap_or(0);
        let start = match staging_address(&self.env.layout, sketch, size, command) {
            Ok(start) => start,
            Err(e) => return Err(self.fail(e)),
        };
        self.start = start;
        self.current = start;
        self.size = size;
        self.command = command;
        Ok(start)
    }

    /// `Update.setMD5`: the expected MD5 (hex) checked at `end`; false unless 32 characters.
    pub fn set_md5(&mut self, expected: &str) -> bool {
        if expected.len() != 32 {
            return false;
        }
        self.target_md5 = Some(expected.to_string());
        true
    }

    /// `Update.write(data, len)`: buffers and flushes whole sectors; returns how many bytes
    /// were taken (less than `data.len()` after an error, 0 when not running or on error 4).
    pub fn write(&mut self, flash: &mut impl FlashWriter, data: &[u8]) -> usize {
        if self.error.is_some() || !self.is_running() {
            return 0;
        }
        let pending = u64::from(self.progress()) + self.buffer.len() as u64;
        if pending + data.len() as u64 > u64::from(self.size) {
            self.fail(UpdaterError::Space);
            return 0;
        }
        let mut left = data;
        while self.buffer.len() + left.len() > BUFFER_SIZE {
            let take = BUFFER_SIZE - self.buffer.len();
            self.buffer.extend_from_slice(&left[..take]);
            if !self.write_buffer(flash) {
                return data.len() - left.len();
            }
            left = &left[take..];
        }
        self.buffer.extend_from_slice(left);
        if self.buffer.len() as u64 == u64::from(self.remaining()) && !self.write_buffer(flash) {
            return data.len() - left.len();
        }
        data.len()
    }

    /// `_writeBuffer`: erase at a sector start, patch the flash mode of the first sector, write.
    fn write_buffer(&mut self, flash: &mut impl FlashWriter) -> bool {
        if self.current.is_multiple_of(FLASH_SECTOR_SIZE)
            && flash.erase_sector(self.current).is_err()
        {
            self.current = self.start.wrapping_add(self.size);
            self.fail(UpdaterError::Erase);
            return false;
        }
        let patch = self.env.core.patch_flash_mode
            && self.current == self.start
            && self.command == UpdateCommand::Flash
            && self.buffer.len() > 2
            && self.buffer[0] != GZIP_MAGIC[0];
        let result = if patch {
            let mut head = [0u8; 4];
            let running = match flash.read(0, &mut head) {
                Ok(()) => magic_flash_chip_mode(head[2]),
                Err(_) => FLASH_MODE_UNKNOWN,
            };
            if magic_flash_chip_mode(self.buffer[2]) != running {
                // Patch a copy: the MD5 covers the bytes as sent.
                let mut patched = self.buffer.clone();
                patched[2] = running;
                flash.write(self.current, &patched)
            } else {
                flash.write(self.current, &self.buffer)
            }
        } else {
            flash.write(self.current, &self.buffer)
        };
        if result.is_err() {
            self.current = self.start.wrapping_add(self.size);
            self.fail(UpdaterError::Write);
            return false;
        }
        self.md5.update(&self.buffer);
        self.current = self.current.wrapping_add(self.buffer.len() as u32);
        self.buffer.clear();
        true
    }

    /// `Update.end(even_if_remaining)`: checks and, for a flash update, the eboot command the
    /// device writes to RTC memory before `ESP.restart()`.
    ///
    /// `even_if_remaining` (the HTTP path) flushes the partial buffer and truncates the size to
    /// what arrived. Note that `NoData` is decided before that flush, so an HTTP upload shorter
    /// than one sector fails with error 13, as on the device.
    pub fn end(
        &mut self,
        flash: &mut impl FlashWriter,
        even_if_remaining: bool,
    ) -> Result<Option<EbootCommand>, UpdaterError> {
        if self.size == 0 {
            self.reset();
            return Err(self.error.clone().unwrap_or(UpdaterError::NoError));
        }
        if self.progress() == 0 {
            self.fail(UpdaterError::NoData);
        }
        if self.error.is_some() || (!self.is_finished() && !even_if_remaining) {
            self.reset();
            return Err(self.error.clone().unwrap_or(UpdaterError::NoError));
        }
        if even_if_remaining {
            if !self.buffer.is_empty() {
                // The device ignores this result; an error resets the session, so what
                // follows then runs on an empty update, as on the device.
                self.write_buffer(flash);
            }
            self.size = self.progress();
        }
        if let Some(expected) = &self.target_md5 {
            let calculated = hex(&self.md5.clone().finalize());
            if !expected.eq_ignore_ascii_case(&calculated) {
                let expected = expected.clone();
                return Err(self.fail(UpdaterError::Md5 {
                    expected,
                    calculated,
                }));
            }
        }
        let command = self.command;
        if command == UpdateCommand::Flash && self.env.core.flash_config_checks {
            let mut head = [0u8; 4];
            if flash.read(self.start, &mut head).is_err() {
                self.current = self.start;
                return Err(self.fail(UpdaterError::Read));
            }
            if let Err(e) = verify_end(head, self.env.real_flash_size, command) {
                self.current = self.start;
                return Err(self.fail(e));
            }
        }
        let eboot = (command == UpdateCommand::Flash)
            .then(|| EbootCommand::copy_raw(self.start, 0, self.size));
        self.reset();
        Ok(eboot)
    }

    /// The last error (kept until the next successful `begin`).
    pub fn error(&self) -> Option<&UpdaterError> {
        self.error.as_ref()
    }

    /// Whether an update is running (`size > 0`).
    pub fn is_running(&self) -> bool {
        self.size > 0
    }

    /// Whether all announced bytes are in flash.
    pub fn is_finished(&self) -> bool {
        self.current == self.start.wrapping_add(self.size)
    }

    /// Bytes flushed to flash so far.
    pub fn progress(&self) -> u32 {
        self.current.wrapping_sub(self.start)
    }

    /// Announced bytes not yet flushed.
    pub fn remaining(&self) -> u32 {
        self.size.wrapping_sub(self.progress())
    }

    /// Announced size (0 when idle).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Start address of the running update (0 when idle).
    pub fn start_address(&self) -> u32 {
        self.start
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// eboot's command block in RTC memory (bootloaders/eboot/eboot_command.h).
pub mod eboot {
    /// RTC memory address of the command block.
    pub const RTC_ADDR: u32 = 0x6000_1200;
    /// The magic word; eboot compares it under [`MAGIC_MASK`].
    pub const MAGIC: u32 = 0xEB00_1000;
    /// Mask applied to the magic word before the comparison.
    pub const MAGIC_MASK: u32 = 0xFFFF_F000;
    /// `ACTION_COPY_RAW`.
    pub const ACTION_COPY_RAW: u32 = 0x0000_0001;
    /// `ACTION_LOAD_APP`.
    pub const ACTION_LOAD_APP: u32 = 0xFFFF_FFFF;
    /// Words in the block: magic, action, 29 arguments, CRC.
    pub const WORDS: usize = 32;
}

/// What eboot does at the next boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EbootAction {
    /// Copy `args[2]` bytes from `args[0]` to `args[1]`, then boot.
    CopyRaw,
    /// Boot the app.
    LoadApp,
    /// Any other value.
    Other(u32),
}

impl EbootAction {
    fn word(self) -> u32 {
        match self {
            EbootAction::CopyRaw => eboot::ACTION_COPY_RAW,
            EbootAction::LoadApp => eboot::ACTION_LOAD_APP,
            EbootAction::Other(w) => w,
        }
    }

    fn from_word(w: u32) -> Self {
        match w {
            eboot::ACTION_COPY_RAW => EbootAction::CopyRaw,
            eboot::ACTION_LOAD_APP => EbootAction::LoadApp,
            other => EbootAction::Other(other),
        }
    }
}

/// The eboot command block (`struct eboot_command`): magic, action, 29 args, CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EbootCommand {
    /// The action.
    pub action: EbootAction,
    /// Arguments; for COPY_RAW `{src, dst, size}`.
    pub args: [u32; 29],
}

/// CRC-32/MPEG-2 (poly 0x04C11DB7, init 0xFFFFFFFF, MSB first, no final XOR): the bitwise
/// `crc32()` of cores/esp8266/crc32.cpp that eboot_command_write uses.
const EBOOT_CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_MPEG_2);

impl EbootCommand {
    /// The command `Update.end()` writes: copy `size` bytes from `src` to `dst`.
    ///
    /// Arguments 3..28 are zero here; on the device they are whatever was on the stack
    /// (`eboot_command ebcmd;` is not initialised), which only changes the CRC.
    pub fn copy_raw(src: u32, dst: u32, size: u32) -> Self {
        let mut args = [0u32; 29];
        args[..3].copy_from_slice(&[src, dst, size]);
        EbootCommand {
            action: EbootAction::CopyRaw,
            args,
        }
    }

    /// The CRC over the first 31 words as they lie in (little-endian) memory.
    pub fn crc(words: &[u32]) -> u32 {
        let mut digest = EBOOT_CRC.digest();
        for w in words {
            digest.update(&w.to_le_bytes());
        }
        digest.finalize()
    }

    /// The 32 RTC words: magic, action, args, CRC.
    pub fn to_words(&self) -> [u32; eboot::WORDS] {
        let mut words = [0u32; eboot::WORDS];
        words[0] = eboot::MAGIC;
        words[1] = self.action.word();
        words[2..31].copy_from_slice(&self.args);
        words[31] = Self::crc(&words[..31]);
        words
    }

    /// Reads the 32 RTC words like `eboot_command_read`: the masked magic and the CRC must
    /// match, otherwise there is no command.
    pub fn from_words(words: &[u32; eboot::WORDS]) -> Result<Self, CodecError> {
        if words[0] & eboot::MAGIC_MASK != eboot::MAGIC {
            return Err(CodecError::EbootMagic { found: words[0] });
        }
        let computed = Self::crc(&words[..31]);
        if words[31] != computed {
            return Err(CodecError::EbootCrc {
                stored: words[31],
                computed,
            });
        }
        let mut args = [0u32; 29];
        args.copy_from_slice(&words[2..31]);
        Ok(EbootCommand {
            action: EbootAction::from_word(words[1]),
            args,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A 1 MB NOR flash with fault injection.
    struct MemFlash {
        data: Vec<u8>,
        fail_erase_at: Option<u32>,
        fail_write_at: Option<u32>,
        fail_read_at: Option<u32>,
        erased: Vec<u32>,
    }

    impl MemFlash {
        fn new() -> Self {
            MemFlash {
                data: vec![0xFF; 0x10_0000],
                fail_erase_at: None,
                fail_write_at: None,
                fail_read_at: None,
                erased: Vec::new(),
            }
        }

        /// Flash with an installed sketch: header at 0 (mode, size code) and an app image at
        /// 0x1000 with one segment of `app_len` bytes.
        fn with_sketch(mode: u8, size_code: u8, app_len: u32) -> Self {
            let mut f = MemFlash::new();
            f.data[..4].copy_from_slice(&[0xE9, 1, mode, size_code << 4]);
            let base = APP_START_OFFSET as usize;
            f.data[base..base + 8].copy_from_slice(&[0xE9, 1, mode, size_code << 4, 0, 0, 0, 0]);
            f.data[base + 8..base + 12].copy_from_slice(&0x4020_1010u32.to_le_bytes());
            f.data[base + 12..base + 16].copy_from_slice(&app_len.to_le_bytes());
            f
        }
    }

    impl FlashWriter for MemFlash {
        fn erase_sector(&mut self, addr: u32) -> Result<(), FlashFault> {
            assert_eq!(addr % FLASH_SECTOR_SIZE, 0, "unaligned erase");
            if self.fail_erase_at == Some(addr) {
                return Err(FlashFault { addr });
            }
            self.erased.push(addr);
            let a = addr as usize;
            self.data[a..a + FLASH_SECTOR_SIZE as usize].fill(0xFF);
            Ok(())
        }
        fn write(&mut self, addr: u32, data: &[u8]) -> Result<(), FlashFault> {
            if self.fail_write_at == Some(addr) {
                return Err(FlashFault { addr });
            }
            for (i, b) in data.iter().enumerate() {
                self.data[addr as usize + i] &= b;
            }
            Ok(())
        }
        fn read(&mut self, addr: u32, buf: &mut [u8]) -> Result<(), FlashFault> {
            if self.fail_read_at == Some(addr) {
                return Err(FlashFault { addr });
            }
            let a = addr as usize;
            buf.copy_from_slice(&self.data[a..a + buf.len()]);
            Ok(())
        }
    }

    fn layout() -> FlashLayout {
        crate::board::find("sonoff-basic").unwrap().layout.clone()
    }

    fn env() -> DeviceEnv {
        DeviceEnv {
            layout: layout(),
            real_flash_size: 1 << 20,
            boot_mode: 3,
            core: CoreModel::V3_1,
        }
    }

    /// An image of `len` bytes: header with DIO mode and 1 MB, then a counting pattern.
    fn image(len: usize, mode: u8) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        v[..4].copy_from_slice(&[0xE9, 2, mode, 0x20]);
        v
    }

    fn md5_hex(data: &[u8]) -> String {
        hex(&Md5::digest(data))
    }

    #[test]
    fn error_texts_and_codes() {
        assert_eq!(
            UpdaterError::Space.printed(),
            "ERROR[4]: Not Enough Space\n"
        );
        assert_eq!(
            UpdaterError::Bootstrap.printed(),
            "ERROR[11]: Invalid bootstrapping state, reset ESP8266 before updating\n"
        );
        assert_eq!(
            UpdaterError::FlashConfig {
                real: 1048576,
                sdk: 4194304
            }
            .to_string(),
            "Flash config wrong: real: 1048576, SDK: 4194304"
        );
        assert_eq!(UpdaterError::UnknownCommand.code(), 16);
        let e = DeviceError::parse("ERROR[10]: Magic byte is not 0xE9\n").unwrap();
        assert_eq!(e, UpdaterError::MagicByte.to_device_error());
        assert_eq!(DeviceError::parse("ERROR[]: x"), None);
        assert_eq!(DeviceError::parse("ERROR[300]: x"), None);
        assert_eq!(DeviceError::parse("OK"), None);
    }

    #[test]
    fn staging_follows_the_1m64_layout() {
        let l = layout();
        assert_eq!(l.fs_start, 0xEB000);
        // 300 000-byte sketch (0x4A000 rounded), 400 000-byte update (0x62000 rounded).
        assert_eq!(
            staging_address(&l, 300_000, 400_000, UpdateCommand::Flash),
            Ok(0xEB000 - 0x62000)
        );
        // 500 000 + 500 000 > 0xEB000.
        assert_eq!(
            staging_address(&l, 500_000, 500_000, UpdateCommand::Flash),
            Err(UpdaterError::Space)
        );
        // Exactly fitting: staging starts at the sketch's rounded end.
        assert_eq!(
            staging_address(&l, 0x75000, 0x76000, UpdateCommand::Flash),
            Ok(0x75000)
        );
        assert_eq!(
            staging_address(&l, 0, 0x10000, UpdateCommand::Fs),
            Ok(0xEB000)
        );
        assert_eq!(
            staging_address(&l, 0, 0x10001, UpdateCommand::Fs),
            Err(UpdaterError::Space)
        );
        // HTTP: all free space minus one sector, so staging is one sector after the sketch.
        let size = http_begin_size(&l, 300_000);
        assert_eq!(size, 0xEB000 - 0x4A000 - 0x1000);
        assert_eq!(
            staging_address(&l, 300_000, size, UpdateCommand::Flash),
            Ok(0x4B000)
        );
    }

    #[test]
    fn sketch_size_walks_segments() {
        let mut f = MemFlash::with_sketch(3, 2, 1000);
        // 0x1000 + 8 header + 8 segment header + 1000 data = 5112; (5112 + 16) & !15 = 5120.
        assert_eq!(sketch_size(&mut f), Ok(5120));
    }

    #[test]
    fn successful_flash_update_stages_patches_and_commands_eboot() {
        let mut f = MemFlash::with_sketch(3, 2, 200_000);
        let img = image(10_000, 2); // DIO image onto a DOUT device
        let mut s = UpdateSession::new(env());
        let start = s
            .begin(&mut f, img.len() as u32, UpdateCommand::Flash)
            .unwrap();
        assert_eq!(start, 0xEB000 - 0x3000);
        assert!(s.set_md5(&md5_hex(&img).to_uppercase()));
        for chunk in img.chunks(1460) {
            assert_eq!(s.write(&mut f, chunk), chunk.len());
        }
        assert!(s.is_finished());
        let cmd = s.end(&mut f, false).unwrap().unwrap();
        assert_eq!(cmd, EbootCommand::copy_raw(start, 0, 10_000));
        let staged = &f.data[start as usize..start as usize + img.len()];
        assert_eq!(staged[2], 3, "flash mode patched to the running DOUT");
        assert_eq!(&staged[3..], &img[3..]);
        assert_eq!(f.erased, [start, start + 0x1000, start + 0x2000]);
        assert!(!s.is_running());
        assert_eq!(s.error(), None);
    }

    #[test]
    fn gzip_images_are_not_patched_and_old_cores_do_not_patch() {
        let mut f = MemFlash::with_sketch(3, 2, 1000);
        let mut img = image(5000, 2);
        img[..2].copy_from_slice(&GZIP_MAGIC);
        let mut s = UpdateSession::new(env());
        let start = s.begin(&mut f, 5000, UpdateCommand::Flash).unwrap();
        s.write(&mut f, &img);
        s.end(&mut f, false).unwrap();
        assert_eq!(f.data[start as usize + 2], 2);

        let mut f = MemFlash::with_sketch(3, 2, 1000);
        let img = image(5000, 2);
        let mut s = UpdateSession::new(DeviceEnv {
            core: CoreModel::PRE_2_4,
            ..env()
        });
        let start = s.begin(&mut f, 5000, UpdateCommand::Flash).unwrap();
        s.write(&mut f, &img);
        s.end(&mut f, false).unwrap();
        assert_eq!(f.data[start as usize + 2], 2);
    }

    #[test]
    fn begin_errors_in_device_order() {
        let mut f = MemFlash::with_sketch(3, 2, 1000);
        // Strap 1 wins over size 0 (checked first), but only on cores that check it.
        let mut s = UpdateSession::new(DeviceEnv {
            boot_mode: 1,
            ..env()
        });
        assert_eq!(
            s.begin(&mut f, 0, UpdateCommand::Flash),
            Err(UpdaterError::Bootstrap)
        );
        assert_eq!(s.error().map(UpdaterError::code), Some(11));
        let mut old = UpdateSession::new(DeviceEnv {
            boot_mode: 1,
            core: CoreModel::PRE_2_4,
            ..env()
        });
        assert!(old.begin(&mut f, 1000, UpdateCommand::Flash).is_ok());

        let mut s = UpdateSession::new(env());
        assert_eq!(
            s.begin(&mut f, 0, UpdateCommand::Flash),
            Err(UpdaterError::Size)
        );

        // Running header says 4 MB on a 1 MB chip.
        let mut big = MemFlash::with_sketch(3, 4, 1000);
        assert_eq!(
            s.begin(&mut big, 1000, UpdateCommand::Flash),
            Err(UpdaterError::FlashConfig {
                real: 1 << 20,
                sdk: 4 << 20
            })
        );

        let mut large = MemFlash::with_sketch(3, 2, 600_000);
        assert_eq!(
            s.begin(&mut large, 400_000, UpdateCommand::Flash),
            Err(UpdaterError::Space)
        );

        assert!(s.begin(&mut f, 1000, UpdateCommand::Flash).is_ok());
        assert_eq!(s.error(), None, "a successful begin clears the error");
        assert_eq!(
            s.begin(&mut f, 1000, UpdateCommand::Flash),
            Err(UpdaterError::RunningAlready)
        );
        assert!(!s.is_running(), "the error reset drops the running update");
    }

    #[test]
    fn core_versions_pick_the_checks() {
        assert_eq!(CoreModel::for_version("3.1.2"), Some(CoreModel::V3_1));
        assert_eq!(CoreModel::for_version("2.4.2"), Some(CoreModel::V3_1));
        assert_eq!(
            CoreModel::for_version("2.4.0-rc2").map(|c| (c.bootstrap_check, c.patch_flash_mode)),
            Some((true, false))
        );
        assert_eq!(CoreModel::for_version("2.3.0"), Some(CoreModel::PRE_2_4));
        assert_eq!(CoreModel::for_version("2.1.0"), Some(CoreModel::PRE_2_4));
        assert_eq!(CoreModel::for_version("2.0.0"), Some(CoreModel::PRE_2_1));
        for bad in ["", "2", "2.3", "2.x.0", "2.3.0.1", "-1.0.0", "2.3."] {
            assert_eq!(CoreModel::for_version(bad), None, "{bad:?}");
        }

        // Without the checks a 4 MB image is staged on a 1 MB chip and commanded to eboot.
        let mut big = MemFlash::with_sketch(3, 4, 1000);
        let mut s = UpdateSession::new(DeviceEnv {
            core: CoreModel::PRE_2_1,
            ..env()
        });
        let mut four = image(5000, 3);
        four[3] = 0x40;
        let start = s.begin(&mut big, 5000, UpdateCommand::Flash).unwrap();
        assert_eq!(s.write(&mut big, &four), 5000);
        assert_eq!(
            s.end(&mut big, false),
            Ok(Some(EbootCommand::copy_raw(start, 0, 5000)))
        );
    }

    #[test]
    fn write_errors() {
        let mut f = MemFlash::with_sketch(3, 2, 1000);
        let mut s = UpdateSession::new(env());
        s.begin(&mut f, 100, UpdateCommand::Flash).unwrap();
        assert_eq!(s.write(&mut f, &[0xE9; 101]), 0);
        assert_eq!(s.error(), Some(&UpdaterError::Space));
        assert_eq!(
            s.write(&mut f, &[0xE9; 10]),
            0,
            "not running after an error"
        );

        let start = s.begin(&mut f, 10_000, UpdateCommand::Flash).unwrap();
        f.fail_erase_at = Some(start + 0x1000);
        let img = image(10_000, 3);
        assert_eq!(s.write(&mut f, &img), 4096, "second sector's erase fails");
        assert_eq!(s.error(), Some(&UpdaterError::Erase));

        f.fail_erase_at = None;
        let start = s.begin(&mut f, 10_000, UpdateCommand::Flash).unwrap();
        f.fail_write_at = Some(start);
        assert_eq!(s.write(&mut f, &img), 0);
        assert_eq!(s.error().map(UpdaterError::code), Some(1));
    }

    #[test]
    fn end_errors() {
        let mut f = MemFlash::with_sketch(3, 2, 1000);
        let mut s = UpdateSession::new(env());
        // Not begun: no code.
        assert_eq!(s.end(&mut f, false), Err(UpdaterError::NoError));

        // Nothing flushed.
        s.begin(&mut f, 5000, UpdateCommand::Flash).unwrap();
        assert_eq!(s.end(&mut f, false), Err(UpdaterError::NoData));

        // Premature end sets no code.
        s.begin(&mut f, 10_000, UpdateCommand::Flash).unwrap();
        s.write(&mut f, &image(5000, 3));
        assert_eq!(s.end(&mut f, false), Err(UpdaterError::NoError));

        // Wrong MD5.
        let img = image(5000, 3);
        s.begin(&mut f, 5000, UpdateCommand::Flash).unwrap();
        s.set_md5(&"0".repeat(32));
        s.write(&mut f, &img);
        assert_eq!(
            s.end(&mut f, false),
            Err(UpdaterError::Md5 {
                expected: "0".repeat(32),
                calculated: md5_hex(&img)
            })
        );

        // Not an image: checked only at the end, after everything was written.
        let mut junk = img.clone();
        junk[0] = b'P';
        s.begin(&mut f, 5000, UpdateCommand::Flash).unwrap();
        assert_eq!(s.write(&mut f, &junk), 5000);
        assert_eq!(s.end(&mut f, false), Err(UpdaterError::MagicByte));
        assert_eq!(
            verify_header(b'P', UpdateCommand::Flash),
            Err(UpdaterError::MagicByte)
        );
        assert_eq!(verify_header(0x1F, UpdateCommand::Flash), Ok(()));
        assert_eq!(verify_header(b'P', UpdateCommand::Fs), Ok(()));

        // New image built for 4 MB.
        let mut four = img.clone();
        four[3] = 0x40;
        s.begin(&mut f, 5000, UpdateCommand::Flash).unwrap();
        s.write(&mut f, &four);
        assert_eq!(
            s.end(&mut f, false),
            Err(UpdaterError::NewFlashConfig { real: 1 << 20 })
        );

        // Staged header unreadable.
        let start = s.begin(&mut f, 5000, UpdateCommand::Flash).unwrap();
        s.write(&mut f, &img);
        f.fail_read_at = Some(start);
        assert_eq!(s.end(&mut f, false), Err(UpdaterError::Read));
    }

    #[test]
    fn http_path_truncates_and_short_uploads_fail_with_no_data() {
        let mut f = MemFlash::with_sketch(3, 2, 300_000);
        let l = layout();
        let sketch = sketch_size(&mut f).unwrap();
        let mut s = UpdateSession::new(env());
        let size = http_begin_size(&l, sketch);
        let start = s.begin(&mut f, size, UpdateCommand::Flash).unwrap();
        assert_eq!(start, round_up_sector(sketch) + 0x1000);
        let img = image(9000, 3);
        for block in img.chunks(2048) {
            assert_eq!(s.write(&mut f, block), block.len());
        }
        let cmd = s.end(&mut f, true).unwrap().unwrap();
        assert_eq!(cmd.args[..3], [start, 0, 9000]);
        assert_eq!(&f.data[start as usize..start as usize + 9000], &img[..]);

        // Less than one sector never reaches flash before end(true): error 13.
        s.begin(&mut f, size, UpdateCommand::Flash).unwrap();
        s.write(&mut f, &img[..3000]);
        assert_eq!(s.end(&mut f, true), Err(UpdaterError::NoData));
    }

    #[test]
    fn fs_update_writes_in_place_without_eboot() {
        let mut f = MemFlash::with_sketch(3, 2, 1000);
        let mut s = UpdateSession::new(env());
        let start = s.begin(&mut f, 0x10000, UpdateCommand::Fs).unwrap();
        assert_eq!(start, 0xEB000);
        let data = vec![0x42; 0x10000];
        assert_eq!(s.write(&mut f, &data), data.len());
        assert_eq!(s.end(&mut f, false), Ok(None));
        assert_eq!(f.data[0xEB000 + 2], 0x42, "no flash mode patch for FS");
    }

    /// The CRC as defined (MSB first, poly 0x04C11DB7, init all ones, no final XOR), written
    /// out bit by bit to check the catalogue algorithm against.
    fn crc_by_definition(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in bytes {
            crc ^= u32::from(byte) << 24;
            for _ in 0..8 {
                crc = if crc & 0x8000_0000 != 0 {
                    (crc << 1) ^ 0x04C1_1DB7
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    #[test]
    fn eboot_crc_matches_the_definition() {
        assert_eq!(EBOOT_CRC.checksum(b"123456789"), 0x0376_E6E7);
        assert_eq!(crc_by_definition(b"123456789"), 0x0376_E6E7);
        let cmd = EbootCommand::copy_raw(0x89000, 0, 0x5F000);
        let words = cmd.to_words();
        let bytes: Vec<u8> = words[..31].iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(bytes.len(), 124);
        assert_eq!(words[31], crc_by_definition(&bytes));
        assert_eq!(words[0], 0xEB00_1000);
        assert_eq!(words[1], 1);
        assert_eq!(words[2..5], [0x89000, 0, 0x5F000]);
    }

    #[test]
    fn eboot_words_are_checked() {
        let mut words = EbootCommand::copy_raw(1, 2, 3).to_words();
        words[0] |= 0xABC; // eboot masks the low bits of the magic
        words[31] = EbootCommand::crc(&words[..31]);
        assert_eq!(
            EbootCommand::from_words(&words).unwrap().args[..3],
            [1, 2, 3]
        );
        words[4] = 4;
        assert!(matches!(
            EbootCommand::from_words(&words),
            Err(CodecError::EbootCrc { .. })
        ));
        let zero = [0u32; 32];
        assert!(matches!(
            EbootCommand::from_words(&zero),
            Err(CodecError::EbootMagic { found: 0 })
        ));
    }

    proptest! {
        #[test]
        fn eboot_round_trip(action in any::<u32>(), args in proptest::array::uniform29(any::<u32>())) {
            let cmd = EbootCommand { action: EbootAction::from_word(action), args };
            prop_assert_eq!(EbootCommand::from_words(&cmd.to_words()), Ok(cmd));
        }

        #[test]
        fn any_split_of_the_upload_stages_the_same_bytes(
            len in 1usize..20_000,
            cuts in proptest::collection::vec(1usize..5000, 0..20),
        ) {
            let mut f = MemFlash::with_sketch(3, 2, 1000);
            let img = image(len.max(4), 3);
            let mut s = UpdateSession::new(env());
            let start = s.begin(&mut f, img.len() as u32, UpdateCommand::Flash).unwrap() as usize;
            let mut rest = &img[..];
            for c in cuts.iter().chain(std::iter::repeat(&1460)) {
                if rest.is_empty() { break; }
                let n = (*c).min(rest.len());
                prop_assert_eq!(s.write(&mut f, &rest[..n]), n);
                rest = &rest[n..];
            }
            prop_assert!(s.end(&mut f, false).is_ok());
            prop_assert_eq!(&f.data[start..start + img.len()], &img[..]);
        }
    }
}
