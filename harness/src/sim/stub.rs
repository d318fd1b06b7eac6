//! The esptool flasher stub, as seen on the wire (shared docs protocols.md §A2).
//!
//! The simulated CPU cannot execute the stub's Xtensa code, so when the ROM jumps to the entry
//! point of a RAM upload that is one of esptool's stubs, the chip behaves as that stub does:
//! greets with `OHAI`, answers with the stub status layout (error code first, then 0), and
//! implements the stub-only commands. Behaviour follows esp-flasher-stub `src/command_handler.c`
//! (the stub esptool 5.x ships as `stub_flasher/2`) and, where it differs, the legacy
//! esptool-legacy-flasher-stub (`stub_flasher/1`):
//!
//! - a command is acknowledged before its flash work is done; a write or inflate error is
//!   reported in the reply to the *next* command, which is then not executed;
//! - FLASH_BEGIN/FLASH_DEFL_BEGIN take the exact byte count; sectors are erased just before they
//!   are written, whole sectors, so bytes after the data up to the sector end become 0xFF;
//! - READ_FLASH streams bare 0x1000-byte frames, one in flight, each acknowledged by the host
//!   with the running byte count, then a bare 16-byte MD5 frame;
//! - CHANGE_BAUDRATE replies at the old rate, then switches;
//! - RUN_USER_CODE gets no reply; the current stub does nothing (its handler is a TODO), the
//!   legacy stub boots the firmware;
//! - FLASH_END with 0 ("reboot"): the current stub stays (TODO in its source), the legacy stub
//!   restarts into the ROM loader.

use std::time::Duration;

use flate2::{Decompress, FlushDecompress, Status};
use md5::{Digest, Md5};

use crate::flash::proto::{
    self, Command, DATA_HEADER_LEN, FLASH_SECTOR_SIZE, Op, Response, STUB_FLASH_BLOCK,
    SYNC_PAYLOAD, SYNC_REPLIES, StubError,
};

use super::chip::{Action, Hw, RamSegment};
use super::rom_loader::{self, MemSession};

/// The stub's greeting after it starts: a bare SLIP frame (esptool `run_stub`).
pub const GREETING: &[u8] = b"OHAI";

/// Which esptool stub was uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StubKind {
    /// esp-flasher-stub (esptool 5.x `stub_flasher/2/esp8266.json`).
    Current,
    /// esptool-legacy-flasher-stub (`stub_flasher/1/esp8266.json`, `--stub-version 1`).
    Legacy,
}

/// Identifies one esptool stub build by where esptool loads it.
pub(super) struct StubSignature {
    pub(super) kind: StubKind,
    pub(super) entry: u32,
    pub(super) text_start: u32,
    pub(super) text_len: usize,
}

/// The stubs shipped with esptool 5.6.0 (`entry`, `text_start` and the decoded `text` length of
/// `targets/stub_flasher/{2,1}/esp8266.json`).
pub(super) const KNOWN_STUBS: [StubSignature; 2] = [
    StubSignature {
        kind: StubKind::Current,
        entry: 0x4010_C504,
        text_start: 0x4010_C500,
        text_len: 11456,
    },
    StubSignature {
        kind: StubKind::Legacy,
        entry: 0x4010_D004,
        text_start: 0x4010_D000,
        text_len: 8276,
    },
];

impl StubKind {
    /// The stub whose text segment is in `ram` and whose entry point is `entry`, if any.
    pub fn recognise(entry: u32, ram: &[RamSegment]) -> Option<StubKind> {
        KNOWN_STUBS
            .iter()
            .find(|s| {
                s.entry == entry
                    && ram
                        .iter()
                        .any(|seg| seg.addr == s.text_start && seg.data.len() == s.text_len)
            })
            .map(|s| s.kind)
    }

    fn unknown_command(self) -> StubError {
        match self {
            StubKind::Current => StubError::InvalidCommand,
            StubKind::Legacy => StubError::NotImplemented,
        }
    }
}

