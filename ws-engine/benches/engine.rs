//! Receive throughput of ws-engine vs tokio-tungstenite and fastwebsockets, measured in
//! the same run against the same loopback server, plus the engine's library overhead
//! (recv_end → callback) from its own stamps.
//!
//! `cargo bench -p ws-engine --bench engine -- [--json FILE] [--runs N] [--quick] [--size 64|16384]`
//!
//! The server thread answers the upgrade, waits for the client's "start" frame, then
//! writes pre-encoded binary frames as fast as the socket takes them. Each client runs on
//! the bench's main thread (tokio peers on a current-thread runtime there), so
//! CLOCK_THREAD_CPUTIME_ID of that thread is the client's CPU time. Peers take turns run
//! after run; medians are reported.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ws_engine::decoder::{Decoded, Decoder, Limits};
use ws_engine::frame::{MAX_HEADER, OpCode, encode_header};
use ws_engine::handshake::accept_key;
use ws_engine::stamps::percentiles;
use ws_engine::{ConnConfig, ConnCtx, EventLoop, Handler, LoopConfig, Message};

const PEERS: [&str; 3] = ["ws-engine", "tokio-tungstenite", "fastwebsockets"];

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn server_frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; MAX_HEADER];
    let n = encode_header(&mut h, true, op, payload.len(), None);
    let mut v = h[..n].to_vec();
    v.extend_from_slice(payload);
    v
}

/// Reads one complete client frame (or fails).
fn read_client_frame(s: &mut TcpStream, buf: &mut Vec<u8>, dec: &mut Decoder) -> Option<usize> {
    loop {
        if let Ok(Decoded::Frame { consumed, .. }) = dec.decode(buf) {
            buf.drain(..consumed);
            return Some(consumed);
        }
        let mut tmp = [0u8; 4096];
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

#[derive(Clone, Copy)]
enum Mode {
    /// Write `n` frames of `size` bytes back to back.
    Blast { size: usize, n: u64 },
    /// Write one frame, wait for the client's echo, repeat `n` times.
    PingPong { size: usize, n: u64 },
}

fn serve(mode: Mode) -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let h = std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let mut req = Vec::new();
        let mut b = [0u8; 1];
        while !req.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).unwrap_or(0) != 1 {
                return;
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
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
        let mut dec = Decoder::new_server(Limits::default());
        let mut buf = Vec::new();
        // The client's "start".
        if read_client_frame(&mut s, &mut buf, &mut dec).is_none() {
            return;
        }
        match mode {
            Mode::Blast { size, n } => {
                let f = server_frame(OpCode::Binary, &vec![0x5A; size]);
                let per_chunk = (256 * 1024 / f.len()).max(1);
                let chunk: Vec<u8> = f.repeat(per_chunk);
                let mut left = n;
                while left >= per_chunk as u64 {
                    if s.write_all(&chunk).is_err() {
                        return;
                    }
                    left -= per_chunk as u64;
                }
                if s.write_all(&f.repeat(left as usize)).is_err() {
                    return;
                }
            }
            Mode::PingPong { size, n } => {
                let f = server_frame(OpCode::Binary, &vec![0x5A; size]);
                for _ in 0..n {
                    if s.write_all(&f).is_err() {
                        return;
                    }
                    if read_client_frame(&mut s, &mut buf, &mut dec).is_none() {
                        return;
                    }
                }
            }
        }
        let _ = s.write_all(&server_frame(OpCode::Close, &1000u16.to_be_bytes()));
        // Drain until the client goes away.
        let mut tmp = [0u8; 4096];
        while matches!(s.read(&mut tmp), Ok(n) if n > 0) {}
    });
    (addr, h)
}

/// One measured run: messages, wall ns, client CPU ns.
struct Sample {
    wall_ns: u64,
    cpu_ns: u64,
}

struct EngineCounter {
    n: u64,
    bad: u64,
    size: usize,
    echo: bool,
}

