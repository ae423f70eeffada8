//! `cargo xtask vmtest --kernel 6.1`: the probe and join tests inside a VM running one of
//! Debian's kernels.
//!
//! Downloads Debian's `linux-image-<version>…-cloud-amd64-unsigned` package (cached under
//! `target/vm/`), takes its `vmlinuz` and the modules the tests need (`veth`, `tls`),
//! builds an initramfs of busybox (Debian's `busybox-static`), the test binaries built on
//! this host (at the same paths, debug info stripped) and the shared libraries they need,
//! boots it with `qemu-system-x86_64 -accel tcg` (these machines have no VMX), runs the
//! tests as root with `CI=true`, shows their output from the serial console, and fails if
//! any failed, if a test binary did not report, or if the VM outlived the timeout.
use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util;

/// Modules loaded in the VM (their dependencies first, found from their `.modinfo`), and
/// whether the leg fails without them: `veth` for the network-namespace tests, `tls` and
/// the AEADs its cipher suites ask the crypto API for (kTLS cannot load them itself: the
/// VM has no `modules.dep`).
const MODULES: &[(&str, bool)] = &[
    ("veth", true),
    ("tls", true),
    ("gcm", false),
    ("ghash_generic", false),
    ("ctr", false),
    ("ccm", false),
    ("chacha20poly1305", false),
    ("chacha_generic", false),
    ("poly1305_generic", false),
];

/// Marker lines the VM's init prints, for the host to parse.
const MARK: &str = "VMTEST";

/// One test binary to run in the VM.
struct TestBinary {
    /// Its name, for the report.
    name: String,
    /// The host path (the same path inside the VM).
    path: PathBuf,
    /// Environment for it.
    env: &'static str,
    /// Its arguments.
    args: &'static str,
    /// A libtest harness (judged by its result line), or a program judged by its exit code.
    harness: bool,
}

/// Runs the VM leg for each of `kernels` (e.g. `6.1`). `ktls` adds the engine's TLS tests;
/// `demo` runs `ws-trace doctor` and a short `ws-trace demo` after them.
pub fn run(kernels: &[String], ktls: bool, demo: bool, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tests = build_tests(ktls)?;
    if demo {
        tests.extend(build_demo()?);
    }
    let mut failed = Vec::new();
    for kernel in kernels {
        let leg = Instant::now();
        match run_leg(kernel, &tests, timeout) {
            Ok(report) => println!(
                "vmtest {kernel}: ok: {report} ({:.1} s)",
                leg.elapsed().as_secs_f64()
            ),
            Err(e) => {
                println!(
                    "vmtest {kernel}: FAILED after {:.1} s: {e:#}",
                    leg.elapsed().as_secs_f64()
                );
                failed.push(kernel.clone());
            }
        }
    }
    println!("vmtest: {:.1} s in all", started.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("vmtest failed on kernel(s) {}", failed.join(", "));
    }
    Ok(())
}

/// Builds the test binaries (`cargo test --no-run`) and lists them.
fn build_tests(ktls: bool) -> anyhow::Result<Vec<TestBinary>> {
    let mut args = vec![
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
        "-p",
        "ws-tests",
        "--test",
        "probes",
        "--test",
        "attach",
    ];
    if ktls {
        args.extend(["-p", "ws-engine", "--test", "tls"]);
    }
    println!("$ cargo {}", args.join(" "));
    let out = util::cargo_command(&args)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed ({})", out.status);
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some(name)) = (msg["executable"].as_str(), msg["target"]["name"].as_str())
        else {
            continue;
        };
        let is_test = msg["profile"]["test"].as_bool() == Some(true);
        if !is_test {
            continue;
        }
        // The engine's TLS tests' Python peers are not in the VM: they skip outside CI.
        let env = if name == "tls" { "CI=false" } else { "CI=true" };
        tests.push(TestBinary {
            name: name.to_string(),
            path: PathBuf::from(exe),
            env,
            args: "--test-threads=1",
            harness: true,
        });
    }
    if tests.is_empty() {
        bail!("cargo built no test binaries");
    }
    Ok(tests)
}

