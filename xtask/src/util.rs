//! Running commands the same way everywhere: print them, time them, fail loudly.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
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

/// Runs the workspace's cargo with `args` at the workspace root.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo).args(args).current_dir(root()))
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

/// Echo round trips over a loopback TCP connection for `length`; returns how many.
pub fn loopback_traffic(length: Duration) -> anyhow::Result<u64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            s.write_all(&buf[..n])?;
        }
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let msg = [0x42u8; 512];
    let mut back = [0u8; 512];
    let until = Instant::now() + length;
    let mut rounds = 0;
    while Instant::now() < until {
        c.write_all(&msg)?;
        c.read_exact(&mut back)?;
        rounds += 1;
        // A steady trickle, not a flood: the point is to see each stage fire.
        std::thread::sleep(Duration::from_micros(200));
    }
    drop(c);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("echo server thread panicked"))??;
    Ok(rounds)
}
