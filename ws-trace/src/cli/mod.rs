//! The `ws-trace` commands, one file each; [`args`] holds what clap parses.
pub mod args;

mod attach;
mod demo;
mod diff;
mod doctor;
mod export;
mod feed;
mod profile;
mod report;
mod serve;
mod top;

use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;

use args::Command;

/// Runs `command`.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Doctor(args) => doctor::run(args),
        Command::Attach(args) => attach::run(args),
        Command::Record(args) => attach::record(args),
        Command::Top(args) => top::run(args),
        Command::Demo(args) => demo::run(args),
        Command::DemoClient(args) => demo::client(args),
        Command::Export(args) => export::run(args),
        Command::Feed(args) => feed::run(args),
        Command::Report(args) => report::run(args),
        Command::Profile(args) => profile::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Serve(args) => serve::run(args),
    }
}

/// A flag that Ctrl-C (SIGINT, SIGTERM) sets; the sessions poll it and detach.
fn stop_on_ctrl_c() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    Ok(stop)
}
