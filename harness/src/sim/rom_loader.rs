//! The ESP8266 ROM's UART download loop (boot mode 1): the command set esptool uses with
//! `--no-stub` and to upload its stub. Shared docs protocols.md §A.
//!
//! Replies carry the ROM's status layout: `status, error` (`00 00` ok, `01 05` invalid message,
//! `01 07` checksum error). Commands the ESP8266 ROM does not implement (SPI_ATTACH,
//! GET_SECURITY_INFO, CHANGE_BAUDRATE, the compressed and MD5 commands and the 0xD0.. stub
//! commands) get `01 05` with the same op, which makes esptool treat them as unsupported.
//! SPI_SET_PARAMS (0x0B) is answered `00 00`: Espressif's ESP8266 "Firmware Download Protocol"
//! application note (v1.1, 2017) lists 0x09–0x0B as ROM commands, although esptool never sends
//! 0x0B to the ESP8266 ROM.
//!
//! Malformed packets (wrong direction byte, size field not matching) are dropped silently.

use crate::flash::proto::{
    self, Command, FLASH_SECTOR_SIZE, Op, ProtoError, Response, RomError, SYNC_PAYLOAD,
    SYNC_REPLIES,
};

use super::chip::{Action, Hw, ROM_SYNC_VALUE, RamSegment};
use super::flash_model::SECTOR_ERASE_TIME;

/// 64 KiB block erase time (estimate: Winbond W25Q80DV tBE2 typical 150 ms).
const BLOCK_ERASE_TIME: std::time::Duration = std::time::Duration::from_millis(150);
const SECTORS_PER_BLOCK: u32 = 16;

/// A flash write session opened by FLASH_BEGIN.
#[derive(Debug, Clone, Copy)]
struct FlashSession {
    offset: u32,
    block_size: u32,
}

/// A RAM upload session opened by MEM_BEGIN.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemSession {
    pub(crate) segment: usize,
    pub(crate) block_size: u32,
}

/// State of the ROM's download loop.
#[derive(Debug, Default)]
pub struct RomLoader {
    flash: Option<FlashSession>,
    mem: Option<MemSession>,
}

/// Number of sectors the ROM erases for FLASH_BEGIN's `erase_size` at `offset`.
///
/// The ROM's erase routine double-counts the sectors up to the next 64 KiB boundary ("head"):
/// it erases `s + min(s, head)` sectors when asked for `s`. esptool's `get_erase_size` is exactly
/// the inverse (it sends `ceil(n/2)` or `n - head` sectors for `n` needed), which is how this
/// formula was derived; with esptool's request the ROM erases `n` sectors, or `n + 1` for an odd
/// `n` that fits before the boundary.
pub fn rom_erased_sectors(offset: u32, erase_size: u32) -> u32 {
    let s = erase_size.div_ceil(FLASH_SECTOR_SIZE);
    let head = SECTORS_PER_BLOCK - (offset / FLASH_SECTOR_SIZE) % SECTORS_PER_BLOCK;
    s + s.min(head)
}

/// Erases `count` sectors from the sector containing `offset`, the way the ROM does (single
/// sectors up to a 64 KiB boundary, then whole blocks, then single sectors). Sector addresses
/// wrap at 4 GiB, as the flash model's addresses wrap at its size.
fn erase_sectors(hw: &mut Hw, offset: u32, count: u32) -> Result<(), RomError> {
    let at = |sector: u32| sector.wrapping_mul(FLASH_SECTOR_SIZE);
    let first = offset / FLASH_SECTOR_SIZE;
    let mut busy = std::time::Duration::ZERO;
    let mut sector = first;
    while sector < first + count {
        let left = first + count - sector;
        if sector.is_multiple_of(SECTORS_PER_BLOCK) && left >= SECTORS_PER_BLOCK {
            for s in sector..sector + SECTORS_PER_BLOCK {
                hw.flash
                    .erase_sector(at(s))
                    .map_err(|_| RomError::FlashWrite)?;
            }
            busy += BLOCK_ERASE_TIME;
            sector += SECTORS_PER_BLOCK;
        } else {
            hw.flash
                .erase_sector(at(sector))
                .map_err(|_| RomError::FlashWrite)?;
            busy += SECTOR_ERASE_TIME;
            sector += 1;
        }
    }
    hw.busy(busy);
    Ok(())
}

fn reply(hw: &mut Hw, op: Op, value: u32, result: Result<(), RomError>) {
    hw.send_frame(&Response::new(op, value, &[], proto::rom_status(result)).to_packet());
}

fn invalid(_: ProtoError) -> RomError {
    RomError::InvalidMessage
}

