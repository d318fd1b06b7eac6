//! The board's SPI NOR flash: a file (or memory) of the real size with NOR semantics.
//!
//! - Every address wraps modulo the real size, as a flash chip ignores the address bits above
//!   its capacity (a 1 MB part answers 0x100000 with the byte at 0).
//! - Programming can only clear bits (new = old AND data); only an erase sets them back to 1.
//!   Writing over unerased flash therefore corrupts data the way real hardware does.
//! - File-backed flash is written with positioned writes as each operation happens, with no
//!   write-back cache, so the file is consistent whenever the process stops.
//!
//! Each operation returns how long the real part would be busy. The figures are estimates from
//! typical datasheet values of 8 Mbit SPI NOR parts (e.g. Winbond W25Q80DV: sector erase 45 ms
//! typical, page program 0.7 ms typical) and, for a chip erase, an esptool log of 8.8 s for a
//! 4 MB part (<https://www.esp8266.com/viewtopic.php?f=23&t=12271>), i.e. about 2.2 s per MB.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use crate::flash::proto::{FLASH_PAGE_SIZE, FLASH_SECTOR_SIZE};

/// Typical 4 KiB sector erase time (estimate, see the module docs).
pub const SECTOR_ERASE_TIME: Duration = Duration::from_millis(45);
/// Typical 256-byte page program time (estimate, see the module docs).
pub const PAGE_PROGRAM_TIME: Duration = Duration::from_micros(700);
/// Chip erase time per MiB (estimate, see the module docs).
pub const CHIP_ERASE_TIME_PER_MB: Duration = Duration::from_millis(2200);

enum Store {
    File(File),
    Memory(Vec<u8>),
}

/// The flash contents and geometry.
pub struct Flash {
    store: Store,
    size: u32,
}

impl std::fmt::Debug for Flash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.store {
            Store::File(_) => "file",
            Store::Memory(_) => "memory",
        };
        f.debug_struct("Flash")
            .field("store", &kind)
            .field("size", &self.size)
            .finish()
    }
}

impl Flash {
    /// An erased flash of `size` bytes held in memory (unit tests).
    pub fn in_memory(size: u32) -> Self {
        Flash {
            store: Store::Memory(vec![0xFF; size as usize]),
            size,
        }
    }

    /// Creates `path` as an erased (all 0xFF) flash of `size` bytes; fails if it exists.
    pub fn create_erased(path: &Path, size: u32) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        let chunk = vec![0xFF; 64 * 1024];
        let mut at = 0u64;
        while at < u64::from(size) {
            let n = chunk.len().min((u64::from(size) - at) as usize);
            file.write_all_at(&chunk[..n], at)?;
            at += n as u64;
        }
        file.sync_all()?;
        Ok(Flash {
            store: Store::File(file),
            size,
        })
    }

    /// Opens an existing flash file, which must be exactly `size` bytes long.
    pub fn open(path: &Path, size: u32) -> Result<Self, OpenError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(OpenError::Io)?;
        let len = file.metadata().map_err(OpenError::Io)?.len();
        if len != u64::from(size) {
            return Err(OpenError::WrongSize {
                len,
                expected: size,
            });
        }
        Ok(Flash {
            store: Store::File(file),
            size,
        })
    }

    /// Real size in bytes.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Splits `[addr, addr + len)` (after wrapping `addr`) into contiguous in-range pieces,
    /// each given as (flash offset, offset into the caller's buffer, length).
    fn pieces(&self, addr: u32, len: usize) -> Vec<(u32, usize, usize)> {
        let mut out = Vec::new();
        let mut at = addr % self.size;
        let mut done = 0usize;
        while done < len {
            let n = ((self.size - at) as usize).min(len - done);
            out.push((at, done, n));
            done += n;
            at = (at + n as u32) % self.size;
        }
        out
    }

    fn raw_read(&self, at: u32, buf: &mut [u8]) -> io::Result<()> {
        match &self.store {
            Store::File(f) => f.read_exact_at(buf, u64::from(at)),
            Store::Memory(m) => {
                buf.copy_from_slice(&m[at as usize..at as usize + buf.len()]);
                Ok(())
            }
        }
    }

    fn raw_write(&mut self, at: u32, data: &[u8]) -> io::Result<()> {
        match &mut self.store {
            Store::File(f) => f.write_all_at(data, u64::from(at)),
            Store::Memory(m) => {
                m[at as usize..at as usize + data.len()].copy_from_slice(data);
                Ok(())
            }
        }
    }

    /// Reads `buf.len()` bytes from `addr` (wrapping).
    pub fn read(&self, addr: u32, buf: &mut [u8]) -> io::Result<()> {
        for (at, off, n) in self.pieces(addr, buf.len()) {
            self.raw_read(at, &mut buf[off..off + n])?;
        }
        Ok(())
    }

    /// Reads `len` bytes from `addr` (wrapping) into a new buffer.
    pub fn read_vec(&self, addr: u32, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.read(addr, &mut buf)?;
        Ok(buf)
    }

    /// Programs `data` at `addr` (wrapping): each byte becomes old AND new.
    pub fn program(&mut self, addr: u32, data: &[u8]) -> io::Result<Duration> {
        for (at, off, n) in self.pieces(addr, data.len()) {
            let mut cur = vec![0; n];
            self.raw_read(at, &mut cur)?;
            for (c, d) in cur.iter_mut().zip(&data[off..off + n]) {
                *c &= d;
            }
            self.raw_write(at, &cur)?;
        }
        Ok(program_time(addr, data.len()))
    }

    /// Erases the sector containing `addr` (wrapping) to 0xFF.
    pub fn erase_sector(&mut self, addr: u32) -> io::Result<Duration> {
        let start = (addr % self.size) / FLASH_SECTOR_SIZE * FLASH_SECTOR_SIZE;
        self.raw_write(start, &[0xFF; FLASH_SECTOR_SIZE as usize])?;
        Ok(SECTOR_ERASE_TIME)
    }

    /// Whether the sector containing `addr` is already all 0xFF.
    pub fn sector_is_blank(&self, addr: u32) -> io::Result<bool> {
        let start = (addr % self.size) / FLASH_SECTOR_SIZE * FLASH_SECTOR_SIZE;
        let mut buf = [0u8; FLASH_SECTOR_SIZE as usize];
        self.raw_read(start, &mut buf)?;
        Ok(buf.iter().all(|&b| b == 0xFF))
    }

    /// Erases the whole chip.
    pub fn erase_all(&mut self) -> io::Result<Duration> {
        let chunk = vec![0xFF; FLASH_SECTOR_SIZE as usize];
        for sector in 0..self.size / FLASH_SECTOR_SIZE {
            self.raw_write(sector * FLASH_SECTOR_SIZE, &chunk)?;
        }
        Ok(CHIP_ERASE_TIME_PER_MB.mul_f64(f64::from(self.size) / f64::from(1u32 << 20)))
    }

    /// Flushes a file-backed flash to stable storage.
    pub fn sync(&self) -> io::Result<()> {
        match &self.store {
            Store::File(f) => f.sync_all(),
            Store::Memory(_) => Ok(()),
        }
    }
}