/// An open FLASH_BEGIN / FLASH_DEFL_BEGIN session.
struct FlashOp {
    /// Next flash address to write.
    addr: u32,
    /// Uncompressed bytes still expected.
    remaining: u32,
    /// Next sector start not yet erased, and the end of the erase range. 64-bit: a session may
    /// end at 4 GiB (offset + size past `u32::MAX`); the flash model wraps addresses anyway.
    erase_next: u64,
    erase_end: u64,
    /// zlib state of a compressed write.
    inflate: Option<Inflate>,
}

struct Inflate {
    z: Decompress,
    finished: bool,
}

impl std::fmt::Debug for FlashOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlashOp")
            .field("addr", &self.addr)
            .field("remaining", &self.remaining)
            .field("compressed", &self.inflate.is_some())
            .finish()
    }
}

/// An ongoing READ_FLASH stream.
struct ReadStream {
    addr: u32,
    remaining: u32,
    packet: u32,
    sent: u32,
    md5: Md5,
}

/// State of a running stub.
pub struct Stub {
    kind: StubKind,
    flash: Option<FlashOp>,
    mem: Option<MemSession>,
    read: Option<ReadStream>,
    /// Error of work done after the last reply, reported instead of the next command.
    pending: Option<StubError>,
}

impl std::fmt::Debug for Stub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stub")
            .field("kind", &self.kind)
            .field("flash", &self.flash)
            .field("reading", &self.read.is_some())
            .field("pending", &self.pending)
            .finish()
    }
}

fn reply(hw: &mut Hw, op: Op, value: u32, body: &[u8], result: Result<(), StubError>) {
    hw.send_frame(&Response::new(op, value, body, proto::stub_status(result)).to_packet());
}

impl Stub {
    /// Starts a stub of `kind`: sends the greeting at the current UART rate.
    pub fn start(kind: StubKind, hw: &mut Hw) -> Stub {
        hw.send_frame(GREETING);
        Stub {
            kind,
            flash: None,
            mem: None,
            read: None,
            pending: None,
        }
    }