impl RomLoader {
    /// Handles one decoded SLIP frame; replies go to `hw`'s output.
    pub fn on_frame(&mut self, frame: &[u8], hw: &mut Hw) -> Action {
        let Ok(cmd) = Command::parse(frame) else {
            return Action::None;
        };
        let op = cmd.op;
        match op {
            Op::Sync => {
                if cmd.data == SYNC_PAYLOAD {
                    for _ in 0..SYNC_REPLIES {
                        reply(hw, op, ROM_SYNC_VALUE, Ok(()));
                    }
                } else {
                    reply(hw, op, 0, Err(RomError::InvalidMessage));
                }
                Action::None
            }
            Op::ReadReg => {
                match (cmd.data.len(), cmd.word(0)) {
                    (4, Some(addr)) => {
                        let value = hw.regs.read(addr);
                        reply(hw, op, value, Ok(()));
                    }
                    _ => reply(hw, op, 0, Err(RomError::InvalidMessage)),
                }
                Action::None
            }
            Op::WriteReg => {
                let result = write_regs(&cmd, hw);
                reply(hw, op, 0, result);
                Action::None
            }
            Op::FlashBegin => {
                let result = self.flash_begin(&cmd, hw);
                reply(hw, op, 0, result);
                Action::None
            }
            Op::FlashData => {
                let result = self.flash_data(&cmd, hw);
                reply(hw, op, 0, result);
                Action::None
            }
            Op::FlashEnd => match cmd.words::<1>() {
                Ok([flag]) => {
                    self.flash = None;
                    reply(hw, op, 0, Ok(()));
                    if flag == 0 {
                        Action::Reboot
                    } else {
                        Action::RunUserCode
                    }
                }
                Err(_) => {
                    reply(hw, op, 0, Err(RomError::InvalidMessage));
                    Action::None
                }
            },
            Op::MemBegin => {
                let result = self.mem_begin(&cmd, hw);
                reply(hw, op, 0, result);
                Action::None
            }
            Op::MemData => {
                let result = mem_data(self.mem, &cmd, hw);
                reply(hw, op, 0, result);
                Action::None
            }
            Op::MemEnd => match cmd.words::<2>() {
                Ok([flag, entry]) => {
                    self.mem = None;
                    reply(hw, op, 0, Ok(()));
                    if flag == 0 {
                        Action::Jump { entry }
                    } else {
                        Action::None
                    }
                }
                Err(_) => {
                    reply(hw, op, 0, Err(RomError::InvalidMessage));
                    Action::None
                }
            },
            Op::SpiSetParams => {
                let result = if cmd.data.len() == 24 {
                    Ok(())
                } else {
                    Err(RomError::InvalidMessage)
                };
                reply(hw, op, 0, result);
                Action::None
            }
            _ => {
                reply(hw, op, 0, Err(RomError::InvalidMessage));
                Action::None
            }
        }
    }

    fn flash_begin(&mut self, cmd: &Command, hw: &mut Hw) -> Result<(), RomError> {
        let [erase_size, _blocks, block_size, offset] = cmd.words::<4>().map_err(invalid)?;
        // FLASH_BEGIN is also how the ROM attaches the SPI flash (esptool `flash_spi_attach`).
        hw.flash_attached = true;
        let count = rom_erased_sectors(offset, erase_size);
        if erase_size > 0 {
            erase_sectors(hw, offset, count)?;
        }
        self.flash = Some(FlashSession { offset, block_size });
        Ok(())
    }

    fn flash_data(&mut self, cmd: &Command, hw: &mut Hw) -> Result<(), RomError> {
        let block = cmd.data_block().map_err(invalid)?;
        if !block.len_matches() {
            return Err(RomError::InvalidMessage);
        }
        if proto::checksum(block.payload) != cmd.checksum {
            return Err(RomError::BadChecksum);
        }
        let session = self.flash.ok_or(RomError::FailedToAct)?;
        let addr = session
            .offset
            .wrapping_add(block.seq.wrapping_mul(session.block_size));
        let busy = hw
            .flash
            .program(addr, block.payload)
            .map_err(|_| RomError::FlashWrite)?;
        hw.busy(busy);
        Ok(())
    }

    fn mem_begin(&mut self, cmd: &Command, hw: &mut Hw) -> Result<(), RomError> {
        self.mem = Some(mem_begin(cmd, hw).map_err(invalid)?);
        Ok(())
    }
}

