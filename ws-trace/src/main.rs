//! The `ws-trace` command line: parses the arguments and runs the command (one file per
//! command under `cli/`).
mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // Output piped into `head` and the like: end quietly when the reader goes away, as
    // command-line tools do, instead of panicking in println! (Rust ignores SIGPIPE).
    // SAFETY: restores a signal's default disposition before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = cli::args::Cli::parse();
    match cli::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ws-trace: {e:#}");
            ExitCode::FAILURE
        }
    }
}
