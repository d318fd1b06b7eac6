//! See [`harness::fuzzing::multipart_roundtrip`] for the properties checked; `arbitrary` gives
//! the field name, file name, boundary, read and block sizes and the file.

#![no_main]

use arbitrary::Arbitrary;

#[derive(Debug, Arbitrary)]
struct Input {
    field: String,
    filename: String,
    boundary: String,
    read: u16,
    block: u16,
    file: Vec<u8>,
}

libfuzzer_sys::fuzz_target!(|i: Input| {
    harness::fuzzing::multipart_roundtrip(
        &i.field,
        &i.filename,
        &i.boundary,
        usize::from(i.read) + 1,
        usize::from(i.block % 4096) + 1,
        &i.file,
    )
});
