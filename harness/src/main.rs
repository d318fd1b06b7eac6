//! The `harness` command line: parses arguments, calls the library, renders, maps to exit codes.
//!
//! Exit codes follow ripgrep: 0 = ran and passed, 1 = the device (or image) failed a check,
//! 2 = the harness itself could not do its job (bad input, I/O error).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Error messages name a file, a line and a key; wrapped at 80 columns in a log or a pipe,
    // they could no longer be found with grep. On a terminal miette wraps to its width.
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let _ = miette::set_hook(Box::new(|_| {
            Box::new(miette::MietteHandlerOpts::new().wrap_lines(false).build())
        }));
    }
    let args = cli::Cli::parse();
    cli::init_tracing(args.verbose);
    match cli::run(args) {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(2)
        }
    }
}
