//! Cost of the profiler's hot path.
//!
//! `cargo bench -p ws-profiler --bench profiler -- [--json FILE] [--rounds N] [--iters N]`
//!
//! Prints the median over rounds of the cost of one `start` + `stop` pair on one thread, on
//! two threads hammering the same kind at once, and with the profiler switched off, plus
//! a few reference numbers. `--json FILE` writes
//! `{"start_stop_ns": {"one_thread": N, "two_threads": N}, "disabled_ns": N}`.

use serde::Serialize;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use ws_profiler::{CallbackKind, ClockSource, Profiler};

#[derive(Serialize)]
struct StartStop {
    one_thread: f64,
    two_threads: f64,
}

#[derive(Serialize)]
struct Output {
    start_stop_ns: StartStop,
    disabled_ns: f64,
}

struct Args {
    json: Option<String>,
    rounds: usize,
    iters: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        json: None,
        rounds: 9,
        iters: 2_000_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => a.json = Some(it.next().ok_or("--json needs a file")?),
            "--rounds" => {
                a.rounds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--rounds needs a number")?
            }
            "--iters" => {
                a.iters = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--iters needs a number")?
            }
            // cargo passes --bench; anything else (filters) is ignored too.
            _ => {}
        }
    }
    if a.rounds == 0 || a.iters == 0 {
        return Err("--rounds and --iters must be positive".into());
    }
    Ok(a)
}

/// CPU time of the calling thread, ns. The machine is shared (2 cores, other jobs), so
/// per-operation costs are taken from the thread's own CPU time: time the thread spends
/// preempted is not the profiler's cost.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID always exists on
    // Linux, so the call only writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A timing: ns per operation in thread CPU time and in wall time.
#[derive(Clone, Copy)]
struct Cost {
    cpu: f64,
    wall: f64,
}

fn timed(iters: u64, f: impl FnOnce()) -> Cost {
    let c0 = thread_cpu_ns();
    let t = Instant::now();
    f();
    let wall = t.elapsed().as_nanos() as f64 / iters as f64;
    let cpu = thread_cpu_ns().saturating_sub(c0) as f64 / iters as f64;
    Cost { cpu, wall }
}

/// ns per start+stop for `iters` spans on this thread.
#[inline(never)]
fn spans(p: &Profiler, kind: CallbackKind, iters: u64) -> Cost {
    timed(iters, || {
        for i in 0..iters {
            let p = black_box(p);
            let g = p.start(black_box(kind));
            g.stop(black_box(i & 1023));
        }
    })
}

/// ns per span with a connection id.
#[inline(never)]
fn conn_spans(p: &Profiler, kind: CallbackKind, iters: u64) -> Cost {
    timed(iters, || {
        for i in 0..iters {
            let p = black_box(p);
            let g = p.start_conn(black_box(kind), black_box(i & 63));
            g.stop(black_box(i & 1023));
        }
    })
}

/// ns per `record` call (no span clock read, but one clock read for `last`).
#[inline(never)]
fn records(p: &Profiler, kind: CallbackKind, iters: u64) -> Cost {
    timed(iters, || {
        for i in 0..iters {
            black_box(p).record(black_box(kind), black_box(i & 4095), black_box(64));
        }
    })
}

/// ns per `tick` that finds the window not yet due.
#[inline(never)]
fn ticks(p: &Profiler, iters: u64) -> Cost {
    timed(iters, || {
        for _ in 0..iters {
            black_box(black_box(p).tick());
        }
    })
}

/// The loop alone, for reference.
#[inline(never)]
fn empty_loop(iters: u64) -> Cost {
    timed(iters, || {
        for i in 0..iters {
            black_box(i);
        }
    })
}

/// Two threads at once on the same kind of the same profiler; mean of their ns/span.
/// Also prints how parallel the two really ran: the sum of their CPU times over the wall
/// span they covered together (2.0 = truly simultaneous, 1.0 = taking turns on one core).
fn two_threads(p: &Profiler, iters: u64) -> Cost {
    let barrier = Arc::new(Barrier::new(2));
    let origin = Instant::now();
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let p = p.clone();
            let b = Arc::clone(&barrier);
            std::thread::spawn(move || {
                spans(&p, CallbackKind::RECEIVE, 10_000);
                b.wait();
                let from = origin.elapsed();
                let c = spans(&p, CallbackKind::RECEIVE, iters);
                (c, from, origin.elapsed())
            })
        })
        .collect();
    let mut sum = Cost {
        cpu: 0.0,
        wall: 0.0,
    };
    let mut n = 0.0;
    let (mut first, mut last) = (Duration::MAX, Duration::ZERO);
    for h in hs {
        if let Ok((v, from, to)) = h.join() {
            sum.cpu += v.cpu;
            sum.wall += v.wall;
            n += 1.0;
            first = first.min(from);
            last = last.max(to);
        }
    }
    if n == 0.0 {
        return Cost {
            cpu: f64::NAN,
            wall: f64::NAN,
        };
    }
    let span = last.saturating_sub(first).as_nanos() as f64;
    if span > 0.0 {
        PARALLELISM.with(|v| v.borrow_mut().push(sum.cpu * iters as f64 / span));
    }
    Cost {
        cpu: sum.cpu / n,
        wall: sum.wall / n,
    }
}