/// Builds the `ws-trace` binary: in the VM it runs `doctor`, then a short demo (a traced
/// wss:// session over a veth pair; kTLS where the VM loaded `tls.ko`).
fn build_demo() -> anyhow::Result<Vec<TestBinary>> {
    let args = [
        "build",
        "--message-format=json-render-diagnostics",
        "-p",
        "ws-trace",
        "--bin",
        "ws-trace",
    ];
    println!("$ cargo {}", args.join(" "));
    let out = util::cargo_command(&args)
        .stderr(Stdio::inherit())
        .output()
        .context("building ws-trace")?;
    if !out.status.success() {
        bail!("building ws-trace failed ({})", out.status);
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo built no ws-trace binary")?;
    let program = |name: &str, args: &'static str| TestBinary {
        name: name.to_string(),
        path: exe.clone(),
        env: "CI=true",
        args,
        harness: false,
    };
    Ok(vec![
        program("doctor", "doctor"),
        // TCG runs the guest ~10× slower than the host: a modest rate.
        program("demo", "demo --duration 2 --rate 500 --out /tmp/demo"),
    ])
}

/// A Debian kernel, downloaded and unpacked once.
struct Kernel {
    /// The package's name.
    package: String,
    /// The kernel image.
    vmlinuz: PathBuf,
    /// Uncompressed modules to load, in order.
    modules: Vec<PathBuf>,
}

fn run_leg(version: &str, tests: &[TestBinary], timeout: Duration) -> anyhow::Result<String> {
    let vm_dir = util::target_dir()?.join("vm");
    let kernel = kernel(&vm_dir, version)?;
    println!("vmtest {version}: {}", kernel.package);
    let step = Instant::now();
    let initramfs = initramfs(&vm_dir.join(format!("initramfs-{version}")), &kernel, tests)?;
    println!(
        "vmtest {version}: initramfs {} ({} MiB, {:.1} s)",
        initramfs.display(),
        std::fs::metadata(&initramfs).map_or(0, |m| m.len() >> 20),
        step.elapsed().as_secs_f64()
    );
    let lines = boot(&kernel.vmlinuz, &initramfs, timeout)?;
    judge(&lines, tests)
}

/// The newest `linux-image-<version>…-cloud-amd64-unsigned` package apt knows of.
fn package_for(version: &str) -> anyhow::Result<String> {
    let pattern = format!(
        "^linux-image-{}[.-][0-9].*-cloud-amd64-unsigned$",
        version.replace('.', "\\.")
    );
    let search = || -> anyhow::Result<Vec<String>> {
        let out = Command::new("apt-cache")
            .args(["search", "--names-only", &pattern])
            .output()
            .context("running apt-cache search")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect())
    };
    let mut found = search()?;
    if found.is_empty() {
        util::run_fetching(|| {
            let mut c = Command::new("apt-get");
            c.args(["update", "-q"]);
            c
        })?;
        found = search()?;
    }
    found.sort_by_key(|name| version_key(name));
    found
        .pop()
        .with_context(|| format!("no Debian package matches {pattern} (apt-cache search)"))
}

/// Sort key comparing the numbers in a name as numbers.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(0))
        .collect()
}