/// WRITE_REG: 16-byte groups of (address, value, mask, delay in µs).
pub(crate) fn write_regs(cmd: &Command, hw: &mut Hw) -> Result<(), RomError> {
    if cmd.data.is_empty() || !cmd.data.len().is_multiple_of(16) {
        return Err(RomError::InvalidMessage);
    }
    for group in cmd.data.chunks_exact(16) {
        let w = |i: usize| u32::from_le_bytes(group[4 * i..4 * i + 4].try_into().unwrap_or([0; 4]));
        hw.busy(std::time::Duration::from_micros(u64::from(w(3))));
        hw.regs.write(w(0), w(1), w(2));
    }
    Ok(())
}

/// MEM_BEGIN: opens a RAM segment of `size` bytes at `addr`.
pub(crate) fn mem_begin(cmd: &Command, hw: &mut Hw) -> Result<MemSession, ProtoError> {
    let [size, _blocks, block_size, addr] = cmd.words::<4>()?;
    // RAM is at most 160 KiB on the ESP8266; a bigger size is not worth allocating.
    let size = size.min(0x4_0000) as usize;
    hw.ram.retain(|s| s.addr != addr);
    hw.ram.push(RamSegment {
        addr,
        data: vec![0; size],
    });
    Ok(MemSession {
        segment: hw.ram.len() - 1,
        block_size,
    })
}

