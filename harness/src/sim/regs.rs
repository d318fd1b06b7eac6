//! The memory-mapped registers the ROM loader lets a host read and write: the chip-detect word,
//! the eFuse words (chip type, MAC), the UART divider and the SPI flash controller's user-command
//! interface. Everything else behaves as plain RAM (reads 0 until written).
//!
//! eFuse layout (esptool `targets/esp8266.py`): the MAC is OUI + MAC1[15:8], MAC1[7:0],
//! MAC0[31:24]; the OUI is MAC3[23:0] if MAC3 ≠ 0, else 18:FE:34 when MAC1[23:16] = 0 and
//! AC:D0:74 when it is 1. An ESP8285 has eFuse bit 4 or bit 80 set; its embedded flash size is
//! bits 4, 121, 122, 123 (bit 4 alone = 1 MB, bits 4 + 122 = 2 MB).

use std::collections::HashMap;

use crate::board::{BoardProfile, Chip as ChipKind};
use crate::flash::proto::{reg, spi_flash};

/// Frequency the UART divider counts: twice the 26 MHz crystal (esptool `XTAL_CLK_DIVIDER` = 2
/// for ESP8266, so baud × divider / 2 = crystal).
pub const UART_CLK_HZ: u32 = 52_000_000;

/// The eFuse words at 0x3FF00050, …54, …58, …5C for a board.
pub fn efuse_words(board: &BoardProfile) -> [u32; 4] {
    let m = board.mac;
    let mut w = [0u32; 4];
    w[0] = u32::from(m[5]) << 24;
    let oui = [m[0], m[1], m[2]];
    let oui_code: u32 = match oui {
        [0x18, 0xFE, 0x34] => 0,
        [0xAC, 0xD0, 0x74] => 1,
        _ => {
            w[3] = u32::from(m[0]) << 16 | u32::from(m[1]) << 8 | u32::from(m[2]);
            0
        }
    };
    w[1] = oui_code << 16 | u32::from(m[3]) << 8 | u32::from(m[4]);
    if board.chip == ChipKind::Esp8285 {
        match board.flash_size {
            0x10_0000 => w[0] |= 1 << 4,
            0x20_0000 => {
                w[0] |= 1 << 4;
                w[3] |= 1 << (122 - 96);
            }
            // Other sizes: mark the chip by bit 80 only; esptool then names it "ESP8285".
            _ => w[2] |= 1 << (80 - 64),
        }
    }
    w
}

/// A minimal JEDEC JESD216 SFDP table: header, one parameter header, and a basic flash
/// parameter table whose density matches the board. Only the signature and the density mean
/// anything to esptool; unreadable addresses return 0xFF.
fn sfdp_table(flash_size: u32) -> Vec<u8> {
    let mut t = vec![0xFF; 0x54];
    t[0..8].copy_from_slice(&[b'S', b'F', b'D', b'P', 0x00, 0x01, 0x00, 0xFF]);
    t[8..16].copy_from_slice(&[0x00, 0x00, 0x01, 0x09, 0x30, 0x00, 0x00, 0xFF]);
    let density_bits = u64::from(flash_size) * 8 - 1;
    let dwords: [u32; 9] = [
        0xFFF1_20E5,
        density_bits as u32,
        0x6B08_EB44,
        0xBB42_3B08,
        0xFFFF_FFFE,
        0xFF00_FFFF,
        0xFF00_FFFF,
        0x520F_200C,
        0xFF00_D810,
    ];
    for (i, d) in dwords.iter().enumerate() {
        t[0x30 + 4 * i..0x34 + 4 * i].copy_from_slice(&d.to_le_bytes());
    }
    t
}

/// The register file of one chip.
#[derive(Debug, Clone)]
pub struct Registers {
    ram: HashMap<u32, u32>,
    efuse: [u32; 4],
    flash_id: u32,
    sfdp: Vec<u8>,
    /// Current UART0 divider (set by the ROM's print rate, autobaud, or a baud change).
    clkdiv: u32,
    /// SPI flash status registers 1..3 (bits 0..23) and the write-enable latch.
    flash_status: u32,
    write_enabled: bool,
}

