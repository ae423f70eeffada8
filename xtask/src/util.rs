//! Running commands the same way everywhere: print them, time them, fail loudly.
use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, bail};

/// The workspace root (xtask lives one level below it). `cargo run` sets
/// `CARGO_MANIFEST_DIR` for the run too, and that one wins: two checkouts sharing one
/// `CARGO_TARGET_DIR` may run an xtask binary cargo built in the other checkout (the
/// compiled-in path is not part of what makes cargo rebuild it).
pub fn root() -> PathBuf {
    let here = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Cargo's target directory for this workspace.
pub fn target_dir() -> anyhow::Result<PathBuf> {
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target")))
}

/// Runs `cmd`, printing it and its duration; fails if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}").replace('"', "");
    println!("$ {shown}");
    let start = Instant::now();
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    let took = start.elapsed().as_secs_f64();
    if !status.success() {
        bail!("{shown} failed ({status}) after {took:.1} s");
    }
    println!("  ({took:.1} s)");
    Ok(())
}

/// Runs a command that needs the package registries (apt, crates.io, PyPI) up to three
/// times, 10 s apart: a mirror mid-sync or a dropped connection fails one try, not the run.
/// `make` builds the command afresh for each try.
pub fn run_fetching(mut make: impl FnMut() -> Command) -> anyhow::Result<()> {
    const TRIES: u32 = 3;
    let mut last = None;
    for attempt in 1..=TRIES {
        match run(&mut make()) {
            Ok(()) => return Ok(()),
            Err(e) => {
                println!("  try {attempt} of {TRIES} failed: {e:#}");
                last = Some(e);
                if attempt < TRIES {
                    std::thread::sleep(std::time::Duration::from_secs(10));
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no try was made")))
}

/// Runs the workspace's cargo with `args` at the workspace root.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run(&mut cargo_command(args))
}

/// The `cargo ARGS` command in the workspace root, to adjust before running.
pub fn cargo_command(args: &[&str]) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(root());
    cmd
}

/// A command running `program` as root: directly when we are root, else through sudo.
pub fn privileged(program: &std::path::Path) -> Command {
    if nix::unistd::geteuid().is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg(program);
        cmd
    }
}

/// A command for the nightly toolchain, free of the outer cargo's toolchain variables.
pub fn nightly(tool: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", tool]);
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTDOC",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Clippy over the eBPF crate, for its own target.
pub fn clippy_probes() -> anyhow::Result<()> {
    run(nightly("cargo")
        .args([
            "clippy",
            "-p",
            "ws-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(root()))
}