    /// Handles one decoded SLIP frame.
    pub fn on_frame(&mut self, frame: &[u8], hw: &mut Hw) -> Action {
        if self.read.is_some() {
            self.on_read_ack(frame, hw);
            return Action::None;
        }
        let Ok(cmd) = Command::parse(frame) else {
            return Action::None;
        };
        let op = cmd.op;
        if let Some(err) = self.pending.take() {
            if op != Op::RunUserCode {
                reply(hw, op, 0, &[], Err(err));
            }
            return Action::None;
        }
        match op {
            Op::Sync => {
                if cmd.data == SYNC_PAYLOAD {
                    for _ in 0..SYNC_REPLIES {
                        reply(hw, op, 0, &[], Ok(()));
                    }
                } else {
                    reply(hw, op, 0, &[], Err(StubError::BadDataLen));
                }
            }
            Op::ReadReg => match (cmd.data.len(), cmd.word(0)) {
                (4, Some(addr)) => {
                    let value = hw.regs.read(addr);
                    reply(hw, op, value, &[], Ok(()));
                }
                _ => reply(hw, op, 0, &[], Err(StubError::BadDataLen)),
            },
            Op::WriteReg => {
                let result = rom_loader::write_regs(&cmd, hw).map_err(|_| StubError::NotEnoughData);
                reply(hw, op, 0, &[], result);
            }
            Op::FlashBegin | Op::FlashDeflBegin => {
                let result = self.flash_begin(&cmd, op == Op::FlashDeflBegin);
                reply(hw, op, 0, &[], result);
            }
            Op::FlashData => {
                let result = self.check_flash_data(&cmd);
                reply(hw, op, 0, &[], result);
                if result.is_ok() {
                    self.pending = self.write_plain(&cmd, hw).err();
                }
            }
            Op::FlashDeflData => {
                let result = self.check_defl_data(&cmd);
                reply(hw, op, 0, &[], result);
                if result.is_ok() {
                    self.pending = self.write_deflated(&cmd, hw).err();
                }
            }
            Op::FlashEnd | Op::FlashDeflEnd => {
                let result = self.flash_end(&cmd);
                reply(hw, op, 0, &[], result);
                if result.is_ok() && cmd.word(0) == Some(0) && self.kind == StubKind::Legacy {
                    return Action::Reboot;
                }
            }
            Op::SpiFlashMd5 => match cmd.words::<2>() {
                Ok([addr, size]) if cmd.data.len() == 16 => match flash_md5(hw, addr, size) {
                    Ok(digest) => reply(hw, op, 0, &digest, Ok(())),
                    Err(e) => reply(hw, op, 0, &[], Err(e)),
                },
                _ => reply(hw, op, 0, &[], Err(StubError::BadDataLen)),
            },
            Op::ReadFlash => match cmd.words::<3>() {
                Ok([addr, len, packet])
                    if cmd.data.len() == 16 && (1..=0x1000).contains(&packet) =>
                {
                    reply(hw, op, 0, &[], Ok(()));
                    self.read = Some(ReadStream {
                        addr,
                        remaining: len,
                        packet,
                        sent: 0,
                        md5: Md5::new(),
                    });
                    self.send_next_packet(hw);
                }
                _ => reply(hw, op, 0, &[], Err(StubError::BadDataLen)),
            },
            Op::EraseFlash => {
                let result = hw.flash.erase_all().map_err(|_| StubError::FailedSpiOp);
                if let Ok(busy) = result {
                    hw.busy(busy);
                }
                reply(hw, op, 0, &[], result.map(drop));
            }
            Op::EraseRegion => {
                let result = erase_region(&cmd, hw);
                reply(hw, op, 0, &[], result);
            }
            Op::ChangeBaudrate => match cmd.words::<2>() {
                Ok([baud, _old]) if cmd.data.len() == 8 && baud > 0 => {
                    reply(hw, op, 0, &[], Ok(()));
                    return Action::SetBaud { baud };
                }
                _ => reply(hw, op, 0, &[], Err(StubError::BadDataLen)),
            },
            Op::SpiSetParams => {
                let result = if cmd.data.len() == 24 {
                    Ok(())
                } else {
                    Err(StubError::BadDataLen)
                };
                reply(hw, op, 0, &[], result);
            }
            Op::SpiAttach => {
                let result = if cmd.data.len() == 4 {
                    Ok(())
                } else {
                    Err(StubError::BadDataLen)
                };
                reply(hw, op, 0, &[], result);
            }
            // The ESP8266 has no security info; esp-stub-lib answers "not supported".
            Op::GetSecurityInfo => reply(hw, op, 0, &[], Err(StubError::NotImplemented)),
            Op::MemBegin => match rom_loader::mem_begin(&cmd, hw) {
                Ok(session) => {
                    self.mem = Some(session);
                    reply(hw, op, 0, &[], Ok(()));
                }
                Err(_) => reply(hw, op, 0, &[], Err(StubError::BadDataLen)),
            },
            Op::MemData => {
                let result = rom_loader::mem_data(self.mem, &cmd, hw).map_err(|e| match e {
                    proto::RomError::BadChecksum => StubError::BadDataChecksum,
                    proto::RomError::FailedToAct if self.mem.is_none() => StubError::NotInFlashMode,
                    _ => StubError::TooMuchData,
                });
                reply(hw, op, 0, &[], result);
            }
            Op::MemEnd => match cmd.words::<2>() {
                Ok([flag, entry]) if self.mem.is_some() => {
                    self.mem = None;
                    reply(hw, op, 0, &[], Ok(()));
                    if flag == 0 {
                        return Action::Jump { entry };
                    }
                }
                Ok(_) => reply(hw, op, 0, &[], Err(StubError::NotInFlashMode)),
                Err(_) => reply(hw, op, 0, &[], Err(StubError::BadDataLen)),
            },
            Op::RunUserCode => {
                if self.kind == StubKind::Legacy {
                    return Action::RunUserCode;
                }
            }
            _ => reply(hw, op, 0, &[], Err(self.kind.unknown_command())),
        }
        Action::None
    }

    fn flash_begin(&mut self, cmd: &Command, compressed: bool) -> Result<(), StubError> {
        if cmd.data.len() != 16 && cmd.data.len() != 20 {
            return Err(StubError::BadDataLen);
        }
        let [size, _blocks, block_size, offset] =
            cmd.words::<4>().map_err(|_| StubError::BadDataLen)?;
        if self.kind == StubKind::Legacy && block_size > STUB_FLASH_BLOCK {
            return Err(StubError::BadBlocksize);
        }
        let sector = u64::from(FLASH_SECTOR_SIZE);
        let erase_next = u64::from(offset) / sector * sector;
        let erase_end = (u64::from(offset) + u64::from(size)).div_ceil(sector) * sector;
        self.flash = Some(FlashOp {
            addr: offset,
            remaining: size,
            erase_next,
            erase_end,
            inflate: compressed.then(|| Inflate {
                z: Decompress::new(true),
                finished: false,
            }),
        });
        Ok(())
    }

