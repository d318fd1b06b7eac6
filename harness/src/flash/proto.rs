//! SLIP framing and the ESP8266 ROM loader / esptool stub command codec.
//!
//! Pure (L0): bytes in, values out; no I/O and no clock. The same codec serves the simulator's
//! ROM loader (which parses [`Command`]s and writes [`Response`]s) and the harness's flasher
//! (the other way round).
//!
//! Wire format (esptool `loader.py` `command`/`check_command`, docs/en/advanced-topics/
//! serial-protocol.rst; little-endian throughout):
//!
//! - request  `00 | op | size:u16 | checksum:u32 | data[size]`
//! - response `01 | op | size:u16 | value:u32 | data[size]`, where the last two data bytes are
//!   the status. The ROM sends `status, error` (0 = ok, 1 = failed, then a [`RomError`]); the
//!   stubs send an error code first ([`StubError`], 0 = ok) and then 0. esptool only looks at
//!   "first status byte != 0", taken right after the response data it expects.
//!
//! Every packet travels SLIP-framed: `C0 … C0`, with `C0` escaped as `DB DC` and `DB` as `DB DD`
//! after lengths and checksums are computed.

use std::fmt;
use std::time::Duration;

/// SLIP frame delimiter.
pub const SLIP_END: u8 = 0xC0;
/// SLIP escape byte.
pub const SLIP_ESC: u8 = 0xDB;
/// Follows [`SLIP_ESC`] to stand for an escaped [`SLIP_END`].
pub const SLIP_ESC_END: u8 = 0xDC;
/// Follows [`SLIP_ESC`] to stand for an escaped [`SLIP_ESC`].
pub const SLIP_ESC_ESC: u8 = 0xDD;

/// Largest decoded frame the [`SlipDecoder`] accepts by default. The largest legitimate frame is
/// a stub FLASH_DATA: 8 header + 16 data header + 0x4000 payload; 64 KiB leaves room for custom
/// block sizes while bounding memory on a line full of noise.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// First byte of a request packet.
pub const DIRECTION_REQUEST: u8 = 0x00;
/// First byte of a response packet.
pub const DIRECTION_RESPONSE: u8 = 0x01;
/// Length of the fixed packet header (direction, op, size, checksum/value).
pub const HEADER_LEN: usize = 8;
/// Length of the header that precedes the payload of FLASH_DATA/MEM_DATA/FLASH_DEFL_DATA
/// (`len, seq, 0, 0`).
pub const DATA_HEADER_LEN: usize = 16;

/// Seed of the data checksum: XOR of all payload bytes starting from 0xEF
/// (esptool `ESP_CHECKSUM_MAGIC`).
pub const CHECKSUM_SEED: u8 = 0xEF;

/// Payload of the SYNC command: `07 07 12 20` then 32 × `55` (esptool `sync`).
pub const SYNC_PAYLOAD: [u8; 36] = {
    let mut p = [0x55u8; 36];
    p[0] = 0x07;
    p[1] = 0x07;
    p[2] = 0x12;
    p[3] = 0x20;
    p
};
/// The ROM and the stubs answer one SYNC with this many identical responses; esptool reads the
/// first and then 7 more (esptool `sync`; esp-flasher-stub `s_sync`).
pub const SYNC_REPLIES: usize = 8;

/// Rate of the ROM's own output (banner, boot messages) with the usual 26 MHz crystal: the ROM
/// programs the divider for 115200 at 40 MHz, so 115200 × 26/40 = 74880 (esptool
/// boot-mode-selection docs).
pub const ROM_PRINT_BAUD: u32 = 74_880;
/// Rate esptool first talks to the ROM at (esp-pylib `ESP_ROM_BAUD`); the ROM autobauds.
pub const ESP_ROM_BAUD: u32 = 115_200;

/// Flash sector: the smallest erase unit (esptool `FLASH_SECTOR_SIZE`).
pub const FLASH_SECTOR_SIZE: u32 = 0x1000;
/// Flash page: the largest single program operation (SPI NOR datasheets).
pub const FLASH_PAGE_SIZE: u32 = 0x100;
/// Block size esptool uses for FLASH_DATA to the ROM (esptool `FLASH_WRITE_SIZE`).
pub const ROM_FLASH_BLOCK: u32 = 0x400;
/// Block size esptool uses for FLASH_DATA/FLASH_DEFL_DATA to the stub
/// (esptool `StubMixin.FLASH_WRITE_SIZE`).
pub const STUB_FLASH_BLOCK: u32 = 0x4000;
/// Block size for MEM_DATA (esptool `ESP_RAM_BLOCK`).
pub const RAM_BLOCK: u32 = 0x1800;
/// Packet size the stub's READ_FLASH sends (esptool passes `FLASH_SECTOR_SIZE`).
pub const READ_FLASH_PACKET: u32 = 0x1000;

/// Timeout of most commands (esptool `DEFAULT_TIMEOUT`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout for the first SYNC reply (esptool `SYNC_TIMEOUT`).
pub const SYNC_TIMEOUT: Duration = Duration::from_millis(100);
/// Timeout of MEM_END to the ROM, whose reply may be lost (esptool `MEM_END_ROM_TIMEOUT`).
pub const MEM_END_ROM_TIMEOUT: Duration = Duration::from_millis(200);
/// Per-MB timeout of erasing commands (esptool `ERASE_REGION_TIMEOUT_PER_MB`).
pub const ERASE_REGION_TIMEOUT_PER_MB: Duration = Duration::from_secs(40);
/// Per-MB timeout of SPI_FLASH_MD5 (esptool `MD5_TIMEOUT_PER_MB`).
pub const MD5_TIMEOUT_PER_MB: Duration = Duration::from_secs(8);
/// Timeout of ERASE_FLASH (esptool `CHIP_ERASE_TIMEOUT`).
pub const CHIP_ERASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Scales a per-megabyte timeout to `size` bytes, never below [`DEFAULT_TIMEOUT`]
/// (esptool `timeout_per_mb`, which uses decimal megabytes).
pub fn timeout_per_mb(per_mb: Duration, size: u32) -> Duration {
    let scaled = per_mb.mul_f64(f64::from(size) / 1e6);
    scaled.max(DEFAULT_TIMEOUT)
}

