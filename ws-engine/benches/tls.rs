//! Receive throughput over TLS: ws-engine vs tokio-tungstenite + tokio-rustls, in the
//! same run against the same loopback TLS server, plus the engine's decrypt stage
//! (decrypt_start → recv_end) per KiB of plaintext from its own stamps.
//!
//! `cargo bench -p ws-engine --bench tls -- [--json FILE] [--runs N] [--quick]`
//!
//! `--json FILE` writes `{"sizes": {"64": {"ws-engine": M, "tokio-tungstenite": M},
//! "16384": {...}}, "decrypt_ns_per_kib": N, "tls_path": "ktls"|"userspace"}` (msgs/s,
//! medians of the runs; decrypt from the 16 KiB runs).
//!
//! Server: a thread with rustls (throwaway CA, TLS 1.3, the suite rustls prefers), waiting
//! for the client's "start" frame, then writing pre-encoded binary frames as fast as TLS
//! and the socket take them. Clients run on the main thread (tokio on a current-thread
//! runtime), so CLOCK_THREAD_CPUTIME_ID is the client's CPU. Peers alternate run by run.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ws_engine::frame::{MAX_HEADER, OpCode, encode_header};
use ws_engine::handshake::accept_key;
use ws_engine::stamps::StampRecord;
use ws_engine::testca::TestCa;
use ws_engine::{ConnConfig, ConnCtx, EventLoop, Handler, LoopConfig, Message, TlsPath};

const PEERS: [&str; 2] = ["ws-engine", "tokio-tungstenite"];

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

/// One TLS connection: upgrade, wait for a client frame, blast `n` frames of `size`.
fn serve(tls: Arc<rustls::ServerConfig>, size: usize, n: u64) -> (SocketAddr, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let h = std::thread::spawn(move || {
        let Ok((tcp, _)) = l.accept() else { return };
        let _ = tcp.set_nodelay(true);
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
        let Ok(conn) = rustls::ServerConnection::new(tls) else {
            return;
        };
        let mut s = rustls::StreamOwned::new(conn, tcp);
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
        if s.write_all(resp.as_bytes())
            .and_then(|()| s.flush())
            .is_err()
        {
            return;
        }
        // The client's "start" frame (masked, 5 bytes payload: 2 + 4 + 5 bytes).
        let mut start = [0u8; 11];
        if s.read_exact(&mut start).is_err() {
            return;
        }
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
        let _ = s.write_all(&server_frame(OpCode::Close, &1000u16.to_be_bytes()));
        let _ = s.flush();
        let mut tmp = [0u8; 4096];
        while matches!(s.read(&mut tmp), Ok(n) if n > 0) {}
    });
    (addr, h)
}

struct Sample {
    wall_ns: u64,
    cpu_ns: u64,
}

struct Counter {
    n: u64,
    bad: u64,
    size: usize,
}

impl Handler for Counter {
    fn on_message(&mut self, _conn: &mut ConnCtx<'_>, msg: Message<'_>) {
        self.n += 1;
        if msg.data.len() != self.size {
            self.bad += 1;
        }
    }
    fn on_established(&mut self, conn: &mut ConnCtx<'_>) {
        let _ = conn.send_binary(b"start");
    }
}

struct Env {
    server: Arc<rustls::ServerConfig>,
    ca_file: PathBuf,
    client: Arc<rustls::ClientConfig>,
}

