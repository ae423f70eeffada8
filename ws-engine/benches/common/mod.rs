//! Shared by the `engine` and `tls` benches: the loopback server's side of the upgrade and
//! the blast, the client CPU clock, and the tokio-tungstenite peer's receive loop.

use std::future::Future;
use std::io::{Read, Write};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use ws_engine::frame::{MAX_HEADER, OpCode, encode_header};
use ws_engine::handshake::accept_key;
use ws_engine::stamps::StampRecord;
use ws_engine::{ConnCtx, EventLoop, Handler, Message};

/// Command line: `[--json FILE] [--runs N] [--quick]`, and `[--size N]` where the bench has
/// it; anything else (cargo passes `--bench`) is ignored.
pub struct Args {
    pub json: Option<String>,
    pub runs: usize,
    pub quick: bool,
    /// `--size`: only this message size.
    pub size: Option<usize>,
}

/// Parses the bench's arguments; `--quick` caps the runs at 3. `--size` is an option only
/// `with_size`.
pub fn parse_args(with_size: bool) -> Args {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = Args {
        json: None,
        runs: 5,
        quick: false,
        size: None,
    };
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--json" => {
                out.json = args.get(i + 1).cloned();
                i += 1;
            }
            "--runs" => {
                out.runs = args
                    .get(i + 1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(out.runs);
                i += 1;
            }
            "--quick" => out.quick = true,
            "--size" if with_size => {
                out.size = args.get(i + 1).and_then(|s| s.parse().ok());
                i += 1;
            }
            // cargo passes --bench; anything else is ignored too.
            _ => {}
        }
        i += 1;
    }
    if out.quick {
        out.runs = out.runs.min(3);
    }
    out
}

/// The bench header (`ws_clock::bench_header`): the stamp clock, what one read of each
/// clock costs here (measured now), how quiet the machine is.
pub fn print_header(bench: &str) {
    println!("{}", ws_engine::clock::bench_header(bench));
}

/// One measured run: wall ns, client CPU ns.
pub struct Sample {
    pub wall_ns: u64,
    pub cpu_ns: u64,
}

/// CPU time of the calling thread.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An unmasked (server) frame.
pub fn server_frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; MAX_HEADER];
    let n = encode_header(&mut h, true, op, payload.len(), None);
    let mut v = h[..n].to_vec();
    v.extend_from_slice(payload);
    v
}

/// The engine's handler: counts messages and those not of `size` bytes; sends "start" once
/// connected and, with `echo`, every message back.
struct Counter {
    n: u64,
    bad: u64,
    size: usize,
    echo: bool,
}

impl Handler for Counter {
    fn on_message(&mut self, conn: &mut ConnCtx<'_>, msg: Message<'_>) {
        self.n += 1;
        if msg.data.len() != self.size {
            self.bad += 1;
        }
        if self.echo {
            let _ = conn.send_binary(msg.data);
        }
    }
    fn on_established(&mut self, conn: &mut ConnCtx<'_>) {
        let _ = conn.send_binary(b"start");
    }
}

/// The engine peer's run on a connected `el`: polls until `n` messages of `size` bytes
/// came (measured; `echo` sends each back), then closes the loop and waits for the server.
/// Returns the sample and the loop's stamp log.
pub fn engine_receive(
    mut el: EventLoop,
    srv: JoinHandle<()>,
    size: usize,
    n: u64,
    echo: bool,
) -> Result<(Sample, Vec<StampRecord>), String> {
    let mut h = Counter {
        n: 0,
        bad: 0,
        size,
        echo,
    };
    let t0 = Instant::now();
    let c0 = thread_cpu_ns();
    while h.n < n {
        el.poll(&mut h, Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        if el.is_empty() {
            return Err(format!("ws-engine: connection ended after {} msgs", h.n));
        }
    }
    let s = Sample {
        wall_ns: t0.elapsed().as_nanos() as u64,
        cpu_ns: thread_cpu_ns() - c0,
    };
    if h.bad != 0 {
        return Err(format!("ws-engine: {} messages of the wrong size", h.bad));
    }
    let recs = el.stamp_log().records().to_vec();
    drop(el);
    let _ = srv.join();
    Ok((s, recs))
}

/// Server side of the upgrade: reads the request head and answers 101. `false` when the
/// client went away.
pub fn accept_upgrade<S: Read + Write>(s: &mut S) -> bool {
    let mut req = Vec::new();
    let mut b = [0u8; 1];
    while !req.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) != 1 {
            return false;
        }
        req.push(b[0]);
    }
    let req = String::from_utf8_lossy(&req).to_string();
    let key = req
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(&key)
    );
    s.write_all(resp.as_bytes())
        .and_then(|()| s.flush())
        .is_ok()
}