/// Register addresses and values the ROM loader exposes through READ_REG/WRITE_REG
/// (esptool `targets/esp8266.py`, `loader.py`).
pub mod reg {
    /// Address whose value tells chip families apart (`CHIP_DETECT_MAGIC_REG_ADDR`).
    pub const CHIP_DETECT_MAGIC: u32 = 0x4000_1000;
    /// Value at [`CHIP_DETECT_MAGIC`] on ESP8266 and ESP8285 (`ESP8266ROM.MAGIC_VALUE`).
    pub const ESP8266_MAGIC: u32 = 0xFFF0_C101;
    /// eFuse word 0 (`ESP_OTP_MAC0`).
    pub const EFUSE_MAC0: u32 = 0x3FF0_0050;
    /// eFuse word 1 (`ESP_OTP_MAC1`).
    pub const EFUSE_MAC1: u32 = 0x3FF0_0054;
    /// eFuse word 2 (read by `get_efuses`).
    pub const EFUSE_MAC2: u32 = 0x3FF0_0058;
    /// eFuse word 3 (`ESP_OTP_MAC3`).
    pub const EFUSE_MAC3: u32 = 0x3FF0_005C;
    /// UART0 clock divider (`UART_CLKDIV_REG`); esptool derives the crystal from it.
    pub const UART_CLKDIV: u32 = 0x6000_0014;
    /// Valid bits of [`UART_CLKDIV`] (`UART_CLKDIV_MASK`).
    pub const UART_CLKDIV_MASK: u32 = 0xF_FFFF;
    /// UART date register, written by esptool as a dummy to get a delay (`UART_DATE_REG_ADDR`).
    pub const UART_DATE: u32 = 0x6000_0078;
    /// SPI flash controller base (`SPI_REG_BASE`).
    pub const SPI_BASE: u32 = 0x6000_0200;
    /// SPI command register; writing [`SPI_CMD_USR`] runs a user command.
    pub const SPI_CMD: u32 = SPI_BASE;
    /// SPI address register (address in the top bits for 24-bit addresses).
    pub const SPI_ADDR: u32 = SPI_BASE + 0x04;
    /// SPI user register (`SPI_USR_OFFS`): which phases a user command has.
    pub const SPI_USR: u32 = SPI_BASE + 0x1C;
    /// SPI user register 1 (`SPI_USR1_OFFS`): bit lengths of MOSI and MISO phases.
    pub const SPI_USR1: u32 = SPI_BASE + 0x20;
    /// SPI user register 2 (`SPI_USR2_OFFS`): command length and opcode.
    pub const SPI_USR2: u32 = SPI_BASE + 0x24;
    /// First SPI data word (`SPI_W0_OFFS`).
    pub const SPI_W0: u32 = SPI_BASE + 0x40;
    /// Bit in [`SPI_CMD`] that starts a user command and clears when it is done.
    pub const SPI_CMD_USR: u32 = 1 << 18;
    /// [`SPI_USR`] flag: the command has a MISO (read) phase.
    pub const SPI_USR_MISO: u32 = 1 << 28;
    /// [`SPI_USR`] flag: the command has a MOSI (write) phase.
    pub const SPI_USR_MOSI: u32 = 1 << 27;
    /// [`SPI_USR`] flag: the command has an address phase.
    pub const SPI_USR_ADDR: u32 = 1 << 30;
    /// Shift of the MISO bit length (minus one) in [`SPI_USR1`].
    pub const SPI_MISO_BITLEN_SHIFT: u32 = 8;
    /// Shift of the MOSI bit length (minus one) in [`SPI_USR1`].
    pub const SPI_MOSI_BITLEN_SHIFT: u32 = 17;
}

/// SPI NOR flash opcodes esptool sends through the SPI user-command registers (`cmds.py`).
pub mod spi_flash {
    /// Read JEDEC id.
    pub const RDID: u8 = 0x9F;
    /// Read SFDP table (with a 24-bit address and 8 dummy cycles).
    pub const RDSFDP: u8 = 0x5A;
    /// Read status register 1.
    pub const RDSR: u8 = 0x05;
    /// Read status register 2.
    pub const RDSR2: u8 = 0x35;
    /// Read status register 3.
    pub const RDSR3: u8 = 0x15;
    /// Write status register 1 (2 bytes writes register 2 too).
    pub const WRSR: u8 = 0x01;
    /// Write status register 2.
    pub const WRSR2: u8 = 0x31;
    /// Write status register 3.
    pub const WRSR3: u8 = 0x11;
    /// Write enable.
    pub const WREN: u8 = 0x06;
    /// Write disable.
    pub const WRDI: u8 = 0x04;
    /// Write enable for volatile status register.
    pub const WEVSR: u8 = 0x50;
    /// Reset enable.
    pub const RSTEN: u8 = 0x66;
    /// Reset.
    pub const RST: u8 = 0x99;
    /// "SFDP" as the 32-bit little-endian word esptool compares against.
    pub const SFDP_SIGNATURE: u32 = 0x5044_4653;
}