impl Handler for EngineCounter {
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

fn run_engine(
    mode: Mode,
    log: usize,
) -> Result<(Sample, Vec<ws_engine::stamps::StampRecord>), String> {
    let (size, n, echo) = match mode {
        Mode::Blast { size, n } => (size, n, false),
        Mode::PingPong { size, n } => (size, n, true),
    };
    let (addr, srv) = serve(mode);
    let mut el = EventLoop::new(LoopConfig {
        stamp_log_capacity: log,
        ..LoopConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let ring = std::env::var("BENCH_RING")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ConnConfig::default().ring_capacity);
    el.connect(
        &format!("ws://{addr}/"),
        &ConnConfig {
            ring_capacity: ring,
            ..ConnConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let mut h = EngineCounter {
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

fn run_tungstenite(size: usize, n: u64) -> Result<Sample, String> {
    let (addr, srv) = serve(Mode::Blast { size, n });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let r = rt.block_on(async move {
        use tokio_tungstenite::tungstenite::Message as M;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp)
            .await
            .map_err(|e| e.to_string())?;
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
    });
    drop(rt);
    let _ = srv.join();
    r
}

fn run_fastwebsockets(size: usize, n: u64) -> Result<Sample, String> {
    let (addr, srv) = serve(Mode::Blast { size, n });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let r = rt.block_on(async move {
        use fastwebsockets::{Frame, OpCode as FOp, Payload, Role, WebSocket};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        // fastwebsockets' own client handshake needs hyper; do the upgrade by hand (the
        // server sends nothing after the 101 until our first frame).
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tcp.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            head.push(b[0]);
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            return Err("fastwebsockets: handshake refused".to_string());
        }
        let mut ws = WebSocket::after_handshake(tcp, Role::Client);
        ws.set_auto_close(true);
        ws.set_auto_pong(true);
        let t0 = Instant::now();
        let c0 = thread_cpu_ns();
        ws.write_frame(Frame::binary(Payload::Borrowed(b"start")))
            .await
            .map_err(|e| e.to_string())?;
        let mut got = 0u64;
        while got < n {
            let f = ws.read_frame().await.map_err(|e| e.to_string())?;
            match f.opcode {
                FOp::Binary => {
                    if f.payload.len() != size {
                        return Err("fastwebsockets: wrong size".to_string());
                    }
                    got += 1;
                }
                FOp::Close => return Err(format!("fastwebsockets: closed after {got}")),
                _ => {}
            }
        }
        Ok(Sample {
            wall_ns: t0.elapsed().as_nanos() as u64,
            cpu_ns: thread_cpu_ns() - c0,
        })
    });
    drop(rt);
    let _ = srv.join();
    r
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut json: Option<String> = None;
    let mut runs = 5usize;
    let mut quick = false;
    let mut only: Option<usize> = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--json" => {
                json = args.get(i + 1).cloned();
                i += 1;
            }
            "--runs" => {
                runs = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(runs);
                i += 1;
            }
            "--quick" => quick = true,
            "--size" => {
                only = args.get(i + 1).and_then(|s| s.parse().ok());
                i += 1;
            }
            // cargo passes --bench; anything else is ignored too.
            _ => {}
        }
        i += 1;
    }
    if quick {
        runs = runs.min(3);
    }
    let cal = ws_engine::clock::Clock::global().calibration();
    println!(
        "clock: {:?}, TSC {:.3} GHz, calibration error {} ns",
        cal.source,
        cal.tsc_hz as f64 / 1e9,
        cal.error_ns
    );
    let mut results: Vec<(usize, [f64; 3], [f64; 3])> = Vec::new();
    for &(size, n) in &[
        (64usize, if quick { 200_000u64 } else { 1_000_000 }),
        (16384, if quick { 20_000 } else { 100_000 }),
    ] {
        if only.is_some_and(|o| o != size) {
            continue;
        }
        let mut rate: [Vec<f64>; 3] = Default::default();
        let mut cpu: [Vec<f64>; 3] = Default::default();
        for run in 0..runs {
            for (p, peer) in PEERS.iter().enumerate() {
                let r = match p {
                    0 => run_engine(Mode::Blast { size, n }, 0).map(|(s, _)| s),
                    1 => run_tungstenite(size, n),
                    _ => run_fastwebsockets(size, n),
                };
                match r {
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
        let mr = [
            median(&mut rate[0]),
            median(&mut rate[1]),
            median(&mut rate[2]),
        ];
        let mc = [
            median(&mut cpu[0]),
            median(&mut cpu[1]),
            median(&mut cpu[2]),
        ];
        println!("\n{size} B messages, {n} per run, median of {runs} runs:");
        println!("{:<20} {:>14} {:>16}", "peer", "msgs/s", "CPU ns/msg");
        for (p, peer) in PEERS.iter().enumerate() {
            println!("{peer:<20} {:>14.0} {:>16.1}", mr[p], mc[p]);
        }
        println!(
            "ratio ws-engine / tokio-tungstenite: {:.2}x msgs/s, {:.2}x less CPU",
            mr[0] / mr[1],
            mc[1] / mc[0]
        );
        println!(
            "ratio ws-engine / fastwebsockets:    {:.2}x msgs/s, {:.2}x less CPU",
            mr[0] / mr[2],
            mc[2] / mc[0]
        );
        results.push((size, mr, mc));
    }
    // Library overhead: one message per read (the server waits for each echo), so
    // recv_end → callback is the engine's own work on that message.
    let n_pp = if quick { 5_000 } else { 20_000 };
    let recs = match run_engine(Mode::PingPong { size: 64, n: n_pp }, n_pp as usize) {
        Ok((_, r)) => r,
        Err(e) => {
            eprintln!("overhead run: {e}");
            std::process::exit(1);
        }
    };
    let mut ov: Vec<u64> = recs.iter().map(|r| r.overhead_ns()).collect();
    let (p50, p99, max) = percentiles(&mut ov);
    let mut parse: Vec<u64> = recs
        .iter()
        .map(|r| r.stamps.parsed_ns.saturating_sub(r.stamps.recv_end_ns))
        .collect();
    let (pp50, pp99, _) = percentiles(&mut parse);
    println!(
        "\nws-engine library overhead recv_end→callback (64 B, one message per read, {} msgs): p50 {p50} ns, p99 {p99} ns, max {max} ns (recv_end→parsed p50 {pp50} ns, p99 {pp99} ns)",
        recs.len()
    );
    println!(
        "{:<26} {:>8} {:>8} {:>8}",
        "stage (ns)", "p50", "p99", "max"
    );
    for (i, name) in ws_engine::stamps::STAGES.iter().enumerate() {
        let mut v: Vec<u64> = recs.iter().map(|r| r.stage_ns()[i]).collect();
        let (a, b, c) = percentiles(&mut v);
        println!("{name:<26} {a:>8} {b:>8} {c:>8}");
    }
    if let Some(path) = json {
        let mut sizes = serde_json::Map::new();
        for (size, mr, _) in &results {
            let mut m = serde_json::Map::new();
            for (p, peer) in PEERS.iter().enumerate() {
                m.insert(peer.to_string(), serde_json::json!(mr[p].round() as u64));
            }
            sizes.insert(size.to_string(), serde_json::Value::Object(m));
        }
        let doc = serde_json::json!({
            "sizes": sizes,
            "overhead_ns": {"p50": p50, "p99": p99},
        });
        match std::fs::write(
            &path,
            serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n",
        ) {
            Ok(()) => println!("wrote {path}"),
            Err(e) => {
                eprintln!("cannot write {path}: {e}");
                std::process::exit(1);
            }
        }
    }
}