/// Downloads and unpacks the kernel package (once; later runs reuse `target/vm/`).
fn kernel(vm_dir: &Path, version: &str) -> anyhow::Result<Kernel> {
    let cached = vm_dir.join(format!("kernel-{version}"));
    let package_file = cached.join("package");
    let order_file = cached.join("modules");
    if let (Ok(package), Ok(order)) = (
        std::fs::read_to_string(&package_file),
        std::fs::read_to_string(&order_file),
    ) {
        let k = Kernel {
            package: package.trim().to_string(),
            vmlinuz: cached.join("vmlinuz"),
            modules: order.lines().map(|m| cached.join(m)).collect(),
        };
        if k.vmlinuz.exists() && k.modules.iter().all(|m| m.exists()) {
            return Ok(k);
        }
    }
    let package = package_for(version)?;
    let download = vm_dir.join("download");
    std::fs::create_dir_all(&download)
        .with_context(|| format!("creating {}", download.display()))?;
    util::run_fetching(|| {
        let mut c = Command::new("apt-get");
        c.args(["download", "-q", "-o", "APT::Sandbox::User=root", &package])
            .current_dir(&download);
        c
    })?;
    let deb = std::fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
    let unpacked = vm_dir.join(format!("unpacked-{version}"));
    let _ = std::fs::remove_dir_all(&unpacked);
    util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    std::fs::create_dir_all(&cached)?;
    let boot = unpacked.join("boot");
    let image = std::fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {}", boot.display()))?;
    std::fs::copy(&image, cached.join("vmlinuz"))?;
    let modules_root = std::fs::read_dir(unpacked.join("lib/modules"))
        .context("no lib/modules in the kernel package")?
        .filter_map(Result::ok)
        .map(|e| e.path().join("kernel"))
        .next()
        .context("no module tree in the kernel package")?;
    let index = module_index(&modules_root)?;
    let mut order = Vec::new();
    for &(name, required) in MODULES {
        match with_deps(&index, name, &mut order) {
            Ok(()) => {}
            Err(e) if !required => println!("vmtest {version}: without {name}: {e:#}"),
            Err(e) => return Err(e),
        }
    }
    let mut modules = Vec::new();
    let mut listing = String::new();
    for (i, name) in order.iter().enumerate() {
        let file = format!("{i:02}-{name}.ko");
        let out = cached.join(&file);
        let from = &index[name];
        if from.extension().is_some_and(|e| e == "xz") {
            let data = Command::new("xz")
                .arg("-dc")
                .arg(from)
                .output()
                .context("running xz -dc")?;
            if !data.status.success() {
                bail!("xz -dc {} failed", from.display());
            }
            std::fs::write(&out, data.stdout)?;
        } else {
            std::fs::copy(from, &out)?;
        }
        listing.push_str(&file);
        listing.push('\n');
        modules.push(out);
    }
    std::fs::write(&order_file, listing)?;
    std::fs::write(&package_file, &package)?;
    let _ = std::fs::remove_dir_all(&unpacked);
    let _ = std::fs::remove_file(&deb);
    Ok(Kernel {
        package,
        vmlinuz: cached.join("vmlinuz"),
        modules,
    })
}

/// A module's name as the kernel spells it (`-` as `_`).
fn module_key(name: &str) -> String {
    name.replace('-', "_")
}

/// Every module file under `dir`, by name.
fn module_index(dir: &Path) -> anyhow::Result<std::collections::BTreeMap<String, PathBuf>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(name) = file
                .strip_suffix(".ko")
                .or_else(|| file.strip_suffix(".ko.xz"))
            {
                out.insert(module_key(name), path.clone());
            }
        }
    }
    Ok(out)
}

/// Appends `name`'s dependencies, then `name`, to `order` (each once).
fn with_deps(
    index: &std::collections::BTreeMap<String, PathBuf>,
    name: &str,
    order: &mut Vec<String>,
) -> anyhow::Result<()> {
    let key = module_key(name);
    if order.contains(&key) {
        return Ok(());
    }
    let path = index
        .get(&key)
        .with_context(|| format!("no module {name} in the package (built in?)"))?;
    for dep in module_depends(path)?.split(',').filter(|d| !d.is_empty()) {
        with_deps(index, dep, order)?;
    }
    order.push(key);
    Ok(())
}