impl Registers {
    /// Registers of `board` after reset.
    pub fn new(board: &BoardProfile) -> Self {
        Registers {
            ram: HashMap::new(),
            efuse: efuse_words(board),
            flash_id: board.flash_id & 0xFF_FFFF,
            sfdp: sfdp_table(board.flash_size),
            clkdiv: divider_for(crate::flash::proto::ROM_PRINT_BAUD),
            flash_status: 0,
            write_enabled: false,
        }
    }

    /// Forgets RAM-like registers (what a reset does to peripherals).
    pub fn reset(&mut self) {
        self.ram.clear();
        self.write_enabled = false;
    }

    /// Programs the UART divider for `baud`.
    pub fn set_uart_baud(&mut self, baud: u32) {
        self.clkdiv = divider_for(baud);
    }

    /// Reads a 32-bit register.
    pub fn read(&self, addr: u32) -> u32 {
        match addr {
            reg::CHIP_DETECT_MAGIC => reg::ESP8266_MAGIC,
            reg::EFUSE_MAC0 => self.efuse[0],
            reg::EFUSE_MAC1 => self.efuse[1],
            reg::EFUSE_MAC2 => self.efuse[2],
            reg::EFUSE_MAC3 => self.efuse[3],
            reg::UART_CLKDIV => {
                (self.ram.get(&addr).copied().unwrap_or(0) & !reg::UART_CLKDIV_MASK) | self.clkdiv
            }
            other => self.ram.get(&other).copied().unwrap_or(0),
        }
    }

    /// Writes `value` under `mask` (bits outside the mask keep their old value).
    pub fn write(&mut self, addr: u32, value: u32, mask: u32) {
        let old = self.read(addr);
        let new = (old & !mask) | (value & mask);
        match addr {
            reg::CHIP_DETECT_MAGIC | reg::EFUSE_MAC0..=reg::EFUSE_MAC3 => {}
            reg::UART_CLKDIV => {
                self.clkdiv = new & reg::UART_CLKDIV_MASK;
                self.ram.insert(addr, new);
            }
            reg::SPI_CMD if new & reg::SPI_CMD_USR != 0 => {
                self.run_spi_user_command();
                self.ram.insert(addr, new & !reg::SPI_CMD_USR);
            }
            _ => {
                self.ram.insert(addr, new);
            }
        }
    }

    /// Executes the SPI user command the registers describe, the way esptool's
    /// `run_spiflash_command` sets it up, and leaves the answer in W0.
    fn run_spi_user_command(&mut self) {
        let usr = self.read(reg::SPI_USR);
        let usr1 = self.read(reg::SPI_USR1);
        let opcode = (self.read(reg::SPI_USR2) & 0xFF) as u8;
        let miso_bits = if usr & reg::SPI_USR_MISO != 0 {
            (usr1 >> reg::SPI_MISO_BITLEN_SHIFT & 0x1FF) + 1
        } else {
            0
        };
        let mosi_bits = if usr & reg::SPI_USR_MOSI != 0 {
            (usr1 >> reg::SPI_MOSI_BITLEN_SHIFT & 0x1FF) + 1
        } else {
            0
        };
        let addr = self.read(reg::SPI_ADDR) >> 8;
        let mosi = self.read(reg::SPI_W0);
        let answer: u32 = match opcode {
            spi_flash::RDID => self.flash_id,
            spi_flash::RDSFDP => {
                let mut b = [0xFFu8; 4];
                for (i, slot) in b.iter_mut().enumerate() {
                    if let Some(&v) = self.sfdp.get(addr as usize + i) {
                        *slot = v;
                    }
                }
                u32::from_le_bytes(b)
            }
            spi_flash::RDSR => self.flash_status & 0xFF | u32::from(self.write_enabled) << 1,
            spi_flash::RDSR2 => self.flash_status >> 8 & 0xFF,
            spi_flash::RDSR3 => self.flash_status >> 16 & 0xFF,
            spi_flash::WREN | spi_flash::WEVSR => {
                self.write_enabled = true;
                0
            }
            spi_flash::WRDI => {
                self.write_enabled = false;
                0
            }
            spi_flash::WRSR | spi_flash::WRSR2 | spi_flash::WRSR3 if self.write_enabled => {
                let (shift, bits) = match opcode {
                    spi_flash::WRSR => (0, mosi_bits.min(16)),
                    spi_flash::WRSR2 => (8, mosi_bits.min(8)),
                    _ => (16, mosi_bits.min(8)),
                };
                let mask = if bits == 0 {
                    0
                } else {
                    ((1u32 << bits) - 1) << shift
                };
                // Status bits are volatile here; the write-in-progress and latch bits stay 0.
                self.flash_status = (self.flash_status & !mask) | (mosi << shift & mask & !0b11);
                self.write_enabled = false;
                0
            }
            spi_flash::RSTEN | spi_flash::RST => {
                self.write_enabled = false;
                0
            }
            // Nothing drives MISO for an unknown command: the line floats high.
            _ => 0xFFFF_FFFF,
        };
        let value = if miso_bits == 0 {
            self.read(reg::SPI_W0)
        } else if miso_bits >= 32 {
            answer
        } else {
            answer & ((1u32 << miso_bits) - 1)
        };
        self.ram.insert(reg::SPI_W0, value);
    }
}

