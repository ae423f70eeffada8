//! Autobahn TestSuite client: `autobahn_client <base-url> <agent>`.
//!
//! Speaks the fuzzingserver protocol: `getCaseCount`, then `runCase?case=N&agent=A` for
//! every case (echoing every message back as it came), then `updateReports?agent=A`.
use std::process::ExitCode;
use std::time::Duration;

use ws_engine::{
    CloseInfo, ConnConfig, ConnCtx, ConnError, ConnId, EventLoop, Handler, Limits, LoopConfig,
    Message,
};

struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, conn: &mut ConnCtx<'_>, msg: Message<'_>) {
        // A failing send ends the connection through the engine's error path.
        let _ = conn.send(msg.kind, msg.data);
    }
}

struct CaseCount(Option<u32>);

impl Handler for CaseCount {
    fn on_message(&mut self, _conn: &mut ConnCtx<'_>, msg: Message<'_>) {
        self.0 = msg.text().and_then(|t| t.trim().parse().ok());
    }
}

struct Quiet;
impl Handler for Quiet {
    fn on_message(&mut self, _: &mut ConnCtx<'_>, _: Message<'_>) {}
}

struct Verbose<H>(H, bool);
impl<H: Handler> Handler for Verbose<H> {
    fn on_message(&mut self, conn: &mut ConnCtx<'_>, msg: Message<'_>) {
        self.0.on_message(conn, msg)
    }
    fn on_error(&mut self, id: ConnId, err: &ConnError) {
        if self.1 {
            eprintln!("conn {:?}: {err}", id);
        }
    }
    fn on_closed(&mut self, id: ConnId, info: &CloseInfo) {
        self.0.on_closed(id, info)
    }
}

fn run_one<H: Handler>(url: &str, cfg: &ConnConfig, h: &mut H) -> Result<(), String> {
    let mut el = EventLoop::new(LoopConfig::default()).map_err(|e| e.to_string())?;
    el.connect(url, cfg).map_err(|e| format!("{url}: {e}"))?;
    el.run(h).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(base), Some(agent)) = (args.first(), args.get(1)) else {
        eprintln!("usage: autobahn_client <base-url> <agent>");
        return ExitCode::from(2);
    };
    let verbose = std::env::var_os("AUTOBAHN_VERBOSE").is_some();
    let base = base.trim_end_matches('/');
    let cfg = ConnConfig {
        limits: Limits {
            max_frame: 64 << 20,
            max_message: 64 << 20,
        },
        close_timeout: Duration::from_secs(3),
        handshake_timeout: Duration::from_secs(10),
        ..ConnConfig::default()
    };
    let mut count = Verbose(CaseCount(None), verbose);
    if let Err(e) = run_one(&format!("{base}/getCaseCount"), &cfg, &mut count) {
        eprintln!("getCaseCount failed: {e}");
        return ExitCode::FAILURE;
    }
    let Some(n) = count.0.0 else {
        eprintln!("getCaseCount: no case count received");
        return ExitCode::FAILURE;
    };
    eprintln!("running {n} cases as agent {agent:?}");
    for case in 1..=n {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        if let Err(e) = run_one(&url, &cfg, &mut Verbose(Echo, verbose)) {
            eprintln!("case {case}: {e}");
        }
    }
    if let Err(e) = run_one(
        &format!("{base}/updateReports?agent={agent}"),
        &cfg,
        &mut Verbose(Quiet, verbose),
    ) {
        eprintln!("updateReports failed: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