/// The `depends=` of a module's `.modinfo` (empty when it has none).
fn module_depends(module: &Path) -> anyhow::Result<String> {
    let data = if module.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz")
            .arg("-dc")
            .arg(module)
            .output()
            .context("running xz -dc")?;
        out.stdout
    } else {
        std::fs::read(module).with_context(|| format!("reading {}", module.display()))?
    };
    let key = b"\0depends=";
    let Some(at) = data.windows(key.len()).position(|w| w == key) else {
        return Ok(String::new());
    };
    let rest = &data[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// The shared libraries (and the dynamic loader) `binary` needs, per `ldd`.
fn libraries(binary: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd {}", binary.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect())
}

/// Copies `from` to `root` + its own absolute path.
fn place(root: &Path, from: &Path) -> anyhow::Result<PathBuf> {
    let rel = from.strip_prefix("/").unwrap_or(from);
    let to = root.join(rel);
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(from, &to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(to)
}

/// Builds the initramfs in `stage` (a directory, made anew) and returns its cpio archive.
fn initramfs(stage: &Path, kernel: &Kernel, tests: &[TestBinary]) -> anyhow::Result<PathBuf> {
    let _ = std::fs::remove_dir_all(stage);
    for dir in ["bin", "dev", "proc", "sys", "tmp", "run", "modules"] {
        std::fs::create_dir_all(stage.join(dir))?;
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("no /bin/busybox: run `cargo xtask setup` (busybox-static)");
    }
    std::fs::copy(busybox, stage.join("bin/busybox")).context("copying busybox")?;
    let mut libs = BTreeSet::new();
    // The test binaries and the programs they start (the feed client next to them),
    // without debug info: a tenth of the size, symbols kept for the uprobes.
    let mut binaries: Vec<PathBuf> = tests.iter().map(|t| t.path.clone()).collect();
    for t in tests {
        if let Some(dir) = t.path.parent().and_then(Path::parent) {
            let client = dir.join("feed_client");
            if client.exists() && !binaries.contains(&client) {
                binaries.push(client);
            }
        }
    }
    for b in &binaries {
        let to = stage.join(b.strip_prefix("/").unwrap_or(b));
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        util::run(Command::new("objcopy").arg("--strip-debug").arg(b).arg(&to))?;
        libs.extend(libraries(b)?);
    }
    // iproute2's `ip` (busybox's has no `netns`), for the demo's network namespace.
    if tests.iter().any(|t| !t.harness)
        && let Some(ip) = ["/usr/sbin/ip", "/sbin/ip", "/bin/ip"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
    {
        let to = place(stage, ip)?;
        libs.extend(libraries(ip)?);
        // Before busybox's applet links in PATH order.
        let usr_bin = stage.join("usr/bin");
        std::fs::create_dir_all(&usr_bin)?;
        std::fs::copy(&to, usr_bin.join("ip"))?;
    }
    // setpriv, for the test that loads the probes without privileges.
    let setpriv = Path::new("/usr/bin/setpriv");
    if setpriv.exists() {
        place(stage, setpriv)?;
        libs.extend(libraries(setpriv)?);
    }
    for lib in &libs {
        place(stage, lib)?;
    }
    for m in &kernel.modules {
        if let Some(name) = m.file_name() {
            std::fs::copy(m, stage.join("modules").join(name))?;
        }
    }
    let init = stage.join("init");
    std::fs::write(&init, init_script(kernel, tests))?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut archive = stage.as_os_str().to_owned();
    archive.push(".cpio");
    let archive = PathBuf::from(archive);
    let cpio = std::fs::File::create(&archive)
        .with_context(|| format!("creating {}", archive.display()))?;
    util::run(
        Command::new("sh")
            .args(["-c", "find . -print0 | cpio --null --quiet -o -H newc"])
            .current_dir(stage)
            .stdout(cpio),
    )?;
    let _ = std::fs::remove_dir_all(stage);
    Ok(archive)
}

/// The VM's `/init`: mounts, modules, the tests, markers for the host, power off.
fn init_script(kernel: &Kernel, tests: &[TestBinary]) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/usr/bin:/usr/sbin:/bin:/sbin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmp /tmp\n\
         mount -t tmpfs run /run && mkdir -p /var && ln -s /run /var/run\n\
         mount -t tracefs tracefs /sys/kernel/tracing\n\
         mount -t debugfs debugfs /sys/kernel/debug\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null\n\
         ip link set lo up\n\
         ulimit -l unlimited\n\
         export HOME=/tmp TMPDIR=/tmp RUST_BACKTRACE=1\n",
    );
    let _ = writeln!(
        s,
        "echo \"{MARK} booted $(uname -r) $(cut -d' ' -f1 /proc/uptime)s\""
    );
    for m in &kernel.modules {
        if let Some(name) = m.file_name().and_then(|n| n.to_str()) {
            let _ = writeln!(
                s,
                "insmod /modules/{name} && echo \"{MARK} module {name} loaded\" || echo \"{MARK} module {name} not loaded\""
            );
        }
    }
    // What the kernel has of the hooks the fallbacks replace.
    let _ = writeln!(
        s,
        "for tp in sock/sock_recv_length sock/sock_send_length tcp/tcp_rcv_space_adjust sock/inet_sock_set_state tcp/tcp_probe; do \
         [ -d /sys/kernel/tracing/events/$tp ] && echo \"{MARK} tracepoint $tp present\" || echo \"{MARK} tracepoint $tp missing\"; done"
    );
    for t in tests {
        let _ = writeln!(
            s,
            "echo \"{MARK} start {name} $(cut -d' ' -f1 /proc/uptime)\"\n\
             env {env} {path} {args}\n\
             echo \"{MARK} exit {name} $? $(cut -d' ' -f1 /proc/uptime)\"",
            name = t.name,
            env = t.env,
            path = t.path.display(),
            args = t.args
        );
    }
    let _ = writeln!(s, "echo \"{MARK} done\"\npoweroff -f");
    s
}

/// Boots the VM, shows its console, returns its lines; kills it after `timeout`.
fn boot(vmlinuz: &Path, initramfs: &Path, timeout: Duration) -> anyhow::Result<Vec<String>> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "3072"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    println!("$ {}", format!("{cmd:?}").replace('"', ""));
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .context("starting qemu-system-x86_64 (run `cargo xtask setup`)")?;
    let stdout = child.stdout.take().context("qemu's stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = started + timeout;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                println!("vm| {line}");
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    timed_out = true;
                    let _ = child.kill();
                    break;
                }
            }
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    let _ = reader.join();
    println!(
        "vmtest: VM ran {:.1} s ({status})",
        started.elapsed().as_secs_f64()
    );
    if timed_out {
        bail!(
            "the VM did not power off within {} s: killed",
            timeout.as_secs()
        );
    }
    Ok(lines)
}

