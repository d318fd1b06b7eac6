//! See [`harness::fuzzing::scenario`] for the properties checked.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn repo_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::fuzzing::scenario(data, repo_root()));