/// Time to program `len` bytes from `addr`: one page program per 256-byte page touched.
fn program_time(addr: u32, len: usize) -> Duration {
    if len == 0 {
        return Duration::ZERO;
    }
    let first = u64::from(addr / FLASH_PAGE_SIZE);
    let last = (u64::from(addr) + len as u64 - 1) / u64::from(FLASH_PAGE_SIZE);
    PAGE_PROGRAM_TIME * (last - first + 1) as u32
}

/// Why an existing flash file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Opening or inspecting the file failed.
    #[error(transparent)]
    Io(io::Error),
    /// The file is not the board's flash size.
    #[error("file is {len} bytes, but the board's flash is {expected} bytes")]
    WrongSize {
        /// Actual length.
        len: u64,
        /// Board flash size.
        expected: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_only_clears_bits_and_erase_restores() {
        let mut f = Flash::in_memory(0x10000);
        f.program(0x10, &[0xF0, 0x0F]).unwrap();
        f.program(0x10, &[0x3C, 0xFF]).unwrap();
        assert_eq!(f.read_vec(0x10, 2).unwrap(), vec![0x30, 0x0F]);
        f.erase_sector(0x123).unwrap();
        assert_eq!(f.read_vec(0x10, 2).unwrap(), vec![0xFF, 0xFF]);
        assert!(f.sector_is_blank(0).unwrap());
    }

    #[test]
    fn addresses_wrap_at_the_real_size() {
        let mut f = Flash::in_memory(0x2000);
        f.program(0x1FFE, &[1, 2, 3, 4]).unwrap();
        assert_eq!(f.read_vec(0x1FFE, 4).unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(f.read_vec(0, 2).unwrap(), vec![3, 4]);
        // An address beyond the part aliases into it.
        assert_eq!(f.read_vec(0x2000 + 0x1FFF, 2).unwrap(), vec![2, 3]);
        f.erase_sector(0x2000).unwrap();
        assert_eq!(f.read_vec(0, 2).unwrap(), vec![0xFF, 0xFF]);
        assert_eq!(f.read_vec(0x1FFE, 2).unwrap(), vec![1, 2]);
    }

    #[test]
    fn file_flash_persists_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flash.bin");
        {
            let mut f = Flash::create_erased(&path, 0x4000).unwrap();
            f.program(0x3FFF, &[0x12, 0x34]).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 0x4000);
        assert_eq!((bytes[0x3FFF], bytes[0], bytes[1]), (0x12, 0x34, 0xFF));
        assert!(
            Flash::create_erased(&path, 0x4000).is_err(),
            "never clobbers a file"
        );
        assert!(matches!(
            Flash::open(&path, 0x8000),
            Err(OpenError::WrongSize {
                len: 0x4000,
                expected: 0x8000
            })
        ));
        let f = Flash::open(&path, 0x4000).unwrap();
        assert_eq!(f.read_vec(0x3FFF, 1).unwrap(), vec![0x12]);
    }

    #[test]
    fn timing_estimates() {
        assert_eq!(program_time(0, 256), PAGE_PROGRAM_TIME);
        assert_eq!(program_time(0xFF, 2), PAGE_PROGRAM_TIME * 2);
        assert_eq!(program_time(0, 0x400), PAGE_PROGRAM_TIME * 4);
        let mut f = Flash::in_memory(1 << 20);
        assert_eq!(f.erase_all().unwrap(), CHIP_ERASE_TIME_PER_MB);
    }
}
