//! The host's multipart builder against the device's parser: any field name, file name,
//! boundary and file give back one part with that name and file name (escaped as browsers do)
//! and exactly the file's bytes, however the body is cut into reads.

#![no_main]

use arbitrary::Arbitrary;
use harness::ota::multipart::{Event, FileUpload, Parser};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    field: String,
    filename: String,
    boundary: String,
    read: u16,
    block: u16,
    file: Vec<u8>,
}

/// WHATWG form submission: `"` and line breaks are percent-encoded, nothing else.
fn browser_escape(s: &str) -> String {
    s.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fuzz_target!(|input: Input| {
    let Ok(upload) = FileUpload::new(
        &input.field,
        &input.filename,
        input.file.len() as u64,
        &input.boundary,
    ) else {
        return;
    };
    let body: Vec<u8> = upload
        .chunks(&input.file, usize::from(input.read) + 1)
        .unwrap()
        .flatten()
        .copied()
        .collect();
    assert_eq!(body.len() as u64, upload.content_length());

    let block = usize::from(input.block % 4096) + 1;
    let mut parser = Parser::from_content_type(&upload.content_type())
        .unwrap()
        .with_block_size(block);
    let mut events = Vec::new();
    for read in body.chunks(usize::from(input.read) + 1) {
        events.extend(parser.feed(read).unwrap_or_else(|e| panic!("{e}: {input:?}")));
    }
    parser.finish().unwrap();

    let mut file = Vec::new();
    let mut starts = Vec::new();
    for e in &events {
        match e {
            Event::PartStart(h) => starts.push(h.clone()),
            Event::Data(d) => file.extend_from_slice(d),
            Event::PartEnd | Event::End => {}
        }
    }
    assert_eq!(starts.len(), 1, "{events:?}");
    assert_eq!(starts[0].name, browser_escape(&input.field));
    assert_eq!(
        starts[0].filename.as_deref(),
        Some(browser_escape(&input.filename).as_str())
    );
    assert_eq!(file, input.file);
    assert_eq!(events.last(), Some(&Event::End));
});
