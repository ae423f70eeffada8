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

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    Args, Sample, accept_upgrade, blast, close_and_drain, engine_receive, on_current_thread,
    parse_args, print_table, server_frame, take_turns, thread_cpu_ns, tungstenite_receive,
};
use ws_engine::decoder::{Decoded, Decoder, Limits};
use ws_engine::frame::OpCode;
use ws_engine::stamps::percentiles;
use ws_engine::{ConnConfig, EventLoop, LoopConfig};

const PEERS: [&str; 3] = ["ws-engine", "tokio-tungstenite", "fastwebsockets"];

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

fn main() {
    let Args {
        json,
        runs,
        quick,
        size: only,
    } = parse_args(true);
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
        let (mr, mc) = take_turns(&PEERS, size, n, runs, |p| match p {
            0 => run_engine(Mode::Blast { size, n }, 0).map(|(s, _)| s),
            1 => run_tungstenite(size, n),
            _ => run_fastwebsockets(size, n),
        });
        println!("\n{size} B messages, {n} per run, median of {runs} runs:");
        print_table(&PEERS, &mr, &mc);
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
