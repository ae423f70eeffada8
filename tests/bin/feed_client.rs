//! `feed_client <url> [--spin-us N] [--cpu C]`: connects with ws-engine, counts the
//! messages it receives until the server closes, then prints `received N cookie C` and
//! exits 0 (1 on any error). `--spin-us` makes every callback busy-wait that long (a known
//! callback cost); `--cpu` pins the client to one CPU; `--fifo P` makes it a real-time
//! (SCHED_FIFO) task of priority P.
use std::process::ExitCode;

use ws_engine::{
    CloseInfo, ConnConfig, ConnCtx, ConnError, ConnId, EventLoop, Handler, LoopConfig, Message,
};

#[derive(Default)]
struct Count {
    received: u64,
    bytes: u64,
    failed: Option<String>,
    spin: std::time::Duration,
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
        if !self.spin.is_zero() {
            let start = std::time::Instant::now();
            while start.elapsed() < self.spin {
                std::hint::spin_loop();
            }
        }
        self.received += 1;
        self.bytes += msg.data.len() as u64;
    }
    fn on_error(&mut self, _id: ConnId, err: &ConnError) {
        self.failed = Some(err.to_string());
    }
    fn on_closed(&mut self, _id: ConnId, _info: &CloseInfo) {}
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(url) = args.first().cloned() else {
        eprintln!("usage: feed_client <url> [--spin-us N] [--cpu C] [--fifo P]");
        return ExitCode::from(2);
    };
    let option = |name: &str| -> Option<u64> {
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1)?.parse().ok()
    };
    if let Some(cpu) = option("--cpu") {
        let mut set = nix::sched::CpuSet::new();
        if set.set(cpu as usize).is_err()
            || nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).is_err()
        {
            eprintln!("feed_client: cannot pin to cpu {cpu}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(priority) = option("--fifo") {
        let param = libc::sched_param {
            sched_priority: priority as i32,
        };
        // SAFETY: plain syscall on this (single-threaded) process with a valid parameter.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
            eprintln!(
                "feed_client: SCHED_FIFO {priority}: {}",
                std::io::Error::last_os_error()
            );
            return ExitCode::FAILURE;
        }
    }
    let spin = std::time::Duration::from_micros(option("--spin-us").unwrap_or(0));
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
    let mut count = Count {
        spin,
        ..Count::default()
    };
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
