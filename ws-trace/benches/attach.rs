//! `cargo xtask bench attach`: what tracing costs a ws-engine client.
//!
//! One process: a feed server thread blasts pre-encoded 64-byte messages over loopback, a
//! ws-engine client thread consumes them, and the main thread (when tracing) drains the
//! probes' ring. Each round runs the client untraced, traced by the kernel probes only, and
//! traced by everything (kernel probes plus the per-message callback uprobe/uretprobe), in
//! a rotating order, so all three see the same machine; costs are ratios of the median
//! throughputs. The kernel's own BPF statistics give the run time per program run.
//!
//! Options: `--messages N` (default 200000), `--rounds R` (default 5), `--json FILE`.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ws_engine::{
    ConnConfig, ConnCtx, EventLoop, Handler, LoopConfig, Message,
    server::{Feed, FeedServer},
};
use ws_trace::attach::{Plan, Session};

struct Count(u64);

impl Handler for Count {
    fn on_message(&mut self, _conn: &mut ConnCtx<'_>, _msg: Message<'_>) {
        self.0 += 1;
    }
}

/// One run: messages/s seen by the client.
fn run_client(messages: usize, size: usize) -> Result<f64, String> {
    let server = FeedServer::start(Feed {
        count: messages,
        size,
        gap: Duration::ZERO,
        payload: Default::default(),
    })
    .map_err(|e| e.to_string())?;
    let mut el = EventLoop::new(LoopConfig::default()).map_err(|e| e.to_string())?;
    el.connect(server.url(), &ConnConfig::default())
        .map_err(|e| e.to_string())?;
    let mut count = Count(0);
    let start = Instant::now();
    el.run(&mut count).map_err(|e| e.to_string())?;
    let took = start.elapsed().as_secs_f64();
    server.join().map_err(|e| e.to_string())?;
    if count.0 != messages as u64 {
        return Err(format!("received {} of {messages} messages", count.0));
    }
    Ok(messages as f64 / took)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Args {
    messages: usize,
    rounds: usize,
    json: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        messages: 200_000,
        rounds: 5,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--messages" => a.messages = value()?.parse().map_err(|e| format!("{e}"))?,
            "--rounds" => a.rounds = value()?.parse().map_err(|e| format!("{e}"))?,
            "--json" => a.json = Some(PathBuf::from(value()?)),
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn main() -> Result<(), String> {
    let args = args()?;
    ws_trace::privileges::require_tracing().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let size = 64;
    let mut off = Vec::new();
    let mut on = Vec::new();
    let mut bpf: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut drops = 0;
    println!(
        "attach cost: {} x {size} B messages per run, {} rounds (untraced/traced alternating)",
        args.messages, args.rounds
    );
    let mut kernel_only = Vec::new();
    for round in 0..args.rounds {
        for mode in 0..3 {
            let mode = (mode + round) % 3;
            if mode == 0 {
                let rate = run_client(args.messages, size)?;
                println!("  round {round} untraced           {rate:>10.0} msg/s");
                off.push(rate);
                continue;
            }
            let uprobes = mode == 2;
            let binaries = if uprobes {
                vec![exe.clone()]
            } else {
                Vec::new()
            };
            let mut session = Session::start(&Plan::process(std::process::id(), binaries))
                .map_err(|e| e.to_string())?;
            let done = Arc::new(AtomicBool::new(false));
            let client = {
                let done = done.clone();
                let messages = args.messages;
                std::thread::spawn(move || {
                    let r = run_client(messages, size);
                    done.store(true, Ordering::Release);
                    r
                })
            };
            let mut events = 0u64;
            while !done.load(Ordering::Acquire) {
                session
                    .pump(Duration::from_millis(10), |_, _| events += 1)
                    .map_err(|e| e.to_string())?;
            }
            session
                .pump(Duration::ZERO, |_, _| events += 1)
                .map_err(|e| e.to_string())?;
            let rate = client.join().map_err(|_| "client thread panicked")??;
            let summary = session.summary().map_err(|e| e.to_string())?;
            drops += summary.total_drops();
            let label = if uprobes {
                "traced, all probes"
            } else {
                "traced, kernel only"
            };
            println!("  round {round} {label:<18} {rate:>10.0} msg/s ({events} events)");
            if uprobes {
                on.push(rate);
            } else {
                kernel_only.push(rate);
            }
            for p in &summary.probes {
                if let Some(ns) = p.bpf_ns_per_run {
                    bpf.entry(p.probe).or_default().push(ns);
                }
            }
        }
    }
    let kernel_only = median(&mut kernel_only);
    let (off, on) = (median(&mut off), median(&mut on));
    let cost = (1.0 - on / off) * 100.0;
    let kernel_cost = (1.0 - kernel_only / off) * 100.0;
    println!(
        "median msg/s: untraced {off:.0}, kernel probes only {kernel_only:.0} (cost {kernel_cost:.1}%), all probes {on:.0} (cost {cost:.1}%)"
    );
    if drops > 0 {
        println!("note: {drops} events were dropped (ring full) in traced runs");
    }
    println!("BPF run time per program run (kernel stats, median of rounds):");
    let mut per_program = serde_json::Map::new();
    for (name, mut v) in bpf {
        let ns = median(&mut v);
        println!("  {name:<18} {ns:>8.0} ns");
        per_program.insert(
            name.to_string(),
            serde_json::json!((ns * 10.0).round() / 10.0),
        );
    }
    if let Some(path) = args.json {
        let doc = serde_json::json!({
            "throughput_cost_pct": (cost * 10.0).round() / 10.0,
            "bpf_ns_per_event": per_program,
        });
        std::fs::write(&path, doc.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