/// A loader operation code (esptool `ESP_CMDS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// 0x02: start a flash write (ROM: erases first).
    FlashBegin,
    /// 0x03: one block of flash data.
    FlashData,
    /// 0x04: leave flash mode; argument 0 = reboot, 1 = run user code.
    FlashEnd,
    /// 0x05: start a RAM upload.
    MemBegin,
    /// 0x06: finish a RAM upload, optionally jumping to an entry point.
    MemEnd,
    /// 0x07: one block of RAM data.
    MemData,
    /// 0x08: synchronise (and, for the ROM, autobaud).
    Sync,
    /// 0x09: write registers (16-byte groups).
    WriteReg,
    /// 0x0A: read one register.
    ReadReg,
    /// 0x0B: set SPI flash parameters.
    SpiSetParams,
    /// 0x0D: attach SPI flash.
    SpiAttach,
    /// 0x0F: change the UART rate (stub only on ESP8266).
    ChangeBaudrate,
    /// 0x10: start a compressed flash write (stub only on ESP8266).
    FlashDeflBegin,
    /// 0x11: one block of a zlib stream.
    FlashDeflData,
    /// 0x12: end a compressed flash write.
    FlashDeflEnd,
    /// 0x13: MD5 of a flash region.
    SpiFlashMd5,
    /// 0x14: security info (not on ESP8266).
    GetSecurityInfo,
    /// 0xD0: erase the whole flash (stub only).
    EraseFlash,
    /// 0xD1: erase a region (stub only).
    EraseRegion,
    /// 0xD2: stream flash contents to the host (stub only).
    ReadFlash,
    /// 0xD3: leave the stub and run the firmware (stub only; no reply).
    RunUserCode,
    /// Any other code.
    Other(u8),
}

impl From<u8> for Op {
    fn from(code: u8) -> Self {
        match code {
            0x02 => Op::FlashBegin,
            0x03 => Op::FlashData,
            0x04 => Op::FlashEnd,
            0x05 => Op::MemBegin,
            0x06 => Op::MemEnd,
            0x07 => Op::MemData,
            0x08 => Op::Sync,
            0x09 => Op::WriteReg,
            0x0A => Op::ReadReg,
            0x0B => Op::SpiSetParams,
            0x0D => Op::SpiAttach,
            0x0F => Op::ChangeBaudrate,
            0x10 => Op::FlashDeflBegin,
            0x11 => Op::FlashDeflData,
            0x12 => Op::FlashDeflEnd,
            0x13 => Op::SpiFlashMd5,
            0x14 => Op::GetSecurityInfo,
            0xD0 => Op::EraseFlash,
            0xD1 => Op::EraseRegion,
            0xD2 => Op::ReadFlash,
            0xD3 => Op::RunUserCode,
            other => Op::Other(other),
        }
    }
}

impl From<Op> for u8 {
    fn from(op: Op) -> u8 {
        match op {
            Op::FlashBegin => 0x02,
            Op::FlashData => 0x03,
            Op::FlashEnd => 0x04,
            Op::MemBegin => 0x05,
            Op::MemEnd => 0x06,
            Op::MemData => 0x07,
            Op::Sync => 0x08,
            Op::WriteReg => 0x09,
            Op::ReadReg => 0x0A,
            Op::SpiSetParams => 0x0B,
            Op::SpiAttach => 0x0D,
            Op::ChangeBaudrate => 0x0F,
            Op::FlashDeflBegin => 0x10,
            Op::FlashDeflData => 0x11,
            Op::FlashDeflEnd => 0x12,
            Op::SpiFlashMd5 => 0x13,
            Op::GetSecurityInfo => 0x14,
            Op::EraseFlash => 0xD0,
            Op::EraseRegion => 0xD1,
            Op::ReadFlash => 0xD2,
            Op::RunUserCode => 0xD3,
            Op::Other(code) => code,
        }
    }
}

