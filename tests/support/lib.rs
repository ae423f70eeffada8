//! Helpers shared by the cross-crate integration tests.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    thread,
};

pub use ws_trace::privileges::require_for_test;

/// CLOCK_MONOTONIC now, in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC, ns: the narrowest of several bracketed readings
/// (to put a kernel's CLOCK_REALTIME packet stamp on the probes' clock).
pub fn realtime_minus_monotonic() -> i64 {
    let read = |id| {
        let t = nix::time::clock_gettime(id).expect("clock_gettime");
        t.tv_sec() as i64 * 1_000_000_000 + t.tv_nsec() as i64
    };
    (0..10)
        .map(|_| {
            let m0 = read(nix::time::ClockId::CLOCK_MONOTONIC);
            let r = read(nix::time::ClockId::CLOCK_REALTIME);
            let m1 = read(nix::time::ClockId::CLOCK_MONOTONIC);
            (m1 - m0, r - (m0 + m1) / 2)
        })
        .min()
        .map(|(_, offset)| offset)
        .expect("readings")
}

/// Pins the calling thread to `cpu` until the returned guard is dropped.
pub fn pin_to_cpu(cpu: usize) -> CpuPin {
    let before = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("affinity");
    let mut only = nix::sched::CpuSet::new();
    only.set(cpu).expect("cpu number");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &only).expect("pin");
    CpuPin(before)
}

/// Restores the thread's CPU affinity when dropped.
pub struct CpuPin(nix::sched::CpuSet);

impl Drop for CpuPin {
    fn drop(&mut self) {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &self.0);
    }
}

/// Sends `rounds` messages of `size` bytes over a loopback TCP connection and waits for
/// each to be echoed back. Returns the bytes echoed.
pub fn loopback_echo(rounds: usize, size: usize) -> std::io::Result<u64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            s.write_all(&buf[..n])?;
        }
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let msg = vec![0xa5u8; size];
    let mut back = vec![0u8; size];
    let mut total = 0;
    for _ in 0..rounds {
        c.write_all(&msg)?;
        c.read_exact(&mut back)?;
        total += size as u64;
    }
    drop(c);
    server
        .join()
        .map_err(|_| std::io::Error::other("echo server panicked"))??;
    Ok(total)
}

/// `GET path` from an HTTP server over HTTP/1.0 (so the answer is not chunked), with a
/// bearer token if given: the status code and the body.
pub fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let (code, body) = http_request(addr, "GET", path, token)?;
    Ok((code, String::from_utf8_lossy(&body).to_string()))
}

/// `METHOD path` (no request body) over HTTP/1.0, with a bearer token if given: the status
/// code and the body's bytes.
pub fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n{auth}\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let head_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of the HTTP head"))?;
    let head = String::from_utf8_lossy(&out[..head_end]);
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:?}")))?;
    Ok((code, out[head_end + 4..].to_vec()))
}

/// The value of the sample `series` (name and labels exactly as written) in Prometheus
/// text, if present.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A loopback port nothing listens on now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where a `feed_client --report` writes its own view of its callbacks, and what it wrote.
pub struct ClientReport {
    path: std::path::PathBuf,
}

impl ClientReport {
    /// A fresh report path (in the temp dir, unique to this process and call).
    pub fn new() -> ClientReport {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "ws-tests-feed-client-{}-{n}.report",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        ClientReport { path }
    }

    /// The client's arguments that ask for the report.
    pub fn args(&self) -> [String; 2] {
        ["--report".into(), self.path.display().to_string()]
    }

    /// What the client measured itself, once it has exited.
    pub fn figures(&self) -> ClientFigures {
        let text = std::fs::read_to_string(&self.path)
            .unwrap_or_else(|e| panic!("feed_client report {}: {e}", self.path.display()));
        let value = |key: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {key} in the report: {text:?}"))
        };
        ClientFigures {
            callback_p50_ns: value("callback_p50_ns"),
            reads: value("reads"),
        }
    }

    /// The median of the client's callbacks' durations by its own clock, ns, once it has
    /// exited.
    pub fn callback_p50_ns(&self) -> u64 {
        self.figures().callback_p50_ns
    }
}

/// What `feed_client --report` measured itself.
#[derive(Clone, Copy, Debug)]
pub struct ClientFigures {
    /// The median of its callbacks' durations by its own clock, ns.
    pub callback_p50_ns: u64,
    /// Its socket reads that completed at least one message.
    pub reads: u64,
}

impl Default for ClientReport {
    fn default() -> Self {
        ClientReport::new()
    }
}

impl Drop for ClientReport {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a traced callback stage's median `traced_ns` reads the callback's median as the
/// client timed it itself (`client_ns`, see [`ClientReport`]): within 1 µs plus 1/16 of
/// it. The engine's stamps sit just outside the client's own clock reads, and the first
/// clock read of a callback woken from sleep runs on cold caches and TLB: 0.2–1 µs on
/// this VM, 2.5 µs seen on a busier host; a log-linear histogram bucket adds up to 1/64.
/// A stage taken across the wrong stamps, or converted at the wrong rate, is off by more.
/// `Err` says by how much it missed.
pub fn reads_the_callback(traced_ns: u64, client_ns: u64) -> Result<(), String> {
    let slack = 1_000 + client_ns / 16;
    if traced_ns.abs_diff(client_ns) <= slack {
        Ok(())
    } else {
        Err(format!(
            "callback stage p50 {traced_ns} ns, the client timed its callbacks at a median \
             of {client_ns} ns (± {slack} ns allowed)"
        ))
    }
}
