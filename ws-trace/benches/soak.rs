//! `cargo xtask bench soak`: `ws-trace serve` (aggregate mode) on a ws-engine client fed
//! 50 k msg/s for 10 minutes. Every 10 s it samples serve's own CPU (user + system, all
//! threads, from /proc), the BPF run time of serve's programs (their fdinfo), its RSS, its
//! open fds and its BPF maps; it prints one line a minute and, at the end, the figures
//! against the targets: CPU of serve + its BPF ≤ 1 % of one core, RSS within 10 % of its
//! value after the first minute, no growth in fds (attachment links, which
//! `--kernel-duty` closes and opens, left out) or maps.
//!
//! Two more figures say where the time goes. During the first minute the bench itself
//! holds a second copy of the same probes, attached to the same hooks but idle
//! ([`LoadOptions::idle`]: each returns as soon as it has read its configuration): their
//! run time is the floor, what the hooks cost before a probe does anything. At the end it
//! prints serve's per-probe runs and ns per run from its own `/metrics`.
//!
//! `WS_TRACE_SOAK_SECS` (default 600) and `WS_TRACE_SOAK_RATE` (default 50000) change the
//! run, `WS_TRACE_SOAK_DUTY` (default 1) is serve's `--kernel-duty` (its stage probes
//! attached one second in N); `--json FILE` writes the result. Needs root (serve loads the probes).
use std::{
    io::Read as _,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ws_trace::{
    aggregate::AGGREGATE_PROBES,
    probes::{Filter, LoadOptions, Probes},
};

const BIN: &str = env!("CARGO_BIN_EXE_ws-trace");

/// How long the idle copy of the probes stays attached (the warm-up minute).
const FLOOR_SECS: f64 = 55.0;

/// One probe's BPF counters: (probe, run seconds, runs).
type ProbeCounter = (String, f64, f64);

/// serve's per-probe BPF counters from its `/metrics`.
fn probe_counters(api_port: u16) -> Vec<ProbeCounter> {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", api_port)) else {
        return Vec::new();
    };
    let _ = std::io::Write::write_all(
        &mut stream,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let mut out: Vec<ProbeCounter> = Vec::new();
    for line in text.lines() {
        let (name, rest) = match line.split_once('{') {
            Some(x) => x,
            None => continue,
        };
        let is_time = name == "wstrace_bpf_run_seconds_total";
        if !is_time && name != "wstrace_bpf_runs_total" {
            continue;
        }
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(probe) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("probe=\""))
            .map(|p| p.trim_end_matches('"').to_string())
        else {
            continue;
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        let i = match out.iter().position(|(p, _, _)| *p == probe) {
            Some(i) => i,
            None => {
                out.push((probe, 0.0, 0.0));
                out.len() - 1
            }
        };
        if is_time {
            out[i].1 = value;
        } else {
            out[i].2 = value;
        }
    }
    out
}

/// One reading of serve's resources.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    at: f64,
    cpu_s: f64,
    bpf_s: f64,
    bpf_runs: u64,
    rss_kib: u64,
    fds: usize,
    maps: usize,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn sample(pid: u32, t0: Instant, ticks: f64) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let cpu_s = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let mut s = Sample {
        at: t0.elapsed().as_secs_f64(),
        cpu_s,
        rss_kib,
        ..Sample::default()
    };
    let fd_dir = PathBuf::from(format!("/proc/{pid}/fd"));
    for entry in std::fs::read_dir(&fd_dir).ok()?.flatten() {
        let link = std::fs::read_link(entry.path()).unwrap_or_default();
        let link = link.to_string_lossy();
        // Attachment links come and go with --kernel-duty: not a leak, not counted.
        if link == "anon_inode:bpf_link" {
            continue;
        }
        s.fds += 1;
        if link == "anon_inode:bpf-map" {
            s.maps += 1;
        } else if link == "anon_inode:bpf-prog" {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                entry.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            s.bpf_s += field("run_time_ns:") as f64 / 1e9;
            s.bpf_runs += field("run_cnt:");
        }
    }
    Some(s)
}

