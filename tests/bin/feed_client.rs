//! `feed_client <url> [--spin-us N] [--cpu C]`: connects with ws-engine, counts the
//! messages it receives until the server closes, then prints `received N cookie C` and
//! exits 0 (1 on any error). `--spin-us` makes every callback busy-wait that long (a known
//! callback cost); `--cpu` pins the client to one CPU; `--fifo P` makes it a real-time
//! (SCHED_FIFO) task of priority P; `--report FILE` writes the callbacks' own timing there
//! (`callback_p50_ns N`: the median of each `on_message`'s duration, read with
//! `Instant` at its entry and exit), the ground truth a traced callback stage is checked
//! against, and `reads N`: how many of its socket reads completed at least one message
//! (messages are told apart by the stream offset their read ended at).
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
    /// Each callback's duration by its own clock, when `--report` asks for it.
    durations: Option<Vec<u64>>,
    /// Reads that completed a message, and the stream offset the last one ended at.
    reads: u64,
    last_read_end: Option<u64>,
}

/// Called once per message with its index: a plain symbol for `--uprobe` tests.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn feed_client_tick(index: u64) -> u64 {
    std::hint::black_box(index)
}

impl Handler for Count {
    fn on_message(&mut self, _conn: &mut ConnCtx<'_>, msg: Message<'_>) {
        let entered = std::time::Instant::now();
        feed_client_tick(self.received);
        while entered.elapsed() < self.spin {
            std::hint::spin_loop();
        }
        if let Some(d) = self.durations.as_mut() {
            d.push(entered.elapsed().as_nanos() as u64);
        }
        self.received += 1;
        self.bytes += msg.data.len() as u64;
        if self.last_read_end != Some(msg.read_end()) {
            self.last_read_end = Some(msg.read_end());
            self.reads += 1;
        }
    }
    fn on_error(&mut self, _id: ConnId, err: &ConnError) {
        self.failed = Some(err.to_string());
    }
    fn on_closed(&mut self, _id: ConnId, _info: &CloseInfo) {}
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(url) = args.first().cloned() else {
        eprintln!("usage: feed_client <url> [--spin-us N] [--cpu C] [--fifo P] [--report FILE]");
        return ExitCode::from(2);
    };
    // The word after `name`, and as a number.
    let value = |name: &str| -> Option<String> {
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1).cloned()
    };
    let option = |name: &str| -> Option<u64> { value(name)?.parse().ok() };
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
    let report = value("--report");
    let mut count = Count {
        spin,
        durations: report.as_ref().map(|_| Vec::with_capacity(1 << 16)),
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
    if let (Some(path), Some(mut d)) = (report, count.durations.take()) {
        d.sort_unstable();
        let p50 = d.get(d.len() / 2).copied().unwrap_or(0);
        let text = format!("callback_p50_ns {p50}\nreads {}\n", count.reads);
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("feed_client: writing {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    println!(
        "received {} bytes {} cookie {cookie}",
        count.received, count.bytes
    );
    ExitCode::SUCCESS
}
