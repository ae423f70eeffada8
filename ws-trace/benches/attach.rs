//! `cargo xtask bench attach`: what tracing costs a ws-engine client.
//!
//! One process: a feed server thread blasts pre-encoded 64-byte messages over loopback, a
//! ws-engine client thread consumes them, and the main thread (when tracing) drains the
//! probes' ring and the engine's stamp channel. Each round runs the client in five modes,
//! in a rotating order so all see the same machine: untraced without a stamp channel,
//! untraced (the default engine, channel idle), traced by the kernel probes only, full
//! (every kernel probe plus every message's record through the stamp channel), and the
//! kernel probes plus the engine uprobes (`--engine-uprobes`), and aggregate mode (`serve`'s:
//! the probes keep per-stage histograms in the kernel, nothing crosses the ring, the
//! engine's records are drained into histograms and the kernel's are read once at the end of
//! the run, as a scrape would). Costs are ratios of the
//! median throughputs against the default untraced engine; the channel's untraced cost is
//! also measured in isolation (the hook called in a loop). The kernel's own BPF statistics
//! give the run time per program run.
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

use ws_engine::channel::StampChannel;
use ws_engine::{
    ConnConfig, ConnCtx, EventLoop, Handler, LoopConfig, Message,
    server::{Feed, FeedServer},
};
use ws_trace::aggregate::Aggregator;
use ws_trace::attach::{EngineRecords, Plan, Session, Summary};

struct Count(u64);

impl Handler for Count {
    fn on_message(&mut self, _conn: &mut ConnCtx<'_>, _msg: Message<'_>) {
        self.0 += 1;
    }
}

/// CPU time of the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One run's result: messages/s seen by the client and its thread's CPU ns per message.
struct Run {
    rate: f64,
    client_ns: f64,
}

/// One run: messages/s seen by the client. `channel`: the loop has its stamp channel.
/// `connected` runs once the connection is up, before the clock starts (a traced run
/// finds the loop's ring then).
fn run_client(
    messages: usize,
    size: usize,
    channel: bool,
    connected: impl FnOnce(),
) -> Result<Run, String> {
    let server = FeedServer::start(Feed {
        count: messages,
        size,
        gap: Duration::ZERO,
        payload: Default::default(),
    })
    .map_err(|e| e.to_string())?;
    let cfg = LoopConfig {
        stamp_channel_capacity: if channel {
            LoopConfig::default().stamp_channel_capacity
        } else {
            0
        },
        ..LoopConfig::default()
    };
    let mut el = EventLoop::new(cfg).map_err(|e| e.to_string())?;
    el.connect(server.url(), &ConnConfig::default())
        .map_err(|e| e.to_string())?;
    connected();
    let mut count = Count(0);
    let start = Instant::now();
    let cpu = thread_cpu_ns();
    el.run(&mut count).map_err(|e| e.to_string())?;
    let cpu = thread_cpu_ns() - cpu;
    let took = start.elapsed().as_secs_f64();
    server.join().map_err(|e| e.to_string())?;
    if count.0 != messages as u64 {
        return Err(format!("received {} of {messages} messages", count.0));
    }
    Ok(Run {
        rate: messages as f64 / took,
        client_ns: cpu as f64 / messages as f64,
    })
}

/// ns per call of the stamp channel hook while no tracer holds the ring (the loop's own
/// cost included: an upper bound), and of the same loop without the hook: the engine's
/// untraced cost of having the channel, in isolation.
fn hook_ns() -> Result<(f64, f64), String> {
    let mut chan = StampChannel::create(1024).map_err(|e| e.to_string())?;
    let probe = ws_abi::MsgProbe::default();
    let clock = *ws_engine::clock::Clock::global();
    let n = 200_000_000u64;
    let t = Instant::now();
    for i in 0..n {
        chan.publish_raw(
            std::hint::black_box(&probe),
            &clock,
            i,
            std::hint::black_box(i),
        );
    }
    let with = t.elapsed().as_secs_f64() * 1e9 / n as f64;
    let t = Instant::now();
    for i in 0..n {
        std::hint::black_box(&probe);
        std::hint::black_box(i);
    }
    let without = t.elapsed().as_secs_f64() * 1e9 / n as f64;
    Ok((with, without))
}

/// ns per record the engine spends publishing while a tracer holds the ring (no reader
/// running here: the write itself).
fn traced_publish_ns() -> Result<f64, String> {
    publish_ns(0)
}