/// MEM_DATA: copies one block into the open RAM segment.
pub(crate) fn mem_data(
    session: Option<MemSession>,
    cmd: &Command,
    hw: &mut Hw,
) -> Result<(), RomError> {
    let block = cmd.data_block().map_err(invalid)?;
    if !block.len_matches() {
        return Err(RomError::InvalidMessage);
    }
    if proto::checksum(block.payload) != cmd.checksum {
        return Err(RomError::BadChecksum);
    }
    let session = session.ok_or(RomError::FailedToAct)?;
    let segment = hw
        .ram
        .get_mut(session.segment)
        .ok_or(RomError::FailedToAct)?;
    let start = (block.seq as usize).saturating_mul(session.block_size as usize);
    let end = start.saturating_add(block.payload.len());
    if end > segment.data.len() {
        return Err(RomError::FailedToAct);
    }
    segment.data[start..end].copy_from_slice(block.payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::proto::{SlipDecoder, reg};
    use crate::sim::chip::tests::{chip, tx_bytes};
    use crate::sim::chip::{Chip, Output};

    const HOST: u32 = 115_200;

    /// A chip in download mode with the banner already drained.
    fn download(board: &str) -> Chip {
        let mut c = chip(board);
        c.set_button(true);
        c.power_on();
        c.take_output();
        c
    }

    /// Sends a command and returns the decoded responses.
    fn transact(c: &mut Chip, cmd: &Command) -> Vec<Response> {
        c.on_rx(&cmd.to_slip(), HOST);
        let out = c.take_output();
        for o in &out {
            if let Output::Tx { baud, .. } = o {
                assert_eq!(*baud, HOST, "loader replies at the autobauded rate");
            }
        }
        let mut d = SlipDecoder::new();
        d.push(&tx_bytes(&out))
            .into_iter()
            .map(|f| Response::parse(&f.unwrap()).unwrap())
            .collect()
    }

    fn one(c: &mut Chip, cmd: &Command) -> Response {
        let mut r = transact(c, cmd);
        assert_eq!(r.len(), 1, "{r:?}");
        r.remove(0)
    }

    #[test]
    fn sync_gets_eight_rom_replies() {
        let mut c = download("sonoff-basic");
        let r = transact(&mut c, &Command::sync());
        assert_eq!(r.len(), 8);
        for resp in r {
            assert_eq!(resp.op, Op::Sync);
            assert_ne!(resp.value, 0, "non-zero value means ROM, not stub");
            assert_eq!(resp.data, vec![0, 0]);
        }
    }

    #[test]
    fn nothing_is_answered_before_a_sync() {
        let mut c = download("sonoff-basic");
        assert!(transact(&mut c, &Command::read_reg(reg::CHIP_DETECT_MAGIC)).is_empty());
        assert_eq!(c.status().uart_rx, None);
        transact(&mut c, &Command::sync());
        assert_eq!(c.status().uart_rx, Some(HOST));
        assert_eq!(
            one(&mut c, &Command::read_reg(reg::CHIP_DETECT_MAGIC)).value,
            0xFFF0_C101
        );
    }

    #[test]
    fn after_autobaud_other_rates_are_garbage() {
        let mut c = download("sonoff-basic");
        transact(&mut c, &Command::sync());
        c.on_rx(&Command::read_reg(reg::CHIP_DETECT_MAGIC).to_slip(), 57_600);
        assert!(
            c.take_output().is_empty(),
            "a frame sent at half the rate is not understood"
        );
    }

    #[test]
    fn unsupported_commands_answer_invalid_message() {
        let mut c = download("sonoff-4ch");
        transact(&mut c, &Command::sync());
        for op in [
            Op::GetSecurityInfo,
            Op::SpiAttach,
            Op::ChangeBaudrate,
            Op::ReadFlash,
            Op::Other(0x42),
        ] {
            let r = one(&mut c, &Command::new(op, vec![0; 4]));
            assert_eq!(r.op, op);
            assert_eq!(r.data, vec![0x01, 0x05], "{op}");
        }
        assert_eq!(
            one(
                &mut c,
                &Command::from_words(
                    Op::SpiSetParams,
                    &[0, 1 << 20, 0x10000, 0x1000, 0x100, 0xFFFF]
                )
            )
            .data,
            vec![0, 0]
        );
    }

    #[test]
    fn flash_write_erases_checks_and_programs() {
        let mut c = download("sonoff-basic");
        transact(&mut c, &Command::sync());
        // Dirty the flash first so the erase is visible.
        c.hw.flash.program(0x2000, &[0u8; 0x3000]).unwrap();
        let data: Vec<u8> = (0..0x800u32).map(|i| (i * 7) as u8).collect();
        // esptool for 0x800 bytes at 0x2000: n = 1 sector, head = 14 -> erase_size ceil(1/2) = 1 sector.
        let r = one(
            &mut c,
            &Command::from_words(Op::FlashBegin, &[0x1000, 2, 0x400, 0x2000]),
        );
        assert_eq!(r.data, vec![0, 0]);
        let mut bad = Command::data(Op::FlashData, &data[..0x400], 0);
        bad.checksum ^= 1;
        assert_eq!(one(&mut c, &bad).data, vec![0x01, 0x07]);
        for (seq, chunk) in data.chunks(0x400).enumerate() {
            let r = one(&mut c, &Command::data(Op::FlashData, chunk, seq as u32));
            assert_eq!(r.data, vec![0, 0]);
        }
        assert_eq!(c.hw.flash.read_vec(0x2000, 0x800).unwrap(), data);
        // The ROM erased 2 sectors for "1": the bug esptool compensates for.
        assert!(
            c.hw.flash
                .read_vec(0x2800, 0x1800)
                .unwrap()
                .iter()
                .all(|&b| b == 0xFF)
        );
        assert!(
            c.hw.flash
                .read_vec(0x4000, 0x1000)
                .unwrap()
                .iter()
                .all(|&b| b == 0)
        );
    }

    #[test]
    fn flash_begin_at_the_top_of_the_address_space_erases_wrapped() {
        // Found while fuzzing the loader (fixtures/fuzz-regressions/sim_loader): the sector
        // address overflowed for sectors past 4 GiB.
        let mut c = download("sonoff-4ch");
        transact(&mut c, &Command::sync());
        let size = c.hw.flash.size();
        c.hw.flash.program(size - 0x1000, &[0u8; 4]).unwrap();
        c.hw.flash.program(0, &[0u8; 4]).unwrap();
        c.hw.flash.program(0x1000, &[0u8; 4]).unwrap();
        // One sector asked for at the last sector below 4 GiB: the ROM erases two (its
        // double-counting up to the 64 KiB boundary), the second one past 4 GiB.
        let begin = Command::from_words(Op::FlashBegin, &[0x1000, 1, 0x400, 0xFFFF_F000]);
        assert_eq!(one(&mut c, &begin).data, vec![0, 0]);
        let erased = |c: &Chip, at: u32| c.hw.flash.sector_is_blank(at).unwrap();
        assert!(erased(&c, size - 0x1000) && erased(&c, 0));
        assert!(!erased(&c, 0x1000), "only two sectors");
    }

    #[test]
    fn realistic_timing_makes_the_rom_busy_before_it_replies() {
        let b = crate::board::find("sonoff-basic").unwrap();
        let mut c = Chip::new(
            b,
            crate::sim::flash_model::Flash::in_memory(b.flash_size),
            true,
        );
        c.set_button(true);
        c.power_on();
        c.take_output();
        c.on_rx(&Command::sync().to_slip(), HOST);
        c.take_output();
        // 64 KiB from 0x10000: esptool asks for 8 sectors, the buggy ROM erases 16: one 64 KiB block.
        c.on_rx(
            &Command::from_words(Op::FlashBegin, &[0x8000, 64, 0x400, 0x10000]).to_slip(),
            HOST,
        );
        let out = c.take_output();
        assert!(
            matches!(&out[..], [Output::Delay { duration, .. }, Output::Tx { .. }] if *duration == BLOCK_ERASE_TIME),
            "{out:?}"
        );
    }

    #[test]
    fn erase_formula_inverts_esptool() {
        // esptool ESP8266ROM.get_erase_size, restated.
        fn esptool(offset: u32, size: u32) -> u32 {
            let n = size.div_ceil(0x1000);
            let head = (16 - (offset / 0x1000) % 16).min(n);
            if n < 2 * head {
                n.div_ceil(2) * 0x1000
            } else {
                (n - head) * 0x1000
            }
        }
        for offset in (0..0x40000).step_by(0x1000) {
            for size in [
                1u32,
                0x1000,
                0x1800,
                0x5000,
                0x10000,
                0x2F000,
                0x100000 - offset,
            ] {
                let needed = size.div_ceil(0x1000);
                let erased = rom_erased_sectors(offset, esptool(offset, size));
                assert!(
                    erased == needed || erased == needed + 1,
                    "{offset:#x}+{size:#x}: {erased} vs {needed}"
                );
            }
        }
    }

    #[test]
    fn flash_end_run_user_code_boots_without_resampling_straps() {
        let mut c = download("sonoff-basic");
        c.set_button(false);
        transact(&mut c, &Command::sync());
        // esptool's `run`: FLASH_BEGIN(0, 0) attaches the flash, FLASH_END(1) runs user code.
        one(
            &mut c,
            &Command::from_words(Op::FlashBegin, &[0, 0, 0x400, 0]),
        );
        c.on_rx(&Command::from_words(Op::FlashEnd, &[1]).to_slip(), HOST);
        let out = tx_bytes(&c.take_output());
        assert!(
            out.ends_with(b"ets_main.c \r\n"),
            "erased flash: nothing to boot"
        );
        let s = c.status();
        assert!(s.soft_started_after_download);
        assert_eq!(s.boot_mode.unwrap().x, 1, "latched download mode survives");
    }

    #[test]
    fn flash_end_reboot_restarts_into_the_loader() {
        let mut c = download("sonoff-4ch");
        c.set_button(false);
        transact(&mut c, &Command::sync());
        c.on_rx(&Command::from_words(Op::FlashEnd, &[0]).to_slip(), HOST);
        let out = tx_bytes(&c.take_output());
        let reply = Response::new(Op::FlashEnd, 0, &[], [0, 0]).to_slip();
        assert!(
            out.starts_with(&reply),
            "the reply goes out before the restart"
        );
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(
            text.ends_with("\r\n ets Jan  8 2013,rst cause:2, boot mode:(1,7)\r\n\r\n"),
            "{text:?}"
        );
        assert_eq!(c.program().name(), "rom-download");
        assert_eq!(c.status().uart_rx, None, "autobauds again");
    }

    #[test]
    fn mem_upload_of_unknown_code_goes_silent() {
        let mut c = download("sonoff-basic");
        transact(&mut c, &Command::sync());
        one(
            &mut c,
            &Command::from_words(Op::MemBegin, &[8, 1, 0x1800, 0x4010_0000]),
        );
        assert_eq!(
            one(&mut c, &Command::data(Op::MemData, &[1; 8], 0)).data,
            vec![0, 0]
        );
        assert_eq!(
            one(&mut c, &Command::from_words(Op::MemEnd, &[0, 0x4010_0000])).data,
            vec![0, 0]
        );
        assert_eq!(c.program().name(), "ram-code");
        assert!(transact(&mut c, &Command::sync()).is_empty());
    }

    #[test]
    fn write_reg_groups_and_malformed_frames() {
        let mut c = download("sonoff-basic");
        transact(&mut c, &Command::sync());
        let mut cmd = Command::write_reg(0x3FFE_8000, 0xAB, 0xFF, 0);
        cmd.data
            .extend(Command::write_reg(reg::UART_DATE, 0, 0, 10).data);
        assert_eq!(one(&mut c, &cmd).data, vec![0, 0]);
        assert_eq!(one(&mut c, &Command::read_reg(0x3FFE_8000)).value, 0xAB);
        assert_eq!(
            one(&mut c, &Command::new(Op::WriteReg, vec![0; 5])).data,
            vec![1, 5]
        );
        // A frame whose size field lies is dropped without a reply.
        let mut p = Command::read_reg(0).to_packet();
        p[2] = 9;
        c.on_rx(&proto::slip_encode(&p), HOST);
        assert!(c.take_output().is_empty());
    }
}