/// The UART divider the ROM would program for `baud` (rounded).
pub fn divider_for(baud: u32) -> u32 {
    if baud == 0 {
        return 0;
    }
    (UART_CLK_HZ + baud / 2) / baud
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board;

    /// esptool's decoding of the eFuse words (targets/esp8266.py), restated for the test.
    fn esptool_view(r: &Registers) -> (String, [u8; 6], u32) {
        let e: u128 = u128::from(r.read(reg::EFUSE_MAC3)) << 96
            | u128::from(r.read(reg::EFUSE_MAC2)) << 64
            | u128::from(r.read(reg::EFUSE_MAC1)) << 32
            | u128::from(r.read(reg::EFUSE_MAC0));
        let bit = |n: u32| e >> n & 1 == 1;
        let name = if bit(4) || bit(80) {
            match (bit(4), bit(121), bit(122), bit(123)) {
                (true, false, false, false) => "ESP8285N08",
                (true, false, true, false) => "ESP8285N16",
                _ => "ESP8285",
            }
        } else {
            "ESP8266EX"
        };
        let (mac0, mac1, mac3) = (
            r.read(reg::EFUSE_MAC0),
            r.read(reg::EFUSE_MAC1),
            r.read(reg::EFUSE_MAC3),
        );
        let oui = if mac3 != 0 {
            [(mac3 >> 16) as u8, (mac3 >> 8) as u8, mac3 as u8]
        } else if (mac1 >> 16) & 0xFF == 0 {
            [0x18, 0xFE, 0x34]
        } else {
            [0xAC, 0xD0, 0x74]
        };
        let mac = [
            oui[0],
            oui[1],
            oui[2],
            (mac1 >> 8) as u8,
            mac1 as u8,
            (mac0 >> 24) as u8,
        ];
        let chip_id = (mac0 >> 24) | ((mac1 & 0xFF_FFFF) << 8);
        (name.to_string(), mac, chip_id)
    }

    #[test]
    fn efuses_identify_each_board_like_esptool_does() {
        let basic = board::find("sonoff-basic").unwrap();
        let (name, mac, chip_id) = esptool_view(&Registers::new(basic));
        assert_eq!(name, "ESP8266EX");
        assert_eq!(mac, basic.mac);
        assert_eq!(
            chip_id,
            u32::from(basic.mac[3]) << 16 | u32::from(basic.mac[4]) << 8 | u32::from(basic.mac[5])
        );

        let ch4 = board::find("sonoff-4ch").unwrap();
        let (name, mac, _) = esptool_view(&Registers::new(ch4));
        assert_eq!(name, "ESP8285N08");
        assert_eq!(mac, ch4.mac);
    }

    #[test]
    fn magic_and_crystal() {
        let mut r = Registers::new(board::find("sonoff-basic").unwrap());
        assert_eq!(r.read(reg::CHIP_DETECT_MAGIC), 0xFFF0_C101);
        r.set_uart_baud(115_200);
        let div = r.read(reg::UART_CLKDIV) & reg::UART_CLKDIV_MASK;
        assert_eq!(div, 451);
        // esptool: baud × div / 1e6 / 2 ≈ 26 MHz.
        let xtal = 115_200.0 * f64::from(div) / 1e6 / 2.0;
        assert!((xtal - 26.0).abs() < 0.5, "{xtal}");
        // The ROM's own print divider (115200 at 40 MHz) gives ~74880 at 26 MHz.
        let rom = Registers::new(board::find("sonoff-basic").unwrap());
        assert_eq!(
            UART_CLK_HZ / (rom.read(reg::UART_CLKDIV) & reg::UART_CLKDIV_MASK),
            74_927
        );
    }

    /// Runs a user command the way esptool's `run_spiflash_command` does.
    fn spi(r: &mut Registers, opcode: u8, read_bits: u32, addr: Option<u32>) -> u32 {
        let mut usr = 1u32 << 31;
        if read_bits > 0 {
            usr |= reg::SPI_USR_MISO;
        }
        let mut usr1 = (read_bits.saturating_sub(1)) << reg::SPI_MISO_BITLEN_SHIFT;
        if let Some(a) = addr {
            usr |= reg::SPI_USR_ADDR;
            usr1 |= 23 << 26;
            r.write(reg::SPI_ADDR, a << 8, u32::MAX);
        }
        r.write(reg::SPI_USR1, usr1, u32::MAX);
        r.write(reg::SPI_USR, usr, u32::MAX);
        r.write(reg::SPI_USR2, 7 << 28 | u32::from(opcode), u32::MAX);
        r.write(reg::SPI_W0, 0, u32::MAX);
        r.write(reg::SPI_CMD, reg::SPI_CMD_USR, u32::MAX);
        assert_eq!(
            r.read(reg::SPI_CMD) & reg::SPI_CMD_USR,
            0,
            "command completes at once"
        );
        r.read(reg::SPI_W0)
    }

    #[test]
    fn spi_user_commands() {
        let basic = board::find("sonoff-basic").unwrap();
        let mut r = Registers::new(basic);
        let id = spi(&mut r, spi_flash::RDID, 24, None);
        assert_eq!(id, basic.flash_id & 0xFF_FFFF);
        assert_eq!(id & 0xFF, 0x5E, "manufacturer in the low byte");
        assert_eq!(
            spi(&mut r, spi_flash::RDSFDP, 32, Some(0)),
            spi_flash::SFDP_SIGNATURE
        );
        assert_eq!(
            spi(&mut r, spi_flash::RDSFDP, 8, Some(0x10)),
            0xFF,
            "not an XMC part"
        );
        assert_eq!(
            spi(&mut r, spi_flash::RDSFDP, 32, Some(0x34)),
            0x007F_FFFF,
            "8 Mbit"
        );
        assert_eq!(spi(&mut r, spi_flash::RDSR, 8, None), 0);
        assert_eq!(spi(&mut r, spi_flash::RSTEN, 0, None), 0);
        assert_eq!(
            spi(&mut r, 0xAB, 8, None),
            0xFF,
            "unknown command floats high"
        );
    }

    #[test]
    fn masked_writes_and_read_only_words() {
        let mut r = Registers::new(board::find("sonoff-4ch").unwrap());
        r.write(0x3FFE_8000, 0x1234_5678, u32::MAX);
        r.write(0x3FFE_8000, 0x0000_AB00, 0x0000_FF00);
        assert_eq!(r.read(0x3FFE_8000), 0x1234_AB78);
        r.write(reg::CHIP_DETECT_MAGIC, 0, u32::MAX);
        assert_eq!(r.read(reg::CHIP_DETECT_MAGIC), reg::ESP8266_MAGIC);
    }
}
