//! Rig files: any text validates or fails with an error that names the file and a line inside
//! it, and renders.

#![no_main]

use std::path::Path;

use harness::rig::RigConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match RigConfig::parse(text, Path::new("/rigs/fuzz.toml")) {
        Ok(rig) => {
            for b in &rig.boards {
                assert!(rig.board(&b.name).is_ok());
            }
        }
        Err(e) => {
            assert_eq!(e.path, Path::new("/rigs/fuzz.toml"));
            assert!(e.line >= 1 && e.line <= text.lines().count().max(1) + 1, "{e}");
            let mut out = String::new();
            let _ = miette::GraphicalReportHandler::new().render_report(&mut out, e.as_ref());
        }
    }
});
