//! `cargo xtask setup`: find what this machine lacks and install exactly that.
//!
//! Each step checks first (cheaply) and only installs when the check fails, so a second
//! run finds everything in well under five seconds. Installing Debian packages needs
//! root; without it the missing commands are printed instead.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::util;

/// Debian packages the build and the tests need.
const DEBIAN_PACKAGES: &[&str] = &[
    // bpf-linker is built against LLVM 22 (Debian's llvm-22-dev); these are its link deps.
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    // `ip netns` / veth for network-namespace tests and the demo.
    "iproute2",
    // setpriv, to run the CLI without privileges in tests.
    "util-linux",
    // objcopy, to make a stripped binary in the symbol tests.
    "binutils",
    // A real terminal for `ws-trace top`'s test (it reads the screen with capture-pane).
    "tmux",
    // `cargo xtask vmtest`: the VM, its initramfs (busybox, cpio), 6.12+'s xz modules.
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    // `serve`'s tests: a real Prometheus scraping it (run on a free loopback port with its
    // own config; the package's own service, where systemd starts it, is not used), and
    // promtool to lint /metrics.
    "prometheus",
];

/// The bpf-linker release this project is built and tested with.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Python packages of the real peers the engine's tests talk to (pip spec, module), pinned:
/// the Autobahn expected-results file holds for this kosoku.
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("kosoku==0.1.0", "kosoku"),
    ("websockets==17.4", "websockets"),
];

struct Step {
    name: &'static str,
    start: Instant,
}

impl Step {
    fn begin(name: &'static str) -> Step {
        Step {
            name,
            start: Instant::now(),
        }
    }

    fn done(self, what: &str) {
        println!(
            "setup: {:<12} {what} ({:.2} s)",
            self.name,
            self.start.elapsed().as_secs_f64()
        );
    }
}

/// Runs every setup step.
pub fn run() -> anyhow::Result<()> {
    let start = Instant::now();
    let root = nix::unistd::geteuid().is_root();
    debian_packages(root)?;
    nightly_rust_src()?;
    bpf_linker()?;
    python_peers()?;
    println!("setup: complete ({:.2} s)", start.elapsed().as_secs_f64());
    Ok(())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn debian_packages(root: bool) -> anyhow::Result<()> {
    let step = Step::begin("debian");
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Status}\n"])
        .args(DEBIAN_PACKAGES)
        .output()
        .context("running dpkg-query (is this Debian?)")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !listing.lines().any(|l| l == format!("{p} installed")))
        .collect();
    if missing.is_empty() {
        step.done(&format!("{} packages present", DEBIAN_PACKAGES.len()));
        return Ok(());
    }
    let install = format!("apt-get install -y {}", missing.join(" "));
    if !root {
        bail!(
            "missing Debian packages: {}\nrun as root:\n  sudo apt-get update\n  sudo {install}",
            missing.join(" ")
        );
    }
    util::run_fetching(|| {
        let mut c = Command::new("apt-get");
        c.args(["update", "-q"]);
        c
    })?;
    util::run_fetching(|| {
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    })?;
    step.done(&format!("installed {}", missing.join(" ")));
    Ok(())
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let step = Step::begin("nightly");
    let sysroot = util::nightly("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let Some(sysroot) = sysroot else {
        bail!(
            "no nightly Rust toolchain (the eBPF probes need it)\nrun:\n  rustup toolchain install nightly --profile minimal --component rust-src"
        );
    };
    let core = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core.exists() {
        step.done("nightly with rust-src present");
        return Ok(());
    }
    util::run_fetching(|| {
        let mut c = Command::new("rustup");
        c.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
        c
    })?;
    step.done("added rust-src to nightly");
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    let step = Step::begin("bpf-linker");
    if let Ok(out) = Command::new("bpf-linker").arg("--version").output()
        && out.status.success()
    {
        let v = String::from_utf8_lossy(&out.stdout);
        step.done(&format!("{} present", v.trim()));
        return Ok(());
    }
    // Debian's /usr/bin/llvm-config is LLVM 14: put LLVM 22's first so the build links
    // against it (else: "unable to find library -lLLVM").
    let path = std::env::var("PATH").unwrap_or_default();
    util::run_fetching(|| {
        let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        c.args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("PATH", format!("/usr/lib/llvm-22/bin:{path}"))
        .env("LLVM_PREFIX", "/usr/lib/llvm-22");
        c
    })?;
    if !quiet(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    step.done(&format!("installed bpf-linker {BPF_LINKER_VERSION}"));
    Ok(())
}

fn python_peers() -> anyhow::Result<()> {
    let step = Step::begin("python");
    let check = PYTHON_PACKAGES
        .iter()
        .map(|(_, module)| format!("import {module}"))
        .collect::<Vec<_>>()
        .join("; ");
    if quiet(Command::new("python3").args(["-c", &check])) {
        step.done("kosoku and websockets present");
        return Ok(());
    }
    util::run_fetching(|| {
        let mut c = Command::new("python3");
        c.args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(PYTHON_PACKAGES.iter().map(|(pkg, _)| *pkg));
        c
    })?;
    step.done("installed kosoku and websockets");
    Ok(())
}
