//! `cargo xtask bench <which> [--json FILE]`: each benchmark is a bench binary of the crate
//! it measures; this runs it in release mode and passes `--json` through.
use std::path::Path;

use anyhow::Context as _;

/// The benchmarks.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Which {
    /// ws-engine vs tokio-tungstenite, fastwebsockets and tungstenite on loopback, same
    /// run, each as a share of a raw read(2) ceiling.
    Engine,
    /// Callback profiler start+stop cost, 1 and 2 threads, and the disabled cost.
    Profiler,
    /// What attaching the probes costs a ws-engine client, and BPF time per program.
    Attach,
    /// ws-engine vs tokio-tungstenite over TLS, and decrypt cost.
    Tls,
    /// What `ws-trace profile` at 99 Hz costs a busy process.
    Profile,
    /// `ws-trace serve` on a 50 k msg/s feed for 10 minutes: its CPU (with its BPF), RSS,
    /// fds and maps over time (`WS_TRACE_SOAK_SECS`, `WS_TRACE_SOAK_RATE`).
    Soak,
}

/// Runs one benchmark.
pub fn run(which: Which, json: Option<&Path>) -> anyhow::Result<()> {
    crate::setup::run()?;
    let (package, bench) = match which {
        Which::Engine => ("ws-engine", "engine"),
        Which::Profiler => ("ws-profiler", "profiler"),
        Which::Attach => ("ws-trace", "attach"),
        Which::Tls => ("ws-engine", "tls"),
        Which::Profile => ("ws-trace", "profile"),
        Which::Soak => ("ws-trace", "soak"),
    };
    let json = json
        .map(std::path::absolute)
        .transpose()
        .context("resolving the --json path")?;
    let json = json.as_ref().map(|p| p.display().to_string());
    // The clock, its cost per read (measured here, before anything is built) and how quiet
    // the machine is; the bench binary prints the same header again when it starts.
    println!("{}", ws_clock::bench_header(bench));
    let mut args = vec!["bench", "-p", package, "--bench", bench, "--"];
    if let Some(path) = json.as_deref() {
        args.extend(["--json", path]);
    }
    crate::util::cargo(&args)
}
