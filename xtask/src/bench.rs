//! `cargo xtask bench <which> [--json FILE]`: each benchmark is a bench binary of the crate
//! it measures; this runs it in release mode and passes `--json` through.
use std::path::Path;

use anyhow::Context as _;

/// The benchmarks.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Which {
    /// ws-engine vs tokio-tungstenite vs fastwebsockets on loopback, same run.
    Engine,
    /// Callback profiler start+stop cost, 1 and 2 threads, and the disabled cost.
    Profiler,
    /// What attaching the probes costs a ws-engine client, and BPF time per program.
    Attach,
    /// ws-engine vs tokio-tungstenite over TLS, and decrypt cost.
    Tls,
    /// What `ws-trace profile` at 99 Hz costs a busy process.
    Profile,
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
    };
    let json = json
        .map(std::path::absolute)
        .transpose()
        .context("resolving the --json path")?;
    let json = json.as_ref().map(|p| p.display().to_string());
    let mut args = vec!["bench", "-p", package, "--bench", bench, "--"];
    if let Some(path) = json.as_deref() {
        args.extend(["--json", path]);
    }
    crate::util::cargo(&args)
}