/// ns per message the engine spends on the stamp channel while a tracer holds it and asks
/// for one message in `1 << sample_shift` (aggregate mode's sample; 0: every message;
/// `u32::MAX`: no tracer, the loop's own cost).
fn publish_ns(sample_shift: u32) -> Result<f64, String> {
    let mut chan = StampChannel::create(1 << 16).map_err(|e| e.to_string())?;
    let path = format!("/proc/self/fd/{}", {
        use std::os::fd::AsRawFd as _;
        chan.fd().as_raw_fd()
    });
    let reader = ws_trace::channel::ChannelReader::open(std::path::Path::new(&path), chan.name())
        .map_err(|e| e.to_string())?
        .ok_or("channel not ready")?;
    // u32::MAX: the same loop with no tracer holding the ring (its baseline).
    if sample_shift == u32::MAX {
        drop(reader);
    } else {
        reader.set_sample_shift(sample_shift);
    }
    // The engine's probe holds raw stamps; they are converted as the record is written.
    let clock = *ws_engine::clock::Clock::global();
    let now = clock.raw();
    let probe = ws_abi::MsgProbe {
        stamps: ws_abi::MsgStamps {
            event_ns: now,
            recv_start_ns: now,
            recv_end_ns: now,
            decrypt_start_ns: 0,
            parsed_ns: now,
            callback_ns: now,
        },
        ..ws_abi::MsgProbe::default()
    };
    let n = 5_000_000u64;
    let t = Instant::now();
    let mut probe = probe;
    for i in 0..n {
        probe.msg_seq = i;
        chan.publish_raw(std::hint::black_box(&probe), &clock, now, now + i % 1000);
        // The engine makes a read's records visible with one store per read.
        if i % 16 == 15 {
            chan.flush();
        }
    }
    Ok(t.elapsed().as_secs_f64() * 1e9 / n as f64)
}

/// A traced round's session: full (a ring of events) or aggregate (histograms).
enum Traced {
    Full(Box<Session>),
    Aggregate(Box<Aggregator>),
}

impl Traced {
    fn scan(&mut self) -> Result<(), String> {
        match self {
            Traced::Full(s) => s.scan_channels_now(),
            Traced::Aggregate(a) => a.session_mut().scan_channels_now(),
        }
        .map_err(|e| e.to_string())
    }

    fn pump(&mut self, timeout: Duration) -> Result<(), String> {
        match self {
            Traced::Full(s) => s
                .pump(timeout, |_, _| {})
                .map(drop)
                .map_err(|e| e.to_string()),
            Traced::Aggregate(a) => a.pump(timeout).map(drop).map_err(|e| e.to_string()),
        }
    }

    /// The session's summary and what it saw: events through the ring, or (aggregate) the
    /// histograms read once, as a scrape would, with the ring's count.
    fn finish(&mut self) -> Result<(Summary, String), String> {
        match self {
            Traced::Full(s) => {
                let summary = s.summary().map_err(|e| e.to_string())?;
                let events: u64 = summary.probes.iter().map(|p| p.events).sum();
                Ok((summary, format!("{events} events")))
            }
            Traced::Aggregate(a) => {
                let snapshot = a.snapshot().map_err(|e| e.to_string())?;
                let c = a.counters().map_err(|e| e.to_string())?;
                let summary = a.summary().map_err(|e| e.to_string())?;
                Ok((
                    summary,
                    format!(
                        "{} ring events; {} reads in the kernel's histograms, {} engine messages, total p50 {} ns",
                        c.ring_events,
                        snapshot.total.count(),
                        c.engine_messages,
                        snapshot.total.quantile(0.5)
                    ),
                ))
            }
        }
    }
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

/// What a round runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// An engine without a stamp channel, untraced.
    NoChannel,
    /// The default engine (with its channel), untraced.
    Untraced,
    /// Kernel probes only (the engine's records not taken).
    Kernel,
    /// Full: every kernel probe plus every message's record through the stamp channel.
    Full,
    /// Every kernel probe plus the engine's records through its uprobes
    /// (`--engine-uprobes`).
    Uprobes,
    /// Aggregate mode: in-kernel stage histograms, engine records into histograms.
    Aggregate,
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode::NoChannel,
        Mode::Untraced,
        Mode::Kernel,
        Mode::Full,
        Mode::Uprobes,
        Mode::Aggregate,
    ];

    fn label(self) -> &'static str {
        match self {
            Mode::NoChannel => "untraced, no channel",
            Mode::Untraced => "untraced",
            Mode::Kernel => "traced, kernel only",
            Mode::Full => "traced, full",
            Mode::Uprobes => "traced, engine uprobes",
            Mode::Aggregate => "traced, aggregate",
        }
    }
}

