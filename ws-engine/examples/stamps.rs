//! `stamps <url> [count]`: receives `count` messages (default 10000, or until the peer
//! closes) and prints a per-stage latency table (p50/p99/max) from the engine's own
//! stamps, plus the TSC calibration.
use std::process::ExitCode;

use ws_engine::clock::ClockSource;
use ws_engine::stamps::{STAGES, percentiles};
use ws_engine::{
    CloseInfo, ConnConfig, ConnCtx, ConnError, ConnId, EventLoop, Handler, LoopConfig, Message,
};

struct Count {
    n: u64,
    target: u64,
    id: Option<ConnId>,
    done: bool,
}

impl Handler for Count {
    fn on_message(&mut self, conn: &mut ConnCtx<'_>, _msg: Message<'_>) {
        self.n += 1;
        if self.n == self.target {
            let _ = conn.close(1000, "enough");
        }
        self.id = Some(conn.id());
    }
    fn on_error(&mut self, _id: ConnId, err: &ConnError) {
        eprintln!("error: {err}");
    }
    fn on_closed(&mut self, _id: ConnId, _info: &CloseInfo) {
        self.done = true;
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(url) = args.first() else {
        eprintln!("usage: stamps <url> [count]");
        return ExitCode::from(2);
    };
    let target: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let cfg = LoopConfig {
        stamp_log_capacity: target.min(1 << 22) as usize,
        ..LoopConfig::default()
    };
    let mut el = match EventLoop::new(cfg) {
        Ok(el) => el,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = el.connect(url, &ConnConfig::default()) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let mut h = Count {
        n: 0,
        target,
        id: None,
        done: false,
    };
    if let Err(e) = el.run(&mut h) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let cal = el.clock().calibration();
    match cal.source {
        ClockSource::Tsc => println!(
            "clock: TSC {:.3} GHz, mult {} shift {}, calibration error {} ns (now {} ns)",
            cal.tsc_hz as f64 / 1e9,
            cal.mult,
            cal.shift,
            cal.error_ns,
            el.clock().measure_error()
        ),
        ClockSource::Monotonic => println!("clock: CLOCK_MONOTONIC (TSC not invariant)"),
    }
    let recs = el.stamp_log().records();
    println!("{} messages, {} stamped", h.n, recs.len());
    println!(
        "{:<26} {:>10} {:>10} {:>10}",
        "stage (ns)", "p50", "p99", "max"
    );
    for (i, name) in STAGES.iter().enumerate() {
        let mut v: Vec<u64> = recs.iter().map(|r| r.stage_ns()[i]).collect();
        let (p50, p99, max) = percentiles(&mut v);
        println!("{name:<26} {p50:>10} {p99:>10} {max:>10}");
    }
    let mut v: Vec<u64> = recs.iter().map(|r| r.overhead_ns()).collect();
    let (p50, p99, max) = percentiles(&mut v);
    println!("{:<26} {p50:>10} {p99:>10} {max:>10}", "recv_end→callback");
    ExitCode::SUCCESS
}
