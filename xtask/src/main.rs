//! Project tasks: `cargo xtask setup|build|test|demo|bench`.
//!
//! Every task prints what it runs and how long it took. `setup` installs only what is
//! missing and is quick when nothing is.
mod bench;
mod setup;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// ws-trace's project tasks.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks: Debian packages, nightly rust-src, bpf-linker, Python peers.
    Setup,
    /// Build everything, probes included (release).
    Build,
    /// Setup, then fmt --check, clippy -D warnings, and every test (root-only probe tests too).
    Test,
    /// Build, run `ws-trace doctor`, then `ws-trace demo`: a real traced WebSocket session.
    Demo {
        /// Seconds the demo's feed runs.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
    },
    /// Benchmarks: engine, profiler (see docs).
    Bench {
        /// Which benchmark.
        #[arg(value_enum)]
        which: bench::Which,
        /// Also write the results as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Build => build(),
        Task::Test => test(),
        Task::Demo { duration } => demo(duration),
        Task::Bench { which, json } => bench::run(which, json.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> anyhow::Result<()> {
    setup::run()?;
    util::cargo(&[
        "build",
        "--release",
        "--workspace",
        "--exclude",
        "ws-ebpf",
        "--all-targets",
    ])
}

fn test() -> anyhow::Result<()> {
    setup::run()?;
    util::cargo(&["fmt", "--all", "--", "--check"])?;
    // The probes are checked for their own target by clippy_probes.
    util::cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "ws-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    util::clippy_probes()?;
    // Doc comments too: broken intra-doc links and public docs pointing at private items.
    util::run(
        util::cargo_command(&["doc", "--no-deps", "--workspace", "--exclude", "ws-ebpf"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    util::cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "ws-ebpf",
        "--no-fail-fast",
    ])
}

fn demo(duration: f64) -> anyhow::Result<()> {
    setup::run()?;
    util::cargo(&["build", "--release", "-p", "ws-trace"])?;
    let ws_trace = util::target_dir()?.join("release/ws-trace");
    util::run(util::privileged(&ws_trace).arg("doctor"))?;
    let out = util::root().join("target/demo");
    println!(
        "\n== ws-trace demo --duration {duration} --out {}",
        out.display()
    );
    util::run(
        util::privileged(&ws_trace)
            .args(["demo", "--duration", &duration.to_string(), "--out"])
            .arg(&out),
    )
}
