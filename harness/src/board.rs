//! Board profiles: the chip, flash and flash layout of each supported board.
//!
//! The profiles are data (`harness/boards.toml`, embedded at build time) so that adding a board
//! is a change to one table, not to code. Everything above this module (image lints, the
//! simulator, rigs, scenarios) asks for a [`BoardProfile`] by id.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use serde::Deserialize;

/// The embedded board table.
const BOARDS_TOML: &str = include_str!("../boards.toml");

/// The SoC on a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Chip {
    /// ESP8266EX with external SPI flash.
    Esp8266,
    /// ESP8285: ESP8266 core with 1 MB flash in the package, wired for DOUT.
    Esp8285,
}

impl fmt::Display for Chip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Chip::Esp8266 => "ESP8266",
            Chip::Esp8285 => "ESP8285",
        })
    }
}

/// SPI flash mode, as stored in byte 2 of the image header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlashMode {
    /// Quad I/O (header value 0).
    Qio,
    /// Quad output (1).
    Qout,
    /// Dual I/O (2).
    Dio,
    /// Dual output (3).
    Dout,
}

impl FlashMode {
    /// The header byte for this mode (esptool bin_image.py).
    pub fn header_value(self) -> u8 {
        match self {
            FlashMode::Qio => 0,
            FlashMode::Qout => 1,
            FlashMode::Dio => 2,
            FlashMode::Dout => 3,
        }
    }

    /// The mode for a header byte, if it is one of the four defined values.
    pub fn from_header(value: u8) -> Option<Self> {
        Some(match value {
            0 => FlashMode::Qio,
            1 => FlashMode::Qout,
            2 => FlashMode::Dio,
            3 => FlashMode::Dout,
            _ => return None,
        })
    }

    /// Lower-case name as esptool and the CLI spell it.
    pub fn name(self) -> &'static str {
        match self {
            FlashMode::Qio => "qio",
            FlashMode::Qout => "qout",
            FlashMode::Dio => "dio",
            FlashMode::Dout => "dout",
        }
    }
}

impl fmt::Display for FlashMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name().to_ascii_uppercase())
    }
}

impl std::str::FromStr for FlashMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "qio" => Ok(FlashMode::Qio),
            "qout" => Ok(FlashMode::Qout),
            "dio" => Ok(FlashMode::Dio),
            "dout" => Ok(FlashMode::Dout),
            other => Err(format!(
                "unknown flash mode `{other}` (expected qio, qout, dio or dout)"
            )),
        }
    }
}

/// Where things live in flash for one linker layout. All values are flash offsets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlashLayout {
    /// Human description (which linker script).
    pub description: String,
    /// Start of the application image (after eboot).
    pub sketch_start: u32,
    /// Start of the filesystem; the OTA staging area ends here.
    pub fs_start: u32,
    /// End of the filesystem.
    pub fs_end: u32,
    /// The EEPROM emulation sector.
    pub eeprom: u32,
    /// The SDK's RF calibration sector.
    pub rf_cal: u32,
    /// First of the SDK parameter sectors (Wi-Fi config), up to `flash_end`.
    pub sdk_params: u32,
    /// End of the flash this layout was made for.
    pub flash_end: u32,
}

/// One board: chip, flash and layout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BoardProfile {
    /// Stable id used on the command line and in rig/scenario files (`sonoff-basic`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// The SoC.
    pub chip: Chip,
    /// Real flash size in bytes.
    pub flash_size: u32,
    /// JEDEC id as the RDID command returns it (manufacturer in the low byte).
    pub flash_id: u32,
    /// Flash modes the board's flash can run.
    pub flash_modes: Vec<FlashMode>,
    /// The mode builds for this board should use.
    pub recommended_mode: FlashMode,
    /// Name of the flash layout.
    pub layout_name: String,
    /// The flash layout.
    pub layout: FlashLayout,
    /// Station MAC address.
    pub mac: [u8; 6],
    /// GPIO of the button (also the boot strap).
    pub button_gpio: u8,
    /// Relay GPIOs.
    pub relay_gpios: Vec<u8>,
    /// Status LED GPIO (active low).
    pub led_gpio: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    board: Vec<RawBoard>,
    layout: BTreeMap<String, FlashLayout>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBoard {
    id: String,
    name: String,
    chip: Chip,
    flash_size: String,
    flash_id: u32,
    flash_modes: Vec<FlashMode>,
    recommended_mode: FlashMode,
    layout: String,
    mac: String,
    button_gpio: u8,
    relay_gpios: Vec<u8>,
    led_gpio: u8,
}

