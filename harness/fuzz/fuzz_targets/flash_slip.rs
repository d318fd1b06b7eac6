//! See [`harness::fuzzing::flash_slip`] for the input layout and the properties checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::fuzzing::flash_slip(data));