impl Op {
    /// The name esptool uses (`FLASH_BEGIN`, …), or `0xNN` for unknown codes.
    pub fn name(self) -> String {
        let name = match self {
            Op::FlashBegin => "FLASH_BEGIN",
            Op::FlashData => "FLASH_DATA",
            Op::FlashEnd => "FLASH_END",
            Op::MemBegin => "MEM_BEGIN",
            Op::MemEnd => "MEM_END",
            Op::MemData => "MEM_DATA",
            Op::Sync => "SYNC",
            Op::WriteReg => "WRITE_REG",
            Op::ReadReg => "READ_REG",
            Op::SpiSetParams => "SPI_SET_PARAMS",
            Op::SpiAttach => "SPI_ATTACH",
            Op::ChangeBaudrate => "CHANGE_BAUDRATE",
            Op::FlashDeflBegin => "FLASH_DEFL_BEGIN",
            Op::FlashDeflData => "FLASH_DEFL_DATA",
            Op::FlashDeflEnd => "FLASH_DEFL_END",
            Op::SpiFlashMd5 => "SPI_FLASH_MD5",
            Op::GetSecurityInfo => "GET_SECURITY_INFO",
            Op::EraseFlash => "ERASE_FLASH",
            Op::EraseRegion => "ERASE_REGION",
            Op::ReadFlash => "READ_FLASH",
            Op::RunUserCode => "RUN_USER_CODE",
            Op::Other(code) => return format!("0x{code:02X}"),
        };
        name.to_string()
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Error code of a failed ROM command: the second status byte when the first is 1
/// (esptool `util.py` error table, where `0x1NN` is "status 1, error NN").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RomError {
    /// 0x05: the format of the received message is invalid (also: unsupported command).
    InvalidMessage,
    /// 0x06: the message is fine but running it failed.
    FailedToAct,
    /// 0x07: data checksum mismatch.
    BadChecksum,
    /// 0x08: flash write error.
    FlashWrite,
    /// 0x09: flash read error.
    FlashRead,
    /// 0x0A: flash read length error.
    FlashReadLength,
    /// Any other code.
    Other(u8),
}

impl From<u8> for RomError {
    fn from(code: u8) -> Self {
        match code {
            0x05 => RomError::InvalidMessage,
            0x06 => RomError::FailedToAct,
            0x07 => RomError::BadChecksum,
            0x08 => RomError::FlashWrite,
            0x09 => RomError::FlashRead,
            0x0A => RomError::FlashReadLength,
            other => RomError::Other(other),
        }
    }
}

impl From<RomError> for u8 {
    fn from(e: RomError) -> u8 {
        match e {
            RomError::InvalidMessage => 0x05,
            RomError::FailedToAct => 0x06,
            RomError::BadChecksum => 0x07,
            RomError::FlashWrite => 0x08,
            RomError::FlashRead => 0x09,
            RomError::FlashReadLength => 0x0A,
            RomError::Other(code) => code,
        }
    }
}

impl fmt::Display for RomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            RomError::InvalidMessage => "invalid message",
            RomError::FailedToAct => "command failed",
            RomError::BadChecksum => "checksum error",
            RomError::FlashWrite => "flash write error",
            RomError::FlashRead => "flash read error",
            RomError::FlashReadLength => "flash read length error",
            RomError::Other(code) => return write!(f, "ROM error 0x{code:02X}"),
        };
        f.write_str(text)
    }
}

/// Error code of a failed stub command: the first status byte (esp-flasher-stub `commands.h`,
/// esptool `util.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StubError {
    /// 0xC0: bad data length.
    BadDataLen,
    /// 0xC1: bad data checksum.
    BadDataChecksum,
    /// 0xC2: bad block size.
    BadBlocksize,
    /// 0xC3: invalid command (unknown op, new stub).
    InvalidCommand,
    /// 0xC4: SPI operation failed.
    FailedSpiOp,
    /// 0xC5: SPI unlock failed.
    FailedSpiUnlock,
    /// 0xC6: not in flash mode.
    NotInFlashMode,
    /// 0xC7: inflate error.
    InflateError,
    /// 0xC8: not enough data.
    NotEnoughData,
    /// 0xC9: too much data.
    TooMuchData,
    /// 0xFF: command not implemented (unknown op, legacy stub).
    NotImplemented,
    /// Any other code.
    Other(u8),
}

impl From<u8> for StubError {
    fn from(code: u8) -> Self {
        match code {
            0xC0 => StubError::BadDataLen,
            0xC1 => StubError::BadDataChecksum,
            0xC2 => StubError::BadBlocksize,
            0xC3 => StubError::InvalidCommand,
            0xC4 => StubError::FailedSpiOp,
            0xC5 => StubError::FailedSpiUnlock,
            0xC6 => StubError::NotInFlashMode,
            0xC7 => StubError::InflateError,
            0xC8 => StubError::NotEnoughData,
            0xC9 => StubError::TooMuchData,
            0xFF => StubError::NotImplemented,
            other => StubError::Other(other),
        }
    }
}

impl From<StubError> for u8 {
    fn from(e: StubError) -> u8 {
        match e {
            StubError::BadDataLen => 0xC0,
            StubError::BadDataChecksum => 0xC1,
            StubError::BadBlocksize => 0xC2,
            StubError::InvalidCommand => 0xC3,
            StubError::FailedSpiOp => 0xC4,
            StubError::FailedSpiUnlock => 0xC5,
            StubError::NotInFlashMode => 0xC6,
            StubError::InflateError => 0xC7,
            StubError::NotEnoughData => 0xC8,
            StubError::TooMuchData => 0xC9,
            StubError::NotImplemented => 0xFF,
            StubError::Other(code) => code,
        }
    }
}

impl fmt::Display for StubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            StubError::BadDataLen => "bad data length",
            StubError::BadDataChecksum => "bad data checksum",
            StubError::BadBlocksize => "bad block size",
            StubError::InvalidCommand => "invalid command",
            StubError::FailedSpiOp => "SPI operation failed",
            StubError::FailedSpiUnlock => "SPI unlock failed",
            StubError::NotInFlashMode => "not in flash mode",
            StubError::InflateError => "inflate error",
            StubError::NotEnoughData => "not enough data",
            StubError::TooMuchData => "too much data",
            StubError::NotImplemented => "command not implemented",
            StubError::Other(code) => return write!(f, "stub error 0x{code:02X}"),
        };
        f.write_str(text)
    }
}

/// The two status bytes the ROM appends: `00 00` on success, `01 <error>` on failure.
pub fn rom_status(result: Result<(), RomError>) -> [u8; 2] {
    match result {
        Ok(()) => [0, 0],
        Err(e) => [1, e.into()],
    }
}

/// The two status bytes a stub appends: `00 00` on success, `<error> 00` on failure.
pub fn stub_status(result: Result<(), StubError>) -> [u8; 2] {
    match result {
        Ok(()) => [0, 0],
        Err(e) => [e.into(), 0],
    }
}

/// The data checksum of *_DATA commands: 0xEF XOR every payload byte, as a u32.
pub fn checksum(data: &[u8]) -> u32 {
    u32::from(data.iter().fold(CHECKSUM_SEED, |acc, b| acc ^ b))
}