/// Parses a flash size as written by people and esptool: `512KB`, `1MB`, `4M`, `2097152`.
pub fn parse_size(text: &str) -> Option<u32> {
    let t = text.trim();
    let upper = t.to_ascii_uppercase();
    let (digits, mult) = if let Some(d) = upper.strip_suffix("MB").or(upper.strip_suffix('M')) {
        (d, 1024 * 1024)
    } else if let Some(d) = upper.strip_suffix("KB").or(upper.strip_suffix('K')) {
        (d, 1024)
    } else if let Some(h) = upper.strip_prefix("0X") {
        return u32::from_str_radix(h, 16).ok();
    } else {
        (upper.as_str(), 1)
    };
    digits.trim().parse::<u32>().ok()?.checked_mul(mult)
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn load() -> Vec<BoardProfile> {
    // The table is part of the source tree; a unit test parses it, so an error here is a bug.
    let raw: RawTable = toml::from_str(BOARDS_TOML).expect("harness/boards.toml is valid");
    raw.board
        .into_iter()
        .map(|b| {
            let layout = raw
                .layout
                .get(&b.layout)
                .cloned()
                .expect("board names a known layout");
            BoardProfile {
                flash_size: parse_size(&b.flash_size).expect("board flash_size parses"),
                mac: parse_mac(&b.mac).expect("board mac parses"),
                id: b.id,
                name: b.name,
                chip: b.chip,
                flash_id: b.flash_id,
                flash_modes: b.flash_modes,
                recommended_mode: b.recommended_mode,
                layout_name: b.layout,
                layout,
                button_gpio: b.button_gpio,
                relay_gpios: b.relay_gpios,
                led_gpio: b.led_gpio,
            }
        })
        .collect()
}

/// All known boards, in table order.
pub fn all() -> &'static [BoardProfile] {
    static BOARDS: OnceLock<Vec<BoardProfile>> = OnceLock::new();
    BOARDS.get_or_init(load)
}

/// The board with this id.
pub fn find(id: &str) -> Result<&'static BoardProfile, UnknownBoard> {
    all()
        .iter()
        .find(|b| b.id == id)
        .ok_or_else(|| UnknownBoard {
            id: id.to_string(),
            known: all()
                .iter()
                .map(|b| b.id.clone())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A board id that is not in the table.
#[derive(Debug, Clone, thiserror::Error, miette::Diagnostic)]
#[error("unknown board `{id}`")]
#[diagnostic(code(harness::board::unknown), help("known boards: {known}"))]
pub struct UnknownBoard {
    /// The id that was asked for.
    pub id: String,
    /// The ids that exist, comma-separated.
    pub known: String,
}

impl BoardProfile {
    /// Whether the board's flash can run this mode.
    pub fn supports_mode(&self, mode: FlashMode) -> bool {
        self.flash_modes.contains(&mode)
    }

    /// The station MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_loads_and_has_both_sonoffs() {
        let basic = find("sonoff-basic").unwrap();
        assert_eq!(basic.chip, Chip::Esp8266);
        assert_eq!(basic.flash_size, 1024 * 1024);
        let ch4 = find("sonoff-4ch").unwrap();
        assert_eq!(ch4.chip, Chip::Esp8285);
        assert!(ch4.supports_mode(FlashMode::Dout));
        assert!(!ch4.supports_mode(FlashMode::Qio));
        assert!(!ch4.supports_mode(FlashMode::Dio));
        assert_eq!(ch4.layout.eeprom, 0xFB000);
    }

    #[test]
    fn unknown_board_lists_known_ones() {
        let err = find("sonoff-pow").unwrap_err();
        assert!(err.known.contains("sonoff-basic") && err.known.contains("sonoff-4ch"));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1MB"), Some(1 << 20));
        assert_eq!(parse_size("4M"), Some(4 << 20));
        assert_eq!(parse_size("512KB"), Some(512 << 10));
        assert_eq!(parse_size("0x100000"), Some(1 << 20));
        assert_eq!(parse_size("lots"), None);
    }
}
