//! Boot log parser.