/// Every test binary reported, exited 0, and its harness said `ok`.
fn judge(lines: &[String], tests: &[TestBinary]) -> anyhow::Result<String> {
    let mut problems = Vec::new();
    let mut report = Vec::new();
    if !lines.iter().any(|l| l.starts_with(&format!("{MARK} done"))) {
        problems.push("the VM's init did not finish".to_string());
    }
    for l in lines {
        if l.starts_with(MARK) && l.contains("FAILED") {
            problems.push(l.clone());
        }
    }
    for t in tests {
        let exit = lines.iter().find_map(|l| {
            l.strip_prefix(&format!("{MARK} exit {} ", t.name))
                .map(str::to_string)
        });
        let Some(exit) = exit else {
            problems.push(format!("{}: did not finish", t.name));
            continue;
        };
        let code = exit.split_whitespace().next().unwrap_or("?");
        if !t.harness {
            if code != "0" {
                problems.push(format!("{}: exit {code}", t.name));
            }
            report.push(format!("{}: exit {code}", t.name));
            continue;
        }
        // The harness's result line of this binary: the first after its start marker.
        let start = lines
            .iter()
            .position(|l| l.starts_with(&format!("{MARK} start {} ", t.name)))
            .unwrap_or(0);
        let result = lines[start..]
            .iter()
            .find(|l| l.starts_with("test result:"))
            .cloned()
            .unwrap_or_else(|| "no result line".into());
        if code != "0" || !result.starts_with("test result: ok.") {
            problems.push(format!("{}: exit {code}, {result}", t.name));
        }
        report.push(format!(
            "{}: {}",
            t.name,
            result.trim_start_matches("test result: ")
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(report.join("; "))
}