    fn check_flash_data(&self, cmd: &Command) -> Result<(), StubError> {
        let op = self.flash.as_ref().ok_or(StubError::NotInFlashMode)?;
        if op.inflate.is_some() {
            return Err(StubError::NotInFlashMode);
        }
        let block = cmd.data_block().map_err(|_| StubError::NotEnoughData)?;
        if !block.len_matches() {
            return Err(StubError::TooMuchData);
        }
        if proto::checksum(block.payload) != cmd.checksum {
            return Err(StubError::BadDataChecksum);
        }
        Ok(())
    }

    fn check_defl_data(&self, cmd: &Command) -> Result<(), StubError> {
        let op = self.flash.as_ref().ok_or(StubError::NotInFlashMode)?;
        let inflate = op.inflate.as_ref().ok_or(StubError::NotInFlashMode)?;
        let block = cmd.data_block().map_err(|_| StubError::BadDataLen)?;
        if inflate.finished {
            return Err(StubError::TooMuchData);
        }
        let declared = (block.declared_len as usize).min(block.payload.len());
        if proto::checksum(&block.payload[..declared]) != cmd.checksum {
            return Err(StubError::BadDataChecksum);
        }
        Ok(())
    }

    fn write_plain(&mut self, cmd: &Command, hw: &mut Hw) -> Result<(), StubError> {
        let payload = &cmd.data[DATA_HEADER_LEN..];
        let op = self.flash.as_mut().ok_or(StubError::NotInFlashMode)?;
        let n = (payload.len() as u32).min(op.remaining) as usize;
        write_flash(op, hw, &payload[..n])
    }

    fn write_deflated(&mut self, cmd: &Command, hw: &mut Hw) -> Result<(), StubError> {
        let block = cmd.data_block().map_err(|_| StubError::BadDataLen)?;
        let declared = (block.declared_len as usize).min(block.payload.len());
        let mut input = &block.payload[..declared];
        let op = self.flash.as_mut().ok_or(StubError::NotInFlashMode)?;
        let mut out = vec![0u8; 32 * 1024];
        loop {
            let inflate = op.inflate.as_mut().ok_or(StubError::NotInFlashMode)?;
            if inflate.finished {
                return if input.is_empty() {
                    Ok(())
                } else {
                    Err(StubError::TooMuchData)
                };
            }
            let (in_before, out_before) = (inflate.z.total_in(), inflate.z.total_out());
            let status = inflate
                .z
                .decompress(input, &mut out, FlushDecompress::None)
                .map_err(|_| StubError::InflateError)?;
            let consumed = (inflate.z.total_in() - in_before) as usize;
            let produced = (inflate.z.total_out() - out_before) as usize;
            if status == Status::StreamEnd {
                inflate.finished = true;
            }
            input = &input[consumed..];
            if produced > 0 {
                let n = (produced as u32).min(op.remaining) as usize;
                write_flash(op, hw, &out[..n])?;
                if n < produced {
                    return Err(StubError::TooMuchData);
                }
            }
            if input.is_empty() && produced < out.len() {
                return Ok(());
            }
            if consumed == 0 && produced == 0 {
                return Ok(());
            }
        }
    }

    fn flash_end(&mut self, cmd: &Command) -> Result<(), StubError> {
        if cmd.data.len() != 4 {
            return Err(StubError::BadDataLen);
        }
        let op = self.flash.as_ref().ok_or(StubError::NotInFlashMode)?;
        if op.remaining != 0 {
            return Err(StubError::BadDataLen);
        }
        self.flash = None;
        Ok(())
    }