fn main() -> Result<(), String> {
    let args = args()?;
    println!("{}", ws_engine::clock::bench_header("attach"));
    ws_trace::privileges::require_tracing().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let size = 64;
    let mut rates: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    // CPU ns per message of the client's thread and of the tracer's (this) thread.
    let mut client_cpu: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut tracer_cpu: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut bpf: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut bpf_aggregate: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut drops = 0;
    let mut channel_records = 0;
    println!(
        "attach cost: {} x {size} B messages per run, {} rounds (modes rotate)",
        args.messages, args.rounds
    );
    for round in 0..args.rounds {
        for i in 0..Mode::ALL.len() {
            let mode = Mode::ALL[(i + round) % Mode::ALL.len()];
            if matches!(mode, Mode::NoChannel | Mode::Untraced) {
                let run = run_client(args.messages, size, mode == Mode::Untraced, || {})?;
                println!(
                    "  round {round} {:<22} {:>10.0} msg/s, client {:.0} CPU ns/msg",
                    mode.label(),
                    run.rate,
                    run.client_ns
                );
                rates.entry(mode.label()).or_default().push(run.rate);
                client_cpu
                    .entry(mode.label())
                    .or_default()
                    .push(run.client_ns);
                continue;
            }
            let plan = Plan {
                engine_records: if mode == Mode::Full {
                    EngineRecords::Channel
                } else {
                    EngineRecords::Uprobes
                },
                ..Plan::process(
                    std::process::id(),
                    if mode == Mode::Uprobes {
                        vec![exe.clone()]
                    } else {
                        Vec::new()
                    },
                )
            };
            let mut session = if mode == Mode::Aggregate {
                Traced::Aggregate(Box::new(
                    Aggregator::start(&Aggregator::plan(std::process::id()))
                        .map_err(|e| e.to_string())?,
                ))
            } else {
                Traced::Full(Box::new(Session::start(&plan).map_err(|e| e.to_string())?))
            };
            let done = Arc::new(AtomicBool::new(false));
            let (connected_tx, connected_rx) = std::sync::mpsc::channel::<()>();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let client = {
                let done = done.clone();
                let messages = args.messages;
                std::thread::spawn(move || {
                    let r = run_client(messages, size, true, || {
                        let _ = connected_tx.send(());
                        let _ = go_rx.recv();
                    });
                    done.store(true, Ordering::Release);
                    r
                })
            };
            // The client's loop exists now: find its ring before the clock starts.
            let _ = connected_rx.recv();
            session.scan()?;
            let _ = go_tx.send(());
            let tracer_cpu0 = thread_cpu_ns();
            while !done.load(Ordering::Acquire) {
                session.pump(Duration::from_millis(10))?;
            }
            let run = client.join().map_err(|_| "client thread panicked")??;
            session.pump(Duration::ZERO)?;
            let tracer_ns = (thread_cpu_ns() - tracer_cpu0) as f64 / args.messages as f64;
            let rate = run.rate;
            client_cpu
                .entry(mode.label())
                .or_default()
                .push(run.client_ns);
            tracer_cpu.entry(mode.label()).or_default().push(tracer_ns);
            let (summary, events) = session.finish()?;
            drops += summary.total_drops();
            if let Some(c) = summary.channel {
                channel_records += c.records;
            }
            println!(
                "  round {round} {:<22} {rate:>10.0} msg/s, client {:.0}, tracer {tracer_ns:.0} CPU ns/msg ({events})",
                mode.label(),
                run.client_ns
            );
            let bpf = if mode == Mode::Aggregate {
                &mut bpf_aggregate
            } else {
                &mut bpf
            };
            rates.entry(mode.label()).or_default().push(rate);
            for p in &summary.probes {
                if let Some(ns) = p.bpf_ns_per_run {
                    bpf.entry(p.probe).or_default().push(ns);
                }
            }
        }
    }
    // Paired: each round's aggregate run against the same round's untraced and kernel-only
    // runs (adjacent in time, so the machine's slower drifts cancel), median over rounds.
    let paired = |against: Mode| {
        let (Some(a), Some(b)) = (
            rates.get(Mode::Aggregate.label()),
            rates.get(against.label()),
        ) else {
            return 0.0;
        };
        let mut v: Vec<f64> = a
            .iter()
            .zip(b)
            .map(|(a, b)| (1.0 - a / b) * 100.0)
            .collect();
        median(&mut v)
    };
    let aggregate_paired = paired(Mode::Untraced);
    let aggregate_vs_kernel = paired(Mode::Kernel);
    let mut med = |m: Mode| rates.get_mut(m.label()).map_or(0.0, |v| median(v));
    let no_channel = med(Mode::NoChannel);
    let off = med(Mode::Untraced);
    let kernel_only = med(Mode::Kernel);
    let on = med(Mode::Full);
    let uprobes = med(Mode::Uprobes);
    let aggregate = med(Mode::Aggregate);
    let cost = |r: f64| (1.0 - r / off) * 100.0;
    let channel_ns = (1.0 / off - 1.0 / no_channel) * 1e9;
    println!(
        "median msg/s: untraced {off:.0} (no channel {no_channel:.0}: the channel costs {channel_ns:+.2} ns/msg untraced), kernel probes only {kernel_only:.0} (cost {:.1}%), full {on:.0} (cost {:.1}%), engine uprobes {uprobes:.0} (cost {:.1}%), aggregate {aggregate:.0} (cost {:.1}%)",
        cost(kernel_only),
        cost(on),
        cost(uprobes),
        cost(aggregate)
    );
    println!(
        "aggregate, paired by round: {aggregate_paired:.1}% against untraced, {aggregate_vs_kernel:.1}% against kernel probes only"
    );
    // Throughput on 2 vCPUs moves with whoever else runs; the CPU each side spends per
    // message does much less.
    println!("median CPU ns per message (client thread; tracer thread while it drained):");
    let mut cpu_json = serde_json::Map::new();
    for m in Mode::ALL {
        let client = client_cpu.get_mut(m.label()).map_or(0.0, |v| median(v));
        let tracer = tracer_cpu.get_mut(m.label()).map(|v| median(v));
        match tracer {
            Some(t) => println!("  {:<22} client {client:>6.1}  tracer {t:>6.1}", m.label()),
            None => println!("  {:<22} client {client:>6.1}", m.label()),
        }
        cpu_json.insert(
            m.label().to_string(),
            serde_json::json!({
                "client": (client * 10.0).round() / 10.0,
                "tracer": tracer.map(|t| (t * 10.0).round() / 10.0),
            }),
        );
    }
    let (hook, empty) = hook_ns()?;
    println!(
        "stamp channel hook, no tracer: {hook:.2} ns per call vs {empty:.2} ns for an empty loop ({:+.2} ns)",
        hook - empty
    );
    let traced = traced_publish_ns()?;
    println!("stamp channel, tracer attached: {traced:.1} ns per published record (engine side)");
    let sampled = publish_ns(9)?;
    let unleased = publish_ns(u32::MAX)?;
    println!(
        "stamp channel, sampling tracer (1 in 512, aggregate mode at a blast): {sampled:.2} ns per message (engine side; the same loop without a tracer: {unleased:.2} ns)"
    );
    println!("engine records through the channel in full runs: {channel_records}");
    if drops > 0 {
        println!("note: {drops} events were dropped (ring or stamp channel full) in traced runs");
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
    println!("BPF run time per program run in aggregate mode (median of rounds):");
    let mut per_program_aggregate = serde_json::Map::new();
    for (name, mut v) in bpf_aggregate {
        let ns = median(&mut v);
        println!("  {name:<18} {ns:>8.0} ns");
        per_program_aggregate.insert(
            name.to_string(),
            serde_json::json!((ns * 10.0).round() / 10.0),
        );
    }
    if let Some(path) = args.json {
        let r1 = |v: f64| (v * 10.0).round() / 10.0;
        let doc = serde_json::json!({
            "throughput_cost_pct": r1(cost(on)),
            "kernel_only_cost_pct": r1(cost(kernel_only)),
            "engine_uprobes_cost_pct": r1(cost(uprobes)),
            "aggregate_cost_pct": r1(cost(aggregate)),
            "aggregate_cost_paired_pct": r1(aggregate_paired),
            "aggregate_vs_kernel_only_paired_pct": r1(aggregate_vs_kernel),
            "bpf_ns_per_run_aggregate": per_program_aggregate,
            "channel_untraced_ns_per_msg": (channel_ns * 100.0).round() / 100.0,
            "channel_hook_ns": ((hook - empty) * 100.0).round() / 100.0,
            "channel_publish_traced_ns": r1(traced),
            "channel_sampled_1_in_512_ns_per_msg": ((sampled - unleased) * 100.0).round() / 100.0,
            "bpf_ns_per_event": per_program,
            "cpu_ns_per_msg": cpu_json,
        });
        std::fs::write(&path, doc.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