thread_local! {
    static PARALLELISM: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Median parallelism of the two-thread rounds since the last call.
fn take_parallelism() -> f64 {
    median(PARALLELISM.with(|v| std::mem::take(&mut *v.borrow_mut())))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Run `rounds` rounds; print and return the median CPU-time cost (wall time beside it).
fn run(name: &str, rounds: usize, mut f: impl FnMut() -> Cost) -> f64 {
    let v: Vec<Cost> = (0..rounds).map(|_| f()).collect();
    let cpu: Vec<f64> = v.iter().map(|c| c.cpu).collect();
    let m = median(cpu.clone());
    let lo = cpu.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = cpu.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let wall = median(v.iter().map(|c| c.wall).collect());
    println!(
        "{name:<44} median {m:7.2} ns  (min {lo:6.2}, max {hi:6.2}; wall median {wall:7.2} ns)"
    );
    m
}

fn build(b: ws_profiler::ProfilerBuilder) -> Result<Profiler, String> {
    b.build().map_err(|e| e.to_string())
}

fn main() -> Result<(), String> {
    let a = parse_args()?;
    println!("{}", ws_clock::bench_header("profiler"));
    let (rounds, iters) = (a.rounds, a.iters);
    let p = Profiler::new();
    let info = p.clock_info();
    println!(
        "ws-profiler bench: clock {} ({:.4} ticks/ns, calibration ±{:.2} ppm), {iters} spans per round",
        info.source, info.ticks_per_ns, info.calibration_error_ppm
    );
    spans(&p, CallbackKind::RECEIVE, iters / 4);

    let one = run("start+stop, 1 thread", rounds, || {
        spans(&p, CallbackKind::RECEIVE, iters)
    });
    let two = run("start+stop, 2 threads, same kind", rounds, || {
        two_threads(&p, iters)
    });
    let par = take_parallelism();
    println!(
        "{:<44} {par:.2} (2.00 = both threads on a core all the time)",
        "  two-thread parallelism, median"
    );
    let off = build(Profiler::builder().enabled(false))?;
    let disabled = run("start+stop, profiler disabled", rounds, || {
        spans(&off, CallbackKind::RECEIVE, iters)
    });

    println!("-- reference --");
    run("empty loop", rounds, || empty_loop(iters));
    let mono = build(Profiler::builder().clock(ClockSource::Monotonic))?;
    run("start+stop, 1 thread, CLOCK_MONOTONIC", rounds, || {
        spans(&mono, CallbackKind::RECEIVE, iters)
    });
    let shared = build(Profiler::builder().thread_slots(1))?;
    spans(&shared, CallbackKind::RECEIVE, 1); // the main thread takes the only private slot
    run(
        "start+stop, 2 threads, shared overflow slot",
        rounds,
        || two_threads(&shared, iters),
    );
    let par_shared = take_parallelism();
    println!("{:<44} {par_shared:.2}", "  two-thread parallelism, median");
    let conns = build(Profiler::builder().connections(1024))?;
    run("start_conn+stop, 1 thread, 64 connections", rounds, || {
        conn_spans(&conns, CallbackKind::RECEIVE, iters)
    });
    run("record(kind, ns, bytes), 1 thread", rounds, || {
        records(&p, CallbackKind::PING, iters)
    });
    let windowed = build(Profiler::builder().windows(4, Duration::from_secs(3600)))?;
    run("tick() before the window is due", rounds, || {
        ticks(&windowed, iters)
    });
    // Closing a window: 8 kinds with data, three slots in use (this thread and two more).
    for k in CallbackKind::BUILTIN {
        spans(&windowed, k, 1000);
    }
    two_threads(&windowed, 1000);
    take_parallelism();
    run("closing a window (8 kinds, 3 slots in use)", rounds, || {
        timed(1, || {
            black_box(windowed.close_window_now());
        })
    });
    println!(
        "(connections tracked by the start_conn run: {})",
        conns.tracked_connections()
    );

    let out = Output {
        start_stop_ns: StartStop {
            one_thread: (one * 10.0).round() / 10.0,
            two_threads: (two * 10.0).round() / 10.0,
        },
        disabled_ns: (disabled * 100.0).round() / 100.0,
    };
    let json = serde_json::to_string(&out).map_err(|e| e.to_string())?;
    println!("{json}");
    if let Some(path) = a.json {
        std::fs::write(&path, format!("{json}\n")).map_err(|e| format!("writing {path}: {e}"))?;
        println!("wrote {path}");
    }
    Ok(())
}