    fn send_next_packet(&mut self, hw: &mut Hw) {
        let Some(rs) = self.read.as_mut() else { return };
        if rs.remaining == 0 {
            let digest = std::mem::take(&mut rs.md5).finalize();
            hw.send_frame(&digest);
            self.read = None;
            return;
        }
        let n = rs.remaining.min(rs.packet);
        let data = match hw.flash.read_vec(rs.addr, n as usize) {
            Ok(d) => d,
            Err(_) => {
                // The stub gives up on a flash error; the host times out waiting.
                self.read = None;
                return;
            }
        };
        rs.md5.update(&data);
        rs.addr = rs.addr.wrapping_add(n);
        rs.remaining -= n;
        rs.sent += n;
        hw.send_frame(&data);
    }

    fn on_read_ack(&mut self, frame: &[u8], hw: &mut Hw) {
        let Some(rs) = self.read.as_mut() else { return };
        let Ok(acked) = <[u8; 4]>::try_from(frame).map(u32::from_le_bytes) else {
            // Anything but an ACK ends the stream; the stub still sends the digest of what it sent.
            rs.remaining = 0;
            self.send_next_packet(hw);
            return;
        };
        if acked >= rs.sent {
            self.send_next_packet(hw);
        }
    }
}

/// Erases sectors up to the end of the write, then programs `data` at the session's address.
fn write_flash(op: &mut FlashOp, hw: &mut Hw, data: &[u8]) -> Result<(), StubError> {
    let end = (u64::from(op.addr) + data.len() as u64).min(op.erase_end);
    let mut busy = Duration::ZERO;
    while op.erase_next < end {
        // The flash model wraps addresses at its size, a power of two; so does truncation here.
        let sector = op.erase_next as u32;
        // The current stub skips sectors that are already blank.
        if !hw
            .flash
            .sector_is_blank(sector)
            .map_err(|_| StubError::FailedSpiOp)?
        {
            busy += hw
                .flash
                .erase_sector(sector)
                .map_err(|_| StubError::FailedSpiOp)?;
        }
        op.erase_next += u64::from(FLASH_SECTOR_SIZE);
    }
    busy += hw
        .flash
        .program(op.addr, data)
        .map_err(|_| StubError::FailedSpiOp)?;
    hw.busy(busy);
    op.addr = op.addr.wrapping_add(data.len() as u32);
    op.remaining -= data.len() as u32;
    Ok(())
}

fn flash_md5(hw: &mut Hw, addr: u32, size: u32) -> Result<[u8; 16], StubError> {
    let mut md5 = Md5::new();
    let mut at = addr;
    let mut left = size;
    while left > 0 {
        let n = left.min(0x1000);
        md5.update(
            hw.flash
                .read_vec(at, n as usize)
                .map_err(|_| StubError::FailedSpiOp)?,
        );
        at = at.wrapping_add(n);
        left -= n;
    }
    Ok(md5.finalize().into())
}

