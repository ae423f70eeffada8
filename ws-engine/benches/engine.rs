//! Receive throughput of ws-engine vs tokio-tungstenite, fastwebsockets and (blocking)
//! tungstenite, measured in the same run against the same loopback server, each shown as a
//! share of a raw-read ceiling (the same bytes read with read(2) into a 1 MiB buffer and
//! only the blaster's frame headers parsed: what no WebSocket client can beat), plus the
//! engine's library overhead (recv_end → callback) from its own stamps. The engine runs
//! with every stamp on (as an untraced application sees it).
//!
//! `cargo bench -p ws-engine --bench engine -- [--json FILE] [--runs N] [--quick] [--size 64|16384]`
//!
//! The server thread answers the upgrade, waits for the client's "start" frame, then
//! writes pre-encoded binary frames as fast as the socket takes them. Each client runs on
//! the bench's main thread (tokio peers on a current-thread runtime there), so
//! CLOCK_THREAD_CPUTIME_ID of that thread is the client's CPU time. Peers take turns run
//! after run; medians are reported.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    Args, Sample, accept_upgrade, blast, close_and_drain, engine_receive, median,
    on_current_thread, parse_args, print_header, server_frame, take_turns_all, thread_cpu_ns,
    tungstenite_receive,
};
use ws_engine::decoder::{Decoded, Decoder, Limits};
use ws_engine::frame::OpCode;
use ws_engine::stamps::percentiles;
use ws_engine::{ConnConfig, EventLoop, LoopConfig};

const PEERS: [&str; 5] = [
    "ws-engine",
    "tokio-tungstenite",
    "fastwebsockets",
    "tungstenite",
    "raw-ceiling",
];
/// Index of the ceiling in [`PEERS`]; the WebSocket peers are the ones before it.
const CEILING: usize = 4;

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
        if !accept_upgrade(&mut s) {
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
                if !blast(&mut s, size, n) {
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
        close_and_drain(&mut s);
    });
    (addr, h)
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
    engine_receive(el, srv, size, n, echo)
}

fn run_tungstenite(size: usize, n: u64) -> Result<Sample, String> {
    let (addr, srv) = serve(Mode::Blast { size, n });
    on_current_thread(srv, async move {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp)
            .await
            .map_err(|e| e.to_string())?;
        tungstenite_receive(&mut ws, size, n).await
    })
}

fn run_fastwebsockets(size: usize, n: u64) -> Result<Sample, String> {
    let (addr, srv) = serve(Mode::Blast { size, n });
    on_current_thread(srv, async move {
        use fastwebsockets::{Frame, OpCode as FOp, Payload, Role, WebSocket};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        // fastwebsockets' own client handshake needs hyper; do the upgrade by hand (the
        // server sends nothing after the 101 until our first frame).
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
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
    })
}

fn run_blocking_tungstenite(size: usize, n: u64) -> Result<Sample, String> {
    use tungstenite::Message as M;
    let (addr, srv) = serve(Mode::Blast { size, n });
    let r = (|| {
        let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (mut ws, _) =
            tungstenite::client(format!("ws://{addr}/"), tcp).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let c0 = thread_cpu_ns();
        ws.send(M::Binary(b"start".to_vec().into()))
            .map_err(|e| e.to_string())?;
        let mut got = 0u64;
        while got < n {
            match ws.read().map_err(|e| e.to_string())? {
                M::Binary(b) => {
                    if b.len() != size {
                        return Err("tungstenite: wrong size".to_string());
                    }
                    got += 1;
                }
                M::Close(_) => return Err(format!("tungstenite: closed after {got}")),
                _ => {}
            }
        }
        let s = Sample {
            wall_ns: t0.elapsed().as_nanos() as u64,
            cpu_ns: thread_cpu_ns() - c0,
        };
        drop(ws);
        Ok(s)
    })();
    let _ = srv.join();
    r
}

/// The raw-read ceiling: blocking read(2) into a 1 MiB buffer (the engine's default ring
/// size) and the least parse of the blaster's frames (header, length, skip), no WebSocket
/// library, no callback, no stamps.
fn run_raw_ceiling(size: usize, n: u64) -> Result<Sample, String> {
    let (addr, srv) = serve(Mode::Blast { size, n });
    let r = (|| {
        let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tcp.read_exact(&mut b).map_err(|e| e.to_string())?;
            head.push(b[0]);
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            return Err("raw: handshake refused".to_string());
        }
        let mut buf = vec![0u8; 1 << 20];
        let t0 = Instant::now();
        let c0 = thread_cpu_ns();
        // "start", masked with a zero key (the server only checks that it is masked).
        tcp.write_all(&[0x82, 0x85, 0, 0, 0, 0, b's', b't', b'a', b'r', b't'])
            .map_err(|e| e.to_string())?;
        let (mut got, mut bad) = (0u64, 0u64);
        let mut have = 0usize;
        while got < n {
            let r = tcp.read(&mut buf[have..]).map_err(|e| e.to_string())?;
            if r == 0 {
                return Err(format!("raw: ended after {got}"));
            }
            have += r;
            let mut at = 0usize;
            while have - at >= 2 {
                let b1 = buf[at + 1] & 0x7F;
                let (hl, len) = match b1 {
                    126 if have - at >= 4 => {
                        (4, u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize)
                    }
                    127 if have - at >= 10 => {
                        let mut l = [0u8; 8];
                        l.copy_from_slice(&buf[at + 2..at + 10]);
                        (10, u64::from_be_bytes(l) as usize)
                    }
                    126 | 127 => break,
                    l => (2, l as usize),
                };
                if have - at < hl + len {
                    break;
                }
                if buf[at] & 0x0F == 0x2 {
                    got += 1;
                    bad += u64::from(len != size);
                }
                at += hl + len;
            }
            buf.copy_within(at..have, 0);
            have -= at;
        }
        let s = Sample {
            wall_ns: t0.elapsed().as_nanos() as u64,
            cpu_ns: thread_cpu_ns() - c0,
        };
        if bad != 0 {
            return Err(format!("raw: {bad} frames of the wrong size"));
        }
        Ok(s)
    })();
    let _ = srv.join();
    r
}

