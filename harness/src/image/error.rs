//! The one error type of the image layer.

/// What went wrong while parsing or building an image.
///
/// Every parse variant names the byte offset (from the start of the input) where the problem
/// is, so a user can look at the file with a hex dump. A bad checksum is *not* an error: it is
/// a verdict in [`super::Checksum`], so that `inspect` can still show the whole image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ImageError {
    /// The input ends before a structure that must be there.
    #[error("file ends at {len} bytes, but {what} at offset {offset:#x} needs {needed} bytes")]
    #[diagnostic(
        code(harness::image::truncated),
        help("the file is cut short; rebuild it or download it again")
    )]
    Truncated {
        /// Offset where the structure starts.
        offset: usize,
        /// What was being read.
        what: &'static str,
        /// Bytes that structure needs.
        needed: usize,
        /// Length of the whole input.
        len: usize,
    },

    /// The first byte of an image is not the ESP8266 magic 0xE9.
    #[error("bad magic {found:#04x} at offset {offset:#x}, expected 0xe9")]
    #[diagnostic(
        code(harness::image::bad_magic),
        help(
            "not an ESP8266 application image (0xea would be a v2/rBoot image, 0x1f a gzip OTA \
             file; neither is supported here)"
        )
    )]
    BadMagic {
        /// Offset of the magic byte.
        offset: usize,
        /// The byte found there.
        found: u8,
    },

    /// The header's segment count is 0: the ROM would load nothing and jump to the entry point.
    #[error("segment count 0 at offset {offset:#x}: an image needs at least one segment")]
    #[diagnostic(
        code(harness::image::no_segments),
        help("the header is corrupt, or this is not an image at all")
    )]
    NoSegments {
        /// Offset of the count byte.
        offset: usize,
    },

    /// The header claims more segments than the ROM (and esptool) accept.
    #[error("segment count {count} at offset {offset:#x} is absurd (at most 16)")]
    #[diagnostic(
        code(harness::image::too_many_segments),
        help("the header is corrupt, or this is not an image at all")
    )]
    TooManySegments {
        /// Offset of the count byte.
        offset: usize,
        /// The count found.
        count: u8,
    },

    /// Byte 2 of the header is not one of the four flash modes.
    #[error("unknown flash mode {value:#04x} at offset {offset:#x} (0 qio, 1 qout, 2 dio, 3 dout)")]
    #[diagnostic(code(harness::image::flash_mode), help("the header is corrupt"))]
    UnknownFlashMode {
        /// Offset of the mode byte.
        offset: usize,
        /// The byte found there.
        value: u8,
    },

    /// The high nibble of header byte 3 is not a known flash size.
    #[error("unknown flash size nibble {value:#x} at offset {offset:#x}")]
    #[diagnostic(
        code(harness::image::flash_size),
        help(
            "known sizes: 0 512KB, 1 256KB, 2 1MB, 3 2MB, 4 4MB, 5 2MB-c1, 6 4MB-c1, 8 8MB, 9 16MB"
        )
    )]
    UnknownFlashSize {
        /// Offset of the size/frequency byte.
        offset: usize,
        /// The high nibble.
        value: u8,
    },

    /// The low nibble of header byte 3 is not a known flash frequency.
    #[error("unknown flash frequency nibble {value:#x} at offset {offset:#x}")]
    #[diagnostic(
        code(harness::image::flash_freq),
        help("known frequencies: 0 40m, 1 26m, 2 20m, 0xf 80m")
    )]
    UnknownFlashFreq {
        /// Offset of the size/frequency byte.
        offset: usize,
        /// The low nibble.
        value: u8,
    },

    /// A segment's declared length runs past the end of the input.
    #[error(
        "segment {index} (load {addr:#010x}, header at offset {offset:#x}) declares {size} bytes, \
         but only {available} remain in the file"
    )]
    #[diagnostic(
        code(harness::image::segment_past_end),
        help("the file is truncated or the segment header is corrupt")
    )]
    SegmentPastEnd {
        /// Index of the segment in the image.
        index: usize,
        /// Offset of the segment header.
        offset: usize,
        /// Load address from the segment header.
        addr: u32,
        /// Declared data length.
        size: u32,
        /// Bytes left in the input after the segment header.
        available: usize,
    },

    /// A fault name that the reference firmware does not know.
    #[error(
        "unknown fault `{name}` (known: crash-on-boot, wdt-loop, soft-wdt, hang-after-ota, no-ota)"
    )]
    #[diagnostic(code(harness::image::unknown_fault))]
    UnknownFault {
        /// The name given.
        name: String,
    },

    /// A flash size or frequency name that esptool would not accept.
    #[error("unknown flash {what} `{name}` (known: {known})")]
    #[diagnostic(code(harness::image::unknown_flash_param))]
    UnknownFlashParam {
        /// `size` or `frequency`.
        what: &'static str,
        /// The name given.
        name: String,
        /// The accepted names.
        known: &'static str,
    },

    /// An identity value that cannot be written into the `HILFW` line.
    #[error(
        "identity {key}=`{value}` is not allowed: values must be 1..=64 printable ASCII characters without spaces or `=`"
    )]
    #[diagnostic(code(harness::image::identity_value))]
    BadIdentityValue {
        /// The key (`app`, `version`, `password`).
        key: &'static str,
        /// The rejected value.
        value: String,
    },

    /// A core version that is not `MAJOR.MINOR.PATCH`.
    #[error("core version `{value}` is not MAJOR.MINOR.PATCH (for example 2.3.0 or 3.1.2)")]
    #[diagnostic(code(harness::image::core_version))]
    BadCoreVersion {
        /// The rejected value.
        value: String,
    },

    /// `--size` is smaller than the smallest image the builder can lay out.
    #[error("requested size {requested} bytes is too small; the smallest image is {minimum} bytes")]
    #[diagnostic(code(harness::image::size_too_small))]
    SizeTooSmall {
        /// The size asked for (after rounding up to 16).
        requested: usize,
        /// The smallest possible size.
        minimum: usize,
    },

    /// `--size` is larger than any ESP8266 sketch can be.
    #[error("requested size {requested} bytes is larger than the {maximum}-byte limit")]
    #[diagnostic(code(harness::image::size_too_large))]
    SizeTooLarge {
        /// The size asked for.
        requested: usize,
        /// The largest accepted size.
        maximum: usize,
    },
}
