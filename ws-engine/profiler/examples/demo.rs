//! Simulated callback traffic through the profiler, then the three reports.
//!
//! `cargo run -p ws-profiler --release --example demo -- [text|json|prometheus|all]`
//!
//! Four connections get `established`, a stream of `receive` (about 2 us of work, one in
//! 100 spinning 60 us in the second half to show a degradation), `writable`, `ping`/`pong`,
//! a user kind `on_book_update`, then `close_frame` and `closed`. Windows of 250 ms; an
//! alert fires when receive's p99 in a window goes over 20 us.

use std::time::{Duration, Instant};
use ws_profiler::{AlertRule, CallbackKind, Profiler};

/// Busy-wait about `ns` nanoseconds (a stand-in for a user callback's work).
fn work(ns: u64) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_nanos(ns) {
        std::hint::spin_loop();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let p = Profiler::builder()
        .connections(64)
        .windows(8, Duration::from_millis(250))
        .build()?;
    let book = p.register_kind("on_book_update")?;
    p.add_alert(
        AlertRule {
            kind: CallbackKind::RECEIVE,
            quantile: 0.99,
            threshold_ns: 20_000,
            min_count: 100,
        },
        |alert| eprintln!("{alert}"),
    )?;

    let conns = [101u64, 102, 103, 104];
    for &c in &conns {
        let g = p.start_conn(CallbackKind::ESTABLISHED, c);
        work(15_000);
        g.stop(0);
    }
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_millis(1000) {
        let c = conns[(i % 4) as usize];
        let slow = start.elapsed() > Duration::from_millis(500) && i % 100 == 7;
        let len = 200 + (i * 37) % 1800;
        {
            let g = p.start_conn(CallbackKind::RECEIVE, c);
            work(if slow { 60_000 } else { 1_500 + (i % 7) * 100 });
            g.stop(len);
        }
        if i.is_multiple_of(3) {
            let g = p.start_conn(book, c);
            work(800);
            g.stop(len / 2);
        }
        if i.is_multiple_of(10) {
            let g = p.start_conn(CallbackKind::WRITABLE, c);
            work(900);
            g.stop(128);
        }
        if i.is_multiple_of(500) {
            p.time(CallbackKind::PING, 8, || work(300));
            p.time(CallbackKind::PONG, 8, || work(250));
        }
        p.tick();
        i += 1;
    }
    for &c in &conns {
        let g = p.start_conn(CallbackKind::CLOSE_FRAME, c);
        work(2_000);
        g.stop(2);
        let g = p.start_conn(CallbackKind::CLOSED, c);
        work(5_000);
        g.stop(0);
    }
    p.close_window_now();
    let report = p.report();
    match what.as_str() {
        "text" => print!("{report}"),
        "json" => println!("{}", report.to_json_pretty()?),
        "prometheus" => print!("{}", report.to_prometheus()),
        _ => {
            print!("{report}");
            println!("{}", report.to_json_pretty()?);
            print!("{}", report.to_prometheus());
        }
    }
    Ok(())
}
