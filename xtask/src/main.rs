//! Project tasks: `cargo xtask setup|build|test|demo|bench|vmtest`.
//!
//! Every task prints what it runs and how long it took. `setup` installs only what is
//! missing and is quick when nothing is.
mod bench;
mod setup;
mod util;
mod vm;

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
    /// Setup, then fmt --check, clippy -D warnings, every test (root-only probe tests too),
    /// and the probe tests in a VM on kernel 6.1 (`vmtest --kernel 6.1`).
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
    /// The probe and join tests in a VM (qemu, TCG) running one of Debian's kernels.
    Vmtest {
        /// Kernel version to boot, as in Debian's package names (6.1, 6.12); repeatable.
        #[arg(long = "kernel", required = true)]
        kernels: Vec<String>,
        /// Also run the engine's TLS tests (kTLS: the VM loads `tls.ko`).
        #[arg(long)]
        ktls: bool,
        /// Also run `ws-trace doctor` and a short `ws-trace demo` in the VM.
        #[arg(long)]
        demo: bool,
        /// Seconds before a VM that has not powered off is killed.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
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
        Task::Vmtest {
            kernels,
            ktls,
            demo,
            timeout,
        } => setup::run().and_then(|()| {
            vm::run(
                &kernels,
                ktls,
                demo,
                std::time::Duration::from_secs(timeout),
            )
        }),
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
    ])?;
    // The probe and join tests on Debian 12's own kernel (6.1: no sock_recv_length, so
    // the fallbacks), in a TCG VM with one vCPU, with `tls.ko`: the engine's TLS tests on
    // kTLS, then doctor and a short traced wss:// demo in the guest. About three minutes
    // (docs/kernels.md).
    vm::run(
        &["6.1".to_string()],
        true,
        true,
        std::time::Duration::from_secs(600),
    )
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