/// Per-run rows, then the medians with each peer as a share of the ceiling, then the
/// targets.
fn print_results(size: usize, rate: &[Vec<f64>], cpu: &[Vec<f64>]) -> ([f64; 5], [f64; 5]) {
    let runs = rate[0].len();
    println!(
        "{:<20} {}",
        "msgs/s by run",
        (1..=runs)
            .map(|r| format!("{:>12}", format!("run {r}")))
            .collect::<String>()
    );
    for (p, peer) in PEERS.iter().enumerate() {
        let row: String = rate[p].iter().map(|v| format!("{v:>12.0}")).collect();
        println!("{peer:<20} {row}");
    }
    println!("{:<20}", "CPU ns/msg by run");
    for (p, peer) in PEERS.iter().enumerate() {
        let row: String = cpu[p].iter().map(|v| format!("{v:>12.1}")).collect();
        println!("{peer:<20} {row}");
    }
    let mr: [f64; 5] = std::array::from_fn(|p| median(&mut rate[p].clone()));
    let mc: [f64; 5] = std::array::from_fn(|p| median(&mut cpu[p].clone()));
    println!(
        "\n{:<20} {:>14} {:>12} {:>16}",
        "median", "msgs/s", "% ceiling", "CPU ns/msg"
    );
    for (p, peer) in PEERS.iter().enumerate() {
        println!(
            "{peer:<20} {:>14.0} {:>11.1}% {:>16.1}",
            mr[p],
            100.0 * mr[p] / mr[CEILING],
            mc[p]
        );
    }
    let fastest = (1..CEILING)
        .max_by(|&a, &b| mr[a].total_cmp(&mr[b]))
        .unwrap_or(1);
    let leanest = (1..CEILING)
        .min_by(|&a, &b| mc[a].total_cmp(&mc[b]))
        .unwrap_or(1);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let speedup = mr[0] / mr[fastest];
    let share = mr[0] / mr[CEILING];
    if size <= 1024 {
        println!(
            "target ws-engine ≥ 1.3× the fastest peer ({}): {speedup:.2}× — {}",
            PEERS[fastest],
            verdict(speedup >= 1.3)
        );
        println!(
            "target ws-engine ≥ 40 % of the raw ceiling: {:.1} % — {}",
            share * 100.0,
            verdict(share >= 0.4)
        );
    } else {
        println!(
            "target ws-engine CPU ns/msg ≤ the leanest peer ({}, {:.1}): {:.1} — {}",
            PEERS[leanest],
            mc[leanest],
            mc[0],
            verdict(mc[0] <= mc[leanest])
        );
        println!(
            "ws-engine vs the fastest peer ({}): {speedup:.2}× msgs/s; {:.1} % of the raw ceiling",
            PEERS[fastest],
            share * 100.0
        );
    }
    (mr, mc)
}

fn main() {
    let Args {
        json,
        runs,
        quick,
        size: only,
    } = parse_args(true);
    print_header("engine");
    // `BENCH_PROFILE=SECONDS`: run only the engine peer (64 B, or `--size N`) for that long
    // (a target for `perf record` / `ws-trace profile`), print its rate and exit.
    if let Some(secs) = std::env::var("BENCH_PROFILE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        let size = only.unwrap_or(64);
        let n = (128u64 << 20) / size as u64;
        let until = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < until {
            match run_engine(Mode::Blast { size, n }, 0) {
                Ok((s, _)) => println!(
                    "ws-engine {size} B: {:.0} msgs/s, {:.1} CPU ns/msg",
                    n as f64 * 1e9 / s.wall_ns as f64,
                    s.cpu_ns as f64 / n as f64
                ),
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            }
        }
        return;
    }
    let mut results: Vec<(usize, [f64; 5], [f64; 5])> = Vec::new();
    for &(size, n) in &[
        (64usize, if quick { 200_000u64 } else { 1_000_000 }),
        (16384, if quick { 20_000 } else { 100_000 }),
    ] {
        if only.is_some_and(|o| o != size) {
            continue;
        }
        let (rate, cpu) = take_turns_all(&PEERS, size, n, runs, |p| match p {
            0 => run_engine(Mode::Blast { size, n }, 0).map(|(s, _)| s),
            1 => run_tungstenite(size, n),
            2 => run_fastwebsockets(size, n),
            3 => run_blocking_tungstenite(size, n),
            _ => run_raw_ceiling(size, n),
        });
        println!("\n{size} B messages, {n} per run, {runs} runs taking turns:");
        let (mr, mc) = print_results(size, &rate, &cpu);
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
        for (size, mr, _mc) in &results {
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