/// Appends `packet` SLIP-framed (`C0`, escaped bytes, `C0`) to `out`.
pub fn slip_encode_into(packet: &[u8], out: &mut Vec<u8>) {
    out.reserve(packet.len() + 2 + packet.len() / 16);
    out.push(SLIP_END);
    for &b in packet {
        match b {
            SLIP_END => out.extend_from_slice(&[SLIP_ESC, SLIP_ESC_END]),
            SLIP_ESC => out.extend_from_slice(&[SLIP_ESC, SLIP_ESC_ESC]),
            other => out.push(other),
        }
    }
    out.push(SLIP_END);
}

/// Returns `packet` SLIP-framed.
pub fn slip_encode(packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    slip_encode_into(packet, &mut out);
    out
}

/// A frame the [`SlipDecoder`] had to drop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlipError {
    /// `DB` was followed by something other than `DC` or `DD`.
    #[error("invalid SLIP escape: 0xDB followed by 0x{byte:02X}")]
    BadEscape {
        /// The byte after the escape.
        byte: u8,
    },
    /// The frame grew beyond the decoder's limit before its end delimiter.
    #[error("SLIP frame longer than {limit} bytes")]
    TooLong {
        /// The limit in bytes.
        limit: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlipState {
    /// Between frames: everything but `C0` is noise.
    Idle,
    /// Inside a frame.
    Frame,
    /// Inside a frame, right after `DB`.
    Escape,
    /// Dropping the rest of a broken frame up to its `C0`.
    Discard,
}

/// A streaming SLIP decoder: feed it arbitrary bytes in arbitrary pieces, get whole frames.
///
/// Bytes between frames (boot messages, noise, a banner at the wrong baud) are skipped and
/// counted. `C0 C0` is an end followed by a start, so an empty frame is never reported. A
/// broken frame is reported once as an error and resynchronises at the next `C0`. It never
/// panics and never holds more than its limit.
#[derive(Debug, Clone)]
pub struct SlipDecoder {
    buf: Vec<u8>,
    state: SlipState,
    skipped: u64,
    limit: usize,
}

impl Default for SlipDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SlipDecoder {
    /// A decoder with the default frame limit ([`MAX_FRAME_LEN`]).
    pub fn new() -> Self {
        Self::with_limit(MAX_FRAME_LEN)
    }

    /// A decoder that drops frames longer than `limit` decoded bytes.
    pub fn with_limit(limit: usize) -> Self {
        SlipDecoder {
            buf: Vec::new(),
            state: SlipState::Idle,
            skipped: 0,
            limit,
        }
    }

    /// Number of bytes seen outside frames so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Whether part of a frame has been received and its end delimiter has not.
    pub fn in_frame(&self) -> bool {
        matches!(self.state, SlipState::Frame | SlipState::Escape) && !self.buf.is_empty()
    }

    /// Forgets any partial frame and waits for the next `C0`.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.state = SlipState::Idle;
    }

    /// Feeds bytes; returns the frames (or dropped-frame errors) they completed, in order.
    pub fn push(&mut self, input: &[u8]) -> Vec<Result<Vec<u8>, SlipError>> {
        let mut out = Vec::new();
        for &b in input {
            if let Some(item) = self.push_byte(b) {
                out.push(item);
            }
        }
        out
    }

    /// Feeds one byte; returns a frame (or error) if this byte completed one.
    pub fn push_byte(&mut self, b: u8) -> Option<Result<Vec<u8>, SlipError>> {
        match self.state {
            SlipState::Idle => {
                if b == SLIP_END {
                    self.buf.clear();
                    self.state = SlipState::Frame;
                } else {
                    self.skipped += 1;
                }
                None
            }
            SlipState::Discard => {
                if b == SLIP_END {
                    self.state = SlipState::Idle;
                } else {
                    self.skipped += 1;
                }
                None
            }
            SlipState::Frame => match b {
                SLIP_END if self.buf.is_empty() => None,
                SLIP_END => {
                    self.state = SlipState::Idle;
                    Some(Ok(std::mem::take(&mut self.buf)))
                }
                SLIP_ESC => {
                    self.state = SlipState::Escape;
                    None
                }
                other => self.append(other),
            },
            SlipState::Escape => match b {
                SLIP_ESC_END => {
                    self.state = SlipState::Frame;
                    self.append(SLIP_END)
                }
                SLIP_ESC_ESC => {
                    self.state = SlipState::Frame;
                    self.append(SLIP_ESC)
                }
                SLIP_END => {
                    // The delimiter still ends the (broken) frame.
                    self.buf.clear();
                    self.state = SlipState::Idle;
                    Some(Err(SlipError::BadEscape { byte: b }))
                }
                other => {
                    self.buf.clear();
                    self.state = SlipState::Discard;
                    Some(Err(SlipError::BadEscape { byte: other }))
                }
            },
        }
    }

    fn append(&mut self, b: u8) -> Option<Result<Vec<u8>, SlipError>> {
        if self.buf.len() >= self.limit {
            self.buf.clear();
            self.state = SlipState::Discard;
            return Some(Err(SlipError::TooLong { limit: self.limit }));
        }
        self.buf.push(b);
        None
    }
}

