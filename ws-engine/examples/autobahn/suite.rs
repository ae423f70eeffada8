//! The fuzzingserver protocol of the Autobahn TestSuite, shared by the
//! `autobahn_client` example and the conformance test.
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

pub fn run_one<H: Handler>(url: &str, cfg: &ConnConfig, h: &mut H) -> Result<(), String> {
    let mut el = EventLoop::new(LoopConfig::default()).map_err(|e| e.to_string())?;
    el.connect(url, cfg).map_err(|e| format!("{url}: {e}"))?;
    el.run(h).map_err(|e| e.to_string())
}

/// Runs every case the fuzzingserver at `base` offers as `agent`, then asks it to write
/// its reports. Returns the number of cases run.
pub fn run_suite(base: &str, agent: &str, verbose: bool) -> Result<u32, String> {
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
    run_one(&format!("{base}/getCaseCount"), &cfg, &mut count)
        .map_err(|e| format!("getCaseCount failed: {e}"))?;
    let n = count.0.0.ok_or("getCaseCount: no case count received")?;
    for case in 1..=n {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        if let Err(e) = run_one(&url, &cfg, &mut Verbose(Echo, verbose)) {
            eprintln!("case {case}: {e}");
        }
    }
    run_one(
        &format!("{base}/updateReports?agent={agent}"),
        &cfg,
        &mut Verbose(Quiet, verbose),
    )
    .map_err(|e| format!("updateReports failed: {e}"))?;
    Ok(n)
}