/// Kills the children on the way out, whatever happens.
struct Reap(Vec<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            // SAFETY: kill(2) on a child we started; at worst it has exited already.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        std::thread::sleep(Duration::from_millis(500));
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let json = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let secs = env_num("WS_TRACE_SOAK_SECS", 600);
    let rate = env_num("WS_TRACE_SOAK_RATE", 50_000);
    let duty = env_num("WS_TRACE_SOAK_DUTY", 1);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("soak: needs root (serve loads the probes): run with sudo");
        std::process::exit(1);
    }
    let feed_port = free_port()?;
    let api_port = free_port()?;
    let mut reap = Reap(Vec::new());
    let quiet = || Stdio::null();
    reap.0.push(
        Command::new(BIN)
            .args(["feed", "--listen", &format!("127.0.0.1:{feed_port}")])
            .args(["--rate", &rate.to_string(), "--size", "64"])
            .args(["--duration", &(secs + 30).to_string()])
            .stdout(quiet())
            .stderr(quiet())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let client = Command::new(BIN)
        .args(["demo-client", &format!("ws://127.0.0.1:{feed_port}/feed")])
        .stdout(quiet())
        .stderr(quiet())
        .spawn()?;
    let client_pid = client.id();
    reap.0.push(client);
    let captures = tempfile_dir()?;
    let serve = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{api_port}")])
        .args(["--pid", &client_pid.to_string()])
        .args(["--kernel-duty", &duty.to_string()])
        .arg("--capture-dir")
        .arg(&captures)
        .stdout(quiet())
        .stderr(Stdio::piped())
        .spawn()?;
    let serve_pid = serve.id();
    reap.0.push(serve);
    let ticks = clock_ticks();
    let t0 = Instant::now();
    // The floor: the same hooks, idle programs, in this process, during the warm-up.
    let mut idle = Probes::load(&LoadOptions {
        filter: Filter::process(client_pid),
        aggregate: true,
        idle: true,
        ..LoadOptions::default()
    })
    .map_err(std::io::Error::other)?;
    idle.attach_all(&AGGREGATE_PROBES)
        .map_err(std::io::Error::other)?;
    let mut idle = Some(idle);
    let own_pid = std::process::id();
    let floor_start = sample(own_pid, t0, ticks).unwrap_or_default();
    let mut floor: Option<(f64, f64)> = None;
    println!(
        "soak: serve (pid {serve_pid}, aggregate mode, --kernel-duty {duty}) on a ws-engine client (pid {client_pid}) fed {rate} msg/s of 64 B for {secs} s"
    );
    println!(
        "{:>6} {:>9} {:>9} {:>9} {:>9} {:>5} {:>5} {:>12}",
        "t (s)", "cpu %", "bpf %", "total %", "rss MiB", "fds", "maps", "bpf runs/s"
    );
    let mut samples: Vec<Sample> = Vec::new();
    let mut probes_base: Option<(f64, Vec<ProbeCounter>)> = None;
    let mut last_print = 0.0;
    let deadline = Duration::from_secs(secs);
    while t0.elapsed() < deadline {
        std::thread::sleep(Duration::from_secs(10).min(deadline.saturating_sub(t0.elapsed())));
        let Some(s) = sample(serve_pid, t0, ticks) else {
            let mut err = String::new();
            if let Some(c) = reap.0.last_mut()
                && let Some(e) = c.stderr.as_mut()
            {
                let _ = e.read_to_string(&mut err);
            }
            eprintln!(
                "soak: serve is gone after {:.0} s: {err}",
                t0.elapsed().as_secs_f64()
            );
            std::process::exit(1);
        };
        samples.push(s);
        if probes_base.is_none() && s.at >= 60.0 {
            probes_base = Some((s.at, probe_counters(api_port)));
        }
        if idle.is_some() && s.at >= FLOOR_SECS {
            let end = sample(own_pid, t0, ticks).unwrap_or_default();
            let dt = end.at - floor_start.at;
            floor = Some((
                100.0 * (end.bpf_s - floor_start.bpf_s) / dt,
                (end.bpf_runs - floor_start.bpf_runs) as f64 / dt,
            ));
            idle = None;
            if let Some((pct, runs)) = floor {
                println!(
                    "floor: the same hooks with idle programs: {pct:.3} % of a core, {runs:.0} runs/s (detached)"
                );
            }
        }
        if s.at - last_print >= 59.0 || t0.elapsed() >= deadline {
            let prev = samples
                .iter()
                .rev()
                .find(|p| s.at - p.at >= 55.0)
                .copied()
                .unwrap_or_default();
            let dt = s.at - prev.at;
            let cpu = 100.0 * (s.cpu_s - prev.cpu_s) / dt;
            let bpf = 100.0 * (s.bpf_s - prev.bpf_s) / dt;
            println!(
                "{:>6.0} {:>9.3} {:>9.3} {:>9.3} {:>9.1} {:>5} {:>5} {:>12.0}",
                s.at,
                cpu,
                bpf,
                cpu + bpf,
                s.rss_kib as f64 / 1024.0,
                s.fds,
                s.maps,
                (s.bpf_runs - prev.bpf_runs) as f64 / dt
            );
            last_print = s.at;
        }
    }
    let Some(last) = samples.last().copied() else {
        eprintln!("soak: no samples");
        std::process::exit(1);
    };
    // The first minute is warm-up (maps filled, histograms touched, allocator settled).
    let base = samples
        .iter()
        .find(|s| s.at >= 60.0)
        .copied()
        .unwrap_or(samples[0]);
    let total_pct = 100.0 * (last.cpu_s + last.bpf_s) / last.at;
    let steady_pct = if last.at > base.at {
        100.0 * ((last.cpu_s - base.cpu_s) + (last.bpf_s - base.bpf_s)) / (last.at - base.at)
    } else {
        total_pct
    };
    let rss_growth = 100.0 * (last.rss_kib as f64 - base.rss_kib as f64) / base.rss_kib as f64;
    let max_rss = samples
        .iter()
        .filter(|s| s.at >= base.at)
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(0);
    let (fds_grew, maps_grew) = (last.fds > base.fds, last.maps > base.maps);
    let probes_end = probe_counters(api_port);
    if let Some((at, base)) = &probes_base {
        let dt = last.at - at;
        println!("\nserve's probes after the first minute (its /metrics):");
        println!(
            "  {:<20} {:>9} {:>12} {:>9}",
            "probe", "bpf %", "runs/s", "ns/run"
        );
        let mut rows: Vec<ProbeCounter> = probes_end
            .iter()
            .map(|(p, t, n)| {
                let (t0, n0) = base
                    .iter()
                    .find(|(q, _, _)| q == p)
                    .map_or((0.0, 0.0), |(_, t, n)| (*t, *n));
                (p.clone(), t - t0, n - n0)
            })
            .filter(|(_, _, n)| *n > 0.0)
            .collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (p, t, n) in rows {
            println!(
                "  {:<20} {:>9.3} {:>12.0} {:>9.0}",
                p,
                100.0 * t / dt,
                n / dt,
                1e9 * t / n
            );
        }
    }
    println!(
        "\nsoak: serve + its BPF used {steady_pct:.3} % of one core after the first minute ({total_pct:.3} % over the whole run; target ≤ 1 %)"
    );
    if let Some((pct, runs)) = floor {
        println!(
            "soak: the hooks alone (idle programs on the same hooks, attached through the first minute): {pct:.3} % ({runs:.0} runs/s): the floor of any probe kept on them"
        );
    }
    println!(
        "soak: RSS {:.1} MiB after the first minute, {:.1} MiB at the end ({rss_growth:+.1} %, max {:.1} MiB; target within 10 %)",
        base.rss_kib as f64 / 1024.0,
        last.rss_kib as f64 / 1024.0,
        max_rss as f64 / 1024.0
    );
    println!(
        "soak: fds {} → {}, BPF maps {} → {} (target: no growth)",
        base.fds, last.fds, base.maps, last.maps
    );
    let met = steady_pct <= 1.0 && rss_growth.abs() <= 10.0 && !fds_grew && !maps_grew;
    println!(
        "soak: {}",
        if met {
            "all targets met"
        } else {
            "TARGETS MISSED"
        }
    );
    if let Some(path) = json {
        let v = serde_json::json!({
            "seconds": last.at,
            "rate": rate,
            "kernel_duty": duty,
            "cpu_pct_steady": steady_pct,
            "cpu_pct_total": total_pct,
            "serve_cpu_s": last.cpu_s,
            "bpf_s": last.bpf_s,
            "rss_kib_base": base.rss_kib,
            "rss_kib_end": last.rss_kib,
            "rss_growth_pct": rss_growth,
            "fds": [base.fds, last.fds],
            "maps": [base.maps, last.maps],
            "targets_met": met,
            "floor_bpf_pct": floor.map(|f| f.0),
            "floor_runs_per_s": floor.map(|f| f.1),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&v)?)?;
    }
    drop(reap);
    let _ = std::fs::remove_dir_all(&captures);
    Ok(())
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ws-trace-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