/// A packet that is not a well-formed request or response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// Fewer bytes than the 8-byte header.
    #[error("packet of {len} bytes is shorter than the 8-byte header")]
    TooShort {
        /// Length of the packet.
        len: usize,
    },
    /// The direction byte is not the one expected (0 request, 1 response).
    #[error("packet direction byte is 0x{got:02X}, expected 0x{expected:02X}")]
    WrongDirection {
        /// Expected direction byte.
        expected: u8,
        /// Actual first byte.
        got: u8,
    },
    /// The header's size field disagrees with the bytes that follow.
    #[error("packet declares {declared} data bytes but carries {actual}")]
    SizeMismatch {
        /// The size field.
        declared: usize,
        /// Bytes after the header.
        actual: usize,
    },
    /// A command's data is too short for its fixed fields.
    #[error("{op} needs at least {needed} data bytes, got {got}")]
    ShortData {
        /// The command.
        op: Op,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
}

fn le32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// A request from the host to the ROM loader or a stub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Operation.
    pub op: Op,
    /// Data checksum ([`checksum`] of the payload for *_DATA commands, else 0).
    pub checksum: u32,
    /// Command data.
    pub data: Vec<u8>,
}

/// The `len, seq, 0, 0` header and payload of a FLASH_DATA/MEM_DATA/FLASH_DEFL_DATA command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataBlock<'a> {
    /// Payload length as declared in the data header.
    pub declared_len: u32,
    /// Block sequence number.
    pub seq: u32,
    /// The payload after the 16-byte data header.
    pub payload: &'a [u8],
}

impl DataBlock<'_> {
    /// Whether the declared length matches the payload.
    pub fn len_matches(&self) -> bool {
        self.declared_len as usize == self.payload.len()
    }
}

impl Command {
    /// A command with checksum 0.
    pub fn new(op: Op, data: Vec<u8>) -> Self {
        Command {
            op,
            checksum: 0,
            data,
        }
    }

    /// Builds a command from 32-bit little-endian words.
    pub fn from_words(op: Op, words: &[u32]) -> Self {
        Command::new(op, words.iter().flat_map(|w| w.to_le_bytes()).collect())
    }

    /// SYNC with the standard payload.
    pub fn sync() -> Self {
        Command::new(Op::Sync, SYNC_PAYLOAD.to_vec())
    }

    /// READ_REG of `addr`.
    pub fn read_reg(addr: u32) -> Self {
        Command::from_words(Op::ReadReg, &[addr])
    }

    /// WRITE_REG of one register.
    pub fn write_reg(addr: u32, value: u32, mask: u32, delay_us: u32) -> Self {
        Command::from_words(Op::WriteReg, &[addr, value, mask, delay_us])
    }

    /// A *_DATA command (FLASH_DATA, MEM_DATA, FLASH_DEFL_DATA) carrying `payload` as block `seq`.
    pub fn data(op: Op, payload: &[u8], seq: u32) -> Self {
        let mut data = Vec::with_capacity(DATA_HEADER_LEN + payload.len());
        for w in [payload.len() as u32, seq, 0, 0] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(payload);
        Command {
            op,
            checksum: checksum(payload),
            data,
        }
    }

    /// Parses an unframed request packet.
    pub fn parse(packet: &[u8]) -> Result<Self, ProtoError> {
        let (op, size, word) = parse_header(packet, DIRECTION_REQUEST)?;
        Ok(Command {
            op,
            checksum: word,
            data: packet[HEADER_LEN..HEADER_LEN + size].to_vec(),
        })
    }

    /// The unframed packet.
    pub fn to_packet(&self) -> Vec<u8> {
        build_packet(DIRECTION_REQUEST, self.op, self.checksum, &self.data)
    }

    /// The SLIP-framed packet, ready for the wire.
    pub fn to_slip(&self) -> Vec<u8> {
        slip_encode(&self.to_packet())
    }

    /// The `index`-th little-endian 32-bit word of the data, if present.
    pub fn word(&self, index: usize) -> Option<u32> {
        le32(&self.data, index * 4)
    }

    /// The first `N` words, or an error naming how many bytes were needed.
    pub fn words<const N: usize>(&self) -> Result<[u32; N], ProtoError> {
        let mut out = [0u32; N];
        for (i, w) in out.iter_mut().enumerate() {
            *w = self.word(i).ok_or(ProtoError::ShortData {
                op: self.op,
                needed: N * 4,
                got: self.data.len(),
            })?;
        }
        Ok(out)
    }

    /// The data header and payload of a *_DATA command.
    pub fn data_block(&self) -> Result<DataBlock<'_>, ProtoError> {
        let [declared_len, seq] = self.words::<2>()?;
        if self.data.len() < DATA_HEADER_LEN {
            return Err(ProtoError::ShortData {
                op: self.op,
                needed: DATA_HEADER_LEN,
                got: self.data.len(),
            });
        }
        Ok(DataBlock {
            declared_len,
            seq,
            payload: &self.data[DATA_HEADER_LEN..],
        })
    }
}

/// A response from the ROM loader or a stub. `data` includes the trailing status bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Operation this answers.
    pub op: Op,
    /// Value field (READ_REG result; SYNC's marker; else usually 0).
    pub value: u32,
    /// Response data, status bytes included.
    pub data: Vec<u8>,
}

impl Response {
    /// A response carrying `body` followed by `status`.
    pub fn new(op: Op, value: u32, body: &[u8], status: [u8; 2]) -> Self {
        let mut data = Vec::with_capacity(body.len() + 2);
        data.extend_from_slice(body);
        data.extend_from_slice(&status);
        Response { op, value, data }
    }

    /// Parses an unframed response packet.
    pub fn parse(packet: &[u8]) -> Result<Self, ProtoError> {
        let (op, size, word) = parse_header(packet, DIRECTION_RESPONSE)?;
        Ok(Response {
            op,
            value: word,
            data: packet[HEADER_LEN..HEADER_LEN + size].to_vec(),
        })
    }

