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

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::{
    Args, Sample, accept_upgrade, blast, close_and_drain, engine_receive, median,
    on_current_thread, parse_args, print_table, take_turns, tungstenite_receive,
};
use ws_engine::stamps::StampRecord;
use ws_engine::testca::TestCa;
use ws_engine::{ConnConfig, EventLoop, LoopConfig, TlsPath};

const PEERS: [&str; 2] = ["ws-engine", "tokio-tungstenite"];

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
        if !accept_upgrade(&mut s) {
            return;
        }
        // The client's "start" frame (masked, 5 bytes payload: 2 + 4 + 5 bytes).
        let mut start = [0u8; 11];
        if s.read_exact(&mut start).is_err() {
            return;
        }
        if !blast(&mut s, size, n) {
            return;
        }
        close_and_drain(&mut s);
    });
    (addr, h)
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
    let (s, recs) = engine_receive(el, srv, size, n, false)?;
    Ok((s, recs, path))
}

fn run_tungstenite(env: &Env, size: usize, n: u64) -> Result<Sample, String> {
    let (addr, srv) = serve(env.server.clone(), size, n);
    let client = env.client.clone();
    on_current_thread(srv, async move {
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
        tungstenite_receive(&mut ws, size, n).await
    })
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

fn main() {
    let Args {
        json, runs, quick, ..
    } = parse_args(false);
    common::print_header("tls");
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
        let (mr, mc) = take_turns(&PEERS, size, n, runs, |p| {
            if p == 0 {
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
            }
        });
        println!("\n{size} B messages over TLS, {n} per run, median of {runs} runs:");
        print_table(&PEERS, &mr, &mc);
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
