//! `cargo xtask bench profile`: what `ws-trace profile` costs a busy process.
//!
//! One process: a worker thread spins on a fixed unit of work and counts units; the main
//! thread measures units per second over windows of `--secs`, alternating untraced windows
//! with windows during which the process is profiled (the library's `profile::run`, the
//! same session `ws-trace profile --pid` runs, at `--freq` Hz on every CPU, tgid-filtered
//! to this process). Reported: the median throughput change, the kernel's own run time
//! per sample of the perf-event program (BPF stats) and what that is as a share of one
//! core, and the read-out + symbolization time at the end of a session.
//!
//! Options: `--rounds R` (default 5), `--secs S` (default 2), `--freq HZ` (default 99),
//! `--json FILE`.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ws_trace::{
    profile::{self, ProfileOptions},
    target::Target,
};

/// One unit of work: a xorshift chain the compiler cannot shorten.
#[inline(never)]
fn bench_profile_unit(mut x: u64) -> u64 {
    for _ in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

struct Args {
    rounds: usize,
    secs: f64,
    freq: u64,
    json: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        rounds: 5,
        secs: 2.0,
        freq: 99,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--rounds" => a.rounds = value()?.parse().map_err(|e| format!("{e}"))?,
            "--secs" => a.secs = value()?.parse().map_err(|e| format!("{e}"))?,
            "--freq" => a.freq = value()?.parse().map_err(|e| format!("{e}"))?,
            "--json" => a.json = Some(PathBuf::from(value()?)),
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (run time, run count) of the loaded program whose name starts like `name`.
fn bpf_stats(name: &str) -> Option<(Duration, u64)> {
    let short: String = name.chars().take(15).collect();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.name_as_str() == Some(short.as_str()))
        .map(|p| (p.run_time(), p.run_count()))
}

fn main() -> Result<(), String> {
    let args = args()?;
    println!("{}", ws_engine::clock::bench_header("profile"));
    ws_trace::privileges::require_tracing().map_err(|e| e.to_string())?;
    let window = Duration::from_secs_f64(args.secs);
    // Keeps the kernel's per-program run time statistics on while it is held.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| format!("enabling BPF run-time stats: {e}"))?;

    let units = Arc::new(AtomicU64::new(0));
    let quit = Arc::new(AtomicBool::new(false));
    let worker = {
        let units = units.clone();
        let quit = quit.clone();
        std::thread::spawn(move || {
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            while !quit.load(Ordering::Relaxed) {
                x = bench_profile_unit(x);
                units.fetch_add(1, Ordering::Relaxed);
            }
            x
        })
    };
    let measure = || {
        let start = (Instant::now(), units.load(Ordering::Relaxed));
        std::thread::sleep(window);
        let done = units.load(Ordering::Relaxed) - start.1;
        done as f64 / start.0.elapsed().as_secs_f64()
    };
    // Warm up (frequency scaling, page faults).
    measure();

    let pid = std::process::id();
    let mut base = Vec::new();
    let mut profiled = Vec::new();
    let mut per_sample_ns = Vec::new();
    let mut samples = Vec::new();
    let mut symbolize_ms = Vec::new();
    let mut hit_rate = 0.0;
    eprintln!(
        "bench profile: {} rounds of {:.1} s windows, untraced vs profiled at {} Hz",
        args.rounds, args.secs, args.freq
    );
    for round in 0..args.rounds {
        let b = measure();
        let stop = AtomicBool::new(false);
        let opts = ProfileOptions {
            freq: args.freq,
            // A little longer than the window, so the window sees only steady sampling.
            duration: Some(window + Duration::from_millis(700)),
            off_cpu: false,
            series: None,
        };
        let (p, raw) = std::thread::scope(|s| {
            let session = s.spawn(|| {
                let mut target = Target::pid(pid).expect("the profiled process");
                profile::run(&opts, &mut target, &stop)
            });
            std::thread::sleep(Duration::from_millis(300));
            let before = bpf_stats(profile::session::SAMPLE_PROGRAM);
            let p = measure();
            let after = bpf_stats(profile::session::SAMPLE_PROGRAM);
            if let (Some(a), Some(b)) = (before, after)
                && b.1 > a.1
            {
                per_sample_ns.push((b.0 - a.0).as_nanos() as f64 / (b.1 - a.1) as f64);
            }
            (p, session.join())
        });
        let raw = raw
            .map_err(|_| "profiling thread panicked".to_string())?
            .map_err(|e| e.to_string())?;
        let t = Instant::now();
        let prof = profile::symbolize(&raw);
        symbolize_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        samples.push(prof.samples() as f64);
        hit_rate = prof.stats.user_hit_rate();
        base.push(b);
        profiled.push(p);
        eprintln!(
            "round {round}: untraced {b:.0} units/s, profiled {p:.0} units/s ({:+.2}%), {} samples",
            (p / b - 1.0) * 100.0,
            prof.samples()
        );
    }
    quit.store(true, Ordering::Relaxed);
    let _ = worker.join();

    let cpus = aya::util::online_cpus().map_or(1, |c| c.len()) as f64;
    let b = median(&mut base);
    let p = median(&mut profiled);
    let slowdown_pct = (1.0 - p / b) * 100.0;
    let ns = if per_sample_ns.is_empty() {
        f64::NAN
    } else {
        median(&mut per_sample_ns)
    };
    // Every CPU takes `freq` samples a second (the filter runs before the stack walk).
    let bpf_core_pct = ns * args.freq as f64 * cpus / 1e9 * 100.0;
    let samples = median(&mut samples);
    let sym_ms = median(&mut symbolize_ms);
    println!(
        "untraced        {b:>12.0} units/s (median of {})",
        args.rounds
    );
    println!("profiled        {p:>12.0} units/s");
    println!(
        "throughput cost {slowdown_pct:>11.2} % (median vs median; noise on a shared VM is ~1%)"
    );
    println!(
        "BPF per sample  {ns:>11.0} ns (kernel stats, perf-event program incl. 2 stack walks)"
    );
    println!(
        "BPF CPU         {bpf_core_pct:>11.3} % of one core ({} Hz x {cpus} CPUs)",
        args.freq
    );
    println!("samples/session {samples:>12.0}");
    println!("read-out+symbolize {sym_ms:>8.1} ms per session");
    println!("user-frame symbol hit rate {:.0}%", hit_rate * 100.0);
    if let Some(path) = args.json {
        let doc = serde_json::json!({
            "freq_hz": args.freq,
            "rounds": args.rounds,
            "window_s": args.secs,
            "untraced_units_per_s": b,
            "profiled_units_per_s": p,
            "throughput_cost_pct": slowdown_pct,
            "bpf_ns_per_sample": ns,
            "bpf_cpu_pct_of_core": bpf_core_pct,
            "samples_per_session": samples,
            "symbolize_ms": sym_ms,
            "user_symbol_hit_rate": hit_rate,
        });
        std::fs::write(&path, format!("{doc:#}\n")).map_err(|e| e.to_string())?;
    }
    Ok(())
}