    /// The unframed packet.
    pub fn to_packet(&self) -> Vec<u8> {
        build_packet(DIRECTION_RESPONSE, self.op, self.value, &self.data)
    }

    /// The SLIP-framed packet, ready for the wire.
    pub fn to_slip(&self) -> Vec<u8> {
        slip_encode(&self.to_packet())
    }

    /// The two status bytes following `body_len` bytes of expected response data, the way
    /// esptool's `check_command` reads them; `None` if the response is too short.
    pub fn status(&self, body_len: usize) -> Option<[u8; 2]> {
        let s = self.data.get(body_len..body_len + 2)?;
        Some([s[0], s[1]])
    }

    /// Interprets the status as the ROM's `status, error` pair.
    pub fn rom_result(&self, body_len: usize) -> Option<Result<(), RomError>> {
        let [status, error] = self.status(body_len)?;
        Some(if status == 0 {
            Ok(())
        } else {
            Err(RomError::from(error))
        })
    }

    /// Interprets the status as a stub's `error, 0` pair.
    pub fn stub_result(&self, body_len: usize) -> Option<Result<(), StubError>> {
        let [code, _] = self.status(body_len)?;
        Some(if code == 0 {
            Ok(())
        } else {
            Err(StubError::from(code))
        })
    }
}

fn parse_header(packet: &[u8], expected: u8) -> Result<(Op, usize, u32), ProtoError> {
    if packet.len() < HEADER_LEN {
        return Err(ProtoError::TooShort { len: packet.len() });
    }
    if packet[0] != expected {
        return Err(ProtoError::WrongDirection {
            expected,
            got: packet[0],
        });
    }
    let size = usize::from(u16::from_le_bytes([packet[2], packet[3]]));
    let actual = packet.len() - HEADER_LEN;
    if size != actual {
        return Err(ProtoError::SizeMismatch {
            declared: size,
            actual,
        });
    }
    let word = le32(packet, 4).unwrap_or(0);
    Ok((Op::from(packet[1]), size, word))
}