fn run_engine(
    env: &Env,
    size: usize,
    n: u64,
    log: usize,
) -> Result<(Sample, Vec<StampRecord>, TlsPath), String> {
    let (addr, srv) = serve(env.server.clone(), size, n);
    let mut el = EventLoop::new(LoopConfig {
        stamp_log_capacity: log,
        ..LoopConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let mut cfg = ConnConfig::default();
    cfg.tls.ca_file = Some(env.ca_file.clone());
    cfg.tls.system_roots = false;
    let id = el
        .connect(&format!("wss://{addr}/"), &cfg)
        .map_err(|e| e.to_string())?;
    let path = el.tls_path(id).unwrap_or(TlsPath::None);
    let mut h = Counter { n: 0, bad: 0, size };
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
    Ok((s, recs, path))
}

fn run_tungstenite(env: &Env, size: usize, n: u64) -> Result<Sample, String> {
    let (addr, srv) = serve(env.server.clone(), size, n);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let client = env.client.clone();
    let r = rt.block_on(async move {
        use tokio_tungstenite::tungstenite::Message as M;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")
            .map_err(|e| e.to_string())?
            .to_owned();
        let tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{addr}/"), tls)
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

/// Decrypt stage per KiB of plaintext: each read counted once (messages completed by the
/// same read share its stamps), over the bytes of the messages it completed.
fn decrypt_ns_per_kib(recs: &[StampRecord]) -> Option<f64> {
    let mut seen = HashSet::new();
    let mut ns = 0u64;
    let mut bytes = 0u64;
    for r in recs {
        let s = &r.stamps;
        if s.decrypt_start_ns == 0 {
            continue;
        }
        bytes += r.len;
        if seen.insert(s.recv_end_ns) {
            ns += s.recv_end_ns.saturating_sub(s.decrypt_start_ns);
        }
    }
    (bytes > 0).then(|| ns as f64 / (bytes as f64 / 1024.0))
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
            // cargo passes --bench; anything else is ignored too.
            _ => {}
        }
        i += 1;
    }
    if quick {
        runs = runs.min(3);
    }
    let ca = TestCa::new().expect("test CA");
    let ca_file =
        std::env::temp_dir().join(format!("ws-engine-bench-tls-{}.pem", std::process::id()));
    ca.write_ca_pem(&ca_file).expect("write CA");
    let server = ca
        .server_cert(&["127.0.0.1"], Default::default())
        .expect("cert")
        .server_config(&[&rustls::version::TLS13], None)
        .expect("server config");
    let client = {
        let mut opts = ws_engine::TlsOptions {
            ca_file: Some(ca_file.clone()),
            system_roots: false,
            ..Default::default()
        };
        opts.ktls = false;
        // Same provider, versions and ALPN as the engine's own config.
        ws_engine::tls::client_config(&opts).expect("client config")
    };
    let env = Env {
        server,
        ca_file: ca_file.clone(),
        client,
    };
    let mut out_sizes = Vec::new();
    let mut decrypt = Vec::new();
    let mut path = TlsPath::None;
    for &(size, n) in &[
        (64usize, if quick { 100_000u64 } else { 400_000 }),
        (16384, if quick { 10_000 } else { 40_000 }),
    ] {
        let mut rate: [Vec<f64>; 2] = Default::default();
        let mut cpu: [Vec<f64>; 2] = Default::default();
        for run in 0..runs {
            for (p, peer) in PEERS.iter().enumerate() {
                let r = if p == 0 {
                    let log = if size == 16384 { n as usize } else { 0 };
                    run_engine(&env, size, n, log).map(|(s, recs, tp)| {
                        path = tp;
                        if let Some(d) = decrypt_ns_per_kib(&recs) {
                            decrypt.push(d);
                        }
                        s
                    })
                } else {
                    run_tungstenite(&env, size, n)
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
        let mr = [median(&mut rate[0]), median(&mut rate[1])];
        let mc = [median(&mut cpu[0]), median(&mut cpu[1])];
        println!("\n{size} B messages over TLS, {n} per run, median of {runs} runs:");
        println!("{:<20} {:>14} {:>16}", "peer", "msgs/s", "CPU ns/msg");
        for (p, peer) in PEERS.iter().enumerate() {
            println!("{peer:<20} {:>14.0} {:>16.1}", mr[p], mc[p]);
        }
        println!(
            "ratio ws-engine / tokio-tungstenite: {:.2}x msgs/s, {:.2}x less CPU",
            mr[0] / mr[1],
            mc[1] / mc[0]
        );
        out_sizes.push((size, mr));
    }
    let d = median(&mut decrypt);
    let path_s = match path {
        TlsPath::Ktls => "ktls",
        _ => "userspace",
    };
    println!(
        "\nws-engine TLS path: {path_s}; decrypt stage (16 KiB msgs): {d:.0} ns per KiB (median of {runs} runs)"
    );
    let _ = std::fs::remove_file(&ca_file);
    if let Some(file) = json {
        let mut sizes = serde_json::Map::new();
        for (size, mr) in &out_sizes {
            sizes.insert(
                size.to_string(),
                serde_json::json!({ "ws-engine": mr[0], "tokio-tungstenite": mr[1] }),
            );
        }
        let v = serde_json::json!({
            "sizes": sizes,
            "decrypt_ns_per_kib": d,
            "tls_path": path_s,
        });
        let text = serde_json::to_string_pretty(&v).expect("json");
        if let Err(e) = std::fs::write(&file, text + "\n") {
            eprintln!("writing {file}: {e}");
            std::process::exit(1);
        }
        println!("wrote {file}");
    }
}