fn erase_region(cmd: &Command, hw: &mut Hw) -> Result<(), StubError> {
    if cmd.data.len() != 8 {
        return Err(StubError::BadDataLen);
    }
    let [addr, size] = cmd.words::<2>().map_err(|_| StubError::BadDataLen)?;
    if addr % FLASH_SECTOR_SIZE != 0 || size % FLASH_SECTOR_SIZE != 0 {
        return Err(StubError::BadDataLen);
    }
    let mut busy = Duration::ZERO;
    for sector in 0..size / FLASH_SECTOR_SIZE {
        busy += hw
            .flash
            .erase_sector(addr.wrapping_add(sector * FLASH_SECTOR_SIZE))
            .map_err(|_| StubError::FailedSpiOp)?;
    }
    hw.busy(busy);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::proto::{SlipDecoder, reg};
    use crate::sim::chip::tests::{chip, tx_bytes};
    use crate::sim::chip::{Chip, Output};
    use std::io::Write;

    const HOST: u32 = 115_200;

    fn frames(c: &mut Chip, bytes: &[u8], baud: u32) -> Vec<Vec<u8>> {
        c.on_rx(bytes, baud);
        let mut d = SlipDecoder::new();
        d.push(&tx_bytes(&c.take_output()))
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }

    fn one(c: &mut Chip, cmd: &Command) -> Response {
        let f = frames(c, &cmd.to_slip(), HOST);
        assert_eq!(f.len(), 1, "{f:?}");
        Response::parse(&f[0]).unwrap()
    }

    /// A chip running the current esptool stub, uploaded the way esptool does it.
    fn stub_chip(board: &str) -> Chip {
        stub_chip_of(board, (0x4010_C500, 11456, 0x3FFF_AE6C, 920, 0x4010_C504))
    }

    /// Same for any stub layout: (text_start, text_len, data_start, data_len, entry).
    fn stub_chip_of(board: &str, layout: (u32, usize, u32, usize, u32)) -> Chip {
        let (text_start, text_len, data_start, data_len, entry) = layout;
        let mut c = chip(board);
        c.set_button(true);
        c.power_on();
        c.take_output();
        frames(&mut c, &Command::sync().to_slip(), HOST);
        let text = vec![0x11u8; text_len];
        let data = vec![0x22u8; data_len];
        for (seg, addr) in [(&text, text_start), (&data, data_start)] {
            let blocks = seg.len().div_ceil(0x1800) as u32;
            let begin =
                Command::from_words(Op::MemBegin, &[seg.len() as u32, blocks, 0x1800, addr]);
            one(&mut c, &begin);
            for (i, chunk) in seg.chunks(0x1800).enumerate() {
                let r = one(&mut c, &Command::data(Op::MemData, chunk, i as u32));
                assert_eq!(r.data, vec![0, 0]);
            }
        }
        let f = frames(
            &mut c,
            &Command::from_words(Op::MemEnd, &[0, entry]).to_slip(),
            HOST,
        );
        assert_eq!(f.len(), 2);
        assert_eq!(
            Response::parse(&f[0]).unwrap().data,
            vec![0, 0],
            "ROM status layout"
        );
        assert_eq!(f[1], b"OHAI");
        assert_eq!(c.program().name(), "stub");
        c
    }

    #[test]
    fn legacy_stub_answers_then_reboots_into_the_rom() {
        let mut c = stub_chip_of(
            "sonoff-4ch",
            (0x4010_D000, 8276, 0x3FFF_ACAC, 768, 0x4010_D004),
        );
        assert_eq!(
            one(&mut c, &Command::new(Op::Other(0x42), vec![])).data,
            vec![0xFF, 0x00]
        );
        one(
            &mut c,
            &Command::from_words(Op::FlashBegin, &[0, 0, 0x4000, 0, 0]),
        );
        c.on_rx(&Command::from_words(Op::FlashEnd, &[0]).to_slip(), HOST);
        let out = tx_bytes(&c.take_output());
        // The reply goes out before the restart's banner: the stub lets its UART drain.
        let reply = Response::new(Op::FlashEnd, 0, &[], [0, 0]).to_slip();
        assert!(out.starts_with(&reply), "{out:?}");
        assert!(
            out.ends_with(b"rst cause:2, boot mode:(1,7)\r\n\r\n"),
            "{out:?}"
        );
        assert_eq!(c.program().name(), "rom-download");
    }

    #[test]
    fn flash_begin_ending_past_4_gib_erases_and_writes_wrapped() {
        // Found by fuzzing (fixtures/fuzz-regressions/sim_loader): the erase end of a session
        // ending past u32::MAX overflowed.
        let mut c = stub_chip("sonoff-basic");
        let size = c.hw.flash.size();
        c.hw.flash.program(size - 0x1000, &[0u8; 16]).unwrap();
        c.hw.flash.program(0, &[0u8; 16]).unwrap();
        let begin = Command::from_words(Op::FlashBegin, &[0x2000, 1, 0x4000, 0xFFFF_F000]);
        assert_eq!(one(&mut c, &begin).data, vec![0, 0]);
        let data = vec![0x5Au8; 0x2000];
        let r = one(&mut c, &Command::data(Op::FlashData, &data, 0));
        assert_eq!(r.data, vec![0, 0]);
        // Addresses wrap at the flash size: the last sector, then sector 0, both erased first.
        assert_eq!(
            c.hw.flash.read_vec(size - 0x1000, 0x1000).unwrap(),
            data[..0x1000]
        );
        assert_eq!(c.hw.flash.read_vec(0, 0x1000).unwrap(), data[0x1000..]);
        let end = Command::from_words(Op::FlashEnd, &[1]);
        assert_eq!(one(&mut c, &end).data, vec![0, 0]);
    }

    #[test]
    fn stub_syncs_with_value_zero_and_reads_registers() {
        let mut c = stub_chip("sonoff-basic");
        let f = frames(&mut c, &Command::sync().to_slip(), HOST);
        assert_eq!(f.len(), 8);
        assert!(f.iter().all(|p| Response::parse(p).unwrap().value == 0));
        assert_eq!(
            one(&mut c, &Command::read_reg(reg::CHIP_DETECT_MAGIC)).value,
            0xFFF0_C101
        );
        let r = one(&mut c, &Command::new(Op::GetSecurityInfo, vec![]));
        assert_eq!(r.data, vec![0xFF, 0x00]);
        assert_eq!(
            one(&mut c, &Command::new(Op::Other(0x42), vec![])).data,
            vec![0xC3, 0x00]
        );
    }

    #[test]
    fn compressed_write_then_md5_and_read_back() {
        let mut c = stub_chip("sonoff-4ch");
        let image: Vec<u8> = (0..50_000u32)
            .map(|i| (i / 7) as u8 ^ (i % 13) as u8)
            .collect();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&image).unwrap();
        let comp = z.finish().unwrap();
        let blocks = comp.len().div_ceil(0x4000) as u32;
        // Pre-fill the sector tail to see that the stub erases whole sectors.
        c.hw.flash.program(0x1000 + 50_000, &[0u8; 100]).unwrap();
        let begin = Command::from_words(
            Op::FlashDeflBegin,
            &[image.len() as u32, blocks, 0x4000, 0x1000, 0],
        );
        assert_eq!(one(&mut c, &begin).data, vec![0, 0]);
        for (i, chunk) in comp.chunks(0x4000).enumerate() {
            assert_eq!(
                one(&mut c, &Command::data(Op::FlashDeflData, chunk, i as u32)).data,
                vec![0, 0]
            );
        }
        assert_eq!(
            one(&mut c, &Command::from_words(Op::FlashDeflEnd, &[1])).data,
            vec![0, 0]
        );
        assert_eq!(c.hw.flash.read_vec(0x1000, image.len()).unwrap(), image);
        assert!(
            c.hw.flash
                .read_vec(0x1000 + 50_000, 100)
                .unwrap()
                .iter()
                .all(|&b| b == 0xFF)
        );

        let r = one(
            &mut c,
            &Command::from_words(Op::SpiFlashMd5, &[0x1000, image.len() as u32, 0, 0]),
        );
        assert_eq!(r.data.len(), 18);
        assert_eq!(&r.data[..16], Md5::digest(&image).as_slice());
        assert_eq!(r.stub_result(16), Some(Ok(())));

        // READ_FLASH: one 0x1000 frame at a time, each released by an ACK, then the MD5.
        let mut got = Vec::new();
        let mut f = frames(
            &mut c,
            &Command::from_words(Op::ReadFlash, &[0x1000, 10_000, 0x1000, 64]).to_slip(),
            HOST,
        );
        assert_eq!(Response::parse(&f.remove(0)).unwrap().data, vec![0, 0]);
        loop {
            assert_eq!(f.len(), 1);
            let p = f.remove(0);
            if got.len() == 10_000 {
                assert_eq!(p, Md5::digest(&image[..10_000]).to_vec());
                break;
            }
            assert!(p.len() == 0x1000 || got.len() + p.len() == 10_000);
            got.extend_from_slice(&p);
            f = frames(
                &mut c,
                &proto::slip_encode(&(got.len() as u32).to_le_bytes()),
                HOST,
            );
        }
        assert_eq!(got, image[..10_000]);
    }

    #[test]
    fn bad_checksum_and_deferred_errors() {
        let mut c = stub_chip("sonoff-basic");
        let begin = Command::from_words(Op::FlashDeflBegin, &[100, 1, 0x4000, 0, 0]);
        assert_eq!(one(&mut c, &begin).data, vec![0, 0]);
        let mut bad = Command::data(Op::FlashDeflData, b"not zlib", 0);
        bad.checksum ^= 0x10;
        assert_eq!(one(&mut c, &bad).data, vec![0xC1, 0x00]);
        // Garbage that passes the checksum is acknowledged; the inflate error shows up next.
        assert_eq!(
            one(&mut c, &Command::data(Op::FlashDeflData, b"not zlib", 0)).data,
            vec![0, 0]
        );
        assert_eq!(one(&mut c, &Command::read_reg(0)).data, vec![0xC7, 0x00]);
        // FLASH_END with bytes missing: bad data length.
        assert_eq!(
            one(&mut c, &Command::from_words(Op::FlashDeflEnd, &[1])).data,
            vec![0xC0, 0x00]
        );
        assert_eq!(
            one(&mut c, &Command::from_words(Op::FlashEnd, &[1])).data,
            vec![0xC0, 0x00]
        );
    }

    #[test]
    fn uncompressed_write_pads_block_but_writes_exact_size() {
        let mut c = stub_chip("sonoff-basic");
        one(
            &mut c,
            &Command::from_words(Op::FlashBegin, &[5, 1, 0x4000, 0x3_0002, 0]),
        );
        let mut block = b"hello".to_vec();
        block.resize(0x4000, 0xFF);
        assert_eq!(
            one(&mut c, &Command::data(Op::FlashData, &block, 0)).data,
            vec![0, 0]
        );
        assert_eq!(
            one(&mut c, &Command::from_words(Op::FlashEnd, &[1])).data,
            vec![0, 0]
        );
        assert_eq!(
            c.hw.flash.read_vec(0x3_0000, 8).unwrap(),
            b"\xFF\xFFhello\xFF"
        );
    }

    #[test]
    fn erase_region_checks_alignment_and_erase_flash_clears_all() {
        let mut c = stub_chip("sonoff-basic");
        c.hw.flash.program(0, &[0; 0x3000]).unwrap();
        assert_eq!(
            one(
                &mut c,
                &Command::from_words(Op::EraseRegion, &[0x1000, 0x800])
            )
            .data,
            vec![0xC0, 0]
        );
        assert_eq!(
            one(
                &mut c,
                &Command::from_words(Op::EraseRegion, &[0x1000, 0x1000])
            )
            .data,
            vec![0, 0]
        );
        assert_eq!(
            c.hw.flash.read_vec(0x0FFF, 0x1002).unwrap()[..3],
            [0, 0xFF, 0xFF]
        );
        assert_eq!(c.hw.flash.read_vec(0x2000, 1).unwrap(), vec![0]);
        assert_eq!(
            one(&mut c, &Command::new(Op::EraseFlash, vec![])).data,
            vec![0, 0]
        );
        assert!(
            c.hw.flash
                .read_vec(0, 0x3000)
                .unwrap()
                .iter()
                .all(|&b| b == 0xFF)
        );
    }

    #[test]
    fn baud_change_answers_at_old_rate_then_switches() {
        let mut c = stub_chip("sonoff-basic");
        c.on_rx(
            &Command::from_words(Op::ChangeBaudrate, &[460_800, 115_200]).to_slip(),
            HOST,
        );
        let out = c.take_output();
        assert!(matches!(&out[..], [Output::Tx { baud: 115_200, .. }]));
        assert_eq!(c.status().uart_tx, 460_800);
        // The host still at 115200 is now garbage to the stub; at 460800 it is understood.
        assert!(frames(&mut c, &Command::read_reg(0).to_slip(), HOST).is_empty());
        let f = frames(
            &mut c,
            &Command::read_reg(reg::CHIP_DETECT_MAGIC).to_slip(),
            460_800,
        );
        assert_eq!(Response::parse(&f[0]).unwrap().value, 0xFFF0_C101);
    }

    #[test]
    fn run_user_code_gets_no_reply() {
        let mut c = stub_chip("sonoff-basic");
        assert!(
            frames(
                &mut c,
                &Command::new(Op::RunUserCode, vec![]).to_slip(),
                HOST
            )
            .is_empty()
        );
        assert_eq!(
            c.program().name(),
            "stub",
            "the current stub leaves this as a TODO"
        );
        // A power cycle returns to the ROM.
        c.power_off();
        c.power_on();
        assert_eq!(c.program().name(), "rom-download");
    }
}