fn build_packet(direction: u8, op: Op, word: u32, data: &[u8]) -> Vec<u8> {
    // A larger payload cannot be described by the 16-bit size field; no command needs one.
    let size = u16::try_from(data.len()).unwrap_or(u16::MAX);
    let mut p = Vec::with_capacity(HEADER_LEN + data.len());
    p.push(direction);
    p.push(op.into());
    p.extend_from_slice(&size.to_le_bytes());
    p.extend_from_slice(&word.to_le_bytes());
    p.extend_from_slice(&data[..usize::from(size)]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slip_escapes_both_special_bytes() {
        assert_eq!(
            slip_encode(&[0x01, 0xC0, 0x02, 0xDB, 0x03]),
            vec![0xC0, 0x01, 0xDB, 0xDC, 0x02, 0xDB, 0xDD, 0x03, 0xC0]
        );
        assert_eq!(slip_encode(&[]), vec![0xC0, 0xC0]);
    }

    #[test]
    fn slip_round_trip_of_escape_heavy_packet() {
        let packet = [0xC0, 0xC0, 0xDB, 0xDB, 0xDC, 0xDD, 0x00];
        let mut d = SlipDecoder::new();
        assert_eq!(d.push(&slip_encode(&packet)), vec![Ok(packet.to_vec())]);
    }

    #[test]
    fn slip_frame_split_anywhere_still_decodes() {
        let wire = slip_encode(&[0x00, 0x08, 0xDB, 0xC0, 0x42]);
        for cut in 0..=wire.len() {
            let mut d = SlipDecoder::new();
            let mut frames = d.push(&wire[..cut]);
            frames.extend(d.push(&wire[cut..]));
            assert_eq!(
                frames,
                vec![Ok(vec![0x00, 0x08, 0xDB, 0xC0, 0x42])],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn slip_skips_garbage_between_frames() {
        let mut wire = b"\r\n ets Jan  8 2013,rst cause:2\r\n".to_vec();
        wire.extend(slip_encode(&[1, 2, 3]));
        wire.extend(b"noise");
        wire.extend(slip_encode(&[4]));
        let mut d = SlipDecoder::new();
        assert_eq!(d.push(&wire), vec![Ok(vec![1, 2, 3]), Ok(vec![4])]);
        assert_eq!(d.skipped(), 32 + 5);
    }

    #[test]
    fn slip_double_delimiter_is_end_then_start() {
        let mut d = SlipDecoder::new();
        assert_eq!(
            d.push(&[0xC0, 0x01, 0xC0, 0xC0, 0x02, 0xC0, 0xC0, 0xC0]),
            vec![Ok(vec![1]), Ok(vec![2])]
        );
    }

    #[test]
    fn slip_bad_escape_drops_frame_and_resyncs() {
        let mut d = SlipDecoder::new();
        let items = d.push(&[0xC0, 0x01, 0xDB, 0x41, 0x02, 0xC0, 0xC0, 0x07, 0xC0]);
        assert_eq!(
            items,
            vec![Err(SlipError::BadEscape { byte: 0x41 }), Ok(vec![0x07])]
        );
        let items = d.push(&[0xC0, 0x01, 0xDB, 0xC0, 0xC0, 0x09, 0xC0]);
        assert_eq!(
            items,
            vec![Err(SlipError::BadEscape { byte: 0xC0 }), Ok(vec![0x09])]
        );
    }

    #[test]
    fn slip_too_long_frame_is_dropped() {
        let mut d = SlipDecoder::with_limit(4);
        let items = d.push(&[0xC0, 1, 2, 3, 4, 5, 6, 0xC0, 0xC0, 9, 0xC0]);
        assert_eq!(
            items,
            vec![Err(SlipError::TooLong { limit: 4 }), Ok(vec![9])]
        );
    }

    #[test]
    fn checksum_is_ef_xor_payload() {
        assert_eq!(checksum(&[]), 0xEF);
        assert_eq!(checksum(&[0xEF]), 0x00);
        assert_eq!(checksum(&[0x01, 0x02, 0x04]), 0xEF ^ 0x07);
    }

    #[test]
    fn sync_command_bytes_match_esptool() {
        let p = Command::sync().to_packet();
        assert_eq!(&p[..8], &[0x00, 0x08, 0x24, 0x00, 0, 0, 0, 0]);
        assert_eq!(&p[8..12], &[0x07, 0x07, 0x12, 0x20]);
        assert!(p[12..].iter().all(|&b| b == 0x55));
        assert_eq!(p.len(), 8 + 36);
    }

    #[test]
    fn read_reg_round_trip() {
        let c = Command::read_reg(0x4000_1000);
        assert_eq!(
            c.to_packet(),
            vec![0x00, 0x0A, 4, 0, 0, 0, 0, 0, 0x00, 0x10, 0x00, 0x40]
        );
        let back = Command::parse(&c.to_packet()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.word(0), Some(0x4000_1000));
        assert_eq!(back.word(1), None);
    }

    #[test]
    fn data_command_has_header_and_checksum() {
        let c = Command::data(Op::FlashData, &[0xAA, 0x55], 3);
        assert_eq!(c.checksum, u32::from(0xEFu8 ^ 0xAA ^ 0x55));
        let b = c.data_block().unwrap();
        assert_eq!(
            (b.declared_len, b.seq, b.payload),
            (2, 3, &[0xAA, 0x55][..])
        );
        assert!(b.len_matches());
    }

    #[test]
    fn response_status_of_rom_and_stub() {
        // ROM READ_REG reply: value, then `00 00`.
        let r = Response::parse(&[0x01, 0x0A, 2, 0, 0x01, 0xC1, 0xF0, 0xFF, 0, 0]).unwrap();
        assert_eq!(r.value, 0xFFF0_C101);
        assert_eq!(r.rom_result(0), Some(Ok(())));
        // ROM unsupported command: `01 05`.
        let r = Response::new(
            Op::GetSecurityInfo,
            0,
            &[],
            rom_status(Err(RomError::InvalidMessage)),
        );
        assert_eq!(
            r.to_packet(),
            vec![0x01, 0x14, 2, 0, 0, 0, 0, 0, 0x01, 0x05]
        );
        assert_eq!(r.rom_result(0), Some(Err(RomError::InvalidMessage)));
        assert_eq!(r.status(20), None);
        // Stub MD5 reply: 16 raw bytes then `C1 00` on a checksum error.
        let r = Response::new(
            Op::SpiFlashMd5,
            0,
            &[7; 16],
            stub_status(Err(StubError::BadDataChecksum)),
        );
        assert_eq!(r.status(16), Some([0xC1, 0x00]));
        assert_eq!(r.stub_result(16), Some(Err(StubError::BadDataChecksum)));
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert_eq!(
            Command::parse(&[0, 8, 0]),
            Err(ProtoError::TooShort { len: 3 })
        );
        assert_eq!(
            Command::parse(&[1, 8, 0, 0, 0, 0, 0, 0]),
            Err(ProtoError::WrongDirection {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(
            Command::parse(&[0, 8, 4, 0, 0, 0, 0, 0, 1]),
            Err(ProtoError::SizeMismatch {
                declared: 4,
                actual: 1
            })
        );
        let c = Command::new(Op::FlashBegin, vec![1, 2, 3]);
        assert!(matches!(
            c.words::<4>(),
            Err(ProtoError::ShortData {
                needed: 16,
                got: 3,
                ..
            })
        ));
    }

    #[test]
    fn op_codes_round_trip() {
        for code in 0..=255u8 {
            assert_eq!(u8::from(Op::from(code)), code);
            assert_eq!(u8::from(RomError::from(code)), code);
            assert_eq!(u8::from(StubError::from(code)), code);
        }
        assert_eq!(Op::from(0x42), Op::Other(0x42));
        assert_eq!(Op::Other(0x42).name(), "0x42");
        assert_eq!(Op::ReadFlash.to_string(), "READ_FLASH");
    }

    #[test]
    fn timeouts_scale_like_esptool() {
        assert_eq!(
            timeout_per_mb(ERASE_REGION_TIMEOUT_PER_MB, 0x1000),
            DEFAULT_TIMEOUT
        );
        assert_eq!(
            timeout_per_mb(ERASE_REGION_TIMEOUT_PER_MB, 1_000_000),
            Duration::from_secs(40)
        );
    }

    proptest! {
        #[test]
        fn slip_round_trips_any_packet(packet in proptest::collection::vec(any::<u8>(), 1..300)) {
            let mut d = SlipDecoder::new();
            prop_assert_eq!(d.push(&slip_encode(&packet)), vec![Ok(packet)]);
        }

        #[test]
        fn slip_decoder_never_panics_and_resyncs(
            noise in proptest::collection::vec(any::<u8>(), 0..400),
            packet in proptest::collection::vec(any::<u8>(), 1..100),
        ) {
            let mut d = SlipDecoder::with_limit(256);
            let _ = d.push(&noise);
            // A delimiter always ends whatever the noise left open; the next frame decodes.
            let _ = d.push(&[SLIP_END]);
            let items = d.push(&slip_encode(&packet));
            prop_assert_eq!(items.last(), Some(&Ok(packet)));
        }
    }
}
