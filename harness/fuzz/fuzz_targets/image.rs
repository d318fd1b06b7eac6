//! Image parser and lints: any bytes give an image or an error naming an offset inside the
//! input, never a panic; lints run against every board.

#![no_main]

use harness::{board, image};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = image::parse(data) {
        assert!(img.end() <= data.len());
        assert!(img.checksum().offset < data.len());
    }
    match image::parse_firmware(data) {
        Ok(fw) => {
            assert!(fw.app().end() <= data.len());
            let _ = image::check(&fw);
            for b in board::all() {
                for lint in image::lint(&fw, b) {
                    assert!(!lint.message.is_empty());
                }
            }
        }
        Err(e) => {
            // Every parse error names where; rendering it must not panic.
            let _ = e.to_string();
        }
    }
    let _ = image::identity::Identity::find(data);
    let _ = image::checksum::flash_crc(data);
});
