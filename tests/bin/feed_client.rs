//! `feed_client <url>`: connects with ws-engine, counts the messages it receives until the
//! server closes, then prints `received N cookie C` and exits 0 (1 on any error).
use std::process::ExitCode;

use ws_engine::{
    CloseInfo, ConnConfig, ConnCtx, ConnError, ConnId, EventLoop, Handler, LoopConfig, Message,
};

#[derive(Default)]
struct Count {
    received: u64,
    bytes: u64,
    failed: Option<String>,
}

/// Called once per message with its index: a plain symbol for `--uprobe` tests.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn feed_client_tick(index: u64) -> u64 {
    std::hint::black_box(index)
}

impl Handler for Count {
    fn on_message(&mut self, _conn: &mut ConnCtx<'_>, msg: Message<'_>) {
        feed_client_tick(self.received);
        self.received += 1;
        self.bytes += msg.data.len() as u64;
    }
    fn on_error(&mut self, _id: ConnId, err: &ConnError) {
        self.failed = Some(err.to_string());
    }
    fn on_closed(&mut self, _id: ConnId, _info: &CloseInfo) {}
}

fn main() -> ExitCode {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: feed_client <url>");
        return ExitCode::from(2);
    };
    let mut el = match EventLoop::new(LoopConfig::default()) {
        Ok(el) => el,
        Err(e) => {
            eprintln!("feed_client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let id = match el.connect(&url, &ConnConfig::default()) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("feed_client: connect {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cookie = el.sock_cookie(id).unwrap_or(0);
    let mut count = Count::default();
    if let Err(e) = el.run(&mut count) {
        eprintln!("feed_client: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(e) = count.failed {
        eprintln!("feed_client: {e}");
        return ExitCode::FAILURE;
    }
    println!(
        "received {} bytes {} cookie {cookie}",
        count.received, count.bytes
    );
    ExitCode::SUCCESS
}