/// Writes `n` binary frames of `size` bytes back to back, in chunks of about 256 KiB.
/// `false` when the client went away.
pub fn blast<W: Write>(s: &mut W, size: usize, n: u64) -> bool {
    let f = server_frame(OpCode::Binary, &vec![0x5A; size]);
    let per_chunk = (256 * 1024 / f.len()).max(1);
    let chunk: Vec<u8> = f.repeat(per_chunk);
    let mut left = n;
    while left >= per_chunk as u64 {
        if s.write_all(&chunk).is_err() {
            return false;
        }
        left -= per_chunk as u64;
    }
    s.write_all(&f.repeat(left as usize)).is_ok()
}

/// Sends a close (1000) and reads until the client goes away.
pub fn close_and_drain<S: Read + Write>(s: &mut S) {
    let _ = s.write_all(&server_frame(OpCode::Close, &1000u16.to_be_bytes()));
    let _ = s.flush();
    let mut tmp = [0u8; 4096];
    while matches!(s.read(&mut tmp), Ok(n) if n > 0) {}
}

/// Runs a tokio client on a current-thread runtime on this thread, then waits for the
/// server thread.
pub fn on_current_thread<F>(srv: JoinHandle<()>, client: F) -> Result<Sample, String>
where
    F: Future<Output = Result<Sample, String>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let r = rt.block_on(client);
    drop(rt);
    let _ = srv.join();
    r
}

/// The tokio-tungstenite peer's measured part: sends "start", then receives `n` binary
/// messages of `size` bytes.
pub async fn tungstenite_receive<S>(
    ws: &mut WebSocketStream<S>,
    size: usize,
    n: u64,
) -> Result<Sample, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::Message as M;
    let t0 = Instant::now();
    let c0 = thread_cpu_ns();
    ws.send(M::Binary(b"start".to_vec().into()))
        .await
        .map_err(|e| e.to_string())?;
    let mut got = 0u64;
    while got < n {
        match ws.next().await {
            Some(Ok(M::Binary(b))) => {
                if b.len() != size {
                    return Err("tokio-tungstenite: wrong size".to_string());
                }
                got += 1;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err(format!("tokio-tungstenite: ended after {got}")),
        }
    }
    Ok(Sample {
        wall_ns: t0.elapsed().as_nanos() as u64,
        cpu_ns: thread_cpu_ns() - c0,
    })
}

/// The middle value (the upper one of an even count); 0 for none.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Runs each of `peers` (`run_peer(index)`) `runs` times, taking turns run after run, each
/// run `n` messages of `size` bytes; returns per-peer medians of msgs/s and of client CPU
/// ns per message. A failed run ends the bench (exit status 1).
#[allow(dead_code)] // the engine bench keeps every run
pub fn take_turns<const P: usize>(
    peers: &[&str; P],
    size: usize,
    n: u64,
    runs: usize,
    run_peer: impl FnMut(usize) -> Result<Sample, String>,
) -> ([f64; P], [f64; P]) {
    let (mut rate, mut cpu) = take_turns_all(peers, size, n, runs, run_peer);
    (
        rate.each_mut().map(|v| median(v)),
        cpu.each_mut().map(|v| median(v)),
    )
}

/// Like [`take_turns`], but returns every run's msgs/s and CPU ns/msg per peer (in run
/// order).
pub fn take_turns_all<const P: usize>(
    peers: &[&str; P],
    size: usize,
    n: u64,
    runs: usize,
    mut run_peer: impl FnMut(usize) -> Result<Sample, String>,
) -> ([Vec<f64>; P], [Vec<f64>; P]) {
    let mut rate: [Vec<f64>; P] = std::array::from_fn(|_| Vec::new());
    let mut cpu: [Vec<f64>; P] = std::array::from_fn(|_| Vec::new());
    for run in 0..runs {
        for (p, peer) in peers.iter().enumerate() {
            match run_peer(p) {
                Ok(s) => {
                    rate[p].push(n as f64 * 1e9 / s.wall_ns as f64);
                    cpu[p].push(s.cpu_ns as f64 / n as f64);
                }
                Err(e) => {
                    eprintln!("{peer} {size} B run {run}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    (rate, cpu)
}

/// The per-peer table of medians, then ws-engine (`peers[0]`) against each other peer.
#[allow(dead_code)] // the engine bench prints its own table
pub fn print_table(peers: &[&str], mr: &[f64], mc: &[f64]) {
    println!("{:<20} {:>14} {:>16}", "peer", "msgs/s", "CPU ns/msg");
    for (p, peer) in peers.iter().enumerate() {
        println!("{peer:<20} {:>14.0} {:>16.1}", mr[p], mc[p]);
    }
    for (p, peer) in peers.iter().enumerate().skip(1) {
        println!(
            "{:<37}{:.2}x msgs/s, {:.2}x less CPU",
            format!("ratio {} / {peer}:", peers[0]),
            mr[0] / mr[p],
            mc[p] / mc[0]
        );
    }
}
